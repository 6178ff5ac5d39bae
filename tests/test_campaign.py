"""Campaign features end to end on real storage: CV scoring, grid search, the guarded final
retrain, and `hpo launch`."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest

from hpo.campaign import CampaignSpec, final_candidates, final_evaluation, run_campaign
from storage import backend
from tests.helpers import duplicate_trial_numbers, make_stage, states, worker_env
from workers.data.datasets import kfold_splits
from workers.run import cached_dataset, preprocess
from workers.space import SearchSpace, build_space
from workers.train import TrainConfig, train

pytestmark = pytest.mark.slow


class Recorder:
    """A Progress that keeps what it was told, as a user would read it."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.narrowed: list[tuple[str, str]] = []

    def stage_started(self, plan, resumed):
        pass

    def stage_progress(self, plan, counts, best):
        pass

    def stage_narrowed(self, parent, child, result):
        self.narrowed.append((parent.study_name, child.study_name))

    def message(self, text):
        self.messages.append(text)


def test_cross_validation_scores_by_the_mean_over_folds(sqlite_url):
    space = build_space(None, None, ["hidden_sizes=32", "lr=log:1e-3..1e-2", "activation=relu", "bn=true", "init=he"])
    spec = CampaignSpec(name="cv", space=space, stages=1, trials=[3], epochs=[4], cv=3)
    summary = run_campaign(sqlite_url, spec, Recorder(), workers=1)
    study = optuna.load_study(study_name="cv/stage-1", storage=backend.open_storage(sqlite_url))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete, [t.user_attrs.get("reason") for t in study.trials]
    dataset = cached_dataset("digits", 0)
    for t in complete:
        # Each fold trained alone, here: what the pruner saw at epoch e is the mean over the
        # folds of their accuracies at epoch e.
        config = TrainConfig.from_dict(t.user_attrs["config"])
        per_fold = []
        for train_idx, val_idx in kfold_splits(dataset.y_train, 3, config.seed):
            X_train, X_val = preprocess(config, dataset.X_train[train_idx], dataset.X_train[val_idx])
            alone = train(config, X_train, dataset.y_train[train_idx], X_val, dataset.y_train[val_idx])
            per_fold.append([report.val_accuracy for report in alone.history])
        means = [sum(fold[e] for fold in per_fold) / 3 for e in range(4)]
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]  # the pruner looks at epochs
        assert [t.intermediate_values[e] for e in (1, 2, 3, 4)] == pytest.approx(means, abs=1e-12)
        assert t.user_attrs["curve"]["val_accuracy"] == pytest.approx(means, abs=1e-12)
        assert t.user_attrs["fold_values"] == pytest.approx([fold[-1] for fold in per_fold], abs=1e-12)
        assert t.value == pytest.approx(means[-1], abs=1e-12)
    assert summary.best.test_accuracy > 0.8


def test_grid_search_walks_the_grid_without_repeats(sqlite_url):
    space = build_space(None, None, ["hidden_sizes=32", "lr=0.001,0.01", "activation=relu,tanh", "bn=true", "init=he"])
    spec = CampaignSpec(name="grid", space=space, stages=1, trials=[4], epochs=[2], sampler="grid", pruner="none")
    run_campaign(sqlite_url, spec, Recorder(), workers=2)
    study = optuna.load_study(study_name="grid/stage-1", storage=backend.open_storage(sqlite_url))
    combos = {(t.params["learning_rate"], t.params["activation"]) for t in study.trials}
    assert combos == {(lr, a) for lr in (0.001, 0.01) for a in ("relu", "tanh")}
    assert duplicate_trial_numbers(sqlite_url) == []


def test_final_retrain_falls_back_when_the_best_configuration_diverges(sqlite_url):
    # A stage whose best-scoring trial is a configuration that blows up when trained longer:
    # the final retrain must say so and evaluate the next best instead of reporting it.
    storage, plan = make_stage(
        sqlite_url, "fallback", trials=2, epochs=5,
        params=["hidden_sizes=32", "lr=log:1e-3..100", "activation=relu", "bn=false", "init=he", "optimizer=sgd"],
    )
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    distributions = SearchSpace.from_dict(plan.space).to_distributions()
    for lr, value in ((80.0, 0.99), (0.1, 0.90)):
        study.enqueue_trial({"learning_rate": lr})
        trial = study.ask(distributions)
        trial.set_user_attr("seed", 1)
        study.tell(trial, value)
    recorder = Recorder()
    result = final_evaluation(final_candidates(storage, [plan], 5), plan, recorder)
    assert result.trial == 1 and result.params["learning_rate"] == pytest.approx(0.1)
    assert len(result.skipped) == 1 and "diverged" in result.skipped[0]
    assert any("trial 0" in m and "diverged" in m for m in recorder.messages)
    assert result.test_accuracy > 0.8


def test_launch_runs_n_local_workers_to_the_end_of_a_stage(sqlite_url):
    # Trials long enough (and sane enough not to diverge) that the later of the two processes
    # to start still finds work.
    storage, plan = make_stage(
        sqlite_url, "launch", trials=8, epochs=20,
        params=["hidden_sizes=32", "lr=log:1e-3..1e-2", "activation=relu", "bn=true", "init=he"],
    )
    process = subprocess.run(
        [sys.executable, "-m", "hpo", "launch", "-n", "2", "--study", plan.study_name],
        env=worker_env(sqlite_url), capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stderr
    counts = states(sqlite_url, plan.study_name)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 8 and "RUNNING" not in counts
    # At most the two launched workers took trials (which of them got how many depends on how
    # fast each process started; test_worker.py checks that two workers share a budget).
    workers = {t.user_attrs["worker"] for t in optuna.load_study(study_name=plan.study_name, storage=storage).trials}
    assert 1 <= len(workers) <= 2
    # a stage no trial had run on is not "(resumed)" (nor "1 epochs", as it once was)
    assert "stage 1/1 · 20 epochs" in process.stderr and "(resumed)" not in process.stderr, process.stderr


def test_launch_labels_resumed_only_a_stage_that_had_run_trials(sqlite_url):
    storage, plan = make_stage(sqlite_url, "relaunch", trials=3, epochs=1)
    storage.engine.dispose()

    def launch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hpo", *args, "--study", plan.study_name],
                              env=worker_env(sqlite_url), capture_output=True, text=True, timeout=300)

    first = launch("worker", "--max-trials", "1")
    assert first.returncode == 0, first.stderr
    again = launch("launch", "-n", "1")
    assert again.returncode == 0, again.stderr
    assert "stage 1/1 · 1 epoch (resumed)" in again.stderr, again.stderr

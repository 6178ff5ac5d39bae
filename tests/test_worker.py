"""Real worker processes against real databases: budgets, records, divergence, signals."""

from __future__ import annotations

import signal
import time

import optuna
import pytest

from storage import backend
from tests.helpers import duplicate_trial_numbers, make_stage, start_worker, states

pytestmark = pytest.mark.slow


def test_two_workers_finish_a_stage_budget_exactly(storage_url):
    storage, plan = make_stage(storage_url, "two", trials=10, epochs=2)
    # Each may take 7: together they could overshoot the budget of 10 (the lock must stop them
    # at 10), and each takes at least 3 however much sooner one of them starts.
    workers = [start_worker(storage_url, "--study", plan.study_name, "--seed", str(i), "--max-trials", "7")
               for i in range(2)]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    counts = states(storage_url, plan.study_name)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 10, counts
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0
    assert duplicate_trial_numbers(storage_url) == []

    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    trials = study.get_trials()
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers took trials"
    for t in trials:
        assert set(t.params) == {"learning_rate", "activation", "initializer", "batch_norm", "hidden_sizes", "batch_size"}
        assert isinstance(t.user_attrs["seed"], int)
        assert t.user_attrs["timings"]["train_seconds"] >= 0
        if t.state.name == "COMPLETE":
            assert 0 <= t.value <= 1
            assert len(t.user_attrs["curve"]["val_accuracy"]) == 2
            assert t.user_attrs["diagnostics"]["layers"][0]["units"] == 32
        else:
            assert t.user_attrs["reason"]


def test_diverged_runs_end_pruned_with_their_reason(sqlite_url):
    storage, plan = make_stage(
        sqlite_url, "hot", trials=3, epochs=3,
        params=["hidden_sizes=32", "lr=log:50..100", "activation=relu", "batch_norm=false",
                "initializer=he", "optimizer=sgd"],
    )
    worker = start_worker(sqlite_url, "--study", plan.study_name)
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0, output
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["PRUNED"] * 3
    assert all(t.user_attrs["reason"].startswith("diverged at epoch") for t in trials), [t.user_attrs for t in trials]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_worker_leaves_nothing_running_and_exits_0(sqlite_url, sig):
    # Long trials, so the signal lands in the middle of one.
    # Long trials of a configuration that neither diverges nor gets pruned, so the signal
    # lands in the middle of the first one.
    storage, plan = make_stage(
        sqlite_url, "stop", trials=3, epochs=400,
        params=["hidden_sizes=64", "batch_size=32", "lr=log:1e-3..1e-2", "activation=relu", "bn=true", "init=he"],
    )
    # A fixed seed: a worker without one samples by its process id, and may draw a diverging first trial.
    worker = start_worker(sqlite_url, "--study", plan.study_name, "--seed", "0")
    deadline = time.monotonic() + 60
    while states(sqlite_url, plan.study_name).get("RUNNING", 0) == 0:
        assert time.monotonic() < deadline and worker.poll() is None, "the worker never started a trial"
        time.sleep(0.1)
    time.sleep(0.5)
    stopped_at = time.monotonic()
    worker.send_signal(sig)
    output = worker.communicate(timeout=30)[0]
    assert worker.returncode == 0, output
    assert time.monotonic() - stopped_at < 10, "stopped promptly"
    counts = states(sqlite_url, plan.study_name)
    assert counts.get("RUNNING", 0) == 0
    assert counts == {"FAIL": 1, "WAITING": 1}, counts  # failed, and queued once more
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    failed, queued = sorted(study.get_trials(), key=lambda t: t.number)
    assert queued.params == failed.params
    assert queued.system_attrs["failed_trial"] == failed.number


def test_worker_exits_with_one_line_when_the_study_is_missing(sqlite_url):
    backend.ensure_schema(sqlite_url)
    worker = start_worker(sqlite_url, "--study", "nope/stage-1")
    output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 2
    assert output.strip().splitlines() == ["Error: no study named 'nope/stage-1' in this storage"]

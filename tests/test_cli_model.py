"""The model a search found, as a user meets it: NAME-best.npz, `hpo evaluate`, `hpo predict`,
`hpo train --save` and `hpo train --from-trial` on real trials of a real campaign."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
from click.testing import CliRunner

from hpo.campaign import CampaignSpec, run_campaign
from hpo.cli import cli
from storage import backend
from tests.helpers import worker_env
from tests.test_campaign import Recorder
from workers.run import cached_dataset
from workers.space import build_space


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_exit_2(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[str, dict]:
    """A model written by `hpo train --save`, and what `hpo train --json` reported."""
    path = tmp_path_factory.mktemp("model") / "digits-model.npz"
    result = run("train", "--hidden", "32", "--epochs", "3", "--save", str(path), "--json")
    assert result.exit_code == 0, result.output
    return str(path), json.loads(result.stdout)


# -- hpo train --save, hpo evaluate, hpo predict ------------------------------------------------
def test_evaluate_prints_the_accuracy_training_reported_and_its_confusion_matrix(saved):
    path, trained = saved
    assert trained["model"] == path
    figures = json.loads(run("evaluate", path, "--json").stdout)
    assert figures["accuracy"] == trained["test_accuracy"]  # exactly: the same arithmetic
    assert figures["split"] == "test" and figures["dataset"] == "digits" and figures["examples"] == 359
    assert figures["labels"] == list(range(10))
    matrix = np.array(figures["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 359
    assert np.trace(matrix) / 359 == trained["test_accuracy"]
    assert figures["trained_on"] == "train" and figures["source"] == {"command": "hpo train"}
    table = run("evaluate", path)
    assert table.exit_code == 0
    assert f"accuracy {trained['test_accuracy']:.4f}" in table.output and "recall" in table.output
    val = json.loads(run("evaluate", path, "--split", "val", "--json").stdout)
    assert val["accuracy"] == trained["val_accuracy"]


def test_predict_writes_the_labels_of_raw_rows(saved, tmp_path):
    path, _ = saved
    rows = cached_dataset("digits", 0).X_test[:25]
    np.save(tmp_path / "X.npy", rows)
    result = run("predict", path, "--input", str(tmp_path / "X.npy"), "-o", str(tmp_path / "y.npy"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "y.npy")
    labels = np.load(tmp_path / "y.npy", allow_pickle=False)
    assert labels.shape == (25,) and labels.dtype == np.int64
    from workers.model_file import load_model

    assert labels.tolist() == load_model(path).predict(rows).tolist()


def _version_2(source: str, target) -> None:
    arrays = dict(np.load(source, allow_pickle=False))
    meta = json.loads(str(arrays["hpo_model"]))
    arrays["hpo_model"] = np.array(json.dumps({**meta, "version": 2}))
    np.savez(target, **arrays)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such model file"),
        ("version", "format version 2"),
        ("truncated", "truncated"),
        ("pickled", "pickled object array"),
        ("features", "has 20 features per row; the model takes 64"),
        ("nan", "NaN"),
        ("no-input", "no such file"),
        ("no-folder", "there is no folder"),
        ("other-dataset", "mnist1d has 40 features per row"),
    ],
)
def test_bad_input_to_evaluate_and_predict_is_one_line_exit_2_and_writes_nothing(saved, tmp_path, case, message):
    path, _ = saved
    model, rows, output = tmp_path / "m.npz", tmp_path / "X.npy", tmp_path / "y.npy"
    model.write_bytes(open(path, "rb").read())
    np.save(rows, cached_dataset("digits", 0).X_test[:5])
    if case == "missing":
        model.unlink()
    elif case == "version":
        _version_2(path, model)
    elif case == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    elif case == "pickled":
        np.savez(model, hpo_model=np.array([{"format": "hpo-model"}], dtype=object))
    elif case == "features":
        np.save(rows, np.zeros((5, 20)))
    elif case == "nan":
        np.save(rows, np.full((5, 64), np.nan))
    elif case == "no-input":
        rows.unlink()
    elif case == "no-folder":
        output = tmp_path / "absent" / "y.npy"
    if case == "other-dataset":
        one_line_exit_2(run("evaluate", str(model), "--dataset", "mnist1d"), message)
        return
    one_line_exit_2(run("predict", str(model), "-i", str(rows), "-o", str(output)), message)
    assert not output.exists()
    if case in ("missing", "version", "truncated", "pickled"):
        one_line_exit_2(run("evaluate", str(model)), message)


def test_train_save_to_a_folder_that_does_not_exist_is_refused_before_training(tmp_path):
    result = run("train", "--save", str(tmp_path / "absent" / "m.npz"))
    one_line_exit_2(result, "there is no folder")
    assert "epoch" not in result.output


# -- hpo train --from-trial: its bad input ----------------------------------------------------
def test_from_trial_bad_input_is_one_line_exit_2(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    one_line_exit_2(run("train", "--from-trial", "c1/stage-1", "0", "--storage", url), "no database")
    assert not (tmp_path / "hpo.db").exists()
    backend.ensure_schema(url)
    study = optuna.create_study(study_name="plain", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    one_line_exit_2(run("train", "--from-trial", "nothing", "0", "--storage", url), "no study named 'nothing'")
    one_line_exit_2(run("train", "--from-trial", "plain", "3", "--storage", url), "no trial 3")
    one_line_exit_2(run("train", "--from-trial", "plain", "0", "--storage", url), "not a stage of an hpo campaign")
    one_line_exit_2(run("train", "--from-trial", "plain", "0", "--dataset", "mnist1d", "--storage", url),
                    "leave out --dataset and --split-seed")


# -- a real campaign ---------------------------------------------------------------------------
def _search(tmp_path, url: str, *extra: str) -> tuple[dict, str]:
    process = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "m1", "--stages", "1", "--trials", "5", "--epochs", "3",
         "--workers", "1", "--storage", url, "--no-report", "--json",
         "--param", "hidden_sizes=32", "--param", "lr=log:1e-3..1e-1", *extra],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=worker_env(url),
    )
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout), process.stderr


@pytest.mark.slow
def test_a_search_saves_its_final_model_and_every_trial_retrains_exactly(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    summary, _ = _search(tmp_path, url)
    model = tmp_path / "m1-best.npz"
    assert summary["model"] == "m1-best.npz" and model.is_file()
    with np.load(model, allow_pickle=False) as archive:  # a user's NumPy opens it, no pickles
        meta = json.loads(str(archive["hpo_model"]))
    assert meta["info"]["trained_on"] == "train+val"
    assert meta["info"]["source"]["study"] == summary["best"]["study"]
    assert meta["info"]["source"]["trial"] == summary["best"]["trial"]
    # the saved model scores exactly the test accuracy the final retrain stored
    figures = json.loads(run("evaluate", str(model), "--json").stdout)
    assert figures["accuracy"] == summary["best"]["test_accuracy"]

    # every trial that completed trains again to the very validation accuracy it stored
    study = optuna.load_study(study_name="m1/stage-1", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete
    for trial in complete:
        result = run("train", "--from-trial", "m1/stage-1", str(trial.number), "--storage", url, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)["from_trial"]
        assert report["retrained_value"] == trial.value and report["exact"] is True
        assert json.loads(result.stdout)["config"]["seed"] == trial.user_attrs["seed"]
    best = summary["best"]["trial"]
    table = run("train", "--from-trial", "m1", str(best), "--storage", url, "--epochs", "4")
    assert "epochs changed" in table.output  # a changed configuration is not compared

    # a finished campaign resumed keeps its model file, or trains the final model again without one
    written = model.read_bytes()
    again, messages = _search(tmp_path, url)
    assert again["model"] == "m1-best.npz" and model.read_bytes() == written
    assert "training the final configuration again" not in messages
    model.unlink()
    again, messages = _search(tmp_path, url)
    assert again["best"] == summary["best"] and model.is_file()
    assert "training the final configuration again" in messages
    assert json.loads(run("evaluate", str(model), "--json").stdout)["accuracy"] == summary["best"]["test_accuracy"]
    model.unlink()
    assert _search(tmp_path, url, "--no-model")[0]["model"] is None and not model.exists()


@pytest.mark.slow
def test_a_cross_validated_trial_retrains_to_its_mean_over_folds(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    space = build_space(None, None, ["hidden_sizes=32", "lr=log:1e-2..1e-1", "activation=relu", "bn=true", "init=he"])
    run_campaign(url, CampaignSpec(name="cv", space=space, stages=1, trials=[2], epochs=[2], cv=3), Recorder(), workers=1)
    study = optuna.load_study(study_name="cv/stage-1", storage=url)
    trial = next(t for t in study.trials if t.state.name == "COMPLETE")
    result = run("train", "--from-trial", "cv/stage-1", str(trial.number), "--storage", url, "--json")
    report = json.loads(result.stdout)["from_trial"]
    assert report["cv"] == 3 and report["retrained_value"] == trial.value and report["exact"] is True

"""Input that can never train, or cannot be read, is refused with one line before anything is
written: configurations (folds, PCA directions, network size), dataset files (labels, columns),
space files, storage URLs, heartbeat settings, and a stage with nothing to narrow from."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import optuna
import pytest
from click.testing import CliRunner

from hpo.cli import cli
from hpo.narrow import NothingToNarrow, NarrowTrial, narrow
from storage import backend
from storage.errors import StorageError
from tests.helpers import make_stage
from workers.data.datasets import DatasetError, load_dataset
from workers.feasible import Infeasible, check_config, check_dataset, check_feasible, data_limits
from workers.space import SearchSpace, SpaceError, build_space, load_space_file
from workers.train import TrainConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def assert_refused(result, *words: str) -> str:
    """Exit 2, exactly one line on stderr holding ``words``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def write_npz(path, *, y=None, X=None, n=(30, 10, 12), d=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, rows in zip(("train", "val", "test"), n):
        arrays[f"X_{split}"] = rng.normal(size=(rows, d)) if X is None else X(split, rows)
        arrays[f"y_{split}"] = np.arange(rows) % 3 if y is None else y(split, rows)
    np.savez(path, **arrays)
    return path


# -- folds ---------------------------------------------------------------------------------------
def test_more_folds_than_the_smallest_class_is_refused(digits):
    smallest = int(np.bincount(digits.y_train).min())
    check_feasible(build_space(), digits, cv=smallest)
    with pytest.raises(DatasetError, match=rf"99999-fold .* training split of digits: use at most {smallest} folds"):
        check_feasible(build_space(), digits, cv=99999)
    with pytest.raises(DatasetError, match="0 .* or at least 2 folds"):
        check_feasible(build_space(), digits, cv=1)


def test_search_with_too_many_folds_exits_2_and_writes_nothing(tmp_path):
    """Reproduced: --cv 99999 wrote 2,140 FAIL trials in 40 s and never returned."""
    db = tmp_path / "x.db"
    process = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "x", "--cv", "99999", "--workers", "1",
         "--stages", "1", "--trials", "2", "--epochs", "1", "--storage", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert len(process.stderr.strip().splitlines()) == 1 and "use at most" in process.stderr
    assert not db.exists()


# -- PCA directions ------------------------------------------------------------------------------
def test_more_pca_directions_than_features_is_refused(digits):
    bad = build_space(None, None, ["preprocessing=pca", "pca_components=100,200"])
    with pytest.raises(Infeasible, match="pca_components goes up to 200 .* digits has 64 features"):
        check_feasible(bad, digits)
    with pytest.raises(Infeasible, match="up to 65"):
        check_feasible(build_space(None, None, ["preprocessing=none,zca", "pca_components=10..65"]), digits)
    # What can train passes: at most 64 directions, a fraction, or no PCA kind to use them.
    check_feasible(build_space(None, None, ["preprocessing=none,pca_whiten", "pca_components=10..64"]), digits)
    check_feasible(build_space(None, None, ["preprocessing=pca", "pca_components=0.5..1.0"]), digits)
    # Without a PCA kind, directions never apply: the space is refused for that instead.
    with pytest.raises(SpaceError, match="pca_components never applies"):
        build_space(None, None, ["preprocessing=standardize", "pca_components=100,200"])


def test_train_with_more_pca_directions_than_features_exits_2():
    """Reproduced: a ValueError traceback from the preprocessing fit."""
    line = assert_refused(invoke("train", "--preprocessing", "pca", "--pca-components", "100", "--epochs", "1"),
                          "pca_components 100", "64 features")
    assert "Traceback" not in line
    with pytest.raises(Infeasible):
        check_config(TrainConfig(preprocessing="zca", pca_components=65), load_dataset("digits"))
    check_config(TrainConfig(preprocessing="zca", pca_components=64), load_dataset("digits"))


def test_search_with_more_pca_directions_than_features_exits_2_and_writes_nothing(tmp_path):
    db = tmp_path / "x.db"
    process = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "x", "--workers", "1", "--stages", "1", "--trials", "2",
         "--epochs", "1", "--param", "preprocessing=pca", "--param", "pca_components=100,200",
         "--storage", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert len(process.stderr.strip().splitlines()) == 1 and "64 features" in process.stderr
    assert not db.exists()


def test_narrowing_never_widens_pca_directions_past_the_features(digits):
    """A best trial at 64 of 64 directions sits at the border: widening it upward would ask
    the next stage for directions the data does not have."""
    space = build_space(None, None, ["preprocessing=pca", "pca_components=20..64"])
    trials = [NarrowTrial(i, {**{n: s.choices[0] if hasattr(s, "choices") else s.low for n, s in space.items()},
                              "pca_components": k}, v)
              for i, (k, v) in enumerate([(64, 0.9), (60, 0.8), (30, 0.5), (20, 0.4)])]
    unbounded = narrow(space, trials)
    assert unbounded.space["pca_components"].high > 64  # what the campaign did before
    bounded = narrow(space, trials, limits=data_limits(digits))
    assert bounded.space["pca_components"].high == 64
    check_feasible(bounded.space, digits)


def test_hpo_narrow_keeps_pca_directions_within_the_features(tmp_path):
    """The best trial of stage 1 at 64 of digits' 64 features: stage 2 must not ask for more
    (the border rule alone widens the range to 80, which no trial could train)."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage, plan = make_stage(url, "pc", trials=4, params=["hidden_sizes=16", "preprocessing=pca",
                                                              "pca_components=32..64"])
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    space = SearchSpace.from_dict(plan.space)
    for k, value in ((64, 0.9), (60, 0.8), (40, 0.5), (32, 0.4)):
        study.enqueue_trial({"pca_components": k})
        study.tell(study.ask(space.to_distributions()), value)
    result = invoke("narrow", "pc/stage-1", "--dry-run", "--format", "json", "--storage", url)
    assert result.exit_code == 0, result.output
    change = next(c for c in json.loads(result.stdout)["changes"] if c["param"] == "pca_components")
    assert change["new"].endswith(", 64]"), change


# -- network size ---------------------------------------------------------------------------------
def test_a_network_too_large_for_memory_is_refused(digits):
    with pytest.raises(Infeasible, match=r"hidden_sizes 10000000-10000000 needs about .* GB"):
        check_feasible(build_space(None, None, ["hidden_sizes=100,10000000-10000000"]), digits)
    assert_refused(invoke("train", "--hidden", "10000000,10000000", "--epochs", "1"), "memory")


# -- datasets ---------------------------------------------------------------------------------------
def test_npz_labels_of_any_size_become_classes(tmp_path):
    """Reproduced: a label 10**9 made 10**9 + 1 output classes, and every trial failed."""
    labels = np.array([3, 7, 10**9])
    path = write_npz(tmp_path / "big.npz", y=lambda split, rows: labels[np.arange(rows) % 3])
    data = load_dataset(f"npz:{path}")
    assert data.num_classes == 3 and data.class_labels == (3, 7, 10**9)
    np.testing.assert_array_equal(data.y_train[:3], [0, 1, 2])
    check_feasible(build_space(), data)
    result = invoke("train", "--dataset", f"npz:{path}", "--epochs", "1", "--hidden", "8", "--json")
    assert result.exit_code == 0, result.output


def test_npz_labels_beyond_int64_and_negative_labels_map_exactly(tmp_path):
    huge = np.array([0, 2**63 + 5, 2**64 - 1], dtype=np.uint64)
    path = write_npz(tmp_path / "u64.npz", y=lambda split, rows: huge[np.arange(rows) % 3])
    data = load_dataset(f"npz:{path}")
    assert data.class_labels == (0, 2**63 + 5, 2**64 - 1)
    signed = write_npz(tmp_path / "pm.npz", y=lambda split, rows: np.where(np.arange(rows) % 2, 1, -1))
    data = load_dataset(f"npz:{signed}")
    assert data.num_classes == 2 and data.class_labels == (-1, 1)
    # Labels already 0..K-1 stay as they are.
    assert load_dataset(f"npz:{write_npz(tmp_path / 'plain.npz')}").class_labels is None


def test_npz_without_features_or_with_one_class_is_refused(tmp_path):
    """Reproduced: X with zero columns trained a network on nothing, trial after trial."""
    empty = write_npz(tmp_path / "empty.npz", d=0, X=lambda split, rows: np.zeros((rows, 0)))
    with pytest.raises(DatasetError, match="X_train has no feature columns"):
        load_dataset(f"npz:{empty}")
    assert_refused(invoke("train", "--dataset", f"npz:{empty}", "--epochs", "1"), "no feature columns")
    one = write_npz(tmp_path / "one.npz", y=lambda split, rows: np.full(rows, 4))
    with pytest.raises(DatasetError, match="every label is 4; a classifier needs at least two classes"):
        load_dataset(f"npz:{one}")


def test_a_training_split_with_one_class_or_no_validation_is_refused(tmp_path):
    one_in_train = write_npz(tmp_path / "t.npz", y=lambda split, rows: np.zeros(rows, int) if split == "train" else np.arange(rows) % 2)
    with pytest.raises(DatasetError, match="training split has only class 0"):
        check_dataset(load_dataset(f"npz:{one_in_train}"))
    digits = load_dataset("digits")
    with pytest.raises(DatasetError, match="validation split is empty"):
        check_dataset(digits.train_plus_val(), cv=0)
    check_dataset(digits.train_plus_val(), cv=5)


def write_cifar(directory, labels_of):
    """Six tiny CIFAR-10 batch files (NumPy 2 pickles, which the loader admits)."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        batch = {"data": data, "labels": labels_of(name, [int(v) for v in np.arange(20) % 10])}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=4))
    return directory


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda good: [2**70] + good[1:], r"labels must be in 0..9, found 0..1180591620717411303424"),
        (lambda good: [-(2**70)] + good[1:], r"labels must be in 0..9, found -1180591620717411303424..9"),
        (lambda good: np.array([2**64 - 1] + good[1:], dtype=np.uint64), r"found 0..18446744073709551615"),
        (lambda good: [1.5] + good[1:], "'labels' must be a flat list of ints"),
        (lambda good: np.array(good, dtype=np.float64), "'labels' must be a flat list of ints"),
    ],
    ids=["beyond-int64", "below-int64", "uint64", "float", "float-array"],
)
def test_cifar_labels_beyond_int64_or_not_integers_are_one_line(tmp_path, labels, message):
    """Reproduced: a label above int64 ended in OverflowError from NumPy."""
    directory = write_cifar(tmp_path / "cifar", lambda name, good: labels(good) if name == "data_batch_3" else good)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(f"cifar10:{directory}")
    assert "data_batch_3" in str(info.value) and "\n" not in str(info.value)
    assert_refused(invoke("train", "--dataset", f"cifar10:{directory}", "--epochs", "1"), "data_batch_3")


# -- space files ---------------------------------------------------------------------------------
def test_a_space_file_that_is_not_utf8_is_one_line(tmp_path):
    """Reproduced: UnicodeDecodeError traceback."""
    path = tmp_path / "space.toml"
    path.write_bytes(b'[params]\nactivation = "\xff\xfe"\n')
    with pytest.raises(SpaceError, match=r"space.toml: not UTF-8 text \(byte 0xff at offset 23\)"):
        load_space_file(path)
    db = tmp_path / "x.db"
    assert_refused(invoke("search", "--space", str(path), "--storage", f"sqlite:///{db}"), "not UTF-8")
    assert not db.exists()


# -- --top ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["search", "narrow"])
def test_top_nan_is_refused(tmp_path, command):
    """Reproduced: NaN passes click.FloatRange and reached the narrowing as a traceback."""
    db = tmp_path / "x.db"
    args = ["search", "--name", "t"] if command == "search" else ["narrow", "t/stage-1"]
    assert_refused(invoke(*args, "--top", "nan", "--storage", f"sqlite:///{db}"), "--top", "nan")
    assert not db.exists()


# -- nothing to narrow from ------------------------------------------------------------------------
def test_a_stage_without_a_complete_trial_names_what_it_had():
    space = build_space()
    params = {n: s.choices[0] if hasattr(s, "choices") else s.low for n, s in space.items()}
    trials = [NarrowTrial(0, params, None, "PRUNED", "pruned at step 1: 0.1 below the median"),
              NarrowTrial(1, params, None, "PRUNED", "diverged at epoch 1, step 3: loss is nan"),
              NarrowTrial(2, params, None, "PRUNED", "diverged at epoch 2, step 1: loss 9 > 3x initial 2.30"),
              NarrowTrial(3, {}, None, "FAIL")]
    with pytest.raises(NothingToNarrow, match=r"^c1/stage-1 has nothing to narrow from: .*\(1 FAIL, 3 PRUNED \(2 diverged\)\)$") as info:
        narrow(space, trials, stage="c1/stage-1")
    assert info.value.counts["diverged"] == 2 and info.value.counts["PRUNED"] == 3


def test_narrow_on_an_all_pruned_stage_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage, plan = make_stage(url, "p", trials=3)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    space = SearchSpace.from_dict(plan.space)
    for _ in range(3):
        study.tell(study.ask(space.to_distributions()), state=optuna.trial.TrialState.PRUNED)
    line = assert_refused(invoke("narrow", "p/stage-1", "--storage", url), "p/stage-1")
    assert "narrow from" in line and "3 pruned" in line.lower()


# -- storage URL and heartbeat settings --------------------------------------------------------------
def test_a_sqlite_file_in_a_missing_folder_is_one_line(tmp_path):
    """Reproduced: FileNotFoundError traceback for the lock file."""
    url = f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}"
    for action in (backend.ensure_schema, backend.open_storage):
        with pytest.raises(StorageError, match=f"no folder {tmp_path / 'nowhere'} for the SQLite file x.db"):
            action(url)
    assert_refused(invoke("init", "--storage", url), "no folder")
    assert_refused(invoke("studies", "--storage", url), "x.db")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HPO_HEARTBEAT_INTERVAL": "abc"}, "HPO_HEARTBEAT_INTERVAL must be a whole number of seconds >= 1, got 'abc'"),
        ({"HPO_HEARTBEAT_INTERVAL": "0"}, "HPO_HEARTBEAT_INTERVAL must be a whole number"),
        ({"HPO_HEARTBEAT_INTERVAL": "1.5"}, "HPO_HEARTBEAT_INTERVAL must be a whole number"),
        ({"HPO_HEARTBEAT_GRACE": "-3"}, "HPO_HEARTBEAT_GRACE must be a whole number"),
        ({"HPO_HEARTBEAT_INTERVAL": "5", "HPO_HEARTBEAT_GRACE": "5"}, "must be longer than HPO_HEARTBEAT_INTERVAL"),
    ],
    ids=["text", "zero", "fraction", "negative", "grace-not-longer"],
)
def test_bad_heartbeat_settings_are_one_line_at_the_first_command_that_opens_storage(tmp_path, env, message):
    """Reproduced: HPO_HEARTBEAT_INTERVAL=abc was a ValueError at import, in every command."""
    with pytest.raises(StorageError, match=message):
        backend.heartbeat_settings(env)
    db = tmp_path / "x.db"
    full_env = {**os.environ, **env}

    def hpo(*args):
        return subprocess.run([sys.executable, "-m", "hpo", *args], capture_output=True, text=True, env=full_env, timeout=120)

    assert hpo("--help").returncode == 0  # importing is not using
    for args in (["init"], ["search", "--name", "h", "--workers", "1", "--trials", "1", "--stages", "1"]):
        process = hpo(*args, "--storage", f"sqlite:///{db}")
        assert process.returncode == 2, process.stderr[-2000:]
        lines = process.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], process.stderr
    assert not db.exists()
    backend.ensure_schema(f"sqlite:///{db}")  # with this process's settings
    process = hpo("studies", "--storage", f"sqlite:///{db}")
    assert process.returncode == 2 and message in process.stderr, process.stderr[-2000:]
    assert len(process.stderr.strip().splitlines()) == 1, process.stderr


def test_heartbeat_defaults_and_the_fault_tests_settings_are_accepted():
    assert backend.heartbeat_settings({}) == (10, 30)
    assert backend.heartbeat_settings({"HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3"}) == (1, 3)


# -- TrainConfig -----------------------------------------------------------------------------------
def test_train_config_refuses_a_preprocessing_that_does_not_exist():
    with pytest.raises(ValueError, match="unknown preprocessing 'whiten'"):
        TrainConfig(preprocessing="whiten")
    with pytest.raises(ValueError, match="unknown activation"):
        TrainConfig.from_dict({"activation": ["relu"]})  # unhashable: a TypeError before

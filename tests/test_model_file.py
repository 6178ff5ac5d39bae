"""The saved model file: what a user loads with NumPy, what it predicts, what it refuses."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from workers.data import PREPROCESSING, load_dataset
from workers.model_file import (
    PRE_ARRAYS,
    ModelFileError,
    SavedModel,
    confusion,
    load_model,
    load_rows,
    model_info,
    save_labels,
    save_model,
    write_atomically,
)
from workers.run import cached_dataset, train_and_test
from workers.train import TrainConfig


def trained(config: TrainConfig, spec: str = "digits", merge_val: bool = True) -> tuple[SavedModel, object]:
    dataset = cached_dataset(spec, 0) if spec == "digits" else load_dataset(spec)
    evaluation = train_and_test(config, dataset, merge_val=merge_val)
    info = model_info(spec, 0, "train+val" if merge_val else "train", {"command": "test"},
                      {"train": evaluation.train_accuracy, "test": evaluation.test_accuracy})
    return SavedModel.from_evaluation(evaluation, dataset.class_labels, info), evaluation


@pytest.fixture(scope="module")
def small_model() -> SavedModel:
    return trained(TrainConfig(hidden_sizes=(16,), epochs=1))[0]


CONFIGS = [
    TrainConfig(hidden_sizes=(16, 8), epochs=2, preprocessing="none"),
    TrainConfig(hidden_sizes=(16,), epochs=2, batch_norm=False, activation="tanh", preprocessing="standardize"),
    TrainConfig(hidden_sizes=(12,), epochs=2, activation="maxout", maxout_k=3, preprocessing="pca", pca_components=0.9),
    TrainConfig(hidden_sizes=(16,), epochs=2, preprocessing="zca", pca_components=20, dtype="float64"),
    TrainConfig(hidden_sizes=(16,), epochs=2, preprocessing="pca_whiten", pca_components=10, activation="elu"),
    TrainConfig(hidden_sizes=(16,), epochs=2, preprocessing="center", activation="leaky_relu"),
]


def test_every_preprocessing_is_saved_and_tested():
    assert set(PRE_ARRAYS) == set(PREPROCESSING) == {config.preprocessing for config in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.preprocessing}-{c.activation}-bn{int(c.batch_norm)}-{c.dtype}")
def test_a_model_comes_back_bit_for_bit_and_predicts_what_it_scored(tmp_path, config):
    model, evaluation = trained(config)
    path = save_model(model, tmp_path / "m-best.npz")
    loaded = load_model(path)
    assert loaded.config == config
    assert loaded.spec == model.spec
    for saved, back in ((model.params, loaded.params), (model.bn_state, loaded.bn_state)):
        assert saved.keys() == back.keys()
        for name in saved:
            assert back[name].dtype == saved[name].dtype and back[name].tobytes() == saved[name].tobytes(), name
    for name in ("mean", "scale", "projection", "eigenvalues"):
        before, after = getattr(model.preprocessor, name), getattr(loaded.preprocessor, name)
        assert (before is None) == (after is None), name
        if before is not None:
            assert after.tobytes() == before.tobytes(), name
    dataset = cached_dataset("digits", 0)
    # the test accuracy the retrain reported, exactly, from the file alone
    assert float(np.mean(loaded.predict(dataset.X_test) == dataset.y_test)) == evaluation.test_accuracy
    assert confusion(loaded, dataset.X_test, dataset.y_test, tuple(range(10)))["accuracy"] == evaluation.test_accuracy


def test_numpy_loads_it_without_pickles_and_reads_its_description(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as archive:
        files = set(archive.files)
        meta = json.loads(str(archive["hpo_model"]))
        W1 = archive["param.W1"]
    assert files == {"hpo_model", "param.W1", "param.gamma1", "param.beta1", "param.W2", "param.b2", "bn.mean1", "bn.var1",
                     "pre.mean", "pre.scale"}  # the default preprocessing standardizes
    assert meta["format"] == "hpo-model" and meta["version"] == 1
    assert meta["config"]["hidden_sizes"] == [16] and meta["input_dim"] == 64 and meta["num_classes"] == 10
    assert meta["preprocessing"] == "standardize" and meta["class_labels"] is None
    assert meta["info"]["dataset"] == "digits" and meta["info"]["trained_on"] == "train+val"
    assert W1.shape == (64, 16) and W1.dtype == np.float32


def test_labels_of_an_npz_dataset_come_back_as_given(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([3, 7, 10**9])
    centers = rng.normal(size=(3, 5)) * 4

    def split(n):
        y = labels[np.arange(n) % 3]
        return centers[np.arange(n) % 3] + rng.normal(size=(n, 5)), y

    X_train, y_train = split(90)
    X_val, y_val = split(30)
    X_test, y_test = split(30)
    data = tmp_path / "data.npz"
    np.savez(data, X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val, X_test=X_test, y_test=y_test)
    model, evaluation = trained(TrainConfig(hidden_sizes=(8,), epochs=20), f"npz:{data}")
    loaded = load_model(save_model(model, tmp_path / "m.npz"))
    assert loaded.class_labels == (3, 7, 10**9)
    predicted = loaded.predict(X_test)
    assert predicted.dtype == np.int64 and set(predicted.tolist()) <= {3, 7, 10**9}
    assert float(np.mean(predicted == y_test)) == evaluation.test_accuracy
    dataset = load_dataset(f"npz:{data}")
    figures = confusion(loaded, dataset.X_test, dataset.y_test, dataset.class_labels)
    assert figures["labels"] == [3, 7, 10**9] and figures["accuracy"] == evaluation.test_accuracy
    assert np.sum(figures["confusion_matrix"]) == 30


def test_predictions_are_written_whole_and_read_back(tmp_path, small_model):
    rows = cached_dataset("digits", 0).X_test[:7]
    np.save(tmp_path / "X.npy", rows.astype(np.float32))  # any real dtype; rows are read as float64
    labels = small_model.predict(load_rows(tmp_path / "X.npy"))
    save_labels(labels, tmp_path / "y.npy")
    assert np.load(tmp_path / "y.npy", allow_pickle=False).tolist() == small_model.predict(rows).tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "y.npy"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.npz")
    before = path.read_bytes()

    def half_then_fail(f):
        f.write(b"PK half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    with pytest.raises(ModelFileError, match="no folder"):
        save_model(small_model, tmp_path / "missing" / "m.npz")


# -- what it refuses: one line naming the file ---------------------------------------------------
def _edited(archive_path, edit):
    arrays = dict(np.load(archive_path, allow_pickle=False))
    edit(arrays)
    return arrays


def _meta_edit(**changes):
    def edit(arrays):
        meta = json.loads(str(arrays["hpo_model"]))
        meta.update(changes)
        arrays["hpo_model"] = np.array(json.dumps(meta))
    return edit


BAD_FILES = {
    "missing": (None, "no such model file"),
    "folder": (None, "is a folder"),
    "text": (lambda p, good: p.write_text("not a model"), "not an hpo model file"),
    "truncated": (lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "truncated"),
    "pickle": (lambda p, good: p.write_bytes(pickle.dumps({"W1": [1, 2]})), "not an hpo model file"),
    "pickled-arrays": (lambda p, good: np.savez(p, hpo_model=np.array([{"a": 1}], dtype=object)), "pickled object array"),
    "other-npz": (lambda p, good: np.savez(p, weights=np.zeros(3)), "no hpo_model entry"),
    "npy": (lambda p, good: np.save(p, np.zeros(3)), "single .npy array"),
    "version": (lambda p, good: np.savez(p, **_edited(good, _meta_edit(version=2))), "format version 2"),
    "format": (lambda p, good: np.savez(p, **_edited(good, _meta_edit(format="other"))), "not an hpo model file"),
    "shape": (lambda p, good: np.savez(p, **_edited(good, lambda a: a.update({"param.W1": a["param.W1"][:, :3]}))), "param.W1 has shape (64, 3)"),
    "dtype": (lambda p, good: np.savez(p, **_edited(good, lambda a: a.update({"param.W2": a["param.W2"].astype(np.float64)}))), "param.W2 has dtype float64"),
    "missing-array": (lambda p, good: np.savez(p, **_edited(good, lambda a: a.pop("bn.var1"))), "missing array(s) bn.var1"),
    "extra-array": (lambda p, good: np.savez(p, **_edited(good, lambda a: a.update({"param.W9": np.zeros(2)}))), "unexpected array(s) param.W9"),
    "config": (lambda p, good: np.savez(p, **_edited(good, _meta_edit(config={"activation": "swish"}))), "swish"),
    "input-dim": (lambda p, good: np.savez(p, **_edited(good, _meta_edit(input_dim=65))), "pre.mean has shape (64,), expected (65,)"),
    "labels": (lambda p, good: np.savez(p, **_edited(good, _meta_edit(class_labels=[1, 2]))), "class_labels must be 10 integers"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_model_file_is_one_line_naming_it(tmp_path, small_model, case):
    make, message = BAD_FILES[case]
    good = save_model(small_model, tmp_path / "good.npz")
    path = tmp_path / "bad.npz"
    if case == "folder":
        path.mkdir()
    elif make is not None:
        make(path, good)
        if case == "npy":
            (tmp_path / "bad.npz.npy").rename(path)
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((3, 20)), "has 20 features per row; the model takes 64"),
        (np.zeros(64), "must be 2-D"),
        (np.full((2, 64), np.nan), "NaN or infinite"),
        (np.array([["a"] * 64]), "real numbers"),
    ],
)
def test_rows_the_model_cannot_take_are_refused(small_model, rows, message):
    with pytest.raises(ModelFileError, match=message):
        small_model.predict(rows, what="X.npy")


def test_an_input_file_that_is_no_array_of_rows_is_one_line(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", X=np.zeros((2, 64)))
    (tmp_path / "text.npy").write_text("1,2,3")
    for name, message in (("objects.npy", "pickled objects"), ("archive.npz", "is an .npz archive"),
                          ("text.npy", "not a readable .npy array"), ("absent.npy", "no such file")):
        with pytest.raises(ModelFileError, match=message) as caught:
            load_rows(tmp_path / name)
        assert "\n" not in str(caught.value)

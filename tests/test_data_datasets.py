"""Datasets: splits, stratification, k-fold, and the file loaders' checks.

The CIFAR-10 tests build small fake batch directories written the way the real
batches were (Python 2 cPickle, protocol 2, str as BINSTRING opcodes), so the loader
and its restricted unpickler meet the same opcodes and globals as on the real files.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import pickletools
import random
import shlex
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.data import DATASET_SPECS, Dataset, DatasetError, kfold_splits, load_dataset, stratified_split
from workers.data import datasets as datasets_module
from workers.data.safe_pickle import ALLOWED_GLOBALS, ForbiddenGlobal, load_numpy_pickle

SPLITS = ("train", "val", "test")


def class_fractions(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=num_classes) / len(y)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


def test_digits_shapes_dtypes_and_sizes(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.X_train.shape == (1079, 64)
    assert digits.X_val.shape == (359, 64)
    assert digits.X_test.shape == (359, 64)
    for split in SPLITS:
        X, y = getattr(digits, f"X_{split}"), getattr(digits, f"y_{split}")
        assert X.dtype == np.float64 and y.dtype == np.int64
        assert y.shape == (X.shape[0],)
        assert set(np.unique(y)) == set(range(10))
        # raw pixel intensities, not rescaled
        assert X.min() == 0 and X.max() == 16 and np.all(X == np.round(X))


def test_digits_splits_are_stratified(digits):
    everything = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    overall = class_fractions(everything, 10)
    for split in SPLITS:
        y = getattr(digits, f"y_{split}")
        # within two examples of the exact share of every class
        assert np.abs(class_fractions(y, 10) - overall).max() <= 2 / len(y)


def test_digits_same_seed_same_split_other_seed_other_split(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for split in SPLITS:
        np.testing.assert_array_equal(getattr(again, f"X_{split}"), getattr(digits, f"X_{split}"))
        np.testing.assert_array_equal(getattr(again, f"y_{split}"), getattr(digits, f"y_{split}"))
    assert not np.array_equal(other.X_val, digits.X_val)
    assert not np.array_equal(other.X_test, digits.X_test)


def test_digits_splits_partition_the_data(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # every row of the full set appears exactly once across the three splits
    full = sorted(map(bytes, np.column_stack([bunch.data, bunch.target]).astype(np.float64)))
    ours = np.concatenate(
        [np.column_stack([getattr(digits, f"X_{s}"), getattr(digits, f"y_{s}")]) for s in SPLITS]
    )
    assert sorted(map(bytes, ours)) == full


def test_digits_arrays_are_scikit_learns_exactly_and_load_without_importing_it():
    from sklearn.datasets import load_digits

    X, y = datasets_module._digits_arrays()
    bunch = load_digits()
    assert X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
    # what a worker pays at start: scikit-learn (and SciPy with it) took a second to import
    code = "import sys; from workers.data import load_dataset; load_dataset('digits'); print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert shown.stdout.strip() == "[]"


def test_dataset_arrays_are_read_only(digits):
    # loaders cache arrays across calls: an in-place edit must not leak into later trials
    with pytest.raises(ValueError, match="read-only"):
        digits.X_train[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        digits.y_val[0] = 0


def test_train_plus_val(digits):
    merged = digits.train_plus_val()
    assert merged.X_train.shape == (1079 + 359, 64)
    np.testing.assert_array_equal(merged.X_train, np.concatenate([digits.X_train, digits.X_val]))
    np.testing.assert_array_equal(merged.y_train, np.concatenate([digits.y_train, digits.y_val]))
    assert merged.X_val.shape == (0, 64) and merged.X_val.dtype == np.float64
    assert merged.y_val.shape == (0,) and merged.y_val.dtype == np.int64
    assert merged.X_test is digits.X_test or np.array_equal(merged.X_test, digits.X_test)
    assert merged.num_classes == digits.num_classes and merged.name == digits.name


def test_dataset_checks_its_arrays():
    X, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(DatasetError, match="toy: val split needs X"):
        Dataset("toy", X, y, X[:3], y, X, y, num_classes=2)
    with pytest.raises(DatasetError, match="toy: X_test has 2 features"):
        Dataset("toy", X, y, X, y, X[:, :2], y, num_classes=2)
    with pytest.raises(DatasetError, match=r"toy: y_train has labels outside \[0, 1\)"):
        Dataset("toy", X, y, X, y, X, y, num_classes=1)
    with pytest.raises(DatasetError, match="toy: y_val must hold integer labels"):
        Dataset("toy", X, y, X, y * 1.0, X, y, num_classes=2)
    caller_owned = np.zeros((4, 3))
    Dataset("toy", caller_owned, y, X, y, X, y, num_classes=2)
    assert caller_owned.flags.writeable  # the read-only flag is on a view, not on the caller's array


# ---------------------------------------------------------------------------
# spec parsing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["mnist", "cifar100:/x", "npz", "Digits", "", "csv:data.csv"])
def test_unknown_spec_lists_the_valid_forms(spec):
    with pytest.raises(DatasetError, match="unknown dataset spec") as info:
        load_dataset(spec)
    message = str(info.value)
    assert "\n" not in message
    for form in DATASET_SPECS:
        assert form in message


@pytest.mark.parametrize("spec", ["cifar10:", "npz:"])
def test_spec_without_location(spec):
    with pytest.raises(DatasetError, match="after"):
        load_dataset(spec)


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_bad_seed(seed):
    with pytest.raises(DatasetError, match="seed"):
        load_dataset("digits", seed=seed)


# ---------------------------------------------------------------------------
# stratified_split and kfold_splits
# ---------------------------------------------------------------------------

labels = st.lists(st.integers(0, 6), min_size=1, max_size=300).map(lambda v: np.array(v, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(y=labels, fractions=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4), seed=st.integers(0, 2**32))
def test_stratified_split_partitions_and_balances(y, fractions, seed):
    N = len(y)
    weights = np.array(fractions) / sum(fractions)
    sizes = [int(np.floor(w * N)) for w in weights[1:]]
    sizes = (N - sum(sizes), *sizes)
    parts = stratified_split(y, sizes, seed)
    assert [len(p) for p in parts] == list(sizes)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(N))
    for part, size in zip(parts, sizes):
        for c in np.unique(y):
            share = size * np.sum(y == c) / N
            assert abs(np.sum(y[part] == c) - share) < 2
    again = stratified_split(y, sizes, seed)
    for a, b in zip(parts, again):
        np.testing.assert_array_equal(a, b)


def test_stratified_split_rejects_sizes_that_do_not_add_up():
    with pytest.raises(ValueError, match="sum to 5"):
        stratified_split(np.zeros(5, dtype=int), (2, 2), 0)


@st.composite
def labels_and_k(draw):
    k = draw(st.integers(2, 6))
    counts = draw(st.lists(st.integers(k, 40), min_size=1, max_size=6))
    y = np.repeat(np.arange(len(counts)), counts)
    order = np.random.default_rng(draw(st.integers(0, 1000))).permutation(len(y))
    return y[order], k


@settings(max_examples=60, deadline=None)
@given(case=labels_and_k(), seed=st.integers(0, 2**32))
def test_kfold_folds_partition_and_are_stratified(case, seed):
    y, k = case
    folds = kfold_splits(y, k, seed)
    assert len(folds) == k
    vals = [val for _, val in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(len(y)))
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert np.intersect1d(train, val).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    for c in np.unique(y):
        per_fold = [np.sum(y[val] == c) for val in vals]
        assert min(per_fold) >= 1 and max(per_fold) - min(per_fold) <= 1


def test_kfold_seeded():
    y = np.repeat(np.arange(3), 20)
    a, b, c = kfold_splits(y, 4, 7), kfold_splits(y, 4, 7), kfold_splits(y, 4, 8)
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b))
    assert not all(np.array_equal(x[1], z[1]) for x, z in zip(a, c))


@pytest.mark.parametrize("k", [1, 0, 6, 2.0, True])
def test_kfold_rejects_bad_k(k):
    y = np.array([0] * 5 + [1] * 9)  # smallest class has 5 examples
    with pytest.raises(DatasetError, match="k must be an int"):
        kfold_splits(y, k, 0)


def test_kfold_rejects_non_integer_labels():
    with pytest.raises(DatasetError, match="integer label"):
        kfold_splits(np.array([0.0, 1.0, 0.0, 1.0]), 2, 0)


# ---------------------------------------------------------------------------
# mnist1d
# ---------------------------------------------------------------------------


def _mnist1d_importable() -> bool:
    try:
        import mnist1d.data  # noqa: F401
    except ImportError:
        return False
    return True


needs_mnist1d = pytest.mark.skipif(
    not _mnist1d_importable(), reason="optional mnist1d package not installed (pip install hpo[mnist1d])"
)


@needs_mnist1d
def test_mnist1d_generates_offline_with_standard_split(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d generation tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)  # mnist1d's get_dataset would write a pickle here
    before = set(os.listdir("."))
    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)

    datasets_module._mnist1d_arrays.cache_clear()
    data = load_dataset("mnist1d", seed=0)

    # mnist1d reseeds the global generators; the loader must put them back
    assert random.random() == expected_py and np.random.random() == expected_np
    assert set(os.listdir(".")) == before
    assert data.num_classes == 10
    assert data.X_train.shape == (3200, 40) and data.X_val.shape == (800, 40)
    assert data.X_test.shape == (1000, 40)
    overall = class_fractions(np.concatenate([data.y_train, data.y_val]), 10)
    assert np.abs(class_fractions(data.y_val, 10) - overall).max() <= 2 / 800
    assert np.isfinite(data.X_train).all()


@needs_mnist1d
def test_mnist1d_is_cached_and_seed_only_moves_validation():
    a, b = load_dataset("mnist1d", seed=0), load_dataset("mnist1d", seed=1)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.y_val, b.y_val) or not np.array_equal(a.X_val, b.X_val)
    assert sorted(map(bytes, np.concatenate([a.X_train, a.X_val]))) == sorted(
        map(bytes, np.concatenate([b.X_train, b.X_val]))
    )
    assert datasets_module._mnist1d_arrays.cache_info().hits >= 1


def test_mnist1d_missing_package_is_a_dataset_error_caused_by_the_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # makes `import mnist1d` raise ImportError
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    fresh = functools.lru_cache(maxsize=1)(datasets_module._mnist1d_arrays.__wrapped__)
    monkeypatch.setattr(datasets_module, "_mnist1d_arrays", fresh)
    with pytest.raises(DatasetError, match="mnist1d package is not usable") as caught:
        load_dataset("mnist1d")
    # kept as the cause, from which the CLI names the extra that installs it (tests/test_extras.py)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError) and caught.value.__cause__.name.startswith("mnist1d")


# ---------------------------------------------------------------------------
# cifar10: a faithful fake of the python-version batches
# ---------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes protocol 2 the way Python 2 cPickle wrote the CIFAR-10 batches.

    Python 2 ``str`` (keys, the array's raw bytes, the dtype code) become
    SHORT_BINSTRING / BINSTRING, not Python 3's ``_codecs.encode`` call; arrays
    reduce through ``numpy.core.multiarray._reconstruct`` as NumPy 1.x spelled it.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if isinstance(obj, str):
            obj = obj.encode("latin-1")
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):
            return np.dtype, (obj.str[1:], 0, 1), (3, "|", None, None, None, -1, -1, 0)
        if type(obj) is np.ndarray:
            reconstruct = np.empty(0).__reduce__()[0]
            state = (1, obj.shape, obj.dtype, False, obj.tobytes())
            return reconstruct, (np.ndarray, (0,), "b"), state
        return NotImplemented


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def fake_batch(n: int, rng: np.random.Generator, label: str = "training batch") -> dict:
    return {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in rng.permutation(np.arange(n) % 10)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture
def cifar_dir(tmp_path):
    """5 training batches of 20 images and a test batch of 20, as on disk."""
    rng = np.random.default_rng(0)
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    batches = {}
    for name in BATCH_FILES:
        batches[name] = fake_batch(20, rng, name)
        (directory / name).write_bytes(py2_pickle(batches[name]))
    return directory, batches


def test_fake_batches_look_like_the_real_ones(cifar_dir):
    directory, batches = cifar_dir
    raw = (directory / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    globals_named = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert globals_named == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "BINSTRING" in ops and "SHORT_BINSTRING" in ops and "BINUNICODE" not in ops
    # and the documented way to read them gives back what was written
    loaded = pickle.loads(raw, encoding="bytes")
    np.testing.assert_array_equal(loaded[b"data"], batches["data_batch_1"][b"data"])


def test_cifar10_loads_and_carves_validation(cifar_dir):
    directory, batches = cifar_dir
    spec = f"cifar10:{directory}"
    data = load_dataset(spec, seed=3)
    assert data.name == spec and data.num_classes == 10
    assert data.X_train.shape == (90, 3072) and data.X_val.shape == (10, 3072)
    assert data.X_test.shape == (20, 3072) and data.X_train.dtype == np.float64
    np.testing.assert_array_equal(data.X_test, batches["test_batch"][b"data"].astype(np.float64))
    np.testing.assert_array_equal(data.y_test, batches["test_batch"][b"labels"])
    # validation comes from the training batches, one image of each class here
    train_rows = np.concatenate([batches[n][b"data"] for n in BATCH_FILES[:5]])
    train_labels = np.concatenate([batches[n][b"labels"] for n in BATCH_FILES[:5]])
    ours = np.concatenate([data.X_train, data.X_val])
    assert sorted(map(bytes, ours.astype(np.uint8))) == sorted(map(bytes, train_rows))
    assert sorted(np.concatenate([data.y_train, data.y_val])) == sorted(train_labels)
    assert np.bincount(data.y_val, minlength=10).tolist() == [1] * 10
    again = load_dataset(spec, seed=3)
    np.testing.assert_array_equal(again.X_val, data.X_val)


def test_cifar10_accepts_numpy2_pickles_with_str_keys(tmp_path):
    # a batch re-saved from Python 3 / NumPy 2 (protocol 4, str keys) loads too
    rng = np.random.default_rng(1)
    for name in BATCH_FILES:
        batch = {k.decode(): v for k, v in fake_batch(10, rng).items()}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=4))
    data = load_dataset(f"cifar10:{tmp_path}", seed=0)
    assert data.X_train.shape == (45, 3072) and data.X_test.shape == (10, 3072)


def _corrupt(directory, name, batch):
    (directory / name).write_bytes(py2_pickle(batch))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d, b: (d / "data_batch_3").unlink(), r"data_batch_3: CIFAR-10 batch file is missing"),
        (
            lambda d, b: (d / "data_batch_2").write_bytes((d / "data_batch_2").read_bytes()[:5000]),
            r"data_batch_2: truncated pickle",
        ),
        (lambda d, b: (d / "test_batch").write_bytes(b""), r"test_batch: truncated pickle"),
        (lambda d, b: (d / "data_batch_1").write_bytes(b"\x89PNG\r\n\x1a\n not a pickle"), r"data_batch_1: not a valid"),
        (
            lambda d, b: _corrupt(d, "data_batch_4", {**b["data_batch_4"], b"data": b["data_batch_4"][b"data"][:, :3071]}),
            r"data_batch_4: 'data' must have shape \(N, 3072\) with N > 0, got \(20, 3071\)",
        ),
        (
            lambda d, b: _corrupt(d, "data_batch_4", {**b["data_batch_4"], b"data": b["data_batch_4"][b"data"].reshape(-1)}),
            r"data_batch_4: 'data' must have shape",
        ),
        (
            lambda d, b: _corrupt(
                d, "data_batch_5", {**b["data_batch_5"], b"data": b["data_batch_5"][b"data"].astype(np.float32)}
            ),
            r"data_batch_5: 'data' must be a uint8 array, got dtype float32",
        ),
        (
            lambda d, b: _corrupt(d, "data_batch_1", {**b["data_batch_1"], b"labels": b["data_batch_1"][b"labels"][:-1]}),
            r"data_batch_1: 19 labels for 20 images",
        ),
        (
            lambda d, b: _corrupt(d, "test_batch", {**b["test_batch"], b"labels": [10] + b["test_batch"][b"labels"][1:]}),
            r"test_batch: labels must be in 0..9",
        ),
        (
            lambda d, b: _corrupt(d, "test_batch", {**b["test_batch"], b"labels": [-1] + b["test_batch"][b"labels"][1:]}),
            r"test_batch: labels must be in 0..9",
        ),
        (
            lambda d, b: _corrupt(d, "data_batch_2", {k: v for k, v in b["data_batch_2"].items() if k != b"labels"}),
            r"data_batch_2: batch dict has no 'labels' entry",
        ),
        (lambda d, b: _corrupt(d, "data_batch_2", [b["data_batch_2"][b"data"]]), r"data_batch_2: expected a pickled dict"),
        (
            lambda d, b: _corrupt(d, "data_batch_3", {**b["data_batch_3"], b"labels": ["cat"] * 20}),
            r"data_batch_3: 'labels' must be a flat list of ints",
        ),
    ],
    ids=[
        "missing-batch",
        "truncated",
        "empty-file",
        "not-a-pickle",
        "wrong-width",
        "flat-data",
        "float-data",
        "label-count",
        "label-too-big",
        "label-negative",
        "no-labels-key",
        "not-a-dict",
        "string-labels",
    ],
)
def test_cifar10_damaged_file_gets_one_clear_error(cifar_dir, damage, message):
    directory, batches = cifar_dir
    damage(directory, batches)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(f"cifar10:{directory}")
    assert "\n" not in str(info.value)
    assert str(directory) in str(info.value)  # the full path of the file


def test_cifar10_directory_missing(tmp_path):
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}")


# --- pickles that try to run code -------------------------------------------


def _write_marker_code(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


class EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (_write_marker_code(self.marker),)


class ExecPayload(EvalPayload):
    def __reduce__(self):
        return exec, (_write_marker_code(self.marker),)


class OsSystemPayload(EvalPayload):
    def __reduce__(self):
        return os.system, (f"{shlex.quote(sys.executable)} -c {shlex.quote(_write_marker_code(self.marker))}",)


class SubprocessPayload(EvalPayload):
    def __reduce__(self):
        return subprocess.call, ([sys.executable, "-c", _write_marker_code(self.marker)],)


PAYLOADS = [EvalPayload, ExecPayload, OsSystemPayload, SubprocessPayload]


def _armed_batch(payload_cls, marker, protocol, rng) -> bytes:
    # The payload sits where the labels belong, after a genuine-looking data array.
    batch = fake_batch(20, rng)
    batch[b"labels"] = payload_cls(marker)
    return pickle.dumps(batch, protocol=protocol)


@pytest.mark.parametrize("payload_cls", PAYLOADS, ids=lambda c: c.__name__)
def test_payloads_are_live(tmp_path, payload_cls):
    """Control: unpickled with plain pickle, each payload really creates its marker."""
    marker = tmp_path / "marker"
    pickle.loads(_armed_batch(payload_cls, marker, 2, np.random.default_rng(0)))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("payload_cls", PAYLOADS, ids=lambda c: c.__name__)
def test_cifar10_code_running_pickle_is_refused_and_runs_nothing(cifar_dir, tmp_path, payload_cls, protocol):
    directory, _ = cifar_dir
    marker = tmp_path / "marker"
    (directory / "data_batch_2").write_bytes(_armed_batch(payload_cls, marker, protocol, np.random.default_rng(0)))
    with pytest.raises(DatasetError, match=r"data_batch_2: unsafe pickle, refuses to load global") as info:
        load_dataset(f"cifar10:{directory}")
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "stream",
    [
        b"c__builtin__\neval\n(S'1'\ntR.",  # Python 2 spelling of builtins.eval
        b"cnumpy\nsys\n.",  # a module reachable as an attribute of an allowed one
        b"cnumpy.core.multiarray\n_reconstruct.__globals__\n.",  # dotted-name walk
        b"\x80\x04\x8c\x05numpy\x8c\x0bndarray.mro\x93.",  # STACK_GLOBAL dotted walk
    ],
    ids=["py2-builtin", "module-attr", "dotted", "stack-global-dotted"],
)
def test_restricted_unpickler_refuses_every_other_global(stream):
    with pytest.raises(ForbiddenGlobal, match="refuses to load global"):
        load_numpy_pickle(stream)


def test_restricted_unpickler_refuses_extension_codes():
    # EXT1 looks a global up in copyreg's registry; unregistered codes fail, and a
    # registered one would still have to pass find_class
    with pytest.raises((ForbiddenGlobal, ValueError)):
        load_numpy_pickle(b"\x80\x02\x82\x01.")


def test_restricted_unpickler_allowlist_is_exactly_array_reconstruction():
    assert set(ALLOWED_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (3, 4):  # NumPy 2 spelling, written by this Python
        np.testing.assert_array_equal(load_numpy_pickle(pickle.dumps({"a": a}, protocol=protocol))["a"], a)
    # Python 3 writes bytes at protocol 2 as _codecs.encode(...) calls: not admitted,
    # since the real (Python 2) batches never need it
    with pytest.raises(ForbiddenGlobal, match="_codecs.encode"):
        load_numpy_pickle(pickle.dumps({"a": a}, protocol=2))


# ---------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------


def npz_arrays(rng=None) -> dict[str, np.ndarray]:
    rng = rng or np.random.default_rng(0)
    out = {}
    for split, n in zip(SPLITS, (30, 10, 12)):
        out[f"X_{split}"] = rng.normal(size=(n, 5))
        out[f"y_{split}"] = np.arange(n) % 3
    return out


def test_npz_round_trip(tmp_path):
    path = tmp_path / "toy.npz"
    arrays = npz_arrays()
    np.savez(path, **arrays, extra=np.zeros(3))  # extra arrays are ignored
    data = load_dataset(f"npz:{path}", seed=5)
    assert data.name == f"npz:{path}" and data.num_classes == 3
    for name, value in arrays.items():
        got = getattr(data, name)
        np.testing.assert_array_equal(got, value)
        assert got.dtype == (np.float64 if name.startswith("X") else np.int64)


def test_npz_integer_features_and_unsigned_labels_are_converted(tmp_path):
    path = tmp_path / "ints.npz"
    arrays = npz_arrays()
    arrays["X_train"] = (arrays["X_train"] * 10).astype(np.int16)
    arrays["y_val"] = arrays["y_val"].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    data = load_dataset(f"npz:{path}")
    assert data.X_train.dtype == np.float64 and data.y_val.dtype == np.int64


def _without(name):
    def edit(a):
        del a[name]

    return edit


def _set(name, value_fn):
    def edit(a):
        a[name] = value_fn(a)

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_without("y_val"), r"missing array\(s\) y_val"),
        (_without("X_test"), r"missing array\(s\) X_test"),
        (_set("X_train", lambda a: a["X_train"].reshape(-1)), r"X_train must be 2-D \(N, D\), got shape \(150,\)"),
        (_set("X_val", lambda a: a["X_val"][:, :, None]), r"X_val must be 2-D"),
        (_set("y_train", lambda a: a["y_train"][:, None]), r"y_train must be 1-D"),
        (_set("y_test", lambda a: a["y_test"].astype(np.float64)), r"y_test must hold integer class labels, got dtype float64"),
        (_set("y_val", lambda a: a["y_val"] > 0), r"y_val must hold integer class labels, got dtype bool"),
        (_set("y_train", lambda a: a["y_train"][:-1]), r"X_train has 30 rows but y_train has 29"),
        (_set("X_test", lambda a: a["X_test"][:, :4]), r"X_test has 4 features but X_train has 5"),
        (_set("X_val", lambda a: np.where(np.eye(10, 5, dtype=bool), np.nan, a["X_val"])), r"X_val contains NaN"),
        (_set("X_train", lambda a: np.full((30, 5), np.inf)), r"X_train contains NaN or infinite"),
        (_set("X_train", lambda a: a["X_train"].astype(np.complex128)), r"X_train must hold real numbers"),
        (_set("X_val", lambda a: a["X_val"][:0]), r"X_val has 0 rows"),
        (lambda a: a.update(X_test=a["X_test"][:0], y_test=a["y_test"][:0]), r"X_test is empty"),
    ],
    ids=[
        "missing-y",
        "missing-X",
        "flat-X",
        "3d-X",
        "2d-y",
        "float-y",
        "bool-y",
        "length-mismatch",
        "feature-mismatch",
        "nan",
        "inf",
        "complex",
        "empty-split",
        "empty-split-both",
    ],
)
def test_npz_malformed_gets_one_clear_error(tmp_path, edit, message):
    arrays = npz_arrays()
    edit(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(f"npz:{path}")
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "marker"
    arrays = npz_arrays()
    arrays["y_train"] = np.array([EvalPayload(marker)] * 30, dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, **arrays)  # np.savez pickles object arrays
    with pytest.raises(DatasetError, match=r"y_train is an object array"):
        load_dataset(f"npz:{path}")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "npz file is missing"),
        (b"PK\x03\x04 truncated zip", "not a readable .npz archive"),
        (b"plain text", "not a readable .npz archive"),
        ("npy", "holds a single .npy array"),
        ("truncated", "not a readable .npz archive"),
        ("corrupted", "X_train is unreadable"),
    ],
    ids=["missing", "broken-zip", "text", "npy", "truncated-npz", "corrupted-member"],
)
def test_npz_unreadable_file(tmp_path, content, message):
    path = tmp_path / "data.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif content == "truncated":
        np.savez(path, **npz_arrays())
        path.write_bytes(path.read_bytes()[:-200])
    elif content == "corrupted":
        np.savez_compressed(path, **npz_arrays())
        raw = path.read_bytes()
        path.write_bytes(raw[:400] + bytes([raw[400] ^ 0xFF]) + raw[401:])  # inside X_train's data
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(f"npz:{path}")
    assert str(path) in str(info.value) and "\n" not in str(info.value)

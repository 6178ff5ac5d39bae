"""Datasets: load, validate and split into train / validation / test.

``load_dataset(spec, seed)`` understands four specs:

- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 x 64, pixel values 0..16),
  split 60/20/20, stratified by class, with ``seed``;
- ``"mnist1d"``: generated offline by the optional ``mnist1d`` package with its default
  arguments (4000 train / 1000 test, 40 features); 20% of train becomes validation;
- ``"cifar10:DIR"``: the CIFAR-10 "python version" batches in DIR; 10% of the 50000
  training images become validation. X rows are the raw 3072 bytes of an image as
  float64 (1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major);
- ``"npz:PATH"``: a NumPy archive holding X_train, y_train, X_val, y_val, X_test,
  y_test, used as given. Its labels may be any integers: the K distinct labels of the
  three splits become classes 0..K-1 in increasing order ({3, 7, 10**9} is three
  classes), and ``Dataset.class_labels`` keeps the original label of each class.

Validation is always carved from training data, never from test data, with a
stratified split that depends only on ``seed``.

Every problem with a dataset (unknown spec, missing package, missing, truncated or
malformed file) raises ``DatasetError`` with one line naming the spec or file and
what is wrong.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import random
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.data.safe_pickle import ForbiddenGlobal, load_numpy_pickle

__all__ = [
    "DATASET_SPECS",
    "Dataset",
    "DatasetError",
    "kfold_splits",
    "load_dataset",
    "stratified_split",
]

DATASET_SPECS: tuple[str, ...] = ("digits", "mnist1d", "cifar10:DIR", "npz:PATH")
"""The forms ``load_dataset`` accepts, for help texts and error messages."""

DIGITS_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test
MNIST1D_VAL_FRACTION = 0.2  # of the 4000 training examples -> 3200 / 800
CIFAR10_VAL_FRACTION = 0.1  # of the 50000 training images -> 45000 / 5000
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_FEATURES = 3 * 32 * 32
CIFAR10_CLASSES = 10
NPZ_ARRAYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


class DatasetError(ValueError):
    """A dataset cannot be loaded; the message names the spec or file and the problem."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Three labelled splits of one dataset, as raw (unpreprocessed) features.

    Attributes:
        name: the spec it was loaded from ("digits", "cifar10:DIR", ...).
        X_train, X_val, X_test: (N_split, D) float64 features.
        y_train, y_val, y_test: (N_split,) int64 labels in [0, num_classes).
        num_classes: C, the number of classes the model must output.
        class_labels: the label each class index stood for in the file it was loaded
            from (an npz archive may label its classes 3, 7 and 10**9), or None when
            the labels are the class indices themselves.

    The arrays are read-only views: loaders cache arrays between calls, so writing
    into one would silently change every later trial's data. Copy before modifying.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        num_features = None
        for split in ("train", "val", "test"):
            X = np.asarray(getattr(self, f"X_{split}"))
            y = np.asarray(getattr(self, f"y_{split}"))
            if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
                raise DatasetError(
                    f"{self.name}: {split} split needs X (N, D) and y (N,), "
                    f"got X {X.shape} and y {y.shape}"
                )
            if num_features is None:
                num_features = X.shape[1]
            elif X.shape[1] != num_features:
                raise DatasetError(
                    f"{self.name}: X_{split} has {X.shape[1]} features, X_train has {num_features}"
                )
            if not np.issubdtype(y.dtype, np.integer):
                raise DatasetError(f"{self.name}: y_{split} must hold integer labels, got dtype {y.dtype}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise DatasetError(f"{self.name}: y_{split} has labels outside [0, {self.num_classes})")
            object.__setattr__(self, f"X_{split}", _read_only(X, np.float64))
            object.__setattr__(self, f"y_{split}", _read_only(y, np.int64))

    @property
    def num_features(self) -> int:
        """D, the number of input features."""
        return int(self.X_train.shape[1])

    def train_plus_val(self) -> Dataset:
        """The same dataset with validation merged into training, for the final retrain.

        Returns:
            A Dataset with X_train (N_train + N_val, D) (train rows first), an empty
            validation split X_val (0, D) / y_val (0,), and the same test split.
        """
        D = self.num_features
        return Dataset(
            name=self.name,
            X_train=np.concatenate([self.X_train, self.X_val]),
            y_train=np.concatenate([self.y_train, self.y_val]),
            X_val=np.empty((0, D), dtype=np.float64),
            y_val=np.empty((0,), dtype=np.int64),
            X_test=self.X_test,
            y_test=self.y_test,
            num_classes=self.num_classes,
            class_labels=self.class_labels,
        )


def _read_only(a: np.ndarray, dtype: type) -> np.ndarray:
    # A view, so the caller's own array keeps its flags.
    view = a.astype(dtype, copy=False).view()
    view.flags.writeable = False
    return view


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """Load the dataset named by `spec`, with validation split drawn by `seed`.

    Args:
        spec: one of "digits", "mnist1d", "cifar10:DIR", "npz:PATH".
        seed: a non-negative int; the same (spec, seed) always gives the same split.
            Unused by "npz:", whose splits are given.

    Returns:
        The Dataset, with name = spec.

    Raises:
        DatasetError: unknown spec, missing optional package, or a missing,
            truncated or malformed dataset file.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"{spec}: seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    if not isinstance(spec, str):
        raise DatasetError(f"dataset spec must be a string ({', '.join(DATASET_SPECS)}), got {spec!r}")
    kind, sep, location = spec.partition(":")
    if spec == "digits":
        return _load_digits(seed)
    if spec == "mnist1d":
        return _load_mnist1d(seed)
    if sep and kind in ("cifar10", "npz"):
        if not location:
            what = "directory" if kind == "cifar10" else "file"
            raise DatasetError(f"{spec!r}: give a {what} after '{kind}:'")
        path = os.path.expanduser(location)
        if kind == "cifar10":
            return _load_cifar10(spec, path, seed)
        return _load_npz(spec, path)
    raise DatasetError(f"unknown dataset spec {spec!r}; valid forms: {', '.join(DATASET_SPECS)}")


# ---------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------


def stratified_split(y: np.ndarray, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Split the indices of `y` into parts of the given sizes, stratified by label.

    Each class is spread over the parts in proportion to the part sizes: its count in
    a part is typically within one example of its exact share (the tests check less
    than two). Part sizes are exact. Which examples go where depends only on `seed`.

    Args:
        y: (N,) integer labels.
        sizes: part sizes, non-negative, summing to N.
        seed: random seed.

    Returns:
        One sorted int64 index array per part; together they partition range(N).
    """
    y = np.asarray(y)
    N = y.shape[0]
    if sum(sizes) != N or min(sizes) < 0:
        raise ValueError(f"split sizes {sizes} must be non-negative and sum to {N}")
    rng = np.random.default_rng(seed)
    # Give every example a key in (0, 1): its rank within its class (classes shuffled
    # independently), plus a random offset per class, divided by the class size. The
    # keys of each class are then evenly spaced, so any prefix of the examples sorted
    # by key holds every class in proportion (systematic sampling with a random start).
    # Ties between classes are broken at random.
    key = np.empty(N, dtype=np.float64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(members.size)]
        key[members] = (np.arange(members.size) + rng.random()) / members.size
    order = np.lexsort((rng.random(N), key))
    bounds = np.cumsum((0,) + tuple(sizes))
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _split_sizes(N: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Part sizes for `fractions` of N; the first part (train) takes the rounding."""
    rest = [int(round(f * N)) for f in fractions[1:]]
    return (N - sum(rest), *rest)


def kfold_splits(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold cross-validation indices over the labels `y`.

    Args:
        y: (N,) integer labels.
        k: number of folds, 2 <= k <= the size of the smallest class, so that every
            class appears in every validation fold.
        seed: random seed; the same (y, k, seed) always gives the same folds.

    Returns:
        k pairs (train_idx, val_idx) of sorted int64 index arrays. The val_idx of the
        k folds partition range(N); train_idx is the complement of val_idx. Fold
        sizes differ by at most one, and so do each class's counts across folds.

    Raises:
        DatasetError (a ValueError): y is not a 1-D integer array, or k is out of
            range for these labels, so the CLI reports it as one line.
    """
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)):
        raise DatasetError(
            f"k-fold cross-validation needs a 1-D integer label array, got dtype {y.dtype} shape {y.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise DatasetError(f"k-fold cross-validation: k must be an int >= 2, got {k!r}")
    classes, counts = np.unique(y, return_counts=True)
    smallest = int(counts.min()) if counts.size else 0
    if not 2 <= k <= smallest:
        raise DatasetError(
            f"k-fold cross-validation: k must be an int in [2, {smallest}] "
            f"(the smallest class has {smallest} examples), got {k}"
        )
    rng = np.random.default_rng(seed)
    # Deal the examples out like cards: classes one after another, each shuffled, fold
    # i % k for the i-th card. Each class then lands within one of N_c / k per fold,
    # and the folds within one of N / k in total.
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in classes])
    fold = np.empty(y.shape[0], dtype=np.int64)
    fold[order] = np.arange(order.size) % k
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]


def _carve_validation(
    name: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    val_fraction: float,
    num_classes: int,
    seed: int,
) -> Dataset:
    sizes = _split_sizes(len(y_train), (1 - val_fraction, val_fraction))
    train_idx, val_idx = stratified_split(y_train, sizes, seed)
    return Dataset(
        name=name,
        X_train=X_train[train_idx],
        y_train=y_train[train_idx],
        X_val=X_train[val_idx],
        y_val=y_train[val_idx],
        X_test=X_test,
        y_test=y_test,
        num_classes=num_classes,
    )


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------


DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # in scikit-learn's package folder


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(X (1797, 64), y (1797,)) of scikit-learn's bundled digits, exactly as ``load_digits``
    returns them. The file is read where scikit-learn keeps it, found without importing
    scikit-learn: importing it (SciPy with it) took 1.1 s of every worker's and coordinator's
    start, reading the file takes 20 ms. ``load_digits`` is the fallback should the file move."""
    found = importlib.util.find_spec("sklearn")
    folders = list(found.submodule_search_locations or []) if found is not None else []
    path = next((p for p in (os.path.join(f, *DIGITS_FILE) for f in folders) if os.path.isfile(p)), None)
    if path is None:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        bunch = load_digits()
        return _read_only(bunch.data, np.float64), _read_only(bunch.target, np.int64)
    table = np.loadtxt(path, delimiter=",")  # 64 pixel columns, then the label
    return _read_only(table[:, :-1], np.float64), _read_only(table[:, -1], np.int64)


def _load_digits(seed: int) -> Dataset:
    X, y = _digits_arrays()
    train, val, test = stratified_split(y, _split_sizes(len(y), DIGITS_FRACTIONS), seed)
    return Dataset("digits", X[train], y[train], X[val], y[val], X[test], y[test], num_classes=10)


# ---------------------------------------------------------------------------
# mnist1d
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train (4000, 40), y_train, X_test (1000, 40), y_test), generated once per process."""
    X_train, y_train, X_test, y_test = _generate_mnist1d()
    return (
        _read_only(X_train, np.float64),
        _read_only(y_train, np.int64),
        _read_only(X_test, np.float64),
        _read_only(y_test, np.int64),
    )


def _generate_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # kept as the cause: the CLI's line names the extra that installs it
        raise DatasetError(f"mnist1d: the optional mnist1d package is not usable ({exc})") from exc
    # make_dataset only generates (unlike mnist1d's get_dataset, which downloads a
    # pickle and writes it to the current folder). It reseeds the global `random` and
    # `np.random` generators with its own seed; put them back so that loading a dataset
    # does not change the random stream of anything else in the process.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def _load_mnist1d(seed: int) -> Dataset:
    X_train, y_train, X_test, y_test = _mnist1d_arrays()
    return _carve_validation("mnist1d", X_train, y_train, X_test, y_test, MNIST1D_VAL_FRACTION, 10, seed)


# ---------------------------------------------------------------------------
# cifar10
# ---------------------------------------------------------------------------


def _load_cifar10(spec: str, directory: str, seed: int) -> Dataset:
    if not os.path.isdir(directory):
        raise DatasetError(f"{spec}: {directory} is not a directory (expected the CIFAR-10 python batches)")
    train = [_read_cifar_batch(os.path.join(directory, f)) for f in CIFAR10_TRAIN_FILES]
    X_test, y_test = _read_cifar_batch(os.path.join(directory, CIFAR10_TEST_FILE))
    # Split while still uint8 (150 MB for the full set); Dataset converts each split to
    # float64 once, so the 1.2 GB float64 copy of the training images is made only once.
    X_train = np.concatenate([X for X, _ in train])
    y_train = np.concatenate([y for _, y in train])
    del train
    return _carve_validation(
        spec, X_train, y_train, X_test, y_test, CIFAR10_VAL_FRACTION, CIFAR10_CLASSES, seed
    )


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> (data uint8 (N, 3072), labels int64 (N,)), checked."""
    try:
        with open(path, "rb") as f:
            batch = load_numpy_pickle(f, encoding="bytes")
    except FileNotFoundError:
        raise DatasetError(f"{path}: CIFAR-10 batch file is missing") from None
    except ForbiddenGlobal as exc:
        raise DatasetError(f"{path}: unsafe pickle, {exc}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise DatasetError(f"{path}: malformed pickle (asks for more memory than available)") from None
    except EOFError:
        raise DatasetError(f"{path}: truncated pickle (ended before its STOP opcode)") from None
    except Exception as exc:  # the unpickler raises many types on garbage input
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if "truncated" in reason:
            raise DatasetError(f"{path}: truncated pickle ({reason})") from None
        raise DatasetError(f"{path}: not a valid CIFAR-10 pickle ({reason})") from None

    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = _batch_entry(batch, "data", path)
    labels = _batch_entry(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' must be a uint8 array, got {what}")
    if data.ndim != 2 or data.shape[1] != CIFAR10_FEATURES or data.shape[0] == 0:
        raise DatasetError(
            f"{path}: 'data' must have shape (N, {CIFAR10_FEATURES}) with N > 0, got {data.shape}"
        )
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DatasetError(f"{path}: 'labels' must be a list of ints, got {type(labels).__name__}")
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    else:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in labels)
    if not ok:
        raise DatasetError(f"{path}: 'labels' must be a flat list of ints")
    if len(labels) != data.shape[0]:
        raise DatasetError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
    # The range is checked on the values as stored, before any cast: a label of 2**64
    # (a Python int, or a uint64) cannot become an int64, and one cast would wrap it.
    low, high = (int(labels.min()), int(labels.max())) if isinstance(labels, np.ndarray) else (min(labels), max(labels))
    if low < 0 or high >= CIFAR10_CLASSES:
        raise DatasetError(f"{path}: labels must be in 0..{CIFAR10_CLASSES - 1}, found {low}..{high}")
    return data, np.asarray(labels, dtype=np.int64)


def _batch_entry(batch: dict, key: str, path: str) -> Any:
    # The original files, loaded with encoding="bytes", have bytes keys (b"data");
    # a batch re-saved from Python 3 has str keys. Accept both.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DatasetError(f"{path}: batch dict has no {key!r} entry (keys: {sorted(map(repr, batch))})")


# ---------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------


def _load_npz(spec: str, path: str) -> Dataset:
    arrays = _read_npz(path)
    num_features = arrays["X_train"].shape[1]
    if num_features == 0:
        raise DatasetError(f"{path}: X_train has no feature columns (shape {arrays['X_train'].shape})")
    for split in ("train", "val", "test"):
        X, y = arrays[f"X_{split}"], arrays[f"y_{split}"]
        if X.shape[0] != y.shape[0]:
            raise DatasetError(f"{path}: X_{split} has {X.shape[0]} rows but y_{split} has {y.shape[0]}")
        if X.shape[1] != num_features:
            raise DatasetError(f"{path}: X_{split} has {X.shape[1]} features but X_train has {num_features}")
        if X.shape[0] == 0:
            raise DatasetError(f"{path}: X_{split} is empty")
    labels, classes = _class_indices(arrays[f"y_{s}"] for s in ("train", "val", "test"))
    if len(classes) < 2:
        raise DatasetError(f"{path}: every label is {classes[0]}; a classifier needs at least two classes")
    y_train, y_val, y_test = labels
    return Dataset(
        spec, arrays["X_train"], y_train, arrays["X_val"], y_val, arrays["X_test"], y_test,
        num_classes=len(classes),
        class_labels=None if classes == tuple(range(len(classes))) else classes,
    )


def _class_indices(splits) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Integer labels of any size -> (int64 class indices 0..K-1 per split, the K labels sorted).

    Each split is reduced to its distinct values first and those are compared as Python
    ints: concatenating a uint64 split with an int64 one would make them floats, and two
    large labels could then fall together.
    """
    uniques = [np.unique(y, return_inverse=True) for y in splits]
    classes = tuple(sorted({int(v) for values, _ in uniques for v in values.tolist()}))
    index = {label: i for i, label in enumerate(classes)}
    mapped = []
    for values, inverse in uniques:
        lookup = np.array([index[int(v)] for v in values.tolist()], dtype=np.int64)
        mapped.append(lookup[inverse.reshape(-1)])
    return mapped, classes


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The six arrays of an npz file, each checked on its own (dtype, rank, values)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: npz file is missing") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected an .npz file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        # np.load falls back to "is it a pickle?" for unknown content and then refuses
        # because allow_pickle=False; either way the file is not an npz archive (and its
        # advice to load it "unsafely" is not one to pass on).
        reason = "neither a zip archive nor a .npy array" if "allow_pickle" in str(exc) else str(exc)
        raise DatasetError(f"{path}: not a readable .npz archive ({reason})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(
            f"{path}: holds a single .npy array, expected an .npz archive with {', '.join(NPZ_ARRAYS)}"
        )
    with archive:
        missing = [name for name in NPZ_ARRAYS if name not in archive.files]
        if missing:
            present = ", ".join(archive.files) or "none"
            raise DatasetError(f"{path}: missing array(s) {', '.join(missing)} (has: {present})")
        arrays = {}
        for name in NPZ_ARRAYS:
            try:
                arrays[name] = archive[name]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise DatasetError(
                        f"{path}: {name} is an object array (pickled); only numeric arrays are loaded"
                    ) from None
                raise DatasetError(f"{path}: {name} is unreadable ({exc})") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise DatasetError(f"{path}: {name} is unreadable ({exc})") from None
            except MemoryError:
                raise DatasetError(f"{path}: {name} declares a shape too large for memory") from None
    for name, a in arrays.items():
        if name.startswith("X"):
            if a.ndim != 2:
                raise DatasetError(f"{path}: {name} must be 2-D (N, D), got shape {a.shape}")
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise DatasetError(f"{path}: {name} must hold real numbers, got dtype {a.dtype}")
            if not np.isfinite(a).all():
                raise DatasetError(f"{path}: {name} contains NaN or infinite values")
        else:
            if a.ndim != 1:
                raise DatasetError(f"{path}: {name} must be 1-D (N,), got shape {a.shape}")
            if not np.issubdtype(a.dtype, np.integer):
                raise DatasetError(f"{path}: {name} must hold integer class labels, got dtype {a.dtype}")
    return arrays

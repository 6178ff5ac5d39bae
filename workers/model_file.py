"""A trained model as one file: the network, its preprocessing, its configuration and labels.

The file is a NumPy ``.npz`` archive of plain arrays, so ``numpy.load(path,
allow_pickle=False)`` opens it and nothing in it runs code when loaded.  Layout, version 1
(archive key: array)::

    hpo_model      0-d str array: one JSON object
                     format        "hpo-model"
                     version       1
                     config        the TrainConfig trained (workers.train.TrainConfig.to_dict)
                     input_dim     D, the features of a raw input row
                     num_classes   C
                     class_labels  [C ints]: the label each class index stands for (an npz
                                   dataset's own labels), or null when they are 0..C-1
                     preprocessing the fitted kind (a key of workers.data.PREPROCESSING)
                     info          what the model was trained on and how it scored: dataset,
                                   split_seed, trained_on ("train" or "train+val"), source
                                   (campaign, study, trial) and accuracy (train, val, test)
    param.NAME     each trainable parameter of workers.nn.model.NetworkSpec.param_shapes
                   (W1, gamma1, beta1, ..., W3, b3), in the config's dtype
    bn.NAME        the batch-norm running statistics (mean1, var1, ...), with batch norm only
    pre.NAME       the fitted preprocessing's arrays (mean, scale, projection, eigenvalues),
                   those its kind has, float64

:func:`save_model` writes a file atomically (a reader sees the old file or the new one,
never half of one); :func:`load_model` checks every key, shape and dtype against the
configuration and raises :class:`ModelFileError` with one line when anything is off.
:meth:`SavedModel.predict` applies the saved preprocessing and then the network in
evaluation mode (batch norm with its running statistics): the same arithmetic as the test
accuracy measured after training (``workers.run.train_and_test``), so a saved model
predicts exactly what the trained one scored.  NumPy and the standard library only.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers import atomic_file
from workers.data.preprocess import Preprocessor
from workers.nn.model import NetworkSpec
from workers.run import Evaluation, network_input
from workers.train import TrainConfig, predict

__all__ = [
    "FORMAT",
    "VERSION",
    "ModelFileError",
    "SavedModel",
    "check_target",
    "confusion",
    "load_model",
    "load_rows",
    "model_info",
    "save_labels",
    "save_model",
]

FORMAT = "hpo-model"
VERSION = 1
META_KEY = "hpo_model"
PARAM, BN, PRE = "param.", "bn.", "pre."
# The preprocessing arrays each kind holds (Preprocessor's fields; eigenvalues kept for inspection).
PRE_ARRAYS = {
    "none": (),
    "center": ("mean",),
    "standardize": ("mean", "scale"),
    "pca": ("mean", "projection", "eigenvalues"),
    "pca_whiten": ("mean", "projection", "eigenvalues"),
    "zca": ("mean", "projection", "eigenvalues"),
}


class ModelFileError(ValueError):
    """A model file that cannot be read or written, or an input it cannot take: one line
    naming the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class SavedModel:
    """Everything needed to classify raw feature rows the way a trained model did.

    config: the training configuration.  spec: the network's shape.  params / bn_state:
    its trainable parameters and batch-norm running statistics (name -> array, as
    :class:`workers.nn.model.FastNetwork` names them).  preprocessor: fitted on the split
    the model trained on.  class_labels: the label of each class index, or None for
    0..C-1.  info: JSON-ready facts about where it came from (see the module docstring).
    """

    config: TrainConfig
    spec: NetworkSpec
    params: dict[str, np.ndarray] = field(repr=False)
    bn_state: dict[str, np.ndarray] = field(repr=False)
    preprocessor: Preprocessor = field(repr=False)
    class_labels: tuple[int, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_evaluation(cls, evaluation: Evaluation, class_labels: tuple[int, ...] | None,
                        info: dict[str, Any]) -> SavedModel:
        """The model of a finished ``workers.run.train_and_test`` run."""
        result = evaluation.result
        return cls(
            config=result.config, spec=result.spec, params=result.params, bn_state=result.bn_state,
            preprocessor=evaluation.preprocessor,
            class_labels=None if class_labels is None else tuple(int(c) for c in class_labels),
            info=info,
        )

    @property
    def input_dim(self) -> int:
        """D, the number of raw features a row must have."""
        return self.preprocessor.input_dim

    @property
    def labels(self) -> tuple[int, ...]:
        """The label of each class index, 0..C-1 when the model has none of its own."""
        return self.class_labels if self.class_labels is not None else tuple(range(self.spec.num_classes))

    def predict_classes(self, X: np.ndarray, what: str = "the input") -> np.ndarray:
        """Class indices of raw rows: X (N, D) real, finite -> (N,) int64 in [0, C).

        ModelFileError (one line, naming X as ``what``) when X has another shape, is not
        numeric or not finite.
        """
        X = self.check_input(X, what)
        return predict(self, network_input(self.preprocessor, self.config.dtype, X))

    def predict(self, X: np.ndarray, what: str = "the input") -> np.ndarray:
        """Labels of raw rows, as the training data labelled them: X (N, D) -> (N,) int64
        (uint64 for labels above the int64 range)."""
        return self.label_array()[self.predict_classes(X, what)]

    def label_array(self) -> np.ndarray:
        """:attr:`labels` as an array: int64, or uint64 for labels beyond int64's range."""
        labels = self.labels
        for dtype in (np.int64, np.uint64):
            info = np.iinfo(dtype)
            if all(info.min <= c <= info.max for c in labels):
                return np.array(labels, dtype=dtype)
        raise ModelFileError("the model's labels mix negative ones and ones above 2**63: no array type holds both")

    def check_input(self, X: Any, what: str = "the input") -> np.ndarray:
        """X as a float64 array (N, D) of the model's D features; ModelFileError otherwise.

        Rows are preprocessed in float64 whatever their dtype, as the datasets' are.
        """
        X = np.asarray(X)
        if X.ndim != 2:
            raise ModelFileError(f"{what} must be 2-D, one row of {self.input_dim} features per example, got shape {X.shape}")
        if X.shape[1] != self.input_dim:
            raise ModelFileError(f"{what} has {X.shape[1]} features per row; the model takes {self.input_dim}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer) or X.dtype == bool):
            raise ModelFileError(f"{what} must hold real numbers, got dtype {X.dtype}")
        X = X.astype(np.float64, copy=False)
        if not np.isfinite(X).all():
            raise ModelFileError(f"{what} contains NaN or infinite values")
        return X

    def meta(self) -> dict[str, Any]:
        """The JSON object stored under ``hpo_model``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config.to_dict(),
            "input_dim": self.input_dim,
            "num_classes": self.spec.num_classes,
            "class_labels": None if self.class_labels is None else list(self.class_labels),
            "preprocessing": self.preprocessor.kind,
            "info": self.info,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the file, by archive key (:data:`META_KEY` included)."""
        arrays = {META_KEY: np.array(json.dumps(self.meta(), sort_keys=True))}
        arrays.update({PARAM + name: value for name, value in self.params.items()})
        arrays.update({BN + name: value for name, value in self.bn_state.items()})
        for name in PRE_ARRAYS[self.preprocessor.kind]:
            arrays[PRE + name] = getattr(self.preprocessor, name)
        return arrays


def model_info(dataset: str, split_seed: int, trained_on: str, source: dict[str, Any],
               accuracy: dict[str, float | None]) -> dict[str, Any]:
    """The ``info`` of a model: the dataset spec and split seed it was trained with, the
    splits it trained on ("train", or "train+val" for a search's final model), where its
    configuration came from (``{"campaign", "study", "trial", "val_accuracy"}`` for a trial,
    ``{"command": "hpo train"}`` otherwise) and the accuracies it scored (train, val, test)."""
    return {"dataset": dataset, "split_seed": int(split_seed), "trained_on": trained_on,
            "source": source, "accuracy": accuracy}


def confusion(model: SavedModel, X: np.ndarray, y: np.ndarray, data_labels: Sequence[int]) -> dict[str, Any]:
    """How ``model`` classifies the raw rows X (N, D) of a dataset split whose class indices
    are y (N,), class i standing for the label ``data_labels[i]``.

    Predictions and truths are compared as labels, so a model and a dataset that number
    their classes differently are compared by what the classes are.  Returns
    ``{"examples": N, "accuracy": float, "labels": [L labels, sorted: those of the model
    and of the data], "confusion_matrix": L x L counts, row = true label, column = predicted}``.
    """
    y = np.asarray(y, dtype=np.int64)
    labels = sorted(set(model.labels) | set(data_labels))
    position = {label: i for i, label in enumerate(labels)}
    predicted = np.array([position[c] for c in model.labels], dtype=np.int64)[model.predict_classes(X)]
    true = np.array([position[c] for c in data_labels], dtype=np.int64)[y]
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return {
        "examples": int(y.shape[0]),
        # as workers.train.accuracy computes it, so the figure is the one training reported
        "accuracy": float(np.mean(predicted == true)) if y.size else None,
        "labels": labels,
        "confusion_matrix": matrix.tolist(),
    }


# -- writing ---------------------------------------------------------------------------------
def check_target(path: str | os.PathLike) -> Path:
    """Where a file is to be written, checked before any work: its folder exists and is
    writable and the path is not a folder; ModelFileError otherwise."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise ModelFileError(f"cannot write {target}: there is no folder {folder}")
    if target.is_dir():
        raise ModelFileError(f"cannot write {target}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise ModelFileError(f"cannot write {target}: the folder {folder} is not writable")
    return target


def write_atomically(path: str | os.PathLike, write: Any) -> Path:
    """:func:`workers.atomic_file.write_atomically` to a checked ``path`` (see :func:`check_target`)."""
    return atomic_file.write_atomically(check_target(path), write)


def save_model(model: SavedModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (an ``.npz`` archive, see the module docstring),
    atomically.  Returns the path.  ModelFileError when the path cannot be written."""
    arrays = model.arrays()
    try:
        return write_atomically(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise ModelFileError(f"cannot write {path}: {e.strerror or e}") from None


def save_labels(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write predicted labels (N,) to ``path`` as one ``.npy`` array, atomically."""
    try:
        return write_atomically(path, lambda f: np.save(f, labels, allow_pickle=False))
    except OSError as e:
        raise ModelFileError(f"cannot write {path}: {e.strerror or e}") from None


# -- reading ---------------------------------------------------------------------------------
def load_rows(path: str | os.PathLike) -> np.ndarray:
    """The one array stored in the ``.npy`` file at ``path``, read without unpickling;
    ModelFileError (one line naming the file) when it is missing or is not such a file."""
    where = str(path)
    if not os.path.exists(where):
        raise ModelFileError(f"{where}: no such file")
    if os.path.isdir(where):
        raise ModelFileError(f"{where}: is a folder, expected a .npy file")
    try:
        value = np.load(where, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) and _starts_with(where, b"\x93NUMPY"):
            raise ModelFileError(f"{where}: holds pickled objects; give a numeric .npy array") from None
        reason = "neither a .npy array nor a zip archive" if "allow_pickle" in str(e) else _one_line(e)
        raise ModelFileError(f"{where}: not a readable .npy array ({reason})") from None
    except (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise ModelFileError(f"{where}: not a readable .npy array ({_one_line(e)})") from None
    except MemoryError:
        raise ModelFileError(f"{where}: declares a shape too large for memory") from None
    if isinstance(value, np.lib.npyio.NpzFile):
        value.close()
        raise ModelFileError(f"{where}: is an .npz archive; give one .npy array of rows (N, D)")
    return value


def _starts_with(where: str, magic: bytes) -> bool:
    with open(where, "rb") as f:
        return f.read(len(magic)) == magic


def load_model(path: str | os.PathLike) -> SavedModel:
    """The model saved at ``path``, every array checked against its configuration.

    ModelFileError, one line naming the file, when it is missing, not an ``.npz`` archive,
    truncated, holds pickled objects, is not an hpo model, has another format version, or
    holds an array of the wrong name, shape or dtype.
    """
    where = str(path)
    arrays = _read_arrays(where)
    meta = _read_meta(where, arrays.pop(META_KEY, None), sorted(arrays))
    kind, input_dim, class_labels = meta["preprocessing"], meta["input_dim"], meta["class_labels"]
    if kind not in PRE_ARRAYS:
        raise ModelFileError(f"{where}: unknown preprocessing {kind!r}")
    pre_arrays = {name: arrays.pop(PRE + name, None) for name in PRE_ARRAYS[kind]}
    _check_preprocessing(where, kind, input_dim, pre_arrays)
    projection = pre_arrays.get("projection")
    try:
        config = TrainConfig.from_dict(meta["config"])
        # the network reads what the preprocessing writes: K columns after a projection
        spec = config.network_spec(input_dim if projection is None else projection.shape[1], meta["num_classes"])
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{where}: its configuration is not valid ({_one_line(e)})") from None
    expected = {PARAM + name: (shape, np.dtype(config.dtype)) for name, shape in spec.param_shapes().items()}
    if spec.batch_norm:
        for layer, width in enumerate(spec.affine_widths, start=1):
            for stat in ("mean", "var"):
                expected[f"{BN}{stat}{layer}"] = ((width,), np.dtype(config.dtype))
    _check_arrays(where, arrays, expected)
    if class_labels is not None and (
        not isinstance(class_labels, list) or len(class_labels) != spec.num_classes
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in class_labels)
    ):
        raise ModelFileError(f"{where}: class_labels must be {spec.num_classes} integers, one per class")
    return SavedModel(
        config=config,
        spec=spec,
        params={key[len(PARAM):]: arrays[key] for key in expected if key.startswith(PARAM)},
        bn_state={key[len(BN):]: arrays[key] for key in expected if key.startswith(BN)},
        preprocessor=Preprocessor(kind=kind, input_dim=input_dim, **pre_arrays),
        class_labels=None if class_labels is None else tuple(class_labels),
        info=meta["info"] if isinstance(meta.get("info"), dict) else {},
    )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_arrays(where: str) -> dict[str, np.ndarray]:
    """Every array of the archive at ``where``, read without unpickling anything."""
    if not os.path.exists(where):
        raise ModelFileError(f"{where}: no such model file")
    if os.path.isdir(where):
        raise ModelFileError(f"{where}: is a folder, expected a model file (.npz)")
    try:
        archive = np.load(where, allow_pickle=False)
    except zipfile.BadZipFile as e:
        if _starts_with(where, b"PK"):  # a zip archive cut short loses its directory, at the end
            raise ModelFileError(f"{where}: truncated or damaged .npz archive ({_one_line(e)})") from None
        raise ModelFileError(f"{where}: not an hpo model file (not a readable .npz archive: {_one_line(e)})") from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        # np.load takes content it does not recognize for a pickle and then refuses it
        # (allow_pickle=False); either way this is no archive of arrays.
        reason = "neither a zip archive nor a .npy array" if "allow_pickle" in str(e) else _one_line(e)
        raise ModelFileError(f"{where}: not an hpo model file (not a readable .npz archive: {reason})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFileError(f"{where}: not an hpo model file (a single .npy array, not an .npz archive)")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise ModelFileError(f"{where}: {key} is a pickled object array; a model file holds plain arrays only") from None
                raise ModelFileError(f"{where}: {key} is unreadable ({_one_line(e)})") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise ModelFileError(f"{where}: truncated or damaged ({key}: {_one_line(e)})") from None
            except MemoryError:
                raise ModelFileError(f"{where}: {key} declares a shape too large for memory") from None
    return arrays


def _read_meta(where: str, value: np.ndarray | None, keys: list[str]) -> dict[str, Any]:
    if value is None:
        listed = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "") if keys else "nothing"
        raise ModelFileError(f"{where}: not an hpo model file (no {META_KEY} entry; it holds {listed})")
    if value.shape != () or value.dtype.kind != "U":
        raise ModelFileError(f"{where}: {META_KEY} must be one text, got dtype {value.dtype} shape {value.shape}")
    try:
        meta = json.loads(str(value[()]))
    except ValueError as e:
        raise ModelFileError(f"{where}: {META_KEY} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{where}: not an hpo model file ({META_KEY} does not say format {FORMAT!r})")
    version = meta.get("version")
    if version != VERSION:
        raise ModelFileError(
            f"{where}: model file format version {version!r}; this hpo reads version {VERSION} "
            "(retrain it, or read it with the hpo that wrote it)"
        )
    for key, kind in (("config", dict), ("input_dim", int), ("num_classes", int), ("preprocessing", str)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ModelFileError(f"{where}: {META_KEY} has no valid {key!r}")
    if meta["input_dim"] < 1 or meta["num_classes"] < 2:
        raise ModelFileError(f"{where}: input_dim must be >= 1 and num_classes >= 2")
    meta.setdefault("class_labels", None)
    return meta


def _check_preprocessing(where: str, kind: str, input_dim: int, arrays: dict[str, np.ndarray | None]) -> None:
    """The saved preprocessing's arrays have the shapes a fitted ``kind`` has."""
    for name, value in arrays.items():
        if value is None:
            raise ModelFileError(f"{where}: missing array {PRE}{name} of the {kind} preprocessing")
        if value.dtype != np.float64:
            raise ModelFileError(f"{where}: {PRE}{name} must be float64, got {value.dtype}")
    mean, scale, projection = arrays.get("mean"), arrays.get("scale"), arrays.get("projection")
    for name, value in (("mean", mean), ("scale", scale)):
        if value is not None and value.shape != (input_dim,):
            raise ModelFileError(f"{where}: {PRE}{name} has shape {value.shape}, expected ({input_dim},)")
    if projection is not None:
        if projection.ndim != 2 or projection.shape[0] != input_dim or projection.shape[1] < 1:
            raise ModelFileError(f"{where}: {PRE}projection has shape {projection.shape}, expected ({input_dim}, K)")
        k = projection.shape[1]
        eigenvalues = arrays["eigenvalues"]
        wanted = input_dim if kind == "zca" else k
        if kind == "zca" and k != input_dim:
            raise ModelFileError(f"{where}: {PRE}projection of zca must be ({input_dim}, {input_dim}), got {projection.shape}")
        if eigenvalues.ndim != 1 or eigenvalues.shape[0] > wanted:
            raise ModelFileError(f"{where}: {PRE}eigenvalues has shape {eigenvalues.shape}, expected at most ({wanted},)")


def _check_arrays(where: str, arrays: dict[str, np.ndarray], expected: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """The network's arrays are exactly those its configuration has, in shape and dtype."""
    missing = [key for key in expected if key not in arrays]
    if missing:
        raise ModelFileError(f"{where}: missing array(s) {', '.join(missing)} that its configuration needs")
    unexpected = sorted(set(arrays) - set(expected))
    if unexpected:
        raise ModelFileError(f"{where}: unexpected array(s) {', '.join(unexpected)} for its configuration")
    for key, (shape, dtype) in expected.items():
        value = arrays[key]
        if value.shape != shape:
            raise ModelFileError(f"{where}: {key} has shape {value.shape}, its configuration gives {shape}")
        if value.dtype != dtype:
            raise ModelFileError(f"{where}: {key} has dtype {value.dtype}, its configuration gives {dtype}")

"""Configurations that can never train, refused before anything is written.

A trial whose configuration cannot train on its dataset fails however often it is run:
asking for more folds than the smallest class has examples, more PCA directions than the
data has features, a network too large for memory. Found only by the workers, such a
space fills a stage with failed trials. These checks find it up front, from the dataset
and the space alone, so ``hpo search`` and ``hpo narrow`` refuse it before they create
anything and ``hpo train`` before it trains:

``check_dataset(dataset, cv)``
    at least one feature, at least two classes in the training split, integer labels,
    a validation split to score on (``cv == 0``) or at most as many folds as the
    smallest class of the training split has examples (``cv >= 2``);
``check_feasible(space, dataset, cv)``
    the dataset, and every configuration the space can produce: each value of each
    parameter makes a valid ``TrainConfig``; no integer ``pca_components`` above the
    number of features where a PCA kind can be chosen; the largest network the space
    allows fits in memory;
``check_config(config, dataset, cv)``
    the dataset, and this one configuration (``hpo train``).

Problems with the data raise ``DatasetError``; problems with what the space or the
configuration asks of it raise ``Infeasible`` (a ``SpaceError``). Each message is one
line naming what is wrong and the largest value that would work.

The PCA kinds are bounded by the features alone: the training covariance is D x D
whatever the number of rows (a count above the rows keeps directions of zero variance,
which whitening's eps keeps finite), and every split that fits one (the training split,
a cross-validation fold's training part) has at least two rows once it holds two classes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from workers.data.datasets import Dataset, DatasetError
from workers.data.preprocess import TAKES_COMPONENTS
from workers.space import Choice, FloatRange, IntRange, SearchSpace, SpaceError
from workers.train import TrainConfig

__all__ = ["Infeasible", "check_config", "check_dataset", "check_feasible", "data_limits", "training_bytes"]

_DEFAULTS = TrainConfig()


class Infeasible(SpaceError):
    """A configuration (or every space holding it) can never train on this dataset."""


def check_dataset(dataset: Dataset, cv: int = 0) -> None:
    """DatasetError unless ``dataset`` can be trained and scored with ``cv`` folds (0: the
    held-out validation split)."""
    name = dataset.name
    if dataset.num_features < 1:
        raise DatasetError(f"{name}: the data has no feature columns")
    for split in ("train", "val", "test"):
        y = getattr(dataset, f"y_{split}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"{name}: y_{split} must hold integer labels, got dtype {y.dtype}")
    classes, counts = np.unique(dataset.y_train, return_counts=True)
    if classes.size < 2:
        seen = "no rows" if classes.size == 0 else f"only class {_label(dataset, classes[0])}"
        raise DatasetError(f"{name}: the training split has {seen}; a classifier needs at least two classes")
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 0 or cv == 1:
        raise DatasetError(f"cross-validation takes 0 (the validation split) or at least 2 folds, got {cv!r}")
    if cv == 0:
        if dataset.X_val.shape[0] == 0:
            raise DatasetError(f"{name}: the validation split is empty; score with cross-validation (cv >= 2) instead")
        return
    smallest = int(np.argmin(counts))
    if cv > counts[smallest]:
        raise DatasetError(
            f"{cv}-fold cross-validation needs every class in every fold, but class "
            f"{_label(dataset, classes[smallest])} has {counts[smallest]} examples in the training "
            f"split of {name}: use at most {counts[smallest]} folds"
        )


def check_feasible(space: SearchSpace, dataset: Dataset, cv: int = 0) -> None:
    """Raise ``Infeasible`` (or ``DatasetError``) if any configuration ``space`` can produce
    can never train on ``dataset`` with ``cv`` folds."""
    check_dataset(dataset, cv)
    values = {name: _values(space, name) for name in space}

    # Each value of each parameter, on top of the first value of every other one: the
    # space's domains and TrainConfig's validation are two statements of one rule.
    base = {name: vs[0] for name, vs in values.items()}
    for name, vs in values.items():
        for v in vs:
            try:
                TrainConfig(**space.to_train_kwargs({**base, name: v}))
            except ValueError as e:
                raise Infeasible(f"{name} {_text(v)} cannot train: {e}") from None

    D = dataset.num_features
    kinds = [k for k in _values(space, "preprocessing") if k in TAKES_COMPONENTS]
    counts = [v for v in _values(space, "pca_components") if _is_count(v)]
    if kinds and counts and max(counts) > D:
        raise Infeasible(
            f"pca_components goes up to {max(counts)} with preprocessing {kinds[0]}, but "
            f"{dataset.name} has {D} features: keep at most {D} directions, or a fraction of "
            "the variance such as 0.95"
        )

    maxout = "maxout" in _values(space, "activation")
    biggest = _largest_use(
        dataset,
        hidden=[_layers(h) for h in _values(space, "hidden_sizes")],
        maxout_k=max(_values(space, "maxout_k")) if maxout else 1,
        batch_size=max(_values(space, "batch_size")),
        itemsize=max(np.dtype(d).itemsize for d in _values(space, "dtype")),
        pca=bool(kinds),
        cv=cv,
    )
    if biggest is not None:
        hidden, needed, available = biggest
        raise Infeasible(
            f"hidden_sizes {'-'.join(map(str, hidden))} needs about {_gb(needed)} of memory to train "
            f"on {dataset.name}, more than this machine's {_gb(available)}"
        )


def check_config(config: TrainConfig, dataset: Dataset, cv: int = 0) -> None:
    """Raise ``Infeasible`` (or ``DatasetError``) if ``config`` can never train on ``dataset``."""
    check_dataset(dataset, cv)
    D = dataset.num_features
    pca = config.preprocessing in TAKES_COMPONENTS
    if pca and _is_count(config.pca_components) and config.pca_components > D:
        raise Infeasible(
            f"pca_components {config.pca_components} is more than the {D} features of {dataset.name}: "
            f"keep at most {D} directions, or a fraction of the variance such as 0.95"
        )
    biggest = _largest_use(
        dataset,
        hidden=[config.hidden_sizes],
        maxout_k=config.maxout_k if config.activation == "maxout" else 1,
        batch_size=config.batch_size,
        itemsize=np.dtype(config.dtype).itemsize,
        pca=pca,
        cv=cv,
    )
    if biggest is not None:
        _, needed, available = biggest
        raise Infeasible(
            f"this network needs about {_gb(needed)} of memory to train on {dataset.name}, "
            f"more than this machine's {_gb(available)}"
        )


def data_limits(dataset: Dataset) -> dict[str, int]:
    """The largest value the data allows a parameter, for ``hpo.narrow.narrow(limits=...)``:
    a range widened past its border must not leave what can train."""
    return {"pca_components": dataset.num_features}


def training_bytes(
    num_features: int,
    num_classes: int,
    rows: int,
    hidden: Iterable[int],
    *,
    maxout_k: int = 1,
    batch_size: int = 64,
    itemsize: int = 4,
    pca: bool = False,
) -> int:
    """A generous estimate of the memory one training run holds at its peak, in bytes.

    Per weight: the parameter, its gradient, two optimizer moments and three working
    copies; per minibatch row and affine column: eight buffers of the fast network (affine
    output, batch-norm scratch, activation, gradients); the training data cast to the
    network's dtype, a shuffled copy and its one-hot labels; for the PCA kinds the D x D
    covariance and its eigenvectors in float64.
    """
    hidden = [int(h) for h in hidden]
    widths = [h * maxout_k for h in hidden]  # affine columns: k pieces per maxout unit
    fan_in = [num_features, *hidden]
    fan_out = [*widths, num_classes]
    weights = sum(i * o for i, o in zip(fan_in, fan_out)) + sum(fan_out) + 2 * sum(widths)
    batch = min(batch_size, rows)
    total = 7 * weights * itemsize
    total += 8 * batch * (sum(widths) + num_classes) * itemsize
    total += 2 * rows * (num_features + num_classes) * itemsize
    if pca:
        total += 3 * num_features * num_features * 8
    return total


# ---------------------------------------------------------------------------


def _largest_use(dataset: Dataset, *, hidden, maxout_k, batch_size, itemsize, pca, cv):
    """(hidden sizes, bytes needed, bytes available) of the first network that cannot fit in
    this machine's memory, or None when all fit (or the memory size is unknown)."""
    available = _machine_memory()
    if available is None:
        return None
    # The largest use is the final retrain, on train + validation, or with cross-validation
    # the K folds, which train side by side (workers.train.train_folds), each on (K-1)/K of
    # the training split.
    rows = dataset.X_train.shape[0] + (0 if cv else dataset.X_val.shape[0])
    fold_rows = dataset.X_train.shape[0] - dataset.X_train.shape[0] // cv if cv else 0

    def need(rows: int, sizes) -> int:
        return training_bytes(dataset.num_features, dataset.num_classes, rows, sizes,
                              maxout_k=maxout_k, batch_size=batch_size, itemsize=itemsize, pca=pca)

    for sizes in hidden:
        needed = max(need(rows, sizes), cv * need(fold_rows, sizes)) if cv else need(rows, sizes)
        if needed > available:
            return tuple(sizes), needed, available
    return None


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _values(space: SearchSpace, name: str) -> list[Any]:
    """The values of ``name`` a trial can take at the extremes: every choice, both ends of a
    range, or TrainConfig's default when the space does not search it."""
    spec = space.get(name)
    if spec is None:
        return [getattr(_DEFAULTS, name)] if name != "hidden_sizes" else ["-".join(map(str, _DEFAULTS.hidden_sizes))]
    if isinstance(spec, Choice):
        return list(spec.choices)
    if isinstance(spec, IntRange):
        return [spec.low, spec.high]
    if isinstance(spec, FloatRange):
        return [spec.low, spec.high]
    raise TypeError(f"unknown spec {spec!r}")


def _layers(value: Any) -> tuple[int, ...]:
    return tuple(int(w) for w in str(value).split("-"))


def _is_count(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _label(dataset: Dataset, index: Any) -> Any:
    labels = dataset.class_labels
    return labels[int(index)] if labels is not None and 0 <= int(index) < len(labels) else int(index)


def _text(v: Any) -> str:
    return Choice((v,)).shorthand() if not isinstance(v, float) or math.isfinite(v) else repr(v)


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n < 100 * 2**30 else f"{n / 2**30:.3g} GB"

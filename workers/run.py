"""One configuration on one dataset: preprocess (fitted on the training split only), train, score.

This is the glue between the data layer and the training engine that `hpo train`, every
trial and the final retrain share, so all three measure the same thing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from workers.data.datasets import Dataset, kfold_splits, load_dataset
from workers.data.preprocess import TAKES_COMPONENTS, Preprocessor, fit_preprocessor
from workers.train import EpochReport, TrainConfig, TrainResult, accuracy, fold_mean, train, train_folds


@functools.lru_cache(maxsize=4)
def cached_dataset(spec: str, seed: int = 0) -> Dataset:
    """Datasets are loaded once per process: a worker runs many trials on the same data."""
    return load_dataset(spec, seed=seed)


def preprocess(config: TrainConfig, X_fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Fit ``config.preprocessing`` on ``X_fit`` only, apply it to all, cast to ``config.dtype``."""
    return _fit_transform(config.preprocessing, _components(config), config.dtype, X_fit, *others)


def _components(config: TrainConfig) -> int | float | None:
    return config.pca_components if config.preprocessing in TAKES_COMPONENTS else None


def _fit_transform(kind: str, components: int | float | None, dtype: str, X_fit: np.ndarray,
                   *others: np.ndarray) -> list[np.ndarray]:
    pre = fit_preprocessor(kind, X_fit, components=components)
    return [network_input(pre, dtype, X) for X in (X_fit, *others)]


def network_input(preprocessor: Preprocessor, dtype: str, X: np.ndarray) -> np.ndarray:
    """Raw rows X (N, D) as the network takes them: preprocessed, then cast to the training
    dtype, contiguous. Training, scoring and a saved model's predictions all go through here."""
    return np.ascontiguousarray(preprocessor.transform(X), dtype=np.dtype(dtype))


@functools.lru_cache(maxsize=2)
def _preprocessed_holdout(dataset: Dataset, kind: str, components: int | float | None,
                          dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation splits preprocessed, kept per process: the trials of a
    stage share the data and often the preprocessing, and refitting it for each would cost
    every trial the fit (seconds for ZCA on a CIFAR-sized split). Read-only, so that no run
    can change what the next one reads; two entries, as each holds a copy of the splits."""
    arrays = _fit_transform(kind, components, dtype, dataset.X_train, dataset.X_val)
    for X in arrays:
        X.flags.writeable = False
    return arrays[0], arrays[1]


# A run that blows up overflows long before it ends: training watches its own loss for
# non-finite values (TrainingDiverged says so in one line), and NumPy's RuntimeWarnings would
# only print lines of this package's source on the user's terminal or in a worker's log.
def _quiet_floating_point(function):
    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):  # a new one per call: an errstate cannot be entered twice
            return function(*args, **kwargs)

    return quiet


@dataclass
class Score:
    """The validation score of one configuration (mean over folds with cross-validation)."""

    value: float
    result: TrainResult  # the run on the held-out split, or the last fold's run
    fold_values: list[float] = field(default_factory=list)


@_quiet_floating_point
def fit_and_score(
    config: TrainConfig,
    dataset: Dataset,
    *,
    cv: int = 0,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> Score:
    """Train ``config`` and score it by validation accuracy, calling ``on_epoch`` after every
    epoch (it may raise to stop the run; the exception propagates).

    ``cv == 0`` uses the dataset's held-out validation split. ``cv = K >= 2`` runs stratified
    K-fold cross-validation on the training split, the K folds side by side epoch by epoch
    (``train_folds``): ``on_epoch`` gets the mean over the folds at that epoch
    (``fold_mean``), which is where a pruner looks, and the score is that mean at the last
    epoch.
    """
    if cv == 0:
        X_train, X_val = _preprocessed_holdout(dataset, config.preprocessing, _components(config), config.dtype)
        result = train(config, X_train, dataset.y_train, X_val, dataset.y_val, on_epoch=on_epoch)
        return Score(value=float(result.val_accuracy), result=result)

    folds = []
    for train_idx, val_idx in kfold_splits(dataset.y_train, cv, config.seed):
        X_train, X_val = preprocess(config, dataset.X_train[train_idx], dataset.X_train[val_idx])
        folds.append((X_train, dataset.y_train[train_idx], X_val, dataset.y_train[val_idx]))
    each = None if on_epoch is None else (lambda reports: on_epoch(fold_mean(reports)))
    results = train_folds(config, folds, on_epoch=each)
    fold_values = [float(result.val_accuracy) for result in results]
    last = fold_mean([result.history[-1] for result in results])
    return Score(value=last.val_accuracy, result=results[-1], fold_values=fold_values)


@dataclass
class Evaluation:
    """A model trained once and measured on every split it may be measured on."""

    result: TrainResult
    train_accuracy: float
    val_accuracy: float | None
    test_accuracy: float
    preprocessor: Preprocessor  # fitted on the split the model trained on


@_quiet_floating_point
def train_and_test(
    config: TrainConfig,
    dataset: Dataset,
    *,
    merge_val: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> Evaluation:
    """Train and evaluate once on the test split.

    With ``merge_val`` the model trains on train + validation (the final retrain of a search,
    after the configuration was chosen on validation); otherwise validation is reported too.
    """
    data = dataset.train_plus_val() if merge_val else dataset
    pre = fit_preprocessor(config.preprocessing, data.X_train, components=_components(config))
    X_train, X_val, X_test = (network_input(pre, config.dtype, X) for X in (data.X_train, data.X_val, dataset.X_test))
    result = train(config, X_train, data.y_train, X_val, data.y_val, on_epoch=on_epoch)
    return Evaluation(
        result=result,
        train_accuracy=float(result.train_accuracy),
        val_accuracy=None if merge_val else float(result.val_accuracy),
        test_accuracy=float(accuracy(result, X_test, dataset.y_test)),
        preprocessor=pre,
    )

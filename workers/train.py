"""One training run: minibatches, epochs, learning-rate decay, divergence stop, diagnostics.

::

    result = train(TrainConfig(hidden_sizes=(100, 100), activation="relu"),
                   X_train, y_train, X_val, y_val, on_epoch=print)
    accuracy(result, X_test, y_test)

``train`` takes arrays that are already preprocessed (the caller fits preprocessing on
the training split; ``preprocessing`` and ``pca_components`` are in the config only so
that one config describes a whole trial).  It imports NumPy and the standard library
only.

Reproducibility: the config seed drives three independent random streams (weights,
per-epoch shuffling, the diagnostics probe batch), so the same config and seed give
bit-identical parameters, losses and accuracies on the same machine, NumPy build and
thread allowance (two threads split large matrix products, which changes the last bits).

Speed: training, evaluation and prediction run on one engine,
:class:`workers.nn.model.FastNetwork`, which the tests verify against the reference
network built from the pure layer functions (:mod:`workers.nn.reference`).  While
training, BLAS is held to one thread for networks whose matrix products are small, and
the threads it was allowed are used by the engine itself (see
:func:`workers.nn.blas.blas_threads_for`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from workers.knobs import DTYPES, KNOBS
from workers.nn.activations import get_activation
from workers.nn.blas import blas_threads_for
from workers.nn.model import FastNetwork, NetworkSpec, init_network, weight_names

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "EpochReport",
    "TrainResult",
    "train",
    "train_folds",
    "fold_mean",
    "predict",
    "accuracy",
    "DTYPES",
    "DIVERGENCE_FACTOR",
    "PROBE_SIZE",
    "HISTOGRAM_BINS",
]

DIVERGENCE_FACTOR = 3.0   # the lecture: stop when the loss exceeds 3x the initial loss
PROBE_SIZE = 256          # training examples in the fixed diagnostics probe batch
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (and, with the dataset, one trial).

    lr_decay multiplies the learning rate after each epoch.  ``momentum`` is used by the
    momentum and nesterov optimizers; adam uses its own beta1 = 0.9.  ``init_std`` is the
    std of the "small" initializer.  ``preprocessing`` / ``pca_components`` are applied
    by the caller, not by :func:`train`.

    Each field is a knob of :data:`workers.knobs.KNOBS`, which declares its type,
    default, bounds and help once; invalid values raise ValueError (a ``KnobError``) with
    the one line the knob gives, e.g. ``momentum must be in [0, 1), got 1.5``.  The
    defaults are those of ``hpo train``; every knob a search does not sample takes them too.
    """

    hidden_sizes: tuple[int, ...] = KNOBS["hidden_sizes"].default
    activation: str = KNOBS["activation"].default
    leaky_slope: float = KNOBS["leaky_slope"].default
    elu_alpha: float = KNOBS["elu_alpha"].default
    maxout_k: int = KNOBS["maxout_k"].default
    initializer: str = KNOBS["initializer"].default
    init_std: float = KNOBS["init_std"].default
    batch_norm: bool = KNOBS["batch_norm"].default
    optimizer: str = KNOBS["optimizer"].default
    learning_rate: float = KNOBS["learning_rate"].default
    momentum: float = KNOBS["momentum"].default
    lr_decay: float = KNOBS["lr_decay"].default
    weight_decay: float = KNOBS["weight_decay"].default
    epochs: int = KNOBS["epochs"].default
    batch_size: int = KNOBS["batch_size"].default
    preprocessing: str = KNOBS["preprocessing"].default
    pca_components: float | int | None = KNOBS["pca_components"].default
    seed: int = KNOBS["seed"].default
    dtype: str = KNOBS["dtype"].default

    def __post_init__(self) -> None:
        for knob in KNOBS.values():  # one knob per field (a test checks it)
            object.__setattr__(self, knob.name, knob.check(getattr(self, knob.name)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (hidden_sizes as a list)."""
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        pca = d["pca_components"]
        if isinstance(pca, np.generic):
            d["pca_components"] = pca.item()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build and validate a config from a dict such as :meth:`to_dict` returns.

        Missing fields take their defaults; an unknown field or an invalid value raises
        ValueError with one line naming the field and the allowed values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        values = dict(d)
        if "hidden_sizes" in values and isinstance(values["hidden_sizes"], list):
            values["hidden_sizes"] = tuple(values["hidden_sizes"])
        return cls(**values)

    def network_spec(self, input_dim: int, num_classes: int) -> NetworkSpec:
        """The network shape this config trains on data of input_dim features, num_classes classes."""
        return NetworkSpec(
            input_dim=int(input_dim),
            hidden_sizes=self.hidden_sizes,
            num_classes=int(num_classes),
            activation=self.activation,
            leaky_slope=self.leaky_slope,
            elu_alpha=self.elu_alpha,
            maxout_k=self.maxout_k,
            batch_norm=self.batch_norm,
        )


class TrainingDiverged(Exception):
    """Training stopped because the loss blew up.

    epoch and step are 1-based (step counts minibatches within the epoch); reason is
    "non-finite" or "exceeded" (loss > DIVERGENCE_FACTOR x initial_loss).
    """

    def __init__(self, epoch: int, step: int, loss: float, initial_loss: float, reason: str) -> None:
        self.epoch, self.step = int(epoch), int(step)
        self.loss, self.initial_loss = float(loss), float(initial_loss)
        self.reason = reason
        if reason == "non-finite":
            detail = f"loss is {self.loss}"
        else:
            detail = f"loss {self.loss:.3g} > {DIVERGENCE_FACTOR:g}x initial {self.initial_loss:.2f}"
        super().__init__(f"diverged at epoch {self.epoch}, step {self.step}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.epoch, self.step, self.loss, self.initial_loss, self.reason))


@dataclass
class EpochReport:
    """What one epoch produced.

    epoch: 1-based.  train_loss: mean minibatch loss over the epoch (with the L2 term).
    val_accuracy: None when there is no validation data.  seconds: training time of
    the epoch (the minibatch steps, not the evaluation).  lr: the learning rate used
    during the epoch.  diagnostics: JSON-ready, see :func:`train`.
    """

    epoch: int
    train_loss: float
    val_accuracy: float | None
    seconds: float
    lr: float
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    params / bn_state: the trained arrays (trainable parameters; batch-norm running
    statistics, empty without batch norm).  diagnostics: those of the last epoch.
    histograms: per hidden layer {"layer", "edges" (21 floats), "counts" (20 ints)} of
    the activations on the probe batch after the last epoch.  spec: the network shape.
    initial_loss: the reference loss of the divergence test (see :func:`train`).
    """

    config: TrainConfig
    history: list[EpochReport] = field(repr=False)
    params: dict[str, np.ndarray] = field(repr=False)
    bn_state: dict[str, np.ndarray] = field(repr=False)
    train_accuracy: float
    val_accuracy: float | None
    epoch_seconds: list[float]
    diagnostics: dict[str, Any] = field(repr=False)
    histograms: list[dict[str, Any]] = field(repr=False)
    spec: NetworkSpec = field(repr=False)
    initial_loss: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the parameter arrays."""
        return {
            "config": self.config.to_dict(),
            "history": [report.to_dict() for report in self.history],
            "train_accuracy": self.train_accuracy,
            "val_accuracy": self.val_accuracy,
            "epoch_seconds": list(self.epoch_seconds),
            "diagnostics": self.diagnostics,
            "histograms": self.histograms,
            "initial_loss": self.initial_loss,
            "num_classes": self.spec.num_classes,
            "input_dim": self.spec.input_dim,
        }


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------

def predict(model: Any, X: np.ndarray) -> np.ndarray:
    """Predicted labels in evaluation mode (batch norm with its running statistics).

    model: a FastNetwork, a TrainResult, or any object with ``spec``, ``params`` and
    ``bn_state`` (scored on a FastNetwork built from them).
    X: (N, D) preprocessed like the training data -> labels: (N,) int64.
    """
    if not isinstance(model, FastNetwork):
        model = FastNetwork(model.spec, model.params, model.bn_state)
    return np.argmax(model.scores(X), axis=1)


def accuracy(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of X classified as y, as a Python float (see :func:`predict`)."""
    y = np.asarray(y)
    if y.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(predict(model, X) == y))


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------

def _check_data(X: np.ndarray, y: np.ndarray, name: str, input_dim: int | None) -> None:
    if X.ndim != 2:
        raise ValueError(f"X_{name} must be 2-D (N, D), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y_{name} must be 1-D with one label per row of X_{name}, got {y.shape} for {X.shape}")
    if input_dim is not None and X.shape[0] and X.shape[1] != input_dim:
        raise ValueError(f"X_{name} has {X.shape[1]} features, X_train has {input_dim}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError(f"y_{name} must hold non-negative int labels")


def _batch_bounds(n: int, batch_size: int, batch_norm: bool) -> list[tuple[int, int]]:
    """(start, stop) of each minibatch.  With batch norm a last batch of one example
    (whose batch variance is 0) is merged into the one before it."""
    starts = list(range(0, n, batch_size))
    if batch_norm and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    stops = starts[1:] + [n]
    return list(zip(starts, stops))


def _norm(a: np.ndarray) -> float:
    flat = a.reshape(-1)
    return math.sqrt(float(np.dot(flat, flat)))


def _number(x: float) -> float | None:
    """A finite Python float, or None (JSON has no NaN or infinity)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _mean_std(a: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of all entries (accumulated in float64)."""
    flat = a.reshape(-1).astype(np.float64)
    mean = float(np.add.reduce(flat)) / flat.size
    flat -= mean
    return mean, math.sqrt(float(np.dot(flat, flat)) / flat.size)


def _diagnostics(
    spec: NetworkSpec,
    net: FastNetwork,
    X_probe: np.ndarray,
    weights_before_last_step: np.ndarray,
) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]:
    """Per-layer health numbers after an epoch; also the probe activations (for histograms)."""
    activation = get_activation(spec.activation)
    hidden = [(z.copy(), a.copy()) for z, a in net.probe(X_probe)]
    layers: list[dict[str, Any]] = []
    offset = 0
    update_ratios: list[float] = []
    grad_norms: list[float] = []
    for name in weight_names(spec):
        W = net.params[name]
        size = W.size
        update = net.weight_flat[offset:offset + size] - weights_before_last_step[offset:offset + size]
        offset += size
        w_norm = _norm(W)
        update_ratios.append(_number(_norm(update) / w_norm) if w_norm > 0 else None)
        grad_norms.append(_number(_norm(net.grads[name])))
    for index, (z, a) in enumerate(hidden):
        mean, std = _mean_std(a)
        layers.append({
            "layer": index + 1,
            "units": int(a.shape[1]),
            "activation_mean": _number(mean),
            "activation_std": _number(std),
            "dead_fraction": activation.dead_fraction(z, a, **spec.activation_kwargs),
            "saturation_fraction": activation.saturated_fraction(a),
            "grad_norm": grad_norms[index],
            "update_ratio": update_ratios[index],
        })
    diagnostics = {
        "probe_size": int(X_probe.shape[0]),
        "layers": layers,
        "output_layer": {"grad_norm": grad_norms[-1], "update_ratio": update_ratios[-1]},
    }
    return diagnostics, hidden


def _histograms(hidden: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    histograms = []
    for index, (_, a) in enumerate(hidden):
        values = a[np.isfinite(a)].astype(np.float64)
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
        histograms.append({
            "layer": index + 1,
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        })
    return histograms


def train(
    config: TrainConfig,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    on_epoch: Callable[[EpochReport], None] | None = None,
    num_classes: int | None = None,
) -> TrainResult:
    """Train the network of ``config`` on preprocessed data.

    X_train: (N, D) float, y_train: (N,) int labels in [0, C); X_val: (M, D), y_val: (M,),
    M may be 0 (then every val_accuracy is None).  C is ``num_classes`` if given, else
    max label + 1 over train and val.  Arrays are cast once to the config dtype.

    Each epoch shuffles the training set (config seed), takes minibatch steps, then
    multiplies the learning rate by ``lr_decay``.  After each epoch ``on_epoch(report)``
    is called; any exception it raises propagates unchanged (the search prunes that way).

    Divergence: a non-finite minibatch loss, or one above DIVERGENCE_FACTOR x the
    initial loss, raises :class:`TrainingDiverged`.  The *initial loss* is the loss of the
    untrained network on the fixed probe batch (up to PROBE_SIZE training examples,
    training mode, L2 term included), floored at ln(C), the loss of a uniform guess.
    Measuring it on 256 examples rather than on the first minibatch keeps a lucky easy
    first batch from setting a low bar; the floor keeps a near-uniform initial network
    (small init, where every batch scores ~ln C) from tripping on ordinary noise.  If the
    probe batch itself gives a non-finite loss (a NaN in the data), the first finite
    minibatch loss (floored the same way) is the bar instead.

    Diagnostics per epoch (all Python numbers): per hidden layer the mean and std of
    its activations on the probe batch (training-mode batch norm), the dead fraction
    (relu family: units, or maxout pieces, inactive on every probe example; None
    otherwise), the saturation fraction (sigmoid/tanh: outputs within 1% of a bound;
    None otherwise), the norm of the weight gradient and the update-to-weight ratio
    ||delta W|| / ||W||, both from the epoch's last step (cs231n: ~1e-3 is healthy);
    the same two for the output layer.
    """
    run = _Training(config, X_train, y_train, X_val, y_val, num_classes)
    each = None if on_epoch is None else (lambda reports: on_epoch(reports[0]))
    return _train_side_by_side([run], each)[0]


Fold = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # X_train, y_train, X_val, y_val


def train_folds(
    config: TrainConfig,
    folds: list[Fold],
    on_epoch: Callable[[list[EpochReport]], None] | None = None,
    num_classes: int | None = None,
) -> list[TrainResult]:
    """Train ``config`` on each fold, the folds side by side epoch by epoch.

    folds: (X_train, y_train, X_val, y_val) per fold, as :func:`train` takes them.  After
    epoch e of every fold, ``on_epoch(reports)`` gets the K reports of epoch e, in fold
    order (see :func:`fold_mean`); what it raises propagates, so a cross-validated run is
    pruned on all its folds at epoch e.  Each fold's result is bit-identical to
    :func:`train` on that fold alone: each run keeps its own random streams, network and
    optimizer, and only the BLAS threading is shared, set for the widest fold (with PCA
    to a fraction of the variance folds may keep different numbers of directions).  The
    price is memory: the K folds' data and networks are held at once.
    """
    if not folds:
        raise ValueError("train_folds needs at least one fold")
    runs = [_Training(config, *fold, num_classes) for fold in folds]
    return _train_side_by_side(runs, on_epoch)


def fold_mean(reports: list[EpochReport]) -> EpochReport:
    """The report of one epoch over K folds: its mean training loss and validation accuracy
    (None if any fold has none), the folds' training seconds summed.  No per-layer
    diagnostics: they belong to one network, not to the mean of several."""
    accuracies = [report.val_accuracy for report in reports]
    return EpochReport(
        epoch=reports[0].epoch,
        train_loss=float(np.mean([report.train_loss for report in reports])),
        val_accuracy=None if None in accuracies else float(np.mean(accuracies)),
        seconds=float(sum(report.seconds for report in reports)),
        lr=reports[0].lr,
    )


def _train_side_by_side(
    runs: list["_Training"], on_epoch: Callable[[list[EpochReport]], None] | None
) -> list[TrainResult]:
    """Run every epoch of each run in turn, calling ``on_epoch`` with the runs' reports after
    each; BLAS threading is set once around them all (its limit is process-wide, so nested
    limits would restore each other out of order)."""
    config = runs[0].config
    widest = max(runs, key=lambda run: run.spec.input_dim)
    with blas_threads_for(widest.spec, config.batch_size) as threads, contextlib.ExitStack() as opened:
        for run in runs:
            run.open(threads)
            opened.callback(run.close)
        for epoch in range(1, config.epochs + 1):
            reports = [run.epoch(epoch) for run in runs]
            if on_epoch is not None:
                on_epoch(reports)
        return [run.result() for run in runs]


class _Training:
    """One training run (see :func:`train`), advanced an epoch at a time: checked and set up
    here, its network opened by :meth:`open`, each epoch by :meth:`epoch`, read out by
    :meth:`result`, let go by :meth:`close`."""

    def __init__(self, config: TrainConfig, X_train: np.ndarray, y_train: np.ndarray,
                 X_val: np.ndarray, y_val: np.ndarray, num_classes: int | None) -> None:
        dtype = np.dtype(config.dtype)
        X_train = np.ascontiguousarray(X_train, dtype=dtype)
        y_train = np.asarray(y_train)
        X_val = np.asarray(X_val, dtype=dtype)
        y_val = np.asarray(y_val)
        if X_val.ndim == 1 and X_val.size == 0:
            X_val = X_val.reshape(0, X_train.shape[1] if X_train.ndim == 2 else 0)
        _check_data(X_train, y_train, "train", None)
        _check_data(X_val, y_val, "val", X_train.shape[1])
        n_train, input_dim = X_train.shape
        if n_train == 0:
            raise ValueError("X_train is empty")
        max_label = int(max(y_train.max(), y_val.max() if y_val.size else 0))
        if num_classes is None:
            num_classes = max(max_label + 1, 2)
        elif num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        elif max_label >= num_classes:
            raise ValueError(f"label {max_label} out of range for num_classes={num_classes}")

        self.config, self.X_train, self.y_train, self.X_val, self.y_val = config, X_train, y_train, X_val, y_val
        self.spec = spec = config.network_spec(input_dim, num_classes)
        init_seq, shuffle_seq, probe_seq = np.random.SeedSequence(config.seed).spawn(3)
        self.initial_params, self.initial_bn_state = init_network(
            spec, config.initializer, np.random.default_rng(init_seq), dtype=dtype, init_std=config.init_std
        )
        self.shuffle_rng = np.random.default_rng(shuffle_seq)
        self.probe_rows = np.sort(np.random.default_rng(probe_seq).permutation(n_train)[:PROBE_SIZE])
        self.X_probe = X_train[self.probe_rows]

        self.onehot = np.zeros((n_train, num_classes), dtype=dtype)
        self.onehot[np.arange(n_train), y_train] = 1
        self.bounds = _batch_bounds(n_train, config.batch_size, config.batch_norm)
        # Gather each minibatch from the unshuffled data when a shuffled copy per epoch would
        # be large (it would stream the whole set through memory once more per epoch).
        self.gather_per_batch = X_train.nbytes > 32 * 2**20
        self.history: list[EpochReport] = []
        self.hidden: list[tuple[np.ndarray, np.ndarray]] = []
        self.net: FastNetwork | None = None

    def open(self, threads: int) -> None:
        """Build the network on ``threads`` threads and measure the initial loss."""
        config = self.config
        self.net = net = FastNetwork(self.spec, self.initial_params, self.initial_bn_state, threads=threads)
        self.initial_params = self.initial_bn_state = None  # the network holds its own copy
        self.optimizer = net.optimizer(config.optimizer, config.learning_rate, config.momentum)
        probe_loss = net.loss(self.X_probe, self.onehot[self.probe_rows], config.weight_decay)
        self.uniform_guess_loss = math.log(self.spec.num_classes)
        if math.isfinite(probe_loss):
            self.initial_loss: float | None = max(probe_loss, self.uniform_guess_loss)
            self.loss_limit = DIVERGENCE_FACTOR * self.initial_loss
        else:
            # The probe holds a NaN or inf: take the bar from the first finite minibatch
            # instead (a limit of -inf sends every step to the check until then).
            self.initial_loss, self.loss_limit = None, -math.inf
        self.weights_before_last_step = np.empty_like(net.weight_flat)

    def epoch(self, epoch: int) -> EpochReport:
        """Train epoch ``epoch`` (1-based); its report. Raises TrainingDiverged."""
        net, optimizer, X_train, onehot = self.net, self.optimizer, self.X_train, self.onehot
        n_train, weight_decay, last_step = X_train.shape[0], self.config.weight_decay, len(self.bounds)
        lr = optimizer.learning_rate
        started = time.perf_counter()
        order = self.shuffle_rng.permutation(n_train)
        onehot_epoch = onehot[order]
        X_epoch = X_train if self.gather_per_batch else X_train[order]
        loss_sum = 0.0
        for step, (start, stop) in enumerate(self.bounds, 1):
            xb = X_train[order[start:stop]] if self.gather_per_batch else X_epoch[start:stop]
            loss = net.loss_and_grads(xb, onehot_epoch[start:stop], weight_decay)
            if not loss <= self.loss_limit:  # also catches nan
                if self.initial_loss is None and math.isfinite(loss):
                    self.initial_loss = max(loss, self.uniform_guess_loss)
                    self.loss_limit = DIVERGENCE_FACTOR * self.initial_loss
                else:
                    reason = "exceeded" if math.isfinite(loss) else "non-finite"
                    initial = self.uniform_guess_loss if self.initial_loss is None else self.initial_loss
                    raise TrainingDiverged(epoch, step, loss, initial, reason)
            if step == last_step:
                np.copyto(self.weights_before_last_step, net.weight_flat)
            optimizer.step()
            loss_sum += loss * (stop - start)
        seconds = time.perf_counter() - started

        diagnostics, self.hidden = _diagnostics(self.spec, net, self.X_probe, self.weights_before_last_step)
        val_accuracy = accuracy(net, self.X_val, self.y_val) if self.X_val.shape[0] else None
        report = EpochReport(
            epoch=epoch,
            train_loss=loss_sum / n_train,
            val_accuracy=val_accuracy,
            seconds=seconds,
            lr=lr,
            diagnostics=diagnostics,
        )
        self.history.append(report)
        optimizer.decay_learning_rate(self.config.lr_decay)
        return report

    def result(self) -> TrainResult:
        """The trained run (call it before :meth:`close`: it scores the training set)."""
        history = self.history
        return TrainResult(
            config=self.config,
            history=history,
            params=self.net.params_copy(),
            bn_state=self.net.bn_state(),
            train_accuracy=accuracy(self.net, self.X_train, self.y_train),
            val_accuracy=history[-1].val_accuracy,
            epoch_seconds=[report.seconds for report in history],
            diagnostics=history[-1].diagnostics,
            histograms=_histograms(self.hidden),
            spec=self.spec,
            initial_loss=float(self.initial_loss),
        )

    def close(self) -> None:
        if self.net is not None:
            self.net.close()

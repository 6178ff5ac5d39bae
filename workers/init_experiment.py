"""Why initialization matters: one batch forwarded through a deep network at initialization.

The cs231n experiment ("Training Neural Networks I"): take a batch, zero-center and normalize
each feature, and forward it through ``depth`` hidden layers of ``width`` units without batch
norm, once per (activation, initializer). Each layer's activations are summarized by their
mean, standard deviation and a histogram. What the lecture shows, and what the numbers here
show on a campaign's own data:

* small random weights (std 0.01) shrink the signal at every layer: by the last layer every
  activation is nearly zero (tanh and ReLU alike), and so would be the gradients;
* Xavier keeps tanh's outputs spread over the same range layer after layer;
* under ReLU, which zeroes half of its input, Xavier loses about a factor sqrt(2) of std per
  layer; He's extra gain sqrt(2) makes up for it and keeps the std steady.

A forward pass only, no training: under a second. The weights come from the project's
initializer registry and the nonlinearities from its activation registry, in the float32 a
trial trains in by default, so the experiment runs exactly what a trial would start from
(biases start at zero, as there); the batch's standardization and each layer's summary are
computed in float64.

Every run draws the same standard normals for its weights (same ``seed``), so two runs with
the same activation differ only by the initializer's scale.

Numerical core: NumPy, the standard library and ``workers.nn`` / ``workers.data`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.data.preprocess import fit_preprocessor
from workers.nn.activations import activation_kwargs, get_activation
from workers.nn.initializers import initializer_names, sample_weights

__all__ = [
    "DEPTH",
    "WIDTH",
    "BATCH_SIZE",
    "BINS",
    "EXPERIMENT_ACTIVATIONS",
    "forward_at_init",
    "init_experiment",
]

# The lecture's network: 10 hidden layers of 500 units, a batch of 500 examples.
DEPTH = 10
WIDTH = 500
BATCH_SIZE = 500
# Bars per histogram: enough to see a spike or saturation, small in a report's JSON.
BINS = 20
# An unbounded activation's histogram range leaves out this percentage of each tail.
TAIL_PERCENT = 1.0
# The lecture's pair: a saturating activation (tanh) and ReLU.
EXPERIMENT_ACTIVATIONS = ("tanh", "relu")


def forward_at_init(
    X: np.ndarray,
    *,
    activation: str,
    initializer: str,
    depth: int = DEPTH,
    width: int = WIDTH,
    seed: int = 0,
    bins: int = BINS,
    dtype: np.dtype | str = np.float32,
) -> list[dict[str, Any]]:
    """Forward X through ``depth`` freshly initialized hidden layers and summarize each.

    Layer l computes ``a_l = activation(a_{l-1} @ W_l)`` with W_l drawn by ``initializer``
    (biases are zero at initialization, batch norm absent). For maxout, W_l has k * width
    columns, as in the training network.

    Args:
        X: (N, D) inputs, used as given (preprocess them first).
        activation: a key of ``workers.nn.activations.ACTIVATIONS`` (default parameters).
        initializer: a key of ``workers.nn.initializers.INITIALIZERS`` ("small" at its
            default std).
        depth, width: hidden layers and units per layer.
        seed: seeds the weights; the same seed gives the same weights.
        bins: bars per histogram.
        dtype: of the weights and activations (a trial's default, float32: half the time
            of float64 on the lecture's network).

    Returns:
        One dict per hidden layer, JSON-ready: ``{"layer": l (1-based), "mean": float,
        "std": float, "saturated": float or None, "edges": [bins + 1 floats], "counts":
        [bins ints]}``, mean and std over all N * width activations; ``saturated`` is the
        fraction of them within 1% of the output range of a bound, for the saturating
        activations (sigmoid, tanh), None for the others. Every layer's histogram shares one range, so a signal
        that shrinks shows as a spike narrowing layer after layer: the activation's output
        bounds if it has them (tanh: [-1, 1]), else the widest of the layers' central 98%
        (see :func:`_histogram_range`); activations beyond the range are counted in the end
        bars, so the counts of a layer sum to N * width.
    """
    entry = get_activation(activation)
    kwargs = activation_kwargs(activation, {})
    columns = width * entry.columns_per_unit(kwargs)
    rng = np.random.default_rng(seed)
    a = np.asarray(X, dtype=dtype)
    outputs = []
    for _ in range(depth):
        W = sample_weights(initializer, a.shape[1], columns, rng, dtype=dtype, activation=activation)
        a, _cache = entry.forward(a @ W, **kwargs)
        outputs.append(a)
    low, high = _histogram_range(entry.bounds, outputs)
    layers = []
    for layer, a in enumerate(outputs, start=1):
        # values beyond the range go to the end bars, so every activation is counted
        counts, edges = np.histogram(np.clip(a, low, high), bins=bins, range=(low, high))
        layers.append({
            "layer": layer,
            "mean": float(a.mean(dtype=np.float64)),
            "std": float(a.std(dtype=np.float64)),
            "saturated": entry.saturated_fraction(a),
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        })
    return layers


def _histogram_range(bounds: tuple[float, float] | None, outputs: list[np.ndarray]) -> tuple[float, float]:
    """The range shared by the histograms of one run's layers.

    A bounded activation's output bounds; otherwise from the lowest 1st percentile to the
    highest 99th percentile of any layer. Not the extremes: a standardized feature that is
    rarely nonzero (a corner pixel of digits) reaches tens of stds, and a range stretched
    to it would pile every other activation into the first bar.
    """
    if bounds is not None:
        return float(bounds[0]), float(bounds[1])
    tails = np.array([np.percentile(a, [TAIL_PERCENT, 100 - TAIL_PERCENT]) for a in outputs])  # one sort per layer
    low, high = float(tails[:, 0].min()), float(tails[:, 1].max())
    if not high > low:  # every activation equal (all zero, say): any range holds them
        high = low + 1.0
    return low, high


def init_experiment(
    X: np.ndarray,
    *,
    activations: Sequence[str] = EXPERIMENT_ACTIVATIONS,
    initializers: Sequence[str] | None = None,
    depth: int = DEPTH,
    width: int = WIDTH,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    bins: int = BINS,
) -> dict[str, Any]:
    """The lecture's experiment on the inputs X: every (activation, initializer) pair.

    Steps:
      1. draw a batch of min(batch_size, N) rows of X without replacement (``seed``);
      2. standardize it as the lecture does, each feature zero-centered and divided by its
         std (``workers.data`` "standardize", fitted on the batch itself, so the batch's
         features have exactly mean 0 and std 1; a constant feature becomes 0);
      3. :func:`forward_at_init` for each activation, then each initializer, with the same
         weight seed.

    Args:
        X: (N, D) training inputs of the campaign's dataset, raw (e.g.
            ``workers.data.load_dataset(spec, seed).X_train``).
        activations, initializers: registry names; initializers None means every
            registered one, in registry order.
        depth, width, seed, bins: as in :func:`forward_at_init`.
        batch_size: rows forwarded (fewer if X has fewer).

    Returns:
        JSON-ready ``{"depth", "width", "batch_size" (rows used), "input_dim" (D),
        "runs": [{"activation", "initializer", "layers": [forward_at_init's dicts]}, ...]}``,
        runs ordered activation-major.

    Raises:
        ValueError: X is not a non-empty 2-D array, or no feature varies across the batch.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (N, D), got shape {X.shape}")
    if initializers is None:
        initializers = initializer_names()
    rows = np.random.default_rng(seed).choice(X.shape[0], size=min(batch_size, X.shape[0]), replace=False)
    batch = X[np.sort(rows)]
    batch = fit_preprocessor("standardize", batch).transform(batch)
    if not batch.any():  # one row, or constant features: every activation of every layer would be 0
        raise ValueError(f"no feature varies across the {batch.shape[0]} rows of the batch, so the network sees no signal")
    runs = [
        {
            "activation": activation,
            "initializer": initializer,
            "layers": forward_at_init(
                batch, activation=activation, initializer=initializer,
                depth=depth, width=width, seed=seed, bins=bins,
            ),
        }
        for activation in activations
        for initializer in initializers
    ]
    return {
        "depth": int(depth),
        "width": int(width),
        "batch_size": int(batch.shape[0]),
        "input_dim": int(batch.shape[1]),
        "runs": runs,
    }

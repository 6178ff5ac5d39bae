"""The fully-connected classifier: a reference built from the pure layer functions, and
a fast training engine verified against it.

Architecture, for hidden sizes (H_1, ..., H_L) and C classes::

    x -> [affine -> batchnorm -> activation] x L -> affine -> softmax cross-entropy

Without batch norm each hidden affine has a bias; with it the bias is left out (batch
norm subtracts the batch mean, so a bias would get a gradient of exactly zero; beta
plays its role).  A maxout layer of H units has an affine producing k * H columns
(batch-normalized column by column) and outputs H.

Parameters are a dict of arrays, trainable only:

    W{l}: (fan_in, width_l)   b{l}: (width_l,) without batch norm
    gamma{l}, beta{l}: (width_l,) with batch norm
    W{L+1}: (H_L, C)          b{L+1}: (C,)

Batch-norm running statistics live apart, in their own dict ``{"mean{l}", "var{l}"}``,
so an optimizer handed the parameters can never touch them.

Two implementations of the same function:

* the **reference** (:func:`forward`, :func:`loss_and_grads`), a readable chain of the
  pure forward/backward pairs of :mod:`workers.nn.layers` and
  :mod:`workers.nn.activations`; it is what the numerical gradient checks test;
* :class:`FastNetwork`, the training engine.  On small networks a step's time is the
  per-call overhead of NumPy, not arithmetic, so it keeps all parameters in one flat
  array (one optimizer update for the whole net), all gradients in another, and
  preallocated buffers per batch size written with ``out=`` -- no allocation and no
  dict lookup per step.  Tests check it against the reference, gradient for gradient.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from workers.nn.activations import get_activation
from workers.nn.initializers import sample_weights
from workers.nn.layers import (
    BN_EPS,
    BN_MOMENTUM,
    BNState,
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
)
from workers.nn.losses import l2_penalty, softmax_cross_entropy
from workers.nn.optimizers import Optimizer, make_optimizer

__all__ = [
    "NetworkSpec",
    "init_network",
    "forward",
    "backward",
    "loss_and_grads",
    "predict_scores",
    "hidden_outputs",
    "weight_names",
    "FastNetwork",
    "FlatOptimizer",
    "blas_threads_for",
]

# Rows per chunk when scoring many examples, to bound the temporary memory.
SCORE_CHUNK = 4096

# A matrix product of at least this many flops is split in two halves computed on two
# threads when the engine may use two (see FastNetwork); below it the hand-off costs more
# than it saves.  200 x 3072 x 100 (1.2e8 flops) went from 1.6 ms to 1.1 ms split.
SPLIT_MIN_FLOPS = 2e7
# An optimizer step over at least this many parameters is split in two halves likewise
# (every update rule is elementwise, so the halves are independent).
SPLIT_MIN_PARAMS = 100_000


@dataclass(frozen=True)
class NetworkSpec:
    """The shape of a network: everything but its parameter values.

    input_dim: D; hidden_sizes: units per hidden layer; num_classes: C.
    activation: a key of ACTIVATIONS; leaky_slope / elu_alpha / maxout_k: its parameter.
    batch_norm: batch normalization between each hidden affine and its activation.
    """

    input_dim: int
    hidden_sizes: tuple[int, ...]
    num_classes: int
    activation: str = "relu"
    leaky_slope: float = 0.01
    elu_alpha: float = 1.0
    maxout_k: int = 2
    batch_norm: bool = True
    bn_momentum: float = BN_MOMENTUM
    bn_eps: float = BN_EPS
    activation_kwargs: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        get_activation(self.activation)  # ValueError naming the allowed values
        if not 0.0 <= self.leaky_slope < 1.0:
            raise ValueError(f"leaky_slope must be in [0, 1), got {self.leaky_slope}")
        if int(self.maxout_k) < 1:
            raise ValueError(f"maxout_k must be positive, got {self.maxout_k}")
        kwargs = {
            "leaky_relu": {"slope": float(self.leaky_slope)},
            "elu": {"alpha": float(self.elu_alpha)},
            "maxout": {"k": int(self.maxout_k)},
        }.get(self.activation, {})
        object.__setattr__(self, "activation_kwargs", kwargs)

    @property
    def depth(self) -> int:
        """Number of hidden layers L."""
        return len(self.hidden_sizes)

    @property
    def pieces(self) -> int:
        """Affine columns per hidden unit: k for maxout, else 1."""
        return int(self.maxout_k) if self.activation == "maxout" else 1

    @property
    def affine_widths(self) -> tuple[int, ...]:
        """Columns produced by each hidden affine: units * pieces."""
        return tuple(h * self.pieces for h in self.hidden_sizes)

    @property
    def fan_ins(self) -> tuple[int, ...]:
        """Inputs of each affine layer, hidden ones then the output layer."""
        return (self.input_dim, *self.hidden_sizes)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every trainable parameter; weight matrices first."""
        shapes: dict[str, tuple[int, ...]] = {}
        out_widths = (*self.affine_widths, self.num_classes)
        for layer, (fan_in, width) in enumerate(zip(self.fan_ins, out_widths), start=1):
            shapes[f"W{layer}"] = (fan_in, width)
        for layer, width in enumerate(self.affine_widths, start=1):
            if self.batch_norm:
                shapes[f"gamma{layer}"] = (width,)
                shapes[f"beta{layer}"] = (width,)
            else:
                shapes[f"b{layer}"] = (width,)
        shapes[f"b{self.depth + 1}"] = (self.num_classes,)
        return shapes


def weight_names(spec: NetworkSpec) -> list[str]:
    """Names of the weight matrices (the parameters L2 weight decay applies to)."""
    return [f"W{layer}" for layer in range(1, spec.depth + 2)]


def init_network(
    spec: NetworkSpec,
    initializer: str,
    rng: np.random.Generator,
    *,
    dtype: np.dtype | str = np.float32,
    init_std: float = 0.01,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fresh parameters and batch-norm state.

    Weights are drawn by the named initializer (fan_out of a maxout affine is k * units);
    biases and beta start at 0, gamma at 1, running mean 0 and running var 1.

    -> (params: name -> array of ``dtype``, bn_state: {"mean{l}", "var{l}"} -> (width_l,)).
    """
    dtype = np.dtype(dtype)
    params: dict[str, np.ndarray] = {}
    for name, shape in spec.param_shapes().items():
        if name.startswith("W"):
            params[name] = sample_weights(
                initializer, shape[0], shape[1], rng, dtype=dtype,
                activation=spec.activation, leaky_slope=spec.leaky_slope, std=init_std,
            )
        elif name.startswith("gamma"):
            params[name] = np.ones(shape, dtype=dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    bn_state: dict[str, np.ndarray] = {}
    if spec.batch_norm:
        for layer, width in enumerate(spec.affine_widths, start=1):
            initial = BNState.initial(width, dtype)
            bn_state[f"mean{layer}"], bn_state[f"var{layer}"] = initial.mean, initial.var
    return params, bn_state


# ----------------------------------------------------------------------------------------
# Reference implementation: the pure layer functions chained.
# ----------------------------------------------------------------------------------------

def forward(
    spec: NetworkSpec,
    params: dict[str, np.ndarray],
    bn_state: dict[str, np.ndarray],
    X: np.ndarray,
    *,
    training: bool,
) -> tuple[np.ndarray, list[tuple[Any, ...]], dict[str, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Forward pass of the reference network.

    training: batch statistics in batch norm (and a new running state), else the
    running statistics.  ``params`` and ``bn_state`` are not modified.

    X: (N, D) -> (scores: (N, C), caches for :func:`backward`, new_bn_state,
    hidden: per hidden layer (activation input (N, width_l), activation output (N, H_l))).
    """
    activation = get_activation(spec.activation)
    kwargs = spec.activation_kwargs
    new_state = dict(bn_state)
    caches: list[tuple[Any, ...]] = []
    hidden: list[tuple[np.ndarray, np.ndarray]] = []
    a = X
    for layer in range(1, spec.depth + 1):
        if spec.batch_norm:
            h, affine_cache = affine_forward(a, params[f"W{layer}"])
            state = BNState(bn_state[f"mean{layer}"], bn_state[f"var{layer}"])
            z, bn_cache, state = batchnorm_forward(
                h, params[f"gamma{layer}"], params[f"beta{layer}"], state,
                training=training, momentum=spec.bn_momentum, eps=spec.bn_eps,
            )
            new_state[f"mean{layer}"], new_state[f"var{layer}"] = state.mean, state.var
        else:
            z, affine_cache = affine_forward(a, params[f"W{layer}"], params[f"b{layer}"])
            bn_cache = None
        a, act_cache = activation.forward(z, **kwargs)
        caches.append((affine_cache, bn_cache, act_cache))
        hidden.append((z, a))
    out = spec.depth + 1
    scores, affine_cache = affine_forward(a, params[f"W{out}"], params[f"b{out}"])
    caches.append((affine_cache,))
    return scores, caches, new_state, hidden


def backward(
    spec: NetworkSpec, dscores: np.ndarray, caches: list[tuple[Any, ...]]
) -> dict[str, np.ndarray]:
    """Backward pass of the reference network: dscores (N, C) and the caches of
    :func:`forward` -> gradient of every parameter (same names and shapes as params)."""
    activation = get_activation(spec.activation)
    grads: dict[str, np.ndarray] = {}
    out = spec.depth + 1
    da, grads[f"W{out}"], grads[f"b{out}"] = affine_backward(dscores, caches[-1][0])
    for layer in range(spec.depth, 0, -1):
        affine_cache, bn_cache, act_cache = caches[layer - 1]
        dz = activation.backward(da, act_cache)
        if spec.batch_norm:
            dh, grads[f"gamma{layer}"], grads[f"beta{layer}"] = batchnorm_backward(dz, bn_cache)
            da, grads[f"W{layer}"], _ = affine_backward(dh, affine_cache)
        else:
            da, grads[f"W{layer}"], grads[f"b{layer}"] = affine_backward(dz, affine_cache)
    return grads


def loss_and_grads(
    spec: NetworkSpec,
    params: dict[str, np.ndarray],
    bn_state: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    *,
    weight_decay: float = 0.0,
) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One training-mode pass of the reference network.

    X: (N, D), y: (N,) int labels -> (loss: float = mean cross-entropy + L2 penalty,
    grads: name -> array shaped like params, new_bn_state).
    """
    scores, caches, new_state, _ = forward(spec, params, bn_state, X, training=True)
    loss, dscores = softmax_cross_entropy(scores, y)
    grads = backward(spec, dscores, caches)
    if weight_decay:
        names = weight_names(spec)
        penalty, penalty_grads = l2_penalty([params[n] for n in names], weight_decay)
        loss += penalty
        for name, extra in zip(names, penalty_grads):
            grads[name] += extra
    return loss, grads, new_state


def hidden_outputs(
    spec: NetworkSpec,
    params: dict[str, np.ndarray],
    bn_state: dict[str, np.ndarray],
    X: np.ndarray,
    *,
    training: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per hidden layer, (activation input (N, width_l), activation output (N, H_l)) for X."""
    return forward(spec, params, bn_state, X, training=training)[3]


def predict_scores(
    spec: NetworkSpec,
    params: dict[str, np.ndarray],
    bn_state: dict[str, np.ndarray],
    X: np.ndarray,
) -> np.ndarray:
    """Class scores in evaluation mode (batch norm with its running statistics).

    Evaluation-mode batch norm is a fixed per-column affine map, so it is folded into
    the preceding weights first: W' = W * s, b' = beta - mean * s with
    s = gamma / sqrt(var + eps).  X is scored in chunks of SCORE_CHUNK rows.

    X: (N, D) -> scores: (N, C) of the parameters' dtype.
    """
    activation = get_activation(spec.activation)
    kwargs = spec.activation_kwargs
    dtype = params["W1"].dtype
    folded: list[tuple[np.ndarray, np.ndarray]] = []
    for layer in range(1, spec.depth + 1):
        W = params[f"W{layer}"]
        if spec.batch_norm:
            scale = params[f"gamma{layer}"] / np.sqrt(bn_state[f"var{layer}"] + spec.bn_eps)
            bias = params[f"beta{layer}"] - bn_state[f"mean{layer}"] * scale
            folded.append((W * scale, bias))
        else:
            folded.append((W, params[f"b{layer}"]))
    out = spec.depth + 1
    folded.append((params[f"W{out}"], params[f"b{out}"]))
    X = np.asarray(X, dtype=dtype)
    scores = np.empty((X.shape[0], spec.num_classes), dtype=dtype)
    for start in range(0, X.shape[0], SCORE_CHUNK):
        a = X[start:start + SCORE_CHUNK]
        for W, b in folded[:-1]:
            z = a @ W
            z += b
            a, _ = activation.forward(z, **kwargs)
        W, b = folded[-1]
        np.matmul(a, W, out=scores[start:start + SCORE_CHUNK])
        scores[start:start + SCORE_CHUNK] += b
    return scores


# ----------------------------------------------------------------------------------------
# Fast engine
# ----------------------------------------------------------------------------------------

class _ActivationKernel:
    """In-place activation for one layer and one batch size.

    forward(z) writes the output into self.out and returns it; backward(da) writes the
    gradient with respect to z into self.dz and returns it.  Each kernel matches the
    pure pair of the same name in workers.nn.activations.
    """

    def __init__(self, n: int, width: int, units: int, dtype: np.dtype) -> None:
        self.out = np.empty((n, units), dtype=dtype)
        self.dz = np.empty((n, width), dtype=dtype)
        # a zero array of z's shape: a same-shape operand is ~2x faster than a Python 0.0
        # or a broadcast zero row
        self.zero = np.zeros((n, width), dtype=dtype)

    def forward(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, da: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Relu(_ActivationKernel):
    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, self.zero, out=self.out)

    def backward(self, da: np.ndarray) -> np.ndarray:
        # the 0/1 mask of z > 0 written straight into a float array: a bool mask's
        # mixed-dtype multiply is ~2.5x slower than a float one, np.sign ~2x slower
        np.greater(self.out, 0, out=self.dz)
        self.dz *= da
        return self.dz


class _LeakyRelu(_ActivationKernel):
    """Uses 0 <= slope < 1 (checked by NetworkSpec): then out = max(z, slope * z) and the
    derivative is max([out > 0], slope) -- no masked copy, which is slow in NumPy."""

    def __init__(self, n: int, width: int, units: int, dtype: np.dtype, slope: float) -> None:
        super().__init__(n, width, units, dtype)
        self.slope = dtype.type(slope)

    def forward(self, z: np.ndarray) -> np.ndarray:
        np.multiply(z, self.slope, out=self.out)
        return np.maximum(z, self.out, out=self.out)

    def backward(self, da: np.ndarray) -> np.ndarray:
        np.greater(self.out, 0, out=self.dz)
        np.maximum(self.dz, self.slope, out=self.dz)
        self.dz *= da
        return self.dz


class _Elu(_ActivationKernel):
    def __init__(self, n: int, width: int, units: int, dtype: np.dtype, alpha: float) -> None:
        super().__init__(n, width, units, dtype)
        self.alpha = dtype.type(alpha)
        self.one = dtype.type(1.0)
        self.positive = np.empty((n, width), dtype=bool)

    def forward(self, z: np.ndarray) -> np.ndarray:
        np.greater(z, self.zero, out=self.positive)
        np.minimum(z, self.zero, out=self.out)
        np.expm1(self.out, out=self.out)
        self.out *= self.alpha
        np.copyto(self.out, z, where=self.positive)
        return self.out

    def backward(self, da: np.ndarray) -> np.ndarray:
        # d/dz = 1 for z > 0, alpha * exp(z) = out + alpha otherwise
        np.add(self.out, self.alpha, out=self.dz)
        np.copyto(self.dz, self.one, where=self.positive)
        self.dz *= da
        return self.dz


class _Sigmoid(_ActivationKernel):
    def __init__(self, n: int, width: int, units: int, dtype: np.dtype) -> None:
        super().__init__(n, width, units, dtype)
        self.half = dtype.type(0.5)
        self.one = dtype.type(1.0)

    def forward(self, z: np.ndarray) -> np.ndarray:
        # 0.5 * (1 + tanh(z / 2)): no overflow, as in sigmoid_forward
        np.multiply(z, self.half, out=self.out)
        np.tanh(self.out, out=self.out)
        self.out += self.one
        self.out *= self.half
        return self.out

    def backward(self, da: np.ndarray) -> np.ndarray:
        np.subtract(self.one, self.out, out=self.dz)
        self.dz *= self.out
        self.dz *= da
        return self.dz


class _Tanh(_ActivationKernel):
    def __init__(self, n: int, width: int, units: int, dtype: np.dtype) -> None:
        super().__init__(n, width, units, dtype)
        self.one = dtype.type(1.0)

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.tanh(z, out=self.out)

    def backward(self, da: np.ndarray) -> np.ndarray:
        np.multiply(self.out, self.out, out=self.dz)
        np.subtract(self.one, self.dz, out=self.dz)
        self.dz *= da
        return self.dz


class _Maxout(_ActivationKernel):
    """Max over the k pieces of (N, k*H) laid out piece by piece (see maxout_forward).

    The backward pass routes the gradient to every piece equal to the maximum; the
    reference gives it to the first such piece only.  The two differ only on exact
    ties between pieces, which have probability zero for real-valued inputs.
    """

    def __init__(self, n: int, width: int, units: int, dtype: np.dtype, k: int) -> None:
        super().__init__(n, width, units, dtype)
        self.k = k
        self.winner = np.empty((n, k, units), dtype=bool)
        self.z = None

    def forward(self, z: np.ndarray) -> np.ndarray:
        n = z.shape[0]
        self.z = z.reshape(n, self.k, -1)
        return np.maximum.reduce(self.z, axis=1, out=self.out)

    def backward(self, da: np.ndarray) -> np.ndarray:
        n = da.shape[0]
        np.equal(self.z, self.out[:, None, :], out=self.winner)
        np.multiply(self.winner, da[:, None, :], out=self.dz.reshape(n, self.k, -1))
        return self.dz


def _make_kernel(spec: NetworkSpec, n: int, width: int, units: int, dtype: np.dtype) -> _ActivationKernel:
    name = spec.activation
    if name == "relu":
        return _Relu(n, width, units, dtype)
    if name == "leaky_relu":
        return _LeakyRelu(n, width, units, dtype, spec.leaky_slope)
    if name == "elu":
        return _Elu(n, width, units, dtype, spec.elu_alpha)
    if name == "sigmoid":
        return _Sigmoid(n, width, units, dtype)
    if name == "tanh":
        return _Tanh(n, width, units, dtype)
    if name == "maxout":
        return _Maxout(n, width, units, dtype, spec.pieces)
    raise ValueError(f"no fast kernel for activation {name!r}")


class _HiddenBuffers:
    """Preallocated arrays of one hidden layer for one batch size N (width F)."""

    def __init__(self, spec: NetworkSpec, n: int, width: int, units: int, dtype: np.dtype) -> None:
        self.h = np.empty((n, width), dtype=dtype)        # affine output; reused as dh
        self.centered = np.empty((n, width), dtype=dtype)  # h - batch mean
        self.work = np.empty((n, width), dtype=dtype)     # scratch
        self.z = np.empty((n, width), dtype=dtype)        # batch-norm output
        self.stats: np.ndarray | None = None              # (2, width) rows: batch mean, batch var;
                                                          # a view into _BatchBuffers.stats_flat
        self.inv_std = np.empty(width, dtype=dtype)
        self.scale = np.empty(width, dtype=dtype)         # gamma * inv_std
        self.scale_over_n = np.empty(width, dtype=dtype)
        self.c_gamma = np.empty(width, dtype=dtype)
        self.c_beta = np.empty(width, dtype=dtype)
        self.kernel = _make_kernel(spec, n, width, units, dtype)
        self.input: np.ndarray | None = None              # the layer input of the last forward


class _BatchBuffers:
    """Everything one training step needs for batch size N."""

    def __init__(self, spec: NetworkSpec, n: int, dtype: np.dtype, can_split: bool) -> None:
        self.n = n
        # per hidden layer: split its two large products (forward, weight gradient) in two
        self.split = [
            can_split and 2.0 * n * fan_in * width >= SPLIT_MIN_FLOPS
            for fan_in, width in zip(spec.fan_ins, spec.affine_widths)
        ]
        self.inv_n = dtype.type(1.0 / n)
        self.mean_row = np.full(n, 1.0 / n, dtype=dtype)  # mean_row @ A = column means of A
        self.ones_row = np.ones(n, dtype=dtype)            # ones_row @ A = column sums of A
        self.hidden = [
            _HiddenBuffers(spec, n, width, units, dtype)
            for width, units in zip(spec.affine_widths, spec.hidden_sizes)
        ]
        # the batch statistics of every layer in one array laid out like the engine's
        # running statistics, so one update per step moves them all
        self.stats_flat = np.empty(2 * sum(spec.affine_widths), dtype=dtype)
        self.stats_scaled = np.empty_like(self.stats_flat)
        offset = 0
        for hb in self.hidden:
            width = hb.h.shape[1]
            hb.stats = self.stats_flat[offset:offset + 2 * width].reshape(2, width)
            offset += 2 * width
        # da of hidden layer l is written by the matmul of layer l + 1
        self.d_hidden_out = [np.empty((n, units), dtype=dtype) for units in spec.hidden_sizes]
        c = spec.num_classes
        self.scores = np.empty((n, c), dtype=dtype)
        self.row_max = np.empty((n, 1), dtype=dtype)
        self.exp = np.empty((n, c), dtype=dtype)
        self.sum_exp = np.empty((n, 1), dtype=dtype)
        self.log_sum_exp = np.empty(n, dtype=dtype)
        self.dscores = np.empty((n, c), dtype=dtype)
        self.ones_c = np.ones(c, dtype=dtype)
        self.output_input: np.ndarray | None = None  # input of the output affine, last forward


class FastNetwork:
    """The training engine: the network of :func:`loss_and_grads`, with flat parameter
    and gradient buffers and preallocated per-batch-size workspaces.

    ``param_flat`` holds every trainable parameter (weights first), ``params`` maps the
    names of :meth:`NetworkSpec.param_shapes` to views into it; ``grad_flat`` /
    ``grads`` likewise.  :meth:`optimizer` builds an optimizer over the flat arrays: one
    update for the whole network, whatever its depth.

    One step::

        loss = net.loss_and_grads(X_batch, onehot_batch, weight_decay)
        optimizer.step()

    The running batch-norm statistics are the engine's own buffers, updated in place by
    :meth:`loss_and_grads` (this object owns them; nobody else holds them); they are
    read out as copies by :meth:`bn_state`.  The pure reference keeps its contract of
    returning new state.

    threads: how many threads the engine may use.  With 2 or more, the large matrix
    products of a layer (>= SPLIT_MIN_FLOPS, typically the first layer on image data)
    are split in two row blocks computed concurrently (NumPy releases the GIL in BLAS),
    which beats OpenBLAS's own threading at these sizes (see :func:`blas_threads_for`).
    Results then differ from a single-threaded run in the last bits, and are still
    identical run to run.  Call :meth:`close` (or use ``with``) to stop the helper thread.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        params: dict[str, np.ndarray],
        bn_state: dict[str, np.ndarray],
        threads: int = 1,
    ) -> None:
        self.spec = spec
        shapes = spec.param_shapes()
        self.dtype = np.dtype(params["W1"].dtype)
        sizes = [math.prod(shape) for shape in shapes.values()]
        total = sum(sizes)
        self.param_flat = np.empty(total, dtype=self.dtype)
        self.grad_flat = np.zeros(total, dtype=self.dtype)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        offset = 0
        for (name, shape), size in zip(shapes.items(), sizes):
            self.params[name] = self.param_flat[offset:offset + size].reshape(shape)
            self.grads[name] = self.grad_flat[offset:offset + size].reshape(shape)
            self.params[name][...] = params[name]
            offset += size
        n_weights = sum(math.prod(shapes[name]) for name in weight_names(spec))
        self.weight_flat = self.param_flat[:n_weights]       # weights come first
        self.weight_grad_flat = self.grad_flat[:n_weights]
        self._decay_scratch = np.empty(n_weights, dtype=self.dtype)
        # running statistics, owned by this engine: one flat array (updated in one go)
        # laid out like _BatchBuffers.stats_flat, with a (mean, var) view per hidden layer
        bn_widths = spec.affine_widths if spec.batch_norm else ()
        self._running_flat = np.empty(2 * sum(bn_widths), dtype=self.dtype)
        self._running: list[np.ndarray] = []
        offset = 0
        for layer, width in enumerate(bn_widths, start=1):
            running = self._running_flat[offset:offset + 2 * width].reshape(2, width)
            running[0], running[1] = bn_state[f"mean{layer}"], bn_state[f"var{layer}"]
            self._running.append(running)
            offset += 2 * width
        self._buffers: dict[int, _BatchBuffers] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fastnet-gemm") if threads >= 2 else None
        # per-layer views, in layer order, so the hot loop does no string formatting
        depth = spec.depth
        self._W = [self.params[f"W{layer}"] for layer in range(1, depth + 2)]
        self._dW = [self.grads[f"W{layer}"] for layer in range(1, depth + 2)]
        if spec.batch_norm:
            self._gamma = [self.params[f"gamma{layer}"] for layer in range(1, depth + 1)]
            self._beta = [self.params[f"beta{layer}"] for layer in range(1, depth + 1)]
            self._dgamma = [self.grads[f"gamma{layer}"] for layer in range(1, depth + 1)]
            self._dbeta = [self.grads[f"beta{layer}"] for layer in range(1, depth + 1)]
        self._b = [self.params[f"b{layer}"] for layer in range(1, depth + 2) if f"b{layer}" in self.params]
        self._db = [self.grads[f"b{layer}"] for layer in range(1, depth + 2) if f"b{layer}" in self.grads]
        self._momentum = self.dtype.type(spec.bn_momentum)
        self._one_minus_momentum = self.dtype.type(1.0 - spec.bn_momentum)
        self._eps = self.dtype.type(spec.bn_eps)

    def optimizer(self, name: str, learning_rate: float, momentum: float = 0.9) -> "FlatOptimizer":
        """The named optimizer (a key of OPTIMIZERS) over all trainable parameters."""
        return FlatOptimizer(name, self.param_flat, self.grad_flat, learning_rate, momentum, self._pool)

    def close(self) -> None:
        """Stop the helper thread, if any (the engine still works, single-threaded)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            self._buffers.clear()

    def __enter__(self) -> "FastNetwork":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- state out ------------------------------------------------------------------

    def params_copy(self) -> dict[str, np.ndarray]:
        """A copy of the trainable parameters, name -> array."""
        return {name: value.copy() for name, value in self.params.items()}

    def bn_state(self) -> dict[str, np.ndarray]:
        """A copy of the running batch-norm statistics, {"mean{l}", "var{l}"} -> (width_l,)."""
        state: dict[str, np.ndarray] = {}
        for layer, running in enumerate(self._running, start=1):
            state[f"mean{layer}"] = running[0].copy()
            state[f"var{layer}"] = running[1].copy()
        return state

    def buffers(self, n: int) -> _BatchBuffers:
        """The workspace for batch size n (created on first use)."""
        buffers = self._buffers.get(n)
        if buffers is None:
            buffers = self._buffers[n] = _BatchBuffers(self.spec, n, self.dtype, self._pool is not None)
        return buffers

    # -- one step -------------------------------------------------------------------

    def loss_and_grads(self, X: np.ndarray, onehot: np.ndarray, weight_decay: float = 0.0) -> float:
        """Forward and backward pass on one minibatch in training mode.

        Fills ``grad_flat`` with the gradient of the loss and updates the running
        batch-norm statistics.  Same numbers as :func:`loss_and_grads`, up to rounding.

        X: (N, D) of the engine's dtype, onehot: (N, C) 0/1 targets of the same dtype
        -> loss: float (mean cross-entropy + L2 penalty).
        """
        buf = self.buffers(X.shape[0])
        a = self._forward_hidden(X, buf)
        loss = self._output_loss(a, onehot, buf)
        self._backward(buf)
        if weight_decay:
            decay = self.dtype.type(weight_decay)
            loss += 0.5 * float(weight_decay) * float(np.dot(self.weight_flat, self.weight_flat))
            np.multiply(self.weight_flat, decay, out=self._decay_scratch)
            self.weight_grad_flat += self._decay_scratch
        return loss

    def _matmul_split(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = a @ b, the lower half of the rows on the helper thread."""
        half = a.shape[0] // 2
        # In the caller's context: its np.errstate (a context variable) holds on the helper too.
        lower = self._pool.submit(contextvars.copy_context().run, np.matmul, a[half:], b, out=out[half:])
        np.matmul(a[:half], b, out=out[:half])
        lower.result()
        return out

    def probe(self, X: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Training-mode forward pass (batch statistics) that leaves the running
        statistics alone, for diagnostics.

        X: (N, D) -> per hidden layer (activation input (N, width_l), activation output
        (N, H_l)), as :func:`hidden_outputs` returns; the arrays are workspace buffers,
        valid until the next pass with the same batch size.
        """
        buf = self.buffers(X.shape[0])
        self._forward_hidden(X, buf, update_running=False)
        return [(hb.z if self.spec.batch_norm else hb.h, hb.kernel.out) for hb in buf.hidden]

    def _forward_hidden(self, X: np.ndarray, buf: _BatchBuffers, update_running: bool = True) -> np.ndarray:
        batch_norm = self.spec.batch_norm
        a = X
        for layer, hb in enumerate(buf.hidden):
            hb.input = a
            if buf.split[layer]:
                h = self._matmul_split(a, self._W[layer], hb.h)
            else:
                h = np.matmul(a, self._W[layer], out=hb.h)
            if batch_norm:
                # z = (h - mean) * (gamma / sqrt(var + eps)) + beta.  Row-vector
                # broadcasts cost ~3x a same-shape op at these sizes, so the centred h
                # is kept (not x_hat) and scaled once; column means are mean_row @ A.
                stats, centered, inv_std, scale = hb.stats, hb.centered, hb.inv_std, hb.scale
                mean, var = stats[0], stats[1]
                np.matmul(buf.mean_row, h, out=mean)
                np.subtract(h, mean, out=centered)
                np.multiply(centered, centered, out=hb.work)
                np.matmul(buf.mean_row, hb.work, out=var)
                np.add(var, self._eps, out=inv_std)
                np.sqrt(inv_std, out=inv_std)
                np.reciprocal(inv_std, out=inv_std)
                np.multiply(self._gamma[layer], inv_std, out=scale)
                z = np.multiply(centered, scale, out=hb.z)
                z += self._beta[layer]
            else:
                h += self._b[layer]
                z = h
            a = hb.kernel.forward(z)
        if batch_norm and update_running:
            # running = momentum * running + (1 - momentum) * batch, every layer at once
            self._running_flat *= self._momentum
            np.multiply(buf.stats_flat, self._one_minus_momentum, out=buf.stats_scaled)
            self._running_flat += buf.stats_scaled
        buf.output_input = a
        return a

    def _output_loss(self, a: np.ndarray, onehot: np.ndarray, buf: _BatchBuffers) -> float:
        """Scores, loss and dscores (written into buf.dscores)."""
        out = self.spec.depth
        scores = np.matmul(a, self._W[out], out=buf.scores)
        scores += self._b[-1]
        np.maximum.reduce(scores, axis=1, out=buf.row_max[:, 0])
        scores -= buf.row_max                                    # shifted scores
        np.exp(scores, out=buf.exp)
        np.matmul(buf.exp, buf.ones_c, out=buf.sum_exp[:, 0])
        np.log(buf.sum_exp[:, 0], out=buf.log_sum_exp)
        # mean over rows of log sum exp(shifted) - shifted[y]
        loss = float(np.dot(buf.mean_row, buf.log_sum_exp)) - float(np.vdot(scores, onehot)) / buf.n
        dscores = np.divide(buf.exp, buf.sum_exp, out=buf.dscores)
        dscores -= onehot
        dscores *= buf.inv_n
        return loss

    def _backward(self, buf: _BatchBuffers) -> None:
        depth = self.spec.depth
        batch_norm = self.spec.batch_norm
        dout = buf.dscores
        np.matmul(buf.output_input.T, dout, out=self._dW[depth])
        np.matmul(buf.ones_row, dout, out=self._db[-1])
        if depth:
            np.matmul(dout, self._W[depth].T, out=buf.d_hidden_out[-1])
        for layer in range(depth - 1, -1, -1):
            hb = buf.hidden[layer]
            dz = hb.kernel.backward(buf.d_hidden_out[layer])
            if batch_norm:
                dgamma, dbeta = self._dgamma[layer], self._dbeta[layer]
                # batchnorm_backward with x_hat = centered * inv_std, scale = gamma * inv_std:
                #   dgamma = sum(dz * centered) * inv_std
                #   dh = scale * dz - centered * (scale * inv_std * dgamma / N) - scale * dbeta / N
                np.matmul(buf.ones_row, dz, out=dbeta)
                np.multiply(dz, hb.centered, out=hb.work)
                np.matmul(buf.ones_row, hb.work, out=dgamma)
                dgamma *= hb.inv_std
                np.multiply(hb.scale, buf.inv_n, out=hb.scale_over_n)
                np.multiply(dbeta, hb.scale_over_n, out=hb.c_beta)
                np.multiply(dgamma, hb.scale_over_n, out=hb.c_gamma)
                hb.c_gamma *= hb.inv_std
                dh = np.multiply(dz, hb.scale, out=hb.h)
                np.multiply(hb.centered, hb.c_gamma, out=hb.work)
                dh -= hb.work
                dh -= hb.c_beta
            else:
                dh = dz
                np.matmul(buf.ones_row, dh, out=self._db[layer])
            if buf.split[layer]:
                self._matmul_split(hb.input.T, dh, self._dW[layer])
            else:
                np.matmul(hb.input.T, dh, out=self._dW[layer])
            if layer > 0:
                np.matmul(dh, self._W[layer].T, out=buf.d_hidden_out[layer - 1])


# ----------------------------------------------------------------------------------------
# BLAS threads
# ----------------------------------------------------------------------------------------

# Largest per-step matrix product (2 * N * fan_in * width flops) still run single-threaded.
# On a 2-core machine OpenBLAS's own threading made products of this size 1.3-4x *slower*
# than one thread (e.g. 200 x 3072 x 100: 2.2 ms on one thread, 5-8 ms on two, worse when
# the other core is busy), and our networks' products are all far below it.
SINGLE_THREAD_MAX_FLOPS = 2e9

_OPENBLAS_THREAD_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


@functools.cache
def _openblas_thread_controls() -> tuple[tuple[Callable[[], int], Callable[[int], None]], ...]:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process.

    Found through the process's memory map (Linux); empty elsewhere or when NumPy uses
    another BLAS, in which case thread limiting is simply skipped.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return ()
    controls = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _OPENBLAS_THREAD_SYMBOLS:
            getter, setter = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if getter is not None and setter is not None:
                getter.restype, getter.argtypes = ctypes.c_int, []
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                controls.append((getter, setter))
                break
    return tuple(controls)


@contextmanager
def blas_threads_for(spec: NetworkSpec, batch_size: int) -> Iterator[int]:
    """Take over BLAS threading for training this network.

    If the network's per-step matrix products are small (see SINGLE_THREAD_MAX_FLOPS),
    OpenBLAS is set to one thread for the block and the thread count it had -- whatever
    the user allowed it through OPENBLAS_NUM_THREADS / OMP_NUM_THREADS or a thread
    limiter -- is yielded: the number of threads the engine may use itself
    (``FastNetwork(threads=...)``).  Otherwise BLAS is left alone and 1 is yielded.
    The count is restored on exit.

    OpenBLAS's thread count is process-wide: other threads calling BLAS meanwhile are
    limited too.  Without a controllable OpenBLAS this does nothing and yields 1.
    """
    widths = (*spec.affine_widths, spec.num_classes)
    largest = max(2.0 * batch_size * fan_in * width for fan_in, width in zip(spec.fan_ins, widths))
    controls = _openblas_thread_controls() if largest <= SINGLE_THREAD_MAX_FLOPS else ()
    previous = [getter() for getter, _ in controls]
    for _, setter in controls:
        setter(1)
    try:
        yield max(1, min(previous)) if previous else 1
    finally:
        for (_, setter), count in zip(controls, previous):
            setter(count)


class FlatOptimizer:
    """An optimizer over a flat parameter array and its flat gradient array.

    ``step()`` applies one update from the current gradients.  With a helper thread and
    at least SPLIT_MIN_PARAMS parameters, the two halves of the arrays are updated by
    two independent optimizers concurrently; since every update rule is elementwise the
    result is exactly that of one optimizer over the whole array.
    """

    def __init__(
        self,
        name: str,
        params: np.ndarray,
        grads: np.ndarray,
        learning_rate: float,
        momentum: float = 0.9,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        if pool is not None and params.size >= SPLIT_MIN_PARAMS:
            half = params.size // 2
            pieces = [(params[:half], grads[:half]), (params[half:], grads[half:])]
        else:
            pieces, pool = [(params, grads)], None
        self._pool = pool
        self.parts: list[tuple[Optimizer, list[np.ndarray]]] = [
            (make_optimizer(name, [p], learning_rate, momentum), [g]) for p, g in pieces
        ]

    @property
    def learning_rate(self) -> float:
        """The current learning rate."""
        return self.parts[0][0].learning_rate

    def decay_learning_rate(self, factor: float) -> None:
        """Multiply the learning rate by ``factor``."""
        for optimizer, _ in self.parts:
            optimizer.decay_learning_rate(factor)

    def step(self) -> None:
        """Update the parameters in place from the gradients."""
        if self._pool is None:
            optimizer, grads = self.parts[0]
            optimizer.step(grads)
            return
        (first, first_grads), (second, second_grads) = self.parts
        pending = self._pool.submit(contextvars.copy_context().run, second.step, second_grads)
        first.step(first_grads)
        pending.result()

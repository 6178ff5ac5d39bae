"""The fully-connected classifier and its engine: one forward/backward path for
training, evaluation and prediction.

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

:class:`FastNetwork` is the engine: a training step (:meth:`FastNetwork.loss_and_grads`),
the training-mode loss and hidden outputs of a probe batch, and evaluation-mode scores
(:meth:`FastNetwork.scores`), which ``workers.train`` uses for everything.  On small
networks a step's time is the per-call overhead of NumPy, not arithmetic, so it keeps
all parameters in one flat array (one optimizer update for the whole net), all
gradients in another, and preallocated buffers per batch size written with ``out=`` --
no allocation and no dict lookup per step.  Each activation's in-place kernel comes from
its registry entry (:mod:`workers.nn.activations`).

The readable version of the same network, the pure layer functions chained, lives in
:mod:`workers.nn.reference`; it is the oracle the tests check this engine against,
gradient for gradient, and is not used in production.
"""

from __future__ import annotations

import contextvars
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.nn.activations import activation_kwargs, config_default, get_activation
from workers.nn.initializers import SMALL_STD, sample_weights
from workers.nn.layers import BN_EPS, BN_MOMENTUM, BNState
from workers.nn.optimizers import DEFAULT_MOMENTUM, Optimizer, make_optimizer

__all__ = [
    "NetworkSpec",
    "init_network",
    "weight_names",
    "FastNetwork",
    "FlatOptimizer",
]

# Rows per chunk when scoring many examples: bounds the evaluation workspaces the engine
# keeps (about SCORE_CHUNK / batch_size training workspaces' worth).  512 rows scored the
# CIFAR-sized and digits shapes as fast as 4096 or faster (buffers that stay in cache).
SCORE_CHUNK = 512

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
    activation: a key of ACTIVATIONS; leaky_slope / elu_alpha / maxout_k: the config
    fields its parameters come from (the registry's ``config_fields``; the defaults and
    the rules are the registry's too).  activation_kwargs: the chosen activation's
    keyword parameters, derived.
    batch_norm: batch normalization between each hidden affine and its activation.
    """

    input_dim: int
    hidden_sizes: tuple[int, ...]
    num_classes: int
    activation: str = "relu"
    leaky_slope: float = config_default("leaky_slope")
    elu_alpha: float = config_default("elu_alpha")
    maxout_k: int = config_default("maxout_k")
    batch_norm: bool = True
    bn_momentum: float = BN_MOMENTUM
    bn_eps: float = BN_EPS
    activation_kwargs: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        # ValueError naming the allowed activations, or the field and its rule; vars()
        # holds every field, of which the registry reads its config fields
        kwargs = activation_kwargs(self.activation, vars(self))
        object.__setattr__(self, "activation_kwargs", kwargs)

    @property
    def depth(self) -> int:
        """Number of hidden layers L."""
        return len(self.hidden_sizes)

    @property
    def pieces(self) -> int:
        """Affine columns per hidden unit: k for maxout, else 1."""
        return get_activation(self.activation).columns_per_unit(self.activation_kwargs)

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
    init_std: float = SMALL_STD,
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
# Fast engine
# ----------------------------------------------------------------------------------------

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
        self.kernel = get_activation(spec.activation).make_kernel(n, width, units, dtype, spec.activation_kwargs)
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
    """The engine: the network of :mod:`workers.nn.reference`, with flat parameter and
    gradient buffers and preallocated per-batch-size workspaces.  Training, evaluation
    and prediction all run on it.

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
    returning new state.  :meth:`loss` and :meth:`probe` (training mode) and
    :meth:`scores` (evaluation mode) leave them alone.

    threads: how many threads the engine may use.  With 2 or more, the large matrix
    products of a layer (>= SPLIT_MIN_FLOPS, typically the first layer on image data)
    are split in two row blocks computed concurrently (NumPy releases the GIL in BLAS),
    which beats OpenBLAS's own threading at these sizes (see
    :func:`workers.nn.blas.blas_threads_for`).
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
        self._eval_buffers: dict[int, list[tuple[np.ndarray, Any]]] = {}
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

    def optimizer(self, name: str, learning_rate: float, momentum: float = DEFAULT_MOMENTUM) -> "FlatOptimizer":
        """The named optimizer (a key of OPTIMIZERS) over all trainable parameters."""
        return FlatOptimizer(name, self.param_flat, self.grad_flat, learning_rate, momentum, self._pool)

    def close(self) -> None:
        """Stop the helper thread, if any (the engine still works, single-threaded)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            self._buffers.clear()
        self._eval_buffers.clear()

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
        batch-norm statistics.  Same numbers as the reference's ``loss_and_grads``, up
        to rounding.

        X: (N, D) of the engine's dtype, onehot: (N, C) 0/1 targets of the same dtype
        -> loss: float (mean cross-entropy + L2 penalty).
        """
        buf = self.buffers(X.shape[0])
        a = self._forward_hidden(X, buf)
        loss = self._output_loss(a, onehot, buf) + self._penalty(weight_decay)
        self._backward(buf)
        if weight_decay:
            np.multiply(self.weight_flat, self.dtype.type(weight_decay), out=self._decay_scratch)
            self.weight_grad_flat += self._decay_scratch
        return loss

    def loss(self, X: np.ndarray, onehot: np.ndarray, weight_decay: float = 0.0) -> float:
        """The loss of :meth:`loss_and_grads` (training mode: batch statistics) without
        a backward pass; the running statistics and ``grad_flat`` are left alone.

        X: (N, D), onehot: (N, C) of the engine's dtype -> loss: float.
        """
        buf = self.buffers(X.shape[0])
        a = self._forward_hidden(X, buf, update_running=False)
        return self._output_loss(a, onehot, buf) + self._penalty(weight_decay)

    def _penalty(self, weight_decay: float) -> float:
        """The L2 term 0.5 * weight_decay * sum of squared weights, as a float."""
        if not weight_decay:
            return 0.0
        return 0.5 * float(weight_decay) * float(np.dot(self.weight_flat, self.weight_flat))

    # -- evaluation -----------------------------------------------------------------

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Class scores in evaluation mode (batch norm with its running statistics).

        Evaluation-mode batch norm is a fixed per-column affine map, so it is folded into
        the preceding weights first: W' = W * s, b' = beta - mean * s with
        s = gamma / sqrt(var + eps).  X is scored in chunks of SCORE_CHUNK rows, each
        through a workspace kept per chunk size (training scores the same validation set
        every epoch; making the buffers anew cost more than the arithmetic on digits).

        X: (N, D) -> scores: (N, C) of the engine's dtype.
        """
        layers = self._folded_layers()
        X = np.asarray(X, dtype=self.dtype)
        scores = np.empty((X.shape[0], self.spec.num_classes), dtype=self.dtype)
        W_out, b_out = layers[-1]
        for start in range(0, X.shape[0], SCORE_CHUNK):
            a = X[start:start + SCORE_CHUNK]
            rows = a.shape[0]
            for (W, b), (h, kernel) in zip(layers, self._eval_workspace(rows)):
                np.matmul(a, W, out=h)
                h += b
                a = kernel.forward(h)
            out = scores[start:start + rows]
            np.matmul(a, W_out, out=out)
            out += b_out
        return scores

    def _folded_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W, b) of every affine layer with evaluation-mode batch norm folded in."""
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        for layer in range(self.spec.depth):
            W = self._W[layer]
            if self.spec.batch_norm:
                mean, var = self._running[layer]
                scale = self._gamma[layer] / np.sqrt(var + self._eps)
                layers.append((W * scale, self._beta[layer] - mean * scale))
            else:
                layers.append((W, self._b[layer]))
        layers.append((self._W[-1], self._b[-1]))
        return layers

    def _eval_workspace(self, rows: int) -> list[tuple[np.ndarray, Any]]:
        """Per hidden layer, the affine output buffer and the activation kernel for
        ``rows`` rows (created on first use)."""
        workspace = self._eval_buffers.get(rows)
        if workspace is None:
            activation = get_activation(self.spec.activation)
            kwargs = self.spec.activation_kwargs
            workspace = self._eval_buffers[rows] = [
                (np.empty((rows, width), dtype=self.dtype),
                 activation.make_kernel(rows, width, units, self.dtype, kwargs))
                for width, units in zip(self.spec.affine_widths, self.spec.hidden_sizes)
            ]
        return workspace

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
        (N, H_l)), as the reference's ``hidden_outputs`` returns; the arrays are workspace buffers,
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
        momentum: float = DEFAULT_MOMENTUM,
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

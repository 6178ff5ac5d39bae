"""Affine and batch-normalization layers as pure forward/backward pairs.

The contract (cs231n assignment 2)::

    out, cache = layer_forward(x, ...)
    dx, dparam, ... = layer_backward(dout, cache)

These functions never mutate their inputs.  Chained in :mod:`workers.nn.reference` they
are the readable reference of the network and what the numerical gradient checks test;
the engine in :mod:`workers.nn.model` is verified against that chain.

Batch normalization differs from cs231n on one point: its running statistics are
**returned** as a new :class:`BNState` instead of being updated in place, and they are
kept apart from the trainable gamma and beta, so an optimizer walking the trainable
parameters can never touch them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BNState",
    "affine_forward",
    "affine_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "BN_MOMENTUM",
    "BN_EPS",
]

# running = BN_MOMENTUM * running + (1 - BN_MOMENTUM) * batch statistic (cs231n's convention;
# PyTorch's momentum=0.1 is the same rule written the other way round).
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


def affine_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
    """out = x W + b.

    x: (N, D), W: (D, M), b: (M,) or None (no bias, e.g. before batch norm, which
    subtracts any bias again) -> out: (N, M), cache: (x, W, has_bias).
    """
    out = x @ W
    if b is not None:
        out += b
    return out, (x, W, b is not None)


def affine_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """dout: (N, M), cache from affine_forward -> dx: (N, D), dW: (D, M), db: (M,) or None."""
    x, W, has_bias = cache
    dx = dout @ W.T
    dW = x.T @ dout
    db = dout.sum(axis=0) if has_bias else None
    return dx, dW, db


class BNState(NamedTuple):
    """Running statistics of one batch-norm layer (not trainable).

    mean: (D,), var: (D,) -- the biased batch variance, averaged.
    """

    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def initial(cls, width: int, dtype: np.dtype | str = np.float32) -> "BNState":
        """The state before any training: mean 0, var 1 (identity normalization)."""
        return cls(np.zeros(width, dtype=dtype), np.ones(width, dtype=dtype))


def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    state: BNState,
    *,
    training: bool,
    momentum: float = BN_MOMENTUM,
    eps: float = BN_EPS,
) -> tuple[np.ndarray, Any, BNState]:
    """Batch normalization: out = gamma * (x - mean) / sqrt(var + eps) + beta.

    Training: mean and var are the per-feature statistics of this batch, and the
    returned state is the running average updated with them.  Evaluation: the running
    statistics of ``state`` are used and the returned state is ``state`` itself.
    ``state`` is never modified.

    x: (N, D), gamma: (D,), beta: (D,), state: BNState of (D,) arrays
    -> out: (N, D), cache, new_state: BNState.
    """
    if training:
        mean = x.mean(axis=0)
        centered = x - mean
        var = (centered * centered).mean(axis=0)
        new_state = BNState(
            momentum * state.mean + (1.0 - momentum) * mean,
            momentum * state.var + (1.0 - momentum) * var,
        )
    else:
        mean, var = state.mean, state.var
        centered = x - mean
        new_state = state
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = centered * inv_std
    out = x_hat * gamma + beta
    return out, (x_hat, gamma, inv_std, training), new_state


def batchnorm_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of batch normalization, in the simplified closed form.

    Training mode (batch statistics), with x_hat the normalized input:
        dbeta  = sum_i dout_i
        dgamma = sum_i dout_i * x_hat_i
        dx     = gamma / sqrt(var + eps) * (dout - dbeta / N - x_hat * dgamma / N)
    Evaluation mode (fixed running statistics): dx = gamma / sqrt(var + eps) * dout.

    dout: (N, D), cache from batchnorm_forward -> dx: (N, D), dgamma: (D,), dbeta: (D,).
    """
    x_hat, gamma, inv_std, training = cache
    n = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * x_hat).sum(axis=0)
    scale = gamma * inv_std
    if not training:
        return dout * scale, dgamma, dbeta
    dx = scale * (dout - dbeta / n - x_hat * (dgamma / n))
    return dx, dgamma, dbeta

"""The reference network: the pure forward/backward pairs of :mod:`workers.nn.layers` and
:mod:`workers.nn.activations` chained, layer by layer, in plain readable NumPy.

This is the oracle, not the engine.  Its gradients are checked against central
differences in float64 (tests), and the training engine,
:class:`workers.nn.model.FastNetwork`, is checked against it: forward scores in both
modes, every gradient, the batch-norm running statistics.  Only tests and
gradient-check tooling import this module; training, evaluation and prediction run on
the engine.

The network is the one :mod:`workers.nn.model` describes (``NetworkSpec``, parameters
``W{l}``, ``b{l}`` / ``gamma{l}``, ``beta{l}``, running state ``mean{l}``, ``var{l}``).
Every function here is pure: ``params`` and ``bn_state`` are never modified, a
training-mode pass returns the new running state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.nn.activations import get_activation
from workers.nn.layers import (
    BNState,
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
)
from workers.nn.losses import l2_penalty, softmax_cross_entropy
from workers.nn.model import NetworkSpec, weight_names

__all__ = ["forward", "backward", "loss_and_grads", "hidden_outputs"]


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

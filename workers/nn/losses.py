"""Softmax cross-entropy and L2 weight decay, each returning the loss and its gradient.

Numerical care, after scikit-learn:

* the softmax subtracts the row maximum before exponentiating, so exp never overflows;
* the cross-entropy of scores is computed through log-sum-exp
  (log p_y = s_y - max - log sum exp(s - max)), which takes no log of a probability and
  so needs no clipping;
* where a log of a probability *is* taken (:func:`cross_entropy_from_probs`), the
  probability is clipped to [eps, 1 - eps] with the dtype's own epsilon, so float32
  stays float32 and a zero probability gives a large finite loss, not inf.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "softmax",
    "softmax_cross_entropy",
    "cross_entropy_from_probs",
    "l2_penalty",
]


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax.  scores: (N, C) -> probabilities: (N, C), rows summing to 1."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    exp /= exp.sum(axis=1, keepdims=True)
    return exp


def softmax_cross_entropy(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient.

    scores: (N, C) float, y: (N,) int labels in [0, C)
    -> loss: float, dscores: (N, C) of the dtype of scores, = (softmax - onehot) / N.
    """
    n = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    log_prob_correct = shifted[rows, y] - np.log(sum_exp[:, 0])
    loss = -float(log_prob_correct.mean())
    dscores = exp / sum_exp
    dscores[rows, y] -= 1.0
    dscores /= n
    return loss, dscores


def cross_entropy_from_probs(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of predicted probabilities, log clipped at the dtype's eps.

    probs: (N, C) float rows of probabilities, y: (N,) int labels -> loss: float.
    """
    eps = np.finfo(probs.dtype).eps
    p_correct = np.clip(probs[np.arange(probs.shape[0]), y], eps, 1.0 - eps)
    return -float(np.log(p_correct).mean())


def l2_penalty(weights: Sequence[np.ndarray], weight_decay: float) -> tuple[float, list[np.ndarray]]:
    """L2 weight decay: loss = weight_decay / 2 * sum of squared weights, grad = weight_decay * W.

    Applied to weight matrices only, never to biases or batch-norm gamma/beta.  The 1/2
    makes the gradient weight_decay * W, the convention of PyTorch's ``weight_decay``.

    weights: sequence of arrays -> (loss: float, [dW of the shape of each W]).
    """
    weight_decay = float(weight_decay)
    loss = 0.5 * weight_decay * sum(float(np.vdot(w, w)) for w in weights)
    return loss, [w * weight_decay for w in weights]

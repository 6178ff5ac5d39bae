"""First-order update rules: SGD, momentum, Nesterov momentum, Adam; and their registry.

An optimizer is built over a sequence of parameter arrays and updates them **in place**
on every :meth:`Optimizer.step` (``p -= ...``): the training loop keeps views into these
arrays, and in-place updates avoid allocating a new array per parameter per step, which
dominates the step time of small networks.  Each optimizer preallocates one scratch
buffer per parameter for the same reason; a step makes no allocation.

The training engine hands the optimizer a single flat array holding all trainable
parameters (weights, biases, batch-norm gamma and beta -- never the batch-norm running
statistics), so one step is a handful of NumPy calls whatever the depth of the network.

Learning-rate decay is the caller's: it multiplies :attr:`Optimizer.learning_rate` by the
decay factor after each epoch (:meth:`Optimizer.decay_learning_rate`).

The update rules, for a parameter p with gradient g, learning rate lr:

* sgd:       p <- p - lr * g
* momentum:  v <- mu * v - lr * g;  p <- p + v                      (v starts at 0)
* nesterov:  v <- mu * v - lr * g;  p <- p + mu * v - lr * g
             (the cs231n form ``p += -mu * v_prev + (1 + mu) * v`` rewritten without
             keeping v_prev: both equal p + mu^2 v_prev - (1 + mu) lr g)
* adam:      m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t <- t + 1
             p <- p - lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t),
             v_hat = v / (1 - b2^t); computed as
             p <- p - lr_t * m / (sqrt(v) + eps_t) with lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),
             eps_t = eps sqrt(1 - b2^t), which is the same number with fewer array passes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "OPTIMIZERS",
    "DEFAULT_MOMENTUM",
    "Optimizer",
    "SGD",
    "Momentum",
    "Nesterov",
    "Adam",
    "optimizer_names",
    "make_optimizer",
]


# mu of the momentum and nesterov rules unless the config says otherwise (momentum).
DEFAULT_MOMENTUM = 0.9


class Optimizer:
    """Base class: holds the parameter arrays, one scratch buffer each, the learning rate.

    params: arrays updated in place by :meth:`step`; grads passed to :meth:`step` must
    have the same shapes and dtypes, in the same order.
    """

    name = "base"
    # The training-config fields this rule reads besides the learning rate (the search
    # samples such a knob only with the rules that read it: workers/knobs.py).
    config_fields: tuple[str, ...] = ()

    def __init__(self, params: Sequence[np.ndarray], learning_rate: float, **_unused: float) -> None:
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        self.params = list(params)
        self.learning_rate = float(learning_rate)
        self._scratch = [np.empty_like(p) for p in self.params]

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """Update every parameter in place from its gradient."""
        raise NotImplementedError

    def decay_learning_rate(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` (called after each epoch)."""
        self.learning_rate *= float(factor)


class SGD(Optimizer):
    """Vanilla SGD: p <- p - lr * g."""

    name = "sgd"

    def step(self, grads: Sequence[np.ndarray]) -> None:
        lr = self.learning_rate
        for p, g, scaled in zip(self.params, grads, self._scratch):
            np.multiply(g, lr, out=scaled)
            p -= scaled


class Momentum(Optimizer):
    """SGD with momentum mu (default DEFAULT_MOMENTUM): v <- mu v - lr g; p <- p + v."""

    name = "momentum"
    config_fields = ("momentum",)

    def __init__(self, params: Sequence[np.ndarray], learning_rate: float, momentum: float = DEFAULT_MOMENTUM,
                 **_unused: float) -> None:
        super().__init__(params, learning_rate)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.velocity = [np.zeros_like(p) for p in self.params]

    def step(self, grads: Sequence[np.ndarray]) -> None:
        lr, mu = self.learning_rate, self.momentum
        for p, g, v, scaled in zip(self.params, grads, self.velocity, self._scratch):
            v *= mu
            np.multiply(g, lr, out=scaled)
            v -= scaled
            p += v


class Nesterov(Momentum):
    """Nesterov momentum: v <- mu v - lr g; p <- p + mu v - lr g (see module docstring)."""

    name = "nesterov"

    def step(self, grads: Sequence[np.ndarray]) -> None:
        lr, mu = self.learning_rate, self.momentum
        for p, g, v, scratch in zip(self.params, grads, self.velocity, self._scratch):
            v *= mu
            np.multiply(g, lr, out=scratch)
            v -= scratch
            p -= scratch
            np.multiply(v, mu, out=scratch)
            p += scratch


class Adam(Optimizer):
    """Adam with bias correction; beta1 0.9, beta2 0.999, eps 1e-8 by default.

    The config's ``momentum`` is not used by Adam (beta1 plays that role).
    """

    name = "adam"

    def __init__(self, params: Sequence[np.ndarray], learning_rate: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, **_unused: float) -> None:
        super().__init__(params, learning_rate)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.t = 0
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        correction2 = math.sqrt(1.0 - b2**self.t)
        lr_t = self.learning_rate * correction2 / (1.0 - b1**self.t)
        eps_t = self.eps * correction2
        for p, g, m, v, scratch in zip(self.params, grads, self.m, self.v, self._scratch):
            # m <- m + (1 - b1) (g - m)
            np.subtract(g, m, out=scratch)
            scratch *= 1.0 - b1
            m += scratch
            # v <- v + (1 - b2) (g^2 - v)
            np.multiply(g, g, out=scratch)
            scratch -= v
            scratch *= 1.0 - b2
            v += scratch
            # p <- p - lr_t m / (sqrt(v) + eps_t)
            np.sqrt(v, out=scratch)
            scratch += eps_t
            np.divide(m, scratch, out=scratch)
            scratch *= lr_t
            p -= scratch


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
}


def optimizer_names() -> tuple[str, ...]:
    """The allowed optimizer names, in registry order."""
    return tuple(OPTIMIZERS)


def make_optimizer(name: str, params: Sequence[np.ndarray], learning_rate: float,
                   momentum: float = DEFAULT_MOMENTUM) -> Optimizer:
    """Build the named optimizer over ``params``; ValueError naming the allowed values
    for an unknown name."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}") from None
    return cls(params, learning_rate=learning_rate, momentum=momentum)

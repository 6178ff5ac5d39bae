"""Activation functions as pure forward/backward pairs, and the registry of them.

Every activation has the same contract as the layers in :mod:`workers.nn.layers`::

    out, cache = forward(x, **params)     # never mutates x
    dx = backward(dout, cache)            # dx has the shape and dtype of x

``ACTIVATIONS`` is the single list of activation names: the search space and the
config validation are built from it, so they can never disagree with the code.

Each entry also says which *family* the activation belongs to, which decides the
health diagnostic recorded for its layer during training:

* ``"relu_like"`` (relu, leaky_relu, elu, maxout): a unit that is inactive for every
  example of a probe batch is counted as *dead*.  For relu, leaky_relu and elu
  "inactive" means a non-positive input (relu passes no gradient there; leaky_relu and
  elu pass only a small, shrinking one, so a unit stuck there is as good as dead).
  Maxout is the max of k affine pieces, and relu is the special case max(z, 0); the
  part of maxout that can die is therefore a *piece*: a piece that is never the
  maximum gets no gradient.  For maxout we count dead pieces out of the k * units.
* ``"saturating"`` (sigmoid, tanh): the fraction of outputs within 1% (of the output
  range) of a bound is the *saturation* fraction; there the gradient vanishes.

dtypes: every function keeps the dtype of its input (float32 in, float32 out); the
scalar parameters are Python floats, which NumPy never uses to upcast an array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "elu_forward",
    "elu_backward",
    "maxout_forward",
    "maxout_backward",
    "activation_names",
    "get_activation",
]

RELU_LIKE = "relu_like"
SATURATING = "saturating"

# An output closer than this fraction of the output range to a bound counts as saturated.
SATURATION_MARGIN = 0.01


def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, Any]:
    """Logistic sigmoid 1 / (1 + exp(-x)), computed as 0.5 * (1 + tanh(x / 2)).

    The tanh form never overflows (exp(-x) does for x < -88 in float32).

    x: (N, H) -> out: (N, H), cache: out.
    """
    out = np.tanh(x * 0.5)
    out += 1.0
    out *= 0.5
    return out, out


def sigmoid_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dout: (N, H), cache from sigmoid_forward -> dx: (N, H) = dout * s * (1 - s)."""
    out = cache
    return dout * out * (1.0 - out)


def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, Any]:
    """Hyperbolic tangent.  x: (N, H) -> out: (N, H), cache: out."""
    out = np.tanh(x)
    return out, out


def tanh_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dout: (N, H), cache from tanh_forward -> dx: (N, H) = dout * (1 - tanh^2)."""
    out = cache
    return dout * (1.0 - out * out)


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, Any]:
    """max(x, 0).  x: (N, H) -> out: (N, H), cache: x."""
    return np.maximum(x, 0.0), x


def relu_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dout: (N, H), cache from relu_forward -> dx: (N, H); zero where x <= 0."""
    x = cache
    return dout * (x > 0)


def leaky_relu_forward(x: np.ndarray, slope: float = 0.01) -> tuple[np.ndarray, Any]:
    """x for x > 0, slope * x otherwise.  x: (N, H) -> out: (N, H), cache: (x, slope)."""
    slope = float(slope)
    return np.where(x > 0, x, x * slope), (x, slope)


def leaky_relu_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dout: (N, H), cache from leaky_relu_forward -> dx: (N, H)."""
    x, slope = cache
    return np.where(x > 0, dout, dout * slope)


def elu_forward(x: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, Any]:
    """x for x > 0, alpha * (exp(x) - 1) otherwise.

    expm1 is taken of min(x, 0) so large positive inputs cannot overflow.

    x: (N, H) -> out: (N, H), cache: (x, out, alpha).
    """
    alpha = float(alpha)
    negative_part = np.expm1(np.minimum(x, 0.0)) * alpha
    out = np.where(x > 0, x, negative_part)
    return out, (x, out, alpha)


def elu_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dout: (N, H), cache from elu_forward -> dx: (N, H).

    For x <= 0 the derivative alpha * exp(x) equals out + alpha.
    """
    x, out, alpha = cache
    return np.where(x > 0, dout, dout * (out + alpha))


def maxout_forward(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, Any]:
    """Maximum over k affine pieces per unit.

    The affine layer before maxout produces k * H columns laid out piece by piece:
    columns [p*H, (p+1)*H) hold piece p of all H units.

    x: (N, k*H) -> out: (N, H), cache: (winning piece per entry (N, H), x.shape).
    """
    n, width = x.shape
    if width % k:
        raise ValueError(f"maxout with k={k} needs a multiple of {k} inputs, got {width}")
    pieces = x.reshape(n, k, width // k)
    winner = pieces.argmax(axis=1)
    out = np.take_along_axis(pieces, winner[:, None, :], axis=1)[:, 0, :]
    return out, (winner, x.shape)


def maxout_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dout: (N, H), cache from maxout_forward -> dx: (N, k*H); only the winning piece
    of each unit receives the gradient."""
    winner, x_shape = cache
    n, width = x_shape
    k = width // dout.shape[1]
    dx = np.zeros((n, k, dout.shape[1]), dtype=dout.dtype)
    np.put_along_axis(dx, winner[:, None, :], dout[:, None, :], axis=1)
    return dx.reshape(n, width)


# --- inactivity masks: which entries count towards a dead unit (relu-like family) ---

def _nonpositive_input(x: np.ndarray, out: np.ndarray, **_params: Any) -> np.ndarray:
    return x <= 0


def _losing_pieces(x: np.ndarray, out: np.ndarray, k: int = 2) -> np.ndarray:
    """(N, k*H) mask of the maxout pieces that are not the maximum of their unit."""
    n, width = x.shape
    pieces = x.reshape(n, k, width // k)
    winner = pieces.argmax(axis=1)
    lost = np.ones(pieces.shape, dtype=bool)
    np.put_along_axis(lost, winner[:, None, :], False, axis=1)
    return lost.reshape(n, width)


@dataclass(frozen=True)
class Activation:
    """One registry entry.

    forward / backward: the pure pair above.
    family: ``"relu_like"`` or ``"saturating"`` (see the module docstring).
    params: keyword parameters of ``forward`` and their defaults.
    bounds: output bounds (low, high) for the saturating family, else None.
    inactive: for the relu-like family, ``inactive(x, out, **params) -> bool mask`` of
        the entries that count as inactive (shape of x); a unit (or maxout piece) whose
        column is inactive for every example is dead.  None for the saturating family.
    """

    name: str
    forward: Callable[..., tuple[np.ndarray, Any]]
    backward: Callable[[np.ndarray, Any], np.ndarray]
    family: str
    params: dict[str, Any] = field(default_factory=dict)
    bounds: tuple[float, float] | None = None
    inactive: Callable[..., np.ndarray] | None = None

    def saturated_fraction(self, out: np.ndarray) -> float | None:
        """Fraction of entries of ``out`` within 1% of the output range of a bound,
        or None outside the saturating family."""
        if self.bounds is None:
            return None
        low, high = self.bounds
        margin = SATURATION_MARGIN * (high - low)
        saturated = np.count_nonzero(out <= low + margin) + np.count_nonzero(out >= high - margin)
        return float(saturated / max(out.size, 1))

    def dead_fraction(self, x: np.ndarray, out: np.ndarray, **params: Any) -> float | None:
        """Fraction of units (maxout: pieces) inactive for every example, or None
        outside the relu-like family.  x: (N, width * units) input, out: (N, units)."""
        if self.inactive is None:
            return None
        mask = self.inactive(x, out, **params)
        if mask.shape[1] == 0:
            return 0.0
        return float(np.count_nonzero(mask.all(axis=0)) / mask.shape[1])


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", sigmoid_forward, sigmoid_backward, SATURATING, bounds=(0.0, 1.0)),
    "tanh": Activation("tanh", tanh_forward, tanh_backward, SATURATING, bounds=(-1.0, 1.0)),
    "relu": Activation("relu", relu_forward, relu_backward, RELU_LIKE, inactive=_nonpositive_input),
    "leaky_relu": Activation(
        "leaky_relu", leaky_relu_forward, leaky_relu_backward, RELU_LIKE,
        params={"slope": 0.01}, inactive=_nonpositive_input,
    ),
    "elu": Activation(
        "elu", elu_forward, elu_backward, RELU_LIKE,
        params={"alpha": 1.0}, inactive=_nonpositive_input,
    ),
    "maxout": Activation(
        "maxout", maxout_forward, maxout_backward, RELU_LIKE,
        params={"k": 2}, inactive=_losing_pieces,
    ),
}


def activation_names() -> tuple[str, ...]:
    """The allowed activation names, in registry order."""
    return tuple(ACTIVATIONS)


def get_activation(name: str) -> Activation:
    """The registry entry for ``name``; ValueError naming the allowed values otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}"
        ) from None

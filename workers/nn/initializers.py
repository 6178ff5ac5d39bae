"""Weight initializers and their registry.

All three initializers draw zero-mean Gaussian weights; they differ only in the
standard deviation, so each registry entry is the *formula* for that std, and
:func:`sample_weights` draws ``std * standard_normal((fan_in, fan_out))``.

``fan_in`` is the number of inputs of the affine layer and ``fan_out`` the number of
columns it produces.  For maxout the affine layer produces k columns per unit, so
``fan_out`` is k * units (the number of columns actually drawn): Glorot's argument
balances the variance of the signal flowing backward through the columns that exist,
and every piece of a maxout unit is one such column.

Biases are not drawn here: they start at zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from workers.nn.activations import LEAKY_SLOPE

__all__ = [
    "INITIALIZERS",
    "SMALL_STD",
    "Initializer",
    "small_std",
    "xavier_std",
    "he_std",
    "initializer_names",
    "get_initializer",
    "sample_weights",
]


# The std of the "small" initializer unless the config says otherwise (init_std).
SMALL_STD = 0.01


def small_std(fan_in: int, fan_out: int, *, std: float = SMALL_STD, **_context: object) -> float:
    """Small random numbers: a fixed std (0.01 by default), whatever the layer shape.

    Fine for shallow nets; in deep nets without batch norm the activations shrink
    layer after layer (the cs231n lecture's "all activations become zero" plot).
    """
    return float(std)


def xavier_std(fan_in: int, fan_out: int, **_context: object) -> float:
    """Glorot/Xavier normal: std = sqrt(2 / (fan_in + fan_out)).

    This is the normal form of Glorot & Bengio (2010): their variance is
    Var(W) = 2 / (fan_in + fan_out), the compromise between keeping the forward
    variance (1 / fan_in) and the backward variance (1 / fan_out) constant.  Two other
    formulas circulate and differ from it on purpose or by mistake:

    * the lecture-summary formula ``2 / sqrt(n + m)`` leaves the 2 outside the square
      root: as a std it is sqrt(4 / (n + m)), sqrt(2) times Glorot's std (twice the
      variance) -- a slip for the variance 2 / (n + m);
    * cs231n's code ``randn(fan_in, fan_out) / sqrt(fan_in)`` is the forward-only
      ("LeCun") variant, Var = 1 / fan_in, which ignores the backward pass.

    We implement the paper's form because it is the one the name refers to (it is
    also what PyTorch's ``xavier_normal_`` and Keras' ``glorot_normal`` sample).
    """
    return math.sqrt(2.0 / (fan_in + fan_out))


def he_std(
    fan_in: int,
    fan_out: int,
    *,
    activation: str = "relu",
    leaky_slope: float = LEAKY_SLOPE,
    **_context: object,
) -> float:
    """He/Kaiming normal: std = sqrt(2 / fan_in), the gain sqrt(2) making up for the
    half of the signal a ReLU zeroes.

    With leaky ReLU of slope a the negative half keeps a^2 of its variance, so the
    gain becomes sqrt(2 / (1 + a^2)) and std = sqrt(2 / ((1 + a^2) * fan_in)).
    (numpy-ml wrote ``np.sqrt(2 / 1 + a**2)``, i.e. sqrt(2 + a^2): operator precedence;
    the statistics test on sampled weights catches that kind of slip.)  Every other
    activation (elu, maxout, and sigmoid/tanh if a search picks He for them) gets the
    plain ReLU gain.
    """
    gain_sq = 2.0
    if activation == "leaky_relu":
        gain_sq = 2.0 / (1.0 + float(leaky_slope) ** 2)
    return math.sqrt(gain_sq / fan_in)


@dataclass(frozen=True)
class Initializer:
    """One registry entry: ``std(fan_in, fan_out, *, activation, leaky_slope, std)``
    returns the standard deviation of the zero-mean Gaussian to draw from.
    ``config_fields``: the training-config fields only this initializer reads (the
    search samples such a knob only with it: workers/knobs.py)."""

    name: str
    std: Callable[..., float]
    description: str
    config_fields: tuple[str, ...] = ()


INITIALIZERS: dict[str, Initializer] = {
    "small": Initializer("small", small_std, f"N(0, std^2), std = init_std (default {SMALL_STD:g})",
                         config_fields=("init_std",)),
    "xavier": Initializer("xavier", xavier_std, "Glorot normal, std = sqrt(2 / (fan_in + fan_out))"),
    "he": Initializer("he", he_std, "He normal, std = sqrt(2 / fan_in) (leaky ReLU: / (1 + a^2))"),
}


def initializer_names() -> tuple[str, ...]:
    """The allowed initializer names, in registry order."""
    return tuple(INITIALIZERS)


def get_initializer(name: str) -> Initializer:
    """The registry entry for ``name``; ValueError naming the allowed values otherwise."""
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown initializer {name!r}; allowed: {', '.join(INITIALIZERS)}"
        ) from None


def sample_weights(
    name: str,
    fan_in: int,
    fan_out: int,
    rng: np.random.Generator,
    *,
    dtype: np.dtype | str = np.float32,
    activation: str = "relu",
    leaky_slope: float = LEAKY_SLOPE,
    std: float = SMALL_STD,
) -> np.ndarray:
    """Draw a weight matrix W: (fan_in, fan_out) of ``dtype`` with the named initializer.

    ``activation`` and ``leaky_slope`` matter for "he", ``std`` for "small".
    """
    scale = get_initializer(name).std(
        fan_in, fan_out, activation=activation, leaky_slope=leaky_slope, std=std
    )
    weights = rng.standard_normal((fan_in, fan_out), dtype=np.float64) * scale
    return weights.astype(dtype, copy=False)

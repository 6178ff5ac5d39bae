"""Activation functions as pure forward/backward pairs, and the registry of them.

Every activation has the same contract as the layers in :mod:`workers.nn.layers`::

    out, cache = forward(x, **params)     # never mutates x
    dx = backward(dout, cache)            # dx has the shape and dtype of x

``ACTIVATIONS`` is the single list of activation names: the search space and the
config validation are built from it, so they can never disagree with the code.  Each
entry carries everything about its activation:

* the pure pair above, the readable definition the gradient checks test;
* its fast **kernel**, the in-place version the training engine runs (an
  :class:`ActivationKernel` subclass, built per layer and batch size with preallocated
  buffers; tests check it against the pure pair);
* ``params``: the keyword parameters of the pair and the kernel, with their defaults
  (each default is written once, here);
* ``config_fields``: which training-config field (and NetworkSpec field) each parameter
  comes from, e.g. ``leaky_slope`` -> ``slope``; and ``checks``, the rule each value must
  obey (e.g. at least MAXOUT_MIN_PIECES pieces).

Adding an activation is adding one entry: the pure pair, a kernel, and its parameters.

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
    "ActivationKernel",
    "LEAKY_SLOPE",
    "ELU_ALPHA",
    "MAXOUT_PIECES",
    "MAXOUT_MIN_PIECES",
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
    "config_default",
    "activation_kwargs",
]

RELU_LIKE = "relu_like"
SATURATING = "saturating"

# An output closer than this fraction of the output range to a bound counts as saturated.
SATURATION_MARGIN = 0.01

# The defaults of the activations' parameters, each written once: the pure functions,
# the kernels, the registry (and through it NetworkSpec and the training config) use these.
LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
MAXOUT_PIECES = 2
# A maxout unit of one piece is an affine unit, not a maxout; the one home of that rule.
MAXOUT_MIN_PIECES = 2


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


def leaky_relu_forward(x: np.ndarray, slope: float = LEAKY_SLOPE) -> tuple[np.ndarray, Any]:
    """x for x > 0, slope * x otherwise.  x: (N, H) -> out: (N, H), cache: (x, slope)."""
    slope = float(slope)
    return np.where(x > 0, x, x * slope), (x, slope)


def leaky_relu_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dout: (N, H), cache from leaky_relu_forward -> dx: (N, H)."""
    x, slope = cache
    return np.where(x > 0, dout, dout * slope)


def elu_forward(x: np.ndarray, alpha: float = ELU_ALPHA) -> tuple[np.ndarray, Any]:
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


def maxout_forward(x: np.ndarray, k: int = MAXOUT_PIECES) -> tuple[np.ndarray, Any]:
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


# --- fast kernels: the same functions in place, for the training engine ---------------

class ActivationKernel:
    """In-place activation for one layer and one batch size.

    Built as ``kernel(n, width, units, dtype, **params)``: n rows, ``width`` input
    columns (units * pieces), ``units`` output columns.  forward(z) writes the output
    into self.out and returns it; backward(da) writes the gradient with respect to the
    z of the last forward into self.dz and returns it.  No allocation per call.  Each
    kernel computes what the pure pair of its registry entry computes (tests check it).
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


class ReluKernel(ActivationKernel):
    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, self.zero, out=self.out)

    def backward(self, da: np.ndarray) -> np.ndarray:
        # the 0/1 mask of z > 0 written straight into a float array: a bool mask's
        # mixed-dtype multiply is ~2.5x slower than a float one, np.sign ~2x slower
        np.greater(self.out, 0, out=self.dz)
        self.dz *= da
        return self.dz


class LeakyReluKernel(ActivationKernel):
    """Uses 0 <= slope < 1 (the registry's check): then out = max(z, slope * z) and the
    derivative is max([out > 0], slope) -- no masked copy, which is slow in NumPy."""

    def __init__(self, n: int, width: int, units: int, dtype: np.dtype, slope: float = LEAKY_SLOPE) -> None:
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


class EluKernel(ActivationKernel):
    def __init__(self, n: int, width: int, units: int, dtype: np.dtype, alpha: float = ELU_ALPHA) -> None:
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


class SigmoidKernel(ActivationKernel):
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


class TanhKernel(ActivationKernel):
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


class MaxoutKernel(ActivationKernel):
    """Max over the k pieces of (N, k*H) laid out piece by piece (see maxout_forward).

    The gradient of a unit goes to one piece, the first maximal one (argmax), as in
    maxout_backward and PyTorch's ``max(dim)``.  Finding the maximal pieces by equality
    with the maximum is cheap; only when some unit has two of them (an exact tie, which
    the count of maximal pieces reveals) is the slower argmax taken.
    """

    def __init__(self, n: int, width: int, units: int, dtype: np.dtype, k: int = MAXOUT_PIECES) -> None:
        super().__init__(n, width, units, dtype)
        self.k = k
        self.winner = np.empty((n, k, units), dtype=bool)
        self.z: np.ndarray | None = None

    def forward(self, z: np.ndarray) -> np.ndarray:
        n = z.shape[0]
        self.z = z.reshape(n, self.k, -1)
        return np.maximum.reduce(self.z, axis=1, out=self.out)

    def backward(self, da: np.ndarray) -> np.ndarray:
        n = da.shape[0]
        np.equal(self.z, self.out[:, None, :], out=self.winner)
        if np.count_nonzero(self.winner) != self.out.size:  # a tie: keep the first piece
            first = self.z.argmax(axis=1)
            np.equal(first[:, None, :], np.arange(self.k)[None, :, None], out=self.winner)
        np.multiply(self.winner, da[:, None, :], out=self.dz.reshape(n, self.k, -1))
        return self.dz


# --- inactivity masks: which entries count towards a dead unit (relu-like family) ---

def _nonpositive_input(x: np.ndarray, out: np.ndarray, **_params: Any) -> np.ndarray:
    return x <= 0


def _losing_pieces(x: np.ndarray, out: np.ndarray, k: int = MAXOUT_PIECES) -> np.ndarray:
    """(N, k*H) mask of the maxout pieces that are not the maximum of their unit."""
    n, width = x.shape
    pieces = x.reshape(n, k, width // k)
    winner = pieces.argmax(axis=1)
    lost = np.ones(pieces.shape, dtype=bool)
    np.put_along_axis(lost, winner[:, None, :], False, axis=1)
    return lost.reshape(n, width)


# --- parameter ranges: the one statement of what each kernel parameter accepts ------------

@dataclass(frozen=True)
class ParamRange:
    """The values a kernel parameter accepts: ``low`` / ``high`` (None: unbounded), each
    excluded when ``low_open`` / ``high_open``. ``workers.knobs`` builds the training
    config's bounds for these parameters from here."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def words(self) -> str:
        """The range in words: ``> 0``, ``in [0, 1)``, ``>= 2``."""
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f"in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {lo:g}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {hi:g}"
        return "any number"


# the kernel computes max(z, slope * z), which is leaky ReLU only for 0 <= slope < 1
LEAKY_SLOPE_RANGE = ParamRange(0.0, 1.0, high_open=True)
ELU_ALPHA_RANGE = ParamRange(0.0, low_open=True)  # alpha scales exp(z) - 1: a non-positive one flips or kills it
MAXOUT_PIECES_RANGE = ParamRange(MAXOUT_MIN_PIECES)


@dataclass(frozen=True)
class Activation:
    """One registry entry.

    forward / backward: the pure pair above.
    kernel: the fast in-place version, ``kernel(n, width, units, dtype, **params)``.
    family: ``"relu_like"`` or ``"saturating"`` (see the module docstring).
    params: keyword parameters of ``forward`` and ``kernel`` -> their defaults.
    config_fields: training-config (and NetworkSpec) field -> the keyword of ``params``
        it sets, e.g. ``{"leaky_slope": "slope"}``.
    ranges: keyword -> the :class:`ParamRange` its values obey.
    pieces: the keyword giving the affine columns per unit (maxout's k), or None (1).
    bounds: output bounds (low, high) for the saturating family, else None.
    inactive: for the relu-like family, ``inactive(x, out, **params) -> bool mask`` of
        the entries that count as inactive (shape of x); a unit (or maxout piece) whose
        column is inactive for every example is dead.  None for the saturating family.
    """

    name: str
    forward: Callable[..., tuple[np.ndarray, Any]]
    backward: Callable[[np.ndarray, Any], np.ndarray]
    kernel: Callable[..., ActivationKernel]
    family: str
    params: dict[str, Any] = field(default_factory=dict)
    config_fields: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, ParamRange] = field(default_factory=dict)
    pieces: str | None = None
    bounds: tuple[float, float] | None = None
    inactive: Callable[..., np.ndarray] | None = None

    def columns_per_unit(self, kwargs: dict[str, Any]) -> int:
        """Affine columns feeding one unit: k for maxout, else 1."""
        return int(kwargs[self.pieces]) if self.pieces else 1

    def make_kernel(self, n: int, width: int, units: int, dtype: np.dtype, kwargs: dict[str, Any]) -> ActivationKernel:
        """The fast kernel for one layer of ``units`` outputs and batch size n."""
        return self.kernel(n, width, units, np.dtype(dtype), **kwargs)

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
    "sigmoid": Activation(
        "sigmoid", sigmoid_forward, sigmoid_backward, SigmoidKernel, SATURATING, bounds=(0.0, 1.0),
    ),
    "tanh": Activation("tanh", tanh_forward, tanh_backward, TanhKernel, SATURATING, bounds=(-1.0, 1.0)),
    "relu": Activation("relu", relu_forward, relu_backward, ReluKernel, RELU_LIKE, inactive=_nonpositive_input),
    "leaky_relu": Activation(
        "leaky_relu", leaky_relu_forward, leaky_relu_backward, LeakyReluKernel, RELU_LIKE,
        params={"slope": LEAKY_SLOPE}, config_fields={"leaky_slope": "slope"},
        ranges={"slope": LEAKY_SLOPE_RANGE}, inactive=_nonpositive_input,
    ),
    "elu": Activation(
        "elu", elu_forward, elu_backward, EluKernel, RELU_LIKE,
        params={"alpha": ELU_ALPHA}, config_fields={"elu_alpha": "alpha"},
        ranges={"alpha": ELU_ALPHA_RANGE}, inactive=_nonpositive_input,
    ),
    "maxout": Activation(
        "maxout", maxout_forward, maxout_backward, MaxoutKernel, RELU_LIKE,
        params={"k": MAXOUT_PIECES}, config_fields={"maxout_k": "k"},
        ranges={"k": MAXOUT_PIECES_RANGE}, pieces="k", inactive=_losing_pieces,
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


def _field_owners() -> dict[str, tuple[Activation, str]]:
    """config field -> (its activation, the keyword it sets)."""
    return {
        field_name: (activation, keyword)
        for activation in ACTIVATIONS.values()
        for field_name, keyword in activation.config_fields.items()
    }


def config_default(field_name: str) -> Any:
    """The default of an activation's config field, e.g. ``config_default("leaky_slope")``
    -> 0.01; KeyError for a field no activation declares."""
    activation, keyword = _field_owners()[field_name]
    return activation.params[keyword]


def activation_kwargs(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The keyword parameters of activation ``name`` from config-field values.

    Every activation's fields present in ``fields`` are converted to the type of their
    default and checked, whichever activation is chosen (a config holds them all);
    ValueError ``"<field> must be <range>, got <value>"`` for the first bad one (the
    knob table's wording).  Fields absent from
    ``fields`` take their defaults.
    """
    chosen = get_activation(name)
    kwargs = dict(chosen.params)
    for field_name, (activation, keyword) in _field_owners().items():
        if field_name not in fields:
            continue
        value = type(activation.params[keyword])(fields[field_name])
        allowed = activation.ranges.get(keyword)
        if allowed is not None and not allowed.contains(value):
            raise ValueError(f"{field_name} must be {allowed.words()}, got {value:g}")
        if activation is chosen:
            kwargs[keyword] = value
    return kwargs


def config_range(field_name: str) -> ParamRange:
    """The range of an activation's config field, e.g. ``config_range("maxout_k")``."""
    activation, keyword = _field_owners()[field_name]
    return activation.ranges[keyword]

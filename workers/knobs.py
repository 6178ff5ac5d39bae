"""Every knob of a training run, declared once: type, default, bounds, aliases and help.

``KNOBS`` holds one :class:`Knob` per ``TrainConfig`` field. What is derived from it:

* ``TrainConfig`` takes its defaults from it and validates every field with
  :meth:`Knob.check` (workers/train.py);
* the search space's table of parameters is the searched knobs (``PARAMETERS`` in
  workers/space.py), so a range or a choice is checked against the same bounds;
* ``hpo train``'s options are built from it: name, aliases, type, default and help
  (hpo/cli.py);
* a parameter name typed anywhere (``--param``, a TOML space, ``hpo trials --where /
  --sort / --columns``) is read with :func:`canonical_name`, the one alias rule.

A bad value gives the same one line wherever it came from: ``momentum must be in
[0, 1), got 1.5``.

A knob that means something only with some values of another knob says so once, with its
declaration: ``applies_when`` is a :class:`Condition` (momentum with the momentum and
Nesterov rules, leaky_slope with Leaky ReLU, elu_alpha with ELU, maxout_k with Maxout,
init_std with the small initializer, pca_components with PCA, PCA whitening and ZCA). The
values are read from the registries (the entries whose ``config_fields`` name the knob, the
preprocessing kinds that take components), so a new optimizer that reads ``momentum`` gets
it searched with no edit here. A search samples such a knob only where its condition holds
(workers/space.py); a run where it does not hold trains with its default, unused.

Defaults that belong to a network kernel (the Leaky ReLU slope, the ELU alpha, the maxout
piece count, the momentum coefficient) are read from the ``workers.nn`` registries, not
written again here. This module imports only NumPy, the standard library and the
numerical core's registries, so the training loop may import it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from workers.data.preprocess import PREPROCESSING, TAKES_COMPONENTS
from workers.nn.activations import ACTIVATIONS, ParamRange, config_default, config_range
from workers.nn.initializers import INITIALIZERS, SMALL_STD
from workers.nn.optimizers import DEFAULT_MOMENTUM, OPTIMIZERS

__all__ = [
    "ALIASES",
    "CONDITION_KINDS",
    "DTYPES",
    "KNOBS",
    "Condition",
    "Knob",
    "KnobError",
    "as_int",
    "canonical_name",
    "fmt_number",
    "is_real",
    "parse_layers",
]

DTYPES = ("float32", "float64")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class KnobError(ValueError):
    """A value outside a knob's domain: one line naming the knob, what it takes and what it got."""


def fmt_number(x: float | int) -> str:
    """A short number for messages and tables: 1e-06, 0.5, 10, 256."""
    return f"{x:g}"


def is_real(x: Any) -> bool:
    """A real number (int or float, NumPy's too), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def as_int(x: Any) -> int | None:
    """x as an int if it is an integer or an integral float, else None (bools excluded)."""
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)) and math.isfinite(x) and float(x).is_integer():
        return int(x)
    return None


def int_text(text: str) -> int | None:
    """``"64"`` or ``"-3"`` as an int; None for anything else (``"64.0"``, ``"1e3"``)."""
    text = text.strip()
    if not text or not (text.isdigit() or (text[0] in "+-" and text[1:].isdigit())):
        return None
    return int(text)


def parse_layers(name: str, v: Any) -> tuple[int, ...]:
    """``"100-100"`` (also ``"100,100"``) -> (100, 100); KnobError unless
    every width is an integer >= 1. In a ``--param`` list a comma separates choices, so
    widths are joined by '-' there."""
    if not isinstance(v, str):
        raise KnobError(f"{name} must be widths joined by '-' such as '100-100', got {v!r}")
    widths = [int_text(p) for p in re.split(r"[-,]", v)]
    if any(w is None or w < 1 for w in widths):
        raise KnobError(f"{name} {v!r}: each layer width must be an integer >= 1 (e.g. '100-100')")
    return tuple(widths)


# The kinds of knob a condition may name: a switch between code paths (a registry name, or
# true/false), whose every value can be listed.
CONDITION_KINDS = ("name", "bool")


@dataclass(frozen=True)
class Condition:
    """Where a knob means something: each named knob (a *parent*, a choice of names or
    true/false) takes one of the listed values, e.g. ``optimizer`` in (momentum, nesterov).

    ``requires`` is ((parent, values), ...), parents in the order given. A parent a run does
    not set (not searched, or itself not applicable) has its default, as the training does.
    """

    requires: tuple[tuple[str, tuple[Any, ...]], ...]

    @classmethod
    def of(cls, mapping: Mapping[str, Any], owner: str | None = None) -> Condition:
        """A condition from ``{parent: value or [values]}`` as a user writes it (aliases
        allowed); KnobError naming what is wrong (an unknown knob or value, a numeric parent,
        ``owner`` conditioned on itself)."""
        if not isinstance(mapping, Mapping) or not mapping:
            raise KnobError("a condition names at least one knob and its values, e.g. {optimizer = [\"momentum\"]}")
        requires: dict[str, tuple[Any, ...]] = {}
        for raw, given in mapping.items():
            parent = canonical_name(raw)
            if parent is None or not KNOBS[parent].searched:
                close = difflib.get_close_matches(str(raw), [n for n, k in KNOBS.items() if k.searched], n=1)
                raise KnobError(f"a condition names unknown knob {raw!r}" + (f"; did you mean {close[0]}?" if close else ""))
            knob = KNOBS[parent]
            if knob.kind not in CONDITION_KINDS:
                names = ", ".join(n for n, k in KNOBS.items() if k.kind in CONDITION_KINDS and k.searched)
                raise KnobError(f"a condition names a choice of names or true/false ({names}), not {parent}")
            if parent == owner:
                raise KnobError(f"{parent} cannot depend on itself")
            if parent in requires:
                raise KnobError(f"a condition names {parent} twice")
            values = given if isinstance(given, (list, tuple)) else [given]
            if not values:
                raise KnobError(f"a condition on {parent} lists no value")
            checked = tuple(dict.fromkeys(knob.check(v) for v in values))  # repeats dropped, order kept
            requires[parent] = checked
        return cls(tuple(requires.items()))

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(parent for parent, _ in self.requires)

    def allowed(self, parent: str) -> tuple[Any, ...] | None:
        """The values of ``parent`` this condition allows; None if it does not name it."""
        return dict(self.requires).get(parent)

    def holds(self, params: Mapping[str, Any]) -> bool:
        """Whether the knob applies to a run with these values (missing parents: defaults)."""
        return all(_value_of(params, parent) in values for parent, values in self.requires)

    def both(self, other: Condition) -> Condition | None:
        """Both conditions at once (the values of a parent both name, intersected); None when
        no run can meet both."""
        merged = dict(self.requires)
        for parent, values in other.requires:
            if parent in merged:
                merged[parent] = tuple(v for v in merged[parent] if v in values)
                if not merged[parent]:
                    return None
            else:
                merged[parent] = values
        return Condition(tuple(merged.items()))

    def to_dict(self) -> dict[str, list[Any]]:
        """``{parent: [values]}``, JSON-ready; :meth:`of` reads it back."""
        return {parent: list(values) for parent, values in self.requires}

    def words(self) -> str:
        """``optimizer momentum or nesterov``; several parents joined by "and"."""
        def one(values: tuple[Any, ...]) -> str:
            texts = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
            return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} or {texts[-1]}"

        return " and ".join(f"{parent} {one(values)}" for parent, values in self.requires)

    def __str__(self) -> str:
        return self.words()


def _value_of(params: Mapping[str, Any], name: str) -> Any:
    """The value of knob ``name`` in a run: its value in ``params``, else its default."""
    value = params.get(name, KNOBS[name].default)
    return value.item() if isinstance(value, np.generic) else value


def _only_with(parent: str, names: Any) -> Condition:
    """The condition of a knob that only the registry entries ``names`` of ``parent`` read."""
    names = tuple(names)
    assert names, f"no {parent} reads this knob"  # a registry edit that leaves it unused
    return Condition(((parent, names),))


def _reading(registry: Mapping[str, Any], field_name: str) -> list[str]:
    """The entries of ``registry`` whose ``config_fields`` name ``field_name``, in its order."""
    return [name for name, entry in registry.items() if field_name in getattr(entry, "config_fields", ())]


@dataclass(frozen=True)
class Knob:
    """One ``TrainConfig`` field: what it accepts, its default and its help line.

    ``kind`` is "float", "int" (numbers in a domain bounded by ``low`` / ``high``, each
    excluded when ``low_open`` / ``high_open``; None means unbounded), "bool", "name"
    (a key of ``registry``) or "layers" (hidden layer widths, written "100-100" as text).
    An "int" knob with a ``fraction`` domain also takes real numbers in that domain
    (pca_components: 20 directions, or 0.95 of the variance); ``for_value`` picks the
    domain that applies. A knob whose default is None also takes None. ``searched`` is
    False for the fields a campaign sets itself (epochs, seed). ``applies_when`` is the
    :class:`Condition` under which the knob means something (None: always).
    """

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    registry: Any = field(default=None, repr=False)
    fraction: Knob | None = None
    aliases: tuple[str, ...] = ()
    searched: bool = True
    applies_when: Condition | None = None

    # domains -------------------------------------------------------------------------
    def for_value(self, value: Any) -> Knob:
        """The domain for ``value`` (a value or a range with a ``low``): the fraction domain
        for a real number or a real range of a count-or-fraction knob, else this one."""
        if self.fraction is not None:
            probe = getattr(value, "low", value)
            if isinstance(probe, (float, np.floating)):
                return self.fraction
        return self

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def allowed(self) -> list[str]:
        """The allowed values of a "name" knob."""
        return list(self.registry or ()) if self.kind == "name" else []

    def bounds(self) -> ParamRange:
        """The numeric domain as a range (the same type the nn registries state theirs in)."""
        return ParamRange(self.low, self.high, self.low_open, self.high_open)

    def domain(self) -> str:
        """The numeric domain in words: ``> 0``, ``in [0, 1)``, ``>= 1``."""
        return self.bounds().words()

    def in_domain(self, x: float) -> bool:
        return self.bounds().contains(x)

    # values --------------------------------------------------------------------------
    def check(self, value: Any) -> Any:
        """``value`` as a plain Python value of this knob (NumPy scalars unwrapped, an int
        for a real knob made a float, hidden layer widths a tuple); KnobError if invalid."""
        if value is None and self.default is None:
            return None
        if isinstance(value, np.generic):
            value = value.item()
        knob = self.for_value(value)
        return getattr(knob, f"_check_{knob.kind}")(value)

    def _check_float(self, v: Any) -> float:
        if not is_real(v):
            raise KnobError(f"{self.name} must be a real number, got {v!r}")
        return self._in_bounds(float(v))

    def _check_int(self, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise KnobError(f"{self.name} must be an integer, got {v!r}")
        return self._in_bounds(v)

    def _in_bounds(self, v: float | int) -> float | int:
        if not math.isfinite(v):
            raise KnobError(f"{self.name} must be a finite number, got {v!r}")
        if not self.in_domain(v):
            raise KnobError(f"{self.name} must be {self.domain()}, got {fmt_number(v)}")
        return v

    def _check_bool(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise KnobError(f"{self.name} must be true or false, got {v!r}")
        return v

    def _check_name(self, v: Any) -> str:
        allowed = self.allowed()
        if not isinstance(v, str) or v not in allowed:  # a list is no key (and unhashable)
            raise KnobError(f"unknown {self.name} {v!r}; allowed: {', '.join(allowed)}")
        return v

    def _check_layers(self, v: Any) -> tuple[int, ...]:
        try:
            widths = list(v) if not isinstance(v, (str, bytes)) else None  # text is parse()'s
        except TypeError:  # a number is not a list of widths
            widths = None
        if widths is None:
            raise KnobError(f"{self.name} must be a list of layer widths such as [100, 100], got {v!r}")
        if not all(isinstance(w, (int, np.integer)) and not isinstance(w, (bool, np.bool_)) and w >= 1 for w in widths):
            raise KnobError(f"{self.name} {widths}: each layer width must be an integer >= 1")
        return tuple(int(w) for w in widths)

    def parse(self, text: str) -> Any:
        """One value of this knob written as text (a ``--param`` choice, an ``hpo train``
        option): ``"0.95"`` a float, ``"64"`` an int, ``"on"`` True, ``"100-100"`` widths."""
        if self.kind == "float":
            return parse_float(self.name, text)
        if self.kind == "int":
            if self.fraction is not None and int_text(text) is None:
                return parse_float(self.name, text)  # "0.95": a fraction, not a count
            return parse_int(self.name, text)
        if self.kind == "bool":
            word = text.strip().lower()
            if word in _TRUE + _FALSE:
                return word in _TRUE
            raise KnobError(f"{self.name} must be true or false, got {text!r}")
        if self.kind == "layers":
            return "-".join(str(w) for w in parse_layers(self.name, text))
        return self._check_name(text)


def parse_float(name: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise KnobError(f"{text.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise KnobError(f"{text.strip()!r} is not a finite number")
    return v


def parse_int(name: str, text: str) -> int:
    iv = int_text(text)
    if iv is None:
        # Accept an integral number written with an exponent ("1e3"), nothing else.
        try:
            iv = as_int(float(text))
        except ValueError:
            iv = None
    if iv is None:
        raise KnobError(f"{name} must be an integer, got {text.strip()!r}")
    return iv


def _kernel_knob(name: str, kind: str, help: str) -> Knob:
    """A knob an activation kernel reads: its default, its range and the activations it
    applies with are the registry's."""
    allowed = config_range(name)
    return Knob(name, kind, config_default(name), help, low=allowed.low, high=allowed.high,
                low_open=allowed.low_open, high_open=allowed.high_open,
                applies_when=_only_with("activation", _reading(ACTIVATIONS, name)))


def _table(*knobs: Knob) -> Mapping[str, Knob]:
    return MappingProxyType({k.name: k for k in knobs})


# The search parameters first, in the order tables list them, then the two a campaign
# sets itself. The training defaults (40 epochs of Adam at lr 1e-2
# decaying 0.95 per epoch, weight decay 1e-3, batch 64) were chosen by validation
# accuracy on digits splits the accuracy benchmark does not test on (docs/benchmarks.md).
KNOBS: Mapping[str, Knob] = _table(
    Knob("learning_rate", "float", 1e-2, "Learning rate (step size).", low=0.0, low_open=True, aliases=("lr",)),
    Knob("activation", "name", "relu", "Hidden-layer nonlinearity.", registry=ACTIVATIONS, aliases=("act",)),
    Knob("initializer", "name", "he", "Weight initialization.", registry=INITIALIZERS, aliases=("init",)),
    Knob("batch_norm", "bool", True, "Batch normalization after each hidden affine layer.", aliases=("bn",)),
    Knob("hidden_sizes", "layers", (100, 100), "Hidden layer widths.", aliases=("hidden",)),
    _kernel_knob("leaky_slope", "float", "Slope of Leaky ReLU for x < 0."),
    _kernel_knob("elu_alpha", "float", "ELU's saturation value for x -> -inf."),
    _kernel_knob("maxout_k", "int", "Pieces per Maxout unit."),
    Knob("init_std", "float", SMALL_STD, "Std of the 'small' initializer.", low=0.0, low_open=True,
         applies_when=_only_with("initializer", _reading(INITIALIZERS, "init_std"))),
    Knob("optimizer", "name", "adam", "Update rule.", registry=OPTIMIZERS, aliases=("opt",)),
    Knob("momentum", "float", DEFAULT_MOMENTUM,
         "Momentum of the momentum and nesterov rules (adam uses its own beta1).", low=0.0, high=1.0, high_open=True,
         applies_when=_only_with("optimizer", _reading(OPTIMIZERS, "momentum"))),
    Knob("lr_decay", "float", 0.95, "Learning rate multiplier after each epoch.", low=0.0, high=1.0, low_open=True),
    Knob("weight_decay", "float", 1e-3, "L2 penalty on weights.", low=0.0, aliases=("wd",)),
    Knob("batch_size", "int", 64, "Minibatch size.", low=1, aliases=("bs",)),
    Knob("preprocessing", "name", "standardize", "Input preprocessing, fitted on the training split.",
         registry=PREPROCESSING),
    Knob("pca_components", "int", None,
         "PCA / whitening: directions kept (an integer such as 20; 1 keeps one) or the fraction of "
         "variance kept (such as 0.95; 1.0 keeps it all).",
         low=1, fraction=Knob("pca_components", "float", None, "", low=0.0, high=1.0, low_open=True),
         applies_when=_only_with("preprocessing", (k for k in PREPROCESSING if k in TAKES_COMPONENTS))),
    Knob("dtype", "name", "float32", "Floating dtype of the network.", registry=DTYPES),
    Knob("epochs", "int", 40, "Passes over the training data.", low=1, searched=False),
    Knob("seed", "int", 0, "Seed of initialization and shuffling.", low=0, searched=False),
)

ALIASES: Mapping[str, str] = MappingProxyType({a: k.name for k in KNOBS.values() for a in k.aliases})


def canonical_name(name: Any) -> str | None:
    """The knob ``name`` stands for, itself or through its alias (``lr`` -> learning_rate);
    None when it names no knob. The one alias rule, for every place a user types a name."""
    if not isinstance(name, str):
        return None
    key = name.strip()
    key = ALIASES.get(key, key)
    return key if key in KNOBS else None

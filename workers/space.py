"""The knobs a trial can turn, and how an Optuna trial picks their values.

A ``SearchSpace`` is an ordered, immutable mapping from a ``TrainConfig`` field name to
a parameter spec:

``FloatRange(low, high, log=False)``
    a real number drawn from [low, high], uniformly or (``log=True``) log-uniformly;
``IntRange(low, high, log=False, step=1)``
    an integer from low, low + step, ..., high (a log-scaled range has step 1);
``Choice(choices)``
    one of a tuple of str / int / float / bool values. A one-element choice is a fixed
    value.

Following cs231n, the learning rate is searched log-uniformly (``10 ** uniform(-6, 1)``);
``default_space()`` searches it together with every activation and every weight
initializer the trainer implements, with and without batch normalization. The choices
are read from the registries (``ACTIVATIONS``, ``INITIALIZERS``, ``OPTIMIZERS``,
``PREPROCESSING``), so the space can never offer a name the trainer does not know.

A worker turns the whole space into Optuna distributions at once
(``space.to_distributions()``) and suggests each parameter that applies on a new trial, in
``space.sampling_order()`` (the first suggestion samples every unconditional parameter in
one relative-sampling call), then ``space.to_train_kwargs(trial.params)`` gives the
``TrainConfig`` keyword arguments. ``epochs`` and ``seed`` are not search parameters: each
stage of a campaign trains for a fixed number of epochs, and each trial's seed comes from
the stage seed.

Conditional parameters
----------------------
A parameter may apply only with some values of a choice parameter: each knob declares
where it means something (``Knob.applies_when`` in workers/knobs.py: ``momentum`` with the
momentum and nesterov optimizers, ``pca_components`` with pca, pca_whiten and zca, ...),
and a TOML space may state a condition for a parameter of its own (below). A trial samples
such a parameter only where its condition holds, so its ``params`` lack it elsewhere and it
trains with the knob's default, unused. ``space.condition(name)`` is its condition,
``space.applies(name, params)`` whether it holds. ``build_space`` refuses a parameter
named by the user whose condition can never hold (``momentum`` searched while
``optimizer`` stays adam).

Writing a space
---------------
On the command line, one ``name=spec`` shorthand per ``--param``::

    lr=log:1e-6..1e-1               log-uniform float range
    momentum=0.5..0.99              linear float range
    weight_decay=log:1e-6..1e-2
    batch_size=int:32..256          integer range (the prefix is optional for an
    batch_size=int:32..256:32         integer parameter); ``:32`` is a step
    batch_size=int-log:16..512      log-uniform integer range
    batch_size=32,64,128            a choice, values typed as the parameter (ints here)
    activation=relu,tanh            a choice of names from the registry
    batch_norm=true,false
    hidden_sizes=100-100,200        layer widths joined by '-', one network per choice
    optimizer=adam                  a single value: the parameter is fixed
    pca_components=20..60           directions kept; 0.9..0.99 (or 0.95, 1.0) is a
                                      fraction of the variance kept instead

Range prefixes: ``log``, ``linear`` (the default), ``int``, ``int-log``, ``int-linear``,
``float``, ``float-log``, ``float-linear``. A parameter's short aliases (``lr`` for
learning_rate, ...) are declared with its knob in workers/knobs.py; ``hpo train --help``
lists them. An integer range's high - low must be a multiple
of its step; ``true/false``, ``yes/no``, ``on/off`` and ``1/0`` all read as booleans.

In a TOML file, under ``[params]``; each value is a shorthand string, a plain value
(fixed), an array (a choice) or a table::

    [params]
    learning_rate = "log:1e-6..1e-1"     # the same shorthand as on the command line
    activation = ["relu", "tanh"]        # an array is a choice
    batch_norm = [true, false]
    hidden_sizes = ["100-100", [200]]    # "100-100" or an array of widths
    dtype = "float32"                    # a single value is fixed
    optimizer = ["sgd", "nesterov", "adam"]

    [params.weight_decay]
    low = 1e-6
    high = 1e-2
    log = true

    [params.batch_size]
    low = 32
    high = 256
    step = 32                            # an integer parameter gives an integer range

    [params.initializer]
    choices = ["xavier", "he"]

    [params.momentum]                    # sampled only with nesterov (its own condition
    low = 0.5                            # is momentum or nesterov)
    high = 0.99
    when = { optimizer = ["nesterov"] }

A table may also name its ``type`` ("float", "int" or "choice"); this is the form
``SearchSpace.to_dict()`` writes, so ``from_dict`` and the TOML reader share one parser.
``when`` maps choice parameters (names or true/false: activation, initializer, optimizer,
preprocessing, dtype, batch_norm) to the value or values the parameter applies with; every
one named must hold. It adds to the knob's own condition: ``momentum`` with ``when = {
batch_norm = false }`` is sampled with momentum or nesterov and without batch norm, and a
``when`` that leaves no case (``momentum`` with ``optimizer = "adam"``) is refused.

A stored space (``to_dict``) writes each parameter's whole condition under ``when``
(version 2); a space stored without conditions (version 1, as every space was before
conditions existed) reads back without any, so an old campaign resumes as it was planned.

``build_space(base, file, params)`` starts from ``base`` (or ``default_space()``),
overlays the file, then each ``--param`` in order: the later spec of a parameter wins.

Every invalid spec raises ``SpaceError`` (a ``ValueError``) with one line naming the
parameter, what is wrong and where it came from, before anything is written anywhere.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from workers.knobs import (
    ALIASES,
    KNOBS,
    Condition,
    Knob,
    KnobError,
    as_int,
    canonical_name,
    fmt_number,
    int_text,
    is_real,
    parse_float,
    parse_int,
    parse_layers,
)
from workers.nn.activations import ACTIVATIONS
from workers.nn.initializers import INITIALIZERS

__all__ = [
    "ALIASES",
    "ALWAYS_SEARCHED",
    "PARAMETERS",
    "Choice",
    "FloatRange",
    "IntRange",
    "ParamSpec",
    "SearchSpace",
    "SpaceError",
    "build_space",
    "default_space",
    "grid_values",
    "load_space_file",
    "parse_param",
    "parse_spec",
    "resolve_name",
]


class SpaceError(ValueError):
    """An invalid search space: the message is one line a user can act on."""


# ---------------------------------------------------------------------------
# parameter specs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatRange:
    """A real number from [low, high]; ``log=True`` samples log-uniformly (needs low > 0)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        for which in ("low", "high"):
            v = getattr(self, which)
            if not is_real(v) or not math.isfinite(v):
                raise SpaceError(f"{which} must be a finite number, got {v!r}")
            object.__setattr__(self, which, float(v))
        if not isinstance(self.log, bool):
            raise SpaceError(f"log must be true or false, got {self.log!r}")
        if not self.low < self.high:
            raise SpaceError(
                f"low {fmt_number(self.low)} must be below high {fmt_number(self.high)} "
                "(for a fixed value give a single value)"
            )
        if self.log and self.low <= 0:
            raise SpaceError(f"a log range must stay above 0, got low {fmt_number(self.low)}")

    def to_distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        return is_real(value) and self.low <= value <= self.high

    def describe(self) -> str:
        """``log[1e-06, 10]`` or ``[0.5, 0.99]``."""
        return f"{'log' if self.log else ''}[{fmt_number(self.low)}, {fmt_number(self.high)}]"

    def shorthand(self) -> str:
        """The exact ``--param`` shorthand: ``log:1e-06..10.0``."""
        return f"{'log' if self.log else 'linear'}:{self.low!r}..{self.high!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class IntRange:
    """An integer from low, low + step, ..., high; ``log=True`` needs low >= 1 and step 1."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        for which in ("low", "high", "step"):
            v = getattr(self, which)
            iv = as_int(v)
            if iv is None:
                raise SpaceError(f"{which} must be an integer, got {v!r}")
            object.__setattr__(self, which, iv)
        if not isinstance(self.log, bool):
            raise SpaceError(f"log must be true or false, got {self.log!r}")
        if not self.low < self.high:
            raise SpaceError(
                f"low {self.low} must be below high {self.high} (for a fixed value give a single value)"
            )
        if self.step < 1:
            raise SpaceError(f"step must be >= 1, got {self.step}")
        if self.log and self.low < 1:
            raise SpaceError(f"a log range must stay above 0, got low {self.low}")
        if self.log and self.step != 1:
            raise SpaceError(f"a log-scaled integer range cannot have a step (got step {self.step})")
        if (self.high - self.low) % self.step:
            raise SpaceError(
                f"high - low must be a multiple of the step: {self.low}..{self.high} step {self.step}"
            )

    def to_distribution(self) -> IntDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        iv = as_int(value)
        return iv is not None and self.low <= iv <= self.high and (iv - self.low) % self.step == 0

    def describe(self) -> str:
        """``int[32, 256]``, ``int[32, 256] step 32`` or ``int-log[16, 512]``."""
        text = f"int{'-log' if self.log else ''}[{self.low}, {self.high}]"
        return text + (f" step {self.step}" if self.step != 1 else "")

    def shorthand(self) -> str:
        """The exact ``--param`` shorthand: ``int:32..256:32`` or ``int-log:16..512``."""
        text = f"int{'-log' if self.log else ''}:{self.low}..{self.high}"
        return text + (f":{self.step}" if self.step != 1 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log, "step": self.step}

    def __str__(self) -> str:
        return self.describe()


ChoiceValue = Union[str, int, float, bool]


def _choice_text(v: ChoiceValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _fmt_choice(v: ChoiceValue) -> str:
    """A choice for tables: floats short but still floats (pca_components 1.0 is not 1)."""
    if isinstance(v, float):
        text = fmt_number(v)
        return text if any(c in text for c in ".en") else text + ".0"
    return _choice_text(v)


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (str / int / float / bool, no repeats); one element means fixed."""

    choices: tuple[ChoiceValue, ...]

    def __post_init__(self) -> None:
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Iterable):
            raise SpaceError(f"choices must be a list of values, got {self.choices!r}")
        values = []
        for v in self.choices:
            if isinstance(v, (np.generic,)):
                v = v.item()  # numpy scalars are not JSON-ready; store the Python value
            if not isinstance(v, (str, int, float, bool)):
                raise SpaceError(f"a choice must be a string, number or true/false, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise SpaceError(f"a choice must be a finite number, got {v!r}")
            if any(type(v) is type(w) and v == w for w in values):
                raise SpaceError(f"choice {_choice_text(v)} is given twice")
            values.append(v)
        if not values:
            raise SpaceError("the list of choices is empty")
        object.__setattr__(self, "choices", tuple(values))

    @property
    def is_fixed(self) -> bool:
        return len(self.choices) == 1

    def to_distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(self.choices)

    def contains(self, value: Any) -> bool:
        if isinstance(value, np.generic):
            value = value.item()
        # Compare like with like: True == 1 == 1.0 in Python, but pca_components 1 (one
        # direction) and 1.0 (all the variance) are different choices.
        return any(type(value) is type(c) and value == c for c in self.choices)

    def describe(self) -> str:
        """``{relu, tanh}``; a fixed value shows as ``{adam}``."""
        return "{" + ", ".join(_fmt_choice(c) for c in self.choices) + "}"

    def shorthand(self) -> str:
        """The exact ``--param`` shorthand: ``relu,tanh``."""
        return ",".join(_choice_text(c) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "choices": list(self.choices)}

    def __str__(self) -> str:
        return self.describe()


ParamSpec = Union[FloatRange, IntRange, Choice]


# ---------------------------------------------------------------------------
# the parameters: one entry per searchable TrainConfig field
# ---------------------------------------------------------------------------


# What a search parameter accepts is its knob (workers/knobs.py): kind, bounds, help.

# The searchable knobs, in the knob table's order.
PARAMETERS: Mapping[str, Knob] = MappingProxyType({n: k for n, k in KNOBS.items() if k.searched})

# TrainConfig fields set by the campaign, not searched, with the reason shown to users.
_NOT_SEARCHED = {
    "epochs": (
        "epochs is not a search parameter: every trial of a stage trains for that stage's "
        "fixed number of epochs; set it per stage with the campaign's epochs option "
        "(e.g. hpo search --epochs 1,5)"
    ),
    "seed": (
        "seed is not a search parameter: each trial's seed is derived from the stage seed "
        "and the trial number, so every trial can be reproduced"
    ),
}

ALWAYS_SEARCHED: tuple[str, ...] = ("learning_rate", "activation", "initializer", "batch_norm")


def resolve_name(name: str) -> str:
    """The canonical parameter name for ``name`` or an alias; SpaceError if unknown."""
    if not isinstance(name, str):
        raise SpaceError(f"a parameter name must be a string, got {name!r}")
    key = canonical_name(name) or name.strip()
    if key in PARAMETERS:
        return key
    if key in _NOT_SEARCHED:
        raise SpaceError(_NOT_SEARCHED[key])
    close = difflib.get_close_matches(key, list(PARAMETERS) + list(ALIASES), n=1)
    hint = f"did you mean {ALIASES.get(close[0], close[0])}? " if close else ""
    raise SpaceError(
        f"unknown parameter {name!r}; {hint}known: {', '.join(PARAMETERS)} "
        f"(aliases: {', '.join(f'{a}={n}' for a, n in ALIASES.items())})"
    )


@contextmanager
def _about(where: str, name: str | None = None) -> Iterator[None]:
    """Prefix any SpaceError raised inside with where it happened (keeping it one line),
    and with the canonical parameter ``name`` unless ``where`` or the message says it
    (``--param 'lr=log:0..1': learning_rate: a log range must stay above 0``)."""
    try:
        yield
    except SpaceError as e:
        message = str(e)
        if name and name not in message and name not in where:
            message = f"{name}: {message}"
        raise SpaceError(f"{where}: {message}") from None


def _normalized(name: str, spec: Any) -> ParamSpec:
    """``spec`` checked for parameter ``name``, with its choices typed as the parameter.

    Raises SpaceError for a spec of the wrong kind (a range for a choice parameter, a
    float range for an integer), a range outside the parameter's domain, or a choice
    that is not a valid value. Choices are coerced (1 -> 1.0 for a real parameter,
    32.0 -> 32 for an integer one) so equal spaces compare and store equal.
    """
    info = PARAMETERS[name]
    if not isinstance(spec, (FloatRange, IntRange, Choice)):
        raise SpaceError(f"{name}: expected FloatRange, IntRange or Choice, got {spec!r}")
    if isinstance(spec, Choice):
        return Choice(tuple(_typed_value(name, info, v) for v in spec.choices))
    if not info.numeric:
        raise SpaceError(f"{name} takes a list of choices (e.g. {_example(name)}), not a range")
    info = info.for_value(spec)
    if info.kind == "int" and isinstance(spec, FloatRange):
        raise SpaceError(
            f"{name} is an integer; use an integer range such as int:{fmt_number(spec.low)}..{fmt_number(spec.high)}"
        )
    if info.kind == "float" and isinstance(spec, IntRange):
        raise SpaceError(f"{name} is a real number; use a float range such as {spec.low}..{spec.high}")
    for which in ("low", "high"):
        v = getattr(spec, which)
        if not info.in_domain(v):
            raise SpaceError(f"{name} must be {info.domain()}, got {which} {fmt_number(v)}")
    return spec


def _example(name: str) -> str:
    """Two valid choices of ``name`` as shorthand, for messages."""
    info = PARAMETERS[name]
    if info.kind == "name":
        return ",".join(info.allowed()[:2])
    if info.kind == "bool":
        return "true,false"
    if info.kind == "layers":
        return "100-100,200"
    return "1,2"


def _check_value(name: str, v: Any) -> None:
    """Raise SpaceError unless ``v`` is a valid, correctly typed value of ``name`` (hidden
    layer widths written as text, "100-100"; everything else as the knob checks it)."""
    info = PARAMETERS[name]
    with _knob_errors():
        if info.kind == "layers":
            parse_layers(name, v)
        elif info.for_value(v).kind == "float" and isinstance(v, int):
            raise KnobError(f"{name} must be a real number, got {v!r}")  # a choice is typed before it is checked
        else:
            info.check(v)


def _parse_layers(name: str, v: Any) -> tuple[int, ...]:
    with _knob_errors():
        return parse_layers(name, v)


@contextmanager
def _knob_errors() -> Iterator[None]:
    """A knob's one-line error, raised as this module's SpaceError."""
    try:
        yield
    except KnobError as e:
        raise SpaceError(str(e)) from None


def _split_when(value: Any) -> tuple[Any, Any]:
    """(the spec, the ``when`` of a parameter table or None)."""
    if isinstance(value, Mapping) and "when" in value:
        return {k: v for k, v in value.items() if k != "when"}, value["when"]
    return value, None


def _parse_when(name: str, raw: Any) -> Condition:
    """The condition written ``when = {parent = values}`` for parameter ``name``."""
    with _knob_errors():
        return Condition.of(raw, owner=name)


def _checked_conditions(specs: Mapping[str, ParamSpec], conditions: Mapping[str, Condition]) -> dict[str, Condition]:
    checked: dict[str, Condition] = {}
    for raw_name, condition in conditions.items():
        name = resolve_name(raw_name)
        if name not in specs:
            raise SpaceError(f"a condition is given for {name}, which the space does not search")
        if not isinstance(condition, Condition):
            raise SpaceError(f"{name}: expected a Condition, got {condition!r}")
        if name in condition.parents:
            raise SpaceError(f"{name} cannot depend on itself")
        checked[name] = condition
    return checked


def _sampling_order(specs: Mapping[str, ParamSpec], conditions: Mapping[str, Condition]) -> tuple[str, ...]:
    """Each parameter after the searched parents its condition names (a trial knows their
    values before it decides), otherwise in the space's order; SpaceError for a loop."""
    order: list[str] = []
    pending = list(specs)
    while pending:
        ready = [
            n for n in pending
            if n not in conditions or all(p in order or p not in specs for p in conditions[n].parents)
        ]
        if not ready:
            raise SpaceError(f"the conditions of {', '.join(pending)} depend on each other in a loop")
        order += ready
        pending = [n for n in pending if n not in ready]
    return tuple(order)


def _plain_default(name: str) -> Any:
    return KNOBS[name].default


# ---------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------


class SearchSpace(Mapping[str, ParamSpec]):
    """An ordered, immutable mapping from parameter name to spec, with each parameter's
    condition (see "Conditional parameters" in the module docstring).

    Construction validates every (name, spec) pair: aliases are resolved to the
    canonical ``TrainConfig`` field name, unknown names, ``epochs`` and ``seed`` are rejected,
    numeric ranges must lie in the parameter's domain (e.g. learning_rate > 0,
    momentum in [0, 1)), and choices must be typed as the parameter (batch_size ints,
    batch_norm bools, activation names from ``ACTIVATIONS``). ``conditions`` maps a
    parameter to its :class:`~workers.knobs.Condition`; None gives each parameter its knob's
    own (``Knob.applies_when``), a mapping exactly those listed (``{}``: none at all, as a
    space stored before conditions existed). Errors are ``SpaceError``.
    """

    __slots__ = ("_specs", "_conditions", "_order")

    def __init__(
        self,
        specs: Mapping[str, ParamSpec] | Iterable[tuple[str, ParamSpec]] = (),
        conditions: Mapping[str, Condition] | None = None,
    ) -> None:
        items = specs.items() if isinstance(specs, Mapping) else specs
        validated: dict[str, ParamSpec] = {}
        for raw_name, spec in items:
            name = resolve_name(raw_name)
            if name in validated:
                raise SpaceError(f"{name} is given twice (as {raw_name!r})")
            validated[name] = _normalized(name, spec)
        if conditions is None:
            conditions = {n: PARAMETERS[n].applies_when for n in validated if PARAMETERS[n].applies_when is not None}
        self._specs: Mapping[str, ParamSpec] = MappingProxyType(validated)
        self._conditions: Mapping[str, Condition] = MappingProxyType(_checked_conditions(validated, conditions))
        self._order: tuple[str, ...] = _sampling_order(validated, self._conditions)

    # Mapping protocol -------------------------------------------------------------
    def __getitem__(self, name: str) -> ParamSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __eq__(self, other: object) -> bool:
        # Two spaces are equal when their specs and their conditions are; a plain mapping of
        # specs compares by the specs alone, as Mapping does.
        if isinstance(other, SearchSpace):
            return dict(self._specs) == dict(other._specs) and dict(self._conditions) == dict(other._conditions)
        return Mapping.__eq__(self, other)

    def __hash__(self) -> int:
        # Mapping equality ignores order, so the hash must too.
        return hash((frozenset(self._specs.items()), frozenset(self._conditions.items())))

    def __repr__(self) -> str:
        if not self._conditions:
            return f"SearchSpace({dict(self._specs)!r})"
        return f"SearchSpace({dict(self._specs)!r}, conditions={dict(self._conditions)!r})"

    def __str__(self) -> str:
        width = max((len(n) for n in self), default=0)
        return "\n".join(
            f"{n:<{width}}  {s.describe()}" + (f"  when {self._conditions[n]}" if n in self._conditions else "")
            for n, s in self.items()
        )

    # building ---------------------------------------------------------------------
    def updated(self, other: Mapping[str, ParamSpec]) -> SearchSpace:
        """A new space: ``other``'s specs replace this one's (in place), new names go last.

        A ``SearchSpace`` brings its conditions for its names (a TOML file's); a plain mapping
        of specs keeps the condition a name had here, and gives a new name its knob's own.
        """
        merged, conditions = dict(self._specs), dict(self._conditions)
        theirs = other if isinstance(other, SearchSpace) else SearchSpace(other, conditions={})
        for name, spec in theirs.items():
            if isinstance(other, SearchSpace):
                conditions.pop(name, None)
                if name in other._conditions:
                    conditions[name] = other._conditions[name]
            elif name not in merged and PARAMETERS[name].applies_when is not None:
                conditions[name] = PARAMETERS[name].applies_when
            merged[name] = spec
        return SearchSpace(merged, conditions)

    def without(self, names: Iterable[str]) -> SearchSpace:
        """This space without the parameters ``names`` (and their conditions)."""
        gone = set(names)
        return SearchSpace(
            {n: s for n, s in self.items() if n not in gone},
            {n: c for n, c in self._conditions.items() if n not in gone},
        )

    # conditions -------------------------------------------------------------------
    @property
    def conditions(self) -> Mapping[str, Condition]:
        """Parameter -> its condition, for the conditional parameters only."""
        return self._conditions

    def condition(self, name: str) -> Condition | None:
        """The condition of parameter ``name`` (None: it always applies)."""
        return self._conditions.get(name)

    def applies(self, name: str, params: Mapping[str, Any]) -> bool:
        """Whether parameter ``name`` applies to a trial with these ``params`` (a parent the
        trial lacks counts at its knob's default, as the training takes it)."""
        condition = self._conditions.get(name)
        return condition is None or condition.holds(params)

    def sampling_order(self) -> tuple[str, ...]:
        """The parameters in the order to sample them: each after the parents its condition
        names, otherwise in the space's order."""
        return self._order

    def parent_values(self, parent: str) -> tuple[Any, ...]:
        """The values a trial of this space can give knob ``parent``: its choices when it is
        searched (and its default too when it may not apply), else its default."""
        spec = self._specs.get(parent)
        default = _plain_default(parent)
        if not isinstance(spec, Choice):
            return (default,)
        if parent in self._conditions and not any(default == c and type(default) is type(c) for c in spec.choices):
            return (*spec.choices, default)
        return spec.choices

    def can_apply(self, name: str) -> bool:
        """Whether some trial of this space samples ``name``: every parent its condition names
        can take one of the values it needs."""
        condition = self._conditions.get(name)
        if condition is None:
            return True
        return all(any(v in values for v in self.parent_values(parent)) for parent, values in condition.requires)

    def varying(self) -> tuple[str, ...]:
        """The parameters some trials sample and others do not (their condition depends on
        a choice the space leaves open)."""
        return tuple(
            name for name, condition in self._conditions.items()
            if self.can_apply(name)
            and not all(all(v in values for v in self.parent_values(parent)) for parent, values in condition.requires)
        )

    # for workers -----------------------------------------------------------------
    def to_distributions(self) -> dict[str, BaseDistribution]:
        """One Optuna distribution per parameter, as ``study.ask(fixed_distributions=...)`` takes them."""
        return {name: spec.to_distribution() for name, spec in self.items()}

    def contains(self, params: Mapping[str, Any]) -> bool:
        """True when ``params`` (name -> value) holds a value inside the spec of every
        parameter of this space that applies to it."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of parameter name to value, got {type(params).__name__}")
        return all(
            (name in params and spec.contains(params[name])) or not self.applies(name, params)
            for name, spec in self.items()
        )

    def to_train_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``TrainConfig`` keyword arguments from sampled values (e.g. ``trial.params``).

        ``params`` must hold every parameter of this space that applies to it, and nothing
        outside the space; a parameter that does not apply is left out (the training takes
        its default, which it does not use). Values are converted to plain Python types
        (hidden_sizes "100-100" -> (100, 100), NumPy scalars -> int / float / bool) and
        checked against the parameter's domain; they need not lie inside the spec's range
        (Optuna lets an enqueued trial go outside it).
        """
        unknown = sorted(set(params) - set(self))
        missing = [n for n in self if n not in params and self.applies(n, params)]
        problems = [f"not in the space: {', '.join(unknown)}"] if unknown else []
        problems += [f"missing: {', '.join(missing)}"] if missing else []
        if problems:
            raise SpaceError("params do not match the space: " + "; ".join(problems))
        kwargs: dict[str, Any] = {}
        for name in self:
            if name not in params or not self.applies(name, params):
                continue
            v = params[name]
            if isinstance(v, np.generic):
                v = v.item()
            kind = PARAMETERS[name].for_value(v).kind
            if kind == "float" and is_real(v):
                v = float(v)
            elif kind == "int" and as_int(v) is not None:
                v = as_int(v)
            _check_value(name, v)
            kwargs[name] = _parse_layers(name, v) if kind == "layers" else v
        return kwargs

    # tables and storage ------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        """name -> one-line text per spec: ``log[1e-06, 10]``, ``{relu, tanh}``."""
        return {name: spec.describe() for name, spec in self.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for study user attrs); ``from_dict`` gives back an equal space.

        A conditional parameter's dict holds its whole condition under ``when`` (version 2);
        a space without conditions is written as version 1, as before conditions existed."""
        params = {}
        for name, spec in self.items():
            params[name] = spec.to_dict()
            if name in self._conditions:
                params[name]["when"] = self._conditions[name].to_dict()
        return {"version": 2 if self._conditions else 1, "params": params}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """The space ``to_dict`` wrote; SpaceError for anything else. A version 1 space (stored
        before conditions existed) has none: every parameter applies to every trial."""
        if not isinstance(data, Mapping) or not isinstance(data.get("params"), Mapping):
            raise SpaceError("a stored search space must be a dict with a 'params' dict")
        version = data.get("version", 1)
        if version not in (1, 2):
            raise SpaceError(f"unsupported search space version {version!r}; expected 1 or 2")
        specs, conditions = {}, {}
        for raw_name, value in data["params"].items():
            with _about(f"params.{raw_name}"):
                name = resolve_name(raw_name)
            with _about(f"params.{raw_name}", name):
                value, when = _split_when(value) if version == 2 else (value, None)
                specs[name] = _normalized(name, _spec_from_value(name, value, shorthand=False))
                if when is not None:
                    conditions[name] = _parse_when(name, when)
        return cls(specs, conditions)


# ---------------------------------------------------------------------------
# the default space
# ---------------------------------------------------------------------------


def default_space() -> SearchSpace:
    """The lecture's first coarse stage.

    learning_rate ``10 ** uniform(-6, 1)`` (log[1e-06, 10]), every activation and every
    initializer in the registries, batch_norm on and off.
    """
    return SearchSpace(
        {
            "learning_rate": FloatRange(1e-6, 10.0, log=True),
            "activation": Choice(tuple(ACTIVATIONS)),
            "initializer": Choice(tuple(INITIALIZERS)),
            "batch_norm": Choice((True, False)),
        }
    )


# ---------------------------------------------------------------------------
# parsing: shorthand, TOML, stored dicts
# ---------------------------------------------------------------------------

_RANGE_PREFIXES = {
    # prefix: (integer range?  None = as the parameter, log?)
    "linear": (None, False),
    "log": (None, True),
    "float": (False, False),
    "float-linear": (False, False),
    "float-log": (False, True),
    "int": (True, False),
    "int-linear": (True, False),
    "int-log": (True, True),
}


def parse_param(text: str) -> tuple[str, ParamSpec]:
    """``"lr=log:1e-6..1e-1"`` -> ("learning_rate", FloatRange(1e-6, 0.1, log=True)).

    The forms are listed in the module docstring. SpaceError names the --param text.
    """
    where = f"--param {text!r}"
    with _about(where):
        if not isinstance(text, str) or "=" not in text:
            raise SpaceError("expected name=spec, e.g. lr=log:1e-6..1e-1 or activation=relu,tanh")
        raw_name, spec_text = text.split("=", 1)
        if not raw_name.strip():
            raise SpaceError("no parameter name before '='")
        name = resolve_name(raw_name)
    with _about(where, name):
        return name, parse_spec(name, spec_text)


def parse_spec(name: str, text: str) -> ParamSpec:
    """The spec written as shorthand ``text`` for parameter ``name`` (canonical or alias)."""
    name = resolve_name(name)
    return _normalized(name, _parse_spec(name, PARAMETERS[name], text))


def _parse_spec(name: str, info: Knob, text: str) -> ParamSpec:
    text = text.strip()
    if not text:
        raise SpaceError(f"no value given for {name}")
    if ".." in text:
        return _parse_range(name, info, text)
    if ":" in text and info.numeric:
        raise SpaceError(f"cannot read {text!r}; a range is written [prefix:]low..high, e.g. log:1e-6..1e-1")
    tokens = [t.strip() for t in text.split(",")]
    if any(not t for t in tokens):
        raise SpaceError(f"empty choice in {text!r}")
    return Choice(tuple(_parse_token(name, info, t) for t in tokens))


def _parse_range(name: str, info: Knob, text: str) -> ParamSpec:
    parts = [p.strip() for p in text.split(":")]
    prefix = "linear"
    if ".." not in parts[0]:
        prefix = parts.pop(0).lower()
        if prefix not in _RANGE_PREFIXES:
            raise SpaceError(f"unknown range prefix {prefix!r}; use one of {', '.join(_RANGE_PREFIXES)}")
    if not parts or len(parts) > 2 or ".." not in parts[0]:
        raise SpaceError(f"cannot read range {text!r}; expected [prefix:]low..high[:step]")
    want_int, log = _RANGE_PREFIXES[prefix]
    if not info.numeric:
        raise SpaceError(f"{name} takes a list of choices (e.g. {_example(name)}), not a range")
    bounds = parts[0].split("..")
    if len(bounds) != 2:
        raise SpaceError(f"cannot read range {parts[0]!r}; expected low..high")
    is_int = info.kind == "int"
    if info.fraction is not None:  # a count (10..50) or a fraction (0.9..0.99)
        is_int = want_int if want_int is not None else all(int_text(t) is not None for t in bounds)
    if want_int is not None and want_int != is_int:
        raise SpaceError(
            f"{name} is {'an integer' if is_int else 'a real number'}; "
            f"drop the {prefix!r} prefix or use {'int' if is_int else 'float'}{'-log' if log else ''}:"
        )
    number = _parse_int if is_int else _parse_float
    low, high = number(name, bounds[0]), number(name, bounds[1])
    if is_int:
        step = _parse_int(name, parts[1]) if len(parts) == 2 else 1
        return IntRange(low, high, log=log, step=step)
    if len(parts) == 2:
        raise SpaceError(f"a step is only for integer ranges; {name} is a real number")
    return FloatRange(low, high, log=log)


def _parse_float(name: str, text: str) -> float:
    with _knob_errors():
        return parse_float(name, text)


def _parse_int(name: str, text: str) -> int:
    with _knob_errors():
        return parse_int(name, text)


def _parse_token(name: str, info: Knob, token: str) -> ChoiceValue:
    """One choice written as text, typed as the parameter."""
    with _knob_errors():
        return info.parse(token)


def _typed_value(name: str, info: Knob, v: Any) -> ChoiceValue:
    """One choice given as a TOML / JSON value, typed as the parameter."""
    if info.kind == "float" and is_real(v):
        v = float(v)
    elif info.kind == "int" and info.fraction is not None and isinstance(v, (float, np.floating)):
        v = float(v)  # 1.0 is "all the variance", not one direction: keep it a float
    elif info.kind == "int" and as_int(v) is not None:
        v = as_int(v)
    elif info.kind == "layers":
        if isinstance(v, list):  # [100, 100]
            widths = [as_int(w) for w in v]
            if not widths or any(w is None or w < 1 for w in widths):
                raise SpaceError(f"{name} {v!r}: each layer width must be an integer >= 1")
            return "-".join(str(w) for w in widths)
        if as_int(v) is not None:  # 200 = one hidden layer
            v = str(as_int(v))
        if isinstance(v, str):
            return "-".join(str(w) for w in _parse_layers(name, v))
    _check_value(name, v)
    return v


_TABLE_KEYS = ("type", "low", "high", "log", "step", "choices")


def _spec_from_value(name: str, value: Any, *, shorthand: bool = True) -> ParamSpec:
    """A spec from a TOML / JSON value: shorthand string, plain value, list or table."""
    info = PARAMETERS[name]
    if isinstance(value, Mapping):
        return _spec_from_table(name, info, value)
    if not shorthand:
        raise SpaceError(f"expected a table with {', '.join(_TABLE_KEYS)}, got {value!r}")
    if isinstance(value, str):
        return parse_spec(name, value)
    if isinstance(value, list):
        return Choice(tuple(_typed_value(name, info, v) for v in value))
    return Choice((_typed_value(name, info, value),))


def _spec_from_table(name: str, info: Knob, table: Mapping[str, Any]) -> ParamSpec:
    unknown = [k for k in table if k not in _TABLE_KEYS]
    if unknown:
        raise SpaceError(f"unknown key {unknown[0]!r}; a parameter table takes {', '.join(_TABLE_KEYS)}")
    if "choices" in table and ("low" in table or "high" in table):
        raise SpaceError("give either low/high or choices, not both")
    kind = table.get("type")
    if kind is None:
        if "choices" not in table and not info.numeric:
            raise SpaceError(f"{name} takes a list of choices (e.g. choices = [{_example(name)}])")
        kind = "choice" if "choices" in table else info.kind
        if kind == "int" and info.fraction is not None and any(isinstance(table.get(k), float) for k in ("low", "high")):
            kind = "float"
    if kind not in ("float", "int", "choice"):
        raise SpaceError(f"unknown type {kind!r}; use float, int or choice")
    if kind == "choice":
        extra = [k for k in ("low", "high", "log", "step") if k in table]
        if extra:
            raise SpaceError(f"a choice takes only 'choices', not {', '.join(extra)}")
        choices = table.get("choices")
        if not isinstance(choices, list):
            raise SpaceError(f"'choices' must be a list, got {choices!r}")
        return Choice(tuple(_typed_value(name, info, v) for v in choices))
    if "choices" in table:
        raise SpaceError(f"type {kind!r} takes low and high, not choices")
    missing = [k for k in ("low", "high") if k not in table]
    if missing:
        raise SpaceError(f"a range needs low and high (missing {', '.join(missing)})")
    if not info.numeric:
        raise SpaceError(f"{name} takes a list of choices (e.g. {_example(name)}), not a range")
    if kind != info.kind and not (kind == "float" and info.fraction is not None):
        raise SpaceError(f"{name} is {'an integer' if info.kind == 'int' else 'a real number'}, not type {kind!r}")
    log = table.get("log", False)
    if kind == "int":
        return IntRange(table["low"], table["high"], log=log, step=table.get("step", 1))
    if "step" in table:
        raise SpaceError(f"a step is only for integer ranges; {name} is a real number")
    return FloatRange(table["low"], table["high"], log=log)


def load_space_file(path: str | Path) -> SearchSpace:
    """The space in TOML file ``path`` (only its own parameters; see ``build_space``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such space file") from None
    except OSError as e:
        raise SpaceError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 text
        raise SpaceError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise SpaceError(f"{path}: not a space file (arrays or tables nested too deeply)") from None
    unknown = [k for k in data if k != "params"]
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key {unknown[0]!r}; a space file holds a [params] table")
    params = data.get("params")
    if not isinstance(params, dict):
        raise SpaceError(f"{path}: no [params] table")
    specs: dict[str, ParamSpec] = {}
    conditions: dict[str, Condition] = {}
    for raw_name, value in params.items():
        where = f"{path}: params.{raw_name}"
        with _about(where):
            name = resolve_name(raw_name)
        with _about(where, name):
            if name in specs:
                raise SpaceError(f"{name} is given twice")
            value, when = _split_when(value)
            specs[name] = _normalized(name, _spec_from_value(name, value))
            own = PARAMETERS[name].applies_when
            if when is not None:
                stated = _parse_when(name, when)
                both = stated if own is None else own.both(stated)
                if both is None:
                    raise SpaceError(f"when {stated} leaves no case where {name} applies: it applies only with {own}")
                conditions[name] = both
            elif own is not None:
                conditions[name] = own
    with _about(str(path)):
        return SearchSpace(specs, conditions)


def build_space(
    base: SearchSpace | None = None,
    file: str | Path | None = None,
    params: Sequence[str] = (),
) -> SearchSpace:
    """The space of a stage: ``base`` (or ``default_space()``), then ``file``, then ``params``.

    Each layer replaces the specs of the parameters it names; the later wins. The result
    always holds the ``ALWAYS_SEARCHED`` parameters: a base lacking one gets the default's.
    A conditional parameter that can never apply (its parent is fixed, or searched without
    the values it needs) is refused with SpaceError when ``file`` or ``params`` name it, and
    left out when only ``base`` holds it (``hpo narrow --param optimizer=adam`` over a
    narrowed space that searched momentum).
    """
    if isinstance(params, str):
        params = [params]  # one --param given as a bare string, not its characters
    space = default_space() if base is None else base
    missing = {n: s for n, s in default_space().items() if n not in space}
    if missing:
        space = space.updated(missing)
    named: set[str] = set()
    if file is not None:
        from_file = load_space_file(file)
        space = space.updated(from_file)
        named.update(from_file)
    for text in params:
        name, spec = parse_param(text)
        space = space.updated({name: spec})
        named.add(name)
    return _only_applicable(space, named)


def _only_applicable(space: SearchSpace, named: set[str]) -> SearchSpace:
    """``space`` without the parameters that can never apply; SpaceError if one is ``named``."""
    while never := [n for n in space.conditions if not space.can_apply(n)]:
        asked = [n for n in never if n in named]
        if asked:
            raise SpaceError(_never_applies(space, asked[0]))
        space = space.without(never)  # a parent dropped in turn may leave others out
    return space


def _never_applies(space: SearchSpace, name: str) -> str:
    condition = space.condition(name)
    assert condition is not None
    for parent, values in condition.requires:
        possible = space.parent_values(parent)
        if any(v in values for v in possible):
            continue
        spec = space.get(parent)
        searched = isinstance(spec, Choice) and not spec.is_fixed
        has = f"{parent} is searched over {spec.describe()}" if searched else f"the space leaves {parent} at {_choice_text(possible[0])}"
        wanted = ",".join(_choice_text(v) for v in (*(spec.choices if searched else ()), *values))
        return (f"{name} never applies: it applies only with {condition}, and {has}; let {parent} "
                f"take one of those (e.g. --param {parent}={wanted}) or leave {name} out")
    return f"{name} never applies: it applies only with {condition}"


# ---------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------


def grid_values(space: SearchSpace, points_per_range: int = 3) -> dict[str, list[Any]]:
    """A grid for ``optuna.samplers.GridSampler``: every choice, and for each range
    ``points_per_range`` log- or linearly spaced points including both ends (integer
    ranges give the distinct grid points they round to).
    """
    n = as_int(points_per_range)
    if n is None or n < 2:
        raise SpaceError(f"points_per_range must be an integer >= 2, got {points_per_range!r}")
    grid: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if isinstance(spec, Choice):
            grid[name] = list(spec.choices)
            continue
        points = np.geomspace(spec.low, spec.high, n) if spec.log else np.linspace(spec.low, spec.high, n)
        if isinstance(spec, FloatRange):
            values = [float(p) for p in points]
            values[0], values[-1] = spec.low, spec.high  # exact ends, no rounding drift
        else:
            snapped = {spec.low + int(round((p - spec.low) / spec.step)) * spec.step for p in points}
            values = sorted(min(max(v, spec.low), spec.high) for v in snapped)
        grid[name] = values
    return grid

"""Coarse to fine: the next stage's search space from the trials of a finished stage.

cs231n, "Training Neural Networks I": search at random, first over wide ranges with short
runs, then narrow the ranges to where the best results were and train longer. And beware
a best value at the edge of its range: the optimum may lie outside it, so widen there.

``narrow`` is pure: plain ``NarrowTrial``s and the old ``SearchSpace`` in, a
``NarrowResult`` (the new space, one reason per parameter, the trials it came from) out.

Which trials count
    Only COMPLETE trials with a finite value and parameters inside the old space. Pruned
    trials are left out even when Optuna gave them their last reported value: that value
    was measured after fewer epochs than a complete trial's and they were stopped for
    looking worse (or for diverging), so ranking them together would compare unlike
    numbers. Failed, running and waiting trials have no value. A stage without any
    trial that counts raises ``NothingToNarrow``, which says how many trials of each
    kind it had.

The top trials
    The finished trials sorted best first (ties: the lower trial number first); the top
    ``top_k`` if given, else the top ``top_quantile`` fraction, but at least ``MIN_TOP``
    (or all, when fewer finished).

A range (float or int; in log10 units when it is log-scaled, else linear units)
    1. Span the top trials' values, min..max, padded on each side by ``margin`` times
       that span; if this is narrower than ``min_width`` times the old range's width
       (e.g. one top trial, or all at the same value) it is widened to that width around
       the top trials' centre.
    2. If the best trial's value lies within ``border_tolerance`` times the old width of
       a border, that side is extended beyond the old border by ``widen`` times the old
       width, and the other side takes step 1's bound (cut at the old border), which
       never cuts into the top trials. Domain limits hold: a side stops at an inclusive
       limit (batch_size >= 1, lr_decay <= 1, and a limit the data sets, passed as
       ``limits``: pca_components <= the number of features); before an exclusive limit it moves at
       most half the way to it (momentum < 1: 0.99 -> 0.995), so repeated widening
       approaches the limit but never reaches it; a border already at the limit stays.
       A log-scaled range has no lower limit in log units, so it stays above 0.
    3. Otherwise step 1's range is moved inside the old range by shifting it, so a range
       near one end keeps its width; a range at least as wide as the old one is the old
       one.
    4. A float range's new bounds are rounded outward to 3 significant digits (more
       if 3 would widen it by over 10%), so tables read ``log[0.000562, 0.0178]``. An
       integer range rounds its low bound down and its high bound up to the old step
       grid, so every top trial stays inside and the range keeps at least one step;
       where the domain leaves no room for a whole step (batch_size >= 1 with step 16
       from 2), the border stays.

A choice
    Each choice's evidence: how many finished trials (COMPLETE or PRUNED, inside the old
    space) tried it, and the best and median value of those that completed. A pruned trial
    counts as tried: it was stopped for looking worse than the others at the same epoch.
    1. The choices taken by a top trial are kept (the best trial's among them).
    2. A choice tried fewer than ``min_choice_trials`` times is kept too, for lack of
       evidence: a sampler that liked another choice early tries it rarely, and a few short
       runs say little about how it does with longer training.
    3. While fewer than ``keep_choices`` are kept, the best of the others (by their best
       value, then their median) is kept.
    The others are dropped; the order of the old choices is kept. A fixed parameter stays
    fixed.

The rule (``NarrowRule``: how many top trials, the margins, the evidence a choice needs) is
stored with the result, so the next stage's lineage says how it was derived.

A conditional parameter (``momentum``, sampled only with the momentum and nesterov rules)
    Its values exist only in the trials it applied to, so it is narrowed from those alone:
    the top of them by the same rule (top ``top_k``, or ``top_quantile`` of them but at
    least ``MIN_TOP``; never fewer than the top trials above that have it, so each stays
    inside), as a range or a choice above. Applied to no trial that counts, it is left
    unchanged. When the narrowed choices leave it no case where it applies (no top
    trial kept momentum or nesterov), it is not searched by the next stage, which then
    holds no value its condition could read.

The best trial's parameters always lie inside the new space, so the next stage can be
seeded with them (``study.enqueue_trial(result.best_params)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.states import is_diverged, state_name
from workers.space import PARAMETERS, Choice, FloatRange, IntRange, ParamSpec, SearchSpace

__all__ = [
    "BORDER_TOLERANCE",
    "EARLIER_CHOICE_RULE",
    "EARLIER_RANGE_RULE",
    "KEEP_CHOICES",
    "MIN_CHOICE_TRIALS",
    "MIN_TOP",
    "MARGIN",
    "MIN_WIDTH",
    "WIDEN",
    "NOT_SEARCHED",
    "ChoiceEvidence",
    "NarrowError",
    "NarrowResult",
    "NarrowRule",
    "NothingToNarrow",
    "ParamChange",
    "NarrowTrial",
    "narrow",
]

MIN_TOP = 3  # "at least a few trials": the smallest top set the quantile rule picks
WIDEN = 0.5  # a border side moves out by this fraction of the old width
BORDER_TOLERANCE = 0.02  # "at the border": within this fraction of the old width
# A narrowed range keeps at least this fraction of the old width, padded by MARGIN of the top
# trials' span: ranges narrowed from the few trials a pruned stage completes were too narrow
# (a third of a decade of learning rate by stage 3) and missed the optimum of longer training.
# Measured on MNIST-1D against 0.1 and 0.25 (docs/benchmarks.md).
MIN_WIDTH = 0.5
MARGIN = 0.5
MIN_CHOICE_TRIALS = 3  # a choice tried fewer times than this is kept: too little evidence to drop it
KEEP_CHOICES = 2  # each categorical parameter keeps at least this many (docs/benchmarks.md, MNIST-1D)
# The rule before choices needed evidence (every choice outside the top trials dropped): what a
# lineage or a campaign plan stored without these settings was narrowed by.
EARLIER_CHOICE_RULE = {"min_choice_trials": 1, "keep_choices": 1}
# The ranges' rule before MIN_WIDTH and MARGIN were raised: what a campaign plan stored without
# these settings narrows by.
EARLIER_RANGE_RULE = {"margin": 0.25, "min_width": 0.1}


class NarrowError(ValueError):
    """The stage cannot be narrowed (no usable trials, or a bad setting)."""


class NothingToNarrow(NarrowError):
    """No trial of the stage finished with a value to rank: all were pruned, diverged,
    failed, are still running or lie outside the space. ``counts`` says how many of each."""

    def __init__(self, message: str, counts: Mapping[str, int]):
        super().__init__(message)
        self.counts = dict(counts)


@dataclass(frozen=True)
class NarrowTrial:
    """What narrowing needs of one trial: its number, sampled params, value and state.

    ``state`` is an Optuna ``TrialState`` name ("COMPLETE", "PRUNED", "FAIL", ...);
    ``reason`` the trial's stored reason, if any (a diverged run is PRUNED with a reason
    beginning "diverged"), used only to say why nothing could be narrowed.
    """

    number: int
    params: Mapping[str, Any]
    value: float | None
    state: str = "COMPLETE"
    reason: str | None = None


NOT_SEARCHED = "not searched"  # the new text of a conditional parameter the next stage drops


@dataclass(frozen=True)
class NarrowRule:
    """How a stage is narrowed (see the module docstring); stored whole in the result.

    ``min_choice_trials``: a choice tried fewer times is kept for lack of evidence;
    ``keep_choices``: each categorical parameter keeps at least this many choices. The
    others are ``narrow``'s arguments of the same names.
    """

    top_k: int | None = None
    top_quantile: float = 0.25
    margin: float = MARGIN
    direction: str = "maximize"
    widen: float = WIDEN
    border_tolerance: float = BORDER_TOLERANCE
    min_width: float = MIN_WIDTH
    min_choice_trials: int = MIN_CHOICE_TRIALS
    keep_choices: int = KEEP_CHOICES

    def checked(self) -> NarrowRule:
        """This rule with its direction spelled "maximize" or "minimize"; NarrowError names
        the first bad setting."""
        rule = dataclasses.replace(self, direction=_direction(self.direction))
        for name in ("top_k", "min_choice_trials", "keep_choices"):
            value = getattr(rule, name)
            if (value is not None or name != "top_k") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise NarrowError(f"{name} must be an integer >= 1{' or None' if name == 'top_k' else ''}, got {value!r}")
        _check_settings(rule.top_quantile, rule.margin, rule.widen, rule.border_tolerance, rule.min_width)
        return rule

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``min_top`` says how few top trials the quantile rule ever picks."""
        data = dataclasses.asdict(self)
        return {**data, "min_top": MIN_TOP}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NarrowRule:
        """The rule ``to_dict`` wrote. A rule stored before choices needed evidence dropped
        every choice outside the top trials: it reads back as such."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**EARLIER_CHOICE_RULE, **{k: v for k, v in data.items() if k in names}})


@dataclass(frozen=True)
class ChoiceEvidence:
    """What a stage says about one choice of a categorical parameter: how many finished
    trials tried it (``trials``, pruned ones included), how many of those completed, the best
    and the median of their values (None without a complete one), and whether the narrowed
    space keeps it."""

    choice: Any
    trials: int
    complete: int
    best: float | None
    median: float | None
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChoiceEvidence:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ParamChange:
    """One parameter's old spec, new spec (None: the next stage does not search it) and the
    one-line reason; for a categorical parameter, the evidence of each old choice (``choices``,
    in the old order)."""

    name: str
    old: ParamSpec
    new: ParamSpec | None
    reason: str
    choices: tuple[ChoiceEvidence, ...] = ()

    @property
    def new_text(self) -> str:
        return NOT_SEARCHED if self.new is None else self.new.describe()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "old": self.old.to_dict(),
            "new": None if self.new is None else self.new.to_dict(),
            "old_text": self.old.describe(),
            "new_text": self.new_text,
            "reason": self.reason,
            "choices": [c.to_dict() for c in self.choices],
        }


@dataclass(frozen=True)
class NarrowResult:
    """The next stage's space and how it was derived.

    ``source_trials`` are the top trials' numbers, best first, and ``top_params`` their
    params (restricted to the space's names) in the same order; ``best_params`` is the
    first of them. ``changes`` holds one ``ParamChange`` per parameter, in the space's
    order (``change(name)`` finds one).
    """

    space: SearchSpace
    changes: tuple[ParamChange, ...]
    source_trials: tuple[int, ...]
    best_trial: int
    best_value: float
    best_params: Mapping[str, Any]
    top_params: tuple[Mapping[str, Any], ...]
    n_ranked: int
    rule: NarrowRule

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for study user attrs; ``from_dict`` reads it back."""
        return {
            "space": self.space.to_dict(),
            "changes": [change.to_dict() for change in self.changes],
            "source_trials": list(self.source_trials),
            "best_trial": self.best_trial,
            "best_value": self.best_value,
            "best_params": dict(self.best_params),
            "top_params": [dict(p) for p in self.top_params],
            "n_ranked": self.n_ranked,
            "rule": self.rule.to_dict(),
        }

    def change(self, name: str) -> ParamChange:
        """The change of parameter ``name``; KeyError if the space has no such parameter."""
        for c in self.changes:
            if c.name == name:
                return c
        raise KeyError(name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NarrowResult:
        """The result ``to_dict`` wrote."""
        def spec(name: str, d: Mapping[str, Any] | None) -> ParamSpec | None:
            return None if d is None else SearchSpace.from_dict({"params": {name: d}})[name]

        return cls(
            space=SearchSpace.from_dict(data["space"]),
            changes=tuple(
                ParamChange(c["name"], spec(c["name"], c["old"]), spec(c["name"], c["new"]), c["reason"],
                            tuple(ChoiceEvidence.from_dict(e) for e in c.get("choices", ())))
                for c in data["changes"]
            ),
            source_trials=tuple(data["source_trials"]),
            best_trial=data["best_trial"],
            best_value=data["best_value"],
            best_params=dict(data["best_params"]),
            top_params=tuple(dict(p) for p in data["top_params"]),
            n_ranked=data["n_ranked"],
            rule=NarrowRule.from_dict(data["rule"]),
        )


# ---------------------------------------------------------------------------


def narrow(
    space: SearchSpace,
    trials: Sequence[NarrowTrial],
    *,
    top_k: int | None = None,
    top_quantile: float = 0.25,
    margin: float = MARGIN,
    direction: str = "maximize",
    widen: float = WIDEN,
    border_tolerance: float = BORDER_TOLERANCE,
    min_width: float = MIN_WIDTH,
    min_choice_trials: int = MIN_CHOICE_TRIALS,
    keep_choices: int = KEEP_CHOICES,
    limits: Mapping[str, int] | None = None,
    stage: str | None = None,
) -> NarrowResult:
    """The next stage's search space from ``trials`` of a stage searched over ``space``.

    Args:
        space: the finished stage's space.
        trials: its trials (any state; see the module docstring for which count).
        top_k: use the best ``top_k`` trials; None: the top ``top_quantile`` fraction,
            at least ``MIN_TOP``.
        top_quantile: in (0, 1].
        margin: padding of a narrowed range on each side, as a fraction of the top
            trials' span (in log10 units for a log range), >= 0.
        direction: "maximize" (e.g. validation accuracy) or "minimize" (a loss).
        widen: how far a range moves out past a border holding the best trial, as a
            fraction of the old width, > 0.
        border_tolerance: how close (fraction of the old width) counts as "at the
            border", in [0, 0.5).
        min_width: the narrowest a range becomes, as a fraction of the old width, in
            (0, 1].
        min_choice_trials: a choice tried by fewer finished trials is kept for lack of
            evidence, >= 1 (1: only a choice no trial tried).
        keep_choices: each categorical parameter keeps at least this many choices (the
            best by their best value), >= 1.
        limits: upper limits the data sets on integer parameters, {name: largest
            value} (pca_components: the number of features; see
            ``workers.feasible.data_limits``): a range widened upward stops there.
        stage: the stage's name, for the message of ``NothingToNarrow``.

    Raises:
        NothingToNarrow: no COMPLETE trial with a finite value inside ``space``.
        NarrowError: a bad setting.
    """
    rule = NarrowRule(top_k, top_quantile, margin, direction, widen, border_tolerance, min_width,
                      min_choice_trials, keep_choices).checked()
    direction = rule.direction
    ranked = _ranked(space, trials, direction, stage)
    n_top = _top_count(len(ranked), top_k, top_quantile)
    top = ranked[:n_top]
    best = top[0]
    tried = _tried(space, trials)

    new_specs: dict[str, ParamSpec] = {}
    changes: list[ParamChange] = []
    for name, old in space.items():
        here = top
        if space.condition(name) is not None:  # only the trials it applied to hold a value
            applied = [t for t in ranked if name in t.params and space.applies(name, t.params)]
            in_top = sum(1 for t in top if name in t.params and space.applies(name, t.params))  # they lead `applied`
            here = applied[:max(in_top, _top_count(len(applied), top_k, top_quantile))]
            if not here:
                changes.append(ParamChange(name, old, old, f"unchanged: it applied to none of the {len(ranked)} ranked trials"))
                new_specs[name] = old
                continue
        values = [t.params[name] for t in here]
        choices: tuple[ChoiceEvidence, ...] = ()
        if isinstance(old, Choice):
            new, reason, choices = _narrow_choice(name, old, values, len(here), tried, ranked, rule)
        else:
            new, reason = _narrow_range(
                name, old, values, here[0].params[name], len(here),
                margin=margin, widen=widen, border_tolerance=border_tolerance, min_width=min_width,
                limit=(limits or {}).get(name),
            )
        if here is not top:
            reason += f", among the {len(applied)} trials it applied to"
        new_specs[name] = new
        changes.append(ParamChange(name, old, new, reason, choices))

    new_space = SearchSpace(new_specs, space.conditions)
    # A conditional parameter the narrowed choices leave no case to apply is not searched on.
    while never := [n for n in new_space.conditions if not new_space.can_apply(n)]:
        new_space = new_space.without(never)
        changes = [
            dataclasses.replace(c, new=None, reason=f"dropped: it applies only with "
                                f"{space.condition(c.name)}, which the next stage does not try")
            if c.name in never else c
            for c in changes
        ]
    top_params = tuple({name: _plain(t.params[name]) for name in space if name in t.params} for t in top)
    assert new_space.contains(top_params[0]), "narrowing must keep the best trial inside"
    return NarrowResult(
        space=new_space,
        changes=tuple(changes),
        source_trials=tuple(t.number for t in top),
        best_trial=best.number,
        best_value=float(best.value),
        best_params=top_params[0],
        top_params=top_params,
        n_ranked=len(ranked),
        rule=rule,
    )


def _top_count(n_ranked: int, top_k: int | None, top_quantile: float) -> int:
    """How many of ``n_ranked`` ranked trials are the top ones."""
    return min(n_ranked, top_k if top_k is not None else max(MIN_TOP, math.ceil(top_quantile * n_ranked)))


def _direction(direction: Any) -> str:
    # Accept optuna.study.StudyDirection too (by its name) without importing Optuna here.
    text = str(getattr(direction, "name", direction)).lower()
    if text not in ("maximize", "minimize"):
        raise NarrowError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    return text


def _check_settings(top_quantile, margin, widen, border_tolerance, min_width) -> None:
    checks = [
        ("top_quantile", top_quantile, 0 < top_quantile <= 1, "in (0, 1]"),
        ("margin", margin, 0 <= margin < math.inf, ">= 0"),
        ("widen", widen, 0 < widen < math.inf, "> 0"),
        ("border_tolerance", border_tolerance, 0 <= border_tolerance < 0.5, "in [0, 0.5)"),
        ("min_width", min_width, 0 < min_width <= 1, "in (0, 1]"),
    ]
    for name, value, ok, domain in checks:
        if not ok:  # NaN fails every comparison, so it lands here too
            raise NarrowError(f"{name} must be {domain}, got {value!r}")


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _ranked(
    space: SearchSpace, trials: Sequence[NarrowTrial], direction: str, stage: str | None
) -> list[NarrowTrial]:
    """The usable trials, best first; NothingToNarrow (with counts) when there is none."""
    usable, outside = [], 0
    for t in trials:
        if state_name(t.state) != "COMPLETE" or not _finite(t.value):
            continue
        if not space.contains(t.params):
            outside += 1  # e.g. a trial of another space: its values say nothing here
            continue
        usable.append(t)
    if not usable:
        states = Counter(state_name(t.state) for t in trials)
        diverged = sum(
            1 for t in trials
            if is_diverged(t.state, {"reason": t.reason})
        )
        seen = ", ".join(
            f"{n} {s}" + (f" ({diverged} diverged)" if s == "PRUNED" and diverged else "")
            for s, n in sorted(states.items())
        ) or "no trials at all"
        extra = f"; {outside} of the complete ones lie outside the space" if outside else ""
        raise NothingToNarrow(
            f"{stage or 'the stage'} has nothing to narrow from: no COMPLETE trial with a finite value "
            f"inside the space ({seen}{extra})",
            {**states, "diverged": diverged, "outside": outside},
        )
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(usable, key=lambda t: (sign * float(t.value), t.number))


def _tried(space: SearchSpace, trials: Sequence[NarrowTrial]) -> list[NarrowTrial]:
    """The trials that ran to an end inside ``space``: COMPLETE or PRUNED (a choice's tries)."""
    return [t for t in trials if state_name(t.state) in ("COMPLETE", "PRUNED") and space.contains(t.params)]


def _plain(v: Any) -> Any:
    """A JSON-ready Python value (NumPy scalars from a caller become int / float / bool)."""
    return v.item() if isinstance(v, np.generic) else v


def _top(n: int) -> str:
    return f"top {n} trial" + ("" if n == 1 else "s")


def _fmt(x: float) -> str:
    return f"{x:.2g}" if isinstance(x, float) else str(x)


# ---------------------------------------------------------------------------
# choices
# ---------------------------------------------------------------------------


def _narrow_choice(
    name: str,
    old: Choice,
    values: list[Any],
    n_top: int,
    tried: Sequence[NarrowTrial],
    ranked: Sequence[NarrowTrial],
    rule: NarrowRule,
) -> tuple[Choice, str, tuple[ChoiceEvidence, ...]]:
    """The choices kept, the reason, and each old choice's evidence (the module docstring's
    steps 1-3)."""
    if old.is_fixed:
        return old, "unchanged: fixed", ()
    sign = 1.0 if rule.direction == "maximize" else -1.0

    def taking(c: Any, among: Sequence[NarrowTrial]) -> list[NarrowTrial]:
        return [t for t in among if name in t.params and Choice((c,)).contains(t.params[name])]

    stats = []
    for c in old.choices:
        scores = [float(t.value) for t in taking(c, ranked)]
        stats.append((c, len(taking(c, tried)), len(scores),
                      max(scores, key=lambda v: sign * v) if scores else None,
                      float(np.median(scores)) if scores else None))

    # 1. In the top (the top trials lie inside the old space, so the best trial's is here).
    kept = {i for i, c in enumerate(old.choices) if any(Choice((c,)).contains(v) for v in values)}
    # 2. Too few tries to judge.
    unjudged = [i for i, s in enumerate(stats) if i not in kept and s[1] < rule.min_choice_trials]
    kept |= set(unjudged)
    # 3. At least keep_choices, the best of the rest first (best value, then median; none last).
    rest = sorted(
        (i for i in range(len(old.choices)) if i not in kept),
        key=lambda i: (stats[i][3] is None, -sign * (stats[i][3] or 0.0), -sign * (stats[i][4] or 0.0), i),
    )
    topped_up = rest[: max(0, rule.keep_choices - len(kept))]
    kept |= set(topped_up)

    evidence = tuple(ChoiceEvidence(*s, kept=i in kept) for i, s in enumerate(stats))
    dropped = [c for i, c in enumerate(old.choices) if i not in kept]

    def words(indices: Sequence[int]) -> str:  # in the old order
        return ", ".join(Choice((old.choices[i],)).shorthand() for i in sorted(indices))

    parts = []
    if unjudged:
        counts = ", ".join(str(stats[i][1]) for i in unjudged)
        parts.append(f"{words(unjudged)} kept for lack of evidence "
                     f"(tried {counts} time{'' if counts == '1' else 's'}, fewer than {rule.min_choice_trials})")
    if topped_up:
        parts.append(f"{words(topped_up)} kept: at least {rule.keep_choices} choices stay")
    if not dropped:
        return old, "unchanged: " + ("; ".join(parts) or f"every choice is in the {_top(n_top)}"), evidence
    gone = ", ".join(Choice((c,)).shorthand() for c in dropped)
    new = Choice(tuple(c for i, c in enumerate(old.choices) if i in kept))
    return new, "; ".join([f"dropped {gone}: not in {_top(n_top)}", *parts]), evidence


# ---------------------------------------------------------------------------
# ranges
# ---------------------------------------------------------------------------


def _narrow_range(
    name: str,
    old: FloatRange | IntRange,
    values: list[Any],
    best: Any,
    n_top: int,
    *,
    margin: float,
    widen: float,
    border_tolerance: float,
    min_width: float,
    limit: int | None = None,
) -> tuple[ParamSpec, str]:
    info = PARAMETERS[name].for_value(old)  # pca_components: a count or a fraction domain
    if limit is not None and info.kind == "int" and (info.high is None or limit < info.high):
        info = dataclasses.replace(info, high=limit, high_open=False)  # e.g. no more directions than features
    to_t = math.log10 if old.log else float  # the units the sampler is uniform in

    def from_t(u: float) -> float:
        try:
            return 10.0**u if old.log else u
        except OverflowError:
            return math.inf

    scale = "log" if old.log else "linear"
    values = [float(v) for v in values]
    best = float(best)
    a, b = to_t(old.low), to_t(old.high)
    width = b - a
    xs = [to_t(v) for v in values]
    lo, hi = min(xs), max(xs)

    # 1. The top trials' span, padded, and at least min_width of the old width.
    pad = margin * (hi - lo)
    nl, nh = lo - pad, hi + pad
    kept_width = nh - nl < min_width * width
    if kept_width:
        centre, half = (lo + hi) / 2, min_width * width / 2
        nl, nh = centre - half, centre + half

    # 2. A best value at a border: the optimum may lie beyond it, so that side is widened
    # below; the other side keeps step 1's bound (which contains every top trial).
    tolerance = border_tolerance * width
    t_best = to_t(best)
    side = "upper" if t_best >= b - tolerance else "lower" if t_best <= a + tolerance else None

    # 3. Inside the old range. With no border to widen, shift rather than cut, so a range
    # near one end keeps its width.
    if side is None:
        if nh - nl >= width:
            nl, nh = a, b
        elif nl < a:
            nl, nh = a, nh + (a - nl)
        elif nh > b:
            nl, nh = nl - (nh - b), b
    nl, nh = max(nl, a), min(nh, b)
    # Back in natural units: the old bounds exactly where reached, and never a bound that
    # float rounding moved past a top trial.
    low = old.low if nl <= a else min(from_t(nl), min(values))
    high = old.high if nh >= b else max(from_t(nh), max(values))

    if side == "upper":
        high = max(high, _limit_high(info, old.high, from_t(b + widen * width)))
    elif side == "lower":
        low = min(low, _limit_low(info, old.low, from_t(a - widen * width), log=old.log))

    # 4. Back to the parameter's type.
    new: ParamSpec
    if isinstance(old, IntRange):
        new = _int_range(info, old, low, high)
        if new is None:  # only if float rounding made low == high
            return Choice((int(best),)), f"{_top(n_top)} all at {int(best)}: fixed"
    else:
        if not (math.isfinite(low) and math.isfinite(high) and low < high and (low > 0 or not old.log)):
            return old, "unchanged: the narrowed range would be empty or not finite"

        def valid(rl: float, rh: float) -> bool:
            return (
                rl < rh
                and (rl > 0 or not old.log)
                and info.in_domain(rl)
                and info.in_domain(rh)
                and (rl >= old.low or low < old.low)  # rounding never widens a narrowed side
                and (rh <= old.high or high > old.high)
            )

        low, high = _readable(low, high, to_t, keep_low=low == old.low, keep_high=high == old.high, valid=valid)
        new = FloatRange(low, high, log=old.log)

    # 5. The reason, from what actually happened (an integer step or a domain limit can
    # leave no room to widen).
    if side == "upper":
        if new.high > old.high:
            return new, f"best {_fmt(best)} at upper border: widened upward"
        return new, f"best {_fmt(best)} at upper border, the limit of {name} ({info.domain()}): kept"
    if side == "lower":
        if new.low < old.low:
            return new, f"best {_fmt(best)} at lower border: widened downward"
        return new, f"best {_fmt(best)} at lower border, the limit of {name} ({info.domain()}): kept"
    if new == old:
        return old, f"unchanged: the {_top(n_top)} span the range"
    if kept_width:
        return new, f"narrowed to {min_width:.0%} of its width around the {_top(n_top)} ({scale})"
    return new, f"narrowed to {_top(n_top)} ± {margin:.0%} ({scale})"


def _readable(low: float, high: float, to_t, *, keep_low: bool, keep_high: bool, valid) -> tuple[float, float]:
    """(low, high) rounded outward to the fewest significant digits (3 or more) that widen
    the range by at most 10% in sampling units, so tables and stored spaces read
    ``log[7.33e-05, 0.0437]`` rather than 17-digit floats. Bounds to keep stay exact."""
    width = to_t(high) - to_t(low)
    for digits in range(3, 17):
        rl = low if keep_low else _round_sig(low, digits, up=False)
        rh = high if keep_high else _round_sig(high, digits, up=True)
        if valid(rl, rh) and to_t(rh) - to_t(rl) <= 1.1 * width:
            return rl, rh
    return low, high


def _round_sig(x: float, digits: int, *, up: bool) -> float:
    """x rounded to ``digits`` significant digits, up (toward +inf) or down."""
    if x == 0 or not math.isfinite(x):
        return x
    r = float(f"{x:.{digits - 1}e}")
    if (up and r < x) or (not up and r > x):
        unit = 10.0 ** (math.floor(math.log10(abs(r))) - digits + 1)
        r = float(f"{(r + unit if up else r - unit):.{digits - 1}e}")
        if (up and r < x) or (not up and r > x):  # float rounding defeated us: keep x
            return x
    return r


def _limit_high(info, old_high: float, target: float) -> float:
    """``target`` for a widened high bound, held inside the parameter's domain."""
    if not math.isfinite(target):
        return old_high
    if info.high is None:
        return target
    if info.high_open:  # approach an excluded limit, never reach it
        return min(target, old_high + (info.high - old_high) / 2)
    return min(target, info.high)


def _limit_low(info, old_low: float, target: float, *, log: bool) -> float:
    """``target`` for a widened low bound, held inside the domain (and > 0 when log)."""
    if not math.isfinite(target) or (log and target <= 0):
        return old_low
    if info.low is None or (log and info.low <= 0):  # in log units 0 is infinitely far
        return target
    if info.low_open:  # approach an excluded limit, never reach it
        return max(target, old_low - (old_low - info.low) / 2)
    return max(target, info.low)


def _int_range(info, old: IntRange, low: float, high: float) -> IntRange | None:
    """(low, high) rounded outward to old's step grid and into the domain; None if empty."""
    step, base = old.step, old.low
    new_low = base + math.floor((low - base) / step) * step
    new_high = new_low + math.ceil((high - new_low) / step) * step
    floor = 1 if old.log else -math.inf  # a log range stays >= 1
    if info.low is not None:
        floor = max(floor, math.floor(info.low) + 1 if info.low_open else math.ceil(info.low))
    if new_low < floor:
        new_low += math.ceil((floor - new_low) / step) * step
    if info.high is not None:
        ceiling = math.ceil(info.high) - 1 if info.high_open else math.floor(info.high)
        if new_high > ceiling:
            new_high = new_low + math.floor((ceiling - new_low) / step) * step
    if new_low >= new_high:
        return None
    return IntRange(int(new_low), int(new_high), log=old.log, step=step)

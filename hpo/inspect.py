"""Read-only views of studies and trials: what ``hpo studies / trials / trial / best / health``
show, as plain JSON-ready dicts and lists. No click here; the CLI only renders what this returns.

Where a study name is expected, a campaign name also works: it means the campaign's newest
stage, except for ``hpo trials`` and ``hpo importance``, where it means every stage (an existing
study of exactly that name wins).

Filters (``--where``), sorting and column choice run in Python on trials fetched through
Optuna's storage API: nothing a user types ever becomes SQL. The few hand-written queries (counts
and best values of every study, heartbeat ages) take bound parameters only. Heartbeat ages are
computed by the database from its own clock, as Optuna's stale check does, so the clocks and
time zones of the machines involved do not matter.

:func:`fail_stale` is the one function that writes: it fails stale RUNNING trials exactly as a
worker would, under the same lock, so a trial is never failed or retried twice.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.output import plural
from storage import backend, optuna_access, records, states
from storage.errors import StorageError, StudyNotFound
from storage.url import is_sqlite, mask_url, sqlite_path
from workers import stageplan
from workers.knobs import canonical_name
from workers.record import SUMMARY_ATTRS, Curve, Diagnostics, Timings, read_record, summary_attrs
from workers.space import SearchSpace, SpaceError

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
# What the views count: the states, with diverged trials (stored PRUNED) apart from pruned ones.
OUTCOMES = ("COMPLETE", "PRUNED", "DIVERGED", "FAIL", "RUNNING", "WAITING")

# Keys of a row of `hpo studies`, in order.
STUDY_KEYS = (
    "study", "campaign", "stage", "stages", "status", "budget", "epochs",
    *(outcome.lower() for outcome in OUTCOMES), "best", "direction", "test_accuracy",
)

# Columns of `hpo trials`: shown by default (parameters go between "value" and "duration") ...
TRIAL_COLUMNS = ("number", "state", "value", "duration", "worker", "reason")
# ... and available to --columns / --sort / --where: the stage (shown by default when a campaign is
# listed), more of the record, and the record's summary (workers.record.SUMMARY_ATTRS: final
# training loss, best epoch, diverged, the largest dead and saturated fractions over the layers,
# the largest and smallest update/weight ratios).
EXTRA_TRIAL_COLUMNS = tuple(dict.fromkeys((
    "stage", "seed", "train_accuracy", "train_seconds", "overhead_seconds", "retry_of", "started", "completed",
    *SUMMARY_ATTRS,
)))
# The record's largest attrs, which no column of `hpo trials` reads: a listing leaves them unread.
UNLISTED_ATTRS = ("histograms", "config")
OPERATORS = ("!=", "<=", ">=", "==", "=", "<", ">")  # longest first, so "<=" is not read as "<"
# The key of a trial row listing its parameter columns that do not apply to it (no column).
NOT_APPLICABLE = "not_applicable"


class QueryError(ValueError):
    """A bad state, filter, column or trial number given by the user."""


# -- opening and naming ------------------------------------------------------------------------
def open_for_reading(url: str) -> BaseStorage:
    """A storage at ``url`` that only reads (``backend.open_reader``: no ORM, no Alembic, no
    schema-version check; a command that reads checks the version when a read fails, see
    ``hpo.cli_inspect.opened``). A SQLite file that does not exist is an error, not created."""
    _refuse_missing_file(url)
    return backend.open_reader(url)


def open_for_changes(url: str) -> RDBStorage:
    """The storage at ``url`` with heartbeats, its schema's version checked: for
    :func:`fail_stale`, the one view that writes."""
    _refuse_missing_file(url)
    return backend.open_storage(url, heartbeat=True)


def _refuse_missing_file(url: str) -> None:
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None and not os.path.exists(path):
            raise StorageError(f"no database at {mask_url(url)}: nothing to inspect yet")


def resolve_study(storage: BaseStorage, name: str) -> tuple[str, str | None]:
    """``(study name, campaign)``: a study of that name, else the newest stage of that campaign.

    ``campaign`` is None when ``name`` named a study.
    """
    try:
        storage.get_study_id_from_name(name)
        return name, None
    except KeyError:
        pass
    stages = stageplan.campaign_stages(storage, name)
    if stages:
        return stages[-1].study_name, name
    raise StudyNotFound(f"no study named {name!r} in this storage")


class StageRef(NamedTuple):
    """A study to read, and where it stands in its campaign."""

    stage: int | None  # 1-based; None for a study hpo did not create
    study: str


def resolve_stages(storage: BaseStorage, name: str, stage: int | None = None) -> tuple[str | None, list[StageRef]]:
    """``(campaign, stages)``: the study of that name, else every stage of that campaign in
    order, or only its stage ``stage``.

    ``campaign`` is None when ``name`` named a study (a study of exactly that name wins, as in
    :func:`resolve_study`). QueryError for a stage the campaign does not have, or a stage asked
    of a study; StudyNotFound when there is neither."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        plans = stageplan.campaign_stages(storage, name)
        if not plans:
            raise StudyNotFound(f"no study named {name!r} in this storage") from None
        if stage is not None:
            picked = [plan for plan in plans if plan.stage == stage]
            if not picked:
                have = ", ".join(str(plan.stage) for plan in plans)
                raise QueryError(f"campaign {name!r} has no stage {stage}; its stages are {have}") from None
            plans = picked
        return name, [StageRef(plan.stage, plan.study_name) for plan in plans]
    if stage is not None:
        raise QueryError(f"{name!r} is a study, not a campaign: name the campaign to pick stage {stage}")
    plan = stageplan.read_plan(storage, name)
    return None, [StageRef(plan.stage if plan else None, name)]


# -- hpo studies -------------------------------------------------------------------------------
def list_studies(storage: BaseStorage) -> list[dict[str, Any]]:
    """One row per study: campaign stages first (by campaign, then stage), then plain studies.

    Keys: STUDY_KEYS; ``test_accuracy`` is the campaign's final test accuracy (on its last stage).
    Plan keys are None for studies that hpo did not create. ``pruned`` counts the trials the
    pruner stopped, ``diverged`` those whose training diverged (Optuna stores both as PRUNED).
    Counts and best values come from two grouped queries, not from reading every trial.
    """
    counts = records.count_outcomes_by_study(storage)
    extremes = records.value_extremes_by_study(storage)
    rows = []
    for study in storage.get_all_studies():
        attrs = study.user_attrs
        plan = stageplan.plan_from_attr(attrs.get(records.PLAN_ATTR))
        result = attrs.get(records.RESULT_ATTR)
        study_counts = counts.get(optuna_access.study_id(study), {})
        rows.append({
            "study": study.study_name,
            "campaign": plan.campaign if plan else None,
            "stage": plan.stage if plan else None,
            "stages": plan.stages if plan else None,
            "status": attrs.get(records.STATUS_ATTR),
            "budget": plan.trials if plan else None,
            "epochs": plan.epochs if plan else None,
            **{outcome.lower(): study_counts.get(outcome, 0) for outcome in OUTCOMES},
            "best": _best_of(study.directions, extremes.get(optuna_access.study_id(study))),
            "direction": "/".join(d.name.lower() for d in study.directions),
            "test_accuracy": result.get("test_accuracy") if isinstance(result, dict) else None,
        })
    rows.sort(key=lambda r: (r["campaign"] is None, r["campaign"] or "", r["stage"] or 0, r["study"]))
    return rows


def _best_of(directions: Sequence[StudyDirection], extremes: tuple[float, float] | None) -> float | None:
    if extremes is None or len(directions) != 1:
        return None
    return extremes[0] if directions[0] == StudyDirection.MAXIMIZE else extremes[1]


# -- hpo trials --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """One ``--where`` filter: ``column op text``. Numbers compare as numbers, text as text
    (case-insensitive); a trial without a value for the column matches only ``!=``."""

    column: str
    op: str
    text: str

    def matches(self, row: dict[str, Any]) -> bool:
        value = row.get(self.column)
        if value is None:
            return self.op == "!="
        wanted, actual = _number(self.text), _number(value)
        if wanted is not None and actual is not None:
            return _compare(actual, self.op, wanted)
        if self.op in ("=", "!="):
            same = _text(value) == self.text.strip().casefold()
            return same if self.op == "=" else not same
        return False  # an ordering filter on a value that is not a number


def parse_where(text: str) -> Condition:
    """``"learning_rate>1e-3"`` -> Condition("learning_rate", ">", "1e-3")."""
    pattern = r"^\s*([^=!<>]+?)\s*(" + "|".join(re.escape(op) for op in OPERATORS) + r")\s*(.*?)\s*$"
    match = re.match(pattern, text)
    if not match or not match.group(3):
        raise QueryError(f"bad filter {text!r}: use COLUMN=VALUE, or one of != < <= > >= instead of =")
    column, op, value = match.groups()
    op = "=" if op == "==" else op
    if op in ("<", "<=", ">", ">=") and _number(value) is None:
        raise QueryError(f"bad filter {text!r}: {op!r} needs a number, got {value!r}")
    return Condition(column, op, value)


def parse_states(text: str | None) -> tuple[TrialState, ...] | None:
    """``"complete,pruned"`` -> the trial states (None: every state)."""
    if not text:
        return None
    states = []
    for name in (part.strip().upper() for part in text.split(",") if part.strip()):
        if name not in STATES:
            raise QueryError(f"unknown state {name.lower()!r}: use {', '.join(s.lower() for s in STATES)}")
        states.append(TrialState[name])
    return tuple(states)


@dataclass(frozen=True)
class TrialSelection:
    study: str  # the study listed, or the campaign whose stages are listed
    rows: list[dict[str, Any]]  # after filter, sort and limit
    columns: list[str]  # the columns to show, in order
    matched: int  # trials that passed the filters (before --limit)
    total: int  # trials in the study (or the stages) in the chosen states
    campaign: str | None = None  # the campaign named (None when a study was)
    stages: tuple[int | None, ...] = ()  # the stages listed


def select_trials(
    storage: BaseStorage,
    name: str,
    *,
    states: str | None = None,
    where: Iterable[str] = (),
    sort: str | None = None,
    limit: int | None = None,
    columns: str | None = None,
    stage: int | None = None,
) -> TrialSelection:
    """Rows of ``hpo trials``: filter by state and ``where``, sort, limit, choose columns.

    ``name`` is a study, or a campaign: then the trials of every stage (of stage ``stage``
    only, when given), stage by stage, with a ``stage`` column first. ``sort`` is a column
    name, ``-name`` for descending; trials without a value sort last (ties keep stage and
    number order). ``columns`` is a comma list. An unknown state, column, stage or bad filter
    raises QueryError.
    """
    conditions = [parse_where(w) for w in where]
    wanted_states = parse_states(states)
    campaign, stages = resolve_stages(storage, name, stage)
    read = [(ref, _read_trials(storage, ref.study, wanted_states)) for ref in stages]
    params: dict[str, str] = {}
    for ref, trials in read:
        params.update(_param_names(storage, ref.study, trials))
    spaces = {ref.study: stage_space(storage, ref.study) for ref in stages}
    rows = [trial_row(t, params, stage=ref.stage, space=spaces[ref.study]) for ref, trials in read for t in trials]
    default = [*(["stage"] if campaign else []), *TRIAL_COLUMNS[:3], *params.values(), *TRIAL_COLUMNS[3:]]
    known = list(dict.fromkeys([*default, *EXTRA_TRIAL_COLUMNS]))
    conditions = [replace(c, column=_column(c.column, known)) for c in conditions]
    selected = [row for row in rows if all(c.matches(row) for c in conditions)]
    if sort:
        descending = sort.startswith("-")
        key = _column(sort[1:] if descending else sort, known)
        selected = _sorted(selected, key, descending)
    shown = default
    if columns is not None:
        shown = [_column(c.strip(), known) for c in columns.split(",") if c.strip()]
        if not shown:
            raise QueryError(f"--columns {columns!r} names no column; the columns are: {', '.join(known)}")
    matched = len(selected)
    if limit is not None:
        selected = selected[:limit]
    listed = campaign if campaign and stage is None else stages[0].study
    return TrialSelection(listed, selected, shown, matched, len(rows), campaign, tuple(ref.stage for ref in stages))


def _read_trials(storage: BaseStorage, study_name: str, wanted: Sequence[TrialState] | None) -> list[FrozenTrial]:
    """The study's trials in number order (in the chosen states), read in two queries, without
    the attrs no column shows (UNLISTED_ATTRS)."""
    trials = records.read_all_trials(storage, storage.get_study_id_from_name(study_name), omit_user_attrs=UNLISTED_ATTRS)
    return trials if wanted is None else [t for t in trials if t.state in wanted]


def trial_row(trial: FrozenTrial, params: dict[str, str], stage: int | None = None,
              space: SearchSpace | None = None) -> dict[str, Any]:
    """The flat row of one trial; ``params`` maps parameter names to their column names,
    ``stage`` is the trial's stage in its campaign. The diagnostic summaries are the record's
    (``workers.record.summary_attrs``), derived again so older trials have them too. A
    parameter the trial did not sample because its condition in its stage's ``space`` does
    not hold is None like any missing value, and its column is listed under
    ``NOT_APPLICABLE`` (a table shows it as "n/a", not as blank or a default)."""
    record = read_record(trial)
    timings = record.timings or Timings()
    values = trial_params(trial)
    summary = summary_attrs(record)
    return {
        "stage": stage,
        "number": trial.number,
        "state": record.state,
        "value": record.value,
        **{column: values.get(param) for param, column in params.items()},
        "duration": trial.duration.total_seconds() if trial.duration is not None else None,
        "worker": record.worker,
        "reason": record.reason,
        "seed": record.seed,
        "train_accuracy": record.train_accuracy,
        "overhead_seconds": timings.overhead_seconds,
        "retry_of": trial.system_attrs.get("failed_trial"),
        "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
        "completed": trial.datetime_complete.isoformat(timespec="seconds") if trial.datetime_complete else None,
        **{key: summary.get(key) for key in SUMMARY_ATTRS},  # train_seconds among them
        NOT_APPLICABLE: [column for param, column in params.items() if not_applicable(space, param, values)],
    }


def stage_space(storage: BaseStorage, study_name: str) -> SearchSpace | None:
    """The search space of an hpo stage (None for a study hpo did not create, or a plan that
    cannot be read)."""
    plan = stageplan.read_plan(storage, study_name)
    try:
        return SearchSpace.from_dict(plan.space) if plan is not None else None
    except SpaceError:
        return None


def not_applicable(space: SearchSpace | None, name: str, params: dict[str, Any]) -> bool:
    """Whether parameter ``name`` is missing from a trial's sampled ``params`` because its
    condition in ``space`` does not hold (momentum for a trial of adam)."""
    return (space is not None and bool(params) and name not in params and name in space
            and not space.applies(name, params))


def not_applicable_names(space: SearchSpace | None, params: dict[str, Any]) -> list[str]:
    """The parameters of ``space`` a trial with these ``params`` did not sample because they do
    not apply to it, in the space's order (what a table shows as n/a)."""
    return [name for name in (space or ()) if not_applicable(space, name, params)]


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters; for a queued (WAITING) trial, the ones it was queued with."""
    if trial.params or trial.state != TrialState.WAITING:
        return dict(trial.params)
    fixed = trial.system_attrs.get("fixed_params")
    return dict(fixed) if isinstance(fixed, dict) else {}


def _param_names(storage: BaseStorage, study_name: str, trials: Sequence[FrozenTrial]) -> dict[str, str]:
    """Parameter name -> column name, in the order of the stage's space, then of appearance.

    A parameter named like a fixed column (say "state") gets the column ``param:state``.
    """
    plan = stageplan.read_plan(storage, study_name)
    names = dict.fromkeys(list((plan.space.get("params") or {}) if plan else ()))
    for trial in trials:
        names.update(dict.fromkeys(trial_params(trial)))
    fixed = set(TRIAL_COLUMNS) | set(EXTRA_TRIAL_COLUMNS)
    return {name: f"param:{name}" if name in fixed else name for name in names}


def _column(column: str, known: Sequence[str]) -> str:
    """The column ``column`` names: itself, or the parameter its short alias stands for
    (``lr`` -> learning_rate, the knob table's rule); QueryError if there is none."""
    if column not in known:
        column = canonical_name(column) or column
    if column not in known:
        raise QueryError(f"unknown column {column!r}; columns are: {', '.join(known)}")
    return column


def _sorted(rows: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    present = [r for r in rows if r.get(column) is not None]
    missing = [r for r in rows if r.get(column) is None]

    def key(row: dict[str, Any]) -> tuple:
        number = _number(row[column])
        return (0, number, "") if number is not None else (1, 0.0, _text(row[column]))

    return sorted(present, key=key, reverse=descending) + missing


def _number(value: Any) -> float | None:
    """``value`` as a number if it is one (or text that reads as one); booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if not math.isnan(number) else None
    return None


def _text(value: Any) -> str:
    return str(value).strip().casefold()


def _compare(actual: float, op: str, wanted: float) -> bool:
    if op in ("=", "!="):
        same = math.isclose(actual, wanted, rel_tol=1e-9, abs_tol=0.0) or actual == wanted
        return same if op == "=" else not same
    return {"<": actual < wanted, "<=": actual <= wanted, ">": actual > wanted, ">=": actual >= wanted}[op]


# -- hpo trial ---------------------------------------------------------------------------------
def trial_record(storage: BaseStorage, name: str, number: int) -> dict[str, Any]:
    """Everything stored about one trial, as Optuna holds it, plus its retry links.

    Keys: study, number, state, value, params, datetime_start, datetime_complete,
    duration_seconds, heartbeat_age_seconds (RUNNING trials), intermediate_values (step ->
    value), user_attrs (as stored: workers.record describes them), system_attrs, retry
    {retry_of, history, retried_as}.
    """
    study_name, _ = resolve_study(storage, name)
    study_id = storage.get_study_id_from_name(study_name)
    try:  # one trial read, not the study's every trial
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    except KeyError:
        n = storage.get_n_trials(study_id)
        raise QueryError(f"no trial {number} in {study_name!r} (it has {plural(n, 'trial')}, numbered from 0)") from None
    ages = {hb["number"]: hb["age"] for hb in records.running_heartbeats(storage, study_id)}
    return {
        "study": study_name,
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value if trial.values is not None and len(trial.values) == 1 else None,
        "params": trial_params(trial),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "duration_seconds": trial.duration.total_seconds() if trial.duration is not None else None,
        "heartbeat_age_seconds": ages.get(trial.number),
        "intermediate_values": {str(step): v for step, v in sorted(trial.intermediate_values.items())},
        "user_attrs": dict(trial.user_attrs),
        "system_attrs": dict(trial.system_attrs),
        "retry": {
            "retry_of": trial.system_attrs.get("failed_trial"),
            "history": list(trial.system_attrs.get("retry_history", [])),
            "retried_as": records.retries_of(storage, study_id, trial.number),
        },
    }


def summary_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """``field``/``value`` rows of a trial record for a table: what a person checks first."""
    stored = read_record(record["user_attrs"])
    timings = stored.timings or Timings()
    retry = record["retry"]
    items = {
        "state": record["state"],
        "value": record["value"],
        "reason": stored.reason,
        "train_accuracy": stored.train_accuracy,
        "fold_values": list(stored.fold_values) if stored.fold_values is not None else None,
        "seed": stored.seed,
        "worker": stored.worker,
        "started": record["datetime_start"],
        "duration_seconds": record["duration_seconds"],
        "train_seconds": timings.train_seconds,
        "overhead_seconds": timings.overhead_seconds,
        "heartbeat_age_seconds": record["heartbeat_age_seconds"],
        "retry_of": retry["retry_of"],
        "retry_history": retry["history"] or None,
        "retried_as": retry["retried_as"] or None,
        "seeded_from": stored.seeded_from,
    }
    return [{"field": k, "value": v} for k, v in items.items() if v is not None]


def curve_rows(curve: Curve | None) -> list[dict[str, Any]]:
    """A trial's learning curve as one row per epoch {epoch, val_accuracy, train_loss}
    (series of unequal length are padded with None)."""
    if curve is None:
        return []
    series = curve.to_json()
    length = max(len(v) for v in series.values())
    return [{k: (v[i] if i < len(v) else None) for k, v in series.items()} for i in range(length)]


def layer_rows(diagnostics: Diagnostics | dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-layer diagnostics as one row per hidden layer: a trial record's, or the dict
    training returns (``hpo train``)."""
    if not isinstance(diagnostics, Diagnostics):
        diagnostics = Diagnostics.from_json(diagnostics)
    return [layer.to_json() for layer in diagnostics.layers] if diagnostics else []


# The layer measures that are fractions of a layer's units (0..1), and the heading of the bar a
# table draws next to each.
LAYER_FRACTION_BARS = {"dead_fraction": "dead", "saturation_fraction": "saturated"}


def row_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, in order of appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


# -- hpo best ----------------------------------------------------------------------------------
def best_trials(storage: BaseStorage, name: str, top: int = 5) -> dict[str, Any]:
    """The ``top`` best COMPLETE trials; for a campaign name also its final result.

    Keys: study, campaign (None when ``name`` named a study), direction, trials (each: rank,
    number, value, params, seed, train_accuracy), final (the campaign's ``hpo_result`` or None).
    """
    study_name, campaign = resolve_study(storage, name)
    study_id = storage.get_study_id_from_name(study_name)
    directions = storage.get_study_directions(study_id)
    if len(directions) != 1:
        raise QueryError(f"{study_name!r} has {len(directions)} objectives: 'best' needs a single objective")
    maximize = directions[0] == StudyDirection.MAXIMIZE
    complete = [t for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    final = records.study_attrs(storage, study_name).get(records.RESULT_ATTR) if campaign else None
    return {
        "study": study_name,
        "campaign": campaign,
        "direction": directions[0].name.lower(),
        "trials": [
            {
                "rank": rank,
                "number": t.number,
                "value": t.value,
                "params": dict(t.params),
                "seed": record.seed,
                "train_accuracy": record.train_accuracy,
            }
            for rank, (t, record) in enumerate(((t, read_record(t)) for t in complete[:top]), start=1)
        ],
        "final": final,
    }


# -- hpo health --------------------------------------------------------------------------------
def study_health(storage: BaseStorage, name: str, grace: float | None = None) -> dict[str, Any]:
    """How a study is doing: counts, RUNNING trials and their heartbeats, workers, time spent.

    A RUNNING trial is stale when its last heartbeat is older than ``grace`` seconds (default:
    the workers' HEARTBEAT_GRACE); ``hpo fail-stale`` or the next worker fails it.

    Keys: study, grace_seconds, counts {outcome: n} (OUTCOMES: the states, with diverged trials
    apart from pruned ones), running [{number, worker, heartbeat_age, stale}], stale [numbers],
    workers [{worker, trials, complete, pruned, diverged, fail, mean_train_seconds,
    mean_overhead_seconds}], time {train_seconds, overhead_seconds, overhead_fraction}, retries
    (trials that are retries of failed ones).
    """
    grace = backend.HEARTBEAT_GRACE if grace is None else grace
    study_name, _ = resolve_study(storage, name)
    study_id = storage.get_study_id_from_name(study_name)
    beats = records.running_heartbeats(storage, study_id)
    trials = records.read_all_trials(storage, study_id)
    by_number = {t.number: t for t in trials}
    counts = dict.fromkeys(OUTCOMES, 0)
    for t in trials:
        counts[_outcome(t)] = counts.get(_outcome(t), 0) + 1
    running = []
    for beat in beats:
        trial = by_number.get(beat["number"])
        running.append({
            "number": beat["number"],
            "worker": read_record(trial).worker if trial else None,
            "heartbeat_age": beat["age"],
            "stale": beat["age"] is not None and beat["age"] > grace,
        })
    workers: dict[str, dict[str, Any]] = {}
    train_total = overhead_total = 0.0
    for t in trials:
        record = read_record(t)
        if record.worker is None:
            continue
        timings = record.timings or Timings()
        entry = workers.setdefault(record.worker, {"worker": record.worker, "trials": 0, "complete": 0, "pruned": 0, "diverged": 0, "fail": 0, "_train": [], "_overhead": []})
        entry["trials"] += 1
        if _outcome(t).lower() in ("complete", "pruned", "diverged", "fail"):
            entry[_outcome(t).lower()] += 1
        if timings.train_seconds is not None:
            entry["_train"].append(float(timings.train_seconds))
            train_total += float(timings.train_seconds)
        if timings.overhead_seconds is not None:
            entry["_overhead"].append(float(timings.overhead_seconds))
            overhead_total += float(timings.overhead_seconds)
    worker_rows = []
    for entry in sorted(workers.values(), key=lambda e: e["worker"]):
        train, overhead = entry.pop("_train"), entry.pop("_overhead")
        entry["mean_train_seconds"] = round(sum(train) / len(train), 4) if train else None
        entry["mean_overhead_seconds"] = round(sum(overhead) / len(overhead), 4) if overhead else None
        worker_rows.append(entry)
    spent = train_total + overhead_total
    return {
        "study": study_name,
        "grace_seconds": grace,
        "counts": counts,
        "running": running,
        "stale": [r["number"] for r in running if r["stale"]],
        "workers": worker_rows,
        "time": {
            "train_seconds": round(train_total, 4),
            "overhead_seconds": round(overhead_total, 4),
            "overhead_fraction": round(overhead_total / spent, 4) if spent else None,
        },
        "retries": sum(1 for t in trials if "failed_trial" in t.system_attrs),
    }


def _outcome(trial: FrozenTrial) -> str:
    """The trial's state name, or DIVERGED for a PRUNED trial whose training diverged."""
    return "DIVERGED" if states.is_diverged(trial.state.name, trial.user_attrs) else trial.state.name


# -- hpo fail-stale ----------------------------------------------------------------------------
def fail_stale(storage: RDBStorage, url: str, name: str) -> dict[str, Any]:
    """Fail the study's stale RUNNING trials now, queuing the one retry each may get.

    ``storage`` must have heartbeats enabled (``open_storage(url, heartbeat=True)``): its grace
    period decides what is stale and its callback queues the retries. This runs the workers'
    own reaper (``storage.backend.reap_stale_trials``) under the lock they reap under, so a trial
    is failed and retried at most once however many workers and commands look at the same
    time; running it again finds nothing more to do.

    Keys: study, grace_seconds, failed [{number, worker, heartbeat_age, retry (number of the
    queued retry, or None when the trial used up its retries)}], still_running.
    """
    if storage.heartbeat_interval is None:
        raise ValueError("fail_stale needs a storage opened with heartbeats enabled")
    grace = storage.grace_period if storage.grace_period is not None else 2 * storage.heartbeat_interval
    study_name, _ = resolve_study(storage, name)
    study_id = storage.get_study_id_from_name(study_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(study_name=study_name, storage=storage)
        with backend.exclusive(url, study_name, storage.engine):
            running = records.running_heartbeats(storage, study_id)
            backend.reap_stale_trials(study)
            if (plan := stageplan.read_plan(storage, study_name)) is not None:
                stageplan.tidy_closed_stage(storage, plan)
            trials = storage.get_all_trials(study_id, deepcopy=False)
    by_number = {t.number: t for t in trials}
    retries = {origin: retry for _, retry, origin in backend.retry_origins(storage.engine, study_id)}
    failed = [
        {
            "number": b["number"],
            "worker": read_record(by_number[b["number"]]).worker,
            "heartbeat_age": b["age"],
            "retry": retries.get(b["number"]),
        }
        for b in running  # under the lock, a trial that was RUNNING and is now FAIL was reaped here
        if by_number[b["number"]].state == TrialState.FAIL
    ]
    return {
        "study": study_name,
        "grace_seconds": grace,
        "failed": failed,
        "still_running": sum(1 for t in trials if t.state == TrialState.RUNNING),
    }

"""Everything a report shows, read from storage once into plain, typed data.

:func:`collect` reads a campaign (every stage study, in order) or a single study: each stage's
plan and status, its searched ranges and the ranges its child stage narrowed them to (with the
narrowing's reasons, from the child's lineage), every trial's record (``workers.record``), its
outcome (diverged trials apart from pruned ones), times and retries, each stage's parameter
importances (Optuna's public importance API), and the campaign's final result.

Sections (:mod:`hpo.report.sections`) only read this data; nothing here draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from hpo.importance import param_importances
from storage import records, states
from storage.errors import StudyNotFound
from storage.url import mask_url
from workers import stageplan
from workers.record import TrialRecord, read_record
from workers.stageplan import StagePlan

# A study of several objectives: its trials have no single value to draw or rank.
MULTI_OBJECTIVE = "multi-objective"

# Outcomes in the order the report lists them (diverged trials are stored PRUNED).
OUTCOMES = ("COMPLETE", "PRUNED", "DIVERGED", "FAIL", "RUNNING", "WAITING")
FINISHED = ("COMPLETE", "PRUNED", "DIVERGED", "FAIL")


@dataclass(frozen=True)
class TrialView:
    """One trial as the report sees it."""

    stage: int  # 1-based stage of the campaign (1 for a single study)
    study: str
    number: int
    outcome: str  # one of OUTCOMES
    value: float | None  # the objective value (None unless COMPLETE, or PRUNED with one)
    params: Mapping[str, Any]
    record: TrialRecord
    started: datetime | None
    completed: datetime | None
    retry_of: int | None  # the number of the failed trial this one retries

    @property
    def reason(self) -> str | None:
        return self.record.reason

    @property
    def last_accuracy(self) -> float | None:
        """The value, else the last validation accuracy the trial reached (pruned, diverged)."""
        if self.value is not None:
            return self.value
        curve = self.record.curve
        values = [v for v in (curve.val_accuracy if curve else ()) if v is not None]
        return float(values[-1]) if values else None


@dataclass(frozen=True)
class StageView:
    """One stage study: its plan (None for a study hpo did not create), its trials, and how
    its child stage narrowed it."""

    study: str
    stage: int
    plan: StagePlan | None
    status: str | None  # RUNNING, DONE, FAILED (hpo's stage status), None for a plain study
    direction: str  # "maximize", "minimize" or MULTI_OBJECTIVE
    ranges: Mapping[str, Mapping[str, Any]]  # the searched space, as workers.space's to_dict
    trials: tuple[TrialView, ...]
    child_ranges: Mapping[str, Mapping[str, Any]] | None = None  # the next stage's space
    narrowing: tuple[Mapping[str, Any], ...] = ()  # the child's lineage "changes" (name, old_text, new_text, reason)
    importance: Mapping[str, float] | None = None
    importance_note: str | None = None  # why there are no importances

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for trial in self.trials:
            counts[trial.outcome] += 1
        return counts

    @property
    def best(self) -> TrialView | None:
        complete = [t for t in self.trials if t.outcome == "COMPLETE" and t.value is not None]
        if not complete:
            return None
        pick = max if self.direction == "maximize" else min
        return pick(complete, key=lambda t: t.value)

    @property
    def epochs(self) -> int | None:
        return self.plan.epochs if self.plan else None

    @property
    def ended(self) -> bool:
        """Nothing more will happen in it: none of its trials is running or queued, and hpo closed
        it (done, or failed) when it is an hpo stage. (A stage closes when its budget is met,
        possibly with trials still running, which may yet finish.)"""
        busy = any(t.outcome in ("RUNNING", "WAITING") for t in self.trials)
        return not busy and (self.plan is None or self.status in (records.DONE, records.FAILED))


@dataclass(frozen=True)
class ReportData:
    """A campaign (or a single study) as the report shows it."""

    name: str
    campaign: str | None  # None for a single study
    storage: str  # the storage URL, password masked
    stages: tuple[StageView, ...]
    result: Mapping[str, Any] | None = None  # the final retrain (hpo.campaign.FinalResult.to_dict)
    dataset: str | None = None
    planned_stages: int = 1
    failed: str | None = None  # the failure recorded on a stage that stopped the campaign
    seed: int = 0  # the campaign's seed (its data split)
    init_experiment: Mapping[str, Any] | str | None = None  # workers.init_experiment's result, or why it did not run

    @property
    def trials(self) -> list[TrialView]:
        return [t for stage in self.stages for t in stage.trials]

    @property
    def running(self) -> bool:
        """Still going: a trial queued or running, a stage not closed, or stages still to come.
        (The final retrain, seconds after the last stage closes, is not told apart.)"""
        if self.failed:
            return False
        if any(t.outcome in ("RUNNING", "WAITING") for t in self.trials):
            return True
        if self.campaign is None:
            return False
        return len(self.stages) < self.planned_stages or any(s.status == records.RUNNING for s in self.stages)

    @property
    def best(self) -> TrialView | None:
        """The campaign's best trial: the one its final retrain took, else the best complete
        trial of the last stage that has one."""
        if self.result:
            for trial in self.trials:
                if trial.study == self.result.get("study") and trial.number == self.result.get("trial"):
                    return trial
        for stage in reversed(self.stages):
            if stage.best is not None:
                return stage.best
        return None

    @property
    def workers(self) -> list[str]:
        # A queued retry carries the failed trial's attrs, its worker too: count trials that started.
        return sorted({t.record.worker for t in self.trials if t.record.worker and t.started})

    @property
    def wall_seconds(self) -> float | None:
        """From the first trial's start to the last trial's end (the final retrain not included)."""
        starts = [t.started for t in self.trials if t.started]
        ends = [t.completed for t in self.trials if t.completed]
        return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def outcome(trial: FrozenTrial) -> str:
    return "DIVERGED" if states.is_diverged(trial.state.name, trial.user_attrs) else trial.state.name


def _retry_of(trial: FrozenTrial) -> int | None:
    history = trial.system_attrs.get("retry_history")
    return history[-1] if isinstance(history, list) and history and isinstance(history[-1], int) else None


def _trial_view(stage: int, study: str, trial: FrozenTrial) -> TrialView:
    record = read_record(trial)
    value = record.value
    return TrialView(
        stage=stage,
        study=study,
        number=trial.number,
        outcome=outcome(trial),
        value=float(value) if value is not None else None,
        params=dict(trial.params),
        record=record,
        started=trial.datetime_start,
        completed=trial.datetime_complete,
        retry_of=_retry_of(trial),
    )


def distribution_range(distribution: Any) -> dict[str, Any] | None:
    """A trial distribution as a range in workers.space's to_dict form."""
    if isinstance(distribution, FloatDistribution):
        return {"type": "float", "low": distribution.low, "high": distribution.high, "log": distribution.log}
    if isinstance(distribution, IntDistribution):
        return {"type": "int", "low": distribution.low, "high": distribution.high, "log": distribution.log, "step": distribution.step}
    if isinstance(distribution, CategoricalDistribution):
        return {"type": "choice", "choices": list(distribution.choices)}
    return None


def _ranges_of_trials(trials: Sequence[FrozenTrial]) -> dict[str, dict[str, Any]]:
    """The searched space of a study hpo did not plan: the last distribution seen per name."""
    ranges: dict[str, dict[str, Any]] = {}
    for trial in trials:
        for name, distribution in trial.distributions.items():
            if (spec := distribution_range(distribution)) is not None:
                ranges[name] = spec
    return ranges


def _stage_view(storage: BaseStorage, study_name: str, stage: int, *, importance: bool) -> StageView:
    study_id = storage.get_study_id_from_name(study_name)
    attrs = storage.get_study_user_attrs(study_id)
    plan = stageplan.plan_from_attr(attrs.get(records.PLAN_ATTR))
    frozen = records.read_all_trials(storage, study_id)
    directions = storage.get_study_directions(study_id)
    trials = tuple(_trial_view(stage, study_name, t) for t in sorted(frozen, key=lambda t: t.number))
    if plan is not None:
        ranges = dict(plan.space.get("params", {}))
    else:
        ranges = _ranges_of_trials(frozen)
    scores, note = param_importances(frozen, directions) if importance else (None, None)
    return StageView(
        study=study_name,
        stage=stage,
        plan=plan,
        status=attrs.get(records.STATUS_ATTR) if isinstance(attrs.get(records.STATUS_ATTR), str) else None,
        direction=directions[0].name.lower() if len(directions) == 1 else MULTI_OBJECTIVE,
        ranges=ranges,
        trials=trials,
        importance=scores,
        importance_note=note,
    )


def _with_child(stage: StageView, child: StagePlan) -> StageView:
    """``stage`` with the ranges its child stage searches and the narrowing that produced them."""
    lineage = child.lineage
    changes = lineage.get("changes") if isinstance(lineage, Mapping) else None
    rows = tuple(c for c in changes if isinstance(c, Mapping)) if isinstance(changes, list) else ()
    return StageView(**{**stage.__dict__, "child_ranges": dict(child.space.get("params", {})), "narrowing": rows})


def collect(storage: BaseStorage, url: str, name: str, *, importance: bool = True) -> ReportData:
    """The report's data for campaign ``name`` (all its stages) or the study of that name.

    A study of exactly that name wins over a campaign (as everywhere in hpo). StudyNotFound
    when neither exists."""
    try:
        study_id = storage.get_study_id_from_name(name)
        # A stage study reported alone keeps its stage's number.
        own_plan = stageplan.plan_from_attr(storage.get_study_user_attrs(study_id).get(records.PLAN_ATTR))
        study_names = [(name, own_plan.stage if own_plan else 1)]
        campaign = None
    except KeyError:
        plans = stageplan.campaign_stages(storage, name)
        if not plans:
            raise StudyNotFound(f"no campaign or study named {name!r} in this storage") from None
        study_names = [(plan.study_name, plan.stage) for plan in plans]
        campaign = name
    stages = [_stage_view(storage, study, stage, importance=importance) for study, stage in study_names]
    if campaign is None and stages[0].plan is not None:
        campaign_of_study = stages[0].plan.campaign
    else:
        campaign_of_study = campaign
    if campaign is None and stages[0].plan is not None:  # a stage study alone: its child, if planned
        plan = stages[0].plan
        try:
            child = stageplan.read_plan(storage, stageplan.stage_study_name(plan.campaign, plan.stage + 1))
        except StudyNotFound:
            child = None
        if child is not None:
            stages[0] = _with_child(stages[0], child)
    for i in range(len(stages) - 1):
        if stages[i + 1].plan is not None:
            stages[i] = _with_child(stages[i], stages[i + 1].plan)
    result = None
    failed = None
    for stage in stages:
        attrs = records.study_attrs(storage, stage.study)
        if isinstance(attrs.get(records.RESULT_ATTR), Mapping):
            result = dict(attrs[records.RESULT_ATTR])
        if stage.status == records.FAILED:
            failure = attrs.get(records.FAILURE_ATTR)
            failed = f"{stage.study} failed: {failure}" if failure else f"{stage.study} failed"
    first = stages[0].plan
    return ReportData(
        name=name,
        campaign=campaign_of_study if campaign is not None else None,
        storage=mask_url(url),
        stages=tuple(stages),
        result=result,
        dataset=first.dataset if first else None,
        planned_stages=first.stages if first and campaign is not None else len(stages),
        seed=first.seed if first else 0,
        failed=failed,
    )

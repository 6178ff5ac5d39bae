"""A stage of a campaign: its plan, its name, and the rules that decide its course.

A campaign is a chain of stage studies named ``CAMPAIGN/stage-K`` (K = 1, 2, ...). Each stage's
:class:`StagePlan` holds the campaign, its position, the trial budget, the epochs per trial, the
dataset, the search space (as ``workers.space.SearchSpace.to_dict``), the sampler and pruner, the
failure budget and the lineage (parent stage, narrowing rule, source trials, old and new
ranges). The coordinator writes stages; workers only read them and add trials.

``storage.records`` keeps the plan and the stage's state in study attrs; this module decides
what they mean: when a budget is met, when a stage has failed, what a valid name is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage

from storage import backend, records
from storage.errors import StorageError, StudyNotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_STAGE_NAME = re.compile(r"^(?P<campaign>.+)/stage-(?P<stage>[1-9][0-9]*)$")


@dataclass(frozen=True)
class StagePlan:
    """What a stage study is for; everything a worker needs to run its trials."""

    campaign: str
    stage: int  # 1-based position in the campaign
    stages: int  # how many stages the campaign has
    trials: int  # budget: trials that finish with a result (COMPLETE or PRUNED)
    epochs: int
    dataset: str
    space: dict[str, Any]
    sampler: str = "tpe"
    pruner: str = "median"
    cv: int = 0  # 0: the held-out validation split; K >= 2: K-fold CV on the training split
    seed: int = 0
    lineage: dict[str, Any] = field(default_factory=dict)
    # The failure budget: the stage stops when this many trials in a row failed with an
    # error, or when trials failed with an error exceed this share of the budget.
    max_failures_in_a_row: int = 5
    max_failure_share: float = 0.5

    @property
    def study_name(self) -> str:
        return stage_study_name(self.campaign, self.stage)

    @property
    def is_last(self) -> bool:
        return self.stage >= self.stages

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagePlan:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def plan_from_attr(value: Any) -> StagePlan | None:
    """The plan stored in a study's ``hpo`` attr, or None if it does not hold one: another
    program's study may use the same attribute name for something else."""
    if not isinstance(value, dict):
        return None
    try:
        plan = StagePlan.from_dict(value)
    except TypeError:  # a required field is missing
        return None
    ints = (plan.stage, plan.stages, plan.trials, plan.epochs, plan.cv, plan.seed, plan.max_failures_in_a_row)
    well_formed = (
        isinstance(plan.campaign, str) and _NAME.match(plan.campaign) is not None
        and all(type(n) is int for n in ints)
        and min(plan.stage, plan.stages, plan.trials, plan.epochs, plan.max_failures_in_a_row) >= 1
        and isinstance(plan.dataset, str) and isinstance(plan.space, dict)
        and isinstance(plan.sampler, str) and isinstance(plan.pruner, str)
        and isinstance(plan.lineage, dict)
        and isinstance(plan.max_failure_share, (int, float)) and 0 < plan.max_failure_share <= 1
    )
    return plan if well_formed else None


# -- the stage's rules: when its budget is met, when it has failed ---------------------------
def budget(plan: StagePlan, attrs: dict[str, Any]) -> int:
    """The trials the stage must finish: its plan's budget less what was cancelled when it was
    closed early (``hpo narrow --force``)."""
    cancelled = attrs.get(records.CANCELLED_ATTR)
    return plan.trials - (cancelled if type(cancelled) is int and 0 <= cancelled <= plan.trials else 0)


def finished_count(counts: dict[str, int]) -> int:
    """Trials that finished with a result (COMPLETE or PRUNED); only these count to a budget.
    ``counts`` as ``storage.records.count_states`` gives them, or ``count_outcomes`` (diverged
    trials, PRUNED in Optuna, apart as DIVERGED)."""
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) + counts.get("DIVERGED", 0)


def is_error(state: str, reason: Any) -> bool:
    """Whether a trial failed with an error of its own: a FAIL with a reason. Trials failed as
    stale or interrupted carry no reason (they are retried); queued trials closed unrun carry
    one that starts with ``backend.NOT_NEEDED``."""
    return state == "FAIL" and bool(reason) and not str(reason).startswith(backend.NOT_NEEDED)


def failure_verdict(plan: StagePlan, outcomes: list[tuple[str, Any]]) -> str | None:
    """Why the stage must stop, or None. ``outcomes``: (state name, reason) of the stage's
    finished trials in the order they finished (COMPLETE, PRUNED and FAIL)."""
    errors = [reason for state, reason in outcomes if is_error(state, reason)]
    if not errors:
        return None
    in_a_row = 0
    for state, reason in reversed(outcomes):
        if state == "FAIL" and not is_error(state, reason):
            continue  # a stale or interrupted trial says nothing about the configuration
        if not is_error(state, reason):
            break
        in_a_row += 1
    last = str(errors[-1])
    if in_a_row >= plan.max_failures_in_a_row:
        return f"{in_a_row} trials in a row failed; the last one: {last}"
    if len(errors) > plan.max_failure_share * plan.trials:
        return (f"{len(errors)} trials failed, more than {plan.max_failure_share:g} of the budget of "
                f"{plan.trials}; the last one: {last}")
    return None


def check_name(name: str) -> str:
    """A campaign name: letters, digits, ``_ . -``; it becomes part of study names and files."""
    if not _NAME.match(name):
        raise StorageError(
            f"invalid campaign name {name!r}: use 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def stage_study_name(campaign: str, stage: int) -> str:
    return f"{campaign}/stage-{stage}"


def parse_stage_name(name: str) -> tuple[str, int] | None:
    """(campaign, stage number) of a stage study's name, or None if it is not one."""
    match = _STAGE_NAME.match(name)
    if not match or not _NAME.match(match["campaign"]):
        return None
    return match["campaign"], int(match["stage"])


# -- stages in the storage ---------------------------------------------------------------------
def ensure_stage(
    storage: BaseStorage,
    plan: StagePlan,
    *,
    queue: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
    attrs: dict[str, Any] | None = None,
) -> tuple[StagePlan, bool]:
    """Create the study of one stage, or finish creating it; returns (its plan, created).

    Written in steps with the plan last (``storage.records.ensure_study``), so a creation cut
    short is finished by the next call. A stage whose plan is written is returned as it is
    stored (adopted: ``hpo narrow`` or another coordinator created it). Call it holding the
    campaign's lock (``backend.exclusive``) when others may create the same stage, and run it
    again after a database error.
    """
    stored, created = records.ensure_study(storage, plan.study_name, plan.to_dict(), queue=queue, attrs=attrs)
    if created:
        return plan, True
    existing = plan_from_attr(stored)
    if existing is None:
        raise StorageError(f"study {plan.study_name!r} exists and was not created by hpo")
    return existing, False


def create_stage(storage: BaseStorage, plan: StagePlan) -> optuna.Study:
    """Create the study of one stage with its plan; refuse if it exists already."""
    _, created = ensure_stage(storage, plan)
    if not created:
        raise StorageError(f"stage {plan.study_name!r} exists already")
    return optuna.load_study(study_name=plan.study_name, storage=storage)


def read_plan(storage: BaseStorage, study_name: str) -> StagePlan | None:
    """The plan of a stage study, or None for a study that hpo did not create (or has not
    finished creating). StudyNotFound if there is no such study."""
    return plan_from_attr(records.study_attrs(storage, study_name).get(records.PLAN_ATTR))


def list_campaigns(storage: BaseStorage) -> dict[str, list[StagePlan]]:
    """Every campaign in the storage with its stages in order."""
    campaigns: dict[str, list[StagePlan]] = {}
    for _, attrs in records.all_study_user_attrs(storage):
        plan = plan_from_attr(attrs.get(records.PLAN_ATTR))
        if plan is not None:
            campaigns.setdefault(plan.campaign, []).append(plan)
    return {name: sorted(plans, key=lambda p: p.stage) for name, plans in sorted(campaigns.items())}


def campaign_stages(storage: BaseStorage, campaign: str) -> list[StagePlan]:
    """The stages created so far, in order (the last one is the current stage)."""
    stages = []
    for stage in range(1, 1000):
        try:
            plan = read_plan(storage, stage_study_name(campaign, stage))
        except StudyNotFound:
            break
        if plan is not None:
            stages.append(plan)
    return stages


def close_stage(storage: BaseStorage, plan: StagePlan, reason: str) -> None:
    """Close a stage (idempotent): fail its queued trials with ``reason`` (nothing will run
    them), record as cancelled the part of its budget that neither finished nor runs (a stage
    closed early), and mark it done unless it failed. Call it holding the stage's lock
    (``backend.exclusive(url, plan.study_name)``), so no worker claims a trial meanwhile."""
    records.fail_waiting_trials(storage, plan.study_name, reason)
    counts = records.count_states(storage, plan.study_name)
    cancelled = max(0, plan.trials - finished_count(counts) - counts.get("RUNNING", 0))
    attrs = records.study_attrs(storage, plan.study_name)
    if attrs.get(records.CANCELLED_ATTR, 0) != cancelled:
        records.set_study_attr(storage, plan.study_name, records.CANCELLED_ATTR, cancelled)
    if attrs.get(records.STATUS_ATTR) not in (records.DONE, records.FAILED):
        records.set_study_attr(storage, plan.study_name, records.STATUS_ATTR, records.DONE)


def tidy_closed_stage(storage: BaseStorage, plan: StagePlan) -> None:
    """After a trial of a stage was failed and queued again (a stop, a reaper): if the stage is
    closed already, nothing will run that retry, so close it as not needed (and count it as
    cancelled) rather than leave it WAITING. Call it holding the stage's lock."""
    status = records.study_attrs(storage, plan.study_name).get(records.STATUS_ATTR)
    if status in (records.DONE, records.FAILED):
        close_stage(storage, plan, f"{backend.NOT_NEEDED}: the stage was closed")

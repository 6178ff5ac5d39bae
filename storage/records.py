"""Campaigns and stages as Optuna studies, so Optuna and optuna-dashboard read them as they are.

A campaign is a chain of stage studies named ``CAMPAIGN/stage-K`` (K = 1, 2, ...). Each stage
study carries its plan in the user attr ``hpo``: the campaign, its position, the trial budget,
the epochs per trial, the dataset, the search space (as ``workers.space.SearchSpace.to_dict``),
the sampler and pruner, and the lineage (parent stage, narrowing rule, source trials, old and
new ranges). The coordinator writes stages; workers only read them and add trials.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from storage import backend
from storage.errors import CampaignNotFound, StorageError, StudyNotFound

PLAN_ATTR = "hpo"  # a stage's plan; written last when a stage is created: it publishes the stage
RESULT_ATTR = "hpo_result"  # on the last stage: the final retrain's result, written once
STATUS_ATTR = "hpo_status"  # RUNNING, DONE or FAILED
CAMPAIGN_ATTR = "hpo_campaign"  # on stage 1: the whole campaign's plan (hpo.campaign.CampaignPlan)
CANCELLED_ATTR = "hpo_cancelled"  # trials of the budget cancelled when the stage was closed early
FAILURE_ATTR = "hpo_failure"  # why a FAILED stage stopped, one line

RUNNING, DONE, FAILED = "running", "done", "failed"
STAGE_STATE_ATTRS = (STATUS_ATTR, CANCELLED_ATTR, FAILURE_ATTR)  # what a claim reads of its stage
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


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
    cancelled = attrs.get(CANCELLED_ATTR)
    return plan.trials - (cancelled if type(cancelled) is int and 0 <= cancelled <= plan.trials else 0)


def finished_count(counts: dict[str, int]) -> int:
    """Trials that finished with a result (COMPLETE or PRUNED); only these count to a budget.
    ``counts`` as :func:`count_states` gives them, or :func:`count_outcomes` (diverged trials,
    PRUNED in Optuna, apart as DIVERGED)."""
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


def ensure_stage(
    storage: BaseStorage,
    plan: StagePlan,
    *,
    queue: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
    attrs: dict[str, Any] | None = None,
) -> tuple[StagePlan, bool]:
    """Create the study of one stage, or finish creating it; returns (its plan, created).

    A stage is written in steps (the study, its queued trials, its attrs, its plan), and the
    plan goes last: a study without a plan is a stage whose creation was cut short, which
    workers do not see and the next call finishes; the queued trials (``queue``: parameters
    and user attrs) are skipped where they exist already. A stage whose plan is written is
    returned as it is stored (adopted: ``hpo narrow`` or another coordinator created it).
    Call it holding the campaign's lock (``backend.exclusive``) when others may create the
    same stage, and run it again after a database error.
    """
    try:
        study = optuna.create_study(storage=storage, study_name=plan.study_name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=plan.study_name, storage=storage)
        stored = study.user_attrs
        if PLAN_ATTR in stored:
            existing = plan_from_attr(stored[PLAN_ATTR])
            if existing is None:
                raise StorageError(f"study {plan.study_name!r} exists and was not created by hpo") from None
            return existing, False
    for params, user_attrs in queue:
        study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=True)
    for key, value in (attrs or {}).items():
        study.set_user_attr(key, value)
    study.set_user_attr(STATUS_ATTR, RUNNING)
    study.set_user_attr(PLAN_ATTR, plan.to_dict())
    return plan, True


def create_stage(storage: BaseStorage, plan: StagePlan) -> optuna.Study:
    """Create the study of one stage with its plan; refuse if it exists already."""
    _, created = ensure_stage(storage, plan)
    if not created:
        raise StorageError(f"stage {plan.study_name!r} exists already")
    return optuna.load_study(study_name=plan.study_name, storage=storage)


def read_plan(storage: BaseStorage, study_name: str) -> StagePlan | None:
    """The plan of a stage study, or None for a study that hpo did not create (or has not
    finished creating)."""
    study_id = _study_id(storage, study_name)
    attrs = storage.get_study_user_attrs(study_id)
    return plan_from_attr(attrs.get(PLAN_ATTR))


def study_attrs(storage: BaseStorage, study_name: str) -> dict[str, Any]:
    return storage.get_study_user_attrs(_study_id(storage, study_name))


def set_study_attr(storage: BaseStorage, study_name: str, key: str, value: Any) -> None:
    storage.set_study_user_attr(_study_id(storage, study_name), key, value)


def list_campaigns(storage: BaseStorage) -> dict[str, list[StagePlan]]:
    """Every campaign in the storage with its stages in order."""
    campaigns: dict[str, list[StagePlan]] = {}
    for study in storage.get_all_studies():
        plan = plan_from_attr(study.user_attrs.get(PLAN_ATTR))
        if plan is not None:
            campaigns.setdefault(plan.campaign, []).append(plan)
    return {name: sorted(plans, key=lambda p: p.stage) for name, plans in sorted(campaigns.items())}


def campaign_stages(storage: BaseStorage, campaign: str) -> list[StagePlan]:
    """The stages created so far, in order (the last one is the current stage)."""
    stages = []
    for stage in range(1, 1000):
        name = stage_study_name(campaign, stage)
        try:
            plan = read_plan(storage, name)
        except StudyNotFound:
            break
        if plan is not None:
            stages.append(plan)
    return stages


def require_campaign(storage: BaseStorage, campaign: str) -> list[StagePlan]:
    stages = campaign_stages(storage, campaign)
    if not stages:
        raise CampaignNotFound(f"no campaign named {campaign!r} in this storage")
    return stages


def _study_id(storage: BaseStorage, study_name: str) -> int:
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        raise StudyNotFound(f"no study named {study_name!r} in this storage") from None


def count_states(storage: BaseStorage, study_name: str) -> dict[str, int]:
    """Trials of a study per state (``{"COMPLETE": 12, "RUNNING": 2, ...}``) in one query.

    Reading every trial to count them would cost a worker more than its trial on a large study.
    """
    study_id = _study_id(storage, study_name)
    engine = getattr(storage, "engine", None)
    if engine is None:  # not an RDB storage: count the slow way
        counts: dict[str, int] = {}
        for trial in storage.get_all_trials(study_id, deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        return counts
    query = sqlalchemy.text(
        "SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"study_id": study_id}).all()
    return {str(state).removeprefix("TrialState."): int(n) for state, n in rows}


def best_value(storage: BaseStorage, study_name: str) -> float | None:
    """The highest value among the study's COMPLETE trials, in one query (None if none)."""
    study_id = _study_id(storage, study_name)
    engine = getattr(storage, "engine", None)
    if engine is None:
        values = [
            t.value
            for t in storage.get_all_trials(study_id, deepcopy=False)
            if t.state.name == "COMPLETE" and t.value is not None
        ]
        return max(values, default=None)
    query = sqlalchemy.text(
        "SELECT MAX(v.value) FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'COMPLETE' AND v.objective = 0"
    )
    with engine.connect() as conn:
        value = conn.execute(query, {"study_id": study_id}).scalar()
    return None if value is None else float(value)


# -- the coordinator's and the workers' shared state of a stage --------------------------------
SLOTS_ATTR = "hpo:slots"  # study system attr: how many workers have joined the stage


def take_slot(storage: BaseStorage, url: str, study_name: str) -> int:
    """The next worker slot of a stage (0, 1, 2, ...), under the lock every claim takes.

    Each worker that joins a stage takes one and seeds its sampler from it, so no two workers,
    no resumed run and no second `hpo launch` sample with the same seed, while a fresh
    storage with one worker always gets slot 0 (and so reproduces its trials). A retry after a
    lost answer may skip a number; slots stay unique.
    """
    study_id = _study_id(storage, study_name)
    with backend.exclusive(url, study_name, storage.engine):
        slot = storage.get_study_system_attrs(study_id).get(SLOTS_ATTR, 0)
        storage.set_study_system_attr(study_id, SLOTS_ATTR, int(slot) + 1)
    return int(slot)


def stage_outcomes(storage: BaseStorage, study_name: str) -> list[tuple[str, Any]]:
    """(state, reason) of the stage's finished trials in the order they finished, in one query
    (what :func:`failure_verdict` reads)."""
    study_id = _study_id(storage, study_name)
    query = sqlalchemy.text(
        "SELECT t.state, a.value_json FROM trials t LEFT JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id AND a.key = 'reason' "
        "WHERE t.study_id = :study_id AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL') "
        "ORDER BY t.datetime_complete, t.trial_id"
    )
    with storage.engine.connect() as conn:
        rows = conn.execute(query, {"study_id": study_id}).all()
    return [(str(state).removeprefix("TrialState."), None if reason is None else json.loads(reason))
            for state, reason in rows]


def mark_stage_failed(storage: BaseStorage, study_name: str, why: str) -> None:
    """Stop a stage for good: workers take none of its trials from here on (idempotent)."""
    study_id = _study_id(storage, study_name)
    storage.set_study_user_attr(study_id, FAILURE_ATTR, why)
    storage.set_study_user_attr(study_id, STATUS_ATTR, FAILED)


def close_stage(storage: BaseStorage, plan: StagePlan, reason: str) -> None:
    """Close a stage (idempotent): fail its queued trials with ``reason`` (nothing will run
    them), record as cancelled the part of its budget that neither finished nor runs (a stage
    closed early), and mark it done unless it failed. Call it holding the stage's lock
    (``backend.exclusive(url, plan.study_name)``), so no worker claims a trial meanwhile."""
    study_id = _study_id(storage, plan.study_name)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    counts = count_states(storage, plan.study_name)
    cancelled = max(0, plan.trials - finished_count(counts) - counts.get("RUNNING", 0))
    attrs = storage.get_study_user_attrs(study_id)
    if attrs.get(CANCELLED_ATTR, 0) != cancelled:
        storage.set_study_user_attr(study_id, CANCELLED_ATTR, cancelled)
    if attrs.get(STATUS_ATTR) not in (DONE, FAILED):
        storage.set_study_user_attr(study_id, STATUS_ATTR, DONE)


# -- outcomes: diverged apart from pruned ----------------------------------------------------
# A diverged run is stored PRUNED (it has no value to rank), with the user attr ``reason`` holding
# workers.train.TrainingDiverged's message, or the user attr ``diverged`` set to true.
DIVERGED_REASON_PREFIX = "diverged at epoch"


def is_diverged(state: str, user_attrs: dict[str, Any]) -> bool:
    """Whether a trial in ``state`` (a TrialState name) with these user attrs diverged."""
    reason = user_attrs.get("reason")
    return state == "PRUNED" and (
        user_attrs.get("diverged") is True or (isinstance(reason, str) and reason.startswith(DIVERGED_REASON_PREFIX))
    )


def count_outcomes(storage: BaseStorage, study_name: str) -> dict[str, int]:
    """Trials of a study per state, in one query, with the diverged trials counted as
    ``DIVERGED`` and not as ``PRUNED``: ``{"COMPLETE": 12, "PRUNED": 3, "DIVERGED": 1, ...}``
    (states without trials left out). COMPLETE + PRUNED + DIVERGED trials meet the budget.
    """
    study_id = _study_id(storage, study_name)
    return _outcomes(storage, study_id).get(study_id, {})


def count_outcomes_by_study(storage: BaseStorage) -> dict[int, dict[str, int]]:
    """:func:`count_outcomes` of every study at once (one query), keyed by study id."""
    return _outcomes(storage, None)


def _outcomes(storage: BaseStorage, study_id: int | None) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {}

    def add(sid: int, outcome: str, n: int) -> None:
        counts.setdefault(sid, {})
        counts[sid][outcome] = counts[sid].get(outcome, 0) + n

    engine = getattr(storage, "engine", None)
    if engine is None:  # not an RDB storage: count the slow way
        for sid in [study_id] if study_id is not None else [s._study_id for s in storage.get_all_studies()]:
            for trial in storage.get_all_trials(sid, deepcopy=False):
                add(sid, "DIVERGED" if is_diverged(trial.state.name, trial.user_attrs) else trial.state.name, 1)
        return counts
    query = sqlalchemy.text(
        "SELECT t.study_id, t.state, CASE WHEN t.state = 'PRUNED' AND EXISTS ("
        " SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND ("
        " (a.key = 'reason' AND a.value_json LIKE :reason) OR (a.key = 'diverged' AND a.value_json = 'true'))"
        ") THEN 1 ELSE 0 END AS diverged, COUNT(*) FROM trials t"
        + ("" if study_id is None else " WHERE t.study_id = :study_id")  # a constant, not user text
        + " GROUP BY t.study_id, t.state, diverged"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"reason": f'"{DIVERGED_REASON_PREFIX}%', "study_id": study_id}).all()
    for sid, state, diverged, n in rows:
        add(int(sid), "DIVERGED" if diverged else str(getattr(state, "name", state)).removeprefix("TrialState."), int(n))
    return counts


def tidy_closed_stage(storage: BaseStorage, plan: StagePlan) -> None:
    """After a trial of a stage was failed and queued again (a stop, a reaper): if the stage is
    closed already, nothing will run that retry, so close it as not needed (and count it as
    cancelled) rather than leave it WAITING. Call it holding the stage's lock."""
    status = storage.get_study_user_attrs(_study_id(storage, plan.study_name)).get(STATUS_ATTR)
    if status in (DONE, FAILED):
        close_stage(storage, plan, f"{backend.NOT_NEEDED}: the stage was closed")

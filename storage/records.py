"""Campaigns and stages as Optuna studies, so Optuna and optuna-dashboard read them as they are.

A campaign is a chain of stage studies named ``CAMPAIGN/stage-K`` (K = 1, 2, ...). Each stage
study carries its plan in the user attr ``hpo``: the campaign, its position, the trial budget,
the epochs per trial, the dataset, the search space (as ``workers.space.SearchSpace.to_dict``),
the sampler and pruner, and the lineage (parent stage, narrowing rule, source trials, old and
new ranges). The coordinator writes stages; workers only read them and add trials.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage

from storage.errors import CampaignNotFound, StorageError, StudyNotFound

PLAN_ATTR = "hpo"
RESULT_ATTR = "hpo_result"
STATUS_ATTR = "hpo_status"
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


def create_stage(storage: BaseStorage, plan: StagePlan) -> optuna.Study:
    """Create the study of one stage with its plan; refuse if it exists already."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=plan.study_name, direction="maximize"
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StorageError(f"stage {plan.study_name!r} exists already") from None
    study.set_user_attr(PLAN_ATTR, plan.to_dict())
    study.set_user_attr(STATUS_ATTR, "running")
    return study


def read_plan(storage: BaseStorage, study_name: str) -> StagePlan | None:
    """The plan of a stage study, or None for a study that hpo did not create."""
    study_id = _study_id(storage, study_name)
    attrs = storage.get_study_user_attrs(study_id)
    return StagePlan.from_dict(attrs[PLAN_ATTR]) if PLAN_ATTR in attrs else None


def study_attrs(storage: BaseStorage, study_name: str) -> dict[str, Any]:
    return storage.get_study_user_attrs(_study_id(storage, study_name))


def set_study_attr(storage: BaseStorage, study_name: str, key: str, value: Any) -> None:
    storage.set_study_user_attr(_study_id(storage, study_name), key, value)


def list_campaigns(storage: BaseStorage) -> dict[str, list[StagePlan]]:
    """Every campaign in the storage with its stages in order."""
    campaigns: dict[str, list[StagePlan]] = {}
    for study in storage.get_all_studies():
        attrs = study.user_attrs
        if PLAN_ATTR in attrs:
            plan = StagePlan.from_dict(attrs[PLAN_ATTR])
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

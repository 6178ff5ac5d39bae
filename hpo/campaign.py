"""A coarse-to-fine campaign: run a stage, narrow, run the next stage, ..., evaluate once.

The lecture's recipe: random search in log space, first with short runs over wide ranges
("about 1 epoch"), then longer runs over the ranges the best trials point to ("then 5, then
many"). Each stage is its own Optuna study (multivariate TPE needs a static space); the
campaign is the chain, with its lineage in the stage studies' user attrs.

The coordinator here never trains a trial: workers do (local processes, or others attached
to the same storage with `hpo worker --campaign NAME`). It waits for each stage's budget,
narrows, opens the next stage, and at the end retrains the best configuration on
train + validation and evaluates it once on the held-out test split. Re-running a campaign
by name resumes it where it stopped: nothing done is lost or redone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from hpo.local import LocalWorkers
from hpo.narrow import NarrowResult, TrialRecord, narrow
from storage import backend, records
from storage.records import StagePlan
from workers.objective import config_for
from workers.run import cached_dataset, train_and_test
from workers.space import SearchSpace
from workers.train import TrainingDiverged

# The lecture: about 1 epoch, then a few, then many; fewer trials as each gets longer.
DEFAULT_EPOCHS = (2, 8, 30)
DEFAULT_TRIALS = (60, 30, 15)
FINAL_CANDIDATES = 5  # how many top configurations the final retrain may fall back through


class CampaignError(Exception):
    """The campaign cannot go on (no workers left, nothing finished, a conflicting resume)."""


def default_schedule(stages: int) -> tuple[list[int], list[int]]:
    """(trials per stage, epochs per stage) for a campaign of ``stages`` stages."""
    epochs = [DEFAULT_EPOCHS[min(i, 2)] * (2 ** max(0, i - 2)) for i in range(stages)]
    trials = [max(8, DEFAULT_TRIALS[min(i, 2)] // (2 ** max(0, i - 2))) for i in range(stages)]
    return trials, epochs


@dataclass
class CampaignSpec:
    name: str
    space: SearchSpace
    dataset: str = "digits"
    stages: int = 3
    trials: list[int] = field(default_factory=lambda: list(DEFAULT_TRIALS))
    epochs: list[int] = field(default_factory=lambda: list(DEFAULT_EPOCHS))
    sampler: str = "tpe"
    pruner: str = "median"
    cv: int = 0
    seed: int = 0
    top_quantile: float = 0.25
    top_k: int | None = None
    seed_best: int = 1  # the parent's best configurations queued first in the next stage

    def plan(self, stage: int, space: SearchSpace, lineage: dict[str, Any] | None = None) -> StagePlan:
        return StagePlan(
            campaign=self.name,
            stage=stage,
            stages=self.stages,
            trials=self.trials[stage - 1],
            epochs=self.epochs[stage - 1],
            dataset=self.dataset,
            space=space.to_dict(),
            sampler=self.sampler,
            pruner=self.pruner,
            cv=self.cv,
            seed=self.seed,
            lineage=lineage or {},
        )


class Progress(Protocol):
    """What a campaign tells its caller while it runs (the CLI draws it; tests may record it)."""

    def stage_started(self, plan: StagePlan, resumed: bool) -> None: ...
    def stage_progress(self, plan: StagePlan, counts: dict[str, int], best: float | None) -> None: ...
    def stage_narrowed(self, parent: StagePlan, child: StagePlan, result: NarrowResult) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class FinalResult:
    study: str
    trial: int
    params: dict[str, Any]
    config: dict[str, Any]
    val_accuracy: float
    train_accuracy: float
    test_accuracy: float
    skipped: list[str] = field(default_factory=list)  # candidates that diverged on retrain

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- stages --------------------------------------------------------------------------------
def open_campaign(storage, spec: CampaignSpec) -> tuple[list[StagePlan], bool]:
    """The campaign's stages, creating stage 1 for a new campaign. Returns (stages, resumed)."""
    stages = records.campaign_stages(storage, spec.name)
    if not stages:
        plan = spec.plan(1, spec.space)
        records.create_stage(storage, plan)
        return [plan], False
    first = stages[0]
    if first.dataset != spec.dataset:
        raise CampaignError(
            f"campaign {spec.name!r} exists on dataset {first.dataset!r}, not {spec.dataset!r}: "
            "choose another --name to start a new campaign"
        )
    return stages, True


def stage_is_complete(counts: dict[str, int], plan: StagePlan) -> bool:
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    return finished >= plan.trials and counts.get("RUNNING", 0) == 0


def trial_records(storage, study_name: str) -> list[TrialRecord]:
    study = optuna.load_study(study_name=study_name, storage=storage)
    return [
        TrialRecord(number=t.number, params=dict(t.params), value=t.value, state=t.state.name)
        for t in study.get_trials(deepcopy=False)
    ]


def open_next_stage(storage, spec: CampaignSpec, parent: StagePlan) -> tuple[StagePlan, NarrowResult]:
    """Narrow the finished ``parent`` stage into the next one and queue its best configurations."""
    result = narrow(
        SearchSpace.from_dict(parent.space),
        trial_records(storage, parent.study_name),
        top_k=spec.top_k,
        top_quantile=spec.top_quantile,
    )
    lineage = {"parent": parent.study_name, **result.to_dict()}
    child = spec.plan(parent.stage + 1, result.space, lineage)
    study = records.create_stage(storage, child)
    fitting = [p for p in result.top_params if result.space.contains(p)]
    for params in fitting[: min(spec.seed_best, child.trials)]:
        study.enqueue_trial(params, user_attrs={"seeded_from": parent.study_name}, skip_if_exists=True)
    return child, result


def close_stage(storage, plan: StagePlan) -> None:
    """Mark the stage done; a queued trial the budget no longer needs is failed, not left WAITING."""
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        storage.set_trial_user_attr(trial._trial_id, "reason", "not needed: the stage budget was met")
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    records.set_study_attr(storage, plan.study_name, records.STATUS_ATTR, "done")


def wait_for_stage(
    storage,
    url: str,
    plan: StagePlan,
    progress: Progress,
    workers: LocalWorkers | None,
    poll_seconds: float = 0.5,
) -> dict[str, int]:
    """Block until the stage's budget is met, reaping stale trials as the workers would (and
    riding out database errors as they do)."""
    study = backend.retrying(lambda: optuna.load_study(study_name=plan.study_name, storage=storage), "load the stage", url)

    def poll() -> tuple[dict[str, int], float | None]:
        with backend.exclusive(url, plan.study_name, storage.engine):
            backend.reap_stale_trials(study)
            counts = records.count_states(storage, plan.study_name)
        return counts, records.best_value(storage, plan.study_name)

    while True:
        counts, best = backend.retrying(poll, f"watch stage {plan.stage}", url)
        progress.stage_progress(plan, counts, best)
        if stage_is_complete(counts, plan):
            return counts
        if workers is not None and workers.running() == 0:
            raise CampaignError(
                f"all local workers exited before stage {plan.stage} met its budget ({counts}); "
                f"their logs are in {workers.log_dir}"
            )
        time.sleep(poll_seconds)


# -- the final evaluation ------------------------------------------------------------------
def final_candidates(storage, plans: Sequence[StagePlan], n: int) -> list[tuple[StagePlan, optuna.trial.FrozenTrial]]:
    """The best COMPLETE trials, latest stage first (it trained longest), best value first."""
    candidates = []
    for plan in reversed(plans):
        study = optuna.load_study(study_name=plan.study_name, storage=storage)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        done.sort(key=lambda t: t.value, reverse=True)
        candidates += [(plan, t) for t in done]
        if len(candidates) >= n:
            break
    return candidates[:n]


def final_evaluation(storage, plans: Sequence[StagePlan], progress: Progress) -> FinalResult:
    """Retrain the best configuration on train + validation; evaluate it once on test.

    A configuration picked from short runs can diverge when it trains longer on more data (a
    learning rate at the edge of its range does): that is said, and the next-best is tried.
    """
    last = plans[-1]
    dataset = cached_dataset(last.dataset, last.seed)
    skipped: list[str] = []
    candidates = final_candidates(storage, plans, FINAL_CANDIDATES)
    if not candidates:
        raise CampaignError("no trial of the campaign completed: nothing to evaluate")
    for plan, trial in candidates:
        space = SearchSpace.from_dict(plan.space)
        config = config_for(last, space, trial.params, trial.user_attrs.get("seed", last.seed))
        try:
            evaluation = train_and_test(config, dataset, merge_val=True)
        except TrainingDiverged as e:
            note = f"{plan.study_name} trial {trial.number}: {e} on retrain; trying the next best"
            progress.message(note)
            skipped.append(note)
            continue
        return FinalResult(
            study=plan.study_name,
            trial=trial.number,
            params=dict(trial.params),
            config=config.to_dict(),
            val_accuracy=float(trial.value),
            train_accuracy=evaluation.train_accuracy,
            test_accuracy=evaluation.test_accuracy,
            skipped=skipped,
        )
    raise CampaignError(f"every one of the top {len(candidates)} configurations diverged on retrain")


# -- the whole campaign --------------------------------------------------------------------
@dataclass
class CampaignSummary:
    name: str
    stages: list[dict[str, Any]]
    best: FinalResult
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.name,
            "stages": self.stages,
            "best": self.best.to_dict(),
            "seconds": round(self.seconds, 2),
        }


def stage_summary(storage, plan: StagePlan, counts: dict[str, int] | None = None) -> dict[str, Any]:
    space = SearchSpace.from_dict(plan.space)
    return {
        "study": plan.study_name,
        "stage": plan.stage,
        "epochs": plan.epochs,
        "budget": plan.trials,
        "counts": counts if counts is not None else records.count_states(storage, plan.study_name),
        "best_value": records.best_value(storage, plan.study_name),
        "ranges": {name: spec.describe() for name, spec in space.items()},
        "space": plan.space,
    }


def run_campaign(url: str, spec: CampaignSpec, progress: Progress, *, workers: int, blas_threads: int = 1) -> CampaignSummary:
    """Run (or resume) the campaign ``spec`` to its end with ``workers`` local worker processes
    (0: only coordinate, while workers attached elsewhere do the training)."""
    started = time.monotonic()
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    plans, resumed = open_campaign(storage, spec)
    local = LocalWorkers(url, workers, campaign=spec.name, seed=spec.seed * 1000, blas_threads=blas_threads) if workers else None
    summaries: list[dict[str, Any]] = []
    try:
        while True:
            plan = plans[-1]
            progress.stage_started(plan, resumed)
            status = records.study_attrs(storage, plan.study_name).get(records.STATUS_ATTR)
            wait_for_stage(storage, url, plan, progress, local)
            if status != "done":
                close_stage(storage, plan)
            summaries = [stage_summary(storage, p) for p in plans]
            if plan.stage >= spec.stages:
                break
            child, result = open_next_stage(storage, spec, plan)
            progress.stage_narrowed(plan, child, result)
            plans.append(child)
            resumed = False
        best = final_evaluation(storage, plans, progress)
        records.set_study_attr(storage, plans[-1].study_name, records.RESULT_ATTR, best.to_dict())
    finally:
        if local is not None:
            local.stop(keep_logs=sys.exc_info()[0] is not None)  # a failed run keeps its logs
    return CampaignSummary(spec.name, summaries, best, time.monotonic() - started)

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

Every step of the coordinator is idempotent and its database writes are retried
(``backend.retrying``): a crash, a Ctrl-C or a database outage between any two writes is
finished by the next resume, which follows the plan stored when the campaign was created
(:class:`CampaignSpec`, in the first stage's ``hpo_campaign`` attr), not today's defaults.
Steps that others may take at the same moment (a second coordinator, `hpo narrow`) run under
the campaign's lock: a stage is created once, the final result is stored once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import optuna
from optuna.trial import TrialState

from hpo import dashboard
from hpo.local import LocalWorkers
from hpo.narrow import (EARLIER_CHOICE_RULE, EARLIER_RANGE_RULE, KEEP_CHOICES, MARGIN, MIN_CHOICE_TRIALS, MIN_WIDTH,
                        NarrowResult, NarrowRule, NarrowTrial, NothingToNarrow, narrow)
from storage import backend, optuna_access, records
from storage.errors import StorageError, StudyNotFound
from workers import stageplan
from workers.feasible import data_limits
from workers.model_file import SavedModel, model_info
from workers.objective import config_for
from workers.record import TrialRecord, read_record, record_attrs
from workers.run import Evaluation, cached_dataset, train_and_test
from workers.space import SearchSpace
from workers.stageplan import StagePlan
from workers.train import TrainConfig, TrainingDiverged
from workers.worker import doubling_pauses

# The lecture: about 1 epoch, then a few, then many; fewer trials as each gets longer.
DEFAULT_EPOCHS = (2, 8, 30)
DEFAULT_TRIALS = (60, 30, 15)
DEFAULT_TOP_QUANTILE = 0.25  # the share of a stage's best trials the next stage's ranges come from
FINAL_CANDIDATES = 5  # how many top configurations the final retrain may fall back through
T = TypeVar("T")


class CampaignError(Exception):
    """The campaign cannot go on as asked (a conflicting resume, nothing to evaluate)."""


class StageFailed(Exception):
    """A stage was stopped by its failure budget, or cannot be narrowed: the campaign ends
    here (exit status 1); the text says which stage and why."""


def default_schedule(stages: int) -> tuple[list[int], list[int]]:
    """(trials per stage, epochs per stage) for a campaign of ``stages`` stages."""
    epochs = [DEFAULT_EPOCHS[min(i, 2)] * (2 ** max(0, i - 2)) for i in range(stages)]
    trials = [max(8, DEFAULT_TRIALS[min(i, 2)] // (2 ** max(0, i - 2))) for i in range(stages)]
    return trials, epochs


@dataclass
class CampaignSpec:
    """Everything a campaign was created with. Stored whole (``records.CAMPAIGN_ATTR``), so a
    resume follows it; ``--replan`` changes the stages not yet started, recorded in
    ``replans``."""

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
    top_quantile: float = DEFAULT_TOP_QUANTILE
    top_k: int | None = None
    seed_best: int = 1  # the parent's best configurations queued first in the next stage
    min_choice_trials: int = MIN_CHOICE_TRIALS  # a choice tried fewer times is kept for lack of evidence
    keep_choices: int = KEEP_CHOICES  # each categorical parameter keeps at least this many choices
    margin: float = MARGIN  # a narrowed range's padding, a fraction of its top trials' span
    min_width: float = MIN_WIDTH  # a narrowed range keeps at least this fraction of the old width
    max_failures_in_a_row: int = StagePlan.max_failures_in_a_row
    max_failure_share: float = StagePlan.max_failure_share
    replans: list[dict[str, Any]] = field(default_factory=list)

    # What a resume may change with --replan (for the stages not yet started); the rest
    # (dataset, seed, cross-validation, the first stage's space) defines the campaign.
    REPLANNABLE = ("stages", "trials", "epochs", "sampler", "pruner", "top_quantile", "top_k",
                   "seed_best", "max_failures_in_a_row", "max_failure_share", "min_choice_trials", "keep_choices",
                   "margin", "min_width")

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
            max_failures_in_a_row=self.max_failures_in_a_row,
            max_failure_share=self.max_failure_share,
        )

    def narrow_rule(self) -> NarrowRule:
        """How this campaign narrows a stage into the next."""
        return NarrowRule(top_k=self.top_k, top_quantile=self.top_quantile, margin=self.margin, min_width=self.min_width,
                          min_choice_trials=self.min_choice_trials, keep_choices=self.keep_choices)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**data, "space": self.space.to_dict(), "trials": list(self.trials), "epochs": list(self.epochs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        # A plan stored before choices needed evidence, or before ranges kept more of their
        # width, goes on narrowing as it did when created.
        return cls(**{**EARLIER_CHOICE_RULE, **EARLIER_RANGE_RULE, **kwargs, "space": SearchSpace.from_dict(data["space"])})

    @classmethod
    def from_stages(cls, plans: Sequence[StagePlan]) -> CampaignSpec:
        """The plan of a campaign created before plans were stored whole: what its stages say,
        today's defaults for the stages not yet created."""
        first, trials, epochs = plans[0], [p.trials for p in plans], [p.epochs for p in plans]
        default_trials, default_epochs = default_schedule(first.stages)
        return cls(
            name=first.campaign, space=SearchSpace.from_dict(first.space), dataset=first.dataset,
            stages=max(first.stages, len(plans)), sampler=first.sampler, pruner=first.pruner, cv=first.cv,
            seed=first.seed, trials=trials + default_trials[len(plans):], epochs=epochs + default_epochs[len(plans):],
        )


def reconcile(stored: CampaignSpec, requested: dict[str, Any], started: int, *, replan: bool) -> CampaignSpec:
    """The spec to resume with: ``stored``, changed by the settings the user gave explicitly
    (``requested``, field -> value) only where they differ and ``replan`` allows it.

    Raises CampaignError listing every difference when a setting conflicts with the stored
    plan and ``replan`` is off, or when it cannot change at all (the dataset, the seed,
    cross-validation, the space, a stage that has started).
    """
    current = stored.to_dict()
    wanted = dict(requested)
    if "stages" in wanted:  # lists follow a new stage count: kept where stored, defaults after
        n = wanted["stages"]
        default_trials, default_epochs = default_schedule(n)
        for key, default in (("trials", default_trials), ("epochs", default_epochs)):
            if key not in wanted:
                kept = current[key][:n]
                wanted[key] = kept + default[len(kept):]
    if "space" in wanted:
        space = wanted["space"]
        # A campaign stored before conditions existed samples every parameter of its space in
        # every trial; the same parameters asked for again are that space, not a new one.
        if not stored.space.conditions and SearchSpace(dict(space), conditions={}) == stored.space:
            space = stored.space
        wanted["space"] = space.to_dict()
    changes = {k: (current[k], v) for k, v in wanted.items() if _differs(current[k], v)}
    if not changes:
        return stored
    listed = "; ".join(f"--{k.replace('_', '-')} {_show(new)} (stored: {_show(old)})" for k, (old, new) in changes.items())
    fixed = [k for k in changes if k not in CampaignSpec.REPLANNABLE]
    if fixed:
        raise CampaignError(
            f"campaign {stored.name!r} exists with other settings: {listed}; "
            f"{', '.join(fixed)} cannot change: choose another --name for a new campaign"
        )
    if not replan:
        raise CampaignError(
            f"campaign {stored.name!r} exists with other settings: {listed}; "
            "run it as stored (hpo search --name NAME), or pass --replan to change the stages not yet started"
        )
    for key in ("trials", "epochs"):
        if key in changes and changes[key][0][:started] != changes[key][1][:started]:
            raise CampaignError(f"--replan: stages 1-{started} have started; their --{key} cannot change")
    if "stages" in changes and changes["stages"][1] < started:
        raise CampaignError(f"--replan: {started} stages have started; --stages cannot be fewer")
    record = {"from_stage": started + 1, "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}
    return CampaignSpec.from_dict({**current, **{k: new for k, (_, new) in changes.items()},
                                   "replans": [*stored.replans, record]})


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return float(old) != float(new)
    return old != new


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinalResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# -- stages --------------------------------------------------------------------------------
def retried(url: str) -> Callable[[Callable[[], T], str], T]:
    """Run a coordinator step again after a database error, as the workers do (every step is
    idempotent, so an attempt that committed but lost its answer is harmless to repeat)."""
    return lambda action, what: backend.retrying(action, what, url)


def campaign_lock(url: str, storage, name: str):
    """The lock of a campaign's own writes: creating a stage, storing the final result."""
    return backend.exclusive(url, f"{name}/campaign", storage.engine)


def load_campaign(url: str, name: str) -> tuple[CampaignSpec, list[StagePlan]] | None:
    """The stored plan of campaign ``name`` and its stages (none yet, when the creation of
    stage 1 was cut short), or None if there is no such campaign (nothing is created: a SQLite
    file that does not exist stays so)."""
    try:
        if not backend.schema_ready(url):
            return None
        storage = backend.open_storage(url, heartbeat=False)
        try:
            plans = stageplan.campaign_stages(storage, name)
            if not plans:
                first = stageplan.stage_study_name(name, 1)
                with contextlib.suppress(StudyNotFound):
                    attrs = records.study_attrs(storage, first)
                    if records.PLAN_ATTR in attrs:  # and it holds no plan
                        raise StorageError(f"study {first!r} exists and was not created by hpo: choose another --name")
                    if isinstance(attrs.get(records.CAMPAIGN_ATTR), dict):
                        # Stage 1's creation was cut short after the campaign's plan was stored:
                        # that plan, not today's options, is what the next run finishes.
                        return CampaignSpec.from_dict(attrs[records.CAMPAIGN_ATTR]), []
                return None
            stored = records.study_attrs(storage, plans[0].study_name).get(records.CAMPAIGN_ATTR)
            spec = CampaignSpec.from_dict(stored) if isinstance(stored, dict) else CampaignSpec.from_stages(plans)
            return spec, plans
        finally:
            storage.engine.dispose()
    except backend.DB_ERRORS as e:
        raise StorageError(backend.describe_db_error(url, e)) from None


def open_campaign(url: str, storage, spec: CampaignSpec) -> tuple[list[StagePlan], bool]:
    """The campaign's stages, creating stage 1 of a new campaign (or finishing its creation),
    and storing ``spec`` (a replan changes it). Returns (stages, resumed)."""
    with campaign_lock(url, storage, spec.name):
        stages = stageplan.campaign_stages(storage, spec.name)
        if not stages:
            plan, _ = stageplan.ensure_stage(storage, spec.plan(1, spec.space), attrs={records.CAMPAIGN_ATTR: spec.to_dict()})
            dashboard.write_stage_notes(storage, [plan.study_name])
            return [plan], False
        if records.study_attrs(storage, stages[0].study_name).get(records.CAMPAIGN_ATTR) != spec.to_dict():
            records.set_study_attr(storage, stages[0].study_name, records.CAMPAIGN_ATTR, spec.to_dict())
        dashboard.write_stage_notes(storage, [plan.study_name for plan in stages])  # what a crash left unwritten
        return stages, True


def stage_is_complete(counts: dict[str, int], plan: StagePlan, attrs: dict[str, Any]) -> bool:
    """The stage needs no more trials and none runs: its budget is met, or it was closed early
    (`hpo narrow --force`)."""
    if counts.get("RUNNING", 0):
        return False
    return attrs.get(records.STATUS_ATTR) == records.DONE or stageplan.finished_count(counts) >= stageplan.budget(plan, attrs)


def narrow_trials(storage, study_name: str) -> list[NarrowTrial]:
    study = optuna.load_study(study_name=study_name, storage=storage)
    return [
        NarrowTrial(number=t.number, params=dict(t.params), value=t.value, state=t.state.name,
                    reason=read_record(t.user_attrs).reason)
        for t in study.get_trials(deepcopy=False)
    ]


def narrow_from(storage, parent: StagePlan, rule: NarrowRule) -> NarrowResult:
    """Narrow the space of a finished stage by ``rule``; NothingToNarrow if it has no complete
    trial. A range widened at its border stops where the data ends (no more PCA directions than
    features)."""
    limits = data_limits(cached_dataset(parent.dataset, parent.seed))
    return narrow(SearchSpace.from_dict(parent.space), narrow_trials(storage, parent.study_name),
                  **dataclasses.asdict(rule), limits=limits, stage=parent.study_name)


def seed_queue(result: NarrowResult, space: SearchSpace, parent: StagePlan, n: int) -> list[tuple[dict, dict]]:
    """The parent's best configurations that fit ``space``, to queue first (params, user attrs);
    each holds only the parameters ``space`` samples for it."""
    fitting = [{k: v for k, v in p.items() if k in space and space.applies(k, p)}
               for p in result.top_params if space.contains(p)]
    queued = record_attrs(TrialRecord(seeded_from=parent.study_name))
    return [(params, dict(queued)) for params in fitting[:n]]


def plan_next_stage(
    parent: StagePlan,
    spec: CampaignSpec | None,
    result: NarrowResult,
    space: SearchSpace,
    *,
    into: tuple[str, int] | None = None,
    trials: int | None = None,
    epochs: int | None = None,
) -> StagePlan:
    """The plan of the stage after ``parent``, one rule for `hpo search` and `hpo narrow`.

    ``into`` (campaign, stage number) defaults to the next stage of the parent's campaign. A
    stage the campaign's stored plan foresees is planned as the campaign says (its budget, its
    epochs, replans included); any other takes the parent's settings with half its trials (at
    least 8) at 4x its epochs, as the lecture advises. ``trials`` / ``epochs`` override both.
    """
    campaign, number = into or (parent.campaign, parent.stage + 1)
    lineage = {"parent": parent.study_name, **result.to_dict()}
    if spec is not None and campaign == spec.name and number <= spec.stages:
        replans = [r for r in spec.replans if r.get("from_stage") == number]
        if replans:
            lineage["replans"] = replans
        child = spec.plan(number, space, lineage)
    else:
        child = dataclasses.replace(
            parent, campaign=campaign, stage=number,
            stages=max(number, parent.stages if campaign == parent.campaign else number),
            trials=max(8, parent.trials // 2), epochs=parent.epochs * 4,
            space=space.to_dict(), lineage=lineage,
        )
    return dataclasses.replace(child, trials=trials or child.trials, epochs=epochs or child.epochs)


def create_next_stage(storage, parent: StagePlan, child: StagePlan, result: NarrowResult,
                      space: SearchSpace, seed_best: int) -> tuple[StagePlan, bool]:
    """Create ``child`` with the parent's best configurations that fit ``space`` queued first;
    (the stage as stored, created). An existing stage is adopted. Call it holding the
    campaign's lock (:func:`campaign_lock`)."""
    queue = seed_queue(result, space, parent, min(seed_best, child.trials))
    stored, created = stageplan.ensure_stage(storage, child, queue=queue)
    dashboard.write_stage_notes(storage, [stored.study_name, parent.study_name])  # the parent's gains the narrowing
    return stored, created


def open_next_stage(url: str, storage, spec: CampaignSpec, parent: StagePlan) -> tuple[StagePlan, NarrowResult | None]:
    """The stage after the finished ``parent``: created by narrowing it, with the parent's
    best configurations queued first; or adopted, with None for the narrowing, when it exists
    already (`hpo narrow` or another coordinator created it)."""
    name = stageplan.stage_study_name(spec.name, parent.stage + 1)
    with campaign_lock(url, storage, spec.name):
        with contextlib.suppress(StudyNotFound):
            existing = stageplan.read_plan(storage, name)
            if existing is not None:
                return existing, None
        try:
            result = narrow_from(storage, parent, spec.narrow_rule())
        except NothingToNarrow as e:  # the campaign cannot go on: it ends here, naming the stage
            raise StageFailed(str(e)) from None
        child = plan_next_stage(parent, spec, result, result.space)
        child, _ = create_next_stage(storage, parent, child, result, result.space, spec.seed_best)
        return child, result


def close_stage(url: str, storage, plan: StagePlan, why: str = "the stage budget was met") -> None:
    """Close a stage (idempotent): its queued trials, which nothing will run now, are failed as
    not needed, and a stage closed before its budget was met records the rest as cancelled.
    Runs under the stage's lock, so no worker claims a trial meanwhile."""
    with backend.exclusive(url, plan.study_name, storage.engine):
        stageplan.close_stage(storage, plan, f"{backend.NOT_NEEDED}: {why}")


def settle_stage(url: str, storage, plan: StagePlan, progress: Progress, poll_seconds: float = 0.5) -> None:
    """Wait until a closed stage has no RUNNING trial, reaping stale ones, and tidy it: a stage
    closed early (`hpo narrow --force`) may still have had trials running, and the campaign
    ends with nothing RUNNING or WAITING anywhere."""
    study = backend.retrying(lambda: optuna.load_study(study_name=plan.study_name, storage=storage), "load the stage", url)

    def poll() -> int:
        with backend.exclusive(url, plan.study_name, storage.engine):
            backend.reap_stale_trials(study)
            stageplan.tidy_closed_stage(storage, plan)
            return records.count_states(storage, plan.study_name).get("RUNNING", 0)

    told = False
    while (running := backend.retrying(poll, f"settle stage {plan.stage}", url)):
        if not told:
            progress.message(f"waiting for {running} trial(s) still running in {plan.study_name}, closed early")
            told = True
        time.sleep(poll_seconds)


def wait_for_stage(
    storage,
    url: str,
    plan: StagePlan,
    progress: Progress,
    workers: LocalWorkers | None,
    poll_seconds: float = 0.5,
) -> dict[str, int]:
    """Block until the stage is complete, reaping stale trials as the workers would (and
    riding out database errors as they do). Raises StageFailed when its failure budget is
    spent (the first to see it, a worker or this, marks the stage failed). It looks again
    after 0.05 s, then ever less often up to every ``poll_seconds``: a short stage is seen
    ending at once."""
    study = backend.retrying(lambda: optuna.load_study(study_name=plan.study_name, storage=storage), "load the stage", url)

    def poll() -> tuple[dict[str, int], dict[str, Any], float | None]:
        with backend.exclusive(url, plan.study_name, storage.engine):
            backend.reap_stale_trials(study)
            counts = records.count_states(storage, plan.study_name)
            attrs = records.study_attrs(storage, plan.study_name)
            if attrs.get(records.STATUS_ATTR) != records.FAILED and counts.get("FAIL", 0):
                why = stageplan.failure_verdict(plan, records.stage_outcomes(storage, plan.study_name))
                if why is not None:
                    records.mark_stage_failed(storage, plan.study_name, why)
                    attrs = records.study_attrs(storage, plan.study_name)
        # The bars show diverged trials apart from pruned ones; the budget counts them together.
        shown = records.count_outcomes(storage, plan.study_name)
        return counts, attrs, records.best_value(storage, plan.study_name), shown

    pauses = doubling_pauses(poll_seconds)
    while True:
        counts, attrs, best, shown = backend.retrying(poll, f"watch stage {plan.stage}", url)
        progress.stage_progress(plan, shown, best)
        if attrs.get(records.STATUS_ATTR) == records.FAILED:
            raise StageFailed(f"stage {plan.study_name} stopped: {attrs.get(records.FAILURE_ATTR)}")
        if stage_is_complete(counts, plan, attrs):
            return counts
        if workers is not None and workers.running() == 0:
            raise CampaignError(
                f"all local workers exited before stage {plan.stage} met its budget ({counts}); "
                f"their logs are in {workers.log_dir}"
            )
        time.sleep(next(pauses))


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


def final_evaluation(
    candidates: Sequence[tuple[StagePlan, optuna.trial.FrozenTrial]], last: StagePlan, progress: Progress
) -> FinalResult:
    """Retrain the best configuration on train + validation; evaluate it once on test.

    A configuration picked from short runs can diverge when it trains longer on more data (a
    learning rate at the edge of its range does): that is said, and the next-best is tried.
    Touches no database: the candidates were read before, the result is stored after.
    """
    return final_retrain(candidates, last, progress)[0]


def final_retrain(
    candidates: Sequence[tuple[StagePlan, optuna.trial.FrozenTrial]], last: StagePlan, progress: Progress
) -> tuple[FinalResult, SavedModel]:
    """:func:`final_evaluation`, and the model it trained (what NAME-best.npz holds)."""
    dataset = cached_dataset(last.dataset, last.seed)
    skipped: list[str] = []
    if not candidates:
        raise StageFailed("no trial of the campaign completed: nothing to evaluate")
    for plan, trial in candidates:
        space = SearchSpace.from_dict(plan.space)
        seed = read_record(trial.user_attrs).seed
        config = config_for(last, space, trial.params, last.seed if seed is None else seed)
        try:
            evaluation = train_and_test(config, dataset, merge_val=True)
        except TrainingDiverged as e:
            note = f"{plan.study_name} trial {trial.number}: {e} on retrain; trying the next best"
            progress.message(note)
            skipped.append(note)
            continue
        result = FinalResult(
            study=plan.study_name,
            trial=trial.number,
            params=dict(trial.params),
            config=config.to_dict(),
            val_accuracy=float(trial.value),
            train_accuracy=evaluation.train_accuracy,
            test_accuracy=evaluation.test_accuracy,
            skipped=skipped,
        )
        return result, final_model(evaluation, last.campaign, last.dataset, last.seed, result)
    raise StageFailed(f"every one of the top {len(candidates)} configurations diverged on retrain")


def final_model(evaluation: Evaluation, campaign: str, dataset: str, split_seed: int, result: FinalResult) -> SavedModel:
    """The final retrain's model, with what it was trained on and how it scored."""
    info = model_info(
        dataset, split_seed, "train+val",
        {"campaign": campaign, "study": result.study, "trial": result.trial, "val_accuracy": result.val_accuracy},
        {"train": evaluation.train_accuracy, "test": evaluation.test_accuracy},
    )
    return SavedModel.from_evaluation(evaluation, cached_dataset(dataset, split_seed).class_labels, info)


def retrain_final(spec: CampaignSpec, result: FinalResult) -> SavedModel:
    """The model of a final result stored by an earlier run, trained again as the final
    retrain trained it (same configuration, seed and data: the same model on the same machine,
    NumPy build and thread allowance; its info says the test accuracy it scored now)."""
    dataset = cached_dataset(spec.dataset, spec.seed)
    evaluation = train_and_test(TrainConfig.from_dict(result.config), dataset, merge_val=True)
    return final_model(evaluation, spec.name, spec.dataset, spec.seed, result)


# -- the whole campaign --------------------------------------------------------------------
@dataclass
class CampaignSummary:
    name: str
    stages: list[dict[str, Any]]
    best: FinalResult
    seconds: float
    model: SavedModel | None = None  # the final retrain's model, when this run has it

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
        "counts": counts if counts is not None else records.count_outcomes(storage, plan.study_name),
        "best_value": records.best_value(storage, plan.study_name),
        "ranges": {name: spec.describe() for name, spec in space.items()},
        "space": plan.space,
    }


def store_result(url: str, storage, spec: CampaignSpec, last: StagePlan, result: FinalResult) -> FinalResult:
    """Store the final result on the last stage, once: if another run stored one first, that
    one stands and is returned."""
    with campaign_lock(url, storage, spec.name):
        stored = records.study_attrs(storage, last.study_name).get(records.RESULT_ATTR)
        if isinstance(stored, dict):
            return FinalResult.from_dict(stored)
        records.set_study_attr(storage, last.study_name, records.RESULT_ATTR, result.to_dict())
        return result


def stored_result(storage, last: StagePlan) -> FinalResult | None:
    stored = records.study_attrs(storage, last.study_name).get(records.RESULT_ATTR)
    return FinalResult.from_dict(stored) if isinstance(stored, dict) else None


def run_campaign(url: str, spec: CampaignSpec, progress: Progress, *, workers: int, blas_threads: int = 1,
                 on_start: Callable[[], object] | None = None) -> CampaignSummary:
    """Run (or resume) the campaign ``spec`` to its end with ``workers`` local worker processes
    (0: only coordinate, while workers attached elsewhere do the training).

    Each step below is idempotent and retried on database errors: open (or adopt) the stage,
    wait for its budget, close it, open the next one, ..., then retrain the best
    configuration and store the result once. KeyboardInterrupt (Ctrl-C, or SIGTERM turned
    into it by the CLI) stops the local workers, which queue their trials again, fails any
    trial they could not queue, and propagates: nothing is left RUNNING.

    ``on_start`` is called once the local workers are starting, before the schema and the
    campaign are opened (the CLI starts preparing the report there, on a thread: its
    initialization experiment is the longest step of a short campaign).

    The summary carries the final retrain's model when this run trained it (a campaign that
    an earlier run finished has none: :func:`retrain_final` trains it again).
    """
    started = time.monotonic()
    model = None
    step = retried(url)
    storage, plans = None, []
    # The workers start first: their imports (a second or so) overlap the schema and the
    # campaign's creation, which they wait for as long as these steps may retry.
    local = LocalWorkers(url, workers, campaign=spec.name, seed=None, blas_threads=blas_threads,
                         wait_seconds=3 * backend.RETRY_SECONDS) if workers else None
    if on_start is not None:
        on_start()
    try:
        step(lambda: backend.ensure_schema(url), "create the schema")
        storage = step(lambda: backend.open_storage(url), "open the storage")
        plans, resumed = step(lambda: open_campaign(url, storage, spec), "open the campaign")
        while True:
            plan = plans[-1]
            progress.stage_started(plan, resumed)
            for earlier in plans[:-1]:  # a resume finishes what a crash left of closing them
                step(lambda earlier=earlier: close_stage(url, storage, earlier), f"close stage {earlier.stage}")
            wait_for_stage(storage, url, plan, progress, local)
            step(lambda: close_stage(url, storage, plan), f"close stage {plan.stage}")
            next_exists = step(lambda: bool(stageplan.campaign_stages(storage, spec.name)[plan.stage:]), "read the campaign")
            if plan.stage >= max(spec.stages, plan.stages) and not next_exists:
                if local is not None and local.ask_to_stop():  # no trial is left: they exit while the model retrains
                    raise KeyboardInterrupt
                break
            child, result = step(lambda: open_next_stage(url, storage, spec, plan), f"open stage {plan.stage + 1}")
            if result is not None:
                progress.stage_narrowed(plan, child, result)
            else:
                progress.message(f"{child.study_name} exists already (created by hpo narrow or another coordinator): following it")
            plans.append(child)
            resumed = False
        for earlier in plans[:-1]:
            settle_stage(url, storage, earlier, progress)
        summaries = step(lambda: [stage_summary(storage, p) for p in plans], "summarize the stages")
        best = step(lambda: stored_result(storage, plans[-1]), "read the result")
        if best is None:
            candidates = step(lambda: final_candidates(storage, plans, FINAL_CANDIDATES), "read the best trials")
            best, model = final_retrain(candidates, plans[-1], progress)
            stored = step(lambda: store_result(url, storage, spec, plans[-1], best), "store the result")
            if stored is not best:  # another run stored its result first: that one stands
                best, model = stored, None
    except BaseException as e:
        with _signals_held():
            if local is not None:
                local.stop(keep_logs=not isinstance(e, KeyboardInterrupt))  # a failed run keeps its logs
                # Stopped workers queue their own trials again; this fails (with a retry) those of a
                # worker killed first. Without a storage open here it is left to the heartbeat reaper.
                if storage is not None:
                    step(lambda: release_trials(url, storage, plans, local.worker_ids()), "release the workers' trials")
            if isinstance(e, StageFailed):  # nothing runs its queued trials now
                step(lambda: close_stage(url, storage, plans[-1], "the stage failed"), "close the failed stage")
        raise
    if local is not None:
        local.stop()
    return CampaignSummary(spec.name, summaries, best, time.monotonic() - started, model)


def release_trials(url: str, storage, plans: Sequence[StagePlan], worker_ids: Collection[str]) -> list[int]:
    """Fail, with a retry queued, every RUNNING trial of the given workers (stopped, so none of
    them runs any more): a worker killed before it could queue its own trial again leaves it
    RUNNING until the heartbeat grace runs out, and the campaign then stops with nothing
    RUNNING. The numbers released."""
    released = []
    for plan in plans:
        study = optuna.load_study(study_name=plan.study_name, storage=storage)
        with backend.exclusive(url, plan.study_name, storage.engine):
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if read_record(trial.user_attrs).worker in worker_ids and backend.fail_with_retry(study, optuna_access.trial_id(trial)):
                    released.append(trial.number)
            stageplan.tidy_closed_stage(storage, plan)
    return released


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while the campaign cleans up after a stop: a second Ctrl-C
    must not cut the cleanup short and leave trials RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

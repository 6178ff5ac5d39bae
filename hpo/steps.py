"""Coarse-to-fine one step at a time: `hpo narrow STAGE [--into NEW]`."""

from __future__ import annotations

import contextlib
import dataclasses

from hpo import campaign as campaign_mod
from hpo.campaign import CampaignError
from hpo.narrow import NarrowResult, NarrowRule
from storage import records
from storage.errors import StorageError, StudyNotFound
from workers import stageplan
from workers.feasible import check_feasible
from workers.run import cached_dataset
from workers.space import build_space
from workers.stageplan import StagePlan
from workers.strategy import check_sampler

def parse_stage_name(name: str) -> tuple[str, int]:
    parsed = stageplan.parse_stage_name(name)
    if parsed is None:
        campaign, found, _ = name.rpartition("/stage-")
        if found:
            stageplan.check_name(campaign)  # a bad campaign name says so
        raise CampaignError(f"{name!r} is not a stage name: use CAMPAIGN/stage-K, e.g. c1/stage-2")
    return parsed


def narrow_stage(
    url: str,
    storage,
    stage: str,
    *,
    into: str | None = None,
    space_file: str | None = None,
    params: list[str] | None = None,
    top_quantile: float | None = None,
    top_k: int | None = None,
    min_choice_trials: int | None = None,
    keep_choices: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    seed_best: int = 1,
    force: bool = False,
    dry_run: bool = False,
) -> tuple[StagePlan, StagePlan, NarrowResult]:
    """Derive the next stage from the finished ``stage``; create it unless ``dry_run``.

    The narrowing follows the campaign's stored rule (its top fraction, the evidence a choice
    needs), or the defaults; ``top_quantile``, ``top_k``, ``min_choice_trials`` and
    ``keep_choices`` override it. The derived space can be overridden by a TOML file and
    ``--param`` specs (applied on top).
    The new stage is planned as `hpo search` would open it (``campaign.plan_next_stage``). A
    stage that has not met its budget is refused unless ``force``, which closes it first: its
    queued trials are failed, the rest of its budget recorded as cancelled, so nothing waits
    for it. The parent is closed in any case once the new stage exists.
    """
    parent = stageplan.read_plan(storage, stage)
    if parent is None:
        raise StorageError(f"study {stage!r} was not created by hpo (it has no stage plan)")
    campaign, number = parse_stage_name(into) if into else (parent.campaign, parent.stage + 1)
    attrs = records.study_attrs(storage, stage)
    counts = records.count_states(storage, stage)
    if not campaign_mod.stage_is_complete(counts, parent, attrs) and not force:
        running = f", {counts['RUNNING']} running" if counts.get("RUNNING") else ""
        raise CampaignError(
            f"{stage} is not finished: {stageplan.finished_count(counts)} of {stageplan.budget(parent, attrs)} "
            f"trials done{running}; wait for it, or pass --force to close it and narrow from what is done"
        )
    spec = _campaign_spec(storage, campaign)
    rule = spec.narrow_rule() if spec else NarrowRule(top_quantile=campaign_mod.DEFAULT_TOP_QUANTILE)
    given = {"top_quantile": top_quantile, "top_k": top_k, "min_choice_trials": min_choice_trials,
             "keep_choices": keep_choices}
    rule = dataclasses.replace(rule, **{k: v for k, v in given.items() if v is not None})
    result = campaign_mod.narrow_from(storage, parent, rule)
    space = build_space(result.space, space_file, list(params or []))
    check_feasible(space, cached_dataset(parent.dataset, parent.seed), parent.cv)
    child = campaign_mod.plan_next_stage(parent, spec, result, space, into=(campaign, number),
                                         trials=trials, epochs=epochs)
    check_sampler(child.sampler, space)
    if dry_run:
        return parent, child, result
    with contextlib.suppress(StudyNotFound):  # before --force closes anything
        if stageplan.read_plan(storage, child.study_name) is not None:
            raise StorageError(f"stage {child.study_name!r} exists already")
    if force:
        campaign_mod.close_stage(url, storage, parent, "the stage was closed early by hpo narrow --force")
    with campaign_mod.campaign_lock(url, storage, campaign):
        _, created = campaign_mod.create_next_stage(storage, parent, child, result, space, seed_best)
    if not created:
        raise StorageError(f"stage {child.study_name!r} exists already")
    campaign_mod.close_stage(url, storage, parent)
    return parent, child, result


def _campaign_spec(storage, campaign: str) -> campaign_mod.CampaignSpec | None:
    """The stored plan of ``campaign`` (its first stage's), if it has one."""
    try:
        stored = records.study_attrs(storage, stageplan.stage_study_name(campaign, 1)).get(records.CAMPAIGN_ATTR)
    except StorageError:
        return None
    return campaign_mod.CampaignSpec.from_dict(stored) if isinstance(stored, dict) else None

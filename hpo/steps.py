"""Coarse-to-fine one step at a time: `hpo narrow STAGE [--into NEW]`."""

from __future__ import annotations

import dataclasses
import re

from hpo.campaign import CampaignError, trial_records
from hpo.narrow import NarrowResult, narrow
from storage import records
from storage.errors import StorageError
from storage.records import StagePlan
from workers.space import SearchSpace, build_space

_STAGE_NAME = re.compile(r"^(?P<campaign>.+)/stage-(?P<stage>[1-9][0-9]*)$")


def parse_stage_name(name: str) -> tuple[str, int]:
    match = _STAGE_NAME.match(name)
    if not match:
        raise CampaignError(f"{name!r} is not a stage name: use CAMPAIGN/stage-K, e.g. c1/stage-2")
    return records.check_name(match["campaign"]), int(match["stage"])


def narrow_stage(
    storage,
    stage: str,
    *,
    into: str | None = None,
    space_file: str | None = None,
    params: list[str] | None = None,
    top_quantile: float = 0.25,
    top_k: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    seed_best: int = 1,
    dry_run: bool = False,
) -> tuple[StagePlan, StagePlan, NarrowResult]:
    """Derive the next stage from the finished ``stage``; create it unless ``dry_run``.

    The derived space can be overridden by a TOML file and ``--param`` specs (applied on top).
    The new stage trains longer (4x the epochs by default), as the lecture advises.
    """
    parent = records.read_plan(storage, stage)
    if parent is None:
        raise StorageError(f"study {stage!r} was not created by hpo (it has no stage plan)")
    campaign, number = parse_stage_name(into) if into else (parent.campaign, parent.stage + 1)
    result = narrow(
        SearchSpace.from_dict(parent.space),
        trial_records(storage, stage),
        top_k=top_k,
        top_quantile=top_quantile,
    )
    space = build_space(result.space, space_file, list(params or []))
    child = dataclasses.replace(
        parent,
        campaign=campaign,
        stage=number,
        stages=max(number, parent.stages if campaign == parent.campaign else number),
        trials=trials or max(8, parent.trials // 2),
        epochs=epochs or parent.epochs * 4,
        space=space.to_dict(),
        lineage={"parent": parent.study_name, **result.to_dict()},
    )
    if not dry_run:
        study = records.create_stage(storage, child)
        for best in [p for p in result.top_params if space.contains(p)][: min(seed_best, child.trials)]:
            study.enqueue_trial(best, user_attrs={"seeded_from": parent.study_name}, skip_if_exists=True)
    return parent, child, result

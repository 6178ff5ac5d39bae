"""Parameter importances per stage: what ``hpo importance`` prints and the report draws.

The numbers are Optuna's own (``optuna.importance.get_param_importances`` with its default
evaluator, PED-ANOVA, which is deterministic), computed on an in-memory study holding the
complete trials already read, so a stage is read from the database once. Each stage gets its
own importances: a parameter that stays important after narrowing still matters inside the
narrower range.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from storage import records

MIN_COMPLETE = 2  # complete trials a stage needs before importances mean anything


def param_importances(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> tuple[dict[str, float] | None, str | None]:
    """``(importances, None)`` over the COMPLETE trials among ``trials`` (parameter ->
    importance, most important first, summing to 1), or ``(None, why there are none)``.

    ``directions``: the study's; importances are computed for a single objective only."""
    if len(directions) != 1:
        return None, "importances are computed for single-objective studies only"
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) == 1]
    if len(complete) < MIN_COMPLETE:
        return None, f"importances need at least {MIN_COMPLETE} complete trials; this stage has {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction=directions[0])
            study.add_trials(complete)
            found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as e:  # e.g. every parameter fixed, or all values equal
        return None, f"Optuna could not compute importances: {e}"
    if not found:
        return None, "no parameter varies between the complete trials"
    return {name: float(v) for name, v in found.items()}, None


def stage_importances(storage: BaseStorage, stages: Sequence[tuple[int | None, str]]) -> list[dict[str, Any]]:
    """One entry per ``(stage, study name)`` (``hpo.inspect.resolve_stages``), in order.

    Keys: stage (None for a study hpo did not create), study, complete (its COMPLETE trials),
    importances ({parameter: importance}, most important first, or None), note (why there are
    none, else None)."""
    entries = []
    for stage, study_name in stages:
        study_id = storage.get_study_id_from_name(study_name)
        trials = records.read_all_trials(storage, study_id)
        scores, note = param_importances(trials, storage.get_study_directions(study_id))
        entries.append({
            "stage": stage,
            "study": study_name,
            "complete": sum(1 for t in trials if t.state == TrialState.COMPLETE),
            "importances": scores,
            "note": note,
        })
    return entries

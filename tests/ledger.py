"""The check after every fault: nothing was lost and nothing was repeated, read from the database.

``assert_nothing_lost_or_repeated(url, name)`` takes a campaign (all its stage studies) or one
study and asserts what a user would check after a storm:

* no duplicate trial numbers in any study (SQL: Optuna's schema does not forbid them);
* nothing left RUNNING or WAITING;
* every failed trial is one that a reaper or a stopped worker failed, not a crash: it has no
  ``reason`` of its own; it has exactly one retry (system attrs ``failed_trial`` /
  ``retry_history`` written by ``RetryHeartbeatStaleTrialCallback``), or none when it is itself
  a retry (one retry per trial); the only other failures are queued trials closed as "not
  needed" (the budget was met, or the trial they retried finished after all);
* no trial has two retries;
* each stage met its budget (finished = COMPLETE + PRUNED);
* the ledger of finished trials, per worker (its ``worker`` attr, its parameters, its value),
  holds no configuration twice within a study: nothing was trained to completion twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage import backend, records
from tests.helpers import duplicate_trial_numbers, sql


@dataclass
class Ledger:
    """What the check found, for tests that assert more."""

    studies: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # study -> state -> n
    failed: dict[str, list[int]] = field(default_factory=dict)  # study -> numbers failed by reapers / stops
    retries: dict[str, dict[int, int]] = field(default_factory=dict)  # study -> {failed number: retry number}
    by_worker: dict[str, list[tuple[str, str, float | None]]] = field(default_factory=dict)  # worker -> [(study, params, value)]

    def finished(self, study: str) -> int:
        counts = self.counts[study]
        return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def study_names(url: str, name: str) -> list[str]:
    """``name`` itself if it is a study, else the stage studies of campaign ``name`` in order."""
    rows = sql(url, "SELECT study_name FROM studies")
    names = {r[0] for r in rows}
    if name in names:
        return [name]
    stages = []
    for stage in range(1, 100):
        study = records.stage_study_name(name, stage)
        if study not in names:
            break
        stages.append(study)
    assert stages, f"no study or campaign named {name!r} in {sorted(names)}"
    return stages


def params_key(trial: FrozenTrial) -> str:
    return json.dumps(trial.params, sort_keys=True, default=str)


def assert_nothing_lost_or_repeated(url: str, name: str, *, exact_budget: bool = True) -> Ledger:
    """Assert that the campaign or study ``name`` lost and repeated nothing (see the module).

    ``exact_budget``: each stage finished exactly its budget (else at least its budget: after a
    database restart in the middle of a claim two workers may both take a stage's last trial).
    """
    assert duplicate_trial_numbers(url) == [], "duplicate trial numbers"
    storage = backend.open_storage(url, heartbeat=False)
    ledger = Ledger(studies=study_names(url, name))
    try:
        for study_name in ledger.studies:
            _check_study(storage, study_name, ledger, exact_budget)
    finally:
        storage.engine.dispose()
    seen: dict[tuple[str, str], str] = {}
    for worker, rows in ledger.by_worker.items():
        for study_name, key, _value in rows:
            assert (study_name, key) not in seen, (
                f"{study_name}: configuration {key} finished twice (workers {seen[(study_name, key)]} and {worker})")
            seen[(study_name, key)] = worker
    return ledger


def _check_study(storage: Any, study_name: str, ledger: Ledger, exact_budget: bool) -> None:
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    counts: dict[str, int] = defaultdict(int)
    for t in trials:
        counts[t.state.name] += 1
    ledger.counts[study_name] = dict(counts)
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0, f"{study_name}: left {dict(counts)}"

    plan = records.read_plan(storage, study_name)
    if plan is not None:
        finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        assert finished >= plan.trials, f"{study_name}: budget {plan.trials} not met: {dict(counts)}"
        if exact_budget:
            assert finished == plan.trials, f"{study_name}: {finished} finished for a budget of {plan.trials}"

    retries_of: dict[int, list[int]] = defaultdict(list)
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            assert t.system_attrs.get("failed_trial") == history[0], f"{study_name}: trial {t.number}: {t.system_attrs}"
            retries_of[history[-1]].append(t.number)
    for parent, retries in retries_of.items():
        assert len(retries) == 1, f"{study_name}: trial {parent} was retried {len(retries)} times: {retries}"
        retry = by_number[retries[0]]
        assert retry.params == by_number[parent].params, f"{study_name}: retry {retry.number} changed the parameters"
        if by_number[parent].state != TrialState.FAIL:  # the trial finished after all: its retry must not run
            assert retry.state == TrialState.FAIL and _reason(retry).startswith(backend.NOT_NEEDED), (
                f"{study_name}: trial {parent} is {by_number[parent].state.name} and its retry {retry.number} is "
                f"{retry.state.name} ({_reason(retry)!r})")

    failed, retried = [], {}
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        reason = _reason(t)
        if reason.startswith(backend.NOT_NEEDED):  # a queued trial closed unrun
            assert t.datetime_start is None or "retry_history" in t.system_attrs or "seeded_from" in t.user_attrs, (
                f"{study_name}: trial {t.number} closed as not needed, yet it ran")
            continue
        assert not reason, f"{study_name}: trial {t.number} failed: {reason}"
        failed.append(t.number)
        is_retry = bool(t.system_attrs.get("retry_history"))
        if is_retry and len(t.system_attrs["retry_history"]) >= backend.MAX_RETRY:
            assert t.number not in retries_of, f"{study_name}: retry {t.number} was retried again"
        else:
            assert t.number in retries_of, f"{study_name}: failed trial {t.number} has no retry"
            retried[t.number] = retries_of[t.number][0]
    ledger.failed[study_name] = failed
    ledger.retries[study_name] = retried

    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            worker = t.user_attrs.get("worker")
            assert worker, f"{study_name}: finished trial {t.number} names no worker"
            ledger.by_worker.setdefault(str(worker), []).append((study_name, params_key(t), t.value))


def _reason(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get("reason") or "")

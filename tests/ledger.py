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
* each stage met its budget (finished = COMPLETE + PRUNED), less the trials that
  ``hpo narrow --force`` cancelled (study user attr ``hpo_cancelled``);
* the ledger of finished trials, per worker (its ``worker`` attr, its parameters, its value),
  holds no configuration twice within a study: nothing was trained to completion twice.

``campaign_problems(url, name, final_best)`` checks a finished campaign as a whole, the way
the lifecycle test needs it: every problem it finds comes back as one line (a list, so a
failing run shows all of them at once) rather than an assertion at the first.
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
from workers import stageplan


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
        study = stageplan.stage_study_name(name, stage)
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

    plan = stageplan.read_plan(storage, study_name)
    if plan is not None:
        finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        budget = plan.trials - cancelled_trials(study.user_attrs)
        assert finished >= budget, f"{study_name}: budget {budget} not met: {dict(counts)}"
        if exact_budget:
            assert finished == budget, f"{study_name}: {finished} finished for a budget of {budget}"

    retries_of: dict[int, list[int]] = defaultdict(list)
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            assert t.system_attrs.get("failed_trial") == history[0], f"{study_name}: trial {t.number}: {t.system_attrs}"
            retries_of[history[-1]].append(t.number)
    for parent, retries in retries_of.items():
        assert len(retries) == 1, f"{study_name}: trial {parent} was retried {len(retries)} times: {retries}"
        retry = by_number[retries[0]]
        # A retry repeats what its trial had; a trial stopped between its claim and its
        # sampling has no parameters, and its retry samples them.
        if by_number[parent].params:
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


CANCELLED_ATTR = "hpo_cancelled"  # trials of a stage's budget that `hpo narrow --force` cancelled
CAMPAIGN_ATTR = "hpo_campaign"  # stage 1: the whole campaign's plan


def cancelled_trials(user_attrs: dict[str, Any]) -> int:
    return int(user_attrs.get(CANCELLED_ATTR) or 0)


def _normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def campaign_problems(url: str, name: str, final_best: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with the finished campaign ``name``, one line per problem (empty: nothing).

    * no duplicate trial numbers (SQL);
    * every stage study ``NAME/stage-K`` (K = 1, 2, ... without a gap) has its plan (user attr
      ``hpo``) for stage K of campaign NAME, and stage K >= 2 a lineage whose parent is stage K-1;
      stage 1 has the campaign plan; the last stage is the plan's last; every stage is "done";
    * nothing RUNNING or WAITING;
    * each stage's budget met exactly: COMPLETE + PRUNED == plan.trials - hpo_cancelled;
    * no configuration finished (COMPLETE or PRUNED) twice in a stage, except a trial and the
      one retry of it (system attr ``retry_history``);
    * the final result stored once, on the last stage only, and equal to ``final_best`` (what
      the final ``hpo search --json`` printed) when given.
    """
    problems: list[str] = []
    duplicates = duplicate_trial_numbers(url)
    if duplicates:
        problems.append(f"duplicate trial numbers (study_id, number, count): {[tuple(d) for d in duplicates]}")
    names = {r[0] for r in sql(url, "SELECT study_name FROM studies")}
    stage_numbers = sorted(int(n.rsplit("-", 1)[1]) for n in names
                           if n.startswith(f"{name}/stage-") and n.rsplit("-", 1)[1].isdigit())
    if not stage_numbers:
        return [*problems, f"no stage of campaign {name!r} in the storage"]
    if stage_numbers != list(range(1, stage_numbers[-1] + 1)):
        problems.append(f"stages {stage_numbers}: not 1..{stage_numbers[-1]} without a gap")
    storage = backend.open_storage(url, heartbeat=False)
    try:
        plans = []
        for stage in stage_numbers:
            study_name = stageplan.stage_study_name(name, stage)
            study = optuna.load_study(study_name=study_name, storage=storage)
            plans.append(_stage_problems(study, name, stage, problems))
        results = {study_name: attrs[records.RESULT_ATTR] for study_name, attrs in
                   ((stageplan.stage_study_name(name, s), records.study_attrs(storage, stageplan.stage_study_name(name, s)))
                    for s in stage_numbers) if records.RESULT_ATTR in attrs}
    finally:
        storage.engine.dispose()
    last = stageplan.stage_study_name(name, stage_numbers[-1])
    last_plan = plans[-1]
    if last_plan is not None and last_plan.stage != last_plan.stages:
        problems.append(f"{last}: the last stage is stage {last_plan.stage} of a plan of {last_plan.stages} stages")
    if sorted(results) != [last]:
        problems.append(f"the final result is stored on {sorted(results) or 'no stage'}, not on {last} alone")
    elif final_best is not None and _normal(results[last]) != _normal(final_best):
        problems.append(f"the stored result differs from what hpo search printed: stored {_normal(results[last])}, "
                        f"printed {_normal(final_best)}")
    return problems


def _stage_problems(study: optuna.Study, campaign: str, stage: int, problems: list[str]) -> stageplan.StagePlan | None:
    """Add the problems of one stage study; return its plan (None if it has none)."""
    name = study.study_name
    attrs = study.user_attrs
    plan = stageplan.StagePlan.from_dict(attrs[records.PLAN_ATTR]) if records.PLAN_ATTR in attrs else None
    if plan is None:
        problems.append(f"{name}: no plan (user attr {records.PLAN_ATTR!r})")
    elif (plan.campaign, plan.stage) != (campaign, stage):
        problems.append(f"{name}: its plan is for {plan.campaign!r} stage {plan.stage}")
    if plan is not None and stage >= 2 and plan.lineage.get("parent") != stageplan.stage_study_name(campaign, stage - 1):
        problems.append(f"{name}: lineage parent {plan.lineage.get('parent')!r}, not stage {stage - 1}")
    if stage == 1 and CAMPAIGN_ATTR not in attrs:
        problems.append(f"{name}: no campaign plan (user attr {CAMPAIGN_ATTR!r})")
    if attrs.get(records.STATUS_ATTR) != "done":
        problems.append(f"{name}: status {attrs.get(records.STATUS_ATTR)!r}, not 'done'")

    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = defaultdict(int)
    for t in trials:
        counts[t.state.name] += 1
    if counts.get("RUNNING") or counts.get("WAITING"):
        problems.append(f"{name}: left RUNNING or WAITING: {dict(counts)}")
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if plan is not None:
        cancelled = cancelled_trials(attrs)
        if len(finished) != plan.trials - cancelled:
            problems.append(f"{name}: {len(finished)} finished (COMPLETE + PRUNED) for a budget of {plan.trials}"
                            f"{f' less {cancelled} cancelled' if cancelled else ''}: {dict(counts)}")

    by_key: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in finished:
        by_key[params_key(t)].append(t)
    for key, same in by_key.items():
        if len(same) > 1 and not _a_trial_and_its_retry(same):
            problems.append(f"{name}: configuration {key} trained to a result {len(same)} times: trials "
                            f"{[t.number for t in same]} (workers {[t.user_attrs.get('worker') for t in same]})")
    return plan


def _a_trial_and_its_retry(same: list[FrozenTrial]) -> bool:
    if len(same) != 2:
        return False
    first, second = sorted(same, key=lambda t: t.number)
    return (second.system_attrs.get("retry_history") or [None])[-1] == first.number

"""The worker process: attach to a campaign (or one stage study), take trials, train, report.

Loop: under a lock shared by every worker of the database, fail stale trials (each retried
once, see ``storage.backend.reap_stale_trials``; looked for at most once per heartbeat
interval), count the stage's trials, and either take a trial (a queued one or a new one, its
first heartbeat written in the same transaction) or wait; sample every parameter once the lock
is released; train it with a heartbeat running; store its result. When the
stage's budget is met, follow the campaign to its next stage; exit when the campaign is done.
A worker started before the schema exists waits for it (and for its campaign) instead of
failing.

The studies run on ``storage.worker_storage.WorkerStorage``: the study is read once per trial
(samplers and pruners read that snapshot), and a trial's reports and attrs are written in
batches, so a trial costs a few round trips to the database instead of dozens.

What can go wrong is treated as normal:

* a diverged run ends PRUNED with the reason in its attrs, and the worker goes on;
* SIGTERM / SIGINT stop the worker at the next epoch boundary: its trial is failed and queued
  again, under the lock (so nothing is left RUNNING), and the worker exits 0; a second signal
  (a terminal's Ctrl-C reaches the worker, then its coordinator's SIGTERM) changes nothing;
* a stage whose trials keep failing with errors (``stageplan.failure_verdict``) is stopped by
  the first worker that sees it: its status becomes failed, no worker takes its trials, and
  the workers exit with the reason;
* a database error is retried with backoff wherever it strikes: taking a trial, each report
  and pruning check during training, storing the result (an attempt that committed but whose
  answer was lost is recognised, not redone); the heartbeat thread survives errors (Optuna's
  own dies at the first one);
* a trial that another worker failed under us (our heartbeat was late) is dropped with a
  warning: its retry runs elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from storage import backend, optuna_access, records
from storage.errors import CampaignNotFound, DatabaseUnavailable, StorageError
from storage.states import is_diverged
from storage.url import mask_url
from storage.worker_storage import WorkerStorage
from workers import stageplan
from workers.objective import StopRequested, Trainer, TrialOutcome, run_trial
from workers.record import Timings, TrialRecord, read_reason, read_record, write_record
from workers.run import cached_dataset, fit_and_score
from workers.space import SearchSpace
from workers.stageplan import StagePlan
from workers.strategy import make_pruner, make_sampler, sampler_seed

log = logging.getLogger("hpo.worker")
T = TypeVar("T")


@dataclass
class WorkerOptions:
    storage_url: str
    campaign: str | None = None  # follow a campaign from stage to stage ...
    study: str | None = None  # ... or work on one stage study only
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    seed: int | None = None  # mixed into the sampler seed (which the stage's slot makes unique)
    poll_seconds: float = 0.5
    wait_for_campaign_seconds: float = 60.0  # how long to wait for a campaign to appear
    max_trials: int | None = None  # stop after this many trials (None: until the campaign ends)
    db_retry_seconds: float = 120.0  # give up on the database after this long
    parent_pid: int | None = None  # exit when this process is gone (local workers of a coordinator)


@dataclass
class WorkerSummary:
    trials: dict[str, int] = field(default_factory=dict)  # end state -> count
    train_seconds: float = 0.0
    overhead_seconds: float = 0.0
    stopped_by_signal: bool = False
    stage_failed: str | None = None  # why the stage this worker worked on was stopped


class Heartbeat:
    """Beats for the worker's current trial in a daemon thread, whatever the database does.

    Optuna's heartbeat thread dies at the first database error; a one-second outage would then
    get a live trial failed and re-run elsewhere. This one logs the error and keeps beating.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, interval: float) -> None:
        self._storage = storage
        self._interval = interval
        self._trial_id: int | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
        self._thread.start()

    def start(self, trial_id: int, *, beat: bool = True) -> None:
        if beat:  # at once: a RUNNING trial without a beat is never seen as stale
            self._beat(trial_id)
        with self._lock:
            self._trial_id = trial_id

    def stop(self) -> None:
        with self._lock:
            self._trial_id = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            with self._lock:
                trial_id = self._trial_id
            if trial_id is not None:
                self._beat(trial_id)

    def _beat(self, trial_id: int) -> None:
        try:
            self._storage.record_heartbeat(trial_id)
        except Exception as e:  # noqa: BLE001 - a beat must never kill the thread
            log.warning("heartbeat for trial id %d failed, will retry: %s", trial_id, backend.driver_message(e))


class Worker:
    """One worker process's loop (see the module docstring). ``trainer`` trains a configuration
    (``workers.run.fit_and_score``); a benchmark passes a stub to time everything else."""

    def __init__(self, options: WorkerOptions, trainer: Trainer = fit_and_score) -> None:
        if not (options.campaign or options.study):
            raise ValueError("a worker needs a campaign or a study")
        self.options = options
        self.trainer = trainer
        self.summary = WorkerSummary()
        self._stop = threading.Event()
        self._studies: dict[str, tuple[optuna.Study, StagePlan, SearchSpace]] = {}
        self._next_reap: dict[str, float] = {}  # study name -> when to look for stale trials again
        self._fails_seen: dict[str, int] = {}  # study name -> FAIL trials when its claim last judged them
        self.storage: optuna.storages.RDBStorage | None = None  # opened by run(), once the schema exists
        self.study_storage: WorkerStorage | None = None
        self.heartbeat: Heartbeat | None = None

    def _open(self) -> bool:
        """Wait for the schema (``hpo init`` or the coordinator creates it), then open the storage."""
        url = self.options.storage_url
        deadline = time.monotonic() + self.options.wait_for_campaign_seconds

        def ready() -> bool:
            """The schema is there and the storage open; an unreachable server counts against
            the same wait, and a stop request ends it at once (no retry runs past one)."""
            try:
                if not backend.schema_ready(url):
                    return False
                self.storage = backend.open_storage(url)
                return True
            except (*backend.DB_ERRORS, DatabaseUnavailable) as e:
                if time.monotonic() > deadline:
                    if isinstance(e, DatabaseUnavailable):
                        raise
                    raise DatabaseUnavailable(backend.describe_db_error(url, e)) from None
                log.warning("database error while looking for the schema: %s", backend.driver_message(e))
                return False

        pauses = self._startup_pauses()
        while not ready():
            if self._stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise StorageError(
                    f"no hpo schema in {mask_url(url)} after {self.options.wait_for_campaign_seconds:g}s: "
                    "create it with `hpo init`"
                )
            self._stop.wait(next(pauses))
        self._lock_engine = self.storage.engine
        # The studies run on a snapshot with batched writes (see storage.worker_storage);
        # self.storage stays the plain RDBStorage for everything read fresh.
        self.study_storage = WorkerStorage(self.storage, flush_seconds=min(5.0, backend.HEARTBEAT_INTERVAL))
        self.heartbeat = Heartbeat(self.study_storage, backend.HEARTBEAT_INTERVAL)
        return True

    # -- signals ---------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        # A second signal is the usual case, not an emergency: a terminal's Ctrl-C reaches the
        # whole process group, and the coordinator then stops its workers with SIGTERM.
        # Stopping "harder" would skip the re-queue and leave the trial RUNNING until it is
        # reaped; the worker stops at the next epoch boundary either way (SIGKILL, the last
        # resort, leaves the trial to the reapers).
        if self._stop.is_set():
            log.warning("already stopping: the trial is queued again at the next epoch boundary")
            return
        log.warning("stop requested: finishing at the next epoch boundary")
        self._stop.set()
        self.summary.stopped_by_signal = True

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        if not self._open():
            return self.summary
        trials_run = 0
        while not self._stop.is_set():
            if self.options.max_trials is not None and trials_run >= self.options.max_trials:
                break
            if self._orphaned():
                log.warning("the coordinator is gone; exiting")
                break
            stage = self._current_stage()
            if stage is None:
                break
            study, plan, space = stage
            claim_started = time.perf_counter()
            trial = self._retrying(lambda: self._claim_trial(study, plan, space), "take a trial")
            if trial == "wait":
                self._stop.wait(self.options.poll_seconds)
                continue
            if isinstance(trial, StageFailed):
                if trial.why is not None:
                    self._retrying(lambda: records.mark_stage_failed(self.storage, plan.study_name, trial.why),
                                   "mark the stage failed")
                self.summary.stage_failed = str(trial)
                log.error("%s", trial)
                break
            if trial == "stage done":
                if self.options.study or self._is_last(plan):
                    break
                self._wait_for_next_stage(plan)
                continue
            assert isinstance(trial, optuna.Trial)
            self._run_one(study, plan, space, trial, claim_started)
            trials_run += 1
        return self.summary

    def close(self) -> None:
        """Let go of the database: the current trial's heartbeat, the kept connections and the
        engine. A worker process simply exits; a worker run inside another process (a
        benchmark, a test) is closed when it is done."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.study_storage is not None:
            self.study_storage.close()
        if self.storage is not None:
            self.storage.engine.dispose()

    def _orphaned(self) -> bool:
        return self.options.parent_pid is not None and os.getppid() != self.options.parent_pid

    def _current_stage(self) -> tuple[optuna.Study, StagePlan, SearchSpace] | None:
        """The stage study to work on: the named study, or the campaign's newest stage."""
        if self.options.study:
            name = self.options.study
        else:
            stages = self._wait_for_campaign()
            if not stages:
                return None
            name = stages[-1].study_name
        if name not in self._studies:
            self._studies[name] = self._retrying(lambda: self._load(name), "load the study")
        return self._studies[name]

    def _load(self, name: str) -> tuple[optuna.Study, StagePlan, SearchSpace]:
        plan = stageplan.read_plan(self.storage, name)
        if plan is None:
            raise StorageError(f"study {name!r} was not created by hpo (it has no stage plan)")
        space = SearchSpace.from_dict(plan.space)
        cached_dataset(plan.dataset, plan.seed)  # load once, before any trial's clock starts
        slot = records.take_slot(self.storage, self.options.storage_url, name)
        seed = sampler_seed(plan.seed, slot, self.options.seed)
        log.info("joined %s as its worker %d (sampler seed %d)", name, slot, seed)
        study = optuna.load_study(
            study_name=name,
            storage=self.study_storage,
            sampler=make_sampler(plan.sampler, space, seed),
            pruner=make_pruner(plan.pruner, plan.epochs),
        )
        return study, plan, space

    def _startup_pauses(self) -> Iterator[float]:
        """The pauses between looks for the schema or the campaign: short at first, so a worker
        started together with its campaign (`hpo search` starts its workers first) takes its
        first trial as soon as the stage exists, then ``poll_seconds``."""
        return doubling_pauses(self.options.poll_seconds)

    def _wait_for_campaign(self) -> list[StagePlan]:
        deadline = time.monotonic() + self.options.wait_for_campaign_seconds
        pauses = self._startup_pauses()
        while True:
            stages = self._retrying(
                lambda: stageplan.campaign_stages(self.storage, self.options.campaign), "read the campaign"
            )
            if stages or self._stop.is_set():
                return stages
            if time.monotonic() > deadline:
                raise CampaignNotFound(
                    f"no campaign named {self.options.campaign!r} appeared in "
                    f"{self.options.wait_for_campaign_seconds:g}s: check the name (hpo studies)"
                )
            self._stop.wait(next(pauses))

    def _wait_for_next_stage(self, plan: StagePlan) -> None:
        """The stage is full: wait until the coordinator opens the next one (or stops)."""
        next_name = stageplan.stage_study_name(plan.campaign, plan.stage + 1)
        while not self._stop.is_set():
            stages = self._retrying(
                lambda: stageplan.campaign_stages(self.storage, plan.campaign), "read the campaign"
            )
            if any(s.study_name == next_name for s in stages) or self._orphaned():
                return
            attrs = self._retrying(lambda: records.study_attrs(self.storage, plan.study_name), "read the stage")
            if attrs.get(records.STATUS_ATTR) == records.FAILED:
                self.summary.stage_failed = _stage_failure(plan, attrs)
                log.error("%s", self.summary.stage_failed)
                self._stop.set()
                return
            self._stop.wait(self.options.poll_seconds)

    def _is_last(self, plan: StagePlan) -> bool:
        """Whether the campaign ends with this stage: its stage count is the stored campaign
        plan's (which `hpo search --replan` may have raised since this stage was created)."""
        def read() -> tuple[dict[str, Any], bool]:
            first = records.study_attrs(self.storage, stageplan.stage_study_name(plan.campaign, 1))
            later = stageplan.campaign_stages(self.storage, plan.campaign)[plan.stage:]
            return first.get(records.CAMPAIGN_ATTR) or {}, bool(later)

        campaign, later = self._retrying(read, "read the campaign")
        stages = campaign.get("stages") if isinstance(campaign.get("stages"), int) else plan.stages
        return not later and plan.stage >= max(stages, plan.stages)

    def _claim_trial(self, study: optuna.Study, plan: StagePlan, space: SearchSpace):
        """Under the database-wide lock: reap stale trials, then take a trial, or say why not.

        Counting and opening the trial under one lock is what makes a stage finish its budget
        exactly with many workers, and keeps SQLite (which ignores SELECT ... FOR UPDATE) from
        handing one queued trial to two workers. The parameters are sampled after the lock.
        """
        # One transaction from reading the study to the first heartbeat: a claim that fails
        # half-way leaves nothing behind, and runs again from the start. Its commit does not
        # wait for the disk: a crash of the database server can undo a claim (then the trial is
        # dropped as lost when its result is stored), never a result (on SQLite no commit of the
        # worker waits for the disk: see WorkerStorage._kept_connection). On PostgreSQL and MySQL
        # the claim's transaction itself takes the lock (the key backend.exclusive locks), and
        # releases it as it ends.
        if self.study_storage.locks_in_batch:
            lock = contextlib.nullcontext()
            claim = self.study_storage.batch(durable=False, lock=backend.lock_key(plan.study_name))
        else:
            lock = backend.exclusive(self.options.storage_url, plan.study_name, self._lock_engine)
            claim = self.study_storage.batch()
        with lock, claim:
            # Stale means no beat for HEARTBEAT_GRACE seconds: looking once per beat interval
            # finds every stale trial as soon as looking each claim would, give or take a beat.
            if time.monotonic() >= self._next_reap.get(plan.study_name, 0.0):
                backend.reap_stale_trials(study)
                self._next_reap[plan.study_name] = time.monotonic() + backend.HEARTBEAT_INTERVAL
            self.study_storage.sync(optuna_access.study_id(study))  # what every other worker did, read once
            counts = self.study_storage.count_states(optuna_access.study_id(study))
            # Read under the lock, as the budget is: a stage closed or failed a moment ago
            # takes no more trials (one indexed query per claim).
            attrs = self.study_storage.read_study_attrs(optuna_access.study_id(study), records.STAGE_STATE_ATTRS)
            if attrs.get(records.STATUS_ATTR) == records.FAILED:
                return StageFailed(_stage_failure(plan, attrs))
            # The verdict only changes when a trial failed since the last claim looked.
            fails = counts.get("FAIL", 0)
            if fails != self._fails_seen.get(plan.study_name, 0) and (why := self._failure_verdict(study, plan)):
                # Marked once the claim's transaction is over (on SQLite a second connection
                # could not write while this one may hold the write lock).
                return StageFailed(_stage_failure(plan, {records.FAILURE_ATTR: why}), why=why)
            self._fails_seen[plan.study_name] = fails
            finished = stageplan.finished_count(counts)
            running = counts.get("RUNNING", 0)
            if attrs.get(records.STATUS_ATTR) == records.DONE or finished + running >= stageplan.budget(plan, attrs):
                return "wait" if running and attrs.get(records.STATUS_ATTR) != records.DONE else "stage done"
            trial = optuna_access.open_trial(study)
            # Named at once, so `hpo health` can say who runs a RUNNING trial.
            write_record(trial, TrialRecord(worker=self.options.worker_id))
            self.study_storage.flush(optuna_access.trial_id(trial), heartbeat=True)
        # The trial exists from here on: nothing below may fail the claim and make it ask again.
        # Sampling (a millisecond or more of TPE) runs after the lock is released, so other
        # workers claim meanwhile: holding the lock for it was most of what kept two workers
        # from finishing twice the trials of one. The sample reads the snapshot synced under
        # the lock; what another worker samples at the same moment it misses, as any sampler
        # running in parallel does. The parameters are written at once, for other workers'
        # constant-liar TPE and for `hpo trials`; if that write fails they go with the next one.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            suggest_all(trial, space)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, *backend.DB_ERRORS):
            self.study_storage.flush_alone(optuna_access.trial_id(trial))  # failed under us: the first report says so
        self.heartbeat.start(optuna_access.trial_id(trial), beat=False)  # its first beat was written in the claim
        return trial

    def _failure_verdict(self, study: optuna.Study, plan: StagePlan) -> str | None:
        """``stageplan.failure_verdict`` over the snapshot synced in this claim."""
        done = [t for t in self.study_storage.get_all_trials(optuna_access.study_id(study), deepcopy=False)
                if t.state.is_finished()]
        done.sort(key=lambda t: (t.datetime_complete or datetime.datetime.min, optuna_access.trial_id(t)))
        return stageplan.failure_verdict(plan, [(t.state.name, read_reason(t.user_attrs)) for t in done])

    def _run_one(
        self, study: optuna.Study, plan: StagePlan, space: SearchSpace, trial: optuna.Trial, started: float
    ) -> None:
        """Train ``trial`` and store its outcome; ``started`` is when the worker began claiming it.

        The overhead recorded (time outside training) runs from that claim to the last report,
        so it counts the lock, the reaping, the sampling and the pruning checks; the final write
        of the result cannot time itself and is left out.
        """
        try:
            outcome = run_trial(
                _RetryingTrial(trial, self._retrying), plan, space, stop_requested=self._stop.is_set, trainer=self.trainer
            )
        except StopRequested:
            self._requeue(study, trial)
            self.heartbeat.stop()
            return
        except optuna.exceptions.UpdateFinishedTrialError:
            self.heartbeat.stop()
            self._lost(trial)
            return
        except Exception as e:  # a bug or bad data: record it on the trial, keep the worker
            log.exception("trial %d failed", trial.number)
            outcome = TrialOutcome(TrialRecord(state=TrialState.FAIL.name, reason=_first_line(e)))
        overhead = time.perf_counter() - started - outcome.train_seconds
        timings = Timings(train_seconds=round(outcome.train_seconds, 4), overhead_seconds=round(overhead, 4))
        outcome.record = dataclasses.replace(outcome.record, timings=timings)
        attempts = 0

        def store() -> None:
            nonlocal attempts
            attempts += 1
            self._store(study, trial, outcome, retry=attempts > 1)

        try:
            self._retrying(store, "store the result")
        except optuna.exceptions.UpdateFinishedTrialError:
            self._lost(trial)
        finally:
            self.heartbeat.stop()
        state = outcome.state.name
        self.summary.trials[state] = self.summary.trials.get(state, 0) + 1
        self.summary.train_seconds += outcome.train_seconds
        self.summary.overhead_seconds += overhead
        log.info("%s", trial_log_line(trial.number, plan.study_name, outcome, trial.params))

    def _store(self, study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, *, retry: bool = False) -> None:
        """Write the attrs, then the end state; safe to run again after a database error
        (``retry``: an earlier attempt failed, and may have committed all the same)."""
        if retry:
            frozen = self.study_storage.read_trial(optuna_access.trial_id(trial))
            if frozen.state.is_finished():
                if self._stored_by_us(frozen, outcome):
                    return  # an earlier attempt committed; only its answer was lost
                raise optuna.exceptions.UpdateFinishedTrialError("finished under this worker")
        write_record(trial, outcome.record)
        values = outcome.value if outcome.state == TrialState.COMPLETE else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.tell(trial, values, state=outcome.state, skip_if_finished=True)
        # The worker's storage writes the end state only over RUNNING, and raises
        # UpdateFinishedTrialError otherwise. A tell that skipped the trial as finished did not
        # write it: say so rather than count a result that was not stored.
        if not self.study_storage.wrote_end_state(optuna_access.trial_id(trial)) and not self._stored_by_us(
            self.study_storage.read_trial(optuna_access.trial_id(trial)), outcome
        ):
            raise optuna.exceptions.UpdateFinishedTrialError("finished under this worker")

    def _stored_by_us(self, frozen: optuna.trial.FrozenTrial, outcome: TrialOutcome) -> bool:
        if frozen.state != outcome.state or read_record(frozen).worker != self.options.worker_id:
            return False
        return outcome.state != TrialState.COMPLETE or frozen.value == outcome.value

    def _requeue(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Fail the interrupted trial and queue it once more, as a stale trial would be, under
        the lock the reapers hold (so a reaper looking at the same time cannot queue it twice)."""

        def fail_and_retry() -> None:
            with backend.exclusive(self.options.storage_url, study.study_name, self._lock_engine):
                self.study_storage.release(optuna_access.trial_id(trial))  # write what it holds; read fresh from here
                backend.fail_with_retry(study, optuna_access.trial_id(trial))
                stageplan.tidy_closed_stage(self.storage, self._studies[study.study_name][1])

        self._retrying(fail_and_retry, "re-queue the interrupted trial")
        log.warning("trial %d interrupted: failed and queued again", trial.number)

    def _lost(self, trial: optuna.Trial) -> None:
        log.warning(
            "trial %d was failed by another worker (this worker's heartbeat was late); "
            "its retry runs elsewhere",
            trial.number,
        )
        self.summary.trials["LOST"] = self.summary.trials.get("LOST", 0) + 1

    def _retrying(self, action: Callable[[], T], what: str) -> T:
        """Run ``action``; on a database error retry with backoff for up to db_retry_seconds."""
        return backend.retrying(action, what, self.options.storage_url, seconds=self.options.db_retry_seconds, logger=log)


class _RetryingTrial:
    """The trial as a training run sees it: ``report`` and ``should_prune`` ride out database
    errors (a retried report is written once). Everything else is the trial's own."""

    def __init__(self, trial: optuna.Trial, retrying: Callable[[Callable[[], Any], str], Any]) -> None:
        self._trial = trial
        self._retrying = retrying

    def report(self, value: float, step: int) -> None:
        self._retrying(lambda: self._trial.report(value, step), f"report step {step} of trial {self._trial.number}")

    def should_prune(self) -> bool:
        return self._retrying(self._trial.should_prune, f"ask the pruner about trial {self._trial.number}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


def doubling_pauses(longest: float, first: float = 0.05) -> Iterator[float]:
    """Pauses between looks at something about to happen: ``first`` seconds, doubling up to
    ``longest``. What is ready at once is seen at once, and a long wait costs few looks."""
    pause = min(first, longest)
    while True:
        yield pause
        pause = min(longest, 2 * pause)


def suggest_all(trial: optuna.Trial, space: SearchSpace) -> None:
    """Sample every parameter of ``space`` that applies to ``trial``, in the space's sampling
    order (a conditional parameter after the choices its condition names, so it is suggested
    only where it means something), through the public ``suggest_*`` of each distribution's
    type. For TPE the first suggestion samples the parameters every trial has in one
    relative-sampling call; a conditional one is sampled on its own from the trials that
    have it (workers/strategy.py)."""
    distributions = space.to_distributions()
    for name in space.sampling_order():
        if name in space.conditions and not space.applies(name, trial.params):
            continue
        d = distributions[name]
        if isinstance(d, FloatDistribution):
            trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(name, d.choices)
        else:
            raise TypeError(f"cannot sample {name!r} from {d!r}")


class StageFailed(str):
    """A claim's answer: the stage was stopped by its failure budget (the text says why);
    ``why`` is set when this claim found it and the stage is still to be marked failed."""

    why: str | None

    def __new__(cls, text: str, why: str | None = None) -> StageFailed:
        self = super().__new__(cls, text)
        self.why = why
        return self


def _stage_failure(plan: StagePlan, attrs: dict[str, Any]) -> str:
    why = attrs.get(records.FAILURE_ATTR) or "its trials kept failing"
    return f"stage {plan.study_name} stopped: {why}"


def trial_log_line(number: int, study_name: str, outcome: TrialOutcome, params: dict[str, Any]) -> str:
    """What ``hpo worker -v`` logs when a trial ends: its number and stage, its outcome
    (COMPLETE, PRUNED, DIVERGED or FAIL) with its value or the reason, how many epochs it
    trained in how long, and its parameters, e.g.
    ``trial 7 of c/stage-1: PRUNED (pruned at step 2: 0.4100 below the median) after 2 epochs
    in 0.81s; activation=relu, learning_rate=0.00123``."""
    record = outcome.record
    state = "DIVERGED" if is_diverged(record.state, {"reason": record.reason}) else record.state
    result = f"{state} {record.value:.4f}" if record.value is not None else state
    if record.reason:
        result += f" ({record.reason})"
    epochs = len(record.curve.epoch) if record.curve is not None else 0
    shown = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                      for name, value in params.items())
    return (f"trial {number} of {study_name}: {result} after {epochs} epoch{'' if epochs == 1 else 's'} "
            f"in {outcome.train_seconds:.2f}s; {shown or 'no parameters'}")


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return (text.splitlines() or [type(error).__name__])[0]


def run_worker(options: WorkerOptions, *, stop_asked: threading.Event | None = None) -> WorkerSummary:
    """Run a worker in this process until its campaign or study is done, or it is stopped
    (``stop_asked``: set by a signal that came while the process was starting; then the
    worker takes no trial)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = Worker(options)
    worker.install_signal_handlers()
    if stop_asked is not None and stop_asked.is_set():
        worker.request_stop()
    return worker.run()

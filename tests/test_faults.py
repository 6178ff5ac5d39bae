"""Faults, against real databases: workers killed, stopped, started all at once, a PostgreSQL or
MariaDB server restarted under them, SQLite shared by four, `hpo fail-stale` racing the workers.
The tests of a database many machines share run on PostgreSQL and on MariaDB (``server_url``;
a restart, on a throwaway server of each: ``server_cluster``).

Every test ends with ``assert_nothing_lost_or_repeated`` (tests/ledger.py). Heartbeats are
short here (a beat every second, stale after three) so a dead worker's trial is reaped within
seconds. Every wait polls the database with a deadline; every process is killed in a finally.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo import inspect
from hpo.campaign import CampaignSpec
from storage import backend, records
from storage.url import resolve_url
from tests.helpers import backdate_heartbeats, sql
from tests.ledger import assert_nothing_lost_or_repeated
from tests.mariadbcluster import mariadb_cluster  # noqa: F401 - a fixture
from tests.pgcluster import pg_cluster  # noqa: F401 - a fixture
from workers import stageplan
from workers.space import build_space

pytestmark = pytest.mark.slow

HEARTBEAT = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3"}
# Trials of EPOCHS short epochs (seconds in all) and no pruner: a signal lands in the middle of one.
EPOCHS = 20
PARAMS = ["hidden_sizes=128-128", "batch_size=16", "lr=log:1e-3..3e-2", "activation=relu,tanh",
          "initializer=he,xavier", "batch_norm=true"]
LOST = "was failed by another worker"


# -- processes -------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path  # stderr, and stdout unless kept apart
    stdout_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout(self) -> str:
        return (self.stdout_path or self.log_path).read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout}s:\n{self.output()[-3000:]}") from None


class Procs:
    """`hpo` processes with their output in files; whatever still runs at the end is killed."""

    def __init__(self, folder: Path, url: str, **env: str) -> None:
        self.folder = folder
        self.env = {**os.environ, "HPO_STORAGE": url, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    **HEARTBEAT, **env}
        self.procs: list[Proc] = []

    def hpo(self, name: str, *args: str, stdout_apart: bool = False, **env: str) -> Proc:
        log_path = self.folder / f"{name}.log"
        stdout_path = self.folder / f"{name}.out" if stdout_apart else None
        with open(log_path, "wb") as log, open(stdout_path or os.devnull, "wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", "hpo", *args], env={**self.env, **env},
                                     stdin=subprocess.DEVNULL, stdout=out if stdout_apart else log,
                                     stderr=log if stdout_apart else subprocess.STDOUT)
        proc = Proc(name, popen, log_path, stdout_path)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, *args: str) -> Proc:
        return self.hpo(name, "worker", *args)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
        for p in self.procs:
            try:
                p.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass


def wait_until(predicate: Callable[[], object], timeout: float, what: str, procs: list[Proc] = ()) -> object:
    """Poll ``predicate`` (database errors count as "not yet") until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except sqlalchemy.exc.SQLAlchemyError:  # the server is down, or the schema not there yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} (exit {p.popen.poll()}) ---\n{p.output()[-2000:]}" for p in procs)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(0.1)


# -- the record ----------------------------------------------------------------------------
def make_plan(url: str, name: str, *, trials: int, epochs: int, params: list[str] = PARAMS) -> str:
    """Stage 1 of a one-stage campaign ``name`` (no pruner); returns its study name."""
    backend.ensure_schema(url)
    storage = backend.open_storage(url, heartbeat=False)
    try:
        space = build_space(None, None, params)
        spec = CampaignSpec(name=name, space=space, stages=1, trials=[trials], epochs=[epochs], pruner="none")
        plan = spec.plan(1, space)
        stageplan.create_stage(storage, plan)
    finally:
        storage.engine.dispose()
    return plan.study_name


@dataclass
class Running:
    number: int
    trial_id: int
    worker: str | None
    sampled: bool  # its parameters are written (the worker samples them after the claim)


def running(url: str, study: str) -> list[Running]:
    """RUNNING trials with the worker that took each."""
    rows = sql(
        url,
        "SELECT t.number, t.trial_id, "
        "(SELECT a.value_json FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND a.key = 'worker'), "
        "EXISTS (SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id) "
        "FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = :name AND t.state = 'RUNNING' ORDER BY t.number",
        name=study,
    )
    return [Running(n, i, json.loads(w) if w else None, bool(p)) for n, i, w, p in rows]


def trial_state(url: str, study: str, number: int) -> str:
    rows = sql(url, "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = :name AND t.number = :n", name=study, n=number)
    return str(rows[0][0]).removeprefix("TrialState.") if rows else ""


def worker_id(proc: Proc) -> str:
    import socket

    return f"{socket.gethostname()}-{proc.pid}"


class FreshTrial:
    """Polled: the trial ``proc`` has just taken and sampled (seen RUNNING with its parameters
    now, not at the poll before).

    A trial of these tests trains for seconds and a poll takes a fraction of one, so a trial
    caught this way is in its first epochs, far from its end: a signal sent now lands in the
    middle of training, whatever the worker writes to the database as it trains. (Without
    waiting for the parameters, a loaded machine can catch the moment between the claim and
    the sampling: a trial stopped there has no parameters for its retry to repeat.)
    """

    def __init__(self, url: str, study: str, *procs: Proc) -> None:
        self.url, self.study = url, study
        self.workers = {worker_id(p) for p in procs}
        self.before: set[int] | None = None  # None: not polled yet (a trial seen then may be old)

    def __call__(self) -> Running | None:
        mine = [r for r in running(self.url, self.study) if r.worker in self.workers and r.sampled]
        before, self.before = self.before, {r.number for r in mine}
        fresh = [r for r in mine if before is not None and r.number not in before
                 and r.number not in self.skip]
        return fresh[0] if fresh else None

    skip: frozenset[int] = frozenset()  # trial numbers not to catch (e.g. queued retries)


def assert_clean_exit(proc: Proc, timeout: float) -> str:
    code = proc.wait(timeout)
    output = proc.output()
    assert code == 0, f"{proc.name} exited {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    return output


# -- 1. SIGKILL in the middle of a trial -------------------------------------------------------
def test_a_killed_workers_trial_is_failed_when_stale_and_retried_once_elsewhere(server_url, tmp_path):
    study = make_plan(server_url, "kill9", trials=5, epochs=EPOCHS)
    with Procs(tmp_path, server_url) as procs:
        victim = procs.worker("victim", "--study", study)
        others = [procs.worker("other", "--study", study)]
        target = wait_until(FreshTrial(server_url, study, victim), 90,
                            "the victim in the middle of a trial", [victim, *others])
        victim.popen.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert victim.wait(10) == -signal.SIGKILL
        wait_until(lambda: trial_state(server_url, study, target.number) == "FAIL", 30,
                   f"trial {target.number} to be failed as stale", others)
        failed_after = time.monotonic() - killed_at
        wait_until(lambda: retry_taken(server_url, study, target.number), 60, "the retry to be taken", others)
        retried_after = time.monotonic() - killed_at
        for w in others:
            output = assert_clean_exit(w, 120)
            assert LOST not in output

    ledger = assert_nothing_lost_or_repeated(server_url, study)
    assert ledger.failed[study] == [target.number]
    retry = ledger.retries[study][target.number]
    storage = backend.open_storage(server_url, heartbeat=False)
    try:
        trials = {t.number: t for t in records_trials(storage, study)}
    finally:
        storage.engine.dispose()
    assert trials[retry].state.name in ("COMPLETE", "PRUNED")
    assert trials[retry].user_attrs["worker"] in {worker_id(w) for w in others}
    assert trials[retry].params == trials[target.number].params
    # Stale after the 3 s grace; reaped by the next claim of a live worker.
    assert 2.5 < failed_after < 20, failed_after
    print(f"\nSIGKILL -> trial {target.number} failed as stale after {failed_after:.1f}s, its retry (trial "
          f"{retry}) taken after {retried_after:.1f}s (heartbeat 1 s, grace 3 s)")


def retry_taken(url: str, study: str, number: int) -> bool:
    """Whether the retry of trial ``number`` was taken by a worker (RUNNING or finished)."""
    rows = sql(url, "SELECT a.value_json, t.state FROM trial_system_attributes a JOIN trials t ON t.trial_id = a.trial_id "
                    "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name AND a.key = 'retry_history'",
               name=study)
    return any(json.loads(h)[-1] == number and str(state).removeprefix("TrialState.") != "WAITING" for h, state in rows)


def retry_numbers(url: str, study: str) -> list[int]:
    """Numbers of the trials queued as retries of others (by any reaper or a stopped worker)."""
    rows = sql(url, "SELECT t.number FROM trial_system_attributes a JOIN trials t ON t.trial_id = a.trial_id "
                    "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name AND a.key = 'retry_history'",
               name=study)
    return [number for (number,) in rows]


def records_trials(storage, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


# -- 2. SIGTERM / SIGINT -----------------------------------------------------------------------
def test_stopped_workers_requeue_their_trials_and_exit_0_promptly(server_url, tmp_path):
    # A budget the second victim cannot finish while the first one stops (its trials take
    # about 0.4 s), so a trial of its own is left to catch it in.
    study = make_plan(server_url, "stop", trials=10, epochs=EPOCHS)
    with Procs(tmp_path, server_url) as procs:
        victims = {signal.SIGTERM: procs.worker("sigterm", "--study", study),
                   signal.SIGINT: procs.worker("sigint", "--study", study)}
        targets = {}
        for sig, victim in victims.items():
            # The second victim may first take the retry the first one queued; catch it in a
            # trial of its own (a retry stopped again would not be queued a third time:
            # max_retry is 1).
            fresh = FreshTrial(server_url, study, victim)
            fresh.skip = frozenset(retry_numbers(server_url, study))
            targets[sig] = wait_until(fresh, 90,
                                      f"the {sig.name} victim in the middle of a trial", list(victims.values()))
            victim.popen.send_signal(sig)
            stopped_at = time.monotonic()
            output = assert_clean_exit(victim, 15)
            took = time.monotonic() - stopped_at
            assert took < 5, f"{sig.name}: stopped in {took:.1f}s"
            print(f"\n{sig.name} -> worker exited 0 after {took:.2f}s, trial {targets[sig].number} re-queued")
            assert "interrupted: failed and queued again" in output
            # At once, not after a grace period: the trial is not RUNNING any more.
            assert trial_state(server_url, study, targets[sig].number) == "FAIL"
        assert_clean_exit(procs.worker("finisher", "--study", study), 120)

    ledger = assert_nothing_lost_or_repeated(server_url, study)
    stopped = sorted(t.number for t in targets.values())
    assert ledger.failed[study] == stopped
    assert sorted(ledger.retries[study]) == stopped


# -- 1b. a worker frozen past the grace period -------------------------------------------------
def test_a_frozen_worker_loses_its_trial_to_a_retry_and_carries_on(server_url, tmp_path):
    study = make_plan(server_url, "frozen", trials=4, epochs=EPOCHS)
    with Procs(tmp_path, server_url) as procs:
        frozen = procs.worker("frozen", "--study", study)
        target = wait_until(FreshTrial(server_url, study, frozen), 90,
                            "a trial in the middle of training", [frozen])
        frozen.popen.send_signal(signal.SIGSTOP)  # no beats, no reports: as if cut off from the database
        try:
            other = procs.worker("other", "--study", study)
            wait_until(lambda: trial_state(server_url, study, target.number) == "FAIL", 60,
                       f"trial {target.number} to be failed as stale", [other])
        finally:
            frozen.popen.send_signal(signal.SIGCONT)
        outputs = [assert_clean_exit(w, 120) for w in (frozen, other)]

    assert LOST in outputs[0], outputs[0][-2000:]  # a warning, and the worker went on
    ledger = assert_nothing_lost_or_repeated(server_url, study)
    assert ledger.failed[study] == [target.number]
    assert target.number in ledger.retries[study]


# -- 3. server restarts --------------------------------------------------------------------------
@pytest.fixture(params=[pytest.param("pg_cluster", marks=pytest.mark.postgres),
                        pytest.param("mariadb_cluster", marks=pytest.mark.mysql)])
def server_cluster(request):
    """A throwaway server a test may stop and start: PostgreSQL, then MariaDB (one per module)."""
    return request.getfixturevalue(request.param)


def test_workers_and_coordinator_ride_out_server_restarts(server_cluster, tmp_path, monkeypatch):
    password = "restart-pw-5e1f"  # in the secret file only (PostgreSQL's trust auth ignores it): no log may show it
    url = server_cluster.create_database(password)
    secret = tmp_path / "db_password"
    secret.write_text(password + "\n")
    checked = resolve_url(url, {"HPO_DB_PASSWORD_FILE": str(secret)})  # the test's own look, with the password
    trials = 8
    name = "restarts"
    study = stageplan.stage_study_name(name, 1)
    with Procs(tmp_path, url, HPO_DB_PASSWORD_FILE=str(secret)) as procs:
        coordinator = procs.hpo("coordinator", "search", "--name", name, "--workers", "0", "--stages", "1",
                                "--trials", str(trials), "--epochs", str(EPOCHS), "--pruner", "none",
                                *[a for p in PARAMS for a in ("--param", p)], "--json", stdout_apart=True)
        workers = [procs.worker(f"w{i}", "--campaign", name) for i in range(2)]
        everyone = [coordinator, *workers]

        # While they train: both workers in the middle of a trial.
        wait_until(lambda: len(running(checked, study)) == 2, 90, "two trials in training", everyone)
        server_cluster.restart()

        # While they report: down for longer than a heartbeat grace period and than a whole trial,
        # from the start of a trial on, so the worker's reports, beats and result meet a dead server.
        wait_until(FreshTrial(checked, study, *workers), 60, "a trial starting after the restart", everyone)
        server_cluster.stop()
        time.sleep(4)  # the outage itself, not a synchronisation
        server_cluster.start()
        # Every heartbeat is now older than the grace period, yet every worker is alive: a reaper
        # looking at once must not fail their trials (`hpo fail-stale` is such a reaper).
        monkeypatch.setattr(backend, "HEARTBEAT_INTERVAL", 1)
        monkeypatch.setattr(backend, "HEARTBEAT_GRACE", 3)
        storage = backend.open_storage(checked)
        try:
            assert inspect.fail_stale(storage, checked, study)["failed"] == []
        finally:
            storage.engine.dispose()

        assert_clean_exit(coordinator, 180)
        summary = json.loads(coordinator.stdout())
        outputs = [assert_clean_exit(w, 60) for w in workers]

    text = "\n".join(outputs)
    assert "heartbeat for trial" in text, "the outage went unnoticed"
    assert re.search(r"while trying to (report step|store the result)", text), "no report met the outage"
    assert LOST not in text, "a live worker's trial was failed under it"
    assert password not in text + coordinator.output()
    assert summary["best"]["test_accuracy"] > 0.5
    ledger = assert_nothing_lost_or_repeated(checked, name, exact_budget=False)
    assert ledger.finished(study) <= trials + 1


# -- 4. many workers at once on an empty database ----------------------------------------------
def test_many_workers_starting_at_once_on_an_empty_database(server_url, tmp_path):
    name = "crowd"
    with Procs(tmp_path, server_url) as procs:
        inits = [procs.hpo("init", "init")]
        workers = [procs.worker(f"w{i}", "--campaign", name) for i in range(4)]
        coordinator = procs.hpo("coordinator", "search", "--name", name, "--workers", "0", "--stages", "1",
                                "--trials", "6", "--epochs", "1", *[a for p in PARAMS for a in ("--param", p)])
        for p in [*inits, coordinator, *workers]:
            assert_clean_exit(p, 180)
    assert sql(server_url, "SELECT COUNT(*) FROM version_info")[0][0] == 1
    assert sql(server_url, "SELECT COUNT(*) FROM alembic_version")[0][0] == 1
    assert_nothing_lost_or_repeated(server_url, name)


# -- 5. four workers on one SQLite file --------------------------------------------------------
def test_four_workers_share_one_sqlite_file(sqlite_url, tmp_path):
    study = make_plan(sqlite_url, "lite", trials=12, epochs=2)
    with Procs(tmp_path, sqlite_url) as procs:
        workers = [procs.worker(f"w{i}", "--study", study) for i in range(4)]
        outputs = [assert_clean_exit(w, 180) for w in workers]
    text = "\n".join(outputs)
    assert "locked" not in text and "database error" not in text, text[-3000:]
    ledger = assert_nothing_lost_or_repeated(sqlite_url, study)
    assert ledger.failed[study] == []
    assert sum(len(rows) > 0 for rows in ledger.by_worker.values()) >= 2


# -- 6. hpo fail-stale racing the workers' own reaping -----------------------------------------
def test_fail_stale_and_the_workers_reaping_fail_and_retry_a_trial_once(server_url, tmp_path):
    study = make_plan(server_url, "race", trials=5, epochs=EPOCHS)
    reports: list[dict] = []
    errors: list[BaseException] = []
    with Procs(tmp_path, server_url) as procs:
        victim = procs.worker("victim", "--study", study)
        others = [procs.worker("other", "--study", study)]
        target = wait_until(FreshTrial(server_url, study, victim), 90,
                            "the victim in the middle of a trial", [victim, *others])
        victim.popen.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30

        def failed() -> bool:
            return trial_state(server_url, study, target.number) == "FAIL" or time.monotonic() > deadline

        def in_process() -> None:  # what `hpo fail-stale` runs, as fast as it can
            storage = backend.open_storage(server_url, heartbeat=True)
            try:
                while not failed():
                    reports.append(inspect.fail_stale(storage, server_url, study))
                    time.sleep(0.02)
                reports.append(inspect.fail_stale(storage, server_url, study))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                storage.engine.dispose()

        def command() -> None:  # the command itself, started again and again
            try:
                while not failed():
                    result = subprocess.run([sys.executable, "-m", "hpo", "fail-stale", study, "--format", "json"],
                                            env=procs.env, capture_output=True, text=True, timeout=60)
                    assert result.returncode == 0, result.stderr
                    reports.append(json.loads(result.stdout))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=f) for f in (in_process, in_process, command)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert trial_state(server_url, study, target.number) == "FAIL"
        for w in others:
            assert_clean_exit(w, 120)

    reaped_by_commands = [f["number"] for r in reports for f in r["failed"]]
    assert reaped_by_commands.count(target.number) <= 1, reports
    ledger = assert_nothing_lost_or_repeated(server_url, study)
    assert ledger.failed[study] == [target.number]
    assert target.number in ledger.retries[study]


# -- the pieces the faults above rely on, failing at the worst moment ------------------------
def _reaper_study(url: str, monkeypatch, *trials: TrialState):
    """A study on a heartbeat storage (grace 2 s) holding trials in the given states."""
    monkeypatch.setattr(backend, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(backend, "HEARTBEAT_GRACE", 2)
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    study = optuna.create_study(storage=storage, study_name="reap", direction="maximize")
    for state in trials:
        study.add_trial(optuna.trial.create_trial(
            state=state, params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            value=0.5 if state == TrialState.COMPLETE else None))
    return storage, study


def _backdate(storage, trial_id: int, seconds: int) -> None:
    assert backdate_heartbeats(storage.engine, seconds, trial_id) == 1


def test_a_trial_whose_worker_died_before_its_first_beat_is_reaped(storage_url, monkeypatch):
    """A RUNNING trial without any heartbeat (an `ask` whose answer was lost, a worker killed
    before its first beat) is given one by the first reaper, so it goes stale like any other."""
    storage, study = _reaper_study(storage_url, monkeypatch, TrialState.RUNNING)
    try:
        (trial,) = study.get_trials()
        assert backend.reap_stale_trials(study) == []  # seen for the first time: a beat, not a failure
        assert records.running_heartbeats(storage, study._study_id)[0]["age"] is not None
        _backdate(storage, trial._trial_id, 10)
        assert backend.reap_stale_trials(study) == [0]
        assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"]
    finally:
        storage.engine.dispose()


def test_a_reaper_that_died_after_queuing_the_retry_leaves_no_second_one(storage_url, monkeypatch):
    storage, study = _reaper_study(storage_url, monkeypatch, TrialState.RUNNING)
    try:
        (trial,) = study.get_trials()
        storage.record_heartbeat(trial._trial_id)
        _backdate(storage, trial._trial_id, 10)
        storage.get_heartbeat_stale_trial_callback()(study, trial)  # the retry was queued, then the reaper died
        assert backend.reap_stale_trials(study) == [0]
        trials = study.get_trials()
        assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
        assert trials[1].system_attrs["retry_history"] == [0]
    finally:
        storage.engine.dispose()


def test_a_trial_its_worker_finishes_while_it_is_reaped_keeps_its_result(storage_url, monkeypatch):
    storage, study = _reaper_study(storage_url, monkeypatch, TrialState.RUNNING)
    try:
        (trial,) = study.get_trials()
        storage.record_heartbeat(trial._trial_id)
        _backdate(storage, trial._trial_id, 10)
        callback = storage.get_heartbeat_stale_trial_callback()

        def retry_then_the_worker_finishes(study_, frozen):
            callback(study_, frozen)
            storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.9])  # the late worker wins

        monkeypatch.setattr(storage, "get_heartbeat_stale_trial_callback", lambda: retry_then_the_worker_finishes)
        assert backend.reap_stale_trials(study) == []
        done, retry = study.get_trials()
        assert (done.state.name, done.value) == ("COMPLETE", 0.9)
        assert retry.state.name == "FAIL" and retry.user_attrs["reason"].startswith(backend.NOT_NEEDED)
    finally:
        storage.engine.dispose()


def test_the_claim_lock_survives_a_restart_inside_it(server_cluster):
    """The server restarts while the lock is held: the lock went with the session, and leaving
    the block must not turn the work done inside into an error (a retry would redo it)."""
    url = server_cluster.create_database()
    engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    try:
        with backend.exclusive(url, "stage", engine):
            server_cluster.restart()
        with backend.exclusive(url, "stage", engine):  # and it can be taken again at once
            pass
    finally:
        engine.dispose()

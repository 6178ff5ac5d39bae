"""Faults, against real databases: workers killed, stopped, started all at once, a PostgreSQL
server restarted under them, SQLite shared by four, `hpo fail-stale` racing the workers.

Every test ends with ``assert_nothing_lost_or_repeated`` (tests/ledger.py). Heartbeats are
short here (a beat every second, stale after three) so a dead worker's trial is reaped within
seconds. Every wait polls the database with a deadline; every process is killed in a finally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy

from hpo import inspect
from hpo.campaign import CampaignSpec
from storage import backend, records
from tests.helpers import sql
from tests.ledger import assert_nothing_lost_or_repeated
from tests.pgcluster import pg_cluster  # noqa: F401 - a fixture
from workers.space import build_space

pytestmark = pytest.mark.slow

HEARTBEAT = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3"}
# Trials of ~20 short epochs (a report each), no pruner: a signal lands in the middle of one.
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
        records.create_stage(storage, plan)
    finally:
        storage.engine.dispose()
    return plan.study_name


@dataclass
class Running:
    number: int
    trial_id: int
    worker: str | None
    steps: int


def running(url: str, study: str) -> list[Running]:
    """RUNNING trials with their worker and how many epochs they reported so far."""
    rows = sql(
        url,
        "SELECT t.number, t.trial_id, "
        "(SELECT a.value_json FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND a.key = 'worker'), "
        "(SELECT COUNT(*) FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id) "
        "FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = :name AND t.state = 'RUNNING' ORDER BY t.number",
        name=study,
    )
    return [Running(n, i, json.loads(w) if w else None, int(steps)) for n, i, w, steps in rows]


def trial_state(url: str, study: str, number: int) -> str:
    rows = sql(url, "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = :name AND t.number = :n", name=study, n=number)
    return str(rows[0][0]).removeprefix("TrialState.") if rows else ""


def worker_id(proc: Proc) -> str:
    import socket

    return f"{socket.gethostname()}-{proc.pid}"


def mid_training(url: str, study: str, proc: Proc, epochs: int) -> Running | None:
    """The trial ``proc`` is training, once it has reported an epoch and is far from its end."""
    for r in running(url, study):
        if r.worker == worker_id(proc) and 1 <= r.steps <= epochs // 2:
            return r
    return None


def assert_clean_exit(proc: Proc, timeout: float) -> str:
    code = proc.wait(timeout)
    output = proc.output()
    assert code == 0, f"{proc.name} exited {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    return output


# -- 1. SIGKILL in the middle of a trial -------------------------------------------------------
def test_a_killed_workers_trial_is_failed_when_stale_and_retried_once_elsewhere(postgres_url, tmp_path):
    epochs = 20
    study = make_plan(postgres_url, "kill9", trials=8, epochs=epochs)
    with Procs(tmp_path, postgres_url) as procs:
        victim = procs.worker("victim", "--study", study, "--seed", "1")
        others = [procs.worker(f"w{i}", "--study", study, "--seed", str(i + 2)) for i in range(2)]
        target = wait_until(lambda: mid_training(postgres_url, study, victim, epochs), 90,
                            "the victim in the middle of a trial", [victim, *others])
        victim.popen.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert victim.wait(10) == -signal.SIGKILL
        wait_until(lambda: trial_state(postgres_url, study, target.number) == "FAIL", 30,
                   f"trial {target.number} to be failed as stale", others)
        failed_after = time.monotonic() - killed_at
        for w in others:
            output = assert_clean_exit(w, 120)
            assert LOST not in output

    ledger = assert_nothing_lost_or_repeated(postgres_url, study)
    assert ledger.failed[study] == [target.number]
    retry = ledger.retries[study][target.number]
    storage = backend.open_storage(postgres_url, heartbeat=False)
    try:
        trials = {t.number: t for t in records_trials(storage, study)}
    finally:
        storage.engine.dispose()
    assert trials[retry].state.name in ("COMPLETE", "PRUNED")
    assert trials[retry].user_attrs["worker"] in {worker_id(w) for w in others}
    assert trials[retry].params == trials[target.number].params
    # Stale after the 3 s grace; reaped by the next claim of a live worker.
    assert 2.5 < failed_after < 20, failed_after
    print(f"\nSIGKILL -> trial {target.number} failed as stale after {failed_after:.1f}s "
          f"(heartbeat 1 s, grace 3 s); retried as trial {retry}")


def records_trials(storage, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


# -- 2. SIGTERM / SIGINT -----------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_worker_requeues_its_trial_and_exits_0_promptly(postgres_url, tmp_path, sig):
    epochs = 20
    study = make_plan(postgres_url, "stop", trials=6, epochs=epochs)
    with Procs(tmp_path, postgres_url) as procs:
        victim = procs.worker("victim", "--study", study, "--seed", "1")
        other = procs.worker("other", "--study", study, "--seed", "2")
        target = wait_until(lambda: mid_training(postgres_url, study, victim, epochs), 90,
                            "the victim in the middle of a trial", [victim, other])
        victim.popen.send_signal(sig)
        stopped_at = time.monotonic()
        output = assert_clean_exit(victim, 15)
        took = time.monotonic() - stopped_at
        assert took < 5, f"stopped in {took:.1f}s"
        assert "interrupted: failed and queued again" in output
        # At once, not after a grace period: the trial is not RUNNING any more.
        assert trial_state(postgres_url, study, target.number) == "FAIL"
        assert_clean_exit(other, 120)

    ledger = assert_nothing_lost_or_repeated(postgres_url, study)
    assert ledger.failed[study] == [target.number]
    assert target.number in ledger.retries[study]


# -- 3. PostgreSQL restarts --------------------------------------------------------------------
def test_workers_and_coordinator_ride_out_postgres_restarts(pg_cluster, tmp_path, monkeypatch):  # noqa: F811
    url = pg_cluster.create_database()
    password = "restart-pw-5e1f"  # in the secret file only: trust auth ignores it, no log may show it
    secret = tmp_path / "db_password"
    secret.write_text(password + "\n")
    epochs, trials = 20, 10
    name = "restarts"
    study = records.stage_study_name(name, 1)
    with Procs(tmp_path, url, HPO_DB_PASSWORD_FILE=str(secret)) as procs:
        coordinator = procs.hpo("coordinator", "search", "--name", name, "--workers", "0", "--stages", "1",
                                "--trials", str(trials), "--epochs", str(epochs), "--pruner", "none",
                                *[a for p in PARAMS for a in ("--param", p)], "--json", stdout_apart=True)
        workers = [procs.worker(f"w{i}", "--campaign", name, "--seed", str(i)) for i in range(2)]
        everyone = [coordinator, *workers]

        # While they train: both workers in the middle of a trial.
        wait_until(lambda: sum(1 <= r.steps <= epochs // 2 for r in running(url, study)) == 2, 90,
                   "two trials in training", everyone)
        pg_cluster.restart()

        # While they report: down for longer than an epoch, a heartbeat grace period and a trial's
        # end, so every worker's reports, beats and results meet a dead server.
        wait_until(lambda: any(1 <= r.steps for r in running(url, study)), 60, "training again", everyone)
        pg_cluster.stop()
        time.sleep(4)  # the outage itself, not a synchronisation
        pg_cluster.start()
        # Every heartbeat is now older than the grace period, yet every worker is alive: a reaper
        # looking at once must not fail their trials (`hpo fail-stale` is such a reaper).
        monkeypatch.setattr(backend, "HEARTBEAT_INTERVAL", 1)
        monkeypatch.setattr(backend, "HEARTBEAT_GRACE", 3)
        storage = backend.open_storage(url)
        try:
            assert inspect.fail_stale(storage, url, study)["failed"] == []
        finally:
            storage.engine.dispose()

        assert_clean_exit(coordinator, 180)
        summary = json.loads(coordinator.stdout())
        outputs = [assert_clean_exit(w, 60) for w in workers]

    text = "\n".join(outputs)
    assert "database error while trying to" in text or "heartbeat for trial" in text, "the restarts went unnoticed"
    assert LOST not in text, "a live worker's trial was failed under it"
    assert password not in text + coordinator.output()
    assert summary["best"]["test_accuracy"] > 0.5
    ledger = assert_nothing_lost_or_repeated(url, name, exact_budget=False)
    assert ledger.finished(study) <= trials + 1


# -- 4. many workers at once on an empty database ----------------------------------------------
def test_many_workers_starting_at_once_on_an_empty_database(postgres_url, tmp_path):
    name = "crowd"
    with Procs(tmp_path, postgres_url) as procs:
        inits = [procs.hpo(f"init{i}", "init") for i in range(2)]
        workers = [procs.worker(f"w{i}", "--campaign", name, "--seed", str(i)) for i in range(5)]
        coordinator = procs.hpo("coordinator", "search", "--name", name, "--workers", "0", "--stages", "1",
                                "--trials", "8", "--epochs", "2", *[a for p in PARAMS for a in ("--param", p)])
        for p in [*inits, coordinator, *workers]:
            assert_clean_exit(p, 180)
    assert sql(postgres_url, "SELECT COUNT(*) FROM version_info")[0][0] == 1
    assert sql(postgres_url, "SELECT COUNT(*) FROM alembic_version")[0][0] == 1
    assert_nothing_lost_or_repeated(postgres_url, name)


# -- 5. four workers on one SQLite file --------------------------------------------------------
def test_four_workers_share_one_sqlite_file(sqlite_url, tmp_path):
    study = make_plan(sqlite_url, "lite", trials=16, epochs=3)
    with Procs(tmp_path, sqlite_url) as procs:
        workers = [procs.worker(f"w{i}", "--study", study, "--seed", str(i)) for i in range(4)]
        outputs = [assert_clean_exit(w, 180) for w in workers]
    text = "\n".join(outputs)
    assert "locked" not in text and "database error" not in text, text[-3000:]
    ledger = assert_nothing_lost_or_repeated(sqlite_url, study)
    assert ledger.failed[study] == []
    assert sum(len(rows) > 0 for rows in ledger.by_worker.values()) >= 2


# -- 6. hpo fail-stale racing the workers' own reaping -----------------------------------------
def test_fail_stale_and_the_workers_reaping_fail_and_retry_a_trial_once(postgres_url, tmp_path):
    epochs = 20
    study = make_plan(postgres_url, "race", trials=8, epochs=epochs)
    reports: list[dict] = []
    errors: list[BaseException] = []
    with Procs(tmp_path, postgres_url) as procs:
        victim = procs.worker("victim", "--study", study, "--seed", "1")
        others = [procs.worker(f"w{i}", "--study", study, "--seed", str(i + 2)) for i in range(2)]
        target = wait_until(lambda: mid_training(postgres_url, study, victim, epochs), 90,
                            "the victim in the middle of a trial", [victim, *others])
        victim.popen.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30

        def failed() -> bool:
            return trial_state(postgres_url, study, target.number) == "FAIL" or time.monotonic() > deadline

        def in_process() -> None:  # what `hpo fail-stale` runs, as fast as it can
            storage = backend.open_storage(postgres_url, heartbeat=True)
            try:
                while not failed():
                    reports.append(inspect.fail_stale(storage, postgres_url, study))
                    time.sleep(0.02)
                reports.append(inspect.fail_stale(storage, postgres_url, study))
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
        assert trial_state(postgres_url, study, target.number) == "FAIL"
        for w in others:
            assert_clean_exit(w, 120)

    reaped_by_commands = [f["number"] for r in reports for f in r["failed"]]
    assert reaped_by_commands.count(target.number) <= 1, reports
    ledger = assert_nothing_lost_or_repeated(postgres_url, study)
    assert ledger.failed[study] == [target.number]
    assert target.number in ledger.retries[study]

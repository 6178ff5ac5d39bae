"""The coordinator killed, or its database cut, at each of its writes in turn.

Every step of `hpo search` must be safe to crash in and to run again: whatever write it dies
at (or loses the database at), the next resume finishes the campaign whole. The fault is put
in by ``tests/fault_inject/sitecustomize.py``, first on the PYTHONPATH of the coordinator
alone (the product carries no test seam): it counts the coordinator's writes (INSERT /
UPDATE / DELETE) and at the K-th one

* ``kill``: SIGKILL just before the write is sent; then a bare ``hpo search --name C`` resumes
  (before stage 1's plan landed, nothing says what the campaign was to be: the same command
  runs again);
* ``kill-after``: SIGKILL just after the write's transaction committed; then the same resume;
* ``cut``: the throwaway PostgreSQL cluster is stopped just before the write and started again
  a few seconds later (one outage longer than 25 s); the coordinator itself rides it out and
  exits 0 with the result.

A dry run first counts the N writes of a tiny campaign (two stages of 3 and 2 one-epoch trials
on digits, one worker attached with `hpo worker --campaign`), then each case runs on a fresh
database whose schema `hpo init` made beforehand. After each run the campaign must be whole:
exactly its two stage studies, no duplicate trial numbers, nothing RUNNING or WAITING, each
budget met exactly with nothing trained twice (tests/ledger.py), each stage with its plan,
lineage and status as a clean run leaves them, at most the one seeded trial queued in stage 2,
and the final result stored once, equal to what the command printed. Every command has a
deadline. Each K prints the write and what happened, so a failure names the write.

Cases by default (HPO_CRASH_ALL=1 runs every write in every mode on both backends): on SQLite,
``kill`` before the first write of each transaction and ``kill-after`` the last write (see
``crash_points``: a kill anywhere else leaves the database as one of these does); on
PostgreSQL, a random half of those (HPO_CRASH_SEED replays a sample); ``cut`` at the first
write of each transaction on the throwaway cluster.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from storage import backend, records
from tests.helpers import sql
from tests.ledger import assert_nothing_lost_or_repeated
from tests.pgcluster import PgCluster, pg_cluster  # noqa: F401 - a fixture
from tests.test_faults import Proc, Procs
from workers import stageplan

pytestmark = pytest.mark.slow

FAULT_INJECT = Path(__file__).parent / "fault_inject"
CAMPAIGN = "crash"
PLAN = ["--stages", "2", "--trials", "3,2", "--epochs", "1,1",
        "--param", "hidden_sizes=32", "--param", "lr=log:1e-3..1e-1"]
BUDGETS = {1: 3, 2: 2}
STAGES = [stageplan.stage_study_name(CAMPAIGN, stage) for stage in BUDGETS]
# The coordinator's options besides the plan. What `hpo search` does once the result is stored
# (the report, whose figures it attaches to the stage studies in some 90 writes of 2 KB, and the
# model file) is left out: it changes nothing the campaign depends on, and a kill at each of
# those writes would multiply this test's time (tests/test_report.py and test_dashboard.py
# cover them).
AFTER_THE_RESULT = ("--workers", "0", "--json", "--no-report", "--no-model")
RUN_SECONDS = 60  # one coordinator run or resume of this tiny campaign, outages aside
WORKER_EXIT_SECONDS = 30  # a worker's exit once its campaign is finished
OUTAGES = (2, 4, 6, 3, 5)  # seconds the cluster is down, by K; the write of the result gets LONG_OUTAGE
LONG_OUTAGE = 27
ALL = os.environ.get("HPO_CRASH_ALL") == "1"


# -- fresh databases ---------------------------------------------------------------------------
class Databases:
    """Fresh databases of one backend, each a copy of a template whose schema `hpo init` made."""

    def __init__(self, folder: Path, admin_url: str | None) -> None:
        self.folder, self.admin_url = folder, admin_url
        self.made: list[str] = []
        self.template = self._new_name("tmpl")
        self._init(self._url(self.template) if admin_url else f"sqlite:///{folder / 'template.db'}")

    def _new_name(self, kind: str) -> str:
        return f"hpo_crash_{kind}_{uuid.uuid4().hex[:10]}"

    def _url(self, name: str) -> str:
        assert self.admin_url is not None
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def _admin(self, statement: str) -> None:
        engine = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT",
                                          connect_args={"connect_timeout": 5})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with engine.connect() as conn:
                        conn.execute(sqlalchemy.text(statement))
                    return
                except sqlalchemy.exc.OperationalError:  # the throwaway server is still starting
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            engine.dispose()

    def _init(self, url: str) -> None:
        if self.admin_url:
            self._admin(f'CREATE DATABASE "{self.template}"')
            self.made.append(self.template)
        with Procs(self.folder, url) as procs:
            init = procs.hpo("init", "init")
            assert init.wait(RUN_SECONDS) == 0, init.output()

    def fresh(self, label: str) -> str:
        if not self.admin_url:
            path = self.folder / f"{label}.db"
            for suffix in ("", "-wal", "-shm"):  # a WAL file left behind holds part of the schema
                if (self.folder / f"template.db{suffix}").exists():
                    shutil.copyfile(self.folder / f"template.db{suffix}", f"{path}{suffix}")
            return f"sqlite:///{path}"
        name = self._new_name(label.replace("-", "_"))
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return self._url(name)

    def drop_all(self) -> None:
        for name in reversed(self.made):
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except sqlalchemy.exc.SQLAlchemyError:
                pass


# -- what the coordinator wrote --------------------------------------------------------------
@dataclass
class Record:
    """The fault injector's record of one coordinator run."""

    writes: dict[int, str] = field(default_factory=dict)  # k -> statement and parameters
    transactions: list[list[int]] = field(default_factory=list)  # the writes of each committed transaction
    fault: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # statements that failed (the database was down)

    @classmethod
    def read(cls, path: Path) -> Record:
        record = cls()
        if not path.exists():
            return record
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if "k" in entry:
                record.writes[entry["k"]] = f"{entry['statement']}  {entry['params']}"
            elif "error" in entry and "statement" in entry:
                record.errors.append(f"{entry['error']} ({entry['statement']})")
            elif "committed" in entry:
                record.transactions.append(sorted(entry["committed"]))
            elif "fault" in entry:
                if "error" in entry:
                    record.notes.append(entry["error"])
                else:
                    record.fault = entry
        return record


def fault_env(mode: str, k: int, folder: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(FAULT_INJECT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "HPO_FAULT_AT_WRITE": str(k), "HPO_FAULT_MODE": mode,
            "HPO_FAULT_RECORD": str(folder / "writes.jsonl"),
            "HPO_FAULT_CUT_REQUEST": str(folder / "cut-request"), "HPO_FAULT_CUT_DONE": str(folder / "cut-done")}


# -- what a whole campaign looks like --------------------------------------------------------
def study_attrs(url: str) -> dict[str, dict[str, Any]]:
    """{study name: {user attr: value}} of every study in the database."""
    rows = sql(url, "SELECT s.study_name, a.key, a.value_json FROM studies s "
                    "LEFT JOIN study_user_attributes a ON a.study_id = s.study_id")
    attrs: dict[str, dict[str, Any]] = {}
    for study, key, value in rows:
        attrs.setdefault(study, {})
        if key is not None:
            attrs[study][key] = json.loads(value)
    return attrs


def leftovers(url: str) -> str:
    """What is in the database, for a failure message: studies, their attrs and trial states."""
    try:
        attrs = study_attrs(url)
        states = sql(url, "SELECT s.study_name, t.state, COUNT(*) FROM studies s JOIN trials t "
                          "ON t.study_id = s.study_id GROUP BY s.study_name, t.state")
    except sqlalchemy.exc.SQLAlchemyError as e:
        return f"(cannot read the database: {backend.driver_message(e)})"
    lines = []
    for study in sorted(attrs):
        counts = {str(state).removeprefix("TrialState."): n for name, state, n in states if name == study}
        shown = {k: (v if k == records.STATUS_ATTR else "...") for k, v in sorted(attrs[study].items())}
        lines.append(f"    {study}: attrs {shown}, trials {counts}")
    return "\n".join(lines) or "    (no study)"


@dataclass
class Reference:
    """What a clean run leaves: the attrs of each stage (stage 1's plan exactly; stage 2's
    space and lineage depend on how stage 1's trials went, so only their keys)."""

    attrs: dict[str, dict[str, Any]]
    writes: dict[int, str]
    transactions: list[list[int]]

    def first_writes(self) -> dict[int, list[int]]:
        """{first write of a transaction: every write of it}; a write seen in no committed
        transaction counts as one of its own."""
        groups = {g[0]: g for g in self.transactions}
        seen = {k for g in self.transactions for k in g}
        groups.update({k: [k] for k in self.writes if k not in seen})
        return dict(sorted(groups.items()))

    def first_plan_write(self) -> int | None:
        """The write that stores stage 1's plan: the campaign exists for a resume once it landed."""
        for k, write in sorted(self.writes.items()):
            if "study_user_attributes" in write and f"'{records.PLAN_ATTR}'" in write and '"stage": 1,' in write:
                return k
        return None

    def resume_command(self, mode: str, k: int) -> list[str]:
        """A bare ``--name`` once the campaign exists; before that nothing says what it was to
        be, and the user runs the command that was cut short again."""
        plan_write = self.first_plan_write()
        landed = plan_write is not None and (k > plan_write or (k == plan_write and mode == "kill-after"))
        return ["search", "--name", CAMPAIGN, *([] if landed else PLAN), *AFTER_THE_RESULT]


def problems_with(url: str, best: dict[str, Any] | None, reference: Reference) -> list[str]:
    """Everything that makes the campaign less than whole (empty: it is whole)."""
    problems = []
    attrs = study_attrs(url)
    if sorted(attrs) != STAGES:
        problems.append(f"studies {sorted(attrs)}, expected {STAGES}")
    try:
        assert_nothing_lost_or_repeated(url, CAMPAIGN)
    except AssertionError as e:
        problems.append(f"ledger: {str(e).splitlines()[0]}")
    for stage, study in enumerate(STAGES, start=1):
        have, want = attrs.get(study, {}), reference.attrs[study]
        if sorted(have) != sorted(want):
            problems.append(f"{study}: attrs {sorted(have)}, a clean run has {sorted(want)}")
        plan = have.get(records.PLAN_ATTR) or {}
        if stage == 1:
            for key in sorted(set(want) - {records.RESULT_ATTR}):
                if key in have and have[key] != want[key]:
                    problems.append(f"{study}: {key} = {have[key]!r}, a clean run has {want[key]!r}")
        else:
            expected = {k: v for k, v in want[records.PLAN_ATTR].items() if k not in ("space", "lineage")}
            got = {k: v for k, v in plan.items() if k not in ("space", "lineage")}
            if got != expected:
                problems.append(f"{study}: plan {got}, a clean run has {expected}")
            if (plan.get("lineage") or {}).get("parent") != STAGES[0]:
                problems.append(f"{study}: lineage {plan.get('lineage')!r} does not name {STAGES[0]}")
        if plan and plan.get("trials") != BUDGETS[stage]:
            problems.append(f"{study}: budget {plan.get('trials')}, created with {BUDGETS[stage]}")
        if have.get(records.STATUS_ATTR) != "done":
            problems.append(f"{study}: status {have.get(records.STATUS_ATTR)!r}, not 'done'")
    seeded = sql(url, "SELECT COUNT(*) FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id "
                      "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name AND a.key = 'seeded_from'",
                 name=STAGES[1])[0][0]
    if seeded > 1:
        problems.append(f"{STAGES[1]}: {seeded} trials queued as the parent's best, one was asked for")
    results = sql(url, "SELECT s.study_name, a.value_json FROM study_user_attributes a "
                       "JOIN studies s ON s.study_id = a.study_id WHERE a.key = :key", key=records.RESULT_ATTR)
    if [study for study, _ in results] != [STAGES[-1]]:
        problems.append(f"final result stored on {[study for study, _ in results]}, expected once on {STAGES[-1]}")
    elif best is not None and json.loads(results[0][1]) != best:
        problems.append(f"stored result {results[0][1]} differs from the printed best {json.dumps(best)}")
    if best is None:
        problems.append("no result printed")
    return problems


# -- one run ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    mode: str
    k: int
    write: str = "(not reached)"
    steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    database: str = ""

    def line(self) -> str:
        verdict = "whole" if not self.problems else "BROKEN: " + "; ".join(self.problems)
        where = {"kill": "killed before", "kill-after": "killed after", "cut": "database cut at"}[self.mode]
        return f"{where} write {self.k}: {self.write}\n    {', '.join(self.steps)} -> {verdict}"


def printed_best(proc: Proc) -> dict[str, Any] | None:
    try:
        return json.loads(proc.stdout())["best"]
    except (ValueError, KeyError, TypeError):
        return None


def last_line(proc: Proc) -> str:
    lines = [line for line in proc.output().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


def finish(proc: Proc, seconds: float) -> int | None:
    """The exit status, or None (and the process killed) past the deadline: a hang."""
    try:
        return proc.popen.wait(seconds)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
        proc.popen.kill()
        proc.popen.wait(10)
        return None


def run_case(dbs: Databases, mode: str, k: int, folder: Path, reference: Reference,
             cluster: PgCluster | None = None) -> Outcome:
    folder.mkdir(parents=True)
    url = dbs.fresh(f"{mode}-{k}")
    outcome = Outcome(mode, k)
    cutter = Cutter(cluster, folder, outage_for(k, reference)) if mode == "cut" else None
    with Procs(folder, url) as procs:
        worker = procs.worker("worker", "--campaign", CAMPAIGN, "--wait", str(RUN_SECONDS))
        coordinator = procs.hpo("coordinator", "search", "--name", CAMPAIGN, *PLAN, *AFTER_THE_RESULT,
                                stdout_apart=True, **fault_env(mode, k, folder))
        if cutter:
            cutter.start()
        started = time.monotonic()
        code = finish(coordinator, RUN_SECONDS + (cutter.outage if cutter else 0))
        took = time.monotonic() - started
        if cutter:
            cutter.finish()
            outcome.steps.append(cutter.said)
        record = Record.read(folder / "writes.jsonl")
        outcome.write = record.writes.get(k, f"(not reached: this run made {len(record.writes)} writes)")
        outcome.steps += record.notes
        outcome.steps.append(f"coordinator {describe_exit(code, coordinator)} after {took:.0f}s")
        best = printed_best(coordinator) if code == 0 else None
        if mode != "cut":
            if record.fault is not None and code != -9:
                outcome.problems.append(f"the fault was injected but the coordinator exited {code}")
            if worker.popen.poll() is not None:  # it gave up waiting: the campaign is run by another
                outcome.steps.append(f"worker exited {worker.popen.returncode}, another started")
                worker = procs.worker("worker-2", "--campaign", CAMPAIGN, "--wait", str(RUN_SECONDS))
            command = reference.resume_command(mode, k)
            resume = procs.hpo("resume", *command, stdout_apart=True)
            started = time.monotonic()
            code = finish(resume, RUN_SECONDS)
            how = "bare resume" if PLAN[0] not in command else "the same command again"
            outcome.steps.append(f"{how} {describe_exit(code, resume)} after {time.monotonic() - started:.0f}s")
            best = printed_best(resume) if code == 0 else None
        else:
            if code != 0:
                outcome.problems.append("the coordinator did not ride out the outage")
            if record.fault is not None and not record.errors:  # else the case proved nothing
                outcome.problems.append("no statement failed while the database was down")
            outcome.steps.append(f"{len(record.errors)} statements failed")
        if code == 0:
            worker_code = finish(worker, WORKER_EXIT_SECONDS)
            if worker_code != 0:
                outcome.problems.append(f"worker {describe_exit(worker_code, worker)}")
        else:
            worker.popen.kill()
            outcome.problems.append("the campaign did not finish")
    try:
        outcome.problems += problems_with(url, best, reference)
    except sqlalchemy.exc.SQLAlchemyError as e:
        outcome.problems.append(f"cannot check the database: {backend.driver_message(e)}")
    if outcome.problems:
        outcome.database = leftovers(url)
    print(outcome.line(), flush=True)
    return outcome


def describe_exit(code: int | None, proc: Proc) -> str:
    if code is None:
        return "HUNG (killed at its deadline)"
    if code == 0:
        return "exit 0"
    if code == -9:
        return "killed (-9)"
    return f"exit {code} ({last_line(proc)})"


def outage_for(k: int, reference: Reference) -> float:
    """Seconds the cluster stays down when cut at write K: a long one at the final result."""
    if any(records.RESULT_ATTR in reference.writes.get(w, "") for w in reference.first_writes().get(k, [k])):
        return LONG_OUTAGE
    return OUTAGES[k % len(OUTAGES)]


class Cutter:
    """Stops the cluster when the coordinator asks (at its K-th write), says so, and starts it
    again ``outage`` seconds later: the other half of the injector's ``cut`` handshake."""

    def __init__(self, cluster: PgCluster | None, folder: Path, outage: float) -> None:
        assert cluster is not None
        self.cluster, self.outage = cluster, outage
        self.request, self.done = folder / "cut-request", folder / "cut-done"
        self.stop_waiting = threading.Event()
        self.said = "no cut (the write was not reached)"
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.request.exists():
                if self.stop_waiting.wait(0.05):
                    return
            self.cluster.stop()
            self.done.touch()
            down = time.monotonic()
            time.sleep(self.outage)
            self.cluster.start()
            self.said = f"database down {time.monotonic() - down:.0f}s"
        except BaseException as e:  # noqa: BLE001 - raised in the test's thread
            self.error = e

    def finish(self) -> None:
        self.stop_waiting.set()
        self.thread.join(self.outage + 120)
        assert not self.thread.is_alive(), "the cluster was not started again"
        if self.error is not None:
            raise self.error
        if not self.cluster.is_running():  # never leave the next case without its server
            self.cluster.start()


def dry_run(dbs: Databases, folder: Path) -> Reference:
    """One clean run that only records the coordinator's writes; what every case compares to."""
    folder.mkdir(parents=True)
    url = dbs.fresh("dry")
    with Procs(folder, url) as procs:
        worker = procs.worker("worker", "--campaign", CAMPAIGN, "--wait", str(RUN_SECONDS))
        coordinator = procs.hpo("coordinator", "search", "--name", CAMPAIGN, *PLAN, *AFTER_THE_RESULT,
                                stdout_apart=True, **fault_env("kill", 0, folder))
        assert finish(coordinator, RUN_SECONDS) == 0, f"the clean run failed:\n{coordinator.output()[-3000:]}"
        assert finish(worker, WORKER_EXIT_SECONDS) == 0, f"the worker of the clean run:\n{worker.output()[-3000:]}"
    record = Record.read(folder / "writes.jsonl")
    assert record.writes, "the injector recorded no write: is tests/fault_inject on the coordinator's path?"
    reference = Reference(study_attrs(url), record.writes, record.transactions)
    problems = problems_with(url, printed_best(coordinator), reference)
    assert problems == [], f"a clean run is not whole: {problems}"
    print(f"\nclean run: {len(record.writes)} coordinator writes in transactions {reference.transactions}")
    for k, write in sorted(record.writes.items()):
        print(f"  {k:>3}  {write}")
    return reference


Case = tuple[str, int]  # (mode, K)


def run_all(dbs: Databases, cases: list[Case], folder: Path, reference: Reference,
            cluster: PgCluster | None = None) -> None:
    started = time.monotonic()
    outcomes = [run_case(dbs, mode, k, folder / f"{mode}-{k}", reference, cluster) for mode, k in cases]
    broken = [o for o in outcomes if o.problems]
    print(f"{len(outcomes) - len(broken)} of {len(outcomes)} cases left a whole campaign "
          f"({time.monotonic() - started:.0f}s)")
    assert not broken, "\n".join(
        [f"{len(broken)} of {len(outcomes)} cases left the campaign broken:"]
        + [f"{o.line()}\n  database:\n{o.database}" for o in broken])


def crash_points(reference: Reference, mode: str = "kill") -> list[Case]:
    """Where to fault: every write with HPO_CRASH_ALL=1 (and, for kills, after every write).

    Else one write per transaction, its first: a kill before any later write of the same
    transaction leaves the database as a kill before its first does (the transaction dies
    with the process, uncommitted), and so does a kill after a transaction committed and a
    kill before the next one's first write; only the kill after the very last write adds a
    state of its own. A cut in the middle of a transaction fails the same call as a cut at its
    start, with nothing of it committed either.
    """
    last = max(reference.writes)
    if ALL:
        cases = [(mode, k) for k in sorted(reference.writes)]
        return cases + ([("kill-after", k) for k in sorted(reference.writes)] if mode == "kill" else [])
    groups = reference.first_writes()
    print(f"{mode}: before the first write of each transaction {list(groups.values())}"
          + (f", and after write {last}" if mode == "kill" else ""))
    return [(mode, k) for k in groups] + ([("kill-after", last)] if mode == "kill" else [])


def sample(cases: list[Case], what: str) -> list[Case]:
    """Every case with HPO_CRASH_ALL=1, else a random half (HPO_CRASH_SEED replays one)."""
    if ALL:
        return cases
    seed = int(os.environ.get("HPO_CRASH_SEED") or random.randrange(10**6))
    chosen = sorted(random.Random(seed).sample(cases, max(1, (len(cases) + 1) // 2)), key=cases.index)
    print(f"{what}: {chosen} of {len(cases)} cases (HPO_CRASH_SEED={seed} replays this sample)")
    return chosen


# -- the tests -------------------------------------------------------------------------------
@pytest.fixture
def sqlite_dbs(tmp_path) -> Iterator[Databases]:
    yield Databases(tmp_path, None)


@pytest.fixture
def postgres_dbs(postgres_server, tmp_path) -> Iterator[Databases]:
    dbs = Databases(tmp_path, postgres_server)
    try:
        yield dbs
    finally:
        dbs.drop_all()


def test_a_coordinator_killed_at_any_write_on_sqlite_is_finished_by_a_resume(sqlite_dbs, tmp_path):
    reference = dry_run(sqlite_dbs, tmp_path / "dry")
    run_all(sqlite_dbs, crash_points(reference), tmp_path, reference)


@pytest.mark.postgres
def test_a_coordinator_killed_at_any_write_on_postgres_is_finished_by_a_resume(postgres_dbs, tmp_path):
    reference = dry_run(postgres_dbs, tmp_path / "dry")
    run_all(postgres_dbs, sample(crash_points(reference), "PostgreSQL"), tmp_path, reference)


@pytest.mark.postgres
def test_a_database_outage_at_any_coordinator_write_is_ridden_out(pg_cluster, tmp_path):  # noqa: F811
    dbs = Databases(tmp_path, pg_cluster.url())
    reference = dry_run(dbs, tmp_path / "dry")
    run_all(dbs, crash_points(reference, "cut"), tmp_path, reference, pg_cluster)

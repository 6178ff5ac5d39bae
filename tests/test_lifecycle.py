"""Random sequences of user actions and faults on one campaign, then what a user would check.

A sequence, drawn from a seed, does what people do to a campaign: start a coordinator
(`hpo search`, with 0-2 local workers, with the plan's flags, bare, or with some of them),
start and stop `hpo worker` processes, `hpo launch -n 1`, send SIGINT / SIGTERM / SIGKILL to
one process or to its whole process group (a terminal's Ctrl-C is SIGINT to the group), cut
the database for 0.5-8 s (PostgreSQL: a throwaway cluster, stopped and started), resume with
flags that conflict with the plan, `hpo narrow` early (with and without `--force`) and on
time, `hpo fail-stale`, with short random waits in between. Then a bare
`hpo search --name C --workers 2 --json` drives the campaign to its end, and:

* every process exited as the contract says (e.g. SIGINT to `hpo search` -> 130, a stopped
  `hpo worker` -> 0, SIGKILL -> -9, a conflicting resume -> 2 at once and nothing written),
  within a bound (no hang), and printed no traceback;
* a coordinator that returned 130, or a worker stopped by a signal, left nothing RUNNING;
* the campaign as a whole (``tests.ledger.campaign_problems``): no duplicate trial numbers,
  nothing RUNNING or WAITING, every stage's budget met exactly, no configuration trained to a
  result twice in a stage (bar one retry of a failed trial), every stage's plan and lineage,
  the final result stored once and equal to what the final run printed (and to what a
  further resume prints, without retraining).

A failing sequence prints its seed and its actions with their times and exit codes.
``HPO_LIFECYCLE_SEED=S`` replays seed S (a comma list: several; ``random``: fresh seeds);
``HPO_LIFECYCLE_RUNS=N`` runs N sequences per backend. The actions depend on the seed only;
the moments at which the processes reach each point depend on the machine, so a replay
repeats the sequence of actions, not every interleaving.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy

from storage import records
from tests.ledger import campaign_problems
from tests.pgcluster import pg_cluster  # noqa: F401 - a fixture
from workers import stageplan

pytestmark = pytest.mark.slow

CAMPAIGN = "lc"
# A campaign of about ten seconds' training: trials of a fraction of a second each, so a
# signal can land in the middle of one, and configurations that differ (lr is continuous).
PLAN = ["--stages", "2", "--trials", "10,5", "--epochs", "80,160", "--param", "hidden_sizes=32",
        "--param", "batch_size=16", "--param", "lr=log:1e-3..1e-1", "--param", "activation=relu,tanh",
        "--param", "optimizer=sgd,adam"]
# Flags a resume may repeat: each equals the stored plan.
EQUAL_FLAGS = [PLAN, ["--trials", "10,5"], ["--epochs", "80,160"], ["--stages", "2", "--trials", "10,5"],
               ["--seed", "0"], ["--sampler", "tpe", "--pruner", "median"], ["--dataset", "digits"]]
# Flags that conflict with the stored plan: a resume with any of them exits 2 and writes nothing.
CONFLICTS = [["--trials", "11,5"], ["--epochs", "80,161"], ["--stages", "3"], ["--param", "lr=log:1e-4..1e-1"],
             ["--sampler", "random"], ["--seed", "7"], ["--pruner", "none"], ["--cv", "3"],
             ["--param", "activation=relu,tanh,elu"], ["--dataset", "mnist1d"]]
HEARTBEAT = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3"}
ACTIONS = {  # name -> weight
    "coordinator": 3, "worker": 2.5, "launch": 1, "stop-worker": 1.5, "signal": 3,
    "outage": 1.5, "conflict": 1, "narrow": 1.2, "fail-stale": 0.8,
}

ACTION_SECONDS = 25  # no new action after this long into a sequence
STOP_SECONDS = {"coordinator": 30, "worker": 15, "launch": 30}  # from SIGINT / SIGTERM to exit
SHORT_COMMAND_SECONDS = 60  # narrow, fail-stale, a conflicting resume
CONFLICT_SECONDS = 20  # "at once": a conflicting resume reads the plan and stops
FINAL_SECONDS = 240  # the final drive to the campaign's end
DRAIN_SECONDS = 90  # after it, for every process of the sequence to exit
DEFAULT_RUNS = 4
SEED_BASE = {"sqlite": 1000, "postgres": 2000}


def lifecycle_seeds(backend_name: str) -> list[int]:
    """The seeds to run: HPO_LIFECYCLE_SEED (a number, a comma list, or "random"), else fixed ones."""
    runs = int(os.environ.get("HPO_LIFECYCLE_RUNS", DEFAULT_RUNS))
    given = os.environ.get("HPO_LIFECYCLE_SEED", "").strip()
    if given == "random":
        return [random.SystemRandom().randrange(10**6) for _ in range(runs)]
    if given:
        return [int(s) for s in given.split(",") if s.strip()]
    return [SEED_BASE[backend_name] + i for i in range(runs)]


# -- the processes of a sequence ---------------------------------------------------------------
@dataclass
class Run:
    """One `hpo` command of the sequence."""

    name: str
    kind: str  # coordinator | worker | launch | narrow | fail-stale | conflict | final | resume
    argv: list[str]
    popen: subprocess.Popen
    log: Path  # stderr
    out: Path  # stdout
    started: float  # seconds into the sequence
    wait: float = 60.0  # a worker's or launch's --wait
    ended: float | None = None
    signals: list[tuple[float, str, bool]] = field(default_factory=list)  # (when, SIGNAME, to the group)
    descendants: dict[int, str] = field(default_factory=dict)  # pid -> start time (local workers)
    expect: set[int] | None = None  # decided when it ran (short commands)
    starting_signals: set[str] = field(default_factory=set)  # signals that came before its handlers

    @property
    def code(self) -> int | None:
        return self.popen.poll()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def first_stop_signal(self) -> float | None:
        return next((t for t, sig, _ in self.signals if sig in ("SIGINT", "SIGTERM")), None)

    def killed(self) -> bool:
        return any(sig == "SIGKILL" for _, sig, _ in self.signals)

    def describe(self) -> str:
        code = "running" if self.code is None else f"exit {self.code}"
        ended = "" if self.ended is None else f" at {self.ended:.1f}s"
        return f"{self.name}: `hpo {' '.join(self.argv)}` ({code}{ended})"


class Sequence:
    """One random sequence of actions on campaign CAMPAIGN in the storage ``url``."""

    def __init__(self, seed: int, backend_name: str, url: str, folder: Path, cluster=None) -> None:
        self.seed, self.backend_name, self.url, self.folder, self.cluster = seed, backend_name, url, folder, cluster
        self.rng = random.Random(f"{backend_name}-{seed}")
        self.t0 = time.monotonic()
        self.runs: list[Run] = []
        self.events: list[str] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.counter = 0
        self.lock = threading.Lock()
        self.outages: list[tuple[float, float | None]] = []  # (down at, up at)
        self.outage_thread: threading.Thread | None = None
        self.campaign_seen_at: float | None = None  # when the stage-1 plan was first seen
        self.hostname = socket.gethostname()
        (folder / "tmp").mkdir(exist_ok=True)
        self.env = {**os.environ, "HPO_STORAGE": url, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "TMPDIR": str(folder / "tmp"), "COLUMNS": "120", **HEARTBEAT}
        if url.startswith("sqlite"):  # read-only: the harness must not create the file itself
            path = url.removeprefix("sqlite:///")
            self.engine = sqlalchemy.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true",
                                                   connect_args={"timeout": 30})
        else:
            self.engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 2})
        self.stop_monitor = threading.Event()
        self.monitor = threading.Thread(target=self._monitor, name="lifecycle-monitor", daemon=True)

    # -- time and the log ------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        with self.lock:
            self.events.append(f"{self.now():6.1f}s  {text}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    # -- the database, as the harness reads it (None: the server is down) ------------------------
    def query(self, text: str, **params):
        try:
            with self.engine.connect() as conn:
                return conn.execute(sqlalchemy.text(text), params).all()
        except sqlalchemy.exc.SQLAlchemyError:
            return None

    def schema_missing(self) -> bool:
        """Whether the database answers but holds no hpo schema yet (so no campaign either)."""
        if self.url.startswith("sqlite") and not os.path.exists(self.url.removeprefix("sqlite:///")):
            return True
        try:
            return not sqlalchemy.inspect(self.engine).has_table("studies")
        except sqlalchemy.exc.SQLAlchemyError:
            return False

    def stage_state(self) -> tuple[bool, bool | None, bool, bool | None] | None:
        """(stage 1 has its plan, stage 1 met its budget, stage 2 exists, stage 1 has a COMPLETE
        trial); None if unreadable (the server is down)."""
        if self.schema_missing():
            return False, None, False, None
        rows = self.query(
            "SELECT s.study_name, a.key, a.value_json FROM studies s LEFT JOIN study_user_attributes a "
            "ON a.study_id = s.study_id WHERE s.study_name IN (:s1, :s2)",
            s1=stageplan.stage_study_name(CAMPAIGN, 1), s2=stageplan.stage_study_name(CAMPAIGN, 2))
        if rows is None:
            return None
        attrs: dict[str, dict[str, object]] = {}
        for study, key, value in rows:
            attrs.setdefault(study, {})
            if key is not None:
                attrs[study][key] = json.loads(value)
        stage1 = attrs.get(stageplan.stage_study_name(CAMPAIGN, 1), {})
        stage2_exists = stageplan.stage_study_name(CAMPAIGN, 2) in attrs
        if records.PLAN_ATTR not in stage1:
            return False, None, stage2_exists, None
        budget = stage1[records.PLAN_ATTR]["trials"] - int(stage1.get("hpo_cancelled") or 0)
        counts = self.query(
            "SELECT t.state, COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :s1 GROUP BY t.state", s1=stageplan.stage_study_name(CAMPAIGN, 1))
        if counts is None:
            return True, None, stage2_exists, None
        by_state = {str(state).removeprefix("TrialState."): n for state, n in counts}
        met = by_state.get("COMPLETE", 0) + by_state.get("PRUNED", 0) >= budget
        return True, met, stage2_exists, by_state.get("COMPLETE", 0) > 0

    def campaign_exists(self) -> bool | None:
        state = self.stage_state()
        return None if state is None else state[0]

    def plan_snapshot(self) -> dict[str, object] | None:
        """Every study user attr that holds a plan: what a refused resume must leave as it was."""
        rows = self.query("SELECT s.study_name, a.key, a.value_json FROM studies s JOIN study_user_attributes a "
                          "ON a.study_id = s.study_id WHERE a.key IN ('hpo', 'hpo_campaign', 'hpo_status', 'hpo_result')")
        return None if rows is None else {f"{study} {key}": value for study, key, value in rows}

    def running_trials_of(self, pids: list[int]) -> list[str] | None:
        workers = [json.dumps(f"{self.hostname}-{pid}") for pid in pids]
        if not workers or self.schema_missing():
            return []
        rows = self.query(
            "SELECT s.study_name, t.number, a.value_json FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'worker' "
            "WHERE t.state = 'RUNNING'")
        if rows is None:
            return None
        return [f"{study} trial {number} ({json.loads(worker)})" for study, number, worker in rows if worker in workers]

    # -- processes ------------------------------------------------------------------------
    def start(self, kind: str, argv: list[str], *, wait: float = 60.0) -> Run:
        self.counter += 1
        name = f"{kind}{self.counter}"
        log, out = self.folder / f"{name}.err", self.folder / f"{name}.out"
        with open(log, "wb") as err_file, open(out, "wb") as out_file:
            popen = subprocess.Popen([sys.executable, "-m", "hpo", *argv], env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=out_file, stderr=err_file, start_new_session=True, cwd=self.folder)
        run = Run(name, kind, argv, popen, log, out, self.now(), wait=wait)
        with self.lock:
            self.runs.append(run)
        self.event(f"start {name} (pid {popen.pid}): hpo {' '.join(argv)}")
        return run

    def run_short(self, kind: str, argv: list[str], timeout: float) -> Run:
        """Start a command and wait for it; a command past ``timeout`` is a hang (killed)."""
        run = self.start(kind, argv)
        try:
            run.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.problem(f"hang: {run.name} (`hpo {' '.join(argv)}`) still running after {timeout}s")
            self.kill_group(run)
            run.popen.wait(10)
        run.ended = run.ended or self.now()
        self.event(f"{run.name} exit {run.code} after {run.ended - run.started:.1f}s")
        return run

    def alive(self, *kinds: str) -> list[Run]:
        return [r for r in self.runs if r.kind in kinds and r.code is None]

    def send(self, run: Run, sig: signal.Signals, group: bool) -> None:
        self._scan_descendants(run)
        if run.popen.poll() is not None:
            self.event(f"({sig.name} to {run.name}: it has exited already)")
            return
        # A process that has not yet installed its SIGTERM handler is still starting up (loading
        # its modules): SIGTERM then ends it at once, as for any program (exit -15).
        starting = not run.signals and _default_action(run.popen.pid, signal.SIGTERM)
        try:
            if group:
                os.killpg(run.popen.pid, sig)
            else:
                run.popen.send_signal(sig)
        except ProcessLookupError:
            self.event(f"({sig.name} to {run.name}: already gone)")
            return
        run.signals.append((self.now(), sig.name, group))
        if starting:
            run.starting_signals.add(sig.name)
        self.event(f"{sig.name} to {run.name}{' and its process group' if group else ''}"
                   f"{' (still starting: no SIGTERM handler yet)' if starting else ''}")

    def kill_group(self, run: Run) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.popen.pid, signal.SIGKILL)

    # -- the monitor: exit times, descendants, and "nothing RUNNING once it returned" -------------
    def _monitor(self) -> None:
        last_slow = 0.0
        while not self.stop_monitor.is_set():
            for run in list(self.runs):
                if run.ended is None and run.popen.poll() is not None:
                    run.ended = self.now()
                    if run.kind in ("coordinator", "worker", "launch"):
                        self.event(f"{run.name} exit {run.code}")
                        self._check_left_nothing_running(run)
            if time.monotonic() - last_slow > 0.5:
                last_slow = time.monotonic()
                for run in list(self.runs):
                    if run.code is None:
                        self._scan_descendants(run)
                if self.campaign_seen_at is None and self.campaign_exists():
                    self.campaign_seen_at = self.now()
                    self.event("the campaign's stage 1 appeared")
            time.sleep(0.1)

    def _check_left_nothing_running(self, run: Run) -> None:
        stopped = run.first_stop_signal() is not None and not run.killed()
        if not stopped or not ((run.kind == "coordinator" and run.code == 130) or (run.kind == "worker" and run.code == 0)):
            return
        pids = [run.popen.pid, *run.descendants]
        left = self.running_trials_of(pids)
        if left is None:
            self.notes.append(f"{run.name}: could not check for RUNNING trials once it returned (database down)")
        elif left:
            self.problem(f"{run.name} returned {run.code} after {run.first_stop_signal():.1f}s's signal, "
                         f"leaving RUNNING: {left}")
        still = [pid for pid, started in run.descendants.items() if _start_time(pid) == started]
        if run.kind == "coordinator" and still:
            self.problem(f"{run.name} returned {run.code} while its local workers {still} still run")

    def _scan_descendants(self, run: Run) -> None:
        for pid in _descendants(run.popen.pid):
            started = _start_time(pid)
            if started is not None:
                run.descendants.setdefault(pid, started)

    # -- outages ----------------------------------------------------------------------------
    def outage(self, seconds: float) -> None:
        def cut() -> None:
            down_at = self.now()
            try:
                self.cluster.stop()
                self.event(f"database down (for {seconds:.1f}s)")
                time.sleep(seconds)
            finally:
                self.cluster.start()
                self.outages[-1] = (down_at, self.now())
                self.event("database up")

        self.outages.append((self.now(), None))
        self.outage_thread = threading.Thread(target=cut, name="lifecycle-outage", daemon=True)
        self.outage_thread.start()

    def end_outage(self) -> None:
        if self.outage_thread is not None:
            self.outage_thread.join(120)
            assert not self.outage_thread.is_alive(), "the database did not come back"

    def outage_during(self, start: float, end: float | None) -> float:
        """Seconds of outage between ``start`` and ``end`` (None: now), with a margin for reconnecting."""
        end = self.now() if end is None else end
        total = 0.0
        for down, up in self.outages:
            up = self.now() if up is None else up
            if down < end and up + 2 > start:
                total += up - down + 2
        return total

    # -- the actions ------------------------------------------------------------------------
    def play(self) -> None:
        self.monitor.start()
        actions = dict(ACTIONS)
        if self.cluster is None:
            actions.pop("outage")
        n = self.rng.randint(5, 14)
        self.event(f"sequence of up to {n} actions, seed {self.seed} on {self.backend_name}")
        for _ in range(n):
            # The same draws whatever happens: the choice among the actions possible now, the
            # action's own generator, the pause after it; a seed replays the same decisions.
            choice = self.rng.random()
            arng = random.Random(self.rng.getrandbits(64))
            pause = 0.2 + 3.5 * self.rng.random() ** 2
            if self.now() > ACTION_SECONDS:
                break
            possible = {name: weight for name, weight in actions.items() if self.possible(name)}
            action = _weighted(possible, choice)
            getattr(self, "do_" + action.replace("-", "_"))(arng)
            time.sleep(pause)

    def possible(self, action: str) -> bool:
        if action == "coordinator":
            return len(self.alive("coordinator")) < 2
        if action == "worker":
            return len(self.alive("worker")) < 3
        if action == "launch":
            return not self.alive("launch")
        if action == "stop-worker":
            return bool(self.alive("worker"))
        if action == "signal":
            return bool(self.alive("coordinator", "worker", "launch"))
        if action == "outage":
            return self.outage_thread is None or not self.outage_thread.is_alive()
        if action == "conflict":
            return bool(self.campaign_exists())
        return True

    def plan_flags(self, arng: random.Random) -> tuple[str, list[str]]:
        """The flags a coordinator is started with: the plan, nothing, or some of it (equal)."""
        variant = arng.choice(["plan", "plan", "bare", "equal"])
        flags = arng.choice(EQUAL_FLAGS)
        if not self.campaign_exists():  # a new campaign needs its plan (a bare run would take the defaults)
            return "plan", PLAN
        return variant, {"plan": PLAN, "bare": [], "equal": flags}[variant]

    def do_coordinator(self, arng: random.Random) -> None:
        workers = arng.randint(0, 2)
        _, flags = self.plan_flags(arng)
        self.start("coordinator", ["search", "--name", CAMPAIGN, "--workers", str(workers), *flags, "--json"])

    def do_worker(self, arng: random.Random) -> None:
        wait = arng.choice([60, 60, 60, 5])
        self.start("worker", ["worker", "--campaign", CAMPAIGN, *(["--wait", str(wait)] if wait != 60 else [])],
                   wait=wait)

    def do_launch(self, arng: random.Random) -> None:
        self.start("launch", ["launch", "-n", "1", "--campaign", CAMPAIGN])

    def do_stop_worker(self, arng: random.Random) -> None:
        sig = arng.choice([signal.SIGINT, signal.SIGTERM])
        pick = arng.random()
        workers = self.alive("worker")
        if not workers:
            self.event("(stop a worker: none running)")
            return
        self.send(workers[int(pick * len(workers))], sig, group=False)

    def do_signal(self, arng: random.Random) -> None:
        sig = arng.choice([signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
        group = arng.random() < 0.5
        pick = arng.random()
        again = arng.random() < 0.25  # a second Ctrl-C, as an impatient user presses it
        delay = arng.uniform(0.05, 1.0)
        targets = self.alive("coordinator", "worker", "launch")
        if not targets:
            self.event(f"({sig.name}: no process running)")
            return
        target = targets[int(pick * len(targets))]
        self.send(target, sig, group)
        if again and sig != signal.SIGKILL:
            time.sleep(delay)
            if target.code is None:
                self.send(target, sig, group)

    def do_outage(self, arng: random.Random) -> None:
        seconds = arng.uniform(0.5, 8.0)
        self.outage(seconds)

    def do_conflict(self, arng: random.Random) -> None:
        flags = [*arng.choice(CONFLICTS), *(arng.choice(CONFLICTS) if arng.random() < 0.3 else [])]
        if not self.campaign_exists():
            self.event(f"(conflicting resume {flags}: no campaign yet, skipped)")
            return
        before = self.plan_snapshot()
        run = self.run_short("conflict", ["search", "--name", CAMPAIGN, "--workers", "1", *flags], SHORT_COMMAND_SECONDS)
        after = self.plan_snapshot()
        run.expect = {2}
        took = run.ended - run.started
        if took > CONFLICT_SECONDS + self.outage_during(run.started, run.ended):
            self.problem(f"{run.name}: a conflicting resume took {took:.1f}s to refuse")
        lines = [line for line in run.stderr().splitlines() if line.strip()]
        if run.code == 2 and len(lines) != 1:
            self.problem(f"{run.name}: refused in {len(lines)} lines of stderr, not one: {lines[:6]}")
        if before is not None and after is not None:
            changed = sorted(k for k in before if after.get(k) != before[k] and k.split(" ")[1] in ("hpo", "hpo_campaign"))
            if changed:
                self.problem(f"{run.name}: a refused resume changed {changed}")

    def do_narrow(self, arng: random.Random) -> None:
        force = arng.random() < 0.5
        # "A little early": wait (a few seconds at most) for stage 1 to have a complete trial
        # while its budget is not met yet, the moment such a narrowing has something to work on.
        if arng.random() < 0.5:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                state = self.stage_state()
                if state is not None and (state[2] or (state[3] and not state[1])):
                    break
                time.sleep(0.1)
        before = self.stage_state()
        run = self.run_short("narrow", ["narrow", f"{CAMPAIGN}/stage-1", *(["--force"] if force else [])],
                             SHORT_COMMAND_SECONDS)
        after = self.stage_state()
        expect: set[int] = set()
        # Stage 2 seen afterwards may be this command's own work: judge the state after it both
        # with and without stage 2 (one seen before it is certain).
        states = [before, after] if before is None or after is None else \
            [before, after, (*after[:2], before[2], after[3])]
        for state in states:
            if state is None:
                expect |= {0, 2}
                continue
            has_plan, met, stage2, has_complete = state
            if not has_plan or stage2 or has_complete is False:  # nothing to narrow, or done already
                expect.add(2)
            elif met is None or has_complete is None:
                expect |= {0, 2}
            else:
                expect.add(0 if (met or force) else 2)
        if self.outage_during(run.started, run.ended):
            expect.add(2)
        run.expect = expect
        self.event(f"{run.name}: stage state before {before}, after {after}: expected exit {sorted(expect)}")

    def do_fail_stale(self, arng: random.Random) -> None:
        before = self.campaign_exists()
        run = self.run_short("fail-stale", ["fail-stale", CAMPAIGN], SHORT_COMMAND_SECONDS)
        after = self.campaign_exists()
        expect = set()
        for exists in (before, after):
            expect |= {0, 2} if exists is None else {0} if exists else {2}
        if self.outage_during(run.started, run.ended):
            expect.add(2)
        run.expect = expect

    # -- the end: drive the campaign home, then check ------------------------------------------
    def finish(self) -> None:
        self.end_outage()
        self.event("the final drive")
        flags = [] if self.campaign_exists() else PLAN
        final = self.run_short("final", ["search", "--name", CAMPAIGN, "--workers", "2", *flags, "--json"], FINAL_SECONDS)
        final.expect = {0}
        best = self._printed_best(final)
        if final.code != 0:
            self.problem(f"the final drive {final.name} exited {final.code}: {_tail(final.stderr(), 8)}")
            retry = self.run_short("final", ["search", "--name", CAMPAIGN, "--workers", "2", *flags, "--json"], FINAL_SECONDS)
            self.notes.append(f"the final drive, run once more, exited {retry.code}")
            best = self._printed_best(retry)
        self._drain()
        self.stop_monitor.set()
        self.monitor.join(10)
        self._check_exits()
        self._check_outputs()
        if best is not None:
            for problem in campaign_problems(self.url, CAMPAIGN, best):
                self.problem(f"campaign: {problem}")
            again = self.run_short("resume", ["search", "--name", CAMPAIGN, "--workers", "0", "--json"], 60)
            again.expect = {0}
            if again.code == 0 and self._printed_best(again) != best:
                self.problem(f"{again.name}: resuming the finished campaign printed another result: "
                             f"{self._printed_best(again)} != {best}")
            if again.code == 0 and again.ended - again.started > 20:
                self.problem(f"{again.name}: resuming the finished campaign took {again.ended - again.started:.1f}s")
            self._check_exit(again)
        self.engine.dispose()

    def _printed_best(self, run: Run) -> dict | None:
        if run.code != 0:
            return None
        try:
            return json.loads(run.stdout())["best"]
        except (ValueError, KeyError, TypeError) as e:
            self.problem(f"{run.name}: its --json output is not one JSON object with 'best' ({e}): {run.stdout()[:300]!r}")
            return None

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_SECONDS
        for run in self.runs:
            try:
                run.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.problem(f"hang: {run.name} still running {DRAIN_SECONDS}s after the campaign ended: "
                             f"{_tail(run.stderr(), 5)}")
                self.kill_group(run)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.popen.wait(10)
            if run.ended is None:
                run.ended = self.now()
        time.sleep(0.3)  # the monitor records the last exits
        strays = {pid: run.name for run in self.runs for pid, started in run.descendants.items()
                  if _start_time(pid) == started}
        if strays:
            time.sleep(10)  # an orphaned local worker notices its parent is gone within a poll
            for pid, name in strays.items():
                started = next(r.descendants[pid] for r in self.runs if pid in r.descendants)
                if _start_time(pid) == started:
                    self.problem(f"hang: process {pid}, started by {name}, still runs after the campaign ended")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def expected_exits(self, run: Run) -> set[int]:
        if run.expect is not None:
            return run.expect
        if run.killed():
            return {-signal.SIGKILL}
        if "SIGTERM" in run.starting_signals:
            return {-signal.SIGTERM}
        stop = run.first_stop_signal()
        if run.kind in ("coordinator", "launch") and stop is not None:
            return {130, 0}  # 0: the signal came as it was ending (it must not go on long after)
        if run.kind == "coordinator":
            # An unreachable database at the start is bad input (one line, exit 2); once the
            # campaign is under way (its first line printed) every step rides out an outage.
            if self.outage_during(run.started, run.ended) and f"campaign {CAMPAIGN} on " not in run.stderr():
                return {0, 2}
            return {0}
        if run.kind == "worker" and stop is not None:
            return {0}
        # Not stopped: a worker or launch exits 0 when the campaign ends, 2 if it never appeared
        # within its wait (the harness sees the campaign within a poll of the process).
        seen = self.campaign_seen_at
        if seen is None or seen > run.started + run.wait + 3:
            return {2}
        if seen < run.started + run.wait - 3:
            return {0}
        return {0, 2}

    def _check_exit(self, run: Run) -> None:
        expected = self.expected_exits(run)
        code = run.code
        outage = self.outage_during(run.started, run.ended)
        if code not in expected:
            why = f", {outage:.0f}s of database outage during it" if outage else ""
            self.problem(f"{run.name} exited {code}, expected {' or '.join(map(str, sorted(expected)))}{why}: "
                         f"`hpo {' '.join(run.argv)}`; signals {[(round(t, 1), s, g) for t, s, g in run.signals]}; "
                         f"stderr: {_tail(run.stderr(), 4)}")
        if code == 2 and run.kind in ("narrow", "fail-stale") and 0 in expected and 2 in expected and outage:
            self.notes.append(f"{run.name} exited 2 during an outage: {_tail(run.stderr(), 1)}")
        lines = [line for line in run.stderr().splitlines() if line.strip()]
        if code == 2 and run.kind in ("narrow", "fail-stale") and not outage and len(lines) != 1:
            self.problem(f"{run.name} exited 2 with {len(lines)} lines of stderr, not one: {lines[:6]}")
        if code == 2 and run.kind == "coordinator" and code in expected:
            if len(lines) != 1:
                self.problem(f"{run.name} refused at its start with {len(lines)} lines of stderr, not one: {lines[:6]}")
            self.notes.append(f"{run.name} refused at its start (the database was down): {_tail(run.stderr(), 1)}")
        if run.kind == "coordinator" and code == 130 and f"hpo search --name {CAMPAIGN}" not in run.stderr():
            # Stopped while its modules still loaded, it knows no campaign yet: "interrupted" is all.
            if not (run.starting_signals and "interrupted" in run.stderr()):
                self.problem(f"{run.name} exited 130 without saying how to resume: {_tail(run.stderr(), 3)}")
        stop = run.first_stop_signal()
        if stop is not None and not run.killed() and run.ended is not None and run.kind in STOP_SECONDS:
            bound = STOP_SECONDS[run.kind] + self.outage_during(stop, run.ended)
            if run.ended - stop > bound:
                self.problem(f"{run.name} took {run.ended - stop:.1f}s to stop after {run.signals[0][1]} (bound {bound:.0f}s)")
        if run.kind in ("coordinator", "launch") and stop is not None and code == 0 and run.ended - stop > 5:
            self.problem(f"{run.name} went on for {run.ended - stop:.1f}s after {run.signals[0][1]} and exited 0")

    def _check_exits(self) -> None:
        for run in self.runs:
            if run.kind not in ("final", "resume"):
                self._check_exit(run)

    def _check_outputs(self) -> None:
        for path in sorted(self.folder.rglob("*")):
            if path.is_file() and path.suffix in (".err", ".out", ".log"):
                text = path.read_text(errors="replace")
                if "Traceback" in text:
                    where = text.index("Traceback")
                    self.problem(f"a traceback in {path.relative_to(self.folder)}:\n{text[where:where + 2500]}")

    def report(self) -> str:
        replay = f"HPO_LIFECYCLE_SEED={self.seed} python -m pytest tests/test_lifecycle.py -k {self.backend_name}"
        lines = [f"lifecycle sequence seed {self.seed} on {self.backend_name} failed (replay: {replay})",
                 "", "actions:", *self.events, "", "processes:", *(r.describe() for r in self.runs),
                 "", f"problems ({len(self.problems)}):", *(f"- {p}" for p in self.problems)]
        if self.notes:
            lines += ["", "notes:", *(f"- {n}" for n in self.notes)]
        lines += ["", f"logs: {self.folder}"]
        return "\n".join(lines)

    def abort(self) -> None:
        """Whatever still runs is killed (the test failed in the harness itself)."""
        self.stop_monitor.set()
        for run in self.runs:
            if run.code is None:
                self.kill_group(run)
            for pid, started in run.descendants.items():
                if _start_time(pid) == started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        for run in self.runs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.popen.wait(10)
        if self.outage_thread is not None:
            self.outage_thread.join(120)
        if self.cluster is not None and not self.cluster.is_running():
            self.cluster.start()
        self.engine.dispose()


def _weighted(weights: dict[str, float], u: float) -> str:
    """The name whose share of the total weight holds ``u`` (0 <= u < 1)."""
    total = sum(weights.values())
    for name, weight in weights.items():
        u -= weight / total
        if u < 0:
            return name
    return name


def _tail(text: str, lines: int) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _default_action(pid: int, sig: signal.Signals) -> bool:
    """Whether ``sig`` would take its default action in process ``pid``: neither caught by a
    handler (SigCgt in /proc/PID/status) nor ignored (SigIgn, as while a coordinator cleans up)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("SigCgt:", "SigIgn:"))}
    bit = 1 << (sig - 1)
    return not (masks.get("SigCgt", 0) & bit or masks.get("SigIgn", 0) & bit)


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): a pid and it name one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # exited, not yet reaped
        return None
    return fields[19]


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def run_sequence(seed: int, backend_name: str, url: str, folder: Path, cluster=None) -> None:
    sequence = Sequence(seed, backend_name, url, folder, cluster)
    started = time.monotonic()
    try:
        sequence.play()
        sequence.finish()
    except BaseException:
        sequence.abort()
        print(sequence.report())
        raise
    print(f"\nseed {seed} on {backend_name}: {len(sequence.runs)} commands, {time.monotonic() - started:.0f}s"
          + (f", notes: {sequence.notes}" if sequence.notes else ""))
    if sequence.problems:
        pytest.fail(sequence.report(), pytrace=False)


@pytest.mark.parametrize("seed", lifecycle_seeds("sqlite"))
def test_lifecycle_sqlite(seed, tmp_path):
    run_sequence(seed, "sqlite", f"sqlite:///{tmp_path / 'hpo.db'}", tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("seed", lifecycle_seeds("postgres"))
def test_lifecycle_postgres(seed, pg_cluster, tmp_path):  # noqa: F811
    run_sequence(seed, "postgres", pg_cluster.create_database(), tmp_path, pg_cluster)

"""Worker scaling: trials finished per minute with 1 and 2 local workers, and 16 / 32 workers
with a stub trainer on one PostgreSQL.

**Digits, 1 vs 2 workers.** The default first stage of ``hpo search`` (the default search
space, 2 epochs per trial, TPE, median pruner, digits) run by ``hpo.local.LocalWorkers`` --
real ``hpo worker`` processes with one BLAS thread each, as ``hpo search`` starts them -- on a
fresh SQLite file (``--backend postgres`` for PostgreSQL). Throughput is the trials finished
per minute in the window where every worker was taking trials (from the last worker's first
trial to the first worker's last): process start-up happens once per worker, not per trial,
and one worker starting later than the other is not counted against scaling. Round ``r``
seeds its runs' workers ``1000 r``, ``1000 r + 1``. Runs alternate (1 worker, 2 workers, 1,
2, ...) so that load from other jobs on a shared machine falls on both; the figure is the
median of each. ``ratio`` = 2-worker throughput / 1-worker throughput; the issue's target is
>= 1.8 on 2 cores, which needs 2 cores free of other work.

Two workers do not train the same trials as one: each samples while the other's trial runs,
and their trials were pruned less often (over 8 seeds, 63% of trials 12-59 against 74% with
one worker; docs/benchmarks.md), so a trial trains longer on average. The ratio in training epochs per minute is printed beside it, and a second
measurement takes that difference away: **same work**, the stage's budget of configurations
(drawn once, the same in every run) queued, pruning off, so both runs train exactly the same
trials and the ratio is the workers' parallel efficiency alone.

**16 and 32 workers, stub trainer, one PostgreSQL.** Worker processes (this script run with
``--stub-worker``) run the real worker loop with ``benchmarks.common.stub_trainer`` sleeping
``--stub-epoch-seconds`` per epoch (10 epochs; pruned trials stop early). All of them start and
wait for the campaign; the stage (``--trials-per-worker`` x N trials) is created once every
one is up, so they all start together. Reported: trials per minute, errors in the workers'
logs (connection errors, retried database errors), exit codes, duplicate trial numbers, the
most connections open at once, and the latency of each storage operation as the workers
timed it, median and p99 over all workers: ``claim`` (taking a trial, all of it), ``transaction``
(the claim's transaction: on PostgreSQL it takes the workers' lock itself, so this includes
waiting for it), ``store`` (the result: one transaction), ``heartbeat``, and each SQL statement
of that path as the driver ran it (``sql: lock`` is the wait for the lock; ``sql: read study``
the snapshot refresh; ``sql: create trial``; ``sql: write trial`` a batch of the trial's rows).

Usage::

    python benchmarks/scaling.py                 # both parts (~3 min on 2 cores)
    python benchmarks/scaling.py --quick         # a smoke run: one round, 8 and 16 stub workers
    python benchmarks/scaling.py --part digits   # or --part stub
    python benchmarks/scaling.py --json          # one JSON object with every figure
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    database,
    dump_json,
    machine,
    median,
    ms,
    percentile,
    postgres_available,
    postgres_database,
    print_table,
)

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.8
# "stage": the default first stage as `hpo search` runs it (each run samples and prunes its own
# trials); "same work": the same configurations queued, no pruning, so both runs train the same.
MODES = ("stage", "same work")
STUB_EPOCHS = 10
ERROR_MARKERS = ("too many clients", "connection", "OperationalError", "StorageError", "Traceback")


# -- part 1: digits, 1 and 2 workers ------------------------------------------------------------
def digits_run(url: str, workers: int, name: str, timeout: float, trials: int | None = None,
               seed: int = 0, same_work: bool = False) -> dict[str, Any]:
    """One default first stage (``trials``: another budget) with ``workers`` local workers,
    seeded ``seed``, ``seed + 1``, ...; ``same_work``: its budget of fixed configurations
    queued, no pruning (every run trains exactly the same trials)."""
    import optuna

    from hpo.campaign import CampaignSpec
    from hpo.local import LocalWorkers
    from storage import backend
    from workers import stageplan
    from workers.space import default_space

    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    spec = CampaignSpec(name=name, space=default_space(), stages=1)  # stage 1 of `hpo search`
    if trials:
        spec.trials = [trials]
    if same_work:
        spec.pruner = "none"
    plan = spec.plan(1, spec.space)
    stageplan.create_stage(storage, plan)
    if same_work:
        study = optuna.load_study(study_name=plan.study_name, storage=storage)
        for params in fixed_configurations(spec.space, plan.trials):
            study.enqueue_trial(params)
    local = LocalWorkers(url, workers, study=plan.study_name, seed=seed, blas_threads=1)
    try:
        deadline = time.monotonic() + timeout
        while local.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        failed = [w.log_tail() for w in local.failed()]
    finally:
        local.stop()
    trials = optuna.load_study(study_name=plan.study_name, storage=storage).get_trials(deepcopy=False)
    storage.engine.dispose()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    if not done:
        return {"workers": workers, "trials": 0, "failed": failed}
    # The window in which every worker was taking trials: from the last worker's first start to
    # the first worker's last finish (one worker starting later than the other is start-up,
    # not throughput). Throughput: trials finished in the window per minute.
    by_worker: dict[str, list] = {}
    for t in done:
        by_worker.setdefault(str(t.user_attrs.get("worker")), []).append(t)
    first = max(min(t.datetime_start for t in ts) for ts in by_worker.values())
    last = min(max(t.datetime_complete for t in ts) for ts in by_worker.values())
    seconds = (last - first).total_seconds()
    in_window = sum(first < t.datetime_complete <= last for t in done)
    epochs_in_window = sum(len((t.user_attrs.get("curve") or {}).get("epoch", []))
                           for t in done if first < t.datetime_complete <= last)
    train = [t.user_attrs.get("timings", {}).get("train_seconds", 0.0) for t in done]
    overhead = [t.user_attrs.get("timings", {}).get("overhead_seconds", 0.0) for t in done]
    return {
        "workers": workers,
        "trials": len(done),
        "pruned": sum(t.state.name == "PRUNED" for t in done),
        "workers_seen": len(by_worker),
        "window_seconds": round(seconds, 3),
        "finished_in_window": in_window,
        "trials_per_minute": round(60 * in_window / seconds, 1) if seconds > 0 else None,
        "epochs_per_minute": round(60 * epochs_in_window / seconds, 1) if seconds > 0 else None,
        "median_train_ms": round(1000 * median(train), 2),
        "median_overhead_ms": round(1000 * median(overhead), 2),
        "failed": failed,
    }


def fixed_configurations(space, n: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn at random from ``space``, the same in every run."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=12345))
    return [study.ask(space.to_distributions()).params for _ in range(n)]


def digits_part(backend_name: str, rounds: int, log, trials: int | None = None) -> dict[str, Any]:
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {mode: {1: [], 2: []} for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="hpo-scaling-") as folder:
        for r in range(rounds):
            for mode in MODES:
                for n in (1, 2):
                    name = f"scale-{mode.replace(' ', '-')}{n}-{r}"
                    with database(backend_name, Path(folder), name, "hpo_bench_scaling") as url:
                        result = digits_run(url, n, name, timeout=600, trials=trials, seed=1000 * r,
                                            same_work=mode == "same work")
                    runs[mode][n].append(result)
                    log(f"digits ({mode}), {n} worker(s), round {r + 1}: {result.get('trials_per_minute')} "
                        f"trials/min ({result.get('finished_in_window')} of {result['trials']} trials in a "
                        f"{result.get('window_seconds')} s window)")
    report: dict[str, Any] = {"backend": backend_name, "rounds": rounds, "target_ratio": TARGET_RATIO}
    for mode in MODES:
        one = median([r["trials_per_minute"] for r in runs[mode][1] if r.get("trials_per_minute")])
        two = median([r["trials_per_minute"] for r in runs[mode][2] if r.get("trials_per_minute")])
        one_e = median([r["epochs_per_minute"] for r in runs[mode][1] if r.get("epochs_per_minute")])
        two_e = median([r["epochs_per_minute"] for r in runs[mode][2] if r.get("epochs_per_minute")])
        report[mode.replace(" ", "_")] = {
            "runs": runs[mode],
            "one_worker_trials_per_minute": one,
            "two_workers_trials_per_minute": two,
            "ratio": round(two / one, 2) if one and two else None,
            "epochs_ratio": round(two_e / one_e, 2) if one_e and two_e else None,
            "met": bool(one and two and two / one >= TARGET_RATIO),
        }
    return report


# -- part 2: many stub workers on PostgreSQL ----------------------------------------------------
def stub_worker_main(args: argparse.Namespace) -> int:
    """A worker process with the stub trainer; its operations timed into ``args.timings``."""
    import functools

    import optuna

    from benchmarks.common import stub_trainer
    from workers.worker import Worker, WorkerOptions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    timings: dict[str, list[float]] = {"claim": [], "transaction": [], "store": [], "heartbeat": []}

    def timed(op: str, function):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                timings[op].append(time.perf_counter() - t)

        return call

    class TimedWorker(Worker):
        """The worker loop, timing its storage operations (nothing else differs)."""

        def _open(self) -> bool:
            opened = super()._open()
            if opened:
                storage = self.study_storage
                batch = storage.batch

                @contextlib.contextmanager
                def timed_batch(*a, **k):
                    t = time.perf_counter()
                    with batch(*a, **k):
                        yield
                    timings["transaction"].append(time.perf_counter() - t)

                storage.batch = timed_batch
                storage.record_heartbeat = timed("heartbeat", storage.record_heartbeat)
                _time_statements(self.storage.engine, timings)
            return opened

        def _claim_trial(self, *a, **k):
            return timed("claim", super()._claim_trial)(*a, **k)

        def _store(self, *a, **k):
            return timed("store", super()._store)(*a, **k)

    trainer = functools.partial(stub_trainer, sleep=args.stub_epoch_seconds)
    worker = TimedWorker(WorkerOptions(storage_url=os.environ["HPO_STORAGE"], campaign=args.campaign,
                                       seed=args.seed, wait_for_campaign_seconds=300), trainer=trainer)
    worker.install_signal_handlers()
    print("ready", flush=True)
    summary = worker.run()
    Path(args.timings).write_text(json.dumps({"timings": timings, "trials": summary.trials}))
    return 0


STATEMENTS = (  # how the worker's statements begin -> the operation they are
    ("SELECT pg_advisory_xact_lock", "lock"),
    ("SELECT trial_id, number, state", "read study"),
    ("SELECT trial_id, 0 AS kind", "read details"),
    ("SELECT study_id FROM studies", "create trial"),
    ("INSERT INTO trials", "create trial"),
    ("WITH w0", "write trial"),
    ("INSERT INTO trial_heartbeats", "heartbeat"),
)


def _time_statements(engine, timings: dict[str, list[float]]) -> None:
    """Time each statement of the worker's hot path as the driver runs it (SQLAlchemy events)."""
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["hpo_t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        started = conn.info.pop("hpo_t0", None)
        text = statement.lstrip()
        op = next((name for prefix, name in STATEMENTS if text.startswith(prefix)), None)
        if started is not None and op is not None:
            timings.setdefault(f"sql: {op}", []).append(time.perf_counter() - started)


def stub_run(workers: int, per_worker: int, epoch_seconds: float, log) -> dict[str, Any]:
    import optuna
    import sqlalchemy

    from hpo.campaign import CampaignSpec
    from storage import backend
    from workers import stageplan
    from workers.space import default_space

    campaign = f"stub{workers}-{uuid.uuid4().hex[:6]}"
    with postgres_database("hpo_bench_scaling") as url, tempfile.TemporaryDirectory(prefix="hpo-stub-") as folder:
        backend.ensure_schema(url)
        env = dict(os.environ, HPO_STORAGE=url, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        procs = []
        try:
            for i in range(workers):
                out = open(Path(folder) / f"w{i}.log", "wb")
                procs.append((subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--stub-worker", "--campaign", campaign,
                     "--seed", str(i), "--timings", str(Path(folder) / f"w{i}.json"),
                     "--stub-epoch-seconds", str(epoch_seconds)],
                    env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT), out))
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:  # every worker up before the stage opens
                ready = sum("ready" in (Path(folder) / f"w{i}.log").read_text(errors="replace") for i in range(workers))
                if ready == workers or any(p.poll() is not None for p, _ in procs):
                    break
                time.sleep(0.5)
            log(f"{workers} stub workers up ({ready} ready)")
            storage = backend.open_storage(url)
            spec = CampaignSpec(name=campaign, space=default_space(), stages=1, trials=[workers * per_worker],
                                epochs=[STUB_EPOCHS])
            plan = spec.plan(1, spec.space)
            opened = time.monotonic()
            stageplan.create_stage(storage, plan)
            peak = _watch_connections(url, procs)
            for p, _ in procs:
                p.wait(timeout=max(10.0, 600 - (time.monotonic() - opened)))
        finally:
            for p, out in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
                out.close()
        logs = [(Path(folder) / f"w{i}.log").read_text(errors="replace") for i in range(workers)]
        timings: dict[str, list[float]] = {}
        for i in range(workers):
            path = Path(folder) / f"w{i}.json"
            if path.exists():
                for op, values in json.loads(path.read_text())["timings"].items():
                    timings.setdefault(op, []).extend(values)
        trials = optuna.load_study(study_name=plan.study_name, storage=storage).get_trials(deepcopy=False)
        with storage.engine.connect() as conn:
            duplicates = conn.execute(sqlalchemy.text(
                "SELECT COUNT(*) FROM (SELECT study_id, number FROM trials GROUP BY study_id, number "
                "HAVING COUNT(*) > 1) d")).scalar()
        storage.engine.dispose()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    seconds = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() if done else 0
    error_lines = [line for text in logs for line in text.splitlines() if any(m in line for m in ERROR_MARKERS)]
    return {
        "workers": workers,
        "budget": workers * per_worker,
        "finished": len(done),
        "states": {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
        "trials_per_minute": round(60 * len(done) / seconds, 1) if seconds else None,
        "exit_codes": sorted({p.returncode for p, _ in procs}),
        "duplicate_numbers": int(duplicates),
        "error_lines": len(error_lines),
        "error_examples": error_lines[:3],
        "retried_db_errors": sum(text.count("database error while trying to") for text in logs),
        "peak_connections": peak,
        "latency_ms": {
            op: {"n": len(v), "median": ms(median(v)), "p99": ms(percentile(v, 99))} for op, v in timings.items()
        },
    }


def _watch_connections(url: str, procs: list) -> int:
    """Sample the database's open connections until every worker has exited; the most seen."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0)
    peak = 0
    try:
        deadline = time.monotonic() + 600
        while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
            with engine.connect() as conn:
                n = conn.execute(sqlalchemy.text(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()")).scalar()
            peak = max(peak, int(n) - 1)  # not this one
            time.sleep(0.25)
    finally:
        engine.dispose()
    return peak


# -- the run -----------------------------------------------------------------------------------
def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, Optuna {m['optuna']}\n")
    if "digits" in report:
        d = report["digits"]
        for mode in MODES:
            part = d[mode.replace(" ", "_")]
            rows = [{"workers": n, "round": i + 1, "trials": r["trials"], "pruned": r.get("pruned"),
                     "window s": r.get("window_seconds"), "in window": r.get("finished_in_window"),
                     "trials/min": r.get("trials_per_minute"), "epochs/min": r.get("epochs_per_minute"),
                     "train ms": r.get("median_train_ms"), "outside training ms": r.get("median_overhead_ms")}
                    for n in (1, 2) for i, r in enumerate(part["runs"][n])]
            title = ("digits, default first stage" if mode == "stage"
                     else "digits, the same configurations queued, no pruning")
            print_table(rows, list(rows[0]), title=f"{title}, {d['backend']}")
            print(f"median trials/min: 1 worker {part['one_worker_trials_per_minute']}, 2 workers "
                  f"{part['two_workers_trials_per_minute']}; ratio {part['ratio']} (target >= {d['target_ratio']}) -> "
                  f"{'PASS' if part['met'] else 'MISS'}; in training epochs per minute: ratio {part['epochs_ratio']}\n")
    if "stub" in report:
        rows = []
        for r in report["stub"]:
            rows.append({
                "workers": r["workers"], "finished/budget": f"{r['finished']}/{r['budget']}",
                "trials/min": r["trials_per_minute"], "exit codes": r["exit_codes"],
                "dup numbers": r["duplicate_numbers"], "error lines": r["error_lines"],
                "db retries": r["retried_db_errors"], "peak conns": r["peak_connections"],
            })
        print_table(rows, list(rows[0]), title=f"stub trainer ({report['stub_epoch_seconds']} s per epoch, {STUB_EPOCHS} epochs), one PostgreSQL")
        ops = sorted({op for r in report["stub"] for op in r["latency_ms"]})
        lat_rows = [{"operation": op, **{f"{r['workers']} workers: n, median / p99 ms":
                                         f"{r['latency_ms'][op]['n']}, {r['latency_ms'][op]['median']} / {r['latency_ms'][op]['p99']}"
                                         if op in r["latency_ms"] else "-" for r in report["stub"]}} for op in ops]
        print_table(lat_rows, list(lat_rows[0]), title="storage latency per operation, as the workers timed it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["digits", "stub", "both"], default="both")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite", help="for the digits part")
    parser.add_argument("--rounds", type=int, default=None, help="digits runs per worker count (default 5)")
    parser.add_argument("--trials", type=int, default=None, help="digits stage budget (default: the stage's, 60)")
    parser.add_argument("--stub-workers", default=None, help="comma-separated worker counts (default 16,32)")
    parser.add_argument("--trials-per-worker", type=int, default=8)
    parser.add_argument("--stub-epoch-seconds", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 8 and 16 stub workers")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--stub-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--campaign", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stub_worker:
        return stub_worker_main(args)
    warnings.simplefilter("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report: dict[str, Any] = {"benchmark": "scaling", "machine": machine()}
    if args.part in ("digits", "both"):
        rounds = args.rounds or (1 if args.quick else 5)
        backend_name = args.backend
        if backend_name == "postgres" and not postgres_available():
            log("PostgreSQL is not reachable: the digits part runs on SQLite")
            backend_name = "sqlite"
        report["digits"] = digits_part(backend_name, rounds, log, trials=args.trials)
    if args.part in ("stub", "both"):
        if not postgres_available():
            log("PostgreSQL is not reachable: skipping the stub-worker part")
        else:
            counts = [int(n) for n in (args.stub_workers or ("8,16" if args.quick else "16,32")).split(",")]
            report["stub_epoch_seconds"] = args.stub_epoch_seconds
            report["stub"] = []
            for n in counts:
                result = stub_run(n, args.trials_per_worker, args.stub_epoch_seconds, log)
                log(f"{n} stub workers: {result['finished']}/{result['budget']} trials, "
                    f"{result['trials_per_minute']} trials/min, peak {result['peak_connections']} connections")
                report["stub"].append(result)
    if args.json:
        dump_json(report)
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

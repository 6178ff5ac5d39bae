"""Per-trial orchestration time: this project's worker loop against plain ``study.optimize``.

Everything but the training itself -- sampling, storage round trips, pruning checks, storing
the result -- timed per trial for two loops that do the same search:

- **plain**: ``study.optimize`` as the Optuna documentation writes it, on a storage URL:
  one ``trial.suggest_*`` call per parameter, ``trial.report`` + ``trial.should_prune`` after
  every epoch, no user attrs.
- **ours**: the real worker loop (``workers.worker.Worker``, in this process) with its lock,
  stale-trial reaping, budget count, heartbeat, pruning and every user attr the CLI reads.

Both use the same sampler (the stage default: TPE, 10 startup trials), the same pruner (the
stage default: median, 5 startup trials, 1 warm-up step), the same 4 parameters (the
default search space) and the same number of epochs (10), and train with the same stub
(``benchmarks.common.stub_trainer``: a plausible learning curve in microseconds). Each
measurement runs on a fresh database whose study already holds H trials of history, written
by that loop's own objective (so ours carries its attrs, plain carries none), at H = 100 and
H = 1,000, on SQLite, on PostgreSQL and on MariaDB.

Per-trial time is measured the same way for both: the time from one training call's start
to the next one's, minus the training time in between (the stub's time outside its epoch
callbacks): storing one trial's result, taking the next trial, everything around training. Each loop runs in its own thread for all its trials; they take turns, 10
trials at a time (plain, ours, plain, ...), each held at its next trial while the other runs,
so load from other jobs on a shared machine falls on both alike and neither restarts (its
connections, caches and prepared statements stay warm, as in a long-running worker). The median over the measured trials is
the figure; SQL statements are counted with a SQLAlchemy ``before_cursor_execute`` listener
over the same windows. ``ratio`` = plain median / ours. The worker's own record of that time
(``timings.overhead_seconds``, what ``hpo health`` shows: from the claim to the last report,
so without storing the result) is printed beside it.

Usage::

    python benchmarks/overhead.py                 # every backend, H = 100 and 1000 (a few minutes)
    python benchmarks/overhead.py --quick         # a smoke run: fewer trials, H = 100 only
    python benchmarks/overhead.py --json          # one JSON object with every figure
    python benchmarks/overhead.py --backends sqlite --history 1000 --profile
    python benchmarks/overhead.py --history 1000 --stock-tpe   # and ours with Optuna's TPESampler

PostgreSQL is taken from $HPO_BENCH_POSTGRES (an admin URL; default the local server as
``postgres``), MariaDB (or MySQL) from $HPO_BENCH_MYSQL (default the local server as ``root``); a
throwaway database is created for each measurement and dropped after.
``--stock-tpe`` runs a third loop in the same turns: ours with Optuna's own ``TPESampler`` in
place of the stage default (``storage.optuna_tpe.CachedTPESampler``), to show what the copied
sampler saves. Targets (issue): ours <= 15 ms median on PostgreSQL at H = 1000, and >= 6x less than plain.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import pstats
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from benchmarks.common import (  # noqa: E402
    SERVERS,
    StatementCounter,
    database,
    dump_json,
    machine,
    median,
    ms,
    percentile,
    print_table,
    server_available,
    stub_trainer,
)
from hpo.campaign import CampaignSpec  # noqa: E402
from storage import backend  # noqa: E402
from workers import stageplan, strategy  # noqa: E402
from workers.objective import run_trial, trial_seed  # noqa: E402
from workers.record import Timings, write_record  # noqa: E402
from workers.space import SearchSpace, default_space  # noqa: E402
from workers.strategy import make_pruner, make_sampler  # noqa: E402
from workers.train import TrainConfig, TrainingDiverged  # noqa: E402
from workers.worker import Worker, WorkerOptions  # noqa: E402

EPOCHS = 10
SAMPLER = "tpe"
PRUNER = "median"
STOCK_TPE = "ours, Optuna's TPE"  # the loop (and thread) name of --stock-tpe
TARGET_MS = 15.0
TARGET_RATIO = 6.0


# -- timing the training calls ---------------------------------------------------------------
class Gate:
    """Lets a loop running in its own thread train ``n`` trials, then holds it at its next one.

    The loops take turns through their gates, so each runs alone while it is timed and stays
    alive (its connections, prepared statements and caches warm) between turns.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._allowed = 0
        self._waiting = False
        self._finished = False

    def enter(self) -> None:
        """Called by the loop before each trial trains: wait for the loop's turn."""
        with self._cv:
            self._waiting = True
            self._cv.notify_all()
            while self._allowed == 0 and not self._finished:
                self._cv.wait()
            self._waiting = False
            self._allowed = max(0, self._allowed - 1)

    def turn(self, n: int, timeout: float = 600.0) -> None:
        """Let ``n`` trials train; return when the loop waits at its next one (or has finished)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._allowed = n
            self._cv.notify_all()
            while not self._finished and (self._allowed > 0 or not self._waiting):
                if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("a loop did not come back to its gate")

    def finish(self) -> None:
        with self._cv:
            self._finished = True
            self._cv.notify_all()


@dataclass
class TrainClock:
    """Wraps a trainer: when each call started, how long it trained (outside its callbacks and
    its wait at the gate), and how many SQL statements had been sent by then."""

    counter: StatementCounter
    gate: Gate = field(default_factory=Gate)
    starts: list[float] = field(default_factory=list)  # a trial reached its training
    released: list[float] = field(default_factory=list)  # ... and its gate let it train
    train: list[float] = field(default_factory=list)
    sent_at_start: list[int] = field(default_factory=list)
    sent_at_release: list[int] = field(default_factory=list)

    def trainer(self, config, dataset=None, *, cv=0, on_epoch=None):
        self.starts.append(time.perf_counter())
        self.sent_at_start.append(self.counter.count)
        self.gate.enter()  # held here while the other loop has its turn: no trial's time
        started = time.perf_counter()
        self.released.append(started)
        self.sent_at_release.append(self.counter.count)
        in_callbacks = 0.0

        def timed(callback):
            if callback is None:
                return None

            def call(*args):
                nonlocal in_callbacks
                t = time.perf_counter()
                try:
                    return callback(*args)
                finally:
                    in_callbacks += time.perf_counter() - t

            return call

        try:
            return stub_trainer(config, dataset, cv=cv, on_epoch=timed(on_epoch))
        finally:
            self.train.append(time.perf_counter() - started - in_callbacks)

    def per_trial(self) -> list[float]:
        """Seconds outside training per trial: from a trial's release to the next trial's
        start, minus the training in between."""
        return [b - a - t for a, b, t in zip(self.released, self.starts[1:], self.train)]

    def statements(self) -> float | None:
        """SQL statements per timed trial (the same windows as ``per_trial``)."""
        windows = [b - a for a, b in zip(self.sent_at_release, self.sent_at_start[1:])]
        return sum(windows) / len(windows) if windows else None


# -- the two loops -----------------------------------------------------------------------------
def plain_objective(space: SearchSpace, epochs: int, trainer):
    """The objective as Optuna's documentation writes it: suggest, train, report every epoch."""
    distributions = space.to_distributions()

    def objective(trial: optuna.Trial) -> float:
        params = {}
        for name, dist in distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            else:
                params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        config = TrainConfig(**space.to_train_kwargs(params), epochs=epochs, seed=trial_seed(0, trial.number))

        def on_epoch(report) -> None:
            trial.report(report.val_accuracy, report.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            return trainer(config, None, on_epoch=on_epoch).value
        except TrainingDiverged as e:
            raise optuna.TrialPruned(str(e)) from None

    return objective


def stage_plan(name: str, space: SearchSpace, budget: int) -> Any:
    spec = CampaignSpec(name=name, space=space, stages=1, trials=[budget], epochs=[EPOCHS],
                        sampler=SAMPLER, pruner=PRUNER)
    return spec.plan(1, space)


def history(kind: str, n: int, space: SearchSpace, seed: int = 1) -> list[optuna.trial.FrozenTrial]:
    """``n`` finished trials as ``kind``'s loop writes them, made in memory (quick to make)."""
    if n == 0:
        return []
    study = optuna.create_study(direction="maximize", sampler=make_sampler(SAMPLER, space, seed),
                                pruner=make_pruner(PRUNER, EPOCHS))
    if kind == "plain":
        study.optimize(plain_objective(space, EPOCHS, stub_trainer), n_trials=n)
    else:
        plan = stage_plan("history", space, n)
        for _ in range(n):
            trial = study.ask(fixed_distributions=space.to_distributions())
            outcome = run_trial(trial, plan, space, trainer=stub_trainer)
            write_record(trial, replace(outcome.record, worker="history-0", timings=Timings(0.0, 0.0)))
            study.tell(trial, outcome.value if outcome.state.name == "COMPLETE" else None, state=outcome.state)
    return study.get_trials(deepcopy=True)


class PlainLoop:
    """``study.optimize`` on a storage URL, as a user of Optuna would run it."""

    name = "plain"

    def __init__(self, url: str, past: list, space: SearchSpace) -> None:
        study = optuna.create_study(storage=url, study_name="plain", direction="maximize")
        study.add_trials(past)
        self.study = optuna.load_study(study_name="plain", storage=url, sampler=make_sampler(SAMPLER, space, 7),
                                       pruner=make_pruner(PRUNER, EPOCHS))
        self.space, self.history = space, len(past)

    def run(self, trials: int, clock: TrainClock) -> None:
        self.study.optimize(plain_objective(self.space, EPOCHS, clock.trainer), n_trials=trials)

    def measured(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)[self.history:]

    def close(self) -> None:
        self.study._storage.remove_session()
        self.study._storage._backend.engine.dispose()


class OurLoop:
    """This project's worker loop (``Worker.run``) on a stage study, in this process."""

    def __init__(self, url: str, past: list, space: SearchSpace, budget: int, name: str = "ours") -> None:
        self.name = name
        backend.ensure_schema(url)
        storage = backend.open_storage(url)
        self.plan = stage_plan("bench", space, len(past) + budget + 10)
        stageplan.create_stage(storage, self.plan).add_trials(past)
        storage.engine.dispose()
        self.url, self.history = url, len(past)

    def run(self, trials: int, clock: TrainClock) -> None:
        worker = Worker(WorkerOptions(storage_url=self.url, study=self.plan.study_name, max_trials=trials, seed=7),
                        trainer=clock.trainer)
        try:
            worker.run()
        finally:
            worker.close()

    def measured(self) -> list[optuna.trial.FrozenTrial]:
        storage = backend.open_storage(self.url)
        try:
            return optuna.load_study(study_name=self.plan.study_name, storage=storage).get_trials()[self.history:]
        finally:
            storage.engine.dispose()

    def close(self) -> None:
        pass


def measure(loops: list, trials: int, block: int, profile: bool) -> dict[str, dict[str, Any]]:
    """Run each loop in its own thread for ``trials`` trials, taking turns ``block`` trials at a
    time (plain, ours, plain, ...): load from other processes on a shared machine then falls on
    both alike, and neither restarts between turns."""
    results: dict[str, dict[str, Any]] = {}
    with StatementCounter() as counter:
        clocks = {loop.name: TrainClock(counter) for loop in loops}
        profiles = {loop.name: cProfile.Profile() if profile else None for loop in loops}
        errors: list[BaseException] = []

        def target(loop) -> None:
            prof = profiles[loop.name]
            try:
                if prof is not None:
                    prof.enable()
                loop.run(trials, clocks[loop.name])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                if prof is not None:
                    prof.disable()
                clocks[loop.name].gate.finish()

        threads = [threading.Thread(target=target, args=(loop,), name=loop.name, daemon=True) for loop in loops]
        for t in threads:
            t.start()
        try:
            done = 0
            while done < trials and not errors:
                n = min(block, trials - done)
                for loop in loops:
                    clocks[loop.name].gate.turn(n)
                done += n
        finally:
            for loop in loops:
                clocks[loop.name].gate.finish()
            for t in threads:
                t.join(timeout=120)
        if errors:
            raise errors[0]
    for loop in loops:
        results[loop.name] = _figures(clocks[loop.name], loop.measured(), profiles[loop.name])
    return results


def _figures(clock: TrainClock, measured: list, prof: cProfile.Profile | None) -> dict[str, Any]:
    per_trial = clock.per_trial()
    states = [t.state.name for t in measured]
    recorded = [t.user_attrs["timings"]["overhead_seconds"] for t in measured
                if isinstance(t.user_attrs.get("timings"), dict)]
    figures = {
        "trials": len(measured),
        "timed": len(per_trial),
        "median_ms": ms(median(per_trial)),
        "p90_ms": ms(percentile(per_trial, 90)),
        "mean_ms": ms(sum(per_trial) / len(per_trial)) if per_trial else None,
        "train_ms": ms(median(clock.train)),
        "statements_per_trial": round(clock.statements(), 1) if clock.statements() is not None else None,
        "pruned": states.count("PRUNED"),
        "complete": states.count("COMPLETE"),
        "recorded_overhead_ms": ms(median(recorded)),  # the worker's own timings attr (hpo health)
    }
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(30)
        figures["profile"] = text.getvalue()
    return figures


# -- the run -----------------------------------------------------------------------------------
def run(backends: list[str], histories: list[int], trials: int, profile: bool, block: int = 10,
        log=print, stock_tpe: bool = False) -> dict[str, Any]:
    space = default_space()
    pasts = {}
    for kind in ("plain", "ours"):
        started = time.perf_counter()
        full = history(kind, max(histories), space)
        pasts[kind] = {h: full[:h] for h in histories}
        log(f"history for {kind}: {len(full)} trials in {time.perf_counter() - started:.1f}s")
    results = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as folder:
        for backend_name in backends:
            for h in histories:
                row: dict[str, Any] = {"backend": backend_name, "history": h}
                with database(backend_name, Path(folder), f"plain-{h}", "hpo_bench_overhead") as plain_url, \
                        database(backend_name, Path(folder), f"ours-{h}", "hpo_bench_overhead") as ours_url:
                    loops = [PlainLoop(plain_url, pasts["plain"][h], space),
                             OurLoop(ours_url, pasts["ours"][h], space, trials)]
                    with contextlib.ExitStack() as stack:
                        if stock_tpe:
                            stock_url = stack.enter_context(database(backend_name, Path(folder), f"stock-{h}",
                                                                     "hpo_bench_overhead"))
                            loops.append(OurLoop(stock_url, pasts["ours"][h], space, trials, name=STOCK_TPE))
                        try:
                            row.update(measure(loops, trials, block, profile))
                        finally:
                            for loop in loops:
                                loop.close()
                for kind in [loop.name for loop in loops]:
                    log(f"{backend_name} H={h} {kind}: {row[kind]['median_ms']} ms/trial, "
                        f"{row[kind]['statements_per_trial']} statements/trial")
                    if profile:
                        log(row[kind].pop("profile"))
                ours, plain = row["ours"]["median_ms"], row["plain"]["median_ms"]
                row["ratio"] = round(plain / ours, 2) if ours and plain else None
                if stock_tpe:
                    stock = row[STOCK_TPE]["median_ms"]
                    row["stock_tpe_ratio"] = round(stock / ours, 2) if ours and stock else None
                results.append(row)
    return {"benchmark": "overhead", "machine": machine(), "epochs": EPOCHS, "sampler": SAMPLER,
            "pruner": PRUNER, "params": list(space), "measured_trials": trials, "block": block, "results": results,
            "targets": _targets(results)}


def _targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    pg = [r for r in results if r["backend"] == "postgres" and r["history"] == max(x["history"] for x in results)]
    if not pg:
        return {}
    r = pg[0]
    return {
        "at": {"backend": "postgres", "history": r["history"]},
        "ours_median_ms": r["ours"]["median_ms"],
        "max_ms": TARGET_MS,
        "ms_met": r["ours"]["median_ms"] is not None and r["ours"]["median_ms"] <= TARGET_MS,
        "ratio": r["ratio"],
        "min_ratio": TARGET_RATIO,
        "ratio_met": r["ratio"] is not None and r["ratio"] >= TARGET_RATIO,
        "pruning_works": r["ours"]["pruned"] > 0,
    }


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"per-trial time outside training, median over the timed trials of {report['measured_trials']} per loop "
          f"({report['sampler']} + {report['pruner']} pruner, {len(report['params'])} params, {report['epochs']} epochs, stub trainer)")
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, Optuna {m['optuna']}\n")
    rows = []
    for r in report["results"]:
        rows.append({
            "backend": r["backend"], "history": r["history"],
            "plain ms": r["plain"]["median_ms"], "ours ms": r["ours"]["median_ms"], "ratio": r["ratio"],
            "plain p90": r["plain"]["p90_ms"], "ours p90": r["ours"]["p90_ms"],
            "plain SQL/trial": r["plain"]["statements_per_trial"], "ours SQL/trial": r["ours"]["statements_per_trial"],
            "ours recorded ms": r["ours"]["recorded_overhead_ms"],
            "pruned plain/ours": f"{r['plain']['pruned']}/{r['plain']['trials']} {r['ours']['pruned']}/{r['ours']['trials']}",
        })
        if STOCK_TPE in r:
            rows[-1].update({"ours, Optuna TPE ms": r[STOCK_TPE]["median_ms"], "Optuna TPE / cached": r["stock_tpe_ratio"]})
    print_table(rows, list(rows[0]) if rows else [])
    t = report["targets"]
    if t:
        print(f"target: ours <= {t['max_ms']:g} ms on PostgreSQL at H={t['at']['history']}: "
              f"{t['ours_median_ms']} ms -> {'PASS' if t['ms_met'] else 'MISS'}")
        print(f"target: plain / ours >= {t['min_ratio']:g}x: {t['ratio']}x -> {'PASS' if t['ratio_met'] else 'MISS'}")
        print(f"pruning: {'works' if t['pruning_works'] else 'NOTHING PRUNED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres,mariadb", help="comma-separated: sqlite, postgres, mariadb")
    parser.add_argument("--history", default=None, help="comma-separated history sizes (default 100,1000)")
    parser.add_argument("--trials", type=int, default=None, help="trials per loop (default 60)")
    parser.add_argument("--block", type=int, default=10, help="trials per turn of each loop")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12 trials, H = 100")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each measured loop")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--stock-tpe", action="store_true",
                        help="also run ours with Optuna's TPESampler, to measure what the cached sampler saves")
    args = parser.parse_args(argv)
    if args.stock_tpe:
        cached = strategy.SAMPLERS["tpe"]

        def by_loop(space: SearchSpace, seed: int):  # the stock loop's worker samples in its own thread
            if threading.current_thread().name == STOCK_TPE:
                return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
            return cached(space, seed)

        strategy.SAMPLERS["tpe"] = by_loop
    histories = [int(h) for h in (args.history or ("100" if args.quick else "100,1000")).split(",")]
    trials = args.trials or (12 if args.quick else 60)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for server in [b for b in backends if b in SERVERS]:
        if not server_available(server):
            print(f"{server} is not reachable: not measured", file=sys.stderr)
            backends.remove(server)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo.worker").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    report = run(backends, histories, trials, args.profile, block=args.block, log=lambda s: print(s, file=sys.stderr),
                 stock_tpe=args.stock_tpe)
    if args.json:
        dump_json(report)
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

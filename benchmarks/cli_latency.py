"""How long a user waits for an answer: hpo's inspection commands against Optuna's own CLI,
and the fixed cost of the main job.

Every figure is a whole process, started as a user starts it (the ``hpo`` and ``optuna``
scripts), timed from start to exit; imports, connecting and reading are all inside it.

1. **Inspection, on PostgreSQL.** A throwaway database holds a finished three-stage campaign of
   ``--trials`` trials (default 1,000, written by benchmarks/report.py's generator: each trial
   with the full record a worker stores). Each pair is timed in turn, ``--runs`` times
   (default 7), the median counts:

   ============================  =====================================================
   hpo                           Optuna's nearest equivalent
   ============================  =====================================================
   ``hpo studies``               ``optuna studies``
   ``hpo trials CAMPAIGN/stage-1``  ``optuna trials --study-name CAMPAIGN/stage-1``
   ``hpo trial CAMPAIGN/stage-1 N``  ``optuna trials`` of that study (Optuna has no command for one trial)
   ``hpo health CAMPAIGN/stage-1``   ``optuna trials`` of that study (states and times are there)
   ============================  =====================================================

   Target: each hpo command at most half of its Optuna equivalent's time.

2. **During a run** (``--during-run``, on by default): the same health / trials pair while
   ``hpo search`` trains with two local workers on the same database, so both compete with
   the workers for the two cores and the database.

3. **The main job's fixed cost.** ``hpo search --stages 1 --trials 1 --epochs 1`` with one local
   worker, on a fresh SQLite file in a fresh folder, as a first user runs it (report and model
   written): ``--search-runs`` times (default 5). Target: at most 2 s. ``python -c pass`` is
   timed alongside as the floor any Python command pays.

Both sides run from bytecode. Optuna's was compiled when pip installed it; hpo installed in
editable mode writes its own on first use, except where ``PYTHONDONTWRITEBYTECODE`` is set
(as on some CI machines), where it would compile its modules from source at every start
(about 0.2 s a command). So the script compiles hpo's packages first, as ``pip install .``
does (:func:`compile_bytecode`).

Usage::

    python benchmarks/cli_latency.py                   # ~3 min
    python benchmarks/cli_latency.py --runs 3 --no-during-run --json
    python benchmarks/cli_latency.py --quick           # a smoke run: 60 trials, one run of each
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import dump_json, machine, median, postgres_available, postgres_database, print_table  # noqa: E402

CAMPAIGN = "latency"
STUDY = f"{CAMPAIGN}/stage-1"


def script(name: str) -> list[str]:
    """The console script a user types, next to this Python (the one the package was installed for)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"cli_latency.py: the `{name}` command is not installed (pip install -e .)")
    return [found]


def clean_env() -> dict[str, str]:
    """The environment of the timed commands: no storage or password from this shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env["COLUMNS"] = "120"
    return env


def timed(argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None) -> float:
    """Seconds from start to exit of one process; its failure stops the benchmark with its stderr."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env or clean_env(), stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"cli_latency.py: {' '.join(argv[:3])} ... exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def pairs(url: str, study: str, number: int) -> list[tuple[str, list[str], str, list[str]]]:
    """(label, hpo argv, Optuna equivalent's label, its argv)."""
    hpo, optuna = script("hpo"), script("optuna")
    optuna_trials = [*optuna, "trials", "--storage", url, "--study-name", study]
    return [
        ("hpo studies", [*hpo, "studies", "--storage", url], "optuna studies", [*optuna, "studies", "--storage", url]),
        ("hpo trials", [*hpo, "trials", study, "--storage", url], "optuna trials", optuna_trials),
        ("hpo trial", [*hpo, "trial", study, str(number), "--storage", url], "optuna trials", optuna_trials),
        ("hpo health", [*hpo, "health", study, "--storage", url], "optuna trials", optuna_trials),
    ]


def compare(url: str, study: str, number: int, runs: int, log) -> list[dict[str, Any]]:
    """Each pair timed ``runs`` times, hpo and Optuna in turn, so load hits both alike."""
    rows = []
    for label, hpo_argv, other, other_argv in pairs(url, study, number):
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(timed(hpo_argv))
            theirs.append(timed(other_argv))
        row = {"command": label, "seconds": round(median(ours), 3), "optuna": other,
               "optuna_seconds": round(median(theirs), 3)}
        row["ratio"] = round(row["seconds"] / row["optuna_seconds"], 3)
        row["pass"] = row["ratio"] <= 0.5
        log(f"{label}: {row['seconds']:.2f} s, {other}: {row['optuna_seconds']:.2f} s (ratio {row['ratio']:.2f})")
        rows.append(row)
    return rows


def during_a_run(url: str, runs: int, log) -> list[dict[str, Any]]:
    """health / trials pairs while `hpo search` trains with two local workers on ``url``."""
    folder = tempfile.mkdtemp(prefix="hpo-latency-run-")
    env = clean_env()
    search = subprocess.Popen(
        [*script("hpo"), "search", "--name", "busy", "--stages", "1", "--trials", "100000", "--epochs", "20",
         "--workers", "2", "--no-report", "--no-model", "--storage", url],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        hpo = script("hpo")
        while time.monotonic() < deadline:  # until both workers train
            out = subprocess.run([*hpo, "health", "busy/stage-1", "--storage", url, "--format", "json"],
                                 capture_output=True, text=True, env=env)
            if out.returncode == 0 and json.loads(out.stdout)["counts"].get("RUNNING", 0) >= 2:
                break
            time.sleep(0.5)
        else:
            raise SystemExit("cli_latency.py: the search started for the timings during a run never ran two trials")
        rows = [r for r in compare(url, "busy/stage-1", 0, runs, log) if r["command"] in ("hpo health", "hpo trials")]
        for r in rows:
            r["command"] += " (during a run)"
        return rows
    finally:
        os.killpg(search.pid, signal.SIGINT)
        try:
            search.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
        shutil.rmtree(folder, ignore_errors=True)


def one_trial_search(runs: int, log) -> dict[str, Any]:
    """The fixed cost of the main job: a one-trial, one-epoch campaign on a fresh SQLite file."""
    hpo = script("hpo")
    searches, floors = [], []
    for _ in range(runs):
        folder = tempfile.mkdtemp(prefix="hpo-latency-search-")
        try:
            searches.append(timed([*hpo, "search", "--stages", "1", "--trials", "1", "--epochs", "1", "--workers", "1",
                                   "--storage", f"sqlite:///{folder}/hpo.db"], cwd=folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        floors.append(timed([sys.executable, "-c", "pass"]))
    result = {"seconds": round(median(searches), 3), "all_seconds": [round(s, 3) for s in searches],
              "python_floor_seconds": round(median(floors), 3)}
    result["pass"] = result["seconds"] <= 2.0
    log(f"hpo search, one trial of one epoch: {result['seconds']:.2f} s (python -c pass: {result['python_floor_seconds']:.3f} s)")
    return result


def compile_bytecode() -> None:
    """Compile hpo's packages to bytecode where they are imported from (``__pycache__``), as
    pip does when it installs a package."""
    import compileall

    import hpo
    import storage
    import workers

    folders = [str(Path(package.__file__).parent) for package in (hpo, workers, storage)]
    for folder in folders:
        if not compileall.compile_dir(folder, quiet=1):
            raise SystemExit(f"cli_latency.py: could not compile {folder} to bytecode")


def run(args: argparse.Namespace, log) -> dict[str, Any]:
    from benchmarks.report import generate  # the campaign writer of the report benchmark

    report: dict[str, Any] = {"benchmark": "cli_latency", "machine": machine(), "trials": args.trials, "runs": args.runs}
    compile_bytecode()
    report["bytecode_compiled"] = True
    if not postgres_available():
        raise SystemExit("cli_latency.py: no PostgreSQL server (set HPO_BENCH_POSTGRES to an admin URL)")
    with postgres_database("hpo_bench_latency") as url:
        campaign = generate(url, CAMPAIGN, args.trials)
        log(f"stored a campaign of {campaign.trials} trials ({campaign.stages} per stage) in {campaign.seconds:.1f} s")
        report["stages"] = campaign.stages
        report["inspection"] = compare(url, STUDY, campaign.stages[0] // 2, args.runs, log)
        if args.during_run:
            report["during_run"] = during_a_run(url, args.runs, log)
    report["one_trial_search"] = one_trial_search(args.search_runs, log)
    rows = report["inspection"] + report.get("during_run", [])
    report["targets"] = {
        "each_at_most_half_of_optuna": all(r["pass"] for r in rows),
        "one_trial_search_at_most_2s": report["one_trial_search"]["pass"],
    }
    return report


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, Optuna {m['optuna']}")
    print(f"PostgreSQL, a campaign of {report['trials']} trials (stages {report['stages']}), median of {report['runs']} runs\n")
    rows = report["inspection"] + report.get("during_run", [])
    print_table([{**r, "target": "PASS" if r["pass"] else "MISS"} for r in rows],
                ["command", "seconds", "optuna", "optuna_seconds", "ratio", "target"],
                title="hpo against Optuna's CLI (target: ratio <= 0.5)")
    s = report["one_trial_search"]
    print(f"hpo search, 1 stage, 1 trial, 1 epoch, SQLite: {s['seconds']:.2f} s median of {s['all_seconds']} "
          f"(python -c pass: {s['python_floor_seconds']:.3f} s); target <= 2 s: {'PASS' if s['pass'] else 'MISS'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials in the stored campaign (default 1000)")
    parser.add_argument("--runs", type=int, default=7, help="runs of each command; the median counts (default 7)")
    parser.add_argument("--search-runs", type=int, default=5, help="runs of the one-trial search (default 5)")
    parser.add_argument("--no-during-run", dest="during_run", action="store_false",
                        help="leave out the timings during a run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 trials, one run of each")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.runs, args.search_runs = 60, 1, 1
    if args.trials < 10 or args.runs < 1 or args.search_runs < 1:
        parser.error("--trials must be at least 10 (three stages, each with a complete trial); --runs and --search-runs at least 1")
    report = run(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        dump_json(report)
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

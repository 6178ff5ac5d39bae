"""Search quality per unit of compute: coarse-to-fine against random search and one TPE stage.

On digits, for each seed (the data split, the samplers and the trial seeds follow it):

- **c2f**: the coarse-to-fine campaign ``hpo search`` runs by default: 3 stages of 60 / 30 / 15
  trials at 2 / 8 / 30 epochs, TPE with the median pruner in each, the ranges narrowed between
  stages, the parent's best configuration queued first in the next stage;
- **c2f-half**: the same campaign with half the trials per stage (30 / 15 / 8), held to half
  the epochs c2f spent: if it spends more, its result is what it would have ended with had it
  been stopped at that point (its trials in the order they ran, those within the budget kept,
  the pick made and retrained as ``hpo search`` makes it);
- **random**: one stage of random search over the default space at 30 epochs per trial,
  without pruning (the lecture's random search);
- **tpe**: one TPE stage over the default space at 30 epochs per trial, with the median
  pruner (the stage default).

The budget is training epochs actually run: per trial the epochs its learning curve holds
(plus the one a diverged run broke off in), summed over the search. The campaign runs first,
and what it spent is the budget random search and TPE get: they take trials until the next
one could overrun it; c2f-half gets half of it. Every method ends as
``hpo search`` does: the best configuration (from the last stage) is retrained on train +
validation for 30 epochs and tested once; that retrain is the same for all and is not counted.

Reported per method, median over the seeds: the best validation accuracy (the value of the
trial retrained) and the test accuracy of the retrained model, with the epochs spent.
Targets (issue): c2f >= the best of random and tpe at the same budget; c2f-half (at most half
the budget) >= their final accuracy. Each worker runs in this process, one at a time, so a
seed gives the same search every time.

Usage::

    python benchmarks/search_quality.py            # 5 seeds (~1-2 min on 2 cores)
    python benchmarks/search_quality.py --seeds 3  # fewer seeds
    python benchmarks/search_quality.py --quick    # a smoke run: 1 seed, a small schedule
    python benchmarks/search_quality.py --json     # one JSON object with every figure
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from benchmarks.common import dump_json, machine, median, print_table, sqlite_database  # noqa: E402
from hpo.campaign import FINAL_CANDIDATES, CampaignSpec, final_candidates, final_evaluation, run_campaign  # noqa: E402
from storage import backend  # noqa: E402
from workers import stageplan  # noqa: E402
from workers.space import default_space  # noqa: E402
from workers.worker import Worker, WorkerOptions  # noqa: E402

FINAL_EPOCHS = 30
METHODS = ("c2f", "c2f-half", "random", "tpe")


class Quiet:
    """A campaign Progress that shows nothing."""

    def stage_started(self, plan, resumed): ...
    def stage_progress(self, plan, counts, best): ...
    def stage_narrowed(self, parent, child, result): ...
    def message(self, text): ...


def trial_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs a trial trained: its curve, plus the epoch a diverged run broke off in."""
    curve = trial.user_attrs.get("curve") or {}
    return len(curve.get("epoch", [])) + (1 if str(trial.user_attrs.get("reason", "")).startswith("diverged") else 0)


def epochs_spent(storage, study_names: list[str]) -> int:
    """Training epochs the trials of these studies ran."""
    return sum(
        trial_epochs(t)
        for name in study_names
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    )


def stopped_at(storage, plans: list, budget: int) -> dict[str, Any]:
    """What a campaign would have ended with had it been stopped once it spent ``budget``
    epochs: its trials in the order they finished (one worker: the order they ran), those
    within the budget kept; the pick as ``final_evaluation`` picks (the latest stage with a
    complete trial, best value first, the next one if a retrain diverges), retrained the same
    way (train + validation, the last stage's epochs) and tested once."""
    from workers.objective import config_for
    from workers.run import cached_dataset, train_and_test
    from workers.space import SearchSpace
    from workers.train import TrainingDiverged

    trials = []
    for plan in plans:
        for t in optuna.load_study(study_name=plan.study_name, storage=storage).get_trials(deepcopy=False):
            if t.datetime_complete is not None:
                trials.append((t.datetime_complete, plan, t))
    trials.sort(key=lambda x: x[0])
    spent, kept = 0, []
    for _, plan, t in trials:
        if spent + trial_epochs(t) > budget:
            break
        spent += trial_epochs(t)
        kept.append((plan, t))
    candidates = []
    for plan in reversed(plans):
        done = sorted((t for p, t in kept if p is plan and t.state.name == "COMPLETE"), key=lambda t: -t.value)
        candidates += [(plan, t) for t in done]
    last = plans[-1]
    dataset = cached_dataset(last.dataset, last.seed)
    for plan, t in candidates[:FINAL_CANDIDATES]:
        config = config_for(last, SearchSpace.from_dict(plan.space), t.params, t.user_attrs.get("seed", last.seed))
        try:
            evaluation = train_and_test(config, dataset, merge_val=True)
        except TrainingDiverged:
            continue
        return {"epochs": spent, "val_accuracy": float(t.value), "test_accuracy": evaluation.test_accuracy,
                "trials": len(kept), "picked_from_stage": plan.stage}
    raise RuntimeError("nothing completed within the budget")


def campaign(url: str, name: str, seed: int, trials: list[int], epochs: list[int],
             budget: int | None = None) -> dict[str, Any]:
    """A coarse-to-fine campaign, its coordinator and one worker in this process (``budget``:
    the result as if it had been stopped once it spent that many epochs, see stopped_at)."""
    spec = CampaignSpec(name=name, space=default_space(), stages=len(trials), trials=trials, epochs=epochs, seed=seed)
    backend.ensure_schema(url)
    worker = Worker(WorkerOptions(storage_url=url, campaign=name, seed=seed, poll_seconds=0.05))
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    try:
        summary = run_campaign(url, spec, Quiet(), workers=0)
    finally:
        thread.join(timeout=30)  # the worker leaves by itself once the last stage is done
        if thread.is_alive():
            worker.request_stop()
            thread.join(timeout=60)
        worker.close()
    storage = backend.open_storage(url)
    try:
        spent = epochs_spent(storage, [s["study"] for s in summary.stages])
        if budget is not None and spent > budget:
            plans = stageplan.campaign_stages(storage, name)
            return {**stopped_at(storage, plans, budget), "epochs_unstopped": spent}
    finally:
        storage.engine.dispose()
    best = summary.best
    return {"epochs": spent, "val_accuracy": best.val_accuracy, "test_accuracy": best.test_accuracy,
            "trials": sum(sum(s["counts"].get(k, 0) for k in ("COMPLETE", "PRUNED")) for s in summary.stages)}


def single_stage(url: str, name: str, seed: int, sampler: str, pruner: str, budget: int) -> dict[str, Any]:
    """One stage at FINAL_EPOCHS per trial, trials taken until the next could overrun ``budget``."""
    space = default_space()
    spec = CampaignSpec(name=name, space=space, stages=1, trials=[100_000], epochs=[FINAL_EPOCHS],
                        sampler=sampler, pruner=pruner, seed=seed)
    plan = spec.plan(1, space)
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    try:
        stageplan.create_stage(storage, plan)
        spent, runs = 0, 0
        while budget - spent >= FINAL_EPOCHS:
            # A run takes as many trials as surely fit; one sampler per run, seeded per run.
            runs += 1
            worker = Worker(WorkerOptions(storage_url=url, study=plan.study_name, seed=seed * 1000 + runs,
                                          max_trials=(budget - spent) // FINAL_EPOCHS))
            try:
                worker.run()
            finally:
                worker.close()
            spent = epochs_spent(storage, [plan.study_name])
        best = final_evaluation(final_candidates(storage, [plan], FINAL_CANDIDATES), plan, Quiet())
        trials = len(optuna.load_study(study_name=plan.study_name, storage=storage).get_trials(deepcopy=False))
    finally:
        storage.engine.dispose()
    return {"epochs": spent, "val_accuracy": best.val_accuracy, "test_accuracy": best.test_accuracy,
            "trials": trials, "worker_runs": runs}


def run(seeds: list[int], trials: list[int], epochs: list[int], log) -> dict[str, Any]:
    per_seed = []
    half = [max(2, (n + 1) // 2) for n in trials]
    with tempfile.TemporaryDirectory(prefix="hpo-quality-") as folder:
        for seed in seeds:
            row: dict[str, Any] = {"seed": seed}
            started = time.monotonic()
            with sqlite_database(Path(folder), f"c2f-{seed}") as url:
                row["c2f"] = campaign(url, f"c2f{seed}", seed, trials, epochs)
            budget = row["c2f"]["epochs"]
            with sqlite_database(Path(folder), f"half-{seed}") as url:
                row["c2f-half"] = campaign(url, f"half{seed}", seed, half, epochs, budget=budget // 2)
            with sqlite_database(Path(folder), f"random-{seed}") as url:
                row["random"] = single_stage(url, f"random{seed}", seed, "random", "none", budget)
            with sqlite_database(Path(folder), f"tpe-{seed}") as url:
                row["tpe"] = single_stage(url, f"tpe{seed}", seed, "tpe", "median", budget)
            row["seconds"] = round(time.monotonic() - started, 1)
            log(f"seed {seed} ({row['seconds']} s): " + ", ".join(
                f"{m} val {row[m]['val_accuracy']:.4f} test {row[m]['test_accuracy']:.4f} ({row[m]['epochs']} epochs)"
                for m in METHODS))
            per_seed.append(row)
    medians = {
        m: {k: median([r[m][k] for r in per_seed]) for k in ("val_accuracy", "test_accuracy", "epochs", "trials")}
        for m in METHODS
    }
    others_val = max(medians["random"]["val_accuracy"], medians["tpe"]["val_accuracy"])
    others_test = max(medians["random"]["test_accuracy"], medians["tpe"]["test_accuracy"])
    targets = {
        "c2f_at_least_as_good_val": medians["c2f"]["val_accuracy"] >= others_val,
        "c2f_at_least_as_good_test": medians["c2f"]["test_accuracy"] >= others_test,
        "half_budget_fraction": round(medians["c2f-half"]["epochs"] / medians["c2f"]["epochs"], 3),
        "half_reaches_others_test": medians["c2f-half"]["test_accuracy"] >= others_test,
        "half_reaches_others_val": medians["c2f-half"]["val_accuracy"] >= others_val,
    }
    return {"benchmark": "search_quality", "machine": machine(), "dataset": "digits", "seeds": seeds,
            "schedule": {"trials": trials, "epochs": epochs, "half_trials": half, "single_stage_epochs": FINAL_EPOCHS},
            "per_seed": per_seed, "medians": medians, "targets": targets}


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    sched = report["schedule"]
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, Optuna {m['optuna']}")
    print(f"digits, seeds {report['seeds']}; c2f trials {sched['trials']} at epochs {sched['epochs']}, "
          f"c2f-half trials {sched['half_trials']}; random / tpe at {sched['single_stage_epochs']} epochs per trial\n")
    rows = []
    for r in report["per_seed"]:
        for method in METHODS:
            x = r[method]
            rows.append({"seed": r["seed"], "method": method, "epochs": x["epochs"], "trials": x["trials"],
                         "best val": round(x["val_accuracy"], 4), "test (retrained)": round(x["test_accuracy"], 4)})
    print_table(rows, list(rows[0]))
    med = report["medians"]
    print_table([{"method": k, "median epochs": v["epochs"], "median best val": round(v["val_accuracy"], 4),
                  "median test": round(v["test_accuracy"], 4)} for k, v in med.items()],
                ["method", "median epochs", "median best val", "median test"], title="medians over seeds")
    t = report["targets"]
    print(f"c2f >= best of random / tpe at the same budget: val {'PASS' if t['c2f_at_least_as_good_val'] else 'MISS'}, "
          f"test {'PASS' if t['c2f_at_least_as_good_test'] else 'MISS'}")
    print(f"c2f-half spends {t['half_budget_fraction']:.0%} of c2f's epochs; reaches the others' test accuracy: "
          f"{'PASS' if t['half_reaches_others_test'] and t['half_budget_fraction'] <= 0.5 else 'MISS'} "
          f"(val: {'PASS' if t['half_reaches_others_val'] else 'MISS'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, trials 12/6/3 at 2/4/8 epochs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo.worker").setLevel(logging.ERROR)
    global FINAL_EPOCHS
    if args.quick:
        seeds, trials, epochs = list(range(args.first_seed, args.first_seed + (args.seeds or 1))), [12, 6, 3], [2, 4, 8]
        FINAL_EPOCHS = 8
    else:
        from hpo.campaign import DEFAULT_EPOCHS, DEFAULT_TRIALS

        seeds = list(range(args.first_seed, args.first_seed + (args.seeds or 5)))
        trials, epochs = list(DEFAULT_TRIALS), list(DEFAULT_EPOCHS)
        FINAL_EPOCHS = epochs[-1]
    report = run(seeds, trials, epochs, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        dump_json(report)
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

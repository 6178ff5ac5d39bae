"""Search quality per unit of compute: coarse-to-fine against random search and one TPE stage.

On digits or MNIST-1D (``--dataset``), for each seed (the data split, the samplers and the
trial seeds follow it):

- **c2f**: the coarse-to-fine campaign ``hpo search`` runs by default: 3 stages of 60 / 30 / 15
  trials at 2 / 8 / 30 epochs, TPE with the median pruner in each, the ranges narrowed between
  stages, the parent's best configuration queued first in the next stage. ``--rule MIN:KEEP``
  (repeatable) runs it once per narrowing rule for categorical choices (``hpo search
  --min-choice-trials MIN --keep-choices KEEP``), each named ``c2f MIN/KEEP``;
  ``--rule MIN:KEEP:MARGIN:WIDTH`` also sets the ranges' rule (the campaign's ``margin`` and
  ``min_width``, see hpo/narrow.py), named ``c2f MIN/KEEP/MARGIN/WIDTH``, and
  ``--rule MIN:KEEP:MARGIN:WIDTH:TOP`` the share of a stage's best trials the ranges come from
  (``--top-quantile``); without it, the defaults, named ``c2f``;
- **c2f-half**: the same campaign (the first rule) with half the trials per stage
  (30 / 15 / 8), held to half the epochs c2f spent: if it spends more, its result is what it
  would have ended with had it been stopped at that point (its trials in the order they ran,
  those within the budget kept, the pick made and retrained as ``hpo search`` makes it);
  ``--no-half`` leaves it out;
- **random**: one stage of random search over the default space at 30 epochs per trial,
  without pruning (the lecture's random search);
- **tpe**: one TPE stage over the default space at 30 epochs per trial, with the median
  pruner (the stage default).

The budget is training epochs actually run: per trial the epochs its learning curve holds
(plus the one a diverged run broke off in), summed over the search. The campaigns run first,
and the most any of them spent is the budget random search and TPE get (equal or larger
epochs than each campaign's): they take trials until the next one could overrun it;
c2f-half gets half of the first campaign's. Every method ends as ``hpo search`` does: the
best configuration (from the last stage) is retrained on train + validation for 30 epochs and
tested once; that retrain is the same for all and is not counted.

Reported per method, median over the seeds, with the range over seeds: the best validation
accuracy (the value of the trial retrained) and the test accuracy of the retrained model,
with the epochs spent. Targets: c2f >= the best of random and tpe at the same budget;
c2f-half (at most half the budget) >= their final accuracy. Each campaign's worker runs in
the process of its seed, one trial at a time, so a seed gives the same search every time;
``--jobs N`` runs N seeds at once, each in its own process with one BLAS thread.

Usage::

    python benchmarks/search_quality.py            # 5 seeds (~1-2 min on 2 cores)
    python benchmarks/search_quality.py --seeds 3  # fewer seeds
    python benchmarks/search_quality.py --dataset mnist1d --seeds 10 --jobs 2 --rule 1:1 --rule 3:1
    python benchmarks/search_quality.py --dataset mnist1d --seeds 10 --jobs 2 --rule 3:2:0.25:0.1 --rule 3:2:0.5:0.5
    python benchmarks/search_quality.py --quick    # a smoke run: 1 seed, a small schedule
    python benchmarks/search_quality.py --json     # one JSON object with every figure
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
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
from hpo.campaign import DEFAULT_TOP_QUANTILE, FINAL_CANDIDATES, CampaignSpec, final_candidates, final_evaluation, run_campaign  # noqa: E402
from hpo.local import BLAS_THREAD_VARS  # noqa: E402
from hpo.narrow import KEEP_CHOICES, MARGIN, MIN_CHOICE_TRIALS, MIN_WIDTH  # noqa: E402
from storage import backend  # noqa: E402
from workers import stageplan  # noqa: E402
from workers.space import default_space  # noqa: E402
from workers.worker import Worker, WorkerOptions  # noqa: E402

FINAL_EPOCHS = 30
Rule = tuple  # (min_choice_trials, keep_choices[, margin, min_width[, top_quantile]])
DATASETS = ("digits", "mnist1d")  # built in, no files: the same data on every machine


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
                "trials": len(kept), "picked_from_stage": plan.stage, "params": dict(t.params)}
    raise RuntimeError("nothing completed within the budget")


def campaign(url: str, name: str, seed: int, trials: list[int], epochs: list[int],
             budget: int | None = None, *, dataset: str = "digits",
             rule: Rule = (MIN_CHOICE_TRIALS, KEEP_CHOICES)) -> dict[str, Any]:
    """A coarse-to-fine campaign, its coordinator and one worker in this process (``budget``:
    the result as if it had been stopped once it spent that many epochs, see stopped_at;
    ``rule``: the narrowing's (min_choice_trials, keep_choices[, margin, min_width[, top_quantile]]))."""
    spec = CampaignSpec(name=name, space=default_space(), dataset=dataset, stages=len(trials), trials=trials,
                        epochs=epochs, seed=seed, **rule_dict(rule))
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
            "trials": sum(sum(s["counts"].get(k, 0) for k in ("COMPLETE", "PRUNED")) for s in summary.stages),
            "params": best.params, "last_space": summary.stages[-1]["ranges"]}


def single_stage(url: str, name: str, seed: int, sampler: str, pruner: str, budget: int,
                 dataset: str = "digits") -> dict[str, Any]:
    """One stage at FINAL_EPOCHS per trial, trials taken until the next could overrun ``budget``."""
    space = default_space()
    spec = CampaignSpec(name=name, space=space, dataset=dataset, stages=1, trials=[100_000], epochs=[FINAL_EPOCHS],
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
            "trials": trials, "worker_runs": runs, "params": best.params}


def rule_label(rule: Rule, rules: list[Rule]) -> str:
    """``c2f`` for the only rule, ``c2f MIN/KEEP[/MARGIN/WIDTH]`` among several."""
    return "c2f" if len(rules) == 1 else "c2f " + "/".join(f"{part:g}" for part in rule)


def run_seed(seed: int, dataset: str, trials: list[int], epochs: list[int], rules: list[Rule],
             half: bool, final_epochs: int) -> dict[str, Any]:
    """Every method on one seed, in throwaway SQLite files: the campaigns first, then random
    search and TPE at the most any campaign spent."""
    global FINAL_EPOCHS
    FINAL_EPOCHS = final_epochs  # a fresh process (--jobs) starts from the module's value
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo.worker").setLevel(logging.ERROR)
    row: dict[str, Any] = {"seed": seed}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hpo-quality-") as tmp:
        folder = Path(tmp)
        for i, rule in enumerate(rules):
            with sqlite_database(folder, f"c2f-{seed}-{i}") as url:
                row[rule_label(rule, rules)] = campaign(url, f"c2f{seed}", seed, trials, epochs, dataset=dataset, rule=rule)
        budget = max(row[rule_label(rule, rules)]["epochs"] for rule in rules)
        if half:
            first = row[rule_label(rules[0], rules)]["epochs"]
            halved = [max(2, (n + 1) // 2) for n in trials]
            with sqlite_database(folder, f"half-{seed}") as url:
                row["c2f-half"] = campaign(url, f"half{seed}", seed, halved, epochs, budget=first // 2,
                                           dataset=dataset, rule=rules[0])
        with sqlite_database(folder, f"random-{seed}") as url:
            row["random"] = single_stage(url, f"random{seed}", seed, "random", "none", budget, dataset)
        with sqlite_database(folder, f"tpe-{seed}") as url:
            row["tpe"] = single_stage(url, f"tpe{seed}", seed, "tpe", "median", budget, dataset)
    row["seconds"] = round(time.monotonic() - started, 1)
    return row


def run(seeds: list[int], trials: list[int], epochs: list[int], log, *, dataset: str = "digits",
        rules: list[Rule] | None = None, half: bool = True, jobs: int = 1) -> dict[str, Any]:
    rules = rules or [(MIN_CHOICE_TRIALS, KEEP_CHOICES)]
    methods = [rule_label(rule, rules) for rule in rules] + (["c2f-half"] if half else []) + ["random", "tpe"]
    args = (dataset, trials, epochs, rules, half, FINAL_EPOCHS)
    per_seed = []

    def done(row: dict[str, Any]) -> None:
        log(f"seed {row['seed']} ({row['seconds']} s): " + ", ".join(
            f"{m} val {row[m]['val_accuracy']:.4f} test {row[m]['test_accuracy']:.4f} ({row[m]['epochs']} epochs)"
            for m in methods))
        per_seed.append(row)

    if jobs == 1:
        for seed in seeds:
            done(run_seed(seed, *args))
    else:
        for var in BLAS_THREAD_VARS:  # N seeds at once on N cores: one BLAS thread each
            os.environ[var] = "1"
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in concurrent.futures.as_completed([pool.submit(run_seed, seed, *args) for seed in seeds]):
                done(future.result())
        per_seed.sort(key=lambda row: row["seed"])
    medians = {
        m: {**{k: median([r[m][k] for r in per_seed]) for k in ("val_accuracy", "test_accuracy", "epochs", "trials")},
            "test_min": min(r[m]["test_accuracy"] for r in per_seed),
            "test_max": max(r[m]["test_accuracy"] for r in per_seed)}
        for m in methods
    }
    others_val = max(medians["random"]["val_accuracy"], medians["tpe"]["val_accuracy"])
    others_test = max(medians["random"]["test_accuracy"], medians["tpe"]["test_accuracy"])
    campaigns = methods[:len(rules)]
    first = campaigns[0]
    targets: dict[str, Any] = {
        "c2f_at_least_as_good_val": medians[first]["val_accuracy"] >= others_val,
        "c2f_at_least_as_good_test": medians[first]["test_accuracy"] >= others_test,
        # per campaign: above TPE's median test accuracy, and a spread between seeds narrower than TPE's
        "above_tpe_test": {m: medians[m]["test_accuracy"] > medians["tpe"]["test_accuracy"] for m in campaigns},
        "spread": {m: round(medians[m]["test_max"] - medians[m]["test_min"], 4) for m in methods},
    }
    if half:
        targets.update({
            "half_budget_fraction": round(medians["c2f-half"]["epochs"] / medians[first]["epochs"], 3),
            "half_reaches_others_test": medians["c2f-half"]["test_accuracy"] >= others_test,
            "half_reaches_others_val": medians["c2f-half"]["val_accuracy"] >= others_val,
        })
    return {"benchmark": "search_quality", "machine": machine(), "dataset": dataset, "seeds": seeds, "jobs": jobs,
            "methods": methods, "rules": {rule_label(r, rules): rule_dict(r) for r in rules},
            "schedule": {"trials": trials, "epochs": epochs, "half_trials": [max(2, (n + 1) // 2) for n in trials] if half else None,
                         "single_stage_epochs": FINAL_EPOCHS},
            "per_seed": per_seed, "medians": medians, "targets": targets}


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    sched = report["schedule"]
    methods = report["methods"]
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, Optuna {m['optuna']}")
    rules = "; ".join(f"{label}: --min-choice-trials {r['min_choice_trials']} --keep-choices {r['keep_choices']}, "
                      f"margin {r['margin']:g}, min_width {r['min_width']:g}"
                      for label, r in report["rules"].items())
    half = f", c2f-half trials {sched['half_trials']}" if sched["half_trials"] else ""
    print(f"{report['dataset']}, seeds {report['seeds']}; c2f trials {sched['trials']} at epochs {sched['epochs']} ({rules})"
          f"{half}; random / tpe at {sched['single_stage_epochs']} epochs per trial\n")
    rows = []
    for r in report["per_seed"]:
        for method in methods:
            x = r[method]
            rows.append({"seed": r["seed"], "method": method, "epochs": x["epochs"], "trials": x["trials"],
                         "best val": round(x["val_accuracy"], 4), "test (retrained)": round(x["test_accuracy"], 4)})
    print_table(rows, list(rows[0]))
    med = report["medians"]
    print_table([{"method": k, "median epochs": v["epochs"], "median best val": round(v["val_accuracy"], 4),
                  "median test": round(v["test_accuracy"], 4), "test range": f"{v['test_min']:.4f}-{v['test_max']:.4f}"}
                 for k, v in med.items()],
                ["method", "median epochs", "median best val", "median test", "test range"], title="medians over seeds")
    t = report["targets"]
    print(f"{methods[0]} >= best of random / tpe at the same budget: val {'PASS' if t['c2f_at_least_as_good_val'] else 'MISS'}, "
          f"test {'PASS' if t['c2f_at_least_as_good_test'] else 'MISS'}")
    for label, above in t["above_tpe_test"].items():
        narrower = t["spread"][label] < t["spread"]["tpe"]
        print(f"{label} median test above tpe's: {'PASS' if above else 'MISS'}; spread between seeds "
              f"{t['spread'][label]:.4f} vs tpe's {t['spread']['tpe']:.4f}: {'narrower' if narrower else 'not narrower'}")
    if "half_budget_fraction" in t:
        print(f"c2f-half spends {t['half_budget_fraction']:.0%} of {methods[0]}'s epochs; reaches the others' test accuracy: "
              f"{'PASS' if t['half_reaches_others_test'] and t['half_budget_fraction'] <= 0.5 else 'MISS'} "
              f"(val: {'PASS' if t['half_reaches_others_val'] else 'MISS'})")


def rule_dict(rule: Rule) -> dict[str, Any]:
    """A rule as the campaign settings it stands for (CampaignSpec's names), defaults filled in."""
    margin, min_width = rule[2:4] if len(rule) >= 4 else (MARGIN, MIN_WIDTH)
    return {"min_choice_trials": rule[0], "keep_choices": rule[1], "margin": margin, "min_width": min_width,
            "top_quantile": rule[4] if len(rule) == 5 else DEFAULT_TOP_QUANTILE}


def parse_rule(text: str) -> Rule:
    """``MIN:KEEP`` -> (min_choice_trials, keep_choices), each an integer >= 1;
    ``MIN:KEEP:MARGIN:WIDTH`` -> the same and the ranges' margin (>= 0) and min_width (in (0, 1]);
    ``MIN:KEEP:MARGIN:WIDTH:TOP`` -> and the top quantile of trials the ranges keep (in (0, 1])."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 4, 5):
            raise ValueError
        low, keep = int(parts[0]), int(parts[1])
        ranges = tuple(float(p) for p in parts[2:])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:KEEP[:MARGIN:WIDTH[:TOP]], got {text!r}") from None
    if low < 1 or keep < 1:
        raise argparse.ArgumentTypeError(f"MIN and KEEP must be >= 1, got {text!r}")
    if ranges and not (ranges[0] >= 0 and 0 < ranges[1] <= 1):
        raise argparse.ArgumentTypeError(f"MARGIN must be >= 0 and WIDTH in (0, 1], got {text!r}")
    if len(ranges) == 3 and not 0 < ranges[2] <= 1:
        raise argparse.ArgumentTypeError(f"TOP must be in (0, 1], got {text!r}")
    return (low, keep, *ranges)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="digits (359 test images) or mnist1d (1,000)")
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--rule", dest="rules", type=parse_rule, action="append", metavar="MIN:KEEP[:MARGIN:WIDTH[:TOP]]",
                        help="run the campaign with --min-choice-trials MIN --keep-choices KEEP, the ranges' "
                             "margin and min_width, and the top quantile (repeatable; default "
                             f"{MIN_CHOICE_TRIALS}:{KEEP_CHOICES}:{MARGIN:g}:{MIN_WIDTH:g}:{DEFAULT_TOP_QUANTILE:g})")
    parser.add_argument("--no-half", action="store_true", help="leave out c2f-half")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    parser.add_argument("--trials", help="trials per stage, a comma list (default 60,30,15; --quick 12,6,3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, trials 12/6/3 at 2/4/8 epochs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
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
    if args.trials:
        trials = [int(n) for n in args.trials.split(",")]
        if len(trials) != len(epochs) or min(trials) < 1:
            parser.error(f"--trials needs {len(epochs)} positive integers, got {args.trials!r}")
    report = run(seeds, trials, epochs, log=lambda s: print(s, file=sys.stderr, flush=True), dataset=args.dataset,
                 rules=args.rules, half=not args.no_half, jobs=args.jobs)
    if args.json:
        dump_json(report)
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

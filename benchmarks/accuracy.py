"""Accuracy: the default configuration of ``hpo train`` against scikit-learn's MLPClassifier.

On ``digits``, for each seed s (default 0..4): ``load_dataset("digits", s)`` gives its own
stratified train / validation / test split, and

- **ours**: ``workers.run.train_and_test(TrainConfig(seed=s), dataset)`` -- the function
  ``hpo train --seed s --split-seed s`` calls, with the configuration it builds when given
  no other option (checked against the CLI's own defaults at start-up);
- **MLPClassifier**: ``MLPClassifier(hidden_layer_sizes=(100,), random_state=s)``, every
  other setting scikit-learn's default, on the same training split standardized by the
  same preprocessor (fitted on the training split only);
- **PyTorch** (optional, skipped when absent): our network and training recipe written in
  PyTorch -- the same layers, initialization, optimizer, learning-rate decay, L2 on the
  weight matrices only, batch size and epochs -- a cross-check of the engine.

Each trains on the training split only and is scored once on the test split.  Digits
test splits hold 360 images (one image = 0.28%), so one split says little: the median,
minimum and maximum over seeds are reported, with the per-seed table.

Usage::

    python benchmarks/accuracy.py             # 5 seeds, a table and PASS/MISS
    python benchmarks/accuracy.py --json      # one JSON object with every figure
    python benchmarks/accuracy.py --quick     # 2 seeds, 3 epochs each: a smoke run, not a result
    python benchmarks/accuracy.py --tune      # the validation search that chose the defaults

``--tune`` reruns the search behind the training defaults: a grid over epochs, learning
rate, learning-rate decay and weight decay, scored by mean *validation* accuracy over
seeds 10..19 -- splits this benchmark never tests on.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: the checkout's root holds benchmarks/ and workers/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.common import torch_missing  # noqa: E402

from workers.data.datasets import load_dataset  # noqa: E402
from workers.run import fit_and_score, preprocess, train_and_test  # noqa: E402
from workers.train import TrainConfig, TrainingDiverged  # noqa: E402

DATASET = "digits"
SEEDS = 5
TUNE_SEEDS = range(10, 20)
TUNE_GRID = {
    "epochs": (40, 80),
    "learning_rate": (3e-3, 1e-2),
    "lr_decay": (1.0, 0.95),
    "weight_decay": (0.0, 1e-3, 3e-3),
}


# ---------------------------------------------------------------------------------------
# What `hpo train` runs
# ---------------------------------------------------------------------------------------

def cli_default_mismatches() -> list[str]:
    """Fields where ``hpo train`` with no options would differ from ``TrainConfig()``.

    Parses an empty ``hpo train`` command line with click (nothing runs) and compares
    each option's value with the dataclass default; empty when they agree.
    """
    from hpo.cli_run import train as train_command

    ctx = train_command.make_context("train", [], resilient_parsing=False)
    parsed = dict(ctx.params)
    default = TrainConfig()
    problems = []
    if parsed.pop("dataset") != DATASET:
        problems.append("dataset")
    if tuple(parsed.pop("hidden_sizes")) != default.hidden_sizes:
        problems.append("hidden_sizes")
    for name in ("split_seed", "as_json", "from_trial", "save_path", "storage_flag"):  # options that are not knobs
        parsed.pop(name, None)
    for name, value in parsed.items():
        if getattr(default, name) != value:
            problems.append(f"{name} ({value!r} vs {getattr(default, name)!r})")
    return problems


def ours(seed: int, epochs: int | None = None) -> dict[str, Any]:
    """``hpo train --seed s --split-seed s`` (epochs overridden only by --quick)."""
    config = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    started = time.perf_counter()
    evaluation = train_and_test(config, load_dataset(DATASET, seed))
    return {
        "test_accuracy": evaluation.test_accuracy,
        "val_accuracy": evaluation.val_accuracy,
        "seconds": time.perf_counter() - started,
    }


def sklearn_mlp(seed: int, max_iter: int | None = None) -> dict[str, Any]:
    """MLPClassifier(hidden_layer_sizes=(100,)) with scikit-learn's defaults, standardized input
    (``max_iter`` is lowered only by --quick)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    data = load_dataset(DATASET, seed)
    config = TrainConfig(dtype="float64")  # the same standardization, kept in float64
    X_train, X_test = preprocess(config, data.X_train, data.X_test)
    model = MLPClassifier(hidden_layer_sizes=(100,), random_state=seed)
    if max_iter is not None:
        model.set_params(max_iter=max_iter)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, data.y_train)
    return {
        "test_accuracy": float(model.score(X_test, data.y_test)),
        "epochs": int(model.n_iter_),
        "seconds": time.perf_counter() - started,
    }


def torch_mlp(seed: int, epochs: int | None = None) -> dict[str, Any]:
    """Our default network and recipe in PyTorch (float32)."""
    import torch
    from torch import nn

    config = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    data = load_dataset(DATASET, seed)
    X_train, X_test = preprocess(config, data.X_train, data.X_test)
    torch.manual_seed(seed)
    sizes = (X_train.shape[1], *config.hidden_sizes)
    layers: list[nn.Module] = []
    for fan_in, width in zip(sizes, sizes[1:]):
        linear = nn.Linear(fan_in, width, bias=False)
        nn.init.normal_(linear.weight, std=math.sqrt(2.0 / fan_in))  # He normal, as ours
        layers += [linear, nn.BatchNorm1d(width, momentum=0.1, eps=1e-5), nn.ReLU()]
    output = nn.Linear(sizes[-1], data.num_classes)
    nn.init.normal_(output.weight, std=math.sqrt(2.0 / sizes[-1]))
    nn.init.zeros_(output.bias)
    model = nn.Sequential(*layers, output)
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    optimizer = torch.optim.Adam(
        [{"params": weights, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    loss_fn = nn.CrossEntropyLoss()
    X, y = torch.from_numpy(X_train), torch.from_numpy(np.array(data.y_train))
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    n = X.shape[0]
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        # merge a last batch of one example into the one before, as our engine does
        starts = list(range(0, n, config.batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        for start, stop in zip(starts, starts[1:] + [n]):
            rows = order[start:stop]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[rows]), y[rows]).backward()
            optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(X_test)).argmax(dim=1).numpy()
    return {
        "test_accuracy": float(np.mean(predicted == data.y_test)),
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------
# The benchmark and the search behind the defaults
# ---------------------------------------------------------------------------------------

def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values)}


def run(seeds: int, quick: bool) -> dict[str, Any]:
    """Every method on every seed -> one JSON-ready dict."""
    import sklearn

    no_torch = torch_missing()
    epochs = 3 if quick else None
    methods = {"ours": lambda s: ours(s, epochs), "sklearn": lambda s: sklearn_mlp(s, epochs)}
    if no_torch is None:
        import torch

        torch.set_num_threads(1)
        methods["torch"] = lambda s: torch_mlp(s, epochs)
    per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    import sklearn.neural_network  # noqa: F401 - load SciPy's BLAS too before limiting threads

    with threadpool_limits(limits=1):
        for seed in range(seeds):
            for name, method in methods.items():
                per_seed[name].append({"seed": seed, **method(seed)})
    accuracies = {name: [r["test_accuracy"] for r in rows] for name, rows in per_seed.items()}
    summary = {name: _spread(values) for name, values in accuracies.items()}
    config = TrainConfig() if epochs is None else TrainConfig(epochs=epochs)
    mismatches = cli_default_mismatches()
    test_sizes = [int(load_dataset(DATASET, seed).y_test.shape[0]) for seed in range(seeds)]
    return {
        "benchmark": "accuracy",
        "dataset": DATASET,
        "quick": quick,
        "seeds": list(range(seeds)),
        "test_size": test_sizes,
        "ours_config": {k: v for k, v in config.to_dict().items() if k != "seed"},
        "cli_defaults_match": not mismatches,
        "cli_default_mismatches": mismatches,
        "versions": {"numpy": np.__version__, "sklearn": sklearn.__version__,
                     "torch": None if no_torch else __import__("torch").__version__,
                     "python": ".".join(map(str, sys.version_info[:3]))},
        "torch_missing": no_torch,
        "per_seed": per_seed,
        "test_accuracy": summary,
        "ours_minus_sklearn_median": summary["ours"]["median"] - summary["sklearn"]["median"],
        "target_pass": summary["ours"]["median"] >= summary["sklearn"]["median"],
    }


def tune(seeds=TUNE_SEEDS) -> dict[str, Any]:
    """Mean validation accuracy of every TUNE_GRID point over ``seeds`` (never a test split).

    The choice is the cheapest configuration (fewest epochs, then the grid order) whose
    mean is within one standard error of the best mean (the one-standard-error rule:
    differences smaller than that are noise on splits of this size).
    """
    names = list(TUNE_GRID)
    rows = []
    with threadpool_limits(limits=1):
        for values in itertools.product(*TUNE_GRID.values()):
            knobs = dict(zip(names, values))
            scores = []
            for seed in seeds:
                config = TrainConfig(seed=seed, **knobs)
                try:
                    scores.append(fit_and_score(config, load_dataset(DATASET, seed)).value)
                except TrainingDiverged:
                    scores.append(0.0)
            rows.append({**knobs, "val_mean": statistics.fmean(scores),
                         "val_sem": statistics.stdev(scores) / math.sqrt(len(scores)), "val": scores})
    best = max(rows, key=lambda r: r["val_mean"])
    close = [r for r in rows if r["val_mean"] >= best["val_mean"] - best["val_sem"]]
    chosen = min(close, key=lambda r: r["epochs"])
    fixed = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in names and f.name != "seed"}
    return {"benchmark": "accuracy-tune", "dataset": DATASET, "seeds": list(seeds), "grid": TUNE_GRID,
            "fixed": {k: list(v) if isinstance(v, tuple) else v for k, v in fixed.items()},
            "rows": sorted(rows, key=lambda r: -r["val_mean"]), "best": best, "chosen": chosen}


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

LABELS = {"ours": "ours", "sklearn": "MLPClassifier", "torch": "PyTorch (our recipe)"}


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    v = report["versions"]
    console.print(f"{report['dataset']}, seeds {report['seeds']}, test splits of {report['test_size'][0]} images "
                  f"(one image = {1 / report['test_size'][0]:.2%}); "
                  f"numpy {v['numpy']}, scikit-learn {v['sklearn']}, torch {v['torch'] or 'absent'}")
    if report["torch_missing"]:
        console.print(f"[yellow]PyTorch column skipped ({report['torch_missing']})[/yellow]")
    if report["quick"]:
        console.print("[yellow]--quick: 3 epochs for every method; not a result[/yellow]")
    if not report["cli_defaults_match"]:
        console.print(f"[red]hpo train's defaults differ from TrainConfig(): {report['cli_default_mismatches']}[/red]")
    cfg = report["ours_config"]
    console.print(
        f"ours = hpo train with its defaults: hidden {cfg['hidden_sizes']}, {cfg['activation']}, {cfg['initializer']} init, batch norm "
        f"{cfg['batch_norm']}, {cfg['optimizer']} lr {cfg['learning_rate']} x{cfg['lr_decay']}/epoch, "
        f"weight decay {cfg['weight_decay']}, {cfg['epochs']} epochs of batch {cfg['batch_size']}, {cfg['preprocessing']}"
    )

    names = list(report["per_seed"])
    table = Table(title="Test accuracy per seed")
    table.add_column("seed", justify="right")
    for name in names:
        table.add_column(LABELS[name], justify="right")
    for i, seed in enumerate(report["seeds"]):
        table.add_row(str(seed), *(f"{report['per_seed'][n][i]['test_accuracy']:.4f}" for n in names))
    for stat in ("median", "min", "max"):
        table.add_row(stat, *(f"{report['test_accuracy'][n][stat]:.4f}" for n in names), style="bold" if stat == "median" else None)
    console.print(table)
    diff = report["ours_minus_sklearn_median"]
    verdict = "PASS" if report["target_pass"] else "MISS"
    console.print(f"median: ours {report['test_accuracy']['ours']['median']:.4f} vs MLPClassifier "
                  f"{report['test_accuracy']['sklearn']['median']:.4f} ({diff:+.4f}): ours >= MLPClassifier: {verdict}")


def print_tune(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Mean validation accuracy over seeds {report['seeds'][0]}..{report['seeds'][-1]}")
    for column in (*report["grid"], "val mean", "sem"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        table.add_row(*(str(row[k]) for k in report["grid"]), f"{row['val_mean']:.4f}", f"{row['val_sem']:.4f}")
    console.print(table)
    chosen = {k: report["chosen"][k] for k in report["grid"]}
    console.print(f"best {report['best']['val_mean']:.4f}; chosen (fewest epochs within one standard error): {chosen}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds 0..N-1 (default {SEEDS})")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 3 epochs: a smoke run")
    parser.add_argument("--tune", action="store_true", help="rerun the validation search behind the defaults")
    args = parser.parse_args(argv)
    if args.tune:
        report = tune()
        print(json.dumps(report, indent=2)) if args.json else print_tune(report)
        return
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    report = run(2 if args.quick else args.seeds, args.quick)
    print(json.dumps(report, indent=2)) if args.json else print_report(report)


if __name__ == "__main__":
    main()

"""Training speed: this engine against PyTorch (CPU) and scikit-learn's MLPClassifier.

Each shape trains the same network in the three libraries -- hidden layers of 100 and
100 units, batch norm between each hidden affine and its ReLU (MLPClassifier has no batch
norm), Adam at lr 1e-3, no weight decay, softmax cross-entropy, float32 -- on the same
synthetic data (random float32 features, random labels; only the shapes matter for speed),
with the same batch size and the same thread count, and prints the time per epoch.

- **ours**: ``workers.train.train``, the function every trial calls; its epoch time is the
  one ``train`` itself measures and reports (shuffle, minibatch steps, divergence check).
  The diagnostics pass ``train`` runs after each epoch is outside that figure; it is
  timed apart ("extras", ``ours_extras_seconds_per_epoch``).
- **PyTorch**: ``Linear(bias=False) -> BatchNorm1d -> ReLU`` twice, then ``Linear``;
  ``torch.optim.Adam`` (``--torch-adam``, default its fused implementation, the fastest
  here); ``CrossEntropyLoss``.  Each epoch indexes the data tensor with a fresh
  permutation once, then walks it in slices (no DataLoader), reading every loss with
  ``.item()`` as this engine reads its loss for the divergence check.
- **scikit-learn**: ``MLPClassifier(hidden_layer_sizes=(100, 100), solver="adam",
  alpha=0, batch_size=B)``, one ``fit`` call (warm start) per block of epochs, see
  :class:`SklearnMLP`.
- **ours_no_bn** (one thread only): our engine on MLPClassifier's network, without batch
  norm, for a like-for-like ratio against it.

They run interleaved in one process -- a block of epochs of ours, then of PyTorch, then
of scikit-learn, repeated -- after one warm-up block, and the medians over the timed
blocks are compared, so that load from other processes on a shared machine hits all
alike.  Ratios: ``vs_torch`` = our median epoch / PyTorch's (lower is better for us),
``vs_sklearn`` = MLPClassifier's median epoch / ours (how many times faster we are).

Usage::

    python benchmarks/train_speed.py               # 1 thread, a table and PASS/MISS per target
    python benchmarks/train_speed.py --threads 2   # the same thread count for all three
    python benchmarks/train_speed.py --json        # one JSON object with every figure
    python benchmarks/train_speed.py --quick       # a short smoke run (figures are rough)

PyTorch is optional (``pip install -e ".[bench]"``); without it its column is skipped.
If OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set, the report says so: they can select a
slower OpenBLAS kernel; compare with both unset for the one command
(``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train_speed.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: the checkout's root holds benchmarks/ and workers/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from benchmarks.common import torch_missing  # noqa: E402
from workers.train import TrainConfig, train  # noqa: E402

HIDDEN = (100, 100)
LEARNING_RATE = 1e-3
NUM_CLASSES = 10
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass(frozen=True)
class Shape:
    """One benchmark case: input features, batch size, training examples, targets, timing plan."""

    name: str
    features: int
    batch_size: int
    samples: int
    max_vs_torch: float      # our epoch / PyTorch's must be at most this
    min_vs_sklearn: float    # MLPClassifier's epoch / ours must be at least this
    block: int               # epochs per timed block (each library runs a whole block in turn)
    blocks: int              # timed blocks, after one warm-up block
    quick_samples: int
    quick_blocks: int


SHAPES = (
    # CIFAR-10 sized input; 10,000 examples as in the issue.
    Shape("cifar", 3072, 200, 10_000, 0.9, 3.0, block=2, blocks=8, quick_samples=600, quick_blocks=1),
    # digits: the 60% training split of scikit-learn's 1797 images.
    Shape("digits", 64, 64, 1_079, 0.5, 3.0, block=5, blocks=40, quick_samples=1_079, quick_blocks=1),
    # MNIST-1D: 4000 training examples, 20% of them kept for validation.
    Shape("mnist1d", 40, 128, 3_200, 0.5, 3.0, block=5, blocks=25, quick_samples=3_200, quick_blocks=1),
)
TORCH_ADAM = {"fused": {"fused": True}, "foreach": {"foreach": True}, "default": {}}


def synthetic(shape: Shape, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random standard-normal float32 features and uniform labels of ``shape``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, shape.features), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, samples).astype(np.int64)
    return X, y


# ---------------------------------------------------------------------------------------
# The baselines: one object per library; block(k) trains k epochs and returns the seconds
# ---------------------------------------------------------------------------------------

class TorchMLP:
    """The same network in PyTorch, trained with a plain minibatch loop."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, seed: int, adam: str = "fused") -> None:
        import torch
        from torch import nn

        self.torch = torch
        torch.manual_seed(seed)
        d = X.shape[1]
        h1, h2 = HIDDEN
        self.model = nn.Sequential(
            nn.Linear(d, h1, bias=False), nn.BatchNorm1d(h1), nn.ReLU(),
            nn.Linear(h1, h2, bias=False), nn.BatchNorm1d(h2), nn.ReLU(),
            nn.Linear(h2, NUM_CLASSES),
        ).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE, **TORCH_ADAM[adam])
        self.loss_fn = nn.CrossEntropyLoss()
        self.X = torch.from_numpy(X)
        self.y = torch.from_numpy(y)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> None:
        n, batch_size = self.X.shape[0], self.batch_size
        order = self.torch.randperm(n, generator=self.generator)
        X, y = self.X[order], self.y[order]
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            xb, yb = X[start:start + batch_size], y[start:start + batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(xb), yb)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * xb.shape[0]

    def block(self, epochs: int) -> float:
        started = time.perf_counter()
        for _ in range(epochs):
            self.epoch()
        return time.perf_counter() - started


class SklearnMLP:
    """MLPClassifier(100, 100) with Adam; one ``fit`` call (warm start) trains one block.

    ``max_iter`` = the block length, and the no-improvement stop is pushed out of reach
    so that every call trains exactly that many epochs (checked).  A whole block per call
    spreads the per-call input validation over the block, as ``fit`` over many epochs
    does; ``partial_fit`` (one epoch per call) measured 10-18% slower per epoch on the
    small shapes, which would flatter us.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, seed: int, block: int) -> None:
        from sklearn.neural_network import MLPClassifier

        self.model = MLPClassifier(
            hidden_layer_sizes=HIDDEN, solver="adam", learning_rate_init=LEARNING_RATE,
            alpha=0.0, batch_size=batch_size, shuffle=True, random_state=seed,
            max_iter=block, warm_start=True, tol=0.0, n_iter_no_change=10**9,
        )
        self.X, self.y = X, y

    def block(self, epochs: int) -> float:
        assert epochs == self.model.max_iter
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter reached, as intended
            self.model.fit(self.X, self.y)
        elapsed = time.perf_counter() - started
        assert self.model.n_iter_ == epochs, self.model.n_iter_
        return elapsed


class OursWithoutBatchNorm:
    """Our engine on MLPClassifier's network (no batch norm; biases instead), for an
    apples-to-apples figure against it.  One block is a fresh ``train`` run of k epochs;
    its epoch times as ``train`` reports them.  Measured at one thread only: run inside
    the main run's epoch callback, it would find BLAS already taken over."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> None:
        self.X, self.y, self.batch_size, self.seed = X, y, batch_size, seed

    def block(self, epochs: int) -> float:
        config = TrainConfig(
            hidden_sizes=HIDDEN, activation="relu", initializer="he", batch_norm=False,
            optimizer="adam", learning_rate=LEARNING_RATE, weight_decay=0.0, lr_decay=1.0,
            epochs=epochs, batch_size=self.batch_size, dtype="float32", seed=self.seed,
        )
        result = train(config, self.X, self.y, self.X[:0], self.y[:0], num_classes=NUM_CLASSES)
        return sum(result.epoch_seconds)


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------

def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure_shape(
    shape: Shape, *, quick: bool, torch_adam: str | None, threads: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Interleaved blocks of epochs of the three libraries on one shape -> figures and ratios.

    torch_adam: the PyTorch Adam variant (a key of TORCH_ADAM), or None to leave PyTorch out.
    At one thread, our engine without batch norm is timed too ("ours_no_bn").
    """
    samples = shape.quick_samples if quick else shape.samples
    blocks = shape.quick_blocks if quick else shape.blocks
    k = shape.block
    X, y = synthetic(shape, samples, seed)
    baselines: dict[str, Any] = {}
    if torch_adam is not None:
        baselines["torch"] = TorchMLP(X, y, shape.batch_size, seed, torch_adam)
    baselines["sklearn"] = SklearnMLP(X, y, shape.batch_size, seed, k)
    if threads == 1:
        baselines["ours_no_bn"] = OursWithoutBatchNorm(X, y, shape.batch_size, seed)
    per_epoch: dict[str, list[float]] = {"ours": [], **{name: [] for name in baselines}}
    extras: list[float] = []
    ours_block: list[float] = []
    callback_end: list[float] = []

    def after_our_epoch(report) -> None:
        # train() timed its epoch (report.seconds).  The wall time since the previous
        # callback returned, minus that, is its diagnostics + validation pass.
        now = time.perf_counter()
        if callback_end:
            extras.append(now - callback_end[-1] - report.seconds)
        ours_block.append(report.seconds)
        if len(ours_block) == k:
            per_epoch["ours"].append(sum(ours_block) / k)
            ours_block.clear()
            for name, baseline in baselines.items():
                per_epoch[name].append(baseline.block(k) / k)
        callback_end.append(time.perf_counter())

    config = TrainConfig(
        hidden_sizes=HIDDEN, activation="relu", initializer="he", batch_norm=True,
        optimizer="adam", learning_rate=LEARNING_RATE, weight_decay=0.0,
        lr_decay=1.0, epochs=k * (1 + blocks), batch_size=shape.batch_size, dtype="float32", seed=seed,
    )
    train(config, X, y, X[:0], y[:0], on_epoch=after_our_epoch, num_classes=NUM_CLASSES)

    timed = {name: values[1:] for name, values in per_epoch.items()}  # block 0 is the warm-up
    medians = {name: statistics.median(values) for name, values in timed.items()}
    ours = medians["ours"]
    extra = statistics.median(extras[k:]) if len(extras) > k else None
    result: dict[str, Any] = {
        "features": shape.features,
        "hidden": list(HIDDEN),
        "classes": NUM_CLASSES,
        "batch_size": shape.batch_size,
        "samples": samples,
        "steps_per_epoch": -(-samples // shape.batch_size),
        "epochs_per_block": k,
        "warmup_blocks": 1,
        "timed_blocks": blocks,
        "seconds_per_epoch": {
            name: {**_spread(values), "blocks": values} for name, values in timed.items()
        },
        "ours_extras_seconds_per_epoch": extra,
        "targets": {"max_vs_torch": shape.max_vs_torch, "min_vs_sklearn": shape.min_vs_sklearn},
    }
    if "torch" in medians:
        paired = [a / b for a, b in zip(timed["ours"], timed["torch"])]
        result["vs_torch"] = ours / medians["torch"]
        result["vs_torch_blocks"] = _spread(paired)
        result["vs_torch_pass"] = result["vs_torch"] <= shape.max_vs_torch
    else:
        result["vs_torch"] = result["vs_torch_blocks"] = result["vs_torch_pass"] = None
    paired = [b / a for a, b in zip(timed["ours"], timed["sklearn"])]
    result["vs_sklearn"] = medians["sklearn"] / ours
    result["vs_sklearn_blocks"] = _spread(paired)
    result["vs_sklearn_with_extras"] = medians["sklearn"] / (ours + extra) if extra is not None else None
    result["vs_sklearn_pass"] = result["vs_sklearn"] >= shape.min_vs_sklearn
    # the same network as MLPClassifier's: ours without batch norm (one thread only)
    result["vs_sklearn_no_bn"] = (
        medians["sklearn"] / medians["ours_no_bn"] if "ours_no_bn" in medians else None
    )
    return result


def environment(threads: int, torch_missing: str | None) -> dict[str, Any]:
    """Versions, processor, BLAS kernels and the OpenBLAS variables that change them."""
    import sklearn

    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "torch": None,
        "torch_missing": torch_missing,
        "threads": threads,
        "blas": [
            {k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "prefix")}
            for info in threadpool_info() if info.get("user_api") == "blas"
        ],
        "openblas_env": {name: os.environ[name] for name in OPENBLAS_ENV if name in os.environ},
    }
    if torch_missing is None:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(threads: int, quick: bool, shapes: list[str] | None = None, torch_adam: str = "fused") -> dict[str, Any]:
    """Every shape, with ``threads`` threads for all three libraries -> one JSON-ready dict."""
    no_torch = torch_missing()
    if no_torch is None:
        import torch

        torch.set_num_threads(threads)
    # Load every BLAS before limiting threads: threadpool_limits only reaches libraries
    # already loaded (scikit-learn brings SciPy's own OpenBLAS).
    import sklearn.neural_network  # noqa: F401

    results: dict[str, Any] = {}
    with threadpool_limits(limits=threads):
        env = environment(threads, no_torch)
        env["torch_adam"] = torch_adam if no_torch is None else None
        for shape in SHAPES:
            if shapes and shape.name not in shapes:
                continue
            results[shape.name] = measure_shape(
                shape, quick=quick, torch_adam=torch_adam if no_torch is None else None, threads=threads
            )
    return {"benchmark": "train_speed", "quick": quick, "environment": env, "shapes": results}


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "MISS")


def _ratio(value: float | None, blocks: dict[str, float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} [{blocks['min']:.2f}, {blocks['max']:.2f}]"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(110, Console().width))
    env = report["environment"]
    console.print(
        f"Python {env['python']}, numpy {env['numpy']}, scikit-learn {env['sklearn']}, "
        f"torch {env['torch'] or 'absent'}; {env['processor']}, {env['cores']} cores; "
        f"{env['threads']} thread(s) for every library"
    )
    for blas in env["blas"]:
        console.print(f"BLAS: {blas['internal_api']} {blas['version']}, kernel {blas['architecture']} ({blas['prefix']})")
    if env["openblas_env"]:
        console.print(
            f"[yellow]{', '.join(f'{k}={v}' for k, v in env['openblas_env'].items())} set: it can select a "
            "slower OpenBLAS kernel; compare with this command run under "
            "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`[/yellow]"
        )
    if env["torch_missing"]:
        console.print(f"[yellow]PyTorch column skipped ({env['torch_missing']}); "
                      "install it with pip install -e \".[bench]\"[/yellow]")
    if report["quick"]:
        console.print("[yellow]--quick: few epochs, less data; the figures are rough[/yellow]")

    table = Table(title="Milliseconds per epoch (median over timed blocks)")
    for column in ("shape", "batch", "N", "ours", "+diag", "torch", "sklearn", "noBN",
                   "ours/torch", "sk/ours", "sk/noBN"):
        table.add_column(column, justify="left" if column == "shape" else "right")
    for name, r in report["shapes"].items():
        secs = r["seconds_per_epoch"]
        ms = lambda key: "-" if key not in secs else f"{1e3 * secs[key]['median']:.1f}"  # noqa: E731
        extra = r["ours_extras_seconds_per_epoch"]
        table.add_row(
            name, str(r["batch_size"]), str(r["samples"]), ms("ours"),
            "-" if extra is None else f"{1e3 * extra:.1f}", ms("torch"), ms("sklearn"), ms("ours_no_bn"),
            "-" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}", f"{r['vs_sklearn']:.2f}",
            "-" if r["vs_sklearn_no_bn"] is None else f"{r['vs_sklearn_no_bn']:.2f}",
        )
    console.print(table)
    console.print(
        "Shapes D-100-100-10 with batch norm (cifar D=3072, digits 64, mnist1d 40); MLPClassifier "
        "has no batch norm; noBN is our engine on its network (one thread only), sk/noBN its ratio. "
        f"PyTorch Adam: {env['torch_adam'] or '-'}. +diag: our diagnostics pass "
        "after each epoch, outside 'ours' as in the epoch time train() reports. Ratios: median "
        "over median; \\[lowest, highest] ratio of a single block below."
    )
    for name, r in report["shapes"].items():
        t = r["targets"]
        if r["vs_torch"] is None:
            vs_torch = "ours/torch n/a (no PyTorch)"
        else:
            vs_torch = (f"ours/torch {_ratio(r['vs_torch'], r['vs_torch_blocks'])} <= {t['max_vs_torch']}: "
                        f"{_verdict(r['vs_torch_pass'])}")
        console.print(
            f"{name:8s} {vs_torch};  sklearn/ours {_ratio(r['vs_sklearn'], r['vs_sklearn_blocks'])} "
            f">= {t['min_vs_sklearn']:g}: {_verdict(r['vs_sklearn_pass'])}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    parser.add_argument("--quick", action="store_true", help="a short smoke run; rough figures")
    parser.add_argument("--shape", action="append", choices=[s.name for s in SHAPES],
                        help="only this shape (repeatable); default all")
    parser.add_argument("--torch-adam", choices=list(TORCH_ADAM), default="fused",
                        help="PyTorch Adam implementation (default fused, its fastest on CPU here)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    report = run(args.threads, args.quick, args.shape, args.torch_adam)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()

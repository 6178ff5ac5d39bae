"""What the orchestration benchmarks share: a stub trainer, throwaway databases, tables.

The stub trainer has ``workers.run.fit_and_score``'s signature and result, and is handed to
the real worker loop (``Worker(options, trainer=stub_trainer)``) so that everything around
training -- sampling, storage round trips, pruning checks -- runs as it does in production
while the training itself takes microseconds. Its learning curve is a deterministic function
of the configuration (a best learning rate near 3e-3, ReLU-like activations and He
initialization a little better, batch norm a little better and forgiving of the
initializer, a learning rate far above 1 diverging), with noise from the trial seed, so TPE
has something to learn and the median pruner something to prune. Its diagnostics and
histograms have the shape and size of real ones, so the trials it leaves in storage weigh
what real trials weigh.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/NAME.py`
    sys.path.insert(0, str(ROOT))

from workers.nn.model import NetworkSpec  # noqa: E402
from workers.run import Score  # noqa: E402
from workers.train import EpochReport, TrainConfig, TrainingDiverged, TrainResult  # noqa: E402

ADMIN_URL = os.environ.get("HPO_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN_URL = os.environ.get("HPO_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")

_ACTIVATION = {"relu": 1.0, "leaky_relu": 1.0, "elu": 0.99, "maxout": 0.99, "tanh": 0.96, "sigmoid": 0.88}
_INIT = {"he": 1.0, "xavier": 0.985, "small": 0.9}


def stub_quality(config: TrainConfig) -> float:
    """Final validation accuracy the stub reaches with ``config`` (0.1: a guess, ~0.97: best)."""
    lr_term = math.exp(-(((math.log10(config.learning_rate) + 2.5) / 1.3) ** 2))
    init = _INIT.get(config.initializer, 0.95)
    if config.batch_norm:
        init = 1.0 - (1.0 - init) / 3  # batch norm forgives a poor initializer
    bn = 1.0 if config.batch_norm else 0.975
    return 0.1 + 0.87 * lr_term * _ACTIVATION.get(config.activation, 0.95) * init * bn


def stub_trainer(config: TrainConfig, dataset: Any = None, *, cv: int = 0, on_epoch=None,
                 sleep: float = 0.0) -> Score:
    """A training run that takes no time: ``fit_and_score``'s contract, a plausible curve (with
    ``cv``, the curve stands for the folds' mean and every fold scores its last value).

    ``sleep`` seconds per epoch stand in for training time where a benchmark needs some.
    """
    rng = np.random.default_rng(config.seed)
    final = stub_quality(config)
    tau = 0.6 + 2.5 * max(0.0, -2.5 - math.log10(config.learning_rate))  # small steps learn slowly
    layers = list(config.hidden_sizes)
    history: list[EpochReport] = []
    diagnostics: dict[str, Any] = {}
    for epoch in range(1, config.epochs + 1):
        if sleep:
            time.sleep(sleep)
        if config.learning_rate > 2.0 and not config.batch_norm:
            raise TrainingDiverged(epoch, 3, float("inf"), 2.3, "non-finite")
        acc = 0.1 + (final - 0.1) * (1.0 - math.exp(-epoch / tau)) + float(rng.normal(0, 0.004))
        acc = min(max(acc, 0.0), 1.0)
        loss = max(0.02, 2.3 * (1.0 - acc) + float(rng.normal(0, 0.01)))
        diagnostics = {
            "probe_size": 256,
            "layers": [
                {"layer": i + 1, "units": units, "activation_mean": float(rng.random()),
                 "activation_std": float(rng.random()), "dead_fraction": float(rng.random() / 10),
                 "saturation_fraction": float(rng.random() / 100), "grad_norm": float(rng.random()),
                 "update_ratio": float(rng.random() / 100)}
                for i, units in enumerate(layers)
            ],
            "output_layer": {"grad_norm": float(rng.random()), "update_ratio": float(rng.random() / 100)},
        }
        report = EpochReport(epoch=epoch, train_loss=loss, val_accuracy=acc, seconds=0.0,
                             lr=config.learning_rate, diagnostics=diagnostics)
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
    histograms = [
        {"layer": i + 1, "edges": [round(float(x), 6) for x in np.linspace(-1, 1, 21)],
         "counts": [int(c) for c in rng.integers(0, 256 * units // 20, 20)]}
        for i, units in enumerate(layers)
    ]
    val = history[-1].val_accuracy if history else 0.1
    spec = NetworkSpec(input_dim=64, hidden_sizes=tuple(layers), num_classes=10,
                       activation=config.activation, batch_norm=config.batch_norm)
    result = TrainResult(
        config=config, history=history, params={}, bn_state={}, train_accuracy=min(1.0, val + 0.02),
        val_accuracy=val, epoch_seconds=[0.0] * len(history), diagnostics=diagnostics,
        histograms=histograms, spec=spec, initial_loss=2.3,
    )
    return Score(value=val, result=result, fold_values=[val] * cv)


# -- databases -----------------------------------------------------------------------------
# The database servers a benchmark can measure on: admin URL, and how a database is created and
# dropped there (a throwaway one per measurement).
SERVERS = {
    "postgres": (ADMIN_URL, 'CREATE DATABASE "{name}"', 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'),
    "mariadb": (MARIADB_ADMIN_URL, "CREATE DATABASE `{name}` CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS `{name}`"),
}


def server_available(backend_name: str = "postgres") -> bool:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(SERVERS[backend_name][0], connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means no server (or no driver)
        return False


@contextlib.contextmanager
def server_database(backend_name: str = "postgres", prefix: str = "hpo_bench") -> Iterator[str]:
    """A new, empty database on the server of ``backend_name`` for the duration of the block;
    dropped afterwards."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    admin_url, create, drop = SERVERS[backend_name]
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(create.format(name=name)))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(drop.format(name=name)))
    finally:
        admin.dispose()


def postgres_available() -> bool:
    return server_available("postgres")


def postgres_database(prefix: str = "hpo_bench") -> contextlib.AbstractContextManager[str]:
    """A new, empty PostgreSQL database for the duration of the block; dropped afterwards."""
    return server_database("postgres", prefix)


@contextlib.contextmanager
def sqlite_database(folder: Path, name: str) -> Iterator[str]:
    path = folder / f"{name}.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")


# -- counting SQL statements -----------------------------------------------------------------
@contextlib.contextmanager
def database(backend_name: str, folder: Path, name: str, prefix: str = "hpo_bench") -> Iterator[str]:
    """A fresh database: ``postgres`` or ``mariadb`` (a throwaway one, see
    :func:`server_database`) or a SQLite file ``name`` in ``folder``."""
    if backend_name in SERVERS:
        with server_database(backend_name, prefix) as url:
            yield url
    else:
        with sqlite_database(folder, name) as url:
            yield url


def ms(seconds: float | None) -> float | None:
    """Seconds -> milliseconds, rounded for a table (None stays None)."""
    return None if seconds is None else round(1000 * seconds, 2)


def torch_missing() -> str | None:
    """None if PyTorch can be imported, else the reason it cannot (its column is left out)."""
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "no torch column"
        return f"{type(e).__name__}: {e}"
    return None


class StatementCounter:
    """Counts the SQL statements every engine of this process sends while it is installed."""

    def __init__(self) -> None:
        self.count = 0

    def _on_execute(self, *args: Any) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc: Any) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self._on_execute)


# -- output ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import optuna

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "optuna": optuna.__version__,
    }


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return float(np.percentile(np.asarray(xs, dtype=float), q))


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    table = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print()


def dump_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=str))

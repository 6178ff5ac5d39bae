"""Diverged trials are counted apart from pruned ones: Optuna stores both as PRUNED, so with
``--pruner none`` every "pruned" trial used to be one whose training blew up. The counts
(storage.records.count_outcomes), `hpo studies` and `hpo health` say "pruned" for the pruner's
decisions and "diverged" for the blow-ups. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpo import output
from hpo.cli import cli
from storage import backend, records
from workers.train import TrainingDiverged

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

DIVERGED = str(TrainingDiverged(3, 12, 7.2, 2.3, "exceeded"))  # the message a worker stores as the reason


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setattr(output.out, "width", 250)


def build(url: str, name: str = "mixed"):
    """2 complete, 1 pruned by the pruner, 3 diverged (two by their reason, one by the
    ``diverged`` attr), 1 failed and 1 running; plus trials that only look diverged."""
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    x = {"x": FloatDistribution(0, 1)}

    def trial(state: TrialState | None, **attrs) -> None:
        t = study.ask(x)
        for key, value in attrs.items():
            t.set_user_attr(key, value)
        if state is not None:
            study.tell(t, 0.5 if state == TrialState.COMPLETE else None, state=state)

    trial(TrialState.COMPLETE, worker="w1")
    trial(TrialState.COMPLETE, worker="w2")
    trial(TrialState.PRUNED, worker="w1", reason="pruned at step 2: 0.1000 below the median")
    trial(TrialState.PRUNED, worker="w1", reason=DIVERGED)
    trial(TrialState.PRUNED, worker="w2", reason=DIVERGED.replace("epoch 3", "epoch 1"))
    trial(TrialState.PRUNED, worker="w2", reason="loss is nan", diverged=True)
    trial(TrialState.FAIL, worker="w1", reason=DIVERGED)  # failed, whatever its reason says
    trial(None, worker="w2")
    return storage


def test_count_outcomes_counts_diverged_apart_from_pruned_in_one_query(storage_url):
    storage = build(storage_url)
    extra = optuna.create_study(storage=storage, study_name="looks-diverged", direction="maximize")
    for reason in ("not diverged at epoch 3", 3, ["diverged at epoch 1"]):  # not a reason that starts so
        t = extra.ask({"x": FloatDistribution(0, 1)})
        t.set_user_attr("reason", reason)
        extra.tell(t, state=TrialState.PRUNED)
    expected = {"COMPLETE": 2, "PRUNED": 1, "DIVERGED": 3, "FAIL": 1, "RUNNING": 1}
    assert records.count_outcomes(storage, "mixed") == expected
    assert records.count_outcomes(storage, "looks-diverged") == {"PRUNED": 3}

    statements: list[str] = []
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    by_study = records.count_outcomes_by_study(storage)
    assert len(statements) == 1, statements
    assert by_study[storage.get_study_id_from_name("mixed")] == expected


def test_studies_and_health_show_diverged_apart_from_pruned(storage_url):
    build(storage_url)
    runner = CliRunner()
    table = runner.invoke(cli, ["studies", "--storage", storage_url], catch_exceptions=False).stdout
    header = next(line for line in table.splitlines() if "study" in line and "pruned" in line)
    row = next(line for line in table.splitlines() if "mixed" in line)
    cells = dict(zip([c.strip() for c in header.split("┃")], [c.strip() for c in row.split("│")]))
    assert (cells["complete"], cells["pruned"], cells["diverged"], cells["fail"], cells["running"]) == ("2", "1", "3", "1", "1")
    rows = json.loads(runner.invoke(cli, ["studies", "--format", "json", "--storage", storage_url]).stdout)
    assert {k: rows[0][k] for k in ("complete", "pruned", "diverged", "fail")} == {"complete": 2, "pruned": 1, "diverged": 3, "fail": 1}

    health = runner.invoke(cli, ["health", "mixed", "--storage", storage_url], catch_exceptions=False).stdout
    assert health.startswith("mixed: 2 complete, 1 pruned, 3 diverged, 1 fail, 1 running, 0 waiting")
    report = json.loads(runner.invoke(cli, ["health", "mixed", "--format", "json", "--storage", storage_url]).stdout)
    assert report["counts"] == {"COMPLETE": 2, "PRUNED": 1, "DIVERGED": 3, "FAIL": 1, "RUNNING": 1, "WAITING": 0}
    workers = {w["worker"]: w for w in report["workers"]}
    assert (workers["w1"]["pruned"], workers["w1"]["diverged"], workers["w2"]["pruned"], workers["w2"]["diverged"]) == (1, 1, 0, 2)


@pytest.mark.slow
def test_a_search_without_a_pruner_shows_no_pruned_trials_only_diverged_ones(tmp_path):
    """`--pruner none`: nothing is pruned; a learning rate of 100 diverges and says so."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    env = {**os.environ, "HPO_STORAGE": url, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    search = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "d", "--workers", "1", "--stages", "1", "--trials", "8",
         "--epochs", "1", "--pruner", "none", "--sampler", "random", "--seed", "1", "--param", "learning_rate=0.01,100",
         "--param", "activation=relu", "--param", "initializer=he", "--param", "hidden_sizes=32", "--param", "batch_size=64"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert search.returncode == 0, search.stderr[-3000:]
    row = json.loads(CliRunner().invoke(cli, ["studies", "--format", "json", "--storage", url]).stdout)[0]
    assert row["pruned"] == 0 and row["diverged"] >= 1 and row["complete"] >= 1, row
    assert row["complete"] + row["diverged"] == 8

"""The `hpo` command as a user meets it: help, train, search end to end, narrow, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import click
import optuna
import pytest
from click.testing import CliRunner

from hpo.cli import cli, main  # noqa: F401
from storage import backend
from tests.helpers import duplicate_trial_numbers, make_stage, sql, states
from workers import stageplan
from workers.space import SearchSpace


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def all_commands(group: click.Group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_each_command_is_listed_once_with_the_module_that_holds_it():
    """hpo/cli.py names each command's module, so that running one imports only that module: a
    command a module defines but the table does not name would be missing from `hpo`."""
    import importlib

    from hpo.cli import COMMAND_MODULES

    defined = {command.name: module for module in set(COMMAND_MODULES.values())
               for command in importlib.import_module(module).COMMANDS}
    assert defined == COMMAND_MODULES


def test_a_command_that_reads_does_not_load_the_training_code(tmp_path):
    """`hpo studies` and `hpo trials` answer without importing the campaign, the network or the
    report (imports were about half of their time)."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    script = (
        "import sys\n"
        "from hpo.cli import main\n"
        f"sys.argv = ['hpo', 'init', '--storage', {url!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    for command in ("studies", "trials x", "health x", "trial x 0"):
        probe = (
            "import sys\n"
            "from hpo.cli import cli\n"
            "try:\n"
            f"    cli.main({command.split()!r} + ['--storage', {url!r}], prog_name='hpo')\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = [m for m in ('hpo.campaign', 'hpo.narrow', 'hpo.report', 'workers.train', 'workers.worker', 'plotly', 'sklearn')"
            " if m in sys.modules]\n"
            "print(heavy)\n"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip().splitlines()[-1] == "[]", (command, done.stdout, done.stderr)


def test_a_worker_loads_the_training_code_but_not_the_campaign_or_the_display(tmp_path):
    """A local worker's start is on the path of every `hpo search`: it trains and stores, and
    needs neither the campaign, the narrowing, the progress display nor the report."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    probe = (
        "import sys\n"
        "from hpo.cli import cli\n"
        "try:\n"
        f"    cli.main(['worker', '--campaign', 'none', '--wait', '0', '--storage', {url!r}], prog_name='hpo')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('workers.worker', 'hpo.campaign', 'hpo.narrow', 'hpo.progress', 'hpo.report', 'plotly')"
        " if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "['workers.worker']", (done.stdout, done.stderr)


def test_every_command_has_help_with_an_example():
    names = list(all_commands(cli))
    assert {"train", "search", "worker", "launch", "narrow", "init", "studies", "trials", "trial", "best", "health", "fail-stale"} <= {n[0] for n in names}
    for name in names:
        result = run(*name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"hpo {' '.join(name)} --help has no example"


# -- train -----------------------------------------------------------------------------------
def test_train_json_has_the_figures_a_user_reads():
    result = CliRunner().invoke(cli, ["train", "--epochs", "5", "--hidden", "64", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "epochs", "epoch_seconds", "diagnostics"):
        assert key in data
    assert data["epochs"] == 5 and len(data["epoch_seconds"]) == 5
    assert data["test_accuracy"] > 0.8
    assert data["diagnostics"]["layers"][0]["units"] == 64


def test_train_is_reproducible_from_the_command_line():
    args = ["train", "--epochs", "2", "--hidden", "32", "--seed", "7", "--json"]
    first, second = (json.loads(CliRunner().invoke(cli, args).stdout) for _ in range(2))
    assert first["val_accuracy"] == second["val_accuracy"]
    assert first["history"][-1]["train_loss"] == second["history"][-1]["train_loss"]


def test_train_reports_divergence_as_such():
    result = CliRunner().invoke(cli, ["train", "--lr", "1000", "--optimizer", "sgd", "--no-batch-norm", "--epochs", "3"])
    assert result.exit_code == 1
    assert "diverged at epoch" in result.output


# -- bad input: one line, exit 2, nothing written ----------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--param", "lr=log:0..1"], "above 0"),
        (["search", "--param", "lr=log:1e-2..1e-4"], "lr=log:1e-2..1e-4"),
        (["search", "--param", "activation=swish"], "swish"),
        (["search", "--param", "activation="], "activation"),
        (["search", "--trials", "10,5", "--stages", "3"], "--trials has 2 values for 3 stages"),
        (["search", "--dataset", "npz:/nonexistent/data.npz"], "data.npz"),
        (["search", "--dataset", "imagenet"], "imagenet"),
        (["search", "--name", "bad name"], "invalid campaign name"),
        (["train", "--hidden", "0"], "each layer width must be an integer >= 1"),
        (["worker"], "exactly one of --campaign"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    db = tmp_path / "hpo.db"
    result = CliRunner().invoke(cli, [*args, "--storage", f"sqlite:///{db}"] if args[0] in ("search", "worker") else args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not db.exists(), "nothing may be written on bad input"


def test_unreachable_database_is_one_line_exit_2_without_password():
    result = CliRunner().invoke(cli, ["studies", "--storage", "postgresql://hpo:hunter2@127.0.0.1:1/hpo"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "hunter2" not in result.output and "127.0.0.1:1" in result.output


def test_bad_space_file_names_the_file(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text("[params.learning_rate\nlow = 1")
    result = CliRunner().invoke(cli, ["search", "--space", str(space), "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2 and "space.toml" in result.output


# -- search end to end, as a subprocess -------------------------------------------------------
@pytest.mark.slow
def test_search_runs_a_whole_campaign_and_ends_with_json(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    process = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "e2e", "--stages", "2", "--trials", "10,6",
         "--epochs", "1,4", "--workers", "2", "--storage", url, "--json",
         "--param", "hidden_sizes=64", "--param", "lr=log:1e-4..1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # the report and the model are written there
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads(process.stdout)
    assert [s["study"] for s in summary["stages"]] == ["e2e/stage-1", "e2e/stage-2"]
    for stage, budget in zip(summary["stages"], (10, 6)):
        counts = stage["counts"]
        # a diverged trial (lr up to 1) meets the budget too; the summary counts it apart
        assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) + counts.get("DIVERGED", 0) == budget
        assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0
        assert stage["best_value"] > 0.5
    assert summary["stages"][1]["epochs"] == 4
    best = summary["best"]
    assert best["test_accuracy"] > 0.85 and best["config"]["epochs"] == 4
    assert summary["model"] == "e2e-best.npz" and (tmp_path / "e2e-best.npz").is_file()
    assert set(best["params"]) >= {"learning_rate", "activation", "initializer", "batch_norm"}
    assert duplicate_trial_numbers(url) == []
    # The lineage a user can inspect: stage 2 knows its parent and what changed.
    storage = backend.open_storage(url, heartbeat=False)
    lineage = stageplan.read_plan(storage, "e2e/stage-2").lineage
    assert lineage["parent"] == "e2e/stage-1" and lineage["source_trials"]
    # A finished campaign resumed by name does nothing again and reports the same stages.
    again = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "e2e", "--stages", "2", "--trials", "10,6",
         "--epochs", "1,4", "--workers", "1", "--storage", url, "--json", "--param", "hidden_sizes=64",
         "--param", "lr=log:1e-4..1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert states(url, "e2e/stage-1") == states(url, "e2e/stage-1")
    assert sum(states(url, "e2e/stage-2").values()) == sum(s["counts"].get(k, 0) for s in summary["stages"][1:] for k in s["counts"])


# -- narrow, step by step ---------------------------------------------------------------------
def test_narrow_creates_the_next_stage_and_explains_each_change(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage, plan = make_stage(url, "steps", trials=12, params=["lr=log:1e-6..10", "activation=relu,tanh,sigmoid"])
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    space = SearchSpace.from_dict(plan.space)
    for i in range(12):
        lr = 10 ** (-6 + 7 * i / 11)
        activation = ["relu", "tanh", "sigmoid"][i % 3]
        study.enqueue_trial({"learning_rate": lr, "activation": activation})
        trial = study.ask(space.to_distributions())
        # relu beats the others at any learning rate; the best sit around lr 1e-3
        study.tell(trial, (0.5 if activation == "relu" else 0.0) + 0.4 * math.exp(-((math.log10(lr) + 3) ** 2)))
    result = run("narrow", "steps/stage-1", "--storage", url, "--format", "json", "--epochs", "5", "--keep-choices", "1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["study"] == "steps/stage-2" and data["created"] and data["epochs"] == 5
    changes = {c["param"]: c for c in data["changes"]}
    assert changes["activation"]["new"] == "{relu}"  # each tried 4 times: enough to drop tanh and sigmoid
    assert [(c["choice"], c["trials"], c["kept"]) for c in changes["activation"]["choices"]] == [
        ("relu", 4, True), ("tanh", 4, False), ("sigmoid", 4, False)]
    assert changes["learning_rate"]["reason"]
    child = stageplan.read_plan(storage, "steps/stage-2")
    assert child.lineage["parent"] == "steps/stage-1"
    # the parent's best configuration is queued first in the new stage
    assert states(url, "steps/stage-2") == {"WAITING": 1}
    # and a second narrow into the same stage is refused, one line, exit 2
    again = run("narrow", "steps/stage-1", "--storage", url)
    assert again.exit_code == 2 and "exists already" in again.output


def test_narrow_dry_run_writes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage, plan = make_stage(url, "dry", trials=4)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    for value in (0.1, 0.5, 0.7, 0.9):
        trial = study.ask(SearchSpace.from_dict(plan.space).to_distributions())
        study.tell(trial, value)
    before = sql(url, "SELECT COUNT(*) FROM studies")
    result = run("narrow", "dry/stage-1", "--storage", url, "--dry-run")
    assert result.exit_code == 0, result.output
    assert sql(url, "SELECT COUNT(*) FROM studies") == before


def test_a_ctrl_c_that_reaches_a_compiled_module_while_it_loads_is_a_stop():
    """pybind11 modules (SciPy's, loaded with a dataset) turn a Ctrl-C during their import into
    ImportError("initialization failed") raised from the KeyboardInterrupt: still a stop."""
    from hpo import stopped_by_signal

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as stop:
            raise ImportError("initialization failed") from stop
    except ImportError as e:
        assert stopped_by_signal(e)
    assert not stopped_by_signal(ImportError("No module named 'mnist1d'"))
    assert stopped_by_signal(KeyboardInterrupt())


@pytest.mark.parametrize("command, status", [("worker", 0), ("search", 130), ("studies", 130)])
def test_a_ctrl_c_while_a_command_module_loads_ends_as_that_command_ends(command, status):
    """Each command's module is imported when the command runs: a Ctrl-C during that import is
    the command's stop (a worker that took no trial exits 0, any other command 130), one line."""
    script = (
        "import sys\n"
        "from hpo import cli, main\n"
        "def interrupted(name):\n"
        "    raise KeyboardInterrupt\n"
        "cli.importlib.import_module = interrupted\n"
        f"sys.argv = ['hpo', {command!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (status, "interrupted\n")


def test_a_search_on_sqlite_leaves_the_whole_campaign_in_the_database_file(tmp_path):
    """SQLite keeps new writes in a write-ahead log beside the file until the last connection
    closes; a finished search (coordinator and worker alike) must close theirs, so that the
    .db file alone, copied or backed up, holds the campaign."""
    import shutil
    import sqlite3

    done = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "whole", "--stages", "1", "--trials", "2", "--epochs", "1",
         "--workers", "1", "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    wal = tmp_path / "hpo.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the campaign was left in the write-ahead log"
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "hpo.db", tmp_path / "copy" / "hpo.db")
    copied = sqlite3.connect(tmp_path / "copy" / "hpo.db")
    try:
        assert copied.execute("SELECT study_name FROM studies").fetchall() == [("whole/stage-1",)]
        assert copied.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] >= 2
    finally:
        copied.close()


def test_a_process_that_wrote_through_the_storage_leaves_its_writes_in_the_database_file(tmp_path):
    """The rule behind the test above, made deterministic: a process that exits as hpo's
    commands do (its objects left to the end, gc.freeze) still closes every engine the storage
    layer opened, so its writes are in the .db file, not in a write-ahead log beside it."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    backend.ensure_schema(url)
    script = (
        "import gc, optuna\n"
        "from storage import backend\n"
        f"storage = backend.open_storage({url!r}, heartbeat=False)\n"
        "optuna.create_study(study_name='written', storage=storage).enqueue_trial({'x': 1})\n"
        "gc.freeze()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    wal = tmp_path / "hpo.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the writes were left in the write-ahead log"

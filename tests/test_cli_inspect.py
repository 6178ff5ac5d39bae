"""The inspection commands through click's CliRunner, as a user runs them: tables, JSON, CSV,
one-line errors with exit status 2, and a database left as it was. SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import optuna
import pytest
from click.testing import CliRunner

import hpo.cli_inspect  # noqa: F401 - registers the commands on the group
from hpo import inspect, output
from hpo.cli import cli
from storage import backend
from tests.test_inspect import (  # noqa: F401 - fixtures and builders shared with the library tests
    DIVERGED,
    backdate_heartbeat,
    build_campaign,
    build_running,
    campaign_db,
    db,
    new_sqlite_url,
    pg_test_url,
    snapshot,
    sqlite_template,
    stage2,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

COMMANDS = ["studies", "trials", "trial", "best", "health", "fail-stale"]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """Tables as wide as a desktop terminal, so names are not folded across lines."""
    monkeypatch.setattr(output.out, "width", 250)


def hpo(url: str | None, *args: str):
    result = CliRunner().invoke(cli, [*args, *(["--storage", url] if url else [])], catch_exceptions=False)
    return result


def one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- help ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_every_inspection_command_has_help_with_an_example(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"hpo {command} " in result.output
    assert "--storage" in result.output and "--format" in result.output


def test_every_command_of_hpo_has_help_text():
    for name, command in cli.commands.items():
        assert (command.help or "").strip(), f"hpo {name} has no help"


# -- hpo studies ---------------------------------------------------------------------------
def test_studies_as_table_json_and_csv(campaign_db):
    table = hpo(campaign_db.url, "studies")
    assert table.exit_code == 0
    assert f"{campaign_db.name}/stage-2" in table.stdout and f"{campaign_db.name}-plain" in table.stdout
    line = next(li for li in table.stdout.splitlines() if f"{campaign_db.name}/stage-2" in li)
    assert "2/2" in line and "0.95" in line and "0.94" in line

    rows = json.loads(hpo(campaign_db.url, "studies", "--format", "json").stdout)
    mine = {r["study"]: r for r in rows if r["study"].startswith(campaign_db.name)}
    assert all(list(r) == list(inspect.STUDY_KEYS) for r in rows)
    assert mine[stage2(campaign_db)]["running"] == 1 and mine[stage2(campaign_db)]["budget"] == 6

    text = hpo(campaign_db.url, "studies", "--format", "csv").stdout
    records = list(csv.reader(io.StringIO(text)))
    assert records[0] == list(inspect.STUDY_KEYS)
    assert any(r[0] == f"{campaign_db.name}-plain" for r in records[1:])


def assert_readable_at_80_columns(text: str, names: list[str]) -> None:
    """Every study name whole on a line of its own, and no line past 80 but the title (which
    holds the storage URL) and the names."""
    title, *lines = text.splitlines()
    assert title.startswith("Studies in ")
    for name in names:
        assert name in lines, f"{name!r} is not whole on one line:\n{text}"
    assert all(len(line) <= 80 for line in lines if line not in names), text


def test_studies_at_80_columns_keep_every_name_whole(db, monkeypatch):  # noqa: F811 - a fixture
    monkeypatch.setattr(output.out, "width", 80)
    campaign = f"{db.name}-digits-20261127-101500"  # as long as a default campaign name, and then some
    build_campaign(db.storage, campaign)
    names = [r["study"] for r in inspect.list_studies(db.storage)]
    text = hpo(db.url, "studies").stdout
    assert_readable_at_80_columns(text, names)
    after = text.splitlines()[text.splitlines().index(f"{campaign}/stage-2") + 1:]
    figures = " ".join(after[:3])
    assert "stage 2/2" in figures and "running 1" in figures and "waiting 1" in figures and "test_accuracy 0.94" in figures

    monkeypatch.setattr(output.out, "width", 250)  # wide enough: the table, a row per study
    table = hpo(db.url, "studies").stdout
    assert all(any(name in line and "│" in line for line in table.splitlines()) for name in names), table


def test_studies_piped_at_80_columns_keep_every_name_whole(sqlite_template, tmp_path):  # noqa: F811 - a fixture
    url = new_sqlite_url(sqlite_template, tmp_path)
    storage = backend.open_storage(url)
    build_campaign(storage, "digits-20261127-101500")
    names = [r["study"] for r in inspect.list_studies(storage)]
    storage.engine.dispose()
    result = subprocess.run([sys.executable, "-m", "hpo", "studies", "--storage", url], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "80"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert_readable_at_80_columns(result.stdout, names)


def test_studies_on_an_empty_storage(sqlite_template, tmp_path):
    url = new_sqlite_url(sqlite_template, tmp_path)
    assert json.loads(hpo(url, "studies", "--format", "json").stdout) == []
    assert hpo(url, "studies", "--format", "csv").stdout.splitlines() == [",".join(inspect.STUDY_KEYS)]
    result = hpo(url, "studies")
    assert result.exit_code == 0 and result.stdout == "" and f"no studies in {url}" in result.stderr


# -- hpo trials ----------------------------------------------------------------------------
def test_trials_filter_sort_limit_in_every_format(campaign_db):
    args = ["trials", campaign_db.name, "--where", "activation=relu", "--where", "learning_rate>1e-3", "--sort", "-learning_rate"]
    rows = json.loads(hpo(campaign_db.url, *args, "--format", "json").stdout)
    assert [r["number"] for r in rows] == [2, 6, 0]
    assert list(rows[0]) == ["number", "state", "value", "learning_rate", "activation", "duration", "worker", "reason"]
    assert rows[0]["reason"] == DIVERGED

    text = hpo(campaign_db.url, *args, "--limit", "2", "--columns", "number,state,seed", "--format", "csv").stdout
    assert text.splitlines() == ["number,state,seed", f"2,PRUNED,{2 * 7919 + 11}", "6,WAITING,"]

    table = hpo(campaign_db.url, "trials", stage2(campaign_db), "--state", "complete", "--sort", "-value")
    assert table.exit_code == 0
    assert f"{stage2(campaign_db)}: 3 of 3 trials" in table.stdout
    numbers = [li.split("│")[1].strip() for li in table.stdout.splitlines() if li.startswith("│")]
    assert numbers == ["4", "0", "1"]


def test_a_where_value_is_a_literal_and_the_database_is_unchanged(campaign_db):
    before = snapshot(campaign_db.storage, campaign_db.name)
    result = hpo(campaign_db.url, "trials", campaign_db.name, "--where", "activation=relu' OR '1'='1", "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert snapshot(campaign_db.storage, campaign_db.name) == before


@pytest.mark.parametrize(("args", "message"), [
    (["--where", "colour=red"], "Error: unknown column 'colour'; columns are: number, state, value, learning_rate, activation"),
    (["--where", "learning_rate~1"], "Error: bad filter 'learning_rate~1'"),
    (["--where", "learning_rate>big"], "Error: bad filter 'learning_rate>big': '>' needs a number"),
    (["--sort", "colour"], "Error: unknown column 'colour'"),
    (["--columns", "number,,colour"], "Error: unknown column 'colour'"),
    (["--state", "finished"], "Error: unknown state 'finished'"),
])
def test_bad_trials_options_are_one_line_exit_2_and_change_nothing(campaign_db, args, message):
    before = snapshot(campaign_db.storage, campaign_db.name)
    line = one_line_error(hpo(campaign_db.url, "trials", campaign_db.name, *args))
    assert line.startswith(message)
    assert snapshot(campaign_db.storage, campaign_db.name) == before


# -- hpo trial -----------------------------------------------------------------------------
def test_trial_shows_curve_diagnostics_seed_timings_worker(campaign_db):
    result = hpo(campaign_db.url, "trial", stage2(campaign_db), "0")
    assert result.exit_code == 0
    text = result.stdout
    for expected in ("trial 0", "Parameters", "learning_rate", "Learning curve", "val_accuracy", "train_loss",
                     "Per hidden layer", "dead_fraction", "update_ratio", "seed", "11", "w1", "train_seconds"):
        assert expected in text, expected
    pruned = hpo(campaign_db.url, "trial", campaign_db.name, "2").stdout
    assert DIVERGED in pruned and "7.2" in pruned


def test_trial_json_is_the_whole_record(campaign_db):
    record = json.loads(hpo(campaign_db.url, "trial", campaign_db.name, "0", "--format", "json").stdout)
    assert list(record) == [
        "study", "number", "state", "value", "params", "datetime_start", "datetime_complete", "duration_seconds",
        "heartbeat_age_seconds", "intermediate_values", "user_attrs", "system_attrs", "retry"]
    attrs = record["user_attrs"]
    assert attrs["curve"]["val_accuracy"][-1] == 0.91 and attrs["diagnostics"]["layers"][0]["dead_fraction"] == 0.12
    assert attrs["config"]["hidden_sizes"] == [100, 100] and record["retry"] == {"retry_of": None, "history": [], "retried_as": []}


def test_a_missing_trial_number_is_one_line(campaign_db):
    assert one_line_error(hpo(campaign_db.url, "trial", campaign_db.name, "42")).startswith("Error: no trial 42 in")
    negative = hpo(campaign_db.url, "trial", campaign_db.name, "--", "-1")
    assert negative.exit_code == 2 and "-1 is not in the range x>=0" in negative.stderr


# -- hpo best ------------------------------------------------------------------------------
def test_best_of_a_campaign_shows_its_final_result(campaign_db):
    table = hpo(campaign_db.url, "best", campaign_db.name, "--top", "2")
    assert table.exit_code == 0
    assert "Best 2 complete trials" in table.stdout and f"Final result of campaign {campaign_db.name}" in table.stdout
    assert "test_accuracy" in table.stdout and "0.94" in table.stdout

    result = json.loads(hpo(campaign_db.url, "best", campaign_db.name, "--format", "json").stdout)
    assert list(result) == ["study", "campaign", "direction", "trials", "final"]
    assert [t["number"] for t in result["trials"]] == [4, 0, 1]
    assert list(result["trials"][0]) == ["rank", "number", "value", "params", "seed", "train_accuracy"]
    assert result["final"]["test_accuracy"] == 0.94

    text = hpo(campaign_db.url, "best", stage2(campaign_db), "--top", "1", "--format", "csv").stdout
    assert text.splitlines()[0] == "rank,number,value,learning_rate,activation,seed,train_accuracy"
    assert text.splitlines()[1].startswith("1,4,0.95,0.001,relu,")
    assert "Final result" not in hpo(campaign_db.url, "best", stage2(campaign_db)).stdout


# -- hpo health / fail-stale ---------------------------------------------------------------
def test_health_shows_heartbeat_ages_and_flags_a_stale_trial(db):
    study, running = build_running(db)
    backdate_heartbeat(db.storage, running[1]._trial_id, 600)
    result = hpo(db.url, "health", study.study_name)
    assert result.exit_code == 0
    text = result.stdout
    assert "2 complete, 0 pruned, 0 fail, 2 running, 0 waiting" in text
    rows = {li.split("│")[1].strip(): li for li in text.splitlines() if li.startswith("│")}
    assert rows["2"].rstrip(" │").endswith("│ no") and rows["3"].rstrip(" │").endswith("│ yes") and "w2" in rows["3"]
    assert "stale: trial(s) 3" in text and f"hpo fail-stale {study.study_name}" in text
    assert "time: 6.0 s training, 1.0 s outside training (14%)" in text

    report = json.loads(hpo(db.url, "health", db.name, "--format", "json").stdout)
    assert list(report) == ["study", "grace_seconds", "counts", "running", "stale", "workers", "time", "retries"]
    assert report["stale"] == [3] and report["grace_seconds"] == backend.HEARTBEAT_GRACE
    assert 595 <= report["running"][1]["heartbeat_age"] < 620


def test_fail_stale_fails_a_stale_trial_once_and_queues_one_retry(db, monkeypatch):
    monkeypatch.setattr(backend, "HEARTBEAT_GRACE", 2)
    study, running = build_running(db)
    backdate_heartbeat(db.storage, running[0]._trial_id, 5)
    first = hpo(db.url, "fail-stale", study.study_name)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("failed trial 2 of worker w1 (last heartbeat ")
    assert first.stdout.rstrip().endswith("queued its retry as trial 4")
    second = json.loads(hpo(db.url, "fail-stale", db.name, "--format", "json").stdout)
    assert second == {"study": study.study_name, "grace_seconds": 2, "failed": [], "still_running": 1}
    assert hpo(db.url, "fail-stale", db.name).stdout.startswith(f"no stale trials in {study.study_name} (1 running")
    states = [t.state.name for t in optuna.load_study(study_name=study.study_name, storage=db.storage).trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "RUNNING", "WAITING"]


# -- unknown studies, missing and unreachable databases ------------------------------------
@pytest.mark.parametrize("command", [["studies"], ["trials", "x"], ["trial", "x", "0"], ["best", "x"], ["health", "x"], ["fail-stale", "x"]])
def test_an_unreachable_database_is_one_line_naming_the_masked_url(command):
    line = one_line_error(hpo("postgresql://hpo:hunter2@127.0.0.1:1/hpo", *command))
    assert line.startswith("Error: cannot use the database postgresql+psycopg://hpo:***@127.0.0.1:1/hpo")
    assert "hunter2" not in line


@pytest.mark.parametrize("command", COMMANDS[1:])
def test_an_unknown_study_is_one_line_and_changes_nothing(campaign_db, command):
    before = snapshot(campaign_db.storage, campaign_db.name)
    args = [command, "no-such-study", *(["0"] if command == "trial" else [])]
    assert one_line_error(hpo(campaign_db.url, *args)) == "Error: no study named 'no-such-study' in this storage"
    assert snapshot(campaign_db.storage, campaign_db.name) == before


def test_a_missing_sqlite_file_is_not_created(tmp_path):
    path = tmp_path / "typo.db"
    line = one_line_error(hpo(f"sqlite:///{path}", "studies"))
    assert line == f"Error: no database at sqlite:///{path}: nothing to inspect yet"
    assert not path.exists() and not (tmp_path / "typo.db.lock").exists()

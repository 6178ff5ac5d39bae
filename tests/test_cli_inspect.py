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
import sqlalchemy
from click.testing import CliRunner
from optuna.trial import TrialState

import hpo.cli_inspect  # noqa: F401 - registers the commands on the group
from hpo import inspect, output
from hpo.cli import cli
from hpo.report.collect import collect
from storage import backend, states
from tests.test_inspect import (  # noqa: F401 - fixtures and builders shared with the library tests
    BACKENDS,
    DIVERGED,
    _close_db,
    _open_db,
    add_trial,
    backdate_heartbeat,
    build_campaign,
    build_running,
    campaign_db,
    db,
    make_stage,
    new_sqlite_url,
    pg_test_url,
    snapshot,
    sqlite_template,
    stage2,
    trial_attrs,
)
from tests.test_report import PARAMS as REPORT_PARAMS
from tests.test_report import run_small_campaign
from workers import stageplan
from workers.record import SUMMARY_ATTRS

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

COMMANDS = ["studies", "trials", "trial", "best", "health", "fail-stale", "importance"]


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
    args = ["trials", stage2(campaign_db), "--where", "activation=relu", "--where", "learning_rate>1e-3", "--sort", "-learning_rate"]
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
    line = one_line_error(hpo(campaign_db.url, "trials", stage2(campaign_db), *args))
    assert line.startswith(message)
    assert snapshot(campaign_db.storage, campaign_db.name) == before


# -- hpo trials CAMPAIGN -------------------------------------------------------------------
def test_trials_of_a_campaign_have_a_stage_column_and_stage_k_picks_one(campaign_db):
    table = hpo(campaign_db.url, "trials", campaign_db.name)
    assert table.exit_code == 0
    assert f"{campaign_db.name} (2 stages): 9 of 9 trials" in table.stdout
    cells = [[c.strip() for c in li.split("│")[1:3]] for li in table.stdout.splitlines() if li.startswith("│")]
    assert cells == [["1", "0"], ["1", "1"], *(["2", str(n)] for n in range(7))]

    rows = json.loads(hpo(campaign_db.url, "trials", campaign_db.name, "--format", "json").stdout)
    assert list(rows[0]) == ["stage", "number", "state", "value", "learning_rate", "activation", "duration", "worker", "reason"]
    assert [(r["stage"], r["number"], r["value"]) for r in rows[:2]] == [(1, 0, 0.80), (1, 1, 0.70)]

    one = hpo(campaign_db.url, "trials", campaign_db.name, "--stage", "1", "--format", "csv").stdout.splitlines()
    assert one[0].startswith("stage,number,state,value,") and [li.split(",")[:2] for li in one[1:]] == [["1", "0"], ["1", "1"]]
    titled = hpo(campaign_db.url, "trials", campaign_db.name, "--stage", "2").stdout
    assert f"{stage2(campaign_db)}: 7 of 7 trials" in titled
    # hpo trial / best / health still take a campaign's newest stage.
    assert json.loads(hpo(campaign_db.url, "trial", campaign_db.name, "4", "--format", "json").stdout)["study"] == stage2(campaign_db)


@pytest.mark.parametrize(("args", "message"), [
    (["{c}", "--stage", "3"], "Error: campaign '{c}' has no stage 3; its stages are 1, 2"),
    (["{c}", "--stage", "0"], "Error: Invalid value for '--stage': 0 is not in the range x>=1."),
    (["{c}", "--stage", "two"], "Error: Invalid value for '--stage': 'two' is not a valid integer"),
    (["{c}/stage-2", "--stage", "2"], "Error: '{c}/stage-2' is a study, not a campaign: name the campaign to pick stage 2"),
])
@pytest.mark.parametrize("command", ["trials", "importance"])
def test_a_bad_stage_is_one_line_exit_2(campaign_db, command, args, message):
    line = one_line_error(hpo(campaign_db.url, command, *(a.format(c=campaign_db.name) for a in args)))
    assert line.startswith(message.format(c=campaign_db.name))


def test_diagnostic_columns_in_columns_sort_and_where(campaign_db):
    args = ["trials", campaign_db.name, "--where", "diverged=true", "--columns", "stage,number,diverged,final_train_loss,reason"]
    rows = json.loads(hpo(campaign_db.url, *args, "--format", "json").stdout)
    assert rows == [{"stage": 2, "number": 2, "diverged": True, "final_train_loss": 7.2, "reason": DIVERGED}]
    columns = "stage,number,dead_fraction_max,saturation_fraction_max,update_ratio_max,update_ratio_min,best_epoch"
    text = hpo(campaign_db.url, "trials", campaign_db.name, "--state", "complete", "--sort", "-value", "--limit", "1",
               "--columns", columns, "--format", "csv").stdout
    assert text.splitlines() == [columns, "2,4,0.25,0.0,0.0011,0.0009,3"]
    table = hpo(campaign_db.url, "trials", campaign_db.name, "--where", "diverged=false", "--sort", "-dead_fraction_max",
                "--columns", "stage,number,diverged,dead_fraction_max")
    assert table.exit_code == 0
    cells = [[c.strip() for c in li.split("│")[1:-1]] for li in table.stdout.splitlines() if li.startswith("│")]
    assert cells == [[*key, "False", "0.25"] for key in (("1", "0"), ("1", "1"), ("2", "0"), ("2", "1"), ("2", "4"))] + [
        ["2", "3", "False", ""]]  # the failed trial has no diagnostics: last
    help_text = hpo(None, "trials", "--help").stdout
    assert "update_ratio_max" in help_text and "--stage" in help_text


# -- hpo importance ------------------------------------------------------------------------
def optuna_importances(url: str, study_name: str) -> dict[str, float]:
    return optuna.importance.get_param_importances(optuna.load_study(study_name=study_name, storage=url))


def test_importance_of_a_campaign_is_optunas_per_stage(campaign_db):
    result = json.loads(hpo(campaign_db.url, "importance", campaign_db.name, "--format", "json").stdout)
    assert list(result) == ["name", "campaign", "stages"] and (result["name"], result["campaign"]) == (campaign_db.name, campaign_db.name)
    assert [list(entry) for entry in result["stages"]] == [["stage", "study", "complete", "importances", "note"]] * 2
    for number, entry in enumerate(result["stages"], start=1):
        study = stageplan.stage_study_name(campaign_db.name, number)
        assert (entry["stage"], entry["study"], entry["note"]) == (number, study, None)
        expected = optuna_importances(campaign_db.url, study)
        assert entry["importances"] == expected and list(entry["importances"]) == list(expected)  # most important first
        assert entry["complete"] == {1: 2, 2: 3}[number]
    picked = json.loads(hpo(campaign_db.url, "importance", campaign_db.name, "--stage", "2", "--format", "json").stdout)
    assert picked["stages"] == result["stages"][1:]
    plain = json.loads(hpo(campaign_db.url, "importance", f"{campaign_db.name}-plain", "--format", "json").stdout)
    assert plain["campaign"] is None and plain["stages"][0]["stage"] is None
    assert plain["stages"][0]["importances"] == pytest.approx(optuna_importances(campaign_db.url, f"{campaign_db.name}-plain"))

    text = hpo(campaign_db.url, "importance", campaign_db.name, "--format", "csv").stdout
    assert list(csv.reader(io.StringIO(text))) == [["stage", "study", "parameter", "importance"]] + [
        [str(e["stage"]), e["study"], p, repr(v)] for e in result["stages"] for p, v in e["importances"].items()]

    table = hpo(campaign_db.url, "importance", campaign_db.name)
    assert table.exit_code == 0
    for number, entry in enumerate(result["stages"], start=1):
        assert f"{campaign_db.name}/stage-{number}: importances over {entry['complete']} complete trials" in table.stdout
    heading = next(li for li in table.stdout.splitlines() if "parameter" in li)
    assert [c.strip() for c in heading.split("┃")[1:-1]] == ["parameter", "importance", "bar"]
    first = next(li for li in table.stdout.splitlines() if li.startswith("│"))
    name, value, drawn = (c.strip() for c in first.split("│")[1:-1])
    top = next(iter(result["stages"][0]["importances"].items()))
    assert (name, value) == (top[0], output.cell(top[1])) and drawn == output.bar(top[1]).strip()


def test_a_stage_with_too_few_complete_trials_says_so_in_a_line(db):
    study = make_stage(db.storage, db.name, 1, stages=1)
    params = {"learning_rate": 0.01, "activation": "relu"}
    add_trial(study, params, TrialState.COMPLETE, 0.9, trial_attrs(0, "w1", params, 0.9))
    add_trial(study, params, TrialState.FAIL)
    result = hpo(db.url, "importance", db.name)
    assert result.exit_code == 0
    assert result.stdout == f"{study.study_name}: importances need at least 2 complete trials; this stage has 1\n"
    entry = json.loads(hpo(db.url, "importance", db.name, "--format", "json").stdout)["stages"][0]
    assert (entry["complete"], entry["importances"]) == (1, None) and "at least 2" in entry["note"]


# -- a real campaign: what the workers stored, shown campaign-wide ---------------------------
# Some trials of stage 1 diverge (learning rates up to 30); two parameters vary.
REAL_PARAMS = [*REPORT_PARAMS, "activation=relu,tanh"]


@pytest.fixture(scope="module", params=BACKENDS)
def real_campaign(request, tmp_path_factory):
    """A two-stage campaign trained by a real worker (12 and 6 trials of 1 and 2 epochs)."""
    db = _open_db(request.param, tmp_path_factory.mktemp("real"), request)
    run_small_campaign(db.url, db.name, params=REAL_PARAMS)
    yield db
    _close_db(db)


def stored_trials(db) -> list[tuple[int, optuna.trial.FrozenTrial]]:
    """(stage, trial) of every trial of the campaign, as Optuna reads them, stage by stage."""
    return [(plan.stage, trial) for plan in stageplan.campaign_stages(db.storage, db.name)
            for trial in optuna.load_study(study_name=plan.study_name, storage=db.url).trials]


@pytest.mark.slow
def test_a_real_campaigns_diagnostic_columns_are_what_its_workers_stored(real_campaign):
    db = real_campaign
    trials = stored_trials(db)
    columns = ["stage", "number", "state", "value", *SUMMARY_ATTRS]
    rows = json.loads(hpo(db.url, "trials", db.name, "--columns", ",".join(columns), "--format", "json").stdout)
    # Each value is the one the worker stored on the trial (the attrs optuna-dashboard shows).
    assert rows == [{"stage": stage, "number": t.number, "state": t.state.name, "value": t.value,
                     **{k: t.user_attrs.get(k) for k in SUMMARY_ATTRS}} for stage, t in trials]
    assert {r["stage"] for r in rows} == {1, 2}
    for key in SUMMARY_ATTRS:
        assert any(r[key] not in (None, False) for r in rows), key

    diverged = [(stage, t.number) for stage, t in trials if states.is_diverged(t.state.name, t.user_attrs)]
    shown = json.loads(hpo(db.url, "trials", db.name, "--where", "diverged=true", "--format", "json").stdout)
    assert diverged and [(r["stage"], r["number"]) for r in shown] == diverged

    ratios = sorted(r["update_ratio_max"] for r in rows if r["update_ratio_max"] is not None)
    middle = ratios[len(ratios) // 2]
    args = ["--where", f"update_ratio_max>={middle!r}", "--sort", "-update_ratio_max", "--columns", "stage,number,update_ratio_max"]
    above = json.loads(hpo(db.url, "trials", db.name, *args, "--format", "json").stdout)
    assert [r["update_ratio_max"] for r in above] == sorted((v for v in ratios if v >= middle), reverse=True)
    one = json.loads(hpo(db.url, "trials", db.name, "--stage", "2", "--columns", ",".join(columns), "--format", "json").stdout)
    assert one == [r for r in rows if r["stage"] == 2]


@pytest.mark.slow
def test_a_real_campaigns_importances_are_optunas_on_each_stage_and_the_reports(real_campaign):
    db = real_campaign
    result = json.loads(hpo(db.url, "importance", db.name, "--format", "json").stdout)
    plans = stageplan.campaign_stages(db.storage, db.name)
    assert [(e["stage"], e["study"]) for e in result["stages"]] == [(p.stage, p.study_name) for p in plans]
    report = collect(db.storage, db.url, db.name)
    for entry, plan, stage in zip(result["stages"], plans, report.stages):
        study = optuna.load_study(study_name=plan.study_name, storage=db.url)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert entry["complete"] == len(complete) >= 2
        assert entry["importances"] == optuna.importance.get_param_importances(study)
        assert entry["importances"] == stage.importance  # the report's figure draws the same numbers
    assert {"learning_rate", "activation"} <= set(result["stages"][0]["importances"])


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
@pytest.mark.parametrize("command", [["studies"], ["trials", "x"], ["trial", "x", "0"], ["best", "x"], ["health", "x"], ["fail-stale", "x"], ["importance", "x"]])
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


def test_a_storage_of_another_optuna_version_is_named_when_a_read_fails(tmp_path):
    """The commands that read skip Optuna's schema-version check when they open the storage (it
    loads Alembic, a third of their time); when a read then fails on a schema of another
    version, the one line is Optuna's own, saying how to upgrade."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    backend.ensure_schema(url)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # what a storage of an older Optuna lacks
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v1.3.0.a'"))
        conn.execute(sqlalchemy.text("ALTER TABLE trials RENAME TO trials_of_another_version"))
    engine.dispose()
    line = one_line_error(hpo(url, "studies"))
    assert "no longer compatible" in line and "storage upgrade" in line, line


def test_columns_that_name_nothing_are_one_line(campaign_db):
    line = one_line_error(hpo(campaign_db.url, "trials", campaign_db.name, "--columns", ","))
    assert line.startswith("Error: --columns ',' names no column; the columns are: stage, number, state")

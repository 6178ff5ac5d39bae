"""What came from storage or the user is printed as it is: rich markup such as ``[red]`` or
``[bold]`` in a study name, a reason, a worker id or a parameter value appears verbatim, emoji
codes stay text, and control characters never reach the terminal raw (tables show them as
escapes such as ``\\x1b``); JSON keeps the exact data.

The studies are real: a SQLite file written through Optuna, read by the commands through
click's CliRunner, as a user runs them.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from rich.console import Console

from hpo import output
from hpo.cli import cli
from hpo.progress import RichProgress
from storage import backend
from workers.stageplan import StagePlan

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

STUDY = "[bold]plain[/bold] :thumbs_up: \x1b]0;pwned\x07"
REASON = "[red]boom[/red]\x1b[2J"
WORKER = "[blink]w1[/blink]\x08"
CHOICES = ["[red]relu[/red]", "tanh\x1b[31m"]
CONTROL = ("\x1b", "\x07", "\x08")


def shown(text: str) -> str:
    """How a table shows ``text``: control characters as escapes, everything else as it is."""
    return text.encode("unicode_escape").decode("ascii").replace("\\\\", "\\")


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setattr(output.out, "width", 250)


@pytest.fixture
def url(tmp_path):
    """A plain Optuna study (hpo did not create it) whose names and attrs hold markup and
    control characters: two complete trials, one pruned with a reason, one running."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    backend.ensure_schema(url)
    storage = backend.open_storage(url, heartbeat=True)
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    distributions = {"activation": CategoricalDistribution(CHOICES), "lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for value, choice in ((0.9, CHOICES[0]), (0.8, CHOICES[1])):
        study.enqueue_trial({"activation": choice, "lr": 0.01})
        trial = study.ask(distributions)
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("timings", {"train_seconds": 1.0, "overhead_seconds": 0.1})
        study.tell(trial, value)
    pruned = study.ask(distributions)
    pruned.set_user_attr("reason", REASON)
    pruned.set_user_attr("worker", WORKER)
    study.tell(pruned, state=TrialState.PRUNED)
    running = study.ask(distributions)
    running.set_user_attr("worker", WORKER)
    storage.record_heartbeat(running._trial_id)
    storage.engine.dispose()
    return url


def hpo(url: str, *args: str):
    result = CliRunner().invoke(cli, [*args, "--storage", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def assert_nothing_raw(text: str) -> None:
    for char in CONTROL:
        assert char not in text, f"{char!r} reached the terminal raw"


# -- the inspection commands ---------------------------------------------------------------
def test_studies_shows_a_study_name_with_markup_verbatim(url):
    text = hpo(url, "studies").stdout
    assert_nothing_raw(text)
    assert shown(STUDY) in text  # "[bold]plain[/bold] :thumbs_up: \x1b]0;pwned\x07", escapes visible
    assert "👍" not in text


def test_trials_shows_reasons_workers_and_parameter_values_verbatim(url):
    text = hpo(url, "trials", STUDY).stdout
    assert_nothing_raw(text)
    for expected in (STUDY, REASON, WORKER, *CHOICES):
        assert shown(expected) in text, expected
    rows = json.loads(hpo(url, "trials", STUDY, "--format", "json").stdout)  # the exact data
    assert rows[2]["reason"] == REASON and rows[0]["worker"] == WORKER
    assert {r["activation"] for r in rows[:2]} == set(CHOICES)


def test_trial_shows_its_reason_and_parameters_verbatim(url):
    text = hpo(url, "trial", STUDY, "2").stdout
    assert_nothing_raw(text)
    assert shown(REASON) in text and shown(WORKER) in text and shown(STUDY) in text
    first = hpo(url, "trial", STUDY, "0").stdout
    assert shown(CHOICES[0]) in first
    record = json.loads(hpo(url, "trial", STUDY, "2", "--format", "json").stdout)
    assert record["user_attrs"]["reason"] == REASON


def test_best_shows_parameter_values_verbatim(url):
    text = hpo(url, "best", STUDY).stdout
    assert_nothing_raw(text)
    assert shown(CHOICES[0]) in text and shown(CHOICES[1]) in text and shown(STUDY) in text


def test_health_shows_the_study_and_its_workers_verbatim(url):
    text = hpo(url, "health", STUDY).stdout
    assert_nothing_raw(text)
    assert text.startswith(shown(STUDY) + ": 2 complete, 1 pruned")
    assert shown(WORKER) in text


def test_an_error_naming_what_the_user_typed_is_one_line_with_nothing_raw(url):
    result = CliRunner().invoke(cli, ["trials", "[red]nope[/red]\x1b[2J\nsecond line", "--storage", url])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[red]nope[/red]" in lines[0], result.stderr
    assert_nothing_raw(result.stderr)


# -- what `hpo search` shows ---------------------------------------------------------------
def capture() -> tuple[Console, io.StringIO]:
    """A plain rich Console, as any caller might pass: the progress must not rely on ours."""
    buffer = io.StringIO()
    return Console(file=buffer, width=200, color_system=None), buffer


def test_the_search_summary_prints_names_values_and_notes_verbatim():
    console, buffer = capture()
    best = SimpleNamespace(study="c/stage-1", trial=3, params={"activation": "[red]relu[/red]", "lr": 0.01},
                           skipped=["c/stage-1 trial 1: [bold]diverged[/bold]\x1b[2J on retrain"],
                           val_accuracy=0.9, train_accuracy=0.95, test_accuracy=0.91)
    stage = {"stage": 1, "epochs": 2, "budget": 10, "best_value": 0.9,
             "counts": {"COMPLETE": 6, "PRUNED": 1, "DIVERGED": 3},
             "ranges": {"activation": "{[red]relu[/red], tanh}"}}
    summary = SimpleNamespace(name="c", stages=[stage], best=best, seconds=12.0)
    RichProgress(console).print_summary(console, summary)
    text = buffer.getvalue()
    assert_nothing_raw(text)
    assert "activation=[red]relu[/red]" in text and "{[red]relu[/red], tanh}" in text
    assert "skipped: c/stage-1 trial 1: [bold]diverged[/bold]\\x1b[2J on retrain" in text
    row = next(line for line in text.splitlines() if line.startswith("│ 1 "))
    assert [cell.strip() for cell in row.split("│")[1:6]] == ["1", "2", "10/10", "1", "3"]  # 1 pruned, 3 diverged


def test_progress_messages_and_bars_are_literal_and_count_diverged_apart():
    console, buffer = capture()
    plan = StagePlan(campaign="c", stage=1, stages=2, trials=10, epochs=2, dataset="digits", space={})
    with RichProgress(console) as progress:
        progress.stage_progress(plan, {"COMPLETE": 4, "PRUNED": 2, "DIVERGED": 3, "RUNNING": 1}, 0.8)
        progress.message("[red]worker said[/red] \x1b[2J")
    text = buffer.getvalue()
    assert_nothing_raw(text)
    assert "[red]worker said[/red] \\x1b[2J" in text
    bar = next(line for line in text.splitlines() if "stage 1/2" in line)
    assert "9/10" in bar and "1 running · 2 pruned · 3 diverged" in bar


def test_the_consoles_keep_markup_and_emoji_codes_and_escape_control_characters(capsys):
    output.err.print("[red]x[/red] :thumbs_up: \x1b[2J\x9b\u202e\nnext line")
    assert capsys.readouterr().err == "[red]x[/red] :thumbs_up: \\x1b[2J\\x9b\\u202e\nnext line\n"

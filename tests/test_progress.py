"""Progress that helps: the time left per stage, plain lines where there is no terminal, and a
worker's log line per trial."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from hpo.campaign import CampaignSpec
from hpo.progress import ETA_WINDOW, PlainProgress, RichProgress, duration_text, eta_seconds, eta_text, progress_for
from storage import backend
from tests.helpers import start_worker
from workers import stageplan
from workers.space import build_space
from workers.stageplan import StagePlan

PLAN = StagePlan(campaign="c", stage=1, stages=2, trials=10, epochs=2, dataset="digits", space={})
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # anything but a newline


# -- the time left: a pure function ----------------------------------------------------------
def test_no_time_left_is_told_before_two_trials_finished():
    assert eta_seconds([], 10, 5.0) is None
    assert eta_seconds([(0.0, 0)], 10, 5.0) is None
    assert eta_seconds([(0.0, 0), (3.0, 1)], 10, 5.0) is None
    assert eta_seconds([(0.0, 0), (3.0, 1), (6.0, 2)], 10, 6.0) == pytest.approx(24.0)  # 8 left at 1 per 3 s


def test_the_time_left_counts_down_between_finishes_and_stops_at_zero():
    finishes = [(0.0, 0), (3.0, 1), (6.0, 2)]
    assert eta_seconds(finishes, 10, 10.0) == pytest.approx(20.0)
    assert eta_seconds(finishes, 10, 100.0) == 0.0


def test_the_pace_is_that_of_the_last_trials():
    # Twenty trials at one a second, then ten at one every two seconds: the pace is the recent one.
    finishes = [(float(i), i) for i in range(21)] + [(20.0 + 2 * k, 20 + k) for k in range(1, ETA_WINDOW + 1)]
    assert finishes[-1] == (40.0, 30)
    assert eta_seconds(finishes, 40, 40.0) == pytest.approx(10 / 0.5)


def test_a_resumed_stage_is_paced_from_when_it_was_first_watched():
    # 30 trials finished before this process watched it; 2 since, in 10 s: 8 left take 40 s.
    assert eta_seconds([(0.0, 30), (5.0, 31)], 40, 5.0) is None
    assert eta_seconds([(0.0, 30), (5.0, 31), (10.0, 32)], 40, 10.0) == pytest.approx(40.0)


def test_a_met_budget_has_no_time_left_to_tell():
    assert eta_seconds([(0.0, 0), (3.0, 1), (6.0, 2)], 2, 6.0) is None


def test_the_time_left_reads_as_a_clock():
    assert [duration_text(s) for s in (0, 42, 59.6, 725, 3723)] == ["0:00", "0:42", "1:00", "12:05", "1:02:03"]
    assert eta_text(42.2) == "~0:42 left" and eta_text(None) == ""


# -- what a stage shows --------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def captured() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, color_system=None), buffer


def test_the_bar_shows_the_time_left():
    console, buffer = captured()
    clock = Clock()
    with RichProgress(console, now=clock) as progress:
        for clock.t, done in ((0.0, 0), (3.0, 1), (6.0, 2), (7.0, 2)):
            progress.stage_progress(PLAN, {"COMPLETE": done, "RUNNING": 2}, 0.5)
    bar = next(line for line in buffer.getvalue().splitlines() if "stage 1/2" in line)
    assert "2/10" in bar and "~0:23 left" in bar  # 8 left at 1 per 3 s, one second since the last


def test_plain_lines_come_per_finished_trial_at_most_every_few_seconds():
    console, buffer = captured()
    clock = Clock()
    every, quiet = PlainProgress.PLAIN_EVERY_SECONDS, PlainProgress.PLAIN_QUIET_SECONDS
    with PlainProgress(console, now=clock) as progress:
        progress.stage_started(PLAN, resumed=False)
        # (time, finished): one finish, two within `every` seconds (one line), a long quiet
        # spell (a line to say the search is alive), then the budget met at once after a finish.
        for clock.t, done in ((0.0, 0), (0.5, 0), (3.0, 1), (6.0, 2), (6.0 + every / 4, 3), (6.0 + every, 3),
                              (6.0 + every + quiet, 3), (6.0 + every + quiet + 0.1, 9),
                              (6.0 + every + quiet + 0.2, 10)):
            progress.stage_progress(PLAN, {"COMPLETE": done, "RUNNING": 1}, 0.8 if done else None)
        progress.message("stage 1 done")
    lines = buffer.getvalue().splitlines()
    shown = [int(m[1]) for line in lines if (m := re.search(r": (\d+)/10 finished", line))]
    assert shown == [0, 1, 2, 3, 3, 10]  # 9 was held back, then the met budget printed at once
    assert lines[0] == "stage 1/2 · 2 epochs: 0/10 finished · best - · 1 running · 0:00 elapsed"
    assert "~" not in lines[1] and "~0:24 left" in lines[2]  # from the second finished trial on
    assert lines[-1] == "stage 1 done"
    assert not CONTROL.search(buffer.getvalue())


def test_a_held_back_line_is_printed_before_anything_else():
    console, buffer = captured()
    clock = Clock()
    with PlainProgress(console, now=clock) as progress:
        progress.stage_progress(PLAN, {"COMPLETE": 1}, 0.7)
        clock.t = 0.1
        progress.stage_progress(PLAN, {"COMPLETE": 2, "PRUNED": 1}, 0.8)  # held back: too soon
        progress.message("closed early")
    lines = buffer.getvalue().splitlines()
    assert "3/10 finished · best 0.8000 · 1 pruned" in lines[1] and lines[2] == "closed early"


def test_only_a_terminal_gets_live_bars(tmp_path):
    main, side = os.openpty()
    try:
        with os.fdopen(side, "w") as terminal:
            assert type(progress_for(Console(file=terminal))) is RichProgress
    finally:
        os.close(main)
    with open(tmp_path / "log", "w") as log:  # a file taken for a terminal (FORCE_COLOR) is still a file
        assert type(progress_for(Console(file=log, force_terminal=True))) is PlainProgress
    assert type(progress_for(Console(file=io.StringIO()))) is PlainProgress


# -- a real search, its stderr piped ---------------------------------------------------------
@pytest.mark.slow
def test_a_piped_search_prints_a_plain_line_per_trial_with_the_time_left(tmp_path):
    # One worker, trials of a few seconds each (longer than PLAIN_EVERY_SECONDS), so a finish is
    # usually its own line; on a machine fast enough to finish two within PLAIN_EVERY_SECONDS they
    # share one, which the rule allows. FORCE_COLOR would make rich take the pipe for a terminal: it must not.
    env = {**os.environ, "FORCE_COLOR": "1", "OPENBLAS_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "piped", "--stages", "1", "--trials", "4",
         "--epochs", "250", "--workers", "1", "--pruner", "none", "--no-report", "--json",
         "--storage", f"sqlite:///{tmp_path / 'hpo.db'}",
         "--param", "hidden_sizes=64", "--param", "batch_size=8", "--param", "lr=0.01",
         "--param", "activation=relu", "--param", "bn=true", "--param", "init=he"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert process.returncode == 0, process.stderr
    assert not CONTROL.search(process.stderr), repr(process.stderr)
    lines = [line for line in process.stderr.splitlines() if line.startswith("stage 1/1 · 250 epochs: ")]
    shown = [int(re.search(r": (\d)/4 finished", line)[1]) for line in lines]
    assert shown == sorted(shown) and {0, 4} <= set(shown) and len(set(shown)) >= 4, process.stderr
    assert any(2 <= done < 4 for done in shown), process.stderr
    for line in lines:
        done = int(re.search(r": (\d)/4 finished", line)[1])
        told = re.search(r" · ~\d+:\d\d left$", line)
        assert bool(told) == (2 <= done < 4), line  # from the second trial on, until the budget is met


# -- the worker's log ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_verbose_worker_logs_each_trial_with_its_parameters_outcome_and_reason(sqlite_url):
    backend.ensure_schema(sqlite_url)
    storage = backend.open_storage(sqlite_url)
    space = build_space(None, None, ["hidden_sizes=32", "lr=log:1e-6..100", "activation=relu", "bn=false",
                                     "init=he", "optimizer=sgd"])
    spec = CampaignSpec(name="v", space=space, stages=1, trials=[7], epochs=[3], pruner="median")
    plan = spec.plan(1, space)
    study = stageplan.create_stage(storage, plan)
    # Five that learn (the median pruner's startup trials), one that learns nothing (pruned),
    # one that blows up (diverged).
    for lr in (0.1, 0.1, 0.1, 0.1, 0.1, 1e-6, 80.0):
        study.enqueue_trial({"learning_rate": lr})
    worker = start_worker(sqlite_url, "--study", plan.study_name, "-v")
    output = worker.communicate(timeout=240)[0]
    assert worker.returncode == 0, output
    logged = {int(m[1]): m[0] for m in re.finditer(r"trial (\d+) of v/stage-1: .*", output)}
    assert sorted(logged) == list(range(7)), output
    trials = {t.number: t for t in study.get_trials()}
    for number, line in logged.items():
        trial = trials[number]
        assert f"learning_rate={trial.params['learning_rate']:.4g}" in line and "activation=relu" in line
        if trial.state.name == "COMPLETE":
            assert f": COMPLETE {trial.value:.4f} after 3 epochs in " in line
        else:
            assert f"({trial.user_attrs['reason']})" in line
    assert ": PRUNED (pruned at step" in logged[5] and "learning_rate=1e-06" in logged[5]
    assert ": DIVERGED (diverged at epoch 1, step" in logged[6] and "after 0 epochs" in logged[6]
    assert not CONTROL.search(output)

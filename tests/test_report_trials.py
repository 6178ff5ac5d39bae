"""The report's trial sections (hpo.report.sections_trials) against what the database holds.

A small real campaign (2 stages, 1 then 3 epochs, a learning-rate range wide enough that some
trials diverge) is run once on a SQLite file and once on PostgreSQL, with one trial of its last stage failed and
queued again as a stopped worker's would be. Every figure's data is checked against the trials
read back with Optuna's public API: the counts per choice, the dropped choices, the curves, the
diverged marks, the timeline's bars and the seconds per worker. The cases a small campaign
does not produce (every trial diverged, nothing started, a retry that ran, many trials) are
built as report data directly, and must give words, not empty axes.
"""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import datetime, timedelta

import optuna
import pytest

from hpo.campaign import CampaignSpec, run_campaign
from hpo.report import common
from hpo.report.collect import ReportData, StageView, TrialView, collect
from hpo.report.page import Figure, Section, Table, Words, render_page
from hpo.report.sections_search import coarse_section
from hpo.report.sections_trials import (
    NO_WORKER,
    REQUEUED_PATTERN,
    RETRY_PATTERN,
    choices_section,
    curves_section,
    workers_section,
)
from storage import backend, optuna_access
from tests.helpers import assert_one_sentence
from tests.test_campaign import Recorder
from workers import stageplan
from workers.record import Curve, Timings, TrialRecord
from workers.space import build_space
from workers.stageplan import StagePlan

optuna.logging.set_verbosity(optuna.logging.WARNING)

CAMPAIGN = "rep"
STAGES = (f"{CAMPAIGN}/stage-1", f"{CAMPAIGN}/stage-2")
HOVER_TRIAL = re.compile(r"<b>(.+?) #(\d+)</b>")


# -- the real campaign ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def campaign(module_storage_url):
    """(url, ReportData) of a finished 2-stage campaign, with a failed trial queued again;
    built once on SQLite and once on PostgreSQL."""
    url = module_storage_url
    space = build_space(None, None, ["hidden_sizes=16", "lr=log:0.01..30", "optimizer=sgd", "batch_size=128"])
    # Eight trials are too few to judge a choice by the default rule: this one drops what misses the top.
    spec = CampaignSpec(name=CAMPAIGN, space=space, stages=2, trials=[8, 6], epochs=[1, 3], seed=8,
                        min_choice_trials=1, keep_choices=1)
    run_campaign(url, spec, Recorder(), workers=1)
    # A worker that died mid-trial: its trial is failed and queued again (the retry waits,
    # since the stage's budget is met, so it has no times).
    storage = backend.open_storage(url)
    study = optuna.load_study(study_name=STAGES[1], storage=storage)
    stopped = study.ask()
    stopped.set_user_attr("worker", "gone-1")
    assert backend.fail_with_retry(study, optuna_access.trial_id(stopped))
    return url, collect(storage, url, CAMPAIGN)


def stored(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=backend.open_storage(url, heartbeat=False)).trials


def is_diverged(t: optuna.trial.FrozenTrial) -> bool:
    return t.state.name == "PRUNED" and str(t.user_attrs.get("reason", "")).startswith("diverged")


def figures(section: Section) -> list[Figure]:
    return [item for item in section.items if isinstance(item, Figure)]


def words(section: Section) -> str:
    return " ".join(item.text for item in section.items if isinstance(item, Words))


def figure_of(section: Section, study: str) -> Figure:
    (found,) = [f for f in figures(section) if study in f.figure.layout.title.text]
    return found


def hovered(text: str) -> tuple[str, int]:
    study, number = HOVER_TRIAL.search(text).groups()
    return study, int(number)


def same(a, b) -> bool:
    return type(a) is type(b) and a == b


def choice_traces(figure, name: str):
    """The axis categories and the box traces of parameter ``name``'s subplot."""
    titles = [a.text for a in figure.layout.annotations]
    index = titles.index(name)
    suffix = "" if index == 0 else str(index + 1)
    categories = list(figure.layout[f"xaxis{suffix}"].categoryarray)
    boxes = [t for t in figure.data if t.type == "box" and t.xaxis == f"x{suffix}"]
    return suffix, categories, boxes


@pytest.mark.slow
def test_the_campaign_has_what_the_sections_must_show(campaign):
    url, data = campaign
    trials = [t for study in STAGES for t in stored(url, study)]
    assert any(is_diverged(t) for t in trials), "the fixture must make some trials diverge"
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 4
    assert [s.study for s in data.stages] == list(STAGES)


def hover_lines(text: str) -> list[str]:
    """A hover text's lines as the reader sees them: Plotly's <b> and <i> drawn, entities read."""
    return [html.unescape(re.sub(r"</?[bi]>", "", line)) for line in text.split("<br>")]


@pytest.mark.slow
def test_hovering_a_coarse_to_fine_mark_shows_its_trial_parameters_and_outcome(campaign):
    """Every mark of each stage's learning-rate scatter: its trial's number and outcome, each
    parameter with its stored value, and the value, or for a pruned or diverged trial the
    reason it stopped."""
    url, data = campaign
    seen = set()
    scatters = [f for f in figures(coarse_section(data)) if f.figure.layout.xaxis.title.text == "learning_rate"]
    for study, figure in zip(STAGES, scatters, strict=True):
        assert figure.figure.layout.title.text.startswith(study)
        trials = stored(url, study)
        for trace in figure.figure.data:
            for text in trace.text or ():
                head, *lines = hover_lines(text)
                name, number = hovered(text)
                t = trials[number]
                outcome = "diverged" if is_diverged(t) else t.state.name.lower()
                assert name == study and head == f"{study} #{number}: {outcome}"
                seen.add(outcome)
                if t.value is not None:
                    (value,) = [line.removeprefix("value ") for line in lines if line.startswith("value ")]
                    assert float(value) == pytest.approx(t.value, abs=5e-5)
                params = dict(line.split(" = ", 1) for line in lines if " = " in line)
                assert list(params) == list(t.params)
                for param, value in t.params.items():
                    shown = params[param]
                    if isinstance(value, float):
                        assert float(shown) == pytest.approx(value, rel=5e-4), (param, shown, value)
                    else:
                        assert shown == (str(value).lower() if isinstance(value, bool) else str(value)), (param, shown, value)
                if t.state.name == "PRUNED":  # pruned or diverged: why, last
                    assert lines[-1] == t.user_attrs["reason"]
                else:  # complete: no reason to give
                    assert "<i>" not in text
    assert seen == {"complete", "pruned", "diverged"}, "the fixture must have a trial of each outcome"


@pytest.mark.slow
def test_counts_per_choice_equal_the_trials_that_took_it(campaign):
    url, data = campaign
    section = choices_section(data)
    for stage in data.stages:
        figure = figure_of(section, stage.study).figure
        trials = stored(url, stage.study)
        varying = {n: s["choices"] for n, s in stage.plan.space["params"].items() if s["type"] == "choice" and len(s["choices"]) > 1}
        assert set(varying) == {"activation", "initializer", "batch_norm"}
        table = {(r[0], r[1]): r for item in section.items if isinstance(item, Table) and stage.study in item.caption for r in item.rows}
        for name, choices in varying.items():
            _, categories, boxes = choice_traces(figure, name)
            (complete,) = [b for b in boxes if b.name == "complete"]
            assert len(categories) == len(choices)
            for choice, category in zip(choices, categories):
                took = [t for t in trials if name in t.params and same(t.params[name], choice)]
                done = [t for t in took if t.state.name == "COMPLETE"]
                assert category == f"{common.show(choice)} (n={len(took)})"
                drawn = sorted(y for x, y in zip(complete.x, complete.y) if x == category)
                assert drawn == pytest.approx(sorted(t.value for t in done))
                row = table[(name, common.show(choice))]
                assert row[2:4] == (len(took), len(done))
                if done:
                    assert float(row[4]) == pytest.approx(max(t.value for t in done), abs=5e-5)
            for x, text in zip(complete.x, complete.hovertext):  # each point's hover names its trial
                study, number = hovered(text)
                assert study == stage.study and x.startswith(common.show(trials[number].params[name]) + " (")


@pytest.mark.slow
def test_the_dropped_choices_are_those_missing_from_the_next_stage(campaign):
    url, data = campaign
    storage = backend.open_storage(url, heartbeat=False)
    parent, child = (stageplan.read_plan(storage, s).space["params"] for s in STAGES)
    lineage = {c["name"]: c["reason"] for c in stageplan.read_plan(storage, STAGES[1]).lineage["changes"]}
    section = choices_section(data)
    figure = figure_of(section, STAGES[0]).figure
    (table,) = [t for t in section.items if isinstance(t, Table) and STAGES[0] in t.caption]
    marked, expected = set(), set()
    for name in ("activation", "initializer", "batch_norm"):
        suffix, categories, _ = choice_traces(figure, name)
        for choice, category in zip(parent[name]["choices"], categories):
            if not any(same(choice, c) for c in child[name]["choices"]):
                expected.add((name, category))
        for a in figure.layout.annotations:
            if a.text == "dropped" and a.xref == f"x{suffix}":
                marked.add((name, a.x))
                assert a.hovertext == html.escape(lineage[name])
        rows = {r[1]: r for r in table.rows if r[0] == name}
        for choice in parent[name]["choices"]:
            dropped = not any(same(choice, c) for c in child[name]["choices"])
            assert rows[common.show(choice)][6:] == (("dropped", lineage[name]) if dropped else ("kept", ""))
    assert expected, "stage 2 narrowed no choice: the fixture must drop one"
    assert marked == expected
    # The last stage has no next one to drop anything.
    (last_table,) = [t for t in section.items if isinstance(t, Table) and STAGES[1] in t.caption]
    assert {r[6] for r in last_table.rows} == {"last stage"}


@pytest.mark.slow
def test_curve_points_are_the_stored_curves(campaign):
    url, data = campaign
    section = curves_section(data)
    # Stage 1 trained one epoch per trial: words say so, and each trial is a point.
    assert "2 or more epochs" in words(section) and STAGES[0] in words(section)
    assert {t.mode for t in figure_of(section, STAGES[0]).figure.data} == {"markers"}
    for study in STAGES:
        figure = figure_of(section, study).figure
        trials = stored(url, study)
        complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number))
        shown = {int(t.legendgroup.split("-")[1]) for t in figure.data if t.legendgroup.startswith("trial-")}
        assert shown == {t.number for t in complete[:10]}
        pruned = [t for t in trials if t.state.name == "PRUNED" and not is_diverged(t)]
        faded = {hovered(t.meta)[1] for t in figure.data if t.legendgroup == "pruned"}
        assert faded == {t.number for t in sorted(pruned, key=lambda t: (-len(t.user_attrs["curve"]["epoch"]), t.number))[:10]}
        for trace in figure.data:
            if trace.legendgroup.startswith("trial-") or trace.legendgroup == "pruned":
                curve = trials[hovered(trace.meta)[1]].user_attrs["curve"]
                assert list(trace.x) == curve["epoch"]
                key = "train_loss" if trace.xaxis == "x" else "val_accuracy"
                assert list(trace.y) == pytest.approx(curve[key])
                assert trace.opacity == (common.FADED_OPACITY if trace.legendgroup == "pruned" else common.SOLID_OPACITY)


@pytest.mark.slow
def test_diverged_trials_are_marked_at_the_epoch_they_stopped(campaign):
    url, data = campaign
    section = curves_section(data)
    for study in STAGES:
        diverged = {t.number: t for t in stored(url, study) if is_diverged(t)}
        marks = [t for t in figure_of(section, study).figure.data if t.legendgroup == "diverged"]
        if not diverged:
            assert not marks
            continue
        (trace,) = marks
        assert trace.marker.symbol == "x"
        numbers = [hovered(text)[1] for text in trace.hovertext]
        assert sorted(numbers) == sorted(diverged)
        for x, number, text in zip(trace.x, numbers, trace.hovertext):
            reason = diverged[number].user_attrs["reason"]
            assert x == len(diverged[number].user_attrs["curve"]["epoch"]) + 1
            assert reason.startswith(f"diverged at epoch {x},")
            assert html.escape(reason) in text


@pytest.mark.slow
def test_timeline_bars_are_the_stored_start_and_end_per_worker(campaign):
    url, data = campaign
    section = workers_section(data)
    by_key = {(study, t.number): t for study in STAGES for t in stored(url, study)}
    timeline = figures(section)[0].figure
    bars = {}
    for trace in timeline.data:
        if trace.type != "bar":
            continue
        patterns = trace.marker.pattern.shape
        for i, text in enumerate(trace.hovertext):
            bars[hovered(text)] = (trace.name, trace.y[i], trace.base[i], trace.x[i], patterns[i])
    started = {k: t for k, t in by_key.items() if t.datetime_start is not None}
    assert set(bars) == set(started)
    for key, t in started.items():
        outcome, worker, base, ms, _ = bars[key]
        assert outcome == ("diverged" if is_diverged(t) else t.state.name.lower())
        assert worker == t.user_attrs["worker"]
        assert datetime.fromisoformat(base) == t.datetime_start
        assert abs((t.datetime_start + timedelta(milliseconds=ms) - t.datetime_complete).total_seconds()) < 1e-5
    # The failed trial queued again is crossed, and the retry waiting for it is not drawn.
    (requeued,) = [k for k, t in by_key.items() if t.user_attrs.get("worker") == "gone-1" and t.state.name == "FAIL"]
    (retry,) = [k for k, t in by_key.items() if t.system_attrs.get("retry_history") == [requeued[1]]]
    assert by_key[retry].state.name == "WAITING" and retry not in bars
    assert bars[requeued][4] == REQUEUED_PATTERN
    assert {b[4] for k, b in bars.items() if k != requeued} == {""}
    assert "Not drawn: 1 trial not started yet" in words(section)


@pytest.mark.slow
def test_time_per_worker_is_the_sum_of_the_records_timings(campaign):
    url, data = campaign
    section = workers_section(data)
    # A trial that never started (the waiting retry, which carries the attrs of the trial it
    # retries) was run by no worker.
    trials = [t for study in STAGES for t in stored(url, study) if t.datetime_start is not None]
    workers = sorted({t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs})
    assert "gone-1" in workers
    stacked = figures(section)[1].figure
    (train,) = [t for t in stacked.data if t.name == "in training"]
    (outside,) = [t for t in stacked.data if t.name == "outside training"]
    assert list(train.x) == list(outside.x) == workers
    (table,) = [t for t in section.items if isinstance(t, Table)]
    for i, worker in enumerate(workers):
        mine = [t for t in trials if t.user_attrs.get("worker") == worker]
        timings = [t.user_attrs.get("timings") or {} for t in mine]
        assert train.y[i] == pytest.approx(sum(x.get("train_seconds", 0.0) for x in timings))
        assert outside.y[i] == pytest.approx(sum(x.get("overhead_seconds", 0.0) for x in timings))
        row = table.rows[i]
        states = [("DIVERGED" if is_diverged(t) else t.state.name) for t in mine]
        assert row[:6] == (worker, len(mine), states.count("COMPLETE"), states.count("PRUNED"),
                           states.count("DIVERGED"), states.count("FAIL"))


@pytest.mark.slow
def test_the_sections_render_into_a_page(campaign, tmp_path):
    _, data = campaign
    sections = [choices_section(data), curves_section(data), workers_section(data)]
    page = tmp_path / "report.html"
    page.write_text(render_page(CAMPAIGN, sections), encoding="utf-8")
    text = page.read_text(encoding="utf-8")
    for key in ("choices", "learning-curves", "workers"):
        assert f'<section id="{key}">' in text
    assert text.count("data-figure") == sum(len(figures(s)) for s in sections) == 6
    for section in sections:  # every figure says how to read it, in one sentence
        for figure in figures(section):
            assert_one_sentence(figure.caption)


# -- a study that is not a campaign ----------------------------------------------------------


def test_a_plain_study_has_choices_but_no_curves_or_workers(sqlite_url):
    backend.ensure_schema(sqlite_url)
    storage = backend.open_storage(sqlite_url, heartbeat=False)
    study = optuna.create_study(study_name="plain", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + (t.suggest_categorical("kind", ["<i>a</i>", "b"]) == "b"), n_trials=6)
    data = collect(storage, sqlite_url, "plain")
    assert data.campaign is None and data.stages[0].plan is None and data.stages[0].epochs is None

    choices = choices_section(data)
    (figure,) = figures(choices)
    _, categories, _ = choice_traces(figure.figure, "kind")
    counts = {c: sum(t.params["kind"] == c for t in study.trials) for c in ("<i>a</i>", "b")}
    assert categories == [f"&lt;i&gt;a&lt;/i&gt; (n={counts['<i>a</i>']})", f"b (n={counts['b']})"]
    assert {r[6] for t in choices.items if isinstance(t, Table) for r in t.rows} == {"-"}

    curves = curves_section(data)
    assert not figures(curves) and "stored a learning curve" in words(curves)

    workers = workers_section(data)
    (timeline,) = figures(workers)
    assert {y for t in timeline.figure.data for y in t.y} == {NO_WORKER}
    assert sum(len(t.x) for t in timeline.figure.data) == 6
    assert "No trial records the worker" in words(workers)


# -- cases built directly ----------------------------------------------------------------------

T0 = datetime(2025, 1, 1, 12, 0, 0)
SPACE = {"params": {"activation": {"type": "choice", "choices": ["relu", "tanh"]},
                    "learning_rate": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}}}


def plan(stage: int = 1, *, stages: int = 1, epochs: int = 3, cv: int = 0) -> StagePlan:
    return StagePlan(campaign="c", stage=stage, stages=stages, trials=4, epochs=epochs, dataset="digits", space=SPACE, cv=cv)


def trial(number: int, outcome: str, *, value: float | None = None, epochs: int = 0, activation: str = "relu",
          worker: str | None = "w-1", start: int | None = None, seconds: float = 10.0, retry_of: int | None = None,
          reason: str | None = None, stage: int = 1) -> TrialView:
    curve = Curve(epoch=tuple(range(1, epochs + 1)), val_accuracy=tuple(0.5 + 0.1 * e for e in range(epochs)),
                  train_loss=tuple(2.0 - 0.3 * e for e in range(epochs)))
    started = T0 + timedelta(seconds=start if start is not None else 20 * number) if outcome != "WAITING" else None
    completed = started + timedelta(seconds=seconds) if started and outcome not in ("RUNNING",) else None
    record = TrialRecord(state="PRUNED" if outcome == "DIVERGED" else outcome, value=value, worker=worker,
                         reason=reason, curve=curve if outcome != "WAITING" else None,
                         timings=Timings(seconds * 0.8, seconds * 0.2) if completed else None)
    return TrialView(stage=stage, study=f"c/stage-{stage}", number=number, outcome=outcome, value=value,
                     params={"activation": activation, "learning_rate": 0.01}, record=record,
                     started=started, completed=completed, retry_of=retry_of)


def report(*trials: TrialView, stage_plan: StagePlan | None = None) -> ReportData:
    stage = StageView(study="c/stage-1", stage=1, plan=stage_plan or plan(), status="DONE", direction="maximize",
                      ranges=SPACE["params"], trials=tuple(trials))
    return ReportData(name="c", campaign="c", storage="sqlite:///x.db", stages=(stage,))


def all_sections(data: ReportData) -> list[Section]:
    return [choices_section(data), curves_section(data), workers_section(data)]


def test_no_trials_give_words_everywhere():
    for section in all_sections(report()):
        assert section.items and all(isinstance(item, Words) for item in section.items)
        assert "no trials" in words(section).lower()


def test_only_waiting_trials_give_words_everywhere():
    data = report(trial(0, "WAITING"), trial(1, "WAITING"))
    choices, curves, workers = all_sections(data)
    assert not figures(choices) and "No trial of stage 1 (c/stage-1) completed" in words(choices)
    assert not figures(curves) and "finished an epoch" in words(curves)
    assert not figures(workers) and "None of the 2 trials has started yet" in words(workers)


def test_every_trial_diverged_gives_words_not_axes():
    data = report(*(trial(n, "DIVERGED", epochs=n % 2, reason=f"diverged at epoch {n % 2 + 1}, step 3: loss 9 > 3x initial 2.30") for n in range(4)))
    choices, curves, workers = all_sections(data)
    for section in (choices, curves):
        assert not figures(section)
        assert "Every trial of stage 1 (c/stage-1) diverged (4 of 4)" in words(section)
        assert "diverged at epoch 1, step 3" in words(section)
    assert any(isinstance(item, Table) for item in choices.items)  # the counts are still there
    assert figures(workers)  # they ran: their times are real


def test_no_complete_trial_says_so_and_draws_what_went_furthest():
    data = report(trial(0, "PRUNED", epochs=2), trial(1, "FAIL", reason="boom"), trial(2, "PRUNED", epochs=1))
    choices, curves, _ = all_sections(data)
    assert not figures(choices) and "No trial of stage 1 (c/stage-1) completed (2 pruned, 1 fail)" in words(choices)
    (figure,) = figures(curves)
    assert "No trial of stage 1 (c/stage-1) completed" in words(curves)
    assert {t.legendgroup for t in figure.figure.data} == {"pruned"}
    assert all(len(t.x) for t in figure.figure.data)


def test_a_cross_validated_stage_has_no_curves_and_says_so():
    data = report(trial(0, "COMPLETE", value=0.9), stage_plan=plan(cv=3))
    curves = curves_section(data)
    assert not figures(curves) and "cross-validated (3 folds)" in words(curves)


def test_diverged_marks_sit_at_the_epoch_after_the_last_stored_one():
    data = report(
        trial(0, "COMPLETE", value=0.9, epochs=5),
        trial(1, "DIVERGED", epochs=3, reason="diverged at epoch 4, step 2: loss is nan"),
        trial(2, "DIVERGED", epochs=0, reason="diverged at epoch 1, step 9: loss is inf"),
    )
    (figure,) = figures(curves_section(data))
    (marks,) = [t for t in figure.figure.data if t.legendgroup == "diverged"]
    assert {hovered(h)[1]: x for h, x in zip(marks.hovertext, marks.x)} == {1: 4, 2: 1}
    assert all("diverged at epoch" in h for h in marks.hovertext)
    # They sit above every drawn loss, in the loss panel.
    assert marks.xaxis == "x" and min(marks.y) > max(v for t in figure.figure.data if t.xaxis == "x" and t is not marks for v in t.y)
    (line,) = [t for t in figure.figure.data if t.legendgroup == "diverged-lines" and t.xaxis == "x"]
    assert list(line.x) == [1, 2, 3] and line.opacity == common.FADED_OPACITY


def test_retries_and_requeued_trials_are_marked_on_the_timeline():
    data = report(
        trial(0, "FAIL", worker="w-1", reason="worker stopped"),
        trial(1, "COMPLETE", value=0.8, epochs=3, worker="w-2", retry_of=0),
        trial(2, "RUNNING", worker="w-1", start=100),
    )
    section = workers_section(data)
    timeline = figures(section)[0].figure
    marked = {hovered(h)[1]: (t.marker.pattern.shape[i], h) for t in timeline.data for i, h in enumerate(t.hovertext)}
    assert marked[0][0] == REQUEUED_PATTERN and "queued again as trial #1" in marked[0][1]
    assert marked[1][0] == RETRY_PATTERN and "retry of failed trial #0" in marked[1][1]
    assert marked[2][0] == "" and "so far" in marked[2][1]
    (table,) = [t for t in section.items if isinstance(t, Table)]
    assert [r[:7] for r in table.rows] == [("w-1", 2, 0, 0, 0, 1, 0), ("w-2", 1, 1, 0, 0, 0, 1)]


def test_many_trials_are_sampled_and_the_caption_says_so():
    many = [trial(n, "COMPLETE", value=n / 10_000, epochs=1, start=n, seconds=0.5, worker=f"w-{n % 7}") for n in range(common.MAX_POINTS + 500)]
    timeline = figures(workers_section(report(*many)))[0]
    drawn = [hovered(h)[1] for t in timeline.figure.data for h in t.hovertext]
    assert len(drawn) <= common.MAX_POINTS + 1 and max(drawn) == len(many) - 1  # the best is kept
    assert "sampled" in timeline.caption
    assert_one_sentence(timeline.caption)
    # Boxes, not thousands of dots, per choice; and ten curves however big the stage.
    (choices,) = figures(choices_section(report(*many)))
    (complete,) = [t for t in choices.figure.data if t.type == "box" and t.name == "complete"]
    assert complete.boxpoints == "outliers" and "sampled" in choices.caption
    assert_one_sentence(choices.caption)
    (curves,) = figures(curves_section(report(*many)))
    assert len({t.legendgroup for t in curves.figure.data}) == 10


def test_choices_that_read_alike_stay_apart():
    # pca_components 1 (one direction) and 1.0 (all the variance) are different choices.
    ranges = {"pca_components": {"type": "choice", "choices": [1, 1.0]}}
    trials = [replace(trial(n, "COMPLETE", value=0.5 + n / 10), params={"pca_components": v}) for n, v in enumerate((1, 1, 1.0))]
    stage = StageView(study="c/stage-1", stage=1, plan=plan(), status="DONE", direction="maximize", ranges=ranges, trials=tuple(trials))
    section = choices_section(ReportData(name="c", campaign="c", storage="sqlite:///x.db", stages=(stage,)))
    (figure,) = figures(section)
    _, categories, boxes = choice_traces(figure.figure, "pca_components")
    assert categories == ["1 (n=2)", "1.0 (n=1)"]
    (complete,) = [b for b in boxes if b.name == "complete"]
    assert sorted(zip(complete.x, complete.y)) == [("1 (n=2)", 0.5), ("1 (n=2)", 0.6), ("1.0 (n=1)", 0.7)]
    (table,) = [t for t in section.items if isinstance(t, Table)]
    assert [r[1:4] for r in table.rows] == [("1", 2, 2), ("1.0", 1, 1)]

"""`hpo report`: real campaigns written as reports, the figures' data checked against the database.

What a user checks on the page: the bands are the ranges the stages searched, the counts are
the trials' states, each mark is a trial with its stored parameters and value, the best trial is
marked, and where there is nothing to draw the page says why in words.
"""

from __future__ import annotations

import html
import math
import re
import subprocess
import sys
from datetime import datetime, timedelta

import optuna
import pytest
from sqlalchemy.engine import make_url

from hpo.campaign import CampaignSpec, StageFailed, run_campaign
from hpo.report import banner, default_path, render, sections, write_report
from hpo.report.collect import OUTCOMES, ReportData, StageView, TrialView, collect
from hpo.report.common import MAX_POINTS
from hpo.report.page import Figure, Words
from hpo.report.sections_search import coarse_section, history_section, importance_section, summary_section
from storage import backend, records, states
from tests.helpers import assert_one_sentence, make_stage, page_captions, worker_env
from workers import stageplan
from workers.record import Curve, TrialRecord
from workers.space import build_space
from workers.stageplan import StagePlan

pytestmark = pytest.mark.slow

# Small and fast, with a learning-rate range wide enough that some trials diverge.
PARAMS = ["hidden_sizes=32", "batch_size=128", "learning_rate=log:1e-4..30"]


class Quiet:
    def stage_started(self, plan, resumed): ...
    def stage_progress(self, plan, counts, best): ...
    def stage_narrowed(self, parent, child, result): ...
    def message(self, text): ...


def run_small_campaign(url: str, name: str, *, params=PARAMS, stages: int = 2, trials=(12, 6), epochs=(1, 2)) -> None:
    space = build_space(None, None, list(params))
    spec = CampaignSpec(name=name, space=space, stages=stages, trials=list(trials), epochs=list(epochs))
    run_campaign(url, spec, Quiet(), workers=1)


def figures(section) -> list[Figure]:
    return [item for item in section.items if isinstance(item, Figure)]


def words(section) -> str:
    return " ".join(item.text for item in section.items if isinstance(item, Words))


def marks(figure) -> dict[int, tuple[float, float]]:
    """Trial number -> (x, y) of every trial mark (hover text starts with 'STUDY #N')."""
    found = {}
    for trace in figure.data:
        if trace.text is None or trace.mode != "markers":
            continue
        for x, y, text in zip(trace.x, trace.y, trace.text):
            number = int(text.split("#", 1)[1].split("<", 1)[0])
            found[number] = (x, y)
    return found


@pytest.fixture(scope="module")
def campaign_url(module_storage_url):
    """Campaign r1 (two stages), built once on SQLite and once on PostgreSQL."""
    run_small_campaign(module_storage_url, "r1")
    return module_storage_url


def test_the_figures_show_what_the_database_holds(campaign_url):
    storage = backend.open_storage(campaign_url)
    data = collect(storage, campaign_url, "r1")
    plans = stageplan.campaign_stages(storage, "r1")
    assert [s.study for s in data.stages] == ["r1/stage-1", "r1/stage-2"]

    coarse = figures(coarse_section(data))
    lr_figures = [f for f in coarse if f.figure.layout.xaxis.title.text == "learning_rate"]
    assert len(lr_figures) == 2
    for figure, plan, child in zip(lr_figures, plans, [*plans[1:], None]):
        study = optuna.load_study(study_name=plan.study_name, storage=campaign_url)
        finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        # Each mark is a trial at its stored learning rate and value (pruned and diverged ones at
        # the last accuracy they reached, or at the floor when they reached none).
        drawn = marks(figure.figure)
        assert set(drawn) == {t.number for t in finished}
        for t in finished:
            x, y = drawn[t.number]
            assert x == t.params["learning_rate"]
            if t.state.name == "COMPLETE":
                assert y == t.value
        # The bands: the range this stage searched, and the range the next one searches.
        bands = sorted((s.x0, s.x1) for s in figure.figure.layout.shapes)
        space = plan.space["params"]["learning_rate"]
        expected = [(space["low"], space["high"])]
        if child is not None:
            narrowed = child.space["params"]["learning_rate"]
            expected.append((narrowed["low"], narrowed["high"]))
        assert bands == sorted(expected)
        assert figure.figure.layout.xaxis.type == "log"
        # The star is the stage's best trial.
        star = [tr for tr in figure.figure.data if tr.marker.symbol == "star"][0]
        assert star.y[0] == study.best_value and star.x[0] == study.best_params["learning_rate"]
        assert figure.caption.endswith(".")

    # History: every finished trial once, the best-so-far line ends at the campaign's best.
    history = figures(history_section(data))[0].figure
    points = [n for tr in history.data if tr.mode == "markers" for n in tr.text]
    total = sum(len([t for t in optuna.load_study(study_name=p.study_name, storage=campaign_url).trials
                     if t.state.name in ("COMPLETE", "PRUNED")]) for p in plans)
    assert len(points) == total
    line = [tr for tr in history.data if tr.mode == "lines"][0]
    best = max(records.best_value(storage, p.study_name) for p in plans)
    assert line.y[-1] == pytest.approx(best)

    # Importance: Optuna's public API on each stage, the bars equal its numbers.
    importance = figures(importance_section(data))
    assert importance
    bars = {tr.xaxis: dict(zip(tr.y, tr.x)) for tr in importance[0].figure.data}
    for stage in data.stages:
        assert stage.importance is not None and math.isclose(sum(stage.importance.values()), 1.0, abs_tol=1e-6)
    assert list(bars.values())[0] == pytest.approx(dict(data.stages[0].importance))

    # The whole page: self-contained, no address to fetch anything from.
    page = render(data)
    assert "<script src=" not in page and "cdn.plot.ly" not in page.replace("https://cdn.plot.ly", "")
    assert page.count('data-figure') >= 4
    storage.engine.dispose()


def page_tables(page: str, section: str) -> list[list[list[str]]]:
    """The tables of one section of a report page as a reader sees them: each a list of rows
    (the header row too), each row its cells' text."""
    part = page.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
    return [
        [[html.unescape(cell) for cell in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)] for row in re.findall(r"<tr>(.*?)</tr>", table)]
        for table in re.findall(r"<table>(.*?)</table>", part, flags=re.S)
    ]


def shows(text: str, value) -> bool:
    """Whether ``text`` is how the page writes the stored ``value``: a float to 4 digits (after
    the point, or significant), a boolean as true/false, anything else as it is."""
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, float):
        return float(text) == pytest.approx(value, rel=5e-4, abs=5e-5)
    return text == str(value)


def clock_seconds(text: str) -> int:
    """"1:02:03" or "2:03" as seconds."""
    seconds = 0
    for part in text.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds


def test_the_summary_shows_what_the_database_holds(campaign_url):
    """Each field of the summary, as the page shows it, against the stages' plans, the trials
    and the final retrain's result read back through Optuna."""
    storage = backend.open_storage(campaign_url)
    plans = stageplan.campaign_stages(storage, "r1")
    studies = [optuna.load_study(study_name=plan.study_name, storage=storage) for plan in plans]
    trials = [t for study in studies for t in study.trials]
    result = studies[-1].user_attrs[records.RESULT_ATTR]
    page = render(collect(storage, campaign_url, "r1"))
    counts = [records.count_outcomes(storage, plan.study_name) for plan in plans]
    storage.engine.dispose()
    overview, per_stage, best = page_tables(page, "summary")

    fields = dict(overview)
    assert fields["campaign"] == "r1" and fields["status"] == "finished"
    assert fields["dataset"] == plans[0].dataset == studies[0].user_attrs[records.PLAN_ATTR]["dataset"]
    assert fields["storage"] == campaign_url  # no password in it to mask
    assert fields["stages"] == f"{len(plans)} of {plans[0].stages}" == "2 of 2"
    started = [t for t in trials if t.datetime_start is not None]
    wall = max(t.datetime_complete for t in trials if t.datetime_complete) - min(t.datetime_start for t in started)
    clock, _, how = fields["wall time"].partition(" ")
    assert clock_seconds(clock) == round(wall.total_seconds()) and how == "(first trial's start to last trial's end)"
    workers = sorted({t.user_attrs["worker"] for t in started})
    assert fields["workers"] == f"{len(workers)}: {', '.join(workers)}"

    # Per stage: its budget and epochs as planned, its trials per outcome, its best value, its status.
    assert per_stage[0] == ["stage", "budget", "epochs", *(o.lower() for o in OUTCOMES), "best", "status"]
    for row, plan, study, stored in zip(per_stage[1:], plans, studies, counts, strict=True):
        assert row[:3] == [plan.study_name, str(plan.trials), str(plan.epochs)]
        assert dict(zip(OUTCOMES, map(int, row[3:3 + len(OUTCOMES)]))) == {o: stored.get(o, 0) for o in OUTCOMES}
        assert shows(row[-2], study.best_value) and row[-1] == study.user_attrs[records.STATUS_ATTR] == records.DONE

    # The best configuration is the one the final retrain took, with its validation accuracy and
    # the retrain's train and test accuracy.
    (chosen,) = [t for study, plan in zip(studies, plans) for t in study.trials
                 if plan.study_name == result["study"] and t.number == result["trial"]]
    assert best[0] == ["best configuration", f"{result['study']} #{result['trial']}"]
    rows = dict(best[1:])
    accuracies = {"validation accuracy": chosen.value, "final retrain: train accuracy": result["train_accuracy"],
                  "final retrain: test accuracy": result["test_accuracy"]}
    assert list(rows) == [*result["params"], *accuracies]
    assert result["params"] == chosen.params and result["val_accuracy"] == chosen.value
    for name, value in [*result["params"].items(), *accuracies.items()]:
        assert shows(rows[name], value), (name, rows[name], value)


def test_every_figure_caption_of_a_report_is_one_sentence(campaign_url, tmp_path):
    """As the page shows them: one caption under each figure, each a single sentence."""
    storage = backend.open_storage(campaign_url)
    page = write_report(storage, campaign_url, "r1", tmp_path / "r1.html").read_text(encoding="utf-8")
    storage.engine.dispose()
    captions = page_captions(page)
    assert len(captions) == page.count("data-figure") >= 10  # every section's figures, the initialization experiment's too
    for caption in captions:
        assert_one_sentence(caption)


def test_a_caption_stays_one_sentence_with_its_notes_on_sampling_and_a_conditional_parameter():
    """A stage of more trials than a figure draws, whose learning rate is searched only with
    one optimizer: the notes go into the caption's one sentence."""
    ranges = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "when": {"optimizer": ["sgd"]}},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": False},
        "activation": {"type": "choice", "choices": ["relu", "tanh"]},
        "batch_norm": {"type": "choice", "choices": [False]},
    }
    plan = StagePlan(campaign="many", stage=1, stages=2, trials=MAX_POINTS + 100, epochs=2, dataset="digits", space={"params": ranges})
    start = datetime(2025, 1, 1)
    trials = tuple(
        TrialView(
            stage=1, study="many/stage-1", number=n, outcome="COMPLETE" if n % 3 else "PRUNED", value=n / 10_000 if n % 3 else None,
            params={"learning_rate": 10 ** (-4 + 4 * n / MAX_POINTS), "weight_decay": n / 100_000, "activation": ("relu", "tanh")[n % 2],
                    "batch_norm": False, "optimizer": "sgd"},
            record=TrialRecord(state="COMPLETE" if n % 3 else "PRUNED", worker=f"w-{n % 3}",
                               curve=Curve(epoch=(1, 2), train_loss=(1.0, 0.5), val_accuracy=(0.5, n / 10_000))),
            started=start + timedelta(seconds=n), completed=start + timedelta(seconds=n + 1), retry_of=None,
        )
        for n in range(MAX_POINTS + 100)
    )
    stage = StageView(study="many/stage-1", stage=1, plan=plan, status="done", direction="maximize", ranges=ranges, trials=trials)
    data = ReportData(name="many", campaign="many", storage="sqlite:///many.db", stages=(stage,), planned_stages=2)
    captions = [item.caption for section in sections(data) for item in section.items if isinstance(item, Figure)]
    assert any("learning_rate is sampled only with optimizer sgd" in c and "sampled evenly" in c for c in captions), captions
    assert sum("sampled evenly" in c for c in captions) >= 4  # coarse to fine, the pair, history, choices, timeline
    assert any("fixed in this stage: batch_norm=false" in c for c in captions), captions
    for caption in captions:
        assert_one_sentence(caption)


def test_importances_are_reproducible(sqlite_url):
    run_small_campaign(sqlite_url, "imp", stages=1, trials=(10,), epochs=(1,))
    storage = backend.open_storage(sqlite_url)
    first = collect(storage, sqlite_url, "imp").stages[0].importance
    second = collect(storage, sqlite_url, "imp").stages[0].importance
    assert first == second


def test_a_running_campaign_says_so_and_shows_what_exists(sqlite_url):
    storage, plan = make_stage(sqlite_url, "busy", trials=4, stages=2)
    data = collect(storage, sqlite_url, "busy")
    assert data.running
    assert "Not finished" in banner(data) and "stage 1 of 2" in banner(data)  # no trial runs yet
    assert "No trial has completed yet" in words(summary_section(data))
    assert "no trial has finished yet" in words(coarse_section(data))
    assert "No trial has finished yet" in words(history_section(data))
    assert "at least 2 complete trials" in words(importance_section(data))
    assert "one stage so far" in words(coarse_section(data))
    assert not figures(coarse_section(data)) and not figures(history_section(data))
    render(data)  # the page is written all the same


def every_words(data) -> str:
    """All the paragraphs of a report (not its tables or captions), one after the other."""
    return " ".join(words(section) for section in sections(data))


# A running campaign's words: what it has not done yet may still come.
NOT_YET = re.compile(r"\b(yet|so far)\b")


def test_a_finished_campaign_of_one_stage_says_it_has_one_stage_not_one_so_far(sqlite_url):
    run_small_campaign(sqlite_url, "single", stages=1, trials=(4,), epochs=(1,))
    data = collect(backend.open_storage(sqlite_url), sqlite_url, "single")
    assert not data.running and banner(data) is None
    assert dict(summary_section(data).items[0].rows)["status"] == "finished"
    assert "This campaign has one stage: nothing was narrowed." in words(coarse_section(data))
    assert not NOT_YET.search(every_words(data)), every_words(data)


def test_a_running_campaign_planned_with_one_stage_does_not_promise_a_narrowing(sqlite_url):
    storage, _ = make_stage(sqlite_url, "solo", trials=4, stages=1)
    data = collect(storage, sqlite_url, "solo")
    assert data.running
    assert "This campaign has one stage, so nothing is narrowed." in words(coarse_section(data))


def test_every_trial_diverged_is_said_in_words(sqlite_url):
    """A finished campaign whose trials all diverged: no trial completed, and none will."""
    params = ["hidden_sizes=32", "batch_size=128", "learning_rate=log:1e3..1e4", "optimizer=sgd", "batch_norm=false"]
    with pytest.raises(StageFailed, match="no trial of the campaign completed"):
        run_small_campaign(sqlite_url, "boom", params=params, stages=1, trials=(4,), epochs=(1,))
    storage = backend.open_storage(sqlite_url)
    data = collect(storage, sqlite_url, "boom")
    assert {t.outcome for t in data.trials} == {"DIVERGED"} and not data.running
    assert "Every trial diverged" in banner(data)
    assert "No trial completed, so there is no best configuration." in words(summary_section(data))
    assert "This campaign has one stage: nothing was narrowed." in words(coarse_section(data))
    assert "at least 2 complete trials" in words(importance_section(data))
    assert not NOT_YET.search(every_words(data)), every_words(data)


def test_a_campaign_stopped_by_failures_says_what_its_trials_did_in_the_past(sqlite_url):
    """Its first stage of two failed (every trial failed, as the failure budget stops one): it
    ended there, nothing will finish or be narrowed later."""
    storage, plan = make_stage(sqlite_url, "broke", trials=4, stages=2)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    for _ in range(3):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    records.mark_stage_failed(storage, plan.study_name, "3 trials in a row failed")
    data = collect(storage, sqlite_url, "broke")
    assert data.failed and not data.running and "This campaign stopped" in banner(data)
    assert "No trial completed, so there is no best configuration." in words(summary_section(data))
    assert f"{plan.study_name}: no trial completed, was pruned or diverged (3 fail), so there is nothing to draw." in words(coarse_section(data))
    assert "This campaign stopped in its first stage of 2: nothing was narrowed." in words(coarse_section(data))
    assert "No trial completed, was pruned or diverged (3 fail), so there is nothing to draw." in words(history_section(data))
    assert not NOT_YET.search(every_words(data)), every_words(data)


def test_a_stage_whose_finished_trials_all_lack_a_conditional_learning_rate_says_so():
    ranges = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "when": {"optimizer": ["sgd"]}}}
    trials = tuple(
        TrialView(stage=1, study="c/stage-1", number=n, outcome="COMPLETE", value=0.5, params={"optimizer": "adam"},
                  record=TrialRecord(state="COMPLETE", value=0.5), started=None, completed=None, retry_of=None)
        for n in range(3)
    )
    stage = StageView(study="c/stage-1", stage=1, plan=None, status="done", direction="maximize", ranges=ranges, trials=trials)
    data = ReportData(name="c", campaign="c", storage="sqlite:///c.db", stages=(stage,))
    assert "c/stage-1: none of its 3 finished trials has learning_rate, so there is nothing to draw." in words(coarse_section(data))


def test_a_plain_optuna_study_gets_a_report_with_its_name_shown_literally(sqlite_url, tmp_path):
    backend.ensure_schema(sqlite_url)
    name = '<script>alert("x")</script> & co'
    study = optuna.create_study(study_name=name, storage=sqlite_url, direction="maximize")
    study.optimize(lambda t: -((t.suggest_float("learning_rate", 1e-4, 1, log=True) - 0.01) ** 2) + t.suggest_float("weight_decay", 0, 1),
                   n_trials=8)
    storage = backend.open_storage(sqlite_url)
    path = write_report(storage, sqlite_url, name, tmp_path / "plain.html")
    page = path.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    data = collect(storage, sqlite_url, name)
    coarse = figures(coarse_section(data))
    assert len(coarse) == 2  # learning rate, and the pair with the second numeric parameter
    pair = coarse[1].figure
    assert pair.layout.xaxis.title.text == "learning_rate" and pair.layout.yaxis.title.text == "weight_decay"
    assert list(pair.data[0].marker.color) == [t.value for t in study.trials]
    assert default_path(name).name == "script-alert-x-script-co-report.html"


# The report's sections, by their ids, in the order issue 11 lists them.
SECTION_KEYS = ("summary", "coarse-to-fine", "choices", "history", "importance", "learning-curves", "layers", "workers",
                "why-initialization")
HPO_REPORT = [sys.executable, "-c", "import hpo; hpo.main()", "report"]


def assert_complete_page(page: str) -> None:
    """A whole report: the document from its doctype to its end, Plotly's script inside it, every
    section, and a drawing call for every figure."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</body></html>")
    assert len(page) > 1_000_000 and "Plotly.newPlot" in page  # plotly.js itself, some 4.6 MB
    assert re.findall(r'<section id="([^"]+)">', page) == list(SECTION_KEYS)
    drawn = re.findall(r'<div class="figure" id="(figure-\d+)" data-figure></div>', page)
    assert drawn and re.findall(r'hpoDraw\("(figure-\d+)", ', page) == drawn


def test_report_cli_writes_the_page_where_told_and_refuses_bad_names_in_one_line(sqlite_url, tmp_path):
    run_small_campaign(sqlite_url, "cli", stages=1, trials=(4,), epochs=(1,))
    hpo = HPO_REPORT
    env = worker_env(sqlite_url)
    done = subprocess.run([*hpo, "cli"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cli-report.html"
    assert_complete_page((tmp_path / "cli-report.html").read_text(encoding="utf-8"))
    (tmp_path / "out").mkdir()
    told = subprocess.run([*hpo, "cli", "-o", "out/page.html"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert told.returncode == 0, told.stderr
    assert told.stdout == "out/page.html\n" and told.stderr == ""
    assert_complete_page((tmp_path / "out" / "page.html").read_text(encoding="utf-8"))
    missing = subprocess.run([*hpo, "nope"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip() == "Error: no campaign or study named 'nope' in this storage"
    no_folder = subprocess.run([*hpo, "cli", "-o", str(tmp_path / "no" / "r.html")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert no_folder.returncode == 2 and len(no_folder.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()


PASSWORD = "report-pw-5d1e"  # trust authentication takes any password; the page must not show it


@pytest.mark.postgres
def test_a_report_over_a_password_shows_the_storage_masked_and_the_password_nowhere(postgres_url, tmp_path):
    """The password given as the documented file (HPO_DB_PASSWORD_FILE) and in the URL itself."""
    run_small_campaign(postgres_url, "pw", stages=1, trials=(3,), epochs=(1,))
    secret = tmp_path / "db_password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    plain = make_url(postgres_url)
    in_url = plain.set(password=PASSWORD).render_as_string(hide_password=False)
    assert PASSWORD in in_url
    masked = f"postgresql+psycopg://{plain.username}:***@{plain.host}:{plain.port}/{plain.database}"
    for way, env in [("file", worker_env(postgres_url, HPO_DB_PASSWORD_FILE=str(secret))), ("url", worker_env(in_url))]:
        env.pop("HPO_TEST_POSTGRES", None)
        done = subprocess.run([*HPO_REPORT, "pw", "-o", f"{way}.html"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr, way
        page = (tmp_path / f"{way}.html").read_text(encoding="utf-8")
        assert PASSWORD not in page, way
        overview = dict(page_tables(page, "summary")[0])
        assert overview["storage"] == masked, way


def test_search_writes_the_report_at_the_end_unless_told_not_to(sqlite_url, tmp_path):
    base = [sys.executable, "-c", "import hpo; hpo.main()", "search", "--stages", "1", "--trials", "3", "--epochs", "1",
            "--workers", "1", "--param", "hidden_sizes=32", "--param", "batch_size=128", "--json"]
    env = worker_env(sqlite_url)
    done = subprocess.run([*base, "--name", "s1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import json

    assert json.loads(done.stdout)["report"] == "s1-report.html" and (tmp_path / "s1-report.html").exists()
    skipped = subprocess.run([*base, "--name", "s2", "--no-report"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout)["report"] is None and not (tmp_path / "s2-report.html").exists()
    assert states.DIVERGED_REASON_PREFIX  # the outcome names the report uses are storage's


@pytest.mark.browser
def test_reports_load_offline_in_a_browser_with_every_figure_drawn(sqlite_url, tmp_path):
    """Each kind of report a user meets, opened in headless Chromium with the network shut off:
    a finished campaign, one still running, one whose every trial diverged, and a plain study."""
    from tests.browser import check_page

    run_small_campaign(sqlite_url, "done")
    make_stage(sqlite_url, "busy", trials=4, stages=2)
    with pytest.raises(StageFailed):
        run_small_campaign(sqlite_url, "boom", params=["hidden_sizes=32", "batch_size=128", "learning_rate=log:1e3..1e4",
                                                       "optimizer=sgd", "batch_norm=false"], stages=1, trials=(3,), epochs=(1,))
    study = optuna.create_study(study_name="plain <b>study</b>", storage=sqlite_url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("learning_rate", 1e-4, 1, log=True), n_trials=5)
    storage = backend.open_storage(sqlite_url)
    for name, says in [("done", None), ("busy", "Not finished"), ("boom", "Every trial diverged"), ("plain <b>study</b>", None)]:
        path = write_report(storage, sqlite_url, name, tmp_path / f"{default_path(name)}")
        check = check_page(path)
        assert check.problems() == [], (name, check.problems())
        assert not check.blank and check.figures, name
        assert all(f.drawn for f in check.figures), name
        if says:
            assert says in check.text, name
    assert "plain <b>study</b>" in check.text  # shown literally, not as bold markup

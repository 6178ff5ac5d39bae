"""`hpo report` as users break it: odd names, odd studies, odd places to write to.

Each test is a case a review found wrong, checked the way a user meets it: the command's exit
status and its one line, the words and figures of the page against the database.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import optuna
import pytest

from hpo.output import visible
from hpo.report import ReportPathError, banner, default_path, render, target_path
from hpo.report.collect import collect
from hpo.report.page import Figure, Words
from hpo.report.sections_search import coarse_section, history_section, importance_section, summary_section
from hpo.report.sections_trials import choices_section, curves_section
from storage import backend
from tests.helpers import make_stage, worker_env

HPO = [sys.executable, "-c", "import hpo; hpo.main()"]


def hpo(url: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*HPO, *args], cwd=cwd, env=worker_env(url), capture_output=True, text=True, timeout=300)


def plain_study(url: str, name: str, n_trials: int = 3, **create) -> optuna.Study:
    """A study hpo did not create, with a learning rate searched."""
    backend.ensure_schema(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, **create)
    study.optimize(lambda t: t.suggest_float("learning_rate", 1e-4, 1, log=True), n_trials=n_trials)
    return study


# -- where the page is written -----------------------------------------------------------------
def test_a_study_name_too_long_for_a_file_name_gets_a_default_file_that_fits(sqlite_url, tmp_path):
    name = "L" * 400  # Optuna takes names of up to 512 characters; a file name ends at 255 bytes
    plain_study(sqlite_url, name)
    done = hpo(sqlite_url, "report", name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / done.stdout.strip()
    assert written.is_file() and len(written.name) <= 255 and written.name.endswith("-report.html")
    # The same name given with -o is the user's to shorten: one line, exit 2, no traceback.
    too_long = hpo(sqlite_url, "report", name, "-o", f"{name}.html", cwd=tmp_path)
    assert too_long.returncode == 2 and "Traceback" not in too_long.stderr
    assert len(too_long.stderr.strip().splitlines()) == 1 and "too long" in too_long.stderr


def test_a_file_name_near_the_limit_is_written_in_place(sqlite_url, tmp_path):
    plain_study(sqlite_url, "s")
    target = "r" * 250 + ".html"  # 255 bytes: a valid name, whatever the temporary file's is
    done = hpo(sqlite_url, "report", "s", "-o", target, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / target).is_file() and [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_a_target_that_is_not_a_regular_file_is_refused_and_left_as_it_is(sqlite_url, tmp_path):
    # Written atomically (a temporary file renamed over the target), a report sent to a pipe, or
    # as root to /dev/null, would put a regular file in its place.
    plain_study(sqlite_url, "s")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done = hpo(sqlite_url, "report", "s", "-o", str(fifo), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"Error: cannot write the report to {fifo}: it is not a regular file"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    with pytest.raises(ReportPathError, match="not a regular file"):
        target_path("s", fifo)


# -- what the page says ------------------------------------------------------------------------
def test_a_study_whose_every_trial_failed_is_not_said_to_have_diverged(sqlite_url):
    backend.ensure_schema(sqlite_url)
    study = optuna.create_study(study_name="errors", storage=sqlite_url)

    def broken(trial):
        trial.suggest_float("learning_rate", 1e-4, 1, log=True)
        raise RuntimeError("out of memory")

    study.optimize(broken, n_trials=3, catch=(RuntimeError,))
    data = collect(backend.open_storage(sqlite_url), sqlite_url, "errors")
    assert {t.outcome for t in data.trials} == {"FAIL"}
    assert "diverged" not in (banner(data) or "")
    # Nothing runs in it any more: what did not happen is said in the past, not as "yet".
    assert "No trial completed, so there is no best configuration." in words(summary_section(data))
    assert "errors: no trial completed, was pruned or diverged (3 fail), so there is nothing to draw." in words(coarse_section(data))
    assert "No trial completed, was pruned or diverged (3 fail), so there is nothing to draw." in words(history_section(data))


def words(section) -> str:
    return " ".join(item.text for item in section.items if isinstance(item, Words))


def figures(section) -> list[Figure]:
    return [item for item in section.items if isinstance(item, Figure)]


def test_a_multi_objective_study_is_said_so_rather_than_drawn_at_made_up_values(sqlite_url):
    backend.ensure_schema(sqlite_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="two goals", storage=sqlite_url, directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("learning_rate", 1e-4, 1, log=True), t.suggest_float("weight_decay", 0, 1)), n_trials=6)
    data = collect(backend.open_storage(sqlite_url), sqlite_url, "two goals")
    assert {t.outcome for t in data.trials} == {"COMPLETE"}
    assert "several objectives" in banner(data)
    summary = words(summary_section(data))
    assert "No trial has completed" not in summary and "several objectives" in summary
    # Every trial has two values, none a single one: no mark may stand at a value it never had.
    assert not figures(coarse_section(data)) and not figures(history_section(data))
    assert "has a value to draw" in words(coarse_section(data)) and "has a value to draw" in words(history_section(data))
    assert "completed" not in words(choices_section(data)).replace("6 complete", "")


def test_pruned_trials_without_a_value_are_said_so_rather_than_drawn_at_zero(sqlite_url):
    backend.ensure_schema(sqlite_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="pruned early", storage=sqlite_url, direction="maximize")

    def pruned(trial):
        trial.suggest_float("learning_rate", 1e-4, 1, log=True)
        raise optuna.TrialPruned()

    study.optimize(pruned, n_trials=3)
    data = collect(backend.open_storage(sqlite_url), sqlite_url, "pruned early")
    assert not figures(coarse_section(data)) and not figures(history_section(data))
    assert "has a value to draw (3 pruned)" in words(coarse_section(data))
    assert "has a value to draw (3 pruned)" in words(history_section(data))


def test_a_plain_study_s_value_is_its_objective_value_not_a_validation_accuracy(sqlite_url):
    # A study hpo did not create minimizes or maximizes whatever its objective returns.
    backend.ensure_schema(sqlite_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="loss", storage=sqlite_url)
    study.optimize(lambda t: t.suggest_float("x", 1e-3, 10, log=True) + t.suggest_float("y", 0, 1), n_trials=6)
    data = collect(backend.open_storage(sqlite_url), sqlite_url, "loss")
    sections = [summary_section(data), coarse_section(data), history_section(data), importance_section(data)]
    for section in sections:
        for item in section.items:
            shown = [item.text] if isinstance(item, Words) else [item.caption] if isinstance(item, Figure) else [
                str(cell) for row in item.rows for cell in row]
            if isinstance(item, Figure):
                layout = item.figure.layout
                shown += [layout.xaxis.title.text or "", layout.yaxis.title.text or ""]
            for text in shown:
                assert "accuracy" not in text, (section.key, text)
                assert "activation" not in text and "batch norm" not in text, (section.key, text)
                assert "retrain" not in text, (section.key, text)
    coarse = figures(coarse_section(data))[0]
    assert coarse.figure.layout.yaxis.title.text == "objective value"


def section_texts(section) -> list[str]:
    """Every sentence a reader meets in a section: words, captions, table cells, figure titles."""
    texts = []
    for item in section.items:
        if isinstance(item, Words):
            texts.append(item.text)
        elif isinstance(item, Figure):
            texts += [item.caption, item.figure.layout.title.text or ""]
        else:
            texts += [item.caption, *(str(cell) for row in item.rows for cell in row)]
    return texts


@pytest.mark.slow
def test_a_stage_study_reported_alone_is_named_by_its_stage_and_knows_its_next_stage(sqlite_url):
    from tests.test_report import run_small_campaign

    run_small_campaign(sqlite_url, "c", stages=2, trials=(8, 4), epochs=(1, 1))
    storage = backend.open_storage(sqlite_url)
    campaign = collect(storage, sqlite_url, "c")
    first, second = (collect(storage, sqlite_url, f"c/stage-{k}") for k in (1, 2))

    assert second.stages[0].stage == 2 and {t.stage for t in second.trials} == {2}
    for section in (choices_section(second), curves_section(second), history_section(second)):
        assert not any("stage 1" in text.lower() for text in section_texts(section)), section.key

    # Stage 1 alone shows how stage 2 was narrowed from it, as the campaign's report does.
    assert first.stages[0].child_ranges == campaign.stages[0].child_ranges
    assert first.stages[0].narrowing == campaign.stages[0].narrowing and first.stages[0].narrowing
    choices = " ".join(section_texts(choices_section(first)))
    assert "not planned yet" not in choices and "kept" in choices
    # The campaign's final retrain ran; stage 1's report does not say it has yet to run.
    summary = " ".join(section_texts(summary_section(first)))
    assert "not yet" not in summary and "hpo report c" in summary


def test_a_campaign_with_nothing_running_is_not_said_to_be_running(sqlite_url):
    # What a campaign stopped with Ctrl-C leaves (or one whose workers have not started yet):
    # a stage open, no trial running or queued. Nothing will change until it is resumed.
    storage, _ = make_stage(sqlite_url, "paused", trials=4, stages=2)
    data = collect(storage, sqlite_url, "paused")
    said = banner(data)
    assert "Still running" not in said and "Not finished" in said and "stage 1 of 2" in said
    assert "hpo search --name paused" in said
    status = dict(summary_section(data).items[0].rows)["status"]
    assert status != "running"
    # Once a worker runs a trial, it is running again.
    optuna.load_study(study_name="paused/stage-1", storage=sqlite_url).ask()
    data = collect(storage, sqlite_url, "paused")
    assert "Still running (stage 1 of 2; 1 trial running" in banner(data)
    assert dict(summary_section(data).items[0].rows)["status"] == "running"


@pytest.mark.slow
def test_search_stopped_by_a_failing_stage_says_where_it_wrote_the_report(sqlite_url, tmp_path):
    from workers.worker import Worker, WorkerOptions

    storage, plan = make_stage(sqlite_url, "boom", trials=20, epochs=1)
    storage.engine.dispose()

    def broken_trainer(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")

    worker = Worker(WorkerOptions(storage_url=sqlite_url, study=plan.study_name, poll_seconds=0.1), trainer=broken_trainer)
    worker.run()
    worker.close()
    done = hpo(sqlite_url, "search", "--name", "boom", "--workers", "0", cwd=tmp_path)
    assert done.returncode == 1 and "5 trials in a row failed" in done.stderr
    assert (tmp_path / "boom-report.html").is_file()
    assert "report: boom-report.html" in done.stderr


def test_names_in_other_scripts_keep_their_letters_in_the_default_file_name():
    # Written as "-" they left nothing, and two studies' reports fell on one file.
    assert default_path("数据").name == "数据-report.html" != default_path("实验").name
    assert default_path("étude 2").name == "étude-2-report.html"
    assert default_path("a\u202eb/c").name == "a-b-c-report.html"  # a bidi override is no letter
    assert len(default_path("数" * 300).name.encode()) <= 255


def test_infinite_values_that_no_figure_can_draw_are_said_missing(sqlite_url):
    # Optuna stores an objective's inf as a complete trial's value; a figure draws it nowhere
    # (JSON has no infinity), so the best trial's star and the best-so-far line vanish unsaid.
    backend.ensure_schema(sqlite_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="overflow", storage=sqlite_url, direction="maximize")
    for value in (0.5, float("inf"), 0.7):
        trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1, log=True)})
        study.tell(trial, value)
    data = collect(backend.open_storage(sqlite_url), sqlite_url, "overflow")
    assert "1 trial stored an infinite value" in banner(data)
    plain_study(sqlite_url, "finite")
    assert banner(collect(backend.open_storage(sqlite_url), sqlite_url, "finite")) is None


ODD_NAME = '<script>alert("x")</script> &amp; \'q\' a/b %{y} 数据 \u202eevil'


def odd_studies(url: str) -> list[str]:
    """Plain Optuna studies a user may point hpo report at, each odd in its own way."""
    backend.ensure_schema(url)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lr = optuna.distributions.FloatDistribution(1e-4, 1, log=True)

    def told(name, values, **create):
        study = optuna.create_study(study_name=name, storage=url, **create)
        for value in values:
            trial = study.ask({"learning_rate": lr})
            trial.set_user_attr("worker", "<b>host</b> & co")
            study.tell(trial, value, state=None if value is not None else optuna.trial.TrialState.PRUNED)

    study = optuna.create_study(study_name=ODD_NAME, storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("learning_rate", 1e-4, 1, log=True)
                   + t.suggest_int("width", 1, 8) * len(t.suggest_categorical("act", ["<i>a</i>", "&lt;", "%{x}"])), n_trials=8)
    optuna.create_study(study_name="L" * 400, storage=url).optimize(lambda t: t.suggest_int("k", 1, 3), n_trials=4)
    optuna.create_study(study_name="two goals", storage=url, directions=["maximize", "minimize"]).optimize(
        lambda t: (t.suggest_float("learning_rate", 1e-4, 1, log=True), t.suggest_float("weight_decay", 0, 1)), n_trials=5)
    told("pruned early", [None, None, None])
    told("overflow", [0.5, float("inf"), 0.7], direction="maximize")
    optuna.create_study(study_name="categories", storage=url).optimize(
        lambda t: len(t.suggest_categorical("act", ["relu", "tanh"])) + t.suggest_int("k", 1, 4), n_trials=6)
    optuna.create_study(study_name="empty", storage=url)
    study = optuna.create_study(study_name="errors", storage=url)

    def broken(trial):
        trial.suggest_float("learning_rate", 1e-4, 1, log=True)
        raise RuntimeError("<b>out</b> of memory")

    study.optimize(broken, n_trials=2, catch=(RuntimeError,))
    return [ODD_NAME, "L" * 400, "two goals", "pruned early", "overflow", "categories", "empty", "errors"]


@pytest.mark.browser
def test_odd_studies_load_offline_with_every_figure_drawn_and_their_text_literal(sqlite_url, tmp_path):
    from hpo.report import write_report
    from tests.browser import check_page

    names = odd_studies(sqlite_url)
    storage = backend.open_storage(sqlite_url)
    for name in names:
        path = write_report(storage, sqlite_url, name, tmp_path / default_path(name))
        check = check_page(path)
        assert check.problems() == [], (name[:40], check.problems())
        assert not check.blank
        if name == ODD_NAME:  # the name and the choices shown as they are stored
            assert visible(name) in check.text and "<i>a</i> (n=" in check.text and "%{x} (n=" in check.text
        if name == "overflow":
            assert "<b>host</b> & co" in check.text  # the worker's name


def test_control_and_bidi_characters_of_a_name_are_shown_as_escapes_as_the_cli_shows_them(sqlite_url):
    # U+202E makes "report\u202elmth.exe" read as "reportexe.html"; hpo's CLI and the dashboard
    # notes show it as \u202e (hpo.output.visible), and so does the page, in its text and figures.
    name = "report\u202elmth.exe \x1b[31m"
    plain_study(sqlite_url, name, n_trials=4)
    page = render(collect(backend.open_storage(sqlite_url), sqlite_url, name))
    assert "\u202e" not in page and "\x1b" not in page
    assert page.count("report\\u202elmth.exe \\x1b[31m") >= 3  # title, heading, summary at least
    assert "report\\\\u202elmth.exe" in page  # in the figures' JSON too


def test_the_initialization_experiment_on_inputs_that_never_vary_says_why_it_did_not_run(tmp_path):
    # One training example, or features all constant: standardized, the batch is all zeros, every
    # layer's std is 0, and the figures would be empty log axes under words that read a trend.
    import numpy as np

    from hpo.report import run_init_experiment
    from workers.init_experiment import init_experiment

    with pytest.raises(ValueError, match="varies"):
        init_experiment(np.ones((10, 4)))
    rng = np.random.default_rng(0)
    arrays = {f"X_{s}": np.ones((n, 4)) for s, n in (("train", 1), ("val", 4), ("test", 4))}
    arrays.update({f"y_{s}": rng.integers(0, 2, size=len(arrays[f"X_{s}"])) for s in ("train", "val", "test")})
    arrays["y_val"][:2] = (0, 1)
    np.savez(tmp_path / "flat.npz", **arrays)
    said = run_init_experiment(f"npz:{tmp_path / 'flat.npz'}")
    assert isinstance(said, str) and "varies" in said and "could not be loaded" not in said

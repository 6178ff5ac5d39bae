"""What optuna-dashboard shows of a campaign (hpo.dashboard, workers.record's summary attrs),
read back through the dashboard's own HTTP API, served by its real WSGI app on a free port,
and the note rendered by its own frontend in a real browser.

A campaign of two tiny stages runs on SQLite and PostgreSQL; the dashboard must then serve:
each stage's note with the narrowing table equal to the child's stored lineage and links that
lead to the right studies; each trial's summary attrs whole, equal to its record's, numbers
the dashboard sorts; and figures attached to a study, replaced when attached again.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
import threading
import urllib.request
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from urllib.parse import urljoin
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard
import plotly.graph_objects as go
import pytest
from markdown_it import MarkdownIt

from hpo import dashboard
from hpo.campaign import CampaignSpec, run_campaign
from hpo.output import visible
from storage import backend, states
from tests.test_campaign import Recorder
from workers import stageplan
from workers.record import SUMMARY_ATTRS, read_record, summary_attrs
from workers.space import build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Text a user could put into a stage (a dataset path, a parameter choice) and that reaches a
# note: every way Markdown has to make a link, an image, HTML, emphasis or a new table cell.
HOSTILE = (
    "[click](javascript:alert(1)) ![x](http://evil.example/x.png) <img src=x onerror=alert(1)> "
    "<b>bold</b> **strong** _em_ `code` ~~gone~~ | cell | https://evil.example www.evil.example "
    "user@evil.example &amp; \\[escaped\\] # not a heading\nsecond line\x1b[31m"
)


# -- the Markdown, on its own -------------------------------------------------------------------
MARKDOWN = MarkdownIt("commonmark").enable("table")  # CommonMark with GFM's tables


def _text_of(rendered: str) -> str:
    """The text a reader sees in rendered HTML (tags dropped, entities read)."""
    return html.unescape(re.sub(r"<[^>]*>", "", rendered))


def _sections(note: str) -> dict[str, dict]:
    """The note as it renders (by a CommonMark renderer with GFM tables): heading text ->
    {"text": the section's text, "rows": its table's body rows as cell texts, "links": link
    text -> href}; the part before the first sub-heading under its own title."""
    sections = {}
    for part in re.split(r"(?=<h[23]>)", MARKDOWN.render(note)):
        heading = re.match(r"<h[23]>(.*?)</h[23]>", part)
        if heading is None:
            continue
        body = re.findall(r"<tbody>(.*?)</tbody>", part, re.S)
        sections[_text_of(heading[1])] = {
            "text": _text_of(part),
            "rows": [[_text_of(c) for c in re.findall(r"<td>(.*?)</td>", row)]
                     for row in re.findall(r"<tr>(.*?)</tr>", body[0], re.S)] if body else [],
            "links": {_text_of(text): href for href, text in re.findall(r'<a href="([^"]*)">(.*?)</a>', part)},
        }
    return sections


@pytest.mark.parametrize("text", [HOSTILE, "`", "a`b``c", " padded ", "| a |", "a\\|b", "\\", "", "plain"])
def test_markdown_literal_renders_as_the_text_itself_and_nothing_else(text):
    escaped = dashboard.markdown_literal(text)
    assert "\n" not in escaped and "\x1b" not in escaped  # one line; control characters as escapes
    paragraph = MARKDOWN.render(f"x {escaped} x")
    assert _text_of(paragraph) == f"x {visible(text)} x\n"
    assert set(re.findall(r"</?(\w+)", paragraph)) <= {"p", "code"}, paragraph  # no link, image, HTML, emphasis
    table = MARKDOWN.render(f"| a | b |\n| --- | --- |\n| {escaped} | {escaped} |\n")
    cells = re.findall(r"<td>(.*?)</td>", table)
    assert [_text_of(cell) for cell in cells] == [visible(text)] * 2  # no cell split, no markup, spaces kept
    assert set(re.findall(r"</?(\w+)", "".join(cells))) <= {"code"}


def test_stage_links_are_relative_to_the_note_page_and_name_the_study():
    assert dashboard.stage_link("c/stage-2", {"c/stage-2": 7}) == "[`c/stage-2`](../7) ([note](../7/note))"
    assert dashboard.stage_link("c/stage-2", {}) == "`c/stage-2`"  # no study to link to
    page = "http://127.0.0.1:8080/dashboard/studies/3/note"  # where the dashboard shows a study's note
    assert urljoin(page, "../7") == "http://127.0.0.1:8080/dashboard/studies/7"
    assert urljoin(page, "../7/note") == "http://127.0.0.1:8080/dashboard/studies/7/note"


def test_a_stage_note_holds_its_plan_ranges_links_and_the_narrowing_into_its_child():
    space = build_space(None, None, ["hidden_sizes=16", "lr=log:1e-3..1", "activation=relu,tanh"])
    narrowed = build_space(space, None, ["lr=log:0.01..0.1", "activation=tanh"])
    by_hand = build_space(narrowed, None, ["lr=log:0.02..0.05"])  # what hpo narrow --param leaves
    spec = CampaignSpec(name="n", space=space, stages=2, trials=[12, 6], epochs=[1, 4], cv=3)
    changes = [{"name": name, "old_text": old.describe(), "new_text": narrowed[name].describe(),
                "reason": "narrowed" if old != narrowed[name] else "unchanged"} for name, old in space.items()]
    parent = spec.plan(1, space)
    child = spec.plan(2, by_hand, {"parent": parent.study_name, "changes": changes, "source_trials": [4, 2, 9],
                                   "n_ranked": 11, "best_trial": 4, "best_value": 0.875})
    ids = {parent.study_name: 1, child.study_name: 2}

    note = _sections(dashboard.stage_note(parent, ids, [child]))
    assert list(note) == ["n/stage-1", "Searched ranges", "Narrowed into n/stage-2"]
    words = note["n/stage-1"]["text"]
    assert "Stage 1 of 2 of campaign n." in words
    assert "a budget of 12 trials (finished complete, pruned or diverged) of 1 epoch each" in words
    assert "on the dataset digits, scored by 3-fold cross-validation on the training split" in words
    assert "sampler tpe, pruner median, seed 0" in words
    assert note["n/stage-1"]["links"] == {"n/stage-2": "../2", "note": "../2/note"}
    assert note["Searched ranges"]["rows"] == [[name, spec_.describe()] for name, spec_ in space.items()]
    narrowing = note["Narrowed into n/stage-2"]
    assert "From the top 3 of 11 complete trials (numbers 4, 2, 9; the best: trial 4, value 0.875)." in narrowing["text"]
    assert narrowing["rows"] == [[c["name"], c["old_text"], c["new_text"], c["reason"]] for c in changes]
    assert "Set over the narrowing (hpo narrow --param or --space): learning_rate;" in narrowing["text"]

    note = _sections(dashboard.stage_note(child, {child.study_name: 2}, []))  # its parent's id unknown
    assert list(note) == ["n/stage-2", "Searched ranges"]
    assert "Parent: n/stage-1; this stage's ranges are narrowed from it." in note["n/stage-2"]["text"]
    assert note["n/stage-2"]["links"] == {}
    assert note["Searched ranges"]["rows"] == [[name, spec_.describe()] for name, spec_ in by_hand.items()]


def test_figure_names_make_stable_ids():
    assert dashboard.graph_object_id("coarse-to-fine") == "hpo-coarse-to-fine"
    assert dashboard.graph_object_id("Best value / stage") == "hpo-Best-value-stage"
    with pytest.raises(ValueError, match="letter or digit"):
        dashboard.graph_object_id("  //  ")
    with pytest.raises(ValueError, match="same id"):
        dashboard.attach_figures(None, "figs", {"a b": "{}", "a/b": "{}"})


# -- the dashboard, serving a campaign ---------------------------------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature of the method overridden
        pass


@pytest.fixture
def serve_dashboard():
    """``serve(url)``: optuna-dashboard's WSGI app on the storage at ``url``, on a free
    localhost port; returns the base URL. Stopped after the test."""
    running = []

    def serve(url: str) -> str:
        storage = backend.open_storage(url, heartbeat=False)
        server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), server_class=_Server,
                             handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread, storage))
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server, thread, storage in running:
        server.shutdown()
        thread.join(10)
        server.server_close()
        storage.engine.dispose()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def _api(base: str, path: str) -> dict:
    status, body = _get(base + path)
    assert status == 200, body[:300]
    return json.loads(body)


def _run_campaign(url: str) -> CampaignSpec:
    # A learning rate up to 100 with plain SGD: some trials diverge, others complete.
    space = build_space(None, None, ["hidden_sizes=16", "batch_size=128", "lr=log:1e-2..100", "optimizer=sgd",
                                     "bn=false", "activation=relu,tanh"])
    spec = CampaignSpec(name="dash", space=space, stages=2, trials=[6, 3], epochs=[2, 2], seed=1)
    run_campaign(url, spec, Recorder(), workers=1)
    return spec


@pytest.mark.slow
def test_the_dashboard_serves_each_stage_note_and_each_trial_summary(storage_url, serve_dashboard):
    spec = _run_campaign(storage_url)
    base = serve_dashboard(storage_url)
    ids = {s["study_name"]: s["study_id"] for s in _api(base, "/api/studies")["study_summaries"]}
    first, second = (stageplan.stage_study_name(spec.name, k) for k in (1, 2))
    storage = backend.open_storage(storage_url, heartbeat=False)
    try:
        child = stageplan.read_plan(storage, second)
        details = {name: _api(base, f"/api/studies/{ids[name]}") for name in (first, second)}

        # The parent's note: its plan, and the narrowing table equal to the child's lineage.
        note = _sections(details[first]["note"]["body"])
        words = note[first]["text"]
        assert "a budget of 6 trials" in words and "2 epochs each" in words and "dataset digits" in words
        assert "sampler tpe" in words and "pruner median" in words
        assert note["Searched ranges"]["rows"] == [[name, spec_.describe()] for name, spec_ in spec.space.items()]
        assert note[f"Narrowed into {second}"]["rows"] == [
            [c["name"], c["old_text"], c["new_text"], c["reason"]] for c in child.lineage["changes"]]
        # The links go to the child's page and note, from the page the note is shown on.
        page = f"{base}/dashboard/studies/{ids[first]}/note"
        links = note[first]["links"]
        assert urljoin(page, links[second]) == f"{base}/dashboard/studies/{ids[second]}"
        assert urljoin(page, links["note"]) == f"{base}/dashboard/studies/{ids[second]}/note"
        status, body = _get(urljoin(page, links[second]))
        assert status == 200 and "bundle.js" in body  # the dashboard's page for that study

        # The child's note: its own ranges (the table's new ones) and a link back to its parent.
        note = _sections(details[second]["note"]["body"])
        assert set(note) == {second, "Searched ranges"}  # no child: nothing narrowed from it yet
        assert note["Searched ranges"]["rows"] == [[c["name"], c["new_text"]] for c in child.lineage["changes"]]
        page = f"{base}/dashboard/studies/{ids[second]}/note"
        assert urljoin(page, note[second]["links"][first]) == f"{base}/dashboard/studies/{ids[first]}"

        # Each trial's summary attrs come back whole and equal to its record's.
        seen = set()
        for name in (first, second):
            trials = {t.number: t for t in optuna.load_study(study_name=name, storage=storage).trials}
            for shown in details[name]["trials"]:
                trial = trials[shown["number"]]
                expected = summary_attrs(read_record(trial))
                attrs = {a["key"]: a["value"] for a in shown["user_attrs"] if a["key"] in SUMMARY_ATTRS}
                assert set(attrs) == set(expected)
                for key, value in expected.items():
                    assert attrs[key] == str(value)  # the dashboard's text of a number: whole
                    if key == "diverged":
                        assert value is states.is_diverged(trial.state, trial.user_attrs)
                    else:
                        assert float(attrs[key]) == value and not isinstance(value, bool)
                seen.update(k for k, v in expected.items() if v is not False)
            # The dashboard sorts the numbers (a bool it shows but does not sort).
            sortable = {a["key"]: a["sortable"] for a in details[name]["union_user_attrs"]}
            for key in set(SUMMARY_ATTRS) & set(sortable):
                assert sortable[key] is (key != "diverged"), key
        assert seen == set(SUMMARY_ATTRS)  # each of them shown, a diverged trial among them
    finally:
        storage.engine.dispose()


@pytest.mark.slow
def test_notes_are_written_once_and_a_resume_leaves_them(sqlite_url, serve_dashboard):
    spec = _run_campaign(sqlite_url)
    base = serve_dashboard(sqlite_url)
    ids = {s["study_name"]: s["study_id"] for s in _api(base, "/api/studies")["study_summaries"]}
    before = {name: _api(base, f"/api/studies/{i}")["note"] for name, i in ids.items()}
    # Stage 1's note was written when it was created and again when its child was.
    assert [before[f"dash/stage-{k}"]["version"] for k in (1, 2)] == [2, 1]
    run_campaign(sqlite_url, spec, Recorder(), workers=0)  # a resume of the finished campaign
    storage = backend.open_storage(sqlite_url, heartbeat=False)
    try:
        assert dashboard.write_stage_notes(storage, list(ids)) == []  # nothing changed: nothing written
    finally:
        storage.engine.dispose()
    assert {name: _api(base, f"/api/studies/{i}")["note"] for name, i in ids.items()} == before


def test_attached_figures_come_back_and_replace_themselves(sqlite_url, serve_dashboard):
    backend.ensure_schema(sqlite_url)
    optuna.create_study(study_name="figs", storage=sqlite_url, direction="maximize")
    first = go.Figure(go.Scatter(x=[1, 2, 3], y=[0.5, 0.7, 0.9], name="best value"))
    second = go.Figure(go.Scatter(x=[1, 2], y=[0.6, 0.8]))
    storage = backend.open_storage(sqlite_url, heartbeat=False)
    try:
        assert dashboard.attach_figures(storage, "figs", {"coarse-to-fine": first.to_json(),
                                                          "ranges": go.Figure(go.Bar(x=["a"], y=[1])).to_json()}) == [
            "hpo-coarse-to-fine", "hpo-ranges"]
        dashboard.attach_figures(storage, "figs", {"coarse-to-fine": second.to_json()})  # the same name again: replaced
    finally:
        storage.engine.dispose()

    base = serve_dashboard(sqlite_url)
    study_id = next(s["study_id"] for s in _api(base, "/api/studies")["study_summaries"] if s["study_name"] == "figs")
    shown = {g["id"]: json.loads(g["graph_object"]) for g in _api(base, f"/api/studies/{study_id}")["plotly_graph_objects"]}
    assert set(shown) == {"hpo-coarse-to-fine", "hpo-ranges"}
    assert shown["hpo-coarse-to-fine"] == json.loads(second.to_json())


@pytest.mark.slow
def test_a_campaigns_report_figures_appear_on_its_stages_dashboard_pages(sqlite_url, serve_dashboard, tmp_path):
    from hpo.report import dashboard_figures, write_report
    from hpo.report.collect import collect

    spec = _run_campaign(sqlite_url)
    storage = backend.open_storage(sqlite_url)
    write_report(storage, sqlite_url, spec.name, tmp_path / "r.html", dashboard=True)
    write_report(storage, sqlite_url, spec.name, tmp_path / "r.html", dashboard=True)  # again: replaced, not added
    expected = dashboard_figures(collect(storage, sqlite_url, spec.name))
    base = serve_dashboard(sqlite_url)
    ids = {s["study_name"]: s["study_id"] for s in _api(base, "/api/studies")["study_summaries"]}
    for study_name, figures in expected.items():
        shown = {g["id"]: json.loads(g["graph_object"]) for g in _api(base, f"/api/studies/{ids[study_name]}")["plotly_graph_objects"]}
        assert set(shown) == {dashboard.graph_object_id(name) for name in figures}
        for name, figure in figures.items():
            assert shown[dashboard.graph_object_id(name)]["data"] == json.loads(figure.to_json())["data"]
            # drawn as on the report's page: the dashboard draws a figure's own template
            assert shown[dashboard.graph_object_id(name)]["layout"]["template"]["layout"]["plot_bgcolor"] == "white"
    assert any(name.startswith("layers-") for name in expected[stageplan.stage_study_name(spec.name, 2)])
    assert "hpo-coarse-to-fine-1" in {dashboard.graph_object_id(n) for n in expected[stageplan.stage_study_name(spec.name, 1)]}


# -- the note in a real browser --------------------------------------------------------------
@pytest.fixture
def browser() -> Iterator:
    """Chromium driven by Playwright (a system chromium if there is one); a skip without."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        try:
            launched = playwright.chromium.launch(executable_path=executable)
        except sync_api.Error as e:  # the browser marker already skipped where none is installed
            pytest.fail(f"Chromium did not start: {str(e).splitlines()[0]}")
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.browser
def test_the_note_renders_in_the_dashboard_with_text_as_written_and_links_that_lead(sqlite_url, serve_dashboard, browser):
    backend.ensure_schema(sqlite_url)
    storage = backend.open_storage(sqlite_url, heartbeat=False)
    space = build_space(None, None, ["hidden_sizes=16", "lr=log:1e-3..1"])
    parent = CampaignSpec(name="web", space=space, stages=2, trials=[4, 2], epochs=[1, 1], dataset=f"npz:{HOSTILE}").plan(1, space)
    change = {"name": "learning_rate", "old_text": HOSTILE, "new_text": "log[0.01, 0.1]", "reason": HOSTILE}
    child = CampaignSpec(name="web", space=space, stages=2, trials=[4, 2], epochs=[1, 1]).plan(
        2, space, {"parent": parent.study_name, "changes": [change], "source_trials": [1, 0], "n_ranked": 3,
                   "best_trial": 1, "best_value": 0.5})
    try:
        for plan in (parent, child):
            stageplan.create_stage(storage, plan)
        assert dashboard.write_stage_notes(storage, [parent.study_name, child.study_name]) == [
            parent.study_name, child.study_name]
    finally:
        storage.engine.dispose()
    base = serve_dashboard(sqlite_url)
    ids = {s["study_name"]: s["study_id"] for s in _api(base, "/api/studies")["study_summaries"]}

    page = browser.new_page()
    alerts = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    page.goto(f"{base}/dashboard/studies/{ids[parent.study_name]}/note")
    tables = page.locator("table")
    tables.nth(1).wait_for()
    note = tables.nth(0).locator("xpath=..")  # the rendered note holds both tables
    # The narrowing table: one row, four cells, each the text as written (control characters
    # shown as escapes), nothing turned into markup.
    cells = [cells.inner_text() for cells in tables.nth(1).locator("tbody td").all()]
    assert cells == ["learning_rate", visible(HOSTILE), "log[0.01, 0.1]", visible(HOSTILE)]
    assert visible(f"npz:{HOSTILE}") in note.inner_text()
    assert note.locator("img, b, em, del, script").count() == 0
    assert note.locator("strong").all_inner_texts() == ["Plan:"]  # ours alone
    hrefs = [a.get_attribute("href") for a in note.locator("a").all()]
    assert hrefs == [f"../{ids[child.study_name]}", f"../{ids[child.study_name]}/note"]  # ours alone
    # The child's link leads to the child's study page.
    note.locator("a", has_text=child.study_name).click()
    page.wait_for_url(f"{base}/dashboard/studies/{ids[child.study_name]}")
    assert alerts == []


def test_without_optuna_dashboard_nothing_is_written_and_nothing_fails(sqlite_url, monkeypatch):
    backend.ensure_schema(sqlite_url)
    storage = backend.open_storage(sqlite_url, heartbeat=False)
    try:
        space = build_space(None, None, ["hidden_sizes=16"])
        plan = CampaignSpec(name="bare", space=space, stages=1, trials=[2], epochs=[1]).plan(1, space)
        study = stageplan.create_stage(storage, plan)
        monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if it were not installed
        assert dashboard.write_stage_notes(storage, [plan.study_name]) == []
        assert dashboard.attach_figures(storage, plan.study_name, {"coarse-to-fine": go.Figure().to_json()}) == []
        monkeypatch.undo()
        system_attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(plan.study_name))
        assert optuna_dashboard.get_note(study) == "" and not [k for k in system_attrs if k.startswith("dashboard:")]
    finally:
        storage.engine.dispose()

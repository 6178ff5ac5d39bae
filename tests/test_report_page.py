"""The report page in a real headless browser, offline: every figure drawn, nothing fetched, no
error, user text shown as it is and never run. And the checker itself: each kind of broken page
it must catch (a script that throws, a page that fetches Plotly from the network, a figure div
left empty, a script that ran, a blank screenshot)."""

from __future__ import annotations

import html
import io

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from hpo.report.common import plot_text
from hpo.report.page import Figure, Section, Table, Words, render_page
from tests.browser import check_page, is_blank

pytestmark = pytest.mark.browser

# Text from the user or from storage (study names, failure reasons, parameter values).
HOSTILE = (
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "<b>not bold</b>",
    "\"double\" & 'single' quotes, &amp; &mu; &#39;",
    "λ → ∞, 日本語, 😀",
)


def _figures() -> list[go.Figure]:
    """One figure of each kind the report draws, each with its own title."""
    rng = np.random.default_rng(0)
    learning_rate = go.Figure(
        go.Scatter(x=10 ** rng.uniform(-4, -1, 40), y=rng.uniform(0.5, 1.0, 40), mode="markers"),
        layout={"title": {"text": "accuracy by learning rate"}, "xaxis": {"type": "log"}},
    )
    outcomes = go.Figure(go.Bar(x=["complete", "pruned", "failed"], y=[30, 12, 2]), layout={"title": {"text": "outcomes"}})
    heat = go.Figure(go.Heatmap(z=rng.random((6, 8))), layout={"title": {"text": "importance by stage"}})
    grid = make_subplots(rows=2, cols=2)
    grid.add_trace(go.Scatter(y=np.cumsum(rng.random(20))), row=1, col=1)
    grid.add_trace(go.Bar(y=[3, 1, 2]), row=1, col=2)
    grid.add_trace(go.Box(y=rng.normal(size=50)), row=2, col=1)
    grid.add_trace(go.Scatter(x=[1, 2, 3], y=[2, 1, 3], mode="lines"), row=2, col=2)
    grid.update_layout(title={"text": "curves"})
    many = go.Figure(
        go.Scattergl(x=rng.random(3000), y=rng.random(3000), mode="markers"),
        layout={"title": {"text": "every trial (WebGL)"}},
    )
    # Plotly reads a few tags (<b>, <br>, <a>) and entities (&lt; &amp; &#39; &mu;, not &quot;)
    # in its own text: user text in a figure is escaped without quotes, and then reads back exactly.
    named = go.Figure(
        go.Scatter(x=[1, 2], y=[1, 2], name=plot_text(HOSTILE[2])),
        layout={"title": {"text": plot_text(" ".join(HOSTILE))}},
    )
    return [learning_rate, outcomes, heat, grid, many, named]


def _report(tmp_path, sections, *, title="report", banner=None) -> str:
    path = tmp_path / "report.html"
    path.write_text(render_page(title, sections, banner=banner), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A page of every kind of figure, and hostile text in every place the page shows text."""
    tmp_path = tmp_path_factory.mktemp("report")
    figures = _figures()
    sections = [
        Section("figures", "Figures", tuple(Figure(f, f"caption {i}") for i, f in enumerate(figures[:3]))),
        Section(
            "hostile",
            HOSTILE[0] + " section",
            (
                Figure(figures[3], HOSTILE[1]),
                Words(" | ".join(HOSTILE)),
                Table(columns=HOSTILE[:3], rows=(HOSTILE[2:],), caption=HOSTILE[4]),
                Figure(figures[4], "many points"),
                Figure(figures[5], "user text in a figure"),
            ),
        ),
    ]
    path = _report(tmp_path, sections, title=HOSTILE[2] + " " + HOSTILE[3], banner=HOSTILE[0])
    return figures, check_page(path)


def test_every_figure_is_drawn_offline_without_an_error(report):
    figures, check = report
    assert check.problems() == []
    assert check.console_errors == [] and check.page_errors == [] and check.blocked_requests == []
    assert [f.title for f in check.figures] == [f.layout.title.text and html.unescape(f.layout.title.text) for f in figures]
    assert all(f.drawn for f in check.figures), check.figures
    assert check.figures[4].painted_canvases > 0  # the WebGL one, drawn on a canvas
    # the page's one template (hpo.report.common.TEMPLATE, plotly_white) reaches every figure
    assert {f.background for f in check.figures} == {"white"}
    assert not is_blank(check.screenshot)


def test_every_figure_zooms_and_saves_as_png_and_none_offers_to_upload_its_data(report):
    """The tool bar of each figure: zoom, and "save as image" (which the report promises); no
    "Share chart...", which would send the figure's data (trials, parameters, reasons) to
    Plotly's cloud."""
    _, check = report
    assert check.figures
    for figure in check.figures:
        assert "Download plot as a PNG" in figure.tools and "Zoom" in figure.tools, (figure.id, figure.tools)
        uploads = [tool for tool in figure.tools if any(word in tool.lower() for word in ("share", "cloud", "chart studio"))]
        assert uploads == [], (figure.id, figure.tools)


def test_user_text_shows_literally_and_never_runs(report):
    _, check = report
    assert check.dialogs == []  # no alert(): no script from the text ran
    assert check.title == HOSTILE[2] + " " + HOSTILE[3]
    for text in HOSTILE:
        # banner, section title, caption, words, table: each shown as written, tags and all
        assert text in check.text, text
    assert " | ".join(HOSTILE) in check.text
    assert check.figures[5].title == " ".join(HOSTILE)


def test_a_figure_script_that_throws_is_a_page_error(tmp_path):
    page = render_page("broken", [Section("s", "S", (Figure(_figures()[1], "bars"),))])
    path = tmp_path / "broken.html"
    path.write_text(page.replace("Plotly.newPlot(", "Plotly.newPlotTypo(", 1), encoding="utf-8")
    check = check_page(path, timeout=2)
    assert any("newPlotTypo" in e for e in check.page_errors), check.page_errors
    assert [f.drawn for f in check.figures] == [False]
    assert "figures never drawn within 2 s: figure-1" in check.problems()


def test_a_page_that_fetches_from_the_network_is_refused_and_reported(tmp_path):
    cdn = "https://cdn.plot.ly/plotly-3.0.1.min.js"
    path = tmp_path / "online.html"
    path.write_text(
        f'<!DOCTYPE html><html><head><script src="{cdn}"></script></head><body>'
        '<img src="http://192.0.2.7/pixel.png"><div data-figure id="f"></div>'
        '<script>fetch("https://example.org/data.json").catch(() => {});'
        'new WebSocket("wss://example.org/live");'
        'Plotly.newPlot("f", [{y: [1, 2]}]);</script></body></html>',
        encoding="utf-8",
    )
    check = check_page(path, timeout=2)
    assert set(check.blocked_requests) == {cdn, "http://192.0.2.7/pixel.png", "https://example.org/data.json", "wss://example.org/live"}
    assert any("Plotly is not defined" in e for e in check.page_errors)
    assert check.figures[0].drawn is False
    assert any(p.startswith("request refused") and cdn in p for p in check.problems())


def test_a_figure_div_left_empty_is_not_drawn(tmp_path):
    page = render_page("one empty", [Section("s", "S", (Figure(_figures()[0], "drawn"),))])
    path = tmp_path / "empty-div.html"
    path.write_text(page.replace("</body>", '<div class="figure" id="never-drawn" data-figure></div></body>'), encoding="utf-8")
    check = check_page(path, timeout=2)
    assert [(f.id, f.drawn) for f in check.figures] == [("figure-1", True), ("never-drawn", False)]
    assert check.wait_error == "figures never drawn within 2 s: never-drawn"
    assert check.page_errors == [] and check.console_errors == []


def test_a_script_that_runs_opens_a_dialog_the_check_reports(tmp_path):
    path = tmp_path / "alert.html"
    path.write_text("<p>hello</p><script>alert('ran')</script>", encoding="utf-8")
    check = check_page(path)
    assert check.dialogs == ["alert: ran"]
    assert "dialog opened: alert: ran" in check.problems()


def test_blank_screenshots(tmp_path, report):
    from PIL import Image

    def png(image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    assert is_blank(png(Image.new("RGB", (1200, 900), "white")))
    assert is_blank(png(Image.new("RGB", (1200, 900), "black")))
    noisy = np.random.default_rng(1).integers(245, 256, size=(900, 1200, 3), dtype=np.uint8)
    assert is_blank(png(Image.fromarray(noisy)))  # off-white noise is still nothing drawn
    empty = tmp_path / "empty.html"
    empty.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    check = check_page(empty)
    assert is_blank(check.screenshot)
    assert check.problems() == ["screenshot is blank"]
    _, drawn = report
    assert not is_blank(drawn.screenshot)

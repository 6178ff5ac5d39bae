"""The report page: sections of figures, tables and words, written as one self-contained HTML file.

Everything the page needs is inside it: Plotly's JavaScript (the copy the installed ``plotly``
package ships), the styles and each figure's data as JSON. Nothing is fetched, so the file reads
from ``file://`` on a machine without a network.

Sections are built by :mod:`hpo.report.sections` from the collected data; this module knows
only how to lay them out. Every piece of text is escaped here, once: names, reasons and values
come from the user or from storage and are shown as they are.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
import plotly.io
import plotly.offline
import plotly.utils

from hpo.output import visible
from hpo.report.common import TEMPLATE

# What each figure's tool bar offers: zoom and pan are Plotly's defaults; "download as PNG"
# saves the figure as an image from the page, at twice the screen's resolution. The bundled
# plotly.js (4.x) also offers "Share chart...", which uploads the figure's data (trials,
# parameters, reasons) to Plotly's cloud: a report must never send what it holds anywhere.
# (optuna-dashboard draws the figures hpo attaches with its own plotly.js and configuration,
# which offer no such button: a figure's JSON carries no configuration of ours.)
PLOT_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "showSendToCloud": False,
    "toImageButtonOptions": {"format": "png", "scale": 2},
}


@dataclass(frozen=True)
class Figure:
    """A Plotly figure and the one sentence that says how to read it."""

    figure: go.Figure
    caption: str


@dataclass(frozen=True)
class Words:
    """A paragraph: what a section says instead of a figure (nothing to draw yet, every trial
    diverged, ...), or a note beside one."""

    text: str


@dataclass(frozen=True)
class Table:
    """A small table of values (formatted by the section; shown as text)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    caption: str = ""


Item = Figure | Words | Table


@dataclass(frozen=True)
class Section:
    """One numbered part of the report; ``key`` is its HTML id (``#coarse-to-fine``)."""

    key: str
    title: str
    items: tuple[Item, ...] = field(default_factory=tuple)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em 4em; color: #222; }
h1 { margin-top: 1em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
.banner { background: #fff4d6; border: 1px solid #e0c060; padding: .6em 1em; margin: 1em 0; }
.figure { width: 100%; min-height: 420px; }
figure { margin: 1.5em 0; } figcaption { color: #555; font-size: .92em; margin-top: .3em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
p.words { background: #f6f6f6; padding: .6em 1em; }
"""


def _text(value: Any) -> str:
    """Text as the page shows it: HTML escaped, and control and bidirectional characters as
    escapes (``\\u202e``), as the CLI shows them."""
    return html.escape(visible(value if isinstance(value, str) else str(value)))


def script_json(value: Any) -> str:
    """``value`` as JSON safe inside a <script> element: no ``</`` can end it early and no
    ``<!--`` can change how the script is parsed (the rest of ``<`` stays as it is, which
    keeps hover-heavy pages small)."""
    text = json.dumps(value, cls=plotly.utils.PlotlyJSONEncoder, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


class HoverTexts:
    """Every text of the page's traces, kept once: a trial's hover text appears in several
    figures (coarse to fine, choices, history, layers, workers), so figures carry indexes into
    one table that the page resolves before drawing. At 10,000 trials this halves the file."""

    KEYS = ("text", "hovertext")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def _indexes(self, values: Any) -> Any:
        if isinstance(values, str):
            return self.index.setdefault(values, len(self.index))
        return [self._indexes(v) for v in values]

    def shared(self, figure: go.Figure) -> dict[str, Any]:
        """The figure's JSON form, its text arrays replaced by ``{"shared": [indexes]}`` and
        without the template Plotly adds to each: the page draws every figure with its one."""
        spec = figure.to_plotly_json()
        spec.get("layout", {}).pop("template", None)
        for trace in spec.get("data", []):
            for key in self.KEYS:
                values = trace.get(key)
                if isinstance(values, (list, tuple)) and len(values) > 1 and _all_text(values):
                    trace[key] = {"shared": self._indexes(values)}
        return spec

    def table(self) -> list[str]:
        return list(self.index)


def _all_text(values: Any) -> bool:
    """Whether a (nested) list holds only strings."""
    return all(_all_text(v) if isinstance(v, (list, tuple)) else isinstance(v, str) for v in values)


# Draws one figure: resolves its shared texts (HoverTexts) and calls Plotly.
_DRAW = """
function hpoUnshare(v) { return Array.isArray(v) ? v.map(hpoUnshare) : HOVER_TEXTS[v]; }
function hpoDraw(id, f) {
  for (const trace of f.data) for (const key of ["text", "hovertext"])
    if (trace[key] && trace[key].shared) trace[key] = hpoUnshare(trace[key].shared);
  Plotly.newPlot(id, f.data, Object.assign(f.layout || {}, {template: TEMPLATE}), PLOT_CONFIG);
}
"""


def _item(item: Item, number: int, texts: HoverTexts) -> str:
    if isinstance(item, Words):
        return f'<p class="words">{_text(item.text)}</p>'
    if isinstance(item, Table):
        # A table of label/value pairs has no header row: its columns are named "".
        head = "".join(f"<th>{_text(c)}</th>" for c in item.columns) if any(item.columns) else ""
        body = "".join("<tr>" + "".join(f"<td>{_text(v)}</td>" for v in row) + "</tr>" for row in item.rows)
        caption = f"<caption>{_text(item.caption)}</caption>" if item.caption else ""
        thead = f"<thead><tr>{head}</tr></thead>" if head else ""
        return f"<table>{caption}{thead}<tbody>{body}</tbody></table>"
    div = f"figure-{number}"
    return (
        f'<figure><div class="figure" id="{div}" data-figure></div>'
        f"<figcaption>{_text(item.caption)}</figcaption>"
        f'<script>hpoDraw("{div}", {script_json(texts.shared(item.figure))});</script></figure>'
    )


def render_page(title: str, sections: Sequence[Section], *, banner: str | None = None) -> str:
    """The whole HTML document: ``banner`` (a campaign still running, ...) above the sections."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title><style>{_STYLE}</style>",
        f"<script>{plotly.offline.get_plotlyjs()}</script>",
        f"<script>const PLOT_CONFIG = {json.dumps(PLOT_CONFIG)};{_DRAW}"
        f"const TEMPLATE = {script_json(plotly.io.templates[TEMPLATE].to_plotly_json())};</script>",
        "",  # the hover texts' table, filled in once every figure is written

        "</head><body>",
        f"<h1>{_text(title)}</h1>",
    ]
    if banner:
        parts.append(f'<div class="banner">{_text(banner)}</div>')
    parts.append("<nav>" + "".join(f'<a href="#{s.key}">{_text(s.title)}</a>' for s in sections) + "</nav>")
    table_at = parts.index("")
    texts = HoverTexts()
    number = 0
    for section in sections:
        parts.append(f'<section id="{_text(section.key)}"><h2>{_text(section.title)}</h2>')
        for item in section.items:
            number += isinstance(item, Figure)
            parts.append(_item(item, number, texts))
        parts.append("</section>")
    parts.append("</body></html>")
    parts[table_at] = f"<script>const HOVER_TEXTS = {script_json(texts.table())};</script>"
    return "\n".join(parts)

"""What every figure of the report shares: colours, hover text, fading, and the sampling rule.

One home for each: a trial's hover text reads the same in every figure, an outcome has one
colour, and a figure that would carry too many points samples them the same way and says so.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from hpo.output import visible
from hpo.report.collect import OUTCOMES, ReportData, StageView, TrialView

# Plotly's qualitative palette (D3), assigned in order of first appearance: stable per report.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
OUTCOME_COLORS = {
    "COMPLETE": "#2ca02c",
    "PRUNED": "#ff7f0e",
    "DIVERGED": "#d62728",
    "FAIL": "#7f7f7f",
    "RUNNING": "#1f77b4",
    "WAITING": "#bcbd22",
}
FADED_OPACITY = 0.3  # pruned and diverged trials: shown, but behind the complete ones
SOLID_OPACITY = 0.9

# A figure draws at most this many points (or trials' lines, bars, heatmap columns); beyond
# it, trials are sampled evenly, the best ones always kept, and the caption says so
# (sampled_note).
MAX_POINTS = 4000

# Points in a trace beyond which it is drawn with WebGL (SVG slows down past a few thousand).
GL_ABOVE = 1000

# The lecture's rule of thumb for the update/weight ratio of a layer per step.
UPDATE_RATIO_RULE = 1e-3


def value_name(stage: StageView) -> str:
    """What a stage's trial values are: hpo's stages score the validation accuracy; a study hpo
    did not create, whatever its objective returns."""
    return "validation accuracy" if stage.plan is not None else "objective value"


def none_completed(data: ReportData) -> str:
    """How the report opens "no best trial": "yet" while the campaign (or study) is running or
    may be resumed (``data.running``), in the past once it has ended (finished, or stopped by a
    failure)."""
    return "No trial has completed yet" if data.running else "No trial completed"


def outcome_counts(trials: Sequence[TrialView]) -> str:
    """"3 pruned, 1 diverged": how many trials ended each way, in OUTCOMES' order, the outcomes
    none took left out ("no trial" when there is none)."""
    counts = [(sum(t.outcome == outcome for t in trials), outcome) for outcome in OUTCOMES]
    return ", ".join(f"{n} {outcome.lower()}" for n, outcome in counts if n) or "no trial"


def color_map(values: Sequence[Any]) -> dict[Any, str]:
    """A colour per distinct value, in order of first appearance."""
    colors: dict[Any, str] = {}
    for value in values:
        if value not in colors:
            colors[value] = PALETTE[len(colors) % len(PALETTE)]
    return colors


def show(value: Any) -> str:
    """A parameter value as the report writes it (short floats, lowercase booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def plot_text(text: Any) -> str:
    """Text from the user or storage as Plotly shows it literally in a title, trace name, axis
    label or hover. Plotly reads a few HTML tags (<b>, <br>, <a>...) and entities there; it
    does not decode &quot;, so quotes stay as they are. Control and bidirectional characters are
    shown as escapes, as on the rest of the page."""
    return html.escape(visible(str(text)), quote=False)


def hover(trial: TrialView) -> str:
    """The hover text of a trial's mark: number, outcome, value, parameters and reason.

    Plotly draws hover text as HTML, so everything here goes through :func:`plot_text`: names,
    values and reasons come from the user or from storage."""
    lines = [f"<b>{plot_text(trial.study)} #{trial.number}</b>: {trial.outcome.lower()}"]
    if trial.value is not None:
        lines.append(f"value {trial.value:.4f}")
    elif trial.last_accuracy is not None:
        lines.append(f"last validation accuracy {trial.last_accuracy:.4f}")
    lines.extend(f"{plot_text(name)} = {plot_text(show(value))}" for name, value in trial.params.items())
    if trial.reason:
        reason = trial.reason if len(trial.reason) <= 160 else trial.reason[:157] + "..."
        lines.append(f"<i>{plot_text(reason)}</i>")
    return "<br>".join(lines)


def faded(trial: TrialView) -> bool:
    """Pruned and diverged trials are drawn faded."""
    return trial.outcome in ("PRUNED", "DIVERGED")


def sample(trials: Sequence[TrialView], limit: int = MAX_POINTS, *, keep: Sequence[TrialView] = ()) -> tuple[list[TrialView], bool]:
    """At most ``limit`` of ``trials``, in their order: those in ``keep`` (the best trials)
    and others evenly spaced; and whether any were left out."""
    if len(trials) <= limit:
        return list(trials), False
    kept_ids = {id(t) for t in keep}
    others = [i for i, t in enumerate(trials) if id(t) not in kept_ids]
    room = max(0, limit - (len(trials) - len(others)))
    stride = len(others) / room if room else 0
    chosen = {others[int(i * stride)] for i in range(room)}
    return [t for i, t in enumerate(trials) if i in chosen or id(t) in kept_ids], True


def sampled_note(shown: int, total: int) -> str:
    """The clause a caption adds when a figure samples (see :func:`one_sentence`)."""
    return f"it draws {shown:,} of {total:,} trials, sampled evenly with the best always among them"


def one_sentence(*clauses: str | None) -> str:
    """A figure's caption: how to read it, then its notes (the trials a conditional parameter
    leaves out, :func:`sampled_note`, ...), as the one sentence each figure has, the clauses
    joined by semicolons. Empty clauses (a note that does not apply) are left out."""
    return "; ".join(clause for clause in clauses if clause) + "."


def scatter(**kwargs: Any) -> go.Scatter | go.Scattergl:
    """A scatter trace, drawn with WebGL when it has more than GL_ABOVE points."""
    many = len(kwargs.get("x") or ()) > GL_ABOVE
    return (go.Scattergl if many else go.Scatter)(**kwargs)


# The template every figure of the page is drawn with. The page holds it once and the figures
# name none: a template set on a figure is copied and validated into it (about 60 ms a figure,
# most of a small report's time), and would be written into the page again with each figure.
TEMPLATE = "plotly_white"


def layout(figure: go.Figure, **kwargs: Any) -> go.Figure:
    """The look every figure of the report shares (the page adds TEMPLATE when it draws)."""
    figure.update_layout(margin={"l": 60, "r": 20, "t": 60, "b": 50}, hoverlabel={"align": "left"}, **kwargs)
    return figure

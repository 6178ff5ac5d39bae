"""The report's "Why initialization matters, on your data" section.

Draws the result of :func:`workers.init_experiment.init_experiment` (one batch of the
campaign's training inputs forwarded through a deep network at initialization): the std of
each layer's activations per initializer, and each layer's histogram, with a paragraph that
reads the numbers of this data.
"""

from __future__ import annotations

from typing import Any

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hpo.report.page import Figure, Section, Words
from workers.nn.activations import get_activation
from workers.nn.initializers import initializer_names

__all__ = ["SECTION_KEY", "SECTION_TITLE", "SATURATION_NOTE", "STEADY_FACTOR", "init_section"]

SECTION_KEY = "why-initialization"
SECTION_TITLE = "Why initialization matters, on your data"

# A run whose largest layer std is within this factor of its smallest is called steady in
# the section's words (Xavier with tanh on digits drifts by about 1.8, Xavier with ReLU by 20).
STEADY_FACTOR = 3.0

# The words mention a saturating activation's saturated fraction from this fraction on
# (He with tanh saturates about 8% of layer 1 on digits, Xavier 0.2%).
SATURATION_NOTE = 0.01

# One color per initializer, the same in every figure, in registry order.
_PALETTE = plotly.colors.qualitative.Plotly
_HISTOGRAM_ROW_HEIGHT = 130


def init_section(result: dict[str, Any]) -> Section:
    """The section for ``result``, the dict ``init_experiment`` returns."""
    activations = _unique(run["activation"] for run in result["runs"])
    items: list[Any] = [Words(_reading(result, activations)), _std_figure(result, activations)]
    items += [_histogram_figure(result, activation) for activation in activations]
    return Section(SECTION_KEY, SECTION_TITLE, tuple(items))


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


def _color(initializer: str) -> str:
    registered = initializer_names()
    index = registered.index(initializer) if initializer in registered else len(registered)
    return _PALETTE[index % len(_PALETTE)]


def _stds(run: dict[str, Any]) -> list[float]:
    return [layer["std"] for layer in run["layers"]]


def _std_figure(result: dict[str, Any], activations: list[str]) -> Figure:
    """Std per layer on a log axis: one panel per activation, one line per initializer."""
    figure = make_subplots(rows=1, cols=len(activations), subplot_titles=activations, shared_yaxes=True,
                           horizontal_spacing=0.06)
    for column, activation in enumerate(activations, start=1):
        for run in result["runs"]:
            if run["activation"] != activation:
                continue
            initializer = run["initializer"]
            figure.add_trace(go.Scatter(
                x=[layer["layer"] for layer in run["layers"]], y=_stds(run),
                mode="lines+markers", name=initializer, legendgroup=initializer, showlegend=column == 1,
                line={"color": _color(initializer)},
                hovertemplate=f"{initializer}, {activation}<br>layer %{{x}}<br>std %{{y:.3g}}<extra></extra>",
            ), row=1, col=column)
        figure.update_xaxes(title_text="hidden layer", dtick=1, row=1, col=column)
    figure.update_yaxes(type="log", exponentformat="power")
    figure.update_yaxes(title_text="std of the activations", row=1, col=1)
    figure.update_layout(height=400, margin={"t": 40, "b": 50, "l": 70, "r": 20}, legend_title_text="initializer")
    caption = (
        f"The standard deviation of each hidden layer's activations at initialization, one batch of "
        f"{result['batch_size']} training examples forwarded through {result['depth']} layers of "
        f"{result['width']} units without batch norm (log scale): a falling line is a signal dying "
        f"layer after layer, a flat one is a network whose later layers still see their input."
    )
    return Figure(figure, caption)


def _histogram_figure(result: dict[str, Any], activation: str) -> Figure:
    """One activation's layer histograms: rows are initializers, columns are layers."""
    runs = [run for run in result["runs"] if run["activation"] == activation]
    depth = result["depth"]
    figure = make_subplots(
        rows=len(runs), cols=depth, row_titles=[run["initializer"] for run in runs],
        column_titles=[f"layer {layer}" for layer in range(1, depth + 1)],
        horizontal_spacing=0.012, vertical_spacing=0.08,
    )
    for row, run in enumerate(runs, start=1):
        initializer = run["initializer"]
        for layer in run["layers"]:
            edges = layer["edges"]
            # each bar drawn from its left edge (x) over the (uniform) bin width; the right
            # edges ride along for the hover
            figure.add_trace(go.Bar(
                x=edges[:-1], y=layer["counts"], customdata=edges[1:], width=edges[1] - edges[0], offset=0,
                marker={"color": _color(initializer), "line": {"width": 0}}, showlegend=False,
                hovertemplate=(
                    f"{initializer}, {activation}, layer {layer['layer']}, std {layer['std']:.3g}"
                    "<br>%{y} activations in [%{x:.3g}, %{customdata:.3g})<extra></extra>"
                ),
            ), row=row, col=layer["layer"])
        edges = run["layers"][0]["edges"]
        figure.update_xaxes(range=[edges[0], edges[-1]], nticks=3, tickfont={"size": 9}, row=row)
    figure.update_yaxes(showticklabels=False)
    figure.update_annotations(font={"size": 11})
    figure.update_layout(
        height=_HISTOGRAM_ROW_HEIGHT * len(runs) + 70, bargap=0,
        margin={"t": 40, "b": 30, "l": 20, "r": 40},
    )
    if get_activation(activation).bounds is not None:
        ends = "bars piled at the ends are saturated units, which pass almost no gradient"
    else:
        ends = ("the end bars also hold the few activations beyond the range" +
                ("; the bar at 0 holds the units ReLU switched off, about half" if activation == "relu" else ""))
    caption = (
        f"{activation}: the histogram of each layer's activations (columns) for each initializer (rows), "
        f"on one x range per row: a lone bar at 0 means the activations collapsed to zero; {ends}."
    )
    return Figure(figure, caption)


def _reading(result: dict[str, Any], activations: list[str]) -> str:
    """What the stds of this result show, one sentence per activation and the steady runs."""
    depth = result["depth"]
    opening = (
        f"{result['batch_size']} of this dataset's training examples ({result['input_dim']} features, "
        f"each zero-centered and scaled to std 1) forwarded through {depth} layers of {result['width']} "
        "units without batch norm."
    )
    sentences = [opening]
    steady, shrinking, growing = [], [], []
    for activation in activations:
        parts = []
        for run in result["runs"]:
            if run["activation"] != activation:
                continue
            stds = _stds(run)
            parts.append(f"{run['initializer']} {_trend(stds)}{_saturation(run)}")
            name = f"{run['initializer']} with {activation}"
            if _steady(stds):
                steady.append(name)
            elif stds[-1] < stds[0]:
                shrinking.append(name)
            else:
                growing.append(name)
        sentences.append(f"With {activation}, " + "; ".join(parts) + ".")
    sentences.append(
        f"Steady within a factor {STEADY_FACTOR:g} over all {depth} layers: {', '.join(steady) or 'none'}."
    )
    if shrinking:
        sentences.append(f"The signal fades on its way to layer {depth} with {', '.join(shrinking)}.")
    if growing:
        sentences.append(f"It grows on its way to layer {depth} with {', '.join(growing)}.")
    return " ".join(sentences)


def _steady(stds: list[float]) -> bool:
    return min(stds) > 0 and max(stds) <= STEADY_FACTOR * min(stds)


def _saturation(run: dict[str, Any]) -> str:
    """", saturating N% of the activations at layer l" where a saturating activation's most
    saturated layer reaches SATURATION_NOTE, else nothing."""
    fractions = [(layer["saturated"] or 0.0, layer["layer"]) for layer in run["layers"]]
    fraction, layer = max(fractions)
    if fraction < SATURATION_NOTE:
        return ""
    return f", saturating {100 * fraction:.2g}% of the activations at layer {layer}"


def _trend(stds: list[float]) -> str:
    """"keeps the std between a and b", or how much it shrinks (grows) per layer, first to last."""
    first, last = stds[0], stds[-1]
    layers = len(stds)
    if _steady(stds):
        return f"keeps the std between {min(stds):.3g} and {max(stds):.3g}"
    if first <= 0 or last <= 0:
        return f"takes the std from {first:.3g} at layer 1 to {last:.3g} at layer {layers}"
    per_layer = (first / last) ** (1 / (layers - 1))
    if per_layer >= 1:
        how = f"divides the std by about {per_layer:.2g} per layer"
    else:
        how = f"multiplies the std by about {1 / per_layer:.2g} per layer"
    return f"{how}, from {first:.3g} at layer 1 to {last:.3g} at layer {layers}"

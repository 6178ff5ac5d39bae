"""The report's "Layers" section: what the trained networks' hidden layers looked like.

Everything here is read from the trial records (:mod:`workers.record`), measured by
``workers.train`` after a trial's last epoch on a fixed probe batch of training examples:

1. the activation histograms of each hidden layer of the best trial;
2. the same histograms for the best trial of each initializer and of each activation, one row
   each, so a collapse (a small initializer's layers shrinking towards 0) or a saturation
   (sigmoid and tanh piled at their bounds) shows side by side;
3. the dead-unit fraction of each layer across trials, ordered by learning rate;
4. the saturation fraction of each sigmoid or tanh layer against the learning rate;
5. each layer's update/weight ratio of the last step against the learning rate, with the
   lecture's rule of thumb (:data:`hpo.report.common.UPDATE_RATIO_RULE`).

Only trials that completed carry diagnostics and histograms (a pruned or diverged trial stores
its curve and reason only); where nothing can be drawn, the section says why in words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hpo.output import plural
from hpo.report.collect import FINISHED, ReportData, TrialView
from hpo.report.common import (
    FADED_OPACITY, GL_ABOVE, MAX_POINTS, PALETTE, SOLID_OPACITY, UPDATE_RATIO_RULE, faded, hover, layout, none_completed, one_sentence,
    plot_text, sample, sampled_note, show,
)
from hpo.report.page import Figure, Item, Section, Words
from workers.nn.activations import ACTIVATIONS, SATURATING
from workers.record import Histogram, LayerDiagnostics

KEY, TITLE = "layers", "Layers"
MIN_HEIGHT = 420  # pixels: the page gives every figure at least this much room
SATURATING_NAMES = tuple(name for name, activation in ACTIVATIONS.items() if activation.family == SATURATING)
DYING_NAMES = tuple(name for name, activation in ACTIVATIONS.items() if activation.inactive is not None)
ACTIVATION_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x")


def layers_section(data: ReportData) -> Section:
    """The "Layers" section of ``data``'s report (see the module docstring for its figures)."""
    trials = data.trials
    measured = [t for t in trials if _histograms(t) or _layers(t)]
    if not measured:
        return Section(KEY, TITLE, (Words(_why_nothing(trials)),))
    items: list[Item] = [
        _best_histograms(data),
        _histogram_grid(data, "initializer", share_x=True),
        _histogram_grid(data, "activation", share_x=False),
        _dead_heatmap(data),
        _saturation(data),
        _update_ratios(data),
    ]
    return Section(KEY, TITLE, tuple(items))


# -- what a trial stored -----------------------------------------------------------------------
def _histograms(trial: TrialView) -> list[Histogram]:
    """The trial's stored histograms that can be drawn (21 edges for 20 counts, all numbers)."""
    found = trial.record.histograms or ()
    return [
        h for h in found
        if h.counts and len(h.edges) == len(h.counts) + 1
        and all(c is not None for c in h.counts)
        and all(e is not None and math.isfinite(e) for e in h.edges)
    ]


def _layers(trial: TrialView) -> tuple[LayerDiagnostics, ...]:
    diagnostics = trial.record.diagnostics
    return diagnostics.layers if diagnostics else ()


def _config(trial: TrialView, name: str) -> Any:
    """A field of the configuration the trial trained (its parameters if no config was stored)."""
    config = trial.record.config or {}
    return config.get(name, trial.params.get(name))


def _number(value: Any) -> float | None:
    """A stored measure as a finite float, or None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _learning_rate(trial: TrialView) -> float | None:
    lr = _number(_config(trial, "learning_rate"))
    return lr if lr is not None and lr > 0 else None


def _why_nothing(trials: Sequence[TrialView]) -> str:
    """Why no trial has anything to show, in one paragraph."""
    if not trials:
        return "No trial has run yet, so there is no layer to show."
    finished = [t for t in trials if t.outcome in FINISHED]
    complete = [t for t in finished if t.outcome == "COMPLETE"]
    if not finished:
        return "No trial has finished yet: a trial's layers are measured when it completes."
    if all(t.outcome == "DIVERGED" for t in finished):
        return (
            f"Every one of the {len(finished)} finished trials diverged, so no network finished training "
            "and no layer was measured."
        )
    if not complete:
        return (
            f"None of the {len(finished)} finished trials completed (they were pruned, diverged or failed): "
            "a trial's layers are measured only when it completes."
        )
    return (
        f"None of the {len(complete)} complete trials stored per-layer diagnostics or histograms "
        "(trials recorded by an hpo that did not measure them yet)."
    )


# -- figures' common parts ---------------------------------------------------------------------
def _name(trial: TrialView, data: ReportData) -> str:
    """A trial as a label reads it: ``#7`` in a single stage, ``stage 2 #7`` in a campaign."""
    return f"stage {trial.stage} #{trial.number}" if len(data.stages) > 1 else f"#{trial.number}"


def _best(trials: Sequence[TrialView], data: ReportData) -> TrialView | None:
    """The best complete trial among ``trials`` (each compared in its stage's direction)."""
    directions = {stage.study: stage.direction for stage in data.stages}
    scored = [t for t in trials if t.outcome == "COMPLETE" and t.value is not None and directions.get(t.study) in ("maximize", "minimize")]
    if not scored:
        return None
    return max(scored, key=lambda t: t.value if directions[t.study] == "maximize" else -t.value)


def _stage_bests(data: ReportData) -> list[TrialView]:
    return [stage.best for stage in data.stages if stage.best is not None]


def _bars(histogram: Histogram, trial_hover: str, color: str) -> go.Bar:
    """A histogram as stored: bar i spans [edges[i], edges[i+1]) and is counts[i] high; the
    stored edges ride along as customdata, so the hover shows them exactly."""
    edges, counts = histogram.edges, histogram.counts
    return go.Bar(
        x=[(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:])],
        y=list(counts),
        width=[hi - lo for lo, hi in zip(edges[:-1], edges[1:])],
        customdata=[[lo, hi] for lo, hi in zip(edges[:-1], edges[1:])],
        name=f"layer {histogram.layer}",
        marker={"color": color, "opacity": SOLID_OPACITY, "line": {"width": 0}},
        text=[trial_hover] * len(counts),  # a scalar text does not reach the hover template
        textposition="none",
        hovertemplate=(
            "%{text}<br>layer " + str(histogram.layer)
            + ": %{y} activations in [%{customdata[0]:.4~g}, %{customdata[1]:.4~g})<extra></extra>"
        ),
        showlegend=False,
    )


def _describe(trial: TrialView) -> str:
    """What decides a trial's layers: activation, initializer, batch norm, learning rate."""
    parts = [str(_config(trial, "activation")), f"{_config(trial, 'initializer')} init"]
    if _config(trial, "initializer") == "small" and _config(trial, "init_std") is not None:
        parts[-1] += f" (std {show(_config(trial, 'init_std'))})"
    bn = _config(trial, "batch_norm")
    if isinstance(bn, bool):
        parts.append("batch norm" if bn else "no batch norm")
    lr = _learning_rate(trial)
    if lr is not None:
        parts.append(f"lr {show(lr)}")
    return ", ".join(parts)


def _probe(trial: TrialView) -> str:
    size = trial.record.diagnostics.probe_size if trial.record.diagnostics else None
    return f"the {size} probe examples" if size else "the probe batch"


# -- 1. the best trial's histograms ------------------------------------------------------------
def _best_histograms(data: ReportData) -> Item:
    best = data.best
    if best is None:
        return Words(f"{none_completed(data)}, so there is no best trial whose layers could be shown.")
    histograms = _histograms(best)
    if not histograms:
        return Words(
            f"The best trial ({_name(best, data)}, value {best.value:.4f}) stored no activation histograms "
            "(recorded by an hpo that did not measure them yet)."
        )
    units = {layer.layer: layer.units for layer in _layers(best)}
    titles = [f"layer {h.layer}" + (f" ({units[h.layer]} units)" if units.get(h.layer) else "") for h in histograms]
    figure = make_subplots(rows=1, cols=len(histograms), subplot_titles=titles)
    trial_hover = hover(best)
    for column, histogram in enumerate(histograms, 1):
        figure.add_trace(_bars(histogram, trial_hover, PALETTE[0]), row=1, col=column)
    figure.update_xaxes(title_text="activation value")
    figure.update_yaxes(title_text="count", col=1)
    title = f"Best trial {_name(best, data)}: {_describe(best)}; value {best.value:.4f}"
    layout(figure, title=plot_text(title), height=MIN_HEIGHT, bargap=0)
    caption = (
        f"Each panel counts the activations of one hidden layer of the best trial on {_probe(best)} after its "
        "last epoch: a wide, smooth spread is healthy, a spike at 0 means units output nothing, and piles at "
        f"the ends of a {' or '.join(SATURATING_NAMES)} mean saturated units."
    )
    return Figure(figure, caption)


# -- 2. the best trial of each initializer and of each activation ------------------------------
def _histogram_grid(data: ReportData, knob: str, *, share_x: bool) -> Item:
    """Rows: the best trial (with histograms) of each value of ``knob``; columns: hidden layers."""
    groups: dict[str, list[TrialView]] = {}
    for trial in data.trials:
        value = _config(trial, knob)
        if value is not None and _histograms(trial):
            groups.setdefault(str(value), []).append(trial)
    bests = {value: best for value, group in groups.items() if (best := _best(group, data)) is not None}
    if len(bests) < 2:
        only = f" (every such trial used {knob} {next(iter(bests))})" if bests else ""
        return Words(
            f"Fewer than two {knob} values have a complete trial with histograms{only}, "
            f"so there is nothing to set side by side by {knob}."
        )
    rows = sorted(bests.items(), key=lambda item: item[0])
    depth = max(len(_histograms(best)) for _, best in rows)
    other = "activation" if knob == "initializer" else "initializer"
    figure = make_subplots(
        rows=len(rows), cols=depth,
        column_titles=[f"layer {k}" for k in range(1, depth + 1)],
        shared_xaxes="columns" if share_x else False,
        vertical_spacing=min(0.08, 0.3 / len(rows)), horizontal_spacing=0.05,
    )
    for row, (value, best) in enumerate(rows, 1):
        histograms = _histograms(best)
        trial_hover = hover(best)
        row_title = f"<b>{plot_text(value)}</b><br>{plot_text(_config(best, other))}, {_name(best, data)}<br>value {best.value:.3f}"
        figure.update_yaxes(title_text=row_title, title_font_size=11, row=row, col=1)
        for column in range(1, depth + 1):
            if column <= len(histograms):
                figure.add_trace(_bars(histograms[column - 1], trial_hover, PALETTE[(row - 1) % len(PALETTE)]), row=row, col=column)
            else:
                figure.add_annotation(
                    text=f"no layer {column}", xref="x domain", yref="y domain", x=0.5, y=0.5,
                    showarrow=False, font={"color": "#888"}, row=row, col=column,
                )
                figure.update_xaxes(showgrid=False, showticklabels=False, zeroline=False, row=row, col=column)
                figure.update_yaxes(showgrid=False, showticklabels=False, zeroline=False, row=row, col=column)
    figure.update_xaxes(title_text="activation value", row=len(rows))
    layout(figure, title=f"Best trial of each {knob}", height=140 + 190 * len(rows), bargap=0)
    figure.update_layout(margin_l=120)  # room for the rows' titles
    if knob == "initializer":
        how = "columns share their x axis, so a layer whose activations shrink towards 0 (a too small initializer) shows as a narrow spike"
    else:
        how = (
            f"each panel has its own x axis, so the shape shows: {' and '.join(SATURATING_NAMES)} layers piled at their bounds "
            "are saturated, a ReLU spike at 0 is dead units"
        )
    caption = (
        f"Each row is the best complete trial of one {knob} (its {other}, number and value at the left), each column a hidden layer, "
        f"each panel the counts of that layer's activations on the probe batch after the last epoch; {how}."
    )
    return Figure(figure, caption)


# -- 3. dead units -----------------------------------------------------------------------------
def _measured(data: ReportData, measure: str) -> list[TrialView]:
    """Trials with a learning rate and at least one hidden layer whose ``measure`` (a field of
    LayerDiagnostics) is a number, in order of learning rate (then stage and number)."""
    found = [t for t in data.trials if _learning_rate(t) is not None and any(v is not None for v in _by_layer(t, measure).values())]
    return sorted(found, key=lambda t: (_learning_rate(t), t.stage, t.number))


def _by_layer(trial: TrialView, measure: str) -> dict[int, float | None]:
    """Hidden layer number -> its ``measure``, None where it was not measured or not finite."""
    return {layer.layer: _number(getattr(layer, measure)) for layer in _layers(trial)}


def _dead_heatmap(data: ReportData) -> Item:
    trials = _measured(data, "dead_fraction")
    if not trials:
        return Words(
            f"No trial measured dead units: only the ReLU-like activations ({', '.join(DYING_NAMES)}) have them, "
            "and only complete trials store them."
        )
    keep = _stage_bests(data)
    shown, sampled = sample(trials, MAX_POINTS, keep=keep)
    depth = max(max(layer.layer for layer in _layers(t)) for t in shown)
    cells = [_by_layer(t, "dead_fraction") for t in shown]
    columns = [f"{_name(t, data)}, lr {show(_learning_rate(t))}" for t in shown]
    hovers = [hover(t) for t in shown]
    figure = go.Figure(go.Heatmap(
        z=[[cell.get(k) for cell in cells] for k in range(1, depth + 1)],
        x=columns,
        y=[f"layer {k}" for k in range(1, depth + 1)],
        text=[hovers for _ in range(depth)],
        hovertemplate="%{text}<br>%{y}: %{z:.1%} of units dead<extra></extra>",
        hoverongaps=False,
        zmin=0.0, zmax=1.0, colorscale="Reds",
        colorbar={"title": {"text": "dead"}, "tickformat": ".0%"},
        xgap=1, ygap=1,
    ))
    layout(figure, title="Dead units per layer, trials by learning rate", height=max(MIN_HEIGHT, 200 + 40 * depth))
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(title_text="trial, by increasing learning rate", type="category", tickangle=-45)
    left_out = len(data.trials) - len(trials)
    caption = one_sentence(
        "Each column is a trial (sorted left to right by learning rate), each row a hidden layer, and the colour the "
        "fraction of its units that output nothing for every probe example after the last epoch (dark: dead)",
        f"left out: {plural(left_out, 'trial')} without a dead-unit measure (sigmoid, tanh, or not complete)" if left_out else None,
        sampled_note(len(shown), len(trials)) if sampled else None,
    )
    return Figure(figure, caption)


# -- 4. and 5. a measure per layer against the learning rate -----------------------------------
Series = Callable[[TrialView], list[tuple[str, str, float]]]


def _per_layer_scatter(data: ReportData, trials: Sequence[TrialView], series: Series) -> tuple[go.Figure, str | None]:
    """One trace per series name (a layer, or an activation's layer) of (learning rate, value)
    points; ``series(trial)`` gives (trace name, marker symbol, value) for each point of a trial.
    Returns the figure and the clause its caption adds when trials were sampled (to keep the
    points within MAX_POINTS), else None."""
    per_trial = max((len(series(t)) for t in trials), default=1) or 1
    keep = _stage_bests(data)
    shown, sampled = sample(trials, max(len(keep), MAX_POINTS // per_trial), keep=keep)
    traces: dict[str, dict[str, Any]] = {}
    for trial in shown:
        trial_hover = hover(trial)
        for name, symbol, value in series(trial):
            points = traces.setdefault(name, {"x": [], "y": [], "text": [], "opacity": [], "symbol": symbol})
            points["x"].append(_learning_rate(trial))
            points["y"].append(value)
            points["text"].append(f"{trial_hover}<br>{plot_text(name)}: {value:.4g}")
            points["opacity"].append(FADED_OPACITY if faded(trial) else SOLID_OPACITY)
    scatter = go.Scattergl if sum(len(p["x"]) for p in traces.values()) > GL_ABOVE else go.Scatter
    figure = go.Figure()
    for index, (name, points) in enumerate(traces.items()):
        figure.add_trace(scatter(
            x=points["x"], y=points["y"], mode="markers", name=plot_text(name),
            marker={"color": PALETTE[index % len(PALETTE)], "symbol": points["symbol"], "size": 8, "opacity": points["opacity"]},
            text=points["text"], hovertemplate="%{text}<extra></extra>",
        ))
    figure.update_xaxes(type="log", title_text="learning rate")
    return figure, sampled_note(len(shown), len(trials)) if sampled else None


def _saturation(data: ReportData) -> Item:
    names = " or ".join(SATURATING_NAMES)
    trials = [t for t in _measured(data, "saturation_fraction") if _config(t, "activation") in SATURATING_NAMES]
    if not trials:
        used = any(_config(t, "activation") in SATURATING_NAMES for t in data.trials)
        why = "none of those trials completed with diagnostics" if used else f"no trial used {names}"
        return Words(f"Saturation is measured for {' and '.join(SATURATING_NAMES)} layers only, and {why}.")
    activations = sorted({str(_config(t, "activation")) for t in trials})
    symbols = {a: ACTIVATION_SYMBOLS[i % len(ACTIVATION_SYMBOLS)] for i, a in enumerate(activations)}

    def series(trial: TrialView) -> list[tuple[str, str, float]]:
        activation = str(_config(trial, "activation"))
        values = _by_layer(trial, "saturation_fraction")
        return [(f"{activation}, layer {k}", symbols[activation], v) for k, v in sorted(values.items()) if v is not None]

    figure, note = _per_layer_scatter(data, trials, series)
    figure.update_yaxes(title_text="saturated fraction", range=[-0.03, 1.03], tickformat=".0%")
    layout(figure, title=f"Saturation of {names} layers against learning rate", height=440)
    caption = one_sentence(
        f"Each mark is one hidden layer of a {names} trial after its last epoch: the learning rate (x, log) and the "
        "fraction of its activations within 1% of the activation's bounds (y), where the gradient all but vanishes",
        note,
    )
    return Figure(figure, caption)


def _positive(value: float | None) -> bool:
    return value is not None and value > 0  # a log axis cannot draw 0


def _update_ratios(data: ReportData) -> Item:
    def series(trial: TrialView) -> list[tuple[str, str, float]]:
        points = [(f"layer {k}", "circle", v) for k, v in sorted(_by_layer(trial, "update_ratio").items()) if _positive(v)]
        output = trial.record.diagnostics.output_layer if trial.record.diagnostics else None
        if output is not None and _positive(ratio := _number(output.update_ratio)):
            points.append(("output layer", "square", ratio))
        return points

    trials = [t for t in _measured(data, "update_ratio") if series(t)]
    if not trials:
        return Words("No trial stored an update/weight ratio (complete trials measure it), so there is nothing to draw.")
    figure, note = _per_layer_scatter(data, trials, series)
    rates = [_learning_rate(t) for t in trials]
    rule = f"rule of thumb {UPDATE_RATIO_RULE:g}"
    # Drawn as a trace, not a shape: it then has a legend entry and sits right on a log axis.
    figure.add_trace(go.Scatter(
        x=[min(rates) / 1.5, max(rates) * 1.5], y=[UPDATE_RATIO_RULE, UPDATE_RATIO_RULE], mode="lines+text",
        name=rule, text=["", rule], textposition="top left", line={"color": "#555", "dash": "dash"}, hoverinfo="skip",
    ))
    figure.update_yaxes(type="log", title_text="update / weight (last step)")
    layout(figure, title="Update/weight ratio per layer against learning rate", height=440)
    caption = one_sentence(
        "Each mark is one layer of a trial: the learning rate (x, log) and the norm of its weights' last update divided "
        f"by the norm of its weights (y, log); the dashed line is the rule of thumb, about {UPDATE_RATIO_RULE:g}: far "
        "above it the learning rate is likely too high, far below too low",
        note,
    )
    return Figure(figure, caption)

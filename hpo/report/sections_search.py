"""The report's search sections: summary, coarse to fine, history and importance.

Each function takes the collected :class:`~hpo.report.collect.ReportData` and returns a
:class:`~hpo.report.page.Section`; where there is nothing to draw, it says so in words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hpo.output import plural
from hpo.report.collect import MULTI_OBJECTIVE, OUTCOMES, ReportData, StageView, TrialView
from hpo.report.common import (
    FADED_OPACITY, SOLID_OPACITY, color_map, faded, hover, layout, none_completed, one_sentence, outcome_counts, plot_text, sample,
    sampled_note, scatter, show, value_name,
)
from hpo.report.page import Figure, Item, Section, Table, Words
from workers.knobs import Condition, KnobError

# The parameter drawn on the x axis of the coarse-to-fine scatter, when the stage searches it.
LEARNING_RATE = "learning_rate"
BN_SYMBOLS = {True: "circle", False: "diamond"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return show(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _status(data: ReportData) -> str:
    if data.failed:
        return "failed"
    if not data.running:
        return "finished"
    busy = any(t.outcome in ("RUNNING", "WAITING") for t in data.trials)
    return "running" if busy else "not finished, nothing running now"


# -- 1. summary --------------------------------------------------------------------------------
def summary_section(data: ReportData) -> Section:
    items: list[Item] = []
    what = "campaign" if data.campaign else "study"
    rows = [
        (what, data.name),
        ("status", _status(data)),
        ("dataset", data.dataset or "-"),
        ("storage", data.storage),
        ("stages", f"{len(data.stages)} of {data.planned_stages}"),
        ("wall time", _duration(data.wall_seconds) + " (first trial's start to last trial's end)"),
        ("workers", f"{len(data.workers)}: " + ", ".join(data.workers) if data.workers else "-"),
    ]
    if data.failed:
        rows.append(("failure", data.failed))
    items.append(Table(("", ""), tuple(rows)))
    stage_rows = []
    for stage in data.stages:
        counts = stage.counts
        best = stage.best
        stage_rows.append((
            stage.study,
            stage.plan.trials if stage.plan else "-",
            stage.epochs or "-",
            *(counts[o] for o in OUTCOMES),
            _fmt(best.value) if best else "-",
            stage.status or "-",
        ))
    items.append(Table(("stage", "budget", "epochs", *(o.lower() for o in OUTCOMES), "best", "status"), tuple(stage_rows), "Trials per stage and how they ended (diverged trials are counted apart from pruned ones)."))
    best = data.best
    if best is None and any(s.direction == MULTI_OBJECTIVE for s in data.stages):
        items.append(Words("This study optimizes several objectives at once, so there is no single best configuration."))
    elif best is None:
        items.append(Words(f"{none_completed(data)}, so there is no best configuration."))
    else:
        params = data.result.get("params") if data.result else None
        shown = params if isinstance(params, Mapping) else best.params
        best_rows = [(name, show(value)) for name, value in shown.items()]
        best_stage = next(s for s in data.stages if s.study == best.study)
        best_rows.append((value_name(best_stage), _fmt(best.value)))
        if data.result:
            best_rows.append(("final retrain: train accuracy", _fmt(data.result.get("train_accuracy"))))
            best_rows.append(("final retrain: test accuracy", _fmt(data.result.get("test_accuracy"))))
        elif best_stage.plan is not None and data.campaign is None and not best_stage.plan.is_last:
            # A stage reported alone: the retrain is of the campaign's best, in its last stage.
            best_rows.append(("final retrain", f"of the campaign's best, after its last stage: hpo report {best_stage.plan.campaign}"))
        elif best_stage.plan is not None:  # a study hpo did not create has no final retrain
            best_rows.append(("final retrain", "not yet: it runs when the last stage ends"))
        items.append(Table(("best configuration", f"{best.study} #{best.number}"), tuple(best_rows)))
    return Section("summary", "Summary", tuple(items))


# -- 2. coarse to fine -------------------------------------------------------------------------
def _numeric(ranges: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Searched numeric parameters (low < high), the learning rate first."""
    names = [n for n, spec in ranges.items() if spec.get("type") in ("float", "int") and spec.get("low") != spec.get("high")]
    return sorted(names, key=lambda n: n != LEARNING_RATE)


def _band(spec: Mapping[str, Any] | None) -> tuple[float, float] | None:
    if not spec or spec.get("type") not in ("float", "int"):
        return None
    return float(spec["low"]), float(spec["high"])


def _no_values(trials: list[TrialView], what: str) -> Words | None:
    """Words for finished trials none of which has a value (pruned before reporting one,
    diverged in their first epoch, several objectives): drawn at a made-up floor they would
    read as a value."""
    if any(t.last_accuracy is not None for t in trials):
        return None
    return Words(f"{what}: no finished trial has a value to draw ({outcome_counts(trials)}).")


def _trial_y(trial: TrialView, floor: float) -> float:
    y = trial.last_accuracy
    return floor if y is None else y


def _coarse_figure(stage: StageView, x_name: str, colors: dict[Any, str]) -> Figure | Words:
    finished = [t for t in stage.trials if t.outcome in ("COMPLETE", "PRUNED", "DIVERGED")]
    trials = [t for t in finished if x_name in t.params]
    if not trials:
        if finished:  # x_name is conditional, and no finished trial met its condition
            return Words(f"{stage.study}: none of its {plural(len(finished), 'finished trial')} has {x_name}, so there is nothing to draw.")
        if stage.ended:  # its trials all failed, or it ran none
            ended = outcome_counts(stage.trials)
            return Words(f"{stage.study}: no trial completed, was pruned or diverged ({ended}), so there is nothing to draw.")
        return Words(f"{stage.study}: no trial has finished yet, so there is nothing to draw.")
    if (words := _no_values(trials, stage.study)) is not None:
        return words
    best = stage.best
    shown, sampled = sample(trials, keep=[best] if best else [])
    values = [t.last_accuracy for t in shown if t.last_accuracy is not None]
    floor = min(values) if values else 0.0
    log_x = bool(stage.ranges.get(x_name, {}).get("log"))
    figure = go.Figure()
    groups: dict[tuple[Any, Any, bool], list[TrialView]] = {}
    for t in shown:
        groups.setdefault((t.params.get("activation"), t.params.get("batch_norm"), faded(t)), []).append(t)
    for (activation, bn, is_faded), group in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]), kv[0][2])):
        label = f"{activation if activation is not None else 'trials'}" + (f", batch norm {show(bn)}" if bn is not None else "")
        figure.add_trace(scatter(
            x=[t.params[x_name] for t in group],
            y=[_trial_y(t, floor) for t in group],
            mode="markers",
            name=plot_text(label + (" (pruned or diverged)" if is_faded else "")),
            legendgroup=label,
            marker={
                "color": colors.get(activation, "#1f77b4"),
                "symbol": ["x" if t.outcome == "DIVERGED" else BN_SYMBOLS.get(bn, "circle") for t in group],
                "size": 8,
                "opacity": FADED_OPACITY if is_faded else SOLID_OPACITY,
            },
            text=[hover(t) for t in group],
            hovertemplate="%{text}<extra></extra>",
        ))
    searched, narrowed = _band(stage.ranges.get(x_name)), _band((stage.child_ranges or {}).get(x_name))
    if searched:
        figure.add_vrect(x0=searched[0], x1=searched[1], fillcolor="#999", opacity=0.08, line_width=0, annotation_text="searched", annotation_position="bottom left")
    if narrowed:
        figure.add_vrect(x0=narrowed[0], x1=narrowed[1], fillcolor="#2ca02c", opacity=0.15, line_width=1, annotation_text=f"stage {stage.stage + 1}", annotation_position="top right")
    if best is not None and x_name in best.params:
        figure.add_trace(go.Scatter(
            x=[best.params[x_name]], y=[best.value], mode="markers", name=f"best: #{best.number}",
            marker={"symbol": "star", "size": 18, "color": "gold", "line": {"color": "black", "width": 1}},
            text=[hover(best)], hovertemplate="%{text}<extra></extra>",
        ))
    epochs = f", {plural(stage.epochs, 'epoch')} per trial" if stage.epochs else ""
    layout(figure, title=plot_text(f"{stage.study}{epochs}"), xaxis_title=plot_text(x_name), yaxis_title=value_name(stage), height=560,
           legend={"orientation": "h", "y": -0.2, "font": {"size": 11}})
    if log_x:
        figure.update_xaxes(type="log")
    looks = [
        *(["coloured by activation"] if any("activation" in t.params for t in shown) else []),
        *(["circles with batch norm and diamonds without"] if any("batch_norm" in t.params for t in shown) else []),
    ]
    how = (
        f"Each mark is a trial of {stage.study}: its {x_name} (x) and the {value_name(stage)} it reached (y)"
        + "".join(f", {look}" for look in looks)
        + "; faded marks were pruned, x marks diverged (hover for the reason); the grey band is the range searched"
        + (f", the green band the range stage {stage.stage + 1} searches" if narrowed else "")
        + ", the star the best trial"
    )
    when = _condition(stage.ranges.get(x_name))
    conditional = (
        None if when is None else f"{x_name} is sampled only with {when}, so only the {len(trials)} finished trials that have it are drawn"
    )
    return Figure(figure, one_sentence(how, conditional, sampled_note(len(shown), len(trials)) if sampled else None))


def _condition(spec: Any) -> Condition | None:
    """The condition a stored parameter spec carries under ``when`` (None: it always applies)."""
    when = spec.get("when") if isinstance(spec, Mapping) else None
    try:
        return Condition.of(when) if when else None
    except KnobError:  # not what hpo stores: say nothing rather than something wrong
        return None


def _pair_figure(stage: StageView, x_name: str, y_name: str) -> Figure | None:
    trials = [t for t in stage.trials if t.outcome == "COMPLETE" and x_name in t.params and y_name in t.params and t.value is not None]
    if len(trials) < 2:
        return None
    shown, sampled = sample(trials, keep=[stage.best] if stage.best else [])
    figure = go.Figure(scatter(
        x=[t.params[x_name] for t in shown],
        y=[t.params[y_name] for t in shown],
        mode="markers",
        marker={"color": [t.value for t in shown], "colorscale": "Viridis", "showscale": True, "colorbar": {"title": value_name(stage)}, "size": 9,
                # yellow is the best value whichever way the study optimizes
                "reversescale": stage.direction == "minimize"},
        text=[hover(t) for t in shown],
        hovertemplate="%{text}<extra></extra>",
        showlegend=False,
    ))
    layout(figure, title=plot_text(f"{stage.study}: {x_name} and {y_name}"), xaxis_title=plot_text(x_name), yaxis_title=plot_text(y_name), height=420)
    for axis, name in (("xaxis", x_name), ("yaxis", y_name)):
        if stage.ranges.get(name, {}).get("log"):
            figure.update_layout(**{axis: {"type": "log"}})
    how = (f"Each complete trial of {stage.study} at its {x_name} and {y_name}, coloured by {value_name(stage)} "
           "(yellow is best): a bright corner is where the next stage should look")
    conditional = next(
        (f"{name} is sampled only with {when}, so only the {len(trials)} trials that have both are drawn"
         for name in (x_name, y_name) if (when := _condition(stage.ranges.get(name))) is not None),
        None,
    )
    return Figure(figure, one_sentence(how, conditional, sampled_note(len(shown), len(trials)) if sampled else None))


def stage_coarse_items(stage: StageView, colors: Mapping[Any, str]) -> list[Item]:
    """One stage's part of the coarse-to-fine section: its scatter, the scatter of its two
    first numeric parameters, and the table of how its child narrowed it."""
    numeric = _numeric(stage.ranges)
    if not numeric:
        return [Words(f"{stage.study} searches no numeric parameter, so there is no range to narrow.")]
    items: list[Item] = [_coarse_figure(stage, numeric[0], colors)]
    if len(numeric) > 1 and (pair := _pair_figure(stage, numeric[0], numeric[1])) is not None:
        items.append(pair)
    if stage.narrowing:
        items.append(Table(
            ("parameter", f"stage {stage.stage}", f"stage {stage.stage + 1}", "why"),
            tuple((c.get("name"), c.get("old_text"), c.get("new_text"), c.get("reason")) for c in stage.narrowing),
            f"How stage {stage.stage + 1}'s space was narrowed from {stage.study}'s trials.",
        ))
    return items


def activation_colors(data: ReportData) -> dict[Any, str]:
    """One colour per activation across the whole report."""
    return color_map(t.params.get("activation") for t in data.trials)


def coarse_section(data: ReportData) -> Section:
    colors = activation_colors(data)
    items: list[Item] = [item for stage in data.stages for item in stage_coarse_items(stage, colors)]
    if len(data.stages) == 1 and data.campaign:
        items.append(Words(_one_stage(data)))
    return Section("coarse-to-fine", "Coarse to fine", tuple(items))


def _one_stage(data: ReportData) -> str:
    """Why a campaign of one stage has no narrowing: it was planned so, it has not reached its
    second stage yet, or it stopped before it."""
    if data.planned_stages == 1:
        return "This campaign has one stage, so nothing is narrowed." if data.running else "This campaign has one stage: nothing was narrowed."
    if data.running:
        return "This campaign has one stage so far: nothing has been narrowed yet."
    return f"This campaign stopped in its first stage of {data.planned_stages}: nothing was narrowed."


# -- 4. history --------------------------------------------------------------------------------
def history_section(data: ReportData) -> Section:
    ordered = [t for stage in data.stages for t in sorted(stage.trials, key=lambda t: t.number) if t.outcome in ("COMPLETE", "PRUNED", "DIVERGED")]
    if not ordered:
        if data.running:
            return Section("history", "History", (Words("No trial has finished yet."),))
        said = f"No trial completed, was pruned or diverged ({outcome_counts(data.trials)}), so there is nothing to draw."
        return Section("history", "History", (Words(said),))
    if (words := _no_values(ordered, "History")) is not None:
        return Section("history", "History", (words,))
    maximize = data.stages[-1].direction != "minimize"
    index = {id(t): i + 1 for i, t in enumerate(ordered)}
    best_so_far: list[float | None] = []
    current: float | None = None
    for t in ordered:
        if t.outcome == "COMPLETE" and t.value is not None:
            current = t.value if current is None else (max if maximize else min)(current, t.value)
        best_so_far.append(current)
    complete = [t for t in ordered if t.outcome == "COMPLETE" and t.value is not None]
    keep = [t for t in complete if t.value == current]
    shown, sampled = sample(ordered, keep=keep)
    figure = go.Figure()
    stage_colors = color_map(t.stage for t in ordered)
    values = [t.last_accuracy for t in shown if t.last_accuracy is not None]
    floor = min(values) if values else 0.0
    for stage in data.stages:
        group = [t for t in shown if t.stage == stage.stage]
        if not group:
            continue
        figure.add_trace(scatter(
            x=[index[id(t)] for t in group], y=[_trial_y(t, floor) for t in group], mode="markers",
            name=f"stage {stage.stage}" + (f" ({plural(stage.epochs, 'epoch')})" if stage.epochs else ""),
            marker={"color": stage_colors[stage.stage], "size": 7, "opacity": [FADED_OPACITY if faded(t) else SOLID_OPACITY for t in group],
                    "symbol": ["x" if t.outcome == "DIVERGED" else "circle" for t in group]},
            text=[hover(t) for t in group], hovertemplate="%{text}<extra></extra>",
        ))
    step_x = [index[id(t)] for t in ordered]
    if sampled:  # the line keeps one point per drawn trial, so it stays exact where it changes
        drawn = {id(t) for t in shown}
        pairs = [(x, b) for x, b, t in zip(step_x, best_so_far, ordered) if id(t) in drawn or (x > 1 and best_so_far[x - 2] != b)]
    else:
        pairs = list(zip(step_x, best_so_far))
    figure.add_trace(scatter(x=[p[0] for p in pairs], y=[p[1] for p in pairs], mode="lines", name="best so far", line={"color": "black", "shape": "hv"}, hoverinfo="skip"))
    boundary = 0
    for stage in data.stages[:-1]:
        boundary += sum(1 for t in ordered if t.stage == stage.stage)
        figure.add_vline(x=boundary + 0.5, line_dash="dash", line_color="#888", annotation_text=f"stage {stage.stage + 1}", annotation_position="top right")
    layout(figure, title="Every trial in order", xaxis_title="trial (in stage order)", yaxis_title=value_name(data.stages[-1]), height=420)
    if len(data.stages) > 1:
        how = (
            "Every finished trial in order, stage after stage (dashed lines), with the best value so far as a black step line; "
            "faded marks were pruned, x marks diverged; later stages train longer, so the same configuration scores higher in them"
        )
    else:
        how = "Every finished trial in order, with the best value so far as a black step line; faded marks were pruned, x marks diverged"
    caption = one_sentence(how, sampled_note(len(shown), len(ordered)) if sampled else None)
    return Section("history", "History", (Figure(figure, caption),))


# -- 5. importance -----------------------------------------------------------------------------
def importance_section(data: ReportData) -> Section:
    items: list[Item] = []
    with_scores = [s for s in data.stages if s.importance]
    for stage in data.stages:
        if not stage.importance:
            items.append(Words(f"{stage.study}: {stage.importance_note or 'no importances'}."))
    if with_scores:
        figure = make_subplots(rows=1, cols=len(with_scores), subplot_titles=[plot_text(s.study) for s in with_scores], shared_yaxes=False)
        for col, stage in enumerate(with_scores, start=1):
            names = list(stage.importance)[::-1]
            figure.add_trace(go.Bar(
                x=[stage.importance[n] for n in names], y=[plot_text(n) for n in names], orientation="h", showlegend=False,
                marker_color="#1f77b4", hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            ), row=1, col=col)
            figure.update_xaxes(range=[0, 1], title_text="importance", row=1, col=col)
        layout(figure, height=120 + 40 * max(len(s.importance) for s in with_scores))
        items.insert(0, Figure(figure, (
            f"How much of the variation in {value_name(with_scores[0])} each parameter explains within a stage "
            "(Optuna's get_param_importances with its default evaluator, PED-ANOVA; each stage sums to 1): a parameter that stays important after narrowing still matters inside the new range."
        )))
    return Section("importance", "Importance", tuple(items))


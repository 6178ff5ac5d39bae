"""The report's trial sections: accuracy per choice, learning curves, and the workers' time.

Each public function takes the collected :class:`~hpo.report.collect.ReportData` and returns a
:class:`~hpo.report.page.Section`. A stage with nothing to draw (no trials, none complete,
every one diverged, a cross-validated stage without curves, trials not started) says so in
words instead of showing empty axes.

Plotly draws titles, legend names, tick labels and hover text as HTML, so every name or value
that came from the user or from storage is escaped before it goes into a figure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hpo.output import plural
from hpo.report import common
from hpo.report.collect import ReportData, StageView, TrialView
from hpo.report.page import Figure, Section, Table, Words

TOP_CURVES = 10  # complete trials whose curves are drawn, best first
FADED_CURVES = 10  # pruned (and, apart, diverged) trials whose curves are drawn: those that went furthest
STRIP_MAX = 30  # a choice with more complete trials than this shows a box with its outliers, not every point
SUBPLOT_COLUMNS = 3
DROPPED_COLOR = common.OUTCOME_COLORS["DIVERGED"]
TRANSPARENT = "rgba(0,0,0,0)"


def _sentence(text: str) -> str:
    """``text`` starting with a capital (the rest as it is: a study's name keeps its case)."""
    return text[:1].upper() + text[1:]


def _stage_name(stage: StageView) -> str:
    """How the words of these sections name a stage (plain text; the page escapes it)."""
    return f"stage {stage.stage} ({stage.study})" if stage.plan is not None else f"study {stage.study}"


def _ranked_complete(stage: StageView) -> list[TrialView]:
    """The stage's complete trials with a value, best first (ties: the lower number first)."""
    complete = [t for t in stage.trials if t.outcome == "COMPLETE" and t.value is not None]
    sign = 1.0 if stage.direction == "minimize" else -1.0
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def _all_diverged(stage: StageView) -> Words | None:
    """Words for a stage whose every trial diverged, quoting the first one's reason."""
    if not stage.trials or any(t.outcome != "DIVERGED" for t in stage.trials):
        return None
    first = stage.trials[0]
    return Words(
        f"Every trial of {_stage_name(stage)} diverged ({len(stage.trials)} of {len(stage.trials)}); "
        f"trial {first.number}: {first.reason or 'no reason stored'}. "
        "Nothing reached an accuracy to compare: the learning rate is the usual suspect."
    )


def _same(a: Any, b: Any) -> bool:
    """Equal and of one type, as the search space compares choices (True, 1 and 1.0 differ)."""
    return type(a) is type(b) and a == b


def _subplot_grid(n: int) -> tuple[int, int]:
    cols = min(n, SUBPLOT_COLUMNS)
    return math.ceil(n / cols), cols


def _axis_suffix(index: int) -> str:
    """Plotly's axis name suffix of the 0-based subplot ``index`` ("" for the first)."""
    return "" if index == 0 else str(index + 1)


# ---------------------------------------------------------------------------
# choices
# ---------------------------------------------------------------------------


def choice_texts(choices: Sequence[Any]) -> list[str]:
    """How each choice is written: as everywhere in the report, unless two would read alike
    (pca_components 1 and 1.0 are different choices), which are then written as Python does."""
    texts = [common.show(c) for c in choices]
    return [repr(c) if texts.count(text) > 1 else text for c, text in zip(choices, texts)]


def choice_label(text: str, n: int) -> str:
    """A choice's category on the axis: its text and how many trials took it, escaped."""
    return f"{common.plot_text(text)} (n={n})"


def _next_stage(stage: StageView, name: str, choices: Sequence[Any]) -> tuple[list[bool], str]:
    """Which of ``choices`` the next stage dropped, and the words for a kept choice (or for
    every choice when there is no next stage to compare with)."""
    if stage.child_ranges is None:
        if stage.plan is None:
            return [False] * len(choices), "-"
        return [False] * len(choices), "last stage" if stage.plan.is_last else "next stage not planned yet"
    child = stage.child_ranges.get(name)
    if not isinstance(child, Mapping) or child.get("type") != "choice":
        return [False] * len(choices), "not searched by the next stage"
    kept = child.get("choices") or []
    return [not any(_same(c, k) for k in kept) for c in choices], "kept"


def _narrowing_reason(stage: StageView, name: str) -> str:
    for row in stage.narrowing:
        if row.get("name") == name and isinstance(row.get("reason"), str):
            return row["reason"]
    return "not in the next stage's space"


def _stage_choices(stage: StageView) -> list[Figure | Words | Table]:
    title = _stage_name(stage)
    choice_params = {
        name: list(spec.get("choices") or [])
        for name, spec in stage.ranges.items()
        if isinstance(spec, Mapping) and spec.get("type") == "choice"
    }
    fixed = [f"{name}={common.show(c[0])}" for name, c in choice_params.items() if len(c) == 1]
    varying = {name: c for name, c in choice_params.items() if len(c) > 1}
    fixed_clause = f"fixed in this stage: {', '.join(fixed)}" if fixed else None
    fixed_note = f" {_sentence(fixed_clause)}." if fixed_clause else ""
    if not stage.trials:
        return [Words(f"{_sentence(_stage_name(stage))} has no trials yet.")]
    if not varying:
        return [Words(f"{_sentence(_stage_name(stage))} searches no choice parameter.{fixed_note}")]

    items: list[Figure | Words | Table] = []
    ranked = _ranked_complete(stage)
    if (words := _all_diverged(stage)) is not None:
        items.append(words)
    elif not ranked:
        what = "has a single value" if stage.counts["COMPLETE"] else "completed"  # several objectives
        items.append(Words(
            f"No trial of {title} {what} ({common.outcome_counts(stage.trials)}): there is no accuracy to "
            f"compare per choice; the table counts the trials.{fixed_note}"
        ))
    else:
        items.append(_choices_figure(stage, varying, ranked, fixed_clause))
    items.append(_choices_table(stage, varying, ranked))
    return items


def _choices_figure(stage: StageView, varying: Mapping[str, list], ranked: list[TrialView], fixed_clause: str | None) -> Figure:
    drawn_all = [t for t in stage.trials if t.last_accuracy is not None]
    budget = max(1, common.MAX_POINTS // len(varying))
    drawn, sampled = common.sample(drawn_all, budget, keep=ranked[:1])
    ranked_set = set(map(id, ranked))
    rows, cols = _subplot_grid(len(varying))
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=[common.plot_text(n) for n in varying], vertical_spacing=0.22 / rows)
    boxes_anywhere = False
    for index, (name, choices) in enumerate(varying.items()):
        row, col = divmod(index, cols)
        counts = [sum(_same(t.params.get(name), c) for t in stage.trials) for c in choices]
        labels = [choice_label(text, n) for text, n in zip(choice_texts(choices), counts)]
        complete, others = [], []
        for trial in drawn:
            label = next((lab for c, lab in zip(choices, labels) if _same(trial.params.get(name), c)), None)
            if label is not None:  # a value outside the space (a trial of another space) is left out
                (complete if id(trial) in ranked_set else others).append((label, trial))
        per_choice = max((sum(lab == x for lab, _ in complete) for x in labels), default=0)
        boxes = per_choice > STRIP_MAX
        boxes_anywhere |= boxes
        where = {"row": row + 1, "col": col + 1}
        # Every choice on the axis, in the space's order, even one no trial took.
        figure.add_trace(
            go.Scatter(x=labels, y=[None] * len(labels), mode="markers", showlegend=False, hoverinfo="skip"), **where
        )
        figure.add_trace(_choice_box(complete, "complete", common.OUTCOME_COLORS["COMPLETE"], boxes, index == 0), **where)
        if others:
            faded = _choice_box(others, "pruned or diverged (last accuracy)", common.OUTCOME_COLORS["PRUNED"], False, True)
            faded.update(opacity=common.FADED_OPACITY, legendgroup="faded")
            figure.add_trace(faded, **where)
        dropped, _ = _next_stage(stage, name, choices)
        suffix = _axis_suffix(index)
        ticktext = [f'<span style="color:{DROPPED_COLOR}">{lab}</span>' if d else lab for lab, d in zip(labels, dropped)]
        figure.update_xaxes(categoryorder="array", categoryarray=labels, tickvals=labels, ticktext=ticktext, **where)
        reason = _narrowing_reason(stage, name)
        for label, was_dropped in zip(labels, dropped):
            if was_dropped:
                figure.add_annotation(
                    x=label, y=1, xref=f"x{suffix}", yref=f"y{suffix} domain", yanchor="top", showarrow=False,
                    text="dropped", font={"color": DROPPED_COLOR}, hovertext=common.plot_text(reason),
                )
    figure.update_yaxes(title_text=common.value_name(stage), col=1)
    common.layout(
        figure,
        title=common.plot_text(_sentence(_stage_name(stage))), height=260 + 280 * rows, boxmode="overlay",
        legend={"orientation": "h", "y": -0.12},
    )
    # A label shown once per figure, not per subplot: the first "faded" trace carries it.
    seen = False
    for trace in figure.data:
        if getattr(trace, "legendgroup", None) == "faded":
            trace.showlegend = not seen
            seen = True
    how = (
        "a box spans the middle half of a choice's complete trials, its line the median, "
        "dots beyond its whiskers are outliers"
        if boxes_anywhere else "each green dot is a complete trial"
    )
    caption = common.one_sentence(
        f"{_sentence(common.value_name(stage))} of the trials of {_stage_name(stage)} by the choice they took "
        f"(n: trials that took it, whatever their outcome): {how}; faded dots are pruned or diverged "
        f"trials' last accuracy, and a red \"dropped\" marks a choice the next stage no longer searches "
        f"(hover it for why)",
        fixed_clause,
        common.sampled_note(len(drawn), len(drawn_all)) if sampled else None,
    )
    return Figure(figure, caption)


def _choice_box(points: list[tuple[str, TrialView]], name: str, color: str, boxes: bool, legend: bool) -> go.Box:
    """Points of trials by choice: a box with its outliers (``boxes``), else a strip of every
    point (a box trace with the box itself transparent, as plotly.express draws strips)."""
    trace = go.Box(
        x=[lab for lab, _ in points],
        y=[t.last_accuracy for _, t in points],
        hovertext=[common.hover(t) for _, t in points],
        hovertemplate="%{hovertext}<extra></extra>",
        name=name,
        legendgroup=name,
        showlegend=legend,
        marker={"color": color, "size": 7},
        boxpoints="outliers" if boxes else "all",
        jitter=0.35,
        pointpos=0,
    )
    if not boxes:
        trace.update(fillcolor=TRANSPARENT, line={"color": TRANSPARENT}, hoveron="points")
    return trace


def _choices_table(stage: StageView, varying: Mapping[str, list], ranked: list[TrialView]) -> Table:
    rows = []
    pick = min if stage.direction == "minimize" else max
    for name, choices in varying.items():
        dropped, kept_words = _next_stage(stage, name, choices)
        reason = _narrowing_reason(stage, name)
        for choice, text, was_dropped in zip(choices, choice_texts(choices), dropped):
            took = [t for t in stage.trials if _same(t.params.get(name), choice)]
            values = [t.value for t in ranked if _same(t.params.get(name), choice)]
            rows.append((
                name,
                text,
                len(took),
                len(values),
                f"{pick(values):.4f}" if values else "-",
                f"{statistics.median(values):.4f}" if values else "-",
                "dropped" if was_dropped else kept_words,
                reason if was_dropped else "",
            ))
    caption = (
        f"{_sentence(_stage_name(stage))}: per choice, the trials that took it, how many completed, "
        f"the best and median {common.value_name(stage)} of those, and whether the next stage kept it (and why not)."
    )
    columns = ("parameter", "choice", "trials", "complete", "best", "median", "next stage", "why dropped")
    return Table(columns, tuple(rows), caption)


def choices_section(data: ReportData) -> Section:
    """Accuracy per choice of every choice parameter, per stage, with the choices the next
    stage dropped marked, and a table of counts per choice."""
    items: list[Figure | Words | Table] = []
    for stage in data.stages:
        items.extend(_stage_choices(stage))
    if not items:
        items.append(Words("There are no stages to show."))
    return Section("choices", "Choices", tuple(items))


# ---------------------------------------------------------------------------
# learning curves
# ---------------------------------------------------------------------------


def _curve(trial: TrialView) -> tuple[list, list, list]:
    curve = trial.record.curve
    if curve is None:
        return [], [], []
    return list(curve.epoch), list(curve.train_loss), list(curve.val_accuracy)


def diverged_epoch(trial: TrialView) -> int:
    """The epoch in which a diverged trial stopped: the one after the last it stored."""
    return len(_curve(trial)[0]) + 1


def _furthest(trials: Sequence[TrialView], n: int) -> list[TrialView]:
    """The ``n`` trials that trained the most epochs (ties: the lower number first)."""
    return sorted(trials, key=lambda t: (-len(_curve(t)[0]), t.number))[:n]


def _stage_curves(stage: StageView) -> list[Figure | Words]:
    title = _stage_name(stage)
    if not stage.trials:
        return [Words(f"{_sentence(_stage_name(stage))} has no trials yet.")]
    if stage.plan is not None and stage.plan.cv and not any(_curve(t)[0] for t in stage.trials):
        # Workers before the folds trained side by side stored no curve for a cross-validated
        # trial; today's store the mean over the folds at each epoch, drawn as any curve.
        return [Words(
            f"{_sentence(_stage_name(stage))} is cross-validated ({stage.plan.cv} folds): its trials store each "
            "fold's accuracy, not a curve per epoch, so there are no learning curves to draw."
        )]
    if (words := _all_diverged(stage)) is not None:
        return [words]
    with_curve = [t for t in stage.trials if _curve(t)[0]]
    top = [t for t in _ranked_complete(stage) if _curve(t)[0]][:TOP_CURVES]
    pruned = _furthest([t for t in with_curve if t.outcome == "PRUNED"], FADED_CURVES)
    diverged_lines = _furthest([t for t in with_curve if t.outcome == "DIVERGED"], FADED_CURVES)
    lines = top + pruned + diverged_lines
    if not lines:
        if stage.plan is None:
            return [Words(f"No trial of {title} stored a learning curve (hpo's workers store one per trial they train).")]
        counts = common.outcome_counts(stage.trials)
        if stage.ended:  # none will
            return [Words(f"No trial of {title} finished an epoch ({counts}).")]
        return [Words(f"No trial of {title} has finished an epoch yet ({counts}).")]

    items: list[Figure | Words] = []
    longest = max(len(_curve(t)[0]) for t in lines)
    if longest < 2:
        epochs = stage.epochs or 1
        items.append(Words(
            f"Curves need 2 or more epochs: the trials of {title} trained {plural(epochs, 'epoch')} "
            "each, so each trial below is a single point."
        ))
    if not top:
        items.append(Words(
            f"No trial of {title} completed ({common.outcome_counts(stage.trials)}); the faded curves are the trials that went furthest."
        ))
    items.append(_curves_figure(stage, top, pruned, diverged_lines, longest))
    return items


def _curves_figure(
    stage: StageView, top: list[TrialView], pruned: list[TrialView], diverged_lines: list[TrialView], longest: int
) -> Figure:
    diverged_all = [t for t in stage.trials if t.outcome == "DIVERGED"]
    marks, sampled = common.sample(diverged_all)
    lines = top + pruned + diverged_lines
    n_points = 2 * sum(len(_curve(t)[0]) for t in lines) + len(marks)
    scatter = go.Scattergl if n_points > common.GL_ABOVE else go.Scatter
    mode = "markers" if longest < 2 else "lines+markers" if longest <= 30 else "lines"
    figure = make_subplots(rows=1, cols=2, subplot_titles=("training loss", common.value_name(stage)), horizontal_spacing=0.08)
    colors = common.color_map([t.number for t in top])

    def add(trial: TrialView, *, name: str, group: str, color: str, solid: bool, legend: bool) -> None:
        epochs, loss, accuracy = _curve(trial)
        text = common.hover(trial)
        for col, ys, what in ((1, loss, "loss"), (2, accuracy, "accuracy")):
            figure.add_trace(scatter(
                x=epochs, y=ys, mode=mode, name=name, legendgroup=group, showlegend=legend and col == 1,
                line={"color": color, "width": 2 if solid else 1}, marker={"color": color, "size": 6},
                opacity=common.SOLID_OPACITY if solid else common.FADED_OPACITY,
                # One hover text per trace, not per point: Plotly fills %{meta} from the trace.
                meta=text, hovertemplate=f"%{{meta}}<br>epoch %{{x}}: {what} %{{y:.4g}}<extra></extra>",
            ), row=1, col=col)

    for trial in top:
        add(trial, name=f"#{trial.number} ({trial.value:.4f})", group=f"trial-{trial.number}",
            color=colors[trial.number], solid=True, legend=True)
    for i, trial in enumerate(pruned):
        add(trial, name=f"pruned ({len(pruned)} that went furthest)", group="pruned",
            color=common.OUTCOME_COLORS["PRUNED"], solid=False, legend=i == 0)
    for i, trial in enumerate(diverged_lines):
        add(trial, name="diverged (before diverging)", group="diverged-lines",
            color=common.OUTCOME_COLORS["DIVERGED"], solid=False, legend=i == 0)
    if marks:
        # Above every drawn loss: a diverged trial's loss left the chart.
        losses = [v for t in lines for v in _curve(t)[1] if v is not None and math.isfinite(v)]
        ceiling = max(losses) * 1.1 if losses else 1.0
        figure.add_trace(scatter(
            x=[diverged_epoch(t) for t in marks], y=[ceiling] * len(marks), mode="markers",
            name=f"diverged (n={len(diverged_all)}): epoch it stopped in", legendgroup="diverged",
            marker={"symbol": "x", "size": 11, "color": common.OUTCOME_COLORS["DIVERGED"]},
            hovertext=[f"{common.hover(t)}<br>diverged in epoch {diverged_epoch(t)}" for t in marks],
            hovertemplate="%{hovertext}<extra></extra>",
        ), row=1, col=1)
    last = max([longest] + [diverged_epoch(t) for t in marks])
    figure.update_xaxes(title_text="epoch", range=[0.5, last + 0.5], tick0=1, dtick=1 if last <= 20 else None)
    common.layout(figure, title=common.plot_text(_sentence(_stage_name(stage))), height=460)
    shown = []
    if top:
        shown.append(f"the {len(top)} best complete trials in colour")
    if pruned or diverged_lines:
        shown.append("the pruned and diverged trials that went furthest faded")
    if marks:
        shown.append("an x at the top of the loss panel at the epoch each diverged trial stopped in (hover for its reason)")
    caption = common.one_sentence(
        f"Training loss (left) and {common.value_name(stage)} (right) per epoch of the trials of {_stage_name(stage)}: "
        + ", ".join(shown),
        common.sampled_note(len(marks), len(diverged_all)) if sampled else None,
    )
    return Figure(figure, caption)


def curves_section(data: ReportData) -> Section:
    """Per stage, training loss and validation accuracy per epoch of the best complete trials,
    with pruned trials faded and diverged ones marked where they stopped."""
    items: list[Figure | Words] = []
    for stage in data.stages:
        items.extend(_stage_curves(stage))
    if not items:
        items.append(Words("There are no stages to show."))
    return Section("learning-curves", "Learning curves", tuple(items))


# ---------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------

NO_WORKER = "(no worker recorded)"
RETRY_PATTERN = "/"  # a retry of a failed trial
REQUEUED_PATTERN = "x"  # a failed trial queued again as a retry


def worker_of(trial: TrialView) -> str:
    return trial.record.worker or NO_WORKER


def _requeued(trials: Sequence[TrialView]) -> set[tuple[str, int]]:
    """(study, number) of the failed trials that another trial retries."""
    retried = {(t.study, t.retry_of) for t in trials if t.retry_of is not None}
    return {(t.study, t.number) for t in trials if t.outcome == "FAIL" and (t.study, t.number) in retried}


def _timings(trial: TrialView) -> tuple[float, float]:
    timings = trial.record.timings
    if timings is None:
        return 0.0, 0.0
    return float(timings.train_seconds or 0.0), float(timings.overhead_seconds or 0.0)


def timeline_bars(trials: Sequence[TrialView]) -> list[tuple[TrialView, datetime, datetime]]:
    """The trials with a start time, each with its end: its completion, or for a trial still
    running the latest time the data knows."""
    started = [t for t in trials if t.started is not None]
    known = [t.completed for t in started if t.completed] + [t.started for t in started]
    latest = max(known) if known else None
    return [(t, t.started, t.completed or latest) for t in started]


def _timeline_figure(data: ReportData, bars: list[tuple[TrialView, datetime, datetime]]) -> Figure:
    keep = [best for stage in data.stages if (best := stage.best) is not None]
    drawn_trials, sampled = common.sample([t for t, _, _ in bars], keep=keep)
    chosen = {id(t) for t in drawn_trials}
    drawn = [bar for bar in bars if id(bar[0]) in chosen]
    requeued = _requeued(data.trials)
    retried_as = {(t.study, t.retry_of): t.number for t in data.trials if t.retry_of is not None}
    first_start: dict[str, datetime] = {}
    for trial, start, _ in bars:
        first_start[worker_of(trial)] = min(start, first_start.get(worker_of(trial), start))
    rows = sorted(first_start, key=lambda w: (first_start[w], w))
    figure = go.Figure()
    for outcome in common.OUTCOME_COLORS:
        these = [bar for bar in drawn if bar[0].outcome == outcome]
        if not these:
            continue
        patterns, texts = [], []
        for trial, start, end in these:
            lines = [common.hover(trial), f"stage {trial.stage}, worker {common.plot_text(worker_of(trial))}",
                     f"duration {(end - start).total_seconds():.1f} s" + (" so far" if trial.completed is None else "")]
            if trial.retry_of is not None:
                lines.append(f"retry of failed trial #{trial.retry_of}")
            if (trial.study, trial.number) in requeued:
                lines.append(f"queued again as trial #{retried_as[(trial.study, trial.number)]}")
            texts.append("<br>".join(lines))
            patterns.append(
                RETRY_PATTERN if trial.retry_of is not None
                else REQUEUED_PATTERN if (trial.study, trial.number) in requeued else ""
            )
        figure.add_trace(go.Bar(
            orientation="h",
            base=[start.isoformat(sep=" ") for _, start, _ in these],
            x=[(end - start).total_seconds() * 1000.0 for _, start, end in these],
            y=[common.plot_text(worker_of(t)) for t, _, _ in these],
            name=outcome.lower(),
            marker={"color": common.OUTCOME_COLORS[outcome], "pattern": {"shape": patterns, "fgcolor": "#000"}},
            hovertext=texts,
            hovertemplate="%{hovertext}<extra></extra>",
        ))
    stage_starts = {}
    for trial, start, _ in bars:
        stage_starts[trial.stage] = min(start, stage_starts.get(trial.stage, start))
    if len(data.stages) > 1:
        for stage, start in sorted(stage_starts.items()):
            figure.add_vline(x=start.isoformat(sep=" "), line={"color": "#888", "dash": "dot", "width": 1})
            figure.add_annotation(x=start.isoformat(sep=" "), y=1, yref="paper", yanchor="bottom", showarrow=False,
                                  text=f"stage {stage}", font={"color": "#666"})
    figure.update_xaxes(type="date", title_text="time")
    figure.update_yaxes(
        type="category", categoryorder="array", categoryarray=[common.plot_text(w) for w in reversed(rows)], title_text="worker"
    )
    common.layout(figure, barmode="overlay", height=max(420, 180 + 36 * len(rows)), title="Trials per worker over time")
    caption = common.one_sentence(
        "Each bar is a trial, from its start to its end on the row of the worker that ran it, coloured "
        f"by outcome; hatched ({RETRY_PATTERN}) bars retry a failed trial, crossed ({REQUEUED_PATTERN}) "
        "bars are failed trials that were queued again",
        common.sampled_note(len(drawn), len(bars)) if sampled else None,
    )
    return Figure(figure, caption)


def _time_split_figure(workers: list[str], totals: Mapping[str, tuple[float, float]]) -> Figure:
    labels = [common.plot_text(w) for w in workers]
    figure = go.Figure([
        go.Bar(x=labels, y=[totals[w][0] for w in workers], name="in training",
               marker={"color": common.PALETTE[0]}, hovertemplate="%{x}: %{y:.1f} s training<extra></extra>"),
        go.Bar(x=labels, y=[totals[w][1] for w in workers], name="outside training",
               marker={"color": common.PALETTE[7]}, hovertemplate="%{x}: %{y:.1f} s outside training<extra></extra>"),
    ])
    common.layout(figure, barmode="stack", height=420, title="Time per worker", yaxis_title="seconds", xaxis_type="category")
    caption = (
        "Each worker's bar stacks the seconds its trials spent training (minibatches and evaluation) "
        "under the seconds spent outside it (the claim's lock, reaping and sampling, the pruning checks); "
        "a tall grey part means the workers wait on the database more than they train."
    )
    return Figure(figure, caption)


def _time_totals(trials: Sequence[TrialView]) -> tuple[float, float]:
    """Seconds in training and outside it, summed over ``trials``."""
    return sum(_timings(t)[0] for t in trials), sum(_timings(t)[1] for t in trials)


def _worker_table(workers: list[str], trials: Sequence[TrialView]) -> Table:
    rows = []
    for worker in workers:
        mine = [t for t in trials if worker_of(t) == worker]
        train, outside = _time_totals(mine)
        count = {o: sum(t.outcome == o for t in mine) for o in ("COMPLETE", "PRUNED", "DIVERGED", "FAIL")}
        rows.append((
            worker, len(mine), count["COMPLETE"], count["PRUNED"], count["DIVERGED"], count["FAIL"],
            sum(t.retry_of is not None for t in mine), f"{train:.1f}", f"{outside:.1f}",
        ))
    columns = ("worker", "trials", "complete", "pruned", "diverged", "failed", "retries", "train s", "outside s")
    caption = "Per worker: the trials it ran by outcome, the retries among them, and its seconds in and outside training."
    return Table(columns, tuple(rows), caption)


def workers_section(data: ReportData) -> Section:
    """A timeline of the trials per worker, each worker's time in and outside training, and
    a table of trials per worker."""
    trials = data.trials
    items: list[Figure | Words | Table] = []
    bars = timeline_bars(trials)
    if not trials:
        items.append(Words("There are no trials yet, so no worker has run anything."))
    elif not bars:
        items.append(Words(f"None of the {len(trials)} trials has started yet (all waiting): there are no times to show."))
    else:
        waiting = len(trials) - len(bars)
        if waiting:
            items.append(Words(f"Not drawn: {plural(waiting, 'trial')} not started yet (waiting)."))
        items.append(_timeline_figure(data, bars))
        # A waiting retry carries the attrs of the trial it retries, its worker among them:
        # only a trial that started was run by the worker it names.
        ran = [t for t in trials if t.started is not None and t.record.worker]
        workers = sorted({t.record.worker for t in ran})
        if not workers:
            items.append(Words(
                "No trial records the worker that ran it (a study hpo's workers did not run), so there is no time per worker."
            ))
        else:
            totals = {w: _time_totals([t for t in ran if t.record.worker == w]) for w in workers}
            if any(train or outside for train, outside in totals.values()):
                items.append(_time_split_figure(workers, totals))
            else:
                items.append(Words("No trial stored its times yet (a worker stores them when the trial ends)."))
            items.append(_worker_table(workers, ran))
    return Section("workers", "Workers", tuple(items))

"""What a running search shows: a bar per stage, the narrowing between stages, a summary.

On a terminal each stage has a live bar (:class:`RichProgress`); anywhere else (a pipe, a
file, ``docker compose logs``, CI) a plain line is printed when trials finish, at most one
every few seconds (:class:`PlainProgress`): :func:`progress_for` picks one. Both show each
stage's estimated time left (:func:`eta_seconds`). Trials that diverged are counted apart
from those the pruner stopped, although Optuna stores both as PRUNED: with ``--pruner none``
every "pruned" trial would be a diverged one. Names, parameter values and messages are
printed literally (see :mod:`hpo.output`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hpo.narrow import NarrowResult
from hpo.output import literal, plural
from workers import stageplan
from workers.space import Choice, SearchSpace
from workers.stageplan import StagePlan


def narrowing_rows(result: NarrowResult, child: StagePlan) -> list[dict[str, Any]]:
    """One row per parameter: old range, new range, why it changed; a categorical parameter's
    row lists each old choice's evidence under ``choices`` (trials that tried it, complete
    ones, best, median, kept)."""
    return [
        {"param": c.name, "old": c.old.describe(), "new": c.new_text, "reason": c.reason,
         "choices": [{**e.to_dict(), "choice": Choice((e.choice,)).shorthand()} for e in c.choices]}
        for c in result.changes
    ]


def narrowing_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``narrowing_rows`` for a table: under a categorical parameter's row, a row per choice
    (indented) with how many trials tried it, whether it is kept, its best and its median."""
    table = []
    for row in rows:
        table.append({key: row[key] for key in ("param", "old", "new", "reason")})
        for choice in row.get("choices", ()):
            if choice["best"] is None:
                scores = "no complete trial"
            else:
                scores = f"best {choice['best']:.4g}, median {choice['median']:.4g}"
                if choice["complete"] < choice["trials"]:
                    scores += f" of {choice['complete']} complete"
            table.append({"param": f"  {choice['choice']}", "old": f"{choice['trials']} tried",
                          "new": "kept" if choice["kept"] else "dropped", "reason": scores})
    return table


# -- the time left ---------------------------------------------------------------------------
ETA_WINDOW = 10  # the pace is that of the last 10 finished trials
ETA_MIN_FINISHED = 2  # ... and is not told before 2 trials finished while watched


def eta_seconds(finishes: Sequence[tuple[float, int]], budget: int, now: float, window: int = ETA_WINDOW) -> float | None:
    """Seconds until a stage has finished ``budget`` trials at its recent pace, or None while
    that cannot be told.

    ``finishes``: (time, trials finished) when the stage was first watched and then each time
    that count grew, in order; ``now`` on the same clock.

    1. None unless at least ETA_MIN_FINISHED trials finished since the first point and some
       of the budget remains.
    2. The pace: trials per second from the point ``window`` trials before the last one (or
       the first point, while fewer finished since) to the last one. Counted from when the
       stage was first watched, the first trials' pace includes the workers' start.
    3. The time left: the remaining trials at that pace, less the time since the last
       finish (so it counts down between finishes), never below 0.
    """
    if not finishes:
        return None
    first_count = finishes[0][1]
    last_time, last_count = finishes[-1]
    remaining = budget - last_count
    if last_count - first_count < ETA_MIN_FINISHED or remaining <= 0:
        return None
    base_time, base_count = finishes[0]
    for when, count in finishes:
        if count > last_count - window:
            break
        base_time, base_count = when, count
    seconds = last_time - base_time
    if seconds <= 0:  # finished within one clock tick: no pace to tell
        return None
    rate = (last_count - base_count) / seconds
    return max(0.0, remaining / rate - (now - last_time))


def duration_text(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``: whole seconds, as a clock shows them."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_text(seconds: float | None) -> str:
    """``~0:42 left``, or nothing while the time left cannot be told."""
    return "" if seconds is None else f"~{duration_text(seconds)} left"


@dataclass
class StageWatch:
    """What the progress keeps of one stage: when it was first watched and when its finished
    count grew (for :func:`eta_seconds`)."""

    description: str
    budget: int
    started: float
    finishes: list[tuple[float, int]] = field(default_factory=list)

    def saw(self, now: float, finished_count: int) -> None:
        if not self.finishes or finished_count > self.finishes[-1][1]:
            self.finishes.append((now, finished_count))

    def eta(self, now: float) -> float | None:
        return eta_seconds(self.finishes, self.budget, now)


def stage_description(plan: StagePlan, resumed: bool) -> str:
    return f"stage {plan.stage}/{plan.stages} · {plural(plan.epochs, 'epoch')}" + (" (resumed)" if resumed else "")


def status_parts(counts: dict[str, int], best: float | None) -> list[str]:
    """``["best 0.9123", "2 running", "1 pruned", ...]``: the best value, then the trials
    running and those that did not complete, by outcome (none that count 0)."""
    parts = [f"best {best:.4f}" if best is not None else "best -"]
    for outcome, n in (("running", counts.get("RUNNING", 0)), *outcome_counts(counts).items()):
        if n and outcome != "complete":
            parts.append(f"{n} {outcome}")
    return parts


def progress_for(console: Console) -> RichProgress | PlainProgress:
    """Live bars when ``console`` writes to a terminal, plain lines otherwise: also where
    FORCE_COLOR makes rich take a pipe for a terminal, since a live display in a log is a
    stream of cursor movements."""
    isatty = getattr(console.file, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:  # a closed file
        tty = False
    return RichProgress(console) if tty and console.is_interactive else PlainProgress(console)


class RichProgress:
    """The campaign's Progress: one bar per stage on stderr (finished trials / budget, the
    time left). ``now``: the clock the time left is measured on."""

    def __init__(self, console: Console, now: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.now = now
        self.bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}", markup=False),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.watches: dict[str, StageWatch] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.stop()

    def stage_started(self, plan: StagePlan, resumed: bool) -> None:
        if plan.study_name in self.tasks:
            return
        description = stage_description(plan, resumed)
        self.watches[plan.study_name] = StageWatch(description, plan.trials, self.now())
        self.tasks[plan.study_name] = self.bars.add_task(description, total=plan.trials, status="", eta="")

    def stage_progress(self, plan: StagePlan, counts: dict[str, int], best: float | None) -> None:
        """``counts``: trials per state, as ``records.count_states`` or, with diverged trials
        apart (``DIVERGED``), ``records.count_outcomes`` returns them."""
        self.stage_started(plan, resumed=True)
        now, done = self.now(), finished(counts)
        watch = self.watches[plan.study_name]
        watch.saw(now, done)
        self.bars.update(self.tasks[plan.study_name], completed=done, status=" · ".join(status_parts(counts, best)),
                         eta=eta_text(watch.eta(now)))

    def stage_narrowed(self, parent: StagePlan, child: StagePlan, result: NarrowResult) -> None:
        table = Table(title=literal(f"{parent.study_name} -> {child.study_name}"), title_justify="left")
        for column in ("param", "old", "new", "reason"):
            table.add_column(column, overflow="fold")
        for row in narrowing_table_rows(narrowing_rows(result, child)):
            table.add_row(*(literal(str(row[key])) for key in ("param", "old", "new", "reason")))
        self.console.print(table)

    def message(self, text: str) -> None:
        """Print ``text`` as it is: no markup, control characters escaped."""
        self.bars.console.print(literal(text))

    def print_summary(self, console: Console, summary: Any) -> None:
        table = Table(title=literal(f"campaign {summary.name}"), title_justify="left")
        for column in ("stage", "epochs", "trials", "pruned", "diverged", "best val", "ranges"):
            table.add_column(column, overflow="fold")
        for stage in summary.stages:
            counts = stage["counts"]
            outcomes = outcome_counts(counts)
            table.add_row(
                str(stage["stage"]),
                str(stage["epochs"]),
                f"{finished(counts)}/{stage['budget']}",
                str(outcomes["pruned"]),
                str(outcomes["diverged"]),
                "-" if stage["best_value"] is None else f"{stage['best_value']:.4f}",
                literal("\n".join(f"{k} {v}" for k, v in stage["ranges"].items())),
            )
        console.print(table)
        best = summary.best
        params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        console.print(literal(f"best: {best.study} trial {best.trial}: {params}"))
        for note in best.skipped:
            console.print(literal(f"  skipped: {note}"))
        console.print(
            f"validation {best.val_accuracy:.4f}   retrained on train+val: "
            f"train {best.train_accuracy:.4f}   test {best.test_accuracy:.4f}   ({summary.seconds:.0f}s)"
        )


class PlainProgress(RichProgress):
    """The campaign's Progress without a terminal: plain lines on ``console``, without control
    characters, for a log (``docker compose logs -f coordinator``, CI). A stage's line, e.g.
    ``stage 1/3 · 2 epochs: 12/60 finished · best 0.9123 · 2 running · 1 pruned · 0:15
    elapsed · ~0:42 left``, is printed when the stage is first watched, when trials finished
    (at most one line every PLAIN_EVERY_SECONDS: a burst of finishes is one line), when its
    budget is met, and every PLAIN_QUIET_SECONDS while nothing finishes, so that a log shows
    the search is alive. The narrowing tables and the summary are RichProgress's."""

    PLAIN_EVERY_SECONDS = 2.0
    PLAIN_QUIET_SECONDS = 60.0

    def __init__(self, console: Console, now: Callable[[], float] = time.monotonic) -> None:
        self.console = console  # no bars: nothing here draws live
        self.now = now
        self.watches: dict[str, StageWatch] = {}
        self.printed: dict[str, tuple[float, tuple]] = {}  # stage -> (when, what) of its last line
        self.pending: dict[str, tuple[tuple, str]] = {}  # stage -> (what, line) held back

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._flush()

    def stage_started(self, plan: StagePlan, resumed: bool) -> None:
        if plan.study_name not in self.watches:
            self._flush()
            self.watches[plan.study_name] = StageWatch(stage_description(plan, resumed), plan.trials, self.now())

    def stage_progress(self, plan: StagePlan, counts: dict[str, int], best: float | None) -> None:
        self.stage_started(plan, resumed=True)
        now, done = self.now(), finished(counts)
        watch = self.watches[plan.study_name]
        watch.saw(now, done)
        # What makes a new line: the trials finished, by outcome, and the best value; not the
        # running count, which changes with every claim.
        what = (done, tuple(sorted(outcome_counts(counts).items())), best)
        parts = [f"{done}/{watch.budget} finished", *status_parts(counts, best), f"{duration_text(now - watch.started)} elapsed"]
        if eta := eta_text(watch.eta(now)):
            parts.append(eta)
        line = f"{watch.description}: " + " · ".join(parts)
        last = self.printed.get(plan.study_name)
        if last is None or (done >= watch.budget and what != last[1]):
            due = True
        elif what != last[1]:
            due = now - last[0] >= self.PLAIN_EVERY_SECONDS
        else:
            due = now - last[0] >= self.PLAIN_QUIET_SECONDS
        if due:
            self._print(plan.study_name, now, what, line)
        else:
            self.pending[plan.study_name] = (what, line)

    def stage_narrowed(self, parent: StagePlan, child: StagePlan, result: NarrowResult) -> None:
        self._flush()
        super().stage_narrowed(parent, child, result)

    def message(self, text: str) -> None:
        """Print ``text`` as it is: no markup, control characters escaped."""
        self._flush()
        self.console.print(literal(text), soft_wrap=True)

    def _print(self, stage: str, now: float, what: tuple, line: str) -> None:
        self.console.print(literal(line), soft_wrap=True)
        self.printed[stage] = (now, what)
        self.pending.pop(stage, None)

    def _flush(self) -> None:
        """Print what was held back (a stage closed early may never show its last count)."""
        for stage, (what, line) in list(self.pending.items()):
            if what != self.printed[stage][1]:
                self._print(stage, self.now(), what, line)
        self.pending.clear()


finished = stageplan.finished_count  # the budget's rule has one home


def outcome_counts(counts: dict[str, int]) -> dict[str, int]:
    """``{"complete", "pruned", "diverged", "fail"}`` from trials per state; without a DIVERGED
    count, every PRUNED trial counts as pruned."""
    return {
        "complete": counts.get("COMPLETE", 0),
        "pruned": counts.get("PRUNED", 0),
        "diverged": counts.get("DIVERGED", 0),
        "fail": counts.get("FAIL", 0),
    }


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def space_ranges(space: dict[str, Any]) -> dict[str, str]:
    return {name: spec.describe() for name, spec in SearchSpace.from_dict(space).items()}

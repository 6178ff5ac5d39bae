"""What a running search shows: a bar per stage, the narrowing between stages, a summary.

Trials that diverged are counted apart from those the pruner stopped, although Optuna stores
both as PRUNED: with ``--pruner none`` every "pruned" trial would be a diverged one. Names,
parameter values and messages are printed literally (see :mod:`hpo.output`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hpo.narrow import NarrowResult
from hpo.output import literal
from workers import stageplan
from workers.space import Choice, SearchSpace
from workers.stageplan import StagePlan


def narrowing_rows(result: NarrowResult, child: StagePlan) -> list[dict[str, Any]]:
    """One row per parameter: old range, new range, why it changed; a categorical parameter's
    row lists each old choice's evidence under ``choices`` (trials that tried it, complete
    ones, best, median, kept)."""
    return [
        {"param": c.name, "old": c.old.describe(), "new": c.new.describe(), "reason": c.reason,
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


class RichProgress:
    """The campaign's Progress: one bar per stage on stderr (finished trials / budget)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.stop()

    def stage_started(self, plan: StagePlan, resumed: bool) -> None:
        if plan.study_name in self.tasks:
            return
        note = " (resumed)" if resumed else ""
        self.tasks[plan.study_name] = self.bars.add_task(
            f"stage {plan.stage}/{plan.stages} · {plan.epochs} epochs{note}", total=plan.trials, status=""
        )

    def stage_progress(self, plan: StagePlan, counts: dict[str, int], best: float | None) -> None:
        """``counts``: trials per state, as ``records.count_states`` or, with diverged trials
        apart (``DIVERGED``), ``records.count_outcomes`` returns them."""
        self.stage_started(plan, resumed=True)
        parts = [f"best {best:.4f}" if best is not None else "best -"]
        for outcome, n in (("running", counts.get("RUNNING", 0)), *outcome_counts(counts).items()):
            if n and outcome != "complete":
                parts.append(f"{n} {outcome}")
        self.bars.update(self.tasks[plan.study_name], completed=finished(counts), status=" · ".join(parts))

    def stage_narrowed(self, parent: StagePlan, child: StagePlan, result: NarrowResult) -> None:
        table = Table(title=literal(f"{parent.study_name} -> {child.study_name}"), title_justify="left")
        for column in ("param", "old", "new", "reason"):
            table.add_column(column, overflow="fold")
        for row in narrowing_table_rows(narrowing_rows(result, child)):
            table.add_row(*(literal(str(row[key])) for key in ("param", "old", "new", "reason")))
        self.bars.console.print(table)

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

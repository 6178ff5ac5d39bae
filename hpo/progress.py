"""What a running search shows: a bar per stage, the narrowing between stages, a summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hpo.narrow import NarrowResult
from storage.records import StagePlan
from workers.space import SearchSpace


def narrowing_rows(result: NarrowResult, child: StagePlan) -> list[dict[str, Any]]:
    """One row per parameter: old range, new range, why it changed."""
    return [
        {"param": c.name, "old": c.old.describe(), "new": c.new.describe(), "reason": c.reason}
        for c in result.changes
    ]


class RichProgress:
    """The campaign's Progress: one bar per stage on stderr (finished trials / budget)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
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
        self.stage_started(plan, resumed=True)
        finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        parts = [f"best {best:.4f}" if best is not None else "best -"]
        for state in ("RUNNING", "PRUNED", "FAIL"):
            if counts.get(state):
                parts.append(f"{counts[state]} {state.lower()}")
        self.bars.update(self.tasks[plan.study_name], completed=finished, status=" · ".join(parts))

    def stage_narrowed(self, parent: StagePlan, child: StagePlan, result: NarrowResult) -> None:
        table = Table(title=f"{parent.study_name} -> {child.study_name}", title_justify="left")
        for column in ("param", "old", "new", "reason"):
            table.add_column(column, overflow="fold")
        for row in narrowing_rows(result, child):
            table.add_row(row["param"], row["old"], row["new"], row["reason"])
        self.bars.console.print(table)

    def message(self, text: str) -> None:
        self.bars.console.print(text)

    def print_summary(self, console: Console, summary: Any) -> None:
        table = Table(title=f"campaign {summary.name}", title_justify="left")
        for column in ("stage", "epochs", "trials", "pruned", "best val", "ranges"):
            table.add_column(column, overflow="fold")
        for stage in summary.stages:
            counts = stage["counts"]
            table.add_row(
                str(stage["stage"]),
                str(stage["epochs"]),
                f"{counts.get('COMPLETE', 0) + counts.get('PRUNED', 0)}/{stage['budget']}",
                str(counts.get("PRUNED", 0)),
                "-" if stage["best_value"] is None else f"{stage['best_value']:.4f}",
                "\n".join(f"{k} {v}" for k, v in stage["ranges"].items()),
            )
        console.print(table)
        best = summary.best
        params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        console.print(f"best: {best.study} trial {best.trial}: {params}")
        for note in best.skipped:
            console.print(f"  skipped: {note}")
        console.print(
            f"validation {best.val_accuracy:.4f}   retrained on train+val: "
            f"train {best.train_accuracy:.4f}   test {best.test_accuracy:.4f}   ({summary.seconds:.0f}s)"
        )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def space_ranges(space: dict[str, Any]) -> dict[str, str]:
    return {name: spec.describe() for name, spec in SearchSpace.from_dict(space).items()}

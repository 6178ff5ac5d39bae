"""`hpo importance`: which parameters mattered, stage by stage (Optuna's importance API).

A thin click command over :func:`hpo.inspect.resolve_stages` and
:func:`hpo.importance.stage_importances`; it only reads.
"""

from __future__ import annotations

import click

from hpo import inspect
from hpo.cli_inspect import opened
from hpo.importance import stage_importances
from hpo.output import format_option, literal, out, print_json, render_rows, storage_option, with_bars

COLUMNS = ["parameter", "importance"]
BAR = "bar"  # the heading of the bar drawn next to each importance (0 to 1)


@click.command()
@click.argument("name")
@click.option("--stage", type=click.IntRange(min=1), metavar="K", help="Only stage K of the campaign NAME names.")
@format_option
@storage_option
def importance(name, stage, fmt, storage_url) -> None:
    """Show which parameters mattered, stage by stage.

    Optuna's parameter importances (optuna.importance.get_param_importances with its default
    evaluator, PED-ANOVA) over each stage's complete trials: a table per stage, most important
    first, with a bar from 0 to 1; a stage's importances sum to 1. Each stage is judged on its
    own ranges, so a parameter still important after narrowing still matters inside the narrower
    range. NAME is a campaign (every stage; --stage K for one) or a study. A stage with too few
    complete trials says so in a line instead. JSON: {name, campaign, stages: [{stage, study,
    complete, importances: {parameter: importance} or null, note}]}; CSV: one row per stage
    and parameter (stage, study, parameter, importance).

    \b
    Examples:
      hpo importance c1
      hpo importance c1 --stage 2 --format json | jq '.stages[0].importances'
      hpo importance c1 --format csv
    """
    with opened(storage_url) as storage:
        campaign, stages = inspect.resolve_stages(storage, name, stage)
        entries = stage_importances(storage, stages)
    if fmt == "json":
        print_json({"name": name, "campaign": campaign, "stages": entries})
        return
    if fmt == "csv":
        rows = [{"stage": e["stage"], "study": e["study"], "parameter": p, "importance": v}
                for e in entries for p, v in (e["importances"] or {}).items()]
        render_rows(rows, ["stage", "study", *COLUMNS], "csv")
        return
    for entry in entries:
        if entry["importances"] is None:
            out.print(literal(f"{entry['study']}: {entry['note']}"))
            continue
        rows = [{"parameter": p, "importance": v} for p, v in entry["importances"].items()]
        rows, columns = with_bars(rows, COLUMNS, {"importance": BAR})
        title = f"{entry['study']}: importances over {entry['complete']} complete trials"
        render_rows(rows, columns, "table", title=title, unbroken=["importance", BAR])


# The importance command; hpo/cli.py registers it on the `hpo` group.
COMMANDS = (importance,)

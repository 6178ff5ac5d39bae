"""The inspection commands of `hpo`: studies, trials, trial, best, health, fail-stale.

Each is a thin click command over :mod:`hpo.inspect`: open the storage, call one function,
render what it returned. Everything but `fail-stale` only reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
from optuna.storages import BaseStorage

from hpo import inspect
from hpo.output import (
    NOT_APPLICABLE_CELL,
    UsageError,
    err,
    format_option,
    literal,
    one_line,
    out,
    plural,
    print_json,
    render_rows,
    sparkline_lines,
    storage_option,
    with_bars,
)
from storage import backend
from storage.errors import StorageError
from storage.url import mask_url
from workers.record import read_record

record_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format: tables for people, one JSON object for scripts.",
)


@contextlib.contextmanager
def opened(storage_url: str, *, changes: bool = False) -> Iterator[BaseStorage]:
    """The storage for one command; whatever goes wrong becomes one line and exit status 2.

    A command that only reads gets a storage that only reads; ``changes`` (fail-stale) gets
    Optuna's own, with heartbeats, after its schema's version is checked."""
    try:
        if changes:
            storage = inspect.open_for_changes(storage_url)
        else:
            storage = inspect.open_for_reading(storage_url)
        try:
            yield storage
        finally:
            storage.engine.dispose()
    except inspect.QueryError as e:
        raise UsageError(str(e)) from None
    except StorageError as e:
        raise UsageError(one_line(e)) from None
    except backend.DB_ERRORS as e:
        raise UsageError(_version_mismatch(storage_url) or backend.describe_db_error(storage_url, e)) from None


def _version_mismatch(storage_url: str) -> str | None:
    """Optuna's own line when a failed read came from a schema of another Optuna version (the
    commands that read skip that check when they open the storage), else None."""
    try:
        backend.open_storage(storage_url, heartbeat=False).engine.dispose()
    except StorageError as e:
        return one_line(e)
    except backend.DB_ERRORS:
        pass
    return None


STUDY_COLUMNS = ["study", "stage", "status", "budget", "epochs", "complete", "pruned", "diverged", "fail", "running", "waiting", "best", "test_accuracy"]


@click.command()
@format_option
@storage_option
def studies(fmt, storage_url) -> None:
    """List campaigns, their stages and other studies.

    One row per study (plain Optuna studies too): its stage (K/N), status, trial budget, epochs per trial, trials per
    state, the best value so far and, on a campaign's last stage, the final test accuracy. Trials whose training
    diverged are counted as "diverged", apart from those the pruner stopped ("pruned"); Optuna stores both as PRUNED.

    \b
    Examples:
      hpo studies
      hpo studies --format json --storage postgresql://hpo@db/hpo
    """
    with opened(storage_url) as storage:
        rows = inspect.list_studies(storage)
    if fmt != "table":
        render_rows(rows, list(inspect.STUDY_KEYS), fmt)
        return
    if not rows:
        err.print(f"no studies in {mask_url(storage_url)}", soft_wrap=True)
        return
    shown = [{**r, "stage": f"{r['stage']}/{r['stages']}" if r["stage"] else ""} for r in rows]
    render_rows(shown, STUDY_COLUMNS, fmt, title=f"Studies in {mask_url(storage_url)}", unbroken=STUDY_COLUMNS, name_column="study")


@click.command()
@click.argument("study")
@click.option("--state", "states", metavar="STATES", help="Only these states, comma-separated: complete,pruned,fail,running,waiting.")
@click.option("--where", "where", multiple=True, metavar="FILTER", help="Keep trials where COLUMN OP VALUE holds; OP is = != < <= > >= (repeatable; all must hold).")
@click.option("--sort", metavar="COLUMN", help="Sort by this column; -COLUMN sorts descending. Missing values go last.")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most N trials (after filtering and sorting).")
@click.option("--columns", metavar="A,B,...", help=f"Columns to show; besides the default ones: {', '.join(inspect.EXTRA_TRIAL_COLUMNS)}.")
@click.option("--stage", type=click.IntRange(min=1), metavar="K", help="Only stage K of the campaign STUDY names.")
@format_option
@storage_option
def trials(study, states, where, sort, limit, columns, stage, fmt, storage_url) -> None:
    """List the trials of STUDY, or of every stage of a campaign, filtered and sorted.

    One row per trial: number, state, value, one column per parameter, duration, worker and
    the reason a trial was pruned or failed. STUDY is a study name, or a campaign name for the
    trials of all its stages, stage by stage, with a stage column first (--stage K for one).
    Per-trial summaries of the diagnostics are columns too: final_train_loss, best_epoch,
    diverged, dead_fraction_max and saturation_fraction_max (the worst hidden layer),
    update_ratio_max and update_ratio_min (over every weight matrix). In --where, numbers
    compare as numbers (1e-3 < 0.01) and text case-insensitively (diverged=true); a trial
    without a value for the column passes only !=. A parameter may also be named by its short
    alias (lr, wd, bs, ...) in --where, --sort and --columns. A parameter a trial did not
    sample because it does not apply there (momentum with adam) shows as n/a and counts as
    without a value. JSON: a list of objects keyed by the shown columns (null where a
    parameter does not apply).

    \b
    Examples:
      hpo trials c1 --state complete --sort -value --limit 10
      hpo trials c1 --stage 2 --where activation=relu --where "lr>1e-3" --sort -lr
      hpo trials c1 --where diverged=true --columns stage,number,lr,final_train_loss
      hpo trials c1/stage-2 --sort -dead_fraction_max --limit 5
      hpo trials c1/stage-2 --columns number,value,seed,train_seconds --format csv
    """
    with opened(storage_url) as storage:
        selection = inspect.select_trials(storage, study, states=states, where=where, sort=sort, limit=limit,
                                          columns=columns, stage=stage)
    listed = selection.study
    if selection.campaign is not None and stage is None:
        listed = f"{selection.study} ({plural(len(selection.stages), 'stage')})"
    title = f"{listed}: {len(selection.rows)} of {plural(selection.total, 'trial')}"
    rows = selection.rows
    if fmt == "table":  # a parameter a trial did not sample reads n/a (JSON: null, CSV: empty)
        rows = [{**row, **dict.fromkeys(row.get(inspect.NOT_APPLICABLE, ()), NOT_APPLICABLE_CELL)} for row in rows]
    # Values stay whole (a state, a number, a worker's name): headings fold, and the reason gives way.
    render_rows(rows, selection.columns, fmt, title=title, unbroken=[c for c in selection.columns if c != "reason"])


@click.command()
@click.argument("study")
@click.argument("number", type=click.IntRange(min=0))
@record_format_option
@storage_option
def trial(study, number, fmt, storage_url) -> None:
    """Show one trial: params, curve, diagnostics, timings.

    Parameters, value, state, reason, learning curve, per-layer diagnostics of the last epoch,
    seed, timings, worker and retries. Under the curve, a sparkline each of the validation
    accuracy and the training loss, scaled to the series' min..max (a long curve averaged down
    to 60 cells); next to the dead and saturated fractions of each layer, a bar from 0 to 1.
    STUDY is a study name, or a campaign name for its newest stage. --format json prints the
    whole stored record (params, user_attrs, system_attrs, intermediate values, retry links).

    \b
    Examples:
      hpo trial c1/stage-2 7
      hpo trial c1/stage-2 7 --format json | jq .user_attrs.config
    """
    with opened(storage_url) as storage:
        record = inspect.trial_record(storage, study, number)
        space = inspect.stage_space(storage, record["study"]) if fmt != "json" else None
    if fmt == "json":
        print_json(record)
        return
    render_rows(inspect.summary_rows(record), ["field", "value"], "table", title=f"{record['study']} trial {record['number']}")
    params = [{"param": k, "value": v} for k, v in record["params"].items()]
    params += [{"param": k, "value": NOT_APPLICABLE_CELL} for k in inspect.not_applicable_names(space, record["params"])]
    if params:
        render_rows(params, ["param", "value"], "table", title="Parameters")
    stored = read_record(record["user_attrs"])
    curve = inspect.curve_rows(stored.curve)
    if curve:
        render_rows(curve, inspect.row_columns(curve), "table", title="Learning curve")
        for line in sparkline_lines({k: [row[k] for row in curve] for k in ("val_accuracy", "train_loss")}):
            out.print(line)
    layers = inspect.layer_rows(stored.diagnostics)
    if layers:
        render_layers(layers, title="Per hidden layer, last epoch")


def render_layers(layers: list[dict], title: str) -> None:
    """The per-layer diagnostics as a table, a bar (0 to 1) next to each fraction of units.
    Every cell is a number or a bar, none of them folded across lines."""
    rows, columns = with_bars(layers, inspect.row_columns(layers), inspect.LAYER_FRACTION_BARS)
    render_rows(rows, columns, "table", title=title, unbroken=columns)


@click.command()
@click.argument("study")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="How many trials to show.")
@format_option
@storage_option
def best(study, top, fmt, storage_url) -> None:
    """Show the best complete trials of STUDY.

    Value, parameters and seed of each. STUDY is a study name, or a campaign name for its newest stage; for a campaign the final
    result (the best configuration retrained and tested once) is shown too, when there is one.
    JSON: {study, campaign, direction, trials: [{rank, number, value, params, seed,
    train_accuracy}], final}. CSV: one row per trial, one column per parameter.

    \b
    Examples:
      hpo best c1/stage-3 --top 3
      hpo best c1 --format json | jq .final.test_accuracy
    """
    with opened(storage_url) as storage:
        result = inspect.best_trials(storage, study, top)
        space = inspect.stage_space(storage, result["study"]) if fmt == "table" else None
    if fmt == "json":
        print_json(result)
        return
    # A parameter a trial did not sample reads n/a in the table (CSV: an empty field).
    params = [{**t["params"], **dict.fromkeys(inspect.not_applicable_names(space, t["params"]), NOT_APPLICABLE_CELL)}
              for t in result["trials"]]
    rows = [{**{k: v for k, v in t.items() if k != "params"}, **p} for t, p in zip(result["trials"], params)]
    columns = ["rank", "number", "value", *inspect.row_columns(params), "seed", "train_accuracy"]
    render_rows(rows, columns, fmt, title=f"Best {len(rows)} complete trials of {result['study']} ({result['direction']})")
    if fmt == "table" and not rows:
        err.print(f"no complete trials in {result['study']} yet", soft_wrap=True)
    final = result["final"]
    if fmt == "table" and isinstance(final, dict):
        shown = {k: v for k, v in final.items() if k not in ("params", "config")}
        render_rows([{"field": k, "value": v} for k, v in shown.items()], ["field", "value"], "table", title=f"Final result of campaign {result['campaign']}")


@click.command()
@click.argument("study")
@record_format_option
@storage_option
def health(study, fmt, storage_url) -> None:
    """Check on a running study: heartbeats, workers, time.

    Trials per state (diverged trials apart from pruned ones), RUNNING trials with the age of
    their last heartbeat (stale ones flagged), trials and mean times per worker, and the time
    spent outside training.

    A RUNNING trial is stale when its heartbeat is older than the grace period
    ($HPO_HEARTBEAT_GRACE, default 30 s); the next worker fails and retries it, or run
    `hpo fail-stale STUDY`. STUDY may be a campaign name (its newest stage).

    \b
    Examples:
      hpo health c1/stage-2
      hpo health c1 --format json | jq .stale
    """
    with opened(storage_url) as storage:
        report = inspect.study_health(storage, study)
    if fmt == "json":
        print_json(report)
        return
    counts = report["counts"]
    shown = {outcome: n for outcome, n in counts.items() if n or outcome != "DIVERGED"}
    out.print(literal(report["study"], style="bold"), literal(": " + ", ".join(f"{n} {outcome.lower()}" for outcome, n in shown.items())), sep="")
    if report["running"]:
        running = [
            {**r, "heartbeat_age": "no beat yet" if r["heartbeat_age"] is None else r["heartbeat_age"], "stale": "yes" if r["stale"] else "no"}
            for r in report["running"]
        ]
        render_rows(running, ["number", "worker", "heartbeat_age", "stale"], "table", title=f"Running trials (stale after {report['grace_seconds']} s without a heartbeat)")
    if report["workers"]:
        render_rows(report["workers"], ["worker", "trials", "complete", "pruned", "diverged", "fail", "mean_train_seconds", "mean_overhead_seconds"], "table", title="Workers")
    spent = report["time"]
    if spent["overhead_fraction"] is not None:
        out.print(f"time: {spent['train_seconds']:.1f} s training, {spent['overhead_seconds']:.1f} s outside training "
                  f"({100 * spent['overhead_fraction']:.0f}%)")
    if report["retries"]:
        out.print(f"{report['retries']} trial(s) are retries of failed trials")
    if report["stale"]:
        out.print(literal(f"stale: trial(s) {', '.join(map(str, report['stale']))}", style="red"),
                  literal(f" — run `hpo fail-stale {report['study']}` to fail and retry them now"), sep="")


@click.command("fail-stale")
@click.argument("study")
@record_format_option
@storage_option
def fail_stale(study, fmt, storage_url) -> None:
    """Fail stale RUNNING trials now; queue their retry.

    A trial is stale when its last heartbeat is older than the grace period
    ($HPO_HEARTBEAT_GRACE, default 30 s). This does what the next worker would do, under the
    same lock, so a trial is never failed or retried twice; running it again does nothing.
    STUDY may be a campaign name (its newest stage).

    \b
    Examples:
      hpo fail-stale c1/stage-2
      hpo fail-stale c1 --format json
    """
    with opened(storage_url, changes=True) as storage:
        report = inspect.fail_stale(storage, storage_url, study)
    if fmt == "json":
        print_json(report)
        return
    if not report["failed"]:
        out.print(f"no stale trials in {report['study']} ({report['still_running']} running, grace {report['grace_seconds']} s)")
        return
    for f in report["failed"]:
        worker = f" of worker {f['worker']}" if f["worker"] else ""
        retry = f"queued its retry as trial {f['retry']}" if f["retry"] is not None else "no retry (it was retried already)"
        out.print(f"failed trial {f['number']}{worker} (last heartbeat {f['heartbeat_age']:.0f} s ago); {retry}")


# The inspection commands; hpo/cli.py registers them on the `hpo` group.
COMMANDS = (studies, trials, trial, best, health, fail_stale)

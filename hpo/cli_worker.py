"""`hpo worker`: take trials from a campaign or a study, train them, store the results.

Apart from the other commands that run things (hpo/cli_run.py), so that a worker loads only
the training code and the storage, not the campaign, the narrowing or the progress display:
a local worker's start is on the path of every `hpo search`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import click

from hpo import ignore_stop_signals
from hpo.output import UsageError, err, storage_option


@click.command()
@click.option("--campaign", help="Follow this campaign from stage to stage until it ends.")
@click.option("--study", help="Work on this one stage study until its budget is met.")
@click.option("--seed", type=int, default=None, help="Mixed into the sampler seed. Each worker that joins a stage takes the next slot of it, and its sampler is seeded from the campaign's seed and that slot, so workers never sample alike, with or without --seed.")
@click.option("--max-trials", type=click.IntRange(min=1), help="Exit after this many trials.")
@click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=60.0, show_default=True, help="Seconds to wait for the schema and the campaign to appear.")
@click.option("--exit-with-parent", is_flag=True, hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log every trial as it ends: its outcome, value or reason, epochs and parameters.")
@storage_option
def worker(campaign, study, seed, max_trials, wait_seconds, exit_with_parent, verbose, storage_url) -> None:
    """Take trials from a campaign (or a study), train them, store the results.

    Stops on SIGTERM / SIGINT at the next epoch boundary; the trial in flight is failed and
    queued again, and the worker exits 0. Exits 2 if the campaign does not appear within
    --wait seconds, 1 if its stage was stopped because its trials kept failing.

    \b
    Examples:
      hpo worker --campaign digits-20261127-101500
      HPO_STORAGE=postgresql://hpo@db/hpo HPO_DB_PASSWORD_FILE=/run/secrets/db hpo worker --campaign c1
    """
    if bool(campaign) == bool(study):
        raise UsageError("give exactly one of --campaign NAME or --study NAME")
    # A stop asked for while the worker is still loading (NumPy, Optuna: a second or so) is
    # kept, and the worker then exits 0 without taking a trial.
    stop_asked = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_asked.set())
    from hpo.output import LiteralFormatter
    from workers.worker import WorkerOptions, run_worker

    handler = logging.StreamHandler()
    handler.setFormatter(LiteralFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    options = WorkerOptions(
        storage_url=storage_url, campaign=campaign, study=study, seed=seed,
        max_trials=max_trials, wait_for_campaign_seconds=wait_seconds,
        parent_pid=os.getppid() if exit_with_parent else None,
    )
    started = time.monotonic()
    summary = run_worker(options, stop_asked=stop_asked)
    ignore_stop_signals()  # done: a signal now would only cut the summary short
    done = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.trials.items())) or "no trials"
    err.print(f"worker {options.worker_id}: {done} in {time.monotonic() - started:.1f}s "
              f"({summary.overhead_seconds:.1f}s outside training)")
    if summary.stage_failed:
        click.echo(f"Error: {summary.stage_failed}", err=True)
        sys.exit(1)


COMMANDS = (worker,)

"""The commands that run things: `hpo train`, `search`, `launch`, `narrow` and `init`
(`hpo worker` is in hpo/cli_worker.py).

Thin click commands over the library (hpo/campaign.py, hpo/narrow.py, hpo/local.py, workers/).
They load the training code, so they live apart from the commands that only read
(hpo/cli_inspect.py): `hpo studies` does not import them (see hpo/cli.py).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import signal
import sys
import time
from pathlib import Path

import click

from hpo import campaign as campaign_mod
from hpo import cli_inspect, cli_model
from hpo import STOPS, ignore_stop_signals, record_stop, stopped_by_signal
from hpo.cli_types import TOP_FRACTION
from hpo.narrow import KEEP_CHOICES, MIN_CHOICE_TRIALS
from hpo.output import UsageError, err, format_option, literal, one_line, out, plural, print_json, render_rows, storage_option
from hpo.progress import narrowing_rows, narrowing_table_rows, progress_for
from storage import backend, records
from storage.errors import DatabaseUnavailable, StorageError, StudyNotFound
from storage.url import mask_url
from workers import stageplan
from workers.knobs import KNOBS, Knob, parse_layers
from workers.space import build_space
from workers.stageplan import StagePlan
from workers.strategy import PRUNERS, SAMPLERS, check_sampler
from workers.train import TrainConfig, TrainingDiverged

def comma_ints(ctx, param, value):
    if value is None:
        return None
    try:
        numbers = [int(v) for v in str(value).replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return numbers


# -- train -----------------------------------------------------------------------------------
def knob_option(knob: Knob):
    """The ``hpo train`` option of one knob: ``--name`` and ``--alias``, its type, default
    and help from the knob table; the bounds are checked by TrainConfig, so a bad value
    gets the same line here as in a space file."""
    flags = [f"--{name.replace('_', '-')}" for name in (knob.name, *knob.aliases)]
    bounded = knob.numeric and knob.fraction is None and (knob.low is not None or knob.high is not None)
    help_text = f"{knob.help} Allowed: {knob.domain()}." if bounded else knob.help
    settings = {"default": knob.default, "show_default": knob.default is not None, "help": help_text}
    if knob.kind == "bool":
        return click.option(*(f"{flag}/--no-{flag[2:]}" for flag in flags), knob.name, **settings)
    if knob.kind == "name":
        settings["type"] = click.Choice(knob.allowed())
    elif knob.kind == "layers":
        settings.update(default="-".join(map(str, knob.default)), callback=_layers_callback(knob), metavar="W1-W2-...")
    elif knob.fraction is not None:
        settings["metavar"] = "N|FRACTION"  # read as text by the knob: "1" one direction, "1.0" all variance
    else:
        settings["type"] = float if knob.kind == "float" else int
    return click.option(*flags, knob.name, **settings)


def _layers_callback(knob: Knob):
    """A click callback reading hidden layer widths as a space file does ("100-100"; "100,100"
    too), one line if bad."""
    def read(ctx, param, value):
        if value is None:
            return None
        try:
            return parse_layers(knob.name, value)
        except ValueError as e:
            raise click.BadParameter(one_line(e)) from None
    return read


def parse_knob(name: str, text: str):
    """``text`` read as the knob reads it; a bad one is a usage error naming the knob."""
    try:
        return KNOBS[name].parse(text)
    except ValueError as e:
        message = one_line(e)
        raise UsageError(message if name in message else f"{name}: {message}") from None


def knob_options(command):
    """One option per knob of the training config, in the knob table's order."""
    for knob in reversed(KNOBS.values()):
        command = knob_option(knob)(command)
    return command


@click.command()
@click.option("--dataset", default="digits", show_default=True, help="digits, mnist1d, cifar10:DIR or npz:PATH.")
@knob_options
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the train/val/test split.")
@click.option("--from-trial", "from_trial", type=(str, click.IntRange(min=0)), metavar="STUDY N", help="Train trial N of a stage study (or of a campaign's last stage) again, exactly as it was trained: its configuration and seed, its stage's dataset, split and cross-validation. Options given with it change that configuration.")
@click.option("--save", "save_path", metavar="MODEL", help="Write the trained model to this .npz file, for hpo evaluate and hpo predict.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure instead of a summary.")
@storage_option
@click.pass_context
def train(ctx, dataset, split_seed, from_trial, save_path, as_json, storage_url, **knobs) -> None:
    """Train one configuration, without any database, and report its accuracy.

    Shows progress per epoch and ends with train / validation / test accuracy and the
    per-layer diagnostics of the last epoch. With --from-trial it reads a trial from the
    storage and says whether the retrain reproduced the validation accuracy the trial stored;
    with --save it writes the model (see hpo evaluate, hpo predict).

    \b
    Examples:
      hpo train
      hpo train --activation tanh --initializer xavier --no-batch-norm --lr 0.01 --optimizer momentum
      hpo train --dataset npz:data.npz --hidden 256-128 --preprocessing pca_whiten --json
      hpo train --from-trial c1/stage-2 7 --save c1-trial7.npz
    """
    from workers.feasible import check_config
    from workers.model_file import SavedModel, model_info
    from workers.run import cached_dataset, fit_and_score, train_and_test

    if knobs["pca_components"] is not None:  # "20" directions or "0.95" of the variance, as in a space
        knobs["pca_components"] = parse_knob("pca_components", knobs["pca_components"])
    target = cli_model.model_target(save_path) if save_path is not None else None
    trial, changed = None, []
    if from_trial is not None:
        given = given_on_command_line(ctx)
        if given & {"dataset", "split_seed"}:
            raise UsageError("--from-trial trains on the trial's own dataset and split: leave out --dataset and --split-seed")
        trial = cli_model.stored_trial(storage_url, *from_trial)
        changed = [name for name in KNOBS if name in given]
        knobs = {**trial.config, **{name: knobs[name] for name in changed}}
        dataset, split_seed = trial.dataset, trial.split_seed
    try:
        config = TrainConfig.from_dict(knobs)
    except ValueError as e:
        raise UsageError(one_line(e)) from None
    data = cached_dataset(dataset, split_seed)
    check_config(config, data)  # what can never train (100 PCA directions of 64 features) is refused

    def show(epoch) -> None:
        val = "" if epoch.val_accuracy is None else f"  val {epoch.val_accuracy:.4f}"
        err.print(f"epoch {epoch.epoch:>3}/{config.epochs}  loss {epoch.train_loss:.4f}{val}  {epoch.seconds:.3f}s")

    def show_folds(epoch) -> None:  # the folds train side by side: their mean at each epoch
        err.print(f"epoch {epoch.epoch:>3}/{config.epochs}  mean over {trial.cv} folds: loss {epoch.train_loss:.4f}"
                  f"  val {epoch.val_accuracy:.4f}")

    try:
        folds = None
        if trial is not None and trial.cv:  # the trial's value is the mean over its folds: train them again
            folds = fit_and_score(config, data, cv=trial.cv, on_epoch=None if as_json else show_folds)
        evaluation = train_and_test(config, data, on_epoch=None if as_json else show)
    except TrainingDiverged as e:
        err.print(str(e), style="red")
        sys.exit(1)
    result = evaluation.result
    summary = {
        "dataset": dataset,
        "config": config.to_dict(),
        "train_accuracy": evaluation.train_accuracy,
        "val_accuracy": evaluation.val_accuracy,
        "test_accuracy": evaluation.test_accuracy,
        "epochs": config.epochs,
        "epoch_seconds": list(result.epoch_seconds),
        **{k: v for k, v in result.to_dict().items() if k in ("history", "diagnostics", "histograms")},
    }
    if trial is not None:
        retrained = folds.value if folds is not None else evaluation.val_accuracy
        summary["from_trial"] = cli_model.reproduction(trial, retrained, changed)
    if target is not None:
        source = ({"campaign": trial.campaign, "study": trial.study, "trial": trial.number, "val_accuracy": trial.value}
                  if trial is not None else {"command": "hpo train"})
        accuracy = {"train": evaluation.train_accuracy, "val": evaluation.val_accuracy, "test": evaluation.test_accuracy}
        info = model_info(dataset, split_seed, "train", source, accuracy)
        summary["model"] = str(cli_model.write_model(SavedModel.from_evaluation(evaluation, data.class_labels, info), target))
    if as_json:
        print_json(summary)
        return
    from hpo import inspect

    rows = inspect.layer_rows(result.diagnostics)
    cli_inspect.render_layers(rows, title="Last epoch, per hidden layer")
    out.print(
        f"train {evaluation.train_accuracy:.4f}   val {evaluation.val_accuracy:.4f}   "
        f"test {evaluation.test_accuracy:.4f}   ({sum(result.epoch_seconds):.2f}s training)"
    )
    if trial is not None:
        line, style = cli_model.reproduction_line(summary["from_trial"])
        out.print(literal(line, style))
    if target is not None:
        out.print(literal(f"model: {summary['model']}"))


# -- search ----------------------------------------------------------------------------------
def default_campaign_name(dataset: str) -> str:
    stem = dataset.split(":")[0]
    return f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def per_stage(values: list[int] | None, default: list[int], stages: int, option: str) -> list[int]:
    if values is None:
        return default
    if len(values) == 1:
        return values * stages
    if len(values) != stages:
        raise UsageError(f"{option} has {len(values)} values for {plural(stages, 'stage')}: give one value or one per stage")
    return values


SEED = click.IntRange(0, 2**32 - 1)  # NumPy's seed range: the split and every trial derive from it
# search's options that define a campaign, and the CampaignSpec field each sets (a resume
# compares the ones given on the command line with the stored plan)
PLAN_OPTIONS = {"dataset": "dataset", "stages": "stages", "trials": "trials", "epochs": "epochs",
                "sampler": "sampler", "pruner": "pruner", "cv": "cv", "seed": "seed",
                "top_quantile": "top_quantile", "max_failures_in_a_row": "max_failures_in_a_row",
                "max_failure_share": "max_failure_share", "min_choice_trials": "min_choice_trials",
                "keep_choices": "keep_choices"}


def given_on_command_line(ctx: click.Context) -> set[str]:
    sources = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in sources}


@click.command()
@click.option("--name", help="Campaign name; an existing campaign of that name is resumed as it was created. Default: DATASET-DATE-TIME.")
@click.option("--dataset", default="digits", show_default=True, help="digits, mnist1d, cifar10:DIR or npz:PATH.")
@click.option("--stages", type=click.IntRange(min=1, max=20), default=3, show_default=True)
@click.option("--trials", callback=comma_ints, help="Trials per stage: one number or a comma list. [default: 60,30,15]")
@click.option("--epochs", callback=comma_ints, help="Epochs per trial, per stage: a comma list. [default: 2,8,30]")
@click.option("--workers", type=click.IntRange(min=0), default=os.cpu_count() or 1, show_default=True, help="Local worker processes; 0 only coordinates while `hpo worker` runs elsewhere.")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(list(PRUNERS)), default="median", show_default=True)
@click.option("--cv", type=click.IntRange(min=0), default=0, show_default=True, help="K-fold cross-validation on the training split (0: held-out validation split).")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), help="Search space TOML file: a [params] table; a parameter's table may add when = {optimizer = [\"nesterov\"]} to sample it only with those values (see README, Search space).")
@click.option("--param", "params", multiple=True, metavar="NAME=SPEC", help="Override one parameter, e.g. lr=log:1e-5..1e-1 or activation=relu,tanh (repeatable). A knob that applies only with some choices (momentum: optimizer momentum or nesterov) is sampled only with them.")
@click.option("--top", "top_quantile", type=TOP_FRACTION, default=campaign_mod.DEFAULT_TOP_QUANTILE, show_default=True, help="Fraction of a stage's best trials the next stage's ranges come from.")
@click.option("--min-choice-trials", type=click.IntRange(min=1), default=MIN_CHOICE_TRIALS, show_default=True, help="A categorical choice tried fewer times in a stage is kept for lack of evidence.")
@click.option("--keep-choices", type=click.IntRange(min=1), default=KEEP_CHOICES, show_default=True, help="Keep at least this many choices of each categorical parameter when narrowing.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the data split, of every trial's training and of the samplers (see docs/cluster.md for what it reproduces).")
@click.option("--max-failures-in-a-row", type=click.IntRange(min=1), default=StagePlan.max_failures_in_a_row, show_default=True, help="Stop a stage after this many trials in a row failed with an error.")
@click.option("--max-failure-share", type=click.FloatRange(0, 1, min_open=True), default=StagePlan.max_failure_share, show_default=True, help="Stop a stage when trials failed with an error exceed this share of its budget.")
@click.option("--replan", is_flag=True, help="Resuming: apply the schedule options given (--stages, --trials, --epochs, --sampler, ...) to the stages not yet started, and record the change.")
@click.option("--blas-threads", type=click.IntRange(min=1), default=1, show_default=True, help="BLAS threads per local worker.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object: stages, ranges, counts, best configuration, accuracies.")
@click.option("--no-report", is_flag=True, help="Do not write NAME-report.html (hpo report NAME) when the campaign ends.")
@click.option("--no-model", is_flag=True, help="Do not write the final model to NAME-best.npz (hpo evaluate, hpo predict) when the campaign ends.")
@storage_option
@click.pass_context
def search(ctx, name, dataset, stages, trials, epochs, workers, sampler, pruner, cv, space_file, params, top_quantile,
           min_choice_trials, keep_choices, seed, max_failures_in_a_row, max_failure_share, replan, blas_threads, as_json,
           no_report, no_model, storage_url) -> None:
    """Run a coarse-to-fine search: stages that narrow the ranges and train longer.

    Each stage runs its trial budget on local workers (or on workers attached elsewhere with
    `hpo worker --campaign NAME`), then the next stage's ranges are derived from the best
    trials. At the end the best configuration is retrained on train + validation and tested
    once on the held-out test split; that model is written to NAME-best.npz (see `hpo evaluate`
    and `hpo predict`) and the campaign's report to NAME-report.html (see `hpo report`).

    Re-running with the same --name resumes the campaign as it was created; options that
    differ from its stored plan are refused unless --replan. Ctrl-C stops it (exit 130): the
    workers queue their trials again and the next run with the same --name goes on. A stage
    whose trials keep failing stops the campaign (exit 1) with the error they gave.

    \b
    Examples:
      hpo search
      hpo search --name lr-sweep --stages 2 --trials 40,20 --epochs 1,5 --param lr=log:1e-5..1
      hpo search --name lr-sweep --stages 3 --trials 40,20,10 --epochs 1,5,20 --replan
      hpo search --name c1 --workers 0 --storage postgresql://hpo@db/hpo --json
    """
    from workers.feasible import check_feasible
    from workers.run import cached_dataset

    if cv == 1:
        raise UsageError("--cv needs at least 2 folds (or 0 for the held-out validation split)")
    name = stageplan.check_name(name if name is not None else default_campaign_name(dataset))
    _interrupt_on_sigterm()
    with _stops_saying(f"interrupted: nothing is left running; resume with: hpo search --name {name}"):
        given = given_on_command_line(ctx)
        stored = campaign_mod.load_campaign(storage_url, name)
        if stored is None:
            if replan:
                raise UsageError(f"--replan: there is no campaign named {name!r} to change")
            default_trials, default_epochs = campaign_mod.default_schedule(stages)
            spec = campaign_mod.CampaignSpec(
                name=name, space=build_space(None, space_file, list(params)), dataset=dataset, stages=stages,
                trials=per_stage(trials, default_trials, stages, "--trials"),
                epochs=per_stage(epochs, default_epochs, stages, "--epochs"),
                sampler=sampler, pruner=pruner, cv=cv, seed=seed, top_quantile=top_quantile,
                min_choice_trials=min_choice_trials, keep_choices=keep_choices,
                max_failures_in_a_row=max_failures_in_a_row, max_failure_share=max_failure_share,
            )
        else:
            stored_spec, plans = stored
            requested = {field: ctx.params[option] for option, field in PLAN_OPTIONS.items() if option in given}
            n = requested.get("stages", stored_spec.stages)
            for key in ("trials", "epochs"):
                if key in requested:
                    requested[key] = per_stage(requested[key], [], n, f"--{key}")
            if given & {"space_file", "params"}:
                requested["space"] = build_space(None, space_file, list(params))
            spec = campaign_mod.reconcile(stored_spec, requested, len(plans), replan=replan)
        data = cached_dataset(spec.dataset, spec.seed)  # a bad dataset fails here, before anything is written
        check_feasible(spec.space, data, spec.cv)
        check_sampler(spec.sampler, spec.space)
        what = "resuming campaign" if stored else "campaign"
        err.print(f"{what} {name} on {mask_url(storage_url)}: {plural(spec.stages, 'stage')}, "
                  f"trials {spec.trials}, epochs {spec.epochs}, {plural(workers, 'local worker')}", soft_wrap=True)
        prepare = None
        if not no_report:
            from hpo.importance import MIN_COMPLETE
            from hpo.report_ahead import prepare_in_background

            importance = max(spec.trials) >= MIN_COMPLETE
            prepare = lambda: prepare_in_background(spec.dataset, spec.seed, importance=importance)  # noqa: E731
        progress = progress_for(err)
        try:
            with progress:
                summary = campaign_mod.run_campaign(storage_url, spec, progress, workers=workers, blas_threads=blas_threads,
                                                    on_start=prepare)
        except campaign_mod.StageFailed as e:
            if not no_report and (report := _write_report(storage_url, name)):
                err.print(literal(f"report: {report}"), soft_wrap=True)  # a path is not folded
            click.echo(f"Error: {one_line(e)}", err=True)
            sys.exit(1)
    # The result is stored by now: running the search again writes what is missing, without searching.
    with _stops_saying(f"interrupted: the campaign is finished and stored; its report or model may be missing; "
                       f"write them with: hpo search --name {name}"):
        report = None if no_report else _write_report(storage_url, name)
        model = None if no_model else _write_model(spec, summary)
    if as_json:
        print_json({**summary.to_dict(), "storage": mask_url(storage_url), "report": str(report) if report else None,
                    "model": str(model) if model else None})
        return
    progress.print_summary(out, summary)
    if report:
        out.print(literal(f"report: {report}"))
    if model:
        out.print(literal(f"model: {model}"))


def _write_model(spec: campaign_mod.CampaignSpec, summary: campaign_mod.CampaignSummary) -> Path | None:
    """The final model, written to NAME-best.npz in the working folder. A campaign finished by
    an earlier run keeps the file that run wrote, or has its final configuration trained again.
    A model that cannot be written is said in one line and costs the campaign nothing."""
    path = cli_model.default_model_path(spec.name)
    model = summary.model
    if model is None:
        if cli_model.is_final_model(path, spec.name, summary.best):
            return path
        err.print(literal(f"training the final configuration again for {path} ({summary.best.study} trial {summary.best.trial}) ..."))
        model = campaign_mod.retrain_final(spec, summary.best)
    try:
        return cli_model.write_model(model, path)
    except UsageError as e:
        err.print(literal(f"warning: the model was not written: {e.format_message()} (retry with: hpo search --name {spec.name})"))
        return None


def _write_report(storage_url: str, name: str) -> Path | None:
    """The campaign's report, written at its end (its figures also attached to the stage
    studies for optuna-dashboard); a report that cannot be written is said in one line and
    costs the campaign nothing (its results are stored)."""
    from hpo.report_ahead import wait_until_prepared

    err.print(literal("writing the report ..."))
    wait_until_prepared()  # before this thread imports the report's modules too
    from hpo.report import ReportPathError, write_report

    try:
        storage = backend.open_storage(storage_url)
        try:
            return write_report(storage, storage_url, name, dashboard=True)
        finally:
            storage.engine.dispose()
    except (ReportPathError, OSError, StorageError, *backend.DB_ERRORS) as e:
        err.print(literal(f"warning: the report was not written: {one_line(e)} (retry with: hpo report {name})"))
        return None


@contextlib.contextmanager
def _stops_saying(line: str):
    """Ctrl-C (or SIGTERM) anywhere in the block: exit 130 with ``line``, which says what goes on
    (the campaign leaves nothing RUNNING when it is stopped: see campaign.run_campaign)."""
    try:
        yield
    except STOPS as e:
        if not stopped_by_signal(e):
            raise
        record_stop()
        ignore_stop_signals()  # stopping already: a second Ctrl-C must not cut this short
        click.echo(line, err=True)
        sys.exit(130)


def _interrupt_on_sigterm() -> None:
    """SIGTERM stops a search as Ctrl-C does (a supervisor, `docker stop`, a coordinator's
    parent): the workers queue their trials again and the exit status is 130."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


# -- launch ----------------------------------------------------------------------------------
@click.command()
@click.option("-n", "--workers", "n", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True)
@click.option("--campaign", help="Campaign to work on.")
@click.option("--study", help="Stage study to work on.")
@click.option("--seed", type=int, default=None, help="Mixed into each worker's sampler seed (see hpo worker --help).")
@click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=60.0, show_default=True, help="Seconds to wait for the campaign to appear.")
@click.option("--blas-threads", type=click.IntRange(min=1), default=1, show_default=True)
@storage_option
def launch(n, campaign, study, seed, wait_seconds, blas_threads, storage_url) -> None:
    """Start N local workers on a campaign (or study) and show their joint progress.

    Started before the campaign exists (before its coordinator), it waits for it as
    `hpo worker` does. Ctrl-C stops the workers: each queues its trial again.

    \b
    Example:
      hpo launch -n 4 --campaign c1
    """
    from hpo.local import LocalWorkers

    if bool(campaign) == bool(study):
        raise UsageError("give exactly one of --campaign NAME or --study NAME")
    _interrupt_on_sigterm()
    current = _wait_for_target(storage_url, campaign, study, wait_seconds)
    storage = backend.retrying(lambda: backend.open_storage(storage_url, heartbeat=False), "open the storage", storage_url)
    # "(resumed)" only on a stage that had run trials before these workers started: not on a
    # fresh one, nor on a stage the campaign opens while they work
    before = backend.retrying(lambda: records.count_outcomes(storage, current.study_name), "count the trials", storage_url)
    resumed = current.study_name if any(count for state, count in before.items() if state != "WAITING") else None
    local = LocalWorkers(storage_url, n, campaign=campaign, study=study, seed=seed, blas_threads=blas_threads)
    progress = progress_for(err)
    interrupted = False
    try:
        with progress:
            while local.running():
                with contextlib.suppress(*backend.DB_ERRORS):  # the workers ride out an outage; so does the display
                    if campaign:
                        current = stageplan.campaign_stages(storage, campaign)[-1]
                    progress.stage_started(current, resumed=current.study_name == resumed)
                    progress.stage_progress(current, records.count_outcomes(storage, current.study_name),
                                            records.best_value(storage, current.study_name))
                time.sleep(0.5)
    except STOPS as e:
        if not stopped_by_signal(e):
            raise
        record_stop()
        ignore_stop_signals()
        interrupted = True
        err.print("stopping workers: each queues its trial again ...")
    finally:
        local.stop()
    for w in local.failed():
        err.print(f"worker {w.index} exited with {w.process.returncode}\n{w.log_tail()}")
    if local.failed():
        sys.exit(1)
    if interrupted:
        sys.exit(130)


def _wait_for_target(url: str, campaign: str | None, study: str | None, seconds: float) -> StagePlan:
    """The campaign's current stage (or the study's plan), waiting up to ``seconds`` for the
    schema and the campaign to appear; one line and exit 2 if they do not."""
    deadline = time.monotonic() + seconds
    while True:
        plan = None
        with contextlib.suppress(*backend.DB_ERRORS, StudyNotFound, DatabaseUnavailable):
            if backend.schema_ready(url):
                storage = backend.open_storage(url, heartbeat=False)
                try:
                    plan = (stageplan.campaign_stages(storage, campaign) or [None])[-1] if campaign else stageplan.read_plan(storage, study)
                finally:
                    storage.engine.dispose()
        if plan is not None:
            return plan
        if time.monotonic() >= deadline:
            what = f"no campaign named {campaign!r}" if campaign else f"no hpo stage study named {study!r}"
            raise UsageError(f"{what} appeared in {seconds:g}s: check the name (hpo studies)")
        time.sleep(0.5)


# -- narrow ------------------------------------------------------------------------------------
@click.command()
@click.argument("stage")
@click.option("--into", "into", help="Name of the new stage study, CAMPAIGN/stage-K. Default: the next stage of STAGE's campaign.")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), help="TOML file overriding what the narrowing derived.")
@click.option("--param", "params", multiple=True, metavar="NAME=SPEC", help="Override one derived parameter (repeatable).")
@click.option("--top", "top_quantile", type=TOP_FRACTION, default=None, help="Fraction of best trials the ranges come from. [default: the campaign's, else 0.25]")
@click.option("--top-k", type=click.IntRange(min=1), help="Use the K best trials instead of a fraction.")
@click.option("--min-choice-trials", type=click.IntRange(min=1), help=f"Keep a categorical choice tried fewer times, for lack of evidence. [default: the campaign's, else {MIN_CHOICE_TRIALS}]")
@click.option("--keep-choices", type=click.IntRange(min=1), help=f"Keep at least this many choices of each categorical parameter. [default: the campaign's, else {KEEP_CHOICES}]")
@click.option("--trials", type=click.IntRange(min=1), help="Budget of the new stage [default: the parent's / 2, at least 8].")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per trial of the new stage [default: 4x the parent's].")
@click.option("--seed-best", type=click.IntRange(min=0), default=1, show_default=True, help="Queue the parent's K best configurations first.")
@click.option("--force", is_flag=True, help="Narrow a stage that has not met its budget: close it first (its queued trials failed, the rest of its budget recorded as cancelled).")
@click.option("--dry-run", is_flag=True, help="Show the new ranges without creating the stage.")
@format_option
@storage_option
def narrow(stage, into, space_file, params, top_quantile, top_k, min_choice_trials, keep_choices, trials, epochs, seed_best,
           force, dry_run, fmt, storage_url) -> None:
    """Derive the next stage's search space from a finished stage (coarse to fine).

    A stage that has not met its budget is refused (it says what is left) unless --force.

    Numeric ranges shrink to the best trials (in log space for log-scaled parameters) with a
    margin of half their span, keeping at least half of the old width; a best value at the
    border of its range widens the range past that border instead;
    categorical choices that never reach the top are dropped, unless tried too few times to judge
    (--min-choice-trials) or needed to keep --keep-choices of them. Prints old and new ranges side
    by side with the reason for each change, and each choice's trials, best and median.

    \b
    Examples:
      hpo narrow c1/stage-1
      hpo narrow c1/stage-1 --top-k 5 --epochs 10 --param activation=relu,elu
      hpo narrow c1/stage-1 --into c1-fine/stage-2 --dry-run --format json
      hpo narrow c1/stage-1 --force      # stop stage 1 where it is and go on
    """
    from hpo.steps import narrow_stage

    storage = backend.open_storage(storage_url, heartbeat=False)
    parent, child, result = narrow_stage(
        storage_url, storage, stage, into=into, space_file=space_file, params=list(params),
        top_quantile=top_quantile, top_k=top_k, min_choice_trials=min_choice_trials, keep_choices=keep_choices,
        trials=trials, epochs=epochs,
        seed_best=seed_best, force=force, dry_run=dry_run,
    )
    rows = narrowing_rows(result, child)
    if fmt == "json":
        print_json({"parent": parent.study_name, "study": child.study_name, "created": not dry_run,
                    "trials": child.trials, "epochs": child.epochs, "changes": rows,
                    "source_trials": result.source_trials})
        return
    render_rows(narrowing_table_rows(rows), ["param", "old", "new", "reason"], fmt,
                title=f"{parent.study_name} -> {child.study_name} ({plural(child.trials, 'trial')} x {plural(child.epochs, 'epoch')})")
    if fmt == "table":
        err.print("dry run: nothing created" if dry_run else
                  f"created {child.study_name}; run it with: hpo worker --campaign {child.campaign}  (or hpo search --name {child.campaign} --stages {child.stage})")


# -- schema ------------------------------------------------------------------------------------
@click.command("init")
@storage_option
def init_db(storage_url) -> None:
    """Create or upgrade the storage schema (once, before many workers start).

    \b
    Example:
      HPO_STORAGE=postgresql://hpo@db/hpo hpo init
    """
    backend.ensure_schema(storage_url)
    err.print(f"schema ready on {mask_url(storage_url)}")


COMMANDS = (train, search, launch, narrow, init_db)

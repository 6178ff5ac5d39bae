"""The model a search found: `hpo evaluate` and `hpo predict` over a saved model file, and the
pieces `hpo train --from-trial / --save` and `hpo search` use to retrain a trial and to write a
model (thin commands over :mod:`workers.model_file`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hpo.output import UsageError, err, literal, out, print_json, render_rows
from workers.model_file import ModelFileError, SavedModel

MODEL_SUFFIX = "-best.npz"
SPLITS = ("test", "val", "train")


def default_model_path(campaign: str) -> Path:
    """Where `hpo search` writes a campaign's model: NAME-best.npz in the working folder."""
    return Path(f"{campaign}{MODEL_SUFFIX}")


def model_target(path: str) -> Path:
    """A path a model (or predictions) may be written to, checked before any work; a usage
    error (one line) otherwise."""
    from workers.model_file import check_target

    try:
        return check_target(path)
    except ModelFileError as e:
        raise UsageError(str(e)) from None


def write_model(model: SavedModel, path: str | Path) -> Path:
    """Write ``model`` atomically; a usage error (one line) if it cannot be written."""
    from workers.model_file import save_model

    try:
        return save_model(model, path)
    except ModelFileError as e:
        raise UsageError(str(e)) from None


def is_final_model(path: Path, campaign: str, best: Any) -> bool:
    """Whether ``path`` holds the final model of ``campaign`` whose stored result is ``best``
    (a :class:`hpo.campaign.FinalResult`): same trial, same test accuracy."""
    from workers.model_file import load_model

    try:
        info = load_model(path).info
    except ModelFileError:
        return False
    source, accuracy = info.get("source") or {}, info.get("accuracy") or {}
    return (source.get("campaign"), source.get("study"), source.get("trial"), accuracy.get("test")) == (
        campaign, best.study, best.trial, best.test_accuracy)


def read_model(path: str) -> SavedModel:
    from workers.model_file import load_model

    try:
        return load_model(path)
    except ModelFileError as e:
        raise UsageError(str(e)) from None


# -- hpo train --from-trial --------------------------------------------------------------------
@dataclass(frozen=True)
class StoredTrial:
    """A trial to train again: what it trained (``config``, its seed included) on which data
    (``dataset``, ``split_seed``, ``cv`` of its stage), and the value it stored."""

    study: str
    number: int
    state: str
    value: float | None
    config: dict[str, Any]
    dataset: str
    split_seed: int
    cv: int
    campaign: str


def stored_trial(storage_url: str, name: str, number: int) -> StoredTrial:
    """Trial ``number`` of stage study ``name`` (or of campaign ``name``'s last stage), read
    from the storage; a usage error (one line) when there is no such trial or it holds no
    configuration to train."""
    from hpo import inspect
    from hpo.cli_inspect import opened
    from workers import stageplan
    from workers.record import read_record

    with opened(storage_url) as storage:
        try:
            trial = inspect.trial_record(storage, name, number)
        except inspect.QueryError as e:
            raise UsageError(str(e)) from None
        plan = stageplan.read_plan(storage, trial["study"])
    study = trial["study"]
    if plan is None:
        raise UsageError(f"{study!r} is not a stage of an hpo campaign: its dataset and split are unknown")
    record = read_record(trial["user_attrs"])
    if not record.config:
        raise UsageError(f"trial {number} of {study!r} has no stored configuration (it is {trial['state']}): nothing to retrain")
    return StoredTrial(study=study, number=number, state=trial["state"], value=trial["value"], config=dict(record.config),
                       dataset=plan.dataset, split_seed=plan.seed, cv=plan.cv, campaign=plan.campaign)


def reproduction(trial: StoredTrial, retrained: float | None, changed: list[str]) -> dict[str, Any]:
    """What `hpo train --from-trial` reports about the trial it trained again: the stored
    value, the value retrained, and whether they are equal (None when not comparable: the
    trial stored no value, or options changed its configuration)."""
    comparable = trial.value is not None and retrained is not None and not changed
    return {"study": trial.study, "trial": trial.number, "state": trial.state, "cv": trial.cv,
            "stored_value": trial.value, "retrained_value": retrained, "changed": changed,
            "exact": (retrained == trial.value) if comparable else None}


def reproduction_line(report: dict[str, Any]) -> tuple[str, str]:
    """The line (and its style) saying how the retrain compares to the stored trial."""
    what = f"{report['study']} trial {report['trial']}"
    value = "mean validation accuracy over its folds" if report["cv"] else "validation accuracy"
    if report["changed"]:
        return f"{what} with {', '.join(report['changed'])} changed: its stored {value} does not apply", ""
    if report["stored_value"] is None:
        return f"{what} ({report['state']}) stored no {value} to compare with", ""
    stored, retrained = report["stored_value"], report["retrained_value"]
    if report["exact"]:
        return f"{what}: stored {value} {stored!r}, retrained {retrained!r}: exact", "green"
    return (f"{what}: stored {value} {stored!r}, retrained {retrained!r}: differs (another NumPy "
            "build or BLAS thread allowance than the worker's changes the last bits)", "yellow")


# -- hpo evaluate ------------------------------------------------------------------------------
@click.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--dataset", metavar="SPEC", help="digits, mnist1d, cifar10:DIR or npz:PATH. [default: the dataset the model was trained on]")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="Which split of the dataset to classify.")
@click.option("--split-seed", type=click.IntRange(min=0), help="Seed of the train/val/test split. [default: the model's, so that its test split is the one it never saw]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: accuracy, labels, confusion matrix.")
def evaluate(model_path, dataset, split, split_seed, as_json) -> None:
    """Classify a dataset split with a saved model: accuracy and confusion matrix.

    MODEL is a model file written by `hpo search` (NAME-best.npz) or `hpo train --save`. The
    rows go through the model's own preprocessing, then the network in evaluation mode, and
    are compared with the split's labels. By default the model is evaluated on the test split
    of the dataset and split it was trained with: for a search's model that is the test
    accuracy the search reported.

    \b
    Examples:
      hpo evaluate digits-20261127-101500-best.npz
      hpo evaluate c1-best.npz --dataset npz:new-data.npz --json
    """
    from workers.model_file import confusion
    from workers.run import cached_dataset

    model = read_model(model_path)
    info = model.info
    spec = dataset if dataset is not None else info.get("dataset")
    if not isinstance(spec, str):
        raise UsageError(f"{model_path}: the model does not say which dataset it was trained on; give --dataset")
    if split_seed is None:
        stored_seed = info.get("split_seed")
        split_seed = stored_seed if isinstance(stored_seed, int) and stored_seed >= 0 else 0
    data = cached_dataset(spec, split_seed)
    X, y = getattr(data, f"X_{split}"), getattr(data, f"y_{split}")
    if X.shape[1] != model.input_dim:
        raise UsageError(f"{spec} has {X.shape[1]} features per row; the model {model_path} takes {model.input_dim}")
    if X.shape[0] == 0:
        raise UsageError(f"the {split} split of {spec} is empty")
    try:
        figures = confusion(model, X, y, data.class_labels or tuple(range(data.num_classes)))
    except ModelFileError as e:
        raise UsageError(str(e)) from None
    seen = spec == info.get("dataset") and split_seed == info.get("split_seed") and split in str(info.get("trained_on", "")).split("+")
    if seen:
        err.print(literal(f"note: the model was trained on the {split} split of {spec}: this is no test of it"), style="yellow")
    if as_json:
        print_json({"model": model_path, "dataset": spec, "split": split, "split_seed": split_seed, **figures,
                    "trained_on": info.get("trained_on"), "source": info.get("source")})
        return
    out.print(literal(f"{model_path} on {spec}, {split} split (split seed {split_seed}): "
                      f"{figures['examples']} examples, accuracy {figures['accuracy']:.4f}"))
    names = [str(label) for label in figures["labels"]]
    rows = []
    for label, counts in zip(names, figures["confusion_matrix"]):
        total = sum(counts)
        rows.append({"true": label, **dict(zip(names, counts)), "n": total,
                     "recall": counts[names.index(label)] / total if total else None})
    render_rows(rows, ["true", *names, "n", "recall"], "table",
                title="Confusion matrix: one row per true label, one column per predicted label",
                unbroken=["true", *names, "n", "recall"])


# -- hpo predict -------------------------------------------------------------------------------
@click.command()
@click.argument("model_path", metavar="MODEL")
@click.option("-i", "--input", "input_path", required=True, metavar="X.npy", help="Rows to classify: one .npy array (N, D) of raw features, as the dataset holds them.")
@click.option("-o", "--output", "output_path", required=True, metavar="Y.npy", help="Where to write the N predicted labels (.npy of int64; uint64 for labels beyond int64).")
def predict(model_path, input_path, output_path) -> None:
    """Classify raw rows with a saved model and write the predicted labels.

    The rows are preprocessed as the model's training data was and classified by the network
    in evaluation mode. The labels written are the dataset's own (an npz dataset labelled 3, 7
    and 10 gets 3, 7 and 10 back). The output is written whole or not at all; prints its path.

    \b
    Examples:
      hpo predict c1-best.npz --input rows.npy -o labels.npy
      python -c "import numpy; print(numpy.load('labels.npy'))"
    """
    from workers.model_file import load_rows, save_labels

    model = read_model(model_path)
    target = model_target(output_path)
    try:
        labels = model.predict(load_rows(input_path), what=input_path)
        path = save_labels(labels, target)
    except ModelFileError as e:
        raise UsageError(str(e)) from None
    err.print(literal(f"{labels.shape[0]} predictions written"))
    out.print(literal(str(path)))


COMMANDS = (evaluate, predict)

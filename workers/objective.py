"""One trial: sampled parameters -> TrainConfig -> train -> report / prune -> its record.

Everything a trial produced (learning curve, diagnostics, seed, why it stopped) is returned as
a :class:`workers.record.TrialRecord`; the worker adds its timings and writes it to the trial's
user attrs (``workers.record.write_record``), so the CLI, a report and optuna-dashboard all read
the same record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna

from workers.record import Curve, Diagnostics, TrialRecord, histograms_from_json
from workers.run import Score, cached_dataset, fit_and_score
from workers.space import SearchSpace
from workers.stageplan import StagePlan
from workers.train import EpochReport, TrainConfig, TrainingDiverged


class StopRequested(Exception):
    """The worker was asked to stop (SIGTERM / SIGINT) while a trial was training."""


@dataclass
class TrialOutcome:
    """How a trial ended (its record's state and value), and what to store for it."""

    record: TrialRecord
    train_seconds: float = 0.0

    @property
    def state(self) -> optuna.trial.TrialState:
        return optuna.trial.TrialState[self.record.state]

    @property
    def value(self) -> float | None:
        return self.record.value


def trial_seed(plan_seed: int, trial_number: int) -> int:
    """The training seed of a trial: fixed by the stage seed and the trial number, so any trial
    can be reproduced with `hpo train --seed`."""
    return (plan_seed * 1_000_003 + trial_number * 7919) % (2**31 - 1)


def config_for(plan: StagePlan, space: SearchSpace, params: dict[str, Any], seed: int) -> TrainConfig:
    return TrainConfig(**space.to_train_kwargs(params), epochs=plan.epochs, seed=seed)


# What trains a configuration: ``fit_and_score``'s signature and result. The worker takes
# another one only to measure everything around training (benchmarks/overhead.py).
Trainer = Callable[..., Score]


def run_trial(
    trial: optuna.Trial,
    plan: StagePlan,
    space: SearchSpace,
    stop_requested: Callable[[], bool] = lambda: False,
    trainer: Trainer = fit_and_score,
) -> TrialOutcome:
    """Train the configuration of ``trial`` with ``trainer`` and decide its end state.

    Validation accuracy is reported after each epoch (with cross-validation, its mean over the
    folds at that epoch: the folds train side by side) so the pruner can stop a weak trial
    early; the same figures are the trial's curve. A diverged run ends PRUNED with its reason
    in the record; a stop request raises :class:`StopRequested` at the next epoch boundary.
    """
    seed = trial_seed(plan.seed, trial.number)
    config = config_for(plan, space, trial.params, seed)
    dataset = cached_dataset(plan.dataset, plan.seed)
    epochs: list[int] = []
    val_accuracy: list[float | None] = []
    train_loss: list[float] = []
    callback_seconds = 0.0

    def report(step: int, value: float) -> None:
        nonlocal callback_seconds
        started = time.perf_counter()
        try:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {value:.4f} below the median")
        finally:
            callback_seconds += time.perf_counter() - started
        if stop_requested():
            raise StopRequested()

    def on_epoch(epoch: EpochReport) -> None:
        epochs.append(epoch.epoch)
        val_accuracy.append(epoch.val_accuracy)
        train_loss.append(epoch.train_loss)
        report(epoch.epoch, epoch.val_accuracy)

    record = TrialRecord(seed=seed, config=config.to_dict())
    started = time.perf_counter()
    try:
        score = trainer(config, dataset, cv=plan.cv, on_epoch=on_epoch)
    except (TrainingDiverged, optuna.TrialPruned) as e:
        record = replace(record, state="PRUNED", reason=str(e))
    else:
        record = replace(
            record,
            state="COMPLETE",
            value=score.value,
            diagnostics=Diagnostics.from_json(score.result.diagnostics),
            histograms=histograms_from_json(score.result.histograms),
            train_accuracy=score.result.train_accuracy,
            fold_values=tuple(score.fold_values) or None,
        )
    train_seconds = time.perf_counter() - started - callback_seconds
    curve = Curve(epoch=tuple(epochs), val_accuracy=tuple(val_accuracy), train_loss=tuple(train_loss))
    return TrialOutcome(replace(record, curve=curve), train_seconds=train_seconds)

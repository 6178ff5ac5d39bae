"""CachedTPESampler samples exactly what Optuna's TPESampler samples, given the same seed and
the same trials: complete, pruned (ranked by their last step), failed, running (constant liar),
trials without some parameter, both directions, with and without constant liar."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from workers.strategy import make_sampler
from storage.optuna_tpe import CachedTPESampler

SPACE = {
    "lr": FloatDistribution(1e-6, 10.0, log=True),
    "momentum": FloatDistribution(0.0, 0.99),
    "width": IntDistribution(16, 512, log=True),
    "depth": IntDistribution(1, 4),
    "step": FloatDistribution(0.0, 1.0, step=0.25),
    "activation": CategoricalDistribution(["relu", "tanh", "elu"]),
    "batch_norm": CategoricalDistribution([True, False]),
}


def _history(n: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    """Finished trials of every kind, made by a random search: their params are the data."""
    rng = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=rng)
    trials = []
    for i in range(n):
        t = study.ask(SPACE if i % 17 else {k: v for k, v in SPACE.items() if k != "depth"})
        p = t.params
        score = -abs(math.log10(p["lr"]) + 2.5) + 0.1 * p.get("depth", 2) + (p["activation"] == "relu")
        curve = {step: score * step / 5 + 0.01 * (i % 3) for step in range(1, 6)}
        kind = i % 5
        if kind == 4:  # pruned after a few steps (ranked by the last step, then its value)
            steps = 1 + i % 3
            state, values, curve = TrialState.PRUNED, None, {s: v for s, v in curve.items() if s <= steps}
        elif kind == 3 and i % 2:
            state, values = TrialState.FAIL, None
        else:
            state, values = TrialState.COMPLETE, [round(score, 1)]  # ties on purpose
        trials.append(create_trial(state=state, params=p, distributions=t.distributions, values=values,
                                   intermediate_values=curve))
        study.tell(t, state=TrialState.FAIL)
    return trials


def _samples(sampler_cls, history, direction: str, running: int, asks: int, **kwargs) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction=direction, sampler=sampler_cls(seed=11, n_startup_trials=5, **kwargs))
        study.add_trials(history)
        holders = [study.ask(SPACE) for _ in range(running)]  # RUNNING trials for the constant liar
        out = []
        for i in range(asks):
            trial = study.ask(SPACE)
            out.append(trial.params)
            if i % 3 == 2:
                trial.report(0.1 * i, 1)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, round(0.2 * (i % 4), 1))
        for h in holders:
            study.tell(h, state=TrialState.FAIL)
    return out


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize("constant_liar", [True, False])
@pytest.mark.parametrize("n", [12, 90])
def test_cached_tpe_samples_what_tpe_samples(direction, constant_liar, n):
    history = _history(n, seed=n)
    expected = _samples(optuna.samplers.TPESampler, history, direction, 3, 15, constant_liar=constant_liar)
    got = _samples(CachedTPESampler, history, direction, 3, 15, constant_liar=constant_liar)
    assert got == expected


def test_multi_objective_and_constraints_are_tpe_unchanged():
    history = _history(30, seed=3)
    kw = {"constraints_func": lambda t: [t.params["lr"] - 1.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _samples(optuna.samplers.TPESampler, history, "maximize", 1, 6, **kw)
        got = _samples(CachedTPESampler, history, "maximize", 1, 6, **kw)
    assert got == expected


def test_the_stage_default_sampler_is_the_cached_tpe():
    from workers.space import default_space

    assert isinstance(make_sampler("tpe", default_space(), 0), CachedTPESampler)

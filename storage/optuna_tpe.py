"""Optuna's TPE sampler, with what it derives from each finished trial computed once.

On every ``ask``, ``TPESampler`` walks every trial of the study in Python: it ranks them
(each pruned trial by its last intermediate value, each trial's constraints looked up) and
converts every parameter of every trial to its internal representation. At 1,000 trials that
was most of the ~12 ms it spent per trial -- as much as everything else a worker does. A
finished trial never changes, so :class:`CachedTPESampler` keeps, per finished trial, its rank
keys and internal parameter values in arrays, ranks with NumPy, and converts only the RUNNING
trials (whose constant-liar parameters may still appear) afresh. The Parzen estimators, the
candidates and the acquisition function are Optuna's own, so with the same seed it samples
exactly what ``TPESampler`` samples (``tests/test_optuna_tpe.py`` checks it).

Only single-objective studies without ``constraints_func`` take this path; anything else is
``TPESampler`` unchanged. It pays for itself at large studies: ``benchmarks/overhead.py
--stock-tpe`` measures the worker's per-trial time with it and with ``TPESampler`` in the same
run (figures in docs/benchmarks.md).

It lives in ``storage/`` because it reaches into Optuna's TPE. Private names used, and why
(each exercised by ``tests/test_optuna_internals.py``; sampling equality by
``tests/test_optuna_tpe.py``):

- ``TPESampler._sample(study, trial, search_space)``: the one method overridden: the per-ask
  work this class caches.
- ``TPESampler._constraints_func``, ``._constant_liar``, ``._gamma``, ``._rng.rng``,
  ``._n_ei_candidates``, ``._parzen_estimator_cls``, ``._parzen_estimator_parameters``: the
  sampler's own settings, read as ``_sample`` reads them.
- ``TPESampler._compute_acquisition_func``, ``TPESampler._compare``, ``TPESampler._get_params``:
  the acquisition function, the choice of the best candidate, a running trial's parameters.
- ``optuna.samplers._tpe.sampler``: ``default_gamma``, ``_get_infeasible_trial_score``,
  ``_get_pruned_trial_score``: how ``_split_trials`` ranks a finished trial.
- ``Study._get_trials(deepcopy, states, use_cache)``, ``Study._study_id``,
  ``FrozenTrial._trial_id``: the trials as ``_sample`` reads them, keyed by id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe import sampler as _tpe
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

_COMPLETE, _PRUNED, _INFEASIBLE = 0, 1, 2


class _Column:
    """A growable 1-D array: appends in amortized O(1), the filled part read without a copy."""

    def __init__(self, dtype: Any, values: list | None = None) -> None:
        values = values or []
        self._data = np.empty(max(64, 2 * len(values)), dtype=dtype)
        self._data[: len(values)] = values
        self._n = len(values)

    def append(self, value: Any) -> None:
        if self._n == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self._n] = value
        self._n += 1

    @property
    def array(self) -> np.ndarray:
        return self._data[: self._n]


@dataclass
class _Finished:
    """The finished trials of one study seen so far, one row each (in the order first seen)."""

    rows: dict[int, int] = field(default_factory=dict)  # trial id -> row
    number: _Column = field(default_factory=lambda: _Column(np.int64))
    group: _Column = field(default_factory=lambda: _Column(np.int64))  # complete, pruned, infeasible
    key0: _Column = field(default_factory=lambda: _Column(float))  # sort key within the group ...
    key1: _Column = field(default_factory=lambda: _Column(float))  # ... and its tie-breaker
    params: list[dict[str, Any]] = field(default_factory=list)  # a finished trial's parameters
    internal: dict[tuple[str, BaseDistribution], _Column] = field(default_factory=dict)
    has_params: dict[tuple[tuple[str, BaseDistribution], ...], _Column] = field(default_factory=dict)


class CachedTPESampler(TPESampler):
    """``TPESampler`` (same arguments, same samples) that keeps per-trial work across asks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._finished: dict[int, _Finished] = {}  # study id -> table

    def _sample(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if len(study.directions) != 1 or self._constraints_func is not None:
            return super()._sample(study, trial, search_space)
        # TPESampler._sample, with the split and the observations taken from the table.
        if self._constant_liar:
            states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
        else:
            states = [TrialState.COMPLETE, TrialState.PRUNED]
        trials = study._get_trials(deepcopy=False, states=states, use_cache=not self._constant_liar)
        if self._gamma is None:
            self._gamma = _tpe.default_gamma
        table = self._finished.setdefault(study._study_id, _Finished())
        known = table.rows
        running, new = [], []
        n_known = 0
        for t in trials:  # most are finished trials already tabled: one dict lookup each
            if t._trial_id in known:
                n_known += 1
            elif t.number != trial.number:
                (running if t.state == TrialState.RUNNING else new).append(t)
        for t in new:
            self._add(table, study, t)
        if n_known + len(new) == len(known):  # every tabled trial is in this list: all rows
            rows = np.arange(len(known), dtype=np.int64)
        else:
            ids = [t._trial_id for t in trials if t._trial_id in known]
            rows = np.fromiter((known[i] for i in ids), dtype=np.int64, count=len(ids))
        below, above = self._split(table, rows, self._gamma(len(rows)))
        mpe_below = self._estimator(table, study, search_space, below, [])
        mpe_above = self._estimator(table, study, search_space, above, running)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    # -- the table ---------------------------------------------------------------------------
    def _add(self, table: _Finished, study: Study, trial: FrozenTrial) -> None:
        """One finished trial: its group and key as ``_split_trials`` ranks it."""
        infeasible = _tpe._get_infeasible_trial_score(trial)
        if infeasible > 0:
            group, key = _INFEASIBLE, (float(infeasible), 0.0)
        elif trial.state == TrialState.COMPLETE:
            value = float(trial.value)  # type: ignore[arg-type]
            group, key = _COMPLETE, (value if study.direction == StudyDirection.MINIMIZE else -value, 0.0)
        else:
            step, score = _tpe._get_pruned_trial_score(trial, study)
            group, key = _PRUNED, (float(step), float(score))
        table.rows[trial._trial_id] = len(table.params)
        table.number.append(trial.number)
        table.group.append(group)
        table.key0.append(key[0])
        table.key1.append(key[1])
        params = trial.params  # a finished trial's own parameters (TPESampler._get_params)
        table.params.append(params)
        for (name, dist), column in table.internal.items():
            column.append(dist.to_internal_repr(params[name]) if name in params else np.nan)
        for space, column in table.has_params.items():
            column.append(all(name in params for name, _ in space))

    def _split(self, table: _Finished, rows: np.ndarray, n_below: int) -> tuple[np.ndarray, np.ndarray]:
        """``_split_trials`` on rows: the best ``n_below`` complete trials, then pruned, then
        infeasible ones fill "below"; ties keep trial-number order, as Python's stable sort does."""
        number = table.number.array[rows]
        group = table.group.array[rows]
        key0 = table.key0.array[rows]
        key1 = table.key1.array[rows]
        below, above = [], []
        for g in (_COMPLETE, _PRUNED, _INFEASIBLE):
            idx = np.flatnonzero(group == g)
            order = idx[np.lexsort((number[idx], key1[idx], key0[idx]))]
            k = min(max(0, n_below), len(order))
            below.append(rows[order[:k]])
            above.append(rows[order[k:]])
            n_below = max(0, n_below - k)
        return np.concatenate(below), np.concatenate(above)

    def _estimator(self, table: _Finished, study: Study, search_space: dict[str, BaseDistribution],
                   rows: np.ndarray, running: list[FrozenTrial]):
        """The Parzen estimator ``_build_parzen_estimator`` builds from these trials (in
        trial-number order, those without every parameter of the space left out)."""
        items = list(search_space.items())
        space_key = tuple(items)
        if space_key not in table.has_params:
            table.has_params[space_key] = _Column(bool, [all(name in p for name, _ in items) for p in table.params])
        has = table.has_params[space_key].array
        rows = rows[has[rows]]
        columns = {}
        for name, dist in items:
            if (name, dist) not in table.internal:
                table.internal[(name, dist)] = _Column(float, [
                    dist.to_internal_repr(p[name]) if name in p else np.nan for p in table.params
                ])
            columns[name] = table.internal[(name, dist)].array[rows]
        numbers = table.number.array[rows]
        extra = []
        for t in running:
            params = self._get_params(t, study)
            if search_space.keys() <= params.keys():
                extra.append((t.number, [dist.to_internal_repr(params[name]) for name, dist in items]))
        if extra:
            numbers = np.concatenate([numbers, [n for n, _ in extra]])
            for i, (name, _) in enumerate(items):
                columns[name] = np.concatenate([columns[name], [v[i] for _, v in extra]])
        order = np.argsort(numbers, kind="stable")
        observations = {}
        for name, dist in items:
            column = columns[name][order]
            if isinstance(dist, CategoricalDistribution) and len(column):
                column = column.astype(np.int64)  # as np.asarray(list of choice indices) is
            observations[name] = column
        return self._parzen_estimator_cls(observations, search_space, self._parzen_estimator_parameters)

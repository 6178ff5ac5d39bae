"""The contract with Optuna's private API: every private name storage/ uses, exercised here.

Optuna may move any private name in any release. Each name the project uses is listed at the
top of the module that uses it (storage/optuna_access.py, storage/optuna_tpe.py,
storage/worker_storage.py, storage/reader.py) and checked here against the installed Optuna, so an upgrade fails
in this one module with a message naming the private API that moved and who needs it. The
version pin in pyproject.toml is the series this suite has passed on.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

CHECKS: list[tuple[str, str, Callable[..., None]]] = []


def private(name: str, used_by: str):
    """Register the function below as the check of private name ``name``."""
    def register(check: Callable[..., None]) -> Callable[..., None]:
        CHECKS.append((name, used_by, check))
        return check
    return register


def params_of(function: Callable) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'contract.db'}"


def quiet_study(**kwargs) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", **kwargs)


# -- storage/optuna_access.py ------------------------------------------------------------------
@private("Study._storage", "storage/optuna_access.py: the reaper, the retry and the claim write through it")
def _(sqlite_url):
    study = quiet_study(storage=sqlite_url, study_name="s")
    assert isinstance(study._storage, BaseStorage)
    assert study._storage.get_study_id_from_name("s") is not None


@private("Study._study_id, FrozenStudy._study_id", "storage/optuna_access.py: the id storage calls take")
def _(sqlite_url):
    study = quiet_study(storage=sqlite_url, study_name="s")
    assert study._study_id == study._storage.get_study_id_from_name("s")
    (frozen,) = study._storage.get_all_studies()
    assert frozen._study_id == study._study_id


@private("FrozenTrial._trial_id, Trial._trial_id", "storage/optuna_access.py: the id storage calls take")
def _(sqlite_url):
    study = quiet_study(storage=sqlite_url)
    trial = study.ask()
    assert study._storage.get_trial(trial._trial_id).number == trial.number
    (frozen,) = study.get_trials()
    assert frozen._trial_id == trial._trial_id


@private("Study._thread_local.cached_all_trials", "storage/optuna_access.py: cleared before a claim, as ask does")
def _(sqlite_url):
    study = quiet_study(storage=sqlite_url)
    assert hasattr(study._thread_local, "cached_all_trials")
    study._thread_local.cached_all_trials = None
    study.ask()  # ask still works with the cache cleared by hand


@private("Study._pop_waiting_trial_id()", "storage/optuna_access.py: a claim takes a queued trial without sampling")
def _(sqlite_url):
    study = quiet_study(storage=sqlite_url)
    study.enqueue_trial({"x": 0.5})
    trial_id = study._pop_waiting_trial_id()
    assert study._storage.get_trial(trial_id).state == TrialState.RUNNING
    assert study._pop_waiting_trial_id() is None


@private("_CachedStorage._backend", "storage/optuna_access.py: the RDBStorage under Optuna's cache")
def _(sqlite_url):
    study = quiet_study(storage=sqlite_url)
    assert isinstance(study._storage._backend, RDBStorage)


@private("RDBStorage._get_stale_trial_ids(study_id)", "storage/optuna_access.py: the reaper's stale trials")
def _(sqlite_url):
    storage = RDBStorage(sqlite_url, heartbeat_interval=1, grace_period=1)
    study = quiet_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    assert params_of(RDBStorage._get_stale_trial_ids) == ["study_id"]
    time.sleep(2.2)  # the grace period is whole seconds on the database clock
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


# -- storage/optuna_tpe.py ---------------------------------------------------------------------
@private("TPESampler._sample(study, trial, search_space)", "storage/optuna_tpe.py: the method it overrides")
def _():
    assert params_of(optuna.samplers.TPESampler._sample) == ["study", "trial", "search_space"]
    assert "_sample" in vars(optuna.samplers.TPESampler)


@private("TPESampler settings (_constraints_func, _constant_liar, _gamma, _rng.rng, _n_ei_candidates, "
         "_parzen_estimator_cls, _parzen_estimator_parameters)", "storage/optuna_tpe.py: read as _sample reads them")
def _():
    sampler = optuna.samplers.TPESampler(seed=1)
    assert sampler._constraints_func is None
    assert sampler._constant_liar in (True, False)
    assert sampler._gamma is None or callable(sampler._gamma)
    assert hasattr(sampler._rng.rng, "uniform")
    assert isinstance(sampler._n_ei_candidates, int)
    assert callable(sampler._parzen_estimator_cls)
    assert sampler._parzen_estimator_parameters is not None


@private("TPESampler._compute_acquisition_func, _compare, _get_params",
         "storage/optuna_tpe.py: acquisition, choice of the best candidate, a running trial's params")
def _():
    tpe = optuna.samplers.TPESampler
    assert params_of(tpe._compute_acquisition_func) == ["samples", "mpe_below", "mpe_above"]
    assert params_of(tpe._compare) == ["samples", "acquisition_func_vals"]
    assert params_of(tpe._get_params) == ["trial", "study"]


@private("optuna.samplers._tpe.sampler (default_gamma, _get_infeasible_trial_score, _get_pruned_trial_score)",
         "storage/optuna_tpe.py: how _split_trials ranks a finished trial")
def _():
    from optuna.samplers._tpe import sampler as tpe_module

    assert tpe_module.default_gamma(100) >= 1
    study = quiet_study()
    trial = study.ask({"x": FloatDistribution(0, 1)})
    study.tell(trial, 0.5)
    (frozen,) = study.get_trials()
    assert tpe_module._get_infeasible_trial_score(frozen) == 0
    pruned = study.ask({"x": FloatDistribution(0, 1)})
    pruned.report(0.25, 3)
    study.tell(pruned, state=TrialState.PRUNED)
    assert tpe_module._get_pruned_trial_score(study.get_trials()[-1], study)[0] == -3


@private("Study._get_trials(deepcopy, states, use_cache)", "storage/optuna_tpe.py: the trials as _sample reads them")
def _():
    assert params_of(optuna.Study._get_trials) == ["deepcopy", "states", "use_cache"]
    study = quiet_study()
    study.tell(study.ask(), 1.0)
    trials = study._get_trials(deepcopy=False, states=[TrialState.COMPLETE], use_cache=False)
    assert [t.value for t in trials] == [1.0] and isinstance(trials[0], FrozenTrial)


# -- storage/worker_storage.py -----------------------------------------------------------------
@private("optuna.storages._rdb.models (TrialValueModel, TrialIntermediateValueModel value encodings)",
         "storage/worker_storage.py: writes the rows RDBStorage writes")
def _():
    from optuna.storages._rdb import models

    for value in (0.5, float("inf"), float("-inf")):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        assert kind in models.TrialValueModel.TrialValueType
        assert models.TrialValueModel.stored_repr_to_value(stored, kind) == value
    for value in (0.5, float("inf"), float("-inf"), float("nan")):
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        assert kind in models.TrialIntermediateValueModel.TrialIntermediateValueType
        back = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(stored, kind)
        assert back == value or (back != back and value != value)


@private("optuna.storages._heartbeat.BaseHeartbeat (and its _get_stale_trial_ids)",
         "storage/worker_storage.py: what fail_stale_trials and study.optimize look for")
def _():
    from optuna.storages._heartbeat import BaseHeartbeat

    assert issubclass(RDBStorage, BaseHeartbeat)
    assert params_of(BaseHeartbeat._get_stale_trial_ids) == ["study_id"]
    assert {"record_heartbeat", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback"} <= set(dir(BaseHeartbeat))


@private("optuna.study._frozen.FrozenStudy", "storage/worker_storage.py: the type get_all_studies returns")
def _(sqlite_url):
    from optuna.study._frozen import FrozenStudy

    quiet_study(storage=sqlite_url, study_name="s")
    (frozen,) = RDBStorage(sqlite_url).get_all_studies()
    assert isinstance(frozen, FrozenStudy)


# -- storage/reader.py -------------------------------------------------------------------------
@private("optuna.storages._rdb.models (the value type columns' names, as storage.reader decodes them)",
         "storage/reader.py: reads values and intermediate values without loading the models")
def _():
    from optuna.storages._rdb import models

    from storage.reader import NON_FINITE_VALUES, stored_value

    value, intermediate = models.TrialValueModel, models.TrialIntermediateValueModel
    cases = ((value.value_to_stored_repr, value.TrialValueType, (0.5, -2.0, math.inf, -math.inf)),
             (intermediate.intermediate_value_to_stored_repr, intermediate.TrialIntermediateValueType,
              (0.5, -2.0, math.inf, -math.inf, math.nan)))
    for encode, kinds, values in cases:
        assert {kind.name for kind in kinds} <= set(NON_FINITE_VALUES) | {"FINITE"}
        for number in values:
            stored, kind = encode(number)
            back = stored_value(stored, kind.name)
            assert back == number or (math.isnan(back) and math.isnan(number)), kind.name


@private("optuna.study._frozen.FrozenStudy(study_name, direction, user_attrs, system_attrs, study_id, directions=)",
         "storage/reader.py: builds the studies get_all_studies returns")
def _():
    from optuna.study import StudyDirection
    from optuna.study._frozen import FrozenStudy

    frozen = FrozenStudy(study_name="s", direction=None, user_attrs={"a": 1}, system_attrs={}, study_id=7,
                         directions=[StudyDirection.MAXIMIZE])
    assert (frozen.study_name, frozen.direction, frozen.user_attrs, frozen._study_id) == ("s", StudyDirection.MAXIMIZE, {"a": 1}, 7)


# -- the runner --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, used_by, check", CHECKS, ids=[name for name, _, _ in CHECKS])
def test_private_optuna_api(name, used_by, check, request):
    arguments = {p: request.getfixturevalue(p) for p in inspect.signature(check).parameters}
    try:
        check(**arguments)
    except Exception as e:  # noqa: BLE001 - any failure means the private API moved
        pytest.fail(
            f"Optuna {optuna.__version__} moved a private API this project uses: {name} "
            f"(used by {used_by}): {type(e).__name__}: {e}",
            pytrace=False,
        )

"""The wall around Optuna's private API for studies, trials and their storage.

``hpo/`` and ``workers/`` use Optuna's public API and this module; every private name the
project needs lives in ``storage/``, in three modules that list theirs at the top: this one,
``storage.worker_storage`` (the workers' storage) and ``storage.optuna_tpe`` (the cached TPE
sampler). ``tests/test_optuna_internals.py`` exercises each listed name against the installed
Optuna, so an upgrade that moves one fails there, naming it.

Private names used here, and why:

- ``Study._storage``: the storage a study reads and writes through. ``Study`` does not expose
  it, and the reaper, the retry and the claim must write through the same storage (and its
  cache) as the study's own calls.
- ``Study._study_id``, ``FrozenStudy._study_id``: the id every storage call takes; a study
  exposes only its name, and looking the id up by name costs a query.
- ``FrozenTrial._trial_id``, ``Trial._trial_id``: the id every storage call takes for a trial.
- ``Study._thread_local.cached_all_trials``: cleared before a claim, as ``Study.ask`` clears it,
  so the sampler reads the trials afresh.
- ``Study._pop_waiting_trial_id()``: takes a queued trial (``enqueue_trial``, retries) as
  ``Study.ask`` does, without ``ask``'s sampling, which the worker runs after releasing the
  claim lock.
- ``_CachedStorage._backend``: the ``RDBStorage`` under Optuna's cache wrapper (the workers'
  storage keeps the same attribute name), for its engine and heartbeat settings.
- ``RDBStorage._get_stale_trial_ids(study_id)``: the RUNNING trials that missed their
  heartbeats; the public ``fail_stale_trials`` fails them without queuing the retry first.
"""

from __future__ import annotations

from optuna.storages import BaseStorage, RDBStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial


def study_id(study: object) -> int:
    """The storage id of a study (a ``Study`` or one of ``storage.get_all_studies()``)."""
    return study._study_id  # type: ignore[attr-defined]


def trial_id(trial: FrozenTrial | Trial) -> int:
    """The storage id of a trial."""
    return trial._trial_id


def study_storage(study: Study) -> BaseStorage:
    """The storage ``study`` reads and writes through."""
    return study._storage


def rdb_storage(storage: BaseStorage) -> RDBStorage | None:
    """The ``RDBStorage`` under ``storage`` (itself, or wrapped by a cache), else None."""
    rdb = getattr(storage, "_backend", storage)
    return rdb if isinstance(rdb, RDBStorage) else None


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """The ids of the study's RUNNING trials whose heartbeat is older than the grace period."""
    rdb = rdb_storage(storage)
    return [] if rdb is None else list(rdb._get_stale_trial_ids(study_id))


def open_trial(study: Study) -> Trial:
    """``study.ask()`` without its sampling: pop a queued trial or create one, and run the
    sampler's ``before_trial`` (where GridSampler assigns the grid point, so that stays under
    the claim lock). TPE and random sampling happen at the trial's first ``suggest_*``."""
    study._thread_local.cached_all_trials = None  # as ask does: read the trials afresh
    new_id = study._pop_waiting_trial_id()
    if new_id is None:
        new_id = study._storage.create_new_trial(study._study_id)
    return Trial(study, new_id)

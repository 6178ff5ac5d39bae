"""The storage a worker's studies run on: Optuna's RDB tables, far fewer round trips.

Optuna's ``RDBStorage`` pays a pooled session, an ORM load and a commit for every call, and a
trial makes dozens of calls: the sampler re-reads every trial, each of ``report`` /
``should_prune`` re-reads the study, each parameter and attr is its own transaction. On
PostgreSQL that was ~100 ms per trial while training a trial on the digits data takes well
under a second. :class:`WorkerStorage` wraps an ``RDBStorage`` (same tables, same rows, so
Optuna and optuna-dashboard read what it writes as if Optuna had written it) and changes
*when* it talks to the database, not what it stores:

* **a snapshot of the study**, read by :meth:`WorkerStorage.sync` in two queries: the trials
  created since the last sync and those it left unfinished, then all their params, attrs,
  values and intermediate values in one ``UNION ALL``. Samplers and pruners read the snapshot
  (``get_all_trials``) without touching the database. The worker syncs once per trial, under
  the lock it claims trials under, so counting the budget and the sampling right after see
  every trial another worker finished or started (a queued trial, written whole when it was
  queued, is not read again while it waits); while a trial trains, the snapshot is
  refreshed at most every ``flush_seconds`` (so a long trial is pruned against the trials
  finished meanwhile);
* **the worker's own RUNNING trial is written in batches**: the sampler's attrs with the
  claim, its parameters as soon as they are sampled, after the claim lock is released
  (:meth:`WorkerStorage.flush_alone`: one autocommit statement on PostgreSQL), so that
  constant-liar TPE in other workers sees them; its intermediate values and attrs whenever
  ``flush_seconds`` have passed, and everything left together with its end state. Each batch
  is one statement on PostgreSQL (data-modifying CTEs). Every write is an upsert, so a
  transaction retried after its answer was lost writes the same rows once. The end state is
  written only if the trial is still RUNNING; a trial failed under the worker raises
  ``UpdateFinishedTrialError`` as ``RDBStorage`` does;
* **trials are created** in two statements (the study row locked as ``RDBStorage`` locks it,
  the number counted in the INSERT), and a heartbeat is one upsert;
* **a queued trial is taken** with one guarded ``UPDATE`` (WAITING -> RUNNING), its record
  taken from the snapshot;
* **a claim is one transaction** (:meth:`WorkerStorage.batch`): on PostgreSQL it can take the
  workers' lock itself and need not wait for the disk to commit; on MySQL it takes the lock
  on its own connection and releases it once the transaction is over; the worker's thread keeps
  its connection between transactions (no pool check-out, no ping, per transaction). On
  SQLite that connection commits without waiting for the disk (see ``_kept_connection``).

On MySQL and MariaDB the same SQL is written in their dialect (``ON DUPLICATE KEY UPDATE`` for
the upserts, a matched-row count for the guards, the number of a new trial counted in a
statement of its own), statement after statement as on SQLite: 15-16 per trial where SQLite sends
13 and PostgreSQL 8 (``tests/test_worker_storage.py`` counts them).

Everything else (studies, other trials, stale-trial detection) goes to the wrapped storage.
The wrapped ``RDBStorage`` is ``_backend`` (as in Optuna's own cache), and ``engine`` is its
engine, so helpers written for either keep working.

Optuna's private names this module uses, and why. ``tests/test_worker_storage_contract.py``
runs Optuna's own storage tests, and Optuna's ``fail_stale_trials``, against this storage, so
a change in any of them fails there:

* ``optuna.storages._rdb.models``: the value encodings ``RDBStorage`` writes (infinities and
  NaN as a type column beside the float: ``TrialValueModel.value_to_stored_repr``,
  ``TrialIntermediateValueModel.intermediate_value_to_stored_repr``), so the rows written here
  are the rows Optuna writes (they are read back by ``storage.reader``, which decodes them);
* ``optuna.storages._heartbeat.BaseHeartbeat``: the base Optuna's ``fail_stale_trials`` and
  ``study.optimize`` look for (``isinstance``) to find a storage with heartbeats;
* ``BaseHeartbeat._get_stale_trial_ids``: what ``fail_stale_trials`` calls; implemented here by
  calling the wrapped ``RDBStorage._get_stale_trial_ids``;
* ``FrozenTrial._trial_id``: a trial's storage id, which every storage reads and sets (Optuna
  has no public name for it);
* ``optuna.study._frozen.FrozenStudy``: the type ``get_all_studies`` returns (type hints only).

``StudyDirection`` is Optuna's public ``optuna.study.StudyDirection``. ``_backend`` is this
class's own attribute (named as in Optuna's ``_CachedStorage``), not a read of Optuna's.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import datetime
import json
import operator
import threading
import time
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna import distributions
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from storage.backend import release_lock, take_lock
from storage.reader import TRIAL_COLUMNS, frozen_trial, parse_distribution, read_details
from storage.states import state_name

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy


class _Statements:
    """The writes of the hot path as SQL text, built once per shape and dialect.

    Building the same statements with SQLAlchemy Core compiles them anew each time (multi-row
    VALUES and CTEs are not cached), which cost milliseconds per trial. Text is compiled once.
    The SQL is what ``RDBStorage`` writes: the same tables, columns and value encodings.
    """

    _TYPES = {("trials", "state"): "trialstate", ("trial_values", "value_type"): "trialvaluetype",
              ("trial_intermediate_values", "intermediate_value_type"): "trialintermediatevaluetype"}

    def __init__(self, dialect: sqlalchemy.Dialect) -> None:
        self.postgres = dialect.name == "postgresql"
        self.mysql = dialect.name == "mysql"  # MySQL or MariaDB: no RETURNING on UPDATE, no CTE writes
        self.sqlite = dialect.name == "sqlite"
        self.quote = dialect.identifier_preparer.quote  # `key` on MySQL, where it is reserved
        self._cache: dict[Any, Any] = {}

    def _cast(self, table: str, column: str, expr: str) -> str:
        kind = self._TYPES.get((table, column))
        return f"CAST({expr} AS {kind})" if kind and self.postgres else expr

    def upsert(self, prefix: str, table: str, columns: tuple[str, ...], keys: tuple[str, ...],
               rows: int) -> str:
        """``INSERT ... VALUES (...) x rows ON CONFLICT (keys) DO UPDATE`` (MySQL: ``ON DUPLICATE
        KEY UPDATE``, on the same unique keys); binds ``{prefix}{row}_{column}``."""
        key = ("upsert", prefix, table, columns, rows)
        if key not in self._cache:
            values = ", ".join(
                "(" + ", ".join(self._cast(table, c, f":{prefix}{r}_{c}") for c in columns) + ")" for r in range(rows)
            )
            q = self.quote
            names = ", ".join(q(c) for c in columns)
            if self.mysql:  # VALUES(c): MariaDB has no row alias (INSERT ... AS new)
                update = ", ".join(f"{q(c)} = VALUES({q(c)})" for c in columns if c not in keys)
                self._cache[key] = f"INSERT INTO {table} ({names}) VALUES {values} ON DUPLICATE KEY UPDATE {update}"
            else:
                update = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in columns if c not in keys)
                self._cache[key] = (f"INSERT INTO {table} ({names}) VALUES {values} "
                                    f"ON CONFLICT ({', '.join(q(k) for k in keys)}) DO UPDATE SET {update}")
        return self._cache[key]

    def beat(self, prefix: str) -> str:
        upsert = "ON DUPLICATE KEY UPDATE" if self.mysql else "ON CONFLICT (trial_id) DO UPDATE SET"
        return (f"INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:{prefix}trial_id, CURRENT_TIMESTAMP) "
                f"{upsert} heartbeat = CURRENT_TIMESTAMP")

    def guard(self, finish: bool) -> str:
        """An UPDATE of the trial row that matches only while it is RUNNING (and locks it); its
        row count says whether it matched (on MySQL too: SQLAlchemy's MySQL dialects count
        matched rows, not changed ones). On PostgreSQL it returns the row, for :meth:`combined`."""
        running = self._cast("trials", "state", "'RUNNING'")
        change = (f"state = {self._cast('trials', 'state', ':g_state')}, datetime_complete = :g_complete"
                  if finish else f"state = {running}")
        returning = " RETURNING trial_id" if self.postgres else ""
        return f"UPDATE trials SET {change} WHERE trial_id = :g_trial_id AND state = {running}{returning}"

    def combined(self, parts: list[str], guard: str | None, *, alone: bool = False) -> sqlalchemy.TextClause:
        """One statement of data-modifying CTEs (PostgreSQL): the guard's row count, else 1.

        ``alone``: the statement is its own transaction (autocommit), so no rollback can take
        back its writes when the guard matched nothing: then it divides by zero instead, and
        the error undoes the whole statement.
        """
        key = ("combined", tuple(parts), guard, alone)
        if key not in self._cache:
            ctes = [f"w{i} AS ({sql})" for i, sql in enumerate(parts)]
            if guard is not None:
                ctes.append(f"g AS ({guard})")
            tail = "SELECT 1" if guard is None else "SELECT 1 / COUNT(*) FROM g" if alone else "SELECT COUNT(*) FROM g"
            self._cache[key] = sqlalchemy.text(f"WITH {', '.join(ctes)} {tail}")
        return self._cache[key]

    def text(self, sql: str, expanding: tuple[str, ...] = ()) -> sqlalchemy.TextClause:
        """``sqlalchemy.text(sql)``, made once (``expanding``: binds that take a list)."""
        key = (sql, expanding)
        if key not in self._cache:
            clause = sqlalchemy.text(sql)
            if expanding:
                clause = clause.bindparams(*(sqlalchemy.bindparam(name, expanding=True) for name in expanding))
            self._cache[key] = clause
        return self._cache[key]


def _utc(local: datetime.datetime) -> datetime.datetime:
    return local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


@dataclass
class _Snapshot:
    """What the worker knows of one study's trials."""

    by_id: dict[int, FrozenTrial] = field(default_factory=dict)
    last_id: int = -1  # the highest trial id read so far
    synced_at: float = 0.0
    distributions: dict[str, distributions.BaseDistribution] = field(default_factory=dict)
    ordered: list[FrozenTrial] | None = None  # by_id's trials by number (built when first asked)
    filtered: dict[frozenset, list[FrozenTrial]] = field(default_factory=dict)  # ordered, per set of states
    rescanned_at: float = 0.0  # when every unfinished trial of the study was last looked for
    unfinished: set[int] = field(default_factory=set)  # ids of by_id's trials not finished
    counts: dict[TrialState, int] = field(default_factory=dict)  # by_id's trials per state

    def put(self, trial: FrozenTrial) -> None:
        """Add or replace a trial, keeping the ordered and filtered lists in order."""
        old = self.by_id.get(trial._trial_id)
        self.by_id[trial._trial_id] = trial
        if old is not None:
            self.counts[old.state] -= 1
        self.counts[trial.state] = self.counts.get(trial.state, 0) + 1
        if trial.state.is_finished():
            self.unfinished.discard(trial._trial_id)
        else:
            self.unfinished.add(trial._trial_id)
        for name, dist in trial.distributions.items():
            self.distributions.setdefault(name, dist)
        if self.ordered is not None:
            _place(self.ordered, trial, True)
        for states, trials in self.filtered.items():
            if trial.state in states or (old is not None and old.state in states):
                _place(trials, trial, trial.state in states)


def _place(trials: list[FrozenTrial], trial: FrozenTrial, keep: bool) -> None:
    """Put ``trial`` in its place in ``trials`` (sorted by number; numbers are unique in a
    study), replacing the one with its number; or take that one out if not ``keep``."""
    i = bisect.bisect_left(trials, trial.number, key=_NUMBER)
    here = i < len(trials) and trials[i].number == trial.number
    if keep and here:
        trials[i] = trial
    elif keep:
        trials.insert(i, trial)
    elif here:
        del trials[i]


_NUMBER = operator.attrgetter("number")


@dataclass
class _Own:
    """A RUNNING trial this worker owns: its current record and what is not written yet."""

    study_id: int
    trial: FrozenTrial
    params: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (internal value, distribution json)
    user_attrs: dict[str, str] = field(default_factory=dict)  # key -> json
    system_attrs: dict[str, str] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    written_at: float = field(default_factory=time.monotonic)
    fresh: bool = False  # created by this worker and not flushed yet

    def pending(self) -> bool:
        return bool(self.params or self.user_attrs or self.system_attrs or self.intermediate)


class WorkerStorage(BaseStorage, BaseHeartbeat):
    """An ``RDBStorage`` for a worker: a study snapshot, batched writes of its own trials.

    ``flush_seconds``: how long a RUNNING trial's intermediate values and attrs may wait in
    memory, and how stale the snapshot may get while a trial trains.

    It keeps Optuna's storage contract (``optuna.testing.pytest_storages.StorageTestCase``)
    but for what the speed rests on, each skipped there with its reason:

    * **reads reflect the last sync**: ``get_all_trials``, ``get_n_trials`` and
      ``get_best_trial`` return the study as of the last :meth:`sync` (the first read of a
      study syncs it). A trial created since, by this storage or any other, is not in them
      until the next sync; the worker syncs once per trial, under its claim lock.

    The worker's own trial is written in batches, yet reads of it (``get_trial``) see every
    write at once; a parameter's distribution is checked against the study's as
    ``RDBStorage`` checks it, and that the trial is still RUNNING when the batch is written
    (``UpdateFinishedTrialError`` then). Names and directions of studies are read once and
    forgotten when this storage deletes the study. A pickled copy is a new storage on the
    same database (see :meth:`__getstate__`).
    """

    def __init__(self, backend: RDBStorage, *, flush_seconds: float = 5.0, rescan_seconds: float = 10.0) -> None:
        self._backend = backend
        self.flush_seconds = flush_seconds
        self.rescan_seconds = rescan_seconds
        self._start()

    def __getstate__(self) -> dict[str, Any]:
        """What a copy needs: the wrapped storage (which pickles without its engine, as
        ``RDBStorage`` does) and the settings. The copy is a new storage on the same database:
        no snapshot, no kept connection, and no trial of its own (what the original holds
        unwritten stays with the original)."""
        return {"_backend": self._backend, "flush_seconds": self.flush_seconds, "rescan_seconds": self.rescan_seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    def _start(self) -> None:
        """The state a new storage starts with (on creation and on unpickling)."""
        self.engine: sqlalchemy.Engine = self._backend.engine
        self._lock = threading.RLock()
        self._local = threading.local()  # per thread: its kept connection, the batch's connection
        self._held: list[sqlalchemy.Connection] = []
        self._snapshots: dict[int, _Snapshot] = {}
        self._own: dict[int, _Own] = {}
        self._ended: set[int] = set()  # trials whose end state this storage wrote
        self._directions: dict[int, list[StudyDirection]] = {}
        self._names: dict[int, str] = {}
        dialect = self.engine.dialect.name
        if dialect not in ("postgresql", "sqlite", "mysql"):
            raise ValueError(f"WorkerStorage supports PostgreSQL, MySQL and SQLite, not {dialect}")
        self._sql = _Statements(self.engine.dialect)

    # -- transactions ----------------------------------------------------------------------------
    @property
    def postgres(self) -> bool:
        return self._sql.postgres

    @property
    def locks_in_batch(self) -> bool:
        """Whether :meth:`batch` can take the workers' lock itself (``lock``): PostgreSQL and
        MySQL; on SQLite the caller holds ``storage.backend.exclusive`` around the batch."""
        return not self._sql.sqlite

    @contextlib.contextmanager
    def batch(self, *, durable: bool = True, lock: int | None = None) -> Iterator[None]:
        """Run every call this thread makes in the block in one transaction on one connection.

        The worker claims a trial in one batch (sync, create, sample, write, first beat): one
        commit instead of one per call, and a claim that fails half-way leaves nothing behind.

        ``lock`` (PostgreSQL, MySQL): the key of ``storage.backend.exclusive``'s lock, taken first
        and held until the transaction ends. On PostgreSQL the transaction's own advisory lock
        (``pg_advisory_xact_lock``; it waits for, and is waited for by, the session lock on the
        same key). MySQL has no lock of a transaction: the session's named lock
        (``GET_LOCK``, as ``exclusive`` takes it) is taken on the batch's connection and released
        once the transaction has committed or rolled back (or by the server, if the connection
        is lost), so no other claim reads the study before this one's writes are visible.

        ``durable=False`` (PostgreSQL): the commit returns before its WAL record is on disk
        (``synchronous_commit = off``, for this transaction only). It is visible to every other
        session at once, and on disk with the next synchronous commit of anyone or within a
        fraction of a second; only a crash of the server in between loses it (never a clean
        restart), and then as if the transaction had not run: a trial claimed so is then gone,
        and writing to it raises ``UpdateFinishedTrialError`` ("no longer exists"). On SQLite
        every commit of the worker's own connection is like that (see :meth:`_kept_connection`).
        MySQL has no such setting per transaction: its commits are as durable as the server is set.
        """
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        touched: list[int] = []
        locked: sqlalchemy.Connection | None = None  # MySQL: the connection holding the named lock
        try:
            with self._transaction() as conn:
                if self._sql.postgres and (lock is not None or not durable):
                    first = []
                    if lock is not None:
                        first.append("pg_advisory_xact_lock(:k)")
                    if not durable:
                        first.append("set_config('synchronous_commit', 'off', true)")
                    conn.execute(self._sql.text(f"SELECT {', '.join(first)}"), {"k": lock})
                elif self._sql.mysql and lock is not None:
                    take_lock(conn, lock, mysql=True)
                    locked = conn
                self._local.conn, self._local.touched = conn, touched
                try:
                    yield
                except BaseException:
                    with self._lock:  # rolled back: what these trials held was never written
                        for trial_id in touched:
                            self._own.pop(trial_id, None)
                    raise
                finally:
                    self._local.conn = self._local.touched = None
        finally:
            if locked is not None:
                release_lock(locked, lock, f"key {lock}", mysql=True)
                if locked.invalidated:
                    self._local.held = None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlalchemy.Connection]:
        """The batch's connection, or a transaction of its own committed at the end."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlalchemy.Connection]:
        """A transaction on this thread's own connection, kept between transactions: taking one
        from the pool costs a round trip (``pool_pre_ping``) each time. A connection the driver
        reports broken is dropped, and the next transaction opens another."""
        conn = self._kept_connection()
        try:
            with conn.begin():
                yield conn
        except sqlalchemy.exc.DBAPIError as e:
            if e.connection_invalidated or conn.invalidated:
                self._local.held = None
            raise

    def _kept_connection(self) -> sqlalchemy.Connection:
        """This thread's connection. On SQLite it commits with ``synchronous = NORMAL`` (WAL
        mode): a commit does not wait for the disk, which the next checkpoint syncs. A crash of
        a process loses nothing; a crash of the machine can undo the last commits, and then the
        trials they claimed or finished are RUNNING without a heartbeat (or gone), so they are
        failed as stale and run again, or their budget taken by new trials."""
        conn = getattr(self._local, "held", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            if self._sql.sqlite:
                conn.exec_driver_sql("PRAGMA synchronous = NORMAL")
                conn.commit()  # ends SQLAlchemy's autobegun block (the driver began no transaction)
            self._local.held = conn
            with self._lock:
                self._held.append(conn)
        return conn

    def close(self) -> None:
        """Return the connections this storage kept (every thread's) to the pool."""
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()

    def _touch(self, trial_id: int) -> None:
        touched = getattr(self._local, "touched", None)
        if touched is not None:
            touched.append(trial_id)

    # -- the snapshot ------------------------------------------------------------------------
    def sync(self, study_id: int) -> None:
        """Read the trials created, started or finished since the last sync (all of them the
        first time): two queries, plus none when nothing changed.

        New trials are those above the highest trial id read so far, and the unfinished ones
        read before are read again. Every ``rescan_seconds`` the study's every RUNNING and
        WAITING trial is looked for as well, in case one committed after a higher id was read
        (an ``enqueue_trial`` racing a claim): a query that reads the whole study's index.
        """
        with self._lock:
            snap = self._snapshots.setdefault(study_id, _Snapshot())
            unfinished = sorted(snap.unfinished)
            last_id = snap.last_id
            rescan = last_id < 0 or time.monotonic() - snap.rescanned_at >= self.rescan_seconds
        columns = TRIAL_COLUMNS
        params: dict[str, Any] = {"study_id": study_id, "last": last_id}
        if rescan:
            condition = "trial_id > :last OR state IN ('RUNNING', 'WAITING')"
            if unfinished:
                condition += " OR trial_id IN :unfinished"
            sql = f"SELECT {columns} FROM trials WHERE study_id = :study_id AND ({condition}) ORDER BY trial_id"
        else:
            sql = f"SELECT {columns} FROM trials WHERE study_id = :study_id AND trial_id > :last"
            if unfinished:
                sql += f" UNION ALL SELECT {columns} FROM trials WHERE trial_id IN :unfinished"
            sql += " ORDER BY trial_id"
        query = self._sql.text(sql, expanding=("unfinished",) if unfinished else ())
        if unfinished:
            params["unfinished"] = unfinished
        with self._connection() as conn:
            rows = conn.execute(query, params).all()
            if last_id < 0 and not rows:
                self._check_study(conn, study_id)
            with self._lock:
                # A trial's record changes only while it runs (reports, attrs) and when its state
                # does: a queued (WAITING) trial is written whole when it is queued.
                changed = [
                    r for r in rows
                    if (old := snap.by_id.get(r[0])) is None
                    or old.state == TrialState.RUNNING
                    or old.state.name != state_name(r[2])
                ]
            details = read_details(conn, [r[0] for r in changed], study_id if last_id < 0 else None)
        trials = [frozen_trial(r, details.get(r[0])) for r in changed]
        with self._lock:
            for trial in trials:
                snap.put(trial)
            if rows:
                snap.last_id = max(snap.last_id, rows[-1][0])
            snap.synced_at = time.monotonic()
            if rescan:
                snap.rescanned_at = snap.synced_at

    def _check_study(self, conn: sqlalchemy.Connection, study_id: int) -> None:
        """Raise ``KeyError`` (and forget the snapshot begun) if the study does not exist: asked
        only when a first sync finds no trial (a trial's row proves its study)."""
        query = self._sql.text("SELECT study_id FROM studies WHERE study_id = :id")
        if conn.execute(query, {"id": study_id}).first() is None:
            with self._lock:
                self._snapshots.pop(study_id, None)
            raise KeyError(f"No study with study_id {study_id} exists.")

    def count_states(self, study_id: int) -> dict[str, int]:
        """Trials per state as of the last :meth:`sync` (``{"COMPLETE": 12, ...}``)."""
        with self._lock:
            return {state.name: n for state, n in self._snapshot(study_id).counts.items() if n}

    def read_study_attrs(self, study_id: int, keys: Sequence[str]) -> dict[str, Any]:
        """The study's user attrs named ``keys``, as they are in the database now: one query,
        inside the current batch (a claim reads the stage's status with its budget)."""
        key = self._sql.quote("key")
        query = self._sql.text(
            f"SELECT {key}, value_json FROM study_user_attributes WHERE study_id = :id AND {key} IN :keys",
            expanding=("keys",),
        )
        with self._connection() as conn:
            rows = conn.execute(query, {"id": study_id, "keys": list(keys)}).all()
        return {key: json.loads(value) for key, value in rows}

    def read_trial(self, trial_id: int) -> FrozenTrial:
        """One trial as it is in the database now (two queries), whatever this worker holds."""
        query = sqlalchemy.text(
            f"SELECT {TRIAL_COLUMNS} FROM trials WHERE trial_id = :id"
        )
        with self._connection() as conn:
            row = conn.execute(query, {"id": trial_id}).first()
            if row is None:
                raise KeyError(f"No trial with trial_id {trial_id} exists.")
            details = read_details(conn, [trial_id])
        return frozen_trial(row, details.get(trial_id))

    def _snapshot(self, study_id: int) -> _Snapshot:
        if study_id not in self._snapshots:
            self.sync(study_id)
        return self._snapshots[study_id]

    # -- the worker's own trials ---------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None:  # a queued retry, an added trial: Optuna's way
            return self._backend.create_new_trial(study_id, template_trial)
        started = datetime.datetime.now()
        lock = "SELECT study_id FROM studies WHERE study_id = :study_id" + ("" if self._sql.sqlite else " FOR UPDATE")
        count = "SELECT COUNT(*) FROM trials WHERE study_id = :study_id"
        columns = "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) VALUES "
        running = self._sql._cast("trials", "state", "'RUNNING'")
        binds = {"study_id": study_id, "start": self._timestamp(started)}
        with self._connection() as conn:
            # The lock RDBStorage takes to number trials, so numbers stay unique with any writer.
            # Taken here, not when a claim starts: a reaper in the claim queues retries through
            # RDBStorage on another connection, which takes this lock too.
            if conn.execute(self._sql.text(lock), {"study_id": study_id}).first() is None:
                raise KeyError(f"No study with study_id {study_id} exists.")
            if self._sql.mysql:  # no RETURNING, and no subquery on the table inserted into: counted
                # first (READ COMMITTED, after the lock: every trial committed before is counted)
                number_ = conn.execute(self._sql.text(count), binds).scalar_one()
                trial_id = conn.execute(self._sql.text(f"{columns}(:number, :study_id, {running}, :start, NULL)"),
                                        {**binds, "number": number_}).lastrowid
            else:
                trial_id, number_ = conn.execute(self._sql.text(
                    f"{columns}(({count}), :study_id, {running}, :start, NULL) RETURNING trial_id, number"), binds).one()
        trial = FrozenTrial(
            number=number_, state=TrialState.RUNNING, value=None, values=None, datetime_start=started,
            datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
            intermediate_values={}, trial_id=trial_id,
        )
        with self._lock:
            self._own[trial_id] = _Own(study_id, trial, fresh=True)
        self._touch(trial_id)
        return trial_id

    def flush_alone(self, trial_id: int) -> None:
        """:meth:`flush` outside a batch, in as few round trips as the database allows: on
        PostgreSQL the flush is one statement, run as its own transaction (autocommit), so
        no BEGIN and COMMIT go to the server apart from it. A trial failed under the worker
        meanwhile gets none of it, as in a transaction (``UpdateFinishedTrialError``)."""
        if not self._sql.postgres or getattr(self._local, "conn", None) is not None:
            self.flush(trial_id)
            return
        conn = self._kept_connection()
        conn.execution_options(isolation_level="AUTOCOMMIT")
        self._local.conn = conn
        try:
            self.flush(trial_id, _alone=True)
        finally:
            self._local.conn = None
            try:
                conn.commit()  # ends SQLAlchemy's autobegun block; the server committed already
                conn.execution_options(isolation_level=conn.default_isolation_level)
            except sqlalchemy.exc.SQLAlchemyError:
                # Never leave a connection in autocommit for the next batch: drop it.
                self._local.held = None
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    conn.invalidate()

    def flush(self, trial_id: int, *, heartbeat: bool = False, _alone: bool = False) -> None:
        """Write what the trial holds unwritten (and a heartbeat) in one transaction."""
        with self._lock:
            own = self._own.get(trial_id)
        if own is None:
            if heartbeat:
                self.record_heartbeat(trial_id)
            return
        self._touch(trial_id)
        with self._connection() as conn:
            writes, pending = self._pending_writes(trial_id, own)
            if heartbeat:
                prefix = f"w{len(writes)}"
                writes.append((self._sql.beat(prefix), {f"{prefix}trial_id": trial_id}))
            # A trial created by this claim cannot have been finished by anyone: every reaper
            # holds the claim lock. Any other may have been (this worker's beat was late).
            guard = None if own.fresh else (self._sql.guard(False), {"g_trial_id": trial_id})
            if self._run(conn, writes, guard, alone=_alone) == 0:
                self._refuse(conn, trial_id)  # raising rolls the transaction back
        own.fresh = False
        self._written(own, pending)

    def wrote_end_state(self, trial_id: int) -> bool:
        """Whether this storage wrote the trial's end state (asked once per trial: forgotten)."""
        with self._lock:
            if trial_id in self._ended:
                self._ended.discard(trial_id)
                return True
            return False

    def release(self, trial_id: int) -> None:
        """Write what the trial holds (if it is still RUNNING) and stop owning it: from here on
        it is read from and written to the database like any other trial."""
        try:
            self.flush(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        with self._lock:
            self._own.pop(trial_id, None)

    def _refuse(self, conn: sqlalchemy.Connection, trial_id: int) -> None:
        state = conn.execute(self._sql.text("SELECT state FROM trials WHERE trial_id = :id"), {"id": trial_id}).scalar()
        state = TrialState[state_name(state)] if state is not None else None
        with self._lock:
            own = self._own.pop(trial_id, None)
        number = own.trial.number if own is not None else trial_id
        what = f"has already finished ({state.name})" if state is not None else "no longer exists"
        raise optuna.exceptions.UpdateFinishedTrialError(f"Trial#{number} {what} and can not be updated.")

    def _pending_writes(self, trial_id: int, own: _Own) -> tuple[list, tuple]:
        """Upserts (SQL, binds) of what the trial holds unwritten, and that pending state."""
        with self._lock:
            pending = (dict(own.params), dict(own.user_attrs), dict(own.system_attrs), dict(own.intermediate))
        params, user_attrs, system_attrs, intermediate = pending
        writes: list[tuple[str, dict[str, Any]]] = []
        if params:
            writes.append(self._upsert(len(writes), "trial_params", ("trial_id", "param_name", "param_value", "distribution_json"),
                                       ("trial_id", "param_name"),
                                       [(trial_id, k, v, d) for k, (v, d) in params.items()]))
        for table, attrs in (("trial_user_attributes", user_attrs), ("trial_system_attributes", system_attrs)):
            if attrs:
                writes.append(self._upsert(len(writes), table, ("trial_id", "key", "value_json"), ("trial_id", "key"),
                                           [(trial_id, k, v) for k, v in attrs.items()]))
        if intermediate:
            rows = []
            for step, value in intermediate.items():
                stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                rows.append((trial_id, step, stored, kind.name))
            writes.append(self._upsert(len(writes), "trial_intermediate_values",
                                       ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
                                       ("trial_id", "step"), rows))
        return writes, pending

    def _upsert(self, index: int, table: str, columns: tuple[str, ...], keys: tuple[str, ...],
                rows: list[tuple]) -> tuple[str, dict[str, Any]]:
        prefix = f"w{index}r"
        binds = {f"{prefix}{r}_{c}": v for r, row in enumerate(rows) for c, v in zip(columns, row)}
        return self._sql.upsert(prefix, table, columns, keys, len(rows)), binds

    def _timestamp(self, local: datetime.datetime) -> Any:
        """A local time as Optuna stores it: naive UTC (as text SQLAlchemy would write, on SQLite)."""
        utc = _utc(local)
        return utc.strftime("%Y-%m-%d %H:%M:%S.%f") if self._sql.sqlite else utc

    def _written(self, own: _Own, pending: tuple) -> None:
        """Forget what a committed transaction wrote (unless it changed again meanwhile)."""
        with self._lock:
            for store, written in zip((own.params, own.user_attrs, own.system_attrs, own.intermediate), pending):
                for key, value in written.items():
                    if store.get(key, object()) == value:
                        del store[key]
            own.written_at = time.monotonic()

    def _run(self, conn: sqlalchemy.Connection, writes: list[tuple[str, dict[str, Any]]],
             guard: tuple[str, dict[str, Any]] | None = None, *, alone: bool = False) -> int | None:
        """Execute ``writes`` and ``guard`` (an UPDATE ... RETURNING; its row count is returned).

        On PostgreSQL they go as one statement (data-modifying CTEs): one round trip, all or
        nothing. SQLite runs them in turn (in-process, a round trip costs nothing there), and so
        does MySQL (which has neither writes in a CTE nor UPDATE ... RETURNING): the guard first,
        and nothing more if it matched nothing (the caller raises, which rolls back).
        ``alone`` (PostgreSQL, outside a transaction): a guard that matches nothing writes
        nothing either (see :meth:`_Statements.combined`), and 0 is returned.
        """
        if self._sql.postgres and len(writes) + (guard is not None) > 1:
            binds: dict[str, Any] = {}
            for _, b in writes:
                binds.update(b)
            if guard is not None:
                binds.update(guard[1])
            statement = self._sql.combined([sql for sql, _ in writes], guard[0] if guard else None, alone=alone)
            try:
                count = conn.execute(statement, binds).scalar()
            except sqlalchemy.exc.DataError as e:
                if alone and getattr(e.orig, "sqlstate", None) == "22012":  # division_by_zero: the guard's 1 / 0
                    return 0
                raise
            return count if guard is not None else None
        count = conn.execute(self._sql.text(guard[0]), guard[1]).rowcount if guard is not None else None
        if count == 0:
            return 0
        for sql, b in writes:
            conn.execute(self._sql.text(sql), b)
        return count

    def _finish(self, trial_id: int, own: _Own, state: TrialState, values: Sequence[float] | None) -> None:
        completed = datetime.datetime.now()
        with self._connection() as conn:
            writes, _ = self._pending_writes(trial_id, own)
            if values is not None:
                rows = []
                for objective, value in enumerate(values):
                    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                    rows.append((trial_id, objective, stored, kind.name))
                writes.append(self._upsert(len(writes), "trial_values", ("trial_id", "objective", "value", "value_type"),
                                           ("trial_id", "objective"), rows))
            guard = (self._sql.guard(True), {"g_trial_id": trial_id, "g_state": state.name,
                                             "g_complete": self._timestamp(completed)})
            if self._run(conn, writes, guard) != 1:
                self._refuse(conn, trial_id)  # raising rolls the transaction back
        with self._lock:
            self._own.pop(trial_id, None)
            self._ended.add(trial_id)
            trial = own.trial
            trial.state = state
            trial.values = list(values) if values is not None else None
            trial.datetime_complete = completed
            snap = self._snapshots.get(own.study_id)
            if snap is not None:  # the next sync need not read it back
                snap.put(trial)

    # -- BaseStorage: trials -------------------------------------------------------------------
    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        with self._lock:
            own = self._own.get(trial_id)
            known = self._known_distribution(own.study_id, param_name) if own is not None else None
        if own is None:
            self._backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        if known is None:
            known = self._stored_distribution(own.study_id, param_name)
        if known is not None:  # as RDBStorage: against the parameter's distribution in the study
            distributions.check_distribution_compatibility(known, distribution)
        text = distributions.distribution_to_json(distribution)
        with self._lock:
            own.params[param_name] = (param_value_internal, text)
            own.trial.params[param_name] = distribution.to_external_repr(param_value_internal)
            own.trial.distributions[param_name] = distribution

    def _known_distribution(self, study_id: int, param_name: str) -> distributions.BaseDistribution | None:
        """The parameter's distribution as this worker knows it: the snapshot's, or one of its
        own trials' in the study (caller holds the lock)."""
        snap = self._snapshots.get(study_id)
        if snap is not None and param_name in snap.distributions:
            return snap.distributions[param_name]
        for own in self._own.values():
            if own.study_id == study_id and param_name in own.trial.distributions:
                return own.trial.distributions[param_name]
        return None

    def _stored_distribution(self, study_id: int, param_name: str) -> distributions.BaseDistribution | None:
        """The parameter's distribution in any trial of the study in the database (the query
        ``RDBStorage`` makes): asked only for a name no trial read or owned here has yet."""
        query = self._sql.text("SELECT p.distribution_json FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id "
                               "WHERE t.study_id = :study_id AND p.param_name = :name LIMIT 1")
        with self._connection() as conn:
            text = conn.execute(query, {"study_id": study_id, "name": param_name}).scalar()
        return parse_distribution(text) if text is not None else None

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            own = self._own.get(trial_id)
            if own is not None:
                own.intermediate[step] = intermediate_value
                own.trial.intermediate_values[step] = intermediate_value
                due = time.monotonic() - own.written_at >= self.flush_seconds
        if own is None:
            self._backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
        elif due:
            self.flush(trial_id)
            self.sync(own.study_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            own = self._own.get(trial_id)
            if own is not None:
                own.user_attrs[key] = json.dumps(value)
                own.trial.user_attrs[key] = value  # as Optuna's storages keep it: not copied
                return
        self._backend.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            own = self._own.get(trial_id)
            if own is not None:
                own.system_attrs[key] = json.dumps(value)
                own.trial.system_attrs[key] = value
                return
        self._backend.set_trial_system_attr(trial_id, key, value)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with self._lock:
            own = self._own.get(trial_id)
        if own is not None and state.is_finished():
            self._finish(trial_id, own, state, values)
            return True
        if own is None and state == TrialState.RUNNING and values is None:
            return self._start_queued(trial_id)
        return self._backend.set_trial_state_values(trial_id, state, values)

    def _start_queued(self, trial_id: int) -> bool:
        """WAITING -> RUNNING (a queued trial this worker takes): one guarded UPDATE, as
        ``RDBStorage`` does it (False if another worker took it first); the trial's record is
        the snapshot's, read in the same claim."""
        started = datetime.datetime.now()
        waiting = self._sql._cast("trials", "state", "'WAITING'")
        running = self._sql._cast("trials", "state", "'RUNNING'")
        update = self._sql.text(f"UPDATE trials SET state = {running}, datetime_start = :start "
                                f"WHERE trial_id = :id AND state = {waiting}")
        with self._connection() as conn:
            if conn.execute(update, {"id": trial_id, "start": self._timestamp(started)}).rowcount != 1:
                state = conn.execute(self._sql.text("SELECT state FROM trials WHERE trial_id = :id"),
                                     {"id": trial_id}).scalar()
                if state is None:
                    raise KeyError(f"No trial with trial_id {trial_id} exists.")
                if TrialState[state_name(state)].is_finished():
                    raise optuna.exceptions.UpdateFinishedTrialError(
                        f"Trial#{trial_id} has already finished and can not be updated.")
                return False
        with self._lock:  # owned from here on (a trial no snapshot holds is written through)
            study_id = next((s for s, snap in self._snapshots.items() if trial_id in snap.by_id), None)
            if study_id is not None:
                trial = _copy(self._snapshots[study_id].by_id[trial_id])
                trial.state, trial.datetime_start = TrialState.RUNNING, started
                self._own[trial_id] = _Own(study_id, trial)
        self._touch(trial_id)
        return True

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            own = self._own.get(trial_id)
            if own is not None:
                return _copy(own.trial)
            for snap in self._snapshots.values():
                trial = snap.by_id.get(trial_id)
                if trial is not None and trial.state.is_finished():
                    return trial  # finished trials never change
        return self._backend.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        with self._lock:
            snap = self._snapshot(study_id)
            if snap.ordered is None:  # samplers expect trial-number order: sorted once, kept so
                snap.ordered = sorted(snap.by_id.values(), key=_NUMBER)
                snap.filtered = {}
            if states is None:
                trials = list(snap.ordered)
            else:  # a pruner asks for the COMPLETE trials at every epoch: filtered once per change
                key = frozenset(states)
                if key not in snap.filtered:
                    snap.filtered[key] = [t for t in snap.ordered if t.state in key]
                trials = list(snap.filtered[key])
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._lock:
            snap = self._snapshots.get(study_id)
            for trial in (snap.by_id.values() if snap else ()):
                if trial.number == trial_number:
                    return trial._trial_id
        return self._backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    # -- BaseStorage: studies (the wrapped storage's) -------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        study_id = self._backend.create_new_study(directions, study_name)
        self._forget_study(study_id)  # SQLite gives a deleted study's id to the next study
        return study_id

    def delete_study(self, study_id: int) -> None:
        self._forget_study(study_id)
        self._backend.delete_study(study_id)

    def _forget_study(self, study_id: int) -> None:
        with self._lock:
            self._snapshots.pop(study_id, None)
            self._names.pop(study_id, None)
            self._directions.pop(study_id, None)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        if study_id not in self._names:
            self._names[study_id] = self._backend.get_study_name_from_id(study_id)
        return self._names[study_id]

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        if study_id not in self._directions:
            self._directions[study_id] = self._backend.get_study_directions(study_id)
        return self._directions[study_id]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._backend.get_all_studies()

    def remove_session(self) -> None:
        self._backend.remove_session()

    # -- heartbeats ------------------------------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        """One upsert (``RDBStorage`` reads, then writes, through the ORM). The heartbeat
        thread's beats take a pooled connection: only the worker's own thread keeps one."""
        if getattr(self._local, "conn", None) is not None:  # in a batch: part of it
            self._local.conn.execute(self._sql.text(self._sql.beat("")), {"trial_id": trial_id})
            return
        with self.engine.begin() as conn:
            conn.execute(self._sql.text(self._sql.beat("")), {"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._backend._get_stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._backend.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self._backend.get_heartbeat_stale_trial_callback()


def _copy(trial: FrozenTrial) -> FrozenTrial:
    """A copy whose dicts can be changed without changing the original (their values are
    shared: the storage contract leaves changing those undefined, and nothing does)."""
    twin = copy.copy(trial)
    twin.params = dict(trial.params)
    twin.distributions = dict(trial.distributions)
    twin.user_attrs = dict(trial.user_attrs)
    twin.system_attrs = dict(trial.system_attrs)
    twin.intermediate_values = dict(trial.intermediate_values)
    return twin


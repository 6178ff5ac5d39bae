"""Opening Optuna's RDB storage with the settings each backend needs.

SQLite is the one-machine default: a long busy timeout and WAL let a few local workers
share one file without "database is locked". PostgreSQL is the many-worker store: psycopg 3,
``pool_pre_ping`` so a connection broken by a server restart is replaced instead of failing
a query, and a small pool per process. MySQL and MariaDB (PyMySQL) get the same pool, and
every session is made to behave as the code expects of PostgreSQL (see :data:`MYSQL_SESSION`).
Storage objects are created inside each process and never shared across a fork.

The schema is created (or upgraded) once, by :func:`ensure_schema`, under a lock, so many
workers starting together on an empty database never race to create tables.

Heartbeats and retries: stale RUNNING trials are failed, each with one retry queued, by
:func:`reap_stale_trials` under :func:`exclusive` (the lock every reaper and every trial claim
takes). :func:`retrying` runs a database action again with backoff across a server restart.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from storage import optuna_access
from storage.errors import DatabaseUnavailable, StorageError
from storage.reader import ReadOnlyStorage
from storage.url import is_mysql, is_sqlite, mask_text, mask_url, sqlite_path

log = logging.getLogger(__name__)
T = TypeVar("T")

# A worker beats every HEARTBEAT_INTERVAL seconds; a RUNNING trial whose last beat is older
# than HEARTBEAT_GRACE seconds is failed by the next worker that looks, and retried once.
HEARTBEAT_ENV = {"HPO_HEARTBEAT_INTERVAL": 10, "HPO_HEARTBEAT_GRACE": 30}  # variable: default seconds
MAX_RETRY = 1


def heartbeat_settings(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(interval, grace) in seconds from HPO_HEARTBEAT_INTERVAL and HPO_HEARTBEAT_GRACE, or
    StorageError naming the variable: each a whole number >= 1, the grace longer than the
    interval (else a live trial looks stale between two of its beats)."""
    environ = os.environ if environ is None else environ
    values = []
    for variable, default in HEARTBEAT_ENV.items():
        text = environ.get(variable, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            value = 0
        if value < 1:
            raise StorageError(f"{variable} must be a whole number of seconds >= 1, got {text!r}")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise StorageError(
            f"HPO_HEARTBEAT_GRACE ({grace}) must be longer than HPO_HEARTBEAT_INTERVAL ({interval}): "
            "a trial would look stale between two of its heartbeats"
        )
    return interval, grace


# Read once, at import; a bad value is reported by the first command that opens a storage
# (check_heartbeat_settings), as one line rather than an import error in every command.
try:
    HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = heartbeat_settings()
    _HEARTBEAT_PROBLEM: str | None = None
except StorageError as _e:
    HEARTBEAT_INTERVAL = HEARTBEAT_GRACE = None  # type: ignore[assignment]
    _HEARTBEAT_PROBLEM = str(_e)


def check_heartbeat_settings() -> None:
    """StorageError if HPO_HEARTBEAT_INTERVAL or HPO_HEARTBEAT_GRACE was unusable at import."""
    if _HEARTBEAT_PROBLEM is not None:
        raise StorageError(_HEARTBEAT_PROBLEM)


def check_settings(url: str) -> None:
    """Refuse what is wrong before any connection or file is made: the heartbeat settings and
    the folder of a SQLite file. ``open_storage`` and ``ensure_schema`` call it; a command that
    prints before either (``hpo search``) calls it first, so bad settings are its one line."""
    check_heartbeat_settings()
    check_sqlite_folder(url)


def check_sqlite_folder(url: str) -> None:
    """StorageError if ``url`` is a SQLite file in a folder that does not exist (SQLite would
    say only "unable to open database file", and its lock file could not be made)."""
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StorageError(f"no folder {folder} for the SQLite file {os.path.basename(path)}: create it first")

SQLITE_BUSY_TIMEOUT_S = 60


# Every MySQL / MariaDB session of hpo starts with these, so that it behaves as the code expects
# of PostgreSQL whatever the server's defaults:
# - time_zone UTC: the heartbeats are written and aged with the server's CURRENT_TIMESTAMP (as
#   Optuna's are), which is then UTC like the naive UTC times Optuna stores, and never jumps
#   with a daylight-saving change (a jump would make every live trial look stale, or none);
# - a strict sql_mode: a value that does not fit its column is an error, never cut short
#   silently (a cut JSON attr would make the record unreadable), and no ANSI_QUOTES or other
#   mode that changes how the SQL of storage/ is read.
MYSQL_SESSION = "SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy engine settings for the backend of ``url``.

    MySQL / MariaDB run at READ COMMITTED, PostgreSQL's default: every statement sees what was
    committed before it started, which the claim relies on (a retry queued by a reaper on
    another connection is read by the same claim; a trial number is counted after the study
    row is locked). At InnoDB's default REPEATABLE READ a transaction keeps reading the snapshot
    of its first read, and MariaDB 11.6 and later (``innodb_snapshot_isolation``) fail a write
    to a row changed since then ("Record has changed since last read").
    """
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    kwargs = {
        "pool_pre_ping": True,
        "pool_size": 2,  # the worker's own queries plus its heartbeat thread
        "max_overflow": 2,
        "pool_recycle": 300,
        "connect_args": {"connect_timeout": 10, "application_name": "hpo"},
    }
    if is_mysql(url):
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["connect_args"] = {"connect_timeout": 10, "init_command": MYSQL_SESSION, "charset": "utf8mb4"}
    return kwargs


DB_ERRORS = (SQLAlchemyError, optuna.exceptions.StorageInternalError)


def driver_message(error: BaseException) -> str:
    """The first line of what the database driver said, password-masked."""
    # Optuna wraps driver errors in StorageInternalError; SQLAlchemy keeps the driver's in .orig.
    while isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__:
        error = error.__cause__
    original = getattr(error, "orig", None) or error
    return mask_text((str(original).strip().splitlines() or [type(original).__name__])[0])


def describe_db_error(url: str, error: BaseException) -> str:
    """One line for a database error: which database, and the driver's first line."""
    return f"cannot use the database {mask_url(url)}: {driver_message(error)}"


RETRY_SECONDS = 120.0  # how long a step rides out a database outage before it gives up


def retrying(
    action: Callable[[], T], what: str, url: str, *, seconds: float = RETRY_SECONDS, logger: logging.Logger = log
) -> T:
    """Run ``action``; on a database error run it again with backoff (0.2 s doubling up to 5 s)
    for up to ``seconds``, then raise DatabaseUnavailable (a StorageError) with one masked
    line. DatabaseUnavailable raised by ``action`` (``open_storage``, ``ensure_schema``) is
    retried the same way.

    ``action`` must be safe to run again after it failed part-way (a server restart can break a
    connection after a commit was sent but before its answer came back).
    """
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return action()
        except (*DB_ERRORS, DatabaseUnavailable) as e:
            if time.monotonic() > deadline:
                if isinstance(e, DatabaseUnavailable):
                    raise
                raise DatabaseUnavailable(describe_db_error(url, e)) from None
            logger.warning("database error while trying to %s, retrying in %.1fs: %s", what, delay, driver_message(e))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# Every engine this process opened, closed when it exits. SQLite's last connection to close
# copies the write-ahead log into the database file and removes it: a finished command must
# leave the .db file whole (a copy of it alone, a backup, holds the campaign). Open engines
# were closed by the garbage collection at exit, which hpo.main now skips (gc.freeze).
_ENGINES: weakref.WeakSet[sqlalchemy.Engine] = weakref.WeakSet()


def _opened(engine: sqlalchemy.Engine) -> sqlalchemy.Engine:
    _ENGINES.add(engine)
    return engine


@atexit.register
def _close_engines() -> None:
    for engine in list(_ENGINES):
        with contextlib.suppress(Exception):  # exiting: a connection that cannot close is the OS's to drop
            engine.dispose()


def open_storage(url: str, *, heartbeat: bool = True, check_version: bool = True) -> RDBStorage:
    """An Optuna storage on ``url`` whose schema already exists (see :func:`ensure_schema`).

    With ``heartbeat``, stale RUNNING trials are failed and retried at most once
    (``RetryHeartbeatStaleTrialCallback``) when a worker calls ``fail_stale_trials``.
    Without ``check_version``, the schema's version is not compared with this Optuna's: that
    check loads Alembic and its migration scripts (about 0.3 s), most of what a command that
    only reads spends before its first query. Such a command checks only when a read fails.
    """
    check_settings(url)
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is not None and not os.path.exists(path):
        raise StorageError(
            f"no SQLite database at {path}: start a search there (hpo search) or create it (hpo init)"
        )
    hb: dict = {}
    if heartbeat:
        with _quiet_experimental_warnings():
            retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        hb = {
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "grace_period": HEARTBEAT_GRACE,
            "heartbeat_stale_trial_callback": retry,
        }
    try:
        with _quiet_experimental_warnings():
            storage = RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_table_creation=True,
                                 skip_compatibility_check=not check_version, **hb)
        _opened(storage.engine)
        return storage
    except DB_ERRORS as e:
        raise DatabaseUnavailable(describe_db_error(url, e)) from None
    except RuntimeError as e:  # Optuna's schema-version mismatch
        raise StorageError(f"{mask_url(url)}: {e}") from None


def open_reader(url: str) -> ReadOnlyStorage:
    """A storage on ``url`` that only reads (``storage.reader.ReadOnlyStorage``): what the
    commands that look use. It loads neither SQLAlchemy's ORM, Optuna's models nor Alembic,
    and does not compare the schema's version with this Optuna's (a command checks that only
    when a read fails: ``hpo.cli_inspect``). No connection is made before the first read."""
    check_settings(url)
    return ReadOnlyStorage(_plain_engine(url))


def ensure_schema(url: str) -> None:
    """Create Optuna's tables, or upgrade them, exactly once even with many racing callers."""
    check_settings(url)  # before anything is created (the workers will need the heartbeat settings)
    engine = _plain_engine(url)
    try:
        with schema_lock(url, engine):
            with _quiet_experimental_warnings():
                storage = RDBStorage(
                    url, engine_kwargs=engine_kwargs(url), skip_compatibility_check=True
                )
            if storage.get_current_version() != storage.get_head_version():
                storage.upgrade()
            storage.engine.dispose()
            if engine.dialect.name == "mysql":
                _widen_mysql_columns(engine)
    except DB_ERRORS as e:
        raise DatabaseUnavailable(describe_db_error(url, e)) from None
    finally:
        engine.dispose()


# Optuna's columns that MySQL makes narrower than the other databases do, and what they become:
# a TEXT holds 64 KiB (a trial's curve of a thousand epochs is more; PostgreSQL's text and
# SQLite have no such limit), a DATETIME whole seconds (a trial of the digits data takes less
# than one, and the order trials finished in decides a stage's failure verdict).
MYSQL_WIDER = {
    **{(table, "value_json"): "mediumtext" for table in (
        "study_user_attributes", "study_system_attributes", "trial_user_attributes", "trial_system_attributes")},
    ("trial_params", "distribution_json"): "mediumtext",
    ("trials", "datetime_start"): "datetime(6)",
    ("trials", "datetime_complete"): "datetime(6)",
}


def _widen_mysql_columns(engine: sqlalchemy.Engine) -> None:
    """Give the columns of :data:`MYSQL_WIDER` their wider type, once (under the schema lock):
    only a column that does not have it yet is altered, its nullability kept."""
    query = sqlalchemy.text(
        "SELECT table_name, column_name, column_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = DATABASE()"
    )
    with engine.connect() as conn:
        for table, column, kind, nullable in conn.execute(query).all():
            wider = MYSQL_WIDER.get((table, column))
            if wider is not None and kind.lower() != wider:
                null = "NULL" if nullable == "YES" else "NOT NULL"
                # names and types are the constants above, never user text
                conn.exec_driver_sql(f"ALTER TABLE {table} MODIFY {column} {wider.upper()} {null}")
        conn.commit()


def schema_ready(url: str) -> bool:
    """Whether the schema at ``url`` is complete (Optuna stamps its version last); a SQLite
    file that does not exist has none and is not created. Database errors propagate; bad
    settings (``check_settings``) are a StorageError here already, as this is the first look
    most commands take at the storage."""
    check_settings(url)
    if is_sqlite(url) and (path := sqlite_path(url)) is not None and not os.path.exists(path):
        return False
    engine = _plain_engine(url)
    try:
        with engine.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table("alembic_version"):
                return False
            return bool(conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def _plain_engine(url: str) -> sqlalchemy.Engine:
    kwargs = engine_kwargs(url)
    kwargs.pop("pool_size", None)
    kwargs.pop("max_overflow", None)
    return _opened(sqlalchemy.create_engine(url, **kwargs))


@contextlib.contextmanager
def schema_lock(url: str, engine: sqlalchemy.Engine) -> Iterator[None]:
    """Held while the schema is created; SQLite also switches to WAL here (it persists)."""
    with exclusive(url, "hpo-schema", engine):
        if is_sqlite(url) and sqlite_path(url):
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        yield


def lock_key(name: str) -> int:
    """The key of the lock :func:`exclusive` takes for ``name``: a PostgreSQL advisory-lock key
    (a transaction may take the same lock with ``pg_advisory_xact_lock``: both wait for each
    other), and the key of the MySQL lock name (:data:`MYSQL_LOCK`)."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)


# MySQL / MariaDB: a named lock of the session (GET_LOCK), released by RELEASE_LOCK or by the
# server when the session ends. Its names are server-wide, so the database's name is part of
# it (a lock of a study in one database does not hold up another's); at most 64 characters.
_MYSQL_LOCK_NAME = "CONCAT('hpo:', LEFT(DATABASE(), 38), ':', :k)"
MYSQL_LOCK_WAIT_S = 365 * 24 * 3600  # "for ever", as pg_advisory_lock waits (MariaDB reads -1 as an error)
MYSQL_LOCK = f"SELECT GET_LOCK({_MYSQL_LOCK_NAME}, {MYSQL_LOCK_WAIT_S})"  # 1 once taken
MYSQL_UNLOCK = f"SELECT RELEASE_LOCK({_MYSQL_LOCK_NAME})"


@contextlib.contextmanager
def exclusive(url: str, name: str, engine: sqlalchemy.Engine) -> Iterator[None]:
    """A lock across processes and machines sharing the database of ``url``.

    PostgreSQL: a session advisory lock (released by the server if this process dies).
    MySQL / MariaDB: a session's named lock (``GET_LOCK``; released by the server likewise).
    SQLite: ``flock`` on a file beside the database (one machine, as SQLite itself).
    """
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is None:  # in-memory: one process, nothing to lock against
            yield
            return
        try:
            lock_file = open(os.path.abspath(path) + ".lock", "a+b")
        except OSError as e:
            raise StorageError(f"cannot create the lock file beside {path}: {e.strerror or e}") from None
        with lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    key = lock_key(name)
    mysql = engine.dialect.name == "mysql"
    with engine.connect() as conn:
        take_lock(conn, key, mysql=mysql)
        conn.commit()
        try:
            yield
        finally:
            release_lock(conn, key, name, mysql=mysql)


def take_lock(conn: sqlalchemy.Connection, key: int, *, mysql: bool) -> None:
    """Take the session lock of ``key`` on ``conn`` (PostgreSQL or MySQL), waiting for it."""
    if not mysql:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
    elif conn.execute(sqlalchemy.text(MYSQL_LOCK), {"k": key}).scalar() != 1:
        raise StorageError(f"the database refused the lock {key} (GET_LOCK)")


def release_lock(conn: sqlalchemy.Connection, key: int, name: str, *, mysql: bool) -> None:
    """Release what :func:`take_lock` took, and end the block the release began."""
    try:
        conn.execute(sqlalchemy.text(MYSQL_UNLOCK if mysql else "SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except SQLAlchemyError as e:
        # The session is gone (a server restart, a broken connection): the server released
        # its locks with it. Close the connection rather than pool it, and do not turn a
        # body that succeeded into an error (a caller retrying it would redo its work).
        log.warning("releasing the lock %r: the connection is gone (%s)", name, driver_message(e))
        conn.invalidate()


# -- stale trials ----------------------------------------------------------------------------
NOT_NEEDED = "not needed"  # how the reason of a queued trial that will never run begins


def reap_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's stale RUNNING trials, each with one retry queued; the numbers failed.

    Call it holding ``exclusive(url, study_name)``, as every reaper does (a worker before it
    takes a trial, the coordinator while it waits, ``hpo fail-stale``), so a trial is failed
    and retried at most once. It does what Optuna's ``fail_stale_trials`` does, made safe
    where a process or the database fails half-way:

    * a RUNNING trial without any heartbeat (its worker died, or lost the database, between
      ``ask`` and its first beat) gets a beat here, so it goes stale after the grace period
      instead of staying RUNNING for ever;
    * nothing is stale while a PostgreSQL or MySQL server has been up for less than the grace
      period: beats cannot be recorded while the server is down, and after a restart a live
      worker needs one heartbeat interval to show it is alive;
    * each trial goes through :func:`fail_with_retry` (retry first, then fail), so a reaper
      that dies in between never leaves a failed trial without its retry.
    """
    storage = optuna_access.study_storage(study)
    rdb = optuna_access.rdb_storage(storage)
    if rdb is None or rdb.get_heartbeat_interval() is None:
        return []
    grace = rdb.grace_period if rdb.grace_period is not None else 2 * rdb.heartbeat_interval
    study_id = optuna_access.study_id(study)
    with rdb.engine.connect() as conn:
        beatless = conn.execute(
            sqlalchemy.text(
                "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL"
            ),
            {"study_id": study_id},
        ).scalars().all()
        uptime = None
        if rdb.engine.dialect.name == "postgresql":
            uptime = conn.execute(
                sqlalchemy.text("SELECT EXTRACT(EPOCH FROM (now() - pg_postmaster_start_time()))")
            ).scalar()
        elif rdb.engine.dialect.name == "mysql":
            uptime = conn.execute(sqlalchemy.text("SHOW GLOBAL STATUS LIKE 'Uptime'")).first()[1]
    for trial_id in beatless:
        storage.record_heartbeat(trial_id)
    if uptime is not None and float(uptime) < grace:
        return []
    failed = []
    for trial_id in optuna_access.stale_trial_ids(storage, study_id):
        if fail_with_retry(study, trial_id):
            failed.append(storage.get_trial(trial_id).number)
    return failed


def fail_with_retry(study: optuna.Study, trial_id: int) -> bool:
    """Fail an unfinished trial and queue its retry (``RetryHeartbeatStaleTrialCallback``: at
    most MAX_RETRY in a chain); False if the trial had finished already. Call it holding
    ``exclusive(url, study_name)``.

    The retry is queued first, and only if the trial has none yet: running this again after
    it failed half-way neither loses the retry nor queues a second one. If the trial's worker
    finishes it in the meantime, its result stands and the retry is closed as not needed.
    """
    storage = optuna_access.study_storage(study)
    trial = storage.get_trial(trial_id)
    if trial.state.is_finished():
        return False
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None and trial.number not in _retries(study):
        callback(study, copy.deepcopy(trial))
    try:
        if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return True
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    retry_id = _retries(study).get(trial.number)
    if retry_id is not None and storage.get_trial(retry_id).state == TrialState.WAITING:
        storage.set_trial_user_attr(retry_id, "reason", f"{NOT_NEEDED}: trial {trial.number} finished after all")
        storage.set_trial_state_values(retry_id, state=TrialState.FAIL)
    return False


def _retries(study: optuna.Study) -> dict[int, int]:
    """{number of a trial: id of the trial queued as its retry} in one query."""
    rdb = optuna_access.rdb_storage(optuna_access.study_storage(study))
    return {origin: retry_id for retry_id, _, origin in retry_origins(rdb.engine, optuna_access.study_id(study))}


def retry_origins(engine: sqlalchemy.engine.Engine, study_id: int) -> list[tuple[int, int, int]]:
    """(trial id, trial number, number of the trial it retries) of each retry in the study, in
    number order, in one query: the last entry of the ``retry_history`` Optuna's retry callback
    writes."""
    query = sqlalchemy.text(
        "SELECT a.trial_id, t.number, a.value_json FROM trial_system_attributes a "
        "JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = :study_id AND a.key = 'retry_history' "
        "ORDER BY t.number"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"study_id": study_id}).all()
    origins = []
    for retry_id, number, value in rows:
        history = json.loads(value)
        if isinstance(history, list) and history:
            origins.append((int(retry_id), int(number), int(history[-1])))
    return origins


@contextlib.contextmanager
def _quiet_experimental_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield

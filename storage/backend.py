"""Opening Optuna's RDB storage with the settings each backend needs.

SQLite is the one-machine default: a long busy timeout and WAL let a few local workers
share one file without "database is locked". PostgreSQL is the many-worker store: psycopg 3,
``pool_pre_ping`` so a connection broken by a server restart is replaced instead of failing
a query, and a small pool per process. Storage objects are created inside each process and
never shared across a fork.

The schema is created (or upgraded) once, by :func:`ensure_schema`, under a lock, so many
workers starting together on an empty database never race to create tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.exc import SQLAlchemyError

from storage.errors import StorageError
from storage.url import is_sqlite, mask_text, mask_url, sqlite_path

log = logging.getLogger(__name__)

# A worker beats every HEARTBEAT_INTERVAL seconds; a RUNNING trial whose last beat is older
# than HEARTBEAT_GRACE seconds is failed by the next worker that looks, and retried once.
HEARTBEAT_INTERVAL = int(os.environ.get("HPO_HEARTBEAT_INTERVAL", "10"))
HEARTBEAT_GRACE = int(os.environ.get("HPO_HEARTBEAT_GRACE", "30"))
MAX_RETRY = 1

SQLITE_BUSY_TIMEOUT_S = 60


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy engine settings for the backend of ``url``."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {
        "pool_pre_ping": True,
        "pool_size": 2,  # the worker's own queries plus its heartbeat thread
        "max_overflow": 2,
        "pool_recycle": 300,
        "connect_args": {"connect_timeout": 10, "application_name": "hpo"},
    }


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


def open_storage(url: str, *, heartbeat: bool = True) -> RDBStorage:
    """An Optuna storage on ``url`` whose schema already exists (see :func:`ensure_schema`).

    With ``heartbeat``, stale RUNNING trials are failed and retried at most once
    (``RetryHeartbeatStaleTrialCallback``) when a worker calls ``fail_stale_trials``.
    """
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
            return RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_table_creation=True, **hb)
    except DB_ERRORS as e:
        raise StorageError(describe_db_error(url, e)) from None
    except RuntimeError as e:  # Optuna's schema-version mismatch
        raise StorageError(f"{mask_url(url)}: {e}") from None


def ensure_schema(url: str) -> None:
    """Create Optuna's tables, or upgrade them, exactly once even with many racing callers."""
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
    except DB_ERRORS as e:
        raise StorageError(describe_db_error(url, e)) from None
    finally:
        engine.dispose()


def _plain_engine(url: str) -> sqlalchemy.Engine:
    kwargs = engine_kwargs(url)
    kwargs.pop("pool_size", None)
    kwargs.pop("max_overflow", None)
    return sqlalchemy.create_engine(url, **kwargs)


@contextlib.contextmanager
def schema_lock(url: str, engine: sqlalchemy.Engine) -> Iterator[None]:
    """Held while the schema is created; SQLite also switches to WAL here (it persists)."""
    with exclusive(url, "hpo-schema", engine):
        if is_sqlite(url) and sqlite_path(url):
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        yield


@contextlib.contextmanager
def exclusive(url: str, name: str, engine: sqlalchemy.Engine) -> Iterator[None]:
    """A lock across processes and machines sharing the database of ``url``.

    PostgreSQL: a session advisory lock (released by the server if this process dies).
    SQLite: ``flock`` on a file beside the database (one machine, as SQLite itself).
    """
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is None:  # in-memory: one process, nothing to lock against
            yield
            return
        with open(os.path.abspath(path) + ".lock", "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    key = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


@contextlib.contextmanager
def _quiet_experimental_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield

"""The record keeper: URLs and secrets, schema creation, locks, counts — on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
import time

import optuna
import pytest
import sqlalchemy

from storage import backend, records
from storage.errors import StorageError
from storage.url import mask_url, resolve_url
from workers import stageplan
from workers.stageplan import StagePlan


# -- URL, password file, masking ---------------------------------------------------------
def test_url_comes_from_flag_then_env_then_default():
    assert resolve_url("sqlite:///a.db", {"HPO_STORAGE": "sqlite:///b.db"}) == "sqlite:///a.db"
    assert resolve_url(None, {"HPO_STORAGE": "sqlite:///b.db"}) == "sqlite:///b.db"
    assert resolve_url(None, {}) == "sqlite:///hpo.db"


def test_postgres_url_uses_psycopg3_and_password_file(tmp_path):
    secret = tmp_path / "db_password"
    secret.write_text("s3cr3t-pw\n")
    url = resolve_url("postgresql://hpo@db:5432/hpo", {"HPO_DB_PASSWORD_FILE": str(secret)})
    assert url == "postgresql+psycopg://hpo:s3cr3t-pw@db:5432/hpo"
    assert "s3cr3t-pw" not in mask_url(url)
    assert mask_url(url) == "postgresql+psycopg://hpo:***@db:5432/hpo"


def test_mysql_url_uses_pymysql_and_password_file(tmp_path):
    secret = tmp_path / "db_password"
    secret.write_text("s3cr3t-pw\n")
    for given in ("mysql://hpo@db:3306/hpo", "mysql+pymysql://hpo@db:3306/hpo", "mysql+mysqldb://hpo@db:3306/hpo"):
        url = resolve_url(given, {"HPO_DB_PASSWORD_FILE": str(secret)})
        assert url == "mysql+pymysql://hpo:s3cr3t-pw@db:3306/hpo"
        assert mask_url(url) == "mysql+pymysql://hpo:***@db:3306/hpo"


@pytest.mark.parametrize(
    ("url", "env", "message"),
    [
        ("oracle://u@h/db", {}, "unsupported storage 'oracle'"),
        ("not a url", {}, "not a database URL"),
        ("postgresql://u@h/db", {"HPO_DB_PASSWORD_FILE": "/nonexistent/secret"}, "cannot read the password file"),
        ("mysql://u@h/db", {"HPO_DB_PASSWORD_FILE": "/nonexistent/secret"}, "cannot read the password file"),
    ],
)
def test_bad_storage_settings_are_one_clear_line(url, env, message):
    with pytest.raises(StorageError, match=message) as info:
        resolve_url(url, env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_unreachable_database_is_one_line_without_password(scheme):
    url = resolve_url(f"{scheme}://hpo:hunter2@127.0.0.1:1/hpo", {})
    with pytest.raises(StorageError) as info:
        backend.open_storage(url)
    message = str(info.value)
    assert "\n" not in message and "hunter2" not in message
    assert "127.0.0.1:1" in message


# -- schema --------------------------------------------------------------------------------
def _create_schema(url: str) -> None:
    backend.ensure_schema(url)


def test_schema_is_created_once_by_many_racing_processes(storage_url):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_create_schema, args=(storage_url,)) for _ in range(6)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0] * 6
    storage = backend.open_storage(storage_url)
    assert storage.get_current_version() == storage.get_head_version()
    engine = sqlalchemy.create_engine(storage_url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM version_info")).scalar() == 1
    engine.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_url):
    backend.ensure_schema(sqlite_url)
    engine = sqlalchemy.create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


# -- locks and counts ------------------------------------------------------------------------
def test_exclusive_lock_serializes_holders(storage_url):
    backend.ensure_schema(storage_url)
    engines = [sqlalchemy.create_engine(storage_url) for _ in range(3)]
    inside, overlaps = [0], [0]

    def hold(engine):
        for _ in range(5):
            with backend.exclusive(storage_url, "stage-x", engine):
                inside[0] += 1
                overlaps[0] = max(overlaps[0], inside[0])
                time.sleep(0.01)
                inside[0] -= 1

    threads = [threading.Thread(target=hold, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 1
    for e in engines:
        e.dispose()


def _plan(name: str, stage: int = 1, **kw) -> StagePlan:
    return StagePlan(campaign=name, stage=stage, stages=2, trials=5, epochs=1, dataset="digits", space={}, **kw)


def test_stage_records_round_trip_and_counts(storage_url):
    backend.ensure_schema(storage_url)
    storage = backend.open_storage(storage_url, heartbeat=False)
    study = stageplan.create_stage(storage, _plan("camp"))
    for x in (0.2, 0.9, 0.5):
        trial = study.ask()
        study.tell(trial, x)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.ask()  # left RUNNING
    assert records.count_states(storage, "camp/stage-1") == {"COMPLETE": 3, "PRUNED": 1, "RUNNING": 1}
    assert records.best_value(storage, "camp/stage-1") == pytest.approx(0.9)
    assert stageplan.read_plan(storage, "camp/stage-1") == _plan("camp")
    assert [p.stage for p in stageplan.campaign_stages(storage, "camp")] == [1]
    assert list(stageplan.list_campaigns(storage)) == ["camp"]
    with pytest.raises(StorageError, match="exists already"):
        stageplan.create_stage(storage, _plan("camp"))


@pytest.mark.parametrize("bad", ["", "a b", "../x", "x" * 101, "-lead"])
def test_campaign_names_are_checked(bad):
    with pytest.raises(StorageError, match="invalid campaign name"):
        stageplan.check_name(bad)

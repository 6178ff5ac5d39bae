"""Shared fixtures: a fresh SQLite file, a fresh PostgreSQL database and a fresh MariaDB (or
MySQL) database per test.

PostgreSQL tests skip with a reason when no server is reachable, unless HPO_REQUIRE_POSTGRES=1
(as in CI), where an unreachable server is an error. The server is taken from
HPO_TEST_POSTGRES (an admin URL), default postgresql://postgres@127.0.0.1:5432/postgres.
MariaDB likewise, with HPO_REQUIRE_MYSQL=1 and HPO_TEST_MYSQL, default
mysql+pymysql://root@127.0.0.1:3306/test (an account that may create and drop databases).
Tests marked ``browser`` likewise skip without Chromium and Playwright, unless HPO_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import os
import uuid

import pytest

ADMIN_URL = os.environ.get("HPO_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _admin_engine():
    import sqlalchemy

    return sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL server, or a skip (an error in CI)."""
    try:
        import psycopg  # noqa: F401
        import sqlalchemy

        engine = _admin_engine()
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means "no server here"
        reason = f"no PostgreSQL server reachable at {ADMIN_URL.split('@')[-1]} ({type(e).__name__})"
        if os.environ.get("HPO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and HPO_REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    return ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str):
    """A new, empty database for this test; dropped afterwards."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


MYSQL_ADMIN_URL = os.environ.get("HPO_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _mysql_admin_engine():
    import sqlalchemy

    return sqlalchemy.create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(scope="session")
def mariadb_server() -> str:
    """The admin URL of a reachable MariaDB (or MySQL) server, or a skip (an error in CI)."""
    try:
        import pymysql  # noqa: F401
        import sqlalchemy

        engine = _mysql_admin_engine()
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means "no server here"
        reason = f"no MariaDB server reachable at {MYSQL_ADMIN_URL.split('@')[-1]} ({type(e).__name__})"
        if os.environ.get("HPO_REQUIRE_MYSQL") == "1":
            pytest.fail(f"{reason}, and HPO_REQUIRE_MYSQL=1")
        pytest.skip(reason)
    return MYSQL_ADMIN_URL


@pytest.fixture
def mariadb_url(mariadb_server: str):
    """A new, empty database for this test; dropped afterwards."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    engine = _mysql_admin_engine()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = make_url(mariadb_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS `{name}`"))
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def storage_url(request) -> str:
    """The same test on a SQLite file, a fresh PostgreSQL database and a fresh MariaDB database."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def server_url(request) -> str:
    """The same test on a fresh database of each server many machines share (PostgreSQL, MariaDB)."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``browser`` skip with a reason when Chromium or Playwright is missing, unless
    HPO_REQUIRE_BROWSER=1 (as in CI), where a missing browser is an error."""
    if item.get_closest_marker("browser") is None:
        return
    from tests.browser import missing

    reason = missing()
    if reason:
        if os.environ.get("HPO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and HPO_REQUIRE_BROWSER=1")
        pytest.skip(reason)

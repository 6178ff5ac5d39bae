"""Shared fixtures: a fresh SQLite file, a fresh PostgreSQL database and a fresh MariaDB (or
MySQL) database per test; a SQLite file and a PostgreSQL database per test module.

PostgreSQL tests skip with a reason when no server is reachable, unless HPO_REQUIRE_POSTGRES=1
(as in CI), where an unreachable server is an error. The server is taken from
HPO_TEST_POSTGRES (an admin URL), default postgresql://postgres@127.0.0.1:5432/postgres.
MariaDB likewise, with HPO_REQUIRE_MYSQL=1 and HPO_TEST_MYSQL, default
mysql+pymysql://root@127.0.0.1:3306/test (an account that may create and drop databases).
Tests marked ``browser`` likewise skip without Chromium and Playwright, unless HPO_REQUIRE_BROWSER=1,
and tests marked ``docker`` without a Docker engine, unless HPO_REQUIRE_DOCKER=1.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ADMIN_URL = os.environ.get("HPO_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("HPO_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


@dataclass(frozen=True)
class Server:
    """A database server the tests may use: its admin URL, its driver, the variable that makes
    its absence an error, and how a database is created and dropped there."""

    name: str
    admin_url: str
    driver: str
    require: str
    create: str
    drop: str

    def admin_engine(self):
        import sqlalchemy

        return sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})

    def reachable(self) -> str:
        """The admin URL, or a skip with the reason (a failure when ``require`` is set to 1)."""
        try:
            importlib.import_module(self.driver)
            import sqlalchemy

            engine = self.admin_engine()
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            engine.dispose()
        except Exception as e:  # noqa: BLE001 - any failure means "no server here"
            reason = f"no {self.name} server reachable at {self.admin_url.split('@')[-1]} ({type(e).__name__})"
            if os.environ.get(self.require) == "1":
                pytest.fail(f"{reason}, and {self.require}=1")
            pytest.skip(reason)
        return self.admin_url

    def database(self) -> Iterator[str]:
        """A new, empty database while the caller runs; dropped afterwards."""
        import sqlalchemy
        from sqlalchemy.engine import make_url

        name = f"hpo_test_{uuid.uuid4().hex[:12]}"
        engine = self.admin_engine()
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(self.create.format(name=name)))
        yield make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(self.drop.format(name=name)))
        engine.dispose()


POSTGRES = Server("PostgreSQL", ADMIN_URL, "psycopg", "HPO_REQUIRE_POSTGRES",
                  'CREATE DATABASE "{name}"', 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
MARIADB = Server("MariaDB", MYSQL_ADMIN_URL, "pymysql", "HPO_REQUIRE_MYSQL",
                 "CREATE DATABASE `{name}` CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS `{name}`")


def _admin_engine():
    return POSTGRES.admin_engine()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL server, or a skip (an error in CI)."""
    return POSTGRES.reachable()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty database for this test; dropped afterwards."""
    yield from POSTGRES.database()


@pytest.fixture(scope="session")
def mariadb_server() -> str:
    """The admin URL of a reachable MariaDB (or MySQL) server, or a skip (an error in CI)."""
    return MARIADB.reachable()


@pytest.fixture
def mariadb_url(mariadb_server: str) -> Iterator[str]:
    """A new, empty database for this test; dropped afterwards."""
    yield from MARIADB.database()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def storage_url(request) -> str:
    """The same test on a SQLite file, a fresh PostgreSQL database and a fresh MariaDB database."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_storage_url(request, tmp_path_factory) -> Iterator[str]:
    """A SQLite file, then a fresh PostgreSQL database, each shared by the tests of one module:
    for a campaign built once per database and checked by several tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('module-db') / 'hpo.db'}"
    else:
        request.getfixturevalue("postgres_server")
        yield from POSTGRES.database()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def server_url(request) -> str:
    """The same test on a fresh database of each server many machines share (PostgreSQL, MariaDB)."""
    return request.getfixturevalue(f"{request.param}_url")


def _browser_missing() -> str | None:
    from tests.browser import missing

    return missing()


def _docker_missing() -> str | None:
    from tests.dockerized import missing

    return missing()


# marker -> (what is missing, or None; the variable that makes a missing one an error)
NEEDS = {"browser": (_browser_missing, "HPO_REQUIRE_BROWSER"), "docker": (_docker_missing, "HPO_REQUIRE_DOCKER")}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``browser`` skip with a reason when Chromium or Playwright is missing, and
    tests marked ``docker`` when no Docker engine answers, unless HPO_REQUIRE_BROWSER=1 or
    HPO_REQUIRE_DOCKER=1 (as in CI), where what is missing is an error."""
    for marker, (missing, required) in NEEDS.items():
        if item.get_closest_marker(marker) is None:
            continue
        reason = missing()
        if reason:
            if os.environ.get(required) == "1":
                pytest.fail(f"{reason}, and {required}=1")
            pytest.skip(reason)

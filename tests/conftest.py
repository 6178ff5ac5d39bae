"""Shared fixtures: a fresh SQLite file and a fresh PostgreSQL database per test.

PostgreSQL tests skip with a reason when no server is reachable, unless HPO_REQUIRE_POSTGRES=1
(as in CI), where an unreachable server is an error. The server is taken from
HPO_TEST_POSTGRES (an admin URL), default postgresql://postgres@127.0.0.1:5432/postgres.
Tests marked ``browser`` likewise skip without Chromium and Playwright, unless HPO_REQUIRE_BROWSER=1,
and tests marked ``docker`` without a Docker engine, unless HPO_REQUIRE_DOCKER=1.
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


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


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

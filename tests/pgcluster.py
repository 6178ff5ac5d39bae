"""A throwaway PostgreSQL cluster that a test may stop and restart, never the shared server.

``initdb`` into a fresh temporary folder, a free port on 127.0.0.1, ``pg_ctl`` to start, stop
and restart. PostgreSQL refuses to run as root, so when the tests run as root the cluster is
owned and run by the ``postgres`` user (``runuser -u postgres -- ...``). Authentication is
``trust`` and the server listens on 127.0.0.1 only.

Without the PostgreSQL binaries the fixture skips with a reason, unless HPO_REQUIRE_POSTGRES=1
(as in CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BIN_DIRS = [os.environ.get("HPO_PG_BIN", ""), "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/14/bin"]
RUN_AS = "postgres"  # used when the tests run as root


def find_bin(name: str) -> str | None:
    for folder in BIN_DIRS:
        if folder and os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayServer:
    """What the throwaway servers of the fault tests share: a folder of their own (``root``) with
    the server's log, a restart, and ``destroy`` (stop at once with ``_halt``, delete it all)."""

    def __init__(self, prefix: str, max_connections: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.max_connections = max_connections

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def is_running(self) -> bool:
        raise NotImplementedError

    def _halt(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.is_running():
                self._halt()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class PgCluster(ThrowawayServer):
    """One PostgreSQL server in a temporary folder; ``url(db)`` for its databases."""

    def __init__(self, *, max_connections: int = 60) -> None:
        self.initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise RuntimeError("initdb / pg_ctl not found (set HPO_PG_BIN to their folder)")
        self.as_root = os.geteuid() == 0
        if self.as_root and not shutil.which("runuser"):
            raise RuntimeError("running as root, but runuser is missing to start PostgreSQL as another user")
        super().__init__("hpo-pgcluster-", max_connections)
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir()
        if self.as_root:
            user = pwd.getpwnam(RUN_AS)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                   "--encoding", "UTF8", "--no-instructions"], timeout=120)

    # -- lifecycle -------------------------------------------------------------------------
    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        if self.as_root:
            argv = ["runuser", "-u", RUN_AS, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{self.log_tail()}")
        return result

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} "
                   f"-c max_connections={self.max_connections} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"], timeout=90)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` ends every session at once (as a crash or a failover would)."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"], timeout=90)

    def is_running(self) -> bool:
        argv = [self.pg_ctl, "-D", str(self.data), "status"]
        if self.as_root:
            argv = ["runuser", "-u", RUN_AS, "--", *argv]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    def _halt(self) -> None:
        self.stop("immediate")

    # -- databases -------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, password: str | None = None) -> str:
        """A new empty database; returns its URL (``password``: any is accepted, as
        authentication is ``trust``)."""
        import sqlalchemy

        name = f"hpo_fault_{uuid.uuid4().hex[:10]}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with engine.connect() as conn:
                        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
                    break
                except sqlalchemy.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            engine.dispose()
        return self.url(name)


def throwaway(make: Callable[[], Any], what: str, require: str, errors: tuple[type[BaseException], ...]) -> Iterator[Any]:
    """A fixture's body: the server ``make`` builds, started for the fixture's scope and destroyed
    afterwards; a skip naming ``what`` could not be made (a failure when ``require`` is 1)."""
    try:
        cluster = make()
    except errors as e:
        reason = f"cannot create a throwaway {what}: {str(e).splitlines()[0]}"
        if os.environ.get(require) == "1":
            pytest.fail(f"{reason}, and {require}=1")
        pytest.skip(reason)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def pg_cluster():
    """A running throwaway cluster for the tests of one module; destroyed afterwards."""
    yield from throwaway(PgCluster, "PostgreSQL cluster", "HPO_REQUIRE_POSTGRES",
                         (RuntimeError, OSError, KeyError, subprocess.SubprocessError))

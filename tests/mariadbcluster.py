"""A throwaway MariaDB server that a test may stop and restart, never the shared server.

``mariadb-install-db`` into a fresh temporary folder, a free port on 127.0.0.1 and a socket of
its own, ``mariadbd`` started in the background and stopped with SIGTERM (a clean shutdown
that ends every session, as ``pg_ctl stop -m fast`` does). The server runs as the user running
the tests (``--user=root`` when that is root), its root account has no password and listens on
127.0.0.1 only. Commits do not wait for the disk (``innodb_flush_log_at_trx_commit=2``): a clean
stop loses nothing, and a test does not wait on fsync.

Without the MariaDB binaries the fixture skips with a reason, unless HPO_REQUIRE_MYSQL=1 (as in
CI), where that is a failure. The interface is :class:`tests.pgcluster.PgCluster`'s.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from tests.pgcluster import ThrowawayServer, throwaway


class MariaDbCluster(ThrowawayServer):
    """One MariaDB server in a temporary folder; ``url(db)`` for its databases."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self.install_db = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        self.mariadbd = shutil.which("mariadbd") or _sbin("mariadbd") or _sbin("mysqld")
        if not (self.install_db and self.mariadbd):
            raise RuntimeError("mariadb-install-db / mariadbd not found")
        super().__init__("hpo-mariadb-", max_connections)
        self.socket = self.root / "mysqld.sock"
        self.as_root = os.geteuid() == 0
        self.process: subprocess.Popen | None = None
        self._run([self.install_db, "--no-defaults", f"--datadir={self.data}", *self._user(),
                   "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"], timeout=120)

    def _user(self) -> list[str]:
        return ["--user=root"] if self.as_root else []

    def _run(self, argv: list[str], timeout: float) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        argv = [self.mariadbd, "--no-defaults", f"--datadir={self.data}", *self._user(), f"--port={self.port}",
                "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.root / 'mysqld.pid'}",
                f"--log-error={self.log}", "--skip-name-resolve", "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=2", "--innodb-buffer-pool-size=64M",
                "--performance-schema=OFF", f"--max-connections={self.max_connections}"]
        self.process = subprocess.Popen(argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd did not start (exit {self.process.poll()}):\n{self.log_tail()}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        import pymysql

        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
            return True
        except pymysql.err.OperationalError:
            return False

    def stop(self, timeout: float = 60) -> None:
        """Stop the server cleanly (SIGTERM); every session ends at once."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"mariadbd did not stop within {timeout}s:\n{self.log_tail()}") from None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _halt(self) -> None:
        self.process.kill()
        self.process.wait(30)

    # -- databases -------------------------------------------------------------------------
    def url(self, database: str = "mysql") -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def create_database(self, password: str | None = None) -> str:
        """A new empty database; returns its URL. With ``password``, the URL's user is a new
        account of that password (without it in the URL), owning the database."""
        import pymysql

        name = f"hpo_fault_{uuid.uuid4().hex[:10]}"
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=5)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                if password is not None:
                    cursor.execute(f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY %s", (password,))
                    cursor.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'127.0.0.1'")
        finally:
            conn.close()
        if password is None:
            return self.url(name)
        return f"mysql+pymysql://{name}@127.0.0.1:{self.port}/{name}"


def _sbin(name: str) -> str | None:
    path = os.path.join("/usr/sbin", name)
    return path if os.access(path, os.X_OK) else None


def _make() -> MariaDbCluster:
    import pymysql  # noqa: F401 - the driver the tests talk through

    return MariaDbCluster()


@pytest.fixture(scope="module")
def mariadb_cluster():
    """A running throwaway MariaDB server for the tests of one module; destroyed afterwards."""
    yield from throwaway(_make, "MariaDB server", "HPO_REQUIRE_MYSQL",
                         (RuntimeError, OSError, ImportError, subprocess.SubprocessError))

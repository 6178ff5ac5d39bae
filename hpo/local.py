"""Worker processes on this machine, started by `hpo search` and `hpo launch`.

Each worker is a fresh `python -m hpo worker` process: its own database connections (never
shared across a fork), one BLAS thread (set before NumPy loads, so N workers on N cores do not
oversubscribe), and the storage URL in its environment rather than on its command line (a
password must never show in ``/proc/PID/cmdline``). Output goes to a log file per worker; the
tail of it is shown if a worker fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from storage.url import URL_ENV

BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class WorkerProcess:
    index: int
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalWorkers:
    """N `hpo worker` processes on one campaign or study; stopped together."""

    def __init__(
        self,
        storage_url: str,
        n: int,
        *,
        campaign: str | None = None,
        study: str | None = None,
        seed: int = 0,
        blas_threads: int = 1,
    ) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="hpo-workers-"))
        env = dict(os.environ)
        env[URL_ENV] = storage_url
        env.update({var: str(blas_threads) for var in BLAS_THREAD_VARS})
        target = ["--campaign", campaign] if campaign else ["--study", study or ""]
        self.workers: list[WorkerProcess] = []
        for i in range(n):
            log_path = self.log_dir / f"worker-{i}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "hpo", "worker", *target, "--seed", str(seed + i),
                     "--exit-with-parent"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.workers.append(WorkerProcess(i, process, log_path))

    def running(self) -> int:
        return sum(w.process.poll() is None for w in self.workers)

    def failed(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process.poll() not in (None, 0)]

    def wait(self, timeout: float) -> bool:
        """Wait for every worker to exit by itself; True if they all did."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.running()

    def stop(self, grace: float = 10.0, keep_logs: bool = False) -> None:
        """SIGTERM (a worker re-queues its trial and exits), then SIGKILL after ``grace``.

        The logs are removed when every worker ended well and the caller needs none of them.
        """
        for w in self.workers:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        if not self.wait(grace):
            for w in self.workers:
                if w.process.poll() is None:
                    w.process.kill()
            self.wait(5)
        if not (keep_logs or self.failed()):
            shutil.rmtree(self.log_dir, ignore_errors=True)

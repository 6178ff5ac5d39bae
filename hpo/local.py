"""Worker processes on this machine, started by `hpo search` and `hpo launch`.

Each worker is a fresh `python -m hpo worker` process: its own database connections (never
shared across a fork), one BLAS thread (set before NumPy loads, so N workers on N cores do not
oversubscribe), and the storage URL in its environment rather than on its command line (a
password must never show in ``/proc/PID/cmdline``). A password read from the file named by
``HPO_DB_PASSWORD_FILE`` is not passed at all: the workers inherit that variable and read the
file themselves, so the password is in no worker's environment either. Output goes to a log
file per worker, in a folder that is removed when every worker ended well and kept (and its
place printed) when one failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hpo.output import err, plural
from storage.url import URL_ENV, url_for_children

BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# How a worker may end without having failed. SIGINT and SIGTERM ask a process to stop; a worker
# that gets one before its handler is installed, or after it is gone (at the very start or end of
# its life), dies of it instead of exiting 0.
_ASKED_TO_STOP = {0, -signal.SIGINT, -signal.SIGTERM}
# ... and, for a worker `stop()` found still running, the SIGKILL it sends after the grace period.
_STOPPED_BY_US = _ASKED_TO_STOP | {-signal.SIGKILL}


@dataclass
class WorkerProcess:
    index: int
    process: subprocess.Popen
    log_path: Path
    stopped: bool = False  # still running when stop() began: how it ended is stop()'s doing

    @property
    def worker_id(self) -> str:
        """The id the worker writes into each trial's ``worker`` attr (see WorkerOptions)."""
        return f"{socket.gethostname()}-{self.process.pid}"

    def failed(self) -> bool:
        """Ended by itself with an error, or was killed by something other than a stop request.

        A worker that was still running when `stop()` began is judged by what stop() did to it:
        whatever the signal left as its exit status (say -15, when the SIGTERM arrived while it
        was already shutting down) is no failure; a traceback on its way out (exit 1) is.
        """
        code = self.process.poll()
        if code is None:
            return False
        return code not in (_STOPPED_BY_US if self.stopped else _ASKED_TO_STOP)

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
        seed: int | None = 0,
        blas_threads: int = 1,
        wait_seconds: float | None = None,
    ) -> None:
        """``seed``: worker i gets ``--seed seed + i``; None passes no seed (each worker derives its own).
        ``wait_seconds``: how long each waits for the schema and the campaign (its ``--wait``)."""
        self.log_dir = Path(tempfile.mkdtemp(prefix="hpo-workers-"))
        self._logs_reported = False
        env = dict(os.environ)
        env[URL_ENV] = url_for_children(storage_url, env)
        env.update({var: str(blas_threads) for var in BLAS_THREAD_VARS})
        target = ["--campaign", campaign] if campaign else ["--study", study or ""]
        self.workers: list[WorkerProcess] = []
        for i in range(n):
            log_path = self.log_dir / f"worker-{i}.log"
            seed_args = [] if seed is None else ["--seed", str(seed + i)]
            wait_args = [] if wait_seconds is None else ["--wait", f"{wait_seconds:g}"]
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "hpo", "worker", *target, *seed_args, *wait_args, "--exit-with-parent"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.workers.append(WorkerProcess(i, process, log_path))

    def worker_ids(self) -> list[str]:
        """The ids these processes write into their trials' ``worker`` attr, exited ones too
        (to find the trials they left behind after an interrupt)."""
        return [w.worker_id for w in self.workers]

    def running(self) -> int:
        return sum(w.process.poll() is None for w in self.workers)

    def failed(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.failed()]

    def wait(self, timeout: float) -> bool:
        """Wait for every worker to exit by itself; True if they all did."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.running()

    def stop(self, grace: float = 10.0, keep_logs: bool = False) -> list[WorkerProcess]:
        """Stop the workers still running; return the ones that failed.

        SIGTERM first (a worker re-queues its trial and exits), SIGKILL to any still running
        after ``grace`` seconds. Workers that already had a SIGINT from the terminal (Ctrl-C
        reaches the whole process group) get the SIGTERM too. A Ctrl-C while this waits does not
        cut the stop short, which would leave workers and their trials running: it is raised
        again once every worker has ended.

        The logs are removed when no worker failed and ``keep_logs`` is False; otherwise one line
        on stderr says where they are.
        """
        interrupted = self.ask_to_stop()
        interrupted |= self._wait_through_interrupts(time.monotonic() + grace)
        if self.running():
            for w in self.workers:
                if w.process.poll() is None:
                    interrupted |= _signal(w.process, signal.SIGKILL)
            interrupted |= self._wait_through_interrupts(time.monotonic() + 5)
        failed = self.failed()
        if keep_logs or failed:
            if not self._logs_reported:
                self._logs_reported = True
                what = f"{len(failed)} of {plural(len(self.workers), 'worker')} failed; " if failed else ""
                err.print(f"{what}worker logs kept in {self.log_dir}", soft_wrap=True)
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        if interrupted:
            raise KeyboardInterrupt
        return failed

    def ask_to_stop(self) -> bool:
        """SIGTERM to every worker still running, without waiting for them (:meth:`stop`
        waits); True if a KeyboardInterrupt came meanwhile (the signals are still sent)."""
        interrupted = False
        for w in self.workers:
            if w.process.poll() is None:
                w.stopped = True
                interrupted |= _signal(w.process, signal.SIGTERM)
        return interrupted

    def _wait_through_interrupts(self, deadline: float) -> bool:
        """Wait until no worker runs or ``deadline``; True if a KeyboardInterrupt came meanwhile."""
        interrupted = False
        while time.monotonic() < deadline:
            try:
                if not self.running():
                    break
                time.sleep(0.05)
            except KeyboardInterrupt:
                interrupted = True
        return interrupted


def _signal(process: subprocess.Popen, sig: int) -> bool:
    """Send ``sig`` unless the process has ended; True if a KeyboardInterrupt came meanwhile
    (the signal is still sent)."""
    interrupted = False
    while True:
        try:
            if process.poll() is None:
                process.send_signal(sig)
            return interrupted
        except ProcessLookupError:  # ended between the poll and the signal
            return interrupted
        except KeyboardInterrupt:
            interrupted = True

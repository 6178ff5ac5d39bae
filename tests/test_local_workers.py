"""Local workers (hpo.local.LocalWorkers, started by `hpo search` and `hpo launch`), as real
`hpo worker` processes: judged by what they did, their log folder removed when all went well
and kept (with one line saying where) when one failed, their worker ids the ones they write into
their trials, and a stop that a Ctrl-C in the middle does not cut short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpo.local import LocalWorkers
from tests.helpers import sql
from tests.test_faults import make_plan, running, wait_until

pytestmark = pytest.mark.slow

# Epochs of seconds each (wide layers, tiny batches): a stop lands in the middle of one and waits for its end.
LONG_EPOCHS = ["hidden_sizes=1024-1024", "batch_size=8", "lr=log:1e-4..1e-3", "batch_norm=false"]


@pytest.fixture
def temp_dir(tmp_path, monkeypatch) -> Path:
    """The temporary folder LocalWorkers puts its logs in, for this test alone."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    return folder


def log_folders(temp_dir: Path) -> list[Path]:
    return sorted(temp_dir.glob("hpo-workers-*"))


def test_workers_stopped_while_they_start_are_no_failures_and_leave_no_logs(sqlite_url, temp_dir, capsys):
    """Stopped at once, the workers die of the SIGTERM before their handler is installed (-15):
    what stop() did to them, not a failure of theirs."""
    local = LocalWorkers(sqlite_url, 3, campaign="not-there-yet")
    assert len(log_folders(temp_dir)) == 1
    assert local.stop(grace=30) == []
    codes = [w.process.returncode for w in local.workers]
    assert -signal.SIGTERM in codes, codes  # the case at hand happened
    assert set(codes) <= {0, -signal.SIGTERM}, codes
    assert local.failed() == [] and log_folders(temp_dir) == []
    assert capsys.readouterr().err == ""


def test_a_worker_that_failed_by_itself_is_reported_and_its_log_kept(temp_dir, capsys):
    """A storage the worker refuses: it exits non-zero by itself, before any stop."""
    local = LocalWorkers("oracle://nobody@127.0.0.1/hpo", 1, campaign="c")
    assert local.wait(60)
    assert local.workers[0].process.returncode not in (0, None)
    failed = local.stop(grace=5)
    assert failed == local.workers == local.failed()
    [folder] = log_folders(temp_dir)
    assert (folder / "worker-0.log").read_text().strip()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"1 of 1 worker failed; worker logs kept in {folder}"]


def test_logs_asked_for_are_kept_and_their_place_said_once(sqlite_url, temp_dir, capsys):
    local = LocalWorkers(sqlite_url, 1, campaign="not-there-yet")
    local.stop(grace=30, keep_logs=True)
    local.stop(grace=30, keep_logs=True)  # a second stop (say, from a cleanup) says nothing more
    [folder] = log_folders(temp_dir)
    assert capsys.readouterr().err.strip().splitlines() == [f"worker logs kept in {folder}"]


def test_worker_ids_are_the_ids_the_workers_write_into_their_trials(sqlite_url, temp_dir):
    study = make_plan(sqlite_url, "ids", trials=6, epochs=1, params=["hidden_sizes=32", "batch_size=128"])
    local = LocalWorkers(sqlite_url, 2, campaign="ids", seed=None)
    try:
        assert local.wait(240), [w.log_tail() for w in local.workers]
    finally:
        local.stop(grace=30)
    writers = {w for (w,) in sql(sqlite_url, "SELECT a.value_json FROM trial_user_attributes a WHERE a.key = 'worker'")}
    assert writers and {w.strip('"') for w in writers} <= set(local.worker_ids())
    assert len(set(local.worker_ids())) == 2 and study
    assert local.failed() == [] and log_folders(temp_dir) == []


def test_a_ctrl_c_while_stopping_does_not_cut_the_stop_short(sqlite_url, temp_dir):
    """Workers in the middle of long epochs take a while to stop; a SIGINT to the stopping
    process (a second Ctrl-C) lands meanwhile. Every worker still ends by the SIGTERM (no
    SIGKILL, no worker left running), and the interrupt is raised after that."""
    study = make_plan(sqlite_url, "slow", trials=20, epochs=20, params=LONG_EPOCHS)
    local = LocalWorkers(sqlite_url, 2, campaign="slow")
    try:
        wait_until(lambda: len(running(sqlite_url, study)) == 2, 120, "both workers training")
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            local.stop(grace=60)
        timer.join()
        assert time.monotonic() - started > 0.3  # the interrupt came while stop() waited ...
    finally:
        for w in local.workers:
            if w.process.poll() is None:
                w.process.kill()
    codes = [w.process.returncode for w in local.workers]
    assert codes == [0, 0], [w.log_tail() for w in local.workers]  # ... and each worker stopped as asked
    assert local.failed() == []


def test_stop_signals_workers_that_the_terminal_already_interrupted(sqlite_url, temp_dir):
    """Ctrl-C in a terminal reaches the whole process group: the workers have their SIGINT
    before the coordinator stops them. stop() still sends SIGTERM, and every worker ends."""
    study = make_plan(sqlite_url, "group", trials=20, epochs=20, params=LONG_EPOCHS)
    local = LocalWorkers(sqlite_url, 2, campaign="group")
    try:
        wait_until(lambda: len(running(sqlite_url, study)) == 2, 120, "both workers training")
        for w in local.workers:
            w.process.send_signal(signal.SIGINT)
        assert local.stop(grace=60) == []
    finally:
        for w in local.workers:
            if w.process.poll() is None:
                w.process.kill()
    assert all(w.process.returncode == 0 for w in local.workers), [w.log_tail() for w in local.workers]
    assert running(sqlite_url, study) == []
    assert log_folders(temp_dir) == []


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_the_log_folder_of_a_successful_search_is_removed(tmp_path):
    """`hpo search` with local workers, run to its end: nothing of it is left in the temp folder."""
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "HPO_STORAGE": f"sqlite:///{tmp_path / 'hpo.db'}",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "clean", "--workers", "2", "--stages", "1", "--trials", "4",
         "--epochs", "1", "--param", "hidden_sizes=32", "--param", "batch_size=128"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(temp.iterdir()) == [], "the worker logs were left behind"
    assert "worker logs kept" not in result.stderr

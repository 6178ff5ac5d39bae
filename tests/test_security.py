"""Security: passwords stay out of command lines, logs and output; the image runs as non-root;
datasets never run pickled code; trial filters never become SQL.

Where another test file covers a point in depth, the thin test here names it:
- pickles: tests/test_data_datasets.py (every payload kind and protocol, the allowlist);
- filters: tests/test_inspect.py::test_a_filter_value_is_a_literal_never_sql and
  tests/test_cli_inspect.py::test_a_where_value_is_a_literal_and_the_database_is_unchanged;
- unreachable databases: tests/test_cli_inspect.py and tests/test_cli.py (one masked line).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner

from hpo import cli_inspect  # noqa: F401 - registers the inspection commands
from hpo import inspect
from hpo.cli import cli
from storage import backend
from tests.ledger import assert_nothing_lost_or_repeated
from workers.data.datasets import DatasetError, load_dataset

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-9f1c-pw"


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# -- command lines, logs and output ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_no_password_on_any_command_line_or_in_any_output(postgres_url, tmp_path):
    """The documented way: the URL without a password in HPO_STORAGE, the password in the file
    named by HPO_DB_PASSWORD_FILE. A coordinator with local workers, and a worker of its own."""
    secret = tmp_path / "db_password"
    secret.write_text(PASSWORD + "\n")  # trust authentication ignores it; it is still resolved into the URL
    env = {**os.environ, "HPO_STORAGE": postgres_url, "HPO_DB_PASSWORD_FILE": str(secret),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HPO_TEST_POSTGRES", None)
    hpo = [sys.executable, "-m", "hpo"]
    outputs = [tmp_path / name for name in ("coordinator.out", "coordinator.err", "worker.out", "worker.err")]
    files = [open(path, "wb") for path in outputs]
    procs = []
    try:
        procs.append(subprocess.Popen([*hpo, "search", "--name", "sec", "--workers", "2", "--stages", "1",
                                       "--trials", "6", "--epochs", "3", "--param", "hidden_sizes=64",
                                       "--param", "batch_size=32", "--json"],
                                      env=env, stdout=files[0], stderr=files[1], stdin=subprocess.DEVNULL))
        procs.append(subprocess.Popen([*hpo, "worker", "--campaign", "sec", "-v"],
                                      env=env, stdout=files[2], stderr=files[3], stdin=subprocess.DEVNULL))
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for p in procs:
                for pid in descendants(p.pid):
                    line = cmdline(pid)
                    if line:
                        seen[pid] = line
            time.sleep(0.05)
        for p in procs:
            assert p.wait(60) == 0, [path.read_text()[-2000:] for path in outputs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for f in files:
            f.close()

    workers = [line for line in seen.values() if " worker " in f" {line} "]
    assert len(workers) >= 3, f"the local workers and the worker were seen: {seen}"
    for line in seen.values():
        assert PASSWORD not in line and "postgresql" not in line, line
    for path in outputs:
        assert PASSWORD not in path.read_text(errors="replace"), path.name
    assert json.loads(outputs[0].read_text())["campaign"] == "sec"
    assert_nothing_lost_or_repeated(postgres_url, "sec")


@pytest.mark.parametrize("args", [["init"], ["studies"], ["health", "c1"], ["fail-stale", "c1"],
                                  ["worker", "--campaign", "c1", "--wait", "1"],
                                  ["search", "--name", "c1", "--workers", "0", "--trials", "1", "--epochs", "1"]],
                         ids=lambda a: a[0])
def test_a_password_in_the_url_never_reaches_output(args):
    """An unreachable database with a password in the URL: one line naming the masked URL."""
    env = {**os.environ, "HPO_STORAGE": f"postgresql://hpo:{PASSWORD}@127.0.0.1:1/hpo"}
    result = subprocess.run([sys.executable, "-m", "hpo", *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot use the database postgresql+psycopg://hpo:***@127.0.0.1:1/hpo"), last


def test_a_password_given_with_storage_is_masked_too():
    result = CliRunner().invoke(cli, ["studies", "--storage", f"postgresql://hpo:{PASSWORD}@127.0.0.1:1/hpo"])
    assert result.exit_code == 2 and PASSWORD not in result.output


# -- the image ---------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def test_the_image_runs_as_a_non_root_user_and_passes_sigterm_on():
    rows = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(rows) if k == "FROM")
    final = rows[last_from:]
    assert final[0][1].startswith("python:3.11-slim")
    start = min(i for i, (k, _) in enumerate(final) if k in ("ENTRYPOINT", "CMD"))
    users = [v for k, v in final[:start] if k == "USER"]
    assert users, "no USER before the command"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runs as {users[-1]}"
    instructions = dict(final)
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    entrypoint = json.loads(instructions["ENTRYPOINT"])  # exec form: no shell between tini and the command
    assert entrypoint[0].endswith("tini") and entrypoint[-1] == "--"
    assert isinstance(json.loads(instructions["CMD"]), list)
    assert any("pip install" in v and "postgres" in v for k, v in final if k == "RUN")


def test_the_build_context_leaves_secrets_and_databases_out():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0] == "*" or "*" in ignore, "everything is excluded unless listed"
    admitted = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    assert "secrets" not in admitted and ".git" not in admitted
    assert set(admitted) <= {"pyproject.toml", "README.md", "storage", "workers", "hpo", "docker"}


# -- datasets ----------------------------------------------------------------------------------
class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_dataset_file_with_a_code_running_pickle_runs_nothing(tmp_path):
    """Thin: one payload through the npz loader (tests/test_data_datasets.py has them all)."""
    marker = tmp_path / "ran"
    path = tmp_path / "data.npz"
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = _Marker(marker), 1
    np.savez(path, X=objects, y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DatasetError):
        load_dataset(f"npz:{path}")
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(_Marker(marker))) is None and marker.exists()  # the payload is live


# -- trial filters -----------------------------------------------------------------------------
def test_trial_filters_never_become_sql(tmp_path):
    """Thin: no statement sent while filtering holds the user's text (see tests/test_inspect.py)."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    backend.ensure_schema(url)
    storage = backend.open_storage(url, heartbeat=False)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 2)}, value=0.5))
    sentinel = "zz_sentinel'; DROP TABLE trials; --"
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(f"{statement} {parameters!r}")

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", record)
    try:
        for where in (f"state={sentinel}", f"x!={sentinel}", f"reason={sentinel}"):
            try:
                inspect.select_trials(storage, "s", where=[where])
            except inspect.QueryError:
                pass
    finally:
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", record)
    assert statements, "the filter read the trials"
    assert not any("zz_sentinel" in s for s in statements)
    assert len(study.get_trials()) == 1
    storage.engine.dispose()

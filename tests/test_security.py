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
@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_password_in_the_url_never_reaches_output(args, scheme):
    """An unreachable database with a password in the URL: one line naming the masked URL."""
    env = {**os.environ, "HPO_STORAGE": f"{scheme}://hpo:{PASSWORD}@127.0.0.1:1/hpo"}
    result = subprocess.run([sys.executable, "-m", "hpo", *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    driver = DRIVERS[scheme]
    assert last.startswith(f"Error: cannot use the database {scheme}+{driver}://hpo:***@127.0.0.1:1/hpo"), last


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
    # the base image is a build argument; users build on its default
    defaults = dict(v.split("=", 1) for k, v in rows[:last_from] if k == "ARG" and "=" in v)
    assert final[0][1] == "${BASE_IMAGE}" and defaults["BASE_IMAGE"].startswith("python:3.11-slim")
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
    assert set(admitted) <= {"pyproject.toml", "README.md", "LICENSE", "storage", "workers", "hpo", "docker"}


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


# -- the password file and the workers' environment ----------------------------------------------
ROLE_PASSWORD = "envpw-7Qz9k2 @x"  # a space and an '@': the URL holds it percent-encoded
ROLE_PASSWORD_MARK = "7Qz9k2"  # found in any encoding of it


def environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def role_url(postgres_server):
    """A fresh database owned by a fresh role that has a password; the URL names the role
    and no password. The shared server trusts 127.0.0.1, so the login works with any
    password: what matters here is where the password travels."""
    import uuid

    from sqlalchemy.engine import make_url

    from tests.conftest import _admin_engine

    name = f"hpo_pw_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE ROLE {name} LOGIN PASSWORD '{ROLE_PASSWORD}'"))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}" OWNER {name}'))
    try:
        yield make_url(postgres_server).set(username=name, password=None, database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {name}"))
        engine.dispose()


def run_watching(commands: list[list[str]], env: dict[str, str], folder: Path, timeout: float = 180):
    """Run ``commands`` together; return their (exit code, stdout, stderr) and what every process
    below them held, by pid: its command line and its environment."""
    seen: dict[int, tuple[str, str]] = {}
    procs, files = [], []
    try:
        for i, command in enumerate(commands):
            out, err = open(folder / f"{i}.out", "w+"), open(folder / f"{i}.err", "w+")
            files += [out, err]
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL))
            time.sleep(1)  # the coordinator first: it creates the campaign
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for p in procs:
                for pid in descendants(p.pid):
                    line, env_text = cmdline(pid), environ(pid)
                    if line:
                        seen[pid] = (line, env_text)
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
    results = []
    for p, i in zip(procs, range(len(procs))):
        results.append((p.returncode, (folder / f"{i}.out").read_text(), (folder / f"{i}.err").read_text()))
    for f in files:
        f.close()
    return results, seen


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_local_workers_read_the_password_file_themselves(role_url, tmp_path):
    """`hpo search` and `hpo launch` start workers that inherit HPO_DB_PASSWORD_FILE: their
    HPO_STORAGE carries no password, and neither their environment nor their command line
    holds it; they still work. A password file open to others gets one warning line."""
    secret = tmp_path / "db_password"
    secret.write_text(ROLE_PASSWORD + "\n")
    secret.chmod(0o644)
    env = {**os.environ, "HPO_STORAGE": role_url, "HPO_DB_PASSWORD_FILE": str(secret),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HPO_TEST_POSTGRES", None)
    hpo = [sys.executable, "-m", "hpo"]
    small = ["--stages", "1", "--trials", "4", "--epochs", "1", "--param", "hidden_sizes=32", "--param", "batch_size=128"]

    [(code, _, err)], seen = run_watching([[*hpo, "search", "--name", "own", "--workers", "2", *small]], env, tmp_path)
    assert code == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: the password file named by HPO_DB_PASSWORD_FILE is open to group or others "
                        "(mode 0644); make it readable by its owner only (chmod 600)"]

    secret.chmod(0o600)
    (search, launch), more = run_watching(
        [[*hpo, "search", "--name", "launched", "--workers", "0", *small],
         [*hpo, "launch", "-n", "2", "--campaign", "launched"]], env, tmp_path)
    assert search[0] == 0 and launch[0] == 0, (search[2][-3000:], launch[2][-3000:])
    assert "warning:" not in search[2] + launch[2]
    seen.update(more)

    workers = {pid: held for pid, held in seen.items() if " worker " in f" {held[0]} "}
    assert len(workers) >= 4, f"the local workers of both commands were seen: {seen}"
    for pid, (line, env_text) in seen.items():
        assert ROLE_PASSWORD_MARK not in line and ROLE_PASSWORD_MARK not in env_text, line
    for line, env_text in workers.values():
        assert f"HPO_STORAGE={role_url.replace('postgresql:', 'postgresql+psycopg:')}\n" in env_text, env_text
    assert_nothing_lost_or_repeated(role_url, "own")
    assert_nothing_lost_or_repeated(role_url, "launched")


def password_env(secret: Path) -> dict[str, str]:
    return {"HPO_DB_PASSWORD_FILE": str(secret)}


def test_a_password_file_open_to_others_warns_once_and_still_works(tmp_path, capsys):
    from storage.url import resolve_url

    secret = tmp_path / "open"
    secret.write_text("pw-open-1\n")
    secret.chmod(0o640)
    for _ in range(2):
        assert resolve_url("postgresql://hpo@db/hpo", password_env(secret)).endswith("hpo:pw-open-1@db/hpo")
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: the password file named by HPO_DB_PASSWORD_FILE is open to group or others "
                                "(mode 0640); make it readable by its owner only (chmod 600)"]
    assert "pw-open-1" not in err

    closed = tmp_path / "closed"
    closed.write_text("pw-closed-1\n")
    closed.chmod(0o600)
    resolve_url("postgresql://hpo@db/hpo", password_env(closed))
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to give a file to another user")
def test_a_password_file_of_another_user_is_not_judged(tmp_path, capsys):
    """As ssh does: a secret mounted into a container belongs to someone else and is readable
    by design; only the running user's own file is told to be closed."""
    from storage.url import resolve_url

    secret = tmp_path / "mounted"
    secret.write_text("pw-mounted-1\n")
    secret.chmod(0o444)
    os.chown(secret, 65534, 65534)
    resolve_url("postgresql://hpo@db/hpo", password_env(secret))
    assert capsys.readouterr().err == ""


def test_a_password_file_that_is_not_utf8_is_one_line_and_exit_2(tmp_path):
    secret = tmp_path / "latin1"
    secret.write_bytes("pässwort-9x".encode("latin-1"))
    secret.chmod(0o600)
    env = {**os.environ, "HPO_DB_PASSWORD_FILE": str(secret), "HPO_STORAGE": "postgresql://hpo@127.0.0.1:1/hpo"}
    result = subprocess.run([sys.executable, "-m", "hpo", "studies"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: the password file named by HPO_DB_PASSWORD_FILE is not UTF-8 text"], result.stderr


# -- masking -------------------------------------------------------------------------------------
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from storage.url import DRIVERS, mask_text, mask_url, resolve_url  # noqa: E402

# Passwords of any printable characters, '@ : / # ?' and spaces included.
passwords = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30)


@given(password=passwords)
@example(password="p@ss")
@example(password="a@b@c:d/e#f?g h")
@example(password="x://y:z@")
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_no_part_of_a_password_survives_masking(password):
    """Raw in a URL (as a user might type it), or percent-encoded (as a resolved URL holds it):
    the masked text is the text with the password replaced, whatever the password holds."""
    raw = f"postgresql://hpo:{password}@db.example.org:5432/hpo"
    message = f"cannot use the database {raw}: connection refused"
    assert mask_text(message) == "cannot use the database postgresql://hpo:***@db.example.org:5432/hpo: connection refused"
    assert mask_url(raw) == "postgresql://hpo:***@db.example.org:5432/hpo"
    secret_file_url = sqlalchemy.engine.make_url("postgresql+psycopg://hpo@db.example.org/hpo").set(password=password)
    encoded = secret_file_url.render_as_string(hide_password=False)
    assert mask_url(encoded) == "postgresql+psycopg://hpo:***@db.example.org/hpo"
    assert mask_text(f"{encoded} failed\nnext line {encoded}") == (
        "postgresql+psycopg://hpo:***@db.example.org/hpo failed\nnext line postgresql+psycopg://hpo:***@db.example.org/hpo")


def test_a_password_with_a_raw_at_sign_is_refused_in_one_line_naming_no_part_of_it():
    """SQLAlchemy would end the password at its first '@' and connect to a host named after the
    rest: the driver's error would print that piece of the password."""
    for url in ("postgresql://hpo:sekr1t@p4rt@127.0.0.1:1/hpo", "postgresql://hpo:sekr1t@p4rt/x@127.0.0.1:1/hpo",
                "postgresql://hpo:sekr1t@p4rt:5@127.0.0.1:1/hpo"):
        result = CliRunner().invoke(cli, ["studies", "--storage", url])
        assert result.exit_code == 2 and result.stdout == ""
        [line] = result.stderr.strip().splitlines()
        assert "sekr1t" not in line and "p4rt" not in line, line
        assert "write an '@' of the password as %40" in line
    escaped = resolve_url("postgresql://hpo:sekr1t%40p4rt@127.0.0.1:1/hpo")  # the way it is written
    assert sqlalchemy.engine.make_url(escaped).password == "sekr1t@p4rt"


def test_only_a_password_from_the_file_is_left_out_of_the_childrens_url(tmp_path):
    from storage.url import url_for_children

    secret = tmp_path / "secret"
    secret.write_text("from-file-1\n")
    secret.chmod(0o600)
    env = password_env(secret)
    assert url_for_children(resolve_url("postgresql://hpo@db/hpo", env), env) == "postgresql+psycopg://hpo@db/hpo"
    typed = resolve_url("postgresql://hpo:typed-2@db/hpo", env)  # given in the URL: the children need it
    assert url_for_children(typed, env) == typed
    assert url_for_children(resolve_url("postgresql://hpo@db/hpo", env), {}) == "postgresql+psycopg://hpo:from-file-1@db/hpo"

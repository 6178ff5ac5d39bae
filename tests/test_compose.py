"""docker-compose.yml, without Docker: its shape, and its services run as local processes.

No Docker engine runs here, so the cluster is tested two ways. The file's structure is read
with a YAML parser (and validated by `docker-compose config -q` where that is installed, as CI
does). Then each service's own `command` and `environment` run as local processes against the
local PostgreSQL: the `db` host becomes 127.0.0.1 and the database a fresh test database, the
secret file a temporary file, the dashboard's port a free one. The campaign must finish with
nothing lost or repeated, and the dashboard must answer on the same database.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.ledger import assert_nothing_lost_or_repeated
from tests.pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SECRET_IN_CONTAINER = "/run/secrets/db_password"
HPO_SERVICES = ("init", "coordinator", "worker", "dashboard")
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ``${NAME}`` / ``${NAME:-default}`` substitution, in every string of ``value``."""
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            got = env.get(m["name"])
            return got if got else (m["default"] or "")
        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def service_env(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# -- the file ----------------------------------------------------------------------------------
def test_the_compose_file_has_every_service_wired_to_one_database():
    compose = load_compose()
    services = compose["services"]
    assert set(services) >= {"db", *HPO_SERVICES}

    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert db["healthcheck"]["test"]
    volume = db["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "the database lives on a named volume"
    db_env = service_env(db)
    assert db_env["POSTGRES_PASSWORD_FILE"] == SECRET_IN_CONTAINER and "POSTGRES_PASSWORD" not in db_env
    assert "db_password" in db["secrets"]

    for name in HPO_SERVICES:
        service, env = services[name], service_env(services[name])
        url = make_url(env["HPO_STORAGE"])
        assert url.password is None, f"{name}: a password in HPO_STORAGE"
        assert (url.host, url.username, url.database) == ("db", db_env["POSTGRES_USER"], db_env["POSTGRES_DB"])
        assert env["HPO_DB_PASSWORD_FILE"] == SECRET_IN_CONTAINER and "db_password" in service["secrets"]
        assert isinstance(service["command"], list), f"{name}: exec form, so signals reach the command"
        int(env["HPO_HEARTBEAT_INTERVAL"]), int(env["HPO_HEARTBEAT_GRACE"])  # noqa: B018 - both must be ints

    assert services["init"]["command"] == ["hpo", "init"]
    assert services["init"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("coordinator", "worker", "dashboard"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    coordinator, worker = services["coordinator"]["command"], services["worker"]["command"]
    assert coordinator[:2] == ["hpo", "search"] and flag(coordinator, "--workers") == "0"
    assert worker[:2] == ["hpo", "worker"] and flag(worker, "--campaign") == flag(coordinator, "--name")
    assert services["worker"]["deploy"]["replicas"] >= 2
    dashboard = services["dashboard"]
    assert (ROOT / dashboard["command"][1]).is_file() and "--port" in dashboard["command"]
    assert all(p.startswith("127.0.0.1:") for p in dashboard["ports"]), "the dashboard is not published to the network"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)


def test_the_password_comes_from_an_ignored_file_never_from_the_compose_file():
    compose = load_compose()
    for name, service in compose["services"].items():
        for key, value in service_env(service).items():
            if "PASSWORD" in key.upper():
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), f"{name}: {key}={value}"
    for text in _strings(compose):
        if "://" in text:
            assert make_url(text).password is None, f"a password in {text!r}"
    secret = yaml.safe_load(COMPOSE.read_text())["secrets"]["db_password"]["file"]
    default = _VAR.fullmatch(secret)["default"]
    assert default == "./secrets/db_password"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", default], cwd=ROOT)
        assert ignored.returncode == 0, f"{default} is not ignored by git"


def test_docker_compose_validates_the_file(tmp_path):
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (CI installs it)")
    secret = tmp_path / "db_password"
    secret.write_text("dummy\n")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "HPO_DB_PASSWORD_FILE_HOST": str(secret)})
    assert result.returncode == 0, result.stderr


# -- connections per process ----------------------------------------------------------------------
def connections_per_process() -> int:
    """What one hpo process may hold: the pool of ``storage.backend.engine_kwargs``."""
    from storage import backend

    kwargs = backend.engine_kwargs("postgresql+psycopg://hpo@db/hpo")
    return kwargs["pool_size"] + kwargs["max_overflow"]


def test_the_compose_file_and_the_cluster_docs_give_the_connections_each_process_holds():
    compose_says = re.findall(r"#.*?(\d+) connections", COMPOSE.read_text())
    docs_say = re.findall(r"\*\*at most (\d+) connections\*\*", (ROOT / "docs" / "cluster.md").read_text())
    assert compose_says and docs_say
    assert {int(n) for n in compose_says + docs_say} == {connections_per_process()}


def _server_sockets(port: int) -> set[str]:
    """Inodes of the established TCP connections to ``port`` on this machine (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    return inodes


def _sockets_held(pid: int, inodes: set[str]) -> int:
    held = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the connections of each process from Linux's /proc")
def test_no_hpo_process_holds_more_connections_than_the_docs_say(postgres_url, tmp_path):
    """A whole search with two local workers; each process's connections to the server sampled
    every 20 ms."""
    port = make_url(postgres_url).port or 5432
    with open(tmp_path / "search.log", "wb") as log:
        search = subprocess.Popen(
            [sys.executable, "-m", "hpo", "search", "--name", "pooled", "--workers", "2", "--stages", "2", "--trials", "6,3",
             "--epochs", "1,2", "--param", "hidden_sizes=32", "--no-report", "--storage", postgres_url],
            cwd=tmp_path, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=log,
        )
    peaks: dict[int, int] = {}
    try:
        while search.poll() is None:
            inodes = _server_sockets(port)
            for pid in (search.pid, *_children(search.pid)):
                peaks[pid] = max(peaks.get(pid, 0), _sockets_held(pid, inodes))
            time.sleep(0.02)
        assert search.wait() == 0, (tmp_path / "search.log").read_text()
    finally:
        if search.poll() is None:
            search.kill()
    assert sum(peak > 0 for peak in peaks.values()) == 3, peaks  # the coordinator and both workers were seen
    assert max(peaks.values()) <= connections_per_process(), peaks


# -- the services as local processes ------------------------------------------------------------
@pytest.mark.slow
def test_the_compose_services_run_a_campaign_as_local_processes(postgres_url, tmp_path):
    settings = {"HPO_CAMPAIGN": "composed", "HPO_STAGES": "2", "HPO_TRIALS": "4,3", "HPO_EPOCHS": "2,3",
                "HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3"}
    compose = load_compose(settings)
    services = compose["services"]
    secret = tmp_path / "db_password"
    secret.write_text("compose-test-pw-9c2d\n")  # trust authentication ignores it
    port = free_port()

    def local(name: str) -> tuple[list[str], dict[str, str]]:
        service = services[name]
        env = service_env(service)
        url = make_url(env["HPO_STORAGE"])
        assert url.host == "db"
        env["HPO_STORAGE"] = make_url(postgres_url).set(drivername=url.drivername).render_as_string(hide_password=False)
        env["HPO_DB_PASSWORD_FILE"] = str(secret)
        argv = list(service["command"])
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(port)
        argv = [sys.executable, "-m", "hpo", *argv[1:]] if argv[0] == "hpo" else [sys.executable, *argv[1:]]
        keep = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
        return argv, {**keep, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **env}

    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}

    def start(name: str, label: str | None = None) -> subprocess.Popen:
        label = label or name
        argv, env = local(name)
        logs[label] = tmp_path / f"{label}.log"
        out = open(tmp_path / f"{label}.out", "wb")
        # A service with a working folder of its own (the coordinator's results) gets a temporary one.
        cwd = tmp_path if services[name].get("working_dir") else ROOT
        with open(logs[label], "wb") as err:
            procs[label] = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        out.close()
        return procs[label]

    def finish(label: str, timeout: float) -> str:
        try:
            code = procs[label].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{label} still running after {timeout}s:\n{logs[label].read_text()[-3000:]}") from None
        text = logs[label].read_text(errors="replace")
        assert code == 0, f"{label} exited {code}:\n{text[-3000:]}"
        return text

    try:
        start("init")
        finish("init", 120)  # depends_on: service_completed_successfully
        start("coordinator")
        replicas = services["worker"]["deploy"]["replicas"]
        for i in range(replicas):
            start("worker", f"worker-{i}")
        start("dashboard")

        studies = _wait_for_dashboard(port, procs["dashboard"], logs["dashboard"])
        assert isinstance(studies, list)

        coordinator_log = finish("coordinator", 300)
        worker_logs = "".join(finish(f"worker-{i}", 60) for i in range(replicas))
        summary = json.loads((tmp_path / "coordinator.out").read_text())
        assert [s["study"] for s in summary["stages"]] == ["composed/stage-1", "composed/stage-2"]
        assert (tmp_path / summary["report"]).is_file() and (tmp_path / summary["model"]).is_file()
        shown = _get_json(port, "/api/studies")["study_summaries"]
        assert {"composed/stage-1", "composed/stage-2"} <= {s["study_name"] for s in shown}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    assert_nothing_lost_or_repeated(postgres_url, "composed")
    # What `docker compose logs` shows: the coordinator's progress as plain lines, each stage to
    # its budget (no terminal: no bars, no escape codes), and each trial as a worker ended it.
    assert "stage 1/2 · 2 epochs: 4/4 finished" in coordinator_log, coordinator_log
    assert "stage 2/2 · 3 epochs: 3/3 finished" in coordinator_log, coordinator_log
    assert "\x1b" not in coordinator_log and "\r" not in coordinator_log
    ended = re.findall(r"trial \d+ of composed/stage-\d: (?:COMPLETE|PRUNED|DIVERGED|FAIL)\b.*; .*learning_rate=", worker_logs)
    assert len(ended) >= 7, worker_logs
    everything = "".join(path.read_text(errors="replace") for path in tmp_path.glob("*.log"))
    assert "compose-test-pw-9c2d" not in everything


def _get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.status == 200
        return json.loads(response.read())


def _wait_for_dashboard(port: int, process: subprocess.Popen, log: Path, timeout: float = 60):
    """The dashboard's page and its list of studies, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the dashboard exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.status == 200
            return _get_json(port, "/api/studies")["study_summaries"]
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not answer within {timeout}s:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.2)

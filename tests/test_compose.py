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
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.local_cluster import PASSWORD_FILE, SMALL_CAMPAIGN, Container, run_campaign

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SECRET_IN_CONTAINER = f"/run/secrets/{PASSWORD_FILE}"
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
def container(service: dict) -> Container:
    """What a service's container runs: compose's ``command`` replaces the image's CMD, and its
    secrets appear under /run/secrets."""
    return Container(list(service["command"]), service_env(service), secrets_at=SECRET_IN_CONTAINER.rsplit("/", 1)[0])


@pytest.mark.slow
def test_the_compose_services_run_a_campaign_as_local_processes(postgres_url, tmp_path):
    services = load_compose({"HPO_CAMPAIGN": "composed", **SMALL_CAMPAIGN})["services"]
    run_campaign(tmp_path, postgres_url, "composed", db_host="db", schema=[container(services["init"])],
                 coordinator=container(services["coordinator"]),
                 workers=[container(services["worker"])] * services["worker"]["deploy"]["replicas"],
                 dashboard=container(services["dashboard"]))

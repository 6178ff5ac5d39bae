"""docker-compose.yml for real: its images, its services on a Docker engine, a campaign run
through them while a worker container is killed and the database container restarted.

The project's own compose file runs with one override file, written here, that only swaps the
images this machine cannot pull (PostgreSQL, made from Debian's packages, and the project's
image built on an offline Debian base: tests/dockerized.py); the campaign is made small through
the compose file's own settings (HPO_TRIALS, HPO_EPOCHS, ...). Then, as a user would check:

* the schema step (init) completes, and `--scale worker=3` runs three workers;
* every process of the hpo containers runs as the image's non-root user;
* a worker container killed (SIGKILL) in the middle of a trial, and the database container
  restarted while trials train, lose nothing and repeat nothing (tests/ledger.py, read through
  the database container's address with hpo's own reader);
* the coordinator ends with the campaign's JSON summary in its log, and optuna-dashboard lists
  the campaign's studies;
* the database password, generated here, is in no `docker inspect`, no process's command line
  or environment, no log;
* `docker-compose down -v` leaves no container, network or volume behind.

Each phase's time is printed. Marked ``docker``: skipped with a reason without a Docker engine,
an error with HPO_REQUIRE_DOCKER=1 (as in CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
import urllib.error
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests import dockerized
from tests.dockerized import run
from tests.ledger import assert_nothing_lost_or_repeated
from tests.pgcluster import free_port
from tests.local_cluster import get_json
from tests.test_faults import retry_taken, running, trial_state, wait_until
from workers import stageplan

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CAMPAIGN = "dockered"
SETTINGS = {
    "HPO_CAMPAIGN": CAMPAIGN, "HPO_STAGES": "2", "HPO_TRIALS": "10,6", "HPO_EPOCHS": "30,30",
    "HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3",
}
STAGES = [stageplan.stage_study_name(CAMPAIGN, stage) for stage in (1, 2)]
WORKERS = 3
HPO_SERVICES = ("init", "coordinator", "worker", "dashboard")
HPO_UID = 10001  # the Dockerfile's user
LABEL = "com.docker.compose"


class Phases:
    """How long each phase took, printed as it ends."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.times[name] = time.monotonic() - started
            print(f"[{name}] {self.times[name]:.1f}s", flush=True)

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = seconds
        print(f"[{name}] {seconds:.1f}s", flush=True)


class Cluster:
    """One compose project: the project's file plus the override, under a unique project name."""

    def __init__(self, project: str, override: Path, env: dict[str, str], password: str) -> None:
        self.project, self.env, self.password = project, env, password
        self.argv = [*dockerized.compose_command(), "-p", project, "-f", str(dockerized.ROOT / "docker-compose.yml"),
                     "-f", str(override)]

    def compose(self, *args: str, timeout: float = 300) -> str:
        return run([*self.argv, *args], timeout=timeout, env=self.env, cwd=dockerized.ROOT).stdout

    def containers(self, service: str | None = None) -> list[str]:
        """Ids of the project's containers (of ``service``), running or not."""
        filters = ["--filter", f"label={LABEL}.project={self.project}"]
        if service:
            filters += ["--filter", f"label={LABEL}.service={service}"]
        return run(["docker", "ps", "-aq", "--no-trunc", *filters]).stdout.split()

    def one(self, service: str) -> str:
        ids = self.containers(service)
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def db_url(self) -> str:
        """The database, through the db container's address on the project's network (looked up
        each time: a restarted container may get another one)."""
        ip = inspect(self.one("db"))["NetworkSettings"]["Networks"]
        address = next(iter(ip.values()))["IPAddress"]
        return URL.create("postgresql+psycopg", username="hpo", password=self.password, host=address, port=5432,
                          database="hpo").render_as_string(hide_password=False)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", timeout=60)


def inspect(container: str) -> dict:
    return json.loads(run(["docker", "inspect", container]).stdout)[0]


def processes(container: str) -> list[dict[str, str]]:
    """The processes of a running container as `ps` shows them on the host (`docker top`): uid,
    pid, and the command line followed by the environment."""
    lines = run(["docker", "top", container, "-eo", "uid,pid,args", "eww"]).stdout.splitlines()
    rows = []
    for line in lines[1:]:
        uid, pid, args = line.split(None, 2)
        rows.append({"uid": uid, "pid": pid, "args": args})
    return rows


def worker_of(trial_worker: str, workers: list[str]) -> str:
    """The container of a trial's ``worker`` attr (``HOSTNAME-PID``: a container's hostname is
    the start of its id)."""
    hostname = trial_worker.rsplit("-", 1)[0]
    found = [c for c in workers if c.startswith(hostname)]
    assert len(found) == 1, (trial_worker, workers)
    return found[0]


def fresh_trial(cluster: Cluster):
    """A poll: (study, trial) of a trial seen RUNNING with its parameters now and not at the poll
    before, so one in its first epochs (as tests/test_faults.py's FreshTrial, in any stage)."""
    before: set[tuple[str, int]] | None = None

    def poll():
        nonlocal before
        url = cluster.db_url()
        mine = [(s, r) for s in STAGES for r in running(url, s) if r.worker and r.sampled]
        seen, before = before, {(s, r.number) for s, r in mine}
        return next(((s, r) for s, r in mine if seen is not None and (s, r.number) not in seen), None)

    return poll


def exited(container: str) -> int | None:
    state = inspect(container)["State"]
    return None if state["Running"] or state["Restarting"] else state["ExitCode"]


def test_the_compose_file_runs_a_campaign_through_faults_on_docker(tmp_path):
    phases = Phases()
    project = f"hpotest{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    (tmp_path / "secrets").mkdir(mode=0o700)  # as docker-compose.yml says to keep it
    secret = tmp_path / "secrets" / "db_password"
    secret.write_text(password + "\n")
    secret.chmod(0o644)
    port = free_port()
    images = dockerized.image_names(project)
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(
        "# Images this machine cannot pull, made offline by tests/dockerized.py.\n"
        "services:\n"
        f"  db:\n    image: {images['postgres']}\n"
        + "".join(f"  {service}:\n    image: {images['hpo']}\n" for service in HPO_SERVICES)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(SETTINGS, HPO_DB_PASSWORD_FILE_HOST=str(secret), HPO_DASHBOARD_PORT=str(port))
    cluster = Cluster(project, override, env, password)

    with phases("images"):
        for name, seconds in dockerized.build_images(images).items():
            phases.add(f"images: {name}", seconds)
    try:
        with phases("up: db healthy, init done, services started"):
            cluster.compose("up", "-d", "--no-build", "--scale", f"worker={WORKERS}")
        init = cluster.one("init")
        assert exited(init) == 0, run(["docker", "logs", init]).stderr
        workers = cluster.containers("worker")
        assert len(workers) == WORKERS and all(exited(w) is None for w in workers), workers

        seen: list[tuple[str, str]] = []  # (where, text) that must not hold the password
        with phases("every hpo process runs as the image's user"):
            for service in ("coordinator", "worker", "dashboard"):
                for container in cluster.containers(service):
                    rows = processes(container)
                    assert rows, f"{service}: no process"
                    assert {r["uid"] for r in rows} == {str(HPO_UID)}, f"{service}: {rows}"
                    seen += [(f"ps of {service}", r["args"]) for r in rows]
            assert inspect(init)["Config"]["User"] == "hpo"  # it has exited: its user, as the image says
            seen += [("ps of db", r["args"]) for r in processes(cluster.one("db"))]

        with phases("a worker container killed in the middle of a trial"):
            study, target = wait_until(fresh_trial(cluster), 120, "a worker in the middle of a trial")
            victim = worker_of(target.worker, workers)
            run(["docker", "kill", victim])
            wait_until(lambda: trial_state(cluster.db_url(), study, target.number) == "FAIL", 60,
                       f"trial {target.number} of {study} to be failed as stale")
            wait_until(lambda: retry_taken(cluster.db_url(), study, target.number), 60, "its retry to be taken")
        assert inspect(victim)["State"]["ExitCode"] == 128 + signal.SIGKILL
        print(f"killed the worker of trial {target.number} of {study}; the trial was failed and retried", flush=True)

        with phases("the db container restarted while trials train"):
            wait_until(lambda: any(running(cluster.db_url(), s) for s in STAGES), 120, "a trial in training")
            run(["docker", "restart", "-t", "10", cluster.one("db")])

        with phases("the campaign finishes"):
            coordinator = cluster.one("coordinator")
            def ended() -> bool:
                assert inspect(coordinator)["RestartCount"] == 0, run(["docker", "logs", coordinator]).stderr[-3000:]
                return exited(coordinator) is not None
            wait_until(ended, 420, "the coordinator to exit")
        logs = run(["docker", "logs", coordinator])
        assert exited(coordinator) == 0, logs.stderr[-3000:]
        summary = json.loads(logs.stdout)
        assert [s["study"] for s in summary["stages"]] == STAGES
        # The report and the model, in the coordinator's working folder (the results volume).
        assert (summary["report"], summary["model"]) == (f"{CAMPAIGN}-report.html", f"{CAMPAIGN}-best.npz"), logs.stderr
        run(["docker", "cp", f"{coordinator}:{inspect(coordinator)['Config']['WorkingDir']}/{summary['report']}",
             str(tmp_path)])
        assert "<html" in (tmp_path / summary["report"]).read_text()
        for worker in workers:
            if worker != victim:
                wait_until(lambda w=worker: exited(w) is not None, 60, "the workers to exit")
                assert exited(worker) == 0, run(["docker", "logs", worker]).stderr[-3000:]

        with phases("nothing lost or repeated"):
            ledger = assert_nothing_lost_or_repeated(cluster.db_url(), CAMPAIGN, exact_budget=False)
            assert target.number in ledger.failed[study] and target.number in ledger.retries[study]

        with phases("the dashboard lists the studies"):
            def listed():
                with contextlib.suppress(OSError, urllib.error.URLError):
                    return {s["study_name"] for s in get_json(port, "/api/studies")["study_summaries"]}
            assert set(STAGES) <= wait_until(listed, 60, "the dashboard to answer")

        made = run(["docker", "volume", "ls", "-q", "--filter", f"label={LABEL}.project={project}"]).stdout.split()
        assert {f"{project}_pgdata", f"{project}_results"} <= set(made), made

        with phases("the password in no inspect, process or log"):
            seen += [("docker-compose logs", cluster.logs()), ("the coordinator's log", logs.stdout + logs.stderr)]
            for container in cluster.containers():
                name = inspect(container)["Name"]
                seen.append((f"docker inspect {name}", json.dumps(inspect(container))))
                if exited(container) is None:
                    seen += [(f"ps of {name}", r["args"]) for r in processes(container)]
            assert not [where for where, text in seen if password in text]  # where, never the text
    except BaseException:
        with contextlib.suppress(Exception):  # what the services said, to see why (the password masked)
            print(f"--- docker-compose logs (last lines) ---\n{cluster.logs().replace(password, '***')[-6000:]}")
        raise
    finally:
        with phases("down -v"):
            cluster.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=180)
            run(["docker", "image", "rm", *images.values()], check=False)
    label = f"label={LABEL}.project={project}"
    assert run(["docker", "ps", "-aq", "--filter", label]).stdout.split() == []
    assert run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split() == []
    assert run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split() == []
    print("phases: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in phases.times.items()))

"""A cluster file's containers run as local processes, against a fresh test database.

No Docker engine and no Kubernetes cluster run here. So tests/test_compose.py and
tests/test_kubernetes.py each read their own files (docker-compose.yml, deploy/kubernetes/)
into :class:`Container` values, what each container would run, and hand them to
:func:`run_campaign`, which runs them the one same way:

1. every container becomes a local process: ``hpo ...`` is ``python -m hpo ...`` of this
   checkout, ``python SCRIPT`` runs the checkout's script (the image's working folder holds the
   project as the checkout does); the host of ``HPO_STORAGE`` becomes the test database; the
   folder the secret is mounted at becomes a temporary folder holding the password file; the
   dashboard's ``--port`` becomes a free port; each process runs in a scratch folder of its own;
2. the schema step(s) run, all at once, and must exit 0;
3. the coordinator, the workers and the dashboard start together, on the small campaign of
   :data:`SMALL_CAMPAIGN`; the dashboard must answer, the coordinator end with the campaign as
   JSON, every worker exit 0;
4. then what a user would check: nothing lost or repeated in the database, the coordinator's
   progress lines, each trial logged by the worker that ended it, no password in any log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from sqlalchemy.engine import make_url

from tests.ledger import assert_nothing_lost_or_repeated
from tests.pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD_FILE = "db_password"  # the secret's file name in both cluster files
# A small campaign, set the way a user would: these override the cluster file's settings.
SMALL_CAMPAIGN = {"HPO_STAGES": "2", "HPO_TRIALS": "4,3", "HPO_EPOCHS": "2,3",
                  "HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3"}
_TEST_PASSWORD = "cluster-test-pw-9c2d"  # trust authentication ignores it; it must show in no log


@dataclass(frozen=True)
class Container:
    """What one container runs, as its cluster file says: the argv (without the image's
    entrypoint, tini), the environment, and where the database secret's files appear in it."""

    argv: list[str]
    env: dict[str, str]
    secrets_at: str


class LocalProcesses:
    """Processes started by label, each with its stderr in LABEL.log and its stdout in LABEL.out
    under ``folder``; whatever still runs on leaving is terminated (then killed)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def log(self, label: str) -> str:
        return (self.folder / f"{label}.log").read_text(errors="replace")

    def out(self, label: str) -> str:
        return (self.folder / f"{label}.out").read_text(errors="replace")

    def start(self, label: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        cwd = self.folder / label  # the container's own working folder
        cwd.mkdir()
        with open(self.folder / f"{label}.out", "wb") as out, open(self.folder / f"{label}.log", "wb") as err:
            self.procs[label] = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        return self.procs[label]

    def finish(self, label: str, timeout: float) -> str:
        """Wait for ``label`` to exit 0 and return its stderr."""
        try:
            code = self.procs[label].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{label} still running after {timeout}s:\n{self.log(label)[-3000:]}") from None
        assert code == 0, f"{label} exited {code}:\n{self.log(label)[-3000:]}"
        return self.log(label)


def localize(container: Container, *, db_host: str, postgres_url: str, secrets: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``container`` here (step 1 of the module's docstring)."""
    env = dict(container.env)
    url = make_url(env["HPO_STORAGE"])
    assert url.host == db_host, f"HPO_STORAGE names the host {url.host!r}, not the database's {db_host!r}"
    assert url.password is None, "a password in HPO_STORAGE"
    env["HPO_STORAGE"] = make_url(postgres_url).set(drivername=url.drivername).render_as_string(hide_password=False)
    for key, value in env.items():
        if value.startswith(container.secrets_at.rstrip("/") + "/"):
            env[key] = str(secrets / value[len(container.secrets_at):].lstrip("/"))
    argv = list(container.argv)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    if argv[0] == "hpo":
        argv = [sys.executable, "-m", "hpo", *argv[1:]]
    else:
        assert argv[0] == "python" and (ROOT / argv[1]).is_file(), f"not an hpo command or a script of the project: {argv}"
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return argv, {**keep, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **env}


def run_campaign(tmp_path: Path, postgres_url: str, campaign: str, *, db_host: str, schema: list[Container],
                 coordinator: Container, workers: list[Container], dashboard: Container) -> None:
    """Run the cluster's containers as local processes and check the campaign (the module's docstring)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / PASSWORD_FILE).write_text(_TEST_PASSWORD + "\n")
    port = free_port()

    def local(c: Container):
        return localize(c, db_host=db_host, postgres_url=postgres_url, secrets=secrets, port=port)

    with LocalProcesses(tmp_path) as run:
        for i, container in enumerate(schema):
            run.start(f"schema-{i}", *local(container))
        for i in range(len(schema)):
            run.finish(f"schema-{i}", 120)
        run.start("coordinator", *local(coordinator))
        for i, worker in enumerate(workers):
            run.start(f"worker-{i}", *local(worker))
        run.start("dashboard", *local(dashboard))

        studies = wait_for_dashboard(port, run.procs["dashboard"], tmp_path / "dashboard.log")
        assert isinstance(studies, list)

        coordinator_log = run.finish("coordinator", 300)
        worker_logs = "".join(run.finish(f"worker-{i}", 60) for i in range(len(workers)))
        summary = json.loads(run.out("coordinator"))
        assert [s["study"] for s in summary["stages"]] == [f"{campaign}/stage-1", f"{campaign}/stage-2"]
        # the report and the model, written in the coordinator's working folder
        assert (run.folder / "coordinator" / summary["report"]).is_file(), summary
        assert (run.folder / "coordinator" / summary["model"]).is_file(), summary
        shown = get_json(port, "/api/studies")["study_summaries"]
        assert {f"{campaign}/stage-1", f"{campaign}/stage-2"} <= {s["study_name"] for s in shown}

    assert_nothing_lost_or_repeated(postgres_url, campaign)
    # What the cluster's logs show: the coordinator's progress as plain lines, each stage to its
    # budget (no terminal: no bars, no escape codes), and each trial as a worker ended it.
    assert "stage 1/2 · 2 epochs: 4/4 finished" in coordinator_log, coordinator_log
    assert "stage 2/2 · 3 epochs: 3/3 finished" in coordinator_log, coordinator_log
    assert "\x1b" not in coordinator_log and "\r" not in coordinator_log
    ended = re.findall(rf"trial \d+ of {campaign}/stage-\d: (?:COMPLETE|PRUNED|DIVERGED|FAIL)\b.*; .*learning_rate=", worker_logs)
    assert len(ended) >= 7, worker_logs
    everything = "".join(path.read_text(errors="replace") for path in tmp_path.glob("*.log"))
    assert _TEST_PASSWORD not in everything


def get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.status == 200
        return json.loads(response.read())


def wait_for_dashboard(port: int, process: subprocess.Popen, log: Path, timeout: float = 60):
    """The dashboard's page and its list of studies, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the dashboard exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.status == 200
            return get_json(port, "/api/studies")["study_summaries"]
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not answer within {timeout}s:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.2)

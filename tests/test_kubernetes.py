"""deploy/kubernetes/, without a cluster: valid manifests, in step with docker-compose.yml, and their
containers run as local processes.

Three checks. Every manifest validates offline against the Kubernetes API's schemas (the
``kubernetes-validate`` package ships them; strict: an unknown field fails). The manifests and
docker-compose.yml agree on everything they share (command lines, heartbeat settings, the grace
period, the worker count, the database), so neither drifts from the other. And, as
tests/test_compose.py does for compose, every container's own args, ConfigMap environment and
Secret mount run as local processes (tests/local_cluster.py) against a fresh PostgreSQL
database: the schema steps, then the coordinator, the workers and the dashboard on a small
campaign.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from storage.backend import HEARTBEAT_ENV
from tests.helpers import sql
from tests.local_cluster import PASSWORD_FILE, SMALL_CAMPAIGN, Container, run_campaign
from tests.test_compose import load_compose, service_env

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
OPTIONAL = {"postgres.yaml"}  # applied on its own, only without a PostgreSQL of your own
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())  # the oldest the docs name, the newest shipped
IMAGE = "hpo:latest"
SECRET = "hpo-db"
SETTINGS = "hpo-settings"
UID = 10001  # the Dockerfile's user
_REF = re.compile(r"\$\$|\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict]:
    """(kind, name) -> manifest, over every file of the folder."""
    found = {}
    for path in manifest_files():
        for doc in load(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} twice"
            found[key] = doc
    return found


def pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def hpo_pods() -> dict[str, dict]:
    """Every pod template that runs the hpo image, by its workload's name."""
    return {name: pod(doc) for (kind, name), doc in resources().items()
            if kind in ("Job", "Deployment") and any(c["image"] == IMAGE for c in pod(doc)["containers"])}


def containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(NAME)`` in a container's args: the container's variable, ``$$`` a ``$``,
    and an unknown name left as it is."""
    return _REF.sub(lambda m: "$" if m[0] == "$$" else env.get(m["name"], m[0]), value)


def container_env(container: dict, configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment Kubernetes gives ``container``: envFrom ConfigMaps, then env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
        else:
            ref = entry["valueFrom"]["configMapKeyRef"]
            env[entry["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


def configmaps(overrides: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    maps = {name: dict(doc["data"]) for (kind, name), doc in resources().items() if kind == "ConfigMap"}
    maps[SETTINGS].update(overrides or {})
    return maps


def secret_mount(pod_spec: dict, container: dict) -> str:
    """Where the database Secret is mounted in ``container`` (exactly one place, read-only)."""
    secret_volumes = {v["name"] for v in pod_spec["volumes"] if v.get("secret", {}).get("secretName") == SECRET}
    mounts = [m for m in container.get("volumeMounts", []) if m["name"] in secret_volumes]
    assert len(mounts) == 1 and mounts[0].get("readOnly"), f"{container['name']}: mount the Secret {SECRET} once, read-only"
    return mounts[0]["mountPath"]


def as_local(pod_spec: dict, container: dict, maps: dict[str, dict[str, str]]) -> Container:
    """What ``container`` runs: its args (the image's entrypoint, tini, runs them) with ``$(NAME)``
    expanded from its environment, that environment, and where its Secret is mounted."""
    env = container_env(container, maps)
    return Container([expand(a, env) for a in container["args"]], env, secrets_at=secret_mount(pod_spec, container))


def parse_duration(text: str) -> int:
    """Compose's ``2m``, ``1m30s``, ``90s`` in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and any(parts.groups()), text
    h, m, s = (int(g or 0) for g in parts.groups())
    return 3600 * h + 60 * m + s


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def documented_secret_command() -> list[str]:
    """The ``kubectl create secret generic`` line of docs/cluster.md's Kubernetes section."""
    docs = (ROOT / "docs" / "cluster.md").read_text()
    section = docs[docs.index("## Kubernetes"):]
    line = re.search(r"^kubectl .*create secret generic .*$", section, re.MULTILINE)
    assert line, "docs/cluster.md does not show how to create the Secret"
    return shlex.split(line[0].split("#")[0])


# -- the manifests are valid ----------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path, version):
    for doc in load(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path)
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} at {where}: {e.message} (Kubernetes {version})")


def test_the_validation_catches_a_misspelt_field():
    """The check above is strict: a field the API does not know fails it, as ``kubectl apply`` would."""
    worker = copy.deepcopy(resources()[("Job", "hpo-worker")])
    pod(worker)["containers"][0]["resource"] = {"requests": {"cpu": "1"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="'resource' was unexpected"):
        kubernetes_validate.validate(worker, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_applies_every_manifest_but_the_optional_database():
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files() if p.name not in OPTIONAL)
    assert not {"secretGenerator", "configMapGenerator"} & set(kustomization), "the Secret is made by kubectl, the settings are settings.yaml"


# -- the manifests' shape ----------------------------------------------------------------------------
def test_every_hpo_container_runs_the_image_as_uid_10001_without_privileges():
    pods = hpo_pods()
    assert set(pods) == {"hpo-init", "hpo-coordinator", "hpo-worker", "hpo-dashboard"}
    for name, spec in pods.items():
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == UID, name
        assert security.get("fsGroup") == UID, f"{name}: the password file (mode 0440) is readable by the group"
        assert spec.get("automountServiceAccountToken") is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(spec):
            where = f"{name}/{c['name']}"
            assert c["image"] == IMAGE and c["imagePullPolicy"] == "IfNotPresent", where
            assert "command" not in c, f"{where}: args, not command, so that tini stays PID 1"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert [s["configMapRef"]["name"] for s in c["envFrom"]] == [SETTINGS], where
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp"], f"{where}: a writable /tmp on a read-only root"
            if "workingDir" in c:
                assert "emptyDir" in mounts[c["workingDir"]], f"{where}: its working folder is writable"
            secret_mount(spec, c)
        (secret,) = [v["secret"] for v in spec["volumes"] if "secret" in v]
        assert secret["defaultMode"] == 0o440, name


def test_the_password_is_only_a_mounted_file_named_by_hpo_db_password_file():
    found = resources()
    assert not [key for key in found if key[0] == "Secret"], "no Secret in the repository: kubectl makes it from your file"
    settings = found[("ConfigMap", SETTINGS)]["data"]
    assert make_url(settings["HPO_STORAGE"]).password is None
    for (kind, name), doc in found.items():
        for text in re.findall(r"\w+://\S+", yaml.safe_dump(doc)):
            assert make_url(text.rstrip("'\",")).password is None, f"{kind} {name}: a password in {text}"
        if kind in ("Job", "Deployment", "StatefulSet"):
            for c in containers(pod(doc)):
                env = container_env(c, configmaps())
                for key, value in env.items():
                    if "PASSWORD" in key:
                        assert key.endswith("_FILE"), f"{name}/{c['name']}: {key}"
                        assert value.startswith(secret_mount(pod(doc), c) + "/"), f"{name}/{c['name']}: {key}={value}"
    # The file name the containers read is the key the documented command gives the Secret.
    command = documented_secret_command()
    assert command[command.index("generic") + 1] == SECRET
    assert command[command.index("-n") + 1] == yaml.safe_load((KUBE / "kustomization.yaml").read_text())["namespace"]
    keys = [arg.split("=", 2)[1] for arg in command if arg.startswith("--from-file=")]
    assert keys == [Path(settings["HPO_DB_PASSWORD_FILE"]).name] == [PASSWORD_FILE]


def test_every_pod_creates_the_schema_before_it_starts_and_the_workers_are_an_indexed_job():
    found, pods = resources(), hpo_pods()
    init = pods["hpo-init"]["containers"][0]["args"]
    assert init == ["hpo", "init"]
    for name in ("hpo-coordinator", "hpo-worker", "hpo-dashboard"):
        assert [c["args"] for c in pods[name]["initContainers"]] == [init], f"{name} waits for the schema"

    workers = found[("Job", "hpo-worker")]["spec"]
    assert workers["completionMode"] == "Indexed" and workers["parallelism"] == workers["completions"] >= 2
    (worker,) = pods["hpo-worker"]["containers"]
    assert cpus(worker["resources"]["requests"]["cpu"]) == 1, "one CPU per worker"
    for name in ("hpo-init", "hpo-coordinator", "hpo-worker"):
        assert pods[name]["restartPolicy"] == "OnFailure", f"{name}: restarted after a failure, as in compose"

    deployment, service = found[("Deployment", "hpo-dashboard")], found[("Service", "hpo-dashboard")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (dashboard,) = deployment["spec"]["template"]["spec"]["containers"]
    port = int(dashboard["args"][dashboard["args"].index("--port") + 1])
    (http,) = dashboard["ports"]
    assert http["containerPort"] == port and service["spec"]["ports"][0]["targetPort"] == http["name"]


# -- in step with docker-compose.yml -----------------------------------------------------------------
def test_the_manifests_and_the_compose_file_run_the_same_commands_with_the_same_settings():
    compose = load_compose()["services"]  # its defaults
    maps, pods = configmaps(), hpo_pods()
    for service, workload in [("init", "hpo-init"), ("coordinator", "hpo-coordinator"), ("worker", "hpo-worker"),
                              ("dashboard", "hpo-dashboard")]:
        main = as_local(pods[workload], pods[workload]["containers"][0], maps)
        assert main.argv == compose[service]["command"], f"{workload} runs what compose's {service} runs"
        ours, theirs = main.env, service_env(compose[service])
        assert ours["HPO_DB_PASSWORD_FILE"] == theirs["HPO_DB_PASSWORD_FILE"]
        for key in HEARTBEAT_ENV:
            assert ours[key] == theirs[key] == str(HEARTBEAT_ENV[key]), f"{key}: the code's default, in both files"
        ours_url, theirs_url = make_url(ours["HPO_STORAGE"]), make_url(theirs["HPO_STORAGE"])
        assert (ours_url.drivername, ours_url.username, ours_url.port, ours_url.database) == \
            (theirs_url.drivername, theirs_url.username, theirs_url.port, theirs_url.database)

    workers = resources()[("Job", "hpo-worker")]["spec"]
    assert workers["parallelism"] == compose["worker"]["deploy"]["replicas"]
    grace = parse_duration(compose["worker"]["stop_grace_period"])
    assert pods["hpo-worker"]["terminationGracePeriodSeconds"] == grace, "compose's stop_grace_period"


def test_the_optional_postgres_is_compose_s_database_behind_the_host_of_hpo_storage():
    found = resources()
    db = load_compose()["services"]["db"]
    host = make_url(configmaps()[SETTINGS]["HPO_STORAGE"]).host
    service, statefulset = found[("Service", host)], found[("StatefulSet", host)]
    assert service["spec"]["clusterIP"] == "None" and statefulset["spec"]["serviceName"] == host
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    spec = pod(statefulset)
    (postgres,) = spec["containers"]
    assert postgres["image"] == db["image"] and postgres["args"] == db["command"]
    env = container_env(postgres, {})
    assert {k: v for k, v in env.items() if k.startswith("POSTGRES_")} == service_env(db)
    assert env["POSTGRES_PASSWORD_FILE"].startswith(secret_mount(spec, postgres) + "/")
    assert postgres["readinessProbe"]["exec"]["command"] == shlex.split(db["healthcheck"]["test"][1])
    assert spec["securityContext"]["runAsNonRoot"] is True and postgres["securityContext"]["allowPrivilegeEscalation"] is False


# -- the containers as local processes -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
def test_the_kubernetes_containers_run_a_campaign_as_local_processes(postgres_url, tmp_path):
    maps, pods = configmaps({"HPO_CAMPAIGN": "kubed", **SMALL_CAMPAIGN}), hpo_pods()
    workers = resources()[("Job", "hpo-worker")]["spec"]["parallelism"]

    def run(name: str, *, init: bool = False) -> list[Container]:
        spec = pods[name]
        return [as_local(spec, c, maps) for c in spec["initContainers" if init else "containers"]]

    # Every pod's initContainer at once (pods start together), with the schema Job.
    schema = [*run("hpo-init"), *run("hpo-coordinator", init=True), *run("hpo-worker", init=True) * workers,
              *run("hpo-dashboard", init=True)]
    (coordinator,), (worker,), (dashboard,) = run("hpo-coordinator"), run("hpo-worker"), run("hpo-dashboard")
    run_campaign(tmp_path, postgres_url, "kubed", db_host=make_url(maps[SETTINGS]["HPO_STORAGE"]).host, schema=schema,
                 coordinator=coordinator, workers=[worker] * workers, dashboard=dashboard)
    assert sql(postgres_url, "SELECT COUNT(*) FROM version_info")[0][0] == 1, "the schema was created once"

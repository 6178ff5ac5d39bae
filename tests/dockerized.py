"""A Docker engine for tests/test_compose_docker.py: whether one is here, and the images it needs.

No image can be pulled where the test runs, so the images are made here:

* a Debian bookworm base (Python 3.11, pip, venv, tini, CA certificates), made offline with
  ``debootstrap`` from the Debian mirror the machine's apt already uses, and imported; it is
  kept by name, so only the first run pays for it;
* PostgreSQL 15 from Debian's packages on that base (tests/postgres-image), standing in for
  the official postgres:15 image;
* the project's own Dockerfile, built on that base (build argument ``BASE_IMAGE``).

The last two are named for the run and removed after it; the build cache keeps their layers.

Builds run on the host network, with the package index and CA bundle that pip uses on this
machine (``pip config list``) handed to the build as a build argument and a BuildKit secret,
so nothing about the machine is written into the repository or left in an image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_IMAGE_DIR = Path(__file__).resolve().parent / "postgres-image"
SUITE = "bookworm"  # Debian 12: Python 3.11, PostgreSQL 15
BASE_PACKAGES = "python3,python3-pip,python3-venv,tini,ca-certificates"
BASE_IMAGE = f"hpo-test-base:{SUITE}"


def run(argv: list[str], *, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``argv`` with its output captured as text; a failure shows the command and its output."""
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


# -- what is here --------------------------------------------------------------------------------
def compose_command() -> list[str] | None:
    """``docker-compose`` (v1, as Debian ships it) or ``docker compose`` (v2), whichever is here."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and run(["docker", "compose", "version"], check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    return None


def buildkit_docker() -> tuple[str, dict[str, str]] | None:
    """A docker client on PATH that builds with BuildKit (the Dockerfile mounts a build secret),
    and the environment to run it in: one with the buildx plugin, or one older than 23, whose
    BuildKit is built in and chosen by DOCKER_BUILDKIT=1 (a newer client without buildx has only
    the legacy builder)."""
    seen = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        client = shutil.which("docker", path=folder)
        if not client or os.path.realpath(client) in seen:
            continue
        seen.add(os.path.realpath(client))
        if run([client, "buildx", "version"], check=False, timeout=30).returncode == 0:
            return client, {}
        version = run([client, "version", "--format", "{{.Client.Version}}"], check=False, timeout=30).stdout
        major = re.match(r"\d+", version.strip())
        if major and int(major[0]) < 23:
            return client, {"DOCKER_BUILDKIT": "1"}
    return None


def missing() -> str | None:
    """Why the Docker tests cannot run here, or None."""
    if not shutil.which("docker"):
        return "no docker client on PATH"
    info = run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30)
    if info.returncode != 0:
        return f"no Docker engine answers ({(info.stderr.strip().splitlines() or ['?'])[-1]})"
    if compose_command() is None:
        return "neither docker-compose nor docker compose is installed"
    if buildkit_docker() is None:
        return "no docker client here builds with BuildKit (install buildx, or Debian's docker.io)"
    if not image_exists(BASE_IMAGE) and (not shutil.which("debootstrap") or os.geteuid() != 0):
        return f"the base image {BASE_IMAGE} is not made yet, and making it takes debootstrap, run as root"
    return None


def image_exists(name: str) -> bool:
    return run(["docker", "image", "inspect", name], check=False, timeout=30).returncode == 0


# -- the machine's package sources ---------------------------------------------------------------
def debian_mirror() -> str:
    """The first Debian archive URI that apt's sources on this machine name (deb822 or one-line)."""
    folder = Path("/etc/apt")
    files = [folder / "sources.list", *sorted((folder / "sources.list.d").glob("*.sources")),
             *sorted((folder / "sources.list.d").glob("*.list"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):  # deb822: URIs and Suites in one stanza
            fields = dict(re.findall(r"^(URIs|Suites|Types):\s*(.+)$", stanza, re.MULTILINE))
            if "deb" in fields.get("Types", "").split() and _is_debian(fields.get("Suites", "")):
                return fields["URIs"].split()[0]
        for line in text.splitlines():  # one-line: deb [options] URI SUITE COMPONENTS
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and _is_debian(words[2]):
                return words[1]
    raise AssertionError("no Debian mirror among apt's sources")


def _is_debian(suites: str) -> bool:
    names = {"bookworm", "trixie", "bullseye", "sid", "stable", "testing", "unstable", "oldstable"}
    return any(suite in names for suite in suites.split())


def pip_settings() -> tuple[str | None, str | None]:
    """The index URL and the CA bundle pip uses here (``pip config list``), each None when pip
    uses its defaults. A local (file:) index means nothing inside a container and is left out."""
    listed = run([sys.executable, "-m", "pip", "config", "list"], check=False, timeout=60).stdout
    values = dict(re.findall(r"^\S*?\.([\w-]+)='(.*)'$", listed, re.MULTILINE))
    index = values.get("index-url")
    cert = values.get("cert")
    if index and index.startswith("file:"):
        index = None
    if cert and not Path(cert).is_file():
        cert = None
    return index, cert


# -- images ------------------------------------------------------------------------------------
def make_base_image() -> float:
    """The Debian base, made with debootstrap unless an image of that name exists; the seconds spent."""
    if image_exists(BASE_IMAGE):
        return 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hpo-base-") as folder:
        rootfs = Path(folder) / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs), debian_mirror()],
            timeout=900)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--exclude=./var/cache/apt/archives/*.deb",
                                "--exclude=./var/lib/apt/lists/*_Packages", "-c", "."], stdout=subprocess.PIPE)
        try:
            run(["docker", "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE], stdin=tar.stdout, timeout=600)
        finally:
            tar.stdout.close()
            assert tar.wait(60) == 0, "tar of the base's root file system failed"
    return time.monotonic() - started


def build(tag: str, context: Path, **build_args: str) -> float:
    """``docker build`` on the host network, with pip's index and CA bundle; the seconds spent."""
    client, env = buildkit_docker()
    index, cert = pip_settings()
    argv = [client, "build", "--network", "host", "-t", tag]
    if index:
        argv += ["--build-arg", f"PIP_INDEX_URL={index}"]
    if cert:
        argv += ["--secret", f"id=pip_cert,src={cert}"]
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    started = time.monotonic()
    run([*argv, str(context)], timeout=900, env={**os.environ, **env})
    return time.monotonic() - started


def image_names(run_name: str) -> dict[str, str]:
    """The images of one run: named for it, so that builds of other checkouts on the same engine
    do not swap them (the build cache makes them again at once)."""
    return {"postgres": f"hpo-test-postgres:{run_name}", "hpo": f"hpo-test:{run_name}"}


def build_images(names: dict[str, str]) -> dict[str, float]:
    """The base (kept by name), then PostgreSQL and the project's image (``names``, from
    :func:`image_names`); the seconds each took."""
    return {
        "base image (debootstrap)": make_base_image(),
        "postgres image": build(names["postgres"], POSTGRES_IMAGE_DIR, BASE_IMAGE=BASE_IMAGE),
        "hpo image": build(names["hpo"], ROOT, BASE_IMAGE=BASE_IMAGE),
    }

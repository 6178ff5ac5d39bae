"""A missing optional package is one line naming the extra that installs it, and exit status 2.

Each command runs as a user runs it, in a process of its own, with the package made
unimportable there: a finder first on ``sys.meta_path`` raises the ModuleNotFoundError Python
raises for a package that is not installed (nothing is uninstalled). The test process itself
keeps every package.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hpo.campaign import CampaignSpec
from hpo.extras import EXTRAS, missing_extra
from storage import backend
from workers import stageplan
from workers.data import datasets as datasets_module
from workers.space import build_space

ROOT = Path(__file__).resolve().parent.parent
NO_SERVER = "postgresql://hpo@127.0.0.1:1/hpo"  # the driver's import fails before any connection
NO_SERVERS = {"psycopg": NO_SERVER, "pymysql": "mysql://hpo@127.0.0.1:1/hpo"}  # driver: a storage it serves

# Run in the child before anything else: ``module`` (and its submodules) cannot be imported.
REFUSE = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""
HPO = "import hpo; sys.argv[0] = 'hpo'; hpo.main()"
DASHBOARD = "import runpy; runpy.run_path({path!r}, run_name='__main__')".format(path=str(ROOT / "docker" / "dashboard.py"))


def run_without(module: str, program: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``program`` (Python source) with ``args`` in a new process where ``module`` is not importable."""
    environ = {key: value for key, value in os.environ.items() if key != "HPO_STORAGE"}
    environ.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-c", REFUSE.format(module=module) + program, *args],
                          cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


def the_one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def says_install(module: str) -> str:
    return f"Error: {EXTRAS[module].line()}"


# -- the table ---------------------------------------------------------------------------------
def test_each_optional_package_is_installed_by_the_extra_its_line_names():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in EXTRAS.values():
        requirements = [re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower() for r in extras.get(extra.extra, [])]
        assert extra.distribution in requirements, f"pyproject's {extra.extra!r} extra does not install {extra.distribution}"
        assert f"pip install 'hpo[{extra.extra}]'" in extra.line()


def test_only_a_missing_optional_package_gets_the_line():
    error = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    try:
        raise ImportError("Failed to import DB access module") from error
    except ImportError as wrapped:
        assert missing_extra(wrapped) == EXTRAS["psycopg"].line()
    assert missing_extra(ModuleNotFoundError("No module named 'scipy'", name="scipy")) is None
    assert missing_extra(ValueError("mnist1d")) is None


# -- the database drivers ------------------------------------------------------------------------
@pytest.mark.parametrize("driver", sorted(NO_SERVERS))
@pytest.mark.parametrize("command", [
    ["studies"], ["init"], ["trials", "c1"], ["search", "--name", "c1"],
    ["worker", "--campaign", "c1", "--wait", "1"], ["launch", "--campaign", "c1", "--wait", "1"],
])
def test_a_database_storage_without_its_driver_is_one_line(command, driver, tmp_path):
    result = run_without(driver, HPO, *command, "--storage", NO_SERVERS[driver], cwd=tmp_path)
    assert the_one_line(result) == says_install(driver)
    assert result.stdout == ""


def test_an_unknown_database_is_refused_in_one_line_naming_the_ones_known(tmp_path):
    result = run_without("pymysql", HPO, "studies", "--storage", "oracle://hpo@127.0.0.1:1/hpo", cwd=tmp_path)
    line = the_one_line(result)
    assert "unsupported storage 'oracle'" in line
    assert all(scheme in line for scheme in ("sqlite:///", "postgresql://", "mysql://"))


# -- mnist1d -------------------------------------------------------------------------------------
def test_train_on_mnist1d_without_it_is_one_line(tmp_path):
    result = run_without("mnist1d", HPO, "train", "--dataset", "mnist1d", "--epochs", "1", cwd=tmp_path)
    assert the_one_line(result) == says_install("mnist1d")


def test_search_on_mnist1d_without_it_is_one_line_and_writes_nothing(tmp_path):
    result = run_without("mnist1d", HPO, "search", "--dataset", "mnist1d", "--stages", "1", "--trials", "1",
                         "--storage", "sqlite:///hpo.db", cwd=tmp_path)
    assert the_one_line(result) == says_install("mnist1d")
    assert not (tmp_path / "hpo.db").exists()


def test_a_worker_without_mnist1d_on_an_mnist1d_campaign_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    space = build_space(None, None, ["hidden_sizes=32"])
    spec = CampaignSpec(name="m1", space=space, dataset="mnist1d", stages=1, trials=[2], epochs=[1])
    stageplan.create_stage(storage, spec.plan(1, space))
    storage.engine.dispose()
    result = run_without("mnist1d", HPO, "worker", "--campaign", "m1", "--storage", url, cwd=tmp_path)
    assert the_one_line(result) == says_install("mnist1d")


def test_the_report_says_which_extra_its_experiment_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # `import mnist1d` raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    fresh = functools.lru_cache(maxsize=1)(datasets_module._mnist1d_arrays.__wrapped__)
    monkeypatch.setattr(datasets_module, "_mnist1d_arrays", fresh)
    import workers.run  # the experiment reads the process's cached copy: none yet, as in a new process

    monkeypatch.setattr(workers.run, "cached_dataset", functools.lru_cache(maxsize=4)(workers.run.cached_dataset.__wrapped__))
    from hpo.report import run_init_experiment

    assert EXTRAS["mnist1d"].line() in run_init_experiment("mnist1d")


# -- optuna-dashboard ----------------------------------------------------------------------------
def test_the_dashboard_without_optuna_dashboard_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    backend.ensure_schema(url)
    result = run_without("optuna_dashboard", DASHBOARD, "--port", "1", cwd=tmp_path, HPO_STORAGE=url)
    assert the_one_line(result) == says_install("optuna_dashboard")


@pytest.mark.parametrize("driver", sorted(NO_SERVERS))
def test_the_dashboard_on_a_database_without_its_driver_is_one_line(driver, tmp_path):
    result = run_without(driver, DASHBOARD, "--port", "1", cwd=tmp_path, HPO_STORAGE=NO_SERVERS[driver])
    assert the_one_line(result) == says_install(driver)

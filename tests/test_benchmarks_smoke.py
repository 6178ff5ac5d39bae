"""The training benchmarks run end to end (``--quick --json``) and print every figure they promise.

No timing or accuracy is asserted: the quick runs are too short to mean anything, and
benchmarks report figures rather than pass tests (see docs/benchmarks.md).
"""

import json
import subprocess
import sys
from pathlib import Path


import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ("train_speed.py", "accuracy.py")


@pytest.fixture(scope="module")
def reports() -> dict:
    """Both scripts run with --quick --json, side by side (each is mostly imports and start-up)."""
    running = {
        script: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / script), "--quick", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for script in SCRIPTS
    }
    outputs = {}
    for script, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        outputs[script] = json.loads(stdout)
    return outputs


def torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_train_speed_quick_json_has_every_figure_and_ratio(reports):
    report = reports["train_speed.py"]
    assert report["benchmark"] == "train_speed" and report["quick"] is True
    env = report["environment"]
    for key in ("python", "numpy", "sklearn", "torch", "threads", "blas", "openblas_env"):
        assert key in env
    assert env["threads"] == 1
    assert set(report["shapes"]) == {"cifar", "digits", "mnist1d"}
    libraries = {"ours", "ours_no_bn", "sklearn"} | ({"torch"} if torch_installed() else set())
    for name, shape in report["shapes"].items():
        assert set(shape["seconds_per_epoch"]) == libraries, name
        for figures in shape["seconds_per_epoch"].values():
            assert figures["min"] <= figures["median"] <= figures["max"]
            assert len(figures["blocks"]) == shape["timed_blocks"]
        for key in ("vs_torch", "vs_torch_blocks", "vs_torch_pass", "vs_sklearn", "vs_sklearn_blocks",
                    "vs_sklearn_pass", "vs_sklearn_with_extras", "vs_sklearn_no_bn",
                    "ours_extras_seconds_per_epoch", "targets"):
            assert key in shape, (name, key)
        assert shape["vs_sklearn"] > 0
        assert (shape["vs_torch"] is not None) == torch_installed()


def test_accuracy_quick_json_has_per_seed_and_summary_figures(reports):
    report = reports["accuracy.py"]
    assert report["benchmark"] == "accuracy" and report["quick"] is True
    assert report["cli_defaults_match"] is True, report["cli_default_mismatches"]
    methods = {"ours", "sklearn"} | ({"torch"} if torch_installed() else set())
    assert set(report["per_seed"]) == set(report["test_accuracy"]) == methods
    for name in methods:
        assert [row["seed"] for row in report["per_seed"][name]] == report["seeds"]
        summary = report["test_accuracy"][name]
        assert 0 <= summary["min"] <= summary["median"] <= summary["max"] <= 1
    for key in ("ours_config", "ours_minus_sklearn_median", "target_pass", "test_size", "versions"):
        assert key in report

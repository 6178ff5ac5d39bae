"""The benchmarks run end to end (``--quick --json``) and print every figure they promise.

No timing or accuracy is asserted: the quick runs are too short to mean anything, and
benchmarks report figures rather than pass tests (see docs/benchmarks.md). What a quick run
does check is what must hold at any speed: the worker loop's pruning works, many workers on
one PostgreSQL finish their budget without errors or duplicate trial numbers, and the
search-quality budgets are kept.
"""

import json
import subprocess
import sys
from pathlib import Path


import pytest

from benchmarks.common import SERVERS, postgres_available, server_available

pytestmark = pytest.mark.slow  # each runs a benchmark end to end

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


def _quick(script: str, *args: str, timeout: float = 600) -> dict:
    process = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--json", *args],
                             capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout)


def test_overhead_quick_json_compares_both_loops_with_pruning_working():
    report = _quick("overhead.py")
    backends = {"sqlite"} | {server for server in SERVERS if server_available(server)}
    assert {r["backend"] for r in report["results"]} == backends
    for r in report["results"]:
        ours, plain = r["ours"], r["plain"]
        assert ours["trials"] == plain["trials"] == report["measured_trials"]
        assert ours["pruned"] > 0 and plain["pruned"] > 0, r  # the median pruner prunes in both loops
        assert ours["statements_per_trial"] < plain["statements_per_trial"], r
        assert ours["median_ms"] > 0 and plain["median_ms"] > 0 and r["ratio"] > 0
        assert ours["recorded_overhead_ms"] is not None and plain["recorded_overhead_ms"] is None
    assert "targets" in report


def test_scaling_quick_json_many_workers_finish_their_budget_cleanly():
    report = _quick("scaling.py")
    for mode in ("stage", "same_work"):
        part = report["digits"][mode]
        for n in ("1", "2"):
            (run,) = part["runs"][n]
            assert run["trials"] == 60 and run["workers_seen"] == int(n) and not run["failed"], run
        assert part["ratio"] > 0 and part["epochs_ratio"] > 0
    if not postgres_available():
        assert "stub" not in report
        return
    assert [r["workers"] for r in report["stub"]] == [8, 16]
    for r in report["stub"]:
        assert r["finished"] == r["budget"], r
        assert r["duplicate_numbers"] == 0 and r["error_lines"] == 0 and r["exit_codes"] == [0], r
        assert r["states"]["RUNNING"] == r["states"]["WAITING"] == 0, r
        for op in ("claim", "store"):
            assert r["latency_ms"][op]["median"] <= r["latency_ms"][op]["p99"]


def test_search_quality_quick_json_keeps_every_budget():
    report = _quick("search_quality.py")
    (row,) = report["per_seed"]
    budget = row["c2f"]["epochs"]
    assert row["c2f-half"]["epochs"] <= budget // 2
    for method in ("random", "tpe"):
        assert budget - report["schedule"]["single_stage_epochs"] < row[method]["epochs"] <= budget, row
    for method in ("c2f", "c2f-half", "random", "tpe"):
        assert 0 < row[method]["val_accuracy"] <= 1 and 0 < row[method]["test_accuracy"] <= 1
    assert set(report["targets"]) >= {"c2f_at_least_as_good_val", "half_budget_fraction", "half_reaches_others_test"}


def test_search_quality_compares_narrowing_rules_on_mnist1d_at_equal_budgets():
    report = _quick("search_quality.py", "--dataset", "mnist1d", "--rule", "1:1", "--rule", "3:2:0.25:0.1:0.5", "--no-half")
    assert report["dataset"] == "mnist1d" and report["methods"] == ["c2f 1/1", "c2f 3/2/0.25/0.1/0.5", "random", "tpe"]
    assert report["rules"]["c2f 1/1"] == {"min_choice_trials": 1, "keep_choices": 1, "margin": 0.5, "min_width": 0.5,
                                         "top_quantile": 0.25}
    assert report["rules"]["c2f 3/2/0.25/0.1/0.5"] == {"min_choice_trials": 3, "keep_choices": 2, "margin": 0.25,
                                                      "min_width": 0.1, "top_quantile": 0.5}
    (row,) = report["per_seed"]
    budget = max(row["c2f 1/1"]["epochs"], row["c2f 3/2/0.25/0.1/0.5"]["epochs"])  # equal or larger epochs for the others
    for method in ("random", "tpe"):
        assert budget - report["schedule"]["single_stage_epochs"] < row[method]["epochs"] <= budget, row
    for method, figures in report["medians"].items():
        assert figures["test_min"] <= figures["test_accuracy"] <= figures["test_max"], method
    assert set(report["targets"]["above_tpe_test"]) == {"c2f 1/1", "c2f 3/2/0.25/0.1/0.5"}


def test_report_json_times_the_report_and_keeps_the_file(tmp_path):
    process = subprocess.run([sys.executable, str(BENCHMARKS / "report.py"), "--sizes", "30", "--json", "--out", str(tmp_path)],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout)
    assert report["benchmark"] == "report" and report["plotly_js_mb"] > 1
    (row,) = report["results"]
    assert row["trials"] == sum(row["stages"]) == sum(row["outcomes"].values()) == 30
    assert len(row["stages"]) == 3 and row["outcomes"]["COMPLETE"] >= 3  # each stage's best completes
    for key in ("generation_seconds", "report_seconds", "collect_seconds", "render_seconds", "sections_build_seconds"):
        assert row[key] > 0, key
    assert row["report_seconds"] == min(row["report_runs"]) and len(row["report_runs"]) == row["repeat"]
    page = Path(row["report"])
    assert page.parent == tmp_path and page.is_file()
    assert page.stat().st_size / 1e6 == pytest.approx(row["size_mb"], abs=1e-3)
    assert row["size_mb"] > report["plotly_js_mb"]  # the page carries Plotly's script
    parts = row["sections"]
    assert {"head", "summary", "coarse-to-fine", "history"} <= set(parts)
    assert sum(part["mb"] for part in parts.values()) == pytest.approx(row["size_mb"], abs=0.01)
    assert parts["head"]["mb"] >= report["plotly_js_mb"] and parts["coarse-to-fine"]["figures"] >= 3
    assert 0 < parts["coarse-to-fine"]["hover_mb"] < parts["coarse-to-fine"]["mb"]
    assert row["rest_seconds"] >= 0
    targets = report["targets"]
    assert targets["at_trials"] == 30 and targets["target_trials"] == 10_000
    assert isinstance(targets["seconds_met"], bool) and isinstance(targets["mb_met"], bool)


def test_report_benchmark_stores_trials_as_optuna_add_trials_does(storage_url):
    """The benchmark writes its trials in bulk: they read back as ``study.add_trials`` stores them."""
    import math

    import numpy as np
    import optuna

    from benchmarks.report import STARTED, Timeline, bench_space, insert_trials, stage_outcomes, stage_trials
    from hpo.campaign import CampaignSpec
    from storage import backend

    spec = CampaignSpec(name="c", space=bench_space())
    rng = np.random.default_rng(7)
    trials = stage_trials(spec.plan(1, spec.space), stage_outcomes(60, rng), Timeline(STARTED, rng), rng)
    odd = optuna.trial.create_trial(value=math.inf, intermediate_values={1: math.nan, 2: -math.inf, 3: 0.5},
                                    params=dict(trials[0].params), distributions=dict(trials[0].distributions))
    trials.append(odd)
    backend.ensure_schema(storage_url)
    storage = backend.open_storage(storage_url, heartbeat=False)
    try:
        for name in ("added", "inserted"):
            optuna.create_study(study_name=name, storage=storage, direction="maximize")
        optuna.load_study(study_name="added", storage=storage).add_trials(trials)
        insert_trials(storage, "inserted", trials)

        def stored(name: str) -> list[tuple]:
            return [(t.number, t.state, repr(t.values), t.params, t.distributions, t.user_attrs, t.system_attrs,
                     repr(t.intermediate_values), t.datetime_start, t.datetime_complete)
                    for t in storage.get_all_trials(storage.get_study_id_from_name(name))]

        added = stored("added")
        assert len(added) == 61 and {t[1].name for t in added} == {"COMPLETE", "PRUNED", "FAIL"}
        assert stored("inserted") == added
    finally:
        storage.engine.dispose()


@pytest.mark.postgres
def test_cli_latency_times_hpo_against_optuna_and_the_one_trial_search(postgres_server):
    report = _quick("cli_latency.py")
    assert report["benchmark"] == "cli_latency" and report["trials"] == 60
    commands = [row["command"] for row in report["inspection"] + report["during_run"]]
    assert commands == ["hpo studies", "hpo trials", "hpo trial", "hpo health",
                        "hpo trials (during a run)", "hpo health (during a run)"]
    for row in report["inspection"] + report["during_run"]:
        assert row["seconds"] > 0 and row["optuna_seconds"] > 0
        assert row["ratio"] == round(row["seconds"] / row["optuna_seconds"], 3)
    search = report["one_trial_search"]
    assert search["seconds"] > search["python_floor_seconds"] > 0 and len(search["all_seconds"]) == 1

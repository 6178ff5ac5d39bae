"""The trial record (workers.record): one writer, one reader, and the trials stored before it.

``fixtures/trials_v1.db`` holds trials written by the workers of record layout 1 (before the
layout carried a version: commit 5706034), made by ``fixtures/make_trials_v1.sh``: two stages
with diverged, pruned and complete trials, a cross-validated stage, and a stage whose first
worker was stopped mid-trial (a FAIL trial holding only its worker, and its retry).
``fixtures/trials_v1.json`` is what `hpo trials`, `hpo trial` and `hpo best` printed on it then.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import hpo.cli_inspect  # noqa: F401 - registers the commands on the group
from hpo import inspect, output
from hpo.cli import cli
from storage import states
from workers.record import (
    RECORD_VERSION,
    SUMMARY_ATTRS,
    VERSION_ATTR,
    Curve,
    Diagnostics,
    Histogram,
    LayerDiagnostics,
    OutputLayerDiagnostics,
    Timings,
    TrialRecord,
    read_record,
    record_attrs,
    summary_attrs,
    write_record,
)
from workers.worker import Worker, WorkerOptions

FIXTURES = Path(__file__).parent / "fixtures"
SHOWN = json.loads((FIXTURES / "trials_v1.json").read_text(encoding="utf-8"))["studies"]
CAPTURE_WIDTH = 160  # COLUMNS when the fixture's tables were captured

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def v1_url(tmp_path_factory) -> str:
    """A copy of the layout-1 database (reading must work on a copy as on the original)."""
    path = tmp_path_factory.mktemp("v1") / "trials_v1.db"
    shutil.copyfile(FIXTURES / "trials_v1.db", path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def v1_trials(v1_url) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = optuna.storages.RDBStorage(v1_url)
    try:
        return {s.study_name: storage.get_all_trials(s._study_id) for s in storage.get_all_studies()}
    finally:
        storage.engine.dispose()


# -- trials written by today's main --------------------------------------------------------------
def test_the_fixture_holds_every_kind_of_trial_a_worker_leaves(v1_trials):
    records = [read_record(t) for trials in v1_trials.values() for t in trials]
    assert {r.state for r in records} == {"COMPLETE", "PRUNED", "FAIL"}
    assert any(r.reason and r.reason.startswith("diverged at epoch") for r in records)
    assert any(r.reason and r.reason.startswith("pruned at step") for r in records)
    assert any(r.fold_values for r in records) and any(r.seeded_from for r in records)
    assert any(r.state == "FAIL" and r.seed is None and r.worker for r in records)  # stopped mid-trial


def test_layout_1_trials_read_as_what_hpo_trial_showed(v1_trials):
    for study, trials in v1_trials.items():
        for trial in trials:
            record, shown = read_record(trial), SHOWN[study]["trial_json"][str(trial.number)]
            attrs = shown["user_attrs"]
            assert record.version == 1 and VERSION_ATTR not in attrs
            assert (record.state, record.value) == (shown["state"], shown["value"])
            assert (record.worker, record.seed, record.config, record.reason) == tuple(
                attrs.get(k) for k in ("worker", "seed", "config", "reason"))
            assert (record.train_accuracy, record.seeded_from) == (attrs.get("train_accuracy"), attrs.get("seeded_from"))
            assert record.fold_values == (tuple(attrs["fold_values"]) if "fold_values" in attrs else None)
            assert _json(record.curve) == attrs.get("curve")
            assert _json(record.diagnostics) == attrs.get("diagnostics")
            assert _json(record.timings) == attrs.get("timings")
            assert record.histograms == _histograms(attrs.get("histograms"))
            assert record.extra == {}
            # Nothing is lost: written again, the record is the same attrs plus its summary and
            # its version.
            assert record_attrs(record) == {**attrs, **summary_attrs(record), VERSION_ATTR: RECORD_VERSION}


def test_layout_1_trials_read_as_what_hpo_trials_and_best_showed(v1_trials):
    for study, trials in v1_trials.items():
        records = {t.number: read_record(t) for t in trials}
        for row in SHOWN[study]["trials_json"]:
            record = records[row["number"]]
            assert (record.state, record.value, record.worker, record.reason) == (
                row["state"], row["value"], row["worker"], row["reason"])
        for row in SHOWN[study]["trials_extra_json"]:
            record = records[row["number"]]
            timings = record.timings or Timings()
            assert (record.seed, record.train_accuracy, timings.train_seconds, timings.overhead_seconds) == (
                row["seed"], row["train_accuracy"], row["train_seconds"], row["overhead_seconds"])
        for row in SHOWN[study]["best_json"]["trials"]:
            record = records[row["number"]]
            assert (record.value, record.seed, record.train_accuracy) == (row["value"], row["seed"], row["train_accuracy"])


def test_the_summary_attrs_of_layout_1_trials_are_their_curve_diagnostics_reason_and_timings(v1_trials):
    seen = set()
    for trials in v1_trials.values():
        for trial in trials:
            attrs, summary = trial.user_attrs, summary_attrs(read_record(trial))
            assert set(summary) <= set(SUMMARY_ATTRS)
            curve, timings = attrs.get("curve") or {}, attrs.get("timings")
            if curve.get("train_loss"):
                assert summary["final_train_loss"] == curve["train_loss"][-1]
                best = max(curve["val_accuracy"])
                assert summary["best_epoch"] == curve["epoch"][curve["val_accuracy"].index(best)]
            else:
                assert "final_train_loss" not in summary and "best_epoch" not in summary
            if timings is not None:
                assert summary["diverged"] is states.is_diverged(trial.state, attrs)
                assert summary["train_seconds"] == timings["train_seconds"]
            diagnostics = attrs.get("diagnostics") or {}
            layers = diagnostics.get("layers", [])
            dead = [layer["dead_fraction"] for layer in layers if layer["dead_fraction"] is not None]  # null: not finite
            assert summary.get("dead_fraction_max") == (max(dead) if dead else None)
            saturated = [layer["saturation_fraction"] for layer in layers if layer["saturation_fraction"] is not None]
            assert summary.get("saturation_fraction_max") == (max(saturated) if saturated else None)
            weights = [*layers, diagnostics.get("output_layer") or {}]  # the output layer's weights too
            ratios = [layer["update_ratio"] for layer in weights if layer.get("update_ratio") is not None]
            assert (summary.get("update_ratio_max"), summary.get("update_ratio_min")) == (
                (max(ratios), min(ratios)) if ratios else (None, None))
            seen.update(k for k, v in summary.items() if v is not False)
    assert seen == set(SUMMARY_ATTRS)  # each summary attr, and a diverged trial, are in the fixture


def test_the_summary_attrs_are_derived_from_the_record_alone():
    record = TrialRecord(
        reason="diverged at epoch 3, step 7: loss 1e+09",
        curve=Curve((1, 2, 3), (0.5, 0.7, 0.7), (2.0, 1.5, None)),
        diagnostics=Diagnostics(4, (LayerDiagnostics(1, 8, dead_fraction=0.25, saturation_fraction=0.0, update_ratio=2e-3),
                                    LayerDiagnostics(2, 8, saturation_fraction=0.75),
                                    LayerDiagnostics(3, 8, dead_fraction=0.5, update_ratio=1e-3)),
                                OutputLayerDiagnostics(grad_norm=0.1, update_ratio=5e-4)),
        timings=Timings(1.25, 0.01),
    )
    # The last loss was not finite (stored null): there is no final loss to show. The smallest
    # update ratio is the output layer's.
    assert summary_attrs(record) == {"best_epoch": 2, "diverged": True, "dead_fraction_max": 0.5,
                                     "saturation_fraction_max": 0.75, "update_ratio_max": 2e-3,
                                     "update_ratio_min": 5e-4, "train_seconds": 1.25}
    assert summary_attrs(TrialRecord(worker="w")) == {}  # claimed, not finished: nothing to summarize
    assert summary_attrs(TrialRecord(reason="pruned at step 2: 0.1 below the median", timings=Timings()))["diverged"] is False
    # Stored summary attrs are not read back as extra attrs: the record derives them again.
    stored = record_attrs(record)
    assert read_record(stored) == record and record_attrs(read_record({**stored, "diverged": False})) == stored


@pytest.fixture
def wide_terminal(monkeypatch):
    monkeypatch.setattr(output.out, "width", CAPTURE_WIDTH)


def hpo(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--storage", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def without_charts(text: str) -> str:
    """``hpo trial``'s output without the small charts it draws since the report was added (the
    sparklines under the learning curve, a bar column after each fraction of the layer table):
    what it printed on the same trials before them."""
    bar_headings = set(inspect.LAYER_FRACTION_BARS.values())
    kept: list[str] = []
    table: list[str] = []  # the lines of the table being read, from its top border
    for line in text.splitlines(keepends=True):
        if line.startswith(("val_accuracy  ", "train_loss  ")) or line.startswith("(") and "drawn in" in line:
            continue
        if line.startswith("┏") or table:
            table.append(line)
        else:
            kept.append(line)
        if table and line.startswith("└"):  # the table is whole: cut its bar columns, found on its header row
            header = next(row for row in table if row.startswith("┃"))
            bounds = [i for i, char in enumerate(header) if char == "┃"]
            spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if header[a + 1:b].strip() in bar_headings]
            for row in table:
                for a, b in reversed(spans):
                    row = row[:a] + row[b:]
                kept.append(row)
            table = []
    return "".join(kept + table)


@pytest.mark.parametrize("study", sorted(SHOWN))
def test_hpo_trials_trial_and_best_print_what_they_printed_on_layout_1(study, v1_url, wide_terminal):
    shown = SHOWN[study]
    assert hpo(v1_url, "trials", study) == shown["trials_table"]
    assert json.loads(hpo(v1_url, "trials", study, "--format", "json")) == shown["trials_json"]
    assert hpo(v1_url, "best", study) == shown["best_table"]
    assert json.loads(hpo(v1_url, "best", study, "--format", "json")) == shown["best_json"]
    for number, table in shown["trial_table"].items():
        assert without_charts(hpo(v1_url, "trial", study, number)) == table
        assert json.loads(hpo(v1_url, "trial", study, number, "--format", "json")) == shown["trial_json"][number]



# -- write, then read -----------------------------------------------------------------------
_RECORD_KEYS = {*record_attrs(TrialRecord(worker="w", seed=1, config={}, reason="r", diagnostics=Diagnostics(),
                                          histograms=(), train_accuracy=1, fold_values=(), curve=Curve(),
                                          timings=Timings(), seeded_from="s")), *SUMMARY_ATTRS}
# every attr key of a full record
finite = st.floats(allow_nan=False, allow_infinity=False)
maybe_number = st.one_of(st.none(), st.integers(-10**6, 10**6), finite)
text = st.text(max_size=20)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), finite, text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=10,
)
layers = st.builds(
    LayerDiagnostics, layer=st.integers(1, 50), units=st.one_of(st.none(), st.integers(1, 4096)),
    activation_mean=maybe_number, activation_std=maybe_number, dead_fraction=maybe_number,
    saturation_fraction=maybe_number, grad_norm=maybe_number, update_ratio=maybe_number,
)
diagnostics = st.builds(
    Diagnostics, probe_size=st.one_of(st.none(), st.integers(1, 10_000)),
    layers=st.lists(layers, max_size=4).map(tuple),
    output_layer=st.one_of(st.none(), st.builds(OutputLayerDiagnostics, grad_norm=maybe_number, update_ratio=maybe_number)),
)
histograms = st.lists(st.builds(
    Histogram, layer=st.integers(1, 50), edges=st.lists(maybe_number, max_size=21).map(tuple),
    counts=st.lists(st.one_of(st.none(), st.integers(0, 10**6)), max_size=20).map(tuple),
), max_size=3).map(tuple)
curves = st.builds(
    Curve, epoch=st.lists(st.one_of(st.none(), st.integers(1, 1000)), max_size=5).map(tuple),
    val_accuracy=st.lists(maybe_number, max_size=5).map(tuple), train_loss=st.lists(maybe_number, max_size=5).map(tuple),
)
records = st.builds(
    TrialRecord,
    worker=st.one_of(st.none(), text), seed=st.one_of(st.none(), st.integers(0, 2**31)),
    config=st.one_of(st.none(), st.dictionaries(text, json_values, max_size=5)),
    reason=st.one_of(st.none(), text), diagnostics=st.one_of(st.none(), diagnostics),
    histograms=st.one_of(st.none(), histograms), train_accuracy=maybe_number,
    fold_values=st.one_of(st.none(), st.lists(maybe_number, max_size=5).map(tuple)),
    curve=st.one_of(st.none(), curves), timings=st.one_of(st.none(), st.builds(Timings, maybe_number, maybe_number)),
    seeded_from=st.one_of(st.none(), text),
    extra=st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in _RECORD_KEYS), json_values, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(record=records)
def test_every_field_survives_a_write_and_a_read(record):
    stored = {k: json.loads(json.dumps(v)) for k, v in record_attrs(record).items()}  # as Optuna stores attrs
    assert read_record(stored) == record
    assert stored[VERSION_ATTR] == RECORD_VERSION


def test_a_record_written_to_a_trial_reads_back_from_the_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(storage=url, direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    write_record(trial, TrialRecord(worker="w-1"))  # when it is claimed
    record = TrialRecord(
        seed=7, config={"learning_rate": 0.01, "hidden_sizes": [8]}, state="COMPLETE", value=0.9,
        diagnostics=Diagnostics(4, (LayerDiagnostics(1, 8, 0.1, 0.2, 0.0, None, 0.3, 1e-3),), OutputLayerDiagnostics(0.2, None)),
        histograms=(Histogram(1, (0.0, 0.5, 1.0), (3, 1)),), train_accuracy=0.95, fold_values=(0.9, 0.91),
        curve=Curve((1, 2), (0.8, 0.9), (1.2, 0.4)), timings=Timings(1.5, 0.01), extra={"note": "by hand"},
    )
    write_record(trial, record)
    study.tell(trial, record.value)
    frozen = optuna.load_study(study_name=study.study_name, storage=url).trials[0]
    assert read_record(frozen) == replace(record, worker="w-1")


def test_partial_and_malformed_attrs_read_as_absent():
    assert read_record({}) == TrialRecord(version=1)
    odd = read_record({"seed": True, "timings": "soon", "curve": [1, 2], "diagnostics": {"layers": "x"},
                       "histograms": {}, "reason": 3, VERSION_ATTR: 2})
    assert (odd.seed, odd.timings, odd.curve, odd.reason, odd.histograms, odd.version) == (None, None, None, None, None, 2)
    assert odd.diagnostics == Diagnostics()
    # Layers stored without their number are numbered by their place.
    assert [layer.layer for layer in Diagnostics.from_json({"layers": [{}, {"units": 3}]}).layers] == [1, 2]


def test_the_record_is_importable_without_optuna():
    code = "import sys, workers.record; assert 'optuna' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- what a worker writes ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_worker_writes_records_of_the_current_layout(sqlite_url):
    from tests.helpers import make_stage

    storage, plan = make_stage(sqlite_url, "rec", trials=4, epochs=2,
                               params=["hidden_sizes=16-8", "batch_size=128", "lr=log:1e-3..100"])
    options = WorkerOptions(storage_url=sqlite_url, study=plan.study_name, worker_id="rec-worker", wait_for_campaign_seconds=10)
    assert Worker(options).run().trials
    trials = optuna.load_study(study_name=plan.study_name, storage=storage).trials
    assert len(trials) == 4
    for trial in trials:
        record = read_record(trial)
        assert record.version == RECORD_VERSION and record.worker == "rec-worker"
        assert record_attrs(record) == trial.user_attrs  # everything stored is in the record
        assert record.seed is not None and record.config["hidden_sizes"] == [16, 8] and record.timings.train_seconds >= 0
        assert trial.user_attrs["diverged"] is states.is_diverged(trial.state, trial.user_attrs)
        if record.state == "COMPLETE":
            # The measures training returns are the record's: none is dropped on the way.
            assert [layer.units for layer in record.diagnostics.layers] == [16, 8]
            assert [h.layer for h in record.histograms] == [1, 2] and len(record.curve.epoch) == 2
            assert {"final_train_loss", "best_epoch", "train_seconds"} <= set(trial.user_attrs)
        else:
            assert record.reason


def _json(part):
    return part.to_json() if part is not None else None


def _histograms(stored):
    if stored is None:
        return None
    return tuple(Histogram(h["layer"], tuple(h["edges"]), tuple(h["counts"])) for h in stored)

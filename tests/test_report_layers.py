"""The report's "Layers" section (hpo.report.sections_layers), checked against what the workers
stored: a real two-stage campaign, on a SQLite file and on PostgreSQL, read back with plain SQL; the section's edge
cases (nothing complete, every trial diverged, records without diagnostics, one hidden layer, a
plain study) built as the collected data they would be."""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import optuna
import pytest

from hpo.campaign import CampaignSpec, run_campaign
from hpo.report.collect import ReportData, StageView, TrialView, collect
from hpo.report.common import MAX_POINTS, UPDATE_RATIO_RULE, hover
from hpo.report.page import Figure, Words, render_page
from hpo.report.sections_layers import layers_section
from storage import backend
from tests.helpers import assert_one_sentence, sql
from workers.record import Diagnostics, Histogram, LayerDiagnostics, OutputLayerDiagnostics, TrialRecord
from workers.space import build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

CAMPAIGN = "layers"
FIXTURES = Path(__file__).parent / "fixtures"


class Quiet:
    """A campaign Progress that shows nothing."""

    def stage_started(self, plan, resumed):
        pass

    def stage_progress(self, plan, counts, best):
        pass

    def stage_narrowed(self, parent, child, result):
        pass

    def message(self, text):
        pass


@pytest.fixture(scope="module")
def campaign_url(module_storage_url) -> str:
    """Two stages, one epoch each, built once on SQLite and once on PostgreSQL. Stage 1 walks 11 of the 12 points of a grid of activations
    (relu, tanh, sigmoid), initializers (he, small) and learning rates (0.003, 0.3), so every
    activation and initializer is trained whichever point is left out (and the grid is not
    exhausted, which stops Optuna's grid sampler)."""
    url = module_storage_url
    space = build_space(None, None, [
        "hidden_sizes=32-16", "lr=0.003,0.3", "activation=relu,tanh,sigmoid", "init=he,small",
        "bn=false", "batch_size=128",
    ])
    spec = CampaignSpec(name=CAMPAIGN, space=space, stages=2, trials=[11, 2], epochs=[1, 1], sampler="grid", pruner="none")
    run_campaign(url, spec, Quiet(), workers=1)
    return url


@pytest.fixture(scope="module")
def stored(campaign_url) -> dict[tuple[str, int], dict]:
    """Every trial as the database holds it: (study, number) -> state, value and user attrs."""
    trials = {
        (study, number): {"state": str(state).removeprefix("TrialState."), "value": value}
        for study, number, state, value in sql(
            campaign_url,
            "SELECT s.study_name, t.number, t.state, v.value FROM trials t "
            "JOIN studies s ON s.study_id = t.study_id LEFT JOIN trial_values v ON v.trial_id = t.trial_id",
        )
    }
    for study, number, key, value in sql(
        campaign_url,
        "SELECT s.study_name, t.number, a.key, a.value_json FROM trial_user_attributes a "
        "JOIN trials t ON t.trial_id = a.trial_id JOIN studies s ON s.study_id = t.study_id",
    ):
        trials[(study, number)][key] = json.loads(value)
    return trials


@pytest.fixture(scope="module")
def data(campaign_url) -> ReportData:
    return collect(backend.open_storage(campaign_url), campaign_url, CAMPAIGN)


@pytest.fixture(scope="module")
def items(data) -> dict[str, Figure | Words]:
    section = layers_section(data)
    assert (section.key, section.title) == ("layers", "Layers")
    names = ("best", "by initializer", "by activation", "dead", "saturation", "update ratio")
    assert len(section.items) == len(names)
    return dict(zip(names, section.items))


def complete(stored: dict, study: str | None = None) -> dict[tuple[str, int], dict]:
    return {key: t for key, t in stored.items() if t["state"] == "COMPLETE" and (study is None or key[0] == study)}


def best_keys(trials: dict[tuple[str, int], dict]) -> set[tuple[str, int]]:
    """The trials of the highest value (ties are all candidates)."""
    top = max(t["value"] for t in trials.values())
    return {key for key, t in trials.items() if t["value"] == top}


def trial_of(text: str) -> tuple[str, int]:
    """The trial whose hover text a mark carries: ``<b>study #number</b>: ...`` (common.hover)."""
    head = html.unescape(text.split("</b>")[0].removeprefix("<b>"))
    study, number = head.rsplit(" #", 1)
    return study, int(number)


def assert_bars_are(traces, histograms: list[dict]) -> None:
    """Bar traces drawn exactly from stored histograms: heights the counts, the stored edges
    as each bar's [low, high) (customdata), the bars centred between them and as wide."""
    assert len(traces) == len(histograms)
    for trace, histogram in zip(traces, histograms):
        edges, counts = histogram["edges"], histogram["counts"]
        assert len(edges) == 21 and len(counts) == 20
        assert trace.type == "bar" and trace.name == f"layer {histogram['layer']}"
        assert list(trace.y) == counts
        assert [list(pair) for pair in trace.customdata] == [[lo, hi] for lo, hi in zip(edges[:-1], edges[1:])]
        assert list(trace.x) == pytest.approx([(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:])], rel=1e-12, abs=1e-15)
        assert list(trace.width) == pytest.approx([hi - lo for lo, hi in zip(edges[:-1], edges[1:])], rel=1e-12, abs=1e-15)


def points(figure) -> dict[tuple[str, int, str], tuple[float, float]]:
    """(study, number, trace name) -> (x, y) of every marker of a per-layer scatter, each
    point's trial read from its hover text."""
    found = {}
    for trace in figure.data:
        if trace.mode != "markers":
            continue
        for x, y, text in zip(trace.x, trace.y, trace.text):
            study, number = trial_of(text)
            found[(study, number, trace.name)] = (x, y)
    return found


# -- the real campaign ---------------------------------------------------------------------------
@pytest.mark.slow
def test_the_best_trials_histograms_are_the_stored_ones(stored, items):
    last = f"{CAMPAIGN}/stage-2"
    candidates = best_keys(complete(stored, last))
    figure = items["best"]
    assert isinstance(figure, Figure)
    shown = {trial_of(trace.text[0]) for trace in figure.figure.data}
    assert len(shown) == 1 and shown <= candidates
    key = shown.pop()
    assert_bars_are(figure.figure.data, stored[key]["histograms"])
    assert f"stage 2 #{key[1]}" in figure.figure.layout.title.text
    assert [a.text for a in figure.figure.layout.annotations] == ["layer 1 (32 units)", "layer 2 (16 units)"]


@pytest.mark.slow
@pytest.mark.parametrize("knob", ["initializer", "activation"])
def test_the_best_trial_of_each_initializer_and_activation_side_by_side(stored, items, knob):
    figure = items[f"by {knob}"]
    assert isinstance(figure, Figure)
    by_value: dict[str, dict] = {}
    for key, trial in complete(stored).items():
        by_value.setdefault(trial["config"][knob], {})[key] = trial
    expected = {"initializer": {"he", "small"}, "activation": {"relu", "tanh", "sigmoid"}}[knob]
    assert set(by_value) == expected
    traces_of: dict[tuple[str, int], list] = {}
    for trace in figure.figure.data:
        traces_of.setdefault(trial_of(trace.text[0]), []).append(trace)
    assert len(traces_of) == len(expected)  # one row per value
    axes = figure.figure.to_plotly_json()["layout"]
    row_titles = [axis["title"]["text"] for name, axis in axes.items() if name.startswith("yaxis") and "text" in axis.get("title", {})]
    for value, trials in by_value.items():
        shown = [key for key in traces_of if key in best_keys(trials)]
        assert len(shown) == 1, f"no row (or several) for {knob} {value}"
        assert_bars_are(traces_of[shown[0]], stored[shown[0]]["histograms"])
        assert any(title.startswith(f"<b>{value}</b><br>") and f"#{shown[0][1]}<br>" in title for title in row_titles)
    assert [a.text for a in figure.figure.layout.annotations if a.text.startswith("layer ")] == ["layer 1", "layer 2"]


@pytest.mark.slow
def test_dead_units_per_layer_in_learning_rate_order(stored, items):
    figure = items["dead"]
    assert isinstance(figure, Figure)
    (heatmap,) = figure.figure.data
    assert heatmap.type == "heatmap" and list(heatmap.y) == ["layer 1", "layer 2"]
    measured = {
        key: t for key, t in complete(stored).items()
        if any(layer["dead_fraction"] is not None for layer in t["diagnostics"]["layers"])
    }
    assert {t["config"]["activation"] for t in measured.values()} == {"relu"}  # only relu-like layers die
    columns = [trial_of(text) for text in heatmap.text[0]]
    assert sorted(columns) == sorted(measured)
    rates = [stored[key]["config"]["learning_rate"] for key in columns]
    assert rates == sorted(rates)
    for j, key in enumerate(columns):
        layers = stored[key]["diagnostics"]["layers"]
        assert [heatmap.z[k][j] for k in range(2)] == [layer["dead_fraction"] for layer in layers]
        assert f"#{key[1]}" in heatmap.x[j] and f"lr {rates[j]:.4g}" in heatmap.x[j]
    assert "sorted left to right by learning rate" in figure.caption
    assert "sampled" not in figure.caption


@pytest.mark.slow
def test_saturation_of_sigmoid_and_tanh_layers_against_learning_rate(stored, items):
    figure = items["saturation"]
    assert isinstance(figure, Figure)
    assert figure.figure.layout.xaxis.type == "log"
    expected = {}
    for (study, number), t in complete(stored).items():
        activation = t["config"]["activation"]
        if activation in ("sigmoid", "tanh"):
            for layer in t["diagnostics"]["layers"]:
                expected[(study, number, f"{activation}, layer {layer['layer']}")] = (
                    t["config"]["learning_rate"], layer["saturation_fraction"],
                )
    assert {name for _, _, name in expected} >= {"sigmoid, layer 1", "tanh, layer 2"}
    assert points(figure.figure) == expected


@pytest.mark.slow
def test_update_ratios_against_learning_rate_with_the_rule_of_thumb(stored, items):
    figure = items["update ratio"]
    assert isinstance(figure, Figure)
    layout = figure.figure.layout
    assert layout.xaxis.type == "log" and layout.yaxis.type == "log"
    expected = {}
    for (study, number), t in complete(stored).items():
        lr = t["config"]["learning_rate"]
        for layer in t["diagnostics"]["layers"]:
            expected[(study, number, f"layer {layer['layer']}")] = (lr, layer["update_ratio"])
        expected[(study, number, "output layer")] = (lr, t["diagnostics"]["output_layer"]["update_ratio"])
    assert points(figure.figure) == expected
    (rule,) = [trace for trace in figure.figure.data if trace.mode == "lines+text"]
    assert UPDATE_RATIO_RULE == pytest.approx(1e-3)
    assert list(rule.y) == [UPDATE_RATIO_RULE, UPDATE_RATIO_RULE]
    assert "rule of thumb" in rule.name and "0.001" in rule.text[-1]
    assert min(rule.x) < min(x for x, _ in expected.values()) and max(rule.x) > max(x for x, _ in expected.values())


@pytest.mark.slow
def test_every_figure_says_how_to_read_it_and_the_page_renders(data, tmp_path):
    section = layers_section(data)
    for item in section.items:
        assert isinstance(item, Figure)
        assert_one_sentence(item.caption)
    path = tmp_path / "layers.html"
    path.write_text(render_page("hpo report: campaign layers", [section]), encoding="utf-8")
    page = path.read_text(encoding="utf-8")
    assert page.count('hpoDraw("figure-') == len(section.items)  # one drawing call per figure
    for item in section.items:
        assert html.escape(item.caption) in page


def test_trials_of_an_earlier_hpo_and_cross_validated_ones_still_show(tmp_path):
    """The record-layout-1 fixture (test_record.py): diverged, pruned, cross-validated and
    stopped trials."""
    path = tmp_path / "trials_v1.db"
    shutil.copyfile(FIXTURES / "trials_v1.db", path)
    url = f"sqlite:///{path}"
    storage = backend.open_storage(url)
    for name in ("fx", "cv", "stop"):
        section = layers_section(collect(storage, url, name))
        assert section.items
        render_page(name, [section])
        best = section.items[0]
        assert isinstance(best, Figure), name  # each has a complete trial with histograms
        for trace in best.figure.data:
            assert sum(trace.y) > 0


# -- edge cases, as collected data -----------------------------------------------------------------
def layer_record(
    *, lr: float, activation: str = "relu", initializer: str = "he", value: float | None = 0.5, layers: int = 2,
    dead: float | None = 0.25, saturation: float | None = None, ratio: float | None = 2e-3, diagnostics: bool = True,
) -> TrialRecord:
    """A complete trial's record as a worker writes it (``layers`` hidden layers of 8 units)."""
    edges = tuple(-1.0 + 0.1 * i for i in range(21))
    return TrialRecord(
        state="COMPLETE",
        value=value,
        seed=1,
        config={"learning_rate": lr, "activation": activation, "initializer": initializer, "batch_norm": False,
                "hidden_sizes": [8] * layers},
        diagnostics=Diagnostics(
            probe_size=16,
            layers=tuple(
                LayerDiagnostics(layer=k, units=8, dead_fraction=dead, saturation_fraction=saturation, update_ratio=ratio)
                for k in range(1, layers + 1)
            ),
            output_layer=OutputLayerDiagnostics(update_ratio=ratio),
        ) if diagnostics else None,
        histograms=tuple(Histogram(layer=k, edges=edges, counts=tuple(range(k, k + 20))) for k in range(1, layers + 1))
        if diagnostics else None,
    )


def view(number: int, record: TrialRecord, *, outcome: str = "COMPLETE", study: str = "plain") -> TrialView:
    return TrialView(
        stage=1, study=study, number=number, outcome=outcome,
        value=record.value if outcome == "COMPLETE" else None,
        params={"learning_rate": (record.config or {}).get("learning_rate")} if record.config else {},
        record=record, started=None, completed=None, retry_of=None,
    )


def plain_study(*trials: TrialView) -> ReportData:
    """A single study hpo did not plan (plan None)."""
    stage = StageView(study="plain", stage=1, plan=None, status=None, direction="maximize", ranges={}, trials=tuple(trials))
    return ReportData(name="plain", campaign=None, storage="sqlite:///plain.db", stages=(stage,))


def only_words(data: ReportData) -> str:
    section = layers_section(data)
    assert len(section.items) == 1 and isinstance(section.items[0], Words), section.items
    render_page("t", [section])
    return section.items[0].text


def test_no_trial_yet_is_said_in_words():
    assert "No trial has run yet" in only_words(plain_study())


def test_trials_still_running_are_said_in_words():
    running = view(0, TrialRecord(state="RUNNING", worker="host-1"), outcome="RUNNING")
    assert "No trial has finished yet" in only_words(plain_study(running))


def test_every_trial_diverged_is_said_in_words():
    diverged = [
        view(n, TrialRecord(state="PRUNED", seed=1, config={"learning_rate": 10.0}, reason="diverged at epoch 1, step 2: loss is nan"),
             outcome="DIVERGED")
        for n in range(3)
    ]
    assert "Every one of the 3 finished trials diverged" in only_words(plain_study(*diverged))


def test_without_a_complete_trial_the_best_trials_layers_are_words_in_the_right_tense():
    # Measured, but not complete: no best trial. Said in the past once nothing runs any more.
    pruned = view(0, layer_record(lr=0.1), outcome="PRUNED")
    ended = layers_section(plain_study(pruned)).items[0]
    assert isinstance(ended, Words) and ended.text == "No trial completed, so there is no best trial whose layers could be shown."
    running = view(1, TrialRecord(state="RUNNING", worker="host-1"), outcome="RUNNING")
    still = layers_section(plain_study(pruned, running)).items[0]
    assert isinstance(still, Words) and still.text.startswith("No trial has completed yet, so")


def test_records_without_diagnostics_are_said_in_words():
    old = [view(n, layer_record(lr=0.01, diagnostics=False)) for n in range(2)]
    assert "None of the 2 complete trials stored per-layer diagnostics" in only_words(plain_study(*old))


def test_one_hidden_layer_in_a_plain_study():
    trials = [
        view(0, layer_record(lr=0.1, layers=1, value=0.9, dead=0.5)),
        view(1, layer_record(lr=0.01, layers=1, value=0.7, dead=0.0)),
        view(2, layer_record(lr=0.03, layers=1, value=0.8, activation="tanh", dead=None, saturation=0.4)),
        view(3, TrialRecord(state="PRUNED", config={"learning_rate": 1.0}, reason="diverged at epoch 1, step 1: loss is nan"),
             outcome="DIVERGED"),
    ]
    section = layers_section(plain_study(*trials))
    best, by_init, by_activation, dead, saturation, ratio = section.items
    assert isinstance(best, Figure) and len(best.figure.data) == 1
    assert trial_of(best.figure.data[0].text[0]) == ("plain", 0)
    assert best.figure.data[0].text[0] == hover(trials[0])
    assert isinstance(by_init, Words) and "initializer he" in by_init.text  # one initializer: nothing to compare
    assert isinstance(by_activation, Figure) and len(by_activation.figure.data) == 2
    assert isinstance(dead, Figure)
    (heatmap,) = dead.figure.data
    assert [list(row) for row in heatmap.z] == [[0.0, 0.5]] and list(heatmap.x) == ["#1, lr 0.01", "#0, lr 0.1"]
    assert "left out: 2 trials without a dead-unit measure" in dead.caption
    assert isinstance(saturation, Figure) and points(saturation.figure) == {("plain", 2, "tanh, layer 1"): (0.03, 0.4)}
    assert isinstance(ratio, Figure) and len(points(ratio.figure)) == 6
    render_page("t", [section])


def test_a_row_of_fewer_layers_says_so_instead_of_empty_axes():
    trials = [
        view(0, layer_record(lr=0.1, initializer="he", layers=2)),
        view(1, layer_record(lr=0.1, initializer="small", layers=1)),
    ]
    grid = layers_section(plain_study(*trials)).items[1]
    assert isinstance(grid, Figure) and len(grid.figure.data) == 3
    assert "no layer 2" in [a.text for a in grid.figure.layout.annotations]


def test_without_sigmoid_or_tanh_the_saturation_figure_is_words():
    section = layers_section(plain_study(view(0, layer_record(lr=0.1))))
    saturation = section.items[4]
    assert isinstance(saturation, Words) and "no trial used sigmoid or tanh" in saturation.text


def test_without_relu_like_layers_the_dead_unit_figure_is_words():
    section = layers_section(plain_study(view(0, layer_record(lr=0.1, activation="sigmoid", dead=None, saturation=0.2))))
    assert isinstance(section.items[3], Words) and "dead units" in section.items[3].text


def test_many_trials_are_sampled_and_drawn_with_webgl():
    trials = [view(n, layer_record(lr=10 ** (-4 + 3 * n / MAX_POINTS), value=n / (2 * MAX_POINTS))) for n in range(MAX_POINTS + 500)]
    section = layers_section(plain_study(*trials))
    dead, ratio = section.items[3], section.items[5]
    (heatmap,) = dead.figure.data
    assert len(heatmap.x) <= MAX_POINTS and "sampled" in dead.caption
    assert hover(trials[-1]) in heatmap.text[0]  # the best trial is always among the columns
    markers = [trace for trace in ratio.figure.data if trace.mode == "markers"]
    assert {trace.type for trace in markers} == {"scattergl"}
    assert sum(len(trace.x) for trace in markers) <= MAX_POINTS and "sampled" in ratio.caption
    assert_one_sentence(dead.caption)
    assert_one_sentence(ratio.caption)
    for value in (heatmap.z[0][0], markers[0].y[0]):
        assert math.isfinite(value)

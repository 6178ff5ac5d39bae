"""The lecture's initialization experiment on the digits data, and its report section.

cs231n "Training Neural Networks I": forward one batch through 10 layers of 500 units at
initialization. Small random weights make the activations collapse to zero, Xavier keeps
tanh's outputs spread, ReLU under Xavier loses a factor sqrt(2) of std per layer and He
makes up for it. Each claim is checked on the numbers the experiment returns.
"""

import json
import math

import numpy as np
import pytest

from hpo.report.page import Figure, Words, render_page
from hpo.report.why_init import SECTION_KEY, SECTION_TITLE, init_section
from workers.data import load_dataset
from workers.init_experiment import forward_at_init, init_experiment
from workers.nn.initializers import initializer_names, sample_weights


@pytest.fixture(scope="module")
def digits_X() -> np.ndarray:
    return load_dataset("digits", seed=0).X_train


@pytest.fixture(scope="module")
def result(digits_X) -> dict:
    return init_experiment(digits_X)


def stds(result: dict, activation: str, initializer: str) -> list[float]:
    (run,) = [r for r in result["runs"] if (r["activation"], r["initializer"]) == (activation, initializer)]
    return [layer["std"] for layer in run["layers"]]


def test_every_activation_and_registered_initializer_runs_the_lectures_network(result, digits_X):
    assert (result["depth"], result["width"], result["batch_size"]) == (10, 500, 500)
    assert result["input_dim"] == digits_X.shape[1] == 64
    assert [(r["activation"], r["initializer"]) for r in result["runs"]] == [
        (activation, initializer) for activation in ("tanh", "relu") for initializer in initializer_names()
    ]
    for run in result["runs"]:
        assert [layer["layer"] for layer in run["layers"]] == list(range(1, 11))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_small_random_weights_collapse_the_activations_towards_zero(result, activation):
    small = stds(result, activation, "small")
    assert all(later < earlier for earlier, later in zip(small, small[1:]))
    assert small[9] < 1e-4 * small[0]  # orders of magnitude by layer 10


def test_xavier_keeps_tanh_spread(result):
    xavier = stds(result, "tanh", "xavier")
    assert max(xavier) < 3 * min(xavier)
    assert xavier[9] > 0.1  # far from the collapsed small-init run
    assert xavier[9] > 1e5 * stds(result, "tanh", "small")[9]


def test_he_keeps_relu_steady(result):
    he = stds(result, "relu", "he")
    assert max(he) < 1.5 * min(he)
    assert he[9] > 0.5


def test_xavier_with_relu_loses_a_factor_sqrt2_per_layer(result):
    # Glorot's Var(W) = 2 / (500 + 500) keeps the pre-activation variance equal to the last
    # layer's mean square, and ReLU halves the mean square: std / sqrt(2) per layer. Layer 1
    # (fan_in 64) has another scale, so the ratios start at layer 2.
    xavier = stds(result, "relu", "xavier")
    ratios = [earlier / later for earlier, later in zip(xavier[1:], xavier[2:])]
    assert all(abs(ratio / math.sqrt(2) - 1) < 0.1 for ratio in ratios), ratios
    overall = (xavier[1] / xavier[9]) ** (1 / 8)
    assert abs(overall - math.sqrt(2)) < 0.05


def test_histograms_count_every_activation_of_every_layer(result):
    for run in result["runs"]:
        for layer in run["layers"]:
            assert len(layer["edges"]) == len(layer["counts"]) + 1 == 21
            assert sum(layer["counts"]) == result["batch_size"] * result["width"]
            assert all(lo < hi for lo, hi in zip(layer["edges"], layer["edges"][1:]))
        # one range per run, so layers can be compared bar for bar
        assert len({tuple(layer["edges"]) for layer in run["layers"]}) == 1
    (tanh_run,) = [r for r in result["runs"] if (r["activation"], r["initializer"]) == ("tanh", "small")]
    assert tanh_run["layers"][0]["edges"][0] == -1.0 and tanh_run["layers"][0]["edges"][-1] == 1.0
    # collapsed: every activation of layer 10 lies in the two bars around 0
    assert sum(tanh_run["layers"][9]["counts"][9:11]) == 500 * 500


def test_saturation_is_reported_for_tanh_only(result):
    for run in result["runs"]:
        fractions = [layer["saturated"] for layer in run["layers"]]
        if run["activation"] == "tanh":
            assert all(0.0 <= f <= 1.0 for f in fractions)
        else:
            assert fractions == [None] * 10
    (he_tanh,) = [r for r in result["runs"] if (r["activation"], r["initializer"]) == ("tanh", "he")]
    assert he_tanh["layers"][0]["saturated"] > 0.01  # He's gain sqrt(2) pushes tanh to its bounds


def test_the_result_is_json_ready(result):
    assert json.loads(json.dumps(result)) == result


def test_the_same_seed_gives_the_same_numbers(digits_X, result):
    assert init_experiment(digits_X, seed=0) == result
    # another seed: another batch and other weights
    other = init_experiment(digits_X, seed=1, activations=("relu",), initializers=("he",))
    assert other["runs"][0]["layers"][0]["std"] != stds(result, "relu", "he")[0]


def test_a_dataset_smaller_than_the_batch_is_used_whole():
    X = np.random.default_rng(3).normal(size=(40, 7))
    result = init_experiment(X, depth=3, width=20, initializers=("xavier",))
    assert result["batch_size"] == 40
    assert all(sum(layer["counts"]) == 40 * 20 for run in result["runs"] for layer in run["layers"])


def test_forward_at_init_draws_the_registrys_weights_and_applies_its_activation():
    X = np.random.default_rng(5).standard_normal((30, 12))
    (layer,) = forward_at_init(X, activation="tanh", initializer="xavier", depth=1, width=16, seed=9)
    W = sample_weights("xavier", 12, 16, np.random.default_rng(9), dtype=np.float32, activation="tanh")
    expected = np.tanh(X.astype(np.float32) @ W).astype(np.float64)  # float32, as a trial trains
    assert layer["std"] == pytest.approx(expected.std(), rel=1e-12)
    assert layer["mean"] == pytest.approx(expected.mean(), rel=1e-12, abs=1e-15)


# --- the report section -----------------------------------------------------------------


@pytest.fixture(scope="module")
def section(result):
    return init_section(result)


def test_section_has_its_key_title_and_a_caption_under_every_figure(section):
    assert (section.key, section.title) == (SECTION_KEY, SECTION_TITLE)
    assert section.key == "why-initialization"
    figures = [item for item in section.items if isinstance(item, Figure)]
    assert len(figures) == 3  # std per layer, tanh histograms, relu histograms
    for figure in figures:
        assert figure.caption.strip().endswith(".") and len(figure.caption) > 40


def test_std_figure_draws_the_experiments_stds_on_a_log_axis(section, result):
    figure = section.items[1].figure
    for column, activation in enumerate(("tanh", "relu"), start=1):
        for initializer in initializer_names():
            (trace,) = figure.select_traces({"name": initializer}, row=1, col=column)
            assert list(trace.y) == stds(result, activation, initializer)
            assert list(trace.x) == list(range(1, 11))
            assert "layer %{x}" in trace.hovertemplate and "std %{y" in trace.hovertemplate
    assert {axis.type for axis in figure.select_yaxes()} == {"log"}


@pytest.mark.parametrize("index, activation", [(2, "tanh"), (3, "relu")])
def test_histogram_figure_draws_the_experiments_counts(section, result, index, activation):
    figure = section.items[index].figure
    runs = [r for r in result["runs"] if r["activation"] == activation]
    for row, run in enumerate(runs, start=1):
        for layer in run["layers"]:
            (trace,) = figure.select_traces(row=row, col=layer["layer"])
            assert list(trace.y) == layer["counts"]
            assert list(trace.x) == layer["edges"][:-1]
            assert list(trace.customdata) == layer["edges"][1:]
            assert f"layer {layer['layer']}, std {layer['std']:.3g}" in trace.hovertemplate


def test_words_read_this_datas_numbers(section, result):
    (words,) = [item for item in section.items if isinstance(item, Words)]
    small_tanh = stds(result, "tanh", "small")
    assert f"from {small_tanh[0]:.3g} at layer 1 to {small_tanh[9]:.3g} at layer 10" in words.text
    he_relu = stds(result, "relu", "he")
    assert f"between {min(he_relu):.3g} and {max(he_relu):.3g}" in words.text
    assert "64 features" in words.text


def test_words_follow_the_numbers_they_are_given():
    def run(activation, initializer, values):
        return {"activation": activation, "initializer": initializer, "layers": [
            {"layer": i, "mean": 0.0, "std": s, "saturated": None, "edges": [0.0, 1.0], "counts": [4]}
            for i, s in enumerate(values, start=1)
        ]}

    made_up = {"depth": 3, "width": 2, "batch_size": 2, "input_dim": 5, "runs": [
        run("relu", "he", [1.0, 10.0, 100.0]), run("relu", "xavier", [1.0, 1.2, 1.1]),
    ]}
    (words,) = [item for item in init_section(made_up).items if isinstance(item, Words)]
    text = words.text
    assert "he multiplies the std by about 10 per layer, from 1 at layer 1 to 100 at layer 3" in text
    assert "xavier keeps the std between 1 and 1.2" in text
    assert "grows on its way to layer 3 with he with relu" in text


def test_the_section_renders_into_a_page(section):
    page = render_page("report", [section])
    assert 'id="why-initialization"' in page
    assert page.count("<figcaption>") == 3

"""Initializer tests: the statistics of *sampled* weights against each formula, written out
here independently of the code (numpy-ml's leaky-ReLU gain bug survived for want of
exactly this test)."""

import math

import numpy as np
import pytest

from workers.nn.initializers import INITIALIZERS, get_initializer, sample_weights
from workers.nn.model import NetworkSpec, init_network

FAN_IN, FAN_OUT = 800, 1200   # ~1e6 samples: the sampled std is within ~0.1% of the truth


def sampled_std(name, fan_in=FAN_IN, fan_out=FAN_OUT, **kwargs):
    w = sample_weights(name, fan_in, fan_out, np.random.default_rng(7), **kwargs)
    assert w.shape == (fan_in, fan_out)
    assert abs(float(w.mean())) < 0.01 * float(w.std())
    return float(w.astype(np.float64).std())


def test_registry_keys():
    assert list(INITIALIZERS) == ["small", "xavier", "he"]
    with pytest.raises(ValueError, match="unknown initializer 'lecun'; allowed: small, xavier, he"):
        get_initializer("lecun")


@pytest.mark.parametrize("std", [0.01, 0.001, 0.5])
def test_small_random_std(std):
    assert sampled_std("small", std=std) == pytest.approx(std, rel=0.02)


def test_small_random_default_std_is_001():
    assert sampled_std("small") == pytest.approx(0.01, rel=0.02)


@pytest.mark.parametrize("fan_in,fan_out", [(FAN_IN, FAN_OUT), (3072, 100), (100, 5000)])
def test_xavier_std_is_glorot_normal(fan_in, fan_out):
    expected = math.sqrt(2.0 / (fan_in + fan_out))
    assert sampled_std("xavier", fan_in, fan_out) == pytest.approx(expected, rel=0.02)
    # and not the two look-alikes the docstring warns about
    assert not sampled_std("xavier", fan_in, fan_out) == pytest.approx(2.0 / math.sqrt(fan_in + fan_out), rel=0.02)
    if fan_in != fan_out:
        assert not sampled_std("xavier", fan_in, fan_out) == pytest.approx(1.0 / math.sqrt(fan_in), rel=0.02)


@pytest.mark.parametrize("activation", ["relu", "elu", "maxout", "tanh"])
def test_he_std(activation):
    expected = math.sqrt(2.0 / FAN_IN)
    assert sampled_std("he", activation=activation) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("slope", [0.01, 0.2, 0.5, 1.0 - 1e-9])
def test_he_std_with_leaky_relu_gain(slope):
    expected = math.sqrt(2.0 / ((1.0 + slope**2) * FAN_IN))
    got = sampled_std("he", activation="leaky_relu", leaky_slope=slope)
    assert got == pytest.approx(expected, rel=0.02)
    if slope >= 0.2:  # numpy-ml's sqrt(2 / 1 + a^2) would be off by more than 2% here
        assert not got == pytest.approx(math.sqrt((2 + slope**2) / FAN_IN), rel=0.02)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sampled_dtype(dtype):
    for name in INITIALIZERS:
        assert sample_weights(name, 3, 4, np.random.default_rng(0), dtype=dtype).dtype == dtype


def test_maxout_layers_use_k_times_units_as_fan_out():
    spec = NetworkSpec(input_dim=600, hidden_sizes=(300, 200), num_classes=10, activation="maxout", maxout_k=3)
    params, _ = init_network(spec, "xavier", np.random.default_rng(0))
    assert params["W1"].shape == (600, 900)
    assert params["W2"].shape == (300, 600)   # the next layer's fan_in is the units, not the pieces
    assert float(params["W1"].std()) == pytest.approx(math.sqrt(2.0 / (600 + 900)), rel=0.02)
    assert float(params["W2"].std()) == pytest.approx(math.sqrt(2.0 / (300 + 600)), rel=0.02)


def test_init_network_biases_gamma_beta_and_running_state():
    spec = NetworkSpec(input_dim=5, hidden_sizes=(4,), num_classes=3, batch_norm=True)
    params, bn_state = init_network(spec, "he", np.random.default_rng(0))
    assert set(params) == {"W1", "gamma1", "beta1", "W2", "b2"}
    np.testing.assert_array_equal(params["gamma1"], 1.0)
    np.testing.assert_array_equal(params["beta1"], 0.0)
    np.testing.assert_array_equal(params["b2"], 0.0)
    np.testing.assert_array_equal(bn_state["mean1"], 0.0)
    np.testing.assert_array_equal(bn_state["var1"], 1.0)
    assert all(p.dtype == np.float32 for p in params.values())
    plain, state = init_network(NetworkSpec(5, (4,), 3, batch_norm=False), "he", np.random.default_rng(0))
    assert set(plain) == {"W1", "b1", "W2", "b2"} and state == {}

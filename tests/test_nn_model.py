"""Whole-network tests: numerical gradient checks of the reference model over every
activation x initializer x batch-norm combination, the fast engine against the reference,
evaluation mode, dtypes."""

import itertools

import numpy as np
import pytest

from workers.nn.activations import ACTIVATIONS
from workers.nn.gradcheck import numerical_gradient, relative_error
from workers.nn.initializers import INITIALIZERS
from workers.nn.model import (
    FastNetwork,
    NetworkSpec,
    forward,
    hidden_outputs,
    init_network,
    loss_and_grads,
    predict_scores,
    blas_threads_for,
)

TOL = 1e-6
COMBINATIONS = list(itertools.product(ACTIVATIONS, INITIALIZERS, [True, False]))


def make_case(activation, initializer, batch_norm, *, hidden=(5, 4), n=8, d=4, c=3, seed=0, dtype=np.float64):
    spec = NetworkSpec(d, hidden, c, activation=activation, batch_norm=batch_norm, leaky_slope=0.1)
    rng = np.random.default_rng(seed)
    # "small" with its default std 0.01 makes gradients ~1e-8 in a net without batch norm,
    # below what central differences resolve; 0.1 is still a fixed, shape-blind std.
    params, bn_state = init_network(spec, initializer, rng, dtype=dtype, init_std=0.1)
    for name in params:  # non-trivial biases, gammas and betas
        if not name.startswith("W"):
            params[name] = params[name] + rng.standard_normal(params[name].shape).astype(dtype) * 0.2
    if batch_norm:
        for name in bn_state:
            bn_state[name] = bn_state[name] + rng.random(bn_state[name].shape).astype(dtype)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, c, n)
    return spec, params, bn_state, X, y


@pytest.mark.parametrize("activation,initializer,batch_norm", COMBINATIONS)
def test_model_gradients_match_numerical(activation, initializer, batch_norm):
    spec, params, bn_state, X, y = make_case(activation, initializer, batch_norm)
    loss, grads, _ = loss_and_grads(spec, params, bn_state, X, y, weight_decay=0.05)
    assert set(grads) == set(params)
    for name, value in params.items():
        num = numerical_gradient(
            lambda: loss_and_grads(spec, params, bn_state, X, y, weight_decay=0.05)[0], value
        )
        # Entries over 1000x smaller than the largest (sigmoid without batch norm shrinks
        # gradients 4x per layer) are judged against 1/1000 of the largest, where the
        # ~1e-11 rounding error of central differences stays below the tolerance.
        floor = max(1e-3 * float(np.abs(num).max()), 1e-8)
        assert relative_error(grads[name], num, floor=floor) < TOL, name


@pytest.mark.parametrize("activation,batch_norm", itertools.product(ACTIVATIONS, [True, False]))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fast_engine_equals_reference(activation, batch_norm, weight_decay):
    spec, params, bn_state, X, y = make_case(activation, "xavier", batch_norm, hidden=(6, 5, 4), n=10)
    ref_loss, ref_grads, ref_state = loss_and_grads(spec, params, bn_state, X, y, weight_decay=weight_decay)
    net = FastNetwork(spec, params, bn_state)
    loss = net.loss_and_grads(X, np.eye(3)[y], weight_decay)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in params:
        assert relative_error(net.grads[name], ref_grads[name]) < 1e-10, name
    for name, value in net.bn_state().items():
        np.testing.assert_allclose(value, ref_state[name], rtol=1e-12)
    # the engine copied the parameters; the caller's state is untouched
    for name, value in net.params.items():
        np.testing.assert_array_equal(value, params[name])


def test_fast_engine_gradients_match_numerical():
    spec, params, bn_state, X, y = make_case("tanh", "he", True)
    net = FastNetwork(spec, params, bn_state)
    onehot = np.eye(3)[y]
    net.loss_and_grads(X, onehot, 0.05)
    analytic = net.grad_flat.copy()
    numeric = numerical_gradient(lambda: FastNetwork(spec, net.params, bn_state).loss_and_grads(X, onehot, 0.05),
                                 net.param_flat)
    assert relative_error(analytic, numeric) < TOL


def test_fast_engine_handles_several_batch_sizes_and_no_hidden_layer():
    for hidden in [(), (7,)]:
        spec, params, bn_state, X, y = make_case("relu", "he", True, hidden=hidden, n=12)
        net = FastNetwork(spec, params, bn_state)
        for rows in (slice(0, 5), slice(5, 12), slice(0, 5)):
            ref_loss, ref_grads, _ = loss_and_grads(spec, net.params_copy(), net.bn_state(), X[rows], y[rows])
            loss = net.loss_and_grads(X[rows], np.eye(3)[y[rows]])
            assert loss == pytest.approx(ref_loss, rel=1e-12)
            for name in params:
                assert relative_error(net.grads[name], ref_grads[name]) < 1e-10


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_fast_engine_keeps_float32(activation):
    spec, params, bn_state, X, y = make_case(activation, "he", True, dtype=np.float32)
    net = FastNetwork(spec, params, bn_state)
    loss = net.loss_and_grads(X, np.eye(3, dtype=np.float32)[y], 0.01)
    assert isinstance(loss, float)
    assert net.param_flat.dtype == net.grad_flat.dtype == np.float32
    buffers = net.buffers(X.shape[0])
    for layer in buffers.hidden:
        for value in vars(layer).values():
            if isinstance(value, np.ndarray) and value.dtype != bool:
                assert value.dtype == np.float32
        assert layer.kernel.out.dtype == layer.kernel.dz.dtype == np.float32
    assert buffers.dscores.dtype == np.float32
    assert all(v.dtype == np.float32 for v in net.bn_state().values())
    # float32 results agree with the float64 reference to float32 precision
    spec64, params64, state64, X64, _ = make_case(activation, "he", True, dtype=np.float64)
    _, ref_grads, _ = loss_and_grads(spec64, params64, state64, X64, y, weight_decay=0.01)
    for name in params:
        np.testing.assert_allclose(net.grads[name], ref_grads[name], rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("activation,batch_norm", itertools.product(ACTIVATIONS, [True, False]))
def test_predict_scores_equals_reference_evaluation_forward(activation, batch_norm):
    spec, params, bn_state, X, _ = make_case(activation, "xavier", batch_norm)
    expected, _, new_state, _ = forward(spec, params, bn_state, X, training=False)
    np.testing.assert_allclose(predict_scores(spec, params, bn_state, X), expected, rtol=1e-10, atol=1e-12)
    for name in bn_state:
        assert new_state[name] is bn_state[name]


def test_forward_training_does_not_mutate_state():
    spec, params, bn_state, X, _ = make_case("relu", "he", True)
    saved = {k: v.copy() for k, v in bn_state.items()}
    _, _, new_state, _ = forward(spec, params, bn_state, X, training=True)
    for name, value in bn_state.items():
        np.testing.assert_array_equal(value, saved[name])
        assert not np.array_equal(new_state[name], saved[name])


def test_param_shapes_and_maxout_widths():
    spec = NetworkSpec(10, (6, 4), 3, activation="maxout", maxout_k=3, batch_norm=True)
    assert spec.param_shapes() == {
        "W1": (10, 18), "W2": (6, 12), "W3": (4, 3),
        "gamma1": (18,), "beta1": (18,), "gamma2": (12,), "beta2": (12,), "b3": (3,),
    }


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        NetworkSpec(3, (2,), 2, activation="gelu")


def test_blas_threads_yields_a_thread_budget_and_blas_still_works():
    spec = NetworkSpec(64, (100, 100), 10)
    with blas_threads_for(spec, 64) as threads:
        assert threads >= 1
        a = np.ones((64, 64), dtype=np.float32)
        assert float((a @ a)[0, 0]) == 64.0


def test_two_threads_give_the_same_step_as_one():
    """Products of >= SPLIT_MIN_FLOPS are split over two threads: same numbers."""
    spec = NetworkSpec(1000, (100,), 10)
    rng = np.random.default_rng(3)
    params, bn_state = init_network(spec, "he", rng, dtype=np.float64)
    X = rng.standard_normal((128, 1000))
    onehot = np.eye(10)[rng.integers(0, 10, 128)]
    with FastNetwork(spec, params, bn_state, threads=1) as single, \
            FastNetwork(spec, params, bn_state, threads=2) as double:
        assert double.buffers(128).split == [True] and single.buffers(128).split == [False]
        assert double.loss_and_grads(X, onehot) == pytest.approx(single.loss_and_grads(X, onehot), rel=1e-12)
        np.testing.assert_allclose(double.grad_flat, single.grad_flat, rtol=1e-10, atol=1e-14)
        opt1 = single.optimizer("adam", 1e-2)
        opt2 = double.optimizer("adam", 1e-2)
        assert len(opt2.parts) == 2 and len(opt1.parts) == 1
        double.grad_flat[...] = single.grad_flat
        opt1.step()
        opt2.step()
        # elementwise rules: the split update is exactly the whole one
        np.testing.assert_array_equal(double.param_flat, single.param_flat)
        opt2.decay_learning_rate(0.5)
        assert opt2.learning_rate == pytest.approx(5e-3)
        assert all(part.learning_rate == pytest.approx(5e-3) for part, _ in opt2.parts)
    assert double._pool is None  # the helper thread was stopped


def test_network_spec_rejects_bad_activation_parameters():
    with pytest.raises(ValueError, match="leaky_slope"):
        NetworkSpec(3, (2,), 2, activation="leaky_relu", leaky_slope=1.5)


@pytest.mark.parametrize("activation,batch_norm", [("relu", True), ("maxout", True), ("tanh", False)])
def test_probe_matches_reference_and_leaves_running_statistics(activation, batch_norm):
    spec, params, bn_state, X, _ = make_case(activation, "he", batch_norm, hidden=(6, 5), n=10)
    net = FastNetwork(spec, params, bn_state)
    before = net.bn_state()
    expected = hidden_outputs(spec, params, bn_state, X, training=True)
    for (z, a), (z_ref, a_ref) in zip(net.probe(X), expected):
        np.testing.assert_allclose(z, z_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a, a_ref, rtol=1e-10, atol=1e-12)
    for name, value in net.bn_state().items():
        np.testing.assert_array_equal(value, before[name])

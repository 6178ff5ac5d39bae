"""Whole-network tests: numerical gradient checks of both the reference chain and the
engine over every activation x initializer x batch-norm combination, the engine against
the reference (training step, running statistics, probe, evaluation scores, maxout at a
tie), dtypes, BLAS threads, and that only tests and gradient-check tooling import the
reference."""

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from workers.nn.activations import ACTIVATIONS, MAXOUT_MIN_PIECES
from workers.nn.blas import blas_threads_for
from workers.nn.gradcheck import numerical_gradient, relative_error
from workers.nn.initializers import INITIALIZERS
from workers.nn.model import FastNetwork, NetworkSpec, init_network
from workers.nn.reference import forward, hidden_outputs, loss_and_grads

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


@pytest.mark.parametrize("activation,initializer,batch_norm", COMBINATIONS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fast_engine_equals_reference(activation, initializer, batch_norm, weight_decay):
    spec, params, bn_state, X, y = make_case(activation, initializer, batch_norm, hidden=(6, 5, 4), n=10)
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


@pytest.mark.parametrize("activation,initializer,batch_norm", COMBINATIONS)
def test_fast_engine_gradients_match_numerical(activation, initializer, batch_norm):
    spec, params, bn_state, X, y = make_case(activation, initializer, batch_norm)
    net = FastNetwork(spec, params, bn_state)
    onehot = np.eye(3)[y]
    net.loss_and_grads(X, onehot, 0.05)
    analytic = net.grad_flat.copy()
    # net.loss reads the perturbed param_flat in place and leaves the running statistics
    numeric = numerical_gradient(lambda: net.loss(X, onehot, 0.05), net.param_flat)
    floor = max(1e-3 * float(np.abs(numeric).max()), 1e-8)  # as in the reference's check
    assert relative_error(analytic, numeric, floor=floor) < TOL


def test_fast_loss_is_the_reference_loss_and_leaves_state_and_gradients():
    spec, params, bn_state, X, y = make_case("elu", "he", True)
    net = FastNetwork(spec, params, bn_state)
    net.grad_flat[...] = 7.0
    ref_loss, _, _ = loss_and_grads(spec, params, bn_state, X, y, weight_decay=0.1)
    assert net.loss(X, np.eye(3)[y], 0.1) == pytest.approx(ref_loss, rel=1e-12)
    assert np.all(net.grad_flat == 7.0)
    for name, value in net.bn_state().items():
        np.testing.assert_array_equal(value, bn_state[name])


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
def test_scores_equal_reference_evaluation_forward(activation, batch_norm):
    spec, params, bn_state, X, y = make_case(activation, "xavier", batch_norm)
    expected, _, new_state, _ = forward(spec, params, bn_state, X, training=False)
    net = FastNetwork(spec, params, bn_state)
    np.testing.assert_allclose(net.scores(X), expected, rtol=1e-10, atol=1e-12)
    for name in bn_state:
        assert new_state[name] is bn_state[name]
    # after a training step, with the running statistics it moved
    net.loss_and_grads(X, np.eye(3)[y])
    expected, _, _, _ = forward(spec, net.params_copy(), net.bn_state(), X, training=False)
    np.testing.assert_allclose(net.scores(X), expected, rtol=1e-10, atol=1e-12)


def test_scores_go_through_chunks_of_any_size(monkeypatch):
    import workers.nn.model as model

    spec, params, bn_state, X, _ = make_case("maxout", "he", True, n=11)
    whole = FastNetwork(spec, params, bn_state).scores(X)
    monkeypatch.setattr(model, "SCORE_CHUNK", 4)  # 4 + 4 + 3 rows
    np.testing.assert_allclose(FastNetwork(spec, params, bn_state).scores(X), whole, rtol=1e-12)
    assert FastNetwork(spec, params, bn_state).scores(X[:0]).shape == (0, 3)


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


def blas_thread_counts():
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_threads_are_held_to_one_in_the_block_and_restored():
    spec = NetworkSpec(64, (100, 100), 10)
    before = blas_thread_counts()
    with blas_threads_for(spec, 64) as threads:
        assert threads == max(1, min(before))
        assert set(blas_thread_counts()) == {1}
        a = np.ones((64, 64), dtype=np.float32)
        assert float((a @ a)[0, 0]) == 64.0
    assert blas_thread_counts() == before


def test_blas_is_left_alone_for_large_products():
    spec = NetworkSpec(100_000, (10_000,), 10)  # 2 * 64 * 1e5 * 1e4 flops > SINGLE_THREAD_MAX_FLOPS
    before = blas_thread_counts()
    with blas_threads_for(spec, 64) as threads:
        assert threads == 1
        assert blas_thread_counts() == before


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
    with pytest.raises(ValueError, match=r"leaky_slope must be in \[0, 1\), got 1.5"):
        NetworkSpec(3, (2,), 2, activation="leaky_relu", leaky_slope=1.5)
    with pytest.raises(ValueError, match=f"maxout_k must be >= {MAXOUT_MIN_PIECES}, got 1"):
        NetworkSpec(3, (2,), 2, activation="maxout", maxout_k=MAXOUT_MIN_PIECES - 1)
    assert NetworkSpec(3, (2,), 2, activation="maxout", maxout_k=MAXOUT_MIN_PIECES).pieces == MAXOUT_MIN_PIECES


def test_network_spec_takes_its_defaults_and_parameters_from_the_registry():
    spec = NetworkSpec(3, (2,), 2)
    for activation in ACTIVATIONS.values():
        for field_name, keyword in activation.config_fields.items():
            assert getattr(spec, field_name) == activation.params[keyword]
    assert NetworkSpec(3, (2,), 2, activation="elu", elu_alpha=0.5).activation_kwargs == {"alpha": 0.5}
    assert NetworkSpec(3, (2,), 2, activation="relu").activation_kwargs == {}


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


@pytest.mark.parametrize("batch_norm", [True, False])
def test_maxout_tie_gives_the_gradient_to_the_first_piece_as_the_reference(batch_norm):
    """Pieces 0 and 1 of every unit have the same weights (and bias, gamma, beta): their
    outputs tie exactly on every example.  The gradient goes to piece 0 only, as in the
    reference (argmax) and PyTorch's max(dim); piece 1's columns get none."""
    spec, params, bn_state, X, y = make_case("maxout", "he", batch_norm, hidden=(4, 3), n=10)
    units = spec.hidden_sizes[0]
    for name in ("W1", "b1", "gamma1", "beta1"):
        if name in params:
            params[name][..., units:] = params[name][..., :units]
    if batch_norm:
        for name in ("mean1", "var1"):
            bn_state[name][units:] = bn_state[name][:units]
    hidden = hidden_outputs(spec, params, bn_state, X)
    z1 = hidden[0][0]
    assert np.array_equal(z1[:, :units], z1[:, units:])  # an exact tie, in float64
    _, ref_grads, _ = loss_and_grads(spec, params, bn_state, X, y)
    net = FastNetwork(spec, params, bn_state)
    net.loss_and_grads(X, np.eye(3)[y])
    assert np.all(ref_grads["W1"][:, units:] == 0)
    assert np.all(net.grads["W1"][:, units:] == 0)
    for name in params:
        # atol: with batch norm, beta1's gradient is 0 analytically (~1e-17 computed)
        np.testing.assert_allclose(net.grads[name], ref_grads[name], rtol=1e-10, atol=1e-14, err_msg=name)


PRODUCTION = ("hpo", "workers", "storage", "benchmarks")
MAY_IMPORT_REFERENCE = {"workers/nn/gradcheck.py", "workers/nn/reference.py"}


def test_only_tests_and_gradient_check_tooling_import_the_reference():
    root = Path(__file__).resolve().parent.parent
    importers = []
    for package in PRODUCTION:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
                if isinstance(node, ast.ImportFrom) and node.module == "workers.nn":
                    names += [f"workers.nn.{alias.name}" for alias in node.names]
                if "workers.nn.reference" in names and relative not in MAY_IMPORT_REFERENCE:
                    importers.append(relative)
    assert importers == []

"""Layer-level tests: numerical gradient checks of every forward/backward pair, each
activation's fast kernel against its pair (a maxout tie included), batch-norm behaviour,
the stability of the softmax loss, dtype preservation, the activation registry."""

import inspect

import numpy as np
import pytest

from workers.nn.activations import (
    ACTIVATIONS,
    MAXOUT_MIN_PIECES,
    activation_kwargs,
    config_default,
    get_activation,
)
from workers.nn.gradcheck import numerical_gradient, numerical_gradient_array, relative_error
from workers.nn.layers import (
    BNState,
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
)
from workers.nn.losses import cross_entropy_from_probs, l2_penalty, softmax, softmax_cross_entropy

TOL = 1e-6


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- affine ---------------------------------------------------------------------------

@pytest.mark.parametrize("with_bias", [True, False])
def test_affine_gradients_match_numerical(rng, with_bias):
    x = rng.standard_normal((5, 4))
    W = rng.standard_normal((4, 3))
    b = rng.standard_normal(3) if with_bias else None
    dout = rng.standard_normal((5, 3))
    _, cache = affine_forward(x, W, b)
    dx, dW, db = affine_backward(dout, cache)
    f = lambda: affine_forward(x, W, b)[0]
    assert relative_error(dx, numerical_gradient_array(f, x, dout)) < TOL
    assert relative_error(dW, numerical_gradient_array(f, W, dout)) < TOL
    if with_bias:
        assert relative_error(db, numerical_gradient_array(f, b, dout)) < TOL
    else:
        assert db is None


def test_affine_forward_values():
    x = np.array([[1.0, 2.0]])
    W = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 1.0]])
    out, _ = affine_forward(x, W, np.array([0.0, 1.0, 0.5]))
    np.testing.assert_allclose(out, [[2.0, 5.0, 1.5]])


# --- activations ----------------------------------------------------------------------

ACTIVATION_CASES = [
    ("sigmoid", {}),
    ("tanh", {}),
    ("relu", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"slope": 0.2}),
    ("elu", {}),
    ("elu", {"alpha": 0.5}),
    ("maxout", {}),
    ("maxout", {"k": 3}),
]


@pytest.mark.parametrize("name,params", ACTIVATION_CASES)
def test_activation_gradients_match_numerical(rng, name, params):
    act = ACTIVATIONS[name]
    k = params.get("k", 2) if name == "maxout" else 1
    # keep inputs away from the kinks at 0 where central differences are meaningless
    x = rng.standard_normal((4, 3 * k))
    x += np.sign(x) * 0.05
    out, cache = act.forward(x, **params)
    dout = rng.standard_normal(out.shape)
    dx = act.backward(dout, cache)
    num = numerical_gradient_array(lambda: act.forward(x, **params)[0], x, dout)
    assert dx.shape == x.shape
    assert relative_error(dx, num) < TOL


@pytest.mark.parametrize("name,params", ACTIVATION_CASES)
def test_activation_keeps_float32(rng, name, params):
    act = ACTIVATIONS[name]
    k = params.get("k", 2) if name == "maxout" else 1
    x = rng.standard_normal((4, 2 * k)).astype(np.float32)
    out, cache = act.forward(x, **params)
    dx = act.backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and dx.dtype == np.float32


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_does_not_mutate_input(rng, name):
    x = rng.standard_normal((3, 4))
    before = x.copy()
    ACTIVATIONS[name].forward(x)
    np.testing.assert_array_equal(x, before)


def test_activation_values():
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(ACTIVATIONS["relu"].forward(x)[0], [[0, 0, 3]])
    np.testing.assert_allclose(ACTIVATIONS["leaky_relu"].forward(x)[0], [[-0.02, 0, 3]])
    np.testing.assert_allclose(ACTIVATIONS["leaky_relu"].forward(x, slope=0.1)[0], [[-0.2, 0, 3]])
    np.testing.assert_allclose(ACTIVATIONS["elu"].forward(x)[0], [[np.exp(-2) - 1, 0, 3]])
    np.testing.assert_allclose(ACTIVATIONS["elu"].forward(x, alpha=2.0)[0], [[2 * (np.exp(-2) - 1), 0, 3]])
    np.testing.assert_allclose(ACTIVATIONS["sigmoid"].forward(x)[0], 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(ACTIVATIONS["tanh"].forward(x)[0], np.tanh(x))
    # maxout, k=2, pieces laid out block by block: units are (x0, x2), (x1, x3)
    m = np.array([[1.0, -5.0, 0.5, 2.0]])
    np.testing.assert_allclose(ACTIVATIONS["maxout"].forward(m)[0], [[1.0, 2.0]])


def test_sigmoid_and_elu_do_not_overflow():
    x = np.array([[-1000.0, 1000.0]], dtype=np.float32)
    with np.errstate(over="raise"):
        s, _ = ACTIVATIONS["sigmoid"].forward(x)
        e, _ = ACTIVATIONS["elu"].forward(x)
    np.testing.assert_allclose(s, [[0.0, 1.0]])
    np.testing.assert_allclose(e, [[-1.0, 1000.0]])


def test_registry_keys_and_families():
    assert list(ACTIVATIONS) == ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout"]
    assert {n for n, a in ACTIVATIONS.items() if a.family == "saturating"} == {"sigmoid", "tanh"}
    assert {n for n, a in ACTIVATIONS.items() if a.family == "relu_like"} == {"relu", "leaky_relu", "elu", "maxout"}
    with pytest.raises(ValueError, match="unknown activation 'swish'; allowed: sigmoid, tanh"):
        get_activation("swish")


def test_dead_fraction_counts_units_inactive_on_every_example():
    relu = ACTIVATIONS["relu"]
    x = np.array([[-1.0, 2.0, -3.0, 0.0], [-0.5, -1.0, 4.0, -2.0]])
    out, _ = relu.forward(x)
    # column 0 and column 3 never positive
    assert relu.dead_fraction(x, out) == pytest.approx(0.5)
    assert relu.saturated_fraction(out) is None


def _kernel_case(rng, name, params, n=5, units=3):
    act = ACTIVATIONS[name]
    kwargs = {**act.params, **params}
    width = units * act.columns_per_unit(kwargs)
    kernel = act.make_kernel(n, width, units, np.float64, kwargs)
    return act, kwargs, kernel, rng.standard_normal((n, width))


@pytest.mark.parametrize("name,params", ACTIVATION_CASES)
def test_kernel_computes_what_the_pure_pair_computes(rng, name, params):
    act, kwargs, kernel, z = _kernel_case(rng, name, params)
    expected, cache = act.forward(z, **kwargs)
    np.testing.assert_allclose(kernel.forward(z), expected, rtol=1e-14, atol=1e-15)
    da = rng.standard_normal(expected.shape)
    np.testing.assert_allclose(kernel.backward(da), act.backward(da, cache), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("k", [2, 3])
def test_maxout_kernel_at_an_exact_tie_gives_the_gradient_to_the_first_piece(rng, k):
    act, kwargs, kernel, z = _kernel_case(rng, "maxout", {"k": k}, n=4, units=3)
    units = 3
    z[:, units:2 * units] = z[:, :units]          # pieces 0 and 1 tie everywhere,
    for piece in range(2, k):                      # the others lose,
        z[:, piece * units:(piece + 1) * units] = z[:, :units] - 1.0
    z[0, (k - 1) * units] = z[0, 0] + 10.0         # but unit 0 of row 0: the last piece wins
    expected, cache = act.forward(z, **kwargs)
    np.testing.assert_array_equal(kernel.forward(z), expected)
    da = rng.standard_normal(expected.shape)
    dz = kernel.backward(da)
    np.testing.assert_array_equal(dz, act.backward(da, cache))
    np.testing.assert_array_equal(dz[1:, units:], 0.0)     # the tied second piece: nothing
    np.testing.assert_array_equal(dz[1:, :units], da[1:])  # the first: all of it
    assert dz[0, (k - 1) * units] == da[0, 0] and dz[0, 0] == 0.0


def test_each_registry_entry_declares_its_parameters_once():
    for act in ACTIVATIONS.values():
        # the pure forward and the kernel take exactly the declared keywords, with the
        # registry's defaults
        forward_params = list(inspect.signature(act.forward).parameters.values())[1:]
        assert {p.name: p.default for p in forward_params} == act.params, act.name
        kernel_params = list(inspect.signature(act.kernel).parameters.values())[4:]
        assert {p.name: p.default for p in kernel_params} == act.params, act.name
        assert set(act.config_fields.values()) == set(act.params), act.name
        assert set(act.ranges) <= set(act.params) and (act.pieces is None or act.pieces in act.params)
    assert config_default("leaky_slope") == ACTIVATIONS["leaky_relu"].params["slope"]
    assert config_default("maxout_k") == ACTIVATIONS["maxout"].params["k"] >= MAXOUT_MIN_PIECES


def test_activation_kwargs_converts_checks_and_picks_the_chosen_activation():
    fields = {"leaky_slope": 0.2, "elu_alpha": 2, "maxout_k": 3}
    assert activation_kwargs("elu", fields) == {"alpha": 2.0}
    assert activation_kwargs("maxout", fields) == {"k": 3}
    assert activation_kwargs("tanh", fields) == {}
    assert activation_kwargs("leaky_relu", {}) == {"slope": config_default("leaky_slope")}
    with pytest.raises(ValueError, match=f"maxout_k must be >= {MAXOUT_MIN_PIECES}, got 1"):
        activation_kwargs("relu", {**fields, "maxout_k": MAXOUT_MIN_PIECES - 1})
    with pytest.raises(ValueError, match=r"leaky_slope must be in \[0, 1\)"):
        activation_kwargs("leaky_relu", {"leaky_slope": -0.1})


def test_maxout_dead_fraction_counts_pieces_that_never_win():
    maxout = ACTIVATIONS["maxout"]
    # 2 units, 2 pieces: columns (piece0 unit0, piece0 unit1, piece1 unit0, piece1 unit1)
    x = np.array([[5.0, 0.0, 1.0, 1.0], [6.0, 2.0, 0.0, 1.0]])
    out, _ = maxout.forward(x)
    # piece 1 of unit 0 (column 2) never wins; unit 1 pieces each win once
    assert maxout.dead_fraction(x, out, k=2) == pytest.approx(0.25)


def test_saturated_fraction_for_sigmoid_and_tanh():
    s = np.array([[0.005, 0.5, 0.995, 0.2]])
    assert ACTIVATIONS["sigmoid"].saturated_fraction(s) == pytest.approx(0.5)
    t = np.array([[-0.995, 0.0, 0.99, 0.97]])
    assert ACTIVATIONS["tanh"].saturated_fraction(t) == pytest.approx(0.5)
    assert ACTIVATIONS["tanh"].dead_fraction(t, t) is None


# --- batch normalization --------------------------------------------------------------

def _bn_inputs(rng, n=6, d=4):
    x = rng.standard_normal((n, d)) * 3 + 2
    gamma = rng.standard_normal(d) + 1.5
    beta = rng.standard_normal(d)
    state = BNState(rng.standard_normal(d), rng.random(d) + 0.5)
    return x, gamma, beta, state


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients_match_numerical(rng, training):
    x, gamma, beta, state = _bn_inputs(rng)
    out, cache, _ = batchnorm_forward(x, gamma, beta, state, training=training)
    dout = rng.standard_normal(out.shape)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    f = lambda: batchnorm_forward(x, gamma, beta, state, training=training)[0]
    assert relative_error(dx, numerical_gradient_array(f, x, dout)) < TOL
    assert relative_error(dgamma, numerical_gradient_array(f, gamma, dout)) < TOL
    assert relative_error(dbeta, numerical_gradient_array(f, beta, dout)) < TOL


def test_batchnorm_training_output_has_mean_beta_and_std_gamma(rng):
    x = rng.standard_normal((500, 3)) * np.array([10.0, 0.1, 3.0]) + np.array([5.0, -2.0, 0.0])
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 3.0])
    out, _, _ = batchnorm_forward(x, gamma, beta, BNState.initial(3, np.float64), training=True)
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-9)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-3)


def test_batchnorm_eval_uses_running_statistics(rng):
    x = rng.standard_normal((4, 2))
    state = BNState(np.array([1.0, -1.0]), np.array([4.0, 0.25]))
    gamma, beta = np.array([2.0, 1.0]), np.array([0.5, 0.0])
    out, _, new_state = batchnorm_forward(x, gamma, beta, state, training=False)
    expected = gamma * (x - state.mean) / np.sqrt(state.var + 1e-5) + beta
    np.testing.assert_allclose(out, expected)
    assert new_state is state
    # evaluation is per example: one row alone gives the same output as in a batch
    alone, _, _ = batchnorm_forward(x[:1], gamma, beta, state, training=False)
    np.testing.assert_allclose(alone, out[:1])


def test_batchnorm_returns_new_running_state_and_leaves_the_old_one(rng):
    x, gamma, beta, state = _bn_inputs(rng)
    mean_before, var_before = state.mean.copy(), state.var.copy()
    _, _, new_state = batchnorm_forward(x, gamma, beta, state, training=True, momentum=0.9)
    np.testing.assert_array_equal(state.mean, mean_before)
    np.testing.assert_array_equal(state.var, var_before)
    np.testing.assert_allclose(new_state.mean, 0.9 * mean_before + 0.1 * x.mean(axis=0))
    np.testing.assert_allclose(new_state.var, 0.9 * var_before + 0.1 * x.var(axis=0))
    assert new_state.mean is not state.mean


def test_batchnorm_keeps_float32(rng):
    x, gamma, beta, _ = (a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in _bn_inputs(rng))
    state = BNState.initial(4, np.float32)
    for training in (True, False):
        out, cache, new_state = batchnorm_forward(x, gamma, beta, state, training=training)
        grads = batchnorm_backward(np.ones_like(out), cache)
        assert out.dtype == np.float32
        assert new_state.mean.dtype == new_state.var.dtype == np.float32
        assert all(g.dtype == np.float32 for g in grads)


# --- losses ---------------------------------------------------------------------------

def test_softmax_cross_entropy_gradient_matches_numerical(rng):
    scores = rng.standard_normal((7, 4))
    y = rng.integers(0, 4, 7)
    loss, dscores = softmax_cross_entropy(scores, y)
    num = numerical_gradient(lambda: softmax_cross_entropy(scores, y)[0], scores)
    assert relative_error(dscores, num) < TOL


def test_softmax_cross_entropy_values():
    scores = np.zeros((2, 4))
    loss, dscores = softmax_cross_entropy(scores, np.array([0, 3]))
    assert loss == pytest.approx(np.log(4))
    np.testing.assert_allclose(dscores, [[-0.375, 0.125, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]])


def test_softmax_cross_entropy_is_stable_for_huge_scores():
    scores = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        loss, dscores = softmax_cross_entropy(scores, np.array([1, 1]))
    assert loss == pytest.approx(1e4 / 2, rel=1e-6)  # first row: -log p = 1e4; second: 0
    assert dscores.dtype == np.float32 and np.isfinite(dscores).all()
    probs = softmax(scores)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_cross_entropy_from_probs_clips_with_dtype_eps():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    loss = cross_entropy_from_probs(probs, np.array([1, 0]))
    expected = (-np.log(np.finfo(np.float32).eps) + np.log(2)) / 2
    assert np.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_from_probs_agrees_with_log_sum_exp_form(rng):
    scores = rng.standard_normal((5, 3))
    y = rng.integers(0, 3, 5)
    assert cross_entropy_from_probs(softmax(scores), y) == pytest.approx(softmax_cross_entropy(scores, y)[0])


def test_l2_penalty_value_and_gradient(rng):
    weights = [rng.standard_normal((3, 2)), rng.standard_normal((2, 4))]
    loss, grads = l2_penalty(weights, 0.3)
    assert loss == pytest.approx(0.15 * sum((w**2).sum() for w in weights))
    for w, g in zip(weights, grads):
        num = numerical_gradient(lambda: l2_penalty(weights, 0.3)[0], w)
        assert relative_error(g, num) < TOL

"""Optimizer tests: two steps of each update rule worked out by hand with concrete numbers.

Common setup: p = [1, -2], first gradient g1 = [0.5, -1], second g2 = [1, 2],
learning rate 0.1, momentum 0.9; Adam with beta1 0.9, beta2 0.999, eps 1e-8.
"""

import numpy as np
import pytest

from workers.nn.optimizers import OPTIMIZERS, Adam, Momentum, Nesterov, SGD, make_optimizer

G1 = np.array([0.5, -1.0])
G2 = np.array([1.0, 2.0])


def run(cls, *grads, dtype=np.float64, **kwargs):
    p = np.array([1.0, -2.0], dtype=dtype)
    opt = cls([p], learning_rate=0.1, **kwargs)
    history = []
    for g in grads:
        opt.step([g.astype(dtype)])
        history.append(p.copy())
    return opt, p, history


def test_registry_keys():
    assert list(OPTIMIZERS) == ["sgd", "momentum", "nesterov", "adam"]
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; allowed: sgd, momentum, nesterov, adam"):
        make_optimizer("rmsprop", [np.zeros(2)], 0.1)


def test_sgd_step():
    # p - lr g = [1 - 0.05, -2 + 0.1]
    _, _, (p1, p2) = run(SGD, G1, G2)
    np.testing.assert_allclose(p1, [0.95, -1.9])
    # then [0.95 - 0.1, -1.9 - 0.2]
    np.testing.assert_allclose(p2, [0.85, -2.1])


def test_momentum_steps():
    # v1 = 0.9*0 - 0.1*g1 = [-0.05, 0.1];  p1 = p + v1 = [0.95, -1.9]
    # v2 = 0.9*v1 - 0.1*g2 = [-0.045 - 0.1, 0.09 - 0.2] = [-0.145, -0.11];  p2 = [0.805, -2.01]
    opt, _, (p1, p2) = run(Momentum, G1, G2, momentum=0.9)
    np.testing.assert_allclose(p1, [0.95, -1.9])
    np.testing.assert_allclose(p2, [0.805, -2.01])
    np.testing.assert_allclose(opt.velocity[0], [-0.145, -0.11])


def test_nesterov_steps():
    # cs231n form: v = mu v - lr g;  p += -mu v_prev + (1 + mu) v
    # step 1: v1 = [-0.05, 0.1];  p1 = p + 1.9 v1 = [1 - 0.095, -2 + 0.19] = [0.905, -1.81]
    # step 2: v2 = [-0.145, -0.11];  p2 = p1 - 0.9 v1 + 1.9 v2
    #         = [0.905 + 0.045 - 0.2755, -1.81 - 0.09 - 0.209] = [0.6745, -2.109]
    _, _, (p1, p2) = run(Nesterov, G1, G2, momentum=0.9)
    np.testing.assert_allclose(p1, [0.905, -1.81])
    np.testing.assert_allclose(p2, [0.6745, -2.109])


def test_adam_steps():
    # step 1: m = 0.1 g1, v = 0.001 g1^2; bias-corrected m_hat = g1, v_hat = g1^2,
    #         so p moves by lr * g1 / (|g1| + eps): [1 - 0.1, -2 + 0.1] (eps shifts it by ~1e-9)
    # step 2: m = 0.9 * [0.05, -0.1] + 0.1 * [1, 2] = [0.145, 0.11]
    #         v = 0.999 * [0.00025, 0.001] + 0.001 * [1, 4] = [0.00124975, 0.004999]
    #         m_hat = m / (1 - 0.9^2) = [0.7631579, 0.5789474]
    #         v_hat = v / (1 - 0.999^2) = [0.6251876, 2.5007504]
    #         lr m_hat / sqrt(v_hat) = [0.0965182, 0.0366104]
    opt, _, (p1, p2) = run(Adam, G1, G2)
    np.testing.assert_allclose(p1, [0.9, -1.9], rtol=1e-7)
    np.testing.assert_allclose(opt.m[0], [0.145, 0.11])
    np.testing.assert_allclose(opt.v[0], [0.00124975, 0.004999])
    np.testing.assert_allclose(p2, [0.9 - 0.0965182014, -1.9 - 0.0366103525], rtol=1e-8)
    assert opt.t == 2


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_updates_in_place_and_keeps_float32(name):
    p = np.array([1.0, -2.0], dtype=np.float32)
    opt = make_optimizer(name, [p], 0.1)
    opt.step([np.array([0.5, -1.0], dtype=np.float32)])
    assert opt.params[0] is p            # the caller's array was updated, not replaced
    assert p.dtype == np.float32
    assert not np.array_equal(p, [1.0, -2.0])
    for state in (getattr(opt, a) for a in ("velocity", "m", "v") if hasattr(opt, a)):
        assert state[0].dtype == np.float32


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float32_step_matches_float64(name):
    _, p64, _ = run(OPTIMIZERS[name], G1, G2, dtype=np.float64)
    _, p32, _ = run(OPTIMIZERS[name], G1, G2, dtype=np.float32)
    np.testing.assert_allclose(p32, p64, rtol=1e-6)


def test_learning_rate_decay_is_multiplicative():
    p = np.zeros(1)
    opt = make_optimizer("sgd", [p], 0.1)
    opt.decay_learning_rate(0.5)
    opt.decay_learning_rate(0.5)
    assert opt.learning_rate == pytest.approx(0.025)
    opt.step([np.ones(1)])
    np.testing.assert_allclose(p, [-0.025])


def test_several_parameters_are_updated_independently():
    a, b = np.ones(2), np.ones((1, 3))
    opt = make_optimizer("momentum", [a, b], 0.1)
    opt.step([np.full(2, 2.0), np.full((1, 3), -1.0)])
    np.testing.assert_allclose(a, 0.8)
    np.testing.assert_allclose(b, 1.1)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="learning_rate"):
        SGD([np.zeros(1)], learning_rate=0.0)
    with pytest.raises(ValueError, match="momentum"):
        Momentum([np.zeros(1)], learning_rate=0.1, momentum=1.0)

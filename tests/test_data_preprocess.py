"""Preprocessing: fitted on the training split only, and each kind does what it says."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from workers.data import PREPROCESSING, TAKES_COMPONENTS, fit_preprocessor, load_dataset

KINDS = list(PREPROCESSING)


def correlated(n: int, d: int, seed: int = 0, shift: float = 3.0) -> np.ndarray:
    """(n, d) Gaussian data with a non-trivial mean and full-rank, correlated covariance."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) + 2 * np.eye(d)
    return rng.normal(size=(n, d)) @ mixing + shift * rng.normal(size=d)


def test_registry_is_the_list_of_choices():
    assert KINDS == ["none", "center", "standardize", "pca", "pca_whiten", "zca"]
    assert TAKES_COMPONENTS == {"pca", "pca_whiten", "zca"}
    for kind in KINDS:
        assert fit_preprocessor(kind, correlated(20, 3)).kind == kind


def test_unknown_kind_names_the_allowed_values():
    with pytest.raises(ValueError, match="unknown preprocessing 'whiten'; allowed: none, center, standardize, pca, pca_whiten, zca"):
        fit_preprocessor("whiten", correlated(20, 3))


@pytest.mark.parametrize("components", [0, -1, 5, 0.0, 1.5, -0.2, float("nan"), True, "2", [2]])
@pytest.mark.parametrize("kind", sorted(TAKES_COMPONENTS))
def test_bad_components(kind, components):
    with pytest.raises(ValueError, match=r"components must be an int in \[1, 4\], a float in \(0, 1\], or None"):
        fit_preprocessor(kind, correlated(20, 4), components=components)


@pytest.mark.parametrize("kind", ["none", "center", "standardize"])
def test_components_for_a_kind_that_ignores_them(kind):
    with pytest.raises(ValueError, match="applies only to pca, pca_whiten, zca"):
        fit_preprocessor(kind, correlated(20, 4), components=2)


@pytest.mark.parametrize("eps", [-1e-3, float("nan"), float("inf"), "0.1"])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        fit_preprocessor("zca", correlated(20, 4), eps=eps)


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros(5), "non-empty 2-D"),
        (np.zeros((0, 3)), "non-empty 2-D"),
        (np.array([[1.0, np.nan]]), "NaN or infinite"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_bad_training_data(X, message):
    with pytest.raises(ValueError, match=message):
        fit_preprocessor("center", X)


def test_pca_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 training rows"):
        fit_preprocessor("pca", np.ones((1, 3)))


@pytest.mark.parametrize("kind", KINDS)
def test_transform_checks_feature_count(kind):
    prep = fit_preprocessor(kind, correlated(20, 4))
    with pytest.raises(ValueError, match="fitted on 4 features"):
        prep.transform(np.zeros((3, 5)))


# ---------------------------------------------------------------------------
# no leakage: only the training split is ever looked at
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_val_and_test_use_train_statistics_only(kind):
    X_train = correlated(200, 5, seed=0)
    X_val = correlated(50, 5, seed=1, shift=10.0)  # a different distribution
    prep = fit_preprocessor(kind, X_train)
    Z_val = prep.transform(X_val)
    # a row's transform does not depend on which other rows come with it: no
    # statistic of the val/test data enters
    for i in (0, 17, 49):
        np.testing.assert_allclose(prep.transform(X_val[i : i + 1])[0], Z_val[i], rtol=1e-12, atol=1e-12)
    # refitting on the same training data gives the same transform, whatever val is
    again = fit_preprocessor(kind, X_train.copy())
    np.testing.assert_array_equal(again.transform(X_val * 2), prep.transform(X_val * 2))
    if kind != "none":
        # centering used the train mean, so shifted val data is not forced to mean zero
        assert np.abs(Z_val.mean(axis=0)).max() > 0.5
        assert np.abs(prep.transform(X_train).mean(axis=0)).max() < 1e-9


def test_center_and_standardize_use_train_mean_and_std():
    X_train, X_val = correlated(100, 4, seed=0), correlated(30, 4, seed=1)
    centered = fit_preprocessor("center", X_train).transform(X_val)
    np.testing.assert_allclose(centered, X_val - X_train.mean(axis=0))
    standardized = fit_preprocessor("standardize", X_train).transform(X_val)
    np.testing.assert_allclose(standardized, (X_val - X_train.mean(axis=0)) / X_train.std(axis=0))


# ---------------------------------------------------------------------------
# standardize
# ---------------------------------------------------------------------------


def test_standardize_constant_features_become_exact_zeros():
    X = correlated(50, 4)
    X[:, 1] = 0.1  # 50 * 0.1 / 50 != 0.1 in floating point
    X[:, 3] = 0.0
    prep = fit_preprocessor("standardize", X)
    Z = prep.transform(X)
    assert np.isfinite(Z).all()
    assert np.all(Z[:, [1, 3]] == 0.0)
    np.testing.assert_allclose(Z[:, [0, 2]].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z[:, [0, 2]].std(axis=0), 1, rtol=1e-12)
    # at test time the constant feature is only centered, not blown up
    np.testing.assert_allclose(prep.transform(np.full((1, 4), 0.6))[0, 1], 0.5)


def test_standardize_on_digits_with_always_zero_pixels():
    digits = load_dataset("digits", seed=0)
    dead = digits.X_train.std(axis=0) == 0
    assert dead.any()  # the premise: digits has pixels that are 0 in every training image
    prep = fit_preprocessor("standardize", digits.X_train)
    for X in (digits.X_train, digits.X_val, digits.X_test):
        Z = prep.transform(X)
        assert np.isfinite(Z).all()
    Z = prep.transform(digits.X_train)
    assert np.all(Z[:, dead] == 0)
    np.testing.assert_allclose(Z[:, ~dead].std(axis=0), 1, rtol=1e-10)


# ---------------------------------------------------------------------------
# PCA family
# ---------------------------------------------------------------------------


def covariance(Z: np.ndarray) -> np.ndarray:
    return np.cov(Z, rowvar=False)


@pytest.mark.parametrize("kind", ["pca_whiten", "zca"])
def test_whitened_training_data_has_identity_covariance(kind):
    X = correlated(500, 6)
    assert np.abs(covariance(X) - np.eye(6)).max() > 1  # the premise: strongly correlated
    Z = fit_preprocessor(kind, X).transform(X)
    # diag(S / (S + eps)) with eigenvalues S >= ~0.5 and eps = 1e-5
    np.testing.assert_allclose(covariance(Z), np.eye(6), atol=1e-4)


def test_pca_keeps_top_components_with_their_variances():
    X = correlated(300, 6)
    S_ref = np.sort(np.linalg.eigvalsh(covariance(X)))[::-1]
    prep = fit_preprocessor("pca", X, components=3)
    assert prep.output_dim == 3
    U = prep.projection
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(covariance(prep.transform(X)), np.diag(S_ref[:3]), atol=1e-9)
    np.testing.assert_allclose(prep.eigenvalues, S_ref[:3], rtol=1e-10)


def test_pca_with_all_components_is_a_rotation():
    X = correlated(100, 5)
    prep = fit_preprocessor("pca", X)
    assert prep.output_dim == 5
    np.testing.assert_allclose(prep.transform(X) @ prep.projection.T + X.mean(axis=0), X, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(fraction=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
def test_pca_variance_fraction_keeps_the_smallest_k_reaching_it(fraction, seed):
    X = correlated(80, 7, seed=seed)
    S = np.sort(np.linalg.eigvalsh(covariance(X)))[::-1]
    kept = np.cumsum(S) / S.sum()
    k = fit_preprocessor("pca", X, components=fraction).output_dim
    assert kept[k - 1] >= fraction - 1e-9
    if k > 1:
        assert kept[k - 2] < fraction + 1e-9


def test_pca_fraction_one_keeps_all_and_int_k_is_exact():
    X = correlated(80, 7)
    assert fit_preprocessor("pca", X, components=1.0).output_dim == 7
    assert fit_preprocessor("pca_whiten", X, components=2).output_dim == 2
    assert fit_preprocessor("zca", X, components=2).output_dim == 7  # ZCA rotates back to D


def test_zca_is_symmetric_and_stays_closest_to_the_input():
    X = correlated(400, 5)
    zca = fit_preprocessor("zca", X)
    W = zca.projection
    np.testing.assert_allclose(W, W.T, atol=1e-12)
    # W = U diag(1/sqrt(S + eps)) U^T, built from the PCA eigenvectors
    pca = fit_preprocessor("pca", X)
    U, S = pca.projection, pca.eigenvalues
    np.testing.assert_allclose(W, U @ np.diag(1 / np.sqrt(S + 1e-5)) @ U.T, atol=1e-12)
    # Every whitening of X is Q @ (PCA whitening) for an orthogonal Q; ZCA is the one
    # whose output is nearest the centered input, so a ZCA image still looks like one.
    Xc = X - X.mean(axis=0)
    white = fit_preprocessor("pca_whiten", X).transform(X)
    zca_distance = np.linalg.norm(zca.transform(X) - Xc)
    rng = np.random.default_rng(1)
    for _ in range(20):
        Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
        assert zca_distance <= np.linalg.norm(white @ Q - Xc) + 1e-9
    assert np.linalg.norm(white - Xc) >= zca_distance


def test_whitening_eps_tames_zero_variance_directions():
    X = correlated(100, 4)
    X = np.column_stack([X, X[:, 0] + X[:, 1]])  # rank 4 in 5 dimensions
    for kind in ("pca_whiten", "zca"):
        Z = fit_preprocessor(kind, X).transform(X)
        assert np.isfinite(Z).all() and np.abs(Z).max() < 10


def test_pca_signs_are_fixed_by_the_data_not_the_row_order():
    X = correlated(120, 5)
    a = fit_preprocessor("pca_whiten", X)
    b = fit_preprocessor("pca_whiten", X[np.random.default_rng(0).permutation(120)])
    np.testing.assert_allclose(a.projection, b.projection, atol=1e-9)


# ---------------------------------------------------------------------------
# dtype policy and properties on random matrices
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_policy_float32_stays_float32_else_float64(kind):
    X = correlated(60, 4)
    prep = fit_preprocessor(kind, X.astype(np.float32))
    X32 = X.astype(np.float32)
    out32 = prep.transform(X32)
    assert out32.dtype == np.float32
    assert prep.transform(X).dtype == np.float64
    assert prep.transform(np.rint(X).astype(np.int32)).dtype == np.float64
    np.testing.assert_allclose(out32, prep.transform(X32.astype(np.float64)), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(X32, X.astype(np.float32))  # input left untouched


matrices = st.integers(2, 30).flatmap(
    lambda n: st.integers(1, 6).flatmap(
        lambda d: arrays(np.float64, (n, d), elements=st.floats(-1e3, 1e3, allow_subnormal=False))
    )
)


@settings(max_examples=60, deadline=None)
@given(X=matrices, kind=st.sampled_from(KINDS))
def test_any_matrix_gives_finite_output_of_the_announced_shape(X, kind):
    prep = fit_preprocessor(kind, X)
    Z = prep.transform(X)
    assert Z.shape == (X.shape[0], prep.output_dim)
    assert np.isfinite(Z).all()
    np.testing.assert_array_equal(fit_preprocessor(kind, X).transform(X), Z)  # deterministic


@settings(max_examples=60, deadline=None)
@given(X=matrices)
def test_standardize_property(X):
    Z = fit_preprocessor("standardize", X).transform(X)
    constant = np.all(X == X[0], axis=0)
    assert np.all(Z[:, constant] == 0)
    spread = np.ptp(X, axis=0) > 1e-6 * (1 + np.abs(X).max(axis=0))  # well-conditioned columns
    np.testing.assert_allclose(Z[:, spread].mean(axis=0), 0, atol=1e-8)
    np.testing.assert_allclose(Z[:, spread].std(axis=0), 1, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(X=matrices)
def test_full_pca_loses_nothing(X):
    prep = fit_preprocessor("pca", X)
    scale = 1 + np.abs(X).max()
    np.testing.assert_allclose(prep.transform(X) @ prep.projection.T + prep.mean, X, atol=1e-9 * scale)

"""Data preprocessing fitted on the training split only.

The cs231n recipe: center the data, optionally scale each feature, optionally
decorrelate it (PCA) and whiten it. Every statistic here (mean, standard deviation,
covariance eigenvectors) is computed from the training split alone and then applied
unchanged to validation and test data, so no information leaks from the held-out
splits into the model.

``PREPROCESSING`` is the single list of choices: the search space is built from its
keys, so it can never offer a kind this module does not implement.

Dtype policy: statistics are always computed in float64. ``Preprocessor.transform``
returns float32 when given float32 input (to keep a float32 training run in float32)
and float64 for every other input dtype (integers included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "PREPROCESSING",
    "TAKES_COMPONENTS",
    "Preprocessor",
    "fit_preprocessor",
]


@dataclass(frozen=True, eq=False)
class Preprocessor:
    """A fitted, immutable transform ``X -> ((X - mean) / scale) @ projection``.

    Each stage is skipped when its array is None.

    Attributes:
        kind: the key in ``PREPROCESSING`` this was fitted as.
        input_dim: D, the number of features it was fitted on.
        mean: (D,) training mean subtracted first, or None.
        scale: (D,) per-feature divisor applied after centering, or None.
        projection: (D, K) matrix applied last, or None (then K = D).
        eigenvalues: (K,) training-covariance eigenvalues of the kept directions,
            largest first, for the PCA family; None otherwise. For inspection only.
    """

    kind: str
    input_dim: int
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    projection: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None

    @property
    def output_dim(self) -> int:
        """K, the number of features ``transform`` returns."""
        return self.input_dim if self.projection is None else int(self.projection.shape[1])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Apply the fitted transform.

        Args:
            X: (M, D) array with the D features the preprocessor was fitted on;
                M may be 0.

        Returns:
            (M, K) array, K = ``output_dim``: float32 if X is float32, else float64.
            Always a new array; X is never modified.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.input_dim:
            raise ValueError(
                f"{self.kind} preprocessor was fitted on {self.input_dim} features, "
                f"got an array of shape {X.shape}"
            )
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        out = X.astype(dtype, copy=True)
        if self.mean is not None:
            out -= self.mean.astype(dtype, copy=False)
        if self.scale is not None:
            out /= self.scale.astype(dtype, copy=False)
        if self.projection is not None:
            out = out @ self.projection.astype(dtype, copy=False)
        return out


# ---------------------------------------------------------------------------
# fit functions: (X_train float64 (N, D), components, eps) -> Preprocessor
# ---------------------------------------------------------------------------


def _fit_none(X: np.ndarray, components, eps: float) -> Preprocessor:
    return Preprocessor(kind="none", input_dim=X.shape[1])


def _fit_center(X: np.ndarray, components, eps: float) -> Preprocessor:
    return Preprocessor(kind="center", input_dim=X.shape[1], mean=_train_mean(X))


def _fit_standardize(X: np.ndarray, components, eps: float) -> Preprocessor:
    # Population standard deviation (ddof=0), as scikit-learn's StandardScaler.
    mean = _train_mean(X)
    # Deviations from the exact-for-constants mean, so a constant feature gets std 0.
    std = np.sqrt(np.mean((X - mean) ** 2, axis=0))
    # A feature that is constant on the training split (digits has pixels that are
    # always 0) has std 0: divide it by 1 instead, so it maps to exactly 0 rather than
    # NaN. std can also underflow to 0 for a feature whose values differ by a few
    # subnormals; the same guard covers it.
    scale = np.where(std > 0, std, 1.0)
    return Preprocessor(kind="standardize", input_dim=X.shape[1], mean=mean, scale=scale)


def _fit_pca(X: np.ndarray, components, eps: float) -> Preprocessor:
    mean, U, S = _train_pca(X, components, "pca")
    return Preprocessor(kind="pca", input_dim=X.shape[1], mean=mean, projection=U, eigenvalues=S)


def _fit_pca_whiten(X: np.ndarray, components, eps: float) -> Preprocessor:
    mean, U, S = _train_pca(X, components, "pca_whiten")
    # Scaling column j of U by 1/sqrt(S_j + eps) gives the projected training data a
    # covariance of diag(S / (S + eps)), i.e. ~identity; eps keeps directions of
    # (near-)zero variance from being blown up to noise of huge amplitude.
    W = U / np.sqrt(S + eps)
    return Preprocessor(kind="pca_whiten", input_dim=X.shape[1], mean=mean, projection=W, eigenvalues=S)


def _fit_zca(X: np.ndarray, components, eps: float) -> Preprocessor:
    mean, U, S = _train_pca(X, components, "zca")
    # ZCA = PCA whitening rotated back into the input basis: W = U diag(1/sqrt(S+eps)) U^T.
    # W is symmetric, and among all whitening matrices it keeps the output closest to
    # the input, so a whitened image still looks like an image.
    W = (U / np.sqrt(S + eps)) @ U.T
    return Preprocessor(kind="zca", input_dim=X.shape[1], mean=mean, projection=W, eigenvalues=S)


PREPROCESSING: dict[str, Callable[[np.ndarray, int | float | None, float], Preprocessor]] = {
    "none": _fit_none,
    "center": _fit_center,
    "standardize": _fit_standardize,
    "pca": _fit_pca,
    "pca_whiten": _fit_pca_whiten,
    "zca": _fit_zca,
}
"""Preprocessing kinds -> fit function. The keys are the search space's choices."""

TAKES_COMPONENTS: frozenset[str] = frozenset({"pca", "pca_whiten", "zca"})
"""Kinds that accept ``components``; the others reject it (it would be silently unused)."""


def fit_preprocessor(
    kind: str,
    X_train: np.ndarray,
    *,
    components: int | float | None = None,
    eps: float = 1e-5,
) -> Preprocessor:
    """Fit a preprocessor on the training split only.

    Args:
        kind: a key of ``PREPROCESSING``:
            "none"        identity;
            "center"      subtract the training mean;
            "standardize" center, then divide each feature by its training std
                          (constant features are only centered, to exactly 0);
            "pca"         center, then project on the top-k covariance eigenvectors;
            "pca_whiten"  pca, then divide component j by sqrt(eigenvalue_j + eps);
            "zca"         pca_whiten rotated back: X_c @ U diag(1/sqrt(S + eps)) U^T,
                          output dimension D whatever k is.
        X_train: (N, D) finite training features, any real dtype. The PCA kinds need
            N >= 2 (the covariance uses N - 1, like ``np.cov``).
        components: for the PCA kinds only (must be None otherwise). An int k in
            [1, D] keeps the top k directions; a float in (0, 1] keeps the smallest k
            whose eigenvalues reach that fraction of the total variance; None keeps all D.
        eps: whitening regularizer added to every eigenvalue, >= 0.

    Returns:
        The fitted ``Preprocessor``.

    Raises:
        ValueError: unknown kind, bad components or eps, or unusable X_train.
    """
    if kind not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {kind!r}; allowed: {', '.join(PREPROCESSING)}")
    if components is not None and kind not in TAKES_COMPONENTS:
        raise ValueError(
            f"components={components!r} applies only to {', '.join(sorted(TAKES_COMPONENTS))}, "
            f"not to {kind!r}; pass components=None"
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or not (
        np.isfinite(eps) and eps >= 0
    ):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    X = np.asarray(X_train)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X_train must be a non-empty 2-D array (N, D), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer) or X.dtype == bool):
        raise ValueError(f"X_train must hold real numbers, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        raise ValueError("X_train contains NaN or infinite values")
    return PREPROCESSING[kind](X, components, float(eps))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _train_mean(X: np.ndarray) -> np.ndarray:
    """(D,) mean of X: (N, D), exact for features that are constant.

    ``X.mean`` of N copies of c is not always c in floating point (0.1 * 3 / 3 !=
    0.1), which would leave a constant feature at +-1e-17 after centering instead
    of 0 — harmless alone, but standardize would then see it as real signal.
    """
    mean = X.mean(axis=0)
    constant = (X == X[0]).all(axis=0)
    return np.where(constant, X[0], mean)


def _train_pca(
    X: np.ndarray, components: int | float | None, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigendecomposition of the training covariance, truncated to `components`.

    Args:
        X: (N, D) float64 training data, N >= 2.

    Returns:
        mean (D,), U (D, k) orthonormal eigenvectors as columns, S (k,) eigenvalues
        >= 0 in decreasing order. Signs are fixed (largest-magnitude entry of each
        column positive) so the same data always yields the same transform.
    """
    N, D = X.shape
    if N < 2:
        raise ValueError(f"{kind} needs at least 2 training rows to estimate a covariance, got {N}")
    k_fixed = _check_components(components, D, kind)
    mean = _train_mean(X)
    Xc = X - mean
    cov = (Xc.T @ Xc) / (N - 1)  # (D, D), same normalisation as np.cov
    S, U = np.linalg.eigh(cov)  # ascending
    S, U = S[::-1], U[:, ::-1]
    S = np.clip(S, 0.0, None)  # rounding can leave tiny negative eigenvalues
    pivot = np.argmax(np.abs(U), axis=0)
    U = U * np.sign(U[pivot, np.arange(D)])
    if k_fixed is not None:
        k = k_fixed
    elif components is None:
        k = D
    else:
        k = _k_for_variance(S, float(components))
    return mean, np.ascontiguousarray(U[:, :k]), S[:k].copy()


def _check_components(components: int | float | None, D: int, kind: str) -> int | None:
    """Validate `components`; return k if it is an int, else None."""
    if components is None:
        return None
    allowed = f"an int in [1, {D}], a float in (0, 1], or None"
    if isinstance(components, (bool, np.bool_)):
        raise ValueError(f"{kind} components must be {allowed}, got {components!r}")
    if isinstance(components, (int, np.integer)):
        if not 1 <= components <= D:
            raise ValueError(f"{kind} components must be {allowed}, got {components!r}")
        return int(components)
    if isinstance(components, (float, np.floating)):
        if not 0.0 < components <= 1.0:  # also rejects NaN
            raise ValueError(f"{kind} components must be {allowed}, got {components!r}")
        return None
    raise ValueError(f"{kind} components must be {allowed}, got {components!r}")


def _k_for_variance(S: np.ndarray, fraction: float) -> int:
    """Smallest k with sum(S[:k]) >= fraction * sum(S), for S (D,) decreasing, >= 0."""
    total = S.sum()
    if total <= 0:  # all-constant data: no direction carries variance; keep one
        return 1
    cumulative = np.cumsum(S) / total
    # A slack of 1e-12 so that fraction=1.0 is reached even when the
    # cumulative sum rounds to 0.9999999999999998.
    k = int(np.searchsorted(cumulative, fraction - 1e-12, side="left")) + 1
    return min(k, len(S))

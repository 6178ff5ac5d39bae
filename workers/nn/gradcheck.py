"""Numerical gradient checking: central differences in float64 and a relative error.

Use float64 inputs: with float32 the rounding error of f(x + h) - f(x - h) swamps the
difference for any h small enough to keep the truncation error down.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["numerical_gradient", "numerical_gradient_array", "relative_error"]


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Gradient of the scalar ``f()`` with respect to the array ``x``.

    ``f`` takes no argument and reads ``x``, which is perturbed in place one entry at a
    time (and restored): df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / 2h.

    x: any shape -> grad: the shape of x.
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        i = it.multi_index
        saved = x[i]
        x[i] = saved + h
        f_plus = f()
        x[i] = saved - h
        f_minus = f()
        x[i] = saved
        grad[i] = (f_plus - f_minus) / (2.0 * h)
        it.iternext()
    return grad


def numerical_gradient_array(
    f: Callable[[], np.ndarray], x: np.ndarray, dout: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Gradient of sum(f() * dout) with respect to ``x``, for an array-valued ``f``:
    what a backward pass returns for the upstream gradient ``dout``.

    f: no-argument function reading x (perturbed in place and restored) -> array of the
    shape of dout.  x: any shape -> grad: the shape of x.
    """
    return numerical_gradient(lambda: float(np.sum(f() * dout)), x, h)


def relative_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-8) -> float:
    """max |a - b| / max(|a| + |b|, floor), elementwise, as a float.

    The floor keeps entries where both gradients are (numerically) zero from dividing
    zero by zero.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)))

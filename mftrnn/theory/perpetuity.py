r"""The stationary law of a random affine recursion, by its characteristic function on a Chebyshev grid.

The LSTM cell state obeys, in the untied mean field, :math:`c_t = A\,c_{t-1} + B` with :math:`(A, B)` drawn afresh
at every step, independent of :math:`c_{t-1}`, and :math:`0 < A < 1` (a forget gate). Its stationary law
:math:`\pi` (a *perpetuity*, :math:`c = \sum_k A_1\cdots A_k B_{k+1}`) is not Gaussian. Its characteristic function
:math:`\varphi(s)=\mathbb E_\pi[e^{isc}]` solves the linear equation

.. math:: \varphi(s) = \mathbb E\bigl[e^{isB}\,\varphi(As)\bigr],\qquad \varphi(0) = 1,

in which :math:`\varphi` at :math:`s` needs only values at :math:`As\in(0,s)`: on :math:`[0, S]` the equation never
leaves the interval. :math:`\varphi` is represented by its values at the :math:`M+1` Chebyshev-Lobatto points of
:math:`[0,S]` and the values :math:`\varphi(As_j)` by barycentric interpolation (spectrally accurate for the
smooth :math:`\varphi`); the discretised equation is a dense linear system, solved directly (no iteration, so the
cost does not grow as :math:`A\to 1`, where :math:`\pi` takes :math:`\sim 1/(1-\mathbb E A)` steps to settle).

Expectations of even functions follow by Parseval,
:math:`\mathbb E_\pi[f(c)] = \frac1\pi\int_0^\infty \hat f(s)\,\mathrm{Re}\,\varphi(s)\,ds` with
:math:`\hat f(s) = \int f(x)e^{-isx}dx`; for the LSTM, :math:`\tanh^2 = 1-\operatorname{sech}^2` and
:math:`\tanh'^2 = \operatorname{sech}^4`, whose transforms

.. math:: \widehat{\operatorname{sech}^2}(s) = \frac{\pi s}{\sinh(\pi s/2)},\qquad
          \widehat{\operatorname{sech}^4}(s) = \frac{\pi s\,(s^2+4)}{6\sinh(\pi s/2)}

decay like :math:`e^{-\pi s/2}`: :math:`S=24` truncates at :math:`<10^{-13}` (a wide law, whose
:math:`\varphi` has decayed long before, gets a shorter interval). The integrals use the
Clenshaw-Curtis weights of the same points. The accuracy is checked on every solve against the exact second
moment (all polynomial moments of :math:`\pi` close: :math:`m_1=\mathbb E B/(1-\mathbb E A)`,
:math:`m_2=(\mathbb E B^2+2\,\mathbb E[AB]\,m_1)/(1-\mathbb E A^2)`), which :math:`-\varphi''(0)` must reproduce;
the grid is refined until :math:`\mathbb E_\pi[\tanh^2 c]` changes by less than 1e-10 (see
:func:`mftrnn.theory.gated.stationary_law`).
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["ChebyshevGrid", "chebyshev_grid", "sech2_transform", "sech4_transform", "solve_characteristic"]

#: right end of the s-interval: the transforms above are below 1e-13 of their value at 0 beyond it
S_MAX = 24.0


class ChebyshevGrid:
    """Chebyshev-Lobatto points of ``[0, S]`` (ascending), barycentric and Clenshaw-Curtis weights, and the
    differentiation matrix."""

    def __init__(self, M: int, S: float = S_MAX):
        k = np.arange(M + 1)
        self.M, self.S = M, S
        self.s = S * (1 - np.cos(np.pi * k / M)) / 2
        bw = (-1.0) ** k
        bw[0] *= 0.5
        bw[-1] *= 0.5
        self.bw = bw
        self.cc = _clenshaw_curtis(M) * S / 2
        self.D = _differentiation(self.s, bw)
        self.D2 = self.D @ self.D

    def interp(self, x: np.ndarray, deriv: int = 0) -> np.ndarray:
        """Matrix ``(x.size, M+1)`` mapping values at the points to the interpolant (or its derivative) at x."""
        x = np.asarray(x, float).ravel()
        d = x[:, None] - self.s[None, :]
        hit = d == 0
        d[hit] = 1.0
        r = self.bw[None, :] / d
        rows = hit.any(1)
        r[rows] = 0.0
        r[hit] = 1.0
        L = r / r.sum(1, keepdims=True)
        return L if deriv == 0 else L @ (self.D if deriv == 1 else self.D2)


def _clenshaw_curtis(M: int) -> np.ndarray:
    """Clenshaw-Curtis weights on [-1, 1] for the Chebyshev-Lobatto points (symmetric, so order is immaterial)."""
    theta = np.pi * np.arange(M + 1) / M
    w = np.zeros(M + 1)
    v = np.ones(M - 1)
    inner = theta[1:-1]
    if M % 2 == 0:
        w[0] = w[M] = 1.0 / (M**2 - 1)
        for k in range(1, M // 2):
            v -= 2 * np.cos(2 * k * inner) / (4 * k * k - 1)
        v -= np.cos(M * inner) / (M**2 - 1)
    else:
        w[0] = w[M] = 1.0 / M**2
        for k in range(1, (M - 1) // 2 + 1):
            v -= 2 * np.cos(2 * k * inner) / (4 * k * k - 1)
    w[1:-1] = 2 * v / M
    return w


def _differentiation(s: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Barycentric differentiation matrix: ``D @ f`` = derivative of the interpolant at the points."""
    d = s[:, None] - s[None, :]
    np.fill_diagonal(d, 1.0)
    D = (bw[None, :] / bw[:, None]) / d
    np.fill_diagonal(D, 0.0)
    np.fill_diagonal(D, -D.sum(1))
    return D


@functools.lru_cache(maxsize=None)
def chebyshev_grid(M: int, S: float = S_MAX) -> ChebyshevGrid:
    return ChebyshevGrid(M, S)


def sech2_transform(s):
    r""":math:`\int\operatorname{sech}^2(x)e^{-isx}dx = \pi s/\sinh(\pi s/2)` (2 at s = 0)."""
    s = np.asarray(s, float)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(s == 0, 2.0, np.pi * s / np.sinh(np.pi * s / 2))


def sech4_transform(s):
    r""":math:`\int\operatorname{sech}^4(x)e^{-isx}dx = \pi s(s^2+4)/(6\sinh(\pi s/2))` (4/3 at s = 0)."""
    s = np.asarray(s, float)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(s == 0, 4.0 / 3.0, np.pi * s * (s**2 + 4) / (6 * np.sinh(np.pi * s / 2)))


def solve_characteristic(P: np.ndarray) -> np.ndarray:
    r"""Solve :math:`\varphi = P\varphi` with :math:`\varphi_0 = 1` (row 0 of the system replaced by that condition).

    ``P[j, m]`` is the discretised kernel: :math:`(P\varphi)_j = \mathbb E[e^{is_jB}\varphi(As_j)]`.
    """
    n = P.shape[0]
    A = np.eye(n, dtype=complex) - P
    A[0] = 0.0
    A[0, 0] = 1.0
    rhs = np.zeros(n, complex)
    rhs[0] = 1.0
    return np.linalg.solve(A, rhs)

r"""State-to-state Jacobians of recurrent cells, the moments of their singular-value spectra, and dynamical isometry.

**The Jacobian of one step.** A cell's update :math:`h_t = f(h_{t-1}, x_t, e^{(1)}_t, \dots)` with pre-activations
:math:`e^{(k)}_t = W_k h_{t-1} + V_k x_t + b_k` has the state-to-state Jacobian

.. math:: J_t = \frac{\partial h_t}{\partial h_{t-1}} = \operatorname{diag}(a) + \sum_k \operatorname{diag}(b_k)\,W_k,
          \qquad a = \frac{\partial f}{\partial h}\Big|_{e},\quad b_k = \frac{\partial f}{\partial e^{(k)}},

both derived by SymPy from ``cell.update`` (:func:`step_jacobian`). For an update affine in :math:`h` and
:math:`x` (the requirement of :mod:`mftrnn.theory.meanfield`), :math:`a = c_h(e)` depends on the pre-activations only and
:math:`b_k = \beta_{0k}(e) + \beta_{hk}(e)\,h_{t-1} + \beta_{xk}(e)\,x_t` is affine in the carried variables. Vanilla
RNN: :math:`a=0`, :math:`b=1-\tanh^2 e`; minimalRNN: :math:`a=u`, :math:`b=u(1-u)(h_{t-1}-z_t)`. Cells whose
recurrent matrix multiplies something other than the plain state (``Preactivation.recurrent_input``) are refused.

**Mean-field law of the coefficients.** The assumptions of :mod:`mftrnn.theory.meanfield`: per unit, the pre-activations
:math:`e^{(k)}\sim\mathcal N(\mu_b, q_k^*)` (independent of each other), the previous state :math:`h_{t-1}` (its
stationary law) and the input :math:`x_t` are independent, and the coefficients :math:`(a_i, b_i)` are independent of
the recurrent matrices. Inputs are taken **Gaussian**, :math:`x\sim\mathcal N(0,R)` (so :math:`\mathbb E x^4 = 3R^2`;
the simulator :mod:`mftrnn.nets.simulate` draws such inputs). Moments of :math:`b` involve the moments of
:math:`h_{t-1}`; with :math:`h_t = c_0 + c_h h_{t-1} + c_x x_t` and the independence above, the stationary moments
:math:`H_k=\mathbb E[h^k]` solve the triangular system

.. math:: H_k = \frac{\sum_{i+j+l=k,\ j<k} \binom{k}{i,j,l}\,\mathbb E[c_0^i c_h^j c_x^l]\,H_j\,\mathbb E[x^l]}
                     {1-\mathbb E[c_h^k]},

whose :math:`k=1,2` members are the engine's mean :math:`M^*` and :math:`Q^*` (:math:`Q^*` itself is used).

**Moments of one step** (:func:`step_moments`). Large :math:`N`, :math:`\operatorname{diag}(a),
\operatorname{diag}(b_k)` free from the :math:`W_k`; :math:`W_k` Gaussian with :math:`(W_k)_{ij}\sim\mathcal
N(0,s_k/N)`, :math:`s_k=\sigma_{w,k}^2`,
or :math:`W_k=\sigma_{w,k}O_k` with :math:`O_k` Haar orthogonal. Expanding :math:`\frac1N\operatorname{tr}(JJ^\top)^n`
over the choices of :math:`A=\operatorname{diag}(a)` or :math:`BW` in each factor, only terms with every :math:`W_k`
paired with its own transpose in a non-crossing way survive:

.. math:: m_1 = \tfrac1N\operatorname{tr}JJ^\top = \mathbb E[a^2] + \sum_k s_k\,\mathbb E[b_k^2] \quad(=\chi),

.. math:: m_2 = \tfrac1N\operatorname{tr}(JJ^\top)^2 = \mathbb E[a^4]
          + 2\sum_k s_k\bigl(\mathbb E[a^2b_k^2] + \mathbb E[a^2]\,\mathbb E[b_k^2]\bigr)
          + \sum_{k,l} s_ks_l\bigl(\mathbb E[b_k^2b_l^2] + \mathbb E[b_k^2]\,\mathbb E[b_l^2]\bigr)
          - (1-\kappa)\sum_k s_k^2\,\mathbb E[b_k^2]^2,

with :math:`\kappa=1` for Gaussian and :math:`\kappa=0` for orthogonal :math:`W` (:math:`W_kW_k^\top` is a Wishart
matrix with second moment :math:`2s_k^2`, respectively exactly :math:`s_k I`). The four-:math:`W` term is the free
product :math:`\varphi(xyxy)=\varphi(x^2)\varphi(y)^2+\varphi(x)^2\varphi(y^2)-\varphi(x)^2\varphi(y)^2` with
:math:`x=B^2`, :math:`y=WW^\top`; the crossed pairings (:math:`W\dots W` without a transpose between) are
:math:`O(1/N)`. Vanilla RNN, :math:`d=\tanh'(e)`: :math:`m_2 = \sigma_w^4(\mathbb E[d^4]+\mathbb E[d^2]^2)` (Gaussian)
and :math:`\sigma_w^4\mathbb E[d^4]` (orthogonal). The spectral variance is :math:`m_2-m_1^2` and its relative
variance :math:`r = m_2/m_1^2-1`.

**T steps** (:func:`product_moments`). For :math:`J=J_T\cdots J_1` with asymptotically free factors of equal law the
S-transforms of :math:`J_tJ_t^\top` multiply. With :math:`S(w)=\frac1{m_1}(1-r\,w+O(w^2))`,
:math:`S_{JJ^\top}(w)=m_1^{-T}(1-Tr\,w+O(w^2))`, i.e. exactly

.. math:: \text{mean} = m_1^T = \chi^T,\qquad \text{relative variance} = T\,r,\qquad
          \text{variance} = T\,r\,\chi^{2T}.

Freeness of the factors is exact as :math:`N\to\infty` for the vanilla RNN with untied weights (fresh :math:`W_t`
each step: :math:`J_tJ_t^\top=B_tW_tW_t^\top B_t` is then free from the rest). With tied weights (the real network,
one :math:`W`) it is an approximation. For the minimalRNN it is an approximation even with untied weights: the
diagonal parts :math:`\operatorname{diag}(a_t)` of different steps commute (classically independent, not free), and
the states that enter :math:`b_t` are correlated across steps. :func:`product_moments` therefore also returns the
exact large-N variance for coefficients drawn independently at every step (a three-moment recursion, see there),
which removes the first error; ``tests/test_jacobian.py`` compares both with
:func:`mftrnn.nets.simulate.jacobian_spectrum`.

**Dynamical isometry** (:func:`isometry`): all singular values of the :math:`T`-step Jacobian close to one, i.e.
:math:`\chi=1` (the mean neither grows nor decays) *and* a vanishing per-step relative variance :math:`r` (the spread
grows like :math:`Tr`). Vanilla RNN: needs orthogonal :math:`W` and :math:`q^*\to0` (then :math:`d\to1`,
:math:`\mathbb E[d^4]\to\mathbb E[d^2]^2`, :math:`r\to0`, and :math:`\chi=\sigma_w^2\mathbb E[d^2]\to1` at
:math:`\sigma_w\to1`); with Gaussian :math:`W`, :math:`r\ge1`. minimalRNN: a large gate bias :math:`\mu_b` drives
:math:`u\to1`, :math:`a\to1`, :math:`b\to0`, so :math:`J\to I` for either ensemble of :math:`W`.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..cells.registry import Cell, R, get_cell
from ..errors import DomainError, MftrnnError
from .fixed_point import _evaluate, check_hyperparameters, fixed_point, unpack_fixed_point
from .meanfield import M, Q, _affine_coefficients, mean_field
from .numeric import NUMPY_MODULES, Compiled, kink_points, strip_half_width
from .quadrature import gaussian_rule

__all__ = ["StepJacobian", "step_jacobian", "CoefficientLaw", "coefficient_law", "coefficient_moment",
           "spectral_moments", "step_moments", "product_moments", "isometry",
           "state_moments", "MAX_T"]


# ----------------------------------------------------------------------------------------- symbolic Jacobian
@dataclass(frozen=True)
class StepJacobian:
    r"""The symbolic one-step Jacobian :math:`J=\operatorname{diag}(a)+\sum_k\operatorname{diag}(b_k)W_k` of a cell.

    ``a``: :math:`\partial f/\partial h` at fixed pre-activations; ``b``: the tuple of
    :math:`\partial f/\partial e^{(k)}`;
    ``b_parts``: for each :math:`b_k` the dict ``{1: beta_0, h: beta_h, x: beta_x}`` of its affine decomposition in the
    previous state ``cell.state`` and the input ``cell.input``; ``sigma_w``: the symbols :math:`\sigma_{w,k}`.
    """

    cell: Cell
    a: sp.Expr
    b: tuple
    b_parts: tuple
    sigma_w: tuple

    @property
    def preactivations(self) -> tuple:
        return tuple(p.symbol for p in self.cell.preactivations)


@functools.lru_cache(maxsize=None)
def _step_jacobian(cell: Cell) -> StepJacobian:
    for p in cell.preactivations:
        if p.recurrent_input is not None:
            raise MftrnnError(f"cell {cell.name!r}: the Jacobian theory needs the recurrent matrix to act on the plain "
                              f"state, but pre-activation {p.symbol} has recurrent input {p.recurrent_input}")
    h, x = cell.state, cell.input
    f = sp.sympify(cell.update)
    _affine_coefficients(f, (h, x))  # raises MftrnnError unless f is affine in (h, x)
    a = sp.factor(f.diff(h))
    bs, parts = [], []
    for p in cell.preactivations:
        b = sp.factor(f.diff(p.symbol))  # factor, not simplify: keeps 1 - tanh^2 as (1 - tanh)(1 + tanh)
        c = _affine_coefficients(b, (h, x))
        bs.append(b)
        parts.append({sp.S.One: sp.factor(c[sp.S.One]), h: sp.factor(c[h]), x: sp.factor(c[x])})
    return StepJacobian(cell, a, tuple(bs), tuple(parts), tuple(p.sigma_w for p in cell.preactivations))


def step_jacobian(cell) -> StepJacobian:
    r"""Derive :math:`a=\partial f/\partial h` and :math:`b_k=\partial f/\partial e^{(k)}` from ``cell.update``.

    Raises :class:`~mftrnn.MftrnnError` for an update that is not affine in state and input, or for a pre-activation
    whose recurrent input is not the plain state (``Preactivation.recurrent_input``).
    """
    return _step_jacobian(get_cell(cell, gated=False))


# ------------------------------------------------------------------------------- mean-field expectations
def _poly_mul(p1: dict, p2: dict) -> dict:
    """Product of polynomials in (h, x) stored as {(j, l): coefficient}; coefficients are multiplied, not expanded."""
    out: dict = {}
    for (j1, l1), c1 in p1.items():
        for (j2, l2), c2 in p2.items():
            key = (j1 + j2, l1 + l2)
            out[key] = out.get(key, sp.S.Zero) + c1 * c2
    return out


def _poly_pow(p: dict, k: int) -> dict:
    out = {(0, 0): sp.S.One}
    for _ in range(k):
        out = _poly_mul(out, p)
    return out


def _affine_poly(expr, cell: Cell) -> dict:
    c = _affine_coefficients(expr, (cell.state, cell.input))
    poly = {(0, 0): c[sp.S.One], (1, 0): c[cell.state], (0, 1): c[cell.input]}
    return {k: v for k, v in poly.items() if v != 0}


def _input_moment(l: int):
    r""":math:`\mathbb E[x^l]` for Gaussian inputs :math:`x\sim\mathcal N(0,R)`: :math:`(l-1)!!\,R^{l/2}`, 0 for
    odd l."""
    if l % 2:
        return sp.S.Zero
    return sp.factorial2(l - 1) * R ** (l // 2) if l else sp.S.One


class _Moments:
    """Mean-field expectations of polynomials in (h_{t-1}, x_t) with coefficients depending on the pre-activations.

    Expressions are in the engine's symbols: Gaussian expectations :class:`~mftrnn.E` over ``q`` (substituted by
    ``q_of_Q``), the state second moment ``Q`` and the hyperparameters.
    """

    def __init__(self, cell: Cell, kmax: int = 4):
        self.cell = cell
        self.mf = mean_field(cell)
        update = _affine_poly(cell.update, cell)
        self.H = {0: sp.S.One}
        # H_1 = M*: the state mean at its fixed point (zero when the cell has no constant part)
        for k in range(1, kmax + 1):
            if k == 2:
                self.H[2] = Q  # the engine's Q*: keeps m1 identical to chi
                continue
            num, den = sp.S.Zero, sp.S.One
            for (j, l), coeff in _poly_pow(update, k).items():
                e = self._E(coeff)
                if j == k:
                    den -= e
                else:
                    num += e * self.H[j] * _input_moment(l)
            self.H[k] = num / den

    def _E(self, coeff):
        """E over the pre-activations (symbols q of the engine, then q substituted by q(Q))."""
        return self.mf._expect1(coeff).subs(self.mf.q_of_Q)

    def expect(self, poly: dict):
        """E[sum_{j,l} c_{jl}(e) h^j x^l] with (e, h, x) independent."""
        out = sp.S.Zero
        for (j, l), coeff in poly.items():
            mx = _input_moment(l)
            if mx != 0 and coeff != 0:
                out += self._E(coeff) * self.H[j] * mx
        return out.subs(M, self.H[1]) if out.has(M) else out


@functools.lru_cache(maxsize=None)
def _moment_exprs(cell: Cell):
    """SymPy expressions of the coefficient expectations that the spectral moments need, in (Q, hyperparameters):
    ``[E a^2, E a^4, E b_k^2 (k), E a^2 b_k^2 (k), E b_k^2 b_l^2 (k, l)]`` and the weight variances ``s_k``."""
    jac = _step_jacobian(cell)
    mom = _Moments(cell)
    A = {(0, 0): jac.a} if jac.a != 0 else {}
    B2 = [_poly_mul(_affine_poly(b, cell), _affine_poly(b, cell)) if b != 0 else {} for b in jac.b]
    A2 = _poly_mul(A, A)
    K = len(B2)
    exprs = [mom.expect(A2), mom.expect(_poly_mul(A2, A2))]
    exprs += [mom.expect(b2) for b2 in B2]
    exprs += [mom.expect(_poly_mul(A2, b2)) for b2 in B2]
    exprs += [mom.expect(_poly_mul(B2[k], B2[l])) for k in range(K) for l in range(K)]
    exprs += [sw ** 2 for sw in jac.sigma_w]
    return exprs


@functools.lru_cache(maxsize=None)
def _moment_compiled(cell: Cell) -> Compiled:
    return Compiled(list(_moment_exprs(cell)), [Q, *cell.hyperparameters])


@dataclass
class _Pieces:
    """Numerical coefficient expectations (arrays over the hyperparameter points); K pre-activations."""

    Ea2: np.ndarray
    Ea4: np.ndarray
    Eb2: np.ndarray  # (K, ...)
    Ea2b2: np.ndarray  # (K, ...)
    Eb2b2: np.ndarray  # (K, K, ...)
    s: np.ndarray  # (K, ...)

    @property
    def m1(self):
        return self.Ea2 + np.sum(self.s * self.Eb2, axis=0)

    def step_variance(self, orthogonal: bool):
        r"""One step's spectral variance :math:`m_2-m_1^2`, written without the cancellation of that difference:

        .. math:: m_2-m_1^2 = \operatorname{Var}(a^2) + 2\sum_k s_k\mathbb E[a^2b_k^2]
                  + \sum_{k,l}s_ks_l\mathbb E[b_k^2b_l^2] - (1-\kappa)\sum_k s_k^2\,\mathbb E[b_k^2]^2

        (the :math:`\mathbb E[b_k^2]\mathbb E[b_l^2]` terms of :math:`m_2` cancel :math:`m_1^2`'s exactly). Round-off of
        :math:`\operatorname{Var}(a^2)=\mathbb E a^4-(\mathbb E a^2)^2` can leave a negative value of order
        :math:`10^{-16}m_1^2` near isometry; it is clipped at 0 (relative variances below ~1e-14 are not resolved).
        """
        s = self.s
        v = (self.Ea4 - self.Ea2 ** 2 + 2 * np.sum(s * self.Ea2b2, axis=0)
             + np.einsum("k...,kl...,l...->...", s, self.Eb2b2, s))
        if orthogonal:
            v = v - np.sum(s ** 2 * self.Eb2 ** 2, axis=0)
        return np.maximum(v, 0.0)

    def diagonal_variance(self):
        r""":math:`\operatorname{Var}(a^2+\sum_k s_kb_k^2)`: the spread of the diagonal of :math:`JJ^\top` over
        units."""
        s = self.s
        cov = np.sum(s * (self.Ea2b2 - self.Ea2 * self.Eb2), axis=0)
        bb = np.einsum("k...,kl...,l...->...", s, self.Eb2b2 - self.Eb2[:, None] * self.Eb2[None, :], s)
        return np.maximum(self.Ea4 - self.Ea2 ** 2 + 2 * cov + bb, 0.0)


def _pieces(cell: Cell, Q_star, hp: dict) -> _Pieces:
    vals = _evaluate(_moment_compiled(cell), Q_star, *hp.values())
    K = len(cell.preactivations)
    it = iter(vals)
    Ea2, Ea4 = next(it), next(it)
    Eb2 = np.array([next(it) for _ in range(K)])
    Ea2b2 = np.array([next(it) for _ in range(K)])
    Eb2b2 = np.array([[next(it) for _ in range(K)] for _ in range(K)])
    s = np.array([next(it) for _ in range(K)])
    return _Pieces(Ea2, Ea4, Eb2, Ea2b2, Eb2b2, s)


def _diagonal_recursion(p: _Pieces, orthogonal: bool, phi, v, d):
    r"""One step :math:`X\to X'=JXJ^\top` of the large-N moments :math:`\varphi=\tfrac1N\operatorname{tr}X`,
    :math:`v=\tfrac1N\operatorname{tr}X^2-\varphi^2` (the spectral variance) and
    :math:`d=\tfrac1N\sum_iX_{ii}^2-\varphi^2` (the spread of the diagonal), for coefficients :math:`(a_i,b_{k,i})`
    drawn afresh, independent of :math:`X` and of the :math:`W_k`. In these centred variables the recursion of
    :func:`product_moments` reads

    .. math:: \varphi' = m_1\varphi,\qquad v' = m_1^2\,v + \operatorname{Var}(a^2)\,d + V_1\varphi^2,\qquad
              d' = \mathbb E[a^4]\,d + \operatorname{Var}\bigl(a^2+\textstyle\sum_ks_kb_k^2\bigr)\varphi^2,

    with :math:`V_1` the one-step variance (:meth:`_Pieces.step_variance`); no differences of nearly equal numbers
    are formed. :math:`d=0` throughout (a rotation-invariant :math:`X`) gives the free result
    :math:`v_T = T V_1 m_1^{2(T-1)}`."""
    phi2 = phi * phi
    m1 = p.m1
    v_new = m1 ** 2 * v + (p.Ea4 - p.Ea2 ** 2) * d + p.step_variance(orthogonal) * phi2
    d_new = p.Ea4 * d + p.diagonal_variance() * phi2
    return m1 * phi, v_new, d_new


@functools.lru_cache(maxsize=None)
def _state_moment_compiled(cell: Cell, kmax: int) -> Compiled:
    mom = _Moments(cell, kmax=kmax)
    return Compiled([mom.H[k] for k in range(1, kmax + 1)], [Q, *cell.hyperparameters])


def state_moments(cell, kmax: int = 4, **hyperparameters) -> dict:
    r"""Stationary moments :math:`H_k=\mathbb E[h^k]`, :math:`k=1..k_{max}`, of one unit's state at the mean-field fixed
    point, from the triangular recursion of the module docstring (Gaussian inputs; :math:`H_2=Q^*`).

    Returns ``{k: H_k}`` (floats, or arrays for array hyperparameters). The stationary state of a gated cell is not
    Gaussian: e.g. :math:`H_4/Q^{*2}\ne3` for the minimalRNN.
    """
    cell, hyperparameters, fp = unpack_fixed_point(cell, hyperparameters)
    cell = get_cell(cell, gated=False)
    if isinstance(kmax, bool) or int(kmax) != kmax or not 1 <= kmax <= 12:
        raise DomainError(f"kmax must be an integer in [1, 12], got {kmax!r}")
    hp = check_hyperparameters(cell, hyperparameters)
    fp = fp or fixed_point(cell, **hp)
    vals = _evaluate(_state_moment_compiled(cell, int(kmax)), fp.Q_star, *hp.values())
    return {k: _scalar_or_array(v) for k, v in zip(range(1, int(kmax) + 1), vals)}


def _scalar_or_array(v):
    v = np.asarray(v, dtype=float)
    return float(v) if v.ndim == 0 else v


def _step(cell, orthogonal, hyperparameters):
    cell, hyperparameters, fp = unpack_fixed_point(cell, hyperparameters)
    cell = get_cell(cell, gated=False)
    _step_jacobian(cell)  # early, clear error for unsupported cells
    hp = check_hyperparameters(cell, hyperparameters)
    fp = fp or fixed_point(cell, **hp)
    pieces = _pieces(cell, fp.Q_star, hp)
    m1, variance = pieces.m1, pieces.step_variance(bool(orthogonal))
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(variance))):
        raise MftrnnError(f"non-finite Jacobian moments for cell {cell.name!r} (stationary state moments diverge?)")
    return cell, hp, fp, pieces, m1, variance


def _relative_variance(pieces: _Pieces, orthogonal: bool, m1, variance):
    r"""One step's relative variance :math:`r=(m_2-m_1^2)/m_1^2`, finite everywhere.

    Where :math:`m_1` is so small that :math:`m_1^2` underflows (:math:`m_1<10^{-150}`), in particular at
    :math:`m_1=0` (:math:`\sigma_w=0` for a cell with :math:`a\equiv0`, such as the vanilla RNN, whose Jacobian is
    then exactly 0), :math:`a\equiv0` and :math:`r` is homogeneous of degree 0 in the weight variances :math:`s_k`:
    it is evaluated with :math:`s_k\to s_k/\max_l s_l` (all :math:`s_k\to1` where they all vanish), which gives
    the limit :math:`\sigma_w\to0^+` exactly (vanilla: :math:`r=\mathbb E[d^4]/\mathbb E[d^2]^2-1+\kappa`,
    :math:`d=\tanh'(e)` at the fixed point of :math:`\sigma_w=0`). Where even then :math:`m_1=0` (the update does
    not depend on the state for any weights) the spectrum is a point mass at 0 and :math:`r=0` is reported."""
    m1 = np.asarray(m1, float)
    variance = np.asarray(variance, float)
    tiny = m1 < 1e-150
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        rv = variance / np.where(tiny, 1.0, m1) ** 2
    if not np.any(tiny):
        return rv
    s = np.asarray(pieces.s, float)
    smax = np.max(s, axis=0)
    s_hat = np.where(smax > 0, s / np.where(smax > 0, smax, 1.0), 1.0)
    limit = _Pieces(pieces.Ea2, pieces.Ea4, pieces.Eb2, pieces.Ea2b2, pieces.Eb2b2, s_hat)
    m1_hat, v_hat = limit.m1, limit.step_variance(orthogonal)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_hat = np.where(m1_hat > 0, v_hat / np.where(m1_hat > 0, m1_hat, 1.0) ** 2, 0.0)
    return np.where(tiny, r_hat, rv)


def step_moments(cell, *, orthogonal: bool = False, **hyperparameters) -> dict:
    r"""First two moments of the spectrum of :math:`J_tJ_t^\top` (one step) at the mean-field fixed point, large N.

    .. math:: m_1 = \mathbb E[a^2]+\sigma_w^2\mathbb E[b^2] = \chi,\qquad
              m_2 = \mathbb E[a^4] + 2\sigma_w^2(\mathbb E[a^2b^2]+\mathbb E[a^2]\mathbb E[b^2])
                    + \sigma_w^4(\mathbb E[b^4] + \kappa\,\mathbb E[b^2]^2)

    (single pre-activation; :math:`\kappa=1` Gaussian, 0 orthogonal :math:`W`; the general form is in the module
    docstring). Hyperparameters as in :func:`mftrnn.fixed_point`, scalars or broadcastable arrays.

    Returns a dict: ``cell``, ``orthogonal``, the hyperparameters, ``q_star``, ``Q_star``, ``chi`` (the engine's),
    ``m1``, ``m2``, ``variance`` :math:`=m_2-m_1^2`, ``relative_variance`` :math:`r=m_2/m_1^2-1` (finite everywhere:
    at :math:`m_1=0`, e.g. the vanilla RNN at :math:`\sigma_w=0`, its limit :math:`\sigma_w\to0^+`, see
    :func:`_relative_variance`), and for one pre-activation the coefficient expectations ``E_a2, E_a4, E_b2, E_a2b2, E_b4``; floats
    for scalar input, arrays of the broadcast shape otherwise.
    """
    cell, hp, fp, pieces, m1, variance = _step(cell, orthogonal, hyperparameters)
    m2 = variance + m1 ** 2
    rv = _relative_variance(pieces, bool(orthogonal), m1, variance)
    out = {"cell": cell.name, "orthogonal": bool(orthogonal)}
    out.update({k: _scalar_or_array(v) for k, v in hp.items()})
    out.update(q_star=_scalar_or_array(fp.q_star), Q_star=_scalar_or_array(fp.Q_star), chi=_scalar_or_array(fp.chi),
               m1=_scalar_or_array(m1), m2=_scalar_or_array(m2), variance=_scalar_or_array(variance),
               relative_variance=_scalar_or_array(rv))
    if len(cell.preactivations) == 1:
        out.update(E_a2=_scalar_or_array(pieces.Ea2), E_a4=_scalar_or_array(pieces.Ea4),
                   E_b2=_scalar_or_array(pieces.Eb2[0]), E_a2b2=_scalar_or_array(pieces.Ea2b2[0]),
                   E_b4=_scalar_or_array(pieces.Eb2b2[0, 0]))
    return out


#: largest number of steps :func:`product_moments` accepts (the cost does not grow with T: closed forms, O(log T)
#: doubling; beyond 2**53 a float no longer holds every integer)
MAX_T = 2 ** 53


def _check_T(T):
    bad = DomainError(f"T must be an integer in [1, {MAX_T}] (or an array of them), got {T!r}")
    if isinstance(T, bool):
        raise bad
    if isinstance(T, int):  # a Python int of any size: no float round-off, no int64 overflow
        if not 1 <= T <= MAX_T:
            raise bad
        return np.asarray(T, dtype=np.int64)
    try:
        t = np.asarray(T)
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if t.dtype == bool or not np.issubdtype(t.dtype, np.number) or np.issubdtype(t.dtype, np.complexfloating):
        raise bad
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(t)) and np.all(t == np.round(t)) and np.all(t >= 1) and np.all(t <= MAX_T)
    if not ok:
        raise bad
    return t.astype(np.int64)


def _log_geometric_sums(log_beta, T):
    r""":math:`\ln S_T` and :math:`\ln G_T` for :math:`S_n=\sum_{j<n}\beta^j`, :math:`G_n=\sum_{t<n}S_t`, in
    :math:`O(\log T)` operations (binary powering of the composition rule
    :math:`(\beta^m,S_m,G_m)\circ(\beta^n,S_n,G_n)=(\beta^{m+n},\,S_m+\beta^mS_n,\,G_m+nS_m+\beta^mG_n)`).

    Every term is non-negative, so the sums are formed in log space (``logaddexp``) without cancellation or
    overflow, for :math:`\beta` below, at or above 1 alike (relative error of a few ulp times :math:`\ln S,\ln G`).
    ``log_beta`` may be :math:`-\infty` (:math:`\beta=0`); arrays broadcast with ``T`` (integers >= 1)."""
    log_beta = np.asarray(log_beta, float)
    T = np.asarray(T, np.int64)
    shape = np.broadcast_shapes(log_beta.shape, T.shape)
    lb = np.broadcast_to(log_beta, shape)
    T = np.broadcast_to(T, shape)
    ninf = np.full(shape, -np.inf)
    # the accumulated product (n_acc steps) and the current power of two (n_pow steps)
    n_acc = np.zeros(shape, np.int64)
    P_acc, S_acc, G_acc = np.zeros(shape), ninf.copy(), ninf.copy()
    P_pow, S_pow, G_pow = lb.copy(), np.zeros(shape), ninf.copy()
    n_pow = 1

    def compose(Pm, Sm, Gm, Pn, Sn, Gn, n):
        with np.errstate(divide="ignore", invalid="ignore"):
            Pmn = np.where(np.isneginf(Pm) | np.isneginf(Pn), -np.inf, Pm + Pn)
            Smn = np.logaddexp(Sm, np.where(np.isneginf(Pm) | np.isneginf(Sn), -np.inf, Pm + Sn))
            nS = np.where(np.isneginf(Sm), -np.inf, np.log(np.maximum(n, 1)) + Sm)
            Gmn = np.logaddexp(np.logaddexp(Gm, nS), np.where(np.isneginf(Pm) | np.isneginf(Gn), -np.inf, Pm + Gn))
        return Pmn, Smn, Gmn

    rest = T.copy()
    while np.any(rest > 0):
        take = (rest & 1).astype(bool)
        if take.any():
            P2, S2, G2 = compose(P_acc, S_acc, G_acc, P_pow, S_pow, G_pow, n_pow)
            P_acc, S_acc, G_acc = (np.where(take, new, old) for new, old in
                                   ((P2, P_acc), (S2, S_acc), (G2, G_acc)))
            n_acc = np.where(take, n_acc + n_pow, n_acc)
        rest = rest >> 1
        if np.any(rest > 0):
            P_pow, S_pow, G_pow = compose(P_pow, S_pow, G_pow, P_pow, S_pow, G_pow, n_pow)
            n_pow *= 2
    return S_acc, G_acc


def _log(x):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(x, float))


def _linear(log_value, direct=None):
    r"""The value :math:`e^{\ell}` of a log ``log_value`` where a float holds it; else None (scalar) or NaN (array
    entries): the value under- or overflows (:math:`\ell<\ln(\text{smallest normal float})` or
    :math:`\ell>\ln(\text{largest float})`) and only its log is reported. An exact 0 (:math:`\ell=-\infty`) stays 0.
    ``direct``, where given, is the value computed in linear space (used where it is finite and normal)."""
    ell = np.asarray(log_value, float)
    info = np.finfo(float)
    lo, hi = math.log(info.tiny), math.log(info.max)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        from_log = np.exp(ell)
        val = from_log if direct is None else np.asarray(direct, float)
        # the direct value where it is a normal float (else the exponential of the log)
        val = np.where(np.isfinite(val) & (np.abs(val) >= info.tiny), val, from_log)
        ok = (ell >= lo) & (ell <= hi) & np.isfinite(val)
        val = np.where(np.isneginf(ell), 0.0, np.where(ok, val, np.nan))
    if val.ndim == 0:
        return None if math.isnan(float(val)) else float(val)
    return val


def _log_scalar_or_array(v):
    v = np.asarray(v, dtype=float)
    return float(v) if v.ndim == 0 else v


def product_moments(cell, T, *, orthogonal: bool = False, **hyperparameters) -> dict:
    r"""Mean and variance of the spectrum of :math:`JJ^\top` for the T-step product :math:`J=J_T\cdots J_1`.

    Free-probability result (S-transforms of asymptotically free factors multiply):

    .. math:: \text{mean} = \chi^T,\qquad \text{relative\_variance} = T\,r,\qquad
              \text{variance} = T\,r\,\chi^{2T},

    with :math:`\chi=m_1` and :math:`r` the per-step relative variance of :func:`step_moments`. Exact at large N for the
    vanilla RNN with untied weights; an approximation with tied weights and for the minimalRNN (see module docstring).

    Why the minimalRNN is not covered exactly even with untied weights: its factors carry a diagonal part
    :math:`\operatorname{diag}(a_t)`, and diagonal matrices of different steps commute, i.e. they are classically
    independent, not free. The exact large-N result for coefficients drawn independently at every step (and
    independent of the :math:`W_t`) follows from the trace expansion of :math:`X'=J X J^\top` with three moments,
    :math:`\varphi=\tfrac1N\operatorname{tr}X`, :math:`\mu=\tfrac1N\operatorname{tr}X^2` and the diagonal moment
    :math:`\psi=\tfrac1N\sum_iX_{ii}^2` (single pre-activation shown; :math:`s=\sigma_w^2`):

    .. math:: \varphi' = m_1\varphi,\qquad
              \psi' = \mathbb E[a^4]\,\psi + \bigl(2s\,\mathbb E[a^2b^2] + s^2\mathbb E[b^4]\bigr)\varphi^2,

    .. math:: \mu' = \mathbb E[a^2]^2(\mu-\psi) + \mathbb E[a^4]\,\psi + 2s\,\mathbb E[a^2b^2]\,\varphi^2
                     + 2s\,\mathbb E[a^2]\mathbb E[b^2]\,\mu
                     + s^2\bigl(\mathbb E[b^4]\varphi^2 + \mathbb E[b^2]^2\mu
                     - (1-\kappa)\mathbb E[b^2]^2\varphi^2\bigr)

    from :math:`\varphi=\mu=\psi=1` (the last bracket is the free product of :math:`B^2` with the rotation-invariant
    :math:`WXW^\top`; :math:`X'_{ii}\approx a_i^2X_{ii}+s\,b_i^2\varphi`). Setting :math:`\psi=\varphi^2`
    (a rotation-invariant :math:`X`) recovers the free result. Its outcome is returned as ``variance_independent`` and
    ``relative_variance_independent``; for the vanilla RNN (:math:`a=0`) it equals the free one. In the centred and
    normalised variables :math:`\tilde v=(\mu-\varphi^2)/\varphi^2`, :math:`\tilde d=(\psi-\varphi^2)/\varphi^2` of
    :func:`_diagonal_recursion` the recursion is linear with constant non-negative coefficients,
    :math:`\tilde v'=\tilde v+\alpha\tilde d+r`, :math:`\tilde d'=\beta\tilde d+\delta` (:math:`\alpha=
    \operatorname{Var}(a^2)/m_1^2`, :math:`\beta=\mathbb E[a^4]/m_1^2`, :math:`\delta=\operatorname{Var}(a^2+
    \sum_ks_kb_k^2)/m_1^2`), solved in closed form:

    .. math:: \text{relative\_variance\_independent} = T\,r + \alpha\,\delta\,G_T,\qquad
              G_T=\sum_{t<T}\sum_{j<t}\beta^j,

    evaluated in log space by binary powering (:func:`_log_geometric_sums`).

    **Long products.** The cost is :math:`O(\log T)` (no loop over the steps); ``T`` may be up to :data:`MAX_T`
    (:math:`2^{53}`). Every magnitude is also returned as its natural log, computed without forming the value:
    ``log_mean`` :math:`=T\ln\chi`, ``log_variance``, ``log_m2``, ``log_variance_independent``,
    ``log_relative_variance_independent``. Where a value under- or overflows a float (e.g. :math:`\chi^T` for
    :math:`T\gtrsim 700/|\ln\chi|`) the linear key is ``None`` (NaN in array results) and only its log is reported;
    an exact 0 (:math:`\chi=0`, or no spread) is 0 with log :math:`-\infty`. The relative variances are
    finite wherever :math:`r` is (:math:`Tr`), except ``relative_variance_independent`` when :math:`\beta>1` and
    :math:`\beta^T` overflows (then ``None``/NaN, its log finite).

    **Degenerate limit.** At :math:`\chi=m_1=0` (vanilla RNN at :math:`\sigma_w=0`: :math:`J=0`) the mean and
    variances are exactly 0 (logs :math:`-\infty`), and the relative variances are their limits
    :math:`\sigma_w\to0^+`: :math:`Tr` with :math:`r` of :func:`step_moments` (for :math:`a\equiv0` both recursions
    agree).

    ``T`` is an integer >= 1 (or an array, broadcast with the hyperparameters). Returns a JSON-friendly dict (floats for
    scalar input): ``cell``, ``T``, ``orthogonal``, the hyperparameters, ``mean``, ``variance``,
    ``relative_variance``, ``m2`` (:math:`\tfrac1N\operatorname{tr}(JJ^\top)^2`), ``variance_independent``,
    ``relative_variance_independent``, ``chi``, ``variance_step``, ``relative_variance_step``, ``q_star``,
    ``Q_star``, and the ``log_*`` keys above.
    """
    Tarr = _check_T(T)
    cell, hp, fp, pieces, m1, variance_step = _step(cell, orthogonal, hyperparameters)
    orth = bool(orthogonal)
    rv = _relative_variance(pieces, orth, m1, variance_step)
    m1 = np.asarray(m1, float)
    Tf = Tarr.astype(float)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        log_m1 = _log(m1)
        log_mean = np.where(m1 > 0, Tf * np.where(m1 > 0, log_m1, 0.0), -np.inf)
        rel = Tf * rv
        log_rel = _log(rel)
        log_variance = np.where(np.isneginf(log_rel) | np.isneginf(log_mean), -np.inf, log_rel + 2 * log_mean)
        log_m2 = np.where(np.isneginf(log_mean), -np.inf, 2 * log_mean + np.log1p(rel))
        mean_direct = m1 ** Tarr
        # independent coefficients: T r + alpha delta G_T (only where a is not identically 0, i.e. m1 > 0 with
        # alpha > 0; else it is the free result)
        m1p = np.where(m1 > 0, m1, 1.0)
        A = np.maximum(pieces.Ea4 - pieces.Ea2 ** 2, 0.0)
        log_alpha = _log(A) - 2 * _log(m1p)
        log_beta = _log(pieces.Ea4) - 2 * _log(m1p)
        log_delta = _log(pieces.diagonal_variance()) - 2 * _log(m1p)
        active = (m1 > 0) & (A > 0)
        _, log_G = _log_geometric_sums(np.where(active, log_beta, -np.inf), Tarr)
        extra = np.where(active & np.isfinite(log_delta) & ~np.isneginf(log_G),
                         np.where(active, log_alpha, 0.0) + np.where(np.isfinite(log_delta), log_delta, 0.0)
                         + np.where(np.isneginf(log_G), 0.0, log_G), -np.inf)
        log_rel_ind = np.logaddexp(log_rel, extra)
        log_var_ind = np.where(np.isneginf(log_rel_ind) | np.isneginf(log_mean), -np.inf,
                               log_rel_ind + 2 * log_mean)
    mean = _linear(log_mean, mean_direct)
    mean_arr = np.asarray(np.nan if mean is None else mean, float)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        variance = _linear(log_variance, rel * mean_arr * mean_arr)  # (no intermediate mean^2 to underflow)
        m2 = _linear(log_m2, (1.0 + rel) * mean_arr * mean_arr)
        rel_ind = _linear(log_rel_ind, np.where(np.isneginf(extra), rel, np.exp(log_rel_ind)))
        rel_ind_arr = np.asarray(np.nan if rel_ind is None else rel_ind, float)
        var_ind = _linear(log_var_ind, rel_ind_arr * mean_arr * mean_arr)
    out = {"cell": cell.name, "orthogonal": orth, "T": int(Tarr) if Tarr.ndim == 0 else Tarr}
    out.update({k: _scalar_or_array(v) for k, v in hp.items()})
    out.update(mean=mean, variance=variance, relative_variance=_scalar_or_array(rel), m2=m2,
               variance_independent=var_ind, relative_variance_independent=rel_ind, chi=_scalar_or_array(fp.chi),
               variance_step=_scalar_or_array(variance_step), relative_variance_step=_scalar_or_array(rv),
               q_star=_scalar_or_array(fp.q_star), Q_star=_scalar_or_array(fp.Q_star),
               log_mean=_log_scalar_or_array(log_mean), log_variance=_log_scalar_or_array(log_variance),
               log_m2=_log_scalar_or_array(log_m2), log_variance_independent=_log_scalar_or_array(log_var_ind),
               log_relative_variance_independent=_log_scalar_or_array(log_rel_ind))
    return out


def isometry(cell, *, orthogonal: bool = False, **hyperparameters) -> dict:
    r"""How far one step is from dynamical isometry, and over how many steps the spectrum stays concentrated.

    Dynamical isometry of the T-step Jacobian needs (i) :math:`\chi = 1` and (ii) a per-step relative variance
    :math:`r\to0`, since the T-step spectrum has mean :math:`\chi^T` and relative variance :math:`Tr`. Vanilla RNN:
    orthogonal :math:`W` and :math:`q^*\to0` (small :math:`\sigma_v,\sigma_b`, :math:`\sigma_w\to1`); Gaussian
    :math:`W` always has :math:`r\ge1`. minimalRNN: large gate bias :math:`\mu_b` (:math:`u\to1`, :math:`J\to I`).

    Returns ``chi``, ``relative_variance_step`` (:math:`r`), ``xi`` :math:`=-1/\ln\chi` (steps over which the mean
    changes by a factor e; infinite at :math:`\chi\ge1`), ``xi_growth`` :math:`=1/\ln\chi` for :math:`\chi>1` (else
    infinite), and ``T_spread`` :math:`=1/r` (steps until the relative variance of the spectrum reaches 1), plus the
    hyperparameters and ``orthogonal``.
    """
    step = step_moments(cell, orthogonal=orthogonal, **hyperparameters)
    chi = np.asarray(step["chi"], dtype=float)
    rv = np.asarray(step["relative_variance"], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lc = np.log(np.where(chi > 0, chi, 1.0))
        xi = np.where(chi >= 1, np.inf, np.where(chi > 0, -1.0 / np.where(lc < 0, lc, -1.0), 0.0))
        growth = np.where(chi > 1, 1.0 / np.where(lc > 0, lc, 1.0), np.inf)
        spread = np.where(rv > 0, 1.0 / np.where(rv > 0, rv, 1.0), np.inf)
    out = {k: v for k, v in step.items() if k not in ("m1", "m2", "variance", "relative_variance")}
    out.update(relative_variance_step=step["relative_variance"], xi=_scalar_or_array(xi),
               xi_growth=_scalar_or_array(growth), T_spread=_scalar_or_array(spread))
    return out


# ------------------------------------------------------------------------------- discrete coefficient law
@dataclass(frozen=True)
class CoefficientLaw:
    r"""Discrete approximation of the mean-field joint law of the Jacobian's diagonal coefficients :math:`(a_i, b_i)`.

    Atoms ``(a[j], b[j])`` with probabilities ``weight[j]`` (non-negative, summing to 1). ``sigma_w``: the recurrent
    weight scale, so that :math:`J=\operatorname{diag}(a)+\sigma_w\operatorname{diag}(b)\,G` with :math:`G` standard
    (Ginibre :math:`G_{ij}\sim\mathcal N(0,1/N)` or Haar orthogonal). ``params``: the hyperparameters; ``q_star``,
    ``Q_star`` of the fixed point; ``n_state``: atoms of the carried variable (1 if :math:`b` depends on :math:`e`
    only).
    """

    a: np.ndarray
    b: np.ndarray
    weight: np.ndarray
    sigma_w: float = float("nan")
    q_star: float = float("nan")
    Q_star: float = float("nan")
    n_state: int = 1
    params: dict = field(default_factory=dict)

    def moment(self, p: int, r: int) -> float:
        r""":math:`\sum_j w_j a_j^p b_j^r`, the law's :math:`\mathbb E[a^p b^r]`."""
        return float(np.sum(self.weight * self.a ** p * self.b ** r))

    def step_moments(self, orthogonal: bool = False) -> tuple[float, float]:
        r"""(:math:`m_1`, :math:`m_2`) of the spectrum of :math:`JJ^\top` from this law (single pre-activation form of
        :func:`step_moments`): :math:`m_1=\mathbb E a^2+s\,\mathbb E b^2`, :math:`m_2=\mathbb E a^4+2s(\mathbb E a^2b^2
        +\mathbb E a^2\,\mathbb E b^2)+s^2(\mathbb E b^4+\kappa\,(\mathbb E b^2)^2)`, :math:`s=\sigma_w^2`."""
        return spectral_moments(self.a, self.b, self.sigma_w, orthogonal=orthogonal, weight=self.weight)


def spectral_moments(a, b, sigma_w, *, orthogonal: bool = False, weight=None) -> tuple[float, float]:
    r"""Large-N moments :math:`(m_1, m_2)` of the spectrum of :math:`JJ^\top`, :math:`J=\operatorname{diag}(a)+
    \sum_k\sigma_{w,k}\operatorname{diag}(b_k)G_k` (independent :math:`G_k`, Ginibre :math:`G_{ij}\sim\mathcal N(0,1/N)`
    or Haar orthogonal), for given coefficients: a sample (equal weights) or atoms with probabilities ``weight``.
    ``b`` has shape ``(n,)`` (one pre-activation, scalar ``sigma_w``) or ``(K, n)`` with ``sigma_w`` of length K.

    .. math:: m_1 = \overline{a^2}+\sum_k s_k\overline{b_k^2},\qquad
              m_2 = \overline{a^4} + 2\sum_k s_k\bigl(\overline{a^2b_k^2}+\overline{a^2}\;\overline{b_k^2}\bigr)
                    + \sum_{k,l}s_ks_l\bigl(\overline{b_k^2b_l^2}+\overline{b_k^2}\;\overline{b_l^2}\bigr)
                    - (1-\kappa)\sum_k s_k^2\,\overline{b_k^2}^{\,2},

    :math:`s_k=\sigma_{w,k}^2`, :math:`\kappa=1` (Gaussian) or 0 (orthogonal): the expansion of :func:`step_moments`
    with the coefficients' law replaced by the given one. Used to check that expansion on explicit matrices."""
    a = np.asarray(a, float)
    b = np.atleast_2d(np.asarray(b, float))
    s = np.atleast_1d(np.asarray(sigma_w, float)) ** 2
    if b.shape[1:] != a.shape or s.shape != b.shape[:1]:
        raise DomainError(f"shapes do not match: a {a.shape}, b {b.shape}, sigma_w {s.shape}")
    w = np.full(a.shape, 1.0 / a.size) if weight is None else np.asarray(weight, float)
    Ea2, Ea4 = float(np.sum(w * a ** 2)), float(np.sum(w * a ** 4))
    b2 = b ** 2
    Eb2 = b2 @ w
    Ea2b2 = b2 @ (w * a ** 2)
    Eb2b2 = (b2 * w) @ b2.T
    m1 = Ea2 + float(s @ Eb2)
    m2 = (Ea4 + 2 * float(s @ (Ea2b2 + Ea2 * Eb2)) + float(s @ (Eb2b2 + np.outer(Eb2, Eb2)) @ s)
          - (0.0 if not orthogonal else 1.0) * float(np.sum(s ** 2 * Eb2 ** 2)))
    return m1, m2


def _gauss_rule(moments: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""n-point Gauss rule of a law from its moments :math:`m_0..m_{2n}` (Golub-Welsch through the Hankel Cholesky).

    The rule integrates polynomials of degree :math:`\le 2n-1` exactly. The variable is standardised first (mean 0,
    variance 1) to keep the Hankel matrix well conditioned; if the law has fewer than n points of support (or the
    Hankel matrix is numerically singular) the largest n that works is used.
    """
    m = np.asarray(moments, dtype=float)
    mean = m[1]
    var = m[2] - mean ** 2
    if not var > 1e-14 * max(m[2], 1e-300):
        return np.array([mean]), np.array([1.0])
    sd = math.sqrt(var)
    # central standardised moments c_k = E[((y - mean)/sd)^k]
    K = len(m) - 1
    c = np.array([sum(math.comb(k, i) * m[i] * (-mean) ** (k - i) for i in range(k + 1)) / sd ** k
                  for k in range(K + 1)])
    for n_try in range(n, 0, -1):
        H = np.array([[c[i + j] for j in range(n_try + 1)] for i in range(n_try + 1)])
        try:
            U = np.linalg.cholesky(H).T  # upper
        except np.linalg.LinAlgError:
            continue
        d = np.diag(U)
        if np.any(d[:n_try + 1] <= 1e-7 * d[0]):
            continue
        alpha = np.array([U[j, j + 1] / U[j, j] - (U[j - 1, j] / U[j - 1, j - 1] if j else 0.0)
                          for j in range(n_try)])
        beta = np.array([U[j + 1, j + 1] / U[j, j] for j in range(n_try - 1)])
        Jm = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        nodes, vecs = np.linalg.eigh(Jm)
        w = vecs[0] ** 2
        return mean + sd * nodes, w / w.sum()
    return np.array([mean]), np.array([1.0])


def _lambdify(exprs, args):
    return sp.lambdify(args, list(exprs), modules=NUMPY_MODULES)


def coefficient_law(cell, *, n_state: int = 6, **hyperparameters) -> CoefficientLaw:
    r"""Discrete approximation of the joint mean-field law of :math:`(a_i, b_i)` at the fixed point (scalar
    hyperparameters, one pre-activation).

    Representation. :math:`a=c_h(e)` and :math:`b=\beta_0(e)+\beta_h(e)\,h+\beta_x(e)\,x` with :math:`e\sim\mathcal
    N(\mu_b,q^*)`, the previous state :math:`h` (stationary law) and the Gaussian input :math:`x\sim\mathcal N(0,R)`
    independent. The law is the product of

    * the engine's trapezoid rule in :math:`e` (:mod:`mftrnn.theory.quadrature`, node count for accuracy 1e-12 given the
      poles of the integrand; atoms of weight below 1e-15 of the largest dropped), or Gauss-Legendre pieces cut where a
      coefficient has a kink or jump (ReLU: :math:`b=\Theta(e)`; :func:`~mftrnn.theory.quadrature.gaussian_rule`), and
    * for the carried variable, an ``n_state``-point Gauss rule of its law built from its exact moments (Golub-Welsch):
      of :math:`y=h+\rho x` when :math:`\beta_x=\rho\beta_h` with constant :math:`\rho` (minimalRNN: :math:`y=h_{t-1}
      -z_t`, :math:`\rho=-1`), else of :math:`h` and :math:`x` separately (tensor product). The moments of :math:`h`
      come from the triangular recursion of the module docstring, evaluated on the :math:`e` rule.

    Accuracy: the stationary law of :math:`h_{t-1}-z_t` is not Gaussian; a Gauss rule of :math:`n` points reproduces
    its moments up to order :math:`2n-1` (11 by default) exactly, so every weighted moment :math:`\mathbb E[a^pb^r]`
    with :math:`r\le 2n-1` equals the mean-field value up to the 1e-12 quadrature error and Hankel round-off
    (tested to 1e-8 relative for :math:`p+r\le4`); smooth functions of :math:`b` converge exponentially in :math:`n`.
    The vanilla RNN's :math:`b=1-\tanh^2e` needs the :math:`e` rule only.
    """
    cell, hyperparameters, fp = unpack_fixed_point(cell, hyperparameters)
    cell = get_cell(cell, gated=False)
    jac = _step_jacobian(cell)
    if len(jac.b) != 1:
        raise MftrnnError(f"coefficient_law supports cells with one pre-activation; {cell.name!r} has {len(jac.b)}")
    if isinstance(n_state, bool) or int(n_state) != n_state or n_state < 1:
        raise DomainError(f"n_state must be an integer >= 1, got {n_state!r}")
    hp = check_hyperparameters(cell, hyperparameters)
    if any(v.ndim for v in hp.values()):
        raise DomainError("coefficient_law takes scalar hyperparameters")
    hpf = {k: float(v) for k, v in hp.items()}
    fp = fp or fixed_point(cell, **hpf)
    q_star, Q_star = float(fp.q_star), float(fp.Q_star)
    p = cell.preactivations[0]
    e_sym, h, x = p.symbol, cell.state, cell.input
    parts = jac.b_parts[0]
    update = _affine_poly(cell.update, cell)
    c0, ch, cx = (update.get(k, sp.S.Zero) for k in ((0, 0), (1, 0), (0, 1)))
    exprs = [jac.a, parts[sp.S.One], parts[h], parts[x], c0, ch, cx]
    subs = {s: hpf[s.name] for s in cell.hyperparameters}
    exprs = [sp.sympify(ex).subs(subs) for ex in exprs]
    mu = float(sp.sympify(p.mu_b).subs(subs))
    # e rule: strip of the least analytic coefficient (powers of the same functions have the same poles)
    d = min([strip_half_width(ex) for ex in exprs] + [np.inf])
    # coefficients with kinks or jumps (ReLU: b = Theta(e)): Gauss-Legendre pieces cut there, not the trapezoid
    kinks = sorted({k for ex in exprs for k in kink_points(ex, e_sym)})
    e_nodes, w_e = gaussian_rule(mu, q_star, d, kinks)
    vals = [np.broadcast_to(np.asarray(v, float), e_nodes.shape) for v in _lambdify(exprs, [e_sym])(e_nodes)]
    a_e, b0_e, bh_e, bx_e, c0_e, ch_e, cx_e = vals
    if not all(np.all(np.isfinite(v)) for v in vals):
        raise MftrnnError(f"non-finite Jacobian coefficients for cell {cell.name!r} at these hyperparameters")

    R_val = hpf["R"]
    kmax = 2 * int(n_state)
    xmom = np.array([float(_input_moment(l).subs(R, R_val)) for l in range(kmax + 1)])

    def E(v):
        return float(np.sum(w_e * v))

    def h_moments():
        H = [1.0]
        for k in range(1, kmax + 1):
            num, den = 0.0, 1.0
            for i, j in itertools.product(range(k + 1), repeat=2):
                l = k - i - j
                if l < 0:
                    continue
                coeff = math.factorial(k) / (math.factorial(i) * math.factorial(j) * math.factorial(l))
                ev = coeff * E(c0_e ** i * ch_e ** j * cx_e ** l)
                if j == k:
                    den -= ev
                else:
                    num += ev * H[j] * xmom[l]
            if not den > 0:
                raise MftrnnError(f"stationary moment {k} of the state diverges for cell {cell.name!r}")
            H.append(num / den)
        return np.array(H)

    bh_zero, bx_zero = not np.any(bh_e), not np.any(bx_e)
    n = int(n_state)
    if bh_zero and bx_zero:
        a, b, w, n_used = a_e, b0_e, w_e, 1
    else:
        if bh_zero:
            rho_h, rho_x = 0.0, 1.0
        elif bx_zero:
            rho_h, rho_x = 1.0, 0.0
        else:
            ratio = sp.simplify(exprs[3] / exprs[2])
            rho_h, rho_x = (1.0, float(ratio)) if not ratio.free_symbols else (None, None)
        if rho_h is not None:
            H = h_moments() if rho_h else np.zeros(kmax + 1)
            ymom = np.array([sum(math.comb(k, j) * (H[j] * rho_h ** j if rho_h else float(j == 0))
                                 * rho_x ** (k - j) * xmom[k - j] for j in range(k + 1)) for k in range(kmax + 1)])
            y, wy = _gauss_rule(ymom, n)
            scale = bh_e if rho_h else bx_e
            a = np.repeat(a_e, y.size)
            b = (b0_e[:, None] + scale[:, None] * y[None, :]).ravel()
            w = (w_e[:, None] * wy[None, :]).ravel()
        else:
            yh, wh = _gauss_rule(h_moments(), n)
            yx, wx = _gauss_rule(xmom, n)
            a = np.repeat(a_e, yh.size * yx.size)
            b = (b0_e[:, None, None] + bh_e[:, None, None] * yh[None, :, None]
                 + bx_e[:, None, None] * yx[None, None, :]).ravel()
            w = (w_e[:, None, None] * wh[None, :, None] * wx[None, None, :]).ravel()
            y = np.empty(yh.size * yx.size)
        n_used = y.size
    w = np.asarray(w, float)
    w = w / w.sum()
    return CoefficientLaw(np.ascontiguousarray(a, float), np.ascontiguousarray(b, float), w,
                          sigma_w=float(sp.sympify(p.sigma_w).subs(subs)), q_star=q_star, Q_star=Q_star,
                          n_state=int(n_used), params=hpf)


@functools.lru_cache(maxsize=None)
def _joint_moment_compiled(cell: Cell, p: int, r: int) -> Compiled:
    jac = _step_jacobian(cell)
    if len(jac.b) != 1:
        raise MftrnnError(f"coefficient_moment supports cells with one pre-activation; {cell.name!r} has {len(jac.b)}")
    mom = _Moments(cell, kmax=max(r, 2))
    A = {(0, 0): jac.a}
    B = _affine_poly(jac.b[0], cell) if jac.b[0] != 0 else {}
    poly = _poly_mul(_poly_pow(A, p), _poly_pow(B, r)) if (r == 0 or B) else {}
    return Compiled([mom.expect(poly)], [Q, *cell.hyperparameters])


def coefficient_moment(cell, p: int, r: int, **hyperparameters):
    r"""The mean-field expectation :math:`\mathbb E[a^p b^r]` at the fixed point, from the symbolic expressions
    (engine quadrature, no discretisation of the state's law); vectorised over the hyperparameters."""
    cell, hyperparameters, fp = unpack_fixed_point(cell, hyperparameters)
    cell = get_cell(cell, gated=False)
    for name, v in (("p", p), ("r", r)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise DomainError(f"{name} must be a non-negative integer, got {v!r}")
    hp = check_hyperparameters(cell, hyperparameters)
    fp = fp or fixed_point(cell, **hp)
    (val,) = _evaluate(_joint_moment_compiled(cell, int(p), int(r)), fp.Q_star, *hp.values())
    return _scalar_or_array(val)

r"""Spectrum of the state-to-state Jacobian of gated cells (``torch.nn.LSTM``, ``torch.nn.GRU``), derived from the
cell description.

**The Jacobian.** Stack the cell's states (the LSTM's pair :math:`(c, h)`, the GRU's :math:`h`) into one vector of
:math:`SN` entries. Differentiating the update rules (SymPy, :func:`jacobian_structure`) gives

.. math:: J = E + \sum_k L_k\,W_k\,R_k,

with, unit by unit, an :math:`S\times S` *direct* block :math:`e = \partial s_t/\partial s_{t-1}` at fixed fields,
for every field :math:`k` with a recurrent term a column :math:`l_k = \partial s_t/\partial e_k` and a row
:math:`r_k = \partial y_k/\partial s_{t-1}` (what :math:`W_k` multiplies; :math:`y_k` the state field :math:`k`
reads), and :math:`W_k` the recurrent matrix (:math:`\sigma_{w,K}^2/N` per entry, or :math:`\sigma_{w,K}` times a
Haar orthogonal matrix). For ``nn.LSTM`` (:math:`S = 2`):
:math:`e = \begin{pmatrix} f & 0\\ o\tanh'(c_t) f & 0\end{pmatrix}`, :math:`l_f = (c\,\sigma'(e_f),\;
o\tanh'(c_t)\,c\,\sigma'(e_f))`, ..., :math:`r_k = (0, 1)`; the :math:`h` column of :math:`e` is zero because the
previous :math:`h` reaches the new state only through the recurrent matrices.

**One step** (large :math:`N`; the coefficients are independent of the :math:`W_k`, the assumption of the untied
mean field; different fields have independent matrices). With :math:`s_k = \sigma_{w,K}^2`, :math:`\kappa = 1`
(Gaussian) or 0 (orthogonal), and :math:`\langle\cdot\rangle` the average over units, the moments
:math:`m_j = \frac1{SN}\operatorname{tr}(JJ^\top)^j` are, by the free moment–cumulant formula (non-crossing
pairings of :math:`W_k` with :math:`W_k^\top`; the fourth free cumulant :math:`-1` of a Haar matrix for
:math:`\kappa = 0`),

.. math:: S\,m_1 = \langle\operatorname{tr}ee^\top\rangle + \sum_k s_k\langle|l_k|^2\rangle\langle|r_k|^2\rangle,

.. math:: S\,m_2 = \langle\operatorname{tr}(ee^\top)^2\rangle
        + 2\sum_k s_k\bigl(\langle|r_k|^2\rangle\langle l_k^\top ee^\top l_k\rangle
                          + \langle|l_k|^2\rangle\langle r_k e^\top e\,r_k^\top\rangle\bigr)
        + \sum_{a,b}s_as_b\bigl(\langle|r_a|^2\rangle\langle|r_b|^2\rangle\langle(l_a\!\cdot l_b)^2\rangle
                                + \langle|l_a|^2\rangle\langle|l_b|^2\rangle\langle(r_a\!\cdot r_b)^2\rangle\bigr)
        - (1-\kappa)\sum_k s_k^2\langle|r_k|^2\rangle^2\langle|l_k|^2\rangle^2 .

For one state (:math:`S = 1`, :math:`r_k = 1`) this is :func:`mftrnn.theory.jacobian.spectral_moments`. The unit
averages are over the stationary law of the untied mean field at the fixed point: the fields Gaussian with the
fixed point's means and variances, the carried state independent of them with its stationary law (for the LSTM the
non-Gaussian law of :math:`c` from :func:`mftrnn.theory.gated.stationary_law`, sampled by inverting its
distribution function; for the GRU an exact Gauss rule from the moments of :math:`h`, which its coefficients need
only polynomially). They are estimated by Monte Carlo over the fields (``samples`` draws in 10 batches); the
standard error of :math:`m_1` and :math:`m_2` is reported with them (about 1e-3 relative at the default).

**T steps.** The mean :math:`\frac1{SN}\mathbb E\operatorname{tr}J_{(T)}J_{(T)}^\top` of the product
:math:`J_{(T)} = J_T\cdots J_1` is the growth of the squared norm of an isotropic perturbation of every state, which
the untied mean field gives exactly, without sampling: :math:`\chi^T` for a cell with one state (the GRU), and for
the LSTM the linear map of the perturbation's second moments whose leading eigenvalue is :math:`\chi` (the
measure :math:`w(dc) = \mathbb E[\delta c^2; c\in dc]` on the characteristic-function grid, with
:math:`\overline{\delta h^2}`), applied :math:`T` times to :math:`(w_0 = \pi,\ \overline{\delta h_0^2} = 1)` by binary
powering (cost :math:`O(\log T)`).

**T steps: the spread.** Two results. ``relative_variance`` treats successive factors as free: :math:`T r` with
:math:`r = m_2/m_1^2 - 1` of one step (as for the vanilla RNN and the minimalRNN in
:func:`mftrnn.theory.jacobian.product_moments`), an **approximation**: the direct blocks :math:`e_t` of successive
steps (the forget or update gate) are classically, not freely, independent. ``relative_variance_independent`` is
exact at large :math:`N` for the model in which the unit coefficients :math:`(e, l_k, r_k)` are drawn afresh at
every step, independent of the past and of the :math:`W_{k,t}` (independent over :math:`k` and :math:`t`). It
follows :math:`X_t = J_{(t)}J_{(t)}^\top` through :math:`X' = JXJ^\top`, with :math:`X_{uv}` the :math:`S\times S`
block of units :math:`u, v` and :math:`D_u = X_{uu}`, by three quadratic moments that close at large :math:`N`:

.. math:: (\Phi\otimes\Phi)_{ijkl} = \Phi_{ij}\Phi_{kl},\ \Phi = \langle D\rangle,\qquad
          \Psi_{ijkl} = \langle D_{ij}D_{kl}\rangle,\qquad
          M_{abcd} = \frac1N\sum_{u,v}X_{uv,bc}X_{uv,ad},

so that :math:`m_1 = \operatorname{tr}\Phi/S` and :math:`m_2 = \frac1{SN}\operatorname{tr}X^2 =
\sum_{ac}M_{aacc}/S`; :math:`M` is the bilinear form :math:`F(P, Q) = \frac1N\operatorname{tr}(\hat PX\hat QX) =
\sum P_{ab}Q_{cd}M_{abcd}` (:math:`\hat P = I_N\otimes P`). For unit matrices :math:`p_u, q_u` independent of
:math:`X` (independent between units, correlated within one) the double sum over units splits into the pairs
:math:`u\ne v`, which see only the means, and the :math:`N` terms :math:`u = v`, which see the joint law
(:math:`X_{uv} = O(N^{-1/2})` for :math:`u\ne v` and :math:`X_{uu} = O(1)`, so both parts are of order 1); with
:math:`\Psi^c_{xyzw} = \Psi_{yzxw}` (the :math:`u = v` part of :math:`M`):

.. math:: \mathcal F(p, q) = \frac1N\sum_{u,v}\operatorname{tr}(p_uX_{uv}q_vX_{uv}^\top)
          = \sum\langle p\rangle_{xy}\langle q\rangle_{zw}(M - \Psi^c)_{xyzw}
          + \sum\langle p_{xy}q_{zw}\rangle\Psi^c_{xyzw}.

Expand :math:`F'(P, Q) = \frac1N\operatorname{tr}(\hat PJXJ^\top\hat QJXJ^\top)` in
:math:`J = E + \sum_kL_kW_kR_k` (four factors, numbered 1 to 4). Only pairings of a :math:`W_k` with a
:math:`W_k^\top` that do not cross survive: pairings of :math:`W_k` with :math:`W_k` (no transpose), crossing
ones and odd ones vanish or are :math:`O(1/N)`, and different :math:`k` are independent. With
:math:`\mathbb E[WUW^\top] = s\,\tau(U)\,I` (exact; :math:`\tau = \frac1N\operatorname{tr}`),
:math:`Y_k = R_kXR_k^\top`, :math:`\tau(Y_k) = \operatorname{tr}(\langle r_kr_k^\top\rangle\Phi)` and
:math:`L_k^\top\hat PL_k = \operatorname{diag}(l_k^\top Pl_k)`:

.. math:: F'(P, Q) = \mathcal F(e^\top Pe,\ e^\top Qe)
          + \sum_k s_k\tau(Y_k)\bigl(\langle l_k^\top Qe\Phi e^\top Pl_k\rangle
                                    + \langle l_k^\top Pe\Phi e^\top Ql_k\rangle\bigr)
          + \sum_k s_k\bigl(\langle l_k^\top Pl_k\rangle\mathcal F(r_kr_k^\top, e^\top Qe)
                           + \langle l_k^\top Ql_k\rangle\mathcal F(e^\top Pe, r_kr_k^\top)\bigr)

.. math:: \qquad + \sum_{a,b}s_as_b\bigl(\tau(Y_a)\tau(Y_b)\langle(l_a^\top Ql_b)(l_b^\top Pl_a)\rangle
          + \langle l_a^\top Pl_a\rangle\langle l_b^\top Ql_b\rangle\mathcal F(r_ar_a^\top, r_br_b^\top)\bigr)
          - (1-\kappa)\sum_k s_k^2\tau(Y_k)^2\langle l_k^\top Pl_k\rangle\langle l_k^\top Ql_k\rangle .

Term by term: no :math:`W` (the first); one pair enclosing :math:`Y_k` (factors 1-2 or 3-4; the :math:`D_u` next
to the coefficients of its own unit enters through :math:`\Phi` since the two are independent); one pair enclosing
:math:`XE^\top\hat QEX` or :math:`XE^\top\hat PEX` (factors 1-4 or 3-2); two pairs, :math:`(12)(34)` and
:math:`(14)(23)`, for :math:`a \ne b` and for :math:`a = b` alike (the third pairing of one Gaussian matrix,
:math:`(13)(24)`, is :math:`O(1/N)`); for Haar :math:`W_k` the fourth free cumulant :math:`-1` of one matrix
(:math:`\tau(abcb) = \tau(ac)\tau(b)^2 + \tau(a)\tau(c)\tau(b^2) - \tau(a)\tau(c)\tau(b)^2` for
:math:`b = W_kY_kW_k^\top` free from the diagonal :math:`a, c`, where :math:`\tau(b^2) = s^2\tau(Y^2)` for Haar
and :math:`s^2(\tau(Y^2) + \tau(Y)^2)` for Gaussian :math:`W_k`). The diagonal blocks are
:math:`D'_u = e_uD_ue_u^\top + \sum_ks_k\tau(Y_k)\,l_{k,u}l_{k,u}^\top + O(N^{-1/2})` (:math:`(W_kY_kW_k^\top)_{uu}`
concentrates on :math:`s_k\tau(Y_k)`, the cross terms have mean 0), which gives :math:`\Phi' = A\Phi` and
:math:`\Psi' = \langle D'\otimes D'\rangle`. All three updates are linear in :math:`(\Phi\otimes\Phi, \Psi, M)`:
one lower block-triangular matrix of size :math:`3S^4` (48 for the LSTM; :func:`_block_map`), whose
:math:`\Phi\otimes\Phi` and :math:`M` diagonal blocks are both :math:`A\otimes A` (the free growth; the
:math:`\Psi` block and the couplings give the excess spread), applied :math:`T` times from :math:`X_0 = I` by
binary powering (:math:`O(\log T)`). The unit averages (moments of :math:`e` up to order 4,
:math:`\langle l_il_je_{ax}e_{by}\rangle`, ...) are plain averages over the sampled units, so the result is exact
for coefficients drawn from the sample's empirical law (hence never negative); its Monte Carlo error comes from the
10 batches. For one state with :math:`r_k = 1` it is the recursion of
:func:`mftrnn.theory.jacobian.product_moments` (:math:`\varphi, \mu, \psi`), solved there in closed form (used
here for the GRU); the two agree to rounding (tested).

*What it leaves out.* In the real untied network the coefficients of consecutive steps are not independent: a
unit's carried state enters both (the LSTM's :math:`c_t` is in :math:`\tanh'(c_t)` of step :math:`t` and in
:math:`l_f` of step :math:`t+1`; the GRU's :math:`h` likewise). The exact mean above keeps this correlation;
``mean_independent``, the independent model's mean, does not. For the LSTM at :math:`\sigma_w = \sigma_v = 1`,
:math:`\mu_{b,f} = 2` its rate, the leading eigenvalue of :math:`A`, is 0.7554 against :math:`\chi = 0.7542`
(:math:`4\times10^6` units), so ``mean_independent`` is 0.3% above the exact mean at :math:`T = 5` and 10% at
:math:`T = 100`. Against explicit Jacobians of ``nn.LSTMCell`` with weights redrawn every step
(:math:`N = 500`, 12 networks) the independent spread agrees within the seed-to-seed error for :math:`T \le 6`
(2.505 against 2.52 :math:`\pm` 0.02 at :math:`T = 5`), where the free product gives 6.13. Over long products the
correlation shows: explicit block products at :math:`N = 1000` with each unit's :math:`c` carried along the
mean-field chain give 8.19 :math:`\pm` 0.13 at :math:`T = 20` and 12.4 :math:`\pm` 0.4 at :math:`T = 30`, against
8.36 and 13.2 here (with coefficients drawn afresh they give 8.65 :math:`\pm` 0.12 and 14.4 :math:`\pm` 0.7; 8
products each). With tied weights (a real network) the factors also share their matrices, which neither result
covers.

Supported: cells whose fields read a state directly (not a gate times a state, as in the reset-before GRU, whose
Jacobian holds a product of two random matrices) and, for closed cells, whose coefficients are polynomial in the
carried state. Others get a clear :class:`~mftrnn.MftrnnError`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..cells.gated import GatedCell
from ..errors import ConvergenceError, DomainError, MftrnnError
from .fixed_point import FixedPoint
from .gated import _E, analyse, law_perturbation_map, stationary_law
from .jacobian import MAX_T, _gauss_rule, _linear, _log_geometric_sums
from .numeric import NUMPY_MODULES

__all__ = ["JacobianStructure", "jacobian_structure", "gated_step_moments", "gated_product_moments"]

_BATCHES = 10


# --------------------------------------------------------------------------- the Jacobian, symbolically
@dataclass(frozen=True, eq=False)
class JacobianStructure:
    r"""``J = E + sum_k L_k W_k R_k`` unit by unit: ``e`` (S x S), ``l[k]`` (S), ``r[k]`` (S) as SymPy expressions
    in the carried state, the input and the fields; ``states``: the previous-state symbols (the order of the blocks);
    ``gate[k]``: the gate whose ``sigma_w`` scales ``W_k``."""

    cell: GatedCell
    states: tuple
    e: sp.Matrix
    l: dict
    r: dict
    gate: dict
    carried: sp.Symbol | None
    args: tuple

    @functools.cached_property
    def _compiled(self):
        exprs = [list(self.e)] + [list(self.l[k]) for k in self.l] + [list(self.r[k]) for k in self.r]
        return sp.lambdify(self.args, exprs, modules=NUMPY_MODULES)

    def evaluate(self, values: dict, n: int) -> tuple:
        """Arrays ``e (S, S, n)``, ``l (K, S, n)``, ``r (K, S, n)`` at the unit samples ``values`` (symbol -> array)."""
        S, K = len(self.states), len(self.l)
        out = self._compiled(*[values[a] for a in self.args])
        full = lambda v: np.broadcast_to(np.asarray(v, float), (n,))
        e = np.array([full(v) for v in out[0]]).reshape(S, S, n)
        l = np.array([[full(v) for v in row] for row in out[1:1 + K]]).reshape(K, S, n)
        r = np.array([[full(v) for v in row] for row in out[1 + K:]]).reshape(K, S, n)
        return e, l, r


@functools.lru_cache(maxsize=None)
def jacobian_structure(cell) -> JacobianStructure:
    """Derive :class:`JacobianStructure` from the cell's update rules (see the module docstring)."""
    from ..cells.registry import get_cell
    cell = get_cell(cell) if not isinstance(cell, GatedCell) else cell
    if not isinstance(cell, GatedCell):
        raise MftrnnError(f"{cell.name!r} is not a gated cell; use mftrnn.theory.jacobian for it")
    st = analyse(cell)
    explicit = cell.explicit_updates()
    prev = tuple(cell.states)
    fields = tuple(f.symbol for f in cell.fields)
    new = [explicit[n] for n in cell.new_states]
    e = sp.Matrix([[sp.diff(u, p) for p in prev] for u in new])
    l, r, gate = {}, {}, {}
    for f in cell.fields:
        if f.reads is None:
            continue
        y = sp.sympify(f.reads)
        if y.free_symbols & set(fields):
            raise MftrnnError(f"cell {cell.name!r}: field {f.symbol} reads {y}, a gate times a state; its Jacobian "
                              "holds a product of two random matrices, which this spectrum does not cover")
        l[f.symbol] = sp.Matrix([sp.diff(u, f.symbol) for u in new])
        r[f.symbol] = sp.Matrix([sp.diff(y, p) for p in prev])
        gate[f.symbol] = f.gate
    if not l:
        raise MftrnnError(f"cell {cell.name!r} has no recurrent field")
    used = set().union(*[m.free_symbols for m in (e, *l.values(), *r.values())])
    other = used - set(fields) - {cell.input} - ({st.carried} if st.carried is not None else set())
    if other:
        raise MftrnnError(f"cell {cell.name!r}: the Jacobian depends on {sorted(map(str, other))}, states whose law "
                          "this spectrum does not track")
    if st.kind == "closed" and st.carried is not None:
        for m in (e, *l.values()):
            for v in m:
                if v.has(st.carried) and not sp.sympify(v).is_polynomial(st.carried):
                    raise MftrnnError(f"cell {cell.name!r}: the Jacobian coefficient {v} is not polynomial in "
                                      f"{st.carried}, whose law is known here only through its moments")
    args = ((st.carried,) if st.carried is not None else ()) + fields + (cell.input,)
    return JacobianStructure(cell, prev, e, l, r, gate, st.carried, args)


# --------------------------------------------------------------------------- the law of one unit
def _field_moments(fp: FixedPoint, st) -> dict:
    cell = st.cell
    mom = {cell.input: (0.0, float(fp.params["R"]))}
    for f in cell.fields:
        mom[f.symbol] = (float(fp.params[f"mu_b_{f.gate}"]) if f.bias else 0.0, float(fp.q_stars[str(f.symbol)]))
    return mom


def _hyperparameters(fp: FixedPoint, cell: GatedCell) -> dict:
    return {g: {k: float(fp.params[f"{k}_{g}"]) for k in ("sigma_w", "sigma_v", "sigma_b", "mu_b")}
            for g in cell.gates}


def _carried_sampler(st, mom, js: JacobianStructure, nodes: int | None = None):
    r"""A function ``u -> samples`` of the carried state from uniforms ``u`` in (0, 1).

    Law cells: inversion of the distribution function of the stationary law (density by Fourier inversion of its
    characteristic function on a grid of 6001 points over the mean +- 14 standard deviations; the law is supported
    in a bounded interval, and its tails beyond 14 standard deviations carry less than the sampling error).
    Closed cells: the Gauss rule with ``n`` nodes from the exact moments :math:`m_k = \sum_{j<k}\binom kj
    \mathbb E[A^jB^{k-j}]m_j/(1-\mathbb E[A^k])` of :math:`s_t = As_{t-1}+B`, exact for the polynomial coefficients
    (degree up to ``2n - 1`` in :math:`s`; ``nodes`` gives ``n`` instead, e.g. for a density, which needs the law
    rather than a few moments), sampled by inverting its step distribution function."""
    if st.kind == "law":
        law, _ = stationary_law(st, mom)
        sd = math.sqrt(max(law.m2 - law.m1 ** 2, 0.0))
        if sd == 0:
            return lambda u: np.full(u.shape, law.m1)
        x = np.linspace(law.m1 - 14 * sd, law.m1 + 14 * sd, 6001)
        p = np.clip(law.density(x), 0.0, None)
        cdf = np.concatenate([[0.0], np.cumsum((p[1:] + p[:-1]) / 2 * np.diff(x))])
        if not cdf[-1] > 0.999:
            raise MftrnnError(f"cell {st.cell.name!r}: the law of {st.carried} is not resolved for sampling "
                              f"(mass {cdf[-1]:.6f} within 14 standard deviations)")
        cdf /= cdf[-1]
        return lambda u: np.interp(u, cdf, x)
    degree = max([sp.Poly(v, js.carried).degree() for m in (js.e, *js.l.values()) for v in m
                  if v.has(js.carried)] or [0])
    n = max(2, 2 * degree + 1) if nodes is None else int(nodes)
    EA = [_E(st.A ** j, st, mom) for j in range(2 * n + 1)]
    m = [1.0]
    for k in range(1, 2 * n + 1):
        acc = sum(math.comb(k, j) * _E(st.A ** j * st.B ** (k - j), st, mom) * m[j] for j in range(k))
        m.append(acc / (1.0 - EA[k]))
    nodes, weights = _gauss_rule(np.array(m), n)
    cdf = np.cumsum(weights) / np.sum(weights)
    return lambda u: nodes[np.minimum(np.searchsorted(cdf, u, side="right"), n - 1)]


def _unit_samples(js: JacobianStructure, st, mom: dict, n: int, rng: np.random.Generator, carried) -> dict:
    values = {}
    for sym in js.args:
        if sym == js.carried:
            values[sym] = carried((np.arange(n) + rng.random(n)) / n)[rng.permutation(n)]  # stratified
        else:
            mu, q = mom[sym]
            values[sym] = mu + math.sqrt(q) * rng.standard_normal(n)
    return values


def _step_terms(js: JacobianStructure, values: dict, n: int, s: np.ndarray, kappa: float) -> tuple:
    """(m1, m2) of one step from the unit samples (the formulas of the module docstring), and for one state with
    ``r = 1`` the moments ``E[a^2], E[a^4], Var(a^2 + sum_k s_k b_k^2)`` of :func:`_independent_relative_variance`
    (NaN otherwise)."""
    return _terms_from_blocks(*js.evaluate(values, n), s, kappa)


def _terms_from_blocks(e: np.ndarray, l: np.ndarray, r: np.ndarray, s: np.ndarray, kappa: float) -> tuple:
    """:func:`_step_terms` from the unit blocks ``e (S, S, n)``, ``l (K, S, n)``, ``r (K, S, n)``."""
    S = e.shape[0]
    EEt = np.einsum("imn,jmn->ijn", e, e)
    EtE = np.einsum("min,mjn->ijn", e, e)
    tr1 = np.einsum("iin->n", EEt).mean()
    tr2 = np.einsum("ijn,ijn->n", EEt, EEt).mean()
    l2 = np.einsum("kin,kin->kn", l, l).mean(-1)
    r2 = np.einsum("kin,kin->kn", r, r).mean(-1)
    lEEl = np.einsum("kin,ijn,kjn->kn", l, EEt, l).mean(-1)
    rEEr = np.einsum("kin,ijn,kjn->kn", r, EtE, r).mean(-1)
    ll = (np.einsum("ain,bin->abn", l, l) ** 2).mean(-1)
    rr = (np.einsum("ain,bin->abn", r, r) ** 2).mean(-1)
    m1 = (tr1 + s @ (l2 * r2)) / S
    if S == 1 and np.all(r == 1.0):
        # J = diag(a) + sum_k diag(b_k) W_k: the diagonal moments of the independent-coefficients recursion
        a2 = e[0, 0] ** 2
        diag = a2 + s @ (l[:, 0] ** 2)
        extra = (float(a2.mean()), float((a2 ** 2).mean()), float(diag.var()))
    else:
        extra = (np.nan, np.nan, np.nan)
    m2 = (tr2 + 2 * s @ (r2 * lEEl + l2 * rEEr)
          + s @ (np.outer(r2, r2) * ll + np.outer(l2, l2) * rr) @ s
          - (1.0 - kappa) * np.sum(s ** 2 * r2 ** 2 * l2 ** 2)) / S
    return (float(m1), float(m2)) + extra


def _as_fixed_point(fp_or_cell, hyperparameters) -> FixedPoint:
    if isinstance(fp_or_cell, FixedPoint):
        if hyperparameters:
            raise MftrnnError("give a FixedPoint or (cell, **hyperparameters), not both")
        fp = fp_or_cell
    else:
        from .gated import gated_fixed_point
        fp = gated_fixed_point(fp_or_cell, **hyperparameters)
    if np.ndim(fp.Q_star) != 0:
        raise MftrnnError("the gated Jacobian spectrum needs a fixed point at scalar hyperparameters")
    if fp.chi is None:
        raise MftrnnError(f"the fixed point ({fp.approximation}) has no chi; use the exact untied mean field")
    return fp


def gated_step_moments(fp_or_cell, *, orthogonal: bool = False, samples: int = 400_000, seed: int = 0,
                       **hyperparameters) -> dict:
    r"""Moments of the spectrum of :math:`JJ^\top` for one step of a gated cell at its mean-field fixed point.

    ``fp_or_cell``: a :class:`~mftrnn.FixedPoint` of a gated cell (scalar hyperparameters) or a cell name with its
    hyperparameters. Returns ``m1`` (the mean squared singular value), ``m2``, ``variance`` :math:`m_2 - m_1^2`,
    ``relative_variance`` :math:`r = m_2/m_1^2 - 1`, their Monte Carlo standard errors ``m1_error``, ``m2_error``,
    ``relative_variance_error`` (over 10 batches of ``samples / 10`` units), ``states`` and ``orthogonal``. Formulas
    and assumptions: module docstring."""
    return _step_moments(_as_fixed_point(fp_or_cell, hyperparameters), orthogonal, samples, seed)[0]


def _step_moments(fp: FixedPoint, orthogonal: bool, samples: int, seed: int) -> tuple[dict, tuple]:
    """:func:`gated_step_moments`, and ``(b, blocks, s, kappa)`` for the T-step spread: ``b`` the per-batch
    ``(m1, m2, E[a^2], E[a^4], Var(a^2 + sum s b^2))`` (the last three those of
    :func:`_independent_relative_variance`, NaN where they do not apply), ``blocks`` the per-batch
    :class:`_BlockMoments`, ``s`` the weight variances of the fields, ``kappa`` 1 (Gaussian) or 0 (orthogonal)."""
    js = jacobian_structure(fp.cell)
    st = analyse(js.cell)
    try:
        ok = not isinstance(samples, bool) and float(samples) == int(samples)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise DomainError(f"samples must be an integer, got {samples!r}")
    samples = int(samples)
    if samples < 10 * _BATCHES:
        raise DomainError(f"samples must be at least {10 * _BATCHES}, got {samples}")
    mom = _field_moments(fp, st)
    hp = _hyperparameters(fp, js.cell)
    s = np.array([hp[js.gate[k]]["sigma_w"] ** 2 for k in js.l])
    carried = _carried_sampler(st, mom, js) if js.carried is not None else None
    rng = np.random.default_rng(seed)
    n = samples // _BATCHES
    kappa = 0.0 if orthogonal else 1.0
    batches, blocks = [], []
    for _ in range(_BATCHES):
        e, l, r = js.evaluate(_unit_samples(js, st, mom, n, rng, carried), n)
        batches.append(_terms_from_blocks(e, l, r, s, kappa))
        blocks.append(_BlockMoments.from_units(e, l, r))
    b = np.array(batches)
    m1, m2, Ea2, Ea4, dvar = b.mean(0)
    if not m1 > 0:
        raise DomainError(f"cell {js.cell.name!r}: the one-step Jacobian vanishes at this point (mean squared "
                          "singular value 0: a closed memory gate and no recurrent weights); its spectrum is the "
                          "point 0 and has no relative spread")
    err = b.std(0, ddof=1) / math.sqrt(_BATCHES)
    rel = b[:, 1] / b[:, 0] ** 2 - 1.0
    r = float(m2 / m1 ** 2 - 1.0)
    if r < 0:
        # m2 >= m1^2 in exact arithmetic (a variance); below it only by rounding of the sample averages
        if r < -1e-12:
            raise ConvergenceError(f"cell {js.cell.name!r}: the sampled spectral variance is negative ({r:.3g} "
                                   "relative): the unit averages are not resolved")
        r = 0.0
    return {"m1": float(m1), "m2": float(m2), "variance": float(r * m1 ** 2),
            "relative_variance": r,
            "m1_error": float(err[0]), "m2_error": float(err[1]),
            "relative_variance_error": float(rel.std(ddof=1) / math.sqrt(_BATCHES)),
            "states": tuple(str(x) for x in js.states), "orthogonal": bool(orthogonal)}, \
        (b, blocks, s, kappa)


# --------------------------------------------------------------------------- T steps: the mean, exactly
def _log_power_apply(Z: np.ndarray, v: np.ndarray, T: int, sync: int | None = None) -> tuple[np.ndarray, float]:
    r""":math:`Z^Tv` as ``(u, log_scale)`` with :math:`Z^Tv = e^{\text{log\_scale}}u` (binary powering; each factor
    renormalised, so nothing under- or overflows). ``sync = n``: for the matrix of :func:`_block_matrix`, keep its
    two equal diagonal blocks (``[:n, :n]`` and ``[2n:, 2n:]``) bitwise equal in every power, so that rounding
    gives both the same growth."""
    u, log_u = v.astype(float).copy(), 0.0
    P, log_P = Z.astype(float).copy(), 0.0
    t = int(T)
    while t:
        if t & 1:
            u = P @ u
            nu = np.max(np.abs(u))
            if nu == 0:
                return u, -np.inf
            u, log_u = u / nu, log_u + log_P + math.log(nu)
        t >>= 1
        if t:
            P = P @ P
            if sync is not None:
                P[2 * sync:, 2 * sync:] = P[:sync, :sync]
            nP = np.max(np.abs(P))
            if nP == 0:
                P, log_P = P, -np.inf
            else:
                P, log_P = P / nP, 2 * log_P + math.log(nP)
    return u, log_u


def _log_mean_law(st, fp, mom, T: int) -> float:
    law, K = stationary_law(st, mom)
    Z = law_perturbation_map(st, _hyperparameters(fp, st.cell), law, K, mom)
    v0 = np.concatenate([law.phi.real, law.phi.imag, [1.0]])  # w_0 = the law (delta c^2 = 1), D_h = 1
    u, log_u = _log_power_apply(Z, v0, T)
    total = u[0] + u[-1]  # w_T(0) = E[delta c_T^2] (s_0 = 0), plus D_h
    if not total > 0:
        return -np.inf
    return log_u + math.log(total / 2.0)


def gated_product_moments(fp_or_cell, T, *, orthogonal: bool = False, samples: int = 400_000, seed: int = 0,
                          **hyperparameters) -> dict:
    r"""Mean and spread of the spectrum of :math:`JJ^\top` for the ``T``-step Jacobian of a gated cell's whole state
    (the LSTM's pair :math:`(c, h)`) at its mean-field fixed point.

    ``mean`` and ``log_mean``: exact in the untied mean field (module docstring; ``None`` where the value under- or
    overflows a float, the log always finite or :math:`-\infty`). ``relative_variance`` :math:`= T r`, ``variance``
    :math:`= T r\,\text{mean}^2` (``log_variance``): the free-product **approximation** (``approximation`` says so),
    with ``relative_variance_error`` from the Monte Carlo error of :math:`r`. ``relative_variance_independent``: the
    relative variance for coefficients drawn afresh at every step (module docstring, **T steps: the spread**; the
    closed form of :func:`_independent_relative_variance` for one state with :math:`r_k = 1`, else the block
    recursion :func:`_block_relative_variance`; ``None`` where it overflows a float), with
    ``relative_variance_independent_error`` (the spread of its value over the 10 batches of units, divided by
    :math:`\sqrt{10}`; ``None`` where a batch's value overflows) and ``mean_independent`` (that model's mean, which
    ignores the correlation of consecutive steps through the carried state that ``mean`` keeps). Also the one-step
    moments of :func:`gated_step_moments` (``*_step`` keys), ``chi`` and ``xi`` of the fixed point."""
    fp = _as_fixed_point(fp_or_cell, hyperparameters)
    T = _check_T(T)
    js = jacobian_structure(fp.cell)
    st = analyse(js.cell)
    step, extra = _step_moments(fp, orthogonal, samples, seed)
    chi = float(fp.chi)
    if len(js.states) == 1:
        log_mean = T * math.log(chi) if chi > 0 else -np.inf
    elif st.kind == "law":
        log_mean = _log_mean_law(st, fp, _field_moments(fp, st), T)
    else:
        raise MftrnnError(f"cell {js.cell.name!r}: the T-step mean of a closed cell with several states is not "
                          "derived here")
    r = step["relative_variance"]
    b, blocks, s, kappa = extra
    if np.all(np.isfinite(b[:, 2])):
        # one state, J = diag(a) + sum_k diag(b_k) W_k: the closed form
        Ea2, Ea4, dvar = b[:, 2:].mean(0)
        rel_ind = _independent_relative_variance(T, r, step["m1"], Ea2, Ea4, dvar)
        per_batch = [_independent_relative_variance(T, max(m2 / m1 ** 2 - 1.0, 0.0), m1, a2, a4, dv)
                     for m1, m2, a2, a4, dv in b]
        log_mean_ind = T * math.log(step["m1"])
    else:
        rel_ind, log_mean_ind = _block_relative_variance(_BlockMoments.mean(blocks), s, kappa, T)
        per_batch = [_block_relative_variance(bm, s, kappa, T)[0] for bm in blocks]
    rel_ind_err = (float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch)))
                   if rel_ind is not None and None not in per_batch else None)
    log_var = math.log(T * r) + 2 * log_mean if r > 0 and np.isfinite(log_mean) else -np.inf
    return {"T": T, "mean": _float_or_none(log_mean), "log_mean": float(log_mean),
            "relative_variance": T * r, "relative_variance_error": T * step["relative_variance_error"],
            "relative_variance_independent": rel_ind, "relative_variance_independent_error": rel_ind_err,
            "mean_independent": _float_or_none(log_mean_ind),
            "variance": _float_or_none(log_var),
            "log_variance": float(log_var),
            "m1_step": step["m1"], "m1_step_error": step["m1_error"], "variance_step": step["variance"],
            "relative_variance_step": r, "chi": chi, "xi": None if fp.xi is None else float(fp.xi),
            "orthogonal": bool(orthogonal), "states": step["states"],
            "approximation": "mean: exact untied mean field; spread: relative_variance the free product of "
                             "one-step Jacobians (approximation), relative_variance_independent exact for "
                             "coefficients drawn afresh at every step; coefficients by Monte Carlo"}


def _independent_relative_variance(T: int, r: float, m1: float, Ea2: float, Ea4: float, dvar: float):
    r"""Relative variance of the T-step product for one state with coefficients drawn afresh at every step:
    :math:`Tr + \alpha\delta G_T` (:func:`mftrnn.theory.jacobian.product_moments`; :math:`\alpha =
    \operatorname{Var}(a^2)/m_1^2`, :math:`\beta = \mathbb E[a^4]/m_1^2`, :math:`\delta = \operatorname{Var}(a^2 +
    \sum_k s_kb_k^2)/m_1^2`, :math:`G_T = \sum_{t<T}\sum_{j<t}\beta^j`). ``None`` where it overflows."""
    alpha = max(Ea4 - Ea2 ** 2, 0.0) / m1 ** 2
    if alpha == 0 or dvar == 0:
        return T * r
    _, log_G = _log_geometric_sums(np.log(Ea4 / m1 ** 2), T)
    log_rel = np.logaddexp(math.log(T * r) if r > 0 else -np.inf,
                           math.log(alpha) + math.log(dvar / m1 ** 2) + float(log_G))
    return _float_or_none(log_rel)


# --------------------------------------------------------------------------- T steps: the spread, exactly
@dataclass(frozen=True, eq=False)
class _BlockMoments:
    r"""Unit averages of the per-unit blocks that the :math:`T`-step recursion of :func:`_block_map` needs, for
    :math:`S` states and :math:`K` fields (``e`` the :math:`S\times S` direct block, ``l_k``, ``r_k`` its columns
    and rows; indices as in the comments). A plain average over the units of one sample: the recursion evaluated
    with them is exact for coefficients drawn from that sample's empirical law."""

    E2: np.ndarray  # <e[a,x] e[b,y]>                                 [a,b,x,y]
    E4: np.ndarray  # <e[a,x] e[b,y] e[c,z] e[d,w]>                   [a,b,x,y,c,d,z,w]
    LL: np.ndarray  # <l_k[i] l_k[j]>                                 [k,i,j]
    R2: np.ndarray  # <r_k[i] r_k[j]>                                 [k,i,j]
    LE: np.ndarray  # <l_k[i] l_k[j] e[a,x] e[b,y]>                   [k,i,j,a,b,x,y]
    RE: np.ndarray  # <r_k[i] r_k[j] e[a,x] e[b,y]>                   [k,i,j,a,b,x,y]
    H: np.ndarray   # <l_p[i] l_p[j] l_q[k] l_q[l]>                   [p,q,i,j,k,l]
    Rq: np.ndarray  # <r_p[i] r_p[j] r_q[k] r_q[l]>                   [p,q,i,j,k,l]

    @classmethod
    def from_units(cls, e: np.ndarray, l: np.ndarray, r: np.ndarray) -> "_BlockMoments":
        """From unit samples ``e (S, S, n)``, ``l (K, S, n)``, ``r (K, S, n)``."""
        S, K, n = e.shape[0], l.shape[0], e.shape[-1]
        eps = np.einsum("axn,byn->abxyn", e, e).reshape(S ** 4, n)
        ll = np.einsum("kin,kjn->kijn", l, l).reshape(K * S * S, n)
        rr = np.einsum("kin,kjn->kijn", r, r).reshape(K * S * S, n)
        six = (K,) + (S,) * 6
        return cls(E2=eps.mean(-1).reshape((S,) * 4), E4=(eps @ eps.T / n).reshape((S,) * 8),
                   LL=ll.mean(-1).reshape(K, S, S), R2=rr.mean(-1).reshape(K, S, S),
                   LE=(ll @ eps.T / n).reshape(six), RE=(rr @ eps.T / n).reshape(six),
                   H=(ll @ ll.T / n).reshape(K, S, S, K, S, S).transpose(0, 3, 1, 2, 4, 5),
                   Rq=(rr @ rr.T / n).reshape(K, S, S, K, S, S).transpose(0, 3, 1, 2, 4, 5))

    @classmethod
    def mean(cls, parts) -> "_BlockMoments":
        """The average of equal-sized batches (the average over all their units)."""
        parts = list(parts)
        return cls(**{k: np.mean([getattr(p, k) for p in parts], axis=0) for k in cls.__dataclass_fields__})


def _block_map(bm: _BlockMoments, s: np.ndarray, kappa: float, PP: np.ndarray, Psi: np.ndarray, M: np.ndarray):
    r"""One step :math:`X\to JXJ^\top` of the pair moments ``(PP, Psi, M)`` (module docstring, **T steps: the
    spread**), arrays with the four block indices last (any leading batch axes):
    ``PP[i,j,k,l]`` :math:`=\Phi_{ij}\Phi_{kl}`, ``Psi[i,j,k,l]`` :math:`=\langle D_{ij}D_{kl}\rangle`,
    ``M[a,b,c,d]`` :math:`=\frac1N\sum_{uv}X_{uv,bc}X_{uv,ad}`, laid out so that
    :math:`F(P,Q) = \sum P_{ab}Q_{cd}M_{abcd}` and :math:`\mathcal F(p, q)` contracts :math:`p` with the first
    pair of indices: then the map of ``M`` on itself is :math:`A\otimes A`, exactly that of ``PP``
    (:math:`\Phi' = A\Phi`), which :func:`_block_relative_variance` uses. Linear in the three."""
    ein = functools.partial(np.einsum, optimize=True)
    Psi_c = np.moveaxis(Psi, -2, -4)  # Psi_c[x,y,z,w] = <D[y,z] D[x,w]>: the u = v terms of M
    Mo = M - Psi_c                    # the pairs of different units
    tau_k = ein("kxy,...uvxy->...kuv", bm.R2, PP)                 # tau_k Phi[u,v], tau_k = tr(<r_k r_k^T> Phi)
    tau_pq = ein("pxy,qzw,...xyzw->...pq", bm.R2, bm.R2, PP)      # tau_p tau_q
    sLL = s[:, None, None] * bm.LL
    # F'(P, Q) = sum_{abcd} P[a,b] Q[c,d] M'[a,b,c,d]; Fn(p, q) = <p>[x,y] <q>[z,w] Mo[x,y,z,w] + <p q> Psi_c
    C = ein("abxy,cdzw,...xyzw->...abcd", bm.E2, bm.E2, Mo) + ein("abxycdzw,...xyzw->...abcd", bm.E4, Psi_c)
    g1 = ein("kxy,cdzw,...xyzw->...kcd", bm.R2, bm.E2, Mo) + ein("kxycdzw,...xyzw->...kcd", bm.RE, Psi_c)
    g2 = ein("abxy,kzw,...xyzw->...kab", bm.E2, bm.R2, Mo) + ein("kzwabxy,...xyzw->...kab", bm.RE, Psi_c)
    C += ein("kab,...kcd->...abcd", sLL, g1) + ein("...kab,kcd->...abcd", g2, sLL)        # W pairs (14), (32)
    C += (ein("k,...kuv,kcbdauv->...abcd", s, tau_k, bm.LE)
          + ein("k,...kuv,kadbcuv->...abcd", s, tau_k, bm.LE))                           # W pairs (12), (34)
    f = ein("pxy,qzw,...xyzw->...pq", bm.R2, bm.R2, Mo) + ein("pqxyzw,...xyzw->...pq", bm.Rq, Psi_c)
    C += ein("p,q,...pq,pqcbda->...abcd", s, s, tau_pq, bm.H)                           # (12)(34)
    C += ein("...pq,pab,qcd->...abcd", f, sLL, sLL)                                     # (14)(23)
    C -= (1.0 - kappa) * ein("...pp,pab,pcd->...abcd", tau_pq, sLL, sLL)                # Haar: cumulant -1
    Psi_new = (ein("ijxyklzw,...xyzw->...ijkl", bm.E4, Psi)
               + ein("p,puv,pklijxy,...xyuv->...ijkl", s, bm.R2, bm.LE, PP)
               + ein("p,puv,pijklxy,...xyuv->...ijkl", s, bm.R2, bm.LE, PP)
               + ein("p,q,...pq,pqijkl->...ijkl", s, s, tau_pq, bm.H))
    A = _mean_map(bm, s)
    PP_new = ein("ijxy,klzw,...xyzw->...ijkl", A, A, PP)
    return PP_new, Psi_new, C


def _mean_map(bm: _BlockMoments, s: np.ndarray) -> np.ndarray:
    r""":math:`A` with :math:`\Phi'_{ij} = A_{ijxy}\Phi_{xy}`: :math:`\langle e\Phi e^\top\rangle +
    \sum_k s_k\operatorname{tr}(\langle r_kr_k^\top\rangle\Phi)\langle l_kl_k^\top\rangle`."""
    return bm.E2 + np.einsum("k,kij,kxy->ijxy", s, bm.LL, bm.R2)


def _block_matrix(bm: _BlockMoments, s: np.ndarray, kappa: float, exact_diagonal: bool = True) -> np.ndarray:
    r"""The matrix of :func:`_block_map` on the flattened ``(PP, Psi, M)`` (size :math:`3S^4`, lower block
    triangular), by applying it to the unit vectors all at once. With ``exact_diagonal`` its ``PP`` and ``M``
    diagonal blocks are both set to the one array :math:`A\otimes A` (equal in exact arithmetic; as sums they differ
    by rounding, and a mismatch of the two growth rates would be amplified :math:`T` times)."""
    S = bm.E2.shape[0]
    n = S ** 4
    basis = np.eye(3 * n).reshape(3 * n, 3, *(S,) * 4)
    out = _block_map(bm, s, kappa, basis[:, 0], basis[:, 1], basis[:, 2])
    Z = np.concatenate([o.reshape(3 * n, n) for o in out], axis=1).T
    if exact_diagonal:
        A = _mean_map(bm, s).reshape(S * S, S * S)
        Z[:n, :n] = Z[2 * n:, 2 * n:] = np.kron(A, A)
    return Z


def _block_relative_variance(bm: _BlockMoments, s: np.ndarray, kappa: float, T: int) -> tuple:
    r"""``(relative_variance, log_mean)`` of the :math:`T`-step product for coefficients drawn afresh at every step
    (module docstring, **T steps**): :math:`v_T = Z^Tv_0` for the matrix :math:`Z` of :func:`_block_map` from
    :math:`X_0 = I` (:math:`\Phi = I`, :math:`\Psi = M = I\otimes I`), by binary powering in log scale;
    :math:`m_1 = \operatorname{tr}\Phi_T/S`, :math:`m_2 = \sum_{ac}M_{T,acac}/S`, relative variance
    :math:`m_2/m_1^2 - 1` (``None`` where it overflows a float). Rounding: for one state it agrees with the closed
    form :func:`_independent_relative_variance` to a few 1e-15 relative up to :math:`T = 2^{53}` (tested)."""
    S = bm.E2.shape[0]
    n = S ** 4
    I2 = np.einsum("ij,kl->ijkl", np.eye(S), np.eye(S))
    v0 = np.concatenate([I2.ravel(), I2.ravel(), I2.transpose(0, 2, 1, 3).ravel()])  # X_0 = I: M[a,b,c,d] = d_bc d_ad
    A = _mean_map(bm, s).reshape(S * S, S * S)
    phi, log_phi = _log_power_apply(A, np.eye(S).ravel(), T)
    trace = float(np.trace(phi.reshape(S, S)))
    if not (trace > 0 and np.isfinite(log_phi)):
        raise DomainError("the T-step Jacobian vanishes (mean squared singular value 0); its spectrum is the point 0 "
                          "and has no relative spread")
    log_mean = log_phi + math.log(trace / S)
    u, log_u = _log_power_apply(_block_matrix(bm, s, kappa), v0, T, sync=n)
    pp = float(np.einsum("aacc->", u[:n].reshape((S,) * 4)))  # (S m1)^2, in the scale of u
    mm = float(np.einsum("aacc->", u[2 * n:].reshape((S,) * 4)))  # S m2 = sum_ac M[a,a,c,c]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        ratio = np.float64(S * mm) / pp  # pp = 0 here (underflow against mm): the relative variance overflows
    if not np.isfinite(ratio):
        return None, log_mean
    rel = ratio - 1.0
    if rel < 0:
        # a variance: negative only by rounding of nearly equal m2 and m1^2
        if rel < -1e-9:
            raise ConvergenceError(f"the T-step spectral variance came out negative ({rel:.3g} relative)")
        rel = 0.0
    return float(rel), log_mean


def _float_or_none(log_value):
    v = _linear(log_value)
    return None if v is None or np.isnan(v) else float(v)


def _check_T(T) -> int:
    try:
        ok = float(T) == int(T) and 1 <= int(T) <= MAX_T
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or isinstance(T, bool):
        raise DomainError(f"T must be an integer in [1, {MAX_T}], got {T!r}")
    return int(T)

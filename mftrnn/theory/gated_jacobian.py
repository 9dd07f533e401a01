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
powering (cost :math:`O(\log T)`). The spread is an **approximation**: successive factors are treated as free, so
the relative variance of the product is :math:`T r` with :math:`r = m_2/m_1^2 - 1` of one step (as for the vanilla
RNN and the minimalRNN in :func:`mftrnn.theory.jacobian.product_moments`). It is not exact: with tied weights the
factors share their matrices, and their diagonal parts (the forget gate) are classically, not freely, independent;
``tests/test_gated_jacobian.py`` measures how far it is from explicit Jacobians of ``nn.LSTM`` and ``nn.GRU``.

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
    ``r = 1`` the moments ``E[a^2], E[a^4], Var(a^2 + sum_k s_k b_k^2)`` of :func:`_independent_log_relative_variance`
    (NaN otherwise)."""
    e, l, r = js.evaluate(values, n)
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
    """:func:`gated_step_moments`, and the diagonal moments ``(E[a^2], E[a^4], Var(a^2 + sum s b^2))`` of
    :func:`_independent_relative_variance` (NaN where they do not apply)."""
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
    batches = []
    for _ in range(_BATCHES):
        values = _unit_samples(js, st, mom, n, rng, carried)
        batches.append(_step_terms(js, values, n, s, 0.0 if orthogonal else 1.0))
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
        (float(Ea2), float(Ea4), float(dvar))


# --------------------------------------------------------------------------- T steps: the mean, exactly
def _log_power_apply(Z: np.ndarray, v: np.ndarray, T: int) -> tuple[np.ndarray, float]:
    r""":math:`Z^Tv` as ``(u, log_scale)`` with :math:`Z^Tv = e^{\text{log\_scale}}u` (binary powering; each factor
    renormalised, so nothing under- or overflows)."""
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
    with ``relative_variance_error`` from the Monte Carlo error of :math:`r`. Also the one-step moments of
    :func:`gated_step_moments` (``*_step`` keys), ``chi`` and ``xi`` of the fixed point."""
    fp = _as_fixed_point(fp_or_cell, hyperparameters)
    T = _check_T(T)
    js = jacobian_structure(fp.cell)
    st = analyse(js.cell)
    step, (Ea2, Ea4, dvar) = _step_moments(fp, orthogonal, samples, seed)
    chi = float(fp.chi)
    if len(js.states) == 1:
        log_mean = T * math.log(chi) if chi > 0 else -np.inf
    elif st.kind == "law":
        log_mean = _log_mean_law(st, fp, _field_moments(fp, st), T)
    else:
        raise MftrnnError(f"cell {js.cell.name!r}: the T-step mean of a closed cell with several states is not "
                          "derived here")
    r = step["relative_variance"]
    rel_ind = None
    if len(js.states) == 1 and np.isfinite(Ea2):
        rel_ind = _independent_relative_variance(T, r, step["m1"], Ea2, Ea4, dvar)
    log_var = math.log(T * r) + 2 * log_mean if r > 0 and np.isfinite(log_mean) else -np.inf
    return {"T": T, "mean": _float_or_none(log_mean), "log_mean": float(log_mean),
            "relative_variance": T * r, "relative_variance_error": T * step["relative_variance_error"],
            "relative_variance_independent": rel_ind,
            "variance": _float_or_none(log_var),
            "log_variance": float(log_var),
            "m1_step": step["m1"], "m1_step_error": step["m1_error"], "variance_step": step["variance"],
            "relative_variance_step": r, "chi": chi, "xi": None if fp.xi is None else float(fp.xi),
            "orthogonal": bool(orthogonal), "states": step["states"],
            "approximation": "mean: exact untied mean field; spread: free product of one-step Jacobians "
                             "(approximation), coefficients by Monte Carlo"}


def _independent_relative_variance(T: int, r: float, m1: float, Ea2: float, Ea4: float, dvar: float):
    r"""Relative variance of the T-step product for one state with coefficients drawn afresh at every step:
    :math:`Tr + \alpha\delta G_T` (:func:`mftrnn.theory.jacobian.product_moments`; :math:`\alpha =
    \operatorname{Var}(a^2)/m_1^2`, :math:`\beta = \mathbb E[a^4]/m_1^2`, :math:`\delta = \operatorname{Var}(a^2 +
    \sum_k s_kb_k^2)/m_1^2`, :math:`G_T = \sum_{t<T}\sum_{j<t}\beta^j`). ``None`` where it overflows."""
    alpha = max(Ea4 - Ea2 ** 2, 0.0) / m1 ** 2
    if alpha == 0 or dvar == 0:
        return T * r
    _, log_G = _log_geometric_sums(np.log(Ea4 / m1 ** 2), T)
    log_rel = np.logaddexp(math.log(T * r) if r > 0 else -np.inf, math.log(alpha) + math.log(dvar / m1 ** 2) + float(log_G))
    return _float_or_none(log_rel)


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

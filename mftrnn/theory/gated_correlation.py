r"""Correlation map of two copies of a gated network (same weights, their own inputs): :math:`C^*`, :math:`\chi_c`.

Two copies :math:`a, b` of one untied network (the weights and biases of every step shared, redrawn at every step)
receive inputs with overlap :math:`\Sigma` (:math:`\mathbb E[x^ax^b] = R\Sigma`; :math:`\Sigma = 0`: independent
inputs, :math:`\Sigma = 1`: identical ones). In the untied mean field (the assumptions of
:mod:`mftrnn.theory.gated`) the pair :math:`(e_k^a, e_k^b)` of every field is bivariate Gaussian, independent of
the other fields' pairs and of the previous states, with common mean :math:`\mu_k`, variances :math:`q_k^a, q_k^b`
(:func:`mftrnn.theory.gated._field_moments` at :math:`Q_a, Q_b`) and covariance

.. math:: q_k^{ab} = \sigma_{w,K}^2\,\mathbb E[\alpha_k^a\alpha_k^b]\,C + \sigma_{v,K}^2 R\,\Sigma + \sigma_{b,K}^2

(terms the field lacks dropped), where the field reads :math:`y_k = \alpha_k(e)\,s` and :math:`C =
\mathbb E[s^as^b]` is the (non-centred) covariance of the read state: :math:`W_K y^a\cdot W_K y^b` averages
:math:`\alpha_k^a\alpha_k^b s^a s^b` over units, and in the untied limit the gate factors are independent of the
state. ``torch.nn.GRU``'s candidate :math:`\tanh(e_{nx} + \sigma(e_r)\,e_{nh})` is two fields, so its argument is
bivariate Gaussian only given :math:`(r^a, r^b)`: :math:`\mathrm{cov} = q_{nx}^{ab} + \sigma(e_r^a)\sigma(e_r^b)\,
\sigma_{w,n}^2 C`; the reset-before GRU's candidate field reads :math:`\sigma(e_r)h`, so there
:math:`q_n^{ab} = \sigma_{w,n}^2\,\mathbb E[\sigma(e_r^a)\sigma(e_r^b)]\,C + \dots` (both read off the cell
description, nothing is GRU-specific).

**Closed cells** (carried state :math:`s_t = A(e)\,s + B(e, x)`, read by the fields): with the fields independent
of the previous state of the same unit,

.. math:: C_t = \mathbb E[A^aA^b]\,C + \mathbb E[A^aB^b]\,M_a + \mathbb E[B^aA^b]\,M_b + \mathbb E[B^aB^b],

exact for the untied network as :math:`N\to\infty` (a memoryless cell: :math:`C_t = \mathbb E[B^aB^b]`). At the
stationary point :math:`Q_a = Q_b = Q^*`, :math:`M_a = M_b = M^*`; :math:`C^*` is the fixed point of this map for
independent inputs, the one reached from identical states (:math:`C_0 = Q^*`: the largest root below
:math:`Q^*`), and :math:`\chi_c = dC_t/dC_{t-1}` there. A readout :math:`h_t = G(e)\,s_t` (identity) has
:math:`C_h = \mathbb E[G^aG^b]\,C_s`; a tanh readout (the LSTM whose gates read :math:`c`) needs the joint law of
:math:`(s^a, s^b)`, which is not Gaussian: its output covariance is not given (``None``), only the carried
state's (``Cc_star``) and the rate :math:`\chi_c`, which the whole state shares.

Identity check: at identical inputs (:math:`\Sigma = 1`) on the diagonal :math:`C = Q^*` the same derivative is
:math:`\chi` of :mod:`mftrnn.theory.gated` (a perturbation :math:`D = Q_a + Q_b - 2C` at fixed
:math:`Q_a = Q_b`); it is computed there from other integrands (derivative fields), so agreement tests both.

Numerics. :class:`PairIntegral` evaluates :math:`\mathbb E[F(e^a)\,G(e^b)]` like
:class:`~mftrnn.theory.field_integrals.FieldIntegral`: by independence over groups of fields, each field pair on a
tensor grid of the strip-aware trapezoidal rule (:mod:`mftrnn.theory.quadrature`, target 1e-12) in
:math:`e^a = \mu + s_a\xi_1`, :math:`e^b = \mu + s_b(\rho\,\xi_1 + \sqrt{1-\rho^2}\,\xi_2)`, and an argument
linear in fields that occur nowhere else (the GRU candidate) integrated as a conditionally bivariate Gaussian (for
the GRU: 4 dimensions instead of 6). Node counts depend on the variances only, so the result is a smooth
(analytic) function of :math:`C` (the rule's nodes are symmetric: it depends on :math:`1-\rho^2`, not on
:math:`\sqrt{1-\rho^2}`), also up to :math:`\rho = 1`. :math:`\chi_c` is its derivative by finite differences of
step :math:`h = 10^{-3}\max(Q^*, 10^{-8})`: central differences Richardson-extrapolated (error
:math:`O(h^4)`), or, within :math:`2h` of :math:`Q^*`, the one-sided five-point stencil (error
:math:`h^4 f^{(5)}/5`); with the map accurate to ~1e-12 the rounding part is ~1e-12/h, together ~1e-9 (measured
against the identity above: see ``tests/test_gated_correlation.py``).

**Law cells** (``torch.nn.LSTM``): see :func:`law_correlation`.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import sympy as sp
from scipy.optimize import brentq

from ..errors import ConvergenceError, DomainError, MftrnnError
from .numeric import NUMPY_MODULES, strip_half_width
from .field_integrals import _groups
from .quadrature import TOL, _rule, _windows, nodes_for

__all__ = ["PairIntegral", "pair_field_moments", "covariance_map", "closed_correlation", "law_correlation",
           "iterate_covariance", "correlation_point"]

_EPS_A = sp.Symbol("epsilon_pair_a", real=True)
_EPS_B = sp.Symbol("epsilon_pair_b", real=True)
_MAX_POINTS = 1 << 20
#: half-width of the standardised window (Gaussian mass beyond 8.5 is 2e-17, below the 1e-12 target; the
#: quadrature module's 11 serves its tilted single integrals, widened here by the same rule where the mean is large)
_WINDOW = 8.5  # grid points per block of a group's evaluation (memory bound)


@functools.lru_cache(maxsize=None)
def copies(sym: sp.Symbol) -> tuple[sp.Symbol, sp.Symbol]:
    """The symbols of ``sym`` in copy a and in copy b."""
    return sp.Symbol(f"{sym.name}__a", real=True), sp.Symbol(f"{sym.name}__b", real=True)


def _to_copy(expr, fields, k: int):
    return sp.sympify(expr).xreplace({f: copies(f)[k] for f in fields})


# --------------------------------------------------------------------------- pair expectations
class _PairGroup:
    r"""Expectation of one product of factors over a set of fields (both copies), independent of other groups."""

    def __init__(self, body, base: list):
        self.body = body
        self.base = base
        present = {f: tuple(k for k in (0, 1) if copies(f)[k] in body.free_symbols) for f in base}
        self.present = present
        # linear arguments: per copy, one function argument linear in fields of that copy that occur nowhere else
        lin = {}
        for k in (0, 1):
            syms = {copies(f)[k]: f for f in base if k in present[f]}
            args = {a for fn in body.atoms(sp.Function) for a in fn.args
                    if a.free_symbols & set(syms) and not a.is_Symbol}
            for L in sorted(args, key=lambda a: (-len(a.free_symbols & set(syms)), sp.default_sort_key(a))):
                inner = [f for s, f in syms.items() if s in L.free_symbols and sp.diff(L, s, 2) == 0
                         and s not in sp.diff(L, s).free_symbols and not body.xreplace({L: _EPS_A}).has(s)]
                if inner:
                    lin[k] = (L, inner)
                    break
        inner = [f for f in base if all(k in lin and f in lin[k][1] for k in present[f])]
        self.inner = inner
        self.lin = {}
        for k, (L, _) in lin.items():
            fs = [f for f in inner if k in present[f]]
            if fs:
                self.lin[k] = L
        # fields inner for a copy without a linear argument of that copy would be lost: make them outer
        inner = [f for f in inner if all(k in self.lin for k in present[f])]
        self.inner = inner
        self.outer = [f for f in base if f not in inner]
        self.axes = [(f, k) for f in self.outer for k in present[f]]  # outer variables (field, copy)
        if len(self.axes) > 4:
            raise MftrnnError(f"pair expectation over {len(self.axes)} coupled variables is not supported: {body}")
        outer_syms = [copies(f)[k] for f, k in self.axes]
        rep = {L: (_EPS_A if k == 0 else _EPS_B) for k, L in self.lin.items()}
        self.f = sp.lambdify([*outer_syms, _EPS_A, _EPS_B], body.xreplace(rep), modules=NUMPY_MODULES)
        self.coef = {}
        self.L0 = {}
        for k, L in self.lin.items():
            cs = {f: sp.diff(L, copies(f)[k]) for f in inner if k in present[f]}
            self.coef[k] = {f: sp.lambdify(outer_syms, c, modules=NUMPY_MODULES) for f, c in cs.items()}
            self.L0[k] = sp.lambdify(outer_syms, L.xreplace({copies(f)[k]: 0 for f in cs}), modules=NUMPY_MODULES)
        # strips: the outer variables see the functions outside the linear arguments and the conditional moments
        # (a Gaussian average over a linear argument is entire in its mean); the inner ones the functions of it
        ib = body.xreplace(rep)
        osyms = set(outer_syms)
        outer_fns = [f for f in ib.atoms(sp.Function) if f.free_symbols & osyms]
        for k, L in self.lin.items():
            outer_fns += list(L.atoms(sp.Function))
        self.d = min([strip_half_width(f) for f in outer_fns] + [np.inf])
        self.d_inner = min([strip_half_width(f) for f in ib.atoms(sp.Function)
                            if f.free_symbols & {_EPS_A, _EPS_B}] + [np.inf])

    @staticmethod
    def _axis(mu, s, d):
        if s <= 0:
            return np.array([0.0]), np.array([1.0])
        w = float(_windows(np.array([abs(mu)]), np.array([s]), TOL, _WINDOW)[0])
        return _rule(int(nodes_for(np.array([s]), d, window=w)[0]), w)

    def __call__(self, mom_a, mom_b, cov):
        moms = (mom_a, mom_b)
        # outer grid: per field, xi1 (and xi2 when both copies are present)
        xs, ws, maps = [], [], []  # maps: (field, copy) -> function of the axis arrays
        for f in self.outer:
            ks = self.present[f]
            mu = moms[ks[0]][f][0]
            sds = [math.sqrt(max(moms[k][f][1], 0.0)) for k in ks]
            x, w = self._axis(mu, max(sds), self.d)
            xs += [x] * len(ks)
            ws += [w] * len(ks)
        grids = np.meshgrid(*xs, indexing="ij") if xs else []
        vals, j = [], 0
        for f in self.outer:
            ks = self.present[f]
            mu = moms[ks[0]][f][0]
            sds = [math.sqrt(max(moms[k][f][1], 0.0)) for k in ks]
            if len(ks) == 1:
                vals.append(mu + sds[0] * grids[j])
                j += 1
            else:
                sa, sb = sds
                rho = float(np.clip(cov[f] / (sa * sb), -1, 1)) if sa * sb > 0 else 0.0
                vals.append(mu + sa * grids[j])
                vals.append(mu + sb * (rho * grids[j] + math.sqrt(max(1 - rho * rho, 0.0)) * grids[j + 1]))
                j += 2
        W = functools.reduce(np.multiply.outer, ws) if ws else np.array(1.0)
        vals = [v.ravel() for v in vals]
        W = np.asarray(W).ravel()
        if not self.lin:
            return float(np.sum(np.broadcast_to(self.f(*vals, 0.0, 0.0), W.shape) * W))
        # conditional moments of the linear arguments given the outer variables
        m, v, c = {}, {}, np.zeros(W.shape)
        co = {}
        for k in self.lin:
            m[k] = np.broadcast_to(self.L0[k](*vals), W.shape).astype(float)
            v[k] = np.zeros(W.shape)
            co[k] = {}
            for f, fn in self.coef[k].items():
                a = np.broadcast_to(fn(*vals), W.shape)
                co[k][f] = a
                m[k] = m[k] + a * moms[k][f][0]
                v[k] = v[k] + a * a * moms[k][f][1]
        if len(self.lin) == 2:
            for f in self.inner:
                if f in co[0] and f in co[1]:
                    c = c + co[0][f] * co[1][f] * cov[f]
        ks = sorted(self.lin)
        axes = []
        for k in ks:
            s = float(np.sqrt(v[k].max()))
            axes.append(self._axis(float(np.abs(m[k]).max()), s, self.d_inner))
        total = 0.0
        n_in = int(np.prod([len(a[0]) for a in axes]))
        step = max(1, _MAX_POINTS // n_in)
        for start in range(0, W.size, step):
            sl = slice(start, start + step)
            vv = [x[sl] for x in vals]
            if len(ks) == 1:
                (k,) = ks
                xi, wi = axes[0]
                eps = m[k][sl, None] + np.sqrt(v[k][sl])[:, None] * xi[None, :]
                args = [x[:, None] for x in vv]
                ea, eb = (eps, 0.0) if k == 0 else (0.0, eps)
                out = self.f(*args, ea, eb)
                total += float(np.sum(np.broadcast_to(out, eps.shape) * wi[None, :] * W[sl, None]))
            else:
                (x1, w1), (x2, w2) = axes
                sa, sb = np.sqrt(v[0][sl]), np.sqrt(v[1][sl])
                den = sa * sb
                rho = np.clip(np.divide(c[sl], den, out=np.zeros_like(den), where=den > 0), -1, 1)
                sc = np.sqrt(np.maximum(1 - rho * rho, 0.0))
                # both inner axes on the finer of the two rules (the same nodes: symmetric in the copies)
                xi, wi = (x1, w1) if len(x1) >= len(x2) else (x2, w2)
                ea = m[0][sl, None, None] + sa[:, None, None] * xi[None, :, None]
                eb = m[1][sl, None, None] + sb[:, None, None] * (rho[:, None, None] * xi[None, :, None]
                                                                 + sc[:, None, None] * xi[None, None, :])
                args = [x[:, None, None] for x in vv]
                out = np.broadcast_to(self.f(*args, ea, eb), eb.shape)
                total += float(((out @ wi) @ wi) @ W[sl])
        return total


def _union_groups(factors, base_of):
    """Group factors by shared base fields (either copy): [(product, sorted base fields)]."""
    groups = _groups(factors, None, base_of)
    return [(g, sorted(gs, key=sp.default_sort_key)) for g, gs in groups]


class PairIntegral:
    r"""``PairIntegral(F, G, fields)(mom_a, mom_b, cov)`` = :math:`\mathbb E[F(e^a)\,G(e^b)]` where, for each field
    ``f`` of ``fields``, :math:`(f^a, f^b)` is bivariate Gaussian with means ``mom_a[f][0]``, ``mom_b[f][0]``,
    variances ``mom_a[f][1]``, ``mom_b[f][1]`` and covariance ``cov[f]``, independent over fields. ``F`` and ``G``
    are SymPy expressions in ``fields`` (``G = None``: :math:`\mathbb E[F(e^a)]`)."""

    def __init__(self, F, G, fields):
        fields = tuple(fields)
        extra = sp.sympify(F).free_symbols | (sp.sympify(G).free_symbols if G is not None else set())
        extra -= set(fields)
        if extra:
            raise MftrnnError(f"pair expectation has symbols {sorted(map(str, extra))} that are not fields")
        base_of = {copies(f)[k]: f for f in fields for k in (0, 1)}
        # sums are split (linearity), products are not expanded: their factors are grouped by shared fields, so
        # that a costly group (the GRU candidate) is integrated once per term, not once per expanded monomial
        fa = sp.Add.make_args(_to_copy(F, fields, 0))
        gb = sp.Add.make_args(_to_copy(G, fields, 1)) if G is not None else (sp.S.One,)
        self.terms = []
        made = {}
        for ta in fa:
            for tb in gb:
                const, dep = (ta * tb).as_independent(*base_of, as_Add=False)
                groups = []
                if dep != 1:
                    for g, gs in _union_groups(sp.Mul.make_args(dep), base_of):
                        if g not in made:
                            made[g] = _PairGroup(g, gs)
                        groups.append(made[g])
                self.terms.append((float(const), groups))

    def __call__(self, mom_a, mom_b, cov) -> float:
        total = 0.0
        seen = {}
        for const, groups in self.terms:
            v = const
            for g in groups:
                if v == 0:
                    break
                if id(g) not in seen:
                    seen[id(g)] = g(mom_a, mom_b, cov)
                v *= seen[id(g)]
            total += v
        return total


@functools.lru_cache(maxsize=None)
def _pair_cached(F, G, fields):
    return PairIntegral(F, G, fields)


def _pair_fields(st):
    return (*st.fields, st.cell.input)


def _E2(F, G, st, mom_a, mom_b, cov) -> float:
    F, G = sp.sympify(F), sp.sympify(G)
    if not F.free_symbols and not G.free_symbols:
        return float(F * G)
    return _pair_cached(F, G, _pair_fields(st))(mom_a, mom_b, cov)


# --------------------------------------------------------------------------- the covariance map (closed cells)
def pair_field_moments(st, hp: dict, R: float, Q_a: float, Q_b: float, C: float, Sigma: float):
    r"""Field moments of the two copies: ``(mom_a, mom_b, cov)``; ``cov[k]`` = :math:`q_k^{ab}` (module docstring),
    fields in order (a field's gate factor may depend on earlier fields), the input a field with covariance
    :math:`R\Sigma`."""
    from .gated import _field_moments
    mom_a = _field_moments(st, hp, R, Q_a)
    mom_b = _field_moments(st, hp, R, Q_b)
    cov = {st.cell.input: float(R) * float(Sigma)}
    for f in st.cell.fields:
        g = hp[f.gate]
        q = 0.0
        if f.reads is not None:
            a = st.alpha[f.symbol]
            aa = 1.0 if a == 1 else _E2(a, a, st, mom_a, mom_b, cov)
            q += g["sigma_w"] ** 2 * aa * C
        if f.input:
            q += g["sigma_v"] ** 2 * R * Sigma
        if f.bias:
            q += g["sigma_b"] ** 2
        cov[f.symbol] = q
    return mom_a, mom_b, cov


def _check_closed(st):
    if st.kind != "closed":
        raise MftrnnError(f"cell {st.cell.name!r}: the covariance map of a law cell needs the joint law of the two "
                          "copies' cell states; see law_correlation")


def covariance_map(st, hp: dict, R: float, C: float, Q_a: float, Q_b: float, M_a: float = 0.0, M_b: float = 0.0,
                   Sigma: float = 0.0) -> float:
    r""":math:`C_t` of the carried (read) state from :math:`C = \mathbb E[s^as^b]`, the copies' second moments and
    means, and the input overlap :math:`\Sigma` (closed cells; module docstring)."""
    _check_closed(st)
    if abs(C) > math.sqrt(Q_a * Q_b) * (1 + 1e-12) + 1e-300:
        raise DomainError(f"|C| = {abs(C)} exceeds sqrt(Q_a Q_b) = {math.sqrt(Q_a * Q_b)}")
    mom_a, mom_b, cov = pair_field_moments(st, hp, R, Q_a, Q_b, C, Sigma)
    if st.carried is None:
        return _E2(st.B, st.B, st, mom_a, mom_b, cov)
    A, B = st.A, st.B
    out = _E2(B, B, st, mom_a, mom_b, cov)
    if A != 0:
        out += _E2(A, A, st, mom_a, mom_b, cov) * C
        if M_a != 0:
            out += _E2(A, B, st, mom_a, mom_b, cov) * M_a
        if M_b != 0:
            out += _E2(B, A, st, mom_a, mom_b, cov) * M_b
    return out


def _slope(f, x, h, upper):
    """Derivative of ``f`` at ``x``: central differences at h and h/2 Richardson-extrapolated where ``x + h`` stays
    at or below ``upper``, else the backward five-point stencil (both O(h^4))."""
    if x + h <= upper:
        d1 = (f(x + h) - f(x - h)) / (2 * h)
        d2 = (f(x + h / 2) - f(x - h / 2)) / h
        return (4 * d2 - d1) / 3
    return (25 * f(x) - 48 * f(x - h) + 36 * f(x - 2 * h) - 16 * f(x - 3 * h) + 3 * f(x - 4 * h)) / (12 * h)


def closed_correlation(st, hp: dict, R: float, Q: float, M: float, Sigma: float = 0.0) -> dict:
    r""":math:`C^*` (carried state) and :math:`\chi_c` of a closed cell at its stationary :math:`(Q^*, M^*)` for input
    overlap :math:`\Sigma` (0: independent inputs). :math:`C^*` is the largest root of :math:`g(C) = C_t(C) - C` in
    :math:`[-Q^*, Q^*]` (the one reached from identical states): :math:`Q^*` itself when the diagonal is a fixed point
    (no input noise reaches the cell, or :math:`\Sigma = 1`) with slope at most 1, else Brent's method after a scan
    down from :math:`Q^*`. Returns ``{"C": C*, "chi_c": slope}``."""
    _check_closed(st)
    if Q <= 0:
        return {"C": 0.0, "chi_c": _chi_c_at_zero(st, hp, R)}
    F = lambda c: covariance_map(st, hp, R, c, Q, Q, M, M, Sigma)
    h = 1e-3 * Q
    g_top = F(Q) - Q
    tol = 1e-11 * Q
    if g_top > tol:
        raise ConvergenceError(f"cell {st.cell.name!r}: the covariance map exceeds the diagonal at C = Q* "
                               f"(C_t - C = {g_top:.3g}): (Q*, M*) is not a stationary point")
    top = Q
    if abs(g_top) <= tol:  # the diagonal is a fixed point (no input noise reaches the cell, or Sigma = 1)
        if _slope(F, Q, h, Q) <= 1.0:
            return {"C": float(Q), "chi_c": float(_slope(F, Q, h, Q))}
        top = Q * (1 - 1e-6)  # unstable diagonal: the root below it
    # probes down from the top (geometric in the distance, to -Q*), then Brent's method on the first bracket
    prev = top
    for x in top - (top + Q) * np.geomspace(1e-6, 1.0, 9):
        gx = F(x) - x
        if gx >= 0:
            Cs = x if gx == 0 else brentq(lambda c: F(c) - c, x, prev, xtol=1e-14 * Q, rtol=1e-15, maxiter=200)
            break
        prev = x
    else:
        raise ConvergenceError(f"cell {st.cell.name!r}: no fixed point of the covariance map in [-Q*, Q*]")
    return {"C": float(Cs), "chi_c": float(_slope(F, Cs, h, Q))}


def _chi_c_at_zero(st, hp, R) -> float:
    r""":math:`Q^* = 0` (no input and no bias noise: the state stays at 0): :math:`C^* = 0` and the covariance map's
    slope there is that of the variance map, the linear part :math:`\mathbb E[A^2] + ` the field terms, i.e.
    :math:`\chi`; taken from the variance map's one-sided slope (the pair is then identical)."""
    from .gated import _closed_map
    h = 1e-6
    return float(2 * _closed_map(st, hp, R, h / 2) / (h / 2) - _closed_map(st, hp, R, h) / h)


def readout_correlation(st, hp: dict, R: float, Q: float, C: float, Sigma: float = 0.0):
    r"""Covariance of the output state: :math:`C` itself when the output is the carried state, :math:`\mathbb
    E[G^aG^b]\,C` for an identity readout :math:`h = G(e)\,s_t` whose gates are independent of :math:`s_t`, and
    ``None`` for a tanh readout (it needs the non-Gaussian joint law of :math:`(s^a, s^b)`)."""
    if st.carried is None or st.output == st.carried_new:
        return C
    new, G, g = next(r for r in st.readouts if r[0] == st.output)
    shared = G.free_symbols & (st.A.free_symbols | st.B.free_symbols)
    if g != "identity" or shared:
        return None
    mom_a, mom_b, cov = pair_field_moments(st, hp, R, Q, Q, C, Sigma)  # the fields of the step that produced s_t
    return _E2(G, G, st, mom_a, mom_b, cov) * C


def iterate_covariance(st, hp: dict, R: float, T: int, C0: float, Q: float, M: float, Sigma: float = 0.0):
    r"""``C_t`` for ``t = 0..T`` from ``C0`` at the stationary ``(Q, M)`` of both copies (closed cells): the
    mean-field prediction for two copies started in the stationary state with overlap ``C0`` (``C0 = Q``:
    identical states)."""
    out = [float(C0)]
    for _ in range(int(T)):
        out.append(covariance_map(st, hp, R, out[-1], Q, Q, M, M, Sigma))
    return np.array(out)


# --------------------------------------------------------------------------- law cells (torch.nn.LSTM)
#: what a law cell's correlation quantities are (FixedPoint.approximation mentions it)
LAW_CLOSURE = ("C_star, c_star, Cc_star, chi_c, xi_c: normalised Gaussian closure of the two copies' cell states "
               "(approximation; see mftrnn.theory.gated_correlation.law_correlation)")
_GH = np.polynomial.hermite_e.hermegauss(64)


def gaussian_tanh_pair(M: float, V: float, Cov: float) -> float:
    r""":math:`\mathbb E[\tanh c^a\tanh c^b]` for :math:`(c^a, c^b)` bivariate Gaussian with common mean ``M``,
    variance ``V`` and covariance ``Cov`` (64-point Gauss-Hermite in each direction, Cholesky form; a smooth
    function of ``Cov``)."""
    x, w = _GH
    w = w / w.sum()
    if V <= 0:
        return math.tanh(M) ** 2
    rho = float(np.clip(Cov / V, -1.0, 1.0))
    s = math.sqrt(V)
    ta = np.tanh(M + s * x)
    tb = np.tanh(M + s * (rho * x[:, None] + math.sqrt(max(1 - rho * rho, 0.0)) * x[None, :]))
    return float((w * ta) @ (tb @ w))


def _law_pair_map(st, hp, R, fx, Cc, Ch, Sigma=0.0):
    r"""One step of the closed pair map of a law cell: :math:`(C_c, C_h)\mapsto(C_c', C_h')` (see
    :func:`law_correlation`); ``fx`` holds the fixed point's exact pieces."""
    mom_a, mom_b, cov = pair_field_moments(st, hp, R, fx["Q"], fx["Q"], Ch, Sigma)
    A, B = st.A, st.B
    M = fx["m1"]
    Cc_new = (_E2(A, A, st, mom_a, mom_b, cov) * Cc + (_E2(A, B, st, mom_a, mom_b, cov)
              + _E2(B, A, st, mom_a, mom_b, cov)) * M + _E2(B, B, st, mom_a, mom_b, cov))
    K = gaussian_tanh_pair(M, fx["var"], Cc_new - M * M) / fx["K_diag"]
    Ch_new = _E2(fx["G"], fx["G"], st, mom_a, mom_b, cov) * fx["T2"] * K
    return Cc_new, Ch_new


def law_correlation(st, hp: dict, R: float, p: dict, Sigma: float = 0.0) -> dict:
    r""":math:`C^*` and :math:`\chi_c` of a law cell (``torch.nn.LSTM``: gates read :math:`h = o\tanh c`) under a
    **closure** (an approximation, labelled as one in :attr:`FixedPoint.approximation`).

    Exact parts: the fields' pair covariance :math:`q_k^{ab} = \sigma_{w,K}^2 C_h + \sigma_{b,K}^2` (+
    :math:`\sigma_{v,K}^2R\Sigma`) and the cell states' cross moment, which closes on itself,
    :math:`C_c' = \mathbb E[A^aA^b]C_c + (\mathbb E[A^aB^b] + \mathbb E[B^aA^b])M + \mathbb E[B^aB^b]`.
    Not closed: :math:`C_h' = \mathbb E[G^aG^b]\,\mathbb E[\tanh c^a\tanh c^b]`, which needs the joint law of
    :math:`(c^a, c^b)`, the stationary law of a two-dimensional random affine recursion with correlated
    coefficients. Computing it (a 2-D characteristic function on a tensor Chebyshev grid, :math:`(M+1)^2` unknowns
    with :math:`M` up to 320 for the 1-D law, i.e. dense systems of :math:`10^5` unknowns per evaluation of the map,
    inside a root search) costs too much here. The closure: the *correlation* of the pair is taken from a bivariate
    Gaussian with the exact mean :math:`M`, variance :math:`Q_c - M^2` and covariance :math:`C_c - M^2`, normalised
    so that identical copies are exact:

    .. math:: \mathbb E[\tanh c^a\tanh c^b] \approx \mathbb E_\pi[\tanh^2 c]\,
              \frac{K_G(C_c)}{K_G(Q_c)},\qquad K_G(C) = \mathbb E_{\mathcal N}[\tanh c^a\tanh c^b].

    :math:`C^*` solves the two maps at their fixed point (Brent's method in :math:`C_h`, with :math:`C_c` at its
    fixed point for each :math:`C_h`), the largest root below :math:`Q^*`; :math:`\chi_c` is the leading eigenvalue
    of the 2x2 Jacobian of :math:`(C_c, C_h)\mapsto(C_c', C_h')` there (Richardson differences). Its error, measured
    against the exact untied network (``tests/test_gated_correlation.py``; two-copy sampler of
    :mod:`mftrnn.nets.untied_fast`) and, on the diagonal with identical inputs, against the exact :math:`\chi`
    (where the closure's rate is not exact: the perturbation's law is not that of a Gaussian pair), is reported
    there and in the docstring of the test."""
    from .gated import _E, _exact_moments
    M, _ = _exact_moments(st, p["mom"])
    new, G, _g = next(r for r in st.readouts if st.cell.previous_of(r[0]) == st.read_state)
    Q = p["Qs"][new]
    Qc = p["Qs"][st.carried_new]
    var = max(Qc - M * M, 0.0)
    fx = {"Q": Q, "m1": M, "var": var, "G": G, "K_diag": gaussian_tanh_pair(M, var, var)}
    fx["T2"] = Q / _E(G ** 2, st, p["mom"]) if Q > 0 else 0.0  # E_pi[tanh^2 c] of the exact law
    if Q <= 0:
        return {"C_star": 0.0, "c_star": 1.0, "Cc_star": 0.0, "chi_c": float(p["chi"]), "approximation": LAW_CLOSURE}

    def Cc_fixed(Ch):
        mom_a, mom_b, cov = pair_field_moments(st, hp, R, Q, Q, Ch, Sigma)
        a = _E2(st.A, st.A, st, mom_a, mom_b, cov)
        b = (_E2(st.A, st.B, st, mom_a, mom_b, cov) + _E2(st.B, st.A, st, mom_a, mom_b, cov)) * M \
            + _E2(st.B, st.B, st, mom_a, mom_b, cov)
        return b / (1 - a)

    def g(Ch):
        Cc = Cc_fixed(Ch)
        return _law_pair_map(st, hp, R, fx, Cc, Ch, Sigma)[1] - Ch

    tol = 1e-11 * Q
    g_top = g(Q)
    if abs(g_top) <= tol:
        Ch = Q
    else:
        prev = Q
        for x in Q - 2 * Q * np.geomspace(1e-6, 1.0, 9):
            gx = g(x)
            if gx >= 0:
                Ch = x if gx == 0 else brentq(g, x, prev, xtol=1e-13 * Q, rtol=1e-14, maxiter=200)
                break
            prev = x
        else:
            raise ConvergenceError(f"cell {st.cell.name!r}: no fixed point of the closed covariance maps")
    Cc = Cc_fixed(Ch)
    # Jacobian of the pair map at the fixed point
    hC, hH = 1e-4 * max(Qc, 1e-8), 1e-4 * Q
    J = np.empty((2, 2))
    for j, (f, x0, h, up) in enumerate(((lambda c: _law_pair_map(st, hp, R, fx, c, Ch, Sigma), Cc, hC, Qc),
                                        (lambda c: _law_pair_map(st, hp, R, fx, Cc, c, Sigma), Ch, hH, Q))):
        for i in range(2):
            J[i, j] = _slope(lambda x: f(x)[i], x0, h, up)
    chi_c = float(np.max(np.abs(np.linalg.eigvals(J))))
    return {"C_star": float(Ch), "c_star": float(Ch / Q), "Cc_star": float(Cc), "chi_c": chi_c,
            "approximation": LAW_CLOSURE, "jacobian": J}


def correlation_point(st, hp: dict, R: float, p: dict) -> dict:
    r"""Correlation quantities at one fixed-point dict ``p`` of :func:`mftrnn.theory.gated._point`:
    ``{"C_star", "c_star", "Cc_star", "chi_c", "approximation"}`` (``None`` for what the cell's theory does not
    give)."""
    if st.kind == "closed":
        Q, M = p["Q_read"], p["M"] if st.carried is not None else 0.0
        r = closed_correlation(st, hp, R, Q, M)
        Cc = r["C"]
        Q_out = p["Qs"][st.output]
        C_out = readout_correlation(st, hp, R, Q, Cc)
        c = None if C_out is None else (C_out / Q_out if Q_out > 0 else 1.0)
        return {"C_star": C_out, "c_star": c, "Cc_star": Cc if st.carried_new not in (None, st.output) else None,
                "chi_c": r["chi_c"], "approximation": None}
    return law_correlation(st, hp, R, p)

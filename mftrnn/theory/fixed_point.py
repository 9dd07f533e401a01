r"""Fixed points, slopes and timescales of the mean-field maps (vectorised over hyperparameters).

* :math:`Q^*` solves :math:`Q = \mathcal Q(Q)` (the variance map of :class:`~mftrnn.MeanField`), and
  :math:`q^* = \sigma_w^2 Q^* + \sigma_v^2 R + \sigma_b^2` for a cell whose recurrent input is its state.
* :math:`\chi_q = \mathcal Q'(Q^*)`: the variance map's slope; :math:`|\chi_q|<1` means :math:`Q^*` is stable.
* :math:`\chi = \partial C_t/\partial C_{t-1}` at identical inputs on the diagonal :math:`C=Q^*`: two copies of the
  network started from different states but fed the same inputs approach each other as :math:`\chi^t`.
* :math:`\xi = -1/\ln\chi` for :math:`0<\chi<1` (0 at :math:`\chi=0`, infinite for :math:`\chi\ge1`), and likewise
  :math:`\xi_q` from :math:`|\chi_q|`.
* With ``correlations=True``: the fixed point :math:`C^*` of the covariance map for *independent* inputs
  (:math:`\Sigma=0`), :math:`c^*=C^*/Q^*`, and the rate :math:`\chi_c` and timescale :math:`\xi_c` of the approach to it.

Root finding is a vectorised Newton iteration safeguarded by bisection on a bracket (the slope is known in
closed form, so convergence is quadratic; plain iteration of the map needs :math:`\sim\xi` steps and stalls
near :math:`\chi=1`). It runs on a cheap quadrature rule (~1e-6) and finishes with one Newton step on the fine
rule (~1e-12), after which the Newton step :math:`|g/g'|` of :math:`g(Q)=\mathcal Q(Q)-Q` is checked and the rare
points above 1e-10 (relative) are re-solved on the fine rule. :math:`g` is evaluated in a cancellation-free form
(:func:`_absorb_constant`: for the minimalRNN :math:`g = R\,E[(1-u)^2] - Q\,E[(1-u)(1+u)]`, each term to full relative
precision), so maps close to the identity (a large gate bias) keep their accuracy. The variance map can have several
stable fixed points; the *least* one is returned (reached from :math:`h_0=0`), located by a scan of :math:`g` and
:math:`g'` on a geometric grid that is refined until every interval is certified, by its cubic Hermite interpolant,
to hold no root or exactly one (:func:`_certified_scan`; a pair of roots closer than the grid is not missed), and
``multistable`` flags the points with more than one.

Accuracy of the minimalRNN's :math:`Q^*` against mpmath (30-digit tanh-sinh quadrature of the maps, root by
``findroot``), defaults otherwise: relative error <= 4e-13 over :math:`\mu_b\in[0, 100]` (1e-13 at 0, <= 3e-15 for
:math:`\mu_b\ge2`, limited by the reference beyond 35), :math:`\xi` likewise (<= 3e-12); against the exact
asymptotic series up to :math:`\mu_b=340`: <= 3e-15. Beyond (:math:`E[(1-u)^2]\sim e^{-2\mu_b}` below 1e-300) a
:class:`~mftrnn.DomainError` is raised. Guards: a result that is not finite, has :math:`Q^*<0` or :math:`\chi<0`, is
not a root of its map, or breaks a bound the cell's theory guarantees (:math:`Q^*\le R` for a convex-combination
update such as the minimalRNN, :math:`Q^*\le1` for a bounded activation) raises :class:`~mftrnn.ConvergenceError`.
When the bracket's lower end is itself a
fixed point (:math:`Q=0` without input or bias noise; :math:`C=Q^*` without input), the stable fixed point is
returned: that end if the slope there is at most 1, otherwise the root inside.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..cells.registry import Sigma, get_cell
from ..cells.gated import GatedCell
from ..errors import ConvergenceError, DomainError, MftrnnError
from .._validate import finite_array
from .gaussian import E, E2
from .meanfield import C, M, M_a, M_b, Q, Q_a, Q_b, mean_field
from .numeric import Compiled

__all__ = ["FixedPoint", "fixed_point", "iterate_maps", "timescale", "DEFAULTS", "unpack_fixed_point"]

DEFAULTS = {"sigma_w": 1.0, "sigma_v": 1.0, "sigma_b": 0.0, "mu_b": 0.0, "R": 1.0}
NONNEGATIVE = ("sigma_w", "sigma_v", "sigma_b", "R")
_RTOL = 1e-13
_MAXITER = 100
_SCAN = 4  # points of the scan of the variance map below the bracket's end (geometric, ratio _SCAN_RATIO)
_SCAN_RATIO = 4.0


def timescale(chi):
    r""":math:`\xi = -1/\ln|\chi|` for :math:`|\chi|<1`, :math:`0` at :math:`\chi=0`, :math:`\infty` for :math:`|\chi|\ge1`."""
    a = np.abs(np.asarray(chi, dtype=float))
    with np.errstate(divide="ignore"):
        return np.where(a >= 1, np.inf, np.where(a == 0, 0.0, -1.0 / np.log(np.where(a > 0, a, 0.5))))


def _timescale_m1(chi, chi_m1):
    r""":func:`timescale` from :math:`\chi` and an accurate :math:`\chi - 1` (``chi_m1``): :math:`-1/\ln\chi =
    -1/\mathrm{log1p}(\chi-1)`, which keeps its precision where :math:`\chi` rounds to 1 (long memory)."""
    chi = np.asarray(chi, dtype=float)
    chi_m1 = np.asarray(chi_m1, dtype=float)
    near = (np.abs(chi_m1) < 0.5) & np.isfinite(chi_m1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.where(chi_m1 < 0, -1.0 / np.log1p(np.where(near & (chi_m1 < 0), chi_m1, -0.5)), np.inf)
    return np.where(near, xi, timescale(chi))


def _upper_bound(cell):
    r"""A bound :math:`Q^*\le B` that the cell's theory guarantees, as a SymPy expression in the hyperparameters, or
    None. Two structures are recognised: an update that is a convex combination :math:`u\,h + (1-u)\,x` with a
    logistic gate :math:`u` (the minimalRNN: :math:`Q_t = E[u^2]Q + E[(1-u)^2]R \le \max(Q, R)`, so
    :math:`Q^*\le R`) and an update that is a bounded activation of a pre-activation (:math:`|\tanh|,
    \sigma\le1`: :math:`Q^*\le1`)."""
    from ..cells.functions import sigmoid
    from ..cells.registry import R
    from .meanfield import _affine_coefficients

    try:
        c = _affine_coefficients(cell.update, (cell.state, cell.input))
    except MftrnnError:
        return None
    c0, ch, cx = (sp.sympify(c[k]) for k in (sp.S.One, cell.state, cell.input))

    def gate(e):
        return isinstance(e, sigmoid) or isinstance(sp.simplify(1 - e), sigmoid)

    if c0 == 0 and sp.simplify(ch + cx - 1) == 0 and gate(ch):
        return R
    if ch == 0 and cx == 0 and isinstance(c0, (sp.tanh, sigmoid)):
        return sp.S.One
    return None


@functools.lru_cache(maxsize=None)
def _upper_bound_fn(cell):
    bound = _upper_bound(cell)
    if bound is None:
        return None
    return sp.lambdify(list(cell.hyperparameters), bound, "numpy"), str(bound)


def _guard(cell, Qstar, chi, chi_q, g, dg, qs, hp):
    r"""Refuse to return numbers that break what the theory guarantees (:class:`~mftrnn.ConvergenceError`): finite
    values, :math:`Q^*\ge0`, pre-activation variances :math:`\ge0`, :math:`\chi\ge0` (a mean squared Jacobian),
    :math:`Q^*` a root of the map (its Newton step below 1e-8 relative, or its residual at rounding level) and the
    cell's bound
    (:func:`_upper_bound`)."""
    name = cell.name
    for what, arr in (("Q_star", Qstar), ("chi", chi), ("chi_q", chi_q), *(("q_star", q) for q in qs)):
        if not np.all(np.isfinite(arr)):
            raise ConvergenceError(f"non-finite {what} for cell {name!r}")
    if np.any(Qstar < 0) or any(np.any(q < 0) for q in qs):
        raise ConvergenceError(f"negative second moment for cell {name!r}")
    if np.any(chi < -1e-12):
        raise ConvergenceError(f"negative chi = {np.min(chi):.3g} for cell {name!r}")
    with np.errstate(all="ignore"):
        step = np.abs(g / dg)
    # a residual at rounding level (|g| <= 1e-12 Q*) passes even where the map is nearly tangent (dg -> 0 at a
    # bifurcation, e.g. sigma_v = 0 and sigma_w -> 1+), whose Newton step then says nothing about the root
    # (measured: |g| = 1.1e-13 Q* at sigma_w = 1 + 1e-7, a relative Newton step of 4e-7 there)
    off = (np.abs(g) > 1e-12 * Qstar) & ~(step <= 1e-8 * np.maximum(Qstar, 1e-300))
    if np.any(off):
        raise ConvergenceError(f"fixed point of cell {name!r} does not satisfy its map at {np.count_nonzero(off)} "
                               f"of {Qstar.size} points")
    fb = _upper_bound_fn(cell)
    if fb is not None:
        fn, text = fb
        bound = np.broadcast_to(np.asarray(fn(*hp.values()), dtype=float), Qstar.shape)
        over = Qstar > bound * (1 + 1e-9) + 1e-300
        if np.any(over):
            k = int(np.argmax(Qstar - bound))
            raise ConvergenceError(f"Q_star = {Qstar[k]:.6g} exceeds the bound Q* <= {text} = {bound[k]:.6g} of cell "
                                   f"{name!r}")


def check_hyperparameters(cell, values: dict) -> dict:
    """Validate and broadcast hyperparameters; returns ``{name: ndarray}`` in the cell's order."""
    cell = get_cell(cell, gated=False)
    names = [s.name for s in cell.hyperparameters]
    unknown = set(values) - set(names)
    if unknown:
        raise DomainError(f"unknown hyperparameter(s) {sorted(unknown)} for cell {cell.name!r}; known: {names}")
    out = {}
    for n in names:
        v = values.get(n, DEFAULTS.get(n))
        if v is None:
            raise DomainError(f"hyperparameter {n} has no default; give a value")
        a = finite_array(n, v, nonnegative=n in NONNEGATIVE)
        out[n] = a
    try:
        arrays = np.broadcast_arrays(*out.values())
    except ValueError:
        raise DomainError("hyperparameter arrays have incompatible shapes: "
                          + ", ".join(f"{k}{np.shape(v)}" for k, v in out.items())) from None
    if arrays and arrays[0].size == 0:
        raise DomainError("hyperparameter arrays are empty: "
                          + ", ".join(f"{k}{np.shape(v)}" for k, v in out.items() if np.size(v) == 0))
    return dict(zip(out, arrays))


def _absorb_constant(expr):
    r"""Rewrite ``sum_k c_k E[f_k] + c_0`` so that the constant ``c_0`` sits inside an expectation whose coefficient
    is a numeric multiple of it: ``c E[f] + c_0 = c E[f + c_0/c]`` with the integrand factorised.

    This removes the cancellation of maps that are close to the identity (the minimalRNN at a large gate bias:
    ``Q E[u^2] - Q = -Q E[(1-u)(1+u)]``, which :mod:`mftrnn.theory.numeric` evaluates through ``1 - sigmoid(e) =
    sigmoid(-e)`` to full relative precision, where ``1 - E[u^2]`` loses every digit once ``1 - u ~ e^{-mu_b}``
    falls below round-off). Expressions without such a pair are returned unchanged.
    """
    expr = sp.expand(expr, deep=False)
    terms = sp.Add.make_args(expr)
    c0 = sp.Add(*[t for t in terms if not t.has(E, E2)])
    if c0 == 0:
        return expr
    rest = [t for t in terms if t.has(E, E2)]
    for i, t in enumerate(rest):
        coeff, node = t.as_independent(E, E2, as_Add=False)
        if not isinstance(node, E):
            continue
        ratio = sp.simplify(c0 / coeff)
        if not ratio.is_number or ratio == 0:
            continue
        f, mu, q = node.args
        (x,) = f.variables
        body = sp.factor(f.expr + ratio)
        if isinstance(body, sp.Add):  # no factorised form: nothing gained
            continue
        new = E(sp.Lambda(x, body), mu, q)
        return sp.Add(*rest[:i], coeff * new, *rest[i + 1:])
    return expr


def _signed_nodes(expr):
    """The univariate expectations in ``expr`` whose integrand has one sign (SymPy decides: squares, logistic
    functions): their value under a Gaussian with positive variance cannot be 0."""
    out = []
    for n in sorted(expr.atoms(E), key=str):
        body = n.args[0].expr
        if body.is_nonnegative or body.is_nonpositive:
            out.append(n)
    return out


def _underflow_check(cell, Qstar, hp, vals):
    """:class:`~mftrnn.DomainError` where a term of the variance map has underflowed double precision (the
    minimalRNN's ``E[(1-u)^2] ~ e^{-2 mu_b}`` below 1e-300 at mu_b > ~345): the fixed point is then not
    computable (it would come out as 0 or wrong). ``vals``: the signed nodes of g and their variances at Q*."""
    bad = np.zeros(Qstar.shape, bool)
    for v, q in zip(vals[::2], vals[1::2]):
        bad |= (np.abs(v) < 1e-300) & (q > 0)
    if np.any(bad):
        k = int(np.argmax(bad))
        where = ", ".join(f"{n}={float(v[k]):.6g}" for n, v in hp.items())
        raise DomainError(f"cell {cell.name!r} at {where}: the variance map's terms underflow double precision "
                          f"(below 1e-300); reduce |mu_b| (accurate for the minimalRNN up to mu_b ~ 340 at "
                          f"sigma_v = 1)")


@functools.lru_cache(maxsize=None)
def _compiled(cell, what):
    mf = mean_field(cell)
    h = list(cell.hyperparameters)
    qdefs = [mf.q_of_Q[mf.q_symbols[p.symbol].q] for p in cell.preactivations]
    g, dg = _absorb_constant(mf.Q_map - Q), _absorb_constant(mf.chi_q - 1)
    exprs = {
        "F": ([mf.Q_map], [Q, *h]),
        "Q": ([mf.Q_map, mf.chi_q], [Q, *h]),
        "G": ([g, dg], [Q, *h]),
        # the signed nodes of g ride along (they share the quadrature of g): checked for underflow
        "final": ([mf.chi, mf.chi_q, mf.Q_map, _absorb_constant(mf.chi - 1), g, dg, *qdefs,
                   *[x for n in _signed_nodes(g) for x in (n, n.args[2])]], [Q, *h]),
        "C": ([mf.C_map, mf.chi_c], [C, Q, Sigma, *h]),
        "QM": ([mf.variance_map.subs(mf.q_of_Q), mf.mean_map.subs(mf.q_of_Q)], [Q, M, *h]),
        "Cfull": ([mf.C_map_full], [C, Q_a, Q_b, M_a, M_b, Sigma, *h]),
    }
    return Compiled(*exprs[what])


def _evaluate(fn, *args, rule="fine"):
    try:
        with np.errstate(all="ignore"):
            return fn(*args, rule=rule)
    except OverflowError as err:
        raise DomainError(f"{err}; reduce the hyperparameters") from None


def _solve(g_dg, lo, hi, x0, what, rtol=_RTOL, floor=1e-300):
    """Vectorised safeguarded Newton for g(x)=0 on brackets with g(lo) >= 0 >= g(hi).

    ``g_dg(x, idx)`` returns (g, dg) at points x for the sub-array ``idx``. A point is accepted when the Newton
    step is below ``rtol`` relative (the accepted value is the one after that step: with quadratic convergence
    its error is of order step**2) or the bracket is that narrow; "relative" means relative to
    ``max(|x|, floor)``, so that a root at zero is found too. Returns the roots and the last slopes.
    """
    lo, hi = lo.copy(), hi.copy()
    x = np.clip(x0, lo, hi)
    slope = np.full(x.shape, np.nan)
    done = np.zeros(x.shape, bool)
    idx = np.arange(x.size)
    for _ in range(_MAXITER):
        act = idx[~done]
        if act.size == 0:
            return x, slope
        g, dg = g_dg(x[act], act)
        slope[act] = dg
        scale = np.maximum(np.abs(x[act]), floor if np.ndim(floor) == 0 else floor[act])
        lo[act] = np.where(g >= 0, x[act], lo[act])
        hi[act] = np.where(g <= 0, x[act], hi[act])
        with np.errstate(all="ignore"):
            newton = x[act] - g / dg
        ok = np.isfinite(newton) & (newton >= lo[act]) & (newton <= hi[act])
        small = ok & (np.abs(newton - x[act]) <= rtol * scale)
        # a Newton step onto an end of the bracket (already evaluated) can only cycle: where g is rounding noise
        # (|g| a few ulps of x near chi_q = 1) Newton jumps back and forth between the two ends; bisect instead
        inside = ok & (newton > lo[act]) & (newton < hi[act])
        new = np.where(small | inside, newton, 0.5 * (lo[act] + hi[act]))
        conv = (g == 0) | small | (hi[act] - lo[act] <= rtol * scale)
        x[act] = np.where(g == 0, x[act], new)
        done[act] = conv
    bad = np.count_nonzero(~done)
    raise ConvergenceError(f"{what}: fixed point did not converge at {bad} of {x.size} points "
                           f"in {_MAXITER} iterations")


def _flat(params):
    return {k: v.ravel() for k, v in params.items()}


_CERT_ROUNDS = 40  # refinement rounds of the certified scan


def _cubic(ga, gb, da, db, h):
    """Coefficients of the cubic Hermite interpolant of g on an interval of width h (values ga, gb, slopes da, db)
    in the fraction t of the interval: p(t) = ga + c1 t + c2 t^2 + c3 t^3; also the bound 0.25 max(|A|, |B|) on
    |p - chord| (p - chord = t (1-t) (A (1-t) + B t))."""
    delta = gb - ga
    ma, mb = h * da, h * db
    A, B = ma - delta, delta - mb
    return ma, B - 2 * A, A - B, 0.25 * np.maximum(np.abs(A), np.abs(B))


def _quadratic_roots(a, b, c):
    """Real roots (two arrays, NaN where none) of a t^2 + b t + c = 0, stable in both the quadratic and the linear
    case."""
    with np.errstate(all="ignore"):
        disc = b * b - 4 * a * c
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        qq = -0.5 * (b + np.where(b >= 0, sq, -sq))
        r1 = np.where(a != 0, qq / a, np.where(b != 0, -c / b, np.nan))
        r2 = np.where((a != 0) & (qq != 0), c / qq, np.nan)
    return r1, r2


def _cubic_min(g0, c1, c2, c3):
    """min over t in [0, 1] of p(t) = g0 + c1 t + c2 t^2 + c3 t^3, and the t where it is attained."""
    r1, r2 = _quadratic_roots(3 * c3, 2 * c2, c1)  # stationary points of p
    best_t = np.where(g0 + c1 + c2 + c3 < g0, 1.0, 0.0)
    best = np.minimum(g0 + c1 + c2 + c3, g0)
    for r in (r1, r2):
        inside = np.isfinite(r) & (r > 0) & (r < 1)
        t = np.where(inside, r, 0.0)
        v = g0 + t * (c1 + t * (c2 + t * c3))
        lower = inside & (v < best)
        best, best_t = np.where(lower, v, best), np.where(lower, t, best_t)
    return best, best_t


def _certify(ga, gb, da, db, h):
    r"""Which intervals provably (to the accuracy of the interpolant) hold no root (ends of one sign) or exactly one
    (ends of opposite signs), and where to split the others (a fraction of the interval).

    The cubic Hermite interpolant ``p`` from the values and slopes at both ends stands in for ``g``; a bound on its
    distance from the chord, ``E`` (the size of the curvature over the interval, much larger than the cubic's own
    error once the interval is small), is the margin. An interval of one sign is clear when ``|p|`` stays above
    ``E``; one with a sign change when ``p`` is monotone with ``|p'|`` above ``E`` (so ``g`` crosses zero once).
    The others are split at the minimum of ``|p|`` (one sign: where a hidden pair of roots would be) or in the
    middle (sign change).
    """
    c1, c2, c3, err = _cubic(ga, gb, da, db, h)
    same = (ga >= 0) == (gb >= 0)
    clear = h <= 0
    split = np.full(ga.shape, 0.5)
    i = np.nonzero(same & ~clear)[0]
    if i.size:  # one sign s: min of s p above the margin
        s = np.where(ga[i] >= 0, 1.0, -1.0)
        pmin, tmin = _cubic_min(s * ga[i], s * c1[i], s * c2[i], s * c3[i])
        clear[i] = pmin > err[i]
        split[i] = np.clip(tmin, 0.125, 0.875)
    j = np.nonzero(~same & ~clear)[0]
    if j.size:  # sign change in direction s: min of s p' (a quadratic) above the margin
        s = np.where(gb[j] >= ga[j], 1.0, -1.0)
        d1, d2, d3 = s * c1[j], s * c2[j], s * c3[j]
        with np.errstate(all="ignore"):
            tv = np.where(d3 != 0, -d2 / (3 * d3), 0.0)  # vertex of p'
        tv = np.where(np.isfinite(tv) & (tv > 0) & (tv < 1), tv, 0.0)
        dmin = np.minimum(np.minimum(d1, d1 + 2 * d2 + 3 * d3), d1 + 2 * d2 * tv + 3 * d3 * tv * tv)
        ends = (s * h[j] * da[j] > 0) & (s * h[j] * db[j] > 0)
        clear[j] = ends & (dmin > err[j])
    return clear, split


def _certified_scan(g_dg, X, rows):
    r"""Certified sign structure of ``g`` on the grids ``X`` (one row per point; increasing, first column ``lo``):
    returns, per row, the first interval ``[a, b]`` with ``g(a) >= 0 > g(b)`` (the least stable root) with the
    values there, and the number of such intervals (more than one: several stable fixed points).

    ``g_dg(x, idx)`` gives values and slopes. Intervals that :func:`_certify` does not clear are split (and the new
    points evaluated, all rows together) until they are cleared or narrower than 1e-10 relative, so that a pair of
    roots closer together than the initial grid is not missed.
    """
    n, m = X.shape
    G, D = g_dg(X.ravel(), np.repeat(rows, m))
    G, D = G.reshape(n, m), D.reshape(n, m)
    # flat list of intervals
    r = np.repeat(np.arange(n), m - 1)
    a, b = X[:, :-1].ravel(), X[:, 1:].ravel()
    ga, gb, da, db = G[:, :-1].ravel(), G[:, 1:].ravel(), D[:, :-1].ravel(), D[:, 1:].ravel()
    clear, split = _certify(ga, gb, da, db, b - a)
    for _ in range(_CERT_ROUNDS):
        narrow = (b - a) <= 1e-10 * np.maximum(b, 1e-300)
        todo = np.nonzero(~clear & ~narrow)[0]
        if todo.size == 0:
            break
        t = split[todo]
        aa, bb = a[todo], b[todo]
        geo = (aa > 0) & (bb > 4 * aa)  # wide ratio: split geometrically
        with np.errstate(all="ignore"):
            mid = np.where(geo, aa * (bb / np.where(aa > 0, aa, 1.0)) ** t, aa + t * (bb - aa))
        gm, dm = g_dg(mid, rows[r[todo]])
        keep = np.ones(a.size, bool)
        keep[todo] = False
        na, nb = np.concatenate([aa, mid]), np.concatenate([mid, bb])
        nga, ngb = np.concatenate([ga[todo], gm]), np.concatenate([gm, gb[todo]])
        nda, ndb = np.concatenate([da[todo], dm]), np.concatenate([dm, db[todo]])
        nclear, nsplit = _certify(nga, ngb, nda, ndb, nb - na)  # only the new intervals
        r = np.concatenate([r[keep], r[todo], r[todo]])
        a, b = np.concatenate([a[keep], na]), np.concatenate([b[keep], nb])
        ga, gb = np.concatenate([ga[keep], nga]), np.concatenate([gb[keep], ngb])
        da, db = np.concatenate([da[keep], nda]), np.concatenate([db[keep], ndb])
        clear, split = np.concatenate([clear[keep], nclear]), np.concatenate([split[keep], nsplit])
    # an interval not cleared: trust the cubic (its error is far below |p| on intervals this small), i.e. count a
    # down-crossing of the cubic inside as a root
    order = np.lexsort((a, r))
    r, a, b, ga, gb, da, db, clear = (v[order] for v in (r, a, b, ga, gb, da, db, clear))
    down = (ga >= 0) & (gb < 0)
    tt = np.linspace(0.0, 1.0, 33)

    def cubic_values(sel):
        c1, c2, c3, _ = _cubic(ga[sel], gb[sel], da[sel], db[sel], b[sel] - a[sel])
        return ga[sel, None] + tt[None, :] * (c1[:, None] + tt[None, :] * (c2[:, None] + tt[None, :] * c3[:, None]))

    cubic_down = np.zeros(a.size, bool)
    nc = np.nonzero(~clear)[0]
    if nc.size:
        pp = cubic_values(nc)
        cubic_down[nc] = np.any((pp[:, :-1] >= 0) & (pp[:, 1:] < 0), axis=1)
    # a cubic down-crossing inside an interval of one sign comes with an up-crossing: two roots, the first stable
    count = np.bincount(r, weights=(down | (cubic_down & ~down)).astype(float), minlength=n)
    cand = down | cubic_down
    first = np.full(n, -1)
    idx = np.nonzero(cand)[0]
    # the first candidate of each row
    rr = r[idx]
    uniq, pos = np.unique(rr, return_index=True)
    first[uniq] = idx[pos]
    if np.any(first < 0):
        raise ConvergenceError("variance map: no stable fixed point found on the scan")
    f = first
    # an interval that is a down-crossing of the cubic only: bracket the crossing of the cubic
    pp = cubic_values(f)
    jj = np.argmax((pp[:, :-1] >= 0) & (pp[:, 1:] < 0), axis=1)
    only_cubic = ~down[f]
    A = np.where(only_cubic, a[f] + tt[jj] * (b[f] - a[f]), a[f])
    B = np.where(only_cubic, a[f] + tt[jj + 1] * (b[f] - a[f]), b[f])
    k = np.arange(f.size)
    return A, B, np.where(only_cubic, pp[k, jj], ga[f]), np.where(only_cubic, pp[k, jj + 1], gb[f]), count


def unbounded(cell, **hyperparameters) -> np.ndarray:
    r"""Boolean array (broadcast shape of the hyperparameters): True where the variance map has no finite fixed
    point, i.e. :math:`Q_t(Q) - Q \ge 0` still at :math:`Q = 4^{40}\max(2Q_t(0), 1)` (the bracket search of
    :func:`fixed_point`, which raises :class:`~mftrnn.ConvergenceError` there). Example: the ReLU RNN at
    :math:`\mu_b = 0` and :math:`\sigma_w^2 \ge 2`, whose map :math:`Q_t=\tfrac12(\sigma_w^2Q+\sigma_v^2R+\sigma_b^2)`
    has slope :math:`\sigma_w^2/2 \ge 1` everywhere; the linear RNN at :math:`\sigma_w \ge 1`."""
    cell = get_cell(cell, gated=False)
    hp = check_hyperparameters(cell, hyperparameters)
    shape = next(iter(hp.values())).shape
    hv = list(_flat(hp).values())
    (F0,) = _evaluate(_compiled(cell, "F"), np.zeros(hv[0].size), *hv, rule="coarse")
    hi = np.maximum(2.0 * F0, 1.0)
    grow = np.ones(hi.size, bool)
    for _ in range(41):
        g, _ = _evaluate(_compiled(cell, "G"), hi, *hv, rule="coarse")
        grow = g >= 0
        if not grow.any():
            break
        hi = np.where(grow, 4.0 * hi, hi)
    return grow.reshape(shape)


def _solve_Q(cell, hp):
    """Least stable fixed point Q* of the variance map for flat hyperparameter arrays ``hp``, and a flag for
    points where the scan found more than one stable fixed point.

    ``g(Q) = Q(Q) - Q`` in its cancellation-free form (:func:`_absorb_constant`). Bracket [lo, hi] with
    g(hi) < 0; a scan of g and g' on a geometric grid below hi (ratio 2), refined until every interval is certified
    to hold no root or exactly one (:func:`_certified_scan`); Newton in the first interval where g turns negative
    on the coarse quadrature rule (the scan's rule, so its signs bracket the root), then one Newton step on the fine
    rule.
    """
    fG = _compiled(cell, "G")
    hv = list(hp.values())
    size = hv[0].size
    (F0,) = _evaluate(_compiled(cell, "F"), np.zeros(size), *hv, rule="coarse")
    lo = np.zeros(size)
    Qstar = np.full(size, np.nan)
    multistable = np.zeros(size, bool)
    zero = np.nonzero(F0 <= 1e-300)[0]  # Q = 0 is a fixed point there
    if zero.size:
        _, dg0 = _evaluate(fG, np.zeros(zero.size), *[v[zero] for v in hv])
        Qstar[zero[dg0 <= 0]] = 0.0  # stable
        need = zero[dg0 > 0]  # unstable zero: step away from it until g > 0
        for eps in (1e-3, 1e-6, 1e-9, 1e-12):
            if need.size == 0:
                break
            g, _ = _evaluate(fG, np.full(need.size, eps), *[v[need] for v in hv])
            up = g > 0
            lo[need[up]] = eps
            need = need[~up]
        Qstar[need] = 0.0  # positive fixed point below 1e-12: indistinguishable from 0
    todo = np.nonzero(np.isnan(Qstar))[0]
    if todo.size:
        sub = [v[todo] for v in hv]
        lo = lo[todo]
        hi = np.maximum(2.0 * F0[todo], 1.0)
        for _ in range(40):
            g, _ = _evaluate(fG, hi, *sub, rule="coarse")
            grow = g >= 0
            if not grow.any():
                break
            hi = np.where(grow, 4.0 * hi, hi)
        else:
            raise ConvergenceError("variance map has no finite fixed point (Q grows without bound)")

        def g_dg(rule):
            def f(x, act):
                g, dg = _evaluate(fG, x, *[v[act] for v in sub], rule=rule)
                return g, dg
            return f

        ratios = _SCAN_RATIO ** -np.arange(_SCAN, 0, -1.0)
        X = np.concatenate([lo[:, None], np.maximum(hi[:, None] * ratios[None, :], lo[:, None]), hi[:, None]], 1)
        rows = np.arange(todo.size)
        a, b, ga, gb, count = _certified_scan(g_dg("coarse"), X, rows)
        multistable[todo] = count > 1
        with np.errstate(all="ignore"):
            x0 = a + (b - a) * ga / (ga - gb)
        x0 = np.where(np.isfinite(x0) & (x0 > a) & (x0 < b), x0, 0.5 * (a + b))
        x, _ = _solve(g_dg("coarse"), a, b, x0, "variance map (coarse)", rtol=1e-4)
        # coarse root: Newton error ~ step^2 <~ 1e-8 after a step below 1e-4, quadrature error ~1e-6; one Newton
        # step with the fine rule takes it to ~1e-12 (checked by the Newton step in _polish)
        g, dg = g_dg("fine")(x, rows)
        with np.errstate(all="ignore"):
            newton = x - g / dg
        span = b - a
        ok = np.isfinite(newton) & (newton >= a - span) & (newton <= b + span) & (newton >= 0)
        Qstar[todo] = np.where(ok, newton, x)
    return Qstar, multistable


def _polish(cell, Qstar, hp, final):
    """Check the Newton step |g(Q*)/g'(Q*)| of the fine rule (the error estimate of Q*, relative to Q*: the residual
    alone says nothing where the map's slope is close to 1); re-solve the points where it exceeds 1e-10."""
    chi, chi_q, F, chi_m1, g, dg, *qs = (np.array(a, dtype=float) for a in final)  # qs: q_k, then signed nodes
    with np.errstate(all="ignore"):
        step = np.abs(g / dg)
    bad = np.nonzero(~(step <= 1e-10 * np.maximum(Qstar, 1e-300)) & (g != 0) & (Qstar != 0))[0]
    if bad.size:
        fG = _compiled(cell, "G")
        sub = {k: v[bad] for k, v in hp.items()}

        def g_dg(x, act):
            return _evaluate(fG, x, *[v[act] for v in sub.values()])

        # bracket from the sign of the residual, widened until it holds
        x = Qstar[bad]
        width = np.maximum(1e-6 * x, 1e-300)
        for _ in range(80):
            lo, hi = np.maximum(x - width, 0.0), x + width
            glo, _ = g_dg(lo, np.arange(bad.size))
            ghi, _ = g_dg(hi, np.arange(bad.size))
            held = (glo >= 0) & (ghi <= 0)
            if np.all(held):
                break
            width = np.where(held, width, 4 * width)
        else:
            raise ConvergenceError("variance map: could not bracket the fixed point")
        Qstar = Qstar.copy()
        Qstar[bad], _ = _solve(g_dg, lo, hi, x, "variance map", rtol=1e-12)
        vals = _evaluate(_compiled(cell, "final"), Qstar[bad], *sub.values())
        for arr, v in zip((chi, chi_q, F, chi_m1, g, dg, *qs), vals):
            arr[bad] = v
    return Qstar, chi, chi_q, chi_m1, g, dg, qs


def _solve_C(cell, Qstar, chi, hp):
    """Fixed point C* of the covariance map for independent inputs (Sigma = 0), its slope chi_c."""
    fC = _compiled(cell, "C")
    hv = list(hp.values())
    size = Qstar.size
    zeros = np.zeros(size)
    Cstar = np.full(size, np.nan)
    Gq, slope_q = _evaluate(fC, Qstar, Qstar, zeros, *hv)
    tol = 1e-12 * np.maximum(Qstar, 1e-300)
    diag_root = np.abs(Gq - Qstar) <= tol
    Cstar[Qstar == 0] = 0.0
    Cstar[diag_root & (slope_q <= 1) & np.isnan(Cstar)] = Qstar[diag_root & (slope_q <= 1) & np.isnan(Cstar)]
    hi = Qstar.copy()
    need = np.nonzero(diag_root & np.isnan(Cstar))[0]
    for k in range(3, 14):
        if need.size == 0:
            break
        trial = Qstar[need] * (1 - 10.0 ** -k * 1e3)
        G, _ = _evaluate(fC, trial, Qstar[need], zeros[need], *[v[need] for v in hv])
        down = G - trial < 0
        hi[need[down]] = trial[down]
        need = need[~down]
    Cstar[need] = Qstar[need]
    todo = np.nonzero(np.isnan(Cstar))[0]
    if todo.size:
        sub = [v[todo] for v in hv]

        def g_dg(rule):
            def f(x, act):
                G, dG = _evaluate(fC, x, Qstar[todo][act], zeros[act], *[v[act] for v in sub], rule=rule)
                return G - x, dG - 1.0
            return f

        # Newton on the cheap rule to ~1e-4, then on the fine rule from there (two or three steps) over the same
        # bracket: the coarse root only saves the expensive bivariate evaluations, the fine solve decides
        lo_c, hi_c = -Qstar[todo], hi[todo]
        x0, _ = _solve(g_dg("coarse"), lo_c, hi_c, 0.5 * hi_c, "covariance map (coarse)", rtol=1e-4,
                       floor=Qstar[todo])
        Cstar[todo], _ = _solve(g_dg("fine"), lo_c, hi_c, x0, "covariance map", floor=Qstar[todo])
    _, chi_c = _evaluate(fC, Cstar, Qstar, zeros, *hv)
    # C* is a stable root (reached from C = Q* downwards), so chi_c <= 1; a frozen gate (mu_b -> inf) has
    # chi_c -> 1, where the quadrature's rounding can land a few ulp above it: those are 1
    chi_c = np.where((chi_c > 1.0) & (chi_c <= 1.0 + 1e-12), 1.0, chi_c)
    return Cstar, chi_c


@dataclass
class FixedPoint:
    """A mean-field fixed point and what is derived from it; arrays of the broadcast shape of the hyperparameters.

    One class for every cell. ``Q_star``: second moment :math:`|h|^2/N` of the output state; ``q_star``: variance of
    the cell's first pre-activation (field) and ``q_stars``: ``{name: variance}`` of every one of them; ``chi``,
    ``chi_q`` and their timescales ``xi = -1/ln chi``, ``xi_q``; with ``correlations=True`` also ``C_star``,
    ``c_star``, ``chi_c``, ``xi_c``. Gated cells (:func:`mftrnn.theory.gated.gated_fixed_point`) add ``Qc_star`` (the
    carried state's second moment where it differs from the output: the LSTM's :math:`|c|^2/N`; with
    ``correlations=True`` ``Cc_star``, its covariance between the two copies), ``M_star`` (the
    carried state's mean), ``law_error`` (measured error of the stationary law of the LSTM cell state) and
    ``approximation``; a quantity a cell's theory does not give is ``None`` (for example ``chi`` under the
    Gaussian closure of the LSTM, ``chi_q`` of the LSTM).

    ``multistable`` is True where the variance map was found to have more than one stable fixed point; ``Q_star``
    is then the least of them (see :func:`fixed_point`).
    """

    cell: str
    params: dict
    q_star: np.ndarray
    Q_star: np.ndarray
    chi: np.ndarray | None
    chi_q: np.ndarray | None
    xi: np.ndarray | None
    xi_q: np.ndarray | None
    C_star: np.ndarray | None = None
    c_star: np.ndarray | None = None
    chi_c: np.ndarray | None = None
    xi_c: np.ndarray | None = None
    multistable: np.ndarray | None = None
    q_stars: dict = field(default_factory=dict)
    Qc_star: np.ndarray | None = None
    Cc_star: np.ndarray | None = None
    M_star: np.ndarray | None = None
    law_error: np.ndarray | None = None
    approximation: str = "exact mean field"
    keys: tuple = field(default=("q_star", "Q_star", "chi", "chi_q", "xi", "xi_q"), repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dict (scalar hyperparameters only); infinite timescales become ``None``; quantities the
        cell's theory does not give are left out."""
        if np.ndim(self.Q_star) != 0:
            raise MftrnnError("to_dict() needs scalar hyperparameters")
        out = {"cell": self.cell}
        out.update({k: float(v) for k, v in self.params.items()})
        for k in (*self.keys, "Qc_star", "Cc_star", "M_star"):
            v = getattr(self, k)
            if v is None or k in out:
                continue
            v = float(v)
            out[k] = None if (k.startswith("xi") and np.isinf(v)) else v
        out["q_stars"] = {str(k): float(v) for k, v in self.q_stars.items()}
        out["multistable"] = bool(self.multistable)
        out["approximation"] = self.approximation
        return out


def unpack_fixed_point(cell, hyperparameters: dict):
    """Let a computed :class:`FixedPoint` stand in for ``(cell, **hyperparameters)``: returns ``(cell,
    hyperparameters, fp)`` with ``fp`` the given fixed point, or ``None`` when a cell (name) was given.

    Functions that need the fixed point use ``fp`` instead of solving it again; giving both a fixed point and
    hyperparameters is refused.
    """
    if isinstance(cell, FixedPoint):
        if hyperparameters:
            raise DomainError(f"give a FixedPoint or hyperparameters, not both (got {sorted(hyperparameters)})")
        return cell.cell, dict(cell.params), cell
    return cell, hyperparameters, None


def fixed_point(cell, *, correlations: bool = False, **hyperparameters) -> FixedPoint:
    r"""Fixed point :math:`Q^*, q^*` of ``cell`` and its slopes :math:`\chi, \chi_q` and timescales :math:`\xi, \xi_q`.

    Hyperparameters (``sigma_w=1, sigma_v=1, sigma_b=0, mu_b=0, R=1`` by default) may be scalars or arrays;
    they are broadcast together. With ``correlations=True`` also the covariance fixed point for independent inputs
    (:math:`C^*`, :math:`c^*=C^*/Q^*`, :math:`\chi_c`, :math:`\xi_c`); this uses two-dimensional quadrature and is
    meant for modest array sizes. Raises :class:`~mftrnn.DomainError` for invalid hyperparameters and
    :class:`~mftrnn.ConvergenceError` when a fixed point is not found.

    A gated cell (``"lstm"``, ``"gru"``, ...) is passed on to :func:`mftrnn.theory.gated.gated_fixed_point` (per-gate
    hyperparameters; the same :class:`FixedPoint` with the gated cell's extra fields).

    Which fixed point: the *least* stable fixed point of the variance map, the one reached from a zero initial
    state when the map is increasing (as it is for the built-in cells). The variance map can have several
    (e.g. the minimalRNN at ``sigma_w=5, mu_b=5``: ``Q* = 0.0381`` from ``h_0 = 0``, ``0.2519`` from ``Q_0 = 1``);
    ``multistable`` flags the points where the certified scan of the map (module docstring) found more than one.
    Accurate to ~1e-12 against mpmath for the minimalRNN over ``mu_b`` in [0, 100] (module docstring);
    :class:`~mftrnn.DomainError` where the map's terms underflow double precision (minimalRNN: ``mu_b`` above
    ~345).
    """
    cell = get_cell(cell)
    if isinstance(cell, GatedCell):
        from .gated import gated_fixed_point
        return gated_fixed_point(cell, correlations=correlations, **hyperparameters)
    hp = check_hyperparameters(cell, hyperparameters)
    shape = next(iter(hp.values())).shape
    flat = _flat(hp)
    Qstar, multistable = _solve_Q(cell, flat)
    final = _evaluate(_compiled(cell, "final"), Qstar, *flat.values())
    Qstar, chi, chi_q, chi_m1, g, dg, qs = _polish(cell, Qstar, flat, final)
    # near 1, the slopes from their accurate distance to 1 (correctly rounded; the direct sums carry round-off)
    chi = np.where(np.abs(chi_m1) < 0.5, 1.0 + chi_m1, chi)
    chi_q = np.where(np.abs(dg) < 0.5, 1.0 + dg, chi_q)
    npre = len(cell.preactivations)
    qs, nodes = qs[:npre], qs[npre:]
    _underflow_check(cell, Qstar, flat, nodes)
    _guard(cell, Qstar, chi, chi_q, g, dg, qs, flat)
    res = FixedPoint(cell.name, {k: (float(v) if v.ndim == 0 else v) for k, v in hp.items()},
                     qs[0].reshape(shape), Qstar.reshape(shape), chi.reshape(shape), chi_q.reshape(shape),
                     _timescale_m1(chi, chi_m1).reshape(shape), _timescale_m1(chi_q, dg).reshape(shape),
                     multistable=multistable.reshape(shape),
                     q_stars={str(p.symbol): q.reshape(shape) for p, q in zip(cell.preactivations, qs)})
    if correlations:
        Cstar, chi_c = _solve_C(cell, Qstar, chi, flat)
        with np.errstate(invalid="ignore", divide="ignore"):
            c_star = np.where(Qstar > 0, Cstar / np.where(Qstar > 0, Qstar, 1.0), 1.0)
        res.C_star, res.c_star = Cstar.reshape(shape), c_star.reshape(shape)
        res.chi_c, res.xi_c = chi_c.reshape(shape), timescale(chi_c).reshape(shape)
        res.keys = res.keys + ("C_star", "c_star", "chi_c", "xi_c")
    return res


def iterate_maps(cell, T: int, *, Q0: float = 1.0, C0: float = 0.0, Q0b: float | None = None,
                 Sigma: float = 1.0, M0: float = 0.0, **hyperparameters) -> dict:
    r"""Iterate the mean-field maps for ``T`` steps from :math:`(Q^a_0, Q^b_0, C_0)`.

    Returns numpy arrays of length ``T+1``: ``Q_a``, ``Q_b``, ``C`` (and the state means ``M_a``, ``M_b``, which
    start at ``M0``). ``Sigma`` is the per-step input overlap of the two sequences. Scalars only.
    """
    cell = get_cell(cell, gated=False)
    hp = check_hyperparameters(cell, hyperparameters)
    if any(v.ndim for v in hp.values()):
        raise DomainError("iterate_maps takes scalar hyperparameters")
    Q0b = Q0 if Q0b is None else Q0b
    vals = {"T": T, "Q0": Q0, "Q0b": Q0b, "C0": C0, "Sigma": Sigma, "M0": M0}
    for k, v in vals.items():
        if not np.isfinite(v):
            raise DomainError(f"{k} must be finite, got {v!r}")
    if int(T) != T or T < 0:
        raise DomainError(f"T must be a non-negative integer, got {T!r}")
    if Q0 < 0 or Q0b < 0:
        raise DomainError("initial second moments Q0, Q0b must be non-negative")
    if abs(C0) > np.sqrt(Q0 * Q0b) * (1 + 1e-12):
        raise DomainError(f"|C0| = {abs(C0)} exceeds sqrt(Q0 * Q0b) = {np.sqrt(Q0 * Q0b)}")
    if not -1 <= Sigma <= 1:
        raise DomainError(f"input overlap Sigma must lie in [-1, 1], got {Sigma}")
    fQM = _compiled(cell, "QM")
    fC = _compiled(cell, "Cfull")
    h = [float(v) for v in hp.values()]
    Qab, Ms, Cs = [np.array([Q0, Q0b], float)], [np.array([M0, M0], float)], [float(C0)]
    for _ in range(int(T)):
        q, m = Qab[-1], Ms[-1]
        Qn, Mn = _evaluate(fQM, q, m, *h)
        (Cn,) = _evaluate(fC, Cs[-1], q[0], q[1], m[0], m[1], Sigma, *h)
        Qab.append(Qn)
        Ms.append(Mn)
        Cs.append(float(Cn))
    Qab, Ms = np.array(Qab), np.array(Ms)
    return {"Q_a": Qab[:, 0], "Q_b": Qab[:, 1], "C": np.array(Cs), "M_a": Ms[:, 0], "M_b": Ms[:, 1]}

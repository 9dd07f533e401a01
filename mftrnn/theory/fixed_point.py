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
rule (~1e-12), after which the residual :math:`|\mathcal Q(Q^*)-Q^*|` is checked and the rare points above
1e-10 are re-solved on the fine rule. The variance map can have several stable fixed points; the *least* one is
returned (reached from :math:`h_0=0`), located by a sign scan of the map on a geometric grid, and
``multistable`` flags the points where the scan saw more than one. When the bracket's lower end is itself a
fixed point (:math:`Q=0` without input or bias noise; :math:`C=Q^*` without input), the stable fixed point is
returned: that end if the slope there is at most 1, otherwise the root inside.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..cells.registry import Sigma, get_cell
from ..cells.gated import GatedCell
from ..errors import ConvergenceError, DomainError, MftrnnError
from .._validate import finite_array
from .meanfield import C, M, M_a, M_b, Q, Q_a, Q_b, mean_field
from .numeric import Compiled

__all__ = ["FixedPoint", "fixed_point", "iterate_maps", "timescale", "DEFAULTS", "unpack_fixed_point"]

DEFAULTS = {"sigma_w": 1.0, "sigma_v": 1.0, "sigma_b": 0.0, "mu_b": 0.0, "R": 1.0}
NONNEGATIVE = ("sigma_w", "sigma_v", "sigma_b", "R")
_RTOL = 1e-13
_MAXITER = 100
_SCAN = 8  # points of the sign scan of the variance map, geometric with ratio 2 below the bracket's end


def timescale(chi):
    r""":math:`\xi = -1/\ln|\chi|` for :math:`|\chi|<1`, :math:`0` at :math:`\chi=0`, :math:`\infty` for :math:`|\chi|\ge1`."""
    a = np.abs(np.asarray(chi, dtype=float))
    with np.errstate(divide="ignore"):
        return np.where(a >= 1, np.inf, np.where(a == 0, 0.0, -1.0 / np.log(np.where(a > 0, a, 0.5))))


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
    return dict(zip(out, arrays))


@functools.lru_cache(maxsize=None)
def _compiled(cell, what):
    mf = mean_field(cell)
    h = list(cell.hyperparameters)
    qdefs = [mf.q_of_Q[mf.q_symbols[p.symbol].q] for p in cell.preactivations]
    exprs = {
        "F": ([mf.Q_map], [Q, *h]),
        "Q": ([mf.Q_map, mf.chi_q], [Q, *h]),
        "final": ([mf.chi, mf.chi_q, mf.Q_map, *qdefs], [Q, *h]),
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


def _solve_Q(cell, hp):
    """Least stable fixed point Q* of the variance map for flat hyperparameter arrays ``hp``, and a flag for
    points where the scan found more than one stable fixed point.

    Bracket [0, hi] with g(hi) < 0; scan g on a geometric grid below hi and keep the first interval where it turns
    negative; Newton there on the coarse quadrature rule, then one Newton step on the fine rule.
    """
    fF, fQ = _compiled(cell, "F"), _compiled(cell, "Q")
    hv = list(hp.values())
    size = hv[0].size
    (F0,) = _evaluate(fF, np.zeros(size), *hv, rule="coarse")
    lo = np.zeros(size)
    Qstar = np.full(size, np.nan)
    multistable = np.zeros(size, bool)
    zero = np.nonzero(F0 <= 1e-300)[0]  # Q = 0 is a fixed point there
    if zero.size:
        _, slope0 = _evaluate(fQ, np.zeros(zero.size), *[v[zero] for v in hv])
        Qstar[zero[slope0 <= 1]] = 0.0  # stable
        need = zero[slope0 > 1]  # unstable zero: step away from it until g > 0
        for eps in (1e-3, 1e-6, 1e-9, 1e-12):
            if need.size == 0:
                break
            (F,) = _evaluate(fF, np.full(need.size, eps), *[v[need] for v in hv])
            up = F - eps > 0
            lo[need[up]] = eps
            need = need[~up]
        Qstar[need] = 0.0  # positive fixed point below 1e-12: indistinguishable from 0
    todo = np.nonzero(np.isnan(Qstar))[0]
    if todo.size:
        sub = [v[todo] for v in hv]
        lo = lo[todo]
        hi = np.maximum(2.0 * F0[todo], 1.0)
        for _ in range(40):
            (F,) = _evaluate(fF, hi, *sub, rule="coarse")
            grow = F >= hi
            if not grow.any():
                break
            hi = np.where(grow, 4.0 * hi, hi)
        else:
            raise ConvergenceError("variance map has no finite fixed point (Q grows without bound)")
        g_hi = F - hi
        # scan g on a geometric grid below hi (cheap rule): the least fixed point lies in the first interval where
        # g turns negative; more than one such crossing means more than one stable fixed point
        ratios = 2.0 ** -np.arange(_SCAN, 0, -1.0)
        xs = hi[:, None] * ratios[None, :]
        (Fs,) = _evaluate(fF, xs.ravel(), *[np.repeat(v, _SCAN) for v in sub], rule="sample")
        gs = np.where(xs > lo[:, None], Fs.reshape(xs.shape) - xs, 1.0)  # left of lo: g > 0 by construction
        X = np.concatenate([lo[:, None], xs, hi[:, None]], 1)
        G = np.concatenate([np.where(lo > 0, np.nan, F0[todo])[:, None], gs, g_hi[:, None]], 1)
        pos = ~(G < 0)
        down = pos[:, :-1] & ~pos[:, 1:]
        multistable[todo] = down.sum(1) > 1
        j = np.argmax(down, axis=1)
        rows = np.arange(todo.size)
        a, b = X[rows, j], X[rows, j + 1]
        ga, gb = G[rows, j], G[rows, j + 1]
        with np.errstate(all="ignore"):
            x0 = a + (b - a) * ga / (ga - gb)
        x0 = np.where(np.isfinite(x0) & (x0 > a) & (x0 < b), x0, 0.5 * (a + b))
        # widen by more than the scan's accuracy (signs there come from a ~1e-3 rule)
        a, b = np.where(a > lo, a * 0.98, a), b * 1.02

        def g_dg(rule):
            def f(x, act):
                F, dF = _evaluate(fQ, x, *[v[act] for v in sub], rule=rule)
                return F - x, dF - 1.0
            return f

        x, dg = _solve(g_dg("coarse"), a, b, x0, "variance map (coarse)", rtol=1e-4)
        # the scan's signs come from a ~1e-3 rule: where chi_q is close to 1 that can misplace a root by more than
        # the widening (by ~1e-3 / (1 - chi_q)), and the coarse solve then ends on an end of its bracket. Move such
        # brackets outwards by factors of 2 (never beyond lo or hi) and solve again.
        moved = np.zeros(todo.size)  # -1: bracket moved down, +1: up (a root at the shared end stops the search)
        for _ in range(64):
            at_a = (a > lo) & (x <= a * (1 + 2e-4)) & (moved <= 0)  # within the coarse tolerance (1e-4) of an end
            at_b = (b < hi) & (x >= b * (1 - 2e-4)) & (moved >= 0)
            stuck = np.nonzero(at_a | at_b)[0]
            if stuck.size == 0:
                break
            up = at_b[stuck]
            moved[stuck] = np.where(up, 1.0, -1.0)
            na = np.where(up, b[stuck], np.maximum(0.5 * a[stuck], lo[stuck]))
            nb = np.where(up, np.minimum(2.0 * b[stuck], hi[stuck]), a[stuck])

            def g_stuck(xx, act, _rows=stuck):
                return g_dg("coarse")(xx, _rows[act])

            x[stuck], dg[stuck] = _solve(g_stuck, na, nb, 0.5 * (na + nb), "variance map (coarse)", rtol=1e-4)
            a[stuck], b[stuck] = na, nb
        else:
            raise ConvergenceError("variance map: could not bracket the fixed point")
        # coarse root: Newton error ~ step^2 <~ 1e-8 after a step below 1e-4, quadrature error ~1e-6; one Newton
        # step with the fine rule takes it to ~1e-12 (checked by the residual in _polish)
        g, dg = g_dg("fine")(x, rows)
        with np.errstate(all="ignore"):
            newton = x - g / dg
        ok = np.isfinite(newton) & (newton >= a) & (newton <= b)
        Qstar[todo] = np.where(ok, newton, x)
    return Qstar, multistable


def _polish(cell, Qstar, hp, final):
    """Check the residual |Q(Q*) - Q*| of the fine rule; re-solve the points where it is not negligible."""
    chi, chi_q, F, *qs = (np.array(a, dtype=float) for a in final)
    bad = np.nonzero(np.abs(F - Qstar) > 1e-10 * np.maximum(Qstar, 1e-300))[0]
    if bad.size:
        fQ = _compiled(cell, "Q")
        sub = {k: v[bad] for k, v in hp.items()}

        def g_dg(x, act):
            F, dF = _evaluate(fQ, x, *[v[act] for v in sub.values()])
            return F - x, dF - 1.0

        # bracket from the sign of the residual, widened until it holds
        x = Qstar[bad]
        width = np.maximum(1e-6 * x, 1e-12)
        for _ in range(60):
            lo, hi = np.maximum(x - width, 0.0), x + width
            glo, _ = g_dg(lo, np.arange(bad.size))
            ghi, _ = g_dg(hi, np.arange(bad.size))
            if np.all((glo >= 0) & (ghi <= 0)):
                break
            width = np.where((glo >= 0) & (ghi <= 0), width, 4 * width)
        else:
            raise ConvergenceError("variance map: could not bracket the fixed point")
        Qstar = Qstar.copy()
        Qstar[bad], _ = _solve(g_dg, lo, hi, x, "variance map", rtol=1e-12)
        vals = _evaluate(_compiled(cell, "final"), Qstar[bad], *sub.values())
        for arr, v in zip((chi, chi_q, F, *qs), vals):
            arr[bad] = v
    return Qstar, chi, chi_q, qs


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
    return Cstar, chi_c


@dataclass
class FixedPoint:
    """A mean-field fixed point and what is derived from it; arrays of the broadcast shape of the hyperparameters.

    One class for every cell. ``Q_star``: second moment :math:`|h|^2/N` of the output state; ``q_star``: variance of
    the cell's first pre-activation (field) and ``q_stars``: ``{name: variance}`` of every one of them; ``chi``,
    ``chi_q`` and their timescales ``xi = -1/ln chi``, ``xi_q``; with ``correlations=True`` also ``C_star``,
    ``c_star``, ``chi_c``, ``xi_c``. Gated cells (:func:`mftrnn.theory.gated.gated_fixed_point`) add ``Qc_star`` (the
    carried state's second moment where it differs from the output: the LSTM's :math:`|c|^2/N`), ``M_star`` (the
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
        for k in (*self.keys, "Qc_star", "M_star"):
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
    ``multistable`` flags the points where a scan of the map on a geometric grid (ratio 2) found more
    than one; roots closer together than that grid can go unnoticed.
    """
    cell = get_cell(cell)
    if isinstance(cell, GatedCell):
        if correlations:
            raise MftrnnError(f"correlations=True is not available for the gated cell {cell.name!r}")
        from .gated import gated_fixed_point
        return gated_fixed_point(cell, **hyperparameters)
    hp = check_hyperparameters(cell, hyperparameters)
    shape = next(iter(hp.values())).shape
    flat = _flat(hp)
    Qstar, multistable = _solve_Q(cell, flat)
    final = _evaluate(_compiled(cell, "final"), Qstar, *flat.values())
    Qstar, chi, chi_q, qs = _polish(cell, Qstar, flat, final)
    for name, arr in (("Q_star", Qstar), ("chi", chi), ("chi_q", chi_q)):
        if not np.all(np.isfinite(arr)):
            raise ConvergenceError(f"non-finite {name} for cell {cell.name!r}")
    res = FixedPoint(cell.name, {k: (float(v) if v.ndim == 0 else v) for k, v in hp.items()},
                     qs[0].reshape(shape), Qstar.reshape(shape), chi.reshape(shape), chi_q.reshape(shape),
                     timescale(chi).reshape(shape), timescale(chi_q).reshape(shape),
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

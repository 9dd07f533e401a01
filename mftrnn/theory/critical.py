r"""Critical initialisation: hyperparameters on the line :math:`\chi = 1`, or with a chosen timescale :math:`\xi`.

Vanilla RNN (:func:`vanilla_critical`, formulas in :func:`vanilla_critical_line`). At the fixed point the
pre-activation :math:`e\sim\mathcal N(\mu_b, q^*)` and

.. math::

    \chi = \sigma_w^2\,\mathbb E[\tanh'(e)^2], \qquad
    q^* = \sigma_w^2 Q^* + \sigma_v^2 R + \sigma_b^2, \qquad Q^* = \mathbb E[\tanh(e)^2].

Both right-hand sides depend on :math:`\sigma_w, \sigma_v` only through :math:`q^*`, so fixing :math:`q^*` and
:math:`\mu_b` makes them explicit: :math:`\chi = 1` gives :math:`\sigma_w^2 = 1/\mathbb E[\tanh'^2]` and the fixed
point equation gives :math:`\sigma_v^2 = (q^* - \sigma_w^2 Q^* - \sigma_b^2)/R`. The target is feasible when this is
non-negative, :math:`q^* \ge \mathbb E[\tanh^2]/\mathbb E[\tanh'^2] + \sigma_b^2`. (At :math:`\mu_b = 0` the ratio
is :math:`q - O(q^3)` below :math:`q`, so every :math:`q^* > 0` is feasible without bias noise; a bias mean saturates
the units and raises the bound.)

minimalRNN (:func:`minimal_critical_mu_b`, :func:`minimal_critical_sigma_w`, :func:`minimal_for_timescale`). With
:math:`u = \sigma(e)`, :math:`e\sim\mathcal N(\mu_b, q^*)`,

.. math::

    \chi = \mathbb E[u^2] + \sigma_w^2 (Q^* + R)\,\mathbb E[u^2(1-u)^2], \qquad
    Q^* = \frac{R\,\mathbb E[(1-u)^2]}{1 - \mathbb E[u^2]} \le R.

:math:`\chi\to0` as :math:`\mu_b\to-\infty` (:math:`u\to0`, the state is the input) and :math:`\chi\to1^-` as
:math:`\mu_b\to+\infty` (:math:`u\to1`, :math:`1-\chi\approx 2\,\mathbb E[1-u]`). Below a threshold
:math:`\sigma_{w,c}` (about 3.7 at :math:`\sigma_v = R = 1, \sigma_b = 0`) :math:`\chi < 1` at every finite
:math:`\mu_b`: there is no :math:`\chi = 1` line, only the limit :math:`\mu_b\to\infty`, and any timescale
:math:`\xi = -1/\ln\chi` is reached by a large enough gate bias. Above it :math:`\chi > 1` on a window of
:math:`\mu_b` whose lower edge is the :math:`\chi = 1` boundary; at its upper edge :math:`\chi` falls below 1 again,
continuously near :math:`\sigma_{w,c}` and by a jump at larger :math:`\sigma_w`, where the variance map is
multistable and the least fixed point (the one reached from :math:`h_0=0`) switches to a small-:math:`Q^*` branch
(at the fold where that branch is born, as resolved by the engine's scan for the least root; just past the fold
the new branch has :math:`\chi_q\approx1`). :func:`minimal_for_timescale` chooses the gate bias (and
:math:`\sigma_w`) for a timescale :math:`\xi = kT` with a narrow Jacobian spectrum (criterion in its docstring).

All of these are evaluated with the engine's fixed point (:func:`mftrnn.fixed_point`), on a grid in :math:`\mu_b`
(step :data:`MU_B_STEP`) whose sign changes of :math:`\chi - \chi_{target}` are refined by bisection to
:math:`10^{-12}`; a bracket whose two ends still differ in :math:`\chi` by more than :math:`10^{-6}` at that width is
a jump of the least fixed point, not a crossing.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np
import sympy as sp

from ..cells.registry import R as R_sym
from ..cells.registry import sigma_b as sigma_b_sym
from ..cells.registry import sigma_v as sigma_v_sym
from ..cells.registry import sigma_w as sigma_w_sym
from ..cells.registry import mu_b as mu_b_sym
from ..errors import ConvergenceError, DomainError
from .fixed_point import fixed_point, timescale
from .gaussian import E
from .meanfield import Q, mean_field
from .numeric import Compiled

__all__ = ["vanilla_critical_line", "vanilla_critical", "vanilla_min_q_star", "minimal_critical_mu_b",
           "minimal_critical_sigma_w", "minimal_for_timescale", "minimal_mu_b_roots", "MU_B_STEP", "XI_MAX",
           "SIGMA_W_GRID", "MAX_SPREAD", "MAX_SCAN_POINTS"]

#: grid step in mu_b of the scans for chi = target (features narrower than this can be missed)
MU_B_STEP = 0.05
#: largest timescale minimal_for_timescale accepts: it needs mu_b ~ ln(2 xi) + q/2, and the fixed point at
#: mu_b much above ~20 (Q* ~ exp(-mu_b)) is beyond the engine's reliable range
XI_MAX = 1e6
#: default grid of sigma_w over which minimal_for_timescale chooses the recurrent weight scale: up to 3, below the
#: chaotic window (sigma_w > 3.66 at sigma_v = R = 1) and where tied weights still follow the mean field to ~7%
SIGMA_W_GRID = tuple(np.round(np.arange(1, 13) * 0.25, 4))
#: default bound on the T-step relative spectral variance T*r in minimal_for_timescale
MAX_SPREAD = 0.1
#: most points of a scan in mu_b (per sigma_w; step MU_B_STEP). The scan range grows with the pre-activation
#: variance (the gate bias must exceed ~q/2), so this bounds it to q_in = sigma_v^2 R + sigma_b^2 below ~900 and
#: sigma_w^2 R below ~1e5; larger values are refused with a DomainError before anything is allocated
MAX_SCAN_POINTS = 20_000
_ROOT_XTOL = 1e-12  # bisection width (relative to max(1, |mu_b|))
_JUMP_TOL = 1e-6    # |chi(a) - chi(b)| above this across a bracket of width _ROOT_XTOL: a jump, not a root


# ======================================================================================= vanilla RNN

def _solve_for(eq, var):
    """Solve a SymPy equation containing Gaussian expectations for ``var`` (the expectations held as symbols)."""
    nodes = eq.atoms(E)
    held = {n: sp.Dummy(positive=True) for n in nodes}
    sols = sp.solve(eq.xreplace(held), var, dict=True)
    back = {v: k for k, v in held.items()}
    out = [s[var].xreplace(back) for s in sols]
    if len(out) > 1 and var.is_nonnegative:  # +-sqrt(...) for a standard deviation: the non-negative root
        out = [s for s in out if not s.could_extract_minus_sign()]
    return out


@functools.lru_cache(maxsize=None)
def activation_cell(cell):
    r"""The registered cell if it is a vanilla RNN with some activation, :math:`h_t=\phi(e_t)`,
    :math:`e_t=Wh_{t-1}+Vx_t+b` (one pre-activation of the plain state; the update depends on :math:`e` alone), else
    None. The vanilla critical line (:func:`vanilla_critical`) holds for every such cell with :math:`\tanh\to\phi`."""
    from ..cells.registry import Cell, get_cell

    try:
        c = get_cell(cell)
    except Exception:
        return None
    if not isinstance(c, Cell) or len(c.preactivations) != 1 or c.preactivations[0].recurrent_input is not None:
        return None
    (p,) = c.preactivations
    return c if sp.sympify(c.update).free_symbols == {p.symbol} else None


def _activation_name(cell) -> str:
    """``tanh``, ``relu``, ``erf``... for ``h = f(e)``; ``phi`` otherwise (e.g. the linear cell)."""
    u = sp.sympify(cell.update)
    return type(u).__name__ if isinstance(u, sp.Function) and len(u.args) == 1 else "phi"


def _checked_activation_cell(cell):
    c = activation_cell(cell)
    if c is None:
        raise DomainError(f"{cell!r} is not a vanilla RNN h_t = phi(W h_(t-1) + V x_t + b) with one activation")
    return c


def vanilla_critical_line(cell="vanilla") -> dict:
    r"""The vanilla RNN's critical line as SymPy expressions in :math:`q` (the pre-activation variance
    :math:`q^*`), :math:`\mu_b`, :math:`\sigma_b`, :math:`R`, derived from :func:`mftrnn.mean_field`; ``cell``: any
    cell :math:`h_t=\phi(e_t)` of the vanilla form (:func:`activation_cell`), with :math:`\tanh\to\phi` below.

    Keys: ``q`` (the symbol), ``sigma_w`` (:math:`\chi = 1` solved for :math:`\sigma_w`), ``Q_star``
    (:math:`\mathbb E[\tanh^2]`, the variance map at :math:`q^*`), ``sigma_v2`` (the fixed-point equation
    :math:`q = \sigma_w^2 Q^* + \sigma_v^2 R + \sigma_b^2` solved for :math:`\sigma_v^2`), ``q_min`` (the
    feasibility bound :math:`\sigma_w^2 Q^* + \sigma_b^2`: :math:`\sigma_v^2\ge0` iff :math:`q^*\ge q_{min}`), and
    ``chi_q`` (the variance map's slope there; :math:`<1`: the fixed point is stable).
    """
    m = mean_field(_checked_activation_cell(cell))
    (q,) = m.q_of_Q
    chi = m.display(m.chi)  # sigma_w^2 E[tanh'(e)^2], e ~ N(mu_b, q)
    (sw,) = _solve_for(sp.Eq(chi, 1), sigma_w_sym)
    Q_star = m.display(m.Q_map)  # the variance map at q: E[tanh(e)^2]
    s2 = sp.Symbol("s2", real=True)
    fixed_point_eq = sp.Eq(q, m.q_of_Q[q].subs(Q, Q_star).subs(sigma_w_sym, sw).subs(sigma_v_sym ** 2, s2))
    (sv2,) = _solve_for(fixed_point_eq, s2)
    q_min = (sw ** 2 * Q_star + sigma_b_sym ** 2)
    chi_q = m.display(m.chi_q).subs(sigma_w_sym, sw)
    return {"q": q, "sigma_w": sw, "Q_star": Q_star, "sigma_v2": sv2, "q_min": q_min, "chi_q": chi_q}


def _vanilla_compiled(cell="vanilla") -> Compiled:
    return _vanilla_compiled_cell(_checked_activation_cell(cell))


@functools.lru_cache(maxsize=None)
def _vanilla_compiled_cell(cell) -> Compiled:
    line = vanilla_critical_line(cell)
    # sigma_v^2 R (not sigma_v^2): finite at R = 0, where it must vanish
    exprs = [line["sigma_w"], line["Q_star"], sp.simplify(line["sigma_v2"] * R_sym), line["q_min"], line["chi_q"]]
    return Compiled(exprs, [line["q"], mu_b_sym, sigma_b_sym, R_sym])


def _as_array(name, value, positive=False, nonnegative=False):
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise DomainError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if not np.all(np.isfinite(a)):
        raise DomainError(f"{name} must be finite, got {value!r}")
    if positive and np.any(a <= 0):
        raise DomainError(f"{name} must be > 0, got {value!r}")
    if nonnegative and np.any(a < 0):
        raise DomainError(f"{name} must be >= 0, got {value!r}")
    return a


def _out(a, scalar):
    """Python float/bool for scalar inputs, arrays otherwise."""
    a = np.asarray(a)
    if scalar:
        return bool(a) if a.dtype == bool else float(a)
    return a


def _first(mask):
    return np.unravel_index(int(np.argmax(mask)), mask.shape)


def _least_feasible(mu, sb, cell="vanilla"):
    try:
        return (f"; the least feasible q* at these mu_b, sigma_b is "
                f"{vanilla_min_q_star(mu_b=mu, sigma_b=sb, cell=cell):.6g}")
    except DomainError as exc:
        return f"; {exc}"


def vanilla_critical(q_star, *, mu_b=0.0, sigma_b=0.0, R=1.0, cell="vanilla") -> dict:
    r"""Vanilla RNN hyperparameters on the critical line :math:`\chi = 1` with fixed point :math:`q^*`.

    .. math::

        \sigma_w^2 = \frac{1}{\mathbb E[\tanh'(e)^2]}, \qquad
        \sigma_v^2 = \frac{q^* - \sigma_w^2\,\mathbb E[\tanh(e)^2] - \sigma_b^2}{R}, \qquad
        e\sim\mathcal N(\mu_b, q^*)

    (:func:`vanilla_critical_line` derives them from :func:`mftrnn.mean_field`). Vectorised: ``q_star``, ``mu_b``,
    ``sigma_b``, ``R`` broadcast together.

    Returns a dict with ``sigma_w, sigma_v, sigma_b, mu_b, R, q_star, Q_star, chi, xi`` and ``chi_q``,
    ``multistable``. ``chi``, ``chi_q`` and ``multistable`` come from :func:`mftrnn.fixed_point` at the chosen
    hyperparameters, which is also checked to return ``q_star`` (relative :math:`10^{-8}/(1-\chi_q)`, the
    conditioning of the variance map's root, at most 1e-2 as :math:`q^*\to0`); ``chi`` is then 1 to ~1e-10 and
    ``xi`` is reported as infinite (a finite value would be round-off).

    Raises :class:`~mftrnn.DomainError` where the target is infeasible: :math:`\sigma_v^2 < 0`, i.e.
    :math:`q^* < \mathbb E[\tanh^2]/\mathbb E[\tanh'^2] + \sigma_b^2`; with :math:`R = 0` (no input) unless
    :math:`q^*` equals that bound (then :math:`\sigma_v` is irrelevant and reported as 0); and where the variance map
    has a smaller stable fixed point than :math:`q^*` (the network would settle there instead).

    ``cell``: any vanilla-form cell :math:`h_t=\phi(e_t)` (:func:`activation_cell`; ``tanh`` becomes :math:`\phi` in
    the formulas and messages). ReLU at :math:`\mu_b=0`: :math:`\chi=\sigma_w^2/2` and :math:`Q^*=q^*/2` for every
    :math:`q^*`, so :math:`\sigma_w^2=2` and :math:`\sigma_v^2R=-\sigma_b^2`: no input can enter a critical ReLU
    network without a negative bias mean (refused: the slack is :math:`\le 0`).
    """
    c = _checked_activation_cell(cell)
    act = _activation_name(c)
    q = _as_array("q_star", q_star, positive=True)
    mu = _as_array("mu_b", mu_b)
    sb = _as_array("sigma_b", sigma_b, nonnegative=True)
    r = _as_array("R", R, nonnegative=True)
    scalar = all(a.ndim == 0 for a in (q, mu, sb, r))
    try:
        q, mu, sb, r = np.broadcast_arrays(q, mu, sb, r)
    except ValueError:
        raise DomainError("q_star, mu_b, sigma_b, R have incompatible shapes") from None
    try:
        with np.errstate(all="ignore"):
            sw, Qs, sv2R, q_min, chi_q = _vanilla_compiled(c)(q, mu, sb, r)
    except OverflowError as exc:
        raise DomainError(f"{exc}; reduce q_star") from None
    if not (np.all(np.isfinite(sw)) and np.all(np.isfinite(sv2R))):
        i = _first(~(np.isfinite(sw) & np.isfinite(sv2R)))
        raise DomainError(f"E[{act}'(e)^2] underflows at q_star={q[i]:.6g}, mu_b={mu[i]:.6g}: the units are "
                          "saturated and no finite sigma_w gives chi = 1")
    marginal = ~(chi_q < 1 - 1e-9)
    if np.any(marginal):
        i = _first(marginal)
        raise DomainError(
            f"chi = 1 at q_star={q[i]:.6g}, mu_b={mu[i]:.6g} makes the variance map's slope chi_q = {chi_q[i]:.6g} "
            f">= 1: the fixed point is not stable, so no {act} network settles on the critical line there"
            + (" (for this activation chi_q = chi at every q)" if abs(chi_q[i] - 1) < 1e-9 else ""))
    slack = 1e-12 * q  # round-off allowance of q* - q_min
    # sigma_v^2 R = 0 with R > 0 leaves no input: only for a map with chi_q < 1 is q* then a stable fixed point
    bad = sv2R < -slack
    if np.any(bad):
        i = _first(bad)
        raise DomainError(
            f"q_star={q[i]:.6g} is infeasible at mu_b={mu[i]:.6g}, sigma_b={sb[i]:.6g}: chi = 1 needs "
            f"q* >= E[{act}^2]/E[{act}'^2] + sigma_b^2 = {q_min[i]:.6g} there (sigma_v^2 would be negative)"
            + _least_feasible(mu[i], sb[i], c)
            + ("" if bad.size == 1 else f"; {int(bad.sum())} of {bad.size} points are infeasible"))
    zero_R = r == 0
    mismatch = zero_R & (np.abs(sv2R) > slack)
    if np.any(mismatch):
        i = _first(mismatch)
        hint = (f"; at this q* use sigma_b = {math.sqrt(q[i] - q_min[i] + sb[i] ** 2):.6g}"
                if q[i] - q_min[i] + sb[i] ** 2 > 0 else "")
        raise DomainError(
            f"with R = 0 (no input) the critical fixed point is set by sigma_b alone: q_star={q[i]:.6g} needs "
            f"q* = E[{act}^2]/E[{act}'^2] + sigma_b^2 = {q_min[i]:.6g}{hint}, or give R > 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        sv = np.where(zero_R, 0.0, np.sqrt(np.maximum(sv2R, 0.0) / np.where(zero_R, 1.0, r)))
    fp = fixed_point(c, sigma_w=sw, sigma_v=sv, sigma_b=sb, mu_b=mu, R=r)
    # a residual e of the variance map moves its root by e/(1 - chi_q): ill-conditioned as q* -> 0 (chi_q -> 1)
    with np.errstate(divide="ignore"):
        tol = np.minimum(1e-8 / np.maximum(1.0 - chi_q, 0.0), 1e-2)
    off = np.abs(fp.q_star - q) > tol * q
    if np.any(off):
        i = _first(off)
        raise DomainError(
            f"q_star={q[i]:.6g} at mu_b={mu[i]:.6g} is a fixed point with chi = 1, but the variance map has a "
            f"smaller stable fixed point q = {fp.q_star[i]:.10g} that a network started from h_0 = 0 settles in")
    chi = fp.chi
    xi = timescale(np.where(np.abs(chi - 1) <= 1e-9, 1.0, chi))
    out = {"sigma_w": sw, "sigma_v": sv, "sigma_b": sb, "mu_b": mu, "R": r, "q_star": q, "Q_star": Qs,
           "chi": chi, "xi": xi, "chi_q": chi_q, "multistable": fp.multistable}
    return {k: _out(v, scalar) for k, v in out.items()}


def vanilla_min_q_star(*, mu_b=0.0, sigma_b=0.0, cell="vanilla") -> float:
    r"""The least feasible target :math:`q^*` of :func:`vanilla_critical` at this :math:`\mu_b, \sigma_b`: the root of
    :math:`q - \mathbb E[\tanh^2]/\mathbb E[\tanh'^2] - \sigma_b^2 = 0` (:math:`\sigma_v = 0`; the sign of
    :math:`\sigma_v^2` does not depend on :math:`R`), found by a scan of :math:`q\in[10^{-8}, 10^{6}]` (geometric,
    ratio ~1.1) and Brent's method. Returns 0.0 when every :math:`q^* > 0` on the scan is feasible (:math:`\mu_b = 0,
    \sigma_b = 0`: the slack is :math:`O(q^3)`, positive). Raises :class:`~mftrnn.DomainError` if none is, or if
    the feasible set is not a single interval :math:`q^*\ge q_{min}` on the scan.
    """
    from scipy.optimize import brentq

    mu = float(_as_array("mu_b", mu_b))
    sb = float(_as_array("sigma_b", sigma_b, nonnegative=True))
    fn = _vanilla_compiled(cell)

    def slack(q):
        with np.errstate(all="ignore"):
            return fn(q, mu, sb, 1.0)[2]

    qs = np.geomspace(1e-8, 1e3, 230)
    f = slack(qs)
    ok = np.isfinite(f) & (f >= -1e-12 * qs)  # round-off allowance, as in vanilla_critical
    if ok.all():
        return 0.0
    if not ok.any():
        raise DomainError(f"no q* in [1e-8, 1e3] is feasible at mu_b={mu:g}, sigma_b={sb:g}")
    j = int(np.argmax(ok))
    if not ok[j:].all():
        raise DomainError(f"the feasible q* at mu_b={mu:g}, sigma_b={sb:g} do not form one interval q* >= q_min")
    return float(brentq(lambda q: float(slack(np.array(q))), qs[j - 1], qs[j], xtol=1e-14, rtol=1e-12))


# ======================================================================================= minimalRNN

def _minimal_hp(name, sigma_v, sigma_b, R):
    vals = {"sigma_v": sigma_v, "sigma_b": sigma_b, "R": R}
    out = {}
    for k, v in vals.items():
        a = _as_array(k, v, nonnegative=True)
        if a.ndim:
            raise DomainError(f"{name} takes scalar {k}, got an array of shape {a.shape}")
        out[k] = float(a)
    return out


def _minimal_fp(sigma_w, mu_b, fixed):
    """fixed_point('minimal') on flat arrays; points where the engine does not converge are isolated (by halving
    the batch) and returned as NaN, so that one hard point does not sink a scan."""
    sigma_w, mu_b = np.broadcast_arrays(np.asarray(sigma_w, float), np.asarray(mu_b, float))
    sigma_w, mu_b = sigma_w.ravel(), mu_b.ravel()
    keys = ("chi", "q_star", "Q_star", "chi_q", "multistable")
    out = {k: np.full(sigma_w.size, np.nan) for k in keys}

    def run(idx):
        try:
            fp = fixed_point("minimal", sigma_w=sigma_w[idx], mu_b=mu_b[idx], **fixed)
        except ConvergenceError:
            if idx.size == 1:
                return
            h = idx.size // 2
            run(idx[:h])
            run(idx[h:])
            return
        for k in keys:
            out[k][idx] = getattr(fp, k)

    run(np.arange(sigma_w.size))
    return out


def _mu_b_range(sigma_w, fixed, xi_target=None):
    r"""Scan range in mu_b. Lower end: the gate is shut (u ~ 0) when mu_b is several standard deviations
    sqrt(q) below 0, with q <= q_max = (sigma_w^2 + sigma_v^2) R + sigma_b^2 since Q* <= R. Upper end: beyond
    the chaotic window (which ends below ~8 + q_in at the sigma_w of interest, q_in = sigma_v^2 R + sigma_b^2)
    and beyond the gate bias ln(2 xi) + q_in/2 that gives 1 - chi ~ 1/xi on the small-Q* branch."""
    R, sv, sb = fixed["R"], fixed["sigma_v"], fixed["sigma_b"]
    q_in = sv ** 2 * R + sb ** 2
    q_max = (float(np.max(sigma_w)) ** 2 + sv ** 2) * R + sb ** 2
    lo = -(3.0 * math.sqrt(q_max) + 6.0)
    hi = 10.0 + q_in
    if xi_target is not None:
        hi = max(hi, math.log(2.0 * xi_target) + q_in + 4.0)
    return lo, hi


def _scan_points(lo: float, hi: float, fixed: dict, sigma_w=None) -> int:
    """Number of points of a mu_b scan over [lo, hi] at step MU_B_STEP; DomainError above MAX_SCAN_POINTS."""
    num = (hi - lo) / MU_B_STEP
    if not (math.isfinite(num) and num + 1 <= MAX_SCAN_POINTS):
        sw = "" if sigma_w is None else f"sigma_w={float(np.max(sigma_w)):g}, "
        raise DomainError(f"pre-activation variance too large for the scan in mu_b ({sw}{_describe(fixed)}): "
                          f"mu_b in [{lo:.4g}, {hi:.4g}] needs {num:.3g} points of step {MU_B_STEP}, at most "
                          f"{MAX_SCAN_POINTS} (about sigma_v^2 R + sigma_b^2 <= 900 and sigma_w^2 R <= 1e5)")
    return int(math.ceil(num)) + 1


def minimal_mu_b_roots(sigma_w, chi_target, *, sigma_v=1.0, sigma_b=0.0, R=1.0, mu_b_range=None) -> list:
    r"""All gate biases :math:`\mu_b` where the minimalRNN's :math:`\chi` (at its least stable fixed point) crosses
    ``chi_target``, for each ``sigma_w`` (scalar or 1-d array).

    Returns a list of dicts, one per crossing, ordered by ``sigma_w`` then ``mu_b``: ``sigma_w``, ``mu_b``,
    ``direction`` (+1: :math:`\chi` rises through the target as :math:`\mu_b` grows, -1: falls), ``continuous``
    (False: :math:`\chi` jumps over the target where the least fixed point switches branch; ``mu_b`` is then the
    location of the jump) and ``chi_below``, ``chi_above`` (:math:`\chi` just below and above ``mu_b``). The scan
    (step :data:`MU_B_STEP`) covers ``mu_b_range`` (default: from where the gates are shut to beyond the chaotic
    window); points where the engine's fixed point fails are skipped.
    """
    fixed = _minimal_hp("minimal_mu_b_roots", sigma_v, sigma_b, R)
    sw = _as_array("sigma_w", sigma_w, nonnegative=True)
    if sw.ndim > 1:
        raise DomainError("sigma_w must be a scalar or a 1-d array")
    sw = np.atleast_1d(sw)
    target = float(chi_target)
    if not 0 < target < math.inf:
        raise DomainError(f"chi_target must be positive and finite, got {chi_target!r}")
    if mu_b_range is None:
        lo, hi = _mu_b_range(sw, fixed)
    else:
        lo, hi = (float(v) for v in _as_array("mu_b_range", mu_b_range).reshape(2))
        if not lo < hi:
            raise DomainError(f"mu_b_range must be (lo, hi) with lo < hi, got {mu_b_range!r}")
    num = _scan_points(lo, hi, fixed, sw)
    mu = np.linspace(lo, hi, num)
    res = _minimal_fp(sw[:, None], mu[None, :], fixed)
    g = (res["chi"] - target).reshape(sw.size, num)
    brackets = []  # (row, a, b, g_a, g_b)
    for i in range(sw.size):
        ok = np.flatnonzero(np.isfinite(g[i]))
        gi = g[i, ok]
        s = np.flatnonzero((gi[:-1] < 0) != (gi[1:] < 0))
        brackets += [(i, mu[ok[j]], mu[ok[j + 1]], gi[j], gi[j + 1]) for j in s]
    if not brackets:
        return []
    rows = np.array([b[0] for b in brackets])
    a = np.array([b[1] for b in brackets])
    b = np.array([b[2] for b in brackets])
    ga = np.array([b_[3] for b_ in brackets])
    gb = np.array([b_[4] for b_ in brackets])
    # vectorised bisection; keeps g(a) and g(b) of opposite signs (a NaN midpoint halves towards a)
    for _ in range(80):
        width = b - a
        act = width > _ROOT_XTOL * np.maximum(1.0, np.abs(a))
        if not act.any():
            break
        m = 0.5 * (a + b)
        gm = np.full(m.shape, np.nan)
        gm[act] = _minimal_fp(sw[rows[act]], m[act], fixed)["chi"] - target
        nan = act & ~np.isfinite(gm)
        same_a = act & np.isfinite(gm) & ((gm < 0) == (ga < 0))
        other = act & np.isfinite(gm) & ~same_a
        a, ga = np.where(same_a, m, a), np.where(same_a, gm, ga)
        b, gb = np.where(other | nan, m, b), np.where(other, gm, gb)
        if nan.any():  # the engine failed at the midpoint: give up on that bracket
            b[nan], gb[nan] = a[nan], np.nan
    out = []
    for j in range(rows.size):
        if not np.isfinite(gb[j]):
            continue
        cont = abs(ga[j] - gb[j]) < _JUMP_TOL
        root = a[j] if abs(ga[j]) <= abs(gb[j]) else b[j]
        out.append({"sigma_w": float(sw[rows[j]]), "mu_b": float(root), "direction": 1 if gb[j] > ga[j] else -1,
                    "continuous": bool(cont), "chi_below": float(ga[j] + target),
                    "chi_above": float(gb[j] + target)})
    return out


def _point(sigma_w, mu_b, fixed):
    fp = fixed_point("minimal", sigma_w=sigma_w, mu_b=mu_b, **fixed)
    return {"q_star": float(fp.q_star), "Q_star": float(fp.Q_star), "chi": float(fp.chi),
            "chi_q": float(fp.chi_q), "multistable": bool(fp.multistable)}


def _max_local_chi(sigma_w, fixed):
    """Largest interior local maximum of chi over mu_b (the top of the chaotic window, or of the bump below
    it); -inf if chi has none (it then rises monotonically to 1)."""
    from scipy.optimize import minimize_scalar

    lo, hi = _mu_b_range(sigma_w, fixed)
    _scan_points(lo, hi, fixed, sigma_w)
    mu = np.arange(lo, hi + MU_B_STEP / 2, MU_B_STEP)
    chi = _minimal_fp(np.full(mu.size, sigma_w), mu, fixed)["chi"]
    inner = np.flatnonzero((chi[1:-1] >= chi[:-2]) & (chi[1:-1] > chi[2:]) & np.isfinite(chi[1:-1])) + 1
    if inner.size == 0:
        return -math.inf, math.nan
    j = inner[np.argmax(chi[inner])]

    def neg(m):
        c = _minimal_fp(sigma_w, m, fixed)["chi"][0]
        return -c if np.isfinite(c) else math.inf

    r = minimize_scalar(neg, bounds=(mu[j - 1], mu[j + 1]), method="bounded", options={"xatol": 1e-9})
    return -float(r.fun), float(r.x)


def minimal_critical_sigma_w(*, sigma_v=1.0, sigma_b=0.0, R=1.0) -> float:
    r"""The least :math:`\sigma_w` at which the minimalRNN has a :math:`\chi = 1` point at finite :math:`\mu_b`.

    Below it :math:`\chi < 1` for every :math:`\mu_b` (tending to 1 only as :math:`\mu_b\to\infty`); at it the top
    of a bump of :math:`\chi(\mu_b)` touches 1. Found by Brent's method on :math:`\max_{\mu_b}\chi - 1` (the
    maximum over interior local maxima, refined by a bounded scalar search), to relative 1e-6 in
    :math:`\sigma_w`. Raises :class:`~mftrnn.DomainError` when there is none below :math:`\sigma_w = 100`.
    """
    from scipy.optimize import brentq

    fixed = _minimal_hp("minimal_critical_sigma_w", sigma_v, sigma_b, R)

    def f(sw):
        return _max_local_chi(sw, fixed)[0] - 1.0

    lo, hi = 0.25, 1.0
    while f(hi) <= 0:
        lo, hi = hi, 2 * hi
        if hi > 100:
            raise DomainError(f"no chi = 1 point of the minimalRNN at finite mu_b for sigma_w <= 100 "
                              f"({_describe(fixed)})")
    if f(lo) > 0:
        raise DomainError(f"the minimalRNN has a chi = 1 point already at sigma_w = {lo} ({_describe(fixed)}); "
                          "no threshold above it")
    return float(brentq(f, lo, hi, xtol=1e-12, rtol=1e-6))


def _describe(d):
    return ", ".join(f"{k}={v:g}" for k, v in d.items())


def minimal_critical_mu_b(sigma_w, *, sigma_v=1.0, sigma_b=0.0, R=1.0) -> dict:
    r"""The minimalRNN's :math:`\chi = 1` boundary in :math:`(\sigma_w, \mu_b)`: the gate bias at which, for this
    :math:`\sigma_w`, :math:`\chi` first rises through 1 (order to chaos as :math:`\mu_b` grows).

    Returns ``sigma_w, sigma_v, sigma_b, R, mu_b`` and the fixed point there (``q_star, Q_star, chi, chi_q, xi,
    multistable``; ``chi`` = 1 to ~1e-12, ``xi`` infinite), plus the other end of the chaotic window:
    ``mu_b_upper`` (where :math:`\chi` falls below 1 again) and ``upper_continuous`` (False where it does so by a
    jump of the least fixed point to the small-:math:`Q^*` branch; ``mu_b_upper`` is then the jump, located to the
    resolution of the engine's scan for the least root, see :func:`mftrnn.fixed_point`).

    Raises :class:`~mftrnn.DomainError` where there is no such point: below :math:`\sigma_{w,c}`
    (:func:`minimal_critical_sigma_w`) :math:`\chi < 1` at every finite :math:`\mu_b`.
    """
    fixed = _minimal_hp("minimal_critical_mu_b", sigma_v, sigma_b, R)
    sw = _as_array("sigma_w", sigma_w, nonnegative=True)
    if sw.ndim:
        raise DomainError("minimal_critical_mu_b takes a scalar sigma_w")
    sw = float(sw)
    roots = minimal_mu_b_roots(sw, 1.0, **fixed)
    ups = [r for r in roots if r["direction"] > 0 and r["continuous"]]
    if not ups:
        top, at = _max_local_chi(sw, fixed)
        where = (f"its largest local maximum is chi = {top:.6g} at mu_b = {at:.4g}" if math.isfinite(top)
                 else "chi rises monotonically")
        try:
            swc = f"; the boundary exists for sigma_w > {minimal_critical_sigma_w(**fixed):.6g}"
        except DomainError:
            swc = ""
        raise DomainError(f"the minimalRNN has no chi = 1 point at sigma_w = {sw:g} ({_describe(fixed)}): chi < 1 "
                          f"for every finite mu_b ({where}; chi -> 1 only as mu_b -> inf){swc}")
    lower = ups[0]
    downs = [r for r in roots if r["direction"] < 0 and r["mu_b"] > lower["mu_b"]]
    out = {"sigma_w": sw, **fixed, "mu_b": lower["mu_b"]}
    out.update(_point(sw, lower["mu_b"], fixed))
    out["xi"] = math.inf
    out["mu_b_upper"] = downs[0]["mu_b"] if downs else math.inf
    out["upper_continuous"] = bool(downs[0]["continuous"]) if downs else False
    return out


def minimal_for_timescale(T, *, k=1.0, sigma_w=None, sigma_v=1.0, sigma_b=0.0, R=1.0, orthogonal=True,
                          sigma_w_grid=None, max_spread=MAX_SPREAD) -> dict:
    r"""minimalRNN hyperparameters with timescale :math:`\xi = kT` (so :math:`\xi \ge kT`) for a task of length
    :math:`T`, with a narrow Jacobian spectrum.

    The target is :math:`\chi^* = e^{-1/(kT)}`. For each candidate :math:`\sigma_w` (``sigma_w``, or every value of
    ``sigma_w_grid``, default :data:`SIGMA_W_GRID`) the gate biases with :math:`\chi(\mu_b) = \chi^*` are found
    (:func:`minimal_mu_b_roots`; continuous crossings of the least stable fixed point only). Each candidate has a
    per-step relative spectral variance :math:`r = \mathrm{Var}(\lambda)/\mathbb E[\lambda]^2` of :math:`J_tJ_t^\top`
    (:func:`mftrnn.theory.jacobian.step_moments`, orthogonal or Gaussian :math:`W`); over the :math:`T` steps of the task
    the relative variance of the squared singular values of the product is :math:`Tr` (free probability,
    :func:`mftrnn.theory.jacobian.product_moments`), the ``spread``.

    Criterion: among the candidates with ``spread`` :math:`Tr \le` ``max_spread`` (default :data:`MAX_SPREAD`: the
    squared singular values of the whole task's Jacobian within ~30% of their mean), the **largest**
    :math:`\sigma_w` (the strongest state dependence of the gate that is still near-isometric; for one
    :math:`\sigma_w` with several roots, the narrowest). If none is that narrow, the narrowest candidate, with
    ``narrow=False``. Candidates on a multistable fixed point are used only if no other exists. Why not simply
    the narrowest: :math:`r` grows monotonically with :math:`\sigma_w` (the :math:`W` term adds spread to the
    input-driven spread of the gates), so minimising :math:`r` always returns the grid's smallest
    :math:`\sigma_w`, i.e. gates that ignore the state as the grid is refined towards :math:`\sigma_w = 0`.

    Returns ``sigma_w, sigma_v, sigma_b, mu_b, R, T, k, orthogonal, q_star, Q_star, chi, chi_q, xi, multistable``
    and ``relative_variance`` (:math:`r`), ``spread`` (:math:`Tr`), ``narrow`` (``spread <= max_spread``),
    ``max_spread``, ``candidates`` (how many were compared). Raises :class:`~mftrnn.DomainError` for bad input,
    :math:`R = 0`, or :math:`kT >` :data:`XI_MAX`.
    """
    fixed = _minimal_hp("minimal_for_timescale", sigma_v, sigma_b, R)
    T_ = _as_array("T", T, positive=True)
    k_ = _as_array("k", k, positive=True)
    ms = _as_array("max_spread", max_spread, positive=True)
    if T_.ndim or k_.ndim or ms.ndim:
        raise DomainError("minimal_for_timescale takes scalar T, k and max_spread")
    T_, k_, ms = float(T_), float(k_), float(ms)
    xi_target = k_ * T_
    if xi_target > XI_MAX:
        raise DomainError(f"k*T = {xi_target:g} exceeds {XI_MAX:g}: the gate bias it needs, ~ln(2 k T), is beyond "
                          "the range where the fixed point is computed reliably")
    if fixed["R"] == 0:
        raise DomainError("R = 0: without input the minimalRNN's state decays to Q* = 0 and chi is the gate's "
                          "E[u^2]; give R > 0")
    chi_target = math.exp(-1.0 / xi_target)
    if sigma_w is not None:
        sw = _as_array("sigma_w", sigma_w, nonnegative=True)
        if sw.ndim:
            raise DomainError("sigma_w must be a scalar (use sigma_w_grid for several)")
        grid = np.array([float(sw)])
    else:
        grid = _as_array("sigma_w_grid", SIGMA_W_GRID if sigma_w_grid is None else sigma_w_grid, nonnegative=True)
        grid = np.atleast_1d(grid).ravel()
        if grid.size == 0:
            raise DomainError("sigma_w_grid is empty")
    rng = _mu_b_range(grid, fixed, xi_target)
    roots = [r for r in minimal_mu_b_roots(grid, chi_target, **fixed, mu_b_range=rng) if r["continuous"]]
    if not roots:
        raise DomainError(f"no gate bias gives xi = {xi_target:g} at sigma_w in {np.round(grid, 4).tolist()} "
                          f"({_describe(fixed)})")
    sws = np.array([r["sigma_w"] for r in roots])
    mus = np.array([r["mu_b"] for r in roots])
    rel = np.asarray(_step_moments(sws, mus, fixed, orthogonal)["relative_variance"], float).reshape(sws.shape)
    pts = _minimal_fp(sws, mus, fixed)
    ok = np.isfinite(rel) & np.isfinite(pts["chi"])
    if not ok.any():
        raise DomainError(f"the Jacobian moments are not finite at any candidate ({_describe(fixed)})")
    multi = pts["multistable"].astype(bool)
    if (ok & ~multi).any():
        ok &= ~multi
    narrow = ok & (T_ * rel <= ms)
    if narrow.any():
        top = np.max(sws[narrow])
        pool = narrow & (sws == top)
    else:
        pool = ok
    j = int(np.argmin(np.where(pool, rel, np.inf)))
    chi = float(pts["chi"][j])
    return {"sigma_w": float(sws[j]), "sigma_v": fixed["sigma_v"], "sigma_b": fixed["sigma_b"], "mu_b": float(mus[j]),
            "R": fixed["R"], "T": T_, "k": k_, "orthogonal": bool(orthogonal),
            "q_star": float(pts["q_star"][j]), "Q_star": float(pts["Q_star"][j]), "chi": chi,
            "chi_q": float(pts["chi_q"][j]), "xi": float(timescale(chi)), "multistable": bool(multi[j]),
            "relative_variance": float(rel[j]), "spread": float(T_ * rel[j]), "narrow": bool(narrow.any()),
            "max_spread": ms, "candidates": int(sws.size)}


def _step_moments(sigma_w, mu_b, fixed, orthogonal):
    """Moments of the spectrum of J_t J_t^T from :mod:`mftrnn.theory.jacobian` (vectorised)."""
    from .jacobian import step_moments

    return step_moments("minimal", orthogonal=bool(orthogonal), sigma_w=sigma_w, mu_b=mu_b, **fixed)


# --------------------------------------------------------------------------- the closed forms by cell
@dataclasses.dataclass(frozen=True)
class CriticalRecipe:
    r"""One way of choosing a cell's hyperparameters by a closed form of this module (the table the command line
    ``mftrnn critical`` reads: :func:`critical_recipes`).

    ``key`` is the hyperparameter that selects the recipe (``q_star``, ``T``, ``sigma_w``), described by
    ``metavar`` and ``meaning`` (``--KEY METAVAR (MEANING)``); ``integer``: it must be an integer >= 1.
    ``function(value, **options)`` computes the choice, taking ``options`` (the other hyperparameters it accepts;
    a recipe with ``weights`` also takes ``orthogonal``: its result depends on the recurrent weights' ensemble);
    ``chosen`` says why the other options are refused; ``title(given, result)`` describes the result.
    """

    cell: str
    key: str
    metavar: str
    meaning: str
    function: Callable
    options: tuple
    chosen: str
    title: Callable
    integer: bool = False
    weights: bool = False


_RECIPES: dict[str, list] = {}


def register_critical_recipe(recipe: CriticalRecipe) -> CriticalRecipe:
    """Add a recipe for ``recipe.cell`` (tried in the order of registration)."""
    _RECIPES.setdefault(recipe.cell, []).append(recipe)
    return recipe


def critical_recipes(cell: str | None = None) -> tuple:
    r"""The :class:`CriticalRecipe` s of ``cell`` (empty when it has none), or of every cell. A cell without a
    registered recipe that has the vanilla form :math:`h_t=\phi(e_t)` (:func:`activation_cell`) gets the vanilla
    recipe (:func:`vanilla_critical` with ``cell``)."""
    if cell is None:
        return tuple(r for rs in _RECIPES.values() for r in rs)
    found = tuple(_RECIPES.get(cell, ()))
    if not found and isinstance(cell, str) and activation_cell(cell) is not None:
        found = (_activation_recipe(cell),)
    return found


def _activation_recipe(cell: str) -> CriticalRecipe:
    return CriticalRecipe(
        cell=cell, key="q_star", metavar="X",
        meaning="the fixed point's pre-activation variance; chi = 1 fixes sigma_w and sigma_v",
        function=functools.partial(vanilla_critical, cell=cell), options=("mu_b", "sigma_b", "R"),
        chosen="(sigma_w and sigma_v are chosen; the critical line has xi = inf)",
        title=lambda given, result: f"{cell} RNN on the critical line chi = 1 with q* = {given['q_star']:g}")


register_critical_recipe(CriticalRecipe(
    cell="vanilla", key="q_star", metavar="X",
    meaning="the fixed point's pre-activation variance; chi = 1 fixes sigma_w and sigma_v",
    function=vanilla_critical, options=("mu_b", "sigma_b", "R"),
    chosen="(sigma_w and sigma_v are chosen; the critical line has xi = inf)",
    title=lambda given, result: f"vanilla RNN on the critical line chi = 1 with q* = {given['q_star']:g}"))
register_critical_recipe(CriticalRecipe(
    cell="minimal", key="T", metavar="N", meaning="timescale xi = k T",
    function=minimal_for_timescale, options=("k", "sigma_w", "sigma_v", "sigma_b", "R", "max_spread"),
    chosen="with --T (mu_b is chosen for the timescale)",
    title=lambda given, result: f"minimalRNN with timescale xi = k T = {result['k'] * result['T']:g}",
    integer=True, weights=True))
register_critical_recipe(CriticalRecipe(
    cell="minimal", key="sigma_w", metavar="X", meaning="the chi = 1 boundary's mu_b",
    function=minimal_critical_mu_b, options=("sigma_v", "sigma_b", "R"),
    chosen="without --T (mu_b is chosen on chi = 1)",
    title=lambda given, result: f"minimalRNN on the chi = 1 boundary at sigma_w = {given['sigma_w']:g}"))


def _gated_for_timescale(cell: str) -> Callable:
    def choose(T, **options):
        from .critical_gated import gated_for_timescale
        return gated_for_timescale(cell, T, **options)
    return choose


for _cell, _gate in (("lstm", "forget"), ("gru", "update")):
    register_critical_recipe(CriticalRecipe(
        cell=_cell, key="T", metavar="N", meaning=f"timescale xi = k T through the {_gate} gate's bias",
        function=_gated_for_timescale(_cell), options=("k", "sigma_w", "sigma_v", "R"),
        chosen=f"with --T (the {_gate}-gate bias is chosen for the timescale)",
        title=lambda given, result: f"{result['cell'].upper()} with timescale xi = k T = {result['k'] * result['T']:g}",
        integer=True))

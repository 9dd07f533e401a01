r"""Vectorised numerical Gaussian expectations (the numeric side of :mod:`mftrnn.theory.gaussian`).

Method: the trapezoidal rule in the standardised variable :math:`\xi`, with :math:`e = \mu + \sqrt q\,\xi`,

.. math:: \mathbb E[f(e)] \approx h \sum_{j} \varphi(\xi_j) f(\mu + \sqrt q\, \xi_j),
          \qquad \xi_j = -L + jh .

For an integrand analytic in the strip :math:`|\operatorname{Im}\xi| < a` the trapezoidal rule on the real line
converges geometrically, with error :math:`\sim \exp(-2\pi a/h + a^2/2)` (the second term is the growth of the
Gaussian weight off the real axis). An activation with its nearest complex pole at distance :math:`d` from the
real axis (tanh: :math:`\pi/2`, logistic: :math:`\pi`) gives :math:`a = d/\sqrt q`, so large pre-activation
variances need a finer step; the step is chosen per point as

.. math:: h = \min\Bigl(h_{\mathcal N},\; \frac{2\pi a}{\ln(1/\mathrm{tol}) + a^2/2}\Bigr),

with :math:`h_{\mathcal N}=0.7` (error :math:`e^{-2\pi^2/h^2}\approx 10^{-17}` for the Gaussian alone) and
``tol = 1e-12``. The window :math:`|\xi|\le L=11` drops Gaussian mass :math:`< 10^{-27}`; the mass of the
exponentially tilted integrands that occur (derivatives of sigmoid/tanh with :math:`|\mu|\le 10`) peaks within
:math:`|\xi| \le \sqrt{4|\mu|}` of the centre, well inside the window. Points are grouped into buckets of equal node
count so that each bucket is one dense NumPy evaluation.

Why not Gauss-Hermite: its error for the same analytic integrand decays like :math:`\exp(-2a\sqrt{2n})`, much
slower than the trapezoid's :math:`\exp(-\pi a n/L)` once :math:`a` is small (large variances), and its nodes
cannot be shared across buckets. Accuracy against mpmath is a tested property (``tests/test_quadrature.py``).

Integrands with kinks or jumps (rectifier, step) are not analytic, and the trapezoid rule across a kink converges only
algebraically; :func:`expect_piecewise` and :func:`expect2_piecewise` cut the window at the kinks and use
Gauss-Legendre pieces with a doubling error estimate instead.

Bivariate expectations use the factorisation :math:`e^a = \mu_a + s_a\xi_1`,
:math:`e^b = \mu_b + s_b(c\,\xi_1 + \sqrt{1-c^2}\,\xi_2)` on a tensor grid of the same rule.
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["nodes_for", "nodes_needed", "expect_numeric", "expect2_numeric", "expect_piecewise", "expect2_piecewise",
           "gaussian_rule", "RULES", "DTYPES", "TOL", "WINDOW", "PIECEWISE_TOL"]

TOL = 1e-12
WINDOW = 11.0
H_GAUSS = 0.7
STRIP_SAFETY = 0.8
#: (tol, h_gauss, window) of each rule: "fine" for results; "coarse" to get close to a root before polishing with
#: the fine one (measured: maps to <= 1e-5, their slopes to <= 1e-4); "sample" to scan a map for sign changes
#: (maps to <= 1e-3: its nominal 1e-5 makes up for the error model's looseness at low accuracy, where the poles'
#: polynomial prefactors matter more). Tested in tests/test_quadrature.py.
RULES = {"fine": (TOL, H_GAUSS, WINDOW), "coarse": (1e-6, 1.1, 8.0), "sample": (1e-5, 1.2, 6.0)}
#: floating-point type of each rule's nodes and integrands. The cheap rules run in single precision (unit roundoff
#: 6e-8, far below their 1e-6 / 1e-3 targets), which NumPy evaluates 3-4x faster than double precision
#: (vectorised exp); only the "fine" rule, whose results the user sees, needs double precision.
DTYPES = {"fine": np.float64, "coarse": np.float32, "sample": np.float32}
#: node counts a point can get (odd; ratio ~1.2 between neighbours, so that on average ~10% more nodes are used
#: than the error model asks for)
_BUCKETS = np.array([9, 11, 13, 15, 17, 21, 25, 29, 33, 41, 49, 57, 65, 81, 97, 113, 129, 161, 193, 225, 257, 321, 385,
                     449, 513, 641, 769, 897, 1025, 1281, 1537, 1793, 2049, 2561, 3073, 3585, 4097, 5121, 6145, 7169,
                     8193])
_CHUNK = 16384  # points x nodes per block: small enough to stay in cache
_rules: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _rule(n: int, window: float = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid nodes and Gaussian weights on [-window, window] with n nodes (cached)."""
    if (n, window) not in _rules:
        xi = np.linspace(-window, window, n)
        h = xi[1] - xi[0]
        w = h * np.exp(-0.5 * xi**2) / np.sqrt(2 * np.pi)
        w[0] *= 0.5
        w[-1] *= 0.5
        _rules[n, window] = (xi, w)
    return _rules[n, window]


def nodes_needed(s: np.ndarray, d: float, tol: float = TOL, h_gauss: float = H_GAUSS,
                 window: float = WINDOW) -> np.ndarray:
    r"""Number of trapezoid nodes the error model asks for: :math:`2L/h + 1` with the step :math:`h` of the
    module docstring, for standard deviations ``s`` and strip half-width ``d`` of the integrand.

    :math:`h` is non-increasing in :math:`s` (so this is non-decreasing): :math:`a=\min(0.8d/s, a_{max})` falls
    with :math:`s`, and :math:`h_{pole}(a)` rises with :math:`a` up to :math:`\sqrt{2\ln(1/tol)}` and stays above
    ``h_gauss`` beyond (checked for every rule in the tests).
    """
    s = np.asarray(s, dtype=float)
    # usable strip: a fraction of the pole distance (the integrands' poles are of order up to ~6, whose
    # polynomial prefactor (2 pi / h)^(m-1) the plain exponential bound ignores), and never wider than the
    # a = 2 pi / h_gauss beyond which the Gaussian's growth off the axis dominates
    a_max = 2 * np.pi / h_gauss
    with np.errstate(divide="ignore"):
        a = np.minimum(np.where(s > 0, STRIP_SAFETY * d / np.maximum(s, 1e-300), a_max), a_max)
    log_tol = np.log(1.0 / tol)
    h_pole = 2 * np.pi * a / (log_tol + 0.5 * a**2)
    h = np.minimum(h_gauss, h_pole)
    return 2 * window / h + 1


@functools.lru_cache(maxsize=None)
def _s_thresholds(d: float, tol: float, h_gauss: float, window: float) -> np.ndarray:
    r"""Largest standard deviation each bucket serves: ``nodes_needed(s) <= bucket`` iff ``s <= threshold``.

    A bucket of :math:`n` nodes has step :math:`h_n = 2L/(n-1)`. It is too small for every :math:`s` when
    :math:`h_n > h_{gauss}`; otherwise :math:`h_{pole}(a) \ge h_n` holds for :math:`a \ge a_-`, the smaller root of
    :math:`\tfrac{h_n}{2}a^2 - 2\pi a + h_n\ln(1/tol) = 0`, i.e. for :math:`s \le 0.8\,d/a_-`.
    """
    h_n = 2 * window / (_BUCKETS - 1.0)
    log_tol = np.log(1.0 / tol)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_minus = (2 * np.pi - np.sqrt(4 * np.pi**2 - 2 * h_n**2 * log_tol)) / h_n
        thr = np.where(h_n > h_gauss, -np.inf, STRIP_SAFETY * d / a_minus)
    return np.maximum.accumulate(np.where(np.isnan(thr), -np.inf, thr))


def _bucket_index(s: np.ndarray, d: float, tol: float, h_gauss: float, window: float) -> np.ndarray:
    """Index into the node-count buckets of the smallest bucket that serves each standard deviation."""
    idx = np.searchsorted(_s_thresholds(float(d), tol, h_gauss, window), s, side="left")
    if np.any(idx >= len(_BUCKETS)):
        raise OverflowError("pre-activation variance too large for the quadrature (needs > %d nodes)" % _BUCKETS[-1])
    return idx


def nodes_for(s: np.ndarray, d: float, tol: float = TOL, h_gauss: float = H_GAUSS,
              window: float = WINDOW) -> np.ndarray:
    """Node count (the smallest bucket >= :func:`nodes_needed`) for standard deviations ``s``."""
    return _BUCKETS[_bucket_index(np.asarray(s, dtype=float), d, tol, h_gauss, window)]


#: largest power of the logistic complement (``sigmoid(-e) ~ e^{-e}``) or of ``1 - tanh^2 ~ 4 e^{-2|e|}`` (which counts
#: twice) assumed in an integrand: its exponential tilt moves the integrand's mass to :math:`\xi\approx -k\,s`
_TILT = 4.0
#: beyond this |mu| the cheap rules run in double precision: their single-precision exponentials underflow
#: (e^{-2 mu} < 1e-38 at mu > 44), and the cancellation-free complements of the maps are then lost
_SINGLE_MU = 20.0


def _windows(mu, s, tol, window):
    r"""Window half-width per point: the rule's, widened where the integrand's mass lies far from the centre.

    At a large mean the complements of the activations are exponentials, :math:`\sigma(-e)^k \approx e^{-k(\mu +
    s\xi)}`, whose Gaussian-weighted mass sits at :math:`\xi\approx -ks` (or at the activation's transition
    :math:`\xi = -|\mu|/s`, whichever is nearer): the window must reach that far plus the Gaussian tail for ``tol``.
    Widths are rounded up to steps of a quarter of the rule's window (few distinct node sets).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(s > 0, np.minimum(_TILT * s, np.abs(mu) / np.where(s > 0, s, 1.0)), 0.0)
    need = shift + np.sqrt(2.0 * np.log(1.0 / tol))
    k = np.ceil(np.maximum(need - window, 0.0) / (0.25 * window))
    return window * (1.0 + 0.25 * np.minimum(k, 40))


def _partition(mu, s, rule):
    """Groups of point indices sharing a window and a floating-point type: [(idx, window, dtype)]."""
    tol, _, window = RULES[rule]
    wins = _windows(mu, s, tol, window)
    dtype = DTYPES[rule]
    wide = np.abs(mu) > _SINGLE_MU if dtype != np.float64 else np.zeros(mu.shape, bool)
    out = []
    for wv in np.unique(wins):
        for dbl in (False, True):
            idx = np.nonzero((wins == wv) & (wide == dbl))[0]
            if idx.size:
                out.append((idx, float(wv), np.float64 if dbl else dtype))
    return out


def expect_numeric(funcs, mu, q, d: float, rule: str = "fine") -> list[np.ndarray]:
    r"""Evaluate :math:`\mathbb E[f_k(\mu+\sqrt q\,\xi)]` for several integrands at once.

    ``funcs(x)`` maps an array of pre-activations to a list of integrand arrays (shared sub-expressions are
    computed once). ``mu`` and ``q`` are broadcast 1-d arrays; returns a list of 1-d arrays. ``rule`` names one
    of :data:`RULES`: the cheaper ones serve the first iterations of a root finder and scans for sign changes.
    Points are sorted by node count once, so that every block is a contiguous slice.
    """
    mu, q = np.broadcast_arrays(np.asarray(mu, float), np.asarray(q, float))
    mu, q = mu.ravel(), q.ravel()
    s = np.sqrt(q)
    groups = _partition(mu, s, rule) if mu.size else []
    if len(groups) <= 1:
        window, dtype = (groups[0][1], groups[0][2]) if groups else (RULES[rule][2], DTYPES[rule])
        return _expect_group(funcs, mu, s, d, rule, window, dtype)
    out = None
    for idx, window, dtype in groups:
        vals = _expect_group(funcs, mu[idx], s[idx], d, rule, window, dtype)
        if out is None:
            out = [np.empty(mu.size) for _ in vals]
        for o, v in zip(out, vals):
            o[idx] = v
    return out


def _expect_group(funcs, mu, s, d, rule, window, dtype):
    """:func:`expect_numeric` for points sharing a window half-width and a floating-point type."""
    tol, h_gauss, _ = RULES[rule]
    k = _bucket_index(s, d, tol, h_gauss, window).astype(np.uint8)
    order = np.argsort(k, kind="stable")  # radix sort for small integers
    k = k[order]
    mu_t, s_t = mu[order].astype(dtype), s[order].astype(dtype)
    cuts = np.flatnonzero(np.diff(k)) + 1
    res = None
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(k)]):
        nb = int(_BUCKETS[k[a]])
        xi, w = _rule(nb, window)
        xi, w = xi.astype(dtype), w.astype(dtype)
        step = max(1, _CHUNK // nb)
        for start in range(a, b, step):
            sl = slice(start, min(b, start + step))
            x = mu_t[sl, None] + s_t[sl, None] * xi[None, :]
            vals = funcs(x)
            if res is None:
                res = [np.empty(len(mu)) for _ in vals]
            for r, v in zip(res, vals):
                r[sl] = (v if np.shape(v) == x.shape else np.broadcast_to(v, x.shape)) @ w
    if res is None:  # empty input
        return [np.empty(0) for _ in funcs(np.zeros((1, 1)))]
    out = [np.empty(len(mu)) for _ in res]
    for o, r in zip(out, res):
        o[order] = r
    return out


def expect2_numeric(funcs, mu_a, mu_b, q_a, q_b, q_ab, d: float, rule: str = "fine") -> list[np.ndarray]:
    r"""Bivariate version: :math:`\mathbb E[F_k(e^a, e^b)]`, ``funcs(xa, xb)`` returning a list of arrays.

    Uses :math:`e^a=\mu_a+s_a\xi_1`, :math:`e^b=\mu_b+s_b(c\xi_1+\sqrt{1-c^2}\xi_2)` with
    :math:`c=q_{ab}/(s_a s_b)` on a tensor grid of the trapezoid rule named by ``rule`` (:data:`RULES`,
    :data:`DTYPES`) in each variable. In :math:`\xi_1` and :math:`\xi_2` the poles of the integrand lie at least
    :math:`d/\max(s_a,s_b)` from the real axis, so the node count of that standard deviation gives each direction
    the univariate accuracy. ``xa`` is passed with shape ``(points, n, 1)`` (it does not depend on
    :math:`\xi_2`): factors of the integrand that depend on :math:`e^a` alone are evaluated ``n`` times, not
    ``n**2``. Cost grows as the square of the node count: the cheap rules serve root finders' iterations.
    """
    arrs = np.broadcast_arrays(*(np.asarray(v, float) for v in (mu_a, mu_b, q_a, q_b, q_ab)))
    mu_a, mu_b, q_a, q_b, q_ab = (v.ravel() for v in arrs)
    smax = np.sqrt(np.maximum(q_a, q_b))
    # the window of the wider of the two means (the integrand's mass lies within the larger shift)
    mu_wide = np.where(np.abs(mu_a) < np.abs(mu_b), mu_a, mu_b)
    groups = _partition(mu_wide, smax, rule) if mu_a.size else []
    if len(groups) <= 1:
        window, dtype = (groups[0][1], groups[0][2]) if groups else (RULES[rule][2], DTYPES[rule])
        return _expect2_group(funcs, mu_a, mu_b, q_a, q_b, q_ab, d, rule, window, dtype)
    out = None
    for idx, window, dtype in groups:
        vals = _expect2_group(funcs, mu_a[idx], mu_b[idx], q_a[idx], q_b[idx], q_ab[idx], d, rule, window, dtype)
        if out is None:
            out = [np.empty(mu_a.size) for _ in vals]
        for o, v in zip(out, vals):
            o[idx] = v
    return out


def _expect2_group(funcs, mu_a, mu_b, q_a, q_b, q_ab, d, rule, window, dtype):
    """:func:`expect2_numeric` for points sharing a window half-width and a floating-point type."""
    tol, h_gauss, _ = RULES[rule]
    s_a, s_b = np.sqrt(q_a), np.sqrt(q_b)
    denom = s_a * s_b
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(denom > 0, q_ab / np.where(denom > 0, denom, 1.0), 0.0)
    c = np.clip(c, -1.0, 1.0)
    sc = np.sqrt(1 - c**2)
    n = nodes_for(np.maximum(s_a, s_b), d, tol, h_gauss, window)
    mu_a, mu_b, s_a, s_b, c, sc = (v.astype(dtype) for v in (mu_a, mu_b, s_a, s_b, c, sc))
    out = None
    for nb in np.unique(n):
        sel = np.nonzero(n == nb)[0]
        xi, w = (v.astype(dtype) for v in _rule(int(nb), window))
        step = max(1, _CHUNK // int(nb) ** 2)
        x1 = xi[None, :, None]
        x2 = xi[None, None, :]
        for start in range(0, len(sel), step):
            idx = sel[start:start + step]
            xa = mu_a[idx, None, None] + s_a[idx, None, None] * x1
            xb = mu_b[idx, None, None] + s_b[idx, None, None] * (c[idx, None, None] * x1 + sc[idx, None, None] * x2)
            vals = funcs(xa, xb)
            if out is None:
                out = [np.empty(len(mu_a)) for _ in vals]
            for o, v in zip(out, vals):
                o[idx] = np.broadcast_to(v, xb.shape) @ w @ w
    if out is None:
        out = [np.empty(0) for _ in funcs(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))]
    return out


# --------------------------------------------------------------------------- piecewise-analytic integrands
#: Gauss-Legendre nodes per piece to start from, and the most the doubling may reach, for integrands with kinks
_GL_START = 48
_GL_MAX = 768
#: accepted estimated error (absolute, relative to 1 + |value|) of the piecewise rule, per rule name
PIECEWISE_TOL = {"fine": 1e-10, "coarse": 1e-6, "sample": 1e-5}


@functools.lru_cache(maxsize=None)
def _gl(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _piece_rule(breaks: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Gauss-Legendre nodes and Gaussian weights :math:`\phi(\xi)\,d\xi` on the pieces between consecutive sorted
    ``breaks`` (shape ``(..., P+2)``): returns ``(xi, w)`` of shape ``(..., (P+1) n)``."""
    t, wt = _gl(n)
    lo, hi = breaks[..., :-1, None], breaks[..., 1:, None]
    half = 0.5 * (hi - lo)
    xi = lo + half * (t + 1.0)
    w = half * wt * np.exp(-0.5 * xi**2) / np.sqrt(2 * np.pi)
    shape = breaks.shape[:-1] + (-1,)
    return xi.reshape(shape), w.reshape(shape)


def _breaks(kinks_xi: np.ndarray, window: float) -> np.ndarray:
    """Sorted break points ``[-window, kinks clipped to the window..., window]`` along the last axis."""
    k = np.clip(kinks_xi, -window, window)
    ends = np.broadcast_to(np.array([-window, window]), k.shape[:-1] + (2,))
    return np.sort(np.concatenate([ends[..., :1], k, ends[..., 1:]], axis=-1), axis=-1)


def _doubling(evaluate, rule: str, what: str):
    r"""Run ``evaluate(n)`` (a list of arrays) with n, 2n, ... Gauss-Legendre nodes per piece until two successive
    results agree to :data:`PIECEWISE_TOL` (the error estimate of the coarser one, hence conservative for the finer
    one, which is returned); raise :class:`~mftrnn.errors.DomainError` with the estimate if :data:`_GL_MAX` nodes per
    piece do not get there."""
    from ..errors import DomainError

    tol = PIECEWISE_TOL[rule]
    n = _GL_START
    prev = evaluate(n)
    while True:
        n *= 2
        cur = evaluate(n)
        err = max((float(np.max(np.abs(c - p) / (1 + np.abs(c)), initial=0.0)) for c, p in zip(cur, prev)),
                  default=0.0)
        if err <= tol:
            return cur
        if n >= _GL_MAX or not np.isfinite(err):
            raise DomainError(f"{what}: the piecewise Gauss-Legendre rule did not converge (estimated error {err:.1e} "
                              f"> {tol:.0e} with {n} nodes per piece)")
        prev = cur


def expect_piecewise(funcs, mu, q, kinks, rule: str = "fine") -> list[np.ndarray]:
    r""":math:`\mathbb E[f_k(\mu+\sqrt q\,\xi)]` for integrands that are analytic except at the fixed points
    ``kinks`` (values of :math:`e` where a rectifier, step, absolute value... switches).

    The trapezoid rule converges geometrically only for analytic integrands; across a kink its error is algebraic
    (:math:`O(h^2)`, a jump :math:`O(h)`). Here the window :math:`|\xi|\le L` is cut at the kinks
    :math:`\xi_k=(k-\mu)/\sqrt q` and each piece gets a Gauss-Legendre rule, which converges geometrically for the
    analytic pieces; the node count doubles until two rules agree to :data:`PIECEWISE_TOL` (else
    :class:`~mftrnn.errors.DomainError`). Points with :math:`q=0` get :math:`f(\mu)`.
    """
    mu, q = np.broadcast_arrays(np.asarray(mu, float), np.asarray(q, float))
    mu, q = mu.ravel(), q.ravel()
    s = np.sqrt(q)
    kinks = np.asarray(kinks, float).ravel()
    window = WINDOW  # the fine rule's window for every rule: the pieces' node counts adapt, the window does not
    with np.errstate(divide="ignore", invalid="ignore"):
        kx = np.where(s[:, None] > 0, (kinks[None, :] - mu[:, None]) / np.where(s > 0, s, 1.0)[:, None], 0.0)
    brk = _breaks(kx, window)

    def evaluate(n):
        xi, w = _piece_rule(brk, n)
        vals = funcs(mu[:, None] + s[:, None] * xi)
        return [np.sum(np.broadcast_to(v, xi.shape) * w, axis=-1) for v in vals]

    return _doubling(evaluate, rule, "Gaussian expectation of a piecewise integrand")


def expect2_piecewise(funcs, mu_a, mu_b, q_a, q_b, q_ab, kinks_a, kinks_b, rule: str = "fine") -> list[np.ndarray]:
    r"""Bivariate :math:`\mathbb E[F_k(e^a,e^b)]` for integrands analytic except where :math:`e^a` or :math:`e^b`
    crosses one of the fixed values ``kinks_a`` / ``kinks_b``.

    With :math:`e^a=\mu_a+s_a\xi_1`, :math:`e^b=\mu_b+s_b(c\xi_1+\sqrt{1-c^2}\,\xi_2)`: the outer variable
    :math:`\xi_1` is cut at the kinks of :math:`e^a` and at :math:`(k_b-\mu_b)/(s_b c)` (where the kink line of
    :math:`e^b` crosses the centre of the inner Gaussian: as :math:`|c|\to1` the inner integral itself turns into a
    kink there); the inner :math:`\xi_2` is cut, node by node, exactly where :math:`e^b` crosses its kinks. Each
    piece gets a Gauss-Legendre rule, doubled until converged (:func:`expect_piecewise`).
    """
    arrs = np.broadcast_arrays(*(np.asarray(v, float) for v in (mu_a, mu_b, q_a, q_b, q_ab)))
    mu_a, mu_b, q_a, q_b, q_ab = (v.ravel() for v in arrs)
    s_a, s_b = np.sqrt(q_a), np.sqrt(q_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(s_a * s_b > 0, q_ab / np.where(s_a * s_b > 0, s_a * s_b, 1.0), 0.0)
    c = np.clip(c, -1.0, 1.0)
    sc = np.sqrt(1 - c**2)
    ka = np.asarray(kinks_a, float).ravel()
    kb = np.asarray(kinks_b, float).ravel()
    window = WINDOW

    def safe_div(num, den):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den != 0, num / np.where(den != 0, den, 1.0), 2 * window)

    zb = safe_div(kb[None, :] - mu_b[:, None], s_b[:, None])  # kink of e^b in units of s_b
    outer = np.concatenate([safe_div(ka[None, :] - mu_a[:, None], s_a[:, None]), safe_div(zb, c[:, None])], axis=1)
    brk1 = _breaks(outer, window)

    def evaluate(n):
        x1, w1 = _piece_rule(brk1, n)  # (P, N1)
        inner = safe_div(zb[:, None, :] - c[:, None, None] * x1[:, :, None], sc[:, None, None])  # (P, N1, Kb)
        x2, w2 = _piece_rule(_breaks(inner, window), n)  # (P, N1, N2)
        res = None
        step = max(1, 4 * _CHUNK // (x1.shape[1] * x2.shape[2]))
        for start in range(0, len(mu_a), step):
            sl = slice(start, start + step)
            xa = mu_a[sl, None, None] + s_a[sl, None, None] * x1[sl, :, None]
            xb = mu_b[sl, None, None] + s_b[sl, None, None] * (c[sl, None, None] * x1[sl, :, None]
                                                                 + sc[sl, None, None] * x2[sl])
            vals = funcs(xa, xb)
            if res is None:
                res = [np.empty(len(mu_a)) for _ in vals]
            for r, v in zip(res, vals):
                r[sl] = np.einsum("pij,pij,pi->p", np.broadcast_to(v, x2[sl].shape), w2[sl], w1[sl])
        return res if res is not None else [np.empty(0)]

    return _doubling(evaluate, rule, "bivariate Gaussian expectation of a piecewise integrand")


def gaussian_rule(mu: float, q: float, d: float, kinks=()) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes :math:`e_j` and weights :math:`w_j` (summing to 1) of a rule for
    :math:`\mathbb E_{e\sim\mathcal N(\mu,q)}` at one point: the trapezoid rule of :func:`nodes_for` for an analytic
    integrand (strip half-width ``d``), or, when the integrand switches at the values ``kinks`` of :math:`e`,
    Gauss-Legendre pieces cut there
    (:data:`_GL_MAX` nodes per piece). Weights below 1e-15 of the largest are dropped."""
    s = float(np.sqrt(q))
    if len(kinks) and s > 0:
        brk = _breaks((np.asarray(kinks, float) - mu) / s, WINDOW)
        xi, w = _piece_rule(brk, _GL_MAX // 2)
    else:
        xi, w = _rule(int(nodes_for(np.array([s]), d)[0]), WINDOW)
    keep = w > 1e-15 * w.max()
    xi, w = xi[keep], w[keep]
    return mu + s * xi, w / w.sum()

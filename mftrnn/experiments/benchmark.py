"""Benchmark of the vectorised mean-field engine against a naive per-point baseline.

Run as ``python -m mftrnn.experiments.benchmark``.

The baseline is written independently from the engine, straight from the
hand-derived mean-field recursions of the minimalRNN (Chen, Pennington &
Schoenholz 2018):

* pre-activation ``e ~ N(mu_b, q)`` with ``q = sigma_w^2 Q + sigma_v^2 R + sigma_b^2``,
  gate ``u = sigmoid(e)``;
* variance map ``Q_t = E[u^2] Q_{t-1} + E[(1-u)^2] R``;
* slope of the covariance map at ``C* = Q*`` (identical inputs, ``Sigma = 1``)
  ``chi = E[u^2] + sigma_w^2 (Q* + R) E[u'^2]`` with ``u' = u (1-u)``.

Every Gaussian expectation is one adaptive :func:`scipy.integrate.quad` call
(split at the sigmoid's midpoint) and every fixed point one
:func:`scipy.optimize.brentq` root search, one grid point at a time. It is
deliberately slow but accurate (relative tolerance ~1e-13), so it also serves as
an independent oracle for the tests (``tests/test_baseline_oracle.py``).
A baseline for the vanilla tanh RNN (``Q = E[tanh(e)^2]``,
``chi = sigma_w^2 E[tanh'(e)^2]``) is included for the same purpose.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Callable

import numpy as np
from scipy import integrate, optimize, special

__all__ = [
    "gaussian_expectation",
    "naive_minimal_fixed_point",
    "naive_vanilla_fixed_point",
    "run_benchmark",
    "main",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_QUAD_EPSREL = 1e-13
_QUAD_LIMIT = 400
_BRENTQ_RTOL = 4.0 * np.finfo(float).eps


def gaussian_expectation(g: Callable[[float], float], mean: float, var: float,
                         split: float | None = None) -> float:
    """``E[g(e)]`` for ``e ~ N(mean, var)`` by adaptive quadrature over ``z = (e - mean)/sqrt(var)``.

    The integral over the real line is split at ``z = split`` (default: where ``e = 0``,
    i.e. the midpoint of a sigmoid or tanh) so that each half is smooth for quad.
    """
    if var < 0 or not math.isfinite(var):
        raise ValueError(f"variance must be finite and >= 0, got {var!r}")
    if var == 0.0:
        return float(g(mean))
    s = math.sqrt(var)

    def integrand(z: float) -> float:
        weight = math.exp(-0.5 * z * z)
        if weight == 0.0:  # far tail: avoid inf * 0 for growing g
            return 0.0
        return g(mean + s * z) * weight / _SQRT_2PI

    if split is None:
        split = -mean / s
    split = min(max(split, -30.0), 30.0)  # beyond +-30 sd the Gaussian weight is < 1e-195
    left, _ = integrate.quad(integrand, -np.inf, split, epsabs=0.0, epsrel=_QUAD_EPSREL,
                             limit=_QUAD_LIMIT)
    right, _ = integrate.quad(integrand, split, np.inf, epsabs=0.0, epsrel=_QUAD_EPSREL,
                              limit=_QUAD_LIMIT)
    return left + right


# ---- minimalRNN ---------------------------------------------------------------------

def _u(e: float) -> float:
    return float(special.expit(e))


def _one_minus_u(e: float) -> float:
    return float(special.expit(-e))


def naive_minimal_fixed_point(sigma_w: float = 1.0, sigma_v: float = 1.0, sigma_b: float = 0.0,
                              mu_b: float = 0.0, R: float = 1.0) -> dict:
    """Naive minimalRNN fixed point (one point): ``{"q_star", "Q_star", "chi"}``.

    Solves ``f(Q) = E[(1-u)^2] R - E[1-u^2] Q = 0`` on ``[0, R]`` with brentq
    (``f(0) = E[(1-u)^2] R > 0`` and ``f(R) = -2 R E[u(1-u)] < 0``); ``1 - E[u^2]`` is
    integrated directly as ``E[(1-u)(1+u)]`` to avoid cancellation when ``u -> 1``.
    """
    sw2, sv2, sb2 = float(sigma_w) ** 2, float(sigma_v) ** 2, float(sigma_b) ** 2
    mu_b, R = float(mu_b), float(R)

    def q_of(Q: float) -> float:
        return sw2 * Q + sv2 * R + sb2

    def f(Q: float) -> float:
        q = q_of(Q)
        b = gaussian_expectation(lambda e: _one_minus_u(e) ** 2, mu_b, q)
        one_minus_a = gaussian_expectation(lambda e: _one_minus_u(e) * (1.0 + _u(e)), mu_b, q)
        return b * R - one_minus_a * Q

    if R == 0.0:
        Q_star = 0.0
    else:
        Q_star = optimize.brentq(f, 0.0, R, xtol=1e-300, rtol=_BRENTQ_RTOL, maxiter=500)
    q_star = q_of(Q_star)
    Eu2 = gaussian_expectation(lambda e: _u(e) ** 2, mu_b, q_star)
    Eup2 = gaussian_expectation(lambda e: (_u(e) * _one_minus_u(e)) ** 2, mu_b, q_star)
    chi = Eu2 + sw2 * (Q_star + R) * Eup2
    return {"q_star": q_star, "Q_star": Q_star, "chi": chi}


# ---- vanilla tanh RNN -----------------------------------------------------------------

def _sech4(e: float) -> float:
    """``sech(e)^4 = (2 exp(-|e|) / (1 + exp(-2|e|)))^4``, without overflow or cancellation."""
    t = math.exp(-abs(e))
    return (2.0 * t / (1.0 + t * t)) ** 4


def naive_vanilla_fixed_point(sigma_w: float = 1.0, sigma_v: float = 1.0, sigma_b: float = 0.0,
                              mu_b: float = 0.0, R: float = 1.0) -> dict:
    """Naive vanilla-RNN fixed point (one point): ``{"q_star", "Q_star", "chi"}``.

    ``Q = E[tanh(e)^2]``, ``chi = sigma_w^2 E[sech(e)^4]``. Root of ``E[tanh^2] - Q`` on
    ``(0, 1]``; meant for points with a unique non-zero fixed point (``sigma_v`` or
    ``sigma_b`` or ``mu_b`` non-zero).
    """
    sw2, sv2, sb2 = float(sigma_w) ** 2, float(sigma_v) ** 2, float(sigma_b) ** 2
    mu_b, R = float(mu_b), float(R)

    def q_of(Q: float) -> float:
        return sw2 * Q + sv2 * R + sb2

    def f(Q: float) -> float:
        return gaussian_expectation(lambda e: math.tanh(e) ** 2, mu_b, q_of(Q)) - Q

    if f(0.0) <= 0.0:
        raise ValueError("naive vanilla baseline needs a non-zero driving term (Q = 0 is a root)")
    Q_star = optimize.brentq(f, 0.0, 1.0, xtol=1e-300, rtol=_BRENTQ_RTOL, maxiter=500)
    q_star = q_of(Q_star)
    chi = sw2 * gaussian_expectation(_sech4, mu_b, q_star)
    return {"q_star": q_star, "Q_star": Q_star, "chi": chi}


# ---- benchmark --------------------------------------------------------------------------

SIGMA_W_RANGE = (0.05, 3.0)
MU_B_RANGE = (-4.0, 6.0)
TARGET_SPEEDUP = 1000.0
TARGET_REL_ERR = 1e-6
TARGET_GRID_TIME = 1.0


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def run_benchmark(n: int = 256, subsample: int = 200, repeat: int = 3, seed: int = 0) -> dict:
    """Time the engine on an ``n x n`` minimalRNN grid over (sigma_w, mu_b) and the naive
    baseline on ``subsample`` random grid points; return a JSON-ready dict."""
    import mftrnn

    fixed = {"sigma_v": 1.0, "sigma_b": 0.0, "R": 1.0}
    sw_axis = np.linspace(*SIGMA_W_RANGE, n)
    mb_axis = np.linspace(*MU_B_RANGE, n)
    SW, MB = np.meshgrid(sw_axis, mb_axis)  # rows: mu_b, columns: sigma_w

    # warm-up (imports, caches) on a tiny grid, then time the full grid
    mftrnn.fixed_point("minimal", sigma_w=SW[:2, :2], mu_b=MB[:2, :2], **fixed)
    times = []
    fp = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fp = mftrnn.fixed_point("minimal", sigma_w=SW, mu_b=MB, **fixed)
        Q_grid = np.asarray(fp.Q_star)
        chi_grid = np.asarray(fp.chi)
        times.append(time.perf_counter() - t0)
    engine_time = float(np.median(times))
    n_points = SW.size

    rng = np.random.default_rng(seed)
    m = min(subsample, n_points)
    idx = rng.choice(n_points, size=m, replace=False)
    Q_naive = np.empty(m)
    chi_naive = np.empty(m)
    t0 = time.perf_counter()
    for k, i in enumerate(idx):
        r = naive_minimal_fixed_point(sigma_w=SW.flat[i], mu_b=MB.flat[i], **fixed)
        Q_naive[k] = r["Q_star"]
        chi_naive[k] = r["chi"]
    naive_sub_time = time.perf_counter() - t0
    naive_time = naive_sub_time / m * n_points

    finite = bool(np.all(np.isfinite(Q_grid)) and np.all(np.isfinite(chi_grid)))
    err_Q = _max_rel(Q_grid.flat[idx], Q_naive)
    err_chi = _max_rel(chi_grid.flat[idx], chi_naive)
    speedup = naive_time / engine_time
    return {
        "cell": "minimal",
        "grid": [n, n],
        "n_points": int(n_points),
        "sigma_w_range": list(SIGMA_W_RANGE),
        "mu_b_range": list(MU_B_RANGE),
        "fixed": fixed,
        "engine_time_s": engine_time,
        "engine_times_s": [float(t) for t in times],
        "naive_subsample": int(m),
        "naive_subsample_time_s": float(naive_sub_time),
        "naive_time_per_point_s": float(naive_sub_time / m),
        "naive_time_full_grid_s_extrapolated": float(naive_time),
        "speedup": float(speedup),
        "max_rel_diff_Q_star": err_Q,
        "max_rel_diff_chi": err_chi,
        "engine_all_finite": finite,
        "targets": {
            "speedup>=1000": bool(speedup >= TARGET_SPEEDUP),
            "max_rel_diff<=1e-6": bool(max(err_Q, err_chi) <= TARGET_REL_ERR),
            "full_grid<1s": bool(engine_time < TARGET_GRID_TIME),
            "all_finite": finite,
        },
        "mftrnn_version": getattr(mftrnn, "__version__", "unknown"),
        "seed": int(seed),
    }


def _format(res: dict) -> str:
    ok = lambda b: "met" if b else "NOT MET"  # noqa: E731
    t = res["targets"]
    n = res["grid"][0]
    lines = [
        f"mftrnn benchmark: minimalRNN fixed point + chi on a {n}x{n} grid "
        f"(sigma_w in [{res['sigma_w_range'][0]:g}, {res['sigma_w_range'][1]:g}], "
        f"mu_b in [{res['mu_b_range'][0]:g}, {res['mu_b_range'][1]:g}], "
        f"sigma_v=1, sigma_b=0, R=1)",
        f"  engine, full grid ({res['n_points']} points):  {res['engine_time_s']:.4f} s"
        f"  (median of {len(res['engine_times_s'])})",
        f"  naive quad+brentq, {res['naive_subsample']} random points: {res['naive_subsample_time_s']:.2f} s"
        f"  ({1e3 * res['naive_time_per_point_s']:.2f} ms/point)",
        f"  naive, extrapolated to full grid:      {res['naive_time_full_grid_s_extrapolated']:.1f} s",
        f"  speedup:                               {res['speedup']:.0f}x",
        f"  max relative difference on subsample:  Q_star {res['max_rel_diff_Q_star']:.2e}, "
        f"chi {res['max_rel_diff_chi']:.2e}",
        "targets:",
        f"  {'speedup >= %.0fx' % TARGET_SPEEDUP:<34}{ok(t['speedup>=1000'])}",
        f"  {'max rel. difference <= %.0e' % TARGET_REL_ERR:<34}{ok(t['max_rel_diff<=1e-6'])}",
        f"  {'full grid < %g s' % TARGET_GRID_TIME:<34}{ok(t['full_grid<1s'])}",
        f"  {'engine output all finite':<34}{ok(t['all_finite'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mftrnn.experiments.benchmark",
        description="Time the vectorised minimalRNN fixed-point engine against a naive "
                    "per-point quad+brentq baseline.")
    parser.add_argument("--n", type=int, default=256, help="grid size per axis (default 256)")
    parser.add_argument("--subsample", type=int, default=200,
                        help="number of random grid points for the naive baseline (default 200)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="engine timing repeats; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsample (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 if any target is not met")
    args = parser.parse_args(argv)
    if args.n < 2 or args.subsample < 1 or args.repeat < 1:
        parser.error("--n must be >= 2, --subsample and --repeat >= 1")
    res = run_benchmark(n=args.n, subsample=args.subsample, repeat=args.repeat, seed=args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(_format(res))
    if args.check and not all(res["targets"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The vectorised engine against the naive, independently written quad+brentq baseline
(mftrnn/benchmark.py), which integrates every Gaussian expectation adaptively with
scipy.integrate.quad and finds every fixed point with scipy.optimize.brentq."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import special

import mftrnn
from mftrnn.experiments.benchmark import (gaussian_expectation, naive_minimal_fixed_point,
                              naive_vanilla_fixed_point, run_benchmark)

RTOL = 1e-8

# (sigma_w, sigma_v, sigma_b, mu_b, R)
MINIMAL_POINTS = [
    (1.0, 1.0, 0.0, 0.0, 1.0),
    (0.05, 1.0, 0.0, -4.0, 1.0),
    (3.0, 1.0, 0.0, 6.0, 1.0),
    (10.0, 1.0, 0.0, 0.0, 1.0),
    (10.0, 1.0, 0.5, 10.0, 1.0),
    (10.0, 0.3, 0.0, -10.0, 2.0),
    (2.0, 0.5, 0.3, -10.0, 1.0),
    (0.5, 2.0, 1.0, 3.0, 0.5),
    (1.0, 0.0, 0.0, 10.0, 1.0),
    (0.0, 1.0, 0.0, 2.0, 1.0),
    (0.0, 0.0, 0.0, 10.0, 1.0),  # q = 0: u = sigmoid(mu_b) is constant, Q* = (1-u)^2 R / (1-u^2)
    # chi_q ~ 0.989: the sign scan's ~1e-3 rule misplaces the root by more than its bracket's widening; the
    # coarse solve ends on the bracket's end and the bracket has to be moved (regression test)
    (1.3, 1.0, 0.0, 5.647058823529412, 1.0),
]

VANILLA_POINTS = [
    (1.0, 1.0, 0.0, 0.0, 1.0),
    (3.0, 0.5, 0.2, 0.0, 1.0),
    (0.5, 1.0, 0.0, 1.5, 2.0),
    (10.0, 1.0, 0.5, -2.0, 1.0),
]


def _rel(a, b):
    """Relative difference; an exact zero (q* = 0 without any variance) must be reproduced exactly."""
    return abs(float(a) - b) / abs(b) if b != 0 else abs(float(a))


def test_gaussian_expectation_sanity():
    # E[e^2] = mu^2 + var, E[sigmoid(e)] = 1/2 at mu = 0
    assert gaussian_expectation(lambda e: e * e, 1.5, 4.0) == pytest.approx(1.5 ** 2 + 4.0, rel=1e-12)
    assert gaussian_expectation(special.expit, 0.0, 9.0) == pytest.approx(0.5, rel=1e-13)
    assert gaussian_expectation(lambda e: e, 3.0, 0.0) == 3.0


@pytest.mark.parametrize("point", MINIMAL_POINTS, ids=lambda p: "sw{}-sv{}-sb{}-mb{}-R{}".format(*p))
def test_minimal_engine_matches_naive_baseline(point):
    sw, sv, sb, mb, R = point
    ref = naive_minimal_fixed_point(sigma_w=sw, sigma_v=sv, sigma_b=sb, mu_b=mb, R=R)
    fp = mftrnn.fixed_point("minimal", sigma_w=sw, sigma_v=sv, sigma_b=sb, mu_b=mb, R=R)
    errs = {k: _rel(getattr(fp, k), ref[k]) for k in ("Q_star", "q_star", "chi")}
    assert max(errs.values()) <= RTOL, (errs, {k: float(getattr(fp, k)) for k in errs}, ref)


@pytest.mark.parametrize("point", VANILLA_POINTS, ids=lambda p: "sw{}-sv{}-sb{}-mb{}-R{}".format(*p))
def test_vanilla_engine_matches_naive_baseline(point):
    sw, sv, sb, mb, R = point
    ref = naive_vanilla_fixed_point(sigma_w=sw, sigma_v=sv, sigma_b=sb, mu_b=mb, R=R)
    fp = mftrnn.fixed_point("vanilla", sigma_w=sw, sigma_v=sv, sigma_b=sb, mu_b=mb, R=R)
    errs = {k: _rel(getattr(fp, k), ref[k]) for k in ("Q_star", "q_star", "chi")}
    assert max(errs.values()) <= RTOL, (errs, {k: float(getattr(fp, k)) for k in errs}, ref)


def test_minimal_engine_vectorised_matches_naive_baseline():
    """The same points in one array call (the phase-diagram path) give the same answers."""
    pts = np.array(MINIMAL_POINTS)
    fp = mftrnn.fixed_point("minimal", sigma_w=pts[:, 0], sigma_v=pts[:, 1], sigma_b=pts[:, 2],
                            mu_b=pts[:, 3], R=pts[:, 4])
    assert np.shape(fp.Q_star) == (len(pts),) and np.shape(fp.chi) == (len(pts),)
    for k, (sw, sv, sb, mb, R) in enumerate(MINIMAL_POINTS):
        ref = naive_minimal_fixed_point(sigma_w=sw, sigma_v=sv, sigma_b=sb, mu_b=mb, R=R)
        assert _rel(np.asarray(fp.Q_star)[k], ref["Q_star"]) <= RTOL
        assert _rel(np.asarray(fp.chi)[k], ref["chi"]) <= RTOL


def test_benchmark_runs_on_a_tiny_grid():
    res = run_benchmark(n=4, subsample=3, repeat=1)
    assert res["n_points"] == 16 and res["naive_subsample"] == 3
    assert res["max_rel_diff_Q_star"] <= 1e-6 and res["max_rel_diff_chi"] <= 1e-6
    assert res["engine_all_finite"]
    assert set(res["targets"]) == {"speedup>=1000", "max_rel_diff<=1e-6", "full_grid<1s", "all_finite"}

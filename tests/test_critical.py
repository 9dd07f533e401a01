"""Critical initialisation theory (mftrnn.theory.critical): identities, independent quadrature, feasibility, errors.

Tolerances.  The engine's fixed point and slopes are accurate to ~1e-12 (its own tests), so identities that hold
by construction (chi = 1 on the critical line, q* reproduced, xi = k T) are checked to 1e-9.  The independent
check of the vanilla formulas uses scipy.integrate.quad (absolute error ~1e-10 on O(1) integrands): 1e-8.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

import mftrnn as mf
from mftrnn.theory import critical
from mftrnn.theory.critical import (minimal_critical_mu_b, minimal_critical_sigma_w, minimal_for_timescale,
                             minimal_mu_b_roots, vanilla_critical, vanilla_critical_line, vanilla_min_q_star)

HP = ("sigma_w", "sigma_v", "sigma_b", "mu_b", "R")


def _hp(res):
    return {k: res[k] for k in HP}


def _gauss(f, mu, q):
    """E[f(e)], e ~ N(mu, q), by adaptive quadrature (independent of the engine's rule)."""
    s = math.sqrt(q)
    val, _ = integrate.quad(lambda z: f(mu + s * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -40, 40,
                            limit=400, epsabs=1e-13, epsrel=1e-12)
    return val


# ============================================================================================== vanilla
VANILLA_CASES = [
    dict(q_star=0.05), dict(q_star=1.0), dict(q_star=4.0, R=2.0), dict(q_star=1.0, sigma_b=0.3),
    dict(q_star=3.0, mu_b=0.5, sigma_b=0.2, R=0.5), dict(q_star=6.0, mu_b=-1.0),
]


@pytest.mark.parametrize("case", VANILLA_CASES)
def test_vanilla_fixed_point_reproduces_q_star_and_chi_one(case):
    res = vanilla_critical(**case)
    fp = mf.fixed_point("vanilla", **_hp(res))
    assert float(fp.q_star) == pytest.approx(case["q_star"], rel=1e-9)
    assert float(fp.chi) == pytest.approx(1.0, abs=1e-9)
    assert res["chi"] == pytest.approx(1.0, abs=1e-9) and math.isinf(res["xi"])
    assert float(fp.Q_star) == pytest.approx(res["Q_star"], rel=1e-9)
    assert res["chi_q"] < 1  # the fixed point is stable
    assert set(res) >= {"sigma_w", "sigma_v", "sigma_b", "mu_b", "R", "q_star", "Q_star", "chi", "xi"}


@pytest.mark.parametrize("case", VANILLA_CASES[:4] + VANILLA_CASES[5:])
def test_vanilla_formulas_against_independent_quadrature(case):
    res = vanilla_critical(**case)
    q, mu, sb, R = case["q_star"], case.get("mu_b", 0.0), case.get("sigma_b", 0.0), case.get("R", 1.0)
    dtanh2 = _gauss(lambda e: (1 - math.tanh(e) ** 2) ** 2, mu, q)
    tanh2 = _gauss(lambda e: math.tanh(e) ** 2, mu, q)
    assert res["sigma_w"] == pytest.approx(1 / math.sqrt(dtanh2), rel=1e-8)
    assert res["Q_star"] == pytest.approx(tanh2, rel=1e-8)
    assert res["sigma_v"] ** 2 * R == pytest.approx(q - tanh2 / dtanh2 - sb ** 2, rel=1e-7, abs=1e-12)


def test_vanilla_vectorised_equals_scalar():
    q = np.array([[0.5, 1.0, 3.0], [0.8, 2.0, 8.0]])
    mu = np.array([[0.0], [0.3]])
    vec = vanilla_critical(q, mu_b=mu, sigma_b=0.1, R=1.5)
    for i, j in np.ndindex(q.shape):
        s = vanilla_critical(float(q[i, j]), mu_b=float(mu[i, 0]), sigma_b=0.1, R=1.5)
        for k in ("sigma_w", "sigma_v", "Q_star", "chi", "chi_q"):
            assert vec[k].shape == q.shape
            assert vec[k][i, j] == pytest.approx(s[k], rel=1e-12, abs=1e-15)


def test_vanilla_small_q_star_limit():
    # q* -> 0 at mu_b = 0: tanh is linear there, so chi = 1 needs sigma_w -> 1 (sigma_w^2 = 1 + 2 q + O(q^2))
    # and sigma_v^2 R = q* - sigma_w^2 Q* is O(q^3)
    for q in (1e-4, 1e-3):
        res = vanilla_critical(q)
        assert res["sigma_w"] ** 2 == pytest.approx(1 + 2 * q, rel=10 * q ** 2)
        assert 0 < res["sigma_v"] ** 2 < 10 * q ** 3


def test_vanilla_feasibility_bound():
    for mu_b, sigma_b in ((1.0, 0.0), (0.5, 0.3), (0.0, 0.3), (-2.0, 0.0)):
        q_min = vanilla_min_q_star(mu_b=mu_b, sigma_b=sigma_b)
        assert q_min > 0
        ok = vanilla_critical(q_min * (1 + 1e-6), mu_b=mu_b, sigma_b=sigma_b)
        assert ok["sigma_v"] < 1e-2  # just above the bound: almost no input weight
        with pytest.raises(mf.DomainError, match=r"q\* >= E\[tanh\^2\]/E\[tanh'\^2\] \+ sigma_b\^2"):
            vanilla_critical(q_min * (1 - 1e-6), mu_b=mu_b, sigma_b=sigma_b)
        # the bound is where sigma_v^2 = (q* - sigma_w^2 Q* - sigma_b^2)/R vanishes
        sw, Qs = ok["sigma_w"], ok["Q_star"]
        assert q_min == pytest.approx(sw ** 2 * Qs + sigma_b ** 2, rel=1e-5)
    # mu_b = sigma_b = 0: every q* > 0 is feasible
    assert vanilla_min_q_star() == 0.0
    # tanh is odd, so the bound is even in mu_b; the two roots are found separately, so they agree only to
    # the root finder's rounding (seen: 6e-16 relative), not bit for bit
    assert vanilla_min_q_star(mu_b=1.0) == pytest.approx(vanilla_min_q_star(mu_b=-1.0), rel=1e-12)


def test_vanilla_infeasible_array_reports_count():
    with pytest.raises(mf.DomainError, match="2 of 3 points"):
        vanilla_critical(np.array([0.5, 1.0, 5.0]), mu_b=1.0)


def test_vanilla_without_input():
    with pytest.raises(mf.DomainError, match="R = 0"):
        vanilla_critical(1.0, R=0.0)
    # the message's suggestion works: with that sigma_b, q* = 1 is the critical fixed point without input
    line = vanilla_critical(1.0, R=1.0)
    sb = math.sqrt(line["sigma_v"] ** 2 * 1.0)  # sigma_v^2 R = q* - sigma_w^2 Q*: move it into the bias
    res = vanilla_critical(1.0, sigma_b=sb, R=0.0)
    assert res["sigma_v"] == 0.0
    fp = mf.fixed_point("vanilla", **_hp(res))
    assert float(fp.q_star) == pytest.approx(1.0, rel=1e-9) and float(fp.chi) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("bad", [dict(q_star=0.0), dict(q_star=-1.0), dict(q_star=float("nan")),
                                 dict(q_star=1.0, sigma_b=-0.1), dict(q_star=1.0, R=-1.0),
                                 dict(q_star="x"), dict(q_star=1e5)])
def test_vanilla_bad_input(bad):
    with pytest.raises(mf.DomainError):
        vanilla_critical(**bad)


def test_vanilla_line_expressions_are_the_engines():
    line = vanilla_critical_line()
    from mftrnn.theory.symbols import R, mu_b, sigma_b
    allowed = {line["q"], mu_b, sigma_b, R}
    for k in ("sigma_w", "Q_star", "sigma_v2", "q_min", "chi_q"):
        assert line[k].free_symbols <= allowed, k
    # chi of the engine, evaluated with sigma_w from the line at q, is exactly 1
    m = mf.mean_field("vanilla")
    from mftrnn.theory.symbols import sigma_w
    chi = m.display(m.chi).subs(sigma_w, line["sigma_w"])
    val = mf.Compiled([chi], [line["q"], mu_b])(np.array([0.3, 2.0]), np.array([0.0, 0.7]))[0]
    assert np.allclose(val, 1.0, atol=1e-13)


# ============================================================================================ minimalRNN
def test_minimal_threshold_sigma_w():
    swc = minimal_critical_sigma_w()
    assert 3 < swc < 4.5
    # just above: a chi = 1 point exists; just below: none (chi < 1 at every finite mu_b)
    res = minimal_critical_mu_b(swc * 1.002)
    assert res["chi"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(mf.DomainError, match="no chi = 1 point"):
        minimal_critical_mu_b(swc * 0.998)


@pytest.mark.parametrize("sigma_w,continuous", [(4.0, True), (5.0, False)])
def test_minimal_chi_one_boundary(sigma_w, continuous):
    res = minimal_critical_mu_b(sigma_w)
    fp = mf.fixed_point("minimal", sigma_w=sigma_w, mu_b=res["mu_b"])
    assert float(fp.chi) == pytest.approx(1.0, abs=1e-9)
    assert res["q_star"] == pytest.approx(float(fp.q_star), rel=1e-12)
    d = 1e-3
    below, above = (float(mf.fixed_point("minimal", sigma_w=sigma_w, mu_b=res["mu_b"] + s).chi) for s in (-d, d))
    assert below < 1 < above  # order -> chaos as mu_b grows
    assert res["upper_continuous"] is continuous
    up = res["mu_b_upper"]
    assert res["mu_b"] < up < 12
    inside, outside = (float(mf.fixed_point("minimal", sigma_w=sigma_w, mu_b=up + s).chi) for s in (-d, d))
    assert inside > 1 > outside
    if not continuous:  # a jump of the least fixed point: chi differs by O(0.1) across a 2e-3 step
        assert inside - outside > 0.05
        assert mf.fixed_point("minimal", sigma_w=sigma_w, mu_b=up + d).Q_star < 0.5 * mf.fixed_point(
            "minimal", sigma_w=sigma_w, mu_b=up - d).Q_star


def test_minimal_mu_b_roots_are_roots():
    target = math.exp(-1 / 500)  # 0.998: between chi's values on the two sides of the jump at sigma_w = 5
    roots = minimal_mu_b_roots(np.array([1.0, 3.8, 5.0]), target)
    assert {r["sigma_w"] for r in roots} == {1.0, 3.8, 5.0}
    cont = [r for r in roots if r["continuous"]]
    chi = mf.fixed_point("minimal", sigma_w=[r["sigma_w"] for r in cont], mu_b=[r["mu_b"] for r in cont]).chi
    assert np.allclose(chi, target, atol=1e-9)
    # at sigma_w = 5 the target is crossed below the chaotic window, and jumped over at its upper end
    s5 = [r for r in roots if r["sigma_w"] == 5.0]
    assert [r["continuous"] for r in s5][:2] == [True, False]


@pytest.mark.parametrize("T,k", [(10, 1.0), (50, 1.0), (28, 2.0), (784, 1.0)])
def test_minimal_for_timescale_reaches_xi(T, k):
    res = minimal_for_timescale(T, k=k)
    assert res["xi"] == pytest.approx(k * T, rel=1e-8)
    fp = mf.fixed_point("minimal", **_hp(res))
    assert float(fp.xi) == pytest.approx(k * T, rel=1e-8)
    assert float(fp.Q_star) == pytest.approx(res["Q_star"], rel=1e-10)
    # the reported spectrum is the Jacobian module's
    mom = mf.step_moments("minimal", orthogonal=True, **_hp(res))
    assert res["relative_variance"] == pytest.approx(mom["relative_variance"], rel=1e-10)
    assert res["spread"] == pytest.approx(T * mom["relative_variance"], rel=1e-10)
    assert res["narrow"] == (res["spread"] <= res["max_spread"])


def test_minimal_for_timescale_criterion():
    """Largest sigma_w on the grid with T r <= max_spread; the next grid value is too broad."""
    T = 40
    res = minimal_for_timescale(T)
    grid = np.array(critical.SIGMA_W_GRID)
    assert res["narrow"] and res["sigma_w"] in grid
    nxt = grid[grid > res["sigma_w"]]
    assert nxt.size, "choose a T whose choice is inside the grid"
    other = minimal_for_timescale(T, sigma_w=float(nxt[0]))
    assert other["spread"] > res["max_spread"] >= res["spread"]
    # the spectral spread grows with sigma_w (why the criterion is not simply 'narrowest')
    spreads = [minimal_for_timescale(T, sigma_w=s)["spread"] for s in (0.25, 1.0, 2.0)]
    assert spreads[0] < spreads[1] < spreads[2]


def test_minimal_for_timescale_falls_back_to_narrowest():
    res = minimal_for_timescale(5)  # short task: gates must leak, so no candidate is that narrow
    assert not res["narrow"]
    assert res["sigma_w"] == min(critical.SIGMA_W_GRID)
    assert res["spread"] > res["max_spread"]


def test_minimal_for_timescale_explicit_sigma_w_and_gaussian():
    res = minimal_for_timescale(100, sigma_w=4.0, orthogonal=False)
    assert res["sigma_w"] == 4.0 and res["xi"] == pytest.approx(100, rel=1e-8)
    mom = mf.step_moments("minimal", orthogonal=False, **_hp(res))
    assert res["relative_variance"] == pytest.approx(mom["relative_variance"], rel=1e-10)
    # sigma_w = 4 has three roots for chi = exp(-1/100) (below, inside and above the dip after the chaotic
    # window); the narrowest is the large-mu_b one
    assert res["candidates"] == 3
    roots = [r["mu_b"] for r in minimal_mu_b_roots(4.0, math.exp(-1 / 100)) if r["continuous"]]
    assert res["mu_b"] == pytest.approx(max(roots), abs=1e-9)


@pytest.mark.parametrize("bad,match", [
    (dict(T=0), "T must be > 0"), (dict(T=10, k=-1.0), "k must be > 0"), (dict(T=1e7), "exceeds"),
    (dict(T=10, R=0.0), "R = 0"), (dict(T=10, sigma_v=-1.0), "sigma_v"), (dict(T=float("inf")), "finite"),
    (dict(T=10, sigma_w_grid=[]), "empty"), (dict(T=10, max_spread=0.0), "max_spread"),
])
def test_minimal_for_timescale_bad_input(bad, match):
    with pytest.raises(mf.DomainError, match=match):
        minimal_for_timescale(**bad)


def test_minimal_critical_mu_b_bad_input():
    with pytest.raises(mf.DomainError):
        minimal_critical_mu_b(np.array([4.0, 5.0]))
    with pytest.raises(mf.DomainError):
        minimal_critical_mu_b(-1.0)

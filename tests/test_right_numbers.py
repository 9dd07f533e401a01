"""Right numbers or a clear error: the least stable root, the large-gate-bias regime, guards, clear errors."""
import mpmath as mp
import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mftrnn
import mftrnn.theory.spectrum
from mftrnn import ConvergenceError, DomainError, MftrnnError, fixed_point, get_cell, iterate_maps
from mftrnn.cells.registry import Cell, Preactivation
from mftrnn.theory import fixed_point as fpmod
from mftrnn.theory.fixed_point import _compiled

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _g(cell, Q, **hp):
    """g(Q) = F(Q) - Q and g'(Q) (fine rule, cancellation-free form) at an array of Q."""
    c = get_cell(cell)
    full = fpmod.check_hyperparameters(c, hp)
    return _compiled(c, "G")(np.asarray(Q, float), *[float(v) for v in full.values()])


def _first_down(cell, hi, **hp):
    """Bracket of the least stable root from a dense geometric scan of g (fine rule)."""
    Qs = np.concatenate([[0.0], np.geomspace(1e-14, hi, 4000)])
    g, _ = _g(cell, Qs, **hp)
    d = np.nonzero((g[:-1] >= 0) & (g[1:] < 0))[0]
    return Qs[d[0]], Qs[d[0] + 1], len(d)


# ---- 1. a pair of roots closer together than the scan's grid ----

def test_least_root_of_a_close_pair():
    fp = fixed_point("minimal", sigma_w=5.5, mu_b=5.25)
    assert fp.Q_star == pytest.approx(0.033249094814415, rel=1e-9)
    assert fp.chi == pytest.approx(0.993125154071307, rel=1e-9)
    assert bool(fp.multistable)
    lo, hi, n = _first_down("minimal", 2.0, sigma_w=5.5, mu_b=5.25)
    assert n == 2 and lo <= fp.Q_star <= hi
    # iterating the map from Q0 = 0 increases towards the least fixed point and never passes it
    it = iterate_maps("minimal", 400, Q0=0.0, sigma_w=5.5, mu_b=5.25)["Q_a"]
    assert np.all(np.diff(it) >= 0) and it[-1] <= fp.Q_star * (1 + 1e-12) and it[-1] > 0.75 * fp.Q_star


def test_multistable_plane_matches_a_dense_scan():
    sw, mb = np.meshgrid(np.linspace(4.5, 7.5, 12), np.linspace(4.0, 7.0, 12))
    fp = fixed_point("minimal", sigma_w=sw, mu_b=mb)
    for s, m, q, ms in zip(sw.ravel(), mb.ravel(), fp.Q_star.ravel(), fp.multistable.ravel()):
        lo, hi, n = _first_down("minimal", 2.0, sigma_w=s, mu_b=m)
        assert lo * (1 - 1e-9) <= q <= hi * (1 + 1e-9), (s, m)
        assert bool(ms) == (n > 1), (s, m)


# ---- 2. the minimalRNN at a large gate bias ----

def _asymptotic_minimal(mu, sv=1.0, sb=0.0, R=1.0):
    """Q* = R E[(1-u)^2] / E[(1-u)(1+u)] from the series 1 - sigmoid(e) = sum_k (-1)^(k+1) e^{-ke} (e ~ N(mu, q),
    exact to e^{-5 mu} relative; Q* is so small that q = sigma_v^2 R + sigma_b^2)."""
    mp.mp.dps = 30
    q, mu = mp.mpf(sv) ** 2 * R + mp.mpf(sb) ** 2, mp.mpf(mu)
    A = sum((-1) ** k * (k + 1) * mp.exp(-(k + 2) * mu + (k + 2) ** 2 * q / 2) for k in range(4))
    S1 = sum((-1) ** k * mp.exp(-(k + 1) * mu + (k + 1) ** 2 * q / 2) for k in range(5))
    return float(R * A / (2 * S1 - A))


# mpmath references (tanh-sinh quadrature at 30 digits of E[(1-u)^2] and E[(1-u)(1+u)], root by findroot)
MP_MINIMAL = {0: 0.4403957507010625, 5: 0.013960416050607823, 15: 6.854765486221253e-07,
              30: 2.09689782918697e-13}


@pytest.mark.parametrize("mu", sorted(MP_MINIMAL))
def test_minimal_against_mpmath(mu):
    assert fixed_point("minimal", mu_b=mu).Q_star == pytest.approx(MP_MINIMAL[mu], rel=1e-11)


@pytest.mark.parametrize("mu,sv,sb", [(37, 1, 0), (40, 1, 0), (50, 1, 0), (80, 1, 0), (100, 1, 0), (200, 1, 0),
                                      (300, 1, 0), (100, 3, 0), (60, 3, 2)])
def test_minimal_large_bias(mu, sv, sb):
    fp = fixed_point("minimal", mu_b=mu, sigma_v=sv, sigma_b=sb)
    assert fp.Q_star == pytest.approx(_asymptotic_minimal(mu, sv, sb), rel=1e-12)
    assert 0 < fp.Q_star <= 1.0 and 0 <= fp.chi <= 1.0
    # the memory time from the accurate 1 - chi: xi ~ 1/(2 E[1-u]) ~ e^{mu - q/2} / 2, far beyond 1/eps
    assert np.isfinite(fp.xi) and fp.xi > 1e15


def test_minimal_bias_scan_obeys_the_bound():
    mus = np.linspace(0, 100, 81)
    fp = fixed_point("minimal", mu_b=mus)
    assert np.all(fp.Q_star <= 1.0) and np.all(fp.Q_star > 0)
    assert np.all(np.diff(fp.Q_star) < 0)  # a larger bias keeps more of the state: less input enters


@pytest.mark.parametrize("mu", [360, 500, 1000, 1e6])
def test_minimal_beyond_double_range_is_refused(mu):
    with pytest.raises(DomainError, match="underflow"):
        fixed_point("minimal", mu_b=mu)


def test_guard_refuses_a_value_above_the_bound():
    cell = get_cell("minimal")
    hp = {k: np.array([v]) for k, v in fpmod.DEFAULTS.items()}
    ones = np.ones(1)
    with pytest.raises(ConvergenceError, match="bound"):
        fpmod._guard(cell, 2.0 * ones, 0.5 * ones, 0.5 * ones, 0 * ones, -ones, [ones], hp)
    with pytest.raises(ConvergenceError, match="chi"):
        fpmod._guard(cell, 0.5 * ones, -0.5 * ones, 0.5 * ones, 0 * ones, -ones, [ones], hp)
    with pytest.raises(ConvergenceError, match="satisfy"):
        fpmod._guard(cell, 0.5 * ones, 0.5 * ones, 0.5 * ones, 1e-3 * ones, -ones, [ones], hp)


def test_bounds_are_derived_from_the_cells():
    assert str(fpmod._upper_bound(get_cell("minimal"))) == "R"
    assert fpmod._upper_bound(get_cell("vanilla")) == 1


# ---- 3. spectra ----

def test_spectrum_of_many_steps_is_a_clear_error_or_a_number():
    x = np.geomspace(1e-3, 30, 20)
    with pytest.raises(DomainError, match="steps T"):
        mftrnn.spectral_density("vanilla", 1000, x)
    d = mftrnn.spectral_density("minimal", 1000, x, sigma_w=2.0, mu_b=3.0)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)


def test_spectral_density_does_not_depend_on_the_other_points():
    law = mftrnn.theory.spectrum.spectral_law("minimal", 5, orthogonal=True, sigma_w=2.0, mu_b=3.0)
    pts = np.array([1e-6, 3e-3, 0.02, 0.3, 2.0])
    together = law.density(pts)
    alone = np.array([law.density(np.array([p]))[0] for p in pts])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-15)  # the gap: O(eta) values, round-off


# ---- 4. clear errors ----

def test_empty_hyperparameter_array():
    with pytest.raises(DomainError, match="empty"):
        fixed_point("vanilla", sigma_w=np.array([]))


def test_cell_without_preactivation():
    h, x = sp.symbols("h x", real=True)
    cell = Cell(name="leaky_nopre", state=h, input=x, preactivations=(), update=h / 2 + x)
    with pytest.raises(DomainError, match="pre-activation"):
        fixed_point(cell)


def test_cell_with_sign():
    h, x, e = sp.symbols("h x e", real=True)
    cell = Cell(name="signum", state=h, input=x, preactivations=(Preactivation(e),), update=sp.sign(e))
    with pytest.raises(DomainError, match="not smooth"):
        fixed_point(cell)


# ---- properties over hyperparameter boxes ----

BOX = dict(sigma_w=st.floats(0.0, 6.0), sigma_v=st.floats(0.0, 3.0), sigma_b=st.floats(0.0, 2.0),
           R=st.floats(0.0, 4.0))


def _check(cell, hp):
    try:
        fp = fixed_point(cell, **hp)
    except MftrnnError:
        return None
    Q, chi = float(fp.Q_star), float(fp.chi)
    assert np.isfinite([Q, chi, fp.chi_q, fp.q_star]).all()
    assert Q >= 0 and chi >= 0
    bound = hp["R"] if cell == "minimal" else 1.0
    assert Q <= bound * (1 + 1e-9) + 1e-300
    g, dg = _g(cell, np.array([Q]), **hp)
    if g[0] != 0:
        assert abs(g[0] / dg[0]) <= 1e-8 * max(Q, 1e-300)  # Q* satisfies its map (Newton step)
    # the least stable root: below the first down-crossing of a dense scan's end, above its start
    lo, hi, _ = _first_down(cell, max(4.0 * bound, 1.0), **hp)
    if Q > 1e-12:
        assert lo * (1 - 1e-9) <= Q <= hi * (1 + 1e-9)
    return fp


def _chi_by_difference(cell, fp, hp):
    """dC_t/dC at identical inputs on the diagonal, by a one-sided difference of the covariance map."""
    c = get_cell(cell)
    full = [float(v) for v in fpmod.check_hyperparameters(c, hp).values()]
    Q = float(fp.Q_star)
    dC = 1e-5 * Q
    fC = _compiled(c, "C")
    (G1,), (G0,) = fC(Q, Q, 1.0, *full)[:1], fC(Q - dC, Q, 1.0, *full)[:1]
    return (G1 - G0) / dC


@settings(max_examples=100, **SETTINGS)
@given(mu_b=st.floats(-5.0, 5.0), **BOX)
def test_vanilla_properties(mu_b, **box):
    hp = dict(box, mu_b=mu_b)
    fp = _check("vanilla", hp)
    if fp is not None and fp.Q_star > 1e-6:
        assert _chi_by_difference("vanilla", fp, hp) == pytest.approx(float(fp.chi), rel=1e-3, abs=1e-9)


@settings(max_examples=100, **SETTINGS)
@given(mu_b=st.floats(-10.0, 100.0), **BOX)
def test_minimal_properties(mu_b, **box):
    hp = dict(box, mu_b=mu_b)
    fp = _check("minimal", hp)
    if fp is not None and fp.Q_star > 1e-6:
        assert _chi_by_difference("minimal", fp, hp) == pytest.approx(float(fp.chi), rel=1e-3, abs=1e-9)


@settings(max_examples=6, **SETTINGS)
@given(sigma_w=st.floats(3.0, 8.0), mu_b=st.floats(2.0, 8.0))
def test_minimal_iteration_from_zero_stays_below(sigma_w, mu_b):
    fp = fixed_point("minimal", sigma_w=sigma_w, mu_b=mu_b)
    it = iterate_maps("minimal", 150, Q0=0.0, sigma_w=sigma_w, mu_b=mu_b)["Q_a"]
    assert it[-1] <= fp.Q_star * (1 + 1e-10)


def test_near_tangent_map_is_not_refused():
    """Just above the bifurcation (sigma_v = 0, sigma_w -> 1+) the map is nearly tangent at Q* (dg -> 0): the
    residual there is at rounding level and the point must be returned, not refused (the book's critical line
    crosses it). Q* ~ 3 (sigma_w - 1) for the vanilla RNN from the expansion of E[tanh^2]."""
    for d in (1e-4, 1e-6, 1e-7):
        fp = fixed_point("vanilla", sigma_w=1.0 + d, sigma_v=0.0, sigma_b=0.0)
        assert 0 < float(fp.Q_star) < 10 * d


def test_chi_c_never_above_one_at_a_frozen_gate():
    """minimalRNN at mu_b = 100: the gate is frozen open (u = 1 to 1e-44), chi_c -> 1; rounding once gave
    1 + 1.6e-15, above the bound a stable C* guarantees."""
    fp = mftrnn.fixed_point("minimal", mu_b=100.0, correlations=True)
    assert 0.0 <= float(fp.chi_c) <= 1.0

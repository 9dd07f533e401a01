"""Property-based tests (Hypothesis) of the gated cells' fixed points (``lstm``, ``gru``) and of the Jacobian spectra
(``step_moments``, ``product_moments``, ``spectral_law``/``spectral_density`` of the vanilla and minimal cells):
every output is finite or a library error (:class:`mftrnn.MftrnnError`), never a bare Python exception; the bounds
the theory guarantees hold; fixed points satisfy their maps, recomputed here by independent quadrature; ``chi``,
``Q*`` agree with the untied network (the finite difference of the very map the mean field describes exactly as
N -> infinity, sampled by :mod:`mftrnn.nets.untied_fast`); closed forms agree with direct recursions.

Deterministic (``derandomize=True``) and small: the LSTM engine costs seconds per point, so few examples.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import mftrnn
from mftrnn import MftrnnError, gated_fixed_point, product_moments, step_moments
from mftrnn.nets.untied_fast import chi_untied
from mftrnn.theory.gated import cell_state_law
from mftrnn.theory.spectrum import spectral_law

#: deterministic; no shrinking (a failing case is reported as found: shrinking re-runs the seconds-long engines for
#: minutes)
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
                phases=[Phase.explicit, Phase.reuse, Phase.generate])


def sig(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ---- independent Gaussian expectations: the trapezoid rule in the standardised variable on [-12, 12] ----
# For an integrand analytic in a strip |Im z| < d the trapezoid rule's error is ~exp(-2 pi d / h): with tanh and
# sigmoid of mu + s z (s <= 5 here), d >= pi / (2 s) >= 0.3 and h = 0.02 it is below 1e-40; the Gaussian tail
# beyond 12 standard deviations is below 1e-32. So these expectations are exact to rounding (~1e-15).
_Z = np.linspace(-12.0, 12.0, 1201)
_W = np.exp(-_Z ** 2 / 2) / math.sqrt(2 * math.pi) * (_Z[1] - _Z[0])
_W[[0, -1]] /= 2


def E1(f, mu, var):
    """E f(e), e ~ N(mu, var)."""
    return float(_W @ f(mu + math.sqrt(var) * _Z))


def E_candidate(k, mu_n, q_nx, q_nh, mu_r, q_r):
    """E[tanh(e_nx + sigmoid(e_r) e_nh)^k] for the torch GRU: given e_r the argument is N(mu_n, q_nx + s^2 q_nh)."""
    s = sig(mu_r + math.sqrt(q_r) * _Z)[:, None]
    u = mu_n + np.sqrt(q_nx + s * s * q_nh) * _Z[None, :]
    return float(_W @ (np.tanh(u) ** k) @ _W)


def _field_vars(cell, hp, Q):
    """q_K = sigma_w,K^2 Q + sigma_v,K^2 R + sigma_b,K^2 for every gate K (all read the output h)."""
    return {g: hp[f"sigma_w_{g}"] ** 2 * Q + hp[f"sigma_v_{g}"] ** 2 * hp["R"] + hp[f"sigma_b_{g}"] ** 2
            for g in {"lstm": "ifgo", "gru": "rz"}[cell]}


def gru_map(hp, Q):
    """(Q_t, M*) of the torch GRU's closed moment map h_t = z h + (1 - z) n with the mean at its fixed point
    M*(Q) = E[1-z] E[n] / (1 - E[z]) = E[n] (fields independent of h and of each other; module docstring of
    mftrnn.theory.gated): Q_t = E[z^2] Q + 2 E[z(1-z)] E[n] M* + E[(1-z)^2] E[n^2]."""
    q = _field_vars("gru", hp, Q)
    mz, qz = hp["mu_b_z"], q["z"]
    Ez, Ez2 = E1(sig, mz, qz), E1(lambda e: sig(e) ** 2, mz, qz)
    q_nx = hp["sigma_v_n"] ** 2 * hp["R"] + hp["sigma_b_n"] ** 2
    q_nh = hp["sigma_w_n"] ** 2 * Q
    En = E_candidate(1, hp["mu_b_n"], q_nx, q_nh, hp["mu_b_r"], q["r"])
    En2 = E_candidate(2, hp["mu_b_n"], q_nx, q_nh, hp["mu_b_r"], q["r"])
    M = En  # E[1-z] E[n] / (1 - E[z])
    return Ez2 * Q + 2 * (Ez - Ez2) * En * M + (1 - 2 * Ez + Ez2) * En2, M


def lstm_cell_moments(hp, Q):
    """(M_c, Q_c, E[o^2]) of the LSTM's cell state c_t = f c + i g at output second moment Q: the exact moments of
    the stationary perpetuity, M = E[B] / (1 - E[A]), Q_c = (E[B^2] + 2 E[A] E[B] M) / (1 - E[A^2]),
    A = sigmoid(e_f), B = sigmoid(e_i) tanh(e_g), independent fields."""
    q = _field_vars("lstm", hp, Q)
    EA, EA2 = E1(sig, hp["mu_b_f"], q["f"]), E1(lambda e: sig(e) ** 2, hp["mu_b_f"], q["f"])
    EB = E1(sig, hp["mu_b_i"], q["i"]) * E1(np.tanh, hp["mu_b_g"], q["g"])
    EB2 = E1(lambda e: sig(e) ** 2, hp["mu_b_i"], q["i"]) * E1(lambda e: np.tanh(e) ** 2, hp["mu_b_g"], q["g"])
    M = EB / (1 - EA)
    return M, (EB2 + 2 * EA * EB * M) / (1 - EA2), E1(lambda e: sig(e) ** 2, hp["mu_b_o"], q["o"])


# ---- strategies ----
def gated_box(bias_gate):
    """Shorthand hyperparameters for every gate, plus the bias of the memory gate (f or z), which sets the
    timescale; up to mu = 4 (a memory of ~50 steps)."""
    return st.fixed_dictionaries(dict(
        sigma_w=st.floats(0.0, 3.0), sigma_v=st.floats(0.0, 2.0), sigma_b=st.floats(0.0, 1.0),
        mu_b=st.floats(-2.0, 2.0), R=st.floats(0.0, 2.0), **{f"mu_b_{bias_gate}": st.floats(-2.0, 4.0)}))


def _full(fp):
    return {k: float(v) for k, v in fp.params.items()}


def _untied(cell, hp):
    """The untied network (N = 1000, 8 networks, 130 measured steps after 100): chi as the mean ratio of
    |delta_t|^2 / |delta_{t-1}|^2 for an infinitesimal perturbation (eps = 1e-6: a finite difference of the step),
    and the time-averaged Q of the output."""
    return chi_untied(cell, N=1000, T=150, burn_in=100, settle=20, n_networks=8, seed=3, **hp)


def _agrees_with_network(theory, mean, se):
    # 5 standard errors over the 8 networks, plus the O(1/N) = 1e-3 relative bias of a finite width
    assert abs(theory - mean) <= 5 * se + 1e-3 * abs(theory), (theory, mean, se)


# ---- GRU ----
@settings(max_examples=10, **SETTINGS)
@given(hp=gated_box("z"))
# inputs and biases of variance ~1e-35: the least root is tiny but positive (it was returned as 0 with M* != 0)
@example(hp={"sigma_v": 0.25, "mu_b_z": 1.1620604477062608, "R": 3.2149325953176263e-34,
             "sigma_b": 1.1754943508222875e-38, "sigma_w": 5.960464477539063e-08, "mu_b": 5.408934244690976e-68})
def test_gru_properties(hp):
    try:
        fp = gated_fixed_point("gru", **hp)
    except MftrnnError:
        return
    full = _full(fp)
    Q, chi, chi_q, M = float(fp.Q_star), float(fp.chi), float(fp.chi_q), float(fp.M_star)
    assert np.isfinite([Q, chi, chi_q, M]).all()
    # bounds: h_t is a convex combination of h and tanh(.), so |h| <= 1 from a zero state: 0 <= Q* <= 1, M^2 <= Q*
    assert 0.0 <= Q <= 1.0 and chi >= 0.0 and M * M <= Q * (1 + 1e-9) + 1e-300
    q = _field_vars("gru", full, Q)
    for g in "rz":
        assert float(fp.q_stars[f"e_{g}"]) == pytest.approx(q[g], rel=1e-12, abs=1e-300)
    # the fixed point satisfies its map, recomputed by quadrature (both exact to ~1e-13; brentq's rtol 1e-15)
    FQ, M_map = gru_map(full, Q)
    assert FQ == pytest.approx(Q, rel=1e-9, abs=1e-13)
    assert M == pytest.approx(M_map, rel=1e-9, abs=1e-12)
    # the least root: nothing below Q* is a fixed point (F(Q) > Q on a scan of (0, Q*))
    for x in Q * np.array([1e-6, 1e-3, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99]):
        if Q > 1e-9:
            assert gru_map(full, x)[0] > x
    # chi_q = dF/dQ at Q* (mean at its fixed point): Richardson-extrapolated central difference of the quadrature
    # map (truncation ~h^4 F^(5) ~ 1e-16, rounding ~1e-15 / h ~ 1e-10 / Q*); chi_q <= 1 at the least stable root
    if Q > 1e-3:
        h = 1e-3 * Q
        d = lambda hh: (gru_map(full, Q + hh)[0] - gru_map(full, Q - hh)[0]) / (2 * hh)  # noqa: E731
        assert chi_q == pytest.approx((4 * d(h / 2) - d(h)) / 3, abs=1e-7)
    assert chi_q <= 1 + 1e-9
    # chi and Q* against the untied network
    sim = _untied("gru", hp)
    _agrees_with_network(chi, sim["chi_arith"], sim["chi_arith_se"])
    _agrees_with_network(Q, sim["Q_h_mean"], sim["Q_h_se"])


# ---- LSTM (torch.nn.LSTM: the gates read h = o tanh(c); the law of c is not Gaussian) ----
@settings(max_examples=6, **SETTINGS)
@given(hp=gated_box("f"))
def test_lstm_properties(hp):
    try:
        fp = gated_fixed_point("lstm", **hp)
    except MftrnnError:
        return
    full = _full(fp)
    Q, Qc, chi, chi_q, M = (float(v) for v in (fp.Q_star, fp.Qc_star, fp.chi, fp.chi_q, fp.M_star))
    assert np.isfinite([Q, Qc, chi, chi_q, M]).all()
    assert chi >= 0.0 and 0.0 <= chi_q <= 1 + 1e-9 and float(fp.law_error) < 1e-8
    # |h| = o |tanh c| <= |tanh c| <= |c|: Q* <= E[tanh^2 c] <= Qc*, and Q* <= E[o^2] <= 1 (E[tanh^2 c] is
    # computed as 1 - (Parseval integral): absolute rounding ~1e-15, hence the absolute tolerance)
    T2 = cell_state_law(fp).expect_tanh2()
    M_c, Qc_map, Eo2 = lstm_cell_moments(full, Q)
    assert 0.0 <= Q <= T2 * (1 + 1e-9) + 1e-13 and T2 <= Qc * (1 + 1e-9) + 1e-13 and Q <= Eo2 * (1 + 1e-9)
    for g in "ifgo":
        assert float(fp.q_stars[f"e_{g}"]) == pytest.approx(_field_vars("lstm", full, Q)[g], rel=1e-12, abs=1e-300)
    # the cell state's exact moments, recomputed by quadrature; the output map Q* = E[o^2] E_pi[tanh^2 c]
    assert Qc == pytest.approx(Qc_map, rel=1e-9, abs=1e-14)
    assert M == pytest.approx(M_c, rel=1e-9, abs=1e-12)
    assert Q == pytest.approx(Eo2 * T2, rel=1e-9, abs=1e-13)
    # chi, and E_pi[tanh^2 c] through Q*, against the untied network
    sim = _untied("lstm", hp)
    _agrees_with_network(chi, sim["chi_arith"], sim["chi_arith_se"])
    _agrees_with_network(Q, sim["Q_h_mean"], sim["Q_h_se"])


def test_gated_spectra_are_a_clear_error():
    for f in (lambda: product_moments("lstm", 5), lambda: step_moments("gru"),
              lambda: mftrnn.spectral_density("lstm", 2, [0.5]), lambda: spectral_law("gru", 3)):
        with pytest.raises(MftrnnError, match="gated cell"):
            f()


# ---- spectra of the vanilla and minimal cells ----
SPECTRAL_BOX = dict(sigma_w=st.floats(0.0, 4.0), sigma_v=st.floats(0.0, 2.0), sigma_b=st.floats(0.0, 1.5),
                    R=st.floats(0.0, 2.0))


def _cell_hp(cell, mu_b, box):
    return dict(box, mu_b=mu_b if cell == "minimal" else mu_b / 2)


@settings(max_examples=40, **SETTINGS)
@given(cell=st.sampled_from(["vanilla", "minimal"]), mu_b=st.floats(-4.0, 8.0), orthogonal=st.booleans(),
       **SPECTRAL_BOX)
def test_step_moments_properties(cell, mu_b, orthogonal, **box):
    hp = _cell_hp(cell, mu_b, box)
    try:
        m = step_moments(cell, orthogonal=orthogonal, **hp)
    except MftrnnError:
        return
    keys = ("m1", "m2", "variance", "relative_variance", "chi", "E_a2", "E_a4", "E_b2", "E_a2b2", "E_b4")
    assert np.isfinite([m[k] for k in keys]).all()
    s = hp["sigma_w"] ** 2
    a2, a4, b2, a2b2, b4 = (m[k] for k in ("E_a2", "E_a4", "E_b2", "E_a2b2", "E_b4"))
    # moments of real coefficients: Cauchy-Schwarz (up to rounding, and to the underflow of b^4 when b ~ 1e-150);
    # the vanilla RNN has a = 0, 0 < b = tanh' <= 1; the minimalRNN has 0 < a = u < 1
    tol, tiny = 1e-12, 1e-300
    assert a4 >= a2 * a2 * (1 - tol) - tiny and b4 >= b2 * b2 * (1 - tol) - tiny
    assert a2b2 <= math.sqrt(a4 * b4) * (1 + tol) + tiny
    if cell == "vanilla":
        assert a2 == 0 and 0 < b2 <= 1 and b4 <= b2 * (1 + tol)
    else:
        assert 0 <= a4 <= a2 * (1 + tol) and a2 <= 1
    # m1 is chi (two computations: the Jacobian's coefficients and the fixed-point engine's chi)
    assert m["m1"] == pytest.approx(a2 + s * b2, rel=1e-12, abs=1e-300)
    assert m["m1"] == pytest.approx(m["chi"], rel=1e-9, abs=1e-15)
    kappa = 0.0 if orthogonal else 1.0
    m2 = a4 + 2 * s * (a2b2 + a2 * b2) + s * s * (b4 + kappa * b2 * b2)
    assert m["m2"] == pytest.approx(m2, rel=1e-12, abs=1e-300)
    assert m["variance"] >= -1e-12 * m["m1"] ** 2 and m["relative_variance"] >= -1e-12
    if not orthogonal:  # Haar W removes the Wishart fluctuation: a smaller variance
        mo = step_moments(cell, orthogonal=True, **hp)
        assert mo["variance"] <= m["variance"] * (1 + 1e-12) + 1e-300


def _loop_relative_variance_independent(step, s, T):
    """T steps of the independent-coefficient recursion of product_moments' docstring, directly:
    v' = v + alpha d + r, d' = beta d + delta from v = d = 0."""
    a2, a4, b2, a2b2, b4 = (step[k] for k in ("E_a2", "E_a4", "E_b2", "E_a2b2", "E_b4"))
    m1 = a2 + s * b2
    alpha, beta = (a4 - a2 * a2) / m1 ** 2, a4 / m1 ** 2
    delta = (a4 + 2 * s * a2b2 + s * s * b4 - m1 * m1) / m1 ** 2
    v = d = 0.0
    for _ in range(T):
        v, d = v + alpha * d + step["relative_variance"], beta * d + delta
    return v


@settings(max_examples=40, **SETTINGS)
@given(cell=st.sampled_from(["vanilla", "minimal"]), mu_b=st.floats(-4.0, 8.0), orthogonal=st.booleans(),
       T=st.one_of(st.integers(1, 300), st.integers(1, 2 ** 53)), **SPECTRAL_BOX)
def test_product_moments_properties(cell, mu_b, orthogonal, T, **box):
    hp = _cell_hp(cell, mu_b, box)
    try:
        p = product_moments(cell, T, orthogonal=orthogonal, **hp)
        step = step_moments(cell, orthogonal=orthogonal, **hp)
    except MftrnnError:
        return
    chi, r = step["m1"], step["relative_variance"]
    # every log is a number or -inf (an exact 0); linear values are finite or None (under/overflow, log reported)
    for k in ("log_mean", "log_variance", "log_m2", "log_variance_independent", "log_relative_variance_independent"):
        assert not math.isnan(p[k]) and p[k] != math.inf, k
    for k in ("mean", "variance", "m2", "variance_independent", "relative_variance_independent"):
        assert p[k] is None or (math.isfinite(p[k]) and p[k] >= 0), k
    assert math.isfinite(p["relative_variance"]) and p["relative_variance"] >= 0
    # closed forms: mean = chi^T, relative variance = T r
    if chi > 0:
        assert p["log_mean"] == pytest.approx(T * math.log(chi), rel=1e-12, abs=1e-12)
    else:
        assert p["log_mean"] == -math.inf and p["mean"] == 0
    if p["mean"] is not None and p["mean"] > 0:
        assert p["mean"] == pytest.approx(math.exp(p["log_mean"]), rel=1e-9)
    assert p["relative_variance"] == pytest.approx(T * r, rel=1e-12, abs=1e-300)
    if p["relative_variance_independent"] is not None:  # independent coefficients add a non-negative term
        assert p["relative_variance_independent"] >= p["relative_variance"] * (1 - 1e-12)
        if T <= 300 and chi > 1e-150:
            loop = _loop_relative_variance_independent(step, hp["sigma_w"] ** 2, T)
            assert p["relative_variance_independent"] == pytest.approx(loop, rel=1e-9, abs=1e-300)
    if T == 1 and chi > 1e-150:
        assert p["mean"] == pytest.approx(chi, rel=1e-12)
        assert p["variance"] == pytest.approx(step["variance"], rel=1e-9, abs=1e-300)


@settings(max_examples=5, **SETTINGS)
@given(cell=st.sampled_from(["vanilla", "minimal"]), T=st.integers(1, 5), sigma_w=st.floats(0.5, 2.5),
       mu_b=st.floats(0.0, 4.0), sigma_b=st.floats(0.0, 0.5))
def test_spectral_density_properties(cell, T, sigma_w, mu_b, sigma_b):
    hp = dict(sigma_w=sigma_w, sigma_b=sigma_b, mu_b=mu_b if cell == "minimal" else 0.0)
    try:
        law = spectral_law(cell, T, **hp)
    except MftrnnError:
        return
    x = law.grid(200)
    d = law.density(x)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    assert law.mass() <= 1 + 1e-4  # its own quadrature on 800 points over the support (errors ~1e-5, as below)
    # the mean by the trapezoid rule in ln x on a geometric grid from 1e-8 to 16 times the upper edge of support():
    # wider than the support, whose factor-2 scan can step over narrow components above the bulk (minimal, T = 1,
    # sigma_w = 2.28, mu_b = 2.16, sigma_b = 0.19: bumps at 3.8-5.9 beyond the reported edge 3.07, with 0.13% of the
    # mass and 0.7% of the mean); below a = 1e-8 hi the mean loses at most a F(a) <= a. Tolerance 1e-3 relative:
    # the rule across a square-root edge errs by ~h^1.5 (h = 0.7% here), with a sign that depends on where the edge
    # falls between nodes (measured 1e-5 to 1.4e-4 on these laws and on the two cases named here, changing sign
    # under refinement); the mass is at most 1 to the same accuracy.
    lo, hi = law.support()
    x = np.geomspace(1e-8 * hi, 16 * hi, 3000)
    d = law.density(x)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    mean = product_moments(cell, T, **hp)["mean"]
    assert law.mean == pytest.approx(mean, rel=1e-9)
    assert np.trapezoid(x * d, np.log(x)) <= 1 + 1e-3
    assert np.trapezoid(x * x * d, np.log(x)) == pytest.approx(mean, rel=1e-3, abs=1e-8 * hi)
    # nothing above 16 times the upper edge (x rho below the support's threshold, 1e-9 of its maximum)
    outside = np.array([20 * hi, 100 * hi])
    assert np.all(outside * law.density(outside) <= 1e-9 * np.max(x * d))
    for bad in ([-1.0], [0.0], [np.nan], [np.inf], [1.0, -np.inf]):
        with pytest.raises(MftrnnError):
            mftrnn.spectral_density(cell, T, np.array(bad, float), **hp)
    assert mftrnn.spectral_density(cell, T, np.array([]), **hp).shape == (0,)

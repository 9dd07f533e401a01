"""The derived maps against hand derivations, analytic identities and limits; fixed-point API behaviour."""
import numpy as np
import pytest
import sympy as sp
from scipy import integrate, optimize

import mftrnn as mf
from mftrnn.theory.fixed_point import unbounded
from mftrnn import expect, sigmoid
from mftrnn.cells.registry import R, mu_b, sigma_b, sigma_v, sigma_w
from mftrnn.theory.meanfield import Q
from mftrnn.theory.numeric import Compiled

e = sp.Symbol("e", real=True)
HYP = [Q, sigma_w, sigma_v, sigma_b, mu_b, R]
POINTS = np.array([[0.4, 1.3, 0.7, 0.2, -0.8, 1.5], [1.1, 0.2, 2.0, 0.0, 3.0, 0.5], [0.05, 3.0, 1.0, 0.5, 0.0, 2.0]]).T


def _same(a, b, args=HYP, pts=POINTS):
    fa, fb = Compiled([a], args), Compiled([b], args)
    np.testing.assert_allclose(fa(*pts)[0], fb(*pts)[0], rtol=1e-12, atol=1e-15)


def test_vanilla_maps_match_hand_derivation():
    m = mf.mean_field("vanilla")
    q = sigma_w**2 * Q + sigma_v**2 * R + sigma_b**2
    _same(m.Q_map, expect(sp.tanh(e) ** 2, e, mu_b, q))
    _same(m.chi, sigma_w**2 * expect((1 - sp.tanh(e) ** 2) ** 2, e, mu_b, q))
    # chi_q = sigma_w^2 E[phi'^2 + phi phi''] (Price: d/dq E[phi^2] = E[phi'^2 + phi phi''])
    phi = sp.tanh(e)
    _same(m.chi_q, sigma_w**2 * expect(phi.diff(e) ** 2 + phi * phi.diff(e, 2), e, mu_b, q))


def test_minimal_maps_match_hand_derivation():
    m = mf.mean_field("minimal")
    q = sigma_w**2 * Q + sigma_v**2 * R + sigma_b**2
    u = sigmoid(e)
    _same(m.Q_map, Q * expect(u**2, e, mu_b, q) + R * expect((1 - u) ** 2, e, mu_b, q))
    _same(m.chi, expect(u**2, e, mu_b, q) + sigma_w**2 * (Q + R) * expect(u.diff(e) ** 2, e, mu_b, q))


@pytest.mark.parametrize("cell", mf.cells("single"))
def test_fixed_points_satisfy_their_maps(cell):
    rng = np.random.default_rng(0)
    hp = dict(sigma_w=rng.uniform(0, 4, 50), sigma_v=rng.uniform(0, 3, 50), sigma_b=rng.uniform(0, 1, 50),
              mu_b=rng.uniform(-6, 6, 50), R=rng.uniform(0, 2, 50))
    ok = ~unbounded(cell, **hp)  # ReLU at sigma_w^2 >= 2 (mu_b = 0), linear at sigma_w >= 1: no fixed point exists
    assert ok.sum() >= 10
    hp = {k: v[ok] for k, v in hp.items()}
    fp = mf.fixed_point(cell, **hp)
    F = Compiled([mf.mean_field(cell).Q_map], HYP)(fp.Q_star, *hp.values())[0]
    np.testing.assert_allclose(F, fp.Q_star, rtol=1e-11, atol=1e-300)
    assert np.all(np.abs(fp.chi_q) < 1)  # the returned fixed point is stable
    np.testing.assert_allclose(fp.q_star, hp["sigma_w"] ** 2 * fp.Q_star + hp["sigma_v"] ** 2 * hp["R"]
                               + hp["sigma_b"] ** 2, rtol=1e-14)


def test_minimal_gate_symmetry_at_zero_bias():
    """At mu_b = 0, u(-e) = 1 - u(e): the derived variance map's coefficients of Q and R, E[u^2] and E[(1-u)^2],
    are equal (and differ at mu_b != 0)."""
    m = mf.mean_field("minimal")
    q = m.q_symbols[mf.get_cell("minimal").preactivations[0].symbol].q
    keep, admit = m.variance_map.coeff(Q), m.variance_map.coeff(R)
    f = Compiled([keep, admit], [mu_b, q])
    qs = np.array([0.0, 0.3, 2.0, 50.0])
    a, b = f(0.0, qs)
    np.testing.assert_allclose(a, b, rtol=1e-13)
    a, b = f(1.0, qs)
    assert np.all(a - b > 0.1)


def _poole_feedforward(sw, sb):
    """Feed-forward tanh network (Poole et al. 2016): q = sw^2 E[tanh(sqrt(q) z)^2] + sb^2, chi_1 = sw^2 E[sech^4]."""
    gauss = lambda f, q: integrate.quad(lambda z: f(np.sqrt(q) * z) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi),
                                        -12, 12, epsabs=0, epsrel=1e-13, limit=200)[0]
    g = lambda q: sw**2 * gauss(lambda x: np.tanh(x) ** 2, q) + sb**2 - q
    q = optimize.brentq(g, 1e-300 if sb > 0 else 1e-6, 100, xtol=1e-15, rtol=1e-14)
    return q, sw**2 * gauss(lambda x: np.cosh(x) ** -4, q)


@pytest.mark.parametrize("sw,sb", [(1.5, 0.0), (2.5, 0.3), (0.8, 0.4), (1.2, 0.05)])
def test_vanilla_without_input_is_the_feedforward_tanh_network(sw, sb):
    fp = mf.fixed_point("vanilla", sigma_w=sw, sigma_v=0.0, sigma_b=sb, mu_b=0.0)
    q, chi1 = _poole_feedforward(sw, sb)
    np.testing.assert_allclose(fp.q_star, q, rtol=1e-9)
    np.testing.assert_allclose(fp.chi, chi1, rtol=1e-9)


def test_vanilla_order_to_chaos_transition_at_sigma_w_one():
    """No input and no bias: Q* = 0 and chi = sigma_w^2 for sigma_w <= 1 (the critical point is sigma_w = 1)."""
    sw = np.array([0.3, 0.9, 1.0])
    fp = mf.fixed_point("vanilla", sigma_w=sw, sigma_v=0.0)
    np.testing.assert_array_equal(fp.Q_star, 0.0)
    np.testing.assert_allclose(fp.chi, sw**2, rtol=1e-14)
    assert np.isinf(fp.xi[-1])
    above = mf.fixed_point("vanilla", sigma_w=1.05, sigma_v=0.0)
    assert above.Q_star > 0 and above.chi > 1


def test_minimal_closed_forms_without_recurrence():
    """sigma_w = sigma_v = sigma_b = 0: u = sigmoid(mu_b) is constant, Q* = (1-u) R / (1+u), chi = u^2."""
    mb = np.array([-10.0, -2.0, 0.0, 3.0, 10.0])
    u = 1 / (1 + np.exp(-mb))
    fp = mf.fixed_point("minimal", sigma_w=0.0, sigma_v=0.0, mu_b=mb, R=1.3)
    # the root of g(Q) = Q_t(Q) - Q is conditioned by 1/(1 - chi_q) = 1/(1 - u^2) ~ 1e4 at mu_b = 10: 1e-10
    np.testing.assert_allclose(fp.Q_star, (1 - u) * 1.3 / (1 + u), rtol=1e-10)
    np.testing.assert_allclose(fp.chi, u**2, rtol=1e-12)


def test_critical_line_has_chi_one_and_diverging_timescale():
    """Locate chi = 1 in sigma_w for the vanilla RNN with input; xi grows as |1 - chi|^-1 on approach."""
    f = lambda sw: float(mf.fixed_point("vanilla", sigma_w=sw, sigma_v=0.5).chi) - 1
    sc = optimize.brentq(f, 1.0, 3.0, xtol=1e-13)
    fp = mf.fixed_point("vanilla", sigma_w=sc * (1 - np.array([1e-2, 1e-3, 1e-4])), sigma_v=0.5)
    assert abs(f(sc)) < 1e-10
    ratio = fp.xi * (1 - fp.chi)
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-2)  # xi = -1/ln chi ~ 1/(1 - chi)


def test_array_and_scalar_results_agree():
    sw = np.linspace(0.1, 3, 7)[:, None]
    mb = np.linspace(-3, 5, 5)[None, :]
    fp = mf.fixed_point("minimal", sigma_w=sw, mu_b=mb)
    assert fp.chi.shape == (7, 5)
    one = mf.fixed_point("minimal", sigma_w=sw[3, 0], mu_b=mb[0, 2])
    np.testing.assert_allclose(one.chi, fp.chi[3, 2], rtol=1e-12)
    assert isinstance(one.to_dict()["chi"], float)


def test_correlation_fixed_point_for_independent_inputs():
    fp = mf.fixed_point("vanilla", sigma_w=1.2, sigma_v=0.8, sigma_b=0.3, correlations=True)
    m = mf.mean_field("vanilla")
    from mftrnn.theory.meanfield import C
    from mftrnn.cells.registry import Sigma
    G = Compiled([m.C_map], [C, Q, Sigma, sigma_w, sigma_v, sigma_b, mu_b, R])
    val = G(fp.C_star, fp.Q_star, 0.0, 1.2, 0.8, 0.3, 0.0, 1.0)[0]
    np.testing.assert_allclose(val, fp.C_star, rtol=1e-10)
    assert 0 < fp.c_star < 1 and 0 < fp.chi_c < 1
    # sigma_b^2 is the shared part of the two pre-activations: c* > 0
    # chaotic, no input, no bias: the c-map of the feed-forward network has c* = 0 (odd activation)
    ch = mf.fixed_point("vanilla", sigma_w=1.5, sigma_v=0.0, correlations=True)
    assert abs(ch.c_star) < 1e-10 and ch.chi_c < 1
    # with independent inputs and no bias the pre-activations of the two sequences are uncorrelated: C* = 0
    # (a root at zero: the solver's tolerance is relative to Q*, not to |C|)
    for sw in (0.5, 1.5, 3.0):
        z = mf.fixed_point("vanilla", sigma_w=sw, correlations=True)
        assert abs(z.c_star) < 1e-12 and 0 < z.chi_c < 1


def test_iterate_maps_converges_to_fixed_point():
    fp = mf.fixed_point("minimal", sigma_w=1.5, mu_b=1.0)
    tr = mf.iterate_maps("minimal", 200, Q0=2.0, C0=0.0, sigma_w=1.5, mu_b=1.0)
    np.testing.assert_allclose(tr["Q_a"][-1], fp.Q_star, rtol=1e-10)
    np.testing.assert_allclose(tr["C"][-1], fp.Q_star, rtol=1e-6)  # identical inputs: C -> Q*
    # started on the fixed point with C0 close to Q*, the gap decays as chi^t (linearisation)
    Qs = float(fp.Q_star)
    tr = mf.iterate_maps("minimal", 12, Q0=Qs, C0=Qs * (1 - 1e-6), sigma_w=1.5, mu_b=1.0)
    gap = Qs - tr["C"]
    np.testing.assert_allclose(gap[1:] / gap[:-1], fp.chi, rtol=1e-5)


def test_a_new_cell_needs_only_its_update_rule():
    """A leaky tanh cell h_t = a h + (1-a) tanh(e): its variance map involves the state mean M."""
    h, x, e1 = sp.symbols("h x e1", real=True)
    a = sp.Rational(1, 2)
    cell = mf.Cell("leaky", h, x, (mf.Preactivation(e1),), a * h + (1 - a) * sp.tanh(e1))
    fp = mf.fixed_point(cell, sigma_w=1.3, sigma_v=0.4, mu_b=0.7)
    # hand derivation: M* = E[tanh], Q* = a^2 Q* + 2a(1-a) E[tanh] M* + (1-a)^2 E[tanh^2]
    gauss = lambda f, q: integrate.quad(lambda z: f(0.7 + np.sqrt(q) * z) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi),
                                        -12, 12, epsabs=0, epsrel=1e-13)[0]
    q = fp.q_star
    m1, m2 = gauss(np.tanh, q), gauss(lambda v: np.tanh(v) ** 2, q)
    Qh = (2 * 0.25 * m1 * m1 + 0.25 * m2) / (1 - 0.25)
    np.testing.assert_allclose(fp.Q_star, Qh, rtol=1e-9)


def test_gated_recurrent_input_cell():
    """A GRU-like cell whose candidate sees r*h: pre-activation variances that depend on another gate."""
    h, z, e1, e2 = sp.symbols("h z e1 e2", real=True)
    u = sigmoid(e1)
    cell = mf.Cell("gru-like", h, z, (mf.Preactivation(e1), mf.Preactivation(e2, recurrent_input=u * h)),
                   u * h + (1 - u) * sp.tanh(e2))
    m = mf.mean_field(cell)
    assert any(v.has(mf.E) for v in m.q_of_Q.values())  # q of e2 contains E[u^2] Q
    fp = mf.fixed_point(cell, sigma_w=1.5, sigma_v=0.5, mu_b=1.0)
    F = Compiled([m.Q_map], HYP)(fp.Q_star, 1.5, 0.5, 0.0, 1.0, 1.0)[0]
    np.testing.assert_allclose(F, fp.Q_star, rtol=1e-11)


def test_non_affine_update_is_rejected():
    h, x, e1 = sp.symbols("h x e1", real=True)
    cell = mf.Cell("bad", h, x, (mf.Preactivation(e1),), sp.tanh(e1) * h**2)
    with pytest.raises(mf.MftrnnError, match="affine"):
        mf.mean_field(cell)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma_w=-1.0), "non-negative"), (dict(R=-0.1), "non-negative"), (dict(sigma_v=np.nan), "finite"),
    (dict(mu_b=np.inf), "finite"), (dict(sigma_w="abc"), "number"), (dict(tau=1.0), "unknown"),
    (dict(sigma_w=np.ones(3), mu_b=np.ones(4)), "shapes"),
])
def test_bad_hyperparameters_raise_domain_error(kwargs, match):
    with pytest.raises(mf.DomainError, match=match):
        mf.fixed_point("minimal", **kwargs)


def test_unknown_cell():
    with pytest.raises(mf.UnknownCellError, match="known cells"):
        mf.fixed_point("lstm2")
    assert issubclass(mf.UnknownCellError, ValueError)


def test_iterate_maps_validates_initial_conditions():
    with pytest.raises(mf.DomainError):
        mf.iterate_maps("vanilla", 5, Q0=1.0, C0=2.0)
    with pytest.raises(mf.DomainError):
        mf.iterate_maps("vanilla", 5, Sigma=1.5)
    with pytest.raises(mf.DomainError):
        mf.iterate_maps("vanilla", -1)


def test_multistable_variance_map_returns_least_fixed_point_and_flags_it():
    """minimalRNN at sigma_w = 5, mu_b = 5 has two stable fixed points; Q* is the one reached from h_0 = 0."""
    fp = mf.fixed_point("minimal", sigma_w=5.0, mu_b=5.0)
    assert bool(fp.multistable)
    low = mf.iterate_maps("minimal", 4000, Q0=0.0, sigma_w=5.0, mu_b=5.0)["Q_a"][-1]
    high = mf.iterate_maps("minimal", 4000, Q0=1.0, sigma_w=5.0, mu_b=5.0)["Q_a"][-1]
    np.testing.assert_allclose(fp.Q_star, low, rtol=1e-6)  # iteration converges slowly (chi_q = 0.995)
    assert high > 5 * low  # a second, larger stable fixed point
    F = Compiled([mf.mean_field("minimal").Q_map], HYP)
    np.testing.assert_allclose(F(high, 5.0, 1.0, 0.0, 5.0, 1.0)[0], high, rtol=1e-9)
    typical = mf.fixed_point("minimal", sigma_w=np.linspace(0.1, 3, 20), mu_b=np.linspace(-4, 6, 20))
    assert not typical.multistable.any()
    assert mf.fixed_point("vanilla", sigma_w=2.0).to_dict()["multistable"] is False


def test_newton_that_cycles_between_bracket_ends_falls_back_to_bisection():
    # g is +-1 on either side of the root 0.5 with a slope that sends Newton from 0.4 to 0.6 and back: a 2-cycle
    # on the bracket's ends (what rounding noise in g does near chi_q = 1). The solver must bisect instead.
    from mftrnn.theory.fixed_point import _solve

    def g_dg(x, act):
        return np.where(x < 0.5, 1.0, -1.0), np.full(x.shape, -5.0)

    x, _ = _solve(g_dg, np.array([0.0]), np.array([1.0]), np.array([0.4]), "test", rtol=1e-12)
    assert x[0] == pytest.approx(0.5, abs=1e-11)


@pytest.mark.parametrize("sw", [1.0001722351153695, 1.00001, 1.001])
def test_vanilla_fixed_point_just_above_the_transition(sw):
    # no input, no bias: Q* is small and g = F(Q) - Q near the root is a few ulps of Q* (1 - chi_q ~ sw^2 - 1);
    # sigma_w = 1.0001722... made Newton cycle between two points 7e-12 apart (regression). The small-q
    # expansion E[tanh^2] = q - 2 q^2 + O(q^3) gives Q* = (sw^2 - 1) / (2 sw^4) to relative O(sw^2 - 1).
    fp = mf.fixed_point("vanilla", sigma_w=sw, sigma_v=0.0, sigma_b=0.0)
    d = sw ** 2 - 1
    assert float(fp.Q_star) == pytest.approx(d / (2 * sw ** 4), rel=3 * d)
    assert float(fp.chi) > 1 - 2 * d

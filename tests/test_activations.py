"""Vanilla RNNs with other activations (cells ``relu``, ``erf``, ``linear``): closed forms against mpmath,
the piecewise quadrature against mpmath, analytic identities, and finite-width Monte Carlo of the torch module.

Tolerances: closed forms and quadrature against mpmath (20 digits): 1e-11 absolute/relative (the engine's rules
aim at 1e-12; the piecewise Gauss-Legendre rule stops at an estimated 1e-10 and is in practice at round-off).
Analytic identities: 1e-12 (round-off of the fixed-point solver, which polishes to 1e-12 relative). Monte Carlo:
4 standard errors of the mean over independent networks (tied weights, N = 1000), plus the O(1/N) finite-width bias
where stated.
"""
import math

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

from mftrnn.cells.functions import relu
from mftrnn.cells.registry import get_cell
from mftrnn.errors import ConvergenceError, DomainError
from mftrnn.theory.fixed_point import fixed_point, unbounded
from mftrnn.theory.gaussian import E, E2, expect, expect2
from mftrnn.theory.meanfield import Q, mean_field
from mftrnn.theory.numeric import Compiled, growth_strip, strip_half_width
from mftrnn.cells.registry import R, mu_b, sigma_b, sigma_v, sigma_w

mp.mp.dps = 20
x, y = sp.symbols("x y", real=True)
mu, q = sp.Symbol("mu", real=True), sp.Symbol("q", positive=True)
qa, qb, qab = sp.Symbol("q_a", positive=True), sp.Symbol("q_b", positive=True), sp.Symbol("q_ab", real=True)

# ------------------------------------------------------------------ independent references (mpmath)
_MP = {"relu": lambda t: max(t, 0), "step": lambda t: mp.mpf(t > 0), "erf": mp.erf,
       "derf": lambda t: 2 / mp.sqrt(mp.pi) * mp.exp(-t * t)}
# E[f(b) | a] for b | a ~ N(m, v): textbook formulas (independent of mftrnn.theory.closed_forms)
_INNER = {"relu": lambda m, v: m * mp.ncdf(m / mp.sqrt(v)) + mp.sqrt(v) * mp.npdf(m / mp.sqrt(v)),
          "step": lambda m, v: mp.ncdf(m / mp.sqrt(v)),
          "erf": lambda m, v: mp.erf(m / mp.sqrt(1 + 2 * v))}
_SYM = {"relu": relu, "step": sp.Heaviside, "erf": sp.erf}


def ref1(f, m, v, kinks=(0,)):
    m, v = mp.mpf(m), mp.mpf(v)
    pts = sorted({m - 8 * mp.sqrt(v), m + 8 * mp.sqrt(v), *map(mp.mpf, kinks)})
    return mp.quad(lambda t: f(t) * mp.npdf(t, m, mp.sqrt(v)), [-mp.inf, *pts, mp.inf])


def ref2(fa, fb, m_a, m_b, va, vb, vab):
    """E[fa(a) fb(b)] as a 1-d mpmath integral over a of fa(a) E[fb(b) | a], split at the kink a = 0."""
    m_a, m_b, va, vb, vab = map(mp.mpf, (m_a, m_b, va, vb, vab))
    v = vb - vab**2 / va
    return ref1(lambda a: _MP[fa](a) * _INNER[fb](m_b + vab / va * (a - m_a), v), m_a, va)


def num(expr, args, *vals):
    return Compiled([expr], args)(*[np.array([v], float) for v in vals])[0][0]


# ------------------------------------------------------------------ registration
@pytest.mark.parametrize("name, phi", [("relu", relu(sp.Symbol("e", real=True))),
                                       ("erf", sp.erf(sp.Symbol("e", real=True))),
                                       ("linear", sp.Symbol("e", real=True))])
def test_registered_as_vanilla_with_another_activation(name, phi):
    cell, vanilla = get_cell(name), get_cell("vanilla")
    assert cell.update == phi
    assert cell.preactivations == vanilla.preactivations and cell.hyperparameters == vanilla.hyperparameters


def test_relu_function():
    assert relu(x).diff(x) == sp.Heaviside(x)
    assert relu(-2) == 0 and relu(sp.Rational(3, 2)) == sp.Rational(3, 2)
    vals = Compiled([relu(x)], [x])(np.array([-1.0, 0.0, 2.5]))[0]
    assert np.array_equal(vals, [0.0, 0.0, 2.5])
    import torch
    from mftrnn.nets.gated import TORCH_FUNCTIONS
    t = sp.lambdify(x, [relu(x), sp.Heaviside(x)], modules=[TORCH_FUNCTIONS])(torch.tensor([-1.0, 0.0, 2.5]))
    assert t[0].tolist() == [0.0, 0.0, 2.5] and t[1].tolist() == [0.0, 0.5, 1.0]


# ------------------------------------------------------------------ closed forms vs mpmath
@pytest.mark.parametrize("m, v", [(0.0, 1.0), (0.7, 2.0), (-1.3, 0.4), (3.0, 25.0)])
def test_univariate_closed_forms(m, v):
    cases = [(relu(x), _MP["relu"]), (relu(x) ** 2, lambda t: max(t, 0) ** 2), (relu(x) ** 3, lambda t: max(t, 0) ** 3),
             (sp.Heaviside(x), _MP["step"]), (sp.erf(x), mp.erf),
             (sp.erf(x).diff(x) ** 2, lambda t: _MP["derf"](t) ** 2),
             (sp.erf(x) * sp.erf(x).diff(x, 2), lambda t: mp.erf(t) * (-2 * t) * _MP["derf"](t)),
             (x**2 * sp.erf(2 * x) * sp.exp(-x**2 / 3 + x), lambda t: t**2 * mp.erf(2 * t) * mp.exp(-t**2 / 3 + t))]
    for f, g in cases:
        e = expect(f, x, mu, q)
        assert not e.has(E), f  # a closed form, not a quadrature
        got = float(e.subs({mu: m, q: v}))
        assert got == pytest.approx(float(ref1(g, m, v)), rel=1e-11, abs=1e-13), f


def test_erf_squared_closed_only_at_zero_mean():
    assert expect(sp.erf(x) ** 2, x, mu, q).has(E)
    closed = expect(sp.erf(x) ** 2, x, 0, q)
    assert closed == 2 / sp.pi * sp.asin(2 * q / (1 + 2 * q))
    for v in (0.3, 4.0):
        assert float(closed.subs(q, v)) == pytest.approx(float(ref1(lambda t: mp.erf(t) ** 2, 0, v)), rel=1e-12)


@pytest.mark.parametrize("fa, fb", [("relu", "relu"), ("step", "step"), ("relu", "step"), ("erf", "erf")])
@pytest.mark.parametrize("va, vb, vab", [(1.0, 2.0, 0.5), (3.0, 3.0, -2.9), (0.5, 4.0, 1.4)])
def test_zero_mean_kernels(fa, fb, va, vb, vab):
    """Arc-cosine kernels of degree 1 and 0 (Cho & Saul) and Williams' erf kernel."""
    e = expect2(_SYM[fa](x) * _SYM[fb](y), x, y, 0, 0, qa, qb, qab)
    assert not e.has(E2)
    got = float(e.subs({qa: va, qb: vb, qab: vab}))
    assert got == pytest.approx(float(ref2(fa, fb, 0, 0, va, vb, vab)), rel=1e-11, abs=1e-13)


def test_kernel_formulas_as_stated():
    th = sp.acos(qab / sp.sqrt(qa * qb))
    arc1 = sp.sqrt(qa * qb) / (2 * sp.pi) * (sp.sin(th) + (sp.pi - th) * sp.cos(th))
    arc0 = (sp.pi - th) / (2 * sp.pi)
    vals = {qa: 1.3, qb: 0.7, qab: 0.4}
    assert float(expect2(relu(x) * relu(y), x, y, 0, 0, qa, qb, qab).subs(vals)) == pytest.approx(
        float(arc1.subs(vals)), rel=1e-14)
    assert float(expect2(sp.Heaviside(x) * sp.Heaviside(y), x, y, 0, 0, qa, qb, qab).subs(vals)) == pytest.approx(
        float(arc0.subs(vals)), rel=1e-14)


def test_derivatives_of_closed_forms_are_closed_forms_of_derivatives():
    """Price's theorem on the closed forms: d/dq_ab arc1 = arc0; d/dq E[relu^2] = E[Theta]; d/dq_ab Williams =
    E[erf'(a) erf'(b)] (itself a closed form at any mean)."""
    pts = {qa: 1.3, qb: 0.7, qab: 0.4, mu: 0.0}
    k1 = expect2(relu(x) * relu(y), x, y, 0, 0, qa, qb, qab)
    k0 = expect2(sp.Heaviside(x) * sp.Heaviside(y), x, y, 0, 0, qa, qb, qab)
    assert float(k1.diff(qab).subs(pts)) == pytest.approx(float(k0.subs(pts)), rel=1e-13)
    w = expect2(sp.erf(x) * sp.erf(y), x, y, 0, 0, qa, qb, qab)
    d = expect2(sp.erf(x).diff(x) * sp.erf(y).diff(y), x, y, mu, mu, qa, qb, qab)
    assert not d.has(E2)
    assert float(w.diff(qab).subs(pts)) == pytest.approx(float(d.subs(pts)), rel=1e-13)
    for m, v in ((0.4, 1.7), (-1.0, 0.3)):
        lhs = expect(relu(x) ** 2, x, mu, q).diff(q).subs({mu: m, q: v})
        assert float(lhs) == pytest.approx(float(expect(sp.Heaviside(x), x, mu, q).subs({mu: m, q: v})), rel=1e-13)
    # erf'(a) erf'(b) at a non-zero mean against mpmath (inner Gaussian integral of exp(-b^2) done by hand)
    ref = ref1(lambda a: _MP["derf"](a) * 2 / mp.sqrt(mp.pi) * mp.exp(-(mp.mpf(0.6) + 0.5 / 1.5 * (a - 0.6)) ** 2
                                                                      / (1 + 2 * (0.8 - 0.5**2 / 1.5)))
               / mp.sqrt(1 + 2 * (0.8 - 0.5**2 / 1.5)), 0.6, 1.5)
    assert float(d.subs({mu: 0.6, qa: 1.5, qb: 0.8, qab: 0.5})) == pytest.approx(float(ref), rel=1e-12)


# ------------------------------------------------------------------ numerical fallback
@pytest.mark.parametrize("fa, fb", [("relu", "relu"), ("step", "step"), ("relu", "step"), ("erf", "erf")])
@pytest.mark.parametrize("m, va, vb, vab", [(0.4, 1.3, 0.9, 0.6), (-0.7, 2.0, 2.0, 1.9), (1.5, 30.0, 30.0, 29.5),
                                            (0.3, 5.0, 5.0, 4.999), (-2.0, 0.2, 0.3, -0.1)])
def test_no_closed_form_bivariate_against_mpmath(fa, fb, m, va, vb, vab):
    """Non-zero means: the piecewise Gauss-Legendre rule (kinks) or the trapezoid with the erf growth strip."""
    e = expect2(_SYM[fa](x) * _SYM[fb](y), x, y, mu, mu, qa, qb, qab)
    assert e.has(E2)
    got = num(e, [mu, qa, qb, qab], m, va, vb, vab)
    assert got == pytest.approx(float(ref2(fa, fb, m, m, va, vb, vab)), rel=1e-11, abs=1e-12)


@pytest.mark.parametrize("m, v", [(0.4, 1.0), (0.4, 100.0), (2.0, 1e3), (-1.0, 0.01)])
def test_erf_squared_with_mean_against_mpmath(m, v):
    got = num(expect(sp.erf(x) ** 2, x, mu, q), [mu, q], m, v)
    assert got == pytest.approx(float(ref1(lambda t: mp.erf(t) ** 2, m, v)), rel=1e-11, abs=1e-13)


def test_erf_is_entire_but_needs_a_finite_step():
    """erf has no poles, but |erf(i y)| ~ e^{y^2}: the trapezoid step must still shrink like 1/sqrt(q)."""
    assert math.isfinite(strip_half_width(sp.erf(x) ** 2))
    assert strip_half_width(sp.erf(x) ** 2) == growth_strip(2.0) < growth_strip(1.0) < strip_half_width(x**2)
    assert strip_half_width(sp.exp(x)) == math.inf


def test_unclassified_function_is_checked_and_accurate():
    """atan is not in the strip table: evaluated with strip 0.5 and again with 0.25, accepted only if they agree."""
    got = num(expect(sp.atan(x) ** 2, x, mu, q), [mu, q], 0.3, 2.0)
    assert got == pytest.approx(float(ref1(lambda t: mp.atan(t) ** 2, 0.3, 2.0)), rel=1e-11)


def test_refusals():
    with pytest.raises(DomainError, match="closed form"):
        Compiled([expect(relu(x - sp.cos(x)) * sp.tanh(x), x, mu, q)], [mu, q])
    # a non-affine switching argument with known roots (+-1) is cut there
    got = num(expect(relu(x**2 - 1) * sp.tanh(x), x, mu, q), [mu, q], 0.3, 2.0)
    assert got == pytest.approx(float(ref1(lambda t: max(t * t - 1, 0) * mp.tanh(t), 0.3, 2.0, (-1, 1))), rel=1e-10)
    e = expect(sp.DiracDelta(x) * sp.Heaviside(x), x, mu, q)
    with pytest.raises(DomainError, match="DiracDelta"):
        Compiled([e], [mu, q])(0.1, 1.0)


# ------------------------------------------------------------------ analytic identities
def test_relu_maps_at_zero_bias():
    m = mean_field("relu")
    qexpr = sigma_w**2 * Q + sigma_v**2 * R + sigma_b**2
    assert sp.simplify(m.Q_map.subs(mu_b, 0) - qexpr / 2) == 0
    assert sp.simplify(m.chi.subs(mu_b, 0) - sigma_w**2 / 2) == 0
    assert sp.simplify(m.chi_q.subs(mu_b, 0) - sigma_w**2 / 2) == 0
    assert sp.simplify(m.chi_q - m.chi) == 0  # at every bias: chi_q = chi = sigma_w^2 Phi(mu_b/sqrt(q))


@pytest.mark.parametrize("sw, sv, sb", [(0.5, 1.0, 0.0), (1.2, 0.7, 0.3), (1.41, 1.0, 0.5)])
def test_relu_fixed_point_and_chi(sw, sv, sb):
    fp = fixed_point("relu", sigma_w=sw, sigma_v=sv, sigma_b=sb)
    q_star = (sv**2 + sb**2) / (1 - sw**2 / 2)
    assert fp.q_star == pytest.approx(q_star, rel=1e-11)
    assert fp.Q_star == pytest.approx(q_star / 2, rel=1e-11)
    assert fp.chi == pytest.approx(sw**2 / 2, rel=1e-12) and fp.chi_q == pytest.approx(sw**2 / 2, rel=1e-12)
    assert fp.xi == pytest.approx(-1 / math.log(sw**2 / 2), rel=1e-10)


@pytest.mark.parametrize("cell, sw", [("relu", math.sqrt(2)), ("relu", 1.5), ("linear", 1.0), ("linear", 1.3)])
def test_no_fixed_point_is_refused(cell, sw):
    with pytest.raises(ConvergenceError, match="no finite fixed point"):
        fixed_point(cell, sigma_w=sw, sigma_b=0.2)
    assert unbounded(cell, sigma_w=np.array([0.5, sw]))[1]
    assert not unbounded(cell, sigma_w=np.array([0.5, sw]))[0]


@pytest.mark.parametrize("sw, sb, mb", [(0.5, 0.0, 0.0), (0.9, 0.4, 0.7)])
def test_linear_fixed_point(sw, sb, mb):
    fp = fixed_point("linear", sigma_w=sw, sigma_b=sb, mu_b=mb, sigma_v=0.8, R=1.5)
    Q_star = (0.8**2 * 1.5 + sb**2 + mb**2) / (1 - sw**2)
    assert fp.Q_star == pytest.approx(Q_star, rel=1e-11)
    assert fp.chi == pytest.approx(sw**2, rel=1e-12)


@pytest.mark.parametrize("sw, sv, sb, mb", [(1.5, 0.5, 0.3, 0.0), (1.3, 1.0, 0.2, 0.4)])
def test_erf_fixed_point_against_mpmath(sw, sv, sb, mb):
    fp = fixed_point("erf", sigma_w=sw, sigma_v=sv, sigma_b=sb, mu_b=mb)
    q_star, Q_star = float(fp.q_star), float(fp.Q_star)
    Q_ref = ref1(lambda t: mp.erf(t) ** 2, mb, q_star)
    assert Q_star == pytest.approx(float(Q_ref), rel=1e-11)
    assert q_star == pytest.approx(sw**2 * Q_star + sv**2 + sb**2, rel=1e-12)
    chi_ref = sw**2 * ref1(lambda t: _MP["derf"](t) ** 2, mb, q_star)
    assert float(fp.chi) == pytest.approx(float(chi_ref), rel=1e-11)


def test_relu_with_negative_bias_against_mpmath():
    fp = fixed_point("relu", sigma_w=1.3, sigma_b=0.2, mu_b=-0.4, correlations=True)
    q_star, C_star = float(fp.q_star), float(fp.C_star)
    assert float(fp.Q_star) == pytest.approx(float(ref1(lambda t: max(t, 0) ** 2, -0.4, q_star)), rel=1e-11)
    assert float(fp.chi) == pytest.approx(1.3**2 * float(mp.ncdf(-0.4 / mp.sqrt(q_star))), rel=1e-11)
    # C* solves C = E[relu(a) relu(b)] with q_ab = sigma_w^2 C + sigma_b^2 (independent inputs)
    qab_star = 1.3**2 * C_star + 0.2**2
    assert C_star == pytest.approx(float(ref2("relu", "relu", -0.4, -0.4, q_star, q_star, qab_star)), rel=1e-9)


# ------------------------------------------------------------------ commands and other theory
def test_critical_line():
    from mftrnn.theory.critical import vanilla_critical
    res = vanilla_critical(1.0, cell="erf")
    assert res["chi"] == pytest.approx(1.0, abs=1e-9) and res["q_star"] == pytest.approx(1.0)
    for cell in ("relu", "linear"):  # chi = 1 forces chi_q = 1: never a stable fixed point
        with pytest.raises(DomainError, match="not stable"):
            vanilla_critical(1.0, cell=cell, mu_b=-0.3)


def test_phase_diagram_marks_points_without_fixed_point():
    from mftrnn.theory.phase_diagram import compute_grid
    x_ = np.array([0.8, 1.3, 1.5])
    g = compute_grid("relu", "sigma_w", x_, "sigma_b", np.array([0.0, 0.5]), {}, progress=False)
    assert np.array_equal(g["no_fixed_point"], np.array([[False, False, True]] * 2))
    assert np.allclose(g["chi"][:, :2], x_[:2] ** 2 / 2, rtol=1e-12) and np.isnan(g["chi"][:, 2]).all()


def test_spectrum_moments_and_zero_atom():
    from mftrnn.theory.jacobian import step_moments
    from mftrnn.theory.spectrum import spectral_law
    sm = step_moments("relu", sigma_w=1.2)  # b = Theta(e): E[b^2] = E[b^4] = 1/2
    assert sm["chi"] == pytest.approx(0.72, rel=1e-12)
    assert sm["relative_variance"] == pytest.approx(2.0, rel=1e-10)  # (1/2 + 1/4) / (1/4) - 1
    with pytest.raises(DomainError, match="atom at 0"):
        spectral_law("relu", 3, sigma_w=1.2)


# ------------------------------------------------------------------ finite-width Monte Carlo (torch module)
@pytest.mark.parametrize("cell, hp", [
    ("relu", dict(sigma_w=1.2, sigma_v=1.0, sigma_b=0.3)),
    ("relu", dict(sigma_w=1.6, sigma_v=0.5, sigma_b=0.2, mu_b=-0.4)),
    ("erf", dict(sigma_w=1.5, sigma_v=0.5, sigma_b=0.3, mu_b=0.2)),
    ("erf", dict(sigma_w=0.8, sigma_v=1.0, sigma_b=0.0)),
    ("linear", dict(sigma_w=0.8, sigma_v=1.0, sigma_b=0.3, mu_b=0.2)),
])
def test_monte_carlo_fixed_point_and_chi(cell, hp):
    """Tied weights, N = 1000, 4 networks started at Q_0 = Q*: Q* from the time average over steps 20..40; chi from
    :func:`measure_chi` (a perturbation's decay). Tolerance: 4 standard errors over networks, plus 1/N
    relative for the finite-width bias of Q*, and 1e-3 absolute for chi (bias of the log-linear fit)."""
    from mftrnn.nets.simulate import measure_chi, simulate
    fp = fixed_point(cell, **hp)
    sim = simulate(cell, N=1000, T=40, n_networks=4, seed=3, Q0=float(fp.Q_star), **hp)
    per_net = sim.Q_a_all[:, 20:].mean(1)
    sem = per_net.std(ddof=1) / math.sqrt(per_net.size)
    assert abs(per_net.mean() - fp.Q_star) < 4 * sem + 1e-3 * fp.Q_star, (per_net.mean(), sem, fp.Q_star)
    est = measure_chi(cell, N=1000, T=12, n_networks=4, burn_in=30, seed=5, **hp)
    assert abs(est.chi - fp.chi) < 4 * est.chi_sem + 1e-3, (est.chi, est.chi_sem, fp.chi)

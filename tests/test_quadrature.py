"""Quadrature accuracy: every Gaussian expectation the built-in cells need, against mpmath.

Stated property (mftrnn.theory.quadrature): relative error <= 1e-8 over |mu| <= 10 and pre-activation variance
q <= 100 (the book's ranges: sigma_w <= 10 with Q <= 1, |mu_b| <= 10, sigma_v <= 3, R <= 2). For integrands
that change sign the error is measured relative to E|f| (the natural scale of a quadrature error).
The reference is mpmath's tanh-sinh quadrature at 20 significant digits, split at the activation's transition.
"""
import itertools

import numpy as np
import pytest
import sympy as sp

import mftrnn as mf
from mftrnn.theory.gaussian import E, EPS
from mftrnn.theory import quadrature as Qd
from mftrnn.theory.numeric import Compiled

from _mp import mp_expect, mp_function

MU = [-10.0, -2.5, 0.0, 0.7, 10.0]
QS = [0.0, 1e-4, 0.3, 4.0, 30.0, 100.0]


def _bodies():
    out = set()
    for c in mf.cells("single"):
        m = mf.mean_field(c)
        for ex in (m.Q_map, m.chi, m.chi_q, m.M_map):
            out |= {n.args[0].expr for n in ex.atoms(E)}
    return sorted(out, key=str)


@pytest.mark.parametrize("body", _bodies(), ids=str)
def test_expectations_match_mpmath(body):
    m, q = sp.symbols("m q")
    fn = Compiled([E(sp.Lambda(EPS, body), m, q)], [m, q])
    grid = np.array(list(itertools.product(MU, QS)))
    got = fn(grid[:, 0], grid[:, 1])[0]
    f = mp_function(body, EPS)
    fabs = mp_function(sp.Abs(body), EPS)
    signed = any(s in str(body) for s in ("tanh(epsilon)", "3*"))
    for (mu, qq), val in zip(grid, got):
        ref = float(mp_expect(f, mu, qq))
        scale = float(mp_expect(fabs, mu, qq)) if signed else abs(ref)
        assert abs(val - ref) <= 1e-8 * scale, (body, mu, qq, val, ref)


def test_node_count_grows_with_variance_and_pole_proximity():
    from mftrnn.theory.quadrature import nodes_for
    s = np.array([0.1, 1.0, 10.0])
    n_tanh, n_sig = nodes_for(s, np.pi / 2), nodes_for(s, np.pi)
    assert np.all(np.diff(n_tanh) >= 0) and np.all(n_tanh >= n_sig)
    assert n_tanh[-1] > n_tanh[0]


def test_variance_beyond_quadrature_range_is_a_clear_error():
    with pytest.raises(mf.DomainError, match="too large"):
        mf.fixed_point("vanilla", sigma_w=1.0, sigma_v=1e5)


@pytest.mark.parametrize("kind", ["tanh", "sigmoid"])
@pytest.mark.parametrize("mu,qa,qb,c", [(0.0, 1.0, 1.0, 0.3), (1.5, 4.0, 2.0, -0.6), (-3.0, 0.5, 9.0, 0.95),
                                        (6.0, 20.0, 20.0, 0.999)])
def test_bivariate_expectations_match_nested_adaptive_quadrature(kind, mu, qa, qb, c):
    """E[f(e_a) f(e_b)] on the tensor trapezoid grid vs nested adaptive scipy quad (epsrel 1e-12, epsabs 1e-14)."""
    from scipy import integrate, special

    from mftrnn import expect2, sigmoid
    from mftrnn.theory.gaussian import EPS_A, EPS_B

    f_sym = sp.tanh if kind == "tanh" else sigmoid
    f_num = np.tanh if kind == "tanh" else special.expit
    qab = c * np.sqrt(qa * qb)
    got = Compiled([expect2(f_sym(EPS_A) * f_sym(EPS_B), EPS_A, EPS_B, mu, mu, qa, qb, qab)], [])()[0]
    sa, sb = np.sqrt(qa), np.sqrt(qb)
    phi = lambda z: np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
    sc = np.sqrt(1 - c * c)
    # split the inner integral where the activation switches (e_b = 0): it is sharp when c -> 1
    inner = lambda z1: integrate.quad(lambda z2: f_num(mu + sb * (c * z1 + sc * z2)) * phi(z2), -12, 12,
                                      epsabs=1e-14, epsrel=1e-12, limit=400,
                                      points=[float(np.clip((-mu / sb - c * z1) / sc, -11.9, 11.9))])[0]
    ref = integrate.quad(lambda z1: f_num(mu + sa * z1) * phi(z1) * inner(z1), -12, 12, epsabs=0,
                         epsrel=1e-12, limit=200, points=[-mu / sa])[0]
    assert abs(got - ref) <= 1e-8 * max(abs(ref), 1e-3), (got, ref)


@pytest.mark.parametrize("kind", ["tanh", "sigmoid"])
def test_bivariate_coarse_rule(kind):
    """The covariance solve iterates on the cheap bivariate rule (float32) before the fine one decides: like the
    univariate coarse rule it must give products f(e_a) f(e_b) to ~1e-5 and the slopes' f'(e_a) f'(e_b) to ~1e-4
    (relative to max(|E|, 1e-3)). Measured worst cases over this grid: 9.6e-7 and 8.9e-6."""
    from mftrnn import expect2, sigmoid
    from mftrnn.theory.gaussian import EPS_A, EPS_B

    f = sp.tanh if kind == "tanh" else sigmoid
    maps, slopes = [], []
    for mu, qa, qb, c in itertools.product([-10, -3, 0, 1.5, 6, 10], [0.01, 1, 4, 20, 100], [0.5, 9, 100],
                                           [-0.6, 0, 0.3, 0.95, 0.999, 1.0]):
        args = (EPS_A, EPS_B, mu, mu, qa, qb, c * np.sqrt(qa * qb))
        maps.append(expect2(f(EPS_A) * f(EPS_B), *args))
        slopes.append(expect2(f(EPS_A).diff(EPS_A) * f(EPS_B).diff(EPS_B), *args))
    for exprs, rtol in ((maps, 1e-5), (slopes, 1e-4)):
        fn = Compiled(exprs, [])
        fine, coarse = np.array(fn()), np.array(fn(rule="coarse"))
        assert np.max(np.abs(coarse - fine) / np.maximum(np.abs(fine), 1e-3)) <= rtol


@pytest.mark.parametrize("rule", sorted(Qd.RULES))
@pytest.mark.parametrize("d", [0.5, np.pi / 2, np.pi, np.inf])
def test_node_counts_from_thresholds_match_error_model(rule, d):
    """nodes_for (thresholds in s, solved in closed form) == smallest bucket >= nodes_needed (the error model)."""
    tol, h_gauss, window = Qd.RULES[rule]
    rng = np.random.default_rng(1)
    s = np.concatenate([[0.0], rng.uniform(0, 10, 20000), np.exp(rng.uniform(-12, 2.3, 20000))])
    need = Qd.nodes_needed(s, d, tol, h_gauss, window)
    assert np.all(np.diff(need[np.argsort(s)]) >= 0)  # monotone in s, which the threshold method relies on
    expected = Qd._BUCKETS[np.searchsorted(Qd._BUCKETS, need)]
    np.testing.assert_array_equal(Qd.nodes_for(s, d, tol, h_gauss, window), expected)


def _map_bodies(slopes: bool):
    """Integrands of the variance maps (and, with ``slopes``, of their slopes chi_q): what the cheap rules see."""
    out = set()
    for c in mf.cells("single"):
        m = mf.mean_field(c)
        for ex in (m.Q_map, m.chi_q) if slopes else (m.Q_map,):
            out |= {n.args[0].expr for n in ex.atoms(E)}
    return sorted(out, key=str)


@pytest.mark.parametrize("rule, slopes, rtol", [("sample", False, 1e-3), ("coarse", False, 1e-5),
                                               ("coarse", True, 2e-4)])
def test_cheap_rules_in_single_precision(rule, slopes, rtol):
    """The cheap rules run in float32 and only serve the root finder: the sign scan ("sample") needs the variance
    maps to ~1e-3, the coarse Newton iterations the maps to ~1e-5 and their slopes to ~1e-4 (a slope error only
    slows Newton down; the last step uses the fine rule). Measured worst cases over |mu| <= 10, q <= 100: 3.6e-4,
    5.1e-6, 9.7e-5 (the slopes' tanh'' integrands at q = 30, whose double poles the error model's 0.8 safety
    factor covers less well at low accuracy); errors relative to E|f| as in the test above."""
    assert Qd.DTYPES[rule] == np.float32 and Qd.DTYPES["fine"] == np.float64
    m, q = sp.symbols("m q")
    bodies = _map_bodies(slopes)
    exprs = [E(sp.Lambda(EPS, b), m, q) for b in bodies]
    grid = np.array(list(itertools.product(np.linspace(-10, 10, 21), [0.0, 1e-3, 0.1, 1.0, 4.0, 30.0, 100.0])))
    fine = Compiled(exprs, [m, q])(grid[:, 0], grid[:, 1])
    cheap = Compiled(exprs, [m, q])(grid[:, 0], grid[:, 1], rule=rule)
    absfine = Compiled([E(sp.Lambda(EPS, sp.Abs(b)), m, q) for b in bodies], [m, q])(grid[:, 0], grid[:, 1])
    for body, f, c, scale in zip(bodies, fine, cheap, absfine):
        err = np.abs(c - f) / np.maximum(scale, 1e-300)
        assert err.max() <= rtol, (rule, body, err.max())

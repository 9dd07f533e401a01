"""Symbolic Gaussian expectations: closed forms, Price's theorem, bivariate reductions."""
import numpy as np
import sympy as sp

from mftrnn import E, expect, expect2, sigmoid
from mftrnn.theory.numeric import Compiled

x, y = sp.symbols("x y", real=True)
mu, q, qa, qb, qab = sp.symbols("mu q q_a q_b q_ab", real=True)


def test_polynomial_integrands_have_closed_forms():
    assert sp.expand(expect(x**2, x, mu, q) - (mu**2 + q)) == 0
    assert sp.expand(expect(x**4, x, mu, q) - (mu**4 + 6 * mu**2 * q + 3 * q**2)) == 0
    assert expect(sp.S(3), x, mu, q) == 3


def test_sigmoid_derivative_and_symmetry():
    assert sp.simplify(sigmoid(x).diff(x) - sigmoid(x) * (1 - sigmoid(x))) == 0
    assert sigmoid(sp.S(0)) == sp.S.Half
    vals = Compiled([expect(sigmoid(x) ** 2, x, 0, q), expect((1 - sigmoid(x)) ** 2, x, 0, q)], [q])(
        np.array([0.1, 1.0, 9.0]))
    np.testing.assert_allclose(vals[0], vals[1], rtol=1e-13)  # u(-e) = 1 - u(e) at mu = 0


def test_price_theorem_matches_finite_differences():
    f = sp.tanh(x) ** 2 * sigmoid(x)
    e = expect(f, x, mu, q)
    d_mu, d_q = e.diff(mu), e.diff(q)
    assert isinstance(d_q, sp.Mul) or isinstance(d_q, E)  # stays inside the algebra
    fn = Compiled([e, d_mu, d_q], [mu, q])
    m0, q0, h = 0.3, 1.7, 1e-4
    v = lambda a, b: fn(np.array(a), np.array(b))[0]
    _, dmu, dq = fn(np.array(m0), np.array(q0))
    np.testing.assert_allclose(dmu, (v(m0 + h, q0) - v(m0 - h, q0)) / (2 * h), rtol=1e-7)
    np.testing.assert_allclose(dq, (v(m0, q0 + h) - v(m0, q0 - h)) / (2 * h), rtol=1e-7)


def test_bivariate_price_theorem_in_covariance():
    e = expect2(sp.tanh(x) * sp.tanh(y), x, y, mu, mu, qa, qb, qab)
    d = e.diff(qab)
    assert d == expect2((1 - sp.tanh(x) ** 2) * (1 - sp.tanh(y) ** 2), x, y, mu, mu, qa, qb, qab) or \
        sp.simplify(d - expect2(sp.tanh(x).diff(x) * sp.tanh(y).diff(y), x, y, mu, mu, qa, qb, qab)) == 0
    h = 1e-4
    sub = {mu: 0.2, qa: 1.1, qb: 0.9}
    fn = Compiled([e.subs(sub), d.subs(sub)], [qab])
    _, dv = fn(np.array(0.4))
    fd = (fn(np.array(0.4 + h))[0] - fn(np.array(0.4 - h))[0]) / (2 * h)
    np.testing.assert_allclose(dv, fd, rtol=1e-6)


def test_bivariate_reductions():
    # perfectly correlated -> univariate
    e = expect2(sigmoid(x) * sigmoid(y), x, y, mu, mu, q, q, q)
    assert isinstance(e, E) and e == expect(sigmoid(x) ** 2, x, mu, q)
    # independent and factorised -> product
    e = expect2(sigmoid(x) * sp.tanh(y), x, y, mu, 0, qa, qb, 0)
    assert e == expect(sigmoid(x), x, mu, qa) * expect(sp.tanh(y), y, 0, qb)
    # an integrand of one variable only
    assert expect2(sigmoid(x), x, y, mu, 0, qa, qb, qab) == expect(sigmoid(x), x, mu, qa)


def test_bivariate_numerics_against_independent_product_and_diagonal():
    e = expect2(sigmoid(x) * sp.tanh(y), x, y, 0.5, -0.3, 1.2, 2.0, qab)
    fn = Compiled([e], [qab])
    indep = Compiled([expect(sigmoid(x), x, 0.5, 1.2) * expect(sp.tanh(x), x, -0.3, 2.0)], [])()
    np.testing.assert_allclose(fn(np.array(0.0))[0], indep[0], rtol=1e-12)
    g = expect2(sigmoid(x) * sigmoid(y), x, y, 0.4, 0.4, 1.5, 1.5, qab)
    diag = Compiled([expect(sigmoid(x) ** 2, x, 0.4, 1.5)], [])()[0]
    np.testing.assert_allclose(Compiled([g], [qab])(np.array(1.5))[0], diag, rtol=1e-12)


def test_compiled_rejects_unbound_symbols():
    import pytest
    with pytest.raises(ValueError, match="free symbols"):
        Compiled([expect(sigmoid(x), x, mu, q)], [q])


def test_latex_is_readable():
    s = sp.latex(expect(sigmoid(x) ** 2, x, mu, q))
    assert r"\mathbb{E}" in s and r"\sigma" in s
    assert r"\mathbb{E}_{e^{a},e^{b}}" in sp.latex(expect2(sp.tanh(x) * sp.tanh(y), x, y, 0, 0, qa, qb, qab))

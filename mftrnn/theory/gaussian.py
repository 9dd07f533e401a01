r"""Gaussian expectations as symbolic objects.

Two SymPy functions carry every integral of the mean-field theory:

* :class:`E` — :math:`\mathbb E_{e\sim\mathcal N(\mu,q)}[f(e)]`, arguments ``(Lambda(eps, f(eps)), mu, q)``;
* :class:`E2` — :math:`\mathbb E[F(e^a,e^b)]` for a bivariate Gaussian with means ``mu_a, mu_b``,
  variances ``q_a, q_b`` and covariance ``q_ab``, arguments ``(Lambda((eps_a, eps_b), F), mu_a, mu_b,
  q_a, q_b, q_ab)``.

Derivatives with respect to the moments follow from the heat equation satisfied by the Gaussian
density (Price's theorem, proved by integrating by parts):

.. math::

   \partial_\mu \mathbb E[f] = \mathbb E[f'], \qquad
   \partial_q \mathbb E[f] = \tfrac12 \mathbb E[f''], \qquad
   \partial_{q_{ab}} \mathbb E[F] = \mathbb E[\partial_a\partial_b F], \qquad
   \partial_{q_a} \mathbb E[F] = \tfrac12\mathbb E[\partial_a^2 F].

so ``sympy.diff`` of any expression built from them stays inside the same algebra. Closed forms are
used where they exist: integrands that do not depend on the variable, and polynomials (Gaussian
moments) and the table of :mod:`mftrnn.theory.closed_forms` (rectifier, step, erf and Gaussian factors; the
arc-cosine and erf kernels at zero means).
A bivariate expectation whose covariance equals both variances (perfectly correlated
pre-activations, e.g. identical inputs at the fixed point) collapses to a univariate one, and one
whose integrand factorises over a zero covariance splits into a product.

``sigmoid`` (the logistic function as a SymPy function, :math:`\sigma' = \sigma(1-\sigma)`) is defined with
the cells in :mod:`mftrnn.cells.functions` and re-exported here.
"""
from __future__ import annotations

import sympy as sp

from ..cells.functions import relu, sigmoid
from .closed_forms import expect2_closed, expect_closed

__all__ = ["sigmoid", "relu", "E", "E2", "EPS", "EPS_A", "EPS_B", "expect", "expect2", "STRIP_HALF_WIDTH"]

#: Integration variables (bound inside the Lambdas).
EPS = sp.Symbol("epsilon", real=True)
EPS_A = sp.Symbol("epsilon_a", real=True)
EPS_B = sp.Symbol("epsilon_b", real=True)


#: Half-width of the strip around the real axis in which each activation is analytic (distance of the
#: nearest complex pole): tanh has poles at i*pi/2, the logistic function at i*pi. The quadrature
#: (``mftrnn.theory.quadrature``) chooses its step from this number. Entire functions (exp, erf, sin, cos) and
#: piecewise ones (relu, Heaviside) are classified by :func:`mftrnn.theory.numeric.strip_half_width`.
STRIP_HALF_WIDTH = {sp.tanh: sp.pi / 2, sigmoid: sp.pi}


def _gaussian_moment(k: int, mu, q):
    """E[x^k] for x ~ N(mu, q), by m_k = mu m_{k-1} + (k-1) q m_{k-2}."""
    m = [sp.S.One, mu]
    for j in range(2, k + 1):
        m.append(sp.expand(mu * m[j - 1] + (j - 1) * q * m[j - 2]))
    return m[k]


#: functions the closed-form table knows (an integrand with one of them is worth expanding into terms)
_CLOSED_FUNCTIONS = (relu, sp.Heaviside, sp.DiracDelta, sp.exp, sp.erf)


def _bivariate_moments(body, xa, xb, mu_a, mu_b, q_a, q_b, q_ab):
    r"""E[p(a, b)] for a polynomial p: derivatives of the moment generating function
    :math:`\exp(\mu_a s+\mu_b t+\tfrac12(q_a s^2+2q_{ab}st+q_b t^2))` at :math:`s=t=0`."""
    s, t = sp.Dummy("s"), sp.Dummy("t")
    mgf = sp.exp(mu_a * s + mu_b * t + (q_a * s**2 + 2 * q_ab * s * t + q_b * t**2) / 2)
    poly = sp.Poly(body, xa, xb)
    out = sp.S.Zero
    for (i, j), c in zip(poly.monoms(), poly.coeffs()):
        out += c * sp.diff(mgf, s, i, t, j).subs({s: 0, t: 0})
    return sp.expand(out)


class E(sp.Function):
    r"""Univariate Gaussian expectation :math:`\mathbb E_{\epsilon\sim\mathcal N(\mu,q)}[f(\epsilon)]`.

    Arguments: ``(Lambda(EPS, f), mu, q)``. Use :func:`expect` to build one from an expression.
    """

    nargs = 3

    @classmethod
    def eval(cls, f, mu, q):
        if not isinstance(f, sp.Lambda):
            raise TypeError("E expects a Lambda as first argument")
        (x,) = f.variables
        body = f.expr
        if x not in body.free_symbols:
            return body
        if body.is_polynomial(x):
            poly = sp.Poly(body, x)
            return sp.Add(*[c * _gaussian_moment(m[0], mu, q) for m, c in zip(poly.monoms(), poly.coeffs())])
        if isinstance(body, sp.Mul):  # pull out factors that do not depend on the variable
            const, dep = body.as_independent(x, as_Add=False)
            if const != 1:
                return const * cls(sp.Lambda(x, dep), mu, q)
        if isinstance(body, sp.Add):
            return sp.Add(*[cls(sp.Lambda(x, a), mu, q) for a in body.args])
        closed = expect_closed(body, x, mu, q)
        if closed is not None:
            return closed
        if body.has(*_CLOSED_FUNCTIONS):
            expanded = sp.expand(body)
            if isinstance(expanded, sp.Add):  # e.g. (f + g) * exp(-x^2): split only if every term has a closed form
                terms = [cls(sp.Lambda(x, a), mu, q) for a in expanded.args]
                if not any(t.has(cls) for t in terms):
                    return sp.Add(*terms)

    def fdiff(self, argindex):
        f, mu, q = self.args
        (x,) = f.variables
        if argindex == 2:
            return E(sp.Lambda(x, f.expr.diff(x)), mu, q)
        if argindex == 3:
            return E(sp.Lambda(x, f.expr.diff(x, 2)), mu, q) / 2
        raise ValueError("no derivative with respect to the integrand")

    def _eval_derivative(self, s):
        f = self.args[0]
        if s in f.expr.free_symbols - set(f.variables):
            raise NotImplementedError("integrand depends on the differentiation variable")
        out = sp.S.Zero
        for i, a in enumerate(self.args[1:], start=2):
            da = a.diff(s)
            if da != 0:
                out += da * self.fdiff(i)
        return out

    @property
    def integrand(self):
        return self.args[0]

    def _latex(self, printer, exp=None):
        f, mu, q = self.args
        e = sp.Symbol("e")
        body = printer._print(f.expr.subs(f.variables[0], e))
        s = r"\mathbb{E}_{e\sim\mathcal{N}(%s,\,%s)}\left[%s\right]" % (printer._print(mu), printer._print(q), body)
        return s if exp is None else r"\left(%s\right)^{%s}" % (s, exp)


class E2(sp.Function):
    r"""Bivariate Gaussian expectation :math:`\mathbb E[F(\epsilon_a,\epsilon_b)]`.

    Arguments: ``(Lambda((EPS_A, EPS_B), F), mu_a, mu_b, q_a, q_b, q_ab)``.
    """

    nargs = 6

    @classmethod
    def eval(cls, F, mu_a, mu_b, q_a, q_b, q_ab):
        if not isinstance(F, sp.Lambda):
            raise TypeError("E2 expects a Lambda as first argument")
        xa, xb = F.variables
        body = F.expr
        fs = body.free_symbols
        if xb not in fs:
            return E(sp.Lambda(EPS, body.subs(xa, EPS)), mu_a, q_a)
        if xa not in fs:
            return E(sp.Lambda(EPS, body.subs(xb, EPS)), mu_b, q_b)
        if isinstance(body, sp.Add):
            return sp.Add(*[cls(sp.Lambda((xa, xb), a), mu_a, mu_b, q_a, q_b, q_ab) for a in body.args])
        if isinstance(body, sp.Mul):
            const, dep = body.as_independent(xa, xb, as_Add=False)
            if const != 1:
                return const * cls(sp.Lambda((xa, xb), dep), mu_a, mu_b, q_a, q_b, q_ab)
        # perfectly correlated: e_a = e_b almost surely
        if sp.expand(mu_a - mu_b) == 0 and sp.expand(q_a - q_ab) == 0 and sp.expand(q_b - q_ab) == 0:
            return E(sp.Lambda(EPS, body.subs({xa: EPS, xb: EPS})), mu_a, q_a)
        # independent and factorised
        if q_ab == 0 and isinstance(body, sp.Mul):
            fa, fb = body.as_independent(xb, as_Add=False)
            if xb not in fa.free_symbols and xa not in fb.free_symbols:
                return E(sp.Lambda(EPS, fa.subs(xa, EPS)), mu_a, q_a) * E(
                    sp.Lambda(EPS, fb.subs(xb, EPS)), mu_b, q_b)
        if body.is_polynomial(xa, xb):
            return _bivariate_moments(body, xa, xb, mu_a, mu_b, q_a, q_b, q_ab)
        closed = expect2_closed(body, xa, xb, mu_a, mu_b, q_a, q_b, q_ab)
        if closed is not None:
            return closed

    def fdiff(self, argindex):
        F, mu_a, mu_b, q_a, q_b, q_ab = self.args
        xa, xb = F.variables
        body = F.expr
        rest = (mu_a, mu_b, q_a, q_b, q_ab)
        if argindex == 2:
            return E2(sp.Lambda((xa, xb), body.diff(xa)), *rest)
        if argindex == 3:
            return E2(sp.Lambda((xa, xb), body.diff(xb)), *rest)
        if argindex == 4:
            return E2(sp.Lambda((xa, xb), body.diff(xa, 2)), *rest) / 2
        if argindex == 5:
            return E2(sp.Lambda((xa, xb), body.diff(xb, 2)), *rest) / 2
        if argindex == 6:
            return E2(sp.Lambda((xa, xb), body.diff(xa, xb)), *rest)
        raise ValueError("no derivative with respect to the integrand")

    _eval_derivative = E._eval_derivative

    def _latex(self, printer, exp=None):
        F = self.args[0]
        ea, eb = sp.Symbol("e^{a}"), sp.Symbol("e^{b}")
        body = printer._print(F.expr.subs({F.variables[0]: ea, F.variables[1]: eb}))
        s = r"\mathbb{E}_{e^{a},e^{b}}\left[%s\right]" % body
        return s if exp is None else r"\left(%s\right)^{%s}" % (s, exp)


def expect(expr, var, mu, q):
    """``E[expr]`` with ``var ~ N(mu, q)``; ``expr`` is a SymPy expression in ``var``."""
    return E(sp.Lambda(EPS, sp.sympify(expr).subs(var, EPS)), mu, q)


def expect2(expr, var_a, var_b, mu_a, mu_b, q_a, q_b, q_ab):
    """``E[expr]`` with ``(var_a, var_b)`` bivariate Gaussian (means, variances, covariance)."""
    body = sp.sympify(expr).subs({var_a: EPS_A, var_b: EPS_B}, simultaneous=True)
    return E2(sp.Lambda((EPS_A, EPS_B), body), mu_a, mu_b, q_a, q_b, q_ab)

r"""Closed-form Gaussian expectations: the evaluation rules that :class:`~mftrnn.theory.gaussian.E` and
:class:`~mftrnn.theory.gaussian.E2` consult before falling back to quadrature.

Each rule returns a SymPy expression or ``None`` (no closed form known: the expectation stays symbolic and is
evaluated numerically by :mod:`mftrnn.theory.numeric`). Because the rules act when an expectation is built, the
slopes of a map (derivatives by Price's theorem) are derivatives of the closed forms, and the derivative of a closed
form equals the closed form of the derivative's integrand (both are tested).

Notation: :math:`x\sim\mathcal N(\mu,q)`, :math:`s=\sqrt q`, :math:`z=\mu/s`,
:math:`\Phi(z)=\tfrac12(1+\operatorname{erf}(z/\sqrt2))`, :math:`\phi(z)=e^{-z^2/2}/\sqrt{2\pi}`.

**Univariate, any mean.**

* Rectifier and step (:math:`\operatorname{relu}`, Heaviside :math:`\Theta`): a product of their powers and a
  polynomial is :math:`x^n\,\Theta(x)`, whose truncated moments :math:`T_n=\mathbb E[x^n\Theta(x)]` follow from
  Stein's identity :math:`\mathbb E[(x-\mu)g(x)]=q\,\mathbb E[g'(x)]`:

  .. math:: T_0=\Phi(z),\quad T_1=\mu\Phi(z)+s\,\phi(z),\quad T_n=\mu T_{n-1}+(n-1)\,q\,T_{n-2}.

  So :math:`\mathbb E[\operatorname{relu}(x)^2]=(\mu^2+q)\Phi(z)+\mu s\,\phi(z)` and
  :math:`\mathbb E[\Theta(x)]=\Phi(z)`.
* Dirac delta: :math:`\mathbb E[g(x)\,\delta(x)] = g(0)\,\phi(z)/s` for :math:`g` continuous at 0 (polynomial,
  exponential, erf, relu).
* Polynomial times :math:`e^{-a x^2+bx+c}` (:math:`a\ge0`) times at most one :math:`\operatorname{erf}(\alpha x)`:
  the exponential tilts the Gaussian, :math:`q'=q/(1+2aq)`, :math:`\mu'=(\mu+bq)/(1+2aq)`, with the factor
  :math:`\sqrt{q'/q}\,\exp(\mu'^2/2q'-\mu^2/2q+c)`; then
  :math:`\mathbb E[\operatorname{erf}(\alpha y)]=\operatorname{erf}(\alpha\mu'/\sqrt{1+2\alpha^2q'})` and higher
  polynomial moments by Stein's identity. This covers :math:`\operatorname{erf}` and all its derivatives.

**Zero means only** (returned when the means are the number 0; :mod:`mftrnn.theory.numeric` also uses them at the
points where a symbolic mean evaluates to 0). With :math:`\cos\theta=\rho=q_{ab}/\sqrt{q_aq_b}`:

* arc-cosine kernels (Cho & Saul 2009) of degree 1 and 0:
  :math:`\mathbb E[\operatorname{relu}(a)\operatorname{relu}(b)]=\frac{\sqrt{q_aq_b}}{2\pi}(\sin\theta+(\pi-\theta)
  \cos\theta)`, :math:`\mathbb E[\Theta(a)\Theta(b)]=\frac{\pi-\theta}{2\pi}`, and the mixed
  :math:`\mathbb E[\operatorname{relu}(a)\Theta(b)]=\sqrt{q_a}(1+\rho)/(2\sqrt{2\pi})`;
* Williams (1997): :math:`\mathbb E[\operatorname{erf}(\alpha a)\operatorname{erf}(\beta b)]=\frac2\pi\arcsin
  \frac{2\alpha\beta q_{ab}}{\sqrt{(1+2\alpha^2q_a)(1+2\beta^2q_b)}}` (and :math:`q_a=q_b=q_{ab}` for
  :math:`\mathbb E[\operatorname{erf}(\alpha x)^2]`).

**Bivariate, any mean:** :math:`\mathbb E[e^{-\alpha a^2-\beta b^2}] = |I+2A\Sigma|^{-1/2}
\exp(-\mu^\top(I+2A\Sigma)^{-1}A\mu)`, :math:`A=\operatorname{diag}(\alpha,\beta)` (products of
:math:`\operatorname{erf}'`).

What has no closed form here (e.g. :math:`\mathbb E[\operatorname{relu}(a)\operatorname{relu}(b)]` at a non-zero
mean, :math:`\mathbb E[\operatorname{erf}(x)^2]` at a non-zero mean) stays an unevaluated expectation.
"""
from __future__ import annotations

import sympy as sp

from ..cells.functions import relu

__all__ = ["expect_closed", "expect2_closed", "truncated_moment", "truncated_moment_numpy", "zero_mean_closed",
           "zero_mean_closed2", "KINK_FUNCTIONS"]

#: functions whose Gaussian expectations are piecewise: continuous with a kink (relu, Abs, Max, Min) or a jump
#: (Heaviside, sign) where their argument vanishes; the quadrature splits integrals there.
KINK_FUNCTIONS = (relu, sp.Heaviside, sp.Abs, sp.Max, sp.Min, sp.sign)


class truncated_moment(sp.Function):
    r""":math:`T_n(\mu,q)=\mathbb E_{x\sim\mathcal N(\mu,q)}[x^n\,\Theta(x)]` as a SymPy function (``n`` a
    non-negative integer), so that its derivatives are again truncated moments (no cancellation between
    :math:`\Phi` and :math:`\phi` terms, and no :math:`0/0` at :math:`q=0`):

    .. math:: \partial_\mu T_n = n\,T_{n-1}, \qquad \partial_q T_n = \tfrac12\partial_\mu^2 T_n
              = \tfrac{n(n-1)}2\,T_{n-2}\quad(n\ge2),

    with :math:`\partial_\mu T_0 = \phi(z)/s`, :math:`\partial_q T_0=-z\phi(z)/(2q)`, :math:`\partial_q T_1 =
    \phi(z)/(2s)`. Explicitly (``rewrite(sp.erf)``) :math:`T_0=\Phi(z)`, :math:`T_1=\mu\Phi(z)+s\phi(z)`,
    :math:`T_n=\mu T_{n-1}+(n-1)qT_{n-2}`; at :math:`\mu=0` it evaluates to that form. Numerically
    (:func:`truncated_moment_numpy`) the degenerate Gaussian :math:`q=0` gives :math:`\mu^n\Theta(\mu)`, with
    :math:`\Theta(0)=\tfrac12`."""

    nargs = 3

    @classmethod
    def eval(cls, n, mu, q):
        if not (n.is_Integer and n >= 0):
            raise ValueError("truncated_moment needs a non-negative integer order")
        if mu.is_zero:
            return _explicit(int(n), mu, q)

    def fdiff(self, argindex=2):
        n, mu, q = self.args
        n = int(n)
        pdf = sp.exp(-mu**2 / (2 * q)) / sp.sqrt(2 * sp.pi * q)
        if argindex == 2:
            return n * truncated_moment(n - 1, mu, q) if n >= 1 else pdf
        if argindex == 3:
            if n >= 2:
                return sp.Rational(n * (n - 1), 2) * truncated_moment(n - 2, mu, q)
            return pdf / 2 if n == 1 else -mu * pdf / (2 * q)
        raise ValueError("no derivative with respect to the order")

    def _eval_evalf(self, prec):
        n, mu, q = self.args
        if mu.is_number and q.is_number:
            return _explicit(int(n), mu, q).evalf(prec)

    def _eval_rewrite_as_erf(self, n, mu, q, **kwargs):
        return _explicit(int(n), mu, q)

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        n, mu, q = self.args
        s = r"T_{%s}\left(%s,\,%s\right)" % (printer._print(n), printer._print(mu), printer._print(q))
        return s if exp is None else r"%s^{%s}" % (s, exp)


def _explicit(n, mu, q):
    s = sp.sqrt(q)
    z = mu / s
    T = [_Phi(z), mu * _Phi(z) + s * _phi(z)]
    for k in range(2, n + 1):
        T.append(mu * T[k - 1] + (k - 1) * q * T[k - 2])
    return T[n]


def truncated_moment_numpy(n, mu, q):
    """NumPy :class:`truncated_moment` (finite at q = 0: the degenerate Gaussian)."""
    import numpy as np
    from scipy.special import ndtr

    mu, q = np.broadcast_arrays(np.asarray(mu, float), np.asarray(q, float))
    pos = q > 0
    s = np.sqrt(np.where(pos, q, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(pos, mu / np.where(pos, s, 1.0), np.where(mu == 0, 0.0, np.copysign(np.inf, mu)))
    t0 = ndtr(z)
    t1 = mu * t0 + s * np.exp(-0.5 * np.minimum(z * z, 1e300)) / np.sqrt(2 * np.pi)
    T = [t0, t1]
    for k in range(2, int(n) + 1):
        T.append(mu * T[k - 1] + (k - 1) * q * T[k - 2])
    return T[int(n)]


def _Phi(z):
    return (1 + sp.erf(z / sp.sqrt(2))) / 2


def _phi(z):
    return sp.exp(-z**2 / 2) / sp.sqrt(2 * sp.pi)


def _moment(k: int, mu, q):
    m = [sp.S.One, mu]
    for j in range(2, k + 1):
        m.append(mu * m[j - 1] + (j - 1) * q * m[j - 2])
    return m[k]


def _factors(body):
    """``body`` as a list of (base, integer exponent) factors; None if an exponent is not a positive integer."""
    out = []
    for f in sp.Mul.make_args(body):
        if isinstance(f, sp.exp):
            out.append((f, 1))
            continue
        base, e = f.as_base_exp()
        if isinstance(base, sp.exp):  # exp(u)**k = exp(k u)
            out.append((sp.exp(base.args[0] * e), 1))
            continue
        if not (e.is_Integer and e > 0):
            return None
        out.append((base, int(e)))
    return out


def _poly_coeffs(expr, x):
    """{power: coefficient} of a polynomial in ``x``, or None."""
    if not expr.is_polynomial(x):
        return None
    p = sp.Poly(expr, x)
    return {m[0]: c for m, c in zip(p.monoms(), p.coeffs())}


def expect_closed(body, x, mu, q):
    r""":math:`\mathbb E_{x\sim\mathcal N(\mu,q)}[\text{body}]` in closed form, or ``None``.

    ``body`` is a product (E.eval has split sums and constants off). The rules of the module docstring, tried in
    turn: rectifier/step times polynomial; Dirac delta at 0; polynomial times exponential of a quadratic times at
    most one erf; at zero mean :math:`\operatorname{erf}(\alpha x)^2`.
    """
    facs = _factors(body)
    if facs is None:
        return None
    poly, kinks, delta, exps, erfs, other = sp.S.One, 0, [], [], [], []
    for base, k in facs:
        if x not in base.free_symbols:
            poly *= base**k
        elif base.is_polynomial(x):
            poly *= base**k
        elif isinstance(base, (relu, sp.Heaviside)) and base.args[0] == x:
            kinks += 1
            if isinstance(base, relu):
                poly *= x**k
        elif isinstance(base, sp.DiracDelta) and base.args == (x,) and k == 1:
            delta.append(base)
        elif isinstance(base, sp.exp):
            exps.append(base.args[0] * k)
        elif isinstance(base, sp.erf) and (base.args[0] / x).free_symbols.isdisjoint({x}):
            erfs.extend([base.args[0] / x] * k)
        else:
            other.append(base)
    if other:
        return None
    coeffs = _poly_coeffs(sp.expand(poly), x)
    if coeffs is None:
        return None
    if delta:
        if any(isinstance(b, sp.Heaviside) for b, _ in facs):
            return None  # Theta(0) delta(0) is not defined
        g = poly * sp.exp(sp.Add(*exps)) * sp.Mul(*[sp.erf(a * x) for a in erfs])
        return sp.simplify(g.subs(x, 0)) * _phi(mu / sp.sqrt(q)) / sp.sqrt(q) if len(delta) == 1 else None
    if kinks:
        if exps or erfs:
            return None
        return sp.Add(*[c * truncated_moment(n, mu, q) for n, c in coeffs.items()])
    if len(erfs) >= 2:
        if len(erfs) == 2 and not exps and poly == 1 and mu == 0 and erfs[0] == erfs[1]:
            a2q = 2 * erfs[0]**2 * q
            return 2 / sp.pi * sp.asin(a2q / (1 + a2q))
        return None
    if not exps and not erfs:
        return None  # polynomial: E.eval has its own rule
    return _tilted(coeffs, sp.Add(*exps), erfs[0] if erfs else None, x, mu, q)


def _tilted(coeffs, expo, alpha, x, mu, q):
    """E[poly(x) exp(expo(x)) erf(alpha x)] with expo a quadratic of non-positive leading coefficient."""
    P = _poly_coeffs(sp.expand(expo), x)
    if P is None or max(P, default=0) > 2:
        return None
    a, b, c = -P.get(2, sp.S.Zero), P.get(1, sp.S.Zero), P.get(0, sp.S.Zero)
    if a.is_negative:
        return None  # exp(+x^2): the expectation may diverge
    qt = q / (1 + 2 * a * q)
    mt = (mu + b * q) / (1 + 2 * a * q)
    factor = sp.sqrt(1 / (1 + 2 * a * q)) * sp.exp(sp.simplify(mt**2 / (2 * qt) - mu**2 / (2 * q)) + c)
    if alpha is None:
        return factor * sp.Add(*[cf * _moment(n, mt, qt) for n, cf in coeffs.items()])
    return factor * sp.Add(*[cf * _erf_moment(n, alpha, mt, qt) for n, cf in coeffs.items()])


def _erf_moment(n, alpha, m, v):
    r""":math:`G_n=\mathbb E[y^n\operatorname{erf}(\alpha y)]`, :math:`y\sim\mathcal N(m,v)`: Stein's identity
    :math:`G_n = m G_{n-1} + (n-1)vG_{n-2} + v\,\mathbb E[y^{n-1}\,\tfrac{2\alpha}{\sqrt\pi}e^{-\alpha^2y^2}]`."""
    if n == 0:
        return sp.erf(alpha * m / sp.sqrt(1 + 2 * alpha**2 * v))
    y = sp.Dummy("y", real=True)
    extra = _tilted({n - 1: 2 * alpha / sp.sqrt(sp.pi)}, -alpha**2 * y**2, None, y, m, v)
    out = m * _erf_moment(n - 1, alpha, m, v) + v * extra
    if n >= 2:
        out += (n - 1) * v * _erf_moment(n - 2, alpha, m, v)
    return out


def _split2(body, xa, xb):
    """body = fa(xa) * fb(xb) * const: (const, fa, fb) or None."""
    const, dep = body.as_independent(xa, xb, as_Add=False)
    fa, fb = dep.as_independent(xb, as_Add=False)
    if xb in fa.free_symbols or xa in fb.free_symbols:
        return None
    return const, fa, fb


def _kind(f, x):
    """('relu', 1) / ('step', 1) / ('erf', alpha) / ('gauss', alpha) for relu(x), Theta(x), erf(alpha x),
    exp(-alpha x^2); None otherwise (constants are split off by the caller)."""
    if isinstance(f, relu) and f.args[0] == x:
        return "relu", 1
    if isinstance(f, sp.Heaviside) and f.args[0] == x:
        return "step", 1
    if isinstance(f, sp.erf):
        alpha = sp.simplify(f.args[0] / x)
        if x not in alpha.free_symbols:
            return "erf", alpha
    if isinstance(f, sp.exp):
        P = _poly_coeffs(sp.expand(f.args[0]), x)
        if P is not None and set(P) == {2} and (-P[2]).is_nonnegative:
            return "gauss", -P[2]
    return None


def expect2_closed(body, xa, xb, mu_a, mu_b, q_a, q_b, q_ab):
    r""":math:`\mathbb E[\text{body}(a,b)]` for a bivariate Gaussian in closed form, or ``None``: the zero-mean
    kernels (arc-cosine of degree 0 and 1, Williams' erf kernel) when both means are 0, and the Gaussian factor
    :math:`e^{-\alpha a^2-\beta b^2}` at any mean."""
    split = _split2(body, xa, xb)
    if split is None:
        return None
    const, fa, fb = split
    ka, kb = _kind(fa, xa), _kind(fb, xb)
    if ka is None or kb is None:
        return None
    (na, alpha), (nb, beta) = ka, kb
    if na == nb == "gauss":
        A = sp.diag(alpha, beta)
        S = sp.Matrix([[q_a, q_ab], [q_ab, q_b]])
        M = sp.eye(2) + 2 * A * S
        mu = sp.Matrix([mu_a, mu_b])
        expo = (mu.T * M.inv() * A * mu)[0, 0] if (mu_a != 0 or mu_b != 0) else 0
        return const * sp.exp(-sp.simplify(expo)) / sp.sqrt(sp.expand(M.det()))
    if mu_a != 0 or mu_b != 0:
        return None
    rho = q_ab / sp.sqrt(q_a * q_b)
    theta = sp.acos(rho)
    if na == nb == "relu":
        return const * (sp.sqrt(q_a * q_b - q_ab**2) + q_ab * (sp.pi - theta)) / (2 * sp.pi)
    if na == nb == "step":
        return const * (sp.pi - theta) / (2 * sp.pi)
    if {na, nb} == {"relu", "step"}:
        qr = q_a if na == "relu" else q_b
        return const * sp.sqrt(qr) * (1 + rho) / (2 * sp.sqrt(2 * sp.pi))
    if na == nb == "erf":
        return const * 2 / sp.pi * sp.asin(2 * alpha * beta * q_ab
                                           / sp.sqrt((1 + 2 * alpha**2 * q_a) * (1 + 2 * beta**2 * q_b)))
    return None


_QS = sp.Symbol("q", nonnegative=True)
_QA = sp.Symbol("q_a", nonnegative=True)
_QB = sp.Symbol("q_b", nonnegative=True)
_QAB = sp.Symbol("q_ab", real=True)


def zero_mean_closed(body, x):
    """(closed form of E[body] at mean 0 as an expression in the symbol ``q``, that symbol) or None: what the
    numeric layer uses at points where a symbolic mean evaluates to 0."""
    out = expect_closed(body, x, sp.S.Zero, _QS)
    return None if out is None else (out, _QS)


def zero_mean_closed2(body, xa, xb):
    """(closed form at zero means in symbols ``q_a, q_b, q_ab``, those symbols) or None."""
    out = expect2_closed(body, xa, xb, sp.S.Zero, sp.S.Zero, _QA, _QB, _QAB)
    return None if out is None else (out, (_QA, _QB, _QAB))

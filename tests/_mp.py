"""High-precision reference Gaussian expectations with mpmath (test helper)."""
import mpmath as mp
import sympy as sp

from mftrnn.theory.gaussian import sigmoid

mp.mp.dps = 30


def mp_function(body, var):
    """An mpmath function of one variable from a SymPy integrand (the logistic function rewritten as exp)."""
    return sp.lambdify(var, body.replace(sigmoid, lambda a: 1 / (1 + sp.exp(-a))), modules="mpmath")


def mp_expect(f, mu, q):
    """E[f(e)], e ~ N(mu, q), by adaptive tanh-sinh quadrature split at the activation's transition."""
    mu, q = mp.mpf(mu), mp.mpf(q)
    if q == 0:
        return f(mu)
    s = mp.sqrt(q)
    xi0 = -mu / s  # where the pre-activation crosses 0 (the sharp part of sigmoid/tanh)
    pts = sorted({mp.mpf(-40), mp.mpf(40), *(xi0 + k / s for k in (-8, -3, -1, 0, 1, 3, 8)), mp.mpf(-4),
                  mp.mpf(0), mp.mpf(4)})
    pts = [p for p in pts if -40 <= p <= 40]
    g = lambda xi: f(mu + s * xi) * mp.npdf(xi)
    return mp.quad(g, pts)

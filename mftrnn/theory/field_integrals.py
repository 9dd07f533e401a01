r"""Expectations of functions of independent Gaussian fields, including conditionally Gaussian arguments.

In the untied mean field every field (gate pre-activation, or part of one) of a gated cell is an independent
Gaussian :math:`e_k\sim\mathcal N(\mu_k, q_k)`. :class:`FieldIntegral` evaluates :math:`\mathbb E[F(e)]` for a
SymPy expression :math:`F`:

1. by linearity over the terms of :math:`F`, and within a term by independence: factors are grouped by the fields
   they share, and the expectation of the term is the product of the groups' expectations;
2. a group whose fields enter only through one argument that is *linear* in some of them,
   e.g. PyTorch's GRU candidate :math:`\tanh(e_{nx} + \sigma(e_r)\,e_{nh})`, is integrated as a conditionally
   Gaussian variable: given the other fields :math:`e_o`, the argument :math:`\epsilon = L_0(e_o) + \sum_k
   a_k(e_o)e_k` is :math:`\mathcal N(L_0+\sum_k a_k\mu_k,\ \sum_k a_k^2 q_k)`, so the group is a two-level
   integral (outer over :math:`e_o`, inner over :math:`\epsilon`) instead of a three-dimensional one;
3. every one-dimensional integral is the strip-aware trapezoidal rule of :mod:`mftrnn.theory.quadrature` (node count
   from the distance of the integrand's nearest complex singularity, target accuracy 1e-12), tensor products of
   them for several fields.

Hyperparameters are scalars here; callers loop over points.
"""
from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from ..errors import MftrnnError
from .numeric import NUMPY_MODULES, strip_half_width
from .quadrature import WINDOW, _rule, nodes_for

__all__ = ["FieldIntegral", "gaussian_nodes"]

_EPS = sp.Symbol("epsilon_cond", real=True)


def gaussian_nodes(mu: float, q: float, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid nodes and weights for ``e ~ N(mu, q)`` resolving an integrand analytic in a strip of half-width
    ``d`` (one point with weight 1 when ``q == 0``)."""
    if q <= 0:
        return np.array([float(mu)]), np.array([1.0])
    s = float(np.sqrt(q))
    xi, w = _rule(int(nodes_for(np.array([s]), d)[0]), WINDOW)
    return mu + s * xi, w


def _groups(factors, fields, base_of=None):
    """Union-find of factors by shared fields: list of (expr, field set) with independent field sets. ``base_of``
    (optional) maps symbols to the field they belong to (e.g. both copies' symbols of one field), else the fields
    are the symbols in ``fields``."""
    groups = []
    for f in factors:
        fs = ({base_of[s] for s in f.free_symbols if s in base_of} if base_of is not None
              else f.free_symbols & fields)
        merged, rest = [f], []
        for g, gs in groups:
            if gs & fs:
                merged.append(g)
                fs = fs | gs
            else:
                rest.append((g, gs))
        groups = rest + [(sp.Mul(*merged), fs)]
    return groups


def _linear_argument(body, fs):
    """Find one argument ``L`` of the body's functions linear in some fields that occur nowhere else.

    Returns (L, inner fields, {field: coefficient}, L with the inner fields set to 0) or None.
    """
    args = {a for fn in body.atoms(sp.Function) for a in fn.args if a.free_symbols & fs and not a.is_Symbol}
    for L in sorted(args, key=lambda a: (-len(a.free_symbols & fs), sp.default_sort_key(a))):
        inner = []
        for k in sorted(L.free_symbols & fs, key=sp.default_sort_key):
            if sp.diff(L, k, 2) != 0 or k in sp.diff(L, k).free_symbols:
                continue
            if body.xreplace({L: _EPS}).has(k):
                continue  # the field also occurs outside this argument
            inner.append(k)
        if inner:
            coeff = {k: sp.diff(L, k) for k in inner}
            return L, inner, coeff, L.xreplace({k: 0 for k in inner})
    return None


class _Group:
    """Expectation of one group of factors (independent of the other groups)."""

    def __init__(self, body, fs):
        self.body = body
        lin = _linear_argument(body, fs)
        self.cond = lin is not None
        if self.cond:
            L, inner, coeff, L0 = lin
            self.inner = inner
            outer = sorted(fs - set(inner), key=sp.default_sort_key)
            self.outer = outer
            ib = body.xreplace({L: _EPS})
            self.f = sp.lambdify([*outer, _EPS], ib, modules=NUMPY_MODULES)
            self.L0 = sp.lambdify(outer, L0, modules=NUMPY_MODULES)
            self.coeff = [sp.lambdify(outer, coeff[k], modules=NUMPY_MODULES) for k in inner]
            # the strip of the functions of the conditioned argument (setting the outer fields to 0 would drop
            # them wherever an outer field is also a factor, e.g. e_nh^2 tanh(e_nx + r e_nh)^2)
            self.d_inner = min([strip_half_width(f) for f in ib.atoms(sp.Function) if f.has(_EPS)] + [np.inf])
            self.d_outer = strip_half_width(ib)
        else:
            self.outer = sorted(fs, key=sp.default_sort_key)
            self.f = sp.lambdify(self.outer, body, modules=NUMPY_MODULES)
            self.d_outer = strip_half_width(body)
        if len(self.outer) > 2:
            raise MftrnnError(f"expectation over {len(self.outer)} coupled fields is not supported: {body}")

    def __call__(self, moments):
        grids, weights = [], []
        for k in self.outer:
            x, w = gaussian_nodes(*moments[k], self.d_outer)
            grids.append(x)
            weights.append(w)
        mesh = np.meshgrid(*grids, indexing="ij") if grids else []
        W = functools.reduce(np.multiply.outer, weights) if weights else np.array(1.0)
        if not self.cond:
            return float(np.sum(np.broadcast_to(self.f(*mesh), W.shape) * W))
        m = np.broadcast_to(self.L0(*mesh), W.shape).astype(float)
        v = np.zeros(W.shape)
        for k, c in zip(self.inner, self.coeff):
            a = np.broadcast_to(c(*mesh), W.shape)
            m = m + a * moments[k][0]
            v = v + a**2 * moments[k][1]
        vmax = float(v.max())
        if vmax <= 0:
            vals = self.f(*mesh, m)
            return float(np.sum(np.broadcast_to(vals, W.shape) * W))
        xi, wi = _rule(int(nodes_for(np.array([np.sqrt(vmax)]), self.d_inner)[0]), WINDOW)
        eps = m[..., None] + np.sqrt(v)[..., None] * xi
        vals = self.f(*[g[..., None] for g in mesh], eps)
        return float(np.sum(np.broadcast_to(vals, eps.shape) * wi * W[..., None]))


class FieldIntegral:
    """``FieldIntegral(expr, fields)(moments)`` = :math:`\\mathbb E[\\mathrm{expr}]` with independent
    ``fields[k] ~ N(*moments[k])``; ``expr`` may contain no other free symbols."""

    def __init__(self, expr, fields):
        expr = sp.expand(sp.sympify(expr), deep=False, mul=True, multinomial=True)
        fields = set(fields)
        extra = expr.free_symbols - fields
        if extra:
            raise MftrnnError(f"expectation of {expr} has symbols {sorted(map(str, extra))} that are not fields")
        self.terms = []
        for term in sp.Add.make_args(expr):
            const, dep = term.as_independent(*fields, as_Add=False)
            groups = [_Group(g, gs) for g, gs in _groups(sp.Mul.make_args(dep), fields)] if dep != 1 else []
            self.terms.append((float(const), groups))

    def __call__(self, moments) -> float:
        total = 0.0
        for const, groups in self.terms:
            v = const
            for g in groups:
                v *= g(moments)
            total += v
        return total

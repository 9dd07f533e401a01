r"""Lambdify expressions containing Gaussian expectations into vectorised NumPy functions.

:class:`Compiled` takes SymPy expressions whose leaves are ordinary symbols and :class:`~mftrnn.theory.gaussian.E` /
:class:`~mftrnn.theory.gaussian.E2` nodes. The nodes are evaluated by quadrature (:mod:`mftrnn.theory.quadrature`), in
stages when the moments of one expectation contain another (e.g. a gate inside a recurrent input). Nodes that
share their Gaussian (same mean and variance expressions) are grouped, so that their integrands are evaluated on
one set of nodes with common sub-expressions computed once; the algebra around them is an ordinary
``sympy.lambdify``.
"""
from __future__ import annotations

import numpy as np
import sympy as sp
from scipy.special import expit

from ..errors import DomainError
from .gaussian import E, E2, EPS, EPS_A, EPS_B, STRIP_HALF_WIDTH, sigmoid
from .quadrature import expect2_numeric, expect_numeric

__all__ = ["Compiled", "NUMPY_MODULES", "strip_half_width"]

NUMPY_MODULES = [{"sigmoid": expit}, "numpy"]
#: strip half-width used for integrands containing functions the table does not know (conservative)
_UNKNOWN_STRIP = 0.5


def strip_half_width(body) -> float:
    """Distance from the real axis of the nearest singularity of an integrand (``inf`` for entire ones)."""
    d = np.inf
    for f in body.atoms(sp.Function):
        known = [w for cls, w in STRIP_HALF_WIDTH.items() if isinstance(f, cls)]
        if known:
            d = min(d, float(known[0]))
        elif not isinstance(f, (sp.exp,)):
            d = min(d, _UNKNOWN_STRIP)
    return d


def _sigmoid_pair(y):
    """(sigmoid(y), sigmoid(-y)) without cancellation: both from t = exp(-y), sigmoid(-y) = t sigmoid(y).

    ``y`` is clipped to |y| <= 700 (double) or 80 (single precision) so that exp cannot overflow; the logistic
    function is 0 or 1 to working precision long before that (no expectation in the supported range sees
    |y| > 150). The dtype of ``y`` is kept (single precision serves the cheap quadrature rules).
    """
    bound = 80.0 if y.dtype == np.float32 else 700.0
    t = np.exp(-np.clip(y, -bound, bound))
    p = 1.0 / (1.0 + t)
    return p, t * p


def _generator_form(body, variables):
    """Rewrite an integrand in terms of logistic functions so that no complement is formed by subtraction.

    ``tanh(y) = sigmoid(2y) - sigmoid(-2y)`` and, after factorising, ``1 - sigmoid(y) = sigmoid(-y)``,
    ``tanh(y) - 1 = -2 sigmoid(-2y)``, ``tanh(y) + 1 = 2 sigmoid(2y)``: e.g. ``1 - tanh(10)**2`` is then computed
    to full relative precision instead of losing eight digits. Returns (expression, {(p, m): y}) where ``p, m``
    stand for ``sigmoid(y), sigmoid(-y)``.
    """
    gens = {}

    def pair(y):
        if y not in gens:
            k = len(gens)
            gens[y] = (sp.Symbol(f"_sp{k}"), sp.Symbol(f"_sm{k}"))
        return gens[y]

    S, T = {}, {}
    for f in body.atoms(sigmoid):
        S[f] = sp.Symbol(f"_S{len(S)}")
    for f in body.atoms(sp.tanh):
        T[f] = sp.Symbol(f"_T{len(T)}")
    expr = sp.factor(body.xreplace({**S, **T}))
    repl = {}
    for f, s in S.items():
        p, m = pair(f.args[0])
        repl[s - 1] = -m
        repl[1 - s] = m
        repl[s] = p
    for f, t in T.items():
        p, m = pair(2 * f.args[0])
        repl[t - 1] = -2 * m
        repl[1 - t] = 2 * m
        repl[t + 1] = 2 * p
        repl[t] = p - m
    # replace the composite factors first, then the bare symbols
    expr = expr.xreplace({k: v for k, v in repl.items() if not k.is_Symbol})
    expr = expr.xreplace({k: v for k, v in repl.items() if k.is_Symbol})
    return expr, {v: k for k, v in gens.items()}


def _lambdify_integrands(variables, bodies):
    """Numeric integrands: one function computing the logistic pairs once and all bodies from them."""
    forms, gens = [], {}
    for b in bodies:
        e, g = _generator_form(b, variables)
        # unify generator symbols across bodies by their argument
        for (p, m), y in g.items():
            if y not in gens:
                gens[y] = (sp.Symbol(f"_gp{len(gens)}"), sp.Symbol(f"_gm{len(gens)}"))
            e = e.xreplace({p: gens[y][0], m: gens[y][1]})
        forms.append(e)
    gen_syms = [s for pm in gens.values() for s in pm]
    fn = sp.lambdify(list(variables) + gen_syms, forms, modules=NUMPY_MODULES, cse=True)
    yfns = [sp.lambdify(list(variables), y, modules=NUMPY_MODULES) for y in gens]

    def integrands(*x):
        vals = []
        for yf in yfns:
            vals.extend(_sigmoid_pair(np.asarray(yf(*x), np.result_type(*x, np.float32))))
        return fn(*x, *vals)

    return integrands


class Compiled:
    """Numeric evaluator for a list of expressions in the given argument symbols.

    ``Compiled(exprs, args)(*arrays)`` broadcasts the arrays and returns a list of arrays of that shape.
    """

    def __init__(self, exprs, args):
        self.args = tuple(args)
        remaining = [sp.sympify(e) for e in exprs]
        free = set().union(*(e.free_symbols for e in remaining)) - set(self.args)
        if free:
            raise ValueError(f"expressions have free symbols {sorted(map(str, free))} not among the arguments")
        known = list(self.args)
        self.stages = []
        counter = 0
        while True:
            nodes = set()
            for e in remaining:
                nodes |= e.atoms(E, E2)
            ready = [n for n in nodes if not any(a.has(E, E2) for a in n.args[1:])]
            if not ready:
                break
            groups: dict = {}
            for n in ready:
                groups.setdefault((n.func, n.args[1:]), []).append(n)
            stage = []
            repl = {}
            for (kind, moments), members in groups.items():
                syms = []
                for n in members:
                    s = sp.Dummy(f"E{counter}")
                    counter += 1
                    repl[n] = s
                    syms.append(s)
                bodies = [n.args[0].expr for n in members]
                d = min(strip_half_width(b) for b in bodies)
                variables = [EPS] if kind is E else [EPS_A, EPS_B]
                stage.append((kind, sp.lambdify(known, list(moments), modules=NUMPY_MODULES),
                              _lambdify_integrands(variables, bodies), d, syms))
            self.stages.append(stage)
            remaining = [e.xreplace(repl) for e in remaining]
            known += [s for *_, syms in stage for s in syms]
        self.known = known
        self.final = sp.lambdify(known, remaining, modules=NUMPY_MODULES)
        self.exprs = remaining

    def __call__(self, *values, rule: str = "fine"):
        try:
            return self._call(values, rule)
        except NameError as err:  # a function lambdify could not translate (e.g. a distribution such as DiracDelta)
            raise DomainError(f"cannot evaluate the mean-field maps numerically: {err}") from None

    def _call(self, values, rule):
        arrays = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in values)) if values else []
        shape = arrays[0].shape if arrays else ()
        env = [a.ravel() for a in arrays]
        size = env[0].size if env else 1
        for stage in self.stages:
            new = []
            for kind, moments_fn, integrands, d, syms in stage:
                moments = [np.broadcast_to(np.asarray(m, float), (size,)) for m in moments_fn(*env)]
                if kind is E:
                    vals = expect_numeric(integrands, moments[0], moments[1], d, rule)
                else:
                    vals = expect2_numeric(integrands, *moments, d, rule)
                new.extend(vals)
            env = env + new
        out = self.final(*env)
        return [np.broadcast_to(np.asarray(o, float), (size,)).reshape(shape) for o in out]

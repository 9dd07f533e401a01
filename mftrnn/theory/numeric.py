r"""Lambdify expressions containing Gaussian expectations into vectorised NumPy functions.

:class:`Compiled` takes SymPy expressions whose leaves are ordinary symbols and :class:`~mftrnn.theory.gaussian.E` /
:class:`~mftrnn.theory.gaussian.E2` nodes. The nodes are evaluated by quadrature (:mod:`mftrnn.theory.quadrature`), in
stages when the moments of one expectation contain another (e.g. a gate inside a recurrent input). Nodes that
share their Gaussian (same mean and variance expressions) are grouped, so that their integrands are evaluated on
one set of nodes with common sub-expressions computed once; the algebra around them is an ordinary
``sympy.lambdify``.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.special
import sympy as sp
from scipy.special import expit

from ..errors import DomainError
from .closed_forms import KINK_FUNCTIONS, truncated_moment, truncated_moment_numpy, zero_mean_closed, zero_mean_closed2
from .gaussian import E, E2, EPS, EPS_A, EPS_B, STRIP_HALF_WIDTH, sigmoid
from .quadrature import (PIECEWISE_TOL, RULES, STRIP_SAFETY, expect2_numeric, expect2_piecewise, expect_numeric,
                         expect_piecewise)

__all__ = ["Compiled", "NUMPY_MODULES", "strip_half_width", "classify", "kink_points", "gaussian_growth",
           "growth_strip"]

NUMPY_MODULES = [{"sigmoid": expit, "relu": lambda x: np.maximum(x, 0.0), "erf": scipy.special.erf,
                  "erfc": scipy.special.erfc, "truncated_moment": truncated_moment_numpy}, "numpy"]
#: strip half-width used for integrands containing functions the table does not know (conservative); such an
#: integrand's expectation is also evaluated a second time with twice the nodes, and refused if the two disagree
#: (:class:`Compiled`)
_UNKNOWN_STRIP = 0.5
#: entire functions: no poles; their growth off the real axis is what limits the trapezoid step (see
#: :func:`gaussian_growth`)
_ENTIRE = (sp.exp, sp.sin, sp.cos, sp.sinh, sp.cosh, sp.erf, sp.erfc, truncated_moment)


def _linear_coefficients(u):
    """Coefficients of ``u`` in its free symbols (sorted by name) if ``u`` is affine in them, else None."""
    syms = sorted(u.free_symbols, key=str)
    if not syms or not u.is_polynomial(*syms) or sp.Poly(u, *syms).total_degree() > 1:
        return None
    return [u.coeff(v) for v in syms]


def gaussian_growth(body) -> float:
    r"""Rate :math:`K` of Gaussian growth off the real axis of an entire integrand: :math:`|f(x+iy)|\lesssim
    e^{K y^2}`. ``erf(alpha e)`` contributes :math:`\alpha^2` (:math:`|\operatorname{erf}(iy)|\sim e^{y^2}/y`),
    ``exp(-k e^2 + ...)`` contributes :math:`k`; products add, powers multiply, sums take the largest.

    For the trapezoid rule in :math:`\xi` (:math:`e=\mu+s\xi`) such a factor turns the Gaussian weight
    :math:`e^{-\xi^2/2}` into one of variance :math:`1/(1+2Ks^2)` on the imaginary side, and the rule's error
    becomes :math:`\exp(-2\pi^2/(h^2(1+2Ks^2)))`: the step must shrink like :math:`1/s`, as for a pole at distance
    :math:`O(1)` (:func:`growth_strip`)."""
    body = sp.sympify(body)
    if isinstance(body, sp.Add):
        return max((gaussian_growth(a) for a in body.args), default=0.0)
    if isinstance(body, sp.Mul):
        return sum(gaussian_growth(a) for a in body.args)
    if isinstance(body, sp.Pow) and body.exp.is_Integer and body.exp > 0:
        return int(body.exp) * gaussian_growth(body.base)
    if isinstance(body, (sp.erf, sp.erfc)):
        c = _linear_coefficients(body.args[0])
        return float(sum(abs(complex(v))**2 for v in c if v.is_number)) if c is not None else 0.0
    if isinstance(body, sp.exp):
        u = sp.expand(body.args[0])
        syms = sorted(u.free_symbols, key=str)
        if syms and u.is_polynomial(*syms) and sp.Poly(u, *syms).total_degree() == 2:
            quad = sp.Poly(u, *syms)
            k = -sum(float(c) for m, c in zip(quad.monoms(), quad.coeffs()) if sum(m) == 2 and c.is_number)
            return max(k, 0.0)
    return 0.0


def growth_strip(K: float) -> float:
    r"""Strip half-width :math:`d` whose pole rule (:func:`mftrnn.theory.quadrature.nodes_needed`) is at least as fine,
    for every standard deviation and every rule of :data:`mftrnn.theory.quadrature.RULES`, as the step an entire
    integrand of Gaussian growth :math:`K` needs: :math:`h\le \pi\sqrt{2/((1+2Ks^2)\ln(1/\mathrm{tol}))}`
    (:func:`gaussian_growth`). ``inf`` for :math:`K=0`. Large :math:`s`:
    :math:`d\to\sqrt{\ln(1/\mathrm{tol})/K}/1.6`."""
    if K <= 0:
        return np.inf
    return _growth_strip(round(float(K), 12))


@functools.lru_cache(maxsize=None)
def _growth_strip(K: float) -> float:
    s = np.logspace(-3, 5, 4000)
    d = np.inf
    for tol, h_gauss, _ in RULES.values():
        L = np.log(1.0 / tol)
        h_need = np.minimum(h_gauss, np.pi * np.sqrt(2.0 / ((1 + 2 * K * s**2) * L)))
        # smaller root a of 2 pi a / (L + a^2/2) = h_need, then d = a s / STRIP_SAFETY
        a = (2 * np.pi - np.sqrt(np.maximum(4 * np.pi**2 - 2 * h_need**2 * L, 0.0))) / h_need
        d = min(d, float(np.min(np.where(h_need < h_gauss, a * s / STRIP_SAFETY, np.inf))))
    return d


def classify(body) -> dict:
    r"""What the quadrature needs to know about an integrand: ``d`` (strip half-width for the trapezoid rule: poles
    from :data:`~mftrnn.theory.gaussian.STRIP_HALF_WIDTH`, Gaussian growth of entire functions through
    :func:`growth_strip`), ``kinks`` (the kink/jump functions of :data:`~mftrnn.theory.closed_forms.KINK_FUNCTIONS`
    it contains, whose pieces are analytic), ``unknown`` (names of functions the library cannot classify: strip
    0.5 assumed and checked) and ``singular`` (distributions such as DiracDelta, which no quadrature evaluates)."""
    body = sp.sympify(body)
    d, unknown, kinks, singular = np.inf, set(), [], set()
    for f in body.atoms(sp.Function):
        known = [w for cls, w in STRIP_HALF_WIDTH.items() if isinstance(f, cls)]
        if known:
            d = min(d, float(known[0]))
        elif isinstance(f, KINK_FUNCTIONS):
            kinks.append(f)
        elif isinstance(f, sp.DiracDelta):
            singular.add(type(f).__name__)
        elif not isinstance(f, _ENTIRE):
            unknown.add(type(f).__name__)
            d = min(d, _UNKNOWN_STRIP)
    d = min(d, growth_strip(gaussian_growth(body)))
    return {"d": d, "kinks": kinks, "unknown": unknown, "singular": singular}


def strip_half_width(body) -> float:
    """Half-width of the strip of analyticity the trapezoid rule may use for an integrand (``inf``: entire with no
    Gaussian growth); see :func:`classify`. Kinks do not count here: integrands with kinks are integrated piecewise
    (:func:`kink_points`)."""
    return classify(body)["d"]


def kink_points(body, variable) -> list[float]:
    """Values of ``variable`` at which the kink/jump functions of ``body`` switch (their argument vanishes): affine
    arguments directly, others through ``sympy.solve`` when it returns all real roots in closed form; else (or for
    an argument with two integration variables) :class:`~mftrnn.errors.DomainError`."""
    pts = []
    for f in classify(body)["kinks"]:
        args = f.args[:1] if not isinstance(f, (sp.Max, sp.Min)) else [a - f.args[0] for a in f.args[1:]]
        for u in args:
            if variable not in u.free_symbols:
                continue
            if u.free_symbols != {variable}:
                raise DomainError(f"cannot integrate {f}: its switching point must depend on one variable")
            c = _linear_coefficients(u)
            if c is not None and c[0].is_number:
                pts.append(float(-u.subs(variable, 0) / c[0]))
                continue
            try:  # a non-affine argument: its real roots, if SymPy finds them all
                roots = sp.solve(u, variable)
            except NotImplementedError:
                roots = None
            if roots is None or not all(r.is_number for r in roots):
                raise DomainError(f"cannot integrate {f}: the points where it switches are not known in closed form")
            pts.extend(float(r) for r in roots if r.is_real)
    return sorted(set(pts))


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


class _Group:
    r"""Expectations sharing one Gaussian (same moment expressions), evaluated together.

    The integrands are classified once (:func:`classify`): analytic ones go to the trapezoid rule with the strip
    of their least analytic factor; those with kinks (rectifier, step, ...) to the piecewise Gauss-Legendre rules;
    a distribution (DiracDelta) is refused, and an integrand with a function the library cannot classify is
    evaluated twice (strip 0.5 and 0.25) and refused if the two disagree by more than the rule's tolerance. Where the
    means evaluate to zero and every integrand has a zero-mean closed form (:mod:`mftrnn.theory.closed_forms`:
    arc-cosine and erf kernels), the closed form is used there instead of quadrature.
    """

    def __init__(self, kind, moments_fn, integrands, bodies, variables, syms):
        self.kind, self.moments_fn, self.integrands, self.syms = kind, moments_fn, integrands, syms
        self.bodies = bodies
        info = [classify(b) for b in bodies]
        self.d = min(i["d"] for i in info)
        self.singular = set().union(*(i["singular"] for i in info))
        self.unknown = set().union(*(i["unknown"] for i in info))
        self.kinks = None
        if any(i["kinks"] for i in info) and not self.singular:
            self.kinks = [sorted({k for b in bodies for k in kink_points(b, v)}) for v in variables]
        closed = [zero_mean_closed(b, EPS) if kind is E else zero_mean_closed2(b, EPS_A, EPS_B) for b in bodies]
        self.closed = None
        if all(c is not None for c in closed):
            qsyms = closed[0][1] if kind is E2 else (closed[0][1],)
            self.closed = sp.lambdify(qsyms, [c[0] for c in closed], modules=NUMPY_MODULES)

    def evaluate(self, moments, rule):
        n = moments[0].size
        means = moments[:1] if self.kind is E else moments[:2]
        variances = moments[1:2] if self.kind is E else moments[2:4]
        zero = (np.logical_and.reduce([m == 0 for m in means] + [v > 0 for v in variances])
                if self.closed is not None else np.zeros(n, bool))  # closed forms divide by sqrt(q)
        out = [np.empty(n) for _ in self.bodies]
        if zero.any():
            qs = moments[1:] if self.kind is E else moments[2:]
            with np.errstate(divide="ignore", invalid="ignore"):
                vals = self.closed(*(m[zero] for m in qs))
            for o, v in zip(out, vals):
                o[zero] = v
        rest = ~zero
        if rest.any():
            for o, v in zip(out, self._numeric([m[rest] for m in moments], rule)):
                o[rest] = v
        return out

    def _numeric(self, moments, rule):
        if self.singular:
            raise DomainError(f"no closed form for E[{self.bodies[0]}] and its integrand contains "
                              f"{', '.join(sorted(self.singular))}, which no quadrature evaluates")
        if self.kinks is not None:
            if self.kind is E:
                return expect_piecewise(self.integrands, moments[0], moments[1], self.kinks[0], rule)
            return expect2_piecewise(self.integrands, *moments, *self.kinks, rule)
        run = expect_numeric if self.kind is E else expect2_numeric
        vals = run(self.integrands, *moments, self.d, rule)
        if self.unknown:
            finer = run(self.integrands, *moments, self.d / 2, rule)
            err = max(float(np.max(np.abs(a - b) / (1 + np.abs(a)), initial=0.0)) for a, b in zip(finer, vals))
            if not err <= PIECEWISE_TOL[rule]:
                raise DomainError(f"E[{self.bodies[0]}]: {', '.join(sorted(self.unknown))} is not a function whose "
                                  f"analyticity the quadrature knows; halving its step changed the result by {err:.1e}")
            vals = finer
        return vals


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
                variables = [EPS] if kind is E else [EPS_A, EPS_B]
                stage.append(_Group(kind, sp.lambdify(known, list(moments), modules=NUMPY_MODULES),
                                    _lambdify_integrands(variables, bodies), bodies, variables, syms))
            self.stages.append(stage)
            remaining = [e.xreplace(repl) for e in remaining]
            known += [s for g in stage for s in g.syms]
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
            for group in stage:
                moments = [np.broadcast_to(np.asarray(m, float), (size,)) for m in group.moments_fn(*env)]
                new.extend(group.evaluate(moments, rule))
            env = env + new
        out = self.final(*env)
        return [np.broadcast_to(np.asarray(o, float), (size,)).reshape(shape) for o in out]

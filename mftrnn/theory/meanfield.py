r"""Symbolic derivation of the mean-field maps of a cell.

Mean-field assumptions (stated once, used everywhere):

1. **Gaussian pre-activations.** At large width each pre-activation :math:`e^{(k)}_i = \sum_j W_{k,ij}y_j +
   \sum_j V_{k,ij}x_j + b_{k,i}` is, over units and initialisations, Gaussian with mean :math:`\mu_b` and
   variance :math:`q_k = \sigma_w^2\,\overline{y^2} + \sigma_v^2 R + \sigma_b^2` (:math:`\overline{y^2}=|y|^2/N`).
   For two input sequences a, b through the same network the pair :math:`(e^a,e^b)` is bivariate Gaussian
   with covariance :math:`q_{ab} = \sigma_w^2\,\overline{y^a y^b} + \sigma_v^2 R\Sigma + \sigma_b^2`
   (the same :math:`W, V, b` act on both). Different pre-activations of a cell are independent.
2. **Gates independent of the carried variables.** In an update affine in the previous state :math:`h` and the
   input :math:`x`, :math:`h_t = c_0(e) + c_h(e)\,h_{t-1} + c_x(e)\,x_t`, the coefficients (functions of the
   pre-activations of unit *i*) are treated as independent of :math:`h_{t-1,i}` and :math:`x_{t,i}`. This is exact
   when :math:`W, V, b` are redrawn at every step (untied weights); with tied weights it is an approximation
   that fails when a unit's gate remembers its own past. For the minimalRNN the resulting error in
   :math:`Q^*` is systematic (it does not shrink with :math:`N`) and graded: measured at :math:`N=1000`, about
   -1% at :math:`\sigma_w=0.5`, -2% at 1, -7% at 3, and -20% with quenched bias disorder :math:`\sigma_b=2`
   (book chapter on the minimalRNN). The vanilla RNN, whose update does not carry :math:`h_{t-1}` directly,
   is not affected.
3. Inputs are i.i.d. over time with zero mean, so :math:`\mathbb E[h_{t-1}x_t]=0` and :math:`\mathbb E[x_t]=0`.

With these, second moments close:
:math:`Q_t = \sum_{v,w\in\{1,h,x\}}\mathbb E[c_v c_w]\,\mathbb E[v w]`, with :math:`\mathbb E[h^2]=Q`,
:math:`\mathbb E[x^2]=R`, :math:`\mathbb E[h]=M` (the state mean, which has its own affine map), and similarly
:math:`C_t` with :math:`\mathbb E[h^ah^b]=C`, :math:`\mathbb E[x^ax^b]=R\Sigma`. Slopes are exact derivatives of
these maps, taken by SymPy through Price's theorem (:mod:`mftrnn.theory.gaussian`).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import sympy as sp

from ..cells.registry import Cell, Sigma, R, get_cell
from ..errors import DomainError, MftrnnError
from .gaussian import E, E2, EPS, EPS_A, EPS_B

__all__ = ["MeanField", "mean_field", "Q", "Q_a", "Q_b", "C", "M", "M_a", "M_b"]

Q = sp.Symbol("Q", nonnegative=True)
Q_a = sp.Symbol("Q_a", nonnegative=True)
Q_b = sp.Symbol("Q_b", nonnegative=True)
C = sp.Symbol("C", real=True)
M = sp.Symbol("M", real=True)
M_a = sp.Symbol("M_a", real=True)
M_b = sp.Symbol("M_b", real=True)


def _affine_coefficients(expr, carried):
    """Split ``expr = c_0 + sum_v c_v v`` over the carried symbols; error if not affine."""
    expr = sp.sympify(expr)
    coeffs = {}
    for v in carried:
        for w in carried:
            if sp.simplify(expr.diff(v, w)) != 0:
                raise MftrnnError(f"update rule is not affine in the state and input ({v}, {w}): {expr}")
        coeffs[v] = sp.simplify(expr.diff(v))
    coeffs[sp.S.One] = expr.subs({v: 0 for v in carried})
    return coeffs


def _split(expr, preacts):
    """Write ``expr`` as a sum of products of single-pre-activation factors: [(const, {e_k: f_k(e_k)})]."""
    deps = expr.free_symbols & set(preacts)
    if not deps:
        return [(expr, {})]
    if len(deps) == 1:
        return [(sp.S.One, {deps.pop(): expr})]
    if isinstance(expr, sp.Add):
        return [t for a in expr.args for t in _split(a, preacts)]
    if isinstance(expr, sp.Mul) or (isinstance(expr, sp.Pow) and expr.exp.is_Integer and expr.exp > 0):
        factors = expr.args if isinstance(expr, sp.Mul) else [expr.base] * int(expr.exp)
        terms = [(sp.S.One, {})]
        for f in factors:
            new = []
            for (c1, d1), (c2, d2) in itertools.product(terms, _split(f, preacts)):
                d = dict(d1)
                for k, v in d2.items():
                    d[k] = d.get(k, sp.S.One) * v
                new.append((c1 * c2, d))
            terms = new
        return terms
    raise MftrnnError(f"cannot separate {expr} into functions of single pre-activations")


@dataclass(frozen=True)
class _PreSyms:
    q: sp.Symbol
    q_a: sp.Symbol
    q_b: sp.Symbol
    q_ab: sp.Symbol


class MeanField:
    r"""All mean-field maps of one cell, derived symbolically on construction.

    Display forms (pre-activation variances as symbols :math:`q`, :math:`q_a`, :math:`q_b`, :math:`q_{ab}`):

    * ``variance_map`` — :math:`Q_t` in terms of :math:`Q=Q_{t-1}`, :math:`M`, :math:`R` and ``q``;
    * ``mean_map`` — :math:`M_t = \mathbb E[h_t]`;
    * ``covariance_map`` — :math:`C_t` in terms of :math:`C`, :math:`M_a, M_b`, :math:`R\Sigma` and
      ``q_a, q_b, q_ab``;
    * ``preactivation_variance`` / ``preactivation_covariance`` — definitions of those symbols.

    Closed forms in the state moments alone (for numerics): ``Q_map`` (:math:`Q_t(Q)` with the mean at its
    fixed point eliminated), ``chi_q`` (:math:`dQ_t/dQ`), ``chi`` (slope :math:`dC_t/dC` at identical inputs
    on the diagonal :math:`C=Q_a=Q_b=Q`), ``C_map`` (:math:`C_t(C)` with :math:`Q_a=Q_b=Q`) and ``chi_c``
    (:math:`dC_t/dC` there, to be evaluated at :math:`\Sigma=0`, :math:`C=C^*`).
    """

    def __init__(self, cell: Cell):
        self.cell = cell = get_cell(cell)
        if not cell.preactivations:
            raise DomainError(f"cell {cell.name!r} has no pre-activation: the mean-field theory needs at least one "
                              f"Gaussian field e = W h + V x + b")
        pre = [p.symbol for p in cell.preactivations]
        self._pre = pre
        single = len(pre) == 1
        self.q_symbols = {}
        for p in cell.preactivations:
            tag = "" if single else f"_{{{p.symbol}}}"
            self.q_symbols[p.symbol] = _PreSyms(
                sp.Symbol("q" + tag, nonnegative=True), sp.Symbol("q_a" + tag, nonnegative=True),
                sp.Symbol("q_b" + tag, nonnegative=True), sp.Symbol("q_ab" + tag, real=True))
        h, x = cell.state, cell.input
        carried = (h, x)
        mom1 = {(1, 1): 1, (1, h): M, (h, h): Q, (x, x): R}
        mom2 = {(1, 1): 1, (1, h): M_b, (h, 1): M_a, (h, h): C, (x, x): R * Sigma}

        def second_moment(expr):
            c = _affine_coefficients(expr, carried)
            out = sp.S.Zero
            for (v, cv), (w, cw) in itertools.product(c.items(), repeat=2):
                m = mom1.get((v, w), mom1.get((w, v), 0))
                if m != 0 and cv != 0 and cw != 0:
                    out += m * self._expect1(cv * cw)
            return sp.expand(out, deep=False)

        def cross_moment(expr):
            c = _affine_coefficients(expr, carried)
            out = sp.S.Zero
            for (v, cv), (w, cw) in itertools.product(c.items(), repeat=2):
                m = mom2.get((v, w), 0)
                if m != 0 and cv != 0 and cw != 0:
                    out += m * self._expect2(cv, cw)
            return sp.expand(out, deep=False)

        def first_moment(expr):
            c = _affine_coefficients(expr, carried)
            return self._expect1(c[sp.S.One]) + (M * self._expect1(c[h]) if c[h] != 0 else 0)

        # pre-activation (co)variances
        self.preactivation_variance = {}
        self.preactivation_covariance = {}
        for p in cell.preactivations:
            y = cell.recurrent_input(p)
            s = self.q_symbols[p.symbol]
            self.preactivation_variance[s.q] = p.sigma_w**2 * second_moment(y) + p.sigma_v**2 * R + p.sigma_b**2
            self.preactivation_covariance[s.q_ab] = (p.sigma_w**2 * cross_moment(y) + p.sigma_v**2 * R * Sigma
                                                     + p.sigma_b**2)
        for p in cell.preactivations:
            s = self.q_symbols[p.symbol]
            self.preactivation_covariance[s.q_a] = self._to_seq(self.preactivation_variance[s.q], "a")
            self.preactivation_covariance[s.q_b] = self._to_seq(self.preactivation_variance[s.q], "b")

        self.variance_map = second_moment(cell.update)
        self.mean_map = first_moment(cell.update)
        self.covariance_map = cross_moment(cell.update)

        # ---- closed forms in the state moments ----
        qdefs = self._resolve(self.preactivation_variance)
        cdefs = self._resolve(self.preactivation_covariance)
        self.q_of_Q = qdefs
        Qmap = self.variance_map.subs(qdefs)
        Mmap = self.mean_map.subs(qdefs)
        if Qmap.has(M):  # eliminate the mean at its fixed point M* = b/(1-a), M_t = a M + b
            a = Mmap.diff(M)
            b = Mmap.subs(M, 0)
            Qmap = Qmap.subs(M, b / (1 - a))
        # kinks and jumps (relu, Heaviside) are fine: closed forms or piecewise quadrature; a Dirac delta left inside
        # an expectation that no closed form absorbed is not
        singular = set()
        for expr in (Qmap, Qmap.diff(Q), self.covariance_map):
            for node in expr.atoms(E, E2):
                singular |= {type(f).__name__ for f in node.args[0].expr.atoms(sp.DiracDelta)}
        if singular:
            raise DomainError(f"cell {cell.name!r}: the update {cell.update} is not smooth enough (its mean-field maps "
                              f"or slopes contain {', '.join(sorted(singular))} inside an expectation with no closed "
                              f"form); use a continuous activation (e.g. relu(e) or tanh(k*e) for sign(e))")
        self.M_map = Mmap
        self.Q_map = Qmap
        self.chi_q = Qmap.diff(Q)
        Cfull = self.covariance_map.subs(cdefs)
        self.C_map_full = Cfull  # in Q_a, Q_b, M_a, M_b, C, Sigma
        dC = Cfull.diff(C)
        diag = {Q_a: Q, Q_b: Q, M_a: M, M_b: M}
        chi = dC.subs(diag).subs(Sigma, 1).subs(C, Q)
        if chi.has(M):
            a = Mmap.diff(M)
            chi = chi.subs(M, Mmap.subs(M, 0) / (1 - a))
        self.chi = chi
        self.C_map = Cfull.subs(diag)
        self.chi_c = dC.subs(diag)

    # -- helpers --
    def _to_seq(self, expr, which):
        sub = {Q: Q_a if which == "a" else Q_b, M: M_a if which == "a" else M_b}
        for k, s in self.q_symbols.items():
            sub[s.q] = s.q_a if which == "a" else s.q_b
        return expr.xreplace(sub)

    def _expect1(self, f):
        """E[f(e)] over the pre-activations of one sequence (symbols q)."""
        out = sp.S.Zero
        for const, factors in _split(sp.sympify(f), self._pre):
            term = const
            for k, fk in factors.items():
                term *= E(sp.Lambda(EPS, fk.subs(k, EPS)), self._mu(k), self.q_symbols[k].q)
            out += term
        return out

    def _expect2(self, fa, fb):
        """E[fa(e^a) fb(e^b)] over the pre-activations of two sequences."""
        out = sp.S.Zero
        for (ca, da), (cb, db) in itertools.product(_split(sp.sympify(fa), self._pre),
                                                    _split(sp.sympify(fb), self._pre)):
            term = ca * cb
            for k in set(da) | set(db):
                s = self.q_symbols[k]
                ga, gb = da.get(k, sp.S.One), db.get(k, sp.S.One)
                body = ga.subs(k, EPS_A) * gb.subs(k, EPS_B)
                term *= E2(sp.Lambda((EPS_A, EPS_B), body), self._mu(k), self._mu(k), s.q_a, s.q_b, s.q_ab)
            out += term
        return out

    def _mu(self, k):
        return next(p.mu_b for p in self.cell.preactivations if p.symbol == k)

    def _resolve(self, defs):
        """Substitute definitions that refer to each other until none of the defined symbols remain."""
        out = dict(defs)
        for _ in range(len(out) + 1):
            new = {k: v.subs(out) for k, v in out.items()}
            if new == out:
                break
            out = new
        if any(v.has(*out.keys()) for v in out.values()):
            raise MftrnnError("cyclic dependence between pre-activation variances")
        return out

    def display(self, expr):
        """Rewrite an expression for printing: pre-activation variances as the symbols ``q`` (inside expectations and,
        for closed forms, wherever the sum appears), and terms that share an expectation collected
        (``sigma_w**2*(Q + R)*E[...]``)."""
        back = {sp.expand(v): k for k, v in self.q_of_Q.items()}

        def fix(node):
            args = [back.get(sp.expand(a), a) for a in node.args[1:]]
            return node.func(node.args[0], *args)

        out = expr.replace(lambda n: isinstance(n, (E, E2)), fix)
        if back:  # closed forms (no expectation left) carry the variances as sums: name them q too
            out = out.subs(back)
            if len(self.q_of_Q) == 1:
                ((qs, qv),) = self.q_of_Q.items()
                c = qv.coeff(Q)
                if c != 0 and not (qv - c * Q).has(Q):
                    Qq = (qs - (qv - c * Q)) / c

                    def closed(n):
                        return (not isinstance(n, (E, E2)) and not n.has(E, E2) and n.has(Q)
                                and (isinstance(n, sp.Function) or (isinstance(n, sp.Pow) and not n.exp.is_Integer)))
                    if out.has(E, E2):
                        out = out.replace(closed, lambda n: sp.expand(n.subs(Q, Qq)))
                    else:  # a closed form: Q only through q
                        out = sp.expand(out.subs(Q, Qq), deep=False)
        return sp.collect(out, list(out.atoms(E, E2)), sp.factor)


@functools.lru_cache(maxsize=None)
def _mean_field_cached(cell: Cell) -> MeanField:
    return MeanField(cell)


def mean_field(cell) -> MeanField:
    """The (cached) symbolic mean-field maps of ``cell`` (a name or a :class:`~mftrnn.Cell`)."""
    cell = get_cell(cell)
    if not isinstance(cell, Cell):
        raise MftrnnError(f"{cell.name!r} is a gated cell; its mean field is mftrnn.theory.gated")
    return _mean_field_cached(cell)

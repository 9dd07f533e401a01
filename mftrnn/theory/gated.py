r"""Untied mean field of gated cells with several states (LSTM, GRU and variants), derived from their description.

Assumptions (the untied mean field; exact for networks whose weights and biases are redrawn at every step, as
:math:`N\to\infty`):

1. every field :math:`e_k = W_k y_k + V_k x + b_k` is Gaussian over units, :math:`\mathcal N(\mu_k, q_k)` with
   :math:`\mu_k = \mu_{b,K}` (0 without bias) and
   :math:`q_k = \sigma_{w,K}^2\,\overline{y_k^2} + \sigma_{v,K}^2 R + \sigma_{b,K}^2` (terms the field lacks dropped);
   different fields are independent, and independent of the previous states of the same unit;
2. inputs are i.i.d. over time with mean 0 and second moment :math:`R` (Gaussian where a law is needed).

What is derived from the cell's update expressions (by SymPy):

* the **carried** state :math:`s` (the one state whose previous value appears outside the fields, e.g. the LSTM's
  :math:`c`, the GRU's :math:`h`); its update must be affine in it, :math:`s_t = A(e)\,s + B(e, x)`;
* **readouts** (the other states): :math:`h_t = G(e)\,g(s_t)` with :math:`g = \tanh` or the identity;
* the state the fields read (:math:`y_k = \alpha_k(e)\,s_{\rm read}`), whose second moment :math:`Q` sets every
  :math:`q_k`.

Two closures follow. **Closed** cells (the fields read the carried state, or a state linear in it: the GRU, the
reset-before GRU, the LSTM whose gates read :math:`c`, the minimalRNN, the vanilla RNN with no carried state):
first and second moments close, :math:`Q_t = \mathbb E[A^2]Q + 2\mathbb E[AB]M + \mathbb E[B^2]`,
:math:`M_t = \mathbb E[A]M + \mathbb E[B]`. **Law** cells (the fields read a nonlinear readout of the carried
state: ``torch.nn.LSTM``, whose gates read :math:`h = o\tanh(c)`): :math:`\overline{h^2} = \mathbb E[G^2]\,
\mathbb E_\pi[g(c)^2]` needs the law :math:`\pi` of :math:`c`, which is not Gaussian; it is the stationary law of the
random affine recursion, computed exactly (to the stated 1e-10) by :mod:`mftrnn.theory.perpetuity`. A Gaussian
closure (:math:`c\sim\mathcal N(M, Q_c - M^2)`) is offered as an approximation, labelled as one.

:math:`\chi`: the growth per step of the second moment of an infinitesimal perturbation of the whole state under
identical inputs (both copies share the weights and inputs of every step). In the untied mean field a
perturbation :math:`\delta y_k` of what field :math:`k` reads perturbs it by
:math:`\delta e_k \sim \mathcal N(0, \sigma_{w,K}^2\,\overline{\delta y_k^2})`, independent of everything else, so
for closed cells :math:`D_t = \chi D_{t-1}` with

.. math:: \chi = \mathbb E[A^2] + \sum_k \sigma_{w,K}^2\,\rho_k\,\mathbb E\bigl[(\partial_k A\,s + \partial_k B)^2\bigr],

:math:`\rho_k = \overline{\delta y_k^2}/D`. For law cells the perturbation of :math:`c` is correlated with
:math:`c` itself (:math:`\mathbb E[\tanh'(c)^2\delta c^2]` is needed), so the perturbation is carried as the measure
:math:`w(dc) = \mathbb E[\delta c^2;\,c\in dc]` (its Fourier transform on the same grid) together with
:math:`\overline{\delta h^2}`; :math:`\chi` is the leading eigenvalue of that linear map. :math:`\xi=-1/\ln\chi`.

:math:`\chi_q` (closed cells): the slope of the variance map :math:`dQ_t/dQ_{t-1}` at :math:`Q^*` (means at their
fixed point), by Richardson-extrapolated central differences (error ~1e-10).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from scipy.optimize import brentq

from ..errors import ConvergenceError, DomainError, MftrnnError
from .numeric import NUMPY_MODULES, strip_half_width
from ..cells.gated import GatedCell, gate_hyperparameters
from .field_integrals import FieldIntegral, gaussian_nodes
from .fixed_point import FixedPoint
from .perpetuity import S_MAX, chebyshev_grid, sech2_transform, sech4_transform, solve_characteristic

__all__ = ["GatedFixedPoint", "gated_fixed_point", "analyse", "Structure", "stationary_law", "StationaryLaw",
           "cell_state_law"]

_M_GRIDS = (64, 112, 192, 320)
_LAW_TOL = 1e-10


# --------------------------------------------------------------------------- structure from the description
@dataclass(frozen=True, eq=False)
class Structure:
    """What the derivation needs, read off the cell's expressions (see the module docstring)."""

    cell: GatedCell
    kind: str                      # "closed" or "law"
    carried: sp.Symbol | None      # previous-value symbol of the carried state (None: no carried state)
    carried_new: sp.Symbol | None
    A: sp.Expr                     # carried update s_t = A s + B  (A = 0, B = update for a memoryless state)
    B: sp.Expr
    readouts: tuple                # ((new symbol, G, g_name), ...) for the other states
    read_state: sp.Symbol          # previous-state symbol every field reads (times alpha_k)
    alpha: dict                    # field symbol -> alpha_k(e) (fields without a recurrent term absent)
    fields: tuple                  # field symbols, in order
    output: sp.Symbol


def _readout(expr, s_new, fields):
    """Split ``expr = G(fields) * g(s_new)`` with g = tanh or identity; None if it is not of that form."""
    G, g = sp.sympify(expr).as_independent(s_new, as_Add=False)
    if g == s_new:
        return G, "identity"
    if g == sp.tanh(s_new):
        return G, "tanh"
    return None


@functools.lru_cache(maxsize=None)
def analyse(cell: GatedCell) -> Structure:
    """Classify a gated cell and extract the pieces of its mean field; a clear error if it is outside the class."""
    fields = tuple(f.symbol for f in cell.fields)
    x = cell.input
    explicit = cell.explicit_updates()
    prev = set(cell.states)
    carried = [s for s in cell.states
               if any(s in e.free_symbols for e in explicit.values())]
    if len(carried) > 1:
        raise MftrnnError(f"cell {cell.name!r}: several carried states {carried}; the mean field of a cell whose "
                          "joint law of states is needed is not supported")
    reads = {f.symbol: sp.sympify(f.reads) for f in cell.fields if f.reads is not None}
    read_states = {s for y in reads.values() for s in y.free_symbols & prev}
    if len(read_states) != 1:
        raise MftrnnError(f"cell {cell.name!r}: the fields must all read one state (times gate factors), "
                          f"found {sorted(map(str, read_states))}")
    (read_state,) = read_states
    alpha = {}
    for k, y in reads.items():
        a = sp.simplify(y / read_state)
        if a.free_symbols - set(fields):
            raise MftrnnError(f"cell {cell.name!r}: field {k} reads {y}, not (gate factor) x {read_state}")
        alpha[k] = a
    if carried:
        (s,) = carried
        s_new = cell.new_states[cell.states.index(s)]
        upd = sp.expand(explicit[s_new])
        A = sp.simplify(upd.diff(s))
        if A.free_symbols - set(fields):
            raise MftrnnError(f"cell {cell.name!r}: the update of {s} is not affine in it: {explicit[s_new]}")
        B = sp.simplify(upd - A * s)
    else:
        s = s_new = None
        A = sp.S.Zero
        B = None
    readouts = []
    implicit = dict(cell.updates)
    for new, expr in cell.updates:
        if new == s_new:
            continue
        if s_new is None:
            if set(sp.sympify(expr).free_symbols) - set(fields) - {x}:
                raise MftrnnError(f"cell {cell.name!r}: state {new} depends on other states")
            readouts.append((new, sp.sympify(expr), "memoryless"))
            continue
        r = _readout(implicit[new], s_new, fields)
        if r is None:
            raise MftrnnError(f"cell {cell.name!r}: state {new} = {implicit[new]} is not (gates) x g({s_new}) "
                              "with g = tanh or the identity")
        readouts.append((new, *r))
    if s is None:
        if len(readouts) != 1:
            raise MftrnnError(f"cell {cell.name!r}: a cell without a carried state must have one state")
        kind = "closed"
        B = readouts[0][1]
    elif read_state == s:
        kind = "closed"
    else:
        kind = "law"
        r = next((r for r in readouts if cell.previous_of(r[0]) == read_state), None)
        if r is None or r[2] != "tanh":
            raise MftrnnError(f"cell {cell.name!r}: fields read {read_state}, which is not a tanh readout")
    return Structure(cell, kind, s, s_new, A, B, tuple(readouts), read_state, alpha, fields, cell.output)


# --------------------------------------------------------------------------- field moments
def _field_moments(st: Structure, hp: dict, R: float, Q: float) -> dict:
    """``{field: (mu, q)}`` given the second moment ``Q`` of the state the fields read (fields in order, so that a
    field may read a gate factor of an earlier one); the input ``x`` is a field ``(0, R)``."""
    mom = {st.cell.input: (0.0, float(R))}
    for f in st.cell.fields:
        g = hp[f.gate]
        q = 0.0
        if f.reads is not None:
            a2 = _integral(st.alpha[f.symbol] ** 2, st)(mom) if st.alpha[f.symbol] != 1 else 1.0
            q += g["sigma_w"] ** 2 * a2 * Q
        if f.input:
            q += g["sigma_v"] ** 2 * R
        if f.bias:
            q += g["sigma_b"] ** 2
        mom[f.symbol] = (g["mu_b"] if f.bias else 0.0, q)
    return mom


@functools.lru_cache(maxsize=None)
def _integral_cached(expr, symbols):
    return FieldIntegral(expr, symbols)


def _integral(expr, st: Structure) -> FieldIntegral:
    return _integral_cached(sp.sympify(expr), (*st.fields, st.cell.input))


def _E(expr, st, mom) -> float:
    expr = sp.sympify(expr)
    if not expr.free_symbols:
        return float(expr)
    return _integral(expr, st)(mom)


def _poly_s(expr, s):
    """Coefficients (c0, c1, c2) of ``expr`` as a polynomial of degree <= 2 in ``s``."""
    p = sp.Poly(sp.expand(expr), s) if s is not None else None
    if p is None:
        return sp.sympify(expr), sp.S.Zero, sp.S.Zero
    if p.degree() > 2:
        raise MftrnnError(f"expectation of {expr} needs moments of {s} above the second")
    c = [p.coeff_monomial(s**k) for k in range(3)]
    return tuple(c)


def _E_state(expr, st, mom, M, Q) -> float:
    """E[expr] for an expression polynomial (degree <= 2) in the carried state with moments (M, Q)."""
    c0, c1, c2 = _poly_s(expr, st.carried)
    return _E(c0, st, mom) + (M * _E(c1, st, mom) if c1 != 0 else 0.0) + (Q * _E(c2, st, mom) if c2 != 0 else 0.0)


# --------------------------------------------------------------------------- closed cells
def _closed_step(st, hp, R, Q, M):
    """One step of the closed moment maps: (Q_t, M_t) of the carried state (or of the memoryless state)."""
    mom = _field_moments(st, hp, R, Q)
    if st.carried is None:
        return _E(st.B**2, st, mom), _E(st.B, st, mom), mom
    EA, EB = _E(st.A, st, mom), _E(st.B, st, mom)
    Qn = _E(st.A**2, st, mom) * Q + 2 * _E(st.A * st.B, st, mom) * M + _E(st.B**2, st, mom)
    return Qn, EA * M + EB, mom


def _closed_mean(st, hp, R, Q):
    """Stationary mean of the carried state at fixed field moments: M* = E[B] / (1 - E[A])."""
    mom = _field_moments(st, hp, R, Q)
    if st.carried is None:
        return 0.0, mom
    EA, EB = _E(st.A, st, mom), _E(st.B, st, mom)
    return EB / (1.0 - EA), mom


def _closed_map(st, hp, R, Q):
    """Variance map Q -> Q_t with the mean at its fixed point."""
    M, _ = _closed_mean(st, hp, R, Q)
    return _closed_step(st, hp, R, Q, M)[0]


def _closed_chi(st, hp, R, Q, M, mom):
    r"""chi = E[A^2] + sum_k sigma_w,K^2 rho_k E[(d_k A s + d_k B)^2] (memoryless: A = 0, B = the update)."""
    sw2 = {f.symbol: float(hp[f.gate]["sigma_w"]) ** 2 for f in st.cell.fields if f.reads is not None}
    rho = {}
    for f in st.cell.fields:
        if f.reads is None:
            continue
        a = st.alpha[f.symbol]
        r = _E(a**2, st, mom)
        for j in rho:
            da = sp.diff(a, j)
            if da != 0:
                r += sw2[j] * rho[j] * _E(da**2, st, mom) * Q
        rho[f.symbol] = r
    s = st.carried
    chi = _E(st.A**2, st, mom) if s is not None else 0.0
    for k in rho:
        term = sp.diff(st.A, k) * (s if s is not None else 0) + sp.diff(st.B, k)
        if term != 0:
            chi += sw2[k] * rho[k] * _E_state(term**2, st, mom, M, Q)
    return chi


def _richardson_slope(f, x, h):
    """Derivative by central differences at steps h and h/2, Richardson-extrapolated (error O(h^4))."""
    d1 = (f(x + h) - f(x - h)) / (2 * h)
    d2 = (f(x + h / 2) - f(x - h / 2)) / h
    return (4 * d2 - d1) / 3


# --------------------------------------------------------------------------- law cells (torch.nn.LSTM)
@dataclass
class _LawPieces:
    """Nodes of the fields in A (``a``), in the gate factor beta of B (``b``) and in gamma (``c``), B = beta gamma."""

    a_field: sp.Symbol
    b_field: sp.Symbol | None
    c_field: sp.Symbol | None
    beta: sp.Expr
    gamma: sp.Expr


@functools.lru_cache(maxsize=None)
def _law_pieces(st: Structure) -> _LawPieces:
    fa = st.A.free_symbols
    if len(fa) != 1:
        raise MftrnnError(f"cell {st.cell.name!r}: the forget factor {st.A} must depend on one field")
    (a_field,) = fa
    for c_field in sorted(st.B.free_symbols - fa, key=sp.default_sort_key):
        beta, gamma = st.B.as_independent(c_field, as_Add=False)
        if gamma.free_symbols == {c_field} and len(beta.free_symbols) <= 1:
            b = next(iter(beta.free_symbols), None)
            return _LawPieces(a_field, b, c_field, beta, gamma)
    if len(st.B.free_symbols) <= 1:
        return _LawPieces(a_field, next(iter(st.B.free_symbols), None), None, st.B, sp.S.One)
    raise MftrnnError(f"cell {st.cell.name!r}: B = {st.B} is not (gate factor) x (function of one other field)")


@functools.lru_cache(maxsize=None)
def _fn(sym, expr):
    return sp.lambdify(sym, expr, modules=NUMPY_MODULES)


def _nodes(expr_fields, sym, mom):
    mu, q = mom[sym]
    return gaussian_nodes(mu, q, min(np.pi / 2, strip_half_width(expr_fields)))


class _LawKernel:
    r"""Discretised kernels :math:`(P\psi)_j = \mathbb E[e^{is_jB'}\,a(e)\,\psi^{(k)}(As_j)]` on one grid, for the
    centred state :math:`c' = c - m_1`: :math:`c'_t = A c'_{t-1} + B'` with :math:`B' = B - (1-A)\,m_1`, so that
    :math:`\varphi'(s) = e^{-ism_1}\varphi(s)` does not oscillate when the mean is large against the spread
    (the factor :math:`e^{-is(1-A)m_1}` depends on the forget field only and joins its weights)."""

    def __init__(self, st: Structure, mom: dict, M: int, S: float = S_MAX, m1: float = 0.0):
        self.st, self.mom, self.m1 = st, mom, float(m1)
        self.pc = pc = _law_pieces(st)
        self.grid = chebyshev_grid(M, S)
        self.xa, self.wa = _nodes(st.A, pc.a_field, mom)
        self.Aval = np.asarray(_fn(pc.a_field, st.A)(self.xa), float) * np.ones_like(self.xa)
        self.joint = pc.b_field == pc.a_field
        if pc.b_field is None or self.joint:
            self.xb, self.wb = np.array([0.0]), np.array([1.0])
        else:
            self.xb, self.wb = _nodes(pc.beta, pc.b_field, mom)
        bsym = pc.b_field if pc.b_field is not None else pc.a_field
        bx = self.xa if self.joint else self.xb
        self.beta = np.asarray(_fn(bsym, pc.beta)(bx), float) * np.ones_like(bx)
        if pc.c_field is not None:
            self.xc, self.wc = _nodes(pc.gamma, pc.c_field, mom)
            self.gam = np.asarray(_fn(pc.c_field, pc.gamma)(self.xc), float) * np.ones_like(self.xc)
        else:
            self.xc, self.wc, self.gam = np.array([0.0]), np.array([1.0]), np.array([1.0])
        self._L = {}
        g = self.grid
        self.shift = (np.exp(-1j * self.m1 * np.outer(g.s, 1.0 - self.Aval)) if self.m1 != 0.0
                      else np.ones((g.M + 1, self.Aval.size)))

    def L(self, deriv):
        """Interpolation (of the ``deriv``-th derivative) at the points A s_j: array (M+1, n_A, M+1)."""
        if deriv not in self._L:
            g = self.grid
            self._L[deriv] = g.interp(np.outer(g.s, self.Aval), deriv).reshape(g.M + 1, self.Aval.size, g.M + 1)
        return self._L[deriv]

    def _values(self, expr, sym, x):
        if sym is None:
            return np.full(x.shape, float(expr))
        return np.asarray(_fn(sym, expr)(x), float) * np.ones_like(x)

    def psi(self, H):
        r"""psi_H(s_j beta_n) = E_gamma[exp(i s_j beta_n gamma) H]: array (M+1, n_beta).

        For a bounded gamma (|gamma| <= 1.5, e.g. tanh) psi_H is entire of exponential type <= 1.5 in t, so it is
        computed at 65 Chebyshev points of [0, t_max] and interpolated (error below 1e-14 for t_max <= 40;
        psi(-t) = conj psi(t)); otherwise directly at every (s_j, beta_n).
        """
        h = self._values(H, self.pc.c_field, self.xc)
        wh = self.wc * h
        t = np.multiply.outer(self.grid.s, self.beta)  # (M+1, nb)
        t_max = float(np.abs(t).max())
        if np.abs(self.gam).max() > 1.5 or t_max > 40 or t_max == 0:
            ph = np.multiply.outer(t, self.gam)
            return np.cos(ph) @ wh + 1j * (np.sin(ph) @ wh)  # numpy's complex exp is ~20x slower than cos, sin
        g = chebyshev_grid(64, t_max)
        ph = np.multiply.outer(g.s, self.gam)
        vals = np.cos(ph) @ wh + 1j * (np.sin(ph) @ wh)
        out = (g.interp(np.abs(t)) @ vals).reshape(t.shape)
        return np.where(t < 0, np.conj(out), out)

    def matrix(self, expr, deriv):
        r"""Kernel of :math:`\psi \mapsto \mathbb E[e^{isB}\,\mathrm{expr}\,\psi^{(k)}(As)]` for ``expr`` a sum of
        products of functions of the a-, b- and c-fields."""
        pc = self.pc
        P = np.zeros((self.grid.M + 1,) * 2, complex)
        for term in sp.Add.make_args(sp.expand(sp.sympify(expr))):
            ca, rest = term.as_independent(*[f for f in (pc.b_field, pc.c_field) if f is not None],
                                           as_Add=False) if not self.joint else (sp.S.One, term)
            if self.joint:
                cb, ch = rest.as_independent(pc.c_field, as_Add=False) if pc.c_field is not None else (rest, sp.S.One)
                va = self._values(cb, pc.a_field, self.xa)
                psi = self.psi(ch)  # (M+1, na): beta on the a-nodes
                P += np.einsum("jnm,n,jn->jm", self.L(deriv), self.wa * va, psi * self.shift)
            else:
                cb, ch = (rest.as_independent(pc.c_field, as_Add=False) if pc.c_field is not None
                          else (rest, sp.S.One))
                va = self._values(ca, pc.a_field, self.xa)
                vb = self._values(cb, pc.b_field, self.xb)
                left = np.einsum("jnm,jn->jm", self.L(deriv), (self.wa * va)[None, :] * self.shift)
                right = self.psi(ch) @ (self.wb * vb)
                P += left * right[:, None]
        return P


@dataclass
class StationaryLaw:
    """Characteristic function of the stationary carried state on a Chebyshev grid, with its moments."""

    grid: object
    phi: np.ndarray
    m1: float
    m2: float
    error: float          # change of E[tanh^2 c] from the previous grid (bounds the error)

    def expect_tanh2(self) -> float:
        r""":math:`\mathbb E_\pi[\tanh^2 c] = 1 - \frac1\pi\int_0^S \widehat{\operatorname{sech}^2}(s)\,
        \mathrm{Re}[e^{ism_1}\varphi'(s)]\,ds` (``phi`` is the centred :math:`\varphi'`)."""
        a, b = parseval_weights(self.grid, sech2_transform, self.m1)
        return float(1.0 - (a @ self.phi.real + b @ self.phi.imag) / np.pi)

    def density(self, x) -> np.ndarray:
        r"""Density of :math:`\pi` at ``x`` by Fourier inversion, :math:`p(x) = \frac1\pi\int_0^S
        \mathrm{Re}[\varphi(s)e^{-isx}]\,ds` (resolution :math:`\sim\pi/S`; exact where :math:`\varphi(S)`
        is negligible)."""
        g = self.grid
        x = np.asarray(x, float) - self.m1
        kern = np.exp(-1j * np.multiply.outer(x, g.s))
        return (kern * self.phi * g.cc).real.sum(-1) / np.pi


@functools.lru_cache(maxsize=256)
def _legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


def parseval_weights(grid, transform, m1: float):
    r"""Weights ``(a, b)`` with :math:`\int_0^S \hat f(s)\,\mathrm{Re}[e^{ism_1}\psi(s)]\,ds = a\cdot\mathrm{Re}\,\psi
    + b\cdot\mathrm{Im}\,\psi` for :math:`\psi` given at the grid's points: Clenshaw-Curtis on the points when
    :math:`m_1 S` is negligible, else Gauss-Legendre with enough nodes for the oscillation :math:`e^{ism_1}` and the
    interpolant of :math:`\psi`."""
    if abs(m1) * grid.S < 1e-12:
        return grid.cc * transform(grid.s), np.zeros(grid.M + 1)
    n = int(min(20000, max(2 * (grid.M + 1), 4 * abs(m1) * grid.S / np.pi + 64)))
    x, w = _legendre(n)
    s = grid.S * (x + 1) / 2
    w = w * grid.S / 2 * transform(s)
    Lq = grid.interp(s)
    return (w * np.cos(m1 * s)) @ Lq, -(w * np.sin(m1 * s)) @ Lq


def cell_state_law(fp: "GatedFixedPoint") -> StationaryLaw:
    """The stationary law of the carried state at a fixed point (scalar hyperparameters), from the field moments
    the fixed point reports: its characteristic function, :meth:`StationaryLaw.density`, exact moments."""
    from ..cells.registry import get_cell
    st = analyse(get_cell(fp.cell))
    if np.ndim(fp.Q_star) != 0:
        raise MftrnnError("cell_state_law needs a fixed point at scalar hyperparameters")
    mom = {st.cell.input: (0.0, float(fp.params["R"]))}
    for f in st.cell.fields:
        mom[f.symbol] = (float(fp.params[f"mu_b_{f.gate}"]) if f.bias else 0.0, float(fp.q_stars[str(f.symbol)]))
    return stationary_law(st, mom)[0]


def _exact_moments(st, mom):
    EA, EB = _E(st.A, st, mom), _E(st.B, st, mom)
    m1 = EB / (1 - EA)
    m2 = (_E(st.B**2, st, mom) + 2 * _E(st.A * st.B, st, mom) * m1) / (1 - _E(st.A**2, st, mom))
    return m1, m2


def _interval(m1, m2) -> float:
    r"""Right end S of the s-interval: :math:`S_{max}` = 24, or :math:`14/\sigma_c` for a wide law (for a nearly
    Gaussian :math:`c`, :math:`|\varphi(s)|\approx e^{-s^2\sigma_c^2/2}` is negligible there; the solve checks
    that :math:`\varphi` has decayed, and falls back to :math:`S_{max}` where it has not)."""
    sd = float(np.sqrt(max(m2 - m1 * m1, 0.0)))
    return S_MAX if sd <= 14.0 / S_MAX else 14.0 / sd


def _decayed(law) -> bool:
    """|phi| below 1e-11 over the last tenth of the interval (truncating at S then costs less than the 1e-10
    tolerance: the transforms are at most 2 and the tail beyond S decays at least as fast)."""
    g = law.grid
    return bool(np.max(np.abs(law.phi[g.s >= 0.9 * g.S])) < 1e-11)


def stationary_law(st: Structure, mom: dict, grid: int | None = None) -> tuple[StationaryLaw, _LawKernel]:
    r"""The stationary law of the carried state for given field moments.

    Grids of increasing size until :math:`\mathbb E_\pi[\tanh^2 c]` changes by at most 1e-10 between two of them
    (the spectral convergence makes the change an upper bound of the error of the coarser one; rounding limits it
    to ~1e-11 for the widest laws). The variance :math:`-\varphi'{}''(0)` of the centred law, on the coarser of the
    two agreeing grids, is checked against the exact one as a guard against gross errors (to 1e-4 relative:
    differentiating the interpolant twice at the end point amplifies rounding by ~M^4/S^2). The interval is
    :math:`[0, S]` with :math:`S = \min(24, 14/\sigma_c)` (:func:`_interval`): a wide law (large forget-gate bias)
    has a narrow :math:`\varphi`. :class:`~mftrnn.ConvergenceError` if no grid converges.
    ``grid``: one grid of that size, unchecked (for scans that only need signs).
    """
    m1, m2 = _exact_moments(st, mom)
    var = max(m2 - m1 * m1, 0.0)
    S = _interval(m1, m2)
    if grid is not None:
        K = _LawKernel(st, mom, grid, S, m1)
        return StationaryLaw(K.grid, solve_characteristic(K.matrix(sp.S.One, 0)), m1, m2, np.nan), K
    for S_try in ((S, S_MAX) if S < S_MAX else (S_MAX,)):
        prev = m2_ok = None
        for M in _M_GRIDS:
            K = _LawKernel(st, mom, M, S_try, m1)
            phi = solve_characteristic(K.matrix(sp.S.One, 0))
            law = StationaryLaw(K.grid, phi, m1, m2, np.inf)
            t2 = law.expect_tanh2()
            if prev is not None and abs(t2 - prev) <= _LAW_TOL:
                # the check of m2 on the coarser of the two agreeing grids (less rounding amplification)
                if not m2_ok or (S_try < S_MAX and not _decayed(law)):
                    break
                law.error = abs(t2 - prev)
                return law, K
            prev = t2
            m2_ok = abs(-float((K.grid.D2 @ phi)[0].real) - var) <= 1e-4 * var + 1e-8  # centred: the variance
    sd = float(np.sqrt(max(m2 - m1 * m1, 0.0)))
    why = (f"its mean {m1:.3g} is large against its spread {sd:.3g} (the characteristic function oscillates too fast "
           f"for the grid)" if abs(m1) > max(3.0 * sd, 5.0) else "it is too wide for the grid (reduce the forget-gate "
           "bias)")
    raise ConvergenceError(f"cell {st.cell.name!r}: the stationary law of {st.carried} is not resolved on "
                           f"{M + 1} points: {why}")


def _law_Q(st, hp, R, Q, gaussian=False, grid=None):
    """Second moment of what the fields read (the tanh readout), and the pieces."""
    mom = _field_moments(st, hp, R, Q)
    new, G, _ = next(r for r in st.readouts if st.cell.previous_of(r[0]) == st.read_state)
    EG2 = _E(G**2, st, mom)
    if gaussian:
        m1, m2 = _exact_moments(st, mom)
        v = max(m2 - m1**2, 0.0)
        xs, ws = gaussian_nodes(m1, v, np.pi / 2)
        return EG2 * float(ws @ np.tanh(xs) ** 2), None, None, mom
    law, K = stationary_law(st, mom, grid)
    return EG2 * law.expect_tanh2(), law, K, mom


def law_perturbation_map(st, hp: dict, law, K, mom: dict) -> np.ndarray:
    r"""The linear map of an infinitesimal perturbation's second moments for a law cell (``nn.LSTM``), on
    :math:`z = (\mathrm{Re}\,\hat w, \mathrm{Im}\,\hat w, \overline{\delta h^2})` with
    :math:`\hat w(s) = \mathbb E[\delta c^2 e^{is(c - m_1)}]` on the law's grid (module docstring): a matrix of size
    :math:`2(M+1)+1`. Its leading eigenvalue is :math:`\chi`; applied :math:`T` times to :math:`(\varphi, 1)` it gives
    the mean squared singular value of the :math:`T`-step Jacobian (:mod:`mftrnn.theory.gated_jacobian`)."""
    g = K.grid
    n = g.M + 1
    sw2 = {f.symbol: float(hp[f.gate]["sigma_w"]) ** 2 for f in st.cell.fields if f.reads is not None}
    Pw = K.matrix(st.A**2, 0)
    r = np.zeros(n, complex)
    for k, w2 in sw2.items():
        if w2 == 0:
            continue
        dA, dB = sp.diff(st.A, k), sp.diff(st.B, k)
        m1, phi = law.m1, law.phi
        # c = c' + m1: E[c^2 e^{iuc}] = e^{ium1}(-phi'' - 2i m1 phi' + m1^2 phi), E[c e^{iuc}] = e^{ium1}(-i phi' + m1 phi)
        # in the centred phi; the phases e^{ium1} are in the kernels (module docstring)
        if dA != 0:
            r += w2 * (-(K.matrix(dA**2, 2) @ phi) - 2j * m1 * (K.matrix(dA**2, 1) @ phi)
                       + m1**2 * (K.matrix(dA**2, 0) @ phi))
            if dB != 0:
                r += w2 * 2 * (-1j * (K.matrix(dA * dB, 1) @ phi) + m1 * (K.matrix(dA * dB, 0) @ phi))
        if dB != 0:
            r += w2 * (K.matrix(dB**2, 0) @ phi)
    new, G, _ = next(rr for rr in st.readouts if st.cell.previous_of(rr[0]) == st.read_state)
    EG2 = _E(G**2, st, mom)
    k_re, k_im = (v / np.pi for v in parseval_weights(g, sech4_transform, law.m1))
    T2 = law.expect_tanh2()
    rhoG = sum(w2 * _E(sp.diff(G, k) ** 2, st, mom) * T2 for k, w2 in sw2.items() if G.has(k))
    # unknowns z = (Re w, Im w, D_h); D_y = D_h for every field (all read h)
    Z = np.zeros((2 * n + 1, 2 * n + 1))
    Z[:n, :n], Z[:n, n:2 * n] = Pw.real, -Pw.imag
    Z[n:2 * n, :n], Z[n:2 * n, n:2 * n] = Pw.imag, Pw.real
    Z[:n, -1], Z[n:2 * n, -1] = r.real, r.imag
    Z[-1, :] = EG2 * (k_re @ Z[:n, :] + k_im @ Z[n:2 * n, :])
    Z[-1, -1] += rhoG
    return Z


def _law_chi(st, hp, law, K, mom) -> float:
    """Leading eigenvalue of the linearised map of (w-hat, D_h): see the module docstring."""
    return float(np.max(np.abs(np.linalg.eigvals(law_perturbation_map(st, hp, law, K, mom)))))


def _law_chi_checked(st, hp, law, K, mom) -> float:
    """chi on the law's grid and on the next coarser one of the same interval (the law agreed on both); the two
    must agree to 1e-9 (absolute; chi is O(1)), else :class:`~mftrnn.ConvergenceError` rather than a number of
    unknown accuracy. The finer grid's value is returned."""
    chi = _law_chi(st, hp, law, K, mom)
    coarser = [M for M in _M_GRIDS if M < K.grid.M]
    M2 = coarser[-1] if coarser else _M_GRIDS[1]
    K2 = _LawKernel(st, mom, M2, K.grid.S, law.m1)
    law2 = StationaryLaw(K2.grid, solve_characteristic(K2.matrix(sp.S.One, 0)), law.m1, law.m2, law.error)
    chi2 = _law_chi(st, hp, law2, K2, mom)
    if abs(chi2 - chi) > 1e-9:
        raise ConvergenceError(f"cell {st.cell.name!r}: chi is not resolved by the grid ({chi:.12g} on {K.grid.M + 1} "
                               f"points, {chi2:.12g} on {M2 + 1}); reduce the forget-gate bias")
    return chi if M2 < K.grid.M else chi2


def _law_chi_q(st, hp, R, Q, law, K, mom) -> float:
    r"""Rate of approach of :math:`Q` to :math:`Q^*` for a law cell: the leading eigenvalue, among the modes that
    :math:`Q` sees, of the linearised mean-field map of (the law of the carried state, :math:`Q`).

    The map is :math:`\varphi_t = P(Q_{t-1})\,\varphi_{t-1}` (the perpetuity's characteristic function, the kernel
    depending on :math:`Q` through the field variances) and :math:`Q_t = \mathbb E[G^2](Q_{t-1})\,
    \mathbb E_{\varphi_t}[\tanh^2 c]`. Linearised: :math:`\delta\varphi_t = P\,\delta\varphi_{t-1} + u\,\delta Q_{t-1}`
    with :math:`u = \partial_Q P\,\varphi^*` (central differences with Richardson extrapolation),
    :math:`\delta Q_t = \mathbb E[G^2]\,\ell(\delta\varphi_t) + \mathbb E[\tanh^2 c]\,\partial_Q\mathbb E[G^2]\,
    \delta Q_{t-1}` with :math:`\ell` the Parseval functional, on (real part, imaginary part, :math:`\delta Q`).

    Which perturbations: those of a law with finite moments, whose :math:`\delta\varphi` is smooth: the real part
    even and the imaginary part odd in :math:`s`, so :math:`\delta\varphi(0) = 0` (normalisation) and the first
    three derivatives at 0 of the wrong parity vanish (:math:`\mathrm{Re}\,\delta\varphi^{(1)}`,
    :math:`\mathrm{Im}\,\delta\varphi^{(2)}`, :math:`\mathrm{Re}\,\delta\varphi^{(3)}`). :math:`P` and :math:`u`
    preserve these conditions; without them the discretised map has the eigenvalues :math:`\mathbb E[A^k]` of
    non-smooth perturbations (a kink at :math:`s = 0`: a law with an infinite absolute moment), excited by
    rounding and, above :math:`\chi_q`, fatal to it. The map is restricted (orthogonally projected) onto that
    subspace. The eigenvalues of :math:`P` there are :math:`\mathbb E[A^k]`; in the real form each appears twice
    and the rank-one coupling to :math:`Q` moves one copy, the other stays exactly invisible in :math:`Q` (as do odd
    perturbations of a symmetric law). Modes are counted when their residue in the response of :math:`Q` to a
    perturbation of :math:`Q` exceeds :math:`10^{-10}` of the largest; invisible ones measure below
    :math:`10^{-13}` of it, the weakest visible leading mode seen (``sigma_w = 0.1, mu_b_f = 6``) :math:`4\cdot
    10^{-4}`."""
    import scipy.linalg as sla

    new, G, _ = next(rr for rr in st.readouts if st.cell.previous_of(rr[0]) == st.read_state)
    if not Q > 0:
        return _law_chi_q_at_zero(st, hp, R, law)
    g = K.grid
    n = g.M + 1
    h = 1e-3 * Q

    def P_phi(Qx):
        Kx = _LawKernel(st, _field_moments(st, hp, R, Qx), g.M, g.S, law.m1)
        return Kx.matrix(sp.S.One, 0) @ law.phi

    def EG2(Qx):
        return _E(G**2, st, _field_moments(st, hp, R, Qx))

    def slope(f):
        d = lambda hh: (f(Q + hh) - f(Q - hh)) / (2 * hh)
        return (4 * d(h / 2) - d(h)) / 3

    T2 = law.expect_tanh2()
    if 1.0 - T2 <= 1e-12:
        # tanh^2 c = 1 over the whole law (|c| >> 1): Q does not see the law, Q_t = E[G^2](Q_{t-1})
        return float(abs(T2 * slope(EG2)))
    u, dE = slope(P_phi), slope(EG2)
    P = K.matrix(sp.S.One, 0)
    a, b = parseval_weights(g, sech2_transform, law.m1)
    Z = np.zeros((2 * n + 1, 2 * n + 1))
    Z[:n, :n], Z[:n, n:2 * n] = P.real, -P.imag
    Z[n:2 * n, :n], Z[n:2 * n, n:2 * n] = P.imag, P.real
    Z[:n, -1], Z[n:2 * n, -1] = u.real, u.imag
    lin = -np.concatenate([a, b]) / np.pi
    Z[-1, :] = EG2(Q) * (lin @ Z[:2 * n, :])
    Z[-1, -1] += T2 * dE
    zero, e0 = np.zeros(n), np.eye(n)[0]
    D3 = g.D2 @ g.D
    C = np.array([np.concatenate(r) for r in (
        (e0, zero, [0.0]), (zero, e0, [0.0]),           # delta phi(0) = 0
        (g.D[0], zero, [0.0]), (zero, g.D2[0], [0.0]),  # Re f'(0) = 0, Im f''(0) = 0
        (D3[0], zero, [0.0]))])                          # Re f'''(0) = 0
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    basis = sla.null_space(C)
    w, vl, vr = sla.eig(basis.T @ Z @ basis, left=True, right=True)
    eQ = basis[-1, :]
    residue = np.abs((eQ @ vr) * (eQ @ vl.conj()) / np.einsum("ij,ij->j", vl.conj(), vr))
    seen = residue > 1e-10  # the residues sum to 1 (e_Q' e_Q): an absolute scale
    return float(np.max(np.abs(w[seen])))


def _law_chi_q_at_zero(st, hp, R, law) -> float:
    r""":math:`\chi_q` at :math:`Q^* = 0` (no input or bias noise reaches the cell state: the law is a point mass at
    0). For small :math:`Q`, :math:`\tanh^2 c = c^2 + O(c^4)`, so :math:`Q_t = \mathbb E[G^2]\,(\mathbb E[A^2]\,
    \overline{c^2}_{t-1} + \partial_Q\mathbb E[B^2]\,Q_{t-1})` and :math:`\overline{c^2}_t` obeys the bracket: a
    rank-one 2x2 map whose non-zero eigenvalue is :math:`\mathbb E[A^2] + \mathbb E[G^2]\,\partial_Q\mathbb E[B^2]`
    (the slope one-sided, Richardson-extrapolated). Refused (NaN, hence an error upstream) when the law at 0 is not
    a point mass at 0."""
    if law.m2 > 0 or law.m1 != 0:
        return np.nan
    new, G, _ = next(rr for rr in st.readouts if st.cell.previous_of(rr[0]) == st.read_state)
    mom0 = _field_moments(st, hp, R, 0.0)
    EB2 = lambda Qx: _E(st.B**2, st, _field_moments(st, hp, R, Qx))
    h = 1e-6
    slope = 2 * EB2(h / 2) / (h / 2) - EB2(h) / h  # E[B^2](0) = 0; Richardson on the one-sided difference
    return float(_E(st.A**2, st, mom0) + _E(G**2, st, mom0) * slope)


def _law_chi_q_checked(st, hp, R, Q, law, K, mom) -> float:
    """:func:`_law_chi_q` on the law's grid and on the next coarser one; they must agree to 1e-5 (absolute;
    measured differences are 1e-10 to 2e-6 over the book's phase diagram, the coarser grid being the less accurate),
    else :class:`~mftrnn.ConvergenceError`. The finer grid's value is returned; near chi_q = 0.99 an error of 1e-5
    is 0.1% of the timescale xi_q."""
    chi_q = _law_chi_q(st, hp, R, Q, law, K, mom)
    if Q == 0:
        if np.isfinite(chi_q):
            return chi_q  # the closed form of _law_chi_q_at_zero: no grid involved
        raise ConvergenceError(
            f"cell {st.cell.name!r}: Q* = 0 to the root finder's resolution (the variance map at 0 is below 1e-14), "
            f"but the cell state is not exactly 0 (mean {law.m1:.3g}, second moment {law.m2:.3g}): the input and "
            f"bias noise reaching the cell (sigma_v^2 R + sigma_b^2) is too small to resolve chi_q; set it to 0 "
            f"exactly or make it larger")
    coarser = [M for M in _M_GRIDS if M < K.grid.M]
    M2 = coarser[-1] if coarser else _M_GRIDS[1]
    K2 = _LawKernel(st, mom, M2, K.grid.S, law.m1)
    law2 = StationaryLaw(K2.grid, solve_characteristic(K2.matrix(sp.S.One, 0)), law.m1, law.m2, law.error)
    chi_q2 = _law_chi_q(st, hp, R, Q, law2, K2, mom)
    if not abs(chi_q2 - chi_q) <= 1e-5:
        raise ConvergenceError(f"cell {st.cell.name!r}: chi_q is not resolved by the grid ({chi_q:.12g} on "
                               f"{K.grid.M + 1} points, {chi_q2:.12g} on {M2 + 1})")
    return chi_q if M2 < K.grid.M else chi_q2


# --------------------------------------------------------------------------- fixed points
def _least_root(F, lo, hi, what, n_scan=24, F_scan=None, start=None):
    """Least stable root of g(Q) = F(Q) - Q on [lo, hi] (g(hi) < 0), found by a scan (of ``F_scan``, a cheaper
    version of F, if given) and Brent's method on F; returns (root, multistable flag).

    ``lo`` itself is returned when it is a fixed point (g(lo) = 0 to rounding: no input and no bias noise) that
    is stable (g < 0 just above it). ``start``: a root of a nearby map (no scan; bracket grown around it).
    """
    tiny = 1e-14 * max(abs(hi), 1.0)
    if start is not None:
        return _root_near(F, lo, hi, start), False
    g_lo = F(lo) - lo
    floor = lo  # the widening below never goes under it (above an unstable fixed point at lo)
    if g_lo <= tiny:
        d = 1e-9 * (hi - lo)
        if F(lo + d) - (lo + d) <= 0:
            if g_lo <= 0:
                return lo, False
            # a tiny but positive F(lo) - lo (inputs and biases of variance ~1e-30, say): the root lies in
            # (lo, lo + d]; solve for it to relative accuracy instead of calling lo a root, which would break
            # the bound M*^2 <= Q*
            return brentq(lambda x: F(x) - x, lo, lo + d, xtol=1e-300, rtol=1e-15, maxiter=400), False
        floor = lo + d
    xs = np.concatenate([[lo], lo + (hi - lo) * np.geomspace(1e-6, 1, n_scan)])
    gs = np.array([(F_scan or F)(x) - x for x in xs[1:]])
    gs = np.concatenate([[max(g_lo, tiny)], gs])
    down = np.nonzero((gs[:-1] > 0) & (gs[1:] <= 0))[0]
    if down.size == 0:
        raise ConvergenceError(f"{what}: no fixed point in [{lo}, {hi}]")
    j = down[0]
    a, b = xs[j], xs[j + 1]
    # the cheap signs may misplace a root that sits near a scan point: widen until F agrees
    while a > floor and F(a) - a <= 0:
        a = max(floor, a - 2 * (b - a))
    while b < hi and F(b) - b > 0:
        b = min(hi, b + 2 * (b - a))
    ga, gb = F(a) - a, F(b) - b
    if ga <= 0:
        return a, down.size > 1
    if gb >= 0:
        return b, down.size > 1
    root = brentq(lambda x: F(x) - x, a, b, xtol=1e-16, rtol=1e-15, maxiter=200)
    return root, down.size > 1


def _root_near(F, lo, hi, x0):
    """Root of F(Q) - Q bracketed by growing an interval around ``x0`` (returns ``lo`` for a stable zero root)."""
    if x0 <= lo:
        return lo
    d = 1e-6 * max(x0, 1e-12)
    a, b = max(lo, x0 - d), min(hi, x0 + d)
    for _ in range(80):
        ga, gb = F(a) - a, F(b) - b
        if ga > 0 and gb < 0:
            return brentq(lambda x: F(x) - x, a, b, xtol=1e-16, rtol=1e-15, maxiter=200)
        if ga <= 0 and a == lo:
            return lo
        d *= 4
        a, b = (max(lo, x0 - d), b) if ga <= 0 else (a, b)
        a, b = (a, min(hi, x0 + d)) if gb >= 0 else (a, b)
    raise ConvergenceError("variance map: could not bracket the fixed point")


#: The gated cells' fixed point is the one :class:`~mftrnn.FixedPoint` of every cell (kept as a name for readers of
#: earlier versions): ``Qc_star``, ``M_star``, ``law_error``, ``approximation`` and ``q_stars`` (every field) filled.
GatedFixedPoint = FixedPoint


def _timescale(chi):
    chi = float(chi)
    if chi >= 1:
        return np.inf
    return 0.0 if chi <= 0 else -1.0 / np.log(chi)


def _point(st: Structure, hp: dict, R: float, closure: str, with_chi_q: bool = True) -> dict:
    """All quantities at one point of scalar hyperparameters."""
    cell = st.cell
    out = {}
    if st.kind == "closed":
        F = lambda Q: _closed_map(st, hp, R, Q)
        hi = max(2.0 * F(0.0), 1.0)
        for _ in range(60):
            if F(hi) < hi:
                break
            hi *= 4.0
        else:
            raise ConvergenceError(f"cell {cell.name!r}: the variance map has no finite fixed point")
        Q, multi = _least_root(F, 0.0, hi, f"cell {cell.name!r}")
        M, mom = _closed_mean(st, hp, R, Q)
        out["chi"] = _closed_chi(st, hp, R, Q, M, mom)
        h = 1e-4 * max(Q, 1e-4)
        out["chi_q"] = _richardson_slope(F, Q, h) if Q > h else (F(2 * h) - F(h)) / h
        out["Q_read"] = Q
        out["M"] = M
        out["mom"] = mom
        out["multistable"] = multi
        # second moments of the states
        Qs = {}
        if st.carried is not None:
            Qs[st.carried_new] = Q
            for new, G, g in st.readouts:
                EG2 = _E(G**2, st, mom)
                if g == "identity":
                    Qs[new] = EG2 * Q
                elif closure == "gaussian":
                    xs, ws = gaussian_nodes(M, max(Q - M * M, 0.0), np.pi / 2)
                    Qs[new] = EG2 * float(ws @ np.tanh(xs) ** 2)
                else:
                    law, _ = stationary_law(st, mom)
                    Qs[new] = EG2 * law.expect_tanh2()
                    out["law_error"] = law.error
        else:
            Qs[st.readouts[0][0]] = Q
        out["Qs"] = Qs
    else:
        gaussian = closure == "gaussian"
        if gaussian:
            F = lambda Q: _law_Q(st, hp, R, Q, True)[0]
            Q, multi = _least_root(F, 0.0, 1.0, f"cell {cell.name!r}", n_scan=12)
        else:
            # scan on the smallest grid; solve on the grid that resolves the law at the scan's root (one solve per
            # evaluation); then check that grid's convergence at the root and solve again on a finer one if not
            F_scan = lambda Q: _law_Q(st, hp, R, Q, grid=_M_GRIDS[0])[0]
            Q, multi = _least_root(F_scan, 0.0, 1.0, f"cell {cell.name!r}", n_scan=12)
            for _ in range(len(_M_GRIDS)):
                M = stationary_law(st, _field_moments(st, hp, R, Q))[0].grid.M
                F = lambda Q, M=M: _law_Q(st, hp, R, Q, grid=M)[0]
                Q, _ = _least_root(F, 0.0, 1.0, f"cell {cell.name!r}", n_scan=12, start=Q)
                if stationary_law(st, _field_moments(st, hp, R, Q))[0].grid.M <= M:
                    break
        val, law, K, mom = _law_Q(st, hp, R, Q, gaussian)
        m1, m2 = _exact_moments(st, mom)
        if gaussian:
            out["chi"] = np.nan
        else:
            out["chi"] = _law_chi_checked(st, hp, law, K, mom)
            out["law_error"] = law.error
        out["Qs"] = {st.carried_new: m2, next(r[0] for r in st.readouts
                                              if cell.previous_of(r[0]) == st.read_state): Q}
        out["M"] = m1
        out["mom"] = mom
        out["multistable"] = multi
        out["chi_q"] = None if gaussian or not with_chi_q else _law_chi_q_checked(st, hp, R, Q, law, K, mom)
    return out


def gated_fixed_point(cell, *, closure: str = "exact", correlations: bool = False,
                      correlation_closure: str | None = None, **hyperparameters) -> GatedFixedPoint:
    r"""Untied mean-field fixed point of a gated cell: :math:`Q^*` (output), :math:`Q_c^*` (carried state),
    every field's variance, :math:`\chi`, :math:`\xi`, and for closed cells :math:`\chi_q`, :math:`\xi_q`.

    Hyperparameters: per gate ``sigma_w_K, sigma_v_K, sigma_b_K, mu_b_K`` (``K`` a letter of the cell's gates),
    shorthand ``sigma_w, sigma_v, sigma_b, mu_b`` for all gates, and ``R``; scalars or broadcastable arrays.
    ``closure="gaussian"`` replaces the law of the LSTM cell state by a Gaussian of the same mean and variance (an
    approximation, reported as such; no :math:`\chi`). Which fixed point: the least root of the variance map
    (reached from a zero state); ``multistable`` flags points where the scan saw more than one.

    Arrays of more than one point go to the batched engine (:mod:`mftrnn.theory.gated_grid`; same numbers to
    ~1e-9); for law cells (``nn.LSTM``) it does not compute :math:`\chi_q`, so ``chi_q`` and ``xi_q`` are ``None``
    there: call with scalar hyperparameters for them.

    ``correlations=True`` adds, for two copies with the same weights and independent inputs
    (:mod:`mftrnn.theory.gated_correlation`): ``C_star`` (covariance of the output state), ``c_star = C*/Q*``,
    ``Cc_star`` (of the carried state, where it differs from the output), ``chi_c`` and ``xi_c``. Exact (untied
    mean field) for closed cells, where a tanh readout's output covariance (the LSTM whose gates read ``c``) is not
    given (``None``). Law cells (``nn.LSTM``) need the joint law of the two copies' cell states, which is not
    computed: they are refused unless ``correlation_closure="gaussian"`` asks for the labelled closure of
    :func:`mftrnn.theory.gated_correlation.law_correlation` (scalar hyperparameters, ``closure="exact"``; measured
    error of ``C_star`` 0.4-2%). Closed cells with arrays loop over the points (a few seconds per point for ``gru``).
    """
    from ..cells.registry import get_cell  # the one registry
    cell = get_cell(cell)
    if not isinstance(cell, GatedCell):
        raise MftrnnError(f"{cell.name!r} is not a gated cell; use mftrnn.fixed_point")
    if closure not in ("exact", "gaussian"):
        raise DomainError(f"closure must be 'exact' or 'gaussian', got {closure!r}")
    st = analyse(cell)
    _check_correlation_closure(st, correlations, correlation_closure)
    hp, R = gate_hyperparameters(cell, hyperparameters)
    if np.any(R < 0):
        raise DomainError("R must be non-negative")
    shape = R.shape
    batched = False
    if R.size > 1 and closure == "exact":
        # arrays: the batched engine (law cells solved together; other cells the loop below, in gated_grid)
        from .gated_grid import _layout, grid_points
        batched = st.kind == "law" and _layout(st) is not None
        pts = grid_points(st, hp, R, closure)
    else:
        pts = []
        for idx in np.ndindex(shape):
            h = {g: {k: float(v[idx]) for k, v in d.items()} for g, d in hp.items()}
            pts.append(_point(st, h, float(R[idx]), closure))

    def arr(fn):
        vals = [fn(p) for p in pts]
        return np.array(vals, float).reshape(shape) if shape else float(vals[0])

    out_new = st.output
    Q_star = arr(lambda p: p["Qs"][out_new])
    has_c = st.carried_new is not None and st.carried_new != out_new
    no_chi = st.kind == "law" and closure == "gaussian"  # the closure gives no chi: None, not NaN
    chi = None if no_chi else arr(lambda p: p["chi"])
    res = FixedPoint(
        cell.name, _flat_params(cell, hp, R), chi=chi, xi=None if no_chi else _vec_timescale(chi), Q_star=Q_star,
        chi_q=None, xi_q=None,
        Qc_star=arr(lambda p: p["Qs"][st.carried_new]) if has_c else None,
        M_star=arr(lambda p: p["M"]) if st.carried is not None else None,
        q_star=arr(lambda p: p["mom"][st.fields[0]][1]),
        q_stars={str(f): arr(lambda p, f=f: p["mom"][f][1]) for f in st.fields},
        multistable=np.array([p["multistable"] for p in pts]).reshape(shape) if shape else pts[0]["multistable"],
        approximation=("exact untied mean field" if closure == "exact"
                       else "Gaussian closure of the cell state (approximation)"),
        law_error=arr(lambda p: p.get("law_error", 0.0)),
    )
    if not no_chi and not batched:  # the batched engine has no chi_q for law cells: None, not NaN
        res.chi_q = arr(lambda p: p["chi_q"])
        res.xi_q = _vec_timescale(np.abs(res.chi_q))
    if correlations:
        _add_correlations(res, st, hp, R, pts, closure)
    return res


def _check_correlation_closure(st, correlations, correlation_closure):
    if correlation_closure not in (None, "gaussian"):
        raise DomainError(f"correlation_closure must be None or 'gaussian', got {correlation_closure!r}")
    if correlations and st.kind == "law" and correlation_closure is None:
        raise MftrnnError(f"correlations=True for {st.cell.name!r}: C* needs the joint law of the two copies' cell "
                          "states, which is not computed; pass correlation_closure='gaussian' for a labelled "
                          "approximation")


def _add_correlations(res, st, hp, R, pts, closure):
    """Fill ``C_star``, ``c_star``, ``Cc_star``, ``chi_c``, ``xi_c`` (see :func:`gated_fixed_point`)."""
    from .gated_correlation import correlation_point
    shape = R.shape
    if st.kind == "law" and (closure != "exact" or R.size > 1):
        raise MftrnnError(f"correlations=True for the law cell {st.cell.name!r} needs scalar hyperparameters and "
                          "closure='exact'")
    out = []
    for i, idx in enumerate(np.ndindex(shape)):
        h = {g: {k: float(np.asarray(v)[idx]) for k, v in d.items()} for g, d in hp.items()}
        out.append(correlation_point(st, h, float(R[idx]), pts[i]))

    def arr(key):
        vals = [o[key] for o in out]
        if any(v is None for v in vals):
            return None
        return np.array(vals, float).reshape(shape) if shape else float(vals[0])

    res.C_star, res.c_star, res.Cc_star, res.chi_c = arr("C_star"), arr("c_star"), arr("Cc_star"), arr("chi_c")
    res.xi_c = _vec_timescale(np.abs(res.chi_c))
    res.keys = res.keys + tuple(k for k in ("C_star", "c_star", "chi_c", "xi_c") if getattr(res, k) is not None)
    notes = {o["approximation"] for o in out if o.get("approximation")}
    if notes:
        res.approximation = "; ".join([res.approximation, *sorted(notes)])


def _vec_timescale(chi):
    if np.ndim(chi) == 0:
        return _timescale(chi) if np.isfinite(chi) else np.nan
    return np.vectorize(lambda c: _timescale(c) if np.isfinite(c) else np.nan)(chi)


def _flat_params(cell, hp, R):
    out = {f"{k}_{g}": (float(v) if np.ndim(v) == 0 else v) for g, d in hp.items() for k, v in d.items()}
    out["R"] = float(R) if np.ndim(R) == 0 else R
    return out

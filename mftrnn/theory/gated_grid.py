r"""Batched untied mean-field fixed points of gated cells over hyperparameter arrays (the engine behind
:func:`mftrnn.theory.gated.gated_fixed_point` for arrays of more than one point).

**Law cells** (``torch.nn.LSTM``: the gates read :math:`h=G\tanh c`) are solved for all points at once. The
discretisation is the one of :mod:`mftrnn.theory.gated` (centred characteristic function on the Chebyshev points
of :math:`[0,S]`, Parseval with the sech² / sech⁴ transforms, the same first interval, variance guard and
tolerances); what changes is how the kernels are assembled, how the roots are found, and the truncation check
(weighted by the transforms' tails, below):

* *Separable kernel.* With :math:`A=A(e_a)`, :math:`B=\beta(e_b)\gamma(e_c)` on distinct independent fields,
  :math:`P_{jl}=\psi_B(s_j)\,\mathbb E[L_l(As_j)]`. :math:`L_l(x_jA)` (:math:`x_j=s_j/S`) is a polynomial of degree
  :math:`M` in :math:`A`, whose Chebyshev coefficients in :math:`A\in[0,1]` form a tensor :math:`C_{jlp}` that does
  not depend on the point or on :math:`S`; so :math:`\mathbb E[h\,L_l(As_j)]=\sum_p C_{jlp}\tau_p` with the
  Chebyshev moments :math:`\tau_p=\mathbb E[h\,T_p(2A-1)]`, and the kernels of all points are one matrix product.
  :math:`\psi_B(s)=\mathbb E_\beta[\psi_\gamma(s\beta)]` the same way (:math:`|B|\le1`: degree 40 in :math:`s/S`
  resolves it to ~1e-17 for :math:`S\le24`).
* *Quadrature.* Every field is integrated with the trapezoidal rule on a uniform grid of the field value shared by
  all points (weights: each point's Gaussian density), with the step of the scalar engine's rule for the smallest
  spread of the call (never coarser than the scalar rule) and a window of ±10 standard deviations; the moments are
  then matrix products with fixed tables. Points are sorted (interval, spreads, forget-gate mean) and processed in
  blocks of rows that fit in cache. :math:`\psi` uses a degree in :math:`s/S` that grows with :math:`S` (40 at
  :math:`S=24`; :func:`_nq`).
* *Start.* The Gaussian closure of the cell state is scanned at the scalar engine's scan points (on coarser
  field grids, 1e-8 accurate: only the start and ``multistable`` come from it) and its least root found by
  Illinois regula falsi; the interval is :math:`S=\min(24, 14/\sigma_c)` there, rounded *up* to one of 16 values
  per octave (so that points share tables).
* *Grids.* Ladder :math:`M=48, 64, 80, 96, 128, 160, 192, 256, 320` (neighbours at least 16 apart, ratios
  1.2-1.33: a pair agreeing to 1e-10 bounds the coarser's error, the finer's is smaller by :math:`\rho^{-16}`,
  :math:`\rho>1.3` for a law resolved by ~90 points). (1) The secant for :math:`Q^*` on the first grid from the
  closure's root (to 1e-7: a starting point).
  (2) At that :math:`Q`, grids :math:`M_L, M_{L+1}, \dots` until a pair agrees: :math:`\mathbb E[\tanh^2c]` of the
  two at the same :math:`Q` within 1e-10, the variance :math:`-\varphi''(0)` on the coarser matching the exact one
  to 1e-4, and the truncation check on the finer. (3) The secant on the finer grid of the pair (its first
  evaluation is the one of step 2, the slope the first grid's) to 1e-12, then the coarser grid at that root: the
  pair is checked again there (else back to step 2). The finer grid's values are returned (as the scalar engine
  does); no pair up to 320 points at :math:`S=24`: :class:`~mftrnn.ConvergenceError` naming the point.
* *Truncation.* :math:`\varphi` on :math:`[0,S]` is exact (the equation never leaves the interval); only the
  Parseval integrals are cut at :math:`S`, which changes them by at most
  :math:`W(S)\sup_{s>S}|\varphi|` with :math:`W(S)=\frac1\pi\int_S^\infty\max(\widehat{\operatorname{sech}^2},
  \widehat{\operatorname{sech}^4})` (:func:`_tail_weight`; 1.4e-13 at 24). Check: :math:`W(S)` times
  :math:`|\varphi|` on the last tenth of the interval below 1e-11 (the scalar engine asks :math:`|\varphi|<10^{-11}`
  there whatever :math:`S`; both assume that :math:`|\varphi|` beyond stays below its level on the last tenth),
  and the same for chi's functional of the perturbation (:math:`\mathbb E[G^2]W(S)|x|`). A point that fails gets a
  1.5x wider interval (up to 24) rather than 24 at once: a law whose :math:`\varphi` has a slowly decaying tail of
  1e-9 (a sharp feature of the density) is then resolved on a short interval: e.g. at
  :math:`\sigma_w=2.256, \sigma_v=1.452, \mu_{b,f}=6.153, \mu_{b,g}=0.854` on :math:`S=12` with 129 points, where
  :math:`S=24` needs more than 321 and the scalar engine refuses the point (checked with the scalar engine's kernel
  on 321 points at :math:`S=9` and 12: :math:`F(Q^*)-Q^*=-1.2\cdot10^{-13}`).
* *chi* is the leading eigenvalue of the same (w-hat, D_h) map. The coupling of :math:`D_h` to :math:`\hat w` is
  rank one, so :math:`\chi>\rho=\mathbb E[A^2]` solves the scalar secular equation
  :math:`\lambda(1-H(\lambda))=\rho_G`, :math:`H(\lambda)=\mathbb E[G^2]\langle k,(\lambda-P_w)^{-1}r\rangle`
  (one batched solve per evaluation), by a bracketed iteration on the model :math:`H\approx\alpha/(\lambda-\rho)+
  \beta` (the Perron pole of :math:`P_w` is exactly :math:`\rho`: row 0 of :math:`P_w` is :math:`\rho e_0`;
  :func:`_secular_root`). It is computed on both grids of the accepted pair at the same :math:`Q` (the finer from
  the coarser's value by one Newton step on its slope, then the usual test: two solves); they must agree to 1e-9
  (absolute, as the scalar engine's check), else chi on the next grid must agree with the finer; else the point
  goes to the scalar engine. The finer value is returned. Where :math:`\chi-\rho\lesssim10^{-9}` (the secular
  function then behaves like a double pole at :math:`\rho`, positive on both sides; e.g. a large forget-gate bias
  with :math:`\mu_{b,g}\ne0`) chi is determined only to ~2e-9 by either engine (it moves by that much with the
  quadrature); the iteration then narrows onto :math:`\rho`.
* *Least root.* The exact root is found from the closure's least root (*Start*); ``multistable`` reports
  crossings seen by the closure's scan (the scalar engine scans the exact map on its coarsest grid).

Accuracy verified (``tests/test_gated_grid.py``): agreement with the scalar engine to 1e-8 relative in
:math:`Q^*`, :math:`Q_c^*` and :math:`\chi` (measured ≲1e-9 in :math:`Q^*`, ≲1e-10 in chi). Points the batched
engine does not certify are never returned from it: a point whose iteration does not converge is handed to the
scalar engine (which returns it or refuses it), and an unresolved law raises :class:`~mftrnn.ConvergenceError`.

Speed (``python -m mftrnn.experiments.bench_gated``): the 128x128 LSTM diagram in 12-13 s of CPU time on one
core (0.75-0.8 ms/point; the scalar engine: 2-3 s/point; this module before these changes: ~100 s). Per point,
roughly: 4 evaluations of the map on the first grid and 2 on the second (each a kernel product and a dense solve),
chi with 3-4 solves on the first grid and 2 on the second. Profile: the dense LU solves ~33% of the time, the
kernel products ~16%, psi ~11%, the Gaussian weights ~8%, the closure's scan ~6%.

**Other cells** (closed cells: the GRU, the reset-before GRU, the peephole LSTM; law cells of other shapes, e.g. a
forget gate shared with the input) fall back to the scalar loop, point by point (not vectorised).
"""
from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from ..errors import ConvergenceError, MftrnnError
from .numeric import NUMPY_MODULES, strip_half_width
from .perpetuity import S_MAX, chebyshev_grid, sech2_transform, sech4_transform
from .quadrature import WINDOW, nodes_for

try:  # batched small solves: one BLAS thread (LAPACK gains nothing from threads on 50-320 unknowns, and a
    from threadpoolctl import threadpool_limits          # second thread thrashes on a loaded machine)
except ImportError:  # pragma: no cover
    threadpool_limits = None

__all__ = ["grid_points", "LADDER"]

#: grid sizes M (M+1 Chebyshev points) climbed by the batched law solver
LADDER = (48, 64, 80, 96, 128, 160, 192, 256, 320)
_NQ = 40                 # degree of psi_B(S y), y in [0, 1], at S = S_MAX (fewer for shorter intervals: _nq)
_LAW_TOL = 1e-10         # E[tanh^2 c] of two grids (the scalar engine's tolerance)
_CHI_TOL = 1e-9          # chi of two grids (absolute; the scalar engine's tolerance)
_START_TOL = 1e-7        # the first grid's root: a starting point (the finer grid's secant continues from it)
_TRUNC_TOL = 1e-11       # truncation of the Parseval integrals at S (W(S) x the tail on the last tenth)
_WIN = 10.0              # quadrature window, standard deviations
_S_PER_OCTAVE = 16
_MAX_NODES = 4000
_DEBUG = False


# ----------------------------------------------------------------------------------------------- fixed tables
@functools.lru_cache(maxsize=None)
def _coef_matrix(M: int) -> np.ndarray:
    """(M+1, M+1): values at the Chebyshev-Lobatto points a_r = (1 - cos(pi r/M))/2 of [0, 1] -> coefficients of
    T_p(2a - 1)."""
    r = np.arange(M + 1)
    p = r[:, None]
    T = (-1.0) ** p * np.cos(np.pi * p * r[None, :] / M)        # T_p(2 a_r - 1), (p, r)
    w = np.full(M + 1, 2.0 / M)
    w[[0, M]] /= 2
    out = T * w[None, :]
    out[[0, M]] /= 2
    return out


@functools.lru_cache(maxsize=None)
def _kernel_tensor(M: int) -> np.ndarray:
    """C (M+1, (M+1)^2) with (tau @ C).reshape(M+1, M+1)[j, l] = sum_p tau_p c_p(j, l), c_p(j, l) the coefficient
    of T_p(2A-1) in the Lagrange basis function L_l(x_j A) of the unit grid (exact: L_l(x_j A) has degree M in A).
    ``C.reshape(n, n, n)[:, j, :]`` is the (p, l) block of row j."""
    g = chebyshev_grid(M, 1.0)
    x, n = g.s, M + 1
    Tinv = _coef_matrix(M)
    C = np.empty((n, n, n))                                    # (p, j, l)
    for j in range(n):
        C[:, j, :] = Tinv @ g.interp(x[j] * x)                 # interp: (r, l) = L_l(x_j a_r)
    return C.reshape(n, n * n)


@functools.lru_cache(maxsize=None)
def _nq(S: float) -> int:
    """Degree of the Chebyshev interpolant in y in [0, 1] of exp(i S y t), |t| <= 1, for psi: its coefficients are
    ~ J_q(S/2) <= (S/4)^q / q!, below 2e-17 from this degree on (40 at S = 24, 28 at S = 12)."""
    q, term = 0, 1.0
    while term > 2e-17 or q < 8:
        q += 1
        term *= (S / 4) / q
    return min(q, _NQ)


@functools.lru_cache(maxsize=None)
def _psi_tensor(nq: int = _NQ):
    """D with (tau_beta @ D).reshape(NQ+1, NQ+1)[r, q] = E_beta[T_q(2 y_r beta - 1)] (y_r the unit Lobatto points)."""
    g = chebyshev_grid(nq, 1.0)
    y, n = g.s, nq + 1
    Tinv = _coef_matrix(nq)
    D = np.empty((n, n, n))                                    # (p, r, q)
    for r in range(n):
        t = 2 * y[r] * y - 1                                   # argument at the beta points a_t = y_t
        Tq = np.cos(np.arange(n)[:, None] * np.arccos(np.clip(t, -1, 1))[None, :])  # (q, t)
        D[:, r, :] = (Tinv @ Tq.T)                             # (p, q)
    return D.reshape(n, n * n)


@functools.lru_cache(maxsize=None)
def _psi_interp(M: int, nq: int = _NQ) -> np.ndarray:
    """(M+1, NQ+1): psi at the unit Lobatto points of degree NQ -> psi at the law grid's points."""
    return chebyshev_grid(nq, 1.0).interp(chebyshev_grid(M, 1.0).s)


@functools.lru_cache(maxsize=None)
def _legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


@functools.lru_cache(maxsize=64)
def _gl_interp(M: int, n_gl: int):
    x, w = _legendre(n_gl)
    u = (x + 1) / 2
    return u, w / 2, chebyshev_grid(M, 1.0).interp(u)


def _cheb_table(y: np.ndarray, P: int) -> np.ndarray:
    """T_p(y), p = 0..P, as (len(y), P+1)."""
    T = np.empty((y.size, P + 1))
    T[:, 0] = 1.0
    if P >= 1:
        T[:, 1] = y
    for p in range(2, P + 1):
        T[:, p] = 2 * y * T[:, p - 1] - T[:, p - 2]
    return T


def _quantise_S(S: np.ndarray) -> np.ndarray:
    """Round the interval up to one of 16 values per octave below S_MAX (points then share the psi tables)."""
    k = np.floor(_S_PER_OCTAVE * np.log2(S_MAX / np.maximum(S, 1e-300)) + 1e-9)
    return np.where(S >= S_MAX, S_MAX, S_MAX * 2.0 ** (-k / _S_PER_OCTAVE))


# ----------------------------------------------------------------------------------------------- structure
class _Layout:
    """The pieces of a law cell the batched solver needs: A(e_a), B = beta(e_b) gamma(e_c), readout G(e_o) tanh c,
    every field reading the readout with gate factor 1; None where the cell is of another shape."""

    def __init__(self, st, pc):
        self.st = st
        self.a, self.b, self.c = pc.a_field, pc.b_field, pc.c_field
        new, G, _ = next(r for r in st.readouts if st.cell.previous_of(r[0]) == st.read_state)
        (self.o,) = G.free_symbols
        fn = lambda sym, e: sp.lambdify(sym, e, modules=NUMPY_MODULES)
        A, beta, gamma = st.A, pc.beta, pc.gamma
        self.fA = {"1": None, "A": fn(self.a, A), "A2": fn(self.a, A**2), "dA2": fn(self.a, sp.diff(A, self.a) ** 2)}
        self.fb = {"1": None, "b": fn(self.b, beta), "b2": fn(self.b, beta**2),
                   "db2": fn(self.b, sp.diff(beta, self.b) ** 2)}
        self.fc = {"1": None, "c": fn(self.c, gamma), "c2": fn(self.c, gamma**2),
                   "dc2": fn(self.c, sp.diff(gamma, self.c) ** 2)}
        self.fo = {"G2": fn(self.o, G**2), "dG2": fn(self.o, sp.diff(G, self.o) ** 2)}
        self.A_expr, self.beta, self.gamma = A, beta, gamma
        # strip half-widths of the scalar engine's node rules (the law kernel's min(pi/2, strip))
        self.d = {self.a: min(np.pi / 2, strip_half_width(A)), self.b: min(np.pi / 2, strip_half_width(beta)),
                  self.c: min(np.pi / 2, strip_half_width(gamma)), self.o: min(np.pi / 2, strip_half_width(G**2))}


def _layout(st):
    from .gated import _law_pieces
    if st.kind != "law":
        return None
    try:
        pc = _law_pieces(st)
    except Exception:
        return None
    if pc.b_field is None or pc.c_field is None or pc.b_field == pc.a_field:
        return None
    if pc.beta.free_symbols != {pc.b_field} or pc.gamma.free_symbols != {pc.c_field}:
        return None
    new, G, g = next(r for r in st.readouts if st.cell.previous_of(r[0]) == st.read_state)
    if g != "tanh" or len(G.free_symbols) != 1:
        return None
    fields = {pc.a_field, pc.b_field, pc.c_field, *G.free_symbols}
    if len(fields) != 4 or fields != set(st.fields):
        return None
    if any(f.reads is not None and st.alpha[f.symbol] != 1 for f in st.cell.fields):
        return None
    return _Layout(st, pc)


# ----------------------------------------------------------------------------------------------- field grids
class _FieldGrid:
    """A uniform grid of one field's value shared by all points, with tables of functions on it."""

    def __init__(self, mu, s_lo, s_hi, d, h_max=np.inf, tol=None, win=_WIN):
        s_all = np.geomspace(max(float(s_lo.min()), 1e-3), max(float(s_hi.max()), 1e-3), 48)
        nodes = nodes_for(s_all, d) if tol is None else nodes_for(s_all, d, tol=tol)
        h_xi = 2 * WINDOW / (nodes - 1.0)
        self.h = min(float(np.min(s_all * h_xi)), h_max)
        self.win = win
        lo = float(np.min(mu - win * s_hi)) - self.h
        hi = float(np.max(mu + win * s_hi)) + self.h
        self.n = int(np.ceil((hi - lo) / self.h)) + 1
        self.e = lo + self.h * np.arange(self.n)
        self.tables = {}

    def weights(self, mu, s):
        """(npts, n) trapezoid weights of N(mu, s^2) on a slice of the grid; returns (slice, W)."""
        i0 = max(int(np.floor((float(np.min(mu - self.win * s)) - self.e[0]) / self.h)), 0)
        i1 = min(int(np.ceil((float(np.max(mu + self.win * s)) - self.e[0]) / self.h)) + 1, self.n)
        e = self.e[i0:i1]
        W = np.subtract(e[None, :], mu[:, None])                 # in place from here: one array
        W *= (np.sqrt(0.5) / s)[:, None]
        np.square(W, out=W)
        np.negative(W, out=W)
        np.exp(W, out=W)
        W *= (self.h / np.sqrt(2 * np.pi) / s)[:, None]
        return slice(i0, i1), W

    def table(self, key, fn):
        if key not in self.tables:
            self.tables[key] = np.asarray(fn(self.e), float) * np.ones(self.n)
        return self.tables[key]


# ----------------------------------------------------------------------------------------------- the engine
class _LawBatch:
    def __init__(self, lay: _Layout, par: dict, R: np.ndarray):
        self.lay = lay
        st = lay.st
        self.R = R
        self.N = R.size
        # q_k = sw2_k Q + c0_k, mean mu_k
        self.mu, self.sw2, self.c0 = {}, {}, {}
        for f in st.cell.fields:
            g = par[f.gate]
            self.mu[f.symbol] = g["mu_b"] if f.bias else np.zeros(self.N)
            self.sw2[f.symbol] = g["sigma_w"] ** 2 if f.reads is not None else np.zeros(self.N)
            c0 = np.zeros(self.N)
            if f.input:
                c0 = c0 + g["sigma_v"] ** 2 * R
            if f.bias:
                c0 = c0 + g["sigma_b"] ** 2
            self.c0[f.symbol] = c0
        self.grids, self.cgrids = {}, {}
        self.ok = np.ones(self.N, bool)
        for k in (lay.a, lay.b, lay.c, lay.o):
            s_lo, s_hi = np.sqrt(self.c0[k]), np.sqrt(self.sw2[k] + self.c0[k])
            self.ok &= s_lo >= 0.02
        for k in (lay.a, lay.b, lay.c, lay.o):
            idx = self.ok
            if not idx.any():
                break
            s_lo, s_hi = np.sqrt(self.c0[k][idx]), np.sqrt(self.sw2[k][idx] + self.c0[k][idx])
            # the fields inside psi carry exp(i s beta gamma), s <= 24: its growth off the real axis (~exp(1.6 s a)
            # for a strip a = 1 of tanh-like gates) needs a step 2 pi / h >= 1.6 S_MAX + ln(1e16)
            h_max = 2 * np.pi / (1.6 * S_MAX + 37.0) if k in (lay.b, lay.c) else np.inf
            self.grids[k] = _FieldGrid(self.mu[k][idx], s_lo, s_hi, lay.d[k], h_max)
            # the closure's moments (the start and the scan only) need no psi and 1e-8 accuracy: a coarser rule
            self.cgrids[k] = _FieldGrid(self.mu[k][idx], s_lo, s_hi, lay.d[k], tol=1e-8, win=8.0)
        if idx.any() and max(g.n for g in self.grids.values()) > _MAX_NODES:
            self.ok[:] = False
        if idx.any():
            ga, gb, gc = self.grids[lay.a], self.grids[lay.b], self.grids[lay.c]
            Av, bv, cv = ga.table("A", lay.fA["A"]), gb.table("b", lay.fb["b"]), gc.table("c", lay.fc["c"])
            if Av.min() < 0 or Av.max() > 1 or bv.min() < 0 or bv.max() > 1 or np.abs(cv).max() > 1:
                self.ok[:] = False              # outside the ranges the tables assume: scalar engine
        self._E_S = {}

    # ------------------------------------------------------------------ moments
    def moments(self, idx, Q, closure=False):
        """Field moments and exact moments of c at Q (arrays over the points idx); ``closure``: on the grids of the
        closure (coarser steps where psi is not needed)."""
        lay = self.lay
        out = {}
        grids = self.cgrids if closure else self.grids
        for k, fns, keys in ((lay.a, lay.fA, ("A", "A2")), (lay.b, lay.fb, ("b", "b2")),
                             (lay.c, lay.fc, ("c", "c2")), (lay.o, lay.fo, ("G2",))):
            g = grids[k]
            sl, W = g.weights(self.mu[k][idx], np.sqrt(self.sw2[k][idx] * Q + self.c0[k][idx]))
            out["W" + str(k)] = (sl, W)
            for key in keys:
                out[key] = W @ g.table(key, fns[key])[sl]
        EA, EA2 = out["A"], out["A2"]
        EB, EB2 = out["b"] * out["c"], out["b2"] * out["c2"]
        m1 = EB / (1 - EA)
        m2 = (EB2 + 2 * EA * EB * m1) / (1 - EA2)
        out["m1"], out["m2"] = m1, m2
        out["var"] = np.maximum(m2 - m1 * m1, 0.0)
        return out

    def gaussian_F(self, idx, Q):
        """The Gaussian closure's map (scan and starting point only)."""
        mo = self.moments(idx, Q, closure=True)
        xi = np.linspace(-8, 8, 81)
        w = np.exp(-xi**2 / 2)
        w /= w.sum()
        c = mo["m1"][:, None] + np.sqrt(mo["var"])[:, None] * xi
        return mo["G2"] * (np.tanh(c) ** 2 @ w)

    # ------------------------------------------------------------------ psi and kernels
    def _E_table(self, S, nq):
        """(n_c, NQ+1) complex: coefficients in T_q(2y-1) of exp(i S y gamma(e)) on the c-field grid."""
        if (S, nq) not in self._E_S:
            gc = self.grids[self.lay.c]
            gam = gc.table("c", self.lay.fc["c"])
            y = chebyshev_grid(nq, 1.0).s
            ph = S * np.outer(gam, y)
            self._E_S[S, nq] = (np.cos(ph) @ _coef_matrix(nq).T, np.sin(ph) @ _coef_matrix(nq).T)
        return self._E_S[S, nq]

    def psi(self, idx, Q, S, M, mo, hb="1", hc="1"):
        """psi^{(hb, hc)}(s_j) = E[hb(e_b) hc(e_c) exp(i s_j beta gamma)] on the law grid: (npts, M+1) complex."""
        lay = self.lay
        slb, Wb = mo["W" + str(lay.b)]
        slc, Wc = mo["W" + str(lay.c)]
        gb, gc = self.grids[lay.b], self.grids[lay.c]
        if hb != "1":
            Wb = Wb * gb.table(hb, lay.fb[hb])[slb]
        if hc != "1":
            Wc = Wc * gc.table(hc, lay.fc[hc])[slc]
        nq = _nq(float(S.max()))
        key = ("Tb", _NQ)
        if key not in gb.tables:
            gb.tables[key] = _cheb_table(2 * gb.table("b", lay.fb["b"]) - 1, _NQ)
        tau_b = Wb @ gb.tables[key][slb, :nq + 1]
        X = (tau_b @ _psi_tensor(nq)).reshape(-1, nq + 1, nq + 1)      # (pt, r, q)
        a_re = np.empty((len(S), nq + 1))
        a_im = np.empty((len(S), nq + 1))
        for Sv in np.unique(S):
            sel = S == Sv
            Ec, Es = self._E_table(float(Sv), nq)
            a_re[sel] = Wc[sel] @ Ec[slc]
            a_im[sel] = Wc[sel] @ Es[slc]
        pr = (X @ a_re[:, :, None])[..., 0]
        pi = (X @ a_im[:, :, None])[..., 0]
        I = _psi_interp(M, nq)
        return pr @ I.T + 1j * (pi @ I.T)

    def kernels(self, idx, M, mo, keys, m1S, m1, S):
        """K^{(h)}[pt, j, l] = E[h(e_a) exp(-i m1 s_j (1-A)) L_l(A s_j)] for h in keys: dict key -> (npts, n, n)
        (real where m1 S is negligible, complex otherwise)."""
        lay = self.lay
        ga = self.grids[lay.a]
        sl, W = mo["W" + str(lay.a)]
        key = ("TA", M)
        if key not in ga.tables:
            ga.tables[key] = _cheb_table(2 * ga.table("A", lay.fA["A"]) - 1, M)
        TA = ga.tables[key][sl]
        n = M + 1
        Cm = _kernel_tensor(M)
        Cjpl = Cm.reshape(n, n, n)
        out = {}
        shifted = m1S >= 1e-11
        for h in keys:
            Wh = W if h == "1" else W * ga.table(h, lay.fA[h])[sl]
            if not shifted.any():
                out[h] = (Wh @ TA @ Cm).reshape(-1, n, n)
                continue
            K = np.empty((len(m1), n, n), complex)
            ns = ~shifted
            if ns.any():
                K[ns] = (Wh[ns] @ TA @ Cm).reshape(-1, n, n)
            if shifted.any():
                x = chebyshev_grid(M, 1.0).s
                Av = ga.table("A", lay.fA["A"])[sl]
                th = (m1[shifted] * S[shifted])[:, None, None] * x[None, :, None] * (1 - Av)[None, None, :]
                Wc = Wh[shifted][:, None, :]
                tr = (Wc * np.cos(th)).reshape(-1, TA.shape[0]) @ TA      # (pt*j, p)
                ti = -(Wc * np.sin(th)).reshape(-1, TA.shape[0]) @ TA
                tr = tr.reshape(-1, n, n)
                ti = ti.reshape(-1, n, n)
                Ks = np.empty((tr.shape[0], n, n), complex)
                for j in range(n):
                    Ks[:, j, :] = tr[:, j, :] @ Cjpl[:, j, :] + 1j * (ti[:, j, :] @ Cjpl[:, j, :])
                K[shifted] = Ks
            out[h] = K
        return out

    def parseval(self, M, S, m1, transform):
        """Weights (a, b) of int_0^S f^(s) Re[e^{i s m1} psi(s)] ds = a.Re psi + b.Im psi, per point."""
        g = chebyshev_grid(M, 1.0)
        a = g.cc[None, :] * S[:, None] * transform(S[:, None] * g.s[None, :])
        b = np.zeros_like(a)
        osc = np.abs(m1) * S >= 1e-11
        if osc.any():
            n_gl = int(min(20000, max(2 * (M + 1), 4 * np.max(np.abs(m1[osc]) * S[osc]) / np.pi + 64)))
            u, w, L = _gl_interp(M, n_gl)
            s = S[osc, None] * u[None, :]
            ww = w[None, :] * S[osc, None] * transform(s)
            a[osc] = (ww * np.cos(m1[osc, None] * s)) @ L
            b[osc] = -(ww * np.sin(m1[osc, None] * s)) @ L
        return a, b

    # ------------------------------------------------------------------ one evaluation of the map
    def evaluate(self, idx, Q, M, S):
        """F(Q) = E[G^2] E[tanh^2 c] on grid M and interval S for the points idx, in blocks of rows; returns a dict
        of row arrays (see :meth:`_evaluate`)."""
        return _blocks(lambda sl: self._evaluate(idx[sl], Q[sl], M, S[sl]), idx.size, _block_rows(M, 1))

    def _evaluate(self, idx, Q, M, S):
        """One block: F, T2 = E[tanh^2 c], the centred phi and psi on the grid, the real-arithmetic flag, the
        variance -phi''(0) (the guard), the largest |phi| over the last tenth of the interval (the decay check) and
        the exact moments m1, m2, var, E[G^2]."""
        mo = self.moments(idx, Q)
        m1 = mo["m1"]
        m1S = np.abs(m1) * S
        psi = self.psi(idx, Q, S, M, mo)
        K = self.kernels(idx, M, mo, ("1",), m1S, m1, S)["1"]
        # real arithmetic where m1 S is negligible (Parseval then reads Re phi only, on which imaginary parts of the
        # kernel act at second order) and psi is real to 1e-10
        real = (m1S < 1e-11) & (np.abs(psi.imag).max(1) <= 1e-10)
        n = M + 1
        phi = np.empty((len(Q), n), complex)
        K1phi = np.empty((len(Q), n), complex)          # K phi (the source of chi reads it)
        for sel, dt in ((real, float), (~real, complex)):
            if not sel.any():
                continue
            whole = bool(sel.all())
            if dt is float:
                Kk = (K if whole else K[sel]).real
                ps = (psi if whole else psi[sel]).real
            else:
                Kk, ps = (K, psi) if whole else (K[sel], psi[sel])
            Amat = ps[:, :, None] * Kk
            np.negative(Amat, out=Amat)
            Amat[:, np.arange(n), np.arange(n)] += 1.0
            Amat[:, 0, :] = 0.0
            Amat[:, 0, 0] = 1.0
            rhs = np.zeros((Amat.shape[0], n, 1), dt)
            rhs[:, 0, 0] = 1.0
            ph = np.linalg.solve(Amat, rhs)
            phi[sel] = ph[..., 0]
            K1phi[sel] = (Kk @ ph)[..., 0]
        a, b = self.parseval(M, S, m1, sech2_transform)
        T2 = 1.0 - (np.einsum("pj,pj->p", a, phi.real) + np.einsum("pj,pj->p", b, phi.imag)) / np.pi
        g = chebyshev_grid(M, 1.0)
        return {"F": mo["G2"] * T2, "T2": T2, "phi": phi, "psi": psi, "real": real, "K1phi": K1phi,
                "m2var": -(phi @ g.D2[0]).real / S**2, "tail": np.abs(phi[:, g.s >= 0.9]).max(1),
                "m1": m1, "m2": mo["m2"], "var": mo["var"], "G2": mo["G2"]}

    # ------------------------------------------------------------------ chi
    def chi(self, idx, Q, M, S, ev, lam0=None, slope0=None):
        """Leading eigenvalue of the perturbation map at the evaluation ``ev`` (row arrays of :meth:`evaluate` at Q,
        grid M), by the secular equation, in blocks; returns (chi, the slope of the secular function there, the
        bound on the truncation of its Parseval functional at S: E[G^2] W(S) |x| on the last tenth)."""
        lam0 = np.full(idx.size, np.nan) if lam0 is None else lam0
        slope0 = np.full(idx.size, np.nan) if slope0 is None else slope0

        def one(sl):
            e = {k: v[sl] for k, v in ev.items()}
            c, d, t = self._chi(idx[sl], Q[sl], M, S[sl], e, lam0[sl], slope0[sl])
            return {"chi": c, "slope": d, "trunc": t}
        out = _blocks(one, idx.size, _block_rows(M, 4))
        return out["chi"], out["slope"], out["trunc"]

    def _chi(self, idx, Q, M, S, ev, lam0, slope0):
        lay = self.lay
        mo = self.moments(idx, Q)
        phi = ev["phi"]
        m1 = mo["m1"]
        m1S = np.abs(m1) * S
        n = M + 1
        npt = len(Q)
        Ks = self.kernels(idx, M, mo, ("A2", "dA2"), m1S, m1, S)
        psi = ev["psi"]
        g = chebyshev_grid(M, 1.0)
        Dphi = (phi @ g.D.T) / S[:, None]
        D2phi = (Dphi @ g.D.T) / S[:, None]
        w2 = {k: self.sw2[k][idx] for k in (lay.a, lay.b, lay.c, lay.o)}
        KdA = Ks["dA2"]
        V = np.stack([D2phi, Dphi, phi], -1)                                  # (pt, l, 3)
        if np.iscomplexobj(KdA):
            KV = KdA @ V
        else:                                                                 # real kernel: no complex copy
            KV = KdA @ np.concatenate([V.real, V.imag], -1)
            KV = KV[..., :3] + 1j * KV[..., 3:]
        r = w2[lay.a][:, None] * psi * (-KV[..., 0] - 2j * m1[:, None] * KV[..., 1] + (m1**2)[:, None] * KV[..., 2])
        K1phi = ev["K1phi"]
        r = r + w2[lay.b][:, None] * self.psi(idx, Q, S, M, mo, hb="db2", hc="c2") * K1phi
        r = r + w2[lay.c][:, None] * self.psi(idx, Q, S, M, mo, hb="b2", hc="dc2") * K1phi
        KA2 = Ks["A2"]
        rho = mo["A2"]
        k_re, k_im = (v / np.pi for v in self.parseval(M, S, m1, sech4_transform))
        T2 = ev["T2"]
        slo, Wo = mo["W" + str(lay.o)]
        EdG2 = Wo @ self.grids[lay.o].table("dG2", lay.fo["dG2"])[slo]
        rhoG = w2[lay.o] * EdG2 * T2
        EG2 = mo["G2"]
        # real arithmetic where every imaginary part is rounding (m1 S negligible, symmetric psi and source)
        real = ev["real"] & (np.abs(r.imag).max(1) <= 1e-10 * np.maximum(np.abs(r).max(1), 1e-300))

        # -Pw (real where the point is)
        mPw = np.negative(psi.real[:, :, None] * KA2.real) if real.all() else -(psi[:, :, None] * KA2)
        del Ks, KA2, KdA

        tail_x = np.full(npt, np.nan)         # |x| over the last tenth of [0, S] at the last evaluation
        last = g.s >= 0.9

        def H(lam, sel):
            """EG2 <k, (lam - Pw)^-1 r> for the points sel (bool mask)."""
            out = np.empty(int(sel.sum()))
            for rs, dt in ((real[sel], float), (~real[sel], complex)):
                if not rs.any():
                    continue
                ii = np.nonzero(sel)[0][rs]
                if dt is float:
                    Amat = mPw[ii].real
                    rr = r[ii].real
                else:
                    Amat = mPw[ii].astype(complex)
                    rr = r[ii]
                Amat[:, np.arange(n), np.arange(n)] += lam[rs][:, None]
                x = np.linalg.solve(Amat, rr[..., None])[..., 0]
                tail_x[ii] = np.abs(x[:, last]).max(1)
                val = np.einsum("pj,pj->p", k_re[ii], x.real)
                if dt is not float:
                    val = val + np.einsum("pj,pj->p", k_im[ii], x.imag)
                out[rs] = EG2[ii] * val
            return out

        # starting point: the 2x2 model of the perturbation's mass (m' = rho m + r0 D, D' = EG2 kappa m' + rhoG D)
        kappa = (np.einsum("pj,pj->p", k_re, phi.real) + np.einsum("pj,pj->p", k_im, phi.imag))
        r0 = r[:, 0].real
        a11, a12, a21, a22 = rho, r0, EG2 * kappa * rho, EG2 * kappa * r0 + rhoG
        tr, det = a11 + a22, a11 * a22 - a12 * a21
        guess = tr / 2 + np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
        lam0 = np.where(np.isfinite(lam0), lam0, guess)
        lam = np.maximum(np.asarray(lam0, float), rho * (1 + 1e-9) + 1e-15)
        chi, slope = _secular_root(lambda lv, sel: H(lv, sel), lam, rho, rhoG, slope0)
        # truncation of chi's Parseval functional at S: at most EG2 W(S) sup_{s>S}|x| (as for phi, assuming |x|
        # beyond S stays below its level on the last tenth)
        return chi, slope, EG2 * _tail_weight(S) * tail_x


def _secular_root(H, lam, rho, rhoG, slope0, max_iter=60):
    r"""Root :math:`\chi>\rho` of :math:`f(\lambda)=\lambda(1-H(\lambda))-\rho_G` (increasing through it), per point,
    from ``lam``. Steps: the root of the model :math:`H\approx\alpha/(\lambda-\rho)+\beta` fitted to the last two
    evaluations (one, :math:`\beta=0`, at the start), or, at the start, a Newton step on the slope ``slope0`` where
    it is given (the coarser grid's: one step from its root), or a Newton step on the last secant slope where the
    last two iterates are closer than 1e-9 (their model is rounding); safeguarded by the bracket (bisection where a
    step leaves it or where :math:`|f|>10^{-10}` has not halved in two steps; doubling the distance to
    :math:`\rho` while there is no upper end). Converged, from the second evaluation on, where the next step is
    below 1e-12 max(1, chi) and :math:`|f|\le10^{-7}` (the evaluated point is returned), or where the bracket is
    below 2e-11 (rounding in H, ~1e-12 where the kernel is large, limits it; its middle is returned). Returns
    (root, the secant slope of f from the last two iterates at least 1e-9 apart, NaN if none), NaN where not
    converged."""
    npt = lam.size
    lo = rho.copy()
    hi = np.full(npt, np.inf)
    done = np.zeros(npt, bool)
    lam_prev = np.full(npt, np.nan)
    f_prev = np.full(npt, np.nan)
    H_prev = np.full(npt, np.nan)
    given = np.where(np.isfinite(slope0) & (slope0 > 0), slope0, np.nan)
    slope = np.full(npt, np.nan)
    out = np.full(npt, np.nan)
    fs = [np.full(npt, np.inf), np.full(npt, np.inf)]          # |f| one and two steps ago
    for it in range(max_iter):
        act = ~done
        if not act.any():
            break
        Hv = np.full(npt, np.nan)
        Hv[act] = H(lam[act], act)
        f = lam * (1 - Hv) - rhoG
        lo = np.where(act & (f < 0), np.maximum(lo, lam), lo)
        hi = np.where(act & (f >= 0), np.minimum(hi, lam), hi)
        scale = np.maximum(np.abs(lam), 1.0)
        u = lam - rho
        up = lam_prev - rho
        have2 = np.isfinite(lam_prev) & (lam_prev != lam)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # model H = alpha/(lam - rho) + beta from the last two evaluations (one, beta = 0, at the start)
            alpha = np.where(have2, (Hv - H_prev) / (1 / u - 1 / up), Hv * u)
            beta = np.where(have2, Hv - alpha / u, 0.0)
            qa = 1 - beta
            qb = -((1 - beta) * rho + alpha + rhoG)
            qc = rhoG * rho
            disc = np.sqrt(np.maximum(qb * qb - 4 * qa * qc, 0.0))
            model = (-qb + disc) / (2 * qa)
            sec = (f - f_prev) / (lam - lam_prev)
            far = have2 & (np.abs(lam - lam_prev) >= 1e-9 * scale)
            slope = np.where(act & far & (sec > 0), sec, slope)
            first = (it == 0) & np.isfinite(given)
            # the model from two iterates at least 1e-9 apart (closer ones: rounding), else a Newton step on the
            # last secant slope, else the one-point model
            use_newton = first | (~far & have2 & np.isfinite(slope))
            cand = np.where(use_newton, lam - f / np.where(first, given, slope), model)
            new = cand
            ok_new = np.isfinite(new) & (new > lo) & (new < hi) & ((qa > 0) | use_newton)
            # no progress in two steps, away from rounding (|f| > 1e-10): bisect
            stalled = np.isfinite(hi) & (np.abs(f) > 1e-10) & ~(np.abs(f) <= 0.5 * fs[0])
            bis = np.where(np.isfinite(hi), (lo + hi) / 2, rho + 2 * np.maximum(lam - rho, 1e-12))
            new = np.where(ok_new & ~stalled, new, bis)
        narrow = np.isfinite(hi) & (hi - lo <= 2e-11 * scale)
        # (the step before safeguarding: a step below rounding lands on the bracket's end)
        # and |f| small in absolute terms: a slope from a secant across the pole at rho can be huge and make the
        # step of an f = O(1) look small (where f > 0 on both sides of rho there is no root above it: the bracket
        # then narrows onto rho, whose value the eigenvalue takes to rounding, as the dense eigenproblem confirms)
        conv = act & (((np.abs(cand - lam) <= 1e-12 * scale) & (np.abs(f) <= 1e-7) & ((qa > 0) | use_newton)
                       & (it > 0)) | narrow)
        out[conv] = np.where(narrow[conv], (lo[conv] + hi[conv]) / 2, lam[conv])
        done |= conv
        if _DEBUG == 2:
            k = np.nonzero(act)[0][:3]
            print("chi it", it, "n act", act.sum(), "lam-rho", (lam - rho)[k], "hi-lo", (hi - lo)[k], "f", f[k],
                  "conv", conv[k])
        fs = [fs[1], np.where(act, np.abs(f), fs[1])]
        lam_prev = np.where(act, lam, lam_prev)
        H_prev = np.where(act, Hv, H_prev)
        f_prev = np.where(act, f, f_prev)
        lam = np.where(act & ~conv, new, lam)
    late = ~done & np.isfinite(hi) & (hi - lo <= 1e-10 * np.maximum(np.abs(lam), 1.0))
    out[late] = (lo[late] + hi[late]) / 2
    if _DEBUG and not np.isfinite(out).all():
        k = np.nonzero(~np.isfinite(out))[0][:4]
        print("secular not converged: lam", lam[k], "lo", lo[k], "hi", hi[k], "rho", rho[k], "slope", slope[k],
              "f_prev", f_prev[k], "lam_prev", lam_prev[k])
    return out, np.where(np.isfinite(out), slope, np.nan)


# ----------------------------------------------------------------------------------------------- driver
_BLOCK_BYTES = 24e6      # working set of one block of rows (kernels and solves), cache-friendly


def _block_rows(M: int, n_mats: int) -> int:
    """Rows per block: ``n_mats`` (M+1)^2 matrices of doubles per row within _BLOCK_BYTES (at least 8 rows)."""
    return max(8, int(_BLOCK_BYTES // (8.0 * (M + 1) ** 2 * (2 * n_mats + 2))))


def _blocks(fn, n: int, size: int) -> dict:
    """fn(slice) -> dict of row arrays, for consecutive blocks of ``size`` rows; concatenated."""
    parts = [fn(slice(i, min(i + size, n))) for i in range(0, n, size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _take(ev: dict, rows) -> dict:
    return {k: v[rows] for k, v in ev.items()}


def _secant(evalf, x0, s0, lo, hi, ev0=None, known=None, tol_rel=1e-12, max_iter=30):
    """Vectorised safeguarded secant for F(x) = x, started with a Newton step on the slope estimate s0 of F.

    ``evalf(rows, x)`` -> dict of row arrays with key "F" (the evaluation at x of the points ``rows``); ``ev0``
    (row arrays over all points, updated in place) holds the evaluation at x0 already made for the points ``known``
    (all of them, or none with ev0 None). A point is
    converged when the next step is below ``tol_rel`` x: x is then the last evaluated point, and its error is about
    that step. Returns (x, slope of F, the evaluation at x (row arrays), converged mask)."""
    n = x0.size
    x = x0.copy()
    xp = np.full(n, np.nan)
    gp = np.full(n, np.nan)
    slope = np.where(np.isfinite(s0) & (s0 < 0.999), s0, 0.0)
    done = np.zeros(n, bool)
    known = np.zeros(n, bool) if known is None else known
    store = ev0                                   # updated in place (the caller passes a fresh one)
    for it in range(max_iter):
        act = np.nonzero(~done)[0]
        if act.size == 0:
            break
        rows = act[~known[act]] if it == 0 else act
        if rows.size:
            ev = evalf(rows, x[rows])
            if store is None:
                store = {k: np.empty((n,) + v.shape[1:], v.dtype) for k, v in ev.items()}   # all rows now
            for k, v in ev.items():
                store[k][rows] = v
        F = store["F"][act]
        g = F - x[act]
        have = np.isfinite(xp[act]) & (xp[act] != x[act])
        with np.errstate(divide="ignore", invalid="ignore"):
            sec = (g - gp[act]) / (x[act] - xp[act]) + 1.0          # secant slope of F
        good = have & np.isfinite(sec) & (sec < 0.999)
        slope[act] = np.where(good, sec, slope[act])
        step = g / (1.0 - slope[act])
        lim = 0.5 * np.maximum(x[act], 1e-3)
        step = np.clip(step, -lim, lim)
        conv = np.abs(step) <= tol_rel * np.maximum(x[act], 1e-12)
        done[act[conv]] = True
        xp[act], gp[act] = x[act], g
        x[act] = np.where(conv, x[act], np.clip(x[act] + step, lo, hi))
    return x, slope, store, done


def _closure_start(eng, order):
    """Scan of the Gaussian closure of the cell state at the scalar engine's scan points (no solves), its least
    root (to 1e-7, a starting point only) and slope; returns (multistable, root, slope, interval S)."""
    def F(x, sl=slice(None)):
        return _blocks(lambda b: {"F": eng.gaussian_F(order[sl][b], x[b])}, x.size, 1024)["F"]
    n = order.size
    xs = np.concatenate([[0.0], np.geomspace(1e-6, 1, 12)])
    Gs = np.stack([F(np.full(n, x)) - x for x in xs], 1)
    Gs[:, 0] = np.maximum(Gs[:, 0], 1e-14)
    down = (Gs[:, :-1] > 0) & (Gs[:, 1:] <= 0)
    multi = down.sum(1) > 1
    j = np.argmax(down, 1)
    has = down.any(1)
    a, b = xs[j], xs[j + 1]
    ga, gb = Gs[np.arange(n), j], Gs[np.arange(n), j + 1]
    act = np.arange(n)
    side = np.zeros(n, int)      # Illinois: the end kept twice in a row has its value halved
    for _ in range(60):
        m = np.where(ga - gb != 0, a - ga * (b - a) / (gb - ga), (a + b) / 2)
        m = np.where((m <= a) | (m >= b), (a + b) / 2, m)
        gm = np.full(n, np.nan)
        gm[act] = F(m[act], act) - m[act]
        upd = np.zeros(n, bool)
        upd[act] = True
        left = upd & (gm > 0)                    # the root is right of m: m replaces a
        right = upd & ~(gm > 0)
        gb = np.where(left & (side == 1), gb / 2, gb)
        ga = np.where(right & (side == -1), ga / 2, ga)
        a, ga = np.where(left, m, a), np.where(left, gm, ga)
        b, gb = np.where(right, m, b), np.where(right, gm, gb)
        side = np.where(left, 1, np.where(right, -1, side))
        act = np.nonzero(upd & (b - a > 1e-7 * np.maximum(b, 1e-9)) & (np.abs(gm) > 1e-10 * np.maximum(m, 1e-9)))[0]
        if act.size == 0:
            break
    QG = np.where(has, np.where(np.abs(ga) < np.abs(gb), a, b), 0.5)
    h = 1e-6 * np.maximum(QG, 1e-6)
    sG = (F(QG + h) - F(np.maximum(QG - h, 0))) / (QG + h - np.maximum(QG - h, 0))
    var = _blocks(lambda b: {"v": eng.moments(order[b], QG[b], closure=True)["var"]}, n, 1024)["v"]
    S = _quantise_S(np.where(np.sqrt(var) <= 14.0 / S_MAX, S_MAX, 14.0 / np.maximum(np.sqrt(var), 1e-300)))
    return multi, QG, sG, S


def _law_points(st, lay, par, R, point_fallback):
    """Batched fixed points of a law cell: list of point dicts (as gated._point returns) in flat order."""
    N = R.size
    eng = _LawBatch(lay, par, R)
    results = [None] * N
    todo = np.nonzero(eng.ok)[0]
    for i in np.nonzero(~eng.ok)[0]:
        results[i] = point_fallback(i)
    if todo.size == 0:
        return results
    # order points by the spread of the gates read from h, then the forget field's mean, so that blocks of rows
    # share narrow quadrature windows
    order = todo[np.lexsort((eng.mu[lay.a][todo], eng.sw2[lay.b][todo], eng.c0[lay.b][todo]))]
    with _one_thread():
        multi, QG, sG, S = _closure_start(eng, order)
        # blocks of equal interval (one psi table each), then as above
        o = np.lexsort((eng.mu[lay.a][order], eng.sw2[lay.b][order], eng.c0[lay.b][order], S))
        order, multi, QG, sG, S = order[o], multi[o], QG[o], sG[o], S[o]
        res = _climb(st, eng, par, R, order, QG, sG, S)
    readout = next(r[0] for r in st.readouts if st.cell.previous_of(r[0]) == st.read_state)
    ok = res["status"] == 0
    for q in np.nonzero(ok)[0]:
        i = order[q]
        Qx = float(res["Q"][q])
        mom = {st.cell.input: (0.0, float(R[i]))}
        for f in st.cell.fields:
            mom[f.symbol] = (float(eng.mu[f.symbol][i]), float(eng.sw2[f.symbol][i] * Qx + eng.c0[f.symbol][i]))
        results[i] = {"chi": float(res["chi"][q]), "law_error": float(res["err"][q]),
                      "Qs": {st.carried_new: float(res["m2"][q]), readout: Qx},
                      "M": float(res["m1"][q]), "mom": mom, "multistable": bool(multi[q]), "chi_q": np.nan}
    for q in np.nonzero(~ok)[0]:
        results[order[q]] = point_fallback(order[q])
    return results


class _one_thread:
    """One BLAS thread for the whole solve (LAPACK gains nothing from threads on 40-320 unknowns, and a second
    thread thrashes on a loaded machine); entered once (threadpoolctl's context costs ~2 ms)."""

    def __enter__(self):
        self.ctx = threadpool_limits(1) if threadpool_limits is not None else None
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _tail_weight(S):
    r""":math:`W(S)=\frac1\pi\int_S^\infty\max(\widehat{\operatorname{sech}^2},\widehat{\operatorname{sech}^4})(s)\,ds`
    (1.17 at S = 0, 1.4e-13 at S = 24): the truncation at S of the Parseval integrals (of E[tanh^2 c] and of chi's
    sech^4 functional) changes them by at most W(S) sup_{s>S}|phi|. Trapezoid table on [0, 80] (the integrand
    is below 1e-50 beyond), interpolated; array in, array out."""
    s, tail = _tail_table()
    return np.interp(S, s, tail)


@functools.lru_cache(maxsize=None)
def _tail_table():
    s = np.linspace(0.0, 80.0, 160001)
    f = np.maximum(sech2_transform(s), sech4_transform(s)) / np.pi
    seg = (f[1:] + f[:-1]) / 2 * (s[1] - s[0])
    return s, np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])      # summed from the right: no cancellation


def _decayed(ev, S):
    """The truncation check on a grid's evaluation: |phi| over the last tenth of [0, S] times the transforms' weight
    beyond S (:func:`_tail_weight`) below _TRUNC_TOL, assuming (as the scalar engine does) that |phi| beyond S stays
    below its level on the last tenth; always true at S_MAX (where the transforms alone are below 1e-13)."""
    return (S >= S_MAX) | (ev["tail"] * _tail_weight(S) <= _TRUNC_TOL)


def _merge(groups: dict, L: int, qs: np.ndarray, ev: dict):
    """Add points (positions qs, their evaluation on LADDER[L] at the current Q) to the group of level L."""
    if qs.size == 0:
        return
    if L in groups:
        q0, e0 = groups[L]
        qs = np.concatenate([q0, qs])
        ev = {k: np.concatenate([e0[k], ev[k]]) for k in e0}
    o = np.argsort(qs, kind="stable")
    groups[L] = (qs[o], _take(ev, o))


def _climb(st, eng, par, R, order, x0, s0, S0):
    """The grid ladder for the points ``order`` (positions q = 0..n-1), all of them together level by level.

    1. The secant for Q on the first grid from the closure's root (a starting point: its accuracy only decides
       how many steps follow).
    2. At that Q, grids LADDER[L], LADDER[L+1], ... until a pair agrees (E[tanh^2 c] to 1e-10), with the variance
       guard on the coarser and the truncation check on the finer; a point whose phi has not decayed gets a 1.5x
       wider interval (up to S_MAX), one that fails otherwise S_MAX, as in the scalar engine; none at S_MAX:
       :class:`~mftrnn.ConvergenceError`.
    3. The secant on the finer grid of the pair (its first evaluation is the one of step 2), then the coarser grid
       at that root: the pair is checked again there (else back to step 2; the third time, the scalar engine), and
       chi is computed on both grids at the same Q (the finer starting with a Newton step from the coarser's value
       on its slope); they must agree to 1e-9, else chi on the next grid must agree with the finer one, else the
       point goes to the scalar engine. Where chi's functional has not decayed at S, the interval widens (step 2).

    Returns dict of arrays over positions: status (0 solved, 1 scalar fallback), Q, chi, m1, m2, err."""
    n = order.size
    nL = len(LADDER)
    out = {"status": np.full(n, -1), "Q": np.full(n, np.nan), "chi": np.full(n, np.nan),
           "m1": np.full(n, np.nan), "m2": np.full(n, np.nan), "err": np.full(n, np.nan)}
    x, s, S = x0.copy(), s0.copy(), S0.copy()
    backs = np.zeros(n, int)

    def ev_at(L, qs, xq=None):
        return eng.evaluate(order[qs], x[qs] if xq is None else xq, LADDER[L], S[qs])

    def m2_ok(ev):
        return np.abs(ev["m2var"] - ev["var"]) <= 1e-4 * ev["var"] + 1e-8

    def widen(qs, to_max):
        """The next interval: 1.5x (to_max False) or S_MAX; ConvergenceError for a point already at S_MAX."""
        for q in qs[S[qs] >= S_MAX][:1]:
            i = order[q]
            raise ConvergenceError(
                f"cell {st.cell.name!r}: the stationary law of {st.carried} is not resolved on "
                f"{LADDER[-1] + 1} points at flat index {i} ({_describe(par, R, i)}); reduce the "
                "forget-gate bias")
        S[qs] = S_MAX if to_max else np.minimum(S_MAX, _quantise_S(1.5 * S[qs]))

    # ---- 1. the secant on the first grid
    q_all = np.arange(n)
    xb, sb, evb, conv = _secant(lambda r, xq: ev_at(0, q_all[r], xq), x, s, 0.0, 1.0, tol_rel=_START_TOL)
    x[:], s[:] = xb, sb
    out["status"][~conv] = 1
    if _DEBUG and not conv.all():
        print("secant not converged (first grid)", order[~conv][:5])
    groups = {}                               # level L -> (positions, their evaluation on LADDER[L] at x)
    _merge(groups, 0, q_all[conv], _take(evb, conv))
    accepted = {}                             # level L -> (positions, their evaluation on LADDER[L+1] at x)
    while groups or accepted:
        # ---- 2. the ladder at fixed Q
        while groups:
            L = min(groups)
            qs, evl = groups.pop(L)
            if L + 1 >= nL:
                widen(qs, True)
                _merge(groups, 0, qs, ev_at(0, qs))
                continue
            evh = ev_at(L + 1, qs)
            agree = np.abs(evh["T2"] - evl["T2"]) <= _LAW_TOL
            guard = m2_ok(evl)
            dec = _decayed(evh, S[qs])
            acc = agree & guard & dec
            up = ~agree & (L + 2 < nL)
            wid = agree & guard & ~dec
            rest = ~acc & ~up & ~wid
            if _DEBUG:
                print("ladder", LADDER[L], "n", qs.size, "agree", agree.sum(), "guard", guard.sum(), "decayed",
                      dec.sum(), "climb", up.sum(), "widen", wid.sum(), "rest", rest.sum())
            _merge(groups, L + 1, qs[up], _take(evh, up))
            _merge(accepted, L, qs[acc], _take(evh, acc))
            for sel, to_max in ((wid, False), (rest, True)):
                if sel.any():
                    widen(qs[sel], to_max)
                    L0 = L if not to_max else 0
                    _merge(groups, L0, qs[sel], ev_at(L0, qs[sel]))
        # ---- 3. the finer grid's root, the pair again there, chi on both
        for L in sorted(accepted):
            qs, evh = accepted.pop(L)
            xf, sf, evf, convf = _secant(lambda r, xq: ev_at(L + 1, qs[r], xq), x[qs], s[qs], 0.0, 1.0, evh,
                                         np.ones(qs.size, bool))
            x[qs], s[qs] = xf, sf
            out["status"][qs[~convf]] = 1
            evc = ev_at(L, qs)
            err = np.abs(evf["T2"] - evc["T2"])
            ok = convf & (err <= _LAW_TOL) & m2_ok(evc) & _decayed(evf, S[qs])
            back = convf & ~ok
            if _DEBUG and back.any():
                print("pair lost at the finer root", order[qs[back]][:5])
            backs[qs[back]] += 1
            again = back & (backs[qs] <= 2)          # a pair lost three times: the scalar engine
            out["status"][qs[back & ~again]] = 1
            _merge(groups, L, qs[again], _take(evc, again))
            qs, evc, evf, err = qs[ok], _take(evc, ok), _take(evf, ok), err[ok]
            if qs.size == 0:
                continue
            idx = order[qs]
            cc, dc, _ = eng.chi(idx, x[qs], LADDER[L], S[qs], evc)
            cf, _, trunc = eng.chi(idx, x[qs], LADDER[L + 1], S[qs], evf, lam0=cc, slope0=dc)
            bad = ~(np.abs(cf - cc) <= _CHI_TOL)
            if _DEBUG and bad.any():
                b = np.nonzero(bad)[0][:8]
                print("chi check", LADDER[L], idx[b], cc[b], cf[b])
            if bad.any() and L + 2 < nL:
                b = np.nonzero(bad)[0]
                ev2 = ev_at(L + 2, qs[b])
                c2, _, t2 = eng.chi(idx[b], x[qs[b]], LADDER[L + 2], S[qs[b]], ev2, lam0=cf[b])
                ok2 = np.abs(c2 - cf[b]) <= _CHI_TOL
                cf[b[ok2]], trunc[b[ok2]] = c2[ok2], t2[ok2]
                bad[b[ok2]] = False
            # chi's functional not decayed at S (its perturbation has a heavier tail than phi): a wider interval
            short = ~bad & np.isfinite(cf) & ~(trunc <= _TRUNC_TOL) & (S[qs] < S_MAX)
            if short.any():
                if _DEBUG:
                    print("chi truncation", order[qs[short]][:5], trunc[short][:5])
                widen(qs[short], False)
                _merge(groups, L, qs[short], ev_at(L, qs[short]))
            good = ~bad & np.isfinite(cf) & ~short
            out["status"][qs] = np.where(good, 0, np.where(short, -1, 1))
            out["Q"][qs], out["chi"][qs], out["m1"][qs], out["m2"][qs] = x[qs], cf, evf["m1"], evf["m2"]
            out["err"][qs] = err
    return out


def _describe(par, R, i):
    return ", ".join(f"{k}_{g}={float(v[i]):.6g}" for g, d in par.items() for k, v in d.items()) + f", R={R[i]:.6g}"


def grid_points(st, hp: dict, R: np.ndarray, closure: str = "exact") -> list:
    """Point results (the dicts of :func:`mftrnn.theory.gated._point`) for every point of the broadcast arrays,
    in ``np.ndindex`` order: batched for law cells of the supported shape with the exact closure, else the scalar
    loop."""
    from .gated import _point
    shape = R.shape
    flat = {g: {k: np.asarray(v, float).ravel() for k, v in d.items()} for g, d in hp.items()}
    Rf = np.asarray(R, float).ravel()

    lay = _layout(st) if closure == "exact" else None
    with_chi_q = lay is None  # batched law cells report no chi_q, so their fallback points skip it too

    def point(i):
        h = {g: {k: float(v[i]) for k, v in d.items()} for g, d in flat.items()}
        try:
            return _point(st, h, float(Rf[i]), closure, with_chi_q=with_chi_q)
        except MftrnnError as e:
            if Rf.size < 2:
                raise
            raise type(e)(f"{e} (at point {np.unravel_index(i, shape)}: {_describe(flat, Rf, i)})") from None

    if lay is None or Rf.size < 2:
        return [point(i) for i in range(Rf.size)]
    return _law_points(st, lay, flat, Rf, point)

r"""Batched untied mean-field fixed points of gated cells over hyperparameter arrays (the engine behind
:func:`mftrnn.theory.gated.gated_fixed_point` for arrays of more than one point).

**Law cells** (``torch.nn.LSTM``: the gates read :math:`h=G\tanh c`) are solved for all points at once. The
discretisation is the one of :mod:`mftrnn.theory.gated` (centred characteristic function on the Chebyshev points
of :math:`[0,S]`, Parseval with the sech² / sech⁴ transforms, the same interval rule, decay check and variance
guard); what changes is how the kernels are assembled and how the roots are found:

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
  then matrix products with fixed tables.
* *Interval.* :math:`S` is chosen once per point, the scalar rule :math:`\min(24, 14/\sigma_c)` rounded *up* to
  one of 16 values per octave (so that points share tables); where :math:`\varphi` has not decayed (the scalar's
  check, on the final grid) the point is redone on :math:`[0,24]`.
* *Grids.* Ladder :math:`M=48, 80, 128, 192, 320`. :math:`Q^*` is found on the first grid (vectorised secant,
  started from the Gaussian closure's root), then on the next; the pair is accepted where
  :math:`\mathbb E[\tanh^2c]` of the two differs by at most 1e-10 at the finer root (the coarser value linearly
  extrapolated from its secant), where the variance :math:`-\varphi''(0)` on the coarser grid matches the exact one
  to 1e-4, and where :math:`\varphi` has decayed (:math:`S<24`); else the point climbs the ladder. The finer grid's
  values are returned (as the scalar engine does). No pair at :math:`S=24` up to 320 points:
  :class:`~mftrnn.ConvergenceError` naming the point.
* *chi* is the leading eigenvalue of the same (w-hat, D_h) map. The coupling of :math:`D_h` to :math:`\hat w` is
  rank one, so :math:`\chi>\rho=\mathbb E[A^2]` solves the scalar secular equation
  :math:`\lambda(1-H(\lambda))=\rho_G`, :math:`H(\lambda)=\mathbb E[G^2]\langle k,(\lambda-P_w)^{-1}r\rangle`
  (one batched solve per evaluation), by a bracketed iteration on the model :math:`H\approx\alpha/(\lambda-\rho)+
  \beta` (the Perron pole of :math:`P_w` is exactly :math:`\rho`: row 0 of :math:`P_w` is :math:`\rho e_0`). It is
  computed on both grids of the accepted pair; they must agree to 1e-9 (absolute, as the scalar engine's check),
  and the finer value is returned.
* *Least root.* The scan for the least root uses the Gaussian closure of the cell state (no solves) at the scalar
  engine's scan points; the exact root is then found from the closure's least root. ``multistable`` reports
  crossings seen by that scan (the scalar engine scans the exact map on its coarsest grid).

Accuracy verified (``tests/test_gated_grid.py``): agreement with the scalar engine to 1e-8 relative in
:math:`Q^*`, :math:`Q_c^*` and :math:`\chi` (measured ≲1e-10). Points the batched engine does not certify are
never returned from it: a point whose iteration does not converge is handed to the scalar engine (which returns it
or refuses it), and an unresolved law raises :class:`~mftrnn.ConvergenceError`.

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
LADDER = (48, 80, 128, 192, 320)
_NQ = 40                 # degree of psi_B(S y), y in [0, 1]
_LAW_TOL = 1e-10         # E[tanh^2 c] of two grids (the scalar engine's tolerance)
_CHI_TOL = 1e-9          # chi of two grids (absolute; the scalar engine's tolerance)
_WIN = 10.0              # quadrature window, standard deviations
_S_PER_OCTAVE = 16
_MAX_NODES = 4000
_CHUNK_BYTES = 160e6
_DEBUG = False


def _solve(A, b):
    """Batched ``np.linalg.solve`` with one BLAS thread."""
    if threadpool_limits is None:
        return np.linalg.solve(A, b)
    with threadpool_limits(1):
        return np.linalg.solve(A, b)


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
def _psi_tensor():
    """D with (tau_beta @ D).reshape(NQ+1, NQ+1)[r, q] = E_beta[T_q(2 y_r beta - 1)] (y_r the unit Lobatto points)."""
    g = chebyshev_grid(_NQ, 1.0)
    y, n = g.s, _NQ + 1
    Tinv = _coef_matrix(_NQ)
    D = np.empty((n, n, n))                                    # (p, r, q)
    for r in range(n):
        t = 2 * y[r] * y - 1                                   # argument at the beta points a_t = y_t
        Tq = np.cos(np.arange(n)[:, None] * np.arccos(np.clip(t, -1, 1))[None, :])  # (q, t)
        D[:, r, :] = (Tinv @ Tq.T)                             # (p, q)
    return D.reshape(n, n * n)


@functools.lru_cache(maxsize=None)
def _psi_interp(M: int) -> np.ndarray:
    """(M+1, NQ+1): psi at the unit Lobatto points of degree NQ -> psi at the law grid's points."""
    return chebyshev_grid(_NQ, 1.0).interp(chebyshev_grid(M, 1.0).s)


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

    def __init__(self, mu, s_lo, s_hi, d, h_max=np.inf):
        s_all = np.geomspace(max(float(s_lo.min()), 1e-3), max(float(s_hi.max()), 1e-3), 48)
        h_xi = 2 * WINDOW / (nodes_for(s_all, d) - 1.0)
        self.h = min(float(np.min(s_all * h_xi)), h_max)
        lo = float(np.min(mu - _WIN * s_hi)) - self.h
        hi = float(np.max(mu + _WIN * s_hi)) + self.h
        self.n = int(np.ceil((hi - lo) / self.h)) + 1
        self.e = lo + self.h * np.arange(self.n)
        self.tables = {}

    def weights(self, mu, s):
        """(npts, n) trapezoid weights of N(mu, s^2) on a slice of the grid; returns (slice, W)."""
        i0 = max(int(np.floor((float(np.min(mu - _WIN * s)) - self.e[0]) / self.h)), 0)
        i1 = min(int(np.ceil((float(np.max(mu + _WIN * s)) - self.e[0]) / self.h)) + 1, self.n)
        e = self.e[i0:i1]
        z = (e[None, :] - mu[:, None]) / s[:, None]
        W = np.exp(-0.5 * z * z) * (self.h / np.sqrt(2 * np.pi) / s)[:, None]
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
        self.grids = {}
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
        if idx.any() and max(g.n for g in self.grids.values()) > _MAX_NODES:
            self.ok[:] = False
        if idx.any():
            ga, gb, gc = self.grids[lay.a], self.grids[lay.b], self.grids[lay.c]
            Av, bv, cv = ga.table("A", lay.fA["A"]), gb.table("b", lay.fb["b"]), gc.table("c", lay.fc["c"])
            if Av.min() < 0 or Av.max() > 1 or bv.min() < 0 or bv.max() > 1 or np.abs(cv).max() > 1:
                self.ok[:] = False              # outside the ranges the tables assume: scalar engine
        self._E_S = {}

    # ------------------------------------------------------------------ moments
    def _w(self, k, idx, Q):
        s = np.sqrt(self.sw2[k][idx] * Q + self.c0[k][idx])
        return self.grids[k].weights(self.mu[k][idx], s)

    def moments(self, idx, Q):
        """Field moments and exact moments of c at Q (arrays over the points idx)."""
        lay = self.lay
        out = {}
        for k, fns, keys in ((lay.a, lay.fA, ("A", "A2")), (lay.b, lay.fb, ("b", "b2")),
                             (lay.c, lay.fc, ("c", "c2")), (lay.o, lay.fo, ("G2",))):
            sl, W = self._w(k, idx, Q)
            out["W" + str(k)] = (sl, W)
            g = self.grids[k]
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
        mo = self.moments(idx, Q)
        xi = np.linspace(-8, 8, 81)
        w = np.exp(-xi**2 / 2)
        w /= w.sum()
        c = mo["m1"][:, None] + np.sqrt(mo["var"])[:, None] * xi
        return mo["G2"] * (np.tanh(c) ** 2 @ w)

    # ------------------------------------------------------------------ psi and kernels
    def _E_table(self, S):
        """(n_c, NQ+1) complex: coefficients in T_q(2y-1) of exp(i S y gamma(e)) on the c-field grid."""
        if S not in self._E_S:
            gc = self.grids[self.lay.c]
            gam = gc.table("c", self.lay.fc["c"])
            y = chebyshev_grid(_NQ, 1.0).s
            ph = S * np.outer(gam, y)
            self._E_S[S] = (np.cos(ph) @ _coef_matrix(_NQ).T, np.sin(ph) @ _coef_matrix(_NQ).T)
        return self._E_S[S]

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
        key = ("Tb", _NQ)
        if key not in gb.tables:
            gb.tables[key] = _cheb_table(2 * gb.table("b", lay.fb["b"]) - 1, _NQ)
        tau_b = Wb @ gb.tables[key][slb]
        X = (tau_b @ _psi_tensor()).reshape(-1, _NQ + 1, _NQ + 1)      # (pt, r, q)
        a_re = np.empty((len(S), _NQ + 1))
        a_im = np.empty((len(S), _NQ + 1))
        for Sv in np.unique(S):
            sel = S == Sv
            Ec, Es = self._E_table(float(Sv))
            a_re[sel] = Wc[sel] @ Ec[slc]
            a_im[sel] = Wc[sel] @ Es[slc]
        pr = np.einsum("prq,pq->pr", X, a_re)
        pi = np.einsum("prq,pq->pr", X, a_im)
        I = _psi_interp(M)
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
            K = np.empty((len(m1), n, n), complex if shifted.any() else float)
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
        """F(Q) = E[G^2] E[tanh^2 c] on grid M and interval S for the points idx; returns dict."""
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
        for sel, dt in ((real, float), (~real, complex)):
            if not sel.any():
                continue
            Kk = K[sel].real if dt is float else K[sel]
            ps = psi[sel].real if dt is float else psi[sel]
            Amat = -(ps[:, :, None] * Kk)
            Amat[:, np.arange(n), np.arange(n)] += 1.0
            Amat[:, 0, :] = 0.0
            Amat[:, 0, 0] = 1.0
            rhs = np.zeros((Amat.shape[0], n, 1), dt)
            rhs[:, 0, 0] = 1.0
            phi[sel] = _solve(Amat, rhs)[..., 0]
        a, b = self.parseval(M, S, m1, sech2_transform)
        T2 = 1.0 - (np.einsum("pj,pj->p", a, phi.real) + np.einsum("pj,pj->p", b, phi.imag)) / np.pi
        return {"F": mo["G2"] * T2, "T2": T2, "phi": phi, "mo": mo, "psi": psi, "real": real}

    # ------------------------------------------------------------------ chi
    def chi(self, idx, Q, M, S, ev, lam0=None):
        """Leading eigenvalue of the perturbation map at the evaluation ``ev`` (grid M), by the secular equation."""
        lay = self.lay
        mo, phi = ev["mo"], ev["phi"]
        m1 = mo["m1"]
        m1S = np.abs(m1) * S
        n = M + 1
        npt = len(Q)
        Ks = self.kernels(idx, M, mo, ("1", "A2", "dA2"), m1S, m1, S)
        psi = ev["psi"]
        g = chebyshev_grid(M, 1.0)
        D1 = g.D[None] / S[:, None, None]
        Dphi = np.einsum("pjl,pl->pj", D1, phi)
        D2phi = np.einsum("pjl,pl->pj", D1, Dphi)
        w2 = {k: self.sw2[k][idx] for k in (lay.a, lay.b, lay.c, lay.o)}
        KdA = Ks["dA2"]
        r = w2[lay.a][:, None] * psi * (-np.einsum("pjl,pl->pj", KdA, D2phi)
                                         - 2j * m1[:, None] * np.einsum("pjl,pl->pj", KdA, Dphi)
                                         + (m1**2)[:, None] * np.einsum("pjl,pl->pj", KdA, phi))
        K1phi = np.einsum("pjl,pl->pj", Ks["1"], phi)
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

        def H(lam, sel):
            """EG2 <k, (lam - Pw)^-1 r> for the points sel (bool mask)."""
            out = np.empty(int(sel.sum()))
            for rs, dt in ((real[sel], float), (~real[sel], complex)):
                if not rs.any():
                    continue
                ii = np.nonzero(sel)[0][rs]
                if dt is float:
                    Amat = -(psi[ii].real[:, :, None] * KA2[ii].real)
                    rr = r[ii].real
                else:
                    Amat = -(psi[ii][:, :, None] * KA2[ii])
                    rr = r[ii]
                Amat[:, np.arange(n), np.arange(n)] += lam[rs][:, None]
                x = _solve(Amat, rr[..., None])[..., 0]
                val = np.einsum("pj,pj->p", k_re[ii], x.real)
                if dt is not float:
                    val = val + np.einsum("pj,pj->p", k_im[ii], x.imag)
                out[rs] = EG2[ii] * val
            return out

        # starting point: the 2x2 model of the perturbation's mass (m' = rho m + r0 D, D' = EG2 kappa m' + rhoG D)
        if lam0 is None or not np.all(np.isfinite(lam0)):
            kappa = (np.einsum("pj,pj->p", k_re, phi.real) + np.einsum("pj,pj->p", k_im, phi.imag))
            r0 = r[:, 0].real
            a11, a12, a21, a22 = rho, r0, EG2 * kappa * rho, EG2 * kappa * r0 + rhoG
            tr, det = a11 + a22, a11 * a22 - a12 * a21
            guess = tr / 2 + np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
            lam0 = guess if lam0 is None else np.where(np.isfinite(lam0), lam0, guess)
        lam = np.maximum(np.asarray(lam0, float), rho * (1 + 1e-9) + 1e-15)
        lo = rho.copy()
        hi = np.full(npt, np.inf)
        done = np.zeros(npt, bool)
        lam_prev = np.full(npt, np.nan)
        H_prev = np.full(npt, np.nan)
        out = np.full(npt, np.nan)
        for it in range(40):
            act = ~done
            if not act.any():
                break
            Hv = np.full(npt, np.nan)
            Hv[act] = H(lam[act], act)
            f = lam * (1 - Hv) - rhoG
            lo = np.where(act & (f < 0), np.maximum(lo, lam), lo)
            hi = np.where(act & (f >= 0), np.minimum(hi, lam), hi)
            # model H = alpha/(lam - rho) + beta from the last two evaluations (one, beta = 0, at the start)
            u = lam - rho
            have2 = np.isfinite(lam_prev) & (lam_prev != lam)
            up = lam_prev - rho
            with np.errstate(divide="ignore", invalid="ignore"):
                alpha = np.where(have2, (Hv - H_prev) / (1 / u - 1 / up), Hv * u)
                beta = np.where(have2, Hv - alpha / u, 0.0)
                qa = 1 - beta
                qb = -((1 - beta) * rho + alpha + rhoG)
                qc = rhoG * rho
                disc = np.sqrt(np.maximum(qb * qb - 4 * qa * qc, 0.0))
                new = (-qb + disc) / (2 * qa)
            bad = ~np.isfinite(new) | (new <= lo) | (new >= hi) | (qa <= 0)
            bis = np.where(np.isfinite(hi), (lo + hi) / 2, rho + 2 * np.maximum(lam - rho, 1e-12))
            new = np.where(bad, bis, new)
            step = np.abs(new - lam)
            # converged: the next step below 1e-12, or the bracket below 2e-11 (rounding in H, ~1e-12 where the
            # kernel is large, limits it; chi is checked to 1e-9 between grids)
            narrow = np.isfinite(hi) & (hi - lo <= 2e-11 * np.maximum(np.abs(lam), 1.0))
            conv = act & ((step <= 1e-12 * np.maximum(np.abs(lam), 1.0)) | narrow)
            out[conv] = np.where(narrow[conv], (lo[conv] + hi[conv]) / 2, lam[conv])
            done |= conv
            lam_prev = np.where(act, lam, lam_prev)
            H_prev = np.where(act, Hv, H_prev)
            lam = np.where(act & ~conv, new, lam)
        late = ~done & np.isfinite(hi) & (hi - lo <= 1e-10 * np.maximum(np.abs(lam), 1.0))
        out[late] = (lo[late] + hi[late]) / 2
        done |= late
        if _DEBUG and not done.all():
            for i in np.nonzero(~done)[0][:3]:
                print("chi not converged", idx[i], "lam", lam[i], "lo", lo[i], "hi", hi[i], "rho", rho[i],
                      "rhoG", rhoG[i], "H", H_prev[i], "real", real[i], "lam0", np.asarray(lam0)[i])
        return out


# ----------------------------------------------------------------------------------------------- driver
def _secant(evalf, x0, s0, lo, hi, tol_rel=1e-13, max_iter=30):
    """Vectorised safeguarded secant for F(x) = x, started with a Newton step on the slope estimate s0 of F.
    evalf(mask, x) -> (F values, evaluation); returns (x, F(x), slope of F, [(evaluation, row)] per point,
    converged mask). A point is converged when the next step is below tol_rel x: x is then the last evaluated
    point, and its error is about that step."""
    n = x0.size
    x = x0.copy()
    xp = np.full(n, np.nan)
    gp = np.full(n, np.nan)
    slope = np.where(np.isfinite(s0) & (s0 < 0.999), s0, 0.0)
    done = np.zeros(n, bool)
    Fx = np.full(n, np.nan)
    last = [None] * n
    for _ in range(max_iter):
        act = np.nonzero(~done)[0]
        if act.size == 0:
            break
        F, ev = evalf(~done, x[act])
        Fx[act] = F
        for t, i in enumerate(act):
            last[i] = (ev, t)
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
    return x, Fx, slope, last, done


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
    # order points by the forget field's mean and spread so that chunks share narrow quadrature windows
    order = todo[np.lexsort((eng.sw2[lay.a][todo], eng.mu[lay.a][todo]))]
    # ---------------- scan of the Gaussian closure (the scalar engine's scan points) and its least root
    xs = np.concatenate([[0.0], np.geomspace(1e-6, 1, 12)])
    Gs = np.stack([eng.gaussian_F(order, np.full(order.size, x)) - x for x in xs], 1)
    Gs[:, 0] = np.maximum(Gs[:, 0], 1e-14)
    down = (Gs[:, :-1] > 0) & (Gs[:, 1:] <= 0)
    multi = down.sum(1) > 1
    j = np.argmax(down, 1)
    has = down.any(1)
    a, b = xs[j], xs[j + 1]
    ga, gb = Gs[np.arange(order.size), j], Gs[np.arange(order.size), j + 1]
    for _ in range(60):      # Illinois-free bisection/regula falsi on the cheap map
        m = np.where(ga - gb != 0, a - ga * (b - a) / (gb - ga), (a + b) / 2)
        m = np.where((m <= a) | (m >= b), (a + b) / 2, m)
        gm = eng.gaussian_F(order, m) - m
        left = gm > 0
        a, ga = np.where(left, m, a), np.where(left, gm, ga)
        b, gb = np.where(left, b, m), np.where(left, gb, gm)
        if np.all(b - a <= 1e-9 * np.maximum(b, 1e-9)):
            break
    QG = np.where(has, (a + b) / 2, 0.5)
    h = 1e-6 * np.maximum(QG, 1e-6)
    sG = (eng.gaussian_F(order, QG + h) - eng.gaussian_F(order, np.maximum(QG - h, 0))) / (QG + h - np.maximum(QG - h, 0))
    mo = eng.moments(order, QG)
    S = _quantise_S(np.where(np.sqrt(mo["var"]) <= 14.0 / S_MAX, S_MAX, 14.0 / np.maximum(np.sqrt(mo["var"]), 1e-300)))
    # ---------------- per point state
    st_Q, st_s = QG.copy(), sG.copy()
    pending = np.arange(order.size)            # positions into `order`
    level = np.zeros(order.size, int)
    final = {}
    fallback = []
    stored = {}                                # position -> (level, Q, F, slope, phi-eval tuple)

    def solve_level(pos, L, x0, s0, Sv):
        """Secant on grid LADDER[L] for the positions pos; returns per position (Q, F, slope, ev, t, conv)."""
        M = LADDER[L]
        res = {}
        per = 8.0 * (M + 1) ** 2 * 10
        size = max(16, int(_CHUNK_BYTES // per))
        for c0 in range(0, pos.size, size):
            p = pos[c0:c0 + size]
            idx = order[p]
            Sp = Sv[c0:c0 + size]

            def evalf(mask, xq, idx=idx, Sp=Sp):
                ev = eng.evaluate(idx[mask], xq, M, Sp[mask])
                mo = ev["mo"]
                return ev["F"], {"phi": ev["phi"], "mo": {k: mo[k] for k in ("var", "G2", "m1", "m2")}}
            x, F, sl, last, conv = _secant(evalf, x0[c0:c0 + size], s0[c0:c0 + size], 0.0, 1.0)
            for t, q in enumerate(p):
                res[q] = (x[t], F[t], sl[t], last[t], bool(conv[t]))
        return res

    S_cur = S.copy()
    prev = {}                                  # position -> result at the previous level
    L = 0
    active = pending
    # level 0 for everyone, then climb
    while active.size:
        new_active = []
        by_level = {}
        for q in active:
            by_level.setdefault(level[q], []).append(q)
        for Lv, plist in sorted(by_level.items()):
            plist = np.array(plist)
            res = solve_level(plist, Lv, st_Q[plist], st_s[plist], S_cur[plist])
            for q in plist:
                x, F, sl, (ev, t), conv = res[q]
                if not conv:
                    if _DEBUG:
                        print("secant not converged", order[q], "level", Lv)
                    fallback.append(q)
                    continue
                st_Q[q], st_s[q] = x, sl
                cur = (Lv, x, F, sl, ev, t)
                if Lv == 0 or q not in prev:
                    prev[q] = cur
                    level[q] = Lv + 1
                    new_active.append(q)
                    continue
                Lp, xp, Fp, slp, evp, tp = prev[q]
                G2 = ev["mo"]["G2"][t]
                Fp_at = Fp + slp * (x - xp)
                dT2 = abs(F - Fp_at) / max(G2, 1e-300)
                # the variance guard on the coarser grid, the decay check (S < S_MAX) on the finer one
                Mc = LADDER[Lp]
                gc = chebyshev_grid(Mc, 1.0)
                phic = evp["phi"][tp]
                var = evp["mo"]["var"][tp]
                m2var = -float((gc.D2[0] @ phic).real) / S_cur[q] ** 2
                m2_ok = abs(m2var - var) <= 1e-4 * var + 1e-8
                gf = chebyshev_grid(LADDER[Lv], 1.0)
                decayed = S_cur[q] >= S_MAX or float(np.max(np.abs(ev["phi"][t][gf.s >= 0.9]))) < 1e-11
                agree = dT2 <= _LAW_TOL
                if _DEBUG:
                    print("level", Lv, "point", order[q], "Q", x, "dT2", dT2, "m2", m2_ok, "decayed", decayed,
                          "S", S_cur[q])
                if agree and m2_ok and decayed:
                    final[q] = (prev[q], cur, dT2)
                    continue
                if agree or Lv + 1 >= len(LADDER):
                    if S_cur[q] < S_MAX:        # the scalar engine's fallback to the widest interval
                        S_cur[q] = S_MAX
                        level[q] = 0
                        prev.pop(q, None)
                        new_active.append(q)
                        continue
                    i = order[q]
                    raise ConvergenceError(
                        f"cell {st.cell.name!r}: the stationary law of {st.carried} is not resolved on "
                        f"{LADDER[-1] + 1} points at flat index {i} ({_describe(par, R, i)}); reduce the "
                        "forget-gate bias")
                prev[q] = cur
                level[q] = Lv + 1
                new_active.append(q)
        active = np.array(sorted(new_active), int)
    # ---------------- chi on both grids of the accepted pair (climbing one grid where they disagree)
    def chi_at(plist, Lx, Qx, lam0):
        """chi on grid LADDER[Lx] at Qx (positions plist); also the evaluation's moments (m1, m2)."""
        M = LADDER[Lx]
        size = int(np.clip(1.5e7 / (M + 1) ** 2, 8, 1024))
        chi = np.empty(plist.size)
        m1 = np.empty(plist.size)
        m2 = np.empty(plist.size)
        for c0 in range(0, plist.size, size):
            sl = slice(c0, c0 + size)
            idx = order[plist[sl]]
            ev = eng.evaluate(idx, Qx[sl], M, S_cur[plist[sl]])
            chi[sl] = eng.chi(idx, Qx[sl], M, S_cur[plist[sl]], ev, lam0=None if lam0 is None else lam0[sl])
            m1[sl], m2[sl] = ev["mo"]["m1"], ev["mo"]["m2"]
        return chi, m1, m2

    fin = np.array(sorted(final), int)
    out_chi, out_m = {}, {}
    groups = {}
    for q in fin:
        groups.setdefault((final[q][0][0], final[q][1][0]), []).append(q)
    for (Lp, Lv), plist in groups.items():
        plist = np.array(plist)
        Qc = np.array([final[q][0][1] for q in plist])
        Qf = np.array([final[q][1][1] for q in plist])
        cc, _, _ = chi_at(plist, Lp, Qc, None)
        cf, m1, m2 = chi_at(plist, Lv, Qf, cc)
        bad = ~(np.abs(cf - cc) <= _CHI_TOL)
        if bad.any() and Lv + 1 < len(LADDER):
            c2, m1b, m2b = chi_at(plist[bad], Lv + 1, Qf[bad], cf[bad])
            ok2 = np.abs(c2 - cf[bad]) <= _CHI_TOL
            sub = np.nonzero(bad)[0]
            cf[sub[ok2]], m1[sub[ok2]], m2[sub[ok2]] = c2[ok2], m1b[ok2], m2b[ok2]
            bad[sub[ok2]] = False
        for t, q in enumerate(plist):
            if bad[t] or not np.isfinite(cf[t]):
                if _DEBUG:
                    print("chi check", order[q], cc[t], cf[t])
                fallback.append(q)
                continue
            out_chi[q] = cf[t]
            out_m[q] = (m1[t], m2[t], Qf[t])
    readout = next(r[0] for r in st.readouts if st.cell.previous_of(r[0]) == st.read_state)
    for q, chi in out_chi.items():
        i = order[q]
        m1, m2, Qx = out_m[q]
        mom = {st.cell.input: (0.0, float(R[i]))}
        for f in st.cell.fields:
            mom[f.symbol] = (float(eng.mu[f.symbol][i]), float(eng.sw2[f.symbol][i] * Qx + eng.c0[f.symbol][i]))
        results[i] = {"chi": float(chi), "law_error": float(final[q][2]),
                      "Qs": {st.carried_new: float(m2), readout: float(Qx)},
                      "M": float(m1), "mom": mom, "multistable": bool(multi[q]), "chi_q": np.nan}
    for q in fallback:
        results[order[q]] = point_fallback(order[q])
    return results


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

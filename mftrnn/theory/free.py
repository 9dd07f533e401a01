r"""Free multiplicative convolution: S-transforms of spectral laws on :math:`[0,\infty)` and the inversion to densities.

**Transforms.** For a probability law :math:`\rho` on :math:`[0,\infty)` (the eigenvalues of :math:`XX^\top`) with
moments :math:`m_k`,

.. math:: \psi(z) = \int\frac{z\lambda}{1-z\lambda}\,d\rho(\lambda) = \sum_{k\ge1} m_k z^k, \qquad
          \chi = \psi^{-1}, \qquad S(w) = \chi(w)\,\frac{1+w}{w}.

Inverting the series, :math:`\chi(w) = w/m_1 - m_2w^2/m_1^3 + O(w^3)`, so

.. math:: S(w) = \frac1{m_1}\bigl(1 - r\,w + O(w^2)\bigr), \qquad r = \frac{m_2}{m_1^2} - 1

(:math:`r` is the relative variance of :math:`\rho`). For asymptotically free :math:`a, b\ge0`,
:math:`S_{ab} = S_aS_b` (Voiculescu). Hence a product of :math:`T` free factors of one law has
:math:`S_T = S^T = m_1^{-T}(1 - Tr\,w + \dots)`: mean :math:`m_1^T` and second moment :math:`m_1^{2T}(1+Tr)`.

The Cauchy transform :math:`G(\zeta) = \int d\rho(\lambda)/(\zeta-\lambda)` is :math:`G(\zeta) = (1+\psi(1/\zeta))/
\zeta`. Writing :math:`w=\psi(1/\zeta)`, the definition of :math:`\chi` gives :math:`\chi(w)=1/\zeta`, i.e.

.. math:: \zeta\,w\,S(w) = 1 + w, \qquad G(\zeta) = \frac{1+w}{\zeta}, \qquad
          \rho(x) = -\frac1\pi\operatorname{Im}G(x+i0),

which :func:`solve_w` and :func:`density` solve for a product of factors (:class:`FreeProduct`).

**Branches.** :math:`\operatorname{Im}\psi(z)` has the sign of :math:`\operatorname{Im}z` (:math:`z\lambda/(1-z\lambda)
= -1 + 1/(1-z\lambda)`), so for :math:`\operatorname{Im}\zeta>0` the solution :math:`w` lies in the lower half plane,
and so does :math:`\chi(w) = 1/\zeta`, and for every factor its own :math:`\chi_f(w)` (the inverse of a :math:`\psi`
of a positive law). All logarithms below are principal logarithms of numbers in the lower half plane, hence
continuous along the solution path. The physical branch is the one that behaves as :math:`w\simeq m_1/\zeta` for
large :math:`|\zeta|`. :func:`solve_w` follows it by continuation in the imaginary part: it starts at
:math:`\zeta = x + i\eta_0` with :math:`\eta_0` far above the spectrum (where :math:`w \simeq m_1/\zeta` is an
accurate start) and lowers :math:`\eta` to :math:`\eta_{\rm final} = \epsilon\,x` (default :math:`\epsilon =
10^{-10}`), vectorised over all :math:`x`: per point, steps in :math:`\log\eta` of adaptive size (geometric predictor,
damped Newton corrector on the equilibrated system, step halved on failure), with the part of the path far above
:math:`x` shared by all points through one column on the imaginary axis (:func:`_solve`). Each accepted step is
checked to end on the physical solution (:meth:`Factor.accept`): the systems below have other solutions, and a
large step can jump to one. The unknown is :math:`y = w/(1+w)`, from which both :math:`w` (small at large
:math:`x`) and :math:`1+w` (small at small :math:`x` where the support reaches 0) follow to full relative precision.
The equation is solved in logarithmic form,

.. math:: \log\zeta + \log w - \log(1+w) + \sum_f T_f\bigl(\log\chi_f(w) + \log(1+w) - \log w\bigr) = 0,

which keeps products of many factors (spectra spanning many decades) well scaled.

**Factors.** :class:`MarchenkoPastur` (:math:`WW^\top`, square Gaussian :math:`W_{ij}\sim\mathcal N(0,s/N)`):
:math:`S = 1/(s(1+w))`, i.e. :math:`\chi(w) = w/(s(1+w)^2)`. :class:`PointMass` (:math:`sI`, e.g. :math:`WW^\top` for
:math:`W=\sqrt s\,O` with :math:`O` orthogonal): :math:`S=1/s`. :class:`DiagonalLaw` (a diagonal matrix with atoms
:math:`\lambda_k\ge0` of weights :math:`p_k`): :math:`\chi(w)` solves :math:`\psi(z)=\sum_kp_kz\lambda_k/(1-z\lambda_k)
= w`, an extra unknown of the Newton system. :class:`DeformedStep` (:math:`X = A + \sigma_w B G`, diagonal :math:`A, B`,
Gaussian or Haar :math:`G`): the Hermitisation below, four extra unknowns.

**Deformed step** :math:`X = A + \sigma_wBG`, :math:`A=\operatorname{diag}(a)`, :math:`B=\operatorname{diag}(b)`,
:math:`(a_i,b_i)` with a joint law (atoms). Hermitisation :math:`H=\begin{pmatrix}0&X\\X^\top&0\end{pmatrix}`; the
top-left block of :math:`(H-s)^{-1}` is :math:`s\,(XX^\top-s^2)^{-1}`. Write :math:`H = H_0 + LH_GL` with
:math:`H_0 = \begin{pmatrix}0&A\\A&0\end{pmatrix}`, :math:`L=\operatorname{diag}(\sigma_wB, I)` and
:math:`H_G = \begin{pmatrix}0&G\\G^\top&0\end{pmatrix}`. :math:`G` is (asymptotically) free from the diagonal matrices,
so it is free from them with amalgamation over the :math:`2\times2` block-diagonal algebra, with operator-valued
cumulants equal to its scalar cumulants times normalised traces (Nica-Shlyakhtenko-Speicher). :math:`G` is
R-diagonal, so the operator-valued R-transform of :math:`H_G` at :math:`\operatorname{diag}(P,Q)` is
:math:`\operatorname{diag}\bigl(\langle Q\rangle\varphi(\langle P\rangle\langle Q\rangle),\;
\langle P\rangle\varphi(\langle P\rangle\langle Q\rangle)\bigr)` with :math:`\varphi(t)=\sum_{n\ge1}
\kappa_{2n}t^{n-1}` built from the alternating free cumulants :math:`\kappa_{2n}(g,g^*,\dots)`: Ginibre (circular)
:math:`\kappa_2=1`, rest 0, so :math:`\varphi\equiv1`; Haar :math:`\kappa_{2n}=(-1)^{n-1}C_{n-1}` (Catalan), so
:math:`\varphi(t) = (\sqrt{1+4t}-1)/(2t)`, i.e. :math:`t\varphi^2+\varphi-1=0` with :math:`\varphi(0)=1`. The
subordination (Dyson) equation :math:`\mathcal G = (H_0 - s - L\,\mathcal R(L\mathcal GL)\,L)^{-1}` then decouples
into :math:`2\times2` blocks coupling row :math:`i` of the top block to column :math:`i` of the bottom block:

.. math:: \begin{pmatrix} g_{1,i} & \cdot\\ \cdot & g_{2,i}\end{pmatrix} =
          \begin{pmatrix} -s - b_i^2\alpha & a_i\\ a_i & -s-\beta\end{pmatrix}^{-1},\quad
          \alpha = \sigma_w^2\langle g_2\rangle\,\varphi,\quad \beta = \sigma_w^2\langle b^2g_1\rangle\,\varphi,\quad
          \varphi = \varphi\bigl(\sigma_w^2\langle b^2g_1\rangle\langle g_2\rangle\bigr)

(for Gaussian :math:`G` this is the quadratic vector equation of a matrix with variance profile
:math:`\sigma_w^2b_i^2/N`). With :math:`z = 1/s^2`, :math:`\alpha = s\,p`, :math:`\beta = s\,r`,
:math:`D_i = (1+b_i^2p)(1+r) - z a_i^2`, every :math:`s` cancels:

.. math:: p = -\sigma_w^2 z\,\varphi\,\Bigl\langle\frac{1+b^2p}{D}\Bigr\rangle,\quad
          r = -\sigma_w^2 z\,\varphi\,\Bigl\langle\frac{b^2(1+r)}{D}\Bigr\rangle,\quad
          \psi(z) = \Bigl\langle\frac{1+r}{D}\Bigr\rangle - 1,\quad
          \sigma_w^2z\Bigl\langle\frac{1+b^2p}{D}\Bigr\rangle\Bigl\langle\frac{b^2(1+r)}{D}\Bigr\rangle\varphi^2
          + \varphi - 1 = 0

(last equation for Haar; :math:`\varphi=1` for Gaussian). :class:`DeformedStep` solves these together with
:math:`\psi(z) = w` for the unknowns :math:`(z, p, r, \varphi)`, so :math:`\chi(w) = z`. Limits that the tests check:
:math:`a=0` reproduces the free product of the law of :math:`b^2` with Marchenko-Pastur (Gaussian) or with
:math:`\sigma_w^2` (Haar); :math:`b=0` gives the law of :math:`a^2`; the moments agree with the direct expansion
:math:`m_1 = \langle a^2\rangle + \sigma_w^2\langle b^2\rangle`, :math:`m_2 = \langle a^4\rangle +
2\sigma_w^2(\langle a^2b^2\rangle + \langle a^2\rangle\langle b^2\rangle) + \sigma_w^4(\langle b^4\rangle +
\kappa\langle b^2\rangle^2)` (:math:`\kappa=1` Gaussian, 0 Haar); and the density matches sampled matrices.

Discrete laws. A :class:`DiagonalLaw` or :class:`DeformedStep` with atoms is the exact large-N law of a matrix whose
coefficients take exactly those values. Where nothing broadens the atoms (a single :class:`DiagonalLaw` times point
masses) the density is a sum of spikes; ``eta`` (the relative imaginary part at which the density is evaluated,
a Cauchy smoothing of relative width ``eta``) can then be raised to show a smoothed version
(:mod:`mftrnn.theory.spectrum` uses the histogram of the atoms instead).

Limitation: a single :class:`DeformedStep` (no further factors) far below the lower edge of a spectrum with a gap
at 0 loses precision once :math:`|z|\,a^2 \gtrsim 10^{10}` (the :math:`O(1)` terms of :math:`D_i` fall below
round-off); the continuation then raises :class:`~mftrnn.ConvergenceError` (measured: fine down to
:math:`x\approx10^{-20}` for the minimalRNN step, failing at :math:`10^{-12}` for a Haar test law). The density
there is 0. Products of :math:`T` steps are not affected in the same way (:math:`z_{\rm step}\sim x^{-1/T}`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvergenceError, DomainError

__all__ = ["Factor", "MarchenkoPastur", "PointMass", "DiagonalLaw", "DeformedStep", "FreeProduct",
           "s_transform", "solve_w", "cauchy_transform", "density", "fuss_catalan_moments"]

# Convergence: a point is done once a full Newton step below the tolerance (relative to the unknowns) has been taken;
# with quadratic convergence the error after that step is about its square (~1e-14). Intermediate stages are converged
# as tightly as the final one: the physical-sign checks (Factor.accept) are only meaningful on a converged solution.
# With a loose stage tolerance (1e-3, before) a long step could stop early in the basin of another solution of the
# system whose signs had not yet turned; the next stages then stalled (measured: minimalRNN, Haar W, sigma_w = 2,
# mu_b = 3, T = 5, 12 of 54 grids np.geomspace(lo, 30, 1000) failed at points inside narrow components of the law near
# x ~ 1e-4 .. 6e-4; tests/test_spectral_branches.py). The cost is about one Newton iteration per stage.
_NEWTON_TOL = 1e-7
_STAGE_TOL = 1e-7
_PHYS_TOL = 1e-6  # relative tolerance of the sign conditions on physical solutions (round-off on the real axis)
_ROUNDOFF = 1e-14  # equilibrated residual that counts as zero
_MAX_NEWTON = 60  # Newton iterations per continuation stage
_STAGE_RATIO = 0.1  # eta shrinks by this factor in a first continuation step
_MAX_RATIO = 0.01  # ... and by at most this factor in any step
_STEP_NEWTON = 10  # Newton iterations allowed per continuation step
# a step whose corrected solution lies farther than this from its start (the predictor, or the last solution),
# relative to the size of each unknown, is retried at half the size: Newton converges to a solution near its start,
# and a long step can reach another solution of the system that still passes the sign checks. A safeguard: with the
# stage tolerance above it changed no value on 1000 points over [1e-6, 30] of the case above (not needed there).
_JUMP_TOL = 0.05
_BACKTRACK = 8  # step halvings of the line search
_MIN_STEP = 1e-4  # smallest step in log(eta) before giving up
_MAX_STEPS = 5000
_BRANCH_OFF = 10.0  # a point leaves the imaginary axis when eta reaches this multiple of x


def _c(x) -> np.ndarray:
    return np.asarray(x, dtype=complex)


class Factor:
    r"""A spectral law on :math:`[0,\infty)` given through :math:`\log\chi(w)`, possibly with hidden unknowns.

    Subclasses define ``n_hidden`` (extra complex unknowns :math:`H`, solved together with :math:`w`), ``moments()``
    (:math:`m_1, m_2`), ``init_hidden(w)`` (a start for small :math:`|w|`), ``log_chi(w, w1, H)`` returning
    :math:`(\log\chi, \partial_w\log\chi, \partial_H\log\chi)` and, if ``n_hidden > 0``, ``equations(w, w1, H)``
    returning :math:`(E, \partial_wE, \partial_HE)` with shapes ``(k, n)``, ``(k, n)``, ``(k, k, n)``. Both
    :math:`w` and ``w1`` :math:`=1+w` are passed, each to full relative precision (the solver's unknown is
    :math:`y = w/(1+w)`), so that a factor can evaluate its residuals without cancellation near :math:`w=0` (large
    :math:`x`) and near :math:`w=-1` (small :math:`x` where the support reaches 0).
    """

    n_hidden = 0

    def moments(self) -> tuple[float, float]:  # pragma: no cover - interface
        raise NotImplementedError

    def init_hidden(self, w: np.ndarray) -> np.ndarray:
        return np.zeros((self.n_hidden, np.size(w)), complex)

    def log_chi(self, w, w1, H):  # pragma: no cover - interface
        raise NotImplementedError

    def equations(self, w, w1, H):
        n = np.size(w)
        return np.zeros((0, n), complex), np.zeros((0, n), complex), np.zeros((0, 0, n), complex)

    def accept(self, H_old, H_new) -> np.ndarray:
        """Per column: whether a continuation step from ``H_old`` to ``H_new`` ended on the physical solution (the
        equations have other solutions, and a step can jump to one); default: always."""
        return np.ones(H_new.shape[1], bool)

    @property
    def m1(self) -> float:
        return self.moments()[0]

    @property
    def relative_variance(self) -> float:
        m1, m2 = self.moments()
        return m2 / m1 ** 2 - 1.0


def _positive(name, v) -> float:
    v = float(v)
    if not (np.isfinite(v) and v > 0):
        raise DomainError(f"{name} must be finite and positive, got {v!r}")
    return v


@dataclass(frozen=True)
class MarchenkoPastur(Factor):
    r""":math:`WW^\top` for a square :math:`W_{ij}\sim\mathcal N(0, s/N)`: :math:`S(w) = 1/(s(1+w))`,
    :math:`m_1 = s`, :math:`m_2 = 2s^2`. Its :math:`T`-fold free product is the Fuss-Catalan law (products of
    :math:`T` Ginibre matrices)."""

    s: float = 1.0

    def __post_init__(self):
        _positive("MarchenkoPastur scale s", self.s)

    def moments(self):
        return self.s, 2.0 * self.s ** 2

    def log_chi(self, w, w1, H):
        return (np.log(w) - np.log(self.s) - 2.0 * np.log(w1), 1.0 / w - 2.0 / w1,
                np.zeros((0, w.size), complex))


@dataclass(frozen=True)
class PointMass(Factor):
    r"""The law :math:`\delta_s` (e.g. :math:`WW^\top = s I` for :math:`W=\sqrt s\,O`, :math:`O` orthogonal):
    :math:`S = 1/s`, :math:`\chi(w) = w/(s(1+w))`."""

    s: float = 1.0

    def __post_init__(self):
        _positive("PointMass value s", self.s)

    def moments(self):
        return self.s, self.s ** 2

    def log_chi(self, w, w1, H):
        return np.log(w) - np.log(self.s) - np.log(w1), 1.0 / w - 1.0 / w1, np.zeros((0, w.size), complex)


def _weights(values, weights, name):
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise DomainError(f"{name}: no atoms")
    p = np.full(v.size, 1.0 / v.size) if weights is None else np.asarray(weights, dtype=float).ravel()
    if p.shape != v.shape:
        raise DomainError(f"{name}: {v.size} atoms but {p.size} weights")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(p)) and np.all(p >= 0) and p.sum() > 0):
        raise DomainError(f"{name}: atoms and weights must be finite, weights non-negative with positive sum")
    return v, p / p.sum()


@dataclass(frozen=True, eq=False)
class DiagonalLaw(Factor):
    r"""A law with atoms ``values`` :math:`\lambda_k\ge0` of probabilities ``weights`` :math:`p_k` (uniform if None).

    One hidden unknown :math:`z=\chi(w)`, defined by :math:`\psi(z) = \sum_kp_k\,z\lambda_k/(1-z\lambda_k) = w`, with
    :math:`\psi'(z) = \sum_kp_k\lambda_k/(1-z\lambda_k)^2`; :math:`\log\chi = \log z`.
    """

    values: np.ndarray = field(default_factory=lambda: np.ones(1))
    weights: np.ndarray | None = None

    def __post_init__(self):
        v, p = _weights(self.values, self.weights, "DiagonalLaw")
        if np.any(v < 0):
            raise DomainError("DiagonalLaw: atoms must be non-negative (eigenvalues of X X^T)")
        keep = p > 0
        object.__setattr__(self, "values", v[keep])
        object.__setattr__(self, "weights", p[keep])
        if self.moments()[0] <= 0:
            raise DomainError("DiagonalLaw: the law is concentrated at 0 (S-transform undefined)")

    n_hidden = 1

    def moments(self):
        return float(self.weights @ self.values), float(self.weights @ self.values ** 2)

    def init_hidden(self, w):
        return (_c(w) / self.m1).reshape(1, -1)

    def log_chi(self, w, w1, H):
        z = H[0]
        d = np.zeros((1, z.size), complex)
        d[0] = 1.0 / z
        return np.log(z), np.zeros(z.size, complex), d

    def accept(self, H_old, H_new):
        r""":math:`\chi(w)` of a positive law lies in the closed lower half plane (as :math:`w` does)."""
        z = H_new[0]
        return z.imag <= _PHYS_TOL * np.abs(z)

    def equations(self, w, w1, H):
        z = H[0]
        inv = 1.0 / (1.0 - z[:, None] * self.values[None, :])  # (n, K)
        pl = self.weights * self.values
        # psi - w = z <l/(1 - z l)> - w, or, near w = -1, (1 + psi) - (1 + w) = <1/(1 - z l)> - w1: the form without
        # cancellation in each regime
        near = np.abs(w1) < 0.5
        E = np.where(near, inv @ self.weights - w1, z * (inv @ pl) - w)
        dpsi = (inv * inv) @ pl
        n = z.size
        return E.reshape(1, n), -np.ones((1, n), complex), dpsi.reshape(1, 1, n)


@dataclass(frozen=True, eq=False)
class DeformedStep(Factor):
    r"""The law of :math:`XX^\top`, :math:`X = \operatorname{diag}(a) + \sigma_w\operatorname{diag}(b)\,G`, with
    :math:`(a_k, b_k)` atoms of probabilities ``weights`` and :math:`G` Ginibre (:math:`G_{ij}\sim\mathcal N(0,1/N)`)
    or Haar orthogonal (``orthogonal=True``). Hidden unknowns :math:`(z, p, r, \varphi)` of the module docstring's
    equations; :math:`\chi(w) = z`.
    """

    a: np.ndarray = field(default_factory=lambda: np.zeros(1))
    b: np.ndarray = field(default_factory=lambda: np.ones(1))
    weights: np.ndarray | None = None
    sigma_w: float = 1.0
    orthogonal: bool = False

    n_hidden = 4

    def __post_init__(self):
        a, p = _weights(self.a, self.weights, "DeformedStep")
        b = np.asarray(self.b, dtype=float).ravel()
        if b.shape != a.shape or not np.all(np.isfinite(b)):
            raise DomainError(f"DeformedStep: a and b must be finite arrays of one shape, got {a.shape}, {b.shape}")
        s = float(self.sigma_w)
        if not (np.isfinite(s) and s >= 0):
            raise DomainError(f"DeformedStep: sigma_w must be finite and non-negative, got {self.sigma_w!r}")
        keep = p > 0
        object.__setattr__(self, "a", a[keep])
        object.__setattr__(self, "b", b[keep])
        object.__setattr__(self, "weights", p[keep])
        object.__setattr__(self, "sigma_w", s)
        object.__setattr__(self, "orthogonal", bool(self.orthogonal))
        object.__setattr__(self, "_a2", self.a ** 2)
        object.__setattr__(self, "_b2", self.b ** 2)
        p, a2, b2 = self.weights, self._a2, self._b2
        object.__setattr__(self, "_cols1", np.stack([p, p * b2, p * a2], 1))
        object.__setattr__(self, "_cols2", np.stack([p, p * b2, p * b2 * b2, p * a2, p * a2 * b2, p * a2 * a2], 1))
        if self.moments()[0] <= 0:
            raise DomainError("DeformedStep: X = 0 almost surely (S-transform undefined)")

    def moments(self):
        p, a2, b2, s = self.weights, self._a2, self._b2, self.sigma_w ** 2
        Ea2, Eb2 = p @ a2, p @ b2
        m1 = Ea2 + s * Eb2
        m2 = (p @ a2 ** 2 + 2 * s * (p @ (a2 * b2) + Ea2 * Eb2)
              + s ** 2 * (p @ b2 ** 2 + (0.0 if self.orthogonal else 1.0) * Eb2 ** 2))
        return float(m1), float(m2)

    def init_hidden(self, w):
        w = _c(w)
        z = w / self.m1
        s2 = self.sigma_w ** 2
        return np.stack([z, -s2 * z, -s2 * z * (self.weights @ self._b2), np.ones_like(z)])

    def log_chi(self, w, w1, H):
        z = H[0]
        d = np.zeros((4, z.size), complex)
        d[0] = 1.0 / z
        return np.log(z), np.zeros(z.size, complex), d

    def accept(self, H_old, H_new):
        r"""The physical solution: at the Hermitisation's spectral parameter :math:`s = z^{-1/2}` (upper half plane, as
        :math:`z` is in the lower one) the diagonal resolvent entries :math:`g_{1,i} = -(1+r)/(sD_i)`,
        :math:`g_{2,i} = -(1+b_i^2p)/(sD_i)` of a Hermitian matrix have :math:`\operatorname{Im}\ge0`, and so do
        :math:`\alpha = sp` and :math:`\beta = sr` (the subordination point :math:`s+\Sigma` lies above :math:`s`).
        Haar case, in addition: :math:`t\varphi^2+\varphi-1=0` has two roots, :math:`\varphi` and
        :math:`-1/t-\varphi`; the physical one starts at :math:`\varphi(0)=1` and is continued continuously (it does
        cross the cut of the principal square root, so "principal root" is no criterion): the new :math:`\varphi`
        must be the root nearer to the old one."""
        z, p, r, phi = H_new
        with np.errstate(all="ignore"):
            s = np.sqrt(1.0 / z)
            D = (1.0 + p[:, None] * self._b2[None, :]) * (1.0 + r)[:, None] - z[:, None] * self._a2[None, :]
            g1 = -(1.0 + r)[:, None] / (s[:, None] * D)
            g2 = -(1.0 + p[:, None] * self._b2[None, :]) / (s[:, None] * D)
            ok = (np.all(g1.imag >= -_PHYS_TOL * np.abs(g1), 1) & np.all(g2.imag >= -_PHYS_TOL * np.abs(g2), 1)
                  & ((s * p).imag >= -_PHYS_TOL * np.abs(s * p)) & ((s * r).imag >= -_PHYS_TOL * np.abs(s * r)))
            if self.orthogonal:
                old = H_old[3]
                t = (1.0 - phi) / (phi * phi)
                ok &= ~(np.abs((-1.0 / t - phi) - old) < np.abs(phi - old))
        return ok

    def equations(self, w, w1, H):
        z, p, r, phi = H
        s2 = self.sigma_w ** 2
        nr = 1.0 + r
        # D = (1 + p b^2)(1 + r) - z a^2 per atom; f = 1/D. All sums below are <b^j a^k f> or <... f^2>
        f = 1.0 / ((nr * p)[:, None] * self._b2[None, :] + (nr[:, None] - z[:, None] * self._a2[None, :]))
        f0, fb, fa = (f @ self._cols1).T  # <f>, <b^2 f>, <a^2 f>
        # <f^2>, <b^2 f^2>, <b^4 f^2>, <a^2 f^2>, <a^2 b^2 f^2>, <a^4 f^2>
        g0, gb, gbb, ga, gab, gaa = ((f * f) @ self._cols2).T
        # with m = 1 + p b^2:  <m g> = <g> + p <b^2 g>,  <m^2 g> = <g> + 2p <b^2 g> + p^2 <b^4 g>
        S1, S2 = f0 + p * fb, nr * fb  # <m f>, <b^2 (1+r) f>
        # psi = <(1+r) f> - 1 = <((1+r) - D) f> = z <a^2 f> - (1+r) p <b^2 f>  (no cancellation at small z)
        psi = z * fa - nr * p * fb
        # derivatives, from d(c f) = dc f - c f^2 dD with dD/dp = b^2 (1+r), dD/dr = m, dD/dz = -a^2
        mbf2 = gb + p * gbb  # <m b^2 f^2>
        S1_p = fb - nr * mbf2
        S1_r = -(g0 + 2 * p * gb + p * p * gbb)
        S1_z = ga + p * gab
        S2_p = -nr * nr * gbb
        S2_r = fb - nr * mbf2
        S2_z = nr * gab
        psi_z = fa + z * gaa - nr * p * gab
        psi_p = -z * nr * gab - nr * fb + nr * nr * p * gbb
        psi_r = -z * (ga + p * gab) - p * fb + nr * p * (gb + p * gbb)
        n = z.size
        E = np.empty((4, n), complex)
        dE = np.zeros((4, 4, n), complex)  # [equation, unknown (z, p, r, phi)]
        E[0] = p + s2 * z * S1 * phi
        dE[0, 0] = s2 * (S1 + z * S1_z) * phi
        dE[0, 1] = 1.0 + s2 * z * S1_p * phi
        dE[0, 2] = s2 * z * S1_r * phi
        dE[0, 3] = s2 * z * S1
        E[1] = r + s2 * z * S2 * phi
        dE[1, 0] = s2 * (S2 + z * S2_z) * phi
        dE[1, 1] = s2 * z * S2_p * phi
        dE[1, 2] = 1.0 + s2 * z * S2_r * phi
        dE[1, 3] = s2 * z * S2
        # near w = -1 use (1 + psi) - (1 + w) = <(1+r) f> - w1 instead (no cancellation there)
        E[2] = np.where(np.abs(w1) < 0.5, nr * f0 - w1, psi - w)
        dE[2, 0], dE[2, 1], dE[2, 2] = psi_z, psi_p, psi_r
        if self.orthogonal:
            t = s2 * z * S1 * S2
            E[3] = t * phi ** 2 + phi - 1.0
            dE[3, 0] = s2 * (S1 * S2 + z * (S1_z * S2 + S1 * S2_z)) * phi ** 2
            dE[3, 1] = s2 * z * (S1_p * S2 + S1 * S2_p) * phi ** 2
            dE[3, 2] = s2 * z * (S1_r * S2 + S1 * S2_r) * phi ** 2
            dE[3, 3] = 2.0 * t * phi + 1.0
        else:
            E[3] = phi - 1.0
            dE[3, 3] = 1.0
        dEw = np.zeros((4, n), complex)
        dEw[2] = -1.0
        return E, dEw, dE


@dataclass(frozen=True)
class FreeProduct:
    r"""Free product of factors raised to integer powers: :math:`S = \prod_f S_f^{T_f}`.

    ``terms``: a sequence of ``(factor, power)``. :math:`\log S(w) = \sum_fT_f\,(\log\chi_f(w) + \log(1+w) - \log w)`.
    Mean :math:`\prod_f m_{1,f}^{T_f}`, relative variance :math:`\sum_fT_fr_f`.
    """

    terms: tuple

    def __post_init__(self):
        terms = tuple((f, int(k)) for f, k in self.terms)
        if not terms:
            raise DomainError("FreeProduct needs at least one factor")
        for f, k in terms:
            if not isinstance(f, Factor):
                raise DomainError(f"FreeProduct: {f!r} is not a Factor")
            if k < 1:
                raise DomainError(f"FreeProduct: powers must be integers >= 1, got {k}")
        object.__setattr__(self, "terms", terms)

    @property
    def n_hidden(self) -> int:
        return sum(f.n_hidden for f, _ in self.terms)

    @property
    def log_mean(self) -> float:
        r""":math:`\ln m_1` (finite where the mean itself under- or overflows, e.g. many steps)."""
        return float(sum(k * math.log(f.m1) for f, k in self.terms))

    @property
    def mean(self) -> float:
        return float(np.prod([f.m1 ** k for f, k in self.terms]))

    def check_range(self):
        """:class:`~mftrnn.DomainError` when the law's scale (its mean) lies outside double precision's range, where
        no density can be computed (e.g. a product of many contracting steps)."""
        lm = self.log_mean
        if not -650.0 < lm < 650.0:
            raise DomainError(f"the spectrum's mean m1 = 10^{lm / math.log(10):.0f} is outside the range of double "
                              f"precision; reduce the number of steps T")

    @property
    def relative_variance(self) -> float:
        return float(sum(k * f.relative_variance for f, k in self.terms))

    def moments(self) -> tuple[float, float]:
        """(m1, m2) of the product law."""
        m1 = self.mean
        return m1, m1 ** 2 * (1.0 + self.relative_variance)

    def _slices(self):
        out, i = [], 1
        for f, _ in self.terms:
            out.append(slice(i, i + f.n_hidden))
            i += f.n_hidden
        return out

    def init_unknowns(self, w) -> np.ndarray:
        """Unknowns ``(y, H_1, ...)`` with :math:`y = w/(1+w)`, from the small-:math:`w` starts of the factors."""
        w = _c(w).ravel()
        return np.concatenate([(w / (1.0 + w))[None, :]] + [f.init_hidden(w) for f, _ in self.terms if f.n_hidden],
                              axis=0)

    def log_s(self, U):
        r""":math:`\log S = \sum_fT_f(\log\chi_f - \log y)` and its gradient with respect to the unknowns
        ``U = (y, H_1, ...)``, :math:`y = w/(1+w)`."""
        y = U[0]
        w, w1, dw = _w_of_y(y)
        L = np.zeros(y.size, complex)
        dL = np.zeros(U.shape, complex)
        ly = np.log(y)
        for (f, k), sl in zip(self.terms, self._slices()):
            lc, dlc_w, dlc_H = f.log_chi(w, w1, U[sl])
            L += k * (lc - ly)
            dL[0] += k * (dlc_w * dw - 1.0 / y)
            dL[sl] += k * dlc_H
        return L, dL

    def system(self, U, log_zeta):
        r"""Residuals ``(k, n)`` and Jacobians ``(n, k, k)`` of the inversion system at ``U = (y, H_1, ...)``:
        :math:`\log\zeta + \log y + \log S(w) = 0` (i.e. :math:`\zeta wS(w) = 1+w`, as :math:`y = w/(1+w)`) and
        the factors' equations."""
        y = U[0]
        L, dL = self.log_s(U)
        F0 = log_zeta + np.log(y) + L
        J0 = dL
        J0[0] += 1.0 / y
        n_u, n = U.shape
        F = np.empty((n_u, n), complex)
        J = np.zeros((n, n_u, n_u), complex)
        F[0] = F0
        J[:, 0, :] = J0.T
        w, w1, dw = _w_of_y(y)
        for (f, _), sl in zip(self.terms, self._slices()):
            if not f.n_hidden:
                continue
            E, dEw, dEH = f.equations(w, w1, U[sl])
            F[sl] = E
            J[:, sl, 0] = (dEw * dw).T
            J[:, sl, sl] = np.moveaxis(dEH, -1, 0)
        return F, J

    def accept(self, U_old, U_new) -> np.ndarray:
        """Per column: every factor accepts the step from ``U_old`` to ``U_new`` (:meth:`Factor.accept`)."""
        ok = np.ones(U_new.shape[1], bool)
        for (f, _), sl in zip(self.terms, self._slices()):
            if f.n_hidden:
                ok &= f.accept(U_old[sl], U_new[sl])
        return ok

    def hidden_system(self, w, w1, H):
        """The factors' equations alone at fixed ``w`` (unknowns ``H``, stacked)."""
        n = H.shape[1]
        F = np.empty(H.shape, complex)
        J = np.zeros((n, H.shape[0], H.shape[0]), complex)
        for (f, _), sl in zip(self.terms, self._slices()):
            if f.n_hidden:
                sl = slice(sl.start - 1, sl.stop - 1)
                E, _, dEH = f.equations(w, w1, H[sl])
                F[sl] = E
                J[:, sl, sl] = np.moveaxis(dEH, -1, 0)
        return F, J


def _w_of_y(y):
    r""":math:`w = y/(1-y)`, :math:`1+w = 1/(1-y)` (both to full relative precision) and :math:`dw/dy = (1+w)^2`."""
    w1 = 1.0 / (1.0 - y)
    return y * w1, w1, w1 * w1


def _as_product(S) -> FreeProduct:
    if isinstance(S, FreeProduct):
        return S
    if isinstance(S, Factor):
        return FreeProduct(((S, 1),))
    raise DomainError(f"expected a Factor or a FreeProduct, got {type(S).__name__}")


def _newton(system, U, what, *, upper_guard: bool = True, max_iter=_MAX_NEWTON, tol=_NEWTON_TOL, strict=True):
    """Damped vectorised Newton for ``system(U, act) -> (F (k, n), J (n, k, k))`` on the columns ``act`` of ``U``.

    Backtracking halves a step that gives a non-finite or clearly larger residual, or (``upper_guard``) that moves
    ``U[0]`` (the outer :math:`w`) into the upper half plane. A column is converged once it has taken an undamped step
    below ``tol`` relative to the unknowns (its error is then about the step squared), or when the Newton step is at
    round-off level (1e-12) whether or not the line search, which then sees round-off residuals, accepted it, or when
    the equilibrated residual is at round-off level (then the point is kept as it is). The
    evaluation at an accepted point is reused for the next step. Raises :class:`~mftrnn.ConvergenceError` if some
    column does not converge in ``max_iter`` steps; with ``strict=False`` returns ``(U, converged)`` instead.
    """
    n = U.shape[1]
    act = np.arange(n)
    with np.errstate(all="ignore"):
        F, J = system(U, act)
    for _ in range(max_iter):
        Ua = U[:, act]
        step, scaled_res, rs = _solve_scaled(J, F, Ua)
        # merit function of the line search: the equilibrated residual, with the row scales of the current point (the
        # plain residual mixes equations whose terms differ by orders of magnitude)
        res0 = np.max(np.abs(F) * rs, 0)
        ok_step = np.all(np.isfinite(step), 0)
        step = np.where(ok_step, step, 0.0)
        lam = np.ones(act.size)
        trial = np.arange(act.size)  # columns (of act) whose step is being tried
        newU, Fn, Jn = Ua.copy(), F.copy(), J.copy()
        for _k in range(_BACKTRACK):
            cand = Ua[:, trial] + lam[trial] * step[:, trial]
            with np.errstate(all="ignore"):
                Fc, Jc = system(cand, act[trial])
            res1 = np.max(np.abs(Fc) * rs[:, trial], 0)
            bad = ~np.isfinite(res1) | (res1 > 1.5 * res0[trial] + 1e-14)
            if upper_guard:
                bad |= cand[0].imag > 1e-6 * np.abs(cand[0])
            good = trial[~bad]
            newU[:, good], Fn[:, good], Jn[good] = cand[:, ~bad], Fc[:, ~bad], Jc[~bad]
            trial = trial[bad]
            if trial.size == 0:
                break
            lam[trial] *= 0.5
        scale = np.maximum(np.abs(Ua), 1e-290)
        rel = np.max(np.abs(step) / scale, axis=0)
        tol_a = tol[act] if np.ndim(tol) else tol
        conv = (ok_step & (((lam == 1.0) & (rel <= tol_a)) | (rel <= 1e-12))) | (res0 == 0)
        # residual at round-off level: done, keep the point (a step from noise through an ill-conditioned J is noise)
        noise = scaled_res <= _ROUNDOFF
        newU[:, noise] = Ua[:, noise]
        conv |= noise
        U[:, act] = newU
        keep = ~conv
        act, F, J = act[keep], Fn[:, keep], Jn[keep]
        if act.size == 0:
            return U if strict else (U, np.ones(n, bool))
    if not strict:
        done = np.ones(n, bool)
        done[act] = False
        return U, done
    raise ConvergenceError(f"{what}: Newton did not converge at {act.size} of {n} points")


def _solve_scaled(J, F, U):
    """Newton steps ``-J^{-1} F`` per column, with J equilibrated: columns scaled by the magnitudes of the unknowns,
    rows by their largest entry (the unknowns can differ by many orders of magnitude far below a spectrum). Also
    returns the equilibrated residual (each equation relative to the size of its terms, ``|F_i| / max_j |J_ij U_j|``)
    per column, and the row scales ``1 / max_j |J_ij U_j|`` (k, n)."""
    with np.errstate(all="ignore"):
        cs = np.maximum(np.abs(U), 1e-300).T  # (n, k)
        Js = J * cs[:, None, :]
        rs = 1.0 / np.maximum(np.max(np.abs(Js), axis=2), 1e-300)  # (n, k)
        Js = Js * rs[:, :, None]
        Fs = F.T * rs
        try:
            y = np.linalg.solve(Js, Fs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:  # singular somewhere: point by point
            y = np.full_like(Fs, np.nan)
            for j in range(Fs.shape[0]):
                try:
                    y[j] = np.linalg.solve(Js[j], Fs[j])
                except np.linalg.LinAlgError:
                    pass
        return -(y * cs).T, np.max(np.abs(Fs), axis=1), rs.T


def s_transform(S, w, *, n_steps: int = 40) -> np.ndarray:
    r""":math:`S(w)` of a factor or product at points ``w`` (array; complex, or real near 0).

    Hidden unknowns are found by continuation along the ray :math:`t\,w`, :math:`t` from :math:`10^{-3}` to 1
    (geometrically), from the small-:math:`w` start; for real :math:`w` near 0 (inside the disc of convergence of
    :math:`\chi`) the result is real.
    """
    prod = _as_product(S)
    w = _c(w)
    shape = w.shape
    w = w.ravel()
    if np.any(w == 0) or np.any(w == -1) or not np.all(np.isfinite(w)):
        raise DomainError("S(w) needs finite w other than 0 and -1")
    ts = np.geomspace(1e-3, 1.0, n_steps)
    U = prod.init_unknowns(ts[0] * w)
    for t in ts:
        wt = t * w
        U[0] = wt / (1.0 + wt)
        if prod.n_hidden:
            def system(H, act, w0=wt, w1=1.0 + wt):
                return prod.hidden_system(w0[act], w1[act], H)
            U[1:] = _newton(system, U[1:].copy(), "s_transform", upper_guard=False)
    L, _ = prod.log_s(U)
    return np.exp(L).reshape(shape)


def _solve(prod, x, eta, eta0):
    r"""Unknowns ``(y, H...)`` at :math:`\zeta = x(1 + i\,\mathrm{eta})` (flat ``x``), by continuation in eta.

    Each point lowers :math:`\log\eta` from :math:`\log\eta_0` to :math:`\log(\mathrm{eta}\,x)` in steps of its
    own size: a step starts from the geometric predictor (:func:`_predict`) and is corrected by at most
    ``_STEP_NEWTON`` Newton iterations to full accuracy (intermediate stages too, so that the sign checks see the
    converged solution); a step that does not converge is retried from the last solution without the
    predictor, then at half the size (so is a step after which a factor reports a non-physical solution,
    :meth:`Factor.accept`); a step whose solution moved more than ``_JUMP_TOL`` (relative, per unknown) from its start
    is retried at half the size; a step that converges is followed by one 1.5 times longer (at most a factor 100
    in eta). While :math:`\eta > 10x` a point is close to the
    imaginary axis and follows, to within :math:`x/\eta`, the solution at :math:`\zeta=i\eta`, which one extra column
    (:math:`x=0`) computes for all of them; a point starts from the last state of that column with :math:`\eta\ge10x`.
    """
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise DomainError("spectral points x must be finite and positive")
    if not (np.isfinite(eta) and 0 < eta < 1):
        raise DomainError(f"eta (relative imaginary part) must lie in (0, 1), got {eta!r}")
    prod.check_range()
    m1, m2 = prod.moments()
    # the start depends on the law only (not on the points asked for), and so does every point's path below: each
    # point follows its own continuation, and the axis column is not cut short at the lowest point, so the value at
    # a point does not depend on which other points are computed with it
    e0 = float(eta0) if eta0 is not None else 10.0 * m2 / m1
    if not (np.isfinite(e0) and e0 > 0):
        raise DomainError(f"eta0 must be finite and positive, got {eta0!r}")
    n = x.size
    xa = np.concatenate([x, [0.0]])
    l_branch = np.log(_BRANCH_OFF * x)
    l_stop = l_branch.min()  # the axis column runs (in its own steps) until it has passed every point's branch-off
    # a point at or above e0 / 10 starts on its own at eta = max(e0, 10 x) (far above it: w ~ m1 / zeta is accurate)
    e0s = np.maximum(e0, np.concatenate([_BRANCH_OFF * x, [0.0]]))
    l_fin = np.minimum(np.concatenate([np.log(eta * x), [l_stop - 1e3]]), np.log(e0s))
    U = prod.init_unknowns(m1 / (xa + 1j * e0s))
    U_prev = np.full_like(U, np.nan)
    l_cur = np.log(e0s)
    l_prev = np.full(n + 1, np.nan)
    dl = np.full(n + 1, math.log(_STAGE_RATIO))
    use_pred = np.ones(n + 1, bool)
    started = np.concatenate([_BRANCH_OFF * x >= e0, [True]])
    done = np.zeros(n + 1, bool)
    done[n] = l_cur[n] <= l_stop
    history = [(l_cur[n], U[:, n].copy(), l_prev[n], U_prev[:, n].copy(), dl[n])]  # states of the axis column
    for _ in range(_MAX_STEPS):
        # points passed by the axis column start from its last state with eta >= 10 x
        new = np.nonzero(~started[:n] & (l_branch >= l_cur[n]))[0]
        for j in new:
            lh, Uh, lph, Uph, dlh = next(h for h in reversed(history) if h[0] >= l_branch[j])
            U[:, j], U_prev[:, j], l_cur[j], l_prev[j], dl[j] = Uh, Uph, lh, lph, dlh
            use_pred[j] = True
        started[new] = True
        act = np.nonzero(started & ~done)[0]
        if not started[:n].all() and done[n]:
            raise ConvergenceError("free multiplicative inversion: the imaginary-axis column ended too early")
        if act.size == 0:
            break
        l_new = np.maximum(l_cur[act] + dl[act], l_fin[act])
        final = l_new <= l_fin[act]
        tol = np.where(final, _NEWTON_TOL, _STAGE_TOL)
        start = np.where(use_pred[act][None, :], _predict(U[:, act], U_prev[:, act], l_prev[act], l_cur[act], l_new),
                         U[:, act])
        log_zeta = np.log(xa[act] + 1j * np.exp(l_new))
        V, ok = _newton(lambda W_, a_, lz=log_zeta: prod.system(W_, lz[a_]), start, "continuation step", tol=tol,
                        max_iter=_STEP_NEWTON, strict=False)
        ok &= prod.accept(U[:, act], V)
        with np.errstate(all="ignore"):
            # distance per unknown relative to its size (the outer one also relative to 1 - y = 1/(1+w))
            d = np.abs(V - start)
            jump = np.maximum(np.max(d / np.maximum(np.maximum(np.abs(start), np.abs(V)), 1e-300), axis=0),
                              d[0] / np.abs(1.0 - start[0]))
        far = ok & ~(jump <= _JUMP_TOL)
        ok &= ~far
        good, bad = act[ok], act[~ok]
        U_prev[:, good], l_prev[good] = U[:, good], l_cur[good]
        U[:, good], l_cur[good] = V[:, ok], l_new[ok]
        done[good[final[ok]]] = True
        if ok[-1] and act[-1] == n:
            history.append((l_cur[n], U[:, n].copy(), l_prev[n], U_prev[:, n].copy(), dl[n]))
            done[n] = l_cur[n] <= l_stop
        dl[good] = np.maximum(dl[good] * 1.5, math.log(_MAX_RATIO))
        use_pred[good] = True
        # a failed step is retried without the predictor, then with half the step; a step that moved too far is
        # retried at half the size (with the predictor)
        far_j = act[far]
        halve = np.union1d(bad[~use_pred[bad]], far_j)
        dl[halve] *= 0.5
        flip = np.setdiff1d(bad, far_j)
        use_pred[flip] = ~use_pred[flip]
        use_pred[far_j] = True
        if np.any(np.abs(dl[bad]) < _MIN_STEP):
            k = np.count_nonzero(np.abs(dl[bad]) < _MIN_STEP)
            xs_bad = xa[bad[np.abs(dl[bad]) < _MIN_STEP]]
            xs_bad = xs_bad[xs_bad > 0]
            where = f" (x = {xs_bad.min():.3g} ... {xs_bad.max():.3g})" if xs_bad.size else " (imaginary axis)"
            raise ConvergenceError(f"free multiplicative inversion: continuation stalled at {k} of {n} points{where}")
    else:
        raise ConvergenceError("free multiplicative inversion: too many continuation steps")
    return U[:, :n]


def _predict(U, U_prev, le_prev, le_cur, le_new):
    r"""Predictor for the next stage: geometric extrapolation in :math:`\log\eta`,
    :math:`U_{new} = U\,(U/U_{prev})^{\Delta_{new}/\Delta_{prev}}`, per unknown.

    Far below a spectrum (or in a gap) :math:`1+w\propto\eta` and several unknowns scale like :math:`1/\eta`; a tenfold
    step in :math:`\eta` is then outside the basin of Newton's method for such unknowns, while the geometric predictor
    is exact for them. Components whose ratio is not finite or changes by more than a factor 100 keep their value."""
    with np.errstate(all="ignore"):
        frac = (le_new - le_cur) / (le_cur - le_prev)
        lr = np.log(U / U_prev)
        ok = np.isfinite(lr) & (np.abs(lr) < math.log(100.0)) & np.isfinite(frac)[None, :]
        pred = U * np.exp(np.where(ok, lr, 0.0) * np.where(np.isfinite(frac), frac, 0.0)[None, :])
    return np.where(ok & np.isfinite(pred), pred, U)


def solve_w(S, x, *, eta: float = 1e-10, eta0: float | None = None) -> np.ndarray:
    r""":math:`w = \psi(1/\zeta)` at :math:`\zeta = x(1 + i\,\mathrm{eta})` for ``x > 0`` (array, any shape), on
    the physical branch, by continuation in the imaginary part (module docstring).

    ``eta0``: the starting imaginary part (default :math:`10\max(m_2/m_1, \max x)`, above the bulk of the
    spectrum). Raises :class:`~mftrnn.ConvergenceError` if a stage does not converge.
    """
    prod = _as_product(S)
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return np.zeros(x.shape, complex)
    y = _solve(prod, x.ravel(), eta, eta0)[0]
    return (y / (1.0 - y)).reshape(x.shape)


def cauchy_transform(S, x, *, eta: float = 1e-10) -> np.ndarray:
    r""":math:`G(\zeta) = (1 + w)/\zeta` at :math:`\zeta = x(1 + i\,\mathrm{eta})`."""
    prod = _as_product(S)
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return np.zeros(x.shape, complex)
    y = _solve(prod, x.ravel(), eta, None)[0]
    return (1.0 / (1.0 - y) / (x.ravel() * (1 + 1j * eta))).reshape(x.shape)


def density(S, x, *, eta: float = 1e-10) -> np.ndarray:
    r"""Spectral density :math:`\rho(x) = -\operatorname{Im}G(x+i0)/\pi` of the law with S-transform ``S``
    (a :class:`Factor` or :class:`FreeProduct`) at points ``x > 0`` (any shape).

    Computed as :math:`-\operatorname{Im}(1+w)/(\pi x)` from :math:`w` solved at :math:`\zeta = x(1+i\,\mathrm{eta})`:
    the explicit :math:`1/\zeta` of :math:`G=(1+w)/\zeta` is replaced by :math:`1/x`, so outside the support the
    result is :math:`O(\mathrm{eta})` instead of carrying the Lorentzian tail :math:`\eta/(\pi x)` of the whole mass.
    A clearly negative value (the solver off the physical branch) raises :class:`~mftrnn.ConvergenceError`; round-off
    negatives are set to 0.
    """
    prod = _as_product(S)
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return np.zeros(x.shape)
    y = _solve(prod, x.ravel(), eta, None)[0]
    xr = -(1.0 / (1.0 - y)).imag / np.pi  # x rho(x) = -Im(1 + w)/pi
    if np.any(xr < -1e-8 * max(np.max(np.abs(xr)), 1e-300)):
        raise ConvergenceError("negative spectral density: the solver left the physical branch")
    return (np.maximum(xr, 0.0) / x.ravel()).reshape(x.shape)


def fuss_catalan_moments(T: int, kmax: int) -> np.ndarray:
    r"""Moments :math:`m_k = \binom{(T+1)k}{k}/(Tk+1)`, :math:`k=0..k_{max}`, of the Fuss-Catalan law (squared
    singular values of a product of :math:`T` Ginibre matrices, :math:`G_{ij}\sim\mathcal N(0,1/N)`)."""
    from math import comb

    return np.array([comb((T + 1) * k, k) / (T * k + 1) for k in range(kmax + 1)], dtype=float)

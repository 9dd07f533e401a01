r"""Full spectral density of :math:`JJ^\top` for one step of a gated cell (``nn.LSTM``, ``nn.GRU``), Gaussian or
Haar-orthogonal recurrent weights, by the matrix Dyson equation of the Hermitisation.

**The matrix.** :mod:`mftrnn.theory.gated_jacobian` writes the state-to-state Jacobian (states stacked, :math:`SN`
rows) as :math:`J = E + \sum_k L_kW_kR_k`: per unit :math:`i` an :math:`S\times S` block :math:`e_i`, a column
:math:`l_{k,i}` and a row :math:`r_{k,i}` (:math:`S` entries) per field :math:`k`, and independent Gaussian
:math:`W_k` (entries of variance :math:`s_k/N`, :math:`s_k = \sigma_{w,K}^2` of the field's gate), or
:math:`W_k = \sqrt{s_k}\,O_k` with independent Haar orthogonal :math:`O_k` (``orthogonal=True``, section *Haar
W* below), independent of the coefficients (the untied mean field's assumption); the coefficients are i.i.d. over
units with their mean-field law.

**Hermitisation.** :math:`H = \begin{pmatrix}0&J\\J^\top&0\end{pmatrix}` has eigenvalues :math:`\pm\sigma_j`
(the singular values of :math:`J`), and its resolvent :math:`\mathcal G = (H - s)^{-1}` has the top-left block
:math:`\mathcal G_{11} = s\,(JJ^\top - s^2)^{-1}`. For Gaussian :math:`W_k` the large-:math:`N` resolvent solves the
matrix Dyson equation :math:`\mathcal G = (H_0 - s - \Sigma[\mathcal G])^{-1}`, with :math:`H_0` the Hermitisation
of :math:`E` and :math:`\Sigma[\mathcal G] = \sum_k\mathbb E_{W_k}[X_k\mathcal GX_k]`, :math:`X_k` the
Hermitisation of :math:`L_kW_kR_k` (the term :math:`\mathbb E[W M W] = (s/N) M^\top` of a real :math:`W` is
:math:`O(1/N)` and dropped). :math:`\mathbb E[W M W^\top] = (s/N)\operatorname{tr}M\,I` makes the self-energy block
diagonal per unit:

.. math:: \Sigma_{11,i} = \sum_k s_k\beta_k\,l_{k,i}l_{k,i}^\top,\quad
          \Sigma_{22,i} = \sum_k s_k\alpha_k\,r_{k,i}r_{k,i}^\top,\quad
          \alpha_k = \langle l_k^\top\mathcal G_{11}l_k\rangle,\quad
          \beta_k = \langle r_k^\top\mathcal G_{22}r_k\rangle,

with :math:`\langle\cdot\rangle` the average over units and :math:`\mathcal G_i = \begin{pmatrix}-s-\Sigma_{11,i} &
e_i\\ e_i^\top & -s-\Sigma_{22,i}\end{pmatrix}^{-1}` the unit's :math:`2S\times2S` block of the resolvent.

**Groups of fields.** Fields whose rows :math:`r_k` are the same function (every field of ``nn.LSTM``, :math:`r_k =
(0, 1)`: all gates read :math:`h`; every field of ``nn.GRU``, :math:`r_k = 1`) enter only through
:math:`T_{g,i} = \sum_{k\in g}s_k\,l_{k,i}l_{k,i}^\top` and :math:`\tau_g = \sum_{k\in g}s_k\alpha_k =
\langle\operatorname{tr}T_g\mathcal G_{11}\rangle`: the :math:`2K` unknowns reduce exactly to two per group,
:math:`\beta_g` and :math:`\tau_g` (for one state this is the statement that :math:`\sum_k\operatorname{diag}(l_k)W_k`
is :math:`\operatorname{diag}(b)\,G` in law, :math:`b^2 = \sum_ks_kl_k^2`). Not so for Haar :math:`W_k` (below).

**Haar W.** With amalgamation over the unit-block algebra :math:`\mathcal B = M_{2S}(\mathbb C)\otimes
\mathcal D_N` (:math:`\mathcal D_N` the diagonal matrices; the conditional expectation keeps each unit's
:math:`2S\times2S` block), :math:`H = H_0 + \sum_kX_k`, :math:`X_k = P_kH_{W_k}P_k^\top` with :math:`H_{W_k}` the
Hermitisation of :math:`W_k` and :math:`P_k = \begin{pmatrix}L_k&0\\0&R_k^\top\end{pmatrix}` (entries in
:math:`\mathcal D_N`). A matrix :math:`O` free from :math:`\mathcal D_N` (a Haar :math:`O`, asymptotically) is free
from it with amalgamation, with :math:`\mathcal D_N`-valued cumulants equal to its scalar free cumulants times the
normalised traces of the inserted diagonal elements (Nica-Shlyakhtenko-Speicher); independent :math:`O_k` are free
with amalgamation over :math:`\mathcal B`, so the self-energies of the fields add, :math:`\Sigma = \sum_k
P_k\mathcal R_k(P_k^\top\mathcal GP_k)P_k^\top`. A Haar :math:`O` is R-diagonal with alternating cumulants
:math:`\kappa_{2n} = (-1)^{n-1}C_{n-1}` (Catalan), so the R-transform of :math:`H_{\sqrt sO}` at
:math:`\operatorname{diag}(c_1, c_2)` is :math:`\operatorname{diag}(s\langle c_2\rangle\varphi,
s\langle c_1\rangle\varphi)`, :math:`\varphi = \varphi(s\langle c_1\rangle\langle c_2\rangle)`, :math:`\varphi(t)
= \sum_n\kappa_{2n}t^{n-1}` (the scalar case is :class:`~mftrnn.theory.free.DeformedStep`, ``orthogonal=True``;
terms :math:`OcO` without a transpose are :math:`O(1/N)`, as :math:`\mathbb E[WMW]` above, so real orthogonal and
unitary Haar matrices give the same large-:math:`N` law). Hence the self-energy of field :math:`k` is the Gaussian
one with its scalar factor multiplied by :math:`\varphi_k = \varphi(s_k\alpha_k\beta_k)`,

.. math:: \Sigma_{11,i} = \sum_k s_k\beta_k\varphi_k\,l_{k,i}l_{k,i}^\top,\quad
          \Sigma_{22,i} = \sum_k s_k\alpha_k\varphi_k\,r_{k,i}r_{k,i}^\top,\quad
          s_k\alpha_k\beta_k\,\varphi_k^2 + \varphi_k - 1 = 0

(:math:`\varphi\equiv1` for Gaussian :math:`W`), with the root continued from :math:`\varphi_k = 1` far from the
spectrum. The fields of a group no longer combine (:math:`\sum_k\operatorname{diag}(l_k)O_k` is not
:math:`\operatorname{diag}(b)\,O` in law: one field alone gives the singular values :math:`|l_{k,i}|` exactly,
several spread them), so every field is its own group, with the unknowns :math:`\beta'_k = \beta_k\varphi_k` and
:math:`\tau'_k = s_k\alpha_k\varphi_k` (the amplitudes of its self-energy, :math:`\Sigma_{11} = \sum_k\beta'_kT_k`,
:math:`T_k = s_kl_kl_k^\top`, :math:`\Sigma_{22} = \sum_k\tau'_kr_kr_k^\top`). The quadratic reads
:math:`1 - \varphi_k = s_k\alpha_k\beta_k\varphi_k^2 = \beta'_k\tau'_k`, which eliminates :math:`\varphi_k`
explicitly, with no choice of root left:

.. math:: \beta'_k = \varphi_k\langle r_k^\top\mathcal G_{22}r_k\rangle,\quad
          \tau'_k = \varphi_k\langle\operatorname{tr}T_k\mathcal G_{11}\rangle,\quad
          \varphi_k = 1 - \beta'_k\tau'_k,

the Gaussian equations of a one-field group times :math:`\varphi_k`; the second solution of the quadratic is
another solution of this polynomial system (self-energies of the order of :math:`s` far from the spectrum), which
continuation from the start :math:`\beta', \tau'\simeq -1/s` and the relative-jump bound never reach. On the
physical branch :math:`\varphi_k` does wander far from 1 (for the LSTM's output gate at small :math:`x` it reaches
:math:`|\varphi|\sim10^3` with negative real part: the root crosses the cut of the square root, as in
:class:`~mftrnn.theory.free.DeformedStep`), while the self-energies stay analytic (subordination,
Belinschi-Mai-Speicher) with :math:`\operatorname{Im}\beta'_k, \operatorname{Im}\tau'_k\ge0`.

**Solution.** :class:`GatedStep` solves these equations for the unknowns :math:`(\beta_g, \tau_g)` (Haar:
:math:`(\beta'_k, \tau'_k)`, the Jacobian gaining the derivatives of :math:`\varphi_k`) at a spectral
parameter :math:`\zeta = s^2` of :math:`JJ^\top` (:math:`s = \sqrt\zeta` in the upper half plane), by Newton's method
(:func:`mftrnn.theory.free._newton`) with the Jacobian :math:`d\mathcal G = -\mathcal G\,dM\,\mathcal G` of the
unit blocks, vectorised over points and units (:math:`S\times S` blocks by Schur complements, structural zeros
skipped). The physical solution is singled out by continuation from far above the spectrum
(:math:`\mathcal G\simeq -I/s`) and sign checks at every step (:meth:`GatedStep.physical`: :math:`\operatorname{Im}
\ge0` of the self-energies and of every unit's diagonal resolvent entries, to :math:`10^{-12}` relative, far below
the :math:`O(\eta)` imaginary parts by which the nearly real second root just outside an edge differs). The
continuation (:func:`_solve_real`): the largest point straight down in :math:`\operatorname{Im}\zeta` to the ray
:math:`\zeta = x(1 + 0.05i)`, along the ray from point to point (it keeps a relative distance 0.05 from the real
axis, where the edges, the branch points of the solution, lie), then every point down to :math:`\zeta = x(1 +
i\eta)`, :math:`\eta = 10^{-10}`; about 20 evaluations of the equations per point. Newton stops after a relative
step below 1e-7, for Haar :math:`W` below ``_NEWTON_TOL_HAAR`` = 1e-6: deep below the bulk (the LSTM's :math:`h`
directions at :math:`\sigma_w = 0.2`, :math:`x\sim10^{-9}`) its per-field residual is evaluated to only about 1e-8
and the steps stall at 1e-7 to 3e-7 (measured); elsewhere convergence is quadratic and the error about 1e-12.

**Density.** With :math:`m(\zeta) = \frac1{SN}\operatorname{tr}(JJ^\top - \zeta)^{-1} = \langle\operatorname{tr}
\mathcal G_{11}\rangle/(Ss)` (from :math:`\mathcal G_{11} = s(JJ^\top - s^2)^{-1}`), :math:`\rho(\lambda) =
\frac1\pi\operatorname{Im}m(\lambda + i0)`, evaluated as :math:`\operatorname{Im}(\zeta m(\zeta))/(\pi\lambda)` at
:math:`\zeta = \lambda(1 + i\eta)` (the convention of :func:`mftrnn.theory.free.density`: no Lorentzian tail of the
whole mass outside the support). Equivalently :math:`\rho(\lambda) = \rho_H(\sqrt\lambda)/\sqrt\lambda` with
:math:`\rho_H = \frac1\pi\operatorname{Im}\frac1{2SN}\operatorname{tr}\mathcal G` the (symmetric) density of
:math:`H`.

**Distribution function.** The matrix Dyson equation has a log-determinant: :math:`\frac1N\log\det(H - s) = \Omega`
up to a constant, :math:`\Omega = \langle\log\det M_i\rangle + \sum_g\beta_g\tau_g` with :math:`M_i =
\mathcal G_i^{-1}` (its derivative in :math:`s` is :math:`-\langle\operatorname{tr}\mathcal G_i\rangle` at the
solution, by the equations themselves). For Haar :math:`W` the stationary functional is :math:`\Omega =
\langle\log\det M_i\rangle - \sum_k\log\varphi_k` (:math:`\partial_{\beta'_k}(-\log(1-\beta'_k\tau'_k)) =
\tau'_k/\varphi_k`; :math:`\sum\beta\tau` is its Gaussian first order). :math:`\varphi_k` winds around 0 on the
physical branch, so its principal logarithm jumps; the continuous branch comes from the Hermitisation of the
field's own matrix: with :math:`u = -1/\tau'_k`, :math:`v = -1/\beta'_k` (upper half plane, as
:math:`\operatorname{Im}\tau', \operatorname{Im}\beta'\ge0`), :math:`\varphi_k = (uv - 1)/(uv)` and :math:`uv - 1 =
\lambda_+\lambda_-`, the eigenvalues of :math:`\begin{pmatrix}u&-1\\-1&v\end{pmatrix}` (positive definite imaginary
part: both in the upper half plane), so :math:`-\log\varphi_k = \log u + \log v - \log\lambda_+ - \log\lambda_-` with
four principal logarithms of numbers in the upper half plane, each continuous, the sum 0 far from the spectrum.
Since :math:`\det(H - s) = (-1)^{SN}\det(JJ^\top - \zeta)` and
:math:`\operatorname{Im}\log(\lambda - x - i0) = -\pi` for :math:`\lambda < x`, the distribution function is

.. math:: F(x) = \rho([0, x]) = -1 - \frac1\pi\operatorname{Im}\Phi(x + i0),\qquad \Phi = \Omega/S,

with :math:`\log\det M_i` the sum of the principal logarithms of the eigenvalues of :math:`M_i`'s top-left block
and of its Schur complement, all in the lower half plane (the constant: :math:`F = 1` far above the spectrum, where
every eigenvalue tends to :math:`-s`, argument :math:`-\pi`). :meth:`GatedSpectralLaw.distribution` is therefore
exact at every point, atom at 0 included, with no quadrature of the density; :meth:`GatedSpectralLaw.cdf`
interpolates it on a table refined until the interpolation is within ``_CDF_TOL`` = 5e-4 (checked at midpoints),
and :meth:`GatedSpectralLaw.support` locates the edges from it. Checked in the tests: the Marchenko-Pastur law's
:math:`F = 1 - (2\theta - \sin2\theta)/\pi`, :math:`\cos\theta = \sqrt{x/4s}`, to 1e-9, and the moments of the
law from :math:`F`.

Limits checked by the tests (``tests/test_gated_density.py``; Haar: ``tests/test_gated_density_orthogonal.py``):
:math:`S = 1`, :math:`e = 0` gives the Marchenko-Pastur law; Haar, :math:`S = 1`, one field: the law of
:class:`~mftrnn.theory.free.DeformedStep` with ``orthogonal=True`` (density to 1e-10; measured 2e-12), and for a
constant :math:`e = a`, :math:`l = r = 1` the arcsine law :math:`F = 1 - \arccos((x - a^2 - s)/(2a\sqrt s))/\pi` of
:math:`a + \sqrt sO` (to 1e-9); the contour moments equal the free-cumulant formulas with :math:`\kappa = 0` to
1e-10; for one state the
equations are those of :class:`~mftrnn.theory.free.DeformedStep` with :math:`a = e`, :math:`b^2 = \sum_ks_kl_k^2`
(:func:`deformed_step`; same density to 1e-14); the moments from the Cauchy transform on a circle around the
spectrum (:meth:`GatedSpectralLaw.contour_moments`) are those of the free-cumulant formulas of
:func:`~mftrnn.theory.gated_jacobian.gated_step_moments` to 1e-13.

**A mass at 0.** If :math:`J` is rank deficient (e.g. a state that nothing reads or writes), the law has an atom at
0: :math:`\rho(\{0\}) = \lim_{y\to0}(-\zeta m(\zeta))` at :math:`\zeta = iy` (:meth:`GatedSpectralLaw.atom_at_zero`);
:math:`F` holds it, the density (its :math:`1/\zeta` replaced by the real :math:`1/\lambda`) does not. For ``nn.LSTM``
and ``nn.GRU`` :math:`J` has full rank (the LSTM's :math:`h` columns are :math:`\sum_kL_kW_k`, square Gaussian
blocks) and there is no atom, but the LSTM's :math:`h` directions give a component that reaches 0 with a heavy
tail (the output gate's factor :math:`\tanh c_t` has a density at 0, on top of the hard edge of the square
:math:`W_o`): at :math:`\sigma_w = 1`, :math:`\mu_{b,f} = 1`, 0.7% of the eigenvalues lie below :math:`10^{-8}`
(0.6% in the explicit Jacobians of ``nn.LSTM`` of the tests), and the support's lower end is the floor
``_X_FLOOR`` = 1e-13 of the bound, with a mass of about 3e-4 below it.

**Coefficients.** The unit coefficients are ``samples`` points (a power of 2) of the unit law of
:mod:`mftrnn.theory.gated_jacobian` drawn by scrambled Sobol quasi-Monte Carlo (:func:`coefficient_samples`): the
fields Gaussian with the fixed point's means and variances (inverse normal of a Sobol coordinate), the carried
state with its stationary law (the LSTM's :math:`c` by inverting its distribution function; the GRU's :math:`h` by
a Gauss rule of ``_STATE_NODES`` = 8 nodes from its exact moments, the mean field knowing its law only through
them). The law is then exactly the large-:math:`N` law of a matrix with those coefficients. Where the recurrent
coupling of a unit's row is weak (small :math:`\sigma_w`, or small :math:`l_k`) its eigenvalues form a narrow bump
of mass :math:`1/(Sn)` around the unit's own block value: the density of the sampled law is then a comb of such
bumps (the LSTM's :math:`c` directions at the critical initialisation, :math:`\sigma_w = 0.2`, spread over
:math:`[f^2, 2f^2]` by the law of :math:`o\tanh'(c_t)`), which the distribution function smooths out. Its error
against the continuous law, as the Kolmogorov distance to a law of 8192 units (measured): 0.002-0.0025 for the LSTM at
:math:`\sigma_w = 1`, 0.004-0.008 at the critical point, 0.0004-0.0008 for the GRU at :math:`\sigma_w = 1`,
1e-4 at its critical point (the default 1024 units; about half of that with 2048); the relative spread of
:math:`m_1` over scrambles is 2e-4 to 6e-4, of :math:`m_2` 5e-4 to 2e-3.

**Against networks** (``tests/test_gated_density.py``, squared singular values of the one-step Jacobian of the whole
state by autograd, 2 networks of :math:`N = 500`, 3 times each, tied weights): Kolmogorov distance 0.026 for
``nn.LSTM`` at the critical initialisation of :math:`T = 20` (0.014 with the weights redrawn at every step, the
untied mean field's setting: the rest is the empirical law of the 1000 units' coefficients, which the weakly
coupled :math:`c` directions follow), 0.007 at :math:`\sigma_w = 1`; ``nn.GRU`` 0.003 and 0.009. With orthogonal
recurrent weights (``init_gated_(..., orthogonal=True)``, same protocol) ``nn.GRUCell`` at :math:`\sigma_w = 1`,
:math:`\mu_{b,z} = 1`: 0.009 to the Haar law, 0.013 to the Gaussian one (the Gaussian network: 0.014 and 0.0085),
a point where the two laws are close; explicit matrices of the model tell them apart where they differ (tests).

**Cost.** A density on 200 points: about 1-2.5 s for ``nn.LSTM`` (1024 units; one core shared with other work),
less for ``nn.GRU``; a law's support and distribution table 3-12 s (the comb of the critical LSTM needs the most
refinement).

**Not covered.** Cells that :func:`~mftrnn.theory.gated_jacobian.jacobian_structure` refuses, and :math:`\sigma_w
= 0` (a block-diagonal :math:`J`: the law of the unit blocks' singular values, atoms). :func:`gated_product_law`
gives :math:`T` steps for one state as the free product :math:`S_{\rm step}^T`, an approximation (see there), for
Gaussian :math:`W` only: for Haar :math:`W` the step of a cell with several fields is not a
:class:`~mftrnn.theory.free.DeformedStep`, and it is refused (the :math:`T`-step moments of
:func:`~mftrnn.theory.gated_jacobian.gated_product_moments` with ``orthogonal=True`` cover it).

**What is exact, what is approximated (Haar).** Exact: the large-:math:`N` law of :math:`J` with the sampled
coefficients and independent Haar :math:`O_k` (unitary or real orthogonal: they differ in :math:`O(1/N)` terms).
Approximated, as for Gaussian :math:`W`: the coefficients independent of the matrices and of each other across
units (the untied mean field; a network reuses one matrix), and the unit law by 1024 quasi-Monte Carlo units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvergenceError, DomainError, MftrnnError
from . import gated_jacobian as gj
from .free import _NEWTON_TOL, DeformedStep, FreeProduct, _newton, _predict
from .spectrum import SpectralLaw, kolmogorov_distance as _kolmogorov_distance

__all__ = ["GatedStep", "GatedSpectralLaw", "coefficient_samples", "gated_step_law", "gated_product_law",
           "deformed_step"]

_SAMPLES = 1024  # default number of Sobol unit samples
_STATE_NODES = 8  # Gauss-rule nodes of a closed cell's carried state (the GRU's h)
_CHUNK = 1 << 13  # points x units per block of the vectorised evaluation (arrays that stay in cache)
_CDF_NODES = 200  # first nodes of the table of the distribution function
_CDF_LEVELS = 10  # rounds of its refinement
_CDF_TOL = 5e-4  # accepted error of its linear interpolation
_X_FLOOR = 1e-13  # lowest point of the support scan, relative to the bound of the spectrum
_ETA = 1e-10  # relative imaginary part of the spectral parameter at which the density is evaluated
_JUMP_TOL = 0.3  # largest relative move of an unknown from the predictor in one continuation step
_STEP_NEWTON = 10  # Newton iterations per continuation step
_MIN_STEP = 1e-4  # smallest step in ln y
_MAX_STEPS = 5000
_SIGN_TOL = 1e-12  # relative rounding allowance of the sign conditions on the physical solution
_RAY = 0.05  # relative imaginary part of the ray along which the solution is continued from point to point
_RUN = 16  # points per run of the continuation along the ray (runs go side by side)
_DESCENT_RATIO = 1e-4  # largest factor by which the imaginary part shrinks in one step of the final descent
# Haar W_k: Newton's convergence threshold (relative step). Far below the spectrum's bulk (the LSTM's h directions
# near 0 at small sigma_w) the residual of the per-field system is evaluated to only ~1e-8 relative (measured), so
# its Newton steps stall at 1e-7..3e-7 relative; a step below 1e-6 leaves an error of about its square where Newton
# converges quadratically, and the noise level (~1e-7 relative in the unknowns) where it does not
_NEWTON_TOL_HAAR = 1e-6


# --------------------------------------------------------------------------- small matrices with structural zeros
# An S x S matrix is a list of rows whose entries are None (a zero for every unit), a float, or an array that
# broadcasts against (points, units): (1, n) for unit coefficients, (m, 1) for unknowns, (m, n) for products.

def _add(a, b):
    return b if a is None else a if b is None else a + b


def _mul(a, b):
    return None if a is None or b is None else a * b


def _neg(a):
    return None if a is None else -a


def _sum(terms):
    out = None
    for t in terms:
        out = _add(out, t)
    return out


def _mm(A, B):
    return [[_sum(_mul(A[i][j], B[j][k]) for j in range(len(B))) for k in range(len(B[0]))] for i in range(len(A))]


def _madd(A, B):
    return [[_add(a, b) for a, b in zip(ra, rb)] for ra, rb in zip(A, B)]


def _mneg(A):
    return [[_neg(a) for a in row] for row in A]


def _mscale(c, A):
    return [[_mul(c, a) for a in row] for row in A]


def _mT(A):
    return [list(col) for col in zip(*A)]


def _minv(A):
    r"""Inverse by block elimination without pivoting (leading blocks first). On the physical solution every
    principal submatrix it inverts is invertible: they are :math:`s^{-1}` times principal submatrices (or their
    Schur complements) of a matrix with negative definite imaginary part (module docstring)."""
    n = len(A)
    if n == 1:
        if A[0][0] is None:
            raise ConvergenceError("matrix Dyson equation: a singular unit block")
        return [[1.0 / A[0][0]]]
    k = n // 2
    A11 = [row[:k] for row in A[:k]]
    A12 = [row[k:] for row in A[:k]]
    A21 = [row[:k] for row in A[k:]]
    A22 = [row[k:] for row in A[k:]]
    B11 = _minv(A11)
    X = _mm(B11, A12)
    Yv = _mm(A21, B11)
    Si = _minv(_madd(A22, _mneg(_mm(A21, X))))
    XS = _mm(X, Si)
    R11 = _madd(B11, _mm(XS, Yv))
    R12 = _mneg(XS)
    R21 = _mneg(_mm(Si, Yv))
    return [r1 + r2 for r1, r2 in zip(R11, R12)] + [r1 + r2 for r1, r2 in zip(R21, Si)]


def _mv(A, v):
    return [_sum(_mul(a, b) for a, b in zip(row, v)) for row in A]


def _dot(u, v):
    return _sum(_mul(a, b) for a, b in zip(u, v))


def _tr(A, B=None):
    """tr A, or tr AB."""
    if B is None:
        return _sum(A[i][i] for i in range(len(A)))
    return _sum(_mul(A[i][j], B[j][i]) for i in range(len(A)) for j in range(len(B)))


def _entry(x: np.ndarray):
    """A unit coefficient (n,) as a matrix entry: None if 0 for every unit, a float if constant, else (1, n)."""
    x = np.asarray(x, float)
    if np.all(x == 0):
        return None
    if np.all(x == x[0]):
        return float(x[0])
    return x[None, :]


# --------------------------------------------------------------------------- the unit equations
@dataclass(frozen=True, eq=False)
class GatedStep:
    r"""The matrix Dyson equation of the module docstring for unit coefficients ``e`` (S, S, n), ``l`` (K, S, n),
    ``r`` (K, S, n) of equal weight and field variances ``s`` (K,) (:math:`J = E + \sum_kL_kW_kR_k`, Gaussian
    :math:`W_k` of variance :math:`s_k/N` per entry). Unknowns :math:`(p_1..p_G, q_1..q_G)` at a spectral parameter
    :math:`z = 1/\zeta` (:math:`G` groups of fields with equal rows :math:`r_k`, :attr:`groups`). ``moments()``:
    the exact :math:`m_1, m_2` of these coefficients (the formulas of
    :func:`mftrnn.theory.gated_jacobian.gated_step_moments`); :attr:`bound`: an upper bound of the spectrum,
    :math:`(\max_i\|e_i\| + \sum_k2\sqrt{s_k}\max_i|l_{k,i}|\max_i|r_{k,i}|)^2` (:math:`\|W_k\|\to2\sqrt{s_k}`).
    ``orthogonal=True``: :math:`W_k = \sqrt{s_k}\,O_k`, independent Haar :math:`O_k` (module docstring, *Haar W*):
    every field its own group, unknowns :math:`(\beta'_k, \tau'_k)`, moments with :math:`\kappa = 0`, and
    :math:`\|W_k\| = \sqrt{s_k}` in the bound.
    """

    e: np.ndarray
    l: np.ndarray
    r: np.ndarray
    s: np.ndarray
    orthogonal: bool = False

    def __post_init__(self):
        try:
            e, l, r = (np.asarray(v, dtype=float) for v in (self.e, self.l, self.r))
            s = np.asarray(self.s, dtype=float).ravel()
        except (TypeError, ValueError):
            raise DomainError("GatedStep: coefficients must be arrays of numbers") from None
        if e.ndim != 3 or e.shape[0] != e.shape[1] or l.ndim != 3 or r.shape != l.shape or \
                l.shape[1:] != (e.shape[0], e.shape[2]) or s.shape != (l.shape[0],) or e.shape[2] < 1:
            raise DomainError(f"GatedStep: e (S, S, n), l and r (K, S, n), s (K,) with n >= 1 expected, got "
                              f"{e.shape}, {l.shape}, {r.shape}, {s.shape}")
        if not all(np.all(np.isfinite(v)) for v in (e, l, r, s)) or np.any(s < 0):
            raise DomainError("GatedStep: coefficients must be finite and the variances s non-negative")
        for name, v in (("e", e), ("l", l), ("r", r), ("s", s)):
            object.__setattr__(self, name, v)
        orthogonal = bool(self.orthogonal)
        object.__setattr__(self, "orthogonal", orthogonal)
        S, n = e.shape[0], e.shape[2]
        # groups of fields with the same row r_k (exactly, unit by unit); fields without a term dropped. Haar W_k:
        # every field is its own group (independent Haar matrices do not combine into one)
        groups = []
        for k in range(l.shape[0]):
            if s[k] == 0 or not np.any(l[k]) or not np.any(r[k]):
                continue
            for g in groups:
                if not orthogonal and np.array_equal(r[g[0]], r[k]):
                    g.append(k)
                    break
            else:
                groups.append([k])
        if not groups:
            raise DomainError("GatedStep: no recurrent term (sigma_w = 0 or vanishing coefficients): J is block "
                              "diagonal and its spectrum is the law of the unit blocks' singular values (atoms), "
                              "not a density")
        Tg = [np.einsum("k,kin,kjn->ijn", s[g], l[g], l[g]) for g in groups]
        m1, m2 = gj._step_terms(_Given(e, l, r), {}, n, s, 0.0 if orthogonal else 1.0)[:2]
        norm_e = np.sqrt(np.max(np.linalg.eigvalsh(np.einsum("jin,jkn->nik", e, e)), initial=0.0))
        norm_w = 1.0 if orthogonal else 2.0  # ||W_k|| / sqrt(s_k): 1 for sqrt(s_k) O, 2 at large N for Gaussian
        bound = (norm_e + np.sum(norm_w * np.sqrt(s) * np.max(np.abs(l), axis=(1, 2))
                                 * np.max(np.abs(r), axis=(1, 2))))
        for name, v in (("_S", S), ("_n", n), ("groups", tuple(tuple(g) for g in groups)),
                        ("_E", [[_entry(e[i, j]) for j in range(S)] for i in range(S)]),
                        ("_T", [[[_entry(T[i, j]) for j in range(S)] for i in range(S)] for T in Tg]),
                        ("_R", [[_entry(r[g[0], i]) for i in range(S)] for g in groups]),
                        ("_RR", [[[_entry(r[g[0], i] * r[g[0], j]) for j in range(S)] for i in range(S)]
                                 for g in groups]),
                        ("_moments", (float(m1), float(m2))), ("bound", float(bound) ** 2),
                        ("_r2", np.array([np.mean(np.sum(r[g[0]] ** 2, 0)) for g in groups])),
                        ("_trT", np.array([np.mean(np.einsum("iin->n", T)) for T in Tg]))):
            object.__setattr__(self, name, v)

    @property
    def states(self) -> int:
        return self._S

    def moments(self) -> tuple[float, float]:
        return self._moments

    def start(self, s) -> np.ndarray:
        r"""Unknowns far from the spectrum (:math:`\mathcal G = -I/s + O(s^{-3})`): :math:`\beta_g =
        -\langle|r_g|^2\rangle/s`, :math:`\tau_g = -\langle\operatorname{tr}T_g\rangle/s`."""
        s = np.asarray(s, dtype=complex).ravel()
        return np.concatenate([-self._r2[:, None] / s[None], -self._trT[:, None] / s[None]])

    def _resolvent(self, s, U):
        r"""The unit blocks :math:`\mathcal G_{11}, \mathcal G_{12}, \mathcal G_{22}` of :math:`\mathcal G_i =
        \begin{pmatrix}-s-\sum_g\beta_gT_g & e\\ e^\top & -s-\sum_g\tau_gr_gr_g^\top\end{pmatrix}^{-1}`
        (:math:`\mathcal G_{21} = \mathcal G_{12}^\top`) at ``s`` (m,) and unknowns ``U`` = :math:`(\beta, \tau)`
        (2G, m), by the Schur complement of the top-left block."""
        S, G = self._S, len(self.groups)
        ms = -s[:, None]
        A = [[ms if i == j else None for j in range(S)] for i in range(S)]
        B = [[ms if i == j else None for j in range(S)] for i in range(S)]
        for g in range(G):
            A = _madd(A, _mscale(-U[g][:, None], self._T[g]))
            B = _madd(B, _mscale(-U[G + g][:, None], self._RR[g]))
        Ai = _minv(A)
        Ai_e = _mm(Ai, self._E)
        G22 = _minv(_madd(B, _mneg(_mm(_mT(self._E), Ai_e))))  # (B - e^T A^{-1} e)^{-1}
        G12 = _mneg(_mm(Ai_e, G22))
        G11 = _madd(Ai, _mneg(_mm(G12, _mT(Ai_e))))  # A^{-1} + A^{-1} e G22 e^T A^{-1}
        return G11, G12, G22

    def _chunks(self, m):
        step = max(1, _CHUNK // self._n)
        return [slice(i, min(i + step, m)) for i in range(0, m, step)]

    def system(self, U, s) -> tuple[np.ndarray, np.ndarray]:
        r"""Residuals :math:`E_{\beta_g} = \beta_g - \langle r_g^\top\mathcal G_{22}r_g\rangle`,
        :math:`E_{\tau_g} = \tau_g - \langle\operatorname{tr}T_g\mathcal G_{11}\rangle` (2G, m) and their
        Jacobian (m, 2G, 2G), from :math:`d\mathcal G = -\mathcal G\,dM\,\mathcal G`."""
        k, m = U.shape
        E = np.empty((k, m), complex)
        J = np.empty((m, k, k), complex)
        for sl in self._chunks(m):
            E[:, sl], J[sl] = self._system(U[:, sl], s[sl])
        return E, J

    def _system(self, U, s):
        m = U.shape[1]
        G = len(self.groups)
        G11, G12, G22 = self._resolvent(s, U)
        av = lambda x: _avg(x, m)
        a = [_mv(G12, r) for r in self._R]  # G12 r_g (= (r_g^T G21)^T)
        G22r = [_mv(G22, r) for r in self._R]
        G11T = [_mm(G11, T) for T in self._T]  # G11 T_g
        E = np.empty((2 * G, m), complex)
        J = np.empty((m, 2 * G, 2 * G), complex)
        for g in range(G):
            B_g, A_g = av(_dot(G22r[g], self._R[g])), av(_tr(G11T[g]))
            # Haar: the factor phi_g = 1 - beta_g tau_g of the field's R-transform (module docstring); Gaussian: 1
            phi = 1.0 - U[g] * U[G + g] if self.orthogonal else 1.0
            E[g] = U[g] - phi * B_g
            E[G + g] = U[G + g] - phi * A_g
            for h in range(G):
                # d<r_g G22 r_g>/d beta_h = <r_g G21 T_h G12 r_g>, .../d tau_h = <(r_g G22 r_h)^2>
                J[:, g, h] = (g == h) - phi * av(_dot(a[g], _mv(self._T[h], a[g])))
                J[:, g, G + h] = -phi * av(_sq(_dot(G22r[g], self._R[h])))
                # d<tr T_g G11>/d beta_h = <tr G11 T_g G11 T_h>, .../d tau_h = <r_h G21 T_g G12 r_h>
                J[:, G + g, h] = -phi * av(_tr(G11T[g], G11T[h]))
                J[:, G + g, G + h] = (g == h) - phi * av(_dot(a[h], _mv(self._T[g], a[h])))
            if self.orthogonal:  # d phi_g / d beta_g = -tau_g, d phi_g / d tau_g = -beta_g
                J[:, g, g] += U[G + g] * B_g
                J[:, g, G + g] += U[g] * B_g
                J[:, G + g, g] += U[G + g] * A_g
                J[:, G + g, G + g] += U[g] * A_g
        return E, J

    def trace(self, U, s) -> np.ndarray:
        r""":math:`\langle\operatorname{tr}\mathcal G_{11}\rangle/S = s\,m(s^2)` (m,) at the unknowns ``U``
        (:math:`m` the Stieltjes transform of the law)."""
        out = np.empty(U.shape[1], complex)
        for sl in self._chunks(U.shape[1]):
            out[sl] = _avg(_tr(self._resolvent(s[sl], U[:, sl])[0]), sl.stop - sl.start) / self._S
        return out

    def log_det_phase(self, U, s) -> np.ndarray:
        r""":math:`\operatorname{Im}\Phi` (m,), :math:`\Phi = \frac1S\bigl(\langle\log\det M_i\rangle +
        \sum_g\beta_g\tau_g\bigr)` with :math:`M_i = \mathcal G_i^{-1}`: the log-determinant of the matrix Dyson
        equation, :math:`\frac1{SN}\log\det(H - s) = \Phi + \text{const}` (module docstring). :math:`\log\det
        M_i = \log\det A_i + \log\det D_i` (:math:`A_i` the top-left block, :math:`D_i` its Schur complement) as
        the sum of the principal logarithms of their eigenvalues, which lie in the lower half plane (matrices with
        negative definite imaginary part); an eigenvalue that rounding puts just above the real axis is counted on
        it (arguments clipped to :math:`[-\pi, 0]`)."""
        S, G, m = self._S, len(self.groups), U.shape[1]
        out = np.empty(m)
        for sl in self._chunks(m):
            k = sl.stop - sl.start
            ss, V = s[sl], U[:, sl]
            ms = -ss[:, None]
            A = [[ms if i == j else None for j in range(S)] for i in range(S)]
            B = [[ms if i == j else None for j in range(S)] for i in range(S)]
            for g in range(G):
                A = _madd(A, _mscale(-V[g][:, None], self._T[g]))
                B = _madd(B, _mscale(-V[G + g][:, None], self._RR[g]))
            D = _madd(B, _mneg(_mm(_mT(self._E), _mm(_minv(A), self._E))))
            phase = np.zeros((k, self._n))
            for Mb in (A, D):
                for mu in _eigenvalues(Mb, (k, self._n)):
                    phase += -np.arctan2(np.abs(mu.imag), mu.real)
            if self.orthogonal:
                extra = np.zeros(k)
                with np.errstate(all="ignore"):
                    for g in range(G):  # Im(-log phi_g) on its continuous branch (module docstring)
                        u, v = -1.0 / V[G + g], -1.0 / V[g]
                        lam = _eigenvalues([[u, -1.0], [-1.0, v]], (k,))
                        extra += sum(np.arctan2(np.abs(w.imag), w.real) for w in (u, v))
                        extra -= sum(np.arctan2(np.abs(w.imag), w.real) for w in lam)
            else:
                extra = np.sum(V[:G] * V[G:], axis=0).imag
            out[sl] = (phase.mean(axis=1) + extra) / S
        return out

    def physical(self, U, s) -> np.ndarray:
        r"""Per point: the solution is the physical one. At :math:`s` in the upper half plane the self-energies
        :math:`\beta_g`, :math:`\tau_g` and the diagonal entries of :math:`\mathcal G_{11}`, :math:`\mathcal
        G_{22}` of every unit have :math:`\operatorname{Im}\ge0` (a resolvent of a Hermitian matrix; a positive
        self-energy map), to the relative tolerance ``_SIGN_TOL``. The tolerance is far below :math:`\eta`: near an
        edge, just outside the support, the equations have a second, nearly real root whose imaginary parts are
        those of the physical one with the opposite sign, :math:`O(\eta)` (as :math:`m_- = -s - m_+` for the
        semicircle law), while a physical diagonal entry has :math:`\operatorname{Im}\mathcal G_{ii}\ge
        \operatorname{Im}s\,|\mathcal G_{ii}|^2 > 0` (Cauchy-Schwarz for the Stieltjes transform of a
        probability measure)."""
        m = U.shape[1]
        ok = np.all(np.isfinite(U), axis=0)
        pos = lambda v: v.imag >= -_SIGN_TOL * np.abs(v)
        with np.errstate(all="ignore"):
            ok &= np.all(pos(U), axis=0)
            for sl in self._chunks(m):
                G11, _, G22 = self._resolvent(s[sl], U[:, sl])
                for Gb in (G11, G22):
                    for i in range(self._S):
                        g_ii = np.asarray(Gb[i][i])
                        ok[sl] &= np.all(pos(g_ii) & np.isfinite(g_ii), axis=-1)
        return ok


def _sq(a):
    return None if a is None else a * a


def _eigenvalues(M, shape) -> list:
    """Eigenvalues of the small matrices ``M`` (entries broadcast to ``shape``): closed forms for 1 x 1 and 2 x 2
    (the larger root of the quadratic first, the other from the determinant, without cancellation), LAPACK
    otherwise."""
    full = lambda v: np.broadcast_to(np.asarray(0.0 if v is None else v, dtype=complex), shape)
    S = len(M)
    if S == 1:
        return [full(M[0][0])]
    if S == 2:
        a, b, c, d = full(M[0][0]), full(M[0][1]), full(M[1][0]), full(M[1][1])
        t, det = a + d, a * d - b * c
        root = np.sqrt((a - d) ** 2 + 4 * b * c)
        root = np.where((np.conj(t) * root).real < 0, -root, root)
        mu1 = (t + root) / 2
        with np.errstate(all="ignore"):
            mu2 = np.where(mu1 != 0, det / mu1, 0.0)
        return [mu1, mu2]
    dense = np.zeros(shape + (S, S), complex)
    for i in range(S):
        for j in range(S):
            dense[..., i, j] = full(M[i][j])
    mu = np.linalg.eigvals(dense)
    return [mu[..., i] for i in range(S)]


def _avg(x, m):
    """Average over units, shape (m,), of an entry (None, a float, or an array of shape (1|m, 1|n))."""
    if x is None:
        return np.zeros(m, complex)
    v = np.asarray(x, dtype=complex)
    if v.ndim == 0:
        return np.full(m, complex(v))
    return np.broadcast_to(v.mean(axis=1), (m,)).copy()


# --------------------------------------------------------------------------- continuation
def _newton_at(step, s, U, max_iter=_STEP_NEWTON):
    """Damped Newton (:func:`mftrnn.theory.free._newton`) for the unknowns ``U`` (2G, m) at ``s`` (m,); returns
    ``(U, converged)``. Converged: an undamped step below ``_NEWTON_TOL_HAAR`` (Haar :math:`W_k`) or the default
    1e-7 of :func:`~mftrnn.theory.free._newton` (Gaussian) relative to the unknowns (module docstring)."""
    tol = _NEWTON_TOL_HAAR if step.orthogonal else _NEWTON_TOL
    return _newton(lambda W, a: step.system(W, s[a]), U.copy(), "gated spectral density", upper_guard=False,
                   max_iter=max_iter, strict=False, tol=tol)


def _accept(step, s, start, V, ok):
    """Converged, moved less than ``_JUMP_TOL`` (relative, per unknown) from the predictor, and physical."""
    with np.errstate(all="ignore"):
        jump = np.max(np.abs(V - start) / np.maximum(np.maximum(np.abs(start), np.abs(V)), 1e-300), axis=0)
    ok = ok & (jump <= _JUMP_TOL)
    ok[ok] &= step.physical(V[:, ok], s[ok])
    return ok


def _descend(step, x, l_cur, U, l_prev, U_prev, l_fin, dl, dl_max):
    r"""Lower :math:`\ln y` (:math:`\zeta = x + iy`) from ``l_cur`` to ``l_fin`` per point (vectorised): steps
    ``dl`` (< 0) from the geometric predictor (:func:`mftrnn.theory.free._predict`), accepted by :func:`_accept`,
    then 1.5 times longer (at most ``dl_max``); a rejected step is retried at half the size."""
    m = x.size
    U, l_cur, l_prev, U_prev, dl = U.copy(), l_cur.copy(), l_prev.copy(), U_prev.copy(), dl.copy()
    done = l_cur <= l_fin
    for _ in range(_MAX_STEPS):
        act = np.nonzero(~done)[0]
        if act.size == 0:
            return U
        l_new = np.maximum(l_cur[act] + dl[act], l_fin[act])
        start = _predict(U[:, act], U_prev[:, act], l_prev[act], l_cur[act], l_new)
        sa = np.sqrt(x[act] + 1j * np.exp(l_new))
        V, ok = _newton_at(step, sa, start)
        ok = _accept(step, sa, start, V, ok)
        good, bad = act[ok], act[~ok]
        U_prev[:, good], l_prev[good] = U[:, good], l_cur[good]
        U[:, good], l_cur[good] = V[:, ok], l_new[ok]
        done[good] = l_cur[good] <= l_fin[good]
        dl[good] = np.maximum(dl[good] * 1.5, dl_max)
        dl[bad] *= 0.5
        if np.any(np.abs(dl[bad]) < _MIN_STEP):
            xs = x[bad[np.abs(dl[bad]) < _MIN_STEP]]
            raise ConvergenceError(f"gated spectral density: continuation stalled at {xs.size} of {m} points "
                                   f"(x = {xs.min():.3g} ... {xs.max():.3g})")
    raise ConvergenceError("gated spectral density: too many continuation steps")


def _solve(step: GatedStep, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""Unknowns (2G, m) at :math:`\zeta = x + iy` (``x >= 0``, ``y > 0``, flat) on the physical branch, by
    continuation in the imaginary part alone (:func:`_descend`) from :math:`y_0 = 10\max(x,
    \lambda_{\rm bound})`, where :meth:`GatedStep.start` is in Newton's basin. The path stays off the real axis until
    its end, so it passes no branch point of the solution (the edges of the spectrum lie on the real axis)."""
    l_fin = np.log(y)
    l_cur = np.maximum(np.log(10.0 * np.maximum(x, step.bound)), l_fin)
    s = np.sqrt(x + 1j * np.exp(l_cur))
    U, ok = _newton_at(step, s, step.start(s), max_iter=60)
    if not np.all(ok & step.physical(U, s)):
        raise ConvergenceError("gated spectral density: no physical solution far from the spectrum")
    # far from the spectrum U ~ 1/s: a virtual previous point at twice the height makes the first predictor that
    # scaling
    l_prev = l_cur + math.log(2.0)
    U_prev = U * s / np.sqrt(x + 1j * np.exp(l_prev))
    return _descend(step, x, l_cur, U, l_prev, U_prev, l_fin, np.full(x.size, math.log(0.1)), math.log(0.01))


def _solve_real(step: GatedStep, x: np.ndarray, eta: float) -> np.ndarray:
    r"""Unknowns (2G, m) at :math:`\zeta = x(1 + i\eta)` for points ``x > 0`` (flat), by three continuations.

    The points, in decreasing order, are cut into runs of ``_RUN`` consecutive points.

    1. The first point of every run by :func:`_solve` down to the ray :math:`\zeta = x(1 + ic)`, :math:`c` =
       ``_RAY``.
    2. Along the ray from point to point of each run (all runs at once): continuation in :math:`\ln x` with the
       geometric predictor, steps accepted by :func:`_accept`, grown by 1.5 (up to 1 in :math:`\ln x`) and halved
       on rejection. The ray keeps the relative distance :math:`c` from the real axis, where the branch points (the
       edges of the spectrum) are, so the solution is analytic along it and neighbouring points are a few Newton
       steps apart. A run that stalls is finished point by point with :func:`_solve`.
    3. From the ray down to :math:`\eta` for all points at once (:func:`_descend`; the solution settles as
       :math:`y\to0`, and the steps grow to a factor ``1/_DESCENT_RATIO``)."""
    order = np.argsort(-x)
    xs = x[order]
    m = xs.size
    t = np.log(xs)
    k = 2 * len(step.groups)
    U = np.empty((k, m), complex)
    first = np.arange(0, m, _RUN)
    U[:, first] = _solve(step, xs[first], _RAY * xs[first])
    last = np.minimum(first + _RUN, m) - 1
    # state of every run: index of the point reached, position on the ray and the two last solutions
    j = first.copy()
    cur_t, cur_U = t[first], U[:, first].copy()
    prev_t, prev_U = np.full(first.size, np.nan), np.full((k, first.size), np.nan, complex)
    h = np.full(first.size, -0.25 * _RAY)
    act = np.nonzero(j < last)[0]
    for _ in range(_MAX_STEPS):
        if act.size == 0:
            break
        target = t[j[act] + 1]
        new_t = np.maximum(cur_t[act] + h[act], target)
        start = _predict(cur_U[:, act], prev_U[:, act], prev_t[act], cur_t[act], new_t)
        ss = np.sqrt(np.exp(new_t) * (1.0 + 1j * _RAY))
        V, ok = _newton_at(step, ss, start)
        ok = _accept(step, ss, start, V, ok)
        good, bad = act[ok], act[~ok]
        prev_t[good], prev_U[:, good] = cur_t[good], cur_U[:, good]
        cur_t[good], cur_U[:, good] = new_t[ok], V[:, ok]
        h[good] = np.maximum(h[good] * 1.5, -1.0)
        h[bad] *= 0.5
        arrived = good[new_t[ok] <= target[ok]]
        j[arrived] += 1
        U[:, j[arrived]] = cur_U[:, arrived]
        stalled = bad[np.abs(h[bad]) < _MIN_STEP * _RAY]
        for r in stalled:  # finish this run point by point
            idx = np.arange(j[r] + 1, last[r] + 1)
            U[:, idx] = _solve(step, xs[idx], _RAY * xs[idx])
            j[r] = last[r]
        act = np.nonzero(j < last)[0]
    else:
        raise ConvergenceError("gated spectral density: too many continuation steps along the ray")
    U_desc = _descend(step, xs, t + math.log(_RAY), U, np.full(m, np.nan), np.full_like(U, np.nan),
                      np.log(eta * xs), np.full(m, math.log(0.01)), math.log(_DESCENT_RATIO))
    out = np.empty_like(U_desc)
    out[:, order] = U_desc
    return out


class _Given:
    """Fixed coefficient arrays in the interface of :meth:`JacobianStructure.evaluate`."""

    def __init__(self, e, l, r):
        self.e, self.l, self.r = e, l, r

    def evaluate(self, values, n):
        return self.e, self.l, self.r


# --------------------------------------------------------------------------- coefficients from the mean field
def _check_samples(samples) -> int:
    try:
        ok = not isinstance(samples, bool) and float(samples) == int(samples)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok:
        n = int(samples)
        ok = n >= 64 and n & (n - 1) == 0
    if not ok:
        raise DomainError(f"samples must be a power of 2 of at least 64 (Sobol points), got {samples!r}")
    return n


def _state_sampler(st, mom, js, nodes: int):
    r"""Uniforms in (0, 1) -> the carried state: :func:`mftrnn.theory.gated_jacobian._carried_sampler` (law cells:
    inversion of the stationary law; closed cells: a Gauss rule of ``nodes`` nodes from the exact moments)."""
    return gj._carried_sampler(st, mom, js, nodes=nodes)


def coefficient_samples(fp_or_cell, *, samples: int = _SAMPLES, seed: int = 0, **hyperparameters) -> dict:
    r"""Unit coefficients of the one-step Jacobian at the mean-field fixed point, by scrambled Sobol points.

    Returns ``e`` (S, S, n), ``l`` (K, S, n), ``r`` (K, S, n), ``s`` (K,) (the :math:`\sigma_w^2` of each field's
    gate), ``fields`` and ``states`` (names), for ``samples`` units (a power of 2 of at least 64). Each symbol the
    coefficients depend on gets one Sobol coordinate: a field :math:`\mu + \sqrt q\,\Phi^{-1}(u)` with the fixed
    point's mean and variance, the carried state from its stationary law (module docstring)."""
    from scipy.special import ndtri
    from scipy.stats import qmc

    from .gated import analyse
    fp = gj._as_fixed_point(fp_or_cell, hyperparameters)
    n = _check_samples(samples)
    js = gj.jacobian_structure(fp.cell)
    st = analyse(js.cell)
    mom = gj._field_moments(fp, st)
    hp = gj._hyperparameters(fp, js.cell)
    used = set().union(*[m.free_symbols for m in (js.e, *js.l.values(), *js.r.values())])
    drawn = [a for a in js.args if a in used]
    u = qmc.Sobol(d=max(len(drawn), 1), scramble=True, seed=seed).random_base2(int(math.log2(n)))
    u = np.clip(u, 1e-15, 1.0 - 1e-15)
    values = {}
    for sym in js.args:
        if sym not in used:
            values[sym] = np.zeros(n)
        elif sym == js.carried:
            values[sym] = _state_sampler(st, mom, js, _STATE_NODES)(u[:, drawn.index(sym)])
        else:
            mu, q = mom[sym]
            values[sym] = mu + math.sqrt(q) * ndtri(u[:, drawn.index(sym)])
    e, l, r = js.evaluate(values, n)
    s = np.array([hp[js.gate[k]]["sigma_w"] ** 2 for k in js.l])
    return {"e": e, "l": l, "r": r, "s": s, "fields": tuple(str(k) for k in js.l),
            "states": tuple(str(x) for x in js.states), "fixed_point": fp}


# --------------------------------------------------------------------------- the law
@dataclass(frozen=True, eq=False)
class GatedSpectralLaw(SpectralLaw):
    r""":class:`~mftrnn.theory.spectrum.SpectralLaw` of one step of a gated cell from the matrix Dyson equation
    (``step``, a :class:`GatedStep`; ``product`` is None): :meth:`density`, :meth:`distribution` (exact, from the
    log-determinant), :meth:`cdf` (its interpolated table), :meth:`support`, and from the base class ``grid``,
    ``mass``, ``log_density``; ``mean`` = ``m1`` and ``m2`` (exact moments of the law, from its coefficients),
    ``approximation`` (what the law assumes), :meth:`kolmogorov_distance`, :meth:`atom_at_zero`,
    :meth:`contour_moments` and :meth:`cdf_moments`."""

    step: GatedStep | None = field(default=None, repr=False)
    approximation: str = ""

    @classmethod
    def from_coefficients(cls, e, l, r, s, *, orthogonal: bool = False, cell: str = "coefficients",
                          params: dict | None = None, approximation: str | None = None) -> "GatedSpectralLaw":
        r"""The law of :math:`JJ^\top`, :math:`J = E + \sum_kL_kW_kR_k`, for given unit coefficients (as
        :class:`GatedStep`: ``e`` (S, S, n), ``l`` and ``r`` (K, S, n), ``s`` (K,)); :math:`W_k` Gaussian, or
        :math:`\sqrt{s_k}` times independent Haar orthogonal matrices (``orthogonal=True``)."""
        if approximation is None:
            approximation = f"given coefficients, {'Haar orthogonal' if orthogonal else 'Gaussian'} W"
        return cls(cell, 1, bool(orthogonal), dict(params or {}), None, step=GatedStep(e, l, r, s, orthogonal),
                   approximation=approximation)

    @property
    def m1(self) -> float:
        return self.step.moments()[0]

    @property
    def m2(self) -> float:
        return self.step.moments()[1]

    @property
    def mean(self) -> float:
        return self.m1

    @property
    def relative_variance(self) -> float:
        return self.m2 / self.m1 ** 2 - 1.0

    def _solve_at(self, x, eta: float, outside: float):
        r"""Validated points ``x`` (as an array), the flat output filled with ``outside`` (the value above
        :attr:`GatedStep.bound`), the indices below the bound, those points, the solved unknowns there and
        :math:`\sqrt\zeta` at :math:`\zeta = x(1 + i\,\mathrm{eta})`."""
        x = np.asarray(x, dtype=float)
        if not np.all(np.isfinite(x)) or np.any(x <= 0):
            raise DomainError("spectral points x must be finite and positive")
        if not (np.isfinite(eta) and 0 < eta < 1):
            raise DomainError(f"eta (relative imaginary part) must lie in (0, 1), got {eta!r}")
        flat = x.ravel()
        out = np.full(flat.size, float(outside))
        inside = np.nonzero(flat < self.step.bound)[0]
        xi = flat[inside]
        U = _solve_real(self.step, xi, eta) if inside.size else None
        return x, out, inside, xi, U, np.sqrt(xi * (1.0 + 1j * eta))

    def density(self, x, *, eta: float = _ETA) -> np.ndarray:
        r""":math:`\rho(x) = -\operatorname{Im}\langle\operatorname{tr}Y_{11}\rangle/(\pi Sx)` at
        :math:`\zeta = x(1 + i\,\mathrm{eta})`, points ``x > 0`` (any shape); 0 above :attr:`GatedStep.bound`.
        Replacing :math:`1/\zeta` by :math:`1/x` (as :func:`mftrnn.theory.free.density`) leaves no Lorentzian tail
        of the whole mass outside the support. A clearly negative value raises :class:`~mftrnn.ConvergenceError`."""
        x, out, inside, xi, U, sq = self._solve_at(x, eta, 0.0)
        if inside.size:
            xr = (sq * self.step.trace(U, sq)).imag / np.pi  # x rho(x) = Im(zeta m(zeta)) / pi
            if np.any(xr < -1e-8 * max(np.max(np.abs(xr)), 1e-300)):
                raise ConvergenceError("negative spectral density: the solver left the physical branch")
            out[inside] = np.maximum(xr, 0.0) / xi
        return out.reshape(x.shape)

    def cdf(self, x, *, n: int = _CDF_NODES, tail: float = 1e-4) -> np.ndarray:
        return super().cdf(x, n=n, tail=tail)

    def mass(self, *, n: int = _CDF_NODES, tail: float = 1e-4) -> float:
        return super().mass(n=n, tail=tail)

    def kolmogorov_distance(self, samples, *, floor: float = 0.0) -> float:
        r""":math:`\sup_x|F(x) - F_n(x)|` against eigenvalues of :math:`JJ^\top`
        (:func:`mftrnn.theory.spectrum.kolmogorov_distance`)."""
        return _kolmogorov_distance(self, samples, floor=floor)

    def distribution(self, x, *, eta: float = _ETA) -> np.ndarray:
        r""":math:`F(x) = \rho([0, x])` at points ``x > 0`` (any shape), atom at 0 included, from the
        log-determinant of the matrix Dyson equation at :math:`\zeta = x(1 + i\,\mathrm{eta})`:
        :math:`F(x) = -1 - \operatorname{Im}\Phi/\pi` (module docstring). Exact for the law of the sampled
        coefficients at every point, however narrow its components (no quadrature of the density); 1 above
        :attr:`GatedStep.bound`."""
        x, out, inside, xi, U, sq = self._solve_at(x, eta, 1.0)
        if inside.size:
            F = -1.0 - self.step.log_det_phase(U, sq) / np.pi
            if np.any(F < -1e-9) or np.any(F > 1 + 1e-9):
                raise ConvergenceError("distribution function outside [0, 1]: the solver left the physical branch")
            out[inside] = np.clip(F, 0.0, 1.0)
        return out.reshape(x.shape)

    def support(self, tail: float = 1e-4) -> tuple[float, float]:
        r"""``(lo, hi)`` from :meth:`distribution`: ``hi`` the least point with :math:`F \ge 1 - 10^{-8}` (just
        above the upper edge), ``lo`` the greatest with :math:`F \le` ``tail`` (just below a hard lower edge, or
        where the mass left below is ``tail``), each located on a geometric scan (24 points a decade-wide bracket,
        three rounds) between ``_X_FLOOR`` times :attr:`GatedStep.bound` and the bound; ``lo`` stops at that floor
        (and :meth:`cdf` reports the mass below it there) where :math:`F` exceeds ``tail`` even so. Scans find the
        edges of the law itself, however narrow its components, unlike a threshold on the density."""
        key = ("support", float(tail))
        if key in self._cache:
            return self._cache[key]
        if not (np.isfinite(tail) and 0 < tail < 1):
            raise DomainError(f"tail must lie in (0, 1), got {tail!r}")
        b = self.step.bound
        x = b * np.geomspace(_X_FLOOR, 1.0, int(round(-math.log10(_X_FLOOR))) * 4 + 1)
        F = self.distribution(x)
        hi = self._bracket(x, F, lambda v: v >= 1.0 - 1e-8, upper=True)
        lo = self._bracket(x, F, lambda v: v <= tail, upper=False) if F[0] <= tail else float(x[0])
        self._cache[key] = (lo, hi)
        return lo, hi

    def _bracket(self, x, F, inside, *, upper: bool, rounds: int = 3) -> float:
        """The boundary of the set where ``inside(F)`` holds (above it for ``upper``, below it otherwise), refined
        by geometric scans of 24 points between the last scanned point in and the first out."""
        for _ in range(rounds):
            ok = inside(F)
            if upper:
                k = int(np.argmax(ok))  # first point in (F is non-decreasing)
                a, c = (x[k - 1], x[k]) if k > 0 else (x[0], x[0])
            else:
                k = int(np.nonzero(ok)[0][-1])  # last point in
                a, c = (x[k], x[k + 1]) if k + 1 < x.size else (x[k], x[k])
            if a == c:
                return float(a)
            x = np.geomspace(a, c, 26)
            F = np.concatenate([[F[k - 1] if upper else F[k]], self.distribution(x[1:-1]),
                                [F[k] if upper else F[k + 1]]])
        ok = inside(F)
        return float(x[int(np.argmax(ok))] if upper else x[int(np.nonzero(ok)[0][-1])])

    def _cdf_table(self, n: int = _CDF_NODES, tail: float = 1e-4):
        r""":meth:`distribution` on nodes over :meth:`support` for :meth:`cdf` (linear interpolation in
        :math:`\ln x`): ``n`` nodes clustered at both ends (:math:`\ln x = c - d\cos\theta`, :math:`\theta`
        uniform), then, for up to ``_CDF_LEVELS`` rounds, the midpoint (in :math:`\ln x`) of every interval not yet
        accepted; an interval is accepted when its midpoint value is within ``_CDF_TOL`` of the linear
        interpolation. The narrow components of a law of sampled coefficients (bumps of mass :math:`1/(Sn)` per
        unit where the recurrent coupling is weak) are followed down to :math:`2^{-\text{levels}}` of the first
        spacing; a step narrower than that stays a step of at most its mass."""
        key = ("cdf", n, float(tail))
        if key not in self._cache:
            lo, hi = self.support(tail)
            theta = np.linspace(0.0, np.pi, n)
            u = 0.5 * (math.log(hi) + math.log(lo)) - 0.5 * (math.log(hi) - math.log(lo)) * np.cos(theta)
            F = self.distribution(np.exp(u))
            open_ = np.ones(u.size - 1, bool)  # intervals not yet accepted
            for _ in range(_CDF_LEVELS):
                k = np.nonzero(open_)[0]
                if k.size == 0:
                    break
                um = 0.5 * (u[k] + u[k + 1])
                Fm = self.distribution(np.exp(um))
                bad = np.abs(Fm - 0.5 * (F[k] + F[k + 1])) > _CDF_TOL
                u = np.insert(u, k + 1, um)
                F = np.insert(F, k + 1, Fm)
                open_ = np.insert(open_, k + 1, bad)
                open_[k + np.arange(k.size)] = bad  # the left halves (indices shifted by the insertions)
            F = np.maximum.accumulate(F)  # monotone (rounding)
            self._cache[key] = (np.exp(u), F, float(F[-1] - F[0]))
        return self._cache[key]

    def cdf_moments(self, kmax: int = 2, *, n: int = _CDF_NODES, tail: float = 1e-4) -> np.ndarray:
        r"""Moments :math:`m_k = k\int_0^\infty\lambda^{k-1}(1 - F(\lambda))\,d\lambda`, :math:`k = 1..k_{max}`,
        from the distribution function on the nodes of :meth:`cdf` (trapezoid rule in :math:`\ln\lambda`; below
        the lower end :math:`1 - F` is taken as :math:`1 - F(\text{lo})`)."""
        x, F, _ = self._cdf_table(n, tail)
        u = np.log(x)
        out = []
        for k in range(1, kmax + 1):
            g = np.exp(k * u) * (1.0 - F)
            out.append(k * float(np.sum(0.5 * (g[1:] + g[:-1]) * np.diff(u))) + x[0] ** k * (1.0 - F[0]))
        return np.array(out)

    def contour_moments(self, kmax: int = 2, *, nodes: int = 64) -> np.ndarray:
        r"""Moments :math:`m_0..m_{k_{max}}` of the law from the Cauchy transform :math:`G(\zeta) =
        \langle\operatorname{tr}Y_{11}\rangle/(S\zeta)` on the circle :math:`|\zeta - b/2| = b`
        (:math:`b` = :attr:`GatedStep.bound`), :math:`m_k = \frac1{2\pi i}\oint\zeta^kG(\zeta)\,d\zeta`:
        the trapezoid rule on ``nodes`` points of the upper half circle (the lower half by :math:`G(\bar\zeta) =
        \overline{G(\zeta)}`) converges geometrically, the circle keeping a distance :math:`b/2` from the
        support. A check of the solution of the matrix Dyson equation against the moments of its coefficients
        (:attr:`m1`, :attr:`m2`), independent of the density on the real axis."""
        b = self.step.bound
        theta = (np.arange(nodes) + 0.5) * np.pi / nodes
        zeta = b / 2 + b * np.exp(1j * theta)
        U = _solve(self.step, zeta.real, zeta.imag)
        sq = np.sqrt(zeta)
        G = -self.step.trace(U, sq) / sq  # G = -m
        dz = 1j * b * np.exp(1j * theta) * (np.pi / nodes)
        return np.array([(np.sum(zeta ** k * G * dz) / (1j * np.pi)).real for k in range(kmax + 1)])

    def atom_at_zero(self, *, y: float | None = None) -> float:
        r"""Mass of the law at :math:`\lambda = 0`: :math:`\operatorname{Re}\langle\operatorname{tr}Y_{11}
        \rangle/S = \int y^2/(y^2+\lambda^2)\,d\rho(\lambda)` at :math:`\zeta = iy`, :math:`y` = ``y`` (default
        :math:`10^{-9}` of the mean). It exceeds the atom by the mass of :math:`\rho` within about :math:`y` of 0."""
        y = 1e-9 * self.mean if y is None else y
        try:
            ok = not isinstance(y, bool) and np.isfinite(float(y)) and float(y) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DomainError(f"y must be finite and positive, got {y!r}")
        y = np.array([float(y)])
        U = _solve(self.step, np.zeros(1), y)
        sq = np.sqrt(1j * y)
        return float(min(max((-sq * self.step.trace(U, sq))[0].real, 0.0), 1.0))


def gated_step_law(fp_or_cell, *, orthogonal: bool = False, samples: int = _SAMPLES, seed: int = 0,
                   **hyperparameters) -> GatedSpectralLaw:
    r"""Large-:math:`N` law of the eigenvalues of :math:`JJ^\top` for the one-step Jacobian of a gated cell's whole
    state (the LSTM's :math:`(c, h)`: :math:`2N` values) at its mean-field fixed point, Gaussian recurrent weights
    or (``orthogonal=True``) :math:`\sigma_{w,K}` times independent Haar orthogonal matrices.

    ``fp_or_cell``: a :class:`~mftrnn.FixedPoint` of a gated cell or a cell name with its hyperparameters (as
    :func:`mftrnn.theory.gated_jacobian.gated_step_moments`). ``samples`` Sobol unit samples (a power of 2),
    scrambled with ``seed``. Matrix Dyson equation of the module docstring (:class:`GatedStep`; for Haar
    :math:`W_k` with each field's R-transform factor :math:`\varphi_k`); exact for the untied mean field up to the
    quasi-Monte Carlo error of the coefficients (and, for Haar :math:`W_k`, in the large-:math:`N` limit where real
    orthogonal and unitary Haar matrices agree)."""
    c = coefficient_samples(fp_or_cell, samples=samples, seed=seed, **hyperparameters)
    fp = c["fixed_point"]
    kind = "Haar orthogonal" if orthogonal else "Gaussian"
    return GatedSpectralLaw.from_coefficients(
        c["e"], c["l"], c["r"], c["s"], orthogonal=orthogonal, cell=fp.cell, params=fp.params,
        approximation=f"untied mean field, {kind} W; coefficients: {c['e'].shape[2]} scrambled Sobol units "
                      f"(seed {seed})")


def deformed_step(coefficients: dict) -> DeformedStep:
    r"""For one state (:math:`S = 1`) the one-step law as :class:`~mftrnn.theory.free.DeformedStep`:
    :math:`\sum_k\operatorname{diag}(l_kr_k)W_k = \operatorname{diag}(b)\,G` in law with :math:`b^2 =
    \sum_ks_kl_k^2r_k^2` (rows of independent Gaussian entries given the coefficients), :math:`a = e`,
    ``sigma_w = 1``, equal weights. ``coefficients``: as :func:`coefficient_samples` returns."""
    e, l, r, s = (np.asarray(coefficients[k], dtype=float) for k in ("e", "l", "r", "s"))
    if e.shape[0] != 1:
        raise MftrnnError(f"the deformed-step form needs one state, the cell has {e.shape[0]}")
    b = np.sqrt(np.einsum("k,kn->n", s, (l[:, 0] * r[:, 0]) ** 2))
    return DeformedStep(e[0, 0], b, None, sigma_w=1.0)


def gated_product_law(fp_or_cell, T, *, orthogonal: bool = False, samples: int = _SAMPLES, seed: int = 0,
                      **hyperparameters) -> SpectralLaw:
    r"""Law of :math:`JJ^\top` for the ``T``-step Jacobian of a gated cell with **one** state (``nn.GRU``) in the
    **free-product approximation** :math:`S_T = S_{\rm step}^T` (as :func:`mftrnn.theory.spectrum.spectral_law`
    for the minimalRNN), the step being :func:`deformed_step` of the Sobol coefficients: a
    :class:`~mftrnn.theory.spectrum.SpectralLaw`. Its mean is :math:`m_1^T = \chi^T` (exact in the untied mean
    field); its spread is not: the diagonal parts :math:`\operatorname{diag}(z_t)` of successive steps are
    classically, not freely, independent, and the free product underestimates the spread
    (``relative_variance_independent`` of :func:`mftrnn.theory.gated_jacobian.gated_product_moments` is the exact
    untied value). Cells with several states are refused: their :math:`T`-step mean is not :math:`m_1^T` (the
    states mix; :func:`~mftrnn.theory.gated_jacobian.gated_product_moments` has it)."""
    if orthogonal:
        raise MftrnnError("gated_product_law: for Haar orthogonal W the step of a cell with several fields is not a "
                          "deformed step (sum_k diag(l_k) O_k is not diag(b) O in law); use gated_step_law(..., "
                          "orthogonal=True) for T = 1 and gated_product_moments(..., orthogonal=True)")
    T = gj._check_T(T)
    c = coefficient_samples(fp_or_cell, samples=samples, seed=seed, **hyperparameters)
    if len(c["states"]) != 1:
        raise MftrnnError(f"gated_product_law: the cell has {len(c['states'])} states, whose T-step mean is not the "
                          "one-step mean to the power T; use gated_step_law (T = 1) and gated_product_moments")
    fp = c["fixed_point"]
    prod = FreeProduct(((deformed_step(c), T),))
    prod.check_range()
    return SpectralLaw(fp.cell, T, False, dict(fp.params), prod)

r"""Full spectral density of :math:`JJ^\top` for the :math:`T`-step state-to-state Jacobian of a recurrent cell.

**Model.** One step has the Jacobian :math:`J_t = \operatorname{diag}(a) + \sigma_w\operatorname{diag}(b)\,G`
(:mod:`mftrnn.theory.jacobian`), with :math:`G` Ginibre (:math:`G_{ij}\sim\mathcal N(0,1/N)`) or Haar orthogonal
(``orthogonal=True``) and the coefficients :math:`(a_i, b_i)` distributed by their mean-field law at the fixed point
(:func:`mftrnn.theory.jacobian.coefficient_law`, a discrete law of atoms). The law of :math:`J_tJ_t^\top` at large
:math:`N` is

* for a cell with :math:`a\equiv0` (vanilla RNN, :math:`b = \tanh'(e)`): the free product of the law of
  :math:`b^2` with the Marchenko-Pastur law of scale :math:`\sigma_w^2` (Gaussian) or with :math:`\delta_{\sigma_w^2}`
  (orthogonal): :math:`S_{\rm step} = S_{b^2}\,S_{WW^\top}` (:math:`J_tJ_t^\top = BWW^\top B` has the spectrum of
  :math:`B^2\,WW^\top`, and :math:`W` is free from the diagonal :math:`B`);
* otherwise (minimalRNN, :math:`a = u`, :math:`b = u(1-u)(h_{t-1}-z_t)`): the deformed law of
  :class:`mftrnn.theory.free.DeformedStep` (Hermitisation and operator-valued subordination; Gaussian and Haar :math:`G`).

The :math:`T`-step product :math:`J = J_T\cdots J_1` is then given by :math:`S_T = S_{\rm step}^T`. **This is an
approximation**: it treats the factors :math:`J_tJ_t^\top` as asymptotically free with one law. For the vanilla RNN
with untied weights (a fresh :math:`W` each step) it is exact as :math:`N\to\infty`; with tied weights (one
:math:`W`, the real network) the :math:`W` in different steps is the same matrix and :math:`D_t` depends on it, and
freeness is an assumption (borne out by the comparisons in ``tests/test_spectrum.py``). For the minimalRNN it is an
approximation even for untied weights: the diagonal parts :math:`\operatorname{diag}(a_t)` of different steps commute
(they are classically, not freely, independent), and a unit's gate is correlated across steps. The per-step law
itself is exact for the discrete coefficient law given.

**Numerics.** :func:`mftrnn.theory.free.density` inverts :math:`x\,w\,S_T(w) = 1+w` by continuation in the imaginary part.
Products of many steps span many decades (with Gaussian :math:`W` the density diverges at 0 like
:math:`x^{-T/(T+1)}`, so the mass below :math:`x` decays only like :math:`x^{1/(T+1)}`); :meth:`SpectralLaw.support`
finds the upper edge (a hard edge, located by bisection) and the lower end (a hard edge, or the point below which
the mass is below a tolerance, estimated from the local power law), and :meth:`SpectralLaw.log_density` gives the
density of :math:`\ln\lambda`, :math:`x\rho(x)`, the natural quantity to plot on a log axis.
:meth:`SpectralLaw.cdf` integrates the density and :func:`kolmogorov_distance` compares it with samples.

**Discrete coefficient laws.** With Gaussian :math:`G` the Marchenko-Pastur factor (or the Gaussian term of the
deformed step) broadens the atoms of :func:`~mftrnn.theory.jacobian.coefficient_law` into a smooth density. With Haar
:math:`G` the broadening is weak: for :math:`a\equiv0` there is none, and one step is the law of :math:`\sigma_w^2b^2`
itself. Hence, for orthogonal :math:`W`: cells with :math:`a\equiv0` and :math:`b = b(e)` use ``_FINE_ATOMS`` = 2000
equal-weight quantile atoms of :math:`e` (:func:`_fine_diagonal_law`; its mean reproduces :math:`\chi` to 5e-7 in the
tests), and at :math:`T=1` the law is reported as the histogram of these atoms (bins between midpoints,
:attr:`SpectralLaw.atoms`) without any inversion; other cells use 16 atoms of the carried variable
(``coefficient_law(..., n_state=16)``), which lowers the Kolmogorov distance to a network at :math:`T=1` from 0.035
(6 atoms) to 0.015 (measured, minimalRNN, :math:`\sigma_w=2`, :math:`\mu_b=3`, untied, 3 networks of :math:`N=500`).
Remaining bumps from the atoms show in the pointwise density at small :math:`T`; the CDF is accurate. Atoms of tiny
weight (the quadrature's Gaussian tails reach weights of 1e-27) give narrow, genuine components of the law of the
discrete coefficients, away from the bulk: for the minimalRNN with Haar :math:`W`, :math:`\sigma_w=2`,
:math:`\mu_b=3`, :math:`T=5` (bulk from about 5e-3 to 2.6) there are components on [1.0735e-4, 1.1033e-4] (peak
density 9.8e-3, mass ~3e-8), near 1.0592e-4 (relative width 7e-5), 2.6e-4, 5.9e-4, 6.1e-4..6.8e-4 and 4.09..4.13,
confirmed by an independent continuation in :math:`x` (``tests/test_spectral_branches.py``); between them the density
is :math:`O(\eta)` (~1e-10). They carry negligible mass; a continuous coefficient law would smear them into a thin
tail. :meth:`SpectralLaw.support` sees the component at 4.1 (it reports the upper edge there).

**Accuracy** (``tests/test_spectrum.py``, Kolmogorov distance to the eigenvalues of 2 networks of :math:`N=500`;
tolerance 0.062 from the Dvoretzky-Kiefer-Wolfowitz bound for 1000 coefficient samples): vanilla RNN, Gaussian
:math:`W`, tied, :math:`T=1,5,20`: about 0.01; orthogonal :math:`W`: 0.024 (:math:`T=1`), 0.009 (:math:`T=5`);
minimalRNN, untied: 0.020, 0.010, 0.013; Haar, :math:`T=5`: 0.007. Not covered: the tied minimalRNN, where both the
mean-field law and freeness across steps degrade (:math:`\sigma_w=2`, :math:`\mu_b=3`, :math:`T=20`: mean 0.118 in
the network vs :math:`\chi^T = 0.097`, Kolmogorov distance 0.065), and the minimalRNN at small :math:`\mu_b`, where the
classical (not free) independence of the gates across steps matters (:math:`\sigma_w=1`, :math:`\mu_b=0`, untied,
:math:`T=5`: relative variance 7.2 in the network vs :math:`Tr = 3.9`, Kolmogorov distance 0.036; at :math:`T=20`,
0.056).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..errors import ConvergenceError, DomainError
from .fixed_point import DEFAULTS, FixedPoint, fixed_point, unpack_fixed_point
from .free import DeformedStep, DiagonalLaw, FreeProduct, MarchenkoPastur, PointMass, density as _density

__all__ = ["SpectralLaw", "spectral_law", "step_law", "spectral_density", "spectral_grid", "kolmogorov_distance"]

_ZERO_DENSITY = 1e-9  # x rho(x) below this fraction of its maximum counts as outside the support
_TAIL_MASS = 1e-4  # default mass left below the lower end when the support reaches 0
_FINE_ATOMS = 2000  # equal-weight atoms of b^2 when nothing broadens them (a = 0, orthogonal W)
_ORTHOGONAL_STATE_ATOMS = 16  # atoms of the carried variable in coefficient_law for orthogonal W


def _check_T(T) -> int:
    if isinstance(T, bool) or not float(T).is_integer() or T < 1:
        raise DomainError(f"T must be an integer >= 1, got {T!r}")
    return int(T)


def _fine_diagonal_law(cell, hp: dict, fp=None, K: int = _FINE_ATOMS):
    r"""Equal-weight law of :math:`b^2` for a cell with :math:`a\equiv0` whose :math:`b` depends on its pre-activation
    only (vanilla RNN: :math:`b = 1-\tanh^2e`), or None for other cells.

    Atoms :math:`b(e_k)^2` at the quantile midpoints :math:`e_k = \mu_b + \sqrt{q^*}\,\Phi^{-1}((k+\frac12)/K)`,
    weights :math:`1/K`: a law whose CDF is within :math:`1/(2K)` of the exact one everywhere (the :func:`coefficient_law`
    trapezoid rule integrates smooth functions to 1e-12 but has atoms of weight up to ~0.1). Moments are accurate to
    :math:`O(K^{-1})` relative (the truncated Gaussian tails and the midpoint rule), which the tests bound."""
    from scipy.special import ndtri

    from ..cells.registry import get_cell
    from .jacobian import step_jacobian

    cell = get_cell(cell, gated=False)
    jac = step_jacobian(cell)
    if len(jac.b) != 1 or jac.a != 0:
        return None
    parts = jac.b_parts[0]
    if any(sp.sympify(v) != 0 for k, v in parts.items() if k != 1):
        return None
    p = cell.preactivations[0]
    subs = {s: hp.get(s.name, DEFAULTS.get(s.name)) for s in cell.hyperparameters}
    mu = float(sp.sympify(p.mu_b).subs(subs))
    q = float((fp or fixed_point(cell, **hp)).q_star)
    e = mu + math.sqrt(q) * ndtri((np.arange(K) + 0.5) / K)
    b = sp.lambdify(p.symbol, sp.sympify(parts[1]).subs(subs), "numpy")(e)
    b = np.broadcast_to(np.asarray(b, dtype=float), e.shape)
    return np.ascontiguousarray(b * b)


def step_law(cell, *, orthogonal: bool = False, **hyperparameters) -> FreeProduct:
    r"""The law of :math:`J_tJ_t^\top` for one step, as a :class:`~mftrnn.theory.free.FreeProduct` (module docstring).

    ``cell`` is a name or a :class:`~mftrnn.Cell` with hyperparameters as for :func:`mftrnn.fixed_point` (scalars), or
    a computed :class:`~mftrnn.FixedPoint` (the fixed point is then not solved again; it is solved once otherwise).
    Coefficients from :func:`~mftrnn.theory.jacobian.coefficient_law` (with ``n_state=16`` atoms of the carried variable for
    orthogonal :math:`W`, which broadens the atoms of :math:`b` only weakly), except for :math:`a\equiv0` with
    orthogonal :math:`W`, where nothing broadens them and the law of :math:`b^2` is taken on
    ``_FINE_ATOMS`` equal-weight quantile atoms (:func:`_fine_diagonal_law`)."""
    from ..cells.registry import get_cell
    from .jacobian import coefficient_law

    cell, hyperparameters, fp = unpack_fixed_point(cell, hyperparameters)
    fp = fp or fixed_point(get_cell(cell, gated=False), **hyperparameters)
    law = coefficient_law(fp, n_state=_ORTHOGONAL_STATE_ATOMS if orthogonal else 6)
    s = float(law.sigma_w) ** 2
    if not s > 0:
        raise DomainError("the spectrum needs sigma_w > 0 (with sigma_w = 0 the Jacobian is diagonal)")
    if not np.any(law.a):
        p0 = float(np.sum(law.weight[law.b == 0]))
        if p0 > 1e-12:  # e.g. ReLU: b = Theta(e) is 0 with probability Phi(-mu_b/sqrt(q*))
            raise DomainError(f"{fp.cell}: the law of b^2 = phi'(e)^2 has an atom at 0 (mass {p0:.4g}); the spectral "
                              f"density of a product with a zero atom is not computed (the mean chi^T and the "
                              f"variance, mftrnn spectrum without --out, are)")
        fine = _fine_diagonal_law(cell, dict(fp.params), fp) if orthogonal else None
        D = DiagonalLaw(law.b ** 2, law.weight) if fine is None else DiagonalLaw(fine)
        W = PointMass(s) if orthogonal else MarchenkoPastur(s)
        return FreeProduct(((D, 1), (W, 1)))
    return FreeProduct(((DeformedStep(law.a, law.b, law.weight, sigma_w=law.sigma_w, orthogonal=orthogonal), 1),))


@dataclass(frozen=True, eq=False)
class SpectralLaw:
    r"""Large-N law of the eigenvalues of :math:`JJ^\top`, :math:`J = J_T\cdots J_1`, under the free approximation.

    ``product``: the :class:`~mftrnn.theory.free.FreeProduct` :math:`S_{\rm step}^T`. ``mean`` :math:`=m_1^T=\chi^T`,
    ``relative_variance`` :math:`=T\,r` (``r`` of one step). ``atoms``: for a purely atomic law (one step of a cell
    with :math:`a\equiv0` and orthogonal :math:`W`: the law of :math:`\sigma_w^2b^2` itself) the pair (values,
    weights); the density is then the histogram of the atoms on bins between the midpoints of consecutive atoms and
    the CDF its integral (exact at the bin edges), with no free-probability inversion.
    """

    cell: str
    T: int
    orthogonal: bool
    params: dict
    product: FreeProduct
    atoms: tuple | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def _bins(self):
        """Bin edges and weights of the histogram of an atomic law."""
        if "bins" not in self._cache:
            v, p = self.atoms
            order = np.argsort(v)
            v, p = v[order], p[order]
            v, idx = np.unique(v, return_index=True)
            p = np.add.reduceat(p, idx)
            if v.size == 1:
                edges = v[0] * np.array([1 - 1e-6, 1 + 1e-6])
            else:
                mid = 0.5 * (v[1:] + v[:-1])
                lo = max(v[0] - (mid[0] - v[0]), 0.5 * v[0])
                edges = np.concatenate([[lo], mid, [v[-1] + (v[-1] - mid[-1])]])
            self._cache["bins"] = (edges, p / p.sum())
        return self._cache["bins"]

    @property
    def mean(self) -> float:
        return self.product.mean

    @property
    def relative_variance(self) -> float:
        return self.product.relative_variance

    def density(self, x, *, eta: float = 1e-10) -> np.ndarray:
        r""":math:`\rho(x)` at points ``x > 0`` (any shape)."""
        if self.atoms is None:
            return _density(self.product, x, eta=eta)
        x = np.asarray(x, dtype=float)
        if not np.all(np.isfinite(x)) or np.any(x <= 0):
            raise DomainError("spectral points x must be finite and positive")
        edges, p = self._bins()
        k = np.searchsorted(edges, x, side="right") - 1
        inside = (k >= 0) & (k < p.size)
        kk = np.clip(k, 0, p.size - 1)
        return np.where(inside, p[kk] / np.diff(edges)[kk], 0.0)

    def log_density(self, y, *, eta: float = 1e-10) -> np.ndarray:
        r"""Density of :math:`\ln\lambda` at ``y``: :math:`e^y\rho(e^y)`."""
        x = np.exp(np.asarray(y, dtype=float))
        return x * self.density(x, eta=eta)

    def _refine_edge(self, inside: float, outside: float, thr: float, rounds: int = 3) -> float:
        """Locate (geometrically, 24 points a round) the edge between a point with density and one without."""
        for _ in range(rounds):
            pts = np.geomspace(inside, outside, 26)[1:-1]
            has = pts * self.density(pts) > thr
            # the edge follows the last point with density (a gap before it does not end the spectrum)
            k = int(np.nonzero(has)[0][-1]) + 1 if has.any() else 0
            seq = np.concatenate([[inside], pts, [outside]])
            inside, outside = seq[k], seq[k + 1]
        return float(np.sqrt(inside * outside))

    def support(self, tail: float = _TAIL_MASS) -> tuple[float, float]:
        r"""``(lo, hi)``: the upper edge of the spectrum and its lower end.

        Upper edge: :math:`x\rho(x)` on a scan in factors of 2 from :math:`2^{-8}` to :math:`2^{63}` times the mean;
        the edge lies above the *last* point with density (a discrete coefficient law can give separated bumps) and is
        refined by geometric bisection (relative accuracy :math:`\sim10^{-4}`). Lower end: a scan down from ``hi``
        in factors of 10. It stops at the first point where the mass below, estimated from the local power law
        :math:`\rho\propto x^{-\gamma}` as :math:`x\rho(x)/(1-\gamma)`, is below ``tail`` (``lo`` is that point), or
        after three decades without density (``lo`` is then the hard lower edge below the last point with density,
        refined likewise). A point counts as without density when :math:`x\rho(x)` is below 1e-9 of its maximum on
        the upper scan. Bumps narrower than the scan's spacing can be missed; :meth:`mass` tells how much the
        resulting interval holds.
        """
        key = ("support", float(tail))
        if key in self._cache:
            return self._cache[key]
        if self.atoms is not None:
            edges, _ = self._bins()
            return float(edges[0]), float(edges[-1])
        up = self.mean * 2.0 ** np.arange(-8, 64)
        lu = up * self.density(up)
        thr = _ZERO_DENSITY * lu.max()
        has = np.nonzero(lu > thr)[0]
        if has.size == 0 or has[-1] == up.size - 1:
            raise ConvergenceError("could not locate the upper edge of the spectrum")
        hi = self._refine_edge(up[has[-1]], up[has[-1] + 1], thr)
        down = hi * 10.0 ** -np.arange(1, 300)
        down = down[down > 1e-290]
        lo, prev = None, (hi, np.nan)
        last_with = hi  # last scanned point with density
        chunk = 4  # decades per batch
        for start in range(0, down.size, chunk):
            pts = down[start:start + chunk]
            ld = pts * self.density(pts)
            xs = np.concatenate([[prev[0]], pts])
            ls = np.concatenate([[prev[1]], ld])
            prev = (pts[-1], ld[-1])
            # mass below x ~ x rho / (1 - gamma) for rho ~ x^-gamma, with 1 - gamma = d ln(x rho)/d ln x between
            # consecutive points
            with np.errstate(divide="ignore", invalid="ignore"):
                slope = np.diff(np.log(ls)) / np.diff(np.log(xs))
                mass = ls[1:] / np.where(slope > 0, slope, np.nan)
            for k in range(pts.size):
                if ld[k] > thr:
                    last_with = pts[k]
                    if np.isfinite(mass[k]) and mass[k] < tail:
                        lo = float(pts[k])
                        break
                elif pts[k] < last_with * 1e-3 * (1 + 1e-9):  # three decades without density: a hard lower edge
                    lo = self._refine_edge(last_with, last_with / 10.0, thr)
                    break
            if lo is not None:
                break
        if lo is None:
            raise ConvergenceError("could not locate the lower end of the spectrum above 1e-290")
        self._cache[key] = (lo, hi)
        return lo, hi

    def grid(self, n: int = 400, tail: float = _TAIL_MASS) -> np.ndarray:
        """``n`` points geometrically spaced over :meth:`support` (ends excluded by half a step)."""
        if isinstance(n, bool) or int(n) != n or n < 2:
            raise DomainError(f"n must be an integer >= 2, got {n!r}")
        lo, hi = self.support(tail)
        u = np.linspace(math.log(lo), math.log(hi), int(n) + 1)
        return np.exp(0.5 * (u[1:] + u[:-1]))

    def _cdf_table(self, n: int = 800, tail: float = _TAIL_MASS):
        key = ("cdf", n, float(tail))
        if key not in self._cache:
            lo, hi = self.support(tail)
            # u = ln x on [ln lo, ln hi] through u = c - d cos(theta): nodes cluster at both ends, where the density
            # has square-root (or power-law) behaviour, and the trapezoid rule in theta stays accurate
            theta = np.linspace(0.0, np.pi, n)
            c, d = 0.5 * (math.log(hi) + math.log(lo)), 0.5 * (math.log(hi) - math.log(lo))
            u = c - d * np.cos(theta)
            x = np.exp(u)
            inner = self.log_density(u[1:-1])
            f = np.concatenate([[0.0], inner, [0.0]]) * d * np.sin(theta)  # (x rho) du/dtheta
            cum = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(theta))])
            total = cum[-1]
            # F(x) = 1 - (mass above x): the mass below lo is whatever the grid does not hold
            self._cache[key] = (x, 1.0 - (total - cum), total)
        return self._cache[key]

    def cdf(self, x, *, n: int = 800, tail: float = _TAIL_MASS) -> np.ndarray:
        r""":math:`F(x) = 1 - \int_x^\infty\rho`, from the density integrated on ``n`` points over :meth:`support`
        (clustered at both ends, linear interpolation in :math:`\ln x`). Below the lower end it returns the value there,
        i.e. the mass not covered (at most about ``tail`` when the support reaches 0); above the upper edge, 1.
        For an atomic law (:attr:`atoms`), the CDF of the histogram, exact at the bin edges."""
        x = np.asarray(x, dtype=float)
        if self.atoms is not None:
            edges, p = self._bins()
            return np.interp(x, edges, np.concatenate([[0.0], np.cumsum(p)]))
        xs, F, _ = self._cdf_table(n, tail)
        u = np.log(np.clip(x, xs[0], xs[-1]))
        out = np.interp(u, np.log(xs), F)
        return np.where(x >= xs[-1], 1.0, out)

    def mass(self, *, n: int = 800, tail: float = _TAIL_MASS) -> float:
        """Mass of the density over :meth:`support` (1 minus the mass below the lower end)."""
        if self.atoms is not None:
            return 1.0
        return float(self._cdf_table(n, tail)[2])


@functools.lru_cache(maxsize=64)
def _spectral_law(cell, T, orthogonal, items):
    hp = dict(items)
    prod1 = step_law(cell, orthogonal=orthogonal, **hp)
    prod = FreeProduct(tuple((f, k * T) for f, k in prod1.terms))
    prod.check_range()
    name = cell if isinstance(cell, str) else getattr(cell, "name", str(cell))
    atoms = None
    if T == 1 and all(isinstance(f, (DiagonalLaw, PointMass)) for f, _ in prod.terms):
        # one step with nothing to broaden the atoms: the law is the atoms themselves (times the point masses)
        scale = float(np.prod([f.s ** k for f, k in prod.terms if isinstance(f, PointMass)]))
        D = next(f for f, _ in prod.terms if isinstance(f, DiagonalLaw))
        atoms = (scale * D.values, D.weights)
    return SpectralLaw(name, T, bool(orthogonal), hp, prod, atoms)


def spectral_law(cell, T, *, orthogonal: bool = False, **hyperparameters) -> SpectralLaw:
    r"""The :class:`SpectralLaw` of :math:`JJ^\top` for the ``T``-step Jacobian of ``cell`` (cached); ``cell`` may be a
    computed :class:`~mftrnn.FixedPoint` (scalar hyperparameters) instead of a cell and hyperparameters."""
    T = _check_T(T)
    if isinstance(cell, FixedPoint):
        cell, hyperparameters, _ = unpack_fixed_point(cell, hyperparameters)
    items = []
    for k, v in sorted(hyperparameters.items()):
        try:
            items.append((k, float(v)))
        except (TypeError, ValueError):
            raise DomainError(f"{k} must be a scalar number, got {v!r}") from None
    return _spectral_law(cell, T, bool(orthogonal), tuple(items))


def spectral_density(cell, T, x, *, orthogonal: bool = False, **hyperparameters) -> np.ndarray:
    r"""Density :math:`\rho(x)` of the eigenvalues of :math:`JJ^\top` (squared singular values of the ``T``-step
    Jacobian :math:`J = J_T\cdots J_1` of ``cell`` at its mean-field fixed point) at points ``x > 0``.

    Free-probability approximation :math:`S_T = S_{\rm step}^T` (module docstring); ``orthogonal``: :math:`W =
    \sigma_w O` with Haar :math:`O` instead of Gaussian :math:`W`. Hyperparameters as for :func:`mftrnn.fixed_point`.
    """
    return spectral_law(cell, T, orthogonal=orthogonal, **hyperparameters).density(x)


def spectral_grid(cell, T, n: int = 400, *, orthogonal: bool = False, tail: float = _TAIL_MASS,
                  **hyperparameters) -> np.ndarray:
    """``n`` geometrically spaced points covering the spectrum (see :meth:`SpectralLaw.support`)."""
    return spectral_law(cell, T, orthogonal=orthogonal, **hyperparameters).grid(n, tail)


def kolmogorov_distance(law: SpectralLaw, samples, *, floor: float = 0.0) -> float:
    r""":math:`\sup_x|F(x) - F_n(x)|` between the law's CDF and the empirical CDF of ``samples`` (eigenvalues of
    :math:`JJ^\top`), over :math:`x\ge` ``floor`` (use it to leave out values below the resolution of a
    floating-point SVD, :math:`\sim10^{-30}\lambda_{max}` in double precision)."""
    s = np.sort(np.asarray(samples, dtype=float).ravel())
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise DomainError("samples must be a non-empty array of finite numbers")
    n = s.size
    F = law.cdf(np.maximum(s, 1e-300))
    i = np.arange(n)
    keep = s >= floor
    d_hi = np.abs(F - (i + 1) / n)[keep]
    d_lo = np.abs(F - i / n)[keep]
    if d_hi.size == 0:
        raise DomainError("no samples above the floor")
    return float(max(d_hi.max(), d_lo.max()))

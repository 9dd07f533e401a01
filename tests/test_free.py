"""Free multiplicative convolution kernels (mftrnn.theory.free): closed forms, S-transform identities, sampled matrices.

Tolerances.  Closed forms (Marchenko-Pastur density, Fuss-Catalan moments, S-transform limits) are checked to the
accuracy of the numerics: the inversion converges to ~1e-12 relative, and moments integrated on a log grid of a
few thousand points are accurate to ~1e-4 (trapezoid rule in log x on densities with square-root edges). Against
sampled matrices the comparison is a Kolmogorov distance sup|F_theory - F_N|; the coefficient atoms are assigned in
exact proportions (no multinomial noise), so what remains is the finite-N fluctuation of the eigenvalues, of order
(log N)/N ~ 0.006 at N = 1200; the tolerance 0.02 is three times that. Measured values are in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import mftrnn as mf
from mftrnn.theory import free as fr


def _log_moments(prod, lo, hi, n=4000, kmax=3):
    """Moments k = 0..kmax of the density on [lo, hi], trapezoid rule in u = ln x on a cosine-clustered grid."""
    theta = np.linspace(0, np.pi, n)
    c, d = 0.5 * (math.log(hi) + math.log(lo)), 0.5 * (math.log(hi) - math.log(lo))
    u = c - d * np.cos(theta)
    x = np.exp(u)
    xr = np.zeros(n)
    xr[1:-1] = x[1:-1] * fr.density(prod, x[1:-1])
    jac = d * np.sin(theta)
    return np.array([np.trapezoid(x ** k * xr * jac, theta) for k in range(kmax + 1)])


def test_marchenko_pastur_closed_form():
    s = 1.7
    x = np.linspace(0.01, 4 * s - 0.01, 120)
    rho = fr.density(fr.MarchenkoPastur(s), x)
    exact = np.sqrt(np.maximum(4 * s / x - 1, 0)) / (2 * np.pi * s)
    assert np.max(np.abs(rho - exact)) < 1e-8  # measured 1.6e-11
    outside = fr.density(fr.MarchenkoPastur(s), np.array([4 * s * 1.01, 10 * s]))
    assert np.all(outside < 1e-8)


@pytest.mark.parametrize("T", [2, 4])
def test_fuss_catalan_moments_and_edge(T):
    # T free Marchenko-Pastur factors = squared singular values of a product of T Ginibre matrices
    prod = fr.FreeProduct(((fr.MarchenkoPastur(1.0), T),))
    edge = (T + 1) ** (T + 1) / T ** T
    m = _log_moments(prod, 1e-12, edge)
    exact = fr.fuss_catalan_moments(T, 3)
    # k >= 1: the lower end contributes nothing; k = 0: the mass below 1e-12 ~ x^(1/(T+1)) is missing (< 1.1e-2)
    assert m[1:] == pytest.approx(exact[1:], rel=2e-4)  # measured ~1e-6
    assert 0.97 < m[0] <= 1.0 + 1e-4
    inside, outside = fr.density(prod, np.array([edge * (1 - 1e-3), edge * (1 + 1e-3)]))
    assert inside > 1e-4 and outside < 1e-8  # square-root edge: rho ~ sqrt(1e-3) times a small prefactor
    # S-transform of the product: (1 + w)^(-T)
    w = np.array([0.05 - 0.02j, -0.3 - 0.1j])
    assert np.allclose(fr.s_transform(prod, w), (1 + w) ** -T, rtol=1e-12)


def test_haar_product_is_a_point_mass():
    # sigma O with O Haar orthogonal: W W^T = sigma^2 I, S = 1/sigma^2; T of them: delta at sigma^(2T)
    prod = fr.FreeProduct(((fr.PointMass(1.0), 7),))
    w = np.array([0.1 - 0.3j, -0.2 - 0.01j, 0.3])
    assert np.allclose(fr.s_transform(prod, w), 1.0, rtol=1e-14)
    x = np.array([0.3, 0.9, 1.2, 5.0])
    assert np.allclose(fr.cauchy_transform(prod, x, eta=1e-12), 1 / (x - 1), rtol=1e-8)
    assert np.all(fr.density(prod, x) < 1e-8)


def _random_law(seed, K=40):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.3, 1.2, K), rng.uniform(0.2, 0.9, K), rng.uniform(0.5, 1.5, K)


def test_s_transform_expansion_gives_mean_and_relative_variance():
    b, a, p = _random_law(0)
    for factor in (fr.DiagonalLaw(b ** 2, p), fr.MarchenkoPastur(1.3), fr.DeformedStep(a, b, p, sigma_w=1.3),
                   fr.DeformedStep(a, -b, p, sigma_w=0.7, orthogonal=True)):
        m1, m2 = factor.moments()
        eps = 1e-4
        s_plus, s_minus = fr.s_transform(factor, np.array([eps, -eps])).real
        # S(w) = (1/m1)(1 - r w + O(w^2)): the symmetric difference has an O(eps^2) error
        assert 2 / (s_plus + s_minus) == pytest.approx(m1, rel=1e-7)
        assert -(s_plus - s_minus) / (2 * eps) * 2 / (s_plus + s_minus) == pytest.approx(m2 / m1 ** 2 - 1, rel=1e-6)


def test_product_moments_mean_chi_T_and_linear_relative_variance():
    b, _, p = _random_law(1)
    step = fr.FreeProduct(((fr.DiagonalLaw(b ** 2, p), 1), (fr.MarchenkoPastur(1.1), 1)))
    m1, m2 = step.moments()
    r = m2 / m1 ** 2 - 1
    T = 3
    prod = fr.FreeProduct(tuple((f, T * k) for f, k in step.terms))
    assert prod.mean == pytest.approx(m1 ** T, rel=1e-14)
    assert prod.relative_variance == pytest.approx(T * r, rel=1e-14)
    hi = 60.0  # above the support (checked: density 0 there)
    assert fr.density(prod, np.array([hi]))[0] < 1e-8
    mom = _log_moments(prod, 1e-14, hi, n=3000)
    # moments of the computed density: mean m1^T and second moment m1^(2T) (1 + T r)
    assert mom[1] == pytest.approx(m1 ** T, rel=1e-3)  # measured 2e-5
    assert mom[2] == pytest.approx(m1 ** (2 * T) * (1 + T * r), rel=1e-3)
    # normalised, and no atom at 0: the mass below 1e-14 ~ x^(1/(T+1)) ~ 3e-4 is the only deficit
    assert 0.995 < mom[0] <= 1 + 1e-4


def test_density_nonnegative_and_branch_continuity_on_a_wide_grid():
    b, a, p = _random_law(2)
    x = np.geomspace(1e-6, 20, 300)
    for orth in (False, True):
        st = fr.DeformedStep(a, b, p, sigma_w=1.3, orthogonal=orth)
        rho = fr.density(st, x)
        assert np.all(rho >= 0) and np.all(np.isfinite(rho))
        # the same points solved one at a time follow their own continuation paths: same answer
        single = np.array([fr.density(st, x[[j]])[0] for j in range(0, 300, 60)])
        assert np.allclose(single, rho[::60], rtol=1e-6, atol=1e-12)


def test_deformed_step_limits():
    b, a, p = _random_law(3)
    w = np.array([0.05 - 0.02j, -0.1 - 0.3j, 0.3 - 0.1j, 1e-3])
    for orth, W in ((False, fr.MarchenkoPastur(1.69)), (True, fr.PointMass(1.69))):
        # a = 0: the free product of the law of b^2 with W W^T
        st = fr.DeformedStep(np.zeros_like(a), b, p, sigma_w=1.3, orthogonal=orth)
        ref = fr.FreeProduct(((fr.DiagonalLaw(b ** 2, p), 1), (W, 1)))
        assert np.allclose(fr.s_transform(st, w), fr.s_transform(ref, w), rtol=1e-12)
        # b = 0: the law of a^2
        st = fr.DeformedStep(a, np.zeros_like(b), p, sigma_w=1.3, orthogonal=orth)
        assert np.allclose(fr.s_transform(st, w), fr.s_transform(fr.DiagonalLaw(a ** 2, p), w), rtol=1e-12)


def _sample(a, b, sigma_w, N, orthogonal, rng):
    if orthogonal:
        q, r = np.linalg.qr(rng.standard_normal((N, N)))
        G = q * np.sign(np.diag(r))
    else:
        G = rng.standard_normal((N, N)) / math.sqrt(N)
    X = np.diag(a) + sigma_w * b[:, None] * G
    return np.linalg.svd(X, compute_uv=False) ** 2


def _kolmogorov(prod, ev, n=3000):
    """sup |F - F_N| with F from the density integrated on a log grid covering the samples."""
    ev = np.sort(ev)
    x = np.geomspace(ev[0] / 100, ev[-1] * 1.5, n)
    xr = x * fr.density(prod, x)
    F = np.concatenate([[0.0], np.cumsum(0.5 * (xr[1:] + xr[:-1]) * np.diff(np.log(x)))])
    Ft = np.interp(ev, x, F)
    i = np.arange(ev.size)
    return max(np.max(np.abs(Ft - (i + 1) / ev.size)), np.max(np.abs(Ft - i / ev.size))), F[-1]


def test_deformed_step_matches_sampled_matrices():
    # X = A + sigma_w B G with 40 equal-weight (a, b) atoms, each used exactly N/40 times
    rng = np.random.default_rng(4)
    K, N = 40, 1200
    a, b = rng.uniform(0.2, 0.9, K), rng.uniform(0.3, 1.2, K) * rng.choice([-1, 1], K)
    A, B = np.repeat(a, N // K), np.repeat(b, N // K)
    for orth in (False, True):
        st = fr.DeformedStep(a, b, None, sigma_w=1.3, orthogonal=orth)
        ev = _sample(A, B, 1.3, N, orth, rng)
        ks, mass = _kolmogorov(st, ev)
        assert ks < 0.02, (orth, ks)  # measured 0.0036 (Gaussian), 0.0052 (Haar)
        assert mass == pytest.approx(1.0, abs=2e-3)
        # negative control: the other ensemble of G is clearly rejected (measured KS 0.12)
        other = fr.DeformedStep(a, b, None, sigma_w=1.3, orthogonal=not orth)
        assert _kolmogorov(other, ev)[0] > 0.05


def test_bad_input_raises():
    with pytest.raises(mf.DomainError):
        fr.density(fr.MarchenkoPastur(1.0), np.array([0.0, 1.0]))
    with pytest.raises(mf.DomainError):
        fr.density(fr.MarchenkoPastur(1.0), np.array([np.nan]))
    with pytest.raises(mf.DomainError):
        fr.density(fr.MarchenkoPastur(1.0), np.array([1.0]), eta=0.0)
    with pytest.raises(mf.DomainError):
        fr.MarchenkoPastur(-1.0)
    with pytest.raises(mf.DomainError):
        fr.DiagonalLaw(np.array([-1.0, 1.0]))
    with pytest.raises(mf.DomainError):
        fr.DiagonalLaw(np.zeros(3))
    with pytest.raises(mf.DomainError):
        fr.DeformedStep(np.ones(3), np.ones(2))
    with pytest.raises(mf.DomainError):
        fr.FreeProduct(((fr.MarchenkoPastur(1.0), 0),))
    with pytest.raises(mf.DomainError):
        fr.s_transform(fr.MarchenkoPastur(1.0), np.array([0.0]))

"""Cell-level spectral density of J J^T for the T-step Jacobian (mftrnn.theory.spectrum) against explicit matrices and
finite-width PyTorch networks (mftrnn.nets.simulate.jacobian_spectrum).

Tolerances.  The theory is a functional of the mean-field law of the coefficients (a_i, b_i). A network of width N
realises N of them (n networks: nN), and by the Dvoretzky-Kiefer-Wolfowitz inequality the Kolmogorov distance
between their empirical law and the mean-field one exceeds eps = sqrt(ln(2/delta)/(2 n N)) with probability at
most delta. We take that eps (delta = 1e-3; 0.062 for 2 networks of N = 500) as the tolerance for the Kolmogorov
distance between the theoretical spectral CDF and the pooled eigenvalues: the spectral CDF is a smoothed image of
the coefficient law, and the measured distances over 5 seeds are 0.007-0.015 (vanilla, Gaussian W), 0.015-0.036
(vanilla, orthogonal W: at T = 1 the spectrum is the coefficient law itself, so the DKW scale is attained) and
0.011-0.029 (minimalRNN, untied). Negative controls (the same samples against the law for T +- 40%, or for the other
ensemble of W) must exceed it (measured 0.11-0.42), so the comparison can fail. Eigenvalues below 1e-28 of the
largest are beyond the resolution of a double-precision SVD of the product and are left out (up to 22% of them at
T = 20 with Gaussian W: the free-probability density there decays only like x^(1/(T+1)) towards 0).

The minimalRNN with tied weights is not tested against the theory: the free approximation across steps and the
mean-field law both degrade there (measured at sigma_w = 2, mu_b = 3, T = 20: mean 0.118 vs chi^T = 0.097, Kolmogorov
distance 0.065); see the module docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mftrnn as mf
from mftrnn.theory import free as fr
from mftrnn.nets.simulate import jacobian_spectrum
from mftrnn.theory.spectrum import (_fine_diagonal_law, kolmogorov_distance, spectral_density, spectral_grid, spectral_law,
                             step_law)

VANILLA = dict(sigma_w=1.5, sigma_v=0.5)  # chi = 0.967: the T = 20 spectrum spans ~140 decades
VANILLA_ORTH = dict(sigma_w=1.1, sigma_v=0.3)  # near dynamical isometry: relative variance 0.21 per step
MINIMAL = dict(sigma_w=2.0, mu_b=3.0)


def _dkw(n_samples, delta=1e-3):
    return math.sqrt(math.log(2 / delta) / (2 * n_samples))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_moments_match_mean_field_and_product_moments():
    for cell, hp in (("vanilla", VANILLA), ("minimal", MINIMAL)):
        fp = mf.fixed_point(cell, **hp)
        for T in (1, 5):
            law = spectral_law(cell, T, **hp)
            pm = mf.product_moments(cell, T, **hp)
            assert law.mean == pytest.approx(float(fp.chi) ** T, rel=1e-10)
            assert law.relative_variance == pytest.approx(pm["relative_variance"], rel=1e-10)
    # the fine equal-weight law used for orthogonal W: its mean is chi to O(1/K) (measured 5e-7)
    b2 = _fine_diagonal_law("vanilla", VANILLA_ORTH)
    assert VANILLA_ORTH["sigma_w"] ** 2 * b2.mean() == pytest.approx(
        float(mf.fixed_point("vanilla", **VANILLA_ORTH).chi), rel=1e-4)
    assert _fine_diagonal_law("minimal", MINIMAL) is None  # a != 0: not a diagonal law


def test_density_integrates_to_moments_over_many_decades():
    law = spectral_law("vanilla", 5, **VANILLA)
    lo, hi = law.support()
    assert lo < 1e-30 < 1 < hi  # spans tens of decades
    u = np.linspace(math.log(lo), math.log(hi), 3000)
    p = law.log_density(u)  # density of ln(lambda)
    assert np.all(p >= 0)
    m = [np.trapezoid(np.exp(k * u) * p, u) for k in range(3)]
    assert m[0] == pytest.approx(1.0, abs=2e-4)  # tail below lo: < 1e-4 by construction
    assert m[1] == pytest.approx(law.mean, rel=3e-3)  # trapezoid rule at the square-root edge: measured 1.2e-3
    assert m[2] == pytest.approx(law.mean ** 2 * (1 + law.relative_variance), rel=8e-3)  # measured 3.0e-3
    assert law.mass() == pytest.approx(1.0, abs=2e-4)
    F = law.cdf(np.array([lo, law.mean, hi, 2 * hi]))
    assert np.all(np.diff(F) >= 0) and F[-1] == 1.0 and F[0] < 2e-4


def test_vanilla_gaussian_a0_equals_hermitisation():
    # the vanilla step through the free product of b^2 with Marchenko-Pastur, and through the general deformed step
    law = mf.coefficient_law("vanilla", **VANILLA)
    w = np.array([0.05 - 0.02j, -0.2 - 0.3j])
    via_free = fr.s_transform(step_law("vanilla", **VANILLA), w)
    via_dyson = fr.s_transform(fr.DeformedStep(law.a, law.b, law.weight, sigma_w=law.sigma_w), w)
    assert np.allclose(via_free, via_dyson, rtol=1e-12)


@pytest.mark.parametrize("orthogonal", [False, True])
def test_vanilla_one_step_matches_explicit_diagonal_times_weights(orthogonal):
    # J = D W with D = tanh'(e), e at the N quantile midpoints of N(mu_b, q*) (no sampling noise in the coefficients),
    # W Gaussian or sigma_w O. Remaining error: finite-N eigenvalue fluctuations, O(log N / N) ~ 0.005, and the
    # coefficient law's discretisation; measured 0.0021 (Gaussian), 0.0007 (orthogonal). Tolerance 0.02.
    from scipy.special import ndtri

    hp = VANILLA_ORTH if orthogonal else VANILLA
    N = 1500
    q = float(mf.fixed_point("vanilla", **hp).q_star)
    d = 1 - np.tanh(math.sqrt(q) * ndtri((np.arange(N) + 0.5) / N)) ** 2
    rng = np.random.default_rng(0)
    if orthogonal:
        o, r = np.linalg.qr(rng.standard_normal((N, N)))
        W = hp["sigma_w"] * o * np.sign(np.diag(r))
    else:
        W = hp["sigma_w"] * rng.standard_normal((N, N)) / math.sqrt(N)
    ev = np.linalg.svd(d[:, None] * W, compute_uv=False) ** 2
    law = spectral_law("vanilla", 1, orthogonal=orthogonal, **hp)
    assert kolmogorov_distance(law, ev) < 0.02


def _pooled(cell, T, n_networks=2, **kw):
    sim = jacobian_spectrum(cell, N=500, T=T, n_networks=n_networks, seed=1, **kw)
    return {t: v.ravel() for t, v in sim.sq_singular_values.items()}


def test_vanilla_gaussian_tied_networks():
    ev = _pooled("vanilla", (1, 5, 20), tied=True, **VANILLA)
    tol = _dkw(1000)
    for T, wrong in ((1, 2), (5, 7), (20, 14)):
        floor = 1e-28 * ev[T].max()
        assert kolmogorov_distance(spectral_law("vanilla", T, **VANILLA), ev[T], floor=floor) < tol
        assert kolmogorov_distance(spectral_law("vanilla", wrong, **VANILLA), ev[T], floor=floor) > tol


def test_vanilla_orthogonal_tied_networks():
    ev = _pooled("vanilla", (1, 5), tied=True, orthogonal=True, **VANILLA_ORTH)
    tol = _dkw(1000)
    for T in (1, 5):
        assert kolmogorov_distance(spectral_law("vanilla", T, orthogonal=True, **VANILLA_ORTH), ev[T]) < tol
        assert kolmogorov_distance(spectral_law("vanilla", T, **VANILLA_ORTH), ev[T]) > tol  # the Gaussian-W law


def test_minimal_untied_networks():
    ev = _pooled("minimal", (1, 5, 20), tied=False, **MINIMAL)
    tol = _dkw(1000)
    for T in (1, 5, 20):
        assert kolmogorov_distance(spectral_law("minimal", T, **MINIMAL), ev[T]) < tol
    assert kolmogorov_distance(spectral_law("minimal", 7, **MINIMAL), ev[5]) > tol


def test_minimal_orthogonal_untied_networks():
    ev = _pooled("minimal", (5,), tied=False, orthogonal=True, **MINIMAL)
    tol = _dkw(1000)
    assert kolmogorov_distance(spectral_law("minimal", 5, orthogonal=True, **MINIMAL), ev[5]) < tol
    assert kolmogorov_distance(spectral_law("minimal", 7, orthogonal=True, **MINIMAL), ev[5]) > tol


def test_public_functions_and_errors():
    x = spectral_grid("vanilla", 3, 50, **VANILLA)
    assert x.shape == (50,) and np.all(np.diff(x) > 0)
    rho = spectral_density("vanilla", 3, x.reshape(5, 10), **VANILLA)
    assert rho.shape == (5, 10) and np.all(rho >= 0) and np.any(rho > 0)
    assert np.allclose(rho.ravel(), spectral_law("vanilla", 3, **VANILLA).density(x))
    with pytest.raises(mf.DomainError):
        spectral_density("vanilla", 0, x, **VANILLA)
    with pytest.raises(mf.DomainError):
        spectral_density("vanilla", 2.5, x, **VANILLA)
    with pytest.raises(mf.DomainError):
        spectral_density("vanilla", 2, np.array([-1.0]), **VANILLA)
    with pytest.raises(mf.DomainError):
        spectral_density("vanilla", 2, x, sigma_w=-1.0)
    with pytest.raises(mf.DomainError):
        spectral_density("vanilla", 2, x, sigma_w=0.0)
    with pytest.raises(mf.DomainError):
        spectral_density("vanilla", 2, x, not_a_parameter=1.0)
    with pytest.raises(mf.UnknownCellError):
        spectral_density("lstm-nonexistent", 2, x)
    with pytest.raises(mf.DomainError):
        kolmogorov_distance(spectral_law("vanilla", 2, **VANILLA), np.array([]))

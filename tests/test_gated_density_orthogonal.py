"""The one-step spectral density of the Jacobian of nn.LSTM / nn.GRU for Haar-orthogonal recurrent weights
(mftrnn.theory.gated_density with orthogonal=True): the one-state reduction to DeformedStep(orthogonal=True), the
arcsine law of a + sigma O, the moments with the fourth free cumulant -1, and explicit random matrices with
independent Haar O_k (which the Gaussian law does not fit)."""
import math

import numpy as np
import pytest
from scipy.stats import ortho_group

from mftrnn.errors import MftrnnError
from mftrnn.theory import gated_density as gd
from mftrnn.theory import gated_jacobian as gj
from mftrnn.theory.free import DeformedStep, FreeProduct, density
from mftrnn.theory.spectrum import SpectralLaw, kolmogorov_distance

#: an LSTM point with sigma_w = 1 (Haar and Gaussian laws differ by a Kolmogorov distance of about 0.07) and a GRU
#: point whose update gate is nearly closed (z ~ 0.05: J is dominated by the recurrent part; distance about 0.32)
LSTM = ("lstm", dict(sigma_w=1.0, sigma_v=1.0, mu_b_f=1.0))
GRU = ("gru", dict(sigma_w=1.0, sigma_v=0.3, mu_b_z=-3.0))


def _matrix(e, l, r, s, rng, orthogonal):
    """An explicit J = E + sum_k L_k W_k R_k for unit coefficients (N units), W_k = sqrt(s_k) O_k with independent
    Haar orthogonal O_k (scipy.stats.ortho_group), or Gaussian of variance s_k / N."""
    S, N = e.shape[0], e.shape[2]
    J = np.block([[np.diag(e[i, j]) for j in range(S)] for i in range(S)])
    for k in range(l.shape[0]):
        if orthogonal:
            W = math.sqrt(s[k]) * ortho_group.rvs(N, random_state=rng)
        else:
            W = math.sqrt(s[k]) * rng.standard_normal((N, N)) / math.sqrt(N)
        J += np.vstack([np.diag(l[k, i]) for i in range(S)]) @ W @ np.hstack([np.diag(r[k, j]) for j in range(S)])
    return J


def _ks(law, eigenvalues) -> float:
    """Kolmogorov distance sup |F - F_n| with the law's exact distribution function at every eigenvalue (the sup
    over the jumps of the empirical distribution function, both sides of each)."""
    ev = np.sort(np.maximum(eigenvalues, 1e-300))
    F = law.distribution(ev)
    i = np.arange(1, ev.size + 1) / ev.size
    return float(max(np.max(np.abs(F - i)), np.max(np.abs(F - (i - 1.0 / ev.size)))))


# ----------------------------------------------------------------------------- one state, one field
def test_one_state_one_field_is_the_haar_deformed_step():
    """S = 1, one field: J = diag(a) + sqrt(s) diag(b) O, the law of DeformedStep(a, b, sigma_w = sqrt(s),
    orthogonal=True) of mftrnn.theory.free (other unknowns (z, p, r, phi), another continuation). Both converge
    Newton to ~1e-12 relative at the same relative imaginary part 1e-10: densities agree to 1e-10 relative (measured
    2e-12) where the density is not negligible, to 1e-10 of its maximum elsewhere (the edges). The Gaussian
    DeformedStep differs by more than 10 % somewhere, so the comparison discriminates."""
    rng = np.random.default_rng(0)
    n, s = 256, 0.8
    a, b = rng.uniform(0.2, 1.0, n), rng.uniform(0.3, 1.2, n)
    law = gd.GatedSpectralLaw.from_coefficients(a[None, None], b[None, None], np.ones((1, 1, n)), np.array([s]),
                                                orthogonal=True)
    haar = DeformedStep(a, b, None, sigma_w=math.sqrt(s), orthogonal=True)
    assert (law.m1, law.m2) == pytest.approx(haar.moments(), rel=1e-12)
    x = np.geomspace(1e-3, law.step.bound, 150)
    ref, got = density(haar, x), law.density(x)
    big = ref > 1e-6 * ref.max()
    assert big.sum() > 100
    np.testing.assert_allclose(got[big], ref[big], rtol=1e-10)
    np.testing.assert_allclose(got[~big], ref[~big], atol=1e-10 * ref.max())
    gauss = density(DeformedStep(a, b, None, sigma_w=math.sqrt(s)), x)
    assert np.max(np.abs(gauss - ref)) > 0.1 * ref.max()


def test_arcsine_law_of_a_plus_orthogonal():
    """J = a I + sigma O (constant coefficients): JJ^T = a^2 + sigma^2 + a sigma (O + O^T), and the eigenphases of a
    Haar O are uniform at large N, so F(x) = 1 - arccos((x - a^2 - sigma^2) / (2 a sigma)) / pi on
    [(a - sigma)^2, (a + sigma)^2]. The distribution function (from the log-determinant, whose Haar term
    -log phi is taken on its continuous branch) matches to 1e-9 away from the edges (Newton ~1e-12; the smoothing
    at relative imaginary part 1e-10 moves F by O(1e-10 / distance to an edge))."""
    n, a, sig = 8, 0.9, 0.6
    law = gd.GatedSpectralLaw.from_coefficients(np.full((1, 1, n), a), np.ones((1, 1, n)), np.ones((1, 1, n)),
                                                np.array([sig ** 2]), orthogonal=True)
    lo, hi = (a - sig) ** 2, (a + sig) ** 2
    x = lo + (hi - lo) * np.linspace(0.01, 0.99, 41)
    exact = 1.0 - np.arccos((x - a * a - sig * sig) / (2 * a * sig)) / np.pi
    np.testing.assert_allclose(law.distribution(x), exact, atol=1e-9)
    assert law.distribution(np.array([0.9 * lo, 1.1 * hi])) == pytest.approx([0.0, 1.0], abs=1e-9)


# ----------------------------------------------------------------------------- the moments
@pytest.mark.parametrize("cell, hp", [LSTM, GRU], ids=["lstm", "gru"])
def test_moments_of_the_haar_law(cell, hp):
    """The Cauchy transform of the solution on a circle around the spectrum (contour_moments: trapezoid rule on an
    analytic integrand, geometric convergence; measured ~1e-15) reproduces m1, m2 of the free-cumulant formulas of
    gated_jacobian with kappa = 0 (Haar: fourth free cumulant -1) on the same coefficients to 1e-10. The Haar term
    (1 - kappa) sum_k s_k^2 <|r_k|^2>^2 <|l_k|^2>^2 / S is more than 1e-3 of m2, so the formula with kappa = 1
    (Gaussian) would fail by a factor > 1e7. And the law's m1, m2 agree with gated_step_moments(orthogonal=True)
    (independent Monte Carlo, 100 000 units) within 4 standard deviations of the difference (its error and the
    spread of the 256-unit Sobol estimate over 4 scrambles)."""
    c = gd.coefficient_samples(cell, samples=256, seed=1, **hp)
    law = gd.GatedSpectralLaw.from_coefficients(c["e"], c["l"], c["r"], c["s"], orthogonal=True)
    haar = gj._terms_from_blocks(c["e"], c["l"], c["r"], c["s"], 0.0)[:2]
    gauss = gj._terms_from_blocks(c["e"], c["l"], c["r"], c["s"], 1.0)[:2]
    cm = law.contour_moments(2)
    assert cm[0] == pytest.approx(1.0, abs=1e-10)
    assert cm[1:] == pytest.approx(haar, rel=1e-10)
    assert gauss[0] == haar[0] and abs(gauss[1] - haar[1]) > 1e-3 * haar[1]
    mc = gj.gated_step_moments(cell, orthogonal=True, samples=100_000, **hp)
    scr = np.array([gd.GatedStep(*(cs[k] for k in "elrs"), orthogonal=True).moments()
                    for cs in (gd.coefficient_samples(cell, samples=256, seed=sd, **hp) for sd in range(2, 6))])
    for j, key in enumerate(("m1", "m2")):
        tol = 4 * math.hypot(mc[f"{key}_error"], scr[:, j].std(ddof=1))
        assert abs(cm[1 + j] - mc[key]) <= tol, (cell, key, cm[1 + j], mc[key], tol)


# ----------------------------------------------------------------------------- explicit random matrices
#: Kolmogorov-distance threshold against one explicit matrix built from the law's own unit coefficients: the
#: eigenvalues of such a matrix are within O(log N / N) of its deterministic equivalent (rigidity). Measured with
#: 512 units: Haar matrices against the Haar law 0.0026-0.0027 (LSTM, 1024 eigenvalues, 2 matrices), 0.0047-0.0064
#: (GRU, 4 points and matrices), the same as Gaussian matrices against the Gaussian law of the same coefficients
#: (0.0029-0.0030 LSTM, 0.0057-0.0066 GRU): the finite-N floor does not depend on the kind of W. The LSTM case here
#: has 256 units (512 eigenvalues: about twice the floor). 0.02 is three times the largest floor and below a third
#: of the distance between the Haar and Gaussian laws of the cases (0.07 and 0.32).
KS_MATRIX = 0.02


@pytest.mark.parametrize("cell, hp, N", [LSTM + (256,), GRU + (512,)], ids=["lstm", "gru"])
def test_against_explicit_haar_matrices(cell, hp, N):
    """The law of the cell's unit coefficients at its fixed point (N Sobol units: nn.LSTM's 2 x 2 blocks, four
    fields; nn.GRU's scalars, three fields) against J J^T of an explicit J with those coefficients and independent
    Haar O_k: within KS_MATRIX. The same eigenvalues are far from the Gaussian law of the same coefficients (more
    than 2 KS_MATRIX: measured 0.07 LSTM, 0.32 GRU), so the test tells the two apart. For the GRU (one state, three
    fields) also the law with the fields merged into one Haar matrix, diag(b) O with b^2 = sum_k s_k l_k^2 (exact
    for Gaussian W, not for Haar), is farther than KS_MATRIX from the eigenvalues (measured 0.038, against 0.005 for
    the law with one unknown pair per field): each field needs its own unknowns."""
    c = gd.coefficient_samples(cell, samples=N, seed=5, **hp)
    e, l, r, s = c["e"], c["l"], c["r"], c["s"]
    law = gd.GatedSpectralLaw.from_coefficients(e, l, r, s, orthogonal=True)
    assert law.step.groups == tuple((k,) for k in range(l.shape[0]))
    ev = np.linalg.svd(_matrix(e, l, r, s, np.random.default_rng(7), True), compute_uv=False) ** 2
    assert _ks(law, ev) <= KS_MATRIX
    gauss = gd.GatedSpectralLaw.from_coefficients(e, l, r, s)
    assert _ks(gauss, ev) > 2 * KS_MATRIX
    if e.shape[0] == 1:
        b = np.sqrt(np.einsum("k,kn->n", s, l[:, 0] ** 2))
        merged = SpectralLaw(cell, 1, True, {}, FreeProduct(((DeformedStep(e[0, 0], b, None, orthogonal=True), 1),)))
        assert kolmogorov_distance(merged, ev) > KS_MATRIX  # measured 0.038, seven times the floor


# ----------------------------------------------------------------------------- the public functions
def test_gated_step_law_orthogonal():
    """gated_step_law(..., orthogonal=True): the Haar law (one unknown pair per field), its mean the exact m1 of the
    coefficients (the same as for Gaussian W) and its m2 the Haar one; the Gaussian law of the same Sobol units has
    the larger m2 (the fourth free cumulant of a Gaussian matrix is 0, of a Haar one -1). gated_product_law refuses
    Haar W (the step of a cell with several fields is not a deformed step)."""
    haar = gd.gated_step_law(*GRU[:1], orthogonal=True, samples=128, **GRU[1])
    gauss = gd.gated_step_law(*GRU[:1], samples=128, **GRU[1])
    assert haar.orthogonal and "Haar" in haar.approximation and not gauss.orthogonal
    assert len(haar.step.groups) == 3 and len(gauss.step.groups) == 1
    assert haar.m1 == pytest.approx(gauss.m1, rel=1e-12) and haar.m2 < gauss.m2
    with pytest.raises(MftrnnError, match="deformed step"):
        gd.gated_product_law("gru", 3, orthogonal=True)

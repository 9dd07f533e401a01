"""The one-step spectral density of the Jacobian of nn.LSTM / nn.GRU (mftrnn.theory.gated_density): analytic limits,
the one-state reduction to DeformedStep, the moments, explicit random matrices of the model, and the real torch
modules (tied weights)."""
import math

import numpy as np
import pytest
import torch

import mftrnn as mf
from mftrnn.errors import DomainError, MftrnnError
from mftrnn.nets.gated import init_gated_
from mftrnn.nets.gated_init import critical_gru_init_, critical_lstm_init_
from mftrnn.theory import gated_density as gd
from mftrnn.theory import gated_jacobian as gj
from mftrnn.theory.free import DeformedStep, MarchenkoPastur, density

torch.set_num_threads(1)

#: the hyperparameters of a fixed point: the per-gate ones and R (a critical initialisation returns more keys)
_HP_KEYS = ("sigma_w_", "sigma_v_", "sigma_b_", "mu_b_")


def _hyperparameters(result: dict) -> dict:
    return {k: v for k, v in result.items() if k.startswith(_HP_KEYS) or k == "R"}


def _matrix(e, l, r, s, rng):
    """An explicit J = E + sum_k L_k W_k R_k with Gaussian W_k (variance s_k / N) for unit coefficients (N units)."""
    S, N = e.shape[0], e.shape[2]
    J = np.block([[np.diag(e[i, j]) for j in range(S)] for i in range(S)])
    for k in range(l.shape[0]):
        W = math.sqrt(s[k]) * rng.standard_normal((N, N)) / math.sqrt(N)
        J += np.vstack([np.diag(l[k, i]) for i in range(S)]) @ W @ np.hstack([np.diag(r[k, j]) for j in range(S)])
    return J


def _sq_singular_values(J):
    return np.linalg.svd(J, compute_uv=False) ** 2


# ----------------------------------------------------------------------------- analytic limits
def test_marchenko_pastur_limit():
    """S = 1, e = 0 and two fields with l = r = 1 (s = 0.7 + 0.6): W_1 + W_2 is Gaussian of variance 1.3/N, and
    JJ^T is Marchenko-Pastur of scale 1.3: density against mftrnn.theory.free (another solver), distribution
    function against the closed form F = 1 - (2 theta - sin 2 theta)/pi, cos theta = sqrt(x / 4s). Both solvers
    converge Newton to 1e-7 relative steps (errors ~1e-14) at the same relative imaginary part 1e-10, so 1e-8 is
    rounding plus the smoothing near the edges, which the points avoid."""
    n, s = 8, 1.3
    law = gd.GatedSpectralLaw.from_coefficients(np.zeros((1, 1, n)), np.ones((2, 1, n)), np.ones((2, 1, n)),
                                                np.array([0.7, 0.6]))
    x = np.geomspace(0.01, 0.97, 40) * 4 * s
    np.testing.assert_allclose(law.density(x), density(MarchenkoPastur(s), x), rtol=1e-8)
    theta = np.arccos(np.sqrt(x / (4 * s)))
    np.testing.assert_allclose(law.distribution(x), 1 - (2 * theta - np.sin(2 * theta)) / np.pi, atol=1e-9)
    assert (law.m1, law.m2) == pytest.approx((s, 2 * s ** 2), rel=1e-12)
    assert law.density(np.array([4 * s * 1.01]))[0] < 1e-8  # outside the support


def test_one_state_is_the_deformed_step():
    """For one state (nn.GRU) the matrix Dyson equation is that of mftrnn.theory.free.DeformedStep with a = e and
    b^2 = sum_k s_k l_k^2: the same unit samples through both (different unknowns, different solvers) give the same
    density to 1e-6 relative (measured 1e-14; both are converged to ~1e-14 at the same zeta = x (1 + 1e-10 i))."""
    fp = mf.fixed_point("gru", sigma_w=1.0, mu_b_z=1.0)
    c = gd.coefficient_samples(fp, samples=256, seed=3)
    law = gd.GatedSpectralLaw.from_coefficients(c["e"], c["l"], c["r"], c["s"])
    x = np.geomspace(1e-3, 1.3, 120)
    ref = density(gd.deformed_step(c), x)
    got = law.density(x)
    big = ref > 1e-6 * ref.max()
    assert big.sum() > 80  # most points inside the support
    np.testing.assert_allclose(got[big], ref[big], rtol=1e-6)
    np.testing.assert_allclose(got[~big], ref[~big], atol=1e-6 * ref.max())


def test_a_rank_deficient_jacobian_has_an_atom_at_zero():
    """S = 2 with a second state that nothing reads or writes: J = [[diag(a) + W, 0], [0, 0]], so half of the
    spectrum is the atom at 0 and the other half the law of (diag(a) + W)(...)^T, i.e. DeformedStep(a, 1). The
    atom (from the Stieltjes transform on the imaginary axis, y = 1e-12: it exceeds the atom by the mass within
    ~y of 0, ~sqrt(y) = 1e-6 at the hard edge of a square Gaussian matrix), the distribution function just above 0
    and the density all agree."""
    rng = np.random.default_rng(0)
    n = 128
    a = rng.uniform(0.2, 1.0, n)
    e = np.zeros((2, 2, n))
    e[0, 0] = a
    l = np.zeros((1, 2, n))
    l[0, 0] = 1.0
    law = gd.GatedSpectralLaw.from_coefficients(e, l, l.copy(), np.array([1.0]))
    assert law.atom_at_zero(y=1e-12) == pytest.approx(0.5, abs=1e-5)
    assert law.distribution(np.array([1e-12]))[0] == pytest.approx(0.5, abs=1e-5)
    x = np.geomspace(1e-3, 3.0, 50)
    ref = density(DeformedStep(a, np.ones(n), None, sigma_w=1.0), x)
    np.testing.assert_allclose(law.density(x), ref / 2, rtol=1e-6, atol=1e-9)
    # the density's integral between two points is the difference of the distribution function
    lo, hi = 0.05, 2.0
    xs = np.geomspace(lo, hi, 2001)
    integral = np.trapezoid(law.density(xs) * xs, np.log(xs))
    F = law.distribution(np.array([lo, hi]))
    assert integral == pytest.approx(F[1] - F[0], abs=2e-5)


# ----------------------------------------------------------------------------- the cells at their fixed points
def _critical(cell, T=20):
    from mftrnn.theory.critical_gated import gated_for_timescale
    return _hyperparameters(gated_for_timescale(cell, T, samples=20_000))


#: a critical initialisation (T = 20: sigma_w = 0.2, memory gate fixed by its bias) and a point with sigma_w = 1
CASES = {"lstm-critical": ("lstm", lambda: _critical("lstm")),
         "lstm-sigma_w=1": ("lstm", lambda: dict(sigma_w=1.0, sigma_v=1.0, mu_b_f=1.0)),
         "gru-critical": ("gru", lambda: _critical("gru")),
         "gru-sigma_w=1": ("gru", lambda: dict(sigma_w=1.0, sigma_v=1.0, mu_b_z=1.0))}


@pytest.fixture(scope="module")
def laws():
    """The one-step laws (default 1024 Sobol units), built once and shared (their tables are cached)."""
    out = {}
    for name, (cell, hp) in CASES.items():
        hp = hp()
        out[name] = (cell, hp, gd.gated_step_law(cell, **hp))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_moments_of_the_law(laws, case):
    """Three routes to m1, m2. (i) The Cauchy transform on a circle around the spectrum (a check of the solution
    of the matrix Dyson equation off the real axis) reproduces the moments of the law's own coefficients (the
    free-cumulant formulas of gated_jacobian) to 1e-9 (trapezoid rule on an analytic integrand: geometric
    convergence; measured ~1e-15). (ii) The distribution function on the real axis (exact at the nodes of its
    table), integrated, gives them within k hi^k delta, the integral of an interpolation error delta = _CDF_TOL,
    plus the mass left below the lower end (measured 1e-5 to 4e-4 relative, 10 to 400 times inside).
    (iii) They agree with gated_step_moments (400 000 Monte Carlo units) within 4 standard deviations of the
    difference: the Monte Carlo error and the spread of the Sobol estimate over 4 scrambles."""
    cell, hp, law = laws[case]
    cm = law.contour_moments(2)
    assert cm[0] == pytest.approx(1.0, abs=1e-9)
    assert cm[1:] == pytest.approx([law.m1, law.m2], rel=1e-9)
    lo, hi = law.support()
    F_lo = float(law.cdf(lo))
    for k, (got, exact) in enumerate(zip(law.cdf_moments(2), (law.m1, law.m2)), start=1):
        assert abs(got - exact) <= k * hi ** k * gd._CDF_TOL + lo ** k + 1e-12, (case, k, got, exact)
    assert law.cdf(hi) == pytest.approx(1.0, abs=1e-8) and 0 <= F_lo <= 1e-3
    mc = gj.gated_step_moments(cell, **hp)
    scr = np.array([gd.GatedStep(*(c[k] for k in "elrs")).moments()
                    for c in (gd.coefficient_samples(cell, samples=1024, seed=sd, **hp) for sd in range(1, 5))])
    for j, key in enumerate(("m1", "m2")):
        tol = 4 * math.hypot(mc[f"{key}_error"], scr[:, j].std(ddof=1)) + 1e-12
        assert abs((law.m1, law.m2)[j] - mc[key]) <= tol, (case, key, (law.m1, law.m2)[j], mc[key], tol)


# ----------------------------------------------------------------------------- explicit random matrices of the model
def _assert_matches_matrices(law, e, l, r, s, tol, label):
    ev = _sq_singular_values(_matrix(e, l, r, s, np.random.default_rng(7)))
    ks = law.kolmogorov_distance(ev)
    assert ks <= tol, (label, ks)
    return ks


def test_general_structure_against_explicit_matrices():
    """Two states, three fields in two groups (rows r_k not all equal), correlated unit coefficients: the law
    against J J^T of one explicit matrix with the same N = 1024 units and fresh Gaussian W_k. The eigenvalue
    distribution of such a matrix is within O(1/N) of its deterministic equivalent (rigidity; measured 0.001-0.002
    at N = 1024-1500): 0.02 = 20/N."""
    rng = np.random.default_rng(1)
    N = 1024
    z = rng.standard_normal((4, N))
    e = np.array([[np.tanh(z[0]) + 0.5, 0.3 * z[1]], [0.2 * z[0] * z[1], 0.0 * z[0]]])
    l = np.array([[np.cos(z[2]), 0.5 * z[0]], [z[3] ** 2 * 0.3, np.sin(z[1])], [0.4 * z[2], 0.7 + 0 * z[0]]])
    r = np.array([[0 * z[0], 1 + 0 * z[0]], [0 * z[0], 1 + 0 * z[0]], [1 + 0 * z[0], 0.5 * np.tanh(z[3])]])
    s = np.array([0.8, 1.3, 0.5])
    law = gd.GatedSpectralLaw.from_coefficients(e, l, r, s)
    assert law.step.groups == ((0, 1), (2,))
    _assert_matches_matrices(law, e, l, r, s, 0.02, "two groups")


@pytest.mark.parametrize("case", ["lstm-critical", "gru-sigma_w=1"])
def test_cells_against_explicit_matrices_of_the_model(laws, case):
    """The unit coefficients of the cell at its fixed point (1024 Sobol units: nn.LSTM's 2 x 2 blocks, nn.GRU's
    scalars) in an explicit matrix with fresh Gaussian W_k: the law of those coefficients matches its eigenvalues
    (N = 1024 units; threshold 20/N as above; measured 0.002-0.004)."""
    cell, hp, _ = laws[case]
    c = gd.coefficient_samples(cell, samples=1024, seed=5, **hp)
    law = gd.GatedSpectralLaw.from_coefficients(c["e"], c["l"], c["r"], c["s"])
    _assert_matches_matrices(law, c["e"], c["l"], c["r"], c["s"], 0.02, case)


# ----------------------------------------------------------------------------- the torch modules (tied weights)
def _module_eigenvalues(module, N, R, generator, *, burn=300, steps=3, gap=20):
    """Squared singular values of the one-step Jacobian of the module's whole state (nn.LSTM: (c, h), 2N values;
    nn.GRU: h) by autograd, at ``steps`` times ``gap`` steps apart after ``burn`` steps driven by N(0, R) inputs."""
    lstm = isinstance(module, torch.nn.LSTM)

    def step(x, state):
        if lstm:
            _, (h, c) = module(x.reshape(1, 1, N), (state[N:].reshape(1, 1, N), state[:N].reshape(1, 1, N)))
            return torch.cat([c.reshape(-1), h.reshape(-1)])
        return module(x.reshape(1, 1, N), state.reshape(1, 1, N))[1].reshape(-1)

    draw = lambda: math.sqrt(R) * torch.randn(N, generator=generator, dtype=torch.float64)
    state = torch.zeros((2 if lstm else 1) * N, dtype=torch.float64)
    out = []
    with torch.no_grad():
        for _ in range(burn):
            state = step(draw(), state)
    for _ in range(steps):
        x = draw()
        J = torch.func.jacrev(lambda v: step(x, v))(state).detach()
        out.append(torch.linalg.svdvals(J).numpy() ** 2)
        with torch.no_grad():
            state = step(x, state)
            for _ in range(gap):
                state = step(draw(), state)
    return np.concatenate(out)


_MODULES = {"lstm": (torch.nn.LSTM, critical_lstm_init_), "gru": (torch.nn.GRU, critical_gru_init_)}
N_NET, NETS = 500, 2
#: Kolmogorov-distance threshold for the modules: at small sigma_w each unit's c (or h) row is weakly coupled, and
#: the spectrum follows the empirical law of the NETS * N_NET units' coefficients, which is within the DKW bound
#: sqrt(ln(2/alpha) / 2n) of its law with probability 1 - alpha (alpha = 0.01, n = 1000 units: 0.051); more
#: strongly coupled points self-average and sit well inside it
KS_MODULES = math.sqrt(math.log(2 / 0.01) / (2 * NETS * N_NET))


@pytest.mark.parametrize("case", list(CASES))
def test_torch_modules_against_the_law(laws, case):
    """nn.LSTM / nn.GRU (hidden N = 500, float64, one layer) initialised at the point of the case (the critical
    initialisation by critical_lstm_init_ / critical_gru_init_ itself for the first network, the same
    hyperparameters by init_gated_ for the second), driven by Gaussian inputs of variance R = 1 for 300 steps
    (the memory gate's timescale is 20 steps), then the one-step Jacobian of the whole state by autograd at 3 times
    20 steps apart; the pooled squared singular values against the law of the fixed point of those
    hyperparameters. Tied weights (the real network): measured 0.026 (LSTM, critical; 0.014 with the weights
    redrawn every step, the untied mean field's setting), 0.007 (LSTM, sigma_w = 1), 0.003 (GRU, critical),
    0.009 (GRU, sigma_w = 1)."""
    cell, hp, law = laws[case]
    cls, critical_init = _MODULES[cell]
    evs = []
    for seed in range(NETS):
        g = torch.Generator().manual_seed(seed)
        module = cls(N_NET, N_NET).double()
        if case.endswith("critical") and seed == 0:
            chosen = _hyperparameters(critical_init(module, 20, generator=g, samples=20_000))
            assert chosen == pytest.approx(hp, rel=1e-9)  # the law's point is the initialiser's
        else:
            init_gated_(module, generator=g, **hp)
        evs.append(_module_eigenvalues(module, N_NET, hp.get("R", 1.0), g))
    ks = law.kolmogorov_distance(np.concatenate(evs))
    assert ks <= KS_MODULES, (case, ks)


# ----------------------------------------------------------------------------- T steps (one state), bad input
def test_gru_product_law_is_the_free_product_of_the_step():
    """gated_product_law (one state): T = 1 is the one-step law in its DeformedStep form (same Sobol units, same
    density as the matrix Dyson equation to rounding); T = 5 is the free product, with mean m1^5 (= chi^5 of the
    exact untied mean field, within the Sobol error of m1: 5 relative spreads of 4 scrambles, x 4) and relative
    variance 5 r (the free-product approximation, which misses the classical spread of the update gate)."""
    fp = mf.fixed_point("gru", sigma_w=1.0, mu_b_z=1.0)
    one = gd.gated_product_law(fp, 1, samples=256)
    step = gd.gated_step_law(fp, samples=256)
    x = np.geomspace(0.01, 1.1, 40)
    np.testing.assert_allclose(one.density(x), step.density(x), rtol=1e-6, atol=1e-9)
    five = gd.gated_product_law(fp, 5, samples=256)
    assert five.mean == pytest.approx(step.m1 ** 5, rel=1e-12)
    assert five.relative_variance == pytest.approx(5 * step.relative_variance, rel=1e-12)
    spread = np.std([gd.gated_step_law(fp, samples=256, seed=sd).m1 for sd in range(1, 5)], ddof=1) / step.m1
    assert five.mean == pytest.approx(float(fp.chi) ** 5, rel=4 * 5 * spread)


def test_bad_input():
    fp = mf.fixed_point("lstm", sigma_w=0.5)
    # orthogonal W: the one-step law exists (tests/test_gated_density_orthogonal.py); the
    # T-step free product of a several-field step is not a deformed step and is refused
    with pytest.raises(MftrnnError, match="not a deformed step"):
        gd.gated_product_law(fp, 3, orthogonal=True)
    with pytest.raises(MftrnnError, match="not a gated cell"):
        gd.gated_step_law("vanilla")
    with pytest.raises(MftrnnError, match="product of two random matrices"):
        gd.gated_step_law("gru-reset-before")
    with pytest.raises(MftrnnError, match="states"):
        gd.gated_product_law(fp, 3)
    for bad in (100, 32, 3.5, "x", None, True, float("nan")):
        with pytest.raises(DomainError, match="samples"):
            gd.gated_step_law(fp, samples=bad)
    with pytest.raises(DomainError):
        gd.gated_product_law("gru", 0)
    with pytest.raises(DomainError, match="no recurrent term"):
        gd.gated_step_law("gru", sigma_w=0.0)
    law = gd.gated_step_law("gru", sigma_w=0.5, samples=64)
    for call in (lambda: law.density([0.0]), lambda: law.distribution([-1.0]), lambda: law.density([np.nan]),
                 lambda: law.atom_at_zero(y=-1.0), lambda: law.support(tail=2.0)):
        with pytest.raises(DomainError):
            call()
    with pytest.raises(DomainError):
        gd.GatedSpectralLaw.from_coefficients(np.zeros((2, 2, 4)), np.ones((1, 1, 4)), np.ones((1, 1, 4)), [1.0])
    with pytest.raises(DomainError):
        gd.GatedSpectralLaw.from_coefficients(np.zeros((1, 1, 4)), np.ones((1, 1, 4)), np.ones((1, 1, 4)), [-1.0])

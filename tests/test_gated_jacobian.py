"""The Jacobian spectrum of nn.LSTM and nn.GRU (mftrnn.theory.gated_jacobian), checked three ways: the one-step
formula against explicit random matrices, the theory against explicit Jacobians (autograd) of the real torch
modules, and analytic limits."""
import math

import numpy as np
import pytest
import torch

import mftrnn as mf
from mftrnn.errors import DomainError, MftrnnError
from mftrnn.nets.gated import init_gated_
from mftrnn.theory import gated_jacobian as gj
from mftrnn.theory.gated import analyse, stationary_law

torch.set_num_threads(1)


def _haar(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("orthogonal", [False, True])
def test_one_step_formula_against_explicit_matrices(orthogonal):
    """m1, m2 of J = E + sum_k L_k W_k R_k (S = 2 states, 3 fields) with arbitrary correlated unit coefficients,
    against the eigenvalues of J J^T at N = 1000. Finite-N corrections are O(1/N) relative plus fluctuations of
    O(1/N) for these self-averaging traces: 2% is ~20x their size."""
    rng = np.random.default_rng(1)
    N, S, K = 1000, 2, 3
    z = rng.standard_normal((4, N))  # unit variables; coefficients are correlated functions of them
    e = np.array([[np.tanh(z[0]) + 0.5, 0.3 * z[1]], [0.2 * z[0] * z[1], 0.0 * z[0]]])
    l = np.array([[np.cos(z[2]), 0.5 * z[0]], [z[3] ** 2 * 0.3, np.sin(z[1])], [0.4 * z[2], 0.7 + 0 * z[0]]])
    r = np.array([[0 * z[0], 1 + 0 * z[0]], [0 * z[0], 1 + 0 * z[0]], [1 + 0 * z[0], 0.5 * np.tanh(z[3])]])
    s = np.array([0.8, 1.3, 0.5])
    m = []
    for seed in range(2):
        g = np.random.default_rng(10 + seed)
        J = np.block([[np.diag(e[i, j]) for j in range(S)] for i in range(S)])
        for k in range(K):
            W = math.sqrt(s[k]) * (_haar(N, g) if orthogonal else g.standard_normal((N, N)) / math.sqrt(N))
            L = np.vstack([np.diag(l[k, i]) for i in range(S)])
            R = np.hstack([np.diag(r[k, j]) for j in range(S)])
            J += L @ W @ R
        ev = np.linalg.eigvalsh(J @ J.T)
        m.append((ev.mean(), (ev ** 2).mean()))
    m1_sim, m2_sim = np.mean(m, 0)

    class _JS:  # the same coefficients through the module's formula
        def evaluate(self, values, n):
            return e, l, r
    m1, m2 = gj._step_terms(_JS(), {}, N, s, 0.0 if orthogonal else 1.0)[:2]
    assert m1 == pytest.approx(m1_sim, rel=0.02)
    assert m2 == pytest.approx(m2_sim, rel=0.02)


# ----------------------------------------------------------------------------- explicit Jacobians of torch modules
def _explicit(cell, hp, *, N=400, burn=100, T=5, seeds=3, untied=True):
    """Mean and relative variance of the squared singular values of the t-step state Jacobian (t = 1 .. T) of
    nn.LSTMCell / nn.GRUCell along a trajectory with random inputs, by autograd (torch.func.jacrev)."""
    out = {t: [] for t in range(1, T + 1)}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        mod = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(N, N).double()
        init_gated_(mod, generator=g, **hp)
        S = 2 if cell == "lstm" else 1

        def step(x, flat):
            if cell == "lstm":
                h, c = mod(x, (flat[N:].reshape(1, N), flat[:N].reshape(1, N)))
                return torch.cat([c.reshape(-1), h.reshape(-1)])
            return mod(x, flat.reshape(1, N)).reshape(-1)

        state = torch.zeros(S * N, dtype=torch.float64)
        with torch.no_grad():
            for _ in range(burn):
                if untied:
                    init_gated_(mod, generator=g, **hp)
                state = step(torch.randn(1, N, generator=g, dtype=torch.float64), state)
        P = None
        for t in range(1, T + 1):
            if untied:
                init_gated_(mod, generator=g, **hp)
            x = torch.randn(1, N, generator=g, dtype=torch.float64)
            with torch.no_grad():
                J = torch.func.jacrev(lambda v: step(x, v))(state)
            with torch.no_grad():
                state = step(x, state)
            P = J if P is None else J @ P
            ev = torch.linalg.svdvals(P).numpy() ** 2
            out[t].append((ev.mean(), (ev ** 2).mean() / ev.mean() ** 2 - 1))
    return {t: np.array(v) for t, v in out.items()}


CASES = [("lstm", dict(sigma_w=1.0, sigma_v=1.0, mu_b_f=2.0)), ("gru", dict(sigma_w=1.0, sigma_v=1.0, mu_b_z=1.0))]


@pytest.fixture(scope="module", params=CASES, ids=[c for c, _ in CASES])
def measured(request):
    cell, hp = request.param
    fp = mf.fixed_point(cell, **hp)
    return cell, fp, _explicit(cell, hp)


def _tol(values, floor):
    """Tolerance: 4 standard errors of the seed mean, plus ``floor`` relative for the finite-N bias (O(1/N) = 0.25%
    at N = 400, times the few-fold amplification of a product of steps)."""
    return 4 * values.std(ddof=1) / math.sqrt(len(values)) + floor * abs(values.mean())


def test_mean_exact_against_untied_modules(measured):
    """The T-step mean is exact in the untied mean field: explicit Jacobians of the module with weights redrawn
    every step agree at T = 1, 3, 5 within the sampling tolerance."""
    cell, fp, sim = measured
    for T in (1, 3, 5):
        th = gj.gated_product_moments(fp, T, samples=100_000)
        m = sim[T][:, 0]
        assert abs(th["mean"] - m.mean()) <= _tol(m, 0.02), (cell, T, th["mean"], m)


def test_one_step_spread_against_untied_modules(measured):
    cell, fp, sim = measured
    th = gj.gated_step_moments(fp, samples=100_000)
    rv = sim[1][:, 1]
    assert abs(th["relative_variance"] - rv.mean()) <= _tol(rv, 0.03) + 4 * th["relative_variance_error"]
    # the Monte Carlo m1 of one step against the exact mean of one step (a consistency check of the two methods)
    assert abs(th["m1"] - gj.gated_product_moments(fp, 1, samples=1000)["mean"]) <= 5 * th["m1_error"]


def test_spread_independent_coefficients_against_untied_modules(measured):
    """With coefficients drawn afresh at every step (the block recursion for the LSTM's two states, the closed form
    for the GRU) the T-step spread matches explicit untied Jacobians of nn.LSTMCell / nn.GRUCell at T = 1, 3, 5,
    within 4 seed standard errors plus 3% (finite N) plus 4 Monte Carlo errors of the theory. The carried state
    correlates consecutive steps, which this model ignores; at these T the effect is below the sampling error (the
    model's mean is within 2% of the exact one). The free product is further off at T = 5 (for the LSTM more than
    twice the measured spread)."""
    cell, fp, sim = measured
    for T in (1, 3, 5):
        th = gj.gated_product_moments(fp, T, samples=100_000)
        rv = sim[T][:, 1]
        tol = _tol(rv, 0.03) + 4 * th["relative_variance_independent_error"]
        assert abs(th["relative_variance_independent"] - rv.mean()) <= tol, (cell, T, th, rv)
        assert th["mean_independent"] == pytest.approx(th["mean"], rel=0.02)
    assert abs(th["relative_variance"] - rv.mean()) > abs(th["relative_variance_independent"] - rv.mean())
    if len(th["states"]) == 2:
        assert th["relative_variance"] > 2 * rv.mean()


@pytest.mark.parametrize("measured", [CASES[1]], indirect=True, ids=["gru"])
def test_gru_spread_independent_coefficients(measured):
    """For the GRU (one state, J = diag(z) + sum_k diag(b_k) W_k) the independent-coefficients recursion matches
    explicit untied Jacobians at T = 5; the free product misses the spread of diag(z) over units."""
    cell, fp, sim = measured
    th = gj.gated_product_moments(fp, 5, samples=200_000)
    rv = sim[5][:, 1]
    assert abs(th["relative_variance_independent"] - rv.mean()) <= _tol(rv, 0.05), (th, rv)
    assert th["relative_variance"] < rv.mean() - 2 * rv.std(ddof=1)


# ----------------------------------------------------------------------------- exact identities and limits
def test_lstm_perturbation_map_leading_eigenvalue_is_chi():
    fp = mf.fixed_point("lstm", sigma_w=1.0, mu_b_f=2.0)
    st = analyse(mf.get_cell("lstm"))
    mom = gj._field_moments(fp, st)
    law, K = stationary_law(st, mom)
    Z = gj.law_perturbation_map(st, gj._hyperparameters(fp, st.cell), law, K, mom)
    assert np.max(np.abs(np.linalg.eigvals(Z))) == pytest.approx(fp.chi, abs=1e-9)
    # many steps: the mean grows at chi per step (ratio of T = 400 and 200, exact to rounding)
    a, b = (gj.gated_product_moments(fp, T, samples=1000)["log_mean"] for T in (200, 400))
    assert (b - a) / 200 == pytest.approx(math.log(fp.chi), rel=1e-9)


def test_lstm_zero_recurrent_weights_limit():
    r"""sigma_w = 0 and a constant forget gate (sigma_v_f = 0): delta c_T = f^T delta c_0, delta h_T = o tanh'(c_T)
    delta c_T, so mean_T = f^{2T}(1 + E[o^2] E[tanh'(c)^2]) / 2 exactly (E over the law of c and o)."""
    hp = dict(sigma_w=0.0, sigma_v=1.0, sigma_v_f=0.0, mu_b_f=3.0)
    fp = mf.fixed_point("lstm", **hp)
    st = analyse(mf.get_cell("lstm"))
    law, _ = stationary_law(st, gj._field_moments(fp, st))
    x = np.linspace(law.m1 - 14 * math.sqrt(law.m2), law.m1 + 14 * math.sqrt(law.m2), 20001)
    p = law.density(x)
    Etp2 = np.trapezoid(p / np.cosh(x) ** 4, x) / np.trapezoid(p, x)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    Eo2 = float(w @ (1 / (1 + np.exp(-z * math.sqrt(fp.q_stars["e_o"])))) ** 2 / w.sum())
    f = 1 / (1 + math.exp(-3.0))
    for T in (1, 10):
        exact = f ** (2 * T) * (1 + Eo2 * Etp2) / 2
        assert gj.gated_product_moments(fp, T, samples=1000)["mean"] == pytest.approx(exact, rel=1e-6)


def test_unsupported_cells_and_bad_input():
    with pytest.raises(MftrnnError, match="product of two random matrices"):
        gj.jacobian_structure("gru-reset-before")
    with pytest.raises(MftrnnError, match="not polynomial"):
        gj.jacobian_structure("lstm-peephole")
    fp = mf.fixed_point("gru", sigma_w=0.5)
    for bad in (0, -1, 1.5, "x", True):
        with pytest.raises(DomainError):
            gj.gated_product_moments(fp, bad)
    with pytest.raises(MftrnnError):
        gj.gated_step_moments("vanilla")
    for bad in (5, "x", 1e3 + 0.5, float("nan"), None):
        with pytest.raises(DomainError):
            gj.gated_step_moments(fp, samples=bad)


# ----------------------------------------------------------------------------- T steps: coefficients drawn afresh
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _block_law(z, spread=0.9):
    """A generic law of unit blocks for S = 2 states and K = 2 fields, from four standard normals per unit: bounded,
    correlated within a unit, every entry of e, l_k and r_k non-zero (r_k not a unit row, e not triangular)."""
    one = np.ones_like(z[0])
    e = np.array([[0.3 + spread * _sigmoid(2 * z[0]), 0.2 * z[1]], [0.3 * np.tanh(z[0] + z[2]), 0.3 * _sigmoid(z[3])]])
    l = np.array([[0.6 * np.cos(z[2]), 0.4 * np.tanh(z[0])], [0.5 * np.sin(z[1]), 0.6 * one]])
    r = np.array([[0.3 * np.tanh(z[1]), one], [one, 0.4 * np.cos(z[3])]])
    return e, l, r


def _block_product_relative_variance(law, s, N, T, orthogonal, seed):
    """Relative variance of the squared singular values of J_t ... J_1 (t = 1 .. T) for explicit random block
    matrices J = E + sum_k L_k W_k R_k, the unit coefficients drawn afresh from ``law`` at every step."""
    g = np.random.default_rng(seed)
    P, out = None, []
    for _ in range(T):
        e, l, r = law(g.standard_normal((4, N)))
        S = e.shape[0]
        J = np.block([[np.diag(e[i, j]) for j in range(S)] for i in range(S)])
        for k in range(len(s)):
            W = math.sqrt(s[k]) * (_haar(N, g) if orthogonal else g.standard_normal((N, N)) / math.sqrt(N))
            J += np.vstack([np.hstack([l[k, i][:, None] * W * r[k, j][None, :] for j in range(S)]) for i in range(S)])
        P = J if P is None else J @ P
        X = P @ P.T
        out.append(np.sum(X * X) * S * N / np.trace(X) ** 2 - 1)
    return np.array(out)


def _one_state_law(z):
    """One state, r = 1: the GRU's form J = diag(a) + sum_k diag(b_k) W_k, with E[a^4] < m1^2 (beta < 1)."""
    return (np.array([[0.2 + 0.5 * _sigmoid(z[0])]]), np.array([[0.8 * np.cos(z[1])], [0.6 * np.tanh(z[0] + z[2])]]),
            np.ones((2, 1, z.shape[1])))


def _one_state_law_wide(z):
    """As :func:`_one_state_law` with a wide spread of a and small b: E[a^4] > m1^2 (beta > 1), so the relative
    variance grows like beta^T and overflows a float beyond T ~ 1000."""
    e, l, r = _one_state_law(z)
    return np.array([[0.1 + 1.5 * _sigmoid(3 * z[0])]]), 0.05 * l, r


@pytest.mark.parametrize("orthogonal", [False, True])
def test_block_recursion_with_one_state_is_the_closed_form(orthogonal):
    """S = 1, r = 1: the block recursion is the recursion of product_moments, whose closed form the GRU uses; the
    two agree to rounding (1e-12) from T = 1 to 2**53 (binary powering loses no accuracy there) on the same sample
    of units, and both overflow (None) together."""
    kappa = 0.0 if orthogonal else 1.0
    s = np.array([1.2, 0.7])
    for law, Ts in ((_one_state_law, (1, 2, 5, 50, 1000, 2 ** 30, 2 ** 53)),
                    (_one_state_law_wide, (1, 3, 40, 300, 2 ** 40))):  # beta > 1: overflow at 2**40
        e, l, r = law(np.random.default_rng(3).standard_normal((3, 5000)))
        m1, m2, Ea2, Ea4, dvar = gj._terms_from_blocks(e, l, r, s, kappa)
        bm = gj._BlockMoments.from_units(e, l, r)
        for T in Ts:
            closed = gj._independent_relative_variance(T, m2 / m1 ** 2 - 1, m1, Ea2, Ea4, dvar)
            block, log_mean = gj._block_relative_variance(bm, s, kappa, T)
            assert log_mean == pytest.approx(T * math.log(m1), rel=1e-12, abs=1e-12)
            if closed is None:
                assert block is None, (T, block)
            else:
                assert block == pytest.approx(closed, rel=1e-12), (T, block, closed)
    assert closed is None  # the overflow branch was reached


@pytest.mark.parametrize("orthogonal", [False, True])
def test_block_recursion_first_step_and_long_products(orthogonal):
    """At T = 1 the recursion gives the one-step moments of the module docstring exactly (S = 2, three fields, the
    coefficients of test_one_step_formula_against_explicit_matrices); binary powering agrees with T plain steps of
    the map (1e-12 at T = 300)."""
    kappa = 0.0 if orthogonal else 1.0
    z = np.random.default_rng(5).standard_normal((4, 20000))
    e, l, r = _block_law(z)
    l = np.concatenate([l, 0.5 * l[:1] * z[None, 1]])
    r = np.concatenate([r, np.array([[np.tanh(z[2]), np.ones_like(z[2])]])])
    s = np.array([0.8, 1.3, 0.5])
    m1, m2 = gj._terms_from_blocks(e, l, r, s, kappa)[:2]
    bm = gj._BlockMoments.from_units(e, l, r)
    rel, log_mean = gj._block_relative_variance(bm, s, kappa, 1)
    assert rel == pytest.approx(m2 / m1 ** 2 - 1, rel=1e-12)
    assert log_mean == pytest.approx(math.log(m1), rel=1e-12)
    # the matrix as the sum of the pairings, without setting its PP and M diagonal blocks to A x A: they agree
    Z = gj._block_matrix(bm, s, kappa, exact_diagonal=False)
    assert np.max(np.abs(Z - gj._block_matrix(bm, s, kappa))) <= 1e-14 * np.max(np.abs(Z))
    I2 = np.einsum("ij,kl->ijkl", np.eye(2), np.eye(2))
    v = np.concatenate([I2.ravel(), I2.ravel(), I2.transpose(0, 2, 1, 3).ravel()])  # X_0 = I
    for _ in range(300):
        v = Z @ v
        v /= np.max(np.abs(v))
    loop = 2 * np.einsum("aacc->", v[32:].reshape(2, 2, 2, 2)) / np.einsum("aacc->", v[:16].reshape(2, 2, 2, 2)) - 1
    assert gj._block_relative_variance(bm, s, kappa, 300)[0] == pytest.approx(loop, rel=1e-12)


@pytest.mark.parametrize("orthogonal", [False, True])
def test_block_recursion_against_random_block_products(orthogonal):
    """The recursion against explicit random block matrices J = E + sum_k L_k W_k R_k (S = 2, K = 2, no network),
    the unit coefficients drawn afresh from _block_law at every step: N = 400, T = 1..3, 12 products. Tolerance: 4
    standard errors of the mean over the products, plus the finite-N bias, measured for this law at T = 3 (about
    -4% at N = 300, -1% at N = 600, within errors at N = 1000): 3% of the value."""
    kappa = 0.0 if orthogonal else 1.0
    s = np.array([0.3, 0.2])
    e, l, r = _block_law(np.random.default_rng(0).standard_normal((4, 400_000)))
    bm = gj._BlockMoments.from_units(e, l, r)
    sims = np.array([_block_product_relative_variance(_block_law, s, 400, 3, orthogonal, seed) for seed in range(12)])
    for T in (1, 2, 3):
        th = gj._block_relative_variance(bm, s, kappa, T)[0]
        assert abs(th - sims[:, T - 1].mean()) <= _tol(sims[:, T - 1], 0.03), (T, th, sims[:, T - 1])

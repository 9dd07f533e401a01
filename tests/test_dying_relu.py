"""Dying ReLU in recurrent networks (mftrnn.experiments.dying_relu): Monte Carlo against the closed forms, exact
identities, the RAI law, and the training effect.

Tolerances.  A Monte Carlo frequency of n independent networks is Binomial(n, p): it is compared with a closed form
by the exact two-sided binomial test (scipy.stats.binomtest) and must not be rejected at level 1e-4 (each test
checks at most ~40 frequencies, so a correct implementation fails with probability < 0.4 %; the seeds are fixed, so
the outcome is deterministic).  Bounds are checked with 4 binomial standard errors computed from the bound.  The
RAI law is checked with Kolmogorov-Smirnov / chi-square tests at level 1e-3.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from mftrnn.errors import DomainError
from mftrnn.experiments import dying_relu as d

LEVEL = 1e-4
CHECK_T = (1, 2, 3, 5, 10, 20, 50, 100, 200)


def _binom_ok(count: int, n: int, p: float) -> bool:
    return stats.binomtest(int(count), n, float(min(max(p, 0.0), 1.0))).pvalue > LEVEL


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_untied_single_input_matches_closed_form(init, N):
    n = 3000
    c = d.dead_by_step(N, 200, n, init=init, tied=False, K=1, seed=10 + N)
    theory = d.p_dead_untied_single(c.t, N)
    for t in CHECK_T:
        assert _binom_ok(c.dead[t], n, theory[t]), (init, N, t, c.p[t], theory[t])


def test_untied_with_fresh_gaussian_bias_single_input():
    # a fresh symmetric bias keeps each step's kill probability 2^-N, from any state including 0
    n, N = 3000, 2
    c = d.dead_by_step(N, 50, n, tied=False, K=1, sigma_b=1.0, seed=3)
    theory = d.p_dead_untied_single(c.t, N)
    for t in (1, 2, 5, 10, 20, 50):
        assert _binom_ok(c.dead[t], n, theory[t]), (t, c.p[t], theory[t])


@pytest.mark.parametrize("N,K", [(2, 3), (3, 2), (3, 5)])
def test_untied_many_inputs_between_bounds(N, K):
    n = 3000
    c = d.dead_by_step(N, 200, n, tied=False, K=K, seed=N * 7 + K)
    lower, upper = d.p_dead_untied_bounds(c.t, N, K)
    se_l, se_u = d.binomial_stderr(lower, n), d.binomial_stderr(upper, n)
    assert np.all(c.p >= lower - 4 * se_l - 1e-12)
    assert np.all(c.p <= upper + 4 * se_u + 1e-12)
    # dying together is harder than dying alone: strictly below the single-input law early on
    assert c.p[1] < upper[1] - 4 * se_u[1]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("K", [1, 3])
def test_width_one_exact(tied, K):
    n = 4000
    c = d.dead_by_step(1, 30, n, init="gaussian", tied=tied, K=K, seed=K + 2 * tied)
    theory = d.p_dead_width_one(c.t, K, tied)
    assert c.dead[0] == 0 and theory[0] == 0
    for t in (1, 2, 3, 5, 10, 30):
        assert _binom_ok(c.dead[t], n, theory[t]), (tied, K, t, c.p[t], theory[t])


def test_closed_forms_identities():
    t = np.arange(0, 50)
    for N in (1, 2, 7):
        p = d.p_dead_untied_single(t, N)
        np.testing.assert_allclose(p, 1 - (1 - 2.0 ** -N) ** t, rtol=1e-13, atol=0)
        assert p[0] == 0 and np.all(np.diff(p) > 0)
        lo, up = d.p_dead_untied_bounds(t, N, 1)
        np.testing.assert_allclose(lo, up, rtol=1e-13)               # exact at K = 1
        lo, up = d.p_dead_untied_bounds(t, N, 4)
        assert np.all(lo <= up)
    # width one: the untied formula is the single-input one at K = 1
    np.testing.assert_allclose(d.p_dead_width_one(t, 1, tied=False), d.p_dead_untied_single(t, 1), rtol=1e-14)
    # tiny probabilities keep their relative precision
    assert math.isclose(float(d.p_dead_untied_single(1, 60)), 2.0 ** -60, rel_tol=1e-12)


def test_zero_bias_is_absorbing_and_positive_bias_is_not():
    W = torch.randn(5, 3, 3, dtype=torch.float64)
    zero = torch.zeros(5, 3, 2, dtype=torch.float64)
    assert torch.equal(d._step(W, zero, torch.zeros(5, 3, dtype=torch.float64)), zero)
    assert torch.equal(d._step(W, zero, -torch.rand(5, 3, dtype=torch.float64)), zero)
    b = torch.tensor([[0.5, -1.0, -1.0]], dtype=torch.float64).expand(5, 3)
    assert bool((d._step(W, zero, b) > 0).any(1).all())
    # in the simulation: with zero bias "zero at t" is "dead by t"; with a Gaussian bias some dead states revive
    c = d.dead_by_step(2, 300, 2000, tied=True, K=2, seed=5)
    np.testing.assert_array_equal(c.zero_now, c.dead)
    cb = d.dead_by_step(2, 300, 2000, tied=True, K=2, sigma_b=1.0, seed=5)
    assert np.all(cb.zero_now <= cb.dead) and cb.zero_now[-1] < cb.dead[-1]
    assert np.all(np.diff(cb.dead) >= 0)


def test_simulation_matches_a_direct_reference():
    # dead_by_step (power-of-two rescaling, dropping dead networks) against a plain float64 loop on the same weights
    n, N, K, T = 500, 3, 3, 60
    gen = torch.Generator().manual_seed(9)
    W, V, b = d.init_weights(n, N, K, "gaussian", gen)
    h = torch.relu(V + b.unsqueeze(-1))
    dead_at = np.full(n, -1)
    for s in range(1, T + 1):
        if s > 1:
            h = torch.relu(W @ h + b.unsqueeze(-1))
        z = (h == 0).flatten(1).all(1).numpy()
        dead_at[(dead_at < 0) & z] = s
    ref = np.array([(dead_at[dead_at > 0] <= s).sum() for s in range(T + 1)])
    c = d.dead_by_step(N, T, n, init="gaussian", tied=True, K=K, seed=9)
    np.testing.assert_array_equal(c.dead, ref)
    assert 0 < ref[-1] < n


def test_tied_saturates_below_untied():
    n, N = 2000, 2
    tied = d.dead_by_step(N, 1000, n, tied=True, K=1, seed=1)
    untied = d.p_dead_untied_single(tied.t, N)
    assert untied[1000] > 1 - 1e-12
    se = tied.stderr[1000]
    assert tied.p[1000] < 0.75
    # saturation: between t = 100 and t = 1000 the tied curve moves by less than 3 standard errors
    assert tied.p[1000] - tied.p[100] <= 3 * se + 1.0 / n
    # and the first step agrees with the untied law (one step: nothing is tied yet)
    assert _binom_ok(tied.dead[1], n, untied[1])


def test_rai_rows_have_the_stated_law():
    n, fan_in, n_w = 20000, 9, 8
    gen = torch.Generator().manual_seed(4)
    rows, index = d.rai_rows(n, fan_in, n_w, gen)
    pos = rows[torch.arange(n), index].numpy()
    assert stats.kstest(pos, stats.beta(*d.RAI_BETA).cdf).pvalue > 1e-3
    mask = torch.ones(n, fan_in, dtype=torch.bool)
    mask[torch.arange(n), index] = False
    rest = rows[mask].numpy()
    assert stats.kstest(rest, stats.norm(0, d.RAI_SIGMA / math.sqrt(n_w)).cdf).pvalue > 1e-3
    counts = np.bincount(index.numpy(), minlength=fan_in)
    assert stats.chisquare(counts).pvalue > 1e-3
    # a wrong law is rejected by the same test (the test has power)
    assert stats.kstest(pos, stats.uniform().cdf).pvalue < 1e-3


def test_rai_network_layout():
    gen = torch.Generator().manual_seed(0)
    W, V, b = d.init_weights(4000, 3, 2, "rai", gen)
    full = torch.cat([W, V, b.unsqueeze(-1)], dim=-1).reshape(-1, 6)
    # exactly one entry per unit lies in (0, 1] with the Beta law; its position is uniform over weights and bias
    in_unit = ((full > 0) & (full <= 1)).sum(1)
    assert bool((in_unit >= 1).all())
    frac_bias_pos = float((b > 0).double().mean())
    # bias positive: the Beta entry sits there (1/6) or the Gaussian entry is positive (5/6 * 1/2)
    p = 1 / 6 + 5 / 12
    assert abs(frac_bias_pos - p) < 4 * math.sqrt(p * (1 - p) / b.numel())


def test_born_dead_gets_no_input_gradient_and_learns_nothing():
    runs = [d.train_recall("gaussian", s, steps=0) for s in range(6)]
    dead = [r for r in runs if r.born_dead]
    alive = [r for r in runs if not r.input_independent]
    assert dead and alive
    for r in dead:
        assert r.input_independent and r.grad_norm_input_init == 0.0
    assert all(r.grad_norm_input_init > 0 for r in alive)
    trained = d.train_recall("gaussian", dead[0].seed, steps=150)
    assert trained.born_dead and trained.accuracy == pytest.approx(1 / trained.K)


@pytest.mark.parametrize("call, text", [
    (lambda: d.dead_by_step(0, 10, 10), "N must be an integer"),
    (lambda: d.dead_by_step(2, 0, 10), "t_max must be an integer"),
    (lambda: d.dead_by_step(2, 10, 10, init="he"), "unknown initialisation"),
    (lambda: d.dead_by_step(2, 10, 10, sigma_w=float("nan")), "sigma_w must be a finite number"),
    (lambda: d.dead_by_step(2, 10, 10, sigma_b=-1), "sigma_b must be a finite number"),
    (lambda: d.dead_by_step(2, 10, 10, K=True), "K must be an integer"),
    (lambda: d.p_dead_untied_single(-1, 3), "t must be integers"),
    (lambda: d.p_dead_untied_single(1.5, 3), "t must be integers"),
    (lambda: d.p_dead_untied_bounds(3, 2, 0), "K must be an integer"),
    (lambda: d.binomial_stderr(1.5, 10), "p must be probabilities"),
    (lambda: d.rai_rows(10, 3, 2, torch.Generator(), beta=(2.0, 2.0)), "only Beta(a, 1)"),
    (lambda: d.train_recall("rai", 0, K=1), "K must be an integer"),
])
def test_bad_input_one_line(call, text):
    with pytest.raises(DomainError) as e:
        call()
    assert text in str(e.value) and "\n" not in str(e.value)

"""The untied mean field of the LSTM and GRU against finite-width simulations of the real torch.nn.LSTMCell and
torch.nn.GRUCell (mftrnn.nets.simulate_gated): untied weights, where the theory is exact as N -> infinity, in the
ordered, the moderately long-memory and the long-memory regime; tied weights where the theory should hold.

Tolerances: 5 standard errors of the simulation (estimated from the spread across independent networks) plus an
allowance of 0.3% for the finite width N = 1000. The allowance comes from a finite-size scan with an exact O(N)
sampler of the same untied networks (N = 250 ... 16000, mftrnn.nets.untied_fast): the deviation of Q* from the
theory is below 0.05% at N = 1000 and extrapolates to 0 within 1e-4 relative.
"""
import numpy as np
import pytest
import torch

import mftrnn as mf
from mftrnn.nets.simulate_gated import measure_gated_chi, simulate_gated

FINITE_N = 3e-3

POINTS = [  # (cell, hyperparameters, steps, burn-in)
    ("lstm", dict(sigma_w=1.0, sigma_v=1.0), 50, 20),                  # ordered, closed forget gate
    ("lstm", dict(sigma_w=0.5, sigma_v=1.0, mu_b_f=3.0), 90, 40),      # memory ~ 8 steps
    ("lstm", dict(sigma_w=2.0, sigma_v=0.5, mu_b_i=0.5, sigma_b=0.3), 50, 20),
    ("gru", dict(sigma_w=1.0, sigma_v=1.0), 50, 20),
    ("gru", dict(sigma_w=0.5, sigma_v=1.0, mu_b_z=3.0), 90, 40),
    ("gru", dict(sigma_w=2.0, sigma_v=0.5, mu_b_n=0.5), 50, 20),
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check(theory, sim_mean, sim_se):
    assert abs(sim_mean - theory) <= 5 * sim_se + FINITE_N * abs(theory), (theory, sim_mean, sim_se)


@pytest.mark.parametrize("cell, hp, T, burn", POINTS)
def test_untied_fixed_point(cell, hp, T, burn):
    """Q* (and Qc* for the LSTM) of the untied mean field against nn.LSTMCell / nn.GRUCell, N = 1000, untied."""
    fp = mf.fixed_point(cell, **hp)
    sim = simulate_gated(cell, N=1000, T=T, tied=False, seed=11, n_networks=3, **hp)
    frac = (T - burn) / T
    _check(fp.Q_star, *sim.tail_mean("Q_h", frac))
    if cell == "lstm":
        _check(fp.Qc_star, *sim.tail_mean("Q_c", frac))


@pytest.mark.parametrize("cell, hp, T, burn", POINTS[:2] + POINTS[3:5])
def test_untied_chi(cell, hp, T, burn):
    """chi (growth per step of a perturbation's second moment, identical inputs and weights for both copies)
    against the arithmetic mean of the measured one-step ratios of |delta|^2 (N = 1000, untied)."""
    fp = mf.fixed_point(cell, **hp)
    ch = measure_gated_chi(cell, N=1000, T=50, burn_in=burn, settle=10, tied=False, seed=5, n_networks=3, **hp)
    _check(fp.chi, ch["chi_arith"], ch["chi_arith_se"])


def test_long_memory_regime():
    """A widely open forget gate (mu_b_f = 4, chi = 0.95, xi ~ 18 steps; the cell state relaxes over ~55 steps):
    untied nn.LSTMCell, N = 1000, 200 steps, the last 100 averaged."""
    hp = dict(sigma_w=0.3, sigma_v=1.0, mu_b_f=4.0)
    fp = mf.fixed_point("lstm", **hp)
    assert fp.chi > 0.94
    sim = simulate_gated("lstm", N=1000, T=200, tied=False, seed=2, n_networks=2, **hp)
    _check(fp.Q_star, *sim.tail_mean("Q_h", 0.5))
    _check(fp.Qc_star, *sim.tail_mean("Q_c", 0.5))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tied_weights_small_recurrent_variance(cell):
    """Real (tied) networks follow the untied theory where the gates are closed and the recurrent weights small:
    sigma_w = 0.5, all biases 0, N = 1000, within 3% (measured: ~1%). (Where the forget gate is open they do not:
    tests below and the book's chapter on gated cells.)"""
    hp = dict(sigma_w=0.5, sigma_v=1.0)
    fp = mf.fixed_point(cell, **hp)
    sim = simulate_gated(cell, N=1000, T=80, tied=True, seed=4, n_networks=2, **hp)
    m, se = sim.tail_mean("Q_h", 0.5)
    assert abs(m / fp.Q_star - 1) < 0.03 + 5 * se / fp.Q_star


def test_tied_weights_open_forget_gate_deviate():
    """With an open forget gate and O(1) recurrent weights the tied cell state grows far beyond the untied
    prediction (the failure the book documents): more than 10x in Qc*, while untied agrees."""
    hp = dict(sigma_w=1.5, sigma_v=0.5, mu_b_f=3.0)
    fp = mf.fixed_point("lstm", **hp)
    tied = simulate_gated("lstm", N=1000, T=150, tied=True, seed=3, n_networks=1, **hp)
    assert tied.tail_mean("Q_c", 0.3)[0] > 10 * fp.Qc_star

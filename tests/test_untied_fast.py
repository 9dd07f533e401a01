"""The O(N) untied sampler (mftrnn.nets.untied_fast) against the matrix simulator (mftrnn.nets.simulate_gated).

Both sample the same law (fresh weights and biases every step), with different random numbers; statistics are
compared within 4.5 combined standard errors (the standard errors come from the spread over independent
networks). Plus closed-form limits checked exactly.
"""
import math

import numpy as np
import pytest
import torch

from mftrnn.nets.simulate_gated import GatedSimulation, measure_gated_chi, simulate_gated
from mftrnn.nets.untied_fast import chi_untied, sample_untied, time_average

torch.set_num_threads(1)

Z = 4.5


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _agree(a, se_a, b, se_b, what):
    se = math.hypot(se_a, se_b)
    assert abs(a - b) < Z * se, (what, a, se_a, b, se_b)
    return se


def _per_step(values, t):
    """Mean over networks at step t and its standard error."""
    v = values[:, t]
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def test_lstm_trajectory_matches_matrix_simulator():
    """LSTM, N = 500, per-gate hyperparameters and a random initial state: the transient (steps 1, 2, 5) and the
    stationary time averages of Q_h, Q_c agree with nn.LSTMCell driven by fresh full weight matrices."""
    hp = dict(sigma_w=1.2, sigma_v=0.8, sigma_b=0.3, mu_b_f=1.0, sigma_w_o=0.6, mu_b_i=-0.5, R=1.5)
    N, T, burn = 500, 45, 15
    ref = simulate_gated("lstm", N=N, T=T, tied=False, n_networks=4, seed=2, h0_scale=0.5, **hp)
    fast = sample_untied("lstm", N=N, T=T, n_networks=120, seed=2, h0_scale=0.5, **hp)
    assert isinstance(fast, GatedSimulation) and not fast.tied
    assert fast.Q_h.shape == (120, T + 1) and fast.c_final.shape == (120, N)
    for name in ("Q_h", "Q_c"):
        for t in (1, 2, 5):
            _agree(*_per_step(getattr(ref, name), t), *_per_step(getattr(fast, name), t), f"{name}[{t}]")
        se = _agree(*time_average(getattr(ref, name), burn), *time_average(getattr(fast, name), burn), name)
        assert se < 0.01 * time_average(getattr(fast, name), burn)[0]      # a 4.5 % error would be caught


@pytest.mark.parametrize("cell, hp", [("gru", dict(sigma_w=1.0, sigma_v=1.0, sigma_b=0.2, mu_b_z=0.5)),
                                      ("lstm", dict(sigma_w=1.5, sigma_v=0.7, mu_b_f=1.0))])
def test_chi_matches_matrix_simulator(cell, hp):
    """Growth of an infinitesimal perturbation (two copies, shared weights and inputs), N = 500: arithmetic and
    geometric rates and the reference Q_h agree with measure_gated_chi(tied=False)."""
    kw = dict(N=500, T=40, burn_in=15, settle=8)
    ref = measure_gated_chi(cell, tied=False, n_networks=3, seed=4, **kw, **hp)
    fast = chi_untied(cell, n_networks=80, seed=4, **kw, **hp)
    assert fast["ratios"].shape == (80, 32)
    se = _agree(ref["chi_arith"], ref["chi_arith_se"], fast["chi_arith"], fast["chi_arith_se"], "chi_arith")
    assert se < 0.01 * fast["chi_arith"]
    _agree(ref["chi"], ref["chi_se"], fast["chi"], fast["chi_se"], "chi")
    # measure_gated_chi reports the pooled Q_h only: use the fast sampler's spread for both (same law)
    _agree(ref["Q_h"], fast["Q_h_se"] * math.sqrt(80 / 3), fast["Q_h_mean"], fast["Q_h_se"], "Q_h")


def test_gru_chi_frozen_update_gate():
    """z = s(3) for every unit (sigma_w_z = sigma_v_z = sigma_b = 0, mu_b_z = 3) and sigma_w = 1e-4: each one-step
    ratio is s(3)^2 up to O(sigma_w/sqrt N); a non-frozen gate differs."""
    r = chi_untied("gru", N=200, T=30, burn_in=10, settle=5, n_networks=3, sigma_w=1e-4, sigma_w_z=0.0,
                   sigma_v_z=0.0, mu_b_z=3.0, sigma_v=1.0)
    np.testing.assert_allclose(r["ratios"], sig(3.0) ** 2, rtol=1e-4)
    assert r["chi"] == pytest.approx(sig(3.0) ** 2, rel=1e-5)
    assert r["chi_arith"] == pytest.approx(sig(3.0) ** 2, rel=1e-5)
    r2 = chi_untied("gru", N=200, T=30, burn_in=10, settle=5, n_networks=3, sigma_w=1e-4, sigma_v=1.0, mu_b_z=3.0)
    assert abs(r2["chi"] / sig(3.0) ** 2 - 1) > 1e-3


def test_lstm_deterministic_limit_and_reproducibility():
    """All sigmas zero: c_t = s(mu_f) c + s(mu_i) tanh(mu_g), h_t = s(mu_o) tanh(c_t) for every unit; one seed
    gives one result, another seed another."""
    mu = dict(mu_b_i=0.3, mu_b_f=1.2, mu_b_g=-0.7, mu_b_o=0.5)
    s = sample_untied("lstm", N=30, T=20, n_networks=2, sigma_w=0, sigma_v=0, sigma_b=0, **mu)
    c, cs, hs = 0.0, [0.0], [0.0]
    for _ in range(20):
        c = sig(mu["mu_b_f"]) * c + sig(mu["mu_b_i"]) * math.tanh(mu["mu_b_g"])
        cs.append(c)
        hs.append(sig(mu["mu_b_o"]) * math.tanh(c))
    np.testing.assert_allclose(s.M_c, np.broadcast_to(cs, (2, 21)), atol=1e-12)
    np.testing.assert_allclose(s.Q_h, np.broadcast_to(np.square(hs), (2, 21)), atol=1e-12)
    a = sample_untied("gru", N=40, T=5, n_networks=3, seed=7)
    b = sample_untied("gru", N=40, T=5, n_networks=3, seed=7)
    c2 = sample_untied("gru", N=40, T=5, n_networks=3, seed=8)
    np.testing.assert_array_equal(a.Q_h, b.Q_h)
    assert not np.allclose(a.Q_h[:, 1:], c2.Q_h[:, 1:])
    assert a.Q_c is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        sample_untied("rnn", N=10, T=2)
    with pytest.raises(ValueError):
        chi_untied("gru", N=10, T=5, settle=5)
    with pytest.raises(ValueError):
        chi_untied("gru", N=10, T=5, settle=1, eps=0.5)
    with pytest.raises(ValueError):
        sample_untied("lstm", N=10, T=2, sigma_w_r=1.0)

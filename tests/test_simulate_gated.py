"""Finite-width Monte Carlo of torch.nn.LSTMCell / GRUCell (mftrnn.nets.simulate_gated).

Every check is against closed forms (Gaussian integrals by quad, deterministic recursions), never the mean-field
code. Tolerances are derived from the sample sizes in each test.
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from mftrnn.nets.simulate_gated import (GatedSimulation, draw_gated_weights_, make_gated_module,
                                        measure_gated_chi, resolve_gated_hyperparameters, simulate_gated)

torch.set_num_threads(1)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def gauss(f, m, v):
    """E f(e), e ~ N(m, v), by quad."""
    s = math.sqrt(v)
    if s == 0:
        return f(m)
    g = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi) * f(m + s * z)
    return quad(g, -14, 14, limit=200, epsabs=1e-13)[0]


# --------------------------------------------------------------------------- the weights written
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_statistics(cell):
    gates_letters = "ifgo" if cell == "lstm" else "rzn"
    hp = {"sigma_w": 1.3, "sigma_v": 0.7, "sigma_b": 0.4, "mu_b": -0.5}
    # per-gate overrides, one gate with zero variances
    hp.update({f"sigma_w_{gates_letters[1]}": 2.0, f"mu_b_{gates_letters[1]}": 3.0,
               f"sigma_v_{gates_letters[0]}": 0.0, f"sigma_b_{gates_letters[0]}": 0.0})
    gates, _ = resolve_gated_hyperparameters(cell, **hp)
    N, N_in = 300, 200
    mod = make_gated_module(cell, N, N_in)
    draw_gated_weights_(mod, cell, gates, torch.Generator().manual_seed(1))
    assert mod.weight_hh.dtype == torch.float64
    assert torch.all(mod.bias_hh == 0)
    for K, g in enumerate(gates_letters):
        blocks = [(mod.weight_hh[K * N:(K + 1) * N], gates[g]["sigma_w"] ** 2 / N, 0.0),
                  (mod.weight_ih[K * N:(K + 1) * N], gates[g]["sigma_v"] ** 2 / N_in, 0.0),
                  (mod.bias_ih[K * N:(K + 1) * N], gates[g]["sigma_b"] ** 2, gates[g]["mu_b"])]
        for w, var, mean in blocks:
            w = w.detach().numpy().ravel()
            n = w.size
            if var == 0:
                assert np.all(w == mean)
                continue
            # sample mean and variance within 5 standard errors (Gaussian: SE(var_hat) = var sqrt(2/n))
            assert abs(w.mean() - mean) < 5 * math.sqrt(var / n)
            assert abs(w.var() - var) < 5 * var * math.sqrt(2 / n)


def test_first_step_matches_gaussian_integrals():
    """From h0 = c0 = 0 one untied step gives e_K ~ N(mu_K, sigma_v_K^2 R + sigma_b_K^2) exactly, so
    Q_c[1] = E[s(e_i)^2] E[tanh(e_g)^2], M_c[1] = E[s(e_i)] E[tanh(e_g)]; GRU: Q_h[1] = E[(1-s(e_z))^2] E[tanh^2(e_n)].
    The simulated values average N * n_networks independent units: tolerance 5 standard errors."""
    R, N, nn = 2.0, 1000, 4
    hp = dict(sigma_v=0.8, sigma_b=0.3, mu_b=0.2, sigma_v_g=1.5, mu_b_i=-1.0, R=R)
    s = simulate_gated("lstm", N=N, T=1, tied=False, n_networks=nn, **hp)
    var = lambda sv, sb: sv ** 2 * R + sb ** 2
    vi, vg = var(0.8, 0.3), var(1.5, 0.3)
    E_si2, E_si = gauss(lambda e: sig(e) ** 2, -1.0, vi), gauss(sig, -1.0, vi)
    E_tg2, E_tg = gauss(lambda e: math.tanh(e) ** 2, 0.2, vg), gauss(math.tanh, 0.2, vg)
    E_si4, E_tg4 = gauss(lambda e: sig(e) ** 4, -1.0, vi), gauss(lambda e: math.tanh(e) ** 4, 0.2, vg)
    se_q = math.sqrt((E_si4 * E_tg4 - (E_si2 * E_tg2) ** 2) / (N * nn))
    se_m = math.sqrt((E_si2 * E_tg2 - (E_si * E_tg) ** 2) / (N * nn))
    assert abs(s.Q_c[:, 1].mean() - E_si2 * E_tg2) < 5 * se_q
    assert abs(s.M_c[:, 1].mean() - E_si * E_tg) < 5 * se_m
    assert np.all(s.Q_h[:, 0] == 0) and np.all(s.Q_c[:, 0] == 0)

    hp = dict(sigma_v=0.9, sigma_b=0.2, mu_b_z=1.0, mu_b_n=0.3, R=R)
    s = simulate_gated("gru", N=N, T=1, tied=False, n_networks=nn, **hp)
    vz = vn = var(0.9, 0.2)
    a2, a4 = (gauss(lambda e: (1 - sig(e)) ** k, 1.0, vz) for k in (2, 4))
    b2, b4 = (gauss(lambda e: math.tanh(e) ** k, 0.3, vn) for k in (2, 4))
    assert abs(s.Q_h[:, 1].mean() - a2 * b2) < 5 * math.sqrt((a4 * b4 - (a2 * b2) ** 2) / (N * nn))
    assert s.Q_c is None and s.c_final is None


# --------------------------------------------------------------------------- closed-form limits
def test_lstm_deterministic_limit():
    """All sigmas zero: every unit follows c_t = s(mu_f) c_{t-1} + s(mu_i) tanh(mu_g), h_t = s(mu_o) tanh(c_t)."""
    mu = dict(mu_b_i=0.3, mu_b_f=1.2, mu_b_g=-0.7, mu_b_o=0.5)
    s = simulate_gated("lstm", N=50, T=40, tied=False, n_networks=2, sigma_w=0, sigma_v=0, sigma_b=0, **mu)
    c, cs, hs = 0.0, [0.0], [0.0]
    for _ in range(40):
        c = sig(mu["mu_b_f"]) * c + sig(mu["mu_b_i"]) * math.tanh(mu["mu_b_g"])
        cs.append(c)
        hs.append(sig(mu["mu_b_o"]) * math.tanh(c))
    cs, hs = np.array(cs), np.array(hs)
    for k in range(2):
        np.testing.assert_allclose(s.M_c[k], cs, rtol=0, atol=1e-12)
        np.testing.assert_allclose(s.Q_c[k], cs ** 2, rtol=0, atol=1e-12)
        np.testing.assert_allclose(s.M_h[k], hs, rtol=0, atol=1e-12)
        np.testing.assert_allclose(s.Q_h[k], hs ** 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.c_final, cs[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("m, N, settle, T, n, estimators", [(3.0, 400, 20, 100, 4, ("chi_c", "chi_c_arith", "chi")),
                                                            (1.0, 1000, 0, 10, 8, ("chi_c_arith",))])
def test_lstm_chi_small_recurrent_weights(m, N, settle, T, n, estimators):
    r"""sigma_w -> 0 (untied): delta c_t = s(e_f) delta c_{t-1} + O(sigma_w), e_f ~ N(m, sigma_v^2 R) fresh and
    independent of delta c, so each one-step ratio r_t = sum_i w_i s(e_f,i)^2 (w ∝ delta c_i^2) has conditional
    mean E[s^2] and variance Var(s^2) * sum w^2 ≈ Var(s^2) 3 rho^t / N, rho = E[s^4]/E[s^2]^2 (the weights are
    chi-square at t = 0 and multiplied by independent s^2 each step). The r_t are martingale differences, so
    the mean over kept steps and networks has variance sum_t Var(r_t) / (S n)^2. After the settling steps
    delta h is slaved to delta c, so the whole-state Benettin rate ``chi`` equals the c-part one. The geometric mean is lower by
    about Var(r)/(2 E[s^2]) (Jensen), added to its tolerance. At m = 1 rho ≈ 1.20 (1.53 at m = 0) and the
    weights concentrate on few units within ~log(N)/log(rho) steps, hence the short window there: over long
    windows the geometric (Benettin) rate falls towards the quenched exp E[log s^2] (see measure_gated_chi)."""
    r = measure_gated_chi("lstm", N=N, T=T, burn_in=5, settle=settle, n_networks=n, sigma_w=1e-4, sigma_v=1.0,
                          mu_b_f=m)
    E2 = gauss(lambda e: sig(e) ** 2, m, 1.0)
    E4 = gauss(lambda e: sig(e) ** 4, m, 1.0)
    rho, S = E4 / E2 ** 2, T - settle
    var_r = np.array([(E4 - E2 ** 2) * 3 * rho ** t / N for t in range(settle + 1, T + 1)])
    for estimator in estimators:
        tol = 5 * math.sqrt(var_r.sum()) / (S * math.sqrt(n))
        if not estimator.endswith("arith"):
            tol += var_r.mean() / (2 * E2)
        assert abs(r[estimator] - E2) < tol, (estimator, r[estimator], E2, tol)
        assert tol < 0.025 * E2     # the test has teeth: a 2.5 % error would be caught


@pytest.mark.parametrize("tied", [False, True])
def test_gru_chi_frozen_update_gate(tied):
    """sigma_w_z = sigma_v_z = sigma_b = 0, mu_b_z = 3: z = s(3) for every unit and step, and
    delta h_t = z delta h_{t-1} + (1 - z) delta n with delta n = O(sigma_w), so r_t = s(3)^2 (1 + O(sigma_w/sqrt N))
    (the cross term <delta h, W delta h> is O(sigma_w |delta h|^2 / sqrt N)); sigma_w = 1e-4."""
    r = measure_gated_chi("gru", N=200, T=30, burn_in=10, settle=5, n_networks=2, tied=tied,
                          sigma_w=1e-4, sigma_w_z=0.0, sigma_v_z=0.0, mu_b_z=3.0, sigma_v=1.0)
    assert r["chi"] == pytest.approx(sig(3.0) ** 2, rel=1e-5)
    assert r["chi_h"] == pytest.approx(sig(3.0) ** 2, rel=1e-5)
    assert r["chi_arith"] == pytest.approx(sig(3.0) ** 2, rel=1e-5)
    # and a non-frozen gate grows differently: the check above can fail
    r2 = measure_gated_chi("gru", N=200, T=30, burn_in=10, settle=5, n_networks=2, tied=tied,
                           sigma_w=1e-4, sigma_v=1.0, mu_b_z=3.0)
    assert abs(r2["chi"] / sig(3.0) ** 2 - 1) > 1e-3


# --------------------------------------------------------------------------- tied / untied
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reproducible_and_tied_differs(cell):
    kw = dict(N=60, T=15, n_networks=2, h0_scale=0.5, sigma_w=1.5)
    a = simulate_gated(cell, tied=True, seed=3, **kw)
    b = simulate_gated(cell, tied=True, seed=3, **kw)
    u1 = simulate_gated(cell, tied=False, seed=3, **kw)
    u2 = simulate_gated(cell, tied=False, seed=3, **kw)
    other = simulate_gated(cell, tied=True, seed=4, **kw)
    assert isinstance(a, GatedSimulation) and a.Q_h.shape == (2, 16) and a.h_final.shape == (2, 60)
    np.testing.assert_array_equal(a.Q_h, b.Q_h)
    np.testing.assert_array_equal(u1.Q_h, u2.Q_h)
    np.testing.assert_array_equal(a.Q_h[:, 0], u1.Q_h[:, 0])        # same seed: same initial state
    assert not np.allclose(a.Q_h[:, 1:], u1.Q_h[:, 1:])
    assert not np.allclose(a.Q_h, other.Q_h)
    assert not np.allclose(a.Q_h[0], a.Q_h[1])                        # networks are independent


def test_untied_self_averaging():
    """Untied Q_h fluctuates by O(N^-1/2) across networks: the network-to-network spread (pooled over steps
    11..40, after the transient) shrinks by sqrt(1000/250) = 2 from N = 250 to N = 1000. Over eight other seeds
    the ratio scattered as 1.9 +- 0.2 (the pooled variances have ~3 x 30 correlated degrees of freedom);
    accept 1.35..2.9, about 3 standard deviations. No self-averaging (ratio 1) or a wrong power of N fails."""
    def spread(N):
        s = simulate_gated("gru", N=N, T=40, tied=False, n_networks=4, seed=11)
        return math.sqrt(s.Q_h[:, 11:].var(axis=0, ddof=1).mean())
    ratio = spread(250) / spread(1000)
    assert 1.35 < ratio < 2.9, ratio


def test_bad_arguments():
    with pytest.raises(ValueError):
        simulate_gated("rnn", N=10, T=2)
    with pytest.raises(ValueError):
        simulate_gated("lstm", N=10, T=2, sigma_w_r=1.0)    # a GRU gate letter
    with pytest.raises(ValueError):
        simulate_gated("gru", N=10, T=2, sigma_w=[1.0, 2.0])
    with pytest.raises(ValueError):
        measure_gated_chi("gru", N=10, T=5, settle=5)

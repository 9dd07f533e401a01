"""Sparse recurrent weights (mftrnn.nets.sparse) and their Jacobian spectra (mftrnn.experiments.sparse).

Tolerances.
* Density of a Bernoulli(p) mask on n = N^2 entries: the kept fraction has standard deviation sqrt(p(1-p)/n); we
  allow 5 of them (two-sided probability ~6e-7).
* Variance: the mean of n squared entries of variance sigma^2/N has relative standard deviation sqrt(Var(W^2))/
  (E W^2 sqrt(n)); for a Bernoulli-masked Gaussian Var(W^2)/(E W^2)^2 = 3/p - 1, for the masked Haar matrix about
  3/p - 1 as well (entries of O nearly Gaussian); 5 standard deviations allowed.
* Exact orthogonality: the blocks come from a float64 QR, orthogonal to ~1e-15 per entry; 1e-12 allowed.
* Spectra: Kolmogorov distance per network against the dense noise floor of mftrnn.experiments.sparse (mean + 3 sd of
  dense networks of the same N), with negative controls that must exceed it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mftrnn.errors import DomainError, MftrnnError
from mftrnn.experiments import sparse as ex
from mftrnn.nets import sparse as sp
from mftrnn.nets.nn import VanillaRNNCell
from mftrnn.nets.simulate import step_jacobian_matrix
from mftrnn.theory.spectrum import spectral_law


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("make", [sp.sparse_gaussian, sp.pruned_orthogonal])
@pytest.mark.parametrize("p", [0.05, 0.3, 1.0])
def test_masked_constructors_density_and_variance(make, p):
    N, sigma_w = 400, 1.3
    W = make(N, p, sigma_w, _gen(1))
    n = N * N
    frac = float((W != 0).double().mean())
    assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-15
    var = float((W * W).mean())
    rel_sd = math.sqrt(3 / p - 1) / math.sqrt(n)
    assert var == pytest.approx(sigma_w ** 2 / N, rel=5 * rel_sd)


def test_pruned_orthogonal_is_not_orthogonal_but_dense_limit_is():
    N = 300
    O = sp.pruned_orthogonal(N, 1.0, 1.0, _gen(2))
    assert torch.allclose(O.T @ O, torch.eye(N, dtype=torch.float64), atol=1e-12)
    W = sp.pruned_orthogonal(N, 0.25, 1.0, _gen(2))
    s2 = torch.linalg.svdvals(W) ** 2
    # relative variance of the squared singular values: 2(1-p) - (1-p)^2 = 0.9375 at large N (module docstring)
    rv = float(s2.var(unbiased=False) / s2.mean() ** 2)
    assert rv == pytest.approx(2 * 0.75 - 0.75 ** 2, rel=0.1)  # finite-N fluctuation of a spectral statistic


@pytest.mark.parametrize("k", [1, 2, 8, 64])
def test_sparse_orthogonal_exact(k):
    N, sigma_w = 128, 1.7
    W = sp.sparse_orthogonal(N, k / N, sigma_w, _gen(k))
    assert torch.all(sp.row_nonzeros(W) == k) and torch.all(sp.row_nonzeros(W.T) == k)
    assert float((W.T @ W - sigma_w ** 2 * torch.eye(N, dtype=torch.float64)).abs().max()) < 1e-12
    assert float((W @ W.T - sigma_w ** 2 * torch.eye(N, dtype=torch.float64)).abs().max()) < 1e-12
    assert torch.equal(W, sp.sparse_orthogonal(N, None, sigma_w, _gen(k), k=k))


def test_magnitude_prune():
    W = torch.randn(50, 40, generator=_gen(3), dtype=torch.float64)
    P = sp.magnitude_prune(W, 0.13)
    n_keep = math.ceil(0.13 * W.numel())
    assert int((P != 0).sum()) == n_keep
    kept = P != 0
    assert float(W[kept].abs().min()) >= float(W[~kept].abs().max())  # the largest magnitudes are kept
    assert float((P * P).sum()) == pytest.approx(float((W * W).sum()), rel=1e-12)  # variance kept
    ratio = P[kept] / W[kept]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # one common rescaling factor
    plain = sp.magnitude_prune(W, 0.13, rescale=False)
    assert torch.equal(plain[kept], W[kept]) and torch.equal(plain == 0, ~kept)
    assert torch.equal(sp.magnitude_prune(W, 1.0), W)


@pytest.mark.parametrize("call, msg", [
    (lambda: sp.sparse_gaussian(100, 0.0), "p must be in (0, 1]"),
    (lambda: sp.sparse_gaussian(100, 1.5), "p must be in (0, 1]"),
    (lambda: sp.pruned_orthogonal(100, float("nan")), "p must be in (0, 1]"),
    (lambda: sp.sparse_gaussian(100, 0.005), "pN = 0.5 < 1"),
    (lambda: sp.sparse_orthogonal(100, 0.03), "must divide N"),
    (lambda: sp.sparse_orthogonal(100, 0.125), "must be an integer"),
    (lambda: sp.sparse_orthogonal(100), "exactly one of p"),
    (lambda: sp.sparse_gaussian(0, 0.5), "N must be an integer"),
    (lambda: sp.sparse_gaussian(10, 0.5, -1.0), "sigma_w must be finite"),
    (lambda: sp.magnitude_prune(torch.ones(3), 0.5), "2-d"),
    (lambda: sp.critical_sparse_init_(torch.nn.RNN(3, 12), 5 / 12, q_star=0.25), "must be an integer dividing N"),
    (lambda: ex.pruned_orthogonal_law(0.0, 5, sigma_w=1.0), "p must be in (0, 1]"),
])
def test_bad_input_one_line(call, msg):
    with pytest.raises(DomainError) as info:
        call()
    assert msg in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, MftrnnError)


def test_analytic_product_equals_module_jacobians():
    # J = D_T W ... D_1 W of tied_vanilla_jacobian against the product of step_jacobian_matrix of VanillaRNNCell
    N, T = 40, 6
    hp = ex.critical_hyperparameters(0.25)
    cell = VanillaRNNCell(N, N)
    with torch.no_grad():
        cell.weight_hh.copy_(sp.sparse_orthogonal(N, 0.1, hp["sigma_w"], _gen(4)))
        cell.weight_ih.copy_(torch.randn(N, N, generator=_gen(5), dtype=torch.float64) * hp["sigma_v"] / math.sqrt(N))
        cell.bias.zero_()
    sq, _ = ex.tied_vanilla_jacobian(cell.weight_hh.detach(), cell.weight_ih.detach(), cell.bias.detach(), (T,),
                                     R=1.0, burn_in=5, generator=_gen(6))
    g = _gen(6)  # replay the same random stream: h0, then the inputs
    h = torch.randn(1, N, generator=g, dtype=torch.float64)[0]
    xs = [torch.randn(1, N, 1, generator=g, dtype=torch.float64)[0, :, 0] for _ in range(5 + T)]
    with torch.no_grad():
        for x in xs[:5]:
            h = cell(x, h)
        P = torch.eye(N, dtype=torch.float64)
        for x in xs[5:]:
            P = step_jacobian_matrix(cell, x, h) @ P
            h = cell(x, h)
    ref = (torch.linalg.svdvals(P) ** 2).numpy()
    assert np.allclose(sq[T][0], ref, rtol=1e-10, atol=1e-14 * ref.max())


@pytest.fixture(scope="module")
def floor():
    """Dense noise floor at N = 256 for T = 1, 5 (6 networks per ensemble)."""
    hp = ex.critical_hyperparameters(0.25)
    return hp, ex.dense_baseline(256, (1, 5), hp, n_baseline=6, seed=0)


def _ks(make, k, T, orthogonal, hp, seed, law=None, B=2):
    gen = _gen(seed)
    W = torch.stack([make(256, k / 256, hp["sigma_w"], gen) for _ in range(B)])
    V = torch.randn(B, 256, 256, generator=gen, dtype=torch.float64) * hp["sigma_v"] / 16.0
    b = torch.zeros(B, 256, dtype=torch.float64)
    sq, _ = ex.tied_vanilla_jacobian(W, V, b, (T,), R=hp["R"], generator=gen)
    law = law or spectral_law("vanilla", T, orthogonal=orthogonal, **hp)
    return float(ex.network_ks(law, sq[T]).mean())


def test_dense_limit_at_noise_floor(floor):
    # p = 1: every construction is a dense Gaussian or Haar matrix and must sit at the floor of its ensemble;
    # the floor itself must be below the DKW bound (eigenvalues are at least as regular as i.i.d. samples)
    hp, base = floor
    for (orthogonal, T), b in base.items():
        assert b["threshold"] < b["dkw"]
    for name, (make, orthogonal) in ex.CONSTRUCTIONS.items():
        assert _ks(make, 256, 5, orthogonal, hp, seed=11) < base[(orthogonal, 5)]["threshold"]


def test_sparse_orthogonal_matches_orthogonal_law_where_pruned_does_not(floor):
    hp, base = floor
    thr = base[(True, 5)]["threshold"]
    assert _ks(sp.sparse_orthogonal, 32, 5, True, hp, seed=12) < thr       # 32 non-zeros per row: at the floor
    assert _ks(sp.pruned_orthogonal, 32, 5, True, hp, seed=12) > 3 * thr   # the same density, pruned Haar: far off
    assert _ks(sp.sparse_orthogonal, 1, 5, True, hp, seed=12) > 3 * thr    # k = 1 (signed permutation): far off
    # sparse Gaussian at pN = 1: about a third of the rows are empty; far from Marchenko-Pastur
    assert _ks(sp.sparse_gaussian, 1, 1, False, hp, seed=13) > 3 * base[(False, 1)]["threshold"]


def test_pruned_orthogonal_law_fits_pruned_haar_at_moderate_sparsity(floor):
    hp, base = floor
    p = 0.25
    law = ex.pruned_orthogonal_law(p, 1, **hp)
    assert law.mean == pytest.approx(spectral_law("vanilla", 1, orthogonal=True, **hp).mean, rel=1e-3)
    d = _ks(sp.pruned_orthogonal, 64, 1, True, hp, seed=14, law=law)
    assert d < base[(True, 1)]["threshold"]
    assert _ks(sp.pruned_orthogonal, 64, 1, True, hp, seed=14) > 3 * base[(True, 1)]["threshold"]


def test_critical_sparse_init():
    rnn = torch.nn.RNN(8, 64, num_layers=2)
    out = sp.critical_sparse_init_(rnn, 0.125, q_star=0.25, T=5, generator=_gen(7))
    assert out["k"] == 8 and out["chi"] == pytest.approx(1.0, abs=1e-9)
    assert out["spectrum"]["mean"] == pytest.approx(1.0, abs=1e-8)
    for l in range(2):
        W = getattr(rnn, f"weight_hh_l{l}").detach().double()
        assert torch.all(sp.row_nonzeros(W) == 8)
        s = out["layers"][l]["sigma_w"]
        # float32 parameters: orthogonal to float32 round-off
        assert float((W.T @ W - s ** 2 * torch.eye(64, dtype=torch.float64)).abs().max()) < 1e-5

"""The fast multi-step minimalRNN layer (mftrnn.nets.layers) against a plain reference loop.

The reference runs `mftrnn.nets.nn.MinimalRNNCell` one step at a time (its own copy
of the weights as leaf tensors), with the embedding z_t = Phi x_t + phi_b and
dropout between layers written out by hand.  Outputs and first derivatives
(w.r.t. the input, h0 and every parameter, by torch.autograd on both sides)
must agree to 1e-5 in float32 and 1e-10 in float64.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch.nn import functional as F

import mftrnn.nets.layers as layers
from mftrnn.nets.layers import MinimalRNN, MinimalRecurrence, init_minimal_rnn_, minimal_scan
from mftrnn.nets.nn import MinimalRNNCell

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _reference(rnn: MinimalRNN, x: torch.Tensor, h0: torch.Tensor | None, seed=None):
    """Step-by-step MinimalRNNCell loop with copies of rnn's weights; returns (output, h_n, leaves).

    ``leaves`` maps rnn's parameter names to the reference's leaf tensors.  The
    global RNG is reseeded with ``seed`` (if given) after the cells are built
    (their constructor draws random numbers), just before the dropout masks.
    """
    dtype = rnn.weight_hh_l0.dtype
    xs = x.transpose(0, 1) if rnn.batch_first else x           # (T, B, N_in)
    T, B = xs.shape[:2]
    N = rnn.hidden_size
    leaves, finals = {}, []
    cells = [MinimalRNNCell(N, dtype=dtype) for _ in range(rnn.num_layers)]
    if seed is not None:
        torch.manual_seed(seed)
    for l, cell in enumerate(cells):
        with torch.no_grad():
            cell.weight_hh.copy_(getattr(rnn, f"weight_hh_l{l}"))
            cell.weight_ih.copy_(getattr(rnn, f"weight_ih_l{l}"))
            cell.bias.copy_(getattr(rnn, f"bias_l{l}"))
        leaves.update({f"weight_hh_l{l}": cell.weight_hh, f"weight_ih_l{l}": cell.weight_ih,
                       f"bias_l{l}": cell.bias})
        if rnn.embed:
            Phi = getattr(rnn, f"embed_weight_l{l}").detach().clone().requires_grad_()
            phi_b = getattr(rnn, f"embed_bias_l{l}").detach().clone().requires_grad_()
            leaves.update({f"embed_weight_l{l}": Phi, f"embed_bias_l{l}": phi_b})
        if l > 0 and rnn.training and rnn.dropout > 0:
            xs = F.dropout(xs, rnn.dropout, training=True)
        h = torch.zeros(B, N, dtype=dtype) if h0 is None else h0[l]
        states = []
        for t in range(T):
            z = xs[t] @ Phi.T + phi_b if rnn.embed else xs[t]
            h = cell(z, h)
            states.append(h)
        xs = torch.stack(states)
        finals.append(h)
    out = xs.transpose(0, 1) if rnn.batch_first else xs
    return out, torch.stack(finals), leaves


def _compare(rnn, x, h0, seed=None):
    """Run rnn and the reference on the same data; assert equal outputs and gradients."""
    tol = TOL[x.dtype]
    close = dict(rtol=tol, atol=tol)
    x1 = x.clone().requires_grad_()
    h1 = None if h0 is None else h0.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    h2 = None if h0 is None else h0.clone().requires_grad_()
    if seed is not None:
        torch.manual_seed(seed)
    out, h_n = rnn(x1, h1)
    ref_out, ref_hn, leaves = _reference(rnn, x2, h2, seed)
    torch.testing.assert_close(out, ref_out, **close)
    torch.testing.assert_close(h_n, ref_hn, **close)

    g = torch.Generator().manual_seed(1)
    g_out = torch.randn(out.shape, generator=g, dtype=x.dtype)
    g_hn = torch.randn(h_n.shape, generator=g, dtype=x.dtype)
    names = [n for n, _ in rnn.named_parameters()]
    assert set(names) == set(leaves)
    mine = [x1] + ([h1] if h0 is not None else []) + [p for _, p in rnn.named_parameters()]
    theirs = [x2] + ([h2] if h0 is not None else []) + [leaves[n] for n in names]
    d1 = torch.autograd.grad((out * g_out).sum() + (h_n * g_hn).sum(), mine)
    d2 = torch.autograd.grad((ref_out * g_out).sum() + (ref_hn * g_hn).sum(), theirs)
    for a, b in zip(d1, d2):
        torch.testing.assert_close(a, b, **close)


def _make(n_in, N, dtype=torch.float64, seed=0, **kw):
    rnn = MinimalRNN(n_in, N, dtype=dtype, **kw)
    init_minimal_rnn_(rnn, sigma_w=1.3, sigma_v=0.9, sigma_b=0.4, mu_b=0.2, sigma_phi=1.1,
                      sigma_phib=0.3, generator=torch.Generator().manual_seed(seed))
    return rnn


def _data(rnn, T, B, with_h0, seed=2):
    g = torch.Generator().manual_seed(seed)
    dtype = rnn.weight_hh_l0.dtype
    shape = (B, T, rnn.input_size) if rnn.batch_first else (T, B, rnn.input_size)
    x = torch.randn(shape, generator=g, dtype=dtype)
    h0 = torch.randn(rnn.num_layers, B, rnn.hidden_size, generator=g, dtype=dtype) if with_h0 else None
    return x, h0


# ----------------------------------------------------------------------------- equivalence
CASES = list(itertools.product([1, 6, 19], [1, 4], [1, 3], [False, True], [False, True]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,B,num_layers,batch_first,with_h0", CASES)
def test_matches_reference_loop(dtype, T, B, num_layers, batch_first, with_h0):
    rnn = _make(5, 7, dtype=dtype, num_layers=num_layers, batch_first=batch_first)
    _compare(rnn, *_data(rnn, T, B, with_h0))


@pytest.mark.parametrize("backend", ["function", "autograd"])
@pytest.mark.parametrize("embed", [True, False])
def test_backends_and_identity_embedding(backend, embed):
    for dtype in (torch.float32, torch.float64):
        rnn = _make(6, 6, dtype=dtype, num_layers=2, embed=embed, backend=backend)
        assert hasattr(rnn, "embed_weight_l0") == embed
        _compare(rnn, *_data(rnn, 9, 3, True))


def test_unbatched_input():
    rnn = _make(4, 5, num_layers=2)
    x, h0 = _data(rnn, 8, 1, True)
    out, h_n = rnn(x[:, 0], h0[:, 0])
    ref_out, ref_hn = rnn(x, h0)
    assert out.shape == (8, 5) and h_n.shape == (2, 5)
    torch.testing.assert_close(out, ref_out[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(h_n, ref_hn[:, 0], rtol=0, atol=0)


def test_no_grad_path_equals_autograd_path():
    rnn = _make(4, 5, num_layers=2)
    x, h0 = _data(rnn, 10, 3, True)
    out, h_n = rnn(x, h0)
    with torch.no_grad():
        out0, hn0 = rnn(x, h0)
    torch.testing.assert_close(out0, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(hn0, h_n.detach(), rtol=0, atol=0)


def test_hand_written_backward_gradcheck():
    g = torch.Generator().manual_seed(3)
    T, B, N = 5, 2, 4
    args = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_()
            for s in ((T, B, N), (T, B, N), (B, N), (N, N))]
    assert torch.autograd.gradcheck(MinimalRecurrence.apply, args)


def test_only_some_inputs_require_grad():
    g = torch.Generator().manual_seed(4)
    a, z, h0, W = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((6, 2, 3), (6, 2, 3),
                                                                              (2, 3), (3, 3)))
    W.requires_grad_()
    (dW,) = torch.autograd.grad(minimal_scan(a, z, h0, W).sum(), W)
    W2 = W.detach().clone().requires_grad_()
    (dW2,) = torch.autograd.grad(minimal_scan(a, z, h0, W2, backend="autograd").sum(), W2)
    torch.testing.assert_close(dW, dW2, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- dropout
def test_dropout_only_between_layers_in_training():
    rnn = _make(4, 6, num_layers=3, dropout=0.4)
    plain = _make(4, 6, num_layers=3, dropout=0.0)
    x, h0 = _data(rnn, 7, 3, True)
    rnn.eval()
    torch.testing.assert_close(rnn(x, h0)[0], plain(x, h0)[0], rtol=0, atol=0)
    rnn.train()
    assert not torch.allclose(rnn(x, h0)[0], plain(x, h0)[0])
    _compare(rnn, x, h0, seed=11)                    # same masks in the reference
    one = _make(4, 6, num_layers=1, dropout=0.4).train()
    ref = _make(4, 6, num_layers=1).train()
    torch.testing.assert_close(one(x, h0[:1])[0], ref(x, h0[:1])[0], rtol=0, atol=0)


# ----------------------------------------------------------------------------- initialisation
def test_init_statistics_and_hyperparameters():
    N, n_in = 300, 200
    rnn = MinimalRNN(n_in, N, num_layers=2, dtype=torch.float64)
    hp = init_minimal_rnn_(rnn, sigma_w=1.5, sigma_v=0.7, sigma_b=0.3, mu_b=-0.5, sigma_phi=1.2,
                           sigma_phib=0.4, generator=torch.Generator().manual_seed(0))
    assert hp == dict(sigma_w=1.5, sigma_v=0.7, sigma_b=0.3, mu_b=-0.5, orthogonal=False,
                      sigma_phi=1.2, sigma_phib=0.4)
    assert rnn.hyperparameters == hp
    for l in range(2):
        p = {k: v.detach() for k, v in rnn.layer_parameters(l).items()}
        width = n_in if l == 0 else N
        assert p["Phi"].shape == (N, width)
        # relative std of a mean of N*width squared Gaussians: sqrt(2/(N*width)) <= 0.6%
        assert abs((p["W"] ** 2).mean().item() * N / 1.5 ** 2 - 1) < 0.03
        assert abs((p["V"] ** 2).mean().item() * N / 0.7 ** 2 - 1) < 0.03
        assert abs((p["Phi"] ** 2).mean().item() * width / 1.2 ** 2 - 1) < 0.03
        assert abs(p["b"].mean().item() + 0.5) < 5 * 0.3 / math.sqrt(N)
        assert abs(p["b"].std().item() / 0.3 - 1) < 0.15
        assert abs(p["phi_b"].std().item() / 0.4 - 1) < 0.15
    # |z|^2 / N -> R = sigma_phi^2 R_x + sigma_phib^2 (here R_x = 1)
    x = torch.randn(50, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = rnn.layer_parameters(0)
    R = ((x @ p["Phi"].detach().T + p["phi_b"].detach()) ** 2).mean().item()
    assert abs(R / (1.2 ** 2 + 0.4 ** 2) - 1) < 0.1


def test_orthogonal_init_and_defaults():
    rnn = MinimalRNN(5, 8)
    assert rnn.hyperparameters["sigma_w"] == 1.0 and rnn.hyperparameters["sigma_b"] == 0.0
    assert rnn.weight_hh_l0.dtype == torch.float32
    hp = rnn.init_(sigma_w=0.8, orthogonal=True, generator=torch.Generator().manual_seed(0))
    assert hp["orthogonal"] is True
    W = rnn.weight_hh_l0.detach().double()
    torch.testing.assert_close(W @ W.T, 0.64 * torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-5)


def test_init_rejects_bad_hyperparameters():
    rnn = MinimalRNN(3, 4)
    for kw in (dict(sigma_w=-1.0), dict(mu_b=math.nan), dict(sigma_phi=-0.1), dict(sigma_phib=math.inf)):
        with pytest.raises(ValueError):
            init_minimal_rnn_(rnn, **kw)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kw", [dict(input_size=0, hidden_size=3), dict(input_size=3, hidden_size=2.5),
                                dict(input_size=3, hidden_size=3, num_layers=0),
                                dict(input_size=3, hidden_size=3, dropout=1.5),
                                dict(input_size=3, hidden_size=4, embed=False),
                                dict(input_size=3, hidden_size=3, backend="cuda-graphs")])
def test_bad_constructor_arguments(kw):
    with pytest.raises(ValueError):
        MinimalRNN(**kw)


def test_bad_forward_arguments():
    rnn = MinimalRNN(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    bad = [(torch.randn(5, 2, 4), None), (torch.randn(5, 2, 3, 1), None), (torch.randn(0, 2, 3), None),
           (x.double(), None), (x, torch.zeros(1, 2, 4)), (x, torch.zeros(2, 3, 4)),
           (x, torch.zeros(2, 2, 4, dtype=torch.float64)), (x[:, 0], torch.zeros(2, 2, 4))]
    for xx, h0 in bad:
        with pytest.raises(ValueError):
            rnn(xx, h0)
    with pytest.raises(ValueError):
        rnn.layer_parameters(2)
    with pytest.raises(ValueError):
        minimal_scan(torch.zeros(3, 2, 4), torch.zeros(3, 2, 5), torch.zeros(2, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError):
        minimal_scan(torch.zeros(3, 2, 4), torch.zeros(3, 2, 4), torch.zeros(2, 4), torch.zeros(4, 4),
                     backend="nope")


# ----------------------------------------------------------------------------- torch.compile fallback
def test_compile_backend_falls_back_gracefully(monkeypatch):
    """Compilation is never attempted in the tests: a failing torch.compile must give the same result."""
    def broken_compile(fn, **kw):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(layers, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    rnn = _make(4, 5, num_layers=2, backend="compile")
    ref = _make(4, 5, num_layers=2)
    x, h0 = _data(rnn, 6, 2, True)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable"):
        out = rnn(x, h0)[0]
    torch.testing.assert_close(out, ref(x, h0)[0], rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # the fallback is remembered: no second warning
        rnn(x, h0)[0].sum().backward()

    def raising_compile(fn, **kw):
        raise RuntimeError("dynamo unsupported")

    monkeypatch.setattr(layers, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", raising_compile)
    with pytest.warns(RuntimeWarning):
        torch.testing.assert_close(rnn(x, h0)[0], out, rtol=0, atol=0)


# ----------------------------------------------------------------------------- benchmark module
def test_bench_layers_smoke(capsys):
    import json

    from mftrnn.experiments import bench_layers

    res = bench_layers.run_benchmark(hidden=8, seq=3, batch=2, repeat=2, warmup=1)
    assert set(res["tokens_per_s"]) == {"MinimalRNN", "LSTM", "GRU"}
    assert res["ratio_vs_lstm"] == pytest.approx(res["tokens_per_s"]["MinimalRNN"]
                                                 / res["tokens_per_s"]["LSTM"])
    assert bench_layers.main(["--hidden", "8", "--seq", "3", "--batch", "2", "--repeat", "1",
                              "--warmup", "1", "--layers", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["layers"] == 2
    assert bench_layers.main(["--hidden", "0"]) == 2
    if not torch.cuda.is_available():
        assert bench_layers.main(["--hidden", "8", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err

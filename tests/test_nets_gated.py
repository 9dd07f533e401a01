"""PyTorch modules derived from gated-cell descriptions (mftrnn.nets.gated).

Equality with torch: the derived LSTM / GRU against the native nn.LSTM, nn.GRU (2 layers) and nn.LSTMCell,
nn.GRUCell over 20 steps in float64, weights moved by copy_from_torch, with non-zero bias_ih and bias_hh (except the
GRU's bias_hh_n, zero by the derived GRU's convention); outputs and final states to 1e-12, gradients of a scalar
loss w.r.t. the input sequence and every weight block to 1e-10.

Statistics of init_gated_: for n i.i.d. zero-mean Gaussian entries of variance s^2 the mean of x^2 has standard
error s^2 sqrt(2/n) and the sample mean s/sqrt(n); a bias of n entries has sample-variance standard error
sigma_b^2 sqrt(2/(n-1)). Tolerances are 5 standard errors. torch's default init (uniform, variance 1/(3N), non-zero
bias_hh) differs from the drawn statistics by far more, so an uninitialised layer fails.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mftrnn as mf
from mftrnn.cells.gated import GRU, GRU_RESET_BEFORE, LSTM, LSTM_PEEPHOLE
from mftrnn.nets.gated import (DerivedCell, DerivedRNN, copy_from_torch, copy_to_torch, implementations,
                               init_gated_)

torch.set_num_threads(1)
F64 = torch.float64
I, H, B, T = 4, 6, 3, 20


# --------------------------------------------------------------------------- helpers
def run_torch(m, x, state):
    """Run a torch module over ``x``; ``state`` and the returned final state in the derived order ((c, h) / (h,))."""
    if isinstance(m, nn.RNNCellBase):
        outs = []
        for x_t in x:
            state = tuple(reversed(m(x_t, (state[1], state[0])))) if isinstance(m, nn.LSTMCell) else (m(x_t, state[0]),)
            outs.append(state[-1])
        return torch.stack(outs), state
    if isinstance(m, nn.LSTM):
        out, (h, c) = m(x, (state[1], state[0]))
        return out, (c, h)
    out, h = m(x, state[0])
    return out, (h,)


def run_derived(m, x, state):
    if isinstance(m, DerivedRNN):
        return m(x, state)
    outs = []
    for x_t in x:
        state = m(x_t, state)
        outs.append(state[-1])
    return torch.stack(outs), state


def torch_layers(m):
    """Parameter-name suffixes of a torch module's layers (and directions)."""
    if isinstance(m, nn.RNNCellBase):
        return [""]
    dirs = ["", "_reverse"] if m.bidirectional else [""]
    return [f"_l{l}{d}" for l in range(m.num_layers) for d in dirs]


def torch_block(m, suffix, gates, K, name, grad=False):
    """Rows of gate ``K`` in torch's stacked parameter ``name`` (weight_ih, weight_hh, bias_ih, bias_hh) or its grad."""
    p = getattr(m, name + suffix)
    return (p.grad if grad else p).chunk(len(gates))[gates.index(K)]


def assert_close(a, b, atol):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


TORCH_CASES = [(LSTM, lambda: nn.LSTM(I, H, num_layers=2, dtype=F64), 2),
               (GRU, lambda: nn.GRU(I, H, num_layers=2, dtype=F64), 2),
               (LSTM, lambda: nn.LSTMCell(I, H, dtype=F64), None),
               (GRU, lambda: nn.GRUCell(I, H, dtype=F64), None)]
TORCH_IDS = ["LSTM", "GRU", "LSTMCell", "GRUCell"]


def random_torch(factory, cell):
    """A torch module with its default random weights and random biases (bias_hh_n = 0 for the GRU)."""
    m = factory()
    with torch.no_grad():
        for s in torch_layers(m):
            for name in ("bias_ih", "bias_hh"):
                getattr(m, name + s).normal_(0.0, 0.5)
            if cell is GRU:
                torch_block(m, s, "rzn", "n", "bias_hh").zero_()
    return m


def derived_for(cell, layers):
    return DerivedCell(cell, I, H, F64) if layers is None else DerivedRNN(cell, I, H, layers, F64)


def derived_layers(d):
    return list(d.layers) if isinstance(d, DerivedRNN) else [d]


# --------------------------------------------------------------------------- equality with torch
@pytest.mark.parametrize("cell, factory, layers", TORCH_CASES, ids=TORCH_IDS)
def test_derived_equals_torch_outputs_and_gradients(cell, factory, layers):
    torch.manual_seed(0)
    tm = random_torch(factory, cell)
    dm = copy_from_torch(tm, derived_for(cell, layers))
    shape = (B, H) if layers is None else (layers, B, H)
    x0 = torch.randn(T, B, I, dtype=F64)
    s0 = tuple(torch.randn(shape, dtype=F64) for _ in cell.states)
    w_out = torch.randn(T, B, H, dtype=F64)
    w_state = [torch.randn(shape, dtype=F64) for _ in cell.states]

    results = []
    for m, run in ((tm, run_torch), (dm, run_derived)):
        x = x0.clone().requires_grad_()
        out, state = run(m, x, s0)
        loss = (out * w_out).sum() + sum((s * w).sum() for s, w in zip(state, w_state))
        loss.backward()
        results.append((out, state, x.grad))
    (out_t, state_t, gx_t), (out_d, state_d, gx_d) = results
    assert_close(out_d, out_t, 1e-12)
    for a, b in zip(state_d, state_t):
        assert_close(a, b, 1e-12)
    assert_close(gx_d, gx_t, 1e-10)

    for s, layer in zip(torch_layers(tm), derived_layers(dm)):
        for K in cell.gates:
            def grad(name):
                return torch_block(tm, s, cell.gates, K, name, grad=True)

            assert_close(getattr(layer, f"weight_ih_{K}").grad, grad("weight_ih"), 1e-10)
            assert_close(getattr(layer, f"weight_hh_{K}").grad, grad("weight_hh"), 1e-10)
            assert_close(getattr(layer, f"bias_{K}").grad, grad("bias_ih"), 1e-10)
            if K != "n":   # torch's bias_hh_n is multiplied by r; the others enter as bias_ih does
                assert_close(getattr(layer, f"bias_{K}").grad, grad("bias_hh"), 1e-10)


@pytest.mark.parametrize("cell, factory, layers", TORCH_CASES, ids=TORCH_IDS)
def test_copy_to_torch_round_trip(cell, factory, layers):
    gen = torch.Generator().manual_seed(1)
    dm = derived_for(cell, layers)
    init_gated_(dm, sigma_w=1.3, sigma_b=0.4, mu_b=0.2, generator=gen)
    tm = copy_to_torch(dm, random_torch(factory, cell))
    for s in torch_layers(tm):
        assert torch.all(getattr(tm, "bias_hh" + s) == 0)
    x = torch.randn(T, B, I, dtype=F64, generator=gen)
    s0 = tuple(torch.randn((B, H) if layers is None else (layers, B, H), dtype=F64, generator=gen)
               for _ in cell.states)
    with torch.no_grad():
        assert_close(run_derived(dm, x, s0)[0], run_torch(tm, x, s0)[0], 1e-12)
    back = copy_from_torch(tm, derived_for(cell, layers))
    for (name, p), (name_b, q) in zip(dm.named_parameters(), back.named_parameters()):
        assert name == name_b and torch.equal(p, q)


def test_gru_refuses_non_zero_bias_hh_n():
    tm = nn.GRU(I, H, dtype=F64)
    with torch.no_grad():
        torch_block(tm, "_l0", "rzn", "n", "bias_hh").fill_(0.1)
    with pytest.raises(mf.DomainError, match="bias_hh of gate n"):
        copy_from_torch(tm, DerivedCell(GRU, I, H, F64))


def test_registry_and_mismatches():
    assert {i.torch_class for i in implementations("lstm")} == {nn.LSTM, nn.LSTMCell}
    assert {i.torch_class for i in implementations("gru")} == {nn.GRU, nn.GRUCell}
    assert implementations("lstm-peephole") == []
    with pytest.raises(mf.DomainError, match="not a registered implementation"):
        copy_to_torch(DerivedCell(LSTM_PEEPHOLE, I, H, F64), nn.LSTM(I, H, dtype=F64))
    with pytest.raises(mf.DomainError, match="not a registered implementation"):
        copy_to_torch(DerivedCell(LSTM, I, H, F64), nn.GRU(I, H, dtype=F64))
    with pytest.raises(mf.DomainError, match="cannot be paired"):
        copy_from_torch(nn.LSTM(I, H, num_layers=2, dtype=F64), DerivedCell(LSTM, I, H, F64))
    with pytest.raises(mf.DomainError, match="gate i"):
        copy_to_torch(DerivedCell(LSTM, I, H, F64), nn.LSTMCell(I + 1, H, dtype=F64))


# --------------------------------------------------------------------------- init_gated_ statistics
N, N_IN = 400, 30


def per_gate_values(gates):
    """Distinct hyperparameters per gate (shorthand sigma_v overridden for the first gate; one sigma_b = 0)."""
    values = {"sigma_v": 0.8, f"sigma_v_{gates[0]}": 1.3}
    expected = {}
    for k, K in enumerate(gates):
        values.update({f"sigma_w_{K}": 0.5 + 0.4 * k, f"sigma_b_{K}": 0.3 * k, f"mu_b_{K}": -1.0 + 0.7 * k})
        expected[K] = {"sigma_w": 0.5 + 0.4 * k, "sigma_v": 1.3 if k == 0 else 0.8, "sigma_b": 0.3 * k,
                       "mu_b": -1.0 + 0.7 * k}
    return values, expected


def blocks(m, gates):
    """[(expected N_in, {gate: (W, V, b, b_hh or None)})] per layer and direction, read by parameter name."""
    if isinstance(m, DerivedCell):
        return [(N_IN, {K: tuple(getattr(m, f"{n}_{K}") for n in ("weight_hh", "weight_ih", "bias")) + (None,)
                        for K in gates})]
    out = []
    for s in torch_layers(m):
        n_in = N_IN if s in ("", "_l0", "_l0_reverse") else N * (2 if m.bidirectional else 1)
        out.append((n_in, {K: tuple(torch_block(m, s, gates, K, n) for n in ("weight_hh", "weight_ih", "bias_ih",
                                                                               "bias_hh")) for K in gates}))
    return out


def assert_zero_mean_variance(x, var):
    n = x.numel()
    assert abs(x.mean().item()) < 5 * math.sqrt(var / n)
    assert abs((x ** 2).mean().item() - var) < 5 * var * math.sqrt(2 / n)


@pytest.mark.parametrize("cell, factory", [
    (LSTM, lambda: nn.LSTM(N_IN, N, num_layers=2, bidirectional=True, dtype=F64)),
    (GRU, lambda: nn.GRUCell(N_IN, N, dtype=F64)),
    (GRU_RESET_BEFORE, lambda: DerivedCell(GRU_RESET_BEFORE, N_IN, N, F64)),
], ids=["LSTM-2-layer-bidirectional", "GRUCell", "derived-GRU-reset-before"])
def test_init_statistics(cell, factory):
    m = factory()
    values, expected = per_gate_values(cell.gates)
    assert init_gated_(m, generator=torch.Generator().manual_seed(2), **values) == expected
    layers = blocks(m, cell.gates)
    assert len(layers) == (4 if isinstance(m, nn.LSTM) else 1)
    for n_in, per_gate in layers:
        for K, (W, V, b, b_hh) in per_gate.items():
            hp = expected[K]
            assert W.shape == (N, N) and V.shape == (N, n_in)
            assert_zero_mean_variance(W, hp["sigma_w"] ** 2 / N)
            assert_zero_mean_variance(V, hp["sigma_v"] ** 2 / n_in)
            assert abs(b.mean().item() - hp["mu_b"]) <= 5 * hp["sigma_b"] / math.sqrt(N)
            assert abs(b.var().item() - hp["sigma_b"] ** 2) <= 5 * hp["sigma_b"] ** 2 * math.sqrt(2 / (N - 1))
            assert b_hh is None or torch.all(b_hh == 0)


@pytest.mark.parametrize("factory, gates", [
    (lambda: nn.LSTM(5, 50, num_layers=2, dtype=F64), "ifgo"),
    (lambda: DerivedRNN(GRU, 5, 50, num_layers=2, dtype=F64), "rzn"),
], ids=["LSTM", "derived-GRU"])
def test_init_orthogonal(factory, gates):
    m = factory()
    sigma = {K: 0.6 + 0.3 * k for k, K in enumerate(gates)}
    init_gated_(m, orthogonal=True, generator=torch.Generator().manual_seed(3),
                **{f"sigma_w_{K}": s for K, s in sigma.items()})
    if isinstance(m, nn.LSTM):
        Ws = [(K, torch_block(m, s, gates, K, "weight_hh")) for s in torch_layers(m) for K in gates]
    else:
        Ws = [(K, getattr(layer, f"weight_hh_{K}")) for layer in m.layers for K in gates]
    assert len(Ws) == 2 * len(gates)
    for K, W in Ws:
        assert_close(W @ W.T, sigma[K] ** 2 * torch.eye(50, dtype=F64), 1e-10)


def test_init_reproducible_with_generator():
    a, b = (nn.GRU(3, 8, dtype=F64) for _ in range(2))
    for m in (a, b):
        init_gated_(m, sigma_b=0.3, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("values", [{"mu_b_q": 1.0}, {"sigma_w_r": 1.0}, {"sigma_w": -1.0}, {"sigma_b_f": -0.1},
                                    {"mu_b": float("nan")}, {"sigma_w": [1.0, 2.0]}])
def test_init_bad_hyperparameters(values):
    with pytest.raises(mf.DomainError):
        init_gated_(nn.LSTM(3, 8), **values)


@pytest.mark.parametrize("module, values", [
    (nn.RNN(3, 8), {}), (nn.LSTM(3, 8, proj_size=4), {}), (nn.LSTMCell(3, 8, bias=False), {"mu_b": 0.5})],
    ids=["RNN", "proj_size", "no-bias"])
def test_init_bad_module(module, values):
    with pytest.raises(mf.DomainError):
        init_gated_(module, **values)


# --------------------------------------------------------------------------- variants without a torch module
def test_lstm_peephole_step():
    torch.manual_seed(5)
    m = DerivedCell(LSTM_PEEPHOLE, I, H, F64)
    init_gated_(m, sigma_b=0.5, mu_b=0.2)
    x, c, h = (torch.randn(B, n, dtype=F64) for n in (I, H, H))
    e = {K: c @ getattr(m, f"weight_hh_{K}").T + x @ getattr(m, f"weight_ih_{K}").T + getattr(m, f"bias_{K}")
         for K in "ifgo"}
    c_t = torch.sigmoid(e["f"]) * c + torch.sigmoid(e["i"]) * torch.tanh(e["g"])
    h_t = torch.sigmoid(e["o"]) * torch.tanh(c_t)
    c_d, h_d = m(x, (c, h))
    assert_close(c_d, c_t, 1e-12)
    assert_close(h_d, h_t, 1e-12)


def test_gru_reset_before_step():
    torch.manual_seed(6)
    m = DerivedCell(GRU_RESET_BEFORE, I, H, F64)
    init_gated_(m, sigma_b=0.5, mu_b=0.2)
    x, h = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)

    def field(K, y):
        return y @ getattr(m, f"weight_hh_{K}").T + x @ getattr(m, f"weight_ih_{K}").T + getattr(m, f"bias_{K}")

    r, z = torch.sigmoid(field("r", h)), torch.sigmoid(field("z", h))
    n = torch.tanh(field("n", r * h))
    (h_d,) = m(x, (h,))
    assert_close(h_d, (1 - z) * n + z * h, 1e-12)

"""Registered fast implementations of the single-state cells against the module derived from the cell description.

Every implementation registered for ``vanilla`` (nn.RNN with 1 and 2 layers, nn.RNNCell, mftrnn.nets.nn.VanillaRNNCell)
and ``minimal`` (mftrnn.nets.nn.MinimalRNNCell, the fused mftrnn.nets.layers.MinimalRNN with 2 layers, with and without its
embedding, with its hand-written backward and with the plain autograd loop) is run against the derived module
(``Cell.as_gated`` -> DerivedCell / DerivedRNN) in float64 over T=15 steps, batch 3, weights moved by
copy_from_torch from random torch weights (both torch biases non-zero). Compared: outputs at every step and final
states to 1e-12; gradients of a random linear functional of outputs and final states w.r.t. the input sequence,
the initial state and every parameter (matched by name in this file, not through the library's mapping) to 1e-10.

What is compared for MinimalRNN with ``embed=True``: the cell's input is the embedded z. Every layer l of MinimalRNN
(l > 0 too) maps its input y (the data, or layer l-1's states) through its own embedding z = Phi_l y + phi_b_l
before the cell; the derived side applies the same embedding (leaf copies of Phi_l, phi_b_l, so their gradients
are compared too) and feeds z to derived layer l. With ``embed=False`` (z = x) the whole MinimalRNN is compared
with DerivedRNN directly.

The LSTM / GRU implementations are tested the same way in tests/test_nets_gated.py.
"""
from __future__ import annotations

import pytest
import sympy as sp
import torch
from torch import nn
from torch.nn import functional as F

import mftrnn as mf
from mftrnn.nets.layers import MinimalRNN
from mftrnn.nets.gated import (DerivedCell, DerivedRNN, copy_from_torch, copy_to_torch, derived_module,
                               implementations, init_gated_)
from mftrnn.nets.nn import MinimalRNNCell, VanillaRNNCell

torch.set_num_threads(1)
F64 = torch.float64
I, H, B, T = 4, 6, 3, 15
VANILLA, MINIMAL = mf.get_cell("vanilla"), mf.get_cell("minimal")


def assert_close(a, b, atol):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# --------------------------------------------------------------------------- the cases
def rnn_map(layers, bias_names=("bias_ih", "bias_hh")):
    """(derived parameter, torch parameter) pairs whose gradients agree, per layer of a stacked module."""
    out = []
    for l in range(layers):
        d = f"layers.{l}."
        out += [(d + "weight_hh_u", f"weight_hh_l{l}"), (d + "weight_ih_u", f"weight_ih_l{l}")]
        out += [(d + "bias_u", f"{b}_l{l}") for b in bias_names]
    return out


CELL_MAP = [("weight_hh_u", "weight_hh"), ("weight_ih_u", "weight_ih"), ("bias_u", "bias")]
RNNCELL_MAP = [("weight_hh_u", "weight_hh"), ("weight_ih_u", "weight_ih"), ("bias_u", "bias_ih"),
               ("bias_u", "bias_hh")]


class Case:
    """A torch implementation, its derived counterpart and how they are run and matched."""

    def __init__(self, id, cell, torch_factory, n_in, layers, pairs, embed=False):
        self.id, self.cell, self.torch_factory, self.n_in = id, cell, torch_factory, n_in
        self.layers, self.pairs, self.embed = layers, pairs, embed

    def derived(self):
        """DerivedCell for one-step modules (layers None), DerivedRNN otherwise; input z for an embedding."""
        n_in = H if self.embed else self.n_in
        return DerivedCell(self.cell, n_in, H, F64) if self.layers is None else DerivedRNN(self.cell, n_in, H,
                                                                                          self.layers, F64)

    def random_torch(self):
        torch.manual_seed(0)
        m = self.torch_factory()
        with torch.no_grad():
            for name, p in m.named_parameters():   # default inits leave some biases zero: make them all random
                if "bias" in name:
                    p.normal_(0.0, 0.5)
        return m

    def state_shape(self):
        return (B, H) if self.layers is None else (self.layers, B, H)


CASES = [
    Case("nn.RNN-1", VANILLA, lambda: nn.RNN(I, H, dtype=F64), I, 1, rnn_map(1)),
    Case("nn.RNN-2", VANILLA, lambda: nn.RNN(I, H, num_layers=2, dtype=F64), I, 2, rnn_map(2)),
    Case("nn.RNNCell", VANILLA, lambda: nn.RNNCell(I, H, dtype=F64), I, None, RNNCELL_MAP),
    Case("VanillaRNNCell", VANILLA, lambda: VanillaRNNCell(I, H, dtype=F64), I, None, CELL_MAP),
    Case("MinimalRNNCell", MINIMAL, lambda: MinimalRNNCell(H, dtype=F64), H, None, CELL_MAP),
    Case("MinimalRNN-2-no-embed", MINIMAL, lambda: MinimalRNN(H, H, num_layers=2, embed=False, dtype=F64), H, 2,
         rnn_map(2, ("bias",))),
    Case("MinimalRNN-2-embed", MINIMAL, lambda: MinimalRNN(I, H, num_layers=2, dtype=F64), I, 2,
         rnn_map(2, ("bias",)), embed=True),
    Case("MinimalRNN-2-embed-autograd", MINIMAL,
         lambda: MinimalRNN(I, H, num_layers=2, dtype=F64, backend="autograd"), I, 2, rnn_map(2, ("bias",)),
         embed=True),
]
IDS = [c.id for c in CASES]


def run_torch(m, x, h0):
    """(outputs (T, B, H), final state) of a torch module; one-step modules are looped over x."""
    if isinstance(m, (nn.RNN, MinimalRNN)):
        return m(x, h0)
    outs, h = [], h0
    for x_t in x:
        h = m(x_t, h)
        outs.append(h)
    return torch.stack(outs), h


def run_derived_layer(cell, x, h):
    outs = []
    for x_t in x:
        (h,) = cell(x_t, (h,))
        outs.append(h)
    return torch.stack(outs), h


def run_derived(d, x, h0, embedding=None):
    """The derived module over x; ``embedding``: [(Phi_l, phi_b_l)] applied to each layer's input first."""
    if isinstance(d, DerivedCell):
        return run_derived_layer(d, x, h0)
    if embedding is None:
        out, (h_n,) = d(x, (h0,))
        return out, h_n
    finals = []
    for l, layer in enumerate(d.layers):
        x, h = run_derived_layer(layer, F.linear(x, *embedding[l]), h0[l])
        finals.append(h)
    return x, torch.stack(finals)


def embedding_leaves(m):
    """Leaf copies of a MinimalRNN's embedding, and the (copy, torch name) pairs whose gradients must agree."""
    leaves, pairs = [], []
    for l in range(m.num_layers):
        p = m.layer_parameters(l)
        leaves.append((p["Phi"].detach().clone().requires_grad_(), p["phi_b"].detach().clone().requires_grad_()))
        pairs += [(leaves[-1][0], f"embed_weight_l{l}"), (leaves[-1][1], f"embed_bias_l{l}")]
    return leaves, pairs


# --------------------------------------------------------------------------- equality with the derived module
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_implementation_equals_derived(case):
    tm = case.random_torch()
    dm = copy_from_torch(tm, case.derived())
    embedding, embed_pairs = embedding_leaves(tm) if case.embed else (None, [])
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(T, B, case.n_in, dtype=F64, generator=gen)
    h00 = torch.randn(case.state_shape(), dtype=F64, generator=gen)
    w_out = torch.randn(T, B, H, dtype=F64, generator=gen)
    w_state = torch.randn(case.state_shape(), dtype=F64, generator=gen)

    results = []
    for run in (lambda x, h0: run_torch(tm, x, h0), lambda x, h0: run_derived(dm, x, h0, embedding)):
        x, h0 = x0.clone().requires_grad_(), h00.clone().requires_grad_()
        out, h_n = run(x, h0)
        ((out * w_out).sum() + (h_n * w_state).sum()).backward()
        results.append((out, h_n, x.grad, h0.grad))
    if isinstance(tm, MinimalRNN) and tm.backend == "function":   # the fused path with its own backward ran
        assert type(results[0][0].grad_fn).__name__ == "MinimalRecurrenceBackward"
    for a, b, atol in zip(results[1], results[0], (1e-12, 1e-12, 1e-10, 1e-10)):
        assert_close(a, b, atol)

    derived_params, torch_params = dict(dm.named_parameters()), dict(tm.named_parameters())
    pairs = [(derived_params[d], t) for d, t in case.pairs] + embed_pairs
    assert {t for _, t in pairs} == set(torch_params)          # every torch parameter is checked
    for d, t in pairs:
        assert_close(d.grad, torch_params[t].grad, 1e-10)


def test_every_registered_implementation_is_tested():
    tested = {(c.cell.name, type(c.torch_factory())) for c in CASES}
    registered = {(n, i.torch_class) for n in ("vanilla", "minimal") for i in implementations(n)}
    assert tested == registered


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_copy_to_torch_round_trip(case):
    """Derived weights (drawn by init_gated_, non-zero biases) -> torch: bias_hh zeroed, the embedding left as it
    is, the same outputs; and back by copy_from_torch to the same parameters."""
    gen = torch.Generator().manual_seed(2)
    dm = case.derived()
    init_gated_(dm, sigma_w=1.3, sigma_b=0.4, mu_b=0.2, generator=gen)
    tm = case.random_torch()
    embed_before = {n: p.clone() for n, p in tm.named_parameters() if n.startswith("embed")}
    copy_to_torch(dm, tm)
    for name, p in tm.named_parameters():
        if name.startswith("bias_hh"):
            assert torch.all(p == 0)
        if name.startswith("embed"):
            assert torch.equal(p, embed_before[name])
    x = torch.randn(T, B, case.n_in, dtype=F64, generator=gen)
    h0 = torch.randn(case.state_shape(), dtype=F64, generator=gen)
    with torch.no_grad():
        embedding = embedding_leaves(tm)[0] if case.embed else None
        for a, b in zip(run_derived(dm, x, h0, embedding), run_torch(tm, x, h0)):
            assert_close(a, b, 1e-12)
    back = copy_from_torch(tm, case.derived())
    for (name, p), (name_b, q) in zip(dm.named_parameters(), back.named_parameters()):
        assert name == name_b and torch.equal(p, q)


# --------------------------------------------------------------------------- the derived single-state cells
def test_as_gated_structure():
    for cell in (VANILLA, MINIMAL):
        g = cell.as_gated()
        assert isinstance(g, mf.GatedCell) and g.name == cell.name and g.gates == "u"
        assert g.states == (cell.state,) and g.input == cell.input
        assert g.fields == (mf.Field(cell.preactivations[0].symbol, "u", cell.state),)
        assert g.updates == ((g.output, cell.update),)
        assert g.output not in {cell.state, cell.input, cell.preactivations[0].symbol}
        assert mf.get_cell(cell.name) is cell                     # not registered


def test_as_gated_refuses_several_preactivations():
    h, x, a, b = sp.symbols("h x a b", real=True)
    two = mf.Cell("two", h, x, (mf.Preactivation(a), mf.Preactivation(b)), sp.tanh(a) * sp.tanh(b))
    with pytest.raises(mf.MftrnnError, match="one pre-activation"):
        two.as_gated()


@pytest.mark.parametrize("name, kw", [("vanilla", dict(sigma_w=1.5, sigma_v=0.5, sigma_b=0.2, mu_b=0.3)),
                                      ("minimal", dict(sigma_w=1.0, sigma_v=0.5, sigma_b=0.5, mu_b=-1.0, R=2.0))])
def test_as_gated_theory_is_the_cell_theory(name, kw):
    """The gated mean field of ``as_gated()`` (the description the derived module is built from) reproduces the
    single-state engine: Q* and chi to 1e-10 (measured ~1e-14)."""
    from mftrnn.theory.gated import gated_fixed_point
    a, b = gated_fixed_point(mf.get_cell(name).as_gated(), **kw), mf.fixed_point(name, **kw)
    assert a.Q_star == pytest.approx(b.Q_star, rel=1e-10)
    assert a.chi == pytest.approx(b.chi, rel=1e-10)


@pytest.mark.parametrize("cell", [VANILLA, MINIMAL], ids=["vanilla", "minimal"])
def test_derived_step_is_the_cell(cell):
    """One step of DerivedCell(cell.as_gated()) against the update written here by hand."""
    m = DerivedCell(cell.as_gated(), H, H, F64)
    init_gated_(m, sigma_w=1.2, sigma_b=0.5, mu_b=0.3, generator=torch.Generator().manual_seed(3))
    z, h = torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64)
    e = h @ m.weight_hh_u.T + z @ m.weight_ih_u.T + m.bias_u
    u = torch.sigmoid(e)
    expected = torch.tanh(e) if cell is VANILLA else u * h + (1 - u) * z
    (h_t,) = m(z, (h,))
    assert_close(h_t, expected, 1e-12)
    (h_c,) = _loaded(cell, m)(z, (h,))         # DerivedCell takes the single-state Cell directly too
    assert_close(h_c, h_t, 0)


def _loaded(cell, m):
    """A DerivedCell built from the single-state Cell itself, with m's weights."""
    c = DerivedCell(cell, H, H, F64)
    c.load_state_dict(m.state_dict())
    return c


# --------------------------------------------------------------------------- registry and derived_module
def test_implementations_registered_for_every_torch_counterpart():
    counterparts = {"vanilla", "minimal"} | {n for n in mf.cells("gated") if mf.get_cell(n).torch_module}
    assert counterparts == {"vanilla", "minimal", "lstm", "gru"}
    for name in mf.cells():
        assert bool(implementations(name)) == (name in counterparts), name


@pytest.mark.parametrize("name", list(mf.cells()))
@pytest.mark.parametrize("layers", [1, 2])
def test_derived_module_every_cell(name, layers):
    cell = mf.get_cell(name)
    n_in = H if name == "minimal" else I      # the minimalRNN adds its input to the state
    m = derived_module(name, n_in, H, num_layers=layers, dtype=F64)
    assert isinstance(m, DerivedRNN) and len(m.layers) == layers and m.cell.name == name
    x = torch.randn(1, B, n_in, dtype=F64)
    out, state = m(x)
    n_states = 1 if isinstance(cell, mf.Cell) else len(cell.states)
    assert out.shape == (1, B, H) and len(state) == n_states
    assert all(s.shape == (layers, B, H) for s in state)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], state[m.cell.new_states.index(m.cell.output)][-1])
    same = derived_module(cell, n_in, H, num_layers=layers, dtype=F64)       # a Cell / GatedCell object works too
    same.load_state_dict(m.state_dict())
    assert torch.equal(same(x)[0], out)


# --------------------------------------------------------------------------- refusals
def test_mismatches_refused():
    with pytest.raises(mf.DomainError, match="nonlinearity='relu'"):
        copy_from_torch(nn.RNN(I, H, nonlinearity="relu", dtype=F64), DerivedCell(VANILLA, I, H, F64))
    with pytest.raises(mf.DomainError, match="nonlinearity='relu'"):
        copy_to_torch(DerivedCell(VANILLA, I, H, F64), nn.RNNCell(I, H, nonlinearity="relu", dtype=F64))
    with pytest.raises(mf.DomainError, match="cannot be paired"):
        copy_to_torch(DerivedRNN(VANILLA, I, H, 2, F64), nn.RNN(I, H, num_layers=2, bidirectional=True, dtype=F64))
    with pytest.raises(mf.DomainError, match="cannot be paired"):
        copy_from_torch(MinimalRNN(I, H, num_layers=2, dtype=F64), DerivedRNN(MINIMAL, H, H, 1, F64))
    with pytest.raises(mf.DomainError, match="not a registered implementation"):
        copy_to_torch(DerivedCell(MINIMAL, H, H, F64), nn.RNNCell(H, H, dtype=F64))
    with pytest.raises(mf.DomainError, match="input_size must equal hidden_size"):
        DerivedCell(MINIMAL, I, H, F64)
    with pytest.raises(mf.DomainError, match="input_size must equal hidden_size"):
        derived_module("minimal", I, H)
    with pytest.raises(mf.UnknownCellError):
        derived_module("no-such-cell", I, H)

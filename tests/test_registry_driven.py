"""One live registry of cells: the simulator, the initialisers, the experiments and the command line ask it.

A cell registered at runtime runs in the simulator without editing any module; the language model's parameter counts
come from the modules themselves (equal to the formulas in ``count_parameters``'s docstring); no string comparison
with a cell name is left outside the cell definitions and the per-cell closed forms.
"""
import ast
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch

import mftrnn as mf
from mftrnn.cells import registry as cell_registry
from mftrnn.experiments import lm
from mftrnn.experiments import seqdigits as sd
from mftrnn.nets import registry
from mftrnn.nets.gated import DerivedRNN
from mftrnn.nets.nn import MinimalRNNCell, VanillaRNNCell
from mftrnn.nets.simulate import jacobian_spectrum, simulate, step_jacobian_matrix

PACKAGE = Path(mf.__file__).resolve().parent

_h, _x, _e = sp.symbols("h x e", real=True)
#: a leaky tanh cell, h_t = h/2 + tanh(e)/2, unknown to every module of the package
LEAKY = mf.Cell("leaky-runtime", _h, _x, (mf.Preactivation(_e),), _h / 2 + sp.tanh(_e) / 2,
                description="leaky tanh RNN (registered by a test)")


@pytest.fixture
def leaky(monkeypatch):
    """``LEAKY`` registered with :func:`mftrnn.register_cell` for one test (the registry is restored after)."""
    monkeypatch.setattr(cell_registry, "_REGISTRY", dict(cell_registry._REGISTRY))
    mf.register_cell(LEAKY)
    return LEAKY.name


# ------------------------------------------------------------------------------------ a cell added at runtime

def test_runtime_cell_runs_in_the_simulator(leaky):
    assert leaky in mf.cells("single") and leaky in mf.CELLS
    hp = dict(sigma_w=1.2, sigma_v=0.8, sigma_b=0.1, mu_b=0.0, R=1.0)
    sim = simulate(leaky, N=400, T=40, n_networks=4, seed=1, Q0=0.5, tied=False, **hp)
    fp = mf.fixed_point(leaky, **hp)
    # untied weights (the mean field's assumption): the stationary |h|^2/N is Q* (measured +0.7% here)
    assert np.mean(sim.Q_a[-10:]) == pytest.approx(float(fp.Q_star), rel=0.05)
    tied = simulate(leaky, N=100, T=5, n_networks=2, seed=1, **hp)  # real (tied) networks run as well
    assert np.all(np.isfinite(tied.Q_a))
    assert sim.params["cell"] == leaky


def test_runtime_cell_one_step_module_and_jacobian(leaky):
    module = registry.step_module(leaky, 6, 6)
    assert isinstance(module, registry.SymbolicCell) and registry.cell_of(module) == leaky
    x, h = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    assert torch.allclose(module(x, h), h / 2 + torch.tanh(module.preactivation(x, h)) / 2)
    J = torch.autograd.functional.jacobian(lambda hh: module(x, hh), h)
    assert torch.allclose(step_jacobian_matrix(module, x, h), J, atol=1e-12)
    spec = jacobian_spectrum(leaky, N=30, T=(1, 3), burn_in=5, seed=0)
    assert spec.params["cell"] == leaky and spec.sq_singular_values[3].shape == (1, 30)


def test_runtime_cell_sequence_module_falls_back_to_the_derived_one(leaky):
    assert leaky not in registry.sequence_cells() and leaky not in lm.CELLS and leaky not in sd.CELLS
    rnn = registry.sequence_module(leaky, 3, 5, num_layers=2)
    assert isinstance(rnn, DerivedRNN) and registry.cell_of(rnn) == leaky
    state = registry.zero_state(rnn, 4)
    assert isinstance(state, tuple) and [s.shape for s in state] == [(2, 4, 5)]
    out, _ = rnn(torch.randn(7, 4, 3), state)
    assert out.shape == (7, 4, 5)
    with pytest.raises(mf.MftrnnError, match="unknown cell"):
        lm.LanguageModel(leaky, 10, 5)


def test_registered_modules_and_zero_states():
    assert isinstance(registry.step_module("vanilla", 3, 4), VanillaRNNCell)
    assert isinstance(registry.step_module("minimal", 4, 4), MinimalRNNCell)
    with pytest.raises(mf.MftrnnError, match="input_size must"):
        registry.step_module("minimal", 3, 4)
    for cell in registry.sequence_cells():
        rnn = registry.sequence_module(cell, 3, 5, num_layers=2)
        assert registry.cell_of(rnn) == cell
        state = registry.zero_state(rnn, 4)
        n = len(mf.get_cell(cell).states) if isinstance(mf.get_cell(cell), mf.GatedCell) else 1
        states = state if isinstance(state, tuple) else (state,)
        assert len(states) == n and all(s.shape == (2, 4, 5) and not s.any() for s in states)
        out, _ = rnn(torch.randn(6, 4, 3), state)
        assert out.shape == (6, 4, 5)


def test_cell_lists_are_live_views_of_the_registry():
    assert tuple(lm.CELLS) == registry.sequence_cells()
    assert set(lm.CELLS) == {"minimal", "lstm", "gru", "vanilla"}
    assert tuple(sd.CELLS) == ("vanilla", "minimal")
    assert all(mf.get_cell(c).name == c for c in lm.CELLS)


# ------------------------------------------------------------------------------------ exact parameter counts

def _formula(cell, N, V, L=1, E=None, tie=False):
    """The per-cell formulas of ``count_parameters``'s docstring (the implementation before the registry)."""
    E = N if E is None else E
    gates = {"lstm": 4, "gru": 3, "vanilla": 1}
    recurrent = 0
    for layer in range(L):
        n_in = E if layer == 0 else N
        if cell == "minimal":
            recurrent += N * n_in + N + 2 * N * N + N
        else:
            g = gates[cell]
            recurrent += g * N * n_in + g * N * N + 2 * g * N
    embedding, decoder = V * E, (V if tie else V * N + V)
    return dict(embedding=embedding, recurrent=recurrent, decoder=decoder, total=embedding + recurrent + decoder)


@pytest.mark.parametrize("cell", ["minimal", "lstm", "gru", "vanilla"])
@pytest.mark.parametrize("N,V,L,E,tie", [(1, 2, 1, None, False), (10, 23, 2, 12, False), (200, 10000, 2, None, True),
                                        (650, 33278, 3, 100, False), (1500, 10000, 2, None, False)])
def test_count_parameters_equals_the_formulas(cell, N, V, L, E, tie):
    assert lm.count_parameters(cell, N, V, L, E, tie) == _formula(cell, N, V, L, E, tie)


# ------------------------------------------------------------------------------------ no name checks left

#: cell definitions and the per-cell closed forms may name cells; everything else asks the registry
ALLOWED = {PACKAGE / "theory" / "critical.py"} | set((PACKAGE / "cells").rglob("*.py"))
CHECKED = sorted(p for d in ("experiments", "cli", "nets") for p in (PACKAGE / d).rglob("*.py") if p not in ALLOWED)
NAMES = {"minimal", "vanilla", "lstm", "gru"}


def _names_in(node) -> set:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names_in(e) for e in node.elts)) if node.elts else set()
    return set()


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_comparison_with_a_cell_name(path):
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is,
                                                                 ast.IsNot)) for op in node.ops):
            found = set().union(*(_names_in(n) for n in [node.left, *node.comparators]))
            if found:
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not bad, f"{path.relative_to(PACKAGE)} compares with cell names: {bad}"

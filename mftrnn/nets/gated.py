r"""PyTorch modules of gated cells, derived from the cell's SymPy description (:class:`mftrnn.cells.gated.GatedCell`).

The theory and the network read the same :class:`GatedCell`, so they cannot drift apart. :class:`DerivedCell`
holds, per gate :math:`K`, the parameters its fields use and evaluates each field

.. math:: e = W_K\,y + V_K\,x + b_K

(``weight_hh_K``, ``weight_ih_K``, ``bias_K``; a field without a recurrent term, an input term or a bias drops it;
fields of one gate share that gate's parameters), then the cell's update expressions, lambdified to torch once.

:func:`init_gated_` draws the parameters with the mean-field statistics of the theory,

.. math:: W_K\sim\mathcal N(0,\sigma_{w,K}^2/N)\ \text{or}\ \sigma_{w,K}O\ (O\ \text{Haar}),\quad
          V_K\sim\mathcal N(0,\sigma_{v,K}^2/N_{in}),\quad b_K\sim\mathcal N(\mu_{b,K},\sigma_{b,K}^2),

for derived modules and for ``torch.nn.LSTM``/``LSTMCell``/``GRU``/``GRUCell``. Those four stack the gates along
dim 0 of ``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh`` in the cell's gate order (``ifgo``, ``rzn``) and add two
biases; here the whole bias goes into ``bias_ih`` and ``bias_hh = 0`` (for the GRU candidate, ``b_hn`` is multiplied
by the reset gate, and the derived GRU has :math:`b_{hn}=0`).

Single-state cells (:class:`mftrnn.Cell`: ``vanilla``, ``minimal``) are derived through
:meth:`mftrnn.Cell.as_gated` (one gate ``u``: ``weight_hh_u`` :math:`W`, ``weight_ih_u`` :math:`V`, ``bias_u``
:math:`b`); :class:`DerivedCell` and :class:`DerivedRNN` take them directly and :func:`derived_module` builds the
module of any registered cell by name. A cell whose update uses the input outside its fields (the minimalRNN's
:math:`(1-u)\odot z`) needs ``input_size == hidden_size``.

Fast implementations. :func:`register_implementation` records a torch class that computes a cell with the same
parameters; :func:`copy_to_torch` and :func:`copy_from_torch` move the weights between the derived module and it.
Registered here (each tested equal to the derived module, outputs and gradients, in ``tests/test_implementations.py``
and ``tests/test_nets_gated.py``):

* ``lstm``: ``nn.LSTM`` (native / cuDNN), ``nn.LSTMCell``; ``gru``: ``nn.GRU``, ``nn.GRUCell`` (stacked gates, see
  above);
* ``vanilla``: ``nn.RNN`` and ``nn.RNNCell`` with ``nonlinearity="tanh"`` (``weight_hh_l{l}`` :math:`=W`,
  ``weight_ih_l{l}`` :math:`=V`, :math:`b` = ``bias_ih + bias_hh``; copied to torch as ``bias_ih = b``,
  ``bias_hh = 0``), and :class:`mftrnn.nets.nn.VanillaRNNCell` (``weight_hh``, ``weight_ih``, ``bias``, 1:1);
* ``minimal``: :class:`mftrnn.nets.nn.MinimalRNNCell` (1:1) and the hand-fused multi-layer
  :class:`mftrnn.nets.layers.MinimalRNN` (its own backward): ``weight_hh_l{l}`` :math:`=W`, ``weight_ih_l{l}``
  :math:`=V`, ``bias_l{l}`` :math:`=b` of derived layer :math:`l`. The cell's input is the embedded :math:`z`;
  with ``embed=True`` every layer of ``MinimalRNN`` (layer :math:`l>0` too) first maps its input through its own
  embedding :math:`z = \Phi_l y + \phi_{b,l}` (``embed_weight_l{l}``, ``embed_bias_l{l}``), which is not part of
  the cell: :func:`copy_to_torch` leaves it as it is and :func:`copy_from_torch` does not read it. Then layer
  :math:`l` of ``MinimalRNN`` equals derived layer :math:`l` fed :math:`\Phi_l y + \phi_{b,l}` (:math:`y` the data
  or layer :math:`l-1`'s states); with ``embed=False`` (:math:`z = x`, ``input_size == hidden_size``) the whole
  ``MinimalRNN`` equals :class:`DerivedRNN`. Dropout between layers (training mode) has no derived counterpart.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import sympy as sp
import torch
from torch import nn
from torch.nn import functional as F

from ..cells.registry import Cell, get_cell
from ..errors import DomainError
from ..cells.gated import GRU, LSTM, GatedCell, gate_hyperparameters
from .layers import MinimalRNN
from .nn import MinimalRNNCell, VanillaRNNCell, haar_orthogonal

__all__ = ["DerivedCell", "DerivedRNN", "derived_module", "init_gated_", "Implementation", "register_implementation",
           "implementations", "copy_to_torch", "copy_from_torch"]

#: SymPy function name -> torch function, for the lambdified update rules
TORCH_FUNCTIONS = {**{name: getattr(torch, name) for name in
                      ("sigmoid", "tanh", "exp", "log", "cosh", "sinh", "sqrt", "abs", "sin", "cos", "erf", "relu")},
                   "Heaviside": lambda x, h0=0.5: torch.heaviside(x, torch.full_like(x, h0))}


# --------------------------------------------------------------------------- the derived module
def _compile(expr, available: tuple, what: str):
    """``(f, args)``: ``expr`` lambdified to torch, a function of the symbols ``args`` (a subset of ``available``)."""
    expr = sp.sympify(expr)
    unknown = expr.free_symbols - set(available)
    if unknown:
        raise DomainError(f"{what} uses {sorted(map(str, unknown))}, not defined before it")
    functions = {type(f).__name__ for f in expr.atoms(sp.Function)} - set(TORCH_FUNCTIONS)
    if functions:
        raise DomainError(f"{what} uses {sorted(functions)}; torch versions exist for {sorted(TORCH_FUNCTIONS)}")
    args = tuple(s for s in available if s in expr.free_symbols)
    return sp.lambdify(args, expr, modules=[TORCH_FUNCTIONS, "math"]), args


def _as_gated(cell) -> GatedCell:
    """``cell`` as a :class:`GatedCell` (a single-state :class:`~mftrnn.Cell` through :meth:`~mftrnn.Cell.as_gated`)."""
    if isinstance(cell, Cell):
        return cell.as_gated()
    if isinstance(cell, GatedCell):
        return cell
    raise DomainError(f"expected a Cell or GatedCell, got {type(cell).__name__}; use derived_module for a name")


class DerivedCell(nn.Module):
    r"""One step of ``cell``: ``forward(x, state) -> new state`` (tuples in the order of ``cell.states``).

    ``cell``: a :class:`GatedCell` or a single-state :class:`~mftrnn.Cell` (converted by
    :meth:`~mftrnn.Cell.as_gated`; ``self.cell`` is the gated form). ``x`` is ``(batch, input_size)``, each state
    ``(batch, hidden_size)``. Parameters per gate :math:`K`: ``weight_hh_K`` :math:`(N, N)`, ``weight_ih_K``
    :math:`(N, N_{in})`, ``bias_K`` :math:`(N,)`, each present when some field of gate :math:`K` has that term.
    Initialised by :func:`init_gated_` with its defaults.
    """

    def __init__(self, cell, input_size: int, hidden_size: int, dtype=torch.float32):
        super().__init__()
        cell = _as_gated(cell)
        self.cell, self.input_size, self.hidden_size = cell, int(input_size), int(hidden_size)
        in_update = any(cell.input in sp.sympify(e).free_symbols for e in cell.explicit_updates().values())
        if in_update and self.input_size != self.hidden_size:
            raise DomainError(f"cell {cell.name!r} adds its input {cell.input} to the state, so input_size must equal "
                              f"hidden_size, got {self.input_size} != {self.hidden_size}")
        for K in cell.gates:
            fields = [f for f in cell.fields if f.gate == K]
            shapes = {"weight_hh": ((hidden_size, hidden_size), any(f.reads is not None for f in fields)),
                      "weight_ih": ((hidden_size, input_size), any(f.input for f in fields)),
                      "bias": ((hidden_size,), any(f.bias for f in fields))}
            for name, (shape, present) in shapes.items():
                if present:
                    self.register_parameter(f"{name}_{K}", nn.Parameter(torch.empty(shape, dtype=dtype)))
        known = tuple(cell.states) + (cell.input,)
        self._reads = {}
        for f in cell.fields:
            if not (f.reads is not None or f.input or f.bias):
                raise DomainError(f"field {f.symbol} of cell {cell.name!r} has no term")
            if f.reads is not None:
                self._reads[f.symbol] = _compile(f.reads, known, f"field {f.symbol} of cell {cell.name!r}")
            known += (f.symbol,)
        self._updates = []
        for new, expr in cell.updates:
            self._updates.append((new, _compile(expr, known, f"update of {new} in cell {cell.name!r}")))
            known += (new,)
        init_gated_(self)

    def field(self, f, env: dict) -> torch.Tensor:
        """The field ``f`` (a :class:`~mftrnn.cells.gated.Field`) given the values ``env`` of the symbols it reads."""
        K, terms = f.gate, []
        if f.reads is not None:
            fn, args = self._reads[f.symbol]
            terms.append(F.linear(fn(*(env[s] for s in args)), getattr(self, f"weight_hh_{K}")))
        if f.input:
            terms.append(F.linear(env[self.cell.input], getattr(self, f"weight_ih_{K}")))
        if f.bias:
            terms.append(getattr(self, f"bias_{K}"))
        return sum(terms[1:], terms[0])

    def forward(self, x: torch.Tensor, state: tuple) -> tuple:
        env = dict(zip(self.cell.states, state))
        env[self.cell.input] = x
        for f in self.cell.fields:
            env[f.symbol] = self.field(f, env)
        for new, (fn, args) in self._updates:
            env[new] = fn(*(env[s] for s in args))
        return tuple(env[new] for new in self.cell.new_states)

    def extra_repr(self) -> str:
        return f"{self.cell.name!r}, input_size={self.input_size}, hidden_size={self.hidden_size}"


class DerivedRNN(nn.Module):
    """Stacked :class:`DerivedCell` layers over a sequence, in ``torch.nn.LSTM``'s layout (``cell``: a
    :class:`GatedCell` or a single-state :class:`~mftrnn.Cell`, as for :class:`DerivedCell`).

    ``forward(x, state=None) -> (outputs, state)``: ``x`` is ``(seq_len, batch, input_size)``; ``outputs`` the
    last layer's ``cell.output`` at every step, ``(seq_len, batch, hidden_size)``; ``state`` a tuple in the order of
    ``cell.states`` of ``(num_layers, batch, hidden_size)`` tensors (zeros when omitted). Layer :math:`l>0` reads
    the outputs of layer :math:`l-1`.
    """

    def __init__(self, cell, input_size: int, hidden_size: int, num_layers: int = 1,
                 dtype=torch.float32):
        super().__init__()
        cell = _as_gated(cell)
        self.cell, self.hidden_size = cell, int(hidden_size)
        self.layers = nn.ModuleList(DerivedCell(cell, input_size if l == 0 else hidden_size, hidden_size, dtype)
                                    for l in range(num_layers))

    def forward(self, x: torch.Tensor, state: tuple | None = None) -> tuple:
        if state is None:
            state = tuple(x.new_zeros(len(self.layers), x.shape[1], self.hidden_size) for _ in self.cell.states)
        out, k, finals = x, self.cell.new_states.index(self.cell.output), []
        for l, layer in enumerate(self.layers):
            s, ys = tuple(st[l] for st in state), []
            for x_t in out:
                s = layer(x_t, s)
                ys.append(s[k])
            out = torch.stack(ys)
            finals.append(s)
        return out, tuple(torch.stack(per_layer) for per_layer in zip(*finals))


def derived_module(cell, input_size: int, hidden_size: int, num_layers: int = 1,
                   dtype=torch.float32) -> DerivedRNN:
    """The :class:`DerivedRNN` of ``cell``: a registered name (any of :func:`mftrnn.cells`), a :class:`~mftrnn.Cell`
    or a :class:`GatedCell`. Single-state cells go through :meth:`~mftrnn.Cell.as_gated` (one gate ``u``)."""
    return DerivedRNN(_as_gated(get_cell(cell)), input_size, hidden_size, num_layers, dtype)


# --------------------------------------------------------------------------- parameter blocks
class _Block(NamedTuple):
    """One gate's parameters in one layer (views; ``None`` where absent); ``b_hh`` is torch's second bias."""

    W: torch.Tensor | None
    V: torch.Tensor | None
    b: torch.Tensor | None
    b_hh: torch.Tensor | None = None


def _derived_blocks(module) -> list:
    """``[{gate: _Block}]`` per layer of a :class:`DerivedCell` or :class:`DerivedRNN`."""
    layers = module.layers if isinstance(module, DerivedRNN) else [module]
    return [{K: _Block(*(getattr(m, f"{n}_{K}", None) for n in ("weight_hh", "weight_ih", "bias")))
             for K in m.cell.gates} for m in layers]


def _stacked_blocks(module, gates: str) -> list:
    """``[{gate: _Block}]`` per layer and direction of a torch RNN stacking ``gates`` along dim 0."""
    if getattr(module, "proj_size", 0):
        raise DomainError("nn.LSTM with proj_size > 0 has no counterpart in the gated cells")
    if isinstance(module, nn.RNNCellBase):
        suffixes = [""]
    else:
        dirs = ("", "_reverse") if module.bidirectional else ("",)
        suffixes = [f"_l{l}{d}" for l in range(module.num_layers) for d in dirs]

    def chunks(name):
        p = getattr(module, name, None)
        return (None,) * len(gates) if p is None else p.chunk(len(gates))

    layers = []
    for s in suffixes:
        W, V, b, b_hh = (chunks(n + s) for n in ("weight_hh", "weight_ih", "bias_ih", "bias_hh"))
        layers.append({K: _Block(W[k], V[k], b[k], b_hh[k]) for k, K in enumerate(gates)})
    return layers


#: torch classes laid out as ``_stacked_blocks`` reads them, and the cell each computes
_TORCH_CELLS = {getattr(nn, c.torch_module + suffix): c for c in (LSTM, GRU) for suffix in ("", "Cell")}


def _cell_and_blocks(module) -> tuple:
    if isinstance(module, (DerivedCell, DerivedRNN)):
        return module.cell, _derived_blocks(module)
    cell = next((c for cls, c in _TORCH_CELLS.items() if isinstance(module, cls)), None)
    if cell is None:
        raise DomainError(f"init_gated_ does not support {type(module).__name__}; it takes a DerivedCell, a "
                          f"DerivedRNN or one of {', '.join(cls.__name__ for cls in _TORCH_CELLS)}")
    return cell, _stacked_blocks(module, cell.gates)


# --------------------------------------------------------------------------- initialisation
def _normal(shape, mean: float, std: float, generator) -> torch.Tensor:
    return mean + std * torch.randn(tuple(shape), generator=generator, dtype=torch.float64)


def _draw(block: _Block, hp: dict, orthogonal: bool, generator) -> None:
    if block.W is not None:
        n = block.W.shape[0]
        block.W.copy_(hp["sigma_w"] * haar_orthogonal(n, n, generator=generator) if orthogonal
                      else _normal((n, n), 0.0, hp["sigma_w"] / math.sqrt(n), generator))
    if block.V is not None:
        block.V.copy_(_normal(block.V.shape, 0.0, hp["sigma_v"] / math.sqrt(block.V.shape[1]), generator))
    if block.b is not None:
        block.b.copy_(_normal(block.b.shape, hp["mu_b"], hp["sigma_b"], generator))
    elif hp["mu_b"] or hp["sigma_b"]:
        raise DomainError("the module has no bias, so mu_b and sigma_b must be 0")
    if block.b_hh is not None:
        block.b_hh.zero_()


@torch.no_grad()
def init_gated_(module, *, orthogonal: bool = False, generator: torch.Generator | None = None,
                **hyperparameters) -> dict:
    r"""Draw ``module``'s parameters in place with the mean-field statistics; return ``{gate: {kind: float}}``.

    :math:`W_K\sim\mathcal N(0,\sigma_{w,K}^2/N)` (``orthogonal=True``: :math:`\sigma_{w,K}` times a Haar
    orthogonal matrix), :math:`V_K\sim\mathcal N(0,\sigma_{v,K}^2/N_{in})`,
    :math:`b_K\sim\mathcal N(\mu_{b,K},\sigma_{b,K}^2)` in every layer and direction (:math:`N_{in}` is the layer's
    own input width); torch's ``bias_hh`` is set to 0. ``module``: :class:`DerivedCell`, :class:`DerivedRNN`,
    ``nn.LSTM``, ``nn.LSTMCell``, ``nn.GRU``, ``nn.GRUCell``. ``hyperparameters`` as in
    :func:`~mftrnn.cells.gated.gate_hyperparameters` (``R`` is accepted and unused), scalars only.
    """
    cell, layers = _cell_and_blocks(module)
    per_gate, _ = gate_hyperparameters(cell, hyperparameters)
    if any(a.ndim for hp in per_gate.values() for a in hp.values()):
        raise DomainError("init_gated_ takes scalar hyperparameters only (one network), got arrays")
    per_gate = {K: {k: float(a) for k, a in hp.items()} for K, hp in per_gate.items()}
    for layer in layers:
        for K in cell.gates:
            _draw(layer[K], per_gate[K], orthogonal, generator)
    return per_gate


# --------------------------------------------------------------------------- fast implementations
class Implementation(NamedTuple):
    """A torch class computing a cell: ``to_torch(derived, module)``, ``from_torch(module, derived)`` copy weights."""

    torch_class: type
    to_torch: Callable
    from_torch: Callable


_IMPLEMENTATIONS: dict = {}


def register_implementation(cell_name: str, torch_class: type, to_torch: Callable, from_torch: Callable) -> None:
    """Record ``torch_class`` as a fast implementation of the cell called ``cell_name``."""
    _IMPLEMENTATIONS.setdefault(cell_name, []).append(Implementation(torch_class, to_torch, from_torch))


def implementations(cell_name: str) -> list:
    """The :class:`Implementation` s registered for ``cell_name`` (empty when none)."""
    return list(_IMPLEMENTATIONS.get(cell_name, []))


def _implementation(cell: GatedCell, module) -> Implementation:
    found = [i for i in implementations(cell.name) if isinstance(module, i.torch_class)]
    if not found:
        raise DomainError(f"{type(module).__name__} is not a registered implementation of cell {cell.name!r} "
                          f"(registered: {[i.torch_class.__name__ for i in implementations(cell.name)]})")
    return found[0]


def copy_to_torch(derived, torch_module):
    """Copy a :class:`DerivedCell` / :class:`DerivedRNN`'s weights into its registered torch counterpart (layouts in
    the module docstring; torch's ``bias_hh`` is set to 0, a ``MinimalRNN``'s embedding is left as it is)."""
    _implementation(derived.cell, torch_module).to_torch(derived, torch_module)
    return torch_module


def copy_from_torch(torch_module, derived):
    """Copy a registered torch module's weights into a :class:`DerivedCell` / :class:`DerivedRNN` (``bias_ih +
    bias_hh`` where the two add; a ``MinimalRNN``'s embedding is not read)."""
    _implementation(derived.cell, torch_module).from_torch(torch_module, derived)
    return derived


def _shape(t):
    return None if t is None else tuple(t.shape)


def _paired_blocks(derived, module, theirs: list) -> list:
    """``[(derived layer, torch layer)]`` of ``{gate: _Block}``, checked to match in number and shapes."""
    ours = _derived_blocks(derived)
    if getattr(module, "bidirectional", False) or len(ours) != len(theirs):
        raise DomainError(f"{len(ours)} derived layer(s) cannot be paired with {type(module).__name__} "
                          f"(num_layers={getattr(module, 'num_layers', 1)}, "
                          f"bidirectional={getattr(module, 'bidirectional', False)})")
    for d, t in zip(ours, theirs):
        for K in derived.cell.gates:
            if (_shape(d[K].W), _shape(d[K].V)) != (_shape(t[K].W), _shape(t[K].V)):
                raise DomainError(f"gate {K}: derived weights {_shape(d[K].W)}, {_shape(d[K].V)} vs "
                                  f"torch {_shape(t[K].W)}, {_shape(t[K].V)}")
    return list(zip(ours, theirs))


def _bias_folds(cell: GatedCell, K: str) -> bool:
    """Torch adds ``bias_hh_K`` to the recurrent term; it folds into ``b_K`` iff one field has both."""
    return any(f.reads is not None and f.bias for f in cell.fields if f.gate == K)


def _blocks_to_torch(pairs: list, module) -> None:
    for d, t in pairs:
        for K, blk in d.items():
            t[K].W.copy_(blk.W)
            t[K].V.copy_(blk.V)
            if t[K].b is not None:
                t[K].b.copy_(blk.b)
                if t[K].b_hh is not None:
                    t[K].b_hh.zero_()
            elif blk.b.any():
                raise DomainError(f"{type(module).__name__} has bias=False but the derived bias_{K} is non-zero")


def _blocks_from_torch(pairs: list, cell: GatedCell) -> None:
    for d, t in pairs:
        for K, blk in d.items():
            blk.W.copy_(t[K].W)
            blk.V.copy_(t[K].V)
            if t[K].b is None:
                blk.b.zero_()
            elif t[K].b_hh is None:
                blk.b.copy_(t[K].b)
            elif _bias_folds(cell, K):
                blk.b.copy_(t[K].b + t[K].b_hh)
            elif t[K].b_hh.any():
                raise DomainError(f"bias_hh of gate {K} is non-zero; the derived {cell.name} has no "
                                  f"such bias (b_h{K} = 0 by convention)")
            else:
                blk.b.copy_(t[K].b)


def _copiers(blocks: Callable, check: Callable | None = None) -> tuple:
    """``(to_torch, from_torch)`` for a torch layout: ``blocks(module, cell)`` gives its ``[{gate: _Block}]`` per
    layer; ``check(module)`` refuses configurations that compute another cell."""

    @torch.no_grad()
    def to_torch(derived, module) -> None:
        if check is not None:
            check(module)
        _blocks_to_torch(_paired_blocks(derived, module, blocks(module, derived.cell)), module)

    @torch.no_grad()
    def from_torch(module, derived) -> None:
        if check is not None:
            check(module)
        _blocks_from_torch(_paired_blocks(derived, module, blocks(module, derived.cell)), derived.cell)

    return to_torch, from_torch


def _one_gate(cell: GatedCell) -> str:
    if len(cell.gates) != 1:
        raise DomainError(f"a single-state torch module holds one gate; cell {cell.name!r} has {cell.gates!r}")
    return cell.gates


def _cell_module_blocks(module, cell: GatedCell) -> list:
    """One layer of :mod:`mftrnn.nets.nn`'s ``weight_hh``, ``weight_ih``, ``bias`` (``VanillaRNNCell``, ``MinimalRNNCell``)."""
    return [{_one_gate(cell): _Block(module.weight_hh, module.weight_ih, module.bias)}]


def _minimal_rnn_blocks(module, cell: GatedCell) -> list:
    """``weight_hh_l{l}``, ``weight_ih_l{l}`` (acting on the embedded z), ``bias_l{l}`` of a ``MinimalRNN``; the
    embedding ``embed_weight_l{l}``, ``embed_bias_l{l}`` is not part of the cell (module docstring)."""
    K = _one_gate(cell)
    return [{K: _Block(p["W"], p["V"], p["b"])} for p in map(module.layer_parameters, range(module.num_layers))]


def _check_tanh(module) -> None:
    if module.nonlinearity != "tanh":
        raise DomainError(f"{type(module).__name__} with nonlinearity={module.nonlinearity!r} is not the vanilla "
                          f"cell (tanh)")


_stacked_to_torch, _stacked_from_torch = _copiers(lambda m, cell: _stacked_blocks(m, cell.gates))
for _cls, _cell in _TORCH_CELLS.items():
    register_implementation(_cell.name, _cls, _stacked_to_torch, _stacked_from_torch)
for _cls in (nn.RNN, nn.RNNCell):
    register_implementation("vanilla", _cls, *_copiers(lambda m, cell: _stacked_blocks(m, _one_gate(cell)),
                                                       _check_tanh))
register_implementation("vanilla", VanillaRNNCell, *_copiers(_cell_module_blocks))
register_implementation("minimal", MinimalRNNCell, *_copiers(_cell_module_blocks))
register_implementation("minimal", MinimalRNN, *_copiers(_minimal_rnn_blocks))

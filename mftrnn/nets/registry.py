r"""The torch side of the one cell registry: which module computes a registered cell, how to build it, its zero
state, and (for single-state cells) its one-step module.

Everything is keyed by the names of :func:`mftrnn.cells` (never a second list of names): a registration says
"this torch class computes the cell called ``name``", and the questions the experiments ask are answered from
the registrations, read now.

* Sequence modules (``(seq_len, batch, input)`` in, ``(outputs, state)`` out, ``num_layers`` stacked layers):
  :func:`register_sequence_module` records the fast class of a cell and the fixed keyword arguments that make it
  that cell; :func:`sequence_module` builds it, or the :class:`~mftrnn.nets.gated.DerivedRNN` of the cell
  (:func:`~mftrnn.nets.gated.derived_module`) when none is registered. Registered below: ``vanilla`` ->
  ``nn.RNN(nonlinearity="tanh")``, ``minimal`` -> :class:`~mftrnn.nets.layers.MinimalRNN` (its default
  ``embed=True``: every layer embeds its input, :math:`z = \Phi x + \phi_b`), ``lstm`` -> ``nn.LSTM``, ``gru`` ->
  ``nn.GRU`` (the gated cells whose ``torch_module`` names a torch class). An implementation may also record its
  own *mean-field initialiser* ``init(module, **hyperparameters)`` — the library's modules are drawn from the mean
  field by default (:func:`~mftrnn.nets.layers.init_minimal_rnn_` for ``MinimalRNN``); torch's own modules have
  none (their default is torch's).
* :func:`zero_state`: the zero state in the module's own format — one ``(num_layers, batch, hidden)`` tensor for a
  cell with one carried state, a tuple of as many tensors as the cell carries states otherwise (``(h, c)`` for
  ``nn.LSTM``), a tuple in the order of ``cell.states`` for a derived module.
* :func:`cell_of`: the registered cell a module computes (its ``cell`` attribute, or the implementations
  registered with :func:`~mftrnn.nets.gated.register_implementation`).
* One-step modules of single-state cells (``forward(x, h) -> h``, parameters ``weight_hh``, ``weight_ih``,
  ``bias``, ``preactivation(x, h)``): :func:`register_step_module` records a hand-written class
  (:class:`~mftrnn.nets.nn.VanillaRNNCell`, :class:`~mftrnn.nets.nn.MinimalRNNCell`); :func:`step_module` builds it,
  or a :class:`SymbolicCell` — the cell's update rule lambdified to torch — for any other registered cell, so a
  cell added with :func:`mftrnn.register_cell` runs in the simulator without code.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Callable

import sympy as sp
import torch
from torch import nn

from ..cells.gated import GatedCell
from ..cells.registry import Cell, cells, get_cell
from ..errors import DomainError
from .gated import TORCH_FUNCTIONS, DerivedRNN, derived_module, implementations
from .layers import MinimalRNN, init_minimal_rnn_
from .nn import MinimalRNNCell, VanillaRNNCell, _Cell

__all__ = ["SequenceImplementation", "register_sequence_module", "sequence_implementation", "sequence_cells",
           "sequence_module", "zero_state", "cell_of", "register_step_module", "step_module", "SymbolicCell",
           "torch_update", "LiveNames"]


# --------------------------------------------------------------------------- live views of the names
class LiveNames(Sequence):
    """A read-only sequence of cell names computed by ``names()`` at every access (a live view of the
    registries, like :data:`mftrnn.CELLS`)."""

    def __init__(self, names: Callable[[], tuple]):
        self._names = names

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self):
        return len(self._names())

    def __contains__(self, name):
        return name in self._names()

    def __repr__(self):
        return repr(self._names())


# --------------------------------------------------------------------------- sequence modules
@dataclasses.dataclass(frozen=True)
class SequenceImplementation:
    """A fast multi-layer sequence module computing a cell.

    ``torch_class(input_size, hidden_size, num_layers=..., dropout=..., **fixed, **kwargs)`` builds it; ``fixed``
    are the keyword arguments that make it the cell (``nonlinearity="tanh"`` for ``nn.RNN``); ``init``, if not
    ``None``, is the module's own mean-field initialiser ``init(module, **hyperparameters)``.
    """

    torch_class: type
    fixed: dict = dataclasses.field(default_factory=dict)
    init: Callable | None = None


_SEQUENCE: dict[str, SequenceImplementation] = {}


def register_sequence_module(cell_name: str, torch_class: type, *, init: Callable | None = None, **fixed) -> None:
    """Record ``torch_class`` (built with the keyword arguments ``fixed``) as the fast sequence module of the
    registered cell ``cell_name``; ``init``: its own mean-field initialiser, if it has one."""
    name = get_cell(cell_name).name
    _SEQUENCE[name] = SequenceImplementation(torch_class, dict(fixed), init)


def sequence_implementation(cell) -> SequenceImplementation | None:
    """The :class:`SequenceImplementation` registered for ``cell`` (a name or a cell), ``None`` when none is."""
    return _SEQUENCE.get(get_cell(cell).name)


def sequence_cells() -> tuple[str, ...]:
    """Names of the registered cells with a fast sequence module, in the cell registry's order (read now)."""
    return tuple(n for n in cells() if n in _SEQUENCE)


def sequence_module(cell, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                    **kwargs) -> nn.Module:
    """The multi-layer sequence module of ``cell`` (a registered name or a cell): the registered fast class, built
    with ``num_layers``, ``dropout`` (between layers) and ``kwargs`` (e.g. ``batch_first``, ``dtype``, ``device``),
    or else the cell's :class:`~mftrnn.nets.gated.DerivedRNN` (which takes ``dtype`` only and has no dropout)."""
    found = get_cell(cell)
    impl = _SEQUENCE.get(found.name)
    if impl is not None and _registered(found):
        return impl.torch_class(input_size, hidden_size, num_layers=num_layers, dropout=dropout,
                                **impl.fixed, **kwargs)
    if dropout:
        raise DomainError(f"cell {found.name!r} has no fast sequence module; its derived module has no dropout")
    unknown = sorted(set(kwargs) - {"dtype"})
    if unknown:
        raise DomainError(f"cell {found.name!r} has no fast sequence module; its derived module does not take "
                          f"{unknown}")
    return derived_module(found, input_size, hidden_size, num_layers, **kwargs)


def _registered(cell) -> bool:
    """Is ``cell`` the registered cell of its name (not an unregistered one that happens to share it)?"""
    return cell.name in cells() and get_cell(cell.name) is cell


def _n_states(cell) -> int:
    return len(cell.states) if isinstance(cell, GatedCell) else 1


def zero_state(module: nn.Module, batch_size: int, *, like: torch.Tensor | None = None):
    """The zero state of a sequence module for ``batch_size`` sequences, in the module's own format (module
    docstring); ``like`` (default: the module's first parameter) gives dtype and device."""
    ref = like if like is not None else next(module.parameters())
    if isinstance(module, DerivedRNN):
        h = ref.new_zeros(len(module.layers), batch_size, module.hidden_size)
        return tuple(h.clone() for _ in module.cell.states)
    layers = module.num_layers * (2 if getattr(module, "bidirectional", False) else 1)
    h = ref.new_zeros(layers, batch_size, module.hidden_size)
    n = _n_states(get_cell(cell_of(module)))
    return h if n == 1 else (h,) + tuple(h.clone() for _ in range(n - 1))


def cell_of(module) -> str:
    """The name of the registered cell ``module`` computes: its ``cell`` attribute when that is a cell (derived and
    symbolic modules), else the cell with a registered implementation (:func:`~mftrnn.nets.gated.implementations`)
    of the module's class."""
    cell = getattr(module, "cell", None)
    if isinstance(cell, (Cell, GatedCell)):
        return cell.name
    for name in cells():
        if any(isinstance(module, i.torch_class) for i in implementations(name)):
            return name
    raise DomainError(f"{type(module).__name__} is not a registered implementation of any cell")


# --------------------------------------------------------------------------- one-step modules (single state)
@functools.lru_cache(maxsize=None)
def torch_update(cell: Cell):
    """The update rule ``h_t(e, h_{t-1}, x_t)`` of a single-state cell with one pre-activation, lambdified to torch:
    the simulator and :class:`SymbolicCell` step the same description as the theory."""
    p = cell.preactivations[0]
    return sp.lambdify((p.symbol, cell.state, cell.input), cell.update, modules=[TORCH_FUNCTIONS, "math"])


def _single(cell) -> Cell:
    cell = get_cell(cell, gated=False)
    if len(cell.preactivations) != 1:
        raise DomainError(f"a one-step module needs a cell with one pre-activation; {cell.name!r} has "
                          f"{len(cell.preactivations)}")
    return cell


class SymbolicCell(_Cell):
    r"""One step of a single-state cell with one pre-activation, from its SymPy description:
    :math:`e = W h + V x + b`, :math:`h_t = \mathrm{update}(e, h_{t-1}, x_t)` (lambdified to torch).

    Parameters as :mod:`mftrnn.nets.nn`'s cells (``weight_hh``, ``weight_ih``, ``bias``; drawn by
    :func:`mftrnn.nets.nn.init_`). A cell that adds its input to the state needs ``input_size == hidden_size``.
    """

    def __init__(self, cell, input_size: int, hidden_size: int, dtype=torch.float64, device="cpu"):
        cell = _single(cell)
        if cell.input in sp.sympify(cell.update).free_symbols and input_size != hidden_size:
            raise DomainError(f"cell {cell.name!r} adds its input {cell.input} to the state, so input_size must "
                              f"equal hidden_size, got {input_size} != {hidden_size}")
        super().__init__(input_size, hidden_size, dtype=dtype, device=device)
        self.cell = cell
        self._update = torch_update(cell)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self._update(self.preactivation(x, h), h, x)

    def extra_repr(self) -> str:
        return f"{self.cell.name!r}, " + super().extra_repr()


_STEP: dict[str, tuple[type, Callable]] = {}


def register_step_module(cell_name: str, torch_class: type, build: Callable | None = None) -> None:
    """Record ``torch_class`` as the one-step module of the single-state cell ``cell_name``; ``build(input_size,
    hidden_size, dtype=, device=)`` makes one (default: the class itself)."""
    _STEP[_single(cell_name).name] = (torch_class, build or torch_class)


def step_module(cell, input_size: int, hidden_size: int, dtype=torch.float64, device="cpu") -> nn.Module:
    """The one-step module of a single-state cell: the registered class, or a :class:`SymbolicCell`."""
    cell = _single(cell)
    if cell.name in _STEP and _registered(cell):
        return _STEP[cell.name][1](input_size, hidden_size, dtype=dtype, device=device)
    return SymbolicCell(cell, input_size, hidden_size, dtype=dtype, device=device)


def step_cell_of(module) -> Cell:
    """The single-state cell a one-step module computes (a :class:`SymbolicCell`'s own, or the registered one)."""
    if isinstance(module, SymbolicCell):
        return module.cell
    for name, (cls, _) in _STEP.items():
        if isinstance(module, cls):
            return get_cell(name)
    raise DomainError(f"expected a one-step module of a single-state cell (SymbolicCell or one of "
                      f"{', '.join(cls.__name__ for cls, _ in _STEP.values())}), got {type(module).__name__}")


__all__ += ["step_cell_of"]


# --------------------------------------------------------------------------- registrations
def _minimal_step(input_size: int, hidden_size: int, **kw) -> MinimalRNNCell:
    if input_size != hidden_size:
        raise DomainError(f"MinimalRNNCell reads the embedded input z of the state's size, so input_size must "
                          f"equal hidden_size, got {input_size} != {hidden_size}")
    return MinimalRNNCell(hidden_size, **kw)


register_sequence_module("vanilla", nn.RNN, nonlinearity="tanh")
register_sequence_module("minimal", MinimalRNN, init=init_minimal_rnn_)
for _name in cells("gated"):
    _module = get_cell(_name).torch_module
    if _module is not None:
        register_sequence_module(_name, getattr(nn, _module))
register_step_module("vanilla", VanillaRNNCell)
register_step_module("minimal", MinimalRNNCell, _minimal_step)

r"""Recurrent cells as data: an update rule written once as SymPy expressions.

A cell is the rule :math:`h_t = \mathrm{update}(h_{t-1}, x_t, e^{(1)}_t, \dots)` for one unit, where each
pre-activation is a Gaussian field in the mean-field limit,

.. math:: e^{(k)}_t = W_k\, y_k + V_k x_t + b_k, \qquad
          (W_k)_{ij}\sim\mathcal N(0,\sigma_{w}^2/N),\; (V_k)_{ij}\sim\mathcal N(0,\sigma_{v}^2/N_{in}),\;
          b_{k,i}\sim\mathcal N(\mu_b,\sigma_b^2),

and :math:`y_k` (the vector the recurrent matrix multiplies) is the previous state unless the cell says
otherwise. Everything else — variance and covariance maps, fixed points, slopes, timescales — is derived from
this description by :mod:`mftrnn.theory.meanfield`; adding a cell needs no new derivation code.

Requirement of the derivation: the update must be *affine* in the carried variables (previous state and
input), with coefficients that are arbitrary functions of the pre-activations. The vanilla RNN, the minimalRNN,
the GRU and the LSTM's cell-state update have this form.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sympy as sp

from ..errors import MftrnnError, UnknownCellError
from .functions import relu, sigmoid
from .gated import GRU, GRU_RESET_BEFORE, LSTM, LSTM_PEEPHOLE, Field, GatedCell

__all__ = ["Cell", "Preactivation", "get_cell", "register_cell", "CELLS", "cells", "HYPER", "sigma_w", "sigma_v",
           "sigma_b", "mu_b", "R", "Sigma"]

# hyperparameter symbols (names as in the conventions)
sigma_w = sp.Symbol("sigma_w", nonnegative=True)
sigma_v = sp.Symbol("sigma_v", nonnegative=True)
sigma_b = sp.Symbol("sigma_b", nonnegative=True)
mu_b = sp.Symbol("mu_b", real=True)
R = sp.Symbol("R", nonnegative=True)
Sigma = sp.Symbol("Sigma", real=True)
HYPER = (sigma_w, sigma_v, sigma_b, mu_b, R)


@dataclass(frozen=True)
class Preactivation:
    """One Gaussian pre-activation ``e = W y + V x + b`` with its own hyperparameter symbols."""

    symbol: sp.Symbol
    recurrent_input: sp.Expr | None = None  # None: the previous state
    sigma_w: sp.Symbol = sigma_w
    sigma_v: sp.Symbol = sigma_v
    sigma_b: sp.Symbol = sigma_b
    mu_b: sp.Symbol = mu_b


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: name, symbols for previous state and input, pre-activations and the update rule."""

    name: str
    state: sp.Symbol
    input: sp.Symbol
    preactivations: tuple[Preactivation, ...]
    update: sp.Expr
    description: str = ""
    hyperparameters: tuple[sp.Symbol, ...] = field(default=HYPER)

    def recurrent_input(self, p: Preactivation) -> sp.Expr:
        return self.state if p.recurrent_input is None else p.recurrent_input

    def as_gated(self) -> GatedCell:
        """This cell written as a :class:`~mftrnn.cells.gated.GatedCell` with one gate ``"u"``.

        The pre-activation becomes the field ``Field(e, "u", reads=<recurrent input>)`` (recurrent, input and bias
        terms; hyperparameters ``sigma_w_u, ...``, or the shorthand ``sigma_w, ...``), the one state is carried to a
        fresh symbol ``<state>_t`` by ``update``, which is also the output; name and input symbol are unchanged.
        So the torch module (:class:`mftrnn.nets.gated.DerivedCell`) is derived from the same description as the
        theory. Only for cells with one pre-activation (one gate shares one set of hyperparameters); the result is
        not registered.
        """
        if len(self.preactivations) != 1:
            raise MftrnnError(f"as_gated needs a cell with one pre-activation; {self.name!r} has "
                              f"{len(self.preactivations)}")
        (p,) = self.preactivations
        taken = {str(s) for s in sp.sympify(self.update).free_symbols | {self.state, self.input, p.symbol}}
        name = f"{self.state}_t"
        while name in taken:
            name += "'"
        new = sp.Symbol(name, real=True)
        return GatedCell(name=self.name, gates="u", states=(self.state,), input=self.input,
                         fields=(Field(p.symbol, "u", self.recurrent_input(p)),),
                         updates=((new, self.update),), output=new, description=self.description)

    def __repr__(self):
        return f"Cell({self.name!r}: h_t = {self.update})"


_h = sp.Symbol("h", real=True)
_x = sp.Symbol("x", real=True)
_z = sp.Symbol("z", real=True)
_e = sp.Symbol("e", real=True)

VANILLA = Cell(
    name="vanilla",
    state=_h,
    input=_x,
    preactivations=(Preactivation(_e),),
    update=sp.tanh(_e),
    description="vanilla RNN: e_t = W h_{t-1} + V x_t + b, h_t = tanh(e_t)",
)

MINIMAL = Cell(
    name="minimal",
    state=_h,
    input=_z,
    preactivations=(Preactivation(_e),),
    update=sigmoid(_e) * _h + (1 - sigmoid(_e)) * _z,
    description="minimalRNN: e_t = W h_{t-1} + V z_t + b, u_t = sigmoid(e_t), h_t = u_t h_{t-1} + (1-u_t) z_t",
)

# vanilla RNNs with other activations: the same pre-activation and hyperparameters as VANILLA, only h_t = phi(e_t)
RELU = Cell(
    name="relu",
    state=_h,
    input=_x,
    preactivations=(Preactivation(_e),),
    update=relu(_e),
    description="ReLU RNN: e_t = W h_{t-1} + V x_t + b, h_t = max(0, e_t)",
)

ERF = Cell(
    name="erf",
    state=_h,
    input=_x,
    preactivations=(Preactivation(_e),),
    update=sp.erf(_e),
    description="erf RNN: e_t = W h_{t-1} + V x_t + b, h_t = erf(e_t)",
)

LINEAR = Cell(
    name="linear",
    state=_h,
    input=_x,
    preactivations=(Preactivation(_e),),
    update=_e,
    description="linear RNN: e_t = W h_{t-1} + V x_t + b, h_t = e_t",
)

_REGISTRY: dict[str, Cell] = {}


def register_cell(cell: Cell) -> Cell:
    """Add a cell to the registry (so that ``get_cell`` and the command line know it by name)."""
    _REGISTRY[cell.name] = cell
    return cell


register_cell(VANILLA)
register_cell(MINIMAL)
for _gated in (LSTM, GRU, LSTM_PEEPHOLE, GRU_RESET_BEFORE):
    register_cell(_gated)
for _single in (RELU, ERF, LINEAR):
    register_cell(_single)


def cells(kind: str | None = None) -> tuple[str, ...]:
    """Names of the registered cells, read from the registry now: all, ``"single"`` (one carried state,
    :class:`Cell`) or ``"gated"`` (:class:`GatedCell`)."""
    types = {None: (Cell, GatedCell), "single": (Cell,), "gated": (GatedCell,)}
    if kind not in types:
        raise MftrnnError(f"kind must be None, 'single' or 'gated', got {kind!r}")
    return tuple(n for n, c in _REGISTRY.items() if isinstance(c, types[kind]))


class _CellNames(Sequence):
    """A live, read-only view of the registered cell names (``mftrnn.CELLS``)."""

    def __getitem__(self, i):
        return cells()[i]

    def __len__(self):
        return len(_REGISTRY)

    def __repr__(self):
        return repr(cells())


CELLS = _CellNames()


def get_cell(cell, *, gated: bool = True):
    """Return the registered cell called ``cell`` (a :class:`Cell` or :class:`GatedCell` is returned unchanged).

    ``gated=False``: the caller handles only single-state :class:`Cell` s; a gated cell is refused with a clear
    error instead of failing later.
    """
    if isinstance(cell, (Cell, GatedCell)):
        found = cell
    else:
        try:
            found = _REGISTRY[cell]
        except (KeyError, TypeError):
            raise UnknownCellError(f"unknown cell {cell!r}; known cells: {', '.join(_REGISTRY)}") from None
    if not gated and isinstance(found, GatedCell):
        raise MftrnnError(f"not available for the gated cell {found.name!r} (only for "
                          f"{', '.join(n for n, c in _REGISTRY.items() if isinstance(c, Cell))})")
    return found

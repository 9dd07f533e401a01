r"""Gated cells with several carried states (LSTM, GRU and variants), written once as SymPy expressions.

A :class:`GatedCell` is data: the symbols of its previous states, the input, the Gaussian *fields* (gate
pre-activations, or parts of one) and the update rule of each state. The mean-field theory
(:mod:`mftrnn.theory.gated`) and the PyTorch module (:mod:`mftrnn.nets.gated`) are both derived from it.

Fields. Each field is one Gaussian sum

.. math:: e = W\,y + V\,x + b,\qquad W_{ij}\sim\mathcal N(0,\sigma_{w,K}^2/N),\;
          V_{ij}\sim\mathcal N(0,\sigma_{v,K}^2/N_{in}),\; b_i\sim\mathcal N(\mu_{b,K},\sigma_{b,K}^2),

where :math:`K` is the gate letter that owns the field's hyperparameters and :math:`y` (``reads``) is an
expression in the previous states (the vector the recurrent matrix multiplies). A field may lack any of the three
terms: PyTorch's GRU candidate :math:`n=\tanh(V_n x + b_{in} + r\odot(W_n h + b_{hn}))` is two fields of gate
``n``, ``e_nx = V_n x + b_in`` (no recurrent term) and ``e_nh = W_n h`` (no input term and, by this library's
convention, :math:`b_{hn}=0`), so that the candidate's pre-activation is Gaussian only *given* the reset gate.

Updates. ``updates`` lists ``(new_state_symbol, expression)`` in order; an expression may use the previous
states, the input, the fields and the *new* values of states updated before it (the LSTM's
:math:`h_t = o_t\tanh(c_t)` uses the new :math:`c_t`). ``output`` is the state the network emits.

Hyperparameters are per gate: ``sigma_w_K, sigma_v_K, sigma_b_K, mu_b_K`` for each letter ``K`` of
``gates``; :func:`gate_hyperparameters` resolves the shorthand ``sigma_w, sigma_v, sigma_b, mu_b`` (all gates at
once, a per-gate value overrides) and the input second moment ``R``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..errors import DomainError
from .._validate import finite_array
from .functions import sigmoid

__all__ = ["Field", "GatedCell", "gate_hyperparameters", "hyperparameter_names", "LSTM", "GRU", "LSTM_PEEPHOLE",
           "GRU_RESET_BEFORE", "GATED_DEFAULTS"]

#: defaults of the shorthand hyperparameters (the conventions of the vanilla RNN and minimalRNN)
GATED_DEFAULTS = {"sigma_w": 1.0, "sigma_v": 1.0, "sigma_b": 0.0, "mu_b": 0.0, "R": 1.0}
_KINDS = ("sigma_w", "sigma_v", "sigma_b", "mu_b")


@dataclass(frozen=True)
class Field:
    """One Gaussian field ``e = W y + V x + b`` owned by gate ``gate`` (``reads=None``: no recurrent term)."""

    symbol: sp.Symbol
    gate: str
    reads: sp.Expr | None = None
    input: bool = True
    bias: bool = True


@dataclass(frozen=True)
class GatedCell:
    """A recurrent cell with several carried states (see the module docstring)."""

    name: str
    gates: str
    states: tuple            # previous-state symbols, e.g. (c, h)
    input: sp.Symbol
    fields: tuple            # Field, ...
    updates: tuple           # ((new_symbol, expr), ...), in order
    output: sp.Symbol        # the new-state symbol the network emits
    description: str = ""
    torch_module: str | None = None   # name of the torch.nn module whose conventions the cell follows

    @property
    def new_states(self) -> tuple:
        return tuple(s for s, _ in self.updates)

    def previous_of(self, new) -> sp.Symbol:
        """The previous-state symbol carried into ``new`` (same position in ``states``)."""
        return self.states[self.new_states.index(new)]

    def field_of(self, symbol) -> Field:
        return next(f for f in self.fields if f.symbol == symbol)

    def explicit_updates(self) -> dict:
        """``{new_state: expression}`` in previous states, input and fields only (new values substituted)."""
        out = {}
        for new, expr in self.updates:
            out[new] = sp.sympify(expr).xreplace(out)
        return out

    @property
    def hyperparameters(self) -> tuple:
        return hyperparameter_names(self)

    def __repr__(self):
        body = "; ".join(f"{s} = {e}" for s, e in self.updates)
        return f"GatedCell({self.name!r}: {body})"


def hyperparameter_names(cell: GatedCell) -> tuple:
    """Per-gate names ``sigma_w_i, ..., mu_b_o`` (gate order) and ``R``."""
    return tuple(f"{k}_{g}" for g in cell.gates for k in _KINDS) + ("R",)


def gate_hyperparameters(cell: GatedCell, values: dict) -> tuple[dict, np.ndarray]:
    """Resolve per-gate hyperparameters: ``({gate: {"sigma_w": a, "sigma_v": a, "sigma_b": a, "mu_b": a}}, R)``.

    ``values`` may hold the shorthand ``sigma_w, sigma_v, sigma_b, mu_b`` (every gate) and per-gate names
    ``sigma_w_f`` etc. (override the shorthand for that gate), and ``R``. Arrays broadcast together. Raises
    :class:`~mftrnn.DomainError` for unknown names (another cell's gate letter included), non-finite values and
    negative standard deviations.
    """
    allowed = set(_KINDS) | {"R"} | set(hyperparameter_names(cell))
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise DomainError(f"unknown hyperparameter(s) {unknown} for cell {cell.name!r}; per-gate names are "
                          f"sigma_w_K, sigma_v_K, sigma_b_K, mu_b_K with K in {', '.join(cell.gates)}")
    arrays = {}
    for name, v in values.items():
        if v is None:
            continue
        a = finite_array(name, v, nonnegative=name.startswith("sigma_") or name == "R")
        arrays[name] = a
    keys = [(g, k) for g in cell.gates for k in _KINDS]
    raw = [arrays.get(f"{k}_{g}", arrays.get(k, GATED_DEFAULTS[k])) for g, k in keys]
    raw.append(arrays.get("R", GATED_DEFAULTS["R"]))
    try:
        b = np.broadcast_arrays(*[np.asarray(r, float) for r in raw])
    except ValueError:
        raise DomainError("hyperparameter arrays have incompatible shapes: "
                          + ", ".join(f"{k}{np.shape(v)}" for k, v in arrays.items())) from None
    out = {g: {} for g in cell.gates}
    for (g, k), a in zip(keys, b[:-1]):
        out[g][k] = a
    return out, b[-1]


# --------------------------------------------------------------------------- the cells
_c, _h, _x = sp.symbols("c h x", real=True)
_c_t, _h_t = sp.symbols("c_t h_t", real=True)


_e = {g: sp.Symbol(f"e_{g}", real=True) for g in "ifgorzn"}

#: ``torch.nn.LSTM`` (gate order i, f, g, o): the gates read h; c_t = f c + i g, h_t = o tanh(c_t).
LSTM = GatedCell(
    name="lstm", gates="ifgo", states=(_c, _h), input=_x,
    fields=tuple(Field(_e[g], g, _h) for g in "ifgo"),
    updates=((_c_t, sigmoid(_e["f"]) * _c + sigmoid(_e["i"]) * sp.tanh(_e["g"])),
             (_h_t, sigmoid(_e["o"]) * sp.tanh(_c_t))),
    output=_h_t,
    description="LSTM (torch.nn.LSTM): e_K = W_K h + V_K x + b_K; c_t = sigmoid(e_f) c + sigmoid(e_i) tanh(e_g); "
                "h_t = sigmoid(e_o) tanh(c_t)",
    torch_module="LSTM",
)

#: The LSTM whose gates read the cell state (a peephole-only LSTM): its recursions close on Gaussian moments.
LSTM_PEEPHOLE = GatedCell(
    name="lstm-peephole", gates="ifgo", states=(_c, _h), input=_x,
    fields=tuple(Field(_e[g], g, _c) for g in "ifgo"),
    updates=((_c_t, sigmoid(_e["f"]) * _c + sigmoid(_e["i"]) * sp.tanh(_e["g"])),
             (_h_t, sigmoid(_e["o"]) * sp.tanh(_c_t))),
    output=_h_t,
    description="LSTM whose gates read the cell state: e_K = W_K c + V_K x + b_K; c_t = sigmoid(e_f) c + "
                "sigmoid(e_i) tanh(e_g); h_t = sigmoid(e_o) tanh(c_t)",
)

_enx, _enh = sp.Symbol("e_nx", real=True), sp.Symbol("e_nh", real=True)
#: ``torch.nn.GRU`` (gate order r, z, n): the reset multiplies W_n h after the product; b_hn = 0.
GRU = GatedCell(
    name="gru", gates="rzn", states=(_h,), input=_x,
    fields=(Field(_e["r"], "r", _h), Field(_e["z"], "z", _h), Field(_enx, "n", None),
            Field(_enh, "n", _h, input=False, bias=False)),
    updates=((_h_t, (1 - sigmoid(_e["z"])) * sp.tanh(_enx + sigmoid(_e["r"]) * _enh) + sigmoid(_e["z"]) * _h),),
    output=_h_t,
    description="GRU (torch.nn.GRU): r, z = sigmoid(W h + V x + b); n = tanh(V_n x + b_in + r * (W_n h)); "
                "h_t = (1 - z) n + z h",
    torch_module="GRU",
)

#: The GRU with the reset applied before the product (Cho et al.): n = tanh(W_n (r h) + V_n x + b_n); its
#: candidate pre-activation is Gaussian, so its recursions close on Gaussian moments.
GRU_RESET_BEFORE = GatedCell(
    name="gru-reset-before", gates="rzn", states=(_h,), input=_x,
    fields=(Field(_e["r"], "r", _h), Field(_e["z"], "z", _h), Field(_e["n"], "n", sigmoid(_e["r"]) * _h)),
    updates=((_h_t, (1 - sigmoid(_e["z"])) * sp.tanh(_e["n"]) + sigmoid(_e["z"]) * _h),),
    output=_h_t,
    description="GRU with the reset before the product: n = tanh(W_n (r * h) + V_n x + b_n); h_t = (1 - z) n + z h",
)

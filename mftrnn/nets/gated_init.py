r"""Critical initialisation of ``nn.LSTM`` / ``nn.LSTMCell`` and ``nn.GRU`` / ``nn.GRUCell`` (and the library's
derived gated modules) for a task of length :math:`T`, in the style of ``torch.nn.init``: in place, returning the
chosen hyperparameters and the theory's predictions.

The hyperparameters of every layer come from :func:`mftrnn.theory.critical_gated.gated_for_timescale` (timescale
:math:`\xi = kT` through the memory gate's bias, a memory gate independent of the input, small recurrent weights,
``sigma_w = 0.2`` by default; see there for the objective and why). Layer :math:`l > 1` reads the states of layer :math:`l-1`, whose
second moment :math:`Q^*` (not the network input's :math:`R`) is its input's: its hyperparameters are chosen for
that :math:`R`. PyTorch's two bias vectors: the whole bias goes into ``bias_ih`` and ``bias_hh`` is set to 0 (their
sum is what the theory sees).
"""
from __future__ import annotations

import torch

from ..errors import DomainError
from ..theory.critical_gated import SIGMA_W_DEFAULT, gated_for_timescale
from .gated import _cell_and_blocks, _draw

__all__ = ["critical_gated_init_", "critical_lstm_init_", "critical_gru_init_"]


def _per_gate(cell, hp: dict) -> dict:
    return {K: {k: float(hp[f"{k}_{K}"]) for k in ("sigma_w", "sigma_v", "sigma_b", "mu_b")} for K in cell.gates}


def _directions(module) -> int:
    return 2 if getattr(module, "bidirectional", False) else 1


@torch.no_grad()
def critical_gated_init_(module, T, *, k: float = 1.0, sigma_w: float = SIGMA_W_DEFAULT, sigma_v: float = 1.0,
                         R: float = 1.0, orthogonal: bool = False, generator: torch.Generator | None = None,
                         samples: int = 200_000) -> dict:
    r"""Initialise a gated recurrent module in place for a timescale :math:`\xi = kT` (see the module docstring).

    Returns ``{"cell", "T", "k", "orthogonal", "num_layers", "layers": [per-layer result of gated_for_timescale]}``
    plus the first layer's hyperparameters and predictions at the top level (``chi``, ``xi``, ``mean``, ...),
    JSON-ready. ``R``: second moment per component of the module's input."""
    cell, blocks = _cell_and_blocks(module)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise DomainError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    ndir = _directions(module)
    if len(blocks) % ndir:
        raise DomainError("unexpected layout of the module's parameters")
    layers, R_l = [], R
    for l in range(len(blocks) // ndir):
        hp = gated_for_timescale(cell, T, k=k, sigma_w=sigma_w, sigma_v=sigma_v, R=R_l, orthogonal=orthogonal,
                                 samples=samples)
        per_gate = _per_gate(cell, hp)
        for layer in blocks[l * ndir:(l + 1) * ndir]:
            for K in cell.gates:
                _draw(layer[K], per_gate[K], orthogonal, generator)
        layers.append(hp)
        R_l = hp["Q_star"]
    out = dict(layers[0])
    out.update(num_layers=len(layers), layers=layers)
    return out


def _check_kind(module, torch_name: str, what: str):
    cell, _ = _cell_and_blocks(module)
    if cell.torch_module != torch_name:
        raise DomainError(f"{what} takes nn.{torch_name} or nn.{torch_name}Cell (or a derived {cell.name} module), "
                          f"got {type(module).__name__} ({cell.name})")


def critical_lstm_init_(module, T, **kwargs) -> dict:
    r"""Critical initialisation of ``nn.LSTM`` / ``nn.LSTMCell`` for a task of length ``T``: forget-gate bias for
    :math:`\xi = kT`, forget gate independent of the input; :func:`critical_gated_init_` for the options."""
    _check_kind(module, "LSTM", "critical_lstm_init_")
    return critical_gated_init_(module, T, **kwargs)


def critical_gru_init_(module, T, **kwargs) -> dict:
    r"""Critical initialisation of ``nn.GRU`` / ``nn.GRUCell`` for a task of length ``T``: update-gate bias for
    :math:`\xi = kT` (PyTorch's :math:`h_t = (1-z)n + zh`: :math:`z\to1` keeps the state), update gate independent
    of the input; :func:`critical_gated_init_` for the options."""
    _check_kind(module, "GRU", "critical_gru_init_")
    return critical_gated_init_(module, T, **kwargs)

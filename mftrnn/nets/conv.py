r"""Convolutional gated recurrent networks (ConvGRU, ConvLSTM, ...) derived from the cell description, their
initialisers and a Monte Carlo of the module against the gated mean field (channels x kernel as width).

**The module.** The state of a convolutional recurrent network is a signal: each carried state is a tensor
``(batch, C, L)`` (:math:`C` channels at :math:`L` positions) and the input ``(batch, C_in, L)``. Every field of the
:class:`~mftrnn.cells.gated.GatedCell` keeps its form :math:`e = W\,y + V\,x + b`, with the matrix products replaced by
1-D convolutions over the positions,

.. math:: e_{j,p} = \sum_{i=1}^{C}\sum_{k=0}^{K-1} W_{jik}\,y_{i,\,p+k-\lfloor K/2\rfloor}
          + \sum_{i=1}^{C_{in}}\sum_{k=0}^{K_{in}-1} V_{jik}\,x_{i,\,p+k-\lfloor K_{in}/2\rfloor} + b_j,

(``weight_hh_K`` :math:`(C, C, K)`, ``weight_ih_K`` :math:`(C, C_{in}, K_{in})`, ``bias_K`` :math:`(C,)` per gate
:math:`K`, as in :class:`mftrnn.nets.gated.DerivedCell`), and the update rules are the cell's own, lambdified to torch
by :func:`mftrnn.nets.gated._compile` (elementwise, so they act on ``(batch, C, L)`` tensors unchanged): the LSTM and
GRU equations are not written again. :class:`ConvGatedRNN` runs a sequence; for speed it computes the input terms of
all steps in one convolution and, at each step, the recurrent terms of all fields that read the same expression
(the LSTM's four gates, the GRU's three) in one convolution; :class:`ConvGatedCell` steps once through the same code.
Kernel sizes are odd (a centred window, the same length out as in).

**Padding.** ``"circular"`` (default): position :math:`p + k` is read modulo :math:`L`, so every position has the
same :math:`C K` terms in its field and the network is invariant under cyclic shifts; that homogeneity is what lets
the per-position statistics obey one mean-field map (below), and it is the geometry of sensors on a ring (a
circumferential EEG montage). ``"zeros"``: the :math:`\lfloor K/2\rfloor` positions at each end see fewer terms, so
their field variance is smaller by the fraction of taps that fall outside; the mean field below then holds only in
the interior (a fraction :math:`1 - 2\lfloor K/2\rfloor/L` of the positions).

**Mean field: channels x kernel play the role of width.** With :math:`W_{jik}\sim\mathcal N(0,\sigma_{w,K}^2/(CK))`,
:math:`V_{jik}\sim\mathcal N(0,\sigma_{v,K}^2/(C_{in}K_{in}))`, :math:`b_j\sim\mathcal N(\mu_{b,K},\sigma_{b,K}^2)`,
the field at one unit :math:`(j, p)` is, given the states, a Gaussian sum of :math:`CK` recurrent terms with variance

.. math:: q = \sigma_{w,K}^2\,\frac{1}{CK}\sum_{i,k} y_{i,p+k}^2 + \sigma_{v,K}^2\,\frac{1}{C_{in}K_{in}}\sum_{i,k}
          x_{i,p+k}^2 + \sigma_{b,K}^2 \;\longrightarrow\; \sigma_{w,K}^2\,Q + \sigma_{v,K}^2 R + \sigma_{b,K}^2,

the dense field variance of :mod:`mftrnn.theory.gated` with the window average in place of the average over
:math:`N` units: with circular padding every window average of :math:`y^2` tends to the same :math:`Q` as
:math:`CK\to\infty`. So the dense untied mean field (:func:`mftrnn.gated_fixed_point`: :math:`Q^*`, :math:`Q_c^*`,
:math:`\chi`, :math:`\xi`), and the critical solver built on it
(:func:`mftrnn.theory.critical_gated.gated_for_timescale`), apply to each position with fan-in :math:`CK` in place of
:math:`N`. A perturbation is carried the same way (its window average of :math:`\delta y^2`), so :math:`\chi` of the
whole state is the dense one.

**Where it breaks.**

* Positions are correlated: two positions share the kernel, so their fields have covariance
  :math:`\sigma_{w,K}^2 \frac{1}{CK}\sum_{i,k} y_{i,p+k}y_{i,p'+k} + (\text{input}) + \sigma_{b,K}^2`. The covariance
  across positions follows its own map, the dense map of *two copies with shared weights and independent inputs*
  (positions :math:`p \ne p'` see independent inputs when the input is white across positions; a shared bias and
  shared weights are all they have in common). Single-position quantities (:math:`Q`, :math:`\chi`) do not depend on
  it in the mean field, but the effective number of independent terms in a window average is less than :math:`CK`
  where the state is correlated across positions.
* Small :math:`C`: the window average of :math:`CK` terms fluctuates by :math:`O(1/\sqrt{CK})` (Gaussian kernel) or
  :math:`O(1/\sqrt C)` (delta-orthogonal), as the dense theory at width :math:`N`.
* Tied weights: the mean field is exact for weights redrawn at every step (``tied=False`` below) as
  :math:`CK\to\infty`; a real network reuses one kernel, and follows it where the recurrent weights are small (the
  caveat of the dense gated theory; the critical initialisation's ``sigma_w = 0.2``). Here the same kernel is also
  reused at every position, which adds the position correlations above.
* Zero padding: the ends (above).

**Delta-orthogonal kernel** (Xiao et al. 2018): :math:`W_{:,:,\lfloor K/2\rfloor} = \sigma_{w,K}\,O` with :math:`O`
Haar-orthogonal :math:`C\times C`, zero elsewhere. Each row has :math:`\sum_{i,k}W_{jik}^2 = \sigma_{w,K}^2`, as the
Gaussian kernel's in expectation, so the field variance is :math:`\sigma_{w,K}^2 |y_p|^2/C \to \sigma_{w,K}^2 Q`: the
same mean field, with width :math:`C` (the recurrent term does not mix positions; the input convolution does). It
plays the role of the orthogonal :math:`W` of the dense theory (``orthogonal=True`` in the Jacobian spectrum of
:func:`~mftrnn.theory.critical_gated.gated_for_timescale`).

**Initialisers** (``torch.nn.init`` style: in place, returning the hyperparameters): :func:`init_conv_gated_` (any
per-gate hyperparameters, ``kernel="gaussian"`` or ``"delta-orthogonal"``), :func:`critical_conv_init_` (the gated
critical solver's hyperparameters for a timescale :math:`\xi = kT`, per layer, layer :math:`l>1` seeing the
:math:`Q^*` of the layer below as its :math:`R`), :func:`default_conv_init_` (PyTorch-like uniform).

**Monte Carlo** of the module itself: :func:`measure_conv` runs random :class:`ConvGatedCell` networks (tied or
untied) and measures the state second moments, the neighbour correlation across positions, and :math:`\chi` by the
Benettin method of :func:`mftrnn.nets.simulate_gated.measure_gated_chi` (two copies, the same inputs, a perturbation
of the whole state renormalised at every step). Measured (``tests/test_conv_rnn.py``; :math:`C = 64`, :math:`L = 32`,
:math:`K = 3`, six networks, standard errors over networks):

* untied, :math:`\sigma_w = \sigma_v = 1`, :math:`\mu_b = 0.5`, :math:`\sigma_b = 0.3`: ConvGRU (Gaussian) :math:`\chi`
  0.4612 +- 0.0010 (mean field 0.4620), :math:`Q^*` 0.2148 +- 0.0010 (0.2153), neighbour correlation 0.419 +- 0.004
  (two-copy :math:`c^*` 0.412); ConvLSTM (delta-orthogonal) :math:`\chi` 0.4469 +- 0.0017 (0.4484), :math:`Q^*`
  0.1098 +- 0.0003 (0.1095), :math:`Q_c^*` 0.4605 +- 0.0021 (0.4582): every deviation within 2 standard errors;
* tied, at the same point: :math:`\chi` about 0.65 for both cells against 0.46 (the tied departure at large
  ``sigma_w`` of the dense cells);
* tied, ``sigma_w = 0.2``: the ConvGRU at the critical point for :math:`T = 10` has :math:`\chi` 0.90564 +- 0.00006
  against the dense tied ``nn.GRUCell`` of width :math:`N = CK = 192`, 0.90599 +- 0.00031, and the untied prediction
  0.90484; the ConvLSTM (``mu_b_f = 2``, ``sigma_v_f = 0``) 0.8041 +- 0.0004 against the dense tied
  ``nn.LSTMCell``, 0.8062 +- 0.0014, and the untied prediction 0.7767. Tied convolutional and tied dense networks
  agree; where both depart from the untied theory (the LSTM, whose forget gate is modulated by a slowly varying
  :math:`h`), the departure belongs to tied weights, not to the convolution.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import sympy as sp
import torch
from torch import nn
from torch.nn import functional as F

from ..cells.gated import GatedCell, gate_hyperparameters
from ..cells.registry import Cell, get_cell
from ..errors import DomainError
from ..theory.critical_gated import SIGMA_W_DEFAULT, gated_for_timescale
from .gated import _compile
from .nn import haar_orthogonal
from .simulate_gated import _generators

__all__ = ["ConvGatedCell", "ConvGatedRNN", "conv_term", "init_conv_gated_", "critical_conv_init_",
           "default_conv_init_", "measure_conv", "PADDINGS", "KERNELS"]

PADDINGS = ("circular", "zeros")
KERNELS = ("gaussian", "delta-orthogonal")


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DomainError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _odd(name: str, value) -> int:
    k = _int(name, value, 1)
    if k % 2 == 0:
        raise DomainError(f"{name} must be odd (a centred window), got {k}")
    return k


def _cell(cell) -> GatedCell:
    cell = get_cell(cell)
    return cell.as_gated() if isinstance(cell, Cell) else cell


_WINDOWS: dict = {}


def _window(L: int, K: int, padding: str, device) -> torch.Tensor:
    r"""Index ``(K, L)`` of the position read by tap :math:`k` at position :math:`p`: :math:`p + k - \lfloor K/2
    \rfloor` modulo :math:`L` (circular) or shifted into the zero-padded signal (zeros)."""
    key = (L, K, padding, str(device))
    if key not in _WINDOWS:
        idx = torch.arange(L)[None, :] + torch.arange(K)[:, None]
        _WINDOWS[key] = ((idx - K // 2) % L if padding == "circular" else idx).to(device)
    return _WINDOWS[key]


def conv_term(y: torch.Tensor, weight: torch.Tensor, padding: str) -> torch.Tensor:
    r"""``(W * y)``: ``y`` ``(batch, C_in, L)``, ``weight`` ``(C_out, C_in, K)`` (odd :math:`K`), the output
    ``(batch, C_out, L)``, position :math:`p` reading :math:`p + k - \lfloor K/2\rfloor` (modulo :math:`L` for
    ``padding="circular"``, zero outside for ``"zeros"``); ``F.conv1d`` up to rounding.

    Computed as one matrix product of the kernel :math:`(C_{out}, C_{in}K)` with the windows
    :math:`(C_{in}K, \text{batch}\cdot L)`: for the small signals of a recurrent step this is about twice as fast
    as ``F.conv1d`` forward and backward on a CPU."""
    B, C_in, L = y.shape
    C_out, _, K = weight.shape
    if padding == "zeros" and K > 1:
        y = F.pad(y, (K // 2, K // 2))
    cols = y[:, :, _window(L, K, padding, y.device)].permute(1, 2, 0, 3).reshape(C_in * K, B * L)
    return torch.mm(weight.reshape(C_out, C_in * K), cols).reshape(C_out, B, L).transpose(0, 1)


class ConvGatedCell(nn.Module):
    r"""One step of a convolutional gated cell: ``forward(x, state) -> new state`` (module docstring).

    ``cell``: a registered name, a :class:`~mftrnn.cells.gated.GatedCell` or a single-state :class:`~mftrnn.Cell`.
    ``x`` is ``(batch, in_channels, L)``, each state ``(batch, channels, L)``, tuples in the order of
    ``cell.states``. Parameters per gate :math:`K`: ``weight_hh_K`` ``(channels, channels, kernel_size)``,
    ``weight_ih_K`` ``(channels, in_channels, input_kernel_size)`` (default ``kernel_size``), ``bias_K``
    ``(channels,)``, each present when some field of the gate has that term. Initialised by
    :func:`init_conv_gated_` with its defaults.
    """

    def __init__(self, cell, channels: int, in_channels: int, kernel_size: int = 3, *,
                 input_kernel_size: int | None = None, padding: str = "circular", dtype=torch.float32):
        super().__init__()
        cell = _cell(cell)
        C, C_in = _int("channels", channels, 1), _int("in_channels", in_channels, 1)
        K = _odd("kernel_size", kernel_size)
        K_in = K if input_kernel_size is None else _odd("input_kernel_size", input_kernel_size)
        if padding not in PADDINGS:
            raise DomainError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        in_update = any(cell.input in sp.sympify(e).free_symbols for e in cell.explicit_updates().values())
        if in_update and C_in != C:
            raise DomainError(f"cell {cell.name!r} adds its input to the state, so in_channels must equal channels, "
                              f"got {C_in} != {C}")
        self.cell, self.channels, self.in_channels = cell, C, C_in
        self.kernel_size, self.input_kernel_size, self.padding = K, K_in, padding
        for g in cell.gates:
            fields = [f for f in cell.fields if f.gate == g]
            shapes = {"weight_hh": ((C, C, K), any(f.reads is not None for f in fields)),
                      "weight_ih": ((C, C_in, K_in), any(f.input for f in fields)),
                      "bias": ((C,), any(f.bias for f in fields))}
            for name, (shape, present) in shapes.items():
                if present:
                    self.register_parameter(f"{name}_{g}", nn.Parameter(torch.empty(shape, dtype=dtype)))
        # the cell's expressions, compiled as DerivedCell compiles them
        known = tuple(cell.states) + (cell.input,)
        self._reads, self._groups = {}, {}
        for f in cell.fields:
            if not (f.reads is not None or f.input or f.bias):
                raise DomainError(f"field {f.symbol} of cell {cell.name!r} has no term")
            if f.reads is not None:
                y = sp.sympify(f.reads)
                if y not in self._reads:
                    self._reads[y] = _compile(y, known, f"field {f.symbol} of cell {cell.name!r}")
                self._groups.setdefault(y, []).append(f)
            known += (f.symbol,)
        self._updates = []
        for new, expr in cell.updates:
            self._updates.append((new, _compile(expr, known, f"update of {new} in cell {cell.name!r}")))
            known += (new,)
        self._input_gates = [g for g in cell.gates if hasattr(self, f"weight_ih_{g}")]
        init_conv_gated_(self)

    # -- the two halves of a field: input terms (whole sequences at once) and recurrent terms (per step)
    def input_terms(self, x: torch.Tensor) -> dict:
        """``{field symbol: [V_K * x, b_K]}`` (the terms the field has, in that order; the bias as ``(channels, 1)``)
        for ``x`` of shape ``(n, in_channels, L)``; added after the recurrent term in :meth:`step`, in the order of
        :class:`~mftrnn.nets.gated.DerivedCell`."""
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise DomainError(f"input must have shape (batch, {self.in_channels}, L), got {tuple(x.shape)}")
        parts = {}
        if self._input_gates:
            V = torch.cat([getattr(self, f"weight_ih_{g}") for g in self._input_gates])
            parts = dict(zip(self._input_gates, conv_term(x, V, self.padding).split(self.channels, dim=1)))
        out = {}
        for f in self.cell.fields:
            out[f.symbol] = (([parts[f.gate]] if f.input else [])
                             + ([getattr(self, f"bias_{f.gate}")[:, None]] if f.bias else []))
        return out

    def recurrent_weights(self) -> dict:
        """``{reads expression: the kernels of the fields reading it, stacked along the output channels}``."""
        return {y: torch.cat([getattr(self, f"weight_hh_{f.gate}") for f in fs]) for y, fs in self._groups.items()}

    def step(self, pre: dict, x: torch.Tensor | None, state: tuple, weights: dict) -> tuple:
        """One step given the input terms ``pre`` (:meth:`input_terms` at this step), the input (``None`` when the
        updates do not use it) and :meth:`recurrent_weights`."""
        env = self._fields(pre, x, state, weights)
        for new, (fn, args) in self._updates:
            env[new] = fn(*(env[s] for s in args))
        return tuple(env[new] for new in self.cell.new_states)

    def fields(self, x: torch.Tensor, state: tuple) -> dict:
        """``{field symbol: value}`` at one step (``x`` ``(batch, in_channels, L)``, ``state`` as for
        :meth:`forward`): the Gaussian sums the theory sees."""
        state = self._check_state(state, x.shape[0], x.shape[-1])
        env = self._fields(self.input_terms(x), x, state, self.recurrent_weights())
        return {f.symbol: env[f.symbol] for f in self.cell.fields}

    def _fields(self, pre: dict, x, state: tuple, weights: dict) -> dict:
        env = dict(zip(self.cell.states, state))
        env[self.cell.input] = x
        rec = {}
        for f in self.cell.fields:
            terms = []
            if f.reads is not None:
                y = sp.sympify(f.reads)
                if y not in rec:
                    fn, args = self._reads[y]
                    out = conv_term(fn(*(env[s] for s in args)), weights[y], self.padding)
                    rec[y] = dict(zip((g.symbol for g in self._groups[y]), out.split(self.channels, dim=1)))
                terms.append(rec[y][f.symbol])
            terms += pre[f.symbol]
            env[f.symbol] = sum(terms[1:], terms[0])
        return env

    def _check_state(self, state, batch: int, L: int) -> tuple:
        if not isinstance(state, (tuple, list)) or len(state) != len(self.cell.states):
            raise DomainError(f"state must be a tuple of {len(self.cell.states)} tensor(s) "
                              f"({', '.join(map(str, self.cell.states))})")
        for s in state:
            if tuple(s.shape) != (batch, self.channels, L):
                raise DomainError(f"each state must have shape ({batch}, {self.channels}, {L}), got {tuple(s.shape)}")
        return tuple(state)

    def forward(self, x: torch.Tensor, state: tuple | None = None) -> tuple:
        pre = self.input_terms(x)
        if state is None:
            state = tuple(x.new_zeros(x.shape[0], self.channels, x.shape[-1]) for _ in self.cell.states)
        state = self._check_state(state, x.shape[0], x.shape[-1])
        return self.step(pre, x, state, self.recurrent_weights())

    def extra_repr(self) -> str:
        return (f"{self.cell.name!r}, channels={self.channels}, in_channels={self.in_channels}, "
                f"kernel_size={self.kernel_size}, input_kernel_size={self.input_kernel_size}, "
                f"padding={self.padding!r}")


class ConvGatedRNN(nn.Module):
    r"""Stacked :class:`ConvGatedCell` layers over a sequence: ``ConvGatedRNN(get_cell("lstm"), channels=C,
    in_channels=C_in, kernel_size=K)`` is a ConvLSTM, ``get_cell("gru")`` a ConvGRU (PyTorch's gate conventions).

    ``forward(x, state=None) -> (outputs, state)``: ``x`` is ``(seq_len, batch, in_channels, L)``; ``outputs`` the
    last layer's ``cell.output`` at every step, ``(seq_len, batch, channels, L)``; ``state`` a tuple in the order of
    ``cell.states`` of ``(num_layers, batch, channels, L)`` tensors (zeros when omitted). Layer :math:`l>0` reads
    the outputs of layer :math:`l-1`.
    """

    def __init__(self, cell, channels: int, in_channels: int, kernel_size: int = 3, *, num_layers: int = 1,
                 input_kernel_size: int | None = None, padding: str = "circular", dtype=torch.float32):
        super().__init__()
        cell = _cell(cell)
        num_layers = _int("num_layers", num_layers, 1)
        self.cell, self.channels = cell, int(channels)
        self.layers = nn.ModuleList(
            ConvGatedCell(cell, channels, in_channels if l == 0 else channels, kernel_size,
                          input_kernel_size=input_kernel_size, padding=padding, dtype=dtype)
            for l in range(num_layers))
        self._uses_input = any(cell.input in sp.sympify(e).free_symbols for e in cell.explicit_updates().values())

    def forward(self, x: torch.Tensor, state: tuple | None = None) -> tuple:
        first = self.layers[0]
        if x.dim() != 4 or x.shape[2] != first.in_channels:
            raise DomainError(f"input must have shape (seq_len, batch, {first.in_channels}, L), got {tuple(x.shape)}")
        T, B, _, L = x.shape
        if state is None:
            state = tuple(x.new_zeros(len(self.layers), B, self.channels, L) for _ in self.cell.states)
        if not isinstance(state, (tuple, list)) or len(state) != len(self.cell.states):
            raise DomainError(f"state must be a tuple of {len(self.cell.states)} tensor(s)")
        k = self.cell.new_states.index(self.cell.output)
        out, finals = x, []
        for l, layer in enumerate(self.layers):
            s = layer._check_state(tuple(st[l] for st in state), B, L)
            flat = layer.input_terms(out.reshape(T * B, out.shape[2], L))
            # per-step views by unbind (one backward for all steps; indexing [t] would cost O(T) each)
            pre = {sym: [[t] * T if t.dim() == 2 else t.reshape(T, B, self.channels, L).unbind(0) for t in ts]
                   for sym, ts in flat.items()}
            xs = out.unbind(0) if self._uses_input else [None] * T
            weights, ys = layer.recurrent_weights(), []
            for t in range(T):
                pre_t = {sym: [v[t] for v in vs] for sym, vs in pre.items()}
                s = layer.step(pre_t, xs[t], s, weights)
                ys.append(s[k])
            out = torch.stack(ys)
            finals.append(s)
        return out, tuple(torch.stack(per_layer) for per_layer in zip(*finals))


# --------------------------------------------------------------------------- initialisation
def _layers(module) -> list:
    if isinstance(module, ConvGatedRNN):
        return list(module.layers)
    if isinstance(module, ConvGatedCell):
        return [module]
    raise DomainError(f"expected a ConvGatedCell or ConvGatedRNN, got {type(module).__name__}")


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise DomainError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise DomainError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def _normal(shape, mean: float, std: float, generator, draw_dtype) -> torch.Tensor:
    """``mean + std * z`` in float64, the standard normals ``z`` drawn in ``draw_dtype``."""
    return mean + std * torch.randn(tuple(shape), generator=generator, dtype=draw_dtype).double()


def _draw_conv(layer: ConvGatedCell, g: str, hp: dict, kernel: str, generator,
               draw_dtype=torch.float64) -> None:
    W = getattr(layer, f"weight_hh_{g}", None)
    if W is not None:
        C, _, K = W.shape
        if kernel == "gaussian":
            W.copy_(_normal(W.shape, 0.0, hp["sigma_w"] / math.sqrt(C * K), generator, draw_dtype))
        else:
            W.zero_()
            W[:, :, K // 2] = (hp["sigma_w"] * haar_orthogonal(C, C, generator=generator)).to(W)
    V = getattr(layer, f"weight_ih_{g}", None)
    if V is not None:
        V.copy_(_normal(V.shape, 0.0, hp["sigma_v"] / math.sqrt(V.shape[1] * V.shape[2]), generator, draw_dtype))
    b = getattr(layer, f"bias_{g}", None)
    if b is not None:
        b.copy_(_normal(b.shape, hp["mu_b"], hp["sigma_b"], generator, draw_dtype))
    elif hp["mu_b"] or hp["sigma_b"]:
        raise DomainError(f"gate {g} has no bias, so mu_b_{g} and sigma_b_{g} must be 0")


@torch.no_grad()
def init_conv_gated_(module, *, kernel: str = "gaussian", generator: torch.Generator | None = None,
                     **hyperparameters) -> dict:
    r"""Draw the kernels and biases in place with the mean-field statistics; return ``{gate: {kind: float}}``.

    :math:`W_{jik}\sim\mathcal N(0,\sigma_{w,K}^2/(CK))` (``kernel="gaussian"``) or the delta-orthogonal kernel
    :math:`W_{:,:,\lfloor K/2\rfloor}=\sigma_{w,K}O` (``"delta-orthogonal"``, :math:`O` Haar), :math:`V_{jik}\sim
    \mathcal N(0,\sigma_{v,K}^2/(C_{in}K_{in}))`, :math:`b_j\sim\mathcal N(\mu_{b,K},\sigma_{b,K}^2)` in every layer.
    ``hyperparameters`` as in :func:`~mftrnn.cells.gated.gate_hyperparameters` (scalars; ``R`` unused)."""
    layers = _layers(module)
    _check_kernel(kernel)
    _check_generator(generator)
    cell = layers[0].cell
    per_gate, _ = gate_hyperparameters(cell, hyperparameters)
    if any(a.ndim for hp in per_gate.values() for a in hp.values()):
        raise DomainError("init_conv_gated_ takes scalar hyperparameters only (one network), got arrays")
    per_gate = {g: {k: float(a) for k, a in hp.items()} for g, hp in per_gate.items()}
    for layer in layers:
        for g in cell.gates:
            _draw_conv(layer, g, per_gate[g], kernel, generator)
    return per_gate


@functools.lru_cache(maxsize=64)
def _critical_solution(cell: GatedCell, T, k, sigma_w, sigma_v, R, orthogonal, samples) -> dict:
    """:func:`~mftrnn.theory.critical_gated.gated_for_timescale`, cached per process (a pure function of its
    arguments; seconds per call): a grid of runs solves each (cell, T) once."""
    return gated_for_timescale(cell, T, k=k, sigma_w=sigma_w, sigma_v=sigma_v, R=R, orthogonal=orthogonal,
                               samples=samples)


@torch.no_grad()
def critical_conv_init_(module, T, *, k: float = 1.0, sigma_w: float = SIGMA_W_DEFAULT, sigma_v: float = 1.0,
                        R: float = 1.0, kernel: str = "gaussian", generator: torch.Generator | None = None,
                        samples: int = 200_000) -> dict:
    r"""Critical initialisation of a :class:`ConvGatedCell` / :class:`ConvGatedRNN` for a task of length ``T``.

    The per-gate hyperparameters of each layer are those of the dense gated cell for the timescale
    :math:`\xi = kT` (:func:`mftrnn.theory.critical_gated.gated_for_timescale`: the memory gate's bias, the memory
    gate blind to the input, recurrent scale ``sigma_w``), valid for the conv module by the channels-as-width mapping
    (module docstring); the kernels are drawn by :func:`init_conv_gated_` with ``kernel``
    (``"delta-orthogonal"`` also asks the solver for the orthogonal Jacobian spectrum). Layer :math:`l>1` is solved
    for :math:`R = Q^*` of the layer below. ``R``: second moment per component of the module's input.

    Returns the first layer's result of ``gated_for_timescale`` (per-gate hyperparameters, ``Q_star``, ``chi``,
    ``xi``, spectrum) with ``kernel``, ``fan_in`` (:math:`CK`, or :math:`C` for the delta-orthogonal kernel),
    ``num_layers`` and ``layers`` (every layer's result), JSON-ready. Solutions are cached per process.
    """
    layers = _layers(module)
    _check_kernel(kernel)
    _check_generator(generator)
    cell = layers[0].cell
    results, R_l = [], R
    for layer in layers:
        try:
            hp = dict(_critical_solution(cell, T, k, sigma_w, sigma_v, R_l, kernel == "delta-orthogonal", samples))
        except TypeError:  # an unhashable argument: the solver checks it and says what is wrong
            hp = gated_for_timescale(cell, T, k=k, sigma_w=sigma_w, sigma_v=sigma_v, R=R_l,
                                     orthogonal=kernel == "delta-orthogonal", samples=samples)
        for g in cell.gates:
            _draw_conv(layer, g, {kind: float(hp[f"{kind}_{g}"]) for kind in ("sigma_w", "sigma_v", "sigma_b",
                                                                                "mu_b")}, kernel, generator)
        results.append(hp)
        R_l = hp["Q_star"]
    first = layers[0]
    out = dict(results[0])
    out.update(kernel=kernel, num_layers=len(results), layers=results,
               fan_in=first.channels * (1 if kernel == "delta-orthogonal" else first.kernel_size))
    return out


@torch.no_grad()
def default_conv_init_(module, generator: torch.Generator | None = None) -> dict:
    r"""PyTorch-like default: every kernel :math:`\mathcal U(-1/\sqrt{\text{fan-in}}, 1/\sqrt{\text{fan-in}})` with
    its own fan-in (:math:`CK` recurrent, :math:`C_{in}K_{in}` input; ``nn.Conv1d``'s bound), every bias
    :math:`\mathcal U(-1/\sqrt{CK}, 1/\sqrt{CK})` (``nn.GRU``'s convention, hidden size :math:`\to CK`). Returns the
    bounds used, ``{parameter name: bound}``."""
    _check_generator(generator)
    bounds = {}
    for l, layer in enumerate(_layers(module)):
        fan = layer.channels * layer.kernel_size
        for name, p in layer.named_parameters():
            a = 1.0 / math.sqrt(p.shape[1] * p.shape[2] if p.dim() == 3 else fan)
            p.copy_((2 * torch.rand(p.shape, generator=generator, dtype=torch.float64) - 1) * a)
            bounds[f"layers.{l}.{name}"] = a
    return bounds


# --------------------------------------------------------------------------- Monte Carlo of the module
def _total_sq(state) -> torch.Tensor:
    """Per batch row, the squared norm of the whole state (every state tensor)."""
    return sum((s * s).sum(dim=(1, 2)) for s in state)


def _mean_se(per_network: np.ndarray) -> tuple[float, float]:
    n = len(per_network)
    se = float(per_network.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(per_network.mean()), se


def measure_conv(cell, channels: int = 64, length: int = 32, kernel_size: int = 3, *, kernel: str = "gaussian",
                 tied: bool = True, T: int = 200, burn_in: int = 100, settle: int = 20, n_networks: int = 4,
                 in_channels: int | None = None, padding: str = "circular", seed: int = 0, eps: float = 1e-6,
                 **hyperparameters) -> dict:
    r"""Monte Carlo of random :class:`ConvGatedCell` networks: state second moments, neighbour correlation and
    :math:`\chi` (Benettin), to compare with :func:`mftrnn.gated_fixed_point` at the same hyperparameters.

    Each of ``n_networks`` networks (float64, kernels from :func:`init_conv_gated_` with ``kernel`` and
    ``hyperparameters``; ``tied=False``: fresh kernels before every step, shared by both copies) is fed
    :math:`x_t \sim \mathcal N(0, R)` i.i.d. over steps, channels and positions (``in_channels`` defaults to
    ``channels``). The reference runs ``burn_in`` steps from zero; a copy displaced by :math:`\delta` of norm
    :math:`\varepsilon\sqrt{CL}` over the whole state then runs beside it for ``T`` steps with the same inputs, the
    one-step ratio :math:`r_t=|\delta_t|^2/|\delta_{t-1}|^2` recorded and :math:`\delta_t` renormalised; the first
    ``settle`` steps are discarded. Untied redraws take their standard normals in float32 (as
    :mod:`mftrnn.nets.simulate_gated`: 24-bit samples, about five times faster), scaled in float64.

    Returns ``chi`` (:math:`\exp` of the mean :math:`\log r_t`; the Lyapunov rate), ``chi_arith`` (the mean of
    :math:`r_t`), ``Q_<state>`` (:math:`\overline{s^2}` over channels, positions and kept steps, e.g. ``Q_h``,
    ``Q_c``), ``corr_<output>`` (the lag-1 correlation across positions of the output state,
    :math:`\sum_{j,p}s_{j,p}s_{j,p+1}/\sum_{j,p}s_{j,p}^2`, cyclic), each with ``_se`` (standard deviation over
    networks / :math:`\sqrt{n}`: networks are independent, steps within one are not) and ``_per_network``.
    """
    cell = _cell(cell)
    C, L = _int("channels", channels, 1), _int("length", length, 1)
    T, burn_in, settle = _int("T", T, 1), _int("burn_in", burn_in, 0), _int("settle", settle, 0)
    n_networks = _int("n_networks", n_networks, 1)
    if settle >= T:
        raise DomainError(f"settle ({settle}) must be smaller than T ({T})")
    if not 0 < eps < 1e-2:
        raise DomainError(f"eps must lie in (0, 1e-2), got {eps!r}")
    _check_kernel(kernel)
    C_in = C if in_channels is None else _int("in_channels", in_channels, 1)
    per_gate, R = gate_hyperparameters(cell, hyperparameters)
    if np.ndim(R) != 0 or any(np.ndim(a) for hp in per_gate.values() for a in hp.values()):
        raise DomainError("measure_conv takes scalar hyperparameters only")
    per_gate = {g: {k: float(a) for k, a in hp.items()} for g, hp in per_gate.items()}
    sqrt_R, dt = math.sqrt(float(R)), torch.float64
    names = [str(s) for s in cell.states]
    k_out = cell.new_states.index(cell.output)
    S = T - settle
    logs = np.zeros((n_networks, S))
    Q = np.zeros((len(names), n_networks))
    corr = np.zeros(n_networks)
    d0 = eps * math.sqrt(C * L)
    with torch.no_grad():
        for n, (g_data, g_weights, g_pert) in enumerate(_generators(seed, n_networks, "cpu")):
            module = ConvGatedCell(cell, C, C_in, kernel_size, padding=padding, dtype=dt)
            init_conv_gated_(module, kernel=kernel, generator=g_weights, **hyperparameters)

            def step(state):
                if not tied:  # standard normals in float32 (as simulate_gated: 24-bit samples, ~5x faster)
                    for g in cell.gates:
                        _draw_conv(module, g, per_gate[g], kernel, g_weights, torch.float32)
                x = sqrt_R * torch.randn(1, C_in, L, generator=g_data, dtype=dt)
                return module(x.expand(state[0].shape[0], -1, -1), state)

            ref = tuple(torch.zeros(1, C, L, dtype=dt) for _ in names)
            for _ in range(burn_in):
                ref = step(ref)
            delta = [torch.randn(1, C, L, generator=g_pert, dtype=dt) for _ in names]
            scale = d0 / math.sqrt(float(_total_sq(delta)))
            state = tuple(torch.cat([r, r + scale * d]) for r, d in zip(ref, delta))
            prev = d0 ** 2
            q, c_num, c_den = np.zeros(len(names)), 0.0, 0.0
            for t in range(T):
                state = step(state)
                diff = [s[1:] - s[:1] for s in state]
                now = float(_total_sq(diff))
                if t >= settle:
                    logs[n, t - settle] = math.log(now / prev)
                    for j, s in enumerate(state):
                        q[j] += float((s[0] * s[0]).mean()) / S
                    o = state[k_out][0]
                    c_num += float((o * torch.roll(o, 1, dims=-1)).sum())
                    c_den += float((o * o).sum())
                rescale = d0 / math.sqrt(now)
                state = tuple(torch.cat([s[:1], s[:1] + rescale * d]) for s, d in zip(state, diff))
                prev = d0 ** 2
            Q[:, n], corr[n] = q, (c_num / c_den if c_den > 0 else 0.0)
    per_chi = np.exp(logs.mean(axis=1))
    per_arith = np.exp(logs).mean(axis=1)
    out = {"cell": cell.name, "channels": C, "length": L, "kernel_size": kernel_size, "kernel": kernel,
           "tied": bool(tied), "T": T, "burn_in": burn_in, "settle": settle, "n_networks": n_networks,
           "padding": padding, "seed": seed}
    chi, _ = _mean_se(logs.mean(axis=1))
    out["chi"] = math.exp(chi)
    out["chi_se"] = out["chi"] * _mean_se(logs.mean(axis=1))[1]   # delta method on exp(mean log)
    out["chi_per_network"] = per_chi
    out["chi_arith"], out["chi_arith_se"] = _mean_se(per_arith)
    out["chi_arith_per_network"] = per_arith
    for j, name in enumerate(names):
        out[f"Q_{name}"], out[f"Q_{name}_se"] = _mean_se(Q[j])
        out[f"Q_{name}_per_network"] = Q[j]
    out_name = names[cell.states.index(cell.previous_of(cell.output))]
    out[f"corr_{out_name}"], out[f"corr_{out_name}_se"] = _mean_se(corr)
    out[f"corr_{out_name}_per_network"] = corr
    return out

r"""A fast multi-step, multi-layer minimalRNN with an :class:`torch.nn.LSTM`-like interface.

Each layer :math:`l` runs the minimalRNN of :mod:`mftrnn.nets.nn` over a whole
sequence (width :math:`N`, input dimension :math:`N_{in}`):

.. math::

    z_t = \Phi x_t + \phi_b, \qquad
    e_t = W h_{t-1} + V z_t + b, \qquad
    u_t = \sigma(e_t), \qquad
    h_t = u_t \odot h_{t-1} + (1 - u_t) \odot z_t = z_t + u_t \odot (h_{t-1} - z_t).

The embedding :math:`\Phi` (shape ``(N, N_in)``) and :math:`\phi_b` make the
input live in the state space; with ``embed=False`` (only if
:math:`N_{in} = N`) it is the identity, :math:`z_t = x_t`.  Layer
:math:`l > 0` reads the states of layer :math:`l - 1` (after dropout in
training mode, as in :class:`torch.nn.LSTM`).

Speed.  The recurrence needs a single :math:`N \times N` matrix product per
step (the LSTM needs one :math:`4N \times N` product).  All input-side work
is done for the whole sequence at once, :math:`Z = X\Phi^T + \phi_b` and
:math:`A = Z V^T + b` (two large matrix products), so that the time loop is
only ``addmm`` + ``sigmoid`` + ``lerp``.  The backward pass is written by hand
(:class:`MinimalRecurrence`): with :math:`g_t = \partial L/\partial h_t`
(including the recurrent contribution), :math:`k_t = u_t(1-u_t)(h_{t-1} - z_t)`,

.. math::

    \delta_t = g_t \odot k_t = \frac{\partial L}{\partial e_t}, \qquad
    \frac{\partial L}{\partial h_{t-1}} \mathrel{+}= g_t \odot u_t + \delta_t W,

again one :math:`N \times N` product per step, and afterwards, for the whole
sequence at once, :math:`\partial L/\partial W = \sum_t \delta_t^T h_{t-1}`,
:math:`\partial L/\partial a_t = \delta_t` and the direct
:math:`\partial L/\partial z_t = g_t \odot (1 - u_t)`; autograd does the rest
(:math:`V, b, \Phi, \phi_b, x`) through the two large products.

Measured on a 2-core AVX-512 CPU (torch 2.13, float32, forward + backward,
seq 35, batch 20; ``python -m mftrnn.experiments.bench_layers``): the hand-written
backward gives 1.6x (N=256) and 1.5x (N=650) the throughput of the plain
autograd loop; ``backend="compile"`` (:func:`torch.compile` of the whole
loop) costs ~37 s of compilation per shape and is still 1.3-1.5x *slower*
than the hand-written backward there, so it is opt-in only.
"""

from __future__ import annotations

import math
import types
import warnings

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .nn import check_hyperparameters, init_

__all__ = [
    "MinimalRNN",
    "MinimalRecurrence",
    "minimal_scan",
    "init_minimal_rnn_",
    "BACKENDS",
]

#: Implementations of the time loop accepted by :class:`MinimalRNN` / :func:`minimal_scan`.
BACKENDS = ("function", "autograd", "compile")


# ----------------------------------------------------------------------------- time loop
def _scan_forward(a: torch.Tensor, z: torch.Tensor, h0: torch.Tensor, W: torch.Tensor):
    r"""Run :math:`h_t = z_t + \sigma(a_t + W h_{t-1}) \odot (h_{t-1} - z_t)`; return ``(H, U)``.

    ``a``, ``z``: ``(T, B, N)``; ``h0``: ``(B, N)``.  ``H[t] = h_t`` and
    ``U[t] = u_t``, both ``(T, B, N)``, written in place (no autograd).
    """
    H = torch.empty_like(a, memory_format=torch.contiguous_format)
    U = torch.empty_like(H)
    Wt = W.t()
    h = h0
    for a_t, z_t, u_t, h_t in zip(a.unbind(0), z.unbind(0), U.unbind(0), H.unbind(0)):
        torch.addmm(a_t, h, Wt, out=u_t)
        u_t.sigmoid_()
        torch.lerp(z_t, h, u_t, out=h_t)
        h = h_t
    return H, U


def _previous_states(h0: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``(h_0, h_1, ..., h_{T-1})`` stacked to ``(T, B, N)``."""
    return torch.cat([h0.unsqueeze(0), H[:-1]], dim=0)


def _scan_backward(grad_H, z, h0, W, H, U):
    r"""Hand-written backward of :func:`_scan_forward`; returns ``(dA, dZ, dh0, dW)``.

    One :math:`N\times N` product per step (:math:`\delta_t W`); the weight
    gradient :math:`\sum_t \delta_t^T h_{t-1}` is one large product at the end.
    """
    T, B, N = H.shape
    grad_H = grad_H.contiguous()
    H_prev = _previous_states(h0, H)
    K = (H_prev - z).mul_(U).mul_(1.0 - U)          # k_t = u(1-u)(h_{t-1} - z_t)
    G = torch.empty_like(H)                          # g_t = dL/dh_t (total)
    D = torch.empty_like(H)                          # delta_t = dL/de_t
    carry = None
    for t in range(T - 1, -1, -1):
        g_t = G[t]
        if carry is None:
            g_t.copy_(grad_H[t])
        else:
            torch.add(grad_H[t], carry, out=g_t)
        torch.mul(g_t, K[t], out=D[t])
        carry = torch.addmm(g_t * U[t], D[t], W)     # dL/dh_{t-1} from step t
    dZ = G.mul_(1.0 - U)                             # direct path h_t <- z_t
    dW = D.reshape(T * B, N).t().mm(H_prev.reshape(T * B, N))
    return D, dZ, carry, dW


class MinimalRecurrence(torch.autograd.Function):
    r"""``H = MinimalRecurrence.apply(a, z, h0, W)``: the minimalRNN time loop with a hand-written backward.

    :math:`h_t = z_t + \sigma(a_t + W h_{t-1}) \odot (h_{t-1} - z_t)` for
    ``a``, ``z`` of shape ``(T, B, N)``, ``h0`` ``(B, N)``, ``W`` ``(N, N)``;
    returns all states ``(T, B, N)``.  First derivatives only (use
    ``backend="autograd"`` for higher ones).
    """

    @staticmethod
    def forward(ctx, a, z, h0, W):
        H, U = _scan_forward(a, z, h0, W)
        ctx.save_for_backward(z, h0, W, H, U)
        return H

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_H):
        z, h0, W, H, U = ctx.saved_tensors
        dA, dZ, dh0, dW = _scan_backward(grad_H, z, h0, W, H, U)
        need = ctx.needs_input_grad
        return (dA if need[0] else None, dZ if need[1] else None,
                dh0 if need[2] else None, dW if need[3] else None)


def _scan_autograd(a, z, h0, W):
    """Plain differentiable loop (``addmm`` + ``sigmoid`` + ``lerp``); autograd does the backward."""
    Wt = W.t()
    h = h0
    out = []
    for t in range(a.shape[0]):
        u = torch.sigmoid(torch.addmm(a[t], h, Wt))
        h = torch.lerp(z[t], h, u)
        out.append(h)
    return torch.stack(out)


_COMPILED = {}


def _scan_compiled(a, z, h0, W):
    """:func:`torch.compile` of the whole autograd loop; falls back to :class:`MinimalRecurrence`.

    Compiled per shape (``dynamic=False``, the loop is unrolled).  Any failure
    (no compiler, unsupported platform, ...) gives a warning once and the
    hand-written :class:`MinimalRecurrence` from then on.
    """
    fn = _COMPILED.get("scan")
    if fn is None:
        try:
            fn = torch.compile(_scan_autograd, dynamic=False)
        except Exception as exc:  # pragma: no cover - depends on the platform
            fn = _fallback(exc)
        _COMPILED["scan"] = fn
    try:
        return fn(a, z, h0, W)
    except Exception as exc:
        if fn is MinimalRecurrence.apply:
            raise
        _COMPILED["scan"] = _fallback(exc)
        return MinimalRecurrence.apply(a, z, h0, W)


def _fallback(exc: Exception):
    warnings.warn(f"torch.compile is unavailable here ({type(exc).__name__}: {exc}); "
                  "using the hand-written MinimalRecurrence instead", RuntimeWarning, stacklevel=3)
    return MinimalRecurrence.apply


def _check_scan_shapes(a, z, h0, W) -> None:
    """``a``, ``z``: ``(T, B, N)`` with ``T, B >= 1``; ``h0``: ``(B, N)``; ``W``: ``(N, N)``; else ValueError."""
    if a.dim() != 3 or a.shape != z.shape:
        raise ValueError(f"a and z must both be (T, B, N), got {tuple(a.shape)} and {tuple(z.shape)}")
    T, B, N = a.shape
    if T < 1 or B < 1:
        raise ValueError(f"need T, B >= 1, got T={T}, B={B}")
    if tuple(h0.shape) != (B, N) or tuple(W.shape) != (N, N):
        raise ValueError(f"need h0 of shape {(B, N)} and W of shape {(N, N)}, "
                         f"got {tuple(h0.shape)} and {tuple(W.shape)}")


def minimal_scan(a: torch.Tensor, z: torch.Tensor, h0: torch.Tensor, W: torch.Tensor,
                 backend: str = "function") -> torch.Tensor:
    r"""All states of :math:`h_t = z_t + \sigma(a_t + W h_{t-1}) \odot (h_{t-1} - z_t)`, shape ``(T, B, N)``.

    ``a = V z + b`` and ``z`` are precomputed for the whole sequence.
    ``backend``: ``"function"`` (default; :class:`MinimalRecurrence`, hand-written
    backward), ``"autograd"`` (plain loop, any order of derivatives) or
    ``"compile"`` (:func:`torch.compile` of the plain loop, with fallback).
    Without gradients the in-place loop runs directly.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_scan_shapes(a, z, h0, W)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (a, z, h0, W))
    if not needs_grad:
        return _scan_forward(a, z, h0, W)[0]
    if backend == "autograd":
        return _scan_autograd(a, z, h0, W)
    if backend == "compile":
        return _scan_compiled(a, z, h0, W)
    return MinimalRecurrence.apply(a, z, h0, W)


# ----------------------------------------------------------------------------- the layer
def _check_size(name: str, n) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return int(n)


class MinimalRNN(nn.Module):
    r"""Multi-layer minimalRNN over whole sequences, with an :class:`torch.nn.LSTM`-like interface.

    Layer :math:`l` (input :math:`x_t`, the data for :math:`l=0` and the
    states of layer :math:`l-1` otherwise):

    .. math::

        z_t = \Phi x_t + \phi_b, \quad
        u_t = \sigma(W h_{t-1} + V z_t + b), \quad
        h_t = u_t \odot h_{t-1} + (1-u_t) \odot z_t.

    Parameters of layer ``l``: ``weight_hh_l{l}`` (:math:`W`, ``(N, N)``),
    ``weight_ih_l{l}`` (:math:`V`, ``(N, N)``, acting on :math:`z`),
    ``bias_l{l}`` (:math:`b`), and, with ``embed=True``, ``embed_weight_l{l}``
    (:math:`\Phi`, ``(N, N_in)``) and ``embed_bias_l{l}`` (:math:`\phi_b`).

    Initialisation (:func:`init_minimal_rnn_`, the conventions of
    :func:`mftrnn.nets.nn.init_`): :math:`W_{ij}\sim\mathcal N(0,\sigma_w^2/N)`
    (or :math:`\sigma_w O`), :math:`V_{ij}\sim\mathcal N(0,\sigma_v^2/N)`,
    :math:`b_i\sim\mathcal N(\mu_b,\sigma_b^2)`,
    :math:`\Phi_{ij}\sim\mathcal N(0,\sigma_\phi^2/N_{in})`,
    :math:`(\phi_b)_i\sim\mathcal N(0,\sigma_{\phi b}^2)`.  For inputs with
    :math:`|x_t|^2/N_{in} = R_x` the embedded inputs then have
    :math:`|z_t|^2/N \to R = \sigma_\phi^2 R_x + \sigma_{\phi b}^2` as
    :math:`N\to\infty`, the input second moment :math:`R` of the mean-field
    theory (:math:`R = R_x` with ``embed=False``).  Defaults:
    :math:`\sigma_w=\sigma_v=\sigma_\phi=1`, :math:`\sigma_b=\mu_b=\sigma_{\phi b}=0`.

    Parameters
    ----------
    input_size, hidden_size : :math:`N_{in}` and :math:`N`.
    num_layers : number of stacked layers.
    batch_first : inputs/outputs are ``(B, T, *)`` instead of ``(T, B, *)``.
    dropout : dropout probability on the outputs of every layer but the last
        (training mode only).
    embed : learnable embedding :math:`\Phi`; ``False`` (identity) requires
        ``input_size == hidden_size``.
    backend : time-loop implementation, see :func:`minimal_scan`.

    ``forward(x, h0=None) -> (output, h_n)``: ``x`` of shape ``(T, B, N_in)``
    (``(B, T, N_in)`` if ``batch_first``, or unbatched ``(T, N_in)``), ``h0``
    of shape ``(num_layers, B, N)`` (default zeros); ``output`` holds the last
    layer's states ``(T, B, N)`` and ``h_n`` the final state of each layer.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 batch_first: bool = False, dropout: float = 0.0, dtype=torch.float32,
                 device=None, embed: bool = True, backend: str = "function"):
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        dropout = float(dropout)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {dropout!r}")
        if not embed and self.input_size != self.hidden_size:
            raise ValueError("embed=False (z_t = x_t) needs input_size == hidden_size, got "
                             f"{self.input_size} != {self.hidden_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.batch_first = bool(batch_first)
        self.dropout = dropout
        self.embed = bool(embed)
        self.backend = backend
        kw = dict(dtype=dtype, device=device)
        N = self.hidden_size
        for l in range(self.num_layers):
            n_in = self.input_size if l == 0 else N
            if self.embed:
                self.register_parameter(f"embed_weight_l{l}", nn.Parameter(torch.empty(N, n_in, **kw)))
                self.register_parameter(f"embed_bias_l{l}", nn.Parameter(torch.empty(N, **kw)))
            self.register_parameter(f"weight_ih_l{l}", nn.Parameter(torch.empty(N, N, **kw)))
            self.register_parameter(f"weight_hh_l{l}", nn.Parameter(torch.empty(N, N, **kw)))
            self.register_parameter(f"bias_l{l}", nn.Parameter(torch.empty(N, **kw)))
        self.reset_parameters()

    # -- parameters
    def layer_parameters(self, l: int) -> dict:
        """Layer ``l``'s parameters by role: ``W``, ``V``, ``b`` and (with ``embed``) ``Phi``, ``phi_b``."""
        if not 0 <= l < self.num_layers:
            raise ValueError(f"layer index must lie in [0, {self.num_layers}), got {l!r}")
        p = dict(W=getattr(self, f"weight_hh_l{l}"), V=getattr(self, f"weight_ih_l{l}"),
                 b=getattr(self, f"bias_l{l}"))
        if self.embed:
            p.update(Phi=getattr(self, f"embed_weight_l{l}"), phi_b=getattr(self, f"embed_bias_l{l}"))
        return p

    def reset_parameters(self) -> None:
        """Default mean-field initialisation (see :func:`init_minimal_rnn_`)."""
        self.hyperparameters = init_minimal_rnn_(self)

    def init_(self, *args, **kwargs) -> dict:
        """Shorthand for :func:`init_minimal_rnn_` ``(self, ...)``."""
        return init_minimal_rnn_(self, *args, **kwargs)

    # -- forward
    def _check_input(self, x: torch.Tensor, h0: torch.Tensor | None):
        """Validate shapes/dtypes; return ``x`` as ``(T, B, N_in)``, ``h0`` as ``(L, B, N)``, batched flag."""
        W = self.weight_hh_l0
        if x.dim() not in (2, 3):
            raise ValueError(f"x must have 2 (unbatched) or 3 dimensions, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x has {x.shape[-1]} features, expected input_size={self.input_size}")
        if x.dtype != W.dtype:
            raise ValueError(f"x has dtype {x.dtype}, the parameters {W.dtype}")
        batched = x.dim() == 3
        x = (x.transpose(0, 1) if self.batch_first else x) if batched else x.unsqueeze(1)
        T, B = x.shape[:2]
        if T < 1 or B < 1:
            raise ValueError(f"need a sequence length and batch size >= 1, got T={T}, B={B}")
        shape = (self.num_layers, B, self.hidden_size)
        if h0 is None:
            return x, x.new_zeros(shape), batched
        if not batched:
            if h0.dim() != 2:
                raise ValueError(f"unbatched h0 must be (num_layers, hidden_size), got {tuple(h0.shape)}")
            h0 = h0.unsqueeze(1)
        if tuple(h0.shape) != shape:
            raise ValueError(f"h0 must have shape {shape}, got {tuple(h0.shape)}")
        if h0.dtype != W.dtype:
            raise ValueError(f"h0 has dtype {h0.dtype}, the parameters {W.dtype}")
        return x, h0, batched

    def _layer(self, l: int, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        r"""States ``(T, B, N)`` of layer ``l``: :math:`Z = X\Phi^T+\phi_b`, :math:`A = ZV^T+b`, then the loop."""
        p = self.layer_parameters(l)
        z = F.linear(x, p["Phi"], p["phi_b"]) if self.embed else x.contiguous()
        a = F.linear(z, p["V"], p["b"])
        return minimal_scan(a, z, h0, p["W"], backend=self.backend)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        x, h0, batched = self._check_input(x, h0)
        finals = []
        for l in range(self.num_layers):
            if l > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
            x = self._layer(l, x, h0[l])
            finals.append(x[-1])
        h_n = torch.stack(finals)
        if not batched:
            return x.squeeze(1), h_n.squeeze(1)
        return (x.transpose(0, 1) if self.batch_first else x), h_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if not self.embed:
            s += ", embed=False"
        if self.backend != "function":
            s += f", backend={self.backend!r}"
        return s


@torch.no_grad()
def init_minimal_rnn_(rnn: MinimalRNN, sigma_w: float = 1.0, sigma_v: float = 1.0,
                      sigma_b: float = 0.0, mu_b: float = 0.0, orthogonal: bool = False,
                      sigma_phi: float = 1.0, sigma_phib: float = 0.0,
                      generator: torch.Generator | None = None) -> dict:
    r"""Mean-field initialisation of every layer of ``rnn`` in place; return the hyperparameters.

    :math:`W, V, b` as in :func:`mftrnn.nets.nn.init_` (:math:`W_{ij}\sim\mathcal
    N(0,\sigma_w^2/N)` or :math:`W=\sigma_w O` if ``orthogonal``,
    :math:`V_{ij}\sim\mathcal N(0,\sigma_v^2/N)`, :math:`b_i\sim\mathcal
    N(\mu_b,\sigma_b^2)`), and the embedding
    :math:`\Phi_{ij}\sim\mathcal N(0,\sigma_\phi^2/N_{in})`,
    :math:`(\phi_b)_i\sim\mathcal N(0,\sigma_{\phi b}^2)`, so that
    :math:`|z|^2/N \to R = \sigma_\phi^2 |x|^2/N_{in} + \sigma_{\phi b}^2`.
    The returned dict (also stored as ``rnn.hyperparameters``) holds all
    these values; invalid ones raise :class:`ValueError`.
    """
    sigma_w, sigma_v, sigma_b, mu_b = check_hyperparameters(sigma_w, sigma_v, sigma_b, mu_b)
    sigma_phi, sigma_phib, _, _ = check_hyperparameters(sigma_phi, sigma_phib, 0.0, 0.0)
    for l in range(rnn.num_layers):
        p = rnn.layer_parameters(l)
        init_(types.SimpleNamespace(weight_hh=p["W"], weight_ih=p["V"], bias=p["b"]),
              sigma_w, sigma_v, sigma_b, mu_b, orthogonal=orthogonal, generator=generator)
        if rnn.embed:
            Phi, phi_b = p["Phi"], p["phi_b"]
            kw = dict(generator=generator, dtype=Phi.dtype, device=Phi.device)
            Phi.copy_(torch.randn(Phi.shape, **kw) * (sigma_phi / math.sqrt(Phi.shape[1])))
            phi_b.copy_(sigma_phib * torch.randn(phi_b.shape, **kw))
    hp = dict(sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b, mu_b=mu_b,
              orthogonal=bool(orthogonal), sigma_phi=sigma_phi, sigma_phib=sigma_phib)
    rnn.hyperparameters = hp
    return hp

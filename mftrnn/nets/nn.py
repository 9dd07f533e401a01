r"""PyTorch one-step recurrent cells with the mean-field initialisation.

Two cells, in the conventions of Chen, Pennington & Schoenholz (2018):

Vanilla RNN (width :math:`N`, input dimension :math:`N_{in}`)

.. math::

    e_t = W h_{t-1} + V x_t + b, \qquad h_t = \tanh(e_t).

minimalRNN (width :math:`N`; :math:`z_t \in \mathbb{R}^N` is the already
embedded input)

.. math::

    e_t = W h_{t-1} + V z_t + b, \qquad u_t = \sigma(e_t), \qquad
    h_t = u_t \odot h_{t-1} + (1 - u_t) \odot z_t.

Parameters are named ``weight_hh`` (:math:`W`, shape ``(N, N)``),
``weight_ih`` (:math:`V`, shape ``(N, N_in)``) and ``bias`` (:math:`b`,
shape ``(N,)``).  :func:`init_` draws them as in the mean-field theory:

.. math::

    W_{ij} \sim \mathcal N(0, \sigma_w^2/N) \ \text{or}\ W = \sigma_w O,\
    O\ \text{Haar-orthogonal}; \qquad
    V_{ij} \sim \mathcal N(0, \sigma_v^2/N_{in}); \qquad
    b_i \sim \mathcal N(\mu_b, \sigma_b^2).

The update rules themselves live in the pure functions
:func:`vanilla_update` and :func:`minimal_update`, which are shared with the
batched simulator :mod:`mftrnn.nets.simulate`, so that the cells and the simulator
cannot drift apart.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "VanillaRNNCell",
    "MinimalRNNCell",
    "init_",
    "vanilla_update",
    "minimal_update",
    "haar_orthogonal",
    "check_hyperparameters",
]


def vanilla_update(e: torch.Tensor) -> torch.Tensor:
    r"""Vanilla RNN state from the pre-activation: :math:`h_t = \tanh(e_t)`."""
    return torch.tanh(e)


def minimal_update(e: torch.Tensor, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""minimalRNN state: :math:`u=\sigma(e)`, :math:`h_t = u\,h_{t-1} + (1-u)\,z_t`."""
    u = torch.sigmoid(e)
    return u * h + (1.0 - u) * z


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return value


def check_hyperparameters(sigma_w: float, sigma_v: float, sigma_b: float, mu_b: float) -> tuple:
    """Validate (sigma_w, sigma_v, sigma_b, mu_b); return them as floats.

    Standard deviations must be finite and >= 0; ``mu_b`` must be finite.
    Raises :class:`ValueError` otherwise.
    """
    sigma_w = _check_nonneg("sigma_w", sigma_w)
    sigma_v = _check_nonneg("sigma_v", sigma_v)
    sigma_b = _check_nonneg("sigma_b", sigma_b)
    mu_b = float(mu_b)
    if not math.isfinite(mu_b):
        raise ValueError(f"mu_b must be finite, got {mu_b!r}")
    return sigma_w, sigma_v, sigma_b, mu_b


def haar_orthogonal(*shape: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64, device="cpu") -> torch.Tensor:
    r"""Haar-distributed orthogonal matrices of shape ``(*batch, n, n)``.

    QR decomposition of a Gaussian matrix :math:`A = OR`, with the signs of
    the columns of :math:`O` fixed by :math:`\mathrm{sign}(R_{ii})`; this
    makes :math:`O` exactly Haar distributed (Mezzadri 2007).
    """
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"need a shape (..., n, n), got {shape}")
    a = torch.randn(*shape, generator=generator, dtype=dtype, device=device)
    o, r = torch.linalg.qr(a)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs[signs == 0] = 1.0
    return o * signs.unsqueeze(-2)


class _Cell(nn.Module):
    """Common parameter container: ``weight_hh`` (N, N), ``weight_ih`` (N, N_in), ``bias`` (N,)."""

    def __init__(self, input_size: int, hidden_size: int, dtype=torch.float64, device="cpu"):
        super().__init__()
        for name, n in (("input_size", input_size), ("hidden_size", hidden_size)):
            if int(n) != n or n < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        kw = dict(dtype=dtype, device=device)
        self.weight_hh = nn.Parameter(torch.empty(self.hidden_size, self.hidden_size, **kw))
        self.weight_ih = nn.Parameter(torch.empty(self.hidden_size, self.input_size, **kw))
        self.bias = nn.Parameter(torch.empty(self.hidden_size, **kw))
        init_(self, 1.0, 1.0, 0.0, 0.0)

    def preactivation(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        r""":math:`e = W h + V x + b` (works for single vectors and for leading batch dims)."""
        return h @ self.weight_hh.T + x @ self.weight_ih.T + self.bias

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


class VanillaRNNCell(_Cell):
    r"""One step of the vanilla RNN: :math:`h_t = \tanh(W h_{t-1} + V x_t + b)`."""

    def __init__(self, input_size: int, hidden_size: int, dtype=torch.float64, device="cpu"):
        super().__init__(input_size, hidden_size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return vanilla_update(self.preactivation(x, h))


class MinimalRNNCell(_Cell):
    r"""One step of the minimalRNN.

    :math:`u_t = \sigma(W h_{t-1} + V z_t + b)`,
    :math:`h_t = u_t \odot h_{t-1} + (1-u_t) \odot z_t`, with the embedded
    input :math:`z_t` of the same dimension :math:`N` as the state.
    """

    def __init__(self, hidden_size: int, dtype=torch.float64, device="cpu"):
        super().__init__(hidden_size, hidden_size, dtype=dtype, device=device)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return minimal_update(self.preactivation(z, h), h, z)


@torch.no_grad()
def init_(cell: _Cell, sigma_w: float, sigma_v: float, sigma_b: float, mu_b: float,
          orthogonal: bool = False, generator: torch.Generator | None = None) -> _Cell:
    r"""Initialise ``cell`` in place with the mean-field distribution; return it.

    * :math:`W_{ij} \sim \mathcal N(0, \sigma_w^2/N)`, or :math:`W = \sigma_w O`
      with :math:`O` Haar-orthogonal when ``orthogonal=True``;
    * :math:`V_{ij} \sim \mathcal N(0, \sigma_v^2/N_{in})`;
    * :math:`b_i \sim \mathcal N(\mu_b, \sigma_b^2)`.

    Pass a seeded :class:`torch.Generator` for reproducibility.
    """
    sigma_w, sigma_v, sigma_b, mu_b = check_hyperparameters(sigma_w, sigma_v, sigma_b, mu_b)
    W, V, b = cell.weight_hh, cell.weight_ih, cell.bias
    n, n_in = V.shape
    kw = dict(generator=generator, dtype=W.dtype, device=W.device)
    if orthogonal:
        W.copy_(sigma_w * haar_orthogonal(n, n, **kw))
    else:
        W.copy_(torch.randn(n, n, **kw) * (sigma_w / math.sqrt(n)))
    V.copy_(torch.randn(n, n_in, **kw) * (sigma_v / math.sqrt(n_in)))
    b.copy_(mu_b + sigma_b * torch.randn(n, **kw))
    return cell

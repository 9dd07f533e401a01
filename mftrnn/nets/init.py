r"""Critical initialisation of PyTorch recurrent modules, in the style of :mod:`torch.nn.init`.

Each initialiser acts in place on a module's parameters, returns the hyperparameters it chose (a JSON-ready dict,
with the mean-field fixed point and :math:`\chi`, :math:`\xi` they give), and takes an optional
:class:`torch.Generator`. The distributions are the mean-field ones (:func:`mftrnn.nets.nn.init_`):

.. math::

    W_{ij}\sim\mathcal N(0, \sigma_w^2/N)\ \text{or}\ W = \sigma_w O\ (O\ \text{Haar orthogonal}), \qquad
    V_{ij}\sim\mathcal N(0, \sigma_v^2/N_{in}), \qquad b_i\sim\mathcal N(\mu_b, \sigma_b^2).

* :func:`critical_rnn_init_` — :class:`torch.nn.RNN` (tanh), :class:`torch.nn.RNNCell` (tanh) and
  :class:`mftrnn.nets.nn.VanillaRNNCell` on the critical line :math:`\chi = 1` with a chosen :math:`q^*`
  (:func:`mftrnn.theory.critical.vanilla_critical`), or with explicit :math:`\sigma_w, \sigma_v`.
* :func:`critical_minimal_init_` — :class:`mftrnn.nets.nn.MinimalRNNCell` and single-layer
  :class:`mftrnn.nets.layers.MinimalRNN` with the timescale :math:`\xi = kT`
  (:func:`mftrnn.theory.critical.minimal_for_timescale`), or with explicit :math:`\sigma_w, \mu_b`.
* :class:`MeanFieldInit` — the mean-field initialisations of a module class in one calling convention (its own
  default, the critical initialiser, explicit values, the off-critical variants), registered per class
  (:func:`register_mean_field_init`: ``nn.RNN`` and ``MinimalRNN`` below) and found by :func:`mean_field_init`, so
  that an experiment treats every cell alike (:mod:`mftrnn.experiments.seqdigits`).

Stacked layers. Layer 0 sees the external input, of per-component second moment :math:`R`; layer :math:`l>0` sees the
states of layer :math:`l-1`, of second moment :math:`Q^*_{l-1}` at the fixed point, so its :math:`R_l = Q^*_{l-1}`
(for a bidirectional :class:`torch.nn.RNN` the concatenation of both directions' states, each of that second moment).
The mean field assumes inputs independent in time; the states of a vanilla layer at :math:`\mu_b = 0` nearly are
(measured for a 2-layer :class:`torch.nn.RNN` in ``tests/test_init.py``), those of a minimalRNN layer with a long
:math:`\xi` are not, so stacked minimalRNNs are refused. Dropout between layers (training mode) multiplies the
second moment of a deeper layer's input by :math:`1/(1-p)`; the initialisers use the evaluation-mode value.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import DomainError, MftrnnError
from ..theory.fixed_point import fixed_point, timescale
from ..theory.critical import minimal_for_timescale, vanilla_critical
from .layers import MinimalRNN, init_minimal_rnn_
from .nn import MinimalRNNCell, VanillaRNNCell, haar_orthogonal, init_

__all__ = ["critical_rnn_init_", "critical_minimal_init_", "module_chi"]

_HP = ("sigma_w", "sigma_v", "sigma_b", "mu_b", "R")


def _jsonable(d: dict) -> dict:
    r"""``d`` with NumPy scalars as Python numbers and non-finite floats (``xi`` on the critical line, where
    :math:`\chi\ge1`) as ``None``, as :meth:`mftrnn.FixedPoint.to_dict` does; checked with
    ``json.dumps(..., allow_nan=False)``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        elif isinstance(v, np.bool_):
            v = bool(v)
        elif isinstance(v, np.ndarray) and v.ndim == 0:
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    json.dumps(out, allow_nan=False)  # raises if anything is not JSON (a bug, not bad input)
    return out


def _fp_dict(cell: str, hp: dict) -> dict:
    fp = fixed_point(cell, **hp)
    return {**hp, "q_star": float(fp.q_star), "Q_star": float(fp.Q_star), "chi": float(fp.chi),
            "chi_q": float(fp.chi_q), "xi": float(timescale(fp.chi)), "multistable": bool(fp.multistable)}


@torch.no_grad()
def _fill_recurrent(W: torch.Tensor, sigma_w: float, orthogonal: bool, generator) -> None:
    n = W.shape[0]
    if W.shape != (n, n):
        raise MftrnnError(f"recurrent weight must be square, got shape {tuple(W.shape)}")
    if orthogonal:
        M = sigma_w * haar_orthogonal(n, n, generator=generator, dtype=torch.float64)
    else:
        M = torch.randn(n, n, generator=generator, dtype=torch.float64) * (sigma_w / math.sqrt(n))
    W.copy_(M)


@torch.no_grad()
def _fill_gaussian(P: torch.Tensor, std: float, generator, mean: float = 0.0) -> None:
    P.copy_(mean + std * torch.randn(tuple(P.shape), generator=generator, dtype=torch.float64))


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise MftrnnError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise MftrnnError("generator must be a CPU torch.Generator (weights are drawn on the CPU, then copied)")


def _unsupported(module, what: str):
    if isinstance(module, (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)):
        return MftrnnError(f"{type(module).__name__} is not supported yet ({what} supports tanh RNNs); the "
                           "mean field of gated cells other than the minimalRNN is future work")
    return MftrnnError(f"{what} does not support {type(module).__name__}")


# ================================================================================================ vanilla

def _vanilla_layers(module):
    """[(layer index, in_features, [(W, V, b_main, b_other)] per direction)] for the supported vanilla modules."""
    if isinstance(module, nn.RNN):
        if module.nonlinearity != "tanh":
            raise DomainError(f"nn.RNN with nonlinearity={module.nonlinearity!r}: the theory here is for tanh")
        dirs = ["", "_reverse"] if module.bidirectional else [""]
        layers = []
        for l in range(module.num_layers):
            per = []
            for d in dirs:
                W, V = getattr(module, f"weight_hh_l{l}{d}"), getattr(module, f"weight_ih_l{l}{d}")
                bi = getattr(module, f"bias_ih_l{l}{d}", None) if module.bias else None
                bh = getattr(module, f"bias_hh_l{l}{d}", None) if module.bias else None
                per.append((W, V, bi, bh))
            layers.append((l, per[0][1].shape[1], per))
        return layers
    if isinstance(module, nn.RNNCell):
        if module.nonlinearity != "tanh":
            raise DomainError(f"nn.RNNCell with nonlinearity={module.nonlinearity!r}: the theory here is for tanh")
        bi = module.bias_ih if module.bias else None
        bh = module.bias_hh if module.bias else None
        return [(0, module.input_size, [(module.weight_hh, module.weight_ih, bi, bh)])]
    if isinstance(module, VanillaRNNCell):
        return [(0, module.input_size, [(module.weight_hh, module.weight_ih, module.bias, None)])]
    raise _unsupported(module, "critical_rnn_init_")


@torch.no_grad()
def critical_rnn_init_(rnn, *, q_star=None, orthogonal: bool = True, mu_b: float = 0.0, sigma_b: float = 0.0,
                       R: float = 1.0, sigma_w=None, sigma_v=None, generator: torch.Generator | None = None) -> dict:
    r"""Initialise a tanh RNN in place on the critical line :math:`\chi = 1`; return the chosen hyperparameters.

    Supports :class:`torch.nn.RNN` (``nonlinearity="tanh"``, any ``num_layers``, ``bidirectional``, ``bias``),
    :class:`torch.nn.RNNCell` (tanh) and :class:`mftrnn.nets.nn.VanillaRNNCell`.

    Either ``q_star`` (the pre-activation variance at the fixed point): every layer gets
    :func:`mftrnn.theory.critical.vanilla_critical` ``(q_star, mu_b=mu_b, sigma_b=sigma_b, R=R_l)``, with :math:`R_0 = R`
    (the input's per-component second moment) and :math:`R_l = Q^*` for :math:`l>0` (module docstring); all layers
    then share :math:`\sigma_w` and :math:`q^*`, and :math:`\sigma_v` is set per layer. Or explicit ``sigma_w`` and
    ``sigma_v`` (the same in every layer; each layer's fixed point is then computed with :math:`R_l = Q^*_{l-1}`).

    Weights: ``weight_hh`` :math:`=\sigma_w O` (``orthogonal=True``, Haar) or Gaussian with variance
    :math:`\sigma_w^2/N`; ``weight_ih`` Gaussian with variance :math:`\sigma_v^2/N_{in}`. PyTorch's two biases add up
    to :math:`b`: ``bias_ih`` :math:`\sim\mathcal N(\mu_b, \sigma_b^2)` and ``bias_hh`` :math:`= 0`.

    Returns layer 0's dict (keys of :func:`~mftrnn.theory.critical.vanilla_critical`: ``sigma_w, sigma_v, sigma_b, mu_b,
    R, q_star, Q_star, chi, xi, chi_q, multistable``) plus ``orthogonal``, ``num_layers`` and ``layers`` (one such
    dict per layer). JSON-ready: an infinite ``xi`` (on the critical line :math:`\chi = 1`, or :math:`\chi > 1`) is
    ``None``, as in :meth:`mftrnn.FixedPoint.to_dict`. Raises :class:`~mftrnn.MftrnnError` for unsupported modules (LSTM, GRU, ReLU RNNs, ...),
    :class:`~mftrnn.DomainError` for infeasible or inconsistent hyperparameters (e.g. a bias mean without biases).
    """
    layers = _vanilla_layers(rnn)
    _check_generator(generator)
    explicit = sigma_w is not None or sigma_v is not None
    if explicit == (q_star is not None):
        raise DomainError("give either q_star (the critical line) or both sigma_w and sigma_v")
    if explicit and (sigma_w is None or sigma_v is None):
        raise DomainError("explicit initialisation needs both sigma_w and sigma_v")
    has_bias = all(b is not None for _, _, per in layers for _, _, b, _ in per)
    if not has_bias and (mu_b != 0 or sigma_b != 0):
        raise DomainError("the module has no biases (bias=False); mu_b and sigma_b must be 0")
    chosen = []
    R_l = R
    for l, n_in, per in layers:
        if explicit:
            hp = _fp_dict("vanilla", dict(sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b, mu_b=mu_b, R=R_l))
        else:
            hp = vanilla_critical(q_star, mu_b=mu_b, sigma_b=sigma_b, R=R_l)
        hp = _jsonable(hp)
        chosen.append(hp)
        for W, V, b, b_other in per:
            _fill_recurrent(W, hp["sigma_w"], orthogonal, generator)
            _fill_gaussian(V, hp["sigma_v"] / math.sqrt(n_in), generator)
            if b is not None:
                _fill_gaussian(b, hp["sigma_b"], generator, mean=hp["mu_b"])
            if b_other is not None:
                b_other.zero_()
        R_l = hp["Q_star"]
    out = {**chosen[0], "orthogonal": bool(orthogonal), "num_layers": len(chosen), "layers": chosen}
    json.dumps(out, allow_nan=False)  # JSON-ready (the module docstring's promise)
    return out


# ============================================================================================= minimalRNN

def _minimal_layers(module):
    """[(W, V, b, Phi, phi_b)] per layer (Phi, phi_b None without an embedding), and the MinimalRNN (or None)."""
    if isinstance(module, MinimalRNNCell):
        return [(module.weight_hh, module.weight_ih, module.bias, None, None)], None
    if isinstance(module, MinimalRNN):
        if module.num_layers > 1:
            raise MftrnnError(
                f"critical_minimal_init_ initialises single-layer minimalRNNs (got num_layers={module.num_layers}): "
                "a deeper layer is driven by the states of the layer below, which vary slowly (timescale xi), while "
                "the mean field assumes inputs independent in time; measured at T=20, N=500: the second layer's Q* "
                "is 0.57 against the predicted 0.031 and its xi ~47 against 20")
        p = module.layer_parameters(0)
        return [(p["W"], p["V"], p["b"], p.get("Phi"), p.get("phi_b"))], module
    raise _unsupported(module, "critical_minimal_init_")


@torch.no_grad()
def _fill_embedding(Phi: torch.Tensor, kind: str, generator) -> None:
    r"""Embedding :math:`\Phi` (N x N_in) with :math:`|\Phi x|^2/N = |x|^2/N_in` for i.i.d. x: semi-orthogonal times
    :math:`\sqrt{\max(N/N_{in}, 1)}`, or Gaussian with variance :math:`1/N_{in}`."""
    n, n_in = Phi.shape
    if kind == "gaussian":
        _fill_gaussian(Phi, 1.0 / math.sqrt(n_in), generator)
        return
    m = max(n, n_in)
    O = haar_orthogonal(m, m, generator=generator, dtype=torch.float64)[:n, :n_in]
    Phi.copy_(O * math.sqrt(max(n / n_in, 1.0)))


@torch.no_grad()
def critical_minimal_init_(module, *, T=None, k: float = 1.0, sigma_w=None, orthogonal: bool = True, R: float = 1.0,
                           sigma_v: float = 1.0, sigma_b: float = 0.0, mu_b=None, embedding: str = "orthogonal",
                           generator: torch.Generator | None = None, **kwargs) -> dict:
    r"""Initialise a minimalRNN in place for a timescale :math:`\xi = kT`; return the chosen hyperparameters.

    Supports :class:`mftrnn.nets.nn.MinimalRNNCell` and single-layer :class:`mftrnn.nets.layers.MinimalRNN` (with or without
    embedding). Stacked layers are refused: their inputs, the slow states of the layer below, break the mean
    field's assumption of inputs independent in time (module docstring; measured deviations in the error message).

    Either ``T`` (task length): :func:`mftrnn.theory.critical.minimal_for_timescale` ``(T, k=k, sigma_w=sigma_w, ...)``
    chooses :math:`\mu_b` (and :math:`\sigma_w` when ``None``; further keyword arguments such as ``sigma_w_grid``,
    ``max_spread`` are passed on). Or explicit ``sigma_w`` and ``mu_b`` (then the fixed point is reported).

    ``R`` is the per-component second moment of the module's input. An embedding :math:`z = \Phi x + \phi_b`
    (``embed=True``) gets :math:`\phi_b = 0` and :math:`\Phi` with :math:`|\Phi x|^2/N = |x|^2/N_{in}`, so that
    :math:`z` has second moment :math:`R` too: ``embedding="orthogonal"`` (default; semi-orthogonal times
    :math:`\sqrt{\max(N/N_{in},1)}`) or ``"gaussian"`` (:math:`\Phi_{ij}\sim\mathcal N(0, 1/N_{in})`, as
    :func:`mftrnn.nets.layers.init_minimal_rnn_`).

    **Finite width.** :math:`Q^*` is exact for untied weights as :math:`N\to\infty`. A real (tied) network of
    finite width settles at a stationary :math:`Q` above :math:`Q^*`, by an amount that grows with the timescale and
    falls like :math:`1/N`, about :math:`1.2`-:math:`1.4\,\xi/N`; the error is large for long tasks unless
    :math:`N\gg\xi`. Measured with :func:`mftrnn.nets.simulate.simulate` (8 networks, orthogonal :math:`W`, no
    embedding, hyperparameters of ``minimal_for_timescale(T)``, started at :math:`Q^*`, :math:`Q` averaged over
    steps :math:`10\xi`-:math:`50\xi` for :math:`T=20`, :math:`5\xi`-:math:`20\xi` for :math:`T=200`; mean ± standard
    error over the networks):

    ===========  ======  ==============  =============
    T = xi       N       tied            untied
    ===========  ======  ==============  =============
    20           1000    +2.8 ± 0.4%     +0.5 ± 0.3%
    200          512     +52 ± 2%        +1.4 ± 0.7%
    200          2000    +11.6 ± 0.5%    +0.6 ± 0.3%
    ===========  ======  ==============  =============

    The module itself (:class:`~mftrnn.nets.layers.MinimalRNN`, initialised here, 12 networks of 4 sequences,
    :math:`T = 20`, :math:`N = 1000`, steps 200-1000): +2.1 ± 0.2% without embedding, +2.1 ± 0.2% with the orthogonal
    and +5.7 ± 0.2% with the Gaussian embedding (whose :math:`\Phi\Phi^\top` correlates the units' inputs). The
    timescale :math:`\xi` agrees to ~1% at :math:`T = 20` (``tests/test_init.py``).

    Returns the dict of :func:`~mftrnn.theory.critical.minimal_for_timescale` (or of the fixed point in the explicit case)
    plus ``orthogonal``, ``embedding`` (None without one) and ``num_layers``. For :class:`~mftrnn.nets.layers.MinimalRNN`
    it is also stored as ``module.hyperparameters``.
    """
    layers, rnn = _minimal_layers(module)
    _check_generator(generator)
    if embedding not in ("orthogonal", "gaussian"):
        raise DomainError(f"embedding must be 'orthogonal' or 'gaussian', got {embedding!r}")
    if T is None:
        if sigma_w is None or mu_b is None:
            raise DomainError("give T (and optionally k, sigma_w), or explicit sigma_w and mu_b")
        if kwargs:
            raise DomainError(f"unexpected arguments {sorted(kwargs)} for an explicit initialisation")
        hp = _fp_dict("minimal", dict(sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b, mu_b=mu_b, R=R))
    else:
        if mu_b is not None:
            raise DomainError("mu_b is chosen from T; give either T or mu_b")
        hp = minimal_for_timescale(T, k=k, sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b, R=R,
                                   orthogonal=orthogonal, **kwargs)
    hp = _jsonable(hp)
    ((W, V, b, Phi, phi_b),) = layers
    _fill_recurrent(W, hp["sigma_w"], orthogonal, generator)
    _fill_gaussian(V, hp["sigma_v"] / math.sqrt(V.shape[1]), generator)
    _fill_gaussian(b, hp["sigma_b"], generator, mean=hp["mu_b"])
    if Phi is not None:
        _fill_embedding(Phi, embedding, generator)
        phi_b.zero_()
    out = _jsonable({**hp, "orthogonal": bool(orthogonal), "embedding": embedding if Phi is not None else None,
                     "num_layers": 1})
    if rnn is not None:
        rnn.hyperparameters = out
    return out


@torch.no_grad()
def module_chi(module, x: torch.Tensor, h0: torch.Tensor, *, layer: int = -1, eps: float = 1e-4, t_min: int = 2,
               generator: torch.Generator | None = None) -> np.ndarray:
    r""":math:`\chi` of a recurrent module measured from its definition, one value per input sequence.

    ``module(x, h0) -> (output, h_n)`` with ``x`` of shape ``(T, B, N_in)`` and ``h0`` ``(num_layers, B, N)`` (as
    :class:`torch.nn.RNN` and :class:`mftrnn.nets.layers.MinimalRNN`); ``output`` holds the top layer's states. Two
    copies start from ``h0`` and from ``h0`` with the state of ``layer`` (default the top one) moved by a random
    :math:`\delta`, :math:`|\delta| = \varepsilon |h|`, and receive the same inputs; while it is small,
    :math:`D_t = |h^a_t - h^b_t|^2/(2N)` changes by :math:`\chi` per step, so :math:`\chi = \exp` of the slope of
    :math:`\log D_t` fitted over :math:`t \ge t_{min}` (per sequence). Start from a stationary state (run a
    burn-in first) and keep :math:`\varepsilon\chi^{T/2}` small. A perturbation of a lower layer is not seen
    by this estimate of the top layer's rate.
    """
    if x.dim() != 3 or h0.dim() != 3:
        raise MftrnnError("module_chi needs x of shape (T, B, N_in) and h0 of shape (num_layers, B, N)")
    if x.shape[0] < t_min + 3:
        raise MftrnnError(f"need at least t_min + 3 = {t_min + 3} steps, got {x.shape[0]}")
    if not 0 < eps < 1:
        raise MftrnnError(f"eps must lie in (0, 1), got {eps!r}")
    d = torch.randn(tuple(h0.shape[1:]), generator=generator, dtype=torch.float64).to(h0)
    hb = h0.clone()
    hb[layer] += eps * d * h0[layer].norm(dim=-1, keepdim=True) / d.norm(dim=-1, keepdim=True)
    oa, _ = module(x, h0)
    ob, _ = module(x, hb)
    D = (((oa - ob) ** 2).sum(-1) / (2 * oa.shape[-1])).double().cpu().numpy()  # (T, B)
    if not np.all(D[t_min:] > 0):
        raise MftrnnError("the perturbation vanished below round-off; raise eps or shorten x")
    t = np.arange(D.shape[0])
    return np.exp([np.polyfit(t[t_min:], np.log(D[t_min:, b]), 1)[0] for b in range(D.shape[1])])


# ==================================================================== the mean-field initialisations of a module
@dataclass(frozen=True)
class MeanFieldInit:
    r"""The mean-field initialisations of one module class, in one calling convention (what an experiment such as
    :mod:`mftrnn.experiments.seqdigits` needs to treat every cell alike). Registered per class with
    :func:`register_mean_field_init`, found with :func:`mean_field_init`.

    * ``default(module) -> dict``: the mean-field hyperparameters of the module's own (construction) initialisation;
    * ``critical(module, *, T, R, q_star, k, sigma_w, sigma_b, mu_b, orthogonal, generator) -> dict``: the critical
      initialiser (each takes the arguments it uses: ``q_star`` for :math:`\chi = 1` at a fixed point, ``T, k`` for
      a timescale :math:`\xi = kT`);
    * ``explicit(module, sigma_w, sigma_v, sigma_b, mu_b, *, orthogonal, generator) -> dict``: given values;
    * ``chooses``: the hyperparameters ``critical`` sets itself; ``refusal``: the message for a critical
      initialisation given some of them (``{extra}``: the ones given);
    * ``off_critical(critical_hyperparameters) -> [dict]``: the explicit ``sigma_w, sigma_v, sigma_b, mu_b`` of the
      off-critical variants of a critical choice;
    * ``cell_input(hyperparameters, R) -> dict``: the second moment ``R`` of the input the *cell* sees, when the
      module's input has second moment ``R`` (and whatever else describes it).
    """

    default: Callable
    critical: Callable
    explicit: Callable
    chooses: tuple
    refusal: str
    off_critical: Callable
    cell_input: Callable


_MEAN_FIELD: dict[type, MeanFieldInit] = {}


def register_mean_field_init(torch_class: type, record: MeanFieldInit) -> None:
    """Record the mean-field initialisations of ``torch_class`` (and its subclasses)."""
    _MEAN_FIELD[torch_class] = record


def mean_field_init(module) -> MeanFieldInit | None:
    """The :class:`MeanFieldInit` of a module or module class, ``None`` when none is registered."""
    cls = module if isinstance(module, type) else type(module)
    return next((r for c, r in _MEAN_FIELD.items() if issubclass(cls, c)), None)


def pytorch_rnn_default_hyperparameters(n_features: int, hidden: int) -> dict:
    r"""Mean-field hyperparameters of PyTorch's :class:`torch.nn.RNN` default initialisation.

    Every weight and both biases are :math:`\mathcal U(-a, a)` with :math:`a = 1/\sqrt N`, of variance
    :math:`a^2/3 = 1/(3N)`.  Matching variances with :math:`W_{ij}\sim\mathcal N(0,\sigma_w^2/N)`,
    :math:`V_{ij}\sim\mathcal N(0,\sigma_v^2/N_{in})` and :math:`b = b_{ih} + b_{hh}` of variance
    :math:`\sigma_b^2`: :math:`\sigma_w^2 = 1/3`, :math:`\sigma_v^2 = N_{in}/(3N)`, :math:`\sigma_b^2 = 2/(3N)`.
    """
    return dict(sigma_w=math.sqrt(1.0 / 3.0), sigma_v=math.sqrt(n_features / (3.0 * hidden)),
                sigma_b=math.sqrt(2.0 / (3.0 * hidden)), mu_b=0.0)


#: the tanh RNN's off-critical variants: the critical sigma_w times these (chi < 1 and chi > 1)
RNN_OFF_CRITICAL_FACTORS = (0.5, 2.0)


def _rnn_explicit(rnn, sigma_w, sigma_v, sigma_b, mu_b, *, orthogonal, generator=None) -> dict:
    """Layer 0 of a one-layer ``nn.RNN`` drawn by :func:`mftrnn.nets.nn.init_` (``bias_ih`` is :math:`b`,
    ``bias_hh = 0``)."""
    init_(SimpleNamespace(weight_hh=rnn.weight_hh_l0, weight_ih=rnn.weight_ih_l0, bias=rnn.bias_ih_l0),
          sigma_w, sigma_v, sigma_b, mu_b, orthogonal=orthogonal, generator=generator)
    rnn.bias_hh_l0.zero_()
    return dict(sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b, mu_b=mu_b, orthogonal=orthogonal)


register_mean_field_init(nn.RNN, MeanFieldInit(
    default=lambda rnn: dict(pytorch_rnn_default_hyperparameters(rnn.input_size, rnn.hidden_size), orthogonal=False,
                             distribution="uniform (PyTorch default)"),
    critical=lambda rnn, *, T, R, q_star, k, sigma_w, sigma_b, mu_b, orthogonal, generator=None: critical_rnn_init_(
        rnn, q_star=q_star, orthogonal=orthogonal, mu_b=mu_b or 0.0, sigma_b=sigma_b or 0.0, R=R, generator=generator),
    explicit=_rnn_explicit,
    chooses=("sigma_w", "sigma_v"),
    refusal="the vanilla critical initialiser chooses sigma_w and sigma_v from q_star; give q_star (and optionally "
            "sigma_b, mu_b)",
    off_critical=lambda crit: [dict(sigma_w=f * crit["sigma_w"], sigma_v=crit["sigma_v"], sigma_b=0.0, mu_b=0.0)
                               for f in RNN_OFF_CRITICAL_FACTORS],
    cell_input=lambda hp, R: {"R": R},
))


def _minimal_critical(rnn, *, T, R, q_star, k, sigma_w, sigma_b, mu_b, orthogonal, generator=None) -> dict:
    info = critical_minimal_init_(rnn, T=T, k=k, sigma_w=sigma_w, orthogonal=orthogonal, R=R, generator=generator)
    return {**info, **{key: v for key, v in rnn.hyperparameters.items() if key not in info}}


def _minimal_explicit(rnn, sigma_w, sigma_v, sigma_b, mu_b, *, orthogonal, generator=None) -> dict:
    return init_minimal_rnn_(rnn, sigma_w, sigma_v, sigma_b, mu_b, orthogonal=orthogonal, generator=generator)


register_mean_field_init(MinimalRNN, MeanFieldInit(
    default=lambda rnn: dict(rnn.hyperparameters),  # the layer's own default, drawn at construction
    critical=_minimal_critical,
    explicit=_minimal_explicit,
    chooses=("sigma_v", "sigma_b", "mu_b"),
    refusal="the minimalRNN critical initialiser chooses {extra} itself; give only sigma_w (and k)",
    # the gate's timescale left at its default (mu_b = 0)
    off_critical=lambda crit: [dict(sigma_w=crit["sigma_w"], sigma_v=crit["sigma_v"], sigma_b=0.0, mu_b=0.0)],
    # of z = Phi x + phi_b
    cell_input=lambda hp, R: {"R": hp.get("sigma_phi", 1.0) ** 2 * R + hp.get("sigma_phib", 0.0) ** 2, "R_x": R},
))

__all__ += ["MeanFieldInit", "register_mean_field_init", "mean_field_init", "pytorch_rnn_default_hyperparameters",
            "RNN_OFF_CRITICAL_FACTORS"]

r"""A trainability check for any recurrent module: :func:`diagnose` reads its weights, maps them to the mean field's
hyperparameters, and predicts (and measures) how gradients from the start of a length-``T`` sequence fare.

**What is read** (per layer and direction; per gate :math:`K` for gated cells, the gate ``u`` of a single-state
cell), with :math:`N` the hidden size and :math:`N_{in}` the layer's input width:

.. math:: \hat\sigma_{w,K} = \sqrt{N\,\overline{W_K^2}},\qquad \hat\sigma_{v,K} = \sqrt{N_{in}\,\overline{V_K^2}},
          \qquad \hat\mu_{b,K} = \overline{b_K},\qquad \hat\sigma_{b,K} = \operatorname{std}(b_K),

the inverses of the mean-field draws :math:`W_{ij}\sim\mathcal N(0,\sigma_w^2/N)`,
:math:`V_{ij}\sim\mathcal N(0,\sigma_v^2/N_{in})`, :math:`b_i\sim\mathcal N(\mu_b,\sigma_b^2)` (the root mean
square, i.e. the standard deviation about the zero mean the theory assumes). PyTorch's two bias vectors add,
:math:`b_K = b_{ih,K} + b_{hh,K}`, wherever one field carries both (:func:`mftrnn.nets.gated._bias_folds`); the
GRU's :math:`b_{hn}` sits inside the reset product :math:`r\odot(W_n h + b_{hn})`, which the cell description
(:data:`mftrnn.cells.gated.GRU`) fixes to :math:`b_{hn}=0`, so the candidate's :math:`\mu_{b,n},\sigma_{b,n}` are
those of :math:`b_{in}` alone and the root mean square of :math:`b_{hn}` is reported as an unmodelled term.
:math:`W_K` "looks orthogonal" when the relative spread of its squared singular values,
:math:`\operatorname{std}(s^2)/\overline{s^2}` (:func:`squared_singular_spread`), is below
:data:`ORTHOGONAL_SPREAD` = 0.1 (0 for :math:`\sigma_w O`; 1 for an i.i.d. square matrix, Gaussian or uniform,
at large :math:`N`: Marchenko-Pastur); it selects the orthogonal or Gaussian ensemble of the predicted spectrum.
PyTorch's default :math:`\mathcal U(-1/\sqrt N, 1/\sqrt N)` gives :math:`\sigma_w^2 = 1/3` per gate,
:math:`\sigma_v^2 = N_{in}/(3N)`, :math:`\sigma_b^2 = 2/(3N)`
(:func:`mftrnn.nets.init.pytorch_rnn_default_hyperparameters`).

**Theory** (per layer): :func:`mftrnn.fixed_point` at those values gives :math:`Q^*`, :math:`\chi`,
:math:`\xi=-1/\ln\chi`; the predicted :math:`T`-step spectrum of :math:`J J^\top`, :math:`J = \partial s_T/\partial
s_0` (:func:`_predicted_spectrum`): for single-state cells the free-probability moments of
:func:`mftrnn.theory.jacobian.product_moments` (mean :math:`\chi^T`, relative variance), for gated cells the
mean-field estimate :math:`\chi^T` of its mean. Layer 0 sees the input, of per-component second moment ``R``;
layer :math:`l>0` sees the states of layer :math:`l-1`, so its :math:`R_l = Q^*_{l-1}` (for a bidirectional module
the mean of both directions' :math:`Q^*`, the second moment of their concatenation). For a
:class:`~mftrnn.nets.layers.MinimalRNN` with an embedding :math:`z=\Phi y+\phi_b`, the cell sees
:math:`R_z = R_y\,\lVert\Phi\rVert_F^2/N + \overline{\phi_b^2}`.

**Verdict** (per layer, from :math:`\lambda = T\ln\chi = -T/\xi`, the log of the factor :math:`\chi^T` by which the
mean squared gradient from step 0 is multiplied by step :math:`T`):

* ``"trainable"``: :math:`|\lambda|\le 1`, i.e. :math:`\xi\ge T` on either side of :math:`\chi = 1`
  (critical, or so slightly chaotic that the growth stays below e);
* ``"marginal"``: :math:`1<|\lambda|\le 6`, i.e. :math:`T/\xi\in(1,6]`: a damping between :math:`e^{-1}` and
  :math:`e^{-6}\approx 2.5\times10^{-3}` (6: the depth scale of Schoenholz et al. 2017), or for :math:`\chi>1` a
  growth between e and :math:`e^6\approx 400`;
* ``"vanish"``: :math:`\lambda<-6`, i.e. :math:`\xi < T/6`;
* ``"chaotic"``: :math:`\lambda>6` (:math:`\chi>1`): perturbations and gradients grow as :math:`\chi^T > e^6`.

The module's verdict is that of the layer with the largest :math:`\chi` (named when there are several): a signal
from step 0 can ride in the slowest layer (the sum over paths through the stack is dominated by
:math:`\max_l\chi_l^T`), and an exploding layer dominates every gradient through it.

**Measured** (``measure=True``) on a float64 CPU copy of each layer — the module's own weights, tied across steps,
not the theory's ensemble: ``n_sequences`` independent sequences of Gaussian inputs
:math:`x_t\sim\mathcal N(0,R\,I)` (layer :math:`l>0` gets the actual states of layer :math:`l-1`), from the zero
state, ``burn_in`` steps, then ``steps = min(T, max_steps)`` steps during which ``n_probes`` tangent vectors per
sequence (isotropic directions of the whole state, :math:`(c,h)` jointly for the LSTM) are carried by forward-mode
autograd and renormalised each step. From their per-step growth :math:`r_t=|J_t u|^2/|u|^2`:
``chi = exp(mean log r_t)`` over the steps after ``settle`` (the Benettin rate of
:func:`mftrnn.nets.simulate_gated.measure_gated_chi`; ``chi_se`` from the spread over sequences) and ``chi_arith``
(the mean of :math:`r_t`); and the mean squared singular value of the ``steps``-step Jacobian
:math:`\frac1n\operatorname{tr}JJ^\top = \mathbb E_u|Ju|^2` (:math:`u` uniform on the unit sphere; averaged over
probes and sequences, kept in log form), next to the prediction for the same number of steps (for gated cells
:math:`\chi^T` predicts it up to an :math:`O(1)` factor: the isotropic start spreads over every state, not only the
slow one); ``Q`` the mean
:math:`|h|^2/N` over the window and ``R_in`` the measured second moment of the layer's input; also
``predicted_log_mean`` (the prediction's log for ``steps`` steps), ``log_msv_per_sequence``, and the verdict the
measured :math:`\chi` gives (``verdict_kind``, ``verdict``). The state reaches :math:`Q^*` on the timescale
:math:`\xi_q`: raise ``burn_in`` for slow cells (e.g. an LSTM with a large forget-gate bias).

**Assumptions** (also in :attr:`Diagnosis.assumptions`): weights i.i.d. with the estimated statistics — true at
initialisation, only a rough guide after training (trained weights are correlated and low-rank); the untied mean
field (:math:`N\to\infty`, weights independent across steps), which tied finite networks follow where the recurrent
variances are small or (vanilla RNN) at large :math:`N` (``tests/test_diagnose.py`` measures the gap); inputs i.i.d.
in time; the state starting at zero (the least fixed point).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from ..cells.gated import GRU, LSTM, GatedCell
from ..cells.registry import Cell, get_cell
from ..errors import DomainError, MftrnnError
from ..theory.fixed_point import fixed_point
from ..theory.jacobian import MAX_T, product_moments
from .gated import DerivedCell, DerivedRNN, _bias_folds, _Block, _cell_module_blocks, _derived_blocks, \
    _minimal_rnn_blocks, _stacked_blocks
from .layers import MinimalRNN
from .nn import MinimalRNNCell, _Cell
from .registry import step_cell_of
from .simulate_gated import _step

__all__ = ["diagnose", "Diagnosis", "LayerDiagnosis", "verdict", "log_chi_power", "gate_statistics", "format_power",
           "squared_singular_spread", "ORTHOGONAL_SPREAD", "VERDICT_MARGINAL"]

#: ``W`` looks orthogonal when the relative spread of its squared singular values is below this (0 for sigma_w O,
#: 1 for an i.i.d. square matrix; see :func:`squared_singular_spread`)
ORTHOGONAL_SPREAD = 0.1
#: |T ln chi| = T/|xi| above which the verdict is "vanish" or "chaotic" (between 1 and this: "marginal")
VERDICT_MARGINAL = 6.0

_TORCH_SEQUENCE = {nn.LSTM: (LSTM, nn.LSTMCell), nn.GRU: (GRU, nn.GRUCell)}
_TORCH_STEP = {nn.LSTMCell: LSTM, nn.GRUCell: GRU}


# --------------------------------------------------------------------------- small pure helpers
def _finite_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _jsonable(obj):
    """Nested dicts/lists with NumPy scalars as Python numbers and non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return _finite_or_none(obj)
    return obj


def format_power(log_value: float | None) -> str:
    r"""``exp(log_value)`` written as ``1.2e-548`` without forming it (it may be far outside the float range)."""
    if log_value is None or (isinstance(log_value, float) and math.isnan(log_value)):
        return "n/a"
    if log_value == -math.inf:
        return "0"
    if log_value == math.inf:
        return "inf"
    l10 = log_value / math.log(10.0)
    e = math.floor(l10)
    m = 10.0 ** (l10 - e)
    if m >= 9.95:
        m, e = 1.0, e + 1
    return f"{m:.2g}e{e:+d}" if abs(e) > 3 else f"{math.exp(log_value):.3g}"


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer, float)) or not math.isfinite(T) or T != int(T) \
            or T < 1 or T > MAX_T:
        raise DomainError(f"T must be an integer in [1, 2^53], got {T!r}")
    return int(T)


def _check_count(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise DomainError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def log_chi_power(chi: float, T: int, xi: float | None = None) -> float:
    r""":math:`T\ln\chi`, with :math:`\ln\chi = -1/\xi` from the theory's accurate timescale where
    :math:`\chi<1` (it keeps its precision near :math:`\chi = 1`); :math:`-\infty` at :math:`\chi = 0`."""
    if chi == 0:
        return -math.inf
    if chi < 1 and xi is not None and math.isfinite(xi) and xi > 0:
        return -T / xi
    return T * math.log(chi)


def verdict(chi: float, T: int, xi: float | None = None) -> tuple[str, str]:
    r"""``(kind, sentence)`` for one layer: the thresholds of the module docstring on :math:`\lambda = T\ln\chi`.

    ``xi`` (optional, the theory's accurate :math:`-1/\ln\chi` near :math:`\chi = 1`) sets :math:`\ln\chi = -1/\xi`
    for :math:`\chi<1`. ``kind`` is one of ``"trainable"``, ``"marginal"``, ``"vanish"``, ``"chaotic"``."""
    chi = float(chi)
    if not math.isfinite(chi) or chi < 0:
        raise DomainError(f"chi must be finite and >= 0, got {chi!r}")
    if chi == 0:
        return "vanish", (f"chi = 0: the state forgets its past in one step; gradients from the start of the "
                          f"sequence vanish (chi^T = 0 for T = {T})")
    lam = log_chi_power(chi, T, xi)
    log_chi = lam / T
    xi_shown = f"{-1.0 / log_chi:.3g}" if log_chi < 0 else "inf"
    power = format_power(lam)
    if lam > VERDICT_MARGINAL:
        return "chaotic", (f"chi = {chi:.4g} > 1: chaotic; perturbations and gradients grow as chi^T = {power} "
                           f"over T = {T} steps")
    if lam > 1:
        return "marginal", (f"chi = {chi:.4g} > 1 (xi = {1.0 / log_chi:.3g} on the chaotic side, T <= "
                            f"{VERDICT_MARGINAL:g} xi): gradients from the start of the sequence grow by chi^T = "
                            f"{power} (marginal)")
    if lam >= -1:
        if log_chi > 0:
            return "trainable", (f"chi = {chi:.6g}, just above 1 (critical): gradients from the start of the "
                                 f"sequence grow only by chi^T = {power} over T = {T} steps")
        if log_chi == 0:
            return "trainable", f"chi = 1 (critical, xi infinite): gradients from the start survive T = {T} steps"
        return "trainable", (f"xi = {xi_shown} >= T = {T}: gradients from the start of the sequence survive "
                             f"(chi^T = {power})")
    if -lam <= VERDICT_MARGINAL:
        return "marginal", (f"xi = {xi_shown} < T = {T} <= {VERDICT_MARGINAL:g} xi: gradients from the start of "
                            f"the sequence are damped by chi^T = {power} (marginal)")
    return "vanish", (f"xi = {xi_shown} << T = {T}: gradients from the start of the sequence vanish as "
                      f"chi^T = {power}")


# --------------------------------------------------------------------------- reading the weights
def _rms(t: torch.Tensor) -> float:
    t = t.detach().to("cpu", torch.float64)
    return float(torch.sqrt((t * t).mean()))


def squared_singular_spread(W: torch.Tensor) -> float:
    r"""Relative spread of the squared singular values of ``W``: :math:`\sqrt{m_2/m_1^2-1}` with
    :math:`m_k=\frac1N\operatorname{tr}(W^\top W)^k` (one Gram matrix, no SVD). 0 for :math:`\sigma_w O`; 1 for
    an i.i.d. square matrix at large :math:`N` (Marchenko-Pastur at ratio 1: variance :math:`\sigma_w^4` about the
    mean :math:`\sigma_w^2`), Gaussian or uniform alike; 0 for a zero matrix."""
    W = W.detach().to("cpu", torch.float64)
    G = W.T @ W
    m1 = float(torch.diagonal(G).sum()) / W.shape[1]
    if m1 == 0:
        return 0.0
    m2 = float((G * G).sum()) / W.shape[1]
    return math.sqrt(max(m2 / (m1 * m1) - 1.0, 0.0))


def gate_statistics(block: _Block, folds: bool) -> dict:
    r"""Estimated ``sigma_w, sigma_v, sigma_b, mu_b`` of one gate's block, plus ``orthogonal`` (``None`` without a
    recurrent matrix or with a zero one), ``sv2_spread`` (:func:`squared_singular_spread`) and, where the second
    bias does not fold into the field (the GRU's :math:`b_{hn}`), ``b_hh_rms``: the root mean square of that
    unmodelled bias (formulas in the module docstring)."""
    out = {}
    if block.W is not None:
        N = block.W.shape[1]
        out["sigma_w"] = math.sqrt(N) * _rms(block.W)
        spread = squared_singular_spread(block.W)
        out["sv2_spread"] = spread
        out["orthogonal"] = bool(spread < ORTHOGONAL_SPREAD) if out["sigma_w"] > 0 else None
    else:
        out.update(sigma_w=0.0, sv2_spread=None, orthogonal=None)
    out["sigma_v"] = math.sqrt(block.V.shape[1]) * _rms(block.V) if block.V is not None else 0.0
    b = None if block.b is None else block.b.detach().to("cpu", torch.float64)
    if b is not None and block.b_hh is not None and folds:
        b = b + block.b_hh.detach().to("cpu", torch.float64)
    if b is None:
        out.update(mu_b=0.0, sigma_b=0.0)
    else:
        out["mu_b"] = float(b.mean())
        out["sigma_b"] = float(b.std(unbiased=True)) if b.numel() > 1 else 0.0
    if block.b_hh is not None and not folds:
        out["b_hh_rms"] = _rms(block.b_hh)
    return out


@dataclass
class _Layer:
    """One layer and direction of a module: its weights by gate and a factory of its float64 one-step function."""

    layer: int
    direction: str                 # "forward" or "reverse"
    N: int
    N_in: int                      # width of the layer's raw input (before an embedding)
    blocks: dict                   # {gate: _Block}
    make_step: object              # () -> step(x, states) -> states, float64 on the CPU
    embed: tuple | None = None     # (Phi, phi_b) of a MinimalRNN layer


def _copy64(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()


def _wrap_single(m):
    """A one-state module ``m(x, h) -> h`` as ``step(x, (h,)) -> (h,)``."""
    return lambda x, s: (m(x, s[0]),)


def _torch_step(m, cell: GatedCell):
    """A torch RNN cell as ``step(x, states in cell order) -> states`` (:func:`simulate_gated._step`)."""
    if len(cell.states) == 1:
        return _wrap_single(m)
    return lambda x, s: _step(m, cell.name, x, s)


def _torch_layer_cell(module, suffix: str, cell_cls, N_in: int, N: int):
    """A float64 ``nn.*Cell`` holding layer ``suffix`` of the torch sequence module (both biases kept)."""
    kw = {"nonlinearity": module.nonlinearity} if cell_cls is nn.RNNCell else {}
    c = cell_cls(N_in, N, bias=module.bias, dtype=torch.float64, **kw)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if module.bias else ()):
            getattr(c, name).copy_(getattr(module, name + suffix).detach().to("cpu", torch.float64))
    return c.eval()


def _unsupported(module) -> MftrnnError:
    return MftrnnError(
        f"diagnose does not support {type(module).__name__}; it reads nn.RNN (tanh), nn.LSTM, nn.GRU, nn.RNNCell, "
        "nn.LSTMCell, nn.GRUCell and mftrnn's MinimalRNN, VanillaRNNCell, MinimalRNNCell, SymbolicCell, "
        "DerivedCell, DerivedRNN")


def _read(module) -> tuple[GatedCell, Cell | None, list]:
    r"""``(gated cell, single-state Cell or None, [_Layer])`` for a supported module (in layer, direction order)."""
    if not isinstance(module, nn.Module):
        raise MftrnnError(f"diagnose needs a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, (DerivedRNN, DerivedCell)):
        gcell = module.cell
        single = None
        if gcell.gates == "u":
            found = get_cell(gcell.name)
            single = found if isinstance(found, Cell) else None
        steps = list(module.layers) if isinstance(module, DerivedRNN) else [module]
        layers = []
        for l, (blocks, m) in enumerate(zip(_derived_blocks(module), steps)):
            layers.append(_Layer(l, "forward", m.hidden_size, m.input_size, blocks,
                                 lambda m=m: _copy64(m).forward))
        return gcell, single, layers
    if isinstance(module, (nn.RNN, nn.RNNCell)):
        if module.nonlinearity != "tanh":
            raise MftrnnError(f"{type(module).__name__} with nonlinearity={module.nonlinearity!r}: the theory here is "
                              f"for tanh (the vanilla cell)")
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        if isinstance(module, nn.RNN):
            single = get_cell("vanilla")
            gcell, cell_cls = single.as_gated(), nn.RNNCell
        else:
            single = None
            gcell, cell_cls = next(v for k, v in _TORCH_SEQUENCE.items() if isinstance(module, k))
        blocks = _stacked_blocks(module, gcell.gates)   # refuses nn.LSTM with proj_size > 0
        dirs = ("", "_reverse") if module.bidirectional else ("",)
        layers, N = [], module.hidden_size
        for i, blk in enumerate(blocks):
            l, d = divmod(i, len(dirs))
            suffix = f"_l{l}{dirs[d]}"
            N_in = getattr(module, "weight_ih" + suffix).shape[1]
            factory = (lambda s=suffix, n=N_in: _torch_step(_torch_layer_cell(module, s, cell_cls, n, N), gcell))
            layers.append(_Layer(l, "reverse" if dirs[d] else "forward", N, N_in, blk, factory))
        return gcell, single, layers
    if isinstance(module, (nn.RNNCell, nn.LSTMCell, nn.GRUCell)):
        if isinstance(module, nn.RNNCell):
            single = get_cell("vanilla")
            gcell = single.as_gated()
        else:
            single, gcell = None, next(v for k, v in _TORCH_STEP.items() if isinstance(module, k))
        (blk,) = _stacked_blocks(module, gcell.gates)
        return gcell, single, [_Layer(0, "forward", module.hidden_size, module.input_size, blk,
                                      lambda: _torch_step(_copy64(module), gcell))]
    if isinstance(module, MinimalRNN):
        single = get_cell("minimal")
        gcell = single.as_gated()
        layers = []
        for l, blocks in enumerate(_minimal_rnn_blocks(module, gcell)):
            p = module.layer_parameters(l)
            N, N_in = module.hidden_size, (module.input_size if l == 0 else module.hidden_size)

            def factory(p=p, N=N):
                c = MinimalRNNCell(N, dtype=torch.float64)
                with torch.no_grad():
                    for name, key in (("weight_hh", "W"), ("weight_ih", "V"), ("bias", "b")):
                        getattr(c, name).copy_(p[key].detach().to("cpu", torch.float64))
                return _wrap_single(c.eval())

            embed = (p["Phi"], p["phi_b"]) if module.embed else None
            layers.append(_Layer(l, "forward", N, N_in, blocks, factory, embed))
        return gcell, single, layers
    if isinstance(module, _Cell):
        try:
            single = step_cell_of(module)
        except MftrnnError:
            raise _unsupported(module) from None
        gcell = single.as_gated()
        return gcell, single, [_Layer(0, "forward", module.hidden_size, module.input_size,
                                      _cell_module_blocks(module, gcell)[0], lambda: _wrap_single(_copy64(module)))]
    raise _unsupported(module)


# --------------------------------------------------------------------------- theory
def _theory_hyperparameters(gcell: GatedCell, single: Cell | None, stats: dict, R: float) -> dict:
    """Keyword arguments of :func:`mftrnn.fixed_point`: flat for a single-state cell, per gate otherwise."""
    kinds = ("sigma_w", "sigma_v", "sigma_b", "mu_b")
    if single is not None:
        return {k: stats["u"][k] for k in kinds} | {"R": R}
    return {f"{k}_{K}": stats[K][k] for K in gcell.gates for k in kinds} | {"R": R}


def _predicted_spectrum(cell_name: str, single: bool, chi: float, xi: float | None, T: int, *, orthogonal: bool,
                        hyperparameters: dict) -> dict:
    r"""Predicted moments of the spectrum of :math:`JJ^\top` for the ``T``-step state Jacobian.

    Single-state cells: :func:`mftrnn.theory.jacobian.product_moments` (free probability: mean :math:`\chi^T`,
    relative variance :math:`Tr` and its independent-coefficient form). Gated cells:
    :func:`mftrnn.theory.gated_jacobian.gated_product_moments` (mean exact in the untied mean field, spread by the
    approximation it states); the mean-field estimate :math:`\chi^T` of the mean where it does not apply. Returns ``log_mean``, ``mean`` (None outside the
    float range), ``relative_variance`` (or None), ``relative_variance_independent`` (or None) and ``source``.
    """
    fallback = ""
    if single:
        try:
            pm = product_moments(cell_name, T, orthogonal=orthogonal, **hyperparameters)
        except MftrnnError as exc:   # a cell outside product_moments' class: the mean-field estimate below
            fallback = f" (product_moments: {' '.join(str(exc).split())[:100]})"
    if single and not fallback:
        return {"log_mean": pm["log_mean"], "mean": pm["mean"], "relative_variance": pm["relative_variance"],
                "relative_variance_independent": pm["relative_variance_independent"],
                "source": "free probability (mftrnn.theory.jacobian.product_moments), "
                          + ("orthogonal" if orthogonal else "Gaussian") + " W"}
    if not single:
        from ..theory.gated_jacobian import gated_product_moments
        try:
            gm = gated_product_moments(cell_name, T, orthogonal=orthogonal, samples=100_000, **hyperparameters)
        except MftrnnError as exc:
            fallback = f" (gated_product_moments: {' '.join(str(exc).split())[:100]})"
        else:
            return {"log_mean": gm["log_mean"], "mean": gm["mean"], "relative_variance": gm["relative_variance"],
                    "relative_variance_independent": gm["relative_variance_independent"],
                    "source": "untied mean field (mftrnn.theory.gated_jacobian.gated_product_moments): mean exact, "
                              "spread " + ("by independent coefficients" if gm["relative_variance_independent"]
                                           is not None else "by the free product (approximation)")}
    log_mean = log_chi_power(chi, T, xi)
    mean = math.exp(log_mean) if -745 < log_mean < 709 else (0.0 if log_mean == -math.inf else None)
    return {"log_mean": log_mean, "mean": mean, "relative_variance": None, "relative_variance_independent": None,
            "source": "mean-field estimate chi^T of the mean" + fallback}


# --------------------------------------------------------------------------- measurement
@torch.no_grad()
def _run(step, X: torch.Tensor, n_states: int, N: int) -> tuple:
    """Run ``step`` over ``X`` (L, B, N_in) from zero; ``(final states, outputs of every state (L, B, N))``."""
    s = tuple(X.new_zeros(X.shape[1], N) for _ in range(n_states))
    outs = []
    for x in X:
        s = step(x, s)
        outs.append(torch.stack(s))
    return s, torch.stack(outs, 1) if outs else X.new_zeros(n_states, 0, X.shape[1], N)


def _measure_layer(step, Z: torch.Tensor, *, n_states: int, out_k: int, N: int, burn_in: int, steps: int,
                   n_probes: int, settle: int, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    r"""Tangent propagation through one layer (module docstring); returns ``(measured dict, outputs (L, B, N))``."""
    B = Z.shape[1]
    s, outs_burn = _run(step, Z[:burn_in], n_states, N)
    rows = B * n_probes
    primal = tuple(x.repeat_interleave(n_probes, 0) for x in s)
    n = n_states * N
    u = torch.randn(n_states, rows, N, generator=generator, dtype=torch.float64)
    u = u / torch.sqrt((u * u).sum((0, 2)))[None, :, None]            # unit vectors in the whole state
    logs = np.zeros((steps, rows))
    Q = np.zeros(steps)
    outs = []
    with fwAD.dual_level():
        tangent = tuple(u[j] for j in range(n_states))
        for t in range(steps):
            x = Z[burn_in + t].repeat_interleave(n_probes, 0)
            dual = tuple(fwAD.make_dual(p, v) for p, v in zip(primal, tangent))
            new = step(x, dual)
            unpacked = [fwAD.unpack_dual(y) for y in new]
            primal = tuple(y.primal.detach() for y in unpacked)
            tangent = tuple(torch.zeros_like(p) if y.tangent is None else y.tangent.detach()
                            for p, y in zip(primal, unpacked))
            sq = sum((v * v).sum(1) for v in tangent)                  # |J_t u|^2 with |u| = 1
            with np.errstate(divide="ignore"):
                logs[t] = np.log(sq.cpu().numpy())
            scale = torch.where(sq > 0, 1.0 / torch.sqrt(torch.where(sq > 0, sq, 1.0)), torch.ones_like(sq))
            tangent = tuple(v * scale[:, None] for v in tangent)
            h = primal[out_k][::n_probes]
            Q[t] = float((h * h).mean())
            outs.append(torch.stack([p[::n_probes] for p in primal]))
    per_row = logs.sum(0)                                              # log |J u|^2 over all steps, per probe
    per_seq = per_row.reshape(B, n_probes)
    with np.errstate(invalid="ignore"):
        # log of the mean over probes (per sequence), then over sequences: log (1/n) tr J J^T, pooled
        log_seq = np.logaddexp.reduce(per_seq, axis=1) - math.log(n_probes)
        log_msv = float(np.logaddexp.reduce(log_seq) - math.log(B))
        kept = logs[settle:].reshape(steps - settle, B, n_probes)
        per_seq_rate = kept.mean(axis=(0, 2))
        rate = float(per_seq_rate.mean())
        chi = math.exp(rate) if rate > -745 else 0.0
        chi_se = (chi * float(per_seq_rate.std(ddof=1)) / math.sqrt(B)) if B > 1 and np.isfinite(rate) else None
        chi_arith = float(np.exp(kept).mean())
    outputs = torch.cat([outs_burn, torch.stack(outs, 1)], 1)          # (n_states, L, B, N)
    Zb = Z[:burn_in + steps]
    measured = {"steps": steps, "burn_in": burn_in, "settle": settle, "n_sequences": B, "n_probes": n_probes,
                "state_dimension": n, "chi": chi, "chi_se": chi_se, "chi_arith": chi_arith,
                "log_msv": log_msv, "log_msv_per_sequence": [float(v) for v in log_seq],
                "Q": float(Q.mean()), "R_in": float((Zb * Zb).mean())}
    return measured, outputs[out_k]


# --------------------------------------------------------------------------- results
@dataclass
class LayerDiagnosis:
    """One layer (and direction) of a :class:`Diagnosis`: estimated ``gates`` statistics, the theory's numbers at
    them, its verdict, and (if measured) the ``measured`` dict of the module docstring."""

    layer: int
    direction: str
    N: int
    N_in: int
    R: float
    R_source: str
    gates: dict
    orthogonal: bool
    hyperparameters: dict
    Q_star: float
    chi: float
    xi: float | None
    log_chi_T: float
    spectrum: dict
    verdict_kind: str
    verdict: str
    multistable: bool = False
    measured: dict | None = None
    notes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"layer {self.layer}" + (" (reverse)" if self.direction == "reverse" else "")

    def to_dict(self) -> dict:
        return _jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`: ``layers`` (:class:`LayerDiagnosis`), the module's ``verdict`` and
    ``verdict_kind`` (rules in the module docstring), the ``assumptions`` made. ``to_dict()`` is JSON-safe
    (non-finite numbers as None); ``str()`` is a readable report."""

    module: str
    cell: str
    T: int
    R: float
    layers: list
    verdict_kind: str
    verdict: str
    verdict_layer: str
    assumptions: list
    measure: bool

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("module", "cell", "T", "R", "verdict_kind", "verdict",
                                              "verdict_layer", "assumptions", "measure")}
        out["layers"] = [l.to_dict() for l in self.layers]
        out = _jsonable(out)
        json.dumps(out, allow_nan=False)   # a bug, not bad input, if this raises
        return out

    def __str__(self) -> str:
        lines = [f"{self.module}: cell {self.cell!r}, T = {self.T}, R = {self.R:g}",
                 f"verdict: {self.verdict}" + (f" [{self.verdict_layer}]" if len(self.layers) > 1 else ""), ""]
        for L in self.layers:
            lines.append(f"{L.name}: N = {L.N}, N_in = {L.N_in}, R = {L.R:.4g} ({L.R_source})")
            lines.append("  gate   sigma_w   sigma_v   sigma_b      mu_b   W orthogonal?")
            for K, st in L.gates.items():
                orth = {True: "yes", False: "no", None: "-"}[st.get("orthogonal")]
                lines.append(f"  {K:<4} {st['sigma_w']:9.4f} {st['sigma_v']:9.4f} {st['sigma_b']:9.4f} "
                             f"{st['mu_b']:9.4f}   {orth}")
            xi = "inf" if L.xi is None or not math.isfinite(L.xi) else f"{L.xi:.4g}"
            lines.append(f"  theory (untied mean field): Q* = {L.Q_star:.4g}, chi = {L.chi:.6g}, xi = {xi}, "
                         f"chi^T = {format_power(L.log_chi_T)}")
            sp = L.spectrum
            rel = "" if sp.get("relative_variance") is None else f", relative variance {sp['relative_variance']:.3g}"
            lines.append(f"  T-step spectrum of J J^T: mean {format_power(sp['log_mean'])}{rel} [{sp['source']}]")
            lines.append(f"  verdict: {L.verdict_kind}: {L.verdict}")
            m = L.measured
            if m is not None:
                se = "" if m["chi_se"] is None else f" +- {m['chi_se']:.2g}"
                lines.append(f"  measured (the module itself, tied, {m['steps']} steps after {m['burn_in']}, "
                             f"{m['n_sequences']} sequences x {m['n_probes']} probes): chi = {m['chi']:.4g}{se} "
                             f"(arithmetic {m['chi_arith']:.4g}), Q = {m['Q']:.4g}, input R = {m['R_in']:.4g}")
                lines.append(f"  measured mean squared singular value of the {m['steps']}-step Jacobian: "
                             f"{format_power(m['log_msv'])} (predicted {format_power(m['predicted_log_mean'])})")
                lines.append(f"  verdict from the measured chi: {m['verdict_kind']}: {m['verdict']}")
            for note in L.notes:
                lines.append(f"  note: {note}")
            lines.append("")
        lines.append("assumptions:")
        lines.extend(f"  - {a}" for a in self.assumptions)
        return "\n".join(lines)


def _module_verdict(layers: list) -> tuple[str, str, str]:
    """The verdict of the layer with the largest chi (module docstring)."""
    pick = max(layers, key=lambda L: L.chi)
    return pick.verdict_kind, pick.verdict, pick.name


def _describe(module) -> str:
    extra = module.extra_repr()
    if not extra and isinstance(module, DerivedRNN):
        first = module.layers[0]
        extra = (f"{module.cell.name!r}, input_size={first.input_size}, hidden_size={module.hidden_size}, "
                 f"num_layers={len(module.layers)}")
    return f"{type(module).__name__}({extra})"


# --------------------------------------------------------------------------- the entry point
def diagnose(module, T, *, R: float = 1.0, measure: bool = True, seed: int = 0, max_steps: int = 200,
             burn_in: int = 200, n_sequences: int = 4, n_probes: int = 4, settle: int | None = None) -> Diagnosis:
    r"""Trainability of ``module`` on sequences of length ``T``: estimated hyperparameters, the mean field's
    :math:`Q^*, \chi, \xi`, the predicted ``T``-step Jacobian spectrum and a verdict per layer and for the module,
    and (``measure=True``) the same quantities measured on the module itself (everything in the module docstring).

    ``module``: ``nn.RNN`` (tanh), ``nn.LSTM``, ``nn.GRU`` (any ``num_layers``, ``bidirectional``, ``bias``; not
    ``proj_size``), their ``*Cell`` versions, or mftrnn's ``MinimalRNN``, ``VanillaRNNCell``, ``MinimalRNNCell``,
    ``SymbolicCell``, ``DerivedCell``, ``DerivedRNN``. ``R``: per-component second moment of the input.
    Measurement: ``min(T, max_steps)`` steps after ``burn_in``, ``n_sequences`` x ``n_probes`` probes, the first
    ``settle`` (default ``min(20, steps // 4)``) per-step ratios left out of ``chi``; ``seed`` fixes inputs and
    probes. Cost of the measurement: about ``(burn_in + n_probes * steps) * n_sequences`` steps of each layer and
    direction (forward-mode tangents double the work of the probed steps), on one CPU in float64.

    Raises :class:`~mftrnn.MftrnnError` for an unsupported module (one line naming the supported ones),
    :class:`~mftrnn.DomainError` for bad arguments, and the theory's errors (with the layer named) where the fixed
    point does not exist at the estimated values.
    """
    T = _check_T(T)
    try:
        R = float(R)
    except (TypeError, ValueError):
        raise DomainError(f"R must be a number, got {R!r}") from None
    if not math.isfinite(R) or R < 0:
        raise DomainError(f"R must be finite and >= 0, got {R!r}")
    if not isinstance(measure, (bool, np.bool_)):
        raise DomainError(f"measure must be True or False, got {measure!r}")
    max_steps, burn_in = _check_count("max_steps", max_steps, 2), _check_count("burn_in", burn_in, 0)
    n_sequences, n_probes = _check_count("n_sequences", n_sequences, 1), _check_count("n_probes", n_probes, 1)
    seed = _check_count("seed", seed, 0)
    steps = min(T, max_steps)
    if settle is None:
        settle = min(20, steps // 4)
    settle = _check_count("settle", settle, 0)
    if settle >= steps:
        raise DomainError(f"settle ({settle}) must be smaller than the measured steps min(T, max_steps) = {steps}")

    gcell, single, layers = _read(module)
    theory_cell = single.name if single is not None else gcell
    spectrum_cell = single.name if single is not None else gcell.name
    n_states, out_k = len(gcell.states), gcell.new_states.index(gcell.output)
    gen = torch.Generator().manual_seed(seed)
    results: list[LayerDiagnosis] = []
    R_layer, R_source = R, "given"
    inputs = None                       # the current layer's raw input sequence (L, B, N_in), when measuring
    next_inputs: list = []
    Q_this_layer: list = []
    current = 0
    for lay in layers:
        if lay.layer != current:        # a new layer: its input is the previous layer's output
            current = lay.layer
            R_layer = float(np.mean(Q_this_layer))
            R_source = f"Q* of layer {current - 1}" + (" (mean over directions)" if len(Q_this_layer) > 1 else "")
            inputs = torch.cat(next_inputs, -1) if next_inputs else None
            next_inputs, Q_this_layer = [], []
        name = f"layer {lay.layer}" + (" (reverse)" if lay.direction == "reverse" else "")
        notes = []
        if lay.layer > 0 and float(getattr(module, "dropout", 0.0) or 0.0) > 0:
            notes.append(f"dropout {module.dropout:g} on this layer's input is left out (evaluation mode)")
        stats = {K: gate_statistics(blk, _bias_folds(gcell, K)) for K, blk in lay.blocks.items()}
        R_cell = R_layer
        if lay.embed is not None:
            Phi, phi_b = (t.detach().to("cpu", torch.float64) for t in lay.embed)
            R_cell = R_layer * float((Phi * Phi).sum()) / lay.N + float((phi_b * phi_b).mean())
            notes.append(f"embedding z = Phi y + phi_b: the cell sees R_z = {R_cell:.4g}")
        for K, st in stats.items():
            if st.get("b_hh_rms"):
                notes.append(f"gate {K}: bias_hh (rms {st['b_hh_rms']:.3g}) sits inside the reset product; the "
                             f"theory takes it as 0 (cell description), the measurement keeps it")
        orth_flags = [st["orthogonal"] for st in stats.values() if st["orthogonal"] is not None]
        orthogonal = bool(orth_flags) and all(orth_flags)
        hp = _theory_hyperparameters(gcell, single, stats, R_cell)
        try:
            fp = fixed_point(theory_cell, **hp)
        except MftrnnError as exc:
            raise type(exc)(f"{name}: the mean field at the estimated hyperparameters failed: {exc}") from None
        chi = float("nan") if fp.chi is None else float(fp.chi)
        if not math.isfinite(chi) or not math.isfinite(float(fp.Q_star)):
            raise MftrnnError(f"{name}: the mean field gave chi = {chi}, Q* = {float(fp.Q_star)} at the estimated "
                              f"hyperparameters {hp}")
        xi = None if fp.xi is None else float(fp.xi)
        spectrum_of = lambda n_steps: _predicted_spectrum(spectrum_cell, single is not None, chi, xi, n_steps,
                                                          orthogonal=orthogonal, hyperparameters=hp)
        spectrum = spectrum_of(T)
        kind, sentence = verdict(chi, T, xi)
        if bool(np.any(fp.multistable)):
            notes.append("the variance map has several stable fixed points; Q* is the least (from a zero state)")
        if lay.layer > 0:
            notes.append("a deeper layer is driven by the states of the layer below, correlated in time, not the "
                         "i.i.d. inputs the mean field assumes: its numbers are a rough guide (see mftrnn.nets.init)")
        L = LayerDiagnosis(layer=lay.layer, direction=lay.direction, N=lay.N, N_in=lay.N_in, R=R_cell,
                           R_source=R_source, gates=stats, orthogonal=orthogonal,
                           hyperparameters={k: float(v) for k, v in hp.items()}, Q_star=float(fp.Q_star), chi=chi,
                           xi=xi, log_chi_T=log_chi_power(chi, T, xi),
                           spectrum=spectrum, verdict_kind=kind, verdict=sentence,
                           multistable=bool(np.any(fp.multistable)), notes=notes)
        Q_this_layer.append(L.Q_star)
        if measure:
            if inputs is None:
                L_total = burn_in + steps
                inputs = math.sqrt(R) * torch.randn(L_total, n_sequences, lay.N_in, generator=gen,
                                                    dtype=torch.float64)
            Z = inputs if lay.direction == "forward" else inputs.flip(0)
            if lay.embed is not None:
                Z = Z @ Phi.T + phi_b
            m, outs = _measure_layer(lay.make_step(), Z, n_states=n_states, out_k=out_k, N=lay.N, burn_in=burn_in,
                                     steps=steps, n_probes=n_probes, settle=settle, generator=gen)
            next_inputs.append(outs if lay.direction == "forward" else outs.flip(0))
            m["predicted_log_mean"] = spectrum_of(steps)["log_mean"]
            if m["chi"] > 0 and math.isfinite(m["chi"]):
                m["verdict_kind"], m["verdict"] = verdict(m["chi"], T)
            else:
                m["verdict_kind"], m["verdict"] = verdict(0.0, T)
            L.measured = m
        results.append(L)
    kind, sentence, where = _module_verdict(results)
    assumptions = [
        "weights i.i.d. with the estimated statistics: holds at initialisation, only a rough guide after training",
        "untied mean field (N -> infinity, weights independent across steps); a real (tied) network deviates, "
        "most where recurrent variances are O(1): compare the measured values",
        f"inputs i.i.d. in time with per-component second moment R = {R:g} (layer 0); layer l > 0 sees the states "
        "of layer l-1, with R = that layer's Q* (mean over directions)",
        "the state starts at zero (the least fixed point of the variance map)",
        "chi^T: the factor by which the mean squared gradient from step 0 is scaled by step T (the mean squared "
        "singular value of the T-step state Jacobian, whole state: (c, h) for the LSTM)",
    ]
    if single is None:
        assumptions.append("gated cell: the T-step spectrum is the mean-field estimate chi^T of its mean")
    if measure:
        assumptions.append(f"measured on a float64 CPU copy with Gaussian inputs over min(T, max_steps) = {steps} "
                           f"steps after a burn-in of {burn_in}; {n_sequences} sequences x {n_probes} probes; "
                           f"seed {seed}")
    return Diagnosis(module=_describe(module), cell=gcell.name, T=T, R=R, layers=results, verdict_kind=kind,
                     verdict=sentence, verdict_layer=where, assumptions=assumptions, measure=bool(measure))

r"""Critical initialisation of gated cells (``nn.LSTM``, ``nn.GRU``) for a task of length :math:`T`.

**Objective.** A task of length :math:`T` needs the state to remember for :math:`T` steps and gradients to cross
them: the timescale :math:`\xi = -1/\ln\chi` at least :math:`kT`, so that :math:`\chi^T = e^{-1/k}` (the GRU's mean
squared singular value of the :math:`T`-step Jacobian is exactly that; the LSTM's, over the whole state
:math:`(c, h)`, is lower, since half of its spectrum belongs to :math:`h`: the ``mean`` of
:func:`mftrnn.theory.gated_jacobian.gated_product_moments`, reported), and a narrow Jacobian spectrum. The lever is
the cell's **memory gate**, the gate of the factor :math:`A` in the carried state's update :math:`s_t = A s + B`
(read off the cell description: the LSTM's forget gate :math:`f`, the GRU's update gate :math:`z`):

1. its bias :math:`\mu_{b}` is chosen so that :math:`\xi = kT` exactly (a root of :math:`\chi(\mu_b) =
   e^{-1/(kT)}`, with :math:`\chi` the exact untied mean field; a larger bias would only slow forgetting further);
2. its input and bias variances are set to 0, so that :math:`A` does not vary over units with the input: the
   spread of :math:`A^2` over units is the part of the Jacobian's spectral spread that grows fastest with
   :math:`T` (it enters as :math:`\beta^T`, :math:`\beta = \mathbb E[a^4]/m_1^2`; see
   :func:`mftrnn.theory.jacobian.product_moments`); the recurrent weights still modulate the gate;
3. the other gates keep :math:`\sigma_v = 1` (the input reaches the cell) and zero bias, and every recurrent matrix
   has ``sigma_w`` (default 0.2: small recurrent weights, where the untied theory describes the real network with
   one matrix reused at every step; the real LSTM departs from its untied mean field as ``sigma_w`` grows, the
   caveat of the gated chapter). ``tests/test_gated_init.py`` measures :math:`\chi` on an initialised ``nn.GRU``
   (``mftrnn.diagnose``, tied weights) against the prediction; ``mftrnn.diagnose`` prints both for any module.

The result reports the one-step and :math:`T`-step spectrum (mean exact; spread by the approximations stated in
:mod:`mftrnn.theory.gated_jacobian`), so that a user who passes another ``sigma_w`` sees what it costs.
"""
from __future__ import annotations

import math

import numpy as np
import sympy as sp
from scipy.optimize import brentq

from ..cells.gated import GatedCell, gate_hyperparameters
from ..errors import ConvergenceError, DomainError, MftrnnError
from .gated import _point, analyse, gated_fixed_point

__all__ = ["memory_gate", "input_gate", "gated_for_timescale", "SIGMA_W_DEFAULT", "XI_MAX_GATED"]

#: default recurrent scale per gate (module docstring: where tied networks follow the untied theory)
SIGMA_W_DEFAULT = 0.2
#: the largest k T accepted (the stationary law of the LSTM cell state widens as 1/(1 - f); beyond ~1e4 steps it
#: is no longer resolved by the characteristic-function grid and the fixed point refuses)
XI_MAX_GATED = 20_000.0


def memory_gate(cell) -> str:
    r"""The gate letter of the carried state's factor :math:`A` (:math:`s_t = As_{t-1} + B`): ``f`` for the LSTM,
    ``z`` for the GRU. A clear error for a cell without one field in :math:`A`."""
    from ..cells.registry import get_cell
    cell = get_cell(cell) if not isinstance(cell, GatedCell) else cell
    if not isinstance(cell, GatedCell):
        raise MftrnnError(f"{cell.name!r} is not a gated cell")
    st = analyse(cell)
    fields = [f for f in cell.fields if f.symbol in sp.sympify(st.A).free_symbols]
    if st.carried is None or len(fields) != 1:
        raise MftrnnError(f"cell {cell.name!r}: no single memory gate in the carried state's factor {st.A}")
    return fields[0].gate


def input_gate(cell) -> str | None:
    r"""The gate letter of a sigmoid factor of :math:`B` in :math:`s_t = As_{t-1} + B` on a field of its own (the
    LSTM's input gate ``i``), or ``None`` where :math:`B`'s gate factor is the memory gate's (the GRU's
    :math:`1 - z`)."""
    from ..cells.functions import sigmoid
    from ..cells.registry import get_cell
    cell = get_cell(cell) if not isinstance(cell, GatedCell) else cell
    mem = memory_gate(cell)
    st = analyse(cell)
    for factor in sp.Mul.make_args(sp.factor_terms(st.B)):
        if isinstance(factor, sigmoid) and factor.args[0].is_Symbol:
            f = cell.field_of(factor.args[0])
            if f.gate != mem:
                return f.gate
    return None


def _hyperparameters(cell: GatedCell, gate: str, mu: float, sigma_w: float, sigma_v: float, R: float) -> dict:
    hp = {"sigma_w": sigma_w, "sigma_v": sigma_v, "sigma_b": 0.0, "mu_b": 0.0, "R": R,
          f"sigma_v_{gate}": 0.0, f"mu_b_{gate}": mu}
    return hp


def _log_chi(cell, gate, mu, sigma_w, sigma_v, R) -> float:
    st = analyse(cell)
    per_gate, R_ = gate_hyperparameters(cell, _hyperparameters(cell, gate, mu, sigma_w, sigma_v, R))
    hp = {g: {k: float(v) for k, v in d.items()} for g, d in per_gate.items()}
    chi = _point(st, hp, float(R_), "exact", with_chi_q=False)["chi"]
    return math.log(chi) if chi > 0 else -np.inf


def gated_for_timescale(cell, T, *, k: float = 1.0, sigma_w: float = SIGMA_W_DEFAULT, sigma_v: float = 1.0,
                        R: float = 1.0, orthogonal: bool = False, samples: int = 200_000) -> dict:
    r"""Hyperparameters of a gated cell with timescale :math:`\xi = kT` (module docstring: the objective).

    Returns the per-gate hyperparameters (``sigma_w_K, sigma_v_K, sigma_b_K, mu_b_K`` and ``R``), ``memory_gate``,
    ``T``, ``k``, the fixed point's ``Q_star`` (and ``Qc_star``), ``chi``, ``xi``, and the Jacobian spectrum:
    ``mean`` (:math:`T` steps, exact), ``relative_variance_step``, ``spread`` (the :math:`T`-step relative variance:
    coefficients drawn afresh at every step, exact for that model for every cell; ``spread_method`` says so).
    :class:`~mftrnn.DomainError` for bad input or :math:`kT >` :data:`XI_MAX_GATED`;
    :class:`~mftrnn.ConvergenceError` if no bias reaches the target."""
    from ..cells.registry import get_cell
    from .gated_jacobian import gated_product_moments
    cell = get_cell(cell) if not isinstance(cell, GatedCell) else cell
    gate = memory_gate(cell)
    for name, v in (("T", T), ("k", k), ("sigma_w", sigma_w), ("sigma_v", sigma_v), ("R", R)):
        try:
            ok = math.isfinite(float(v)) and float(v) >= 0 and not isinstance(v, bool)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise DomainError(f"{name} must be a finite non-negative number, got {v!r:.40}")
    if float(T) != int(T) or int(T) < 1:
        raise DomainError(f"T must be an integer >= 1, got {T!r}")
    if not float(k) > 0:
        raise DomainError(f"k must be positive, got {k!r}")
    T, k, sigma_w, sigma_v, R = int(T), float(k), float(sigma_w), float(sigma_v), float(R)
    xi_target = k * T
    if xi_target > XI_MAX_GATED:
        raise DomainError(f"k*T = {xi_target:g} exceeds {XI_MAX_GATED:g} steps: the memory-gate bias it needs "
                          "widens the law of the cell state beyond what the mean field resolves")
    target = -1.0 / xi_target
    F = lambda mu: _log_chi(cell, gate, mu, sigma_w, sigma_v, R) - target
    # in the small-weight limit chi ~ sigmoid(mu)^2: start there and widen the bracket
    guess = -math.log(1.0 / math.exp(target / 2.0) - 1.0) if xi_target > 0.5 else 0.0
    lo, hi = guess - 1.0, guess + 1.0
    f_lo, f_hi = F(lo), F(hi)
    for _ in range(20):
        if f_lo >= 0:
            lo, f_lo = lo - 2.0, F(lo - 2.0)
        if f_hi <= 0:
            hi, f_hi = hi + 1.0, F(hi + 1.0)
        if f_lo < 0 < f_hi:
            break
    else:
        raise ConvergenceError(f"{cell.name}: no {gate}-gate bias gives xi = {xi_target:g} at sigma_w = {sigma_w:g}")
    mu = brentq(F, lo, hi, xtol=1e-10, rtol=1e-12)
    hp = _hyperparameters(cell, gate, mu, sigma_w, sigma_v, R)
    fp = gated_fixed_point(cell, **hp)
    spec = gated_product_moments(fp, T, orthogonal=orthogonal, samples=samples)
    out = {key: float(v) for key, v in fp.params.items()}
    out.update(cell=cell.name, memory_gate=gate, T=T, k=k, orthogonal=bool(orthogonal), Q_star=float(fp.Q_star),
               chi=float(fp.chi), xi=float(fp.xi), mean=spec["mean"], log_mean=spec["log_mean"],
               relative_variance_step=spec["relative_variance_step"],
               spread=spec["relative_variance_independent"],
               spread_method=("coefficients drawn afresh at every step (exact for that model; in a network a "
                              "unit's carried state correlates successive steps)"))
    if fp.Qc_star is not None:
        out["Qc_star"] = float(fp.Qc_star)
    if abs(out["xi"] - xi_target) > 1e-6 * xi_target:
        raise ConvergenceError(f"{cell.name}: the bias found gives xi = {out['xi']:.8g}, not {xi_target:g}")
    return out

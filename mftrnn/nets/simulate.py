r"""Finite-width Monte Carlo of two input sequences through random RNNs.

:func:`simulate` propagates two sequences :math:`a` and :math:`b` through
``n_networks`` independent random networks of width :math:`N` (batched with
:func:`torch.bmm`) and records, at every step :math:`t = 0, \dots, T`,

.. math::

    Q^a_t = |h^a_t|^2/N, \qquad Q^b_t = |h^b_t|^2/N, \qquad
    C_t = h^a_t \cdot h^b_t / N,

which the mean-field variance and covariance maps predict as
:math:`N\to\infty`.

Inputs are i.i.d. over time and components, Gaussian with zero mean and
second moment :math:`R`; the two sequences have overlap :math:`\Sigma`:

.. math::

    x^b_t = \Sigma\, x^a_t + \sqrt{1-\Sigma^2}\,\xi_t, \qquad
    \mathbb E[x^a_t\cdot x^b_t]/N_{in} = R\,\Sigma.

Initial states are Gaussian with :math:`|h^a_0|^2/N \approx Q_0`,
:math:`|h^b_0|^2/N \approx Q_0^b` and :math:`h^a_0\cdot h^b_0/N \approx C_0`
(in expectation; the realised values carry :math:`O(N^{-1/2})` noise and are
what is recorded at :math:`t=0`).

Weights.  ``tied=True`` is a real RNN: one :math:`(W, V, b)` per network,
used at every step (see :func:`mftrnn.nets.nn.init_` for the distribution).
``tied=False`` draws a fresh, independent :math:`(W, V, b)` at every step
(shared by the two sequences at that step) -- the independence assumption
under which the mean-field maps are exact as :math:`N\to\infty`.  For
untied weights only the products :math:`(W h^a, W h^b)` and
:math:`(V x^a, V x^b)` are needed, and since the fresh matrix is independent
of the vectors it multiplies, these are sampled directly from their exact
joint law (Gaussian :math:`W`: rows i.i.d.
:math:`\mathcal N(0, \sigma_w^2 G)` with :math:`G` the :math:`2\times2` Gram
matrix of the two vectors divided by :math:`N`; Haar-orthogonal :math:`W`: a
uniformly random orthonormal 2-frame with the same Gram matrix).  This is
equal in distribution to drawing the whole matrix, at :math:`O(N)` instead of
:math:`O(N^2)` (or :math:`O(N^3)` for a QR) cost per step.

:func:`measure_chi` estimates the per-step rates that the theory calls
:math:`\chi` (identical inputs, :math:`\Sigma=1`) and :math:`\chi_c`
(independent inputs, :math:`\Sigma=0`) from such simulations.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
import torch

from ..cells.registry import Cell, get_cell
from ..errors import MftrnnError
from ..theory.jacobian import step_jacobian
from .gated import TORCH_FUNCTIONS
from .nn import check_hyperparameters, haar_orthogonal
from .registry import step_cell_of, step_module, torch_update

__all__ = ["simulate", "SimulationResult", "measure_chi", "ChiEstimate", "torch_coefficients"]


# --------------------------------------------------------------------------- helpers
def _cell(cell) -> Cell:
    """The registered single-state cell (a name, a :class:`~mftrnn.Cell` or an object with such a ``name``) with one
    pre-activation; gated cells have their own simulator (:mod:`mftrnn.nets.simulate_gated`)."""
    if not isinstance(cell, Cell):
        name = cell if isinstance(cell, str) else getattr(cell, "name", None)
        cell = get_cell(name.lower() if isinstance(name, str) else cell, gated=False)
    if len(cell.preactivations) != 1:
        raise ValueError(f"the simulator supports cells with one pre-activation; {cell.name!r} has "
                         f"{len(cell.preactivations)}")
    return cell


def _cell_name(cell) -> str:
    return _cell(cell).name


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_finite(name: str, value, minimum=None) -> float:
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" and >= {minimum}"
        raise ValueError(f"{name} must be finite{bound}, got {value!r}")
    return value


def _generators(seed: int, device) -> tuple[torch.Generator, torch.Generator]:
    """Two independent generators: one for data (inputs, initial states), one for weights.

    Keeping them separate gives tied and untied runs with the same seed the
    same inputs and initial states (common random numbers).
    """
    s_data, s_weights = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    g_data = torch.Generator(device=device).manual_seed(int(s_data) >> 1)
    g_weights = torch.Generator(device=device).manual_seed(int(s_weights) >> 1)
    return g_data, g_weights


def _overlaps(ha: torch.Tensor, hb: torch.Tensor):
    """Per-network Q_a, Q_b, C and D = |h^a - h^b|^2 / (2N); inputs (B, N)."""
    n = ha.shape[-1]
    d = ha - hb
    return ((ha * ha).sum(-1) / n, (hb * hb).sum(-1) / n, (ha * hb).sum(-1) / n,
            (d * d).sum(-1) / (2 * n))


def _pair_product(u, v, scale, orthogonal, gen):
    r"""Return :math:`(Mu, Mv)` for a fresh random :math:`M` independent of u, v.

    ``u, v``: (B, n).  Gaussian :math:`M_{ij}\sim\mathcal N(0, s^2/n)` or
    :math:`M = s\,O` with :math:`O` Haar-orthogonal (square case).  Sampled
    exactly through the Cholesky factor of the Gram matrix of
    :math:`(u, d = v - u)`; using the difference keeps
    :math:`M v - M u = M d` accurate to relative precision when
    :math:`v \approx u` (needed to follow tiny perturbations).
    """
    B, n = u.shape
    d = v - u
    g_uu = (u * u).sum(-1) / n
    g_ud = (u * d).sum(-1) / n
    g_dd = (d * d).sum(-1) / n
    l11 = torch.sqrt(g_uu)
    safe = l11 > 0
    l21 = torch.where(safe, g_ud / torch.where(safe, l11, torch.ones_like(l11)), torch.zeros_like(l11))
    l22 = torch.sqrt(torch.clamp(g_dd - l21 * l21, min=0.0))
    g = torch.randn(B, 2, n, generator=gen, dtype=u.dtype, device=u.device)
    if orthogonal:
        # uniformly random orthonormal 2-frame (Gram-Schmidt of Gaussian vectors), times sqrt(n)
        e1 = g[:, 0] / g[:, 0].norm(dim=-1, keepdim=True)
        g2 = g[:, 1] - (g[:, 1] * e1).sum(-1, keepdim=True) * e1
        e2 = g2 / g2.norm(dim=-1, keepdim=True)
        g1, g2 = math.sqrt(n) * e1, math.sqrt(n) * e2
    else:
        g1, g2 = g[:, 0], g[:, 1]
    mu = scale * l11[:, None] * g1
    md = scale * (l21[:, None] * g1 + l22[:, None] * g2)
    return mu, mu + md


class _Networks:
    """A batch of ``B`` random networks; ``step`` advances both sequences by one step."""

    def __init__(self, cell, B, N, N_in, sigma_w, sigma_v, sigma_b, mu_b, tied, orthogonal,
                 gen, dtype, device):
        self.cell, self.B, self.N, self.N_in = cell, B, N, N_in
        self.update = torch_update(_cell(cell))
        self.sigma_w, self.sigma_v, self.sigma_b, self.mu_b = sigma_w, sigma_v, sigma_b, mu_b
        self.tied, self.orthogonal, self.gen = tied, orthogonal, gen
        kw = dict(generator=gen, dtype=dtype, device=device)
        self.kw = kw
        if tied:
            if orthogonal:
                self.W = sigma_w * haar_orthogonal(B, N, N, **kw)
            else:
                self.W = torch.randn(B, N, N, **kw) * (sigma_w / math.sqrt(N))
            self.V = torch.randn(B, N, N_in, **kw) * (sigma_v / math.sqrt(N_in))
            self.b = mu_b + sigma_b * torch.randn(B, N, **kw)

    def preactivations(self, ha, hb, xa, xb):
        """(e^a, e^b), each (B, N), with W, V, b tied or freshly drawn."""
        if self.tied:
            e = (torch.bmm(self.W, torch.stack((ha, hb), -1))
                 + torch.bmm(self.V, torch.stack((xa, xb), -1)))
            e = e + self.b[..., None]
            return e[..., 0], e[..., 1]
        wa, wb = _pair_product(ha, hb, self.sigma_w, self.orthogonal, self.gen)
        va, vb = _pair_product(xa, xb, self.sigma_v, False, self.gen)
        b = self.mu_b + self.sigma_b * torch.randn(self.B, self.N, **self.kw)
        return wa + va + b, wb + vb + b

    def step(self, ha, hb, xa, xb):
        ea, eb = self.preactivations(ha, hb, xa, xb)
        return self.update(ea, ha, xa), self.update(eb, hb, xb)


def _inputs(B, N_in, R, Sigma, gen, dtype, device):
    """x^a ~ N(0, R I); x^b = Sigma x^a + sqrt(1 - Sigma^2) xi, xi ~ N(0, R I)."""
    g = torch.randn(2, B, N_in, generator=gen, dtype=dtype, device=device) * math.sqrt(R)
    xa = g[0]
    if Sigma == 1.0:
        return xa, xa.clone()
    return xa, Sigma * xa + math.sqrt(1.0 - Sigma * Sigma) * g[1]


def _initial_states(B, N, Q0, Q0b, C0, gen, dtype, device):
    """Gaussian h^a_0, h^b_0 with E|h^a|^2/N = Q0, E|h^b|^2/N = Q0b, E h^a.h^b/N = C0."""
    g = torch.randn(2, B, N, generator=gen, dtype=dtype, device=device)
    ha = math.sqrt(Q0) * g[0]
    if Q0 == 0.0:
        return ha, math.sqrt(Q0b) * g[1]
    rest = max(Q0b - C0 * C0 / Q0, 0.0)
    return ha, (C0 / math.sqrt(Q0)) * g[0] + math.sqrt(rest) * g[1]


def _validate(cell, N, T, sigma_w, sigma_v, sigma_b, mu_b, R, Sigma, Q0, C0, Q0b, N_in, n_networks):
    cell_obj = _cell(cell)
    cell = cell_obj.name
    N = _check_int("N", N, 1)
    T = _check_int("T", T, 0)
    n_networks = _check_int("n_networks", n_networks, 1)
    N_in = N if N_in is None else _check_int("N_in", N_in, 1)
    if cell_obj.input in cell_obj.update.free_symbols and N_in != N:
        raise ValueError(f"the {cell} cell adds its input to the state, so the input has the state's dimension "
                         f"N={N}; got N_in={N_in}")
    sigma_w, sigma_v, sigma_b, mu_b = check_hyperparameters(sigma_w, sigma_v, sigma_b, mu_b)
    R = _check_finite("R", R, 0.0)
    Sigma = _check_finite("Sigma", Sigma)
    if not -1.0 <= Sigma <= 1.0:
        raise ValueError(f"Sigma (input overlap / R) must lie in [-1, 1], got {Sigma!r}")
    Q0 = _check_finite("Q0", Q0, 0.0)
    Q0b = Q0 if Q0b is None else _check_finite("Q0b", Q0b, 0.0)
    C0 = _check_finite("C0", C0)
    if abs(C0) > math.sqrt(Q0 * Q0b) * (1 + 1e-12):
        raise ValueError(f"need |C0| <= sqrt(Q0*Q0b) = {math.sqrt(Q0 * Q0b)!r}, got C0={C0!r}")
    C0 = max(-math.sqrt(Q0 * Q0b), min(C0, math.sqrt(Q0 * Q0b)))
    return cell, N, T, sigma_w, sigma_v, sigma_b, mu_b, R, Sigma, Q0, C0, Q0b, N_in, n_networks


def _stats(x: np.ndarray):
    n = x.shape[0]
    mean = x.mean(0)
    sem = x.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    return mean, sem


# --------------------------------------------------------------------------- simulate
@dataclass
class SimulationResult:
    """Output of :func:`simulate`.

    ``Q_a, Q_b, C, D``: means over networks, numpy arrays of length ``T+1``
    (index ``t = 0`` is the initial state); ``*_sem``: standard errors of
    those means over networks (NaN for a single network); ``*_all``: the
    per-network values, shape ``(n_networks, T+1)``.  ``D = |h^a - h^b|^2/(2N)
    = (Q_a + Q_b)/2 - C``, recorded directly to avoid cancellation when the
    two states are very close.  ``params``: the arguments of the run.
    """

    Q_a: np.ndarray
    Q_b: np.ndarray
    C: np.ndarray
    D: np.ndarray
    Q_a_sem: np.ndarray
    Q_b_sem: np.ndarray
    C_sem: np.ndarray
    D_sem: np.ndarray
    Q_a_all: np.ndarray
    Q_b_all: np.ndarray
    C_all: np.ndarray
    D_all: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def t(self) -> np.ndarray:
        """Time steps 0..T."""
        return np.arange(self.Q_a.shape[0])


@torch.no_grad()
def _record(nets, ha, hb, T, n_networks, N_in, R, Sigma, g_data, dtype, device, params):
    """Run T steps of both sequences, recording the overlaps (Q_a, Q_b, C, D) at every step."""
    rows = [_overlaps(ha, hb)]
    for _ in range(T):
        xa, xb = _inputs(n_networks, N_in, R, Sigma, g_data, dtype, device)
        ha, hb = nets.step(ha, hb, xa, xb)
        rows.append(_overlaps(ha, hb))
    all_ = [torch.stack([r[k] for r in rows], -1).cpu().numpy() for k in range(4)]
    (qa, qa_s), (qb, qb_s), (c, c_s), (d, d_s) = (_stats(a) for a in all_)
    return SimulationResult(qa, qb, c, d, qa_s, qb_s, c_s, d_s, *all_, params=params)


def simulate(cell, N=1000, T=50, sigma_w=1.0, sigma_v=1.0, sigma_b=0.0, mu_b=0.0, R=1.0,
             Sigma=1.0, Q0=1.0, C0=0.0, n_networks=8, tied=True, orthogonal=False, seed=0,
             device="cpu", dtype=torch.float64, *, Q0b=None, N_in=None) -> SimulationResult:
    r"""Simulate two sequences through ``n_networks`` random networks of width ``N``.

    Parameters
    ----------
    cell : a registered single-state cell with one pre-activation (``"vanilla"``, ``"minimal"``, or one added
        with :func:`mftrnn.register_cell`), or an object with that ``name``.
    N, T : width (>= 1) and number of steps (>= 0).
    sigma_w, sigma_v, sigma_b, mu_b : weight/bias hyperparameters (see :func:`mftrnn.nets.nn.init_`).
    R : per-component input second moment (>= 0).
    Sigma : input overlap, :math:`x^a\cdot x^b/N_{in} = R\Sigma`, in [-1, 1].
    Q0, C0 : initial :math:`|h^a_0|^2/N` and :math:`h^a_0\cdot h^b_0/N`
        (keyword ``Q0b`` for :math:`|h^b_0|^2/N`, default ``Q0``);
        :math:`|C_0| \le \sqrt{Q_0 Q_0^b}`.
    n_networks : independent networks, simulated as one batch.
    tied : one (W, V, b) per network for all steps (True) or fresh ones at every step (False).
    orthogonal : W = sigma_w * Haar-orthogonal instead of Gaussian.
    seed : integer seed; equal seeds give identical results.
    N_in : input dimension of the vanilla cell (default N; must be N for the minimal cell).

    Returns
    -------
    SimulationResult
    """
    (cell, N, T, sigma_w, sigma_v, sigma_b, mu_b, R, Sigma, Q0, C0, Q0b, N_in,
     n_networks) = _validate(cell, N, T, sigma_w, sigma_v, sigma_b, mu_b, R, Sigma, Q0, C0, Q0b,
                             N_in, n_networks)
    params = dict(cell=cell, N=N, T=T, sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b,
                  mu_b=mu_b, R=R, Sigma=Sigma, Q0=Q0, Q0b=Q0b, C0=C0, N_in=N_in,
                  n_networks=n_networks, tied=bool(tied), orthogonal=bool(orthogonal),
                  seed=int(seed))
    g_data, g_weights = _generators(seed, device)
    ha, hb = _initial_states(n_networks, N, Q0, Q0b, C0, g_data, dtype, device)
    nets = _Networks(cell, n_networks, N, N_in, sigma_w, sigma_v, sigma_b, mu_b, bool(tied),
                     bool(orthogonal), g_weights, dtype, device)
    return _record(nets, ha, hb, T, n_networks, N_in, R, Sigma, g_data, dtype, device, params)


# --------------------------------------------------------------------------- chi
def _first_run(mask: np.ndarray) -> np.ndarray:
    """Indices of the first contiguous run of True in a 1-d mask (empty if none)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return idx
    stop = idx[0]
    while stop + 1 < mask.size and mask[stop + 1]:
        stop += 1
    return np.arange(idx[0], stop + 1)


@dataclass
class ChiEstimate:
    """Output of :func:`measure_chi`.

    ``chi``: the measured per-step rate; ``chi_sem``: its standard error
    (from the spread of per-network slopes for ``kind="chi"``, from the
    covariance of the least-squares fit for ``kind="chi_c"``); ``t``, ``y``:
    the time steps and values (``D_t`` or ``|C_t - C_inf|``, mean over
    networks) used in the log-linear fit; ``sim``: the underlying
    :class:`SimulationResult` (after burn-in); ``Q_star``: the measured
    stationary :math:`Q`; ``C_inf``: the estimated :math:`C^*` (``kind="chi_c"``).
    """

    chi: float
    chi_sem: float
    kind: str
    t: np.ndarray
    y: np.ndarray
    sim: SimulationResult
    Q_star: float
    C_inf: float = float("nan")


@torch.no_grad()
def measure_chi(cell, kind="chi", N=1000, T=60, sigma_w=1.0, sigma_v=1.0, sigma_b=0.0, mu_b=0.0,
                R=1.0, n_networks=8, tied=True, orthogonal=False, seed=0, burn_in=100, eps=1e-6,
                t_min=None, rel_floor=1e-12, rel_ceiling=1e-2, noise_factor=3.0, delta=0.5,
                device="cpu", dtype=torch.float64) -> ChiEstimate:
    r"""Measure :math:`\chi` (``kind="chi"``) or :math:`\chi_c` (``kind="chi_c"``) by simulation.

    Both start from a stationary state: the two sequences are run for
    ``burn_in`` steps from :math:`Q_0=1` (with the same network when
    ``tied``; identical states and inputs for ``"chi"``), so
    :math:`Q_t \approx Q^*` when the measurement begins; ``Q_star`` in the
    result is :math:`|h^a|^2/N` at that moment, averaged over networks.

    ``kind="chi"`` (identical inputs, :math:`\Sigma=1`): :math:`h^b_0 = h^a_0
    + \delta` with a small Gaussian :math:`\delta`, :math:`D_0 = |\delta|^2/(2N) =
    \varepsilon Q^*`.  In mean field :math:`D_t = Q_t - C_t` obeys
    :math:`D_{t+1} = \chi D_t` while it is small.  The slope of
    :math:`\log D_t` is fitted per network over the steps
    :math:`t \ge t_{min}` with ``rel_floor < D_t/Q* < rel_ceiling`` (above
    float round-off, below the non-linear regime); :math:`\chi = \exp` of the
    mean slope.  The inputs being identical and the weights shared, there is
    no sampling noise in :math:`D_t` itself, only network-to-network spread.

    ``kind="chi_c"`` (independent inputs, :math:`\Sigma=0`): both sequences
    are burnt in with independent inputs, so :math:`C_t \approx C^*`; then
    :math:`h^b` is rotated towards :math:`h^a` in the plane they span, at
    fixed :math:`|h^b|`, raising the correlation coefficient by ``delta``
    (a pure perturbation of :math:`C`, none of :math:`Q`); the relaxation
    :math:`C_t - C^* \propto \chi_c^t` is followed with
    :math:`\Sigma=0`.  :math:`C^*` is estimated as the mean of :math:`C_t`
    over the last third of the run, and :math:`\log|C_t - C^*|` (mean over
    networks) is fitted over :math:`t \ge t_{min}` while
    :math:`|C_t - C^*|` exceeds ``noise_factor`` times its standard error.
    The inputs being independent, :math:`C_t` carries
    :math:`O(\sqrt{Q^2/(N\,n_{networks})})` sampling noise, so only a few
    steps are usable when :math:`\chi_c` is small: this estimate is much
    noisier than ``kind="chi"``, and its quoted standard error (of the fit
    only: the uncertainty of :math:`C^*` and the non-linear first steps are
    not propagated) understates the seed-to-seed spread about threefold
    (measured: 0.656-0.789 over seeds against theory 0.7125 at
    sigma_w=1.6, sigma_v=0.5, sigma_b=0.3, N=1000). Prefer comparing the
    :math:`\Sigma=0` trajectory with :func:`mftrnn.iterate_maps`.
    """
    if kind not in ("chi", "chi_c"):
        raise ValueError(f"kind must be 'chi' or 'chi_c', got {kind!r}")
    Sigma = 1.0 if kind == "chi" else 0.0
    (cell, N, T, sigma_w, sigma_v, sigma_b, mu_b, R, Sigma, _, _, _, N_in,
     n_networks) = _validate(cell, N, T, sigma_w, sigma_v, sigma_b, mu_b, R, Sigma, 1.0, 0.0, None,
                             None, n_networks)
    burn_in = _check_int("burn_in", burn_in, 0)
    if T < 3:
        raise ValueError(f"T must be >= 3 for a fit, got {T}")
    eps = _check_finite("eps", eps, 0.0)
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")

    if t_min is None:
        t_min = 2 if kind == "chi" else 1
    t_min = _check_int("t_min", t_min, 0)
    delta = _check_finite("delta", delta)
    if not 0 < delta <= 1:
        raise ValueError(f"delta must lie in (0, 1], got {delta!r}")

    g_data, g_weights = _generators(seed, device)
    nets = _Networks(cell, n_networks, N, N_in, sigma_w, sigma_v, sigma_b, mu_b, bool(tied),
                     bool(orthogonal), g_weights, dtype, device)
    ha, hb = _initial_states(n_networks, N, 1.0, 1.0, 1.0 if kind == "chi" else 0.0, g_data,
                             dtype, device)
    for _ in range(burn_in):
        xa, xb = _inputs(n_networks, N_in, R, Sigma, g_data, dtype, device)
        ha, hb = nets.step(ha, hb, xa, xb)
    Q_star = float((ha * ha).sum(-1).mean() / N)

    if kind == "chi":  # hb = ha + delta_h with |delta_h|^2 / (2N) = eps * Q
        delta_h = torch.randn(n_networks, N, generator=g_data, dtype=dtype, device=device)
        delta_h *= torch.sqrt(2 * eps * (ha * ha).sum(-1, keepdim=True)
                              / (delta_h * delta_h).sum(-1, keepdim=True))
        hb = ha + delta_h
    else:  # rotate h^b towards h^a at fixed norm: cos(angle) += delta
        na, nb = ha.norm(dim=-1, keepdim=True), hb.norm(dim=-1, keepdim=True)
        u1 = ha / na
        cos = (u1 * hb).sum(-1, keepdim=True) / nb
        perp = hb - cos * nb * u1
        u2 = perp / perp.norm(dim=-1, keepdim=True)
        cos_new = torch.clamp(cos + delta, max=1.0)
        hb = nb * (cos_new * u1 + torch.sqrt(1.0 - cos_new ** 2) * u2)
    sim = _record(nets, ha, hb, T, n_networks, N_in, R, Sigma, g_data, dtype, device,
                  dict(cell=cell, N=N, T=T, sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b, mu_b=mu_b,
                       R=R, Sigma=Sigma, n_networks=n_networks, tied=bool(tied),
                       orthogonal=bool(orthogonal), seed=int(seed), burn_in=burn_in, kind=kind))
    t = np.arange(T + 1)

    if kind == "chi":
        D_all = sim.D_all
        q_ref = max(Q_star, np.finfo(float).tiny)
        ok = ((t >= t_min)[None, :] & (D_all > rel_floor * q_ref) & (D_all < rel_ceiling * q_ref))
        # use the steps that are in the window for every network, contiguous from the first one
        idx = _first_run(ok.all(0))
        if idx.size < 3:
            raise ValueError("fewer than 3 steps in the fitting window; adjust T, eps, rel_floor "
                             "or rel_ceiling (D_t left the window too fast or never entered it)")
        slopes = np.array([np.polyfit(t[idx], np.log(D_all[k, idx]), 1)[0] for k in range(n_networks)])
        slope = slopes.mean()
        sem = slopes.std(ddof=1) / math.sqrt(n_networks) if n_networks > 1 else float("nan")
        return ChiEstimate(float(np.exp(slope)), float(np.exp(slope) * sem), kind, t[idx],
                           sim.D[idx], sim, Q_star)

    tail = slice(T + 1 - max((T + 1) // 3, 1), T + 1)
    C_inf = float(sim.C[tail].mean())
    tail_sem = float(sim.C_all[:, tail].mean(1).std(ddof=1) / math.sqrt(n_networks)) if n_networks > 1 else 0.0
    dev = np.abs(sim.C - C_inf)
    noise = noise_factor * np.sqrt(np.nan_to_num(sim.C_sem) ** 2 + tail_sem ** 2)
    idx = _first_run((t >= t_min) & (dev > noise))
    if idx.size < 3:
        raise ValueError("fewer than 3 steps with |C_t - C*| above noise; increase N, n_networks "
                         "or lower t_min")
    coef, cov = np.polyfit(t[idx], np.log(dev[idx]), 1, cov=True) if idx.size > 3 else \
        (np.polyfit(t[idx], np.log(dev[idx]), 1), np.full((2, 2), np.nan))
    chi_c = float(np.exp(coef[0]))
    return ChiEstimate(chi_c, float(chi_c * math.sqrt(cov[0, 0])), kind, t[idx], dev[idx], sim,
                       Q_star, C_inf)


# --------------------------------------------------------------------------- Jacobian spectra
def torch_coefficients(cell):
    r"""The Jacobian coefficients as a PyTorch function ``(e, h, x) -> (a, b)`` (single pre-activation).

    Lambdified from :func:`mftrnn.step_jacobian`, so the simulator's Jacobians come from the same derivation as the
    theory; the tensors broadcast (``a`` is returned broadcast to the shape of ``e``).
    """
    return _torch_coefficients(get_cell(cell, gated=False))


@functools.lru_cache(maxsize=None)
def _torch_coefficients(cell: Cell):
    jac = step_jacobian(cell)
    if len(jac.b) != 1:
        raise MftrnnError(f"torch_coefficients supports cells with one pre-activation; {jac.cell.name!r} has "
                          f"{len(jac.b)}")
    c = jac.cell
    # constants such as sqrt(pi) (erf' = 2 exp(-e^2)/sqrt(pi)) to floats: torch's sqrt takes tensors only
    exprs = [sp.sympify(ex).xreplace({n: n.evalf(20) for n in sp.sympify(ex).atoms(sp.Pow, sp.NumberSymbol)
                                      if n.is_number and not n.is_Rational}) for ex in (jac.a, jac.b[0])]
    fn = sp.lambdify([c.preactivations[0].symbol, c.state, c.input], exprs, modules=[TORCH_FUNCTIONS])

    def coefficients(e, h, x):
        a, b = fn(e, h, x)
        return (torch.broadcast_to(torch.as_tensor(a, dtype=e.dtype, device=e.device), e.shape),
                torch.broadcast_to(torch.as_tensor(b, dtype=e.dtype, device=e.device), e.shape))

    return coefficients


def step_jacobian_matrix(module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    r"""The state-to-state Jacobian :math:`J=\partial h_t/\partial h_{t-1}` of one step of a PyTorch cell.

    ``module``: a one-step module of a single-state cell (:func:`mftrnn.nets.registry.step_module`: the registered
    :class:`mftrnn.nets.nn.VanillaRNNCell`, :class:`mftrnn.nets.nn.MinimalRNNCell`, or a
    :class:`mftrnn.nets.registry.SymbolicCell`); ``x, h``: the input and the previous state, vectors.
    :math:`J=\operatorname{diag}(a)+\operatorname{diag}(b)\,W` with the coefficients :math:`a, b` derived
    symbolically from the cell's update rule (:func:`torch_coefficients`).
    """
    cell = step_cell_of(module)  # a DomainError (a ValueError) for other modules
    with torch.no_grad():
        e = module.preactivation(x, h)
        a, b = _torch_coefficients(cell)(e, h, x)
        return torch.diag(a) + b[:, None] * module.weight_hh


@dataclass
class JacobianSpectrum:
    """Output of :func:`jacobian_spectrum`.

    ``sq_singular_values[T]``: the squared singular values of the T-step Jacobian product, shape
    ``(n_networks, N)``, in decreasing order; ``mean[T]``, ``variance[T]``: per network, the mean
    :math:`\\frac1N\\operatorname{tr}JJ^\\top` and variance of that empirical spectrum, shape ``(n_networks,)``;
    ``Q``: :math:`|h|^2/N` per network when the product starts (after burn-in); ``params``: the arguments.
    """

    T: tuple
    sq_singular_values: dict
    mean: dict
    variance: dict
    Q: np.ndarray
    params: dict = field(default_factory=dict)

    def summary(self, T: int) -> dict:
        """Mean over networks of the spectral mean and variance at ``T``, with standard errors (NaN for one network)."""
        m, m_s = _stats(self.mean[T][:, None])
        v, v_s = _stats(self.variance[T][:, None])
        return {"T": int(T), "mean": float(m[0]), "mean_sem": float(m_s[0]), "variance": float(v[0]),
                "variance_sem": float(v_s[0])}


@torch.no_grad()
def jacobian_spectrum(cell, N=500, T=(1, 2, 5, 10), *, sigma_w=1.0, sigma_v=1.0, sigma_b=0.0, mu_b=0.0, R=1.0,
                      tied=True, orthogonal=False, burn_in=100, n_networks=1, seed=0,
                      dtype=torch.float64) -> JacobianSpectrum:
    r"""Squared singular values of the T-step state-to-state Jacobian of random networks of width ``N``.

    Each network (the cell's one-step module, :func:`mftrnn.nets.registry.step_module`: e.g.
    :class:`mftrnn.nets.nn.VanillaRNNCell`, :class:`mftrnn.nets.nn.MinimalRNNCell`, initialised by
    :func:`mftrnn.nets.nn.init_`) is driven from :math:`h_0\sim\mathcal N(0, I)` by Gaussian inputs
    :math:`x_t\sim\mathcal N(0, R\,I)` for ``burn_in`` steps (so :math:`|h|^2/N\approx Q^*`), then for
    :math:`\max T` more steps along which the product :math:`J_t\cdots J_1` of the exact per-step Jacobians
    :math:`J_t = \operatorname{diag}(a_t)+\operatorname{diag}(b_t)W_t` (:func:`step_jacobian_matrix`) is formed; its
    squared singular values are recorded at every requested ``T``.

    ``tied=True``: one :math:`(W, V, b)` per network (the real RNN). ``tied=False``: fresh :math:`(W, V, b)` at every
    step (burn-in included), the setting in which the mean-field and free-probability assumptions are exact for
    the vanilla RNN. ``orthogonal``: :math:`W=\sigma_w O` with :math:`O` Haar orthogonal. Seeds as in
    :func:`simulate` (separate streams for data and weights).
    """
    from .nn import init_

    name = _cell_name(cell)
    N = _check_int("N", N, 1)
    Ts = (T,) if np.ndim(T) == 0 else tuple(T)
    if not Ts:
        raise ValueError("T must be a positive integer or a non-empty list of them")
    Ts = tuple(sorted({_check_int("T", t, 1) for t in Ts}))
    burn_in = _check_int("burn_in", burn_in, 0)
    n_networks = _check_int("n_networks", n_networks, 1)
    sigma_w, sigma_v, sigma_b, mu_b = check_hyperparameters(sigma_w, sigma_v, sigma_b, mu_b)
    R = _check_finite("R", R, 0.0)
    params = dict(cell=name, N=N, T=Ts, sigma_w=sigma_w, sigma_v=sigma_v, sigma_b=sigma_b, mu_b=mu_b, R=R,
                  tied=bool(tied), orthogonal=bool(orthogonal), burn_in=burn_in, n_networks=n_networks,
                  seed=int(seed))
    g_data, g_weights = _generators(seed, "cpu")
    module = step_module(name, N, N, dtype=dtype)

    def draw():
        init_(module, sigma_w, sigma_v, sigma_b, mu_b, orthogonal=bool(orthogonal), generator=g_weights)

    def inputs():
        return torch.randn(N, generator=g_data, dtype=dtype) * math.sqrt(R)

    svals = {t: [] for t in Ts}
    Qs = []
    for _ in range(n_networks):
        draw()
        h = torch.randn(N, generator=g_data, dtype=dtype)
        for _ in range(burn_in):
            if not tied:
                draw()
            h = module(inputs(), h)
        Qs.append(float(h @ h) / N)
        P = None
        for t in range(1, Ts[-1] + 1):
            if not tied:
                draw()
            x = inputs()
            J = step_jacobian_matrix(module, x, h)
            P = J if P is None else J @ P
            h = module(x, h)
            if t in svals:
                svals[t].append((torch.linalg.svdvals(P) ** 2).cpu().numpy())
    sq = {t: np.array(v) for t, v in svals.items()}
    mean = {t: v.mean(1) for t, v in sq.items()}
    var = {t: v.var(1) for t, v in sq.items()}
    return JacobianSpectrum(Ts, sq, mean, var, np.array(Qs), params)


__all__ += ["step_jacobian_matrix", "JacobianSpectrum", "jacobian_spectrum"]

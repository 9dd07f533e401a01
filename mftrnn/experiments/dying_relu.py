r"""Dying ReLU in recurrent networks: the probability that a ReLU RNN is born dead, tied against untied weights.

The network is :math:`h_t = \mathrm{relu}(W h_{t-1} + V x_t + b)`, :math:`h_0 = 0`, width :math:`N`, driven by the
input of the padded long-sequence tasks (:mod:`mftrnn.experiments.memory_tasks`): one symbol :math:`x_1 = e_k`
(one-hot, :math:`k = 1..K`), then blanks :math:`x_t = 0` for :math:`t \ge 2`.  In the blank phase the network
iterates the autonomous map :math:`h \mapsto \mathrm{relu}(W h + b)`.

**Dead.** The network is *dead by step* :math:`t` when there is a step :math:`s \le t` at which the state is exactly
zero for every one of the :math:`K` inputs, :math:`h_s(e_1) = \dots = h_s(e_K) = 0`.  From then on the :math:`K`
trajectories coincide (they all continue from the same state :math:`0` with the same inputs), so nothing that is
read out later can depend on the symbol.  The input set is not a sample: it is the whole alphabet of the task, so
"dead for these :math:`K` inputs" is "dead for every input of the task".  With :math:`b \le 0` componentwise the
zero state is absorbing, :math:`\mathrm{relu}(W 0 + b) = 0`, and dead by :math:`t` is the same as
:math:`h_t(e_k) = 0` for all :math:`k`; with some :math:`b_j > 0` the state leaves zero (to
:math:`\mathrm{relu}(b)`) but the information is lost all the same.  (The converse -- input information lost only
through an all-zero step -- holds almost surely for continuous weight laws: two different states reach the same
next state only if every unit where they differ is switched off in both, and otherwise differences would have to
cancel exactly, an event of probability zero.)

**Exact test.** Deadness is tested with ``== 0`` on float64 states, no threshold: ReLU returns an exact zero for
every non-positive pre-activation.  Two numerical effects could fake or hide a death and are excluded:

* with zero bias the map is positively homogeneous, :math:`\mathrm{relu}(W a h) = a\,\mathrm{relu}(W h)` for
  :math:`a > 0`, so the zero pattern depends only on the direction of :math:`h`.  The simulation rescales each
  network's states by a power of two, :math:`2^{-e}` with :math:`e = \lfloor \log_2 \max |h| \rfloor`, at every
  step: multiplying by a power of two is exact in binary floating point, so the signs, and hence the deaths, are
  those of the unscaled computation bit for bit, and the states never underflow or overflow;
* with a non-zero bias a state is not rescaled while its largest entry is at most :math:`2^{800}`
  (:data:`HUGE`); a non-zero state below :math:`10^{-250}` (where an underflow to zero could fake a death) raises
  :class:`~mftrnn.errors.DomainError`.  A state that grows past :math:`2^{800}` (tied weights above the critical
  :math:`\sigma_w`) is continued without its bias and rescaled as above: the bias then changes a pre-activation
  by less than :math:`2^{-790}` of the state's size, far below the float64 rounding :math:`2^{-53}`, so the signs
  are those float64 would give unless a pre-activation is :math:`2^{-700}` times smaller than the state (a
  probability-zero coincidence); if the state later hits zero the bias acts again (zero has no scale).  The number
  of such trajectories is reported (``DeadCurve.n_huge``).

**Feed-forward theory (untied weights).** With a fresh :math:`W_t` at every step the blank phase is a deep
feed-forward network of depth :math:`t` and width :math:`N` (Lu, Shin, Su & Karniadakis 2020).  If the rows of
:math:`W_t` are independent with a symmetric continuous law and the bias is zero (or a fresh symmetric continuous
:math:`b_t`), then for any fixed non-zero :math:`h \ge 0` the pre-activations :math:`(W_t h)_j` are independent,
symmetric and non-zero almost surely, so one step kills :math:`h` with probability :math:`2^{-N}` whatever the past
(:math:`h_1 = \mathrm{relu}(V e_k)` is killed with the same probability by a symmetric :math:`V`), hence for one
input

.. math::

    P_{\rm dead}(t) = 1 - (1 - 2^{-N})^t

(:func:`p_dead_untied_single`).  A Haar-orthogonal :math:`W_t = g Q_t` gives the same law: :math:`Q_t h` is uniform
on a sphere, which is invariant under coordinate sign flips.  For :math:`K` inputs (:func:`p_dead_untied_bounds`)
the single-input value is an upper bound, and a lower bound follows from Slepian's inequality: for non-negative
:math:`h^{(1)}, \dots, h^{(m)}` the Gaussian variables :math:`w \cdot h^{(k)}` of one Gaussian row :math:`w` have
non-negative correlations :math:`\cos\angle(h^{(k)}, h^{(l)})`, so all are :math:`\le 0` with probability at least
:math:`2^{-m}`; and a row :math:`w \le 0` (probability :math:`2^{-N}`) kills the whole orthant.  Hence every step
:math:`s \ge 2` kills all :math:`m \le K` surviving states with probability at least :math:`2^{-N \min(K, N)}`,
whatever the past; step 1 kills all :math:`K` one-hot inputs with probability exactly :math:`2^{-NK}` (the
columns of :math:`V` are independent), and

.. math::

    1 - (1 - 2^{-NK})(1 - 2^{-N \min(K, N)})^{t-1} \le P_{\rm dead}^{(K)}(t) \le 1 - (1 - 2^{-N})^t

(Gaussian weights, zero bias).  The lower bound tends to 1 with :math:`t` at any fixed :math:`N`, even with
:math:`K \to \infty` (all inputs): an untied deep ReLU network of fixed width dies in probability, which is the
statement of Lu et al.; it is loose in rate.  Width one is exact (:func:`p_dead_width_one`): with :math:`N = 1` a
step kills every non-negative scalar at once when :math:`w < 0`.

**Tied weights.** With one :math:`W` for all steps the blank phase is a deterministic dynamical system given
:math:`W`: each trajectory either hits zero early or keeps a non-zero direction, which typically settles on an
invariant ray or cycle of :math:`h \mapsto \mathrm{relu}(W h)` (zero bias) that never dies, so we expect
:math:`P_{\rm dead}(t)` to saturate at a value below one instead of tending to one -- measured, not proven: the
Monte Carlo finds the curve nearly flat after :math:`t \approx 100` (Gaussian, zero bias, :math:`\sigma_w^2 = 2`:
with :math:`K = 4` and 1000 networks unchanged between :math:`t = 100` and :math:`1000` at :math:`N = 1, 2, 4, 8`;
with :math:`K = 1` and 2000 networks it grows by at most 0.001 there).  No closed form is known to us for
:math:`N \ge 2`; the Monte Carlo :func:`dead_by_step` measures it.  For :math:`N = 1`, :math:`W = w` kills every
state at step 2 iff :math:`w < 0`: :math:`P_{\rm dead}(t \ge 2) = 2^{-K} + (1 - 2^{-K})/2`.

**Initialisations** (:data:`INITS`, :func:`init_weights`), for ``n_nets`` networks at once:

* ``gaussian``: :math:`W_{ij} \sim \mathcal N(0, \sigma_w^2/N)`, :math:`V_{ij} \sim \mathcal N(0, \sigma_v^2)`
  (one-hot inputs: the pre-activation :math:`V e_k` has variance :math:`\sigma_v^2`), :math:`b_j \sim \mathcal N(0,
  \sigma_b^2)` (:math:`\sigma_b = 0`: zero bias).  :math:`\sigma_w^2 = 2` is He's value, the mean-field critical
  point of the ReLU RNN (:math:`q \mapsto \sigma_w^2 q/2`).
* ``orthogonal``: :math:`W = \sigma_w Q`, :math:`Q` Haar-distributed on :math:`O(N)` (QR of a Gaussian matrix with
  the signs of the diagonal of :math:`R` fixed), so the rows have the same squared norm :math:`\sigma_w^2` as the
  Gaussian's on average; :math:`V`, :math:`b` as ``gaussian``.
* ``rai``: the randomized asymmetric initialisation of Lu et al. (2020), transferred to the recurrent unit.  Each
  unit :math:`j` has the parameter vector :math:`v_j = (W_{j\cdot}, V_{j\cdot}, b_j)` of length :math:`d = N +
  n_{in} + 1`; one index :math:`k_j` is drawn uniformly from :math:`\{1..d\}`, :math:`v_{j k_j} \sim P`
  (:math:`P = \mathrm{Beta}(2, 1)`, density :math:`2x` on :math:`[0, 1]`), and the other entries are
  :math:`\mathcal N(0, \sigma_{\rm RAI}^2 / (N + n_{in}))` with :math:`\sigma_{\rm RAI} = 0.6007`
  (:data:`RAI_SIGMA`).  What we used: the definition (one positive entry per unit at a uniformly random position
  among its weights and bias, the rest symmetric Gaussian) is the paper's; :math:`P = \mathrm{Beta}(2,1)` with
  :math:`\sigma = 0.6007/\sqrt{\text{fan-in}}` is the choice of their numerical examples as carried by a public
  reimplementation -- we did not re-derive their second-moment design of :math:`\sigma`, so treat
  :data:`RAI_SIGMA` as a parameter.  With probability :math:`1/d` a unit's bias is the positive entry, and then the
  zero state is not absorbing.

**Training** (:func:`train_recall`, :func:`recall_experiment`): ``torch.nn.RNN(nonlinearity="relu")`` with a linear
readout of the last state, on the recall task generated by
:func:`mftrnn.experiments.memory_tasks.copy_memory_sequences` with one symbol to copy (symbol at step 0, :math:`T-1`
blanks, the delimiter, one blank; the label, read at the last step, is the symbol: chance :math:`1/K`).  The
:math:`K` possible sequences are the whole input set, so "born dead" (an all-zero state for all of them at some
step before the delimiter) is tested exactly at initialisation, and the accuracy is measured on all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DomainError
from .memory_tasks import copy_memory_sequences

__all__ = ["INITS", "RAI_SIGMA", "RAI_BETA", "p_dead_untied_single", "p_dead_untied_bounds", "p_dead_width_one",
           "binomial_stderr", "init_weights", "rai_rows", "DeadCurve", "dead_by_step", "RecallRun",
           "train_recall", "recall_experiment"]

INITS = ("gaussian", "orthogonal", "rai")
RAI_SIGMA = 0.6007
"""Standard deviation of the symmetric entries of ``rai``, times :math:`\\sqrt{\\text{fan-in}}` (module docstring)."""
RAI_BETA = (2.0, 1.0)
"""Parameters of the positive law :math:`P = \\mathrm{Beta}(2, 1)` of ``rai``."""

MAX_WIDTH = 1024
MAX_STEPS = 100_000
STATE_RANGE = (1e-250, 1e250)
"""With a non-zero bias, the largest entry of a non-zero state must stay above the lower end (module docstring)."""
HUGE = 2.0 ** 800
"""Above this size a state's bias is dropped and the state rescaled (module docstring)."""


# ---------------------------------------------------------------------------------------------------- validation
def _int(name: str, value, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= maximum:
        text = repr(value)
        raise DomainError(f"{name} must be an integer in [{minimum}, {maximum}], got "
                          f"{text if len(text) <= 40 else text[:20] + '...'}")
    return int(value)


def _nonneg(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DomainError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not (math.isfinite(x) and x >= 0):
        raise DomainError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def _steps(t) -> np.ndarray:
    try:
        a = np.asarray(t)
    except Exception:  # noqa: BLE001 -- anything not array-like is one bad input
        raise DomainError(f"t must be integers >= 0, got {t!r}") from None
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer) and not (
            np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a))):
        raise DomainError(f"t must be integers >= 0, got {t!r}")
    if np.any(a < 0):
        raise DomainError(f"t must be integers >= 0, got {t!r}")
    return a.astype(np.int64)


def _init(name) -> str:
    if name not in INITS:
        raise DomainError(f"unknown initialisation {name!r}; choose one of {', '.join(INITS)}")
    return name


# ---------------------------------------------------------------------------------------------------- theory
def p_dead_untied_single(t, N: int) -> np.ndarray:
    r""":math:`P_{\rm dead}(t) = 1 - (1 - 2^{-N})^t`: probability that one input's state is zero at some step
    :math:`s \le t` when every step draws fresh weights with independent symmetric continuous rows (Gaussian or
    Haar-orthogonal) and zero or fresh symmetric bias (module docstring).  Computed as
    ``-expm1(t * log1p(-2**-N))`` so that small values keep their relative precision."""
    N = _int("N", N, 1, MAX_WIDTH)
    t = _steps(t)
    return -np.expm1(t * np.log1p(-2.0 ** -N))


def p_dead_untied_bounds(t, N: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Bounds on the probability that all :math:`K` inputs are dead by step :math:`t` with untied Gaussian weights
    and zero bias:

    .. math::

        1 - (1 - 2^{-NK})(1 - 2^{-N \min(K, N)})^{t-1} \;\le\; P^{(K)}_{\rm dead}(t) \;\le\;
        1 - (1 - 2^{-N})^t

    for :math:`t \ge 1` (0 at :math:`t = 0`; Slepian's inequality for the lower bound, the single input for the
    upper; module docstring).  Both are exact at :math:`K = 1`.  Returns ``(lower, upper)``."""
    N = _int("N", N, 1, MAX_WIDTH)
    K = _int("K", K, 1, MAX_WIDTH)
    t = _steps(t)
    m = min(K, N)
    log_alive = np.log1p(-2.0 ** (-N * K)) + (np.maximum(t, 1) - 1) * np.log1p(-2.0 ** (-N * m))
    lower = np.where(t == 0, 0.0, -np.expm1(log_alive))
    return lower, p_dead_untied_single(t, N)


def p_dead_width_one(t, K: int, tied: bool) -> np.ndarray:
    r"""Exact :math:`P_{\rm dead}(t)` at width :math:`N = 1`, zero bias, symmetric continuous :math:`V` and
    :math:`W`, :math:`K` one-hot inputs.  Step 1 kills all inputs iff all :math:`K` entries of :math:`V` are
    negative (:math:`2^{-K}`); a later step with weight :math:`w < 0` kills every positive scalar.

    * untied: :math:`1 - (1 - 2^{-K})\, 2^{-(t-1)}` for :math:`t \ge 1`;
    * tied: :math:`2^{-K}` at :math:`t = 1`, :math:`2^{-K} + (1 - 2^{-K})/2` for :math:`t \ge 2`;

    and 0 at :math:`t = 0`."""
    K = _int("K", K, 1, MAX_WIDTH)
    t = _steps(t)
    p1 = 2.0 ** -K
    if tied:
        p = np.where(t >= 2, p1 + (1 - p1) / 2, p1)
    else:
        p = 1 - (1 - p1) * np.exp2(-(np.maximum(t, 1) - 1).astype(float))
    return np.where(t == 0, 0.0, p)


def binomial_stderr(p, n: int) -> np.ndarray:
    r"""Standard error :math:`\sqrt{p(1-p)/n}` of a Monte Carlo frequency of :math:`n` independent networks."""
    n = _int("n", n, 1, 2 ** 62)
    p = np.asarray(p, dtype=float)
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise DomainError(f"p must be probabilities in [0, 1], got {p!r}")
    return np.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------------------------------------------- weights
def rai_rows(n_rows: int, fan_in: int, n_weights: int, generator: torch.Generator, sigma: float = RAI_SIGMA,
             beta: tuple[float, float] = RAI_BETA) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``n_rows`` RAI parameter vectors of length ``fan_in`` (float64): one entry per row at a uniform random index
    drawn from :math:`\mathrm{Beta}(\alpha, \beta)`, the others :math:`\mathcal N(0, \sigma^2/n_{\rm weights})`
    (``n_weights``: the number of weights in the row, the bias excluded; module docstring).  Returns ``(rows,
    index)``."""
    n_rows = _int("n_rows", n_rows, 1, 2 ** 40)
    fan_in = _int("fan_in", fan_in, 1, 2 ** 20)
    n_weights = _int("n_weights", n_weights, 1, fan_in)
    sigma = _nonneg("sigma", sigma)
    a, b = (_nonneg("beta parameter", x) for x in beta)
    if a == 0 or b == 0:
        raise DomainError(f"beta parameters must be > 0, got {beta!r}")
    rows = torch.randn(n_rows, fan_in, generator=generator, dtype=torch.float64) * (sigma / math.sqrt(n_weights))
    index = torch.randint(fan_in, (n_rows,), generator=generator)
    # Beta(a, b) from two Gammas: torch's Gamma sampler takes no generator, so draw it by inversion for the
    # common case b == 1 (CDF x^a) and refuse the others rather than use the global RNG.
    if b != 1.0:
        raise DomainError(f"only Beta(a, 1) laws are supported (sampled by inversion), got {beta!r}")
    u = torch.rand(n_rows, generator=generator, dtype=torch.float64)
    rows[torch.arange(n_rows), index] = u ** (1.0 / a)
    return rows, index


def _haar(n_nets: int, N: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n_nets, N, N, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def init_weights(n_nets: int, N: int, K: int, init: str, generator: torch.Generator, sigma_w: float = math.sqrt(2),
                 sigma_v: float = 1.0, sigma_b: float = 0.0, rai_sigma: float = RAI_SIGMA):
    r"""``(W, V, b)`` of ``n_nets`` networks, float64, shapes ``(n_nets, N, N)``, ``(n_nets, N, K)``,
    ``(n_nets, N)``, drawn by ``init`` (``gaussian``, ``orthogonal``, ``rai``; module docstring) from
    ``generator``.  ``sigma_w``, ``sigma_v``, ``sigma_b`` are ignored by ``rai``."""
    n_nets = _int("n_nets", n_nets, 1, 2 ** 24)
    N = _int("N", N, 1, MAX_WIDTH)
    K = _int("K", K, 1, MAX_WIDTH)
    init = _init(init)
    sigma_w, sigma_v, sigma_b = (_nonneg(n, x) for n, x in (("sigma_w", sigma_w), ("sigma_v", sigma_v),
                                                             ("sigma_b", sigma_b)))
    if init == "rai":
        rows, _ = rai_rows(n_nets * N, N + K + 1, N + K, generator, rai_sigma)
        rows = rows.reshape(n_nets, N, N + K + 1)
        return rows[..., :N].contiguous(), rows[..., N:N + K].contiguous(), rows[..., -1].contiguous()
    if init == "gaussian":
        W = torch.randn(n_nets, N, N, generator=generator, dtype=torch.float64) * (sigma_w / math.sqrt(N))
    else:
        W = sigma_w * _haar(n_nets, N, generator)
    V = torch.randn(n_nets, N, K, generator=generator, dtype=torch.float64) * sigma_v
    b = torch.randn(n_nets, N, generator=generator, dtype=torch.float64) * sigma_b
    return W, V, b


# ---------------------------------------------------------------------------------------------------- Monte Carlo
@dataclass(frozen=True)
class DeadCurve:
    r"""Monte Carlo of :func:`dead_by_step`: ``dead[s]`` networks (of ``n_nets``) dead by step ``s`` and
    ``zero_now[s]`` with the state exactly zero for all inputs at step ``s`` (``s = 0..t_max``; step 0 is the
    initial state :math:`h_0 = 0`, not counted as dead); ``n_huge``: (network, input) trajectories whose state
    exceeded :data:`HUGE` with a non-zero bias and were continued without it (module docstring)."""

    N: int
    K: int
    init: str
    tied: bool
    sigma_w: float
    sigma_b: float
    n_nets: int
    dead: np.ndarray
    zero_now: np.ndarray
    n_huge: int = 0

    @property
    def t(self) -> np.ndarray:
        return np.arange(len(self.dead))

    @property
    def p(self) -> np.ndarray:
        """Estimated :math:`P_{\\rm dead}(t)`."""
        return self.dead / self.n_nets

    @property
    def stderr(self) -> np.ndarray:
        """Binomial standard error of :attr:`p`."""
        return binomial_stderr(self.p, self.n_nets)


def _step(W: torch.Tensor, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``relu(W h + b)`` for states ``h`` of shape ``(n, N, K)`` (one column per input)."""
    return torch.relu(torch.baddbmm(b.unsqueeze(-1), W, h))


def dead_by_step(N: int, t_max: int, n_nets: int, init: str = "gaussian", tied: bool = True, K: int = 1,
                 sigma_w: float = math.sqrt(2), sigma_b: float = 0.0, sigma_v: float = 1.0, seed: int = 0,
                 chunk: int = 4096) -> DeadCurve:
    r"""Monte Carlo estimate of :math:`P_{\rm dead}(t)`, :math:`t = 0..t_{max}`, over ``n_nets`` independent ReLU
    RNNs of width ``N`` driven by the ``K`` one-hot inputs (module docstring), all networks and inputs at once
    (batched matrix products, float64).  ``tied=False`` draws fresh :math:`W`, :math:`b` at every step (the deep
    feed-forward network of the theory); ``tied=True`` is the RNN.  Deadness is tested exactly (``== 0``); with zero
    bias the states are rescaled by powers of two (exact), otherwise their range is checked (module docstring).
    Networks that are dead with zero bias stay dead (0 is absorbing) and are dropped from the simulation.
    Reproducible for a given ``seed`` (``torch.Generator`` on the CPU)."""
    N = _int("N", N, 1, MAX_WIDTH)
    t_max = _int("t_max", t_max, 1, MAX_STEPS)
    n_nets = _int("n_nets", n_nets, 1, 2 ** 24)
    K = _int("K", K, 1, MAX_WIDTH)
    chunk = _int("chunk", chunk, 1, 2 ** 24)
    init = _init(init)
    sigma_w, sigma_b, sigma_v = (_nonneg(n, x) for n, x in (("sigma_w", sigma_w), ("sigma_b", sigma_b),
                                                             ("sigma_v", sigma_v)))
    if n_nets * N * max(N, K) * (1 if tied else 2) > 2 ** 28:
        raise DomainError(f"n_nets x N x max(N, K) = {n_nets * N * max(N, K):.3g} is too large for one batch")
    gen = torch.Generator().manual_seed(_int("seed", seed, 0, 2 ** 63 - 1))
    dead = np.zeros(t_max + 1, dtype=np.int64)
    zero_now = np.zeros(t_max + 1, dtype=np.int64)
    n_huge = 0
    for start in range(0, n_nets, chunk):
        m = min(chunk, n_nets - start)
        d, z, f = _simulate_chunk(m, N, K, t_max, init, tied, sigma_w, sigma_b, sigma_v, gen)
        dead += d
        zero_now += z
        n_huge += f
    return DeadCurve(N, K, init, tied, sigma_w, sigma_b, n_nets, dead, zero_now, n_huge)


def _simulate_chunk(m, N, K, t_max, init, tied, sigma_w, sigma_b, sigma_v, gen):
    W, V, b = init_weights(m, N, K, init, gen, sigma_w, sigma_v, sigma_b)
    fresh_bias = not tied and (init == "rai" or sigma_b > 0)
    # per network: the zero state is absorbing (b <= 0 at every step), so a dead network may be dropped
    absorbing = torch.zeros(m, dtype=torch.bool) if fresh_bias else (b <= 0).all(1)
    # per (network, input): the bias is zero, or negligible next to a huge state -> rescale by powers of two
    free = (b == 0).all(1, keepdim=True).expand(m, K).clone() if not fresh_bias else torch.zeros(m, K, dtype=bool)
    dead_at = torch.full((m,), -1, dtype=torch.int64)          # first all-zero step, -1: none yet
    zero_count = np.zeros(t_max + 1, dtype=np.int64)
    n_free = 0
    h = torch.relu(V + b.unsqueeze(-1))                        # h_1(e_k) = relu(V e_k + b): column k
    live = torch.arange(m)                                     # networks still simulated
    for s in range(1, t_max + 1):
        if s > 1:
            if tied:
                Ws, bs = W[live], b[live]
            else:
                Ws, _, bs = init_weights(len(live), N, 1, init, gen, sigma_w, sigma_v, sigma_b)
            h = torch.relu(torch.baddbmm(bs.unsqueeze(-1) * (~free).unsqueeze(1), Ws, h))
        col = h.amax(1)                                        # (n, K): largest entry of each state (h >= 0)
        zero = (col == 0).all(1)
        zero_count[s] += int(zero.sum())
        first = zero & (dead_at[live] < 0)
        dead_at[live[first]] = s
        drop = zero & absorbing[live]
        zero_count[s + 1:] += int(drop.sum())                  # absorbed: zero at every later step
        keep = ~drop
        h, live, free, col = h[keep], live[keep], free[keep], col[keep]
        if len(live) == 0:
            break
        free = free & (col > 0)                                # a zero state has no scale: the bias acts again
        big = (col > HUGE) & ~free
        n_free += int(big.sum())
        free = free | big
        tiny = (col > 0) & (col < STATE_RANGE[0]) & ~free
        if bool(tiny.any()):
            raise DomainError(f"a state fell below {STATE_RANGE[0]:g} at step {s} with non-zero bias: "
                              f"underflow could fake a death; lower t_max or change sigma_w, sigma_b")
        e = torch.where(free & (col > 0), torch.floor(torch.log2(torch.where(col > 0, col, 1.0))), 0.0)
        h = torch.ldexp(h, -e.to(torch.int64).unsqueeze(1))
    hit = dead_at[dead_at > 0].numpy()
    dead = np.bincount(hit, minlength=t_max + 1)[:t_max + 1].cumsum()
    return dead, zero_count, n_free


# ---------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class RecallRun:
    """One training run of :func:`train_recall`."""

    init: str
    seed: int
    N: int
    T: int
    K: int
    born_dead: bool
    input_independent: bool
    accuracy_init: float
    accuracy: float
    grad_norm_input_init: float


def _recall_data(B: int, T: int, K: int, gen: torch.Generator):
    inputs, targets = copy_memory_sequences(B, T, gen, n_copy=1, n_symbols=K)
    return torch.nn.functional.one_hot(inputs, K + 2).to(torch.float64), targets[:, -1] - 1


def _all_sequences(T: int, K: int):
    """The ``K`` distinct sequences of the task (they differ only in the first symbol)."""
    inputs, targets = copy_memory_sequences(K, T, torch.Generator().manual_seed(0), n_copy=1, n_symbols=K)
    inputs[:, 0] = torch.arange(1, K + 1)
    targets[:, -1] = inputs[:, 0]
    return torch.nn.functional.one_hot(inputs, K + 2).to(torch.float64), targets[:, -1] - 1


def _init_rnn_(rnn: torch.nn.RNN, init: str, gen: torch.Generator, sigma_w: float) -> None:
    N, n_in = rnn.hidden_size, rnn.input_size
    with torch.no_grad():
        if init == "rai":
            rows, _ = rai_rows(N, N + n_in + 1, N + n_in, gen)
            rnn.weight_hh_l0.copy_(rows[:, :N])
            rnn.weight_ih_l0.copy_(rows[:, N:N + n_in])
            rnn.bias_ih_l0.copy_(rows[:, -1])
        else:
            W, V, _ = init_weights(1, N, n_in, init, gen, sigma_w=sigma_w)
            rnn.weight_hh_l0.copy_(W[0])
            rnn.weight_ih_l0.copy_(V[0])
            rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()


def train_recall(init: str, seed: int, N: int = 4, T: int = 10, K: int = 3, steps: int = 300, batch: int = 32,
                 lr: float = 0.02, sigma_w: float = math.sqrt(2), clip: float = 1.0) -> RecallRun:
    r"""Train ``torch.nn.RNN(nonlinearity="relu")`` of width ``N`` and a linear readout of the last state on the
    one-symbol recall task of delay ``T`` with ``K`` symbols (module docstring), ``steps`` Adam steps of
    ``batch`` fresh sequences, gradient-norm clipping ``clip``, float64, one ``torch.Generator`` seeded ``seed`` for
    the initialisation and the data.  ``init``: ``gaussian`` / ``orthogonal`` (``sigma_w``, zero biases, input
    weights :math:`\mathcal N(0, 1)`) or ``rai``.  Reports whether the network is born dead (the states of all
    ``K`` sequences exactly zero at some step), whether its read-out is input-independent at initialisation (the
    last states of the ``K`` sequences exactly equal: born dead, or -- with a non-zero bias -- contracted onto the
    same fixed point to float64 precision), the norm of the loss gradient reaching the input weights of the symbols
    at initialisation (exactly zero when born dead before the read-out), and the accuracy on all ``K`` sequences
    before and after training."""
    init = _init(init)
    seed = _int("seed", seed, 0, 2 ** 63 - 1)
    N, T, K = _int("N", N, 1, MAX_WIDTH), _int("T", T, 1, MAX_STEPS), _int("K", K, 2, 64)
    steps, batch = _int("steps", steps, 0, 10 ** 7), _int("batch", batch, 1, 2 ** 20)
    lr, clip, sigma_w = _nonneg("lr", lr), _nonneg("clip", clip), _nonneg("sigma_w", sigma_w)
    gen = torch.Generator().manual_seed(seed)
    rnn = torch.nn.RNN(K + 2, N, nonlinearity="relu", batch_first=True).double()
    _init_rnn_(rnn, init, gen, sigma_w)
    readout = torch.nn.Linear(N, K).double()
    with torch.no_grad():
        readout.weight.copy_(torch.randn(K, N, generator=gen, dtype=torch.float64) / math.sqrt(N))
        readout.bias.zero_()
    params = list(rnn.parameters()) + list(readout.parameters())
    x_all, y_all = _all_sequences(T, K)

    def accuracy() -> float:
        with torch.no_grad():
            out, _ = rnn(x_all)
            return float((readout(out[:, -1]).argmax(1) == y_all).double().mean())

    out, _ = rnn(x_all)
    born_dead = bool((out == 0).all(dim=2).all(dim=0).any())    # an all-zero step for all K sequences
    independent = bool((out[:, -1] == out[:1, -1]).all())
    loss = torch.nn.functional.cross_entropy(readout(out[:, -1]), y_all)
    rnn.zero_grad()
    loss.backward()
    g_in = float(rnn.weight_ih_l0.grad[:, 1:K + 1].norm())
    acc0 = accuracy()
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        x, y = _recall_data(batch, T, K, gen)
        out, _ = rnn(x)
        loss = torch.nn.functional.cross_entropy(readout(out[:, -1]), y)
        opt.zero_grad()
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    return RecallRun(init, seed, N, T, K, born_dead, independent, acc0, accuracy(), g_in)


def recall_experiment(inits=("gaussian", "rai"), seeds=range(8), **kwargs) -> list[RecallRun]:
    """:func:`train_recall` for every initialisation and seed (one thread is enough: each run takes seconds)."""
    return [train_recall(init, int(seed), **kwargs) for init in inits for seed in seeds]

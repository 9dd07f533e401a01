r"""Finite-width Monte Carlo of the actual ``torch.nn.LSTMCell`` and ``torch.nn.GRUCell``.

Independent of the mean-field code: it is the reference the theory of gated cells is checked against.

Weights (gate :math:`K`; LSTM gates ``i, f, g, o``, GRU gates ``r, z, n``, PyTorch block order)

.. math:: (W_{hh})^K_{jk}\sim\mathcal N(0,\sigma_{w,K}^2/N),\quad (W_{ih})^K_{jk}\sim\mathcal N(0,\sigma_{v,K}^2/N_{in}),
          \quad b^K_{ih,j}\sim\mathcal N(\mu_{b,K},\sigma_{b,K}^2),\quad b_{hh}=0,

inputs :math:`x_t\sim\mathcal N(0, R\,I_{N_{in}})` i.i.d. over time. ``tied=True``: one draw per network, used at
every step (a real RNN). ``tied=False``: a fresh independent draw of all weights and biases before every step
(written into the module's parameters), under which the mean field is exact as :math:`N\to\infty`.

The standard normals are drawn in float32 (five times faster than float64 on CPU) and then scaled in the
module's dtype; this only rounds each sample to 24 bits and truncates the normal beyond about 5.8 standard
deviations (probability 1e-8).

Random streams: network ``k`` of seed ``s`` has its own generators for data (inputs, initial state), weights
and perturbations, spawned from ``numpy.random.SeedSequence(s)``; tied and untied runs with one seed therefore
see the same inputs (common random numbers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..cells.gated import GatedCell, gate_hyperparameters
from ..cells.registry import cells, get_cell
from .gated import implementations

__all__ = ["GatedSimulation", "simulate_gated", "measure_gated_chi", "make_gated_module",
           "draw_gated_weights_", "resolve_gated_hyperparameters", "measure_gated_correlation"]


# --------------------------------------------------------------------------- small pure helpers
def _module_class(name: str):
    """The registered torch one-step class of the gated cell ``name`` (``nn.LSTMCell``, ``nn.GRUCell``), or None."""
    return next((i.torch_class for i in implementations(name) if issubclass(i.torch_class, torch.nn.RNNCellBase)),
                None)


def _simulated() -> tuple:
    """The gated cells of the registry with a registered torch one-step class (read now): ``lstm``, ``gru``."""
    return tuple(n for n in cells("gated") if _module_class(n) is not None)


def _cell_name(cell) -> str:
    """The name (any case) of a gated cell with a torch one-step class, or a :class:`GatedCell` with that name."""
    name = cell if isinstance(cell, str) else getattr(cell, "name", None)
    known = _simulated()
    if not isinstance(name, str) or name.lower() not in known:
        raise ValueError(f"unknown gated cell {cell!r}; expected {' or '.join(map(repr, known))}")
    return name.lower()


def _gated(cell) -> GatedCell:
    return get_cell(_cell_name(cell))


def _state_names(cell) -> list:
    """Names of the carried states in the cell's order (``["c", "h"]`` for the LSTM), and the output's index."""
    c = _gated(cell)
    return [str(s) for s in c.states], c.new_states.index(c.output)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def resolve_gated_hyperparameters(cell, **hyperparameters) -> tuple[dict, float]:
    """Scalar per-gate hyperparameters ``({gate: {"sigma_w": float, ...}}, R)`` (shorthand resolved).

    Defaults sigma_w = sigma_v = 1, sigma_b = mu_b = 0, R = 1; a per-gate name (``mu_b_f``) overrides the
    shorthand (``mu_b``). Arrays are refused: the simulator runs one hyperparameter point at a time.
    """
    gates, R = gate_hyperparameters(_gated(cell), hyperparameters)
    if np.ndim(R) != 0:
        raise ValueError("simulate_gated takes scalar hyperparameters only")
    return {g: {k: float(v) for k, v in d.items()} for g, d in gates.items()}, float(R)


def _block_stds(cell: str, gates: dict, N: int, N_in: int) -> tuple[list, list, list, list]:
    """Per-block (std of W_hh, std of W_ih, std of b_ih, mean of b_ih) in PyTorch gate order."""
    order = _gated(cell).gates
    return ([gates[g]["sigma_w"] / math.sqrt(N) for g in order],
            [gates[g]["sigma_v"] / math.sqrt(N_in) for g in order],
            [gates[g]["sigma_b"] for g in order],
            [gates[g]["mu_b"] for g in order])


def _scaled_normal_(out: torch.Tensor, std: list, mean: list | None, gen: torch.Generator) -> torch.Tensor:
    """Fill ``out`` (``K*N`` rows, K blocks) with N(mean_K, std_K^2) entries; standard normals drawn in float32."""
    z = torch.empty(out.shape, dtype=torch.float32, device=out.device).normal_(generator=gen)
    out.copy_(z)
    blocks = out.view(len(std), -1)
    blocks.mul_(torch.tensor(std, dtype=out.dtype, device=out.device)[:, None])
    if mean is not None:
        blocks.add_(torch.tensor(mean, dtype=out.dtype, device=out.device)[:, None])
    return out


def make_gated_module(cell, N: int, N_in: int, dtype=torch.float64, device="cpu") -> torch.nn.Module:
    """An uninitialised ``nn.LSTMCell(N_in, N)`` / ``nn.GRUCell(N_in, N)`` (fill it with :func:`draw_gated_weights_`)."""
    return torch.nn.utils.skip_init(_module_class(_cell_name(cell)), N_in, N, bias=True, dtype=dtype, device=device)


@torch.no_grad()
def draw_gated_weights_(module: torch.nn.Module, cell, gates: dict, generator: torch.Generator) -> torch.nn.Module:
    r"""Write one draw into ``module``: block K of ``weight_hh`` ~ N(0, sigma_w_K^2/N), of ``weight_ih`` ~
    N(0, sigma_v_K^2/N_in), of ``bias_ih`` ~ N(mu_b_K, sigma_b_K^2); ``bias_hh = 0``. Returns ``module``."""
    cell = _cell_name(cell)
    N, N_in = module.hidden_size, module.input_size
    s_w, s_v, s_b, m_b = _block_stds(cell, gates, N, N_in)
    _scaled_normal_(module.weight_hh, s_w, None, generator)
    _scaled_normal_(module.weight_ih, s_v, None, generator)
    _scaled_normal_(module.bias_ih, s_b, m_b, generator)
    module.bias_hh.zero_()
    return module


def _generators(seed: int, n_networks: int, device) -> list[tuple[torch.Generator, ...]]:
    """Per network: independent (data, weights, perturbation) generators spawned from ``SeedSequence(seed)``."""
    out = []
    for child in np.random.SeedSequence(int(seed)).spawn(n_networks):
        states = child.generate_state(3, dtype=np.uint64)
        out.append(tuple(torch.Generator(device=device).manual_seed(int(s) >> 1) for s in states))
    return out


def _step(module, cell: str, x: torch.Tensor, state: tuple) -> tuple:
    """One step of the real module. ``state`` is in the cell's order, ``(c, h)`` for the LSTM, ``(h,)`` for the GRU;
    batch first. Torch's cells take and return the output state first (``nn.LSTMCell``: ``(h, c)``)."""
    if len(state) == 1:
        return (module(x, state[0]),)
    _, k = _state_names(cell)
    order = [k] + [i for i in range(len(state)) if i != k]
    out = module(x, tuple(state[i] for i in order))
    new = [None] * len(state)
    for j, i in enumerate(order):
        new[i] = out[j]
    return tuple(new)


class _Network:
    """One random network: the module, its generators, and the tied/untied weight policy."""

    def __init__(self, cell, N, N_in, gates, R, tied, gens, dtype, device):
        self.cell, self.N, self.N_in, self.gates, self.tied = cell, N, N_in, gates, tied
        self.g_data, self.g_weights, self.g_pert = gens
        self.sqrt_R = math.sqrt(R)
        self.module = make_gated_module(cell, N, N_in, dtype, device)
        self.kw = dict(dtype=dtype, device=device)
        if tied:
            draw_gated_weights_(self.module, cell, gates, self.g_weights)

    def input(self) -> torch.Tensor:
        return self.sqrt_R * torch.randn(1, self.N_in, generator=self.g_data, **self.kw)

    def step(self, x, state):
        if not self.tied:
            draw_gated_weights_(self.module, self.cell, self.gates, self.g_weights)
        return _step(self.module, self.cell, x.expand(state[0].shape[0], -1), state)


# --------------------------------------------------------------------------- simulation
@dataclass
class GatedSimulation:
    r"""Trajectories of ``n_networks`` independent networks, arrays of shape ``(n_networks, T+1)``.

    ``Q_h[k, t] = |h_t|^2/N``, ``M_h[k, t] = \sum_j h_{t,j}/N`` (``t = 0`` is the initial state); ``Q_c``,
    ``M_c`` likewise for the LSTM cell state (``None`` for the GRU). ``h_final``, ``c_final``: the last state
    vectors, shape ``(n_networks, N)``. ``hyperparameters``: per-gate values and ``R`` as resolved.
    """

    cell: str
    N: int
    N_in: int
    T: int
    tied: bool
    seed: int
    hyperparameters: dict
    Q_h: np.ndarray
    M_h: np.ndarray
    h_final: np.ndarray
    Q_c: np.ndarray | None = None
    M_c: np.ndarray | None = None
    c_final: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def tail_mean(self, name: str = "Q_h", fraction: float = 0.5) -> tuple[float, float]:
        """Mean over networks of the time average over the last ``fraction`` of steps, and its standard error
        (standard deviation of the per-network time averages / sqrt(n_networks); 0 for one network)."""
        a = getattr(self, name)
        t0 = int(round((1 - fraction) * self.T)) + 1
        per_net = a[:, t0:].mean(axis=1)
        se = per_net.std(ddof=1) / math.sqrt(len(per_net)) if len(per_net) > 1 else 0.0
        return float(per_net.mean()), float(se)


def simulate_gated(cell, N: int = 1000, T: int = 100, *, tied: bool = True, seed: int = 0, n_networks: int = 1,
                   N_in: int | None = None, h0_scale: float = 0.0, dtype=torch.float64, device="cpu",
                   **hyperparameters) -> GatedSimulation:
    r"""Run ``n_networks`` random ``nn.LSTMCell``/``nn.GRUCell`` of width ``N`` for ``T`` steps.

    Initial state :math:`h_0 = h_{0}^{scale}\,\xi`, :math:`c_0 = h_0^{scale}\,\xi'` (independent standard
    normals; zero by default). Each step feeds :math:`x_t\sim\mathcal N(0,R)` to the module (fresh weights
    first when ``tied=False``) and records :math:`Q = |s|^2/N` and :math:`M = \sum_j s_j/N` of each state.
    """
    cell = _cell_name(cell)
    N, T, n_networks = _check_int("N", N, 1), _check_int("T", T, 0), _check_int("n_networks", n_networks, 1)
    N_in = N if N_in is None else _check_int("N_in", N_in, 1)
    gates, R = resolve_gated_hyperparameters(cell, **hyperparameters)
    names, out_k = _state_names(cell)
    n_states = len(names)
    Q = np.zeros((n_states, n_networks, T + 1))
    M = np.zeros_like(Q)
    final = np.zeros((n_states, n_networks, N))
    with torch.no_grad():
        for k, gens in enumerate(_generators(seed, n_networks, device)):
            net = _Network(cell, N, N_in, gates, R, tied, gens, dtype, device)
            state = tuple(h0_scale * torch.randn(1, N, generator=net.g_data, dtype=dtype, device=device)
                          for _ in range(n_states))
            q = torch.zeros(n_states, T + 1, dtype=dtype, device=device)
            m = torch.zeros_like(q)
            for t in range(T + 1):
                if t > 0:
                    state = net.step(net.input(), state)
                for j, s in enumerate(state):
                    q[j, t] = (s * s).mean()
                    m[j, t] = s.mean()
            Q[:, k], M[:, k] = q.cpu().numpy(), m.cpu().numpy()
            final[:, k] = torch.cat(state).cpu().numpy()
    params = {f"{kind}_{g}": v for g, d in gates.items() for kind, v in d.items()} | {"R": R}
    out = GatedSimulation(cell=cell, N=N, N_in=N_in, T=T, tied=tied, seed=seed, hyperparameters=params,
                          Q_h=Q[out_k], M_h=M[out_k], h_final=final[out_k])
    for j, name in enumerate(names):
        if j != out_k:  # the LSTM's cell state c
            setattr(out, f"Q_{name}", Q[j]), setattr(out, f"M_{name}", M[j]), setattr(out, f"{name}_final", final[j])
    return out


# --------------------------------------------------------------------------- perturbation growth
def _sq(state: tuple) -> torch.Tensor:
    """Per-copy squared norms of each state component, shape (n_states, batch)."""
    return torch.stack([(s * s).sum(-1) for s in state])


def _geometric(log_ratios: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``exp(mean log)`` over steps per network, pooled over networks; SE by the delta method from the spread
    of the per-network mean logs (std / sqrt(n_networks))."""
    per_net = log_ratios.mean(axis=1)
    value = math.exp(per_net.mean())
    se = float(value * per_net.std(ddof=1) / math.sqrt(len(per_net))) if len(per_net) > 1 else float("nan")
    return value, se, np.exp(per_net)


def _arithmetic(log_ratios: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Arithmetic mean of the one-step ratios per network, pooled; SE from the spread over networks."""
    per_net = np.exp(log_ratios).mean(axis=1)
    se = per_net.std(ddof=1) / math.sqrt(len(per_net)) if len(per_net) > 1 else float("nan")
    return float(per_net.mean()), float(se), per_net


def measure_gated_chi(cell, N: int = 1000, T: int = 200, burn_in: int = 100, *, tied: bool = False, seed: int = 0,
                      n_networks: int = 4, eps: float = 1e-6, settle: int = 20, N_in: int | None = None,
                      device="cpu", **hyperparameters) -> dict:
    r"""Per-step growth of an infinitesimal perturbation of the whole state under identical inputs (Benettin).

    Two copies of one network (the same weights at every step, fresh ones for both when untied) see the same
    :math:`x_t`. The reference runs ``burn_in`` steps from zero; the copy is then displaced by a random
    :math:`\delta` of norm :math:`\varepsilon\sqrt N` (over :math:`(c, h)` jointly for the LSTM). At each of the
    next ``T`` steps the one-step ratio :math:`r_t = |\delta_t|^2/|\delta_{t-1}|^2`
    (:math:`|\delta|^2 = |\delta c|^2 + |\delta h|^2` for the LSTM) is recorded and :math:`\delta_t` rescaled
    back to norm :math:`\varepsilon\sqrt N`; the first ``settle`` ratios are discarded.

    Returns a dict: ``chi = exp(mean log r)`` over the kept steps and networks (the Lyapunov rate);
    ``chi_se`` = chi times the standard deviation over networks of the per-network mean log ratio over
    sqrt(n_networks) (networks are independent; steps within one are not); ``chi_per_network``;
    ``chi_arith`` (+ ``_se``, ``_per_network``): the arithmetic mean of :math:`r_t`, which estimates the
    annealed growth of :math:`\mathbb E|\delta|^2` that a linearised mean field predicts, and can differ from
    ``chi`` when the perturbation concentrates on few units; the same pairs ``chi_h*`` for
    :math:`|\delta h_t|^2/|\delta h_{t-1}|^2` and, for the LSTM, ``chi_c*`` for the cell state (the geometric
    ``chi_h``/``chi_c`` equal ``chi`` up to end terms as the window grows, since the ratios telescope);
    ``h_fraction``: mean of :math:`|\delta h|^2/|\delta|^2` after the step; ``Q_h``/``Q_c``: mean state second
    moments over the kept steps; ``log_ratios``: ``{"total"|"h"|"c": (n_networks, T - settle)}``.

    Geometric versus arithmetic. With weak recurrent mixing each unit's perturbation is multiplied by its own
    random gate every step, so after ~log N / log(E[s^4]/E[s^2]^2) steps it lives on few units and the
    Benettin rate of a finite network drifts from the annealed E[s^2] (the N -> infinity value) towards the
    quenched exp E[log s^2]. Measured (LSTM, sigma_w = 1e-4, sigma_v = 1, mu_b_f = 0, N = 400, 100 kept
    steps after settle = 20): ``chi_c`` = 0.239, ``chi_c_arith`` = 0.299, E[s^2] = 0.293, exp E[log s^2] = 0.199.
    At sigma_w ~ 1 the two estimators agree to within their errors.
    """
    cell = _cell_name(cell)
    N, T = _check_int("N", N, 1), _check_int("T", T, 1)
    burn_in, settle = _check_int("burn_in", burn_in, 0), _check_int("settle", settle, 0)
    n_networks = _check_int("n_networks", n_networks, 1)
    if settle >= T:
        raise ValueError(f"settle ({settle}) must be smaller than T ({T})")
    if not 0 < eps < 1e-2:
        raise ValueError(f"eps must lie in (0, 1e-2), got {eps!r}")
    N_in = N if N_in is None else _check_int("N_in", N_in, 1)
    gates, R = resolve_gated_hyperparameters(cell, **hyperparameters)
    dtype = torch.float64
    states, out_k = _state_names(cell)
    n_states = len(states)
    S = T - settle
    logs = np.zeros((n_states + 1, n_networks, S))     # rows: total, then per state (c, h) or (h,)
    frac_h, Qs = np.zeros(n_networks), np.zeros((n_states, n_networks))
    d0 = eps * math.sqrt(N)
    with torch.no_grad():
        for k, gens in enumerate(_generators(seed, n_networks, device)):
            net = _Network(cell, N, N_in, gates, R, tied, gens, dtype, device)
            ref = tuple(torch.zeros(1, N, dtype=dtype, device=device) for _ in range(n_states))
            for _ in range(burn_in):
                ref = net.step(net.input(), ref)
            delta = [torch.randn(1, N, generator=net.g_pert, dtype=dtype, device=device) for _ in range(n_states)]
            scale = d0 / math.sqrt(float(_sq(delta).sum()))
            state = tuple(torch.cat([r, r + scale * d]) for r, d in zip(ref, delta))
            prev = _sq([scale * d for d in delta])[:, 0]
            fh, q = 0.0, torch.zeros(n_states, dtype=dtype, device=device)
            for t in range(T):
                state = net.step(net.input(), state)
                diff = [s[1:] - s[:1] for s in state]
                now = _sq(diff)[:, 0]
                if t >= settle:
                    j = t - settle
                    logs[0, k, j] = math.log(float(now.sum() / prev.sum()))
                    logs[1:, k, j] = torch.log(now / prev).cpu().numpy()
                    fh += float(now[out_k] / now.sum()) / S
                    q += _sq(tuple(s[:1] for s in state))[:, 0] / (N * S)
                rescale = d0 / math.sqrt(float(now.sum()))
                state = tuple(torch.cat([s[:1], s[:1] + rescale * d]) for s, d in zip(state, diff))
                prev = now * rescale ** 2
            frac_h[k], Qs[:, k] = fh, q.cpu().numpy()
    out = {"cell": cell, "N": N, "T": T, "burn_in": burn_in, "settle": settle, "tied": tied, "seed": seed,
           "n_networks": n_networks, "eps": eps}
    names = [""] + [f"_{s}" for s in states]
    for row, name in zip(logs, names):
        for est, fn in (("", _geometric), ("_arith", _arithmetic)):
            v, se, per = fn(row)
            out[f"chi{name}{est}"], out[f"chi{name}{est}_se"], out[f"chi{name}{est}_per_network"] = v, se, per
    out["h_fraction"] = float(frac_h.mean())
    out["Q_h"] = float(Qs[out_k].mean())
    for j, s in enumerate(states):
        if j != out_k:  # the LSTM's cell state c
            out[f"Q_{s}"] = float(Qs[j].mean())
    out["log_ratios"] = dict(zip(["total"] + states, logs))
    return out


# --------------------------------------------------------------------------- decorrelation of two copies
def measure_gated_correlation(cell, N: int = 256, T: int = 20, burn_in: int = 60, *, tied: bool = False,
                              seed: int = 0, n_networks: int = 8, Sigma: float = 0.0, N_in: int | None = None,
                              device="cpu", **hyperparameters) -> dict:
    r"""Two copies of one real ``nn.LSTMCell``/``nn.GRUCell`` (the same weights at every step, fresh ones for both
    when untied) fed their own inputs :math:`x^b = \Sigma x^a + \sqrt{1-\Sigma^2}\,x'` (``Sigma = 0``:
    independent). Copy a runs ``burn_in`` steps from zero, copy b is set equal to it, then both run ``T`` steps.

    Returns a dict with, per state name ``s`` (``"h"``, and ``"c"`` for the LSTM), ``C_s``: :math:`s^a\cdot s^b/N`,
    shape ``(n_networks, T + 1)``, ``Q_s_a``, ``Q_s_b`` likewise, and ``C_s_mean``, ``C_s_se`` (over networks). The
    matrix simulator behind :func:`mftrnn.nets.untied_fast.correlation_untied` (same law when untied).
    """
    cell = _cell_name(cell)
    N, T = _check_int("N", N, 1), _check_int("T", T, 0)
    burn_in, n_networks = _check_int("burn_in", burn_in, 0), _check_int("n_networks", n_networks, 1)
    if not -1.0 <= float(Sigma) <= 1.0:
        raise ValueError(f"Sigma must lie in [-1, 1], got {Sigma!r}")
    N_in = N if N_in is None else _check_int("N_in", N_in, 1)
    gates, R = resolve_gated_hyperparameters(cell, **hyperparameters)
    dtype = torch.float64
    names, _ = _state_names(cell)
    n_states = len(names)
    C, Qa, Qb = (np.zeros((n_states, n_networks, T + 1)) for _ in range(3))
    cs = math.sqrt(max(1.0 - float(Sigma) ** 2, 0.0))
    with torch.no_grad():
        for k, gens in enumerate(_generators(seed, n_networks, device)):
            net = _Network(cell, N, N_in, gates, R, tied, gens, dtype, device)
            state = tuple(torch.zeros(1, N, dtype=dtype, device=device) for _ in range(n_states))
            for _ in range(burn_in):
                state = net.step(net.input(), state)
            state = tuple(torch.cat([s, s]) for s in state)
            for t in range(T + 1):
                if t > 0:
                    xa = net.input()
                    x = torch.cat([xa, float(Sigma) * xa + cs * net.input()])
                    if not net.tied:
                        draw_gated_weights_(net.module, net.cell, net.gates, net.g_weights)
                    state = _step(net.module, cell, x, state)
                for j, s in enumerate(state):
                    C[j, k, t] = float((s[0] * s[1]).mean())
                    Qa[j, k, t] = float((s[0] * s[0]).mean())
                    Qb[j, k, t] = float((s[1] * s[1]).mean())
    out = {"cell": cell, "N": N, "N_in": N_in, "T": T, "burn_in": burn_in, "tied": tied, "seed": seed,
           "n_networks": n_networks, "Sigma": float(Sigma)}
    sqn = math.sqrt(n_networks)
    for j, name in enumerate(names):
        out[f"C_{name}"], out[f"Q_{name}_a"], out[f"Q_{name}_b"] = C[j], Qa[j], Qb[j]
        out[f"C_{name}_mean"] = C[j].mean(axis=0)
        out[f"C_{name}_se"] = C[j].std(axis=0, ddof=1) / sqn if n_networks > 1 else np.full(T + 1, np.nan)
    return out

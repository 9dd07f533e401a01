r"""Exact O(N)-per-step sampler of the *untied* LSTM / GRU (weights and biases redrawn before every step).

Why it is exact. In the untied network of :mod:`mftrnn.nets.simulate_gated` the weights used at step
:math:`t` are drawn independently of everything before, in particular of the state :math:`h_{t-1}` they
multiply. Conditionally on the past, row :math:`j` of block :math:`K` gives

.. math:: e_{Kj} = (W_K h)_j + (V_K x)_j + b_{Kj} \;=\; \mu_{b,K} + \sqrt{\sigma_{w,K}^2\,|h|^2/N
          + \sigma_{v,K}^2\,|x|^2/N_{in} + \sigma_{b,K}^2}\;\xi_{Kj},

with :math:`\xi_{Kj}` i.i.d. standard normals, independent over units and gates (rows and blocks of the
weight matrices are independent). So the whole network step only needs the scalars :math:`|h|^2/N` and
:math:`|x|^2/N_{in}`; the latter is drawn as :math:`R\,\chi^2_{N_{in}}/N_{in}` (its exact law for
:math:`x\sim\mathcal N(0,R\,I_{N_{in}})`). The GRU candidate has two fields of gate ``n``:
:math:`e_{nx} = \mu_{b,n} + \sqrt{\sigma_{v,n}^2|x|^2/N_{in}+\sigma_{b,n}^2}\,\xi` and
:math:`e_{nh} = \sigma_{w,n}\,|h|/\sqrt N\,\xi'` (``b_hn = 0``), :math:`n = \tanh(e_{nx} + \sigma(e_r)\,e_{nh})`.

Two copies (perturbation growth). Copies :math:`a` and :math:`b = a + \delta` of one network share the weights
and the input, so the input and bias parts of every field are identical, and per unit
:math:`((W h_a)_j, (W\delta_h)_j)` is bivariate Gaussian with covariance :math:`\sigma_w^2/N` times the Gram
matrix of :math:`(h_a, \delta_h)`. It is sampled as :math:`u = \sigma_w\sqrt{q_{aa}}\,\xi_1`,
:math:`\delta u = \sigma_w(q_{a\delta}/\sqrt{q_{aa}}\,\xi_1 + \sqrt{q_{\delta\delta} - q_{a\delta}^2/q_{aa}}\,\xi_2)`
(the form that stays well conditioned for :math:`|\delta|\ll|h|`), and copy :math:`b` takes fields
:math:`e + \delta e`.

Cost: one (Q only) or three (two copies) normals per unit, gate and step, against :math:`O(N\,(N+N_{in}))`
for the matrix simulator; :func:`sample_untied` and :func:`chi_untied` run many networks at once in
``float64`` NumPy. They have the same law as ``simulate_gated(..., tied=False)`` and
``measure_gated_chi(..., tied=False)`` (same hyperparameter conventions, ``N_in = N`` by default), not the same
random numbers.
"""
from __future__ import annotations

import math

import numpy as np

from ..cells.gated import GRU, LSTM
from .simulate_gated import GatedSimulation, _cell_name, _check_int, _state_names, resolve_gated_hyperparameters

__all__ = ["sample_untied", "chi_untied", "time_average", "correlation_untied"]

#: elements per state array processed at once (networks are run in chunks of about this many units)
_CHUNK_UNITS = 1 << 18


def _sig(x):
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def time_average(values: np.ndarray, burn_in: int = 0) -> tuple[float, float]:
    """Mean over networks of the per-network time average of ``values[:, burn_in:]`` (shape
    ``(n_networks, steps)``), and its standard error from the spread of the per-network averages
    (``std(ddof=1)/sqrt(n_networks)``; NaN for one network)."""
    per_net = np.asarray(values, float)[:, burn_in:].mean(axis=1)
    se = per_net.std(ddof=1) / math.sqrt(len(per_net)) if len(per_net) > 1 else float("nan")
    return float(per_net.mean()), float(se)


class _Untied:
    """``n`` independent untied networks of width ``N`` driven by one generator (arrays ``(n, N)``)."""

    def __init__(self, cell: str, N: int, N_in: int, n: int, gates: dict, R: float, rng: np.random.Generator):
        self.cell, self.N, self.N_in, self.n, self.R, self.rng = cell, N, N_in, n, R, rng
        self.p = {g: (d["sigma_w"], d["sigma_v"], d["sigma_b"], d["mu_b"]) for g, d in gates.items()}

    def input_moment(self) -> np.ndarray:
        """|x|^2/N_in per network, shape (n, 1): R chi^2_{N_in}/N_in."""
        if self.R == 0:
            return np.zeros((self.n, 1))
        return self.R * self.rng.chisquare(self.N_in, size=(self.n, 1)) / self.N_in

    def _normal(self):
        return self.rng.standard_normal((self.n, self.N))

    def field(self, gate: str, X, q, pair=None, recurrent=True, external=True):
        """Field ``e`` of ``gate`` for copy a (and its displacement ``de`` for copy b when ``pair = (q_ad, q_dd)``).

        ``q = |h_a|^2/N``, ``X = |x|^2/N_in`` (per network, shape (n, 1)); ``recurrent``/``external`` select the
        ``W h`` and the ``V x + b`` parts (the GRU candidate is split into the two)."""
        sw, sv, sb, mu = self.p[gate]
        sw = sw if recurrent else 0.0
        ext_var = sv * sv * X + sb * sb if external else np.zeros_like(q)
        mu = mu if external else 0.0
        if pair is None:                                      # one normal: the sum is Gaussian
            return mu + np.sqrt(sw * sw * q + ext_var) * self._normal(), None
        e = mu + np.sqrt(ext_var) * self._normal() if external else np.zeros((self.n, self.N))
        if sw == 0:
            return e, np.zeros((self.n, self.N))
        q_ad, q_dd = pair
        sq = np.sqrt(q)
        xi = self._normal()
        e = e + sw * sq * xi
        a = np.divide(q_ad, sq, out=np.zeros_like(q), where=sq > 0)
        rem = np.sqrt(np.maximum(q_dd - a * a, 0.0))
        return e, sw * (a * xi + rem * self._normal())

    # ---- the cells: new state of copy a (and of copy b = a + d when d is given)
    def step(self, state: tuple, d: tuple | None = None):
        X = self.input_moment()
        h = state[-1]
        q = (h * h).mean(axis=1, keepdims=True)
        pair = None
        if d is not None:
            dh = d[-1]
            pair = ((h * dh).mean(axis=1, keepdims=True), (dh * dh).mean(axis=1, keepdims=True))
        return _STEPS[self.cell](self, state, d, X, q, pair)

    def _lstm_step(self, state, d, X, q, pair):
        """LSTM: c_t = sigmoid(f) c + sigmoid(i) tanh(g), h_t = sigmoid(o) tanh(c_t) (gates read h)."""
        c = state[0]
        F = {g: self.field(g, X, q, pair) for g in "ifgo"}
        i, f, g, o = (F[k][0] for k in "ifgo")
        c_new = _sig(f) * c + _sig(i) * np.tanh(g)
        h_new = _sig(o) * np.tanh(c_new)
        if d is None:
            return (c_new, h_new), None
        ib, fb, gb, ob = (F[k][0] + F[k][1] for k in "ifgo")
        cb = _sig(fb) * (c + d[0]) + _sig(ib) * np.tanh(gb)
        hb = _sig(ob) * np.tanh(cb)
        return (c_new, h_new), (cb - c_new, hb - h_new)

    def _gru_step(self, state, d, X, q, pair):
        """GRU: h_t = (1 - z) tanh(e_nx + sigmoid(r) e_nh) + z h."""
        h = state[-1]
        r, dr = self.field("r", X, q, pair)
        z, dz = self.field("z", X, q, pair)
        nx, _ = self.field("n", X, q, None if pair is None else (0 * q, 0 * q), recurrent=False)
        nh, dnh = self.field("n", X, q, pair, external=False)
        zs = _sig(z)
        h_new = (1 - zs) * np.tanh(nx + _sig(r) * nh) + zs * h
        if d is None:
            return (h_new,), None
        zb = _sig(z + dz)
        hb = (1 - zb) * np.tanh(nx + _sig(r + dr) * (nh + dnh)) + zb * (h + d[0])
        return (h_new,), (hb - h_new,)


    # ---- two copies with their own inputs (same weights and biases): the pair of every field
    def input_gram(self, Sigma: float):
        """(|x_a|^2, x_a.x_b, |x_b|^2)/N_in per network, shape (n, 1) each, for x_b = Sigma x_a + sqrt(1 - Sigma^2)
        x' (x_a, x' independent N(0, R I)): the exact Wishart law by Bartlett's decomposition."""
        m = self.N_in
        w11 = self.rng.chisquare(m, size=(self.n, 1))
        z = self.rng.standard_normal((self.n, 1))
        w22 = z * z + (self.rng.chisquare(m - 1, size=(self.n, 1)) if m > 1 else 0.0)
        w12 = np.sqrt(w11) * z
        c, s = Sigma, math.sqrt(max(1.0 - Sigma * Sigma, 0.0))
        k = self.R / m
        return k * w11, k * (c * w11 + s * w12), k * (c * c * w11 + 2 * c * s * w12 + s * s * w22)

    def pair_field(self, gate: str, Gx, Gh, recurrent=True, external=True):
        r"""Fields ``(e_a, e_b)`` of ``gate`` for two copies: ``(W y_a + V x_a, W y_b + V x_b)`` is, per unit,
        bivariate Gaussian with covariance :math:`\sigma_w^2 G_h + \sigma_v^2 G_x` (the Gram matrices over N and
        N_in), the bias ``b`` is common. ``Gx``, ``Gh``: (aa, ab, bb) per network."""
        sw, sv, sb, mu = self.p[gate]
        sw = sw if recurrent else 0.0
        sv, sb, mu = (sv, sb, mu) if external else (0.0, 0.0, 0.0)
        Saa, Sab, Sbb = (sw * sw * h + sv * sv * x for h, x in zip(Gh, Gx))
        sa = np.sqrt(Saa)
        a = np.divide(Sab, sa, out=np.zeros_like(Sab), where=sa > 0)
        rem = np.sqrt(np.maximum(Sbb - a * a, 0.0))
        xi = self._normal()
        bias = mu + (sb * self._normal() if sb != 0 else 0.0)
        return bias + sa * xi, bias + a * xi + rem * self._normal()

    def pair_step(self, sa: tuple, sb: tuple, Sigma: float):
        """One step of two copies with input overlap ``Sigma`` (0: independent inputs)."""
        Gx = self.input_gram(Sigma)
        ha, hb = sa[-1], sb[-1]
        Gh = ((ha * ha).mean(axis=1, keepdims=True), (ha * hb).mean(axis=1, keepdims=True),
              (hb * hb).mean(axis=1, keepdims=True))
        return _PAIR_STEPS[self.cell](self, sa, sb, Gx, Gh)

    def _lstm_pair(self, sa, sb, Gx, Gh):
        F = {g: self.pair_field(g, Gx, Gh) for g in "ifgo"}
        out = []
        for k, s in enumerate((sa, sb)):
            i, f, g, o = (F[x][k] for x in "ifgo")
            c = _sig(f) * s[0] + _sig(i) * np.tanh(g)
            out.append((c, _sig(o) * np.tanh(c)))
        return tuple(out)

    def _gru_pair(self, sa, sb, Gx, Gh):
        r = self.pair_field("r", Gx, Gh)
        z = self.pair_field("z", Gx, Gh)
        nx = self.pair_field("n", Gx, Gh, recurrent=False)
        nh = self.pair_field("n", Gx, Gh, external=False)
        out = []
        for k, s in enumerate((sa, sb)):
            zs = _sig(z[k])
            out.append(((1 - zs) * np.tanh(nx[k] + _sig(r[k]) * nh[k]) + zs * s[0],))
        return tuple(out)


#: the hand-written field samplers, by the name of the cell they sample (per-cell closed forms)
_STEPS = {LSTM.name: _Untied._lstm_step, GRU.name: _Untied._gru_step}
_PAIR_STEPS = {LSTM.name: _Untied._lstm_pair, GRU.name: _Untied._gru_pair}


def _chunks(N: int, n_networks: int, seed: int):
    """(generator, networks in chunk) pairs; the chunking depends on N and n_networks only."""
    size = max(1, min(n_networks, _CHUNK_UNITS // N))
    counts = [size] * (n_networks // size) + ([n_networks % size] if n_networks % size else [])
    seqs = np.random.SeedSequence(int(seed)).spawn(len(counts))
    return [(np.random.default_rng(s), k) for s, k in zip(seqs, counts)]


def _setup(cell, N, n_networks, N_in, hyperparameters):
    cell = _cell_name(cell)
    if cell not in _STEPS:
        raise ValueError(f"no untied field sampler for cell {cell!r} (only {', '.join(map(repr, _STEPS))})")
    N, n_networks = _check_int("N", N, 1), _check_int("n_networks", n_networks, 1)
    N_in = N if N_in is None else _check_int("N_in", N_in, 1)
    gates, R = resolve_gated_hyperparameters(cell, **hyperparameters)
    return cell, N, n_networks, N_in, gates, R


def sample_untied(cell, N: int = 1000, T: int = 100, n_networks: int = 1, seed: int = 0, *,
                  N_in: int | None = None, h0_scale: float = 0.0, **hyperparameters) -> GatedSimulation:
    r"""Trajectories of ``n_networks`` independent untied networks (the law of
    ``simulate_gated(cell, N, T, tied=False, ...)``) by the O(N) field sampler.

    Returns a :class:`~mftrnn.nets.simulate_gated.GatedSimulation` (``tied=False``): ``Q_h[k, t] = |h_t|^2/N``,
    ``M_h``, ``h_final`` and, for the LSTM, ``Q_c``, ``M_c``, ``c_final``; ``extra["sampler"] = "untied_fast"``.
    Use :func:`time_average` (``Q_h[:, burn_in:]``) for stationary values.
    """
    cell, N, n_networks, N_in, gates, R = _setup(cell, N, n_networks, N_in, hyperparameters)
    T = _check_int("T", T, 0)
    names, out_k = _state_names(cell)
    n_states = len(names)
    Q = np.zeros((n_states, n_networks, T + 1))
    M = np.zeros_like(Q)
    final = np.zeros((n_states, n_networks, N))
    k0 = 0
    for rng, n in _chunks(N, n_networks, seed):
        net = _Untied(cell, N, N_in, n, gates, R, rng)
        state = tuple(h0_scale * rng.standard_normal((n, N)) for _ in range(n_states))
        sl = slice(k0, k0 + n)
        for t in range(T + 1):
            if t > 0:
                state, _ = net.step(state)
            for j, s in enumerate(state):
                Q[j, sl, t] = (s * s).mean(axis=1)
                M[j, sl, t] = s.mean(axis=1)
        for j, s in enumerate(state):
            final[j, sl] = s
        k0 += n
    params = {f"{kind}_{g}": v for g, d in gates.items() for kind, v in d.items()} | {"R": R}
    out = GatedSimulation(cell=cell, N=N, N_in=N_in, T=T, tied=False, seed=seed, hyperparameters=params,
                          Q_h=Q[out_k], M_h=M[out_k], h_final=final[out_k], extra={"sampler": "untied_fast"})
    for j, name in enumerate(names):
        if j != out_k:  # the LSTM's cell state c
            setattr(out, f"Q_{name}", Q[j]), setattr(out, f"M_{name}", M[j]), setattr(out, f"{name}_final", final[j])
    return out


def chi_untied(cell, N: int = 1000, T: int = 200, burn_in: int = 100, n_networks: int = 4, seed: int = 0,
               eps: float = 1e-6, *, settle: int = 20, N_in: int | None = None, **hyperparameters) -> dict:
    r"""Per-step growth of :math:`|\delta|^2` (:math:`|\delta c|^2 + |\delta h|^2` for the LSTM) of an
    infinitesimal perturbation under identical inputs and weights, in the untied network (the law of
    ``measure_gated_chi(..., tied=False)``).

    The reference runs ``burn_in`` steps from zero; the copy is displaced by a random :math:`\delta` of norm
    :math:`\varepsilon\sqrt N`; for each of the next ``T`` steps the ratio :math:`r_t = |\delta_t|^2/|\delta_{t-1}|^2`
    is recorded and :math:`\delta_t` rescaled back to norm :math:`\varepsilon\sqrt N`; the first ``settle`` ratios
    are dropped (the direction relaxes to the leading mode).

    Returns a dict with ``chi_arith`` (mean of :math:`r_t` over kept steps and networks: the growth of the second
    moment, the N -> infinity mean-field chi), ``chi_arith_se`` (std over networks of per-network means /
    sqrt(n_networks)), ``chi_arith_per_network``; ``chi`` (= ``chi_geom``: Benettin, exp of the mean log ratio),
    ``chi_se`` (delta method from the per-network mean logs), ``chi_per_network``; ``Q_h``, ``Q_c`` (reference
    copy, per network time averages over the ``T`` measured steps, shape (n_networks,)) with
    ``Q_h_mean``/``Q_h_se`` (and ``Q_c_*``); ``ratios`` (n_networks, T - settle).
    """
    cell, N, n_networks, N_in, gates, R = _setup(cell, N, n_networks, N_in, hyperparameters)
    T, burn_in, settle = _check_int("T", T, 1), _check_int("burn_in", burn_in, 0), _check_int("settle", settle, 0)
    if settle >= T:
        raise ValueError(f"settle ({settle}) must be smaller than T ({T})")
    if not 0 < eps < 1e-2:
        raise ValueError(f"eps must lie in (0, 1e-2), got {eps!r}")
    states, _ = _state_names(cell)
    n_states = len(states)
    S = T - settle
    ratios = np.zeros((n_networks, S))
    Qs = np.zeros((n_states, n_networks))
    d0sq = eps * eps * N
    k0 = 0
    for rng, n in _chunks(N, n_networks, seed):
        net = _Untied(cell, N, N_in, n, gates, R, rng)
        state = tuple(np.zeros((n, N)) for _ in range(n_states))
        for _ in range(burn_in):
            state, _ = net.step(state)
        d = tuple(rng.standard_normal((n, N)) for _ in range(n_states))
        norm2 = sum((x * x).sum(axis=1, keepdims=True) for x in d)
        d = tuple(x * np.sqrt(d0sq / norm2) for x in d)
        sl = slice(k0, k0 + n)
        for t in range(T):
            state, d = net.step(state, d)
            for j, s in enumerate(state):
                Qs[j, sl] += (s * s).mean(axis=1) / T
            norm2 = sum((x * x).sum(axis=1, keepdims=True) for x in d)
            if t >= settle:
                ratios[sl, t - settle] = norm2[:, 0] / d0sq
            d = tuple(x * np.sqrt(d0sq / norm2) for x in d)
        k0 += n
    out = {"cell": cell, "N": N, "N_in": N_in, "T": T, "burn_in": burn_in, "settle": settle, "seed": seed,
           "n_networks": n_networks, "eps": eps, "ratios": ratios}
    sqn = math.sqrt(n_networks)
    per = ratios.mean(axis=1)
    out["chi_arith"], out["chi_arith_per_network"] = float(per.mean()), per
    out["chi_arith_se"] = float(per.std(ddof=1) / sqn) if n_networks > 1 else float("nan")
    logs = np.log(ratios).mean(axis=1)
    chi = math.exp(logs.mean())
    out["chi"] = out["chi_geom"] = chi
    out["chi_se"] = out["chi_geom_se"] = float(chi * logs.std(ddof=1) / sqn) if n_networks > 1 else float("nan")
    out["chi_per_network"] = np.exp(logs)
    names = [f"Q_{s}" for s in states]
    for name, q in zip(names, Qs):
        out[name] = q
        out[name + "_mean"] = float(q.mean())
        out[name + "_se"] = float(q.std(ddof=1) / sqn) if n_networks > 1 else float("nan")
    return out


def correlation_untied(cell, N: int = 1000, T: int = 50, burn_in: int = 100, n_networks: int = 4, seed: int = 0,
                       *, Sigma: float = 0.0, N_in: int | None = None, **hyperparameters) -> dict:
    r"""Decorrelation of two copies of one untied network (same weights and biases at every step) fed their own
    inputs with overlap ``Sigma`` (0: independent), by the O(N) field sampler (exact law of the untied network).

    Copy a runs ``burn_in`` steps from zero; copy b is then set equal to it (:math:`C_0 = Q_0`) and both run
    ``T`` steps. Returns a dict with, per state name ``s`` (``"h"``; ``"c"`` too for the LSTM), arrays of shape
    ``(n_networks, T + 1)``: ``C_s`` (:math:`s_a\cdot s_b/N`), ``Q_s_a``, ``Q_s_b`` (:math:`|s|^2/N`) and
    ``M_s_a`` (mean over units); ``C_s_mean``/``C_s_se`` (mean over networks and its standard error, shape
    ``(T + 1,)``). In the mean field :math:`C_t` follows the covariance map from :math:`Q^*` and approaches
    :math:`C^*` as :math:`\chi_c^t` (:mod:`mftrnn.theory.gated_correlation`).
    """
    cell, N, n_networks, N_in, gates, R = _setup(cell, N, n_networks, N_in, hyperparameters)
    T, burn_in = _check_int("T", T, 0), _check_int("burn_in", burn_in, 0)
    if not -1.0 <= float(Sigma) <= 1.0:
        raise ValueError(f"Sigma must lie in [-1, 1], got {Sigma!r}")
    names, _ = _state_names(cell)
    n_states = len(names)
    C, Qa, Qb, Ma = (np.zeros((n_states, n_networks, T + 1)) for _ in range(4))
    k0 = 0
    for rng, n in _chunks(N, n_networks, seed):
        net = _Untied(cell, N, N_in, n, gates, R, rng)
        sa = tuple(np.zeros((n, N)) for _ in range(n_states))
        for _ in range(burn_in):
            sa, _ = net.step(sa)
        sb = tuple(x.copy() for x in sa)
        sl = slice(k0, k0 + n)
        for t in range(T + 1):
            if t > 0:
                sa, sb = net.pair_step(sa, sb, float(Sigma))
            for j in range(n_states):
                C[j, sl, t] = (sa[j] * sb[j]).mean(axis=1)
                Qa[j, sl, t] = (sa[j] * sa[j]).mean(axis=1)
                Qb[j, sl, t] = (sb[j] * sb[j]).mean(axis=1)
                Ma[j, sl, t] = sa[j].mean(axis=1)
        k0 += n
    out = {"cell": cell, "N": N, "N_in": N_in, "T": T, "burn_in": burn_in, "seed": seed, "n_networks": n_networks,
           "Sigma": float(Sigma)}
    sqn = math.sqrt(n_networks)
    for j, name in enumerate(names):
        out[f"C_{name}"], out[f"Q_{name}_a"], out[f"Q_{name}_b"], out[f"M_{name}_a"] = C[j], Qa[j], Qb[j], Ma[j]
        out[f"C_{name}_mean"] = C[j].mean(axis=0)
        out[f"C_{name}_se"] = C[j].std(axis=0, ddof=1) / sqn if n_networks > 1 else np.full(T + 1, np.nan)
    return out

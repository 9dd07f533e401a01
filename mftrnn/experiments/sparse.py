r"""How sparse recurrent weights move the Jacobian spectrum away from the free-probability prediction.

**Measurement.** For a recurrent matrix :math:`W` from :mod:`mftrnn.nets.sparse` the tied vanilla RNN
:math:`h_t = \tanh(Wh_{t-1} + Vx_t + b)`, :math:`x_t\sim\mathcal N(0, R\,I)`, is run for ``burn_in`` steps from
:math:`h_0\sim\mathcal N(0, I)`; along the next :math:`\max T` steps the exact Jacobian product
:math:`J = D_TW\cdots D_1W`, :math:`D_t = \operatorname{diag}(1-h_t^2)`, is formed (:func:`tied_vanilla_jacobian`,
batched over networks; it equals the product of :func:`mftrnn.nets.simulate.step_jacobian_matrix`, checked in
``tests/test_sparse.py``), and the eigenvalues of :math:`JJ^\top` (squared singular values, float64 SVD; values below
:math:`10^{-28}` of the largest are beyond its resolution and left out) are compared with the library's law,
:func:`mftrnn.theory.spectrum.spectral_law`, by the Kolmogorov distance
(:func:`mftrnn.theory.spectrum.kolmogorov_distance`), one network at a time.

**Reference laws.** Sparse Gaussian :math:`W` against the Gaussian-:math:`W` law; the exactly orthogonal sparse
:math:`W` against the orthogonal-:math:`W` law; the randomly pruned Haar matrix against the orthogonal law (which
it misses at every :math:`p<1`: pruning breaks orthogonality, not only Gaussianity) and against
:func:`pruned_orthogonal_law`, the free product of :math:`D^2` with the law of :math:`\sigma_w^2
(\sqrt pI+\sqrt{1-p}G)(\cdot)^\top` (:mod:`mftrnn.nets.sparse`), which accounts for that loss of orthogonality.

**Noise floor.** A finite dense network of the same :math:`N` is not at distance 0 from the law: finite-:math:`N`
fluctuations and, for tied weights, the freeness assumption leave a distance :math:`d_0`. :func:`dense_baseline`
measures it on ``n_baseline`` dense networks (:math:`p=1`) per ensemble and :math:`T`; a sparse point *departs*
when its mean distance over ``n_networks`` networks exceeds ``threshold`` :math:`=\bar d_0 + 3s_0`
(:math:`s_0` the standard deviation of one dense network's distance: conservative for a mean over several networks).
The Dvoretzky-Kiefer-Wolfowitz bound :math:`\sqrt{\ln(2/\delta)/(2N)}` (:math:`\delta = 10^{-3}`) for :math:`N`
i.i.d. samples is reported beside it; eigenvalues are far more rigid than i.i.d. samples, so it is loose.

**Trained then pruned** (:func:`train_copy_rnn`, :func:`pruned_spectrum_check`): a :class:`torch.nn.RNN` trained on
the copy task (:class:`mftrnn.experiments.memory_tasks.CopyMemoryTask`), magnitude-pruned
(:func:`mftrnn.nets.sparse.magnitude_prune`, no rescaling); the prediction takes the estimated
:math:`\hat\sigma_w = \sqrt{N\overline{W^2}}`, :math:`\hat\sigma_v`, :math:`\hat\mu_b`, :math:`\hat\sigma_b`
(as :func:`mftrnn.diagnose` does) and the Gaussian-:math:`W` law; the measurement drives the pruned network with
Gaussian inputs of the task's per-component second moment. Trained weights are neither i.i.d. nor free from the
states, so this comparison is a check of how far the mean field carries, not a prediction expected to hold.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DomainError
from ..nets.sparse import magnitude_prune, pruned_orthogonal, sparse_gaussian, sparse_orthogonal
from ..theory.critical import vanilla_critical
from ..theory.free import DeformedStep, DiagonalLaw, FreeProduct
from ..theory.spectrum import SpectralLaw, kolmogorov_distance, spectral_law, step_law

__all__ = ["CONSTRUCTIONS", "SVD_FLOOR", "DKW_DELTA", "tied_vanilla_jacobian", "network_ks", "pruned_orthogonal_law",
           "dense_baseline", "SparseSweep", "sparse_spectrum_sweep", "train_copy_rnn", "pruned_spectrum_check",
           "dkw_bound", "critical_hyperparameters"]

#: squared singular values below this fraction of the largest are beyond a float64 SVD of the product
SVD_FLOOR = 1e-28
#: confidence level of the reported DKW bound
DKW_DELTA = 1e-3

#: name -> (constructor(N, p, sigma_w, generator), orthogonal reference law)
CONSTRUCTIONS = {
    "sparse_gaussian": (sparse_gaussian, False),
    "pruned_orthogonal": (pruned_orthogonal, True),
    "sparse_orthogonal": (sparse_orthogonal, True),
}
_HP = ("sigma_w", "sigma_v", "sigma_b", "mu_b", "R")


def dkw_bound(n: int, delta: float = DKW_DELTA) -> float:
    r"""Dvoretzky-Kiefer-Wolfowitz: :math:`\sup|F_n-F|` exceeds :math:`\sqrt{\ln(2/\delta)/(2n)}` with probability at
    most :math:`\delta` for :math:`n` i.i.d. samples."""
    return math.sqrt(math.log(2.0 / delta) / (2.0 * n))


def critical_hyperparameters(q_star: float = 0.25, *, mu_b: float = 0.0, sigma_b: float = 0.0, R: float = 1.0) -> dict:
    r"""Scalar ``sigma_w, sigma_v, sigma_b, mu_b, R`` on the critical line :math:`\chi=1` at :math:`q^*`
    (:func:`mftrnn.theory.critical.vanilla_critical`, the hyperparameters of
    :func:`mftrnn.nets.init.critical_rnn_init_`)."""
    c = vanilla_critical(q_star, mu_b=mu_b, sigma_b=sigma_b, R=R)
    return {k: float(c[k]) for k in _HP}


def _as_batch(t: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim == ndim - 1:
        t = t[None]
    if t.ndim != ndim:
        raise DomainError(f"{name} must have {ndim - 1} or {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


@torch.no_grad()
def tied_vanilla_jacobian(W, V, b, T=(1, 5, 20), *, R: float = 1.0, burn_in: int = 100,
                          generator: torch.Generator | None = None) -> tuple[dict, np.ndarray]:
    r"""Squared singular values of the ``T``-step Jacobian of tied vanilla RNNs along real trajectories.

    ``W`` ``(B, N, N)``, ``V`` ``(B, N, N_in)``, ``b`` ``(B, N)`` (or without the batch axis): ``B`` networks.
    :math:`h_0\sim\mathcal N(0,I)`, ``burn_in`` steps of :math:`h_t = \tanh(Wh_{t-1}+Vx_t+b)` with
    :math:`x_t\sim\mathcal N(0,R\,I)`, then :math:`J = D_TW\cdots D_1W` with :math:`D_t=\operatorname{diag}(1-h_t^2)`
    (the exact Jacobian :math:`\partial h_T/\partial h_0`). Returns ``({T: array (B, N), decreasing}, Q)`` with
    ``Q`` the per-network :math:`|h|^2/N` at the start of the product.
    """
    W, V, b = _as_batch(W, 3, "W"), _as_batch(V, 3, "V"), _as_batch(b, 2, "b")
    Bn, N, _ = W.shape
    if W.shape[2] != N or V.shape[:2] != (Bn, N) or b.shape != (Bn, N):
        raise DomainError(f"inconsistent shapes W {tuple(W.shape)}, V {tuple(V.shape)}, b {tuple(b.shape)}")
    Ts = sorted({int(t) for t in np.atleast_1d(T)})
    if not Ts or Ts[0] < 1:
        raise DomainError(f"T must be positive integers, got {T!r}")
    n_in = V.shape[2]
    sR = math.sqrt(float(R))

    def step(h):
        x = torch.randn(Bn, n_in, 1, generator=generator, dtype=torch.float64) * sR
        return torch.tanh(torch.bmm(W, h[..., None]) + torch.bmm(V, x) + b[..., None])[..., 0]

    h = torch.randn(Bn, N, generator=generator, dtype=torch.float64)
    for _ in range(int(burn_in)):
        h = step(h)
    Q = (h * h).mean(1).numpy()
    out = {}
    P = None
    for t in range(1, Ts[-1] + 1):
        h = step(h)
        D = 1.0 - h * h
        P = D[..., None] * (W if P is None else torch.bmm(W, P))
        if t in Ts:
            out[t] = (torch.linalg.svdvals(P) ** 2).numpy()
    return out, Q


def network_ks(law: SpectralLaw, sq: np.ndarray) -> np.ndarray:
    """Kolmogorov distance of each network's eigenvalues (rows of ``sq``) to ``law``, above ``SVD_FLOOR`` x max."""
    sq = np.atleast_2d(sq)
    return np.array([kolmogorov_distance(law, s, floor=SVD_FLOOR * s.max()) for s in sq])


def pruned_orthogonal_law(p: float, T: int, **hyperparameters) -> SpectralLaw:
    r"""Spectral law of :math:`JJ^\top` for a vanilla RNN whose :math:`W` is a randomly pruned, rescaled Haar matrix.

    One step: :math:`J_tJ_t^\top = D(\sigma_w^2XX^\top)D`, :math:`X = \sqrt p\,I + \sqrt{1-p}\,G` in singular values
    (:mod:`mftrnn.nets.sparse`), so :math:`S_{\rm step} = S_{D^2}\,S_{XX^\top}` with :math:`XX^\top` the
    :class:`~mftrnn.theory.free.DeformedStep` (:math:`a=\sigma_w\sqrt p`, :math:`b=1`, scale
    :math:`\sigma_w\sqrt{1-p}`, Ginibre) and the law of :math:`D^2` the fine diagonal law of the orthogonal case
    (:func:`mftrnn.theory.spectrum.step_law`); :math:`S_T = S_{\rm step}^T`. :math:`p=1` is the orthogonal law.
    Mean :math:`\chi^T` (the mean field is that of the dense matrix); relative variance
    :math:`T(r_{D^2} + 2(1-p)-(1-p)^2)`.
    """
    p = float(p)
    if not (math.isfinite(p) and 0.0 < p <= 1.0):
        raise DomainError(f"p must be in (0, 1], got {p!r}")
    if p == 1.0:
        return spectral_law("vanilla", T, orthogonal=True, **hyperparameters)
    T = int(T)
    base = step_law("vanilla", orthogonal=True, **hyperparameters)
    D = next(f for f, _ in base.terms if isinstance(f, DiagonalLaw))
    s = float(hyperparameters["sigma_w"])
    X = DeformedStep(np.array([s * math.sqrt(p)]), np.array([1.0]), sigma_w=s * math.sqrt(1.0 - p))
    prod = FreeProduct(((D, T), (X, T)))
    prod.check_range()
    return SpectralLaw("vanilla", T, True, {**hyperparameters, "p": p}, prod)


def _drive(B: int, N: int, hp: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    V = torch.randn(B, N, N, generator=gen, dtype=torch.float64) * (hp["sigma_v"] / math.sqrt(N))
    b = hp["mu_b"] + hp["sigma_b"] * torch.randn(B, N, generator=gen, dtype=torch.float64)
    return V, b


def _networks(make, B: int, N: int, p: float, hp: dict, gen: torch.Generator, Ts, burn_in: int):
    W = torch.stack([make(N, p, hp["sigma_w"], gen) for _ in range(B)])
    V, b = _drive(B, N, hp, gen)
    return tied_vanilla_jacobian(W, V, b, Ts, R=hp["R"], burn_in=burn_in, generator=gen)


def dense_baseline(N: int, Ts, hp: dict, *, n_baseline: int = 6, seed: int = 0, burn_in: int = 100) -> dict:
    r"""Noise floor: ``{(orthogonal, T): {"ks": per-network distances, "mean", "sd", "threshold", "dkw"}}`` for
    ``n_baseline`` dense networks (:math:`p = 1`) of each ensemble; ``threshold`` :math:`=\bar d_0+3s_0`."""
    gen = torch.Generator().manual_seed(10_000 + int(seed))
    out = {}
    for orthogonal, make in ((False, sparse_gaussian), (True, sparse_orthogonal)):
        sq, _ = _networks(make, n_baseline, N, 1.0, hp, gen, Ts, burn_in)
        for T in sq:
            ks = network_ks(spectral_law("vanilla", T, orthogonal=orthogonal, **hp), sq[T])
            sd = float(ks.std(ddof=1)) if ks.size > 1 else float("nan")
            out[(orthogonal, T)] = {"ks": ks, "mean": float(ks.mean()), "sd": sd,
                                    "threshold": float(ks.mean() + 3 * sd), "dkw": dkw_bound(N)}
    return out


@dataclass
class SparseSweep:
    """Output of :func:`sparse_spectrum_sweep`: ``rows`` (one dict per construction, :math:`k = pN`, :math:`T`, with
    ``ks`` per network, ``ks_mean``, the reference law and ``departs``), ``baseline`` (:func:`dense_baseline`),
    ``params`` and ``seconds``."""

    rows: list
    baseline: dict
    params: dict
    seconds: float = 0.0

    def ks(self, construction: str, T: int, reference: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(k values, mean KS)`` of one construction at ``T`` (``reference`` selects among several laws)."""
        r = [x for x in self.rows if x["construction"] == construction and x["T"] == T
             and (reference is None or x["reference"] == reference)]
        if reference is None and len({x["reference"] for x in r}) > 1:
            r = [x for x in r if x["reference"] == r[0]["reference"]]
        return np.array([x["k"] for x in r]), np.array([x["ks_mean"] for x in r])

    def threshold(self, orthogonal: bool, T: int) -> float:
        return self.baseline[(bool(orthogonal), int(T))]["threshold"]

    def departure_k(self, construction: str, T: int, reference: str | None = None) -> int | None:
        r"""The largest :math:`k=pN` such that every :math:`k'\le k` measured departs (mean distance above the dense
        threshold), i.e. the departure counted contiguously from the sparse end, so that a single chance exceedance
        at large :math:`k` (the threshold is a 3-standard-deviation bound) does not count; None if :math:`k_{min}`
        does not depart."""
        r = sorted((x for x in self.rows if x["construction"] == construction and x["T"] == T
                    and (reference is None or x["reference"] == reference)), key=lambda x: x["k"])
        if reference is None and len({x["reference"] for x in r}) > 1:
            r = [x for x in r if x["reference"] == r[0]["reference"]]
        last = None
        for x in r:
            if not x["departs"]:
                break
            last = x["k"]
        return last


def sparse_spectrum_sweep(N: int = 256, ks=None, T=(1, 5, 20), *, constructions=tuple(CONSTRUCTIONS),
                          q_star: float = 0.25, n_networks: int = 2, n_baseline: int = 16, seed: int = 0,
                          burn_in: int = 100, deformed: bool = False) -> SparseSweep:
    r"""Kolmogorov distance to the free-probability law against :math:`k = pN` (module docstring).

    ``ks``: non-zeros per row, default :math:`1, 2, 4, \dots, N` (powers of 2 up to :math:`N`; every value must
    divide :math:`N` for ``sparse_orthogonal``). Hyperparameters :func:`critical_hyperparameters` ``(q_star)``.
    ``deformed``: also compare ``pruned_orthogonal`` with :func:`pruned_orthogonal_law` (reference
    ``"pruned"``; costs one law per :math:`p` and :math:`T`, ~1-3 s each).
    """
    t0 = time.perf_counter()
    if isinstance(N, bool) or not hasattr(N, "__index__") or int(N) < 2:
        raise DomainError(f"N must be an integer >= 2, got {N!r}")
    N = int(N)
    if ks is None:
        ks = [2 ** j for j in range(int(math.log2(N)) + 1)]
        if ks[-1] != N:
            ks.append(N)
    ks = [int(k) for k in ks]
    for name in constructions:
        if name not in CONSTRUCTIONS:
            raise DomainError(f"unknown construction {name!r}; known: {', '.join(CONSTRUCTIONS)}")
    Ts = sorted({int(t) for t in np.atleast_1d(T)})
    hp = critical_hyperparameters(q_star)
    baseline = dense_baseline(N, Ts, hp, n_baseline=n_baseline, seed=seed, burn_in=burn_in)
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for name in constructions:
        make, orthogonal = CONSTRUCTIONS[name]
        for k in ks:
            p = k / N
            sq, Q = _networks(make, n_networks, N, p, hp, gen, Ts, burn_in)
            for t in Ts:
                refs = [("orthogonal" if orthogonal else "gaussian",
                         spectral_law("vanilla", t, orthogonal=orthogonal, **hp))]
                if deformed and name == "pruned_orthogonal":
                    refs.append(("pruned", pruned_orthogonal_law(p, t, **hp)))
                for ref, law in refs:
                    d = network_ks(law, sq[t])
                    thr = baseline[(orthogonal, t)]["threshold"]
                    rows.append({"construction": name, "k": k, "p": p, "T": t, "reference": ref, "ks": d,
                                 "ks_mean": float(d.mean()), "threshold": thr, "departs": bool(d.mean() > thr),
                                 "Q": float(Q.mean()), "mean_sq": float(sq[t].mean())})
    params = {"N": N, "ks": ks, "T": Ts, "constructions": list(constructions), "q_star": q_star, **hp,
              "n_networks": n_networks, "n_baseline": n_baseline, "seed": seed, "burn_in": burn_in}
    return SparseSweep(rows, baseline, params, time.perf_counter() - t0)


# ============================================================================ trained, then pruned

def train_copy_rnn(N: int = 128, delay: int = 1, *, steps: int = 600, batch_size: int = 64, lr: float = 1e-2,
                   seconds: float | None = None, seed: int = 0) -> dict:
    r"""Train a :class:`torch.nn.RNN` (tanh, ``N`` units, float32) with a linear read-out on the copy task of delay
    ``delay`` (:class:`~mftrnn.experiments.memory_tasks.CopyMemoryTask`) with Adam for ``steps`` updates (or until
    ``seconds`` have passed). Initialisation: PyTorch's default. Returns ``{"rnn", "readout", "task", "losses"
    (per update), "test_loss", "baseline", "steps", "seconds"}``; the test loss is on the task's fixed test set.
    """
    from .memory_tasks import CopyMemoryTask

    torch.manual_seed(int(seed))
    task = CopyMemoryTask(int(delay), n_test=250)
    rnn = torch.nn.RNN(task.n_inputs, int(N), batch_first=True)
    readout = torch.nn.Linear(int(N), task.n_classes)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(readout.parameters()), lr=lr)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    lossf = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    losses = []
    for _ in range(int(steps)):
        x, y = task.train_batch(batch_size, gen)
        out, _ = rnn(x)
        loss = lossf(readout(out).reshape(-1, task.n_classes), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rnn.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if seconds is not None and time.perf_counter() - t0 > seconds:
            break
    with torch.no_grad():
        tl = [float(lossf(readout(rnn(x)[0]).reshape(-1, task.n_classes), y.reshape(-1)))
              for x, y in task.test_batches()]
    return {"rnn": rnn, "readout": readout, "task": task, "losses": np.array(losses), "test_loss": float(np.mean(tl)),
            "baseline": task.baseline, "steps": len(losses), "seconds": time.perf_counter() - t0}


def _estimated(W: torch.Tensor, V: torch.Tensor, b: torch.Tensor, R: float) -> dict:
    N, n_in = V.shape
    return {"sigma_w": math.sqrt(N * float((W * W).mean())), "sigma_v": math.sqrt(n_in * float((V * V).mean())),
            "mu_b": float(b.mean()), "sigma_b": float(b.std(unbiased=False)), "R": float(R)}


@torch.no_grad()
def pruned_spectrum_check(rnn: torch.nn.RNN, ps=(1.0, 0.5, 0.13, 0.05), T=(1, 5, 20), *, R: float,
                          n_sequences: int = 2, burn_in: int = 100, seed: int = 0, rescale: bool = False) -> list:
    r"""Magnitude-prune the recurrent matrix of a one-layer tanh :class:`torch.nn.RNN` to each fraction in ``ps``
    and compare its Jacobian spectrum with the Gaussian-:math:`W` law at the estimated hyperparameters.

    Per :math:`p` and :math:`T`: ``{"p", "T", "hp"`` (estimated, :func:`mftrnn.diagnose` convention), ``"chi"``,
    ``"ks"`` (per sequence), ``"ks_mean"``, ``"log_mean"`` (measured :math:`\ln\frac1N\operatorname{tr}JJ^\top`,
    mean over sequences), ``"log_mean_theory"`` (:math:`T\ln\chi`), ``"spread_w"``
    (:math:`\operatorname{std}(s^2)/\overline{s^2}` of the pruned :math:`W`: 1 for an i.i.d. matrix)``}``.
    """
    from ..theory.fixed_point import fixed_point

    if not isinstance(rnn, torch.nn.RNN) or rnn.num_layers != 1 or rnn.bidirectional or rnn.nonlinearity != "tanh":
        raise DomainError("pruned_spectrum_check needs a one-layer, one-direction tanh torch.nn.RNN")
    W0 = rnn.weight_hh_l0.detach().to(torch.float64)
    V = rnn.weight_ih_l0.detach().to(torch.float64)
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().to(torch.float64) if rnn.bias else torch.zeros(W0.shape[0],
                                                                                                  dtype=torch.float64)
    Ts = sorted({int(t) for t in np.atleast_1d(T)})
    out = []
    for p in ps:
        W = W0 if p == 1.0 else magnitude_prune(W0, p, rescale=rescale)
        hp = _estimated(W, V, b, R)
        chi = float(fixed_point("vanilla", **hp).chi)
        s2 = torch.linalg.svdvals(W) ** 2
        gen = torch.Generator().manual_seed(int(seed))
        B = int(n_sequences)
        sq, _ = tied_vanilla_jacobian(W.expand(B, -1, -1), V.expand(B, -1, -1), b.expand(B, -1), Ts, R=R,
                                      burn_in=burn_in, generator=gen)
        for t in Ts:
            d = network_ks(spectral_law("vanilla", t, orthogonal=False, **hp), sq[t])
            out.append({"p": float(p), "T": t, "hp": hp, "chi": chi, "ks": d, "ks_mean": float(d.mean()),
                        "log_mean": float(np.log(sq[t].mean(1)).mean()), "log_mean_theory": t * math.log(chi),
                        "spread_w": float(s2.std() / s2.mean())})
    return out

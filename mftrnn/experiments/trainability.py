r"""Trainability phase diagrams: test accuracy over (hyperparameter, :math:`T`), with the mean-field timescale on top.

The claim (Chen, Pennington & Schoenholz 2018): a network trains on a task of memory length :math:`T` only where
:math:`T` is within a few timescales :math:`\xi`; the vanilla RNN's trainable region is a narrow band around the
critical line, the minimalRNN's gate widens it.  The experiment measures it on the sequential-digits task of
:mod:`mftrnn.experiments.seqdigits` (an image read row by row, then :math:`T_{pad}` steps of zero input, the class
read from the last state; :math:`T` = image rows + :math:`T_{pad}`), one training run per grid point and seed, each
with explicit hyperparameters (``init="off-critical"``):

====================  ===========  =============  ==============================================================
diagram               cell         axis           fixed
====================  ===========  =============  ==============================================================
``vanilla-orthogonal``  vanilla    ``sigma_w``    ``sigma_v = 1, sigma_b = mu_b = 0``, :math:`W = \sigma_w O`
``vanilla-gaussian``    vanilla    ``sigma_w``    the same, :math:`W_{ij}\sim\mathcal N(0,\sigma_w^2/N)`
``minimal-mu_b``        minimal    ``mu_b``       ``sigma_w = sigma_v = 1, sigma_b = 0``, orthogonal
``minimal-sigma_w``     minimal    ``sigma_w``    ``mu_b = 4, sigma_v = 1, sigma_b = 0``, orthogonal
====================  ===========  =============  ==============================================================

**The theory's line.** The padding steps (zero input, :math:`R = 0`) dominate a long sequence, so the timescale
drawn is that of the blank phase, :math:`\xi = 1/|\ln\chi|` with :math:`\chi` of the mean-field fixed point at
:math:`R = 0` (:func:`mftrnn.fixed_point`): the number of steps over which gradients shrink (:math:`\chi < 1`) or
grow (:math:`\chi > 1`, the vanilla RNN's chaotic side, where the library's ``xi`` is undefined) by a factor
:math:`e`.  A point is *trained* when its best test accuracy reaches :data:`TRAINED_ACCURACY`; the line
:math:`T = k\xi` predicts trained below it; :func:`separation` finds the :math:`k` that classifies the most runs
correctly and reports that fraction (and the fraction at :math:`k = 1`).

Presets (:data:`PRESETS`): ``tiny`` (tests, seconds), ``cpu`` (the committed grids: scikit-learn's 8x8 digits,
width 32, 500 Adam steps; 4 diagrams x 8 values x 10 lengths from 10 to 500 x 2 seeds = 640 runs, about an hour
on two cores with one thread per worker) and ``gpu`` (MNIST, width 256, 5000 steps, 16 x 12 points, 3 seeds,
``device="cuda"``; for a cluster or GPU).  Runs go through :func:`mftrnn.experiments.sweep.run_sweep` (Dask).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ConvergenceError, DomainError, MftrnnError
from .sweep import Run

__all__ = ["Diagram", "DIAGRAMS", "PRESETS", "TRAINED_ACCURACY", "grid_runs", "train_point", "theory_xi",
           "separation", "diagram_grid", "plot_diagrams", "runs_folder"]

TRAINED_ACCURACY = 0.5
"""Best test accuracy at which a run counts as trained (chance is 0.1)."""


@dataclass(frozen=True)
class Diagram:
    """A trainability diagram: ``cell``, recurrent ``weights`` (orthogonal or gaussian), the swept hyperparameter
    ``axis`` and the ``fixed`` others."""

    name: str
    cell: str
    weights: str
    axis: str
    fixed: dict

    def hyperparameters(self, value: float) -> dict:
        hp = dict(sigma_w=1.0, sigma_v=1.0, sigma_b=0.0, mu_b=0.0)
        hp.update(self.fixed)
        hp[self.axis] = float(value)
        return hp


DIAGRAMS: dict[str, Diagram] = {d.name: d for d in (
    Diagram("vanilla-orthogonal", "vanilla", "orthogonal", "sigma_w", dict(sigma_v=1.0, sigma_b=0.0, mu_b=0.0)),
    Diagram("vanilla-gaussian", "vanilla", "gaussian", "sigma_w", dict(sigma_v=1.0, sigma_b=0.0, mu_b=0.0)),
    Diagram("minimal-mu_b", "minimal", "orthogonal", "mu_b", dict(sigma_w=1.0, sigma_v=1.0, sigma_b=0.0)),
    Diagram("minimal-sigma_w", "minimal", "orthogonal", "sigma_w", dict(mu_b=4.0, sigma_v=1.0, sigma_b=0.0)),
)}


def _log_lengths(lo: int, hi: int, n: int) -> tuple[int, ...]:
    return tuple(int(round(t)) for t in np.geomspace(lo, hi, n))


PRESETS: dict[str, dict] = {
    "tiny": dict(train=dict(dataset="sklearn", hidden=16, steps=40, batch_size=16, lr=3e-3, eval_every=20,
                            n_test=100),
                 T=(10, 16), seeds=(0,),
                 values={"vanilla-orthogonal": (0.8, 1.6), "vanilla-gaussian": (0.8, 1.6),
                         "minimal-mu_b": (0.0, 4.0), "minimal-sigma_w": (0.5, 2.0)}),
    "cpu": dict(train=dict(dataset="sklearn", hidden=32, steps=500, batch_size=32, lr=3e-3, clip=1.0,
                           eval_every=50, n_test=449),
                T=_log_lengths(10, 500, 10), seeds=(0, 1),
                values={"vanilla-orthogonal": (0.4, 0.7, 0.9, 1.0, 1.1, 1.3, 1.7, 2.5),
                        "vanilla-gaussian": (0.4, 0.7, 0.9, 1.0, 1.1, 1.3, 1.7, 2.5),
                        "minimal-mu_b": (-2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
                        "minimal-sigma_w": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)}),
    "gpu": dict(train=dict(dataset="mnist", hidden=256, steps=5000, batch_size=128, lr=1e-3, clip=1.0,
                           eval_every=250, n_test=10000, device="cuda"),
                T=_log_lengths(30, 1000, 12), seeds=(0, 1, 2),
                values={"vanilla-orthogonal": tuple(np.round(np.geomspace(0.3, 3.0, 16), 4)),
                        "vanilla-gaussian": tuple(np.round(np.geomspace(0.3, 3.0, 16), 4)),
                        "minimal-mu_b": tuple(np.round(np.linspace(-2.0, 8.0, 16), 4)),
                        "minimal-sigma_w": tuple(np.round(np.geomspace(0.2, 5.0, 16), 4))}),
}
"""Preset -> training fields (:class:`mftrnn.experiments.seqdigits.DigitsConfig`), lengths ``T``, seeds and the
swept values of each diagram."""

_ROWS = {"sklearn": 8, "mnist": 28}


def runs_folder(table) -> Path:
    """The folder of a table's per-run files (results and checkpoints): ``NAME.runs`` beside ``NAME.sqlite``."""
    table = Path(table)
    return table.with_name(table.stem + ".runs")


def _key(diagram: Diagram, value: float, T: int, seed: int) -> str:
    return f"{diagram.name}-{diagram.axis}={value:g}-T{T}-s{seed}"


def grid_runs(preset: str, table, *, diagrams: Iterable[str] | None = None, seeds: Iterable[int] | None = None,
              data_dir: str | None = None, checkpoint_every: str = "100steps", **overrides) -> list[Run]:
    """The :class:`~mftrnn.experiments.sweep.Run` list of a preset (each diagram x value x T x seed), writing
    per-run files into :func:`runs_folder` of ``table``; ``overrides`` replace training fields (e.g. ``steps``,
    ``device``)."""
    from .seqdigits import DigitsConfig
    if preset not in PRESETS:
        raise DomainError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    names = tuple(p["values"]) if diagrams is None else tuple(diagrams)
    for n in names:
        if n not in DIAGRAMS:
            raise DomainError(f"unknown diagram {n!r}; choose from {', '.join(DIAGRAMS)}")
    seeds = tuple(p["seeds"] if seeds is None else seeds)
    train = dict(p["train"], **overrides)
    rows = _ROWS[train.get("dataset", "mnist")]
    folder = runs_folder(table)
    runs = []
    for name in names:
        d = DIAGRAMS[name]
        for value in p["values"][name]:
            hp = d.hyperparameters(value)
            for T in p["T"]:
                if T <= rows:
                    raise DomainError(f"T = {T} must exceed the {rows} image rows")
                for seed in seeds:
                    cfg = DigitsConfig(**train, cell=d.cell, init="off-critical", weights=d.weights,
                                       T_pad=int(T) - rows, seed=int(seed), **hp).validated()
                    key = _key(d, value, T, seed)
                    runs.append(Run(key, train_point,
                                    dict(config=cfg.to_dict(), out=str(folder / f"{key}.json"), data_dir=data_dir,
                                         checkpoint_every=checkpoint_every),
                                    dict(diagram=name, cell=d.cell, weights=d.weights, axis=d.axis,
                                         value=float(value), T=int(T), seed=int(seed), **hp)))
    return runs


@functools.lru_cache(maxsize=4)
def _data(dataset: str, data_dir: str | None):
    from .seqdigits import load_dataset
    return load_dataset(dataset, data_dir=data_dir)


def _xi(chi) -> float | None:
    """:math:`1/|\\ln\\chi|` (``inf`` at :math:`\\chi = 1`, ``None`` without a :math:`\\chi`)."""
    if chi is None or not chi > 0:
        return None
    return math.inf if chi == 1 else 1.0 / abs(math.log(chi))


def train_point(config: dict, out: str, data_dir: str | None = None, checkpoint_every: str = "100steps") -> dict:
    """Train one grid point (:func:`mftrnn.experiments.seqdigits.train`, resuming its checkpoint) and return the
    table's measurements: ``run_status`` (finished or diverged), final and best test accuracy, the first evaluated step
    reaching :data:`TRAINED_ACCURACY`, :math:`\\chi` of the input and blank phases, ``xi`` (blank, :math:`1/|\\ln
    \\chi|`), wall time and provenance (commit, dirty flag, device, date)."""
    from .seqdigits import DigitsConfig, load_results, steps_to_accuracy, train
    cfg = DigitsConfig.from_dict(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        r = train(cfg, out, data=_data(cfg.dataset, data_dir), checkpoint_every=checkpoint_every, log=None,
                  command=f"mftrnn sweep ({out.name})")
    except ConvergenceError:
        r = load_results([out])[0]
    curve = r["curve"]
    blank, inp = r["theory"]["blank"], r["theory"]["input"]
    prov = r["provenance"]
    return dict(run_status=r["status"], final_accuracy=float(curve[-1]["test_accuracy"]),
                best_accuracy=float(max(p["test_accuracy"] for p in curve)),
                steps_to_trained=steps_to_accuracy(r, TRAINED_ACCURACY),
                chi_input=inp.get("chi"), chi_blank=blank.get("chi"), xi=_xi(blank.get("chi")),
                q_star_blank=blank.get("q_star"), wall_time_s=prov.get("wall_time_s"),
                commit=prov.get("commit"), dirty=prov.get("dirty"), device=prov.get("device"),
                threads=prov.get("threads"), finished_utc=prov.get("finished"), result_file=out.name)


def theory_xi(diagram: str, values) -> np.ndarray:
    """:math:`\\xi = 1/|\\ln\\chi|` of the blank phase (:math:`R = 0`) along a diagram's axis (``inf`` at
    :math:`\\chi = 1`, NaN where the fixed point fails)."""
    from ..theory.fixed_point import fixed_point
    d = DIAGRAMS[diagram]
    out = []
    for v in np.atleast_1d(np.asarray(values, float)):
        try:
            fp = fixed_point(d.cell, **d.hyperparameters(v), R=0.0)
            out.append(_xi(float(fp.chi)))
        except MftrnnError:
            out.append(math.nan)
    return np.array([math.nan if x is None else x for x in out], float)


def _finished(rows, diagram: str) -> list[dict]:
    return [r for r in rows if r.get("diagram") == diagram and r.get("status") == "finished"
            and r.get("best_accuracy") is not None]  # a diverged training run is a finished point (untrainable)


def separation(rows, diagram: str, ks=None) -> dict:
    """How well :math:`T = k\\xi` separates trained from untrained runs of ``diagram`` (``rows``: the table's rows).

    Returns ``k`` (the best factor on a log grid from 0.1 to 1000, the smallest on ties), ``fraction`` (runs
    classified correctly at that ``k``), ``fraction_k1`` (at :math:`k = 1`), ``n`` runs and ``n_trained``; runs
    without a blank-phase :math:`\\chi` (a failed fixed point) are left out."""
    rs = [r for r in _finished(rows, diagram) if r.get("chi_blank") is not None]  # no chi: no prediction
    if not rs:
        raise DomainError(f"no finished runs of diagram {diagram!r} in the table")
    ks = np.geomspace(0.1, 1000.0, 401) if ks is None else np.asarray(ks, float)
    T = np.array([r["T"] for r in rs], float)
    xi = np.array([_xi(r["chi_blank"]) for r in rs], float)  # from chi: the table stores xi = inf as null
    trained = np.array([r["best_accuracy"] >= TRAINED_ACCURACY for r in rs])
    frac = np.array([np.mean((T <= k * xi) == trained) for k in ks])
    i = int(np.argmax(frac))
    at1 = float(np.mean((T <= xi) == trained))
    return dict(diagram=diagram, k=float(ks[i]), fraction=float(frac[i]), fraction_k1=at1, n=len(rs),
                n_trained=int(trained.sum()))


def diagram_grid(rows, diagram: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, lengths, accuracy)``: the axis values, the lengths and the mean over seeds of the best test
    accuracy (NaN where no run finished), shape ``(len(lengths), len(values))``."""
    rs = _finished(rows, diagram)
    values = np.array(sorted({r["value"] for r in rs}))
    lengths = np.array(sorted({r["T"] for r in rs}))
    acc = np.full((lengths.size, values.size), np.nan)
    for i, T in enumerate(lengths):
        for j, v in enumerate(values):
            a = [r["best_accuracy"] for r in rs if r["T"] == T and r["value"] == v]
            if a:
                acc[i, j] = float(np.mean(a))
    return values, lengths, acc


_TITLES = {"vanilla-orthogonal": "vanilla RNN, orthogonal W", "vanilla-gaussian": "vanilla RNN, Gaussian W",
           "minimal-mu_b": "minimalRNN, gate bias", "minimal-sigma_w": "minimalRNN, recurrent scale"}
_LABELS = {"sigma_w": r"$\sigma_w$", "mu_b": r"$\mu_b$"}


def plot_diagrams(rows, diagrams: Iterable[str] | None = None, axes=None):
    """Heat maps of the mean best test accuracy over (axis value, :math:`T`) with the lines :math:`T = \\xi` (dashed)
    and :math:`T = k\\xi` (solid, the :func:`separation` factor), two panels per row; returns the figure."""
    import matplotlib.pyplot as plt
    names = [n for n in (diagrams or DIAGRAMS) if _finished(rows, n)]
    if not names:
        raise DomainError("the table holds no finished runs to plot")
    if axes is None:
        nrow = (len(names) + 1) // 2
        fig, axes = plt.subplots(nrow, 2, figsize=(9.5, 3.8 * nrow), squeeze=False, constrained_layout=True)
        axes = axes.ravel()
        for ax in axes[len(names):]:
            ax.set_visible(False)
    fig = axes[0].figure
    for ax, name in zip(axes, names):
        values, lengths, acc = diagram_grid(rows, name)
        mesh = ax.pcolormesh(_edges(values, log=False), _edges(lengths, log=True), acc, vmin=0.0, vmax=1.0,
                             cmap="viridis", shading="flat")
        ax.set_yscale("log")
        fine = np.linspace(values.min(), values.max(), 300)
        xi = theory_xi(name, fine)
        sep = separation(rows, name)
        ax.plot(fine, xi, "w--", lw=1.3, label=r"$T = \xi$")
        ax.plot(fine, sep["k"] * xi, "r-", lw=1.6, label=rf"$T = {sep['k']:.3g}\,\xi$ ({100 * sep['fraction']:.0f}%)")
        ax.set_ylim(_edges(lengths, log=True)[[0, -1]])
        ax.set_xlabel(_LABELS.get(DIAGRAMS[name].axis, DIAGRAMS[name].axis))
        ax.set_ylabel(r"memory length $T$")
        ax.set_title(_TITLES.get(name, name), fontsize=11)
        ax.legend(loc="upper right", fontsize=9, framealpha=0.85)
    fig.colorbar(mesh, ax=list(axes[:len(names)]), label="best test accuracy (mean over seeds)", shrink=0.8)
    return fig


def _edges(x: np.ndarray, log: bool) -> np.ndarray:
    x = np.asarray(x, float)
    if x.size == 1:
        return np.array([x[0] * 0.9, x[0] * 1.1]) if log else np.array([x[0] - 0.5, x[0] + 0.5])
    y = np.log(x) if log else x
    mid = (y[1:] + y[:-1]) / 2
    e = np.concatenate([[y[0] - (mid[0] - y[0])], mid, [y[-1] + (y[-1] - mid[-1])]])
    return np.exp(e) if log else e

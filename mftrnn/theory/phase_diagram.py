"""Phase diagrams: the fixed point and its slope on a grid of two hyperparameters, and their figure.

Used by ``mftrnn phase-diagram`` and by the book, so that a figure in the book and the file the command line
writes come from the same code.
"""
from __future__ import annotations

import sys

import numpy as np

from ..errors import ConvergenceError, DomainError
from .fixed_point import fixed_point, unbounded

__all__ = ["compute_grid", "plot_phase_diagram", "TEX", "tex", "CHUNK_POINTS", "MAX_GRID_POINTS"]

TEX = {"sigma_w": r"$\sigma_w$", "sigma_v": r"$\sigma_v$", "sigma_b": r"$\sigma_b$",
       "mu_b": r"$\mu_b$", "R": r"$R$"}
CHUNK_POINTS = 8192  # grid points per call of fixed_point (bounded memory, a progress bar that moves)
_KEYS = ("chi", "xi", "Q_star", "q_star", "chi_q")
#: most points of a grid (2**24, about 16.8 million: its five result arrays take 0.7 GB); larger grids are refused
#: before anything is allocated
MAX_GRID_POINTS = 2 ** 24


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items())


def compute_grid(cell: str, x_name: str, x: np.ndarray, y_name: str, y: np.ndarray, fixed: dict,
                 progress: bool = True) -> dict:
    r"""Evaluate :func:`~mftrnn.fixed_point` on the grid (rows: ``y``, columns: ``x``) in row chunks.

    Returns arrays ``chi, xi, Q_star, q_star, chi_q`` of shape ``(len(y), len(x))``; where the variance map has no
    finite fixed point (:func:`~mftrnn.theory.fixed_point.unbounded`: ReLU at :math:`\sigma_w^2\ge2` and
    :math:`\mu_b=0`, linear at :math:`\sigma_w\ge1`) they are NaN and a boolean ``no_fixed_point`` array is added.
    A progress bar (stderr)
    appears when the run takes more than 1.5 s. Raises :class:`~mftrnn.DomainError` for a grid of more than
    :data:`MAX_GRID_POINTS` points (before allocating the results).
    """
    from tqdm import tqdm

    from ..cells.registry import get_cell
    from ..cells.gated import GatedCell
    gated = isinstance(get_cell(cell), GatedCell)
    keys = ("chi", "xi", "Q_star") if gated else _KEYS
    ny, nx = len(y), len(x)
    if ny * nx > MAX_GRID_POINTS:
        raise DomainError(f"grid of {nx} x {ny} points is too large (at most {MAX_GRID_POINTS})")
    out = {k: np.empty((ny, nx)) for k in keys}
    no_fp = np.zeros((ny, nx), bool)
    rows = max(1, CHUNK_POINTS // nx)
    with tqdm(total=ny * nx, unit="pt", unit_scale=True, delay=1.5, file=sys.stderr,
              disable=not progress, desc=f"{cell} {y_name} x {x_name}", leave=False) as bar:
        for r0 in range(0, ny, rows):
            r1 = min(ny, r0 + rows)
            X, Y = np.meshgrid(x, y[r0:r1])
            params = dict(fixed)
            params[x_name] = X
            params[y_name] = Y
            try:
                fp = fixed_point(cell, **params)
                for k in out:
                    out[k][r0:r1] = np.broadcast_to(np.asarray(getattr(fp, k), dtype=float), X.shape)
            except ConvergenceError:
                if gated:
                    raise
                # some points have no finite fixed point (e.g. ReLU at sigma_w^2 >= 2): NaN there, the rest solved
                none = np.broadcast_to(unbounded(cell, **params), X.shape)
                if not none.any():
                    raise
                ok = ~none
                if ok.any():
                    sub = {k: (np.broadcast_to(v, X.shape)[ok] if np.ndim(v) else v) for k, v in params.items()}
                    fp = fixed_point(cell, **sub)
                for k in out:
                    block = np.full(X.shape, np.nan)
                    if ok.any():
                        block[ok] = np.asarray(getattr(fp, k), dtype=float)
                    out[k][r0:r1] = block
                no_fp[r0:r1] = none
            bar.update((r1 - r0) * nx)
    for k in ("chi", "Q_star", "q_star", "chi_q"):
        if k not in out:
            continue
        bad = ~np.isfinite(out[k]) & ~no_fp
        if bad.any():
            i, j = np.argwhere(bad)[0]
            where = dict(fixed, **{x_name: float(x[j]), y_name: float(y[i])})
            raise ConvergenceError(f"{k} is not finite at {int(bad.sum())} grid point(s), e.g. {_describe(where)}")
    if np.isnan(out["xi"][~no_fp]).any():
        raise ConvergenceError("xi is nan at some grid points")
    if no_fp.any():
        out["no_fixed_point"] = no_fp
    return out


def tex(name: str) -> str:
    """LaTeX label of a hyperparameter: ``sigma_w`` -> sigma_w, ``mu_b_f`` -> mu_{b,f}."""
    if name in TEX:
        return TEX[name]
    kind, gate = name.rsplit("_", 1)
    sym, sub = kind.split("_")
    return rf"$\{sym}_{{{sub},{gate}}}$"


def plot_phase_diagram(data: dict, color: str = "xi", ax=None):
    """Heat map of ``xi`` (log scale; grey where chi >= 1) or ``chi`` with the chi = 1 line; returns the axes.

    ``data`` holds ``x, y, x_name, y_name, chi, xi, cell`` and the fixed hyperparameters (as written by
    ``mftrnn phase-diagram``).
    """
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors

    x, y = data["x"], data["y"]
    x_name, y_name = str(data["x_name"]), str(data["y_name"])
    chi = data["chi"]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    fig = ax.figure
    if color == "xi":
        xi = np.ma.masked_where(~np.isfinite(data["xi"]) | (data["xi"] <= 0), data["xi"])
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
        if xi.count() > 0:
            lo, hi = float(xi.min()), float(xi.max())
            norm = mcolors.LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
        else:
            norm = mcolors.LogNorm(vmin=1e-1, vmax=1e1)
        mesh = ax.pcolormesh(x, y, xi, cmap=cmap, norm=norm, shading="auto")
        cbar = fig.colorbar(mesh, ax=ax)
        cbar.set_label(r"timescale $\xi = -1/\ln\chi$ (log scale; grey: $\chi \geq 1$"
                       + (" or no fixed point)" if "no_fixed_point" in data else ")"))
    else:
        mesh = ax.pcolormesh(x, y, chi, cmap="magma", shading="auto")
        cbar = fig.colorbar(mesh, ax=ax)
        cbar.set_label(r"$\chi$ (slope of the covariance map at $C^* = Q^*$)")
    if np.nanmin(chi) < 1.0 < np.nanmax(chi):
        cs = ax.contour(x, y, chi, levels=[1.0], colors="red", linewidths=1.5)
        ax.clabel(cs, fmt={1.0: r"$\chi = 1$"}, inline=True, fontsize=9)
        ax.plot([], [], color="red", linewidth=1.5, label=r"$\chi = 1$ (order/chaos boundary)")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    elif "no_fixed_point" in data and np.any(data["no_fixed_point"]):
        ax.text(0.02, 0.98, "grey: no finite fixed point (the map diverges)",
                transform=ax.transAxes, va="top", ha="left", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
    else:
        where = r"$\chi < 1$" if np.nanmax(chi) < 1.0 else r"$\chi \geq 1$"
        ax.text(0.02, 0.98, f"no $\\chi = 1$ line: {where} on the whole grid",
                transform=ax.transAxes, va="top", ha="left", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
    ax.set_xlabel(f"{tex(x_name)} ({x_name})")
    ax.set_ylabel(f"{tex(y_name)} ({y_name})")
    names = [str(k) for k in data.get("fixed_names", list(TEX))]
    fixed = ", ".join(f"{k}={float(data[k]):g}" for k in names if k not in (x_name, y_name) and k in data)
    ax.set_title(f"{data['cell']} RNN mean field; {fixed}", fontsize=9)
    return ax

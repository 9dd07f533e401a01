"""Command line interface: ``mftrnn fixed-point`` and ``mftrnn phase-diagram``.

Examples::

    mftrnn fixed-point minimal --sigma-w 2 --mu-b 1 --json
    mftrnn phase-diagram minimal --x sigma_w:0.05:3:200 --y mu_b:-4:6:200 --out minimal.png

Every input error (unknown cell, bad hyperparameter, malformed grid, unwritable output,
non-converging fixed point) is reported as one line ``mftrnn: error: ...`` on stderr with a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import Sequence

import numpy as np

from .phase_diagram import compute_grid, plot_phase_diagram

from ._fixed_point import DEFAULTS, NONNEGATIVE  # one source for defaults and domains

PARAMS = tuple(DEFAULTS)
DESCRIPTIONS = {
    "sigma_w": "recurrent weight std (W_ij ~ N(0, sigma_w^2/N))",
    "sigma_v": "input weight std (V_ij ~ N(0, sigma_v^2/N_in))",
    "sigma_b": "bias std",
    "mu_b": "bias mean",
    "R": "input norm |x|^2/N_in",
}
RESULT_DESCRIPTIONS = {
    "q_star": "pre-activation variance q* at the fixed point",
    "Q_star": "hidden-state norm Q* = |h|^2/N",
    "chi": "slope of the covariance map at C* = Q* (identical inputs)",
    "chi_q": "slope of the variance map at Q*",
    "xi": "timescale -1/ln(chi)",
    "xi_q": "timescale -1/ln(chi_q)",
    "C_star": "covariance C* for independent inputs (Sigma = 0)",
    "c_star": "correlation c* = C*/Q*",
    "chi_c": "slope of the covariance map at C*",
    "xi_c": "timescale -1/ln(chi_c)",
    "multistable": "more than one stable Q*? (Q_star is the least, reached from h_0 = 0)",
}
EXTENSIONS = (".npz", ".png")
MAX_GRID_POINTS = 2 ** 24


class CliError(Exception):
    """An input error detected by the command line layer."""


# ---------------------------------------------------------------------------------- parsing

def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _add_hyperparameters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hyperparameters")
    for name in PARAMS:
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=_float, default=None,
                       metavar="X", help=f"{DESCRIPTIONS[name]} (default {DEFAULTS[name]:g})")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mftrnn",
        description="Mean-field theory of recurrent neural networks (vanilla RNN and minimalRNN): "
                    "fixed points, chi, timescales xi and phase diagrams.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    fp = sub.add_parser("fixed-point", help="fixed point, chi and xi at one set of hyperparameters",
                        description="Mean-field fixed point (q*, Q*), the slopes chi, chi_q, chi_c and "
                                    "the timescales xi = -1/ln(chi) at one set of hyperparameters.")
    fp.add_argument("cell", metavar="CELL", help="cell name (vanilla or minimal)")
    _add_hyperparameters(fp)
    fp.add_argument("--json", action="store_true", help="print one JSON object")

    pd = sub.add_parser("phase-diagram", help="chi and xi on a grid of two hyperparameters",
                        description="Evaluate chi, xi, Q* and q* on a grid over two hyperparameters "
                                    "and write a .npz file or a .png heat map (plus its .npz).")
    pd.add_argument("cell", metavar="CELL", help="cell name (vanilla or minimal)")
    pd.add_argument("--x", required=True, metavar="NAME:START:STOP:NUM",
                    help=f"horizontal axis; NAME in {{{', '.join(PARAMS)}}}")
    pd.add_argument("--y", required=True, metavar="NAME:START:STOP:NUM", help="vertical axis")
    _add_hyperparameters(pd)
    pd.add_argument("--out", required=True, metavar="FILE",
                    help="output file: .npz (arrays) or .png (heat map; the .npz is written beside it)")
    pd.add_argument("--color", choices=("xi", "chi"), default="xi",
                    help="quantity shown as colour in the .png (default xi, log scale)")
    pd.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    return parser


def _version() -> str:
    try:
        import mftrnn
        v = getattr(mftrnn, "__version__", None)
        if v:
            return str(v)
    except Exception:  # pragma: no cover - version lookup must never fail
        pass
    try:
        from importlib.metadata import version
        return version("mftrnn")
    except Exception:
        return "unknown"


def _check_cell(name: str):
    import mftrnn
    try:
        return mftrnn.get_cell(name).name  # the registry knows cells added with register_cell too
    except mftrnn.UnknownCellError as exc:
        raise CliError(_one_line(exc)) from None


def _check_value(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise CliError(f"{name} must be finite, got {value!r}")
    if name in NONNEGATIVE and value < 0:
        raise CliError(f"{name} must be >= 0, got {value:g}")


def _fixed_params(args: argparse.Namespace, exclude: Sequence[str] = ()) -> dict:
    params = {}
    for name in PARAMS:
        if name in exclude:
            continue
        value = getattr(args, name)
        value = DEFAULTS[name] if value is None else value
        _check_value(name, value)
        params[name] = float(value)
    return params


def parse_axis(spec: str, option: str) -> tuple[str, np.ndarray]:
    """Parse ``NAME:START:STOP:NUM`` into ``(NAME, linspace(START, STOP, NUM))``."""
    parts = spec.split(":")
    if len(parts) != 4:
        raise CliError(f"{option} {spec!r}: expected NAME:START:STOP:NUM")
    name, start_s, stop_s, num_s = (p.strip() for p in parts)
    if name not in PARAMS:
        raise CliError(f"{option} {spec!r}: unknown hyperparameter {name!r}; "
                       f"choose one of {', '.join(PARAMS)}")
    try:
        start, stop = float(start_s), float(stop_s)
    except ValueError:
        raise CliError(f"{option} {spec!r}: START and STOP must be numbers") from None
    try:
        num = int(num_s)
    except ValueError:
        raise CliError(f"{option} {spec!r}: NUM must be an integer") from None
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise CliError(f"{option} {spec!r}: START and STOP must be finite")
    if num < 2:
        raise CliError(f"{option} {spec!r}: NUM must be >= 2")
    if not start < stop:
        raise CliError(f"{option} {spec!r}: START must be < STOP")
    if name in NONNEGATIVE and start < 0:
        raise CliError(f"{option} {spec!r}: {name} must be >= 0")
    return name, np.linspace(start, stop, num)


# ------------------------------------------------------------------------------ atomic writes

def _check_output(path: str) -> tuple[str, str]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise CliError(f"--out {path!r}: unknown extension {ext or '(none)'!r}; use .npz or .png")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"--out {path!r} is a directory")
    if not os.path.isdir(directory):
        raise CliError(f"--out {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CliError(f"--out {path!r}: directory {directory!r} is not writable")
    return ext, directory


def _atomic_write(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ------------------------------------------------------------------------------ fixed-point

def _fmt(v) -> str:
    if v is None:
        return "inf"
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


def cmd_fixed_point(args: argparse.Namespace) -> int:
    import mftrnn
    cell = _check_cell(args.cell)
    params = _fixed_params(args)
    fp = mftrnn.fixed_point(cell, correlations=True, **params)
    result = fp.to_dict()
    for key, value in result.items():
        if isinstance(value, float) and math.isnan(value):
            raise CliError(f"fixed point gave {key} = nan for {_describe(params)}")
    out = {"cell": cell, **params}
    out.update(result)
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0
    print(f"{cell} RNN, mean-field fixed point (mftrnn {_version()})")
    width = max(len(k) for k in list(params) + list(result))
    for name in PARAMS:
        print(f"  {name:<{width}}  {_fmt(params[name]):>16}  {DESCRIPTIONS[name]}")
    print()
    for key, value in result.items():
        if key in params or key == "cell":
            continue
        note = RESULT_DESCRIPTIONS.get(key, "")
        if value is None and key.startswith("xi"):
            note += " (chi >= 1: no decay)" if key == "xi" else " (slope >= 1)"
        print(f"  {key:<{width}}  {_fmt(value):>16}  {note}")
    return 0


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items())


# ----------------------------------------------------------------------------- phase-diagram

def _save_npz(path: str, data: dict) -> None:
    _atomic_write(path, lambda fh: np.savez(fh, **data))


def _save_png(path: str, data: dict, color: str) -> None:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ax = plot_phase_diagram(data, color)
    fig = ax.figure
    try:
        fig.tight_layout()
        _atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)


def cmd_phase_diagram(args: argparse.Namespace) -> int:
    cell = _check_cell(args.cell)
    x_name, x = parse_axis(args.x, "--x")
    y_name, y = parse_axis(args.y, "--y")
    if x_name == y_name:
        raise CliError(f"--x and --y use the same hyperparameter {x_name!r}")
    for name in (x_name, y_name):
        if getattr(args, name) is not None:
            raise CliError(f"{name} is a grid axis; do not also give --{name.replace('_', '-')}")
    if len(x) * len(y) > MAX_GRID_POINTS:
        raise CliError(f"grid of {len(x)} x {len(y)} points is too large (at most {MAX_GRID_POINTS})")
    fixed = _fixed_params(args, exclude=(x_name, y_name))
    ext, _ = _check_output(args.out)
    npz_path = args.out if ext == ".npz" else os.path.splitext(args.out)[0] + ".npz"

    grid = compute_grid(cell, x_name, x, y_name, y, fixed, progress=not args.no_progress)
    data = dict(grid)
    data.update({
        "x": x, "y": y, "x_name": np.array(x_name), "y_name": np.array(y_name),
        "cell": np.array(cell), "mftrnn_version": np.array(_version()),
        "fixed_names": np.array(sorted(fixed)),
    })
    for name, value in fixed.items():
        data[name] = np.array(value)
    _save_npz(npz_path, data)
    if ext == ".png":
        _save_png(args.out, data, args.color)
    written = [npz_path] if ext == ".npz" else [args.out, npz_path]
    chi = grid["chi"]
    print(f"wrote {' and '.join(written)} ({len(y)} x {len(x)} grid, "
          f"chi in [{chi.min():.4g}, {chi.max():.4g}])")
    return 0


# -------------------------------------------------------------------------------------- main

def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mftrnn`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        import mftrnn
        errors: tuple = (CliError, OSError, mftrnn.MftrnnError)
    except ImportError:  # pragma: no cover
        errors = (CliError, OSError)
    try:
        if args.command == "fixed-point":
            return cmd_fixed_point(args)
        return cmd_phase_diagram(args)
    except errors as exc:
        print(f"mftrnn: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mftrnn: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MFTRNN_DEBUG"):
            raise
        print(f"mftrnn: error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
              "set MFTRNN_DEBUG=1 for a traceback", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command line interface: ``mftrnn fixed-point``, ``mftrnn phase-diagram``, ``mftrnn digits`` and ``mftrnn critical``.

Examples::

    mftrnn fixed-point minimal --sigma-w 2 --mu-b 1 --json
    mftrnn phase-diagram minimal --x sigma_w:0.05:3:200 --y mu_b:-4:6:200 --out minimal.png
    mftrnn spectrum minimal --sigma-w 2 --mu-b 4 --T 10 --json   # T-step Jacobian spectrum (mftrnn.theory.jacobian)

Every input error (unknown cell, bad hyperparameter, malformed grid, unwritable output,
non-converging fixed point) is reported as one line ``mftrnn: error: ...`` on stderr with a
non-zero exit status.

Exit status: 0 success; 1 an input error (``mftrnn: error: ...``, one line); 2 a usage error found by argparse
(unknown option, missing argument: its usage block, then ``mftrnn ...: error: ...``); 3 an internal error (a bug:
one line, ``MFTRNN_DEBUG=1`` for the traceback); 130 interrupted. Sizes are checked before anything is allocated
(phase-diagram grids of at most ``MAX_GRID_POINTS`` points, ``spectrum --T`` up to 2^53 at a cost independent of
T, the mu_b scans of ``critical minimal``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Sequence

import numpy as np

from .._io import atomic_write
from .._validate import float_argument
from ..theory.phase_diagram import MAX_GRID_POINTS as _MAX_GRID_POINTS
from ..theory.phase_diagram import compute_grid, plot_phase_diagram

from ..theory.fixed_point import DEFAULTS, NONNEGATIVE  # one source for defaults and domains
from ..cells.gated import GatedCell, hyperparameter_names

PARAMS = tuple(DEFAULTS)
KINDS = ("sigma_w", "sigma_v", "sigma_b", "mu_b")
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
    "Qc_star": "cell-state norm Qc* = |c|^2/N",
    "Cc_star": "cell-state covariance Cc* between the copies (independent inputs)",
    "M_star": "mean of the carried state",
}
EXTENSIONS = (".npz", ".png")
MAX_GRID_POINTS = _MAX_GRID_POINTS  # a phase diagram has at most this many points (checked before allocating)


class CliError(Exception):
    """An input error detected by the command line layer."""


# ---------------------------------------------------------------------------------- parsing

_float = float_argument  # the one argparse type of floating-point options (shared with mftrnn lm)


def _gate_letters() -> str:
    """Gate letters of the registered gated cells (for the per-gate options)."""
    from ..cells.registry import _REGISTRY
    letters = ""
    for cell in _REGISTRY.values():
        if isinstance(cell, GatedCell):
            letters += "".join(g for g in cell.gates if g not in letters)
    return letters


def _add_hyperparameters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hyperparameters (for a gated cell the first four set every gate)")
    for name in PARAMS:
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=_float, default=None,
                       metavar="X", help=f"{DESCRIPTIONS[name]} (default {DEFAULTS[name]:g})")
    gg = p.add_argument_group("per-gate hyperparameters of gated cells (lstm: i f g o; gru: r z n); "
                              "override the shorthand for gate K")
    for letter in _gate_letters():
        for kind in KINDS:
            name = f"{kind}_{letter}"
            gg.add_argument("--" + name.replace("_", "-"), dest=name, type=_float, default=None, metavar="X",
                            help=argparse.SUPPRESS if letter != "f" or kind != "mu_b" else
                            "e.g. --mu-b-f 3: forget-gate bias mean (all --{sigma-w,sigma-v,sigma-b,mu-b}-K)")


#: what argparse should read as a (negative) number, not as an option: -1, -.5, -1e3, -1E-3, -inf, -nan
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)$", re.IGNORECASE)


def _accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let ``--mu-b -1e3`` and ``--mu-b -inf`` reach the value checks: argparse's own pattern for negative numbers
    (``-1``, ``-1.5``) misses exponents and inf/nan, and takes such a value for an unknown option ("expected one
    argument"). Applied to the parser and every subparser (none of their options looks like a number)."""
    parsers = [parser]
    while parsers:
        p = parsers.pop()
        if hasattr(p, "_negative_number_matcher"):
            p._negative_number_matcher = _NEGATIVE_NUMBER
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())


def _build_parser(full_lm: bool = False) -> argparse.ArgumentParser:
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
    fp.add_argument("--correlations", action="store_true",
                    help="gated cells: also C*, c*, chi_c, xi_c for independent inputs (vanilla/minimal: always)")
    fp.add_argument("--gaussian-closure", action="store_true",
                    help="with --correlations, for nn.LSTM: the labelled Gaussian closure of the pair of cell states "
                         "(the exact joint law is not computed)")

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
    _add_digits_parser(sub)
    _add_critical_parser(sub)
    _add_spectrum_parser(sub)
    from .diagnose import add_parser as _add_diagnose_parser
    _add_diagnose_parser(sub)
    _add_lm_parser(sub, full_lm)
    from .longseq import add_parser as _add_longseq_parser
    _add_longseq_parser(sub)
    from .sweep import add_parser as _add_sweep_parser
    _add_sweep_parser(sub)
    _add_seizure_parser(sub)
    _accept_negative_numbers(parser)
    return parser


def _add_seizure_parser(sub) -> None:
    """``mftrnn seizure``: listed here for ``mftrnn --help``; its options are those of
    :func:`mftrnn.experiments.seizure.add_arguments`, parsed there (``main`` forwards the command line, so that torch
    loads only when the command runs)."""
    sub.add_parser("seizure", add_help=False,
                   help="ConvGRU/ConvLSTM on a generated seizure-like detection task: default vs critical init "
                        "(mftrnn seizure --help)")


def comma_list(text: str | None, option: str, cast=str) -> tuple | None:
    """The distinct comma-separated values of an option (``None`` if not given), cast by ``cast``; a
    :class:`CliError` naming ``option`` otherwise."""
    if text is None:
        return None
    try:
        items = tuple(cast(s.strip()) for s in text.split(","))
    except ValueError:
        raise CliError(f"{option} {text!r}: expected comma-separated {'integers' if cast is int else 'names'}") \
            from None
    if not items or any(s == "" for s in items) or len(set(items)) != len(items):
        raise CliError(f"{option} {text!r}: expected distinct comma-separated values")
    return items


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


def _is_gated(name: str) -> bool:
    import mftrnn
    return isinstance(mftrnn.get_cell(name), GatedCell)


def _gate_params(args: argparse.Namespace, cell: str, exclude: Sequence[str] = ()) -> dict:
    """The hyperparameters given on the command line for a gated cell (shorthand, per gate, R); others default.

    A per-gate option of another cell's gate is refused by :func:`mftrnn.cells.gated.gate_hyperparameters`.
    """
    import mftrnn
    names = list(PARAMS) + [f"{k}_{g}" for g in _gate_letters() for k in KINDS]
    given = {n: float(getattr(args, n)) for n in names if getattr(args, n, None) is not None and n not in exclude}
    for name, value in given.items():
        _check_value(name, value)
    from ..cells.gated import gate_hyperparameters
    gate_hyperparameters(mftrnn.get_cell(cell), given)  # one-line DomainError for another cell's gate letter
    return given


def _refuse_gate_options(args: argparse.Namespace, cell: str) -> None:
    given = [f"--{k}-{g}".replace("_", "-") for g in _gate_letters() for k in KINDS
             if getattr(args, f"{k}_{g}", None) is not None]
    if given:
        raise CliError(f"{', '.join(given)}: per-gate options are for gated cells; {cell!r} takes "
                       f"{', '.join('--' + p.replace('_', '-') for p in PARAMS)}")


def _check_value(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise CliError(f"{name} must be finite, got {value!r}")
    if (name in NONNEGATIVE or name.startswith("sigma_")) and value < 0:
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


def _axis_spec(spec: str, option: str, allowed: Sequence[str] = PARAMS) -> tuple[str, float, float, int]:
    """Check ``NAME:START:STOP:NUM`` and return ``(NAME, START, STOP, NUM)``; allocates nothing."""
    parts = spec.split(":")
    if len(parts) != 4:
        raise CliError(f"{option} {spec!r}: expected NAME:START:STOP:NUM")
    name, start_s, stop_s, num_s = (p.strip() for p in parts)
    if name not in allowed:
        raise CliError(f"{option} {spec!r}: unknown hyperparameter {name!r}; "
                       f"choose one of {', '.join(allowed)}")
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
    if num > MAX_GRID_POINTS // 2:
        raise CliError(f"{option} {spec!r}: NUM must be <= {MAX_GRID_POINTS // 2} (the grid holds at most "
                       f"{MAX_GRID_POINTS} points)")
    if not start < stop:
        raise CliError(f"{option} {spec!r}: START must be < STOP")
    if (name in NONNEGATIVE or name.startswith("sigma_")) and start < 0:
        raise CliError(f"{option} {spec!r}: {name} must be >= 0")
    return name, start, stop, num


def parse_axis(spec: str, option: str, allowed: Sequence[str] = PARAMS) -> tuple[str, np.ndarray]:
    """Parse ``NAME:START:STOP:NUM`` into ``(NAME, linspace(START, STOP, NUM))``; NAME one of ``allowed``.

    NUM is checked (at most ``MAX_GRID_POINTS // 2``) before the axis is built."""
    name, start, stop, num = _axis_spec(spec, option, allowed)
    return name, np.linspace(start, stop, num)


# ------------------------------------------------------------------------------ atomic writes

def _check_output(path: str) -> tuple[str, str]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise CliError(f"--out {path!r}: unknown extension {ext or '(none)'!r}; use .npz or .png")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"--out {path!r} is a directory")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CliError(f"--out {path!r}: {directory!r} is not a directory")
    if not os.path.isdir(directory):
        raise CliError(f"--out {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CliError(f"--out {path!r}: directory {directory!r} is not writable")
    return ext, directory


def _atomic_write(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it onto ``path``."""
    atomic_write(path, write)


# ------------------------------------------------------------------------------ fixed-point

def _fmt(v) -> str:
    if v is None:
        return "inf"
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


def _print_q_stars(q_stars: dict, width: int) -> None:
    for name, q in q_stars.items():
        print(f"  {'q[' + name + ']':<{width}}  {_fmt(q):>16}  variance of the pre-activation {name}")


def cmd_fixed_point_gated(args: argparse.Namespace, cell: str) -> int:
    import mftrnn
    params = _gate_params(args, cell)
    if args.gaussian_closure and not args.correlations:
        raise CliError("--gaussian-closure is an option of --correlations")
    extra = {"correlation_closure": "gaussian"} if args.gaussian_closure else {}
    try:
        result = mftrnn.fixed_point(cell, correlations=args.correlations, **extra, **params).to_dict()
    except mftrnn.MftrnnError as exc:
        if "correlation_closure" in str(exc):
            raise CliError(f"{cell}: C* needs the joint law of the two copies' cell states, which is not computed; "
                           "add --gaussian-closure for a labelled approximation") from None
        raise
    for key, value in result.items():
        if isinstance(value, float) and math.isnan(value):
            raise CliError(f"fixed point gave {key} = nan")
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    print(f"{cell}: untied mean-field fixed point (mftrnn {_version()}); {result['approximation']}")
    hp = [k for k in result if k[:5] in ("sigma", "mu_b_") or k == "R"]
    width = max(len(k) for k in result)
    for name in hp:
        print(f"  {name:<{width}}  {_fmt(result[name]):>16}")
    print()
    for key, value in result.items():
        if key in hp or key in ("cell", "approximation", "q_star"):  # q_star: the first of the q[...] lines
            continue
        if key == "q_stars":
            _print_q_stars(value, width)
            continue
        note = RESULT_DESCRIPTIONS.get(key, "")
        if key == "chi":
            note = "growth per step of a state perturbation's second moment (identical inputs)"
        if value is None and key.startswith("xi"):
            note += " (chi >= 1: no decay)"
        print(f"  {key:<{width}}  {_fmt(value):>16}  {note}")
    return 0


def cmd_fixed_point(args: argparse.Namespace) -> int:
    import mftrnn
    cell = _check_cell(args.cell)
    if _is_gated(cell):
        return cmd_fixed_point_gated(args, cell)
    _refuse_gate_options(args, cell)
    if args.gaussian_closure:
        raise CliError(f"--gaussian-closure is for the LSTM's correlations; {cell!r} has exact ones")
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
        if key in params or key in ("cell", "approximation"):
            continue
        if key == "q_stars":
            _print_q_stars(value, width)
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
    import mftrnn
    cell = _check_cell(args.cell)
    gated = _is_gated(cell)
    allowed = PARAMS + (hyperparameter_names(mftrnn.get_cell(cell)) if gated else ())
    x_name, x0, x1, nx = _axis_spec(args.x, "--x", allowed)
    y_name, y0, y1, ny = _axis_spec(args.y, "--y", allowed)
    if x_name == y_name:
        raise CliError(f"--x and --y use the same hyperparameter {x_name!r}")
    for name in (x_name, y_name):
        if getattr(args, name, None) is not None:
            raise CliError(f"{name} is a grid axis; do not also give --{name.replace('_', '-')}")
    if nx * ny > MAX_GRID_POINTS:  # checked before any array is built
        raise CliError(f"grid of {nx} x {ny} points is too large (at most {MAX_GRID_POINTS})")
    x, y = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    if gated:
        fixed = _gate_params(args, cell, exclude=(x_name, y_name))
    else:
        _refuse_gate_options(args, cell)
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
    none = int(np.sum(grid.get("no_fixed_point", False)))
    span = f"chi in [{np.nanmin(chi):.4g}, {np.nanmax(chi):.4g}]" if none < chi.size else "no finite fixed point"
    print(f"wrote {' and '.join(written)} ({len(y)} x {len(x)} grid, {span}"
          + (f"; no finite fixed point at {none} points, NaN there)" if 0 < none < chi.size else ")"))
    return 0


# ------------------------------------------------------------------------------------------ digits

def _add_digits_parser(sub) -> None:
    """``mftrnn digits``: train on sequential digits (options override the preset's values)."""
    dg = sub.add_parser(
        "digits", help="train vanilla/minimal RNNs on sequential digits (critical vs standard initialisation)",
        description="Sequential digits: an image fed row by row, then T_pad blank steps; the class is read "
                    "from the last state. Trains one configuration (--out NAME.json) or a preset's whole sweep "
                    "(--sweep PRESET --out-dir DIR). Reruns resume from checkpoints; finished runs are skipped.")
    g = dg.add_argument_group("run")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="base values: tiny (sklearn digits), cpu (committed runs) or gpu (default cpu)")
    g.add_argument("--sweep", default=None, metavar="PRESET", help="run every configuration of a preset's sweep")
    g.add_argument("--out", default=None, metavar="FILE.json", help="result file of a single run")
    g.add_argument("--out-dir", default=None, metavar="DIR", help="result folder of a sweep")
    g.add_argument("--seeds", default=None, metavar="S1,S2,...", help="seeds of a sweep (default: the preset's)")
    g.add_argument("--force", action="store_true", help="overwrite a result of another configuration")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    g.add_argument("--checkpoint-every", default="60s", metavar="TIME|Nsteps",
                   help="checkpoint every TIME of wall time (60, 60s, 5min, 1h: a bare number is seconds) or every "
                        "N training steps (500steps), as in mftrnn lm (default 60s)")
    g.add_argument("--quiet", action="store_true", help="print only the final line(s)")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder that contains mnist/ (default $MFTRNN_DATA, else ../shared/data)")
    g.add_argument("--download", action="store_true", help="fetch missing MNIST files (verified by sha256)")
    c = dg.add_argument_group("configuration (default: the preset's value)")
    c.add_argument("--cell", default=None, help="vanilla or minimal")
    c.add_argument("--init", default=None, help="default, critical or off-critical")
    c.add_argument("--weights", default=None, help="orthogonal or gaussian recurrent weights")
    for flag, kind, text in (("--dataset", str, "mnist or sklearn"), ("--T-pad", int, "blank steps after the image"),
                             ("--hidden", int, "width N"), ("--steps", int, "training steps"),
                             ("--batch-size", int, "mini-batch size"), ("--lr", _float, "Adam learning rate"),
                             ("--clip", _float, "gradient-norm clipping threshold"),
                             ("--eval-every", int, "steps between test evaluations"),
                             ("--n-test", int, "size of the fixed test subset"),
                             ("--n-train", int, "use only the first N training images"),
                             ("--R", _float, "input second moment per component"),
                             ("--q-star", _float, "vanilla critical init: target q*"),
                             ("--k", _float, "minimalRNN critical init: timescale xi = k T"),
                             ("--sigma-w", _float, "recurrent weight std (off-critical; minimal critical)"),
                             ("--sigma-v", _float, "input weight std (off-critical)"),
                             ("--sigma-b", _float, "bias std (off-critical; vanilla critical)"),
                             ("--mu-b", _float, "bias mean (off-critical; vanilla critical)"),
                             ("--seed", int, "random seed"), ("--device", str, "cpu or cuda")):
        dest = flag[2:].replace("-", "_")
        c.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    c.add_argument("--pixel", action="store_true", default=None, help="pixel-by-pixel instead of row by row")


_DIGITS_FIELDS = ("dataset", "cell", "init", "weights", "T_pad", "pixel", "hidden", "steps", "batch_size", "lr",
                  "clip", "eval_every", "n_test", "n_train", "R", "q_star", "k", "sigma_w", "sigma_v", "sigma_b",
                  "mu_b", "seed", "device")


def cmd_digits(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    import shlex

    import torch

    from ..experiments import seqdigits as sd

    if args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    given = {f: getattr(args, f) for f in _DIGITS_FIELDS if getattr(args, f) is not None}
    command = shlex.join(["mftrnn"] + list(argv))
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    if args.sweep is not None:
        if args.out is not None or args.preset is not None:
            raise CliError("--sweep PRESET takes --out-dir, not --out or --preset")
        if args.out_dir is None:
            raise CliError("--sweep needs --out-dir DIR")
        if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
            raise CliError(f"--out-dir {args.out_dir!r} is not a folder")
        fixed = [f for f in ("cell", "init", "weights", "sigma_w", "sigma_v", "sigma_b", "mu_b", "seed") if f in given]
        if fixed:
            raise CliError(f"--sweep chooses {', '.join('--' + f.replace('_', '-') for f in fixed)} itself"
                           + ("; use --seeds" if "seed" in fixed else ""))
        if args.sweep not in sd.PRESETS:
            raise CliError(f"unknown preset {args.sweep!r}; choose one of {', '.join(sd.PRESETS)}")
        seeds = _parse_seeds(args.seeds)
        results = sd.run_sweep(args.sweep, args.out_dir, seeds=seeds, data_dir=args.data_dir,
                               download=args.download, command=command, log=log,
                               checkpoint_every=args.checkpoint_every, **given)
        for r in results:
            final = r.get("final") or {}
            print(f"{r['name']}: {r['status']}, final test accuracy {final.get('test_accuracy', float('nan')):.4f}, "
                  f"{r['provenance']['wall_time_s']:.0f} s")
        return 0
    if args.out_dir is not None or args.seeds is not None:
        raise CliError("--out-dir and --seeds belong to --sweep; a single run takes --out FILE.json")
    if args.out is None:
        raise CliError("give --out FILE.json (one run) or --sweep PRESET --out-dir DIR")
    from ..experiments.harness import check_output
    check_output(args.out, "result file", "--out")  # before anything else: a missing folder is one line, at once
    preset = args.preset or "cpu"
    if preset not in sd.PRESETS:
        raise CliError(f"unknown preset {preset!r}; choose one of {', '.join(sd.PRESETS)}")
    missing = [f for f in ("cell", "init") if f not in given]
    if missing:
        raise CliError(f"give {' and '.join('--' + f for f in missing)}")
    config = sd.DigitsConfig(**{**sd.PRESETS[preset], **given}).validated()
    res = sd.train(config, args.out, data_dir=args.data_dir, download=args.download, force=args.force,
                   checkpoint_every=args.checkpoint_every, command=command, log=log)
    print(f"{args.out}: {res['status']}, final test accuracy {res['final']['test_accuracy']:.4f}, "
          f"{res['provenance']['wall_time_s']:.0f} s")
    return 0


def _parse_seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None  # the preset's seeds
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise CliError(f"--seeds {text!r}: expected comma-separated integers") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CliError(f"--seeds {text!r}: seeds must be distinct and >= 0")
    return seeds


# ---------------------------------------------------------------------------------------- critical

_CRITICAL_OPTIONS = ("q_star", "T", "k", "sigma_w", "sigma_v", "sigma_b", "mu_b", "R", "max_spread")
_CRITICAL_NOTES = {
    "T": "task length", "k": "timescale factor: xi = k T", "orthogonal": "recurrent weights orthogonal (else Gaussian)",
    "relative_variance": "per-step relative variance r of the spectrum of J J^T",
    "spread": "T r: relative variance over the whole task", "narrow": "spread <= max_spread?",
    "max_spread": "bound on the spread", "candidates": "(sigma_w, mu_b) candidates compared",
    "mu_b_upper": "mu_b where chi falls below 1 again (upper end of the chaotic window)",
    "upper_continuous": "continuously (True) or by a jump of the least fixed point (False)",
}


def _add_critical_parser(sub) -> None:
    """``mftrnn critical``: critical initialisation hyperparameters (mftrnn.theory.critical)."""
    cr = sub.add_parser(
        "critical", help="hyperparameters on chi = 1 (vanilla: target q*) or with xi = k T (minimal)",
        description="Critical initialisation. vanilla: --q-star X gives sigma_w, sigma_v on the line chi = 1 with "
                    "that fixed point. minimal: --T N gives the gate bias mu_b (and sigma_w unless given) with "
                    "timescale xi = k T and a narrow Jacobian spectrum; without --T, --sigma-w X gives the mu_b of "
                    "the chi = 1 boundary.")
    cr.add_argument("cell", metavar="CELL", help="cell name (vanilla or minimal)")
    for name, text in (("q_star", "vanilla: target pre-activation variance q* at the fixed point"),
                       ("T", "minimal: task length; the timescale is xi = k T"),
                       ("k", "minimal: timescale factor (default 1)"),
                       ("sigma_w", "minimal: recurrent weight std (default: chosen)"),
                       ("sigma_v", "minimal: input weight std (default 1)"),
                       ("sigma_b", "bias std (default 0)"),
                       ("mu_b", "vanilla: bias mean (default 0)"),
                       ("R", "input second moment per component (default 1)"),
                       ("max_spread", "minimal --T: bound on the T-step relative spectral variance (default 0.1)")):
        flag = "--T" if name == "T" else "--" + name.replace("_", "-")
        cr.add_argument(flag, dest=name, default=None, metavar="X", help=text)
    cr.add_argument("--gaussian", action="store_true",
                    help="minimal --T: Gaussian instead of orthogonal recurrent weights (for the spectrum)")
    cr.add_argument("--json", action="store_true", help="print one JSON object")


def _critical_values(args: argparse.Namespace) -> dict:
    """The given options as floats (one-line errors, no argparse usage block)."""
    out = {}
    for name in _CRITICAL_OPTIONS:
        text = getattr(args, name)
        if text is None:
            continue
        flag = "--T" if name == "T" else "--" + name.replace("_", "-")
        try:
            value = float(text)
        except ValueError:
            raise CliError(f"{flag}: not a number: {text!r}") from None
        if not math.isfinite(value):
            raise CliError(f"{flag} must be finite, got {text!r}")
        out[name] = value
    return out


def _flag(name: str) -> str:
    return "--T" if name == "T" else "--" + name.replace("_", "-")


def _refuse(cell: str, given: dict, allowed: Sequence[str], why: str) -> None:
    extra = [n for n in given if n not in allowed]
    if extra:
        flags = ", ".join(_flag(n) for n in extra)
        raise CliError(f"{cell}: {flags} not accepted {why}")


def cmd_critical(args: argparse.Namespace) -> int:
    from ..theory import critical

    cell = _check_cell(args.cell)
    given = _critical_values(args)
    recipes = critical.critical_recipes(cell)  # the closed forms registered for the cell
    if not recipes:
        having = dict.fromkeys(r.cell for r in critical.critical_recipes())
        raise CliError(f"no critical initialisation for cell {cell!r} ({' and '.join(having)} only)")
    recipe = next((r for r in recipes if r.key in given), None)
    if recipe is None:
        raise CliError(f"{cell}: give " + " or ".join(f"{_flag(r.key)} {r.metavar} ({r.meaning})" for r in recipes))
    value = given[recipe.key]
    if recipe.integer:
        if value != int(value) or value < 1:
            raise CliError(f"{_flag(recipe.key)} must be an integer >= 1, got {getattr(args, recipe.key)!r}")
        value = int(value)
    _refuse(cell, given, (recipe.key,) + recipe.options, recipe.chosen)
    kw = {k: given[k] for k in recipe.options if k in given}
    if recipe.weights:
        kw["orthogonal"] = not args.gaussian
    elif args.gaussian:
        where = [(f"{r.cell} " if r.cell != cell else "") + _flag(r.key) for r in critical.critical_recipes()
                 if r.weights]
        why = "" if any(r.weights for r in recipes) else " (chi does not depend on the weight ensemble)"
        raise CliError(f"{cell}: --gaussian is for {' or '.join(where)}{why}")
    result = recipe.function(value, **kw)
    title = recipe.title(given, result)
    out = {"cell": cell}
    for key, value in result.items():
        if isinstance(value, float) and math.isnan(value):
            raise CliError(f"critical initialisation gave {key} = nan")
        out[key] = None if isinstance(value, float) and math.isinf(value) else value
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0
    print(f"{title} (mftrnn {_version()})")
    width = max(len(k) for k in out)
    for key, value in out.items():
        if key == "cell":
            continue
        note = RESULT_DESCRIPTIONS.get(key, DESCRIPTIONS.get(key, _CRITICAL_NOTES.get(key, "")))
        if value is None:
            note = (note + " " if note else "") + "(infinite)"
        print(f"  {key:<{width}}  {_fmt(value):>16}  {note}")
    if out.get("narrow") is False:
        print(f"  note: no candidate reaches spread <= {out['max_spread']:g}; this is the narrowest")
    return 0


# -------------------------------------------------------------------------------------- spectrum

SPECTRUM_DESCRIPTIONS = {
    "mean": "mean of the spectrum of J J^T, J the T-step Jacobian (= chi^T)",
    "variance": "its variance (free probability: T r chi^(2T))",
    "relative_variance": "variance / mean^2 = T r",
    "m2": "second moment (1/N) tr (J J^T)^2",
    "variance_independent": "variance, exact for coefficients independent across steps",
    "relative_variance_independent": "the same, relative to mean^2",
    "chi": "mean of one step's spectrum (= chi of the fixed point)",
    "variance_step": "variance of one step's spectrum",
    "relative_variance_step": "r: one step's variance / chi^2",
    "q_star": "pre-activation variance q* at the fixed point",
    "Q_star": "hidden-state norm Q* = |h|^2/N",
    "log_mean": "ln(mean) = T ln chi (finite where mean under/overflows)",
    "log_variance": "ln(variance)",
    "log_m2": "ln(m2)",
    "log_variance_independent": "ln(variance_independent)",
    "log_relative_variance_independent": "ln(relative_variance_independent)",
}


def _add_spectrum_parser(sub) -> None:
    """``mftrnn spectrum``: moments (and density) of the T-step Jacobian's squared singular values."""
    sp_ = sub.add_parser(
        "spectrum", help="spectrum of J J^T for the T-step state-to-state Jacobian (mean, variance, density)",
        description="Mean and variance of the squared singular values of the T-step Jacobian dh_T/dh_0 at the "
                    "mean-field fixed point (free probability), for Gaussian or orthogonal recurrent weights; "
                    "--out FILE.png plots the density.")
    sp_.add_argument("cell", metavar="CELL", help="cell name (vanilla or minimal)")
    _add_hyperparameters(sp_)
    sp_.add_argument("--T", dest="T", required=True, metavar="N",
                     help="number of steps of the product (1 to 2^53; the cost does not grow with T; values "
                          "outside the float range are reported as log_* only)")
    sp_.add_argument("--orthogonal", action="store_true", help="W = sigma_w O with O Haar orthogonal")
    sp_.add_argument("--json", action="store_true", help="print one JSON object")
    sp_.add_argument("--out", default=None, metavar="FILE.png", help="plot the spectral density into a .png")


def _parse_T(text: str) -> int:
    from ..theory.jacobian import MAX_T
    shown = text if len(text) <= 40 else text[:37] + "..."
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        raise CliError(f"--T must be an integer >= 1, got {shown!r}") from None
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise CliError(f"--T must be an integer >= 1, got {shown!r}")
    if value > MAX_T:
        raise CliError(f"--T must be at most 2^53 = {MAX_T} (the moments cost O(log T) steps; beyond that a float "
                       f"does not hold every integer), got {shown!r}")
    return int(value)


def _save_spectrum_png(path: str, cell: str, T: int, orthogonal: bool, params: dict, result: dict) -> None:
    try:
        from ..theory.spectrum import spectral_density
    except ImportError:
        raise CliError("--out needs the spectral density (mftrnn.theory.spectrum.spectral_density), "
                       "which this installation does not provide; use --json for the moments") from None
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # spectra of products span decades: plot the density of ln(lambda), lambda rho(lambda), on a log axis, from
    # 1e-6 of the mean to 6 standard deviations above it
    mean, sd = result["mean"], math.sqrt(max(result["variance"], 0.0))
    if not mean > 0:
        raise CliError(f"the spectrum is a point mass at {mean:g}; nothing to plot")
    x = np.geomspace(1e-6 * mean, mean + 6.0 * sd, 801) if sd > 0 else np.linspace(0.5 * mean, 1.5 * mean, 801)
    rho = np.asarray(spectral_density(cell, T, x, orthogonal=orthogonal, **params), dtype=float)
    if rho.shape != x.shape or not np.all(np.isfinite(rho)):
        raise CliError("spectral density: non-finite or misshapen result")
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.semilogx(x, x * rho, lw=1.5)
        ax.axvline(mean, color="0.5", ls="--", lw=1, label=f"mean = chi^T = {mean:.4g}")
        ax.set_xlabel(r"squared singular value $\lambda$ of $J_T\cdots J_1$")
        ax.set_ylabel(r"density of $\ln\lambda$: $\lambda\,\rho(\lambda)$")
        ax.set_title(f"{cell}, T = {T}, {'orthogonal' if orthogonal else 'Gaussian'} W, "
                     + ", ".join(f"{k}={v:g}" for k, v in params.items()), fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        _atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)


GATED_SPECTRUM_DESCRIPTIONS = {
    "mean": "mean of the spectrum of J J^T, J the T-step Jacobian of the whole state (exact, untied mean field)",
    "log_mean": "ln(mean)",
    "relative_variance": "variance / mean^2: free product of one-step Jacobians (approximation)",
    "relative_variance_error": "its Monte Carlo standard error",
    "relative_variance_independent": "the same for coefficients drawn afresh at every step (exact for that model)",
    "relative_variance_independent_error": "its Monte Carlo standard error",
    "mean_independent": "that model's mean; ignores the correlation of steps through the carried state",
    "variance": "variance (free product)",
    "log_variance": "ln(variance)",
    "m1_step": "one step's mean (Monte Carlo over the unit law)",
    "m1_step_error": "its standard error",
    "variance_step": "one step's variance",
    "relative_variance_step": "r: one step's variance / mean^2",
    "chi": "growth per step of a state perturbation's second moment",
    "xi": "timescale -1/ln(chi)",
}


def cmd_spectrum_gated(args: argparse.Namespace, cell: str, T: int) -> int:
    """``mftrnn spectrum lstm|gru``: moments of the T-step Jacobian's spectrum (mftrnn.theory.gated_jacobian)."""
    from ..theory.gated_jacobian import gated_product_moments
    if args.out is not None:
        raise CliError(f"--out: the spectral density of {cell} is not derived (its moments are; use --json)")
    params = _gate_params(args, cell)
    result = gated_product_moments(cell, T, orthogonal=args.orthogonal, **params)
    out = {"cell": cell, **params, **result}
    out["states"] = list(result["states"])
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0
    weights = "orthogonal" if args.orthogonal else "Gaussian"
    print(f"{cell}: spectrum of J J^T for the {T}-step Jacobian of ({', '.join(out['states'])}), {weights} W "
          f"(mftrnn {_version()})")
    width = max(len(k) for k in out)
    for key, value in out.items():
        if key in GATED_SPECTRUM_DESCRIPTIONS:
            shown = "(see log_)" if value is None else _fmt(value)
            print(f"  {key:<{width}}  {shown:>16}  {GATED_SPECTRUM_DESCRIPTIONS[key]}")
    print(f"  {result['approximation']}")
    return 0


def cmd_spectrum(args: argparse.Namespace) -> int:
    import mftrnn

    cell = _check_cell(args.cell)
    if _is_gated(cell):
        return cmd_spectrum_gated(args, cell, _parse_T(args.T))
    _refuse_gate_options(args, cell)
    params = _fixed_params(args)
    T = _parse_T(args.T)
    if args.out is not None:
        if os.path.splitext(args.out)[1].lower() != ".png":
            raise CliError(f"--out {args.out!r}: the density plot is written as .png")
        _check_output(args.out)
    result = mftrnn.product_moments(cell, T, orthogonal=args.orthogonal, **params)
    clean = {}
    for key, value in result.items():
        if isinstance(value, float) and math.isnan(value):
            raise CliError(f"spectrum gave {key} = {value} for {_describe(params)}, T={T}")
        if isinstance(value, float) and math.isinf(value):
            if not key.startswith("log_"):
                raise CliError(f"spectrum gave {key} = {value} for {_describe(params)}, T={T}")
            value = None  # the log of an exact 0 (-inf): JSON null
        clean[key] = value
    result = clean
    out = {"cell": cell, **params, "T": T, "orthogonal": bool(args.orthogonal)}
    out.update(result)
    if args.out is not None:
        if result["mean"] is None or result["variance"] is None:
            raise CliError(f"--out: the mean chi^T = exp({result['log_mean']:.6g}) of the {T}-step spectrum is "
                           "outside the float range; use --json for its moments in log form")
        _save_spectrum_png(args.out, cell, T, bool(args.orthogonal), params, result)
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0
    if args.out is not None:
        print(f"wrote {args.out} (mean {result['mean']:.6g}, variance {result['variance']:.6g})")
        return 0
    weights = "orthogonal" if args.orthogonal else "Gaussian"
    print(f"{cell} RNN, spectrum of J J^T for the {T}-step Jacobian, {weights} W (mftrnn {_version()})")
    width = max(len(k) for k in out)
    for name in PARAMS:
        print(f"  {name:<{width}}  {_fmt(params[name]):>16}  {DESCRIPTIONS[name]}")
    print()
    for key, value in result.items():
        if key in SPECTRUM_DESCRIPTIONS:
            note = SPECTRUM_DESCRIPTIONS[key]
            if value is None:
                shown = "-inf" if key.startswith("log_") else "(see log_)"
                if not key.startswith("log_"):
                    note += f"; outside the float range, log_{key} gives it"
                else:
                    note += " (the value is exactly 0)"
            else:
                shown = _fmt(value)
            print(f"  {key:<{width}}  {shown:>16}  {note}")
    return 0


# -------------------------------------------------------------------------------------------- lm

def _add_lm_parser(sub, full: bool) -> None:
    """``mftrnn lm``: word-level language model (mftrnn.experiments.lm); its options (and torch) load only when used."""
    lm = sub.add_parser("lm", help="word-level language model: minimalRNN vs LSTM vs GRU (PTB, WikiText-2)",
                        description="Train an embedding -> RNN -> decoder language model with truncated BPTT "
                                    "(presets tiny, small, medium, large); resumes from its checkpoint, skips a "
                                    "finished run, writes a JSON result with provenance.")
    if full:
        from ..experiments.lm import add_arguments
        add_arguments(lm)


# -------------------------------------------------------------------------------------- main

def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mftrnn`` console script; returns the exit status."""
    argv_list = sys.argv[1:] if argv is None else list(argv)
    if argv_list[:1] == ["seizure"]:
        from ..experiments import seizure
        return seizure.main(argv_list[1:], prog="mftrnn seizure")
    parser = _build_parser(full_lm=argv_list[:1] == ["lm"])
    args = parser.parse_args(argv_list)
    try:
        import mftrnn
        errors: tuple = (CliError, OSError, mftrnn.MftrnnError)
    except ImportError:  # pragma: no cover
        errors = (CliError, OSError)
    try:
        if args.command == "digits":
            return cmd_digits(args, sys.argv[1:] if argv is None else list(argv))
        if args.command == "lm":
            from ..experiments.lm import run_cli
            return run_cli(args, argv_list)
        if args.command == "longseq":
            from .longseq import cmd_longseq
            return cmd_longseq(args, argv_list)
        if args.command == "sweep":
            from .sweep import cmd_sweep
            return cmd_sweep(args, argv_list)
        if args.command == "critical":
            return cmd_critical(args)
        if args.command == "spectrum":
            return cmd_spectrum(args)
        if args.command == "diagnose":
            from .diagnose import cmd_diagnose
            return cmd_diagnose(args)
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

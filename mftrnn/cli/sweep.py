"""``mftrnn sweep``: trainability phase diagrams on Dask (:mod:`mftrnn.experiments.trainability`,
:mod:`mftrnn.experiments.sweep`).

Examples::

    mftrnn sweep --preset cpu --out results/trainability.sqlite --plan         # the grid and its size
    mftrnn sweep --preset cpu --out results/trainability.sqlite --workers 2    # a LocalCluster of 2 workers
    mftrnn sweep --preset gpu --out /shared/tr.sqlite --scheduler tcp://host:8786   # an existing Dask cluster
    mftrnn sweep --plot results/trainability.sqlite --figure diagrams.png      # heat maps with the xi lines

Re-running the same command skips finished runs and resumes interrupted ones.  Wired into ``mftrnn`` by
:mod:`mftrnn.cli.app`; Dask and torch load only when the command runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

from .app import CliError, comma_list as _list

__all__ = ["add_parser", "cmd_sweep"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep", help="trainability phase diagrams: a grid of training runs on Dask (LocalCluster or --scheduler)",
        description="Train the sequential-digits task over a grid of hyperparameters x memory length T "
                    "(mftrnn.experiments.trainability) on Dask distributed; every finished run is stored at once in "
                    "one SQLite results table (--out). Re-running skips finished runs and resumes interrupted ones; "
                    "a failing run is recorded and the others go on. --plot draws the heat maps with the "
                    "mean-field timescale lines.")
    p.add_argument("--preset", default=None, metavar="NAME", help="tiny, cpu or gpu")
    p.add_argument("--out", default=None, metavar="FILE.sqlite",
                   help="results table (per-run files go to FILE.runs/ beside it)")
    p.add_argument("--diagrams", default=None, metavar="D1,D2",
                   help="vanilla-orthogonal, vanilla-gaussian, minimal-mu_b, minimal-sigma_w (default: all)")
    p.add_argument("--seeds", default=None, metavar="S1,S2", help="seeds (default: the preset's)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of an existing Dask scheduler (default $MFTRNN_SCHEDULER, else a LocalCluster)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster workers, one thread each (default: the number of cores)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads per run (default 1)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="override the preset's training steps")
    p.add_argument("--device", default=None, metavar="DEV", help="override the preset's device (cpu, cuda)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder that contains mnist/ (gpu preset; default $MFTRNN_DATA, else ../shared/data)")
    p.add_argument("--plan", action="store_true", help="print the grid's size and the runs still to do; run nothing")
    p.add_argument("--require-clean", action="store_true",
                   help="refuse to run from a checkout with uncommitted changes (results to be committed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plot", default=None, metavar="FILE.sqlite", help="draw the heat maps of a results table")
    p.add_argument("--figure", default=None, metavar="FILE.png", help="--plot: the image to write")
    p.add_argument("--summary", default=None, metavar="FILE.sqlite",
                   help="print, per diagram, how well T = k xi separates trained from untrained runs")
    return p


def _rows(path):
    from ..experiments.sweep import ResultsTable
    if not os.path.isfile(path):
        raise CliError(f"results table {path!r} does not exist")
    with ResultsTable(path) as tab:
        return tab.rows()


def cmd_sweep(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from ..errors import MftrnnError
    from ..experiments import trainability as tr

    if args.plot is not None or args.summary is not None:
        if args.preset is not None or args.out is not None:
            raise CliError("--plot/--summary read an existing table; they take no --preset or --out")
        rows = _rows(args.plot or args.summary)
        names = _list(args.diagrams, "--diagrams") or tuple(tr.DIAGRAMS)
        if args.summary is not None:
            for name in names:
                try:
                    s = tr.separation(rows, name)
                except MftrnnError as exc:  # a diagram without runs is reported, not fatal
                    print(f"{name}: {exc}")
                    continue
                print(f"{name}: {s['n']} runs, {s['n_trained']} trained; T = {s['k']:.3g} xi classifies "
                      f"{100 * s['fraction']:.1f}% (T = xi: {100 * s['fraction_k1']:.1f}%)")
        if args.plot is not None:
            if args.figure is None or not args.figure.endswith(".png"):
                raise CliError("--plot needs --figure FILE.png")
            import matplotlib
            matplotlib.use("Agg")
            fig = tr.plot_diagrams(rows, names)
            fig.savefig(args.figure, dpi=120)
            print(f"wrote {args.figure}")
        return 0

    if args.preset is None or args.out is None:
        raise CliError("give --preset NAME and --out FILE.sqlite (or --plot/--summary FILE.sqlite)")
    if args.preset not in tr.PRESETS:
        raise CliError(f"unknown preset {args.preset!r}; choose one of {', '.join(tr.PRESETS)}")
    if not args.out.endswith(".sqlite"):
        raise CliError(f"--out {args.out!r} must end in .sqlite")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise CliError(f"the folder of --out {args.out!r} does not exist")
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers}")
    if args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    seeds = _list(args.seeds, "--seeds", int)
    overrides = {k: v for k, v in (("steps", args.steps), ("device", args.device)) if v is not None}
    runs = tr.grid_runs(args.preset, args.out, diagrams=_list(args.diagrams, "--diagrams"), seeds=seeds,
                        data_dir=args.data_dir, **overrides)
    if args.plan:
        from ..experiments.sweep import ResultsTable
        done = set()
        if os.path.isfile(args.out):
            with ResultsTable(args.out) as tab:
                done = tab.finished_keys()
        todo = [r for r in runs if r.key not in done]
        by = {}
        for r in todo:
            by[r.params["diagram"]] = by.get(r.params["diagram"], 0) + 1
        print(f"{len(runs)} runs in the grid, {len(runs) - len(todo)} finished, {len(todo)} to do"
              + "".join(f"\n  {k}: {v}" for k, v in by.items()))
        return 0
    if args.require_clean:
        from ..experiments.harness import git_state
        g = git_state()
        if g["commit"] is None or g["dirty"]:
            raise CliError("--require-clean: the checkout has uncommitted changes (or is not a git checkout)")
    os.makedirs(tr.runs_folder(args.out), exist_ok=True)
    from ..experiments.sweep import run_sweep
    rep = run_sweep(runs, args.out, scheduler=args.scheduler, workers=args.workers, threads=args.threads,
                    progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr, flush=True),
                    command=shlex.join(["mftrnn"] + list(argv)))
    print(f"{rep.total} runs: {rep.skipped} already done, {rep.finished} finished now, {rep.failed} failed "
          f"({rep.workers} workers, {rep.wall_s:.0f} s)")
    return 0 if rep.failed == 0 else 2

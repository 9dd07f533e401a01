"""``mftrnn longseq``: train ``nn.LSTM`` / ``nn.GRU`` on long-sequence tasks with an initialisation scheme
(:mod:`mftrnn.experiments.longseq`).

Examples::

    mftrnn longseq copy lstm --init chrono --T 1000 --out copy-lstm-chrono.json
    mftrnn longseq digits gru --init forget1 --T 300 --pad noise --out d.json --device cuda
    mftrnn longseq --sweep cpu --out-dir results/longseq --plan      # list the grid, measure, predict wall time
    mftrnn longseq --sweep cpu --out-dir results/longseq --require-clean

Single runs take their unset options from a grid's values for the task (``--grid``, default ``cpu``).  Bad input is
one line (:class:`mftrnn.cli.app.CliError` or an :class:`~mftrnn.MftrnnError`).  Wired into ``mftrnn`` by
:mod:`mftrnn.cli.app` (``add_parser`` and ``cmd_longseq``); torch loads only when the command runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
from typing import Sequence

from .app import CliError, comma_list as _list

__all__ = ["add_parser", "cmd_longseq"]

_FIELDS = (("hidden", int, "width N of the recurrent layer"), ("steps", int, "training steps"),
           ("batch_size", int, "mini-batch size"), ("lr", float, "learning rate"),
           ("optimizer", str, "adam or rmsprop"), ("clip", float, "gradient-norm clipping threshold"),
           ("eval_every", int, "steps between test evaluations"), ("n_test", int, "size of the fixed test set"),
           ("dataset", str, "digits: mnist (default) or sklearn"), ("pad", str, "digits: blank (default) or noise"),
           ("n_train", int, "digits: use only the first N training images"), ("seed", int, "random seed"),
           ("device", str, "cpu (default), cuda or cuda:i"))


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``longseq`` subcommand to ``sub`` (the subparsers of ``mftrnn``); return its parser."""
    p = sub.add_parser(
        "longseq", help="train nn.LSTM / nn.GRU on long sequences (copy task, padded digits) with an init scheme",
        description="Long-sequence training evidence: the copy-memory task (delay T) or sequential digits padded by "
                    "T steps, nn.LSTM or nn.GRU initialised with default, forget1, chrono or critical. One run "
                    "(TASK CELL --init --T --out FILE.json) or a grid (--sweep GRID --out-dir DIR). Reruns resume "
                    "from checkpoints; finished runs are skipped.")
    p.add_argument("task", nargs="?", metavar="TASK", help="copy or digits")
    p.add_argument("cell", nargs="?", metavar="CELL", help="lstm or gru")
    r = p.add_argument_group("run")
    r.add_argument("--init", default=None, metavar="SCHEME", help="default, forget1, chrono or critical")
    r.add_argument("--T", dest="T", type=int, default=None, metavar="N",
                   help="copy: the delay (sequence length T + 20); digits: padding steps after the image")
    r.add_argument("--out", default=None, metavar="FILE.json", help="result file of one run")
    r.add_argument("--grid", default=None, metavar="NAME",
                   help="take unset options from this grid's values for the task (default cpu)")
    r.add_argument("--sweep", default=None, metavar="GRID", help="run every configuration of a grid (tiny, cpu, gpu)")
    r.add_argument("--out-dir", default=None, metavar="DIR", help="result folder of a sweep")
    r.add_argument("--seeds", default=None, metavar="S1,S2", help="sweep: seeds (default: the grid's)")
    r.add_argument("--tasks", default=None, metavar="T1,T2", help="sweep: tasks (default: the grid's)")
    r.add_argument("--inits", default=None, metavar="I1,I2", help="sweep: init schemes (default: the grid's)")
    r.add_argument("--plan", action="store_true",
                   help="sweep: list the configurations and the predicted wall time (measured here), run nothing")
    r.add_argument("--force", action="store_true", help="replace a result of another configuration")
    r.add_argument("--require-clean", action="store_true",
                   help="refuse to run from a checkout with uncommitted changes (results to be committed)")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    r.add_argument("--checkpoint-every", default="60s", metavar="EVERY",
                   help="wall time (60s, 5min) or steps (200steps) between checkpoints (default 60s)")
    r.add_argument("--quiet", action="store_true", help="print only the final line(s)")
    r.add_argument("--data-dir", default=None, metavar="DIR",
                   help="digits: folder that contains mnist/ (default $MFTRNN_DATA, else ../shared/data)")
    r.add_argument("--download", action="store_true", help="digits: fetch missing MNIST files (verified by sha256)")
    c = p.add_argument_group("configuration (default: the grid's value)")
    for name, kind, text in _FIELDS:
        c.add_argument("--" + name.replace("_", "-"), dest=name, type=_number(kind), default=None, help=text)
    return p


def _number(kind):
    if kind is str:
        return str

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") \
                from None
    parse.__name__ = kind.__name__
    return parse


def cmd_longseq(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Run ``mftrnn longseq``; return the exit status (0).  Bad input raises :class:`CliError` or
    :class:`~mftrnn.MftrnnError` (one line)."""
    import torch

    from ..errors import MftrnnError
    from ..experiments import longseq as ls
    from ..experiments.harness import check_output, parse_checkpoint_every

    if args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        every = parse_checkpoint_every(args.checkpoint_every)
    except MftrnnError as exc:
        raise CliError(str(exc)) from None
    command = shlex.join(["mftrnn"] + list(argv))
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    given = {name: getattr(args, name) for name, _, _ in _FIELDS if getattr(args, name) is not None}

    if args.sweep is not None:
        wrong = [o for o, v in (("TASK", args.task), ("--init", args.init), ("--T", args.T), ("--out", args.out),
                                ("--grid", args.grid), ("--seed", given.get("seed"))) if v is not None]
        if wrong:
            raise CliError(f"--sweep GRID chooses {', '.join(wrong)} itself (use --tasks, --inits, --seeds)")
        if args.sweep not in ls.GRIDS:
            raise CliError(f"unknown grid {args.sweep!r}; choose one of {', '.join(ls.GRIDS)}")
        if args.out_dir is None:
            raise CliError("--sweep needs --out-dir DIR")
        if not os.path.isdir(args.out_dir):
            raise CliError(f"--out-dir {args.out_dir!r} is not an existing folder")
        seeds = _list(args.seeds, "--seeds", int)
        if seeds is not None and any(s < 0 for s in seeds):
            raise CliError(f"--seeds {args.seeds!r}: seeds must be >= 0")
        tasks, inits = _list(args.tasks, "--tasks"), _list(args.inits, "--inits")
        configs = ls.sweep_configs(args.sweep, seeds=seeds, tasks=tasks, inits=inits, **given)
        if args.plan:
            for cfg in configs:
                why = ls.scheme_unavailable(cfg.init, cfg.cell)
                print(f"{cfg.filename()}" + (f"  [unavailable: {why}]" if why else ""))
            est = ls.expected_wall_time(configs, log=log)
            print(f"{len(configs)} runs, predicted wall time {est['total_s'] / 3600:.2f} h "
                  f"({torch.get_num_threads()} thread(s), this machine)")
            return 0
        results = ls.run_sweep(args.sweep, args.out_dir, seeds=seeds, tasks=tasks, inits=inits,
                               data_dir=args.data_dir, download=args.download, command=command, log=log,
                               require_clean=args.require_clean, checkpoint_every=every, **given)
        for res in results:
            print(_line(res["name"], res))
        return 0

    if args.out_dir is not None or args.seeds is not None or args.tasks is not None or args.inits is not None \
            or args.plan:
        raise CliError("--out-dir, --seeds, --tasks, --inits and --plan belong to --sweep; one run takes TASK CELL "
                       "--init SCHEME --T N --out FILE.json")
    missing = [o for o, v in (("TASK", args.task), ("CELL", args.cell), ("--init", args.init), ("--T", args.T),
                              ("--out", args.out)) if v is None]
    if missing:
        raise CliError(f"give {', '.join(missing)} (or --sweep GRID --out-dir DIR)")
    if not str(args.out).endswith(".json"):
        raise CliError(f"--out {args.out!r}: the result file must end in .json")
    check_output(args.out, "result file", "--out")
    grid = args.grid or "cpu"
    if grid not in ls.GRIDS:
        raise CliError(f"unknown grid {grid!r}; choose one of {', '.join(ls.GRIDS)}")
    if args.task not in ls.TASKS:
        raise CliError(f"unknown task {args.task!r}; choose one of {', '.join(ls.TASKS)}")
    base = {k: v for k, v in ls.GRIDS[grid]["tasks"][args.task].items() if k != "T"}
    config = ls.LongSeqConfig(**{**base, **given, "task": args.task, "cell": args.cell, "init": args.init,
                                 "T": args.T}).validated()
    res = ls.train(config, args.out, data_dir=args.data_dir, download=args.download, force=args.force,
                   require_clean=args.require_clean, checkpoint_every=every, command=command, log=log)
    print(_line(args.out, res))
    return 0


def _line(name, res: dict) -> str:
    f = res.get("final") or {}
    parts = [f"{name}: {res['status']}", f"final test loss {f.get('test_loss', float('nan')):.4f}"]
    if "loss_over_baseline" in f:
        parts.append(f"{f['loss_over_baseline']:.3f} x baseline, recall accuracy {f['recall_accuracy']:.3f}")
    if "test_accuracy" in f:
        parts.append(f"test accuracy {f['test_accuracy']:.4f}")
    parts.append(f"{res['provenance']['wall_time_s']:.0f} s")
    return ", ".join(parts)

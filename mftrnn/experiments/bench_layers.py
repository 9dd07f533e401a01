"""Throughput of :class:`mftrnn.nets.layers.MinimalRNN` against :class:`torch.nn.LSTM` and :class:`torch.nn.GRU`.

Run as ``python -m mftrnn.experiments.bench_layers [--hidden 256 --seq 64 --batch 32 --layers 1
--device cpu --repeat 20 --warmup 3 --backend function --no-embed --json]``.

All three models get the same input size (= hidden size), sequence length,
batch size and number of layers.  One timed iteration is a forward pass over
the whole sequence plus the backward pass of ``output.sum()`` (all parameter
gradients; the input does not require a gradient), with gradients reset in
between.  After ``--warmup`` untimed iterations per model (which also absorb
any ``torch.compile`` time, reported as ``first_call_s``) the models are
timed in turn, round-robin, ``--repeat`` times, so that slow drifts of the
machine affect all of them alike; the median time gives tokens/s
``= seq * batch / median``.  The ratios MinimalRNN/LSTM and MinimalRNN/GRU
are throughput ratios (> 1: MinimalRNN is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from ..nets.layers import BACKENDS, MinimalRNN
from .harness import resolve_device as _harness_resolve_device

__all__ = ["resolve_device", "make_models", "time_step", "run_benchmark", "main"]


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)`` for cpu or cuda[:i]; ValueError (:class:`mftrnn.MftrnnError`, one line) for an unknown
    device, or for CUDA when CUDA is unavailable (:func:`mftrnn.experiments.harness.resolve_device`)."""
    return _harness_resolve_device(name)


def make_models(hidden: int, layers: int, device, backend: str = "function", embed: bool = True) -> dict:
    """``{"MinimalRNN": ..., "LSTM": ..., "GRU": ...}``, float32, input size = hidden size."""
    kw = dict(device=device, dtype=torch.float32)
    return {
        "MinimalRNN": MinimalRNN(hidden, hidden, num_layers=layers, backend=backend, embed=embed, **kw),
        "LSTM": nn.LSTM(hidden, hidden, num_layers=layers, **kw),
        "GRU": nn.GRU(hidden, hidden, num_layers=layers, **kw),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward + backward of ``model(x)[0].sum()`` (synchronised on CUDA)."""
    model.zero_grad(set_to_none=True)
    _sync(x.device)
    t0 = time.perf_counter()
    out, _ = model(x)
    out.sum().backward()
    _sync(x.device)
    return time.perf_counter() - t0


def run_benchmark(hidden: int = 256, seq: int = 64, batch: int = 32, layers: int = 1,
                  device: str = "cpu", repeat: int = 20, warmup: int = 3,
                  backend: str = "function", embed: bool = True, seed: int = 0) -> dict:
    """Measure all three models in one run; return a JSON-ready dict of times, tokens/s and ratios."""
    for name, v in (("hidden", hidden), ("seq", seq), ("batch", batch), ("layers", layers),
                    ("repeat", repeat)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if int(warmup) != warmup or warmup < 1:
        raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    models = make_models(hidden, layers, dev, backend=backend, embed=embed)
    x = torch.randn(seq, batch, hidden, device=dev)
    first = {name: time_step(m, x) for name, m in models.items()}
    for _ in range(warmup - 1):
        for m in models.values():
            time_step(m, x)
    times = {name: [] for name in models}
    for _ in range(repeat):
        for name, m in models.items():
            times[name].append(time_step(m, x))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    tokens = seq * batch
    tps = {name: tokens / t for name, t in med.items()}
    return dict(
        config=dict(hidden=hidden, seq=seq, batch=batch, layers=layers, device=str(dev),
                    repeat=repeat, warmup=warmup, backend=backend, embed=embed,
                    threads=torch.get_num_threads(), torch=torch.__version__),
        median_s=med, first_call_s=first, tokens_per_s=tps,
        ratio_vs_lstm=tps["MinimalRNN"] / tps["LSTM"],
        ratio_vs_gru=tps["MinimalRNN"] / tps["GRU"],
    )


def _print_table(res: dict) -> None:
    c = res["config"]
    print(f"forward+backward, hidden={c['hidden']} seq={c['seq']} batch={c['batch']} "
          f"layers={c['layers']} device={c['device']} threads={c['threads']} "
          f"backend={c['backend']} embed={c['embed']} (median of {c['repeat']})")
    print(f"{'model':<12}{'median ms':>12}{'tokens/s':>14}{'first call ms':>16}")
    for name, t in res["median_s"].items():
        print(f"{name:<12}{t * 1e3:>12.2f}{res['tokens_per_s'][name]:>14.0f}"
              f"{res['first_call_s'][name] * 1e3:>16.1f}")
    print(f"MinimalRNN/LSTM = {res['ratio_vs_lstm']:.2f}x   MinimalRNN/GRU = {res['ratio_vs_gru']:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mftrnn.experiments.bench_layers", description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backend", choices=BACKENDS, default="function")
    p.add_argument("--no-embed", dest="embed", action="store_false",
                   help="MinimalRNN without the embedding Phi (z_t = x_t)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    try:
        res = run_benchmark(hidden=args.hidden, seq=args.seq, batch=args.batch, layers=args.layers,
                            device=args.device, repeat=args.repeat, warmup=args.warmup,
                            backend=args.backend, embed=args.embed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        _print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

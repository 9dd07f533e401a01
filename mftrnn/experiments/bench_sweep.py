"""Benchmark: sweep throughput on Dask with 1 and with 2 workers (one thread each), in the same process.

    python -m mftrnn.experiments.bench_sweep [--runs 16] [--steps 300]

Each measurement starts a :class:`distributed.LocalCluster` of ``n`` single-threaded workers first (its start-up is
not timed), then times :func:`mftrnn.experiments.sweep.run_sweep` over the same grid of real training runs (the
``tiny`` trainability preset with ``--steps`` steps, all four diagrams, repeated over seeds until ``--runs`` runs)
into a fresh results table, and prints runs per second and the ratio to one worker.  Target on a 2-core machine:
a ratio of at least 1.8 (the runs are independent; what is lost is scheduling, result transfer and the table
writes, and any other load on the cores).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


def _runs(table: Path, n: int, steps: int):
    from .trainability import grid_runs
    runs, seed = [], 0
    while len(runs) < n:
        runs += grid_runs("tiny", table, seeds=(seed,), steps=steps)
        seed += 1
    return runs[:n]


def measure(workers: int, n_runs: int, steps: int) -> float:
    """Seconds that ``run_sweep`` takes for ``n_runs`` runs on a ready local cluster of ``workers`` workers."""
    from distributed import LocalCluster

    from .sweep import run_sweep
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=logging.CRITICAL) as cluster:
        table = Path(tmp) / "bench.sqlite"
        runs = _runs(table, n_runs, steps)
        # warm the workers (imports, data) with one run each, outside the timing
        run_sweep(_runs(Path(tmp) / "warm.sqlite", workers, 20), Path(tmp) / "warm.sqlite",
                  scheduler=cluster.scheduler_address, progress=False)
        t0 = time.perf_counter()
        rep = run_sweep(runs, table, scheduler=cluster.scheduler_address, progress=False)
        dt = time.perf_counter() - t0
        if rep.failed:
            raise RuntimeError(f"{rep.failed} benchmark runs failed: {rep.errors}")
        return dt


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args(argv)
    t1 = measure(1, a.runs, a.steps)
    t2 = measure(2, a.runs, a.steps)
    print(f"{a.runs} runs of {a.steps} steps (tiny trainability preset, one thread per worker)")
    print(f"1 worker : {t1:7.1f} s  {a.runs / t1:6.3f} runs/s")
    print(f"2 workers: {t2:7.1f} s  {a.runs / t2:6.3f} runs/s  ratio {t1 / t2:.2f} (target >= 1.8 on 2 free cores)")


if __name__ == "__main__":
    main()

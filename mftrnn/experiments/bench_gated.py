"""Speed of the gated cells' mean field: an LSTM phase diagram over (sigma_w, mu_b_f) against a naive baseline.

Run ``python -m mftrnn.experiments.bench_gated [--grid 128] [--sample 24] [--baseline 3]``. It prints, in one process:

* the engine's time per point on ``--sample`` points spread over the ``grid x grid`` diagram
  (sigma_w in [0.1, 3], mu_b_f in [-2, 5]), and that time extrapolated to the whole grid (the engine is a loop
  over points, so the extrapolation is linear);
* the naive baseline on ``--baseline`` of those points: a population Monte Carlo of the same untied mean-field
  recursion (particles c, fields drawn afresh every step with variances set by the population's own Q_h) with
  1e5 particles, its time scaled from the relative standard error it reached to a 1e-6 error (the engine's
  accuracy is ~1e-10; Monte Carlo cost grows as the inverse square of the error; the standard error comes from
  means over blocks of 10 steps, which absorbs the correlation of successive steps);
* their ratio and the largest disagreement between the two on the baseline points, in units of the Monte Carlo's
  standard error.

The target of the LSTM/GRU mean-field work is a full 128 x 128 diagram in under 20 s at >= 100x the baseline;
the script says whether the measured engine meets it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import expit

from ..theory.fixed_point import fixed_point

__all__ = ["population_lstm", "main"]


def population_lstm(sigma_w: float, mu_b_f: float, *, n: int = 100_000, steps: int | None = None,
                    seed: int = 0) -> tuple[float, float]:
    """Naive baseline: Q* of the LSTM (sigma_v = 1, other biases 0) by a population Monte Carlo of the untied
    recursion; returns (Q*, its standard error from the spread of the time average)."""
    rng = np.random.default_rng(seed)
    steps = steps or int(20 / (1 - expit(mu_b_f))) + 40
    c, Qh = np.zeros(n), 0.0
    means = []
    for t in range(steps):
        s = np.sqrt(sigma_w**2 * Qh + 1.0)
        f = expit(mu_b_f + s * rng.standard_normal(n))
        i = expit(s * rng.standard_normal(n))
        g = np.tanh(s * rng.standard_normal(n))
        o = expit(s * rng.standard_normal(n))
        c = f * c + i * g
        h2 = (o * np.tanh(c)) ** 2
        Qh = float(h2.mean())
        if t >= steps // 2:
            means.append(Qh)
    means = np.array(means)
    # successive steps are correlated: the standard error from means over blocks of 10 steps
    blocks = means[: len(means) // 10 * 10].reshape(-1, 10).mean(1)
    return float(means.mean()), float(blocks.std(ddof=1) / np.sqrt(len(blocks)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=128)
    p.add_argument("--sample", type=int, default=24, help="engine points timed (spread over the grid)")
    p.add_argument("--baseline", type=int, default=3, help="baseline points (a subset of the sample)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    sw = np.linspace(0.1, 3.0, args.grid)
    mu = np.linspace(-2.0, 5.0, args.grid)
    idx = rng.choice(args.grid * args.grid, size=args.sample, replace=False)
    pts = [(sw[k % args.grid], mu[k // args.grid]) for k in idx]
    t0 = time.perf_counter()
    eng = [float(fixed_point("lstm", sigma_w=a, sigma_v=1.0, mu_b_f=b).Q_star) for a, b in pts]
    t_eng = (time.perf_counter() - t0) / len(pts)
    worst, t_mc = 0.0, 0.0
    for (a, b), q in list(zip(pts, eng))[:args.baseline]:
        t0 = time.perf_counter()
        m, se = population_lstm(a, b)
        # Monte Carlo cost grows as 1/error^2: the time for a 1e-6 relative error
        t_mc += (time.perf_counter() - t0) * (se / m / 1e-6) ** 2 / args.baseline
        worst = max(worst, abs(m - q) / se)
    full = t_eng * args.grid**2
    print(f"engine: {t_eng * 1e3:.0f} ms/point on {len(pts)} points -> {full:.0f} s for {args.grid}x{args.grid}")
    print(f"baseline (population Monte Carlo, scaled to a 1e-6 relative error): {t_mc:.3g} s/point")
    print(f"ratio baseline/engine: {t_mc / t_eng:.3g}x; largest disagreement {worst:.2f} Monte Carlo standard errors")
    print(f"target (<= 20 s for 128x128, >= 100x): {'met' if full <= 20 and t_mc / t_eng >= 100 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

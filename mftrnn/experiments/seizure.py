r"""A seizure-like detection task on multichannel signals for convolutional recurrent networks (ConvGRU, ConvLSTM):
PyTorch-like default initialisation against the critical one (:func:`mftrnn.nets.conv.critical_conv_init_`).

**Task** (:func:`seizure_data`, generated, no download). A recording has :math:`E` electrodes (default 8) on a ring
(a circumferential montage: electrode :math:`E-1` neighbours electrode 0) and :math:`T` time steps of background
activity, white Gaussian noise :math:`\mathcal N(0, 1)` per electrode and step. Half the recordings (label 1, drawn
with probability 1/2) carry one *burst*: a short oscillation

.. math:: s_t = A\,w(t - t_0)\,\sin\bigl(2\pi f (t - t_0) + \varphi\bigr),\qquad
          w(u) = \sin^2\!\bigl(\pi (u + 1)/(D + 1)\bigr)\ \ (0 \le u < D),

added to ``burst_electrodes`` (default 3) neighbouring electrodes (a focal event, the first electrode uniform on the
ring) for :math:`D` steps (``burst_length``, default 24), with frequency :math:`f\sim\mathcal U(0.08, 0.2)` cycles
per step, phase :math:`\varphi\sim\mathcal U(0, 2\pi)`, amplitude :math:`A` (default 3), and onset :math:`t_0`
uniform on :math:`0 \ldots \lfloor\phi T\rfloor - D` (``onset_fraction`` :math:`\phi`, default 0.2): the burst is
over before step :math:`\phi T`. The label is read after the last step, so a detector must hold the memory of the
burst for at least :math:`(1 - \phi)T` steps of noise: a long-sequence task whose difficulty is set by :math:`T`.
Nothing else tells the two classes apart (the chance accuracy is 1/2). The test set is fixed (:data:`TEST_SEED`),
independent of a run's seed.

**Model** (:class:`SeizureDetector`): a one-layer :class:`~mftrnn.nets.conv.ConvGatedRNN` of the cell (any registered
gated cell: ``gru``, ``lstm``, ...) whose positions are the electrodes (one input channel, the voltage; ``channels``
hidden channels; kernel size 3; circular padding, the ring), and a linear read-out of the last step's output
averaged over the electrodes (the event may occur anywhere on the ring). Loss: binary cross-entropy.

**Initialisations** (:data:`INITS`): ``default`` -- :func:`~mftrnn.nets.conv.default_conv_init_` (every kernel
uniform with bound :math:`1/\sqrt{\text{fan-in}}`, ``nn.Conv1d``'s; biases likewise), PyTorch's default for the
read-out; ``critical`` -- :func:`~mftrnn.nets.conv.critical_conv_init_` with the sequence length :math:`T` as the
timescale (Gaussian kernels); ``critical-delta`` -- the same with delta-orthogonal recurrent kernels.

**Runs** (:func:`train`, :func:`run`). Adam, gradient-norm clipping, fresh mini-batches from a generator seeded by the
run's seed, the test loss and accuracy every ``eval_every`` steps (the curve). Run safety is
:mod:`mftrnn.experiments.harness`'s: the result and its checkpoint are locked, checkpoints are atomic and
checksummed and resumed bit for bit on the same device and thread count, a finished result of the same
configuration is not redone, the JSON result carries the provenance (command, git commit and dirty flag of every
session, device, versions, threads, UTC dates, wall and CPU time); ``require_clean`` refuses a checkout with
uncommitted changes. ``device="cuda"`` runs the model on a GPU (batches are drawn on the CPU and moved).

Command line (one file per run, ``seizure-<cell>-<init>-T<T>-s<seed>.json`` in ``--out``)::

    python -m mftrnn.experiments.seizure --out DIR --seeds 0 1 [--cells gru lstm] [--inits default critical]
        [--T 300] [--steps 400] [--device cpu] [--checkpoint-every 60s] [--require-clean]

Cost, measured on one thread of a 2-core AMD EPYC shared with other jobs (load average about 6): a training step
at :math:`T = 300`, batch 32, 16 channels takes about 0.55 s for either cell (:func:`step_seconds`); the run
``python -m mftrnn.experiments.seizure --out DIR --seeds 0 --cells gru --inits critical`` (300 steps, seven
evaluations) took 193 s of wall time (83 s of CPU time) and reached a test accuracy of 0.980; the same run of the
ConvLSTM (190 s) stayed at chance (0.527). The critical solver says why it may: at :math:`\xi = T = 300` the
LSTM's cell state has :math:`Q_c^* = 33` (``tanh`` saturated) and its :math:`T`-step Jacobian a predicted relative
spread of about 300 (``init["spread"]`` in the result), the GRU's :math:`4\times10^{-5}`. The default grid
(ConvGRU and ConvLSTM x default and critical x two seeds: 8 runs) is therefore about 30 minutes under that load,
about 15 on an idle thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..cells.registry import cells, get_cell
from ..errors import ConvergenceError, DomainError, MftrnnError
from ..nets.conv import ConvGatedRNN, critical_conv_init_, default_conv_init_
from .harness import (TrainingRun, git_state, jsonable, load_result_files, one_line, optimizer_state,
                      parse_checkpoint_every, provenance, refuse_unclean, resolve_device, run_files)

__all__ = ["TEST_SEED", "INITS", "RESULT_FORMAT", "SeizureConfig", "seizure_data", "SeizureTask", "SeizureDetector",
           "initialise_", "train", "run", "evaluate", "load_results", "step_seconds", "main"]

TEST_SEED = 24680
"""Seed of the fixed test set (independent of a run's seed)."""
INITS = ("default", "critical", "critical-delta")
RESULT_FORMAT = "mftrnn.seizure/1"
MAX_ELEMENTS = 2 ** 27
"""Largest batch or test set (elements of float32), checked before anything is allocated."""
F_MIN, F_MAX = 0.08, 0.2
"""Range of the burst's frequency, cycles per step."""


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------

def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DomainError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0):
        raise DomainError(f"{name} must be a finite positive number, got {value!r}")
    return v


@dataclass(frozen=True)
class SeizureConfig:
    """Everything that determines a run's numbers (the task, the model, the optimisation, the seed, the device)."""

    cell: str = "gru"
    init: str = "default"
    T: int = 300
    electrodes: int = 8
    burst_electrodes: int = 3
    burst_length: int = 24
    amplitude: float = 3.0
    onset_fraction: float = 0.2
    channels: int = 16
    kernel_size: int = 3
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-2
    clip: float = 1.0
    eval_every: int = 50
    n_test: int = 256
    seed: int = 0
    device: str = "cpu"

    def validated(self) -> "SeizureConfig":
        """The configuration checked; :class:`~mftrnn.DomainError` (one line) on a bad value."""
        if not isinstance(self.cell, str) or self.cell not in cells("gated"):
            raise DomainError(f"cell must be a registered gated cell ({', '.join(cells('gated'))}), got "
                              f"{self.cell!r}")
        if self.init not in INITS:
            raise DomainError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name, minimum in (("T", 2), ("electrodes", 1), ("burst_electrodes", 1), ("burst_length", 1),
                              ("channels", 1), ("kernel_size", 1), ("steps", 1), ("batch_size", 1),
                              ("eval_every", 1), ("n_test", 2), ("seed", 0)):
            _int(name, getattr(self, name), minimum)
        if self.kernel_size % 2 == 0:
            raise DomainError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.burst_electrodes > self.electrodes:
            raise DomainError(f"burst_electrodes ({self.burst_electrodes}) exceeds electrodes ({self.electrodes})")
        amplitude, lr, clip = (_positive(n, getattr(self, n)) for n in ("amplitude", "lr", "clip"))
        phi = _positive("onset_fraction", self.onset_fraction)
        if phi >= 1:
            raise DomainError(f"onset_fraction must lie in (0, 1), got {self.onset_fraction!r}")
        if self.burst_length > int(phi * self.T):
            raise DomainError(f"the burst ({self.burst_length} steps) does not fit in the first onset_fraction * T = "
                              f"{int(phi * self.T)} steps; raise T or onset_fraction, or shorten the burst")
        for what, n in (("a training batch", self.batch_size * self.T * self.electrodes),
                        ("the test set", self.n_test * self.T * self.electrodes)):
            if n > MAX_ELEMENTS:
                raise DomainError(f"{what} would hold {n:.3g} elements (at most {MAX_ELEMENTS:.3g}); lower T, "
                                  f"batch_size or n_test")
        if not isinstance(self.device, str) or not (self.device in ("cpu", "cuda") or
                                                    (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise DomainError(f"device must be 'cpu', 'cuda' or 'cuda:i', got {self.device!r}")
        return dataclasses.replace(self, amplitude=amplitude, lr=lr, clip=clip, onset_fraction=phi)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def task_parameters(self) -> dict:
        return {k: getattr(self, k) for k in ("T", "electrodes", "burst_electrodes", "burst_length", "amplitude",
                                              "onset_fraction")}

    def label(self) -> str:
        return f"seizure T={self.T} {self.cell} {self.init}"

    def filename(self) -> str:
        """E.g. ``seizure-gru-critical-T300-s0.json``."""
        return f"seizure-{self.cell}-{self.init}-T{self.T}-s{self.seed}.json"


# ---------------------------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------------------------

def seizure_data(n: int, T: int, generator: torch.Generator, *, electrodes: int = 8, burst_electrodes: int = 3,
                 burst_length: int = 24, amplitude: float = 1.5, onset_fraction: float = 0.2) -> dict:
    r"""``n`` recordings of the task (module docstring), drawn from ``generator`` (CPU).

    Returns ``{"x": (n, T, electrodes) float32, "y": (n,) float32 labels, "onset": (n,) long (-1 without burst),
    "first": (n,) long (first burst electrode, -1 without), "frequency": (n,) float (0 without)}``. Parameters as
    in :class:`SeizureConfig` (validate them there)."""
    g = generator
    x = torch.randn(n, T, electrodes, generator=g)
    y = (torch.rand(n, generator=g) < 0.5)
    latest = int(onset_fraction * T) - burst_length
    onset = torch.randint(0, latest + 1, (n,), generator=g)
    first = torch.randint(0, electrodes, (n,), generator=g)
    freq = F_MIN + (F_MAX - F_MIN) * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    u = torch.arange(burst_length, dtype=torch.float32)
    window = torch.sin(math.pi * (u + 1) / (burst_length + 1)) ** 2
    wave = amplitude * window[None, :] * torch.sin(2 * math.pi * freq[:, None] * u[None, :] + phase[:, None])
    rows = torch.nonzero(y).flatten()
    for i in rows.tolist():
        t0, e0 = int(onset[i]), int(first[i])
        cols = [(e0 + k) % electrodes for k in range(burst_electrodes)]
        x[i, t0:t0 + burst_length, cols] += wave[i][:, None]
    none = ~y
    onset[none], first[none], freq[none] = -1, -1, 0.0
    return {"x": x, "y": y.float(), "onset": onset, "first": first, "frequency": freq}


class SeizureTask:
    """Mini-batches and the fixed test set of a validated :class:`SeizureConfig` (on ``device``)."""

    def __init__(self, config: SeizureConfig, device="cpu"):
        self.params = config.task_parameters()
        self.device = torch.device(device)
        test = seizure_data(config.n_test, generator=torch.Generator().manual_seed(TEST_SEED), **self.params)
        self.test_x, self.test_y = test["x"].to(self.device), test["y"].to(self.device)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple:
        d = seizure_data(batch_size, generator=generator, **self.params)
        return d["x"].to(self.device), d["y"].to(self.device)

    def describe(self) -> dict:
        return {"name": "seizure-like burst detection", **self.params, "frequency_range": [F_MIN, F_MAX],
                "noise": "white N(0, 1) per electrode and step", "test_seed": TEST_SEED,
                "n_test": int(self.test_y.numel()), "test_positives": int(self.test_y.sum()),
                "memory_steps": self.params["T"] - int(self.params["onset_fraction"] * self.params["T"])}


# ---------------------------------------------------------------------------------------------------------------
# Model and initialisation
# ---------------------------------------------------------------------------------------------------------------

class SeizureDetector(nn.Module):
    """A :class:`~mftrnn.nets.conv.ConvGatedRNN` over the electrodes (one input channel) and a linear read-out of the
    last output averaged over electrodes. ``forward(x)``: ``x`` ``(batch, T, electrodes)`` -> logits ``(batch,)``."""

    def __init__(self, cell, channels: int, kernel_size: int = 3):
        super().__init__()
        self.rnn = ConvGatedRNN(get_cell(cell), channels, 1, kernel_size)
        self.readout = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.transpose(0, 1).unsqueeze(2))
        return self.readout(out[-1].mean(dim=-1)).squeeze(-1)


def initialise_(model: SeizureDetector, init: str, T: int, generator: torch.Generator) -> dict:
    """Initialise the recurrent part in place by ``init`` (:data:`INITS`); return what was chosen (JSON-ready)."""
    if init == "default":
        return {"scheme": init, "bounds": default_conv_init_(model.rnn, generator)}
    kernel = "delta-orthogonal" if init == "critical-delta" else "gaussian"
    out = critical_conv_init_(model.rnn, T, kernel=kernel, generator=generator, samples=20_000)
    out.pop("layers")
    return {"scheme": init, **jsonable(out)}


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: SeizureDetector, task: SeizureTask, chunk: int = 128) -> dict:
    """``test_loss`` (mean binary cross-entropy) and ``test_accuracy`` on the fixed test set."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, task.test_y.numel(), chunk):
        x, y = task.test_x[i:i + chunk], task.test_y[i:i + chunk]
        logits = model(x)
        loss += float(F.binary_cross_entropy_with_logits(logits, y, reduction="sum"))
        correct += int(((logits > 0).float() == y).sum())
    model.train(was)
    n = task.test_y.numel()
    return {"test_loss": loss / n, "test_accuracy": correct / n}


def load_results(paths) -> list[dict]:
    """Result dicts from a folder (its ``*.json``), a file, or a list of files / dicts."""
    return load_result_files(paths, (RESULT_FORMAT,), f"a seizure-task result (format {RESULT_FORMAT!r})")


_CHECKPOINT_KEYS = ("model", "optimizer", "batch_rng", "init")
"""The experiment's checkpoint keys, beside :data:`~mftrnn.experiments.harness.RUN_CHECKPOINT_KEYS` and
``"commits"``."""


def train(config: SeizureConfig, out, *, checkpoint=None, checkpoint_every="60s", stop_after: int | None = None,
          force: bool = False, require_clean: bool = False, command: str | None = None,
          log: Callable[[str], None] | None = print) -> dict:
    """Train one configuration and write its JSON result to ``out`` (atomically); return the result dict.

    ``out`` ends in ``.json`` in an existing folder; it and the checkpoint (default
    :func:`~mftrnn.experiments.harness.default_checkpoint_path`) are locked for the run. A finished result of the
    same configuration is returned as it is (another configuration: an error unless ``force``). A checkpoint of the
    same configuration is verified and resumed; it is deleted when the run ends. ``checkpoint_every``: a wall time
    (``"60s"``) or ``"100steps"``. ``stop_after``: stop with a checkpoint after this many steps (returns
    ``{"status": "interrupted", ...}``). ``require_clean``: refuse uncommitted changes to tracked files. The
    bookkeeping is :class:`~mftrnn.experiments.harness.TrainingRun`'s."""
    config = config.validated()
    out, ckpt = run_files(out, checkpoint)
    every = parse_checkpoint_every(checkpoint_every)
    if stop_after is not None:
        _int("stop_after", stop_after, 0)
    device = resolve_device(config.device)
    git = git_state()
    refuse_unclean(git, require_clean)
    run = TrainingRun(config, out, ckpt, git=git, require_clean=require_clean, command=command, log=log)
    with run.lock():
        return _train(run, config, every, stop_after, force, device)


def _train(run: TrainingRun, config: SeizureConfig, every, stop_after, force, device) -> dict:
    existing = run.existing_result(load_results, force)
    if existing is not None:
        return existing
    task = SeizureTask(config, device)
    torch.manual_seed(config.seed)  # PyTorch's default initialisation of the read-out draws from it
    model = SeizureDetector(config.cell, config.channels, config.kernel_size)
    # a checkpoint holds the weights and the initialisation's record: the (costly) initialisation is skipped
    init = None if run.resuming else initialise_(model, config.init, config.T,
                                                 torch.Generator().manual_seed(config.seed))
    model.to(device)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    batch_gen = torch.Generator().manual_seed(config.seed + 1_000_003)

    load, state = optimizer_state(model, opt, batch_gen)
    st = run.resume(_CHECKPOINT_KEYS, load)
    if st is not None:
        init = st["init"]
    run.start(lambda: {**state(), "init": init})
    name, curve = run.out.name, run.curve
    if run.step == 0 and not curve:
        curve.append({"step": 0, "train_loss": None, **evaluate(model, task), "wall_s": round(run.wall(), 3)})
        run.log(f"{name}: step 0 test loss {curve[0]['test_loss']:.4f} acc {curve[0]['test_accuracy']:.3f}")
    model.train()
    while run.step < config.steps:
        stopped = run.interrupt(stop_after)
        if stopped is not None:
            return stopped
        x, y = task.train_batch(config.batch_size, batch_gen)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(params, config.clip))
        lv = float(loss.detach())
        if not (math.isfinite(lv) and math.isfinite(gnorm)):
            run.ckpt.unlink(missing_ok=True)
            raise ConvergenceError(f"{config.label()}: loss {lv} or gradient norm {gnorm} is not finite at step "
                                   f"{run.step}; lower --lr")
        opt.step()
        run.step += 1
        run.add_loss(lv)
        if run.step % config.eval_every == 0 or run.step == config.steps:
            curve.append({"step": run.step, "train_loss": run.train_loss(), **evaluate(model, task),
                          "wall_s": round(run.wall(), 3)})
            run.log(f"{name}: step {run.step}/{config.steps} train loss {curve[-1]['train_loss']:.4f} test loss "
                    f"{curve[-1]['test_loss']:.4f} acc {curve[-1]['test_accuracy']:.3f} ({run.wall():.0f} s)")
        run.maybe_checkpoint(every)
    prov = run.provenance(provenance(device, run.command))
    res = {"format": RESULT_FORMAT, "name": run.out.stem, "label": config.label(), "status": "finished",
           "config": config.to_dict(), "task": task.describe(), "init": init,
           "model": {"module": "ConvGatedRNN", "cell": config.cell, "channels": config.channels,
                     "kernel_size": config.kernel_size, "padding": "circular", "readout": "last step, mean over "
                     "electrodes", "parameters": sum(p.numel() for p in params)},
           "final": curve[-1], "best": max(curve, key=lambda p: p["test_accuracy"]), "curve": curve,
           "provenance": prov}
    res = run.finish(jsonable(res))
    run.log(f"{name}: finished, test accuracy {res['final']['test_accuracy']:.3f} in {prov['wall_time_s']:.0f} s")
    return res


def run(out_dir, *, seeds: Iterable[int] = (0, 1), cell_names: Iterable[str] = ("gru", "lstm"),
        inits: Iterable[str] = ("default", "critical"), T: int = 300, device: str = "cpu", command: str | None = None,
        log: Callable[[str], None] | None = print, **train_options) -> list[dict]:
    """Every configuration of ``cell_names`` x ``inits`` x ``seeds`` at length ``T`` (other :class:`SeizureConfig`
    fields through ``train_options`` when they are fields, the rest to :func:`train`), one result file each in
    ``out_dir`` (which must exist); finished ones are skipped, interrupted ones resumed."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise MftrnnError(f"output folder {str(out_dir)!r} does not exist; create it or choose another --out")
    fields = {f.name for f in dataclasses.fields(SeizureConfig)}
    cfg = {k: v for k, v in train_options.items() if k in fields}
    opts = {k: v for k, v in train_options.items() if k not in fields}
    configs = [SeizureConfig(cell=c, init=i, T=T, seed=s, device=device, **cfg).validated()
               for c in cell_names for i in inits for s in seeds]
    return [train(c, out_dir / c.filename(), command=command, log=log, **opts) for c in configs]


def step_seconds(config: SeizureConfig, repeats: int = 3) -> float:
    """The least wall time of ``repeats`` training steps (forward, backward, Adam) of ``config`` on this machine."""
    config = config.validated()
    device = resolve_device(config.device)
    task = SeizureTask(dataclasses.replace(config, n_test=2), device)
    model = SeizureDetector(config.cell, config.channels, config.kernel_size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen, best = torch.Generator().manual_seed(0), math.inf
    for _ in range(repeats):
        x, y = task.train_batch(config.batch_size, gen)
        t = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of a sweep of this experiment (``mftrnn seizure`` and ``python -m mftrnn.experiments.seizure``)."""
    p.add_argument("--out", required=True, help="existing folder for the result files")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    p.add_argument("--inits", nargs="+", default=["default", "critical"], choices=INITS)
    p.add_argument("--T", type=int, default=SeizureConfig.T)
    p.add_argument("--steps", type=int, default=SeizureConfig.steps)
    p.add_argument("--channels", type=int, default=SeizureConfig.channels)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint-every", default="60s")
    p.add_argument("--require-clean", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def run_from_args(args: argparse.Namespace, command: str) -> None:
    """Run the sweep that parsed ``args`` describe; ``command`` is recorded in every result's provenance."""
    torch.set_num_threads(_int("--threads", args.threads, 1))
    run(args.out, seeds=args.seeds, cell_names=args.cells, inits=args.inits, T=args.T, device=args.device,
        steps=args.steps, channels=args.channels, checkpoint_every=args.checkpoint_every,
        require_clean=args.require_clean, command=command)


def main(argv=None, prog: str = "python -m mftrnn.experiments.seizure") -> int:
    """``mftrnn seizure --out DIR --seeds 0 1 ...`` (or ``python -m mftrnn.experiments.seizure ...``; module
    docstring); errors in one line."""
    p = argparse.ArgumentParser(prog=prog, description="ConvGRU/ConvLSTM on a generated seizure-like detection task "
                                                       "(one rare burst early in T steps of noise, label read at the "
                                                       "end): default versus critical initialisation; one JSON result "
                                                       "with provenance per (cell, init, seed) in --out; reruns "
                                                       "resume from checkpoints and skip finished runs")
    args = add_arguments(p).parse_args(argv)
    try:
        run_from_args(args, shlex.join(prog.split() + list(sys.argv[1:] if argv is None else argv)))
    except MftrnnError as exc:
        prefix = "mftrnn: error" if prog.startswith("mftrnn") else "error"
        print(f"{prefix}: {one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Long-sequence training evidence for ``nn.LSTM`` and ``nn.GRU``: initialisation schemes on tasks whose difficulty
is set by a length :math:`T` (:mod:`mftrnn.experiments.memory_tasks`: the copy-memory task, padded sequential digits).

Initialisation schemes (:data:`INIT_SCHEMES`, :func:`initialise_`).  The network is first built by PyTorch (its
default: every weight and bias :math:`\mathcal U(-1/\sqrt N, 1/\sqrt N)`, drawn from the global RNG seeded with the
run's seed); a scheme then overwrites what it names, in every layer and direction.  PyTorch adds two biases to each
gate, ``bias_ih`` and ``bias_hh``; a scheme that sets a gate's bias :math:`b` sets ``bias_ih`` :math:`= b` and
``bias_hh`` :math:`= 0`, so the **sum**, the only thing the network sees, is :math:`b`.

* ``default`` -- PyTorch's own initialisation, untouched.
* ``forget1`` -- LSTM: forget-gate bias :math:`b_f = 1` (Gers et al. 2000; Jozefowicz et al. 2015), the other
  parameters PyTorch's.  GRU: update-gate bias :math:`b_z = +1`.  Sign convention: PyTorch's GRU computes
  :math:`h_t = (1 - z)\odot n + z\odot h_{t-1}`, so :math:`z \to 1` keeps the memory and a *positive* :math:`b_z`
  is the analogue of a positive forget bias (papers that write :math:`h_t = (1 - z) h_{t-1} + z \tilde h`, e.g.
  Chung et al. 2014, have the opposite sign).
* ``chrono`` -- Tallec & Ollivier (2018): LSTM :math:`b_f = \ln u`, :math:`b_i = -b_f` with :math:`u \sim
  \mathcal U(1, T_{max} - 1)` independently per unit, so that the forget gate :math:`\sigma(b_f) = u/(1+u)` gives
  the leaky integrator :math:`c_t \approx \sigma(b_f) c_{t-1} + \ldots` characteristic times
  :math:`1/(1 - \sigma(b_f)) = 1 + u` spread over :math:`[2, T_{max}]`; the other biases and all weights
  PyTorch's.  GRU analogue (ours, by the same argument): :math:`b_z = \ln u`, :math:`u \sim \mathcal U(1, T_{max} -
  1)` -- with :math:`h_t = (1 - z) n + z h_{t-1}` the update gate is the forget gate and :math:`1 - z` the input
  gate, so one bias plays both roles of the LSTM's pair; :math:`T_{max}` is the task's ``memory_length`` (the
  sequence length :math:`L`, :mod:`mftrnn.experiments.memory_tasks`).  Needs :math:`T_{max} \ge 3`.
* ``critical`` -- the mean-field critical initialisation, :func:`mftrnn.nets.gated_init.critical_lstm_init_` /
  :func:`mftrnn.nets.gated_init.critical_gru_init_` called with ``T = memory_length`` (looked up when used: the other
  schemes run without them; :func:`scheme_unavailable` says why one cannot run).

Training (:func:`train`).  One configuration (:class:`LongSeqConfig`: task, cell, init, :math:`T`, hidden width,
steps, learning rate, batch, optimiser ``adam`` or ``rmsprop``, gradient-norm clipping, seed, device), a readout
``nn.Linear`` of the hidden state at every step (copy) or at the last step (digits), mean cross-entropy, fresh
mini-batches from a generator seeded by the run's seed, and every ``eval_every`` steps the loss on the task's fixed
test set (copy: also the loss over the memoryless baseline, the recall accuracy per symbol and per sequence;
digits: the accuracy) -- the curve.  Run safety is :mod:`mftrnn.experiments.harness`'s: the result and the checkpoint
are locked, checkpoints are atomic and checksummed (model, optimiser, generator states, the curve and the running
sums) every ``checkpoint_every`` (a wall time or a number of steps) and the same call resumes them bit for bit on
the same device and thread count; a finished result of the same configuration is not redone; a non-finite loss or
gradient, or a loss above ``divergence_factor`` times the larger of the initial test loss and :math:`\ln`
(classes), records ``"status": "diverged"`` and raises :class:`~mftrnn.ConvergenceError`.  The JSON result carries
the provenance (command, git commit and dirty flag at every session, device, versions, threads, UTC dates, wall
and CPU time); ``require_clean=True`` (``--require-clean``) refuses to run from a checkout with uncommitted changes to
tracked files, for results meant to be committed.  ``device="cuda"`` runs the same code on a GPU (batches are drawn
on the CPU from the same generators and moved).

Grids (:func:`sweep_configs`, :data:`GRIDS`) list the configurations of a committed sweep (tasks x cells x inits x
:math:`T` x seeds); :func:`expected_wall_time` measures the cost of a training step and of an evaluation for each
distinct shape on this machine and predicts the total; :func:`run_sweep` runs (or resumes, or skips) them all.

Cost of a training step, measured with :func:`step_seconds` (copy task, Adam, clipping; one thread of a 2-core AMD
EPYC shared with other jobs, load average about 6; least of 3 steps, in seconds; under that load whole runs took
about twice as long per step, e.g. 0.094 s for the LSTM at T = 300, hidden 64, batch 32, evaluations included):

====  ======  =====  =====  =====
T     hidden  batch  LSTM   GRU
====  ======  =====  =====  =====
100   64      32     0.025  0.029
100   64      64     0.041  0.035
100   128     32     0.051  0.060
100   128     64     0.148  0.105
300   64      32     0.084  0.090
300   64      64     0.174  0.164
300   128     32     0.193  0.178
300   128     64     0.477  0.312
1000  64      32     0.340  0.338
1000  64      64     0.661  0.582
1000  128     32     0.833  0.920
1000  128     64     0.838  1.251
====  ======  =====  =====  =====

(digits, T = 1000, hidden 64, batch 32: 0.18 s LSTM, 0.28 s GRU.)  Hence the ``cpu`` grid's hidden 64 and batch 32:
a run of 2000 steps at T = 1000 takes about 12 minutes with its evaluations.  ``mftrnn longseq --sweep GRID
--out-dir DIR --plan`` measures again on the machine at hand and predicts a grid's total.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConvergenceError, DataError, DomainError, MftrnnError, UnknownCellError
from .harness import (default_checkpoint_path, jsonable as _jsonable, load_result_files, one_line as _one_line,
                      CheckpointEvery, TrainingRun, git_state, optimizer_state, parse_checkpoint_every, provenance,
                      refuse_unclean, resolve_device, run_files)
from .memory_tasks import MAX_ELEMENTS, PADS, CopyMemoryTask, PaddedDigits

__all__ = ["CELLS", "TASKS", "OPTIMIZERS", "DATASETS", "InitScheme", "INIT_SCHEMES", "register_init_scheme",
           "init_schemes", "scheme_unavailable", "initialise_", "gate_bias_sums", "LongSeqModel", "LongSeqConfig",
           "make_task", "train", "evaluate", "default_checkpoint_path", "load_results", "GRIDS", "sweep_configs",
           "step_seconds", "expected_wall_time", "run_sweep", "summary", "RESULT_FORMAT", "DIVERGENCE_FACTOR"]

CELLS = ("lstm", "gru")
"""Cells of this experiment: the registered cells computed by ``nn.LSTM`` and ``nn.GRU``."""
TASKS = ("copy", "digits")
OPTIMIZERS = ("adam", "rmsprop")
DATASETS = ("mnist", "sklearn")
RESULT_FORMAT = "mftrnn.longseq/1"
MAX_PARAMETERS = 2 ** 28
"""Largest number of recurrent parameters (1 GiB of float32), checked before anything is allocated."""
DIVERGENCE_FACTOR = 3.0
"""A loss above this times the larger of the initial test loss and ln(classes) means the run diverged."""

def _memory_gate(cell: str) -> str:
    """The gate whose bias sets the memory timescale, read off the cell description (LSTM f, GRU z)."""
    from ..theory.critical_gated import memory_gate
    return memory_gate(cell)


def _input_gate(cell: str) -> str | None:
    """The cell's separate input gate (LSTM i), None where there is none (GRU: its input factor is 1 - z)."""
    from ..theory.critical_gated import input_gate
    return input_gate(cell)


# ---------------------------------------------------------------------------------------------------------------
# Initialisation schemes
# ---------------------------------------------------------------------------------------------------------------

def _cell_name(module: nn.Module) -> str:
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return "lstm"
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return "gru"
    raise DomainError(f"the long-sequence initialisations take nn.LSTM, nn.LSTMCell, nn.GRU or nn.GRUCell, got "
                      f"{type(module).__name__}")


def _blocks(module: nn.Module) -> tuple[str, list]:
    """``(cell, [{gate: block}])`` per layer and direction; blocks hold views ``b`` (bias_ih), ``b_hh``."""
    from ..cells.registry import get_cell
    from ..nets.gated import _stacked_blocks

    cell = _cell_name(module)
    layers = _stacked_blocks(module, get_cell(cell).gates)
    if any(blk.b is None or blk.b_hh is None for layer in layers for blk in layer.values()):
        raise DomainError(f"{type(module).__name__} was built with bias=False; the schemes set gate biases")
    return cell, layers


@torch.no_grad()
def gate_bias_sums(module: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Per layer (and direction), ``{gate: bias_ih + bias_hh}`` -- the bias each gate's pre-activation sees."""
    _, layers = _blocks(module)
    return [{K: (blk.b + blk.b_hh).detach().clone() for K, blk in layer.items()} for layer in layers]


@torch.no_grad()
def _set_gate_bias(module: nn.Module, gate: str, values: Callable[[int], torch.Tensor]) -> None:
    """``bias_ih`` of ``gate`` := ``values(n)`` and its ``bias_hh`` := 0, in every layer and direction."""
    _, layers = _blocks(module)
    for layer in layers:
        blk = layer[gate]
        blk.b.copy_(values(blk.b.shape[0]))
        blk.b_hh.zero_()


def _summary(module: nn.Module) -> dict:
    """min / mean / max of each gate's bias sum over units (layer 0): what the scheme left in the module."""
    sums = gate_bias_sums(module)[0]
    return {K: {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())} for K, v in sums.items()}


def _check_memory_length(T, scheme: str) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise DomainError(f"the {scheme} initialisation needs an integer memory length T, got {T!r}")
    return int(T)


def _init_default(module, T, generator) -> dict:
    return {"note": "PyTorch's initialisation: every weight and bias U(-1/sqrt(N), 1/sqrt(N))"}


def _init_forget1(module, T, generator) -> dict:
    cell = _cell_name(module)
    gate = _memory_gate(cell)
    _set_gate_bias(module, gate, lambda n: torch.ones(n))
    note = (f"{cell.upper()} memory-gate bias b_{gate} = 1 (bias_ih_{gate} = 1, bias_hh_{gate} = 0; the gate of the "
            f"factor that keeps the state: {gate} -> 1 keeps the memory)")
    return {"note": note + "; everything else PyTorch's", "gate": gate, "bias": 1.0}


def _init_chrono(module, T, generator) -> dict:
    T = _check_memory_length(T, "chrono")
    if T < 3:
        raise DomainError(f"the chrono initialisation draws u ~ U(1, T - 1) and needs T >= 3, got T={T}")
    cell = _cell_name(module)
    gate, ig = _memory_gate(cell), _input_gate(cell)
    _, layers = _blocks(module)
    with torch.no_grad():
        for layer in layers:
            n = layer[gate].b.shape[0]
            u = 1.0 + (T - 2) * torch.rand(n, generator=generator, dtype=torch.float64)
            b = torch.log(u)
            layer[gate].b.copy_(b)
            layer[gate].b_hh.zero_()
            if ig is not None:
                layer[ig].b.copy_(-b)
                layer[ig].b_hh.zero_()
    note = (f"{cell.upper()} chrono (Tallec & Ollivier 2018): b_{gate} = ln u"
            + (f", b_{ig} = -b_{gate}" if ig is not None else f" (the analogue for a cell whose input factor is "
               f"1 - {gate})") + ", u ~ U(1, T - 1) per unit")
    return {"note": note + "; everything else PyTorch's", "T_max": T}


def _critical_function(cell: str):
    from ..nets import gated_init
    return getattr(gated_init, f"critical_{cell}_init_", None)


def _critical_unavailable(cell: str) -> str | None:
    if _critical_function(cell) is None:
        return (f"the critical initialisation of nn.{cell.upper()} is not available in this version "
                f"(mftrnn.nets.gated_init.critical_{cell}_init_ is missing)")
    return None


def _init_critical(module, T, generator) -> dict:
    T = _check_memory_length(T, "critical")
    cell = _cell_name(module)
    fn = _critical_function(cell)
    if fn is None:
        raise MftrnnError(_critical_unavailable(cell))
    kwargs = {"T": T}
    try:
        if "generator" in inspect.signature(fn).parameters:
            kwargs["generator"] = generator
    except (TypeError, ValueError):
        pass
    info = fn(module, **kwargs)
    return {"note": f"mftrnn.nets.gated_init.critical_{cell}_init_(module, T={T})", "T_max": T,
            "hyperparameters": _jsonable(info) if isinstance(info, dict) else None}


@dataclass(frozen=True)
class InitScheme:
    """An initialisation scheme: ``apply(module, T, generator) -> dict`` (what it did, JSON-ready) acts in place;
    ``unavailable(cell) -> str | None`` says why it cannot run for a cell (``None``: it can)."""

    name: str
    description: str
    apply: Callable
    unavailable: Callable = lambda cell: None


INIT_SCHEMES: dict[str, InitScheme] = {}


def register_init_scheme(scheme: InitScheme) -> None:
    """Add (or replace) a scheme of :data:`INIT_SCHEMES`."""
    INIT_SCHEMES[scheme.name] = scheme


for _s in (InitScheme("default", "PyTorch's default initialisation", _init_default),
           InitScheme("forget1", "memory-gate bias 1 (LSTM b_f = 1, GRU b_z = +1), else PyTorch's", _init_forget1),
           InitScheme("chrono", "Tallec & Ollivier: LSTM b_f = ln U(1, T-1), b_i = -b_f; GRU b_z = ln U(1, T-1)",
                      _init_chrono),
           InitScheme("critical", "mean-field critical initialisation (mftrnn.nets.gated_init.critical_{lstm,gru}_init_)",
                      _init_critical, _critical_unavailable)):
    register_init_scheme(_s)


def init_schemes() -> tuple[str, ...]:
    """Names of the registered schemes."""
    return tuple(INIT_SCHEMES)


def scheme_unavailable(scheme: str, cell: str) -> str | None:
    """Why ``scheme`` cannot initialise ``cell`` now (``None`` if it can)."""
    _check_scheme(scheme)
    _check_cell(cell)
    return INIT_SCHEMES[scheme].unavailable(cell)


def initialise_(module: nn.Module, scheme: str, T: int, generator: torch.Generator | None = None) -> dict:
    """Apply ``scheme`` to ``module`` (``nn.LSTM``/``nn.GRU``, built with PyTorch's default) with memory length
    ``T``; return ``{"scheme", "note", ..., "bias_sums": {gate: {min, mean, max}}}`` (the layer-0 biases the
    module holds afterwards)."""
    _check_scheme(scheme)
    cell = _cell_name(module)
    why = INIT_SCHEMES[scheme].unavailable(cell)
    if why:
        raise MftrnnError(why)
    info = INIT_SCHEMES[scheme].apply(module, T, generator)
    return {"scheme": scheme, **info, "bias_sums": _summary(module)}


def _check_scheme(scheme: str) -> None:
    if scheme not in INIT_SCHEMES:
        raise DomainError(f"unknown initialisation {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")


def _check_cell(cell: str) -> None:
    if cell not in CELLS:
        raise UnknownCellError(f"unknown cell {cell!r} for the long-sequence tasks; choose one of {', '.join(CELLS)}")


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------

class LongSeqModel(nn.Module):
    """The cell's sequence module (:func:`mftrnn.nets.registry.sequence_module`: ``nn.LSTM`` / ``nn.GRU``, one
    layer, ``batch_first``) and a linear readout of the hidden state at every step (``per_step``) or the last."""

    def __init__(self, cell: str, n_inputs: int, hidden: int, n_classes: int, per_step: bool):
        super().__init__()
        from ..nets.registry import sequence_module
        _check_cell(cell)
        self.cell, self.per_step = cell, bool(per_step)
        self.rnn = sequence_module(cell, n_inputs, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.readout(out if self.per_step else out[:, -1])


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LongSeqConfig:
    """Everything that determines a run's numbers (equal configurations give equal curves on one device and thread
    count).  ``T``: the copy task's delay or the digits' padding steps.  ``dataset`` (``mnist``, ``sklearn``),
    ``pad`` (``blank``, ``noise``) and ``n_train`` belong to the digits task (``None`` for the copy task)."""

    task: str = "copy"
    cell: str = "lstm"
    init: str = "default"
    T: int = 100
    hidden: int = 64
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    clip: float = 1.0
    eval_every: int = 100
    n_test: int = 500
    dataset: str | None = None
    pad: str | None = None
    n_train: int | None = None
    seed: int = 0
    device: str = "cpu"

    def validated(self) -> "LongSeqConfig":
        """A copy with the digits' defaults filled in; :class:`~mftrnn.DomainError` (or a subclass) on bad values."""
        if self.task not in TASKS:
            raise DomainError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        _check_cell(self.cell)
        _check_scheme(self.init)
        _int("T", self.T, 1 if self.task == "copy" else 0, MAX_ELEMENTS)
        for name in ("hidden", "steps", "batch_size", "eval_every", "n_test"):
            _int(name, getattr(self, name), 1, MAX_ELEMENTS)
        _int("seed", self.seed, 0)
        lr, clip = _positive("lr", self.lr), _positive("clip", self.clip)
        if self.optimizer not in OPTIMIZERS:
            raise DomainError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        dataset, pad, n_train = self.dataset, self.pad, self.n_train
        if self.task == "copy":
            given = [k for k in ("dataset", "pad", "n_train") if getattr(self, k) is not None]
            if given:
                raise DomainError(f"{', '.join(given)} belong(s) to the digits task, not the copy task")
        else:
            dataset = "mnist" if dataset is None else dataset
            pad = "blank" if pad is None else pad
            if dataset not in DATASETS:
                raise DataError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
            if pad not in PADS:
                raise DomainError(f"unknown padding {pad!r}; choose one of {', '.join(PADS)}")
            if n_train is not None:
                n_train = _int("n_train", n_train, 1)
        n_inputs = 10 if self.task == "copy" else (8 if dataset == "sklearn" else 28)
        length = int(self.T) + (20 if self.task == "copy" else n_inputs)
        for what, n in (("a training batch", self.batch_size * length * n_inputs),
                        ("the test set", self.n_test * length * n_inputs)):
            if n > MAX_ELEMENTS:
                raise DomainError(f"{what} would hold {n:.3g} elements (at most {MAX_ELEMENTS:.3g}); lower T, "
                                  f"batch_size or n_test")
        from ..cells.registry import get_cell
        gates = len(get_cell(self.cell).gates)
        n_params = gates * self.hidden * (self.hidden + n_inputs + 2)
        if n_params > MAX_PARAMETERS:
            raise DomainError(f"hidden={self.hidden} gives {n_params:.3g} recurrent parameters (at most "
                              f"{MAX_PARAMETERS:.3g})")
        if not isinstance(self.device, str) or not (self.device in ("cpu", "cuda") or
                                                    (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise DomainError(f"device must be 'cpu', 'cuda' or 'cuda:i', got {self.device!r}")
        return dataclasses.replace(self, T=int(self.T), hidden=int(self.hidden), steps=int(self.steps),
                                   batch_size=int(self.batch_size), eval_every=int(self.eval_every),
                                   n_test=int(self.n_test), seed=int(self.seed), lr=lr, clip=clip, dataset=dataset,
                                   pad=pad, n_train=n_train)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LongSeqConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DomainError(f"unknown configuration key(s) {sorted(unknown)}")
        return cls(**d)

    def label(self) -> str:
        """E.g. ``copy T=1000 lstm chrono`` or ``digits T=300 (mnist, noise) gru forget1``."""
        digits = (self.dataset or "mnist", self.pad or "blank")  # the defaults validated() fills in
        what = f"{self.task} T={self.T}" + (f" ({digits[0]}, {digits[1]})" if self.task == "digits" else "")
        return f"{what} {self.cell} {self.init}"

    def filename(self) -> str:
        """E.g. ``copy-T1000-lstm-chrono-s0.json`` (digits: ``digits-mnist-blank-T300-gru-default-s1.json``)."""
        digits = [self.dataset or "mnist", self.pad or "blank"]
        what = [self.task] + (digits if self.task == "digits" else []) + [f"T{self.T}"]
        return "-".join(what + [self.cell, self.init]) + f"-s{self.seed}.json"


def make_task(config: LongSeqConfig, data=None, data_dir=None, download: bool = False, device="cpu"):
    """The task object of a validated ``config`` (digits: ``data`` or :func:`~mftrnn.experiments.seqdigits.load_dataset`)."""
    if config.task == "copy":
        return CopyMemoryTask(config.T, n_test=config.n_test, device=device)
    if data is None:
        from .seqdigits import load_dataset
        data = load_dataset(config.dataset, data_dir=data_dir, download=download)
    elif data.name != config.dataset:
        raise DataError(f"the data given are {data.name!r} but the configuration says {config.dataset!r}")
    return PaddedDigits(data, config.T, pad=config.pad, n_train=config.n_train, n_test=config.n_test, device=device)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every target (every step of every sequence for the copy task)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate(model: LongSeqModel, task, chunk: int = 250) -> dict:
    """Test metrics on the task's fixed test set: ``test_loss`` (mean cross-entropy per target) and, for the copy
    task, ``loss_over_baseline`` (test loss / memoryless baseline), ``recall_accuracy`` (fraction of the recalled
    symbols right) and ``sequence_accuracy`` (sequences with all symbols right); for the digits ``test_accuracy``."""
    was = model.training
    model.eval()
    loss_sum, n_targets, correct, n_seq_right, n_seq = 0.0, 0, 0, 0, 0
    for x, y in task.test_batches(chunk):
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        n_targets += y.numel()
        if task.per_step:
            hit = logits[:, -task.n_copy:].argmax(-1) == y[:, -task.n_copy:]
            correct += int(hit.sum())
            n_seq_right += int(hit.all(dim=1).sum())
        else:
            correct += int((logits.argmax(-1) == y).sum())
        n_seq += y.shape[0]
    model.train(was)
    loss = loss_sum / n_targets
    if task.per_step:
        return {"test_loss": loss, "loss_over_baseline": loss / task.baseline,
                "recall_accuracy": correct / (n_seq * task.n_copy), "sequence_accuracy": n_seq_right / n_seq}
    return {"test_loss": loss, "test_accuracy": correct / n_seq}


def load_results(paths) -> list[dict]:
    """Result dicts from a folder (its ``*.json``, sorted), a file, or a list of files / dicts."""
    return load_result_files(paths, (RESULT_FORMAT,), f"a long-sequence result (format {RESULT_FORMAT!r})")


_CHECKPOINT_KEYS = ("model", "optimizer", "batch_rng", "torch_rng", "init")
"""The experiment's checkpoint keys, beside :data:`~mftrnn.experiments.harness.RUN_CHECKPOINT_KEYS` and
``"commits"``."""


def _optimizer(config: LongSeqConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.RMSprop(params, lr=config.lr)


def train(config: LongSeqConfig, out: str | os.PathLike, *, data=None, data_dir=None, download: bool = False,
          checkpoint: str | os.PathLike | None = None, checkpoint_every="60s", stop_after: int | None = None,
          force: bool = False, require_clean: bool = False, command: str | None = None,
          log: Callable[[str], None] | None = print, divergence_factor: float = DIVERGENCE_FACTOR) -> dict:
    r"""Train one configuration and write its JSON result to ``out`` (atomically); return the result dict.

    * ``out`` must end in ``.json`` and lie in an existing folder; it and the checkpoint (default
      :func:`default_checkpoint_path`) are locked (:class:`~mftrnn.experiments.harness.RunLock`) for the run.
    * A result of the same configuration in ``out`` is returned without training (a diverged one raises its
      :class:`~mftrnn.ConvergenceError` again); another configuration or an unreadable file is an error unless
      ``force``.
    * ``checkpoint_every``: ``"60s"``, ``"5min"``, a number of seconds, or ``"200steps"``
      (:func:`~mftrnn.experiments.harness.parse_checkpoint_every`); a checkpoint of the same configuration is
      verified and resumed; it is deleted when the run ends.  ``stop_after``: stop with a checkpoint once this many
      steps are done (returns ``{"status": "interrupted", ...}``, writes no result).
    * ``require_clean``: refuse to start (or resume) unless the package runs from a git checkout without changes
      to tracked files, at the commit of the checkpoint if there is one.
    * ``data``: a :class:`~mftrnn.experiments.seqdigits.DigitsData` for the digits task (else loaded from
      ``data_dir`` / the data root; ``download`` fetches missing MNIST files).
    """
    config = config.validated()
    out, ckpt = run_files(out, checkpoint)
    every = parse_checkpoint_every(checkpoint_every)
    divergence_factor = _positive("divergence_factor", divergence_factor)
    if stop_after is not None:
        stop_after = _int("stop_after", stop_after, 0)
    why = scheme_unavailable(config.init, config.cell)
    if why:
        raise MftrnnError(why)
    device = resolve_device(config.device)
    git = git_state()
    refuse_unclean(git, require_clean)
    run = TrainingRun(config, out, ckpt, git=git, require_clean=require_clean, command=command, log=log)
    with run.lock():
        return _train(run, config, data, data_dir, download, every, stop_after, force, divergence_factor, device)


def _train(run: TrainingRun, config: LongSeqConfig, data, data_dir, download, every: CheckpointEvery, stop_after,
           force, divergence_factor, device) -> dict:
    existing = run.existing_result(load_results, force)
    if existing is not None:
        return existing
    task = make_task(config, data, data_dir, download, device)
    torch.manual_seed(config.seed)  # PyTorch's default initialisation of the RNN and the readout draws from it
    model = LongSeqModel(config.cell, task.n_inputs, config.hidden, task.n_classes, task.per_step)
    init = initialise_(model.rnn, config.init, task.memory_length, torch.Generator().manual_seed(config.seed))
    model.to(device)
    params = list(model.parameters())
    opt = _optimizer(config, params)
    batch_gen = torch.Generator().manual_seed(config.seed + 1_000_003)

    load, state = optimizer_state(model, opt, batch_gen, torch_rng=True)
    st = run.resume(_CHECKPOINT_KEYS, load)
    if st is not None:
        init = st["init"]
    run.start(lambda: {**state(), "init": init})
    name, curve = run.out.name, run.curve

    def result(status: str, diverged: dict | None = None) -> dict:
        best = min(curve, key=lambda p: p["test_loss"]) if curve else None
        prov = run.provenance(provenance(device, run.command), data=getattr(task, "sources", {}))
        return {"format": RESULT_FORMAT, "name": run.out.stem, "label": config.label(), "status": status,
                "config": config.to_dict(), "task": task.describe(), "init": _jsonable(init),
                "model": {"module": type(model.rnn).__name__, "hidden": config.hidden, "layers": 1,
                          "readout": "every step" if task.per_step else "last step",
                          "parameters": sum(p.numel() for p in params)},
                "final": curve[-1] if curve else None, "best": best, "diverged": diverged, "curve": curve,
                "provenance": prov}

    def diverge(message: str):
        run.diverge(result("diverged", {"step": run.step, "message": message}), message)

    def point(metrics: dict, train_loss) -> dict:
        return {"step": run.step, "train_loss": train_loss, **metrics, "wall_s": round(run.wall(), 3)}

    if run.step == 0 and not curve:
        m = evaluate(model, task)
        curve.append(point(m, None))
        run.log(f"{name}: step 0 {_fmt_metrics(m)}")
    initial = curve[0]["test_loss"]
    if not math.isfinite(initial):
        diverge(f"the initial test loss is {initial}")
    max_loss = divergence_factor * max(math.log(task.n_classes), initial)
    bound = f"{divergence_factor:g} x max(ln {task.n_classes}, initial test loss {initial:.4g}) = {max_loss:.4g}"
    model.train()
    while run.step < config.steps:
        stopped = run.interrupt(stop_after)
        if stopped is not None:
            return stopped
        x, y = task.train_batch(config.batch_size, batch_gen)
        loss = _loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(params, config.clip))
        lv = float(loss.detach())
        if not math.isfinite(lv):
            diverge(f"training loss is {lv}")
        if lv > max_loss:
            diverge(f"training loss {lv:.4g} > {bound}")
        if not math.isfinite(gnorm):
            diverge(f"gradient norm is {gnorm} (loss {lv:.4g})")
        opt.step()
        run.step += 1
        run.add_loss(lv)
        if run.step % config.eval_every == 0 or run.step == config.steps:
            m = evaluate(model, task)
            if not math.isfinite(m["test_loss"]):
                diverge(f"test loss is {m['test_loss']}")
            if m["test_loss"] > max_loss:
                diverge(f"test loss {m['test_loss']:.4g} > {bound}")
            curve.append(point(m, run.train_loss()))
            run.log(f"{name}: step {run.step}/{config.steps} train loss {curve[-1]['train_loss']:.4f} "
                    f"{_fmt_metrics(m)} ({run.wall():.0f} s)")
        run.maybe_checkpoint(every)
    res = run.finish(result("finished"))
    run.log(f"{name}: finished, {_fmt_metrics(res['final'])} in {res['provenance']['wall_time_s']:.0f} s")
    return res


def _fmt_metrics(m: dict) -> str:
    parts = [f"test loss {m['test_loss']:.4f}"]
    if "loss_over_baseline" in m:
        parts.append(f"({m['loss_over_baseline']:.3f} x baseline) recall {m['recall_accuracy']:.3f}")
    if "test_accuracy" in m:
        parts.append(f"acc {m['test_accuracy']:.4f}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------------------

GRIDS: dict[str, dict] = {
    # tests: seconds in all (copy T=10, sklearn digits padded by 10)
    "tiny": dict(tasks={"copy": dict(T=(10,), hidden=16, steps=40, batch_size=16, lr=1e-2, eval_every=20,
                                     n_test=64),
                        "digits": dict(T=(10,), dataset="sklearn", hidden=16, steps=40, batch_size=16, lr=1e-2,
                                       eval_every=20, n_test=100)},
                 cells=CELLS, inits=("default", "forget1", "chrono", "critical"), seeds=(0,)),
    # the committed CPU runs: one thread, hidden 64, batch 32; T up to 1000 (L = 1020 / 1028 steps).  Learning rates
    # from pilots (LSTM, seed 0): copy T = 50 and 300 at Adam 1e-2 -- chrono leaves the memoryless baseline, the
    # default does not (at 1e-3, hidden 32, neither did in 2000 steps at T = 50); digits T = 300 at 1e-3 -- chrono
    # reaches 70 % test accuracy in 600 steps, the default stays at chance
    "cpu": dict(tasks={"copy": dict(T=(100, 300, 1000), hidden=64, steps=2000, batch_size=32, lr=1e-2,
                                    eval_every=100, n_test=500),
                       "digits": dict(T=(100, 300, 1000), dataset="mnist", pad="blank", hidden=64, steps=2000,
                                      batch_size=32, lr=1e-3, eval_every=100, n_test=1000)},
                cells=CELLS, inits=("default", "forget1", "chrono", "critical"), seeds=(0, 1)),
    # a lent GPU: wider, longer, more steps and seeds (not run yet)
    "gpu": dict(tasks={"copy": dict(T=(100, 300, 1000, 2000), hidden=128, steps=10000, batch_size=128, lr=1e-2,
                                    eval_every=250, n_test=1000),
                       "digits": dict(T=(100, 300, 1000), dataset="mnist", pad="blank", hidden=128, steps=10000,
                                      batch_size=128, lr=1e-3, eval_every=250, n_test=10000)},
                cells=CELLS, inits=("default", "forget1", "chrono", "critical"), seeds=(0, 1, 2), device="cuda"),
}
"""Grid name -> tasks (each with its lengths ``T`` and fixed fields), cells, inits, seeds (and a device)."""


def sweep_configs(grid: str, seeds: Iterable[int] | None = None, tasks: Iterable[str] | None = None,
                  inits: Iterable[str] | None = None, **overrides) -> list[LongSeqConfig]:
    """The configurations of a grid: for each task, :math:`T`, cell, init and seed (in that nesting order), the
    task's fields of :data:`GRIDS` with ``overrides`` on top; ``seeds``, ``tasks``, ``inits`` restrict it."""
    if grid not in GRIDS:
        raise DomainError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")
    g = GRIDS[grid]
    seeds = tuple(g["seeds"] if seeds is None else seeds)
    tasks = tuple(g["tasks"] if tasks is None else tasks)
    inits = tuple(g["inits"] if inits is None else inits)
    for t in tasks:
        if t not in g["tasks"]:
            raise DomainError(f"grid {grid!r} has no task {t!r}; it has {', '.join(g['tasks'])}")
    for s in inits:
        _check_scheme(s)
    chosen = {"task", "cell", "init", "T", "seed"}  # the grid's axes
    bad = sorted((set(overrides) - {f.name for f in dataclasses.fields(LongSeqConfig)}) | (set(overrides) & chosen))
    if bad:
        raise DomainError(f"sweep_configs cannot override {', '.join(bad)} (the grid's axes are task, T, cell, "
                          f"init, seed; restrict them with tasks=, inits=, seeds=)")
    out = []
    for task in tasks:
        fields = dict(g["tasks"][task])
        Ts = fields.pop("T")
        base = dict(fields, task=task, **({"device": g["device"]} if "device" in g else {}), **overrides)
        for T in Ts:
            for cell in g["cells"]:
                for init in inits:
                    for seed in seeds:
                        out.append(LongSeqConfig(**dict(base, T=T, cell=cell, init=init, seed=seed)).validated())
    return out


def step_seconds(config: LongSeqConfig, repeats: int = 3) -> dict:
    """Measured seconds of one training step and of one evaluation of ``config``'s shapes on this machine (random
    inputs of the task's shape: no data needed; threads as set).  Returns ``{"step_s", "step_min_s", "eval_s"}``:
    the median and the least of ``repeats`` timed steps after one warm-up (the least is what the machine can do, the
    median what it does under its present load), and one evaluation of the test set."""
    config = config.validated()
    device = resolve_device(config.device)
    n_inputs = 10 if config.task == "copy" else (8 if config.dataset == "sklearn" else 28)
    rows = 0 if config.task == "copy" else n_inputs
    length = config.T + 20 if config.task == "copy" else rows + config.T
    n_classes = 9 if config.task == "copy" else 10
    per_step = config.task == "copy"
    g = torch.Generator().manual_seed(0)
    model = LongSeqModel(config.cell, n_inputs, config.hidden, n_classes, per_step).to(device)
    opt = _optimizer(config, list(model.parameters()))
    x = torch.randn(config.batch_size, length, n_inputs, generator=g).to(device)
    shape = (config.batch_size, length) if per_step else (config.batch_size,)
    y = torch.randint(n_classes, shape, generator=g).to(device)

    def one_step():
        loss = _loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    one_step()
    times = []
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        xe = torch.randn(min(config.n_test, 250), length, n_inputs, generator=g).to(device)
        t0 = time.perf_counter()
        model(xe)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        fwd = time.perf_counter() - t0
    return {"step_s": float(np.median(times)), "step_min_s": min(times), "eval_s": fwd * config.n_test / xe.shape[0]}


def expected_wall_time(configs: Iterable[LongSeqConfig], timings: dict | None = None, repeats: int = 3,
                       log: Callable[[str], None] | None = None) -> dict:
    """Predicted wall time of ``configs``: ``steps * step_s + (steps // eval_every + 1) * eval_s`` each, with the
    per-shape times of :func:`step_seconds` (measured once per distinct task, cell, T, hidden, batch, dataset,
    n_test, device; or taken from ``timings``, keyed as returned).  Returns ``{"total_s", "runs", "timings"}``."""
    configs = [c.validated() for c in configs]
    timings = dict(timings or {})
    runs = []
    for c in configs:
        key = f"{c.task}|{c.dataset}|{c.cell}|T{c.T}|h{c.hidden}|b{c.batch_size}|n{c.n_test}|{c.device}"
        if key not in timings:
            timings[key] = step_seconds(c, repeats=repeats)
            if log:
                log(f"{key}: {timings[key]['step_s']:.3f} s/step, {timings[key]['eval_s']:.2f} s/evaluation")
        t = timings[key]
        runs.append({"name": c.filename(), "seconds": c.steps * t["step_s"] + (c.steps // c.eval_every + 1) *
                     t["eval_s"]})
    return {"total_s": sum(r["seconds"] for r in runs), "runs": runs, "timings": timings}


def run_sweep(grid: str, out_dir: str | os.PathLike, *, seeds: Iterable[int] | None = None,
              tasks: Iterable[str] | None = None, inits: Iterable[str] | None = None, data_dir=None,
              download: bool = False, command: str | None = None, log: Callable[[str], None] | None = print,
              require_clean: bool = False, checkpoint_every="60s", **overrides) -> list[dict]:
    """Run (or resume, or skip when done) every configuration of :func:`sweep_configs` into ``out_dir``; a
    diverging run is recorded and the sweep goes on.  Every scheme is checked to be available before any run."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DomainError(f"output folder {str(out_dir)!r} does not exist or is not a folder")
    configs = sweep_configs(grid, seeds=seeds, tasks=tasks, inits=inits, **overrides)
    missing = sorted({why for c in configs for why in [scheme_unavailable(c.init, c.cell)] if why})
    if missing:
        raise MftrnnError("; ".join(missing) + " (leave those inits out of the sweep)")
    datasets: dict = {}
    results = []
    for cfg in configs:
        data = None
        if cfg.task == "digits":
            if cfg.dataset not in datasets:
                from .seqdigits import load_dataset
                datasets[cfg.dataset] = load_dataset(cfg.dataset, data_dir=data_dir, download=download)
            data = datasets[cfg.dataset]
        try:
            results.append(train(cfg, out_dir / cfg.filename(), data=data, command=command, log=log,
                                 require_clean=require_clean, checkpoint_every=checkpoint_every))
        except ConvergenceError as exc:
            if log:
                log(f"mftrnn: {_one_line(exc)}")
            results.extend(load_results([out_dir / cfg.filename()]))
    return results


def summary(results) -> list[dict]:
    """One row per result: label, seed, status, final and best test loss (copy: also over the baseline, recall
    accuracy; digits: accuracy), wall time."""
    rows = []
    for r in load_results(results):
        f, b = r.get("final") or {}, r.get("best") or {}
        row = {"label": r["label"], "seed": r["config"]["seed"], "status": r["status"],
               "final_test_loss": f.get("test_loss"), "best_test_loss": b.get("test_loss")}
        for k in ("loss_over_baseline", "recall_accuracy", "test_accuracy"):
            if k in f:
                row[f"final_{k}"] = f[k]
        row["wall_time_s"] = r["provenance"]["wall_time_s"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------

def _int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DomainError(f"{name} must be an integer >= {minimum}, got {_short(value)}")
    if maximum is not None and value > maximum:
        raise DomainError(f"{name} must be an integer <= {maximum}, got {_short(value)}")
    return int(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + f"... ({len(text)} characters)"


def _positive(name: str, value) -> float:
    if isinstance(value, bool):
        raise DomainError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DomainError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise DomainError(f"{name} must be finite and > 0, got {value!r}")
    return v



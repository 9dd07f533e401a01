r"""Tasks whose difficulty is set by a length :math:`T`: the copy-memory task and padded sequential digits.

Both return mini-batches ``(inputs, targets)`` with ``inputs`` of shape ``(B, L, n_inputs)`` (``batch_first``,
float32) and draw them from a caller's :class:`torch.Generator` (on the CPU, then moved to the task's device), so a
run that checkpoints the generator's state resumes with the same batches.  The test sets are fixed: they depend on
the task's parameters and :data:`TEST_SEED` only, never on a run's seed, so every run of a grid is scored on the
same sequences.

Copy memory (:class:`CopyMemoryTask`; Hochreiter & Schmidhuber 1997, in the convention of Arjovsky, Shah & Bengio
2016).  The alphabet has :math:`K + 2 = 10` input symbols: 0 the blank, :math:`1..K` (:math:`K = 8`) the data
symbols, :math:`K + 1 = 9` the delimiter.  A sequence has length :math:`L = T + 2S` (:math:`S = 10` symbols to
copy):

* steps :math:`0..S-1`: :math:`S` data symbols drawn uniformly and independently from :math:`1..K`;
* steps :math:`S..S+T-2`: :math:`T - 1` blanks; step :math:`S + T - 1`: the delimiter (the delay: :math:`T` steps,
  :math:`S..S+T-1`, between the symbols and the recall);
* steps :math:`S+T..L-1`: :math:`S` blanks, during which the network must output the :math:`S` symbols in order.

Targets (one per step, :math:`K + 1 = 9` classes: 0 blank, :math:`1..K` the symbols) are blank for the first
:math:`T + S` steps and the copied symbols for the last :math:`S`; symbol :math:`k` is recalled exactly
:math:`T + S` steps after it was shown.  The loss is the cross-entropy averaged over all :math:`L` steps.  The
**memoryless baseline** -- the best predictor that ignores the inputs (it may count steps): blank with certainty for
the first :math:`T + S` steps, uniform over the :math:`K` symbols for the last :math:`S` -- has the loss

.. math::

    \mathcal L_0(T) = \frac{S \ln K}{T + 2S} = \frac{10 \ln 8}{T + 20}

(:func:`copy_memory_baseline`); a network stuck at it has learnt nothing about memory.

Padded sequential digits (:class:`PaddedDigits`): an image fed row by row (``rows`` steps of ``cols`` features,
normalised as :class:`mftrnn.experiments.seqdigits.SequentialDigits` does: per-pixel training mean removed, one
global scale giving the inputs per-component second moment :math:`R`), then :math:`T` steps of padding -- blanks
(zeros) or Gaussian noise :math:`\mathcal N(0, \sigma_{noise}^2)` per component, by default
:math:`\sigma_{noise}^2 = R`, the image steps' average second moment -- and the class is read at the last step.
The sequence length is :math:`L = \text{rows} + T`; the first row is :math:`L - 1` steps before the read-out.
Data come from :func:`mftrnn.experiments.seqdigits.load_dataset` (MNIST from the data root, verified by sha256;
scikit-learn's 8x8 digits for tests).

Both tasks report ``memory_length`` :math:`= L`, the timescale budget the ``chrono`` and ``critical``
initialisations of :mod:`mftrnn.experiments.longseq` are given (the longest dependency of either task is shorter
than :math:`L`: :math:`T + S` for the copy, :math:`L - 1` for the digits).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError, DomainError
from .seqdigits import DigitsData, SequentialDigits, fixed_test_subset

__all__ = ["TEST_SEED", "N_COPY", "N_SYMBOLS", "BLANK", "MAX_ELEMENTS", "copy_memory_baseline",
           "copy_memory_sequences", "CopyMemoryTask", "PaddedDigits", "PADS"]

TEST_SEED = 12345
"""Seed of every fixed test set (copy sequences, the digits' padding noise); independent of a run's seed."""

N_COPY = 10
"""Symbols to copy, :math:`S`."""
N_SYMBOLS = 8
"""Data symbols, :math:`K` (the alphabet of the copy task has :math:`K + 2` inputs: blank, symbols, delimiter)."""
BLANK = 0
"""Input and target index of the blank."""

MAX_ELEMENTS = 2 ** 31 - 1
"""Largest number of elements of one batch tensor (``B * L * n_inputs``); larger sizes are refused before
anything is allocated."""

PADS = ("blank", "noise")


def _int(name: str, value, minimum: int) -> int:
    """``value`` as an int in ``[minimum, MAX_ELEMENTS]``, else one-line :class:`~mftrnn.DomainError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        text = repr(value)
        raise DomainError(f"{name} must be an integer >= {minimum}, got "
                          f"{text if len(text) <= 40 else text[:20] + '...'}")
    if value > MAX_ELEMENTS:
        raise DomainError(f"{name} must be an integer <= {MAX_ELEMENTS}, got {str(value)[:20]}...")
    return int(value)


def _check_size(batch_size: int, length: int, width: int, what: str) -> None:
    n = batch_size * length * width
    if n > MAX_ELEMENTS:
        raise DomainError(f"{what}: a batch of {batch_size} x {length} steps x {width} inputs is {n:.3g} elements "
                          f"(at most {MAX_ELEMENTS:.3g}); use a smaller batch or T")


def copy_memory_baseline(T: int, n_copy: int = N_COPY, n_symbols: int = N_SYMBOLS) -> float:
    r"""The memoryless baseline loss of the copy task, :math:`S \ln K / (T + 2S)` (module docstring): the
    cross-entropy per step of predicting blank for the first :math:`T + S` steps and the uniform law over the
    :math:`K` symbols for the last :math:`S`."""
    T = _int("T", T, 1)
    n_copy, n_symbols = _int("n_copy", n_copy, 1), _int("n_symbols", n_symbols, 2)
    return n_copy * math.log(n_symbols) / (T + 2 * n_copy)


def copy_memory_sequences(batch_size: int, T: int, generator: torch.Generator | None = None,
                          n_copy: int = N_COPY, n_symbols: int = N_SYMBOLS) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``batch_size`` copy sequences of delay ``T`` as integer tensors ``(inputs, targets)``, each
    ``(batch_size, T + 2 n_copy)`` (``int64``, on the CPU).

    Inputs: symbols ``1..n_symbols`` at steps ``0..n_copy-1``, blanks (0), the delimiter ``n_symbols + 1`` at step
    ``n_copy + T - 1``, blanks.  Targets: blank (0) everywhere except the last ``n_copy`` steps, which hold the
    symbols in order (module docstring).  The symbols are ``torch.randint`` draws from ``generator``.
    """
    batch_size, T = _int("batch_size", batch_size, 1), _int("T", T, 1)
    n_copy, n_symbols = _int("n_copy", n_copy, 1), _int("n_symbols", n_symbols, 2)
    L = T + 2 * n_copy
    _check_size(batch_size, L, n_symbols + 2, "copy task")
    symbols = torch.randint(1, n_symbols + 1, (batch_size, n_copy), generator=generator)
    inputs = torch.zeros(batch_size, L, dtype=torch.int64)
    targets = torch.zeros(batch_size, L, dtype=torch.int64)
    inputs[:, :n_copy] = symbols
    inputs[:, n_copy + T - 1] = n_symbols + 1
    targets[:, L - n_copy:] = symbols
    return inputs, targets


class CopyMemoryTask:
    r"""The copy-memory task of delay ``T`` (module docstring) with a fixed test set of ``n_test`` sequences.

    ``n_inputs`` = :math:`K + 2` (one-hot inputs), ``n_classes`` = :math:`K + 1` (per-step targets), ``length`` =
    :math:`L = T + 2S`, ``memory_length`` = :math:`L`, ``baseline`` = :func:`copy_memory_baseline`.
    :meth:`train_batch` draws fresh sequences; :meth:`test_batches` yields the fixed test set in chunks.
    """

    name = "copy"
    per_step = True

    def __init__(self, T: int, n_test: int = 500, device="cpu", n_copy: int = N_COPY, n_symbols: int = N_SYMBOLS):
        self.T = _int("T", T, 1)
        self.n_test = _int("n_test", n_test, 1)
        self.n_copy, self.n_symbols = _int("n_copy", n_copy, 1), _int("n_symbols", n_symbols, 2)
        self.n_inputs, self.n_classes = self.n_symbols + 2, self.n_symbols + 1
        self.length = self.T + 2 * self.n_copy
        self.memory_length = self.length
        self.baseline = copy_memory_baseline(self.T, self.n_copy, self.n_symbols)
        self.device = torch.device(device)
        self.test_inputs, self.test_targets = copy_memory_sequences(
            self.n_test, self.T, torch.Generator().manual_seed(TEST_SEED), self.n_copy, self.n_symbols)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """One-hot float32 ``(B, L, n_inputs)`` on the task's device."""
        return torch.nn.functional.one_hot(inputs.to(self.device), self.n_inputs).to(torch.float32)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh sequences: one-hot inputs ``(B, L, n_inputs)`` and targets ``(B, L)`` on the device."""
        inputs, targets = copy_memory_sequences(batch_size, self.T, generator, self.n_copy, self.n_symbols)
        return self.encode(inputs), targets.to(self.device)

    def test_batches(self, chunk: int = 250):
        """The fixed test set, ``chunk`` sequences at a time, as :meth:`train_batch` returns them."""
        for s in range(0, self.n_test, chunk):
            yield self.encode(self.test_inputs[s:s + chunk]), self.test_targets[s:s + chunk].to(self.device)

    def describe(self) -> dict:
        return {"task": self.name, "T": self.T, "length": self.length, "memory_length": self.memory_length,
                "n_copy": self.n_copy, "n_symbols": self.n_symbols, "n_inputs": self.n_inputs,
                "n_classes": self.n_classes, "n_test": self.n_test, "test_seed": TEST_SEED,
                "baseline_loss": self.baseline,
                "baseline": f"memoryless: {self.n_copy} ln {self.n_symbols} / (T + {2 * self.n_copy})",
                "loss": "cross-entropy per step, averaged over all L steps"}


class PaddedDigits:
    r"""Sequential digits padded with ``T`` steps of blanks or noise (module docstring), read out at the last step.

    ``data``: a :class:`mftrnn.experiments.seqdigits.DigitsData` (MNIST, or scikit-learn's digits in tests).  The
    images are normalised by :class:`~mftrnn.experiments.seqdigits.SequentialDigits` (``R``, ``n_train``); ``pad``
    is ``"blank"`` or ``"noise"`` (standard deviation ``noise_std``, default :math:`\sqrt R`).  The test set is the
    fixed subset :func:`~mftrnn.experiments.seqdigits.fixed_test_subset` of ``n_test`` images, with noise drawn
    from a generator seeded :data:`TEST_SEED` afresh at every evaluation (the same noise each time).
    """

    name = "digits"
    per_step = False

    def __init__(self, data: DigitsData, T: int, pad: str = "blank", R: float = 1.0, noise_std: float | None = None,
                 n_train: int | None = None, n_test: int = 1000, device="cpu"):
        self.T = _int("T", T, 0)
        if pad not in PADS:
            raise DomainError(f"unknown padding {pad!r}; choose one of {', '.join(PADS)}")
        self.pad = pad
        self.images = SequentialDigits(data, T_pad=0, R=R, pixel=False, n_train=n_train, device=device)
        self.R = self.images.R
        if noise_std is None:
            noise_std = math.sqrt(self.R)
        try:
            noise_std = float(noise_std)
        except (TypeError, ValueError):
            raise DomainError(f"noise_std must be a number, got {noise_std!r}") from None
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise DomainError(f"noise_std must be finite and >= 0, got {noise_std!r}")
        self.noise_std = noise_std if pad == "noise" else 0.0
        self.rows, self.n_inputs, self.n_classes = self.images.rows, self.images.cols, 10
        self.length = self.rows + self.T
        self.memory_length = self.length
        self.n_test = _int("n_test", n_test, 1)
        if self.n_test > len(data.y_test):
            raise DataError(f"n_test={self.n_test} exceeds the {len(data.y_test):,} test images of {data.name}")
        self.test_idx = fixed_test_subset(self.n_test, len(data.y_test))
        self.device = self.images.device
        self.data_name, self.sources = data.name, dict(data.sources)
        _check_size(1, self.length, self.n_inputs, "padded digits")

    @property
    def n_train(self) -> int:
        return self.images.n_train

    def _padded(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        B = x.shape[0]
        _check_size(B, self.length, self.n_inputs, "padded digits")
        if self.T == 0:
            return x
        if self.pad == "blank":
            tail = x.new_zeros(B, self.T, self.n_inputs)
        else:
            tail = (self.noise_std * torch.randn(B, self.T, self.n_inputs, generator=generator)).to(x.device)
        return torch.cat([x, tail], dim=1)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` training images drawn uniformly (with replacement), padded: ``(B, L, cols)``, ``(B,)``."""
        idx = torch.randint(self.n_train, (batch_size,), generator=generator)
        x, y = self.images.batch(idx, "train")
        return self._padded(x, generator), y

    def test_batches(self, chunk: int = 250):
        """The fixed test subset in chunks, with the same padding noise at every call."""
        gen = torch.Generator().manual_seed(TEST_SEED)
        for s in range(0, self.n_test, chunk):
            x, y = self.images.batch(self.test_idx[s:s + chunk], "test")
            yield self._padded(x, gen), y

    def describe(self) -> dict:
        return {"task": self.name, "dataset": self.data_name, "T": self.T, "pad": self.pad, "rows": self.rows,
                "cols": self.n_inputs, "length": self.length, "memory_length": self.memory_length,
                "R": self.R, "noise_std": self.noise_std, "input_scale": self.images.scale,
                "n_train": self.n_train, "n_test": self.n_test, "test_seed": TEST_SEED, "n_classes": self.n_classes,
                "chance_loss": math.log(self.n_classes),
                "normalisation": "x = s (p - m): per-pixel training mean m, one global s with mean x^2 = R"}

r"""Word-level language modelling with gated and ungated RNNs: minimalRNN, LSTM, GRU and the vanilla tanh RNN.

The model (:class:`LanguageModel`) is the classic one of Zaremba, Sutskever & Vinyals (2014): a word embedding,
a stack of recurrent layers, and a linear decoder to the vocabulary,

.. math::

    x_t = E\,w_t, \qquad h^{(l)}_t = \mathrm{cell}\big(h^{(l)}_{t-1}, h^{(l-1)}_t\big),\ h^{(0)}_t = x_t,
    \qquad p(w_{t+1} \mid w_{\le t}) = \mathrm{softmax}\big(D\,h^{(L)}_t + d\big),

trained to minimise the mean cross entropy :math:`\mathcal L = -\langle \ln p(w_{t+1}\mid w_{\le t})\rangle`
by truncated back-propagation through time (windows of ``bptt`` steps; the state is carried across windows
and detached), with gradient-norm clipping and plain SGD.  The perplexity is :math:`e^{\mathcal L}`.
Dropout (probability ``dropout``) acts on the embedding output, between layers and before the decoder;
``tie_weights`` shares the decoder matrix with the embedding, :math:`D = E` (needs ``emb_size == hidden_size``).

Cells (``cell``): every registered cell with a fast sequence module (:data:`CELLS`, from the registry
:mod:`mftrnn.nets.registry`; the recurrent layers are :func:`mftrnn.nets.registry.sequence_module`). Today:

* ``"minimal"`` -- :class:`mftrnn.nets.layers.MinimalRNN` with the library's conventions: every layer embeds its
  input, :math:`z_t = \Phi x_t + \phi_b`, then :math:`u_t = \sigma(W h_{t-1} + V z_t + b)`,
  :math:`h_t = u_t \odot h_{t-1} + (1-u_t) \odot z_t`, initialised by :func:`mftrnn.nets.layers.init_minimal_rnn_`
  (:math:`W_{ij}\sim\mathcal N(0,\sigma_w^2/N)`, :math:`V_{ij}\sim\mathcal N(0,\sigma_v^2/N)`,
  :math:`b_i\sim\mathcal N(\mu_b,\sigma_b^2)`, :math:`\Phi_{ij}\sim\mathcal N(0,\sigma_\phi^2/N_{in})`) with
  the hyperparameters of :class:`MinimalInit`;
* ``"lstm"``, ``"gru"``, ``"vanilla"`` (:math:`h_t = \tanh(W h_{t-1} + V x_t + b)`) -- PyTorch's
  :class:`torch.nn.LSTM`, :class:`torch.nn.GRU`, :class:`torch.nn.RNN` (cuDNN kernels on a GPU), initialised
  as in Zaremba et al.: every entry uniform in :math:`[-a, a]` with :math:`a` = ``init_range``.

The rule behind the two: a sequence module whose implementation registers its own mean-field initialiser (the
library's ``MinimalRNN``: :func:`~mftrnn.nets.layers.init_minimal_rnn_`) is initialised by it with the
hyperparameters of :class:`MinimalInit`; every other one (torch's modules) uniformly.

The word embedding and the decoder are initialised uniformly in :math:`[-a, a]` for every cell.

Loss scale.  The loss here is the mean over the :math:`T \times B` tokens of a window; Zaremba et al. sum it
over the :math:`T` steps (and average over the batch).  Their learning rate :math:`\eta` and clipping norm
:math:`c` therefore correspond to ``lr`` :math:`= \eta T` and ``clip`` :math:`= c/T` here; the presets
:data:`PRESETS` ``small``, ``medium`` and ``large`` are their three configurations translated this way
(``small``: :math:`2\times200`, :math:`\eta=1`, :math:`c=5`, :math:`T=20`, no dropout, 13 epochs, the rate
halved every epoch after the 4th; ``medium``: :math:`2\times650`, dropout 0.5, :math:`T=35`, 39 epochs,
divided by 1.2 after the 6th; ``large``: :math:`2\times1500`, dropout 0.65, 55 epochs, divided by 1.15 after
the 14th, :math:`c=10`).  ``tiny`` (:math:`1\times 64`, 2,000-word vocabulary) runs on the WikiText-2 excerpt
shipped in ``mftrnn/experiments/corpora/wikitext-2-excerpt`` in seconds on one thread (8 s of training and
evaluation on a busy two-core machine; 100 s there with two threads), for tests and the book.  The ``small``
learning rate (20) is Zaremba et al.'s for the LSTM; the minimalRNN diverges with it (the committed runs use 2).

Learning-rate schedules (``schedule``): ``"step"`` (Zaremba et al.: epoch :math:`i = 0, 1, \dots` uses
``lr / lr_decay ** max(0, i + 1 - decay_start)``) and ``"plateau"`` (divide the rate by ``lr_decay`` after
every epoch whose validation loss is not below the best so far).  The test perplexity is that of the
parameters with the best validation loss.

Runs (:func:`train`) write an atomic checkpoint (temporary file + ``os.replace``) after every epoch and, within
an epoch, every ``checkpoint_every`` training batches or ``checkpoint_every_s`` seconds (``--checkpoint-every``,
the same syntax and meaning in ``mftrnn lm`` and ``mftrnn digits``: ``60``, ``60s``, ``5min``, ``1h`` of wall
time, a bare number being seconds, or ``500steps``), holding the
model, the optimizer, the learning rate, the RNG states, the position (epoch, batch), the carried hidden state, the
running sums of the epoch and the history, with a checksum of its content
(:func:`mftrnn.experiments.harness.save_checkpoint`); running the same configuration again verifies it (a damaged
file is an error that names the file to delete) and resumes from it, reproducing the uninterrupted run exactly
(same device and thread count).  The result and checkpoint files are locked while a run uses them
(:class:`mftrnn.experiments.harness.RunLock`): a second run on them is refused.  A finished run (its result file
has ``"status": "finished"`` and the same configuration) is not redone.  A non-finite loss or gradient, or a
batch loss above ``divergence_factor`` :math:`\times \ln V` (far worse than guessing uniformly), stops training
with :class:`mftrnn.ConvergenceError`; the last good checkpoint is kept.  The result file (JSON) holds the
configuration, parameter counts, per-epoch train/valid perplexity, the test perplexity and the provenance
(command line, git commit and dirty flag, device, torch version, UTC dates, wall time).

Data parallelism (:mod:`mftrnn.experiments.parallel`): launched as ``torchrun --nproc-per-node K -m mftrnn lm ...``,
a run trains one replica per process with :class:`torch.nn.parallel.DistributedDataParallel` (gloo on the CPU,
NCCL on GPUs): each process holds ``batch_size / K`` of the batch's token streams, the averaged gradient is that of
the whole batch, so every step equals the single-process step up to floating-point order
(``tests/test_lm_distributed.py``); rank 0 alone writes checkpoints (with the whole batch's carried state) and the
result, and a run resumes from its checkpoint with any number of processes (with dropout, only with the same
number: each process has its own dropout stream).

Command line: ``mftrnn lm CELL --preset small --corpus ptb --out result.json`` (see ``mftrnn lm --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConvergenceError, DataError, MftrnnError
from .._validate import float_argument
from .harness import (CheckpointEvery, RunLock, check_output, checkpoint_cadence, load_checkpoint,
                      parse_checkpoint_every, provenance, resolve_device, save_checkpoint, utc_now, write_json_atomic)
from .data import SPLITS, Corpus, batchify, bptt_batches, build_vocab, load_corpus, tokenize
from . import parallel
from ..nets.registry import LiveNames, sequence_cells, sequence_implementation, sequence_module, zero_state

__all__ = [
    "CELLS",
    "CORPORA",
    "PRESETS",
    "PUBLISHED",
    "SMALL_COMPARISON",
    "SCHEDULES",
    "EXCERPT_DIR",
    "EXCERPT_SHA256",
    "UNK",
    "MinimalInit",
    "LMConfig",
    "LanguageModel",
    "preset",
    "load_excerpt",
    "load_lm_corpus",
    "restrict_vocab",
    "unigram_perplexity",
    "evaluate_checkpoint",
    "count_parameters",
    "match_hidden_size",
    "build_model",
    "evaluate",
    "learning_rate",
    "train",
    "read_result",
    "provenance",
    "add_arguments",
    "run_cli",
]

CELLS = LiveNames(sequence_cells)
"""Recurrent cells: those of the cell registry with a fast sequence module (:func:`mftrnn.nets.registry.sequence_cells`,
read at every access): the vanilla tanh RNN, the minimalRNN, PyTorch's LSTM and GRU."""

CORPORA = ("ptb", "wikitext-2", "wikitext-2-excerpt")
"""Corpora: Penn Treebank and WikiText-2 (from the data folder, :func:`mftrnn.experiments.data.load_corpus`) and the
WikiText-2 excerpt shipped with the repository (:func:`load_excerpt`)."""

SCHEDULES = ("step", "plateau")
"""Learning-rate schedules, see :func:`learning_rate`."""

UNK = "<unk>"
"""Token that replaces out-of-vocabulary words (WikiText-2 and PTB already use it for rare words)."""

EXCERPT_DIR = Path(__file__).resolve().parent / "corpora" / "wikitext-2-excerpt"
"""Folder of the WikiText-2 excerpt shipped inside the package (``{train,valid,test}.txt``; package data)."""

EXCERPT_SHA256: dict[str, str] = {
    "train.txt": "32bb5cfc8e8bc227811cfc82f5cf33185a2da2a6dec410e5acc78eb15675f406",
    "valid.txt": "ac33b413ec0596de7b1d3c7aaa8b239933f62e969ed1ad9c5e719ae84205efa7",
    "test.txt": "d7ae43b549cdfb279ff807a0f400e75e3e857cc843a3b37dbbe981bd4e47d4c4",
}
"""sha256 of the excerpt files (also listed in the excerpt's README)."""

RESULT_FORMAT = "mftrnn-lm-result/1"
CHECKPOINT_FORMAT = "mftrnn-lm-checkpoint/1"


# --------------------------------------------------------------------------------------------------------
# Configuration and presets
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MinimalInit:
    r"""Mean-field initialisation of the minimalRNN layers (:func:`mftrnn.nets.layers.init_minimal_rnn_`).

    :math:`W_{ij}\sim\mathcal N(0,\sigma_w^2/N)` (or :math:`\sigma_w O` if ``orthogonal``),
    :math:`V_{ij}\sim\mathcal N(0,\sigma_v^2/N)`, :math:`b_i\sim\mathcal N(\mu_b,\sigma_b^2)`,
    :math:`\Phi_{ij}\sim\mathcal N(0,\sigma_\phi^2/N_{in})`, :math:`(\phi_b)_i\sim\mathcal N(0,\sigma_{\phi b}^2)`.
    Defaults are the library's (:func:`mftrnn.nets.layers.init_minimal_rnn_`) except :math:`\sigma_\phi = 5`: the word
    embedding is drawn uniformly in :math:`[-a, a]` (second moment :math:`a^2/3`), so the first layer sees
    inputs of second moment :math:`R = \sigma_\phi^2 a^2/3` (0.083 for :math:`a = 0.1`; 0.0033 with
    :math:`\sigma_\phi = 1`, too small a signal for SGD to start from in our pilot runs).
    """

    sigma_w: float = 1.0
    sigma_v: float = 1.0
    sigma_b: float = 0.0
    mu_b: float = 0.0
    sigma_phi: float = 5.0
    sigma_phib: float = 0.0
    orthogonal: bool = False


@dataclass(frozen=True)
class LMConfig:
    """Everything that defines a language-modelling run (and nothing about where or how fast it runs).

    Two runs with equal configurations give the same numbers on the same device; the checkpoint and the result
    file store it, and resuming or skipping a finished run requires it to match.
    """

    cell: str = "lstm"
    corpus: str = "ptb"
    hidden_size: int = 200
    num_layers: int = 2
    emb_size: int | None = None  # None: equal to hidden_size
    dropout: float = 0.0
    tie_weights: bool = False
    batch_size: int = 20
    eval_batch_size: int = 10
    bptt: int = 20
    lr: float = 20.0
    lr_decay: float = 2.0
    schedule: str = "step"
    decay_start: int = 4
    clip: float = 0.25
    epochs: int = 13
    init_range: float = 0.1
    seed: int = 0
    max_vocab: int | None = None  # keep the most frequent words of the training split; others -> <unk>
    max_batches: int | None = None  # training batches per epoch (None: the whole split)
    divergence_factor: float = 3.0
    minimal: MinimalInit = field(default_factory=MinimalInit)
    preset: str | None = None  # name of the preset it started from (informative)

    @property
    def embedding_size(self) -> int:
        """``emb_size``, or ``hidden_size`` when ``emb_size`` is ``None``."""
        return self.hidden_size if self.emb_size is None else self.emb_size

    def validate(self) -> "LMConfig":
        """Raise :class:`mftrnn.MftrnnError` naming the first invalid field; return ``self``."""
        _check_cell(self.cell)
        if self.corpus not in CORPORA:
            raise MftrnnError(f"unknown corpus {self.corpus!r}; choose one of {', '.join(CORPORA)}")
        if self.schedule not in SCHEDULES:
            raise MftrnnError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        ints = dict(hidden_size=self.hidden_size, num_layers=self.num_layers, batch_size=self.batch_size,
                    eval_batch_size=self.eval_batch_size, bptt=self.bptt, epochs=self.epochs)
        ints.update({k: v for k, v in (("emb_size", self.emb_size), ("max_vocab", self.max_vocab),
                                        ("max_batches", self.max_batches)) if v is not None})
        for name, v in ints.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MftrnnError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_vocab is not None and self.max_vocab < 2:
            raise MftrnnError(f"max_vocab must be >= 2 (room for {UNK} and one word), got {self.max_vocab}")
        if isinstance(self.decay_start, bool) or not isinstance(self.decay_start, int) or self.decay_start < 0:
            raise MftrnnError(f"decay_start must be an integer >= 0, got {self.decay_start!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MftrnnError(f"seed must be an integer, got {self.seed!r}")
        positive = dict(lr=self.lr, init_range=self.init_range, divergence_factor=self.divergence_factor)
        for name, v in positive.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise MftrnnError(f"{name} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise MftrnnError(f"clip must be a finite number >= 0 (0: no clipping), got {self.clip!r}")
        if not (math.isfinite(self.lr_decay) and self.lr_decay >= 1):
            raise MftrnnError(f"lr_decay must be a finite number >= 1 (a divisor), got {self.lr_decay!r}")
        if not (math.isfinite(self.dropout) and 0 <= self.dropout < 1):
            raise MftrnnError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise MftrnnError(f"tie_weights needs emb_size == hidden_size, got {self.embedding_size} != "
                              f"{self.hidden_size}")
        m = self.minimal
        for name in ("sigma_w", "sigma_v", "sigma_b", "sigma_phi", "sigma_phib"):
            v = getattr(m, name)
            if not (math.isfinite(v) and v >= 0):
                raise MftrnnError(f"minimal init {name} must be a finite number >= 0, got {v!r}")
        if not math.isfinite(m.mu_b):
            raise MftrnnError(f"minimal init mu_b must be finite, got {m.mu_b!r}")
        return self

    def replace(self, **changes) -> "LMConfig":
        """A copy with some fields changed (``minimal`` may be given as a dict of :class:`MinimalInit` fields)."""
        if isinstance(changes.get("minimal"), dict):
            changes["minimal"] = dataclasses.replace(self.minimal, **changes["minimal"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dict (``minimal`` as a nested dict)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`mftrnn.MftrnnError`."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MftrnnError(f"unknown configuration field(s): {', '.join(unknown)}")
        if isinstance(d.get("minimal"), dict):
            d["minimal"] = MinimalInit(**d["minimal"])
        return cls(**d)


PRESETS: dict[str, dict] = {
    # Zaremba et al. (2014) "small", non-regularised: eta = 1, c = 5, T = 20 -> lr = 20, clip = 0.25
    "small": dict(hidden_size=200, num_layers=2, dropout=0.0, batch_size=20, bptt=20, lr=20.0, clip=5.0 / 20,
                  epochs=13, schedule="step", lr_decay=2.0, decay_start=4, init_range=0.1),
    # "medium": eta = 1, c = 5, T = 35 -> lr = 35, clip = 5/35
    "medium": dict(hidden_size=650, num_layers=2, dropout=0.5, batch_size=20, bptt=35, lr=35.0, clip=5.0 / 35,
                   epochs=39, schedule="step", lr_decay=1.2, decay_start=6, init_range=0.05),
    # "large": eta = 1, c = 10, T = 35 -> lr = 35, clip = 10/35
    "large": dict(hidden_size=1500, num_layers=2, dropout=0.65, batch_size=20, bptt=35, lr=35.0,
                  clip=10.0 / 35, epochs=55, schedule="step", lr_decay=1.15, decay_start=14, init_range=0.04),
    # seconds on one CPU core: the shipped WikiText-2 excerpt, 2,000 most frequent words
    "tiny": dict(corpus="wikitext-2-excerpt", hidden_size=64, num_layers=1, dropout=0.0, batch_size=16,
                 bptt=20, lr=5.0, clip=0.25, epochs=1, schedule="plateau", lr_decay=4.0, decay_start=0,
                 init_range=0.1, max_vocab=2000),
}
"""Named configurations (fields of :class:`LMConfig`); see the module docstring."""

#: Published (validation, test) perplexities of the LSTM on the Penn Treebank, Zaremba, Sutskever & Vinyals
#: (2014), Table 1, by preset.
PUBLISHED = {"small": (120.7, 114.5), "medium": (86.2, 82.7), "large": (82.2, 78.4)}

#: The trained-to-the-end comparison of the ``small`` preset on the Penn Treebank: result name -> the arguments
#: of ``mftrnn lm``. The LSTM follows Zaremba et al.'s recipe exactly (the preset); the recipe has no published
#: rate for the GRU and the minimalRNN, which take the best rates of the 200-window scan (``--lr 10`` and
#: ``--lr 2``; the minimalRNN diverges at the LSTM's 20). ``-eqparams``: the hidden size at which the cell has
#: the small LSTM's total parameter count. The minimalRNN keeps :class:`MinimalInit`'s defaults (gate bias
#: ``mu_b = 0``, the library's convention: an untrained memory ``xi`` below one step at this input scale; the gate
#: is learnt within the 20-step windows, and a longer initial memory is the ``--mu-b`` experiment of the medium
#: runs).
SMALL_COMPARISON = {
    "lstm": "lstm --preset small",
    "gru": "gru --preset small --lr 10",
    "minimal": "minimal --preset small --lr 2",
    "minimal-eqparams": "minimal --preset small --lr 2 --match-params lstm",
    "gru-eqparams": "gru --preset small --lr 10 --match-params lstm",
}


def preset(name: str, cell: str = "lstm", **overrides) -> LMConfig:
    """The :class:`LMConfig` of preset ``name`` for ``cell``, with ``overrides`` applied, validated."""
    if name not in PRESETS:
        raise MftrnnError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = dict(PRESETS[name])
    base.update(cell=cell, preset=name)
    minimal = overrides.pop("minimal", None)
    cfg = LMConfig(**base).replace(**overrides)
    if minimal is not None:
        cfg = cfg.replace(minimal=minimal)
    return cfg.validate()


# --------------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _encode_with_unk(tokens: list[str], stoi: dict[str, int]) -> torch.Tensor:
    """Indices of ``tokens``; words outside ``stoi`` map to :data:`UNK` (which must be in ``stoi``)."""
    unk = stoi[UNK]
    return torch.tensor([stoi.get(t, unk) for t in tokens], dtype=torch.int64)


def load_excerpt(data_dir: str | os.PathLike | None = None) -> Corpus:
    """The WikiText-2 excerpt shipped in ``mftrnn/experiments/corpora/wikitext-2-excerpt`` (or ``data_dir``), verified.

    The files' sha256 must equal :data:`EXCERPT_SHA256` (else :class:`mftrnn.DataError`).  Tokens are
    ``line.split() + ['<eos>']`` as in :func:`mftrnn.experiments.data.tokenize`; the vocabulary is that of the excerpt's
    training split (order of first occurrence, with :data:`UNK` guaranteed), and words of the validation and
    test excerpts outside it become :data:`UNK` (the excerpt's training split is a small part of the full one).
    """
    folder = Path(data_dir) if data_dir is not None else EXCERPT_DIR
    texts = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise DataError(f"WikiText-2 excerpt file {path} not found (it ships with the repository in "
                            f"{EXCERPT_DIR})")
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        expected = EXCERPT_SHA256[path.name]
        if digest != expected:
            raise DataError(f"checksum mismatch for {path}: expected sha256 {expected}, got {digest}; "
                            f"restore the file from the repository")
        texts[split] = raw.decode("utf-8")
    tokens = {s: tokenize(texts[s]) for s in SPLITS}
    vocab = build_vocab(tokens["train"])
    if UNK not in vocab:
        vocab.append(UNK)
    stoi = {w: i for i, w in enumerate(vocab)}
    streams = {s: _encode_with_unk(tokens[s], stoi) for s in SPLITS}
    return Corpus(name="wikitext-2-excerpt", vocab=vocab, stoi=stoi,
                  source_files={s: folder / f"{s}.txt" for s in SPLITS}, **streams)


def restrict_vocab(corpus: Corpus, max_vocab: int) -> Corpus:
    """Keep the ``max_vocab - 1`` most frequent training words and :data:`UNK`; all others become :data:`UNK`.

    Frequencies are counted on the training split; ties keep the order of first occurrence, and the new
    vocabulary lists the kept words in their old order.  A corpus with at most ``max_vocab`` words is
    returned unchanged.
    """
    if isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab < 2:
        raise MftrnnError(f"max_vocab must be an integer >= 2, got {max_vocab!r}")
    if corpus.vocab_size <= max_vocab:
        return corpus
    counts = torch.bincount(corpus.train, minlength=corpus.vocab_size)
    unk_old = corpus.stoi.get(UNK)
    candidates = [i for i in range(corpus.vocab_size) if i != unk_old]
    # stable sort by decreasing count: ties keep the first-occurrence order
    ranked = sorted(candidates, key=lambda i: -int(counts[i]))
    kept = sorted(ranked[: max_vocab - 1]) + ([unk_old] if unk_old is not None else [])
    kept.sort()
    vocab = [corpus.vocab[i] for i in kept]
    if UNK not in vocab:
        vocab.append(UNK)
    stoi = {w: i for i, w in enumerate(vocab)}
    remap = torch.full((corpus.vocab_size,), stoi[UNK], dtype=torch.int64)
    for new, old in enumerate(kept):
        remap[old] = new
    streams = {s: remap[getattr(corpus, s)] for s in SPLITS}
    return Corpus(name=corpus.name, vocab=vocab, stoi=stoi, source_files=dict(corpus.source_files), **streams)


def load_lm_corpus(name: str, data_dir: str | os.PathLike | None = None, max_vocab: int | None = None,
                   download: bool = False) -> Corpus:
    """Load corpus ``name`` (one of :data:`CORPORA`) and, if ``max_vocab`` is given, :func:`restrict_vocab`.

    ``ptb`` and ``wikitext-2`` come from :func:`mftrnn.experiments.data.load_corpus` (``data_dir`` is the folder holding
    ``ptb/`` and ``wikitext-2/``); ``wikitext-2-excerpt`` from :func:`load_excerpt` (``data_dir`` is the
    excerpt folder itself).
    """
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    if name == "wikitext-2-excerpt":
        corpus = load_excerpt(data_dir)
    else:
        corpus = load_corpus(name, data_dir=data_dir, download=download)
    if max_vocab is not None:
        corpus = restrict_vocab(corpus, max_vocab)
    return corpus


def unigram_perplexity(corpus: Corpus, split: str = "test") -> float:
    r"""Perplexity of the training unigram distribution on ``split``, :math:`\exp(-\langle\ln p(w)\rangle)`.

    :math:`p(w)` is the relative frequency of ``w`` in the training split, plus-one smoothed (so that words
    unseen in training have a finite cost): :math:`p(w) = (n_w + 1)/(n + V)`.  A language model that ignores
    the context cannot do better than this (up to the smoothing).
    """
    if split not in SPLITS:
        raise MftrnnError(f"split must be one of {SPLITS}, got {split!r}")
    counts = torch.bincount(corpus.train, minlength=corpus.vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return float(torch.exp(-logp[getattr(corpus, split)].mean()))


def _corpus_info(corpus: Corpus) -> dict:
    info = dict(name=corpus.name, vocab_size=corpus.vocab_size,
                tokens={s: int(getattr(corpus, s).numel()) for s in SPLITS})
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(getattr(corpus, s).numpy().tobytes())
    h.update("\n".join(corpus.vocab).encode("utf-8"))
    info["token_sha256"] = h.hexdigest()
    return info


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------

class LanguageModel(nn.Module):
    """Embedding -> ``num_layers`` recurrent layers of ``cell`` -> linear decoder (see the module docstring).

    ``forward(tokens, hidden=None) -> (logits, hidden)``: ``tokens`` of shape ``(T, B)`` (int64), ``logits``
    ``(T, B, vocab_size)``; ``hidden`` is a ``(num_layers, B, hidden_size)`` tensor, or an ``(h, c)`` pair for
    the LSTM (zeros if ``None``).
    """

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, num_layers: int = 1,
                 emb_size: int | None = None, dropout: float = 0.0, tie_weights: bool = False):
        super().__init__()
        _check_cell(cell)
        emb_size = hidden_size if emb_size is None else emb_size
        if tie_weights and emb_size != hidden_size:
            raise MftrnnError(f"tie_weights needs emb_size == hidden_size, got {emb_size} != {hidden_size}")
        self.cell, self.vocab_size, self.hidden_size = cell, int(vocab_size), int(hidden_size)
        self.num_layers, self.emb_size, self.tie_weights = int(num_layers), int(emb_size), bool(tie_weights)
        inner = dropout if num_layers > 1 else 0.0
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, emb_size)
        self.rnn = sequence_module(cell, emb_size, hidden_size, num_layers=num_layers, dropout=inner)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.encoder.weight

    def init_weights(self, init_range: float, minimal: MinimalInit | None = None) -> None:
        """Uniform :math:`[-a, a]` for embedding, decoder and the recurrent layers, except recurrent layers whose
        implementation registers its own mean-field initialiser (the minimalRNN's
        :func:`mftrnn.nets.layers.init_minimal_rnn_`): that one, with ``minimal``'s hyperparameters."""
        a = float(init_range)
        own = sequence_implementation(self.cell).init
        with torch.no_grad():
            self.encoder.weight.uniform_(-a, a)
            if not self.tie_weights:
                self.decoder.weight.uniform_(-a, a)
            self.decoder.bias.uniform_(-a, a)
            if own is not None:
                own(self.rnn, **dataclasses.asdict(minimal or MinimalInit()))
            else:
                for p in self.rnn.parameters():
                    p.uniform_(-a, a)

    def init_hidden(self, batch_size: int):
        """Zero state for ``batch_size`` sequences in the recurrent module's format
        (:func:`mftrnn.nets.registry.zero_state`: an ``(h, c)`` pair for the LSTM)."""
        return zero_state(self.rnn, batch_size, like=self.decoder.weight)

    def forward(self, tokens: torch.Tensor, hidden=None):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (T, B), got shape {tuple(tokens.shape)}")
        x = self.drop(self.encoder(tokens))
        if hidden is None:
            hidden = self.init_hidden(tokens.shape[1])
        out, hidden = self.rnn(x, hidden)
        return self.decoder(self.drop(out)), hidden


def _detach(hidden):
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def count_parameters(cell: str, hidden_size: int, vocab_size: int, num_layers: int = 1,
                     emb_size: int | None = None, tie_weights: bool = False) -> dict:
    r"""Parameter counts of a :class:`LanguageModel`, by part: ``embedding``, ``recurrent``, ``decoder``, ``total``.

    With :math:`N` = ``hidden_size``, :math:`E` = ``emb_size`` (default :math:`N`), :math:`V` = ``vocab_size``
    and :math:`n_l` the input size of layer :math:`l` (:math:`E`, then :math:`N`), one layer has

    * minimalRNN: :math:`N n_l + N` (:math:`\Phi, \phi_b`) :math:`+ 2N^2 + N` (:math:`V, W, b`);
    * LSTM: :math:`4N n_l + 4N^2 + 8N` (PyTorch keeps two bias vectors); GRU: :math:`3N n_l + 3N^2 + 6N`;
    * vanilla: :math:`N n_l + N^2 + 2N`;

    the embedding has :math:`VE`, the decoder :math:`VN + V` (only :math:`V` with tied weights). The recurrent
    count is that of the module itself, built on the ``meta`` device (no memory, no numbers), so it holds for any
    cell of :data:`CELLS`.
    """
    _check_cell(cell)
    N, V, L = int(hidden_size), int(vocab_size), int(num_layers)
    E = N if emb_size is None else int(emb_size)
    recurrent = _recurrent_parameters(cell, E, N, L)
    embedding = V * E
    decoder = V if tie_weights else V * N + V
    return dict(embedding=embedding, recurrent=recurrent, decoder=decoder, total=embedding + recurrent + decoder)


@functools.lru_cache(maxsize=4096)
def _recurrent_parameters(cell: str, emb_size: int, hidden_size: int, num_layers: int) -> int:
    """Number of parameters of the cell's sequence module (built on the ``meta`` device)."""
    with torch.device("meta"):
        module = sequence_module(cell, emb_size, hidden_size, num_layers=num_layers)
    return sum(p.numel() for p in module.parameters())


def _check_cell(cell) -> None:
    if cell not in CELLS:
        raise MftrnnError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")


def match_hidden_size(cell: str, target: int, vocab_size: int, num_layers: int = 1, emb_size: int | None = None,
                      tie_weights: bool = False, what: str = "total") -> int:
    """The hidden size whose ``count_parameters(...)[what]`` is closest to ``target`` (``what``: ``"total"`` or
    ``"recurrent"``).

    ``emb_size=None`` lets the embedding follow the hidden size (as in the presets).  Counts increase with the
    hidden size, so a bisection finds the two neighbours of ``target``; the closer one is returned (the smaller
    on a tie).
    """
    if what not in ("total", "recurrent"):
        raise MftrnnError(f"what must be 'total' or 'recurrent', got {what!r}")
    if isinstance(target, bool) or int(target) != target or target < 1:
        raise MftrnnError(f"target must be a positive integer, got {target!r}")

    def count(n: int) -> int:
        return count_parameters(cell, n, vocab_size, num_layers, emb_size, tie_weights)[what]

    lo, hi = 1, 2
    while count(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: count(lo) < target <= count(hi), or lo == 1
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    if count(lo) >= target:
        return lo
    return lo if target - count(lo) <= count(hi) - target else hi


def build_model(config: LMConfig, vocab_size: int) -> LanguageModel:
    """A freshly initialised :class:`LanguageModel` for ``config`` (seeds the global RNG with ``config.seed``)."""
    config.validate()
    torch.manual_seed(config.seed)
    model = LanguageModel(config.cell, vocab_size, config.hidden_size, config.num_layers, config.emb_size,
                          config.dropout, config.tie_weights)
    model.init_weights(config.init_range, config.minimal)
    return model


# --------------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: LanguageModel, data: torch.Tensor, bptt: int) -> float:
    """Mean cross entropy (nats per token) of ``model`` on a batchified ``(T, B)`` stream, state carried."""
    was_training = model.training
    model.eval()
    hidden = model.init_hidden(data.shape[1])
    total, count = 0.0, 0
    try:
        for inputs, targets in bptt_batches(data, bptt):
            logits, hidden = model(inputs, hidden)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
            total += float(loss)
            count += targets.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("evaluation split is too short for one prediction")
    return total / count


def evaluate_checkpoint(checkpoint: str | os.PathLike, split: str = "test", eval_batch_size: int | None = None,
                        data_dir: str | os.PathLike | None = None, best: bool = True,
                        corpus: Corpus | None = None) -> dict:
    r"""Perplexity on ``split`` of the parameters in a run's checkpoint (kept with ``--keep-checkpoint``, or taken
    during a run): those with the best validation loss (``best=True``, what the result's ``test_ppl`` reports)
    or the last ones, read as ``eval_batch_size`` parallel streams (default: the run's; ``1`` reads the split as
    one stream, as Zaremba et al. evaluate, so that the state restarts from zero once instead of
    ``eval_batch_size`` times). The checkpoint is verified (:func:`~mftrnn.experiments.harness.load_checkpoint`);
    the corpus is the run's (``corpus`` overrides it, as ``train``'s does). Returns ``split``, ``eval_batch_size``, ``loss`` (nats per token), ``ppl``, ``epoch`` (of the parameters)."""
    ck = load_checkpoint(checkpoint, required=_CHECKPOINT_KEYS)
    config = LMConfig.from_dict(ck["config"])
    if split not in SPLITS:
        raise MftrnnError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    b = config.eval_batch_size if eval_batch_size is None else int(eval_batch_size)
    if b < 1:
        raise MftrnnError(f"eval_batch_size must be >= 1, got {eval_batch_size!r}")
    if best and ck["best_state"] is None:
        raise MftrnnError(f"checkpoint {checkpoint} holds no validated parameters yet (no epoch finished)")
    if corpus is None:
        corpus = load_lm_corpus(config.corpus, data_dir=data_dir, max_vocab=config.max_vocab)
    model = build_model(config, len(corpus.vocab))
    model.load_state_dict(ck["best_state"] if best else ck["model"])
    loss = evaluate(model, batchify(getattr(corpus, split), b), config.bptt)
    return dict(split=split, eval_batch_size=b, loss=loss, ppl=math.exp(loss),
                epoch=(ck["best_epoch"] if best else ck["epoch"]))


def learning_rate(config: LMConfig, epoch: int, current: float | None = None, valid_loss: float | None = None,
                  best_valid_loss: float | None = None) -> float:
    """Learning rate of epoch ``epoch`` (0-based).

    ``"step"``: ``lr / lr_decay ** max(0, epoch + 1 - decay_start)`` (the other arguments are ignored).
    ``"plateau"``: ``current`` (the rate of the previous epoch; ``lr`` for epoch 0), divided by ``lr_decay``
    if ``valid_loss`` (of the previous epoch) is not below ``best_valid_loss`` (the best before it).
    """
    if config.schedule == "step":
        return config.lr / config.lr_decay ** max(0, epoch + 1 - config.decay_start)
    if epoch == 0 or current is None:
        return config.lr
    if valid_loss is not None and best_valid_loss is not None and not valid_loss < best_valid_loss:
        return current / config.lr_decay
    return current


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


_resolve_device = resolve_device  # the harness's: one-line errors for unknown or unavailable devices


def read_result(path: str | os.PathLike) -> dict:
    """The result dict of a run (its JSON file); :class:`mftrnn.MftrnnError` if it is not one."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MftrnnError(f"cannot read result file {path}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != RESULT_FORMAT:
        raise MftrnnError(f"{path} is not an mftrnn language-model result file ({RESULT_FORMAT})")
    return obj


def _rng_state(dev: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict, dev: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def _cpu_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_tree(v) for v in obj)
    return obj


def _to_device(obj, dev: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(dev)
    if isinstance(obj, tuple):
        return tuple(_to_device(v, dev) for v in obj)
    return obj


class _Run:
    """Mutable state of a training run: everything a checkpoint holds."""

    def __init__(self, lr: float):
        self.epoch = 0              # epoch in progress (0-based)
        self.batch = 0              # next training batch of that epoch
        self.lr = lr
        self.hidden = None          # carried state at (epoch, batch), or None at the start of an epoch
        self.loss_sum = 0.0         # running sums of the epoch in progress
        self.token_count = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.curve: list[dict] = []  # training loss over windows of ``curve_every`` batches
        self.window_sum = 0.0
        self.window_count = 0
        self.tokens_seen = 0        # training tokens over all epochs
        self.best_valid_loss: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.wall_seconds = 0.0     # over all sessions
        self.sessions = 0
        self.started_utc: str | None = None

    def checkpoint(self, config: LMConfig, model: nn.Module, optimizer, dev: torch.device, corpus_info: dict,
                   hidden=None):
        """The checkpoint dict; ``hidden``: the carried state of the whole batch (default ``self.hidden``; with
        several processes the caller gathers it)."""
        return dict(format=CHECKPOINT_FORMAT, config=config.to_dict(), corpus=corpus_info,
                    model=_cpu_tree(model.state_dict()), optimizer=_cpu_tree(optimizer.state_dict()),
                    rng=_cpu_tree(_rng_state(dev)), epoch=self.epoch, batch=self.batch, lr=self.lr,
                    hidden=_cpu_tree(self.hidden if hidden is None else hidden), loss_sum=self.loss_sum, token_count=self.token_count,
                    train_seconds=self.train_seconds, history=self.history, curve=self.curve,
                    window_sum=self.window_sum, window_count=self.window_count, tokens_seen=self.tokens_seen,
                    best_valid_loss=self.best_valid_loss, best_epoch=self.best_epoch, best_state=self.best_state,
                    wall_seconds=self.wall_seconds, sessions=self.sessions, started_utc=self.started_utc)

    def restore(self, ck: dict, model: nn.Module, optimizer, dev: torch.device) -> None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        for name in ("epoch", "batch", "lr", "loss_sum", "token_count", "train_seconds", "history", "curve",
                     "window_sum", "window_count", "tokens_seen",
                     "best_valid_loss", "best_epoch", "best_state", "wall_seconds", "sessions", "started_utc"):
            setattr(self, name, ck[name])
        self.hidden = _to_device(ck["hidden"], dev)
        _set_rng_state(ck["rng"], dev)


_CHECKPOINT_KEYS = ("format", "config", "corpus", "model", "optimizer", "rng", "epoch", "batch", "lr", "hidden",
                    "loss_sum", "token_count", "train_seconds", "history", "curve", "window_sum", "window_count",
                    "tokens_seen", "best_valid_loss", "best_epoch", "best_state", "wall_seconds", "sessions",
                    "started_utc")


def _check_position(ck: dict, config: LMConfig, n_batches: int, damaged: Callable[[str], MftrnnError]) -> None:
    """Refuse a checkpoint whose position does not lie inside the run (``damaged(reason)`` is the error)."""
    epoch, batch, history = ck["epoch"], ck["batch"], ck["history"]
    for name, v in (("epoch", epoch), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise damaged(f"{name} = {v!r} is not an integer >= 0")
    if epoch > config.epochs or (epoch == config.epochs and batch != 0) or batch >= n_batches:
        raise damaged(f"its position, epoch {epoch + 1} batch {batch}, lies past the end of this run "
                      f"({config.epochs} epoch(s) of {n_batches} batches)")
    if not isinstance(history, list) or len(history) != epoch:
        raise damaged(f"it is at epoch {epoch + 1} but holds the history of "
                      f"{len(history) if isinstance(history, list) else '?'} epoch(s)")


def _diverged(what: str, value: float, run: _Run, epoch: int, batch: int, checkpoint: Path | None,
              saved: tuple | None) -> ConvergenceError:
    if checkpoint is not None and saved is not None and checkpoint.exists():
        kept = (f"the last good checkpoint (epoch {saved[0] + 1}, batch {saved[1]}) is kept in {checkpoint}")
    else:
        kept = "no checkpoint had been written yet"
    return ConvergenceError(f"training diverged: {what} = {value:g} at epoch {epoch + 1}, batch {batch + 1} "
                            f"(lr = {run.lr:g}); {kept}; lower the learning rate (--lr) or the clipping norm "
                            f"(--clip) and start a new run (another --out)")


def _windows(tokens: int, batch_size: int, bptt: int) -> int:
    """Number of BPTT windows of a stream of ``tokens`` tokens cut into ``batch_size`` columns."""
    return len(range(0, tokens // batch_size - 1, bptt))


def _check_sizes(config: LMConfig, corpus: Corpus) -> int:
    """The number of training batches per epoch; :class:`mftrnn.MftrnnError` if a split gives no window."""
    n_train = corpus.train.numel()
    n_batches = _windows(n_train, config.batch_size, config.bptt)
    if n_batches < 1:
        raise MftrnnError(f"nothing to train on: the training split of {corpus.name} has {n_train:,} tokens, "
                          f"i.e. {n_train // config.batch_size} per column at batch size {config.batch_size}, "
                          f"and a training window needs at least 2; lower --batch-size (batch_size) to at most "
                          f"{max(n_train // 2, 1):,}")
    for split in ("valid", "test"):
        n = getattr(corpus, split).numel()
        if _windows(n, config.eval_batch_size, config.bptt) < 1:
            raise MftrnnError(f"nothing to evaluate: the {split} split of {corpus.name} has {n:,} tokens, too few "
                              f"for batch size {config.eval_batch_size}; lower --eval-batch-size "
                              f"(eval_batch_size) to at most {max(n // 2, 1):,}")
    if config.max_batches is not None:
        n_batches = min(n_batches, config.max_batches)
    return n_batches


def train(config: LMConfig, corpus: Corpus | None = None, out: str | os.PathLike | None = None,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int | str | CheckpointEvery | None = 500,
          device: str = "cpu",
          data_dir: str | os.PathLike | None = None, progress: bool = True,
          log: Callable[[str], None] | None = print, command: str | None = None, keep_checkpoint: bool = False,
          overwrite: bool = False, on_batch: Callable[[int, int, float], None] | None = None,
          curve_every: int = 100, checkpoint_every_s: float | None = None) -> dict:
    """Train a language model for ``config``; return the result dict (also written to ``out`` if given).

    Parameters
    ----------
    config : the run (:class:`LMConfig`).
    corpus : a loaded corpus (else :func:`load_lm_corpus` ``(config.corpus, data_dir, config.max_vocab)``;
        a given corpus is restricted to ``config.max_vocab`` as well).
    out : JSON result file, rewritten atomically after every epoch (``"status": "running"``) and at the end
        (``"finished"``).  If it already holds a finished run of the same configuration and corpus, that result
        is returned without training; a different configuration, or a file that is not a readable result, is an
        error unless ``overwrite``.  Its folder must exist.
    checkpoint : checkpoint file (default ``out`` + ``".ckpt"``; ``None`` without ``out``: no checkpoints).  If it
        exists, training resumes from it (it is verified, and the configuration must match); it is deleted when
        the run finishes, unless ``keep_checkpoint``.
    checkpoint_every : also checkpoint every this many training batches (optimizer steps) within an epoch
        (``None``: not by count); or a string as ``--checkpoint-every`` takes it (``"5min"``, ``"500steps"``;
        a bare number is seconds), the same in :func:`mftrnn.experiments.seqdigits.train`
        (:func:`mftrnn.experiments.harness.checkpoint_cadence`).
    checkpoint_every_s : also checkpoint within an epoch once this many seconds of wall time have passed since
        the last checkpoint (``None``: not by time; ``mftrnn lm --checkpoint-every`` sets one of the two).
    device : ``"cpu"`` or ``"cuda[:i]"``.
    progress : show tqdm progress bars (on stderr).
    log : called with one line per epoch (``None``: silent).
    command : the command line, recorded in the provenance.
    on_batch : called as ``on_batch(epoch, batch, loss)`` after every optimizer step (0-based indices), after
        any checkpoint of that step; an exception raised there stops training like a crash would.
    curve_every : the result's ``curve`` holds the mean training loss of every ``curve_every`` batches.

    Before any work, the outputs are checked (their folders must exist) and locked
    (:class:`mftrnn.experiments.harness.RunLock`): a second run on the same result or checkpoint file is refused.
    A configuration that gives no training or evaluation window is refused too.

    A run that diverges (:class:`mftrnn.ConvergenceError`) writes ``"status": "diverged"`` and the message into
    ``out``; running it again raises the recorded error without training (``overwrite`` retries from the last
    good checkpoint, or from the start without one).
    """
    config = config.validate()
    if isinstance(curve_every, bool) or not isinstance(curve_every, int) or curve_every < 1:
        raise MftrnnError(f"curve_every must be an integer >= 1, got {curve_every!r}")
    cadence = checkpoint_cadence(checkpoint_every, checkpoint_every_s)
    dev = resolve_device(device)
    rank, world = parallel.init(dev)
    if world > 1 and config.batch_size % world:
        raise MftrnnError(f"batch size {config.batch_size} is not divisible by the {world} processes "
                          f"(--batch-size, torchrun --nproc-per-node)")
    if rank != 0:
        log, progress = None, False
    out_path = check_output(out, "result file", "--out") if out is not None else None
    ck_path = Path(checkpoint) if checkpoint is not None else (
        out_path.with_name(out_path.name + ".ckpt") if out_path is not None else None)
    if ck_path is not None:
        check_output(ck_path, "checkpoint", "--checkpoint", create_folder=checkpoint is not None)
    lock = (RunLock([out_path, ck_path], output=out_path if out_path is not None else ck_path, command=command)
            if rank == 0 else contextlib.nullcontext())  # rank 0 alone writes (and locks) the run's files
    with lock:
        return _train(config, corpus, out_path, ck_path, cadence, dev, data_dir,
                      progress, log, command, keep_checkpoint, overwrite, on_batch, curve_every, rank, world)


def _train(config, corpus, out_path, ck_path, cadence, dev, data_dir, progress, log,
           command, keep_checkpoint, overwrite, on_batch, curve_every, rank=0, world=1) -> dict:
    """The body of :func:`train`, under the output lock (``rank`` of ``world`` processes:
    :mod:`mftrnn.experiments.parallel`)."""
    say = log or (lambda s: None)

    if corpus is None:
        corpus = load_lm_corpus(config.corpus, data_dir=data_dir, max_vocab=config.max_vocab)
    elif config.max_vocab is not None:
        corpus = restrict_vocab(corpus, config.max_vocab)
    n_batches = _check_sizes(config, corpus)
    corpus_info = _corpus_info(corpus)
    V = corpus.vocab_size

    if out_path is not None and out_path.exists():
        try:
            previous = read_result(out_path)
        except MftrnnError as exc:
            if not overwrite:
                raise MftrnnError(f"{exc}; pass --overwrite to replace it, or choose another "
                                  f"--out") from None
            previous = None
            say(f"{out_path}: not a readable result file; replacing it (--overwrite)")
        if previous is not None:
            same = previous.get("config") == config.to_dict() and previous.get("corpus") == corpus_info
            if not same and not overwrite:
                raise MftrnnError(f"{out_path} holds a run with another configuration or corpus; choose another "
                                  f"output file (--out) or pass --overwrite to replace it")
            if same and previous.get("status") == "finished":
                say(f"{out_path}: this run is already finished (test perplexity {previous['test_ppl']:.2f}); "
                    f"nothing to do")
                return previous
            if same and previous.get("status") == "diverged" and not overwrite:
                raise ConvergenceError(f"{previous.get('error')} [recorded in {out_path}; nothing redone; "
                                       f"--overwrite retries from the last good checkpoint]")

    model = build_model(config, V).to(dev)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        torch.manual_seed(config.seed + 1_000_003 * rank)  # each replica its own dropout masks
        net = DistributedDataParallel(model, device_ids=[dev.index or 0] if dev.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    run = _Run(learning_rate(config, 0))
    resumed = False
    if ck_path is not None and ck_path.exists():
        restart = f"delete {ck_path} to restart the run from its first batch"

        def damaged(reason: str) -> MftrnnError:
            return MftrnnError(f"checkpoint {ck_path} is damaged ({reason}); {restart}")

        ck = load_checkpoint(ck_path, required=_CHECKPOINT_KEYS, restart=restart)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise MftrnnError(f"{ck_path} is not an mftrnn language-model checkpoint ({CHECKPOINT_FORMAT}); "
                              f"{restart}, or choose another --checkpoint file")
        if ck["config"] != config.to_dict() or ck["corpus"] != corpus_info:
            raise MftrnnError(f"checkpoint {ck_path} belongs to another configuration or corpus; delete it or "
                              f"choose another checkpoint file (--checkpoint)")
        _check_position(ck, config, n_batches, damaged)
        try:
            run.restore(ck, model, optimizer, dev)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise damaged(f"it does not fit the model: {' '.join(str(exc).split())[:200]}") from None
        ranks = ck.get("rng_ranks")
        if world > 1 and isinstance(ranks, list) and len(ranks) == world:
            _set_rng_state(ranks[rank], dev)
        elif (world > 1 or ranks is not None) and config.dropout > 0:
            raise MftrnnError(f"checkpoint {ck_path} was written by {len(ranks) if ranks else 1} process(es); "
                              f"with dropout the run resumes exactly only with as many (torchrun "
                              f"--nproc-per-node), not {world}")
        run.hidden = parallel.split_columns(run.hidden, rank, world)
        resumed = True
        say(f"resuming from {ck_path} at epoch {run.epoch + 1}, batch {run.batch}")
    run.sessions += 1
    if run.started_utc is None:
        run.started_utc = utc_now()
    session_start = time.perf_counter()
    wall_before = run.wall_seconds
    params = count_parameters(config.cell, config.hidden_size, V, config.num_layers, config.emb_size,
                              config.tie_weights)
    actual = sum(p.numel() for p in model.parameters())
    if actual != params["total"]:  # the formula documents the model; they must agree
        raise MftrnnError(f"internal error: parameter count {actual} != formula {params['total']}")

    train_data = parallel.split_columns(batchify(corpus.train, config.batch_size), rank, world).to(dev)
    valid_data = batchify(corpus.valid, config.eval_batch_size).to(dev)
    test_data = batchify(corpus.test, config.eval_batch_size).to(dev)
    saved = (run.epoch, run.batch) if resumed else None
    last_save = [time.perf_counter()]

    def save() -> None:
        """Write a checkpoint (a collective with several processes: rank 0 writes the gathered state)."""
        nonlocal saved
        if ck_path is None:
            return
        full_hidden = parallel.gather_columns(run.hidden, world)
        rngs = parallel.gather_objects(_cpu_tree(_rng_state(dev)), world) if world > 1 else None
        if rank == 0:
            run.wall_seconds = wall_before + (time.perf_counter() - session_start)
            state = run.checkpoint(config, model, optimizer, dev, corpus_info, hidden=full_hidden)
            if world > 1:
                state.update(rng_ranks=rngs, world_size=world)
            save_checkpoint(ck_path, state)
        if world > 1:
            import torch.distributed as dist
            dist.barrier()  # the checkpoint is complete before any rank goes on
        saved = (run.epoch, run.batch)
        last_save[0] = time.perf_counter()

    def checkpoint_due(batch: int) -> bool:
        """Whether to checkpoint after ``batch`` batches of the epoch (not at its end: the epoch's own save);
        rank 0 decides for all (the wall-time cadence differs between processes)."""
        return parallel.agree(batch < n_batches and cadence.due(batch, time.perf_counter() - last_save[0]),
                              world, dev)

    def result(status: str) -> dict:
        run.wall_seconds = wall_before + (time.perf_counter() - session_start)
        prov = provenance(dev, command)
        prov.update(date_utc_start=run.started_utc, date_utc_end=prov.pop("date_utc"),
                    wall_time_s=round(run.wall_seconds, 1), sessions=run.sessions, processes=world)
        res = dict(format=RESULT_FORMAT, status=status, config=config.to_dict(), corpus=corpus_info,
                   parameters=params, history=run.history, curve=run.curve, curve_every=curve_every,
                   best_epoch=run.best_epoch,
                   best_valid_ppl=None if run.best_valid_loss is None else _ppl(run.best_valid_loss),
                   test_loss=None, test_ppl=None, provenance=prov)
        return res

    writes = out_path if rank == 0 else None
    try:
        res = _train_loop(config, model, optimizer, run, dev, corpus, train_data, valid_data, test_data,
                          n_batches, save, result, ck_path, lambda: saved, progress, say, on_batch,
                          checkpoint_due, curve_every, params, writes, net, world)
    except ConvergenceError as exc:
        if writes is not None:
            failed = result("diverged")
            failed["error"] = str(exc)
            write_json_atomic(writes, failed)
        raise
    if rank == 0 and ck_path is not None and ck_path.exists() and not keep_checkpoint:
        ck_path.unlink()
    return res


def _train_loop(config, model, optimizer, run, dev, corpus, train_data, valid_data, test_data, n_batches, save,
                result, ck_path, saved_at, progress, say, on_batch, checkpoint_due, curve_every, params,
                out_path, net=None, world=1) -> dict:
    """The epochs of :func:`train` (state in ``run``; ``save()`` checkpoints, ``result(status)`` reports).
    ``net``: the module that trains (``model`` itself, or its DistributedDataParallel wrapper with ``world``
    processes, each holding ``batch_size / world`` columns of ``train_data``)."""
    net = model if net is None else net
    from tqdm import tqdm

    V = corpus.vocab_size
    max_loss = config.divergence_factor * math.log(V)
    model.train()
    while run.epoch < config.epochs:
        e = run.epoch
        for g in optimizer.param_groups:
            g["lr"] = run.lr
        hidden = run.hidden if run.hidden is not None else model.init_hidden(config.batch_size // world)
        bar = tqdm(total=n_batches, initial=run.batch, desc=f"{config.cell} epoch {e + 1}/{config.epochs}",
                   unit="batch", disable=not progress, leave=False, mininterval=1.0, dynamic_ncols=True)
        t0 = time.perf_counter()
        train_seconds0 = run.train_seconds
        try:
            for b, (inputs, targets) in enumerate(bptt_batches(train_data, config.bptt)):
                if b >= n_batches:
                    break
                if b < run.batch:
                    continue
                hidden = _detach(hidden)
                logits, hidden = net(inputs, hidden)
                loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
                value = parallel.mean_scalar(loss.detach().item(), world, dev)  # the whole batch's mean
                if not math.isfinite(value) or value > max_loss:
                    what = "loss" if not math.isfinite(value) else f"loss (> {config.divergence_factor:g} ln V)"
                    raise _diverged(what, value, run, e, b, ck_path, saved_at())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip > 0:
                    norm = float(nn.utils.clip_grad_norm_(model.parameters(), config.clip))
                else:
                    norm = float(torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))
                if not math.isfinite(norm):
                    raise _diverged("gradient norm", norm, run, e, b, ck_path, saved_at())
                optimizer.step()
                n_tokens = targets.numel() * world
                run.loss_sum += value * n_tokens
                run.token_count += n_tokens
                run.tokens_seen += n_tokens
                run.window_sum += value * n_tokens
                run.window_count += n_tokens
                if (b + 1) % curve_every == 0 or b + 1 == n_batches:
                    run.curve.append(dict(epoch=e + 1, batch=b + 1, tokens=run.tokens_seen,
                                          train_loss=run.window_sum / run.window_count))
                    run.window_sum, run.window_count = 0.0, 0
                run.batch = b + 1
                run.hidden = _detach(hidden)
                run.train_seconds = train_seconds0 + (time.perf_counter() - t0)
                bar.update(1)
                if bar.n % 20 == 0:
                    bar.set_postfix(ppl=f"{_ppl(run.loss_sum / run.token_count):.1f}", lr=f"{run.lr:g}")
                if checkpoint_due(run.batch):
                    save()
                if on_batch is not None:
                    on_batch(e, b, value)
        finally:
            bar.close()
        run.train_seconds = train_seconds0 + (time.perf_counter() - t0)
        train_loss = run.loss_sum / max(run.token_count, 1)
        t1 = time.perf_counter()
        valid_loss = evaluate(model, valid_data, config.bptt)
        if not math.isfinite(valid_loss) or valid_loss > max_loss:
            raise _diverged("validation loss", valid_loss, run, e, n_batches - 1, ck_path, saved_at())
        entry = dict(epoch=e + 1, lr=run.lr, train_loss=train_loss, train_ppl=_ppl(train_loss),
                     valid_loss=valid_loss, valid_ppl=_ppl(valid_loss), train_tokens=run.token_count,
                     train_seconds=round(run.train_seconds, 2), eval_seconds=round(time.perf_counter() - t1, 2),
                     tokens_per_s=round(run.token_count / max(run.train_seconds, 1e-9), 1))
        previous_best = run.best_valid_loss
        if previous_best is None or valid_loss < previous_best:
            run.best_valid_loss, run.best_epoch = valid_loss, e + 1
            run.best_state = _cpu_tree(model.state_dict())
        run.history.append(entry)
        say(f"{config.cell} epoch {e + 1}/{config.epochs}: train ppl {entry['train_ppl']:.2f}, valid ppl "
            f"{entry['valid_ppl']:.2f}, lr {run.lr:g}, {entry['tokens_per_s']:.0f} tokens/s, "
            f"{entry['train_seconds']:.0f} s")
        run.epoch, run.batch, run.hidden = e + 1, 0, None
        run.loss_sum, run.token_count, run.train_seconds = 0.0, 0, 0.0
        run.lr = learning_rate(config, e + 1, current=run.lr, valid_loss=valid_loss, best_valid_loss=previous_best)
        save()
        if out_path is not None:
            write_json_atomic(out_path, result("running"))

    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    t1 = time.perf_counter()
    test_loss = evaluate(model, test_data, config.bptt)
    if not math.isfinite(test_loss) or test_loss > max_loss:
        raise _diverged("test loss", test_loss, run, config.epochs - 1, n_batches - 1, ck_path, saved_at())
    res = result("finished")
    res.update(test_loss=test_loss, test_ppl=_ppl(test_loss), test_eval_seconds=round(time.perf_counter() - t1, 2))
    if out_path is not None:
        write_json_atomic(out_path, res)
    say(f"{config.cell}: test ppl {res['test_ppl']:.2f} (parameters of epoch {run.best_epoch}, valid ppl "
        f"{res['best_valid_ppl']:.2f}); {params['total']:,} parameters; wall time "
        f"{res['provenance']['wall_time_s']:.0f} s" + (f"; wrote {out_path}" if out_path is not None else ""))
    return res


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


_float = float_argument  # the one argparse type of floating-point options (shared with mftrnn.cli.app)


_OVERRIDES = (  # (option, LMConfig field, type, help)
    ("--corpus", "corpus", str, f"corpus: {', '.join(CORPORA)} (default: ptb; tiny: the shipped excerpt)"),
    ("--hidden", "hidden_size", _positive_int, "hidden size N of every layer"),
    ("--layers", "num_layers", _positive_int, "number of recurrent layers"),
    ("--emb", "emb_size", _positive_int, "word-embedding size (default: the hidden size)"),
    ("--dropout", "dropout", _float, "dropout probability"),
    ("--batch-size", "batch_size", _positive_int, "training batch size"),
    ("--eval-batch-size", "eval_batch_size", _positive_int, "batch size of validation and test (default 10)"),
    ("--bptt", "bptt", _positive_int, "truncated-BPTT window (steps)"),
    ("--lr", "lr", _float, "initial learning rate (SGD; loss averaged over the window's tokens)"),
    ("--lr-decay", "lr_decay", _float, "divisor of the learning rate at each decay"),
    ("--schedule", "schedule", str, f"learning-rate schedule: {', '.join(SCHEDULES)}"),
    ("--decay-start", "decay_start", int, "step schedule: number of epochs at the initial rate"),
    ("--clip", "clip", _float, "gradient-norm clipping threshold (0: none)"),
    ("--epochs", "epochs", _positive_int, "number of epochs"),
    ("--init-range", "init_range", _float, "uniform initialisation range a (embedding, decoder, LSTM/GRU/vanilla)"),
    ("--seed", "seed", int, "random seed"),
    ("--max-vocab", "max_vocab", _positive_int, "keep only the most frequent words (others -> <unk>)"),
    ("--max-batches", "max_batches", _positive_int, "at most this many training batches per epoch"),
)
_MINIMAL = ("sigma_w", "sigma_v", "sigma_b", "mu_b", "sigma_phi", "sigma_phib")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``lm`` options to ``p`` (used by ``mftrnn lm``)."""
    p.add_argument("cell", metavar="CELL", help=f"recurrent cell: {', '.join(CELLS)}")
    p.add_argument("--preset", default="small", help=f"starting configuration: {', '.join(PRESETS)} "
                                                     "(default small)")
    g = p.add_argument_group("configuration (overrides the preset)")
    for opt, dest, typ, hlp in _OVERRIDES:
        g.add_argument(opt, dest=dest, type=typ, default=None, help=hlp)
    g.add_argument("--tie-weights", dest="tie_weights", action=argparse.BooleanOptionalAction, default=None,
                   help="share the decoder matrix with the embedding")
    g.add_argument("--match-params", metavar="CELL", default=None,
                   help="choose the hidden size so that the parameter count equals that of CELL at the "
                        "configured hidden size (equal-parameter comparison)")
    g.add_argument("--match-what", choices=("total", "recurrent"), default="total",
                   help="which count --match-params equalises (default total)")
    m = p.add_argument_group("minimalRNN initialisation (mean-field hyperparameters, minimal cell only)")
    for name in _MINIMAL:
        m.add_argument("--" + name.replace("_", "-"), dest=name, type=_float, default=None,
                       help=f"default {getattr(MinimalInit(), name):g}")
    m.add_argument("--orthogonal", action="store_true", default=None, help="W = sigma_w O, O Haar-orthogonal")
    r = p.add_argument_group("run")
    r.add_argument("--out", default=None, help="result JSON file (default lm-CORPUS-PRESET-CELL-hN.json)")
    r.add_argument("--checkpoint", default=None, help="checkpoint file (default OUT.ckpt)")
    r.add_argument("--checkpoint-every", default="60s", metavar="TIME|Nsteps",
                   help="checkpoint within an epoch every TIME of wall time (60, 60s, 5min, 1h: a bare number is "
                        "seconds, as in mftrnn digits) or every N training batches (500steps); also after every "
                        "epoch (default 60s)")
    r.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint of a finished run")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a result file of another configuration, or one that cannot be read")
    r.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    r.add_argument("--threads", type=_positive_int, default=None, help="torch.set_num_threads")
    r.add_argument("--data-dir", default=None, help="folder with ptb/ and wikitext-2/ (default $MFTRNN_DATA, "
                                                    "then ../shared/data)")
    r.add_argument("--download", action="store_true", help="fetch a missing corpus from its canonical URL")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace, vocab_size: Callable[[LMConfig], int] | None = None) -> LMConfig:
    """The :class:`LMConfig` of parsed ``lm`` arguments; ``vocab_size(config)`` is needed for ``--match-params``."""
    overrides = {dest: getattr(args, dest) for _, dest, _, _ in _OVERRIDES if getattr(args, dest) is not None}
    if args.tie_weights is not None:
        overrides["tie_weights"] = args.tie_weights
    minimal = {name: getattr(args, name) for name in _MINIMAL if getattr(args, name) is not None}
    if args.orthogonal:
        minimal["orthogonal"] = True
    own = [c for c in CELLS if sequence_implementation(c).init is not None]  # cells with a mean-field init
    if minimal and args.cell not in own:
        raise MftrnnError(f"--{'/--'.join(n.replace('_', '-') for n in minimal)}: minimalRNN initialisation "
                          f"options apply to the {' and '.join(own)} cell only, not {args.cell!r}")
    cfg = preset(args.preset, args.cell, minimal=minimal or None, **overrides)
    if args.match_params is not None:
        if args.match_params not in CELLS:
            raise MftrnnError(f"--match-params: unknown cell {args.match_params!r}; choose one of {', '.join(CELLS)}")
        if vocab_size is None:
            raise MftrnnError("--match-params needs the vocabulary size")
        V = vocab_size(cfg)
        target = count_parameters(args.match_params, cfg.hidden_size, V, cfg.num_layers, cfg.emb_size,
                                  cfg.tie_weights)[args.match_what]
        hidden = match_hidden_size(cfg.cell, target, V, cfg.num_layers, cfg.emb_size, cfg.tie_weights,
                                   args.match_what)
        cfg = cfg.replace(hidden_size=hidden).validate()
    return cfg


def run_cli(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run the ``lm`` command for parsed ``args``; errors propagate as :class:`mftrnn.MftrnnError`/``OSError``.

    Everything that can be checked without the corpus is checked first (cell, checkpoint cadence, device, the
    folders of ``--out`` and ``--checkpoint``); a given ``--out`` is locked before the corpus is read.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    _check_cell(args.cell)
    every = parse_checkpoint_every(args.checkpoint_every)
    resolve_device(args.device)
    command = "mftrnn " + shlex.join(list(argv)) if argv is not None else None
    if args.out is not None:
        check_output(args.out, "result file", "--out")
    if args.checkpoint is not None:  # a scratch file: its folder is created (recorded commands use /tmp/...)
        check_output(args.checkpoint, "checkpoint", "--checkpoint", create_folder=True)
    lock_paths = [args.out, args.checkpoint if args.checkpoint is not None else (
        args.out + ".ckpt" if args.out is not None else None)]
    rank, world = parallel.env_world()  # torchrun: rank 0 alone locks, writes and prints
    lock = (RunLock(lock_paths if args.out is not None else [], output=args.out, command=command) if rank == 0
            else contextlib.nullcontext())
    say = (lambda s: print(s, flush=True)) if rank == 0 else None
    with lock:
        cache: dict = {}

        def get_corpus(cfg: LMConfig) -> Corpus:
            key = (cfg.corpus, cfg.max_vocab)
            if key not in cache:
                cache[key] = load_lm_corpus(cfg.corpus, data_dir=args.data_dir, max_vocab=cfg.max_vocab,
                                            download=args.download)
            return cache[key]

        cfg = config_from_args(args, vocab_size=lambda c: get_corpus(c).vocab_size)
        corpus = get_corpus(cfg)
        out = args.out or f"lm-{cfg.corpus}-{cfg.preset}-{cfg.cell}-h{cfg.hidden_size}.json"
        params = count_parameters(cfg.cell, cfg.hidden_size, corpus.vocab_size, cfg.num_layers, cfg.emb_size,
                                  cfg.tie_weights)
        if say:
            say(f"{cfg.cell} {cfg.num_layers}x{cfg.hidden_size} on {corpus!r}: {params['total']:,} parameters "
                f"({params['recurrent']:,} recurrent); {torch.get_num_threads()} thread(s), device {args.device}"
                + (f", {world} processes" if world > 1 else "") + f"; checkpoint every {every} and after every epoch")
        try:
            train(cfg, corpus=corpus, out=out, checkpoint=args.checkpoint, checkpoint_every=every.steps,
                  checkpoint_every_s=every.seconds, device=args.device, progress=not args.no_progress,
                  command=command, keep_checkpoint=args.keep_checkpoint, overwrite=args.overwrite, log=say)
        finally:
            if world > 1:
                import torch.distributed as dist
                if dist.is_initialized():
                    dist.destroy_process_group()
    return 0

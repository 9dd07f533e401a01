r"""Training evidence for critical initialisation: digits that must be remembered over :math:`T` steps.

The task.  An image of ``rows x cols`` pixels is fed to a recurrent network one row per step (``rows`` steps of
``cols`` features; with ``pixel=True`` one pixel per step, ``rows*cols`` steps of one feature), followed by
:math:`T_{pad}` steps of zero input; the class is read out linearly from the **last** hidden state.  The network
must carry the class through the whole memory length

.. math::

    T = \text{rows} + T_{pad}

(the input steps included), so a network whose signals and gradients decay as :math:`\chi^t` with
:math:`\xi = -1/\ln\chi \ll T` cannot learn it, while one initialised at :math:`\chi \approx 1` (the vanilla RNN)
or with a gate timescale :math:`\xi \sim T` (the minimalRNN) can.  Data: MNIST (28 steps of 28) read from IDX files
(:func:`load_mnist`), or scikit-learn's 8x8 digits (8 steps of 8, :func:`load_sklearn_digits`) for tests.

Input normalisation (:class:`SequentialDigits`).  Pixels :math:`p\in[0,1]` are centred on their training-set mean
:math:`m_{ij}` and scaled by one global factor :math:`s`,

.. math::

    x_{t,j} = s\,(p_{tj} - m_{tj}), \qquad
    s^2 = R \Big/ \overline{(p - m)^2},

where the bar is the average over training images and all pixels.  Hence the inputs have zero mean per component
and a per-component second moment :math:`\mathbb E[x_{t,j}^2] = R` *on average over components and image steps*
(border rows carry less, centre rows more), which is the :math:`R = |x_t|^2/N_{in}` of the mean-field theory.
The blank steps have :math:`R = 0`; results therefore record the theory at both (``theory["input"]`` and
``theory["blank"]``).

Models (:class:`SequenceClassifier`): a tanh :class:`torch.nn.RNN` (``cell="vanilla"``) or the fast
:class:`mftrnn.nets.layers.MinimalRNN` (``cell="minimal"``, with its embedding :math:`z = \Phi x + \phi_b`), one layer of
width :math:`N`, and a linear readout of :math:`h_T`.  Initialisations (:func:`initialise`):

* ``default`` -- PyTorch's own initialisation of :class:`torch.nn.RNN` (all weights and both biases
  :math:`\mathcal U(-1/\sqrt N, 1/\sqrt N)`, i.e. in mean-field terms :math:`\sigma_w^2 = 1/3`,
  :math:`\sigma_v^2 = N_{in}/(3N)`, :math:`\sigma_b^2 = 2/(3N)`, :math:`\mu_b=0`), resp. the minimalRNN layer's
  default (:math:`\sigma_w=\sigma_v=1`, :math:`\sigma_b=\mu_b=0`, Gaussian);
* ``critical`` -- :func:`mftrnn.nets.init.critical_rnn_init_` (vanilla: :math:`\chi = 1` at a chosen :math:`q^*`) and
  :func:`mftrnn.nets.init.critical_minimal_init_` (minimalRNN: gate bias such that :math:`\xi \approx kT`);
* ``off-critical`` -- explicit :math:`\sigma_w, \sigma_v, \sigma_b, \mu_b` (:func:`mftrnn.nets.nn.init_` conventions;
  the sweeps use :math:`0.5\times` and :math:`2\times` the critical :math:`\sigma_w` for the vanilla RNN and
  :math:`\mu_b = 0` for the minimalRNN);

with ``weights="orthogonal"`` (:math:`W = \sigma_w O`) or ``"gaussian"`` (:math:`W_{ij}\sim\mathcal N(0,
\sigma_w^2/N)`) recurrent weights.  The readout is PyTorch's default :class:`torch.nn.Linear` in every case.

Training (:func:`train`): Adam, gradient-norm clipping, a fixed number of steps with mini-batches drawn uniformly
(with replacement) from the training set, and every ``eval_every`` steps the accuracy and cross-entropy on a fixed
test subset (the same images for every run).  Robustness: atomic, checksummed checkpoints (model, optimiser, RNG
states, the curve so far; every ``--checkpoint-every``: ``60`` or ``60s``, ``5min``, ``1h`` of wall time, or
``500steps``, the syntax and meaning of :mod:`mftrnn.experiments.lm`) let the same call
resume after an interruption, and a damaged one is an error naming the file to delete; the result file and the
checkpoint are locked while a run uses them (a second run on them is refused); a run whose result file exists with
the same configuration is not redone; a non-finite loss or gradient, or a loss above :data:`DIVERGENCE_FACTOR`
times the larger of :math:`\ln 10` and the initial test loss, stops the run with :class:`~mftrnn.ConvergenceError`
(the result file then says ``"status": "diverged"``, and running it again repeats that error, as in
:mod:`mftrnn.experiments.lm`).  Each result is one JSON file with its provenance (command,
git commit and dirty flag, device, torch version, UTC dates, wall and CPU time), the configuration, the
hyperparameters the initialiser chose, the mean-field :math:`q^*, \chi, \xi` and the curve.  :func:`run_sweep`
runs a preset's whole set of configurations (``mftrnn digits --sweep cpu --out-dir book/results/digits``);
:func:`plot_curves` draws the accuracy curves from the result files.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import platform
import struct
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .harness import (default_checkpoint_path, jsonable as _jsonable, load_result_files, one_line as _one_line,
                      CheckpointEvery, TrainingRun, checkpoint_cadence, device_name, git_state, optimizer_state,
                      resolve_device, run_files, save_checkpoint)
from . import data as _data
from ..errors import ConvergenceError, DataError, DomainError, MftrnnError, UnknownCellError
from ..nets.init import RNN_OFF_CRITICAL_FACTORS, mean_field_init, pytorch_rnn_default_hyperparameters
from ..nets.registry import LiveNames, sequence_cells, sequence_implementation, sequence_module

__all__ = [
    "DIVERGENCE_FACTOR",
    "DigitsData",
    "load_mnist",
    "load_sklearn_digits",
    "load_dataset",
    "read_idx",
    "write_idx",
    "SequentialDigits",
    "SequenceClassifier",
    "DigitsConfig",
    "PRESETS",
    "PRESET_SEEDS",
    "CELLS",
    "INITS",
    "WEIGHTS",
    "DATASETS",
    "initialise",
    "theory",
    "evaluate",
    "fixed_test_subset",
    "default_checkpoint_path",
    "train",
    "sweep_configs",
    "run_sweep",
    "load_results",
    "steps_to_accuracy",
    "summary",
    "plot_curves",
    "MNIST_FILES",
    "MNIST_SHA256",
    "MNIST_URL",
]



def _mean_field_cells() -> tuple[str, ...]:
    """Registered cells whose fast sequence module has registered mean-field initialisations (read now)."""
    return tuple(c for c in sequence_cells() if mean_field_init(sequence_implementation(c).torch_class) is not None)


CELLS = LiveNames(_mean_field_cells)
"""Cells of the digits task: those of the registry whose sequence module (:func:`mftrnn.nets.registry.sequence_module`)
has registered mean-field initialisations (:func:`mftrnn.nets.init.mean_field_init`): ``vanilla``, ``minimal``."""
INITS = ("default", "critical", "off-critical")
WEIGHTS = ("orthogonal", "gaussian")
DATASETS = ("mnist", "sklearn")
N_CLASSES = 10
RESULT_FORMAT = "mftrnn.seqdigits/1"
"""Format tag of result files (that of the committed results in ``book/results/digits``)."""
RESULT_FORMATS = (RESULT_FORMAT, "mftrnn.experiments.seqdigits/1")
"""Tags :func:`load_results` accepts: the second was written for a while after the module moved to
``mftrnn.experiments`` (same layout)."""

# ---------------------------------------------------------------------------------------------------------------
# MNIST files: IDX parsing, verification, download on request
# ---------------------------------------------------------------------------------------------------------------

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split -> (images file, labels file), uncompressed names inside ``DATA/mnist/`` (each may also be ``NAME.gz``)."""

MNIST_SHA256: dict[str, str] = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
"""sha256 of the **uncompressed** canonical IDX files (``shared/data/SHA256SUMS``)."""

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/{file}.gz"
"""Canonical location of the gzipped MNIST files; ``{file}`` is the uncompressed name."""

# IDX type codes (third magic byte) -> big-endian NumPy dtype
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}


def read_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Parse the bytes of an IDX file into a NumPy array (native byte order).

    Layout: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D``
    float32, ``0x0E`` float64), the number of dimensions :math:`d\\ge1`, then :math:`d` big-endian uint32 sizes
    and the data (big-endian, C order).  A bad magic number, unknown type, truncated header or a data length that
    differs from the product of the sizes raises :class:`~mftrnn.DataError` naming ``what``.
    """
    if len(raw) < 4:
        raise DataError(f"{what}: not an IDX file (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{what}: not an IDX file (magic number {raw[:4].hex()} does not start with 0000)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{what}: unknown IDX data type code 0x{code:02x}")
    if ndim < 1:
        raise DataError(f"{what}: IDX file with 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{what}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{what}: IDX file {kind}: {len(raw):,} bytes for shape {dims} of {dtype.name} "
                        f"(expected {expected:,})")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(array) -> bytes:
    """The IDX bytes of ``array`` (uint8, int8, int16, int32, float32 or float64; at least one dimension)."""
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"IDX cannot store dtype {a.dtype}")
    if a.ndim < 1 or a.ndim > 255:
        raise DataError(f"IDX needs 1 to 255 dimensions, got {a.ndim}")
    head = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + np.ascontiguousarray(a, dtype=_IDX_DTYPES[code]).tobytes()


def _read_bytes_verified(path: Path, expected: str) -> bytes:
    """Content of ``path`` (gunzipped if it ends in ``.gz``), verified against the sha256 ``expected``."""
    return _data._read_bytes_verified(path, expected)


def _mnist_missing_message(missing: list[str], folder: Path, candidates: list[Path]) -> str:
    searched = ", ".join(str(c / "mnist") for c in candidates)
    files = ", ".join(f"{f}[.gz]" for f in missing)
    url = MNIST_URL.format(file="{" + ",".join(sorted(MNIST_SHA256)) + "}")
    return (f"MNIST data not found: missing {files} in {folder} (searched: {searched}). "
            f"Point the environment variable {_data.ENV_VAR} (or --data-dir) at the folder that contains "
            f"'mnist/' (e.g. export {_data.ENV_VAR}=/path/to/shared/data); or pass --download "
            f"to fetch the canonical files from {url} into {folder} and verify their sha256.")


def _download_mnist_file(filename: str, folder: Path) -> Path:
    """Fetch ``filename.gz``, verify the sha256 of its content, and only then store it (atomically)."""
    url = MNIST_URL.format(file=filename)
    try:
        data = _data._fetch(url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"download of {url} failed: {exc}") from None
    try:
        content = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError) as exc:
        raise DataError(f"download of {url} is a corrupt gzip stream: {exc}") from None
    _data._verify(content, MNIST_SHA256[filename], f"download of {url}", _data._HINT_DOWNLOAD)
    dest = folder / (filename + ".gz")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _data._write_atomic(gzip.compress(content) if content is data else data, dest)
    except OSError as exc:
        raise DataError(f"cannot write {dest}: {exc}; choose a writable folder with --data-dir "
                        f"or {_data.ENV_VAR}") from None
    return dest


@dataclass(eq=False)
class DigitsData:
    """Images in :math:`[0, 1]` (``float32``, shape ``(n, rows, cols)``) and ``int64`` labels in ``0..9``.

    ``sources`` maps each file read to the sha256 of its content (empty for generated data).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sources: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def cols(self) -> int:
        return int(self.x_train.shape[2])

    def __repr__(self) -> str:
        return (f"DigitsData(name={self.name!r}, train={len(self.y_train):,}, test={len(self.y_test):,}, "
                f"image={self.rows}x{self.cols})")


def _check_split(images: np.ndarray, labels: np.ndarray, what: str) -> None:
    if images.ndim != 3:
        raise DataError(f"{what}: images must have 3 dimensions (n, rows, cols), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{what}: labels must have 1 dimension, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{what}: {len(images):,} images but {len(labels):,} labels")
    if len(labels) == 0:
        raise DataError(f"{what}: no images")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(f"{what}: labels must lie in 0..{N_CLASSES - 1}, found {labels.min()}..{labels.max()}")


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = False) -> DigitsData:
    """MNIST from ``DATA/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, verified.

    ``DATA`` is ``data_dir``, else ``$MFTRNN_DATA``, else ``../shared/data`` (see
    :func:`mftrnn.experiments.data.candidate_data_dirs`).  Every file's uncompressed content must match :data:`MNIST_SHA256`.
    Missing files raise :class:`~mftrnn.DataError` saying where we looked and what to do, unless ``download=True``:
    then only the missing files are fetched from :data:`MNIST_URL`, verified and written.
    """
    candidates = _data.candidate_data_dirs(data_dir)
    root = _data._choose_data_dir("mnist", candidates)
    folder = root / "mnist"
    names = [f for pair in MNIST_FILES.values() for f in pair]
    paths = {f: _data._find_file(folder, f) for f in names}
    missing = [f for f in names if paths[f] is None]
    if missing and not download:
        raise DataError(_mnist_missing_message(missing, folder, candidates))
    for f in missing:
        paths[f] = _download_mnist_file(f, folder)
    arrays, sources = {}, {}
    for f in names:
        raw = _read_bytes_verified(paths[f], MNIST_SHA256[f])
        arrays[f] = read_idx(raw, str(paths[f]))
        sources[str(paths[f])] = MNIST_SHA256[f]
    out = {}
    for split, (fi, fl) in MNIST_FILES.items():
        images, labels = arrays[fi], arrays[fl]
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DataError(f"MNIST {split}: expected uint8 IDX files, got {images.dtype} and {labels.dtype}")
        _check_split(images, labels, f"MNIST {split} ({paths[fi]}, {paths[fl]})")
        out[split] = (images.astype(np.float32) / 255.0, labels.astype(np.int64))
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise DataError(f"MNIST: train images {out['train'][0].shape[1:]} and test images "
                        f"{out['test'][0].shape[1:]} differ in size")
    return DigitsData("mnist", *out["train"], *out["test"], sources=sources)


def load_sklearn_digits(test_fraction: float = 0.25, seed: int = 0) -> DigitsData:
    """scikit-learn's 1,797 8x8 digits (pixel values 0..16, scaled to [0, 1]), split at random into train/test.

    The split is a permutation drawn with ``numpy.random.default_rng(seed)``; the last
    ``round(test_fraction * 1797)`` images are the test set.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the 'sklearn' data set needs scikit-learn (pip install scikit-learn)") from None
    if not 0.0 < test_fraction < 1.0:
        raise DomainError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    d = load_digits()
    images = np.asarray(d.images, dtype=np.float32) / 16.0
    labels = np.asarray(d.target, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    tr, te = perm[:-n_test], perm[-n_test:]
    return DigitsData("sklearn", images[tr], labels[tr], images[te], labels[te])


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> DigitsData:
    """``"mnist"`` (:func:`load_mnist`) or ``"sklearn"`` (:func:`load_sklearn_digits`)."""
    if name == "mnist":
        return load_mnist(data_dir, download=download)
    if name == "sklearn":
        return load_sklearn_digits()
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------------

class SequentialDigits:
    r"""Digits as sequences: ``rows`` steps of ``cols`` features (or pixel by pixel), then ``T_pad`` zero steps.

    Inputs are :math:`x = s\,(p - m)` with the per-pixel training mean :math:`m` and one global
    :math:`s = \sqrt{R / \overline{(p-m)^2}}` (bar: mean over training images and pixels), so that the training
    inputs have zero mean per component and average per-component second moment exactly :math:`R`.
    ``n_train`` keeps only the first ``n_train`` training images (statistics included).  Tensors live on
    ``device``; :meth:`batch` returns ``(B, T, n_features)`` inputs and ``(B,)`` labels.
    """

    def __init__(self, data: DigitsData, T_pad: int = 0, R: float = 1.0, pixel: bool = False,
                 n_train: int | None = None, device="cpu"):
        self.T_pad = _check_int("T_pad", T_pad, 0)
        self.R = _check_positive("R", R)
        self.pixel = bool(pixel)
        x_train, y_train = data.x_train, data.y_train
        if n_train is not None:
            n_train = _check_int("n_train", n_train, 1)
            if n_train > len(y_train):
                raise DomainError(f"n_train={n_train} exceeds the {len(y_train):,} training images of {data.name}")
            x_train, y_train = x_train[:n_train], y_train[:n_train]
        x_train = np.asarray(x_train, dtype=np.float64)
        self.mean = x_train.mean(axis=0)
        var = float(((x_train - self.mean) ** 2).mean())
        if not var > 0:
            raise DataError(f"{data.name}: the training images are all identical; cannot normalise")
        self.scale = math.sqrt(self.R / var)
        self.rows, self.cols = data.rows, data.cols
        self.image_steps = self.rows * self.cols if self.pixel else self.rows
        self.n_features = 1 if self.pixel else self.cols
        self.T = self.image_steps + self.T_pad
        self.device = torch.device(device)
        self.x_train = self._normalise(x_train)
        self.y_train = torch.as_tensor(y_train, dtype=torch.int64, device=self.device)
        self.x_test = self._normalise(data.x_test)
        self.y_test = torch.as_tensor(data.y_test, dtype=torch.int64, device=self.device)

    def _normalise(self, images: np.ndarray) -> torch.Tensor:
        """``(n, image_steps, n_features)`` float32 tensor of :math:`s(p - m)` (no padding)."""
        x = (np.asarray(images, dtype=np.float64) - self.mean) * self.scale
        x = x.reshape(len(x), self.image_steps, self.n_features)
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    @property
    def n_train(self) -> int:
        return int(self.y_train.numel())

    def sequences(self, x: torch.Tensor) -> torch.Tensor:
        """Append ``T_pad`` zero steps to normalised images ``(B, image_steps, n_features)``."""
        if self.T_pad == 0:
            return x
        return torch.cat([x, x.new_zeros(x.shape[0], self.T_pad, x.shape[2])], dim=1)

    def batch(self, idx: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, T, n_features)`` and labels ``(B,)`` of the images ``idx`` of ``split``."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        idx = idx.to(x.device)
        return self.sequences(x[idx]), y[idx]


# ---------------------------------------------------------------------------------------------------------------
# Models and initialisations
# ---------------------------------------------------------------------------------------------------------------

class SequenceClassifier(nn.Module):
    """A one-layer recurrent network (the cell's sequence module, :func:`mftrnn.nets.registry.sequence_module`:
    ``"vanilla"`` tanh :class:`torch.nn.RNN`, ``"minimal"`` :class:`mftrnn.nets.layers.MinimalRNN`; ``batch_first``)
    and a linear readout of the last hidden state."""

    def __init__(self, cell: str, n_features: int, hidden: int, n_classes: int = N_CLASSES):
        super().__init__()
        _check_cell(cell)
        self.cell = cell
        self.rnn = sequence_module(cell, n_features, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(x)
        return self.readout(h_n[-1])


_pytorch_default_hyperparameters = pytorch_rnn_default_hyperparameters  # moved to mftrnn.nets.init


def _mean_field(cell: str):
    """The :class:`mftrnn.nets.init.MeanFieldInit` of the cell's sequence module."""
    _check_cell(cell)
    return mean_field_init(sequence_implementation(cell).torch_class)


_HP_KEYS = ("sigma_w", "sigma_v", "sigma_b", "mu_b")


@torch.no_grad()
def initialise(model: SequenceClassifier, config: "DigitsConfig", T: int,
               generator: torch.Generator | None = None) -> dict:
    r"""Initialise ``model.rnn`` as ``config`` says; return the mean-field hyperparameters actually used.

    The returned dict always holds ``sigma_w, sigma_v, sigma_b, mu_b`` and ``R`` -- the second moment of the
    input the *cell* sees (for the minimalRNN the embedded :math:`z`, :math:`R_z = \sigma_\phi^2 R +
    \sigma_{\phi b}^2`) -- plus ``orthogonal`` and whatever else the initialiser reports.  ``T`` is the memory
    length (used by the minimalRNN's timescale initialiser).
    """
    init, cell, R = config.init, config.cell, config.R
    orthogonal = config.weights == "orthogonal"
    rnn, mf = model.rnn, _mean_field(cell)
    if init == "default":
        hp = mf.default(rnn)
    elif init == "critical":
        info = mf.critical(rnn, T=T, R=R, q_star=config.q_star, k=config.k, sigma_w=config.sigma_w,
                           sigma_b=config.sigma_b, mu_b=config.mu_b, orthogonal=orthogonal, generator=generator)
        hp = dict(_jsonable(info), orthogonal=orthogonal)
    else:
        hp = mf.explicit(rnn, config.sigma_w, config.sigma_v, config.sigma_b, config.mu_b, orthogonal=orthogonal,
                         generator=generator)
    hp = dict(hp)
    hp.update(mf.cell_input(hp, R))  # R of the input the cell sees (minimalRNN: of z = Phi x + phi_b; and R_x)
    if hp.get("num_layers") == 1:
        hp.pop("layers", None)  # one layer: the per-layer list repeats the top-level values
    missing = [k for k in _HP_KEYS if k not in hp]
    if missing:
        raise MftrnnError(f"the {init} initialiser of the {cell} cell did not report {missing}")
    return hp


def theory(cell: str, hp: dict) -> dict:
    r"""Mean-field :math:`q^*, Q^*, \chi, \xi` at the hyperparameters ``hp`` for the input phase (second moment
    ``hp["R"]``) and the blank phase (:math:`R = 0`); ``None`` entries with an ``"error"`` if a fixed point fails."""
    from ..theory.fixed_point import fixed_point
    out = {}
    for phase, R in (("input", hp["R"]), ("blank", 0.0)):
        try:
            fp = fixed_point(cell, **{k: float(hp[k]) for k in _HP_KEYS}, R=float(R))
            d = fp.to_dict()
            out[phase] = {k: d[k] for k in ("R", "q_star", "Q_star", "chi", "xi", "chi_q", "multistable")}
        except MftrnnError as exc:
            out[phase] = {"R": float(R), "error": _one_line(exc)}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Configuration and presets
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DigitsConfig:
    """Everything that determines a run's numbers (two runs with equal configs give equal curves on a device).

    ``weights`` is ``None`` for ``init="default"`` (the default initialisers choose their own distribution) and
    ``"orthogonal"`` or ``"gaussian"`` otherwise.  ``q_star`` is the vanilla critical initialiser's target
    :math:`q^*`; ``k`` the minimalRNN timescale initialiser's :math:`\\xi/T`; ``sigma_w, sigma_v, sigma_b, mu_b``
    the explicit hyperparameters of ``off-critical`` (``sigma_w``, if given, is also passed to the minimalRNN's
    critical initialiser; ``sigma_b``, ``mu_b`` to the vanilla one).
    """

    dataset: str = "mnist"
    cell: str = "vanilla"
    init: str = "critical"
    weights: str | None = None
    T_pad: int = 0
    pixel: bool = False
    hidden: int = 128
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    clip: float = 1.0
    eval_every: int = 100
    n_test: int = 1000
    n_train: int | None = None
    R: float = 1.0
    q_star: float = 0.1
    k: float = 1.0
    sigma_w: float | None = None
    sigma_v: float | None = None
    sigma_b: float | None = None
    mu_b: float | None = None
    seed: int = 0
    device: str = "cpu"

    def validated(self) -> "DigitsConfig":
        """A copy with defaults filled in; raises :class:`~mftrnn.DomainError` (or a subclass) on bad values."""
        if self.dataset not in DATASETS:
            raise DataError(f"unknown data set {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        _check_cell(self.cell)
        if self.init not in INITS:
            raise DomainError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        weights = self.weights
        if self.init == "default":
            if weights not in (None, "default"):
                raise DomainError("weights does not apply to init 'default' (PyTorch's / the layer's own "
                                  "distribution); leave it out")
            weights = None
        elif weights is None:
            weights = "orthogonal"
        elif weights not in WEIGHTS:
            raise DomainError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
        for name in ("T_pad",):
            _check_int(name, getattr(self, name), 0)
        for name in ("hidden", "steps", "batch_size", "eval_every", "n_test"):
            _check_int(name, getattr(self, name), 1)
        if self.n_train is not None:
            _check_int("n_train", self.n_train, 1)
        _check_int("seed", self.seed, 0)
        for name in ("lr", "clip", "R", "q_star", "k"):
            _check_positive(name, getattr(self, name))
        hp = {k: getattr(self, k) for k in _HP_KEYS}
        for name, v in hp.items():
            if v is not None:
                v = _check_finite(name, v)
                if name != "mu_b" and v < 0:
                    raise DomainError(f"{name} must be >= 0, got {v:g}")
                hp[name] = v
        if self.init == "off-critical":
            if hp["sigma_w"] is None:
                raise DomainError("init 'off-critical' needs an explicit sigma_w")
            hp = {"sigma_v": 1.0, "sigma_b": 0.0, "mu_b": 0.0, **{k: v for k, v in hp.items() if v is not None}}
        elif self.init == "default":
            given = [k for k, v in hp.items() if v is not None]
            if given:
                raise DomainError(f"init 'default' takes no explicit hyperparameters, got {', '.join(given)}")
        else:
            mf = _mean_field(self.cell)
            extra = [k for k in mf.chooses if hp[k] is not None]
            if extra:
                raise DomainError(mf.refusal.format(extra=", ".join(extra)))
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise DomainError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        return dataclasses.replace(self, weights=weights, **{k: (None if v is None else float(v))
                                                              for k, v in hp.items()},
                                   lr=float(self.lr), clip=float(self.clip), R=float(self.R),
                                   q_star=float(self.q_star), k=float(self.k), pixel=bool(self.pixel))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DigitsConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DomainError(f"unknown configuration key(s) {sorted(unknown)}")
        return cls(**d)

    def label(self) -> str:
        """Short human-readable name, e.g. ``vanilla critical orthogonal`` or ``vanilla off-critical sigma_w=2``."""
        parts = [self.cell, self.init] + ([self.weights] if self.weights else [])
        if self.init == "off-critical":
            parts.append(f"sigma_w={self.sigma_w:.3g}")
            if "mu_b" in _mean_field(self.cell).chooses or self.mu_b:  # mu_b is the critical knob, or set
                parts.append(f"mu_b={self.mu_b:.3g}")
        return " ".join(parts)

    def filename(self) -> str:
        """File name of the run's result, e.g. ``vanilla-critical-orthogonal-s0.json``."""
        parts = [self.cell, self.init] + ([self.weights] if self.weights else [])
        if self.init == "off-critical":
            parts.append(f"sw{self.sigma_w:.3g}")
        return "-".join(parts) + f"-s{self.seed}.json"


PRESETS: dict[str, dict] = {
    # tests: sklearn 8x8 digits, T = 8 + 4, about 0.5 s a run on one core
    "tiny": dict(dataset="sklearn", T_pad=4, hidden=32, steps=300, batch_size=32, lr=3e-3, eval_every=50,
                 n_test=300),
    # the committed runs (book/results/digits): T = 28 + 72 = 100 >> xi of the default initialisations; chosen by
    # pilot runs (lr 1e-3 made the critical vanilla RNN's curve erratic, 3e-4 and 1e-4 did not)
    "cpu": dict(dataset="mnist", T_pad=72, hidden=128, steps=2000, batch_size=64, lr=3e-4, clip=1.0,
                eval_every=100, n_test=2000),
    # a lent GPU: T = 28 + 272 = 300, a wider network, more steps, the whole test set (not run on a GPU yet)
    "gpu": dict(dataset="mnist", T_pad=272, hidden=512, steps=10000, batch_size=128, lr=3e-4, clip=1.0,
                eval_every=250, n_test=10000, device="cuda"),
}
"""Preset name -> :class:`DigitsConfig` fields (``cell``, ``init``, ``weights`` and hyperparameters come from the
command line or from :func:`sweep_configs`)."""

PRESET_SEEDS: dict[str, tuple[int, ...]] = {"tiny": (0,), "cpu": (0, 1), "gpu": (0, 1, 2)}
"""Seeds of each preset's sweep (:func:`run_sweep`)."""

_IMAGE_SIDE = {"mnist": 28, "sklearn": 8}

OFF_CRITICAL_FACTORS = RNN_OFF_CRITICAL_FACTORS
"""The vanilla sweep's off-critical sigma_w, as multiples of the critical one (:mod:`mftrnn.nets.init`)."""


def _critical_hyperparameters(config: DigitsConfig) -> dict:
    """The hyperparameters the critical initialiser chooses for ``config`` (drawn on a throwaway model)."""
    cfg = dataclasses.replace(config, init="critical", weights="orthogonal", sigma_w=None, sigma_v=None,
                              sigma_b=None, mu_b=None).validated()
    side = _IMAGE_SIDE[cfg.dataset]
    n_features, image_steps = (1, side * side) if cfg.pixel else (side, side)
    model = SequenceClassifier(cfg.cell, n_features, cfg.hidden)
    return initialise(model, cfg, image_steps + cfg.T_pad, torch.Generator().manual_seed(cfg.seed))


def sweep_configs(preset: str, seeds: Iterable[int] | None = None, **overrides) -> list[DigitsConfig]:
    """The configurations of a sweep: for each seed (default :data:`PRESET_SEEDS`) and cell of :data:`CELLS`
    (off-critical variants from the cell's :class:`mftrnn.nets.init.MeanFieldInit`),

    * vanilla: ``default``; ``critical`` orthogonal and Gaussian; ``off-critical`` orthogonal with
      :data:`OFF_CRITICAL_FACTORS` times the critical :math:`\\sigma_w` (the critical :math:`\\sigma_v`, and
      :math:`\\sigma_b = \\mu_b = 0`);
    * minimal: ``default``; ``critical`` orthogonal and Gaussian; ``off-critical`` orthogonal with the critical
      :math:`\\sigma_w, \\sigma_v` but :math:`\\mu_b = 0` (the gate's timescale left at its default).
    """
    if preset not in PRESETS:
        raise DomainError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = dict(PRESETS[preset], **overrides)
    seeds = PRESET_SEEDS[preset] if seeds is None else tuple(seeds)
    out = []
    for seed in seeds:
        for cell in CELLS:
            cfg = DigitsConfig(**dict(base, cell=cell, seed=seed))
            crit = _critical_hyperparameters(cfg)
            out.append(dataclasses.replace(cfg, init="default", weights=None))
            for w in WEIGHTS:
                out.append(dataclasses.replace(cfg, init="critical", weights=w))
            for off in _mean_field(cell).off_critical(crit):
                out.append(dataclasses.replace(cfg, init="off-critical", weights="orthogonal",
                                               **{k: round(v, 6) for k, v in off.items()}))
    return [c.validated() for c in out]


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (a separate function so that tests can inject a failure)."""
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def evaluate(model: nn.Module, task: SequentialDigits, idx: torch.Tensor, chunk: int = 1000) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on the test images ``idx``."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(idx), chunk):
        x, y = task.batch(idx[start:start + chunk], split="test")
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / len(idx), loss_sum / len(idx)


def fixed_test_subset(n_test: int, n_available: int) -> torch.Tensor:
    """The fixed test images of every run: the first ``n_test`` of a permutation drawn with seed 12345."""
    if n_test > n_available:
        raise DomainError(f"n_test={n_test} exceeds the {n_available:,} test images")
    return torch.randperm(n_available, generator=torch.Generator().manual_seed(12345))[:n_test]


def load_results(paths) -> list[dict]:
    """Result dicts from a folder (every ``*.json`` in it, sorted), one file, or a list of files/dicts."""
    return load_result_files(paths, RESULT_FORMATS, f"a seqdigits result (format {RESULT_FORMAT!r})")


DIVERGENCE_FACTOR = 3.0
"""A training or test loss above ``DIVERGENCE_FACTOR`` times the larger of :math:`\\ln 10` (guessing uniformly) and
the initial test loss means the run diverged (as ``divergence_factor`` :math:`\\times \\ln V` in
:mod:`mftrnn.experiments.lm`).  The committed runs stay below 2.5 nats, far under the bound (6.9 nats)."""

_CHECKPOINT_KEYS = ("model", "optimizer", "batch_rng", "torch_rng", "hyperparameters")
"""The experiment's checkpoint keys, beside :data:`~mftrnn.experiments.harness.RUN_CHECKPOINT_KEYS`."""


def train(config: DigitsConfig, out: str | os.PathLike, *, data: DigitsData | None = None,
          data_dir: str | os.PathLike | None = None, download: bool = False,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int | str | CheckpointEvery | None = None,
          checkpoint_every_s: float | None = None, stop_after: int | None = None, force: bool = False,
          command: str | None = None,
          log: Callable[[str], None] | None = print, divergence_factor: float = DIVERGENCE_FACTOR) -> dict:
    r"""Train one configuration and write its JSON result to ``out`` (atomically); return the result dict.

    * Before any work, ``out`` is checked (it ends in ``.json``, its folder exists) and locked together with the
      checkpoint (:class:`mftrnn.experiments.harness.RunLock`): a second run on the same file is refused.
    * If ``out`` already holds a result of the same configuration, it is returned without training; if that run
      diverged, its recorded error is raised again (:class:`~mftrnn.ConvergenceError`, as in
      :func:`mftrnn.experiments.lm.train`).  Another configuration, or a file that is not a readable result, is an
      error unless ``force`` (``--force``), which replaces it.
    * Checkpoints go to ``checkpoint`` (default :func:`default_checkpoint_path`) after every
      ``checkpoint_every`` optimizer steps and/or once ``checkpoint_every_s`` seconds of wall time have passed
      since the last one (finite and >= 0; 0: after every step), as in :func:`mftrnn.experiments.lm.train`
      (:func:`mftrnn.experiments.harness.checkpoint_cadence`): ``checkpoint_every`` is an integer number of steps
      or a string as ``mftrnn digits --checkpoint-every`` takes it (``"60"``, ``"60s"``, ``"5min"``, ``"1h"``: wall
      time, a bare number being seconds; ``"500steps"``); neither given: every 60 s.  A present checkpoint of the
      same configuration is verified (:func:`mftrnn.experiments.harness.load_checkpoint`: checksum, keys, a
      position inside the run) and resumed (bit-for-bit the same curve on the same device and thread count); it
      is deleted when the run ends.  The recorded wall time and process CPU time (``cpu_time_s``; ``None`` when a
      session's is unknown) sum the sessions up to their last checkpoint (work lost to an interruption is not
      counted); ``provenance["sessions"]`` says how many processes the run took.
    * ``stop_after``: stop (with a checkpoint) once this many steps are done -- for time-sliced runs and tests;
      the returned dict then has ``"status": "interrupted"`` and no result file is written.
    * A non-finite loss or gradient norm, or a training or test loss above ``divergence_factor`` times the larger
      of :math:`\ln 10` and the initial test loss, writes a result with ``"status": "diverged"`` and raises
      :class:`~mftrnn.ConvergenceError`.
    ``data`` (a :class:`DigitsData`) replaces loading ``config.dataset``; ``log`` receives progress lines.
    """
    config = config.validated()
    out, ckpt = run_files(out, checkpoint)
    cadence = checkpoint_cadence(checkpoint_every, checkpoint_every_s, default=CheckpointEvery(seconds=60.0))
    divergence_factor = _check_positive("divergence_factor", divergence_factor)
    device = resolve_device(config.device)
    if stop_after is not None:
        stop_after = _check_int("stop_after", stop_after, 0)
    # the sessions' commits are not recorded (git=None): the result records the checkout at the end;
    # save_checkpoint by this module's name, so that a test can stand in for it
    run = TrainingRun(config, out, ckpt, command=command, log=log, save=save_checkpoint)
    with run.lock():
        return _train(run, config, data, data_dir, download, cadence, stop_after, force, divergence_factor, device)


def _train(run: TrainingRun, config: DigitsConfig, data, data_dir, download, cadence, stop_after, force,
           divergence_factor, device) -> dict:
    """The body of :func:`train`, under the output lock."""
    existing = run.existing_result(load_results, force)
    if existing is not None:
        return existing
    if data is None:
        data = load_dataset(config.dataset, data_dir=data_dir, download=download)
    task = SequentialDigits(data, config.T_pad, config.R, config.pixel, config.n_train, device=device)
    test_idx = fixed_test_subset(config.n_test, len(data.y_test))

    torch.manual_seed(config.seed)  # PyTorch's default initialisation (nn.RNN, the readout) draws from it
    model = SequenceClassifier(config.cell, task.n_features, config.hidden)
    hp = initialise(model, config, task.T, torch.Generator().manual_seed(config.seed))
    model.to(device)
    params = [p for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    batch_gen = torch.Generator().manual_seed(config.seed + 1_000_003)

    load, state = optimizer_state(model, opt, batch_gen, torch_rng=True)
    st = run.resume(_CHECKPOINT_KEYS, load)
    if st is not None:
        hp = st["hyperparameters"]
    th = theory(config.cell, hp)
    run.start(lambda: {**state(), "hyperparameters": hp})
    name, curve = run.out.name, run.curve

    def result(status: str, diverged: dict | None = None) -> dict:
        base = {"command": run.command, **git_state(), "device": device_name(device), "torch": torch.__version__,
                "python": platform.python_version(), "threads": torch.get_num_threads()}
        return {
            "format": RESULT_FORMAT, "name": run.out.stem, "label": config.label(), "status": status,
            "config": config.to_dict(), "hyperparameters": _jsonable(hp), "theory": th,
            "task": {"dataset": data.name, "rows": task.rows, "cols": task.cols, "image_steps": task.image_steps,
                     "n_features": task.n_features, "T": task.T, "n_train": task.n_train,
                     "n_test": config.n_test, "input_scale": task.scale,
                     "normalisation": "x = s (p - m): per-pixel training mean m, one global s with mean x^2 = R"},
            "final": curve[-1] if curve else None, "diverged": diverged, "curve": curve,
            "provenance": run.provenance(base, data=data.sources),
        }

    def diverge(message: str):
        run.diverge(result("diverged", {"step": run.step, "message": message}), message)

    def point(acc: float, tl: float, train_loss) -> dict:
        return {"step": run.step, "test_accuracy": acc, "test_loss": tl, "train_loss": train_loss,
                "wall_s": round(run.wall(), 3)}

    if run.step == 0 and not curve:
        acc, tl = evaluate(model, task, test_idx)
        curve.append(point(acc, tl, None))
        run.log(f"{name}: step 0 test acc {acc:.4f} loss {tl:.4f}")
    initial = curve[0]["test_loss"]
    if not math.isfinite(initial):
        diverge(f"the initial test loss is {initial}")
    max_loss = divergence_factor * max(math.log(N_CLASSES), initial)
    bound = f"{divergence_factor:g} x max(ln {N_CLASSES}, initial test loss {initial:.4g}) = {max_loss:.4g}"
    model.train()
    while run.step < config.steps:
        stopped = run.interrupt(stop_after)
        if stopped is not None:
            return stopped
        idx = torch.randint(task.n_train, (config.batch_size,), generator=batch_gen)
        x, y = task.batch(idx)
        loss = _loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, config.clip))
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
            acc, tl = evaluate(model, task, test_idx)
            if not math.isfinite(tl):
                diverge(f"test loss is {tl}")
            if tl > max_loss:
                diverge(f"test loss {tl:.4g} > {bound}")
            curve.append(point(acc, tl, run.train_loss()))
            run.log(f"{name}: step {run.step}/{config.steps} train loss {curve[-1]['train_loss']:.4f} "
                    f"test acc {acc:.4f} loss {tl:.4f} ({run.wall():.0f} s)")
        run.maybe_checkpoint(cadence)
    res = run.finish(result("finished"))
    run.log(f"{name}: finished, final test accuracy {res['final']['test_accuracy']:.4f} "
            f"in {res['provenance']['wall_time_s']:.0f} s")
    return res


def run_sweep(preset: str, out_dir: str | os.PathLike, *, seeds: Iterable[int] | None = None, data_dir=None,
              download: bool = False, command: str | None = None, log: Callable[[str], None] | None = print,
              checkpoint_every: int | str | CheckpointEvery | None = None, **overrides) -> list[dict]:
    """Run (or resume, or skip when done) every configuration of :func:`sweep_configs` into ``out_dir``.

    A diverging run is recorded (status ``"diverged"``) and the sweep goes on.  Returns the result dicts.
    ``checkpoint_every``: the cadence of every run (:func:`train`; default every 60 s).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DomainError(f"output folder {str(out_dir)!r} does not exist")
    cadence = checkpoint_cadence(checkpoint_every, default=CheckpointEvery(seconds=60.0))
    configs = sweep_configs(preset, seeds=seeds, **overrides)
    data = load_dataset(configs[0].dataset, data_dir=data_dir, download=download)
    results = []
    for cfg in configs:
        try:
            results.append(train(cfg, out_dir / cfg.filename(), data=data, command=command, log=log,
                                 checkpoint_every=cadence))
        except ConvergenceError as exc:
            if log:
                log(f"mftrnn: {_one_line(exc)}")
            results.extend(load_results([out_dir / cfg.filename()]))
    return results


def steps_to_accuracy(result: dict, threshold: float) -> int | None:
    """The first evaluated step at which the test accuracy reaches ``threshold`` (``None`` if it never does)."""
    for p in result["curve"]:
        if p["test_accuracy"] >= threshold:
            return int(p["step"])
    return None


def summary(results, thresholds: Iterable[float] = (0.5, 0.8)) -> list[dict]:
    """One row per result (folder, files or dicts as for :func:`load_results`): ``label``, ``seed``, ``status``,
    ``final_accuracy``, ``best_accuracy``, ``steps_to_<threshold>`` (:func:`steps_to_accuracy`), ``chi_input``,
    ``chi_blank``, ``wall_time_s``."""
    rows = []
    for r in load_results(results):
        row = {"label": r["label"], "seed": r["config"]["seed"], "status": r["status"],
               "final_accuracy": r["curve"][-1]["test_accuracy"],
               "best_accuracy": max(p["test_accuracy"] for p in r["curve"])}
        for t in thresholds:
            row[f"steps_to_{t:g}"] = steps_to_accuracy(r, t)
        row["chi_input"] = r["theory"]["input"].get("chi")
        row["chi_blank"] = r["theory"]["blank"].get("chi")
        row["wall_time_s"] = r["provenance"]["wall_time_s"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Plotting
# ---------------------------------------------------------------------------------------------------------------

_STYLE = {"default": ("tab:gray", "-"), "critical": ("tab:blue", "-"), "off-critical": ("tab:red", "-")}


def plot_curves(results, ax=None, metric: str = "test_accuracy", chance: bool = True):
    """Plot ``metric`` (``test_accuracy``, ``test_loss`` or ``train_loss``) against training step, one line per
    result (a folder, files or dicts as for :func:`load_results`); returns the axes.

    Colours by initialisation (grey and wide: default, blue: critical, red: off-critical), dashed for Gaussian
    weights; off-critical runs are told apart by the marker.  Runs of the same configuration (seeds) share one
    legend entry.  A dotted line marks chance accuracy (1/10).
    """
    import matplotlib.pyplot as plt

    results = load_results(results)
    if metric not in ("test_accuracy", "test_loss", "train_loss"):
        raise DomainError(f"unknown metric {metric!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    markers, seen = {}, set()
    for r in results:
        cfg = r["config"]
        color, ls = _STYLE.get(cfg["init"], ("k", "-"))
        if cfg.get("weights") == "gaussian":
            ls = "--"
        pts = [(p["step"], p[metric]) for p in r["curve"] if p.get(metric) is not None]
        if not pts:
            continue
        steps, vals = zip(*pts)
        label = r.get("label") or DigitsConfig.from_dict(cfg).label()
        marker = markers.setdefault(label, "ov^sD"[len(markers) % 5]) if cfg["init"] == "off-critical" else None
        shown = label + (" (diverged)" if r.get("status") == "diverged" else "")
        ax.plot(steps, vals, color=color, ls=ls, marker=marker, markevery=max(1, len(steps) // 8), ms=4,
                lw=3 if cfg["init"] == "default" else 1.5, alpha=0.6 if cfg["init"] == "default" else 1.0,
                label="_nolegend_" if shown in seen else shown)
        seen.add(shown)
    if chance and metric == "test_accuracy":
        ax.axhline(1.0 / N_CLASSES, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize="small")
    return ax


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------

def _check_cell(cell: str) -> None:
    if cell not in CELLS:
        raise UnknownCellError(f"unknown cell {cell!r} for the digits task; choose one of {', '.join(CELLS)}")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DomainError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DomainError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise DomainError(f"{name} must be finite, got {value!r}")
    return v


def _check_positive(name: str, value) -> float:
    v = _check_finite(name, value)
    if v <= 0:
        raise DomainError(f"{name} must be > 0, got {v:g}")
    return v



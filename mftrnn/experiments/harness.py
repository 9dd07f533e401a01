"""One run harness for the experiments: provenance (device, git state, versions, UTC dates), atomic JSON results
and verified checkpoints, output checks and locks, shared by :mod:`mftrnn.experiments.lm` and the training
experiments (they use it instead of copies of their own).  :class:`TrainingRun` keeps the bookkeeping of a
resumable run of a fixed number of optimizer steps (:mod:`~mftrnn.experiments.seqdigits`,
:mod:`~mftrnn.experiments.longseq`, :mod:`~mftrnn.experiments.seizure`): an existing result, the checkpoint's
verification and resumption, the sessions and their commits, the wall and CPU clocks, the due checkpoints, the
provenance, the final result.

Run safety, in the order a run meets it:

* :func:`resolve_device` turns ``"cpu"``/``"cuda[:i]"`` into a device, or one clear error.
* :func:`check_output` refuses, before any work, an output whose folder does not exist (nothing is created) or
  that is a folder.
* :class:`RunLock` takes an exclusive lock (``filelock``, an OS-level ``flock`` released by the kernel when the
  process dies, so a killed run never leaves a stale lock) on the result file and on the checkpoint, through a
  hidden lock file beside each (``.NAME.lock``, which also proves the folder writable).  A second run on the same
  output or checkpoint is refused at once with a message naming the holder (its output, process id, start time).
  Under the lock, temporary files that a killed writer of the same destinations left behind
  (``.NAME.XXXXXXXX.tmp``, see :func:`mftrnn._io.atomic_write`) are removed (:func:`clean_stale_temps`): no live
  writer can own them, since every writer of those files holds the lock.
* Results are written atomically (:func:`write_json_atomic`); checkpoints too (:func:`save_checkpoint`), with an
  integrity record inside: the sha256 of their content (:func:`content_digest`: every tensor's dtype, shape and
  bytes, every plain value) and the list of their keys.  :func:`load_checkpoint` verifies the zip container's
  CRCs, the record and the keys the caller requires, and turns any damage into one clear
  :class:`~mftrnn.MftrnnError` that says which file to delete to start the run again.

The git state is recorded when the package runs from a checkout and is ``None`` otherwise (an installed wheel
works without git).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import ConvergenceError, DataError, DomainError, MftrnnError
from .._io import atomic_write

__all__ = ["device_name", "git_state", "utc_now", "provenance", "write_json_atomic", "save_checkpoint",
           "load_checkpoint", "content_digest", "resolve_device", "check_output", "RunLock", "clean_stale_temps",
           "CheckpointEvery", "parse_checkpoint_every", "check_checkpoint_every_s", "checkpoint_cadence",
           "INTEGRITY_KEY", "default_checkpoint_path", "load_result_files", "jsonable", "one_line", "run_files",
           "refuse_unclean", "recorded_command", "RUN_CHECKPOINT_KEYS", "check_position", "optimizer_state",
           "TrainingRun"]


def device_name(device) -> str:
    """``"cuda: <name>"`` or ``"cpu: <model name> (<n> cores)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} ({os.cpu_count()} cores)"


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout that holds this package (tracked files)."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=20, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def utc_now() -> str:
    """The UTC time to the second, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(device="cpu", command: str | None = None) -> dict:
    """Where and with what a run was made: command line, git commit and dirty flag, device, versions, thread count,
    date."""
    from .. import __version__
    git = git_state()
    return dict(command=command, git_commit=git["commit"], git_dirty=git["dirty"], device=device_name(device),
                torch=torch.__version__, python=platform.python_version(), mftrnn=__version__,
                threads=torch.get_num_threads(), date_utc=utc_now())


# --------------------------------------------------------------------------------------------------------
# Devices and outputs
# --------------------------------------------------------------------------------------------------------

def resolve_device(name) -> torch.device:
    """``torch.device(name)`` for ``"cpu"`` or ``"cuda[:i]"``; :class:`~mftrnn.MftrnnError` (a ``ValueError``)
    with one line for anything else, or for CUDA without a CUDA build or device."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise MftrnnError(f"unknown device {str(name)!r}; use cpu or cuda[:i] (--device)") from None
    if dev.type not in ("cpu", "cuda"):
        raise MftrnnError(f"device must be cpu or cuda[:i], got {str(name)!r} (--device)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MftrnnError(f"device {str(name)!r} requested but CUDA is not available "
                              f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MftrnnError(f"device {str(name)!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_output(path, what: str = "result file", option: str = "--out", create_folder: bool = False) -> Path:
    """Refuse (:class:`~mftrnn.MftrnnError`) an output whose folder is missing or not a folder, or that is itself
    a folder; return it as a :class:`~pathlib.Path`.  Nothing is created, unless ``create_folder`` (for scratch
    files such as an explicit checkpoint path: a recorded command whose checkpoint folder in ``/tmp`` is gone
    still runs).  (That the folder is writable is proved by :class:`RunLock`, which creates its lock file there
    before any work.)"""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if create_folder and not parent.is_dir():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MftrnnError(f"cannot create the folder {str(parent)!r} of the {what} {str(path)!r} "
                              f"({exc.strerror or exc}); choose another {option}") from None
    if not parent.exists():
        raise MftrnnError(f"folder {str(parent)!r} of the {what} {str(path)!r} does not exist; create it or "
                          f"choose another {option}")
    if not parent.is_dir():
        raise MftrnnError(f"{str(parent)!r} (the folder of the {what} {str(path)!r}) is not a folder; choose "
                          f"another {option}")
    if path.is_dir():
        raise MftrnnError(f"the {what} {str(path)!r} is a folder; give a file name ({option})")
    return path


_TEMP_CHARS = "[a-z0-9_]{8}"  # tempfile.mkstemp's random part


def clean_stale_temps(path) -> list[Path]:
    """Remove the temporary files :func:`mftrnn._io.atomic_write` left beside ``path`` (``.NAME.XXXXXXXX.tmp``)
    when its process was killed while writing; return them.  Call it only while no other process can be writing
    ``path`` (under :class:`RunLock`)."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{_TEMP_CHARS}\.tmp$")
    removed = []
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return removed
    for entry in entries:
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


_HELD: dict = {}  # (lock file, thread id) -> number of RunLock holds in this process


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


class RunLock:
    """Exclusive locks on a run's files (result, checkpoint), taken without waiting.

    ``RunLock(paths, output=..., command=...)`` locks every path of ``paths`` (``None`` entries are skipped)
    through ``.NAME.lock`` beside it; use it as a context manager, or call :meth:`acquire` and :meth:`release`.
    The same thread may lock a path again (nested holds, e.g. a command line that locks before loading data and
    then calls ``train``); another thread or process may not.
    The lock file records the holder (process id, host, its output, command, start time); a second run that finds
    a path locked gets :class:`~mftrnn.MftrnnError` naming that holder.  Once locked, stale temporary files of the
    paths are removed (:func:`clean_stale_temps`).  The lock files are removed on release; a killed process's lock
    is released by the kernel (its lock file stays, harmless, and is reused).
    """

    def __init__(self, paths: Iterable, output=None, command: str | None = None, option: str = "--out"):
        seen, self.paths = set(), []
        for p in paths:
            if p is None:
                continue
            p = Path(p)
            key = os.path.abspath(p)
            if key not in seen:
                seen.add(key)
                self.paths.append(p)
        self.output = str(output) if output is not None else (str(self.paths[0]) if self.paths else None)
        self.command = command
        self.option = option
        self._held: list = []
        self.removed_temps: list[Path] = []

    def _info(self) -> bytes:
        return (json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), output=self.output,
                                command=self.command, started=utc_now())) + "\n").encode("utf-8")

    def acquire(self) -> "RunLock":
        from filelock import FileLock, Timeout

        info = self._info()

        def record(fd: int) -> None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)

        try:
            for p in self.paths:
                lp = _lock_path(p)
                key = (os.path.abspath(lp), threading.get_ident())
                if key in _HELD:  # this thread holds it already (a caller that locked before calling train)
                    _HELD[key] += 1
                    self._held.append((None, lp, key))
                    continue
                lock = FileLock(lp, timeout=0, on_acquired=record)
                try:
                    lock.acquire()
                except Timeout:
                    raise MftrnnError(f"{p} is in use by another run ({_holder(lp)}); wait for it to finish, "
                                      f"or choose another {self.option}") from None
                except OSError as exc:
                    raise MftrnnError(f"cannot write in the folder of {p} (creating the lock file {lp}: "
                                      f"{exc.strerror or exc}); choose a writable {self.option}") from None
                _HELD[key] = 1
                self._held.append((lock, lp, key))
            for p in self.paths:
                self.removed_temps += clean_stale_temps(p)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        while self._held:
            lock, lp, key = self._held.pop()
            n = _HELD.get(key, 1) - 1
            if n > 0:
                _HELD[key] = n
            else:
                _HELD.pop(key, None)
            if lock is None:  # a nested hold: the outer one releases the lock (holds nest, inner first)
                continue
            try:
                os.unlink(lp)  # while still held: a later run creates a fresh lock file
            except OSError:
                pass
            try:
                lock.release()
            except Exception:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(lock_path: Path) -> str:
    """A description of the process that holds ``lock_path``, read from the lock file."""
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8"))
        parts = [f"it writes {info['output']}" if info.get("output") else None,
                 f"pid {info.get('pid')} on {info.get('host')}", f"started {info.get('started')}"]
        return "; ".join(p for p in parts if p)
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return f"lock file {lock_path}"


# --------------------------------------------------------------------------------------------------------
# Checkpoint cadence
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointEvery:
    """How often a run checkpoints within an epoch: every ``seconds`` of wall time and/or every ``steps``
    optimizer steps (training batches); :func:`parse_checkpoint_every` sets exactly one of the two,
    :func:`checkpoint_cadence` (the API's two arguments) may set both (a checkpoint is due when either is) or
    neither (none within a run)."""

    seconds: float | None = None
    steps: int | None = None

    def __str__(self) -> str:
        parts = ([f"{self.steps} steps"] if self.steps is not None else []) + (
            [f"{self.seconds:g} s"] if self.seconds is not None else [])
        return " or ".join(parts) or "never within a run"

    def due(self, steps_done: int, seconds_since: float) -> bool:
        """Whether a checkpoint is due after ``steps_done`` optimizer steps of the run (at every multiple of
        ``steps``) and ``seconds_since`` seconds of wall time since the last checkpoint."""
        if self.steps is not None and steps_done % self.steps == 0:
            return True
        return self.seconds is not None and seconds_since >= self.seconds


_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "minutes": 60.0, "h": 3600.0, "hour": 3600.0, "hours": 3600.0}
_STEP_UNITS = ("step", "steps", "batch", "batches")


def parse_checkpoint_every(text, option: str = "--checkpoint-every") -> CheckpointEvery:
    """Parse a checkpoint cadence: a wall time (``"60"``, ``"60s"``, ``"5min"``, ``"1h"``; a bare number is
    seconds, as in every command) or a number of optimizer steps (``"500steps"``, ``"500 batches"``).

    Seconds must be finite and >= 0 (0: at every opportunity); steps an integer >= 1.  Anything else raises
    :class:`~mftrnn.MftrnnError` naming ``option``.
    """
    if isinstance(text, CheckpointEvery):
        return text
    s = str(text).strip().lower()
    m = re.fullmatch(r"([-+0-9.eE]+|nan|inf|[-+]inf)\s*([a-z]*)", s)
    hint = (f"{option} takes a wall time (60, 60s, 5min, 1h; a bare number is seconds) or a number of "
            f"training steps (500steps), got {str(text)!r}")
    if not m:
        raise MftrnnError(hint)
    number, unit = m.groups()
    try:
        value = float(number)
    except ValueError:
        raise MftrnnError(hint) from None
    if unit in _STEP_UNITS:
        if not (math.isfinite(value) and value == int(value) and value >= 1):
            raise MftrnnError(f"{option}: a number of steps must be an integer >= 1, got {str(text)!r}")
        return CheckpointEvery(steps=int(value))
    if unit not in _UNITS:
        raise MftrnnError(hint)
    return CheckpointEvery(seconds=check_checkpoint_every_s(value * _UNITS[unit], option))


def check_checkpoint_every_s(value, option: str = "--checkpoint-every (checkpoint_every_s)") -> float:
    """``value`` as a float of seconds, finite and >= 0; else :class:`~mftrnn.MftrnnError` naming ``option``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MftrnnError(f"{option} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v < 0:
        raise MftrnnError(f"{option} must be a finite number of seconds >= 0 (0: at every opportunity), "
                          f"got {value!r}")
    return v


def checkpoint_cadence(checkpoint_every=None, checkpoint_every_s=None, *,
                       default: CheckpointEvery | None = None) -> CheckpointEvery:
    """The cadence of a run from the two arguments that :func:`mftrnn.experiments.lm.train` and
    :func:`mftrnn.experiments.seqdigits.train` share (one meaning in both):

    * ``checkpoint_every``: an integer is a number of optimizer steps (training batches), >= 1; a string is
      parsed by :func:`parse_checkpoint_every` (the command line's ``--checkpoint-every``: ``"60"``, ``"5min"``,
      ``"500steps"``); a :class:`CheckpointEvery` is taken as it is;
    * ``checkpoint_every_s``: seconds of wall time, finite and >= 0 (:func:`check_checkpoint_every_s`).

    Both may be given (a checkpoint is then due when either is), unless both set a wall time.  Neither:
    ``default`` (the cadence of no checkpoints within a run when ``None``).  Errors are
    :class:`~mftrnn.MftrnnError` naming the argument.
    """
    steps = seconds = None
    if isinstance(checkpoint_every, (str, CheckpointEvery)):
        c = parse_checkpoint_every(checkpoint_every, "--checkpoint-every (checkpoint_every)")
        steps, seconds = c.steps, c.seconds
    elif checkpoint_every is not None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise MftrnnError(f"checkpoint_every must be an integer >= 1 (optimizer steps), a cadence such as "
                              f"'5min' or '500steps', or None; got {checkpoint_every!r}")
        steps = checkpoint_every
    if checkpoint_every_s is not None:
        if seconds is not None:
            raise MftrnnError(f"checkpoint_every={checkpoint_every!r} sets a wall time already; omit "
                              f"checkpoint_every_s")
        seconds = check_checkpoint_every_s(checkpoint_every_s, "checkpoint_every_s (--checkpoint-every)")
    if steps is None and seconds is None:
        return default if default is not None else CheckpointEvery()
    return CheckpointEvery(seconds=seconds, steps=steps)


# --------------------------------------------------------------------------------------------------------
# Atomic results, verified checkpoints
# --------------------------------------------------------------------------------------------------------

def write_json_atomic(path, obj: dict) -> None:
    """Write ``obj`` as JSON (no NaN or infinity) atomically."""
    text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda fh: fh.write(text.encode("utf-8")))


INTEGRITY_KEY = "integrity"
"""Key of a checkpoint's integrity record: ``{"sha256": content digest, "keys": sorted keys of the rest}``."""


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D|{len(obj)}|".encode())
        for k in sorted(obj, key=repr):
            h.update(f"{type(k).__name__}:{k!r}=".encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}|{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())


def content_digest(obj) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes, every plain value (``repr``),
    dict keys in sorted order -- independent of how ``torch.save`` lays the bytes out."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def save_checkpoint(path, state: dict) -> None:
    """``torch.save`` the state atomically, with an integrity record (:data:`INTEGRITY_KEY`: the
    :func:`content_digest` and the keys) that :func:`load_checkpoint` verifies."""
    if INTEGRITY_KEY in state:
        raise MftrnnError(f"internal error: a checkpoint may not use the key {INTEGRITY_KEY!r}")
    payload = dict(state)
    payload[INTEGRITY_KEY] = {"sha256": content_digest(state), "keys": sorted(state)}
    atomic_write(Path(path), lambda fh: torch.save(payload, fh))


def load_checkpoint(path, required: Iterable[str] = (), restart: str | None = None) -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint`; return its state (without the record).

    Checks, in order: the zip container's CRC-32 of every member (a flipped byte anywhere in the data), that it
    unpickles (tensors and plain data only), the integrity record (keys, sha256 of the content; files written
    before the record existed have none and skip this check), and that every key of ``required`` is present.  Any
    failure raises :class:`~mftrnn.MftrnnError` in one line ending with ``restart`` (default: delete the file to
    start the run from the beginning).
    """
    path = Path(path)
    restart = restart or f"delete {path} to start the run from the beginning"

    def damaged(reason: str) -> MftrnnError:
        return MftrnnError(f"checkpoint {path} is damaged ({reason}); {restart}")

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise damaged(f"member {bad} fails its CRC check: a corrupted byte")
    except MftrnnError:
        raise
    except OSError as exc:
        raise MftrnnError(f"cannot read checkpoint {path} ({exc.strerror or exc}); {restart}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise damaged(f"not a readable checkpoint container: {_one_line(exc)}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise damaged(f"{type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(state, dict):
        raise damaged(f"holds a {type(state).__name__}, not a dict")
    record = state.pop(INTEGRITY_KEY, None)
    if record is not None:
        if not isinstance(record, dict) or not isinstance(record.get("keys"), list):
            raise damaged("malformed integrity record")
        missing = sorted(set(record["keys"]) - set(state))
        extra = sorted(set(state) - set(record["keys"]))
        if missing or extra:
            raise damaged("; ".join(([f"key(s) {', '.join(map(str, missing))} missing"] if missing else [])
                                    + ([f"unexpected key(s) {', '.join(map(str, extra))}"] if extra else [])))
        if content_digest(state) != record.get("sha256"):
            raise damaged("its content does not match the sha256 it was saved with")
    missing = [k for k in required if k not in state]
    if missing:
        raise damaged(f"missing key(s) {', '.join(missing)}")
    return state


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def default_checkpoint_path(out) -> Path:
    """``DIR/NAME.json`` -> ``DIR/.NAME.ckpt.pt`` (deleted when the run finishes)."""
    out = Path(out)
    return out.with_name("." + out.stem + ".ckpt.pt")


def load_result_files(paths, formats, what: str) -> list:
    """Result dicts from a folder (every ``*.json`` in it, sorted), one file, or a list of files / dicts; each file
    must hold a dict whose ``format`` is one of ``formats``, else :class:`~mftrnn.DataError` naming ``what``."""
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        paths = sorted(p.glob("*.json")) if p.is_dir() else [p]
    out = []
    for p in paths:
        if isinstance(p, dict):
            out.append(p)
            continue
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read result file {p}: {one_line(exc)}") from None
        if not isinstance(d, dict) or d.get("format") not in formats:
            raise DataError(f"{p} is not {what}")
        out.append(d)
    return out


def jsonable(obj):
    """``obj`` with tensors / NumPy scalars and arrays as Python numbers and lists, non-finite floats as ``None``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.item() if obj.numel() == 1 else obj.tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


# --------------------------------------------------------------------------------------------------------
# The bookkeeping of one resumable training run
# --------------------------------------------------------------------------------------------------------

def run_files(out, checkpoint=None) -> tuple[Path, Path]:
    """The result file ``out`` and its checkpoint (``checkpoint``, default :func:`default_checkpoint_path`), both
    checked by :func:`check_output` before any work; ``out`` must end in ``.json`` (:class:`~mftrnn.DomainError`
    otherwise)."""
    out = Path(out)
    if out.suffix != ".json":
        raise DomainError(f"result file {str(out)!r} must end in .json (--out)")
    check_output(out, "result file", "--out")
    ckpt = Path(checkpoint) if checkpoint is not None else default_checkpoint_path(out)
    check_output(ckpt, "checkpoint", "checkpoint file")
    return out, ckpt


def refuse_unclean(git: dict, require_clean: bool) -> None:
    """``--require-clean``: :class:`~mftrnn.MftrnnError` unless ``git`` (:func:`git_state`) is a checkout without
    uncommitted changes to tracked files; nothing when ``require_clean`` is false."""
    if require_clean and (git["commit"] is None or git["dirty"]):
        where = "not a git checkout" if git["commit"] is None else \
            f"the checkout at {git['commit'][:12]} has uncommitted changes to tracked files"
        raise MftrnnError(f"--require-clean: {where}; commit them first (results to be committed come from a "
                          f"clean commit)")


def recorded_command(command: str | None = None) -> str:
    """``command``, or this process's command line (program name and arguments) when it is ``None``."""
    return command if command is not None else shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])


RUN_CHECKPOINT_KEYS = ("config", "step", "curve", "elapsed_s", "run_sum", "run_n", "sessions", "started")
"""The keys of a checkpoint that :class:`TrainingRun` writes and requires (with ``"commits"`` when it records the
sessions' commits); it writes ``"cpu_time_s"`` too, optional (checkpoints made before it existed lack it)."""


def check_position(st: dict, steps: int, eval_every: int, damaged: Callable[[str], MftrnnError],
                   commits: bool = False) -> None:
    """Refuse (``damaged(reason)``) a checkpoint whose step lies outside a run of ``steps`` steps, whose curve
    (one evaluation at step 0 and every ``eval_every`` steps) does not match its step, or (``commits``) whose record
    of the sessions' commits is not a list of dicts."""
    step, curve = st["step"], st["curve"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
        raise damaged(f"step {step!r} lies outside this run of {steps} steps")
    expected = 1 + step // eval_every
    if (not isinstance(curve, list) or len(curve) != expected or not all(isinstance(p, dict) for p in curve)
            or curve[-1].get("step") != (step // eval_every) * eval_every):
        raise damaged(f"at step {step} the curve must hold {expected} evaluation(s), it holds "
                      f"{len(curve) if isinstance(curve, list) else '?'}")
    if commits and (not isinstance(st.get("commits"), list) or not all(isinstance(c, dict) for c in st["commits"])):
        raise damaged("malformed session record")
    cpu = st.get("cpu_time_s")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu)
                            or cpu < 0):
        raise damaged(f"cpu_time_s {cpu!r} is not a number of seconds >= 0")


def optimizer_state(model, optimizer, batch_rng: torch.Generator, *, torch_rng: bool = False):
    r"""The usual experiment part of a checkpoint, as the pair ``(load, state)`` for :meth:`TrainingRun.resume` and
    :meth:`TrainingRun.start`: ``state()`` returns ``{"model", "optimizer", "batch_rng"}`` (the state dicts and the
    batch generator's state; ``torch_rng=True`` adds ``"torch_rng"``, torch's global generator), ``load(st)`` puts
    them back."""
    def state() -> dict:
        out = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "batch_rng": batch_rng.get_state()}
        if torch_rng:
            out["torch_rng"] = torch.get_rng_state()
        return out

    def load(st: dict) -> None:
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        batch_rng.set_state(st["batch_rng"])
        if torch_rng:
            torch.set_rng_state(st["torch_rng"])

    return load, state


class TrainingRun:
    r"""The bookkeeping of one resumable training run of ``config.steps`` optimizer steps, evaluated at step 0 and
    every ``config.eval_every`` steps, that writes one JSON result ``out`` and checkpoints to ``ckpt`` (both from
    :func:`run_files`); the experiment keeps its task, model, optimiser, loss, evaluation and result fields.

    ``config`` has ``to_dict()``, ``label()``, ``steps`` and ``eval_every``.  ``git``: the :func:`git_state` of the
    checkout at the start, recorded for every session (checkpoint key ``"commits"``, provenance
    ``session_commits``); ``None``: commits are not recorded.  ``require_clean``: a checkpoint made at another commit
    is refused (:func:`refuse_unclean` refuses the checkout itself, before the lock).  ``save`` writes a checkpoint
    (:func:`save_checkpoint`; an experiment passes its own module's name so that a test can stand in for it).

    The run's position and clocks (attributes):

    * ``step``, ``curve`` (the evaluations, dicts with ``"step"``), ``run_sum``/``run_n`` (the training loss summed
      since the last evaluation: :meth:`add_loss`, :meth:`train_loss`);
    * ``sessions`` (processes the run took), ``started`` (UTC, at the first :meth:`start`), ``commits`` (one dict
      per session);
    * the wall time :meth:`wall` and the process CPU time :meth:`cpu_time`, summed over sessions up to their last
      checkpoint (work lost to an interruption is not counted):

      .. math:: t_\text{wall} = \sum_{s<S} t_s + (\text{now} - t_0), \qquad
                t_\text{cpu} = \sum_{s<S} c_s + (c_\text{now} - c_0),

      :math:`t_0, c_0` read when this session starts (:meth:`start`), :math:`c` being :func:`time.process_time`
      (user and system time of every thread of the process; GPU kernels are not counted).  So
      :math:`t_\text{cpu} \le n_\text{threads}\, t_\text{wall}`, and for a CPU run a :math:`t_\text{cpu}` well
      below that says the run waited for the processor (a shared machine) rather than computed.  A checkpoint
      without the CPU time (made before it was recorded) makes it unknown: ``None``, never a partial sum.

    In order: :meth:`lock` (``with``), :meth:`existing_result`, build the model, :meth:`resume`, :meth:`start`, then
    in the loop :meth:`interrupt`, :meth:`add_loss`, :meth:`train_loss`, :meth:`maybe_checkpoint`; at the end
    :meth:`provenance` and :meth:`finish` (or :meth:`diverge`).
    """

    def __init__(self, config, out: Path, ckpt: Path, *, git: dict | None = None, require_clean: bool = False,
                 command: str | None = None, log: Callable[[str], None] | None = None,
                 save: Callable[[Path, dict], None] = save_checkpoint):
        self.config, self.config_dict = config, config.to_dict()
        self.out, self.ckpt = Path(out), Path(ckpt)
        self.git, self.require_clean = git, require_clean
        self.command = recorded_command(command)
        self.log = log or (lambda s: None)
        self._save = save
        self.restart = f"delete {self.ckpt} to restart the run from step 0"
        self.step, self.curve, self.run_sum, self.run_n = 0, [], 0.0, 0
        self.sessions, self.started, self.commits = 0, None, []
        self.elapsed, self.cpu_before = 0.0, 0.0
        self._states: Callable[[], dict] | None = None
        self._t0 = self._c0 = self._last = None

    # ------------------------------------------------------------------ before training
    def lock(self) -> RunLock:
        """The :class:`RunLock` on the result file and the checkpoint."""
        return RunLock([self.out, self.ckpt], output=self.out, command=self.command)

    def existing_result(self, load_results: Callable[[list], list], force: bool) -> dict | None:
        """The finished result of this configuration in ``out`` (read by ``load_results``), to return as it is;
        ``None`` when there is none or ``force``.  A recorded divergence raises its
        :class:`~mftrnn.ConvergenceError` again; another configuration, or a file that is not a result, is an
        error (``force`` replaces it)."""
        out = self.out
        if force or not out.exists():
            return None
        try:
            existing = load_results([out])[0]
        except DataError as exc:
            raise DataError(f"{one_line(exc)}; pass --force (force=True) to replace it, or choose another --out") \
                from None
        if existing.get("config") != self.config_dict:
            raise MftrnnError(f"{out} holds a run with a different configuration; choose another output (--out) "
                              f"or pass --force (force=True) to replace it")
        if existing.get("status") == "diverged":
            d = existing.get("diverged") or {}
            raise ConvergenceError(f"{self.config.label()}: training diverged at step {d.get('step')}: "
                                   f"{d.get('message', 'see the file')} [recorded in {out}; nothing redone; "
                                   f"--force (force=True) runs it again]")
        self.log(f"{out}: already done ({existing.get('status')}), not rerun")
        return existing

    @property
    def resuming(self) -> bool:
        """Whether a checkpoint is there to resume (the experiment may then skip an expensive initialisation)."""
        return self.ckpt.exists()

    def resume(self, required: Iterable[str], load: Callable[[dict], None]) -> dict | None:
        """Resume from the checkpoint if there is one; return its state (``None`` without one).

        The checkpoint is verified (:func:`load_checkpoint`: the :data:`RUN_CHECKPOINT_KEYS` and ``required``),
        must hold this configuration, a position inside the run (:func:`check_position`) and, under
        ``require_clean``, only sessions at this commit.  ``load(state)`` restores the experiment's part (model,
        optimizer, random generators); what does not fit is one clear :class:`~mftrnn.MftrnnError` that says which
        file to delete."""
        if not self.ckpt.exists():
            return None
        ckpt, restart, commits = self.ckpt, self.restart, self.git is not None

        def damaged(reason: str) -> MftrnnError:
            return MftrnnError(f"checkpoint {ckpt} is damaged ({reason}); {restart}")

        keys = RUN_CHECKPOINT_KEYS + (("commits",) if commits else ()) + tuple(required)
        st = load_checkpoint(ckpt, required=keys, restart=restart)
        if st.get("config") != self.config_dict:
            raise MftrnnError(f"checkpoint {ckpt} belongs to another configuration; delete it or choose another "
                              f"output (--out)")
        check_position(st, self.config.steps, self.config.eval_every, damaged, commits=commits)
        if commits and self.require_clean and any(c.get("commit") != self.git["commit"] for c in st["commits"]):
            raise MftrnnError(f"--require-clean: checkpoint {ckpt} was made at commit(s) "
                              f"{sorted({str(c.get('commit'))[:12] for c in st['commits']})}, this checkout is at "
                              f"{str(self.git['commit'])[:12]}; {restart}")
        try:
            load(st)
            self.step, self.curve, self.elapsed = int(st["step"]), list(st["curve"]), float(st["elapsed_s"])
            self.run_sum, self.run_n = float(st["run_sum"]), int(st["run_n"])
            self.sessions, self.started = int(st["sessions"]), st["started"]
            self.commits = list(st["commits"]) if commits else []
            cpu = st.get("cpu_time_s")
            self.cpu_before = None if cpu is None else float(cpu)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise damaged(f"it does not fit the model: {one_line(exc)[:200]}") from None
        self.log(f"{self.out.name}: resuming at step {self.step}/{self.config.steps} from {ckpt}")
        return st

    def start(self, states: Callable[[], dict]) -> None:
        """Start this session: count it, record its commit, start the clocks.  ``states()`` returns the
        experiment's part of a checkpoint (model, optimizer, random generators, ...), read at every save."""
        self._states = states
        self.started = self.started or utc_now()  # a resumed run keeps the start of its first session
        self.sessions += 1
        if self.git is not None:
            self.commits.append({"session": self.sessions, "commit": self.git["commit"], "dirty": self.git["dirty"],
                                 "started": utc_now()})
        self._t0 = self._last = time.perf_counter()
        self._c0 = time.process_time()

    # ------------------------------------------------------------------ clocks
    def wall(self) -> float:
        """Seconds of wall time of the run: previous sessions (to their last checkpoint) and this one so far."""
        return self.elapsed + (time.perf_counter() - self._t0)

    def cpu_time(self) -> float | None:
        """Seconds of process CPU time of the run, summed like :meth:`wall`; ``None`` if a session's is unknown."""
        return None if self.cpu_before is None else self.cpu_before + (time.process_time() - self._c0)

    # ------------------------------------------------------------------ during training
    def add_loss(self, loss: float) -> None:
        """Count one step's training loss towards the mean reported at the next evaluation."""
        self.run_sum += loss
        self.run_n += 1

    def train_loss(self) -> float:
        """The mean training loss since the last evaluation; starts the next mean."""
        mean = self.run_sum / self.run_n
        self.run_sum, self.run_n = 0.0, 0
        return mean

    def snapshot(self) -> dict:
        """The checkpoint's content now: the run's keys and the experiment's ``states()``."""
        cpu = self.cpu_time()
        return {"config": self.config_dict, "step": self.step, **self._states(), "curve": self.curve,
                "elapsed_s": self.wall(), "cpu_time_s": cpu, "run_sum": self.run_sum, "run_n": self.run_n,
                "sessions": self.sessions, "started": self.started,
                **({"commits": self.commits} if self.git is not None else {})}

    def save(self) -> None:
        """Write a checkpoint (atomically, verified on reading) and restart the cadence's clock."""
        self._save(self.ckpt, self.snapshot())
        self._last = time.perf_counter()

    def maybe_checkpoint(self, every: CheckpointEvery) -> bool:
        """Save if the run is not over and a checkpoint is due by ``every`` (steps or seconds since the last one);
        return whether it saved."""
        if self.step < self.config.steps and every.due(self.step, time.perf_counter() - self._last):
            self.save()
            return True
        return False

    def interrupt(self, stop_after: int | None) -> dict | None:
        """Once ``stop_after`` steps are done: save, and return ``{"status": "interrupted", ...}`` (no result is
        written); else ``None``."""
        if stop_after is None or self.step < stop_after:
            return None
        self.save()
        self.log(f"{self.out.name}: stopped at step {self.step} (stop_after); checkpoint {self.ckpt}")
        return {"status": "interrupted", "step": self.step, "curve": self.curve, "checkpoint": str(self.ckpt)}

    # ------------------------------------------------------------------ the end
    def provenance(self, base: dict, **extra) -> dict:
        """``base`` (:func:`provenance`, or an experiment's own record) with the sessions' record: ``started``,
        ``finished``, ``wall_time_s``, ``cpu_time_s`` (``None`` when unknown), ``sessions`` and, when commits are
        recorded, ``git_dirty`` (of any session) and ``session_commits``; then ``extra``."""
        prov = dict(base)
        if self.git is not None:
            prov["git_dirty"] = any(bool(c["dirty"]) for c in self.commits)
        cpu = self.cpu_time()
        prov.update(started=self.started, finished=utc_now(), wall_time_s=round(self.wall(), 3),
                    cpu_time_s=None if cpu is None else round(cpu, 3), sessions=self.sessions)
        if self.git is not None:
            prov["session_commits"] = self.commits
        prov.update(extra)
        return prov

    def finish(self, result: dict) -> dict:
        """Write the result atomically, delete the checkpoint, return the result."""
        write_json_atomic(self.out, result)
        self.ckpt.unlink(missing_ok=True)
        return result

    def diverge(self, result: dict, message: str):
        """Write ``result`` (status ``"diverged"``), delete the checkpoint and raise
        :class:`~mftrnn.ConvergenceError` (a rerun raises it again: :meth:`existing_result`)."""
        self.finish(result)
        raise ConvergenceError(f"{self.config.label()}: training diverged at step {self.step}: {message}; result "
                               f"written to {self.out} with status 'diverged'; lower the learning rate (--lr) or "
                               f"the clipping norm (--clip) and start a new run (another --out, or --force)")

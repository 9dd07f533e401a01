"""One run harness for the experiments: provenance (device, git state, versions, UTC dates), atomic JSON results
and checkpoints (written to a temporary file and renamed, so a killed run never leaves a half-written file; read
back with one clear error). :mod:`mftrnn.experiments.lm` and :mod:`mftrnn.experiments.seqdigits` use it instead of copies of their own.

The git state is recorded when the package runs from a checkout and is ``None`` otherwise (an installed wheel
works without git).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..errors import MftrnnError
from .._io import atomic_write

__all__ = ["device_name", "git_state", "utc_now", "provenance", "write_json_atomic", "save_checkpoint",
           "load_checkpoint"]


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


def write_json_atomic(path, obj: dict) -> None:
    """Write ``obj`` as JSON (no NaN or infinity) atomically."""
    text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def save_checkpoint(path, state: dict) -> None:
    """``torch.save`` the state atomically."""
    atomic_write(Path(path), lambda fh: torch.save(state, fh))


def load_checkpoint(path) -> dict:
    """Read a checkpoint (tensors and plain data only); :class:`~mftrnn.MftrnnError` if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MftrnnError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); delete it to start "
                          f"the run afresh") from None

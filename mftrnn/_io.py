"""Atomic file writes, shared by the command line, the data loaders and the experiments.

Nothing a user computed may be lost or half-written on a crash: every result, checkpoint, figure and
downloaded file is written to a temporary file beside its destination, flushed to disk, and only then
renamed onto it (``os.replace`` is atomic on POSIX and Windows).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write", "TEMP_PATTERN"]

TEMP_PATTERN = ".{name}.XXXXXXXX.tmp"
"""Name of the temporary file of a destination ``name`` (``XXXXXXXX``: eight of ``[a-z0-9_]``, from ``mkstemp``)."""


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path`` (binary mode), then rename it onto ``path``.

    Missing parent folders are created. The file gets the permissions the umask gives a new file (``mkstemp``
    alone would leave it readable by its owner only). On any error the temporary file is removed and the
    previous content of ``path``, if any, is untouched.  Only a process killed while writing (SIGKILL, power
    loss) leaves its temporary file, ``.NAME.XXXXXXXX.tmp`` (:data:`TEMP_PATTERN`); the experiments remove those
    of their outputs when they next start, under their output lock
    (:func:`mftrnn.experiments.harness.clean_stale_temps`).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

"""Validation of numeric arguments, shared by every public entry point (one clear error, never a silent NaN)."""
from __future__ import annotations

import argparse

import numpy as np

from .errors import DomainError

__all__ = ["finite_array", "float_argument"]


def finite_array(name: str, value, nonnegative: bool = False) -> np.ndarray:
    """``value`` as a float array; :class:`~mftrnn.DomainError` if it is not numeric, not finite, or (with
    ``nonnegative``) negative."""
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise DomainError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if not np.all(np.isfinite(a)):
        raise DomainError(f"{name} must be finite, got {value!r}")
    if nonnegative and np.any(a < 0):
        raise DomainError(f"{name} must be non-negative (it is a standard deviation or second moment), "
                          f"got {value!r}")
    return a


def float_argument(text: str) -> float:
    """The ``argparse`` type of every floating-point command-line option (``mftrnn`` and ``mftrnn lm``).

    Any float literal is accepted, ``nan`` and ``inf`` included: they reach the command's own range checks, which
    refuse them in one line naming the option (exit status 1).  Text that is not a number is an argparse usage
    error (``argparse.ArgumentTypeError``: ``not a number: 'abc'``, exit status 2)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None

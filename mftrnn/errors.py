"""Exceptions raised by mftrnn.

Every error a user can trigger with bad input is a :class:`MftrnnError` (a ``ValueError``), so a caller
(the command line, a notebook) can catch one class and print one line.
"""


class MftrnnError(ValueError):
    """Base class of all mftrnn errors caused by input or by a failed numerical procedure."""


class DomainError(MftrnnError):
    """A hyperparameter is outside the domain of a formula (negative or non-finite variance, ...)."""


class ConvergenceError(MftrnnError):
    """A fixed point (or another iterative procedure) did not converge."""


class UnknownCellError(MftrnnError):
    """No cell of that name is registered."""


class DataError(MftrnnError):
    """A data set is missing, corrupt (checksum mismatch), undecodable, or inconsistent (out-of-vocabulary)."""

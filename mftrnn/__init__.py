"""mftrnn: the mean-field theory of recurrent neural networks, derived symbolically and checked by simulation.

Public API (re-exported from private modules, one concept each):

* cells as data — :class:`Cell`, :class:`Preactivation`, :func:`get_cell`, :func:`register_cell`, :data:`CELLS`;
* symbolic Gaussian expectations — :class:`E`, :class:`E2`, :func:`expect`, :func:`expect2`, :class:`sigmoid`;
* derived maps — :func:`mean_field` (a :class:`MeanField` of SymPy expressions), their symbols in
  :mod:`mftrnn.symbols`, and :class:`Compiled` to evaluate any such expression on NumPy arrays;
* numbers — :func:`fixed_point` (a :class:`FixedPoint`), :func:`iterate_maps`, :func:`timescale`;
* errors — :class:`MftrnnError`, :class:`DomainError`, :class:`ConvergenceError`, :class:`UnknownCellError`,
  :class:`DataError`.

PyTorch cells live in :mod:`mftrnn.nn`, the finite-width simulator in :mod:`mftrnn.simulate`, the command line in
:mod:`mftrnn.cli`.
"""
from ._cells import CELLS, Cell, Preactivation, get_cell, register_cell
from ._errors import ConvergenceError, DataError, DomainError, MftrnnError, UnknownCellError
from ._fixed_point import DEFAULTS, FixedPoint, fixed_point, iterate_maps, timescale
from ._gaussian import E, E2, expect, expect2, sigmoid
from ._meanfield import MeanField, mean_field
from ._numeric import Compiled
from . import symbols

__version__ = "0.1.0"

__all__ = [
    "CELLS", "Cell", "Preactivation", "get_cell", "register_cell",
    "MftrnnError", "DomainError", "ConvergenceError", "UnknownCellError", "DataError",
    "DEFAULTS", "FixedPoint", "fixed_point", "iterate_maps", "timescale",
    "E", "E2", "expect", "expect2", "sigmoid",
    "MeanField", "mean_field", "Compiled", "symbols", "__version__",
]

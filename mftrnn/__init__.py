"""mftrnn: the mean-field theory of recurrent neural networks, derived symbolically and checked by simulation.

Public API (re-exported from private modules, one concept each):

* cells as data — :class:`Cell`, :class:`Preactivation` (one carried state) and :class:`GatedCell`, :class:`Field`
  (several states, per-gate hyperparameters: ``lstm``, ``gru`` and variants), one registry: :func:`get_cell`,
  :func:`register_cell`, :func:`cells`, :data:`CELLS` (a live view);
* gated cells' untied mean field — :func:`gated_fixed_point` (a :class:`GatedFixedPoint`; :func:`fixed_point`
  dispatches to it), the derivation in :mod:`mftrnn.theory.gated`, torch modules in :mod:`mftrnn.nets.gated`;
* symbolic Gaussian expectations — :class:`E`, :class:`E2`, :func:`expect`, :func:`expect2`, :class:`sigmoid`,
  :class:`relu`, with the closed forms they use where one exists in :mod:`mftrnn.theory.closed_forms`;
* derived maps — :func:`mean_field` (a :class:`MeanField` of SymPy expressions), their symbols in
  :mod:`mftrnn.theory.symbols`, and :class:`Compiled` to evaluate any such expression on NumPy arrays;
* numbers — :func:`fixed_point` (a :class:`FixedPoint`), :func:`iterate_maps`, :func:`timescale`, :func:`unbounded`
  (where no fixed point exists);
* Jacobian spectra (:mod:`mftrnn.theory.jacobian`) — :func:`step_jacobian`, :func:`step_moments`, :func:`product_moments`,
  :func:`isometry`, :func:`coefficient_law` (a :class:`CoefficientLaw`), :func:`coefficient_moment`,
  :func:`state_moments`, :func:`spectral_moments`;
* errors — :class:`MftrnnError`, :class:`DomainError`, :class:`ConvergenceError`, :class:`UnknownCellError`,
  :class:`DataError`.

Critical initialisation: :mod:`mftrnn.theory.critical` (theory, re-exported) and :mod:`mftrnn.nets.init` (PyTorch initialisers).
Jacobian spectra by free probability: :mod:`mftrnn.theory.free` (S-transforms, inversion to densities) and
:mod:`mftrnn.theory.spectrum` (:func:`spectral_density` of the T-step Jacobian, re-exported).
The folders show the architecture, each importing only from those before it: :mod:`mftrnn.cells` (cells as data,
the registry) -> :mod:`mftrnn.theory` (SymPy -> NumPy, never imports torch) -> :mod:`mftrnn.nets` (PyTorch modules,
initialisers, simulators) -> :mod:`mftrnn.experiments` (run harness, data, sequential digits, language models,
benchmarks) -> :mod:`mftrnn.cli` (the command line).
"""
from .cells.registry import CELLS, Cell, Preactivation, cells, get_cell, register_cell
from .cells.gated import Field, GatedCell, gate_hyperparameters
from .theory.gated import GatedFixedPoint, gated_fixed_point
from .errors import ConvergenceError, DataError, DomainError, MftrnnError, UnknownCellError
from .theory.fixed_point import DEFAULTS, FixedPoint, fixed_point, iterate_maps, timescale, unbounded
from .theory.gaussian import E, E2, expect, expect2, sigmoid
from .cells.functions import relu
from .theory import closed_forms
from .theory.meanfield import MeanField, mean_field
from .theory.numeric import Compiled
from .theory import symbols
from .theory.jacobian import (CoefficientLaw, StepJacobian, coefficient_law, coefficient_moment, isometry, product_moments,
                       spectral_moments, state_moments, step_jacobian, step_moments)

from .theory.critical import (activation_cell, minimal_critical_mu_b, minimal_critical_sigma_w, minimal_for_timescale,
                              vanilla_critical, vanilla_critical_line, vanilla_min_q_star)
from .theory import free
from .theory.spectrum import SpectralLaw, spectral_density, spectral_grid, spectral_law

__version__ = "0.1.0"

__all__ = [
    "CELLS", "Cell", "Preactivation", "cells", "get_cell", "register_cell",
    "GatedCell", "Field", "gate_hyperparameters", "GatedFixedPoint", "gated_fixed_point",
    "MftrnnError", "DomainError", "ConvergenceError", "UnknownCellError", "DataError",
    "DEFAULTS", "FixedPoint", "fixed_point", "iterate_maps", "timescale", "unbounded",
    "E", "E2", "expect", "expect2", "sigmoid", "relu", "closed_forms",
    "MeanField", "mean_field", "Compiled", "symbols", "__version__",
    "StepJacobian", "step_jacobian", "CoefficientLaw", "coefficient_law", "coefficient_moment", "spectral_moments",
    "step_moments", "product_moments", "isometry", "state_moments",
    "activation_cell", "vanilla_critical", "vanilla_critical_line", "vanilla_min_q_star", "minimal_critical_mu_b",
    "minimal_critical_sigma_w", "minimal_for_timescale",
    "free", "SpectralLaw", "spectral_density", "spectral_grid", "spectral_law",
]


def __getattr__(name):
    """``mftrnn.diagnose``, imported on first use: it needs torch, which ``import mftrnn`` never loads."""
    if name == "diagnose":
        from .nets.diagnose import diagnose
        return diagnose
    raise AttributeError(f"module 'mftrnn' has no attribute {name!r}")

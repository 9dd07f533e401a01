"""The SymPy symbols of the theory, for building and evaluating expressions outside the library.

Hyperparameters ``sigma_w, sigma_v, sigma_b, mu_b, R`` and the input overlap ``Sigma``; state moments ``Q``
(``|h|^2/N``), ``Q_a, Q_b`` (two sequences), ``C`` (their overlap) and ``M, M_a, M_b`` (state means). These are
the symbols in which :func:`mftrnn.mean_field` expresses its maps; pass them as the arguments of
:class:`mftrnn.Compiled` to evaluate an expression numerically.
"""
from ..cells.registry import R, Sigma, mu_b, sigma_b, sigma_v, sigma_w
from .meanfield import C, M, M_a, M_b, Q, Q_a, Q_b

HYPERPARAMETERS = (sigma_w, sigma_v, sigma_b, mu_b, R)

__all__ = ["sigma_w", "sigma_v", "sigma_b", "mu_b", "R", "Sigma", "Q", "Q_a", "Q_b", "C", "M", "M_a", "M_b",
           "HYPERPARAMETERS"]

r"""SymPy functions a cell's update rule may use beyond SymPy's own (``tanh``, ``exp``, ``erf``, ...): the logistic
function and the rectifier.

They belong to the description of a cell, so they live here; the theory (:mod:`mftrnn.theory.gaussian`) and the
PyTorch side (:data:`mftrnn.nets.gated.TORCH_FUNCTIONS`) both read them from here.
"""
from __future__ import annotations

import sympy as sp

__all__ = ["sigmoid", "relu"]


class sigmoid(sp.Function):
    r"""Logistic function :math:`\sigma(x) = 1/(1+e^{-x})`; :math:`\sigma'(x) = \sigma(x)(1-\sigma(x))`."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.S.Half

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _eval_is_real(self):
        return self.args[0].is_real

    def _latex(self, printer, exp=None):
        s = r"\sigma\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"\sigma^{%s}\left(%s\right)" % (exp, printer._print(self.args[0]))


class relu(sp.Function):
    r"""Rectified linear unit :math:`\mathrm{relu}(x) = \max(0, x)`; :math:`\mathrm{relu}'(x) = \Theta(x)` (SymPy's
    ``Heaviside``, whose derivative is ``DiracDelta``).

    A function of its own rather than ``Max(0, x)``: it differentiates to ``Heaviside`` without a ``Piecewise``, it
    prints as :math:`\mathrm{relu}`, and the closed-form Gaussian expectations
    (:mod:`mftrnn.theory.closed_forms`) recognise it by its class. NumPy/torch versions: ``numpy.maximum(x, 0)``
    (:data:`mftrnn.theory.numeric.NUMPY_MODULES`), ``torch.relu`` (:data:`mftrnn.nets.gated.TORCH_FUNCTIONS`).
    """

    def fdiff(self, argindex=1):
        return sp.Heaviside(self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_number and x.is_extended_real:
            return sp.Max(0, x)
        if x.is_nonnegative:
            return x
        if x.is_nonpositive:
            return sp.S.Zero

    def _eval_rewrite_as_Max(self, x, **kwargs):
        return sp.Max(0, x)

    def _eval_rewrite_as_Heaviside(self, x, **kwargs):
        return x * sp.Heaviside(x)

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_nonnegative(self):
        if self.args[0].is_real:
            return True

    def _latex(self, printer, exp=None):
        s = r"\operatorname{relu}\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"\operatorname{relu}^{%s}\left(%s\right)" % (exp, printer._print(self.args[0]))

r"""SymPy functions a cell's update rule may use beyond SymPy's own (``tanh``, ``exp``, ``erf``, ...).

They belong to the description of a cell, so they live here; the theory (:mod:`mftrnn.theory.gaussian`) and the
PyTorch side (:data:`mftrnn.nets.gated.TORCH_FUNCTIONS`) both read them from here.
"""
from __future__ import annotations

import sympy as sp

__all__ = ["sigmoid"]


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

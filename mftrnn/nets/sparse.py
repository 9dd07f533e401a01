r"""Sparse recurrent weight matrices: random masks, an exactly orthogonal sparse construction, magnitude pruning,
and a critical initialisation built on them.

The mean field of the vanilla RNN sees the recurrent matrix only through the variance of the pre-activation,
:math:`\sum_j W_{ij}^2\,h_j^2`, so a matrix with a fraction :math:`p` of its entries kept has the same mean field
as a dense one when its entries are rescaled to keep :math:`N\,\mathbb E[W_{ij}^2] = \sigma_w^2`. What sparsity
changes is (i) the Gaussianity of the pre-activation, a sum of only :math:`pN` terms per row on average, and (ii)
the freeness between :math:`W` and the diagonal matrices :math:`D_t = \operatorname{diag}\tanh'(e_t)` on which the
free-probability spectrum of :mod:`mftrnn.theory.spectrum` rests. Both are exact only as :math:`pN\to\infty`;
:mod:`mftrnn.experiments.sparse` measures where they fail.

Constructors (each returns an ``(N, N)`` float64 tensor drawn from ``generator``):

* :func:`sparse_gaussian` -- :math:`W_{ij} = M_{ij}\,G_{ij}`, :math:`M_{ij}\sim\mathrm{Bernoulli}(p)`,
  :math:`G_{ij}\sim\mathcal N(0, \sigma_w^2/(pN))`: :math:`\mathbb E[W_{ij}^2] = \sigma_w^2/N`, about :math:`pN`
  non-zeros per row (binomial).
* :func:`pruned_orthogonal` -- :math:`W = \sigma_w\,(O\circ M)/\sqrt p` with :math:`O` Haar orthogonal: the same
  variance, but no longer orthogonal. Writing :math:`O\circ M/\sqrt p = \sqrt p\,O + O\circ(M-p)/\sqrt p`, the second
  term has uncorrelated entries of variance :math:`(1-p)/N`; treated as a Ginibre matrix free from :math:`O`, the
  singular values of :math:`W` are those of :math:`\sigma_w(\sqrt p\,I + \sqrt{1-p}\,G)` (rotate by :math:`O^\top`),
  the law :class:`mftrnn.theory.free.DeformedStep` with :math:`a = \sigma_w\sqrt p`, :math:`b = 1`, scale
  :math:`\sigma_w\sqrt{1-p}` (:func:`mftrnn.experiments.sparse.pruned_orthogonal_law`).
* :func:`sparse_orthogonal` -- exactly :math:`k = pN` non-zeros in every row and column and exactly orthogonal:

  .. math:: W = \sigma_w\,P_1\,\operatorname{blockdiag}(O_1, \dots, O_{N/k})\,P_2,

  :math:`O_m` independent Haar :math:`k\times k` orthogonal matrices, :math:`P_1, P_2` independent uniformly random
  permutation matrices. :math:`W^\top W = \sigma_w^2 I`: every singular value is :math:`\sigma_w`. Requires
  :math:`k` to be an integer dividing :math:`N`. :math:`k = N` is a Haar matrix; :math:`k = 1` a signed permutation.
* :func:`magnitude_prune` -- keep the :math:`\lceil pN_{entries}\rceil` entries of largest :math:`|W_{ij}|` (ties
  broken by position), optionally rescaled by :math:`\sqrt{\sum W^2/\sum_{\rm kept}W^2}` so that the second moment
  :math:`\overline{W^2}` (hence :math:`\hat\sigma_w^2 = N\overline{W^2}`) is that of the input.

:func:`critical_sparse_init_` initialises a tanh RNN on the critical line :math:`\chi=1`
(:func:`mftrnn.nets.init.critical_rnn_init_`, orthogonal ensemble) and replaces every recurrent matrix by
:func:`sparse_orthogonal` at the same :math:`\sigma_w`; the orthogonal-:math:`W` mean field and spectrum predictions
apply unchanged as long as :math:`pN` is not small (measured in :mod:`mftrnn.experiments.sparse`).
"""
from __future__ import annotations

import math

import torch

from ..errors import DomainError
from ..theory.jacobian import product_moments
from .init import _check_generator, _vanilla_layers, critical_rnn_init_
from .nn import haar_orthogonal

__all__ = ["sparse_gaussian", "pruned_orthogonal", "sparse_orthogonal", "magnitude_prune", "critical_sparse_init_",
           "row_nonzeros"]


def _check_N_p(N, p) -> tuple[int, float]:
    """``(N, p)`` validated: ``N`` an integer >= 1, ``p`` in (0, 1], ``pN >= 1``; one-line DomainError otherwise."""
    if isinstance(N, bool) or not hasattr(N, "__index__") or int(N) < 1:
        raise DomainError(f"N must be an integer >= 1, got {N!r}")
    N = int(N)
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise DomainError(f"p must be a number in (0, 1], got {p!r}") from None
    if not (math.isfinite(p) and 0.0 < p <= 1.0):
        raise DomainError(f"p must be in (0, 1] (the fraction of entries kept), got {p!r}")
    if p * N < 1.0 - 1e-12:
        raise DomainError(f"pN = {p * N:.4g} < 1: fewer than one non-zero per row on average (N={N}, p={p:g})")
    return N, p


def _check_sigma_w(sigma_w) -> float:
    try:
        s = float(sigma_w)
    except (TypeError, ValueError):
        raise DomainError(f"sigma_w must be a number >= 0, got {sigma_w!r}") from None
    if not (math.isfinite(s) and s >= 0):
        raise DomainError(f"sigma_w must be finite and >= 0, got {sigma_w!r}")
    return s


def _generator(generator):
    try:
        _check_generator(generator)
    except ValueError as exc:
        raise DomainError(str(exc)) from None
    return generator


def sparse_gaussian(N: int, p: float, sigma_w: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Bernoulli-masked Gaussian matrix: :math:`W_{ij} = M_{ij}G_{ij}`, :math:`M_{ij}\sim\mathrm{Bernoulli}(p)`,
    :math:`G_{ij}\sim\mathcal N(0,\sigma_w^2/(pN))`, all independent.

    Statistics: :math:`P(W_{ij}\neq0) = p`, :math:`\mathbb E[W_{ij}^2] = \sigma_w^2/N`, the number of non-zeros
    of a row is :math:`\mathrm{Binomial}(N, p)` (a row is empty with probability :math:`(1-p)^N\approx e^{-pN}`).
    Refuses :math:`p\notin(0,1]` and :math:`pN<1` (:class:`~mftrnn.DomainError`).
    """
    N, p = _check_N_p(N, p)
    s = _check_sigma_w(sigma_w)
    gen = _generator(generator)
    mask = torch.rand(N, N, generator=gen, dtype=torch.float64) < p
    return torch.randn(N, N, generator=gen, dtype=torch.float64) * (s / math.sqrt(p * N)) * mask


def pruned_orthogonal(N: int, p: float, sigma_w: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A Haar orthogonal matrix with a random mask, rescaled: :math:`W = \sigma_w\,(O\circ M)/\sqrt p`,
    :math:`M_{ij}\sim\mathrm{Bernoulli}(p)` independent of :math:`O`.

    :math:`\mathbb E[W_{ij}^2] = \sigma_w^2/N` (as :math:`\mathbb E[O_{ij}^2] = 1/N`), and
    :math:`\mathbb E[W^\top W] = \sigma_w^2 I`, but :math:`W^\top W\neq\sigma_w^2I` for :math:`p<1`: its law is that
    of :math:`\sigma_w^2(\sqrt p I+\sqrt{1-p}G)(\sqrt p I+\sqrt{1-p}G)^\top` with Ginibre :math:`G` at large
    :math:`N` (module docstring), with relative variance of the squared singular values :math:`2(1-p)-(1-p)^2`.
    """
    N, p = _check_N_p(N, p)
    s = _check_sigma_w(sigma_w)
    gen = _generator(generator)
    O = haar_orthogonal(N, N, generator=gen, dtype=torch.float64)
    mask = torch.rand(N, N, generator=gen, dtype=torch.float64) < p
    return O * mask * (s / math.sqrt(p))


def sparse_orthogonal(N: int, p: float | None = None, sigma_w: float = 1.0,
                      generator: torch.Generator | None = None, *, k: int | None = None) -> torch.Tensor:
    r"""Exactly orthogonal sparse matrix with exactly :math:`k = pN` non-zeros per row and per column:
    :math:`W = \sigma_w P_1\operatorname{blockdiag}(O_1,\dots,O_{N/k})P_2` (module docstring).

    Give ``p`` (then :math:`pN` must be an integer) or ``k``; :math:`k` must divide :math:`N`. :math:`W^\top W =
    \sigma_w^2 I` up to round-off (:math:`\sim10^{-15}`); entries of a Haar block are non-zero with probability 1.
    """
    if (p is None) == (k is None):
        raise DomainError("give exactly one of p (fraction kept) and k (non-zeros per row)")
    if p is not None:
        N, p = _check_N_p(N, p)
        k_float = p * N
        k = int(round(k_float))
        if abs(k_float - k) > 1e-9 * max(1.0, k_float):
            raise DomainError(f"pN = {k_float:.6g} must be an integer (non-zeros per row) for sparse_orthogonal")
    else:
        if isinstance(k, bool) or not hasattr(k, "__index__") or int(k) < 1:
            raise DomainError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        N, _ = _check_N_p(N, 1.0)
        if k > N:
            raise DomainError(f"k = {k} exceeds N = {N}")
    if N % k:
        raise DomainError(f"k = pN = {k} must divide N = {N} (blocks of size k)")
    s = _check_sigma_w(sigma_w)
    gen = _generator(generator)
    blocks = haar_orthogonal(N // k, k, k, generator=gen, dtype=torch.float64)
    B = torch.block_diag(*blocks)
    rows = torch.randperm(N, generator=gen)
    cols = torch.randperm(N, generator=gen)
    return s * B[rows][:, cols]


def row_nonzeros(W: torch.Tensor) -> torch.Tensor:
    """Number of non-zero entries in each row of ``W`` (an integer tensor of length ``W.shape[0]``)."""
    return (W != 0).sum(1)


@torch.no_grad()
def magnitude_prune(W: torch.Tensor, p: float, *, rescale: bool = True) -> torch.Tensor:
    r"""Magnitude pruning: a copy of ``W`` keeping its :math:`n = \lceil p\,n_{\rm entries} - 10^{-9}\rceil` entries
    of largest :math:`|W_{ij}|` (global over the matrix; ties broken by position), the rest set to 0.

    ``rescale=True``: the kept entries are multiplied by :math:`c = \sqrt{\sum_{ij}W_{ij}^2/\sum_{\rm kept}
    W_{ij}^2}\ge1`, so that :math:`\overline{W^2}` (hence the mean field's :math:`\hat\sigma_w^2 = N\overline{W^2}`)
    is unchanged; ``rescale=False`` is plain pruning (:math:`\hat\sigma_w` drops). Does not modify ``W``.
    """
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise DomainError("W must be a 2-d torch tensor")
    n = W.numel()
    _, p = _check_N_p(max(n, 1), p)
    if n == 0 or not bool(torch.isfinite(W).all()):
        raise DomainError("W must be non-empty with finite entries")
    n_keep = max(1, math.ceil(p * n - 1e-9))
    flat = W.detach().reshape(-1)
    idx = torch.topk(flat.abs(), n_keep, sorted=False).indices
    out = torch.zeros_like(flat)
    out[idx] = flat[idx]
    if rescale:
        kept = float((out * out).sum())
        if kept == 0.0:
            raise DomainError("the kept entries are all zero: cannot rescale to the input's variance")
        out = out * math.sqrt(float((flat * flat).sum()) / kept)
    return out.reshape(W.shape)


@torch.no_grad()
def critical_sparse_init_(rnn, p: float, *, q_star: float, T: int | None = None, mu_b: float = 0.0,
                          sigma_b: float = 0.0, R: float = 1.0, generator: torch.Generator | None = None) -> dict:
    r"""Critical initialisation with sparse, exactly orthogonal recurrent matrices; returns the chosen values.

    :func:`mftrnn.nets.init.critical_rnn_init_` ``(rnn, q_star=q_star, orthogonal=True, ...)`` sets every layer on
    the critical line :math:`\chi=1` (:func:`mftrnn.theory.critical.vanilla_critical`:
    :math:`\sigma_w^2 = 1/\mathbb E[\tanh'(e)^2]`, :math:`e\sim\mathcal N(\mu_b, q^*)`); then each ``weight_hh`` is
    replaced by :func:`sparse_orthogonal` ``(N, p, sigma_w)`` (exactly :math:`k=pN` non-zeros per row, singular
    values all :math:`\sigma_w`), which leaves the mean field (variance :math:`\sigma_w^2/N` per entry) and the
    orthogonal-:math:`W` spectrum prediction unchanged up to the small-:math:`k` effects of the module docstring.

    Returns the dict of ``critical_rnn_init_`` plus ``p``, ``k`` and, with ``T``, ``spectrum``: the free-probability
    moments of the ``T``-step :math:`JJ^\top` (:func:`mftrnn.theory.jacobian.product_moments`, orthogonal
    :math:`W`: ``mean`` :math:`=\chi^T=1` and ``relative_variance`` :math:`=T\,r`) of layer 0.
    """
    layers = _vanilla_layers(rnn)
    N = int(layers[0][2][0][0].shape[0])
    N, p = _check_N_p(N, p)
    k = p * N
    if abs(k - round(k)) > 1e-9 * max(1.0, k) or N % int(round(k)):
        raise DomainError(f"pN = {k:.6g} must be an integer dividing N = {N} (exactly pN non-zeros per row)")
    out = critical_rnn_init_(rnn, q_star=q_star, orthogonal=True, mu_b=mu_b, sigma_b=sigma_b, R=R,
                             generator=generator)
    for (_, _, per), hp in zip(layers, out["layers"]):
        for W, *_ in per:
            W.copy_(sparse_orthogonal(N, p, hp["sigma_w"], generator))
    out = {**out, "p": p, "k": int(round(k))}
    if T is not None:
        keys = ("sigma_w", "sigma_v", "sigma_b", "mu_b", "R")
        pm = product_moments("vanilla", T, orthogonal=True, **{kk: out[kk] for kk in keys})
        out["spectrum"] = {"T": int(T), "mean": float(pm["mean"]), "relative_variance": float(pm["relative_variance"])}
    return out

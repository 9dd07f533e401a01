r"""Data parallelism over processes with ``torch.distributed`` (for :func:`mftrnn.experiments.lm.train`).

Launched by ``torchrun --nproc-per-node K -m mftrnn lm ...`` (which sets ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), a run joins a process group (gloo on the CPU, NCCL on GPUs) and trains one model
replica per process wrapped in :class:`torch.nn.parallel.DistributedDataParallel`: the ``B`` token streams of a
batch are split into ``K`` contiguous groups of ``B/K`` columns, each process computes the mean loss over its own
tokens, and DDP averages the gradients, which is then the gradient of the mean loss over the whole batch (the
groups hold equal numbers of tokens), so one step equals the single-process step on the same batch up to the
order of floating-point additions.  Rank 0 alone writes checkpoints and results.

These helpers are the few collective operations the training loop needs beside DDP itself; with one process they
are the identity (no process group is created).
"""
from __future__ import annotations

import os

import torch

__all__ = ["env_world", "init", "split_columns", "gather_columns", "mean_scalar", "agree", "gather_objects"]


def env_world() -> tuple[int, int]:
    """``(rank, world_size)`` from the environment a launcher sets (``RANK``, ``WORLD_SIZE``), else ``(0, 1)``."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def init(device: torch.device) -> tuple[int, int]:
    """Join (or reuse) the default process group when launched with several processes; ``(rank, world_size)``."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world = env_world()
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def split_columns(x, rank: int, world: int, dim: int = 1):
    """Columns ``rank*B/world .. (rank+1)*B/world`` of ``x`` (a tensor or a tuple of tensors) along ``dim``."""
    if world == 1 or x is None:
        return x
    if isinstance(x, tuple):
        return tuple(split_columns(t, rank, world, dim) for t in x)
    b = x.shape[dim] // world
    return x.narrow(dim, rank * b, b).contiguous()


def gather_columns(x, world: int, dim: int = 1):
    """The inverse of :func:`split_columns` (a collective: every rank must call it)."""
    if world == 1 or x is None:
        return x
    import torch.distributed as dist
    if isinstance(x, tuple):
        return tuple(gather_columns(t, world, dim) for t in x)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def mean_scalar(value: float, world: int, device: torch.device) -> float:
    """The mean of ``value`` over the ranks (a collective)."""
    if world == 1:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def agree(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (a collective), so that all ranks take the same branch (e.g. whether to
    checkpoint, which may depend on wall time)."""
    if world == 1:
        return flag
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather_objects(obj, world: int) -> list:
    """Every rank's ``obj`` (picklable), in rank order (a collective)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out

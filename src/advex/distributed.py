"""Process-group helpers shared by distributed evaluation and distributed training.

A thin layer over :mod:`torch.distributed` (gloo on CPU, NCCL on GPU, launched by ``torchrun``):
every helper also works without an initialised process group, where it behaves as a world of
one process (rank 0, world size 1, gathers return ``[obj]``), so library code calls them
unconditionally. This module imports only :mod:`torch` and is a leaf of the layer picture.

Example (two processes on one machine)::

    # torchrun --nproc_per_node 2 script.py
    from advex import distributed as dist
    dist.init_from_env()  # gloo on CPU, NCCL when CUDA is there
    mine = dist.shard_indices(10, dist.rank(), dist.world_size())  # rank 0: 0..4, rank 1: 5..9
    parts = dist.all_gather_object(len(mine))  # [5, 5] on every rank
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as _td

__all__ = [
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "init_from_env",
    "is_distributed",
    "local_rank",
    "rank",
    "shard_indices",
    "world_size",
]


def _initialised() -> bool:
    return _td.is_available() and _td.is_initialized()


def is_distributed() -> bool:
    """True when a process group is initialised and holds more than one process."""
    return _initialised() and _td.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return _td.get_rank() if _initialised() else 0


def world_size() -> int:
    """The number of processes in the default group (1 without a process group)."""
    return _td.get_world_size() if _initialised() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from torchrun's environment, if launched by it.

    Args:
        backend: ``"gloo"``/``"nccl"``; default NCCL when CUDA is available, gloo otherwise.
        timeout_s: the collective timeout of the group, seconds.

    Returns:
        True if a group is initialised after the call (it may have been already), False when
        the process was not launched by torchrun (no ``WORLD_SIZE`` in the environment).
    """
    if _initialised():
        return True
    if "WORLD_SIZE" not in os.environ or not _td.is_available():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    _td.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def barrier(timeout_s: float | None = None) -> None:
    """Wait for every rank. With gloo and a ``timeout_s``, a rank that does not arrive in time
    raises a RuntimeError naming it (``monitored_barrier``) instead of hanging; NCCL uses the
    group's own timeout. No-op without a process group."""
    if not is_distributed():
        return
    if timeout_s is not None and _td.get_backend() == "gloo":
        _td.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
    else:
        _td.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` alone.

    Only for objects produced by the ranks of this job (pickle between trusted processes)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * _td.get_world_size()
    _td.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (the argument is ignored on other ranks)."""
    if not is_distributed():
        return obj
    box = [obj if _td.get_rank() == src else None]
    _td.broadcast_object_list(box, src=src)
    return box[0]


def shard_indices(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` of ``world`` owns.

    Blocks are deterministic, cover ``range(n)`` exactly once, keep the order, and differ in size
    by at most one (the first ``n % world`` ranks get one more), like ``numpy.array_split``.

    Raises:
        ValueError: ``world < 1``, ``rank`` outside ``[0, world)``, ``n < 0``, or ``world > n``
            (a rank would get no points; use fewer processes).

    Example: ``shard_indices(10, 1, 3) == range(4, 7)``.
    """
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world})")
    if n < 0:
        raise ValueError(f"the number of points must be >= 0, got {n}")
    if world > n:
        raise ValueError(
            f"world size {world} is larger than the number of points {n}: "
            f"some ranks would get no points; launch at most {n} processes"
        )
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))

"""Data-parallel training over ``torch.distributed`` ranks (what :class:`Trainer` uses under
``torchrun``).

The trainer does what PyTorch's ``DistributedDataParallel`` does — every rank holds the whole
model, computes the gradient of its shard of each global batch, and the gradients are summed
across ranks before the (identical) optimizer step — without wrapping the model: the inner
maximisation of adversarial training runs forward/backward passes (input gradients only) that
must not trigger a gradient synchronisation, and the caller's module must come back unchanged
(no wrapper, no hooks). All gradients of a step travel in one flat all-reduce, together with the
step's loss and accuracy counts.

The process group is the caller's (``torchrun`` + :func:`init_from_env`, or any
``torch.distributed.init_process_group``); nothing here starts processes.

The small rank helpers (:func:`is_distributed`, :func:`rank`, :func:`world_size`,
:func:`barrier`, :func:`all_gather_object`, :func:`broadcast_object`) are
:mod:`advex.distributed`'s, re-exported here: one implementation for evaluation and training.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from advex import distributed as _dist
from advex.distributed import (
    all_gather_object,
    barrier,
    broadcast_object,
    is_distributed,
    rank,
    world_size,
)

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "barrier",
    "all_gather_object",
    "broadcast_object",
    "shard_rows",
    "init_from_env",
    "launched_by_torchrun",
    "local_device",
    "all_reduce_step",
    "broadcast_module",
    "average_running_stats",
    "check_same_across_ranks",
    "sum_across_ranks",
]


def shard_rows(n: int, rank: int, world: int) -> torch.Tensor:
    """Rows of a global batch of ``n`` points that rank ``rank`` of ``world`` takes: contiguous
    blocks, sizes differing by at most one (``torch.tensor_split``), rank 0 first. A rank left
    without rows (``n < world``) gets an empty tensor."""
    return torch.tensor_split(torch.arange(n), world)[rank]


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``)
    says this process is one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(
    device: str | torch.device | None = None,
    timeout_s: float = 1800.0,
    backend: str | None = None,
) -> bool:
    """Join the process group that ``torchrun`` (or ``srun`` with the same variables) describes
    in the environment; returns True when this call started it (the caller then destroys it),
    False for a single process or a group that is already initialised. The backend is
    ``backend``, else ``$ADVEX_DIST_BACKEND``, else NCCL when ``device`` is a CUDA device and
    gloo otherwise (gloo also reduces CUDA tensors: the choice for several ranks sharing one
    GPU, which NCCL refuses). The group is made by :func:`advex.distributed.init_from_env`."""
    import torch.distributed as dist

    if not launched_by_torchrun() or dist.is_initialized():
        return False
    if backend is None:
        backend = os.environ.get("ADVEX_DIST_BACKEND") or None
    if backend is None:
        cuda = device is not None and torch.device(device).type == "cuda"
        backend = "nccl" if cuda else "gloo"
    return _dist.init_from_env(backend=backend, timeout_s=timeout_s)


def local_device(device: str | torch.device | None = None) -> torch.device:
    """The device of this rank: ``"auto"``/None is ``cuda:LOCAL_RANK`` when CUDA is available
    (one GPU per rank, as ``torchrun --nproc_per_node=GPUs`` runs it), then MPS, then CPU; an
    explicit ``"cuda"`` without an index also takes ``LOCAL_RANK``. A device that is not there
    is a ``ValueError``."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
        if dev.index is None:
            dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but MPS is not available")
    return dev


def check_same_across_ranks(what: dict, name: str = "arguments") -> None:
    """Raise ``ValueError`` on every rank when the JSON-like dict ``what`` differs between
    ranks, naming the keys and each rank's value (mismatched command lines, data or seeds
    would otherwise train silently on inconsistent shards)."""
    if not is_distributed():
        return
    every = all_gather_object(what)
    keys = sorted(set().union(*(d.keys() for d in every)))
    diff = []
    for k in keys:
        vals = [d.get(k) for d in every]
        if any(v != vals[0] for v in vals[1:]):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(vals))
            diff.append(f"{k} ({shown})")
    if diff:
        raise ValueError(
            f"the ranks were started with different {name}: "
            + "; ".join(diff)
            + " — every rank must run the same command on the same data"
        )


def sum_across_ranks(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (float64; the values themselves outside a
    process group)."""
    import torch.distributed as dist

    if not is_distributed():
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


@torch.no_grad()
def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``model`` (the start of a
    data-parallel run, as DDP does)."""
    import torch.distributed as dist

    if not is_distributed():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=src)


def _grad_params(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def all_reduce_step(model: nn.Module, stats: torch.Tensor) -> torch.Tensor:
    """Sum every trainable parameter's ``.grad`` and the float64 vector ``stats`` across ranks
    in one flat all-reduce; the grads are written back in place (a missing grad counts as
    zero). Returns the summed ``stats``. Each rank must have scaled its loss by its share of
    the global batch, so the sum is the gradient of the global batch's mean loss."""
    import torch.distributed as dist

    params = _grad_params(model)
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    dev = params[0].device if params else stats.device
    dtype = params[0].dtype if params else torch.float64
    flat = torch.cat([g.to(dtype) for g in grads]) if grads else torch.zeros(0, device=dev)
    if dtype in (torch.float32, torch.float64):  # one message: counts are exact in float32
        buf = torch.cat([flat, stats.to(dev, dtype)])
        dist.all_reduce(buf)
        flat, out = buf[: flat.numel()], buf[flat.numel() :].double()
    else:  # bfloat16 / float16 weights: the stats travel on their own, in float64
        out = stats.to(dev, torch.float64)
        dist.all_reduce(flat)
        dist.all_reduce(out)
    offset = 0
    for p in params:
        k = p.numel()
        g = flat[offset : offset + k].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += k
    return out.cpu()


@torch.no_grad()
def average_running_stats(model: nn.Module) -> None:
    """Average the BatchNorm running statistics across ranks after a step, so every rank keeps
    the same buffers (the running mean is then exactly the one-process value; the batch
    statistics of the forward pass stay per rank, as in DDP without ``SyncBatchNorm``)."""
    import torch.distributed as dist

    if not is_distributed():
        return
    w = dist.get_world_size()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for t in (m.running_mean, m.running_var):
                if t is not None:
                    dist.all_reduce(t)
                    t.div_(w)

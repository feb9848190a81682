"""Per-point random numbers: every draw depends on the seed, the point and a stream name, never on
the batch it was drawn in.

A batch-wide ``torch.Generator`` makes an attack's result for one point depend on which other
points shared its batch, their order, and (next) how points are sharded across processes.
:class:`PointRandom` instead derives each point's numbers from a counter-based hash (SplitMix64)
of ``(seed, key of the point, stream, counter, element)``. The key of a point is a hash of its
content by default, so the same input gets the same random start, square or permutation in a
batch of 1, of 64, or shuffled; pass ``keys=`` (e.g. global dataset indices) to choose another
identity.

>>> rng = PointRandom(seed=0, x=x)             # keys from the content of each sample
>>> u = rng.uniform("start", (3, 28, 28))        # (N, 3, 28, 28) in [0, 1)
>>> u_sub = rng.uniform("start", (3, 28, 28), idx=torch.tensor([4, 7]))  # same rows 4 and 7
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch

__all__ = ["PointRandom", "point_keys"]

_M64 = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _M64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_C1 = _signed(0xBF58476D1CE4E5B9)
_C2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic)."""
    z = (z ^ _shr(z, 30)) * _C1
    z = (z ^ _shr(z, 27)) * _C2
    return z ^ _shr(z, 31)


def _stream_id(stream: str | int) -> int:
    if isinstance(stream, int):
        return _signed(stream * 0x100000001B3 + 0x5BD1E995)
    return _signed(zlib.crc32(str(stream).encode()) * 0x100000001B3 + 0x2545F491)


def point_keys(x: torch.Tensor) -> torch.Tensor:
    """A 64-bit key per sample of ``x`` computed from its exact bits (shape ``(N,)``, int64)."""
    flat = x.detach().reshape(x.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        bits = flat.contiguous().view(torch.int16).to(torch.int64)
    elif flat.dtype == torch.float64:
        bits = flat.contiguous().view(torch.int64)
    else:
        bits = flat.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    pos = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int64)
    h = _mix(bits * _C1 + _mix(pos * _GOLDEN + 1))
    return _mix(h.sum(dim=1) + flat.shape[1])


class PointRandom:
    """Random draws that are a function of ``(seed, point, stream, counter)`` only.

    Parameters
    ----------
    seed: the attack's seed (an int).
    x: the batch whose samples own the draws (keys are hashed from their content), or
    keys: explicit int64 keys, one per sample (e.g. dataset indices).

    Every method takes a ``stream`` (a name or int: one per kind of draw, plus e.g. the step
    number) and an optional ``idx`` (the rows to draw for; default all), and returns a tensor of
    shape ``(len(idx), *shape)``. Drawing for a subset gives exactly those rows of the full draw.
    """

    def __init__(
        self, seed: int, x: torch.Tensor | None = None, keys: torch.Tensor | None = None
    ) -> None:
        if (x is None) == (keys is None):
            raise ValueError("PointRandom needs exactly one of x= (keys from content) or keys=")
        k = point_keys(x) if keys is None else torch.as_tensor(keys, dtype=torch.int64)
        self.keys = _mix(k + _mix(torch.full_like(k, _signed(int(seed) * 0x2545F4914F6CDD1D))))

    def _bits(self, stream, shape: Sequence[int], idx) -> torch.Tensor:
        keys = self.keys if idx is None else self.keys[idx]
        n = math.prod(shape)
        j = torch.arange(n, device=keys.device, dtype=torch.int64)
        base = _mix(keys + _signed(_stream_id(stream) * _GOLDEN))
        z = _mix(base[:, None] + (j[None, :] + 1) * _GOLDEN)
        return z.reshape((keys.shape[0], *shape))

    def uniform(self, stream, shape: Sequence[int], idx=None, dtype=torch.float32) -> torch.Tensor:
        """Uniform in ``[0, 1)`` (53 random bits, then cast to ``dtype``)."""
        z = _shr(self._bits(stream, shape, idx), 11)
        return (z.to(torch.float64) * 2.0**-53).to(dtype)

    def normal(self, stream, shape: Sequence[int], idx=None, dtype=torch.float32) -> torch.Tensor:
        """Standard normal (Box–Muller on two uniform streams)."""
        u1 = self.uniform(f"{stream}/n1", shape, idx, torch.float64)
        u2 = self.uniform(f"{stream}/n2", shape, idx, torch.float64)
        r = torch.sqrt(-2.0 * torch.log1p(-u1))
        return (r * torch.cos(2 * math.pi * u2)).to(dtype)

    def integers(self, stream, low: int, high: int, shape: Sequence[int], idx=None) -> torch.Tensor:
        """Integers uniform in ``[low, high)`` (int64)."""
        if high <= low:
            raise ValueError(f"integers: empty range [{low}, {high})")
        u = self.uniform(stream, shape, idx, torch.float64)
        return (low + torch.floor(u * (high - low))).to(torch.int64).clamp_(max=high - 1)

    def signs(self, stream, shape: Sequence[int], idx=None, dtype=torch.float32) -> torch.Tensor:
        """±1 with probability 1/2 each."""
        return self.integers(stream, 0, 2, shape, idx).to(dtype) * 2 - 1

    def permutation(self, stream, n: int) -> torch.Tensor:
        """A permutation of ``range(n)`` for the whole batch (ranks of per-point draws), so the
        order of points depends on the points, not on their positions."""
        u = self.uniform(stream, (), None, torch.float64)
        return torch.argsort(u[:n])

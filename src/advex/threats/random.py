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

import hashlib
import math
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


def _mix_int(z: int) -> int:
    """SplitMix64's finaliser on a Python int (unsigned 64-bit result)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _stream_id(stream) -> int:
    """A 64-bit id of a stream: a name, an int, or a tuple of those (e.g. ``("square", r, i)``).

    Names are hashed with BLAKE2b (the same in every process, unlike ``hash``); tuples are folded
    component by component, so ``("start", 1)`` and ``("start", 2)`` are unrelated streams.
    """
    parts = stream if isinstance(stream, tuple) else (stream,)
    h = 0x6A09E667F3BCC908
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, int):
            v = int.from_bytes(hashlib.blake2b(str(p).encode(), digest_size=8).digest(), "little")
            h = _mix_int(h ^ v ^ 0x5BD1E995)
        else:
            h = _mix_int(h ^ (int(p) & _M64))
        h = _mix_int(h + 0x9E3779B97F4A7C15)
    return _signed(h)


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
    """Random draws that are a function of ``(seed, point, stream, element)`` only.

    Parameters
    ----------
    seed: the attack's seed (an int).
    x: the batch whose samples own the draws (keys are hashed from their exact content), or
    keys: explicit int64 keys, one per sample (e.g. global dataset indices).

    Every method takes a ``stream`` (a name, an int, or a tuple of those: one per kind of draw,
    plus e.g. the restart and step numbers) and an optional ``idx`` (the rows to draw for;
    default all), and returns a tensor of shape ``(len(idx), *shape)`` on the keys' device.
    Drawing for a subset gives exactly those rows of the full draw, so an attack that draws for
    its still-active rows gives every point the numbers it would get alone. Identical samples get
    identical numbers (with content keys).

    >>> rng = PointRandom(0, x=x)                          # x: (N, 1, 28, 28)
    >>> rng.uniform("start", x.shape[1:]).shape            # (N, 1, 28, 28), in [0, 1)
    >>> rng.integers(("window", 0, 7), 0, 24, (2,), idx=torch.tensor([3, 5]))  # rows 3, 5
    """

    def __init__(
        self, seed: int, x: torch.Tensor | None = None, keys: torch.Tensor | None = None
    ) -> None:
        if (x is None) == (keys is None):
            raise ValueError("PointRandom needs exactly one of x= (keys from content) or keys=")
        k = point_keys(x) if keys is None else torch.as_tensor(keys, dtype=torch.int64)
        if k.dim() != 1:
            raise ValueError(f"PointRandom keys must be one per sample (N,), got {tuple(k.shape)}")
        self.seed = int(seed)
        self.keys = _mix(k + _mix(torch.full_like(k, _signed(self.seed * 0x2545F4914F6CDD1D))))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def _bits(self, stream, shape: Sequence[int], idx) -> torch.Tensor:
        keys = self.keys if idx is None else self.keys[idx]
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        j = torch.arange(n, device=keys.device, dtype=torch.int64)
        base = _mix(keys + _signed(_stream_id(stream) * _GOLDEN))
        z = _mix(base[:, None] + (j[None, :] + 1) * _GOLDEN)
        return z.reshape((keys.shape[0], *shape))

    def uniform(self, stream, shape: Sequence[int], idx=None, dtype=torch.float32) -> torch.Tensor:
        """Uniform in ``[0, 1)``: as many random bits as ``dtype`` holds exactly (24 for
        float32, 53 for float64), so no value rounds up to 1."""
        bits = min(53, 1 - round(math.log2(torch.finfo(dtype).eps)))
        z = _shr(self._bits(stream, shape, idx), 64 - bits)
        return (z.to(torch.float64) * 2.0**-bits).to(dtype)

    def normal(self, stream, shape: Sequence[int], idx=None, dtype=torch.float32) -> torch.Tensor:
        """Standard normal (Box–Muller on two uniform streams, in float64)."""
        u1 = self.uniform((stream, "normal-1"), shape, idx, torch.float64)
        u2 = self.uniform((stream, "normal-2"), shape, idx, torch.float64)
        r = torch.sqrt(-2.0 * torch.log1p(-u1))
        return (r * torch.cos(2 * math.pi * u2)).to(dtype)

    def exponential(
        self, stream, shape: Sequence[int], idx=None, dtype=torch.float32
    ) -> torch.Tensor:
        """Exponential with rate 1 (``-log(1 - u)``, finite)."""
        u = self.uniform(stream, shape, idx, torch.float64)
        return (-torch.log1p(-u)).to(dtype)

    def laplace(self, stream, shape: Sequence[int], idx=None, dtype=torch.float32) -> torch.Tensor:
        """Standard Laplace (an exponential with a random sign): the direction of a uniform
        point of the L1 ball."""
        e = self.exponential((stream, "laplace-magnitude"), shape, idx, torch.float64)
        s = self.signs((stream, "laplace-sign"), shape, idx, torch.float64)
        return (e * s).to(dtype)

    def integers(self, stream, low: int, high: int, shape: Sequence[int], idx=None) -> torch.Tensor:
        """Integers uniform in ``[low, high)`` (int64)."""
        if high <= low:
            raise ValueError(f"integers: empty range [{low}, {high})")
        u = self.uniform(stream, shape, idx, torch.float64)
        return (low + torch.floor(u * (high - low))).to(torch.int64).clamp_(max=high - 1)

    def signs(self, stream, shape: Sequence[int], idx=None, dtype=torch.float32) -> torch.Tensor:
        """±1 with probability 1/2 each."""
        return self.integers(stream, 0, 2, shape, idx).to(dtype) * 2 - 1

    def permutation(self, stream, idx=None) -> torch.Tensor:
        """An order of the points: positions ``0 .. len(idx) - 1`` (into ``idx``, or the batch)
        sorted by one uniform draw per point. The order follows the points, not their positions:
        for a shuffled batch, the same points come in the same order. Identical samples (equal
        keys) keep their relative positions."""
        u = self.uniform(stream, (), idx, torch.float64)
        return torch.sort(u, stable=True).indices

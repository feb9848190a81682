"""The domain of a threat: valid input range (:class:`Box`) and modifiable features
(:class:`Mask`)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["Box", "Mask"]


def _as_bound(v: Any, name: str) -> float | torch.Tensor:
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        if not v.is_floating_point():
            v = v.float()
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"box {name} bound must be finite everywhere")
        return v.detach()
    try:
        f = float(v)
    except (TypeError, ValueError) as err:
        raise TypeError(f"box {name} bound must be a number or a tensor, got {v!r}") from err
    if not math.isfinite(f):
        raise ValueError(f"box {name} bound must be finite, got {f}")
    return f


def check_broadcasts(t: torch.Tensor, x: torch.Tensor, what: str, *, plural: bool = False) -> None:
    """Raise a ValueError naming ``what`` unless ``t`` broadcasts to one sample of the batch
    ``x`` (shape ``x.shape[1:]``)."""
    try:
        torch.broadcast_shapes(t.shape, x.shape[1:])
    except RuntimeError as err:
        raise ValueError(
            f"{what} of shape {tuple(t.shape)} {'do' if plural else 'does'} not broadcast to a "
            f"sample of shape "
            f"{tuple(x.shape[1:])}"
        ) from err


class Box:
    """Valid input range ``lo <= x <= hi``, scalar or per feature.

    Parameters
    ----------
    lo, hi:
        Numbers (the same range for every feature, e.g. ``0, 1`` for pixels) or tensors
        broadcastable to one sample's shape (one range per feature, e.g. tabular columns of
        different scales). ``lo < hi`` must hold everywhere and both must be finite.

    >>> box = Box(torch.tensor([0.0, -1.0, 0.0]), torch.tensor([1.0, 1.0, 100.0]))
    >>> box.clamp(x)            # x: (B, 3)
    >>> box.contains(x)         # (B,) bool
    """

    def __init__(self, lo: Any = 0.0, hi: Any = 1.0) -> None:
        self.lo = _as_bound(lo, "low")
        self.hi = _as_bound(hi, "high")
        if self.scalar:
            if not self.lo < self.hi:
                raise ValueError(f"bounds must satisfy low < high, got ({self.lo}, {self.hi})")
        else:
            lo_t = torch.as_tensor(self.lo, dtype=torch.float64)
            hi_t = torch.as_tensor(self.hi, dtype=torch.float64)
            try:
                torch.broadcast_shapes(lo_t.shape, hi_t.shape)
            except RuntimeError as err:
                raise ValueError(
                    f"box bounds of shapes {tuple(lo_t.shape)} and {tuple(hi_t.shape)} do not "
                    "broadcast together"
                ) from err
            if not bool((lo_t < hi_t).all()):
                raise ValueError("bounds must satisfy low < high for every feature")

    @classmethod
    def of(cls, bounds: Any) -> Box:
        """A :class:`Box` from a box or a ``(low, high)`` pair."""
        if isinstance(bounds, Box):
            return bounds
        try:
            lo, hi = bounds
        except (TypeError, ValueError) as err:
            raise TypeError(f"bounds must be a (low, high) pair or a Box, got {bounds!r}") from err
        return cls(lo, hi)

    @property
    def scalar(self) -> bool:
        """True when one range holds for every feature."""
        return not isinstance(self.lo, torch.Tensor) and not isinstance(self.hi, torch.Tensor)

    @property
    def bounds(self) -> tuple[Any, Any]:
        """``(lo, hi)`` as given (numbers or tensors)."""
        return (self.lo, self.hi)

    def _check_shape(self, x: torch.Tensor) -> None:
        for b in (self.lo, self.hi):
            if isinstance(b, torch.Tensor):
                check_broadcasts(b, x, "box bounds", plural=True)

    def bounds_for(self, x: torch.Tensor) -> tuple[Any, Any]:
        """``(lo, hi)`` ready for arithmetic with the batch ``x``: numbers when the box is
        scalar, else tensors on ``x``'s device and dtype, broadcastable to ``x``."""
        if self.scalar:
            return self.lo, self.hi
        self._check_shape(x)
        return tuple(
            b.to(device=x.device, dtype=x.dtype) if isinstance(b, torch.Tensor) else b
            for b in (self.lo, self.hi)
        )

    def lo_like(self, x: torch.Tensor) -> torch.Tensor:
        """The lower bound as a tensor of ``x``'s shape, device and dtype."""
        lo = self.bounds_for(x)[0]
        return torch.as_tensor(lo, dtype=x.dtype, device=x.device).expand_as(x)

    def hi_like(self, x: torch.Tensor) -> torch.Tensor:
        """The upper bound as a tensor of ``x``'s shape, device and dtype."""
        hi = self.bounds_for(x)[1]
        return torch.as_tensor(hi, dtype=x.dtype, device=x.device).expand_as(x)

    def flat_bounds(self, x: torch.Tensor) -> tuple[Any, Any]:
        """``(lo, hi)`` for the flattened batch ``x.reshape(B, -1)``: numbers, or ``(1, d)``
        tensors."""
        if self.scalar:
            return self.lo, self.hi
        shape = (1, -1)
        return self.lo_like(x[:1]).reshape(shape), self.hi_like(x[:1]).reshape(shape)

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clipped into the box (a new tensor)."""
        lo, hi = self.bounds_for(x)
        return x.clamp(lo, hi)

    def contains(self, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample bool: every feature of the sample lies in ``[lo - tol, hi + tol]``."""
        lo, hi = self.bounds_for(x)
        ok = (x >= lo - tol) & (x <= hi + tol)
        return ok.reshape(x.shape[0], -1).all(1)

    def min_max(self) -> tuple[float, float]:
        """The smallest low and the largest high bound (for messages and defaults)."""
        lo = float(self.lo.min()) if isinstance(self.lo, torch.Tensor) else self.lo
        hi = float(self.hi.max()) if isinstance(self.hi, torch.Tensor) else self.hi
        return lo, hi

    def to_list(self) -> list:
        """JSON-ready ``[low, high]`` (nested lists for per-feature bounds)."""
        return [b.tolist() if isinstance(b, torch.Tensor) else b for b in (self.lo, self.hi)]

    def __repr__(self) -> str:
        if self.scalar:
            return f"Box({self.lo:g}, {self.hi:g})"
        return f"Box(per-feature, range [{self.min_max()[0]:g}, {self.min_max()[1]:g}])"


class Mask:
    """Which features the attacker may modify: a boolean tensor broadcastable to one sample's
    shape (``True`` = may change), e.g. a patch region or the mutable columns of a table.

    >>> m = Mask(torch.tensor([True, False, True]))
    >>> m.apply(delta)          # zero on frozen features
    """

    def __init__(self, mask: Any) -> None:
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor, got dtype {m.dtype}")
        if not bool(m.any()):
            raise ValueError("mask allows no feature to change (all False)")
        self.tensor = m

    def for_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The mask on ``x``'s device, after checking that it broadcasts to one sample."""
        m = self.tensor.to(x.device)
        check_broadcasts(m, x, "mask")
        return m

    def apply(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` with the frozen features set to zero."""
        return delta * self.for_batch(delta)

    def respected(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample bool: no frozen feature moved by more than ``tol``."""
        frozen = ((x_adv - x).abs() > tol) & ~self.for_batch(x)
        return ~frozen.reshape(x.shape[0], -1).any(1)

    def count(self) -> int:
        """Number of modifiable entries of the mask tensor."""
        return int(self.tensor.sum())

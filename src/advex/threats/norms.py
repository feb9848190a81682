"""The three geometries advex attacks in: L∞, L2 and L1.

Each norm is written once here and shared by every attack: how to measure a perturbation, the
steepest-ascent direction for a gradient (the normalised step), the Euclidean projection onto the
ε-ball, and a uniform random start inside the ball. All operations are per sample: tensors have a
leading batch dimension and ``eps`` is a scalar or a tensor with one value per sample.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from .random import PointRandom

__all__ = ["Norm", "LInf", "L2", "L1", "get_norm", "NORMS", "Rng"]

_TINY = 1e-12


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _per_sample(eps: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) eps to shape (B, 1, 1, ...) matching ``like``."""
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.dim() == 0:
        e = e.expand(like.shape[0])
    return e.reshape((-1,) + (1,) * (like.dim() - 1))


Rng = PointRandom | torch.Generator | None
"""A source of random numbers: per-point draws (:class:`PointRandom`, the attacks' choice), or a
batch-wide ``torch.Generator`` / ``None`` (torch's global generator)."""


def _draw(kind: str, like: torch.Tensor, rng: Rng, stream, idx, per_sample: bool = False):
    """``like``-shaped draws (or one per sample with ``per_sample``) of ``"uniform"`` or
    ``"normal"`` numbers, per point from a :class:`PointRandom` (rows ``idx`` of its batch)."""
    shape = () if per_sample else tuple(like.shape[1:])
    if isinstance(rng, PointRandom):
        n = len(rng) if idx is None else int(torch.as_tensor(idx).numel())
        if n != like.shape[0]:
            raise ValueError(
                f"PointRandom draws for {n} points but the tensor has {like.shape[0]} rows: pass "
                "idx= (the rows of the PointRandom's batch)"
            )
        return getattr(rng, kind)(stream, shape, idx, like.dtype).to(like.device)
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn((like.shape[0], *shape), generator=rng, device=like.device, dtype=like.dtype)


class Norm(ABC):
    """Interface of a perturbation norm (all methods are per sample)."""

    name: str = ""
    p: float = 0.0

    @abstractmethod
    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of ``delta``, shape (B,)."""

    @abstractmethod
    def steepest(self, grad: torch.Tensor) -> torch.Tensor:
        """Unit-norm direction maximising ``<grad, d>`` (the normalised ascent step)."""

    @abstractmethod
    def project(self, delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
        """Euclidean projection of ``delta`` onto the ball of radius ``eps``."""

    @abstractmethod
    def random(
        self,
        like: torch.Tensor,
        eps: torch.Tensor | float,
        rng: Rng,
        *,
        idx: torch.Tensor | None = None,
        stream="start",
    ) -> torch.Tensor:
        """A point drawn uniformly from the ball of radius ``eps`` (shape of ``like``).

        ``rng``: a :class:`PointRandom` (row ``i`` drawn for point ``idx[i]`` of its batch, from
        ``stream``) or a ``torch.Generator`` / ``None`` (one batch-wide draw).
        """

    @abstractmethod
    def dual(self, grad: torch.Tensor) -> torch.Tensor:
        """Dual norm of ``grad`` per sample: the largest ``<grad, d>`` over the unit ball, so the
        distance to the hyperplane ``f + <grad, δ> = 0`` is ``|f| / dual(grad)`` (DeepFool, FAB).
        """

    def noise(
        self, like: torch.Tensor, rng: Rng, *, idx: torch.Tensor | None = None, stream="noise"
    ) -> torch.Tensor:
        """Unnormalised random noise whose direction is uniform on this norm's sphere shape
        (Gaussian; uniform in a cube for L∞); scale it with :meth:`measure`. ``rng``, ``idx``,
        ``stream`` as for :meth:`random`."""
        return _draw("normal", like, rng, stream, idx)

    def __repr__(self) -> str:
        return self.name


class LInf(Norm):
    name, p = "linf", math.inf

    def measure(self, delta):
        return _flat(delta).abs().amax(dim=1)

    def steepest(self, grad):
        return grad.sign()

    def project(self, delta, eps):
        e = _per_sample(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)

    def random(self, like, eps, rng, *, idx=None, stream="start"):
        u = _draw("uniform", like, rng, stream, idx)
        return (2 * u - 1) * _per_sample(eps, like)

    def dual(self, grad):
        return _flat(grad).abs().sum(dim=1)

    def noise(self, like, rng, *, idx=None, stream="noise"):
        return 2 * _draw("uniform", like, rng, stream, idx) - 1


class L2(Norm):
    name, p = "l2", 2.0

    def measure(self, delta):
        return _flat(delta).norm(p=2, dim=1)

    def steepest(self, grad):
        n = _flat(grad).norm(p=2, dim=1).clamp_min(_TINY)
        return grad / n.reshape((-1,) + (1,) * (grad.dim() - 1))

    def project(self, delta, eps):
        n = _flat(delta).norm(p=2, dim=1)
        e = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device).expand_as(n)
        factor = torch.where(n > e, e / n.clamp_min(_TINY), torch.ones_like(n))
        return delta * factor.reshape((-1,) + (1,) * (delta.dim() - 1))

    def random(self, like, eps, rng, *, idx=None, stream="start"):
        # uniform in the L2 ball: Gaussian direction, radius ~ u^(1/d)
        per_point = isinstance(rng, PointRandom)
        g = _draw("normal", like, rng, (stream, "direction") if per_point else stream, idx)
        direction = self.steepest(g)
        d = _flat(like).shape[1]
        u = _draw("uniform", like, rng, (stream, "radius") if per_point else stream, idx, True)
        radius = u.pow(1.0 / d).reshape((-1,) + (1,) * (like.dim() - 1))
        return direction * radius * _per_sample(eps, like)

    def dual(self, grad):
        return _flat(grad).norm(p=2, dim=1)


class L1(Norm):
    """L1 ball. The ascent step is sparse: the sign of the gradient on its top ``1 - sparsity``
    fraction of coordinates by magnitude (as in SLIDE, Tramèr & Boneh 2019), scaled to unit L1
    norm; the single-coordinate steepest step of the textbook makes PGD-L1 crawl."""

    name, p = "l1", 1.0

    def __init__(self, sparsity: float = 0.99) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"L1 sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = sparsity

    def __repr__(self) -> str:
        return self.name if self.sparsity == 0.99 else f"L1(sparsity={self.sparsity})"

    def measure(self, delta):
        return _flat(delta).abs().sum(dim=1)

    def steepest(self, grad):
        g = _flat(grad)
        d = g.shape[1]
        k = max(1, int(round((1.0 - self.sparsity) * d)))
        mag = g.abs()
        thresh = mag.topk(k, dim=1).values[:, -1:]
        keep = (mag >= thresh) & (mag > 0)
        count = keep.sum(dim=1, keepdim=True).clamp_min(1)
        step = g.sign() * keep / count
        return step.reshape(grad.shape)

    def project(self, delta, eps):
        # Duchi et al. (2008): project |delta| onto the simplex of radius eps, restore signs.
        v = _flat(delta)
        e = torch.as_tensor(eps, dtype=v.dtype, device=v.device).expand(v.shape[0])
        a = v.abs()
        inside = a.sum(dim=1) <= e
        if bool(inside.all()):
            return delta
        mu = a.sort(dim=1, descending=True).values
        cs = mu.cumsum(dim=1)
        ar = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
        cond = mu - (cs - e[:, None]) / ar > 0
        rho = cond.to(torch.int64).cumsum(dim=1).argmax(dim=1, keepdim=True)
        theta = ((cs.gather(1, rho) - e[:, None]) / (rho + 1).to(v.dtype)).clamp_min(0)
        w = (a - theta).clamp_min(0) * v.sign()
        out = torch.where(inside[:, None], v, w)
        return out.reshape(delta.shape)

    def random(self, like, eps, rng, *, idx=None, stream="start"):
        # uniform in the L1 ball: Laplace direction, radius ~ u^(1/d)
        if isinstance(rng, PointRandom):
            u = _draw("uniform", like, rng, (stream, "radius"), idx, True)
            lap = rng.laplace((stream, "direction"), like.shape[1:], idx, like.dtype)
            lap = lap.to(like.device)
        else:
            e = _draw("uniform", like, rng, stream, idx)
            lap = -torch.log(e.clamp_min(1e-20))
            s = _draw("uniform", like, rng, stream, idx)
            lap = torch.where(s < 0.5, -lap, lap)
            u = _draw("uniform", like, rng, stream, idx, True)
        n = _flat(lap).abs().sum(dim=1).clamp_min(_TINY)
        d = _flat(like).shape[1]
        r = (u.pow(1.0 / d) / n).reshape((-1,) + (1,) * (like.dim() - 1))
        return lap * r * _per_sample(eps, like)

    def dual(self, grad):
        return _flat(grad).abs().amax(dim=1)


NORMS: dict[str, type[Norm]] = {"linf": LInf, "l2": L2, "l1": L1}
_ALIASES = {"inf": "linf", "Linf": "linf", "L2": "l2", "L1": "l1", "2": "l2", "1": "l1"}


def get_norm(norm: str | Norm) -> Norm:
    """Return the :class:`Norm` for ``"linf"``, ``"l2"`` or ``"l1"`` (or pass one through)."""
    if isinstance(norm, Norm):
        return norm
    key = _ALIASES.get(str(norm), str(norm).lower())
    if key not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(NORMS)}")
    return NORMS[key]()

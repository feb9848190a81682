"""The threat model: what an attacker may change, and by how much."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .norms import Norm, get_norm

__all__ = ["ThreatModel"]


@dataclass(frozen=True, eq=False)
class ThreatModel:
    """Norm, budget ε, valid input range and (optionally) which features may change.

    Parameters
    ----------
    norm:
        ``"linf"``, ``"l2"`` or ``"l1"``.
    eps:
        Perturbation budget (``None`` = unbounded, for minimum-norm attacks). Must be ≥ 0.
    bounds:
        ``(low, high)`` valid input range, e.g. ``(0, 1)`` for pixels. Inputs must already lie in
        it; adversarial examples always do.
    mask:
        Optional boolean tensor broadcastable to one sample's shape; ``True`` marks features the
        attacker may modify (e.g. a patch region, or mutable tabular columns).

    Every attack's output satisfies :meth:`contains`; property tests check it for every attack.

    >>> threat = ThreatModel("linf", eps=0.3)
    >>> x_adv = threat.project(x + delta, x)   # into the ε-ball ∩ bounds, mask respected
    """

    norm: str = "linf"
    eps: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    mask: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = get_norm(self.norm)
        object.__setattr__(self, "norm", n.name)
        if self.eps is not None:
            e = float(self.eps)
            if math.isnan(e) or e < 0:
                raise ValueError(f"eps must be >= 0, got {self.eps}")
            object.__setattr__(self, "eps", e)
        lo, hi = (float(b) for b in self.bounds)
        if not lo < hi:
            raise ValueError(f"bounds must satisfy low < high, got {self.bounds}")
        object.__setattr__(self, "bounds", (lo, hi))
        if self.mask is not None:
            m = torch.as_tensor(self.mask)
            if m.dtype != torch.bool:
                raise TypeError(f"mask must be a boolean tensor, got dtype {m.dtype}")
            if not bool(m.any()):
                raise ValueError("mask allows no feature to change (all False)")
            object.__setattr__(self, "mask", m)

    # -- helpers -----------------------------------------------------------------------------
    @property
    def lp(self) -> Norm:
        """The :class:`~advex.threats.norms.Norm` object for this threat model."""
        return get_norm(self.norm)

    def with_eps(self, eps: float | None) -> ThreatModel:
        return replace(self, eps=eps)

    def _mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mask is None:
            return None
        m = self.mask.to(x.device)
        try:
            torch.broadcast_shapes(m.shape, x.shape[1:])
        except RuntimeError as err:
            raise ValueError(
                f"mask of shape {tuple(m.shape)} does not broadcast to a sample of shape "
                f"{tuple(x.shape[1:])}"
            ) from err
        return m

    def apply_mask(self, delta: torch.Tensor) -> torch.Tensor:
        m = self._mask_for(delta)
        return delta if m is None else delta * m

    def _eps_or(self, eps):
        e = self.eps if eps is None else eps
        return math.inf if e is None else e

    def project(
        self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Map ``x_adv`` into {x + δ : ‖δ‖ ≤ ε, mask respected} ∩ bounds.

        The ball projection is followed by clipping to bounds; clipping only shrinks every
        coordinate of δ, so the result satisfies both constraints.
        """
        delta = self.apply_mask(x_adv - x)
        e = self._eps_or(eps)
        if not (isinstance(e, float) and math.isinf(e)):
            delta = self.lp.project(delta, e)
        return (x + delta).clamp_(*self.bounds)

    def random_start(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """A random point of the ε-ball around ``x`` (masked, clipped to bounds)."""
        e = self._eps_or(eps)
        if isinstance(e, float) and math.isinf(e):
            raise ValueError("random start needs a finite eps")
        delta = self.apply_mask(self.lp.random(x, e, generator))
        return (x + delta).clamp_(*self.bounds)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample perturbation size in this threat model's norm."""
        return self.lp.measure(x_adv - x)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` lies in the ε-ball, the bounds and respects the mask."""
        lo, hi = self.bounds
        ok = ((x_adv >= lo - tol) & (x_adv <= hi + tol)).reshape(x.shape[0], -1).all(1)
        if self.eps is not None:
            ok &= self.distance(x_adv, x) <= self.eps + tol
        m = self._mask_for(x)
        if m is not None:
            frozen = ((x_adv - x).abs() > tol) & ~m
            ok &= ~frozen.reshape(x.shape[0], -1).any(1)
        return ok

    def check_inputs(self, x: torch.Tensor, *, name: str = "x") -> None:
        """Raise a clear error when ``x`` is not a finite floating batch inside bounds."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor (e.g. float32 pixels in "
                f"{list(self.bounds)}), got dtype {x.dtype}"
            )
        if x.dim() < 2:
            raise ValueError(
                f"{name} must have a batch dimension: shape (batch, ...), got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf values")
        lo, hi = self.bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - 1e-6 or xmax > hi + 1e-6:
            raise ValueError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the threat model's "
                f"bounds [{lo:g}, {hi:g}]; advex never clips inputs silently: rescale the data "
                "or pass bounds= matching your input range"
            )

    def to_dict(self) -> dict:
        return {
            "norm": self.norm,
            "eps": self.eps,
            "bounds": list(self.bounds),
            "mask": None if self.mask is None else int(self.mask.sum()),
        }

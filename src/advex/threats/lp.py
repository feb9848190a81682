"""The Lp threat: a norm ball of radius ε around each input, inside a box, with an optional
mask of modifiable features."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Threat, check_float_batch
from .box import Box, Mask
from .norms import Norm, Rng, get_norm
from .projections import project_l1_box

__all__ = ["LpBall", "ThreatModel", "check_budget", "round_toward"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def round_toward(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x_adv`` cast to ``x``'s dtype, each coordinate rounded so that its distance to ``x``
    never grows: every norm of the perturbation, the bounds and a mask stay satisfied.

    The one rounding rule of advex for results in a lower precision than the attack ran in
    (float16 / bfloat16 inputs): :meth:`LpBall.finalize` and the attacks' half-precision path
    use it.

    >>> x16 = x.half(); round_toward(x_adv32, x16).dtype   # torch.float16, never past ε
    """
    r = x_adv.to(x.dtype)
    wide = torch.float64
    grew = (r.to(wide) - x.to(wide)).abs() > (x_adv.to(wide) - x.to(wide)).abs()
    if bool(grew.any()):
        r = torch.where(grew, torch.nextafter(r, x), r)
    return r


def check_budget(eps: Any) -> float | None:
    """``eps`` as a float (or ``None``); raises ``ValueError`` unless it is a number >= 0."""
    if eps is None:
        return None
    e = float(eps)
    if math.isnan(e) or e < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return e


class LpBall(Threat):
    """Norm ball of radius ε around each input, inside a box, with an optional feature mask.

    Parameters
    ----------
    norm:
        ``"linf"``, ``"l2"``, ``"l1"`` or a :class:`~advex.threats.norms.Norm` object (e.g.
        ``L1(sparsity=0.9)``, whose settings then reach every attack).
    eps:
        Perturbation budget (``None`` = unbounded, for minimum-norm attacks). Must be ≥ 0.
    bounds:
        The valid input range: a ``(low, high)`` pair of numbers (e.g. ``(0, 1)`` for pixels),
        a pair of tensors broadcastable to one sample's shape (one range per feature), or a
        :class:`~advex.threats.box.Box`. Inputs must already lie in it; adversarial examples
        always do.
    mask:
        Optional boolean tensor broadcastable to one sample's shape; ``True`` marks features the
        attacker may modify (e.g. a patch region, or mutable tabular columns).
    box:
        Keyword alternative to ``bounds``.

    Attributes: ``lp`` (the Norm object), ``norm`` (its name, e.g. ``"linf"``), ``eps``,
    ``box`` (a :class:`Box`), ``bounds`` (``(low, high)`` as given), ``mask`` (tensor or None).
    ``ThreatModel`` is the same class under its historical name.

    Every attack's output satisfies :meth:`contains`; property tests check it for every attack.

    >>> threat = LpBall("linf", eps=0.3)
    >>> x_adv = threat.project(x + delta, x)   # into the ε-ball ∩ box, mask respected
    >>> LpBall(L1(sparsity=0.9), eps=8.0, bounds=(lo_per_feature, hi_per_feature))
    """

    def __init__(
        self,
        norm: str | Norm = "linf",
        eps: float | None = None,
        bounds: Any = (0.0, 1.0),
        mask: torch.Tensor | Mask | None = None,
        *,
        box: Box | None = None,
    ) -> None:
        self.lp: Norm = get_norm(norm)
        self.eps: float | None = check_budget(eps)
        self.box: Box = box if box is not None else Box.of(bounds)
        if mask is None:
            self._mask = None
        else:
            self._mask = mask if isinstance(mask, Mask) else Mask(mask)

    # -- attributes ------------------------------------------------------------------------------
    @property
    def norm(self) -> str:
        """Name of the norm (``"linf"``, ``"l2"``, ``"l1"``), as written in reports."""
        return self.lp.name

    @property
    def bounds(self) -> tuple[Any, Any]:
        """``(low, high)``: numbers, or per-feature tensors."""
        return self.box.bounds

    @property
    def mask(self) -> torch.Tensor | None:
        return None if self._mask is None else self._mask.tensor

    @property
    def budget(self) -> float | None:
        return self.eps

    def _replace(self, **kw) -> LpBall:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(kw)
        return new

    def with_budget(self, eps: float | None) -> LpBall:
        """A copy with budget ``eps`` (norm object, box and mask shared)."""
        return self._replace(eps=check_budget(eps))

    def with_eps(self, eps: float | None) -> LpBall:
        """Same as :meth:`with_budget`."""
        return self.with_budget(eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps}, box={self.box!r})"

    # -- geometry ------------------------------------------------------------------------------
    def _mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self._mask is None else self._mask.for_batch(x)

    def apply_mask(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` with the frozen features set to zero."""
        return delta if self._mask is None else self._mask.apply(delta)

    def _eps_or(self, eps):
        e = self.eps if eps is None else eps
        return math.inf if e is None else e

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clipped into the box (in place when possible is not assumed)."""
        return self.box.clamp(x)

    def project(
        self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Map ``x_adv`` into {x + δ : ‖δ‖ ≤ ε, mask respected} ∩ box.

        The ball projection is followed by clipping to the box; clipping only shrinks every
        coordinate of δ (``x`` is in the box), so the result satisfies both constraints. For
        L∞ this is the exact Euclidean projection onto the intersection; for L1 see
        :meth:`project_exact`.
        """
        delta = self.apply_mask(x_adv - x)
        e = self._eps_or(eps)
        if not (isinstance(e, float) and math.isinf(e)):
            delta = self.lp.project(delta, e)
        lo, hi = self.box.bounds_for(x)
        return (x + delta).clamp_(lo, hi)

    def project_exact(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact Euclidean projection onto the L1 ball ∩ box (:func:`project_l1_box`) for L1;
        :meth:`project` for the other norms. The mask is applied first."""
        if self.lp.name == "l1" and self.eps is not None:
            z = x + self.apply_mask(x_adv - x)
            return project_l1_box(z, x, float(self.eps), self.box)
        return self.project(x_adv, x)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The norm's steepest-ascent step for ``grad``, frozen features masked out."""
        return self.lp.steepest(self.apply_mask(grad))

    def random_start(
        self,
        x: torch.Tensor,
        rng: Rng = None,
        eps: torch.Tensor | float | None = None,
        *,
        idx: torch.Tensor | None = None,
        stream="start",
    ) -> torch.Tensor:
        """A random point of the ε-ball around ``x`` (masked, clipped to the box): uniform in the
        L∞ / L2 / L1 ball.

        ``rng``: a :class:`~advex.threats.random.PointRandom` (per-point draws; ``x`` holds rows
        ``idx`` of its batch, all of it by default; ``stream`` names the draw, e.g.
        ``("start", restart)``), or a ``torch.Generator`` / ``None`` (one batch-wide draw).
        """
        e = self._eps_or(eps)
        if isinstance(e, float) and math.isinf(e):
            raise ValueError("random start needs a finite eps")
        delta = self.apply_mask(self.lp.random(x, e, rng, idx=idx, stream=stream))
        lo, hi = self.box.bounds_for(x)
        return (x + delta).clamp_(lo, hi)

    def finalize(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Guarantee containment in the caller's dtype (``x``'s); returns ``x_adv`` in it.

        float32 and float64 results are returned unchanged. When ``x`` is float16 / bfloat16
        (the attack ran in that dtype, or in a wider one the model needs), the point is
        projected again in float64 and cast to ``x``'s dtype rounding *toward* ``x``
        (:func:`round_toward`), so no coordinate of the perturbation grows and the result lies
        in the ball, the box and the mask exactly.
        """
        if x_adv.dtype not in _LOW_PRECISION and x.dtype not in _LOW_PRECISION:
            return x_adv
        xd = x.double()
        return round_toward(self.project(x_adv.double(), xd), x)

    # -- measurement ---------------------------------------------------------------------------
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample perturbation size in this threat's norm (computed in float32 at least)."""
        if x_adv.dtype in _LOW_PRECISION:
            return self.lp.measure(x_adv.float() - x.float())
        return self.lp.measure(x_adv - x)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` lies in the ε-ball, the box and respects the mask."""
        ok = self.box.contains(x_adv, tol)
        if self.eps is not None:
            ok &= self.distance(x_adv, x) <= self.eps + tol
        if self._mask is not None:
            ok &= self._mask.respected(x_adv, x, tol)
        return ok

    def check_inputs(self, x: torch.Tensor, *, name: str = "x") -> None:
        """Raise a clear error when ``x`` is not a finite floating batch inside the box."""
        lo_m, hi_m = self.box.min_max()
        check_float_batch(x, name=name, example=f"float32 pixels in {[lo_m, hi_m]}")
        if self.box.scalar:
            xmin, xmax = float(x.min()), float(x.max())
            if xmin < lo_m - 1e-6 or xmax > hi_m + 1e-6:
                raise ValueError(
                    f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the threat model's "
                    f"bounds [{lo_m:g}, {hi_m:g}]; advex never clips inputs silently: rescale the "
                    "data or pass bounds= matching your input range"
                )
        elif not bool(self.box.contains(x).all()):
            raise ValueError(
                f"{name} has features outside the threat model's per-feature bounds; advex "
                "never clips inputs silently: rescale the data or pass bounds= matching it"
            )

    def to_dict(self) -> dict:
        return {
            "norm": self.norm,
            "eps": self.eps,
            "bounds": self.box.to_list(),
            "mask": None if self._mask is None else self._mask.count(),
        }

    def describe(self) -> str:
        eps = "unbounded" if self.eps is None else f"eps={self.eps:g}"
        return f"{self.norm} ball, {eps}, {self.box!r}" + ("" if self._mask is None else ", masked")


#: The historical name of :class:`LpBall` (same class, same constructor).
ThreatModel = LpBall

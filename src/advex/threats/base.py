"""The :class:`Threat` interface: what an attacker may change, and by how much.

A threat is a set of allowed inputs around each clean input ``x``. Attacks only ever talk to it
through these methods, so a new family of threats (a patch, tabular feature constraints, a text
edit budget) plugs into every attack that needs no more than this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

__all__ = ["Threat", "check_float_batch"]


def check_float_batch(
    x: object, *, name: str = "x", example: str = "float32 pixels in [0, 1]"
) -> None:
    """Raise a clear error unless ``x`` is a non-empty, finite, floating ``(batch, ...)`` tensor
    (the part of input validation that needs no threat; ``example`` names a valid input)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (e.g. {example}), got dtype {x.dtype}"
        )
    if x.dim() < 2:
        raise ValueError(
            f"{name} must have a batch dimension: shape (batch, ...), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or inf values")


class Threat(ABC):
    """Interface of a threat model: validation, start points, projection, ascent direction,
    distance, membership and a budget.

    All methods work on batches: ``x`` is the clean batch of shape ``(B, ...)`` and ``x_adv``
    a candidate of the same shape. Implementations are immutable; :meth:`with_budget` returns
    a copy.

    >>> threat.check_inputs(x)
    >>> x_adv = threat.project(threat.init(x, rng) + step * threat.direction(g), x)
    >>> threat.contains(x_adv, x).all()
    """

    # -- inputs --------------------------------------------------------------------------------
    @abstractmethod
    def check_inputs(self, x: torch.Tensor, *, name: str = "x") -> None:
        """Raise a clear ``TypeError``/``ValueError`` when ``x`` is no valid clean batch."""

    # -- the search space ------------------------------------------------------------------------
    @abstractmethod
    def random_start(
        self, x: torch.Tensor, rng: Any = None, eps: Any = None, *, idx: Any = None, stream="start"
    ) -> torch.Tensor:
        """A random allowed point around every sample of ``x``. ``rng`` is a
        :class:`~advex.threats.random.PointRandom` (per-point draws for the rows ``idx`` of its
        batch, from ``stream``) or a ``torch.Generator`` / ``None`` (one batch-wide draw)."""

    def init(self, x: torch.Tensor, rng: Any = None, *, idx: Any = None) -> torch.Tensor:
        """The start point of an iterative attack: :meth:`random_start` by default."""
        return self.random_start(x, rng, idx=idx)

    @abstractmethod
    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: Any = None) -> torch.Tensor:
        """Map ``x_adv`` to an allowed point around ``x`` (the closest one where exact)."""

    @abstractmethod
    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit size for the gradient ``grad`` (frozen features
        get no step)."""

    def finalize(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Last containment step on an attack's output, in the caller's dtype.

        The default returns ``x_adv`` unchanged; implementations whose arithmetic may leave the
        set by a rounding error in low precision (float16, bfloat16) repair it here.
        """
        return x_adv

    # -- measurement -------------------------------------------------------------------------------
    @abstractmethod
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample size of the perturbation, shape ``(B,)``."""

    @abstractmethod
    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` is an allowed point around ``x`` (up to ``tol``)."""

    # -- budget ------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def budget(self) -> float | None:
        """The perturbation budget (``None``: unbounded, for minimum-norm attacks)."""

    @abstractmethod
    def with_budget(self, eps: float | None) -> Threat:
        """A copy of this threat with budget ``eps`` (validated)."""

    # -- description -------------------------------------------------------------------------------
    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for reports)."""

    def describe(self) -> str:
        """One line for people, e.g. ``"linf ball, eps=0.3, box [0, 1]"``."""
        return ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if v is not None)

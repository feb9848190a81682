"""Attack objectives, written so that the attacker *maximises* them, per sample.

Untargeted losses push away from the true label; targeted ones pull towards the target.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .goals import Goal

__all__ = ["cross_entropy", "margin", "dlr", "get_loss", "LOSSES", "top_other"]

LossFn = Callable[[torch.Tensor, Goal], torch.Tensor]


def top_other(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``labels`` (per sample)."""
    masked = logits.scatter(1, labels[:, None], float("-inf"))
    return masked.amax(dim=1)


def cross_entropy(logits: torch.Tensor, goal: Goal) -> torch.Tensor:
    """CE of the true class (untargeted) or minus CE of the target (targeted)."""
    ce = F.cross_entropy(logits, goal.labels, reduction="none")
    return -ce if goal.targeted else ce


def margin(logits: torch.Tensor, goal: Goal, kappa: float = float("inf")) -> torch.Tensor:
    """The C&W margin (Carlini & Wagner 2017), capped at confidence ``kappa``.

    Untargeted: ``min(max_{j≠y} z_j − z_y, κ)``; targeted: ``min(z_t − max_{j≠t} z_j, κ)``.
    It is positive exactly when the attack succeeds; with κ > 0 it keeps pushing until the
    margin reaches κ.
    """
    lab = goal.labels
    z_lab = logits.gather(1, lab[:, None]).squeeze(1)
    other = top_other(logits, lab)
    m = z_lab - other if goal.targeted else other - z_lab
    return m.clamp(max=kappa) if kappa != float("inf") else m


def dlr(logits: torch.Tensor, goal: Goal) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): scale- and shift-invariant margin.

    Untargeted: ``−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3)``; targeted:
    ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)`` with π the logits sorted in decreasing order.
    """
    if logits.shape[1] < (4 if goal.targeted else 3):
        raise ValueError("the DLR loss needs at least 3 classes (4 for the targeted version)")
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, goal.y[:, None]).squeeze(1)
    if goal.targeted:
        z_t = logits.gather(1, goal.target[:, None]).squeeze(1)
        denom = srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12
        return -(z_y - z_t) / denom
    other = top_other(logits, goal.y)
    denom = srt[:, 0] - srt[:, 2] + 1e-12
    return -(z_y - other) / denom


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(loss: str | LossFn) -> LossFn:
    """Return a loss by name (``"ce"``, ``"margin"``, ``"dlr"``) or pass a callable through."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} or a callable")
    return LOSSES[loss]

"""Attack goals: untargeted (any wrong class) or targeted (a chosen class)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Goal"]


@dataclass(frozen=True, eq=False)
class Goal:
    """What counts as success for each sample of a batch.

    ``y`` holds the true labels; ``target`` (optional) the desired labels. Untargeted: success
    iff the prediction differs from ``y``. Targeted: success iff the prediction equals ``target``.
    """

    y: torch.Tensor
    target: torch.Tensor | None = None

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def labels(self) -> torch.Tensor:
        """The label each loss is written against: ``target`` if targeted, else ``y``."""
        return self.target if self.target is not None else self.y

    def is_success(self, logits: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(dim=1)
        return pred == self.target if self.target is not None else pred != self.y

    def __getitem__(self, idx) -> Goal:
        return Goal(self.y[idx], None if self.target is None else self.target[idx])

    def __len__(self) -> int:
        return self.y.shape[0]

"""Models that mask gradients in the classic ways (Athalye et al. 2018), for tests."""

from __future__ import annotations

import torch
from torch import nn


class ScaledLogits(nn.Module):
    """Logits × k: cross-entropy saturates and its gradients vanish (like distillation)."""

    def __init__(self, model: nn.Module, k: float = 1e4) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x) * self.k


class SoftmaxOutput(nn.Module):
    """Returns probabilities instead of logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


def quantize(x: torch.Tensor, levels: int = 16) -> torch.Tensor:
    return torch.round(x * (levels - 1)) / (levels - 1)


class QuantizedInput(nn.Module):
    """Input quantisation in front of the model: zero gradients almost everywhere."""

    def __init__(self, model: nn.Module, levels: int = 16) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(quantize(x, self.levels))


class RandomizedInput(nn.Module):
    """Adds fresh Gaussian noise to every input: predictions and gradients are random."""

    def __init__(self, model: nn.Module, sigma: float = 0.5) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))

"""Modules that sit around a classifier so attacks can work in input space.

Attacks work in *input space* (e.g. pixels in [0, 1]); any normalisation belongs to the model, as
a module such as :class:`Normalize`. :class:`EOT` averages a randomised model over draws;
:class:`BPDA` gives a non-differentiable transform a usable backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BPDA", "EOT", "Normalize"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer of a model.

    Putting normalisation inside the model lets every attack work in the natural input space
    (pixels in ``[0, 1]``), where ε and bounds have their usual meaning.

    >>> model = nn.Sequential(Normalize([0.1307], [0.3081]), my_cnn)
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel():
            raise ValueError(
                f"Normalize: mean has {mean_t.numel()} values but std has {std_t.numel()}"
            )
        if not torch.all(std_t > 0):
            raise ValueError(f"Normalize: std must be > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 2 else (1, -1)
        mean = self.mean.to(x.dtype).reshape(shape)
        std = self.std.to(x.dtype).reshape(shape)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class EOT(nn.Module):
    """Expectation over Transformation (Athalye et al. 2018) for a randomised model.

    ``EOT(model, samples=k)(x)`` runs ``model`` on ``k`` copies of the batch in one call and
    returns the mean logits, so a gradient attack on it follows the averaged gradient of the
    random draws instead of one noisy draw ("expectation over logits"). Attacks take this as an
    option (``PGD(..., eot_samples=k)``); wrapping the model by hand is equivalent.
    """

    def __init__(self, model: nn.Module, samples: int = 16) -> None:
        super().__init__()
        if int(samples) < 1:
            raise ValueError(f"EOT samples must be >= 1, got {samples}")
        self.model = model
        self.samples = int(samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = self.samples, x.shape[0]
        if k == 1:
            return self.model(x)
        out = self.model(x.repeat((k,) + (1,) * (x.dim() - 1)))
        return out.reshape(k, b, *out.shape[1:]).mean(0)


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018).

    Forward applies ``transform`` (e.g. bit-depth reduction, JPEG, quantisation — anything with
    zero or useless gradients); backward uses the gradient of ``approximation`` instead
    (identity by default, the usual choice for transforms with ``transform(x) ≈ x``)::

        defended = nn.Sequential(BPDA(quantize), classifier)   # attackable by any gradient attack

    The output value is exactly ``transform(x)``.
    """

    differentiable = True  # as seen by attacks after the wrapping

    def __init__(self, transform, approximation=None) -> None:
        super().__init__()
        self.transform = transform
        self.approximation = approximation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        approx = x if self.approximation is None else self.approximation(x)
        with torch.no_grad():
            exact = self.transform(x)
        return approx + (exact - approx).detach()

"""Model-side primitives: preprocessing inside the model, and a guard that attacks a model
without changing it.

Attacks work in *input space* (e.g. pixels in [0, 1]); any normalisation belongs to the model,
as a module such as :class:`Normalize`. :func:`attack_mode` puts a model in eval mode with its
parameters frozen for the duration of an attack and restores exactly what it found.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "BPDA",
    "EOT",
    "Normalize",
    "ProbabilityOutputWarning",
    "attack_mode",
    "check_logits",
    "model_device",
]


class ProbabilityOutputWarning(UserWarning):
    """The model seems to return probabilities (softmax output) instead of logits."""


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


def model_device(model: Any, device: Any = None) -> torch.device:
    """The device to run on: ``device`` if given, else where the model's weights live."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def attack_mode(model: nn.Module, *, warn: bool = True) -> Iterator[nn.Module]:
    """Run an attack on ``model`` in eval mode with frozen parameters, then restore it.

    - a model found in train mode is switched to eval mode (with a warning) and switched back;
    - every parameter's ``requires_grad`` flag is set to False for the duration (so no weight
      gradient is ever computed) and restored exactly, module by module;
    - parameters' ``.grad`` are never touched.
    """
    modes = [(m, m.training) for m in model.modules()]
    was_training = model.training
    if was_training and warn:
        warnings.warn(
            "model was in train mode; advex attacks it in eval mode and restores train mode "
            "afterwards (call model.eval() to silence this warning)",
            UserWarning,
            stacklevel=4,
        )
    params = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in params:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def check_logits(output: torch.Tensor, *, name: str = "model") -> None:
    """Validate a model's output on a batch: 2-D, finite; warn when it looks like probabilities.

    Losses such as cross-entropy and the C&W margin assume logits. A softmax output squashes
    gradients (a classic cause of gradient masking), so we warn rather than silently proceed.
    """
    if output.dim() != 2:
        raise ValueError(
            f"{name} must return logits of shape (batch, classes); got shape {tuple(output.shape)}"
        )
    if not torch.isfinite(output).all():
        raise ValueError(f"{name} returned NaN or inf logits")
    if output.shape[1] > 1 and output.shape[0] > 0:
        detached = output.detach()
        nonneg = bool((detached >= 0).all() and (detached <= 1).all())
        # exact one-hot rows are hard labels (a label-only black box), not a softmax
        onehot = bool(((detached == 0) | (detached == 1)).all())
        if (
            nonneg
            and not onehot
            and torch.allclose(detached.sum(1), torch.ones_like(detached[:, 0]), atol=1e-4)
        ):
            warnings.warn(
                f"{name} seems to return probabilities (outputs in [0, 1] summing to 1), not "
                "logits; gradient-based attacks are weakened by a softmax output (gradient "
                "masking). Remove the final softmax, or use a margin loss (loss='margin').",
                ProbabilityOutputWarning,
                stacklevel=4,
            )


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

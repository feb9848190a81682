"""Guards around a model under attack: :func:`attack_mode` puts a model in eval mode with its
parameters frozen for the duration of an attack and restores exactly what it found;
:func:`check_logits` validates what a model returns; :func:`model_device` says where it runs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "ProbabilityOutputWarning",
    "attack_mode",
    "check_logits",
    "model_device",
]


class ProbabilityOutputWarning(UserWarning):
    """The model seems to return probabilities (softmax output) instead of logits."""


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

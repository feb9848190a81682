"""Memory layout of a model for speed: a private channels-last copy for convolutions on CPU.

Channels-last (NHWC) convolutions take about two thirds of the CPU time of the default layout
for the small convolutional models here, forward and backward alike. The caller's model is
never converted: the fast layout is applied to a deep copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def fast_layout(
    model: Any, channels_last: bool | None = None, device: torch.device | str = "cpu"
) -> tuple[Any, str]:
    """A channels-last copy of ``model`` when asked (``channels_last=True``), or, with
    ``None``, when it is an ``nn.Module`` with a ``Conv2d`` on a CPU ``device``; else the model
    itself. Returns ``(model_to_run, layout)``, ``layout`` being ``"channels_last"`` or
    ``"default"`` (float rounding differs between the two: part of a resumable run's
    fingerprint). A model that cannot be deep-copied is returned as it is."""
    if channels_last is False or not isinstance(model, nn.Module):
        return model, "default"
    if channels_last is None:
        if torch.device(device).type != "cpu":
            return model, "default"
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            return model, "default"
    try:
        twin = copy.deepcopy(model)
    except Exception:  # an uncopyable model: run it as it is
        return model, "default"
    return twin.to(memory_format=torch.channels_last), "channels_last"


def as_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` in the memory format of ``layout`` (4-D tensors only; others as they are)."""
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x

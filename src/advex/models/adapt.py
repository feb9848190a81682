"""Adapting a defended model for attack: read the transform markers, wrap what has no useful
gradient in BPDA, and report what needs EOT.

Marker convention: a module declares ``differentiable = False`` when its autograd gradient is zero
or useless (rounding, quantisation, JPEG), and ``stochastic = True`` when two forward passes on
the same input differ. Modules without the attributes count as differentiable and deterministic.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .wrappers import BPDA

__all__ = ["AdaptedModel", "adapt_for_attack", "is_stochastic", "non_differentiable"]


# --------------------------------------------------------------------------------------------


def _is_marked_nondiff(m: nn.Module) -> bool:
    return getattr(m, "differentiable", True) is False


def _walk(model: nn.Module, prefix: str = ""):
    """Yield (name, module) like ``named_modules``, but not inside BPDA wrappers."""
    yield prefix, model
    if isinstance(model, BPDA):
        return
    for name, child in model._modules.items():
        if child is not None:
            yield from _walk(child, f"{prefix}.{name}" if prefix else name)


def is_stochastic(model: nn.Module) -> bool:
    """Whether any module of ``model`` declares ``stochastic = True``."""
    return any(getattr(m, "stochastic", False) is True for _, m in _walk(model))


def non_differentiable(model: nn.Module) -> list[str]:
    """Qualified names of the modules declaring ``differentiable = False`` (not already
    wrapped in BPDA); ``""`` is the model itself."""
    return [name for name, m in _walk(model) if _is_marked_nondiff(m)]


class AdaptedModel(nn.Module):
    """An attackable view of a defended model (built by :func:`adapt_for_attack`).

    ``model`` is a new module tree that shares every parameter, buffer and unchanged submodule
    with the original; only the containers on the path to a non-differentiable transform are
    shallow copies, and those transforms are wrapped in :class:`advex.BPDA`. Attributes:
    ``wrapped`` (names of the BPDA-wrapped modules), ``stochastic`` (whether the model is
    random), ``eot_samples`` (the EOT draws an attack should use: 1 when deterministic).
    """

    def __init__(
        self, model: nn.Module, wrapped: list[str], stochastic: bool, eot_samples: int
    ) -> None:
        super().__init__()
        self.model = model
        self.wrapped = list(wrapped)
        self.stochastic = bool(stochastic)
        self.eot_samples = int(eot_samples)
        self.training = bool(getattr(model, "training", False))  # mirror the model's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"wrapped={self.wrapped}, stochastic={self.stochastic}"


def _rebuild(m: nn.Module, prefix: str, wrapped: list[str], memo: dict[int, nn.Module]):
    if id(m) in memo:
        return memo[id(m)]
    if isinstance(m, BPDA):
        new = m
    elif _is_marked_nondiff(m):
        wrapped.append(prefix)
        new = BPDA(m, getattr(m, "approximation", None))
    else:
        changed = {}
        for name, child in m._modules.items():
            if child is None:
                continue
            sub = _rebuild(child, f"{prefix}.{name}" if prefix else name, wrapped, memo)
            if sub is not child:
                changed[name] = sub
        if changed:
            new = copy.copy(m)  # shares parameters, buffers and hooks; own child table
            new._modules = type(m._modules)(m._modules)
            new._modules.update(changed)
        else:
            new = m
    memo[id(m)] = new
    return new


def adapt_for_attack(model: nn.Module, eot_samples: int = 16) -> AdaptedModel:
    """Make a defended model attackable by gradient attacks, without changing it.

    Every module declaring ``differentiable = False`` (see the module docstring) is wrapped in
    :class:`advex.BPDA` in a new module tree that shares all parameters with ``model`` (the
    model itself, its modules and its tensors are never modified). When any module declares
    ``stochastic = True`` the view's ``eot_samples`` is ``eot_samples`` (else 1): set it on the
    attack (``attack.eot_samples = view.eot_samples``) to attack the expectation over draws.

    Transforms must be registered submodules to be found (an ``nn.Module`` attribute, or in an
    ``nn.Sequential``/``nn.ModuleList``); a transform called as a plain function is not seen.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adapt_for_attack: model must be an nn.Module, got {type(model).__name__}")
    if int(eot_samples) < 1:
        raise ValueError(f"adapt_for_attack: eot_samples must be >= 1, got {eot_samples!r}")
    if isinstance(model, AdaptedModel):  # adapting twice: start from the inner view
        model = model.model
    wrapped: list[str] = []
    view = _rebuild(model, "", wrapped, {})
    stochastic = is_stochastic(model)
    return AdaptedModel(view, wrapped, stochastic, int(eot_samples) if stochastic else 1)

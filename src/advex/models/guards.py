"""Guards around a model under attack: :func:`attack_mode` puts a model in eval mode with its
parameters frozen for the duration of an attack and restores exactly what it found;
:func:`check_logits` validates what a model returns; :func:`model_device` says where it runs.

The model-side half of advex's one validation (the data half is :mod:`advex.core.validate`);
every entry point (attacks, :func:`~advex.evaluate.robust_accuracy`,
:func:`~advex.evaluate.robustness_curve`, :func:`~advex.evaluate.evaluate`) goes through it:

- the clean forward pass runs under :func:`model_errors`: a model that rejects the input (wrong
  rank or layout, e.g. ``(N, 28, 28)`` or flattened images for a conv net) raises a
  ``ValueError`` naming the input's shape, a likely fix, and the model's own message;
- :func:`check_logits`: the output must be a ``(batch, classes)`` tensor with ``classes >= 2``
  and finite values; a tuple, list or dict output raises a ``TypeError`` that points to
  :class:`~advex.models.SelectOutput`;
- :func:`match_input_dtype`: inputs whose floating dtype differs from the model's (float64
  data with a float32 model, float32 data with a float64 model) are cast to the model's dtype
  at every model call by :class:`~advex.models.CastInput` (its logits cast to the data's
  dtype), with an :class:`InputDtypeWarning`; the attack itself runs in the caller's dtype, so
  ``x_adv`` comes back in the dtype of ``x``. Half-precision inputs (float16 / bfloat16) with
  a float32 / float64 model (:func:`attack_dtype`) are attacked in the model's dtype instead
  and ``x_adv`` is rounded back toward ``x`` (:func:`round_toward`: never past the budget),
  with ``success`` re-predicted on the rounded ``x_adv``;
- :func:`require_graph`: a forward pass that should carry a gradient graph but does not (a model
  computing under ``torch.no_grad()``, detaching its output or going through numpy) raises a
  ``TypeError`` at the first gradient step of a gradient attack, naming the cause.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..core.validate import check_num_classes
from ..threats.lp import round_toward  # the one rounding rule, kept importable from here
from .wrappers import CastInput

__all__ = [
    "InputDtypeWarning",
    "ProbabilityOutputWarning",
    "attack_dtype",
    "attack_mode",
    "check_logits",
    "checked_logits",
    "match_input_dtype",
    "model_device",
    "model_dtype",
    "model_errors",
    "require_graph",
    "round_toward",
]


class ProbabilityOutputWarning(UserWarning):
    """The model seems to return probabilities (softmax output) instead of logits."""


class InputDtypeWarning(UserWarning):
    """The inputs' floating dtype differs from the model's: advex casts them at each call."""


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


def model_dtype(model: Any) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (or buffer); None if it has
    none (a plain callable, a black box around a function)."""
    if isinstance(model, nn.Module):
        for t in model.parameters():
            if t.is_floating_point():
                return t.dtype
        for t in model.buffers():
            if t.is_floating_point():
                return t.dtype
    return None


def match_input_dtype(model: Any, x: torch.Tensor, *, warn: bool = True) -> Any:
    """``model``, or ``CastInput(model, dtype)`` when ``x``'s floating dtype is not the model's.

    The attack keeps working in ``x``'s dtype (so ``x_adv`` is returned in the caller's dtype);
    only the model sees its own dtype. Warns with :class:`InputDtypeWarning` when it casts.
    """
    if isinstance(model, CastInput) or not x.is_floating_point():
        return model
    dtype = model_dtype(model)
    if dtype is None or dtype == x.dtype:
        return model
    if warn:
        warnings.warn(
            f"x is {_dtype_name(x.dtype)} but the model's weights are {_dtype_name(dtype)}: "
            f"advex casts the inputs to {_dtype_name(dtype)} at every model call and attacks "
            f"in {_dtype_name(x.dtype)} (x_adv keeps the dtype of x). Pass "
            f"x.to(torch.{_dtype_name(dtype)}) to silence this warning.",
            InputDtypeWarning,
            stacklevel=3,
        )
    return CastInput(model, dtype)


_HALF = (torch.float16, torch.bfloat16)


def attack_dtype(model: Any, x: torch.Tensor) -> torch.dtype | None:
    """The dtype to attack half-precision inputs in: the model's (float32 / float64) when ``x``
    is float16 / bfloat16 and the model is wider, else None (attack in ``x``'s dtype)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _HALF:
        return None
    dtype = model_dtype(model)
    return dtype if dtype in (torch.float32, torch.float64) else None


def warn_half_input(x_dtype: torch.dtype, dtype: torch.dtype) -> None:
    warnings.warn(
        f"x is {_dtype_name(x_dtype)} but the model's weights are {_dtype_name(dtype)}: advex "
        f"attacks in {_dtype_name(dtype)} and rounds x_adv back to {_dtype_name(x_dtype)} "
        "toward x (never past the budget), with success re-predicted on the rounded x_adv. "
        f"Pass x.to(torch.{_dtype_name(dtype)}) to silence this warning.",
        InputDtypeWarning,
        stacklevel=4,
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _layout_hint(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return (
            "x is flattened (batch, features): a convolutional model needs "
            "(batch, channels, height, width), e.g. x.reshape(-1, 1, 28, 28) for 28×28 "
            "grayscale images"
        )
    if len(shape) == 3:
        return (
            "x has no channel axis (batch, height, width): a convolutional model needs "
            "(batch, channels, height, width), e.g. x.unsqueeze(1) for grayscale images"
        )
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return (
            "x looks channels-last (batch, height, width, channels): PyTorch models take "
            "(batch, channels, height, width), e.g. x.permute(0, 3, 1, 2)"
        )
    return "reshape x to the layout the model was trained on (the batch axis first)"


@contextlib.contextmanager
def model_errors(x: torch.Tensor, *, name: str = "model") -> Iterator[None]:
    """Turn a model's ``RuntimeError`` on ``x`` (wrong rank, layout or size for its layers)
    into a ``ValueError`` that names the input's shape, suggests a layout, and quotes the
    model's own message. Out-of-memory errors pass through unchanged."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        shape = tuple(x.shape)
        said = str(err)
        if any(w in said for w in ("dtype", "Double", "Half", "BFloat16", "type (")):
            hint = (
                f"x is {_dtype_name(x.dtype)}, which the model does not take: cast x to the "
                "dtype of the model's weights"
            )
        else:
            hint = _layout_hint(shape)
        raise ValueError(
            f"{name} rejected x of shape {shape} (dtype {_dtype_name(x.dtype)}): "
            f"{hint}. The model said: {said}"
        ) from err


def require_graph(model: Callable, *, name: str = "model") -> Callable:
    """``model`` wrapped so that a forward pass on an input that requires grad, with grad mode
    on, raises a clear ``TypeError`` when the output carries no gradient graph.

    Gradient attacks call the model this way before every backward pass, so a model that
    computes under ``torch.no_grad()``, detaches its output or goes through numpy fails at the
    first gradient step of the first batch, not with an autograd error deep inside.
    """

    def forward(x: torch.Tensor) -> Any:
        out = model(x)
        if (
            torch.is_grad_enabled()
            and isinstance(x, torch.Tensor)
            and x.requires_grad
            and isinstance(out, torch.Tensor)
            and not out.requires_grad
        ):
            raise TypeError(
                f"{name}'s output carries no gradient with respect to its input (the forward "
                "pass runs under torch.no_grad(), detaches its output, or goes through numpy), "
                "so a gradient attack cannot run on it. Remove the no_grad/detach from "
                "forward; wrap a non-differentiable step in advex.models.BPDA; or, for a model "
                "you can only query, use a black-box attack (advex.attacks.Square)"
            )
        return out

    forward.__wrapped__ = model  # type: ignore[attr-defined]
    return forward


def checked_logits(model: Callable, x: torch.Tensor, *, name: str | None = None) -> torch.Tensor:
    """The clean forward pass of an entry point: ``model(x)`` without gradient, a model error
    explained by :func:`model_errors`, the output checked by :func:`check_logits`."""
    name = type(model).__name__ if name is None else name
    with model_errors(x, name=name), torch.no_grad():
        out = model(x)
    check_logits(out, name=name, batch_size=int(x.shape[0]))
    return out


def check_logits(output: Any, *, name: str = "model", batch_size: int | None = None) -> None:
    """Validate a model's output on a batch: a ``(batch, classes)`` tensor (``batch_size`` rows
    when given) with at least 2 classes, finite; warn when it looks like probabilities.

    Losses such as cross-entropy and the C&W margin assume logits. A softmax output squashes
    gradients (a classic cause of gradient masking), so we warn rather than silently proceed.
    """
    if not isinstance(output, torch.Tensor):
        kind = type(output).__name__
        if isinstance(output, dict):
            keys = ", ".join(repr(k) for k in list(output)[:6])
            pick = f"advex.models.SelectOutput(model, {next(iter(output), 'key')!r})"
            what = f"a {kind} (keys {keys})"
        elif isinstance(output, tuple | list):
            pick = "advex.models.SelectOutput(model, 0)"
            what = f"a {kind} of {len(output)} items"
        else:
            pick = "advex.models.SelectOutput(model, key)"
            what = f"a {kind}"
        raise TypeError(
            f"{name} returned {what}, not a tensor of logits: advex needs model(x) to return "
            f"a (batch, classes) tensor. Wrap the model so it does, e.g. {pick} picks that "
            "element, key or attribute of the output"
        )
    if output.dim() != 2:
        hint = ""
        if output.dim() == 1:
            hint = (
                " (one score per sample? return one logit per class: for a binary classifier "
                "with logit z, torch.stack([-z, z], dim=1))"
            )
        raise ValueError(
            f"{name} must return logits of shape (batch, classes); got shape "
            f"{tuple(output.shape)}{hint}"
        )
    if batch_size is not None and output.shape[0] != batch_size:
        raise ValueError(f"{name} returned {output.shape[0]} rows for a batch of {batch_size}")
    check_num_classes(int(output.shape[1]), name=name)
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

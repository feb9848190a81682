"""One validation for every entry point: inputs, labels, targets, the model's class count.

Every public entry point that takes a batch — each attack's prologue
(:meth:`advex.attacks.Attack.__call__`), :func:`advex.evaluate.robust_accuracy`,
:func:`advex.evaluate.robustness_curve`, :func:`advex.evaluate.evaluate` and the data batching
behind them — calls these functions, so a mistake gets the same message wherever it is made:

- :func:`check_inputs`: ``x`` is a finite floating tensor with a batch dimension (and inside
  the threat model's bounds when one is given);
- :func:`check_labels`: ``y`` is a 1-D integer tensor with one label per sample;
- :func:`check_classes`: the model has at least two outputs, every label is one of them, and a
  ``target`` is valid and differs from the label (normalised to a ``(B,)`` tensor);
- :func:`check_batch`: ``check_inputs`` + ``check_labels`` (+ ``check_classes`` once the number
  of classes is known), the one-call form.

The checks need no model: the number of classes is passed in (it is the width of the logits of
the clean forward pass), which is why they live in ``core`` below the model seam. Errors are
``TypeError`` for a wrong kind (not a tensor, wrong dtype) and ``ValueError`` for a wrong value
(NaN, a label out of range, a wrong shape).

>>> y, _ = check_batch(x, y, threat)                     # before the clean forward pass
>>> target = check_classes(logits.shape[1], y, target)   # after it
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch

from ..threats import Threat, ThreatModel
from ..threats.base import check_float_batch

__all__ = [
    "check_batch",
    "check_classes",
    "check_inputs",
    "check_label_range",
    "check_labels",
    "check_num_classes",
    "check_positive_int",
    "check_target",
    "class_labels",
]


def check_inputs(x: Any, threat: ThreatModel | None = None, *, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a non-empty, finite, floating ``(batch, ...)`` tensor.

    With ``threat``, :meth:`ThreatModel.check_inputs` also checks that ``x`` lies inside the
    threat model's bounds. ``x`` may require grad: it is only read (detached).
    """
    if threat is not None and isinstance(x, torch.Tensor):
        threat.check_inputs(x.detach(), name=name)
    else:
        check_float_batch(x, name=name)


def check_labels(y: Any, x: torch.Tensor, name: str = "y") -> torch.Tensor:
    """``y`` as a ``(B,)`` long tensor on ``x``'s device; raise unless it holds one integer
    label per sample of ``x``."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must have shape ({x.shape[0]},) to match x's batch, got {tuple(y.shape)}"
        )
    return y.detach().to(device=x.device, dtype=torch.long)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int``; raise ``ValueError`` unless it is an integer >= 1 (``2.0`` is
    accepted, ``True`` and ``2.5`` are not). For counts such as ``epochs`` or ``batch_size``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or int(value) != value
        or int(value) < 1
    ):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def class_labels(y: torch.Tensor, n: int, what: str = "data") -> torch.Tensor:
    """``y`` as ``int64`` class labels; raise ``ValueError`` unless it is 1-D with ``n`` entries
    (one per sample of the ``x`` it belongs to). ``what`` names the data in the message."""
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{what}: y must have shape ({n},), got {tuple(y.shape)}")
    return y.long()


def check_num_classes(num_classes: int, *, name: str = "model") -> None:
    """Raise unless a classifier's output has at least two classes."""
    if num_classes < 2:
        raise ValueError(
            f"{name} returns {num_classes} output per sample, but advex attacks classifiers "
            "with one logit per class (at least 2). For a binary classifier with a single "
            "logit z, return two: torch.cat([-z, z], dim=1) (or [zeros, z])"
        )


def check_label_range(labels: torch.Tensor, num_classes: int, name: str = "y") -> None:
    """Raise unless every label is a class of a ``num_classes``-way classifier."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"{name} has label {int(bad[0])} but the model outputs {num_classes} classes "
            f"(valid labels are 0..{num_classes - 1})"
        )


def check_target(target: Any, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Normalise ``target`` (None, an int for every sample, or a (B,) tensor) and validate it.

    A bool is refused (``target=True`` is not class 1), as is a target equal to the label.
    """
    if target is None:
        return None
    if isinstance(target, bool) or (
        isinstance(target, torch.Tensor) and target.dtype == torch.bool
    ):
        raise TypeError(
            "target must be a class index (int) or a tensor of class indices, got a bool: "
            "pass the target class, e.g. target=3, or target=None for an untargeted attack"
        )
    if isinstance(target, numbers.Integral) or (
        isinstance(target, torch.Tensor) and target.dim() == 0
    ):
        target = torch.full_like(y, int(target))
    target = check_labels(target, y[:, None], name="target")
    check_label_range(target, num_classes, "target")
    same = target == y
    if bool(same.any()):
        idx = same.nonzero().squeeze(1)[:10].tolist()
        raise ValueError(
            f"target equals the true label for {int(same.sum())} sample(s) (indices {idx}...); "
            "a targeted attack needs a different class: drop those samples or choose other targets"
        )
    return target


def check_classes(
    num_classes: int, y: torch.Tensor, target: Any = None, *, name: str = "model"
) -> torch.Tensor | None:
    """After the clean forward pass: the model has ≥ 2 classes, every label is one of them,
    and ``target`` is valid (returned normalised, see :func:`check_target`)."""
    check_num_classes(num_classes, name=name)
    check_label_range(y, num_classes, "y")
    return check_target(target, y, num_classes)


def check_batch(
    x: Any,
    y: Any,
    threat: ThreatModel | Iterable[ThreatModel] | None = None,
    *,
    num_classes: int | None = None,
    target: Any = None,
    name: str = "x",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate one batch; returns ``(y, target)`` normalised (long tensors on ``x``'s device).

    ``x`` is checked against every threat model given (finite, floating, inside its bounds),
    ``y`` against ``x``; when ``num_classes`` (the model's output width) is known, the labels
    and ``target`` are checked against it too (``target`` is returned as given otherwise).
    """
    threats = [threat] if threat is None or isinstance(threat, Threat) else list(threat)
    seen: set[tuple[float, float]] = set()
    for t in threats or [None]:
        # an Lp ball's input checks depend on its bounds only; other threats check themselves
        key = t.bounds if isinstance(t, ThreatModel) else id(t)
        if t is not None and key in seen:
            continue
        check_inputs(x, t, name=name)
        if t is not None:
            seen.add(key)
    y = check_labels(y, x)
    if num_classes is not None:
        target = check_classes(num_classes, y, target)
    return y, target

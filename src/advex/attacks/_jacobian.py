"""Batched Jacobians of the logits w.r.t. the input (shared by DeepFool, FAB and JSMA).

One forward pass records the graph for the whole batch; then ``K`` vector-Jacobian products give,
for every sample at once, the gradients of ``K`` combinations of its logits (e.g. ``K`` classes,
or "the target" and "all the other classes"). Samples never loop in Python.

Two ways to run the ``K`` products are provided:

- ``"loop"``: ``K`` backward passes through the one recorded graph (each one batched over the
  samples). On CPU this is the fastest: on the zoo's MNIST CNN, 100 digits, 10 classes, one
  thread, it takes ~0.3 s against ~0.7 s for the vmapped version and ~1.7 s for replicating the
  batch 10× and doing one backward;
- ``"vmap"``: one call of :func:`torch.autograd.grad` with ``is_grads_batched=True`` (the ``K``
  cotangents are vmapped), which suits accelerators.

``"auto"`` (default) picks ``"loop"`` on CPU and ``"vmap"`` elsewhere.

Accounting: a Jacobian of ``K`` logit combinations counts as ``K`` gradient evaluations (and ``K``
queries) per sample, what ``K`` separate :meth:`ModelCaller.value_and_grad` calls would count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import ModelCaller

__all__ = ["logit_vjps", "jacobian", "difference_jacobian", "one_hot_cotangents"]

_METHODS = ("auto", "loop", "vmap")


def one_hot_cotangents(classes: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) class indices → (B, K, C) one-hot cotangents."""
    out = torch.zeros(*classes.shape, num_classes, dtype=dtype, device=classes.device)
    return out.scatter_(2, classes.unsqueeze(2), 1.0)


def _count(caller: ModelCaller, idx: torch.Tensor | None, k: int) -> None:
    if idx is None:
        caller.queries += k
        caller.gradients += k
    else:
        add = torch.full_like(idx, k)
        caller.queries.index_add_(0, idx, add)
        caller.gradients.index_add_(0, idx, add)


def logit_vjps(
    caller: ModelCaller,
    x: torch.Tensor,
    cotangents: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    idx: torch.Tensor | None = None,
    *,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and ``K`` vector-Jacobian products per sample, in one forward pass.

    Args:
        caller: the attack's :class:`~advex.attacks.base.ModelCaller` (counts the passes).
        x: input batch ``(B, ...)``.
        cotangents: ``(B, K, C)`` weights of the logits, or a function of the (detached) logits
            returning them (e.g. to pick the current top class after the forward pass).
        idx: indices of these rows in the attacked batch, for per-sample counting.
        method: ``"auto"``, ``"loop"`` or ``"vmap"`` (see the module docstring).

    Returns:
        ``(logits (B, C), grads (B, K, ...))`` with ``grads[i, k] = ∇_x <cotangents[i, k],
        logits_i>``, both detached.
    """
    if method not in _METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; expected one of {_METHODS}")
    x_leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = caller.model(x_leaf)
    cot = cotangents(logits.detach()) if callable(cotangents) else cotangents
    if cot.dim() != 3 or cot.shape[0] != x.shape[0] or cot.shape[2] != logits.shape[1]:
        raise ValueError(
            f"cotangents must have shape (B, K, C) = ({x.shape[0]}, K, {logits.shape[1]}), "
            f"got {tuple(cot.shape)}"
        )
    cot = cot.to(logits.dtype)
    k = cot.shape[1]
    _count(caller, idx, k)
    if method == "auto":
        method = "loop" if x.device.type == "cpu" else "vmap"
    if method == "loop":
        grads = []
        for j in range(k):
            (g,) = torch.autograd.grad(logits, x_leaf, cot[:, j], retain_graph=j < k - 1)
            grads.append(g)
        jac = torch.stack(grads, dim=1)
    else:
        (g,) = torch.autograd.grad(
            logits, x_leaf, cot.transpose(0, 1).contiguous(), is_grads_batched=True
        )
        jac = g.transpose(0, 1)
    return logits.detach(), jac


def jacobian(
    caller: ModelCaller,
    x: torch.Tensor,
    classes: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    idx: torch.Tensor | None = None,
    *,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the gradients of ``K`` chosen logits per sample: ``grads[i, k] = ∇_x
    logits_i[classes[i, k]]``. ``classes`` is a ``(B, K)`` LongTensor or a function of the
    logits returning one."""

    def cot(logits: torch.Tensor) -> torch.Tensor:
        c = classes(logits) if callable(classes) else classes
        return one_hot_cotangents(c.to(logits.device), logits.shape[1], logits.dtype)

    return logit_vjps(caller, x, cot, idx, method=method)


def difference_jacobian(
    caller: ModelCaller,
    x: torch.Tensor,
    pairs: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    idx: torch.Tensor | None = None,
    *,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the gradients of ``K`` logit differences per sample: ``grads[i, k] =
    ∇_x (logits_i[pairs[i, k, 0]] − logits_i[pairs[i, k, 1]])``.

    DeepFool and FAB only use differences ``∇z_k − ∇z_y``: asking for them directly (cotangent
    ``e_k − e_y``) costs ``K`` products where "all classes, then subtract" costs ``K + 1``.
    ``pairs`` is a ``(B, K, 2)`` LongTensor or a function of the logits returning one.
    """

    def cot(logits: torch.Tensor) -> torch.Tensor:
        pr = pairs(logits) if callable(pairs) else pairs
        pr = pr.to(logits.device)
        c = logits.shape[1]
        return one_hot_cotangents(pr[..., 0], c, logits.dtype) - one_hot_cotangents(
            pr[..., 1], c, logits.dtype
        )

    return logit_vjps(caller, x, cot, idx, method=method)

"""Exact Euclidean projections onto a norm ball (or a hyperplane) intersected with the box.

:func:`project_l1_box` is the projection of l1-APGD (Croce & Hein 2021, "Mind the box");
:func:`project_hyperplane_box` the minimal-norm step onto a linearised decision boundary inside
the box, the heart of FAB (Croce & Hein 2020).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .box import Box
from .norms import Norm

__all__ = ["project_l1_box", "project_hyperplane_box"]

_TINY = 1e-12


def project_l1_box(
    z: torch.Tensor, x: torch.Tensor, eps: float, bounds: Any = (0.0, 1.0)
) -> torch.Tensor:
    """Exact Euclidean projection of ``z`` onto ``{x + δ : ‖δ‖₁ ≤ ε} ∩ [low, high]^d``.

    The solution is ``δ_i = sign(v_i) · min(max(|v_i| − λ, 0), c_i)`` (soft-thresholding, then
    clipping to the room ``c_i`` the box leaves in direction ``sign(v_i)``), with ``v = z − x``
    and the smallest ``λ ≥ 0`` giving ``‖δ‖₁ ≤ ε``. ``‖δ(λ)‖₁`` is piecewise linear in λ with
    breakpoints ``|v_i| − c_i`` and ``|v_i|``; sorting them finds λ exactly, per sample.

    ``bounds`` is a ``(low, high)`` pair (numbers or per-feature tensors) or a :class:`Box`.
    """
    lo, hi = Box.of(bounds).flat_bounds(x)
    b = x.shape[0]
    v = (z - x).reshape(b, -1)
    x0 = x.reshape(b, -1)
    a = v.abs()
    cap = torch.where(v > 0, hi - x0, x0 - lo).clamp_min(0)
    total0 = torch.minimum(a, cap).sum(1)
    need = total0 > eps
    lam = torch.zeros(b, dtype=v.dtype, device=v.device)
    if bool(need.any()):
        an, cn = a[need], cap[need]
        points = torch.cat([(an - cn).clamp_min(0), an], 1)
        weights = torch.cat([torch.ones_like(an), -torch.ones_like(an)], 1)
        points, order = points.sort(1)
        weights = weights.gather(1, order)
        active = weights.cumsum(1)[:, :-1]  # coordinates in the linear part, per interval
        drop = (active * points.diff(dim=1)).cumsum(1)
        value = total0[need, None] - torch.cat([torch.zeros_like(drop[:, :1]), drop], 1)
        j = (value <= eps).to(torch.int8).argmax(1).clamp_min(1)  # first point at or below ε
        p_prev = points.gather(1, (j - 1)[:, None]).squeeze(1)
        v_prev = value.gather(1, (j - 1)[:, None]).squeeze(1)
        slope = active.gather(1, (j - 1)[:, None]).squeeze(1).clamp_min(1)
        lam[need] = p_prev + (v_prev - eps) / slope
    delta = v.sign() * torch.minimum((a - lam[:, None]).clamp_min(0), cap)
    # guard against rounding: scaling towards 0 keeps δ inside the box
    n = delta.abs().sum(1)
    delta = delta * torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))[:, None]
    return (x0 + delta).clamp(lo, hi).reshape(x.shape)


def _rev_cumsum(t: torch.Tensor) -> torch.Tensor:
    return t.flip(1).cumsum(1).flip(1)


def project_hyperplane_box(
    p: torch.Tensor,
    w: torch.Tensor,
    rhs: torch.Tensor,
    bounds: Any,
    norm: str | Norm,
) -> torch.Tensor:
    """Minimal-norm ``δ`` with ``<w, δ> = rhs`` and ``p + δ`` inside the box, per row.

    ``p`` and ``w`` are ``(B, d)``, ``rhs`` is ``(B,)``; ``bounds`` is a ``(low, high)`` pair
    of numbers or of tensors broadcastable to ``(B, d)`` (flattened per-feature bounds);
    ``norm`` is ``"linf"``, ``"l2"``, ``"l1"`` or a :class:`Norm`. After flipping ``w`` so
    that ``rhs ≥ 0``, every coordinate moves in the direction of ``sign(w_i)`` by at most its
    room to the bound:

    - L2 and L∞: ``δ_i = sign(w_i) · min(λ a_i, room_i)`` with ``a = |w|`` (L2, the KKT
      conditions) or ``a = 1`` (L∞, a common level); ``<w, δ>`` is piecewise linear and
      increasing in ``λ``, so ``λ`` is found exactly from the sorted breakpoints
      ``room_i / a_i`` and cumulative sums;
    - L1: coordinates are filled greedily in decreasing ``|w_i|`` (the best ratio of progress
      to L1 cost) until ``rhs`` is reached; the last one is filled partially.

    When the hyperplane does not meet the box, the returned ``δ`` pushes every useful coordinate
    to its bound (the box point closest to the hyperplane).
    """
    lo, hi = bounds
    norm = norm.name if isinstance(norm, Norm) else norm
    flip = torch.where(rhs < 0, -1.0, 1.0).to(w.dtype)
    wp = w * flip[:, None]
    r = rhs.abs()
    direction = wp.sign()
    aw = wp.abs()
    room = torch.where(wp > 0, hi - p, p - lo).clamp_min(0.0)
    room = torch.where(aw > 0, room, torch.zeros_like(room))
    cap = aw * room  # progress of a coordinate pushed to its bound
    feasible = cap.sum(1) >= r
    if norm == "l1":
        order = aw.argsort(dim=1, descending=True)
        cap_s = cap.gather(1, order)
        filled = cap_s.cumsum(1)
        k = (filled < r[:, None]).sum(1).clamp(max=p.shape[1] - 1)  # first index reaching r
        before = filled.gather(1, (k - 1).clamp_min(0)[:, None]).squeeze(1)
        before = torch.where(k > 0, before, torch.zeros_like(before))
        pos = torch.arange(p.shape[1], device=p.device)[None, :]
        aw_k = aw.gather(1, order.gather(1, k[:, None])).squeeze(1)
        part = ((r - before) / aw_k.clamp_min(_TINY)).clamp_min(0.0)
        room_s = room.gather(1, order)
        amount_s = torch.where(pos < k[:, None], room_s, torch.zeros_like(room_s))
        amount_s = torch.where(pos == k[:, None], torch.minimum(part[:, None], room_s), amount_s)
        amount = torch.empty_like(amount_s).scatter_(1, order, amount_s)
    elif norm in ("l2", "linf"):
        a = aw if norm == "l2" else (aw > 0).to(aw.dtype)
        lam = torch.where(a > 0, room / a.clamp_min(_TINY), torch.full_like(room, math.inf))
        order = lam.argsort(dim=1)
        lam_s = lam.gather(1, order)
        cap_s = cap.gather(1, order)
        slope_s = (aw * a).gather(1, order)
        saturated = cap_s.cumsum(1)  # progress of the coordinates saturated at breakpoint j
        rest = _rev_cumsum(slope_s) - slope_s  # slope of the coordinates not yet saturated
        value = saturated + torch.where(rest > 0, lam_s * rest, torch.zeros_like(rest))
        k = (value < r[:, None]).sum(1).clamp(max=p.shape[1] - 1)
        km1 = (k - 1).clamp_min(0)[:, None]
        sat_prev = torch.where(k > 0, saturated.gather(1, km1).squeeze(1), torch.zeros_like(r))
        total = slope_s.sum(1)
        rest_prev = torch.where(k > 0, rest.gather(1, km1).squeeze(1), total)
        level = ((r - sat_prev) / rest_prev.clamp_min(_TINY)).clamp_min(0.0)
        amount = torch.minimum(level[:, None] * a, room)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected 'linf', 'l2' or 'l1'")
    amount = torch.where(feasible[:, None], amount, room)
    return direction * amount

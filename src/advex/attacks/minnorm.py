"""The minimum-norm optimisation toolkit shared by C&W, EAD and L-BFGS.

These attacks search, per sample, the smallest perturbation that reaches the goal: they minimise
``distance + c · loss`` for a constant ``c`` found by a per-sample binary search, and keep the
smallest successful point ever seen. What they share lives here, public, so that a new
minimum-norm attack is written from the same pieces:

- :func:`min_norm_threat`: the threat of a minimum-norm attack (a norm, bounds, a mask; no ε);
- :func:`search_update`, :data:`UNBOUNDED`, :func:`warn_never_adversarial`: Carlini & Wagner's
  binary search over ``c`` and its report of points never solved;
- :class:`Plateau`: abort-early of one sample's optimisation once its loss stops decreasing;
- :class:`RowAdam`: Adam over a batch of independent rows (each with its own step count);
- :func:`confident_success`, :func:`per_sample`, :func:`flat`: small batch helpers.

>>> const = torch.full((n,), 1e-3); lower = torch.zeros(n); upper = torch.full((n,), UNBOUNDED)
>>> search_update(const, lower, upper, succeeded)   # after each round, in place
"""

from __future__ import annotations

import math
import warnings

import torch

from ..core.goals import Goal
from ..core.losses import margin
from ..threats import ThreatModel
from .base import make_threat

__all__ = [
    "CONST_GROWTH",
    "Plateau",
    "RowAdam",
    "UNBOUNDED",
    "confident_success",
    "flat",
    "min_norm_threat",
    "per_sample",
    "search_update",
    "warn_never_adversarial",
]

#: the upper bound on ``c`` of a sample never solved yet (Carlini's 1e10); bounds below
#: ``1e9`` are real
UNBOUNDED = 1e10
#: the factor on ``c`` after a failed round while a sample has never succeeded
CONST_GROWTH = 10.0


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(B,)`` to broadcast against a batch like ``like``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def flat(t: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` → ``(B, features)``."""
    return t.reshape(t.shape[0], -1)


def confident_success(logits: torch.Tensor, goal: Goal, kappa: float) -> torch.Tensor:
    """Success with confidence: the goal is met and the C&W margin is at least ``kappa``."""
    ok = goal.is_success(logits)
    if kappa > 0:
        ok &= margin(logits, goal) >= kappa
    return ok


def search_update(
    const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, succeeded: torch.Tensor
) -> None:
    """Carlini & Wagner's per-sample binary search over ``c`` (in place).

    A success at ``c`` lowers the upper bound (try a smaller ``c``: smaller perturbation); a
    failure raises the lower bound and bisects, or multiplies ``c`` by :data:`CONST_GROWTH`
    while no success has been seen yet (``upper`` still :data:`UNBOUNDED`).
    """
    upper.copy_(torch.where(succeeded, torch.minimum(upper, const), upper))
    lower.copy_(torch.where(succeeded, lower, torch.maximum(lower, const)))
    bounded = upper < 1e9
    const.copy_(torch.where(bounded, (lower + upper) / 2, const * CONST_GROWTH))


class Plateau:
    """Abort-early per sample, on window minima: every ``every`` steps a sample stops when the
    lowest loss of the last window is not below ``tol`` × that of the window before. (The
    papers compare single values, which Adam's and FISTA's oscillations make noisy.)

    Args:
        like: a ``(B,)`` tensor giving the number of samples, dtype and device.
        every: the window length in steps.
        tol: the relative decrease a window must achieve (e.g. ``0.9999``).

    >>> plateau = Plateau(const, every=max(steps // 10, 1), tol=0.9999)
    >>> stop = plateau.stop(active_rows, loss, step)   # None, or a mask of rows to stop
    """

    def __init__(self, like: torch.Tensor, every: int, tol: float) -> None:
        self.prev = torch.full_like(like, math.inf)
        self.low = torch.full_like(like, math.inf)
        self.every, self.tol = every, tol

    def stop(self, act: torch.Tensor, loss: torch.Tensor, step: int) -> torch.Tensor | None:
        """Record the losses of rows ``act``; at a window's end, the rows that stop (or None)."""
        self.low[act] = torch.minimum(self.low[act], loss)
        if step % self.every != self.every - 1:
            return None
        stop = self.low[act] > self.prev[act] * self.tol
        self.prev[act] = self.low[act]
        self.low[act] = math.inf
        return stop if bool(stop.any()) else None


class RowAdam:
    """Adam (Kingma & Ba 2015) on a batch of rows, with per-row step counts, so that rows can
    leave the batch (:meth:`keep`) or restart (:meth:`reset`) independently.

    >>> adam = RowAdam(w, lr=1e-2)
    >>> w = adam.step(w, grad)
    """

    def __init__(self, like: torch.Tensor, lr: float, b1=0.9, b2=0.999, eps=1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)

    def step(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One Adam step of every row; returns the new parameters."""
        self.t += 1
        self.m.mul_(self.b1).add_(grad, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)
        mhat = self.m / per_sample(1 - self.b1**self.t, grad)
        vhat = self.v / per_sample(1 - self.b2**self.t, grad)
        return param - self.lr * mhat / (vhat.sqrt() + self.eps)

    def reset(self, rows: torch.Tensor) -> None:
        """Forget the moments and step counts of ``rows``."""
        self.m[rows] = 0
        self.v[rows] = 0
        self.t[rows] = 0

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only the rows of the boolean mask ``keep``."""
        self.m, self.v, self.t = self.m[keep], self.v[keep], self.t[keep]


def warn_never_adversarial(attack: str, upper: torch.Tensor, const: torch.Tensor) -> None:
    """After the search over ``c`` (``const`` as :func:`search_update` left it): say how many
    points were never adversarial at any ``c`` tried, and the largest ``c`` they got (the last
    round's: ``c`` only grew for them). A minimum-norm attack that leaves points unsolved
    reports them as robust; often the search simply stopped before ``c`` was large enough
    (a robust model needs a much larger ``c`` than an undefended one)."""
    never = upper >= 1e9
    if bool(never.any()):
        k, n = int(never.sum()), int(never.numel())
        warnings.warn(
            f"{attack}: {k} of {n} attacked points never became adversarial; the largest c they "
            f"were tried at is {float(const[never].max()) / CONST_GROWTH:.3g} (c grows 10x per "
            "failed round). Add binary_search_steps or raise initial_const before reading them "
            "as robust.",
            stacklevel=5,  # the caller of attack(model, x, y)
        )


def min_norm_threat(threat, norm, bounds, mask, attack: str) -> ThreatModel:
    """The threat of a minimum-norm attack measuring in ``norm``: from ``threat`` (which must
    have that norm and no ε) or from ``bounds`` and ``mask``."""
    t = make_threat(None, norm, bounds, mask, threat, need_eps=False, attack=attack)
    if t.norm != norm:
        raise ValueError(f"{attack} measures perturbations in {norm}, but threat.norm={t.norm!r}")
    if t.eps is not None:
        raise ValueError(
            f"{attack} is a minimum-norm attack: pass a threat without eps and use "
            "result.at_eps(eps, x) for a fixed-budget result"
        )
    return t

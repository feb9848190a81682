"""Evaluate a minimum-norm attack at a fixed budget ε."""

from __future__ import annotations

from typing import Any

import torch

from ..core.result import AttackResult

__all__ = ["BudgetedAttack"]


class BudgetedAttack:
    """A minimum-norm attack (C&W, DeepFool, FAB, ...) scored at a fixed budget ``eps``.

    Runs the wrapped attack and keeps an adversarial only when its norm is <= ``eps``
    (:meth:`AttackResult.at_eps`); the others count as failures and get back their clean input.
    Usable wherever a fixed-budget attack is, e.g. in :func:`~advex.evaluate.robust_accuracy`;
    :func:`~advex.evaluate.robustness_curve` runs the wrapped attack only once for all ε.

    >>> robust_accuracy(model, data, [PGD(eps=0.5, norm="l2"), BudgetedAttack(CW(), eps=0.5)])
    """

    minimum_norm = False

    def __init__(self, attack: Any, eps: float) -> None:
        if not getattr(attack, "minimum_norm", False):
            raise ValueError(
                f"BudgetedAttack wraps minimum-norm attacks; {type(attack).__name__} is a "
                "fixed-budget attack: give it eps= directly"
            )
        self.attack = attack
        self.threat = attack.threat.with_budget(float(eps))  # validates eps >= 0
        self.name = str(getattr(attack, "name", type(attack).__name__))
        self.targeted_only = bool(getattr(attack, "targeted_only", False))

    def __call__(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, target: Any = None
    ) -> AttackResult:
        res = self.attack(model, x, y, target)
        out = res.at_eps(float(self.threat.eps), x)
        out.threat = self.threat
        return out

    def params(self) -> dict[str, Any]:
        p = dict(self.attack.params()) if hasattr(self.attack, "params") else {}
        p.update(self.threat.to_dict())
        p["scored_at_eps"] = True
        return p

    def __repr__(self) -> str:
        return f"BudgetedAttack({self.attack!r}, eps={self.threat.eps})"

"""The family base of fixed-budget attacks: :class:`FixedBudgetAttack` and :func:`fixed_threat`.

A fixed-budget attack searches the strongest adversarial inside a given ε-ball (FGSM, PGD,
MI-FGSM, APGD, Square). Besides the one interface of :class:`~advex.attacks.base.Attack` it
offers :meth:`FixedBudgetAttack.run_eps`: several budgets in one call, where points fooled at a
small ε are reused at every larger ε instead of being attacked again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..core.result import AttackResult
from ..threats import ThreatModel
from .base import Attack, check_labels, make_threat

__all__ = ["FixedBudgetAttack", "fixed_threat"]


def fixed_threat(eps, norm, bounds, mask, threat, attack: str) -> ThreatModel:
    """``make_threat`` for fixed-budget attacks, with a clear error for a list of budgets."""
    if isinstance(eps, list | tuple | torch.Tensor) and not (
        isinstance(eps, torch.Tensor) and eps.dim() == 0
    ):
        raise TypeError(
            f"{attack}: eps must be one number; for several budgets in one call use "
            f"{attack}(eps=...).run_eps(model, x, y, eps=[...])"
        )
    return make_threat(eps, norm, bounds, mask, threat, attack=attack)


class FixedBudgetAttack(Attack):
    """Base of attacks with a fixed budget ε (FGSM, PGD, BIM, MI-FGSM, APGD, Square).

    Adds :meth:`run_eps` (several budgets in one call); a copy at another budget is
    :meth:`Attack.with_budget`. A subclass builds its threat with :func:`fixed_threat` and
    implements :meth:`~advex.attacks.base.Attack._attack` like any attack.

    >>> class MyAttack(FixedBudgetAttack):
    ...     def __init__(self, eps=None, norm="linf", *, threat=None, seed=0, eot_samples=1):
    ...         t = fixed_threat(eps, norm, (0.0, 1.0), None, threat, "MyAttack")
    ...         super().__init__(t, seed=seed, eot_samples=eot_samples)
    ...     def _attack(self, caller, x, goal, done, clean_logits):
    ...         return x.clone()  # the adversarial batch; rows with done set unchanged
    >>> MyAttack(eps=0.1).run_eps(model, x, y, eps=[0.05, 0.1])
    """

    def at_eps(self, eps: float) -> FixedBudgetAttack:
        """Deprecated name of :meth:`with_budget`."""
        return self.with_budget(eps)

    def run_eps(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: Iterable[float],
        target: Any = None,
    ) -> dict[float, AttackResult]:
        """Attack at every budget of ``eps`` in one call; returns ``{ε: AttackResult}``.

        Budgets run in increasing order. A point fooled at ε is fooled at every larger ε (the
        balls are nested), so its adversarial is reused and only the points still robust are
        attacked at the next budget. Each result covers the whole batch; its ``gradients`` and
        ``queries`` count the passes spent *at that ε* (0 for reused points), so the total cost
        is the sum over the returned results.

        Each budget runs ``self.with_budget(ε)``: step sizes follow ε by the one rule of
        :meth:`~advex.attacks.base.Attack.with_budget`.

        >>> curve = PGD(eps=0.3).run_eps(model, x, y, eps=[0.1, 0.2, 0.3])
        >>> {e: r.robust_accuracy for e, r in curve.items()}
        """
        budgets = sorted({float(e) for e in eps})
        if not budgets:
            raise ValueError("run_eps needs at least one eps")
        for e in budgets:
            if math.isnan(e) or e < 0:
                raise ValueError(f"eps must be >= 0, got {e}")
        self.threat.check_inputs(x)
        y = check_labels(y, x)
        if target is not None and not isinstance(target, torch.Tensor):
            target = torch.full_like(y, int(target))
        elif isinstance(target, torch.Tensor) and target.dim() == 0:
            target = torch.full_like(y, int(target))
        out: dict[float, AttackResult] = {}
        prev: AttackResult | None = None
        for e in budgets:
            attack = self.with_budget(e)
            if prev is None:
                res = attack(model, x, y, target)
            else:
                todo = (~prev.success).nonzero().squeeze(1)
                sub = None
                if todo.numel():
                    sub_target = None if target is None else target[todo]
                    sub = attack(model, x[todo], y[todo], sub_target)
                res = _merge(prev, sub, todo, attack)
            out[e] = res
            prev = res
        return out


def _merge(
    prev: AttackResult, sub: AttackResult | None, todo: torch.Tensor, attack: Attack
) -> AttackResult:
    """``prev`` with the rows ``todo`` replaced by ``sub``; reused rows cost nothing."""
    kw: dict[str, Any] = {}
    for name in ("x_adv", "success", "norms", "adv_pred", "adv_conf", "clean_pred", "clean_conf"):
        t = getattr(prev, name).clone()
        if sub is not None:
            t[todo] = getattr(sub, name)
        kw[name] = t
    for name in ("gradients", "queries"):
        t = torch.zeros_like(getattr(prev, name))
        if sub is not None:
            t[todo] = getattr(sub, name)
        kw[name] = t
    return replace(prev, threat=attack.threat, params=attack.params(), attack=attack.name, **kw)

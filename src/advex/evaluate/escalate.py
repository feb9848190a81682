"""Spend an attack's full budget only where a cheap run of it finds something.

The last stages of AutoAttack's standard protocol (FAB-T on nine targets, Square with 5,000
queries) exist to catch what the gradient stages before them miss: gradient masking, a loss
that leads APGD astray. On a model where APGD-CE and APGD-T work, they break (almost) nothing
more, yet they cost most of the run: every query goes to points that stay robust.
:class:`Escalating` runs a cheap *screen* (fewer targets, fewer queries) first; only when the
screen breaks a point the earlier stages left robust, evidence that they are missing points,
does it run the *full* attack on the points still robust. On a well-behaved model the full
budget is never spent; on a masked one the full attack runs and the strength is AutoAttack's.
The benchmark ``benchmarks/autoattack_compare.py`` checks the result against the real
AutoAttack.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.result import AttackResult

__all__ = ["Escalating"]


class Escalating:
    """Run ``screen``; if it breaks any correctly classified point, run ``full`` on the points
    it did not break and return the merged result.

    The result has one row per input: the screen's adversarial where it succeeded, else the
    full attack's where that one did, else the screen's last attempt. ``gradients`` and
    ``queries`` add up both runs. ``escalated`` tells whether the last call ran ``full``.

    >>> Escalating(Square(eps=0.3, n_queries=1000), Square(eps=0.3, n_queries=5000, seed=1))
    """

    minimum_norm = False

    def __init__(self, screen: Any, full: Any, name: str | None = None) -> None:
        for what, atk in (("screen", screen), ("full", full)):
            if not callable(atk):
                raise TypeError(f"Escalating: {what} must be an attack, got {type(atk).__name__}")
            if getattr(atk, "minimum_norm", False):
                raise ValueError(
                    f"Escalating: {what} is a minimum-norm attack; wrap it in BudgetedAttack"
                )
        self.screen = screen
        self.full = full
        self.name = str(name or getattr(screen, "name", type(screen).__name__))
        self.targeted_only = bool(getattr(full, "targeted_only", False))
        self.threat = getattr(full, "threat", None)
        self.escalated = False

    # the ensemble sets eot_samples on every attack of a stage
    @property
    def eot_samples(self) -> int:
        return int(getattr(self.full, "eot_samples", 1))

    @eot_samples.setter
    def eot_samples(self, n: int) -> None:
        for atk in (self.screen, self.full):
            if hasattr(atk, "eot_samples"):
                atk.eot_samples = int(n)

    def __call__(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, target: Any = None
    ) -> AttackResult:
        first = self.screen(model, x, y, target)
        found = first.success & first.clean_correct
        self.escalated = bool(found.any())
        rest = (~first.success).nonzero().squeeze(1)
        if not self.escalated or rest.numel() == 0:
            return first
        tgt = target
        if isinstance(target, torch.Tensor) and target.dim() > 0:
            tgt = target[rest.to(target.device)]
        second = self.full(model, x[rest], y[rest], tgt)
        out = first[torch.arange(len(first), device=first.success.device)]  # a copy
        won = second.success.to(out.success.device)
        idx = rest.to(out.success.device)
        for f in ("x_adv", "norms", "adv_pred", "adv_conf"):
            dst, src = getattr(out, f), getattr(second, f)
            dst[idx[won]] = src.to(dst.device)[won]
        out.success[idx] = won
        out.gradients[idx] += second.gradients.to(out.gradients.device)
        out.queries[idx] += second.queries.to(out.queries.device)
        out.params = self.params()
        out.params["escalated"] = True
        return out

    def params(self) -> dict[str, Any]:
        def p(a):
            return dict(a.params()) if hasattr(a, "params") else {}

        return {"screen": p(self.screen), "full": p(self.full)}

    def __repr__(self) -> str:
        return f"Escalating({self.screen!r}, {self.full!r})"

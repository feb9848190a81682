"""Fixed-budget gradient attacks: FGSM, PGD / BIM, MI-FGSM, and the shared iterative loop.

The loop is norm-generic: a norm contributes only its steepest-ascent direction and its
projection (:mod:`advex.threats.norms`), so PGD in L∞, L2 and L1 is one piece of code.

Every fixed-budget attack derives from :class:`~advex.attacks.fixed.FixedBudgetAttack` (the
family base, in :mod:`advex.attacks.fixed`; importable from here too).
"""

from __future__ import annotations

import math

import torch

from ..core.goals import Goal
from ..core.losses import get_loss
from ..threats import ThreatModel
from .base import ModelCaller, check_steps, loss_name
from .fixed import FixedBudgetAttack, fixed_threat

__all__ = ["FixedBudgetAttack", "FGSM", "PGD", "BIM", "MIFGSM", "IterativeGradientAttack"]


class FGSM(FixedBudgetAttack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples"); for L2/L1 the fast gradient method (one normalised step).

    One step of size ε along the steepest-ascent direction of the loss:
    ``x_adv = clip(x + ε · sign(∇x L))`` for L∞. Targeted: step down the target's loss.

    Args:
        eps: perturbation budget (required).
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        loss: ``"ce"`` (default), ``"margin"``, ``"dlr"`` or a callable ``(logits, goal)``.
        bounds, mask, threat: see :class:`~advex.threats.ThreatModel`.

    Cost: 1 forward + 1 backward per point not already misclassified.

    >>> result = FGSM(eps=0.3)(model, x, y)
    >>> result.robust_accuracy
    """

    name = "fgsm"
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        loss="ce",
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            fixed_threat(eps, norm, bounds, mask, threat, "FGSM"),
            seed=seed,
            eot_samples=eot_samples,
        )
        self.loss = loss_name(loss)
        self._loss = get_loss(loss)

    def _attack(self, caller, x, goal, done, clean_logits):
        x_adv = x.clone()
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            return x_adv
        xa, ga = x[active], goal[active]
        _, _, g = caller.value_and_grad(xa, lambda z: self._loss(z, ga), active)
        step = self.threat.direction(g)
        x_adv[active] = self.threat.project(xa + self.threat.eps * step, xa)
        return x_adv


class IterativeGradientAttack(FixedBudgetAttack):
    """Shared loop of iterative fixed-budget attacks (PGD, BIM, MI-FGSM).

    Each iteration: one forward+backward on the points still robust; points that reach the goal
    leave the batch at once (``early_stop``) with the adversarial found; the others keep the
    iterate of highest loss. Restarts run only on points still robust. Subclasses may override
    :meth:`_direction` (e.g. momentum), :meth:`_init_state` and :meth:`_default_step_size`.
    """

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int,
        step_size: float | None,
        random_start: bool,
        restarts: int,
        loss,
        early_stop: bool,
        seed: int | None,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(threat, seed=seed, eot_samples=eot_samples)
        self.steps = check_steps("steps", steps)
        self.restarts = check_steps("restarts", restarts)
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self._auto_step = step_size is None
        self.step_size = float(step_size) if step_size is not None else 0.0
        if self._auto_step:
            self.step_size = self._default_step_size(threat.eps)
        self.random_start = bool(random_start)
        self.loss = loss_name(loss)
        self._loss = get_loss(loss)
        self.early_stop = bool(early_stop)

    # hooks -----------------------------------------------------------------------------------
    def _default_step_size(self, eps: float) -> float:
        # Madry et al.: 2.5 ε / steps lets an iterate cross the ball and still move back.
        return 2.5 * eps / self.steps

    def _rebudget(self, old: float, new: float) -> None:
        # the rule of Attack.with_budget: a default step is derived again, an explicit one scaled
        if self._auto_step:
            self.step_size = self._default_step_size(new)
        else:
            super()._rebudget(old, new)

    def _init_state(self, x: torch.Tensor):
        return None

    def _direction(self, grad: torch.Tensor, state):
        return self.threat.lp.steepest(grad), state

    @staticmethod
    def _subset_state(state, keep: torch.Tensor):
        return None if state is None else state[keep]

    # loop ------------------------------------------------------------------------------------
    def _attack(self, caller: ModelCaller, x, goal: Goal, done, clean_logits):
        threat = self.threat
        rng = self._rng(x)
        best_x = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        found = done.clone()
        for restart in range(self.restarts):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if self.random_start or restart > 0:
                # a deterministic restart would repeat itself: restarts need randomness
                cur = threat.random_start(x[idx], rng, idx=idx, stream=("start", restart))
            else:
                cur = x[idx].clone()
            self._run(caller, x, goal, idx, cur, best_x, best_loss, found)
        return best_x

    def _run(self, caller, x, goal, idx, cur, best_x, best_loss, found) -> None:
        """One run from ``cur`` on the rows ``idx``; updates ``best_x/best_loss/found``."""
        threat = self.threat
        xa, ga = x[idx], goal[idx]
        # running state of the active rows (local copies: no scatter per step)
        bx, bl = cur, torch.full_like(best_loss[idx], float("-inf"))
        bf = torch.zeros_like(found[idx])
        state = self._init_state(xa)
        for t in range(self.steps + 1):
            last = t == self.steps
            if last:
                logits = caller.logits(cur, idx)
                obj = self._loss(logits, ga)
            else:
                x_leaf, logits = caller.forward_with_graph(cur, idx)
                with torch.enable_grad():
                    obj = self._loss(logits, ga)
            lossv, succ = obj.detach(), ga.is_success(logits.detach())
            # a success beats any loss; among equals keep the higher loss
            better = (succ & ~bf) | ((succ == bf) & (lossv > bl))
            bx = torch.where(better.view((-1,) + (1,) * (cur.dim() - 1)), cur, bx)
            bl = torch.where(better, lossv, bl)
            bf = bf | succ
            stop = succ if self.early_stop else torch.zeros_like(succ)
            if last or bool(stop.all()):
                break
            if bool(stop.any()):
                keep = ~stop
                _flush(idx[stop], bx[stop], bl[stop], bf[stop], best_x, best_loss, found)
                g = caller.input_grad(obj[keep], x_leaf, idx)[keep]  # backward ran on all rows
                cur, xa, idx, ga = cur[keep], xa[keep], idx[keep], ga[keep]
                bx, bl, bf = bx[keep], bl[keep], bf[keep]
                state = self._subset_state(state, keep)
            else:
                g = caller.input_grad(obj, x_leaf, idx)
            direction, state = self._direction(threat.apply_mask(g), state)
            cur = threat.project(cur.detach() + self.step_size * direction, xa)
        _flush(idx, bx, bl, bf, best_x, best_loss, found)


def _flush(idx, bx, bl, bf, best_x, best_loss, found) -> None:
    """Merge one run's best points into the attack-wide best (success first, then loss)."""
    if idx.numel() == 0:
        return
    was = found[idx]
    better = (bf & ~was) | ((bf == was) & (bl > best_loss[idx]))
    if bool(better.any()):
        bi = idx[better]
        best_x[bi] = bx[better]
        best_loss[bi] = bl[better]
        found[bi] = was[better] | bf[better]


class PGD(IterativeGradientAttack):
    """Projected Gradient Descent (Madry et al. 2018, "Towards Deep Learning Models Resistant
    to Adversarial Attacks"); BIM / I-FGSM (Kurakin et al. 2017) when ``random_start=False``.

    Iterates ``x ← Π_{B_ε(x0) ∩ bounds}(x + α · d(∇L))`` where ``d`` is the norm's steepest
    ascent direction (sign for L∞, normalised gradient for L2, sparse sign for L1), from a random
    point of the ball. Points stop costing passes once fooled (``early_stop``); otherwise the
    iterate of highest loss is kept; ``restarts`` re-run only the points still robust.

    Args:
        eps: budget (required). norm: ``"linf"`` | ``"l2"`` | ``"l1"``.
        steps: iterations (40, Madry et al.'s MNIST setting). step_size: α (default 2.5·ε/steps).
        random_start: uniform start in the ball (True); False gives BIM.
        restarts: number of runs from new random starts (1).
        loss: ``"ce"`` | ``"margin"`` | ``"dlr"`` | callable. early_stop: stop fooled points.
        seed: seed of the random starts (same seed → same ``x_adv``).

    Cost: at most ``restarts × steps`` forward+backward passes per point, plus 1 forward per
    run (the last iterate) and the 2 forwards of every attack (clean and final prediction).

    >>> result = PGD(eps=0.3, norm="linf", steps=40, step_size=0.01)(model, x, y)
    >>> targeted = PGD(eps=0.3)(model, x, y, target=3)
    """

    name = "pgd"
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss="ce",
        early_stop: bool = True,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            fixed_threat(eps, norm, bounds, mask, threat, type(self).__name__),
            steps=steps,
            step_size=step_size,
            random_start=random_start,
            restarts=restarts,
            loss=loss,
            early_stop=early_stop,
            seed=seed,
            eot_samples=eot_samples,
        )


class BIM(PGD):
    """Basic Iterative Method (Kurakin et al. 2017): :class:`PGD` without the random start.

    >>> result = BIM(eps=0.3, steps=10)(model, x, y)
    """

    name = "bim"
    aliases = ("i-fgsm",)
    norms = ("linf", "l2", "l1")

    def __init__(self, eps: float | None = None, norm: str = "linf", **kwargs) -> None:
        kwargs.setdefault("random_start", False)
        super().__init__(eps, norm, **kwargs)


class MIFGSM(IterativeGradientAttack):
    """Momentum Iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with
    Momentum").

    Accumulates the L1-normalised gradient with decay μ and steps along the accumulated
    direction: ``g ← μ·g + ∇L / ‖∇L‖₁``; ``x ← Π(x + α · sign(g))`` for L∞, ``α · g/‖g‖₂`` for
    L2 (for L1, the sparse sign step of :class:`~advex.threats.norms.L1`). No random start, as in
    the paper. Fooled points stop early; otherwise the iterate of highest loss is returned.

    Args:
        eps: budget (required). norm: ``"linf"`` (paper) | ``"l2"`` (paper) | ``"l1"``.
        steps: iterations T (10, paper). step_size: α (default ε / T, paper).
        decay: momentum μ (1.0, paper). restarts: >1 re-runs robust points from random starts.
        loss: ``"ce"`` (paper) | ``"margin"`` | ``"dlr"`` | callable. early_stop: stop fooled
        points. seed: seed of restarts.

    Cost: at most ``restarts × steps`` forward+backward passes per point, + 1 forward per run.

    >>> result = MIFGSM(eps=0.3, steps=10, decay=1.0)(model, x, y)
    >>> result.robust_accuracy
    """

    name = "mifgsm"
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        restarts: int = 1,
        loss="ce",
        early_stop: bool = True,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        if not (decay >= 0 and math.isfinite(decay)):
            raise ValueError(f"decay (momentum μ) must be a finite number >= 0, got {decay}")
        self.decay = float(decay)
        super().__init__(
            fixed_threat(eps, norm, bounds, mask, threat, "MIFGSM"),
            steps=steps,
            step_size=step_size,
            random_start=False,
            restarts=restarts,
            loss=loss,
            early_stop=early_stop,
            seed=seed,
            eot_samples=eot_samples,
        )

    def _default_step_size(self, eps: float) -> float:
        return eps / self.steps

    def _init_state(self, x: torch.Tensor):
        return torch.zeros_like(x)

    def _direction(self, grad, state):
        l1 = grad.abs().reshape(grad.shape[0], -1).sum(1).clamp_min(1e-12)
        state = self.decay * state + grad / l1.view((-1,) + (1,) * (grad.dim() - 1))
        return self.threat.lp.steepest(state), state

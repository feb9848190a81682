"""Fixed-budget gradient attacks: FGSM, PGD / BIM (and the shared iterative loop).

The loop is norm-generic: a norm contributes only its steepest-ascent direction and its
projection (:mod:`advex.core.norms`), so PGD in L∞, L2 and L1 is one piece of code.
"""

from __future__ import annotations

from functools import partial

import torch

from ..core.goals import Goal
from ..core.losses import get_loss
from ..core.threat import ThreatModel
from .base import Attack, ModelCaller, make_threat

__all__ = ["FGSM", "PGD", "BIM", "IterativeGradientAttack"]


def _loss_name(loss) -> str:
    return loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")


class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples"); for L2/L1 the fast gradient method (one normalised step).

    One step of size ε along the steepest-ascent direction of the loss:
    ``x_adv = clip(x + ε · sign(∇x L))`` for L∞. Targeted: step down the target's loss.

    Args:
        eps: perturbation budget (required).
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        loss: ``"ce"`` (default), ``"margin"``, ``"dlr"`` or a callable ``(logits, goal)``.
        bounds, mask, threat: see :class:`~advex.core.threat.ThreatModel`.

    Cost: 1 forward + 1 backward per point not already misclassified.

    >>> result = FGSM(eps=0.3)(model, x, y)
    >>> result.robust_accuracy
    """

    name = "fgsm"

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
    ) -> None:
        super().__init__(
            make_threat(eps, norm, bounds, mask, threat, attack="FGSM"), seed=seed
        )
        self.loss = _loss_name(loss)
        self._loss = get_loss(loss)

    def _attack(self, caller, x, goal, done, clean_logits):
        x_adv = x.clone()
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            return x_adv
        xa, ga = x[active], goal[active]
        _, _, g = caller.value_and_grad(xa, lambda z: self._loss(z, ga), active)
        step = self.threat.lp.steepest(self.threat.apply_mask(g))
        x_adv[active] = self.threat.project(xa + self.threat.eps * step, xa)
        return x_adv


class IterativeGradientAttack(Attack):
    """Shared loop of iterative fixed-budget attacks (PGD, BIM, MI-FGSM).

    Each iteration: one forward+backward on the points still robust; points that reach the goal
    leave the batch at once (``early_stop``) with the adversarial found; the others keep the
    iterate of highest loss. Restarts run only on points still robust. Subclasses may override
    :meth:`_direction` (e.g. momentum) and :meth:`_init_state`.
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
    ) -> None:
        super().__init__(threat, seed=seed)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if int(restarts) < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.steps = int(steps)
        # Madry et al.: 2.5 ε / steps lets an iterate cross the ball and still move back.
        self.step_size = float(step_size) if step_size is not None else 2.5 * threat.eps / steps
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.loss = _loss_name(loss)
        self._loss = get_loss(loss)
        self.early_stop = bool(early_stop)

    # hooks -----------------------------------------------------------------------------------
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
        gen = self._generator(x)
        best_x = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        found = done.clone()
        for restart in range(self.restarts):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, ga = x[idx], goal[idx]
            if self.random_start:
                cur = threat.random_start(xa, gen)
            elif restart == 0:
                cur = xa.clone()
            else:  # a deterministic restart would repeat itself: restarts need randomness
                cur = threat.random_start(xa, gen)
            state = self._init_state(xa)
            loss_fn = partial(_apply_loss, self._loss, ga)
            for t in range(self.steps + 1):
                last = t == self.steps
                x_leaf, logits = caller.forward_with_graph(cur, idx)
                with torch.enable_grad():
                    obj = loss_fn(logits)
                lossv = obj.detach()
                succ = ga.is_success(logits.detach())
                was = found[idx]
                better = (succ & ~was) | ((succ == was) & (lossv > best_loss[idx]))
                if bool(better.any()):
                    bi = idx[better]
                    best_x[bi] = cur[better].detach()
                    best_loss[bi] = lossv[better]
                    found[bi] |= succ[better]
                if last:
                    break
                keep = None
                if self.early_stop and bool(succ.any()):
                    keep = ~succ
                    if not bool(keep.any()):
                        break
                    obj = obj[keep]
                g = caller.input_grad(obj, x_leaf, idx if keep is None else idx[keep])
                cur = cur.detach()
                if keep is not None:
                    g, cur, xa, idx = g[keep], cur[keep], xa[keep], idx[keep]
                    ga = ga[keep]
                    loss_fn = partial(_apply_loss, self._loss, ga)
                    state = self._subset_state(state, keep)
                direction, state = self._direction(threat.apply_mask(g), state)
                cur = threat.project(cur + self.step_size * direction, xa)
        return best_x


def _apply_loss(loss, goal, logits):
    return loss(logits, goal)


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

    Cost: at most ``restarts × steps`` forward+backward passes per point, plus 2 forwards.

    >>> result = PGD(eps=0.3, norm="linf", steps=40, step_size=0.01)(model, x, y)
    >>> targeted = PGD(eps=0.3)(model, x, y, target=3)
    """

    name = "pgd"

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
    ) -> None:
        super().__init__(
            make_threat(eps, norm, bounds, mask, threat, attack=type(self).__name__),
            steps=steps,
            step_size=step_size,
            random_start=random_start,
            restarts=restarts,
            loss=loss,
            early_stop=early_stop,
            seed=seed,
        )


class BIM(PGD):
    """Basic Iterative Method (Kurakin et al. 2017): :class:`PGD` without the random start.

    >>> result = BIM(eps=0.3, steps=10)(model, x, y)
    """

    name = "bim"

    def __init__(self, eps: float | None = None, norm: str = "linf", **kwargs) -> None:
        kwargs.setdefault("random_start", False)
        super().__init__(eps, norm, **kwargs)

"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017): one perturbation for a
whole data set."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from ..core.goals import Goal
from ..models.guards import attack_mode
from ..threats import ThreatModel
from .base import Attack, ModelCaller, check_steps, make_threat
from .deepfool import deepfool

__all__ = ["UniversalPerturbation"]


class UniversalPerturbation(Attack):
    """Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017, "Universal
    adversarial perturbations"), Algorithm 1.

    Learns one perturbation ``v`` with ``‖v‖ ≤ ε`` that changes the model's prediction on as
    many points as possible: sweep over the data in a random order; for every point not yet
    fooled by ``v``, compute the minimal perturbation ``Δv`` sending ``x + v`` across the
    decision boundary, and update ``v ← Π_ε(v + Δv)``; stop when the fooling rate (share of
    points whose prediction changes) reaches ``1 − delta`` or after ``max_epochs`` sweeps.

    The minimal perturbation is the paper's: DeepFool (Moosavi-Dezfooli et al. 2016), the one
    implementation of :func:`advex.attacks.deepfool.deepfool` — at most ``inner_steps``
    linearised steps against the ``candidates`` most likely classes, with overshoot
    ``overshoot`` (exact DeepFool for L2 and L∞; for L1 the norm's sparse step scaled by the
    dual norm). ``Δv`` is the perturbation it accumulates, not cut by the box of the point it
    was computed on (``clip_perturbation=False``: ``v`` serves other points too). Batched
    deviation: the points of a mini-batch of
    ``batch_size`` get their ``Δv`` in parallel against the same ``v``, and ``v`` moves by their
    sum (what sequential updates would add, before projection); ``batch_size=1`` is exactly
    Algorithm 1. On MNIST the sum is as good as sequential updates and the mean much worse.

    The lifecycle of :class:`~advex.attacks.base.Attack`: ``fit(model, x, y)`` (or
    ``fit(model, (x, y))``) learns ``perturbation_`` (one sample's shape) and ``fooling_rate_``
    (on the points fitted), through the base prologue (validation, eval mode, EOT, pass
    counting). ``attack(model, x, y)`` then applies the learned perturbation and returns an
    :class:`~advex.core.result.AttackResult` (success re-predicted, passes counted); points
    already misclassified are left unchanged. An attack never fitted fits first on the batch it
    is called on (its passes are counted in that result). Untargeted only, as in the paper.

    Args:
        eps: ξ, the budget of ``v`` (0.3). norm: ``"linf"`` (default) | ``"l2"`` | ``"l1"``.
        delta: stop once the fooling rate is ≥ 1 − delta (0.2, paper).
        max_epochs: sweeps over the data (5). batch_size: points per update of ``v`` (16).
        inner_steps: DeepFool iterations (10). overshoot: DeepFool overshoot (0.02).
        candidates: classes DeepFool considers, the true one included (10).
        seed: seed of the data order.

    Cost of ``fit``, per point not yet fooled and per sweep: 1 forward (the fooled check) +
    up to ``inner_steps × (candidates − 1)`` forward+backward passes (DeepFool needs one
    gradient per candidate class); plus 1 forward per point per sweep for the fooling rate.
    Applying a fitted perturbation costs the 2 forwards of every attack.

    >>> uap = UniversalPerturbation(eps=0.3).fit(model, x_train, y_train)
    >>> result = uap(model, x_test, y_test); uap.fooling_rate_, result.success_rate
    """

    name = "universal"
    aliases = ("uap",)
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float | None = 0.3,
        norm: str = "linf",
        *,
        delta: float = 0.2,
        max_epochs: int = 5,
        batch_size: int = 16,
        inner_steps: int = 10,
        overshoot: float = 0.02,
        candidates: int = 10,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            make_threat(eps, norm, bounds, mask, threat, attack="UniversalPerturbation"),
            seed=seed,
            eot_samples=eot_samples,
        )
        if not 0.0 <= delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {delta}")
        if not (overshoot >= 0 and math.isfinite(overshoot)):
            raise ValueError(f"overshoot must be a finite number >= 0, got {overshoot}")
        self.delta = float(delta)
        self.max_epochs = check_steps("max_epochs", max_epochs)
        self.batch_size = check_steps("batch_size", batch_size)
        self.inner_steps = check_steps("inner_steps", inner_steps)
        self.overshoot = float(overshoot)
        if check_steps("candidates", candidates) < 2:
            raise ValueError(f"candidates must be >= 2 (the label and one other), got {candidates}")
        self.candidates = int(candidates)
        self.perturbation_: torch.Tensor | None = None
        self.fooling_rate_: float | None = None
        self.epochs_: int | None = None

    # -- public ---------------------------------------------------------------------------------
    def fit(
        self, model: nn.Module, data: Any, y: torch.Tensor | None = None
    ) -> UniversalPerturbation:
        """Learn ``perturbation_`` on ``data`` (``x``, with labels ``y``, or an ``(x, y)``
        pair); returns ``self``.

        Fooling means the prediction changes (the paper's definition). With ``y``, only the
        points the model classifies correctly are used, so fooling equals misclassification.
        """
        x, y = self._fit_data(model, data, y)
        with attack_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
            p = self._prologue(model, x, y)
            rows = (~p.done).nonzero().squeeze(1)
            if rows.numel() == 0:
                raise ValueError("the model misclassifies every point given to fit()")
            self._fit(p.caller, p.x[rows], p.goal.y[rows], rows, p.clean_logits[rows])
        return self

    def _attack(self, caller: ModelCaller, x, goal, done, clean_logits):
        if goal.targeted:
            raise ValueError(
                "UniversalPerturbation is an untargeted attack (as in the paper): call it "
                "without target="
            )
        rows = (~done).nonzero().squeeze(1)
        if rows.numel() == 0:  # every point already misclassified: nothing to attack or fit
            return x.clone()
        if self.perturbation_ is None:
            self._fit(caller, x[rows], goal.y[rows], rows, clean_logits[rows])
        v = self.perturbation_.to(device=x.device, dtype=x.dtype)
        if v.shape != x.shape[1:]:
            raise ValueError(
                f"the perturbation was fitted on samples of shape {tuple(v.shape)}, "
                f"got a batch of samples of shape {tuple(x.shape[1:])}"
            )
        x_adv = x.clone()
        x_adv[rows] = self._apply(x[rows], v)
        return x_adv

    # -- internals ------------------------------------------------------------------------------
    def _apply(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.threat.project(x + v, x)

    def _fit(self, caller, x, labels, idx, logits0) -> None:
        threat = self.threat
        rng = self._rng(x)
        n = x.shape[0]
        v = torch.zeros_like(x[:1])
        rate = 0.0
        epochs = 0
        for _ in range(self.max_epochs):
            epochs += 1
            # the order follows the points (per-point draws), not their positions in x
            order = rng.permutation(("order", epochs)).to(x.device)
            for start in range(0, n, self.batch_size):
                b = order[start : start + self.batch_size]
                xv = self._apply(x[b], v)
                logits = caller.logits(xv, idx[b])
                todo = logits.argmax(1) == labels[b]
                if not bool(todo.any()):
                    continue
                t = todo.nonzero().squeeze(1)
                xt = xv[t]
                reached = deepfool(
                    caller,
                    xt,
                    Goal(labels[b][t]),
                    logits[t],
                    threat,
                    max_iter=self.inner_steps,
                    overshoot=self.overshoot,
                    candidates=self.candidates,
                    idx=idx[b][t],
                    clip_perturbation=False,
                )
                dv = reached - xt
                v = threat.lp.project(threat.apply_mask(v + dv.sum(0, keepdim=True)), threat.eps)
            pred = torch.cat(
                [
                    caller.logits(self._apply(x[s : s + 256], v), idx[s : s + 256]).argmax(1)
                    for s in range(0, n, 256)
                ]
            )
            rate = float((pred != labels).float().mean())
            if rate >= 1.0 - self.delta:
                break
        self.perturbation_ = v[0].detach().clone()
        self.fooling_rate_ = rate
        self.epochs_ = epochs

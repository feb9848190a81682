"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017): one perturbation for a
whole data set."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.guards import attack_mode, check_logits
from ..threats import ThreatModel
from .base import Attack, ModelCaller, check_labels, make_threat
from .gradient import _check_steps

__all__ = ["UniversalPerturbation"]


class UniversalPerturbation(Attack):
    """Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017, "Universal
    adversarial perturbations"), Algorithm 1.

    Learns one perturbation ``v`` with ``‖v‖ ≤ ε`` that changes the model's prediction on as
    many points as possible: sweep over the data in a random order; for every point not yet
    fooled by ``v``, compute the minimal perturbation ``Δv`` sending ``x + v`` across the
    decision boundary, and update ``v ← Π_ε(v + Δv)``; stop when the fooling rate (share of
    points whose prediction changes) reaches ``1 − delta`` or after ``max_epochs`` sweeps.

    The minimal perturbation is the paper's: DeepFool (Moosavi-Dezfooli et al. 2016), written
    here for the three norms — at most ``inner_steps`` linearised steps against the
    ``candidates`` most likely classes, with overshoot ``overshoot``; the step towards class k
    is ``|f_k| / ⟨w_k, d_k⟩ · d_k`` with ``d_k`` the norm's steepest direction of ``w_k``
    (exact DeepFool for L2 and L∞). Batched deviation: the points of a mini-batch of
    ``batch_size`` get their ``Δv`` in parallel against the same ``v``, and ``v`` moves by their
    sum (what sequential updates would add, before projection); ``batch_size=1`` is exactly
    Algorithm 1. On MNIST the sum is as good as sequential updates and the mean much worse.

    ``fit(model, x, y)`` learns ``perturbation_`` (one sample's shape) and ``fooling_rate_``
    (on the points fitted). Calling the attack applies the learned perturbation (fitting it
    first on the same batch if the attack was never fitted) and returns an
    :class:`~advex.core.result.AttackResult`; points already misclassified are left unchanged.
    Untargeted only, as in the paper.

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
    ) -> None:
        super().__init__(
            make_threat(eps, norm, bounds, mask, threat, attack="UniversalPerturbation"),
            seed=seed,
        )
        if not 0.0 <= delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {delta}")
        if not (overshoot >= 0 and math.isfinite(overshoot)):
            raise ValueError(f"overshoot must be a finite number >= 0, got {overshoot}")
        self.delta = float(delta)
        self.max_epochs = _check_steps("max_epochs", max_epochs)
        self.batch_size = _check_steps("batch_size", batch_size)
        self.inner_steps = _check_steps("inner_steps", inner_steps)
        self.overshoot = float(overshoot)
        if _check_steps("candidates", candidates) < 2:
            raise ValueError(f"candidates must be >= 2 (the label and one other), got {candidates}")
        self.candidates = int(candidates)
        self.perturbation_: torch.Tensor | None = None
        self.fooling_rate_: float | None = None
        self.epochs_: int | None = None

    # -- public ---------------------------------------------------------------------------------
    def fit(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> UniversalPerturbation:
        """Learn ``perturbation_`` on ``x``; returns ``self``.

        Fooling means the prediction changes (the paper's definition). With ``y``, only the
        points the model classifies correctly are used, so fooling equals misclassification.
        """
        self.threat.check_inputs(x)
        x0 = x.detach()
        with attack_mode(model) if isinstance(model, nn.Module) else _nullctx():
            caller = ModelCaller(model, x0.shape[0], x0.device)
            clean = caller.logits(x0)
            check_logits(clean, name=type(model).__name__)
            labels = clean.argmax(1)
            use = torch.ones_like(labels, dtype=torch.bool)
            if y is not None:
                use = labels == check_labels(y, x0)
                if not bool(use.any()):
                    raise ValueError("the model misclassifies every point given to fit()")
            rows = use.nonzero().squeeze(1)
            self._num_classes = clean.shape[1]
            self._fit(caller, x0[rows], labels[rows], rows, clean[rows])
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
                dv = self._deepfool(caller, xv[t], labels[b][t], idx[b][t], logits[t])
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

    def _deepfool(self, caller, xv, labels, idx, logits) -> torch.Tensor:
        """Batched DeepFool from ``xv`` (all currently classified as ``labels``): returns the
        overshot minimal perturbation of every row (rows not flipped after ``inner_steps``
        return the perturbation reached)."""
        threat = self.threat
        lo, hi = threat.box.bounds_for(xv)
        m = xv.shape[0]
        k = min(self.candidates, self._num_classes) - 1
        others = logits.scatter(1, labels[:, None], float("-inf"))
        cand = others.topk(k, dim=1).indices  # (m, k)
        r_tot = torch.zeros_like(xv)
        rows = torch.arange(m, device=xv.device)
        scale = 1.0 + self.overshoot
        for it in range(self.inner_steps):
            cur = (xv[rows] + scale * r_tot[rows]).clamp(lo, hi)
            rep = cur.repeat_interleave(k, 0)
            rep_idx = idx[rows].repeat_interleave(k)
            x_leaf, z = caller.forward_with_graph(rep, rep_idx)
            lab = labels[rows].repeat_interleave(k)
            if it > 0:
                flipped = z.detach()[::k].argmax(1) != labels[rows]
                if bool(flipped.all()):
                    break
            else:
                flipped = torch.zeros_like(rows, dtype=torch.bool)
            with torch.enable_grad():
                f = z.gather(1, cand[rows].reshape(-1, 1)).squeeze(1) - z.gather(
                    1, lab[:, None]
                ).squeeze(1)
            keep_rep = (~flipped).repeat_interleave(k)
            w = caller.input_grad(f[keep_rep], x_leaf, rep_idx[keep_rep])[keep_rep]
            rows = rows[~flipped]
            f = f.detach()[keep_rep]
            w = threat.apply_mask(w)
            d = threat.lp.steepest(w)
            dot = (w * d).reshape(w.shape[0], -1).sum(1).clamp_min(1e-12)
            dist = (f.abs() / dot).view(-1, k)
            best = dist.argmin(1)
            pick = torch.arange(rows.numel(), device=xv.device) * k + best
            step = ((f.abs()[pick] + 1e-4) / dot[pick]).view((-1,) + (1,) * (xv.dim() - 1))
            r_tot[rows] = r_tot[rows] + step * d[pick]
        return scale * r_tot


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False

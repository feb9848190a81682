"""DeepFool (Moosavi-Dezfooli et al. 2016): minimum-norm attack by iterated linearisation."""

from __future__ import annotations

import torch

from ..core.goals import Goal
from ..threats import ThreatModel
from ._jacobian import difference_jacobian
from .base import Attack, ModelCaller, make_threat

__all__ = ["DeepFool", "deepfool"]

_TINY = 1e-12


class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method
    to fool deep neural networks"), in L2 and L∞.

    Each iteration linearises the classifier at the current point: for every candidate class
    ``k`` it computes ``f_k = z_k − z_y`` and ``w_k = ∇z_k − ∇z_y`` (one batched Jacobian of
    the logit differences for the whole batch), picks the closest linearised boundary
    ``l = argmin_k |f_k| / ‖w_k‖_dual`` (dual of L2 is L2, of L∞ is L1) and steps onto it with
    the minimal step
    ``r = (|f_l| / ‖w_l‖_dual + 10⁻⁴) · u_l`` where ``u_l = w_l / ‖w_l‖₂`` (L2) or
    ``sign(w_l)`` (L∞). Steps accumulate into ``r_tot``; the iterate is
    ``clip(x + (1 + overshoot) · r_tot)`` (``r_tot`` keeps only what clipping lets through).
    A sample leaves the batch as soon as it is misclassified; samples never fooled within
    ``max_iter`` return their last iterate (reported unsuccessful).

    Candidates are the ``candidates`` classes with the largest clean logits (the true class
    first), fixed at the start as in the authors' code. Targeted use (an extension, not in the
    paper): with ``target=`` each iteration linearises the boundary between the target and the
    current top other class.

    Args:
        norm: ``"l2"`` (default) or ``"linf"``.
        max_iter: iterations (50, the paper's setting).
        overshoot: ``η`` of the paper (0.02).
        candidates: number of top classes whose boundaries are linearised (10).
        bounds, mask, threat: see :class:`~advex.threats.ThreatModel` (no ``eps``: DeepFool
            is a minimum-norm attack; use ``result.at_eps(eps, x)`` for a fixed budget).

    Cost: per iteration and sample still robust, one forward and ``candidates − 1``
    vector-Jacobian products (counted as ``candidates − 1`` gradient evaluations; 1 when
    targeted); at most ``max_iter`` iterations, plus 2 forwards.

    >>> result = DeepFool(norm="l2")(model, x, y)
    >>> result.norms.median(), result.at_eps(1.5, x).robust_accuracy
    """

    name = "deepfool"
    norms = ("l2", "linf")
    minimum_norm = True

    def __init__(
        self,
        norm: str = "l2",
        *,
        max_iter: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = make_threat(None, norm, bounds, mask, threat, need_eps=False, attack="DeepFool")
        if t.norm not in ("l2", "linf"):
            raise ValueError(
                f"DeepFool supports norm 'l2' or 'linf', got {t.norm!r} (use FAB for L1)"
            )
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter}")
        if not overshoot >= 0:
            raise ValueError(f"overshoot must be >= 0, got {overshoot}")
        if isinstance(candidates, bool) or int(candidates) != candidates or candidates < 2:
            raise ValueError(f"candidates must be an integer >= 2, got {candidates}")
        self.max_iter = int(max_iter)
        self.overshoot = float(overshoot)
        self.candidates = int(candidates)

    def _attack(
        self,
        caller: ModelCaller,
        x: torch.Tensor,
        goal: Goal,
        done: torch.Tensor,
        clean_logits: torch.Tensor,
    ) -> torch.Tensor:
        x_adv = x.clone()
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            return x_adv
        x_adv[idx] = deepfool(
            caller,
            x[idx],
            goal[idx],
            clean_logits[idx],
            self.threat,
            max_iter=self.max_iter,
            overshoot=self.overshoot,
            candidates=self.candidates,
            idx=idx,
        )
        # a threat model passed with an eps bounds the output (success is re-predicted)
        return self.threat.project(x_adv, x)


def deepfool(
    caller: ModelCaller,
    x: torch.Tensor,
    goal: Goal,
    clean_logits: torch.Tensor,
    threat: ThreatModel,
    *,
    max_iter: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    idx: torch.Tensor | None = None,
    clip_perturbation: bool = True,
) -> torch.Tensor:
    """The DeepFool iteration of :class:`DeepFool`, on a batch of points not yet successful.

    Used by :class:`DeepFool` and as the inner step of
    :class:`~advex.attacks.universal.UniversalPerturbation`. The geometry comes from
    ``threat``: its norm's dual and steepest direction (exact DeepFool for L2 and L∞; for L1
    the norm's sparse step, scaled by the dual norm), its box and mask; its ε is not used.

    Args:
        caller: the attack's :class:`~advex.attacks.base.ModelCaller` (counts the passes).
        x: points ``(B, ...)``, none of them successful yet (untargeted: each classified as
            its label, so the candidates are the next ``candidates − 1`` classes).
        goal: their :class:`~advex.core.goals.Goal`.
        clean_logits: the model's logits on ``x`` ``(B, classes)``.
        threat: the threat whose norm, box and mask the steps follow.
        max_iter, overshoot, candidates: as in :class:`DeepFool`.
        idx: the rows of ``x`` in the attacked batch, for per-point pass counting.
        clip_perturbation: True (DeepFool): the accumulated perturbation keeps only what the
            box lets through. False: it accumulates unclipped (the model is still evaluated on
            the iterate clipped to the box) and the point returned is ``x`` plus the unclipped
            perturbation, possibly outside the box: what a perturbation meant for other points
            as well (a universal one) needs.

    Returns:
        ``(B, ...)``: for every point, the first iterate that reaches the goal, or the last
        one (after ``max_iter`` steps); see ``clip_perturbation``.
    """
    lp = threat.lp
    out = x.clone()
    pos = torch.arange(x.shape[0], device=x.device)  # rows of x still iterated
    xa, ga = x, goal
    lo, hi = threat.box.bounds_for(xa)
    if ga.targeted:
        tgt = ga.target

        def pairs(logits: torch.Tensor) -> torch.Tensor:
            ref = logits.scatter(1, tgt[:, None], float("-inf")).argmax(1)
            return torch.stack([tgt, ref], dim=1)[:, None, :]  # ∇(z_t − z_top other)

    else:
        k = min(candidates, clean_logits.shape[1])
        cand = clean_logits.topk(k, dim=1).indices[:, 1:]
        # the points are classified correctly: y is the top class, cand the next k - 1
        cand_all = torch.stack([cand, ga.y[:, None].expand_as(cand)], dim=2)

        def pairs(logits: torch.Tensor) -> torch.Tensor:
            return cand_all  # ∇(z_k − z_y) for the candidates k

    scale = 1.0 + overshoot
    r_tot = torch.zeros_like(xa)
    cur = xa.clone()
    for it in range(max_iter + 1):
        if it == max_iter:
            logits = caller.logits(cur, idx)
        else:
            logits, jac = difference_jacobian(caller, cur, pairs, idx)
        succ = ga.is_success(logits)
        last = it == max_iter
        if last or bool(succ.any()):
            fin = torch.ones_like(succ) if last else succ
            out[pos[fin]] = cur[fin] if clip_perturbation else (xa + scale * r_tot)[fin]
            if last or bool(fin.all()):
                break
            keep = ~fin
            pos, xa, ga, cur, r_tot = pos[keep], xa[keep], ga[keep], cur[keep], r_tot[keep]
            if idx is not None:
                idx = idx[keep]
            logits, jac = logits[keep], jac[keep]
            if ga.targeted:
                tgt = ga.target
            else:
                cand_all = cand_all[keep]
        pr = pairs(logits)
        f = logits.gather(1, pr[..., 0]) - logits.gather(1, pr[..., 1])
        w = threat.apply_mask(jac.reshape(-1, *xa.shape[1:])).reshape(jac.shape)
        wf = w.reshape(w.shape[0], w.shape[1], -1)
        dual = lp.dual(wf.reshape(-1, wf.shape[2])).reshape(wf.shape[:2])
        dist = f.abs() / (dual + _TINY)
        best = dist.argmin(dim=1)
        rows = torch.arange(w.shape[0], device=w.device)
        wl = w[rows, best]
        dl = dist[rows, best] + 1e-4
        unit = lp.steepest(wl)  # the unit-norm step attaining the dual norm
        r_tot = r_tot + dl.reshape(-1, *[1] * (wl.dim() - 1)) * unit
        cur = (xa + scale * r_tot).clamp_(lo, hi)
        if clip_perturbation:
            r_tot = (cur - xa) / scale
    return out

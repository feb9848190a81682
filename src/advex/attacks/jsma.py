"""JSMA, the Jacobian-based Saliency Map Attack (Papernot et al. 2016): a targeted L0 attack."""

from __future__ import annotations

import math

import torch

from ..core.goals import Goal
from ..core.result import AttackResult
from ..threats import ThreatModel
from ._jacobian import logit_vjps
from .base import Attack, ModelCaller, make_threat

__all__ = ["JSMA", "l0"]


def l0(x_adv: torch.Tensor, x: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """Per-sample number of features changed (``|x_adv − x| > tol``): the L0 "norm" JSMA
    minimises.

    >>> l0(result.x_adv, x).float().mean()
    """
    return ((x_adv - x).abs() > tol).reshape(x.shape[0], -1).sum(dim=1)


class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (Papernot, McDaniel, Jha, Fredrikson, Celik & Swami
    2016, "The Limitations of Deep Learning in Adversarial Settings"), a targeted L0 attack.

    Each iteration computes, for every feature ``i``, ``α_i = ∂z_t/∂x_i`` (target) and
    ``β_i = Σ_{j≠t} ∂z_j/∂x_i`` (all other classes) in one batched pass (2 vector-Jacobian
    products), then picks the pair of features ``(p, q)`` maximising the saliency map of the
    paper ``(α_p + α_q) · |β_p + β_q|`` among the pairs with ``α_p + α_q > 0`` and
    ``β_p + β_q < 0`` (signs swapped when ``θ < 0``) and adds ``θ`` to both (clipped to bounds).
    A feature leaves the search domain once it reaches the bound; a sample stops when it reaches
    its goal, when another pair would exceed the budget of ``⌊γ · d⌋`` changed features, or when
    no pair satisfies the saliency conditions (it is then reported unsuccessful).

    The derivatives are those of the logits (JSMA-Z in Carlini & Wagner's terms; the later
    reference implementation's choice) rather than of the softmax.

    Without ``target=`` a target is drawn at random (seeded, uniform over the classes other than
    ``y``) for each sample, as in CleverHans, and success means misclassification.

    Norms: advex's threat models measure L∞/L2/L1, so ``result.norms`` holds the L2 size of the
    perturbation (``threat.norm == "l2"``, no ε); the L0 count is given by :func:`l0` and
    summarised in ``result.params["l0_mean"]`` / ``["l0_max"]``.

    Args:
        theta: change applied to each selected feature (+1.0: set pixels to the maximum).
        gamma: maximal fraction of features changed (0.1).
        bounds, mask, threat: see :class:`~advex.threats.ThreatModel` (``mask`` restricts the
            features JSMA may pick).
        seed: drives the random targets of the untargeted use.
        chunk: samples whose ``d × d`` pair scores are formed at once (memory: ``chunk · d²``
            floats per temporary; 8 → 20 MB for MNIST).

    Cost: per iteration and sample still attacked, 2 gradient evaluations (one forward, two
    vector-Jacobian products); at most ``⌊γ d / 2⌋ · ⌈(high − low) / |θ|⌉`` iterations (39 for
    MNIST with the defaults), plus 2 forwards.

    >>> result = JSMA(theta=1.0, gamma=0.1)(model, x, y, target=(y + 1) % 10)
    >>> l0(result.x_adv, x).float().mean(), result.success_rate
    """

    name = "jsma"
    norms = ("l2",)

    def __init__(
        self,
        *,
        theta: float = 1.0,
        gamma: float = 0.1,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
        chunk: int = 8,
    ) -> None:
        t = make_threat(None, "l2", bounds, mask, threat, need_eps=False, attack="JSMA")
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        theta = float(theta)
        if not math.isfinite(theta) or theta == 0:
            raise ValueError(f"theta must be a finite non-zero change, got {theta}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma (fraction of features) must be in (0, 1], got {gamma}")
        if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1, got {chunk}")
        self.theta = theta
        self.gamma = float(gamma)
        self.chunk = int(chunk)

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
        threat = self.threat
        c = clean_logits.shape[1]
        if c < 2:
            raise ValueError("JSMA needs a model with at least 2 classes")
        xa, ga = x[idx], goal[idx]
        if ga.targeted:
            tgt = ga.target
        else:
            shift = self._rng(x).integers("target-shift", 1, c, (), idx=idx).to(x.device)
            tgt = (ga.y + shift) % c
        lo, hi = threat.box.flat_bounds(xa)  # numbers, or (1, d) per-feature tensors
        span = hi - lo if threat.box.scalar else float((hi - lo).max())
        n_feat = xa[0].numel()
        budget = int(math.floor(self.gamma * n_feat))
        max_iter = (budget // 2) * math.ceil(span / abs(self.theta))
        sgn = 1.0 if self.theta > 0 else -1.0
        cur = xa.reshape(xa.shape[0], -1).clone()
        x0 = cur.clone()
        allowed = torch.ones_like(cur, dtype=torch.bool)
        if threat.mask is not None:
            allowed = threat.apply_mask(torch.ones_like(xa)).reshape(cur.shape) > 0
        shape = xa.shape
        for it in range(max_iter + 1):
            domain = allowed & ((cur < hi) if sgn > 0 else (cur > lo))
            changed = (cur != x0).sum(1)
            if it == max_iter:
                logits = caller.logits(cur.reshape(-1, *shape[1:]), idx)
            else:
                onehot = torch.zeros(cur.shape[0], c, dtype=cur.dtype, device=cur.device)
                onehot.scatter_(1, tgt[:, None], 1.0)
                cot = torch.stack([onehot, 1.0 - onehot], dim=1)
                logits, jac = logit_vjps(caller, cur.reshape(-1, *shape[1:]), cot, idx)
            stop = ga.is_success(logits) | (changed + 2 > budget) | (domain.sum(1) < 2)
            if it < max_iter:
                p, q, ok = self._pick_pairs(
                    jac[:, 0].reshape(cur.shape), jac[:, 1].reshape(cur.shape), domain, sgn
                )
                stop |= ~ok
            else:
                stop[:] = True
            if bool(stop.any()):
                x_adv[idx[stop]] = cur[stop].reshape(-1, *shape[1:])
                keep = ~stop
                if not bool(keep.any()):
                    break
                idx, ga, tgt, cur, x0 = idx[keep], ga[keep], tgt[keep], cur[keep], x0[keep]
                allowed, p, q = allowed[keep], p[keep], q[keep]
            rows = torch.arange(cur.shape[0], device=cur.device)
            cur[rows, p] = (cur[rows, p] + self.theta).clamp(_at(lo, p), _at(hi, p))
            cur[rows, q] = (cur[rows, q] + self.theta).clamp(_at(lo, q), _at(hi, q))
        return x_adv

    def _pick_pairs(self, alpha, beta, domain, sgn):
        """Best pair ``(p, q)`` per sample by the saliency map, and whether one exists.

        ``(α_p + α_q)⁺ · (β_p + β_q)⁻`` is negative exactly on the pairs meeting the paper's
        conditions and equals minus their saliency there, so its minimum is the best pair;
        features outside the domain get ``α = −∞``-like values that fail the condition.
        """
        n, d = alpha.shape
        p = torch.zeros(n, dtype=torch.long, device=alpha.device)
        q = torch.zeros_like(p)
        ok = torch.zeros(n, dtype=torch.bool, device=alpha.device)
        big = torch.finfo(alpha.dtype).max / 4
        a_all = torch.where(domain, alpha * sgn, torch.full_like(alpha, -big))
        b_all = beta * sgn
        for s in range(0, n, self.chunk):
            a, b = a_all[s : s + self.chunk], b_all[s : s + self.chunk]
            score = (a[:, :, None] + a[:, None, :]).clamp_min_(0.0)
            score.mul_((b[:, :, None] + b[:, None, :]).clamp_max_(0.0))
            score.diagonal(dim1=1, dim2=2).zero_()
            best, arg = score.reshape(score.shape[0], -1).min(dim=1)
            p[s : s + self.chunk] = arg // d
            q[s : s + self.chunk] = arg % d
            ok[s : s + self.chunk] = best < 0
        return p, q, ok

    def _result(self, x, x_adv, goal, clean_logits, adv_logits, caller) -> AttackResult:
        res = super()._result(x, x_adv, goal, clean_logits, adv_logits, caller)
        counts = l0(x_adv, x).float()
        res.params = dict(res.params)
        res.params["l0_mean"] = float(counts.mean())
        res.params["l0_max"] = int(counts.max())
        res.params["l0_budget"] = int(math.floor(self.gamma * x[0].numel()))
        return res


def _at(bound, features: torch.Tensor):
    """The bound of the given features: a number stays a number, a (1, d) tensor is indexed."""
    return bound[0, features] if isinstance(bound, torch.Tensor) else bound

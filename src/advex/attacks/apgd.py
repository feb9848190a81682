"""Auto-PGD (Croce & Hein 2020) for L∞ and L2, and l1-APGD (Croce & Hein 2021).

APGD is PGD without a step size to tune: it starts with a large step (2ε), adds momentum, and
halves the step at checkpoints where progress stalled, restarting from the best point found.
APGD-T runs the targeted DLR loss against the most likely wrong classes in turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..core.goals import Goal
from ..core.losses import get_loss
from ..threats import L1, ThreatModel, project_l1_box
from .base import ModelCaller, check_steps, closest_share, loss_name
from .fixed import FixedBudgetAttack, fixed_threat

__all__ = ["APGD", "checkpoints", "project_l1_box"]


def checkpoints(steps: int) -> list[int]:
    """Iterations where APGD may halve its step: ``w_j = ⌈p_j · steps⌉`` with ``p_0 = 0``,
    ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = {math.ceil(round(q * steps, 6)) for q in p[1:]}
    return sorted(v for v in w if 0 < v < steps)


@dataclass
class _RunState:
    """Per-row state of one APGD run; every field is subset together when fooled rows leave."""

    idx: torch.Tensor  # rows in the attacked batch
    xa: torch.Tensor  # their clean points
    cur: torch.Tensor  # the iterate x_k
    prev: torch.Tensor  # x_{k-1} (momentum)
    eta: torch.Tensor  # step size η
    bx: torch.Tensor  # point of highest loss so far
    bl: torch.Tensor  # its loss
    bg: torch.Tensor  # its gradient
    last_loss: torch.Tensor
    n_up: torch.Tensor  # steps that increased the loss since the last checkpoint
    bl_ck: torch.Tensor  # best loss at the last checkpoint
    halved_ck: torch.Tensor  # whether η was halved at the last checkpoint
    topk: torch.Tensor  # l1-APGD: share of coordinates a step moves
    sp_old: torch.Tensor  # l1-APGD: sparsity of the best point at the last checkpoint
    lgoal: Goal  # the goal the loss is written against
    sgoal: Goal  # the goal that counts as success

    def keep(self, keep: torch.Tensor) -> _RunState:
        return _RunState(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


class APGD(FixedBudgetAttack):
    """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks"); l1-APGD (Croce & Hein 2021, "Mind the box").

    **L∞ / L2** (Algorithm 1 of the paper): from a uniform random start, step
    ``z = Π(x_k + η·d(∇f))`` and ``x_{k+1} = Π(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))``
    with momentum α = 0.75 (no momentum on the first step) and η = 2ε initially. At the
    checkpoints ``w_j`` (see :func:`checkpoints`) the step is halved, and the iterate reset to
    the best point, when fewer than ρ = 75% of the steps since the last checkpoint increased the
    loss, or when the step was not halved at the last checkpoint and the best loss has not moved.

    **L1** (l1-APGD, "Mind the box"): steps of size η along the sign of the top-k gradient
    coordinates, normalised to unit L1 norm, then the exact projection onto the L1 ball ∩ box
    (:func:`project_l1_box`); coordinates at the box boundary whose gradient points outside are
    never chosen. Adaptive sparsity: k starts at 20% of the coordinates and, every 4% of the
    iterations, becomes ``‖x_best − x‖₀ / 1.5``; η starts at ε and is reset to ε (with the
    iterate reset to the best point) when the sparsity of the best point fell by over 5%,
    otherwise divided by 1.5 (never below ε/10); no momentum, as in the authors' code.
    Deviation: the ε-schedule of AutoAttack's L1 mode (``use_largereps``, 3ε→2ε→ε) is not used.

    **APGD-T** (``targeted=True``, DLR-targeted loss by default): for j = 1..``n_target_classes``
    the j-th most likely wrong class (by the clean logits) is attacked, only on the points still
    robust. Success is misclassification. With an explicit ``target=`` passed to the call, that
    target is attacked instead (success = reaching it).

    Points are dropped as soon as they are fooled (they cost no more passes); the others return
    the point of highest loss. Restarts run only on points still robust.

    Args:
        eps: budget (required). norm: ``"linf"`` | ``"l2"`` | ``"l1"``.
        steps: gradient evaluations per run (100, paper). restarts: runs from new random starts
            (1). loss: ``"ce"`` (APGD-CE, default) | ``"dlr"`` (APGD-DLR; default of APGD-T) |
            ``"margin"`` | callable. targeted: APGD-T over the top ``n_target_classes`` (9).
        rho: ρ of condition 1 (0.75). momentum: α (0.75). seed: seed of the random starts.
        restart_keep: the share of the points still robust that each restart after the first
            attacks: those closest to success (highest loss reached so far). 1.0 (default):
            all of them, as in the paper; advex's ``standard`` preset gives APGD-CE a second
            start on the closest 25 %, where a point left just short of the boundary is a
            coin flip that a new random start often wins.

    Cost per point still robust: ``steps`` forward+backward + 1 forward per run; runs =
    ``restarts`` (``restarts × n_target_classes`` for APGD-T), plus the 2 forwards of every
    attack.

    >>> result = APGD(eps=8 / 255, norm="linf", loss="ce")(model, x, y)
    >>> apgd_t = APGD(eps=8 / 255, targeted=True, n_target_classes=9)(model, x, y)
    """

    # the registry name is the class name ("apgd"); instances are named apgd-ce/-dlr/-t
    aliases = ("auto-pgd",)
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        steps: int = 100,
        restarts: int = 1,
        loss=None,
        targeted: bool = False,
        n_target_classes: int = 9,
        rho: float = 0.75,
        momentum: float = 0.75,
        restart_keep: float = 1.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            fixed_threat(eps, norm, bounds, mask, threat, "APGD"),
            seed=seed,
            eot_samples=eot_samples,
        )
        self.steps = check_steps("steps", steps)
        self.restarts = check_steps("restarts", restarts)
        self.n_target_classes = check_steps("n_target_classes", n_target_classes)
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.targeted = bool(targeted)
        if loss is None:
            loss = "dlr" if self.targeted else "ce"
        self.loss = loss_name(loss)
        self._loss = get_loss(loss)
        self.rho = float(rho)
        self.momentum = float(momentum)
        if not 0.0 < float(restart_keep) <= 1.0:
            raise ValueError(f"restart_keep must be in (0, 1], got {restart_keep}")
        self.restart_keep = float(restart_keep)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "apgd-t" if self.targeted else f"apgd-{self.loss}"

    # ------------------------------------------------------------------------------------------
    def _attack(self, caller: ModelCaller, x, goal: Goal, done, clean_logits):
        rng = self._rng(x)
        best_x = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        found = done.clone()
        if self.targeted and not goal.targeted:
            k = min(self.n_target_classes, clean_logits.shape[1] - 1)
            others = clean_logits.scatter(1, goal.y[:, None], float("-inf"))
            ranked = others.argsort(1, descending=True)[:, :k]
            passes = [(j, r) for j in range(k) for r in range(self.restarts)]
        else:
            ranked = None
            passes = [(None, r) for r in range(self.restarts)]
        for j, r in passes:
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if r > 0 and self.restart_keep < 1.0:
                idx = idx[closest_share(best_loss[idx], self.restart_keep)]
            sgoal = goal[idx]
            lgoal = sgoal if j is None else Goal(sgoal.y, ranked[idx, j])
            stream = ("start", r) if j is None else ("start", j, r)
            self._run(caller, x, idx, lgoal, sgoal, (rng, stream), best_x, best_loss, found)
        return best_x

    def _run(self, caller, x, idx, lgoal, sgoal, draw, best_x, best_loss, found) -> None:
        threat = self.threat
        eps = float(threat.eps)
        l1 = isinstance(threat.lp, L1)  # l1-APGD: sparse steps, exact ball ∩ box projection
        steps = self.steps
        rng, stream = draw
        cur = threat.random_start(x[idx], rng, idx=idx, stream=stream)
        d = cur[0].numel()
        m = idx.numel()
        ones = torch.ones(m, dtype=x.dtype, device=x.device)
        s = _RunState(
            idx=idx,
            xa=x[idx],
            cur=cur,
            prev=cur,
            eta=ones * (eps if l1 else 2.0 * eps),
            bx=cur,
            bl=ones * float("-inf"),
            bg=torch.zeros_like(cur),
            last_loss=ones * float("-inf"),
            n_up=torch.zeros(m, dtype=torch.long, device=x.device),
            bl_ck=ones * float("-inf"),
            halved_ck=torch.zeros(m, dtype=torch.bool, device=x.device),
            topk=ones * 0.2,
            sp_old=ones * d,
            lgoal=lgoal,
            sgoal=sgoal,
        )
        ck = set(checkpoints(steps)) if not l1 else set(range(0, steps, max(int(0.04 * steps), 1)))
        ck.discard(0)
        ck_prev = 0
        g = None
        for i in range(steps + 1):
            last = i == steps
            if i > 0:
                new = self._step(s, g, first=i == 1)
                s.prev, s.cur = s.cur, new
            cur = s.cur
            if last:
                logits = caller.logits(cur, s.idx)
                obj = self._loss(logits, s.lgoal)
            else:
                x_leaf, logits = caller.forward_with_graph(cur, s.idx)
                with torch.enable_grad():
                    obj = self._loss(logits, s.lgoal)
            lossv = obj.detach()
            succ = s.sgoal.is_success(logits.detach())
            if bool(succ.any()):
                bi = s.idx[succ]
                best_x[bi] = cur[succ].detach()
                best_loss[bi] = lossv[succ]
                found[bi] = True
            if last or bool(succ.all()):
                break
            if bool(succ.any()):
                keep = ~succ
                g = caller.input_grad(obj[keep], x_leaf, s.idx)[keep]  # backward ran on all rows
                s = s.keep(keep)
                lossv = lossv[keep]
            else:
                g = caller.input_grad(obj, x_leaf, s.idx)
            g = threat.apply_mask(g)
            cur = s.cur.detach()
            s.cur = cur
            shape = (-1,) + (1,) * (cur.dim() - 1)
            better = lossv > s.bl
            s.bx = torch.where(better.view(shape), cur, s.bx)
            s.bg = torch.where(better.view(shape), g, s.bg)
            s.bl = torch.where(better, lossv, s.bl)
            if i > 0:
                s.n_up = s.n_up + (lossv > s.last_loss).long()
            s.last_loss = lossv
            if i in ck:
                reset = self._checkpoint(s, i - ck_prev, eps, d, l1)
                ck_prev = i
                if bool(reset.any()):
                    r = reset.view(shape)
                    s.cur = torch.where(r, s.bx, s.cur)
                    g = torch.where(r, s.bg, g)
                    s.last_loss = torch.where(reset, s.bl, s.last_loss)
        # rows never fooled: keep the run's point of highest loss if it beats earlier runs
        rows = s.idx
        if rows.numel():
            better = ~found[rows] & (s.bl > best_loss[rows])
            if bool(better.any()):
                best_x[rows[better]] = s.bx[better]
                best_loss[rows[better]] = s.bl[better]

    def _checkpoint(self, s: _RunState, span: int, eps: float, d: int, l1: bool) -> torch.Tensor:
        """Update the step sizes at a checkpoint; returns the rows to reset to their best."""
        if l1:
            sp = ((s.bx - s.xa).abs().reshape(s.bx.shape[0], -1) > 0).sum(1)
            sp = sp.to(s.eta.dtype)
            reduced = sp / s.sp_old.clamp_min(1) < 0.95
            s.topk = (sp / d / 1.5).clamp(1.0 / d, 1.0)
            s.eta = torch.where(reduced, torch.full_like(s.eta, eps), s.eta / 1.5)
            s.eta = s.eta.clamp(eps / 10, eps)
            s.sp_old = sp
            return reduced
        cond1 = s.n_up.to(s.eta.dtype) < self.rho * span
        cond2 = ~s.halved_ck & (s.bl <= s.bl_ck)
        halve = cond1 | cond2
        s.eta = torch.where(halve, s.eta / 2, s.eta)
        s.halved_ck = halve
        s.bl_ck = s.bl
        s.n_up = torch.zeros_like(s.n_up)
        return halve

    def _step(self, s: _RunState, g: torch.Tensor, first: bool) -> torch.Tensor:
        threat = self.threat
        cur, xa = s.cur, s.xa
        shape = (-1,) + (1,) * (cur.dim() - 1)
        eta = s.eta.view(shape)
        if isinstance(threat.lp, L1):
            lo, hi = threat.box.bounds_for(cur)
            movable = ~(((cur <= lo) & (g < 0)) | ((cur >= hi) & (g > 0)))
            a = (g.abs() * movable).reshape(cur.shape[0], -1)
            d = a.shape[1]
            k = (s.topk * d).ceil().long().clamp(1, d)
            thresh = a.sort(1, descending=True).values.gather(1, (k - 1)[:, None])
            pick = (a >= thresh) & (a > 0)
            direction = g.sign().reshape(a.shape) * pick
            direction = direction / pick.sum(1, keepdim=True).clamp_min(1)
            z = cur + eta * threat.apply_mask(direction.reshape(cur.shape))
            return threat.project_exact(z, xa)
        z = threat.project(cur + eta * threat.lp.steepest(g), xa)
        if first:
            return z
        a = self.momentum
        return threat.project(cur + a * (z - cur) + (1 - a) * (cur - s.prev), xa)

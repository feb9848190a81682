"""Per-point scheduling for the ``standard`` preset: spend passes where points may still break.

After the first stage the evaluation knows, for every point still robust, how close the attacks
came: the logits at the best point found, hence its **margin** (the logit margin
``z_y − max_{i≠y} z_i``, and the probability gap ``p_y − max_{i≠y} p_i`` of the softmax there:
both 0 on the decision boundary) and which wrong classes came closest. A :class:`Ledger` (one
per batch, shared by the stages) keeps, per point, the smallest logit margin seen, the gap
there and the logits; the scheduled attacks read it to decide per point
how many targets, steps and queries it gets:

- :class:`ScheduledAPGD` records, after its runs, the logits at the best point of every point
  it left robust (one forward pass per such point, counted). Targeted (APGD-T), it attacks the
  wrong classes in the order of those logits (the classes that came closest first) instead of
  the clean logits' order: the first ``screen_targets`` targets for every point, then each
  further target only for the points the :func:`close` rule picks among those that got the
  previous one (margins re-measured before each; with ``screen_keep=0.5`` the number of points
  halves per target and the closest go on to all ``n_target_classes``).
- :class:`ScheduledFABT` runs FAB-T only on the points the rule picks (in the ledger's class
  order); the others are handed back unattacked (they cost the attack's two forward passes).
- :class:`ScheduledSquare` spends ``screen`` queries on every point; the points the rule picks
  from the ledger's margins search on to ``n_queries``, and every point does when the screen
  broke at least a ``screen_keep`` share of them.

**The rule** (:func:`close`): a point goes on to a stage's further budget when (a) its
probability gap at the best point any stage found so far is at most ``screen_margin``, or (b)
it is among the ``screen_keep`` share of the points considered closest to the boundary (the
smallest gaps; ties, as in a saturated softmax, broken by the smallest logit margin), or
(c) the stage's screen broke at least that share of the points (Square always; APGD-T with
``screen_escalate``): evidence that the stages before it miss points (masking, a misleading
loss), and then no point is stopped. Otherwise it stops.

This is an empirical rule, not a proof: a point far from the boundary after APGD-CE and the
APGD-T screen could in principle be broken by the targets or queries it no longer gets. What
backs it is measured (docs/evaluation.md, ``benchmarks/autoattack_passes.py``).

>>> ledger = Ledger()
>>> atk = ScheduledAPGD(eps=0.3, targeted=True, screen_targets=1, screen_keep=0.5, ledger=ledger)
"""

from __future__ import annotations

import hashlib
import math

import torch

from ..attacks.apgd import APGD
from ..attacks.base import ModelCaller, closest_share
from ..attacks.fab import FABT
from ..attacks.square import Square
from ..core.goals import Goal

__all__ = [
    "Ledger",
    "ScheduledAPGD",
    "ScheduledFABT",
    "ScheduledSquare",
    "close",
    "logit_margin",
    "probability_gap",
    "share_ledger",
]


def probability_gap(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y − max_{i≠y} p_i`` per row, with ``p = softmax(logits)``: in [−1, 1], 0 on the
    decision boundary, negative when misclassified. Shapes: ``(n, C)``, ``(n,)`` → ``(n,)``."""
    p = logits.detach().float().softmax(1)
    py = p.gather(1, y[:, None]).squeeze(1)
    other = p.scatter(1, y[:, None], float("-inf")).amax(1)
    return py - other


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{i≠y} z_i`` per row (the points' order by it does not depend on the logits'
    scale, unlike its value; it still ranks points whose softmax is saturated)."""
    z = logits.detach().float()
    zy = z.gather(1, y[:, None]).squeeze(1)
    return zy - z.scatter(1, y[:, None], float("-inf")).amax(1)


def _keys(x: torch.Tensor) -> list[bytes]:
    flat = x.detach().reshape(x.shape[0], -1).float().cpu().contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


class Ledger:
    """What the stages of one batch learned per point: the smallest margin (probability gap)
    seen and the logits at that point. Points are identified by their content (the stages see
    subsets of the batch). One ledger per batch; :func:`share_ledger` hands it to the stages.
    """

    def __init__(self) -> None:
        self._rows: dict[bytes, tuple[float, float, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep, per point, the logits with the smallest logit margin so far."""
        lm = logit_margin(logits, y).tolist()
        gap = probability_gap(logits, y).tolist()
        lg = logits.detach().float().cpu()
        for i, k in enumerate(_keys(x)):
            old = self._rows.get(k)
            if old is None or lm[i] < old[0]:
                self._rows[k] = (lm[i], gap[i], lg[i])

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        """Per point: the smallest logit margin recorded (``inf`` when none)."""
        return self._column(x, 0)

    def gap(self, x: torch.Tensor) -> torch.Tensor:
        """Per point: the probability gap where that margin was seen (``inf`` when none)."""
        return self._column(x, 1)

    def _column(self, x: torch.Tensor, j: int) -> torch.Tensor:
        return torch.tensor(
            [self._rows.get(k, (math.inf, math.inf, None))[j] for k in _keys(x)],
            dtype=torch.float32,
            device=x.device,
        )

    def to_state(self) -> dict[str, list]:
        """The rows as JSON-ready lists (exact: float32 values round-trip through doubles), for
        handing a batch's ledger to another process (:mod:`advex.evaluate.sharded`)."""
        keys = list(self._rows)
        return {
            "keys": [k.hex() for k in keys],
            "margin": [self._rows[k][0] for k in keys],
            "gap": [self._rows[k][1] for k in keys],
            "logits": [self._rows[k][2].tolist() for k in keys],
        }

    @classmethod
    def from_state(cls, state: dict[str, list]) -> Ledger:
        """The ledger :meth:`to_state` described."""
        out = cls()
        for k, m, g, row in zip(
            state["keys"], state["margin"], state["gap"], state["logits"], strict=True
        ):
            out._rows[bytes.fromhex(k)] = (float(m), float(g), torch.tensor(row).float())
        return out

    def logits(self, x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """Per point: the recorded logits, else the row of ``fallback``."""
        out = fallback.detach().float().clone()
        for i, k in enumerate(_keys(x)):
            row = self._rows.get(k)
            if row is not None and row[2].numel() == out.shape[1]:
                out[i] = row[2].to(out.device)
        return out


def share_ledger(attacks, ledger: Ledger | None = None) -> Ledger:
    """Give one :class:`Ledger` (a new one unless ``ledger`` is given) to every attack in
    ``attacks`` that takes one."""
    ledger = Ledger() if ledger is None else ledger
    for a in attacks:
        if hasattr(a, "ledger"):
            a.ledger = ledger
    return ledger


def close(
    margin: torch.Tensor, gap: torch.Tensor, screen_keep: float, screen_margin: float
) -> torch.Tensor:
    """The rule's parts (a) and (b): points whose probability ``gap`` is at most
    ``screen_margin``, or among the ``screen_keep`` share closest to the boundary: smallest
    gap, ties (a saturated softmax: gap 1) broken by the smallest logit ``margin`` (unknown,
    ``inf``, rank last). Returns a boolean mask."""
    out = gap.float() <= float(screen_margin)
    n = int(gap.numel())
    if n and screen_keep > 0:
        # closest first: by the gap, ties (a saturated softmax) by the logit margin
        order = torch.argsort(margin.double(), stable=True)
        order = order[torch.argsort(gap.double()[order], stable=True)]
        score = torch.empty(n, dtype=torch.float64, device=gap.device)
        score[order] = -torch.arange(n, dtype=torch.float64, device=gap.device)
        out |= closest_share(score, float(screen_keep))
    return out


def _check_share(name: str, v: float) -> float:
    if not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v}")
    return float(v)


def _check_margin(v: float) -> float:
    if not (float(v) >= 0.0 and math.isfinite(float(v))):
        raise ValueError(f"screen_margin must be a finite number >= 0, got {v}")
    return float(v)


class ScheduledAPGD(APGD):
    """:class:`~advex.attacks.APGD` that feeds and reads a :class:`Ledger` (module docstring).

    Extra arguments: ``screen_targets`` (APGD-T: targets run on every point; None = all
    ``n_target_classes``), ``screen_keep`` and ``screen_margin`` (the :func:`close` rule,
    applied before each further target to the points that got the previous one: with
    ``screen_keep=0.5`` the points attacked halve per target, the closest going deepest),
    ``screen_escalate`` (None: off; a share: every point gets every target when the screen
    broke at least that share of the points), ``ledger`` (usually set by
    :func:`share_ledger`).
    the targets follow the clean logits and the rule uses the margins after the screen.

    Cost: APGD's, plus 1 forward per point left robust (its margin), plus, targeted, the
    remaining ``n_target_classes − screen_targets`` runs only on the points picked.
    """

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        screen_targets: int | None = None,
        screen_keep: float = 0.1,
        screen_margin: float = 0.0,
        screen_escalate: float | None = None,
        ledger: Ledger | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        if screen_escalate is not None:
            screen_escalate = _check_share("screen_escalate", screen_escalate)
        self.screen_escalate = screen_escalate
        if screen_targets is not None:
            if isinstance(screen_targets, bool) or int(screen_targets) != screen_targets:
                raise ValueError(f"screen_targets must be an integer, got {screen_targets!r}")
            if int(screen_targets) < 1:
                raise ValueError(f"screen_targets must be >= 1, got {screen_targets}")
            screen_targets = int(screen_targets)
        self.screen_targets = screen_targets
        self.screen_keep = _check_share("screen_keep", screen_keep)
        self.screen_margin = _check_margin(screen_margin)
        self.ledger = ledger

    def _record(self, caller: ModelCaller, x, goal: Goal, best_x, found):
        """Margins at the best points of the rows not fooled (1 forward each, counted); the
        ledger keeps them. Returns per row the logit margin and the probability gap (``-inf``
        for the rows skipped)."""
        lm = torch.full((x.shape[0],), float("-inf"), device=x.device)
        gap = lm.clone()
        idx = (~found).nonzero().squeeze(1)
        if idx.numel():
            logits = caller.logits(best_x[idx], idx)
            lm[idx] = logit_margin(logits, goal.y[idx]).to(lm.device)
            gap[idx] = probability_gap(logits, goal.y[idx]).to(lm.device)
            if self.ledger is not None:
                self.ledger.record(x[idx], goal.y[idx], logits)
        return lm, gap

    def _attack(self, caller: ModelCaller, x, goal: Goal, done, clean_logits):
        if not (self.targeted and not goal.targeted):
            best_x = super()._attack(caller, x, goal, done, clean_logits)
            if self.ledger is not None:
                self._record(caller, x, goal, best_x, done)
            return best_x
        rng = self._rng(x)
        best_x = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        found = done.clone()
        k = min(self.n_target_classes, clean_logits.shape[1] - 1)
        rank_from = clean_logits if self.ledger is None else self.ledger.logits(x, clean_logits)
        others = rank_from.to(clean_logits.device).scatter(1, goal.y[:, None], float("-inf"))
        ranked = others.argsort(1, descending=True)[:, :k]
        screen = k if self.screen_targets is None else min(self.screen_targets, k)
        allowed = torch.ones_like(found)
        n_start = int((~found).sum())
        escalated = False
        for j in range(k):
            if j >= screen and not escalated:
                # past the screen: before each further target the rule picks, among the points
                # that got the previous one, those that go on (margins re-measured, 1 forward)
                margin, gap = self._record(caller, x, goal, best_x, found | ~allowed)
                esc = self.screen_escalate
                if j == screen and esc is not None:
                    escalated = int((found & ~done).sum()) >= max(1.0, esc * n_start)
                if not escalated:
                    live = (~found & allowed).nonzero().squeeze(1)
                    allowed = torch.zeros_like(found)
                    if live.numel():
                        m, g = margin[live], gap[live]
                        if self.ledger is not None:  # the smallest seen by any stage
                            m = self.ledger.margin(x[live]).to(m.device)
                            g = self.ledger.gap(x[live]).to(m.device)
                        allowed[live] = close(m, g, self.screen_keep, self.screen_margin)
            for r in range(self.restarts):
                idx = (~found & allowed).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                if r > 0 and self.restart_keep < 1.0:
                    idx = idx[closest_share(best_loss[idx], self.restart_keep)]
                sgoal = goal[idx]
                lgoal = Goal(sgoal.y, ranked[idx, j])
                self._run(
                    caller, x, idx, lgoal, sgoal, (rng, ("start", j, r)), best_x, best_loss, found
                )
        if self.ledger is not None:
            self._record(caller, x, goal, best_x, found | ~allowed)
        return best_x


class ScheduledFABT(FABT):
    """:class:`~advex.attacks.FABT` run only on the points the :func:`close` rule picks from
    the :class:`Ledger`'s margins, with targets in the ledger's class order (module docstring).
    The other points are handed back unattacked. Without a ledger every point is attacked.

    Extra arguments: ``screen_keep``, ``screen_margin`` (the rule), ``ledger``.
    """

    name = "fab-t-scheduled"

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        screen_keep: float = 0.1,
        screen_margin: float = 0.0,
        ledger: Ledger | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.screen_keep = _check_share("screen_keep", screen_keep)
        self.screen_margin = _check_margin(screen_margin)
        self.ledger = ledger
        self._rank_logits: torch.Tensor | None = None

    def _plan(self, goal, clean_logits):
        return super()._plan(goal, clean_logits if self._rank_logits is None else self._rank_logits)

    def _attack(self, caller: ModelCaller, x, goal: Goal, done, clean_logits):
        if self.ledger is None or goal.targeted:
            return super()._attack(caller, x, goal, done, clean_logits)
        pick = torch.zeros_like(done)
        live = (~done).nonzero().squeeze(1)
        if live.numel():
            m = self.ledger.margin(x[live]).to(x.device)
            g = self.ledger.gap(x[live]).to(x.device)
            pick[live] = close(m, g, self.screen_keep, self.screen_margin)
        self._rank_logits = self.ledger.logits(x, clean_logits).to(clean_logits.device)
        try:
            return super()._attack(caller, x, goal, done | ~pick, clean_logits)
        finally:
            self._rank_logits = None


class ScheduledSquare(Square):
    """:class:`~advex.attacks.Square` whose silent screen lets on the points the :func:`close`
    rule picks from the :class:`Ledger`'s margins (the gradient stages' margins, not Square's
    own after a few random queries); a screen that broke at least ``screen_keep`` of the points
    lets every point on (module docstring). Without a ledger: Square's own rule. Extra
    arguments: ``screen_margin``, ``ledger``."""

    name = "square-scheduled"

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        screen_margin: float = 0.0,
        ledger: Ledger | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.screen_margin = _check_margin(screen_margin)
        self.ledger = ledger
        self._close: torch.Tensor | None = None

    def screen_select(self, obj: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self._close is None:  # no ledger: Square's own rule
            return super().screen_select(obj, idx)
        return self._close[idx.to(self._close.device)].to(obj.device)

    def _attack(self, caller: ModelCaller, x, goal: Goal, done, clean_logits):
        if self.ledger is None or goal.targeted:
            return super()._attack(caller, x, goal, done, clean_logits)
        m = self.ledger.margin(x).to(x.device)
        self._close = close(m, self.ledger.gap(x).to(x.device), 0.0, self.screen_margin)
        # (b) by the ledger too: the closest share among the points attacked
        live = (~done).nonzero().squeeze(1)
        if live.numel() and self.screen_keep > 0:
            self._close[live] |= closest_share(-m[live], self.screen_keep)
        try:
            return super()._attack(caller, x, goal, done, clean_logits)
        finally:
            self._close = None

"""The standard preset's per-point scheduling rule (advex.evaluate.schedule): a point far from
the boundary is stopped after the screen only under the stated rule; a point close to it gets
the full budget."""

from __future__ import annotations

import pytest
import torch

from advex.evaluate import PRESETS, evaluate
from advex.evaluate.presets import STANDARD_RULE
from advex.evaluate.schedule import (
    Ledger,
    ScheduledAPGD,
    ScheduledFABT,
    ScheduledSquare,
    close,
    logit_margin,
    probability_gap,
    share_ledger,
)


def _points(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def _margins(model, x, y):
    with torch.no_grad():
        return probability_gap(model(x), y)


def test_probability_gap_and_the_rule():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    m = probability_gap(logits, torch.tensor([0, 0, 0]))
    p = logits.softmax(1)
    want = [float(p[0, 0] - p[0, 1]), 0.0, float(p[2, 0] - p[2, 2])]
    assert m.tolist() == pytest.approx(want) and m[2] < 0
    assert logit_margin(logits, torch.tensor([0, 0, 0])).tolist() == [2.0, 0.0, -3.0]
    # (a) by the probability gap, (b) by the rank of the gap, then of the logit margin
    gap = torch.tensor([0.05, 0.5, 0.9, 0.3, float("inf")])
    margin = torch.tensor([9.0, 0.5, 3.0, 0.2, float("inf")])
    assert close(margin, gap, 0.0, 0.1).tolist() == [True, False, False, False, False]
    assert close(margin, gap, 0.4, 0.1).tolist() == [True, False, False, True, False]
    # a saturated softmax (every gap 1): the logit margin ranks the points
    assert close(margin, torch.ones(5), 0.4, 0.0).tolist() == [False, True, False, True, False]
    assert close(margin, gap, 0.0, 0.0).tolist() == [False] * 5
    with pytest.raises(ValueError, match="screen_margin"):
        ScheduledAPGD(eps=0.1, targeted=True, screen_margin=-1)
    with pytest.raises(ValueError, match="screen_keep"):
        ScheduledFABT(eps=0.1, screen_keep=2.0)
    with pytest.raises(ValueError, match="screen_targets"):
        ScheduledAPGD(eps=0.1, targeted=True, screen_targets=0)


def test_apgd_t_far_points_stop_after_the_screen_close_ones_get_every_target(tiny_model):
    # ε so small that no point breaks: the margins after the screen are about the clean ones
    x, y = _points(tiny_model)
    m = _margins(tiny_model, x, y)
    tau = float(m.median())
    steps, screen, k = 5, 2, 9
    atk = ScheduledAPGD(
        eps=1e-4,
        targeted=True,
        steps=steps,
        n_target_classes=k,
        screen_targets=screen,
        screen_keep=0.0,
        screen_margin=tau,
    )
    res = atk(tiny_model, x, y)
    assert not bool(res.success.any())
    closeby = m <= tau - 1e-3
    far = m > tau + 1e-3
    assert bool(closeby.any()) and bool(far.any())
    # the full budget: every target's `steps` gradients; stopped: only the screen's
    assert bool((res.gradients[closeby] == k * steps).all())
    assert bool((res.gradients[far] == screen * steps).all())
    # the standard preset's form: 1 target for all, then the closest half goes on per target,
    # so the closest point gets every target and the farthest only the first
    halving = ScheduledAPGD(
        eps=1e-4, targeted=True, steps=steps, n_target_classes=k, screen_targets=1, screen_keep=0.5
    )(tiny_model, x, y)
    assert int(halving.gradients[m.argmin()]) == k * steps
    assert int(halving.gradients[m.argmax()]) == steps
    assert int(halving.gradients.sum()) < 3 * steps * len(y)
    # without a screen every point gets every target, as APGD-T
    full = ScheduledAPGD(eps=1e-4, targeted=True, steps=steps, n_target_classes=k)(tiny_model, x, y)
    assert bool((full.gradients == k * steps).all())


def test_apgd_t_screen_that_breaks_many_points_gives_everyone_every_target(tiny_model):
    # rule (c), when asked for: a screen that breaks many points stops nobody
    x, y = _points(tiny_model)
    kw = dict(targeted=True, steps=5, n_target_classes=9, screen_targets=2, screen_keep=0.0)
    res = ScheduledAPGD(eps=0.02, screen_margin=0.0, screen_escalate=0.1, **kw)(tiny_model, x, y)
    assert 0.1 * len(y) <= int(res.success.sum()) < len(y)
    robust = ~res.success
    assert bool((res.gradients[robust] == 9 * 5).all())
    # without (c) the same points stop after the screen
    res = ScheduledAPGD(eps=0.02, screen_margin=0.0, **kw)(tiny_model, x, y)
    assert bool((res.gradients[~res.success] == 2 * 5).all())


def test_ledger_orders_targets_and_feeds_later_stages(tiny_model):
    x, y = _points(tiny_model, n=12)
    ledger = Ledger()
    ce = ScheduledAPGD(eps=1e-4, steps=3, ledger=ledger)
    res = ce(tiny_model, x, y)
    assert len(ledger) == len(y) and not bool(res.success.any())
    # one extra forward per point left robust: its margin at the best point
    plain = ScheduledAPGD(eps=1e-4, steps=3)(tiny_model, x, y)
    assert bool((res.queries == plain.queries + 1).all())
    # the ledger's margins are those at the best points, never above the clean ones (+tol)
    with torch.no_grad():
        clean_margin = logit_margin(tiny_model(x), y)
    assert bool((ledger.margin(x) <= clean_margin + 1e-3).all())
    # fabricated logits: the ledger's class order is what APGD-T attacks first
    fake = torch.zeros(len(y), 10)
    fake[torch.arange(len(y)), y] = 5.0
    want = (y + 3) % 10
    fake[torch.arange(len(y)), want] = 4.9
    ledger.record(x, y, fake)
    ranked = ledger.logits(x, torch.zeros(len(y), 10))
    assert bool((ranked.scatter(1, y[:, None], -1e9).argmax(1) == want).all())


def test_fab_and_square_spend_only_on_close_points(tiny_model):
    x, y = _points(tiny_model, n=10)
    closeby = torch.zeros(len(y), dtype=torch.bool)
    closeby[:3] = True
    fake = torch.zeros(len(y), 10)
    fake[torch.arange(len(y)), y] = 1.0
    fake[torch.arange(len(y)), (y + 1) % 10] = torch.where(closeby, 0.99, 0.0)
    fake[torch.arange(len(y)), (y + 2) % 10] = -1.0
    # margins: 0.005 for the close points, 0.5 for the others
    fab = ScheduledFABT(eps=1e-4, steps=4, n_target_classes=2, screen_keep=0.0, screen_margin=0.1)
    sq = ScheduledSquare(
        eps=1e-4, n_queries=60, screen=10, screen_keep=0.0, screen_margin=0.1, seed=0
    )
    ledger = share_ledger([fab, sq])
    assert fab.ledger is ledger and sq.ledger is ledger
    ledger.record(x, y, fake)
    assert ledger.margin(x)[:3].max() < 0.1 < ledger.margin(x)[3:].min()
    rf = fab(tiny_model, x, y)
    assert bool((rf.gradients[~closeby] == 0).all()) and bool((rf.gradients[closeby] > 0).all())
    rs = sq(tiny_model, x, y)
    assert not bool(rs.success.any())
    # the close points search on to n_queries, the far ones stop after the screen
    assert bool((rs.queries[closeby] == rs.queries[closeby].max()).all())
    assert int(rs.queries[closeby].min()) >= 60
    assert int(rs.queries[~closeby].max()) <= 10 + 2


def test_standard_preset_rule_is_documented_and_applied(mnist_model, mnist_test):
    stages = {s["name"]: s for s in PRESETS["standard"].describe("linf")["stages"]}
    assert stages["apgd-t"]["params"]["screen_targets"] == STANDARD_RULE["screen_targets"]
    assert stages["square"]["params"]["screen"] == STANDARD_RULE["square_screen"]
    assert stages["square"]["black_box"] is True
    # in an evaluation the stages share one ledger per batch: the scaled standard preset runs
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    ev = evaluate(
        mnist_model, (x, y), eps=0.1, preset=PRESETS["standard"].scaled(0.05), checks=False
    )
    assert ev.stage_names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert 0 < ev.robust_accuracy < ev.clean_accuracy

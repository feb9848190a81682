"""Screens: FAB-T's ``screen_targets`` and Square's ``screen`` stop early when they break
nothing, and are exactly the unscreened attack when they do (advex's ``standard`` preset)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advex.attacks.fab import FABT
from advex.attacks.square import Square
from advex.defenses.transforms import BitDepthReduction
from advex.evaluate.ensemble import evaluate
from advex.evaluate.presets import PRESETS, Preset, Stage


@pytest.fixture(scope="module")
def masked(mnist_model):
    """4-bit input quantisation: zero input gradients (no BPDA here), a Square target."""
    return nn.Sequential(BitDepthReduction(bits=4), mnist_model).eval()


def _clean_ok(model, x, y):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok], y[ok]


def test_square_screen_stops_when_nothing_breaks(mnist_model, mnist_test):
    x, y = _clean_ok(mnist_model, *(t[:16] for t in mnist_test))
    screened = Square(eps=0.01, n_queries=200, screen=50, seed=0)(mnist_model, x, y)
    full = Square(eps=0.01, n_queries=200, seed=0)(mnist_model, x, y)
    assert not bool(full.success.any()) and not bool(screened.success.any())
    # 50 queries of search per point instead of 200 (plus the same fixed clean/final passes)
    assert bool((full.queries - screened.queries == 150).all())


def test_square_screen_keep_searches_on_with_the_closest_points(mnist_model, mnist_test):
    x, y = _clean_ok(mnist_model, *(t[:16] for t in mnist_test))
    n = len(y)
    screened = Square(eps=0.01, n_queries=200, screen=50, screen_keep=0.25, seed=0)(
        mnist_model, x, y
    )
    stopped = Square(eps=0.01, n_queries=200, screen=50, seed=0)(mnist_model, x, y)
    extra = screened.queries - stopped.queries
    on = extra > 0
    # ceil(25 % of n) points got the remaining 150 queries, the others none
    assert int(on.sum()) == -(-n // 4) and bool((extra[on] == 150).all())
    # they are the points closest to success after the screen
    with torch.no_grad():
        z = mnist_model(stopped.x_adv)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    gap = z.gather(1, y[:, None]).squeeze(1) - other
    assert set(gap.argsort()[: int(on.sum())].tolist()) == set(on.nonzero().squeeze(1).tolist())
    with pytest.raises(ValueError, match="screen_keep"):
        Square(eps=0.3, screen=10, screen_keep=1.5)


def test_square_screen_that_breaks_a_point_is_the_full_run(masked, mnist_test):
    x, y = _clean_ok(masked, *(t[:12] for t in mnist_test))
    screened = Square(eps=0.12, n_queries=300, screen=30, seed=3)(masked, x, y)
    full = Square(eps=0.12, n_queries=300, seed=3)(masked, x, y)
    assert 0 < int(full.success.sum()) < len(y)
    assert torch.equal(screened.x_adv, full.x_adv)
    assert torch.equal(screened.queries, full.queries)


def test_fabt_screen_targets(mnist_model, mnist_test):
    x, y = _clean_ok(mnist_model, *(t[:16] for t in mnist_test))
    # ε = 0.02: nothing breaks, so the screen stops after 2 of 6 targets
    kw = dict(norm="linf", steps=10, n_target_classes=6, seed=0)
    full = FABT(eps=0.02, **kw)(mnist_model, x, y)
    screened = FABT(eps=0.02, screen_targets=2, **kw)(mnist_model, x, y)
    assert not bool(full.success.any()) and not bool(screened.success.any())
    assert int(screened.gradients.sum()) * 2 < int(full.gradients.sum())
    # ε = 0.15: the first targets break points, so the screened run is the full one
    full = FABT(eps=0.15, **kw)(mnist_model, x, y)
    screened = FABT(eps=0.15, screen_targets=2, **kw)(mnist_model, x, y)
    assert bool(full.success.any())
    assert torch.equal(screened.x_adv, full.x_adv)
    assert torch.equal(screened.gradients, full.gradients)


def test_screen_arguments_are_checked():
    with pytest.raises(ValueError, match="screen_targets needs a fixed budget"):
        FABT(norm="linf", screen_targets=3)
    with pytest.raises(ValueError, match="screen_targets must be"):
        FABT(eps=0.3, screen_targets=0)
    with pytest.raises(ValueError, match="screen must be an integer"):
        Square(eps=0.3, n_queries=100, screen=100)


def test_standard_preset_screens_and_autoattack_preset_does_not():
    std = {s["name"]: s["params"] for s in PRESETS["standard"].describe("linf")["stages"]}
    aa = {s["name"]: s["params"] for s in PRESETS["autoattack"].describe("linf")["stages"]}
    assert std["fab-t"]["n_target_classes"] == 9 and std["fab-t"]["screen_targets"] == 1
    # the per-point rule (advex.evaluate.schedule): 100 queries for all, AutoAttack's 5,000
    # for the points closest to breaking (was 1,000 / 10,000 before the rule)
    assert std["square"]["n_queries"] == 5000 and std["square"]["screen"] == 100
    assert std["square"]["screen_keep"] == 0.1
    assert "screen_targets" not in aa["fab-t"] and "screen" not in aa["square"]
    # scaling a preset scales the screen with the budget
    small = {
        s["name"]: s["params"] for s in PRESETS["standard"].scaled(0.1).describe("linf")["stages"]
    }
    assert small["square"]["n_queries"] == 500 and small["square"]["screen"] == 10
    # scaled down until the screen is the whole budget: no screen left
    tiny = PRESETS["standard"].scaled(1e-4).describe("linf")["stages"][-1]["params"]
    assert tiny["n_queries"] == 1 and "screen" not in tiny and "screen_keep" not in tiny


def test_square_screen_in_an_evaluation_of_a_masked_model(masked, mnist_test):
    # zero gradients (no BPDA: adapt=False): the evaluation drops the blind PGD stage and
    # keeps the black-box one; the 30-query screen breaks some points, so Square runs on to
    # its full 300 queries on the others
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    preset = Preset(
        "t",
        (
            Stage("pgd", "PGD", {"steps": 5}),
            Stage(
                "square",
                "Square",
                {"n_queries": 300, "screen": 30},
                black_box=True,
                norms=("linf", "l2"),
            ),
        ),
    )
    ev = evaluate(masked, (x, y), eps=0.12, preset=preset, checks=False, adapt=False)
    (sq,) = ev.per_attack
    assert ev.access["evidence"]["gradient"] == "zero"
    assert 0 < sq.n_broken < sq.n_attacked
    assert sq.queries > 31 * sq.n_attacked

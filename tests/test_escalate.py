"""advex.evaluate.escalate.Escalating: the full budget runs only where the screen finds points."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advex.attacks.gradient import PGD
from advex.attacks.square import Square
from advex.defenses.transforms import BitDepthReduction
from advex.evaluate.ensemble import evaluate
from advex.evaluate.escalate import Escalating
from advex.evaluate.presets import Preset, Stage


class Counting:
    """Wraps an attack and records the batch sizes it was called on."""

    def __init__(self, attack):
        self.attack, self.calls = attack, []

    def __call__(self, model, x, y, target=None):
        self.calls.append(int(x.shape[0]))
        return self.attack(model, x, y, target)


def test_no_escalation_when_the_screen_finds_nothing(mnist_model, mnist_test):
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    full = Counting(PGD(eps=0.3, steps=10))
    esc = Escalating(PGD(eps=0.001, steps=2), full)
    res = esc(mnist_model, x, y)
    assert not esc.escalated and full.calls == []
    assert not bool((res.success & res.clean_correct).any())


def test_escalation_runs_full_on_the_rest_and_merges(mnist_model, mnist_test):
    x, y = mnist_test[0][:32], mnist_test[1][:32]
    screen = PGD(eps=0.1, steps=3, seed=0)
    alone = screen(mnist_model, x, y)
    assert 0 < int((alone.success & alone.clean_correct).sum()) < 32
    full = Counting(PGD(eps=0.3, steps=20, seed=1))
    esc = Escalating(PGD(eps=0.1, steps=3, seed=0), full)
    res = esc(mnist_model, x, y)
    assert esc.escalated and full.calls == [int((~alone.success).sum())]
    # the screen's wins are kept as they were, the full attack adds the others
    assert bool(res.success[alone.success].all())
    assert torch.equal(res.x_adv[alone.success], alone.x_adv[alone.success])
    assert int(res.success.sum()) > int(alone.success.sum())
    # success is what the model says about the merged adversarials
    with torch.no_grad():
        pred = mnist_model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)
    assert bool(((res.x_adv - x).abs().amax((1, 2, 3)) <= 0.3 + 1e-6).all())
    # the rows the full attack ran on paid for both runs
    rest = ~alone.success
    assert bool((res.gradients[rest] > alone.gradients[rest]).all())
    assert torch.equal(res.gradients[alone.success], alone.gradients[alone.success])


def test_escalating_rejects_non_attacks():
    with pytest.raises(TypeError, match="screen must be an attack"):
        Escalating(3, PGD(eps=0.1))


def test_square_screen_escalates_on_a_masked_model(mnist_model, mnist_test):
    # 4-bit input quantisation: zero input gradients, so PGD (no BPDA: adapt=False) breaks
    # nothing at ε = 0.12; a 30-query Square screen breaks some points, so the full Square budget runs on the survivors
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    masked = nn.Sequential(BitDepthReduction(bits=4), mnist_model).eval()
    preset = Preset(
        "t",
        (
            Stage("pgd", "PGD", {"steps": 5}),
            Stage(
                "square",
                "Square",
                {"n_queries": 30},
                black_box=True,
                norms=("linf", "l2"),
                escalate={"n_queries": 300},
            ),
        ),
    )
    ev = evaluate(masked, (x, y), eps=0.12, preset=preset, checks=False, adapt=False)
    pgd, sq = ev.per_attack
    assert pgd.n_broken == 0 and 0 < sq.n_broken
    assert ev.preset["stages"][1]["escalate_to"]["n_queries"] == 300
    # more queries than the screen alone could have spent: the full budget ran on survivors
    assert sq.queries > 31 * sq.n_attacked

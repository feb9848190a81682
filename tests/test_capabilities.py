"""The capability probe on models whose gradients carry nothing or whose outputs are not
scores: each is detected before any attack runs, routed to the black-box stages, and the
masking checks name the decision-based attacks (test_blackbox_eval.py covers no-graph and
one-hot outputs without a graph, and the CLI)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advex.evaluate import evaluate
from advex.evaluate.capabilities import probe_capability
from advex.evaluate.checks import masking_checks
from advex.evaluate.presets import PRESETS
from advex.models import LabelBlackBox
from advex.threats import ThreatModel

THREAT = ThreatModel("linf", eps=0.3)
DECISION = ("HopSkipJump", "RayS", "BoundaryAttack")


class StraightThroughOneHot(nn.Module):
    """argmax → one_hot, with a gradient graph whose gradient is exactly zero."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        s = self.model(x)
        return nn.functional.one_hot(s.argmax(1), 10).to(s.dtype) + 0 * s


class ConstantShift(nn.Module):
    """Detached scores plus the same differentiable term on every logit: the logits'
    gradients are constant (all ones), the margin's and cross-entropy's are zero."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).detach() + x.flatten(1).sum(1, keepdim=True)


class Decoy(nn.Module):
    """Detached scores plus a fixed linear term: a gradient that never changes and says
    nothing about the scores."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(784, 10, generator=g) * 1e-3, requires_grad=False)

    def forward(self, x):
        return self.model(x).detach() + x.flatten(1) @ self.w


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class NaNGradient(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_NaNGrad.apply(x))


class Labels(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).argmax(1)


@pytest.fixture(scope="module")
def few(mnist_correct):
    return mnist_correct[0][:6], mnist_correct[1][:6]


def _evaluate(model, few):
    return evaluate(model, few, eps=0.3, preset=PRESETS["standard"].scaled(0.2))


def test_straight_through_one_hot_goes_to_decision_attacks(mnist_model, few):
    model = StraightThroughOneHot(mnist_model).eval()
    cap = probe_capability(model, *few)
    assert cap.exposes == "labels"
    checks = masking_checks(model, *few, THREAT)
    assert len(checks) == 1 and not checks[0].passed
    assert all(name in checks[0].recommendation for name in DECISION)
    ev = _evaluate(model, few)
    assert ev.stage_names == ["rays", "hsja-linf"] and ev.verdict == "UPPER-BOUND"
    assert ev.robust_accuracy == 0.0 and "upper bound" in ev.access["note"]


@pytest.mark.parametrize(
    ("wrapper", "what"),
    [(ConstantShift, "zero"), (Decoy, "constant"), (NaNGradient, "not finite")],
)
def test_gradients_that_carry_nothing_go_to_black_box_stages(mnist_model, few, wrapper, what):
    model = wrapper(mnist_model).eval()
    cap = probe_capability(model, *few)
    assert (cap.exposes, cap.evidence["gradient"]) == ("scores", what)
    ev = _evaluate(model, few)
    # white-box stages would climb nothing and report ~100% robust: Square breaks them all
    assert ev.stage_names == ["square"] and ev.verdict == "UPPER-BOUND"
    assert ev.robust_accuracy == 0.0
    rec = ev.checks[0].recommendation
    assert not ev.checks[0].passed and "BPDA" in rec
    assert all(name in rec for name in DECISION)


def test_masking_checks_still_explain_zero_gradients(mnist_model, few):
    checks = masking_checks(ConstantShift(mnist_model).eval(), *few, THREAT, steps=2, restarts=2)
    failed = {c.name: c for c in checks if not c.passed}
    assert checks[0].name == "usable_gradients" and "HopSkipJump" in checks[0].recommendation
    assert "non-differentiable" in failed["gradients"].evidence
    assert "HopSkipJump" in failed["gradients"].recommendation


def test_usable_gradients_are_not_flagged(mnist_model, few):
    x, y = few
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()  # constant, but true
    for model in (mnist_model, linear):
        cap = probe_capability(model, x, y)
        assert cap.exposes == "gradients", cap.reason


def test_one_label_per_sample_is_refused_up_front_with_the_wrapper(mnist_model, few):
    model = Labels(mnist_model).eval()
    with pytest.raises(ValueError, match="LabelBlackBox"):
        probe_capability(model, *few)
    with pytest.raises(ValueError, match="HopSkipJump"):
        _evaluate(model, few)
    box = LabelBlackBox(model, num_classes=10)
    assert probe_capability(box, *few).exposes == "labels"

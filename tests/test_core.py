"""Core primitives: norms, threat model, losses, goals, result, model guard."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advex.core import AttackResult, Goal, dlr, margin
from advex.core.losses import cross_entropy
from advex.models import Normalize, attack_mode, check_logits
from advex.models.guards import ProbabilityOutputWarning
from advex.threats import ThreatModel, get_norm

NORMS = ["linf", "l2", "l1"]

shapes = st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))


def _tensor(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@settings(max_examples=60, deadline=None)
@given(shape=shapes, norm=st.sampled_from(NORMS), eps=st.floats(0.0, 5.0), seed=st.integers(0, 99))
def test_projection_lands_in_ball_and_is_idempotent(shape, norm, eps, seed):
    n = get_norm(norm)
    delta = _tensor(shape, seed, scale=3.0)
    p = n.project(delta, eps)
    assert (n.measure(p) <= eps + 1e-5).all()
    torch.testing.assert_close(n.project(p, eps), p, atol=1e-6, rtol=1e-5)
    inside = n.measure(delta) <= eps
    torch.testing.assert_close(p[inside], delta[inside])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, eps=st.floats(0.01, 5.0), seed=st.integers(0, 99))
def test_l1_projection_is_the_euclidean_projection(shape, eps, seed):
    # Independent check: the projection is soft-thresholding at the θ solving sum(|v|-θ)+ = eps,
    # found here by bisection rather than by sorting.
    delta = _tensor(shape, seed, scale=2.0)
    p = get_norm("l1").project(delta, eps)
    for v, out in zip(delta.reshape(shape[0], -1), p.reshape(shape[0], -1), strict=True):
        if v.abs().sum() <= eps:
            torch.testing.assert_close(out, v)
            continue
        lo, hi = 0.0, float(v.abs().max())
        for _ in range(100):
            mid = (lo + hi) / 2
            if float((v.abs() - mid).clamp_min(0).sum()) > eps:
                lo = mid
            else:
                hi = mid
        ref = (v.abs() - hi).clamp_min(0) * v.sign()
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, norm=st.sampled_from(NORMS), eps=st.floats(0.0, 2.0), seed=st.integers(0, 99))
def test_random_start_inside_ball_and_bounds_and_deterministic(shape, norm, eps, seed):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    t = ThreatModel(norm, eps=eps)
    a = t.random_start(x, torch.Generator().manual_seed(1))
    b = t.random_start(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert t.contains(a, x).all()


@pytest.mark.parametrize("norm", NORMS)
def test_steepest_direction_has_unit_norm_and_ascends(norm):
    n = get_norm(norm)
    g = _tensor((4, 1, 8, 8), 0)
    d = n.steepest(g)
    torch.testing.assert_close(n.measure(d), torch.ones(4), atol=1e-5, rtol=0)
    assert ((g * d).flatten(1).sum(1) > 0).all()
    if norm == "l2":  # steepest ascent attains the dual norm
        torch.testing.assert_close((g * d).flatten(1).sum(1), n.dual(g))
    if norm == "linf":
        torch.testing.assert_close((g * d).flatten(1).sum(1), n.dual(g))


def test_uniform_l2_random_start_fills_the_ball():
    # radius of a uniform sample in a d-ball: P(r <= eps/2) = 2^-d, so nearly all at the rim
    x = torch.full((500, 1, 2, 2), 0.5)
    t = ThreatModel("l2", eps=0.2)
    r = t.distance(t.random_start(x, torch.Generator().manual_seed(0)), x)
    assert float((r < 0.1).float().mean()) < 0.15
    assert float(r.max()) <= 0.2 + 1e-6


def test_threat_model_validation():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ThreatModel("linf", eps=-0.1)
    with pytest.raises(ValueError, match="unknown norm"):
        ThreatModel("l7", eps=0.1)
    with pytest.raises(ValueError, match="low < high"):
        ThreatModel("linf", eps=0.1, bounds=(1, 0))
    with pytest.raises(TypeError, match="boolean"):
        ThreatModel("linf", eps=0.1, mask=torch.ones(3))
    with pytest.raises(ValueError, match="no feature"):
        ThreatModel("linf", eps=0.1, mask=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ThreatModel("linf", eps=math.nan)


def test_threat_model_input_checks():
    t = ThreatModel("linf", eps=0.1)
    with pytest.raises(TypeError, match="floating-point"):
        t.check_inputs(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        t.check_inputs(torch.tensor([[0.5, math.nan]]))
    with pytest.raises(ValueError, match="outside the threat model's bounds"):
        t.check_inputs(torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="batch dimension"):
        t.check_inputs(torch.zeros(3))
    with pytest.raises(ValueError, match="empty batch"):
        t.check_inputs(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        t.check_inputs([[0.1]])


def test_mask_freezes_features():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    t = ThreatModel("l2", eps=1.0, mask=mask)
    x = torch.full((3, 1, 4, 4), 0.5)
    out = t.project(x + torch.randn(3, 1, 4, 4), x)
    assert torch.equal(out[:, :, 2:], x[:, :, 2:])
    assert t.contains(out, x).all()
    moved = x.clone()
    moved[:, :, 3] += 0.1
    assert not t.contains(moved, x).any()


def test_losses_sign_conventions():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = torch.tensor([0, 0])
    g = Goal(y)
    m = margin(logits, g)
    torch.testing.assert_close(m, torch.tensor([-2.0, 2.0]))  # positive iff misclassified
    assert (g.is_success(logits) == (m > 0)).all()
    t = Goal(y, torch.tensor([1, 1]))
    torch.testing.assert_close(margin(logits, t), torch.tensor([-2.0, 1.0]))
    assert (margin(logits, t, kappa=0.5) <= 0.5).all()
    # DLR is invariant to shifting and scaling the logits
    torch.testing.assert_close(dlr(logits, g), dlr(7 * logits + 3, g))
    torch.testing.assert_close(dlr(logits, t), dlr(7 * logits + 3, t))
    # targeted CE is minus the CE of the target: ascending it raises the target's probability
    ce_t = cross_entropy(logits, t)
    assert (ce_t < 0).all()


def test_normalize_module():
    n = Normalize([0.5, 0.25], [0.5, 0.25])
    x = torch.ones(2, 2, 3, 3)
    out = n(x)
    torch.testing.assert_close(out[:, 0], torch.ones(2, 3, 3))
    torch.testing.assert_close(out[:, 1], torch.full((2, 3, 3), 3.0))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize([0.0], [0.0])
    with pytest.raises(ValueError, match="mean has 2 values"):
        Normalize([0.0, 1.0], [1.0])


def test_attack_mode_restores_everything():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 2))
    m.train()
    m[2].weight.requires_grad_(False)
    m[0].weight.grad = torch.ones(3, 3)
    with pytest.warns(UserWarning, match="train mode"):
        with attack_mode(m):
            assert not m.training and not m[1].training
            assert not any(p.requires_grad for p in m.parameters())
    assert m.training and m[1].training
    assert m[0].weight.requires_grad and not m[2].weight.requires_grad
    assert torch.equal(m[0].weight.grad, torch.ones(3, 3))


def test_check_logits_warns_on_probabilities():
    with pytest.warns(ProbabilityOutputWarning, match="probabilities"):
        check_logits(torch.softmax(torch.randn(4, 10), 1))
    with pytest.raises(ValueError, match="shape"):
        check_logits(torch.randn(4))
    with pytest.raises(ValueError, match="NaN"):
        check_logits(torch.tensor([[math.nan, 1.0]]))


def _result(n=4):
    z = torch.zeros(n)
    return AttackResult(
        x_adv=torch.zeros(n, 2),
        success=torch.tensor([True, True, False, False]),
        y=torch.zeros(n, dtype=torch.long),
        target=None,
        norms=torch.tensor([0.1, 0.5, 0.0, 0.0]),
        clean_pred=torch.zeros(n, dtype=torch.long),
        clean_conf=z + 0.9,
        adv_pred=torch.tensor([1, 1, 0, 0]),
        adv_conf=z + 0.8,
        gradients=torch.zeros(n, dtype=torch.long),
        queries=torch.ones(n, dtype=torch.long),
        threat=ThreatModel("l2"),
        attack="demo",
        minimum_norm=True,
    )


def test_result_at_eps_and_cat():
    r = _result()
    assert r.robust_accuracy == 0.5 and r.success_rate == 0.5
    fixed = r.at_eps(0.2, torch.ones(4, 2))
    assert fixed.success.tolist() == [True, False, False, False]
    assert fixed.robust_accuracy == 0.75
    assert torch.equal(fixed.x_adv[1], torch.ones(2))
    assert fixed.threat.eps == 0.2
    both = AttackResult.cat([r, r])
    assert len(both) == 8 and both.robust_accuracy == 0.5
    s = r.summary()
    assert s["norm_median"] == pytest.approx(0.1) and s["n"] == 4


def test_bpda_forward_is_exact_and_backward_is_the_approximation():
    from advex.models import BPDA

    quantize = BPDA(lambda x: torch.round(x * 3) / 3)
    x = torch.rand(5, 4, requires_grad=True)
    out = quantize(x)
    torch.testing.assert_close(out, torch.round(x.detach() * 3) / 3)
    (g,) = torch.autograd.grad((out * torch.arange(4.0)).sum(), x)
    torch.testing.assert_close(g, torch.arange(4.0).expand(5, 4))  # identity backward
    square = BPDA(lambda x: torch.round(x), approximation=lambda x: x**2)
    (g2,) = torch.autograd.grad(square(x).sum(), x)
    torch.testing.assert_close(g2, 2 * x.detach())


def test_eot_averages_random_draws():
    from advex.models import EOT

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return x + torch.randn_like(x)

    torch.manual_seed(0)
    x = torch.zeros(3, 2)
    avg = EOT(Noisy(), samples=400)(x)
    assert avg.shape == (3, 2) and float(avg.abs().max()) < 0.25
    with pytest.raises(ValueError, match="samples must be >= 1"):
        EOT(Noisy(), samples=0)

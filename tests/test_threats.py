"""advex.threats: the Box/Mask domain, LpBall geometry (norm objects, per-feature bounds), the
one budget rule and containment in low precision."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_attack_interface import FACTORIES, TARGETED_ONLY, UNTARGETED_ONLY, ConvNet

import advex.attacks as A
from advex.evaluate import rebudget
from advex.threats import (
    L1,
    Box,
    LpBall,
    Mask,
    Threat,
    ThreatModel,
    project_hyperplane_box,
    project_l1_box,
)

NORM_EPS = {"linf": 0.1, "l2": 0.5, "l1": 2.0}


# -- Box and Mask ---------------------------------------------------------------------------------
def test_box_scalar_and_per_feature():
    x = torch.tensor([[-3.0, 0.5, 7.0], [0.2, 2.0, -1.0]])
    box = Box(torch.tensor([0.0, -1.0, 0.0]), torch.tensor([1.0, 1.0, 5.0]))
    out = box.clamp(x)
    assert torch.equal(out, torch.tensor([[0.0, 0.5, 5.0], [0.2, 1.0, 0.0]]))
    assert box.contains(out).all() and not box.contains(x).any()
    assert torch.equal(box.lo_like(x), torch.tensor([[0.0, -1.0, 0.0]] * 2))
    assert torch.equal(box.hi_like(x), torch.tensor([[1.0, 1.0, 5.0]] * 2))
    assert not box.scalar and Box(0, 1).scalar
    assert Box(0, 1).bounds == (0.0, 1.0)
    assert Box.of((0, 255)).hi == 255.0


@pytest.mark.parametrize(
    "lo,hi,err,match",
    [
        (1.0, 0.0, ValueError, "low < high"),
        (0.0, 0.0, ValueError, "low < high"),
        (0.0, float("inf"), ValueError, "finite"),
        (float("nan"), 1.0, ValueError, "finite"),
        (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]), ValueError, "every feature"),
        (torch.tensor([0.0, float("nan")]), 1.0, ValueError, "finite"),
        (torch.zeros(2), torch.ones(3), ValueError, "broadcast"),
        ("low", 1.0, TypeError, "number or a tensor"),
    ],
)
def test_box_validation_errors(lo, hi, err, match):
    with pytest.raises(err, match=match):
        Box(lo, hi)


def test_box_and_mask_shape_errors():
    box = Box(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="do not broadcast"):
        box.clamp(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="bounds must be a"):
        Box.of(0.5)
    with pytest.raises(TypeError, match="boolean"):
        Mask(torch.ones(3))
    with pytest.raises(ValueError, match="all False"):
        Mask(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        Mask(torch.ones(3, dtype=torch.bool)).apply(torch.zeros(2, 4))
    m = Mask(torch.tensor([True, False, True]))
    assert torch.equal(m.apply(torch.ones(1, 3)), torch.tensor([[1.0, 0.0, 1.0]]))


# -- LpBall / ThreatModel -------------------------------------------------------------------------
def test_threat_model_is_lp_ball_and_keeps_its_constructor():
    assert ThreatModel is LpBall and issubclass(LpBall, Threat)
    t = ThreatModel("linf", eps=0.3, bounds=(0, 1), mask=None)
    assert t.norm == "linf" and t.eps == 0.3 and t.bounds == (0.0, 1.0) and t.budget == 0.3
    assert t.to_dict() == {"norm": "linf", "eps": 0.3, "bounds": [0.0, 1.0], "mask": None}
    assert "linf" in t.describe()
    lo, hi = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    tt = ThreatModel("l2", 1.0, (lo, hi))
    assert tt.to_dict()["bounds"] == [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
    assert LpBall("l2", 1.0, box=Box(lo, hi)).box.hi is not None
    x = torch.tensor([[0.5, 1.5, 2.5]])
    tt.check_inputs(x)
    with pytest.raises(ValueError, match="per-feature bounds"):
        tt.check_inputs(torch.tensor([[0.5, 2.5, 2.5]]))
    far = tt.project(x + 10.0, x)
    assert tt.contains(far, x).all() and (far <= hi).all()


def test_norm_object_reaches_every_attack():
    sparse = L1(sparsity=0.5)
    pgd = A.PGD(eps=8.0, norm=sparse, steps=3)
    assert pgd.threat.lp is sparse and pgd.threat.norm == "l1"
    assert pgd.threat.to_dict()["norm"] == "l1" and pgd.params()["norm"] == "l1"
    via_threat = A.APGD(threat=ThreatModel(sparse, eps=8.0), steps=4)
    assert via_threat.threat.lp.sparsity == 0.5
    assert A.FGSM(threat=ThreatModel(sparse, eps=1.0)).with_budget(2.0).threat.lp is sparse
    # the step density is the norm's: half the coordinates instead of the default 1 %
    g = torch.randn(2, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    dense = (pgd.threat.direction(g) != 0).float().mean()
    default = (A.PGD(eps=8.0, norm="l1").threat.direction(g) != 0).float().mean()
    assert float(dense) == pytest.approx(0.5) and float(default) == pytest.approx(0.01)


def test_masked_direction_and_exact_l1_projection_with_per_feature_box():
    t = ThreatModel("l1", 1.0, (torch.tensor([0.0, -1.0, 0.0]), torch.tensor([1.0, 1.0, 0.2])))
    x = torch.tensor([[0.5, 0.0, 0.1]])
    z = x + torch.tensor([[2.0, -0.3, 2.0]])
    p = t.project_exact(z, x)
    assert t.contains(p, x).all()
    # exact: same as the function with the box's flattened bounds
    assert torch.allclose(p, project_l1_box(z, x, 1.0, t.box))
    # brute force over λ for the soft-threshold-then-clip form of the solution
    lo, hi = t.box.lo_like(x), t.box.hi_like(x)
    best = None
    for lam in torch.linspace(0, 2, 20001):
        d = (z - x).sign() * ((z - x).abs() - lam).clamp_min(0)
        cand = torch.maximum(torch.minimum(x + d, hi), lo)
        if (cand - x).abs().sum() <= 1.0 + 1e-6:
            best = cand
            break
    assert torch.allclose(p, best, atol=1e-3)
    w = torch.tensor([[1.0, 1.0, 1.0]])
    d = project_hyperplane_box(x, w, torch.tensor([0.3]), t.box.flat_bounds(x), t.lp)
    assert float((w * d).sum()) == pytest.approx(0.3, abs=1e-6)
    assert t.box.contains(x + d).all()


# -- per-feature bounds, end to end, for every attack ---------------------------------------------
def _cases():
    for name, (_, norms, _) in FACTORIES.items():
        for norm in norms:
            yield name, norm


@pytest.mark.parametrize("name,norm", list(_cases()))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 4),
    c=st.integers(1, 2),
    hw=st.integers(3, 6),
    seed=st.integers(0, 50),
    targeted=st.booleans(),
)
def test_per_feature_bounds_hold_for_every_attack(name, norm, b, c, hw, seed, targeted):
    factory, _, fixed = FACTORIES[name]
    targeted = (targeted or name in TARGETED_ONLY) and name not in UNTARGETED_ONLY
    gen = torch.Generator().manual_seed(seed)
    # every feature its own range: lo in [-1, 0.5], width in [0.2, 2]
    lo = torch.rand(c, hw, hw, generator=gen) * 1.5 - 1.0
    hi = lo + 0.2 + 1.8 * torch.rand(c, hw, hw, generator=gen)
    x = lo + (hi - lo) * torch.rand(b, c, hw, hw, generator=gen)
    y = torch.randint(0, 5, (b,), generator=gen)
    target = (y + 1) % 5 if targeted else None
    eps = NORM_EPS[norm]
    attack = factory(norm, eps)
    t = attack.threat
    attack.threat = LpBall(t.lp, t.eps, box=Box(lo, hi), mask=t.mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attack(ConvNet(c, seed=seed).eval(), x, y, target)
    assert r.x_adv.shape == x.shape
    assert bool((r.x_adv >= lo - 1e-6).all()) and bool((r.x_adv <= hi + 1e-6).all())
    if fixed:
        assert (r.norms <= eps + 1e-6).all()
    assert r.threat.contains(r.x_adv, x).all()


# -- one budget rule ------------------------------------------------------------------------------
def test_with_budget_is_the_one_step_rule():
    explicit = A.PGD(eps=0.3, step_size=0.01, steps=10)
    default = A.PGD(eps=0.3, steps=10)
    # explicit step: scaled with ε; default step: derived again from the new ε
    assert explicit.with_budget(0.1).step_size == pytest.approx(0.01 / 3)
    assert default.with_budget(0.1).step_size == pytest.approx(2.5 * 0.1 / 10)
    assert explicit.threat.eps == 0.3 and explicit.step_size == 0.01  # a copy
    # every path agrees: robustness_curve's rebudget, the deprecated at_eps, run_eps
    for atk in (explicit, default, A.MIFGSM(eps=0.3, step_size=0.05)):
        want = atk.with_budget(0.1).step_size
        assert rebudget(atk, 0.1).step_size == want
        assert atk.at_eps(0.1).step_size == want
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    sweep = explicit.run_eps(m, x, y, eps=[0.1, 0.3])
    assert sweep[0.1].params["step_size"] == pytest.approx(0.01 / 3)
    assert sweep[0.3].params["step_size"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        explicit.with_budget(-1.0)
    with pytest.raises(ValueError, match="no eps to re-budget"):
        A.DeepFool().with_budget(0.1)
    assert ThreatModel("l2", 1.0).with_budget(2.0).eps == 2.0


# -- low precision --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [
        lambda: A.PGD(eps=0.3, steps=5),
        lambda: A.APGD(eps=0.3, steps=6),
        lambda: A.FGSM(eps=0.3),
        lambda: A.PGD(eps=1.0, norm="l2", steps=5),
        lambda: A.APGD(eps=2.0, norm="l1", steps=6),
    ],
    ids=["pgd", "apgd", "fgsm", "pgd-l2", "apgd-l1"],
)
def test_low_precision_output_stays_inside(make, dtype):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)).to(dtype).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=gen).to(dtype)
    y = torch.randint(0, 5, (16,), generator=gen)
    atk = make()
    r = atk(m, x, y)
    assert r.x_adv.dtype == dtype
    # exact: the caller's values, differences taken without rounding
    delta = r.x_adv.double() - x.double()
    assert bool((atk.threat.lp.measure(delta) <= atk.threat.eps).all())
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert atk.threat.contains(r.x_adv, x, tol=0.0).all()
    assert bool((delta != 0).any())  # the attack did move


def test_finalize_leaves_float32_alone():
    t = ThreatModel("linf", 0.1)
    x = torch.rand(3, 5)
    z = x + 0.2
    assert t.finalize(z, x) is z


def test_per_feature_bounds_through_attack_constructors():
    lo = torch.tensor([0.0, -2.0, 10.0, 0.0])
    hi = torch.tensor([1.0, 2.0, 20.0, 0.5])
    gen = torch.Generator().manual_seed(3)
    x = lo + (hi - lo) * torch.rand(6, 4, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).eval()
    for attack in (
        A.PGD(eps=0.5, steps=5, bounds=(lo, hi)),
        A.CW(bounds=(lo, hi), max_iterations=5, binary_search_steps=2),
        A.DeepFool(bounds=(lo, hi), max_iter=5),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = attack(model, x, y)
        assert bool((r.x_adv >= lo).all()) and bool((r.x_adv <= hi).all())
        assert r.params["bounds"] == [lo.tolist(), hi.tolist()]

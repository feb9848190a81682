"""APGD-CE / APGD-DLR / APGD-T (L∞, L2, L1) on the zoo MNIST CNN, and their building blocks."""

from __future__ import annotations

import pytest
import torch

from advex.attacks.apgd import APGD, checkpoints
from advex.attacks.gradient import PGD
from advex.threats import project_l1_box


@pytest.fixture(scope="module")
def digits(mnist_correct):
    x, y = mnist_correct
    return x[:100], y[:100]


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]


def test_apgd_ce_at_least_as_strong_as_pgd_with_equal_gradients(mnist_model, mnist_correct):
    x, y = mnist_correct
    pgd = PGD(eps=0.15, steps=40)(mnist_model, x, y)
    attack = APGD(eps=0.15, steps=40)
    apgd = attack(mnist_model, x, y)
    assert apgd.gradients.max() <= 40 and pgd.gradients.max() <= 40
    assert attack.threat.contains(apgd.x_adv, x, tol=1e-6).all()
    # measured on 200 digits: APGD-CE 0.030, PGD-40 0.045 robust accuracy (at ε = 0.1:
    # 0.535 and 0.555, but that costs 25 s here)
    assert apgd.robust_accuracy <= pgd.robust_accuracy
    assert 0 < pgd.robust_accuracy < 0.1
    assert apgd.gradients.sum() <= pgd.gradients.sum()
    with torch.no_grad():
        assert torch.equal(apgd.success, mnist_model(apgd.x_adv).argmax(1) != y)


def test_apgd_ce_eps03_fools_everything_fast(mnist_model, mnist_correct):
    x, y = mnist_correct
    r = APGD(eps=0.3)(mnist_model, x, y)
    assert r.success_rate >= 0.99  # measured: mean 0.99 gradients per digit
    assert r.gradients.float().mean() < 3


def test_apgd_t_at_least_as_strong_as_apgd_ce(mnist_model, digits):
    x, y = digits
    ce = APGD(eps=0.15, steps=40)(mnist_model, x, y)
    t = APGD(eps=0.15, steps=40, targeted=True, n_target_classes=3)(mnist_model, x, y)
    assert t.attack == "apgd-t" and t.params["loss"] == "dlr" and not t.targeted
    # measured on 100 digits: APGD-T 0.02, APGD-CE 0.02 robust accuracy (PGD-40: 0.03)
    assert t.robust_accuracy <= ce.robust_accuracy
    assert t.robust_accuracy <= 0.05
    assert t.gradients.max() <= 3 * 40


def test_apgd_explicit_target_is_attacked(mnist_model, digits):
    x, y = digits
    x, y = x[:40], y[:40]
    target = (y + 1) % 10
    r = APGD(eps=0.3, steps=20)(mnist_model, x, y, target=target)
    assert r.targeted
    assert r.success.float().mean() >= 0.95  # measured 1.000 (targeted DLR, 20 steps: 0.925)
    with torch.no_grad():
        assert (mnist_model(r.x_adv).argmax(1)[r.success] == target[r.success]).all()


@pytest.mark.parametrize("norm,eps", [("l2", 1.5), ("l1", 8.0)])
def test_apgd_l2_l1_stay_in_ball_and_beat_pgd(mnist_model, digits, norm, eps):
    x, y = digits
    attack = APGD(eps=eps, norm=norm, steps=20)
    r = attack(mnist_model, x, y)
    assert attack.threat.contains(r.x_adv, x, tol=1e-4).all()
    pgd = PGD(eps=eps, norm=norm, steps=20)(mnist_model, x, y)
    # measured on 100 digits: L2 APGD 0.28 / PGD 0.36, L1 APGD 0.15 / PGD 0.31 robust acc.
    assert r.robust_accuracy <= pgd.robust_accuracy


def test_nothing_fooled_costs_exactly_steps_passes(mnist_model, digits):
    x, y = digits
    x, y = x[:20], y[:20]
    r = APGD(eps=0.001, steps=12, restarts=2)(mnist_model, x, y)
    assert not r.success.any()
    # per run: 12 forward+backward + 1 forward at the last iterate; + clean and final forwards
    assert (r.gradients == 24).all() and (r.queries == 2 * 13 + 2).all()


def test_restart_keep_restarts_only_the_closest_points(mnist_model, digits):
    x, y = digits
    x, y = x[:20], y[:20]
    first = APGD(eps=0.001, steps=12)(mnist_model, x, y)
    r = APGD(eps=0.001, steps=12, restarts=2, restart_keep=0.25)(mnist_model, x, y)
    assert not r.success.any()
    again = r.gradients == 24
    # ceil(25 % of 20) = 5 points got the second start, the others one
    assert int(again.sum()) == 5 and bool((r.gradients[~again] == 12).all())
    # the 5 with the highest cross-entropy after the first start (closest to success)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(mnist_model(first.x_adv), y, reduction="none")
    assert set(ce.topk(5).indices.tolist()) == set(again.nonzero().squeeze(1).tolist())
    with pytest.raises(ValueError, match="restart_keep"):
        APGD(eps=0.1, restart_keep=0)


def test_apgd_deterministic_and_run_eps(mnist_model, digits):
    x, y = digits
    x, y = x[:40], y[:40]
    a = APGD(eps=0.1, steps=10)(mnist_model, x, y)
    b = APGD(eps=0.1, steps=10)(mnist_model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    sweep = APGD(eps=0.3, steps=10).run_eps(mnist_model, x, y, eps=[0.1, 0.2])
    assert sweep[0.1].robust_accuracy == a.robust_accuracy
    assert sweep[0.2].robust_accuracy <= sweep[0.1].robust_accuracy
    assert (sweep[0.2].gradients[sweep[0.1].success] == 0).all()


def _project_l1_box_slow(z, x, eps, lo, hi):
    """Bisection on the soft-threshold λ (reference for the exact sort-based projection)."""
    v, x0 = (z - x).flatten(1).double(), x.flatten(1).double()
    cap = torch.where(v > 0, hi - x0, x0 - lo)
    out = []
    for vi, ci in zip(v, cap, strict=True):

        def delta(lam, vi=vi, ci=ci):
            return vi.sign() * torch.minimum((vi.abs() - lam).clamp_min(0), ci)

        if delta(0.0).abs().sum() <= eps:
            out.append(delta(0.0))
            continue
        a, b = 0.0, float(vi.abs().max())
        for _ in range(100):
            mid = (a + b) / 2
            a, b = (mid, b) if delta(mid).abs().sum() > eps else (a, mid)
        out.append(delta(b))
    return (x0 + torch.stack(out)).reshape(x.shape)


def test_l1_box_projection_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 5, 5, generator=g)
    x[:, :, :2] = 0.0  # coordinates on the box boundary
    z = x + 0.6 * torch.randn(8, 1, 5, 5, generator=g)
    z[0] = x[0] + 0.001  # already inside
    for eps in (0.5, 2.0, 30.0):
        p = project_l1_box(z, x, eps, (0.0, 1.0))
        ref = _project_l1_box_slow(z, x, eps, 0.0, 1.0)
        assert torch.allclose(p.double(), ref, atol=1e-5)
        assert ((p - x).abs().flatten(1).sum(1) <= eps + 1e-5).all()
        assert p.min() >= 0 and p.max() <= 1


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        APGD(eps=0.1, steps=0)
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        APGD(eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="n_target_classes must be >= 1"):
        APGD(eps=0.1, targeted=True, n_target_classes=0)
    with pytest.raises(ValueError, match="rho"):
        APGD(eps=0.1, rho=1.5)
    with pytest.raises(ValueError, match="momentum"):
        APGD(eps=0.1, momentum=-0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        APGD(eps=-1.0)
    with pytest.raises(ValueError, match="unknown loss"):
        APGD(eps=0.1, loss="hinge")
    assert APGD(eps=0.1).name == "apgd-ce" and APGD(eps=0.1, loss="dlr").name == "apgd-dlr"

"""FGSM, PGD/BIM, MI-FGSM and run_eps, measured on the zoo MNIST CNN."""

from __future__ import annotations

import copy

import pytest
import torch

from advex.attacks.gradient import BIM, FGSM, MIFGSM, PGD


@pytest.fixture(scope="module")
def digits(mnist_correct):
    x, y = mnist_correct
    return x[:100], y[:100]


def _repredict(model, x_adv):
    with torch.no_grad():
        return model(x_adv).argmax(1)


def test_pgd40_linf_03_fools_99_percent_with_early_exit(mnist_model, mnist_correct):
    x, y = mnist_correct
    attack = PGD(eps=0.3, steps=40)
    r = attack(mnist_model, x, y)
    assert r.success_rate >= 0.99  # measured: 1.000 on 200 digits
    pred = _repredict(mnist_model, r.x_adv)
    assert torch.equal(r.success, pred != y)  # success agrees with re-prediction, 100%
    assert attack.threat.contains(r.x_adv, x, tol=1e-6).all()
    assert r.gradients.max() <= 40
    assert r.gradients.float().mean() < 10  # measured 3.25: fooled points leave at once
    assert (r.queries <= r.gradients + 3).all()


def test_targeted_pgd_reaches_target_3(mnist_model, digits):
    x, y = digits
    keep = y != 3
    x, y = x[keep], y[keep]
    r = PGD(eps=0.3, steps=40)(mnist_model, x, y, target=3)
    assert r.targeted
    assert r.success.float().mean() >= 0.95  # measured: 1.000
    assert (_repredict(mnist_model, r.x_adv)[r.success] == 3).all()


def test_fgsm_is_weaker_than_pgd_and_mifgsm(mnist_model, digits):
    x, y = digits
    fgsm = FGSM(eps=0.15)(mnist_model, x, y)
    pgd = PGD(eps=0.15, steps=40)(mnist_model, x, y)
    mi = MIFGSM(eps=0.15)(mnist_model, x, y)
    # measured (100 digits): FGSM 0.40, MI-FGSM 0.11, PGD-40 0.03 robust accuracy
    assert fgsm.robust_accuracy > mi.robust_accuracy + 0.1
    assert fgsm.robust_accuracy > pgd.robust_accuracy + 0.2
    assert (fgsm.gradients <= 1).all() and (mi.gradients <= 10).all()


def test_mifgsm_l2_beats_fgm_and_stays_in_ball(mnist_model, digits):
    x, y = digits
    fgm = FGSM(eps=1.5, norm="l2")(mnist_model, x, y)
    attack = MIFGSM(eps=1.5, norm="l2")
    mi = attack(mnist_model, x, y)
    assert attack.threat.contains(mi.x_adv, x, tol=1e-5).all()
    assert mi.robust_accuracy < fgm.robust_accuracy - 0.1  # measured: 0.64 vs 0.79


def test_mifgsm_momentum_matters(mnist_model, digits):
    x, y = digits
    x, y = x[:50], y[:50]
    a = MIFGSM(eps=0.15)(mnist_model, x, y)
    b = MIFGSM(eps=0.15, decay=0.0)(mnist_model, x, y)  # decay 0: plain I-FGSM
    assert not torch.equal(a.x_adv, b.x_adv)


def test_restarts_run_only_on_robust_points(mnist_model, digits):
    x, y = digits
    one = PGD(eps=0.1, steps=5, restarts=1)(mnist_model, x, y)
    three = PGD(eps=0.1, steps=5, restarts=3)(mnist_model, x, y)
    # the first run is identical (same seed); fooled points are never restarted
    fooled_first = one.success
    assert fooled_first.any() and (~fooled_first).any()
    assert torch.equal(three.gradients[fooled_first], one.gradients[fooled_first])
    assert torch.equal(three.x_adv[fooled_first], one.x_adv[fooled_first])
    still = ~three.success
    assert (three.gradients[still] == 15).all()
    assert three.robust_accuracy <= one.robust_accuracy


@pytest.mark.parametrize("norm,eps,min_rate", [("l2", 2.0, 0.8), ("l1", 12.0, 0.6)])
def test_l2_and_l1_pgd_work_and_stay_in_their_balls(mnist_model, digits, norm, eps, min_rate):
    x, y = digits
    attack = PGD(eps=eps, norm=norm, steps=20)
    r = attack(mnist_model, x, y)
    assert attack.threat.contains(r.x_adv, x, tol=1e-4).all()
    assert (r.norms <= eps + 1e-4).all()
    fgm = FGSM(eps=eps, norm=norm)(mnist_model, x, y)
    assert r.success_rate >= min_rate  # measured: L2 0.94 (FGM 0.46), L1 0.82 (FGM 0.13)
    assert r.success_rate > fgm.success_rate


def test_pgd_is_deterministic_and_bim_has_no_random_start(mnist_model, digits):
    x, y = digits
    x, y = x[:20], y[:20]
    a = PGD(eps=0.1, steps=3, seed=1)(mnist_model, x, y)
    b = PGD(eps=0.1, steps=3, seed=1)(mnist_model, x, y)
    c = PGD(eps=0.1, steps=3, seed=2)(mnist_model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    d = BIM(eps=0.1, steps=3, seed=1)(mnist_model, x, y)
    e = BIM(eps=0.1, steps=3, seed=2)(mnist_model, x, y)
    assert torch.equal(d.x_adv, e.x_adv)
    assert d.params["random_start"] is False


def test_run_eps_reuses_adversarials_and_saves_passes(mnist_model, digits):
    x, y = digits
    x, y = x[:50], y[:50]
    attack = PGD(eps=0.3, norm="linf", steps=10)
    budgets = [0.05, 0.1, 0.15, 0.2]
    sweep = attack.run_eps(mnist_model, x, y, eps=budgets)
    assert list(sweep) == budgets
    separate = {e: PGD(eps=e, steps=10)(mnist_model, x, y) for e in budgets}
    sweep_cost = sum(int(r.gradients.sum()) for r in sweep.values())
    separate_cost = sum(int(r.gradients.sum()) for r in separate.values())
    # points fooled at a smaller ε cost nothing at the larger ones; robust points cost the
    # same in both (measured: 0.86 of the passes of separate runs)
    assert sweep_cost < 0.95 * separate_cost
    ras = [sweep[e].robust_accuracy for e in budgets]
    assert ras == sorted(ras, reverse=True)  # a point fooled at ε stays fooled above
    for e in budgets:
        r = sweep[e]
        assert r.threat.eps == e and r.params["eps"] == e
        assert r.threat.contains(r.x_adv, x, tol=1e-6).all()
        assert torch.equal(r.success, _repredict(mnist_model, r.x_adv) != y)
        assert r.robust_accuracy <= separate[e].robust_accuracy + 0.05
    # step size follows ε when it was left to its default
    assert attack.at_eps(0.2).step_size == pytest.approx(2.5 * 0.2 / 10)
    # ... and an explicit one is scaled with ε (the one rule of Attack.with_budget; before it,
    # at_eps kept 0.01 here while robustness_curve scaled it)
    assert PGD(eps=0.1, step_size=0.01).at_eps(0.3).step_size == pytest.approx(0.03)


def test_run_eps_targeted_and_fgsm(mnist_model, digits):
    x, y = digits
    keep = y != 7
    x, y = x[keep][:40], y[keep][:40]
    sweep = FGSM(eps=0.3).run_eps(mnist_model, x, y, eps=[0.3, 0.1], target=7)
    assert list(sweep) == [0.1, 0.3]
    assert sweep[0.3].success.float().mean() >= sweep[0.1].success.float().mean()
    assert (sweep[0.3].gradients[sweep[0.1].success] == 0).all()


def test_inputs_and_model_untouched(mnist_model, digits):
    x, y = digits
    x, y = x[:10], y[:10]
    xc, yc = x.clone(), y.clone()
    state = copy.deepcopy(mnist_model.state_dict())
    flags = [p.requires_grad for p in mnist_model.parameters()]
    MIFGSM(eps=0.1, steps=3)(mnist_model, x, y)
    PGD(eps=0.1).run_eps(mnist_model, x, y, eps=[0.05, 0.1])
    assert torch.equal(x, xc) and torch.equal(y, yc)
    for k, v in mnist_model.state_dict().items():
        assert torch.equal(v, state[k])
    assert [p.requires_grad for p in mnist_model.parameters()] == flags


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        MIFGSM(eps=0.1, steps=0)
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        PGD(eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        PGD(eps=0.1, step_size=-0.1)
    with pytest.raises(ValueError, match="decay"):
        MIFGSM(eps=0.1, decay=-1.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        MIFGSM(eps=-0.1)
    with pytest.raises(TypeError, match="run_eps"):
        PGD(eps=[0.1, 0.2])
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with pytest.raises(ValueError, match="eps must be >= 0"):
        PGD(eps=0.1).run_eps(lin, x, y, eps=[0.1, -0.2])
    with pytest.raises(ValueError, match="at least one eps"):
        PGD(eps=0.1).run_eps(lin, x, y, eps=[])

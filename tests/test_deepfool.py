"""DeepFool (and the shared batched Jacobian) on the zoo's MNIST CNN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from advex.attacks._jacobian import jacobian, logit_vjps
from advex.attacks.base import ModelCaller
from advex.attacks.deepfool import DeepFool
from advex.attacks.gradient import FGSM
from advex.threats import ThreatModel


def pgd_min_eps(model, x, y, hi=0.5, bisections=6, steps=15, seed=0):
    """Per-sample smallest L∞ ε at which PGD (CE loss, random start, ``steps`` sign steps of
    2.5ε/steps) succeeds, by bisection on [0, hi]; all samples bisected together (batched)."""
    threat = ThreatModel("linf")
    gen = torch.Generator().manual_seed(seed)
    lo_e, hi_e = torch.zeros(len(x)), torch.full((len(x),), hi)
    for _ in range(bisections):
        eps = (lo_e + hi_e) / 2
        cur = threat.random_start(x, gen, eps)
        ok = torch.zeros(len(x), dtype=torch.bool)
        for _ in range(steps):
            xl = cur.clone().requires_grad_(True)
            logits = model(xl)
            ok |= logits.argmax(1) != y
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xl)
            cur = threat.project(cur + 2.5 * eps.view(-1, 1, 1, 1) / steps * g.sign(), x, eps)
        with torch.no_grad():
            ok |= model(cur).argmax(1) != y
        hi_e, lo_e = torch.where(ok, eps, hi_e), torch.where(ok, lo_e, eps)
    return hi_e


def fgsm_min_l2(model, x, y, grid):
    """Per sample: the L2 size of the FGSM-L∞ perturbation at the smallest ε of ``grid`` at
    which FGSM succeeds (NaN if none)."""
    out = torch.full((len(x),), float("nan"))
    for e in grid:
        r = FGSM(eps=float(e))(model, x, y)
        new = r.success & out.isnan()
        out[new] = (r.x_adv - x)[new].flatten(1).norm(dim=1)
        if not bool(out.isnan().any()):
            break
    return out


# -- the batched Jacobian ---------------------------------------------------------------------
def test_jacobian_methods_agree_and_count(tiny_model):
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([[0, 3], [1, 2], [9, 0], [4, 4], [7, 5]])
    caller = ModelCaller(tiny_model, 5, x.device)
    idx = torch.tensor([0, 1, 2, 3, 4])
    logits, j_loop = jacobian(caller, x, classes, idx, method="loop")
    _, j_vmap = jacobian(caller, x, classes, idx, method="vmap")
    assert j_loop.shape == (5, 2, 1, 8, 8)
    torch.testing.assert_close(j_loop, j_vmap)
    w = tiny_model[1].weight.reshape(10, 1, 8, 8)  # linear model: the Jacobian is W
    torch.testing.assert_close(j_loop, w[classes])
    torch.testing.assert_close(logits, tiny_model(x))
    assert caller.gradients.tolist() == [4] * 5 and caller.queries.tolist() == [4] * 5
    # cotangent form: gradient of (target logit) and of (sum of the others) in one pass
    cot = torch.zeros(5, 2, 10)
    cot[:, 0, 3] = 1.0
    cot[:, 1] = 1.0
    cot[:, 1, 3] = 0.0
    _, j2 = logit_vjps(caller, x, cot, idx[:5])
    torch.testing.assert_close(j2[:, 0], w[[3] * 5])
    torch.testing.assert_close(j2[:, 1], w.sum(0, keepdim=True).expand(5, 1, 8, 8) - w[[3] * 5])
    with pytest.raises(ValueError, match="Jacobian method"):
        jacobian(caller, x, classes, method="bogus")


# -- strength -----------------------------------------------------------------------------------
def test_deepfool_l2_beats_minimal_fgsm(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:40], mnist_correct[1][:40]
    r = DeepFool(norm="l2")(mnist_model, x, y)
    assert r.success_rate >= 0.95
    with torch.no_grad():
        assert torch.equal(r.success, mnist_model(r.x_adv).argmax(1) != y)
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    torch.testing.assert_close(r.norms, (r.x_adv - x).flatten(1).norm(dim=1))
    fg = fgsm_min_l2(mnist_model, x, y, torch.arange(0.02, 0.62, 0.02))
    df_mean = float(r.norms[r.success].mean())
    fg_mean = float(fg.nanmean())
    # measured: DeepFool 1.60 vs minimal FGSM 3.2 (L2) on these digits
    assert df_mean < 0.7 * fg_mean, (df_mean, fg_mean)
    assert 0.8 < df_mean < 2.5
    # a minimum-norm result turns into a fixed-budget one at any ε
    med = float(r.norms.median())
    fixed = r.at_eps(med, x)
    assert abs(fixed.success.float().mean().item() - 0.5) <= 0.1
    assert bool((fixed.norms <= med + 1e-6).all())


def test_deepfool_linf_close_to_pgd_min_eps(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:20], mnist_correct[1][:20]
    r = DeepFool(norm="linf")(mnist_model, x, y)
    assert bool(r.success.all())
    pe = pgd_min_eps(mnist_model, x, y)
    ratio = r.norms / pe
    # measured: mean ratio 1.11, max 1.38 (DeepFool-L∞ is a little looser than PGD's ε)
    assert float(ratio.mean()) <= 1.3, ratio
    assert float(ratio.median()) <= 1.25, ratio
    assert 0.05 < float(r.norms.mean()) < 0.25


def test_deepfool_targeted(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:20], mnist_correct[1][:20]
    target = (y + 1) % 10
    r = DeepFool(norm="l2")(mnist_model, x, y, target=target)
    assert r.success_rate >= 0.9
    assert torch.equal(r.adv_pred[r.success], target[r.success])
    untargeted = DeepFool(norm="l2")(mnist_model, x, y)
    assert float(r.norms.mean()) > float(untargeted.norms.mean())  # a chosen class is farther


# -- contract -----------------------------------------------------------------------------------
def test_deepfool_contract(mnist_model, mnist_test):
    x, y = mnist_test[0][:30].clone(), mnist_test[1][:30].clone()
    y_bad = y.clone()
    y_bad[:3] = (y[:3] + 1) % 10  # three points "already misclassified"
    with torch.no_grad():
        wrong = mnist_model(x).argmax(1) != y_bad
    assert int(wrong.sum()) >= 3
    x_copy, y_copy = x.clone(), y_bad.clone()
    state = copy.deepcopy(mnist_model.state_dict())
    flags = [p.requires_grad for p in mnist_model.parameters()]
    mnist_model.train()
    with pytest.warns(UserWarning, match="train mode"):
        r1 = DeepFool(norm="linf", max_iter=20)(mnist_model, x, y_bad)
    assert mnist_model.training
    mnist_model.eval()
    r2 = DeepFool(norm="linf", max_iter=20)(mnist_model, x, y_bad)
    assert torch.equal(r1.x_adv, r2.x_adv)
    assert torch.equal(x, x_copy) and torch.equal(y_bad, y_copy)
    assert [p.requires_grad for p in mnist_model.parameters()] == flags
    for k, v in mnist_model.state_dict().items():
        assert torch.equal(v, state[k])
    # already-successful points cost nothing beyond the clean and final forwards
    assert bool((r2.gradients[wrong] == 0).all()) and bool((r2.queries[wrong] == 2).all())
    assert torch.equal(r2.x_adv[wrong], x[wrong])
    assert bool((r2.gradients[~wrong] % 9 == 0).all())  # ∇(z_k − z_y) for 9 candidates k
    assert bool((r2.gradients[~wrong] > 0).all())
    assert float(r2.x_adv.min()) >= 0.0 and float(r2.x_adv.max()) <= 1.0
    assert r2.minimum_norm and r2.threat.eps is None and r2.threat.norm == "linf"
    assert r2.params["max_iter"] == 20 and r2.params["overshoot"] == 0.02


def test_deepfool_mask_and_candidates(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:10], mnist_correct[1][:10]
    mask = torch.zeros(1, 28, 28, dtype=torch.bool)
    mask[:, 7:21, 7:21] = True
    r = DeepFool(norm="l2", mask=mask)(mnist_model, x, y)
    assert float((r.x_adv - x)[:, ~mask].abs().max()) == 0.0
    assert r.success_rate >= 0.9
    r3 = DeepFool(norm="l2", candidates=3)(mnist_model, x, y)
    assert bool((r3.gradients[r3.gradients > 0] % 2 == 0).all())
    assert r3.success_rate >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"candidates": 1}, "candidates"),
        ({"norm": "l1"}, "l2' or 'linf"),
        ({"norm": "l7"}, "unknown norm"),
    ],
)
def test_deepfool_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepFool(**kwargs)

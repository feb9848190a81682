"""JSMA on the zoo's MNIST CNN."""

from __future__ import annotations

import copy

import pytest
import torch

from advex.attacks.jsma import JSMA, l0


def _second_class(model, x, y):
    with torch.no_grad():
        return model(x).scatter(1, y[:, None], float("-inf")).argmax(1)


def test_jsma_targeted_few_pixels(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:25], mnist_correct[1][:25]
    target = _second_class(mnist_model, x, y)
    r = JSMA()(mnist_model, x, y, target=target)
    counts = l0(r.x_adv, x)
    # measured on 60 digits: 92% reach the runner-up class, with 25 pixels (3.2%) on average
    assert r.success_rate >= 0.8
    assert torch.equal(r.adv_pred[r.success], target[r.success])
    with torch.no_grad():
        assert torch.equal(r.success, mnist_model(r.x_adv).argmax(1) == target)
    assert int(counts.max()) <= 78  # ⌊0.1 · 784⌋
    assert float(counts[r.success].float().mean()) <= 40  # well under 10% of the 784 pixels
    # θ = +1: chosen pixels jump to the maximum, nothing decreases
    diff = r.x_adv - x
    assert float(diff.min()) >= 0.0
    assert bool((r.x_adv[diff > 0] == 1.0).all())
    assert r.params["l0_max"] == int(counts.max())
    assert r.params["l0_mean"] == pytest.approx(float(counts.float().mean()))
    assert r.params["l0_budget"] == 78
    torch.testing.assert_close(r.norms, diff.flatten(1).norm(dim=1))  # norms: L2
    # pixel pairs: two features per iteration, two gradients per iteration
    assert bool((r.gradients[r.gradients > 0] % 2 == 0).all())


def test_jsma_harder_targets_and_gamma(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:20], mnist_correct[1][:20]
    target = (y + 1) % 10
    small = JSMA(gamma=0.05)(mnist_model, x, y, target=target)
    paper = JSMA(gamma=0.145)(mnist_model, x, y, target=target)  # the paper's MNIST budget
    assert int(l0(small.x_adv, x).max()) <= 39
    assert int(l0(paper.x_adv, x).max()) <= 113
    # measured on 60 digits: 77% reach target y+1 with γ = 14.5% (63% with γ = 10%)
    assert paper.success_rate >= 0.6
    assert paper.success_rate > small.success_rate


def test_jsma_untargeted_random_targets(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:20], mnist_correct[1][:20]
    r = JSMA()(mnist_model, x, y)
    assert r.target is None
    assert r.success_rate >= 0.6  # measured: 80% misclassified
    assert bool((r.adv_pred[r.success] != y[r.success]).all())
    assert torch.equal(JSMA(seed=0)(mnist_model, x, y).x_adv, r.x_adv)


def test_jsma_theta_negative_and_mask(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:10], mnist_correct[1][:10]
    mask = torch.zeros(1, 28, 28, dtype=torch.bool)
    mask[:, 4:24, 4:24] = True
    target = _second_class(mnist_model, x, y)
    r = JSMA(theta=-1.0, mask=mask)(mnist_model, x, y, target=target)
    diff = r.x_adv - x
    assert float(diff.max()) <= 0.0  # θ < 0: pixels only decrease
    assert float(diff[:, ~mask].abs().max()) == 0.0
    assert bool((r.x_adv[diff < 0] == 0.0).all())
    assert r.success_rate >= 0.3


def test_jsma_contract(mnist_model, mnist_test):
    x, y = mnist_test[0][:12].clone(), mnist_test[1][:12].clone()
    y[:2] = (y[:2] + 1) % 10  # "already misclassified" for an untargeted run
    with torch.no_grad():
        wrong = mnist_model(x).argmax(1) != y
    x_copy, y_copy = x.clone(), y.clone()
    state = copy.deepcopy(mnist_model.state_dict())
    r1 = JSMA(gamma=0.05)(mnist_model, x, y)
    r2 = JSMA(gamma=0.05)(mnist_model, x, y)
    assert torch.equal(r1.x_adv, r2.x_adv)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    for k, v in mnist_model.state_dict().items():
        assert torch.equal(v, state[k])
    assert bool((r1.gradients[wrong] == 0).all()) and bool((r1.queries[wrong] == 2).all())
    assert torch.equal(r1.x_adv[wrong], x[wrong])
    assert float(r1.x_adv.min()) >= 0.0 and float(r1.x_adv.max()) <= 1.0
    assert not r1.minimum_norm and r1.threat.eps is None


def test_l0_helper():
    x = torch.zeros(2, 1, 2, 2)
    xa = x.clone()
    xa[0, 0, 0, 0] = 0.5
    xa[1] = 1.0
    assert l0(xa, x).tolist() == [1, 4]
    assert l0(xa, x, tol=0.6).tolist() == [0, 4]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"theta": 0.0}, "theta"),
        ({"theta": float("nan")}, "theta"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"chunk": 0}, "chunk"),
    ],
)
def test_jsma_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JSMA(**kwargs)

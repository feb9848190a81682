"""L-BFGS (Szegedy et al. 2013) on the zoo MNIST CNN: 10 digits, a reduced search (5 rounds of
at most 25 L-BFGS iterations instead of 10 × 100)."""

from __future__ import annotations

import copy

import pytest
import torch

from advex.attacks.cw import CW
from advex.attacks.lbfgs import LBFGS

N = 10
FAST = dict(search_steps=5, max_iterations=25, initial_const=0.1)


@pytest.fixture(scope="module")
def digits(mnist_correct):
    x, y = mnist_correct
    return x[:N].clone(), y[:N].clone()


@pytest.fixture(scope="module")
def lbfgs_result(mnist_model, digits):
    x, y = digits
    return LBFGS(**FAST)(mnist_model, x, y, target=(y + 1) % 10)


def test_reaches_target_with_cw_like_norm(lbfgs_result, digits, mnist_model):
    x, y = digits
    t = (y + 1) % 10
    r = lbfgs_result
    assert r.minimum_norm and r.threat.norm == "l2" and r.targeted
    assert r.success.all(), r.success_rate
    with torch.no_grad():
        assert torch.equal(mnist_model(r.x_adv).argmax(1), t)
    assert torch.equal(r.adv_pred, t)
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.allclose(r.norms, (r.x_adv - x).flatten(1).norm(dim=1), atol=1e-5)
    cw = CW(binary_search_steps=3, max_iterations=60, learning_rate=0.1, initial_const=1.0)(
        mnist_model, x, y, target=t
    )
    both = r.success & cw.success
    # measured: L-BFGS within ~1.5× of C&W's targeted L2 (C&W is the stronger minimiser)
    ratio = float(r.norms[both].mean() / cw.norms[both].mean())
    assert 0.8 < ratio < 2.0, ratio


def test_search_over_c_shrinks_norm(lbfgs_result, digits, mnist_model):
    x, y = digits
    one = LBFGS(**{**FAST, "search_steps": 1})(mnist_model, x, y, target=(y + 1) % 10)
    both = one.success & lbfgs_result.success
    assert (lbfgs_result.norms[both] <= one.norms[both] + 1e-5).all()
    assert lbfgs_result.norms[both].mean() < 0.9 * one.norms[both].mean()


def test_at_eps(lbfgs_result, digits):
    x, _ = digits
    eps = float(lbfgs_result.norms.median())
    fixed = lbfgs_result.at_eps(eps, x)
    assert torch.equal(fixed.success, lbfgs_result.success & (lbfgs_result.norms <= eps + 1e-6))
    assert fixed.threat.contains(fixed.x_adv, x).all()


def test_targeted_only_deterministic_untouched(tiny_model):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 8, 8, generator=g)
    y = tiny_model(x).argmax(1)
    with pytest.raises(ValueError, match="target"):
        LBFGS()(tiny_model, x, y)
    x_before, state = x.clone(), copy.deepcopy(tiny_model.state_dict())
    t = (y + 3) % 10
    a = LBFGS(**FAST)(tiny_model, x, y, target=t)
    b = LBFGS(**FAST)(tiny_model, x, y, target=t)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(x, x_before)
    assert all(torch.equal(v, state[k]) for k, v in tiny_model.state_dict().items())
    assert a.success.all() and torch.equal(a.adv_pred, t)
    assert a.gradients.max() <= 5 * 2 * 25


def test_mask_and_bounds(tiny_model):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    y = tiny_model(x).argmax(1)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, 2:6] = True
    r = LBFGS(bounds=(-1, 1), mask=mask, **FAST)(tiny_model, x, y, target=(y + 1) % 10)
    assert r.success.any()
    assert r.x_adv.min() >= -1 and r.x_adv.max() <= 1
    assert torch.equal(r.x_adv[:, :, :2], x[:, :, :2])
    assert torch.equal(r.x_adv[:, :, 6:], x[:, :, 6:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(search_steps=0), "search_steps"),
        (dict(max_iterations=0), "max_iterations"),
        (dict(initial_const=-1.0), "initial_const"),
        (dict(max_iterations=2.5), "integer"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LBFGS(**kwargs)

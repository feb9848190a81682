"""Randomized smoothing: PREDICT / CERTIFY against their definitions (Cohen et al. 2019), on
base classifiers whose noisy-prediction probabilities are known, and on a Gaussian-trained
digits model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from advex.defenses.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    binomial_test_two_sided,
    certified_accuracy,
    clopper_pearson_lower,
    save_certified_curve,
    train_gaussian_augmentation,
)


class Constant(nn.Module):
    """Always predicts class ``c`` (10 classes)."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        out = torch.zeros(x.shape[0], 10)
        out[:, self.c] = 1.0
        return out


class UniformRandom(nn.Module):
    """Predicts a uniformly random class among ``k``, whatever the input."""

    def __init__(self, k: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.k = k
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        return torch.randn(x.shape[0], self.k, generator=self.gen)


class Halfspace(nn.Module):
    """Two classes split by the hyperplane ``mean(x) = 0.5`` (unit normal ``1/‖1‖``): under
    N(0, σ²I) noise the top class has probability Φ(d/σ), d the distance to the plane."""

    def forward(self, x):
        s = x.flatten(1).sum(1) - 0.5 * x[0].numel()
        return torch.stack([-s, s], 1)


def _halfspace_points(dists):
    # 1×8×8 inputs at signed L2 distance d from the plane: x = 0.5 + d·u, u = 1/8 (unit norm)
    d = torch.tensor(dists, dtype=torch.float64)
    return (0.5 + d[:, None, None, None] / 8 * torch.ones(1, 1, 8, 8)).float(), d


def test_certify_radii_match_their_definition():
    sigma, n0, n, alpha = 0.5, 50, 400, 0.01
    x, _ = _halfspace_points([0.05, 0.2, 0.4, -0.6, 1.0, 3.0])
    smooth = SmoothedClassifier(Halfspace(), sigma, batch_size=333)
    labels, radii = smooth.certify(x, n0, n, alpha, torch.Generator().manual_seed(7))
    # recompute from the very same draws (same generator, same order) independently
    g = torch.Generator().manual_seed(7)
    c_hat = smooth.sample_counts(x, n0, g).argmax(1)
    counts = smooth.sample_counts(x, n, g)
    assert torch.all(counts.sum(1) == n)
    for i in range(len(x)):
        k = int(counts[i, c_hat[i]])
        low = stats.binomtest(k, n).proportion_ci(1 - 2 * alpha, method="exact").low
        if low < 0.5:
            assert labels[i] == ABSTAIN and radii[i] == 0
        else:
            assert labels[i] == c_hat[i]
            assert math.isclose(float(radii[i]), sigma * stats.norm.ppf(low), rel_tol=1e-9)
    # and the radii are sound and tight for a half-space: below the true distance, close to it
    # when the point is far enough to be certified
    assert labels.tolist()[3:] == [0, 1, 1] and labels[0] == ABSTAIN
    true = torch.tensor([0.05, 0.2, 0.4, 0.6, 1.0, 3.0], dtype=torch.float64)
    assert torch.all(radii <= true)
    assert radii[4] > 0.7 and radii[3] > 0.35


def test_constant_classifier_closed_form_radius():
    sigma, n, alpha = 0.25, 1000, 0.001
    smooth = SmoothedClassifier(Constant(3), sigma)
    x = torch.rand(7, 1, 8, 8)
    labels, radii = smooth.certify(x, n0=10, n=n, alpha=alpha)
    # n successes out of n: the Clopper-Pearson lower bound is α^(1/n)
    expected = sigma * stats.norm.ppf(alpha ** (1 / n))
    assert labels.tolist() == [3] * 7
    assert torch.allclose(radii, torch.full((7,), expected, dtype=torch.float64))
    assert math.isclose(expected, 0.25 * 2.4617, rel_tol=1e-3)  # the largest radius at this n
    assert smooth.predict(x, n=20, alpha=alpha).tolist() == [3] * 7


def test_abstains_when_top_class_not_confident():
    x = torch.rand(40, 1, 8, 8)
    smooth = SmoothedClassifier(UniformRandom(10), 0.25)
    assert torch.all(smooth.predict(x, n=200, alpha=0.001) == ABSTAIN)
    labels, radii = smooth.certify(x, n0=50, n=500, alpha=0.001)
    assert torch.all(labels == ABSTAIN) and torch.all(radii == 0)
    # a fair coin between two classes: p_A = ½ is never certified, PREDICT abstains
    coin = SmoothedClassifier(UniformRandom(2), 0.25)
    assert (coin.predict(x, n=400, alpha=0.001) == ABSTAIN).float().mean() >= 0.95
    labels, _ = coin.certify(x, n0=50, n=400, alpha=0.001)
    assert torch.all(labels == ABSTAIN)


def test_statistics_helpers():
    k = np.array([0, 1, 50, 99, 100])
    low = clopper_pearson_lower(k, 100, 0.05)
    ref = [0.0] + [
        stats.binomtest(int(i), 100).proportion_ci(0.9, method="exact").low for i in k[1:]
    ]
    assert np.allclose(low, ref)
    for kk, nn_ in [(5, 10), (9, 10), (60, 100), (0, 7), (7, 7)]:
        assert math.isclose(
            float(binomial_test_two_sided(kk, nn_)), stats.binomtest(kk, nn_, 0.5).pvalue
        )
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson_lower([11], 10, 0.05)


def test_certified_accuracy_and_curve(tmp_path):
    labels = torch.tensor([1, 2, -1, 0, 5])
    radii = torch.tensor([0.1, 0.6, 0.0, 0.3, 2.0])
    y = torch.tensor([1, 2, 3, 1, 5])
    acc = certified_accuracy(labels, radii, y, [0.0, 0.1, 0.5, 1.0, 3.0])
    assert acc.tolist() == [0.6, 0.6, 0.4, 0.2, 0.0]
    png = save_certified_curve(tmp_path / "curve.png", labels, radii, y, title="t", label="σ")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="same length"):
        certified_accuracy(labels, radii[:3], y, [0.0])


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="sigma"):
        SmoothedClassifier(Constant(), 0.0)
    smooth = SmoothedClassifier(Constant(), 0.25)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(x, n0=0, n=10)
    with pytest.raises(ValueError, match="alpha"):
        smooth.predict(x, n=10, alpha=1.5)
    with pytest.raises(ValueError, match="sigma"):
        train_gaussian_augmentation("mlp", (x, torch.zeros(2, dtype=torch.long)), sigma=-1)
    with pytest.raises(ValueError, match="epochs"):
        train_gaussian_augmentation("mlp", (x, torch.zeros(2, dtype=torch.long)), 0.1, 0)


@pytest.fixture(scope="module")
def digits_smoothed(tmp_path_factory):
    """A Gaussian-augmented (σ = 0.25) MLP on sklearn digits, saved in zoo format."""
    from advex import data

    out = tmp_path_factory.mktemp("gauss") / "mlp"
    train, test = data.digits("train"), data.digits("test")
    model = train_gaussian_augmentation(
        "mlp", train, sigma=0.25, epochs=30, lr=3e-3, batch_size=32, out_dir=out, test_data=test
    )
    return model, out, train, test


def test_gaussian_training_deterministic_and_saved(digits_smoothed):
    from advex import zoo

    model, out, train, test = digits_smoothed
    card = zoo.load_card(out)
    assert card["sigma"] == 0.25 and card["arch"] == "mlp"
    assert card["accuracy_noisy"] >= 0.85 and card["accuracy"] >= 0.9
    loaded = zoo.load(out)
    x = test.tensors()[0][:50]
    assert torch.equal(loaded(x), model(x))
    again = train_gaussian_augmentation("mlp", train, sigma=0.25, epochs=2, lr=3e-3)
    twice = train_gaussian_augmentation("mlp", train, sigma=0.25, epochs=2, lr=3e-3)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), twice.state_dict().values(), strict=True)
    )


def test_certified_accuracy_at_zero_matches_predict(digits_smoothed):
    """On the 360 digits test images (σ = 0.25, n0 = 100, n = 1000, α = 0.001): certified
    accuracy at r = 0 is within 5 points of the PREDICT accuracy of the smoothed classifier
    (n = 1000), and both within 10 points of the base model's accuracy on noisy inputs."""
    model, out, _, test = digits_smoothed
    x, y = test.tensors()
    model.train()  # the classifier must run it in eval mode and restore the mode
    smooth = SmoothedClassifier(model, 0.25, batch_size=4000)
    labels, radii = smooth.certify(x, 100, 1000, 0.001, torch.Generator().manual_seed(0))
    assert model.training and all(p.requires_grad for p in model.parameters())
    pred = smooth.predict(x, 1000, 0.001, torch.Generator().manual_seed(1))
    cert0 = float(certified_accuracy(labels, radii, y, [0.0])[0])
    pred_acc = float((pred == y).double().mean())
    noisy = zoo_card_noisy(out)
    print(f"cert@0 {cert0:.3f} predict {pred_acc:.3f} noisy base {noisy:.3f}")
    assert abs(cert0 - pred_acc) <= 0.05, (cert0, pred_acc)
    assert abs(pred_acc - noisy) <= 0.1 and cert0 >= 0.8
    # determinism: same generator seed, same certificates
    labels2, radii2 = smooth.certify(x[:20], 100, 1000, 0.001, torch.Generator().manual_seed(0))
    labels3, radii3 = smooth.certify(x[:20], 100, 1000, 0.001, torch.Generator().manual_seed(0))
    assert torch.equal(labels2, labels3) and torch.equal(radii2, radii3)
    model.eval()


def zoo_card_noisy(out) -> float:
    from advex import zoo

    return float(zoo.load_card(out)["accuracy_noisy"])

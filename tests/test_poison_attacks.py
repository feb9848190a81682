"""Poisoning attacks as dataset transformations: counts, determinism, untouched inputs, the
clean-label constraints, shape-generic triggers and clear errors on bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advex.data import ArrayDataset
from advex.poison import BadNets, Blend, CleanLabel, FeatureCollision, Trigger, features
from advex.poison.defenses import roc_auc, score_detection, spectral_signatures


def _data(n=200, c=1, h=28, w=28, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    y = torch.arange(n) % k
    return ArrayDataset(x, y, num_classes=k, name="toy")


def _tiny_model(c=1, h=28, w=28, k=10):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, k),
    ).eval()


ATTACKS = [
    lambda: BadNets(0.1, 3),
    lambda: BadNets(0.1, 3, mode="all-to-all", trigger=Trigger("cross", 5, "top-left")),
    lambda: Blend(0.05, 2, opacity=0.3),
]


@pytest.mark.parametrize("make", ATTACKS)
def test_exact_count_determinism_and_untouched_input(make):
    data = _data()
    x0, y0 = data.x.clone(), data.y.clone()
    p1, i1 = make()(data)
    p2, i2 = make()(data)
    assert len(i1) == round(make().rate * len(data))
    assert torch.equal(i1, i2) and torch.equal(p1.x, p2.x) and torch.equal(p1.y, p2.y)
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0)  # the caller's dataset
    assert p1 is not data and p1.x.data_ptr() != data.x.data_ptr()
    changed = (p1.x != data.x).flatten(1).any(1) | (p1.y != data.y)
    others = torch.ones(len(data), dtype=torch.bool)
    others[i1] = False
    assert not bool(changed[others].any())  # nothing outside the reported indices
    assert bool(changed[i1].all())
    # another seed picks other samples
    a = make()
    a.seed = 1
    _, i3 = a(data)
    assert not torch.equal(i1, i3)


def test_badnets_labels_and_trigger():
    data = _data()
    p, idx = BadNets(0.1, 3)(data)
    assert bool((p.y[idx] == 3).all())
    # the default trigger: a 4x4 checkerboard, bottom right, margin 1
    patch = p.x[idx][:, 0, 23:27, 23:27]
    expect = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert torch.equal(patch, expect.expand_as(patch))
    p2, idx2 = BadNets(0.1, 3, mode="all-to-all")(data)
    assert torch.equal(p2.y[idx2], (data.y[idx2] + 1) % 10)


def test_three_channel_trigger_colour_and_blend():
    data = _data(n=50, c=3, h=32, w=32, k=5)
    t = Trigger("square", 3, (2, 5), colour=(1.0, 0.0, 0.5))
    p, idx = BadNets(0.2, 1, trigger=t)(data)
    assert len(idx) == 10
    assert torch.equal(
        p.x[idx][:, :, 2:5, 5:8], torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1).expand(10, 3, 3, 3)
    )
    pb, ib = Blend(0.2, 1, opacity=0.5)(data)
    pat = Blend(0.2, 1, opacity=0.5).pattern_for((3, 32, 32), (0.0, 1.0))
    assert torch.allclose(pb.x[ib], 0.5 * data.x[ib] + 0.5 * pat)


def test_clean_label_only_target_class_labels_unchanged_and_bounded():
    data = _data(n=100)
    model = _tiny_model()
    with torch.no_grad():  # classifies class 4 correctly (PGD skips misclassified points)
        model[-1].bias[4] = 3.0
    atk = CleanLabel(0.05, 4, model=model, eps=0.1, steps=3)
    x0 = data.x.clone()
    p, idx = atk(data)
    assert len(idx) == 5
    assert bool((data.y[idx] == 4).all()) and torch.equal(p.y, data.y)
    assert torch.equal(data.x, x0)
    mask, _ = atk.trigger.mask_and_pattern((1, 28, 28))
    outside = (1 - mask).bool().expand(1, 28, 28)
    delta = (p.x[idx] - data.x[idx])[:, outside]
    assert float(delta.abs().max()) <= 0.1 + 1e-6 and float(delta.abs().max()) > 0.01
    inside = p.x[idx][:, mask.bool().expand(1, 28, 28)]
    assert torch.equal(inside, atk.apply_trigger(data.x[idx])[:, mask.bool().expand(1, 28, 28)])
    # too many for the target class
    with pytest.raises(ValueError, match="only 10 are eligible"):
        CleanLabel(0.2, 4, model=model)(data)
    with pytest.raises(ValueError, match="needs a reference model"):
        CleanLabel(0.05, 4)(data)
    # Turner et al.'s trigger by default: a 3x3 checkerboard in each of the four corners
    assert int(mask.sum()) == 4 * 9
    cb = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    x = atk.apply_trigger(torch.full((1, 1, 28, 28), 0.5))[0, 0]
    for r, c in ((1, 1), (1, 24), (24, 1), (24, 24)):
        assert torch.equal(x[r : r + 3, c : c + 3], cb)
    assert float((x == 0.5).float().sum()) == 28 * 28 - 36


def test_feature_collision_moves_features_toward_the_target():
    data = _data(n=100)
    model = _tiny_model()
    t = data.x[1]  # class 1
    atk = FeatureCollision(0.05, 4, target_input=t, model=model, steps=30, lr=0.05, opacity=0.0)
    p, idx = atk(data)
    assert bool((data.y[idx] == 4).all()) and torch.equal(p.y, data.y)
    ft = features(model, t[None])
    before = (features(model, data.x[idx]) - ft).norm(dim=1)
    after = (features(model, p.x[idx]) - ft).norm(dim=1)
    assert bool((after < before).all())
    assert float(p.x.min()) >= 0 and float(p.x.max()) <= 1


@pytest.mark.parametrize("rate", [0, 0.0, -0.1, 1, 1.0, 1.5, math.nan])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match="rate must lie strictly between 0 and 1"):
        BadNets(rate, 0)


def test_bad_inputs():
    data = _data()
    with pytest.raises(TypeError, match="rate must be a number"):
        BadNets(True, 0)
    with pytest.raises(ValueError, match="target class 10 is out of range"):
        BadNets(0.1, 10)(data)
    with pytest.raises(ValueError, match="target must be a class index"):
        BadNets(0.1, -1)
    with pytest.raises(ValueError, match="does not fit in a 28x28 image"):
        BadNets(0.1, 0, trigger=Trigger(size=30))(data)
    with pytest.raises(ValueError, match="does not fit"):
        BadNets(0.1, 0, trigger=Trigger(size=4, position=(26, 0)))(data)
    with pytest.raises(ValueError, match="colour"):
        BadNets(0.1, 0, trigger=Trigger(colour=(1.0, 0.0)))(data)
    with pytest.raises(ValueError, match="unknown trigger shape"):
        Trigger("star")
    with pytest.raises(ValueError, match="poisons no sample"):
        BadNets(0.001, 0)(data)
    with pytest.raises(ValueError, match="must hold images"):
        BadNets(0.1, 0)(ArrayDataset(torch.rand(20, 5), torch.arange(20) % 2))
    model = _tiny_model()
    with pytest.raises(ValueError, match="no class labels"):
        spectral_signatures(model, data.x)
    with pytest.raises(ValueError, match="no class labels"):
        BadNets(0.1, 0)(data.x)


def test_roc_auc_and_scores_match_definitions():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (200,), generator=g).float()  # many ties
    pos = torch.rand(200, generator=g) < 0.3
    assert roc_auc(s, pos) == pytest.approx(roc_auc_score(pos.numpy(), s.numpy()))
    flagged = torch.zeros(10, dtype=torch.bool)
    flagged[[0, 1, 5]] = True
    m = score_detection(flagged, None, [0, 1, 2], 10)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 7)

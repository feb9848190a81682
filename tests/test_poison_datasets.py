"""The victim recipe follows the data: GTSRB-shaped data (3x32x32, 43 classes) gets the zoo's
traffic-sign CNN with per-image standardisation (a model layer, so the trigger is stamped on
raw pixels), other data ``smallcnn``; and a short BadNets run on a small real GTSRB subset
plants a backdoor that the clean reference (the control) does not show."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from advex import zoo
from advex.data import ArrayDataset, gtsrb
from advex.poison import (
    BadNets,
    VictimRecipe,
    default_recipe,
    gtsrb_victim_recipe,
    is_gtsrb_shaped,
    measure,
    train_victim,
    victim_arch_kwargs,
)
from advex.zoo.traffic import GTSRB_SMALL_RECIPE, PerImageStandardize


def _images(n, shape, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(
        torch.rand(n, *shape, generator=g), torch.arange(n) % k, num_classes=k, name="synthetic"
    )


def test_gtsrb_shaped_data_gets_the_traffic_sign_recipe():
    ds = _images(86, (3, 32, 32), 43)
    assert is_gtsrb_shaped(ds)
    r = default_recipe(ds, seed=3)
    assert r == gtsrb_victim_recipe(seed=3)
    assert r.arch == GTSRB_SMALL_RECIPE["arch"] == "gtsrb-cnn"
    assert r.arch_kwargs == GTSRB_SMALL_RECIPE["arch_kwargs"] and r.arch_kwargs["standardize"]
    for key in ("lr", "batch_size", "schedule", "label_smoothing", "weight_decay"):
        assert getattr(r, key) == GTSRB_SMALL_RECIPE[key]
    assert r.augment is None and r.seed == 3 and "gtsrb-cnn-small" in r.name
    assert r.channels_last  # NHWC convolutions, as the zoo's gtsrb-cnn recipe
    kw = victim_arch_kwargs(r, ds)
    assert kw["num_classes"] == 43
    model = zoo.build(r.arch, **kw)
    # the normalisation is the model's first layer: attacks and triggers work on [0, 1] pixels
    assert isinstance(model[0], PerImageStandardize)
    assert model(ds.x[:2]).shape == (2, 43)


@pytest.mark.parametrize("shape,k", [((1, 28, 28), 10), ((3, 32, 32), 10), ((3, 28, 28), 43)])
def test_other_data_gets_smallcnn(shape, k):
    ds = _images(20, shape, k)
    assert not is_gtsrb_shaped(ds)
    assert default_recipe(ds) == VictimRecipe()
    r = VictimRecipe()
    assert (r.arch, r.epochs, r.channels_last, r.schedule) == ("smallcnn", 6, True, "cosine")


def test_channels_last_reaches_the_trainer(monkeypatch):
    """The recipe's channels_last is what the trainer gets; the model comes back in the default
    memory format (weights saved and loaded as usual) and still classifies as one trained on
    NCHW tensors would (the same seeded steps, only the convolution layout differs)."""
    import advex.zoo.traffic as T

    seen = []
    real = T.fit_sign_model

    def spy(*a, **k):
        seen.append(k["channels_last"])
        return real(*a, **k)

    monkeypatch.setattr(T, "fit_sign_model", spy)
    ds = _images(64, (3, 32, 32), 43)
    tiny = dataclasses.replace(
        gtsrb_victim_recipe(), arch_kwargs={"width": 4, "standardize": True}, epochs=1
    )
    nhwc = train_victim(ds, tiny)
    nchw = train_victim(ds, dataclasses.replace(tiny, channels_last=False))
    assert seen == [True, False]
    w = next(p for p in nhwc.parameters() if p.dim() == 4)
    assert w.is_contiguous()  # handed back in the default (NCHW) layout
    with torch.no_grad():
        a, b = nhwc(ds.x), nchw(ds.x)
    assert torch.allclose(a, b, atol=1e-3), float((a - b).abs().max())


def test_gtsrb_arch_refuses_other_image_shapes():
    ds = _images(20, (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"gtsrb-cnn victim takes \(3, 32, 32\)"):
        victim_arch_kwargs(gtsrb_victim_recipe(), ds)
    with pytest.raises(ValueError, match="label_smoothing"):
        bad = dataclasses.replace(gtsrb_victim_recipe(), label_smoothing=1.5)
        train_victim(_images(8, (3, 32, 32), 43), bad)


#: five frequent GTSRB classes; the target (priority road) is one of them, so the victim must
#: learn the trigger against real images of its class rather than own an otherwise empty class
CLASSES = [1, 2, 12, 13, 38]
TARGET = 12


@pytest.fixture(scope="module")
def gtsrb_subset(datasets_root):
    root = datasets_root / "gtsrb-32x32"
    if not root.is_dir():
        pytest.skip("gtsrb-32x32 not in the shared datasets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, test = gtsrb(root, "train", classes=CLASSES), gtsrb(root, "test", classes=CLASSES)
    g = torch.Generator().manual_seed(0)
    train = train.subset(torch.randperm(len(train), generator=g)[:1500])
    test = test.subset(torch.randperm(len(test), generator=g)[:600])
    return train, test


def test_short_badnets_run_on_real_gtsrb(gtsrb_subset):
    train, test = gtsrb_subset
    assert is_gtsrb_shaped(train)  # 43 classes, 3x32x32, whatever classes the subset holds
    # the data's recipe, made tiny for CI: a narrower network, 4 epochs of batch 32 (batch 128
    # gives only 47 steps on 1,500 images: 43 % attack success, measured)
    recipe = dataclasses.replace(
        default_recipe(train),
        arch_kwargs={"width": 8, "standardize": True},
        epochs=4,
        batch_size=32,
    )
    attack = BadNets(0.05, TARGET)
    m = measure(attack, train, test, recipe=recipe)
    assert m.recipe["arch"] == "gtsrb-cnn" and m.recipe["arch_kwargs"]["num_classes"] == 43
    # the trigger is in pixel space: the poisoned images hold the raw checkerboard values
    p = m.poisoned.dataset.x[m.poisoned.indices]
    patch = p[:, :, -5:-1, -5:-1]
    assert set(patch.unique().tolist()) == {0.0, 1.0}
    assert bool((m.poisoned.dataset.y[m.poisoned.indices] == TARGET).all())
    # the backdoor works, the clean model (the control) does not have it
    assert m.attack_success_rate >= 0.8, m.attack_success_rate
    assert m.attack_success_rate_reference <= 0.2, m.attack_success_rate_reference
    assert m.clean_accuracy_reference >= 0.8, m.clean_accuracy_reference
    assert m.accuracy_drop <= 0.1, (m.clean_accuracy, m.clean_accuracy_reference)


def test_cli_poison_on_fashion_mnist(datasets_root, tmp_path):
    import json

    from click.testing import CliRunner

    from advex.cli import main

    root = datasets_root / "fashion-mnist"
    if not root.is_dir():
        pytest.skip("fashion-mnist not in the shared datasets")
    out = tmp_path / "fashion"
    r = CliRunner().invoke(
        main,
        ["poison", "--data", f"fashion-mnist:{root}", "--n-train", "1000", "--n-test", "300"]
        + ["--rate", "0.05", "--target", "0", "--epochs", "1", "--no-progress", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["recipe"]["arch"] == "smallcnn" and res["recipe"]["epochs"] == 1
    assert res["recipe"]["arch_kwargs"]["in_channels"] == 1
    assert res["recipe"]["lr"] == VictimRecipe().lr  # the data's recipe, --epochs overridden
    assert res["n_poisoned"] == 50 and res["data"].startswith("fashion-mnist:")
    assert zoo.load(out).card["name"] == "poisoned-victim"


def test_recipe_of_an_old_card_keeps_the_plain_path():
    # a results.json written before `channels_last` existed was trained on the plain path; the
    # new default (True) must not change how `advex scan --repair` retrains it
    from advex.poison.runs import _recipe_of

    old = {"recipe": {"arch": "smallcnn", "epochs": 4, "seed": 0}, "arch_kwargs": {"k": 1}}
    recipe, kw = _recipe_of(old)
    assert (recipe.epochs, recipe.channels_last, kw) == (4, False, {"k": 1})
    new = {"recipe": {**VictimRecipe().__dict__, "arch_kwargs": {"k": 2}}}
    recipe, kw = _recipe_of(new)
    assert recipe == VictimRecipe() and recipe.channels_last and kw == {"k": 2}

"""The patch threat model of ``advex evaluate`` (PatchPGD: a per-image patch at a random
placement) and the traffic-sign zoo recipes (``gtsrb-cnn`` / the test model
``gtsrb-cnn-small``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from advex.attacks.physical import PatchPGD
from advex.threats.patch import PatchThreat
from advex.zoo.traffic import GTSRB_RECIPE, gtsrb_cnn, sign_augment


def test_placement_from_uniform_and_batched_place():
    th = PatchThreat(None, size=32, area=0.05, placement="random")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    pl = th.sample_placement(6, g1)
    u = torch.stack([torch.rand(6, generator=g2) for _ in range(4)], -1)
    assert torch.equal(pl, th.placement_from_uniform(u))
    k = th.patch_side
    patches = torch.rand(6, 3, k, k, generator=g1)
    like = torch.zeros(6, 3, 32, 32)
    canvas, mask = th.place(patches, pl, like)  # one patch per placement
    for i in range(6):
        c1, m1 = th.place(patches[i], pl[i : i + 1], like[:1])
        assert torch.allclose(canvas[i : i + 1], c1) and torch.allclose(mask[i : i + 1], m1)
    with pytest.raises(ValueError, match="3 patches for 6 placements"):
        th.place(patches[:3], pl, like)


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 16 * 16, 5),
    ).eval()  # fmt: skip


def test_patch_pgd_changes_only_a_patch_and_is_per_point():
    model = _tiny_model()
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    atk = PatchPGD(area=0.1, size=16, steps=5, eot_placements=3, seed=3)
    a = atk(model, x[:6], y[:6])
    b = atk(model, x[3:10], y[3:10])  # another batch: the shared points get the same patch
    assert torch.equal(a.x_adv[3:], b.x_adv[:3])
    assert torch.equal(a.x_adv, atk(model, x[:6], y[:6]).x_adv)  # deterministic per seed
    k = atk.threat.patch_side
    changed = (a.x_adv != x[:6]).any(1).flatten(1).sum(1)
    assert bool((changed <= 2 * (1.2 * k) ** 2).all()) and bool((changed > 0).any())
    assert float(a.x_adv.min()) >= 0 and float(a.x_adv.max()) <= 1
    # at most steps × EOT gradients per point, fewer for the points fooled early
    assert int(a.gradients.max()) <= 5 * 3
    with pytest.raises(ValueError, match="random-placement"):
        PatchPGD(threat=PatchThreat("square", size=16, area=0.1))
    with pytest.raises(ValueError, match="steps"):
        PatchPGD(steps=0)


@pytest.fixture(scope="module")
def gtsrb_small(datasets_root):
    from advex import data as D
    from advex import zoo

    root = datasets_root / "gtsrb-32x32"
    if not root.is_dir():
        pytest.skip("gtsrb-32x32 not in the shared datasets")
    model = zoo.load("gtsrb-cnn-small", data_root=root, progress=False)
    test = D.gtsrb(root, "test", classes=[1, 2, 13, 14, 38])  # reads these classes only
    return model, test.subset(torch.arange(0, len(test), len(test) // 32)[:32]), root


def test_patch_robust_accuracy_on_the_zoo_model(gtsrb_small):
    from advex.evaluate.physical import patch_robust_accuracy

    model, test, _ = gtsrb_small
    res = patch_robust_accuracy(model, test, area=0.1, steps=15, eot_placements=4)
    # measured: clean 100%, robust 56.2% under a 10% patch (15 steps × 4 placements)
    assert res.clean_accuracy >= 0.9 and res.robust_accuracy <= res.clean_accuracy - 0.25
    small = patch_robust_accuracy(model, test, area=0.01, steps=2, eot_placements=1)
    assert small.robust_accuracy >= res.robust_accuracy  # a 1% patch, 2 steps: weaker


def test_cli_evaluate_threat_patch(gtsrb_small, tmp_path):
    from click.testing import CliRunner

    from advex.cli import main

    _, _, root = gtsrb_small
    out = tmp_path / "ev"
    base = [
        "evaluate", "--model", "gtsrb-cnn-small", "--data", f"gtsrb:{root}", "--n", "12",
        "--threat", "patch", "--patch-steps", "3", "--patch-eot", "2", "--no-progress",
    ]  # fmt: skip
    r = CliRunner().invoke(main, [*base, "--patch-area", "0.08", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["threat_model"] == "patch" and doc["patch"]["area"] == 0.08
    ev = doc["evaluation"]
    assert 0 <= ev["robust_accuracy"] <= ev["clean_accuracy"] <= 1
    assert doc["meta"]["threat"]["threat"] == "patch"
    assert math.isclose(doc["meta"]["threat"]["area"], 0.08)
    r = CliRunner().invoke(main, [*base, "--patch-area", "1.5", "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "--patch-area" in r.output
    r = CliRunner().invoke(main, [*base, "--attack", "pgd", "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "no --attack" in r.output


def test_traffic_recipe_pieces():
    m = gtsrb_cnn(standardize=True, **{k: v for k, v in GTSRB_RECIPE["arch_kwargs"].items()
                                       if k != "standardize"})  # fmt: skip
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 43)
    with pytest.raises(ValueError, match="convs"):
        gtsrb_cnn(convs=(1, 0, 1))
    aug = sign_augment(GTSRB_RECIPE["augment"])
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert "blur" in GTSRB_RECIPE["augment"] and GTSRB_RECIPE["min_accuracy"] >= 0.97

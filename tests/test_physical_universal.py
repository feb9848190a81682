"""The universal adversarial patch's options: placement on the sign's face (``patch_region``),
the margin loss, restarts with selection on held-out fitting images, and the gradient path
from the model's loss back to the patch pixels (through the paste, the views and the
per-image standardisation)."""

from __future__ import annotations

import json

import pytest
import torch

from advex.attacks.physical import AdversarialPatch
from advex.threats.patch import PatchThreat, ViewDistribution
from advex.zoo.traffic import PerImageStandardize


def test_patch_region_keeps_the_patch_on_the_central_square():
    th = PatchThreat(None, size=32, area=0.05, placement="random", patch_region=0.7)
    pl = th.sample_placement(400, torch.Generator().manual_seed(0))
    x = torch.zeros(400, 3, 32, 32)
    _, m = th.place(torch.ones(th.sticker_shape), pl, x)
    lo, hi = round(32 * 0.15), round(32 * 0.85)  # the central 70%: pixels 4.8 .. 27.2
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[lo:hi, lo:hi] = True
    assert float(m[:, 0][:, ~inside].max()) == 0.0  # nothing outside the central square
    # ... and the centres still spread over the room there is (not all in the middle)
    assert float(pl[:, 0].abs().max()) > 0.2 and float(pl[:, 1].abs().max()) > 0.2
    # the default (1.0) is the whole image, as before; the option reaches the threat's dict
    wide = PatchThreat(None, size=32, area=0.05, placement="random")
    assert wide.patch_region == 1.0
    assert (
        float(wide.sample_placement(400, torch.Generator().manual_seed(0))[:, 0].abs().max()) > 0.6
    )
    assert th.to_dict()["patch_region"] == 0.7 and th.with_budget(0.03).patch_region == 0.7
    json.dumps(th.to_dict())


def test_patch_region_and_loss_bad_values():
    with pytest.raises(ValueError, match="patch_region must be in"):
        PatchThreat(None, placement="random", patch_region=0.0)
    with pytest.raises(ValueError, match="patch_region must be in"):
        PatchThreat(None, placement="random", patch_region=1.5)
    with pytest.raises(TypeError, match="patch_region"):
        PatchThreat(None, placement="random", patch_region="0.8")
    with pytest.raises(ValueError, match="does not fit in the central 0.3"):
        PatchThreat(None, placement="random", area=0.1, patch_region=0.3)
    with pytest.raises(ValueError, match="loss must be 'ce' or 'margin'"):
        AdversarialPatch(target=1, loss="hinge")
    with pytest.raises(ValueError, match="kappa"):
        AdversarialPatch(target=1, loss="margin", kappa=-1.0)
    with pytest.raises(ValueError, match="restarts"):
        AdversarialPatch(target=1, restarts=0)


def test_margin_loss_is_cw_and_stops_pulling_fooled_draws():
    atk = AdversarialPatch(target=2, loss="margin", kappa=1.0)
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [0.0, 1.0, 1.5]], requires_grad=True)
    obj = atk._objective(torch.tensor([0, 0, 0]))(logits)
    # best other minus target, clipped at −κ
    assert torch.allclose(obj, torch.tensor([2.0, -1.0, -0.5]))
    (g,) = torch.autograd.grad(obj.sum(), logits)
    assert torch.equal(g[1], torch.zeros(3))  # fooled by more than κ: no gradient
    assert g[0].tolist() == [0.0, 1.0, -1.0] and g[2].tolist() == [0.0, 1.0, -1.0]
    ce = AdversarialPatch(target=2)._objective(torch.tensor([0, 0, 0]))(logits)
    assert torch.allclose(
        ce, torch.nn.functional.cross_entropy(logits, torch.tensor([2, 2, 2]), reduction="none")
    )


def _tiny_sign_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        PerImageStandardize(),
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(6 * 8 * 8, 4),
    ).eval()  # fmt: skip


def test_gradient_reaches_the_patch_through_paste_views_and_standardisation():
    """Finite differences on single patch pixels against autograd, the whole path in double
    precision: patch → paste at a rotated, scaled placement → viewing conditions → per-image
    standardisation → CNN → margin loss."""
    model = _tiny_sign_model().double()
    th = PatchThreat(
        None, size=16, area=0.1, placement="random",
        views=ViewDistribution(noise=(0.0, 0.0), seed=3),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    pl = th.sample_placement(3, g).double()
    params = th.views.sample(3, g)
    patch = 0.2 + 0.6 * torch.rand(th.sticker_shape, generator=g, dtype=torch.float64)

    def loss(p):
        z = model(th.views.apply(th.apply(x, p, pl), params))
        return (z[:, 1] - z[:, 0]).sum()

    p = patch.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(p), p)
    assert float(grad.abs().sum()) > 0
    k = th.sticker_shape[-1]
    checked = 0
    for c, i, j in [(0, k // 2, k // 2), (1, 1, k - 2), (2, k - 2, 1)]:
        e = torch.zeros_like(patch)
        e[c, i, j] = 1e-6
        with torch.no_grad():
            fd = (loss(patch + e) - loss(patch - e)) / 2e-6
        assert float(fd) == pytest.approx(float(grad[c, i, j]), rel=1e-4, abs=1e-8)
        checked += abs(float(grad[c, i, j])) > 1e-6
    assert checked >= 1  # at least one pixel with a real (non-zero) gradient was compared
    # the standardisation layer is differentiable on its own
    xs = (0.2 + 0.6 * torch.rand(2, 3, 5, 5, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(PerImageStandardize(), (xs,))


def test_restarts_keep_the_best_on_held_out_images(monkeypatch):
    from advex.attacks import physical

    model = _tiny_sign_model()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    kw = dict(target=3, size=16, area=0.1, steps=6, batch_size=8, views=ViewDistribution.identity())
    found, inner = [], physical.PhysicalAttack._optimise

    def spy(self, *a, **k):
        found.append(inner(self, *a, **k))
        return found[-1]

    monkeypatch.setattr(physical.PhysicalAttack, "_optimise", spy)
    atk = AdversarialPatch(restarts=3, select_draws=2, patch_region=0.9, **kw).fit(model, x, y)
    scores = atk.restart_scores_
    assert len(found) == 3 and len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    assert not torch.equal(found[0], found[1])  # restarts start and draw differently
    assert torch.equal(atk.sticker_, found[scores.index(max(scores))])  # the best one is kept
    # the gradient budget: restarts × steps × batch; the selection costs forward passes only
    # (every held-out image — a fifth of the 30-odd non-target images — × 2 draws × 3)
    n_val = max(1, int((y != 3).sum()) // 5)
    assert atk.fit_gradients_ == 3 * 6 * 8
    assert atk.fit_queries_ == len(x) + 3 * 6 * 8 + 3 * 2 * n_val
    one = AdversarialPatch(restarts=1, **kw).fit(model, x, y)
    assert one.restart_scores_ == [] and one.sticker_.shape == atk.sticker_.shape
    # deterministic per seed
    again = AdversarialPatch(restarts=3, select_draws=2, patch_region=0.9, **kw).fit(model, x, y)
    assert torch.equal(again.sticker_, atk.sticker_)


def test_cli_patch_options_are_checked_before_any_work(tmp_path):
    from click.testing import CliRunner

    from advex.cli import main

    base = ["physical", "--data", f"gtsrb:{tmp_path}", "--attack", "patch", "--target", "1"]
    for opt, bad, says in (
        ("--patch-region", "0", "--patch-region"),
        ("--patch-region", "1.5", "--patch-region"),
        ("--patch-loss", "hinge", "--patch-loss"),
        ("--kappa", "-1", "--kappa"),
        ("--restarts", "0", "--restarts"),
    ):
        r = CliRunner().invoke(main, [*base, opt, bad, "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and says in r.output, (opt, bad, r.output)
    assert not (tmp_path / "o").exists()

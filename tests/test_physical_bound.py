"""The universal patch's fit-time changes and the per-image upper bound (tiny models, no zoo).

- ``ModelCaller.logits`` runs a large batch in chunks: the same logits and the same counts;
- the physical attacks fit on channels-last inputs (the same patch up to float rounding, the
  same counted passes) and fall back to contiguous inputs for a model that cannot take them;
- ``benchmarks/physical_bound.py``: the per-image patches are deterministic per seed, stay in
  the printable gamut, and its evaluation draws are those of ``physical_evaluation``.
"""

from __future__ import annotations

import pytest
import torch
from benchscripts import load_benchmark
from torch import nn

from advex.attacks.base import ModelCaller
from advex.attacks.physical import AdversarialPatch
from advex.evaluate.physical import physical_evaluation


def _net(seed: int = 0, view: bool = False) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(6, 8, 3)
            )
            self.fc = nn.Linear(8 * 6 * 6, 5)

        def forward(self, x):
            h = self.conv(x)
            # .view() fails on channels-last activations: the fallback's case
            h = h.view(h.shape[0], -1) if view else h.flatten(1)
            return self.fc(h)

    return Net().eval()


def _bench():
    return load_benchmark("physical_bound")


def test_chunked_logits_equal_unchunked_and_count_the_same():
    model = _net()
    x = torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    caller = ModelCaller(model, 300, x.device)
    assert x.shape[0] > caller.chunk  # the chunked path
    with torch.no_grad():
        whole = model(x)
    out = caller.logits(x)
    assert out.shape == whole.shape
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-6)
    assert caller.queries.tolist() == [1] * 300 and int(caller.gradients.sum()) == 0
    # uneven chunks, with per-row indices: each row counted once, rows in order
    caller.chunk = 7
    idx = torch.arange(0, 300, 3)
    out = caller.logits(x[idx], idx)
    torch.testing.assert_close(out, whole[idx], rtol=0, atol=1e-6)
    counts = torch.ones(300, dtype=torch.long)
    counts[idx] += 1
    assert torch.equal(caller.queries, counts)


@pytest.mark.parametrize("view", [False, True])
def test_channels_last_fit_matches_contiguous(view):
    model = _net(view=view)
    gx = torch.Generator().manual_seed(2)
    x, y = torch.rand(24, 3, 32, 32, generator=gx), torch.randint(0, 5, (24,), generator=gx)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fits = [
        AdversarialPatch(target=1, steps=6, batch_size=8, seed=0, channels_last=cl).fit(model, x, y)
        for cl in (True, False)
    ]
    torch.testing.assert_close(fits[0].sticker_, fits[1].sticker_, rtol=0, atol=1e-4)
    assert fits[0].fit_queries_ == fits[1].fit_queries_ == 24 + 6 * 8
    assert fits[0].fit_gradients_ == fits[1].fit_gradients_ == 6 * 8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="channels_last"):
        AdversarialPatch(target=1, channels_last="yes")


def test_per_image_bound_deterministic_per_seed_and_in_gamut():
    B = _bench()
    model = _net()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    threat = B.make_threat(0.05)
    kw = dict(steps=3, draws=2, restarts=2, select_draws=3, chunk=2)
    p1, s1 = B.fit_per_image(model, x, threat, 1, seed=0, **kw)
    p2, s2 = B.fit_per_image(model, x, threat, 1, seed=0, **kw)
    p3, _ = B.fit_per_image(model, x, threat, 1, seed=1, **kw)
    assert torch.equal(p1, p2) and torch.equal(s1, s2)
    assert not torch.equal(p1, p3)
    k = threat.patch_side
    assert p1.shape == (5, 3, k, k) and ((s1 >= 0) & (s1 <= 1)).all()
    lo, hi = threat.palette.min(0).values, threat.palette.max(0).values
    assert (p1 >= lo.view(1, 3, 1, 1) - 1e-6).all() and (p1 <= hi.view(1, 3, 1, 1) + 1e-6).all()
    # a fixed location: deterministic too, and a different problem
    f1, _ = B.fit_per_image(model, x, threat, 1, seed=0, fixed=(0.0, 0.35), **kw)
    f2, _ = B.fit_per_image(model, x, threat, 1, seed=0, fixed=(0.0, 0.35), **kw)
    assert torch.equal(f1, f2) and not torch.equal(f1, p1)


def test_bound_evaluation_uses_the_draws_of_physical_evaluation():
    B = _bench()
    model = _net()
    gx = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 32, 32, generator=gx)
    threat = B.make_threat(0.1)
    sticker = threat.random_sticker(torch.Generator().manual_seed(5))
    # pick a target the model predicts sometimes, so the comparison is not 0 == 0
    with torch.no_grad():
        target = int(model(threat.views.apply(x, threat.views.sample(6))).argmax(1).mode()[0])
    hits = B.evaluate(model, x, sticker, threat, target, n_views=4)
    y = torch.full((6,), (target + 1) % 5)
    ev = physical_evaluation(model, sticker, threat, x, y, target=target, n_views=4, seed=1000)
    assert hits.shape == (6, 4)
    assert float(hits.float().mean()) == pytest.approx(ev["success"])
    assert torch.equal(
        hits, B.evaluate(model, x, sticker.expand(6, -1, -1, -1), threat, target, n_views=4)
    )


def test_bound_benchmark_quick(datasets_root, tmp_path, monkeypatch, capsys):
    import json
    import sys

    if not (datasets_root / "gtsrb-32x32").is_dir():
        pytest.skip("gtsrb-32x32 not in the shared datasets")
    monkeypatch.setenv("ADVEX_DATASETS", str(datasets_root))
    B = _bench()
    out = tmp_path / "bound.json"
    argv = ["physical_bound.py", "--quick", "--steps-curve", "2", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    B.main()
    doc = json.loads(out.read_text())
    row = doc["rows"][0]
    assert doc["quick"] and row["patch_side_px"] == 7
    rnd, fixed = row["per_image_random"], row["per_image_fixed"]
    assert rnd["success"]["n"] == 6 * 2 and len(rnd["per_image_success"]) == 6
    assert set(rnd["steps_curve"]) == {"2"} and 0 <= rnd["steps_curve"]["2"]["rate"] <= 1
    assert len(fixed["location_scores_on_training_images"]) == 9 and len(fixed["location"]) == 2
    assert "per-image bound, fixed placement" in capsys.readouterr().out

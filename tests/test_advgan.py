"""AdvGAN (advex.attacks.generative): inside the threat, the caller's model untouched, seeded
and exactly resumable training, success on the zoo CNN far above noise, targeted success,
save/load, and clear errors for bad input."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advex import data, zoo
from advex.attacks import AdvGAN
from advex.attacks.generative import ConvGenerator
from advex.threats import ThreatModel
from advex.training import TrainingInterrupted


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These small nets run fastest on one thread; the setting is restored for other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toy(n: int = 24, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % classes
    return net.eval(), x, y


def _tiny(eps=0.1, norm="linf", **kw) -> AdvGAN:
    opts = {"epochs": 1, "batch_size": 8, "width": 2, "blocks": 0, **kw}
    return AdvGAN(eps, norm, **opts)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# -- the threat ---------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.sampled_from([0.01, 0.1, 0.3, 1.0, 3.0]),
    scale=st.sampled_from([0.1, 10.0, 1000.0]),
)
def test_every_example_lies_inside_the_threat(norm, eps, scale):
    net, x, y = _toy()
    atk = _tiny(eps, norm).fit(net, (x, y))
    with torch.no_grad():  # a generator with large outputs: the threat alone keeps the budget
        for p in atk.generator_.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * scale)
    x_adv = atk.generate(x)
    assert bool(atk.threat.contains(x_adv, x, tol=1e-5).all())
    res = atk(net, x, y)
    assert bool(atk.threat.contains(res.x_adv, x, tol=1e-5).all())
    assert float(res.norms.max()) <= eps + 1e-5
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape


def test_attack_costs_two_target_queries_and_no_gradient():
    net, x, y = _toy()
    atk = _tiny().fit(net, (x, y))
    res = atk(net, x, y)
    assert torch.equal(res.queries, torch.full_like(res.queries, 2))
    assert int(res.gradients.sum()) == 0
    with torch.no_grad():
        assert torch.equal(res.success, net(res.x_adv).argmax(1) != y)
    done = net(x).argmax(1) != y
    assert torch.equal(res.x_adv[done], x[done])  # already misclassified: left unchanged


def test_callers_model_untouched():
    net, x, y = _toy()
    net.train()
    net[1].bias.requires_grad_(False)
    before = _weights(net)
    with pytest.warns(UserWarning, match="train mode"):
        atk = _tiny().fit(net, (x, y))
    assert net.training and all(m.training for m in net.modules())
    assert net[1].weight.requires_grad and not net[1].bias.requires_grad
    assert all(p.grad is None for p in net.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atk(net, x, y)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


# -- seeded, resumable training ----------------------------------------------------------------
def test_fit_is_deterministic_per_seed():
    net, x, y = _toy()
    a = _weights(_tiny(epochs=2, seed=3).fit(net, (x, y)).generator_)
    b = _weights(_tiny(epochs=2, seed=3).fit(net, (x, y)).generator_)
    c = _weights(_tiny(epochs=2, seed=4).fit(net, (x, y)).generator_)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_fit_resumes_exactly(tmp_path):
    net, x, y = _toy()
    whole = _tiny(epochs=3, seed=1).fit(net, (x, y))

    def stop_after_first(trainer, epoch, entry):
        if epoch == 0:
            raise TrainingInterrupted("simulated")

    with pytest.raises(TrainingInterrupted):
        _tiny(epochs=3, seed=1).fit(net, (x, y), out_dir=tmp_path, on_epoch_end=stop_after_first)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["epoch"] == 1 and "disc_opt" in meta["loss_state"]
    resumed = _tiny(epochs=3, seed=1).fit(net, (x, y), out_dir=tmp_path, resume=True)
    w1, w2 = _weights(whole.generator_), _weights(resumed.generator_)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert [e["train_loss"] for e in whole.history_] == [e["train_loss"] for e in resumed.history_]
    with pytest.raises(ValueError, match="different settings"):
        _tiny(epochs=3, seed=1, alpha=0.5).fit(net, (x, y), out_dir=tmp_path, resume=True)


# -- files --------------------------------------------------------------------------------------
def test_save_and_load(tmp_path):
    net, x, y = _toy()
    atk = _tiny(0.2, "l2", target=1).fit(net, (x, y))
    atk.save(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "card.json",
        "generator.safetensors",
    ]
    card = json.loads((tmp_path / "g" / "card.json").read_text())
    assert card["eps"] == 0.2 and card["norm"] == "l2" and card["target"] == 1
    assert card["input_shape"] == [1, 8, 8]
    back = AdvGAN.load(tmp_path / "g")
    assert back.target == 1 and back.threat.norm == "l2" and back.threat.eps == 0.2
    assert torch.equal(back.generate(x), atk.generate(x))
    with pytest.raises(ValueError, match=r"trained for inputs of shape \(1, 8, 8\)"):
        AdvGAN.load(tmp_path / "g", input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"trained for inputs of shape \(1, 8, 8\)"):
        other = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 3)).eval()
        back(other, torch.rand(2, 3, 8, 8), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="not a saved AdvGAN"):
        AdvGAN.load(tmp_path)
    card["format"] = "advex-generator/1"  # clipped ε·tanh generators of an older advex
    (tmp_path / "g" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="older advex.*fit it again"):
        AdvGAN.load(tmp_path / "g")


def test_linf_map_fills_the_room_exactly_and_keeps_edge_pixels_learning():
    """L∞: δ = tanh(G(x))·room, the room on each side being min(ε, distance to the box): no
    clipping. A pixel at the box's edge pushed outward (δ = 0 there) still gets a gradient
    that can move it inward (otherwise the black background freezes)."""

    class Fixed(nn.Module):
        def __init__(self, raw):
            super().__init__()
            self.raw = raw

        def forward(self, z):
            return self.raw

    atk = AdvGAN(0.3, "linf", edge_gradient=True)
    x = torch.tensor([0.0, 1.0, 0.5, 0.9, 0.1]).reshape(1, 1, 1, 5)
    raw = torch.tensor([-9.0, 9.0, 9.0, 9.0, -9.0]).reshape(1, 1, 1, 5)
    delta = (atk._perturb(Fixed(raw), x) - x).flatten()
    room = torch.tensor([0.0, 0.0, 0.3, 0.1, 0.1])  # tanh(±9) = ±1 up to rounding
    assert torch.allclose(delta.abs(), room, atol=1e-6)
    raw = torch.full((1, 1, 1, 5), -0.5, requires_grad=True)
    x_adv = atk._perturb(Fixed(raw), x)
    assert float(x_adv.detach().min()) >= 0 and float(x_adv.detach().max()) <= 1
    assert float(x_adv.detach().flatten()[0]) == 0.0  # the black pixel cannot go darker ...
    x_adv.sum().backward()  # ... and a loss that wants it brighter reaches it
    assert float(raw.grad.flatten()[0]) > 0
    assert bool((raw.grad > 0).all())
    exact = AdvGAN(0.3, "linf", edge_gradient=False)  # the exact gradient: 0 at that pixel
    raw.grad = None
    exact._perturb(Fixed(raw), x).sum().backward()
    assert float(raw.grad.flatten()[0]) == 0.0 and bool((raw.grad.flatten()[1:] > 0).all())
    with pytest.raises(ValueError, match="saturation"):
        AdvGAN(0.3, saturation=-1)


def test_three_channel_and_odd_sized_images():
    g = ConvGenerator(3, width=4)
    assert g(torch.rand(2, 3, 7, 9)).shape == (2, 3, 7, 9)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 7 * 9, 4)).eval()
    x = torch.rand(12, 3, 7, 9)
    y = torch.arange(12) % 4
    atk = _tiny(0.1).fit(net, (x, y))
    assert bool(atk.threat.contains(atk(net, x, y).x_adv, x, tol=1e-6).all())


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly(tmp_path):
    net, x, y = _toy()
    for eps in (0.0, -0.1):
        with pytest.raises(ValueError, match="eps"):
            AdvGAN(eps)
    with pytest.raises(ValueError, match="eps > 0"):
        _tiny().with_budget(0.0)
    with pytest.raises(ValueError, match="at least two classes"):
        _tiny().fit(net, (x, torch.zeros_like(y)))
    with pytest.raises(ValueError, match="target=3 is out of range"):
        _tiny(target=3).fit(net, (x, y))
    with pytest.raises(ValueError, match="target must be"):
        AdvGAN(0.1, target=-1)
    with pytest.raises(ValueError, match="fit"):
        AdvGAN(0.1)(net, x, y)
    with pytest.raises(ValueError, match="norm"):
        AdvGAN(0.1, "l1")
    with pytest.raises(ValueError, match="outside"):
        _tiny().fit(net, (x * 3, y))
    fitted = _tiny().fit(net, (x, y))
    with pytest.raises(ValueError, match="untargeted"):
        fitted(net, x, y, target=(y + 1) % 3)
    targeted = _tiny(target=2).fit(net, (x, y))
    zeros = y == 0
    with pytest.raises(ValueError, match="toward class 2"):
        targeted(net, x[zeros], y[zeros], target=1)
    # a targeted generator aims for its class by default (points of that class are refused,
    # as by every targeted attack)
    assert targeted(net, x[y != 2], y[y != 2]).target.eq(2).all()


# -- it works on the zoo CNN ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist():
    model = zoo.load("mnist-smallcnn", progress=False)
    x, y = data.mnist5k("train").tensors()
    xt, yt = data.mnist5k("test").tensors()
    return model, (x[:800], y[:800]), (xt[:300], yt[:300])


def _noise_success(model, x, y, eps):
    g = torch.Generator().manual_seed(0)
    noisy = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    with torch.no_grad():
        return float((model(noisy).argmax(1) != y).float().mean())


def test_short_fit_on_zoo_cnn_beats_noise(mnist):
    model, train, (xt, yt) = mnist
    # the edge gradient escapes the first steps' collapse (without it: 2.7 % after 75 steps)
    atk = AdvGAN(0.3, "linf", epochs=3, batch_size=32, width=8, seed=0, edge_gradient=True)
    atk.fit(model, train)
    rate = float(atk(model, xt, yt).success.float().mean())
    noise = _noise_success(model, xt, yt, 0.3)
    # stated: >= 30 % after 75 generator steps (measured 36 %); noise about 3 %
    assert rate >= 0.30 and rate >= 5 * noise + 0.1, (rate, noise)


def test_targeted_generator_reaches_its_target(mnist):
    model, train, (xt, yt) = mnist
    atk = AdvGAN(
        0.3, "linf", target=8, epochs=3, batch_size=32, width=8, seed=0, edge_gradient=True
    )
    keep = yt != 8
    res = atk.fit(model, train)(model, xt[keep], yt[keep])
    assert bool(res.target.eq(8).all())
    share = float(res.success.float().mean())
    with torch.no_grad():
        noise = (xt[keep] + 0.3 * (2 * torch.rand(xt[keep].shape) - 1)).clamp(0, 1)
        noise_share = float((model(noise).argmax(1) == 8).float().mean())
    # stated: >= 15 % of the digits that are not 8 become 8 after 75 generator steps
    # (measured 29 %); uniform noise of the same budget: about 1 %
    assert share >= 0.15 and share >= noise_share + 0.1, (share, noise_share)


def test_mask_is_respected_and_save_refuses_it(tmp_path):
    net, x, y = _toy()
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    threat = ThreatModel("linf", 0.2, mask=mask)
    atk = AdvGAN(threat=threat, epochs=1, batch_size=8, width=2, blocks=0).fit(net, (x, y))
    res = atk(net, x, y)
    assert bool(threat.contains(res.x_adv, x, tol=1e-6).all())
    assert torch.equal(res.x_adv[:, :, 4:], x[:, :, 4:])
    with pytest.raises(ValueError, match="no mask"):
        atk.save(tmp_path / "g")


# -- the sub-pixel generator ---------------------------------------------------------------------
def test_pixel_generator_shapes_threat_and_files(tmp_path):
    g = ConvGenerator(3, width=4, sampling="pixel")
    assert g(torch.rand(2, 3, 7, 9)).shape == (2, 3, 7, 9)
    with pytest.raises(ValueError, match="sampling"):
        ConvGenerator(1, sampling="bilinear")
    net, x, y = _toy()
    atk = _tiny(0.2, sampling="pixel").fit(net, (x, y))
    assert bool(atk.threat.contains(atk(net, x, y).x_adv, x, tol=1e-6).all())
    atk.save(tmp_path / "g")
    back = AdvGAN.load(tmp_path / "g")
    assert back.sampling == "pixel" and torch.equal(back.generate(x), atk.generate(x))


# -- the command line --------------------------------------------------------------------------
def test_cli_generator_fit_then_attack_round_trip(tmp_path):
    from click.testing import CliRunner

    from advex.cli import main

    out = tmp_path / "gen"
    runner = CliRunner()
    fit = ["generator", "fit", "--model", "mnist-smallcnn", "--data", "mnist5k", "--eps", "0.3"]
    fit += ["--epochs", "1", "--batch-size", "128", "--width", "2", "--blocks", "0"]
    fit += ["--n-train", "256", "--eval-n", "40", "--out", str(out), "--no-progress"]
    r = runner.invoke(main, fit)
    assert r.exit_code == 0, r.output
    for name in ("generator.safetensors", "card.json", "report.json", "grid.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 40 and report["throughput_ratio_vs_pgd40"] > 0
    assert 0 <= report["success"] <= 1 and report["pgd40_success"] >= report["noise_success"]
    assert "images/s generated" in r.output
    # resuming a finished run trains nothing more and gives the same generator
    before = (out / "generator.safetensors").read_bytes()
    r = runner.invoke(main, [*fit, "--resume"])
    assert r.exit_code == 0, r.output
    assert (out / "generator.safetensors").read_bytes() == before

    res_dir = tmp_path / "atk"
    args = ["attack", "--attack", "advgan", "--generator", str(out), "--n", "40"]
    r = runner.invoke(main, [*args, "--out", str(res_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads((res_dir / "results.json").read_text())
    assert "advgan" in json.dumps(doc["evaluation"])
    gen = AdvGAN.load(out)
    x, y = data.mnist5k("test").tensors()
    model = zoo.load("mnist-smallcnn", progress=False)
    direct = gen(model, x[:40], y[:40])
    n_ok = int((direct.clean_pred == y[:40]).sum())
    assert doc["evaluation"]["n"] == 40
    assert doc["evaluation"]["robust_accuracy"] == pytest.approx(
        (n_ok - int((direct.success & (direct.clean_pred == y[:40])).sum())) / 40
    )
    # bad input: a generator for another input shape, no generator, eps <= 0
    r = runner.invoke(main, [*args, "--data", "digits", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "trained for inputs of shape (1, 28, 28)" in r.output
    r = runner.invoke(main, ["attack", "--attack", "advgan", "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and "needs --generator" in r.output
    r = runner.invoke(main, [*args, "--eps", "0", "--out", str(tmp_path / "z")])
    assert r.exit_code != 0 and "eps > 0" in r.output
    bad = [*fit[:7], "0", *fit[8:]]
    r = runner.invoke(main, bad)
    assert r.exit_code != 0 and "--eps must be > 0" in r.output


# -- a generator as the inner attack of adversarial training -----------------------------------
def test_generator_as_inner_attack_of_adversarial_training(tmp_path):
    from advex.defenses import AdversarialTrainer

    torch.manual_seed(0)
    x = torch.rand(96, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    w0 = _weights(net)
    g = AdvGAN(0.1, width=2, blocks=0, seed=0)
    kw = dict(epochs=2, batch_size=32, eval_n=32, eval_steps=2, final_eval_steps=2)
    tr = AdversarialTrainer(net, "generator", 0.1, progress=False, generator=g, **kw)
    res = tr.fit((x, y), (x, y))
    assert g.generator_ is None  # the caller's attack object is not changed
    assert any(not torch.equal(w0[k], v) for k, v in net.state_dict().items())
    assert all(math.isfinite(e["train_loss"]) for e in res.log)
    assert tr.config()["generator"]["width"] == 2
    # it resumes: the generator and discriminator travel with the checkpoint
    net2 = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    net2.load_state_dict(w0)
    whole = {k: v.clone() for k, v in net.state_dict().items()}

    def stop(trainer, epoch, entry):
        if epoch == 0:
            raise TrainingInterrupted("simulated")

    d = tmp_path / "run"
    gen2 = AdvGAN(0.1, width=2, blocks=0, seed=0)
    t2 = AdversarialTrainer(net2, "generator", 0.1, progress=False, generator=gen2, out_dir=d, **kw)
    with pytest.raises(TrainingInterrupted):
        t2.fit((x, y), (x, y), on_epoch_end=lambda t, e, entry: stop(None, e, entry))
    t3 = AdversarialTrainer(
        net2, "generator", 0.1, progress=False, generator=gen2, out_dir=d, resume=True, **kw
    )
    t3.fit((x, y), (x, y))
    assert all(torch.equal(whole[k], v) for k, v in net2.state_dict().items())
    with pytest.raises(ValueError, match="differs from the training threat"):
        AdversarialTrainer(net, "generator", 0.3, generator=g)
    with pytest.raises(ValueError, match="inner attack of method='generator'"):
        AdversarialTrainer(net, "pgd", 0.1, generator=g)
    with pytest.raises(ValueError, match="untargeted"):
        AdversarialTrainer(net, "generator", 0.1, generator=AdvGAN(0.1, target=1))

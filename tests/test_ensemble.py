"""advex.evaluate.evaluate: the attack ensemble, its verdict and automatic BPDA / EOT."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advex.attacks.apgd import APGD
from advex.attacks.gradient import FGSM, PGD
from advex.defenses.transforms import BitDepthReduction, GaussianNoise
from advex.evaluate.ensemble import clopper_pearson, evaluate
from advex.evaluate.presets import PRESETS, Preset, Stage, derive_seed, get_preset
from advex.threats import ThreatModel

CHEAP = PRESETS["quick"].scaled(0.4)  # APGD-CE 20 steps, APGD-T 3 targets × 20 steps


def _first(data, n):
    x, y = data
    return x[:n], y[:n]


def test_standard_preset_on_zoo_cnn(mnist_model, mnist_test):
    # the real standard preset: APGD-CE breaks every point at ε = 0.3, so the later stages
    # (APGD-T, FAB-T, Square) run on nothing and cost nothing
    x, y = _first(mnist_test, 50)
    ev = evaluate(mnist_model, (x, y), eps=0.3, batch_size=25, probe=50)
    assert ev.stage_names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    stages = {s["name"]: s["params"] for s in ev.preset["stages"]}
    assert stages["apgd-ce"]["steps"] == 100 and stages["apgd-t"]["n_target_classes"] == 9
    assert stages["fab-t"]["n_target_classes"] == 9 and stages["square"]["n_queries"] == 5000
    alone = APGD(eps=0.3, steps=100, loss="ce")(mnist_model, x, y)
    assert ev.robust_accuracy <= alone.robust_accuracy
    assert ev.clean_accuracy >= 0.94 and ev.robust_accuracy <= 0.02
    assert ev.verdict == "PASS" and len(ev.checks) == 8
    # misclassified points are never attacked; the later stages only see survivors
    assert ev.per_attack[0].n_attacked == ev.n_correct
    assert ev.per_attack[-1].n_attacked == ev.n_robust
    assert sum(s.n_broken for s in ev.per_attack) == ev.n_correct - ev.n_robust
    lo, hi = ev.robust_accuracy_ci
    assert lo <= ev.robust_accuracy <= hi < 0.08
    norms = ev.norms[ev.broken_by >= 0]
    assert bool((norms <= 0.3 + 1e-6).all())
    doc = json.loads(ev.to_json())
    assert doc["verdict"] == "PASS" and doc["per_attack"][0]["name"] == "apgd-ce"
    assert doc["robust_accuracy"] == ev.robust_accuracy and doc["meta"]["seed"] == 0
    assert doc["passes"]["gradients"] == ev.gradients_total > 0


def test_ensemble_never_weaker_than_its_first_attack(mnist_model, mnist_test):
    # at ε = 0.1 about half the digits survive APGD-CE: the ensemble can only do better
    x, y = _first(mnist_test, 30)
    ev = evaluate(mnist_model, (x, y), eps=0.1, preset=CHEAP, batch_size=30, checks=False)
    alone = APGD(eps=0.1, steps=20, loss="ce")(mnist_model, x, y).robust_accuracy
    assert 0.3 <= ev.robust_accuracy <= alone + 1e-6
    accs = [s.robust_accuracy for s in ev.per_attack]
    assert accs == sorted(accs, reverse=True) and accs[0] <= ev.clean_accuracy
    assert ev.per_attack[1].n_attacked == round(accs[0] * ev.n)


def test_l2_and_l1(mnist_model, mnist_test):
    x, y = _first(mnist_test, 20)
    for norm, eps in (("l2", 2.0), ("l1", 12.0)):
        ev = evaluate(mnist_model, (x, y), eps=eps, norm=norm, preset=CHEAP, checks=False)
        assert ev.threat["norm"] == norm and ev.robust_accuracy < ev.clean_accuracy
        broken = ev.broken_by >= 0
        assert bool((ev.norms[broken] <= eps * (1 + 1e-5)).all())
    # Square has no L1 version: the standard preset drops it for L1 and says so in docs
    assert [s.name for s in PRESETS["standard"].for_norm("l1")] == ["apgd-ce", "apgd-t", "fab-t"]
    assert [s.name for s in PRESETS["standard"].for_norm("l2")][-1] == "square"


def test_quantised_model_is_attacked_through_bpda(mnist_model, mnist_test):
    x, y = _first(mnist_test, 20)
    defended = nn.Sequential(BitDepthReduction(bits=4), mnist_model).eval()
    plain = evaluate(defended, (x, y), eps=0.3, preset=CHEAP, probe=20, adapt=False)
    # zero gradients: white-box attacks would be blind, so without BPDA the model is found
    # out before any attack and evaluated with the score-based black-box stage (an upper bound)
    assert plain.access["evidence"]["gradient"] == "zero" and plain.stage_names == ["square"]
    assert plain.verdict == "UPPER-BOUND" and not plain.adaptations["applied"]
    assert "adapt=False" in plain.adaptations["description"]  # and says why
    assert plain.robust_accuracy <= 0.1
    fired = {c.name: c for c in plain.checks if not c.passed}
    assert "BPDA" in fired["usable_gradients"].recommendation
    adapted = evaluate(defended, (x, y), eps=0.3, preset=CHEAP, probe=20)
    assert adapted.adaptations["applied"] and adapted.adaptations["bpda"] == ["0"]
    assert adapted.robust_accuracy <= 0.1 and adapted.verdict == "PASS"
    assert json.loads(adapted.to_json())["adaptations"]["description"] == "BPDA on '0'"
    assert defended[0].differentiable is False  # the user's model was not modified


def test_randomised_model_is_attacked_with_eot(mnist_model, mnist_test):
    x, y = _first(mnist_test, 20)
    noise = GaussianNoise(sigma=0.2, generator=torch.Generator().manual_seed(0))
    defended = nn.Sequential(noise, mnist_model).eval()
    preset = PRESETS["quick"].scaled(0.2)
    plain = evaluate(defended, (x, y), eps=0.15, preset=preset, checks=False, adapt=False)
    noise.generator.manual_seed(0)
    eot = evaluate(defended, (x, y), eps=0.15, preset=preset, probe=20, eot_samples=4)
    assert eot.adaptations["stochastic"] and eot.adaptations["eot_samples"] == 4
    assert eot.robust_accuracy <= plain.robust_accuracy
    rnd = next(c for c in eot.checks if c.name == "randomness")
    assert rnd.passed and "EOT over 4 draws" in rnd.evidence and rnd.data["eot_applied"]


def test_custom_attack_list_dataloader_and_determinism(mnist_model, mnist_test):
    x, y = _first(mnist_test, 30)
    attacks = [FGSM(eps=0.1), PGD(eps=0.1, steps=5)]
    a = evaluate(mnist_model, (x, y), preset=attacks, batch_size=10, checks=False)
    assert a.stage_names == ["fgsm", "pgd"] and a.threat["eps"] == 0.1
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    b = evaluate(mnist_model, loader, preset=attacks, checks=False)
    assert torch.equal(a.broken_by, b.broken_by) and torch.equal(a.adv_pred, b.adv_pred)
    c = evaluate(mnist_model, (x, y), preset=attacks, batch_size=10, seed=5, checks=False)
    assert c.seed == 5 and c.clean_accuracy == a.clean_accuracy and c.verdict == "UNCHECKED"
    assert attacks[1].seed == 0  # the caller's attacks were copied, not re-seeded
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)


def test_bad_arguments(mnist_model, mnist_test):
    x, y = _first(mnist_test, 4)
    with pytest.raises(ValueError, match="needs a budget"):
        evaluate(mnist_model, (x, y))
    with pytest.raises(ValueError, match="eps"):
        evaluate(mnist_model, (x, y), eps=-0.1)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        evaluate(mnist_model, (x, y), eps=0.1, preset="nope")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(mnist_model, (x, y), eps=0.1, batch_size=0)
    with pytest.raises(ValueError, match="probe"):
        evaluate(mnist_model, (x, y), eps=0.1, probe=0)
    with pytest.raises(ValueError, match="give every attack the evaluation's budget"):
        evaluate(mnist_model, (x, y), eps=0.2, preset=[PGD(eps=0.1)])
    with pytest.raises(ValueError, match="not both"):
        evaluate(mnist_model, (x, y), ThreatModel("linf", eps=0.1), eps=0.1)
    with pytest.raises(ValueError, match="budget_scale"):
        PRESETS["standard"].scaled(0)
    with pytest.raises(ValueError, match="repeated stage names"):
        Preset("p", (Stage("a", "APGD"), Stage("a", "APGD")))
    with pytest.raises(TypeError, match="preset must be"):
        get_preset(3.5)


def test_clopper_pearson():
    lo, hi = clopper_pearson(0, 50)
    assert lo == 0.0 and math.isclose(hi, 0.0711, abs_tol=1e-3)
    lo, hi = clopper_pearson(25, 50)
    assert math.isclose(lo, 0.3561, abs_tol=1e-3) and math.isclose(hi, 0.6439, abs_tol=1e-3)
    assert clopper_pearson(50, 50)[1] == 1.0


def test_channels_last_copy_leaves_the_callers_model_alone(mnist_model, mnist_test):
    x, y = _first(mnist_test, 30)
    before = {k: v.clone() for k, v in mnist_model.state_dict().items()}
    runs = {
        cl: evaluate(mnist_model, (x, y), eps=0.1, preset=CHEAP, checks=False, channels_last=cl)
        for cl in (False, True)
    }
    for k, v in mnist_model.state_dict().items():
        assert v.is_contiguous() and torch.equal(v, before[k]), k
    # a layout is a speed setting: same verdict on every point up to float rounding
    a, b = runs[False], runs[True]
    assert a.clean_accuracy == b.clean_accuracy
    assert abs(a.robust_accuracy - b.robust_accuracy) <= 1 / 30

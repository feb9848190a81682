"""A short BadNets run end to end (mnist5k, 2 epochs): the backdoor works, the control does
not, and every detector finds it; then the two CLI commands on the same kind of run.

One poisoned victim and one clean reference are trained once per module (about 20 CPU-s)."""

from __future__ import annotations

import warnings

import pytest
import torch

from advex import data as D
from advex import zoo
from advex.poison import BadNets, VictimRecipe, accuracy, attack_success_rate, measure
from advex.poison.defenses import (
    STRIP,
    activation_clustering,
    activations,
    neural_cleanse,
    spectral_signatures,
    strip_evaluate,
    unlearn,
)

RECIPE = VictimRecipe(epochs=2, lr=1e-3, batch_size=64, seed=1)


@pytest.fixture(scope="module")
def run():
    train, test = D.mnist5k("train"), D.mnist5k("test")
    attack = BadNets(0.03, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = measure(attack, train, test, recipe=RECIPE)
    return train, test, attack, m


def test_backdoor_works_and_the_control_does_not(run):
    train, test, attack, m = run
    assert m.n_poisoned == 120 and len(m.poisoned_indices) == 120
    assert m.attack_success_rate >= 0.95  # measured 0.99
    assert m.accuracy_drop <= 0.02  # measured 0.3 pt
    assert m.clean_accuracy_reference >= 0.90
    assert m.attack_success_rate_reference <= 0.05  # the clean model ignores the trigger
    # the clean reference is what the same recipe gives on the clean data: deterministic
    again = zoo.accuracy(m.reference_model, test)
    assert again == pytest.approx(m.clean_accuracy_reference)


def test_spectral_and_activation_clustering_find_the_poison(run):
    train, test, attack, m = run
    p = m.poisoned
    acts, acts_clean = activations(m.model, p.dataset.x), activations(m.reference_model, train.x)
    for fn in (spectral_signatures, activation_clustering):
        det = fn(m.model, p.dataset, poisoned_indices=p.indices, reps=acts)
        assert det.metrics["recall"] >= 0.9, (fn.__name__, det.metrics)
        assert det.metrics["false_positive_rate"] <= 0.01, (fn.__name__, det.metrics)
        assert det.metrics["roc_auc"] >= 0.98
        assert det.flagged_classes == [0]
        # the clean model on the clean data: almost nothing flagged
        clean = fn(m.reference_model, train, poisoned_indices=[], reps=acts_clean)
        assert clean.metrics["n_flagged"] <= 0.01 * len(train), (fn.__name__, clean.metrics)
    # the paper's operating point: 1.5x the expected count (180) from the suspected class
    det = spectral_signatures(
        m.model, p.dataset, poisoned_indices=p.indices, expected_rate=0.03, reps=acts
    )
    assert det.flagged_classes == [0] and det.metrics["n_flagged"] == 180
    assert det.metrics["recall"] >= 0.95, det.metrics
    with pytest.raises(ValueError, match="activations of the"):
        spectral_signatures(m.model, p.dataset, reps=acts[:10])


def test_strip_separates_triggered_inputs(run):
    train, test, attack, m = run
    s = strip_evaluate(m.model, attack, test, frr=0.05, n_overlays=20, n=200)
    assert s.miss_rate <= 0.05, s.to_dict()
    assert s.false_rejection_rate <= 0.12
    assert s.roc_auc >= 0.97
    assert float(s.entropy_triggered.median()) < float(s.entropy_clean.median())
    # misses over all triggered inputs and over those the backdoor moves to the target
    assert s.fires is not None and len(s.fires) == s.n_triggered == len(s.entropy_triggered)
    assert s.n_firing >= 0.9 * s.n_triggered
    missed = s.entropy_triggered >= s.threshold
    assert s.miss_rate == pytest.approx(float(missed.float().mean()))
    assert s.miss_rate_firing == pytest.approx(float(missed[s.fires].float().mean()))
    d = s.to_dict()
    assert d["miss_rate"] == s.miss_rate and d["n_firing"] == s.n_firing
    assert "miss_rate_firing" in d and len(s.entropy_calibration) == 200


def test_strip_shared_balanced_overlays(run):
    train, test, attack, m = run
    ref = test.subset(torch.arange(300))
    x = test.x[300:330].clone()
    before = x.clone()
    s = STRIP(m.model, ref, n_overlays=20, overlays="shared", balanced=True, seed=3)
    # one class-balanced set of 20 distinct overlays: two per digit
    assert len(set(s.shared_indices.tolist())) == 20
    assert torch.bincount(ref.y[s.shared_indices], minlength=10).tolist() == [2] * 10
    h = s.entropy(x)
    assert torch.equal(
        h, STRIP(m.model, ref, n_overlays=20, overlays="shared", balanced=True, seed=3).entropy(x)
    )  # deterministic per seed
    assert torch.equal(h[:7], s.entropy(x[:7]))  # an input's score ignores its batch-mates
    other = STRIP(m.model, ref, n_overlays=20, overlays="shared", balanced=True, seed=4)
    assert not torch.equal(other.shared_indices, s.shared_indices)
    assert torch.equal(x, before)  # the caller's inputs untouched
    # random, class-balanced: deterministic per seed, slot i from class i mod 10
    r = STRIP(m.model, ref, n_overlays=20, balanced=True, seed=3)
    assert torch.equal(r.entropy(x), r.entropy(x))
    pick = r.overlay_indices(5, torch.Generator().manual_seed(0))
    assert (ref.y[pick] == torch.arange(20) % 10).all()
    # it separates triggered from clean inputs on the small run
    e = strip_evaluate(
        m.model, attack, test, frr=0.05, n_overlays=20, n=200, overlays="shared", balanced=True
    )
    assert e.params["overlays"] == "shared" and e.params["balanced"] is True
    assert e.miss_rate <= 0.05, e.to_dict()
    assert e.false_rejection_rate <= 0.12
    assert e.roc_auc >= 0.97
    # bad arguments and inputs: clear errors
    with pytest.raises(ValueError, match="overlays must be one of"):
        STRIP(m.model, ref, overlays="fixed")
    with pytest.raises(ValueError, match="mode must be one of"):
        STRIP(m.model, ref, mode="blend")
    with pytest.raises(ValueError, match="balanced must be True or False"):
        STRIP(m.model, ref, balanced="yes")
    with pytest.raises(ValueError, match="only 300 images"):
        STRIP(m.model, ref, n_overlays=301, overlays="shared")
    with pytest.raises(ValueError, match="n_overlays must be >= 1"):
        STRIP(m.model, ref, n_overlays=0)
    with pytest.raises(ValueError, match="NaN"):
        s.entropy(torch.full((2, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="must have shape"):
        s.entropy(torch.zeros(2, 3, 28, 28))


def test_neural_cleanse_names_the_target_and_unlearning_repairs(run):
    train, test, attack, m = run
    params = [p.clone() for p in m.model.parameters()]
    clean = test.subset(300)
    nc = neural_cleanse(m.model, clean, steps=100, batch_size=32)
    # the target's reversed mask is by far the smallest (measured: L1 11 vs 36..176 for the
    # clean classes; MAD anomaly index 1.7, below the paper's 2 at this short budget)
    assert nc.most_anomalous == 0, nc.to_dict()
    assert min(range(10), key=lambda c: nc.l1_norms[c]) == 0
    assert nc.l1_norms[0] < 0.5 * sorted(nc.l1_norms)[1]
    assert all(torch.equal(a, b) for a, b in zip(params, m.model.parameters(), strict=True))
    # every class draws from its own generator: one class alone gives the same mask
    one = neural_cleanse(m.model, clean, classes=[0], steps=100, batch_size=32)
    assert torch.equal(one.masks[0], nc.masks[0])
    # early stop: the cost went up and down and the mask stopped shrinking, so a long budget
    # is not spent; without it every class runs the whole budget
    es = neural_cleanse(m.model, clean, classes=[0], steps=250, batch_size=32, early_stop=4)
    full = neural_cleanse(m.model, clean, classes=[0], steps=250, batch_size=32, early_stop=None)
    assert full.params["steps_run"] == [250]
    assert es.params["steps_run"][0] < 250, es.params
    assert es.l1_norms[0] <= 1.25 * full.l1_norms[0], (es.l1_norms, full.l1_norms)
    with pytest.raises(ValueError, match="early_stop"):
        neural_cleanse(m.model, clean, classes=[0], steps=10, early_stop=0)
    for bad in ({"trigger_share": 1.0}, {"trigger_share": 0.6, "random_share": 0.5}):
        with pytest.raises(ValueError, match="share"):
            unlearn(m.model, clean, nc.masks[0], nc.patterns[0], **bad)
    with pytest.raises(ValueError, match="do not fit"):
        unlearn(m.model, clean, nc.masks[0][:, :5], nc.patterns[0])
    x_before = clean.x.clone()
    rep = unlearn(m.model, clean, nc.masks[0], nc.patterns[0], lr=3e-4, epochs=5)
    assert torch.equal(clean.x, x_before)  # stamping works on copies of the batches
    assert all(torch.equal(a, b) for a, b in zip(params, m.model.parameters(), strict=True))
    evalset = test.subset(torch.arange(300, 1000))
    before = attack_success_rate(m.model, attack, evalset)
    assert attack_success_rate(rep, attack, evalset) <= 0.5 * before
    # 300 clean images fine-tune a 2-epoch model: measured 6 pt lost with the true trigger
    assert accuracy(rep, evalset) >= accuracy(m.model, evalset) - 0.10


def test_strip_diagnosis_of_the_benchmark(run):
    """benchmarks/poison_strip_diagnose.py's per-superimposition pass and its analysis, tiny."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from poison_strip_diagnose import analyse, superimpose
    from poison_strip_options import parse

    train, test, attack, m = run
    ov_idx = torch.cat([(test.y == c).nonzero().squeeze(1)[:3] for c in range(10)])
    sets = {}
    for name, lo in (("cal", 0), ("ev", 40)):
        x, y = test.x[lo : lo + 40], test.y[lo : lo + 40]
        sets[name + "_clean"] = (x, y)
        sets[name + "_trig"] = (attack.apply_trigger(x[y != 0]), y[y != 0])
    for mode in ("add", "average"):
        d = superimpose(m.model, sets, test.x[ov_idx], mode)
        assert d["ev_trig"]["H"].shape == (len(sets["ev_trig"][0]), 30)
        rep = analyse(d, test.x[ov_idx], test.y[ov_idx], mode)
        assert set(rep["configs"]) >= {"shared 0-10", "shared 30", "random 10 (seed 0)"}
        for r in rep["configs"].values():
            assert 0 <= r["miss"] <= 100 and 0 <= r["frr"] <= 100
        # the backdoor wins almost every triggered superimposition under the paper's sum
        if mode == "add":
            assert rep["diagnosis"]["all_triggered_share_target_loses"] <= 0.2
    assert parse("add/shared/balanced/100") == {
        "mode": "add",
        "overlays": "shared",
        "balanced": True,
        "n_overlays": 100,
    }
    with pytest.raises(SystemExit, match="pool must be"):
        parse("add/shared/classes/100")


def test_strip_result_roc_miss_rate_at_a_false_rejection_rate():
    from advex.poison.defenses import StripResult

    clean = torch.linspace(0.0, 1.0, 101)  # the 10 % quantile is 0.1
    trig = torch.tensor([0.05, 0.08, 0.12, 0.5])
    fires = torch.tensor([True, True, False, True])
    s = StripResult(0.3, 0.1, 0.0, 0.0, None, 101, 4, {}, clean, trig, fires)
    assert s.miss_rate_at(0.1) == 0.5  # 0.12 and 0.5 lie at or above 0.1
    assert s.miss_rate_at(0.1, firing=True) == pytest.approx(1 / 3)  # 0.5 among 3 firing
    assert s.miss_rate_at(0.0) == 1.0
    none = StripResult(0.3, 0.1, 0.0, 0.0, None, 101, 4, {}, clean, trig, None)
    assert none.miss_rate_at(0.1, firing=True) is None
    # the oracle threshold the benchmarks used before this method (float32 comparison)
    th = float(torch.quantile(clean.double(), 0.1))
    assert s.miss_rate_at(0.1) == float((trig >= th).float().mean())


def test_neural_cleanse_reverses_on_a_channels_last_copy():
    """The reversal runs on a private channels-last copy (auto on CPU for a conv model): the
    caller's model keeps its layout and weights, and the result matches the default layout up
    to float rounding."""
    torch.manual_seed(0)
    model = zoo.build("smallcnn").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean = D.mnist5k("test").subset(64)
    cl = neural_cleanse(model, clean, classes=[3], steps=10, batch_size=16, early_stop=None)
    plain = neural_cleanse(
        model, clean, classes=[3], steps=10, batch_size=16, early_stop=None, channels_last=False
    )
    assert cl.params["layout"] == "channels_last" and plain.params["layout"] == "default"
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.allclose(cl.masks, plain.masks, atol=1e-3)
    assert cl.l1_norms[0] == pytest.approx(plain.l1_norms[0], rel=1e-3)

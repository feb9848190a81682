"""Tabular attacks on breast_cancer: stated success rates on the logistic regression and the MLP,
every output valid, constraints that bind, LowProFool, the black-box search, determinism."""

from __future__ import annotations

import pytest
import torch

import advex.zoo
from advex.attacks import ConstrainedEvolution, ConstrainedPGD, LowProFool
from advex.data import breast_cancer
from advex.threats import Schema, TabularThreat

MALIGNANT, BENIGN = 0, 1


@pytest.fixture(scope="module")
def data():
    return breast_cancer("test"), breast_cancer("train")


def _malignant(model, ds):
    """The correctly classified malignant test rows."""
    x, y = ds.tensors()
    with torch.no_grad():
        pred = model(x).argmax(1)
    keep = (y == MALIGNANT) & (pred == MALIGNANT)
    return x[keep], y[keep]


def _optimal_linf_success(lr, x, schema, eps) -> float:
    """Exact best success of ANY L∞ attack (no constraints) on a logistic regression at ``eps``
    standard deviations: the logit gap moves by at most eps · Σ |w_i| s_i."""
    norm, lin = lr[0], lr[1]
    w = (lin.weight[BENIGN] - lin.weight[MALIGNANT]).detach() / norm.std
    s = torch.tensor(schema.scales(), dtype=w.dtype)
    with torch.no_grad():
        z = lr(x)
    gap = z[:, BENIGN] - z[:, MALIGNANT]
    return float(((gap + eps * (w.abs() * s).sum()) > 0).float().mean())


def test_constrained_pgd_on_logistic_regression_reaches_the_optimum(data):
    ds, _ = data
    lr = advex.zoo.load("breast-cancer-lr", progress=False)
    x, y = _malignant(lr, ds)
    threat = TabularThreat(ds.schema, eps=0.5)
    r = ConstrainedPGD(threat=threat, steps=20)(lr, x, y, target=BENIGN)
    assert bool(threat.contains(r.x_adv, x).all())
    bound = _optimal_linf_success(lr, x, ds.schema, 0.5)
    # stated: 46% of the malignant test rows flip at 0.5 std, which is the optimum of an
    # unconstrained L∞ attack (the constraints cost nothing here)
    assert r.success_rate <= bound + 1e-9
    assert r.success_rate >= bound - 0.04, (r.success_rate, bound)
    assert r.success_rate >= 0.40
    r15 = ConstrainedPGD(threat=threat.with_budget(1.5), steps=20)(lr, x, y, target=BENIGN)
    assert r15.success_rate == 1.0  # stated: every malignant row flips at 1.5 std


def test_constrained_pgd_on_mlp_stated_rate_and_untouched_inputs(data):
    ds, _ = data
    mlp = advex.zoo.load("breast-cancer-mlp", progress=False)
    x, y = _malignant(mlp, ds)
    x_before = x.clone()
    threat = TabularThreat(ds.schema, eps=0.5)
    r = ConstrainedPGD(threat=threat, steps=20)(mlp, x, y, target=BENIGN)
    assert torch.equal(x, x_before)
    assert bool(threat.contains(r.x_adv, x).all())
    assert r.success_rate >= 0.35  # stated: 40% at 0.5 std (docs/tabular.md)
    # success is re-predicted on the returned rows
    with torch.no_grad():
        assert torch.equal(mlp(r.x_adv).argmax(1) == BENIGN, r.success)
    wide = threat.with_budget(1.0)
    untargeted = ConstrainedPGD(threat=wide, steps=20)(mlp, x[:20], y[:20])
    assert untargeted.success_rate >= 0.8 and bool(wide.contains(untargeted.x_adv, x[:20]).all())


def test_the_constraints_bind(data):
    """The same attack in a threat without the relations finds adversarials that the full
    schema rejects; with the relations every one is valid."""
    ds, _ = data
    mlp = advex.zoo.load("breast-cancer-mlp", progress=False)
    x, y = _malignant(mlp, ds)
    loose = Schema(ds.schema.features, [], classes=ds.schema.classes, name="ranges only")
    free = ConstrainedPGD(threat=TabularThreat(loose, eps=1.0), steps=20)(mlp, x, y, target=BENIGN)
    full = TabularThreat(ds.schema, eps=1.0)
    ok = full.contains(free.x_adv, x)
    rejected = free.success & ~ok
    assert int(rejected.sum()) >= 5, "without the relations the attack should break them"
    failing = full.verdicts(free.x_adv, x).summary()["failing_checks"]
    assert any(">= mean" in k or "~" in k for k in failing)
    kept = ConstrainedPGD(threat=full, steps=20)(mlp, x, y, target=BENIGN)
    assert bool(full.contains(kept.x_adv, x).all())


def test_lowprofool_finds_valid_imperceptible_adversarials(data):
    ds, tr = data
    mlp = advex.zoo.load("breast-cancer-mlp", progress=False)
    x, y = _malignant(mlp, ds)
    x, y = x[:12], y[:12]
    threat = TabularThreat(ds.schema, eps=None)  # the paper's setting: no budget, constraints
    atk = LowProFool(threat=threat, steps=40).fit(mlp, tr.tensors())
    v = atk.importance
    assert v is not None and v.shape == (30,) and float(v.sum()) == pytest.approx(1.0)
    r = atk(mlp, x, y, target=BENIGN)
    assert bool(threat.contains(r.x_adv, x).all())
    assert r.success_rate >= 0.9
    # the kept adversarial is the smallest weighted perturbation among the successes: a longer
    # run never returns a larger one
    r2 = LowProFool(threat=threat, steps=80).fit(mlp, tr.tensors())(mlp, x, y, target=BENIGN)
    s = threat.unit(x)

    def weighted(res):
        return (v.float() * (res.x_adv - x) / s).norm(dim=1)

    both = r.success & r2.success
    assert bool((weighted(r2)[both] <= weighted(r)[both] + 1e-5).all())


def test_evolution_on_a_forest_is_query_counted_valid_and_deterministic(data):
    pytest.importorskip("skops", reason="the scikit-learn zoo models need the [tabular] extra")
    ds, _ = data
    rf = advex.zoo.load("breast-cancer-rf", progress=False)
    x, y = _malignant(rf, ds)
    x, y = x[:8], y[:8]
    threat = TabularThreat(ds.schema, eps=1.0)
    atk = ConstrainedEvolution(threat=threat, n_queries=100, population=10, seed=3)
    r = atk(rf, x, y, target=BENIGN)
    assert bool(threat.contains(r.x_adv, x).all())
    assert r.success_rate >= 0.5
    assert int(r.queries.max()) <= 100 + 2  # budget + clean pass + re-prediction
    assert torch.equal(atk(rf, x[:4], y[:4], target=BENIGN).x_adv, r.x_adv[:4])
    # the gradient attack on the same black box estimates gradients from scores (NES)
    p = ConstrainedPGD(threat=threat, steps=4, nes_samples=6)(rf, x[:4], y[:4], target=BENIGN)
    assert bool(threat.contains(p.x_adv, x[:4]).all())
    assert int(p.gradients.sum()) == 0 and int(p.queries.min()) > 6

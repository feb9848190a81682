"""advex.evaluate: robust accuracy (per-point worst case) and robustness curves, on the zoo
MNIST model. Numbers quoted in comments were measured on the first test digits of mnist5k."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from advex.attacks.base import Attack
from advex.attacks.gradient import BIM, FGSM, PGD
from advex.data import ArrayDataset
from advex.evaluate import (
    EvaluationResult,
    rebudget,
    robust_accuracy,
    robustness_curve,
)

EPS = 0.1


@pytest.fixture(scope="module")
def small(mnist_test):
    """The first 150 test digits (a few of them misclassified by the zoo model)."""
    x, y = mnist_test
    return x[:150].clone(), y[:150].clone()


@pytest.fixture(scope="module")
def both(mnist_model, small):
    """FGSM then PGD-10 at ε=0.1, each also run alone (independent=True)."""
    x, y = small
    return robust_accuracy(
        mnist_model, (x, y), [FGSM(eps=EPS), PGD(eps=EPS, steps=10)], independent=True
    )


def test_clean_accuracy_matches_direct_computation(mnist_model, small, both):
    x, y = small
    with torch.no_grad():
        direct = int((mnist_model(x).argmax(1) == y).sum()) / 150
    assert both.n == 150
    assert both.clean_accuracy == pytest.approx(direct, abs=1e-9)
    assert both.clean_accuracy > 0.95  # measured 0.98
    assert both.n_correct == round(direct * 150)


def test_worst_case_not_above_any_single_attack(mnist_model, small, both):
    x, y = small
    fgsm_direct = FGSM(eps=EPS)(mnist_model, x, y).robust_accuracy
    pgd_direct = PGD(eps=EPS, steps=10)(mnist_model, x, y).robust_accuracy
    # FGSM is deterministic: its alone number equals a direct run (measured 0.78)
    assert both.attacks["fgsm"].robust_accuracy_alone == pytest.approx(fgsm_direct, abs=1e-6)
    assert both.attacks["pgd"].robust_accuracy_alone == pytest.approx(pgd_direct, abs=1.5 / 150)
    worst = both.robust_accuracy
    for s in both.attacks.values():
        assert worst <= s.robust_accuracy_alone + 1e-12
    assert worst <= min(fgsm_direct, pgd_direct) + 1e-6
    # the numbers are real: PGD beats FGSM, and ε=0.1 does not break everything
    assert pgd_direct < fgsm_direct
    assert 0.3 < worst < 0.8  # measured 0.607
    assert both.success_rate == pytest.approx(1 - worst / both.clean_accuracy)


def test_cumulative_attacks_only_still_robust_points(mnist_model, small, both):
    x, y = small
    res = robust_accuracy(mnist_model, (x, y), [FGSM(eps=EPS), PGD(eps=EPS, steps=10)])
    correct = res.correct
    # the first attack sees every correctly classified point, never a misclassified one
    assert torch.equal(res.attacked["fgsm"], correct)
    # the second only the survivors of the first
    assert torch.equal(res.attacked["pgd"], correct & ~res.success["fgsm"])
    assert res.attacks["pgd"].n_attacked < res.attacks["fgsm"].n_attacked
    assert res.gradients_total < both.gradients_total
    # same worst case as running everything, up to PGD's random starts on other batches
    assert abs(res.robust_accuracy - both.robust_accuracy) <= 6 / 150
    assert res.attacks["pgd"].robust_accuracy_cumulative == res.robust_accuracy
    assert res.attacks["pgd"].robust_accuracy_alone is None
    # bookkeeping per point
    assert res.robust.sum() == round(res.robust_accuracy * res.n)
    assert bool((res.broken_by[~correct] == -1).all())
    assert res.attacks["fgsm"].gradients_per_point == 1.0
    assert res.attacks["pgd"].gradients_per_point <= 10
    for name in ("fgsm", "pgd"):
        s = res.success[name]
        assert bool((res.norms[name][s] <= EPS + 1e-5).all())
        assert bool(torch.isnan(res.norms[name][~s]).all())
    broken = res.broken_by >= 0
    assert bool((res.adv_pred[broken] != res.y[broken]).all())


def test_dataloader_dataset_and_tensors_give_identical_numbers(mnist_model, small):
    x, y = small
    x, y = x[:100], y[:100]
    attacks = [FGSM(eps=EPS), PGD(eps=EPS, steps=5)]
    ref = robust_accuracy(mnist_model, (x, y), attacks, batch_size=50).to_dict()

    class Plain(Dataset):
        def __len__(self):
            return 100

        def __getitem__(self, i):
            return x[i], y[i]

    others = [
        ArrayDataset(x, y),
        ArrayDataset(x, y).loader(batch_size=50),
        DataLoader(TensorDataset(x, y), batch_size=50),
        Plain(),
    ]
    for data in others:
        got = robust_accuracy(mnist_model, data, attacks, batch_size=50).to_dict()
        for key in ("n", "clean_accuracy", "robust_accuracy", "success_rate", "passes"):
            assert got[key] == ref[key], key
        for name in ("fgsm", "pgd"):
            for key in ("n_attacked", "n_success", "norm_median", "gradients_total"):
                assert got["attacks"][name][key] == ref["attacks"][name][key]


def test_empty_data_is_a_clear_error(mnist_model):
    x = torch.zeros(0, 1, 28, 28)
    y = torch.zeros(0, dtype=torch.long)
    for data in (
        (x, y),
        ArrayDataset(x, y, num_classes=10),
        DataLoader(TensorDataset(x, y), batch_size=8),
    ):
        with pytest.raises(ValueError, match="empty"):
            robust_accuracy(mnist_model, data, FGSM(eps=0.1))
        with pytest.raises(ValueError, match="empty"):
            robustness_curve(mnist_model, data, FGSM, [0.1])
    # every point skipped as already of the target class
    x1, y1 = torch.rand(4, 1, 28, 28), torch.full((4,), 3)
    with pytest.raises(ValueError, match="empty after skipping"):
        robust_accuracy(mnist_model, (x1, y1), FGSM(eps=0.1), target=3)


def test_bad_arguments(mnist_model, small):
    x, y = small
    with pytest.raises(ValueError, match="attacks is empty"):
        robust_accuracy(mnist_model, (x, y), [])
    with pytest.raises(TypeError, match="not an instance"):
        robust_accuracy(mnist_model, (x, y), FGSM)
    with pytest.raises(ValueError, match="batch_size"):
        robust_accuracy(mnist_model, (x, y), FGSM(eps=0.1), batch_size=0)
    with pytest.raises(ValueError, match="different lengths"):
        robust_accuracy(mnist_model, (x, y[:5]), FGSM(eps=0.1))
    with pytest.raises(TypeError, match="integer class labels"):
        robust_accuracy(mnist_model, (x, y.float()), FGSM(eps=0.1))
    with pytest.raises(ValueError, match="keep_examples"):
        robust_accuracy(mnist_model, (x, y), FGSM(eps=0.1), keep_examples=-1)
    with pytest.raises(TypeError, match="target"):
        robust_accuracy(mnist_model, (x, y), FGSM(eps=0.1), target="three")


def test_targeted_skips_target_class_and_counts_hits(mnist_model, small):
    x, y = small
    x, y = x[:80], y[:80]
    res = robust_accuracy(mnist_model, (x, y), PGD(eps=0.2, steps=10), target=3)
    assert res.targeted
    assert res.n_skipped == int((y == 3).sum()) > 0
    assert res.n == 80 - res.n_skipped
    assert bool((res.y != 3).all())
    broken = res.broken_by >= 0
    assert bool((res.adv_pred[broken] == 3).all())
    # at ε=0.2 most digits can be turned into a 3 (measured: success rate 0.92)
    assert 0.5 < res.success_rate <= 1.0
    ex = res.attack_examples["pgd"]
    assert ex.target is not None and bool((ex.target == 3).all())
    # a tensor of targets in data order and a callable give the same as the int
    same = robust_accuracy(
        mnist_model, (x, y), PGD(eps=0.2, steps=10), target=lambda t: torch.full_like(t, 3)
    )
    assert same.robust_accuracy == res.robust_accuracy


def test_model_and_inputs_untouched_and_examples_valid(mnist_model, small):
    x, y = small
    x, y = x[:60], y[:60]
    x0, y0 = x.clone(), y.clone()
    state = {k: v.clone() for k, v in mnist_model.state_dict().items()}
    flags = [p.requires_grad for p in mnist_model.parameters()]
    mnist_model.train()
    try:
        with pytest.warns(UserWarning, match="train mode"):
            res = robust_accuracy(mnist_model, (x, y), FGSM(eps=0.15), keep_examples=5)
        assert mnist_model.training
    finally:
        mnist_model.eval()
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert all(torch.equal(v, state[k]) for k, v in mnist_model.state_dict().items())
    assert flags == [p.requires_grad for p in mnist_model.parameters()]
    ex = res.examples
    assert len(ex) == 5
    assert bool(ex.success[:5].all())  # successful examples come first
    assert bool(((ex.x_adv - ex.x).abs().amax(dim=(1, 2, 3)) <= 0.15 + 1e-6).all())
    assert bool(((ex.x_adv >= 0) & (ex.x_adv <= 1)).all())
    assert torch.equal(ex.x, x0[ex.index])
    assert res.results["fgsm"].x_adv.shape[0] == res.attacks["fgsm"].n_attacked
    assert isinstance(res, EvaluationResult)
    assert isinstance(res.to_dict()["attacks"]["fgsm"]["robust_accuracy"], float)


# ---------------------------------------------------------------------------------------------
# robustness curves
# ---------------------------------------------------------------------------------------------

CURVE_EPS = [0.0, 0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def curves(mnist_model, small):
    x, y = small
    x, y = x[:100], y[:100]
    specs = {"fgsm": FGSM, "bim": partial(BIM, steps=5)}
    cum = robustness_curve(mnist_model, (x, y), specs, CURVE_EPS, batch_size=50)
    ind = robustness_curve(mnist_model, (x, y), specs, CURVE_EPS, batch_size=50, independent=True)
    return cum, ind


def test_curve_is_non_increasing_and_starts_at_clean_accuracy(curves):
    cum, _ = curves
    assert cum.eps == CURVE_EPS
    for name in ("fgsm", "bim"):
        vals = cum.robust_accuracy[name]
        assert vals[0] == pytest.approx(cum.clean_accuracy)
        assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))
    assert all(a >= b for a, b in zip(cum.worst_case, cum.worst_case[1:], strict=False))
    for j in range(len(CURVE_EPS)):
        assert cum.worst_case[j] <= min(v[j] for v in cum.robust_accuracy.values())
    # the numbers are real: measured fgsm [0.99, 0.95, 0.76, 0.06], bim [0.99, 0.92, 0.59, 0.0]
    assert cum.robust_accuracy["bim"][2] < cum.robust_accuracy["fgsm"][2] < 0.9
    assert cum.worst_case[-1] < 0.15
    assert cum.gradients["fgsm"][0] == 0  # nothing runs at ε = 0


def test_curve_optimisation_matches_independent_runs(curves):
    """Attacking only the points still robust gives the numbers of independent runs (these
    attacks are deterministic per point), for fewer passes."""
    cum, ind = curves
    for name in ("fgsm", "bim"):
        assert torch.equal(cum.broken_at[name], ind.broken_at[name])
        for c, i in zip(cum.robust_accuracy[name], ind.robust_accuracy[name], strict=True):
            assert c <= i + 1e-12
        assert sum(cum.gradients[name]) < sum(ind.gradients[name])
    first = torch.stack([ind.broken_at[n] for n in ind.names]).min(0).values
    expected = [float((first > j).sum()) / ind.n for j in range(len(CURVE_EPS))]
    assert cum.worst_case == pytest.approx(expected)


def test_curve_from_instance_equals_curve_from_class(mnist_model, small):
    x, y = small
    x, y = x[:60], y[:60]
    eps = [0.05, 0.1]
    a = robustness_curve(mnist_model, (x, y), FGSM(eps=0.3), eps)
    b = robustness_curve(mnist_model, (x, y), FGSM, eps)
    assert a.robust_accuracy == b.robust_accuracy
    # re-budgeting copies: the original attack keeps its budget and step size
    pgd = PGD(eps=0.3, steps=10)
    small_pgd = rebudget(pgd, 0.1)
    assert pgd.threat.eps == 0.3 and small_pgd.threat.eps == 0.1
    assert small_pgd.step_size == pytest.approx(pgd.step_size / 3)
    assert small_pgd.step_size == pytest.approx(PGD(eps=0.1, steps=10).step_size)


def test_curve_bad_arguments(mnist_model, small):
    x, y = small
    for bad in ([], [-0.1], [float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="eps"):
            robustness_curve(mnist_model, (x, y), FGSM, bad)
    with pytest.raises(ValueError, match="must use its argument"):
        robustness_curve(mnist_model, (x[:10], y[:10]), lambda e: FGSM(eps=0.3), [0.1])
    with pytest.raises(TypeError, match="factory"):
        robustness_curve(mnist_model, (x, y), 0.3, [0.1])


class _LineSearchFGSM(Attack):
    """A toy minimum-norm attack: the smallest ε of a grid at which the FGSM step fools."""

    name = "ls-fgsm"
    minimum_norm = True

    def __init__(self, grid):
        from advex.threats import ThreatModel

        super().__init__(ThreatModel("linf"))
        self.grid = list(grid)

    def _attack(self, caller, x, goal, done, clean_logits):
        from advex.core.losses import cross_entropy

        idx = (~done).nonzero().squeeze(1)
        x_adv = x.clone()
        _, _, g = caller.value_and_grad(x[idx], lambda z: cross_entropy(z, goal[idx]), idx)
        found = torch.zeros(idx.numel(), dtype=torch.bool)
        for e in self.grid:
            cand = (x[idx] + e * g.sign()).clamp(0, 1)
            ok = goal[idx].is_success(caller.logits(cand, idx)) & ~found
            x_adv[idx[ok]] = cand[ok]
            found |= ok
        return x_adv


def test_minimum_norm_attack_curve_from_one_run(mnist_model, small):
    """A minimum-norm attack runs once; fooled at ε iff its norm <= ε. For the line search over
    the curve's own grid this equals the cumulative FGSM curve."""
    x, y = small
    x, y = x[:80], y[:80]
    eps = [0.05, 0.1, 0.2]
    mn = robustness_curve(mnist_model, (x, y), _LineSearchFGSM(eps), eps)
    fg = robustness_curve(mnist_model, (x, y), FGSM, eps)
    assert mn.robust_accuracy["ls-fgsm"] == fg.robust_accuracy["fgsm"]
    assert sum(mn.gradients["ls-fgsm"]) == int((mn.clean_pred == mn.y).sum())
    assert not math.isnan(mn.clean_accuracy)


def test_budgeted_minimum_norm_attack(mnist_model, small):
    """BudgetedAttack scores a minimum-norm attack at a budget: the same number as its curve."""
    from advex.evaluate import BudgetedAttack

    x, y = small
    x, y = x[:80], y[:80]
    grid = [0.05, 0.1, 0.2]
    res = robust_accuracy(mnist_model, (x, y), BudgetedAttack(_LineSearchFGSM(grid), eps=0.1))
    curve = robustness_curve(mnist_model, (x, y), _LineSearchFGSM(grid), grid)
    assert res.robust_accuracy == pytest.approx(curve.at(0.1, "ls-fgsm"))
    assert bool((res.norms["ls-fgsm"][res.success["ls-fgsm"]] <= 0.1 + 1e-6).all())
    with pytest.raises(ValueError, match="fixed-budget"):
        BudgetedAttack(FGSM(eps=0.1), eps=0.1)

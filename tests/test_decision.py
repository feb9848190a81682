"""Decision-based attacks (HopSkipJump, BoundaryAttack, RayS): labels only, exact per-point
query budgets, batched search, early stop, query curves."""

from __future__ import annotations

import warnings

import pytest
import torch
from benchscripts import load_benchmark

from advex.attacks import BoundaryAttack, HopSkipJump, RayS
from advex.attacks.decision import QueryCurve
from advex.attacks.registry import find_attack, is_black_box
from advex.models import LabelBlackBox, ProbabilityOutputWarning


def _label_only(model, counter=None):
    """A hard-label wrapper with an independent count of the samples it was asked about."""

    def predict(t):
        if counter is not None:
            counter["n"] += int(t.shape[0])
        return model(t).argmax(1)

    return LabelBlackBox(predict, num_classes=10)


@pytest.fixture(scope="module")
def digits(mnist_correct):
    return mnist_correct[0][:5], mnist_correct[1][:5]


@pytest.fixture(scope="module")
def hsj_run(mnist_model, digits):
    x, y = digits
    curve = QueryCurve()
    box = _label_only(mnist_model)
    r = HopSkipJump(norm="l2", max_queries=600, init_evals=50, curve=curve)(box, x, y)
    return r, curve, box


def test_hopskipjump_l2_on_zoo_cnn_improves_with_budget(mnist_model, digits, hsj_run):
    x, y = digits
    r, curve, _ = hsj_run
    # 100% success at 600 queries per point: every point gets an adversarial example
    assert bool(r.success.all())
    assert torch.equal(r.adv_pred, mnist_model(r.x_adv).argmax(1))
    m150, m300, m600 = curve.median_at([150, 300, 600])
    assert m600 < m300 < m150
    assert m600 < 0.8 * m150
    assert m600 < 4.0  # uniform noise blended down to the boundary starts at 5-7 (L2)
    assert abs(float(r.norms.median()) - m600) < 1e-4


def test_query_counts_are_exact_and_within_budget(tiny_model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 8, 8, generator=g)
    y = tiny_model(x).argmax(1)
    for attack in (
        HopSkipJump(max_queries=150, init_evals=10),
        HopSkipJump(norm="linf", max_queries=97, init_evals=10),
        BoundaryAttack(max_queries=120),
        RayS(max_queries=90),
        RayS(eps=0.05, max_queries=90),
    ):
        counter = {"n": 0}
        r = attack(_label_only(tiny_model, counter), x, y)
        assert int(r.queries.sum()) == counter["n"], attack.name
        assert int(r.queries.max()) <= attack.max_queries, attack.name
        assert int(r.gradients.sum()) == 0
        assert torch.equal(r.success, tiny_model(r.x_adv).argmax(1) != y)


def test_minimum_norm_runs_use_their_whole_budget(hsj_run):
    r, _, box = hsj_run
    assert r.queries.tolist() == [600] * len(r)
    assert box.queries == 600 * len(r)


def test_rays_linf_breaks_label_only_cnn_with_few_queries(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:10], mnist_correct[1][:10]
    r = RayS(eps=0.3, max_queries=1000)(_label_only(mnist_model), x, y)
    assert r.robust_accuracy == 0.0
    assert float(r.norms.max()) <= 0.3 + 1e-6
    # early stop: a point stops once inside the ball, far below the budget
    assert float(r.queries.float().median()) < 300


def test_hopskipjump_linf_and_targeted(tiny_model):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(10, 1, 8, 8, generator=g)
    y = tiny_model(x).argmax(1)
    target = (y + 1) % 10
    attack = HopSkipJump(norm="linf", max_queries=300, init_evals=20)
    pool = torch.rand(200, 1, 8, 8, generator=g)
    attack.fit(tiny_model, pool)  # starting points of every target class
    r = attack(_label_only(tiny_model), x, y, target=target)
    covered = torch.isin(target, tiny_model(pool).argmax(1))
    assert bool(r.success[covered].all())
    assert torch.equal(r.success, tiny_model(r.x_adv).argmax(1) == target)


def test_fixed_budget_stops_early_and_stays_in_ball(tiny_model):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(10, 1, 8, 8, generator=g)
    y = tiny_model(x).argmax(1)
    free = HopSkipJump(max_queries=400, init_evals=10)(tiny_model, x, y)
    eps = float(free.norms.median()) * 1.5
    fixed = HopSkipJump(eps=eps, max_queries=400, init_evals=10)(tiny_model, x, y)
    assert bool((fixed.norms <= eps + 1e-5).all())
    assert int(fixed.queries.sum()) < int(free.queries.sum())
    assert fixed.success.float().mean() >= 0.5


def test_deterministic_for_a_seed(tiny_model):
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = tiny_model(x).argmax(1)
    for make in (
        lambda: HopSkipJump(max_queries=100, init_evals=10, seed=7),
        lambda: BoundaryAttack(max_queries=100, seed=7),
    ):
        a, b = make()(tiny_model, x, y), make()(tiny_model, x, y)
        assert torch.equal(a.x_adv, b.x_adv)


def test_declarations_and_bad_arguments():
    for name in ("hopskipjump", "hsja", "boundary", "rays"):
        assert is_black_box(find_attack(name))
    with pytest.raises(ValueError, match="max_queries"):
        HopSkipJump(max_queries=2)
    with pytest.raises(ValueError, match="supports norm"):
        BoundaryAttack(norm="linf")
    with pytest.raises(ValueError, match="supports norm"):
        RayS(norm="l2")
    with pytest.raises(ValueError, match="mask"):
        HopSkipJump(
            eps=1.0,
            threat=__import__("advex").threats.ThreatModel(
                norm="l2", eps=1.0, mask=torch.ones(1, 8, 8, dtype=torch.bool)
            ),
        )
    with pytest.raises(TypeError, match="QueryCurve"):
        HopSkipJump(curve=[])


def test_no_start_point_means_failure_not_crash():
    class Constant(torch.nn.Module):
        def forward(self, t):
            out = torch.zeros(t.shape[0], 3)
            out[:, 0] = 1
            return out

    x = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbabilityOutputWarning)  # one-hot rows
        r = HopSkipJump(max_queries=50, init_tries=5)(Constant().eval(), x, y)
    assert not bool(r.success.any()) and torch.equal(r.x_adv, x)
    assert int(r.queries.max()) <= 50


def test_benchmark_script_quick_smoke():
    """benchmarks/blackbox.py --quick (advex only): its counts agree and the numbers are sane."""
    bench = load_benchmark("blackbox")
    res = bench.main(["--quick", "--peers", "none"])
    mine = res["advex"]
    assert mine["queries_at_model"] == 2 * 300 and mine["max_queries_per_point"] == 300
    assert mine["median_l2"]["300"] <= mine["median_l2"]["100"]
    assert res["linf"]["rays"]["robust_accuracy"] == 0.0
    # CPU time is recorded next to wall time (a shared machine's wall time follows its load)
    assert 0 < mine["model_cpu_s"] <= mine["cpu_s"] and len(mine["loadavg_1min_start_end"]) == 2

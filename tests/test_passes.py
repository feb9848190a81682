"""Pass accounting: advex.models.PassCounter, and the evaluation's own counts against it."""

from __future__ import annotations

import copy

import pytest
import torch
from benchscripts import load_benchmark

from advex.attacks.apgd import APGD
from advex.evaluate import PRESETS, evaluate
from advex.models import BACKWARD_COST, PassCounter, counting_stage, measure_backward_cost


def test_pass_counter_counts_rows_calls_and_real_backwards(tiny_model):
    c = PassCounter(tiny_model)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        c(x)
    xl = x.clone().requires_grad_(True)
    with c.stage("grad"):
        out = c(xl)
        torch.autograd.grad(out[:2].sum(), xl)  # a backward through the whole output: 6 rows
        c(xl)  # a graph nobody differentiates: a forward only
    t = c.totals()
    assert t["forward_rows"] == 18 and t["forward_calls"] == 3
    assert t["backward_rows"] == 6 and t["backward_calls"] == 1
    assert c.stages["other"].forward_rows == 6 and c.stages["grad"].backward_rows == 6
    assert c.weighted() == 18 + BACKWARD_COST * 6 and c.weighted(1.5) == 27
    # copies share the counts (an evaluation may attack a channels-last copy)
    twin = copy.deepcopy(c)
    with counting_stage(torch.nn.Sequential(twin), "copy"), torch.no_grad():
        twin(x)
    assert c.stages["copy"].forward_rows == 6
    c.reset()
    assert c.totals()["forward_rows"] == 0
    with pytest.raises(TypeError, match="nn.Module"):
        PassCounter(lambda x: x)


def test_attack_counts_equal_the_counter(mnist_model, mnist_test):
    # APGD drops a point the step it is fooled; the backward of that step still ran on it
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    c = PassCounter(mnist_model).eval()
    res = APGD(eps=0.1, steps=10)(c, x, y)
    assert int(res.success.sum()) > 0
    assert int(res.gradients.sum()) == c.totals()["backward_rows"]
    assert int(res.queries.sum()) == c.totals()["forward_rows"]


@pytest.mark.parametrize("preset", ["standard", "autoattack"])
def test_evaluation_counts_equal_an_independent_counter(mnist_model, mnist_test, preset):
    # ε = 0.1: some points break in every stage, others survive them all
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    c = PassCounter(mnist_model).eval()
    ev = evaluate(
        c, (x, y), eps=0.1, preset=PRESETS[preset].scaled(0.03), checks=False, batch_size=8
    )
    assert 0 < ev.robust_accuracy < ev.clean_accuracy
    t = c.totals()
    assert ev.gradients_total == t["backward_rows"] > 0
    assert ev.queries_total == t["forward_rows"]
    assert ev.weighted_passes() == c.weighted()
    assert ev.to_dict()["passes"]["weighted"] == c.weighted()
    # per stage too (the clean pass of every batch is outside the stages: "other")
    assert c.stages["other"].forward_rows == ev.n
    for s in ev.per_attack:
        counted = c.stages.get(s.name)
        got = (0, 0) if counted is None else (counted.backward_rows, counted.forward_rows)
        assert (s.gradients, s.queries) == got, s.name


def test_measure_backward_cost(tiny_model):
    m = measure_backward_cost(tiny_model, torch.rand(32, 1, 8, 8), repeats=3, warmup=1)
    assert m["forward_s"] > 0 and m["forward_backward_s"] > 0
    assert m["backward_cost"] == pytest.approx(
        (m["forward_backward_s"] - m["forward_s"]) / m["forward_s"]
    )
    with pytest.raises(ValueError):
        measure_backward_cost(tiny_model, torch.rand(2, 1, 8, 8), repeats=0)


def test_autoattack_passes_benchmark_quick(mnist_model, tmp_path):
    # the smoke run of benchmarks/autoattack_passes.py: advex alone on the zoo CNN; its own
    # counts equal the counter's and the JSON is complete
    import json

    mod = load_benchmark("autoattack_passes")
    out = tmp_path / "r.json"
    mod.main(["--quick", "--out", str(out), "--markdown"])
    doc = json.loads(out.read_text())
    row = doc["models"]["zoo"]
    assert row["advex"]["evaluation_reported"]["equal_to_counter"] is True
    assert row["backward_cost"]["backward_cost"] > -1
    assert set(row["advex"]["passes"]["stages"]) >= {"other", "apgd-ce"}
    assert doc["autoattack"] is False and doc["n"] == 8

"""Queries-vs-distance curves of the decision-based attacks: recorded per point, summarised,
drawn in `advex attack`'s outputs and in the evaluation report."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from advex.attacks import HopSkipJump
from advex.attacks.decision import QueryCurve, summarise_curve
from advex.cli import main
from advex.models import LabelBlackBox


def test_curve_table_and_summary_agree_with_the_result(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:4], mnist_correct[1][:4]
    box = LabelBlackBox(lambda t: mnist_model(t).argmax(1), num_classes=10)
    curve = QueryCurve()
    attack = HopSkipJump(norm="l2", max_queries=300, curve=curve)
    r1 = attack(box, x[:2], y[:2])
    r2 = attack(box, x[2:], y[2:])
    grid = QueryCurve.grid(300)
    assert grid[0] == 10 and grid[-1] == 300 and grid == sorted(set(grid))
    table = curve.table(grid)  # both runs' points
    assert len(table) == 4 and all(len(row) == len(grid) for row in table)
    last = [row[-1] for row in table]
    norms = [*r1.norms.tolist(), *r2.norms.tolist()]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(last, norms, strict=True))
    s = summarise_curve(table, grid, eps=2.0)
    med = [v for v in s["median_distance"] if v is not None]
    assert med == sorted(med, reverse=True) and s["points"] == 4
    assert s["within_eps"] == sorted(s["within_eps"])


def test_advex_attack_writes_the_query_curve(tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(
        main,
        [
            "attack",
            "--attack",
            "hopskipjump",
            "--norm",
            "l2",
            "--param",
            "max_queries=200",
            "--n",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (out / "query_curve.png").read_bytes().startswith(b"\x89PNG")
    doc = json.loads((out / "results.json").read_text())
    curve = doc["query_curve"]
    assert curve["queries"][-1] == 200 and curve["points"] >= 1
    assert curve["median_distance"][-1] is not None

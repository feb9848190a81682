"""Evaluation that knows what it can see: models without gradients (no graph, one-hot / label
outputs, black-box adapters) are detected before any attack runs and evaluated with the
black-box stages; the verdict says the number is an upper bound."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from torch import nn

from advex.cli import main
from advex.evaluate import evaluate
from advex.evaluate.capabilities import black_box_preset, probe_capability
from advex.evaluate.checks import masking_checks
from advex.evaluate.presets import PRESETS
from advex.models import ScoreBlackBox
from advex.threats import ThreatModel

FACTORY = """
import torch
from advex import zoo
from advex.models import LabelBlackBox


def label_only():
    cnn = zoo.load("mnist-smallcnn")
    return LabelBlackBox(lambda x: cnn(x).argmax(1), num_classes=10)


def one_hot():
    cnn = zoo.load("mnist-smallcnn")

    class OneHot(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(cnn(x).argmax(1), 10).float()

    return OneHot().eval()
"""


class OneHot(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return nn.functional.one_hot(self.model(x).argmax(1), 10).float()


class NumpyRoundTrip(nn.Module):
    """A forward pass through numpy: scores without a gradient graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.no_grad():
            return torch.from_numpy(self.model(x).numpy())


def test_label_only_zoo_cnn_is_not_reported_robust_by_advex_evaluate(tmp_path, monkeypatch):
    (tmp_path / "bb_label_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    for factory in ("label_only",):  # one_hot: through the Python API below (same path)
        out = tmp_path / factory
        r = CliRunner().invoke(
            main,
            [
                "evaluate",
                "--model",
                f"bb_label_models:{factory}",
                "--eps",
                "0.3",
                "--n",
                "12",
                "--out",
                str(out),
                "--no-progress",
            ],
        )
        assert r.exit_code == 0, r.output + repr(r.exception)
        assert "upper bound from black-box attacks only" in r.output
        doc = json.loads((out / "results.json").read_text())
        assert doc["verdict"] == "UPPER-BOUND"
        assert doc["access"]["exposes"] == "labels"
        assert doc["robust_accuracy"] <= 0.1 < doc["clean_accuracy"]
        assert doc["per_attack"][0]["attack"] == "RayS"
        assert 0 < doc["access"]["queries_used"] <= 12 * 10_000
        fired = {c["name"]: c for c in doc["checks"] if not c["passed"]}
        assert "HopSkipJump" in fired["usable_gradients"]["recommendation"]
        # the report draws queries vs distance for the decision-based stages
        curve = doc["query_curves"]["rays"]
        assert curve["queries"][-1] == 10_000 and curve["within_eps"][-1] == 1.0
        assert curve["within_eps"] == sorted(curve["within_eps"])
        assert "Queries vs distance" in (out / "report.html").read_text(encoding="utf-8")


def test_one_hot_model_gets_decision_attacks(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:10], mnist_correct[1][:10]
    ev = evaluate(OneHot(mnist_model).eval(), (x, y), eps=0.3, preset="standard")
    assert ev.access["exposes"] == "labels" and ev.verdict == "UPPER-BOUND"
    assert ev.stage_names == ["rays", "hsja-linf"] and ev.robust_accuracy <= 0.1
    assert "queries spent" in ev.access["note"]


def test_model_without_graph_gets_square_not_an_autograd_error(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:10], mnist_correct[1][:10]
    model = NumpyRoundTrip(mnist_model).eval()
    cap = probe_capability(model, x, y)
    assert cap.exposes == "scores" and "no gradient graph" in cap.reason
    ev = evaluate(model, (x, y), eps=0.3, preset="standard")
    assert ev.stage_names == ["square"] and ev.verdict == "UPPER-BOUND"
    assert ev.robust_accuracy <= 0.2
    assert "Square" in ev.checks[0].recommendation and not ev.checks[0].passed
    assert "upper bound" in ev.summary()
    # a score-only adapter declares it: same routing, without probing autograd
    box = ScoreBlackBox(lambda t: mnist_model(t))
    assert probe_capability(box, x, y).reason.startswith("the model declares")


def test_masking_checks_name_decision_attacks_for_label_outputs(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:8], mnist_correct[1][:8]
    threat = ThreatModel(norm="linf", eps=0.3)
    checks = masking_checks(OneHot(mnist_model).eval(), x, y, threat)
    assert len(checks) == 1 and not checks[0].passed
    for name in ("HopSkipJump", "RayS", "BoundaryAttack"):
        assert name in checks[0].recommendation
    checks = masking_checks(NumpyRoundTrip(mnist_model).eval(), x, y, threat)
    assert "Square" in checks[0].recommendation and "BPDA" in checks[0].recommendation


def test_gradient_models_keep_their_preset(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:6], mnist_correct[1][:6]
    cap = probe_capability(mnist_model, x, y)
    assert cap.exposes == "gradients"
    ev = evaluate(mnist_model, (x, y), eps=0.1, preset=PRESETS["quick"].scaled(0.1), checks=False)
    assert ev.stage_names == ["apgd-ce", "apgd-t"] and ev.access["exposes"] == "gradients"
    assert ev.verdict == "UNCHECKED"
    # zero gradients everywhere (quantisation): black-box stages; the masking checks name BPDA
    quantised = nn.Sequential(_Round(), mnist_model).eval()
    cap = probe_capability(quantised, x, y)
    assert cap.exposes == "scores" and cap.evidence["gradient"] == "zero"


class _Round(nn.Module):
    def forward(self, x):
        return torch.round(x * 4) / 4


def test_black_box_preset_per_norm():
    labels = probe_capability.__globals__["Capability"]("labels", "test")
    scores = probe_capability.__globals__["Capability"]("scores", "test")
    std = PRESETS["standard"]
    assert [s.attack for s in black_box_preset(std, labels, "linf").stages] == [
        "RayS",
        "HopSkipJump",
    ]
    assert [s.attack for s in black_box_preset(std, labels, "l2").stages] == ["HopSkipJump"]
    assert [s.name for s in black_box_preset(std, scores, "l2").stages] == ["square"]
    # budgets scale with the preset (--budget-scale)
    cheap = black_box_preset(std.scaled(0.1), labels, "l2")
    assert cheap.describe("l2")["stages"][0]["params"]["max_queries"] == 1000

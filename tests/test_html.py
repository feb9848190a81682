"""The self-contained HTML report of an evaluation."""

from __future__ import annotations

import base64
import re

import pytest
import torch
from pathological import ScaledLogits

from advex.evaluate.ensemble import evaluate
from advex.evaluate.presets import PRESETS
from advex.report import save_html

PRESET = PRESETS["quick"].scaled(0.2)


@pytest.fixture(scope="module")
def suspect(mnist_model, mnist_test):
    """Logits scaled by 1e4 (softmax saturation), evaluated without adaptations: a SUSPECT
    verdict with evidence. (A quantised-input model without BPDA has zero gradients: it is
    routed to the black-box stages, tests/test_capabilities.py.)"""
    x, y = mnist_test
    model = ScaledLogits(mnist_model, 1e4).eval()
    return evaluate(model, (x[:20], y[:20]), eps=0.3, preset=PRESET, probe=20, adapt=False)


def _images(text: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    ]


def test_report_is_self_contained(mnist_model, mnist_test, tmp_path):
    x, y = mnist_test
    ev = evaluate(mnist_model, (x[:20], y[:20]), eps=0.3, preset=PRESET, probe=20)
    path = ev.save_html(tmp_path / "r" / "report.html", title="zoo <cnn>")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for section in (
        "Summary",
        "Per-attack contribution",
        "Robust accuracy vs ε",
        "Adversarial examples",
        "Gradient-masking checks",
        "Adaptations",
        "Run metadata",
    ):
        assert f"<h2>{section}" in text
    imgs = _images(text)
    assert len(imgs) == 4  # stages, curve, norm histogram, triptych
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in imgs)
    # nothing fetched from elsewhere, no scripts, user text escaped
    assert "<script" not in text and not re.search(r"(src|href)=['\"]?(https?:)?//", text)
    assert "zoo &lt;cnn&gt;" in text and "zoo <cnn>" not in text
    assert "badge pass" in text and f"{100 * ev.robust_accuracy:.2f}%" in text
    assert "clopper-pearson 95%" in text and "apgd-t" in text


def test_suspect_report_shows_the_evidence(suspect, tmp_path):
    assert suspect.verdict == "SUSPECT"
    text = save_html(suspect, tmp_path / "s.html").read_text(encoding="utf-8")
    assert "badge suspect" in text and "FIRED" in text
    gradients = next(c for c in suspect.checks if c.name == "gradients")
    assert gradients.evidence.split(":")[0] in text
    assert "dlr" in text  # the recommended scale-invariant loss


def test_norm_histogram_counts_points_at_exactly_eps():
    """Regression: float32 norms equal to ε must land in the last bin, not outside it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from advex.report import html as H

    class Ev:
        per_attack = [type("S", (), {"name": "apgd-ce"})()]
        threat = {"eps": 0.3, "norm": "linf"}
        broken_by = torch.zeros(50, dtype=torch.long)
        norms = torch.full((50,), 0.3, dtype=torch.float32)

    counted = []
    real_hist = plt.Axes.hist

    def spy(self, data, *a, **k):
        out = real_hist(self, data, *a, **k)
        counted.append(float(out[0].sum()))
        return out

    plt.Axes.hist = spy
    try:
        assert H._norm_hist(Ev()) is not None
    finally:
        plt.Axes.hist = real_hist
    assert counted == [50.0]

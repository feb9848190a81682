"""`advex poison` and `advex scan` end to end on a tiny configuration: the files, the keys of
results.json, the model loadable with advex.zoo.load, and clear errors on bad options."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from advex import data as D
from advex import zoo
from advex.cli import main

SMALL = ["--data", "mnist5k", "--n-train", "1000", "--n-test", "300", "--no-progress"]


@pytest.fixture(scope="module")
def poisoned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("poison")
    r = CliRunner().invoke(
        main,
        ["poison", *SMALL, "--attack", "badnets", "--rate", "0.05", "--target", "0"]
        + ["--epochs", "1", "--seed", "1", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    return out


def test_poison_writes_results_model_figures_report(poisoned_dir):
    res = json.loads((poisoned_dir / "results.json").read_text())
    for key in (
        "clean_accuracy",
        "clean_accuracy_reference",
        "attack_success_rate",
        "poisoned_indices",
        "accuracy_drop",
        "attack_success_rate_reference",
    ):
        assert key in res
    assert len(res["poisoned_indices"]) == 50
    model = zoo.load(poisoned_dir)
    assert zoo.accuracy(model, __import__("advex").data.mnist5k("test").subset(300)) == (
        pytest.approx(res["clean_accuracy"])
    )
    for f in ("trigger.png", "triggered_examples.png", "poisoned_samples.png", "report.html"):
        assert (poisoned_dir / f).stat().st_size > 0
    assert "attack success" in (poisoned_dir / "report.html").read_text()


@pytest.mark.parametrize(
    "detector,extra",
    [
        ("spectral", []),
        ("activation-clustering", []),
        ("strip", ["--strip-overlays", "5", "--n-clean", "60"]),
        ("neural-cleanse", ["--nc-steps", "10", "--n-clean", "60", "--repair"]),
    ],
)
def test_scan(poisoned_dir, tmp_path, detector, extra):
    r = CliRunner().invoke(
        main,
        ["scan", "--model", str(poisoned_dir), *SMALL, "--detector", detector]
        + ["--out", str(tmp_path), *extra],
    )
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    for key in ("recall", "precision", "false_positive_rate"):
        assert key in res
    assert (tmp_path / "report.html").is_file()
    figs = res["figures"]
    assert figs and all((tmp_path / f).is_file() for f in figs)
    if "--repair" in extra:
        assert "clean_accuracy" in res and "attack_success_rate" in res
    if detector == "neural-cleanse":
        assert (tmp_path / "anomaly_index.png").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rate", "0"], "rate must lie strictly between 0 and 1"),
        (["--rate", "1"], "rate must lie strictly between 0 and 1"),
        (["--target", "10"], "is not a class"),
        (["--trigger-size", "40"], "does not fit"),
    ],
)
def test_poison_bad_options(tmp_path, args, message):
    r = CliRunner().invoke(main, ["poison", *SMALL, "--out", str(tmp_path), *args])
    assert r.exit_code != 0
    assert message in r.output


def test_benchmark_script_smoke(tmp_path):
    """benchmarks/poison.py runs end to end (tiny: 600 digits, 1 epoch, ART side by side)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "poison.py"), "--quick", "--n-train", "600"]
        + ["--n-test", "150", "--epochs", "1", "--nc-steps", "10", "--skip", "ica,controls,5,6,7"]
        + ["--target", "3", "--trigger-size", "5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    st = res["stages"]
    assert 0 <= st["badnets"]["attack_success_rate"] <= 1
    # --target reaches the attack (the default target follows the data: 2 on GTSRB)
    assert res["target"] == 3 and st["badnets"]["attack"]["target"] == 3
    assert res["target_class_train_count"] == int((D.mnist5k("train").y[:600] == 3).sum())
    # --trigger-size reaches the attack, and the JSON states the trigger's share of the image
    assert res["trigger"]["size"] == 5 and st["badnets"]["attack"]["trigger"]["size"] == 5
    assert res["trigger"]["image_share"] == round(25 / 784, 4)
    assert "advex spectral (whitened, robust rule z > 4)" in st["detectors"]
    assert any(k.startswith("advex STRIP") for k in st["strip"])
    assert st["badnets"]["cpu_s"] > 0 and res["advex_job_cpu_s"]["total"] > 0
    assert "Keras" in st["neural_cleanse"]["ART NeuralCleanse"]


def test_scan_shares_one_activation_pass(poisoned_dir, monkeypatch):
    """spectral and activation-clustering scans of one model reuse one cached activation pass
    (keyed by the weights and the data); another training set or a broken cache recomputes."""
    import torch

    from advex import data as D
    from advex.poison import defenses as P
    from advex.poison import runs

    model = zoo.load(poisoned_dir)
    poisoned, _, _ = runs.load_poisoned_training_set(poisoned_dir, D.mnist5k("train").subset(1000))
    cache = poisoned_dir / runs.ACTIVATIONS_FILE
    cache.unlink(missing_ok=True)
    real = P.activations
    calls = []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(P, "activations", counted)
    first = runs.training_activations(poisoned_dir, model, poisoned)
    assert len(calls) == 1 and cache.is_file()
    assert torch.equal(runs.training_activations(poisoned_dir, model, poisoned), first)
    assert len(calls) == 1  # the second detector pays nothing
    other = poisoned.subset(torch.arange(999))
    assert len(runs.training_activations(poisoned_dir, model, other)) == 999
    assert len(calls) == 2  # other data: recomputed, not a stale cache
    cache.write_bytes(b"not a safetensors file")
    assert torch.equal(runs.training_activations(poisoned_dir, model, poisoned), first)
    assert len(calls) == 3

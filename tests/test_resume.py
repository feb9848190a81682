"""Resumable evaluations: kill a run halfway, rerun it, get the same final numbers."""

from __future__ import annotations

import json

import pytest

import advex.evaluate.ensemble as ensemble
from advex.evaluate.ensemble import TIMING_KEYS, evaluate
from advex.evaluate.presets import PRESETS
from advex.evaluate.state import FingerprintMismatch

PRESET = PRESETS["quick"].scaled(0.2)  # APGD-CE 10 steps, APGD-T 3 targets × 10 steps
KW = {"eps": 0.1, "preset": PRESET, "batch_size": 10, "probe": 20}


def _strip(obj):
    """Drop timings and dates: the only things allowed to differ between two runs."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def data(mnist_test):
    x, y = mnist_test
    return x[:40], y[:40]


@pytest.fixture(scope="module")
def reference(mnist_model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    ev = evaluate(mnist_model, data, out_dir=out, **KW)
    ev.to_json(out / "results.json")
    return ev, out


def test_interrupted_run_resumes_to_identical_results(mnist_model, data, reference, tmp_path):
    ref, ref_dir = reference
    assert 0.2 < ref.robust_accuracy < ref.clean_accuracy  # a run where the attacks do work

    def fail_after_two(computed):
        if computed >= 2:
            raise RuntimeError(f"injected failure after {computed} batch(es)")

    ensemble._after_batch_hook = fail_after_two
    try:
        with pytest.raises(RuntimeError, match="injected failure after 2 batch"):
            evaluate(mnist_model, data, out_dir=tmp_path, **KW)
    finally:
        ensemble._after_batch_hook = None
    state = tmp_path / "state"
    assert sorted(p.name for p in state.glob("batch_*.json")) == [
        "batch_00000.json",
        "batch_00001.json",
    ]
    assert not (state / "checks.json").exists() and not (tmp_path / "results.json").exists()

    calls = []
    real = ensemble._run_batch

    def counting(*args, **kwargs):
        calls.append(args[3])  # the batch index
        return real(*args, **kwargs)

    ensemble._run_batch = counting
    try:
        ev = evaluate(mnist_model, data, out_dir=tmp_path, **KW)
    finally:
        ensemble._run_batch = real
    assert calls == [2, 3]  # finished batches were not redone
    assert ev.resumed_batches == 2
    ev.to_json(tmp_path / "results.json")
    a = json.loads((ref_dir / "results.json").read_text())
    b = json.loads((tmp_path / "results.json").read_text())
    assert _strip(a) == _strip(b)
    assert a["per_point"]["broken_by"] == b["per_point"]["broken_by"]
    assert b["robust_accuracy"] == ref.robust_accuracy
    # a third run finds everything on disk, including the masking checks
    again = evaluate(mnist_model, data, out_dir=tmp_path, **KW)
    assert again.resumed_batches == 4
    assert _strip(again.to_dict()) == _strip(ref.to_dict())


def test_a_different_run_is_refused_unless_restarted(mnist_model, data, reference):
    _, out = reference
    with pytest.raises(FingerprintMismatch, match="seed") as err:
        evaluate(mnist_model, data, out_dir=out, **dict(KW, seed=1))
    assert "restart=True" in str(err.value)
    with pytest.raises(FingerprintMismatch, match="data"):
        evaluate(mnist_model, (data[0][:30], data[1][:30]), out_dir=out, **KW)
    with pytest.raises(FingerprintMismatch, match="preset"):
        evaluate(mnist_model, data, out_dir=out, **dict(KW, preset=PRESET.scaled(0.3)))


def test_restart_discards_the_old_state(mnist_model, data, tmp_path):
    first = evaluate(mnist_model, data, out_dir=tmp_path, **dict(KW, checks=False))
    assert first.resumed_batches == 0
    ev = evaluate(
        mnist_model, data, out_dir=tmp_path, restart=True, **dict(KW, seed=3, checks=False)
    )
    assert ev.resumed_batches == 0 and ev.seed == 3
    fp = json.loads((tmp_path / "state" / "fingerprint.json").read_text())
    assert fp["seed"] == 3

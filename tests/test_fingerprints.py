"""Refactors must not change what attacks do: every attack's pass counts per point, successes and
adversarial examples on the zoo CNN equal the recorded fingerprints (benchmarks/fingerprints.py).

A deliberate change of behaviour re-records the affected cases with
``python benchmarks/fingerprints.py --record --only NAME`` and says why in its commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchscripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("fingerprints")


@pytest.mark.slow
def test_attacks_match_recorded_fingerprints():
    fp = _module()
    summary, tensors = fp.run_all()
    recorded = json.loads(fp.JSON_PATH.read_text())
    if recorded["weights"] != summary["weights"]:
        pytest.skip("zoo weights differ from the recording machine's (CPU-dependent kernels)")
    assert set(summary["attacks"]) == set(recorded["attacks"])
    assert fp.compare(summary, tensors) == []

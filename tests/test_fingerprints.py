"""Refactors must not change what attacks do: every attack's pass counts per point, successes and
adversarial examples on the zoo CNN equal the recorded fingerprints (benchmarks/fingerprints.py).

A deliberate change of behaviour re-records the affected cases with
``python benchmarks/fingerprints.py --record --only NAME`` and says why in its commit.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "fingerprints", ROOT / "benchmarks" / "fingerprints.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fingerprints"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_attacks_match_recorded_fingerprints():
    fp = _module()
    summary, tensors = fp.run_all()
    recorded = json.loads(fp.JSON_PATH.read_text())
    if recorded["weights"] != summary["weights"]:
        pytest.skip("zoo weights differ from the recording machine's (CPU-dependent kernels)")
    assert set(summary["attacks"]) == set(recorded["attacks"])
    assert fp.compare(summary, tensors) == []

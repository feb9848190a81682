"""Smoke test of benchmarks/serve_load.py (``--quick``, shortened): the real ``advex serve``
command (uvicorn, subprocess) on a free port, bound to loopback only, under a few concurrent
clients; bad requests, the job cap and a client that hangs up."""

from __future__ import annotations

import pytest
from benchscripts import load_benchmark

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_load_benchmark_quick(tmp_path):
    """benchmarks/serve_load.py --quick, shortened: a real server on a free loopback port."""
    mod = load_benchmark("serve_load")
    out = tmp_path / "load.json"
    res = mod.main(
        ["--quick", "--duration", "1.5", "--trips", "2", "--clients", "6", "--out", str(out)]
    )
    assert out.is_file() and res["passed"], res["checks"]
    assert res["round_trip"]["eps_0.05"]["passes"] >= 80  # all 40 steps ran (fwd + bwd each)
    assert res["load"]["bad"] and res["machine"]["load_average_before"]
    assert res["listening_on"] == ["127.0.0.1"] and res["checks"]["bound_to_loopback_only"]

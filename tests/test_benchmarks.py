"""Smoke tests of ``benchmarks/run.py``: it runs in a tiny configuration and its measurements are
self-consistent. Speed is never asserted here (timings on a shared CI machine are noise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchscripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"


def _load_run_module():
    return load_benchmark("run")


@pytest.fixture(scope="module")
def bench():
    return _load_run_module()


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_quick_run_prints_table_and_writes_consistent_json(mnist_model, tmp_path):
    # mnist_model: the zoo model is trained/cached before the script (a subprocess) loads it
    try:
        import torchattacks  # noqa: F401

        peers = "torchattacks"
    except ImportError:  # the optional 'bench' extra is not installed: advex vs raw only
        peers = "none"
    out = tmp_path / "bench.json"
    proc = _run(
        "--quick",
        "--batch",
        "8",
        "--only",
        "pgd,fgsm",
        "--peers",
        peers,
        "--threads",
        "1",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "raw fwd+bwd" in proc.stdout and "advex/ref" in proc.stdout
    payload = json.loads(out.read_text())
    assert payload["machine"]["torch_threads"] == 1
    assert payload["config"]["batch"] == 8 and payload["config"]["quick"] is True
    cases = {c["case"]: c for c in payload["cases"]}
    assert set(cases) == {"pgd-no-early-exit", "pgd", "fgsm"}

    # ε = 0.001 flips nothing: advex spends every step on every point, and the counting wrapper
    # (hooks on the model input) agrees with advex's own per-sample count
    ne = cases["pgd-no-early-exit"]
    steps = ne["params"]["steps"]
    adv, raw = ne["implementations"]["advex"], ne["implementations"]["raw"]
    assert adv["gradients_per_image"] == steps == adv["reported_gradients_per_image"]
    assert raw["gradients_per_image"] == steps
    assert adv["strength"]["robust_accuracy"] == 1.0
    assert adv["mutated_input"] is False
    # advex takes input gradients only and leaves the caller's model as it was
    assert adv["left_parameter_grads"] is False and adv["changed_model"] is False
    row = ne["rows"][0]
    assert row["reference"] == "raw" and row["ratio"] == pytest.approx(
        row["advex_s"] / row["reference_s"]
    )
    # the real attack stays in the ball and in bounds, and the reported strength is measured
    s = cases["pgd"]["implementations"]["advex"]["strength"]
    assert s["outside_ball"] == 0 and s["out_of_bounds"] == 0
    assert s["max_distance"] <= 0.3 + 1e-6
    assert cases["fgsm"]["implementations"]["advex"]["gradients_per_image"] == 1.0
    # deselected peers are reported as such, never silently dropped
    assert cases["pgd"]["skipped"]["foolbox"] == "not selected (--peers)"
    if peers == "torchattacks":
        ta = cases["pgd"]["implementations"]["torchattacks"]
        # torchattacks has no early exit: it spends every step on every point
        assert ta["gradients_per_image"] == cases["pgd"]["params"]["steps"]
        assert ta["strength"]["outside_ball"] == 0 and ta["strength"]["out_of_bounds"] == 0
        assert any(r["reference"] == "torchattacks" for r in cases["pgd"]["rows"])


def test_bad_arguments_fail_with_clear_messages(bench, capsys):
    with pytest.raises(SystemExit, match="unknown case"):
        bench.select_cases("pgd,nosuch")
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "0"])
    assert "--batch must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--peers", "cleverhans"])
    assert "unknown ['cleverhans']" in capsys.readouterr().err
    assert [c.key for c in bench.select_cases("pgd")] == ["pgd-no-early-exit", "pgd"]


def test_counter_and_judge(bench, tiny_model):
    """The harness's own measuring: gradient rows are counted once per backward, and an output
    outside the ε-ball is flagged and never counted as a successful attack."""
    counter = bench.Counter(tiny_model)
    x = torch.rand(5, 1, 8, 8)
    leaf = x.clone().requires_grad_(True)
    for _ in range(3):  # the same leaf reused: hooks must not pile up
        torch.autograd.grad(counter(leaf).sum(), leaf)
    with torch.no_grad():
        counter(x)
    assert counter.gradient_rows == 15 and counter.forward_rows == 20

    y = tiny_model(x).argmax(1)
    p = type("P", (), {"norm": "linf", "eps": 0.1})()
    far = (x + 0.5 * torch.sign(torch.randn_like(x))).clamp(0, 1)  # fools, but out of the ball
    s = bench.judge("budget", p, tiny_model, x, y, far)
    assert s["outside_ball"] > 0 and s["robust_accuracy"] == 1.0
    s = bench.judge("budget", p, tiny_model, x, y, x.clone())
    assert s == {"out_of_bounds": 0, "robust_accuracy": 1.0, "outside_ball": 0, "max_distance": 0.0}
    p2 = type("P", (), {"norm": "l2", "eps": None})()
    s = bench.judge("minnorm", p2, tiny_model, x, y, far)
    assert 0.0 <= s["success_rate"] <= 1.0


def test_cw_settings_script_reports_each_setting(mnist_model):
    """benchmarks/cw_settings.py (the tables of docs/attacks-optimisation.md) runs in a tiny
    configuration and reports a row per setting, with its passes and success."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    try:
        import foolbox  # noqa: F401

        fool = "1,5,0.1,1"
    except ImportError:
        fool = "none"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cw_settings.py"), "--n", "4"]
        + ["--advex", "1,5,0.1,1,5e-3", "--advex", "1,5,0.1,1,1e-6", "--foolbox", fool],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("advex ", "foolbox "))]
    assert [r.split()[1] for r in rows[:2]] == ["1,5,0.1,1,5e-3", "1,5,0.1,1,1e-6"]
    assert len(rows) == (3 if fool != "none" else 2)
    for r in rows:
        passes = float(r.split()[2])
        assert 0 < passes <= 5  # one round of at most 5 steps
        assert r.split()[4].endswith("%")

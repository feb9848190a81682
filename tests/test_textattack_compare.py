"""Smoke test of ``benchmarks/textattack_compare.py`` without TextAttack: the advex rows run,
every TextAttack task says "not installed" cleanly, and the offline workarounds it prepares for
TextAttack's venv are what the docs describe. Speed is never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchscripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "textattack_compare.py"


def _module():
    return load_benchmark("textattack_compare")


def test_quick_run_without_textattack(tmp_path):
    out = tmp_path / "ta.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tasks", "deepwordbug,textfooler-recipe"]
        + ["--venv", str(tmp_path / "no-venv"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not installed" in proc.stdout
    res = json.loads(out.read_text())
    assert res["n_attacked"] == 12 and res["n_caught"] <= res["n_test_spam"]
    dwb = res["rows"]["deepwordbug"]
    assert dwb["textattack"] == {
        "status": "not installed",
        "why": f"no TextAttack venv at {tmp_path / 'no-venv'}",
    }
    assert dwb["ratios"] is None
    assert res["rows"]["textfooler_recipe"]["textattack"]["status"] == "not installed"
    a = dwb["advex"]
    assert a["n"] == 12 and 0 <= a["successes"] <= 12
    assert a["success_rate"] == a["successes"] / 12
    assert a["queries_total"] > 0 and a["cpu_s"] >= 0
    if a["successes"]:  # the budget holds on every success, measured by the benchmark itself
        assert a["char_edits"]["median"] <= 30
        for ex in a["examples"]:
            assert ex["original"] != ex["adversarial"]


def test_offline_env_prepares_textattack_workarounds(tmp_path):
    m = _module()
    env = m.offline_env(tmp_path)
    assert (tmp_path / "ta-cache" / "post_install_check_3").is_file()
    assert env["TA_CACHE_DIR"] == str(tmp_path / "ta-cache")
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    words = (tmp_path / "nltk_data/corpora/stopwords/english").read_text().split("\n")[:-1]
    assert len(words) == len(set(words)) == 179 and "mightn't" in words and "the" in words


def test_summarize_counts_the_same_way_for_both_tools():
    m = _module()
    row = m.summarize(
        ["win a free prize now", "call me later"],
        ["win a frEe prze now", "call me later"],
        [True, False],
        [10, 4],
    )
    assert row["successes"] == 1 and row["success_rate"] == 0.5
    assert row["char_edits"] == {"median": 2, "mean": 2.0}  # one substitution, one deletion
    assert row["words_changed"] == {"median": 2, "mean": 2.0}
    assert row["queries_median"] == 7 and row["queries_total"] == 14

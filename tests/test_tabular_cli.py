"""``advex attack`` / ``advex evaluate`` on tabular data: the files they write, the independent
constraint check, class names as targets, a user CSV with a YAML schema, and clear errors."""

from __future__ import annotations

import csv
import json

import pytest
from benchscripts import load_benchmark
from click.testing import CliRunner

from advex.cli import main
from advex.data import breast_cancer
from advex.report.tabular import column_names, read_adversarial_csv

pytest.importorskip("yaml", reason="YAML schemas need the [tabular] extra (PyYAML)")


def test_attack_writes_results_and_a_readable_csv(tmp_path):
    schema_file = breast_cancer("test").schema.save(tmp_path / "schema.yaml")
    out = tmp_path / "run"
    r = CliRunner().invoke(
        main,
        [
            "attack", "--model", "breast-cancer-mlp", "--data", "breast-cancer",
            "--schema", str(schema_file), "--attack", "constrained-pgd", "--target", "benign",
            "--eps", "1.0", "--n", "40", "--param", "steps=10", "--out", str(out),
            "--no-progress",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "constraint satisfaction (independent check of adversarial.csv)" in r.output
    assert "→" in r.output  # an example in original units
    doc = json.loads((out / "results.json").read_text())
    tab = doc["tabular"]
    assert tab["constraint_satisfaction"]["rate"] == 1.0
    assert 0 < tab["success_rate"] <= 1 and tab["attacked"] >= 5
    assert doc["meta"]["threat"]["threat"] == "tabular"
    with open(out / "adversarial.csv", newline="") as f:
        rows = list(csv.reader(f))
    schema = breast_cancer("test").schema
    assert rows[0][:4] == ["index", "original_label", "adversarial_prediction", "success"]
    assert rows[0][4:] == column_names(schema) and "mean radius (image units)" in rows[0]
    assert {row[1] for row in rows[1:]} == {"malignant"}  # targeted: only malignant attacked
    assert {row[2] for row in rows[1:]} <= {"malignant", "benign"}
    back = read_adversarial_csv(out / "adversarial.csv", schema)
    assert bool(schema.verdicts(back["x_adv"]).all().all())
    assert len(back["index"]) == tab["attacked"]


def test_evaluate_on_a_tabular_model(tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(
        main,
        ["evaluate", "--model", "breast-cancer-lr", "--data", "breast-cancer", "--eps", "0.5,1.5",
         "--n", "10", "--out", str(out), "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    ras = [c["robust_accuracy"] for c in doc["curve"]]
    assert ras[0] >= ras[1] and ras[1] <= 0.7  # a stronger budget never helps the model
    for run in doc["runs"]:
        for check in run["constraint_satisfaction"].values():
            assert check["rate"] == 1.0


def test_user_csv_and_clear_errors(tmp_path):
    ds = breast_cancer("all")
    names = ds.schema.names
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, "diagnosis"])
        for xi, yi in zip(ds.x[:80].tolist(), ds.y[:80].tolist(), strict=True):
            w.writerow([*xi, ds.class_names[yi]])
    schema = tmp_path / "t.yaml"
    ds.schema.save(schema)
    runner = CliRunner()
    base = ["attack", "--model", "breast-cancer-lr", "--attack", "constrained-pgd",
            "--param", "steps=5", "--no-progress"]  # fmt: skip
    r = runner.invoke(
        main, [*base, "--data", f"csv:{tmp_path / 't.csv'}", "--schema", str(schema),
               "--split", "all", "--target", "benign", "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    # a class name the data does not have
    r = runner.invoke(main, [*base, "--data", "breast-cancer", "--target", "healthy",
                             "--out", str(tmp_path / "o2")])  # fmt: skip
    assert r.exit_code != 0 and "unknown class name 'healthy'" in r.output
    # a schema that contradicts the data names the feature
    text = schema.read_text()
    assert "  - 42.2\n" in text
    text = text.replace("  - 42.2\n", "  - 10.0\n", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = runner.invoke(main, [*base, "--data", "breast-cancer", "--schema", str(bad),
                             "--out", str(tmp_path / "o3")])  # fmt: skip
    assert r.exit_code != 0 and "feature 'mean_radius'" in r.output, r.output
    # an unknown feature in the schema
    bad.write_text(schema.read_text().replace("name: mean_radius", "name: mean_radius_x", 1))
    r = runner.invoke(main, [*base, "--data", "breast-cancer", "--schema", str(bad),
                             "--out", str(tmp_path / "o4")])  # fmt: skip
    assert r.exit_code != 0 and "mean_radius_x" in r.output, r.output
    # an image attack on tabular data
    r = runner.invoke(main, ["attack", "--model", "breast-cancer-lr", "--data", "breast-cancer",
                             "--attack", "fgsm", "--out", str(tmp_path / "o5")])  # fmt: skip
    assert r.exit_code != 0 and "constrained-pgd" in r.output


def test_benchmark_smoke(tmp_path):
    """``benchmarks/tabular.py --quick`` in a tiny configuration: every advex row valid, the LR
    ceiling respected, ART's row present (or the benchmark says why not)."""
    mod = load_benchmark("tabular")
    argv = ["--quick", "--rows", "4", "--models", "lr", "--out", str(tmp_path / "b.json")]
    try:
        import art  # noqa: F401
    except ImportError:
        pytest.skip("the benchmark runs ART's LowProFool (the [bench] extra)")
    doc = mod.main(argv)
    rows = [r for r in doc["rows"] if r["attack"].startswith("advex")]
    assert {r["model"] for r in rows} == {"breast-cancer-lr"}
    assert all(r["constraint_satisfaction"] == 1.0 and r["attacked"] == 4 for r in rows)
    assert any(r["attack"].startswith("ART LowProFool (raw)") for r in doc["rows"])
    assert json.loads((tmp_path / "b.json").read_text())["quick"] is True

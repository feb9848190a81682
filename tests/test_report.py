"""advex.report: JSON results with metadata, PNG figures, text tables."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from advex.attacks.gradient import FGSM, PGD
from advex.evaluate import Examples, robust_accuracy, robustness_curve
from advex.report import (
    auto_amplify,
    format_curve,
    format_table,
    jsonable,
    read_json,
    save_curve,
    save_triptych,
    to_json,
)


@pytest.fixture(scope="module")
def evaluation(mnist_model, mnist_test):
    x, y = mnist_test
    return robust_accuracy(mnist_model, (x[:60], y[:60]), [FGSM(eps=0.2), PGD(eps=0.2, steps=5)])


@pytest.fixture(scope="module")
def curve(mnist_model, mnist_test):
    x, y = mnist_test
    return robustness_curve(mnist_model, (x[:40], y[:40]), {"fgsm": FGSM}, [0.0, 0.1, 0.2])


def _strict_loads(text: str):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def test_json_has_documented_keys_and_round_trips(tmp_path, evaluation, curve):
    path = tmp_path / "sub" / "results.json"
    doc = to_json({"evaluation": evaluation, "curve": curve}, path, seed=7, command="pytest")
    loaded = _strict_loads(path.read_text())
    assert loaded == doc == read_json(path)
    meta = loaded["meta"]
    for key in ("advex_version", "torch_version", "python_version", "platform", "date", "seed"):
        assert meta[key] not in (None, ""), key
    assert meta["seed"] == 7 and meta["command"] == "pytest"
    assert meta["torch_version"] == torch.__version__
    ev = loaded["evaluation"]
    for key in (
        "n",
        "clean_accuracy",
        "robust_accuracy",
        "success_rate",
        "attack_order",
        "attacks",
        "worst_case",
        "passes",
        "wall_time_s",
    ):
        assert key in ev, key
    assert ev["attack_order"] == ["fgsm", "pgd"]
    for name in ("fgsm", "pgd"):
        s = ev["attacks"][name]
        for key in ("robust_accuracy", "success_rate", "norm_median", "gradients_total", "threat"):
            assert key in s
        assert s["threat"] == {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0], "mask": None}
    assert ev["robust_accuracy"] == evaluation.robust_accuracy
    assert ev["worst_case"]["n_broken"] + ev["worst_case"]["n_robust"] == evaluation.n_correct
    assert loaded["curve"]["eps"] == [0.0, 0.1, 0.2]
    assert loaded["curve"]["robust_accuracy"]["fgsm"] == curve.robust_accuracy["fgsm"]


def test_single_result_gets_its_threat_model(tmp_path, mnist_model, mnist_test):
    x, y = mnist_test
    res = FGSM(eps=0.1)(mnist_model, x[:10], y[:10])
    doc = to_json(res, tmp_path / "r.json")
    assert doc["meta"]["threat"]["eps"] == 0.1
    assert doc["attack"] == "fgsm" and doc["n"] == 10


def test_jsonable_converts_and_rejects():
    out = jsonable(
        {"t": torch.tensor([1.5, float("nan")]), "a": np.int64(3), "f": float("inf"), "s": {1}}
    )
    assert out == {"t": [1.5, None], "a": 3, "f": None, "s": [1]}
    with pytest.raises(TypeError, match="cannot write"):
        jsonable(object())


def test_triptych_png_is_written_with_expected_size(tmp_path, evaluation):
    ex = evaluation.examples
    assert len(ex) >= 4
    path = save_triptych(ex, tmp_path / "tri.png", max_rows=4, dpi=100)
    assert path.stat().st_size > 20_000
    img = mpimg.imread(path)
    # fixed layout: width 0.5 + 3·1.6 + 2·0.25 + 0.1 in, height 0.38 + 0.3 + 4·1.92 + 0.1 in
    assert img.shape[1] == pytest.approx(590, abs=2)
    assert img.shape[0] == pytest.approx(846, abs=2)
    assert float(img[..., :3].std()) > 0.1  # not a blank page
    # the perturbation column is centred at grey: mid-grey pixels are there
    mid = img[:, img.shape[1] // 2, :3]
    assert bool((np.abs(mid - 0.5) < 0.05).all(axis=1).any())


def test_triptych_from_attack_result_and_rgb_inputs(tmp_path, mnist_model, mnist_test):
    x, y = mnist_test
    res = FGSM(eps=0.1)(mnist_model, x[:3], y[:3])
    p = save_triptych(res, tmp_path / "r.png", x=x[:3], class_names=[f"d{i}" for i in range(10)])
    assert mpimg.imread(p).shape[0] > 300
    with pytest.raises(ValueError, match="clean batch"):
        save_triptych(res, tmp_path / "r2.png")
    # colour images (C=3) and a fixed amplification
    g = torch.Generator().manual_seed(0)
    xc = torch.rand(2, 3, 16, 16, generator=g)
    ex = Examples(
        x=xc,
        x_adv=(xc + 0.03).clamp(0, 1),
        y=torch.tensor([0, 1]),
        target=None,
        clean_pred=torch.tensor([0, 1]),
        clean_conf=torch.tensor([0.9, 0.8]),
        adv_pred=torch.tensor([1, 1]),
        adv_conf=torch.tensor([0.6, 0.7]),
        success=torch.tensor([True, False]),
        norms=torch.tensor([0.03, 0.03]),
        attack=["toy", "toy"],
        index=torch.tensor([0, 1]),
    )
    p = save_triptych(ex, tmp_path / "rgb.png", amplify=10)
    assert mpimg.imread(p).shape[2] in (3, 4)
    with pytest.raises(ValueError, match="amplify"):
        save_triptych(ex, tmp_path / "bad.png", amplify=0.5)
    with pytest.raises(ValueError, match="max_rows"):
        save_triptych(ex, tmp_path / "bad.png", max_rows=0)


def test_auto_amplify_is_a_round_factor():
    assert auto_amplify(0.3) == 1.5
    assert auto_amplify(0.1) == 5.0
    assert auto_amplify(0.01) == 50.0
    assert auto_amplify(0.8) == 1.0
    assert auto_amplify(0.0) == 1.0
    for m in (0.003, 0.07, 0.2):
        assert auto_amplify(m) * m <= 0.5 + 1e-12


def test_curve_png(tmp_path, curve):
    path = save_curve(curve, tmp_path / "curve.png")
    img = mpimg.imread(path)
    assert img.shape[:2] == (504, 768)  # 6.4 × 4.2 in at 120 dpi
    assert path.stat().st_size > 15_000
    # also from the JSON form
    save_curve(json.loads(json.dumps(curve.to_dict())), tmp_path / "curve2.png")
    with pytest.raises(TypeError, match="RobustnessCurve"):
        save_curve({"eps": [0.1]}, tmp_path / "bad.png")


def test_text_tables(evaluation, curve):
    text = format_table(evaluation)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["attack", "clean", "acc"]
    assert any(line.startswith("fgsm") for line in lines)
    assert any(line.startswith("worst case") for line in lines)
    assert f"{100 * evaluation.clean_accuracy:.1f}%" in text
    ctext = format_curve(curve)
    assert ctext.splitlines()[0].split() == ["eps", "fgsm"]
    assert len(ctext.splitlines()) == 2 + 3
    assert not math.isnan(curve.clean_accuracy)

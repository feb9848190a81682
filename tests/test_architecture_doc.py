"""docs/architecture.md's "add an attack in one file" example runs as written: the attack
attacks a tiny model, stays inside its threat, counts its passes, and the registry, the
string parameters and ``advex list`` find it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advex.attacks import registry
from advex.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Add an attack in one file", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "docs/architecture.md: no python block under 'Add an attack in one file'"
    return blocks[0]


@pytest.fixture(scope="module")
def example():
    """The namespace of the executed example; its attack leaves the registry afterwards."""
    ns: dict = {"__name__": "architecture_doc_example"}
    before = list(registry._EXTRA)
    try:
        exec(compile(_example_code(), str(DOC), "exec"), ns)
        yield ns
    finally:  # keep the other tests' registry as it was, even when the example fails
        registry._EXTRA[:] = before


def test_the_example_attack_runs_inside_its_threat(example):
    cls = example["RandomNoise"]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    for norm, eps in (("linf", 0.5), ("l2", 1.0), ("l1", 2.0)):
        attack = cls(eps=eps, norm=norm, tries=4, seed=1)
        res = attack(model, x, y)
        assert res.x_adv.shape == x.shape
        assert bool(attack.threat.contains(res.x_adv, x).all())
        assert bool((res.x_adv >= 0).all()) and bool((res.x_adv <= 1).all())
        # success is the model's prediction on x_adv, recomputed by the base class
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
        # no gradients; per point: the clean pass, at most `tries` draws, the re-prediction
        assert int(res.gradients.sum()) == 0
        assert bool((res.queries >= 2).all()) and bool((res.queries <= 2 + 4).all())
        # the same seed gives the same result
        again = cls(eps=eps, norm=norm, tries=4, seed=1)(model, x, y)
        assert torch.equal(again.x_adv, res.x_adv)
    # points already misclassified are never attacked: two passes only, x unchanged
    wrong = res.clean_pred != y
    assert bool(wrong.any())
    assert bool((res.queries[wrong] == 2).all())
    assert torch.equal(res.x_adv[wrong], x[wrong])


def test_the_example_attack_is_in_the_registry(example):
    cls = example["RandomNoise"]
    assert registry.find_attack("random-noise") is cls
    assert registry.find_attack("noise") is cls
    assert registry.find_attack("RandomNoise") is cls
    assert registry.available_attacks()["random-noise"] is cls
    assert registry.is_black_box("random-noise")
    assert registry.supported_norms(cls) == ("linf", "l2", "l1")
    built = example["attack"]
    assert isinstance(built, cls) and built.tries == 5 and built.threat.norm == "l2"
    assert registry.settable_params(cls)["tries"] == 10


def test_advex_list_shows_the_example_attack(example):
    out = CliRunner().invoke(main, ["list"])
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if "random-noise" in ln)
    assert "black-box" in line and "also: randomnoise, noise" in line
    assert "tries=10" in out.output

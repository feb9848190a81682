"""`advex train` end to end (tiny configuration): writes a loadable zoo model and its card."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from advex import zoo
from advex.cli import main


def test_train_command_writes_a_loadable_model(tmp_path):
    out = tmp_path / "robust"
    args = ["train", "--model", "mlp", "--data", "digits", "--method", "pgd", "--eps", "0.1"]
    args += ["--epochs", "1", "--attack-steps", "2", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert "pgd" in json.dumps(card)  # the recipe names the method
    assert card["arch"] == "mlp"
    model = zoo.load(out)
    with torch.no_grad():
        assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert "model.safetensors" in result.output


def test_train_command_rejects_bad_values(tmp_path):
    result = CliRunner().invoke(
        main, ["train", "--model", "nope", "--out", str(tmp_path / "x"), "--no-progress"]
    )
    assert result.exit_code != 0
    assert "unknown model" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["train", "--eps", "-1", "--out", str(tmp_path / "y")])
    assert result.exit_code != 0

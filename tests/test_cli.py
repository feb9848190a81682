"""The ``advex`` command line, through click's CliRunner (in-process, zoo model cached)."""

from __future__ import annotations

import json
import typing

import click
import matplotlib.image as mpimg
import pytest
import torch
from click.testing import CliRunner

import advex
import advex.attacks
from advex.attacks.base import Attack, make_threat
from advex.cli import available_attacks, build_attack, find_attack, main, parse_params


@pytest.fixture
def runner():
    return CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _usage_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def test_demo_end_to_end(runner, tmp_path, mnist_model):
    out = tmp_path / "demo"
    text = _ok(
        runner.invoke(main, ["demo", "--out", str(out), "--n", "40", "--quick", "--no-progress"])
    )
    for needle in ("clean acc", "robust acc", "success rate", "median norm", "grad/point"):
        assert needle in text
    assert "untargeted: fgsm" in text and "untargeted: pgd-10" in text
    assert "targeted: pgd-10 -> 3" in text and "worst case" in text
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "curve.png",
        "results.json",
        "triptych_fgsm.png",
        "triptych_pgd_10.png",
        "triptych_pgd_10_target_3.png",
    ]
    for name in files:
        if name.endswith(".png"):
            assert (out / name).stat().st_size > 20_000
            assert mpimg.imread(out / name).shape[0] > 300
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["seed"] == 0 and doc["meta"]["advex_version"] == advex.__version__
    assert doc["meta"]["threat"]["eps"] == 0.3
    ut, tg, curve = doc["untargeted"], doc["targeted"], doc["curve"]
    assert ut["n"] == 40 and ut["clean_accuracy"] > 0.9
    # an undefended CNN at ε = 0.3: PGD breaks every digit, FGSM nearly every one
    assert ut["attacks"]["pgd-10"]["robust_accuracy"] == 0.0
    assert ut["attacks"]["fgsm"]["robust_accuracy"] <= 0.1
    assert tg["targeted"] and tg["n_skipped"] > 0 and tg["n"] == 40 - tg["n_skipped"]
    assert tg["success_rate"] > 0.8
    assert curve["eps"] == [0.0, 0.1, 0.2, 0.3]
    pgd = curve["robust_accuracy"]["pgd-10"]
    assert pgd[0] == ut["clean_accuracy"] and pgd == sorted(pgd, reverse=True)
    assert 0.2 < pgd[1] < 0.9  # measured 0.60 at ε = 0.1


def test_attack_command(runner, tmp_path, mnist_model):
    out = tmp_path / "a"
    args = ["attack", "--model", "mnist-smallcnn", "--attack", "pgd", "--eps", "0.3"]
    text = _ok(runner.invoke(main, [*args, "--n", "32", "--out", str(out), "--no-progress"]))
    assert "pgd" in text and "robust acc" in text
    doc = json.loads((out / "results.json").read_text())
    ev = doc["evaluation"]
    assert ev["n"] == 32 and ev["attacks"]["pgd"]["robust_accuracy"] == 0.0
    assert ev["attacks"]["pgd"]["params"]["steps"] == 40
    assert doc["meta"]["threat"]["eps"] == 0.3
    assert (out / "triptych.png").stat().st_size > 20_000
    # --param converted with the constructor's types; targeted with a fixed class
    out2 = tmp_path / "b"
    more = ["--param", "steps=3", "--param", "random_start=false", "--target", "3", "--n", "20"]
    text = _ok(runner.invoke(main, [*args, *more, "--out", str(out2), "--no-progress"]))
    assert "skipped" in text
    ev = json.loads((out2 / "results.json").read_text())["evaluation"]
    assert ev["attacks"]["pgd"]["params"]["steps"] == 3
    assert ev["attacks"]["pgd"]["params"]["random_start"] is False
    assert ev["targeted"] and ev["n_skipped"] >= 1


def test_evaluate_command_with_curve(runner, tmp_path, mnist_model):
    out = tmp_path / "e"
    args = ["evaluate", "--attack", "fgsm", "--attack", "BIM", "--eps", "0.1,0.2"]
    args += ["--param", "bim.steps=3", "--n", "24", "--out", str(out), "--no-progress"]
    text = _ok(runner.invoke(main, args))
    assert "worst case" in text and "eps = 0.2" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["evaluation"]["attack_order"] == ["fgsm", "bim"]
    assert doc["evaluation"]["attacks"]["bim"]["params"]["steps"] == 3
    assert doc["curve"]["eps"] == [0.1, 0.2]
    assert doc["meta"]["threat"] == {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0], "mask": None}
    assert (out / "curve.png").exists() and (out / "triptych.png").exists()


def test_error_messages(runner, tmp_path):
    base = ["attack", "--n", "4", "--out", str(tmp_path), "--no-progress"]
    r = runner.invoke(main, [*base, "--attack", "nosuch", "--eps", "0.1"])
    _usage_error(r, "unknown attack 'nosuch'", "fgsm", "pgd")
    r = runner.invoke(main, [*base, "--attack", "pgd", "--eps", "0.1", "--param", "stepz=3"])
    _usage_error(r, "no parameter 'stepz'", "steps", "step_size")
    r = runner.invoke(main, [*base, "--attack", "pgd", "--eps", "0.1", "--param", "steps=abc"])
    _usage_error(r, "steps=abc", "expected int")
    r = runner.invoke(main, [*base, "--attack", "pgd", "--eps", "0.1", "--param", "eps=3"])
    _usage_error(r, "--eps")
    r = runner.invoke(main, [*base, "--attack", "pgd", "--eps", "0.1", "--param", "steps=0"])
    _usage_error(r, "steps must be >= 1")
    r = runner.invoke(main, [*base, "--attack", "pgd"])
    _usage_error(r, "--eps")
    r = runner.invoke(main, [*base, "--attack", "pgd", "--eps", "-1"])
    _usage_error(r, "-1")
    r = runner.invoke(main, [*base, "--model", "no-such-model", "--attack", "fgsm", "--eps", "1"])
    _usage_error(r, "no-such-model", "mnist-smallcnn")
    r = runner.invoke(main, [*base, "--model", "nomod_xyz:make", "--attack", "fgsm", "--eps", "1"])
    _usage_error(r, "cannot import 'nomod_xyz'")
    r = runner.invoke(main, [*base, "--data", "cifar", "--attack", "fgsm", "--eps", "1"])
    _usage_error(r, "unknown dataset spec", "mnist5k")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(main, [*base, "--data", f"mnist:{empty}", "--attack", "fgsm", "--eps", "1"])
    _usage_error(r, "--data")
    r = runner.invoke(main, ["evaluate", "--attack", "fgsm", "--eps", "0.1,x"])
    _usage_error(r, "0.1,x")


def test_model_from_factory_and_weights(runner, tmp_path, monkeypatch, mnist_model):
    from safetensors.torch import save_file

    (tmp_path / "my_nets.py").write_text(
        "from advex.zoo.arch import smallcnn\n\ndef make():\n    return smallcnn()\n"
    )
    state = {k: v.contiguous() for k, v in mnist_model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    (tmp_path / "w.pkl").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    common = ["attack", "--model", "my_nets:make", "--attack", "fgsm", "--eps", "0.3"]
    common += ["--n", "16", "--no-progress"]
    for weights in ("w.safetensors", "w.pt"):
        out = tmp_path / f"out_{weights}"
        _ok(runner.invoke(main, [*common, "--weights", weights, "--out", str(out)]))
        ev = json.loads((out / "results.json").read_text())["evaluation"]
        assert ev["clean_accuracy"] >= 0.9  # the trained zoo weights were loaded
    _usage_error(runner.invoke(main, [*common, "--weights", "w.pkl"]), ".safetensors")
    wrong = {"0.weight": torch.zeros(3)}
    save_file(wrong, str(tmp_path / "bad.safetensors"))
    r = runner.invoke(main, [*common, "--weights", "bad.safetensors"])
    assert r.exit_code == 1 and "do not match the model" in r.output
    # --normalize wraps the model (the zoo model normalises already: doing it twice hurts)
    out = tmp_path / "norm"
    args = ["attack", "--attack", "fgsm", "--eps", "0.0", "--n", "16", "--no-progress"]
    _ok(runner.invoke(main, [*args, "--normalize", "0.5,0.5", "--out", str(out)]))
    _usage_error(runner.invoke(main, [*args, "--normalize", "0.5", "--out", str(out)]), "MEAN,STD")


def test_help_and_version(runner):
    text = _ok(runner.invoke(main, ["--help"]))
    for cmd in ("demo", "attack", "evaluate", "list"):
        assert cmd in text
    for cmd, needles in {
        "demo": ("--quick", "--n", "--out", "--seed"),
        "attack": ("--model", "--weights", "--data", "--attack", "--eps", "--norm", "--target"),
        "evaluate": ("--attack", "--eps", "--independent", "--param"),
    }.items():
        text = _ok(runner.invoke(main, [cmd, "--help"]))
        for needle in needles:
            assert needle in text, (cmd, needle)
    assert advex.__version__ in _ok(runner.invoke(main, ["--version"]))
    text = _ok(runner.invoke(main, ["list"]))
    assert "random_start=False" in text  # BIM's real default, not PGD's signature default
    assert "mnist-smallcnn" in text and "mnist5k" in text and "trades-cnn" in text


# ---------------------------------------------------------------------------------------------
# attack lookup and --param conversion
# ---------------------------------------------------------------------------------------------


class _Toy(Attack):
    """A minimum-norm toy with parameters of every kind."""

    name = "toy-min"
    minimum_norm = True

    def __init__(
        self,
        norm: str = "linf",
        *,
        steps: int = 3,
        scale: float | None = None,
        flag: bool = False,
        mode: typing.Literal["a", "b"] = "a",
        loss="ce",
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat=None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(make_threat(None, norm, bounds, mask, threat, need_eps=False), seed=seed)
        self.steps, self.scale, self.flag, self.mode, self.loss = steps, scale, flag, mode, loss

    def _attack(self, caller, x, goal, done, clean_logits):
        # move every pixel to the far end of the box: norms of up to 1
        return torch.where(x > 0.5, torch.zeros_like(x), torch.ones_like(x))


def test_parse_params_follows_the_signature():
    got = parse_params(
        _Toy, ["steps=5", "scale=none", "flag=yes", "mode=b", "loss=margin", "scale=0.5"]
    )
    assert got == {"steps": 5, "scale": 0.5, "flag": True, "mode": "b", "loss": "margin"}
    assert type(got["steps"]) is int and type(got["scale"]) is float
    assert parse_params(_Toy, ["scale=None"])["scale"] is None
    with pytest.raises(click.UsageError, match="expected int"):
        parse_params(_Toy, ["steps=1.5"])
    with pytest.raises(click.UsageError, match="KEY=VALUE"):
        parse_params(_Toy, ["steps"])
    with pytest.raises(click.UsageError, match="valid parameters: flag, loss, mode, scale, steps"):
        parse_params(_Toy, ["nope=1"])
    with pytest.raises(click.UsageError, match="not --param"):
        parse_params(_Toy, ["mask=1"])


def test_newly_exported_attacks_are_found(monkeypatch, runner, tmp_path, mnist_model):
    """Attacks exported later by advex.attacks become available by name; a minimum-norm attack
    given --eps is scored at that budget."""
    assert "toy" not in available_attacks()
    monkeypatch.setattr(advex.attacks, "_Toy", _Toy, raising=False)
    monkeypatch.setattr(advex.attacks, "__all__", [*advex.attacks.__all__, "_Toy"])
    assert find_attack("TOY-MIN") is _Toy and find_attack("_toy") is _Toy
    at = build_attack("toy-min", eps=0.5, norm="linf", seed=0)
    assert at.threat.eps == 0.5 and at.attack.minimum_norm
    out = tmp_path / "t"
    args = ["attack", "--attack", "toy-min", "--eps", "0.5", "--n", "8", "--out", str(out)]
    _ok(runner.invoke(main, [*args, "--no-progress"]))
    ev = json.loads((out / "results.json").read_text())["evaluation"]
    # every toy perturbation has L∞ norm ~1 > 0.5: nothing counts at this budget
    assert ev["attacks"]["toy-min"]["n_success"] == 0
    assert ev["robust_accuracy"] == ev["clean_accuracy"]


# ---------------------------------------------------------------------------------------------
# evaluate: preset mode (ensemble, verdict, report, resume) and torch.export models
# ---------------------------------------------------------------------------------------------

_PRESET_ARGS = ["evaluate", "--preset", "quick", "--budget-scale", "0.2", "--eps", "0.1"]
_PRESET_ARGS += ["--n", "20", "--batch-size", "10", "--probe", "10", "--no-progress"]


def test_evaluate_preset_mode_writes_json_and_report_and_resumes(runner, tmp_path, mnist_model):
    out = tmp_path / "run"
    args = [*_PRESET_ARGS, "--out", str(out)]
    text = _ok(runner.invoke(main, args))
    assert "robust accuracy" in text and "apgd-t" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["kind"] == "evaluation" and doc["preset"]["name"] == "quick"
    assert [s["name"] for s in doc["per_attack"]] == ["apgd-ce", "apgd-t"]
    assert doc["verdict"] in ("PASS", "SUSPECT") and len(doc["checks"]) == 7
    assert doc["meta"]["model"] == "mnist-smallcnn" and doc["meta"]["data"]["n"] == 20
    assert doc["clean_accuracy"] > doc["robust_accuracy"] > 0
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (out / "triptych.png").exists()
    # the same command again: everything is on disk, same numbers
    text = _ok(runner.invoke(main, args))
    assert "found 2 finished batch(es)" in text
    again = json.loads((out / "results.json").read_text())
    assert again["per_point"] == doc["per_point"] and again["resumed_batches"] == 2
    # a different run in the same directory is refused, unless --restart
    _usage_error(runner.invoke(main, [*args, "--seed", "1"]), "different run", "--restart")
    _ok(runner.invoke(main, [*args, "--seed", "1", "--restart"]))
    assert json.loads((out / "results.json").read_text())["seed"] == 1
    # preset-mode misuse
    bad = ["evaluate", "--eps", "0.1,0.2", "--n", "4", "--out", str(tmp_path / "b")]
    _usage_error(runner.invoke(main, bad), "one budget")
    bad = ["evaluate", "--eps", "0.1", "--param", "steps=3", "--n", "4"]
    _usage_error(runner.invoke(main, bad), "--param goes with --attack")


def test_evaluate_torch_export_model(runner, tmp_path, mnist_model):
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        mnist_model, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, tmp_path / "cnn.pt2")
    out = tmp_path / "pt2"
    args = [*_PRESET_ARGS, "--eps", "0.3", "--no-checks", "--out", str(out)]
    _ok(runner.invoke(main, [*args, "--model", str(tmp_path / "cnn.pt2")]))
    doc = json.loads((out / "results.json").read_text())
    assert doc["clean_accuracy"] >= 0.9 and doc["robust_accuracy"] <= 0.05
    missing = [*args, "--model", str(tmp_path / "nope.pt2")]
    _usage_error(runner.invoke(main, missing), "no such .pt2 file")

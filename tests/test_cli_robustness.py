"""What a user meets on odd runs: unwritable or mixed output folders, a corrupt resume state,
the saved adversarials, notes and warnings, the verdict's wording, progress within a batch."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from advex.cli import main
from advex.cli.train import summarize_card
from advex.evaluate import EvaluateOptions, evaluate, robust_accuracy
from advex.evaluate.progress import StageProgress
from advex.evaluate.state import CorruptState, RunState

FACTORY = """
import pathlib

import torch

def make():
    pathlib.Path("factory_called").write_text("yes")  # proves the model was loaded
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m
"""


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """`--model tinynet:make --data digits` (1×8×8 inputs, a random linear model), run from
    ``tmp_path``; the factory leaves ``factory_called`` behind when it runs."""
    (tmp_path / "tinynet.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["--model", "tinynet:make", "--data", "digits", "--no-progress"]


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _fails(result, code, *needles):
    assert result.exit_code == code, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    return result.output


# ----------------------------------------------------------------------------------------------
# --out: writable before any work; one kind of run per folder
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["attack", "--attack", "fgsm", "--eps", "0.1"],
        ["evaluate", "--eps", "0.1", "--preset", "quick"],
        ["evaluate", "--attack", "fgsm", "--eps", "0.1"],
    ],
    ids=["attack", "evaluate-preset", "evaluate-custom"],
)
def test_unwritable_out_fails_before_any_work(runner, tiny, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    t0 = time.perf_counter()
    r = runner.invoke(main, [*command, *tiny, "--n", "10", "--out", str(out)])
    _fails(r, 1, "cannot write to --out", str(out))
    assert not (tmp_path / "factory_called").exists()  # the model was never loaded
    assert time.perf_counter() - t0 < 5


def test_unwritable_out_demo_and_train(runner, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = str(blocker / "out")
    t0 = time.perf_counter()
    _fails(runner.invoke(main, ["demo", "--out", out, "--no-progress"]), 1, "cannot write")
    r = runner.invoke(main, ["train", "--model", "mlp", "--data", "digits", "--out", out])
    _fails(r, 1, "cannot write to --out")
    assert time.perf_counter() - t0 < 5


def test_a_folder_holding_another_run_is_refused_unless_forced(runner, tiny, tmp_path):
    out = tmp_path / "run"
    custom = ["evaluate", "--attack", "fgsm", "--eps", "0.1", *tiny, "--n", "10"]
    _ok(runner.invoke(main, [*custom, "--out", str(out)]))
    _ok(runner.invoke(main, [*custom, "--out", str(out)]))  # the same kind again: fine
    (out / "report.html").write_text("an old report")  # as a preset run would leave
    attack = ["attack", "--attack", "fgsm", "--eps", "0.1", *tiny, "--n", "10"]
    (tmp_path / "factory_called").unlink()
    r = runner.invoke(main, [*attack, "--out", str(out)])
    _fails(r, 1, "`advex evaluate --attack` run", "--force")
    assert not (tmp_path / "factory_called").exists()
    (out / "notes.txt").write_text("the user's own file")
    _ok(runner.invoke(main, [*attack, "--out", str(out), "--force"]))
    doc = json.loads((out / "results.json").read_text())
    assert "attack" in doc and "attacks" not in doc
    assert not (out / "report.html").exists()  # the old run's files are gone...
    assert (out / "notes.txt").exists()  # ...and nothing else
    # a folder with a preset run's state
    preset_dir = tmp_path / "preset"
    (preset_dir / "state").mkdir(parents=True)
    r = runner.invoke(main, [*custom, "--out", str(preset_dir)])
    _fails(r, 1, "`advex evaluate (preset)` run", "--force")


# ----------------------------------------------------------------------------------------------
# a corrupt resume state
# ----------------------------------------------------------------------------------------------


def test_corrupt_state_names_the_file_and_restart(tmp_path):
    fp = {"run": 1}
    state = RunState(tmp_path, fp, restart=False)
    state.save_batch(0, {"y": [1]}, {"x": torch.zeros(4, 3)})
    st = tmp_path / "state" / "batch_00000.safetensors"
    st.write_bytes(st.read_bytes()[:20])
    with pytest.raises(CorruptState, match="batch_00000.safetensors.*restart") as info:
        state.load_batch(0)
    assert isinstance(info.value, ValueError) and info.value.path == st
    js = tmp_path / "state" / "batch_00000.json"
    js.write_text(js.read_text()[:5])
    with pytest.raises(CorruptState, match="batch_00000.json"):
        state.load_batch(0)
    fpath = tmp_path / "state" / "fingerprint.json"
    fpath.write_text('{"run": ')
    with pytest.raises(CorruptState, match="fingerprint.json"):
        RunState(tmp_path, fp, restart=False)
    RunState(tmp_path, fp, restart=True)  # restart discards it


def test_cli_resume_from_corrupt_state_suggests_restart(runner, tiny, tmp_path):
    out = tmp_path / "run"
    args = ["evaluate", "--preset", "quick", "--budget-scale", "0.05", "--eps", "0.1", *tiny]
    args += ["--n", "20", "--batch-size", "10", "--probe", "10", "--out", str(out)]
    text = _ok(runner.invoke(main, args))
    # the verdict says what it judges: the evaluation, not the model
    assert "evaluation: " in text
    verdict = json.loads((out / "results.json").read_text())["verdict"]
    assert verdict in ("PASS", "SUSPECT")
    html = (out / "report.html").read_text(encoding="utf-8")
    word = {"PASS": "trustworthy", "SUSPECT": "suspect"}[verdict]
    assert f"evaluation: {word}" in html and f">{word}</span>" in html
    # truncate the last batch's record: the rerun names it and suggests --restart
    batch = out / "state" / "batch_00001.json"
    batch.write_text(batch.read_text()[:30])
    _fails(runner.invoke(main, args), 2, "batch_00001.json", "--restart")
    _ok(runner.invoke(main, [*args, "--restart"]))


# ----------------------------------------------------------------------------------------------
# what `advex attack` writes and says
# ----------------------------------------------------------------------------------------------


def test_attack_saves_the_adversarial_examples(runner, tiny, tmp_path):
    from safetensors.torch import load_file

    from advex import data as D

    out = tmp_path / "run"
    args = ["attack", "--attack", "pgd", "--eps", "0.2", "--target", "3", *tiny, "--n", "60"]
    text = _ok(runner.invoke(main, [*args, "--out", str(out)]))
    assert "pgd -> 3" in text  # the row says what the target was
    t = load_file(str(out / "adversarial.safetensors"))
    assert set(t) == {"x_adv", "index", "label", "target", "clean_pred", "adv_pred"} | {
        "success",
        "norm",
    }
    ds = D.load("digits", "test").subset(60)
    n = t["x_adv"].shape[0]
    assert n > 0 and t["x_adv"].shape[1:] == ds.x.shape[1:]
    assert all(t[k].shape == (n,) for k in ("index", "label", "target", "adv_pred", "success"))
    assert torch.equal(t["label"], ds.y[t["index"]].long())
    assert torch.equal(t["clean_pred"], t["label"])  # only correctly classified points
    assert (t["target"] == 3).all()
    assert ((t["x_adv"] - ds.x[t["index"]]).abs().amax(dim=(1, 2, 3)) <= 0.2 + 1e-6).all()
    assert torch.equal(t["success"].bool(), t["adv_pred"] == 3)
    ev = json.loads((out / "results.json").read_text())["evaluation"]
    assert ev["attacks"]["pgd"]["n_success"] == int(t["success"].sum())


def test_random_targets_label_and_low_clean_accuracy_warning(runner, tiny, tmp_path):
    args = ["attack", "--attack", "fgsm", "--eps", "0.1", "--targeted", *tiny, "--n", "30"]
    text = _ok(runner.invoke(main, [*args, "--out", str(tmp_path / "r")]))
    assert "fgsm -> random targets" in text
    # a random linear model: about 10% clean accuracy, which deserves a warning
    assert "warning: clean accuracy is only" in text and "--normalize" in text


def test_minimum_norm_attack_without_eps_says_it_had_no_budget(runner, tiny, tmp_path):
    args = ["attack", "--attack", "deepfool", *tiny, "--n", "20", "--out", str(tmp_path / "r")]
    text = _ok(runner.invoke(main, args))
    assert "without a budget" in text and "--eps" in text
    args = [*args[:3], "--eps", "0.1", *args[3:]]
    assert "without a budget" not in _ok(runner.invoke(main, args))


def test_train_summary_is_short():
    card = {
        "name": "mlp-pgd-linf-eps0.3",
        "defense": "adversarial-training",
        "recipe": {"method": "pgd", "lr": 0.001},
        "accuracy": 0.91,
        "robust_accuracy": 0.62,
        "robust_eval": {"steps": 40, "norm": "linf", "eps": 0.3, "n": 1000},
        "epochs_completed": 3,
        "best_epoch": 2,
        "train_time_s": 12.5,
    }
    text = summarize_card(card)
    assert "91.00%" in text and "62.00%" in text and "PGD-40" in text and "12.5 s" in text
    assert "recipe" not in text and len(text.splitlines()) <= 6


# ----------------------------------------------------------------------------------------------
# evaluate(): options, progress within a batch
# ----------------------------------------------------------------------------------------------


def _tiny_model():
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.eval()


def test_evaluate_options_and_keywords_agree():
    from advex.attacks.gradient import FGSM

    model = _tiny_model()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    preset = {"fgsm": FGSM(eps=0.1)}
    a = evaluate(model, (x, y), eps=0.1, preset=preset, batch_size=5, checks=False)
    opts = EvaluateOptions(batch_size=5, checks=False)
    b = evaluate(model, (x, y), eps=0.1, preset=preset, options=opts)
    assert torch.equal(a.broken_by, b.broken_by) and a.robust_accuracy == b.robust_accuracy
    with pytest.raises(TypeError, match="batch_sise"):
        evaluate(model, (x, y), eps=0.1, preset=preset, batch_sise=5)


def test_progress_moves_per_attack_within_a_batch():
    from advex.attacks.gradient import FGSM, PGD

    model = _tiny_model()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    bar = StageProgress(1, 2, leave=False)
    ticks = []
    real_done = bar.done

    def done():
        ticks.append((bar.stage, bar.passes))
        real_done()

    bar.done = done
    try:
        robust_accuracy(model, (x, y), [FGSM(eps=0.01), PGD(eps=0.01, steps=5)], progress=bar)
    finally:
        bar.close()
    # one batch, two ticks: one per attack, each after counting that attack's forward passes
    assert [name for name, _ in ticks] == ["fgsm", "pgd"]
    assert all(passes > 0 for _, passes in ticks) and bar.bar.n == 2


def test_verdict_wording_judges_the_evaluation():
    from advex.report.table import verdict_text

    assert verdict_text("PASS").startswith("evaluation: trustworthy")
    assert verdict_text("SUSPECT").startswith("evaluation: suspect") and "checks" in verdict_text(
        "SUSPECT"
    )
    assert verdict_text("UNCHECKED").startswith("evaluation: unchecked")
    model = _tiny_model()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    from advex.attacks.gradient import FGSM

    ev = evaluate(model, (x, y), eps=0.05, preset=[FGSM(eps=0.05)], checks=False)
    assert ev.verdict == "UNCHECKED"  # the machine value is unchanged
    assert "verdict         evaluation: unchecked" in ev.summary()

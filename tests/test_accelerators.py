"""Accelerator readiness: every attack, the evaluation and the trainer keep tensors on the
caller's device and dtype; mixed precision and ``torch.compile`` for training.

Each test is parametrised over the devices: ``cpu`` always, ``cuda`` and ``mps`` when present
(skipped cleanly otherwise). On the CPU the device check is complemented by a dtype check
(float64 model and inputs stay float64): a tensor made without ``device=``/``dtype=`` is caught
there as a float32 tensor, and on an accelerator as a CPU tensor.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_attack_interface import FACTORIES, NORM_EPS, TARGETED_ONLY, UNTARGETED_ONLY, ConvNet
from torch import nn

from advex.core.result import AttackResult

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")),
    pytest.param("mps", marks=pytest.mark.skipif(not HAS_MPS, reason="no MPS device")),
]


def _tensor_fields(result: AttackResult) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(result).items() if isinstance(v, torch.Tensor)}


def _batch(device, dtype=torch.float32, b=4, c=1, hw=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, hw, hw, generator=g, dtype=torch.float64).to(device, dtype)
    y = torch.randint(0, 5, (b,), generator=g).to(device)
    return x, y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_attack_outputs_stay_on_the_callers_device_and_dtype(name, device):
    factory, norms, _ = FACTORIES[name]
    norm = norms[0]
    # float64 on the CPU (a tensor made without dtype= shows as float32); float32 elsewhere
    dtype = torch.float64 if device == "cpu" else torch.float32
    model = ConvNet(1).to(device, dtype).eval()
    x, y = _batch(device, dtype)
    target = (y + 1) % 5 if name in TARGETED_ONLY else None
    r = factory(norm, NORM_EPS[norm])(model, x, y, target)
    assert r.x_adv.dtype == dtype
    for k, t in _tensor_fields(r).items():
        assert t.device == x.device, f"{name}: result.{k} is on {t.device}, input on {x.device}"
    if name not in UNTARGETED_ONLY and name not in TARGETED_ONLY and device != "cpu":
        # the same attack on the CPU reaches the same verdicts (float rounding aside)
        rc = factory(norm, NORM_EPS[norm])(ConvNet(1).eval(), x.cpu(), y.cpu())
        assert (rc.success == r.success.cpu()).float().mean() >= 0.75


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_runs_on_the_callers_device(device, tiny_model):
    import advex
    from advex.attacks import FGSM, PGD

    model = tiny_model.to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 8, 8, generator=g).to(device)
    y = torch.randint(0, 10, (12,), generator=g).to(device)
    rep = advex.evaluate.robust_accuracy(model, (x, y), [FGSM(eps=0.1), PGD(eps=0.1, steps=3)])
    for res in rep.attacks.values():
        for k, t in _tensor_fields(res).items():
            assert t.device == x.device, f"robust_accuracy: {k} on {t.device}"
    ev = advex.evaluate.evaluate(model, (x, y), eps=0.1, preset="quick", checks=False)
    assert 0.0 <= ev.robust_accuracy <= rep.robust_accuracy + 1e-9
    if device != "cpu":
        cpu = advex.evaluate.robust_accuracy(
            tiny_model.cpu(), (x.cpu(), y.cpu()), [FGSM(eps=0.1), PGD(eps=0.1, steps=3)]
        )
        assert abs(cpu.robust_accuracy - rep.robust_accuracy) <= 1 / 12 + 1e-9
    tiny_model.cpu()


def _tiny_cnn(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 10),
        )


def _digits(n=48):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["pgd", "trades", "mart", "fgsm-rs", "standard", "generator"])
def test_adversarial_training_stays_on_the_device(method, device):
    from advex.defenses import AdversarialTrainer

    model = _tiny_cnn().to(device)
    x, y = _digits()
    kw = {} if method in ("fgsm-rs", "generator") else {"attack_steps": 2}
    res = AdversarialTrainer(
        model,
        method,
        eps=0.0 if method == "standard" else 0.2,
        epochs=1,
        batch_size=16,
        eval_n=16,
        eval_steps=2,
        final_eval_steps=2,
        progress=False,
        **kw,
    ).fit((x, y), (x[:16], y[:16]))
    assert res.model is model
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert res.clean_accuracy is not None


class _RecordingLoss:
    """Cross-entropy that records the dtype of the logits it saw (autocast on or off)."""

    def __init__(self):
        self.dtypes = set()

    def __call__(self, model, xb, yb, gen):
        logits = model(xb)
        self.dtypes.add(logits.dtype)
        return torch.nn.functional.cross_entropy(logits.float(), yb), logits


def _amp_dtype_ok(device: str, amp: str) -> bool:
    if device == "mps" and amp == "bf16":
        return False
    return True


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_the_passes_in_low_precision(amp, device, tmp_path):
    from advex.training import AMP_DTYPES, Trainer

    if not _amp_dtype_ok(device, amp):
        pytest.skip(f"{amp} autocast is not supported on {device}")
    model = _tiny_cnn().to(device)
    x, y = _digits()
    loss = _RecordingLoss()
    run = Trainer(
        model, loss, epochs=2, batch_size=16, amp=amp, out_dir=tmp_path, progress=False
    ).fit((x, y))
    assert loss.dtypes == {AMP_DTYPES[amp]}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights fp32
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert run.log[-1]["train_loss"] < run.log[0]["train_loss"] + 0.5
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert ("grad_scaler" in meta) == (amp == "fp16")  # the scaler's state resumes with the run


def test_amp_and_compile_arguments_are_checked():
    from advex.defenses import AdversarialTrainer
    from advex.training import Trainer

    with pytest.raises(ValueError, match="amp must be"):
        Trainer(_tiny_cnn(), epochs=1, batch_size=4, amp="fp8")
    with pytest.raises(TypeError, match="compile must be"):
        Trainer(_tiny_cnn(), epochs=1, batch_size=4, compile=3)
    at = AdversarialTrainer(_tiny_cnn(), "pgd", eps=0.1, amp="bf16")
    assert at.config()["amp"] == "bf16"
    assert "amp" not in AdversarialTrainer(_tiny_cnn(), "pgd", eps=0.1).config()


@pytest.mark.parametrize(
    "device,backend",
    [
        ("cpu", "eager"),
        pytest.param(
            "cuda", "inductor", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
        ),
    ],
)
def test_compile_trains_the_callers_module(device, backend):
    from advex.defenses import AdversarialTrainer

    x, y = _digits(32)
    weights = []
    for compile_ in (False, backend):
        model = _tiny_cnn().to(device)
        AdversarialTrainer(
            model,
            "pgd",
            eps=0.2,
            epochs=1,
            batch_size=16,
            attack_steps=2,
            eval_n=8,
            eval_steps=1,
            final_eval_steps=1,
            progress=False,
            compile=compile_,
        ).fit((x, y))
        assert type(model) is nn.Sequential  # handed back uncompiled
        weights.append(model.state_dict())
    # the compiled passes compute the same function: the same weights up to float rounding
    # (the eager backend: exactly)
    tol = 0.0 if backend == "eager" else 1e-3
    for k in weights[0]:
        assert float((weights[0][k] - weights[1][k]).abs().max()) <= tol, k


def test_train_command_amp_and_device_options(tmp_path):
    from click.testing import CliRunner

    from advex.cli import main

    out = tmp_path / "amp"
    args = ["train", "--model", "mlp", "--data", "digits", "--method", "pgd", "--eps", "0.1"]
    args += ["--epochs", "1", "--attack-steps", "1", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--amp", "bf16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "card.json").read_text())["recipe"]["amp"] == "bf16"
    assert result.output.count("trained ") == 1
    if not HAS_CUDA:
        result = CliRunner().invoke(main, [*args, "--device", "cuda"])
        assert result.exit_code != 0
        assert "cuda" in result.output and "Traceback" not in result.output
    bad = ["train", "--method", "distill", "--amp", "bf16", "--out", str(tmp_path / "d")]
    result = CliRunner().invoke(main, bad)
    assert result.exit_code != 0 and "amp does not apply" in result.output

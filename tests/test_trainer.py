"""advex.training.Trainer: determinism, exact resume, atomic checkpoints, loss objects."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from advex.training import (
    DerivedSeeds,
    StreamSeed,
    Trainer,
    TrainingInterrupted,
    cross_entropy_loss,
)


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()
    return x, y


def _model(dropout=0.0):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(32, 4),
    )


def _noise(xb, gen):
    return xb + 0.1 * torch.randn(xb.shape, generator=gen)


def _same(a, b):
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(u, v) for u, v in pairs)


def _strip(log):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in log]


@pytest.mark.parametrize("plan", ["derived", "stream"])
def test_same_seed_same_weights(plan):
    x, y = _data()
    models = []
    for seed in (0, 0, 1):
        m = _model(dropout=0.3)
        seeds = DerivedSeeds(seed) if plan == "derived" else StreamSeed(seed)
        if plan == "stream":
            torch.manual_seed(99)  # the stream plan's dropout draws from the global RNG
        Trainer(m, epochs=2, batch_size=32, seeds=seeds, augment=_noise, progress=False).fit((x, y))
        assert not m.training  # handed back in eval mode
        models.append(m)
    assert _same(models[0], models[1]) and not _same(models[0], models[2])


def test_derived_seeds_leave_global_rng_alone():
    x, y = _data()
    model = _model(0.3)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    Trainer(model, epochs=1, batch_size=32, seeds=3, progress=False).fit((x, y))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("plan", ["derived", "stream"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, plan):
    x, y = _data()

    def make(out, resume=False):
        seeds = DerivedSeeds(7) if plan == "derived" else StreamSeed(7)
        return Trainer(
            _model(0.3),
            epochs=4,
            batch_size=32,
            seeds=seeds,
            augment=_noise,
            out_dir=out,
            resume=resume,
            config={"what": "test"},
            optimizer="sgd",
            lr=0.05,
            progress=False,
        )

    torch.manual_seed(1)
    ref = make(tmp_path / "ref")
    r_ref = ref.fit((x, y))

    def boom(trainer, epoch, b, stats):
        if epoch == 2 and b == 1:
            raise TrainingInterrupted("injected")

    torch.manual_seed(1)
    with pytest.raises(TrainingInterrupted):
        make(tmp_path / "run").fit((x, y), on_batch_end=boom)
    ckpt = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert ckpt["epoch"] == 2 and ckpt["config"] == {"what": "test"}
    torch.manual_seed(12345)  # another process: the global RNG is whatever it is
    seen = []
    again = make(tmp_path / "run", resume=True)
    r2 = again.fit((x, y), on_batch_end=lambda t, e, b, s: seen.append(e))
    assert min(seen) == 2
    assert _same(ref.model, again.model)
    assert _strip(r_ref.log) == _strip(r2.log)
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert len(log["log"]) == 4


def test_resume_refuses_other_config(tmp_path):
    x, y = _data(32)
    Trainer(
        _model(), epochs=1, batch_size=32, out_dir=tmp_path, config={"a": 1}, progress=False
    ).fit((x, y))
    t = Trainer(
        _model(),
        epochs=2,
        batch_size=32,
        out_dir=tmp_path,
        resume=True,
        config={"a": 2},
        progress=False,
    )
    with pytest.raises(ValueError, match="a: checkpoint 1 vs now 2"):
        t.fit((x, y))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while the checkpoint is written leaves the previous epoch's checkpoint whole
    and no temporary files behind."""
    import safetensors.torch

    x, y = _data(64)
    calls = {"n": 0}
    real = safetensors.torch.save_file

    def flaky(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        Trainer(_model(), epochs=3, batch_size=32, out_dir=tmp_path, progress=False).fit((x, y))
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 1
    loaded = safetensors.torch.load_file(str(tmp_path / "checkpoint.safetensors"))
    assert any(k.startswith("model.") for k in loaded)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_loss_object_set_step_augment_and_validate():
    x, y = _data(64)
    seen_gens = []

    class Loss:
        def __init__(self):
            self.steps = []

        def set_step(self, step, steps_per_epoch):
            self.steps.append(step)
            return {"scale": step / 10}

        def __call__(self, model, xb, yb, gen):
            seen_gens.append(gen)
            return F.cross_entropy(model(xb), yb), None  # no logits: no accuracy

    def validate(trainer, epoch, entry):
        entry["checked"] = epoch
        if epoch == 1:
            trainer.stop("enough")

    loss = Loss()
    augmented = []
    run = Trainer(
        _model(),
        loss,
        epochs=5,
        batch_size=32,
        augment=lambda xb, g: augmented.append(g) or xb,
        validate=validate,
        schedule=lambda step, total: 0.01 * (1 - step / total),
        progress=False,
    ).fit((x, y))
    assert loss.steps == [0, 1, 2, 3]
    assert run.stopped == "enough" and len(run.log) == 2
    e = run.log[-1]
    assert e["scale_end"] == 0.3 and e["checked"] == 1 and "train_acc" not in e
    assert e["lr_end"] == pytest.approx(0.01 * (1 - 3 / 10))
    assert augmented == seen_gens[: len(augmented)] and len(augmented) == 4


def test_soft_targets_cross_entropy_default_and_channels_last():
    x, y = _data(64)
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 4)
    )
    run = Trainer(conv, epochs=1, batch_size=32, channels_last=True, progress=False).fit((x, y))
    assert all(p.is_contiguous() for p in conv.parameters())
    assert 0 <= run.log[0]["train_acc"] <= 1
    soft = F.one_hot(y, 4).float()

    def soft_ce(model, xb, q, gen):
        logits = model(xb)
        return -(q * logits.log_softmax(1)).sum(1).mean(), logits

    run = Trainer(_model(), soft_ce, epochs=1, batch_size=32, progress=False).fit((x, soft))
    assert "train_acc" not in run.log[0]
    assert cross_entropy_loss(_model(), x[:4], y[:4], None)[1].shape == (4, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="epochs"):
        Trainer(_model(), epochs=0, batch_size=1)
    with pytest.raises(ValueError, match="unknown schedule"):
        Trainer(_model(), epochs=1, batch_size=1, schedule="warm")
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        Trainer(_model(), epochs=1, batch_size=1, resume=True)
    with pytest.raises(TypeError, match="loss must be"):
        Trainer(_model(), 3, epochs=1, batch_size=1)
    with pytest.raises(FloatingPointError, match="loss became"):
        Trainer(
            _model(),
            lambda m, xb, yb, g: (torch.tensor(float("nan"), requires_grad=True), None),
            epochs=1,
            batch_size=32,
            progress=False,
        ).fit(_data(32))

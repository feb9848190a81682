"""evaluate(amp=...): the first stage under bf16 autocast on the CPU, every break it claims
re-checked in fp32 (advex.evaluate.amp). A model whose bf16 logits tie where fp32 ones do not
shows a reversal caught and counted; every adversarial counted is an fp32 one inside the
threat; amp=None changes nothing; bad uses fail clearly; a 2-rank run equals one process."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from advex.evaluate import PRESETS, evaluate
from advex.evaluate.amp import LowPrecisionStage, resolve_amp
from advex.evaluate.state import FingerprintMismatch
from advex.threats import ThreatModel

D = 16
EPS = 0.1
CHEAP = PRESETS["quick"].scaled(0.1)  # APGD-CE 5 steps, APGD-T 1 target x 5 steps


class TieNet(nn.Module):
    """Four logits of a 16-pixel input: ``z0 = mean(x)``, ``z1 = 1.001 · mean(x)`` (in
    bfloat16 the weight 1.001/16 rounds to 1/16: ``z1 == z0`` exactly, and argmax picks class
    0), ``z2 = 4 x_0 − 1.5``, ``z3 = −5`` (APGD-T's targeted DLR loss needs 4 classes).
    Points of class 1 (``x_0 = 0``) are robust in fp32 (``z1 − z0 = 0.001 · mean(x) > 0``
    everywhere in [0, 1]; ``z2 ≤ −1.1``) but "misclassified" in bf16; points of class 2 with
    ``x_0 = 0.55`` break for real."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, 4)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0] = 1.0 / D
            self.fc.weight[1] = 1.001 / D
            self.fc.weight[2, 0] = 4.0
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, -1.5, -5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def tie_data(n_tie: int = 6, n_real: int = 6):
    x = torch.full((n_tie + n_real, 1, 4, 4), 0.5)
    x[:n_tie, 0, 0, 0] = 0.0
    x[n_tie:, 0, 0, 0] = 0.55
    y = torch.tensor([1] * n_tie + [2] * n_real)
    return x, y


def small_cnn(n: int = 16):
    g = torch.Generator().manual_seed(7)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    return net.eval(), x, y


def test_model_ties_in_bf16_only():
    net, (x, y) = TieNet().eval(), tie_data()
    with torch.no_grad():
        fp32 = net(x).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).argmax(1)
    assert torch.equal(fp32, y)  # every point correct in fp32
    assert (low[:6] == 0).all()  # the tie points are "wrong" in bf16


@pytest.fixture(scope="module")
def tie_runs():
    net, (x, y) = TieNet().eval(), tie_data()
    kw = dict(eps=EPS, preset=CHEAP, checks=False, keep_examples=len(y), batch_size=4)
    return net, x, y, evaluate(net, (x, y), **kw), evaluate(net, (x, y), amp="bf16", **kw)


def test_bf16_reversal_caught_and_counted(tie_runs):
    net, x, y, fp32, low = tie_runs
    first = low.per_attack[0]
    assert first.amp == "bf16" and low.per_attack[1].amp is None
    # all 12 points claimed broken by the bf16 stage; the 6 ties refused by fp32
    assert first.amp_rechecks == 12 and first.amp_reversed == 6
    assert low.amp == {
        "dtype": "bf16",
        "device_type": "cpu",
        "stages": [first.name],
        "rechecks": 12,
        "reversed": 6,
        "verified_in": "fp32",
    }
    # the reversed points went on to APGD-T (fp32), which could not break them
    assert low.per_attack[1].n_attacked == 6
    assert low.robust_accuracy == fp32.robust_accuracy == 0.5
    assert low.clean_accuracy == 1.0
    assert low.broken_by[:6].tolist() == [-1] * 6 and (low.broken_by[6:] == 0).all()
    doc = low.to_dict()
    assert doc["amp"]["reversed"] == 6 and doc["per_attack"][0]["amp_reversed"] == 6
    assert "amp" not in doc["per_attack"][1]
    assert "6 reversed" in low.summary()
    json.dumps(doc)


def test_reported_adversarials_hold_in_fp32(tie_runs):
    net, x, y, _, low = tie_runs
    ex = low.examples
    thr = ThreatModel(norm="linf", eps=EPS)
    broken = ex.success
    assert int(broken.sum()) == int((low.broken_by >= 0).sum()) == 6
    with torch.no_grad():
        pred = net(ex.x_adv[broken]).argmax(1)
    assert (pred != ex.y[broken]).all()
    assert thr.contains(ex.x_adv[broken], ex.x[broken]).all()
    assert torch.equal(ex.adv_pred[broken], pred)


def test_every_success_of_a_low_precision_stage_is_fp32_on_a_cnn():
    """The wrapper on its own, every point's result kept: each success re-predicts in fp32."""
    from advex.attacks import APGD

    net, x, y = small_cnn(24)
    stage = LowPrecisionStage(APGD(eps=0.3, steps=10, seed=0), resolve_amp("bf16", "cpu"))
    res = stage(net, x, y)
    ok = res.success
    assert stage.rechecks >= int(ok.sum()) > 0
    with torch.no_grad():
        pred = net(res.x_adv).argmax(1)
    assert (pred[ok] != y[ok]).all()
    assert torch.equal(res.adv_pred[ok], pred[ok])
    assert stage.threat.contains(res.x_adv, x).all()
    assert torch.allclose(res.norms, stage.threat.distance(res.x_adv, x))


def test_amp_none_changes_nothing(tmp_path):
    net, x, y = small_cnn(8)
    kw = dict(eps=0.05, preset=CHEAP, checks=False, keep_examples=2, batch_size=4)
    a = evaluate(net, (x, y), out_dir=tmp_path / "a", **kw)
    b = evaluate(net, (x, y), amp=None, out_dir=tmp_path / "b", **kw)
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("wall_time_s"), d.pop("checks_time_s")
        for s in d["per_attack"]:
            s.pop("time_s")
    assert da == db and "amp" not in da and a.amp is None
    assert all("amp" not in s for s in da["per_attack"])
    fp = json.loads((tmp_path / "b" / "state" / "fingerprint.json").read_text())
    assert "amp" not in fp  # an fp32 run's fingerprint is what it was before amp existed


def test_bad_use(tmp_path):
    net, x, y = small_cnn(8)
    kw = dict(eps=0.05, preset=CHEAP, checks=False, keep_examples=0, batch_size=4)
    for bad in ("fp8", "int8", "float64", 16):
        with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
            evaluate(net, (x, y), amp=bad, **kw)
    evaluate(net, (x, y), amp="bf16", out_dir=tmp_path, **kw)
    fp = json.loads((tmp_path / "state" / "fingerprint.json").read_text())
    assert fp["amp"] == "bf16"
    for other in (None, "fp16"):
        with pytest.raises(FingerprintMismatch, match=r"differs in: amp"):
            evaluate(net, (x, y), amp=other, out_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match="torch has no autocast for device type 'meta'"):
        resolve_amp("bf16", "meta")
    with pytest.raises(TypeError, match="AmpSpec"):
        LowPrecisionStage(object(), "bf16")


def test_cli_amp_flag_refuses_custom_mode():
    from click.testing import CliRunner

    from advex.cli import main

    got = CliRunner().invoke(main, ["evaluate", "--attack", "fgsm", "--amp", "bf16"])
    assert got.exit_code == 2 and "--amp goes with the preset ensemble" in got.output
    got = CliRunner().invoke(main, ["evaluate", "--amp", "fp8"])
    assert got.exit_code == 2 and "fp8" in got.output


def test_sharded_two_ranks_equal_one_process_with_amp(tmp_path):
    from test_distributed_eval import WORKER, _load, _ranks, _strip

    sys.path.insert(0, str(WORKER.parent))
    try:
        import eval_worker
    finally:
        sys.path.pop(0)
    args = ["--n", "12", "--batch", "4", "--amp", "bf16"]
    threads = torch.get_num_threads()
    try:
        eval_worker.main([str(tmp_path / "one"), *args])
    finally:
        torch.set_num_threads(threads)
    rcs, outs = _ranks(2, str(tmp_path / "two"), *args)
    assert rcs == [0, 0], outs
    one, two = _load(tmp_path / "one" / "results.json"), _load(tmp_path / "two" / "results.json")
    assert two["distributed"]["world_size"] == 2 and two["distributed"]["rebalance"]
    assert one["amp"]["dtype"] == "bf16" and one["amp"]["rechecks"] > 0
    assert _strip(two) == _strip(one)  # per point, counts, rechecks and reversals

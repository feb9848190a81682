"""Data-parallel adversarial training on 2 CPU processes (gloo over 127.0.0.1).

One spawn of two ranks runs every two-process scenario (starting processes costs more than
the training): PGD-AT on 256 mnist5k digits with a tiny MLP, the global batch of 64 split
32 + 32. The parent runs the one-process references.

Tolerance: the two-process gradient is the sum of two half-batch gradients, so it differs from
the one-process gradient by float rounding (~1e-7 relative); after 8 Adam steps with PGD's
sign steps the weights differ by < 1e-5 (measured: 7.5e-9), while the 8 steps move them by
3e-3 and another initialisation is ~1e-1 away.
"""

from __future__ import annotations

import json
import shutil
import socket
import traceback

import pytest
import torch
from benchscripts import load_benchmark
from torch import nn

from advex.training import TrainingInterrupted

TOL = 1e-5
EPOCHS = 2
N_TRAIN, N_VAL = 256, 64


def _data():
    import advex

    x, y = advex.data.mnist5k("train").tensors()
    xv, yv = advex.data.mnist5k("test").tensors()
    return (x[:N_TRAIN], y[:N_TRAIN]), (xv[:N_VAL], yv[:N_VAL])


def _model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


OTHER_METHODS = ("trades", "mart", "fgsm-rs")


def _trainer(model, out, *, resume=False, eps=0.3, distributed=None, method="pgd", one_step=False):
    from advex.defenses import AdversarialTrainer

    return AdversarialTrainer(
        model,
        method,
        eps=eps,
        epochs=1 if one_step else EPOCHS,
        **({"schedule": "constant", "lr": 1e-2} if one_step else {}),
        batch_size=64,
        attack_steps=None if method == "fgsm-rs" else 3,
        eval_n=N_VAL,
        eval_steps=3,
        final_eval_steps=3,
        out_dir=out,
        resume=resume,
        progress=False,
        distributed=distributed,
    )


def _one_batch(train):
    # one step: TRADES's inner maximisation starts where the KL gradient is ~0, so its sign
    # steps amplify float rounding chaotically over steps (two one-process runs whose initial
    # weights differ by 1e-8 end 8 steps apart by 6e-3); one step compares the computation
    return train[0][:64], train[1][:64]


def _stop_after_first_epoch(trainer, epoch, entry):
    if epoch == 0:
        raise TrainingInterrupted("stopped after epoch 1")


def _stop_mid_second_epoch(trainer, epoch, batch, stats):
    if (epoch, batch) == (1, 1):  # after 6 of the 8 steps
        raise TrainingInterrupted("stopped after 6 steps")


def _save(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _worker(rank: int, port: int, tmp: str, train, val) -> None:
    import os
    from pathlib import Path

    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    tmp = Path(tmp)
    out: dict = {}
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
        )
        # A: an uninterrupted two-process run; rank 1 starts from other weights (rank 0's are
        # copied to it)
        m = _model(seed=rank)
        res = _trainer(m, tmp / "A").fit(train, val)
        if rank == 0:
            _save(m, tmp / "A.safetensors")
        out["A_card"] = res.card
        # B: stopped after 6 steps (mid-epoch 2), then resumed on two processes (from the
        # checkpoint of epoch 1)
        try:
            _trainer(_model(), tmp / "B").fit(train, val, on_batch_end=_stop_mid_second_epoch)
        except TrainingInterrupted:
            pass
        if rank == 0:
            shutil.copytree(tmp / "B", tmp / "B-epoch1")
        dist.barrier()
        m = _model()
        _trainer(m, tmp / "B", resume=True).fit(train, val)
        if rank == 0:
            _save(m, tmp / "B.safetensors")
        # C: resume on two processes a checkpoint written by one process
        m = _model()
        _trainer(m, tmp / "C", resume=True).fit(train, val)
        if rank == 0:
            _save(m, tmp / "C.safetensors")
        # the other methods' random starts and losses, without files
        for method in OTHER_METHODS:
            m = _model()
            _trainer(m, None, method=method, one_step=True).fit(_one_batch(train), val)
            if rank == 0:
                _save(m, tmp / f"{method}.safetensors")
        # D: the ranks disagree on eps
        try:
            _trainer(_model(), tmp / "D", eps=0.3 if rank == 0 else 0.2).fit(train, val)
            out["D"] = "no error"
        except ValueError as exc:
            out["D"] = str(exc)
        dist.destroy_process_group()
    except Exception:  # reported to the parent, which fails the test with it
        out["error"] = traceback.format_exc()
    (tmp / f"rank{rank}.json").write_text(json.dumps(out, default=str))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    train, val = _data()
    # the one-process reference, and a one-process checkpoint after epoch 1 for scenario C
    ref = _model()
    ref_result = _trainer(ref, tmp / "R").fit(train, val)
    try:
        _trainer(_model(), tmp / "C").fit(train, val, on_epoch_end=_stop_after_first_epoch)
    except TrainingInterrupted:
        pass
    other = {}
    for method in OTHER_METHODS:
        m = _model()
        _trainer(m, None, method=method, one_step=True).fit(_one_batch(train), val)
        other[method] = m.state_dict()
    mp.spawn(_worker, args=(_free_port(), str(tmp), train, val), nprocs=2, join=True)
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    for r, o in enumerate(ranks):
        assert "error" not in o, f"rank {r} failed:\n{o['error']}"
    return {
        "tmp": tmp,
        "ref": ref.state_dict(),
        "ref_result": ref_result,
        "ranks": ranks,
        "other": other,
    }


def test_two_processes_match_one_process(runs):
    ref = runs["ref"]
    two = _load(runs["tmp"] / "A.safetensors")
    init = _model().state_dict()
    assert _max_diff(two, ref) < TOL
    assert _max_diff(ref, init) > 100 * TOL  # training moved the weights: the test can fail
    other_seed = _model(seed=1).state_dict()
    assert _max_diff(two, other_seed) > 100 * TOL


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_other_methods_match_one_process(runs, method):
    two = _load(runs["tmp"] / f"{method}.safetensors")
    assert _max_diff(two, runs["other"][method]) < TOL
    assert _max_diff(two, _model().state_dict()) > 100 * TOL


def test_same_log_and_card_as_one_process(runs):
    tmp = runs["tmp"]
    log1 = json.loads((tmp / "R" / "log.json").read_text())
    log2 = json.loads((tmp / "A" / "log.json").read_text())
    assert log1["config"] == log2["config"]
    assert len(log1["log"]) == len(log2["log"]) == EPOCHS
    for e1, e2 in zip(log1["log"], log2["log"], strict=True):
        assert e1.keys() == e2.keys()
        assert e1["train_loss"] == pytest.approx(e2["train_loss"], abs=1e-4)
        # accuracies are counts over the same points (the held-out checks split across ranks)
        for k in ("train_acc", "val_clean_acc", "val_robust_acc"):
            assert e1[k] == pytest.approx(e2[k], abs=1.5 / N_VAL), k
    card1 = json.loads((tmp / "R" / "card.json").read_text())
    card2 = json.loads((tmp / "A" / "card.json").read_text())
    assert card2.pop("distributed") == {"world_size": 2}
    assert card1.keys() == card2.keys()
    assert card1["recipe"] == card2["recipe"]
    assert card1["accuracy"] == pytest.approx(card2["accuracy"], abs=1.5 / N_VAL)
    # every rank got the card; only rank 0 wrote files
    assert runs["ranks"][1]["A_card"]["accuracy"] == card2["accuracy"]


def test_resume_two_processes_is_exact(runs):
    tmp = runs["tmp"]
    a = _load(tmp / "A.safetensors")
    b = _load(tmp / "B.safetensors")
    assert _max_diff(a, b) == 0.0  # same world size: bit-identical
    ckpt = json.loads((tmp / "B-epoch1" / "checkpoint.json").read_text())
    assert ckpt["epoch"] == 1


def test_resume_across_world_sizes(runs):
    tmp = runs["tmp"]
    # one-process checkpoint resumed on two processes
    c = _load(tmp / "C.safetensors")
    assert _max_diff(c, runs["ref"]) < TOL
    # two-process checkpoint resumed on one process
    shutil.copytree(tmp / "B-epoch1", tmp / "E")
    m = _model()
    train, val = _data()
    _trainer(m, tmp / "E", resume=True).fit(train, val)
    assert _max_diff(m.state_dict(), runs["ref"]) < TOL


def test_mismatched_arguments_across_ranks(runs):
    for o in runs["ranks"]:
        msg = o["D"]
        assert "different settings or data" in msg
        assert "config.eps (rank 0: 0.3, rank 1: 0.2)" in msg


def test_distributed_true_without_process_group(tmp_path):
    train, _ = _data()
    with pytest.raises(RuntimeError, match="process group"):
        _trainer(_model(), None, distributed=True).fit(train)


def _bench(name: str):
    return load_benchmark(name)


def test_distributed_train_benchmark_quick(tmp_path, capsys):
    # two fresh runs (1 process; torchrun with 2) of a tiny recipe, compared
    out = tmp_path / "report.json"
    assert (
        _bench("distributed_train").main(["--quick", "--out", str(tmp_path), "--json", str(out)])
        == 0
    )
    rep = json.loads(out.read_text())
    assert rep["two_processes"]["world_size"] == 2 and rep["one_process"]["world_size"] == 1
    assert rep["max_weight_difference"] < 1e-4
    assert rep["within_half_point"] is True
    assert "±0.5" in capsys.readouterr().out


def test_gpu_throughput_benchmark_quick(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert _bench("gpu_throughput").main(["--quick", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    text = capsys.readouterr().out
    assert rep["devices"]["cpu"]["fwd_bwd_points_per_s"] > 0
    assert rep["devices"]["cpu"]["pgd40_gradient_passes_per_point"] == 40
    for dev in ("cuda", "mps"):
        assert (dev in rep["devices"]) != (dev in rep["absent"])
        if dev in rep["absent"]:
            assert f"{dev}: absent" in text


@pytest.mark.parametrize("n,world", [(64, 2), (65, 2), (7, 3), (2, 3), (1, 4)])
def test_shard_rows_partition_every_global_batch(n, world):
    from advex.training.ddp import shard_rows

    parts = [shard_rows(n, r, world) for r in range(world)]
    assert torch.equal(torch.cat(parts), torch.arange(n))  # contiguous, in rank order
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_rank_helpers_outside_a_process_group():
    from advex.training import ddp

    assert (ddp.is_distributed(), ddp.rank(), ddp.world_size()) == (False, 0, 1)
    assert ddp.all_gather_object({"a": 1}) == [{"a": 1}]
    assert ddp.broadcast_object(3) == 3
    assert ddp.sum_across_ranks([1, 2.5]) == [1, 2.5]
    ddp.check_same_across_ranks({"eps": 0.3})  # nothing to compare with: no error

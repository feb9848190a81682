"""Sharded evaluation on torch.distributed (gloo over 127.0.0.1): a 2-process run equals the
one-process run point by point, a killed rank is resumed without recomputing finished work,
two "nodes" meet through torchrun's c10d rendezvous, and bad uses fail clearly. The ranks are
separate processes (tests/distributed/eval_worker.py, or the CLI under torchrun)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advex import distributed
from advex.evaluate.ensemble import TIMING_KEYS
from advex.evaluate.sharded import assign_longest_first

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed" / "eval_worker.py"
TIMEOUT = 240


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _ranks(world: int, *args: str, wait: bool = True):
    """``world`` worker processes joined through env:// on 127.0.0.1 (what torchrun sets)."""
    port = _port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            env=_env(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                WORLD_SIZE=world,
                RANK=r,
                LOCAL_RANK=r,
                LOCAL_WORLD_SIZE=world,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    if not wait:
        return procs
    outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    return [p.returncode for p in procs], outs


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The one-process run (same worker, no process group), in this process."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        import eval_worker
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    try:
        eval_worker.main([str(out)])
    finally:
        torch.set_num_threads(threads)
    doc = _load(out / "results.json")
    doc["_dir"] = str(out)
    return doc


def test_helpers_without_a_process_group():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(5) == 5
    distributed.barrier(timeout_s=1.0)
    for n, w in ((10, 3), (7, 7), (1000, 8), (5, 2)):
        parts = [distributed.shard_indices(n, r, w) for r in range(w)]
        assert [i for p in parts for i in p] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.shard_indices(10, 1, 3) == range(4, 7)
    with pytest.raises(ValueError, match="larger than the number of points"):
        distributed.shard_indices(2, 0, 3)
    with pytest.raises(ValueError, match="outside"):
        distributed.shard_indices(5, 2, 2)


def test_longest_first_balances():
    costs = {0: 10.0, 1: 1.0, 2: 1.0, 3: 8.0, 4: 2.0}
    got = assign_longest_first(costs, 2)
    load = [sum(c for k, c in costs.items() if got[k] == r) for r in (0, 1)]
    assert sorted(load) == [11, 11]  # contiguous blocks would give 12 / 10 at best
    assert got == assign_longest_first(dict(reversed(costs.items())), 2)  # deterministic


def _saved(run: Path) -> tuple[int, int]:
    mids = len(list(run.glob("rank*-of-2/state/mid_*.json")))
    finals = len(list(run.glob("rank*-of-2/state/batch_*.json")))
    return mids, finals


@pytest.fixture(scope="module")
def resumed(reference, tmp_path_factory):
    """A 2-rank run whose rank 1 dies after 4 units (its 3 phase-A batches of 6 and its first
    phase-B batch), then the same command again (which also tries the bad uses after it)."""
    out = tmp_path_factory.mktemp("two")
    procs = _ranks(2, str(out), "--exit-after", "1:4", wait=False)
    procs[1].communicate(timeout=TIMEOUT)
    try:  # as torchrun does: the other workers of a failed group are stopped
        procs[0].communicate(timeout=10)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].communicate()
    before = _saved(out / "run")
    rcs, outs = _ranks(2, str(out), "--bad", str(Path(reference["_dir"]) / "run"))
    assert rcs == [0, 0], outs
    return {
        "rc": [p.returncode for p in procs],
        "before": before,
        "doc": _load(out / "results.json"),
        "dir": out,
    }


def test_killed_rank_resumes_only_missing_work(reference, resumed):
    assert resumed["rc"][1] == 17 and resumed["rc"][0] != 0
    mids, finals = resumed["before"]
    assert mids == 6 and finals >= 1  # every phase A done, some batches finished
    doc = resumed["doc"]
    ref = {k: v for k, v in reference.items() if k != "_dir"}
    # per point (and every count, check and example) equal to the one-process run
    assert _strip(doc) == _strip(ref)
    # points survived the first stage: phase B attacked them
    assert ref["per_attack"][1]["n_attacked"] > 0 and ref["per_attack"][3]["n_attacked"] > 0
    info = doc["distributed"]
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["rebalance"]
    assert info["resumed"]["batches_finished"] == finals
    assert info["resumed"]["batches_phase_a"] == 6 - finals
    # only the missing phase-B batches were computed; no phase A at all
    assert sum(r["units_computed"] for r in info["ranks"]) == 6 - finals
    assert all(r["batches_phase_a"] == [] for r in info["ranks"])
    assert doc["resumed_batches"] == finals
    assert all(r["idle_s"] >= 0 and r["wall_s"] > 0 for r in info["ranks"])


def test_one_process_refuses_a_distributed_state(resumed):
    sys.path.insert(0, str(WORKER.parent))
    try:
        import eval_worker
    finally:
        sys.path.pop(0)
    with pytest.raises(ValueError, match="distributed run with world size 2"):
        eval_worker.main([str(resumed["dir"])])


def test_bad_use_is_refused_clearly(resumed):
    for r in (0, 1):
        got = _load(resumed["dir"] / f"bad-{r}.json")
        assert "world size 2 is larger than the number of points 1" in got["world>points"]
        assert "larger than the number of batches 1" in got["world>batches"]
        assert "different arguments" in got["mismatch"] and "ranks [0]" in got["mismatch"]
        assert got["other-world"].startswith("WorldSizeMismatch")
        assert "world size 1" in got["other-world"]


def test_two_nodes_through_c10d_rendezvous_cli(tmp_path):
    """Two torchrun "nodes" (one process each) on 127.0.0.1 meet through the c10d rendezvous;
    `advex evaluate` writes one results.json equal to the one-process API run."""
    from advex.cli.common import ModelData
    from advex.evaluate import PRESETS, evaluate

    port = _port()
    common = ["--model", "mnist-smallcnn", "--data", "mnist5k", "--n-points", "12"]
    common += ["--batch-size", "4"]
    common += ["--eps", "0.1", "--budget-scale", "0.02", "--probe", "8", "--seed", "3"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
            + ["--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_id", "advex-test"]
            + ["--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "advex", "evaluate", *common]
            + ["--out", str(tmp_path / "run")],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=TIMEOUT)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    doc = _load(tmp_path / "run" / "results.json")
    info = doc["distributed"]
    assert info["world_size"] == 2 and info["backend"] == "gloo"
    # both ranks ran phase A on their block and the phase-B re-split covers every batch
    assert [r["batches_phase_a"] for r in info["ranks"]] == [[0, 1], [2]]
    assert sorted(k for r in info["ranks"] for k in r["batches_phase_b"]) == [0, 1, 2]
    source = ModelData("mnist-smallcnn", None, None, "mnist5k", "test", 12)
    ds, model = source.load_data(), source.load_model()
    ev = evaluate(
        model,
        ds,
        eps=0.1,
        preset=PRESETS["standard"].scaled(0.02),
        bounds=ds.bounds,
        seed=3,
        batch_size=4,
        probe=8,
    )
    one = json.loads(json.dumps(ev.to_dict(), default=str))
    assert doc["per_point"] == one["per_point"]
    assert _strip(doc["per_attack"]) == _strip(one["per_attack"])
    assert doc["checks"] == one["checks"]

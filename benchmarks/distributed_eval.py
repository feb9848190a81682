"""Sharded evaluation (torch.distributed, gloo on the CPU) against one process, same points.

Three runs of the ``standard`` evaluation of the TRADES CNN (benchmarks/bench_models.py) on the
first N mnist5k test digits, all with the same seed and batch size:

- ``one``: one process with 2 threads (``torch.set_num_threads(2)``);
- ``two``: 2 ranks with 1 thread each, joined over 127.0.0.1 (what ``torchrun
  --nproc_per_node 2`` sets up), with the phase-B re-split (advex.evaluate.sharded);
- ``two-static``: the same 2 ranks without the re-split (each rank runs whole batches of its
  contiguous block): the load-balancing baseline.

It prints the wall-time ratio two / one (target <= 0.6 for 500 points), CPU seconds of every
run, per-rank busy and idle seconds, and checks that the three runs agree point by point.
The machine's load average is recorded (a shared machine makes wall times noisy; the CPU
seconds are the steadier number). JSON into benchmarks/results/2026-11-29-distributed-eval.json.

    PYTHONPATH=src python3 benchmarks/distributed_eval.py            # 500 points
    PYTHONPATH=src python3 benchmarks/distributed_eval.py --quick    # smoke test (zoo CNN)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "2026-11-29-distributed-eval.json"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(args) -> None:
    """One process of a run (a rank when WORLD_SIZE is set): evaluate, write a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from bench_models import ensure

    from advex import data, distributed
    from advex.evaluate import PRESETS, evaluate

    distributed.init_from_env(timeout_s=3600)
    model = ensure(args.model).eval()
    x, y = data.load("mnist5k", "test").tensors()
    x, y = x[: args.n], y[: args.n]
    t0, c0 = time.perf_counter(), time.process_time()
    ev = evaluate(
        model,
        (x, y),
        eps=args.eps,
        preset=PRESETS["standard"].scaled(args.budget_scale),
        seed=0,
        batch_size=args.batch_size,
        checks=False,
        keep_examples=0,
        rebalance=not args.static,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mine = {"rank": distributed.rank(), "wall_s": wall, "cpu_s": cpu}
    every = distributed.all_gather_object(mine)
    if distributed.rank() == 0:
        doc = {
            "processes": every,
            "robust_accuracy": ev.robust_accuracy,
            "clean_accuracy": ev.clean_accuracy,
            "per_point": {
                "broken_by": ev.broken_by.tolist(),
                "adv_pred": ev.adv_pred.tolist(),
                "norm": [None if v != v else v for v in ev.norms.tolist()],
            },
            "per_attack": [
                {k: s.to_dict()[k] for k in ("name", "n_attacked", "n_broken", "gradients")}
                | {"queries": s.queries, "time_s": s.time_s}
                for s in ev.per_attack
            ],
            "distributed": ev.distributed,
        }
        Path(args.out).write_text(json.dumps(doc))
    if distributed.is_distributed():
        torch.distributed.destroy_process_group()


def launch(world: int, threads: int, args, tag: str, static: bool = False) -> dict:
    out = Path(args.tmp) / f"{tag}.json"
    port = _port()
    cmd = [sys.executable, __file__, "--worker", "--out", str(out), "--threads", str(threads)]
    cmd += ["--n", str(args.n), "--model", args.model, "--eps", str(args.eps)]
    cmd += ["--batch-size", str(args.batch_size), "--budget-scale", str(args.budget_scale)]
    if static:
        cmd.append("--static")
    base = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    before = os.times()
    procs = []
    for r in range(world):
        env = dict(base)
        if world > 1:
            env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                WORLD_SIZE=str(world),
                RANK=str(r),
                LOCAL_RANK=str(r),
                LOCAL_WORLD_SIZE=str(world),
            )
        procs.append(subprocess.Popen(cmd, env=env))
    rcs = [p.wait() for p in procs]
    after = os.times()
    if any(rcs):
        raise SystemExit(f"run {tag} failed: exit codes {rcs}")
    doc = json.loads(out.read_text())
    doc["process_wall_s"] = time.perf_counter() - t0
    doc["process_cpu_s"] = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    doc["eval_wall_s"] = max(p["wall_s"] for p in doc["processes"])
    doc["eval_cpu_s"] = sum(p["cpu_s"] for p in doc["processes"])
    return doc


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 24 points, zoo CNN")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", default="trades")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--json", default=str(RESULTS))
    ap.add_argument(
        "--runs",
        default="one,two,two-static,one-1thread",
        help="which runs (a subset is merged into an existing --json)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--static", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.quick:
        args.n, args.model, args.batch_size, args.budget_scale = 24, "zoo", 6, 0.02
        args.eps = 0.1
    import tempfile

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        plan = {
            "one": lambda: launch(1, 2, args, "one"),
            "two": lambda: launch(2, 1, args, "two"),
            "two-static": lambda: launch(2, 1, args, "two-static", static=True),
            # not in the target; the same work on one thread, to separate the effect of the
            # sharding from that of the 2 intra-op threads
            "one-1thread": lambda: launch(1, 1, args, "one-1thread"),
        }
        wanted = [t.strip() for t in args.runs.split(",") if t.strip()]
        unknown = sorted(set(wanted) - set(plan))
        if unknown:
            raise SystemExit(f"unknown run(s) {unknown}; choose from {', '.join(plan)}")
        runs = {}
        for tag in wanted:
            runs[tag] = plan[tag]()
            runs[tag]["load_average_after"] = os.getloadavg()
    load_after = os.getloadavg()
    old = Path(args.json)
    if set(wanted) != set(plan) and old.exists():  # a subset: merge into the earlier runs
        earlier = json.loads(old.read_text())
        runs = {**earlier.get("runs", {}), **runs}
        load_before = earlier["machine"]["load_average_before"]
    ref = runs.get("one") or next(iter(runs.values()))
    same = {tag: r["per_point"] == ref["per_point"] for tag, r in runs.items()}

    def _ratio(a: str, b: str) -> float | None:
        return runs[a]["eval_wall_s"] / runs[b]["eval_wall_s"] if {a, b} <= set(runs) else None

    ratio, ratio_static = _ratio("two", "one"), _ratio("two-static", "one")
    ratio_1t = _ratio("two", "one-1thread")
    print(f"{args.n} points, {args.model}, standard x{args.budget_scale:g}, eps {args.eps:g}")
    print(f"load average before {load_before}, after {load_after} (2 cores here)")
    for tag, r in runs.items():
        print(
            f"{tag:<11} eval wall {r['eval_wall_s']:8.1f} s  cpu {r['eval_cpu_s']:8.1f} s  "
            f"process wall {r['process_wall_s']:8.1f} s  robust {r['robust_accuracy']:.3f}"
        )
        for rk in (r["distributed"] or {}).get("ranks", []):
            print(
                f"    rank {rk['rank']}: busy {rk['busy_s']:7.1f} s  idle {rk['idle_s']:7.1f} s  "
                f"phase A {rk['batches_phase_a']}  phase B {rk['batches_phase_b']}"
            )
    print(f"wall ratio two / one = {ratio} (target <= 0.6); two-static / one = {ratio_static}")
    print(f"wall ratio two / one-1thread = {ratio_1t}")
    print(f"per point equal to one process: {same}")
    doc = {
        "benchmark": "distributed_eval",
        "command": "python benchmarks/distributed_eval.py " + " ".join(sys.argv[1:]),
        "n": args.n,
        "model": args.model,
        "eps": args.eps,
        "preset": "standard",
        "budget_scale": args.budget_scale,
        "batch_size": args.batch_size,
        "checks": False,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "shared": "yes: 7 engineers on the same 2 cores; wall times are noisy",
        },
        "wall_ratio_two_over_one": ratio,
        "wall_ratio_static_over_one": ratio_static,
        "wall_ratio_two_over_one_1thread": ratio_1t,
        "per_point_equal_to_one": same,
        "runs": runs,
    }
    if not args.quick or args.json != str(RESULTS):
        from advex._io import write_json

        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()

"""Evaluation under autocast: the ``standard`` evaluation in fp32 against the same run with its
first stage (APGD-CE) under bf16 (and fp16) autocast, every claimed break re-checked in fp32
(advex.evaluate.amp). Same model, points, seed and batch size; one process.

Per run (after a warm-up evaluation of 4 points in every precision): wall and CPU seconds of
the evaluation, the first stage's own seconds, robust and clean accuracy, the breaks re-checked
and reversed, and per point whether the verdict (broken or not) equals the fp32 run's. Measured
on every device present: CPU always, CUDA when there (the GPU rows; the output says when it is
absent).

No peer is run: none of AutoAttack, ART, foolbox or torchattacks has a low-precision evaluation
mode to compare with; the comparison is advex fp32 vs advex bf16 on the same work.

    PYTHONPATH=src python benchmarks/eval_amp.py                      # zoo CNN, 200 points
    PYTHONPATH=src python benchmarks/eval_amp.py --model trades --eps 0.3
    PYTHONPATH=src python benchmarks/eval_amp.py --quick              # smoke test

JSON into benchmarks/results/2026-11-30-eval-amp.json (``--json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "2026-11-30-eval-amp.json"


def one_run(model, x, y, args, amp: str | None, device: str) -> dict:
    from advex.evaluate import PRESETS, evaluate

    if device == "cuda":
        torch.cuda.synchronize()
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
        device=device,
        amp=amp,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "amp": amp,
        "device": device,
        "eval_wall_s": wall,
        "eval_cpu_s": cpu,
        "first_stage_s": ev.per_attack[0].time_s,
        "robust_accuracy": ev.robust_accuracy,
        "clean_accuracy": ev.clean_accuracy,
        "amp_rechecks": (ev.amp or {}).get("rechecks", 0),
        "amp_reversed": (ev.amp or {}).get("reversed", 0),
        "per_attack": [
            {"name": s.name, "n_attacked": s.n_attacked, "n_broken": s.n_broken}
            | {"gradients": s.gradients, "queries": s.queries, "time_s": s.time_s}
            | ({"amp_rechecks": s.amp_rechecks, "amp_reversed": s.amp_reversed} if s.amp else {})
            for s in ev.per_attack
        ],
        "broken_by": ev.broken_by.tolist(),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 16 points, budget x0.02")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default="zoo", help="zoo (mnist-smallcnn) or trades")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--amps", default="fp32,bf16,fp16", help="runs, in this order")
    ap.add_argument("--json", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.batch_size, args.budget_scale = 16, 8, 0.02
    torch.set_num_threads(args.threads)
    from bench_models import ensure

    from advex import data

    model = ensure(args.model).eval()
    x, y = data.load("mnist5k", "test").tensors()
    x, y = x[: args.n], y[: args.n]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    absent = (
        {}
        if torch.cuda.is_available()
        else {"cuda": "torch.cuda.is_available() is False (no CUDA device or a CPU-only torch)"}
    )
    amps = [a.strip() for a in args.amps.split(",") if a.strip()]
    load_before = os.getloadavg()
    runs: dict[str, dict] = {}
    for dev in devices:
        m = model.to(dev)
        for a in amps:  # warm-up: first-call costs (kernels, allocator) outside the timings
            try:
                one_run(m, x[:4], y[:4], argparse.Namespace(**{**vars(args), "budget_scale": 0.01}),
                        None if a == "fp32" else a, dev)  # fmt: skip
            except ValueError:
                pass
        for a in amps:
            tag = f"{dev}-{a}"
            try:
                runs[tag] = one_run(m, x, y, args, None if a == "fp32" else a, dev)
            except ValueError as err:  # a precision this device cannot autocast: say why
                runs[tag] = {"amp": a, "device": dev, "refused": str(err)}
    load_after = os.getloadavg()
    print(
        f"{args.n} points, {args.model}, standard x{args.budget_scale:g}, eps {args.eps:g}, "
        f"batch {args.batch_size}, {args.threads} thread(s); load average before {load_before}, "
        f"after {load_after}"
    )
    for dev in devices:
        ref = runs.get(f"{dev}-fp32")
        for a in amps:
            r = runs[f"{dev}-{a}"]
            if "refused" in r:
                print(f"{dev}-{a:<5} refused: {r['refused']}")
                continue
            same = None
            if ref is not None and "broken_by" in ref:
                pairs = zip(r["broken_by"], ref["broken_by"], strict=True)
                same = sum((p >= 0) == (q >= 0) for p, q in pairs)
                r["verdict_same_as_fp32"] = same
                r["wall_ratio_to_fp32"] = r["eval_wall_s"] / ref["eval_wall_s"]
                r["first_stage_ratio_to_fp32"] = r["first_stage_s"] / ref["first_stage_s"]
            print(
                f"{dev}-{a:<5} wall {r['eval_wall_s']:8.1f} s  cpu {r['eval_cpu_s']:8.1f} s  "
                f"APGD-CE {r['first_stage_s']:7.1f} s  robust {r['robust_accuracy']:.3f}  "
                f"clean {r['clean_accuracy']:.3f}  rechecked {r['amp_rechecks']:4d}  "
                f"reversed {r['amp_reversed']:3d}"
                + (
                    f"  wall x{r['wall_ratio_to_fp32']:.2f}  APGD-CE "
                    f"x{r['first_stage_ratio_to_fp32']:.2f}  same verdict {same}/{args.n}"
                    if same is not None and a != "fp32"
                    else ""
                )
            )
    for dev, why in absent.items():
        print(f"{dev}: not measured: {why}")
    doc = {
        "benchmark": "eval_amp",
        "command": "python benchmarks/eval_amp.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "n": args.n,
        "model": args.model,
        "eps": args.eps,
        "preset": "standard",
        "budget_scale": args.budget_scale,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "checks": False,
        "torch": torch.__version__,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "shared": "yes: several engineers on the same 2 cores; wall times are noisy",
        },
        "absent": absent,
        "runs": runs,
    }
    if not args.quick or args.json != str(RESULTS):
        from advex._io import write_json

        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()

"""Data-parallel adversarial training: the robust-MNIST recipe on 2 processes vs 1 process.

Runs the recipe of ``benchmarks/train_robust_mnist.py`` (SmallCNN, PGD-AT L∞ ε = 0.3, 5 inner
steps, 4 epochs, Adam lr 2e-3 one-cycle, ε warm-up over 1 epoch, global batch 128, held-out
PGD-10 check on 500 test digits per epoch, best epoch kept) twice, each in fresh processes:

- ``one``: one process with ``--threads`` CPU threads (``python this.py --worker``);
- ``two``: two processes with ``--threads / 2`` threads each, gloo over loopback
  (``python -m torch.distributed.run --standalone --nproc_per_node 2 this.py --worker``), the
  same global batch split 64 + 64.

and compares their cards: clean accuracy (full test set) and PGD-40 robust accuracy (first
1,000 test digits; the trainer's final check), which must agree within ±0.5 point, the largest
weight difference, and the wall times (process start included). JSON to ``--json``.

    PYTHONPATH=src python benchmarks/distributed_train.py \\
        --json benchmarks/results/2026-11-29-distributed-train.json
    PYTHONPATH=src python benchmarks/distributed_train.py --quick        # smoke test

``--max-train N`` / ``--max-test N`` / ``--epochs E`` shrink the run (say so when you quote
the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "src"))


def worker(a) -> int:
    """One rank (or the single process) of the recipe; rank 0 writes OUT/worker.json."""
    import torch

    torch.set_num_threads(a.threads)
    from advex import data as D
    from advex.defenses import AdversarialTrainer
    from advex.defenses.spec import _resolve_model
    from advex.training import ddp

    device = ddp.local_device(a.device)
    started = ddp.init_from_env(device, backend=a.backend)
    try:
        train, test = D.load(a.data, "train"), D.load(a.data, "test")
        if a.max_train:
            train = train.subset(a.max_train)
        if a.max_test:
            test = test.subset(a.max_test)
        model, arch, arch_kwargs = _resolve_model(a.model, a.seed)
        model = model.to(device)
        t0 = time.perf_counter()
        result = AdversarialTrainer(
            model,
            "pgd",
            a.eps,
            epochs=a.epochs,
            lr=a.lr,
            batch_size=a.batch_size,
            attack_steps=a.attack_steps,
            eps_warmup_epochs=a.eps_warmup_epochs,
            eval_n=a.eval_n,
            eval_steps=a.eval_steps,
            final_eval_steps=a.final_eval_steps,
            seed=a.seed,
            out_dir=a.out,
            arch=arch,
            arch_kwargs=arch_kwargs,
            progress=False,
        ).fit(train, test, card_extra={"data": {"spec": a.data, "n_train": len(train)}})
        train_s = time.perf_counter() - t0
        if ddp.rank() == 0:
            doc = {
                "world_size": ddp.world_size(),
                "device": str(device),
                "backend": None if not started else dist_backend(),
                "threads_per_rank": torch.get_num_threads(),
                "train_and_eval_s": round(train_s, 1),
                "clean_accuracy": result.clean_accuracy,
                "robust_accuracy": result.robust_accuracy,
                "best_epoch": result.best_epoch,
                "log": result.log,
            }
            Path(a.out, "worker.json").write_text(json.dumps(doc, indent=2) + "\n")
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def dist_backend() -> str:
    import torch.distributed as dist

    return dist.get_backend()


def _recipe_args(a, out: Path, threads: int) -> list[str]:
    return [
        str(HERE), "--worker", "--out", str(out), "--threads", str(threads),
        "--device", a.device, *(["--backend", a.backend] if a.backend else []),
        "--data", a.data, "--model", a.model, "--eps", str(a.eps), "--epochs", str(a.epochs),
        "--lr", str(a.lr), "--batch-size", str(a.batch_size),
        "--attack-steps", str(a.attack_steps), "--eps-warmup-epochs", str(a.eps_warmup_epochs),
        "--eval-n", str(a.eval_n), "--eval-steps", str(a.eval_steps),
        "--final-eval-steps", str(a.final_eval_steps), "--seed", str(a.seed),
        *(["--max-train", str(a.max_train)] if a.max_train else []),
        *(["--max-test", str(a.max_test)] if a.max_test else []),
    ]  # fmt: skip


def _run(cmd: list[str], threads: int) -> float:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    src = str(HERE.parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return wall


def sensitivity(json_path: str | None) -> int:
    """How much float rounding each method amplifies: two one-process runs whose initial
    weights differ by 1e-8 (8 steps, 256 mnist5k digits, the MLP of the tests), the largest
    weight difference at the end. This is the scale below which a data-parallel run (same
    computation, gradients summed in another order) cannot be expected to match."""
    import torch
    from torch import nn

    from advex import data as D
    from advex.defenses import AdversarialTrainer

    x, y = D.mnist5k("train").tensors()
    x, y = x[:256], y[:256]
    rows = {}
    for method in ("pgd", "trades", "mart", "fgsm-rs"):
        ws = []
        for bump in (0.0, 1e-8):
            torch.manual_seed(0)
            m = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(bump)
            kw = {} if method == "fgsm-rs" else {"attack_steps": 3}
            AdversarialTrainer(
                m, method, eps=0.3, epochs=2, batch_size=64, progress=False, **kw
            ).fit((x, y))
            ws.append(m.state_dict())
        rows[method] = max(float((ws[0][k] - ws[1][k]).abs().max()) for k in ws[0])
        print(f"{method:8s} max |Δw| after 8 steps from a 1e-8 bump: {rows[method]:.2e}")
    if json_path:
        Path(json_path).write_text(json.dumps({"bump": 1e-8, "steps": 8, **rows}, indent=2))
    return 0


def _weights(out: Path):
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default="mnist:/work/shared/datasets/mnist")
    p.add_argument("--model", default="mnist-smallcnn")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch")
    p.add_argument("--attack-steps", type=int, default=5)
    p.add_argument("--eps-warmup-epochs", type=float, default=1.0)
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--eval-steps", type=int, default=10)
    p.add_argument("--final-eval-steps", type=int, default=40)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the 1-process run")
    p.add_argument("--out", default="runs/distributed-train")
    p.add_argument("--device", default="cpu", help="cpu | cuda (every rank on cuda:LOCAL_RANK)")
    p.add_argument(
        "--backend", default=None, help="gloo | nccl (default: nccl on CUDA, gloo on the CPU)"
    )
    p.add_argument(
        "--sensitivity",
        action="store_true",
        help="only measure how much each method amplifies a 1e-8 change of the weights",
    )
    p.add_argument("--json", default=None, help="write the comparison here")
    p.add_argument(
        "--quick", action="store_true", help="mnist5k: 256 train, 128 test digits, 1 epoch (smoke)"
    )
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    if a.sensitivity:
        return sensitivity(a.json)
    if a.quick:
        a.data, a.max_train, a.max_test, a.epochs = "mnist5k", 256, 128, 1
        a.attack_steps = 2
        a.eval_n, a.eval_steps, a.final_eval_steps, a.eps_warmup_epochs = 64, 2, 2, 0.0
    out = Path(a.out)
    per_rank = max(1, a.threads // 2)
    one_out, two_out = out / "one", out / "two"
    for d in (one_out, two_out):
        for f in ("checkpoint.json", "checkpoint.safetensors"):
            (d / f).unlink(missing_ok=True)  # a fresh run, never a resumed one
    wall_one = _run([sys.executable, *_recipe_args(a, one_out, a.threads)], a.threads)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    wall_two = _run(
        [*torchrun, "--nproc_per_node", "2", *_recipe_args(a, two_out, per_rank)], per_rank
    )
    one = json.loads((one_out / "worker.json").read_text())
    two = json.loads((two_out / "worker.json").read_text())
    w1, w2 = _weights(one_out), _weights(two_out)
    max_diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    d_clean = 100 * (two["clean_accuracy"] - one["clean_accuracy"])
    d_robust = 100 * (two["robust_accuracy"] - one["robust_accuracy"])
    report = {
        "command": " ".join(["python", *sys.argv]),
        "recipe": {
            k: getattr(a, k)
            for k in (
                "data",
                "model",
                "eps",
                "epochs",
                "lr",
                "batch_size",
                "attack_steps",
                "eps_warmup_epochs",
                "eval_n",
                "eval_steps",
                "final_eval_steps",
                "max_train",
                "max_test",
                "seed",
            )
        },  # fmt: skip
        "one_process": {"threads": a.threads, "wall_s": round(wall_one, 1), **one},
        "two_processes": {"threads_per_rank": per_rank, "wall_s": round(wall_two, 1), **two},
        "clean_delta_points": round(d_clean, 2),
        "robust_delta_points": round(d_robust, 2),
        "within_half_point": abs(d_clean) <= 0.5 and abs(d_robust) <= 0.5,
        "max_weight_difference": max_diff,
        "wall_ratio_two_over_one": round(wall_two / wall_one, 3),
    }
    for r in ("one_process", "two_processes"):
        report[r].pop("log", None)
    print(f"{'':14s} {'clean':>8s} {'PGD-40':>8s} {'wall s':>8s} {'train+eval s':>13s}")
    for name, r in (("1 process", report["one_process"]), ("2 processes", report["two_processes"])):
        print(
            f"{name:14s} {100 * r['clean_accuracy']:7.2f}% {100 * r['robust_accuracy']:7.2f}% "
            f"{r['wall_s']:8.1f} {r['train_and_eval_s']:13.1f}"
        )
    print(
        f"delta clean {d_clean:+.2f} pt, robust {d_robust:+.2f} pt "
        f"({'within' if report['within_half_point'] else 'OUTSIDE'} ±0.5); "
        f"max |Δw| {max_diff:.2e}; wall 2/1 = {report['wall_ratio_two_over_one']}"
    )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

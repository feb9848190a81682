"""AdvGAN on MNIST against the zoo CNN (L∞, ε = 0.3): training time, untargeted success on test
digits, and throughput (images/s) next to advex PGD-40 on the same model and batch, in one run.

    OMP_NUM_THREADS=1 python benchmarks/advgan.py [--epochs 15] [--batch-size 64] [--alpha 1.0]
        [--out benchmarks/results/advgan.json]

Training data: ``mnist5k`` train (4,000 digits); test: ``mnist5k`` test (1,000 digits). The
throughput rows time, on the same 1,000 test digits and the same model:

- ``advgan.generate``: one generator forward per image, no query of the target;
- ``advgan attack()``: the full attack (clean pass + generator + re-prediction);
- ``pgd-40`` (advex default, fooled points stop early) and ``pgd-40 no early stop`` (all 40
  steps for every point, the textbook cost).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from advex import data, zoo
from advex._io import write_json
from advex.attacks import PGD, AdvGAN


def _timed(fn, repeats: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=1.0, help="weight of the GAN loss")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = zoo.load("mnist-smallcnn", progress=False)
    x_train, y_train = data.mnist5k("train").tensors()
    x, y = data.mnist5k("test").tensors()

    advgan = AdvGAN(
        args.eps,
        "linf",
        epochs=args.epochs,
        batch_size=args.batch_size,
        width=args.width,
        alpha=args.alpha,
        seed=0,
    )
    _, fit_s = _timed(lambda: advgan.fit(model, (x_train, y_train)))
    rows: dict[str, dict] = {}

    res, t = _timed(lambda: advgan(model, x, y), repeats=3)
    rows["advgan attack()"] = {"success": float(res.success.float().mean()), "seconds": t}
    _, t = _timed(lambda: advgan.generate(x), repeats=3)
    rows["advgan.generate"] = {"success": rows["advgan attack()"]["success"], "seconds": t}

    g = torch.Generator().manual_seed(0)
    noise = (x + args.eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
        noise_success = float((model(noise).argmax(1) != y).float().mean())

    for label, early in (("pgd-40", True), ("pgd-40 no early stop", False)):
        pgd = PGD(args.eps, "linf", steps=40, early_stop=early, seed=0)
        res, t = _timed(lambda pgd=pgd: pgd(model, x, y))
        rows[label] = {"success": float(res.success.float().mean()), "seconds": t}

    n = len(x)
    for r in rows.values():
        r["images_per_s"] = n / r["seconds"]
    summary = {
        "eps": args.eps,
        "norm": "linf",
        "n_test": n,
        "clean_accuracy": float((clean_pred == y).float().mean()),
        "uniform_noise_success": noise_success,
        "fit_seconds": fit_s,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "width": args.width,
        "alpha": args.alpha,
        "threads": args.threads,
        "history": advgan.history_,
        "rows": rows,
        "ratios": {
            "generate vs pgd-40": rows["advgan.generate"]["images_per_s"]
            / rows["pgd-40"]["images_per_s"],
            "generate vs pgd-40 no early stop": rows["advgan.generate"]["images_per_s"]
            / rows["pgd-40 no early stop"]["images_per_s"],
            "attack() vs pgd-40": rows["advgan attack()"]["images_per_s"]
            / rows["pgd-40"]["images_per_s"],
            "attack() vs pgd-40 no early stop": rows["advgan attack()"]["images_per_s"]
            / rows["pgd-40 no early stop"]["images_per_s"],
        },
    }
    print(f"fit: {fit_s:.0f} s ({args.epochs} epochs on {len(x_train)} digits)")
    print(f"clean accuracy {summary['clean_accuracy']:.3f}; noise success {noise_success:.3f}")
    print(f"{'method':24s} {'success':>8s} {'images/s':>10s}")
    for name, r in rows.items():
        print(f"{name:24s} {r['success']:8.3f} {r['images_per_s']:10.1f}")
    for name, v in summary["ratios"].items():
        print(f"throughput ratio {name}: {v:.1f}x")
    if args.out:
        write_json(args.out, summary)
    else:
        print(json.dumps(summary["ratios"]))


if __name__ == "__main__":
    main()

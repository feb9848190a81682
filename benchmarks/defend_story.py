"""The `advex defend` story: what each defense buys against a naive attack and against advex's
adaptive standard evaluation (APGD-CE, APGD-T, FAB-T, Square; BPDA/EOT applied automatically).

    python benchmarks/defend_story.py [--n 100] [--eps 0.3] [--preset standard] [--json out.json]

Trains the small defenses it needs on mnist5k (distillation, a short PGD-AT fine-tune) and
prints one table: clean accuracy, robust accuracy under plain PGD-40 (cross-entropy, no
adaptation), robust accuracy under `advex.evaluate.evaluate` with its verdict, and times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from advex import data, zoo  # noqa: E402
from advex.attacks import PGD  # noqa: E402
from advex.defenses import (  # noqa: E402
    AdversarialTrainer,
    DefensiveDistillation,
    FeatureSqueezing,
    JPEGCompression,
    RandomResizePad,
)
from advex.evaluate import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="test digits")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = zoo.load("mnist-smallcnn", progress=False)
    x, y = data.mnist5k("test").tensors()
    x, y = x[: args.n], y[: args.n]
    train = data.mnist5k("train")
    rows = []

    def defended(name, build):
        t0 = time.perf_counter()
        model = build()
        train_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        t0 = time.perf_counter()
        naive = PGD(eps=args.eps, steps=40)(model, x, y).robust_accuracy
        naive_s = time.perf_counter() - t0
        ev = evaluate(model, (x, y), eps=args.eps, preset=args.preset, seed=0)
        failed = [c.name for c in ev.checks if not c.passed]
        row = {
            "defense": name,
            "clean": clean,
            "naive_pgd40": naive,
            "adaptive": ev.robust_accuracy,
            "verdict": ev.verdict,
            "failed_checks": failed,
            "adaptations": ev.to_dict().get("adaptations"),
            "train_s": round(train_s, 1),
            "naive_s": round(naive_s, 1),
            "evaluate_s": round(ev.wall_time_s, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    defended("none (zoo SmallCNN)", lambda: base)
    defended(
        "defensive distillation T=100",
        lambda: (
            DefensiveDistillation(
                "smallcnn", temperature=100, epochs=3, lr=5e-3, batch_size=64, progress=False
            )
            .fit(train.subset(2000))
            .model
        ),
    )
    defended("feature squeezing (1-bit + 2x2 median)", lambda: FeatureSqueezing(base))
    defended("JPEG q=75", lambda: nn.Sequential(JPEGCompression(75), base))
    defended("random resize + pad", lambda: nn.Sequential(RandomResizePad(), base))

    def pgd_at():
        model = zoo.build("smallcnn")
        model.load_state_dict(base.state_dict())
        AdversarialTrainer(
            model, "pgd", eps=args.eps, epochs=3, attack_steps=5, eval_n=200, progress=False
        ).fit(train, data.mnist5k("test").subset(200))
        return model

    defended("PGD-AT fine-tune (3 epochs, PGD-5, mnist5k)", pgd_at)
    print()
    print(f"| defense | clean | plain PGD-40 | advex evaluate ({args.preset}) | verdict | time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        why = f" ({', '.join(r['failed_checks'])})" if r["failed_checks"] else ""
        print(
            f"| {r['defense']} | {r['clean']:.1%} | {r['naive_pgd40']:.1%} | {r['adaptive']:.1%} "
            f"| {r['verdict']}{why} | train {r['train_s']} s, evaluate {r['evaluate_s']} s |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

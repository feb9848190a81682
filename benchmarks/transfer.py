"""Transfer attacks on MNIST (L∞, ε = 0.3): advex TransferAttack next to torchattacks and ART
on the same surrogate, target, points and budget, in one run.

    OMP_NUM_THREADS=1 python benchmarks/transfer.py [--quick] [--n 500] [--queries 2000]
        [--out benchmarks/results/2026-11-29-transfer.json]

The target is the zoo CNN (``mnist-smallcnn``) behind a label-only black box
(:class:`advex.models.LabelBlackBox`). The surrogate is distilled from it with
:func:`advex.attacks.distill_surrogate` (``--queries`` label queries, Jacobian augmentation,
2 rounds); a second surrogate is an MLP trained on the ``mnist5k`` labels (for the ensemble).
Every method crafts on the surrogate(s) with 10 iterations, step ε/10, momentum 1.0 (MI-FGSM,
Dong et al. 2018); DI adds input diversity (Xie et al. 2019, p = 0.5, resize rate 0.9).
Success is measured on the target (re-predicted), on the ``--n`` first test digits the target
classifies correctly. Peers: torchattacks ``MIFGSM`` / ``DIFGSM``, ART
``MomentumIterativeMethod`` (no DI in ART). Neither peer has a logit ensemble or a query
budget for distillation: those rows are advex only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from advex import data, zoo
from advex._io import write_json
from advex.attacks import TransferAttack, distill_surrogate
from advex.models import LabelBlackBox
from advex.training import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.queries = 50, 200
    target = zoo.load("mnist-smallcnn", progress=False)
    x_pool, y_pool = data.mnist5k("train").tensors()
    x, y = data.mnist5k("test").tensors()
    with torch.no_grad():
        ok = target(x).argmax(1) == y
    x, y = x[ok][: args.n], y[ok][: args.n]
    box = LabelBlackBox(target, num_classes=10)

    t = time.process_time()
    d = distill_surrogate(
        box, x_pool, args.queries, augment="jacobian", rounds=2, epochs=2 if args.quick else 10
    )
    distill_cpu = time.process_time() - t
    surrogate = d.model
    torch.manual_seed(5)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    Trainer(mlp, epochs=1 if args.quick else 5, batch_size=64, seeds=5, progress=False).fit(
        (x_pool, y_pool)
    )
    mlp.eval()
    for p in mlp.parameters():
        p.requires_grad_(False)
    box.reset_queries()

    eps, steps = args.eps, args.steps
    alpha = eps / steps
    rows: dict[str, dict] = {}

    def record(name, x_adv, seconds, note=""):
        with torch.no_grad():
            fooled = box(x_adv.float()).argmax(1) != y
            on_surrogate = surrogate(x_adv.float()).argmax(1) != y
        linf = float((x_adv - x).abs().flatten(1).amax(1).max())
        rows[name] = {
            "success_on_target": float(fooled.float().mean()),
            "success_on_surrogate": float(on_surrogate.float().mean()),
            "seconds": seconds,
            "max_linf": linf,
            "note": note,
        }
        print(f"{name:44s} target {rows[name]['success_on_target']:.3f}  {seconds:6.2f} s")

    def advex_run(models, diversity):
        atk = TransferAttack(
            models, eps=eps, steps=steps, diversity=diversity, distill_queries=d.queries
        )
        t0 = time.perf_counter()
        res = atk(box, x, y)
        return res.x_adv, time.perf_counter() - t0

    xa, s = advex_run(surrogate, 0.0)
    record("advex MI-FGSM (distilled surrogate)", xa, s)
    xa, s = advex_run(surrogate, 0.5)
    record("advex MI-FGSM + DI (distilled surrogate)", xa, s)
    xa, s = advex_run([surrogate, mlp], 0.5)
    record("advex MI-FGSM + DI (ensemble: distilled + MLP)", xa, s)

    try:
        import torchattacks

        atk = torchattacks.MIFGSM(surrogate, eps=eps, alpha=alpha, steps=steps, decay=1.0)
        t0 = time.perf_counter()
        xa = atk(x, y)
        record("torchattacks MIFGSM (distilled surrogate)", xa, time.perf_counter() - t0)
        atk = torchattacks.DIFGSM(
            surrogate, eps=eps, alpha=alpha, steps=steps, decay=1.0, resize_rate=0.9
        )
        t0 = time.perf_counter()
        xa = atk(x, y)
        record("torchattacks DIFGSM (distilled surrogate)", xa, time.perf_counter() - t0)
    except ImportError as err:  # pragma: no cover
        rows["torchattacks"] = {"skipped": f"not importable: {err}"}
    try:
        from art.attacks.evasion import MomentumIterativeMethod
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            surrogate,
            loss=nn.CrossEntropyLoss(),
            input_shape=(1, 28, 28),
            nb_classes=10,
            clip_values=(0.0, 1.0),
        )
        atk = MomentumIterativeMethod(
            clf, eps=eps, eps_step=alpha, max_iter=steps, decay=1.0, batch_size=250, verbose=False
        )
        t0 = time.perf_counter()
        xa = torch.from_numpy(atk.generate(x.numpy(), y=np.eye(10)[y.numpy()]).astype(np.float32))
        record("ART MomentumIterativeMethod (distilled)", xa, time.perf_counter() - t0)
    except ImportError as err:  # pragma: no cover
        rows["ART"] = {"skipped": f"not importable: {err}"}

    g = torch.Generator().manual_seed(0)
    noise = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    record("uniform noise", noise, 0.0)
    summary = {
        "eps": eps,
        "steps": steps,
        "step_size": alpha,
        "n": len(x),
        "distillation": {
            "queries": d.queries,
            "rounds": d.rounds,
            "labels": d.labels,
            "cpu_seconds": distill_cpu,
            "agreement_on_test": d.agreement(target, x),
        },
        "target_queries_per_point_advex": 2,
        "rows": rows,
        "quick": bool(args.quick),
    }
    agree = summary["distillation"]["agreement_on_test"]
    print(f"distillation: {d.queries} label queries, surrogate agreement {agree:.3f}")
    if args.out:
        write_json(args.out, summary)


if __name__ == "__main__":
    main()

"""C&W-L2 settings side by side on one model: passes, time, success, median L2 and robust
accuracy at chosen L2 budgets, for advex's ``CW`` under several settings and (if installed)
Foolbox's ``L2CarliniWagnerAttack`` — the tables of docs/attacks-optimisation.md.

    python benchmarks/cw_settings.py                                   # zoo mnist-smallcnn
    python benchmarks/cw_settings.py --model runs/exp1-trades7 --eps 1,2,3 \\
        --advex 5,100,0.1,1,5e-3 --advex 5,100,0.1,1,1e-6 --advex 2,100,0.1,1,5e-3

A setting is ``binary_search_steps,max_iterations,learning_rate,initial_const,start_margin``.
The points are the first ``--n`` correctly classified mnist5k test digits; strength is
deterministic, single-run times are not (compare times with benchmarks/run.py, which
interleaves repeats).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ADVEX_CACHE", str(ROOT / ".advex-cache"))  # shared with the test suite

import torch  # noqa: E402

from advex import data, zoo  # noqa: E402
from advex.attacks import CW  # noqa: E402

DEFAULT_SETTINGS = ["2,100,0.1,1,5e-3", "2,100,0.1,1,1e-6", "2,200,0.05,1,1e-6"]


def _row(name, seconds, passes, success, norms, eps):
    n = norms.clone()
    n[~success] = float("inf")
    ra = " / ".join(f"{(n > e).float().mean().item():.3f}" for e in eps)
    print(
        f"{name:<44} {passes:>7.0f} {seconds:>7.1f} {success.float().mean().item():>7.1%} "
        f"{n.median().item():>7.3f}   {ra}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist-smallcnn", help="advex.zoo name or model directory")
    ap.add_argument("--n", type=int, default=64, help="correctly classified test digits (64)")
    ap.add_argument("--eps", default="1,1.5,2", help="L2 budgets for robust accuracy")
    ap.add_argument("--advex", action="append", help="a setting (repeatable); see the docstring")
    ap.add_argument("--foolbox", default="5,100,0.1,1", help="bs,steps,lr,c0 or 'none'")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eps = [float(e) for e in args.eps.split(",")]

    model = zoo.load(args.model, progress=False).eval()
    x, y = data.mnist5k("test").tensors()
    with torch.no_grad():
        ok = torch.cat(
            [model(x[i : i + 500]).argmax(1) == y[i : i + 500] for i in range(0, len(x), 500)]
        )
    keep = ok.nonzero().squeeze(1)[: args.n]
    x, y = x[keep].contiguous(), y[keep]
    print(f"model {args.model}, {len(x)} digits, {args.threads} thread(s)")
    print(
        f"{'setting':<44} {'passes':>7} {'time s':>7} {'success':>7} {'median':>7}   RA at L2 {eps}"
    )

    for spec in args.advex or DEFAULT_SETTINGS:
        bs, steps, lr, c0, margin = spec.split(",")
        attack = CW(
            binary_search_steps=int(bs),
            max_iterations=int(steps),
            learning_rate=float(lr),
            initial_const=float(c0),
            start_margin=float(margin),
        )
        t = time.perf_counter()
        r = attack(model, x, y)
        dt = time.perf_counter() - t
        _row(f"advex {spec}", dt, r.gradients.float().mean().item(), r.success, r.norms, eps)

    if args.foolbox != "none":
        try:
            import foolbox as fb
        except ImportError:
            print("foolbox is not installed: no Foolbox row")
            return
        bs, steps, lr, c0 = args.foolbox.split(",")
        fb_attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=int(bs),
            steps=int(steps),
            stepsize=float(lr),
            confidence=0.0,
            initial_const=float(c0),
            abort_early=True,
        )
        t = time.perf_counter()
        _, x_adv, _ = fb_attack(fb.PyTorchModel(model, bounds=(0.0, 1.0)), x, y, epsilons=None)
        dt = time.perf_counter() - t
        with torch.no_grad():
            success = model(x_adv).argmax(1) != y
        # Foolbox returns an all-zero image for a point it did not solve: judge by the norms
        norms = (x_adv - x).flatten(1).norm(dim=1)
        _row(f"foolbox {args.foolbox}", dt, int(bs) * int(steps), success, norms, eps)


if __name__ == "__main__":
    main()

"""A rank of the distributed-evaluation tests (launched by torchrun from
tests/test_distributed_eval.py; also runnable alone as the one-process reference).

Arguments: ``OUT_DIR [--n N] [--batch B] [--seed S] [--exit-after RANK:UNITS]
[--no-rebalance] [--restart] [--amp bf16] [--bad STATE_DIR]``. Rank 0 (or the single process) writes
``OUT_DIR/results.json`` (``Evaluation.to_dict``); with ``--bad`` every rank then tries the bad
uses and writes the errors it got to ``OUT_DIR/bad-<rank>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn


def model_and_data(n: int, seed: int = 0):
    """A small conv net and synthetic 1×8×8 data, the same in every process."""
    g = torch.Generator().manual_seed(1234)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::4] = (y[::4] + 1) % 5  # a quarter misclassified
    net.eval()
    return net, x, y


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exit-after", default=None)
    ap.add_argument("--no-rebalance", action="store_true")
    ap.add_argument("--restart", action="store_true")
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--amp", default=None, help="bf16 | fp16: the first stage under autocast")
    ap.add_argument(
        "--bad", default=None, help="after the run: try bad uses (a one-process run's state dir)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from advex import distributed
    from advex.evaluate import PRESETS, evaluate, sharded

    distributed.init_from_env(timeout_s=60)
    rank = distributed.rank()
    units = []
    if args.exit_after:
        who, k = (int(v) for v in args.exit_after.split(":"))

        def hook(done: int) -> None:
            units.append(done)
            if rank == who and done >= k:
                sys.stdout.flush()
                os._exit(17)  # killed mid-run: no cleanup, no collective

        sharded._after_unit_hook = hook
    net, x, y = model_and_data(args.n)
    ev = evaluate(
        net,
        (x, y),
        eps=0.04,
        preset=PRESETS["standard"].scaled(args.scale),
        seed=args.seed,
        batch_size=args.batch,
        out_dir=Path(args.out) / "run",
        restart=args.restart,
        probe=16,
        keep_examples=4,
        rebalance=not args.no_rebalance,
        amp=args.amp,
    )
    out = Path(args.out)
    if rank == 0:
        (out / "results.json").write_text(json.dumps(ev.to_dict(), default=str))
    if args.bad:
        bad_uses(args, net, x, y, rank)
    if distributed.is_distributed():
        torch.distributed.destroy_process_group()


def bad_uses(args, net, x, y, rank) -> None:
    """Each bad use in turn; every rank writes the error it got (type: message)."""
    from advex.evaluate import PRESETS, evaluate

    cheap = PRESETS["quick"].scaled(0.02)
    kw = dict(eps=0.04, preset=cheap, checks=False, keep_examples=0)
    cases = {
        "world>points": lambda: evaluate(net, (x[:1], y[:1]), batch_size=1, **kw),
        "world>batches": lambda: evaluate(net, (x[:8], y[:8]), batch_size=8, **kw),
        "mismatch": lambda: evaluate(net, (x, y), batch_size=8, seed=rank, **kw),
        "other-world": lambda: evaluate(net, (x, y), batch_size=8, out_dir=args.bad, **kw),
    }
    got = {}
    for name, fn in cases.items():
        try:
            fn()
            got[name] = "no error"
        except Exception as err:
            got[name] = f"{type(err).__name__}: {err}"
    (Path(args.out) / f"bad-{rank}.json").write_text(json.dumps(got))


if __name__ == "__main__":
    main()

"""advex's ``standard`` preset against the real AutoAttack, same models, same points, one run.

AutoAttack (Croce & Hein 2020, https://github.com/fra31/auto-attack) is not on PyPI and is
never vendored here: install it from a checkout of its public repository
(``pip install --no-deps -e /path/to/auto-attack``) or point ``--autoattack-path`` /
``AUTOATTACK_PATH`` at the checkout. Without it the script says so and runs advex alone.

Both tools get the same model wrapped in a pass counter (rows through ``forward``, and rows
through ``forward`` with an input gradient being tracked: forward+backward passes), the same
``(x, y)`` and ε, and AutoAttack's ``version="standard"`` (APGD-CE, APGD-T 9 targets, FAB-T 9
targets, Square 5,000 queries) against advex ``preset="standard"`` (the same four attacks).
Timing is wall-clock on whatever machine runs it: on a shared, loaded machine both numbers
are inflated alike, but compare them only within one run.

Models: the zoo's ``mnist-smallcnn`` (standard training; ε = 0.3 breaks it at once) and a
PGD adversarially trained SmallCNN (``--robust-model DIR``; trained on mnist5k in ~13 minutes
on one core with ``advex.defenses.train_from_spec`` when absent, cached under ``$ADVEX_CACHE``).

    PYTHONPATH=src python3 benchmarks/autoattack_compare.py --n 100 \\
        --autoattack-path /tmp/auto-attack --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


class Tally:
    """Row counts shared by every copy of a :class:`PassCounter` (advex's evaluate attacks a
    channels-last copy of the model; its passes must still be counted here)."""

    def __init__(self) -> None:
        self.forward_rows = 0
        self.gradient_rows = 0

    def __deepcopy__(self, memo) -> Tally:
        return self


class PassCounter(nn.Module):
    """Counts the rows that go through the model: all of them (``forward_rows``) and those with
    autograd tracking the input (``gradient_rows``: forward+backward passes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tally = Tally()

    @property
    def forward_rows(self) -> int:
        return self.tally.forward_rows

    @property
    def gradient_rows(self) -> int:
        return self.tally.gradient_rows

    def reset(self) -> None:
        self.tally.forward_rows = 0
        self.tally.gradient_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        self.tally.forward_rows += n
        if torch.is_grad_enabled() and x.requires_grad:
            self.tally.gradient_rows += n
        return self.model(x)


def import_autoattack(path: str | None):
    path = path or os.environ.get("AUTOATTACK_PATH")
    if path:
        sys.path.insert(0, str(Path(path).expanduser()))
    try:
        from autoattack import AutoAttack
    except ImportError:
        return None
    return AutoAttack


def robust_model(path: str | None) -> nn.Module:
    from advex import zoo

    if path and Path(path).is_dir():
        return zoo.load(path, progress=False)
    target = Path(path) if path else zoo.cache_dir() / "bench" / "pgdat-mnist-smallcnn"
    if not (target / "model.safetensors").exists():
        from advex.defenses.spec import train_from_spec

        print(f"training a PGD-AT SmallCNN into {target} (about 13 minutes on one core)")
        train_from_spec(
            "mnist-smallcnn",
            "mnist5k",
            "pgd",
            0.3,
            10,
            target,
            attack_steps=7,
            eps_warmup_epochs=3,
            eval_n=200,
            progress=False,
        )
    return zoo.load(str(target), progress=False)


def run_advex(
    model: nn.Module, x, y, eps: float, seed: int, preset: str = "standard", channels_last=None
) -> dict:
    from advex.evaluate import evaluate

    counter = PassCounter(model).eval()
    t0 = time.perf_counter()
    ev = evaluate(
        counter,
        (x, y),
        eps=eps,
        preset=preset,
        seed=seed,
        batch_size=len(y),
        checks=False,
        channels_last=channels_last,
    )
    wall = time.perf_counter() - t0
    robust = (ev.clean_pred == ev.y) & (ev.broken_by < 0)
    return {
        "preset": preset,
        "robust_points": robust.nonzero().squeeze(1).tolist(),
        "clean_accuracy": ev.clean_accuracy,
        "robust_accuracy": ev.robust_accuracy,
        "robust_accuracy_ci": list(ev.robust_accuracy_ci),
        "per_attack": {
            s.name: {
                "robust_accuracy_after": s.robust_accuracy,
                "gradients": s.gradients,
                "queries": s.queries,
                "time_s": s.time_s,
            }
            for s in ev.per_attack
        },
        "wall_time_s": wall,
        "forward_rows": counter.forward_rows,
        "gradient_rows": counter.gradient_rows,
        "advex_counted": {"gradients": ev.gradients_total, "queries": ev.queries_total},
    }


def run_autoattack(AutoAttack, model: nn.Module, x, y, eps: float, seed: int) -> dict:
    counter = PassCounter(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    adversary = AutoAttack(
        counter, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu", verbose=False
    )
    t0 = time.perf_counter()
    x_adv = adversary.run_standard_evaluation(x.clone(), y.clone(), bs=len(y))
    wall = time.perf_counter() - t0
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        robust_ok = clean_ok & (model(x_adv).argmax(1) == y)
    return {
        "robust_points": robust_ok.nonzero().squeeze(1).tolist(),
        "clean_accuracy": clean_ok.float().mean().item(),
        "robust_accuracy": robust_ok.float().mean().item(),
        "max_linf": float((x_adv - x).abs().amax()),
        "wall_time_s": wall,
        "forward_rows": counter.forward_rows,
        "gradient_rows": counter.gradient_rows,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="first N test digits")
    ap.add_argument(
        "--data",
        default="mnist5k",
        help="test digits: mnist5k, or mnist:PATH (the real MNIST test set; use it for models "
        "trained on full MNIST)",
    )
    ap.add_argument(
        "--presets",
        default="standard",
        help="comma list of advex presets to run (standard, autoattack, quick, thorough)",
    )
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="zoo,robust", help="comma list: zoo, robust")
    ap.add_argument("--robust-model", default=None, help="directory of a saved robust model")
    ap.add_argument("--autoattack-path", default=None, help="checkout of fra31/auto-attack")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--advex-layout",
        choices=("auto", "default"),
        default="auto",
        help="auto: advex attacks a channels-last copy of a CPU conv model (its default); "
        "default: the model's own layout, as AutoAttack (isolates the algorithmic saving)",
    )
    ap.add_argument(
        "--autoattack-first", action="store_true", help="run AutoAttack before advex (load check)"
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from advex import data, zoo

    AutoAttack = import_autoattack(args.autoattack_path)
    if AutoAttack is None:
        print(
            "AutoAttack is not installed: clone https://github.com/fra31/auto-attack and "
            "`pip install --no-deps -e` it, or pass --autoattack-path; running advex alone."
        )
    x, y = data.load(args.data, "test").tensors()
    x, y = x[: args.n], y[: args.n]
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    out = {
        "data": args.data,
        "n": len(y),
        "eps": args.eps,
        "norm": "linf",
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "autoattack": AutoAttack is not None,
        "models": {},
    }
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "zoo":
            model = zoo.load("mnist-smallcnn", progress=False)
        elif name == "robust":
            model = robust_model(args.robust_model)
        else:
            raise SystemExit(f"unknown model {name!r}: use zoo or robust")
        model = model.eval()
        tools = [f"advex-{p}" for p in presets]
        tools += ["autoattack"] if AutoAttack is not None else []
        if args.autoattack_first:
            tools.reverse()
        row = {}
        for tool in tools:
            if tool.startswith("advex-"):
                cl = None if args.advex_layout == "auto" else False
                preset = tool[len("advex-") :]
                row[tool] = run_advex(model, x, y, args.eps, args.seed, preset, cl)
                row[tool]["layout"] = args.advex_layout
            else:
                row[tool] = run_autoattack(AutoAttack, model, x, y, args.eps, args.seed)
            row[tool]["load_average_after"] = os.getloadavg()[0]
            print(f"{name}: {tool} {json.dumps(row[tool])}", flush=True)
        if "autoattack" in row:
            aa = set(row["autoattack"]["robust_points"])
            for tool, r in row.items():
                if tool != "autoattack":
                    mine = set(r["robust_points"])
                    r["robust_here_broken_by_autoattack"] = sorted(mine - aa)
                    r["broken_here_robust_to_autoattack"] = sorted(aa - mine)
                    r["time_vs_autoattack"] = r["wall_time_s"] / row["autoattack"]["wall_time_s"]
        out["models"][name] = row
    out["load_average_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if args.markdown:
        print(markdown(out))
    return out


def markdown(out: dict) -> str:
    lines = [
        f"n = {out['n']} {out['data']} test digits, L∞ ε = {out['eps']}, "
        f"{out['threads']} thread(s), "
        f"load average {out['load_average_start'][0]:.1f} → {out['load_average_end'][0]:.1f}",
        "",
        "| model | tool | clean | robust | wall time (s) | vs AutoAttack | forward rows | "
        "gradient rows | robust here, broken by AutoAttack |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in out["models"].items():
        for tool, r in row.items():
            ratio = r.get("time_vs_autoattack")
            missed = r.get("robust_here_broken_by_autoattack")
            lines.append(
                f"| {name} | {tool} | {100 * r['clean_accuracy']:.1f}% | "
                f"{100 * r['robust_accuracy']:.1f}% | {r['wall_time_s']:.1f} | "
                f"{'-' if ratio is None else f'{ratio:.2f}×'} | "
                f"{r['forward_rows']:,} | {r['gradient_rows']:,} | "
                f"{'-' if missed is None else len(missed)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""advex ``standard`` against the real AutoAttack, counted in model passes, over robust models.

Both tools attack the same model through one :class:`advex.models.PassCounter` (forward and
backward passes, per sample and per batch, per stage and in total, wall time per stage), on
the same points at the same ε. AutoAttack (Croce & Hein 2020, https://github.com/fra31/auto-attack,
``version="standard"``: APGD-CE, APGD-T 9 targets, FAB-T 9 targets, Square 5,000 queries) is
never vendored: point ``--autoattack-path`` (or ``AUTOATTACK_PATH``) at a checkout, or
``pip install --no-deps -e`` it; without it the script says so and runs advex alone. Its
stages are labelled by wrapping its four attack objects' ``perturb``; its own checks and
clean passes count as ``other``, as advex's clean pass does.

Cost unit: 1 forward pass of one sample; a backward pass costs ``k`` forwards, measured per
model in the same run (:func:`advex.models.measure_backward_cost`, batch of ``--n`` points);
the targets use the documented ``k`` = :data:`advex.models.BACKWARD_COST` and the table shows
the ratio at the measured ``k`` too. Weighted passes = forward rows + k · backward rows.

Per model it prints: robust accuracy of both, the points on which they disagree, passes of both
(forward and backward rows and calls, weighted), the weighted-pass ratio and the wall-time ratio,
and checks the issue's targets: advex RA ≤ AutoAttack's + 0.1 point, every point AutoAttack
breaks broken by advex, weighted passes ≤ 0.25× AutoAttack's. Pass counts are exact whatever
else the machine runs; wall times are not (say whether the machine was shared).

Models (benchmarks/bench_models.py: short advex recipes on mnist5k, cached under
``$ADVEX_CACHE/bench-models``, trained on first use): ``trades``, ``pgd-at``, ``fgsm-rs``,
``distilled`` (defensive distillation, masked cross-entropy gradients, at ε = 0.1).

    PYTHONPATH=src python3 benchmarks/autoattack_passes.py --n 100 \\
        --autoattack-path /tmp/auto-attack --markdown
    PYTHONPATH=src python3 benchmarks/autoattack_passes.py --quick     # smoke run, advex only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_RA_SLACK = 0.001  # 0.1 point
TARGET_PASS_RATIO = 0.25


def import_autoattack(path: str | None):
    path = path or os.environ.get("AUTOATTACK_PATH")
    if path:
        sys.path.insert(0, str(Path(path).expanduser()))
    try:
        from autoattack import AutoAttack
    except ImportError:
        return None
    return AutoAttack


def _robust(model, x, y, x_adv=None) -> torch.Tensor:
    with torch.no_grad():
        ok = model(x).argmax(1) == y
        if x_adv is not None:
            ok &= model(x_adv).argmax(1) == y
    return ok


def run_advex(model, x, y, eps: float, seed: int, preset: str, scale: float = 1.0) -> dict:
    from advex.evaluate import evaluate, get_preset
    from advex.models import PassCounter

    counter = PassCounter(model).eval()
    t0 = time.perf_counter()
    ev = evaluate(
        counter,
        (x, y),
        eps=eps,
        preset=get_preset(preset).scaled(scale),
        seed=seed,
        batch_size=len(y),
        checks=False,
    )
    wall = time.perf_counter() - t0
    robust = (ev.clean_pred == ev.y) & (ev.broken_by < 0)
    rep = counter.report()
    return {
        "tool": f"advex-{preset}",
        "robust_points": robust.nonzero().squeeze(1).tolist(),
        "clean_accuracy": ev.clean_accuracy,
        "robust_accuracy": ev.robust_accuracy,
        "wall_time_s": wall,
        "passes": rep,
        "evaluation_reported": {
            "backward_rows": ev.gradients_total,
            "forward_rows": ev.queries_total,
            "equal_to_counter": ev.gradients_total == rep["total"]["backward_rows"]
            and ev.queries_total == rep["total"]["forward_rows"],
        },
        "per_stage_broken": {s.name: s.n_broken for s in ev.per_attack},
    }


def run_autoattack(AutoAttack, model, x, y, eps: float, seed: int) -> dict:
    from advex.models import PassCounter

    counter = PassCounter(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    adversary = AutoAttack(
        counter, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu", verbose=False
    )
    for attr, stage in (
        ("apgd", "apgd-ce"),
        ("apgd_targeted", "apgd-t"),
        ("fab", "fab-t"),
        ("square", "square"),
    ):
        atk = getattr(adversary, attr)
        atk.perturb = _labelled(counter, stage, atk.perturb)
    t0 = time.perf_counter()
    x_adv = adversary.run_standard_evaluation(x.clone(), y.clone(), bs=len(y))
    wall = time.perf_counter() - t0
    robust = _robust(model, x, y, x_adv)
    return {
        "tool": "autoattack",
        "robust_points": robust.nonzero().squeeze(1).tolist(),
        "clean_accuracy": float(_robust(model, x, y).float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "max_linf": float((x_adv - x).abs().amax()),
        "wall_time_s": wall,
        "passes": counter.report(),
    }


def _labelled(counter, stage, fn):
    def wrapped(*args, **kwargs):
        with counter.stage(stage):
            return fn(*args, **kwargs)

    return wrapped


def compare(row: dict, k_doc: float, k_measured: float) -> dict:
    adv, aa = row["advex"], row.get("autoattack")
    if aa is None:
        return {}
    mine, theirs = set(adv["robust_points"]), set(aa["robust_points"])

    def w(r, k):
        t = r["passes"]["total"]
        return t["forward_rows"] + k * t["backward_rows"]

    out = {
        "robust_here_broken_by_autoattack": sorted(mine - theirs),
        "broken_here_robust_to_autoattack": sorted(theirs - mine),
        "weighted_ratio": w(adv, k_doc) / w(aa, k_doc),
        "weighted_ratio_measured_k": w(adv, k_measured) / w(aa, k_measured),
        "forward_ratio": adv["passes"]["total"]["forward_rows"]
        / aa["passes"]["total"]["forward_rows"],
        "backward_ratio": adv["passes"]["total"]["backward_rows"]
        / max(1, aa["passes"]["total"]["backward_rows"]),
        "wall_time_ratio": adv["wall_time_s"] / aa["wall_time_s"],
    }
    out["targets"] = {
        "ra_within_0.1_point": adv["robust_accuracy"] <= aa["robust_accuracy"] + TARGET_RA_SLACK,
        "every_autoattack_break_broken": not out["robust_here_broken_by_autoattack"],
        "weighted_passes_le_0.25x": out["weighted_ratio"] <= TARGET_PASS_RATIO,
    }
    return out


def main(argv: list[str] | None = None) -> dict:
    from bench_models import RECIPES, ensure

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="first N mnist5k test digits")
    ap.add_argument("--models", default=",".join(RECIPES), help=f"comma list of {list(RECIPES)}")
    ap.add_argument("--preset", default="standard", help="the advex preset compared")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--budget-scale", type=float, default=1.0, help="scale advex's budgets (smoke runs)"
    )
    ap.add_argument("--autoattack-path", default=None, help="checkout of fra31/auto-attack")
    ap.add_argument("--no-autoattack", action="store_true", help="run advex alone")
    ap.add_argument(
        "--reuse-autoattack",
        action="store_true",
        help="reuse AutoAttack's result of an earlier run on the same model, points, ε and seed "
        "(kept under $ADVEX_CACHE/bench-models/autoattack-results; its wall time is then that "
        "run's)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: zoo CNN, 8 points, advex only")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:  # the zoo CNN at ε = 0.1, no training, no AutoAttack
        args.n, args.no_autoattack, args.models = min(args.n, 8), True, "zoo"
        args.budget_scale = 0.05

    from advex import data
    from advex.models import BACKWARD_COST, measure_backward_cost

    AutoAttack = None if args.no_autoattack else import_autoattack(args.autoattack_path)
    if AutoAttack is None and not args.no_autoattack:
        print(
            "AutoAttack is not installed: clone https://github.com/fra31/auto-attack and "
            "`pip install --no-deps -e` it, or pass --autoattack-path; running advex alone."
        )
    x_all, y_all = data.load("mnist5k", "test").tensors()
    x_all, y_all = x_all[: args.n], y_all[: args.n]
    out: dict = {
        "data": "mnist5k test",
        "n": len(y_all),
        "norm": "linf",
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "backward_cost_documented": BACKWARD_COST,
        "load_average_start": os.getloadavg(),
        "autoattack": AutoAttack is not None,
        "models": {},
    }
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        desc, eps, _ = RECIPES.get(name, ("zoo mnist-smallcnn (standard training)", 0.1, {}))
        model = ensure(name).eval()
        x, y = x_all, y_all
        k = measure_backward_cost(model, x, repeats=5 if args.quick else 20)
        row: dict = {
            "recipe": desc,
            "eps": eps,
            "card": {
                key: model.card.get(key)
                for key in ("accuracy", "robust_accuracy", "train_time_s", "recipe")
            }
            if hasattr(model, "card")
            else None,
            "backward_cost": k,
        }
        row["advex"] = run_advex(model, x, y, eps, args.seed, args.preset, args.budget_scale)
        row["advex"]["load_average_after"] = os.getloadavg()[0]
        print(f"{name}: advex {_brief(row['advex'])}", flush=True)
        if AutoAttack is not None:
            cache = _aa_cache(name, len(y), eps, args.seed, model)
            if args.reuse_autoattack and cache.exists():
                row["autoattack"] = json.loads(cache.read_text())
                row["autoattack"]["reused_from"] = str(cache)
            else:
                with contextlib.redirect_stdout(sys.stderr):
                    row["autoattack"] = run_autoattack(AutoAttack, model, x, y, eps, args.seed)
                row["autoattack"]["load_average_after"] = os.getloadavg()[0]
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(row["autoattack"]))
            print(f"{name}: autoattack {_brief(row['autoattack'])}", flush=True)
        row["comparison"] = compare(row, BACKWARD_COST, k["backward_cost"])
        if row["comparison"]:
            print(f"{name}: {json.dumps(row['comparison'])}", flush=True)
        out["models"][name] = row
    out["load_average_end"] = os.getloadavg()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if args.markdown:
        print(markdown(out))
    return out


def _aa_cache(name: str, n: int, eps: float, seed: int, model) -> Path:
    """Where AutoAttack's result on (model weights, n, ε, seed) is kept for --reuse-autoattack."""
    from bench_models import model_dir

    from advex.evaluate.state import model_hash

    tag = f"{name}-n{n}-eps{eps:g}-seed{seed}-{model_hash(model)[:12]}.json"
    return model_dir(name).parent / "autoattack-results" / tag


def _brief(r: dict) -> str:
    t = r["passes"]["total"]
    return (
        f"robust {r['robust_accuracy']:.3f} forward {t['forward_rows']:,} backward "
        f"{t['backward_rows']:,} weighted {t['weighted']:,.0f} wall {r['wall_time_s']:.1f}s"
    )


def markdown(out: dict) -> str:
    lines = [
        f"n = {out['n']} {out['data']} digits, L∞, advex `{out['preset']}` vs AutoAttack "
        f"standard, {out['threads']} thread(s), load average "
        f"{out['load_average_start'][0]:.1f} → {out['load_average_end'][0]:.1f}; weighted = "
        f"forward rows + {out['backward_cost_documented']:g} × backward rows",
        "",
        "| model | ε | k measured | robust advex | robust AutoAttack | AA breaks, advex not | "
        "advex breaks, AA not | forward rows advex / AA | backward rows advex / AA | "
        "weighted ratio (k = 2 / measured) | wall time advex / AA (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in out["models"].items():
        adv, aa, c = row["advex"], row.get("autoattack"), row.get("comparison") or {}
        ta = adv["passes"]["total"]
        if aa is None:
            lines.append(
                f"| {name} | {row['eps']} | {row['backward_cost']['backward_cost']:.2f} | "
                f"{100 * adv['robust_accuracy']:.1f}% | - | - | - | {ta['forward_rows']:,} / - "
                f"| {ta['backward_rows']:,} / - | - | {adv['wall_time_s']:.0f} / - |"
            )
            continue
        tb = aa["passes"]["total"]
        lines.append(
            f"| {name} | {row['eps']} | {row['backward_cost']['backward_cost']:.2f} | "
            f"{100 * adv['robust_accuracy']:.1f}% | {100 * aa['robust_accuracy']:.1f}% | "
            f"{len(c['robust_here_broken_by_autoattack'])} | "
            f"{len(c['broken_here_robust_to_autoattack'])} | "
            f"{ta['forward_rows']:,} / {tb['forward_rows']:,} | "
            f"{ta['backward_rows']:,} / {tb['backward_rows']:,} | "
            f"**{c['weighted_ratio']:.3f}×** / {c['weighted_ratio_measured_k']:.3f}× | "
            f"{adv['wall_time_s']:.0f} / {aa['wall_time_s']:.0f} "
            f"({c['wall_time_ratio']:.2f}×) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""How far can a 5% patch go? An upper bound on the universal patch's targeted success.

A universal patch is one patch for every image; a per-image patch may differ for each image.
The universal patch is a feasible per-image patch (the same one for all), so for every image
the best per-image patch does at least as well as the universal one, under the same placement
and viewing-condition distributions: **the mean success of (strongly optimised) per-image
patches bounds the universal patch's success from above** — up to the per-image optimiser's
own gap, which the script measures (success on its own training draws, restarts, steps).

For each held-out image (official-test images of every class but the target, never used in
fitting the universal patch), a patch of the same area and in the same printable gamut is
optimised (Adam on the same tanh parametrisation as ``AdversarialPatch``, ``--draws`` random
(placement, view) pairs per image per step from the *fitting* distributions, ``--restarts``
starts with the best kept per image on ``--select-draws`` further fitting draws), then
measured over ``--n-views`` held-out views (seed 1000) × one fresh random placement per view —
the very draws of ``advex.evaluate.physical.physical_evaluation``, so the universal patch
fitted by ``AdversarialPatch`` (benchmark settings: 2,000 training images of all classes, on
the sign's face, margin loss, κ 5) is measured on the same draws in the same run.

Two placements:

- ``random``: the universal patch's placement distribution (on the sign's face, random
  location, scale 0.8–1.2, rotation ±20°);
- ``fixed``: the most favourable case — the patch at one fixed location (scale 1, no
  rotation), the best of a 3×3 grid of locations on the sign's face chosen on *training*
  images; only the viewing conditions vary.

    OMP_NUM_THREADS=1 python benchmarks/physical_bound.py \\
        --out benchmarks/results/2026-11-30-physical-patch-bound.json
    OMP_NUM_THREADS=1 python benchmarks/physical_bound.py --quick --out /tmp/bound.json

Prints one line per (area, placement) and writes the JSON (process CPU seconds per part).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from advex import data as D
from advex import zoo
from advex._io import write_json
from advex._stats import clopper_pearson
from advex.attacks.physical import AdversarialPatch
from advex.models.guards import attack_mode
from advex.threats.patch import PatchThreat, ViewDistribution
from advex.zoo.traffic import traffic_data_root

SPEED30 = 1
_CL = torch.channels_last
#: the fixed locations tried (normalised centre coordinates, a 3×3 grid on the sign's face)
GRID = (-0.35, 0.0, 0.35)


def make_threat(area: float, size: int = 32, region: float = 0.8) -> PatchThreat:
    """The universal patch's threat: random placement on the sign's face, fitting views."""
    return PatchThreat(
        None,
        size=size,
        area=area,
        placement="random",
        views=ViewDistribution(),
        patch_region=region,
    )


def _bounds(threat: PatchThreat, like: torch.Tensor):
    lo = threat.palette.min(0).values.to(like).view(1, 3, 1, 1)
    hi = threat.palette.max(0).values.to(like).view(1, 3, 1, 1)
    return lo, hi


def _objective(logits: torch.Tensor, target: int, loss: str, kappa: float) -> torch.Tensor:
    t = torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    if loss == "margin":
        z_t = logits[:, target]
        other = logits.scatter(1, t[:, None], float("-inf")).amax(1)
        return (other - z_t).clamp_min(-kappa)
    return F.cross_entropy(logits, t, reduction="none")


def _fixed_rows(fixed, n: int) -> torch.Tensor:
    cx, cy = fixed
    return torch.tensor([[float(cx), float(cy), 1.0, 0.0]]).expand(n, 4)


def _seen(model_in, threat, x, patches, placement, views, params):
    canvas, m = threat.place(patches, placement, x)
    return views.apply(x * (1 - m) + canvas * m, params).contiguous(memory_format=model_in)


def fit_per_image(
    model: nn.Module,
    x: torch.Tensor,
    threat: PatchThreat,
    target: int,
    *,
    steps: int = 150,
    draws: int = 12,
    restarts: int = 2,
    select_draws: int = 32,
    lr: float = 0.1,
    loss: str = "ce",
    kappa: float = 5.0,
    fixed: tuple[float, float] | None = None,
    seed: int = 0,
    chunk: int = 32,
    snapshots: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One patch per image of ``x`` ``(N, 3, H, W)``: ``(patches (N, 3, k, k), fit_success
    (N,))`` — each image's patch minimises the mean ``loss`` towards ``target`` over ``draws``
    (placement, view) pairs of the threat's fitting distributions per step (``fixed=(cx,
    cy)``: the patch always at that centre, scale 1, no rotation); Adam (elementwise, so the
    images of a chunk are independent problems), ``restarts`` starts, the one kept per image
    that fools most of ``select_draws`` further draws (its share is ``fit_success``).
    Deterministic per ``seed``. Cost: ``restarts × (steps × draws + select_draws)`` forward
    passes (and ``steps × draws`` backward) per image. ``snapshots``: a dict whose keys are
    step counts; with ``restarts=1`` it is filled with the patches after that many steps (a
    steps curve from one optimisation)."""
    n, k = x.shape[0], threat.patch_side
    views = threat.views
    fmt = _CL if any(isinstance(m, nn.Conv2d) for m in model.modules()) else torch.contiguous_format
    patches_out = x.new_zeros(n, 3, k, k)
    best = torch.full((n,), -1.0)
    with attack_mode(model, warn=False):
        for r in range(restarts):
            g = torch.Generator().manual_seed(int(seed) + 1000 * r)
            gs = torch.Generator().manual_seed(int(seed) + 1000 * r + 777)
            for s in range(0, n, chunk):
                xb = x[s : s + chunk]
                b = xb.shape[0]
                lo, hi = _bounds(threat, xb)
                start = lo + (hi - lo) * torch.rand(b, 3, k, k, generator=g, dtype=xb.dtype)
                frac = ((start - lo) / (hi - lo)).clamp(1e-3, 1 - 1e-3)
                w = torch.atanh(2 * frac - 1).requires_grad_(True)
                opt = torch.optim.Adam([w], lr=lr)
                xr = xb.repeat_interleave(draws, 0)
                for step in range(steps):
                    if fixed is None:
                        pl = threat.sample_placement(b * draws, g)
                    else:
                        pl = _fixed_rows(fixed, b * draws)
                    params = views.sample(b * draws, g)
                    with torch.enable_grad():
                        p = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                        pr = p.repeat_interleave(draws, 0)
                        seen = _seen(fmt, threat, xr, pr, pl, views, params)
                        obj = _objective(model(seen), target, loss, kappa)
                        opt.zero_grad()
                        (obj.view(b, draws).mean(1).sum()).backward()
                    opt.step()
                    if snapshots is not None and restarts == 1 and step + 1 in snapshots:
                        with torch.no_grad():
                            snap = snapshots[step + 1]
                            if snap is None or snap.shape[0] != n:
                                snapshots[step + 1] = snap = x.new_zeros(n, 3, k, k)
                            snap[s : s + b] = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                with torch.no_grad():
                    p = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                    if fixed is None:
                        pl = threat.sample_placement(b * select_draws, gs)
                    else:
                        pl = _fixed_rows(fixed, b * select_draws)
                    params = views.sample(b * select_draws, gs)
                    xs = xb.repeat_interleave(select_draws, 0)
                    seen = _seen(
                        fmt, threat, xs, p.repeat_interleave(select_draws, 0), pl, views, params
                    )
                    hit = (model(seen).argmax(1) == target).float().view(b, select_draws).mean(1)
                better = hit > best[s : s + b]
                best[s : s + b] = torch.where(better, hit, best[s : s + b])
                patches_out[s : s + b][better] = p[better]
    return patches_out, best


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    patches: torch.Tensor,
    threat: PatchThreat,
    target: int,
    *,
    n_views: int = 20,
    seed: int = 1000,
    fixed: tuple[float, float] | None = None,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Hits ``(N, n_views)``: image ``i`` with ``patches[i]`` (or one patch ``(3, k, k)`` for
    all) under ``n_views`` held-out views (``threat.views.held_out(seed)``) × one random
    placement per view — drawn exactly as ``physical_evaluation`` draws them — or at the
    ``fixed`` location."""
    n, v = x.shape[0], int(n_views)
    ev_views = threat.views.held_out(seed)
    g = torch.Generator().manual_seed(int(ev_views.seed))
    params = ev_views.sample(n * v, g)
    placement = threat.sample_placement(n * v, g) if fixed is None else _fixed_rows(fixed, n * v)
    img = torch.arange(n).repeat_interleave(v)
    if patches.dim() == 3:
        patches = patches[None].expand(n, -1, -1, -1)
    out = []
    with attack_mode(model, warn=False), torch.no_grad():
        for s in range(0, n * v, batch_size):
            sl = slice(s, min(s + batch_size, n * v))
            xb = x[img[sl]]
            canvas, m = threat.place(patches[img[sl]].to(xb), placement[sl], xb)
            seen = ev_views.apply(xb * (1 - m) + canvas * m, params.index(sl))
            out.append(model(seen).argmax(1) == target)
    return torch.cat(out).view(n, v)


def _rate(hits: torch.Tensor) -> dict:
    k, n = int(hits.sum()), hits.numel()
    lo, hi = clopper_pearson(k, n)
    return {"rate": round(k / n, 4), "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def _summary(hits: torch.Tensor) -> dict:
    per = hits.float().mean(1)
    return {
        "success": _rate(hits),
        "per_image_mean": round(float(per.mean()), 4),
        "images_above_half": round(float((per > 0.5).float().mean()), 4),
        "images_never_fooled": round(float((per == 0).float().mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="gtsrb-cnn (gtsrb-cnn-small with --quick)")
    ap.add_argument("--areas", default="0.05", help="comma-separated areas at scale 1")
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--n-views", type=int, default=20)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--select-draws", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--loss", default="ce", choices=("ce", "margin"))
    ap.add_argument("--kappa", type=float, default=5.0)
    ap.add_argument("--placements", default="random,fixed")
    ap.add_argument("--grid-images", type=int, default=24, help="training images per location")
    ap.add_argument("--no-universal", action="store_true")
    ap.add_argument(
        "--steps-curve",
        default="",
        help="comma-separated step counts: also measure the per-image patches after that many "
        "steps of the same optimisation (needs --restarts 1)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.n_images, args.n_views, args.steps, args.draws = 6, 2, 3, 2
        args.restarts, args.select_draws, args.grid_images = 1, 2, 2
        args.no_universal = True
    torch.set_num_threads(1)
    name = args.model or ("gtsrb-cnn-small" if args.quick else "gtsrb-cnn")
    root = traffic_data_root()
    model = zoo.load(name, data_root=root, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.GTSRBWarning)
        train = D.gtsrb(root, "train")
    test = D.gtsrb(root, "test")
    g = torch.Generator().manual_seed(0)  # the sweep's draws: 2,000 fitting images, then eval
    fit_idx = torch.randperm(len(train), generator=g)[:2000]
    keep = (test.y != SPEED30).nonzero().squeeze(1)
    pick = torch.randperm(len(keep), generator=g)[: args.n_images]
    x_ev = test.subset(keep[pick]).tensors()[0]
    x_fit, y_fit = train.subset(fit_idx).tensors()
    grid_x = x_fit[y_fit != SPEED30][: args.grid_images]
    placements = [p for p in args.placements.split(",") if p]
    opts = dict(
        steps=args.steps,
        draws=args.draws,
        restarts=args.restarts,
        select_draws=args.select_draws,
        lr=args.lr,
        loss=args.loss,
        kappa=args.kappa,
        seed=args.seed,
    )
    doc: dict = {
        "quick": args.quick,
        "model": name,
        "model_accuracy": model.card.get("accuracy"),
        "target": SPEED30,
        "n_images": x_ev.shape[0],
        "n_views": args.n_views,
        "settings": opts,
        "rows": [],
    }

    def save() -> None:
        doc["machine"] = f"load average {os.getloadavg()}"
        if args.out:
            write_json(args.out, doc)

    for area in [float(a) for a in args.areas.split(",")]:
        threat = make_threat(area)
        lo_s, hi_s = threat.patch_scale
        row: dict = {
            "area": area,
            "patch_side_px": threat.patch_side,
            "mean_area_random": round(
                threat.patch_side**2 * (hi_s**3 - lo_s**3) / (3 * (hi_s - lo_s)) / 32**2, 5
            ),
            "area_fixed": round(threat.patch_side**2 / 32**2, 5),
        }
        doc["rows"].append(row)
        if not args.no_universal:
            c0 = time.process_time()
            uni = AdversarialPatch(
                target=SPEED30, area=area, patch_region=0.8, loss="margin", kappa=5, seed=0
            ).fit(model, x_fit, y_fit)
            hits = evaluate(model, x_ev, uni.sticker_, threat, SPEED30, n_views=args.n_views)
            row["universal"] = {**_summary(hits), "fit_cpu_s": round(time.process_time() - c0, 1)}
            print(f"area {area}: universal {row['universal']['success']}", flush=True)
        for placement in placements:
            c0 = time.process_time()
            fixed = None
            part: dict = {}
            if placement == "fixed":  # the best location of the grid, on training images
                scores = {}
                for cx in GRID:
                    for cy in GRID:
                        _, fs = fit_per_image(
                            model,
                            grid_x,
                            threat,
                            SPEED30,
                            fixed=(cx, cy),
                            **{**opts, "steps": max(1, args.steps // 2), "restarts": 1},
                        )
                        scores[f"{cx},{cy}"] = round(float(fs.mean()), 4)
                key = max(scores, key=scores.get)
                fixed = tuple(float(v) for v in key.split(","))
                part.update(location_scores_on_training_images=scores, location=list(fixed))
            curve = {int(c): None for c in args.steps_curve.split(",") if c.strip()}
            patches, fs = fit_per_image(
                model, x_ev, threat, SPEED30, fixed=fixed, snapshots=curve, **opts
            )
            hits = evaluate(
                model, x_ev, patches, threat, SPEED30, n_views=args.n_views, fixed=fixed
            )
            if curve:
                part["steps_curve"] = {
                    str(c): _summary(
                        evaluate(model, x_ev, p, threat, SPEED30, n_views=args.n_views, fixed=fixed)
                    )["success"]
                    for c, p in sorted(curve.items())
                    if p is not None
                }
            part["per_image_success"] = [round(float(v), 3) for v in hits.float().mean(1)]
            part.update(
                _summary(hits),
                fit_success_on_fitting_draws=round(float(fs.mean()), 4),
                cpu_s=round(time.process_time() - c0, 1),
            )
            row[f"per_image_{placement}"] = part
            print(
                f"area {area}: per-image bound, {placement} placement: {part['success']} "
                f"(own fitting draws {part['fit_success_on_fitting_draws']}, "
                f"{part['cpu_s']} CPU-s)",
                flush=True,
            )
            save()
        save()
    print(json.dumps(doc["rows"]))


if __name__ == "__main__":
    main()

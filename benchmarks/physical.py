"""Physical attacks on the zoo traffic-sign model (gtsrb-cnn), in one run:

1. RP2, stop → speed limit (30km/h), the "two-bars" sticker (9.4% of the image): fitted on the
   training-set stop signs, measured on the 270 official-test stop signs × 20 held-out random
   views each (another seed than fitting), next to a random printable sticker of the same mask
   (the control); fit time.
2. A universal 5% adversarial patch (Brown et al.) targeted at speed limit (30km/h), random
   placement, fitted on training images of all classes, measured on held-out test images of
   all classes × held-out views.
3. The peer: ART's ``AdversarialPatchPyTorch`` on the same model, patch area and steps if it
   runs here (it needs torchvision, which advex does not install: the script says so and runs
   ART's ``AdversarialPatchNumpy`` instead, with the same model, area, steps and batch size).

    OMP_NUM_THREADS=1 python benchmarks/physical.py [--quick] [--out PATH]
        [--rp2-mask two-bars|square:0.1] [--parts rp2,patch,art] [--timing-repeats N]
    OMP_NUM_THREADS=1 python benchmarks/physical.py --parts timing --timing-repeats 3 \
        --out PATH                     # only the advex / ART patch fit timings

Every fit is timed in wall seconds and process CPU seconds (the machine may be shared: CPU time
is the steadier measure; ``--timing-repeats`` re-times the advex and ART patch fits in
alternating order).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from advex import data as D
from advex import zoo
from advex._io import write_json
from advex.attacks.physical import RP2, AdversarialPatch
from advex.evaluate.physical import physical_evaluation
from advex.zoo.traffic import traffic_data_root

STOP, SPEED30 = 14, 1


def _rp2(model, root, args) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.GTSRBWarning)
        fit = D.gtsrb(root, "train", classes=["stop"])
    test = D.gtsrb(root, "test", classes=["stop"])
    if args.quick:
        fit, test = fit.subset(32), test.subset(20)
    mask, _, area = args.rp2_mask.partition(":")
    rp2 = RP2(
        mask,
        **({"area": float(area)} if area else {}),
        target=SPEED30,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=0,
        progress=not args.quick,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    rp2.fit(model, *fit.tensors())
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {
        "mask": args.rp2_mask,
        "fit_images": len(fit),
        "fit_seconds": round(fit_s, 2),
        "fit_cpu_minutes": round(fit_cpu / 60, 2),  # process CPU time, all threads
        "fit_cpu_s": round(fit_cpu, 2),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "fit_forward_passes": rp2.fit_queries_,
        "area": rp2.threat.area,
        "fit_success_on_training_views": rp2.fit_success_,
    }
    evs = {}
    for widen in args.widen:
        ev = evs[widen] = physical_evaluation(
            model,
            rp2.sticker_,
            rp2.threat,
            *test.tensors(),
            target=SPEED30,
            n_views=args.views,
            seed=1000,
            widen=widen,
        )
        key = "held_out" if widen == 1.0 else f"held_out_widened_{widen:g}"
        out[key] = {
            k: ev[k]
            for k in (
                "success",
                "control_success",
                "clean_view_accuracy",
                "n_images",
                "n_views",
                "rates",
                "breakdown",
                "views",
                "per_image",
            )
        }
    if args.figures:
        from advex.report.physical import save_breakdown_figure, save_print_png, save_views_figure

        d = Path(args.figures)
        d.mkdir(parents=True, exist_ok=True)
        held = rp2.threat.views.held_out(1000)
        save_views_figure(
            d / "physical-rp2-views.png",
            model,
            test.x[:3],
            rp2.sticker_,
            rp2.threat,
            held,
            test.class_names,
        )
        save_breakdown_figure(d / "physical-rp2-breakdown.png", evs[1.0])
        save_print_png(
            d / "physical-rp2-sticker.png", rp2.sticker_, rp2.threat.mask, width_cm=8.0, dpi=40
        )
    return out


def _patch_data(root, args, g):
    few = [0, 2, 13, 14, 38] if args.quick else None  # --quick reads five classes only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.GTSRBWarning)
        train = D.gtsrb(root, "train", classes=few)
    test = D.gtsrb(root, "test", classes=few)
    n_fit, n_eval = (64, 40) if args.quick else (2000, 1000)
    train = train.subset(torch.randperm(len(train), generator=g)[:n_fit])
    keep = (test.y != SPEED30).nonzero().squeeze(1)
    test = test.subset(keep[torch.randperm(len(keep), generator=g)[:n_eval]])
    return train, test


def _digital_patch_success(model, x, patch_apply) -> float:
    with torch.no_grad():
        return float((model(patch_apply(x)).argmax(1) == SPEED30).float().mean())


def _patch(model, train, test, args) -> dict:
    ap = AdversarialPatch(
        target=SPEED30,
        area=0.05,
        steps=args.patch_steps,
        batch_size=args.batch_size,
        seed=0,
        progress=not args.quick,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    ap.fit(model, *train.tensors())
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    ev = physical_evaluation(
        model,
        ap.sticker_,
        ap.threat,
        *test.tensors(),
        target=SPEED30,
        n_views=args.patch_views,
        seed=1000,
    )
    digital = _digital_patch_success(model, test.x, lambda x: ap.apply(x, seed=77))
    if args.figures:
        from advex.report.physical import save_views_figure

        save_views_figure(
            Path(args.figures) / "physical-patch-views.png",
            model,
            test.x[:3],
            ap.sticker_,
            ap.threat,
            ap.threat.views.held_out(1000),
            test.class_names,
        )
    return {
        "fit_images": len(train),
        "fit_seconds": round(fit_s, 2),
        "fit_cpu_minutes": round(fit_cpu / 60, 2),
        "fit_cpu_s": round(fit_cpu, 2),
        "steps": args.patch_steps,
        "batch_size": args.batch_size,
        "area": ap.threat.area,
        "patch_side_px": ap.threat.patch_side,
        "held_out": {
            k: ev[k]
            for k in (
                "success",
                "control_success",
                "clean_view_accuracy",
                "n_images",
                "n_views",
                "rates",
                "breakdown",
            )
        },
        "digital_random_placement_success": digital,
    }


def _art_classifier(model):
    from art.estimators.classification import PyTorchClassifier

    class _Float32(torch.nn.Module):  # the workaround below makes ART send float64 arrays
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.float())

    return PyTorchClassifier(
        model=_Float32(model),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(3, 32, 32),
        nb_classes=43,
        clip_values=(0.0, 1.0),
    )


# ART's patch is a circle inside a square of side scale × 32: area = π/4 · scale²
ART_SCALE = math.sqrt(0.05 * 4 / math.pi)


def _art_numpy_patch(clf, args):
    from art.attacks.evasion import AdversarialPatchNumpy

    # ART bug (1.x): AdversarialPatchNumpy.__init__ calls reset_patch(mean of clip_values),
    # which is a numpy float32, not a Python float, and falls through to `self.patch`, not yet
    # set: AttributeError. float64 clip values (a float subclass) avoid it.
    clf._clip_values = np.asarray(clf.clip_values, dtype=np.float64)
    return AdversarialPatchNumpy(
        clf,
        target=SPEED30,
        rotation_max=20.0,
        scale_min=ART_SCALE,
        scale_max=ART_SCALE + 1e-6,
        max_iter=args.patch_steps,
        batch_size=args.batch_size,
        verbose=False,
    )


def _art_fit(art, train, args):
    """ART's fit, timed: ``(patch, wall seconds, process CPU seconds)``. One ART iteration
    takes a gradient over every image given: a batch of batch_size training images makes one
    iteration one step of batch_size gradients, as in advex."""
    xb = train.x[: args.batch_size].numpy()
    y_onehot = np.zeros((xb.shape[0], 43), dtype=np.float32)
    y_onehot[:, SPEED30] = 1
    t0, c0 = time.perf_counter(), time.process_time()
    patch, _mask = art.generate(x=xb, y=y_onehot)
    return patch, time.perf_counter() - t0, time.process_time() - c0


def _art(model, train, test, args) -> dict:
    out: dict = {}
    clf = _art_classifier(model)
    try:
        from art.attacks.evasion import AdversarialPatchPyTorch

        AdversarialPatchPyTorch(clf, patch_shape=(3, 32, 32), max_iter=1, verbose=False)
        out["AdversarialPatchPyTorch"] = "constructed (unexpected here)"
    except Exception as e:  # what it raises without torchvision
        out["AdversarialPatchPyTorch"] = (
            f"cannot run: {type(e).__name__}: {e} (ART's AdversarialPatchPyTorch imports "
            "torchvision in its constructor and uses torchvision.transforms.functional for "
            "resize/pad/perspective; advex does not install torchvision)"
        )
    art = _art_numpy_patch(clf, args)
    out["AdversarialPatchNumpy_workaround"] = (
        "clip_values cast to float64: with ART's float32 clip values the constructor raises "
        "AttributeError: 'AdversarialPatchNumpy' object has no attribute 'patch'"
    )
    patch, fit_s, fit_cpu = _art_fit(art, train, args)
    np.random.seed(77)
    patched = art.apply_patch(test.x.numpy(), scale=ART_SCALE, patch_external=patch)
    with torch.no_grad():
        success = float(
            (model(torch.from_numpy(patched).float()).argmax(1) == SPEED30).float().mean()
        )
    out["AdversarialPatchNumpy"] = {
        "fit_seconds": round(fit_s, 2),
        "fit_cpu_s": round(fit_cpu, 2),
        "steps": args.patch_steps,
        "batch_size": args.batch_size,
        "scale": ART_SCALE,
        "area": math.pi / 4 * ART_SCALE**2,
        "digital_random_placement_success": success,
        "learning_rate": art.learning_rate,
    }
    return out


def _timing_repeats(model, train, args) -> list[dict]:
    """``--timing-repeats N``: N more fits of the advex patch and of ART's, same model, patch
    area, steps and batch, alternating which goes first; wall and process-CPU seconds of each
    (the load on a shared machine changes within minutes: the ratio of each pair is measured
    under about the same load)."""
    rows = []
    for r in range(args.timing_repeats):
        row: dict = {"repeat": r + 1, "loadavg_start": os.getloadavg()[0]}
        order = ("art", "advex") if r % 2 == 0 else ("advex", "art")
        for who in order:
            if who == "advex":
                ap = AdversarialPatch(
                    target=SPEED30,
                    area=0.05,
                    steps=args.patch_steps,
                    batch_size=args.batch_size,
                    seed=0,
                )
                t0, c0 = time.perf_counter(), time.process_time()
                ap.fit(model, *train.tensors())
                row["advex_s"] = round(time.perf_counter() - t0, 2)
                row["advex_cpu_s"] = round(time.process_time() - c0, 2)
            else:
                _, wall, cpu = _art_fit(_art_numpy_patch(_art_classifier(model), args), train, args)
                row["art_s"], row["art_cpu_s"] = round(wall, 2), round(cpu, 2)
        row["ratio_wall"] = round(row["advex_s"] / row["art_s"], 3)
        row["ratio_cpu"] = round(row["advex_cpu_s"] / row["art_cpu_s"], 3)
        row["loadavg_end"] = os.getloadavg()[0]
        print("timing repeat", json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test)")
    ap.add_argument("--steps", type=int, default=None, help="RP2 steps (500)")
    ap.add_argument("--patch-steps", type=int, default=None, help="patch steps (500)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--views", type=int, default=None, help="held-out views per stop sign (20)")
    ap.add_argument("--patch-views", type=int, default=None, help="views per image (5)")
    ap.add_argument(
        "--rp2-mask",
        default="two-bars",
        help="RP2 sticker: a mask name, or square:AREA (e.g. square:0.1); default two-bars",
    )
    ap.add_argument(
        "--widen",
        default="1,1.25",
        help="RP2: held-out view distributions to measure (1 = as drawn; 1.25 = every range "
        "×1.25); default 1,1.25",
    )
    ap.add_argument(
        "--parts",
        default="rp2,patch,art",
        help="comma-separated parts to run: rp2, patch, art (art needs patch; default all), "
        "timing (only the --timing-repeats fits)",
    )
    ap.add_argument(
        "--timing-repeats",
        type=int,
        default=0,
        help="after the ART part: N more advex/ART patch fits, timing only (wall and CPU)",
    )
    ap.add_argument("--no-art", action="store_true")
    ap.add_argument(
        "--art-only",
        action="store_true",
        help="add the ART rows to an existing --out JSON (same data draw)",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--model", default=None, help="zoo model (default gtsrb-cnn; --quick: -small)")
    ap.add_argument("--figures", default=None, help="folder for the docs figures")
    args = ap.parse_args()
    q = args.quick
    args.steps = args.steps or (10 if q else 500)
    args.patch_steps = args.patch_steps or (10 if q else 500)
    args.views = args.views or (2 if q else 20)
    args.patch_views = args.patch_views or (2 if q else 5)
    args.widen = sorted({float(w) for w in args.widen.split(",") if w.strip()} | {1.0})
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"rp2", "patch", "art", "timing"}
    if unknown:
        ap.error(f"--parts: unknown part(s) {sorted(unknown)}; expected rp2, patch, art, timing")
    if "timing" in parts and not args.timing_repeats:
        ap.error("--parts timing needs --timing-repeats N")
    if args.no_art:
        parts.discard("art")
    if args.art_only:
        parts = {"art"}
    elif "art" in parts and "patch" not in parts:
        ap.error("--parts: art is compared with the advex patch of the same run: add patch")
    root = traffic_data_root()
    # --quick (the smoke test) uses the cheap test model; the full run the reference model
    model_name = args.model or ("gtsrb-cnn-small" if q else "gtsrb-cnn")
    model = zoo.load(model_name, data_root=root, progress=not q)
    results = {
        "model": {
            k: model.card.get(k)
            for k in ("accuracy", "train_time_s", "train_cpu_s", "n_train", "n_test", "recipe_id")
        },
        "model_name": model_name,
        "torch_threads": torch.get_num_threads(),
        "quick": q,
        "parts": sorted(parts),
        "loadavg_start": os.getloadavg(),
    }
    if args.art_only:
        results = json.loads(Path(args.out).read_text())
    if "rp2" in parts:
        results["rp2"] = _rp2(model, root, args)
        if args.out:  # written after every part, so a later failure keeps what was measured
            write_json(args.out, results)
        r = results["rp2"]["held_out"]
        print(
            f"RP2 stop -> speed limit (30km/h), {args.rp2_mask} area "
            f"{results['rp2']['area']:.1%}: targeted success {r['success']:.1%} over "
            f"{r['n_images']} held-out stop signs x {r['n_views']} held-out views; "
            f"random-sticker control {r['control_success']:.1%}; fit "
            f"{results['rp2']['fit_seconds']:.0f} s wall, {results['rp2']['fit_cpu_s']:.0f} CPU-s"
        )
    if parts & {"patch", "art", "timing"}:
        g = torch.Generator().manual_seed(0)
        train, test = _patch_data(root, args, g)
    if "patch" in parts:
        results["patch"] = _patch(model, train, test, args)
        if args.out:
            write_json(args.out, results)
        p = results["patch"]
        print(
            f"universal patch 5%: targeted success {p['held_out']['success']:.1%} over "
            f"{p['held_out']['n_images']} held-out images x {p['held_out']['n_views']} views "
            f"(control {p['held_out']['control_success']:.1%}); digital random placement "
            f"{p['digital_random_placement_success']:.1%}; fit {p['fit_seconds']:.0f} s wall, "
            f"{p['fit_cpu_s']:.0f} CPU-s"
        )
    if "art" in parts:
        results["art"] = _art(model, train, test, args)
        a = results["art"]
        p = results["patch"]
        print("ART AdversarialPatchPyTorch:", a["AdversarialPatchPyTorch"])
        n = a["AdversarialPatchNumpy"]
        n["advex_over_art_wall"] = round(p["fit_seconds"] / max(n["fit_seconds"], 1e-9), 3)
        n["advex_over_art_cpu"] = round(p["fit_cpu_s"] / max(n["fit_cpu_s"], 1e-9), 3)
        print(
            f"ART AdversarialPatchNumpy (same model, area, steps, batch): digital random "
            f"placement success {n['digital_random_placement_success']:.1%}, fit "
            f"{n['fit_seconds']:.0f} s wall, {n['fit_cpu_s']:.0f} CPU-s; advex "
            f"{p['digital_random_placement_success']:.1%}, {p['fit_seconds']:.0f} s wall, "
            f"{p['fit_cpu_s']:.0f} CPU-s; time ratio advex/ART wall "
            f"{n['advex_over_art_wall']:.2f}, CPU {n['advex_over_art_cpu']:.2f}"
        )
        if args.out:
            write_json(args.out, results)
        if args.timing_repeats:
            results["art_timing_repeats"] = _timing_repeats(model, train, args)
    elif "timing" in parts:  # timing only: the repeats, without the evaluations
        results["art_timing_repeats"] = _timing_repeats(model, train, args)
    results["loadavg_end"] = os.getloadavg()
    if args.out:
        write_json(args.out, results)
        print("wrote", args.out)


if __name__ == "__main__":
    main()

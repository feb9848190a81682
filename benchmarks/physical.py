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
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

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
    rp2 = RP2(
        "two-bars",
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
        "fit_images": len(fit),
        "fit_seconds": round(fit_s, 2),
        "fit_cpu_minutes": round(fit_cpu / 60, 2),  # process CPU time, all threads
        "steps": args.steps,
        "batch_size": args.batch_size,
        "fit_forward_passes": rp2.fit_queries_,
        "area": rp2.threat.area,
        "fit_success_on_training_views": rp2.fit_success_,
    }
    for widen in (1.0, 1.25):
        ev = physical_evaluation(
            model,
            rp2.sticker_,
            rp2.threat,
            *test.tensors(),
            target=SPEED30,
            n_views=args.views,
            seed=1000,
            widen=widen,
        )
        key = "held_out" if widen == 1.0 else "held_out_widened_1.25"
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
        from pathlib import Path

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
        ev = physical_evaluation(
            model,
            rp2.sticker_,
            rp2.threat,
            *test.tensors(),
            target=SPEED30,
            n_views=args.views,
            seed=1000,
        )
        save_breakdown_figure(d / "physical-rp2-breakdown.png", ev)
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
        from pathlib import Path

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


def _art(model, train, test, args) -> dict:
    out: dict = {}
    from art.estimators.classification import PyTorchClassifier

    class _Float32(torch.nn.Module):  # the workaround below makes ART send float64 arrays
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.float())

    clf = PyTorchClassifier(
        model=_Float32(model),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(3, 32, 32),
        nb_classes=43,
        clip_values=(0.0, 1.0),
    )
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
    from art.attacks.evasion import AdversarialPatchNumpy

    # ART bug (1.x): AdversarialPatchNumpy.__init__ calls reset_patch(mean of clip_values),
    # which is a numpy float32, not a Python float, and falls through to `self.patch`, not yet
    # set: AttributeError. float64 clip values (a float subclass) avoid it.
    clf._clip_values = np.asarray(clf.clip_values, dtype=np.float64)
    out["AdversarialPatchNumpy_workaround"] = (
        "clip_values cast to float64: with ART's float32 clip values the constructor raises "
        "AttributeError: 'AdversarialPatchNumpy' object has no attribute 'patch'"
    )

    # ART's patch is a circle inside a square of side scale × 32: area = π/4 · scale²
    scale = math.sqrt(0.05 * 4 / math.pi)
    art = AdversarialPatchNumpy(
        clf,
        target=SPEED30,
        rotation_max=20.0,
        scale_min=scale,
        scale_max=scale + 1e-6,
        max_iter=args.patch_steps,
        batch_size=args.batch_size,
        verbose=False,
    )
    # one ART iteration takes a gradient over every image given: a batch of batch_size
    # training images makes one iteration one step of batch_size gradients, as in advex
    xb = train.x[: args.batch_size].numpy()
    y_onehot = np.zeros((xb.shape[0], 43), dtype=np.float32)
    y_onehot[:, SPEED30] = 1
    t0 = time.perf_counter()
    patch, _mask = art.generate(x=xb, y=y_onehot)
    fit_s = time.perf_counter() - t0
    np.random.seed(77)
    patched = art.apply_patch(test.x.numpy(), scale=scale, patch_external=patch)
    with torch.no_grad():
        success = float(
            (model(torch.from_numpy(patched).float()).argmax(1) == SPEED30).float().mean()
        )
    out["AdversarialPatchNumpy"] = {
        "fit_seconds": round(fit_s, 2),
        "steps": args.patch_steps,
        "batch_size": args.batch_size,
        "scale": scale,
        "area": math.pi / 4 * scale**2,
        "digital_random_placement_success": success,
        "learning_rate": art.learning_rate,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test)")
    ap.add_argument("--steps", type=int, default=None, help="RP2 steps (500)")
    ap.add_argument("--patch-steps", type=int, default=None, help="patch steps (500)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--views", type=int, default=None, help="held-out views per stop sign (20)")
    ap.add_argument("--patch-views", type=int, default=None, help="views per image (5)")
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
    root = traffic_data_root()
    # --quick (the smoke test) uses the cheap test model; the full run the reference model
    model_name = args.model or ("gtsrb-cnn-small" if q else "gtsrb-cnn")
    model = zoo.load(model_name, data_root=root, progress=not q)
    results = {
        "model": {
            k: model.card.get(k)
            for k in ("accuracy", "train_time_s", "train_cpu_s", "n_train", "n_test")
        },
        "model_name": model_name,
        "torch_threads": torch.get_num_threads(),
        "quick": q,
    }
    if args.art_only:
        import json
        from pathlib import Path

        results = json.loads(Path(args.out).read_text())
    else:
        results["rp2"] = _rp2(model, root, args)
    if args.out:  # written after every part, so a later failure keeps what was measured
        write_json(args.out, results)
    r = results["rp2"]["held_out"]
    print(
        f"RP2 stop -> speed limit (30km/h), area {results['rp2']['area']:.1%}: targeted "
        f"success {r['success']:.1%} over {r['n_images']} held-out stop signs x {r['n_views']} "
        f"held-out views; random-sticker control {r['control_success']:.1%}; fit "
        f"{results['rp2']['fit_seconds']:.0f} s"
    )
    g = torch.Generator().manual_seed(0)
    train, test = _patch_data(root, args, g)
    if not args.art_only:
        results["patch"] = _patch(model, train, test, args)
    if args.out:
        write_json(args.out, results)
    p = results["patch"]
    print(
        f"universal patch 5%: targeted success {p['held_out']['success']:.1%} over "
        f"{p['held_out']['n_images']} held-out images x {p['held_out']['n_views']} views "
        f"(control {p['held_out']['control_success']:.1%}); digital random placement "
        f"{p['digital_random_placement_success']:.1%}; fit {p['fit_seconds']:.0f} s"
    )
    if not args.no_art:
        results["art"] = _art(model, train, test, args)
        a = results["art"]
        print("ART AdversarialPatchPyTorch:", a["AdversarialPatchPyTorch"])
        n = a["AdversarialPatchNumpy"]
        print(
            f"ART AdversarialPatchNumpy (same model, area, steps, batch): digital random "
            f"placement success {n['digital_random_placement_success']:.1%}, fit "
            f"{n['fit_seconds']:.0f} s; advex {p['digital_random_placement_success']:.1%}, "
            f"{p['fit_seconds']:.0f} s; time ratio advex/ART "
            f"{p['fit_seconds'] / max(n['fit_seconds'], 1e-9):.2f}"
        )
    if args.out:
        write_json(args.out, results)
        print("wrote", args.out)


if __name__ == "__main__":
    main()

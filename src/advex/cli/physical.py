"""``advex physical``: a sticker (RP2) or a universal patch, fitted on training images and
measured over held-out views of held-out images, with print-ready output."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import echo_files, load_model, prepare_out, run_errors

__all__ = ["physical", "run_patch_evaluate"]


def _load(spec: str, split: str, classes=None):
    """``--data`` for one split; a ``gtsrb:PATH`` spec reads only the classes needed."""
    import warnings

    from advex import data as D

    kind, sep, path = spec.partition(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.GTSRBWarning)  # the partial training copy is expected
        try:
            if kind.strip().lower() == "gtsrb" and sep and path.strip():
                return D.gtsrb(path.strip(), split, classes=classes)
            return D.load(spec, split)
        except (ValueError, FileNotFoundError, OSError) as err:
            raise click.UsageError(f"--data {spec!r} ({split}): {err}") from err


@click.command("physical")
@click.option(
    "--model",
    "model_spec",
    default="gtsrb-cnn",
    show_default=True,
    help="Zoo name, model directory, or package.module:factory.",
)
@click.option(
    "--data",
    "data_spec",
    required=True,
    help="Dataset spec with a train and a test split, e.g. gtsrb:PATH.",
)
@click.option(
    "--attack",
    "attack_name",
    type=click.Choice(["rp2", "patch"]),
    default="rp2",
    show_default=True,
    help="rp2: a sticker on the source object; patch: a "
    "universal patch at random places on images of every class.",
)
@click.option("--source", default=None, help="Class the sticker goes on (rp2), e.g. stop.")
@click.option(
    "--target",
    default=None,
    help="Target class (index or name, e.g. 'speed limit (30km/h)'); rp2 without it "
    "is untargeted; required for patch.",
)
@click.option(
    "--mask",
    "mask_spec",
    default="two-bars",
    show_default=True,
    help="rp2 sticker shape: two-bars, graffiti, square, or a PNG path.",
)
@click.option(
    "--area", default=0.05, show_default=True, type=float, help="Area fraction of --mask square."
)
@click.option(
    "--patch-area",
    default=0.05,
    show_default=True,
    type=float,
    help="Area fraction of the universal patch (--attack patch).",
)
@click.option(
    "--patch-region",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    help="--attack patch: the patch lies wholly inside the central square of this fraction "
    "of the image side (1: anywhere; 0.8: on a GTSRB sign's face).",
)
@click.option(
    "--patch-loss",
    type=click.Choice(["ce", "margin"]),
    default="ce",
    show_default=True,
    help="--attack patch: cross-entropy of the target (Brown et al.) or the CW margin "
    "(fooled draws stop pulling).",
)
@click.option(
    "--kappa",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="--patch-loss margin: the margin's confidence κ.",
)
@click.option(
    "--restarts",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="--attack patch: fit this many patches, keep the best on held-out fitting images.",
)
@click.option("--steps", default=500, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="(image, view) pairs per optimisation step.",
)
@click.option("--lr", default=0.1, show_default=True, type=float)
@click.option(
    "--n-fit",
    default=None,
    type=click.IntRange(min=1),
    help="Fit on at most this many training images (default: all of the source class "
    "for rp2, 2000 for patch).",
)
@click.option(
    "--n-eval",
    default=None,
    type=click.IntRange(min=1),
    help="Evaluate on at most this many held-out test images (default: all of the "
    "source class for rp2, 1000 for patch).",
)
@click.option(
    "--views",
    "n_views",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Held-out viewing conditions per evaluation image.",
)
@click.option(
    "--widen",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="Widen the held-out viewing ranges by this factor.",
)
@click.option(
    "--print-width-cm",
    default=30.0,
    show_default=True,
    type=float,
    help="Physical width the image spans on the real sign (for sticker.png).",
)
@click.option("--dpi", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--out",
    default="advex-physical",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output directory.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def physical(**options):
    """Fit a physical sticker or patch and measure it over held-out views.

    Writes sticker.png (print-ready at --print-width-cm and --dpi, transparent outside the
    mask), mask.png, sticker.safetensors (tensors `sticker` (3,H,W) and `mask` (1,H,W) at the
    model's input size: re-apply as x*(1-mask) + sticker*mask), results.json (targeted success
    over held-out views, the random-sticker control, area, per-condition breakdown), views.png,
    breakdown.png and report.html.

    \b
      advex physical --data gtsrb:../shared/datasets/gtsrb-32x32 --source stop \\
          --target "speed limit (30km/h)" --attack rp2 --mask two-bars --out stop-rp2
      advex physical --data gtsrb:PATH --attack patch --patch-area 0.05 \\
          --target "speed limit (30km/h)" --out patch
    """
    run_errors(_run, **options)


def _run(
    model_spec,
    data_spec,
    attack_name,
    source,
    target,
    mask_spec,
    area,
    patch_area,
    patch_region,
    patch_loss,
    kappa,
    restarts,
    steps,
    batch_size,
    lr,
    n_fit,
    n_eval,
    n_views,
    widen,
    print_width_cm,
    dpi,
    seed,
    out,
    progress,
):
    import torch
    from safetensors.torch import save_file

    from advex._io import atomic_write, write_json
    from advex.attacks.physical import RP2, AdversarialPatch
    from advex.data import class_index
    from advex.evaluate.physical import physical_evaluation, source_images
    from advex.report.physical import (
        save_breakdown_figure,
        save_physical_html,
        save_print_png,
        save_views_figure,
    )

    out_dir = prepare_out(out)
    model = load_model(model_spec)
    g = torch.Generator().manual_seed(seed)
    if attack_name == "rp2":
        if source is None:
            raise click.UsageError("--attack rp2 needs --source (the class the sticker goes on)")
        only = [source] if data_spec.strip().lower().startswith("gtsrb:") else None
        fit_ds = _load(data_spec, "train", classes=only)
        names = fit_ds.class_names
        src = class_index(names, source, what="--source")
        tgt = None if target is None else class_index(names, target, what="--target")
        if tgt is not None and tgt == src:
            raise click.UsageError(
                f"--source and --target are the same class ({src}: {names[src]!r})"
            )
        fit_ds = source_images(fit_ds, src, what="--source")
        eval_ds = source_images(_load(data_spec, "test", classes=only), src, what="--source")
        if n_fit:
            fit_ds = fit_ds.subset(n_fit)
        if n_eval:
            eval_ds = eval_ds.subset(n_eval)
        attack = RP2(
            mask_spec,
            target=tgt,
            size=fit_ds.x.shape[-1],
            area=area,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            progress=progress,
        )
    else:
        if target is None:
            raise click.UsageError("--attack patch needs --target (a universal patch is targeted)")
        fit_ds = _load(data_spec, "train")
        names = fit_ds.class_names
        tgt = class_index(names, target, what="--target")
        src = None
        fit_ds = fit_ds.subset(torch.randperm(len(fit_ds), generator=g)[: n_fit or 2000])
        eval_ds = _load(data_spec, "test")
        eval_ds = eval_ds.subset(torch.randperm(len(eval_ds), generator=g)[: n_eval or 1000])
        attack = AdversarialPatch(
            target=tgt,
            area=patch_area,
            size=fit_ds.x.shape[-1],
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            loss=patch_loss,
            kappa=kappa,
            patch_region=patch_region,
            restarts=restarts,
            seed=seed,
            progress=progress,
        )
    t0 = time.perf_counter()
    attack.fit(model, fit_ds.tensors())
    fit_s = time.perf_counter() - t0
    threat = attack.threat
    sticker = attack.sticker_
    ev = physical_evaluation(
        model,
        sticker,
        threat,
        *eval_ds.tensors(),
        target=tgt,
        n_views=n_views,
        seed=seed + 1000,
        widen=widen,
    )
    if threat.placement == "fixed":
        mask = threat.mask.clone()
        full = sticker * mask
    else:
        mask = torch.ones(1, *sticker.shape[-2:])
        full = sticker
    files = {}
    tensors = {"sticker": full.contiguous().float(), "mask": mask.contiguous().float()}
    files["sticker.safetensors"] = out_dir / "sticker.safetensors"
    atomic_write(files["sticker.safetensors"], lambda tmp: save_file(tensors, tmp))
    files["sticker.png"] = out_dir / "sticker.png"
    printed = save_print_png(files["sticker.png"], sticker, mask, width_cm=print_width_cm, dpi=dpi)
    files["mask.png"] = out_dir / "mask.png"
    save_print_png(
        files["mask.png"], mask.expand(3, -1, -1), None, width_cm=print_width_cm, dpi=dpi
    )
    held = threat.views.held_out(seed + 1000, widen)
    show = eval_ds.x[:3]
    files["views.png"] = save_views_figure(
        out_dir / "views.png", model, show, sticker, threat, held, names
    )
    files["breakdown.png"] = save_breakdown_figure(out_dir / "breakdown.png", ev)
    results = {
        "command": "physical",
        "attack": attack.name,
        "model": model_spec,
        "data": data_spec,
        "source": None if src is None else {"index": src, "name": names[src]},
        "target": None if tgt is None else {"index": tgt, "name": names[tgt]},
        "success_over_held_out_views": ev["success"],
        "control_success": ev["control_success"],
        "clean_view_accuracy": ev["clean_view_accuracy"],
        "area_fraction": threat.area,
        "threat": threat.to_dict(),
        "fit": {
            "images": len(fit_ds),
            "steps": steps,
            "batch_size": batch_size,
            "seconds": round(fit_s, 2),
            "forward_passes": attack.fit_queries_,
            "gradients": attack.fit_gradients_,
            "success_on_fit_views": attack.fit_success_,
            **(
                {
                    "loss": attack.loss,
                    "kappa": attack.kappa,
                    "restarts": attack.restarts,
                    "restart_scores": attack.restart_scores_,
                }
                if attack_name == "patch"
                else {}
            ),
        },
        "print": printed,
        "seed": seed,
        "evaluation": ev,
    }
    files["results.json"] = out_dir / "results.json"
    write_json(files["results.json"], results)
    files["report.html"] = save_physical_html(
        out_dir / "report.html",
        results,
        {
            "Held-out views (top-3 predictions)": files["views.png"],
            "Success by viewing condition": files["breakdown.png"],
        },
        title=f"advex physical: {attack.name}",
    )
    what = "targeted" if tgt is not None else "untargeted"
    click.echo(
        f"{attack.name}: {what} success {ev['success']:.1%} over {ev['n_images']} held-out "
        f"images x {ev['n_views']} views (random sticker control {ev['control_success']:.1%}, "
        f"clean accuracy under the views {ev['clean_view_accuracy']:.1%}); area "
        f"{threat.area:.1%}; fitted in {fit_s:.0f} s"
    )
    echo_files(out_dir, [Path(p) for p in files.values()])


def run_patch_evaluate(source, run, *, area, steps, eot, targeted, target) -> None:
    """``advex evaluate --threat patch``: robust accuracy under a per-image patch of ``area``
    at a random placement (:func:`advex.evaluate.physical.patch_robust_accuracy`); writes
    results.json (and triptych.png) into ``--out`` like the custom mode of the command."""
    from advex.evaluate.physical import patch_robust_accuracy
    from advex.report import format_table, save_triptych, to_json

    from .common import command_line, targets_for, warn_clean_accuracy

    if not 0 < area < 1:
        raise click.BadParameter(f"must be in (0, 1), got {area}", param_hint="--patch-area")
    out_dir = prepare_out(run.out, "evaluate --threat patch", run.force)
    ds = source.load_data()
    model = source.load_model()
    tgt = targets_for(ds, targeted, target, run.seed)
    t0 = time.perf_counter()
    res = run_errors(
        patch_robust_accuracy,
        model,
        ds,
        area=area,
        steps=steps,
        eot_placements=eot,
        target=tgt,
        seed=run.seed,
        batch_size=run.batch_size,
        progress=run.progress,
    )
    click.echo(f"patch of {area:.1%} of the image, random placement ({steps} steps × {eot} EOT)")
    click.echo(format_table(res))
    warn_clean_accuracy(res.clean_accuracy, res.n)
    files = [out_dir / "results.json"]
    if res.examples is not None:
        files.append(save_triptych(res.examples, out_dir / "triptych.png"))
    kept = getattr(res, "results", None) or {}
    threat = next(iter(kept.values())).threat.to_dict() if kept else {"threat": "patch"}
    doc = {
        **source.meta(res.n),
        "threat_model": "patch",
        "patch": {"area": area, "steps": steps, "eot_placements": eot},
        "seconds": round(time.perf_counter() - t0, 2),
        "evaluation": res,
    }
    to_json(doc, out_dir / "results.json", seed=run.seed, threat=threat, command=command_line())
    echo_files(out_dir, files)

"""``advex demo``: attack an MNIST CNN end to end and write a small report."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import command_line, echo_files, prepare_out, slug

__all__ = ["demo"]


@click.command(short_help="Attack an MNIST CNN end to end; write a small report.")
@click.option(
    "--out",
    default="advex-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for results.json and PNGs.",
)
@click.option(
    "--n",
    "n",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of test digits to attack (max 1000).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the attacks.")
@click.option(
    "--quick", is_flag=True, help="Fewer PGD steps (10 instead of 40) and fewer ε on the curve."
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr."
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into an --out folder holding another kind of run, removing its files first.",
)
def demo(out: str, n: int, seed: int, quick: bool, progress: bool, force: bool) -> None:
    """Attack an MNIST CNN end to end and write a small report.

    Gets the zoo model mnist-smallcnn (trained and cached on first use), attacks the first N
    mnist5k test digits with FGSM (L∞, ε=0.3), PGD-40 (ε=0.3) and a targeted PGD that turns
    every digit into a "3" (digits labelled 3 excluded), prints a table, and writes
    results.json, triptych_*.png (original | perturbation | adversarial) and curve.png (robust
    accuracy vs ε) into --out.
    """
    from advex import data as D
    from advex import zoo
    from advex.attacks.gradient import FGSM, PGD
    from advex.evaluate import robust_accuracy, robustness_curve
    from advex.report import format_curve, format_table, save_curve, save_triptych, to_json

    t_start = time.perf_counter()
    out_dir = prepare_out(out, "demo", force)
    steps = 10 if quick else 40
    eps = 0.3
    eps_list = [0.0, 0.1, 0.2, 0.3] if quick else [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    target_class = 3

    name = "mnist-smallcnn"
    try:
        zoo.load_card(name)
        cached = True
    except FileNotFoundError:
        cached = False
    if cached:
        click.echo(f"[1/4] model: {name} (cached in {zoo.cache_dir()})")
    else:
        click.echo(
            f"[1/4] model: training {name} on first use (about a minute on a laptop "
            f"CPU; cached in {zoo.cache_dir()})"
        )
    t0 = time.perf_counter()
    model = zoo.load(name, progress=progress)
    train_s = time.perf_counter() - t0
    card = getattr(model, "card", {})

    ds = D.mnist5k("test")
    if n > len(ds):
        click.echo(f"note: mnist5k has {len(ds)} test digits; using all of them")
    ds = ds.subset(n)
    click.echo(
        f"[2/4] attacking {len(ds)} test digits: FGSM and PGD-{steps} (Linf, eps={eps}), "
        f"targeted PGD-{steps} -> '{target_class}'"
    )
    attacks = {
        "fgsm": FGSM(eps=eps, seed=seed),
        f"pgd-{steps}": PGD(eps=eps, steps=steps, seed=seed),
    }
    untargeted = robust_accuracy(model, ds, attacks, independent=True, progress=progress)
    tname = f"pgd-{steps} -> {target_class}"
    targeted = robust_accuracy(
        model,
        ds,
        {tname: PGD(eps=eps, steps=steps, seed=seed)},
        target=target_class,
        progress=progress,
    )
    click.echo(f"[3/4] robust accuracy vs eps over {eps_list}")
    curve = robustness_curve(
        model,
        ds,
        {"fgsm": attacks["fgsm"], f"pgd-{steps}": attacks[f"pgd-{steps}"]},
        eps_list,
        progress=progress,
    )

    click.echo("[4/4] writing the report\n")
    click.echo(format_table({"untargeted": untargeted, "targeted": targeted}))
    click.echo(
        f"(targeted: the {targeted.n_skipped} digits labelled {target_class} are "
        "excluded; success = classified as the target)\n"
    )
    click.echo(format_curve(curve))

    files: list[Path] = []
    for res in (untargeted, targeted):
        for aname, ex in res.attack_examples.items():
            suffix = slug(aname.replace("->", " target "))
            files.append(save_triptych(ex, out_dir / f"triptych_{suffix}.png", max_rows=6))
    files.append(save_curve(curve, out_dir / "curve.png"))
    doc = {
        "model": {
            "name": name,
            "accuracy": card.get("accuracy"),
            "accuracy_split": card.get("accuracy_split"),
            "trained_now": not cached,
            "load_or_train_s": train_s,
        },
        "data": {"name": ds.name, "n": len(ds)},
        "untargeted": untargeted,
        "targeted": targeted,
        "curve": curve,
    }
    total = time.perf_counter() - t_start
    to_json(
        doc,
        out_dir / "results.json",
        seed=seed,
        threat=attacks["fgsm"].threat,
        command=command_line(),
        meta={"wall_time_s": total},
    )
    files.insert(0, out_dir / "results.json")
    echo_files(out_dir, files)
    click.echo(f"done in {total:.1f} s")

"""``advex generator``: train an adversarial generator (AdvGAN) and report what it does.

``advex generator fit`` trains :class:`advex.attacks.AdvGAN` against a model (seeded,
resumable, with a progress bar), saves it (``generator.safetensors`` + ``card.json``), and
writes a report: success on held-out data next to uniform noise of the same budget, the
throughput of one generator pass per image next to advex's PGD-40 on the same model and
points, and a grid of generated examples. ``advex attack --attack advgan --generator DIR``
then uses the saved generator like any other attack.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import load_data, load_model, prepare_out, run_errors

__all__ = ["generator", "save_grid", "generator_report"]


@click.group(short_help="Train adversarial generators (AdvGAN) and report on them.")
def generator() -> None:
    """Adversarial generators: `advex generator fit` trains one (AdvGAN, Xiao et al. 2018);
    `advex attack --attack advgan --generator DIR` runs a saved one."""


@generator.command("fit", short_help="Train an AdvGAN generator against a model.")
@click.option(
    "--model",
    "model_spec",
    default="mnist-smallcnn",
    show_default=True,
    help="The target: a zoo name, a model directory, module:factory (with --weights) or .pt2.",
)
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--normalize", metavar="MEAN,STD", default=None)
@click.option(
    "--data",
    "data_spec",
    default="mnist5k",
    show_default=True,
    help="Dataset spec: the train split trains G, the test split is reported on.",
)
@click.option("--eps", type=float, default=0.3, show_default=True, help="Budget ε (> 0).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--target", type=int, default=None, help="Target class (default: untargeted).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--alpha", type=float, default=0.01, show_default=True, help="GAN loss weight.")
@click.option("--beta", type=float, default=1.0, show_default=True, help="Hinge loss weight.")
@click.option("--kappa", type=float, default=5.0, show_default=True, help="Margin confidence.")
@click.option(
    "--saturation",
    type=float,
    default=1.0,
    show_default=True,
    help="L∞: weight of the penalty keeping G(x) out of tanh's flat tails.",
)
@click.option("--width", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--blocks", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--sampling", type=click.Choice(["conv", "pixel"]), default="conv", show_default=True)
@click.option("--schedule", default="cosine", show_default=True)
@click.option(
    "--n-train",
    type=click.IntRange(min=2),
    default=None,
    help="Train on the first N points of the train split (default: all).",
)
@click.option(
    "--eval-n",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Test points for the report (success, throughput).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory for generator.safetensors, card.json, checkpoint, report.json, grid.png.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT's checkpoint.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def fit(
    model_spec,
    weights,
    normalize,
    data_spec,
    eps,
    norm,
    target,
    epochs,
    batch_size,
    lr,
    alpha,
    beta,
    kappa,
    saturation,
    width,
    blocks,
    sampling,
    schedule,
    n_train,
    eval_n,
    out,
    seed,
    resume,
    progress,
) -> None:
    """Train AdvGAN against --model on --data's train split; write the generator and a report.

    \b
    Example:
      advex generator fit --model mnist-smallcnn --data mnist5k --eps 0.3 --out gens/mnist
      advex attack --attack advgan --generator gens/mnist --n 200 --out out/
    """
    from advex.attacks import AdvGAN

    if not eps > 0:
        raise click.UsageError(f"--eps must be > 0, got {eps}")
    out_dir = prepare_out(out)
    train = load_data(data_spec, "train", n_train)
    test = load_data(data_spec, "test", eval_n)
    model = load_model(model_spec, weights, normalize)
    atk = run_errors(
        AdvGAN,
        eps,
        norm,
        target=target,
        alpha=alpha,
        beta=beta,
        kappa=kappa,
        saturation=saturation,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        schedule=schedule,
        width=width,
        blocks=blocks,
        sampling=sampling,
        bounds=train.bounds,
        seed=seed,
        progress=progress,
    )
    t0 = time.perf_counter()
    run_errors(atk.fit, model, train, out_dir=out_dir / "checkpoint", resume=resume)
    fit_s = time.perf_counter() - t0
    atk.save(out_dir)
    report = run_errors(generator_report, atk, model, test, seed=seed)
    report.update({"fit_seconds_this_session": fit_s, "history": atk.history_})
    from advex._io import write_json

    write_json(out_dir / "report.json", report)
    grid = save_grid(atk, model, test, out_dir / "grid.png")
    click.echo(
        f"trained AdvGAN ({norm}, eps={eps}) in {fit_s:.0f} s; on {report['n']} test points: "
        f"success {report['success']:.1%} (uniform noise {report['noise_success']:.1%}), "
        f"{report['generate_images_per_s']:.0f} images/s generated vs "
        f"{report['pgd40_images_per_s']:.1f} for PGD-40 "
        f"({report['throughput_ratio_vs_pgd40']:.0f}x)"
    )
    for p in (out_dir / "generator.safetensors", out_dir / "card.json", out_dir / "report.json"):
        click.echo(f"wrote {p}")
    click.echo(f"wrote {grid}")


def generator_report(atk, model, data, *, seed: int = 0) -> dict:
    """Success of ``atk`` (a fitted :class:`~advex.attacks.AdvGAN`) on ``data`` next to uniform
    noise of the same L∞ budget (L2: a random direction at the full budget), and the throughput
    (images/s) of :meth:`~advex.attacks.AdvGAN.generate` next to advex's PGD-40 (early exit,
    as every advex attack) on the same model and points, measured one after the other."""
    import torch

    from advex.attacks import PGD

    x, y = data.tensors()
    keep = torch.ones_like(y, dtype=torch.bool)
    if atk.target is not None:
        keep = y != atk.target
    x, y = x[keep], y[keep]
    res = atk(model, x, y)
    t = time.perf_counter()
    atk.generate(x)
    gen_s = time.perf_counter() - t
    g = torch.Generator().manual_seed(seed)
    eps = float(atk.threat.eps)
    if atk.threat.norm == "linf":
        noise = x + eps * (2 * torch.rand(x.shape, generator=g) - 1)
    else:
        d = torch.randn(x.shape, generator=g)
        noise = x + eps * d / d.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    noise = atk.threat.project(noise, x)
    with torch.no_grad():
        pred = model(noise).argmax(1)
    noise_success = (pred == atk.target) if atk.target is not None else (pred != y)
    pgd = PGD(eps, atk.threat.norm, steps=40, seed=seed)
    t = time.perf_counter()
    pres = pgd(model, x, y, target=atk.target)
    pgd_s = time.perf_counter() - t
    n = len(y)
    return {
        "n": n,
        "eps": eps,
        "norm": atk.threat.norm,
        "target": atk.target,
        "success": float(res.success.float().mean()),
        "noise_success": float(noise_success.float().mean()),
        "pgd40_success": float(pres.success.float().mean()),
        "generate_images_per_s": n / gen_s,
        "pgd40_images_per_s": n / pgd_s,
        "throughput_ratio_vs_pgd40": pgd_s / gen_s,
        "threads": torch.get_num_threads(),
    }


def save_grid(atk, model, data, path: str | Path, per_class: int = 2) -> Path:
    """A grid of generated examples: for each class, ``per_class`` clean inputs (top) above
    their generated adversarials (bottom), titled with the model's predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from advex._io import atomic_write

    x, y = data.tensors()
    picks = []
    for c in torch.unique(y).tolist():
        if atk.target is not None and c == atk.target:
            continue
        picks += (y == c).nonzero().squeeze(1)[:per_class].tolist()
    picks = picks[:20]
    xs, ys = x[picks], y[picks]
    x_adv = atk.generate(xs)
    with torch.no_grad():
        p0 = model(xs).argmax(1)
        p1 = model(x_adv).argmax(1)
    cols = len(picks)
    fig, axes = plt.subplots(2, cols, figsize=(0.9 * cols, 2.2), squeeze=False)
    for j in range(cols):
        for i, (img, pred) in enumerate(((xs[j], p0[j]), (x_adv[j], p1[j]))):
            ax = axes[i][j]
            a = img.detach().cpu().float()
            a = a[0] if a.shape[0] == 1 else a.permute(1, 2, 0)
            ax.imshow(a.numpy(), cmap="gray" if a.dim() == 2 else None, vmin=0, vmax=1)
            fooled = i == 1 and int(pred) != int(ys[j])
            ax.set_title(str(int(pred)), fontsize=8, color="red" if fooled else "green")
            ax.axis("off")
    goal = "untargeted" if atk.target is None else f"toward {atk.target}"
    fig.suptitle(
        f"AdvGAN ({atk.threat.norm}, eps={float(atk.threat.eps):g}, {goal}): clean (top), "
        "generated (bottom)",
        fontsize=8,
    )
    fig.tight_layout()
    out = Path(path)

    def write(p):
        fig.savefig(p, format="png", dpi=110)

    atomic_write(out, write)
    plt.close(fig)
    return out


def load_generator(attack_name, generator_dir, ds, eps, norm, params):
    """The saved AdvGAN for ``advex attack --attack advgan --generator DIR``: the generator
    must match the data's input shape and the threat's norm; ``--eps`` other than the card's
    rescales its output (``with_budget``: the generator was trained at the card's ε)."""
    from advex.attacks import AdvGAN

    from .common import find_attack

    if find_attack(attack_name).name != "advgan":
        raise click.UsageError(f"--generator goes with --attack advgan, not --attack {attack_name}")
    if generator_dir is None:
        raise click.UsageError(
            "--attack advgan needs --generator DIR (train one with `advex generator fit`)"
        )
    if params:
        raise click.UsageError("--param does not apply to a saved generator (its card fixes them)")
    shape = tuple(int(s) for s in ds.x.shape[1:])
    atk = run_errors(AdvGAN.load, generator_dir, input_shape=shape)
    if atk.threat.norm != norm:
        raise click.UsageError(
            f"the generator in {generator_dir} was trained for {atk.threat.norm}, not --norm {norm}"
        )
    if eps is not None and float(eps) != float(atk.threat.eps):
        click.echo(
            f"note: the generator was trained at eps={float(atk.threat.eps):g}; its output is "
            f"rescaled to --eps {eps:g}",
            err=True,
        )
        atk = run_errors(atk.with_budget, float(eps))
    return atk

"""The ``advex`` command line: ``advex demo``, ``advex attack``, ``advex evaluate``, ``advex list``.

A thin layer over :mod:`advex.evaluate` and :mod:`advex.report`: it loads a model and a dataset,
builds attacks by name, runs the evaluation and writes ``results.json`` plus PNG figures.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from advex.threats import NORMS

__all__ = ["main", "available_attacks", "find_attack", "build_attack", "load_model", "parse_params"]

# ----------------------------------------------------------------------------------------------
# Attacks by name: advex.attacks.registry, its errors turned into usage errors
# ----------------------------------------------------------------------------------------------


class _LibraryChoice(click.Choice):
    """A ``click.Choice`` whose choices are read from the library when first needed (so that
    ``advex --help`` does not import the training or evaluation packages)."""

    def __init__(self, load, case_sensitive: bool = True) -> None:
        self._load = load
        self.case_sensitive = case_sensitive

    @property
    def choices(self):  # type: ignore[override]
        return tuple(self._load())


def _presets():
    from advex.evaluate.presets import PRESETS

    return PRESETS


def _methods():
    from advex.defenses.spec import CLI_METHODS

    return CLI_METHODS


def _schedules():
    from advex.defenses import SCHEDULES

    return SCHEDULES


def available_attacks() -> dict[str, type]:
    """The registered attack classes by name (see :mod:`advex.attacks.registry`)."""
    from advex.attacks import registry

    return registry.available_attacks()


def find_attack(name: str) -> type:
    """The attack class called ``name`` (see :func:`advex.attacks.registry.find_attack`).
    Raises ``click.UsageError`` listing the available attacks."""
    from advex.attacks import registry

    try:
        return registry.find_attack(name)
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err


def parse_params(cls: type, items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``--param KEY=VALUE`` items as constructor keyword arguments of ``cls`` (see
    :func:`advex.attacks.registry.parse_params`); errors are ``click.UsageError``."""
    from advex.attacks import registry

    try:
        return registry.parse_params(cls, items)
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err


def build_attack(
    name: str,
    *,
    eps: float | None,
    norm: str,
    seed: int,
    params: list[str] | tuple[str, ...] = (),
    bounds: tuple[float, float] | None = None,
):
    """Build the attack called ``name`` with ``--eps/--norm/--seed/--param`` values; a
    minimum-norm attack given ``--eps`` is scored at that budget (``BudgetedAttack``)."""
    from advex.attacks import registry
    from advex.evaluate import BudgetedAttack

    cls = find_attack(name)
    budgeted = eps is not None and cls.minimum_norm and "eps" not in registry.init_params(cls)
    try:
        attack = registry.build_attack(
            cls,
            eps=None if budgeted else eps,
            norm=norm,
            seed=seed,
            params=params,
            bounds=bounds,
        )
    except (ValueError, TypeError) as err:
        msg = str(err)
        if eps is None and "eps" in msg:
            msg += f" (use --eps for {cls.__name__})"
        elif eps is not None and "drop eps" in msg:
            msg = f"{cls.__name__} has no perturbation budget: drop --eps"
        raise click.UsageError(msg) from err
    return BudgetedAttack(attack, eps) if budgeted else attack


# ----------------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------------


def _parse_normalize(text: str) -> tuple[list[float], list[float]]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise click.BadParameter(f"expected numbers MEAN,STD, got {text!r}") from err
    if len(vals) < 2 or len(vals) % 2:
        raise click.BadParameter(
            f"expected MEAN,STD (or C means then C stds for C channels), got {text!r}"
        )
    half = len(vals) // 2
    return vals[:half], vals[half:]


def load_model(spec: str, weights: str | None = None, normalize: str | None = None):
    """A zoo name or model directory, ``package.module:factory`` (+ ``--weights``), or a
    ``torch.export`` program saved as ``.pt2``; loading goes through :func:`advex.models.load`,
    which never runs code from a file. Its errors become click errors naming the file."""
    from advex import models, zoo

    mean_std = _parse_normalize(normalize) if normalize else None
    is_export = spec.lower().endswith(".pt2")
    is_factory = ":" in spec and not Path(spec).exists()
    try:
        if is_export or is_factory:
            if is_factory:
                cwd = os.getcwd()
                if cwd not in sys.path:
                    sys.path.insert(0, cwd)  # `mymodule:factory` from the current directory
            model = models.load(spec, weights=weights, normalize=mean_std)
        else:
            if weights:
                raise click.UsageError("--weights goes with --model package.module:factory")
            try:
                model = zoo.load(spec, progress=True)
            except (ValueError, FileNotFoundError) as err:
                raise click.UsageError(
                    f"--model {spec!r}: {err}. Use a zoo name ({', '.join(zoo.available())}), a "
                    "model directory, or package.module:factory with --weights"
                ) from err
            model = models.load(model, normalize=mean_std)
    except models.ModelSpecError as err:
        raise click.UsageError(str(err)) from err
    except models.ModelLoadError as err:
        raise click.ClickException(str(err)) from err
    return model


def load_data(spec: str, split: str, n: int | None):
    from advex import data as D

    try:
        ds = D.load(spec, split)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.UsageError(f"--data {spec!r}: {err}") from err
    if n is not None:
        ds = ds.subset(n)
    if len(ds) == 0:
        raise click.UsageError(f"--data {spec!r} ({split}) is empty: nothing to evaluate")
    return ds


def _targets(ds, targeted: bool, target: int | None, seed: int):
    import torch

    if target is not None:
        if not 0 <= target < ds.num_classes:
            raise click.BadParameter(
                f"{target} is not a class of {ds.name} (0..{ds.num_classes - 1})",
                param_hint="--target",
            )
        return int(target)
    if not targeted:
        return None
    # a seeded random wrong class per point
    g = torch.Generator().manual_seed(int(seed))
    shift = torch.randint(1, ds.num_classes, (len(ds),), generator=g)
    return (ds.y + shift) % ds.num_classes


def _parse_eps_list(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise click.BadParameter(f"expected numbers like 0.1,0.2,0.3, got {text!r}") from err
    if not vals:
        raise click.BadParameter("give at least one value", param_hint="--eps")
    for v in vals:
        if not v >= 0 or v == float("inf"):
            raise click.BadParameter(
                f"every eps must be a finite number >= 0, got {v}", param_hint="--eps"
            )
    return vals


def _slug(name: str) -> str:
    s = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
    return "_".join(filter(None, s.split("_"))) or "attack"


def _echo_files(out: Path, files: list[Path]) -> None:
    click.echo(f"\nwrote to {out}/: " + ", ".join(p.name for p in files))


def _command_line() -> str:
    return " ".join(["advex", *sys.argv[1:]]) if sys.argv else "advex"


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def _version() -> str:
    import advex

    return advex.__version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=_version(), prog_name="advex")
def main() -> None:
    """advex: create adversarial examples, measure robustness, harden models.

    Start with `advex demo`: it trains a small MNIST model on first use (about a minute on a
    laptop CPU), attacks 200 test digits with FGSM, PGD and a targeted PGD, prints a table and
    writes results.json and figures to ./advex-demo/.
    """


@main.command(short_help="Attack an MNIST CNN end to end; write a small report.")
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
def demo(out: str, n: int, seed: int, quick: bool, progress: bool) -> None:
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
    out_dir = Path(out)
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
            suffix = _slug(aname.replace("->", " target "))
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
        command=_command_line(),
        meta={"wall_time_s": total},
    )
    files.insert(0, out_dir / "results.json")
    _echo_files(out_dir, files)
    click.echo(f"done in {total:.1f} s")


def _common_options(f):
    options = [
        click.option(
            "--model",
            "model_spec",
            default="mnist-smallcnn",
            show_default=True,
            help="Zoo name (see `advex list`), a saved model directory, "
            "package.module:factory (a function returning an nn.Module; with --weights), or a "
            "torch.export program (.pt2).",
        ),
        click.option(
            "--weights",
            type=click.Path(dir_okay=False),
            help="Weights for a module:factory model: .safetensors, or .pt/.pth "
            "(read with torch.load(weights_only=True); never unpickled otherwise).",
        ),
        click.option(
            "--normalize",
            metavar="MEAN,STD",
            help="Wrap the model with advex.Normalize (per channel: C means then C "
            "stds), for models trained on normalised inputs.",
        ),
        click.option(
            "--data",
            "data_spec",
            default="mnist5k",
            show_default=True,
            help="Dataset spec: mnist5k, digits, mnist:PATH or fashion-mnist:PATH.",
        ),
        click.option(
            "--split",
            default="test",
            show_default=True,
            type=click.Choice(["test", "train", "all"]),
            help="Dataset split.",
        ),
        click.option(
            "--n",
            "n",
            type=click.IntRange(min=1),
            default=None,
            help="Use only the first N points (default: all).",
        ),
        click.option(
            "--norm",
            default="linf",
            show_default=True,
            type=click.Choice(list(NORMS), case_sensitive=False),
            help="Threat model norm.",
        ),
        click.option(
            "--targeted",
            is_flag=True,
            help="Targeted attack; without --target each point gets a random (seeded) wrong class.",
        ),
        click.option(
            "--target",
            type=int,
            default=None,
            help="Target class for every point (implies --targeted; points of that "
            "class are skipped).",
        ),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help="Attack hyperparameter, e.g. --param steps=100 (repeatable; with "
            "several attacks, ATTACK.KEY=VALUE sets it for one).",
        ),
        click.option(
            "--batch-size",
            default=256,
            show_default=True,
            type=click.IntRange(min=1),
            help="Batch size.",
        ),
        click.option(
            "--out",
            default="advex-out",
            show_default=True,
            type=click.Path(file_okay=False),
            help="Output directory.",
        ),
        click.option(
            "--seed",
            default=0,
            show_default=True,
            type=int,
            help="Seed of the attacks (and of random targets).",
        ),
        click.option(
            "--progress/--no-progress",
            default=True,
            show_default=True,
            help="Progress bar over batches on stderr.",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _split_params(params: tuple[str, ...], names: list[str]) -> dict[str, list[str]]:
    """Route ``--param`` items to attacks: ``pgd.steps=20`` to pgd only, ``steps=20`` to every
    attack that has such a parameter (an error if none has)."""
    from advex.attacks import registry

    routed: dict[str, list[str]] = {n: [] for n in names}
    for item in params:
        key, sep, _ = item.partition("=")
        if not sep:
            raise click.UsageError(f"--param expects KEY=VALUE, got {item!r}")
        if "." in key:
            owner, _, rest = item.partition(".")
            matches = [n for n in names if registry.attack_key(n) == registry.attack_key(owner)]
            if not matches:
                raise click.UsageError(
                    f"--param {item!r}: no attack {owner!r} among {', '.join(names)}"
                )
            routed[matches[0]].append(rest)
            continue
        k = key.strip().replace("-", "_")
        takers = [
            n for n in names if k in registry.init_params(find_attack(n)) or k in registry.RESERVED
        ]
        if not takers:
            valid = sorted({p for n in names for p in registry.settable_params(find_attack(n))})
            raise click.UsageError(
                f"no attack among {', '.join(names)} has a parameter {k!r}; valid parameters: "
                f"{', '.join(valid)}"
            )
        for n in takers:
            routed[n].append(item)
    return routed


def _run_errors(fn, *args, **kwargs):
    """Library errors (bad values, shapes) become clean CLI errors without a traceback."""
    try:
        return fn(*args, **kwargs)
    except click.ClickException:
        raise
    except (ValueError, TypeError) as err:
        raise click.ClickException(str(err)) from err


@main.command(short_help="Run one attack; write results.json and a triptych.")
@click.option(
    "--attack",
    "attack_name",
    default="pgd",
    show_default=True,
    help="Attack name (see `advex list`), case-insensitive.",
)
@click.option(
    "--eps",
    type=click.FloatRange(min=0),
    default=None,
    help="Perturbation budget (required by fixed-budget attacks).",
)
@_common_options
def attack(
    attack_name,
    eps,
    model_spec,
    weights,
    normalize,
    data_spec,
    split,
    n,
    norm,
    targeted,
    target,
    params,
    batch_size,
    out,
    seed,
    progress,
) -> None:
    """Run one attack on a dataset; write results.json and triptych.png.

    \b
    Example:
      advex attack --model mnist-smallcnn --attack pgd --eps 0.3 --n 100 --out out/
      advex attack --attack pgd --eps 0.3 --target 3 --param steps=100
      advex attack --model mypkg.nets:make_cnn --weights cnn.safetensors --attack fgsm --eps 0.1
    """
    from advex.evaluate import robust_accuracy
    from advex.report import format_table, save_triptych, to_json

    ds = load_data(data_spec, split, n)
    atk = build_attack(
        attack_name, eps=eps, norm=norm.lower(), seed=seed, params=params, bounds=ds.bounds
    )
    model = load_model(model_spec, weights, normalize)
    tgt = _targets(ds, targeted, target, seed)
    res = _run_errors(
        robust_accuracy,
        model,
        ds,
        {atk.name: atk},
        target=tgt,
        batch_size=batch_size,
        progress=progress,
        keep_examples=8,
    )
    click.echo(format_table(res))
    if res.n_skipped:
        click.echo(f"({res.n_skipped} points whose label is the target were skipped)")
    out_dir = Path(out)
    files = [out_dir / "results.json"]
    ex = res.attack_examples.get(atk.name)
    if ex is not None:
        files.append(save_triptych(ex, out_dir / "triptych.png"))
    to_json(
        {
            "model": model_spec,
            "data": {"spec": data_spec, "split": split, "n": res.n},
            "attack": repr(atk),
            "evaluation": res,
        },
        out_dir / "results.json",
        seed=seed,
        threat=atk.threat,
        command=_command_line(),
    )
    _echo_files(out_dir, files)


@main.command(short_help="Trustworthy robustness evaluation (attack ensemble + verdict).")
@click.option(
    "--preset",
    default="standard",
    show_default=True,
    type=_LibraryChoice(_presets, case_sensitive=False),
    help="Attack ensemble when no --attack is given: standard = AutoAttack's standard "
    "attacks (APGD-CE, APGD-T, FAB-T, Square), FAB-T stopped after 3 of 9 targets unless they "
    "broke a point, Square 1000 queries for all points and 10000 for the 10% closest to "
    "success; autoattack = AutoAttack's budgets throughout.",
)
@click.option(
    "--attack",
    "attack_names",
    multiple=True,
    help="Custom mode: run these attacks (repeatable, in order) instead of a preset; --eps may "
    "then be a list (robustness curve).",
)
@click.option(
    "--eps",
    "eps_text",
    default="0.3",
    show_default=True,
    metavar="E[,E...]",
    help="Budget (with --attack: a comma-separated list for a robustness curve).",
)
@click.option(
    "--independent",
    is_flag=True,
    help="With --attack: also run every attack on every point (each attack's own accuracy).",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Preset mode: discard the state of a different run found in --out (default: resume "
    "a run with the same fingerprint, refuse a different one).",
)
@click.option(
    "--probe",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Preset mode: points used by the gradient-masking checks.",
)
@click.option("--no-checks", is_flag=True, help="Preset mode: skip the gradient-masking checks.")
@click.option(
    "--eot-samples",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Preset mode: EOT draws for models that declare random transforms.",
)
@click.option(
    "--budget-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Preset mode: multiply every steps/queries budget of the preset (e.g. 0.1 for a "
    "cheap look).",
)
@_common_options
def evaluate(
    preset,
    attack_names,
    eps_text,
    independent,
    restart,
    probe,
    no_checks,
    eot_samples,
    budget_scale,
    model_spec,
    weights,
    normalize,
    data_spec,
    split,
    n,
    norm,
    targeted,
    target,
    params,
    batch_size,
    out,
    seed,
    progress,
) -> None:
    """Robust accuracy under an attack ensemble (per-point worst case), with a verdict.

    Preset mode (default): runs the --preset ensemble, each attack only on the points still
    robust, then the gradient-masking checks, and writes results.json, report.html (a
    self-contained file) and triptych.png into --out. The run state is saved batch by batch in
    --out/state: rerun the same command after an interruption and it resumes where it stopped.
    Models declaring non-differentiable / random input transforms are attacked with BPDA / EOT.

    Custom mode (--attack ...): the given attacks in order, optionally at several ε.

    \b
    Example:
      advex evaluate --model mnist-smallcnn --eps 0.3 --preset standard --n 500 --out run/
      advex evaluate --model mypkg.nets:make --weights w.safetensors --eps 0.5 --norm l2
      advex evaluate --attack fgsm --attack pgd --eps 0.1,0.2,0.3 --n 200
    """
    if attack_names:
        _evaluate_custom(
            attack_names,
            eps_text,
            independent,
            model_spec,
            weights,
            normalize,
            data_spec,
            split,
            n,
            norm,
            targeted,
            target,
            params,
            batch_size,
            out,
            seed,
            progress,
        )
        return
    for flag, used in (("--independent", independent), ("--param", bool(params))):
        if used:
            raise click.UsageError(f"{flag} goes with --attack (custom mode), not with --preset")
    if targeted or target is not None:
        raise click.UsageError(
            "the presets evaluate untargeted robustness; for targeted attacks use --attack"
        )
    eps_list = _parse_eps_list(eps_text)
    if len(eps_list) != 1:
        raise click.BadParameter(
            "give one budget in preset mode (a list of ε goes with --attack)", param_hint="--eps"
        )
    _evaluate_preset(
        preset,
        eps_list[0],
        norm.lower(),
        model_spec,
        weights,
        normalize,
        data_spec,
        split,
        n,
        batch_size,
        out,
        seed,
        progress,
        restart,
        probe,
        no_checks,
        eot_samples,
        budget_scale,
    )


def _evaluate_preset(
    preset,
    eps,
    norm,
    model_spec,
    weights,
    normalize,
    data_spec,
    split,
    n,
    batch_size,
    out,
    seed,
    progress,
    restart,
    probe,
    no_checks,
    eot_samples,
    budget_scale,
) -> None:
    from advex.evaluate import evaluate as run_evaluation
    from advex.evaluate.presets import get_preset
    from advex.evaluate.state import FingerprintMismatch
    from advex.report import save_triptych

    ds = load_data(data_spec, split, n)
    model = load_model(model_spec, weights, normalize)
    spec = get_preset(preset)
    if budget_scale != 1.0:
        spec = spec.scaled(budget_scale)
    out_dir = Path(out)
    state_dir = out_dir / "state"
    done = len(list(state_dir.glob("batch_*.json"))) if state_dir.is_dir() else 0
    if done and not restart:
        click.echo(f"found {done} finished batch(es) in {state_dir}: resuming", err=True)
    click.echo(
        f"evaluating {len(ds)} points of {ds.name}: preset {spec.name}, {norm} eps = {eps:g}",
        err=True,
    )
    try:
        ev = run_evaluation(
            model,
            ds,
            eps=eps,
            norm=norm,
            preset=spec,
            bounds=ds.bounds,
            seed=seed,
            batch_size=batch_size,
            out_dir=out_dir,
            restart=restart,
            checks=not no_checks,
            probe=probe,
            eot_samples=eot_samples,
            progress=progress,
        )
    except FingerprintMismatch as err:
        raise click.UsageError(str(err)) from err
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: finished batches are saved in {state_dir}; rerun the same command "
            "to resume",
            err=True,
        )
        sys.exit(130)
    except (ValueError, TypeError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(ev.summary())
    meta = {"model": model_spec, "data": {"spec": data_spec, "split": split, "n": ev.n}}
    files = [out_dir / "results.json", out_dir / "report.html"]
    ev.to_json(out_dir / "results.json", command=_command_line(), **meta)
    ev.save_html(
        out_dir / "report.html",
        title=f"advex evaluation: {model_spec} on {ds.name}",
        meta={"model": model_spec, "data": f"{data_spec} ({split})", "command": _command_line()},
    )
    if ev.examples is not None:
        files.append(save_triptych(ev.examples, out_dir / "triptych.png"))
    _echo_files(out_dir, files)


def _evaluate_custom(
    attack_names,
    eps_text,
    independent,
    model_spec,
    weights,
    normalize,
    data_spec,
    split,
    n,
    norm,
    targeted,
    target,
    params,
    batch_size,
    out,
    seed,
    progress,
) -> None:
    """Custom mode of ``advex evaluate``: the given attacks in order, optionally vs ε."""
    from advex.evaluate import robust_accuracy, robustness_curve
    from advex.report import format_curve, format_table, save_curve, save_triptych, to_json

    eps_list = sorted(set(_parse_eps_list(eps_text)))
    ds = load_data(data_spec, split, n)
    names = [find_attack(a).__name__.lower() for a in attack_names]
    if len(set(names)) != len(names):
        raise click.UsageError("each --attack may appear only once")
    routed = _split_params(params, names)
    eps_max = eps_list[-1]
    if eps_max == 0:
        raise click.BadParameter("the largest eps must be > 0", param_hint="--eps")
    attacks = {
        nm: build_attack(
            nm, eps=eps_max, norm=norm.lower(), seed=seed, params=routed[nm], bounds=ds.bounds
        )
        for nm in names
    }
    model = load_model(model_spec, weights, normalize)
    tgt = _targets(ds, targeted, target, seed)
    res = _run_errors(
        robust_accuracy,
        model,
        ds,
        attacks,
        target=tgt,
        batch_size=batch_size,
        progress=progress,
        independent=independent,
    )
    click.echo(f"eps = {eps_max:g} ({norm})")
    click.echo(format_table(res))
    if res.n_skipped:
        click.echo(f"({res.n_skipped} points whose label is the target were skipped)")
    out_dir = Path(out)
    files = [out_dir / "results.json"]
    doc: dict[str, Any] = {
        "model": model_spec,
        "data": {"spec": data_spec, "split": split, "n": res.n},
        "attacks": {k: repr(a) for k, a in attacks.items()},
        "evaluation": res,
    }
    if len(eps_list) > 1:
        curve = _run_errors(
            robustness_curve,
            model,
            ds,
            attacks,
            eps_list,
            target=tgt,
            batch_size=batch_size,
            progress=progress,
        )
        click.echo("\n" + format_curve(curve))
        doc["curve"] = curve
        files.append(save_curve(curve, out_dir / "curve.png"))
    if res.examples is not None:
        files.append(save_triptych(res.examples, out_dir / "triptych.png"))
    threats = [a.threat.to_dict() for a in attacks.values()]
    shared = threats[0] if all(t == threats[0] for t in threats) else None
    to_json(doc, out_dir / "results.json", seed=seed, threat=shared, command=_command_line())
    _echo_files(out_dir, files)


@main.command(short_help="Train a robust model (adversarial training or distillation).")
@click.option(
    "--model",
    "model_name",
    default="mnist-smallcnn",
    show_default=True,
    help="Zoo name (its architecture, trained from scratch), an architecture name, or a saved "
    "model directory to fine-tune.",
)
@click.option(
    "--data",
    "data_spec",
    default="mnist5k",
    show_default=True,
    help="Training data: mnist5k | digits | mnist:PATH | fashion-mnist:PATH.",
)
@click.option(
    "--method",
    type=_LibraryChoice(_methods),
    default="pgd",
    show_default=True,
    help="PGD-AT (Madry), TRADES, MART, FGSM-RS (Wong), defensive distillation, or plain.",
)
@click.option("--eps", type=float, default=0.3, show_default=True, help="Training budget ε.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory for model.safetensors, card.json, log.json, checkpoints, curve PNG.",
)
@click.option("--lr", type=float, default=None, help="Learning rate (default per optimizer).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--attack-steps", type=click.IntRange(min=1), default=None)
@click.option("--attack-step-size", type=float, default=None)
@click.option("--beta", type=float, default=None, help="TRADES / MART β (default 6).")
@click.option("--eps-warmup-epochs", type=float, default=None, help="Linear ε warm-up.")
@click.option(
    "--schedule",
    type=_LibraryChoice(_schedules),
    default=None,
)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=None)
@click.option("--temperature", type=float, default=100.0, show_default=True, help="Distillation T.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.json.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(
    model_name,
    data_spec,
    method,
    eps,
    norm,
    epochs,
    out,
    lr,
    batch_size,
    attack_steps,
    attack_step_size,
    beta,
    eps_warmup_epochs,
    schedule,
    optimizer,
    temperature,
    seed,
    resume,
    progress,
) -> None:
    """Adversarial training (pgd, trades, mart, fgsm-rs) or defensive distillation.

    Writes OUT/model.safetensors and OUT/card.json (recipe, clean and PGD robust accuracy on
    held-out data, wall time) — load it with advex.zoo.load(OUT) or evaluate it with
    `advex evaluate --model OUT` — plus log.json, training_curve.png and a checkpoint every
    epoch (`--resume` continues an interrupted run and ends with the same weights).
    """
    import json

    from advex.defenses import train_from_spec

    result = _run_errors(
        train_from_spec,
        model_name,
        data_spec,
        method,
        eps,
        epochs,
        out,
        norm=norm,
        temperature=temperature,
        seed=seed,
        resume=resume,
        progress=progress,
        lr=lr,
        batch_size=batch_size,
        attack_steps=attack_steps,
        attack_step_size=attack_step_size,
        beta=beta,
        eps_warmup_epochs=eps_warmup_epochs,
        schedule=schedule,
        optimizer=optimizer,
    )
    click.echo(json.dumps(result.card, indent=2, default=str))
    click.echo(f"wrote {Path(out) / 'model.safetensors'} and {Path(out) / 'card.json'}")


@main.command(name="list", short_help="List attacks, zoo models and dataset specs.")
def list_cmd() -> None:
    """List the available attacks (with their parameters), zoo models and dataset specs."""
    from advex import data as D
    from advex import zoo
    from advex.attacks import registry

    click.echo("attacks (--attack NAME, --param KEY=VALUE):")
    for name, cls in sorted(registry.available_attacks().items()):
        aliases = [a for a in (cls.__name__.lower(), *cls.aliases) if a != name]
        minimum_norm = registry.declaration(cls, "minimum_norm")
        flags = [
            flag
            for flag, on in (
                ("black-box", cls.black_box),
                ("minimum-norm" if minimum_norm else "minimum-norm without eps", minimum_norm),
                ("targeted only", cls.targeted_only),
            )
            if on is not False
        ]
        head = f"  {name:<10} norms: {', '.join(cls.norms)}"
        if flags:
            head += f"; {', '.join(flags)}"
        if aliases:
            head += f"; also: {', '.join(aliases)}"
        click.echo(head)
        ps = ", ".join(f"{k}={v!r}" for k, v in registry.instance_defaults(cls).items())
        click.echo(f"  {'':<10} {ps}")
    click.echo("\nzoo models (--model NAME): " + ", ".join(zoo.available()))
    click.echo(
        "architectures (advex train --model NAME, fresh weights): "
        + ", ".join(sorted(zoo.ARCHITECTURES))
    )
    click.echo("datasets (--data SPEC): " + ", ".join(D.SPEC_FORMS))


if __name__ == "__main__":  # pragma: no cover
    main()

"""``advex poison`` (poison a training set, train, measure) and ``advex scan`` (detect, repair)."""

from __future__ import annotations

import dataclasses

import click

from .common import command_line, echo_files, load_data, prepare_out, run_errors

__all__ = ["poison", "scan"]

_DATA_HELP = (
    "Dataset: mnist5k | digits | mnist:PATH | fashion-mnist:PATH | gtsrb:PATH (train and test "
    "splits)."
)


@click.command(short_help="Poison a training set, train a victim, measure the backdoor.")
@click.option("--data", "data_spec", required=True, help=_DATA_HELP)
@click.option(
    "--attack",
    type=click.Choice(["badnets", "blend", "clean-label", "feature-collision"]),
    default="badnets",
    show_default=True,
)
@click.option("--rate", type=float, default=0.01, show_default=True, help="Share poisoned, (0, 1).")
@click.option("--target", type=int, default=0, show_default=True, help="Target class.")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--mode", type=click.Choice(["all-to-one", "all-to-all"]), default="all-to-one")
@click.option(
    "--trigger-shape",
    type=click.Choice(["checkerboard", "square", "cross"]),
    default="checkerboard",
    show_default=True,
)
@click.option(
    "--trigger-size",
    type=click.IntRange(min=1),
    default=None,
    help="Default: 4 (badnets), 3 (clean-label).",
)
@click.option(
    "--trigger-position",
    type=click.Choice(
        ["bottom-right", "bottom-left", "top-right", "top-left", "center", "all-corners"]
    ),
    default=None,
    help="Default: bottom-right (badnets), all-corners (clean-label, Turner et al.).",
)
@click.option("--trigger-colour", type=float, default=None, help="Default: the high bound.")
@click.option("--opacity", type=float, default=0.2, show_default=True, help="Blend opacity.")
@click.option("--eps", type=float, default=0.3, show_default=True, help="Clean-label PGD ε.")
@click.option("--victim-index", type=int, default=None, help="Feature collision: test index.")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Default: the data's victim recipe (smallcnn: 4; GTSRB: 8).",
)
@click.option("--lr", type=float, default=None, help="Default: the recipe's (1e-3; GTSRB 3e-3).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Default: the recipe's (64; GTSRB 128).",
)
@click.option("--n-train", type=click.IntRange(min=1), default=None, help="Use the first N.")
@click.option("--n-test", type=click.IntRange(min=1), default=None, help="Use the first N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def poison(
    data_spec,
    attack,
    rate,
    target,
    out,
    mode,
    trigger_shape,
    trigger_size,
    trigger_position,
    trigger_colour,
    opacity,
    eps,
    victim_index,
    epochs,
    lr,
    batch_size,
    n_train,
    n_test,
    seed,
    progress,
):
    """Poison the training split of --data, train the victim and a clean reference with the
    same recipe, and write results.json (clean_accuracy, clean_accuracy_reference,
    attack_success_rate, poisoned_indices, ...), the victim (loadable with
    advex.zoo.load(OUT)), figures and report.html to --out. The victim recipe follows the
    data (stated in results.json): GTSRB (3x32x32, 43 classes) gets the zoo's traffic-sign CNN
    with per-image standardisation, other data smallcnn; --epochs/--lr/--batch-size override."""
    from advex.poison.attacks import BADNETS_TRIGGER, CLEAN_LABEL_TRIGGER
    from advex.poison.measure import default_recipe
    from advex.poison.runs import build_poison_attack, poison_run

    train = load_data(data_spec, "train", n_train)
    test = load_data(data_spec, "test", n_test)
    if not 0 <= target < train.num_classes:
        raise click.BadParameter(
            f"{target} is not a class of {train.name} (0..{train.num_classes - 1})",
            param_hint="--target",
        )
    out_dir = prepare_out(out)
    target_input = None
    if attack == "feature-collision":
        if victim_index is None:
            victim_index = int((test.y != target).nonzero()[0, 0])
        if not 0 <= victim_index < len(test):
            raise click.BadParameter(f"{victim_index} out of range", param_hint="--victim-index")
        target_input = test.x[victim_index]
    default = CLEAN_LABEL_TRIGGER if attack == "clean-label" else BADNETS_TRIGGER
    trigger = {
        "shape": trigger_shape,
        "size": trigger_size if trigger_size is not None else default["size"],
        "position": trigger_position if trigger_position is not None else default["position"],
        "colour": trigger_colour,
    }
    atk = run_errors(
        build_poison_attack,
        attack,
        rate,
        target,
        seed=seed,
        trigger=trigger,
        mode=mode,
        opacity=opacity,
        eps=eps,
        target_input=target_input,
    )
    # the data's victim recipe (GTSRB: the zoo's traffic-sign architecture), options override
    recipe = default_recipe(train, seed=seed)
    overrides = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    recipe = dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    res = run_errors(
        poison_run,
        atk,
        train,
        test,
        out_dir,
        recipe=recipe,
        data_spec=data_spec,
        command=command_line(),
        progress=progress,
    )
    click.echo(
        f"{attack} at {100 * rate:g}% ({res['n_poisoned']} of {res['n_train']} samples), "
        f"target {target}:\n"
        f"  attack success rate   {100 * res['attack_success_rate']:.2f}%  "
        f"(clean model: {100 * res['attack_success_rate_reference']:.2f}%)\n"
        f"  clean accuracy        {100 * res['clean_accuracy']:.2f}%  "
        f"(clean model: {100 * res['clean_accuracy_reference']:.2f}%, "
        f"drop {100 * res['accuracy_drop']:.2f} pt)"
    )
    echo_files(out_dir, sorted(p for p in out_dir.iterdir() if p.is_file()))


@click.command(short_help="Scan a model and its training data for a backdoor; repair.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_spec", required=True, help=_DATA_HELP)
@click.option(
    "--detector",
    type=click.Choice(["spectral", "activation-clustering", "strip", "neural-cleanse"]),
    required=True,
)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option(
    "--repair",
    is_flag=True,
    help="spectral / activation-clustering: remove the flagged samples and retrain; "
    "neural-cleanse: unlearning; strip: reject flagged inputs.",
)
@click.option("--n-train", type=click.IntRange(min=1), default=None)
@click.option("--n-test", type=click.IntRange(min=1), default=None)
@click.option("--n-clean", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--nc-steps", type=click.IntRange(min=10), default=300, show_default=True)
@click.option("--strip-overlays", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--frr", type=float, default=0.01, show_default=True, help="STRIP false rejections.")
@click.option(
    "--expected-rate",
    type=float,
    default=None,
    help="Spectral: the paper's operating point, remove 1.5x this share of the training set "
    "from the suspected class (default: robust outliers, z > 4).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def scan(
    model_dir,
    data_spec,
    detector,
    out,
    repair,
    n_train,
    n_test,
    n_clean,
    nc_steps,
    strip_overlays,
    frr,
    expected_rate,
    seed,
    progress,
):
    """Run a backdoor detector on a model directory written by `advex poison` (or any saved
    model, then without ground truth) and write results.json (recall, precision,
    false_positive_rate; with --repair the new clean_accuracy and attack_success_rate),
    figures and report.html to --out."""
    from advex.poison.runs import scan_run

    train = load_data(data_spec, "train", n_train)
    test = load_data(data_spec, "test", n_test)
    out_dir = prepare_out(out)
    res = run_errors(
        scan_run,
        model_dir,
        train,
        test,
        detector,
        out_dir,
        repair=repair,
        seed=seed,
        n_clean=n_clean,
        nc_steps=nc_steps,
        strip_overlays=strip_overlays,
        frr=frr,
        expected_rate=expected_rate,
        command=command_line(),
        progress=progress,
    )

    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}%"

    click.echo(
        f"{detector}: recall {pct(res.get('recall'))}, precision {pct(res.get('precision'))}, "
        f"false positives {pct(res.get('false_positive_rate'))}"
    )
    if detector == "neural-cleanse":
        click.echo(f"  suspected target class: {res.get('suspected_target')}")
    if repair:
        click.echo(
            f"  after {res.get('repair')}: clean accuracy {pct(res.get('clean_accuracy'))} "
            f"(before {pct(res['clean_accuracy_before'])}), attack success "
            f"{pct(res.get('attack_success_rate'))} (before "
            f"{pct(res.get('attack_success_rate_before'))})"
        )
    echo_files(out_dir, sorted(p for p in out_dir.iterdir() if p.is_file()))

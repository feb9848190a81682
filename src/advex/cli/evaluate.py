"""``advex evaluate``: a preset attack ensemble with the masking checks and a verdict (preset
mode, resumable), or the given attacks at one or several ε (custom mode)."""

from __future__ import annotations

import sys
from typing import Any

import click

from .common import (
    LibraryChoice,
    ModelData,
    RunSettings,
    build_attack,
    command_line,
    common_options,
    echo_files,
    find_attack,
    parse_eps_list,
    prepare_out,
    presets,
    run_errors,
    split_params,
    targets_for,
    warn_clean_accuracy,
)
from .tabular import TABULAR_EVAL_ARGS, is_tabular, run_evaluate, schema_option

__all__ = ["evaluate"]

PRESET_KIND = "evaluate (preset)"
CUSTOM_KIND = "evaluate --attack"


@click.command(short_help="Trustworthy robustness evaluation (attack ensemble + verdict).")
@click.option(
    "--preset",
    default="standard",
    show_default=True,
    type=LibraryChoice(presets, case_sensitive=False),
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
@click.option(
    "--no-rebalance",
    is_flag=True,
    help="Under torchrun: each rank runs whole batches of its block (default: the expensive "
    "stages are re-split across the ranks by the points still robust after the first).",
)
@click.option(
    "--amp",
    type=click.Choice(["bf16", "fp16"]),
    default=None,
    help="Preset mode: run the first (cheap) stage, APGD-CE, under bf16/fp16 autocast; every "
    "break it claims is re-checked in fp32 (reversals counted in results.json). Default: fp32.",
)
# -- physical: the patch threat model (advex.cli.physical.run_patch_evaluate) --------------
@click.option(
    "--threat",
    "threat_model",
    type=click.Choice(["lp", "patch"]),
    default="lp",
    show_default=True,
    help="lp: an Lp ball of --eps (presets, --attack); patch: a per-image adversarial patch "
    "of --patch-area at a random placement (EOT), robust accuracy under it.",
)
@click.option("--patch-area", default=0.05, show_default=True, type=float)
@click.option("--patch-steps", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--patch-eot", default=8, show_default=True, type=click.IntRange(min=1))
@common_options
@schema_option
def evaluate(
    threat_model,
    patch_area,
    patch_steps,
    patch_eot,
    schema_file,
    amp,
    no_rebalance,
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
    force,
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

    Under torchrun (`torchrun --nproc_per_node N -m advex evaluate ...`, preset mode) the
    batches are sharded across the ranks, each rank keeps its resumable state in
    --out/rank<r>-of-<N>, and rank 0 writes the one results.json and report (docs/scaling.md).

    --out is checked writable before any work; a folder holding another kind of run (e.g.
    `advex attack` results) is refused unless --force, which removes that run's files.

    \b
    Example:
      advex evaluate --model mnist-smallcnn --eps 0.3 --preset standard --n 500 --out run/
      advex evaluate --model mypkg.nets:make --weights w.safetensors --eps 0.5 --norm l2
      advex evaluate --attack fgsm --attack pgd --eps 0.1,0.2,0.3 --n 200
    """
    if amp and (attack_names or threat_model == "patch" or is_tabular(data_spec, schema_file)):
        raise click.UsageError("--amp goes with the preset ensemble on images (not --attack, "
                               "--threat patch or tabular data)")  # fmt: skip
    if is_tabular(data_spec, schema_file):  # rows of named features: advex.cli.tabular
        kw = dict(locals())
        return run_evaluate(**{k: kw[k] for k in TABULAR_EVAL_ARGS})
    from .text import is_text_data

    if is_text_data(data_spec):  # text models: advex.cli.text (engineer B's entry point)
        if amp:
            raise click.UsageError("--amp goes with the preset ensemble on images, not text")
        from pathlib import Path as _Path

        from .text import run_text_evaluate

        run_text_evaluate(
            attack_names=attack_names, model_spec=model_spec, data_spec=data_spec, split=split,
            n=n, target=target, params=params, out_dir=_Path(out), seed=seed,
        )  # fmt: skip
        return
    source = ModelData(model_spec, weights, normalize, data_spec, split, n)
    run = RunSettings(batch_size, out, force, seed, progress)
    from advex import distributed

    if distributed.init_from_env() and attack_names:
        raise click.UsageError(
            "under torchrun, advex evaluate runs the preset ensemble (sharded); custom mode "
            "(--attack) runs in one process"
        )
    if threat_model == "patch":  # advex.cli.physical
        from .physical import run_patch_evaluate

        if attack_names:
            raise click.UsageError("--threat patch runs its own attack (patch-pgd): no --attack")
        if distributed.is_distributed():
            raise click.UsageError(
                "--threat patch runs in one process (not sharded under torchrun)"
            )
        return run_patch_evaluate(
            source, run, area=patch_area, steps=patch_steps, eot=patch_eot,
            targeted=targeted, target=target,
        )  # fmt: skip
    if attack_names:
        _evaluate_custom(
            source, run, attack_names, eps_text, independent, norm.lower(), params, targeted, target
        )
        return
    for flag, used in (("--independent", independent), ("--param", bool(params))):
        if used:
            raise click.UsageError(f"{flag} goes with --attack (custom mode), not with --preset")
    if targeted or target is not None:
        raise click.UsageError(
            "the presets evaluate untargeted robustness; for targeted attacks use --attack"
        )
    eps_list = parse_eps_list(eps_text)
    if len(eps_list) != 1:
        raise click.BadParameter(
            "give one budget in preset mode (a list of ε goes with --attack)", param_hint="--eps"
        )
    from advex.evaluate import EvaluateOptions

    options = EvaluateOptions(
        batch_size=batch_size,
        out_dir=out,
        restart=restart,
        checks=not no_checks,
        probe=probe,
        eot_samples=eot_samples,
        progress=progress and distributed.rank() == 0,
        rebalance=not no_rebalance,
        amp=amp,
    )
    _evaluate_preset(source, run, preset, eps_list[0], norm.lower(), budget_scale, options)


def _evaluate_preset(
    source: ModelData, run: RunSettings, preset, eps, norm, budget_scale, options
) -> None:
    from advex import distributed
    from advex.evaluate import evaluate as run_evaluation
    from advex.evaluate.presets import get_preset
    from advex.evaluate.state import CorruptState, FingerprintMismatch
    from advex.report import save_triptych

    lead = distributed.rank() == 0  # under torchrun only rank 0 speaks and writes files
    if lead:
        out_dir = prepare_out(run.out, PRESET_KIND, run.force)
    distributed.barrier()
    if not lead:
        out_dir = prepare_out(run.out)
    ds = source.load_data()
    model = source.load_model()
    spec = get_preset(preset)
    if budget_scale != 1.0:
        spec = spec.scaled(budget_scale)
    w = distributed.world_size()
    state_dir = out_dir / (f"rank{distributed.rank()}-of-{w}" if w > 1 else "") / "state"
    done = len(list(state_dir.glob("batch_*.json"))) if state_dir.is_dir() else 0
    if done and not options.restart:
        click.echo(f"found {done} finished batch(es) in {state_dir}: resuming", err=True)
    if lead:
        ranks = f" on {w} ranks" if w > 1 else ""
        click.echo(
            f"evaluating {len(ds)} points of {ds.name}{ranks}: preset {spec.name}, "
            f"{norm} eps = {eps:g}",
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
            seed=run.seed,
            options=options,
        )
    except (FingerprintMismatch, CorruptState) as err:
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
    if not lead:
        return
    click.echo(ev.summary())
    warn_clean_accuracy(ev.clean_accuracy, ev.n)
    files = [out_dir / "results.json", out_dir / "report.html"]
    ev.to_json(out_dir / "results.json", command=command_line(), **source.meta(ev.n))
    ev.save_html(
        out_dir / "report.html",
        title=f"advex evaluation: {source.model_spec} on {ds.name}",
        meta={
            "model": source.model_spec,
            "data": f"{source.data_spec} ({source.split})",
            "command": command_line(),
        },
    )
    if ev.examples is not None:
        files.append(save_triptych(ev.examples, out_dir / "triptych.png"))
    echo_files(out_dir, files)


def _evaluate_custom(
    source: ModelData,
    run: RunSettings,
    attack_names,
    eps_text,
    independent,
    norm,
    params,
    targeted,
    target,
) -> None:
    """Custom mode of ``advex evaluate``: the given attacks in order, optionally vs ε."""
    from advex.evaluate import robust_accuracy, robustness_curve
    from advex.report import format_curve, format_table, save_curve, save_triptych, to_json

    eps_list = sorted(set(parse_eps_list(eps_text)))
    out_dir = prepare_out(run.out, CUSTOM_KIND, run.force)
    ds = source.load_data()
    names = [find_attack(a).__name__.lower() for a in attack_names]
    if len(set(names)) != len(names):
        raise click.UsageError("each --attack may appear only once")
    routed = split_params(params, names)
    eps_max = eps_list[-1]
    if eps_max == 0:
        raise click.BadParameter("the largest eps must be > 0", param_hint="--eps")
    attacks = {
        nm: build_attack(
            nm, eps=eps_max, norm=norm, seed=run.seed, params=routed[nm], bounds=ds.bounds
        )
        for nm in names
    }
    model = source.load_model()
    tgt = targets_for(ds, targeted, target, run.seed)
    res = run_errors(
        robust_accuracy,
        model,
        ds,
        attacks,
        target=tgt,
        batch_size=run.batch_size,
        progress=run.progress,
        independent=independent,
    )
    click.echo(f"eps = {eps_max:g} ({norm})")
    click.echo(format_table(res))
    if res.n_skipped:
        click.echo(f"({res.n_skipped} points whose label is the target were skipped)")
    warn_clean_accuracy(res.clean_accuracy, res.n)
    files = [out_dir / "results.json"]
    doc: dict[str, Any] = {
        **source.meta(res.n),
        "attacks": {k: repr(a) for k, a in attacks.items()},
        "evaluation": res,
    }
    if len(eps_list) > 1:
        curve = run_errors(
            robustness_curve,
            model,
            ds,
            attacks,
            eps_list,
            target=tgt,
            batch_size=run.batch_size,
            progress=run.progress,
        )
        click.echo("\n" + format_curve(curve))
        doc["curve"] = curve
        files.append(save_curve(curve, out_dir / "curve.png"))
    if res.examples is not None:
        files.append(save_triptych(res.examples, out_dir / "triptych.png"))
    threats = [a.threat.to_dict() for a in attacks.values()]
    shared = threats[0] if all(t == threats[0] for t in threats) else None
    to_json(doc, out_dir / "results.json", seed=run.seed, threat=shared, command=command_line())
    echo_files(out_dir, files)

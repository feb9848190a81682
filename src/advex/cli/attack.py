"""``advex attack``: run one attack on a dataset; write results.json, adversarial.safetensors
and a triptych (and, for a decision-based attack, query_curve.png: distance vs queries)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    ModelData,
    RunSettings,
    build_attack,
    command_line,
    common_options,
    echo_files,
    find_attack,
    prepare_out,
    run_errors,
    targets_for,
    warn_clean_accuracy,
)
from .tabular import TABULAR_ARGS, is_tabular, run_attack, schema_option

__all__ = ["attack", "save_adversarial"]


@click.command(short_help="Run one attack; write results.json, the adversarials and a triptych.")
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
    help="Perturbation budget (required by fixed-budget attacks; a minimum-norm attack given "
    "--eps counts only adversarials within it).",
)
@click.option(
    "--generator",
    "generator_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="With --attack advgan: a generator saved by `advex generator fit`.",
)
@common_options
@schema_option
def attack(
    attack_name,
    eps,
    schema_file,
    generator_dir,
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
    """Run one attack on a dataset; write results.json, adversarial.safetensors and
    triptych.png (a decision-based attack also writes query_curve.png, median distance vs
    queries per point, and the same numbers as results.json's query_curve).

    adversarial.safetensors holds one row per attacked point (correctly classified, not
    skipped): x_adv, index (position in the data), label, target (targeted runs),
    clean_pred, adv_pred, success and norm (distance to the original in the threat norm).

    \b
    Example:
      advex attack --model mnist-smallcnn --attack pgd --eps 0.3 --n 100 --out out/
      advex attack --attack pgd --eps 0.3 --target 3 --param steps=100
      advex attack --model mypkg.nets:make_cnn --weights cnn.safetensors --attack fgsm --eps 0.1
      advex attack --model sms-spam-cnn --data sms:PATH --attack deepwordbug --target ham
      advex attack --attack advgan --generator gens/mnist --out out/
    """
    if is_tabular(data_spec, schema_file):  # rows of named features: advex.cli.tabular
        kw = dict(locals())
        return run_attack(**{k: kw[k] for k in TABULAR_ARGS})
    from .text import is_text_data, run_text_attack

    if is_text_data(data_spec):  # text: advex.cli.text (text models and text attacks)
        run = RunSettings(batch_size, out, force, seed, progress)
        run_text_attack(
            attack_name=attack_name,
            model_spec=model_spec,
            data_spec=data_spec,
            split=split,
            n=n,
            target=target,
            params=params,
            batch_size=run.batch_size,
            out_dir=prepare_out(run.out, "attack", run.force),
            seed=run.seed,
            eps=eps,
            targeted=targeted,
        )
        return
    from advex.evaluate import robust_accuracy
    from advex.report import format_table, save_triptych, to_json

    source = ModelData(model_spec, weights, normalize, data_spec, split, n)
    run = RunSettings(batch_size, out, force, seed, progress)
    out_dir = prepare_out(run.out, "attack", run.force)
    ds = source.load_data()
    if generator_dir is not None or find_attack(attack_name).name == "advgan":
        from .generator import load_generator

        atk = load_generator(attack_name, generator_dir, ds, eps, norm.lower(), params)
    else:
        atk = build_attack(
            attack_name, eps=eps, norm=norm.lower(), seed=run.seed, params=params, bounds=ds.bounds
        )
    model = source.load_model()
    tgt = targets_for(ds, targeted, target, run.seed)
    from advex.attacks.decision import DecisionAttack, QueryCurve, summarise_curve

    curve = None
    if isinstance(atk, DecisionAttack):  # label-only attacks: distance vs queries per point
        curve = atk.curve = atk.curve or QueryCurve()
    res = run_errors(
        robust_accuracy,
        model,
        ds,
        {atk.name: atk},
        target=tgt,
        batch_size=run.batch_size,
        progress=run.progress,
        keep_examples=8,
    )
    click.echo(format_table(res))
    if res.n_skipped:
        click.echo(f"({res.n_skipped} points whose label is the target were skipped)")
    warn_clean_accuracy(res.clean_accuracy, res.n)
    if eps is None and find_attack(attack_name).minimum_norm:
        click.echo(
            f"note: {atk.name} is a minimum-norm attack run without a budget: it looks for the "
            "smallest adversarial at any norm, so robust accuracy near 0% means every point has "
            "an adversarial somewhere, not that the model is weak at a given ε. Read the median "
            "norm, or pass --eps to count only adversarials within that budget."
        )
    files = [out_dir / "results.json"]
    adv = save_adversarial(res, atk.name, out_dir / "adversarial.safetensors")
    if adv is not None:
        files.append(adv)
    ex = res.attack_examples.get(atk.name)
    if ex is not None:
        files.append(save_triptych(ex, out_dir / "triptych.png"))
    doc = {**source.meta(res.n), "attack": repr(atk), "evaluation": res}
    if curve is not None and curve.runs:
        from advex.report import save_query_curve

        grid = QueryCurve.grid(atk.max_queries)
        summary = summarise_curve(curve.table(grid, run=None), grid, atk.threat.eps)
        doc["query_curve"] = summary
        files.append(
            save_query_curve({atk.name: summary}, out_dir / "query_curve.png", norm=atk.threat.norm)
        )
    to_json(
        doc,
        out_dir / "results.json",
        seed=run.seed,
        threat=atk.threat,
        command=command_line(),
    )
    echo_files(out_dir, files)


def save_adversarial(res, name: str, path: Path) -> Path | None:
    """Write the adversarial examples of attack ``name`` in ``res`` (an ``EvaluationResult``
    kept with its results) as safetensors: ``x_adv`` (N, ...) and per point ``index`` (position
    in the data), ``label``, ``target`` (targeted runs only), ``clean_pred``, ``adv_pred``,
    ``success`` (uint8) and ``norm``. ``None`` (nothing written) when no point was attacked."""
    import torch
    from safetensors.torch import save

    from advex._io import atomic_write

    result = res.results.get(name)
    if result is None or int(result.x_adv.shape[0]) == 0:
        return None
    tensors = {
        "x_adv": result.x_adv.detach().cpu().contiguous(),
        "index": res.attacked_index[name].cpu().long().contiguous(),
        "label": result.y.cpu().long().contiguous(),
        "clean_pred": result.clean_pred.cpu().long().contiguous(),
        "adv_pred": result.adv_pred.cpu().long().contiguous(),
        "success": result.success.cpu().to(torch.uint8).contiguous(),
        "norm": result.norms.detach().cpu().float().contiguous(),
    }
    if result.target is not None:
        tensors["target"] = result.target.cpu().long().contiguous()
    atomic_write(path, save(tensors, metadata={"attack": name, "format": "advex-adversarial/1"}))
    return path

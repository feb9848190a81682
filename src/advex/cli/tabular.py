"""``advex attack`` and ``advex evaluate`` on tabular data (``--data breast-cancer``,
``--data csv:PATH``, or any ``--schema FILE``): the threat is a
:class:`~advex.threats.TabularThreat` (budget in standard deviations per feature, inside the
schema's constraints), the attacks are the tabular ones, and the outputs speak in original units.

``advex attack`` writes ``results.json`` (success rate, robust accuracy, per-feature changes,
constraint satisfaction checked independently of the attack, examples in words) and
``adversarial.csv`` (one row per attacked example: ``index``, ``original_label``,
``adversarial_prediction``, ``success`` and every feature as ``"label (unit)"``).
"""

from __future__ import annotations

from typing import Any

import click

from .common import command_line, echo_files, find_attack, parse_params, prepare_out, run_errors

__all__ = [
    "DEFAULT_EPS",
    "TABULAR_ARGS",
    "TABULAR_EVAL_ARGS",
    "TABULAR_ATTACKS",
    "is_tabular",
    "run_attack",
    "run_evaluate",
]

#: the budget when --eps is not given: half a standard deviation per feature (L∞)
DEFAULT_EPS = 0.5
TABULAR_ATTACKS = ("constrained-pgd", "lowprofool", "constrained-evolution")
#: the arguments of ``advex attack`` that the tabular path takes
TABULAR_ARGS = (
    "attack_name",
    "eps",
    "model_spec",
    "data_spec",
    "schema_file",
    "split",
    "n",
    "norm",
    "targeted",
    "target",
    "params",
    "batch_size",
    "out",
    "force",
    "seed",
    "progress",
)
#: the arguments of ``advex evaluate`` that the tabular path takes
TABULAR_EVAL_ARGS = (
    "eps_text",
    "model_spec",
    "data_spec",
    "schema_file",
    "split",
    "n",
    "norm",
    "targeted",
    "target",
    "batch_size",
    "out",
    "force",
    "seed",
    "progress",
)


def is_tabular(data_spec: str, schema: str | None) -> bool:
    """Whether a run goes through the tabular path."""
    kind = str(data_spec).strip().lower().partition(":")[0]
    return schema is not None or kind in ("breast-cancer", "breast_cancer", "breastcancer", "csv")


def _load(data_spec: str, split: str, n: int | None, schema_file: str | None):
    """``(dataset, train split, schema, schema source)``: a user ``--schema`` replaces the
    dataset's own (checked against the data; scales from the training split when it has
    none)."""
    from advex import data as D

    try:
        ds = D.load(data_spec, split, schema=schema_file)
        train = D.load(data_spec, "train", schema=schema_file)
        if not isinstance(ds, D.TabularDataset):
            raise click.UsageError(
                f"--data {data_spec!r} is not tabular; --schema goes with --data breast-cancer "
                "or csv:PATH"
            )
        schema, source = ds.schema, ds.schema.to_dict()
        if schema_file is not None:
            user = D.Schema.from_file(schema_file)
            if user.names != schema.names:
                extra = [f for f in user.names if f not in schema.names]
                missing = [f for f in schema.names if f not in user.names]
                what = (
                    f"unknown feature {extra[0]!r}"
                    if extra
                    else f"feature {missing[0]!r} is missing"
                    if missing
                    else "the features are in another order than the data's columns"
                )
                raise D.SchemaError(
                    f"--schema {schema_file}: {what} (data columns: {', '.join(schema.names)})"
                )
            if any(f.scale is None for f in user.features):
                user = user.fit_scales(train.x)
            user.check_data(ds.x, what=f"--data {data_spec}")
            schema, source = user, schema_file
        ds.schema = train.schema = schema
    except click.ClickException:
        raise
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.UsageError(f"--data {data_spec!r}: {err}") from err
    if n is not None:
        ds = ds.subset(n)
    if len(ds) == 0:
        raise click.UsageError(f"--data {data_spec!r} ({split}) is empty")
    return ds, train, schema, source


def _target(ds, targeted: bool, target: Any, seed: int):
    from .common import targets_for

    return targets_for(ds, targeted, target, seed)


def _build(attack_name: str, threat, seed: int, params, model, train):
    from advex.attacks import registry

    cls = find_attack(attack_name)
    if "schema" not in registry.init_params(cls):
        raise click.UsageError(
            f"--attack {attack_name!r} does not work in a tabular threat; use one of "
            f"{', '.join(TABULAR_ATTACKS)}"
        )
    kw = parse_params(cls, params)
    try:
        atk = cls(threat=threat, seed=seed, **kw)
        if hasattr(atk, "importance"):  # LowProFool: feature importance from the training data
            atk.fit(model, train.tensors())
    except (ValueError, TypeError) as err:
        raise click.UsageError(f"cannot build {cls.__name__}: {err}") from err
    return atk


def run_attack(
    *,
    attack_name,
    eps,
    model_spec,
    data_spec,
    schema_file,
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
    """The tabular ``advex attack`` (see the module docstring)."""
    from advex.evaluate import robust_accuracy
    from advex.report import format_table, to_json
    from advex.report.tabular import (
        constraint_report,
        example_lines,
        format_changes,
        read_adversarial_csv,
        tabular_summary,
        write_adversarial_csv,
    )
    from advex.threats import TabularThreat

    from .common import load_model, warn_clean_accuracy

    out_dir = prepare_out(out, "attack", force)
    ds, train, schema, source = _load(data_spec, split, n, schema_file)
    if norm not in ("linf", "l2"):
        raise click.UsageError("tabular attacks use --norm linf or l2")
    budget = DEFAULT_EPS if eps is None else float(eps)
    threat = TabularThreat(schema, budget, norm)
    model = load_model(model_spec)
    atk = _build(attack_name, threat, seed, params, model, train)
    tgt = _target(ds, targeted, target, seed)
    res = run_errors(
        robust_accuracy,
        model,
        ds,
        {atk.name: atk},
        target=tgt,
        batch_size=batch_size,
        progress=progress,
        keep_examples=0,
    )
    click.echo(format_table(res))
    if eps is None:
        click.echo(f"(budget: --eps {DEFAULT_EPS:g} standard deviations per feature, {norm})")
    warn_clean_accuracy(res.clean_accuracy, res.n)
    files = [out_dir / "results.json"]
    result = res.results.get(atk.name)
    tab: dict[str, Any] = {"attacked": 0}
    if result is not None and int(result.x_adv.shape[0]):
        pos = res.attacked_index[atk.name].long()
        x0 = ds.x[pos]
        names = ds.class_names
        csv_path = write_adversarial_csv(
            out_dir / "adversarial.csv",
            schema,
            result.x_adv,
            index=ds.index[pos],
            original_label=[names[int(v)] for v in result.y],
            adversarial_prediction=[names[int(v)] for v in result.adv_pred],
            success=result.success,
        )
        files.append(csv_path)
        back = read_adversarial_csv(csv_path, schema)  # the check reads what the user gets
        cons = constraint_report(source, x0, back["x_adv"], eps=budget, norm=norm)
        tab = tabular_summary(schema, x0, back["x_adv"], result.success, constraints=cons)
        click.echo("\nper-feature changes of the successful adversarials (original units):")
        click.echo(format_changes(tab["feature_changes"]))
        ok = result.success.nonzero().squeeze(1)
        if ok.numel():
            i = int(ok[0])
            click.echo(
                f"\nexample (row {int(ds.index[pos[i]])}: {names[int(result.y[i])]} → "
                f"{names[int(result.adv_pred[i])]}):"
            )
            for line in example_lines(schema, x0[i], back["x_adv"][i]):
                click.echo(f"  {line}")
        click.echo(
            f"\nconstraint satisfaction (independent check of adversarial.csv): "
            f"{cons['rows_valid']}/{cons['rows']} rows valid ({cons['rate']:.1%})"
        )
    to_json(
        {
            "model": model_spec,
            "data": {"spec": data_spec, "split": split, "n": res.n, "schema": str(schema_file)},
            "attack": repr(atk),
            "evaluation": res,
            "tabular": tab,
        },
        out_dir / "results.json",
        seed=seed,
        threat=threat,
        command=command_line(),
    )
    echo_files(out_dir, files)


def run_evaluate(
    *,
    eps_text,
    model_spec,
    data_spec,
    schema_file,
    split,
    n,
    norm,
    targeted,
    target,
    batch_size,
    out,
    force,
    seed,
    progress,
) -> None:
    """The tabular ``advex evaluate``: robust accuracy at each ε (standard deviations per
    feature) under ConstrainedPGD (gradient or NES) then ConstrainedEvolution, each run only on
    the points still robust; constraint satisfaction of every adversarial found."""
    from advex.attacks import ConstrainedEvolution, ConstrainedPGD
    from advex.evaluate import robust_accuracy
    from advex.report import format_table, to_json
    from advex.report.tabular import constraint_report
    from advex.threats import TabularThreat

    from .common import load_model, parse_eps_list

    out_dir = prepare_out(out, "evaluate --attack", force)
    ds, _, schema, source = _load(data_spec, split, n, schema_file)
    eps_list = parse_eps_list(eps_text) or [DEFAULT_EPS]
    model = load_model(model_spec)
    tgt = _target(ds, targeted, target, seed)
    rows = []
    for e in eps_list:
        threat = TabularThreat(schema, e, norm)
        attacks = {
            "constrained-pgd": ConstrainedPGD(threat=threat, steps=50, seed=seed),
            "constrained-evolution": ConstrainedEvolution(threat=threat, n_queries=1000, seed=seed),
        }
        res = run_errors(
            robust_accuracy,
            model,
            ds,
            attacks,
            target=tgt,
            batch_size=batch_size,
            progress=progress,
            keep_examples=0,
        )
        checks = {}
        for name, r in res.results.items():
            x0 = ds.x[res.attacked_index[name].long()]
            checks[name] = constraint_report(source, x0, r.x_adv, eps=e, norm=norm)
        click.echo(f"\neps = {e:g} standard deviations per feature ({norm})")
        click.echo(format_table(res))
        for name, c in checks.items():
            click.echo(f"  {name}: {c['rows_valid']}/{c['rows']} outputs satisfy every constraint")
        rows.append({"eps": e, "evaluation": res, "constraint_satisfaction": checks})
    to_json(
        {
            "model": model_spec,
            "data": {"spec": data_spec, "split": split, "n": len(ds), "schema": str(schema_file)},
            "attacks": list(attacks),
            "curve": [
                {"eps": r["eps"], "robust_accuracy": r["evaluation"].robust_accuracy} for r in rows
            ],
            "runs": rows,
        },
        out_dir / "results.json",
        seed=seed,
        command=command_line(),
    )
    echo_files(out_dir, [out_dir / "results.json"])


def schema_option(f):
    """``--schema FILE``: a YAML / JSON feature schema (tabular data)."""
    return click.option(
        "--schema",
        "schema_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Tabular data: a YAML/JSON feature schema (types, ranges, immutable features, "
        "constraints); required with --data csv:PATH unless PATH.schema.yaml exists.",
    )(f)

"""``advex attack`` on text: what the ``attack`` command runs when ``--data`` is a text dataset
(``sms:PATH``).

The model is a text zoo name (``sms-spam-cnn``, ``sms-spam-charcnn``, ``sms-spam-tfidf``) or
``package.module:factory``: a function returning a callable from a list of strings to scores
``(N, C)`` or labels (indices or class names), a :class:`~advex.models.text.TextClassifier`
or a scikit-learn pipeline. The attack is a text attack (``deepwordbug``, ``hotflip``); its
hyperparameters come from ``--param KEY=VALUE``. ``results.json`` lists every attacked example
with ``original``, ``adversarial``, ``label``, ``adversarial_prediction`` and ``queries``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import click

__all__ = [
    "TEXT_DATA_KINDS",
    "is_text_data",
    "load_text_classifier",
    "run_text_attack",
    "run_text_evaluate",
]

#: the ``--data`` kinds that are text datasets
TEXT_DATA_KINDS = ("sms", "sms-spam", "sms_spam")


def is_text_data(spec: str) -> bool:
    """Whether the ``--data`` spec names a text dataset."""
    return str(spec).strip().partition(":")[0].strip().lower() in TEXT_DATA_KINDS


def load_text_classifier(spec: str, class_names):
    """A text classifier from a zoo name or ``package.module:factory`` (the factory is called
    with no arguments; the current directory is importable). Errors become click errors."""
    from advex import zoo
    from advex.models.text import as_text_classifier

    if ":" in spec and not Path(spec).exists():
        module_name, _, factory = spec.partition(":")
        if not module_name or not factory.isidentifier():
            raise click.UsageError(f"--model {spec!r}: expected package.module:factory")
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            fn = getattr(importlib.import_module(module_name), factory)
        except (ImportError, AttributeError) as err:
            raise click.UsageError(f"--model {spec!r}: cannot import: {err}") from err
        try:
            model = fn()
        except Exception as err:
            raise click.ClickException(f"--model {spec!r}: the factory failed: {err}") from err
        try:
            return as_text_classifier(model, getattr(model, "class_names", None) or class_names)
        except (TypeError, ValueError) as err:
            raise click.UsageError(f"--model {spec!r}: {err}") from err
    try:
        model = zoo.load(spec, progress=True)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(f"--model {spec!r}: {err}") from err
    from advex.models.text import TextClassifier

    if isinstance(model, TextClassifier):
        return model
    raise click.UsageError(
        f"--model {spec!r} is not a text model; text zoo models: sms-spam-cnn, "
        "sms-spam-charcnn, sms-spam-tfidf (or package.module:factory)"
    )


def run_text_attack(
    *,
    attack_name: str,
    model_spec: str,
    data_spec: str,
    split: str,
    n: int | None,
    target: str | None,
    params: tuple[str, ...],
    batch_size: int,
    out_dir: Path,
    seed: int,
    eps: float | None = None,
    targeted: bool = False,
) -> None:
    """Run one text attack over the dataset and write ``out_dir/results.json``."""
    if eps is not None:
        raise click.UsageError(
            "--eps does not apply to text attacks: set the edit budget with --param, e.g. "
            "--param max_char_edits=30 (DeepWordBug) or --param max_words=5 (HotFlip)"
        )
    if targeted and target is None:
        raise click.UsageError("a targeted text attack needs --target CLASS (e.g. --target ham)")
    import torch

    from advex import data as D
    from advex._io import write_json
    from advex.attacks.text import TextAttackResult, build_text_attack

    from .common import command_line

    try:
        ds = D.load(data_spec, split)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.UsageError(f"--data {data_spec!r}: {err}") from err
    if n is not None:
        ds = ds.head(n)
    try:
        # the command's default attack (pgd) means the default text attack here
        name = "deepwordbug" if attack_name == "pgd" else attack_name
        atk = build_text_attack(name, seed=seed, params=params)
    except (ValueError, TypeError) as err:
        raise click.UsageError(f"--attack {attack_name!r}: {err}") from err
    model = load_text_classifier(model_spec, ds.class_names)
    if tuple(model.class_names) != tuple(ds.class_names):
        raise click.ClickException(
            f"model classes {list(model.class_names)} differ from the data's {list(ds.class_names)}"
        )
    index = torch.arange(len(ds))
    tgt = None
    skipped = 0
    if target is not None:
        t = target.strip()
        if t.lstrip("-").isdigit():
            k = int(t)
            if not 0 <= k < ds.num_classes:
                raise click.BadParameter(
                    f"{k} is not a class of {ds.name} (0..{ds.num_classes - 1})",
                    param_hint="--target",
                )
        elif t in ds.class_names:
            k = ds.class_names.index(t)
        else:
            raise click.BadParameter(
                f"{t!r} is not a class of {ds.name} ({', '.join(ds.class_names)})",
                param_hint="--target",
            )
        keep = ds.y != k
        skipped = int((~keep).sum())
        index = index[keep]
        tgt = k
    if index.numel() == 0:
        raise click.UsageError("no example to attack (every example is of the --target class)")
    t0 = time.perf_counter()
    parts = []
    for s in range(0, index.numel(), batch_size):
        idx = index[s : s + batch_size]
        texts = [ds.texts[int(i)] for i in idx]
        try:
            parts.append(atk(model, texts, ds.y[idx], target=tgt))
        except (ValueError, TypeError) as err:
            raise click.ClickException(str(err)) from err
    wall = time.perf_counter() - t0
    res = TextAttackResult.cat(parts)
    summary = res.summary()
    records = res.records()
    for r, i in zip(records, index.tolist(), strict=True):
        r["index"] = i
    click.echo(
        f"{atk.name} on {model_spec} ({ds.name}, {len(res)} examples"
        + (f", target {ds.class_names[tgt]}" if tgt is not None else "")
        + f"): clean accuracy {summary['clean_accuracy']:.1%}, success rate "
        f"{summary['success_rate']:.1%}, robust accuracy {summary['robust_accuracy']:.1%}"
    )
    if summary["char_edits"]:
        click.echo(
            f"  successful: median {summary['char_edits']['median']:.0f} char edits, "
            f"{summary['words_changed']['median']:.0f} words changed; median queries "
            f"{summary['queries']['median']:.0f}; {wall:.1f} s"
        )
    if skipped:
        click.echo(f"({skipped} examples of the target class were skipped)")
    path = write_json(
        out_dir / "results.json",
        {
            "attack": atk.name,
            "attack_repr": repr(atk),
            "threat": atk.threat.describe(),
            "model": model_spec,
            "data": {"spec": data_spec, "split": split, "n": len(res), "skipped": skipped},
            "target": None if tgt is None else ds.class_names[tgt],
            "seed": seed,
            "time_s": round(wall, 3),
            "summary": summary,
            "examples": records,
            "command": command_line(),
        },
    )
    click.echo(f"wrote {path}")


def run_text_evaluate(
    *,
    attack_names: tuple[str, ...],
    model_spec: str,
    data_spec: str,
    split: str,
    n: int | None,
    target: str | None,
    params: tuple[str, ...],
    out_dir: Path,
    seed: int,
) -> None:
    """``advex evaluate`` on a text dataset: :func:`advex.evaluate.text.evaluate_text` with the
    given ``--attack`` names (default: the black-box ensemble, HotFlip added for white-box
    models), each only on the examples still robust; writes ``results.json`` and
    ``report.html`` (side by side, changes highlighted) into ``out_dir``."""
    from advex import data as D
    from advex.attacks.text import build_text_attack
    from advex.evaluate.text import default_text_attacks, evaluate_text

    try:
        ds = D.load(data_spec, split)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.UsageError(f"--data {data_spec!r}: {err}") from err
    if n is not None:
        ds = ds.head(n)
    model = load_text_classifier(model_spec, ds.class_names)
    try:
        attacks = (
            [build_text_attack(a, seed=seed, params=params) for a in attack_names]
            if attack_names
            else default_text_attacks(model, seed)
        )
        if target is not None and target not in ds.class_names:
            raise ValueError(f"--target {target!r} is not a class ({', '.join(ds.class_names)})")
        texts, y = list(ds.texts), ds.y
        if target is not None:  # examples of the target class have nothing to reach
            keep = [i for i in range(len(texts)) if ds.class_names[int(y[i])] != target]
            texts, y = [texts[i] for i in keep], y[keep]
        t0 = time.perf_counter()
        ev = evaluate_text(model, texts, y, attacks, target=target, model_name=model_spec)
    except (ValueError, TypeError) as err:
        raise click.ClickException(str(err)) from err
    files = ev.save(out_dir)
    click.echo(
        f"{model_spec} on {ds.name} ({ev.n} examples"
        + (f", target {target}" if target else "")
        + f"): clean accuracy {ev.clean_accuracy:.1%}, robust accuracy {ev.robust_accuracy:.1%} "
        f"(95% CI {ev.robust_accuracy_ci[0]:.1%}-{ev.robust_accuracy_ci[1]:.1%}), "
        f"{time.perf_counter() - t0:.1f} s"
    )
    for name, st in ev.attacks.items():
        rate = st.get("success_rate")
        click.echo(
            f"  {name}: {st['successes']}/{st['attacked']} fooled"
            + ("" if rate is None else f" ({rate:.1%}), mean queries {st['mean_queries']:.1f}")
        )
    click.echo(f"wrote {files['json']}\nwrote {files['html']}")

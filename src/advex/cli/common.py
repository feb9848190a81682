"""What the ``advex`` commands share: attacks by name, model and data loading, the common
options, output folders (checked writable before any work, one run kind per folder) and turning
library errors into clean command-line errors."""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from advex.threats import NORMS

__all__ = [
    "LibraryChoice",
    "presets",
    "methods",
    "schedules",
    "available_attacks",
    "find_attack",
    "parse_params",
    "build_attack",
    "load_model",
    "load_data",
    "targets_for",
    "parse_eps_list",
    "slug",
    "echo_files",
    "command_line",
    "common_options",
    "split_params",
    "run_errors",
    "prepare_out",
    "run_kind",
    "RUN_OUTPUTS",
    "warn_clean_accuracy",
    "ModelData",
    "RunSettings",
    "version",
]


class LibraryChoice(click.Choice):
    """A ``click.Choice`` whose choices are read from the library when first needed (so that
    ``advex --help`` does not import the training or evaluation packages)."""

    def __init__(self, load, case_sensitive: bool = True) -> None:
        self._load = load
        self.case_sensitive = case_sensitive

    @property
    def choices(self):  # type: ignore[override]
        return tuple(self._load())


def presets():
    from advex.evaluate.presets import PRESETS

    return PRESETS


def methods():
    from advex.defenses.spec import CLI_METHODS

    return CLI_METHODS


def schedules():
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
    """A zoo name or model directory, ``package.module:factory`` (+ ``--weights``), a
    ``torch.export`` program saved as ``.pt2``, an ONNX model ``.onnx`` or a scikit-learn model
    ``sklearn:model.skops`` (adapters that count queries); loading goes through
    :func:`advex.models.load`, which never runs code from a file. Its errors become click errors
    naming the file."""
    from advex import models, zoo

    mean_std = _parse_normalize(normalize) if normalize else None
    is_export = spec.lower().endswith((".pt2", ".onnx", ".skops", ".pkl", ".pickle", ".joblib"))
    is_export = is_export or spec.startswith(("sklearn:", "onnx:"))  # adapters (advex.models)
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


class ClassTarget(click.ParamType):
    """``--target``: a class index (an integer) or a class name (kept as a string and looked up
    in the data's ``class_names``)."""

    name = "CLASS"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            return text


def targets_for(ds, targeted: bool, target: int | str | None, seed: int):
    """The target of every point: ``--target`` (an index or one of the dataset's class names,
    e.g. ``"stop"``), a seeded random wrong class with ``--targeted``, or None."""
    import torch

    if target is not None:
        from advex.data import class_index

        try:
            return class_index(ds, target, what=f"class of {ds.name}")
        except (ValueError, TypeError) as err:
            raise click.BadParameter(str(err), param_hint="--target") from err
    if not targeted:
        return None
    # a seeded random wrong class per point
    g = torch.Generator().manual_seed(int(seed))
    shift = torch.randint(1, ds.num_classes, (len(ds),), generator=g)
    return (ds.y + shift) % ds.num_classes


def parse_eps_list(text: str | None) -> list[float] | None:
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


def slug(name: str) -> str:
    s = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
    return "_".join(filter(None, s.split("_"))) or "attack"


def echo_files(out: Path, files: list[Path]) -> None:
    click.echo(f"\nwrote to {out}/: " + ", ".join(p.name for p in files))


def command_line() -> str:
    return " ".join(["advex", *sys.argv[1:]]) if sys.argv else "advex"


def version() -> str:
    import advex

    return advex.__version__


def common_options(f):
    options = [
        click.option(
            "--model",
            "model_spec",
            default="mnist-smallcnn",
            show_default=True,
            help="Zoo name (see `advex list`), a saved model directory, "
            "package.module:factory (a function returning an nn.Module, a scikit-learn "
            "estimator or a prediction function; with --weights), a torch.export program "
            "(.pt2), an ONNX model (.onnx) or a scikit-learn model (sklearn:model.skops).",
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
            "--n-points",
            "n",
            type=click.IntRange(min=1),
            default=None,
            help="Use only the first N points (default: all). Under torchrun write --n-points "
            "(torchrun reads --n as an abbreviation of its own options).",
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
            type=ClassTarget(),
            default=None,
            help="Target class for every point, an index or a class name such as 'stop' or "
            "'benign' (implies --targeted; points of that class are skipped).",
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
            "--force",
            is_flag=True,
            help="Write into an --out folder that holds another kind of run (e.g. a preset "
            "evaluation), removing that run's files first (default: refuse).",
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


def split_params(params: tuple[str, ...], names: list[str]) -> dict[str, list[str]]:
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


def run_errors(fn, *args, **kwargs):
    """Library errors (bad values, shapes) become clean CLI errors without a traceback."""
    try:
        return fn(*args, **kwargs)
    except click.ClickException:
        raise
    except (ValueError, TypeError) as err:
        raise click.ClickException(str(err)) from err


# ----------------------------------------------------------------------------------------------
# Output folders
# ----------------------------------------------------------------------------------------------

#: every file or folder an ``advex`` run may write (what ``--force`` removes; nothing else is)
RUN_OUTPUTS = ("results.json", "report.html", "adversarial.safetensors", "curve.png", "state")
#: which command wrote a results.json, told by the keys only that command writes
_KIND_KEYS = (
    ("verdict", "evaluate (preset)"),
    ("untargeted", "demo"),
    ("attack", "attack"),
    ("attacks", "evaluate --attack"),
)


def run_kind(out_dir: Path) -> str | None:
    """The kind of run whose files ``out_dir`` holds (``"attack"``, ``"demo"``,
    ``"evaluate --attack"``, ``"evaluate (preset)"``, ``"unknown"``), or None if none."""
    results = out_dir / "results.json"
    if results.is_file():
        try:
            doc = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "unknown"
        if isinstance(doc, dict):
            for key, kind in _KIND_KEYS:
                if key in doc:
                    return kind
        return "unknown"
    if (out_dir / "state").is_dir() or (out_dir / "report.html").exists():
        return "evaluate (preset)"
    return None


def _remove_run(out_dir: Path) -> None:
    import shutil

    for name in RUN_OUTPUTS:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in out_dir.glob("triptych*.png"):
        p.unlink()


def prepare_out(out: str | os.PathLike, kind: str | None = None, force: bool = False) -> Path:
    """Make the output folder and prove it writable before any work (create it, write and delete
    a probe file), so that a run never ends with its results lost. With ``kind``: refuse a folder
    holding another kind of run (``advex attack`` into a preset evaluation's folder would leave
    a report and a state contradicting the new results) unless ``force``, which removes that
    run's files (only the files advex writes; see :func:`run_kind`)."""
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".advex-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise click.ClickException(
            f"cannot write to --out {out_dir}: {reason}; choose a writable folder"
        ) from err
    if kind is None:
        return out_dir
    old = run_kind(out_dir)
    if old is not None and old != kind:
        if not force:
            what = "an earlier run of unknown kind" if old == "unknown" else f"an `advex {old}` run"
            raise click.ClickException(
                f"--out {out_dir} holds {what}; writing `advex {kind}` results there would mix "
                "two runs. Use another --out, or --force to remove the old run's files first"
            )
        _remove_run(out_dir)
    return out_dir


#: below this clean accuracy a run warns: the labels or the input normalisation are likely wrong
LOW_CLEAN_ACCURACY = 0.2


def warn_clean_accuracy(clean_accuracy: float, n: int) -> None:
    """Warn (stderr) when the model gets almost every clean point wrong: robust accuracy is then
    meaningless, and the cause is usually the data, not the model."""
    if clean_accuracy < LOW_CLEAN_ACCURACY:
        click.echo(
            f"warning: clean accuracy is only {clean_accuracy:.1%} on {n} points: are the "
            "labels right, and does the model expect normalised inputs (--normalize MEAN,STD) "
            "or another input range? Robust accuracy cannot exceed clean accuracy.",
            err=True,
        )


# ----------------------------------------------------------------------------------------------
# The common options, grouped
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelData:
    """What is evaluated: ``--model/--weights/--normalize`` and ``--data/--split/--n``."""

    model_spec: str
    weights: str | None
    normalize: str | None
    data_spec: str
    split: str
    n: int | None

    def load_data(self):
        return load_data(self.data_spec, self.split, self.n)

    def load_model(self):
        return load_model(self.model_spec, self.weights, self.normalize)

    def meta(self, n: int) -> dict[str, Any]:
        """The ``model`` / ``data`` entries of results.json."""
        return {
            "model": self.model_spec,
            "data": {"spec": self.data_spec, "split": self.split, "n": n},
        }


@dataclass(frozen=True)
class RunSettings:
    """How a command runs: ``--batch-size``, ``--out`` (+ ``--force``), ``--seed``,
    ``--progress``."""

    batch_size: int
    out: str
    force: bool
    seed: int
    progress: bool

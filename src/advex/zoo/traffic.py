"""Traffic-sign reference models: ``gtsrb-cnn`` (and its cheap test model ``gtsrb-cnn-small``),
compact CNNs trained by advex on GTSRB.

Trained deterministically (fixed seed, fixed torch threads) on the training images found under
the data root (:func:`advex.data.gtsrb`) with light augmentation (small rotations, scales and
shifts; brightness and contrast), evaluated on the full official test set (12,630 images), and
cached like the MNIST models (``model.safetensors`` + ``card.json`` under the zoo cache, trained
once under an inter-process lock). Accuracy and training time are in the card.

The data root is, in order: ``data_root=``, ``$ADVEX_DATASETS/gtsrb-32x32``, then
``../shared/datasets/gtsrb-32x32`` next to the repository; a folder holding ``GTSRB/`` (or
``Final_Training`` / ``Final_Test``).

Two recipes: ``gtsrb-cnn`` (:data:`GTSRB_RECIPE`, the reference model of the CLI, the docs and
the benchmark; about 9 CPU minutes on first use: 7 epochs, channels-last) and ``gtsrb-cnn-small``
(:data:`GTSRB_SMALL_RECIPE`, the cheap test model the tests use; about 2.5 CPU minutes).

>>> model = advex.zoo.load("gtsrb-cnn")        # trains on first use
>>> model.card["accuracy"], model.card["class_names"][14]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from advex.models.wrappers import Normalize

from . import (
    CARD_FILE,
    accuracy,
    card_fields,
    file_lock,
    load_dir,
    models_root,
    recipe_fingerprint,
    register_arch,
    save,
)

__all__ = [
    "gtsrb_cnn",
    "load_traffic",
    "train_traffic",
    "traffic_data_root",
    "GTSRB_RECIPE",
    "GTSRB_SMALL_RECIPE",
    "TRAFFIC_RECIPES",
    "GTSRB_MEAN",
]

GTSRB_MEAN = (0.34, 0.31, 0.32)
GTSRB_STD = (0.27, 0.26, 0.27)

#: the recipe of ``gtsrb-cnn-small``, the cheap *test* model (the tests and the benchmark's
#: ``--quick`` mode use it, so that a fresh CI clone trains only this one; its fingerprint is
#: stored in the card: change it, and the cached model is retrained)
GTSRB_SMALL_RECIPE = {
    "arch": "gtsrb-cnn",
    "arch_kwargs": {"width": 32, "standardize": True},
    "epochs": 3,
    "lr": 3e-3,
    "batch_size": 128,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "weight_decay": 0.0,
    "augment": {
        "rotate_deg": 10.0,
        "scale": [0.9, 1.1],
        "shift_px": 2,
        "brightness": 0.3,
        "contrast": 0.3,
    },
    "seed": 0,
    "threads": 1,
    "min_accuracy": 0.90,
}

#: the recipe of ``gtsrb-cnn``, the reference traffic-sign model (CLI default, docs, benchmark)
GTSRB_RECIPE = {
    "arch": "gtsrb-cnn",
    "arch_kwargs": {"width": 32, "standardize": True, "convs": [1, 2, 2]},
    "epochs": 7,
    "lr": 3e-3,
    "batch_size": 128,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "weight_decay": 0.0,
    "augment": {
        "rotate_deg": 12.0,
        "scale": [0.8, 1.1],
        "shift_px": 3,
        "brightness": 0.3,
        "contrast": 0.4,
        "blur": 1.0,
        "color": 0.05,
    },
    "seed": 0,
    "threads": 1,
    "min_accuracy": 0.97,
    "channels_last": True,  # NHWC convolutions: ~9% less CPU per image here
}

#: the named traffic-sign models and their recipes
TRAFFIC_RECIPES = {"gtsrb-cnn": GTSRB_RECIPE, "gtsrb-cnn-small": GTSRB_SMALL_RECIPE}


class PerImageStandardize(nn.Module):
    """Per-image contrast normalisation: subtract each image's per-channel mean and divide by
    its per-channel standard deviation (+ ``eps``). Differentiable, so attacks still work in
    the ``[0, 1]`` input space; it removes GTSRB's wide brightness and contrast variation.
    ``(N, C, H, W) -> (N, C, H, W)``."""

    def __init__(self, eps: float = 0.01) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        return (x - mean) / (std + self.eps)


def gtsrb_cnn(
    num_classes: int = 43,
    width: int = 32,
    mean: Sequence[float] = GTSRB_MEAN,
    std: Sequence[float] = GTSRB_STD,
    standardize: bool = False,
    convs: Sequence[int] = (1, 1, 1),
    dropout: float = 0.3,
) -> nn.Sequential:
    """Input normalisation → three [Conv3×3-BN-ReLU (× ``convs[i]``) - MaxPool] blocks of
    ``width``, ``2·width``, ``4·width`` channels → Dropout(``dropout``) → FC(classes). Input
    ``(N, 3, 32, 32)`` in ``[0, 1]``.

    The normalisation is :class:`PerImageStandardize` when ``standardize`` (the zoo recipes),
    else a fixed per-channel ``Normalize(mean, std)``."""
    w = int(width)
    if len(convs) != 3 or any(int(c) < 1 for c in convs):
        raise ValueError(f"convs must be three positive counts, got {convs!r}")

    def block(cin: int, cout: int, n: int) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for i in range(int(n)):
            layers += [
                nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
        return [*layers, nn.MaxPool2d(2)]

    return nn.Sequential(
        PerImageStandardize() if standardize else Normalize(list(mean), list(std)),
        *block(3, w, convs[0]),
        *block(w, 2 * w, convs[1]),
        *block(2 * w, 4 * w, convs[2]),
        nn.Flatten(),
        nn.Dropout(float(dropout)),
        nn.Linear(4 * w * 16, num_classes),
    )


register_arch("gtsrb-cnn", gtsrb_cnn)


def sign_augment(cfg: dict):
    """The training augmentation: per image a random rotation (± ``rotate_deg``), scale, shift
    (± ``shift_px`` pixels), brightness (± ``brightness``) and contrast (× 1 ± ``contrast``),
    and, when the keys are given, a Gaussian blur of σ uniform in [0, ``blur``] pixels and a
    colour cast (each channel × 1 ± ``color``); all drawn from the trainer's generator
    (deterministic per seed). No flips: a mirrored sign is another sign (left/right turns)."""
    rot = math.radians(float(cfg["rotate_deg"]))
    s_lo, s_hi = (float(v) for v in cfg["scale"])
    shift = float(cfg["shift_px"])
    b, c = float(cfg["brightness"]), float(cfg["contrast"])
    blur = float(cfg.get("blur", 0.0))
    color = float(cfg.get("color", 0.0))

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, ch, h, w = x.shape
        u = torch.rand(n, 6, generator=gen)
        a = (2 * u[:, 0] - 1) * rot
        s = s_lo + (s_hi - s_lo) * u[:, 1]
        tx = (2 * u[:, 2] - 1) * shift * 2 / w
        ty = (2 * u[:, 3] - 1) * shift * 2 / h
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.cos(a) / s
        theta[:, 0, 1] = -torch.sin(a) / s
        theta[:, 1, 0] = torch.sin(a) / s
        theta[:, 1, 1] = torch.cos(a) / s
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if blur > 0:  # separable Gaussian, one σ per image (σ → 0 is the identity)
            sigma = (torch.rand(n, generator=gen) * blur).clamp_min(1e-3)
            t = torch.arange(-2, 3, dtype=x.dtype)
            k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
            k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (n*ch, 5)
            flat = out.reshape(1, n * ch, h, w)
            flat = F.conv2d(
                F.pad(flat, (2, 2, 0, 0), mode="replicate"), k.view(-1, 1, 1, 5), groups=n * ch
            )
            flat = F.conv2d(
                F.pad(flat, (0, 0, 2, 2), mode="replicate"), k.view(-1, 1, 5, 1), groups=n * ch
            )
            out = flat.view(n, ch, h, w)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        con = (1 + (2 * u[:, 4] - 1) * c).view(n, 1, 1, 1)
        bri = ((2 * u[:, 5] - 1) * b).view(n, 1, 1, 1)
        out = (out - mean) * con + mean + bri
        if color > 0:
            out = out * (1 + (2 * torch.rand(n, ch, 1, 1, generator=gen) - 1) * color)
        return out.clamp(0.0, 1.0)

    return augment


def traffic_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The GTSRB folder to train on: ``data_root``, else ``$ADVEX_DATASETS/gtsrb-32x32``, else
    ``../shared/datasets/gtsrb-32x32`` beside the repository (raises ``FileNotFoundError``
    naming every place looked at)."""
    tried: list[Path] = []
    if data_root is not None:
        p = Path(data_root).expanduser()
        if p.is_dir():
            return p
        raise FileNotFoundError(f"gtsrb-cnn: data_root {p} is not a directory")
    env = os.environ.get("ADVEX_DATASETS")
    if env:
        tried.append(Path(env).expanduser() / "gtsrb-32x32")
    repo = Path(__file__).resolve().parents[3]  # src/advex/zoo/traffic.py -> repository root
    tried += [
        repo.parent / "shared" / "datasets" / "gtsrb-32x32",
        Path.cwd().parent / "shared" / "datasets" / "gtsrb-32x32",
    ]
    for p in tried:
        if p.is_dir():
            return p
    raise FileNotFoundError(
        "gtsrb-cnn needs the GTSRB images to train on (nothing is downloaded): pass "
        "data_root=PATH (a folder holding GTSRB/Final_Training and GTSRB/Final_Test), set "
        "$ADVEX_DATASETS, or place them at one of: " + ", ".join(str(p) for p in tried)
    )


def fit_sign_model(
    model: nn.Module,
    data,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    schedule: str,
    weight_decay: float,
    seed: int,
    augment: dict | None,
    label_smoothing: float,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "",
) -> nn.Module:
    """Train ``model`` on ``data`` the way the traffic-sign recipes do: Adam, label-smoothed
    cross-entropy, the trainer's seeded streams, :func:`sign_augment` when ``augment`` is a
    dict (none when ``None``). Returns the model in eval mode."""
    from advex.training import StreamSeed, Trainer

    smoothing = float(label_smoothing)

    def loss(m, xb, yb, gen):
        logits = m(xb)
        return F.cross_entropy(logits, yb, label_smoothing=smoothing), logits

    Trainer(
        model,
        loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer="adam",
        schedule=schedule,
        weight_decay=weight_decay,
        seeds=StreamSeed(seed),
        augment=sign_augment(augment) if augment is not None else None,
        channels_last=channels_last,
        check_finite=False,
        progress=progress,
        desc=desc,
    ).fit(data)  # hands the model back in eval mode
    return model


def train_traffic(
    name: str, recipe: dict, root: str | os.PathLike, progress: bool = True
) -> tuple[nn.Module, dict]:
    """Train a traffic-sign model with ``recipe`` (a dict shaped like :data:`GTSRB_RECIPE`) on
    the GTSRB training images under ``root``; return ``(model, card)`` — the card holds the
    accuracy on the full official test set, the wall and process-CPU training time and the
    recipe fingerprint. Deterministic per recipe (seed and torch threads are fixed)."""
    import warnings

    from advex import data as D

    r = recipe
    root = Path(root)
    with warnings.catch_warnings(record=True) as caught:  # the absent-rows note goes in the card
        warnings.simplefilter("always", D.GTSRBWarning)
        train_ds = D.gtsrb(root, "train")
        test_ds = D.gtsrb(root, "test")
    t0, c0 = time.perf_counter(), time.process_time()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(r["threads"]))  # the weights must not depend on the caller's
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r["seed"])
            model = gtsrb_cnn(**r["arch_kwargs"])
            fit_sign_model(
                model,
                train_ds,
                epochs=r["epochs"],
                batch_size=r["batch_size"],
                lr=r["lr"],
                schedule=r["schedule"],
                weight_decay=r["weight_decay"],
                seed=r["seed"],
                augment=r["augment"],
                label_smoothing=r["label_smoothing"],
                channels_last=bool(r.get("channels_last", False)),
                progress=progress,
                desc=f"advex.zoo: training {name}",
            )
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        acc = accuracy(model, test_ds)
    finally:
        torch.set_num_threads(threads_before)
    card = {
        "name": name,
        "key": name,
        "recipe": {k: v for k, v in r.items() if k not in ("arch", "arch_kwargs")},
        "seed": r["seed"],
        "data": {
            "name": "gtsrb",
            "source": f"original GTSRB layout under {train_ds.info['root']}",
            "train": train_ds.info,
            "test": test_ds.info,
            "notes": [str(w.message) for w in caught],
        },
        "accuracy": acc,
        "accuracy_split": "gtsrb official test set (GT-final_test.csv)",
        **card_fields(r, train_ds, test_ds, num_classes=43, wall=wall, cpu=cpu),
    }
    return model, card


def load_traffic(
    name: str,
    *,
    cache_dir=None,
    data_root=None,
    progress: bool = True,
    retrain: bool = False,
) -> nn.Module:
    """Load ``gtsrb-cnn`` (the reference model) or ``gtsrb-cnn-small`` (the cheap test model)
    from the zoo cache, training it first when absent (or when the cached one was trained with
    another recipe, or ``retrain``). The entry point named in ``advex.zoo._EXTERNAL``."""
    if name not in TRAFFIC_RECIPES:
        raise ValueError(
            f"advex.zoo.traffic has no model {name!r} (only {sorted(TRAFFIC_RECIPES)})"
        )
    recipe = TRAFFIC_RECIPES[name]
    directory = models_root(cache_dir) / name
    fp = recipe_fingerprint(recipe)

    def cached():
        if retrain or not (directory / CARD_FILE).is_file():
            return None
        model = load_dir(directory)
        return model if model.card.get("recipe_id") == fp else None

    model = cached()
    if model is not None:
        return model
    root = traffic_data_root(data_root)
    with file_lock(directory.parent / f".{name}.lock"):
        model = cached()  # another process may have trained it while we waited
        if model is not None:
            return model
        model, card = train_traffic(name, recipe, root, progress)
        save(model, directory, card, recipe["arch"], recipe["arch_kwargs"])
    return load_dir(directory)

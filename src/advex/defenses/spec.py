"""``advex train``: build a model and data from names, train it, write a zoo model directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._io import derive_seed64
from .distillation import DefensiveDistillation, DistillationResult
from .training import METHODS, AdversarialTrainer, TrainingResult

__all__ = ["train_from_spec", "CLI_METHODS"]

CLI_METHODS = tuple(m for m in METHODS if m != "standard") + ("distill", "standard")


def _resolve_model(model: str, seed: int):
    """``(fresh or loaded model, arch, arch_kwargs)`` for a zoo name, an architecture name, or a
    saved model directory (fine-tuning starts from its weights)."""
    from .. import zoo

    if model in zoo.available():
        rec = zoo.recipe(model)
        arch, kwargs = rec["arch"], dict(rec.get("arch_kwargs") or {})
    elif model in zoo.ARCHITECTURES:
        arch, kwargs = model, {}
    else:
        path = Path(model).expanduser()
        if path.exists():
            m = zoo.load(path)
            return m, m.card["arch"], dict(m.card.get("arch_kwargs") or {})
        raise ValueError(
            f"unknown model {model!r}: expected a zoo name {zoo.available()}, an architecture "
            f"{sorted(zoo.ARCHITECTURES)} or a saved model directory"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed64(seed, 3))
        return zoo.build(arch, **kwargs), arch, kwargs


def train_from_spec(
    model: str,
    data: str,
    method: str,
    eps: float,
    epochs: int,
    out: str | os.PathLike,
    *,
    norm: str = "linf",
    temperature: float = 100.0,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    **kwargs,
) -> TrainingResult | DistillationResult:
    """What ``advex train`` runs: train ``model`` on the ``data`` spec's train split with
    ``method``, check it on the test split, and write ``out/model.safetensors`` +
    ``out/card.json`` (loadable with ``advex.zoo.load(out)``), ``log.json``, and for
    adversarial training ``training_curve.png`` and per-epoch checkpoints.

    ``model``: a zoo name (``"mnist-smallcnn"``: its architecture, freshly initialised), an
    architecture (``"smallcnn"``) or a saved model directory (fine-tuned from its weights).
    ``data``: an :func:`advex.data.load` spec (``"mnist5k"``, ``"mnist:PATH"``).
    ``method``: ``pgd``, ``trades``, ``mart``, ``fgsm-rs``, ``standard`` or ``distill``
    (``temperature`` applies to it; ``eps`` and ``norm`` are then ignored); keyword arguments
    that are ``None`` are dropped (so a CLI can pass its unset options). Other ones go
    to :class:`AdversarialTrainer` / :class:`DefensiveDistillation`. ``device``: where
    adversarial training runs (``"auto"``: CUDA — ``cuda:LOCAL_RANK`` under ``torchrun`` —,
    then MPS, then CPU; see :func:`advex.training.ddp.local_device`); None keeps the CPU.

    >>> train_from_spec("mnist-smallcnn", "mnist5k", "trades", 0.3, 10, "runs/trades")
    """
    from .. import data as D

    method = str(method).lower()
    if method not in CLI_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {CLI_METHODS}")
    train = D.load(data, "train")
    test = D.load(data, "test")
    info = {
        "spec": data,
        "train": train.name,
        "n_train": len(train),
        "test": test.name,
        "n_test": len(test),
    }
    if method == "distill":
        if resume:
            raise ValueError("--resume is not supported for --method distill")
        for k in (
            "eps_warmup_epochs", "attack_steps", "attack_step_size", "beta", "eval_n", "amp",
            "compile",
        ):  # fmt: skip
            if kwargs.get(k) is not None:
                raise ValueError(f"{k} does not apply to defensive distillation")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        net, arch, arch_kwargs = _resolve_model(model, seed)
        del net
        d = DefensiveDistillation(
            arch,
            arch_kwargs,
            temperature=temperature,
            epochs=epochs,
            seed=seed,
            out_dir=out,
            progress=progress,
            **kwargs,
        )
        return d.fit(train, test, card_extra={"data": info})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    net, arch, arch_kwargs = _resolve_model(model, seed)
    if device is not None:
        from ..training.ddp import local_device

        net = net.to(local_device(device))
    trainer = AdversarialTrainer(
        net,
        method,
        eps,
        norm,
        epochs=epochs,
        seed=seed,
        out_dir=out,
        resume=resume,
        arch=arch,
        arch_kwargs=arch_kwargs,
        progress=progress,
        bounds=train.bounds,
        **kwargs,
    )
    return trainer.fit(train, test, card_extra={"data": info})

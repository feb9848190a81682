"""Defensive distillation (Papernot et al. 2016, "Distillation as a Defense to Adversarial
Perturbations against Deep Neural Networks").

1. Train a *teacher* with its softmax at temperature ``T``: loss ``CE(softmax(z / T), y)``.
2. Label the training set with the teacher's soft labels ``q = softmax(z_teacher(x) / T)``.
3. Train a *student* (same architecture) on ``q`` at the same temperature:
   loss ``−Σ_k q_k log softmax(z_student / T)_k``.
4. Deploy the student at ``T = 1``: the deployed network returns its raw logits ``z``.

Training at a high temperature makes the logits roughly ``T`` times larger than a normally
trained network's, so at ``T = 1`` the softmax saturates: the gradient of the cross-entropy
underflows to (nearly) zero and FGSM / PGD on the cross-entropy stall. The model is *not* more
robust — the C&W margin loss works on the logits directly and still finds adversarial examples
for almost every point (Carlini & Wagner 2016, "Defensive Distillation is Not Robust to
Adversarial Examples"). advex ships it as a reference case of gradient masking.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import derive_seed64, write_json
from ..core.validate import check_positive_int
from ..training import DerivedSeeds, Trainer, optimizer_settings
from .training import clean_accuracy, labelled_xy

__all__ = ["DefensiveDistillation", "DistillationResult", "TemperatureLoss", "distill"]


@dataclass
class DistillationResult:
    """The deployed student (raw logits, i.e. temperature 1), the teacher, held-out clean
    accuracies (``None`` without held-out data), the per-epoch log and the card written to
    ``out_dir`` (if any)."""

    model: nn.Module
    teacher: nn.Module
    accuracy: float | None = None
    teacher_accuracy: float | None = None
    temperature: float = 100.0
    log: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    out_dir: Path | None = None
    card: dict = field(default_factory=dict)


class TemperatureLoss:
    """Cross-entropy at softmax temperature ``T``, a loss object of
    :class:`advex.training.Trainer`: ``CE(softmax(z / T), y)`` for class labels
    (``soft=False``, the teacher) or ``−Σ_k q_k log softmax(z / T)_k`` for soft labels ``q``
    (``soft=True``, the student). Returns ``(loss, z)``."""

    def __init__(self, temperature: float, soft: bool = False) -> None:
        self.temperature = float(temperature)
        self.soft = bool(soft)

    def __call__(self, model, xb, yb, generator):
        logits = model(xb)
        logp = F.log_softmax(logits / self.temperature, dim=1)
        if self.soft:
            return -(yb * logp).sum(dim=1).mean(), logits
        return F.nll_loss(logp, yb), logits


class DefensiveDistillation:
    """Defensive distillation of Papernot et al. (2016) (see the module docstring).

    Args:
        arch: zoo architecture of teacher and student (``"smallcnn"``); or pass ``build``, a
            callable returning a fresh model, and leave ``arch`` for the card.
        arch_kwargs: keyword arguments of the architecture.
        temperature: ``T`` of training (100, the paper's MNIST value); deployment is at 1.
        epochs: training epochs of the student; teacher_epochs: of the teacher (= epochs).
        lr, optimizer, schedule, weight_decay, batch_size: as in
            :class:`~advex.defenses.AdversarialTrainer` (Adam 1e-3, one-cycle, 128).
        teacher: an already trained teacher (trained at ``temperature``) to skip step 1.
        seed: seeds initialisation, shuffling and dropout (same seed → same weights).
        out_dir: write the student in the zoo format (``model.safetensors`` + ``card.json``),
            the teacher under ``out_dir/teacher``, and ``log.json``.

    Cost: ``teacher_epochs + epochs`` ordinary training epochs plus one forward pass of the
    teacher over the training set.

    >>> result = DefensiveDistillation("smallcnn", temperature=100, epochs=10).fit(train, test)
    >>> distilled = result.model          # raw logits: CE gradients vanish, margin ones do not
    """

    def __init__(
        self,
        arch: str | None = "smallcnn",
        arch_kwargs: dict | None = None,
        *,
        build=None,
        temperature: float = 100.0,
        epochs: int = 10,
        teacher_epochs: int | None = None,
        lr: float | None = None,
        optimizer: str = "adam",
        schedule: str = "onecycle",
        weight_decay: float = 0.0,
        batch_size: int = 128,
        teacher: nn.Module | None = None,
        seed: int = 0,
        out_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        t = float(temperature)
        if not t > 0 or t != t or t == float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        check_positive_int(epochs, "epochs")
        if teacher_epochs is not None:
            check_positive_int(teacher_epochs, "teacher_epochs")
        check_positive_int(batch_size, "batch_size")
        lr = optimizer_settings(optimizer, schedule, lr, weight_decay)
        if build is None:
            if arch is None:
                raise ValueError("pass arch= (a zoo architecture name) or build= (a callable)")
            from ..zoo import ARCHITECTURES

            if arch not in ARCHITECTURES:
                raise ValueError(
                    f"unknown architecture {arch!r}; available: {sorted(ARCHITECTURES)}"
                )
        elif not callable(build):
            raise TypeError("build must be a callable returning a fresh nn.Module")
        if out_dir is not None and arch is None:
            raise ValueError("out_dir needs arch= (a zoo architecture name) to save the model")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self._build = build
        self.temperature = t
        self.epochs = int(epochs)
        self.teacher_epochs = int(teacher_epochs) if teacher_epochs is not None else self.epochs
        self.lr = float(lr)
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.teacher = teacher
        self.seed = int(seed)
        self.out_dir = None if out_dir is None else Path(out_dir).expanduser()
        self.progress = bool(progress)

    def config(self) -> dict:
        return {
            "method": "distill",
            "temperature": self.temperature,
            "epochs": self.epochs,
            "teacher_epochs": self.teacher_epochs,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "loss": "soft cross-entropy at temperature T; deployed at T = 1",
        }

    def _new_model(self, which: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed64(self.seed, which, 7))
            if self._build is not None:
                return self._build()
            from ..zoo import build

            return build(self.arch, **self.arch_kwargs)

    def _train(self, model, x, targets, soft: bool, epochs: int, tag: str, log: list) -> None:
        role = 1 if tag == "teacher" else 2
        run = Trainer(
            model,
            TemperatureLoss(self.temperature, soft=soft),
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            seeds=DerivedSeeds(self.seed, shuffle=(12, role), batch=(13, role), global_=(11, role)),
            progress=self.progress,
            desc=f"distillation: {tag}",
            name=tag,
        ).fit((x, targets))  # hands the model back in eval mode
        for e in run.log:
            log.append({"model": tag, "epoch": e["epoch"], "train_loss": e["train_loss"]})

    @torch.no_grad()
    def soft_labels(self, teacher: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """``softmax(teacher(x) / T)`` (the teacher in eval mode)."""
        was = teacher.training
        teacher.eval()
        try:
            out = [
                (teacher(x[i : i + batch]) / self.temperature).softmax(dim=1)
                for i in range(0, x.shape[0], batch)
            ]
        finally:
            teacher.train(was)
        return torch.cat(out)

    def fit(
        self, train_data, val_data=None, *, card_extra: dict | None = None
    ) -> DistillationResult:
        """Train teacher (unless given) and student; return the deployed student.
        ``card_extra`` is merged into the saved card (e.g. data provenance)."""
        t0 = time.perf_counter()
        x, y = labelled_xy(train_data, "train_data")
        log: list[dict] = []
        teacher = self.teacher
        if teacher is None:
            teacher = self._new_model(1)
            self._train(
                teacher, x, y, soft=False, epochs=self.teacher_epochs, tag="teacher", log=log
            )
        q = self.soft_labels(teacher, x)
        student = self._new_model(2)
        self._train(student, x, q, soft=True, epochs=self.epochs, tag="student", log=log)
        student.eval()
        acc = t_acc = None
        if val_data is not None:
            xv, yv = labelled_xy(val_data, "val_data")
            acc = clean_accuracy(student, xv, yv)
            t_acc = clean_accuracy(teacher, xv, yv)
        result = DistillationResult(
            model=student,
            teacher=teacher,
            accuracy=acc,
            teacher_accuracy=t_acc,
            temperature=self.temperature,
            log=log,
            wall_time_s=round(time.perf_counter() - t0, 3),
            out_dir=self.out_dir,
        )
        if self.out_dir is not None:
            result.card = self._save(result, card_extra)
        return result

    def _save(self, result: DistillationResult, card_extra: dict | None = None) -> dict:
        out = self.out_dir
        card = {
            "name": f"{self.arch or 'model'}-distilled-T{self.temperature:g}",
            "defense": "defensive-distillation",
            "recipe": self.config(),
            "temperature": self.temperature,
            "deployed_temperature": 1.0,
            "accuracy": result.accuracy,
            "teacher_accuracy": result.teacher_accuracy,
            "train_time_s": result.wall_time_s,
            "warning": (
                "defensive distillation masks cross-entropy gradients (saturated softmax); it "
                "is not robust to margin-loss attacks such as C&W (Carlini & Wagner 2016)"
            ),
        }
        card.update(card_extra or {})
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "log.json", {"config": self.config(), "log": result.log})
        from .. import zoo

        zoo.save(result.model, out, card, arch=self.arch, arch_kwargs=self.arch_kwargs)
        zoo.save(
            result.teacher,
            out / "teacher",
            {**card, "name": card["name"] + "-teacher", "role": "teacher"},
            arch=self.arch,
            arch_kwargs=self.arch_kwargs,
        )
        return card


def distill(
    train_data,
    val_data=None,
    *,
    arch: str = "smallcnn",
    temperature: float = 100.0,
    epochs: int = 10,
    **kwargs,
) -> DistillationResult:
    """Shortcut: ``DefensiveDistillation(arch, temperature=..., epochs=..., **kwargs).fit(...)``.

    >>> distilled = distill(advex.data.mnist5k("train"), temperature=100, epochs=5).model
    """
    return DefensiveDistillation(arch, temperature=temperature, epochs=epochs, **kwargs).fit(
        train_data, val_data
    )

"""Adversarial training: PGD-AT, TRADES, MART and FGSM-RS in one trainer.

:class:`AdversarialTrainer` solves the robust-optimisation problem of Madry et al. (2018)

    min_θ  E_(x,y) [ max_{‖δ‖ ≤ ε} L(f_θ(x + δ), y) ]

with one of four recipes for the inner maximisation and the outer loss:

- ``"pgd"`` — Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
  Attacks": PGD on the cross-entropy from a uniform random start, train on the adversarial
  points only.
- ``"trades"`` — Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
  Accuracy": PGD on KL(p(x) ‖ p(x')) from ``x + 0.001·N(0, 1)``, loss
  ``CE(f(x), y) + β · KL(p(x) ‖ p(x_adv))``.
- ``"mart"`` — Wang et al. 2020, "Improving Adversarial Robustness Requires Revisiting
  Misclassified Examples": PGD on the cross-entropy, loss
  ``BCE(p(x_adv), y) + β · KL(p(x) ‖ p(x_adv)) · (1 − p_y(x))``.
- ``"fgsm-rs"`` — Wong et al. 2020, "Fast is better than free": one FGSM step of size
  ``α = 1.25 ε`` from a uniform random start, with the paper's guard against catastrophic
  overfitting (stop and revert when PGD accuracy on a held-out batch collapses).
- ``"standard"`` — plain cross-entropy training (the baseline).

The inner maximisation uses the same primitives as :class:`advex.attacks.PGD`
(:meth:`ThreatModel.random_start`, the norm's steepest-ascent step and
:meth:`ThreatModel.project`) in a lean loop that, unlike an evaluation attack, perturbs *every*
point (also those already misclassified) and returns the last iterate, as the papers do. The
held-out checks use :class:`advex.attacks.PGD` itself. Adversarial examples are generated with
the model in eval mode (BatchNorm running statistics and dropout frozen, as in the TRADES and
MART reference code); the weight update runs in train mode. ``generation_mode="train"`` switches
to generation in train mode (as in Wong et al.'s code).

Everything random is derived from ``seed``: the shuffling and random starts of epoch ``e`` come
from a generator seeded with ``(seed, e)``, and the global RNG (dropout) is re-seeded per epoch
inside a forked RNG state, so the caller's RNG is untouched and a run resumed from a checkpoint
ends with bit-identical weights.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..threats import ThreatModel

__all__ = [
    "AdversarialTrainer",
    "TrainingResult",
    "TrainingInterrupted",
    "METHODS",
    "SCHEDULES",
    "lr_at",
    "trades_loss",
    "mart_loss",
    "clean_accuracy",
    "plot_training_curve",
]

METHODS = ("pgd", "trades", "mart", "fgsm-rs", "standard")
SCHEDULES = ("onecycle", "cyclic", "piecewise", "cosine", "constant")
OPTIMIZERS = ("adam", "sgd")
CHECKPOINT_FORMAT = "advex-train-checkpoint/1"
_DEFAULT_BETA = {"trades": 6.0, "mart": 6.0}


class TrainingInterrupted(RuntimeError):
    """Raised by callbacks (e.g. in tests) to simulate an interruption."""


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers (seed, epoch, ...)."""
    h = 1469598103934665603
    for p in parts:
        h ^= int(p) & 0xFFFFFFFFFFFFFFFF
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def lr_at(schedule: str, lr: float, step: int, total: int) -> float:
    """Learning rate of global step ``step`` (0-based) out of ``total`` steps.

    - ``"constant"``: ``lr``.
    - ``"piecewise"``: ``lr``, ×0.1 after 50 % and again after 75 % of training (Madry et al.,
      Rice et al.).
    - ``"cyclic"``: the triangle of Wong et al. 2020, 0 → ``lr`` at 40 % → 0 (linear).
    - ``"onecycle"``: Smith's one-cycle policy as in PyTorch's ``OneCycleLR``: cosine warm-up
      from ``lr/25`` to ``lr`` over the first 30 %, then cosine annealing to ``lr/1e4``.
    - ``"cosine"``: cosine decay from ``lr`` to 0.
    """
    t = min(max((step + 1) / total, 0.0), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "piecewise":
        return lr * (0.1 if t > 0.5 else 1.0) * (0.1 if t > 0.75 else 1.0)
    if schedule == "cyclic":
        return lr * (t / 0.4 if t < 0.4 else (1.0 - t) / 0.6)
    if schedule == "onecycle":
        lo, hi, end = lr / 25.0, lr, lr / 25.0 / 1e4
        if t < 0.3:
            return lo + (hi - lo) * 0.5 * (1.0 - math.cos(math.pi * t / 0.3))
        return end + (hi - end) * 0.5 * (1.0 + math.cos(math.pi * (t - 0.3) / 0.7))
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def _as_xy(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(data, "tensors") and callable(data.tensors):
        x, y = data.tensors()
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    else:
        raise TypeError(
            f"{what} must be an advex.data.ArrayDataset or an (x, y) pair of tensors, "
            f"got {type(data).__name__}"
        )
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{what}: x and y must be torch tensors")
    if not x.is_floating_point():
        raise TypeError(f"{what}: x must be floating point, got {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    return x, y.long()


def _kl_per_sample(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits_p) ‖ softmax(logits_q)) per sample."""
    logp = F.log_softmax(logits_p, dim=1)
    logq = F.log_softmax(logits_q, dim=1)
    return (logp.exp() * (logp - logq)).sum(dim=1)


def trades_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """TRADES outer objective (Zhang et al. 2019, eq. 5):
    ``CE(f(x), y) + β · mean KL(p(x) ‖ p(x_adv))``; gradients flow through both terms."""
    return F.cross_entropy(logits_nat, y) + beta * _kl_per_sample(logits_nat, logits_adv).mean()


def mart_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """MART outer objective (Wang et al. 2020, eq. 8).

    ``BCE(p(x_adv), y) = −log p_y(x_adv) − log(1 − max_{k≠y} p_k(x_adv))`` plus
    ``β · KL(p(x) ‖ p(x_adv)) · (1 − p_y(x))``, which weights the consistency term by how
    badly the clean point is classified.
    """
    probs_adv = logits_adv.softmax(dim=1)
    other = probs_adv.scatter(1, y[:, None], -1.0).amax(dim=1)
    bce = F.cross_entropy(logits_adv, y) - torch.log((1.0 - other).clamp_min(1e-12)).mean()
    p_nat = logits_nat.softmax(dim=1)
    true_nat = p_nat.gather(1, y[:, None]).squeeze(1)
    kl = _kl_per_sample(logits_nat, logits_adv)
    return bce + beta * (kl * (1.0 - true_nat)).mean()


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    """What :meth:`AdversarialTrainer.fit` returns.

    ``log`` has one dict per completed epoch (learning rate, ε, training loss and accuracy on
    the training-time adversarial points, held-out clean and PGD robust accuracy when checked,
    seconds). ``clean_accuracy``/``robust_accuracy`` are the final held-out numbers of the
    returned model (``None`` without held-out data); ``card`` is the model card written to
    ``out_dir`` (if any).
    """

    model: nn.Module
    log: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    wall_time_s: float = 0.0
    stopped_early: str | None = None
    out_dir: Path | None = None
    card: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "log": self.log,
            "best_epoch": self.best_epoch,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "wall_time_s": self.wall_time_s,
            "stopped_early": self.stopped_early,
            "out_dir": None if self.out_dir is None else str(self.out_dir),
        }


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


class AdversarialTrainer:
    """Adversarial training with PGD-AT, TRADES, MART or FGSM-RS (see the module docstring).

    Args:
        model: the network to train, in place (inputs in ``bounds``, returns logits).
        method: ``"pgd"`` (Madry et al. 2018), ``"trades"`` (Zhang et al. 2019), ``"mart"``
            (Wang et al. 2020), ``"fgsm-rs"`` (Wong et al. 2020) or ``"standard"``.
        eps: training and evaluation budget (0.3 for MNIST L∞). norm: ``"linf"`` | ``"l2"``.
        epochs: number of passes over the training data.
        lr: peak learning rate (default 1e-3 for Adam, 0.1 for SGD).
        optimizer: ``"adam"`` (default) or ``"sgd"`` (momentum 0.9, Nesterov).
        schedule: ``"onecycle"`` (default), ``"cyclic"`` (Wong et al.), ``"piecewise"``
            (×0.1 at 50 % and 75 %), ``"cosine"`` or ``"constant"``; updated every batch.
        weight_decay: L2 penalty of the optimizer (0).
        batch_size: training batch (128).
        attack_steps: inner PGD steps (40 as in Madry/TRADES on MNIST; always 1 for fgsm-rs).
        attack_step_size: inner step α (default ``2.5 ε / steps``; ``1.25 ε`` for fgsm-rs).
        beta: the TRADES / MART trade-off weight (6.0 for both).
        eps_warmup_epochs: ramp ε linearly from 0 to ``eps`` over this many epochs (0 = off);
            the step size scales with ε.
        eval_every: run the held-out check every this many epochs (and after the last).
        eval_n: held-out points used by each check (500). eval_steps: PGD steps of the check
            (20, α = 2.5 ε / steps, one random start; advex.attacks.PGD).
        final_eval_steps: PGD steps of the final evaluation written to the card (40).
        select_best: return (and save) the checkpoint with the best held-out PGD accuracy.
        overfit_guard: fgsm-rs only: stop and revert to the previous epoch when PGD accuracy on
            a held-out batch drops by more than this (0.2, Wong et al.); ``None`` disables it.
        guard_n: size of that held-out batch (256).
        generation_mode: ``"eval"`` (default) or ``"train"``: the model's mode while the
            training-time adversarial examples are generated.
        seed: seeds shuffling, random starts and dropout (same seed → same weights).
        out_dir: where to write ``checkpoint.safetensors``/``checkpoint.json`` (every epoch),
            ``log.json``, ``training_curve.png`` and the final ``model.safetensors`` +
            ``card.json`` (zoo format; needs ``arch``).
        resume: continue from ``out_dir``'s checkpoint (same hyperparameters required).
        arch, arch_kwargs: the zoo architecture of ``model`` (taken from ``model.card`` when
            the model came from :func:`advex.zoo.load`), so ``advex.zoo.load(out_dir)`` works.
        progress: show a progress bar.
        channels_last: run convolutions on channels-last (NHWC) tensors while training;
            ``None`` (default) turns it on for 4-D image inputs to a model with ``Conv2d``
            layers (1.2–1.5× faster on CPU for the zoo CNNs). The model is handed back in
            the default memory format; the numbers are the same up to float rounding.

    Cost per training point and epoch: ``attack_steps`` forward+backward passes for the
    inner maximisation (1 for fgsm-rs, 0 for standard) plus one (two for TRADES/MART) for the
    weight update.

    >>> trainer = AdversarialTrainer(model, "trades", eps=0.3, epochs=10, out_dir="runs/trades")
    >>> result = trainer.fit(advex.data.mnist5k("train"), advex.data.mnist5k("test"))
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "pgd",
        eps: float = 0.3,
        norm: str = "linf",
        *,
        epochs: int = 10,
        lr: float | None = None,
        optimizer: str = "adam",
        schedule: str = "onecycle",
        weight_decay: float = 0.0,
        batch_size: int = 128,
        attack_steps: int | None = None,
        attack_step_size: float | None = None,
        beta: float | None = None,
        eps_warmup_epochs: float = 0,
        eval_every: int = 1,
        eval_n: int = 500,
        eval_steps: int = 20,
        final_eval_steps: int = 40,
        select_best: bool = True,
        overfit_guard: float | None = 0.2,
        guard_n: int = 256,
        generation_mode: str = "eval",
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        out_dir: str | os.PathLike | None = None,
        resume: bool = False,
        arch: str | None = None,
        arch_kwargs: dict | None = None,
        progress: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        method = str(method).lower().replace("_", "-")
        if method == "fgsm":
            method = "fgsm-rs"
        if method == "madry":
            method = "pgd"
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        lr = _optimizer_settings(optimizer, schedule, lr, weight_decay)
        if generation_mode not in ("eval", "train"):
            raise ValueError(f"generation_mode must be 'eval' or 'train', got {generation_mode!r}")
        eps = float(eps)
        if not eps >= 0 or math.isinf(eps):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if method != "standard" and eps == 0:
            raise ValueError(f"method {method!r} needs eps > 0 (use method='standard' for eps=0)")
        _positive_int(epochs, "epochs")
        _positive_int(batch_size, "batch_size")
        _positive_int(eval_every, "eval_every")
        _positive_int(eval_n, "eval_n")
        _positive_int(eval_steps, "eval_steps")
        _positive_int(final_eval_steps, "final_eval_steps")
        _positive_int(guard_n, "guard_n")
        if not 0 <= float(eps_warmup_epochs) <= int(epochs):
            raise ValueError(
                f"eps_warmup_epochs must be in [0, epochs={epochs}], got {eps_warmup_epochs}"
            )
        if method == "fgsm-rs":
            if attack_steps not in (None, 1):
                raise ValueError(f"fgsm-rs takes exactly one attack step, got {attack_steps}")
            attack_steps = 1
        elif attack_steps is None:
            attack_steps = 40
        _positive_int(attack_steps, "attack_steps")
        if attack_step_size is not None and not float(attack_step_size) > 0:
            raise ValueError(f"attack_step_size must be > 0, got {attack_step_size}")
        if beta is None:
            beta = _DEFAULT_BETA.get(method, 0.0)
        if not float(beta) >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if beta and method not in _DEFAULT_BETA:
            raise ValueError(f"beta is a TRADES/MART parameter; method {method!r} does not use it")
        if overfit_guard is not None and not 0 < float(overfit_guard) <= 1:
            raise ValueError(f"overfit_guard must be in (0, 1] or None, got {overfit_guard}")
        if resume and out_dir is None:
            raise ValueError("resume=True needs out_dir= (where the checkpoint is)")
        card = getattr(model, "card", None)
        if arch is None and isinstance(card, dict) and isinstance(card.get("arch"), str):
            arch = card["arch"]
            arch_kwargs = card.get("arch_kwargs", {}) if arch_kwargs is None else arch_kwargs

        self.model = model
        self.method = method
        self.threat = ThreatModel(norm=norm, eps=eps, bounds=bounds)
        self.eps = eps
        self.norm = self.threat.norm
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.attack_steps = int(attack_steps)
        if attack_step_size is None:
            attack_step_size = 1.25 * eps if method == "fgsm-rs" else 2.5 * eps / attack_steps
        self.attack_step_size = float(attack_step_size)
        self.beta = float(beta)
        self.eps_warmup_epochs = float(eps_warmup_epochs)
        self.eval_every = int(eval_every)
        self.eval_n = int(eval_n)
        self.eval_steps = int(eval_steps)
        self.final_eval_steps = int(final_eval_steps)
        self.select_best = bool(select_best)
        self.overfit_guard = None if overfit_guard is None else float(overfit_guard)
        self.guard_n = int(guard_n)
        self.generation_mode = generation_mode
        self.bounds = self.threat.bounds
        self.seed = int(seed)
        self.out_dir = None if out_dir is None else Path(out_dir).expanduser()
        self.resume = bool(resume)
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.progress = bool(progress)
        self.channels_last = None if channels_last is None else bool(channels_last)

    # -- configuration -------------------------------------------------------------------------
    def config(self) -> dict:
        """The recipe as JSON-ready values (written to checkpoints, the log and the card)."""
        return {
            "method": self.method,
            "eps": self.eps,
            "norm": self.norm,
            "bounds": list(self.bounds),
            "epochs": self.epochs,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "attack_steps": self.attack_steps,
            "attack_step_size": self.attack_step_size,
            "beta": self.beta,
            "eps_warmup_epochs": self.eps_warmup_epochs,
            "eval_every": self.eval_every,
            "eval_n": self.eval_n,
            "eval_steps": self.eval_steps,
            "final_eval_steps": self.final_eval_steps,
            "select_best": self.select_best,
            "overfit_guard": self.overfit_guard if self.method == "fgsm-rs" else None,
            "guard_n": self.guard_n,
            "generation_mode": self.generation_mode,
            "seed": self.seed,
        }

    # keys that may differ between an interrupted run and its resumption
    _RESUME_FREE = ("epochs",)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad=False)")
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=0.9, nesterov=True, weight_decay=self.weight_decay
        )

    def _eps_at(self, step: int, steps_per_epoch: int) -> float:
        if self.eps_warmup_epochs <= 0:
            return self.eps
        ramp = self.eps_warmup_epochs * steps_per_epoch
        return self.eps * min(1.0, (step + 1) / ramp)

    # -- inner maximisation ----------------------------------------------------------------------
    def perturb(
        self,
        x: torch.Tensor,
        objective: Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        gen: torch.Generator,
        *,
        steps: int | None = None,
        init: str = "uniform",
    ) -> torch.Tensor:
        """Maximise the per-sample ``objective(logits)`` over the ε-ball around ``x``.

        ``init``: ``"uniform"`` (uniform in the ball, Madry/Wong) or ``"normal"``
        (``x + 0.001·N(0, 1)``, TRADES/MART). Returns the last iterate, detached, inside the
        ball and the bounds. The model's mode is set by ``generation_mode`` and restored;
        only input gradients are computed (the weights' ``.grad`` are untouched).
        """
        steps = self.attack_steps if steps is None else steps
        alpha = self.attack_step_size * (eps / self.eps)
        threat = self.threat
        model = self.model
        was_training = model.training
        model.train(self.generation_mode == "train")
        try:
            if init == "uniform":
                cur = threat.random_start(x, gen, eps=eps)
            else:
                noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
                cur = threat.project(x + 0.001 * noise, x, eps=eps)
            for _ in range(steps):
                cur = cur.detach().requires_grad_(True)
                with torch.enable_grad():
                    obj = objective(model(cur))
                    (g,) = torch.autograd.grad(obj.sum(), cur)
                step = threat.lp.steepest(threat.apply_mask(g))
                cur = threat.project(cur.detach() + alpha * step, x, eps=eps)
        finally:
            model.train(was_training)
        return cur.detach()

    def _batch_loss(self, xb, yb, eps_t, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """Outer loss of one batch and the logits on the adversarial (or clean) points."""
        m = self.method
        model = self.model
        if m == "standard":
            logits = model(xb)
            return F.cross_entropy(logits, yb), logits
        if m in ("pgd", "fgsm-rs"):
            x_adv = self.perturb(xb, lambda z: F.cross_entropy(z, yb, reduction="none"), eps_t, gen)
            logits = model(x_adv)
            return F.cross_entropy(logits, yb), logits
        if m == "trades":
            was = model.training
            model.train(self.generation_mode == "train")
            with torch.no_grad():
                nat = model(xb)
            model.train(was)
            x_adv = self.perturb(xb, lambda z: _kl_per_sample(nat, z), eps_t, gen, init="normal")
            logits_nat, logits_adv = model(xb), model(x_adv)
            return trades_loss(logits_nat, logits_adv, yb, self.beta), logits_adv
        # mart
        x_adv = self.perturb(
            xb, lambda z: F.cross_entropy(z, yb, reduction="none"), eps_t, gen, init="normal"
        )
        logits_nat, logits_adv = model(xb), model(x_adv)
        return mart_loss(logits_nat, logits_adv, yb, self.beta), logits_adv

    # -- held-out checks -----------------------------------------------------------------------
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, *, steps: int | None = None, batch: int = 500
    ) -> tuple[float, float]:
        """``(clean accuracy, PGD robust accuracy)`` of the model on ``(x, y)`` at ``eps``
        with :class:`advex.attacks.PGD` (``steps`` iterations, α = 2.5 ε / steps, one random
        start, cross-entropy). The model's mode is restored."""
        from ..attacks.gradient import PGD

        steps = self.eval_steps if steps is None else steps
        was = self.model.training
        self.model.eval()
        clean = robust = 0
        try:
            if self.eps == 0:
                with torch.no_grad():
                    for i in range(0, len(y), batch):
                        pred = self.model(x[i : i + batch]).argmax(1)
                        clean += int((pred == y[i : i + batch]).sum())
                return clean / len(y), clean / len(y)
            attack = PGD(
                eps=self.eps, norm=self.norm, steps=steps, bounds=self.bounds, seed=self.seed
            )
            for i in range(0, len(y), batch):
                r = attack(self.model, x[i : i + batch], y[i : i + batch])
                clean += int(r.clean_correct.sum())
                robust += int(r.robust.sum())
        finally:
            self.model.train(was)
        return clean / len(y), robust / len(y)

    # -- main loop ---------------------------------------------------------------------------
    def fit(
        self,
        train_data,
        val_data=None,
        *,
        on_batch_end: Callable[..., None] | None = None,
        on_epoch_end: Callable[..., None] | None = None,
        card_extra: dict | None = None,
    ) -> TrainingResult:
        """Train on ``train_data`` (ArrayDataset or ``(x, y)``), checking robustness on
        ``val_data`` (held-out; optional). Returns a :class:`TrainingResult`.

        ``on_batch_end(trainer, epoch, batch, stats)`` and ``on_epoch_end(trainer, epoch,
        entry)`` are called after every batch / epoch (an exception they raise interrupts
        training; the last completed epoch's checkpoint remains and ``resume=True`` continues
        from it). ``card_extra`` is merged into the model card (e.g. data provenance).
        """
        from tqdm.auto import tqdm

        t_start = time.perf_counter()
        xtr, ytr = _as_xy(train_data, "train_data")
        self.threat.check_inputs(xtr, name="train_data x")
        device = next(self.model.parameters()).device
        xtr, ytr = xtr.to(device), ytr.to(device)
        xval = yval = None
        if val_data is not None:
            xval, yval = _as_xy(val_data, "val_data")
            self.threat.check_inputs(xval, name="val_data x")
            xval, yval = xval.to(device), yval.to(device)
        n = len(ytr)
        spe = (n + self.batch_size - 1) // self.batch_size
        total = self.epochs * spe
        opt = self._make_optimizer()
        log: list[dict] = []
        best: dict[str, Any] = {"epoch": None, "robust": -1.0, "clean": -1.0, "state": None}
        guard_prev: float | None = None
        stopped: str | None = None
        start_epoch = 0
        elapsed_before = 0.0
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume and self.out_dir is not None and _ckpt_exists(self.out_dir):
            st = self._load_checkpoint(opt)
            start_epoch, log, guard_prev, stopped = (
                st["epoch"],
                st["log"],
                st["guard_prev"],
                st["stopped"],
            )
            best = st["best"]
            elapsed_before = st["elapsed"]
        guard_x = guard_y = None
        if self.method == "fgsm-rs" and self.overfit_guard is not None:
            src_x, src_y = (xval, yval) if xval is not None else (xtr, ytr)
            guard_x, guard_y = src_x[: self.guard_n], src_y[: self.guard_n]

        # after the checkpoint is read: a refused resume leaves the model's layout alone
        fmt = torch.contiguous_format
        if self._use_channels_last(xtr):
            fmt = torch.channels_last
            xtr = xtr.contiguous(memory_format=fmt)
            self.model.to(memory_format=fmt)
        bar = tqdm(
            total=(self.epochs - start_epoch) * spe,
            desc=f"advex train ({self.method})",
            file=sys.stderr,
            disable=not self.progress,
            leave=False,
        )
        try:
            with torch.random.fork_rng(devices=[]):
                for epoch in range(start_epoch, self.epochs):
                    if stopped:
                        break
                    t_epoch = time.perf_counter()
                    torch.manual_seed(_derive_seed(self.seed, epoch, 1))
                    gen = torch.Generator(device=device).manual_seed(
                        _derive_seed(self.seed, epoch, 0)
                    )
                    perm_gen = torch.Generator().manual_seed(_derive_seed(self.seed, epoch, 2))
                    perm = torch.randperm(n, generator=perm_gen).to(device)
                    self.model.train()
                    loss_sum = correct = seen = 0.0
                    for b in range(spe):
                        step = epoch * spe + b
                        lr = lr_at(self.schedule, self.lr, step, total)
                        for group in opt.param_groups:
                            group["lr"] = lr
                        eps_t = self._eps_at(step, spe)
                        idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
                        xb, yb = xtr[idx].contiguous(memory_format=fmt), ytr[idx]
                        loss, logits = self._batch_loss(xb, yb, eps_t, gen)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"training loss became {float(loss)} at epoch {epoch + 1}, "
                                f"batch {b + 1}: lower lr (now {lr:.3g})"
                            )
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        bs = len(yb)
                        loss_sum += float(loss.detach()) * bs
                        correct += float((logits.detach().argmax(1) == yb).sum())
                        seen += bs
                        bar.update(1)
                        bar.set_postfix(
                            epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", eps=f"{eps_t:.3g}"
                        )
                        if on_batch_end is not None:
                            stats = {"loss": float(loss.detach()), "lr": lr, "eps": eps_t}
                            on_batch_end(self, epoch, b, stats)
                    entry: dict[str, Any] = {
                        "epoch": epoch + 1,
                        "lr_end": lr,
                        "eps_end": eps_t,
                        "train_loss": loss_sum / seen,
                        "train_acc": correct / seen,
                    }
                    last = epoch + 1 == self.epochs
                    if xval is not None and ((epoch + 1) % self.eval_every == 0 or last):
                        ca, ra = self.evaluate(xval[: self.eval_n], yval[: self.eval_n])
                        entry["val_clean_acc"] = ca
                        entry["val_robust_acc"] = ra
                        if ra > best["robust"] or (ra == best["robust"] and ca > best["clean"]):
                            best = {
                                "epoch": epoch + 1,
                                "robust": ra,
                                "clean": ca,
                                "state": _state_copy(self.model),
                            }
                    if guard_x is not None:
                        _, gr = self.evaluate(guard_x, guard_y, steps=10)
                        entry["guard_robust_acc"] = gr
                        if guard_prev is not None and gr < guard_prev - self.overfit_guard:
                            stopped = (
                                f"catastrophic overfitting at epoch {epoch + 1}: PGD accuracy on "
                                f"the guard batch fell from {guard_prev:.3f} to {gr:.3f}; "
                                f"reverted to epoch {epoch}"
                            )
                            entry["stopped"] = stopped
                            self._revert_to_previous()
                            if best["epoch"] == epoch + 1:
                                best = {"epoch": None, "robust": -1.0, "clean": -1.0, "state": None}
                        else:
                            guard_prev = gr
                    entry["seconds"] = time.perf_counter() - t_epoch
                    log.append(entry)
                    if self.out_dir is not None:
                        elapsed = elapsed_before + time.perf_counter() - t_start
                        self._save_checkpoint(
                            opt, epoch + 1, log, best, guard_prev, stopped, elapsed
                        )
                        log_doc = {"config": self.config(), "log": log}
                        _write_json(self.out_dir / "log.json", log_doc)
                    self._prev_state = _state_copy(self.model)
                    if on_epoch_end is not None:
                        on_epoch_end(self, epoch, entry)
        finally:
            bar.close()
            if fmt is not torch.contiguous_format:
                self.model.to(memory_format=torch.contiguous_format)
        wall = elapsed_before + time.perf_counter() - t_start
        return self._finish(log, best, stopped, xval, yval, wall, card_extra)

    def _use_channels_last(self, x: torch.Tensor) -> bool:
        if self.channels_last is not None:
            return self.channels_last and x.dim() == 4
        return x.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in self.model.modules())

    def _revert_to_previous(self) -> None:
        prev = getattr(self, "_prev_state", None)
        if prev is not None:
            self.model.load_state_dict(prev)

    def _finish(self, log, best, stopped, xval, yval, wall, card_extra) -> TrainingResult:
        if self.select_best and best["state"] is not None:
            self.model.load_state_dict(best["state"])
        best_epoch = best["epoch"] if self.select_best and best["state"] is not None else None
        self.model.eval()
        clean = robust = None
        if xval is not None:
            clean = clean_accuracy(self.model, xval, yval)
            if self.eps > 0:
                n = min(len(yval), max(self.eval_n, 1000))
                _, robust = self.evaluate(xval[:n], yval[:n], steps=self.final_eval_steps)
        result = TrainingResult(
            model=self.model,
            log=log,
            best_epoch=best_epoch,
            clean_accuracy=clean,
            robust_accuracy=robust,
            wall_time_s=round(wall, 3),
            stopped_early=stopped,
            out_dir=self.out_dir,
        )
        if self.out_dir is not None:
            result.card = self._write_outputs(result, xval, card_extra)
        return result

    # -- outputs ---------------------------------------------------------------------------------
    def _card(self, result: TrainingResult, xval) -> dict:
        n_rob = None if xval is None else min(len(xval), max(self.eval_n, 1000))
        return {
            "name": f"{self.arch or 'model'}-{self.method}-{self.norm}-eps{self.eps:g}",
            "defense": "adversarial-training" if self.method != "standard" else "none",
            "recipe": self.config(),
            "accuracy": result.clean_accuracy,
            "robust_accuracy": result.robust_accuracy,
            "robust_eval": None
            if n_rob is None
            else {
                "attack": "pgd",
                "loss": "ce",
                "eps": self.eps,
                "norm": self.norm,
                "steps": self.final_eval_steps,
                "step_size": 2.5 * self.eps / self.final_eval_steps,
                "restarts": 1,
                "n": n_rob,
                "note": "held-out data; a single-attack upper bound on robust accuracy",
            },
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "epochs_completed": len(result.log),
            "train_time_s": result.wall_time_s,
            "torch_threads": torch.get_num_threads(),
            "bounds": list(self.bounds),
        }

    def _write_outputs(self, result: TrainingResult, xval, card_extra=None) -> dict:
        out = self.out_dir
        card = self._card(result, xval)
        card.update(card_extra or {})
        doc = {"config": self.config(), **result.to_dict()}
        _write_json(out / "log.json", doc)
        plot_training_curve(result.log, out / "training_curve.png", title=card["name"])
        if self.arch is not None:
            from .. import zoo

            zoo.save(self.model, out, card, arch=self.arch, arch_kwargs=self.arch_kwargs)
        else:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            _atomic(out / "model.safetensors", lambda p: save_file(state, p))
            _write_json(out / "card.json", {**card, "arch": None})
        return card

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, opt, epoch, log, best, guard_prev, stopped, elapsed) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
        if best["state"] is not None:
            for k, v in best["state"].items():
                tensors[f"best.{k}"] = v.detach().cpu().contiguous().clone()
        sd = opt.state_dict()
        opt_meta: dict[str, dict] = {}
        for pid, pstate in sd["state"].items():
            meta = {}
            for key, val in pstate.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"opt.{pid}.{key}"] = val.detach().cpu().contiguous().clone()
                else:
                    meta[key] = val
            opt_meta[str(pid)] = meta
        meta = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": self.config(),
            "log": log,
            "best": {k: best[k] for k in ("epoch", "robust", "clean")},
            "guard_prev": guard_prev,
            "stopped": stopped,
            "elapsed_s": elapsed,
            "optimizer": {"param_groups": sd["param_groups"], "state_meta": opt_meta},
        }
        # weights first, metadata last: a checkpoint.json always describes complete weights
        _atomic(self.out_dir / "checkpoint.safetensors", lambda p: save_file(tensors, p))
        _write_json(self.out_dir / "checkpoint.json", meta)

    def _load_checkpoint(self, opt) -> dict:
        from safetensors.torch import load_file

        meta = json.loads((self.out_dir / "checkpoint.json").read_text(encoding="utf-8"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.out_dir / 'checkpoint.json'} is not an advex checkpoint")
        saved, now = dict(meta["config"]), self.config()
        for k in self._RESUME_FREE:
            saved.pop(k, None)
            now.pop(k, None)
        keys = sorted(set(saved) | set(now))
        diff = [
            f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}"
            for k in keys
            if saved.get(k) != now.get(k)
        ]
        if diff:
            raise ValueError(
                "cannot resume: the checkpoint was trained with different settings: "
                + ", ".join(diff)
            )
        if int(meta["epoch"]) > self.epochs:
            raise ValueError(
                f"cannot resume: the checkpoint has {meta['epoch']} epochs, more than epochs="
                f"{self.epochs}"
            )
        tensors = load_file(str(self.out_dir / "checkpoint.safetensors"))
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state, strict=True)
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        state: dict[int, dict] = {}
        for pid, m in meta["optimizer"]["state_meta"].items():
            state[int(pid)] = dict(m)
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        self._prev_state = _state_copy(self.model)
        best = dict(meta["best"])
        best["state"] = best_state
        if best_state is None:
            best.update({"epoch": None, "robust": -1.0, "clean": -1.0})
        return {
            "epoch": int(meta["epoch"]),
            "log": meta["log"],
            "best": best,
            "guard_prev": meta["guard_prev"],
            "stopped": meta["stopped"],
            "elapsed": float(meta.get("elapsed_s", 0.0)),
        }


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (the mode is restored)."""
    was = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(y), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    finally:
        model.train(was)
    return correct / len(y)


def _optimizer_settings(optimizer: str, schedule: str, lr, weight_decay) -> float:
    """Validate the optimizer, schedule, learning rate and weight decay shared by every trainer;
    return the learning rate (the optimizer's default when ``lr`` is None)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if lr is None:
        lr = 1e-3 if optimizer == "adam" else 0.1
    if not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not float(weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return lr


def _positive_int(v, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or int(v) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ckpt_exists(out: Path) -> bool:
    return (out / "checkpoint.json").is_file() and (out / "checkpoint.safetensors").is_file()


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"

    def w(p: str) -> None:
        Path(p).write_text(text, encoding="utf-8")

    _atomic(path, w)


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def plot_training_curve(log: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Write a PNG of training loss and held-out clean / robust accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [e["epoch"] for e in log]
    ax1.plot(ep, [e["train_loss"] for e in log], marker="o", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(ep, [e["train_acc"] for e in log], marker=".", label="train acc (adv. points)")
    for key, lab in (("val_clean_acc", "held-out clean"), ("val_robust_acc", "held-out PGD")):
        pts = [(e["epoch"], e[key]) for e in log if key in e]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", label=lab)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

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
- ``"generator"`` — the inner attack is an AdvGAN generator (:class:`advex.attacks.AdvGAN`)
  trained alongside the model, ``attack_steps`` generator steps per batch against the model
  as it is (default 1), then the cross-entropy on ``x + G(x)``: one generator pass per point
  instead of PGD's ``attack_steps`` model passes (fast, and expected weaker than PGD-AT).

The inner maximisation uses the same primitives as :class:`advex.attacks.PGD`
(:meth:`ThreatModel.random_start`, the norm's steepest-ascent step and
:meth:`ThreatModel.project`) in a lean loop that, unlike an evaluation attack, perturbs *every*
point (also those already misclassified) and returns the last iterate, as the papers do. The
held-out checks use :class:`advex.attacks.PGD` itself. Adversarial examples are generated with
the model in eval mode (BatchNorm running statistics and dropout frozen, as in the TRADES and
MART reference code); the weight update runs in train mode. ``generation_mode="train"`` switches
to generation in train mode (as in Wong et al.'s code).

The epoch loop is :class:`advex.training.Trainer`; each method is a loss object
(:class:`MadryLoss` for ``"pgd"`` and ``"fgsm-rs"``, :class:`TRADESLoss`, :class:`MARTLoss`,
:class:`StandardLoss`) and the held-out checks are the trainer's per-epoch ``validate`` callback.

Everything random is derived from ``seed``: the shuffling and random starts of epoch ``e`` come
from a generator seeded with ``(seed, e)``, and the global RNG (dropout) is re-seeded per epoch
inside a forked RNG state, so the caller's RNG is untouched and a run resumed from a checkpoint
ends with bit-identical weights.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write, write_json
from ..core.validate import check_positive_int, class_labels
from ..threats import ThreatModel
from ..training import (
    SCHEDULES,
    DerivedSeeds,
    Trainer,
    TrainingInterrupted,
    as_xy,
    check_amp,
    ddp,
    lr_at,
    optimizer_settings,
)

__all__ = [
    "AdversarialTrainer",
    "AdversarialLoss",
    "StandardLoss",
    "MadryLoss",
    "TRADESLoss",
    "MARTLoss",
    "GeneratorLoss",
    "METHOD_LOSSES",
    "TrainingResult",
    "TrainingInterrupted",
    "METHODS",
    "SCHEDULES",
    "lr_at",
    "trades_loss",
    "mart_loss",
    "clean_accuracy",
    "labelled_xy",
    "plot_training_curve",
]

METHODS = ("pgd", "trades", "mart", "fgsm-rs", "standard", "generator")
_DEFAULT_BETA = {"trades": 6.0, "mart": 6.0}


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def labelled_xy(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of ``data`` (see :func:`advex.training.as_xy`) with class labels ``y``
    (1-D, as int64)."""
    x, y = as_xy(data, what)
    return x, class_labels(y, int(x.shape[0]), what)


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
# The methods as loss objects of advex.training.Trainer
# --------------------------------------------------------------------------------------------


class AdversarialLoss(ABC):
    """Base of the methods' loss objects: the inner maximisation and the ε schedule.

    A loss object is called by :class:`advex.training.Trainer` as
    ``loss(model, xb, yb, generator) -> (loss, logits)``; before each batch the trainer calls
    :meth:`set_step`, which sets the batch's ε (linear warm-up over ``eps_warmup_epochs``).

    Args:
        threat: the training threat model (norm, ε, bounds).
        steps: inner steps; step_size: inner step α at the full ε (scaled with ε in warm-up).
        eps_warmup_epochs: ramp ε linearly from 0 over this many epochs (0 = off).
        generation_mode: ``"eval"`` or ``"train"``: the model's mode while perturbing.
        beta: the TRADES / MART trade-off weight (unused by the others).
    """

    init = "uniform"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int,
        step_size: float,
        eps_warmup_epochs: float = 0.0,
        generation_mode: str = "eval",
        beta: float = 0.0,
    ) -> None:
        self.threat = threat
        self.eps = float(threat.eps)
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.eps_warmup_epochs = float(eps_warmup_epochs)
        self.generation_mode = generation_mode
        self.beta = float(beta)
        self.eps_t = self.eps
        self.shard: tuple[torch.Tensor, int] | None = None

    def set_shard(self, rows: torch.Tensor, n: int) -> None:
        """Data-parallel training: the batch this loss is given is rows ``rows`` of a global
        batch of ``n`` points. The random starts are then drawn for the whole global batch
        (the generator advances as in one process) and the rows kept, so every point starts
        where it would in a one-process run."""
        self.shard = (rows, int(n))

    def _global_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x placed in its global batch, rows)``, or ``(x, None)`` outside a shard. The
        other rows repeat ``x[0]`` (any point inside the box would do: draws are per row)."""
        if self.shard is None or len(self.shard[0]) != len(x):
            return x, None
        rows, n = self.shard
        full = x[:1].expand(n, *x.shape[1:]).clone()
        full[rows] = x
        return full, rows

    def eps_at(self, step: int, steps_per_epoch: int) -> float:
        """ε of global step ``step`` (the warm-up ramp, then ``eps``)."""
        if self.eps_warmup_epochs <= 0:
            return self.eps
        ramp = self.eps_warmup_epochs * steps_per_epoch
        return self.eps * min(1.0, (step + 1) / ramp)

    def set_step(self, step: int, steps_per_epoch: int) -> dict:
        self.eps_t = self.eps_at(step, steps_per_epoch)
        return {"eps": self.eps_t}

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        objective: Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        gen: torch.Generator,
        *,
        steps: int | None = None,
        init: str = "uniform",
    ) -> torch.Tensor:
        """Maximise the per-sample ``objective(logits)`` over the ε-ball around ``x``
        (see :meth:`AdversarialTrainer.perturb`)."""
        steps = self.steps if steps is None else steps
        alpha = self.step_size * (eps / self.eps)
        threat = self.threat
        was_training = model.training
        model.train(self.generation_mode == "train")
        try:
            xs, rows = self._global_rows(x)
            if init == "uniform":
                cur = threat.random_start(xs, gen, eps=eps)
            else:
                noise = torch.randn(xs.shape, generator=gen, dtype=xs.dtype, device=xs.device)
                cur = threat.project(xs + 0.001 * noise, xs, eps=eps)
            if rows is not None:
                cur = cur[rows]
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

    @abstractmethod
    def __call__(self, model, xb, yb, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean loss, logits)`` of the batch under this method."""


class StandardLoss(AdversarialLoss):
    """Plain cross-entropy on the clean points (the baseline)."""

    def __call__(self, model, xb, yb, gen):
        logits = model(xb)
        return F.cross_entropy(logits, yb), logits


class MadryLoss(AdversarialLoss):
    """PGD-AT (Madry et al. 2018): PGD on the cross-entropy from a uniform random start, then
    the cross-entropy on the adversarial points. With one step of ``1.25 ε`` it is FGSM-RS
    (Wong et al. 2020)."""

    def __call__(self, model, xb, yb, gen):
        x_adv = self.perturb(
            model, xb, lambda z: F.cross_entropy(z, yb, reduction="none"), self.eps_t, gen
        )
        logits = model(x_adv)
        return F.cross_entropy(logits, yb), logits


class TRADESLoss(AdversarialLoss):
    """TRADES (Zhang et al. 2019): PGD on ``KL(p(x) ‖ p(x'))`` from ``x + 0.001·N(0, 1)``, then
    :func:`trades_loss`."""

    def __call__(self, model, xb, yb, gen):
        was = model.training
        model.train(self.generation_mode == "train")
        with torch.no_grad():
            nat = model(xb)
        model.train(was)
        x_adv = self.perturb(
            model, xb, lambda z: _kl_per_sample(nat, z), self.eps_t, gen, init="normal"
        )
        logits_nat, logits_adv = model(xb), model(x_adv)
        return trades_loss(logits_nat, logits_adv, yb, self.beta), logits_adv


class MARTLoss(AdversarialLoss):
    """MART (Wang et al. 2020): PGD on the cross-entropy from ``x + 0.001·N(0, 1)``, then
    :func:`mart_loss`."""

    def __call__(self, model, xb, yb, gen):
        x_adv = self.perturb(
            model,
            xb,
            lambda z: F.cross_entropy(z, yb, reduction="none"),
            self.eps_t,
            gen,
            init="normal",
        )
        logits_nat, logits_adv = model(xb), model(x_adv)
        return mart_loss(logits_nat, logits_adv, yb, self.beta), logits_adv


class GeneratorLoss(AdversarialLoss):
    """Generator-based adversarial training: an AdvGAN generator
    (:class:`advex.attacks.OnlineAdvGAN`) takes ``steps`` steps against the model as it is
    on each batch, then the model is trained on the cross-entropy of ``x + G(x)``. The
    generator (a fitted :class:`~advex.attacks.AdvGAN` as a warm start, or a fresh one) and
    its discriminator travel with the Trainer's checkpoint. Call :meth:`start` with a sample
    batch before training."""

    def __init__(self, threat: ThreatModel, *, generator=None, **kwargs) -> None:
        super().__init__(threat, **kwargs)
        from ..attacks import AdvGAN

        if generator is None:
            generator = AdvGAN(
                threat=threat, width=8, alpha=0.1, beta=1.0, kappa=0.0, schedule="constant"
            )
        if not isinstance(generator, AdvGAN):
            raise TypeError(f"generator must be an advex.attacks.AdvGAN, got {type(generator)}")
        if generator.target is not None:
            raise ValueError("adversarial training needs an untargeted generator (target=None)")
        if (
            generator.threat.norm != threat.norm
            or abs(float(generator.threat.eps) - float(threat.eps)) > 1e-12
        ):
            raise ValueError(
                f"the generator's threat ({generator.threat.norm}, eps={generator.threat.eps}) "
                f"differs from the training threat ({threat.norm}, eps={threat.eps})"
            )
        self.generator = generator
        self.online = None

    def start(self, x: torch.Tensor) -> None:
        """Build the online generator for inputs like ``x`` (idempotent)."""
        if self.online is None:
            self.online = self.generator.online(x)

    def __call__(self, model, xb, yb, gen):
        if self.online is None:
            self.start(xb)
        was = model.training
        model.train(self.generation_mode == "train")
        try:
            for _ in range(self.steps):
                self.online.step(model, xb, yb)
        finally:
            model.train(was)
        x_adv = self.online.generate(xb)
        logits = model(x_adv)
        return F.cross_entropy(logits, yb), logits

    def checkpoint_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return self.online.checkpoint_state()

    def restore_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.online.restore_state(meta, tensors)


#: the loss object of each method of :class:`AdversarialTrainer`
METHOD_LOSSES: dict[str, type[AdversarialLoss]] = {
    "pgd": MadryLoss,
    "fgsm-rs": MadryLoss,
    "trades": TRADESLoss,
    "mart": MARTLoss,
    "standard": StandardLoss,
    "generator": GeneratorLoss,
}


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
            layers (faster on the CPU; measured in docs/defenses.md). The model is handed back
            in the default memory format; the numbers are the same up to float rounding.

        amp: ``"bf16"`` or ``"fp16"`` mixed precision for the training passes (inner attack
            included; fp16 with a gradient scaler); the held-out checks stay in fp32. Recorded
            in the recipe.
        compile: ``True`` (or a backend name) runs the training passes through
            ``torch.compile``; the model handed back is the caller's module.
        distributed: data-parallel training over the ranks of the initialised
            ``torch.distributed`` process group (``None``: when there is one with more than one
            rank; see :class:`advex.training.Trainer`). ``batch_size`` is the *global* batch;
            each rank runs the inner attack on its block of it, the held-out checks are split
            across ranks and their counts summed, and only rank 0 writes files. With the same
            global batch the weights follow the one-process run up to float rounding.
            ``method="generator"`` is not data-parallel (its generator would differ per rank).

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
        generator: Any = None,
        amp: str | None = None,
        compile: bool | str = False,
        distributed: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        method = str(method).lower().replace("_", "-")
        if generator is not None and method != "generator":
            raise ValueError(
                f"generator= is the inner attack of method='generator', not of {method!r}"
            )
        if method == "fgsm":
            method = "fgsm-rs"
        if method == "madry":
            method = "pgd"
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        lr = optimizer_settings(optimizer, schedule, lr, weight_decay)
        if generation_mode not in ("eval", "train"):
            raise ValueError(f"generation_mode must be 'eval' or 'train', got {generation_mode!r}")
        eps = float(eps)
        if not eps >= 0 or math.isinf(eps):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if method != "standard" and eps == 0:
            raise ValueError(f"method {method!r} needs eps > 0 (use method='standard' for eps=0)")
        check_positive_int(epochs, "epochs")
        check_positive_int(batch_size, "batch_size")
        check_positive_int(eval_every, "eval_every")
        check_positive_int(eval_n, "eval_n")
        check_positive_int(eval_steps, "eval_steps")
        check_positive_int(final_eval_steps, "final_eval_steps")
        check_positive_int(guard_n, "guard_n")
        if not 0 <= float(eps_warmup_epochs) <= int(epochs):
            raise ValueError(
                f"eps_warmup_epochs must be in [0, epochs={epochs}], got {eps_warmup_epochs}"
            )
        if method == "fgsm-rs":
            if attack_steps not in (None, 1):
                raise ValueError(f"fgsm-rs takes exactly one attack step, got {attack_steps}")
            attack_steps = 1
        elif attack_steps is None:
            attack_steps = 1 if method == "generator" else 40
        if method == "generator" and float(eps_warmup_epochs) > 0:
            raise ValueError("method='generator' has no ε warm-up: its generator has a fixed ε")
        check_positive_int(attack_steps, "attack_steps")
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
        self.generator = generator
        self.amp = check_amp(amp)
        self.compile = compile
        self.distributed = None if distributed is None else bool(distributed)
        self._ranks = (0, 1)  # (rank, world) of the run in progress
        if method == "generator":
            self.loss_object()  # checks the generator against the threat now, not in fit

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
            **self._generator_config(),
            # only when set, so the recipes (and cached zoo models) of fp32 runs are unchanged
            **({"amp": self.amp} if self.amp else {}),
        }

    def _generator_config(self) -> dict:
        if self.method != "generator":
            return {}
        g = self.loss_object().generator
        keys = ("width", "blocks", "sampling", "alpha", "beta", "kappa", "lr", "seed")
        return {
            "generator": {k: getattr(g, k) for k in keys},
            "generator_warm_start": g.generator_ is not None,
        }

    # keys that may differ between an interrupted run and its resumption
    _RESUME_FREE = ("epochs",)

    def loss_object(self) -> AdversarialLoss:
        """The method as a loss object of :class:`advex.training.Trainer`."""
        if self.method == "generator":
            return GeneratorLoss(
                self.threat,
                generator=self.generator,
                steps=self.attack_steps,
                step_size=self.attack_step_size,
                generation_mode=self.generation_mode,
            )
        return METHOD_LOSSES[self.method](
            self.threat,
            steps=self.attack_steps,
            step_size=self.attack_step_size,
            eps_warmup_epochs=self.eps_warmup_epochs,
            generation_mode=self.generation_mode,
            beta=self.beta,
        )

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
        return self.loss_object().perturb(
            self.model, x, objective, eps, gen, steps=steps, init=init
        )

    # -- held-out checks -----------------------------------------------------------------------
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, *, steps: int | None = None, batch: int = 500
    ) -> tuple[float, float]:
        """``(clean accuracy, PGD robust accuracy)`` of the model on ``(x, y)`` at ``eps``
        with :class:`advex.attacks.PGD` (``steps`` iterations, α = 2.5 ε / steps, one random
        start, cross-entropy). The model's mode is restored. During data-parallel training
        each rank attacks its block of the points and the counts are summed (PGD's random
        starts are per point, so the numbers are those of one process)."""
        from ..attacks.gradient import PGD

        steps = self.eval_steps if steps is None else steps
        n_all = len(y)
        rank, world = self._ranks
        if world > 1:
            rows = ddp.shard_rows(n_all, rank, world).to(y.device)
            x, y = x[rows], y[rows]
        was = self.model.training
        self.model.eval()
        clean = robust = 0
        try:
            if self.eps == 0:
                with torch.no_grad():
                    for i in range(0, len(y), batch):
                        pred = self.model(x[i : i + batch]).argmax(1)
                        clean += int((pred == y[i : i + batch]).sum())
                robust = clean
            else:
                attack = PGD(
                    eps=self.eps, norm=self.norm, steps=steps, bounds=self.bounds, seed=self.seed
                )
                for i in range(0, len(y), batch):
                    r = attack(self.model, x[i : i + batch], y[i : i + batch])
                    clean += int(r.clean_correct.sum())
                    robust += int(r.robust.sum())
        finally:
            self.model.train(was)
        if world > 1:
            clean, robust = ddp.sum_across_ranks([clean, robust])
        return clean / n_all, robust / n_all

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
        xtr, ytr = labelled_xy(train_data, "train_data")
        self.threat.check_inputs(xtr, name="train_data x")
        dist_on = ddp.is_distributed() if self.distributed is None else self.distributed
        if dist_on and self.method == "generator":
            raise ValueError(
                "method='generator' cannot train data-parallel (its generator and "
                "discriminator would differ per rank); run it in one process"
            )
        self._ranks = (ddp.rank(), ddp.world_size()) if dist_on else (0, 1)
        device = next(self.model.parameters()).device
        xtr, ytr = xtr.to(device), ytr.to(device)
        xval = yval = None
        if val_data is not None:
            xval, yval = labelled_xy(val_data, "val_data")
            self.threat.check_inputs(xval, name="val_data x")
            xval, yval = xval.to(device), yval.to(device)
        guard = None
        if self.method == "fgsm-rs" and self.overfit_guard is not None:
            src_x, src_y = (xval, yval) if xval is not None else (xtr, ytr)
            guard = (src_x[: self.guard_n], src_y[: self.guard_n])
        check = _EpochCheck(self, xval, yval, guard)
        loss = self.loss_object()
        if isinstance(loss, GeneratorLoss):
            loss.start(xtr[:1])
        trainer = Trainer(
            self.model,
            loss,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            seeds=DerivedSeeds(self.seed),
            validate=check,
            out_dir=self.out_dir,
            resume=self.resume,
            config=self.config(),
            resume_free=self._RESUME_FREE,
            channels_last=self._use_channels_last(xtr),
            progress=self.progress,
            desc=f"advex train ({self.method})",
            distributed=dist_on,
            amp=self.amp,
            compile=self.compile,
        )
        batch_cb = epoch_cb = None
        if on_batch_end is not None:

            def batch_cb(t, epoch, b, stats):
                on_batch_end(self, epoch, b, stats)

        if on_epoch_end is not None:

            def epoch_cb(t, epoch, entry):
                on_epoch_end(self, epoch, entry)

        try:
            run = trainer.fit((xtr, ytr), on_batch_end=batch_cb, on_epoch_end=epoch_cb)
            return self._finish(
                run.log, check.best, run.stopped, xval, yval, run.elapsed_s, card_extra
            )
        finally:
            self._ranks = (0, 1)

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
            if self._ranks[1] > 1:  # split across the ranks; the final check is PGD's below
                clean, _ = self._clean_counts(xval, yval)
            else:
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
            card_extra = dict(card_extra or {})
            if self._ranks[1] > 1:
                card_extra["distributed"] = {"world_size": self._ranks[1]}
            if self._ranks[0] == 0:
                result.card = self._write_outputs(result, xval, card_extra)
            else:
                result.card = self._card(result, xval) | card_extra
            ddp.barrier()
        return result

    def _clean_counts(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """Clean accuracy of ``(x, y)`` with the points split across the ranks."""
        rank, world = self._ranks
        rows = ddp.shard_rows(len(y), rank, world).to(y.device)
        correct = 0
        if len(rows):
            correct = round(clean_accuracy(self.model, x[rows], y[rows]) * len(rows))
        (total,) = ddp.sum_across_ranks([correct])
        return total / len(y), int(total)

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
        write_json(out / "log.json", doc)
        plot_training_curve(result.log, out / "training_curve.png", title=card["name"])
        if self.arch is not None:
            from .. import zoo

            zoo.save(self.model, out, card, arch=self.arch, arch_kwargs=self.arch_kwargs)
        else:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            atomic_write(out / "model.safetensors", lambda p: save_file(state, p))
            write_json(out / "card.json", {**card, "arch": None})
        return card


class _EpochCheck:
    """The per-epoch ``validate`` callback of :class:`AdversarialTrainer`: held-out clean and
    PGD accuracy (keeping the best epoch's weights) and FGSM-RS's catastrophic-overfitting
    guard (stop and revert to the previous epoch). Its state travels with the checkpoint."""

    def __init__(self, at: AdversarialTrainer, xval, yval, guard) -> None:
        self.at = at
        self.xval, self.yval = xval, yval
        self.guard = guard
        self.best: dict[str, Any] = _no_best()
        self.guard_prev: float | None = None

    def __call__(self, trainer: Trainer, epoch: int, entry: dict) -> None:
        at = self.at
        last = epoch + 1 == at.epochs
        if self.xval is not None and ((epoch + 1) % at.eval_every == 0 or last):
            ca, ra = at.evaluate(self.xval[: at.eval_n], self.yval[: at.eval_n])
            entry["val_clean_acc"] = ca
            entry["val_robust_acc"] = ra
            best = self.best
            if ra > best["robust"] or (ra == best["robust"] and ca > best["clean"]):
                self.best = {
                    "epoch": epoch + 1,
                    "robust": ra,
                    "clean": ca,
                    "state": _state_copy(at.model),
                }
        if self.guard is not None:
            _, gr = at.evaluate(*self.guard, steps=10)
            entry["guard_robust_acc"] = gr
            if self.guard_prev is not None and gr < self.guard_prev - at.overfit_guard:
                stopped = (
                    f"catastrophic overfitting at epoch {epoch + 1}: PGD accuracy on "
                    f"the guard batch fell from {self.guard_prev:.3f} to {gr:.3f}; "
                    f"reverted to epoch {epoch}"
                )
                entry["stopped"] = stopped
                trainer.stop(stopped)
                at._revert_to_previous()
                if self.best["epoch"] == epoch + 1:
                    self.best = _no_best()
            else:
                self.guard_prev = gr
        at._prev_state = _state_copy(at.model)

    def checkpoint_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        best = self.best
        tensors = {}
        if best["state"] is not None:
            tensors = {f"best.{k}": v for k, v in best["state"].items()}
        meta = {"best": {k: best[k] for k in ("epoch", "robust", "clean")}}
        meta["guard_prev"] = self.guard_prev
        return meta, tensors

    def restore_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        best = dict(meta["best"])
        best["state"] = best_state
        if best_state is None:
            best = _no_best()
        self.best = best
        self.guard_prev = meta["guard_prev"]
        self.at._prev_state = _state_copy(self.at.model)


def _no_best() -> dict[str, Any]:
    return {"epoch": None, "robust": -1.0, "clean": -1.0, "state": None}


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


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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

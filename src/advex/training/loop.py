"""The seeded epoch loop (:class:`Trainer`), its learning-rate schedules and seed plans."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write, derive_seed64, write_json
from ..models.guards import model_device
from . import ddp

__all__ = [
    "Trainer",
    "TrainerRun",
    "TrainingInterrupted",
    "DerivedSeeds",
    "StreamSeed",
    "EpochRng",
    "cross_entropy_loss",
    "lr_at",
    "optimizer_settings",
    "make_optimizer",
    "optimizer_state",
    "load_optimizer_state",
    "as_xy",
    "SCHEDULES",
    "OPTIMIZERS",
    "CHECKPOINT_FORMAT",
    "AMP_DTYPES",
    "check_amp",
]

SCHEDULES = ("onecycle", "cyclic", "piecewise", "cosine", "constant")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZERS = ("adam", "sgd")
CHECKPOINT_FORMAT = "advex-train-checkpoint/1"

#: a per-batch loss: ``loss(model, xb, yb, generator) -> (scalar loss, logits or None)``
Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], tuple]


class TrainingInterrupted(RuntimeError):
    """Raised by callbacks (e.g. in tests) to simulate an interruption."""


# --------------------------------------------------------------------------------------------
# Schedules, optimizers, data
# --------------------------------------------------------------------------------------------


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


def optimizer_settings(optimizer: str, schedule: str, lr, weight_decay) -> float:
    """Validate an optimizer name, schedule name, learning rate and weight decay; return the
    learning rate (the optimizer's default, 1e-3 for Adam and 0.1 for SGD, when ``lr`` is
    None)."""
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


def make_optimizer(
    model: nn.Module, optimizer: str, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum 0.9, over the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=False)")
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")


def as_xy(data: Any, what: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of an :class:`advex.data.ArrayDataset`, a ``TensorDataset`` of two tensors
    or an ``(x, y)`` pair; ``x`` floating point, ``y`` class labels (1-D) or per-class targets
    (2-D, e.g. soft labels), with as many rows as ``x``."""
    if hasattr(data, "tensors") and callable(data.tensors):
        x, y = data.tensors()
    elif isinstance(getattr(data, "tensors", None), tuple) and len(data.tensors) == 2:
        x, y = data.tensors
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
    if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    return x, y


def cross_entropy_loss(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard loss object: ``(CE(model(xb), yb), logits)``."""
    logits = model(xb)
    return F.cross_entropy(logits, yb), logits


# --------------------------------------------------------------------------------------------
# Seed plans: where the randomness of each epoch comes from
# --------------------------------------------------------------------------------------------


class EpochRng(NamedTuple):
    """The randomness of one epoch: ``shuffle`` draws the permutation, ``batch`` is handed to
    ``augment`` and the loss, ``global_seed`` (or None) re-seeds the global RNG (dropout)."""

    shuffle: torch.Generator
    batch: torch.Generator
    global_seed: int | None


class DerivedSeeds:
    """Fresh generators per epoch, seeded from ``(seed, epoch, *salt)`` with
    :func:`advex._io.derive_seed64`: epoch ``e`` depends on nothing but ``seed`` and ``e``, so
    a resumed run needs no RNG state. The global RNG is re-seeded per epoch inside a forked
    RNG state (the caller's global RNG is untouched).

    Args:
        seed: the run's seed.
        shuffle, batch, global_: the salts of the three streams (defaults: ``(2,)``, ``(0,)``
            and ``(1,)``, the streams of adversarial training).
    """

    forks_global = True

    def __init__(
        self,
        seed: int,
        *,
        shuffle: tuple[int, ...] = (2,),
        batch: tuple[int, ...] = (0,),
        global_: tuple[int, ...] = (1,),
    ) -> None:
        self.seed = int(seed)
        self.salts = (tuple(shuffle), tuple(batch), tuple(global_))
        self.device = torch.device("cpu")

    def start(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def epoch(self, epoch: int) -> EpochRng:
        s_shuffle, s_batch, s_global = self.salts
        global_seed = derive_seed64(self.seed, epoch, *s_global)
        batch = torch.Generator(device=self.device).manual_seed(
            derive_seed64(self.seed, epoch, *s_batch)
        )
        shuffle = torch.Generator().manual_seed(derive_seed64(self.seed, epoch, *s_shuffle))
        return EpochRng(shuffle, batch, global_seed)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class StreamSeed:
    """One CPU generator seeded once with ``seed`` and drawn from for the whole run (shuffling
    and ``augment``); the global RNG is used as the caller left it (not forked, not
    re-seeded). Checkpoints store both generator states, so a resumed run continues the
    stream exactly."""

    forks_global = False

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    def start(self, device: torch.device) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)

    def epoch(self, epoch: int) -> EpochRng:
        return EpochRng(self.gen, self.gen, None)

    def state(self) -> dict[str, torch.Tensor]:
        return {"stream": self.gen.get_state(), "global": torch.get_rng_state()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if "stream" in tensors:
            self.gen.set_state(tensors["stream"])
        if "global" in tensors:
            torch.set_rng_state(tensors["global"])


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainerRun:
    """What :meth:`Trainer.fit` returns: one log entry per completed epoch (including those
    of an interrupted run it resumed), the reason training stopped early (or None), and the
    wall time of all sessions together."""

    log: list[dict] = field(default_factory=list)
    stopped: str | None = None
    elapsed_s: float = 0.0


class Trainer:
    """A seeded epoch loop: shuffle, batch, loss, step; checkpoint and exact resume.

    Each epoch draws a permutation of the training set, cuts it into batches of
    ``batch_size``, optionally transforms each batch with ``augment(xb, generator)``, and
    minimises ``loss(model, xb, yb, generator) -> (loss, logits)`` with Adam or SGD at the
    learning rate of ``schedule``, set before every step. Nothing in the loop knows about the
    data's meaning, the threat model or the architecture: a method is a loss object.

    Args:
        model: the network, trained in place (on its own device; batches are moved there).
        loss: the per-batch loss object (default :func:`cross_entropy_loss`); ``logits`` may
            be None. A loss object with a ``set_step(step, steps_per_epoch) -> dict`` method
            is told the global step before each batch and may return numbers to log (e.g.
            ``{"eps": 0.1}`` for a warm-up of ε; logged per epoch as ``eps_end``). A loss
            object that trains networks of its own (a GAN's discriminator, with its own
            optimizer stepped inside the call) makes them resumable with
            ``checkpoint_state() -> (meta, tensors)`` and ``restore_state(meta, tensors)``:
            the checkpoint stores them under ``loss_state`` / ``loss.*`` (see
            :func:`optimizer_state` for an optimizer's part).
        epochs, batch_size: passes over the data and points per step.
        lr: peak learning rate (None: 1e-3 for Adam, 0.1 for SGD).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9, Nesterov); weight_decay: L2 penalty.
        schedule: a name of :func:`lr_at` (``"onecycle"``, ``"cosine"``, ...) or a callable
            ``schedule(step, total) -> lr``.
        seeds: an ``int`` (→ :class:`DerivedSeeds`) or a seed plan (:class:`DerivedSeeds`,
            :class:`StreamSeed`): where shuffling, augmentation, loss and dropout randomness
            come from. Same seeds ⇒ same weights.
        augment: ``augment(xb, generator) -> xb`` on each batch before it goes to the device.
        validate: per-epoch callback ``validate(trainer, epoch, entry)`` after the epoch's
            steps: it may add keys to the log ``entry`` (held-out accuracy), change the model
            (revert) and call :meth:`stop`. If it has ``checkpoint_state() -> (meta, tensors)``
            and ``restore_state(meta, tensors)``, its state travels with the checkpoint.
        out_dir: if given, ``checkpoint.safetensors`` (model, optimizer, RNG and ``validate``
            tensors) and ``checkpoint.json`` (epoch, config, log, optimizer settings) are
            written atomically after every epoch, plus ``log.json``.
        resume: continue from ``out_dir``'s checkpoint when there is one (the ``config`` must
            match, except the keys in ``resume_free``).
        config: JSON-ready description of the run, written to checkpoints and ``log.json``.
        channels_last: train convolutions on channels-last (NHWC) tensors for 4-D inputs; the
            model is handed back in the default memory format.
        check_finite: raise :class:`FloatingPointError` when the loss is NaN or infinite.
        progress, desc: tqdm progress bar and its label; name: the loss's name in errors.
        distributed: ``True``: data-parallel training over the ranks of the initialised
            ``torch.distributed`` process group (``None``: when one with more than one rank
            exists; ``False``, the default, trains in this process only, so the zoo and the
            attacks' ``fit`` stay single-process inside a sharded evaluation). Every rank
            holds the whole model and the whole dataset and draws the same permutation; rank
            ``r`` computes the loss of its contiguous block of each *global* batch of
            ``batch_size`` points, the gradients (scaled by each shard's share)
            are summed in one all-reduce, and every rank takes the same optimizer step. With
            the same global batch the run follows the one-process run up to float rounding
            (BatchNorm batch statistics and dropout masks excepted: they are per rank). Only
            rank 0 writes the checkpoint and the log; a checkpoint resumes on any number of
            ranks. The loss must be a mean over the batch's points; a loss object with
            ``set_shard(rows, n)`` is told which rows of the global batch of ``n`` points it
            has (so its random draws can be those of the whole batch). The ranks' settings and
            data are compared at the start (a mismatch is a ``ValueError`` on every rank) and
            rank 0's weights are copied to the others.
        amp: ``"bf16"`` or ``"fp16"``: run the loss (forward passes and the inner attack) under
            ``torch.autocast`` on the model's device; fp16 scales the loss with a
            ``torch.amp.GradScaler`` (its state travels with the checkpoint). ``None``: fp32.
        compile: ``True`` (or a ``torch.compile`` backend name) runs the loss through
            ``torch.compile(model)``; the caller's module is trained and returned uncompiled.

    A poisoned-model training is a plain run on the poisoned dataset
    (``Trainer(model, epochs=…, batch_size=…).fit((x_poisoned, y_poisoned))``), with a
    ``validate`` callback that measures clean accuracy and attack success rate per epoch. A
    generator training (e.g. AdvGAN) passes the *generator* as ``model`` and a loss object that
    holds the frozen target classifier: ``loss(generator, xb, yb, gen)`` builds
    ``x_adv = xb + generator(xb)`` and returns the attack loss on the target (``logits=None``
    if there is no classification to count); a second network (a discriminator) is a separate
    parameter set, so it is updated inside the loss object with its own optimizer.

    >>> run = Trainer(model, epochs=5, batch_size=64, lr=1e-3, seeds=0).fit(train_data)
    >>> run.log[-1]["train_loss"]
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Loss = cross_entropy_loss,
        *,
        epochs: int,
        batch_size: int,
        lr: float | None = None,
        optimizer: str = "adam",
        schedule: str | Callable[[int, int], float] = "onecycle",
        weight_decay: float = 0.0,
        seeds: int | DerivedSeeds | StreamSeed = 0,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        validate: Callable[[Trainer, int, dict], None] | None = None,
        out_dir: str | os.PathLike | None = None,
        resume: bool = False,
        config: dict | None = None,
        resume_free: tuple[str, ...] = ("epochs",),
        channels_last: bool = False,
        check_finite: bool = True,
        progress: bool = True,
        desc: str = "training",
        name: str = "training",
        distributed: bool | None = False,
        amp: str | None = None,
        compile: bool | str = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss):
            raise TypeError("loss must be a callable (model, xb, yb, generator) -> (loss, logits)")
        for v, what in ((epochs, "epochs"), (batch_size, "batch_size")):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
        if callable(schedule):
            lr = optimizer_settings(optimizer, "constant", lr, weight_decay)
        else:
            lr = optimizer_settings(optimizer, schedule, lr, weight_decay)
        if augment is not None and not callable(augment):
            raise TypeError("augment must be a callable (xb, generator) -> xb")
        if resume and out_dir is None:
            raise ValueError("resume=True needs out_dir= (where the checkpoint is)")
        self.amp = check_amp(amp)
        if not isinstance(compile, bool | str):
            raise TypeError(f"compile must be a bool or a torch.compile backend, got {compile!r}")
        self.compile = compile
        self.distributed = None if distributed is None else bool(distributed)
        self.rank, self.world = 0, 1
        self.model = model
        self.loss = loss
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.optimizer_name = optimizer
        self.schedule = schedule
        self.weight_decay = float(weight_decay)
        self.seeds = DerivedSeeds(seeds) if isinstance(seeds, int) else seeds
        self.augment = augment
        self.validate = validate
        self.out_dir = None if out_dir is None else Path(out_dir).expanduser()
        self.resume = bool(resume)
        self.config = dict(config or {})
        self.resume_free = tuple(resume_free)
        self.channels_last = bool(channels_last)
        self.check_finite = bool(check_finite)
        self.progress = bool(progress)
        self.desc = desc
        self.name = name
        self.stopped: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def stop(self, reason: str) -> None:
        """Stop after the current epoch (its log entry and checkpoint are still written)."""
        self.stopped = str(reason)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of global step ``step`` of ``total``."""
        if callable(self.schedule):
            return self.schedule(step, total)
        return lr_at(self.schedule, self.lr, step, total)

    def fit(
        self,
        data,
        *,
        on_batch_end: Callable[..., None] | None = None,
        on_epoch_end: Callable[..., None] | None = None,
    ) -> TrainerRun:
        """Train on ``data`` (see :func:`as_xy`); returns a :class:`TrainerRun`.

        ``on_batch_end(trainer, epoch, batch, stats)`` (stats: ``loss``, ``lr`` and what the
        loss's ``set_step`` returned) and ``on_epoch_end(trainer, epoch, entry)`` run after
        every batch / epoch; an exception they raise interrupts training, and the last
        completed epoch's checkpoint remains for ``resume=True``. The model is left in eval
        mode. Under ``distributed`` training they run on every rank, with the global batch's
        loss.
        """
        from tqdm.auto import tqdm

        t_start = time.perf_counter()
        x, y = as_xy(data, "train_data")
        device = model_device(self.model)
        n = len(y)
        spe = (n + self.batch_size - 1) // self.batch_size
        total = self.epochs * spe
        dist_on = self._start_distributed(x, y)
        is_main = self.rank == 0
        opt = self.optimizer = make_optimizer(
            self.model, self.optimizer_name, self.lr, self.weight_decay
        )
        scaler = self._grad_scaler(device)
        self.seeds.start(device)
        log: list[dict] = []
        start_epoch = 0
        elapsed_before = 0.0
        self.stopped = None
        if self.out_dir is not None:
            if is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                state = self._read_checkpoint_everywhere(dist_on)
                if state is not None:
                    start_epoch, log, elapsed_before = self._apply_checkpoint(opt, scaler, *state)
        # after the checkpoint is read: a refused resume leaves the model's layout alone
        fmt = torch.contiguous_format
        if self.channels_last and x.dim() == 4:
            fmt = torch.channels_last
            x = x.contiguous(memory_format=fmt)
            self.model.to(memory_format=fmt)
        net = self._compiled()
        amp_ctx = (
            (lambda: torch.autocast(device_type=device.type, dtype=AMP_DTYPES[self.amp]))
            if self.amp
            else contextlib.nullcontext
        )
        set_step = getattr(self.loss, "set_step", None)
        set_shard = getattr(self.loss, "set_shard", None)
        bar = tqdm(
            total=(self.epochs - start_epoch) * spe,
            desc=self.desc,
            file=sys.stderr,
            disable=not self.progress or not is_main,
            leave=False,
        )
        fork = torch.random.fork_rng(devices=[]) if self.seeds.forks_global else None
        try:
            with fork if fork is not None else contextlib.nullcontext():
                for epoch in range(start_epoch, self.epochs):
                    if self.stopped:
                        break
                    t_epoch = time.perf_counter()
                    rng = self.seeds.epoch(epoch)
                    if rng.global_seed is not None:
                        # dropout masks: rank 0 draws those of a single process, the others
                        # their own stream
                        seed = rng.global_seed
                        if self.rank:
                            seed = derive_seed64(seed, 0x5EED, self.rank)
                        torch.manual_seed(seed)
                    perm = torch.randperm(n, generator=rng.shuffle).to(x.device)
                    self.model.train()
                    loss_sum = correct = seen = 0.0
                    count_correct = y.dim() == 1 and not y.is_floating_point()
                    got_logits = False
                    extras: dict[str, float] = {}
                    lr = self.lr
                    for b in range(spe):
                        step = epoch * spe + b
                        lr = self.lr_at(step, total)
                        for group in opt.param_groups:
                            group["lr"] = lr
                        if set_step is not None:
                            extras = dict(set_step(step, spe) or {})
                        idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
                        xb, yb = x[idx], y[idx]
                        if self.augment is not None:
                            xb = self.augment(xb, rng.batch)
                        weight = 1.0
                        if dist_on:  # this rank's block of the global batch
                            gn = len(idx)
                            rows = ddp.shard_rows(gn, self.rank, self.world)
                            weight = len(rows) / gn
                            if len(rows) == 0:  # a short last batch: one row, weight 0
                                rows = torch.zeros(1, dtype=torch.long)
                            if set_shard is not None:
                                set_shard(rows.to(device), gn)
                            rows = rows.to(xb.device)
                            xb, yb = xb[rows], yb[rows]
                        xb, yb = xb.to(device), yb.to(device)
                        if fmt is not torch.contiguous_format:
                            xb = xb.contiguous(memory_format=fmt)
                        with amp_ctx():
                            loss, logits = self.loss(net, xb, yb, rng.batch)
                        if not dist_on and self.check_finite and not torch.isfinite(loss):
                            self._raise_not_finite(float(loss.detach()), epoch, b, lr)
                        opt.zero_grad(set_to_none=True)
                        scaled = loss * weight if dist_on else loss
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                        bs = len(yb)
                        hits = 0.0
                        if count_correct and logits is not None:
                            got_logits = True
                            hits = float((logits.detach().argmax(1) == yb).sum())
                        if dist_on:
                            real = bs if weight > 0 else 0
                            local = torch.tensor(
                                [float(loss.detach()) * real, hits if real else 0.0, real],
                                dtype=torch.float64,
                            )
                            tot = ddp.all_reduce_step(self.model, local)
                            batch_loss = float(tot[0] / tot[2])
                            if self.check_finite and not math.isfinite(batch_loss):
                                self._raise_not_finite(batch_loss, epoch, b, lr)
                            loss_sum += float(tot[0])
                            correct += float(tot[1])
                            seen += float(tot[2])
                        else:
                            batch_loss = float(loss.detach())
                            loss_sum += batch_loss * bs
                            correct += hits
                            seen += bs
                        if scaler is not None:
                            scaler.step(opt)
                            scaler.update()
                        else:
                            opt.step()
                        if dist_on:
                            ddp.average_running_stats(self.model)
                        bar.update(1)
                        if self.progress and is_main:
                            bar.set_postfix(
                                epoch=epoch + 1,
                                loss=f"{loss_sum / seen:.3f}",
                                **{k: f"{v:.3g}" for k, v in extras.items()},
                            )
                        if on_batch_end is not None:
                            stats = {"loss": batch_loss, "lr": lr, **extras}
                            on_batch_end(self, epoch, b, stats)
                    entry: dict[str, Any] = {"epoch": epoch + 1, "lr_end": lr}
                    entry.update({f"{k}_end": v for k, v in extras.items()})
                    entry["train_loss"] = loss_sum / seen
                    if got_logits:
                        entry["train_acc"] = correct / seen
                    if self.validate is not None:
                        self.validate(self, epoch, entry)
                    if self.stopped:
                        entry["stopped"] = self.stopped
                    entry["seconds"] = time.perf_counter() - t_epoch
                    log.append(entry)
                    if self.out_dir is not None:
                        elapsed = elapsed_before + time.perf_counter() - t_start
                        if is_main:
                            self._save_checkpoint(opt, epoch + 1, log, elapsed, scaler)
                            doc = {"config": self.config, "log": log}
                            write_json(self.out_dir / "log.json", doc)
                        if dist_on:
                            ddp.barrier()
                    if on_epoch_end is not None:
                        on_epoch_end(self, epoch, entry)
        finally:
            bar.close()
            if fmt is not torch.contiguous_format:
                self.model.to(memory_format=torch.contiguous_format)
        self.model.eval()
        elapsed = elapsed_before + time.perf_counter() - t_start
        return TrainerRun(log=log, stopped=self.stopped, elapsed_s=elapsed)

    def _raise_not_finite(self, bad: float, epoch: int, b: int, lr: float) -> None:
        raise FloatingPointError(
            f"{self.name} loss became {bad} at epoch {epoch + 1}, "
            f"batch {b + 1}: lower lr (now {lr:.3g})"
        )

    # -- distributed, amp, compile ----------------------------------------------------------------
    def _start_distributed(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Decide whether this run is data-parallel, check the ranks agree, sync the weights."""
        on = ddp.is_distributed() if self.distributed is None else self.distributed
        if on and not ddp.is_distributed():
            raise RuntimeError(
                "distributed=True needs an initialised torch.distributed process group with "
                "more than one rank (launch with torchrun, or call init_process_group first)"
            )
        self.rank, self.world = (ddp.rank(), ddp.world_size()) if on else (0, 1)
        if not on:
            return False
        if self.batch_size < self.world:
            raise ValueError(
                f"batch_size={self.batch_size} is the global batch and must be at least the "
                f"world size ({self.world})"
            )
        ddp.check_same_across_ranks(self._fingerprint(x, y), "settings or data")
        ddp.broadcast_module(self.model)
        return True

    def _fingerprint(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        sched = (
            self.schedule
            if isinstance(self.schedule, str)
            else getattr(self.schedule, "__name__", type(self.schedule).__name__)
        )
        xd = x.detach().cpu().double()  # on the CPU: the same sums on every kind of device
        return {
            **{f"config.{k}": v for k, v in self.config.items()},
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "optimizer": self.optimizer_name,
            "schedule": sched,
            "weight_decay": self.weight_decay,
            "seeds": [type(self.seeds).__name__, getattr(self.seeds, "seed", None)],
            "amp": self.amp,
            "compile": self.compile,
            "resume": self.resume,
            "loss": getattr(self.loss, "__name__", type(self.loss).__name__),
            "data shape": [list(x.shape), list(y.shape)],
            "data checksum": [
                float(f"{float(v):.12g}")
                for v in (xd.sum(), (xd * xd).sum(), y.detach().cpu().double().sum())
            ],
        }

    def _grad_scaler(self, device: torch.device):
        if self.amp != "fp16":
            return None
        try:
            return torch.amp.GradScaler(device.type)
        except Exception as exc:  # pragma: no cover - depends on the torch build
            raise RuntimeError(
                f"amp='fp16' needs a gradient scaler on {device.type}, which this torch build "
                f"lacks ({exc}); use amp='bf16'"
            ) from exc

    def _compiled(self) -> nn.Module:
        if not self.compile:
            return self.model
        backend = self.compile if isinstance(self.compile, str) else "inductor"
        return torch.compile(self.model, backend=backend)

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, opt, epoch: int, log: list, elapsed: float, scaler=None) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
        extra_meta: dict[str, Any] = {}
        if hasattr(self.validate, "checkpoint_state"):
            extra_meta, extra_tensors = self.validate.checkpoint_state()
            for k, v in extra_tensors.items():
                tensors[k] = v.detach().cpu().contiguous().clone()
        if hasattr(self.loss, "checkpoint_state"):
            loss_meta, loss_tensors = self.loss.checkpoint_state()
            extra_meta = {**extra_meta, "loss_state": loss_meta}
            for k, v in loss_tensors.items():
                tensors[f"loss.{k}"] = v.detach().cpu().contiguous().clone()
        opt_meta, opt_tensors = optimizer_state(opt)
        for k, v in opt_tensors.items():
            tensors[f"opt.{k}"] = v
        for k, v in self.seeds.state().items():
            tensors[f"rng.{k}"] = v.detach().cpu().contiguous().clone()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": self.config,
            "log": log,
            **extra_meta,
            "stopped": self.stopped,
            "elapsed_s": elapsed,
            "optimizer": opt_meta,
        }
        if scaler is not None:
            meta["grad_scaler"] = {k: v for k, v in scaler.state_dict().items()}
        # weights first, metadata last: a checkpoint.json always describes complete weights
        atomic_write(self.out_dir / "checkpoint.safetensors", lambda p: save_file(tensors, p))
        write_json(self.out_dir / "checkpoint.json", meta)

    def _read_checkpoint(self) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """``(meta, tensors)`` of ``out_dir``'s checkpoint after checking it may be resumed
        (None when there is none)."""
        from safetensors.torch import load_file

        if not _ckpt_exists(self.out_dir):
            return None
        meta = json.loads((self.out_dir / "checkpoint.json").read_text(encoding="utf-8"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.out_dir / 'checkpoint.json'} is not an advex checkpoint")
        saved, now = dict(meta["config"]), dict(self.config)
        for k in self.resume_free:
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
        return meta, load_file(str(self.out_dir / "checkpoint.safetensors"))

    def _read_checkpoint_everywhere(self, dist_on: bool):
        """Rank 0 reads the checkpoint and hands it to every rank (no shared file system
        needed); an error there is raised on every rank."""
        if not dist_on:
            return self._read_checkpoint()
        got: tuple = ("ok", None)
        if self.rank == 0:
            try:
                got = ("ok", self._read_checkpoint())
            except (ValueError, OSError) as exc:
                got = ("error", f"{type(exc).__name__}: {exc}")
        got = ddp.broadcast_object(got)
        if got[0] == "error":
            raise ValueError(f"rank 0 could not resume: {got[1]}")
        return got[1]

    def _apply_checkpoint(self, opt, scaler, meta: dict, tensors: dict) -> tuple[int, list, float]:
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state, strict=True)
        load_optimizer_state(
            opt, meta["optimizer"], {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}
        )
        if scaler is not None and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        self.seeds.load_state({k[4:]: v for k, v in tensors.items() if k.startswith("rng.")})
        self.stopped = meta.get("stopped")
        if hasattr(self.validate, "restore_state"):
            self.validate.restore_state(meta, tensors)
        if hasattr(self.loss, "restore_state"):
            self.loss.restore_state(
                meta.get("loss_state", {}),
                {k[5:]: v for k, v in tensors.items() if k.startswith("loss.")},
            )
        return int(meta["epoch"]), list(meta["log"]), float(meta.get("elapsed_s", 0.0))


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """An optimizer's state as ``(JSON-ready meta, tensors)`` for a safetensors checkpoint
    (never pickled): tensors are named ``"{param_id}.{key}"`` (CPU copies), the rest goes to
    ``meta`` (``param_groups`` and per-parameter non-tensor values). Inverse:
    :func:`load_optimizer_state`."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, pstate in sd["state"].items():
        meta = {}
        for key, val in pstate.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{pid}.{key}"] = val.detach().cpu().contiguous().clone()
            else:
                meta[key] = val
        state_meta[str(pid)] = meta
    return {"param_groups": sd["param_groups"], "state_meta": state_meta}, tensors


def load_optimizer_state(
    opt: torch.optim.Optimizer, meta: dict, tensors: dict[str, torch.Tensor]
) -> None:
    """Restore ``opt`` from what :func:`optimizer_state` returned."""
    state: dict[int, dict] = {}
    for pid, m in meta["state_meta"].items():
        state[int(pid)] = dict(m)
    for k, v in tensors.items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def check_amp(amp: str | None) -> str | None:
    """``None``, ``"bf16"`` or ``"fp16"`` (``"bfloat16"``/``"float16"``/``"none"`` accepted)."""
    if amp is None:
        return None
    key = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "none": None}.get(
        str(amp).lower(), str(amp).lower()
    )
    if key is not None and key not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    return key


def _ckpt_exists(out: Path) -> bool:
    return (out / "checkpoint.json").is_file() and (out / "checkpoint.safetensors").is_file()

"""The one training loop of advex: :class:`Trainer`.

Every trainer of the package runs on it: the zoo's reference models (:func:`advex.zoo.train`),
adversarial training (:class:`advex.defenses.AdversarialTrainer`, where a method such as
PGD-AT or TRADES is a *loss object*), defensive distillation (a temperature loss), Gaussian
data augmentation for randomized smoothing (an ``augment`` function); and next poisoned-model
and generator training.

Data-parallel training over ``torch.distributed`` ranks (``torchrun``) is built into the loop
(:mod:`advex.training.ddp`), as are mixed precision (``amp=``) and ``torch.compile``.

Layer: beside :mod:`advex.zoo`; imports only :mod:`advex.models`, :mod:`advex._io` and torch.
"""

from __future__ import annotations

from . import ddp
from .loop import (
    AMP_DTYPES,
    CHECKPOINT_FORMAT,
    OPTIMIZERS,
    SCHEDULES,
    DerivedSeeds,
    EpochRng,
    StreamSeed,
    Trainer,
    TrainerRun,
    TrainingInterrupted,
    as_xy,
    check_amp,
    cross_entropy_loss,
    load_optimizer_state,
    lr_at,
    make_optimizer,
    optimizer_settings,
    optimizer_state,
)

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
    "ddp",
]

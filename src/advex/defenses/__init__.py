"""Defenses: adversarial training (PGD-AT, TRADES, MART, FGSM-RS) and defensive distillation.

>>> from advex.defenses import AdversarialTrainer
>>> result = AdversarialTrainer(model, "trades", eps=0.3, epochs=10).fit(train, val)
"""

from .distillation import DefensiveDistillation, DistillationResult, distill
from .spec import train_from_spec
from .training import (
    METHODS,
    SCHEDULES,
    AdversarialTrainer,
    TrainingInterrupted,
    TrainingResult,
    clean_accuracy,
    lr_at,
    mart_loss,
    plot_training_curve,
    trades_loss,
)

__all__ = [
    "AdversarialTrainer",
    "TrainingResult",
    "TrainingInterrupted",
    "DefensiveDistillation",
    "DistillationResult",
    "distill",
    "train_from_spec",
    "METHODS",
    "SCHEDULES",
    "clean_accuracy",
    "lr_at",
    "mart_loss",
    "trades_loss",
    "plot_training_curve",
]

"""Poisoned training data: backdoor and clean-label attacks, their measurement after training,
and the detectors and repairs that find them.

>>> from advex.poison import BadNets, measure
>>> poisoned, idx = BadNets(rate=0.01, target=0)(train_set)     # a copy + the indices changed
>>> m = measure(BadNets(rate=0.01, target=0), train_set, test_set)
>>> m.attack_success_rate, m.clean_accuracy, m.accuracy_drop

Detectors and repairs live in :mod:`advex.poison.defenses`.
"""

from __future__ import annotations

from .attacks import (
    POSITIONS,
    TRIGGER_SHAPES,
    BadNets,
    Blend,
    CleanLabel,
    FeatureCollision,
    PoisonAttack,
    PoisonedData,
    Trigger,
    features,
    penultimate,
)
from .measure import (
    BackdoorMeasurement,
    VictimRecipe,
    accuracy,
    attack_success_rate,
    default_recipe,
    gtsrb_victim_recipe,
    is_gtsrb_shaped,
    measure,
    train_victim,
    victim_arch_kwargs,
)

__all__ = [
    "POSITIONS",
    "TRIGGER_SHAPES",
    "BadNets",
    "Blend",
    "CleanLabel",
    "FeatureCollision",
    "PoisonAttack",
    "PoisonedData",
    "Trigger",
    "features",
    "penultimate",
    "BackdoorMeasurement",
    "VictimRecipe",
    "accuracy",
    "attack_success_rate",
    "default_recipe",
    "gtsrb_victim_recipe",
    "is_gtsrb_shaped",
    "measure",
    "train_victim",
    "victim_arch_kwargs",
]

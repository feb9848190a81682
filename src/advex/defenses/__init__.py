"""Defenses, each meant to be evaluated adaptively (``advex.evaluate``).

- adversarial training: :class:`AdversarialTrainer` (PGD-AT, TRADES, MART, FGSM-RS);
- defensive distillation: :class:`DefensiveDistillation`, :func:`distill`;
- input transforms (feature squeezing + detector, JPEG, random resize/pad, noise), which declare
  themselves non-differentiable or stochastic so evaluations use BPDA / EOT
  (:func:`advex.models.adapt_for_attack`);
- randomized smoothing certification: :class:`SmoothedClassifier`.

>>> from advex.defenses import AdversarialTrainer
>>> result = AdversarialTrainer(model, "trades", eps=0.3, epochs=10).fit(train, val)
"""

from .distillation import DefensiveDistillation, DistillationResult, distill
from .smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    binomial_test_two_sided,
    certified_accuracy,
    clopper_pearson_lower,
    save_certified_curve,
    train_gaussian_augmentation,
)
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
from .transforms import (
    AdaptedModel,
    BitDepthReduction,
    FeatureSqueezing,
    GaussianNoise,
    InputTransform,
    JPEGCompression,
    MedianSmoothing,
    RandomResizePad,
    adapt_for_attack,
    is_stochastic,
    non_differentiable,
    quantization_table,
)

__all__ = [
    "ABSTAIN",
    "AdaptedModel",
    "AdversarialTrainer",
    "BitDepthReduction",
    "DefensiveDistillation",
    "DistillationResult",
    "FeatureSqueezing",
    "GaussianNoise",
    "InputTransform",
    "JPEGCompression",
    "METHODS",
    "MedianSmoothing",
    "RandomResizePad",
    "SCHEDULES",
    "SmoothedClassifier",
    "TrainingInterrupted",
    "TrainingResult",
    "adapt_for_attack",
    "binomial_test_two_sided",
    "certified_accuracy",
    "clean_accuracy",
    "clopper_pearson_lower",
    "distill",
    "is_stochastic",
    "lr_at",
    "mart_loss",
    "non_differentiable",
    "plot_training_curve",
    "quantization_table",
    "save_certified_curve",
    "trades_loss",
    "train_from_spec",
    "train_gaussian_augmentation",
]

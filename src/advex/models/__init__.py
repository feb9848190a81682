"""The model seam: everything between a user's model and an attack.

Wrappers that let attacks work in input space (:class:`Normalize`, :class:`EOT`, :class:`BPDA`),
the guards an attack runs a model under (:func:`attack_mode`, :func:`check_logits`), black boxes
that count queries (:class:`ScoreBlackBox`, :class:`LabelBlackBox`), and the adaptation of a
defended model for attack (:func:`adapt_for_attack`), and loading models from files without
running code from them (:func:`load`, :func:`load_weights`).
"""

from ..models.blackbox import BlackBoxError, LabelBlackBox, ScoreBlackBox
from .adapt import AdaptedModel, adapt_for_attack, is_stochastic, non_differentiable
from .guards import ProbabilityOutputWarning, attack_mode, check_logits, model_device
from .loading import (
    ExportedModel,
    ModelLoadError,
    ModelSpecError,
    load,
    load_exported,
    load_weights,
    read_state_dict,
)
from .wrappers import BPDA, EOT, Normalize

__all__ = [
    "AdaptedModel",
    "BPDA",
    "BlackBoxError",
    "EOT",
    "ExportedModel",
    "LabelBlackBox",
    "ModelLoadError",
    "ModelSpecError",
    "Normalize",
    "ProbabilityOutputWarning",
    "ScoreBlackBox",
    "adapt_for_attack",
    "attack_mode",
    "check_logits",
    "is_stochastic",
    "load",
    "load_exported",
    "load_weights",
    "model_device",
    "non_differentiable",
    "read_state_dict",
]

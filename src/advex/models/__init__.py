"""The model seam: everything between a user's model and an attack.

Wrappers that let attacks work in input space (:class:`Normalize`, :class:`EOT`, :class:`BPDA`),
the guards an attack runs a model under (:func:`attack_mode`, :func:`check_logits`), black boxes
that count queries (:class:`ScoreBlackBox`, :class:`LabelBlackBox`), and the adaptation of a
defended model for attack (:func:`adapt_for_attack`), and loading models from files without
running code from them (:func:`load`, :func:`load_weights`).
"""

from .adapt import AdaptedModel, adapt_for_attack, is_stochastic, non_differentiable
from .blackbox import BlackBoxError, LabelBlackBox, ScoreBlackBox
from .guards import (
    InputDtypeWarning,
    ProbabilityOutputWarning,
    attack_dtype,
    attack_mode,
    check_logits,
    checked_logits,
    match_input_dtype,
    model_device,
    model_dtype,
    model_errors,
    require_graph,
    round_toward,
)
from .loading import (
    ExportedModel,
    ModelLoadError,
    ModelSpecError,
    load,
    load_exported,
    load_weights,
    read_state_dict,
)
from .text import (
    CallableTextClassifier,
    SklearnTextClassifier,
    TextClassifier,
    TorchTextClassifier,
    as_text_classifier,
)
from .wrappers import BPDA, EOT, CastInput, Normalize, SelectOutput

__all__ = [
    "AdaptedModel",
    "BPDA",
    "BlackBoxError",
    "CallableTextClassifier",
    "CastInput",
    "EOT",
    "ExportedModel",
    "InputDtypeWarning",
    "LabelBlackBox",
    "ModelLoadError",
    "ModelSpecError",
    "Normalize",
    "ProbabilityOutputWarning",
    "ScoreBlackBox",
    "SelectOutput",
    "SklearnTextClassifier",
    "TextClassifier",
    "TorchTextClassifier",
    "adapt_for_attack",
    "as_text_classifier",
    "attack_dtype",
    "attack_mode",
    "check_logits",
    "checked_logits",
    "is_stochastic",
    "load",
    "load_exported",
    "load_weights",
    "match_input_dtype",
    "model_device",
    "model_dtype",
    "model_errors",
    "non_differentiable",
    "read_state_dict",
    "require_graph",
    "round_toward",
]

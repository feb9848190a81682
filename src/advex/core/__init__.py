"""Core primitives: threat models, norms, goals, losses, results, model guards.

Nothing here imports the rest of advex.
"""

from .goals import Goal
from .losses import cross_entropy, dlr, get_loss, margin
from .model import BPDA, EOT, Normalize, ProbabilityOutputWarning, attack_mode, check_logits
from .norms import L1, L2, LInf, Norm, get_norm
from .result import AttackResult
from .threat import ThreatModel

__all__ = [
    "AttackResult",
    "BPDA",
    "EOT",
    "Goal",
    "L1",
    "L2",
    "LInf",
    "Norm",
    "Normalize",
    "ProbabilityOutputWarning",
    "ThreatModel",
    "attack_mode",
    "check_logits",
    "cross_entropy",
    "dlr",
    "get_loss",
    "get_norm",
    "margin",
]

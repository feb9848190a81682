"""advex: create adversarial examples, measure robustness, harden models (PyTorch-native)."""

from .core import BPDA, EOT, AttackResult, Normalize, ThreatModel

__version__ = "0.1.0"

__all__ = ["AttackResult", "BPDA", "EOT", "Normalize", "ThreatModel", "__version__"]

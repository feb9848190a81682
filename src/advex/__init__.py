"""advex: create adversarial examples, measure robustness, harden models (PyTorch-native)."""

from .core import AttackResult, Normalize, ThreatModel

__version__ = "0.1.0"

__all__ = ["AttackResult", "Normalize", "ThreatModel", "__version__"]

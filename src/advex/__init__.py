"""advex: create adversarial examples, measure robustness, harden models (PyTorch-native).

Submodules load on first use: ``advex.attacks``, ``advex.evaluate``, ``advex.defenses``,
``advex.data``, ``advex.zoo``, ``advex.report``, ``advex.threats``, ``advex.models``,
``advex.training``.
"""

from __future__ import annotations

import importlib

from .core import AttackResult
from .models import BPDA, EOT, Normalize
from .threats import ThreatModel

__version__ = "0.1.0"

_SUBMODULES = {
    "attacks",
    "core",
    "data",
    "defenses",
    "evaluate",
    "models",
    "report",
    "threats",
    "training",
    "zoo",
    "cli",
}

__all__ = [
    "AttackResult",
    "BPDA",
    "EOT",
    "Normalize",
    "ThreatModel",
    "__version__",
    *sorted(_SUBMODULES - {"cli"}),
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'advex' has no attribute {name!r}")

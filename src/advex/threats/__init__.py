"""Threats: what an attacker may change, and by how much — the only place that knows geometry
and budget. Nothing here imports the rest of advex.
"""

from .lp import ThreatModel
from .norms import L1, L2, NORMS, LInf, Norm, get_norm

__all__ = ["L1", "L2", "LInf", "NORMS", "Norm", "ThreatModel", "get_norm"]

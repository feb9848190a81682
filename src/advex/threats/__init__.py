"""Threats: what an attacker may change, and by how much — the only place that knows geometry
and budget. Nothing here imports the rest of advex.

- :class:`Threat`: the interface every threat implements (validate, start, project, ascent
  direction, distance, membership, budget, description).
- :class:`Box` and :class:`Mask`: the domain (valid range, scalar or per feature; modifiable
  features).
- :class:`LpBall` (alias ``ThreatModel``): an Lp ball of radius ε in a box, with a mask.
- :mod:`~advex.threats.norms`: L∞, L2, L1 written once; :mod:`~advex.threats.projections`: the
  exact projections onto ball ∩ box and hyperplane ∩ box.
- :class:`PointRandom`: random draws per point (seed, sample, stream), never per batch.
"""

from .base import Threat
from .box import Box, Mask
from .lp import LpBall, ThreatModel, check_budget
from .norms import L1, L2, NORMS, LInf, Norm, get_norm
from .projections import project_hyperplane_box, project_l1_box
from .random import PointRandom, point_keys
from .text import EditBudget

__all__ = [
    "Box",
    "EditBudget",
    "L1",
    "L2",
    "LInf",
    "LpBall",
    "Mask",
    "NORMS",
    "Norm",
    "PointRandom",
    "Threat",
    "ThreatModel",
    "check_budget",
    "get_norm",
    "point_keys",
    "project_hyperplane_box",
    "project_l1_box",
]

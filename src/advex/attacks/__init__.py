"""Attacks: every one is called as ``attack(model, x, y, target=None) -> AttackResult``.

Fixed-budget (ε given): FGSM, PGD/BIM, MIFGSM, APGD, Square, UniversalPerturbation, AdvGAN
(a trained generator: ``fit`` first).
Decision-based (labels only, black box; minimum-norm without ``eps``): HopSkipJump,
BoundaryAttack, RayS.
Minimum-norm (smallest perturbation found, convert with ``result.at_eps(eps, x)``): CW, EAD,
LBFGS, DeepFool, FAB, JSMA.

``__all__`` is the list of built-in attacks: :mod:`advex.attacks.registry` finds attacks by
name among its Attack classes (plus those passed to ``registry.register``) and reads what each
declares (``name``, ``aliases``, ``norms``, ``black_box``, ``minimum_norm``, ``targeted_only``).
Add a new attack here and it is available to the CLI, presets and ``advex list``.
"""

from . import registry
from .apgd import APGD
from .base import Attack
from .cw import CW
from .decision import BoundaryAttack, HopSkipJump, RayS
from .deepfool import DeepFool
from .ead import EAD
from .fab import FAB, FABT
from .fixed import FixedBudgetAttack
from .generative import AdvGAN
from .gradient import BIM, FGSM, MIFGSM, PGD
from .jsma import JSMA
from .lbfgs import LBFGS
from .square import Square
from .universal import UniversalPerturbation

__all__ = [
    "APGD",
    "AdvGAN",
    "Attack",
    "BIM",
    "BoundaryAttack",
    "CW",
    "DeepFool",
    "EAD",
    "FAB",
    "FABT",
    "FGSM",
    "FixedBudgetAttack",
    "HopSkipJump",
    "JSMA",
    "LBFGS",
    "MIFGSM",
    "PGD",
    "RayS",
    "Square",
    "UniversalPerturbation",
    "registry",
]

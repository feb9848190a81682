"""Attacks: every one is called as ``attack(model, x, y, target=None) -> AttackResult``.

Fixed-budget (ε given): FGSM, PGD/BIM, MIFGSM, APGD, Square, UniversalPerturbation, AdvGAN
(a trained generator: ``fit`` first).
Decision-based (labels only, black box; minimum-norm without ``eps``): HopSkipJump,
BoundaryAttack, RayS.
Minimum-norm (smallest perturbation found, convert with ``result.at_eps(eps, x)``): CW, EAD,
LBFGS, DeepFool, FAB, JSMA.
Tabular, inside a feature schema (``advex.threats.TabularThreat``): ConstrainedPGD,
LowProFool, ConstrainedEvolution (black-box).

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
from .generative import AdvGAN, OnlineAdvGAN
from .gradient import BIM, FGSM, MIFGSM, PGD
from .jsma import JSMA
from .lbfgs import LBFGS
from .physical import RP2, AdversarialPatch
from .square import Square
from .tabular import ConstrainedEvolution, ConstrainedPGD, LowProFool
from .transfer import Distillation, TransferAttack, distill_surrogate
from .universal import UniversalPerturbation

__all__ = [
    "APGD",
    "AdvGAN",
    "AdversarialPatch",
    "Attack",
    "BIM",
    "BoundaryAttack",
    "CW",
    "ConstrainedEvolution",
    "ConstrainedPGD",
    "DeepFool",
    "EAD",
    "FAB",
    "FABT",
    "FGSM",
    "FixedBudgetAttack",
    "HopSkipJump",
    "JSMA",
    "LBFGS",
    "LowProFool",
    "MIFGSM",
    "PGD",
    "RP2",
    "RayS",
    "Square",
    "UniversalPerturbation",
    "registry",
]

# transfer attacks (surrogates distilled from queries) and the online AdvGAN generator
__all__ += ["Distillation", "OnlineAdvGAN", "TransferAttack", "distill_surrogate"]

"""Attacks: every one is called as ``attack(model, x, y, target=None) -> AttackResult``."""

from .base import Attack
from .gradient import BIM, FGSM, PGD

__all__ = ["Attack", "FGSM", "PGD", "BIM"]

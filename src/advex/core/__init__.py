"""Core primitives every attack shares: goals (untargeted / targeted), losses (CE, margin, DLR)
and the :class:`AttackResult`. Imports only :mod:`advex.threats`.
"""

from .goals import Goal
from .losses import cross_entropy, dlr, get_loss, margin
from .result import AttackResult

__all__ = ["AttackResult", "Goal", "cross_entropy", "dlr", "get_loss", "margin"]

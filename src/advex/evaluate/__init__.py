"""Measure robustness: clean and robust accuracy under several attacks (per-point worst case),
and robust accuracy as a function of ε.

>>> from advex.evaluate import robust_accuracy, robustness_curve
>>> res = robust_accuracy(model, (x, y), [FGSM(eps=0.3), PGD(eps=0.3)])
>>> res.robust_accuracy, res.attacks["pgd"].success_rate
>>> curve = robustness_curve(model, (x, y), {"pgd": PGD}, [0.1, 0.2, 0.3])
"""

from ._data import as_batches
from .budget import BudgetedAttack
from .curve import RobustnessCurve, check_eps_list, rebudget, robustness_curve
from .examples import Examples
from .robust import AttackStats, EvaluationResult, named_attacks, robust_accuracy

__all__ = [
    "AttackStats",
    "BudgetedAttack",
    "EvaluationResult",
    "Examples",
    "RobustnessCurve",
    "as_batches",
    "check_eps_list",
    "named_attacks",
    "rebudget",
    "robust_accuracy",
    "robustness_curve",
]

"""Measure robustness: clean and robust accuracy under several attacks (per-point worst case),
and robust accuracy as a function of ε.

>>> from advex.evaluate import robust_accuracy, robustness_curve
>>> res = robust_accuracy(model, (x, y), [FGSM(eps=0.3), PGD(eps=0.3)])
>>> res.robust_accuracy, res.attacks["pgd"].success_rate
>>> curve = robustness_curve(model, (x, y), {"pgd": PGD}, [0.1, 0.2, 0.3])
>>> ev = evaluate(model, (x, y), eps=0.3, preset="standard", out_dir="run/")  # the ensemble
>>> ev.robust_accuracy, ev.robust_accuracy_ci, ev.verdict
"""

from ..report.examples import Examples
from ._data import as_batches
from .budget import BudgetedAttack
from .checks import Check, masking_checks, verdict
from .curve import RobustnessCurve, check_eps_list, rebudget, robustness_curve
from .ensemble import EvaluateOptions, Evaluation, StageResult, clopper_pearson, evaluate
from .presets import PRESETS, Preset, Stage, get_preset
from .robust import AttackStats, EvaluationResult, named_attacks, robust_accuracy

__all__ = [
    "PRESETS",
    "AttackStats",
    "BudgetedAttack",
    "Check",
    "EvaluateOptions",
    "Evaluation",
    "EvaluationResult",
    "Examples",
    "Preset",
    "Stage",
    "StageResult",
    "clopper_pearson",
    "evaluate",
    "get_preset",
    "masking_checks",
    "verdict",
    "RobustnessCurve",
    "as_batches",
    "check_eps_list",
    "named_attacks",
    "rebudget",
    "robust_accuracy",
    "robustness_curve",
]

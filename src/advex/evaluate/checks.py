"""Gradient-masking checks: reasons not to believe a robustness number.

A high robust accuracy can mean a robust model or an attack that was fooled (Athalye et al.
2018; Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Croce & Hein 2020). Each check
below looks for one known symptom on a small probe batch and, when it fires, names the adaptive
attack that sidesteps it. :func:`masking_checks` runs them all; ``verdict`` is ``"PASS"`` when
none fires and ``"SUSPECT"`` otherwise.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import FGSM, PGD
from ..core.goals import Goal
from ..core.losses import margin
from ..models.guards import ProbabilityOutputWarning, attack_mode, match_input_dtype, require_graph
from ..threats import ThreatModel

__all__ = ["Check", "masking_checks", "verdict"]


@dataclass
class Check:
    """One check's outcome: ``passed`` False means the robustness number is suspect."""

    name: str
    passed: bool
    evidence: str
    recommendation: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(checks: list[Check]) -> str:
    return "PASS" if all(c.passed for c in checks) else "SUSPECT"


def _input_grads(model, x, y):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = require_graph(model)(x)
        ce = F.cross_entropy(logits, y, reduction="sum")
        (g_ce,) = torch.autograd.grad(ce, x, retain_graph=True)
        mg = margin(logits, Goal(y)).sum()
        (g_m,) = torch.autograd.grad(mg, x)
    return logits.detach(), g_ce.flatten(1), g_m.flatten(1)


def check_probability_output(logits: torch.Tensor) -> Check:
    in_unit = bool(((logits >= 0) & (logits <= 1)).all())
    sums = logits.sum(1)
    sums_one = bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
    fired = in_unit and sums_one
    return Check(
        "probability_output",
        not fired,
        "model outputs lie in [0, 1] and sum to 1 per row: they are probabilities, not logits"
        if fired
        else "model outputs are unnormalised scores (logits)",
        "attack the logits (remove the final softmax) or use scale-invariant losses "
        "(margin / DLR: CW, APGD-DLR)"
        if fired
        else "",
        {"outputs_in_unit_interval": in_unit, "rows_sum_to_one": sums_one},
    )


def check_gradients(logits, g_ce, g_m, correct) -> Check:
    n = max(int(correct.sum()), 1)
    tiny = 1e-30
    nonfinite = ~torch.isfinite(g_ce).all(1) | ~torch.isfinite(g_m).all(1)
    ce_zero = (g_ce.abs().sum(1) <= tiny) & correct
    m_zero = (g_m.abs().sum(1) <= tiny) & correct
    frac_ce, frac_m = float(ce_zero.sum()) / n, float(m_zero.sum()) / n
    frac_nan = float(nonfinite.float().mean())
    data = {
        "share_zero_ce_gradient": frac_ce,
        "share_zero_margin_gradient": frac_m,
        "share_nonfinite_gradient": frac_nan,
    }
    if frac_nan > 0:
        return Check(
            "gradients",
            False,
            f"{frac_nan:.0%} of points have NaN/inf input gradients",
            "the model's backward pass is broken or deliberately obfuscated: use BPDA on the "
            "offending layer, or a black-box attack (Square; decision-based: HopSkipJump, RayS)",
            data,
        )
    if frac_m > 0.1:
        return Check(
            "gradients",
            False,
            f"input gradients are exactly zero for {frac_m:.0%} of correctly classified points, "
            "even for the margin loss: a non-differentiable or quantising layer (shattered "
            "gradients)",
            "use BPDA (advex.BPDA(layer) — identity or a smooth approximation on the backward "
            "pass) for that layer, or a black-box attack (Square; decision-based: HopSkipJump, "
            "RayS)",
            data,
        )
    if frac_ce > 0.1:
        return Check(
            "gradients",
            False,
            f"cross-entropy input gradients vanish for {frac_ce:.0%} of correctly classified "
            "points while margin gradients do not: the softmax saturates (very large logits, "
            "e.g. defensive distillation or scaled outputs)",
            "use a scale-invariant loss: loss='margin' or 'dlr' (C&W, APGD-DLR, APGD-T)",
            data,
        )
    return Check("gradients", True, "input gradients are finite and non-zero", "", data)


def check_randomness(model, x) -> Check:
    with torch.no_grad():
        a, b = model(x), model(x)
    diff = float((a - b).abs().max())
    scale = float(a.abs().max()) + 1e-12
    pred_changed = float((a.argmax(1) != b.argmax(1)).float().mean())
    fired = diff > 1e-5 * scale
    return Check(
        "randomness",
        not fired,
        f"two identical calls differ (max logit difference {diff:.3g}, "
        f"{pred_changed:.0%} of predictions changed): the model is randomised"
        if fired
        else "identical inputs give identical outputs",
        "use EOT: average gradients over random draws (build the attack with eot_samples=16, "
        "e.g. PGD(eps=..., eot_samples=16), or attack advex.EOT(model, 16))"
        if fired
        else "",
        {"max_logit_difference": diff, "share_predictions_changed": pred_changed},
    )


def _robust_acc(result) -> float:
    return result.robust_accuracy


def check_eps_monotone(accs: dict[float, float]) -> Check:
    eps_sorted = sorted(accs)
    rises = [
        (a, b) for a, b in zip(eps_sorted, eps_sorted[1:], strict=False) if accs[b] > accs[a] + 0.02
    ]
    flat = accs[eps_sorted[-1]] >= accs[eps_sorted[0]] - 1e-9 and len(eps_sorted) > 1
    fired = bool(rises)
    return Check(
        "accuracy_decreases_with_eps",
        not fired,
        "robust accuracy rises with a larger budget: "
        + ", ".join(f"ε={a:g}: {accs[a]:.1%} → ε={b:g}: {accs[b]:.1%}" for a, b in rises)
        if fired
        else "robust accuracy does not increase as ε grows"
        + (" (it stays flat: check the budget is meaningful)" if flat else ""),
        "a larger budget contains every smaller one, so the attack is failing to optimise: "
        "more steps/restarts, other losses (DLR), or BPDA/EOT as the other checks indicate"
        if fired
        else "",
        {"robust_accuracy_by_eps": {str(k): v for k, v in accs.items()}},
    )


def check_unbounded(acc: float, eps: float) -> Check:
    fired = acc > 0.1
    return Check(
        "unbounded_attack_reaches_zero",
        not fired,
        f"with ε = {eps:g} (the whole input range) accuracy is still {acc:.1%}; any input can be "
        "reached, so an attack that works should get close to 0%"
        if fired
        else f"with ε = {eps:g} (the whole input range) accuracy falls to {acc:.1%}",
        "the gradient signal is unusable: BPDA / EOT / a black-box attack, as the other checks "
        "indicate"
        if fired
        else "",
        {"accuracy_at_unbounded_eps": acc, "unbounded_eps": eps},
    )


def check_single_vs_iterative(acc_single: float, acc_iter: float) -> Check:
    fired = acc_single < acc_iter - 0.02
    return Check(
        "iterative_beats_single_step",
        not fired,
        f"one-step FGSM ({acc_single:.1%}) is stronger than iterative PGD ({acc_iter:.1%})"
        if fired
        else f"iterative PGD ({acc_iter:.1%}) is at least as strong as FGSM ({acc_single:.1%})",
        "iterative attacks are being trapped by a rugged loss surface: more random restarts, "
        "a smaller step size, or BPDA/EOT"
        if fired
        else "",
        {"fgsm_robust_accuracy": acc_single, "pgd_robust_accuracy": acc_iter},
    )


def check_restart_variance(robust_runs: list[torch.Tensor]) -> Check:
    stack = torch.stack([r.float() for r in robust_runs])
    accs = stack.mean(1)
    spread = float(accs.max() - accs.min())
    disagree = float((stack.max(0).values != stack.min(0).values).float().mean())
    fired = spread > 0.05 or disagree > 0.1
    return Check(
        "restart_variance",
        not fired,
        f"random restarts disagree: robust accuracy ranges over {spread:.1%} and the outcome "
        f"changes for {disagree:.0%} of points"
        if fired
        else f"random restarts agree (spread {spread:.1%}, {disagree:.0%} of points differ)",
        "the loss surface is noisy: use many restarts and take the per-point worst case "
        "(preset='thorough'), and EOT if the model is random"
        if fired
        else "",
        {"robust_accuracy_by_restart": accs.tolist(), "share_points_disagreeing": disagree},
    )


def check_black_box(n_points: int, broken_by_black_box: int) -> Check:
    share = broken_by_black_box / max(n_points, 1)
    fired = broken_by_black_box >= 2 and share >= 0.01
    return Check(
        "black_box_not_stronger",
        not fired,
        f"the black-box attack broke {broken_by_black_box} point(s) ({share:.1%}) that every "
        "white-box attack missed: gradients are misleading"
        if fired
        else "the black-box attack found nothing the white-box attacks missed",
        "treat white-box numbers as upper bounds; look for masking (BPDA/EOT) and keep the "
        "black-box attack in the ensemble"
        if fired
        else "",
        {"broken_only_by_black_box": broken_by_black_box, "points": n_points},
    )


def masking_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    seed: int = 0,
    steps: int = 20,
    restarts: int = 3,
    max_points: int = 200,
    broken_by_black_box: int | None = None,
    n_evaluated: int | None = None,
    eot_samples: int = 1,
) -> list[Check]:
    """Run every gradient-masking check on (a probe subset of) ``x, y`` under ``threat``.

    Cost on the probe batch: one input-gradient pass, two forwards, and about six short PGD
    runs plus one FGSM (early exit makes them cheap on models that are not robust).
    ``broken_by_black_box``/``n_evaluated`` come from an ensemble run (points only the
    black-box attack broke); without them that check is skipped. ``eot_samples`` > 1 makes
    the probe attacks average over that many draws of a random model (EOT).
    """
    if threat.eps is None:
        raise ValueError("masking checks need a threat model with a finite eps")
    x, y = x[:max_points].detach(), y[:max_points]
    model = match_input_dtype(model, x)
    # a model without usable gradients (no graph, labels only) gets one check that names the
    # black-box attacks, instead of an autograd error from the gradient probes below
    from .capabilities import check_capability, probe_capability

    cap = probe_capability(model, x, y)
    if cap.black_box and not cap.evidence.get("gradient"):
        return [check_capability(cap)]
    # a graph whose gradients carry nothing (zero, not finite, a decoy): the probes below
    # still run (they say why: shattered gradients, BPDA), after the check naming the
    # black-box attacks
    checks: list[Check] = [check_capability(cap)] if cap.black_box else []

    def pgd(e, s=seed):
        atk = PGD(threat=threat.with_eps(e), steps=steps, seed=s, eot_samples=int(eot_samples))
        return atk(model, x, y)

    # one eval-mode section for every probe (a train-mode model is warned about once, not
    # once per probe attack; the nested attacks find it in eval mode already)
    with attack_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
        logits, g_ce, g_m = _input_grads(model, x, y)
        checks.append(check_probability_output(logits))
        correct = logits.argmax(1) == y
        checks.append(check_gradients(logits, g_ce, g_m, correct))
        checks.append(check_randomness(model, x))
        with warnings.catch_warnings():
            # the probability-output check above already reports this, once
            warnings.simplefilter("ignore", ProbabilityOutputWarning)
            checks += _attack_checks(model, x, y, threat, pgd, seed, restarts, eot_samples)
    if broken_by_black_box is not None:
        checks.append(check_black_box(n_evaluated or len(x), broken_by_black_box))
    return checks


def _attack_checks(model, x, y, threat, pgd, seed, restarts, eot_samples=1) -> list[Check]:
    checks = []
    eps = threat.eps
    lo, hi = threat.bounds

    accs = {}
    runs = {}
    for f in (0.25, 0.5, 1.0):
        runs[f] = pgd(eps * f)
        accs[eps * f] = _robust_acc(runs[f])
    checks.append(check_eps_monotone(accs))
    d = x[0].numel()
    big = {"linf": hi - lo, "l2": (hi - lo) * math.sqrt(d), "l1": (hi - lo) * d}
    big_eps = big[threat.norm]
    checks.append(check_unbounded(_robust_acc(pgd(big_eps)), big_eps))
    fgsm_attack = FGSM(threat=threat, seed=seed, eot_samples=int(eot_samples))
    fgsm = fgsm_attack(model, x, y)
    checks.append(check_single_vs_iterative(fgsm.robust_accuracy, accs[eps]))
    robust_runs = [runs[1.0].robust]
    robust_runs += [pgd(eps, s=seed + 1 + r).robust for r in range(restarts - 1)]
    checks.append(check_restart_variance(robust_runs))
    return checks

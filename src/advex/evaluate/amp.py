"""Low-precision evaluation stages: the cheap stage under ``torch.autocast``, every break it
claims re-checked in fp32.

``evaluate(..., amp="bf16")`` (CLI: ``advex evaluate --amp bf16``) runs the **first stage** of
the preset (APGD-CE for ``quick``, ``standard``, ``autoattack`` and ``thorough``; the first
attack of a list) under ``torch.autocast(device_type, dtype)``: its forward and backward passes
(the attack's clean pass, its steps, its last re-prediction) run in bfloat16 / float16 where
autocast lowers an op. Everything else runs in fp32: the evaluation's clean pass (clean
accuracy is always fp32), every later stage (APGD-T, FAB-T, Square: they decide the points the
first stage left robust, and their breaks count as they are), the masking checks.

**The fp32 re-check.** A low-precision forward pass can call a point misclassified when fp32
does not (two logits a few units in the last place of bfloat16 apart round to a tie or swap).
So every point the low-precision stage claims broken is re-predicted in fp32, outside
autocast, on the adversarial it returned: the point counts as broken only when the fp32
prediction fools the model (untargeted: not the label; targeted: the target) **and** the
adversarial lies inside the threat (box, ε-ball, mask: :meth:`~advex.threats.LpBall.contains`).
Otherwise the break is *reversed*: the point is not counted broken and goes on to the next
stages like any point the stage left robust. The re-check costs 2 forward passes per claimed
break (the clean input and the adversarial, so the stage's reported predictions are fp32 ones),
counted in the stage's queries. Per stage ``amp_rechecks`` (breaks re-checked) and
``amp_reversed`` (breaks fp32 refused) go into ``results.json`` and the report. So the robust
accuracy never rests on a low-precision forward pass: a point is counted broken only on an
fp32 prediction.

What the low precision can still change: *which* adversarial the first stage finds (its
gradients are bfloat16 ones), the margins it records in the scheduling ledger
(:mod:`.schedule`: which targets and how many passes the later stages spend per point), hence
the later stages' work. The number stays an fp32-verified upper bound on robust accuracy, like
any attack's; it may differ from the fp32 run's by the points one precision breaks and the
other misses (measured in docs/scaling.md).

The amp setting is part of a resumable run's fingerprint: a run cannot resume with another
precision. A dtype the device's autocast cannot run (an old torch build without CPU float16,
an unsupported device) is refused up front with the reason, never silently run in fp32.

>>> ev = evaluate(model, (x, y), eps=8 / 255, amp="bf16")
>>> ev.amp["reversed"], [s.amp_reversed for s in ev.per_attack]
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..attacks.base import check_eot_samples
from ..core.goals import Goal
from ..core.result import AttackResult
from ..models.guards import attack_mode, match_input_dtype
from ..models.wrappers import EOT
from ..training import AMP_DTYPES, check_amp

__all__ = ["AmpSpec", "LowPrecisionStage", "resolve_amp", "amp_stage_names", "wrap_amp_stages"]


@dataclass(frozen=True)
class AmpSpec:
    """What the low-precision stages run in: ``name`` (``"bf16"`` | ``"fp16"``), the torch
    ``dtype`` and the autocast ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""

    name: str
    dtype: torch.dtype
    device_type: str

    def autocast(self) -> Any:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_amp(amp: Any, device: Any) -> AmpSpec | None:
    """``None`` for fp32, else the :class:`AmpSpec` for ``amp`` (``"bf16"``, ``"fp16"``; also
    ``"bfloat16"``, ``"float16"``) on ``device``. Raises ``ValueError`` for an unknown name and
    for a dtype this torch build cannot autocast on that device (checked by running a tiny
    convolution and linear layer under it: autocast that would silently stay fp32 is refused)."""
    key = check_amp(amp)
    if key is None:
        return None
    dtype = AMP_DTYPES[key]
    dev = torch.device(device if device is not None else "cpu")
    why = _autocast_problem(dev, dtype)
    if why is not None:
        raise ValueError(
            f"amp={key!r} cannot run on {dev.type} with this torch build ({torch.__version__}): "
            f"{why}; use amp='bf16'{' or run on a GPU' if dev.type == 'cpu' else ''}, or "
            "amp=None (fp32)"
        )
    return AmpSpec(key, dtype, dev.type)


def _autocast_problem(dev: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``dtype`` autocast does not work on ``dev`` (None when it does)."""
    if not torch.amp.is_autocast_available(dev.type):
        return f"torch has no autocast for device type {dev.type!r}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device_type=dev.type, dtype=dtype):
                enabled = torch.is_autocast_enabled(dev.type)
                # fixed values, not torch.rand: the caller's global RNG stays untouched
                x = torch.linspace(0, 1, 32, device=dev).reshape(2, 1, 4, 4).requires_grad_()
                w = torch.linspace(-1, 1, 18, device=dev).reshape(2, 1, 3, 3)
                h = torch.nn.functional.conv2d(x, w)
                v = torch.linspace(-1, 1, 24, device=dev).reshape(3, 8)
                out = torch.nn.functional.linear(h.flatten(1), v)
                (grad,) = torch.autograd.grad(out.float().sum(), x)
    except Exception as err:  # an op without a kernel in that dtype on that device
        return f"{type(err).__name__}: {err}"
    if not enabled:
        msgs = "; ".join(str(c.message) for c in caught)
        return f"autocast stays disabled{f' ({msgs})' if msgs else ''}"
    if out.dtype != dtype or h.dtype != dtype:
        return f"autocast ran the layers in {out.dtype}, not {dtype}"
    if not bool(torch.isfinite(grad).all()):
        return "the input gradient is not finite"
    return None


def amp_stage_names(names: list[str]) -> list[str]:
    """The stages that run in low precision: the first one (APGD-CE in every built-in
    preset), the cheap stage every point goes through."""
    return list(names[:1])


def wrap_amp_stages(attacks: dict[str, Any], amp: AmpSpec | None) -> dict[str, Any]:
    """``attacks`` (name -> attack, running order) with the :func:`amp_stage_names` stages
    wrapped in a :class:`LowPrecisionStage`; unchanged for ``amp=None``. Call it after the
    attacks got their ledger, EOT draws and query curves (the wrapper does not forward
    attribute writes)."""
    if amp is None:
        return attacks
    low = set(amp_stage_names(list(attacks)))
    return {n: LowPrecisionStage(a, amp) if n in low else a for n, a in attacks.items()}


def amp_counts(attacks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per low-precision stage of ``attacks``: ``amp``, ``amp_rechecks``, ``amp_reversed``
    (the batch record's extra keys)."""
    return {
        n: {"amp": a.amp.name, "amp_rechecks": a.rechecks, "amp_reversed": a.reversed}
        for n, a in attacks.items()
        if isinstance(a, LowPrecisionStage)
    }


class LowPrecisionStage:
    """An attack run under ``torch.autocast`` whose breaks are re-checked in fp32 (module
    docstring). Called like the attack (``stage(model, x, y, target)`` → an
    :class:`~advex.core.result.AttackResult`, with ``success``, ``adv_pred``/``adv_conf``,
    ``clean_pred``/``clean_conf`` of the re-checked points and every ``norms`` value computed
    in fp32). ``rechecks`` and ``reversed`` count, over its calls, the breaks re-checked and
    those fp32 refused.

    >>> stage = LowPrecisionStage(APGD(eps=0.3), resolve_amp("bf16", "cpu"))
    >>> res = stage(model, x, y)   # res.success holds in fp32
    >>> stage.rechecks, stage.reversed
    """

    def __init__(self, attack: Any, amp: AmpSpec) -> None:
        if not isinstance(amp, AmpSpec):
            raise TypeError(f"amp must be an AmpSpec (see resolve_amp), got {type(amp).__name__}")
        self.attack = attack
        self.amp = amp
        self.threat = attack.threat
        self.name = str(getattr(attack, "name", type(attack).__name__))
        self.targeted_only = bool(getattr(attack, "targeted_only", False))
        self.rechecks = 0
        self.reversed = 0

    def params(self) -> dict[str, Any]:
        return self.attack.params() if hasattr(self.attack, "params") else {}

    def __repr__(self) -> str:
        return f"LowPrecisionStage({self.attack!r}, amp={self.amp.name!r})"

    def __call__(
        self, model: Any, x: torch.Tensor, y: torch.Tensor, target: Any = None
    ) -> AttackResult:
        with self.amp.autocast():
            res = self.attack(model, x, y, target)
        return self._recheck(model, x, res)

    def _recheck(self, model: Any, x: torch.Tensor, res: AttackResult) -> AttackResult:
        x0 = x.detach()
        off = torch.autocast(device_type=self.amp.device_type, enabled=False)
        with off:
            norms = self.threat.distance(res.x_adv, x0).float()
        idx = res.success.nonzero().squeeze(1)
        if idx.numel() == 0:
            return replace(res, norms=norms.to(res.norms.device))
        eot = check_eot_samples(getattr(self.attack, "eot_samples", 1))
        guard = attack_mode(model, warn=False) if isinstance(model, nn.Module) else _null()
        with off, guard, torch.no_grad():
            view = EOT(model, eot) if eot > 1 else model
            view = match_input_dtype(view, x0, warn=False)
            adv_logits = view(res.x_adv[idx]).float()
            clean_logits = view(x0[idx]).float()
            goal = Goal(res.y[idx], None if res.target is None else res.target[idx])
            inside = self.threat.contains(res.x_adv[idx], x0[idx]).to(adv_logits.device)
            ok = goal.is_success(adv_logits) & inside
        self.rechecks += int(idx.numel())
        self.reversed += int((~ok).sum())
        success = res.success.clone()
        success[idx] = ok.to(success.device)
        out = {"success": success, "norms": norms.to(res.norms.device)}
        for kind, logits in (("adv", adv_logits), ("clean", clean_logits)):
            conf, pred = logits.softmax(1).max(1)
            p, c = getattr(res, f"{kind}_pred").clone(), getattr(res, f"{kind}_conf").clone()
            p[idx], c[idx] = pred.to(p.device), conf.to(device=c.device, dtype=c.dtype)
            out[f"{kind}_pred"], out[f"{kind}_conf"] = p, c
        queries = res.queries.clone()
        queries[idx] += 2
        return replace(res, queries=queries, **out)


@contextlib.contextmanager
def _null():
    yield

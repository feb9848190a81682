"""Robust accuracy as a function of the budget ε."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks.base import Attack
from ._data import as_batches, check_target_spec, model_device
from .budget import BudgetedAttack
from .loop import BatchLoop, CleanBatch, attack_points

__all__ = ["robustness_curve", "RobustnessCurve", "rebudget", "check_eps_list"]


def rebudget(attack: Attack, eps: float) -> Attack:
    """A copy of ``attack`` with budget ``eps``: the same as ``attack.with_budget(eps)`` (kept
    for compatibility; see :meth:`~advex.attacks.base.Attack.with_budget` for the step-size
    rule). For anything else that depends on ε, pass a factory ``eps -> Attack`` to
    :func:`robustness_curve` instead."""
    return attack.with_budget(float(eps))


def check_eps_list(eps_list: Any) -> list[float]:
    """Validate a list of budgets: non-empty, finite, >= 0; returned sorted and de-duplicated."""
    if isinstance(eps_list, int | float) and not isinstance(eps_list, bool):
        eps_list = [eps_list]
    try:
        vals = [float(e) for e in eps_list]
    except (TypeError, ValueError) as err:
        raise TypeError(f"eps_list must be a list of numbers, got {eps_list!r}") from err
    if not vals:
        raise ValueError("eps_list is empty: give at least one budget")
    for e in vals:
        if math.isnan(e) or math.isinf(e) or e < 0:
            raise ValueError(f"every eps must be a finite number >= 0, got {e}")
    return sorted(set(vals))


class _Line:
    """One curve: how to get the attack at a given ε."""

    def __init__(self, name: str, spec: Any) -> None:
        self.name = name
        self.instance: Attack | None = None
        self.factory: Callable[[float], Attack] | None = None
        if isinstance(spec, Attack) or (hasattr(spec, "threat") and callable(spec)):
            self.instance = spec
        elif callable(spec):
            self.factory = spec
        else:
            raise TypeError(
                f"curve attack {name!r} must be an Attack instance, an Attack class or a "
                f"factory eps -> Attack; got {type(spec).__name__}"
            )
        if isinstance(spec, BudgetedAttack):  # one run of the minimum-norm attack serves all ε
            self.instance = spec.attack
        self._cache: dict[float, Attack] = {}

    @property
    def minimum_norm(self) -> bool:
        return self.instance is not None and bool(getattr(self.instance, "minimum_norm", False))

    def at(self, eps: float) -> Attack:
        if eps not in self._cache:
            if self.instance is not None:
                atk = self.instance.with_budget(eps)
            else:
                atk = self.factory(eps)
                if not (callable(atk) and hasattr(atk, "threat")):
                    raise TypeError(
                        f"factory of curve {self.name!r} returned {type(atk).__name__}, "
                        "not an Attack"
                    )
                got = atk.threat.eps
                if got is None or abs(got - eps) > 1e-12 * max(1.0, eps):
                    raise ValueError(
                        f"factory of curve {self.name!r} returned an attack with eps={got} "
                        f"when asked for eps={eps}: it must use its argument as the budget"
                    )
            self._cache[eps] = atk
        return self._cache[eps]


def _lines(attacks: Any) -> list[_Line]:
    if isinstance(attacks, Mapping):
        items = [(str(k), v) for k, v in attacks.items()]
    elif isinstance(attacks, Sequence) and not isinstance(attacks, str):
        items = [(None, a) for a in attacks]
    else:
        items = [(None, attacks)]
    if not items:
        raise ValueError("attacks is empty: give at least one attack or factory")
    out, used = [], {}
    for name, spec in items:
        if name is None:
            base = getattr(spec, "name", None)
            if not isinstance(base, str):
                base = getattr(spec, "__name__", None) or type(spec).__name__
                base = base.lower()
            used[base] = used.get(base, 0) + 1
            name = base if used[base] == 1 else f"{base}-{used[base]}"
        out.append(_Line(name, spec))
    return out


@dataclass
class RobustnessCurve:
    """Robust accuracy at each ε, per attack and worst case over the attacks.

    ``robust_accuracy[name][j]`` is the robust accuracy under attack ``name`` at ``eps[j]``;
    ``worst_case[j]`` is the share of points that are correct and broken by no attack at
    ``eps[j]``. Per point (CPU tensors, data order): ``y``, ``clean_pred`` and
    ``broken_at[name]``, the index of the smallest ε at which the attack fooled the point
    (``len(eps)`` = never, ``-1`` = misclassified clean). ``gradients[name][j]`` and
    ``time_s[name][j]`` are what the attack spent at ``eps[j]``.
    """

    eps: list[float]
    names: list[str]
    norm: str | None
    n: int
    n_skipped: int
    targeted: bool
    independent: bool
    clean_pred: torch.Tensor
    y: torch.Tensor
    broken_at: dict[str, torch.Tensor]
    robust_accuracy: dict[str, list[float]]
    worst_case: list[float]
    gradients: dict[str, list[int]]
    time_s: dict[str, list[float]]
    params: dict[str, dict] = field(default_factory=dict)
    wall_time_s: float = 0.0
    data_name: str | None = None

    @property
    def clean_accuracy(self) -> float:
        return int((self.clean_pred == self.y).sum()) / max(1, self.n)

    def at(self, eps: float, name: str | None = None) -> float:
        """Robust accuracy at ``eps`` (one of :attr:`eps`) for ``name`` (default: worst case)."""
        j = self.eps.index(float(eps))
        return self.worst_case[j] if name is None else self.robust_accuracy[name][j]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "robustness_curve",
            "data": self.data_name,
            "eps": list(self.eps),
            "norm": self.norm,
            "n": self.n,
            "n_skipped": self.n_skipped,
            "targeted": self.targeted,
            "independent": self.independent,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": {k: list(v) for k, v in self.robust_accuracy.items()},
            "worst_case": list(self.worst_case),
            "gradients": {k: list(v) for k, v in self.gradients.items()},
            "time_s": {k: list(v) for k, v in self.time_s.items()},
            "params": self.params,
            "wall_time_s": self.wall_time_s,
        }

    def __repr__(self) -> str:
        return (
            f"RobustnessCurve(eps={self.eps}, worst_case={[round(v, 4) for v in self.worst_case]}, "
            f"attacks={self.names})"
        )


def robustness_curve(
    model: nn.Module,
    data: Any,
    attacks: Any,
    eps_list: Sequence[float],
    *,
    batch_size: int = 256,
    target: Any = None,
    device: Any = None,
    progress: bool = False,
    independent: bool = False,
) -> RobustnessCurve:
    """Robust accuracy versus the budget ε, for one or several attacks and their worst case.

    A point fooled at a smaller ε is fooled at every larger ε: its adversarial example lies in
    the larger ball too (and still inside the bounds). So the ε values are visited in increasing
    order and, at each ε, an attack runs only on the points it has not fooled yet at a smaller
    one; a point fooled at ε counts as fooled at every larger ε. The curves are non-increasing
    by construction, at a fraction of the cost of independent runs, and never above them. At
    ε = 0 no attack runs (robust accuracy = clean accuracy).

    Args:
        model: classifier returning logits (never modified).
        data: ``(x, y)`` tensors, an ``ArrayDataset``, a ``Dataset`` or a ``DataLoader``.
        attacks: one attack spec, a list, or a dict ``name -> spec``. A spec is
            a factory ``eps -> Attack`` (an Attack class works: ``PGD``, or
            ``functools.partial(PGD, steps=20)``), or an Attack instance, which is re-budgeted
            with :meth:`~advex.attacks.base.Attack.with_budget` (its one step-size rule). A
            minimum-norm attack instance (``minimum_norm=True``, or wrapped in
            :class:`BudgetedAttack`) runs once: a point is fooled at ε when the attack's
            perturbation has norm ≤ ε.
        eps_list: budgets (sorted and de-duplicated; each >= 0).
        batch_size, target, device, progress: as in :func:`robust_accuracy`.
        independent: run every ε on every correctly classified point instead (for checking;
            the curve may then go up where the attack is not monotone in ε).

    >>> curve = robustness_curve(model, (x, y), {"fgsm": FGSM, "pgd": PGD}, [0.1, 0.2, 0.3])
    >>> curve.robust_accuracy["pgd"], curve.worst_case
    """
    eps = check_eps_list(eps_list)
    lines = _lines(attacks)
    check_target_spec(target)
    batches = as_batches(data, batch_size)
    dev = model_device(model, device)
    E = len(eps)
    t_start = time.perf_counter()
    raw_robust = {ln.name: [0] * E for ln in lines}  # independent mode: counts per ε
    grads = {ln.name: [0] * E for ln in lines}
    times = {ln.name: [0.0] * E for ln in lines}
    # the one validation (advex.core.validate): every point against every attack's threat
    threats = [(ln.instance if ln.instance is not None else ln.at(eps[-1])).threat for ln in lines]
    loop = BatchLoop(
        model,
        batches,
        threats,
        target=target,
        device=dev,
        progress=progress,
        desc="robustness curve",
    )
    with loop:
        for batch in loop:
            b = len(batch)
            correct = batch.correct
            for ln in lines:
                first = torch.full((b,), E, dtype=torch.long, device=dev)
                first[~correct] = -1
                if ln.minimum_norm:
                    _min_norm_line(ln, loop.model, batch, first, eps, grads, times)
                else:
                    for j, e in enumerate(eps):
                        if e == 0:
                            if independent:
                                raw_robust[ln.name][j] += int(correct.sum())
                            continue
                        mask = correct if independent else correct & (first == E)
                        pool = mask.nonzero().squeeze(1)
                        if pool.numel() == 0:
                            continue
                        res, seconds = attack_points(ln.at(e), loop.model, batch, pool)
                        times[ln.name][j] += seconds
                        grads[ln.name][j] += int(res.gradients.sum())
                        s = res.success.to(dev)
                        hit = pool[s]
                        first[hit] = torch.minimum(first[hit], torch.full_like(hit, j))
                        if independent:
                            raw_robust[ln.name][j] += int(pool.numel() - s.sum())
                loop.record(**{f"first/{ln.name}": first})
            loop.record(y=batch.y, clean_pred=batch.logits.argmax(1))
            loop.tick()
    loop.check_not_empty()
    n_skipped = loop.n_skipped
    y = loop.column("y")
    clean_pred = loop.column("clean_pred")
    n = int(y.shape[0])
    broken_at = {ln.name: loop.column(f"first/{ln.name}") for ln in lines}
    robust: dict[str, list[float]] = {}
    for ln in lines:
        fa = broken_at[ln.name]
        if independent and not ln.minimum_norm:
            robust[ln.name] = [c / n for c in raw_robust[ln.name]]
        else:
            robust[ln.name] = [float((fa > j).sum()) / n for j in range(E)]
    worst_first = torch.stack([broken_at[ln.name] for ln in lines]).min(0).values
    worst = [float((worst_first > j).sum()) / n for j in range(E)]
    norms, params = set(), {}
    for ln in lines:
        src = ln.instance if ln.instance is not None else ln.at(eps[-1]) if eps[-1] > 0 else None
        if src is None:
            continue
        norms.add(src.threat.norm)
        p = dict(src.params()) if hasattr(src, "params") else {}
        p.pop("eps", None)
        params[ln.name] = p
    return RobustnessCurve(
        eps=eps,
        names=[ln.name for ln in lines],
        norm=norms.pop() if len(norms) == 1 else None,
        n=n,
        n_skipped=n_skipped,
        targeted=target is not None,
        independent=bool(independent),
        clean_pred=clean_pred,
        y=y,
        broken_at=broken_at,
        robust_accuracy=robust,
        worst_case=worst,
        gradients=grads,
        time_s=times,
        params=params,
        wall_time_s=time.perf_counter() - t_start,
        data_name=batches.name,
    )


def _min_norm_line(ln, model, batch: CleanBatch, first, eps, grads, times) -> None:
    """One minimum-norm run; fooled at ε iff successful with norm ≤ ε."""
    pool = batch.correct.nonzero().squeeze(1)
    if pool.numel() == 0:
        return
    res, seconds = attack_points(ln.instance, model, batch, pool)
    times[ln.name][0] += seconds
    grads[ln.name][0] += int(res.gradients.sum())
    s = res.success.to(first.device)
    norms = res.norms.to(first.device).float()
    grid = torch.tensor(eps, dtype=torch.float32, device=first.device)
    # smallest j with eps[j] >= norm (small tolerance for float round-off)
    j = torch.searchsorted(grid, norms - 1e-6)
    first[pool[s]] = j[s]

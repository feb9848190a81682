"""Robust accuracy under an ordered set of attacks, with the per-point worst case.

The engine: for every batch, one clean forward pass; then the attacks run in order, each only on
the points that are still robust (classified correctly and not yet broken by an earlier attack).
A point counts as robust only if it survives every attack: the per-point worst case. Running
later attacks only on survivors gives the same worst-case number as running every attack on
every point, for a fraction of the cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks.base import Attack
from ..core.result import AttackResult
from ..report.examples import ExampleKeeper, Examples
from ._data import as_batches, check_target_spec, model_device
from .loop import BatchLoop, attack_points
from .progress import StageProgress

__all__ = ["robust_accuracy", "EvaluationResult", "AttackStats", "named_attacks"]


def named_attacks(attacks: Any) -> dict[str, Attack]:
    """Normalise one attack, a list of attacks or a dict ``name -> attack`` to an ordered dict.

    Names default to each attack's ``name`` (``"pgd"``, ...); repeated names get ``-2``, ``-3``.
    """
    if isinstance(attacks, Mapping):
        items = [(str(k), v) for k, v in attacks.items()]
    elif isinstance(attacks, Sequence) and not isinstance(attacks, str):
        items = []
        used: dict[str, int] = {}
        for a in attacks:
            base = str(getattr(a, "name", type(a).__name__))
            used[base] = used.get(base, 0) + 1
            items.append((base if used[base] == 1 else f"{base}-{used[base]}", a))
    else:
        items = [(str(getattr(attacks, "name", type(attacks).__name__)), attacks)]
    if not items:
        raise ValueError("attacks is empty: pass at least one attack")
    for name, a in items:
        if isinstance(a, type):
            raise TypeError(
                f"attack {name!r} is the class {a.__name__}, not an instance: "
                f"pass {a.__name__}(eps=...)"
            )
        if not callable(a) or not hasattr(a, "threat"):
            raise TypeError(
                f"attack {name!r} must be an advex Attack instance, got {type(a).__name__}"
            )
    return dict(items)


@dataclass
class AttackStats:
    """What one attack did inside an evaluation.

    ``n_attacked`` points were handed to it (in cumulative mode, the points still robust after
    the attacks before it); ``n_success`` of them it fooled, so ``success_rate`` is measured
    among the points it was run on. ``robust_accuracy_cumulative`` is the robust accuracy after
    this attack and every earlier one (a point counts once broken by any of them);
    ``robust_accuracy_alone`` (``independent=True`` only) is this attack's own robust accuracy.
    Norm statistics are over this attack's successful perturbations, in its threat model's norm.
    """

    name: str
    attack: str
    params: dict[str, Any]
    threat: dict[str, Any]
    targeted: bool
    n_attacked: int
    n_success: int
    n_broken_first: int
    success_rate: float
    robust_accuracy_cumulative: float
    robust_accuracy_alone: float | None
    norm_mean: float | None
    norm_median: float | None
    norm_max: float | None
    gradients_total: int
    queries_total: int
    gradients_per_point: float
    queries_per_point: float
    time_s: float

    @property
    def robust_accuracy(self) -> float:
        """This attack alone when measured (``independent=True``), else cumulative."""
        if self.robust_accuracy_alone is not None:
            return self.robust_accuracy_alone
        return self.robust_accuracy_cumulative

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["robust_accuracy"] = self.robust_accuracy
        return d


@dataclass
class EvaluationResult:
    """Robust accuracy of a model under a list of attacks, per attack and worst case.

    Numbers (fractions in [0, 1]): ``clean_accuracy``, ``robust_accuracy`` (worst case: correct
    and not broken by any attack), ``success_rate`` (share of the correctly classified points that
    some attack broke), ``attacks[name]`` (:class:`AttackStats`).

    Per point (tensors of length ``n``, on the CPU, in data order): ``index`` (position in the
    data), ``y``, ``target``, ``clean_pred``, ``clean_conf``, ``correct``, ``broken_by`` (index
    into ``attack_names`` of the first attack that broke the point, -1 if none did),
    ``adv_pred``/``adv_conf`` (prediction on the worst-case input: the first successful
    adversarial, else the clean input), and per attack ``success[name]``, ``norms[name]`` (NaN
    where it did not succeed), ``attacked[name]``, ``gradients[name]``, ``queries[name]``.

    ``examples`` holds a few (x, x_adv) pairs broken by some attack (for
    :func:`advex.report.save_triptych`); ``attack_examples[name]`` the same per attack;
    ``results[name]`` the concatenated :class:`~advex.core.result.AttackResult` of each attack
    over the points it was run on (``keep_results=True``), with ``attacked_index[name]``.
    """

    attack_names: list[str]
    independent: bool
    targeted: bool
    n: int
    n_skipped: int
    index: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    clean_pred: torch.Tensor
    clean_conf: torch.Tensor
    broken_by: torch.Tensor
    adv_pred: torch.Tensor
    adv_conf: torch.Tensor
    success: dict[str, torch.Tensor]
    norms: dict[str, torch.Tensor]
    attacked: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    queries: dict[str, torch.Tensor]
    attacks: dict[str, AttackStats]
    wall_time_s: float
    batch_size: int
    data_name: str | None = None
    class_names: list[str] | None = None
    examples: Examples | None = None
    attack_examples: dict[str, Examples] = field(default_factory=dict)
    results: dict[str, AttackResult] = field(default_factory=dict)
    attacked_index: dict[str, torch.Tensor] = field(default_factory=dict)

    # -- derived -------------------------------------------------------------------------------
    @property
    def correct(self) -> torch.Tensor:
        return self.clean_pred == self.y

    @property
    def robust(self) -> torch.Tensor:
        """Per point: correct and broken by no attack."""
        return self.correct & (self.broken_by < 0)

    @property
    def n_correct(self) -> int:
        return int(self.correct.sum())

    @property
    def clean_accuracy(self) -> float:
        return _frac(self.n_correct, self.n)

    @property
    def robust_accuracy(self) -> float:
        return _frac(int(self.robust.sum()), self.n)

    @property
    def success_rate(self) -> float:
        return _frac(self.n_correct - int(self.robust.sum()), self.n_correct)

    @property
    def gradients_total(self) -> int:
        return sum(s.gradients_total for s in self.attacks.values())

    @property
    def queries_total(self) -> int:
        """Model evaluations of the attacks plus the evaluation's own clean pass (one per point)."""
        return sum(s.queries_total for s in self.attacks.values()) + self.n

    def worst_case(self) -> dict[str, Any]:
        broken = self.correct & (self.broken_by >= 0)
        counts = {
            name: int((self.broken_by == k).sum()) for k, name in enumerate(self.attack_names)
        }
        return {
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "n_robust": int(self.robust.sum()),
            "n_broken": int(broken.sum()),
            "broken_by": counts,
        }

    def to_dict(self, per_point: bool = False) -> dict[str, Any]:
        """JSON-ready summary (``per_point=True`` adds the per-point arrays as lists)."""
        out: dict[str, Any] = {
            "kind": "robust_accuracy",
            "data": self.data_name,
            "n": self.n,
            "n_correct": self.n_correct,
            "n_skipped": self.n_skipped,
            "targeted": self.targeted,
            "independent": self.independent,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "attack_order": list(self.attack_names),
            "attacks": {k: s.to_dict() for k, s in self.attacks.items()},
            "worst_case": self.worst_case(),
            "passes": {"gradients": self.gradients_total, "queries": self.queries_total},
            "wall_time_s": self.wall_time_s,
            "batch_size": self.batch_size,
            "examples": None if self.examples is None else self.examples.to_dict(),
        }
        if per_point:
            out["per_point"] = {
                "index": self.index.tolist(),
                "y": self.y.tolist(),
                "target": None if self.target is None else self.target.tolist(),
                "clean_pred": self.clean_pred.tolist(),
                "broken_by": self.broken_by.tolist(),
                "adv_pred": self.adv_pred.tolist(),
                "norms": {
                    k: [None if math.isnan(v) else v for v in t.tolist()]
                    for k, t in self.norms.items()
                },
            }
        return out

    def table(self) -> str:
        """A plain-text table (see :func:`advex.report.format_table`)."""
        from ..report.table import format_table

        return format_table(self)

    def __repr__(self) -> str:
        return (
            f"EvaluationResult(n={self.n}, clean_accuracy={self.clean_accuracy:.4f}, "
            f"robust_accuracy={self.robust_accuracy:.4f}, attacks={self.attack_names})"
        )


def _frac(a: int, b: int) -> float:
    return a / b if b else float("nan")


def robust_accuracy(
    model: nn.Module,
    data: Any,
    attacks: Any,
    *,
    batch_size: int = 256,
    target: Any = None,
    device: Any = None,
    progress: bool | StageProgress = False,
    keep_examples: int = 8,
    independent: bool = False,
    keep_results: bool = True,
) -> EvaluationResult:
    """Clean accuracy, per-attack and worst-case robust accuracy of ``model`` on ``data``.

    The attacks run in the given order, batch by batch; each one only sees the points that are
    still robust (correctly classified and not broken by an earlier attack), so the cost of the
    later, usually stronger and slower attacks falls on few points. A point is robust if it
    survives every attack: the per-point worst case, which is never above any single attack's
    robust accuracy. Points the model misclassifies are never attacked.

    Args:
        model: a classifier returning logits (put in eval mode with frozen weights meanwhile,
            then restored; never modified).
        data: ``(x, y)`` tensors, an ``advex.data.ArrayDataset``, a torch ``Dataset`` or a
            ``DataLoader`` yielding ``(x, y)`` (used with its own batching).
        attacks: one :class:`~advex.attacks.Attack`, a list, or a dict ``name -> attack``
            (the order is the running order: put cheap attacks first).
        batch_size: batch size for tensors and datasets.
        target: None (untargeted), a class index for every point, a tensor of targets in data
            order, or a callable ``y -> targets``. Points whose target equals their label are
            skipped (counted in ``n_skipped``). Targeted, "broken" means "classified as the
            target", and robust accuracy is the share of points correct and never pushed there.
        device: where to run (default: the device of the model's weights).
        progress: show a progress bar on stderr that advances per attack of every batch and
            counts the model's forward passes while an attack runs; or a
            :class:`~advex.evaluate.progress.StageProgress` to advance (not closed here).
        keep_examples: how many (x, x_adv) pairs to keep for figures (worst case and per
            attack).
        independent: also run every attack on every correctly classified point, to report each
            attack's own robust accuracy (``AttackStats.robust_accuracy_alone``); costs more.
        keep_results: keep each attack's concatenated ``AttackResult`` (holds ``x_adv``).

    Returns:
        :class:`EvaluationResult` (``.to_dict()`` is JSON-ready).

    >>> res = robust_accuracy(model, (x, y), [FGSM(eps=0.3), PGD(eps=0.3)])
    >>> res.clean_accuracy, res.robust_accuracy, res.attacks["pgd"].success_rate
    """
    named = named_attacks(attacks)
    check_target_spec(target)
    if target is None:
        needs = [n for n, a in named.items() if getattr(a, "targeted_only", False)]
        if needs:
            raise ValueError(f"attack(s) {needs} can only run targeted: pass target=")
    if isinstance(keep_examples, bool) or int(keep_examples) < 0:
        raise ValueError(f"keep_examples must be >= 0, got {keep_examples}")
    batches = as_batches(data, batch_size)
    dev = model_device(model, device)
    names = list(named)
    t_start = time.perf_counter()

    times = dict.fromkeys(names, 0.0)
    results: dict[str, list[AttackResult]] = {n: [] for n in names}
    attacked_index: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    keep_worst = ExampleKeeper(keep_examples)
    keep_each = {n: ExampleKeeper(keep_examples) for n in names}
    n_robust = 0
    threats = [a.threat for a in named.values()]
    loop = BatchLoop(
        model,
        batches,
        threats,
        target=target,
        device=dev,
        progress=progress,
        desc="robust accuracy",
        stages=len(names),
    )
    with loop:
        for batch in loop:
            b = len(batch)
            xb, yb, tb, gidx = batch.x, batch.y, batch.target, batch.index
            cconf, cpred = batch.logits.float().softmax(1).max(1)
            correct = cpred == yb
            broken_by = torch.full((b,), -1, dtype=torch.long, device=dev)
            adv_pred, adv_conf = cpred.clone(), cconf.clone()
            for k, name in enumerate(names):
                succ = torch.zeros(b, dtype=torch.bool, device=dev)
                norms = torch.full((b,), float("nan"), device=dev)
                attacked = torch.zeros(b, dtype=torch.bool, device=dev)
                grads = torch.zeros(b, dtype=torch.long, device=dev)
                qs = torch.zeros(b, dtype=torch.long, device=dev)
                pool_mask = correct if independent else correct & (broken_by < 0)
                pool = pool_mask.nonzero().squeeze(1)
                if pool.numel():
                    with loop.stage(name):
                        res, seconds = attack_points(named[name], loop.model, batch, pool)
                    times[name] += seconds
                    attacked[pool] = True
                    s = res.success.to(dev)
                    succ[pool] = s
                    norms[pool[s]] = res.norms.to(dev)[s].float()
                    grads[pool] = res.gradients.to(dev)
                    qs[pool] = res.queries.to(dev)
                    newly = pool[s & (broken_by[pool] < 0)]
                    if newly.numel():
                        broken_by[newly] = k
                        pos = s & (broken_by[pool] == k)
                        adv_pred[newly] = res.adv_pred.to(dev)[pos]
                        adv_conf[newly] = res.adv_conf.to(dev)[pos]
                    if keep_results:
                        results[name].append(res.cpu())
                        attacked_index[name].append(gidx[pool.cpu()])
                    example = dict(
                        x=xb[pool],
                        x_adv=res.x_adv,
                        y=res.y,
                        target=res.target,
                        clean_pred=res.clean_pred,
                        clean_conf=res.clean_conf,
                        adv_pred=res.adv_pred,
                        adv_conf=res.adv_conf,
                        norms=res.norms,
                        attack=[name] * int(pool.numel()),
                        index=gidx[pool.cpu()],
                    )
                    keep_each[name].add(res.success, **example)
                    # worst-case examples: the adversarial that first broke each point;
                    # points that survive every attack come with the last attack's attempt
                    first = s & (broken_by[pool] == k)
                    cand = first
                    if k == len(names) - 1:
                        cand = first | (broken_by[pool] < 0)
                    keep_worst.add(first, select=cand, **example)
                loop.record(
                    **{
                        f"success/{name}": succ,
                        f"norms/{name}": norms,
                        f"attacked/{name}": attacked,
                        f"grad/{name}": grads,
                        f"q/{name}": qs,
                    }
                )
            loop.record(
                index=gidx,
                y=yb,
                target=tb,
                clean_pred=cpred,
                clean_conf=cconf,
                broken_by=broken_by,
                adv_pred=adv_pred,
                adv_conf=adv_conf,
            )
            n_robust += int((correct & (broken_by < 0)).sum())
            n_seen = loop.n_seen + b
            loop.tick(robust=f"{n_robust / n_seen:.1%}", n=n_seen)
    loop.check_not_empty()
    n_skipped = loop.n_skipped

    cat = {
        k: loop.column(k)
        for k in ("index", "y", "clean_pred", "clean_conf", "broken_by", "adv_pred", "adv_conf")
    }
    tgt = None if target is None else loop.column("target")
    pa = {
        k: {n: loop.column(f"{k}/{n}") for n in names}
        for k in ("success", "norms", "attacked", "grad", "q")
    }
    correct_all = cat["clean_pred"] == cat["y"]
    n = int(cat["y"].shape[0])

    stats: dict[str, AttackStats] = {}
    for k, name in enumerate(names):
        atk = named[name]
        succ, attacked = pa["success"][name], pa["attacked"][name]
        norms = pa["norms"][name][succ]
        n_att = int(attacked.sum())
        broken_upto = (cat["broken_by"] >= 0) & (cat["broken_by"] <= k)
        params = atk.params() if hasattr(atk, "params") else {}
        stats[name] = AttackStats(
            name=name,
            attack=type(atk).__name__,
            params=params,
            threat=atk.threat.to_dict(),
            targeted=target is not None,
            n_attacked=n_att,
            n_success=int(succ.sum()),
            n_broken_first=int((cat["broken_by"] == k).sum()),
            success_rate=_frac(int(succ.sum()), n_att),
            robust_accuracy_cumulative=_frac(int((correct_all & ~broken_upto).sum()), n),
            robust_accuracy_alone=(
                _frac(int((correct_all & ~succ).sum()), n) if independent else None
            ),
            norm_mean=float(norms.mean()) if norms.numel() else None,
            norm_median=float(norms.median()) if norms.numel() else None,
            norm_max=float(norms.max()) if norms.numel() else None,
            gradients_total=int(pa["grad"][name].sum()),
            queries_total=int(pa["q"][name].sum()),
            gradients_per_point=_frac(int(pa["grad"][name].sum()), n_att),
            queries_per_point=_frac(int(pa["q"][name].sum()), n_att),
            time_s=times[name],
        )

    meta = _example_meta(named, batches.class_names)
    ex_each = {}
    for name in names:
        built = keep_each[name].build(**meta[name])
        if built is not None:
            ex_each[name] = built
    worst_meta = dict(meta[names[0]])
    worst_meta["eps"] = _common(named, "eps")
    worst_meta["norm"] = _common(named, "norm") or worst_meta["norm"]
    return EvaluationResult(
        attack_names=names,
        independent=bool(independent),
        targeted=target is not None,
        n=n,
        n_skipped=n_skipped,
        index=cat["index"],
        y=cat["y"],
        target=tgt,
        clean_pred=cat["clean_pred"],
        clean_conf=cat["clean_conf"],
        broken_by=cat["broken_by"],
        adv_pred=cat["adv_pred"],
        adv_conf=cat["adv_conf"],
        success=pa["success"],
        norms=pa["norms"],
        attacked=pa["attacked"],
        gradients=pa["grad"],
        queries=pa["q"],
        attacks=stats,
        wall_time_s=time.perf_counter() - t_start,
        batch_size=batches.batch_size,
        data_name=batches.name,
        class_names=batches.class_names,
        examples=keep_worst.build(**worst_meta),
        attack_examples=ex_each,
        results={k: AttackResult.cat(v) for k, v in results.items() if v},
        attacked_index={k: torch.cat(v) for k, v in attacked_index.items() if v},
    )


def _common(named: dict[str, Attack], key: str):
    vals = {getattr(a.threat, key) for a in named.values()}
    return vals.pop() if len(vals) == 1 else None


def _example_meta(named: dict[str, Attack], class_names) -> dict[str, dict]:
    return {
        name: {
            "norm": a.threat.norm,
            "eps": a.threat.eps,
            "bounds": tuple(a.threat.bounds),
            "class_names": class_names,
        }
        for name, a in named.items()
    }

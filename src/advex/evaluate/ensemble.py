"""``evaluate()``: a robustness evaluation you can trust, in one call.

An ensemble of attacks (a preset: AutoAttack's standard protocol by default) runs batch by batch,
each attack only on the points still robust, giving the per-point worst case; the gradient-
masking checks run on a probe subset and give a verdict; defended models that declare
non-differentiable or random input transforms are attacked through BPDA / EOT automatically;
with ``out_dir`` every finished batch is on disk, so an interrupted run resumes where it stopped
and ends with the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._stats import clopper_pearson
from ..core.validate import check_batch
from ..distributed import broadcast_object, is_distributed
from ..distributed import rank as dist_rank
from ..models.counting import BACKWARD_COST, counting_stage
from ..models.guards import match_input_dtype
from ..models.layout import fast_layout
from ..report.table import verdict_text
from ..threats import ThreatModel
from ..training import check_amp
from ._data import as_batches, model_device
from .amp import AmpSpec, amp_counts, resolve_amp, wrap_amp_stages
from .capabilities import access_record, black_box_preset, check_capability, probe_access
from .checks import Check, masking_checks, verdict
from .examples import Examples
from .presets import Preset, derive_seed, get_preset
from .progress import StageProgress
from .robust import robust_accuracy
from .schedule import share_ledger
from .state import RunState, batch_record, model_hash, refuse_rank_states, tensor_hash

__all__ = ["evaluate", "EvaluateOptions", "Evaluation", "StageResult", "clopper_pearson"]

#: keys holding timings or dates: they differ between two runs with identical results
TIMING_KEYS = (
    "time_s",
    "wall_time_s",
    "checks_time_s",
    "date",
    "resumed_batches",
    "distributed",  # a sharded run's ranks, their times and what they resumed
)


@dataclass
class StageResult:
    """One attack of the ensemble: robust accuracy after it (cumulative worst case), the points
    it broke first, the points it was run on, and what it cost."""

    name: str
    attack: str
    params: dict[str, Any]
    black_box: bool
    robust_accuracy: float
    n_attacked: int
    n_broken: int
    gradients: int
    queries: int
    time_s: float
    #: the stage ran under autocast in this precision (``"bf16"`` / ``"fp16"``; None: fp32);
    #: its claimed breaks re-checked in fp32 and those fp32 refused (:mod:`.amp`)
    amp: str | None = None
    amp_rechecks: int = 0
    amp_reversed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if self.amp is None:  # an fp32 stage: the same keys as before amp existed
            for k in ("amp", "amp_rechecks", "amp_reversed"):
                d.pop(k)
        return d


@dataclass
class Evaluation:
    """Result of :func:`evaluate`. Accuracies are fractions in [0, 1].

    ``robust_accuracy_ci`` is the 95% Clopper-Pearson (exact binomial) interval of the robust
    count over ``n`` points. ``per_attack`` lists the stages in running order, each with the
    robust accuracy after it. ``verdict`` is ``"PASS"`` when no masking check fired, else
    ``"SUSPECT"`` (``"UNCHECKED"`` when the checks were disabled); ``checks`` holds each
    check with its evidence and recommendation.
    ``adaptations`` says whether BPDA / EOT were applied. Per point (data order): ``y``,
    ``clean_pred``, ``broken_by`` (stage index, -1 if none), ``adv_pred`` and ``norms`` (the
    worst-case adversarial's distance in the threat norm, NaN when not broken).
    """

    clean_accuracy: float
    robust_accuracy: float
    robust_accuracy_ci: tuple[float, float]
    n: int
    n_correct: int
    n_robust: int
    per_attack: list[StageResult]
    verdict: str
    checks: list[Check]
    threat: dict[str, Any]
    preset: dict[str, Any]
    adaptations: dict[str, Any]
    seed: int
    wall_time_s: float
    checks_time_s: float
    y: torch.Tensor
    clean_pred: torch.Tensor
    broken_by: torch.Tensor
    adv_pred: torch.Tensor
    norms: torch.Tensor
    curve: dict[str, Any] | None = None
    examples: Examples | None = None
    data_name: str | None = None
    class_names: list[str] | None = None
    resumed_batches: int = 0
    ci_method: str = "clopper-pearson 95%"
    meta: dict[str, Any] = field(default_factory=dict)
    #: what the model exposes (``exposes``: gradients / scores / labels, ``reason``) and, for
    #: a black-box-only evaluation, the ``note`` that the number is an upper bound
    access: dict[str, Any] = field(default_factory=dict)
    #: model rows spent by the capability probe before the attacks (``forward``/``backward``)
    probe_passes: dict[str, int] = field(default_factory=dict)
    #: a sharded run (torchrun): world size, per rank the batches computed, busy and idle
    #: seconds, what was resumed (:mod:`advex.evaluate.sharded`); None in one process
    distributed: dict[str, Any] | None = None
    #: per decision-based stage: median distance (and share within ε) vs queries per point
    #: (:func:`advex.attacks.decision.summarise_curve`); drawn in the HTML report
    query_curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``evaluate(amp=...)``: the precision (``dtype``), ``device_type``, the low-precision
    #: ``stages`` and over them the breaks ``rechecks`` in fp32 and ``reversed`` (not counted
    #: broken); None for an fp32 run (:mod:`advex.evaluate.amp`)
    amp: dict[str, Any] | None = None

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.per_attack]

    @property
    def gradients_total(self) -> int:
        """Backward rows of the attacks plus those of the capability probe."""
        return sum(s.gradients for s in self.per_attack) + self.probe_passes.get("backward", 0)

    @property
    def queries_total(self) -> int:
        """Forward passes of the attacks (gradient passes included), one clean pass per point
        and the capability probe's forward rows."""
        attacks = sum(s.queries for s in self.per_attack)
        return attacks + self.n + self.probe_passes.get("forward", 0)

    def weighted_passes(self, backward_cost: float = BACKWARD_COST) -> float:
        """The cost in forward-pass units: ``queries_total`` (every forward row, the clean pass
        included) plus ``backward_cost`` per backward row (``gradients_total``); the cost unit
        is documented in :mod:`advex.models.counting`. Equal to what a
        :class:`~advex.models.PassCounter` around the model counts (``checks=False``)."""
        return self.queries_total + float(backward_cost) * self.gradients_total

    @property
    def broken_only_by_black_box(self) -> int:
        black = [j for j, s in enumerate(self.per_attack) if s.black_box]
        return int(sum(int((self.broken_by == j).sum()) for j in black))

    def to_dict(self, per_point: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "evaluation",
            "data": self.data_name,
            "n": self.n,
            "n_correct": self.n_correct,
            "n_robust": self.n_robust,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_ci": list(self.robust_accuracy_ci),
            "ci_method": self.ci_method,
            "verdict": self.verdict,
            "threat": self.threat,
            "preset": self.preset,
            "adaptations": self.adaptations,
            "seed": self.seed,
            "per_attack": [s.to_dict() for s in self.per_attack],
            "passes": {
                "gradients": self.gradients_total,
                "queries": self.queries_total,
                "backward_cost": BACKWARD_COST,
                "weighted": self.weighted_passes(),
                "probe": dict(self.probe_passes),
            },
            "broken_only_by_black_box": self.broken_only_by_black_box,
            "checks": [c.to_dict() for c in self.checks],
            "curve": self.curve,
            "wall_time_s": self.wall_time_s,
            "checks_time_s": self.checks_time_s,
            "resumed_batches": self.resumed_batches,
            "examples": None if self.examples is None else self.examples.to_dict(),
            "access": self.access,
        }
        if self.distributed is not None:
            out["distributed"] = self.distributed
        if self.query_curves:
            out["query_curves"] = self.query_curves
        if self.amp is not None:
            out["amp"] = self.amp
        if per_point:
            out["per_point"] = {
                "y": self.y.tolist(),
                "clean_pred": self.clean_pred.tolist(),
                "broken_by": self.broken_by.tolist(),
                "adv_pred": self.adv_pred.tolist(),
                "norm": [None if math.isnan(v) else v for v in self.norms.tolist()],
            }
        return out

    def to_json(self, path: str | Path | None = None, **meta: Any) -> str:
        """The JSON document (with a ``meta`` block); written to ``path`` when given."""
        import json

        from ..report.jsonio import jsonable, metadata, to_json

        if path is not None:
            doc = to_json(
                self.to_dict(), path, seed=self.seed, threat=self.threat, meta=meta or None
            )
            return json.dumps(doc, indent=2, allow_nan=False)
        doc = {"meta": metadata(seed=self.seed, threat=self.threat)}
        doc["meta"].update(jsonable(meta))
        doc.update(jsonable(self.to_dict()))
        return json.dumps(doc, indent=2, allow_nan=False)

    def save_html(self, path: str | Path, **kwargs: Any) -> Path:
        """A self-contained HTML report (see :func:`advex.report.save_html`)."""
        from ..report.html import save_html

        return save_html(self, path, **kwargs)

    def summary(self) -> str:
        lo, hi = self.robust_accuracy_ci
        lines = [
            f"clean accuracy  {self.clean_accuracy:7.2%}   (n = {self.n})",
            f"robust accuracy {self.robust_accuracy:7.2%}   95% CI [{lo:.2%}, {hi:.2%}]",
            f"verdict         {verdict_text(self.verdict)}",
            *([f"                {self.access['note']}"] if self.access.get("note") else []),
            "",
            f"{'stage':<12}{'robust after':>13}{'broke':>7}{'attacked':>10}"
            f"{'grads':>10}{'queries':>10}{'time':>9}",
        ]
        for s in self.per_attack:
            lines.append(
                f"{s.name:<12}{s.robust_accuracy:>13.2%}{s.n_broken:>7}{s.n_attacked:>10}"
                f"{s.gradients:>10}{s.queries:>10}{s.time_s:>8.1f}s"
            )
        if self.amp is not None:
            a = self.amp
            lines.append(
                f"amp: {', '.join(a['stages'])} ran in {a['dtype']} autocast; "
                f"{a['rechecks']} claimed break(s) re-checked in fp32, {a['reversed']} reversed "
                "(not counted broken)"
            )
        for c in self.checks:
            if not c.passed:
                lines.append(f"SUSPECT {c.name}: {c.evidence} -> {c.recommendation}")
        if self.adaptations.get("applied"):
            lines.append(f"adaptations: {self.adaptations['description']}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Evaluation(n={self.n}, clean_accuracy={self.clean_accuracy:.4f}, "
            f"robust_accuracy={self.robust_accuracy:.4f}, verdict={self.verdict!r}, "
            f"stages={self.stage_names})"
        )


@dataclass(frozen=True)
class EvaluateOptions:
    """How :func:`evaluate` runs (not what it measures): batching, the resumable state, checks,
    adaptations, examples kept, device and display. Pass one as ``options=``, or give any field
    as a keyword argument of :func:`evaluate` (which overrides the same field of ``options``).

    Args:
        batch_size: points per batch (for tensors and datasets; a DataLoader keeps its own).
        out_dir: write the run state here as it goes (resumable; see :mod:`.state`).
        restart: discard a state in ``out_dir`` that belongs to a different run (or is
            unreadable).
        checks: run the gradient-masking checks on the first ``probe`` points.
        probe: points used by the masking checks.
        adapt: attack models declaring non-differentiable / random transforms through BPDA /
            EOT (``eot_samples`` draws), see :func:`advex.models.adapt.adapt_for_attack`.
        eot_samples: EOT draws for models declaring random transforms.
        keep_examples: (x, x_adv) pairs kept for the report's triptychs.
        device: where to run (default: the device of the model's weights).
        progress: a progress bar on stderr advancing per attack stage of every batch, with the
            model's forward passes counted within a stage.
        channels_last: attack a private copy of the model converted to the channels-last
            memory format (``None``: automatically for models with ``Conv2d`` layers on the CPU,
            where it makes forward passes up to 2× faster; ``False``: never). The caller's
            model is never converted; the copy costs its memory once.
        rebalance: under a torchrun process group (:mod:`advex.evaluate.sharded`), re-split
            the batches' expensive stages across the ranks after the first stage, by the
            points still robust (``False``: each rank runs whole batches of its block).
        amp: ``"bf16"`` or ``"fp16"``: run the first (cheap) stage under ``torch.autocast``
            on the evaluation's device, every break it claims re-checked in fp32
            (:mod:`advex.evaluate.amp`); ``None``: fp32 throughout. Part of a resumable
            run's fingerprint.

    >>> opts = EvaluateOptions(batch_size=500, out_dir="run/", progress=True)
    >>> ev = evaluate(model, (x, y), eps=0.3, options=opts)
    """

    batch_size: int = 100
    out_dir: str | Path | None = None
    restart: bool = False
    checks: bool = True
    probe: int = 200
    adapt: bool = True
    eot_samples: int = 16
    keep_examples: int = 8
    device: Any = None
    progress: bool = False
    channels_last: bool | None = None
    rebalance: bool = True
    amp: str | None = None


#: test hook: called with the number of batches computed so far after each computed batch (the
#: resume tests raise from it to simulate a run killed halfway); None in normal use
_after_batch_hook: Callable[[int], None] | None = None


def _resolve_threat(threat, eps, norm, bounds, preset: Preset) -> ThreatModel:
    if threat is not None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        if eps is not None:
            raise ValueError("give either threat= or eps=/norm=, not both")
        t = threat
    elif eps is not None:
        t = ThreatModel(norm=norm, eps=float(eps), bounds=bounds)
    else:
        inst = [s.instance for s in preset.stages if s.instance is not None]
        if not inst:
            raise ValueError("evaluate needs a budget: pass eps= (and norm=) or threat=")
        t = inst[0].threat
    if t.eps is None or not (t.eps >= 0 and math.isfinite(t.eps)):
        raise ValueError(f"evaluate needs a finite budget eps >= 0, got {t.eps}")
    for s in preset.stages:
        other = getattr(s.instance, "threat", None)
        if other is not None and (other.norm != t.norm or other.eps != t.eps):
            raise ValueError(
                f"attack {s.name!r} has threat {other.norm} eps={other.eps} but the evaluation "
                f"is {t.norm} eps={t.eps}: give every attack the evaluation's budget"
            )
    return t


def _adapt(model, adapt: bool, eot_samples: int):
    """The model the attacks see, and what was done to it."""
    info: dict[str, Any] = {
        "applied": False,
        "bpda": [],
        "stochastic": False,
        "eot_samples": 1,
        "description": "none: the model declares no non-differentiable or random transform",
    }
    if not isinstance(model, nn.Module):
        return model, info
    from ..models.adapt import adapt_for_attack, is_stochastic, non_differentiable

    nondiff, random = non_differentiable(model), is_stochastic(model)
    info["stochastic"] = bool(random)
    if not (nondiff or random):
        return model, info
    if not adapt:
        info["description"] = (
            f"none (adapt=False) although the model declares non-differentiable {nondiff} "
            f"/ random={random} transforms"
        )
        return model, info
    view = adapt_for_attack(model, eot_samples=eot_samples)
    parts = []
    if view.wrapped:
        parts.append(f"BPDA on {', '.join(repr(w) for w in view.wrapped)}")
    if view.stochastic:
        parts.append(f"EOT over {view.eot_samples} draws")
    info.update(
        applied=True,
        bpda=list(view.wrapped),
        eot_samples=int(view.eot_samples),
        description="; ".join(parts),
    )
    return view, info


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def evaluate(
    model: nn.Module,
    data: Any,
    threat: ThreatModel | None = None,
    *,
    eps: float | None = None,
    norm: str = "linf",
    preset: Any = "standard",
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
    options: EvaluateOptions | None = None,
    **run_options: Any,
) -> Evaluation:
    """Robust accuracy under an ensemble of attacks, with a gradient-masking verdict.

    Args:
        model: classifier returning logits (never modified; eval mode meanwhile).
        data: ``(x, y)`` tensors, an ``advex.data`` dataset, a torch Dataset or a DataLoader.
        threat: a :class:`~advex.threats.ThreatModel`, or give ``eps`` (and ``norm``:
            ``"linf"`` | ``"l2"`` | ``"l1"``; ``bounds``, default the data's or (0, 1)).
        preset: ``"quick"``, ``"standard"`` (AutoAttack's standard attacks, passes scheduled
            per point: APGD-CE, APGD-T against the classes that came closest, further targets
            (up to 9), FAB-T and Square's 5,000 queries only for the points still close to
            breaking; rule in :mod:`advex.evaluate.schedule`),
            ``"autoattack"`` (AutoAttack's standard budgets throughout), ``"thorough"``, a
            :class:`~advex.evaluate.presets.Preset` (``PRESETS["standard"].scaled(0.1)`` for a
            cheaper run), or a list / dict of attacks run in that order.
        seed: every attack's seed derives from ``(seed, stage)``; the attacks draw per point, so
            a point's result does not depend on its batch (or ``batch_size``).
        options: how to run (:class:`EvaluateOptions`: batch size, resumable ``out_dir``,
            ``restart``, ``checks``/``probe``, ``adapt``/``eot_samples``, ``keep_examples``,
            ``device``, ``progress``, ``channels_last``, ``rebalance``, ``amp``: the first
            stage under bf16/fp16 autocast, its breaks re-checked in fp32).
        **run_options: any field of :class:`EvaluateOptions` given directly
            (``batch_size=500, out_dir="run/"``); it overrides the same field of ``options``.

    Returns:
        :class:`Evaluation`.

    >>> ev = evaluate(model, (x, y), eps=0.3, preset="standard", batch_size=500)
    >>> ev.robust_accuracy, ev.verdict, ev.to_json("results.json")
    """
    opts = _options(options, run_options)
    batch_size, out_dir, restart = opts.batch_size, opts.out_dir, opts.restart
    checks, probe, adapt, eot_samples = opts.checks, opts.probe, opts.adapt, opts.eot_samples
    keep_examples, device, progress = opts.keep_examples, opts.device, opts.progress
    channels_last = opts.channels_last
    amp_key = check_amp(opts.amp)  # a clear ValueError for an unknown precision, before work
    t_start = time.perf_counter()
    spec = get_preset(preset)
    if bounds is None:
        bounds = getattr(as_batches(data, 1), "bounds", None) or (0.0, 1.0)
    thr = _resolve_threat(threat, eps, norm, tuple(bounds), spec)
    stages = spec.for_norm(thr.norm)
    seed = _check_int("seed", seed, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    probe = _check_int("probe", probe, 1)
    eot_samples = _check_int("eot_samples", eot_samples, 1)
    keep_examples = _check_int("keep_examples", keep_examples, 0)
    batches = as_batches(data, batch_size)
    if isinstance(batches.source, tuple):  # data given whole: check it all before any work
        check_batch(*batches.source, thr, name="data x")
    dev = model_device(model, device)
    amp = resolve_amp(amp_key, dev)
    view, adaptations = _adapt(model, adapt, eot_samples)
    view, layout = fast_layout(view, channels_last, dev)
    # what the model exposes (gradients / scores / labels), before any attack runs: a model
    # without usable gradients gets the black-box stages instead of an autograd error later
    with counting_stage(view, "probe"):
        access = probe_access(view, batches, dev)
    if access is not None and access.black_box:
        spec = black_box_preset(spec, access, thr.norm)
        stages = spec.for_norm(thr.norm)

    state = None
    sharded = is_distributed()  # a torchrun process group: advex.evaluate.sharded
    if out_dir is not None or sharded:
        from ..report.jsonio import advex_version, jsonable

        data_fp: dict[str, Any] = {"n": batches.n, "batch_size": batches.batch_size}
        if isinstance(batches.source, tuple):
            data_fp["hash"] = tensor_hash(*batches.source)
        fingerprint = jsonable(
            {
                "advex_version": advex_version(),
                "model": model_hash(model),
                "data": data_fp,
                "threat": thr.to_dict(),
                "preset": spec.describe(thr.norm),
                "seed": seed,
                "checks": {"enabled": bool(checks), "probe": probe},
                "adapt": {"enabled": bool(adapt), "eot_samples": eot_samples},
                "keep_examples": keep_examples,
                "layout": layout,
                # only when set: the fingerprint of an fp32 run is what it was before amp
                **({"amp": amp_key} if amp_key is not None else {}),
            }
        )
        if out_dir is not None and not sharded:
            refuse_rank_states(out_dir, restart=bool(restart))
            state = RunState(out_dir, fingerprint, restart=bool(restart))

    records: list[dict[str, Any]] = []
    ex_parts: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] = []
    probe_x: list[torch.Tensor] = []
    probe_y: list[torch.Tensor] = []
    n_probe = 0
    resumed = 0
    computed = 0
    dist_info = None
    if sharded:
        from .sharded import run_sharded

        outcome = run_sharded(
            view,
            batches,
            spec=spec,
            thr=thr,
            seed=seed,
            stages=stages,
            adaptations=adaptations,
            dev=dev,
            keep=keep_examples,
            fingerprint=fingerprint,
            out_dir=out_dir,
            restart=bool(restart),
            checks=bool(checks),
            probe=probe,
            rebalance=opts.rebalance,
            run_batch=lambda v, xb, yb, k, off: _run_batch(
                v, xb, yb, k, off, spec, thr, seed, stages, adaptations, dev, keep_examples, amp=amp
            ),
            amp=amp,
        )
        records, ex_parts = outcome.records, outcome.ex_parts
        probe_x, probe_y, resumed = outcome.probe_x, outcome.probe_y, outcome.resumed
        n_probe = sum(int(t.shape[0]) for t in probe_x)
        state, dist_info = outcome.state, outcome.info
        view = match_input_dtype(view, _first_x(batches))
    else:
        bar = StageProgress(batches.total, len(stages), "evaluate") if progress else None
        offset = 0
        try:
            for k, (xb, yb) in enumerate(batches):
                b = int(xb.shape[0])
                if k == 0:  # data in another dtype than the model's: cast for attacks and checks
                    view = match_input_dtype(view, xb)
                if checks and n_probe < probe:
                    take = min(probe - n_probe, b)
                    probe_x.append(xb[:take])
                    probe_y.append(yb[:take])
                    n_probe += take
                bhash = tensor_hash(xb, yb)
                loaded = state.load_batch(k) if state is not None else None
                if loaded is not None:
                    record, tensors = loaded
                    if record.get("hash") != bhash or record.get("offset") != offset:
                        raise ValueError(
                            f"batch {k} of the data differs from the one recorded in {state.dir}: "
                            "the data changed since the interrupted run; use restart=True"
                        )
                    resumed += 1
                else:
                    record, tensors = _run_batch(
                        view,
                        xb,
                        yb,
                        k,
                        offset,
                        spec,
                        thr,
                        seed,
                        stages,
                        adaptations,
                        dev,
                        keep_examples,
                        bar=bar,
                        amp=amp,
                    )
                    record["hash"] = bhash
                    if state is not None:
                        state.save_batch(k, record, tensors)
                    computed += 1
                records.append(record)
                if tensors:
                    ex_parts.append((record, tensors))
                offset += b
                if bar is not None:
                    if loaded is not None:
                        bar.skip(len(stages))
                    bar.set_info(n=offset, robust=f"{_robust_count(records) / offset:.1%}")
                if _after_batch_hook is not None and loaded is None:
                    _after_batch_hook(computed)
        finally:
            if bar is not None:
                bar.close()
    if not records:
        raise ValueError("data is empty: nothing to evaluate")

    cat = _concat(records)
    n = int(cat["y"].numel())
    correct = cat["clean_pred"] == cat["y"]
    robust = correct & (cat["broken_by"] < 0)
    n_correct, n_robust = int(correct.sum()), int(robust.sum())
    per_attack = []
    for j, s in enumerate(stages):
        broken_upto = (cat["broken_by"] >= 0) & (cat["broken_by"] <= j)
        st = [r["stages"][s.name] for r in records]
        desc = s.describe(spec.budget_scale)
        per_attack.append(
            StageResult(
                name=s.name,
                attack=str(desc["attack"]),
                params=desc["params"],
                black_box=bool(s.black_box),
                robust_accuracy=int((correct & ~broken_upto).sum()) / n,
                n_attacked=sum(v["attacked"] for v in st),
                n_broken=int((cat["broken_by"] == j).sum()),
                gradients=sum(v["gradients"] for v in st),
                queries=sum(v["queries"] for v in st),
                time_s=sum(v["time_s"] for v in st),
                **_stage_amp(st),
            )
        )

    check_list: list[Check] = []
    curve = None
    t_checks = time.perf_counter()
    if checks and access is not None and access.black_box:
        check_list = [check_capability(access)]
    elif checks and sharded and dist_rank() != 0:
        check_list = broadcast_object(None)  # rank 0 runs the checks once for every rank
        curve = _curve_from_checks(check_list, thr, n_probe)
    elif checks:
        black = [j for j, s in enumerate(stages) if s.black_box]
        n_black = int(sum(int((cat["broken_by"] == j).sum()) for j in black))
        cached = state.load_json("checks.json") if state is not None else None
        if cached is not None:
            check_list = [Check(**c) for c in cached]
        else:
            xp = torch.cat(probe_x).to(dev)
            yp = torch.cat(probe_y).to(device=dev, dtype=torch.long)
            check_list = masking_checks(
                view,
                xp,
                yp,
                thr,
                seed=seed,
                max_points=probe,
                broken_by_black_box=n_black if black else None,
                n_evaluated=n,
                eot_samples=int(adaptations["eot_samples"]),
            )
            check_list = _account_for_adaptations(check_list, adaptations)
            if state is not None:
                from ..report.jsonio import jsonable

                state.save_json("checks.json", jsonable([c.to_dict() for c in check_list]))
        if sharded:
            check_list = broadcast_object(check_list)
        curve = _curve_from_checks(check_list, thr, n_probe)
    checks_time = time.perf_counter() - t_checks

    examples = _examples(ex_parts, keep_examples, thr, batches.class_names)
    return Evaluation(
        clean_accuracy=n_correct / n,
        robust_accuracy=n_robust / n,
        robust_accuracy_ci=clopper_pearson(n_robust, n),
        n=n,
        n_correct=n_correct,
        n_robust=n_robust,
        per_attack=per_attack,
        verdict="UPPER-BOUND"
        if access is not None and access.black_box
        else (verdict(check_list) if checks else "UNCHECKED"),
        checks=check_list,
        threat=thr.to_dict(),
        preset=spec.describe(thr.norm),
        adaptations=adaptations,
        seed=seed,
        wall_time_s=time.perf_counter() - t_start,
        checks_time_s=checks_time,
        y=cat["y"],
        clean_pred=cat["clean_pred"],
        broken_by=cat["broken_by"],
        adv_pred=cat["adv_pred"],
        norms=cat["norm"],
        curve=curve,
        examples=examples,
        data_name=batches.name,
        class_names=batches.class_names,
        resumed_batches=resumed,
        distributed=dist_info,
        access=access_record(access, [p.to_dict() for p in per_attack]),
        probe_passes=dict(access.passes) if access is not None else {},
        query_curves=_query_curves(records, thr.eps),
        amp=_amp_summary(amp, per_attack),
    )


def _stage_amp(st: list[dict[str, Any]]) -> dict[str, Any]:
    """A stage's amp fields summed over its batch records (empty for an fp32 stage)."""
    low = [v for v in st if v.get("amp")]
    if not low:
        return {}
    return {
        "amp": low[0]["amp"],
        "amp_rechecks": sum(int(v["amp_rechecks"]) for v in low),
        "amp_reversed": sum(int(v["amp_reversed"]) for v in low),
    }


def _amp_summary(amp: AmpSpec | None, per_attack: list[StageResult]) -> dict[str, Any] | None:
    if amp is None:
        return None
    low = [s for s in per_attack if s.amp is not None]
    return {
        "dtype": amp.name,
        "device_type": amp.device_type,
        "stages": [s.name for s in low],
        "rechecks": sum(s.amp_rechecks for s in low),
        "reversed": sum(s.amp_reversed for s in low),
        "verified_in": "fp32",
    }


def _options(options: EvaluateOptions | None, run_options: dict[str, Any]) -> EvaluateOptions:
    if options is None:
        options = EvaluateOptions()
    elif not isinstance(options, EvaluateOptions):
        raise TypeError(f"options must be an EvaluateOptions, got {type(options).__name__}")
    unknown = sorted(set(run_options) - set(EvaluateOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(
            f"evaluate() got unexpected keyword argument(s) {', '.join(unknown)}; valid: eps, "
            "norm, preset, bounds, seed, options, "
            + ", ".join(EvaluateOptions.__dataclass_fields__)
        )
    return dataclasses.replace(options, **run_options) if run_options else options


def _first_x(batches) -> torch.Tensor:
    for xb, _ in batches:
        return xb
    raise ValueError("data is empty: nothing to evaluate")


def _robust_count(records) -> int:
    return sum(
        sum(
            1
            for p, t, bb in zip(r["clean_pred"], r["y"], r["broken_by"], strict=True)
            if p == t and bb < 0
        )
        for r in records
    )


def _run_batch(
    view, xb, yb, k, offset, spec, thr, seed, stages, adaptations, dev, keep, bar=None, amp=None
):
    attacks = {
        s.name: s.build(thr, derive_seed(seed, j), spec.budget_scale) for j, s in enumerate(stages)
    }
    share_ledger(attacks.values())  # what a stage learns per point, the later ones read
    curves = _attach_query_curves(attacks)
    for a in attacks.values():
        if adaptations["eot_samples"] > 1:
            a.eot_samples = int(adaptations["eot_samples"])
    attacks = wrap_amp_stages(attacks, amp)  # the cheap stage under autocast (amp only)
    res = robust_accuracy(
        view,
        (xb, yb),
        attacks,
        batch_size=max(1, int(xb.shape[0])),
        device=dev,
        keep_examples=keep,
        keep_results=False,
        progress=bar if bar is not None else False,
    )
    names = list(attacks)
    bb = res.broken_by
    worst = torch.full((len(bb),), float("nan"))
    for j, name in enumerate(names):
        sel = bb == j
        worst[sel] = res.norms[name][sel].float()
    record = batch_record(k, offset, res, worst, names)
    for name, counts in amp_counts(attacks).items():
        record["stages"][name].update(counts)
    if curves:
        record["query_curves"] = {
            name: {"queries": grid, "table": curve.table(grid)}
            for name, (curve, grid) in curves.items()
        }
    tensors: dict[str, torch.Tensor] = {}
    ex = res.examples
    if ex is not None and keep > 0:
        for f in ("x", "x_adv", "y", "clean_pred", "clean_conf", "adv_pred", "adv_conf"):
            tensors[f] = getattr(ex, f).detach().cpu()
        tensors["success"] = ex.success.cpu().to(torch.uint8)
        tensors["norms"] = ex.norms.detach().cpu().float()
        tensors["index"] = ex.index.cpu().long() + offset
        record["example_attacks"] = list(ex.attack)
    return record, tensors


def _attach_query_curves(attacks) -> dict[str, tuple[Any, list[int]]]:
    """A :class:`~advex.attacks.decision.QueryCurve` on every decision-based stage that has
    none (the report's queries-vs-distance figure), with the budgets it is read at."""
    from ..attacks.decision import DecisionAttack, QueryCurve

    out = {}
    for name, a in attacks.items():
        if isinstance(a, DecisionAttack):
            if a.curve is None:
                a.curve = QueryCurve()
            out[name] = (a.curve, QueryCurve.grid(a.max_queries))
    return out


def _query_curves(records, eps: float | None) -> dict[str, dict[str, Any]]:
    """Per decision-based stage, the curve over every batch's attacked points."""
    from ..attacks.decision import summarise_curve

    rows: dict[str, list] = {}
    grids: dict[str, list[int]] = {}
    for r in records:
        for name, c in (r.get("query_curves") or {}).items():
            grids[name] = c["queries"]
            rows.setdefault(name, []).extend(c["table"])
    return {name: summarise_curve(rows[name], grids[name], eps) for name in rows}


def _concat(records) -> dict[str, torch.Tensor]:
    out = {}
    for key, dtype in (
        ("y", torch.long),
        ("clean_pred", torch.long),
        ("broken_by", torch.long),
        ("adv_pred", torch.long),
        ("norm", torch.float32),
    ):
        vals = [v for r in records for v in r[key]]
        if dtype is torch.float32:
            vals = [float("nan") if v is None else v for v in vals]
        out[key] = torch.tensor(vals, dtype=dtype)
    return out


def _examples(parts, keep: int, thr: ThreatModel, class_names) -> Examples | None:
    """The first ``keep`` broken points across batches, then survivors."""
    if keep <= 0 or not parts:
        return None
    rows: dict[bool, list[tuple[dict, dict, int]]] = {True: [], False: []}
    for record, t in parts:
        for i in range(int(t["y"].shape[0])):
            rows[bool(t["success"][i])].append((record, t, i))
    chosen = (rows[True] + rows[False])[:keep]
    if not chosen:
        return None

    def col(name):
        return torch.stack([t[name][i] for _, t, i in chosen])

    return Examples(
        x=col("x"),
        x_adv=col("x_adv"),
        y=col("y"),
        target=None,
        clean_pred=col("clean_pred"),
        clean_conf=col("clean_conf"),
        adv_pred=col("adv_pred"),
        adv_conf=col("adv_conf"),
        success=col("success").bool(),
        norms=col("norms"),
        attack=[r["example_attacks"][i] for r, _, i in chosen],
        index=col("index"),
        norm=thr.norm,
        eps=thr.eps,
        bounds=tuple(thr.bounds),
        class_names=class_names,
    )


def _account_for_adaptations(checks: list[Check], adaptations: dict[str, Any]) -> list[Check]:
    """A random model attacked with EOT has had the randomness check's recommendation applied."""
    if not adaptations.get("applied") or adaptations.get("eot_samples", 1) <= 1:
        return checks
    out = []
    for c in checks:
        if c.name == "randomness" and not c.passed:
            c = Check(
                c.name,
                True,
                c.evidence + f"; handled: every attack used EOT over "
                f"{adaptations['eot_samples']} draws",
                "",
                dict(c.data, eot_applied=True),
            )
        out.append(c)
    return out


def _curve_from_checks(checks: list[Check], thr: ThreatModel, n_probe: int):
    for c in checks:
        if c.name == "accuracy_decreases_with_eps":
            by = c.data.get("robust_accuracy_by_eps") or {}
            pts = sorted((float(e), float(a)) for e, a in by.items())
            return {
                "attack": "PGD-20 (masking-check probe)",
                "n": n_probe,
                "norm": thr.norm,
                "eps": [e for e, _ in pts],
                "robust_accuracy": [a for _, a in pts],
            }
    return None

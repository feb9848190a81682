"""What the evaluation can see of a model, found before any attack runs, and the attacks that
fit it.

:func:`probe_capability` looks at a few points: a declared adapter (``exposes``, see
:func:`advex.models.capability`), a forward pass that carries no gradient graph (``torch.no_grad``,
``detach``, a numpy round trip inside ``forward``), gradients that are zero or not finite, and
outputs that are not scores (one-hot rows; one label per sample is refused with the wrapper to
use), and gradients that carry nothing: zero or not finite on every probe point, or a decoy
(the same gradient at two nearby points while the scores change otherwise). Those last are
routed like score-only models, with the evidence kept (the masking checks then name BPDA and
the black-box attacks). It answers ``"gradients"``, ``"scores"`` or ``"labels"`` with the
evidence. :func:`black_box_preset` turns a preset into
the stages that work at that level — score-based (Square) for scores, decision-based
(HopSkipJump, RayS) for labels — and :func:`check_capability` is the masking check that names
them when the gradients are unusable.

>>> cap = probe_capability(model, x[:8], y[:8])
>>> cap.exposes, cap.reason          # ("labels", "outputs are one-hot rows: labels only")
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.goals import Goal
from ..core.losses import margin
from ..models import capability as declared_capability
from ..models.guards import attack_mode
from .checks import Check
from .presets import Preset, Stage

__all__ = [
    "Capability",
    "access_record",
    "probe_access",
    "DECISION_QUERIES",
    "SCORE_QUERIES",
    "black_box_preset",
    "check_capability",
    "probe_capability",
]

#: query budget per point of the decision-based stages (HopSkipJump / RayS)
DECISION_QUERIES = 10_000
#: query budget per point of the Square stage added for a score-only model
SCORE_QUERIES = 5_000


@dataclass
class Capability:
    """What a model exposes to an attack, and why we think so."""

    exposes: str  # "gradients" | "scores" | "labels"
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    #: model rows the probe itself cost: ``{"forward": rows, "backward": rows}``
    passes: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})

    @property
    def black_box(self) -> bool:
        return self.exposes != "gradients"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_label_output(out: torch.Tensor) -> bool:
    if not out.is_floating_point():
        return True
    if out.dim() != 2 or out.shape[1] < 2:
        return False
    binary = bool(((out == 0) | (out == 1)).all())
    return binary and bool((out.sum(1) == 1).all())


def _integral(out: torch.Tensor) -> bool:
    if not out.is_floating_point():
        return True
    return bool(torch.isfinite(out).all()) and bool((out == out.round()).all())


def probe_capability(model: Any, x: torch.Tensor, y: torch.Tensor) -> Capability:
    """Find what ``model`` exposes from a few points ``x, y`` (one forward with a graph, one
    backward; a model that fails under autograd gets one more forward without it).

    Returns a :class:`Capability`: ``"labels"`` when the outputs are one-hot rows or integer
    label columns (or an adapter declares labels), ``"scores"`` when the output carries no
    gradient graph, the backward pass fails, an adapter declares scores, or the input
    gradients carry nothing (``evidence["gradient"]`` = ``"zero"`` / ``"not finite"`` /
    ``"missing"`` / ``"constant"``; one more forward and backward for the decoy test), else
    ``"gradients"``. Raises ``ValueError`` for a model that returns one label per sample
    (``(B,)``): it needs a :class:`~advex.models.LabelBlackBox` wrapper, which the message names.
    ``Capability.passes`` holds the model rows the probe cost (the evaluation counts them).
    """
    passes = {"forward": 0, "backward": 0}

    def counted(inp: torch.Tensor):
        passes["forward"] += int(inp.shape[0])
        return model(inp)

    cap = _probe(counted, model, x, y, passes)
    cap.passes = passes
    return cap


def _probe(counted, model: Any, x: torch.Tensor, y: torch.Tensor, passes: dict) -> Capability:
    """The body of :func:`probe_capability`; ``counted`` calls the model and counts rows."""
    x = x.detach()[:16]
    y = y[:16]
    declared = declared_capability(model)
    if declared != "gradients":
        return Capability(
            declared, f"the model declares that it exposes {declared} only", {"declared": True}
        )
    ctx = (
        attack_mode(model, warn=False) if isinstance(model, nn.Module) else contextlib.nullcontext()
    )
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xg = x.clone().requires_grad_(True)
        failed = None
        try:
            with torch.enable_grad():
                out = counted(xg)
        except RuntimeError as err:  # e.g. .numpy() on a tensor that requires grad
            failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
            try:
                with torch.no_grad():
                    out = counted(x)
            except Exception:  # the model rejects the input itself: the usual checks say why
                return Capability("gradients", "the model fails on the probe batch")
        if not isinstance(out, torch.Tensor):
            return Capability("gradients", "output is not a tensor (left to the usual checks)")
        if out.dim() == 1 and out.shape[0] == x.shape[0] and _integral(out.detach()):
            raise ValueError(
                f"the model returns one class label per sample (shape {tuple(out.shape)}, "
                f"{out.dtype}), not scores: attacks need one column per class. Wrap it as a "
                "hard-label black box, advex.models.LabelBlackBox(model, num_classes=K) (or "
                "CallableAdapter(model, output='labels', num_classes=K)); the evaluation then "
                "runs the decision-based attacks (HopSkipJump, RayS, BoundaryAttack)"
            )
        if _is_label_output(out.detach()):
            return Capability(
                "labels",
                "outputs are one-hot rows or integer labels: the model exposes labels only",
                {"one_hot": True},
            )
        if failed is not None or not out.requires_grad:
            why = failed or "its output carries no gradient graph"
            return Capability(
                "scores",
                f"no gradient reaches the input ({why}): the model exposes scores only",
                {"graph": False},
            )
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            return Capability("gradients", "unusual output shape (left to the usual checks)")
        try:
            with torch.enable_grad():
                obj = margin(out, Goal(y.to(out.device).long())).sum()
                passes["backward"] += int(x.shape[0])
                (g,) = torch.autograd.grad(obj, xg, allow_unused=True)
        except RuntimeError as err:
            return Capability(
                "scores", f"the backward pass fails ({err}): scores only", {"graph": True}
            )
    if g is None or not bool(torch.isfinite(g).all()) or float(g.abs().max()) == 0.0:
        # a graph whose gradients carry nothing (quantisation, a broken backward, a constant
        # shift of every logit): white-box attacks would climb nothing and report robustness
        # that is not there, so the model goes to the black-box stages; the masking checks
        # still run (they name BPDA for the offending layer and the black-box attacks)
        what = (
            "missing" if g is None else ("zero" if bool(torch.isfinite(g).all()) else "not finite")
        )
        return Capability(
            "scores",
            f"input gradients are {what} on every probe point: white-box attacks get no signal, "
            "the model exposes scores only (BPDA on the offending layer would restore them)",
            {"graph": True, "gradient": what},
        )
    if _constant_gradient(counted, model, x, y, g.detach(), out.detach(), passes):
        return Capability(
            "scores",
            "input gradients do not depend on the input and do not describe the output (a "
            "decoy gradient: the scores change where the gradient says they cannot): the "
            "model exposes scores only",
            {"graph": True, "gradient": "constant"},
        )
    return Capability("gradients", "outputs carry usable input gradients")


def _constant_gradient(counted, model, x, y, g, out, passes) -> bool:
    """Whether the margin gradient is the same at ``x`` and at a nearby point ``x2`` while the
    margin's actual change disagrees with the change that gradient predicts (one more forward
    and backward on the probe rows). A linear model has constant gradients that predict its
    output exactly (not flagged); a ReLU network's gradient changes between the two points
    (not flagged); a decoy (detached scores plus a fixed differentiable term) is flagged on
    most points."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return False
    sign = torch.randint(0, 2, x.shape, generator=gen).to(x.device, x.dtype) * 2 - 1
    x2 = (x + 0.05 * (hi - lo) * sign).clamp(lo, hi)
    goal = Goal(y.to(out.device).long())
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        x2g = x2.clone().requires_grad_(True)
        out2 = counted(x2g)
        if not isinstance(out2, torch.Tensor) or not out2.requires_grad:
            return False
        m2 = margin(out2, goal)
        passes["backward"] += int(x.shape[0])
        (g2,) = torch.autograd.grad(m2.sum(), x2g, allow_unused=True)
    if g2 is None:
        return False
    m1 = margin(out, goal).double()
    same = (g2 - g).flatten(1).abs().amax(1) <= 1e-6 * g.flatten(1).abs().amax(1).clamp_min(1e-12)
    predicted = (g.double() * (x2 - x).double()).flatten(1).sum(1)
    actual = m2.detach().double() - m1
    # rounding of the scores' dtype (float16 logits are exact to ~1e-3 only) is not a decoy
    eps = torch.finfo(out.dtype).eps if out.is_floating_point() else 0.0
    rtol = max(1e-3, 100 * eps)
    scale = torch.maximum(m1.abs(), m2.detach().double().abs()).clamp_min(1.0)
    off = (actual - predicted).abs() > rtol * (actual.abs() + predicted.abs()) + 100 * eps * scale
    return int((same & off).sum()) * 2 > x.shape[0]


def _decision_stages(norm: str) -> list[Stage]:
    q = {"max_queries": DECISION_QUERIES}
    if norm == "linf":
        return [Stage("rays", "RayS", dict(q)), Stage("hsja-linf", "HopSkipJump", dict(q))]
    if norm == "l2":
        return [Stage("hsja", "HopSkipJump", dict(q))]
    raise ValueError(
        f"no decision-based attack for norm {norm!r} in advex (HopSkipJump/Boundary: l2, "
        "HopSkipJump/RayS: linf): evaluate a label-only model in l2 or linf"
    )


def black_box_preset(spec: Preset, cap: Capability, norm: str) -> Preset:
    """The stages of ``spec`` that work on a model exposing ``cap.exposes``.

    ``"gradients"``: ``spec`` unchanged. ``"scores"``: its black-box stages (Square in the
    built-in presets), or Square with ``SCORE_QUERIES`` queries when it has none.
    ``"labels"``: its decision-based stages, or RayS + HopSkipJump (L∞) / HopSkipJump (L2) with
    ``DECISION_QUERIES`` queries per point (score-based stages are dropped: one-hot outputs
    give them no signal to climb).
    """
    if cap.exposes == "gradients":
        return spec
    from ..attacks.registry import find_attack

    def is_decision(s: Stage) -> bool:
        cls = find_attack(s.attack) if s.attack is not None else type(s.instance)
        return cls.__module__.endswith(".decision")

    keep = [s for s in spec.stages if s.black_box and norm in (s.norms or ())]
    if cap.exposes == "labels":
        keep = [s for s in keep if is_decision(s)] or _decision_stages(norm)
    elif not keep:
        if norm not in ("linf", "l2"):
            raise ValueError(f"no score-based attack for norm {norm!r}: use linf or l2")
        keep = [Stage("square", "Square", {"n_queries": SCORE_QUERIES})]
    return Preset(f"{spec.name}/{cap.exposes}-only", tuple(keep), spec.budget_scale)


def check_capability(cap: Capability) -> Check:
    """The masking check for a model whose gradients cannot be used: fires (``passed`` False)
    with the attacks that fit what it exposes."""
    if cap.exposes == "gradients":
        return Check("usable_gradients", True, cap.reason, "", cap.to_dict())
    if cap.exposes == "labels":
        rec = (
            "only decision-based attacks apply: advex.attacks.HopSkipJump (l2/linf), RayS "
            "(linf), BoundaryAttack (l2); robust accuracy from them is an upper bound"
        )
    else:
        rec = (
            "use score-based black-box attacks (advex.attacks.Square), or decision-based ones "
            "(advex.attacks.HopSkipJump (l2/linf), RayS (linf), BoundaryAttack (l2)); robust "
            "accuracy from them is an upper bound"
        )
        if cap.evidence.get("gradient"):
            rec += (
                "; or wrap the layer whose gradient is lost in advex.models.BPDA (identity or a "
                "smooth approximation on the backward pass) for white-box attacks"
            )
        elif not cap.evidence.get("declared"):
            rec += (
                "; or make forward differentiable (remove no_grad/detach/numpy, or wrap the "
                "non-differentiable step in advex.models.BPDA) for white-box attacks"
            )
    return Check("usable_gradients", False, cap.reason, rec, cap.to_dict())


def probe_access(model: Any, batches: Any, device: Any) -> Capability | None:
    """:func:`probe_capability` on the first rows of ``batches`` (an evaluation's data) when
    they can be read twice (tensors, datasets, data loaders); None for a one-shot iterator."""
    src = getattr(batches, "source", None)
    if not isinstance(src, tuple) and iter(src) is src:  # a one-shot iterator: do not consume
        return None
    x, y = next(iter(batches))
    return probe_capability(model, x[:16].to(device), y[:16].to(device=device, dtype=torch.long))


def access_record(cap: Capability | None, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """``Evaluation.access``: the capability and, when black-box only, the upper-bound note
    with the queries the stages spent."""
    if cap is None:
        return {}
    out = cap.to_dict()
    if cap.black_box:
        queries = sum(int(s.get("queries", 0)) for s in stages)
        budgets = ", ".join(
            f"{s['attack']} <= {s['params'].get('max_queries') or s['params'].get('n_queries')}"
            for s in stages
        )
        out["queries_used"] = queries
        out["note"] = (
            f"{cap.reason}; robust accuracy is an upper "
            f"bound from black-box attacks only ({budgets} queries per point; {queries} queries "
            "spent)"
        )
    return out

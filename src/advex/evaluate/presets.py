"""Attack presets for :func:`advex.evaluate.evaluate`: ordered stages, each built per batch.

A :class:`Preset` is an ordered list of :class:`Stage` s. Each stage knows how to build its
attack for a threat model and a seed; ``budget_scale`` multiplies every iteration/query budget
(``steps``, ``n_queries``), which tests and quick looks use to make a preset cheaper without
changing its structure. The ensemble runs the stages in order, each only on the points still
robust after the earlier ones.

Pass budgets per point still robust when a stage starts (``g`` = forward+backward, ``f`` =
forward; early exit stops a point as soon as it is broken):

- ``quick``: APGD-CE 50 steps (50 g), APGD-T 3 targets × 50 steps (150 g).
- ``standard``: AutoAttack's standard attacks, with passes scheduled per point by what the
  earlier stages learned (:mod:`advex.evaluate.schedule`, parameters in
  :data:`STANDARD_RULE`). APGD-CE 100 steps (100 g) plus a second random start on the 25 % of
  survivors closest to success (≤ 25 g); APGD-T against the classes that came closest: the
  first for every point (100 g), then target by target the closest half of the points go on
  (and any point with a probability gap ≤ 0.02), up to 9 targets (900 g); FAB-T (9 targets ×
  100 steps, stopped after 1 unless it broke a point) only for the 10 % closest; Square 100
  queries for every point, AutoAttack's 5,000 for the 10 % closest (for every point when the
  first 100 broke ≥ 10 %). Each gradient stage adds 1 forward per point left robust (its
  margin). The comparison with the real AutoAttack, in model passes
  (``benchmarks/autoattack_passes.py``): docs/evaluation.md. L1: no Square (it has no L1
  version), the other three stages in L1.
- ``autoattack``: AutoAttack's standard version budget for budget: APGD-CE 100 steps, APGD-T 9
  targets × 100 steps, FAB-T 9 targets × 100 steps (900 g + 1,800 f), Square 5,000 queries
  (5,000 f).
- ``thorough``: APGD-CE 100 steps × 5 restarts (500 g), APGD-DLR 100 × 5 (500 g), APGD-T 9 ×
  100 × 2 restarts (1,800 g), FAB-T 9 × 100 × 2 (1,800 g + 3,600 f), Square 5,000 × 3 restarts
  (15,000 f; not for L1).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .._io import derive_seed
from ..attacks import registry
from ..threats import ThreatModel
from .schedule import ScheduledAPGD, ScheduledFABT, ScheduledSquare

__all__ = ["Stage", "Preset", "PRESETS", "STANDARD_RULE", "get_preset", "derive_seed"]

_SCALED = ("steps", "n_queries", "screen", "max_queries")


@dataclass(frozen=True)
class Stage:
    """One attack of a preset.

    Either ``attack`` (a name in :mod:`advex.attacks.registry`: ``"APGD"``, ``"FABT"``,
    ``"Square"``, ..., or an attack class) with constructor ``kwargs``, or ``instance`` (a
    ready attack, copied and re-seeded per stage). ``black_box`` marks attacks that use no
    gradients (their wins over every white-box stage feed the masking verdict); ``norms`` lists
    the norms it supports.
    Both default to what the attack declares (``black_box``, ``norms`` on its class); a ready
    instance runs in any norm unless ``norms`` says otherwise.
    """

    name: str
    attack: str | type | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    black_box: bool | None = None
    norms: tuple[str, ...] | None = None
    instance: Any = None

    def __post_init__(self) -> None:
        if self.attack is not None:
            try:
                cls = registry.find_attack(self.attack)
            except ValueError as err:
                raise ValueError(f"preset stage {self.name!r}: {err}") from err
            black, norms = registry.is_black_box(cls), registry.supported_norms(cls)
        else:
            black, norms = registry.is_black_box(self.instance), ("linf", "l2", "l1")
        if self.black_box is None:
            object.__setattr__(self, "black_box", black)
        if self.norms is None:
            object.__setattr__(self, "norms", norms)

    def build(self, threat: ThreatModel, seed: int, scale: float = 1.0) -> Any:
        """The attack for ``threat``, seeded with ``seed``, budgets scaled by ``scale``."""
        if self.instance is not None:
            atk = copy.copy(self.instance)
            if hasattr(atk, "seed"):
                atk.seed = int(seed)
            return atk
        cls = registry.find_attack(self.attack)
        return cls(threat=threat, seed=int(seed), **_scaled(self.kwargs, scale))

    def describe(self, scale: float = 1.0) -> dict[str, Any]:
        if self.instance is not None:
            params = self.instance.params() if hasattr(self.instance, "params") else {}
            return {"name": self.name, "attack": type(self.instance).__name__, "params": params}
        return {
            "name": self.name,
            "attack": self.attack
            if isinstance(self.attack, str)
            else registry.registry_name(self.attack),
            "params": _scaled(self.kwargs, scale),
            "black_box": self.black_box,
        }


def _scaled(kwargs: Mapping[str, Any], scale: float) -> dict[str, Any]:
    kw = dict(kwargs)
    for key in _SCALED:
        if key in kw:
            kw[key] = max(1, int(math.ceil(kw[key] * scale)))
    if "screen" in kw and kw["screen"] >= kw.get("n_queries", math.inf):
        # a budget scaled down to the screen's size: nothing left to screen
        kw.pop("screen")
        kw.pop("screen_keep", None)
    return kw


@dataclass(frozen=True)
class Preset:
    """An ordered list of stages plus a budget scale (1.0 = the published budgets)."""

    name: str
    stages: tuple[Stage, ...]
    budget_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"preset {self.name!r} has no stages")
        if not (self.budget_scale > 0 and math.isfinite(self.budget_scale)):
            raise ValueError(f"budget_scale must be a finite number > 0, got {self.budget_scale}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"preset {self.name!r} has repeated stage names: {names}")

    def scaled(self, budget_scale: float) -> Preset:
        """The same stages with every steps/n_queries budget multiplied by ``budget_scale``."""
        return replace(self, budget_scale=float(budget_scale))

    def for_norm(self, norm: str) -> list[Stage]:
        """The stages that support ``norm`` (Square has no L1 version)."""
        out = [s for s in self.stages if norm in s.norms]
        if not out:
            raise ValueError(f"preset {self.name!r} has no attack for norm {norm!r}")
        return out

    def build(self, threat: ThreatModel, seed: int, batch: int | None = None) -> dict[str, Any]:
        """The attacks, each seeded from (seed, stage index). The attacks draw their random
        numbers per point, so every batch uses the same seeds (``batch`` is ignored)."""
        return {
            s.name: s.build(threat, derive_seed(seed, j), self.budget_scale)
            for j, s in enumerate(self.for_norm(threat.norm))
        }

    def describe(self, norm: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "budget_scale": self.budget_scale,
            "stages": [s.describe(self.budget_scale) for s in self.for_norm(norm)],
        }


#: the ``standard`` preset's scheduling rule (advex.evaluate.schedule; docs/evaluation.md)
STANDARD_RULE: dict[str, Any] = {
    "screen_targets": 1,  # APGD-T targets every point gets (of 9): the class that came closest
    "target_keep": 0.5,  # APGD-T: the closest half of the points go on to each next target
    "screen_keep": 0.1,  # FAB-T, Square: the share of a batch's survivors closest to breaking
    "screen_margin": 0.02,  # APGD-T: a probability gap at or below which a point goes on
    "fab_screen_targets": 1,  # FAB-T targets before it stops unless it broke a point
    "square_screen": 100,  # Square queries every point gets
    "square_queries": 5000,  # ... and the points picked by the rule (AutoAttack's budget)
}


def _sq(n_queries: int, restarts: int = 1, **kwargs: Any) -> Stage:
    return Stage("square", "Square", {"n_queries": n_queries, "restarts": restarts, **kwargs})


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick",
        (
            Stage("apgd-ce", "APGD", {"steps": 50, "loss": "ce"}),
            Stage("apgd-t", "APGD", {"steps": 50, "targeted": True, "n_target_classes": 3}),
        ),
    ),
    "standard": Preset(
        "standard",
        (
            Stage(
                "apgd-ce",
                ScheduledAPGD,
                {"steps": 100, "loss": "ce", "restarts": 2, "restart_keep": 0.25},
            ),
            Stage(
                "apgd-t",
                ScheduledAPGD,
                {
                    "steps": 100,
                    "targeted": True,
                    "n_target_classes": 9,
                    "screen_targets": STANDARD_RULE["screen_targets"],
                    "screen_keep": STANDARD_RULE["target_keep"],
                    "screen_margin": STANDARD_RULE["screen_margin"],
                },
            ),
            Stage(
                "fab-t",
                ScheduledFABT,
                {
                    "steps": 100,
                    "n_target_classes": 9,
                    "screen_targets": STANDARD_RULE["fab_screen_targets"],
                    "screen_keep": STANDARD_RULE["screen_keep"],
                },
            ),
            Stage(
                "square",
                ScheduledSquare,
                {
                    "n_queries": STANDARD_RULE["square_queries"],
                    "screen": STANDARD_RULE["square_screen"],
                    "screen_keep": STANDARD_RULE["screen_keep"],
                },
            ),
        ),
    ),
    "autoattack": Preset(
        "autoattack",
        (
            Stage("apgd-ce", "APGD", {"steps": 100, "loss": "ce"}),
            Stage("apgd-t", "APGD", {"steps": 100, "targeted": True, "n_target_classes": 9}),
            Stage("fab-t", "FABT", {"steps": 100, "n_target_classes": 9}),
            _sq(5000),
        ),
    ),
    "thorough": Preset(
        "thorough",
        (
            Stage("apgd-ce", "APGD", {"steps": 100, "restarts": 5, "loss": "ce"}),
            Stage("apgd-dlr", "APGD", {"steps": 100, "restarts": 5, "loss": "dlr"}),
            Stage(
                "apgd-t",
                "APGD",
                {"steps": 100, "restarts": 2, "targeted": True, "n_target_classes": 9},
            ),
            Stage("fab-t", "FABT", {"steps": 100, "restarts": 2, "n_target_classes": 9}),
            _sq(5000, restarts=3),
        ),
    ),
}


def get_preset(preset: Any) -> Preset:
    """A :class:`Preset` from a name (``"quick"``, ``"standard"``, ``"autoattack"``,
    ``"thorough"``), a Preset,
    or a list / dict ``name -> attack`` of ready attacks (run in that order)."""
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str):
        key = preset.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[key]
    from .robust import named_attacks

    if isinstance(preset, Mapping | Sequence) or callable(preset):
        named = named_attacks(preset)
        stages = []
        for name, atk in named.items():
            stages.append(Stage(name, instance=atk))
        return Preset("custom", tuple(stages))
    raise TypeError(
        "preset must be 'quick', 'standard', 'thorough', a Preset, or a list/dict of attacks; "
        f"got {type(preset).__name__}"
    )

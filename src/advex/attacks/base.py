"""The one attack interface and lifecycle.

An attack is built with its hyperparameters (``__init__``), optionally fitted to data
(:meth:`Attack.fit`, a no-op for attacks that learn nothing), then called on batches:
``attack.attack(model, x, y, target=None) -> AttackResult`` (``attack(model, x, y)`` is the
same call).

:class:`Attack` does everything that is the same for every attack, once: input validation, eval
mode with frozen weights (restored afterwards), EOT over a randomised model, the clean forward
pass, the goal, early exit for points that are already misclassified, pass counting, and the
final re-prediction on ``x_adv`` from which ``success`` is computed. Subclasses implement
:meth:`Attack._attack` only. Nothing is stored on the attack during a call: what a call needs
(the model caller, the goal, the number of classes) travels in its arguments, so one attack
object can serve several calls and threads at once.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..core.goals import Goal
from ..core.losses import get_loss
from ..core.result import AttackResult
from ..core.validate import (
    check_batch,
    check_classes,
    check_inputs,
    check_labels,
    check_target,
)
from ..models.guards import (
    attack_dtype,
    attack_mode,
    check_logits,
    match_input_dtype,
    model_errors,
    require_graph,
    round_toward,
    warn_half_input,
)
from ..models.wrappers import EOT
from ..threats import Norm, PointRandom, ThreatModel

# check_labels / check_target live in advex.core.validate (the one validation of every entry
# point); they stay importable from here
__all__ = [
    "Attack",
    "ModelCaller",
    "Prologue",
    "check_eot_samples",
    "check_labels",
    "check_positive",
    "check_steps",
    "check_target",
    "closest_share",
    "loss_name",
    "make_threat",
    "resolve_loss",
]


class ModelCaller:
    """Calls the model and counts, per sample, forward evaluations and input gradients."""

    def __init__(self, model: nn.Module, n: int, device: torch.device) -> None:
        # a forward pass meant for a gradient that carries no graph fails here, clearly
        self.model = require_graph(model)
        self.queries = torch.zeros(n, dtype=torch.long, device=device)
        self.gradients = torch.zeros(n, dtype=torch.long, device=device)

    def _count(self, idx: torch.Tensor | None, grad: bool) -> None:
        if idx is None:
            self.queries += 1
            if grad:
                self.gradients += 1
        else:
            self.queries.index_add_(0, idx, torch.ones_like(idx))
            if grad:
                self.gradients.index_add_(0, idx, torch.ones_like(idx))

    #: a forward pass without gradient over more rows than this runs in chunks of this many
    #: (one pass per row is counted either way): a clean pass over thousands of fitting images
    #: in one batch is slower on CPU than in chunks (measured in docs/physical.md)
    chunk: int = 256

    def logits(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Forward pass without gradient (in chunks of :attr:`chunk` rows above that size)."""
        self._count(idx, grad=False)
        with torch.no_grad():
            if x.dim() == 0 or x.shape[0] <= self.chunk:
                return self.model(x)
            return torch.cat([self.model(part) for part in x.split(self.chunk)])

    def forward_with_graph(self, x: torch.Tensor, idx: torch.Tensor | None = None):
        """Forward pass that records the graph w.r.t. ``x`` (returns ``(x_leaf, logits)``);
        call :meth:`input_grad` afterwards to spend the backward pass."""
        self._count(idx, grad=False)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            return x, self.model(x)

    def input_grad(
        self, objective: torch.Tensor, x_leaf: torch.Tensor, idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gradient of ``objective.sum()`` w.r.t. the input only (no weight gradients)."""
        if idx is None:
            self.gradients += 1
        else:
            self.gradients.index_add_(0, idx, torch.ones_like(idx))
        (g,) = torch.autograd.grad(objective.sum(), x_leaf)
        return g

    def value_and_grad(
        self,
        x: torch.Tensor,
        objective: Callable[[torch.Tensor], torch.Tensor],
        idx: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, per-sample objective, d objective / d x)`` in one forward+backward."""
        x_leaf, logits = self.forward_with_graph(x, idx)
        with torch.enable_grad():
            obj = objective(logits)
        g = self.input_grad(obj, x_leaf, idx)
        return logits.detach(), obj.detach(), g


@dataclass(frozen=True, eq=False)
class Prologue:
    """What the base prologue hands to an attack for one call (never stored on the attack).

    ``caller`` runs and counts the model (in eval mode, EOT-wrapped when asked), ``x`` is the
    detached batch, ``goal`` its labels (and targets), ``done`` the points already successful
    on the clean pass, ``clean_logits`` that pass; :attr:`num_classes` is its width.
    """

    caller: ModelCaller
    x: torch.Tensor
    goal: Goal
    done: torch.Tensor
    clean_logits: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.clean_logits.shape[1])


class Attack(ABC):
    """Base class of every advex attack.

    The lifecycle: build with hyperparameters, :meth:`fit` to data (a no-op unless the attack
    learns something), then :meth:`attack` batches. Subclasses set :attr:`name`, keep their
    hyperparameters as attributes, and implement :meth:`_attack`, which receives the model
    caller, the clean batch, the :class:`Goal`, a boolean mask of points already successful
    (they are never attacked) and the clean logits (whose width is the number of classes), and
    returns the adversarial batch. Attacks that learn from data (universal perturbations,
    patches, generators) also override :meth:`fit`, using :meth:`_prologue` as :meth:`attack`
    does.

    Args (of the base, accepted by every attack):
        threat: the :class:`~advex.threats.ThreatModel` (built by each attack from its
            ``eps`` / ``norm`` / ``bounds`` / ``mask`` / ``threat`` arguments).
        seed: seed of the attack's random choices (None: torch's global generator).
        eot_samples: Expectation over Transformation (Athalye et al. 2018): at every model call
            average the logits of this many random draws of a randomised model (1 = off), i.e.
            attack :class:`~advex.models.EOT` ``(model, eot_samples)``.
    """

    # -- declarations, read by advex.attacks.registry (the CLI, presets, `advex list`) -------
    #: the registry name (``advex attack --attack NAME``); also ``AttackResult.attack``
    name: str = "attack"
    #: other names the registry accepts; the class name is always accepted too
    aliases: tuple[str, ...] = ()
    #: the norms the attack supports; a threat in another norm is refused at construction
    norms: tuple[str, ...] = ("linf", "l2", "l1")
    #: whether the attack uses the model's outputs only (no gradients): its wins over the
    #: white-box attacks of an ensemble are evidence of gradient masking
    black_box: bool = False
    #: whether the attack searches the smallest perturbation (no ε) rather than using a budget
    minimum_norm: bool = False
    #: whether the attack can only run targeted (e.g. JSMA, L-BFGS as in their papers)
    targeted_only: bool = False
    #: EOT draws per model call (1 = off); a constructor argument of every attack, and may be
    #: set on an instance (``attack.eot_samples = 16``)
    eot_samples: int = 1

    def __init__(self, threat: ThreatModel, *, seed: int | None = 0, eot_samples: int = 1) -> None:
        norm = getattr(threat, "norm", None)
        if isinstance(norm, str) and norm not in self.norms:
            raise ValueError(
                f"{type(self).__name__} supports norm {' or '.join(self.norms)}, got {norm!r}"
            )
        self.threat = threat
        self.seed = seed
        self.eot_samples = check_eot_samples(eot_samples)

    # -- public API --------------------------------------------------------------------------
    def fit(self, model: nn.Module, data: Any, y: torch.Tensor | None = None) -> Attack:
        """Learn what the attack needs from ``data``; returns ``self``.

        ``data`` is a batch of inputs ``x`` (labels in ``y``, optional) or an ``(x, y)`` pair.
        The default validates the data (:mod:`advex.core.validate`) and learns nothing: most
        attacks work point by point. Attacks that learn from data (universal perturbations,
        patches, generators) override it and run the base prologue (:meth:`_prologue`), so
        validation, eval mode, EOT and pass counting are the same as in :meth:`attack`.

        >>> attack = PGD(eps=0.3).fit(model, (x_train, y_train))   # a no-op: returns attack
        """
        self._fit_data(model, data, y)
        return self

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Any = None
    ) -> AttackResult:
        """Attack ``model`` on the batch ``x`` with labels ``y`` (and optional ``target``).

        Args:
            model: the classifier (an ``nn.Module`` or a callable returning logits
                ``(B, classes)``); left as found (mode, ``requires_grad``, gradients).
            x: inputs ``(B, ...)`` inside the threat's bounds (float; float16 / bfloat16 are
                attacked in the model's dtype and rounded back toward ``x``).
            y: true labels ``(B,)``.
            target: None (untargeted), a class for every point, or target classes ``(B,)``.

        Returns:
            an :class:`~advex.core.result.AttackResult`: ``x_adv`` (caller's dtype and device),
            ``success`` re-predicted on ``x_adv``, per-point norms, passes and queries.

        ``attack(model, x, y)`` (``__call__``) is the same method.
        """
        _check_model(model)
        target = self._default_target(target)
        wide = attack_dtype(model, x)
        if wide is not None:  # float16 / bfloat16 x, float32 / float64 model
            return self._attack_half(model, x, y, target, wide)
        with attack_mode(model) if isinstance(model, nn.Module) else _null():
            p = self._prologue(model, x, y, target)
            if p.goal.target is None and self.targeted_only:
                raise ValueError(f"{self.name} is a targeted attack: pass target=")
            x_adv = self._attack(p.caller, p.x, p.goal, p.done, p.clean_logits).detach()
            x_adv = self.threat.finalize(x_adv, p.x)  # containment in the caller's dtype
            if x_adv.shape != p.x.shape:  # pragma: no cover - programming error guard
                raise RuntimeError(f"{self.name} returned shape {tuple(x_adv.shape)}")
            adv_logits = p.caller.logits(x_adv)
        return self._result(p.x, x_adv, p.goal, p.clean_logits, adv_logits, p.caller)

    __call__ = attack

    def _default_target(self, target: Any) -> Any:
        """The target to use when the caller passes ``target`` (None = untargeted); attacks
        bound to one target class (a targeted generator) return theirs for ``None``."""
        return target

    # -- the prologue, shared by attack() and by fit() of attacks that learn ---------------------
    def _prologue(
        self, model: Any, x: torch.Tensor, y: torch.Tensor | None, target: Any = None
    ) -> Prologue:
        """Validate the batch, run the clean pass and build the goal (call it with ``model``
        already in :func:`~advex.models.guards.attack_mode`). ``y=None`` (for :meth:`fit`)
        takes the model's predictions as the labels, so no point is ``done``."""
        if y is None:
            check_inputs(x, self.threat)
        else:
            y, _ = check_batch(x, y, self.threat)
        x0 = x.detach()
        name = type(model).__name__
        model = match_input_dtype(model, x0)
        eot = check_eot_samples(self.eot_samples)
        if eot > 1:
            model = EOT(model, eot)
        caller = ModelCaller(model, x0.shape[0], x0.device)
        with model_errors(x0, name=name):
            clean_logits = caller.logits(x0)
        check_logits(clean_logits, name=name, batch_size=x0.shape[0])
        if y is None:
            y = clean_logits.argmax(1)
        target = check_classes(clean_logits.shape[1], y, target, name=name)
        goal = Goal(y, target)
        return Prologue(caller, x0, goal, goal.is_success(clean_logits), clean_logits)

    def _fit_data(
        self, model: Any, data: Any, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, y)`` of :meth:`fit`'s arguments, validated; ``x`` in the dtype the attack runs
        in (a float16 / bfloat16 batch is fitted in the model's wider dtype)."""
        _check_model(model)
        if isinstance(data, tuple | list):
            if len(data) != 2 or y is not None:
                raise TypeError("fit(model, data): data is x, or an (x, y) pair (not both y=)")
            data, y = data
        check_inputs(data, self.threat)
        if y is not None:
            y = check_labels(y, data)
        wide = attack_dtype(model, data)
        return (data if wide is None else data.to(wide)), y

    def _attack_half(self, model, x, y, target, wide: torch.dtype) -> AttackResult:
        """Attack half-precision ``x`` in the model's dtype ``wide``, bring ``x_adv`` back to
        ``x``'s dtype with the threat's :meth:`~advex.threats.LpBall.finalize` (rounding toward
        ``x``: never past the budget) and re-predict on the rounded points."""
        warn_half_input(x.dtype, wide)
        x_low = x.detach()
        res = self.attack(model, x_low.to(wide), y, target)
        x_adv = self.threat.finalize(res.x_adv, x_low)
        if x_adv.dtype != x_low.dtype:  # a threat whose finalize keeps the dtype
            x_adv = round_toward(x_adv, x_low)
        with attack_mode(model, warn=False) if isinstance(model, nn.Module) else _null():
            eot = check_eot_samples(self.eot_samples)
            view = EOT(model, eot) if eot > 1 else model
            with torch.no_grad():
                logits = match_input_dtype(view, x_adv, warn=False)(x_adv)
        conf, pred = logits.float().softmax(1).max(1)
        return replace(
            res,
            x_adv=x_adv,
            success=Goal(res.y, res.target).is_success(logits),
            norms=self.threat.distance(x_adv.to(wide), x_low.to(wide)),
            adv_pred=pred,
            adv_conf=conf,
            queries=res.queries + 1,
        )

    def _result(self, x, x_adv, goal, clean_logits, adv_logits, caller) -> AttackResult:
        clean_p = clean_logits.float().softmax(1)
        adv_p = adv_logits.float().softmax(1)
        cp, cpred = clean_p.max(1)
        ap, apred = adv_p.max(1)
        return AttackResult(
            x_adv=x_adv,
            success=goal.is_success(adv_logits),
            y=goal.y,
            target=goal.target,
            norms=self.threat.distance(x_adv, x),
            clean_pred=cpred,
            clean_conf=cp,
            adv_pred=apred,
            adv_conf=ap,
            gradients=caller.gradients,
            queries=caller.queries,
            threat=self.threat,
            attack=self.name,
            params=self.params(),
            minimum_norm=self.minimum_norm,
        )

    def with_budget(self, eps: float) -> Attack:
        """A copy of this attack with budget ``eps`` (the original is unchanged).

        The one step-size rule of advex, used by every path that changes a budget
        (:meth:`FixedBudgetAttack.run_eps`, :func:`~advex.evaluate.robustness_curve`, …): a step
        size stays the same *fraction of the ball*. A step size left to its default is derived
        again from the new ε by the attack's default rule (PGD: ``2.5·ε/steps``); one given
        explicitly is scaled by ``ε_new / ε_old``. Attacks with other hyperparameters that
        depend on ε override :meth:`_rebudget`.

        >>> PGD(eps=0.3, step_size=0.03).with_budget(0.1).step_size   # 0.01
        """
        old = self.threat.budget
        if old is None:
            raise ValueError(
                f"{type(self).__name__} has no eps to re-budget (a minimum-norm attack?): score "
                "its result at a budget with result.at_eps(eps, x) or BudgetedAttack"
            )
        new = copy.copy(self)
        new.threat = self.threat.with_budget(eps)
        new._rebudget(old, new.threat.budget)
        return new

    def _rebudget(self, old: float, new: float) -> None:
        """Adapt ε-dependent hyperparameters of this copy after the budget went from ``old`` to
        ``new`` (default: scale a float ``step_size`` attribute by ``new / old``)."""
        step = getattr(self, "step_size", None)
        if isinstance(step, float) and new != old:
            if old == 0:
                raise ValueError(
                    f"cannot rescale step_size of {type(self).__name__} built with eps=0: "
                    "build the attack at the new eps instead"
                )
            self.step_size = step * new / old

    def params(self) -> dict[str, Any]:
        """Hyperparameters as JSON-ready values (for reports)."""
        out: dict[str, Any] = {}
        for k, v in vars(self).items():
            if k.startswith("_") or k == "threat":
                continue
            if isinstance(v, float) and math.isinf(v):
                v = "inf"
            if isinstance(v, int | float | str | bool) or v is None:
                out[k] = v
            elif callable(v):
                out[k] = getattr(v, "__name__", type(v).__name__)
        out.update(self.threat.to_dict())
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"

    def _rng(self, x: torch.Tensor) -> PointRandom:
        """Per-point random numbers for the batch ``x`` (one key per sample, from its content),
        so a point's draws never depend on its batch, position or shard. ``seed=None`` draws a
        fresh seed once per call (not reproducible)."""
        seed = self.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        return PointRandom(int(seed), x=x)

    @abstractmethod
    def _attack(
        self,
        caller: ModelCaller,
        x: torch.Tensor,
        goal: Goal,
        done: torch.Tensor,
        clean_logits: torch.Tensor,
    ) -> torch.Tensor:
        """Return the adversarial batch for ``x`` (points with ``done`` set stay unchanged)."""


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


# -- argument checks shared by the attacks' constructors ---------------------------------------


def check_steps(name: str, value: Any) -> int:
    """``value`` as an int; raises ``ValueError`` unless it is an integer >= 1 (a bool is not)."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be >= 1 (an integer), got {value!r}")
    return int(value)


def check_eot_samples(value: Any) -> int:
    """The number of EOT draws: an integer >= 1 (1 = no EOT)."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"eot_samples must be an integer >= 1, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False):
    """``value`` as a float (an int with ``integer=True``); raises ``ValueError`` unless it is
    > 0 (>= 0 with ``allow_zero=True``)."""
    v = int(value) if integer else float(value)
    if integer and v != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def loss_name(loss: Any) -> str:
    """How a loss argument is reported: its name, or a callable's ``__name__``."""
    return loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")


def closest_share(score: torch.Tensor, share: float) -> torch.Tensor:
    """Boolean mask of the ``ceil(share · n)`` entries of highest ``score`` (the points closest
    to success); the restart and screening rules of APGD and Square keep these."""
    keep = torch.zeros_like(score, dtype=torch.bool)
    n_keep = math.ceil(share * score.numel())
    if n_keep:
        keep[score.topk(n_keep).indices] = True
    return keep


def make_threat(
    eps: float | None,
    norm: str | Norm,
    bounds: Any,
    mask: torch.Tensor | None,
    threat: ThreatModel | None,
    *,
    need_eps: bool = True,
    attack: str = "attack",
) -> ThreatModel:
    """Build the threat from an attack's keyword arguments (or take the given one).

    ``norm`` is a name or a :class:`~advex.threats.Norm` object (e.g. ``L1(sparsity=0.9)``);
    ``bounds`` a ``(low, high)`` pair of numbers or per-feature tensors, or a
    :class:`~advex.threats.Box`.
    """
    if threat is not None:
        if eps is not None and threat.eps is not None and float(eps) != threat.eps:
            raise ValueError(f"{attack}: eps={eps} conflicts with threat.eps={threat.eps}")
        t = threat if eps is None else threat.with_budget(eps)
    else:
        t = ThreatModel(norm=norm, eps=eps, bounds=bounds, mask=mask)
    if need_eps and t.eps is None:
        raise ValueError(f"{attack} is a fixed-budget attack: pass eps= (or threat=)")
    return t


def resolve_loss(loss):
    """The loss function for a loss argument (a name or a callable ``(logits, goal)``)."""
    return get_loss(loss)

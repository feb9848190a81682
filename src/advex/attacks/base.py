"""The one attack interface: ``attack(model, x, y, target=None) -> AttackResult``.

:class:`Attack` does everything that is the same for every attack, once: input validation, eval
mode with frozen weights (restored afterwards), the clean forward pass, the goal, early exit for
points that are already misclassified, pass counting, and the final re-prediction on ``x_adv``
from which ``success`` is computed. Subclasses implement :meth:`Attack._attack` only.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.goals import Goal
from ..core.losses import get_loss
from ..core.result import AttackResult
from ..models.guards import attack_mode, check_logits
from ..models.wrappers import EOT
from ..threats import Norm, ThreatModel

__all__ = ["Attack", "ModelCaller", "check_labels", "check_target"]


class ModelCaller:
    """Calls the model and counts, per sample, forward evaluations and input gradients."""

    def __init__(self, model: nn.Module, n: int, device: torch.device) -> None:
        self.model = model
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

    def logits(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Forward pass without gradient."""
        self._count(idx, grad=False)
        with torch.no_grad():
            return self.model(x)

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


def check_labels(y: Any, x: torch.Tensor, name: str = "y") -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must have shape ({x.shape[0]},) to match x's batch, got {tuple(y.shape)}"
        )
    return y.to(device=x.device, dtype=torch.long)


def _check_range(labels: torch.Tensor, num_classes: int, name: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"{name} has label {int(bad[0])} but the model outputs {num_classes} classes "
            f"(valid labels are 0..{num_classes - 1})"
        )


def check_target(target: Any, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Normalise ``target`` (None, an int for every sample, or a (B,) tensor) and validate it."""
    if target is None:
        return None
    if isinstance(target, int | bool) or (isinstance(target, torch.Tensor) and target.dim() == 0):
        target = torch.full_like(y, int(target))
    target = check_labels(target, y[:, None], name="target")
    _check_range(target, num_classes, "target")
    same = target == y
    if bool(same.any()):
        idx = same.nonzero().squeeze(1)[:10].tolist()
        raise ValueError(
            f"target equals the true label for {int(same.sum())} sample(s) (indices {idx}...); "
            "a targeted attack needs a different class: drop those samples or choose other targets"
        )
    return target


class Attack(ABC):
    """Base class of every advex attack.

    Subclasses set :attr:`name`, keep their hyperparameters as attributes, and implement
    :meth:`_attack`, which receives the clean batch, the :class:`Goal` and a boolean mask of
    points already successful (they are never attacked), and returns the adversarial batch.
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
    #: Expectation over Transformation: average the logits of this many random draws of a
    #: randomised model at every model call (1 = off). Set it as an attribute on any attack.
    eot_samples: int = 1

    def __init__(self, threat: ThreatModel, *, seed: int | None = 0) -> None:
        norm = getattr(threat, "norm", None)
        if isinstance(norm, str) and norm not in self.norms:
            raise ValueError(
                f"{type(self).__name__} supports norm {' or '.join(self.norms)}, got {norm!r}"
            )
        self.threat = threat
        self.seed = seed

    # -- public API --------------------------------------------------------------------------
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Any = None
    ) -> AttackResult:
        """Attack ``model`` on the batch ``x`` with labels ``y`` (and optional ``target``)."""
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.threat.check_inputs(x)
        y = check_labels(y, x)
        x0 = x.detach()
        with attack_mode(model) if isinstance(model, nn.Module) else _null():
            if int(self.eot_samples) > 1:
                model = EOT(model, self.eot_samples)
            caller = ModelCaller(model, x0.shape[0], x0.device)
            clean_logits = caller.logits(x0)
            check_logits(clean_logits, name=type(model).__name__)
            if clean_logits.shape[0] != x0.shape[0]:
                raise ValueError(
                    f"model returned {clean_logits.shape[0]} rows for a batch of {x0.shape[0]}"
                )
            num_classes = clean_logits.shape[1]
            _check_range(y, num_classes, "y")
            target = check_target(target, y, num_classes)
            if target is None and self.targeted_only:
                raise ValueError(f"{self.name} is a targeted attack: pass target=")
            goal = Goal(y, target)
            done = goal.is_success(clean_logits)
            self._num_classes = num_classes
            x_adv = self._attack(caller, x0, goal, done, clean_logits).detach()
            x_adv = self.threat.finalize(x_adv, x0)  # containment in the caller's dtype
            if x_adv.shape != x0.shape:  # pragma: no cover - programming error guard
                raise RuntimeError(f"{self.name} returned shape {tuple(x_adv.shape)}")
            adv_logits = caller.logits(x_adv)
        return self._result(x0, x_adv, goal, clean_logits, adv_logits, caller)

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

    def _generator(self, x: torch.Tensor) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=x.device).manual_seed(int(self.seed))

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
    return get_loss(loss)

"""Attacks on tabular models under real-world constraints.

Every attack here runs inside a threat that may carry a feature schema
(:class:`~advex.threats.TabularThreat`: standardised budget, ranges, integer / one-hot /
immutable columns, linear and non-linear relations) and repairs each candidate with the threat's
:meth:`~advex.threats.TabularThreat.project`, so every point it evaluates, and every point it
returns, satisfies every declared constraint. They also run in a plain
:class:`~advex.threats.LpBall` (then the repair is the ball/box projection).

- :class:`ConstrainedPGD` — the gradient part of CAA (Simonetto et al. 2024, "Constrained
  Adaptive Attack": CAPGD): APGD-style momentum and step-size halving, the objective minus a
  penalty on the differentiable constraint violations, and the repair after every step. On a
  model that exposes no gradient (a scikit-learn forest through
  :class:`~advex.models.SklearnAdapter`) the gradient is estimated from scores (NES, Ilyas et
  al. 2018: antithetic Gaussian samples in standardised units), every query counted.
- :class:`LowProFool` — Ballet et al. 2019, "Imperceptible Adversarial Attacks on Tabular
  Data": gradient descent on ``CE(f(x + r), t) + λ‖v ⊙ r‖₂`` in standardised units, ``v`` the
  absolute Pearson correlation of each feature with the label (:meth:`LowProFool.fit`), keeping
  the successful perturbation of smallest weighted norm.
- :class:`ConstrainedEvolution` — a search-based attack for non-differentiable models (the
  evolutionary part of CAA, after MOEVA, simplified to one objective): a population per point
  inside the threat, tournament selection, uniform crossover, Gaussian mutation, repair, scores
  or labels only; per-point early exit; every query counted.

>>> threat = TabularThreat(ds.schema, eps=0.5)                 # 0.5 std per feature, L∞
>>> ConstrainedPGD(threat=threat)(mlp, x, y, target=1)          # malignant -> benign
>>> ConstrainedEvolution(threat=threat)(forest, x, y, target=1)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..core.goals import Goal
from ..models.adapters import capability
from ..threats import Threat, ThreatModel
from ..threats.tabular import TabularThreat
from .base import Attack, ModelCaller, check_positive, check_steps, loss_name, resolve_loss

__all__ = ["ConstrainedEvolution", "ConstrainedPGD", "LowProFool", "pearson_importance"]


def _threat(eps, norm, schema, threat, bounds, attack: str, need_eps: bool = True) -> Threat:
    """The threat from an attack's arguments: ``threat``, else a :class:`TabularThreat` over
    ``schema``, else an Lp ball in ``bounds``."""
    if threat is not None:
        if eps is not None and threat.budget is not None and float(eps) != threat.budget:
            raise ValueError(f"{attack}: eps={eps} conflicts with the threat's budget")
        t = threat if eps is None else threat.with_budget(eps)
    elif schema is not None:
        t = TabularThreat(schema, eps, norm)
    else:
        t = ThreatModel(norm=norm, eps=eps, bounds=(0.0, 1.0) if bounds is None else bounds)
    if need_eps and t.budget is None:
        raise ValueError(f"{attack} is a fixed-budget attack: pass eps= (or threat=)")
    return t


def _unit(threat: Threat, x: torch.Tensor) -> torch.Tensor:
    """How far one unit of budget moves each feature (``s / w`` of a tabular threat; 1 for an
    Lp ball), shaped like one sample."""
    if isinstance(threat, TabularThreat):
        return threat.unit(x)
    return torch.ones_like(x[0])


def _mutable(threat: Threat, x: torch.Tensor) -> torch.Tensor:
    if isinstance(threat, TabularThreat):
        return threat.schema.mutable(x.device).to(x.dtype)
    m = getattr(threat, "mask", None)
    return torch.ones_like(x[0]) if m is None else m.to(x.dtype).expand_as(x[0])


def _penalty(threat: Threat, x: torch.Tensor) -> torch.Tensor | None:
    """Per-row sum of constraint violations, each in units of its own scale, differentiable
    (None for a threat without constraints)."""
    if not isinstance(threat, TabularThreat) or not threat.schema.constraints:
        return None
    xd = x.double()
    total = torch.zeros(x.shape[0], dtype=xd.dtype, device=x.device)
    for c in threat.schema.constraints:
        v = c.violation(xd)
        total = total + v / (1.0 + c(xd).detach().abs())
    return total.to(x.dtype)


def _model_exposes(caller: ModelCaller) -> str:
    m = caller.model
    while hasattr(m, "__wrapped__"):
        m = m.__wrapped__
    return capability(m)


def _check_fraction(name: str, v: Any) -> float:
    f = float(v)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    return f


class ConstrainedPGD(Attack):
    """Constrained PGD (CAPGD, the gradient part of CAA; Simonetto et al. 2024).

    PGD in the threat's geometry with APGD's momentum (0.75) and step-size halving at
    checkpoints when the objective stalls (Croce & Hein 2020), a penalty ``penalty · Σ
    violation`` on the differentiable constraints subtracted from the objective (CPGD,
    Simonetto et al. 2022), and the threat's repair after every step, so every iterate is
    valid. Success is checked on the repaired iterates; a point stops at its first success.
    Models that expose only scores get NES gradient estimates (``nes_samples`` queries per
    step, antithetic, radius ``nes_sigma`` budget units).

    Args:
        eps: budget (standardised units for a tabular threat).
        norm: ``"linf"`` or ``"l2"``.
        schema: a :class:`~advex.data.schema.Schema` (builds a :class:`TabularThreat`).
        threat: a ready threat (instead of ``eps``/``norm``/``schema``).
        steps: iterations per restart.
        restarts: restarts (the first from ``x``, then from random valid points).
        loss: ``"ce"`` (default), ``"margin"``, ``"dlr"`` or a callable ``(logits, goal)``.
        penalty: weight of the constraint-violation penalty (0: repair only).
        nes_samples: gradient-estimate queries per step for score-only models (even).
        nes_sigma: their sampling radius, in budget units (× eps).
        bounds: value range when no schema or threat is given (an Lp ball).
        seed: seed of the random restarts and NES samples.

    Shapes: ``x`` ``(B, D)`` rows in original units; ``y`` ``(B,)``.

    >>> ConstrainedPGD(eps=0.5, schema=ds.schema, steps=50)(model, x, y, target=1)
    """

    name = "constrained-pgd"
    aliases = ("capgd", "cpgd")
    norms = ("linf", "l2")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        schema: Any = None,
        threat: Threat | None = None,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        penalty: float = 1.0,
        nes_samples: int = 20,
        nes_sigma: float = 0.5,
        bounds: Any = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = _threat(eps, norm, schema, threat, bounds, "ConstrainedPGD")
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        self.steps = check_steps("steps", steps)
        self.restarts = check_steps("restarts", restarts)
        self.loss = loss
        self._loss = resolve_loss(loss)
        self.penalty = check_positive("penalty", penalty, allow_zero=True)
        self.nes_samples = check_steps("nes_samples", nes_samples)
        if self.nes_samples % 2:
            raise ValueError(f"nes_samples must be even (antithetic pairs), got {nes_samples}")
        self.nes_sigma = check_positive("nes_sigma", nes_sigma)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p["loss"] = loss_name(self.loss)
        return p

    def _attack(self, caller, x, goal, done, clean_logits):
        threat = self.threat
        x_adv = x.clone()
        todo = (~done).nonzero().squeeze(1)
        if todo.numel() == 0:
            return x_adv
        rng = self._rng(x)
        exposes = _model_exposes(caller)
        if exposes == "labels":
            raise ValueError(
                "ConstrainedPGD needs gradients or scores; the model exposes labels only: use "
                "ConstrainedEvolution (constrained-evolution)"
            )
        best_obj = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        for r in range(self.restarts):
            if todo.numel() == 0:
                break
            if r == 0:
                start = x[todo]
            else:
                start = threat.random_start(x[todo], rng, idx=todo, stream=("start", r))
            won, xr, obj = self._run(caller, x, goal, todo, start, exposes, rng, r)
            x_adv[todo[won]] = xr[won]
            better = (~won) & (obj > best_obj[todo])
            x_adv[todo[better]] = xr[better]
            best_obj[todo[better]] = obj[better]
            todo = todo[~won]
        return x_adv

    def _objective(self, logits, goal, xv):
        obj = self._loss(logits, goal)
        if self.penalty > 0:
            pen = _penalty(self.threat, xv)
            if pen is not None:
                obj = obj - self.penalty * pen
        return obj

    def _grad(self, caller, xk, x0, g_goal, idx, exposes, rng, r, k):
        """``(logits, objective, gradient)`` at ``xk`` (autograd, or NES from scores)."""
        if exposes == "gradients":
            x_leaf, logits = caller.forward_with_graph(xk, idx)
            with torch.enable_grad():
                obj = self._objective(logits, g_goal, x_leaf)
            g = caller.input_grad(obj, x_leaf, idx)
            return logits.detach(), obj.detach(), g
        logits = caller.logits(xk, idx)
        obj = self._loss(logits, g_goal)
        n = xk.shape[0]
        half = self.nes_samples // 2
        u = _unit(self.threat, xk)
        sigma = self.nes_sigma * float(self.threat.budget)
        noise = rng.normal(("nes", r, k), (half, *xk.shape[1:]), idx, xk.dtype)
        noise = torch.cat([noise, -noise], 1) * _mutable(self.threat, xk)
        cand = xk[:, None] + sigma * noise * u
        flat = cand.reshape(n * self.nes_samples, *xk.shape[1:])
        lo = self.threat.schema.low(flat) if isinstance(self.threat, TabularThreat) else None
        if lo is not None:
            flat = torch.maximum(torch.minimum(flat, self.threat.schema.high(flat)), lo)
        rep = idx.repeat_interleave(self.nes_samples)
        vals = self._loss(caller.logits(flat, rep), g_goal_repeat(g_goal, self.nes_samples))
        vals = vals.reshape(n, self.nes_samples)
        vals = vals - vals.mean(1, keepdim=True)
        g = (vals.reshape(n, -1, *([1] * (xk.dim() - 1))) * noise).mean(1) / (sigma * u)
        if self.penalty > 0:
            with torch.enable_grad():
                xl = xk.detach().requires_grad_(True)
                pen = _penalty(self.threat, xl)
                if pen is not None:
                    g = g - self.penalty * torch.autograd.grad(pen.sum(), xl)[0]
        return logits, obj, g

    def _run(self, caller, x, goal, idx, start, exposes, rng, r):
        """One restart over the points ``idx``: ``(won, x_best, objective)``."""
        threat = self.threat
        x0 = x[idx]
        g_goal = goal[idx]
        n = idx.numel()
        eps = float(threat.budget)
        step = torch.full((n,), 2.0 * eps, dtype=x.dtype, device=x.device)
        checkpoints = _checkpoints(self.steps)
        xk = start.clone()
        x_prev = xk.clone()
        won = torch.zeros(n, dtype=torch.bool, device=x.device)
        x_out = xk.clone()
        best = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
        best_at_check = best.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        improved = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        last_check = 0
        for k in range(self.steps + 1):
            if active.numel() == 0:
                break
            a_idx = idx[active]
            logits, obj, g = self._grad(
                caller, xk[active], x0[active], g_goal[active], a_idx, exposes, rng, r, k
            )
            ok = g_goal[active].is_success(logits)
            won[active[ok]] = True
            x_out[active[ok]] = xk[active[ok]]
            up = obj > best[active]
            improved[active[up]] += 1
            best[active[up]] = obj[up]
            keep = (~ok) & up
            x_out[active[keep]] = xk[active[keep]]
            if k == self.steps:
                break
            if k in checkpoints and k > 0:
                span = k - last_check
                stall = (improved[active] < 0.75 * span) | (
                    (~reduced_at_check[active]) & (best_at_check[active] == best[active])
                )
                step[active[stall]] /= 2
                reduced_at_check[active] = stall
                best_at_check[active] = best[active]
                improved[active] = 0
                last_check = k
                # restart stalled points from their best iterate
                back = active[stall]
                xk[back] = x_out[back]
                x_prev[back] = x_out[back]
            live = ~ok
            act, g = active[live], g[live]
            if act.numel() == 0:
                active = act
                break
            d = threat.direction(g)
            s = step[act].reshape(-1, *([1] * (x.dim() - 1)))
            z = threat.project(xk[act] + s * d, x0[act])
            mom = 0.75 if k > 0 else 1.0
            cand = xk[act] + mom * (z - xk[act]) + (1 - mom) * (xk[act] - x_prev[act])
            x_prev[act] = xk[act]
            xk[act] = threat.project(cand, x0[act])
            active = act
        return won, x_out, best


def g_goal_repeat(goal: Goal, k: int) -> Goal:
    """``goal`` with every point repeated ``k`` times (for populations and samples)."""
    y = goal.y.repeat_interleave(k)
    t = None if goal.target is None else goal.target.repeat_interleave(k)
    return Goal(y, t)


def _checkpoints(steps: int) -> set[int]:
    """APGD's checkpoints: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {math.ceil(q * steps) for q in p if q <= 1}


def pearson_importance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LowProFool's feature importance: ``|Pearson correlation|`` of each column of ``x``
    ``(N, D)`` with the label ``y`` ``(N,)``, normalised to sum 1 (as ART does); constant
    columns get the smallest positive weight."""
    xd = x.double().reshape(x.shape[0], -1)
    yd = y.double()
    xc = xd - xd.mean(0)
    yc = yd - yd.mean()
    denom = xc.norm(dim=0) * yc.norm()
    r = torch.where(denom > 0, (xc * yc[:, None]).sum(0) / denom.clamp_min(1e-300), 0.0).abs()
    r = r / r.norm().clamp_min(1e-300)
    pos = r[r > 0]
    floor = float(pos.min()) * 1e-3 if pos.numel() else 1.0
    r = r.clamp_min(floor)
    return (r / r.sum()).to(x.dtype)


class LowProFool(Attack):
    """LowProFool (Ballet et al. 2019, "Imperceptible Adversarial Attacks on Tabular Data").

    Gradient descent on the perturbation ``r`` (standardised units: ``Δ = r · s``) of
    ``L(r) = CE(f(x + Δ), t) + λ ‖v ⊙ r‖₂`` with step ``eta`` decaying by ``eta_decay`` per
    step (down to ``eta_min``), ``v`` the feature importance (:func:`pearson_importance` on the
    data given to :meth:`fit`, or ``weights=``; uniform if neither). After every step the point
    is repaired into the threat (budget and constraints), and among the successful iterates the
    one with the smallest weighted norm ``‖v ⊙ r‖₂`` is kept. ``patience``: stop a point once it
    has succeeded and its best norm has not improved for that many steps (None: run every
    step, as in the paper). Untargeted on two classes means "the other class"; on more, the CE
    of the true class is maximised instead.

    Args:
        eps: budget (None: no budget, constraints only, as in the paper).
        norm, schema, threat, bounds: the threat (see :class:`ConstrainedPGD`).
        steps: iterations (ART: 100).
        lambd: weight λ of the imperceptibility term (ART / paper: 1.5).
        eta, eta_decay, eta_min: step size schedule (ART: 0.2, 0.98, 1e-7).
        weights: importance ``v`` ``(D,)`` (overrides :meth:`fit`).
        patience: early-exit patience after success (None: all steps).
        seed: unused (the attack is deterministic); kept for the common interface.

    >>> lpf = LowProFool(eps=0.5, schema=ds.schema).fit(model, (x_train, y_train))
    >>> lpf(model, x, y, target=1).norms
    """

    name = "lowprofool"
    aliases = ("lpf",)
    norms = ("linf", "l2")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        schema: Any = None,
        threat: Threat | None = None,
        steps: int = 100,
        lambd: float = 1.5,
        eta: float = 0.2,
        eta_decay: float = 0.98,
        eta_min: float = 1e-7,
        weights: Any = None,
        patience: int | None = None,
        bounds: Any = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = _threat(eps, norm, schema, threat, bounds, "LowProFool", need_eps=False)
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        self.steps = check_steps("steps", steps)
        self.lambd = check_positive("lambd", lambd, allow_zero=True)
        self.eta = check_positive("eta", eta)
        self.eta_decay = float(eta_decay)
        if not 0 < self.eta_decay <= 1:
            raise ValueError(f"eta_decay must be in (0, 1], got {eta_decay!r}")
        self.eta_min = check_positive("eta_min", eta_min, allow_zero=True)
        self.patience = None if patience is None else check_steps("patience", patience)
        self._weights = None if weights is None else torch.as_tensor(weights).double()
        if self._weights is not None and not bool((self._weights >= 0).all()):
            raise ValueError("weights must be >= 0")

    @property
    def importance(self) -> torch.Tensor | None:
        """The feature importance ``v`` in use (None before :meth:`fit` without weights=)."""
        return self._weights

    def fit(self, model, data, y=None) -> LowProFool:
        """Compute the importance ``v`` from labelled data ``(x, y)`` (Pearson, as in the
        paper); keeps ``weights=`` if given."""
        x, y = self._fit_data(model, data, y)
        if y is None:
            raise ValueError("LowProFool.fit needs labels: fit(model, (x, y))")
        if self._weights is None:
            self._weights = pearson_importance(x, y).double()
        return self

    def _attack(self, caller, x, goal, done, clean_logits):
        threat = self.threat
        x_adv = x.clone()
        todo = (~done).nonzero().squeeze(1)
        if todo.numel() == 0:
            return x_adv
        n_classes = clean_logits.shape[1]
        v = self._weights
        if v is None:
            v = torch.full(x[0].shape, 1.0 / x[0].numel(), dtype=torch.float64)
        v = v.to(device=x.device, dtype=x.dtype).reshape(x[0].shape)
        if v.numel() != x[0].numel():
            raise ValueError(f"importance has {v.numel()} values for {x[0].numel()} features")
        u = _unit(threat, x)
        x0 = x[todo]
        lab = goal.y[todo]
        if goal.target is not None:
            tgt, toward = goal.target[todo], True
        elif n_classes == 2:
            tgt, toward = 1 - lab, True
        else:
            tgt, toward = lab, False
        g_goal = goal[todo]
        xk = x0.clone()
        best_norm = torch.full((todo.numel(),), math.inf, dtype=x.dtype, device=x.device)
        best_x = x0.clone()
        since = torch.zeros(todo.numel(), dtype=torch.long, device=x.device)
        active = torch.arange(todo.numel(), device=x.device)
        eta = self.eta
        red = tuple(range(1, x.dim()))
        for k in range(self.steps + 1):
            if active.numel() == 0:
                break
            x_leaf, logits = caller.forward_with_graph(xk[active], todo[active])
            with torch.enable_grad():
                r = (x_leaf - x0[active]) / u
                ce = F.cross_entropy(logits, tgt[active], reduction="none")
                wn = ((v * r) ** 2).sum(red).add(1e-12).sqrt()
                obj = (ce if toward else -ce) + self.lambd * wn
            ok = g_goal[active].is_success(logits.detach())
            wn_d = wn.detach()
            better = ok & (wn_d < best_norm[active])
            best_norm[active[better]] = wn_d[better]
            best_x[active[better]] = xk[active[better]]
            since[active] += 1
            since[active[better]] = 0
            if k == self.steps:
                break
            g = caller.input_grad(-obj, x_leaf, todo[active])  # ascent on -L
            if self.patience is not None:
                stop = torch.isfinite(best_norm[active]) & (since[active] >= self.patience)
                active, g = active[~stop], g[~stop]
                if active.numel() == 0:
                    break
            # gradient descent on r (= ascent on -L); Δx = Δr · u, dL/dr = dL/dx · u
            step = eta * g * u * u * _mutable(threat, x)
            xk[active] = threat.project(xk[active] + step, x0[active])
            eta = max(eta * self.eta_decay, self.eta_min)
        x_adv[todo] = best_x
        return x_adv


class ConstrainedEvolution(Attack):
    """A constraint-aware evolutionary search for non-differentiable models (scores or labels).

    For every point a population of ``population`` candidates inside the threat: the first
    generation is random valid points (:meth:`~advex.threats.TabularThreat.random_start`);
    each generation keeps the ``elite`` best, fills the rest with children of tournament-selected
    parents (uniform crossover of their perturbations, Gaussian mutation of ``mutation`` budget
    units on a random ``mutation_rate`` share of the mutable features) and repairs every child
    into the threat. Fitness is the goal's margin on the scores (labels only: success first,
    then the smaller distance). A point stops at its first success (the smallest-distance
    successful candidate of that generation is returned) or when ``n_queries`` are spent.

    This is the search half of CAA (Simonetto et al. 2024), after MOEVA (Simonetto et al.
    2022), with one objective instead of three: constraints are not an objective here because
    the repair makes every candidate valid.

    Args:
        eps, norm, schema, threat, bounds: the threat (see :class:`ConstrainedPGD`).
        n_queries: model queries per point (the clean pass and re-prediction not counted).
        population: candidates per point per generation.
        elite: candidates carried over unchanged.
        mutation: mutation size in budget units (× eps).
        mutation_rate: share of features a child mutates.
        seed: seed of every random draw (per point).

    >>> ConstrainedEvolution(eps=0.5, schema=ds.schema, n_queries=2000)(forest, x, y, target=1)
    """

    name = "constrained-evolution"
    aliases = ("moeva", "tabular-evolution")
    norms = ("linf", "l2")
    black_box = True

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        schema: Any = None,
        threat: Threat | None = None,
        n_queries: int = 2000,
        population: int = 20,
        elite: int = 2,
        mutation: float = 0.3,
        mutation_rate: float = 0.3,
        bounds: Any = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = _threat(eps, norm, schema, threat, bounds, "ConstrainedEvolution")
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        self.n_queries = check_steps("n_queries", n_queries)
        self.population = check_steps("population", population)
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {population}")
        self.elite = int(elite)
        if not 0 <= self.elite < self.population:
            raise ValueError(f"elite must be in [0, population), got {elite}")
        self.mutation = check_positive("mutation", mutation)
        self.mutation_rate = _check_fraction("mutation_rate", mutation_rate)

    def _fitness(self, logits, goal, dist, labels_only: bool):
        if labels_only:
            win = goal.is_success(logits).to(dist.dtype)
            return win * 1e6 - dist
        z = logits.float()
        return torch.nan_to_num(_margin(z, goal), nan=-1e9).to(dist.dtype)

    def _attack(self, caller, x, goal, done, clean_logits):
        threat = self.threat
        x_adv = x.clone()
        todo = (~done).nonzero().squeeze(1)
        if todo.numel() == 0:
            return x_adv
        rng = self._rng(x)
        labels_only = _model_exposes(caller) == "labels"
        P, sh = self.population, tuple(x.shape[1:])
        n_gen = max(1, self.n_queries // P)
        u = _unit(threat, x)
        mut = _mutable(threat, x)
        eps = float(threat.budget)

        def evaluate(cand, idx):
            n = idx.numel()
            flat = cand.reshape(n * P, *sh)
            rep = idx.repeat_interleave(P)
            g = g_goal_repeat(goal[idx], P)
            logits = caller.logits(flat, rep)
            dist = threat.distance(flat, x[idx].repeat_interleave(P, 0))
            fit = self._fitness(logits, g, dist, labels_only).reshape(n, P)
            win = g.is_success(logits).reshape(n, P)
            return fit, win, dist.reshape(n, P)

        idx = todo
        x0 = x[idx].repeat_interleave(P, 0)
        pop = threat.project(x0 + _ball_draw(rng, idx, P, sh, threat, x) * u, x0)
        pop = pop.reshape(-1, P, *sh)
        fit, win, dist = evaluate(pop, idx)
        for gen in range(n_gen):
            found = win.any(1)
            if bool(found.any()):
                f = found.nonzero().squeeze(1)
                d = torch.where(win[f], dist[f], torch.full_like(dist[f], math.inf))
                x_adv[idx[f]] = pop[f, d.argmin(1)]
            keep = ~found
            idx, pop, fit = idx[keep], pop[keep], fit[keep]
            if idx.numel() == 0 or gen == n_gen - 1:
                break
            n = idx.numel()
            order = fit.argsort(1, descending=True)
            pop = pop.gather(1, order.reshape(n, P, *([1] * len(sh))).expand_as(pop))
            fit = fit.gather(1, order)
            kids = P - self.elite
            # tournament selection of two parents per child (size 2)
            draws = rng.uniform(("sel", gen), (kids, 4), idx, torch.float64)
            cand = (draws * P).long().clamp_max(P - 1)
            a = torch.where(cand[..., 0] < cand[..., 1], cand[..., 0], cand[..., 1])
            b = torch.where(cand[..., 2] < cand[..., 3], cand[..., 2], cand[..., 3])
            base = x[idx][:, None]
            da = _pick(pop, a, sh) - base
            db = _pick(pop, b, sh) - base
            mask = rng.uniform(("cross", gen), (kids, *sh), idx, x.dtype) < 0.5
            child = torch.where(mask, da, db)
            hit = (
                rng.uniform(("mrate", gen), (kids, *sh), idx, x.dtype) < self.mutation_rate
            ) * mut
            noise = rng.normal(("mut", gen), (kids, *sh), idx, x.dtype)
            child = child + hit * noise * self.mutation * eps * u
            child = (base + child).reshape(n * kids, *sh)
            child = threat.project(child, x[idx].repeat_interleave(kids, 0))
            pop = torch.cat([pop[:, : self.elite], child.reshape(n, kids, *sh)], 1)
            fit, win, dist = evaluate(pop, idx)
        if idx.numel():  # unsuccessful points: the fittest candidate (valid, not adversarial)
            best = fit.argmax(1)
            x_adv[idx] = pop[torch.arange(idx.numel(), device=x.device), best]
        return x_adv


def _pick(pop: torch.Tensor, j: torch.Tensor, sh: tuple) -> torch.Tensor:
    """``pop[i, j[i, k]]`` for every point ``i`` and child ``k``: shape ``(n, kids, *sh)``."""
    n, kids = j.shape
    return pop.gather(1, j.reshape(n, kids, *([1] * len(sh))).expand(n, kids, *sh))


def _margin(logits: torch.Tensor, goal: Goal) -> torch.Tensor:
    from ..core.losses import margin

    return margin(logits, goal)


def _ball_draw(rng, idx, P: int, sh: tuple, threat: Threat, x: torch.Tensor) -> torch.Tensor:
    """``P`` random points per point of the budget ball (in budget units: multiply by the
    unit), per-point draws, shape ``(n·P, *sh)``: uniform per coordinate for L∞, uniform
    direction and radius ``eps · U^(1/d)`` for L2."""
    eps = float(threat.budget)
    n = idx.numel()
    if threat.norm == "linf":
        d = (2 * rng.uniform(("evo-start",), (P, *sh), idx, x.dtype) - 1) * eps
    else:
        g = rng.normal(("evo-start",), (P, *sh), idx, x.dtype)
        g = g / g.flatten(2).norm(dim=2).reshape(n, P, *([1] * len(sh))).clamp_min(1e-12)
        rad = rng.uniform(("evo-radius",), (P,), idx, x.dtype) ** (1.0 / math.prod(sh))
        d = g * (eps * rad).reshape(n, P, *([1] * len(sh)))
    return (d * _mutable(threat, x)).reshape(n * P, *sh)

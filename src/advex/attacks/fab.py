"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020), and its multi-target FAB-T.

The heart of FAB is :func:`~advex.threats.project_hyperplane_box`: the minimal-norm step from a
point onto a hyperplane *inside the box* of valid inputs, solved exactly and batched for L∞, L2
and L1 (sort, cumulative sums, one gather; no per-sample loop). It lives in
:mod:`advex.threats.projections` with the other geometry.
"""

from __future__ import annotations

import math

import torch

from ..core.goals import Goal
from ..core.losses import margin
from ..threats import ThreatModel, project_hyperplane_box
from ._jacobian import difference_jacobian
from .base import Attack, ModelCaller, make_threat

__all__ = ["FAB", "FABT", "project_hyperplane_box"]

_TINY = 1e-12
#: radius of the random starts when neither ``eps`` nor ``start_radius`` is given (MNIST scale,
#: the values of the authors' code)
DEFAULT_START_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}


class FAB(Attack):
    """Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted Adversarial
    Examples with a Fast Adaptive Boundary Attack"), minimum-norm in L∞, L2 or L1.

    Each iteration linearises the classifier at the iterate ``x_i`` (one batched Jacobian),
    picks the closest linearised decision hyperplane ``π_s`` (``s = argmin_{l≠y} |f_l − f_y| /
    ‖∇f_l − ∇f_y‖_dual``), and projects both ``x_i`` and the original ``x`` onto ``π_s ∩ box``
    (:func:`project_hyperplane_box`) giving ``δ`` and ``δ_orig``. The biased step

    ``x_{i+1} = clip((1 − α)(x_i + η δ) + α (x + η δ_orig))``, ``α = min(‖δ‖/(‖δ‖+‖δ_orig‖),
    α_max)``

    moves to the boundary while staying close to ``x``. When ``x_{i+1}`` is adversarial it is
    kept if it is the smallest found, and the iterate steps back towards ``x``: ``x_{i+1} ← x +
    β (x_{i+1} − x)``. Restarts after the first begin at a random point on the sphere of radius
    ``min(best norm so far, start_radius) / 2`` (shrinking as better adversarials are found).
    A final search of a few regula-falsi steps on the segment from ``x`` to the best adversarial
    (the authors' "final search") shortens it further, down to a margin of 10⁻⁴ of the clean
    one, never onto the boundary itself (a tie is no adversarial example). On MNIST FAB's
    iterates already end that close, so the search rarely changes a norm by more than 0.1 %.

    Targeted (``target=``): each iteration linearises the boundary between the target and the
    current top other class; success means predicting the target. See :class:`FABT` for the
    multi-target untargeted version of AutoAttack.

    With ``eps=`` FAB is a fixed-budget attack (as in AutoAttack): points are attacked until an
    adversarial of norm ≤ ε is found (then they stop costing passes), restarts run only on the
    others, and points whose smallest adversarial is larger than ε are returned unchanged, so
    ``x_adv`` always lies in the ε-ball. Without ``eps`` the result is minimum-norm:
    ``result.norms`` holds the norm found and ``result.at_eps(eps, x)`` gives any budget.

    Args:
        eps: optional budget (None: minimum-norm). norm: ``"linf"`` (default), ``"l2"``, ``"l1"``.
        steps: iterations per run (100, the paper's setting). restarts: runs (1; the first from
            ``x``, the others from random starts).
        alpha_max: 0.1, eta: 1.05 (overshoot), beta: 0.9 (backward step) — the paper's values.
        start_radius: radius of random starts (default: ``eps``, else 0.3 / 1.0 / 5.0 for
            L∞ / L2 / L1, the authors' MNIST values).
        final_search: regula-falsi steps at the end (3; 0 disables).
        bounds, mask, threat, seed: as for every attack (the seed drives the random starts).

    Cost: per run, per point attacked, ``steps`` × (one forward and the C − 1 gradients of
    ``z_l − z_y``, + 1 forward); targeted runs need 1 gradient instead of C − 1; then
    ``final_search`` forwards; plus 2 forwards.

    >>> result = FAB(norm="linf", steps=100)(model, x, y)          # minimum-norm
    >>> fixed = FAB(eps=0.3, norm="linf")(model, x, y)               # fixed budget
    """

    name = "fab"
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        start_radius: float | None = None,
        final_search: int = 3,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = make_threat(eps, norm, bounds, mask, threat, need_eps=False, attack=type(self).__name__)
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        _check_int("steps", steps, 1)
        _check_int("restarts", restarts, 1)
        _check_int("final_search", final_search, 0)
        if not 0.0 <= alpha_max <= 1.0:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
        if not eta >= 1.0:
            raise ValueError(f"eta (overshoot) must be >= 1, got {eta}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta (backward step) must be in (0, 1], got {beta}")
        if start_radius is not None and not start_radius > 0:
            raise ValueError(f"start_radius must be > 0, got {start_radius}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)
        if start_radius is None:
            start_radius = t.eps if t.eps else DEFAULT_START_RADIUS[t.norm]
        self.start_radius = float(start_radius)
        self.final_search = int(final_search)

    @property
    def minimum_norm(self) -> bool:  # type: ignore[override]
        """Minimum-norm without ``eps``; a fixed-budget result with it."""
        return self.threat.eps is None

    # -- the attack ----------------------------------------------------------------------------
    def _plan(self, goal: Goal, clean_logits: torch.Tensor) -> list[tuple]:
        """The runs to make: ``(mode, per-sample class of the run or None, random start)``."""
        mode = "targeted" if goal.targeted else "all"
        return [(mode, None, r > 0) for r in range(self.restarts)]

    def _screen_runs(self) -> int | None:
        """Runs of the plan after which the attack stops unless it has broken a point."""
        return None

    def _attack(
        self,
        caller: ModelCaller,
        x: torch.Tensor,
        goal: Goal,
        done: torch.Tensor,
        clean_logits: torch.Tensor,
    ) -> torch.Tensor:
        threat = self.threat
        n = x.shape[0]
        best_x = x.clone()
        best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        best_margin = torch.zeros(n, device=x.device, dtype=x.dtype)
        rng = self._rng(x)
        eps = threat.eps
        screen = self._screen_runs()
        for i, (mode, classes, random) in enumerate(self._plan(goal, clean_logits)):
            if screen is not None and i == screen and not bool((best_norm <= eps).any()):
                break  # the screen broke nothing: the remaining targets are not run
            todo = ~done
            if eps is not None:
                todo &= ~(best_norm <= eps)
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            self._run(
                caller,
                x,
                goal,
                clean_logits,
                idx,
                mode,
                classes,
                random,
                (rng, ("sphere", i)),
                best_x,
                best_norm,
                best_margin,
            )
        found = best_norm < math.inf
        if self.final_search and bool(found.any()):
            idx = found.nonzero().squeeze(1)
            self._final_search(caller, x, goal, clean_logits, idx, best_x, best_norm, best_margin)
        if eps is not None:
            over = ~(best_norm <= eps + 1e-7)
            best_x[over] = x[over]
        # masked features exactly unchanged (no rounding drift), inside bounds (and the ε-ball)
        return threat.project(best_x, x)

    def _run(
        self,
        caller,
        x,
        goal,
        clean_logits,
        idx,
        mode,
        classes,
        random,
        draw,
        best_x,
        best_norm,
        best_margin,
    ) -> None:
        threat = self.threat
        lp = threat.lp
        eps = threat.eps
        x0, g = x[idx], goal[idx]
        lo, hi = threat.box.bounds_for(x0)
        flat_bounds = threat.box.flat_bounds(x0)
        shape = x0.shape[1:]
        cur = x0.clone()
        if random:
            radius = torch.clamp(best_norm[idx], max=self.start_radius)
            cur = (x0 + 0.5 * self._random_sphere(x0, radius, draw, idx)).clamp_(lo, hi)
        y = g.y
        other = None if classes is None else classes[idx]
        for _ in range(self.steps):
            if mode == "all":  # every boundary z_l = z_y, l ≠ y
                c = clean_logits.shape[1]
                ar = torch.arange(c, device=x.device).expand(cur.shape[0], c)
                others = ar[ar != y[:, None]].reshape(cur.shape[0], c - 1)
                pairs = torch.stack([others, y[:, None].expand_as(others)], dim=2)
            elif mode == "pair":  # FAB-T: the boundary between the run's target class and y
                pairs = torch.stack([other, y], dim=1)[:, None, :]
            else:  # targeted: the boundary between the target and the current top other class
                tgt = g.target

                def pairs(logits, tgt=tgt):
                    ref = logits.scatter(1, tgt[:, None], float("-inf")).argmax(1)
                    return torch.stack([tgt, ref], dim=1)[:, None, :]

            logits, jac = difference_jacobian(caller, cur, pairs, idx)
            pr = pairs(logits) if callable(pairs) else pairs
            f = logits.gather(1, pr[..., 0]) - logits.gather(1, pr[..., 1])
            w = threat.apply_mask(jac.reshape(-1, *shape)).reshape(jac.shape[0], jac.shape[1], -1)
            if w.shape[1] > 1:  # the closest linearised boundary
                dual = lp.dual(w.reshape(-1, w.shape[2])).reshape(w.shape[:2])
                dist = f.abs() / (dual + _TINY)
                s = dist.argmin(1)
                rows = torch.arange(cur.shape[0], device=x.device)
                fs, ws = f[rows, s], w[rows, s]
            else:
                fs, ws = f[:, 0], w[:, 0]
            cf, x0f = cur.reshape(cur.shape[0], -1), x0.reshape(x0.shape[0], -1)
            # linear model at cur: fs + <ws, z - cur>; both projections target its zero set
            d1 = project_hyperplane_box(cf, ws, -fs, flat_bounds, lp)
            rhs0 = -(fs + (ws * (x0f - cf)).sum(1))
            d2 = project_hyperplane_box(x0f, ws, rhs0, flat_bounds, lp)
            n1 = lp.measure(d1).clamp_min(1e-8)
            n2 = lp.measure(d2).clamp_min(1e-8)
            alpha = (n1 / (n1 + n2)).clamp(0.0, self.alpha_max)[:, None]
            nxt = (1 - alpha) * (cf + self.eta * d1) + alpha * (x0f + self.eta * d2)
            cur = (x0 + threat.apply_mask(nxt.reshape(cur.shape) - x0)).clamp_(lo, hi)
            logits = caller.logits(cur, idx)
            adv = g.is_success(logits)
            if not bool(adv.any()):
                continue
            nrm = lp.measure(cur - x0)
            better = adv & (nrm < best_norm[idx])
            if bool(better.any()):
                bi = idx[better]
                best_x[bi] = cur[better]
                best_norm[bi] = nrm[better]
                best_margin[bi] = margin(logits[better], g[better])
            back = adv.reshape(-1, *[1] * len(shape))
            cur = torch.where(back, x0 + self.beta * (cur - x0), cur)
            if eps is not None:  # fixed budget: points with an adversarial within ε are done
                keep = ~(best_norm[idx] <= eps)
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        return
                    idx, x0, g, cur, y = idx[keep], x0[keep], g[keep], cur[keep], y[keep]
                    if other is not None:
                        other = other[keep]

    def _final_search(self, caller, x, goal, clean_logits, idx, best_x, best_norm, best_margin):
        """Regula falsi on the segment [x, best_x]: the margin is interpolated linearly.

        The search aims just across the boundary, at a margin of ``κ = 10⁻⁴·|clean margin|``
        (about 10⁻³ logits), not at the boundary itself: a point at margin 0 is adversarial
        only by the tie-break of ``argmax`` and float rounding (another batch size gives other
        last bits), so it may not be adversarial when the result is re-predicted (aiming at 0
        left 5 of 64 MNIST digits unsolved after 10 steps). Points whose best adversarial is
        itself closer to the boundary than κ are left as they are."""
        g = goal[idx]
        m_clean = margin(clean_logits[idx], g)  # < 0: x is not adversarial
        kappa = (1e-4 * m_clean.abs()).clamp_min(1e-6)
        live = best_margin[idx] >= kappa
        if not bool(live.any()):
            return
        idx, g, kappa = idx[live], g[live], kappa[live]
        a1, a2 = x[idx], best_x[idx]
        h1 = m_clean[live] - kappa  # margin − κ: < 0 at a1, ≥ 0 at a2
        h2 = best_margin[idx] - kappa
        for _ in range(self.final_search):
            t = (-h1 / (h2 - h1).clamp_min(_TINY)).clamp(0.0, 1.0)
            t = t.reshape(-1, *[1] * (x.dim() - 1))
            a3 = a1 + t * (a2 - a1)
            logits = caller.logits(a3, idx)
            h3 = margin(logits, g) - kappa
            ok = g.is_success(logits) & (h3 >= 0)
            sel = ok.reshape(t.shape)
            a2 = torch.where(sel, a3, a2)
            a1 = torch.where(sel, a1, a3)
            h2 = torch.where(ok, h3, h2)
            h1 = torch.where(ok, h1, h3.clamp_max(0.0))
        nrm = self.threat.lp.measure(a2 - x[idx])
        better = nrm < best_norm[idx]
        best_x[idx[better]] = a2[better]
        best_norm[idx[better]] = nrm[better]
        best_margin[idx[better]] = (h2 + kappa)[better]

    def _random_sphere(self, like: torch.Tensor, radius: torch.Tensor, draw, idx) -> torch.Tensor:
        """A random direction of norm ``radius`` (per sample), masked; ``draw`` is
        ``(rng, stream)``, ``like`` holds the rows ``idx`` of the attack's batch."""
        rng, stream = draw
        t = self.threat.apply_mask(self.threat.lp.noise(like, rng, idx=idx, stream=stream))
        size = self.threat.lp.measure(t).clamp_min(_TINY)
        return t * (radius / size).reshape(-1, *[1] * (like.dim() - 1))


class FABT(FAB):
    """FAB-T, the multi-target FAB of AutoAttack (Croce & Hein 2020, "Reliable evaluation of
    adversarial robustness with an ensemble of diverse parameter-free attacks").

    Untargeted goal (success = misclassification), reached by targeted runs: for each of the
    ``n_target_classes`` classes with the highest clean logits after the true class, FAB
    linearises only the boundary between ``y`` and that class (1 gradient per iteration
    instead of C − 1). Without ``eps`` every run refines every point's minimum norm; with ``eps``
    later runs attack only the points still robust at ``ε`` (AutoAttack's use). All other
    arguments as :class:`FAB`; for a single user-chosen target use ``FAB(...)(model, x, y,
    target=t)``.

    ``screen_targets`` (fixed budget only; None = off): run the first ``screen_targets``
    targets, and go on to the others only if they broke a point. In an ensemble, where FAB-T
    sees only points the gradient attacks before it left robust, a point it breaks is evidence
    that those attacks miss points, and then the full ``n_target_classes`` are worth running;
    otherwise the remaining targets are skipped (advex's ``standard`` preset: 3 of 9).

    Cost: ``n_target_classes × restarts × steps`` × (1 gradient + 2 forwards) per point at most
    (``screen_targets`` instead of ``n_target_classes`` when the screen breaks nothing).

    >>> result = FABT(eps=0.3, norm="linf", n_target_classes=9)(model, x, y)
    """

    name = "fab-t"
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        n_target_classes: int = 9,
        screen_targets: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        _check_int("n_target_classes", n_target_classes, 1)
        self.n_target_classes = int(n_target_classes)
        if screen_targets is not None:
            _check_int("screen_targets", screen_targets, 1)
            if self.threat.eps is None:
                raise ValueError(
                    "FABT: screen_targets needs a fixed budget (eps=): without it there is no "
                    "'broken' to screen for"
                )
            screen_targets = int(screen_targets)
        self.screen_targets = screen_targets

    def _screen_runs(self) -> int | None:
        if self.screen_targets is None or self.screen_targets >= self.n_target_classes:
            return None
        return self.screen_targets * self.restarts

    def _plan(self, goal, clean_logits):
        if goal.targeted:
            raise ValueError(
                "FABT is the untargeted multi-target attack; for a chosen target use "
                "FAB(...)(model, x, y, target=t)"
            )
        c = clean_logits.shape[1]
        k = min(self.n_target_classes, c - 1)
        ranked = clean_logits.scatter(1, goal.y[:, None], float("-inf")).argsort(
            dim=1, descending=True
        )
        return [("pair", ranked[:, j], r > 0) for j in range(k) for r in range(self.restarts)]


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")

"""Carlini & Wagner (2017) minimum-norm attacks, in L2 and L∞.

Both are batched over samples: every sample carries its own constant ``c`` (and, for L∞, its
own threshold τ), one forward+backward pass serves every sample still being optimised, and a
sample leaves the batch as soon as its own optimisation is over, so converged samples stop
costing passes.
"""

from __future__ import annotations

import math

import torch

from ..core.goals import Goal
from ..core.losses import margin
from ..threats import ThreatModel
from .base import Attack, ModelCaller, check_positive
from .minnorm import (
    UNBOUNDED,
    Plateau,
    RowAdam,
    confident_success,
    flat,
    min_norm_threat,
    per_sample,
    search_update,
    warn_never_adversarial,
)

__all__ = ["CW"]


def _tanh_to_x(w: torch.Tensor, lo, hi) -> torch.Tensor:
    """``lo + (hi − lo)·(tanh(w) + 1)/2``; ``lo``/``hi`` are numbers or per-feature tensors."""
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


def _x_to_tanh(x: torch.Tensor, lo, hi, margin: float) -> torch.Tensor:
    """The tanh variable of ``x``, with ``|tanh(w)| ≤ 1 − margin``: a pixel on a bound starts
    ``margin·(hi − lo)/2`` inside it, where the tanh is not saturated."""
    u = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + margin, 1 - margin)
    return torch.atanh(u)


# -- the attack ------------------------------------------------------------------------------


class CW(Attack):
    """Carlini & Wagner (2017), "Towards Evaluating the Robustness of Neural Networks".

    Minimum-norm attack, targeted or untargeted, in L2 (``norm="l2"``) or L∞ (``norm="linf"``).
    The C&W loss is ``f(x') = max(z_y − max_{j≠y} z_j, −κ)`` (untargeted) or
    ``max(max_{j≠t} z_j − z_t, −κ)`` (targeted) on the logits ``z``.

    **L2** (the paper's main attack): the change of variables
    ``x' = lo + (hi − lo)·(tanh(w) + 1)/2`` keeps ``x'`` in bounds; Adam minimises
    ``‖x' − x‖₂² + c·(f(x') + κ)`` over ``w`` for ``max_iterations`` steps (f is a hinge: once
    the margin reaches κ nothing pushes further). A per-sample binary search over ``c``
    (``binary_search_steps`` rounds starting at ``initial_const``; ×10 while the sample has never
    succeeded) trades norm against success; the smallest-L2 successful ``x'`` ever seen
    (margin ≥ κ) is returned. Abort-early stops a sample's round when the lowest loss of the
    last ``max_iterations // 10`` steps is not 0.01 % below that of the window before (the
    paper compares single loss values, which Adam's oscillation across the hinge makes noisy:
    on the zoo MNIST CNN the windowed rule reaches a lower norm). ``warm_start=True`` (not the
    paper) starts every round from the best adversarial found so far instead of from ``x``:
    fewer passes, slightly larger norms on MNIST (docs/attacks-optimisation.md).

    **The start** (both norms): ``w`` starts at ``atanh(u)`` with ``u`` the input rescaled to
    [−1, 1] and clamped to ``±(1 − start_margin)``, so a pixel on a bound starts
    ``start_margin·(hi − lo)/2`` inside it. The default 10⁻⁶ is the paper's code. There
    ``tanh'`` is about 10⁻⁵ and Adam, which moves ``w`` by about one learning rate per step,
    spends tens of steps before such a pixel moves at all (most of an MNIST digit is exactly 0).
    With few, large steps ``start_margin=5e-3`` (0.0025 on [0, 1], under one 8-bit intensity
    level) halves the passes for the same norm on the zoo MNIST CNN. With the paper's small
    steps and c₀ = 10⁻³ it costs more passes (rounds at too small a ``c`` no longer plateau at
    once) for the same norm. The start's offset counts in the reported norm.

    **L∞**: the paper's iterative attack (its Section V-C, ``li_attack.py``): the L∞ norm is
    replaced by the penalty ``Σ_i max(|δ_i| − τ, 0)`` and Adam minimises
    ``c·max(κ − margin, 0) + Σ_i max(|δ_i| − τ, 0)`` (same tanh variables). When a sample's loss
    falls below ``10⁻⁴·c`` while it is adversarial, that solution is kept, τ becomes
    ``decrease_factor · min(τ, ‖δ‖∞)`` and the optimisation restarts warm from the solution (Adam
    reset); when ``max_iterations`` steps pass without that, ``c`` is multiplied by
    ``const_factor`` (from ``initial_const``; the sample stops once ``c ≥ largest_const``). A
    sample is done when τ ≤ (hi − lo)/256 or ``c`` is exhausted; the last solution is returned.
    Unlike the original, which attacks one image at a time, every sample runs this schedule on
    its own in one batch.

    Args:
        norm: ``"l2"`` (default) or ``"linf"``.
        confidence: κ ≥ 0, the margin required of an adversarial example (0).
        learning_rate: Adam step (1e-2 for L2, 5e-3 for L∞, the paper's values).
        max_iterations: Adam steps per binary-search round (L2) or per value of ``c`` (L∞)
            (1000; the original L2 code used 10000 with early abort).
        binary_search_steps: L2 only: rounds of the search over ``c`` (9).
        initial_const: first ``c`` (1e-3 for L2, 1e-5 for L∞).
        abort_early: L2 only: stop a round for a sample once its loss plateaus (True).
        warm_start: L2 only: start each round from the best adversarial so far (False: the
            paper restarts from ``x``).
        start_margin: how far inside the bounds the tanh variables start, as a share of the
            half-range (1e-6, the paper's code; 5e-3 for short, large-step schedules). In (0, 1).
        largest_const, const_factor, decrease_factor, reduce_const: L∞ only: the cap on ``c``
            (20), its growth factor (2), τ's shrink factor (0.9), and whether to halve ``c``
            after each success (False).
        bounds, mask, threat: see :class:`~advex.threats.ThreatModel` (no ``eps``: use
            ``result.at_eps(eps, x)`` for a fixed-budget result).

    Cost: L2: at most ``binary_search_steps × max_iterations`` forward+backward passes per
    sample, fewer with ``abort_early``. The paper's defaults are slow on CPU (about 3,200 passes
    per MNIST digit); on the zoo MNIST CNN ``binary_search_steps=2, max_iterations=100,
    learning_rate=0.1, initial_const=1.0, start_margin=5e-3`` (≈ 175 passes) is at least as
    strong as Foolbox's C&W with 5 × 100 steps (500 passes).
    L∞: ``max_iterations`` passes per value of ``c`` tried plus the passes of each τ level (each
    level typically takes tens of passes).

    >>> result = CW(norm="l2")(model, x, y)                      # result.norms: L2 per sample
    >>> fast = CW(binary_search_steps=2, max_iterations=100, learning_rate=0.1, initial_const=1.0,
    ...           start_margin=5e-3)
    >>> fixed = fast(model, x, y, target=3).at_eps(2.0, x)   # success iff L2 ≤ 2
    """

    name = "cw"
    aliases = ("carlini-wagner",)
    norms = ("l2", "linf")
    minimum_norm = True

    def __init__(
        self,
        norm: str = "l2",
        *,
        confidence: float = 0.0,
        learning_rate: float | None = None,
        max_iterations: int = 1000,
        binary_search_steps: int | None = None,
        initial_const: float | None = None,
        abort_early: bool | None = None,
        warm_start: bool | None = None,
        largest_const: float | None = None,
        const_factor: float | None = None,
        decrease_factor: float | None = None,
        reduce_const: bool | None = None,
        start_margin: float = 1e-6,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        norm = str(norm).lower().replace("∞", "inf")
        norm = {"2": "l2", "inf": "linf", "li": "linf", "l_inf": "linf"}.get(norm, norm)
        if norm not in ("l2", "linf"):
            raise ValueError(f"CW: norm must be 'l2' or 'linf', got {norm!r}")
        super().__init__(
            min_norm_threat(threat, norm, bounds, mask, "CW"), seed=seed, eot_samples=eot_samples
        )
        self.norm = norm
        self.confidence = check_positive("confidence", confidence, allow_zero=True)
        self.max_iterations = check_positive("max_iterations", max_iterations, integer=True)
        self.start_margin = check_positive("start_margin", start_margin)
        if not self.start_margin < 1:
            raise ValueError(f"start_margin must be in (0, 1), got {start_margin!r}")
        if norm == "l2":
            bad = {
                "largest_const": largest_const,
                "const_factor": const_factor,
                "decrease_factor": decrease_factor,
                "reduce_const": reduce_const,
            }
            given = [k for k, v in bad.items() if v is not None]
            if given:
                raise ValueError(f"CW: {', '.join(given)} only apply to norm='linf'")
            self.learning_rate = check_positive(
                "learning_rate", 1e-2 if learning_rate is None else learning_rate
            )
            self.binary_search_steps = check_positive(
                "binary_search_steps",
                9 if binary_search_steps is None else binary_search_steps,
                integer=True,
            )
            self.initial_const = check_positive(
                "initial_const", 1e-3 if initial_const is None else initial_const
            )
            self.abort_early = True if abort_early is None else bool(abort_early)
            self.warm_start = False if warm_start is None else bool(warm_start)
        else:
            given = [
                k
                for k, v in {
                    "binary_search_steps": binary_search_steps,
                    "abort_early": abort_early,
                    "warm_start": warm_start,
                }.items()
                if v is not None
            ]
            if given:
                raise ValueError(f"CW: {', '.join(given)} only apply to norm='l2'")
            self.learning_rate = check_positive(
                "learning_rate", 5e-3 if learning_rate is None else learning_rate
            )
            self.initial_const = check_positive(
                "initial_const", 1e-5 if initial_const is None else initial_const
            )
            self.largest_const = check_positive(
                "largest_const", 20.0 if largest_const is None else largest_const
            )
            if self.largest_const <= self.initial_const:
                raise ValueError(
                    f"largest_const ({self.largest_const}) must exceed initial_const "
                    f"({self.initial_const})"
                )
            self.const_factor = float(2.0 if const_factor is None else const_factor)
            if not self.const_factor > 1:
                raise ValueError(f"const_factor must be > 1, got {const_factor!r}")
            self.decrease_factor = float(0.9 if decrease_factor is None else decrease_factor)
            if not 0 < self.decrease_factor < 1:
                raise ValueError(f"decrease_factor must be in (0, 1), got {decrease_factor!r}")
            self.reduce_const = bool(reduce_const) if reduce_const is not None else False

    # ----------------------------------------------------------------------------------------
    def _attack(self, caller, x, goal, done, clean_logits):
        out = x.clone()
        rows = (~done).nonzero().squeeze(1)
        if rows.numel() == 0:
            return out
        run = self._attack_l2 if self.norm == "l2" else self._attack_linf
        out[rows] = run(caller, x[rows], goal[rows], rows)
        return out

    def _grad_w(self, w, g_x):
        """Chain rule through the tanh change of variables (and the mask)."""
        lo, hi = self.threat.box.bounds_for(w)
        g = g_x * ((hi - lo) / 2) * (1 - torch.tanh(w) ** 2)
        return self.threat.apply_mask(g)

    def _to_x(self, w, x0):
        lo, hi = self.threat.box.bounds_for(x0)
        xp = _tanh_to_x(w, lo, hi)
        m = self.threat._mask_for(x0)
        return xp if m is None else torch.where(m, xp, x0)

    # -- L2 ------------------------------------------------------------------------------------
    def _attack_l2(self, caller: ModelCaller, xs, gs: Goal, rows):
        lo, hi = self.threat.box.bounds_for(xs)
        kappa = self.confidence
        n = xs.shape[0]
        w0 = _x_to_tanh(xs, lo, hi, self.start_margin)
        const = torch.full((n,), self.initial_const, dtype=xs.dtype, device=xs.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, UNBOUNDED)
        best_l2 = torch.full_like(const, math.inf)
        best_x = xs.clone()
        best_w = w0.clone()  # the w of best_x: warm starts resume from it exactly
        check_every = max(self.max_iterations // 10, 1)
        repeat = self.binary_search_steps >= 10
        for bs in range(self.binary_search_steps):
            if repeat and bs == self.binary_search_steps - 1:
                const = torch.where(upper < 1e9, upper, const)
            act = torch.arange(n, device=xs.device)  # rows of xs still optimised this round
            # warm start (optional): resume from the best adversarial found so far
            w = best_w.clone() if self.warm_start else w0.clone()
            adam = RowAdam(w, self.learning_rate)
            plateau = Plateau(const, check_every, 0.9999) if self.abort_early else None
            succeeded = torch.zeros(n, dtype=torch.bool, device=xs.device)
            for it in range(self.max_iterations):
                xa, ga, ca = xs[act], gs[act], const[act]
                xp = self._to_x(w, xa)
                logits, marg, g = caller.value_and_grad(
                    xp, lambda z, ga=ga: margin(z, ga, kappa), rows[act]
                )
                delta = xp - xa
                l2sq = flat(delta).pow(2).sum(1)
                loss = l2sq + ca * (kappa - marg).clamp_min(0)
                # bookkeeping on the evaluated point
                ok = confident_success(logits, ga, kappa)
                if bool(ok.any()):
                    succeeded[act[ok]] = True
                    better = ok & (l2sq < best_l2[act])
                    bi = act[better]
                    best_l2[bi] = l2sq[better]
                    best_x[bi] = xp[better]
                    best_w[bi] = w[better]
                stop = None if plateau is None else plateau.stop(act, loss, it)
                if it == self.max_iterations - 1:
                    break
                # f = max(κ − margin, 0): no pull towards the goal once the margin reaches κ
                pull = (marg < kappa).to(g.dtype) * ca
                gx = 2 * delta - per_sample(pull, g) * g
                w = adam.step(w, self._grad_w(w, gx))
                if stop is not None:
                    keep = ~stop
                    if not bool(keep.any()):
                        break
                    act, w = act[keep], w[keep]
                    adam.keep(keep)
            search_update(const, lower, upper, succeeded)
        warn_never_adversarial("CW-L2", upper, const)
        return best_x

    # -- L∞ ------------------------------------------------------------------------------------
    def _attack_linf(self, caller: ModelCaller, xs, gs: Goal, rows):
        lo, hi = self.threat.box.bounds_for(xs)
        kappa = self.confidence
        n = xs.shape[0]
        # τ bounds |δ| in every feature: start at the widest range of the box
        span = hi - lo if self.threat.box.scalar else float((hi - lo).max())
        tau_min = span / 256
        act = torch.arange(n, device=xs.device)
        w = _x_to_tanh(xs, lo, hi, self.start_margin)
        adam = RowAdam(w, self.learning_rate)
        const = torch.full((n,), self.initial_const, dtype=xs.dtype, device=xs.device)
        tau = torch.full_like(const, span)
        iters = torch.zeros(n, dtype=torch.long, device=xs.device)  # steps at the current c
        best_x = xs.clone()
        while act.numel():
            xa, ga = xs[act], gs[act]
            xp = self._to_x(w, xa)
            logits, marg, g = caller.value_and_grad(
                xp, lambda z, ga=ga: margin(z, ga, kappa), rows[act]
            )
            delta = xp - xa
            c, t = const[act], per_sample(tau[act], xp)
            over = (delta.abs() - t).clamp_min(0)
            loss = c * (kappa - marg) + flat(over).sum(1)
            solved = (loss < 1e-4 * c) & confident_success(logits, ga, kappa)
            # not solved: one Adam step; solved: keep this point as the new warm start
            gx = (delta.abs() > t).to(xp.dtype) * delta.sign() - per_sample(c, g) * g
            stepped = adam.step(w, self._grad_w(w, gx))
            sv = per_sample(solved, w)
            w = torch.where(sv, w, stepped)
            adam.m = torch.where(sv, torch.zeros_like(w), adam.m)
            adam.v = torch.where(sv, torch.zeros_like(w), adam.v)
            adam.t = torch.where(solved, torch.zeros_like(adam.t), adam.t)
            finished = torch.zeros_like(solved)
            if bool(solved.any()):
                si = act[solved]
                best_x[si] = xp[solved]
                size = flat(delta[solved]).abs().amax(1)
                tau[si] = torch.minimum(tau[si], size) * self.decrease_factor
                iters[si] = 0
                if self.reduce_const:
                    const[si] = const[si] / 2
                finished |= solved & (tau[act] <= tau_min)
            unsolved = act[~solved]
            iters[unsolved] += 1
            grow = ~solved & (iters[act] >= self.max_iterations)
            if bool(grow.any()):
                gi = act[grow]
                const[gi] = const[gi] * self.const_factor
                iters[gi] = 0
                finished |= grow & (const[act] >= self.largest_const)
            if bool(finished.any()):
                keep = ~finished
                act, w = act[keep], w[keep]
                adam.keep(keep)
        return best_x

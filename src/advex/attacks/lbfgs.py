"""L-BFGS attack (Szegedy et al. 2013), the method that first found adversarial examples."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import fmin_l_bfgs_b

from ..core.goals import Goal
from ..threats import ThreatModel
from .base import Attack, ModelCaller, check_positive
from .minnorm import flat, min_norm_threat

__all__ = ["LBFGS"]


class LBFGS(Attack):
    """Box-constrained L-BFGS attack (Szegedy et al. 2013, "Intriguing properties of neural
    networks").

    Minimum-norm, targeted attack in L2. For each sample it minimises
    ``c·‖r‖₂² + CE(x + r, t)`` subject to ``x + r ∈ [lo, hi]`` with box-constrained L-BFGS
    (scipy's L-BFGS-B), then searches over ``c`` for the smallest perturbation that still reaches
    the target ``t``: a larger ``c`` weighs the norm more, so the search looks for the largest
    successful ``c`` (the paper writes the same search as "the minimum c" of the equivalent
    form ``‖r‖ + CE/c``). Per sample, ``c`` is multiplied (after a success) or divided (after a
    failure) by 10 until the sample has both a successful and a failing value, then bisected
    geometrically; the smallest-L2 adversarial found over all ``search_steps`` rounds is
    returned.

    The whole batch is one L-BFGS-B problem per round: the objective is the sum of the
    per-sample objectives, which are separable, so its minimiser is every sample's minimiser,
    and each function evaluation is one forward+backward pass of the batch. Frozen features of
    a ``mask`` get the bound ``[x_i, x_i]``.

    Args:
        initial_const: first ``c`` for every sample (1e-2).
        search_steps: rounds of the search over ``c`` (10).
        max_iterations: L-BFGS iterations per round (100; at most ``2 × max_iterations``
            function evaluations).
        bounds, mask, threat: see :class:`~advex.threats.ThreatModel` (no ``eps``).

    Cost: at most ``search_steps × 2 × max_iterations`` forward+backward passes per sample.
    Targeted only (``target=`` is required), as in the paper.

    >>> result = LBFGS()(model, x, y, target=(y + 1) % 10)     # result.norms: L2 per sample
    >>> result.at_eps(2.0, x).success_rate
    """

    name = "lbfgs"
    norms = ("l2",)
    minimum_norm = True
    targeted_only = True

    def __init__(
        self,
        *,
        initial_const: float = 1e-2,
        search_steps: int = 10,
        max_iterations: int = 100,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            min_norm_threat(threat, "l2", bounds, mask, "LBFGS"), seed=seed, eot_samples=eot_samples
        )
        self.initial_const = check_positive("initial_const", initial_const)
        self.search_steps = check_positive("search_steps", search_steps, integer=True)
        self.max_iterations = check_positive("max_iterations", max_iterations, integer=True)

    def _attack(self, caller, x, goal, done, clean_logits):
        out = x.clone()
        rows = (~done).nonzero().squeeze(1)
        if rows.numel():
            out[rows] = self._run(caller, x[rows], goal[rows], rows)
        return out

    def _box(self, xs: torch.Tensor) -> np.ndarray:
        box = self.threat.box
        n = xs.numel()
        if box.scalar:
            lower = np.full(n, box.lo, dtype=np.float64)
            upper = np.full(n, box.hi, dtype=np.float64)
        else:
            lower = box.lo_like(xs).reshape(-1).cpu().double().numpy().copy()
            upper = box.hi_like(xs).reshape(-1).cpu().double().numpy().copy()
        m = self.threat._mask_for(xs)
        if m is not None:
            frozen = (~m.expand_as(xs)).reshape(-1).cpu().numpy()
            flat = xs.detach().reshape(-1).cpu().double().numpy()
            lower[frozen] = flat[frozen]
            upper[frozen] = flat[frozen]
        return np.stack([lower, upper], axis=1)

    def _run(self, caller: ModelCaller, xs, gs: Goal, rows):
        n = xs.shape[0]
        shape, dtype, device = xs.shape, xs.dtype, xs.device
        box = self._box(xs)
        x0 = xs.detach().reshape(-1).cpu().double().numpy()
        target = gs.target
        const = torch.full((n,), self.initial_const, dtype=torch.float64)
        succ_c = torch.full((n,), math.nan, dtype=torch.float64)  # largest c that worked
        fail_c = torch.full((n,), math.nan, dtype=torch.float64)  # smallest c that failed
        best_l2 = torch.full((n,), math.inf, dtype=dtype, device=device)
        best_x = xs.clone()

        for _ in range(self.search_steps):
            c_dev = const.to(device=device, dtype=dtype)

            def objective(v: np.ndarray, c_dev=c_dev) -> tuple[float, np.ndarray]:
                xp = torch.from_numpy(v).to(device=device, dtype=dtype).reshape(shape)

                x_leaf, logits = caller.forward_with_graph(xp, rows)
                with torch.enable_grad():
                    r = x_leaf - xs
                    obj = c_dev * flat(r).pow(2).sum(1) + F.cross_entropy(
                        logits, target, reduction="none"
                    )
                g = caller.input_grad(obj, x_leaf, rows)
                return float(obj.detach().sum()), g.reshape(-1).cpu().double().numpy()

            v, _, _ = fmin_l_bfgs_b(
                objective,
                x0.copy(),
                bounds=box,
                maxiter=self.max_iterations,
                maxfun=2 * self.max_iterations,
                m=10,
                factr=1e7,
                pgtol=1e-8,
            )
            xp = torch.from_numpy(v).to(device=device, dtype=dtype).reshape(shape)
            xp = self.threat.clamp(xp)
            logits = caller.logits(xp, rows)
            ok = gs.is_success(logits)
            l2 = flat(xp - xs).norm(dim=1)
            better = ok & (l2 < best_l2)
            best_l2 = torch.where(better, l2, best_l2)
            best_x[better] = xp[better]
            okc = ok.cpu()
            succ_c = torch.where(okc, torch.fmax(succ_c, const), succ_c)
            fail_c = torch.where(~okc, torch.fmin(fail_c, const), fail_c)
            bracketed = ~succ_c.isnan() & ~fail_c.isnan()
            const = torch.where(
                bracketed,
                (succ_c * fail_c).sqrt(),
                torch.where(okc, const * 10, const / 10),
            )
        return best_x

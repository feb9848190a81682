"""The tabular threat: a budget in standardised (optionally importance-weighted) units, inside a
:class:`~advex.data.schema.Schema` (ranges, integer / binary / one-hot columns, immutable
columns, linear and non-linear relations), with a repair step that returns a valid point.

Perturbations are measured per feature in units of the feature's ``scale`` (its standard
deviation by default) and optionally weighted: ``distance = ‖w ⊙ (x_adv − x) / s‖_p`` with
``p`` = ∞ or 2 and ``w`` the LowProFool importance weights (Ballet et al. 2019) or 1. Budget
0.5 under L∞ means: no feature moves by more than half its standard deviation.

The repair (:meth:`TabularThreat.project`), for every row:

1. immutable columns are reset to the clean value;
2. **continuous repair** — Dykstra's alternating projections (Boyle & Dykstra 1986) in the
   threat's metric ``‖w ⊙ Δ / s‖₂`` onto the convex sets: the per-feature box (feature ranges,
   intersected with the L∞ budget), the L2 budget ball, each linear constraint's slab
   ``low ≤ a·x ≤ high`` (exact projection onto a slab); a non-linear relation is projected onto
   its linearisation at the current point (a Gauss-Newton step, no Dykstra correction). Up to
   ``repair_steps`` sweeps, stopping when every constraint holds to 1e-9; the box comes last in
   a sweep, so ranges always hold exactly;
3. **discrete fixes** — integer and binary columns are rounded to the nearest integer, or toward
   the clean value when the nearest one leaves the box or budget; one-hot groups take their
   largest entry (the clean category when the switch does not fit the budget);
4. a second continuous repair with the discrete columns frozen;
5. a **final check** (:meth:`TabularThreat.contains`); a row that fails is tried again with its
   discrete columns at their clean values, and a row that still fails comes back as the clean
   point (which the input check proved valid). Hence every output is valid, always.

>>> schema = advex.data.breast_cancer("train").schema
>>> threat = TabularThreat(schema, eps=0.5, norm="linf")
>>> x_adv = threat.project(x + delta, x)              # closest valid point (see above)
>>> threat.contains(x_adv, x).all()                    # True
>>> threat.verdicts(x_adv, x).rates()                  # per check, share of rows passing
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data.schema import Schema, SchemaError, Verdicts
from .base import Threat, check_float_batch
from .lp import check_budget, round_toward
from .norms import Rng, get_norm

__all__ = ["TabularThreat"]


class TabularThreat(Threat):
    """Budget in standardised units inside a feature schema, with repair.

    Args:
        schema: the :class:`~advex.data.schema.Schema` (its features' ``scale`` is the
            unit of the budget unless ``scale`` is given).
        eps: budget in standardised units (``None``: unbounded, constraints only).
        norm: ``"linf"`` (per feature: ``|Δ_i| ≤ eps · s_i / w_i``) or ``"l2"``.
        scale: per-feature scales ``(D,)`` (default: the schema's; an error names a feature
            without one).
        weights: importance weights ``(D,)``, > 0 (LowProFool's weighted norm); default 1.
        repair_steps: maximum Dykstra sweeps of a repair.

    Shapes: ``x`` and ``x_adv`` are ``(B, D)`` with ``D = len(schema)``; ``distance`` and
    ``contains`` return ``(B,)``.

    >>> threat = TabularThreat(schema, eps=0.5)                       # 0.5 std per feature
    >>> threat.verdicts(x_adv, x).summary()                            # every check, every row
    """

    def __init__(
        self,
        schema: Schema,
        eps: float | None = None,
        norm: str = "linf",
        *,
        scale: Any = None,
        weights: Any = None,
        repair_steps: int = 30,
    ) -> None:
        if not isinstance(schema, Schema):
            raise TypeError(f"schema must be an advex Schema, got {type(schema).__name__}")
        self.schema = schema
        self.eps = check_budget(eps)
        self.lp = get_norm(norm)
        if self.lp.name not in ("linf", "l2"):
            raise ValueError(f"TabularThreat supports norm 'linf' or 'l2', got {norm!r}")
        if scale is None:
            missing = [f.name for f in schema.features if f.scale is None]
            if missing:
                raise SchemaError(
                    f"feature {missing[0]!r} has no scale (the unit of the budget): give each "
                    "feature a 'scale' in the schema, call schema.fit_scales(x_train), or pass "
                    "scale="
                )
            scale = [f.scale for f in schema.features]
        self.scale = self._vector(scale, "scale")
        self.weights = None if weights is None else self._vector(weights, "weights")
        if isinstance(repair_steps, bool) or int(repair_steps) < 1:
            raise ValueError(f"repair_steps must be an integer >= 1, got {repair_steps!r}")
        self.repair_steps = int(repair_steps)

    def _vector(self, v: Any, what: str) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.float64).reshape(-1).clone()
        if t.numel() != len(self.schema):
            raise ValueError(f"{what} has {t.numel()} values for {len(self.schema)} features")
        bad = ~(torch.isfinite(t) & (t > 0))
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            raise ValueError(
                f"{what} of feature {self.schema.names[j]!r} must be a finite number > 0, got "
                f"{float(t[j])}"
            )
        return t

    # -- attributes -----------------------------------------------------------------------------
    @property
    def norm(self) -> str:
        return self.lp.name

    @property
    def budget(self) -> float | None:
        return self.eps

    @property
    def bounds(self) -> tuple[float, float]:
        """``(lowest, highest)`` finite value of any feature's range (for reports; the
        per-feature ranges are in the schema)."""
        lo = [f.low for f in self.schema.features if math.isfinite(f.low)]
        hi = [f.high for f in self.schema.features if math.isfinite(f.high)]
        return (min(lo) if lo else -math.inf, max(hi) if hi else math.inf)

    def with_budget(self, eps: float | None) -> TabularThreat:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.eps = check_budget(eps)
        return new

    def unit(self, like: torch.Tensor) -> torch.Tensor:
        """``s / w`` per feature: how far one unit of budget moves each feature, ``(D,)``."""
        u = self.scale if self.weights is None else self.scale / self.weights
        return u.to(device=like.device, dtype=like.dtype)

    def _eps(self, eps) -> float:
        e = self.eps if eps is None else eps
        return math.inf if e is None else float(e)

    # -- geometry ---------------------------------------------------------------------------------
    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest ascent of unit budget for ``grad`` (in the feature space): the norm's step in
        standardised units, mapped back (``× s / w``); immutable columns get no step."""
        u = self.unit(grad)
        step = self.lp.steepest(grad * u) * u
        return step * self.schema.mutable(grad.device).to(grad.dtype)

    def random_start(
        self, x: torch.Tensor, rng: Rng = None, eps: Any = None, *, idx: Any = None, stream="start"
    ) -> torch.Tensor:
        """A random valid point around ``x``: uniform in the budget ball (standardised units),
        then repaired."""
        e = self._eps(eps)
        if math.isinf(e):
            raise ValueError("random start needs a finite eps")
        delta = self.lp.random(x, e, rng, idx=idx, stream=stream) * self.unit(x)
        return self.project(x + delta, x)

    def feature_bounds(self, x: torch.Tensor, eps: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row, per-feature hard bounds ``(lo, hi)``, each ``(B, D)``: the ranges, the L∞
        budget, and the clean value for immutable columns."""
        lo = self.schema.low(x).expand_as(x).clone()
        hi = self.schema.high(x).expand_as(x).clone()
        e = self._eps(eps)
        if self.lp.name == "linf" and math.isfinite(e):
            r = e * self.unit(x)
            lo = torch.maximum(lo, x - r)
            hi = torch.minimum(hi, x + r)
        frozen = ~self.schema.mutable(x.device)
        lo[:, frozen] = x[:, frozen]
        hi[:, frozen] = x[:, frozen]
        return lo, hi

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: Any = None) -> torch.Tensor:
        """The repair: a valid point near ``x_adv`` for every row (the algorithm is in the
        module docstring). Returns ``x``'s dtype; never modifies its arguments."""
        if x_adv.shape != x.shape or x.dim() != 2:
            raise ValueError(
                f"x_adv {tuple(x_adv.shape)} and x {tuple(x.shape)} must both be (B, "
                f"{len(self.schema)})"
            )
        X = x.detach().double()
        Z = x_adv.detach().double().clone()
        Z = torch.nan_to_num(Z, nan=0.0)
        lo, hi = self.feature_bounds(X, eps)
        e = self._eps(eps)
        cont = self.schema.continuous(Z.device)
        mut = self.schema.mutable(Z.device)
        Z = self._repair(Z, X, lo, hi, mut, e)
        R = self._discretize(Z, X, lo, hi)
        if not bool(cont.all()):
            R = self._repair(R, X, lo, hi, mut & cont, e)
        ok = self._valid(R, X, e)
        if not bool(ok.all()):
            bad = ~ok
            Zb = Z[bad].clone()
            disc = ~cont
            Zb[:, disc] = X[bad][:, disc]
            Zb = self._repair(Zb, X[bad], lo[bad], hi[bad], mut & cont, e)
            okb = self._valid(Zb, X[bad], e)
            Zb[~okb] = X[bad][~okb]
            R[bad] = Zb
        return round_toward(R, x) if R.dtype != x.dtype else R

    def _valid(self, Z: torch.Tensor, X: torch.Tensor, e: float) -> torch.Tensor:
        # validity as stored in the caller's dtype would be checked by contains(); here in
        # float64 with a margin, so that rounding to float32 stays inside the tolerance
        ok = self.schema.verdicts(Z, tol=1e-7).all()
        if math.isfinite(e):
            ok &= self._measure(Z - X) <= e * (1 + 1e-9) + 1e-12
        frozen = ~self.schema.mutable(Z.device)
        if bool(frozen.any()):
            ok &= (Z[:, frozen] == X[:, frozen]).all(1)
        return ok

    def _measure(self, delta: torch.Tensor) -> torch.Tensor:
        return self.lp.measure(delta / self.unit(delta))

    def _plan(self, like: torch.Tensor):
        """The constraints grouped for the repair, cached per device and dtype: linear ones as
        rounds of constraints on disjoint features (a round is one convex set whose exact
        projection is the simultaneous projection onto its slabs), each ``(A (k, D), const
        (k,), low (k,), high (k,))``; relations as rounds ``[(constraint, support mask)]``; and
        every linear constraint stacked ``(A, const, low, high)`` for the violation check."""
        key = (like.device, like.dtype)
        cache = self.__dict__.setdefault("_plan_cache", {})
        if key in cache:
            return cache[key]
        D = len(self.schema)
        opts = {"dtype": like.dtype, "device": like.device}

        def support(c) -> torch.Tensor:
            m = torch.zeros(D, dtype=torch.bool, device=like.device)
            for f in c.features:
                m[self.schema.index(f)] = True
            return m

        def rounds(cons):
            out: list[list] = []
            for c in cons:
                m = support(c)
                for r in out:
                    if not bool((r[0] & m).any()):
                        r[0] |= m
                        r[1].append((c, m))
                        break
                else:
                    out.append([m.clone(), [(c, m)]])
            return [r[1] for r in out]

        lin = [c for c in self.schema.constraints if c.linear is not None]

        def stack(cs):
            A = torch.zeros(len(cs), D, **opts)
            for i, c in enumerate(cs):
                for name, v in c.linear[0].items():
                    A[i, self.schema.index(name)] += v
            t = lambda vals: torch.tensor(vals, **opts)  # noqa: E731
            return (
                A,
                t([c.linear[1] for c in cs]),
                t([c.low for c in cs]),
                t([c.high for c in cs]),
            )

        lin_rounds = [stack([c for c, _ in r]) for r in rounds(lin)]
        rel_rounds = rounds([c for c in self.schema.constraints if c.linear is None])
        plan = (lin_rounds, rel_rounds, stack(lin) if lin else None)
        cache[key] = plan
        return plan

    def _violations(self, Z, X, e: float, l2: bool) -> torch.Tensor:
        """Per-row largest relative violation of the constraints (and of an L2 budget)."""
        _, rel_rounds, lin_all = self._plan(Z)
        worst = torch.zeros(Z.shape[0], dtype=Z.dtype, device=Z.device)
        if lin_all is not None:
            A, const, low, high = lin_all
            g = Z @ A.T + const
            v = (low - g).clamp_min(0) + (g - high).clamp_min(0)
            worst = (v / (1 + g.abs())).amax(1)
        for r in rel_rounds:
            for c, _ in r:
                g = c(Z)
                v = (c.low - g).clamp_min(0) + (g - c.high).clamp_min(0)
                worst = torch.maximum(worst, torch.nan_to_num(v / (1 + g.abs()), nan=math.inf))
        if l2:
            worst = torch.maximum(worst, self._measure(Z - X) - e)
        return worst

    def _repair(self, Z, X, lo, hi, free, e: float) -> torch.Tensor:
        """Dykstra's alternating projections in the metric ‖Δ/u‖₂ (u = s/w) onto the box, the
        L2 ball and rounds of linear slabs on disjoint features; linearised (Gauss-Newton)
        projections onto the non-linear relations. Only the columns in ``free`` move; only rows
        that violate something are worked on, each until it is valid to 1e-8 (relative) or
        ``repair_steps`` sweeps are spent."""
        Z = torch.minimum(torch.maximum(Z, lo), hi)
        if Z.shape[0] == 0:
            return Z
        u = self.unit(Z)
        P = free.to(Z.dtype) * u**2  # the inverse metric restricted to free columns
        lin_rounds, rel_rounds, _ = self._plan(Z)
        l2 = self.lp.name == "l2" and math.isfinite(e)
        if not lin_rounds and not rel_rounds and not l2:
            return Z
        rows = (self._violations(Z, X, e, l2) > 1e-8).nonzero().squeeze(1)
        if rows.numel() == 0:
            return Z
        Z = Z.clone()
        z, x0, lo_r, hi_r = Z[rows], X[rows], lo[rows], hi[rows]
        incr = [torch.zeros_like(z) for _ in range(len(lin_rounds) + 2)]
        for _ in range(self.repair_steps):
            for k, slabs in enumerate(lin_rounds):  # exact, with Dykstra's corrections
                y = z + incr[k]
                z = _slabs(y, *slabs, P)
                incr[k] = y - z
            for r in rel_rounds:  # Gauss-Newton projections onto the linearisations
                z = _relation_round(z, r, P)
            if l2:
                k = len(lin_rounds)
                y = z + incr[k]
                z = x0 + self.lp.project((y - x0) / u, e) * u
                incr[k] = y - z
            k = len(lin_rounds) + 1
            y = z + incr[k]
            z = torch.minimum(torch.maximum(y, lo_r), hi_r)
            incr[k] = y - z
            open_ = self._violations(z, x0, e, l2) > 1e-8
            if not bool(open_.all()):
                done = ~open_
                Z[rows[done]] = z[done]
                keep = open_
                rows, z, x0, lo_r, hi_r = rows[keep], z[keep], x0[keep], lo_r[keep], hi_r[keep]
                incr = [t[keep] for t in incr]
                if rows.numel() == 0:
                    break
        if rows.numel():
            Z[rows] = z
        return Z

    def _discretize(self, Z, X, lo, hi) -> torch.Tensor:
        R = Z.clone()
        integral = self.schema.integral(Z.device)
        if bool(integral.any()):
            z, x0 = Z[:, integral], X[:, integral]
            r = z.round()
            toward = x0 + (z - x0).trunc()
            out = (r < lo[:, integral] - 1e-9) | (r > hi[:, integral] + 1e-9)
            R[:, integral] = torch.where(out, toward, r)
        for idx in self.schema.groups.values():
            block, clean = Z[:, idx], X[:, idx]
            choice = torch.zeros_like(block)
            choice.scatter_(1, block.argmax(1, keepdim=True), 1.0)
            fits = ((choice >= lo[:, idx] - 1e-9) & (choice <= hi[:, idx] + 1e-9)).all(1)
            R[:, idx] = torch.where(fits[:, None], choice, clean)
        return R

    def finalize(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Rows that are not valid (an attack that skipped the repair) are repaired here."""
        ok = self.contains(x_adv, x)
        if bool(ok.all()):
            return x_adv
        out = x_adv.clone()
        out[~ok] = self.project(x_adv[~ok], x[~ok]).to(x_adv.dtype)
        return out

    # -- measurement ----------------------------------------------------------------------------
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-row ``‖w ⊙ (x_adv − x) / s‖_p``, shape ``(B,)`` (float64 arithmetic, returned in
        ``x``'s dtype)."""
        return self._measure(x_adv.double() - x.double()).to(x.dtype)

    def verdicts(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> Verdicts:
        """Every check on every row: the schema's (ranges, integrality, one-hot groups, each
        constraint), ``immutable:<feature>`` and ``budget``."""
        v = self.schema.verdicts(x_adv, tol)
        names, cols = list(v.names), [v.ok]
        xa, x0 = x_adv.detach().double(), x.detach().double()
        for j, f in enumerate(self.schema.features):
            if not f.mutable:
                names.append(f"immutable:{f.name}")
                cols.append((xa[:, j] == x0[:, j])[:, None])
        if self.eps is not None:
            names.append("budget")
            cols.append((self._measure(xa - x0) <= self.eps * (1 + tol) + tol)[:, None])
        return Verdicts(names, torch.cat(cols, 1))

    def contains(
        self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6, *, per_constraint=False
    ) -> Any:
        """Per-row bool ``(B,)``: every check of :meth:`verdicts` passes (with
        ``per_constraint=True``: the :class:`~advex.data.schema.Verdicts` themselves)."""
        v = self.verdicts(x_adv, x, tol)
        return v if per_constraint else v.all()

    def check_inputs(self, x: torch.Tensor, *, name: str = "x") -> None:
        """A finite float ``(B, D)`` batch that satisfies the schema (errors name the feature,
        the row and the value)."""
        check_float_batch(x, name=name, example=f"float32 rows of {len(self.schema)} features")
        self.schema.check_data(x, what=name)

    # -- description ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "threat": "tabular",
            "norm": self.norm,
            "eps": self.eps,
            "units": "standardised" if self.weights is None else "importance-weighted standardised",
            "schema": self.schema.name,
            "features": len(self.schema),
            "immutable": [f.name for f in self.schema.features if not f.mutable],
            "constraints": [c.name for c in self.schema.constraints],
        }

    def describe(self) -> str:
        eps = "unbounded" if self.eps is None else f"eps={self.eps:g} std"
        return (
            f"tabular {self.norm}, {eps}, schema {self.schema.name!r} ({len(self.schema)} "
            f"features, {len(self.schema.constraints)} constraints)"
        )

    def __repr__(self) -> str:
        return f"TabularThreat({self.describe()})"


def _slabs(Y, A, const, low, high, P) -> torch.Tensor:
    """Closest point of ``{low ≤ A z + const ≤ high}`` to each row of ``Y`` in the metric with
    inverse ``diag(P)``, for rows of ``A`` on disjoint columns (columns with ``P = 0`` do not
    move; a slab with no free column is left as is)."""
    g = Y @ A.T + const
    PA = P * A  # (k, D)
    denom = (A * PA).sum(1)
    t = torch.where(g > high, g - high, torch.where(g < low, g - low, torch.zeros_like(g)))
    t = torch.where(denom > 0, t / denom.clamp_min(1e-300), torch.zeros_like(t))
    return Y - t @ PA


def _relation_round(Z, rnd, P) -> torch.Tensor:
    """One Gauss-Newton projection onto each relation of a round (relations on disjoint
    features, done at once): the closest point (metric ``diag(P)``) of the linearisation of
    ``g`` at ``Z``."""
    with torch.enable_grad():
        z = Z.detach().requires_grad_(True)
        gs = [c(z) for c, _ in rnd]
        (grad,) = torch.autograd.grad(sum(g.sum() for g in gs), z)
    grad = torch.nan_to_num(grad, nan=0.0)
    total = torch.zeros_like(Z)
    for (c, m), g in zip(rnd, gs, strict=True):
        g = torch.nan_to_num(g.detach(), nan=0.0)
        t = torch.where(
            g > c.high, g - c.high, torch.where(g < c.low, g - c.low, torch.zeros_like(g))
        )
        # aim slightly inside the interval so the next linearisation does not undershoot
        width = c.high - c.low
        inset = 1e-6 * (1 + g.abs())
        if math.isfinite(width):
            inset = torch.clamp(inset, max=width / 4)
        t = torch.where(t > 0, t + inset, torch.where(t < 0, t - inset, t))
        gc = grad * m
        Pg = P * gc
        denom = (gc * Pg).sum(1)
        step = torch.where(denom > 0, t / denom.clamp_min(1e-300), torch.zeros_like(t))
        total = total + step[:, None] * Pg
    return Z - total

"""Decision-based attacks: they see only the predicted label (HopSkipJump, Boundary, RayS).

Every attack here works on any model, including hard-label black boxes
(:class:`~advex.models.LabelBlackBox`, a label-only :class:`~advex.models.CallableAdapter`):
the only thing read from a model call is whether the point reaches the goal (``argmax`` of the
output). All three are batched across points, with one **exact query budget per point**:
``max_queries`` counts every model evaluation of a point, the base prologue's clean pass and
final re-prediction included, so ``result.queries <= max_queries`` always; a point stops as soon
as its budget is spent, or (with ``eps``) as soon as it is adversarial within ``eps``.

Without ``eps`` they are minimum-norm searches: ``x_adv`` is the closest adversarial point
found (``result.norms`` its distance; ``result.at_eps(eps, x)`` scores it at a budget). With
``eps`` a point inside the ball ends its search early and ``x_adv`` is projected into the ball.

Pass a :class:`QueryCurve` as ``curve=`` to record, per point, the best distance after every
query spent (``curve.distance_at(1000)``, ``curve.median_at([1000, 5000])``).

Starting points (``start="noise"``, default, as in the papers): a uniform-noise draw that
reaches the goal (up to ``init_tries`` per point, counted), else the nearest other point of the
batch that the model already puts in a goal class (known from the clean pass: no extra query),
else the nearest such point of the data given to :meth:`DecisionAttack.fit` (needed for
targeted attacks on small batches). ``start="data"`` tries the known points first.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.goals import Goal
from ..threats import ThreatModel
from .base import Attack, ModelCaller, check_positive, check_steps, make_threat

__all__ = [
    "BoundaryAttack",
    "DecisionAttack",
    "HopSkipJump",
    "QueryCurve",
    "RayS",
    "summarise_curve",
]


class QueryCurve:
    """Per-point best distance as a function of the queries spent, recorded by a decision-based
    attack (pass it as ``curve=``). Each attack call starts a new run (``runs``).

    >>> curve = QueryCurve()
    >>> HopSkipJump(max_queries=10_000, curve=curve)(model, x, y)
    >>> curve.median_at([1000, 5000, 10_000])   # median L2 at each budget
    """

    def __init__(self) -> None:
        #: one list of ``(points, queries, distances)`` records per attack call
        self.runs: list[dict[str, Any]] = []

    def start(self, n: int) -> None:
        self.runs.append({"n": int(n), "idx": [], "q": [], "d": []})

    def record(self, idx: torch.Tensor, queries: torch.Tensor, dist: torch.Tensor) -> None:
        run = self.runs[-1]
        run["idx"].append(idx.detach().cpu())
        run["q"].append(queries.detach().cpu().long())
        run["d"].append(dist.detach().cpu().double())

    def distance_at(self, budget: int, run: int | None = -1) -> torch.Tensor:
        """``(N,)`` best distance of each point with at most ``budget`` queries spent (the clean
        pass included; inf where no adversarial point was known yet). ``run=None``: the
        points of every run, concatenated."""
        if run is None:
            if not self.runs:
                return torch.zeros(0, dtype=torch.float64)
            return torch.cat([self.distance_at(budget, r) for r in range(len(self.runs))])
        r = self.runs[run]
        out = torch.full((r["n"],), math.inf, dtype=torch.float64)
        if not r["idx"]:
            return out
        idx, q, d = (torch.cat(r[k]) for k in ("idx", "q", "d"))
        ok = q <= budget
        out.scatter_reduce_(0, idx[ok], d[ok], reduce="amin")
        return out

    def median_at(self, budgets, run: int | None = -1) -> list[float]:
        """Median over points of :meth:`distance_at` for each budget."""
        return [float(self.distance_at(int(b), run).median()) for b in budgets]

    @staticmethod
    def grid(max_queries: int, points: int = 24) -> list[int]:
        """Query budgets spaced geometrically from 10 (or fewer) to ``max_queries``."""
        top = max(int(max_queries), 1)
        lo = min(10, top)
        if top == lo:
            return [top]
        step = (top / lo) ** (1 / (points - 1))
        return sorted({min(top, int(round(lo * step**k))) for k in range(points)} | {top})

    def table(self, budgets, run: int | None = None) -> list[list[float | None]]:
        """Per point (rows, every run's points when ``run=None``), the best distance at each
        budget (columns); None where no adversarial point was known yet (JSON-ready)."""
        cols = [self.distance_at(int(b), run) for b in budgets]
        if not cols or cols[0].numel() == 0:
            return []
        m = torch.stack(cols, 1)
        return [[v if math.isfinite(v) else None for v in row] for row in m.tolist()]


def summarise_curve(
    table: list[list[float | None]], budgets: list[int], eps: float | None = None
) -> dict[str, Any]:
    """``{"queries", "median_distance", "within_eps", "points"}`` from a :meth:`QueryCurve.table`
    (rows: points, columns: ``budgets``): the median best distance at each budget (None while
    fewer than half the points have an adversarial) and, with ``eps``, the share of points
    with an adversarial within ``eps``."""
    n = len(table)
    out: dict[str, Any] = {"queries": [int(b) for b in budgets], "points": n}
    if n == 0:
        out["median_distance"] = [None] * len(budgets)
        return out
    t = torch.tensor(
        [[math.inf if v is None else float(v) for v in row] for row in table], dtype=torch.float64
    )
    med = t.median(0).values.tolist()
    out["median_distance"] = [v if math.isfinite(v) else None for v in med]
    if eps is not None:
        out["eps"] = float(eps)
        out["within_eps"] = (t <= float(eps) * (1 + 1e-6)).double().mean(0).tolist()
    return out


class _Oracle:
    """The goal test on batches of candidate points, counted per point, never over budget."""

    def __init__(
        self,
        caller: ModelCaller,
        goal: Goal,
        max_queries: int,
        batch_rows: int,
        curve: QueryCurve | None,
    ) -> None:
        self.caller, self.goal = caller, goal
        self.limit = max_queries - 1  # the base prologue's re-prediction is the last query
        self.batch_rows = batch_rows
        self.curve = curve

    def left(self, idx: torch.Tensor) -> torch.Tensor:
        return self.limit - self.caller.queries[idx]

    def __call__(self, xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Whether each row of ``xs`` (belonging to point ``idx[row]``) reaches the goal."""
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=xs.device)
        need = torch.bincount(idx, minlength=self.caller.queries.shape[0])
        if bool((need > self.limit - self.caller.queries).any()):  # pragma: no cover - guard
            raise RuntimeError("decision attack: a query would exceed the budget")
        out = []
        for s in range(0, xs.shape[0], self.batch_rows):
            rows = slice(s, s + self.batch_rows)
            logits = self.caller.logits(xs[rows], idx[rows])
            out.append(self.goal[idx[rows]].is_success(logits))
        return torch.cat(out)

    def note(self, idx: torch.Tensor, dist: torch.Tensor) -> None:
        if self.curve is not None and idx.numel():
            self.curve.record(idx, self.caller.queries[idx], dist)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class DecisionAttack(Attack):
    """Shared machinery of the decision-based attacks: the budgeted oracle, starting points,
    the boundary binary search, best-so-far bookkeeping and the query curve.

    Args (common to every decision-based attack):
        eps: optional budget; with it a point stops once adversarial within ``eps`` and
            ``x_adv`` is projected into the ball (without: minimum-norm search).
        max_queries: model evaluations per point, the clean pass and the final re-prediction
            included (``result.queries <= max_queries``).
        init_tries: uniform-noise draws per point to find a starting point.
        start: ``"noise"`` (default, the papers' order): uniform noise first, then the nearest
            known point of a goal class (the batch's clean labels, then the ``fit`` pool; no
            query); ``"data"``: the known points first (better below ~300 queries on MNIST,
            worse at 1,000).
        batch_rows: most rows per model call (points are batched together). 256 suits CPUs
            (the MNIST CNN costs 1.5 ms/row at 100-200 rows per call, 3 ms at 1,000); raise it
            on a GPU.
        curve: a :class:`QueryCurve` to record best distance vs queries per point.
        bounds, threat, seed, eot_samples: as for every attack (with EOT, one query is one
            call of the model averaged over ``eot_samples`` draws).
    """

    black_box = True
    norms: tuple[str, ...] = ("l2", "linf")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "l2",
        *,
        max_queries: int = 10_000,
        init_tries: int = 100,
        start: str = "noise",
        batch_rows: int = 256,
        curve: QueryCurve | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = make_threat(eps, norm, bounds, None, threat, need_eps=False, attack=type(self).__name__)
        if t.mask is not None:
            raise ValueError(f"{type(self).__name__} does not support a mask")
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        self.max_queries = check_steps("max_queries", max_queries)
        if self.max_queries < 3:
            raise ValueError("max_queries must be >= 3 (clean pass, one search query, re-check)")
        self.init_tries = check_steps("init_tries", init_tries)
        if start not in ("data", "noise"):
            raise ValueError(f"start must be 'data' or 'noise', got {start!r}")
        self.start = start
        self.batch_rows = check_steps("batch_rows", batch_rows)
        if curve is not None and not isinstance(curve, QueryCurve):
            raise TypeError(f"curve must be a QueryCurve, got {type(curve).__name__}")
        self.curve = curve
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- fit: a pool of starting points ---------------------------------------------------------
    def fit(self, model, data, y=None) -> DecisionAttack:
        """Keep ``data`` (inputs) and the model's labels for them as a pool of starting points
        (one query per pool sample, counted in ``self.fit_queries``). Targeted attacks need a
        point of the target class to start from; without a pool they take one from the batch.
        """
        x, _ = self._fit_data(model, data, y)
        from ..models import attack_mode

        with attack_mode(model) if isinstance(model, torch.nn.Module) else _nullctx():
            p = self._prologue(model, x, None)
        self._pool = (p.x, p.clean_logits.argmax(1))
        self.fit_queries = int(p.caller.queries.sum())
        return self

    # -- helpers ----------------------------------------------------------------------------------
    def _gen(self, x: torch.Tensor) -> torch.Generator:
        g = torch.Generator(device=x.device)
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)))
        return g.manual_seed(int(seed))

    def _dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = _flat(a - b)
        return d.abs().amax(1) if self.threat.norm == "linf" else d.norm(dim=1)

    def _clip(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.threat.box.bounds_for(x)
        return z.clamp(lo, hi) if not torch.is_tensor(lo) else torch.max(torch.min(z, hi), lo)

    def _range(self, x: torch.Tensor) -> float:
        lo, hi = self.threat.box.min_max()
        return float(hi - lo)

    def _starts(self, oracle: _Oracle, x, goal: Goal, todo, clean_logits, gen):
        """Adversarial starting points ``(B, ...)`` and a mask of the points that have one:
        in ``start`` order, known points of a goal class (the batch, whose labels the clean
        pass gave, then the ``fit`` pool; no query) and uniform noise (counted queries)."""
        n = x.shape[0]
        start = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        pending = todo.clone()
        order = ("data", "noise") if self.start == "data" else ("noise", "data")
        for how in order:
            if pending.numel() == 0:
                break
            if how == "noise":
                pending = self._noise_starts(oracle, x, pending, start, found, gen)
            else:
                pending = self._data_starts(x, goal, pending, start, found, clean_logits)
        return start, found

    def _noise_starts(self, oracle, x, pending, start, found, gen):
        lo, hi = self.threat.box.bounds_for(x)
        for _ in range(self.init_tries):
            pending = pending[oracle.left(pending) >= 2]
            if pending.numel() == 0:
                break
            u = torch.rand((pending.numel(), *x.shape[1:]), generator=gen, device=x.device)
            cand = lo + u.to(x.dtype) * (hi - lo)
            ok = oracle(cand, pending)
            start[pending[ok]] = cand[ok]
            found[pending[ok]] = True
            pending = pending[~ok]
        return pending

    def _data_starts(self, x, goal, pending, start, found, clean_logits):
        pools = [(x, clean_logits.argmax(1))]
        if self._pool is not None:
            pools.append((self._pool[0].to(x.device, x.dtype), self._pool[1].to(x.device)))
        for px, plab in pools:
            if pending.numel() == 0:
                break
            g = goal[pending]
            good = (
                plab[None, :] == g.target[:, None]
                if g.target is not None
                else plab[None, :] != g.y[:, None]
            )
            if px is x:
                good[torch.arange(pending.numel()), pending] = False
            d = torch.cdist(_flat(x[pending]).float(), _flat(px).float())
            d = d.masked_fill(~good, math.inf)
            best, j = d.min(1)
            ok = torch.isfinite(best)
            start[pending[ok]] = px[j[ok]]
            found[pending[ok]] = True
            pending = pending[~ok]
        return pending

    def _theta(self, d: int) -> float:
        # HopSkipJump's binary-search threshold (gamma = 1): d^-3/2 (L2), d^-2 (Linf)
        return 1.0 / (d * math.sqrt(d)) if self.threat.norm == "l2" else 1.0 / d**2

    def _project(self, x, xp, alpha):
        if self.threat.norm == "l2":
            a = _bc(alpha, x).to(x.dtype)
            return (1 - a) * x + a * xp
        a = _bc(alpha, x).to(x.dtype)
        return torch.max(torch.min(xp, x + a), x - a)

    def _boundary(self, oracle: _Oracle, x, xp, idx, theta: float):
        """HopSkipJump's binary search between ``x[idx]`` and adversarial ``xp`` (rows of idx):
        returns the adversarial point found closest to the boundary (per point, stopping when
        its interval is below its threshold or its budget is spent)."""
        xs = x[idx]
        if self.threat.norm == "l2":
            high = torch.ones(idx.numel(), dtype=torch.float64, device=x.device)
            thr = torch.full_like(high, theta)
        else:
            high = self._dist(xp, xs).double()
            thr = torch.clamp(high * theta, max=theta)
        low = torch.zeros_like(high)
        out = xp.clone()
        while True:
            act = ((high - low) > thr) & (oracle.left(idx) >= 1)
            rows = act.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            mid = (high[rows] + low[rows]) / 2
            cand = self._project(xs[rows], xp[rows], mid)
            ok = oracle(cand, idx[rows])
            high[rows[ok]] = mid[ok]
            out[rows[ok]] = cand[ok]
            low[rows[~ok]] = mid[~ok]
        return out

    def _finish(self, x, best, found):
        x_adv = torch.where(_bc(found, x), best, x)
        if self.threat.eps is not None:
            x_adv = self.threat.project(x_adv, x)
        return x_adv

    def _setup(self, caller, x, goal, done, clean_logits):
        if self.curve is not None:
            self.curve.start(x.shape[0])
        oracle = _Oracle(caller, goal, self.max_queries, self.batch_rows, self.curve)
        if bool(done.any()):
            oracle.note(done.nonzero().squeeze(1), torch.zeros(int(done.sum()), device=x.device))
        return oracle

    def _stop(self, oracle, idx, best_dist, need: int = 1) -> torch.Tensor:
        keep = oracle.left(idx) >= need
        if self.threat.eps is not None:
            keep &= best_dist[idx] > self.threat.eps
        return idx[keep]


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


class HopSkipJump(DecisionAttack):
    """HopSkipJump (Chen, Jordan and Wainwright 2020, "HopSkipJumpAttack: a query-efficient
    decision-based attack"), L2 and L∞, untargeted and targeted, labels only.

    From an adversarial starting point, each iteration ``t``: (1) a binary search brings the
    point to the decision boundary (threshold θ = d^{-3/2} for L2, d^{-2} for L∞, γ = 1);
    (2) the boundary's normal is estimated from ``n_t = min(init_evals·√t, max_evals)`` label
    queries at ``x_t + δ_t·u`` (u uniform on the sphere for L2, uniform in the cube then
    normalised for L∞), with δ_1 = 0.1·(box range) and δ_t = √d·θ·d_{t-1} (L2), d·θ·d_{t-1} (L∞),
    and the paper's baseline (mean decision) subtracted; (3) a geometric step of size
    ``ξ = ‖x_t − x‖/√t``, halved until the new point is adversarial, along the estimate (its
    sign for L∞); then (1) again. All points advance together in batched model calls; each has
    its own budget, iteration count and early stop.

    Args:
        eps, max_queries, init_tries, batch_rows, curve, bounds, threat, seed: see
            :class:`DecisionAttack` (``norm``: ``"l2"`` default, or ``"linf"``).
        init_evals: gradient-estimate queries at iteration 1 (100, the paper's).
        max_evals: cap of the gradient-estimate queries (10,000, the paper's).
        max_halvings: geometric step halvings before an iteration gives up its step.

    Shapes: ``x`` (B, ...) in ``bounds``; ``y`` (B,); targeted with ``target=``.

    >>> result = HopSkipJump(norm="l2", max_queries=5000)(label_only_model, x, y)
    >>> result.norms.median(), result.queries.max()   # <= 5000
    """

    name = "hopskipjump"
    aliases = ("hsja", "hsj", "hop-skip-jump")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "l2",
        *,
        max_queries: int = 10_000,
        init_evals: int = 100,
        max_evals: int = 10_000,
        max_halvings: int = 25,
        init_tries: int = 100,
        start: str = "noise",
        batch_rows: int = 256,
        curve: QueryCurve | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            eps,
            norm,
            max_queries=max_queries,
            init_tries=init_tries,
            start=start,
            batch_rows=batch_rows,
            curve=curve,
            bounds=bounds,
            threat=threat,
            seed=seed,
            eot_samples=eot_samples,
        )
        self.init_evals = check_steps("init_evals", init_evals)
        self.max_evals = check_steps("max_evals", max_evals)
        self.max_halvings = check_steps("max_halvings", max_halvings)

    def _attack(self, caller, x, goal, done, clean_logits):
        oracle = self._setup(caller, x, goal, done, clean_logits)
        gen = self._gen(x)
        d = x[0].numel()
        theta = self._theta(d)
        linf = self.threat.norm == "linf"
        todo = (~done).nonzero().squeeze(1)
        start, found = self._starts(oracle, x, goal, todo, clean_logits, gen)
        act = todo[found[todo]]
        best = start.clone()
        best_dist = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=x.device)
        cur = start.clone()
        dist_post = torch.zeros_like(best_dist)
        if act.numel():
            dist_post[act] = self._dist(start[act], x[act]).double()
            cur[act] = self._boundary(oracle, x, start[act], act, theta)
        best_dist[act] = self._dist(cur[act], x[act]).double()
        best[act] = cur[act]
        oracle.note(act, best_dist[act])
        t = 0
        while True:
            act = self._stop(oracle, act, best_dist, need=2)
            if act.numel() == 0:
                break
            t += 1
            # (2) gradient direction at the boundary point
            if t == 1:
                delta = torch.full_like(dist_post[act], 0.1 * self._range(x))
            else:
                scale = math.sqrt(d) * theta if not linf else d * theta
                delta = scale * dist_post[act]
            n_t = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            n_i = torch.clamp(oracle.left(act) - 1, max=n_t)  # keep one query for the step
            grad = self._estimate(oracle, x, cur, act, n_i, delta, gen, linf)
            update = grad.sign() if linf else grad
            # (3) geometric progression of the step size
            xi = self._dist(cur[act], x[act]).double() / math.sqrt(t)
            moved = torch.zeros(act.numel(), dtype=torch.bool, device=x.device)
            new = cur[act].clone()
            pend = torch.arange(act.numel(), device=x.device)
            for _ in range(self.max_halvings):
                pend = pend[oracle.left(act[pend]) >= 1]
                if pend.numel() == 0:
                    break
                cand = self._clip(
                    cur[act[pend]] + _bc(xi[pend], new).to(x.dtype) * update[pend], x[act[pend]]
                )
                ok = oracle(cand, act[pend])
                new[pend[ok]] = cand[ok]
                moved[pend[ok]] = True
                xi[pend[~ok]] /= 2
                pend = pend[~ok]
            mv = act[moved]
            if mv.numel():
                dist_post[mv] = self._dist(new[moved], x[mv]).double()
                cur[mv] = self._boundary(oracle, x, new[moved], mv, theta)
                dn = self._dist(cur[mv], x[mv]).double()
                better = dn < best_dist[mv]
                best[mv[better]] = cur[mv[better]]
                best_dist[mv[better]] = dn[better]
                oracle.note(mv, best_dist[mv])
        return self._finish(x, best, torch.isfinite(best_dist))

    def _estimate(self, oracle, x, cur, act, n_i, delta, gen, linf):
        """Monte-Carlo estimate of the boundary normal at ``cur[act]`` from ``n_i`` label
        queries each (baseline-subtracted), unit L2 norm per point."""
        shape = x.shape[1:]
        grads = torch.zeros((act.numel(), *shape), dtype=torch.float64, device=x.device)
        # groups of points whose rows fit in one batch_rows budget
        order = torch.arange(act.numel(), device=x.device)
        counts = n_i.clamp_min(0)
        s = 0
        while s < act.numel():
            tot, e = 0, s
            while e < act.numel() and (e == s or tot + int(counts[e]) <= self.batch_rows):
                tot += int(counts[e])
                e += 1
            grp = order[s:e]
            s = e
            reps = counts[grp]
            if int(reps.sum()) == 0:
                continue
            owner = torch.repeat_interleave(grp, reps)
            pts = act[owner]
            base = cur[pts]
            if linf:
                rv = torch.rand(base.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
            else:
                rv = torch.randn(base.shape, generator=gen, device=x.device, dtype=x.dtype)
            rv = rv / _bc(_flat(rv).norm(dim=1).clamp_min(1e-20), rv)
            dl = _bc(delta[owner], rv).to(x.dtype)
            pert = self._clip(base + dl * rv, x[pts])
            rv = (pert - base) / dl
            f = oracle(pert, pts).double() * 2 - 1
            local = owner - grp[0]  # grp is a contiguous range
            m = grp.numel()
            fsum = torch.zeros(m, dtype=torch.float64, device=x.device).index_add_(0, local, f)
            mean_f = fsum / reps.double()
            rvd = _flat(rv).double()
            rsum = torch.zeros((m, rvd.shape[1]), dtype=torch.float64, device=x.device)
            rsum.index_add_(0, local, rvd)
            frsum = torch.zeros_like(rsum).index_add_(0, local, f[:, None] * rvd)
            g = frsum - mean_f[:, None] * rsum  # sum (f - mean f) rv
            uniform = mean_f.abs() == 1  # all answers equal: the paper's fallback
            g = torch.where(uniform[:, None], mean_f[:, None] * rsum, g)
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-20)
            grads[grp] = g.reshape(m, *shape)
        return grads.to(x.dtype)


class BoundaryAttack(DecisionAttack):
    """Boundary Attack (Brendel, Rauber and Bethge 2018, "Decision-based adversarial attacks:
    reliable attacks against black-box machine learning models"), L2, labels only.

    A random walk along the decision boundary that shrinks the distance to ``x``: from an
    adversarial point at distance ``r``, an orthogonal ("spherical") step draws Gaussian noise,
    removes its component toward ``x``, scales it to ``spherical_step·r`` and projects back onto
    the sphere of radius ``r`` around ``x``; a source step then moves ``source_step·r`` toward
    ``x``. The candidate replaces the current point when it is adversarial (and closer). Both
    step sizes adapt per point (× or ÷ ``step_adaptation``) from the success rate of the
    spherical candidates (queried every ``check_every`` steps; > 0.5 grows both, < 0.2 shrinks
    both, over 10 checks) and of the candidates (> 0.25 grows, < 0.1 shrinks the source step,
    over 30 steps), as in the authors' implementation. Starts from a binary search to the
    boundary (as :class:`HopSkipJump`).

    Args:
        eps, max_queries, init_tries, batch_rows, curve, bounds, threat, seed: see
            :class:`DecisionAttack` (L2 only).
        spherical_step, source_step: initial relative step sizes (0.01, 0.01).
        step_adaptation: factor of the step-size updates (1.5).
        check_every: steps between spherical-success checks (10).

    >>> result = BoundaryAttack(max_queries=5000)(label_only_model, x, y)
    """

    name = "boundary"
    aliases = ("boundary-attack",)
    norms = ("l2",)

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "l2",
        *,
        max_queries: int = 10_000,
        spherical_step: float = 0.01,
        source_step: float = 0.01,
        step_adaptation: float = 1.5,
        check_every: int = 10,
        init_tries: int = 100,
        start: str = "noise",
        batch_rows: int = 256,
        curve: QueryCurve | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            eps,
            norm,
            max_queries=max_queries,
            init_tries=init_tries,
            start=start,
            batch_rows=batch_rows,
            curve=curve,
            bounds=bounds,
            threat=threat,
            seed=seed,
            eot_samples=eot_samples,
        )
        self.spherical_step = check_positive("spherical_step", spherical_step)
        self.source_step = check_positive("source_step", source_step)
        self.step_adaptation = check_positive("step_adaptation", step_adaptation)
        if self.step_adaptation <= 1:
            raise ValueError(f"step_adaptation must be > 1, got {step_adaptation}")
        self.check_every = check_steps("check_every", check_every)

    def _attack(self, caller, x, goal, done, clean_logits):
        oracle = self._setup(caller, x, goal, done, clean_logits)
        gen = self._gen(x)
        n = x.shape[0]
        theta = self._theta(x[0].numel())
        todo = (~done).nonzero().squeeze(1)
        start, found = self._starts(oracle, x, goal, todo, clean_logits, gen)
        act = todo[found[todo]]
        best = start.clone()
        best_dist = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        if act.numel():
            best[act] = self._boundary(oracle, x, start[act], act, theta)
            best_dist[act] = self._dist(best[act], x[act]).double()
            oracle.note(act, best_dist[act])
        dev = x.device
        sph = torch.full((n,), self.spherical_step, dtype=torch.float64, device=dev)
        src = torch.full((n,), self.source_step, dtype=torch.float64, device=dev)
        sph_ok = torch.zeros(n, device=dev)
        sph_n = torch.zeros(n, device=dev)
        step_ok = torch.zeros(n, device=dev)
        step_n = torch.zeros(n, device=dev)
        it = 0
        while True:
            act = self._stop(oracle, act, best_dist)
            act = act[src[act] > 1e-7]  # converged (the authors' source_step_convergence)
            if act.numel() == 0:
                break
            it += 1
            check = it % self.check_every == 0
            xa, cur = x[act], best[act]
            diff = _flat(xa - cur).double()  # toward the original
            r = diff.norm(dim=1, keepdim=True).clamp_min(1e-20)
            unit = diff / r
            eta = torch.randn(diff.shape, generator=gen, device=dev, dtype=torch.float64)
            eta = eta - (eta * unit).sum(1, keepdim=True) * unit
            eta = eta * (sph[act, None] * r / eta.norm(dim=1, keepdim=True).clamp_min(1e-20))
            direction = eta - diff  # from the original, before renormalising
            direction = direction * (r / direction.norm(dim=1, keepdim=True).clamp_min(1e-20))
            sph_cand = self._clip((_flat(xa).double() + direction).to(x.dtype).view_as(xa), xa)
            new_dir = _flat(sph_cand).double() - _flat(xa).double()
            length = new_dir.norm(dim=1, keepdim=True).clamp_min(1e-20)
            shrink = ((length - src[act, None] * r).clamp_min(0) / length).to(x.dtype)
            cand = xa + (shrink * new_dir.to(x.dtype)).view_as(xa)
            cand = self._clip(cand, xa)
            if check:  # the spherical candidate alone, for the step-size statistics
                two = oracle.left(act) >= 2
                rows = act[two]
                sph_ok[rows] += oracle(sph_cand[two], rows).float()
                sph_n[rows] += 1
            c_ok = oracle(cand, act)
            dn = self._dist(cand, xa).double()
            better = c_ok & (dn < best_dist[act])
            best[act[better]] = cand[better]
            best_dist[act[better]] = dn[better]
            step_ok[act] += c_ok.float()
            step_n[act] += 1
            if bool(better.any()):
                oracle.note(act[better], best_dist[act[better]])
            a = self.step_adaptation
            full = act[sph_n[act] >= 10]
            if full.numel():
                p = sph_ok[full] / sph_n[full]
                up, down = p > 0.5, p < 0.2
                sph[full[up]] *= a
                src[full[up]] *= a
                sph[full[down]] /= a
                src[full[down]] /= a
                sph_ok[full] = 0
                sph_n[full] = 0
            full = act[step_n[act] >= 30]
            if full.numel():
                p = step_ok[full] / step_n[full]
                src[full[p > 0.25]] *= a
                src[full[p < 0.1]] /= a
                step_ok[full] = 0
                step_n[full] = 0
        return self._finish(x, best, torch.isfinite(best_dist))


class RayS(DecisionAttack):
    """RayS (Chen and Gu 2020, "RayS: a ray searching method for hard-label adversarial
    attack"), L∞, labels only.

    Searches the direction ``s ∈ {−1, +1}^d`` of the ray ``x + r·s`` (clipped to the box) whose
    first adversarial radius ``r(s)`` is smallest. Hierarchically: at level ``k`` the input is
    cut into ``2^k`` blocks and, block after block, the sign of one block of the best direction
    is flipped; the flipped direction is kept when it is adversarial at the current best radius
    (one query), after a binary search of its radius down to ``tol``. The L∞ distance of the
    result is ``r``. Every point advances through the same block schedule in batched calls and
    stops on its own budget (or once ``r <= eps``).

    Args:
        eps, max_queries, batch_rows, curve, bounds, threat, seed: see
            :class:`DecisionAttack` (L∞ only; ``init_tries`` is not used: the first ray is
            ``s = +1``).
        tol: binary-search tolerance on the radius (default ``1e-3/√d``, the paper's 1e-3 on
            the unit-L2 direction).

    >>> result = RayS(eps=0.3, max_queries=10_000)(label_only_model, x, y)
    >>> result.robust_accuracy
    """

    name = "rays"
    aliases = ("ray-search",)
    norms = ("linf",)

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        max_queries: int = 10_000,
        tol: float | None = None,
        batch_rows: int = 256,
        curve: QueryCurve | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        super().__init__(
            eps,
            norm,
            max_queries=max_queries,
            batch_rows=batch_rows,
            curve=curve,
            bounds=bounds,
            threat=threat,
            seed=seed,
            eot_samples=eot_samples,
        )
        self.tol = None if tol is None else check_positive("tol", tol)

    def _attack(self, caller, x, goal, done, clean_logits):
        oracle = self._setup(caller, x, goal, done, clean_logits)
        n, d = x.shape[0], x[0].numel()
        dev = x.device
        tol = self.tol if self.tol is not None else 1e-3 / math.sqrt(d)
        rng = self._range(x)
        sgn = torch.ones((n, d), dtype=x.dtype, device=dev)
        r_best = torch.full((n,), math.inf, dtype=torch.float64, device=dev)
        best = x.clone()
        act = (~done).nonzero().squeeze(1)
        level, block = 0, 0
        first = True
        while True:
            act = self._stop(oracle, act, r_best)
            if act.numel() == 0:
                break
            att = sgn[act].clone()
            if not first:
                nblocks = 2**level
                size = math.ceil(d / nblocks)
                lo_i, hi_i = block * size, min(d, (block + 1) * size)
                att[:, lo_i:hi_i] *= -1
                block += 1
                if block == nblocks or hi_i == d:
                    level += 1
                    block = 0
            xa = x[act]
            radius = torch.where(
                torch.isfinite(r_best[act]), r_best[act], torch.full_like(r_best[act], rng)
            )
            ray = att.view_as(xa)
            ok = oracle(self._clip(xa + _bc(radius, xa).to(x.dtype) * ray, xa), act)
            first = False
            rows = ok.nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            idx = act[rows]
            hi = radius[rows].clone()
            lo = torch.zeros_like(hi)
            xs, rs = x[idx], ray[rows]
            while True:
                go = ((hi - lo) > tol) & (oracle.left(idx) >= 1)
                if self.threat.eps is not None:  # inside the ball is all a fixed budget needs
                    go &= hi > self.threat.eps
                g = go.nonzero().squeeze(1)
                if g.numel() == 0:
                    break
                mid = (hi[g] + lo[g]) / 2
                res = oracle(self._clip(xs[g] + _bc(mid, xs[g]).to(x.dtype) * rs[g], xs[g]), idx[g])
                hi[g[res]] = mid[res]
                lo[g[~res]] = mid[~res]
            better = hi < r_best[idx]
            ib = idx[better]
            r_best[ib] = hi[better]
            sgn[ib] = att[rows[better]]
            best[ib] = self._clip(
                xs[better] + _bc(hi[better], xs[better]).to(x.dtype) * rs[better], xs[better]
            )
            dist = self._dist(best[ib], x[ib]).double()
            oracle.note(ib, dist)
        found = torch.isfinite(r_best)
        return self._finish(x, best, found)

"""Square Attack: a score-based black-box attack by random search (L∞ and L2).

Only forward passes are used (``result.gradients`` stays 0); every model evaluation is counted
per sample in ``result.queries``. Works on any model, including score-only black boxes wrapped
with :class:`~advex.models.blackbox.ScoreBlackBox`.
"""

from __future__ import annotations

import math

import torch

from ..core.goals import Goal
from ..core.losses import cross_entropy, get_loss, margin
from ..threats import LInf, ThreatModel
from .base import ModelCaller, closest_share
from .fixed import FixedBudgetAttack, fixed_threat

__all__ = ["Square", "p_schedule"]

#: iterations (out of 10,000) after which the fraction ``p`` is halved (Andriushchenko et al.)
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, n_queries: int, rescale: bool = True) -> float:
    """Fraction of the image changed at iteration ``it``: ``p_init`` halved after iterations
    10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query run; with ``rescale``
    the schedule is stretched to ``n_queries`` (as in the reference implementation)."""
    if rescale:
        it = int(it / n_queries * 10000)
    halvings = sum(1 for t in _HALVINGS if it > t)
    return p_init / 2**halvings


def _window_sides(p: float, h: int, w: int, min_side: int = 1, odd: bool = False):
    """Side lengths of a window covering a fraction ``p`` of an ``h × w`` image.

    A square of side ``round(sqrt(p·h·w))`` as in the paper; when the image is too narrow in one
    direction (e.g. 1-D signals seen as 1 × d images), the other side grows to keep the area.
    """
    area = p * h * w
    s = max(int(round(math.sqrt(area))), min_side)
    if odd and s % 2 == 0:
        s += 1
    sh, sw = min(s, h), min(s, w)
    if sh < s:
        sw = min(w, max(int(round(area / sh)), min_side))
    elif sw < s:
        sh = min(h, max(int(round(area / sw)), min_side))
    return sh, sw


def _bump(a: int, b: int, dtype, device) -> torch.Tensor:
    """Unit-norm ``a × b`` bump of nested rectangles weighted 1/(k+1)² (the paper's Eq. 4)."""
    d = torch.zeros(a, b, dtype=dtype, device=device)
    if a == 0 or b == 0:
        return d
    ch, cw = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        r0, c0 = max(ch - k, 0), max(cw - k, 0)
        r1, c1 = min(ch + k + 1, a), min(cw + k + 1, b)
        d[r0:r1, c0:c1] += 1.0 / (k + 1) ** 2
    return d / d.norm()


def _eta_patterns(sh: int, sw: int, dtype, device) -> torch.Tensor:
    """The paper's L2 update η (two bumps of opposite sign, unit norm), split across rows and
    across columns: shape ``(2, sh, sw)``; a window picks one of the two at random."""
    out = []
    for axis in (0, 1):
        n = sh if axis == 0 else sw
        if n < 2:  # cannot split along a side of length 1: split along the other one
            axis, n = 1 - axis, (sw if axis == 0 else sh)
        d = torch.zeros(sh, sw, dtype=dtype, device=device)
        half = n // 2
        if axis == 0:
            d[:half] = _bump(half, sw, dtype, device)
            d[half:] = -_bump(sh - half, sw, dtype, device)
        else:
            d[:, :half] = _bump(sh, half, dtype, device)
            d[:, half:] = -_bump(sh, sw - half, dtype, device)
        out.append(d / d.norm().clamp_min(1e-12))
    return torch.stack(out)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """View a batch as ``(B, C, H, W)``: (B, d) → (B, 1, 1, d); (B, C, L) → (B, C, 1, L);
    more than two trailing spatial dimensions are folded into channels."""
    if x.dim() == 2:
        return x.reshape(x.shape[0], 1, 1, x.shape[1])
    if x.dim() == 3:
        return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def _signs(draw, shape, like: torch.Tensor) -> torch.Tensor:
    """±1 of shape ``(m, *shape)``; ``draw = (rng, stream, idx)``: one draw per point ``idx``."""
    rng, stream, idx = draw
    return rng.signs(stream, shape, idx, like.dtype).to(like.device)


def _windows(draw, sh: int, sw: int, h: int, w: int, device) -> torch.Tensor:
    """Boolean masks ``(m, 1, h, w)`` of one ``sh × sw`` window per sample, at a uniformly
    random position (all ``(h − sh + 1)(w − sw + 1)`` positions are possible), drawn per point
    (``draw = (rng, stream, idx)``)."""
    rng, stream, idx = draw
    vh = rng.integers((stream, "row"), 0, h - sh + 1, (1,), idx).to(device)
    vw = rng.integers((stream, "col"), 0, w - sw + 1, (1,), idx).to(device)
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_r = (rows >= vh) & (rows < vh + sh)
    in_c = (cols >= vw) & (cols < vw + sw)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _l2(t: torch.Tensor, dims) -> torch.Tensor:
    return t.pow(2).sum(dim=dims, keepdim=True).sqrt()


class Square(FixedBudgetAttack):
    """Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
    adversarial attack via random search"), L∞ and L2.

    A random search that needs only the model's scores. Starting from a point on the boundary of
    the ε-ball (L∞: vertical stripes of ±ε; L2: a grid of ±η bumps rescaled to norm ε), every
    iteration proposes one random square-shaped change per still-robust sample and keeps it only
    if the loss improves. L∞: a random ``s × s`` window is set to ``x ± ε`` (one sign per
    channel). L2: the mass of a second random window is moved into the first, added as a ±η
    "two bumps" pattern, so that the perturbation stays on the ε-sphere. The window covers a
    fraction ``p`` of the image, from ``p_init`` halved after iterations 10, 50, 200, 500, 1000,
    2000, 4000, 6000, 8000 (of 10,000; rescaled to ``n_queries``). A sample stops as soon as it
    is fooled: it costs no more queries.

    Args:
        eps: budget (required). norm: ``"linf"`` (default) or ``"l2"``. (Square has no L1
            version in the paper: L1 raises a ValueError.)
        n_queries: query budget per sample and restart, the initial point included (5000,
            AutoAttack's setting; the paper uses 10,000).
        p_init: initial fraction of pixels changed per iteration (0.8, AutoAttack's setting for
            both norms).
        restarts: independent runs from new random initialisations; later runs attack only the
            points still robust (1).
        loss: ``"auto"`` (the paper's choice: margin loss untargeted, cross-entropy targeted),
            ``"margin"``, ``"ce"``, ``"dlr"`` or a callable ``(logits, goal)`` to maximise.
        rescale_schedule: stretch the p-schedule to ``n_queries`` (True, as the reference code).
        screen: None (off) or a number of queries ``< n_queries`` spent on every point; after
            it (first restart) the search goes on with every point only if the screen broke at
            least a ``screen_keep`` share of them (at least one), else only with the
            ``screen_keep`` share closest to success, and no restart follows. In an ensemble,
            where Square sees only points the gradient attacks left robust, many breaks are
            evidence of gradient masking (spend the full budget everywhere); otherwise the
            points left just short of the boundary are the ones random search can still push
            over. The schedule stays that of ``n_queries``, so a screen that lets every point
            go on gives exactly the unscreened result.
        screen_keep: that share (0.0: stop unless the screen broke a point; ``standard``: 0.1,
            with ``screen=1000`` of ``n_queries=10000``).
        bounds, mask, threat: see :class:`~advex.threats.ThreatModel`.
        seed: seed of all the random choices (same seed → same ``x_adv``).

    Inputs of any shape work: images ``(C, H, W)`` with H ≠ W use square windows clipped to the
    image (the other side grows to keep the area); ``(d,)`` and ``(C, L)`` inputs are treated
    as ``1 × d`` and ``C × 1 × L`` images.

    Several budgets in one call: ``Square(eps=0.3).run_eps(model, x, y, eps=[0.1, 0.2, 0.3])``
    (points fooled at a smaller ε are not attacked again).

    Cost: at most ``restarts × n_queries`` forward passes per point (plus the clean and final
    forwards); no gradient. Points already successful cost nothing.

    >>> result = Square(eps=0.3, norm="linf", n_queries=5000)(model, x, y)
    >>> result.queries.float().mean(), result.robust_accuracy
    """

    name = "square"
    norms = ("linf", "l2")
    black_box = True

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss="auto",
        rescale_schedule: bool = True,
        screen: int | None = None,
        screen_keep: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        mask: torch.Tensor | None = None,
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = fixed_threat(eps, norm, bounds, mask, threat, attack="Square")
        if t.norm not in ("linf", "l2"):
            raise ValueError(
                f"Square supports linf and l2, got norm={t.norm!r} (the paper has no L1 version; "
                "use a gradient attack such as PGD(norm='l1') for L1)"
            )
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        if isinstance(n_queries, bool) or int(n_queries) != n_queries or int(n_queries) < 1:
            raise ValueError(f"n_queries must be an integer >= 1, got {n_queries}")
        if not 0.0 < float(p_init) <= 1.0:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        if isinstance(restarts, bool) or int(restarts) != restarts or int(restarts) < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts}")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.restarts = int(restarts)
        if isinstance(loss, str) and loss == "auto":
            self.loss = "auto"
            self._loss = None
        else:
            self._loss = get_loss(loss)
            self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.rescale_schedule = bool(rescale_schedule)
        if screen is not None:
            if isinstance(screen, bool) or int(screen) != screen or not 1 <= screen < n_queries:
                raise ValueError(
                    f"screen must be an integer in [1, n_queries={self.n_queries}), got {screen}"
                )
            screen = int(screen)
        self.screen = screen
        if not 0.0 <= float(screen_keep) <= 1.0:
            raise ValueError(f"screen_keep must be in [0, 1], got {screen_keep}")
        self.screen_keep = float(screen_keep)

    # -- objective -----------------------------------------------------------------------------
    def _objective(self, logits: torch.Tensor, goal: Goal) -> torch.Tensor:
        if self._loss is not None:
            return self._loss(logits, goal)
        return cross_entropy(logits, goal) if goal.targeted else margin(logits, goal)

    # -- initialisations -------------------------------------------------------------------------
    def _init_linf(self, x4: torch.Tensor, draw) -> torch.Tensor:
        b, c, _, w = x4.shape
        return x4 + self.threat.eps * _signs(draw, (c, 1, w), x4)

    def _init_l2(self, x4: torch.Tensor, draw) -> torch.Tensor:
        b, c, h, w = x4.shape
        s = max(min(h, w) // 5, 1)
        nh, nw = h // s, w // s
        pats = _eta_patterns(s, s, x4.dtype, x4.device)  # (2, s, s)
        rng, stream, idx = draw
        pick = rng.integers((stream, "pattern"), 0, 2, (nh, nw), idx).to(x4.device)
        tiles = pats[pick]  # (b, nh, nw, s, s)
        tiles = tiles.permute(0, 1, 3, 2, 4).reshape(b, 1, nh * s, nw * s)
        sign = _signs(draw, (c, nh, nw), x4)
        sign = sign.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        delta = torch.zeros_like(x4)
        oh, ow = (h - nh * s) // 2, (w - nw * s) // 2
        delta[:, :, oh : oh + nh * s, ow : ow + nw * s] = tiles * sign
        return x4 + delta / _l2(delta, (1, 2, 3)).clamp_min(1e-12) * self.threat.eps

    def _bounds4(self, x4: torch.Tensor):
        """The box as numbers, or as per-feature tensors in the ``(1, C, H, W)`` image view."""
        box = self.threat.box
        if box.scalar:
            return box.lo, box.hi
        like = x4[:1].reshape(1, *self._sample_shape)
        return _as_images(box.lo_like(like)), _as_images(box.hi_like(like))

    # -- one random-search proposal per sample -----------------------------------------------
    def _propose_linf(self, x4, best4, p, draw) -> torch.Tensor:
        m, c, h, w = x4.shape
        lo, hi = self._bounds4(x4)
        eps = self.threat.eps
        sh, sw = _window_sides(p, h, w)
        rng, stream, idx = draw
        win = _windows((rng, (stream, "window"), idx), sh, sw, h, w, x4.device)
        sign = _signs((rng, (stream, "sign"), idx), (c, 1, 1), x4)
        cand = torch.where(win, (x4 + eps * sign).clamp(lo, hi), best4)
        # as in the paper's code: never spend a query on a window that changes nothing (e.g. it
        # repeats the current signs); redraw the signs of those samples a few times
        for k in range(10):
            same = ((cand - best4).abs() < 1e-7).reshape(m, -1).all(1)
            if not bool(same.any()):
                break
            again = _signs((rng, (stream, "sign", k + 1), idx), (c, 1, 1), x4)
            sign = torch.where(same[:, None, None, None], again, sign)
            cand = torch.where(win, (x4 + eps * sign).clamp(lo, hi), best4)
        return cand

    def _propose_l2(self, x4, best4, p, draw) -> torch.Tensor:
        m, c, h, w = x4.shape
        eps = self.threat.eps
        lo, hi = self._bounds4(x4)
        delta = best4 - x4
        sh, sw = _window_sides(p, h, w, min_side=3, odd=True)
        rng, stream, idx = draw
        win1 = _windows((rng, (stream, "window-1"), idx), sh, sw, h, w, x4.device)
        win2 = _windows((rng, (stream, "window-2"), idx), sh, sw, h, w, x4.device)
        norm_img = _l2(delta, (1, 2, 3))  # (m, 1, 1, 1)
        norm_w1 = _l2(delta * win1, (2, 3))  # (m, c, 1, 1), per channel as in the paper
        norm_w12 = _l2(delta * (win1 | win2), (2, 3))
        pats = _eta_patterns(sh, sw, x4.dtype, x4.device)
        pick = rng.integers((stream, "pattern"), 0, 2, (), idx).to(x4.device)
        eta = pats[pick][:, None] * _signs((rng, (stream, "sign"), idx), (c, 1, 1), x4)
        win1_full = win1.expand(m, c, h, w)
        old = delta.masked_select(win1_full).reshape(m, c, sh, sw)
        new = eta + old / (norm_w1 + 1e-10)
        avail = ((eps**2 - norm_img**2).clamp_min(0) / c + norm_w12**2).sqrt()
        new = new / _l2(new, (2, 3)).clamp_min(1e-12) * avail
        delta = delta.masked_fill(win2, 0.0).masked_scatter(win1_full, new)
        delta = delta / _l2(delta, (1, 2, 3)).clamp_min(1e-12) * eps
        return (x4 + delta).clamp(lo, hi)

    def screen_select(self, obj: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """After a silent screen: the points (a mask over ``idx``, the rows still searching,
        with margins ``obj``) that search on: the ``screen_keep`` share closest to success."""
        return closest_share(obj, self.screen_keep)

    # -- main loop ---------------------------------------------------------------------------
    def _attack(self, caller: ModelCaller, x, goal: Goal, done, clean_logits):
        threat = self.threat
        rng = self._rng(x)
        best_x = x.clone()
        best_obj = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        found = done.clone()
        if threat.eps == 0:
            return best_x
        linf = isinstance(threat.lp, LInf)  # the paper's two algorithms: L∞ and L2
        init = self._init_linf if linf else self._init_l2
        propose = self._propose_linf if linf else self._propose_l2
        shape = x.shape[1:]
        self._sample_shape = shape
        screened_out = False
        screen_end = -1 if self.screen is None else self.screen - 1
        for restart in range(self.restarts):
            if screened_out:
                break
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, ga = x[idx], goal[idx]
            x4 = _as_images(xa)
            start = init(x4, (rng, ("init", restart), idx))
            cur = threat.project(start.reshape(xa.shape), xa)
            logits = caller.logits(cur, idx)
            obj = self._objective(logits, ga)
            succ = ga.is_success(logits)
            for it in range(self.n_queries):
                # record the successes, drop them from the search
                if bool(succ.any()):
                    si = idx[succ]
                    best_x[si], best_obj[si], found[si] = cur[succ], obj[succ], True
                    keep = ~succ
                    if not bool(keep.any()):
                        break
                    idx, xa, x4, ga, cur, obj = (t[keep] for t in (idx, xa, x4, ga, cur, obj))
                if it == self.n_queries - 1:  # budget spent (the initial point was query 1)
                    break
                if it == screen_end and restart == 0:
                    # `screen` queries spent: if they broke at least a `screen_keep` share of
                    # the points (at least one), search on with all; else only with the
                    # `screen_keep` share closest to success. No further restarts either way.
                    screened_out = True
                    broken = int((found & ~done).sum())
                    if broken < max(1.0, self.screen_keep * int((~done).sum())):
                        keep = self.screen_select(obj, idx)
                        if not bool(keep.any()):
                            break
                        drop = ~keep
                        best_x[idx[drop]], best_obj[idx[drop]] = cur[drop], obj[drop]
                        idx, xa, x4, ga, cur, obj = (t[keep] for t in (idx, xa, x4, ga, cur, obj))
                p = p_schedule(self.p_init, it, self.n_queries, self.rescale_schedule)
                cand4 = propose(x4, _as_images(cur), p, (rng, ("proposal", restart, it), idx))
                cand = threat.project(cand4.reshape(-1, *shape), xa)
                logits = caller.logits(cand, idx)
                cobj = self._objective(logits, ga)
                csucc = ga.is_success(logits)
                accept = csucc | (cobj > obj)
                cur = torch.where(accept.reshape(-1, *[1] * len(shape)), cand, cur)
                obj = torch.where(accept, cobj, obj)
                succ = csucc
            # still-robust points keep the best iterate over restarts
            better = obj > best_obj[idx]
            if bool(better.any()):
                bi = idx[better]
                best_x[bi], best_obj[bi] = cur[better], obj[better]
        return best_x

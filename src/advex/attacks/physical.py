"""Physical-world attacks: a sticker on an object (RP2) and a universal adversarial patch,
both robust to viewing conditions by Expectation over Transformation.

- :class:`RP2`: Eykholt et al. 2018, "Robust Physical-World Attacks on Deep Learning Visual
  Classification" (CVPR) — a sticker inside a mask, optimised over a set of photos of the
  source object × random viewing conditions, with a norm regulariser and the
  non-printability score.
- :class:`AdversarialPatch`: Brown et al. 2017, "Adversarial Patch" — one universal,
  targeted patch, pasted at a random location, scale and rotation on images of any class.
- :class:`PatchPGD`: a per-image patch (one per point, not universal) under random placement,
  by signed-gradient EOT — the attack behind ``advex evaluate --threat patch``.

Both follow the lifecycle of :class:`~advex.attacks.base.Attack`: ``fit(model, data)`` learns
the sticker / patch (through the base prologue: validation, eval mode, pass counting), then
``attack(model, x, y)`` (or :meth:`apply`) puts it on any image and returns an
:class:`~advex.core.result.AttackResult` whose ``success`` is re-predicted.
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..models.guards import attack_mode
from ..threats.patch import PatchThreat, ViewDistribution, non_printability
from .base import Attack, ModelCaller, check_positive, check_steps

__all__ = ["RP2", "AdversarialPatch", "PhysicalAttack", "PatchPGD"]


_CL = torch.channels_last


def _has_conv(model) -> bool:
    return isinstance(model, nn.Module) and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in channels-last memory when the fitting images ``x`` are (see ``fit``)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=_CL):
        return t.contiguous(memory_format=_CL)
    return t


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


class PhysicalAttack(Attack):
    """The shared part of :class:`RP2` and :class:`AdversarialPatch`: a sticker learned by
    Adam on a tanh parametrisation that keeps it inside the printable gamut, over mini-batches
    of (image, viewing condition) pairs; pass counting through the base
    :class:`~advex.attacks.base.ModelCaller`; applying the learned sticker in ``attack``."""

    norms = ("patch",)
    black_box = False

    def __init__(
        self,
        threat: PatchThreat,
        *,
        target: int | None,
        steps: int,
        batch_size: int,
        lr: float,
        seed: int | None,
        progress: bool,
        eot_samples: int = 1,
        channels_last: bool = True,
    ) -> None:
        if not isinstance(threat, PatchThreat):
            raise TypeError(f"threat must be a PatchThreat, got {type(threat).__name__}")
        super().__init__(threat, seed=seed, eot_samples=eot_samples)
        if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
            raise TypeError(f"target must be a class index (int) or None, got {target!r}")
        if target is not None and target < 0:
            raise ValueError(f"target must be >= 0, got {target}")
        self.target = target
        self.steps = check_steps("steps", steps)
        self.batch_size = check_steps("batch_size", batch_size)
        self.lr = check_positive("lr", lr)
        self.progress = bool(progress)
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be True or False, got {channels_last!r}")
        self.channels_last = channels_last
        self.sticker_: torch.Tensor | None = None
        self.fit_success_: float | None = None
        self.fit_queries_: int = 0
        self.fit_gradients_: int = 0
        self.fit_loss_: list[float] = []

    # -- what subclasses say -------------------------------------------------------------------
    @abstractmethod
    def _compose(
        self, x: torch.Tensor, sticker: torch.Tensor, g: torch.Generator, check: bool = True
    ) -> torch.Tensor:
        """The images with the sticker on, before the viewing conditions."""

    def _penalty(self, sticker: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sticker.new_zeros(())

    def _select(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Indices of the fitting images used (default: those not already of the target)."""
        if self.target is None:
            return torch.arange(len(y))
        return (y != self.target).nonzero().squeeze(1)

    # -- fit -----------------------------------------------------------------------------------
    def _default_target(self, target: Any) -> Any:
        return self.target if target is None else target

    def fit(self, model: nn.Module, data: Any, y: torch.Tensor | None = None) -> PhysicalAttack:
        """Learn ``sticker_`` on ``data`` (images ``x`` with labels ``y``, or an ``(x, y)``
        pair; without labels the model's predictions are the labels); returns ``self``."""
        x, y = self._fit_data(model, data, y)
        self.threat.check_inputs(x)
        with attack_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
            p = None
            if self.channels_last and _has_conv(model) and x.dim() == 4:
                # the network passes of the fit in channels-last (NHWC) memory: the same values
                # up to float rounding, ~20% less CPU per pass for a conv net on CPU; a model
                # that cannot take such an input (a .view() on its activations) is fitted with
                # the contiguous images instead (the failed prologue's counts are discarded)
                try:
                    p = self._prologue(model, x.contiguous(memory_format=_CL), y, None)
                except ValueError as err:
                    if not isinstance(err.__cause__, RuntimeError):
                        raise
            if p is None:
                p = self._prologue(model, x, y, None)
            y = p.goal.y
            if self.target is not None and self.target >= p.num_classes:
                raise ValueError(
                    f"target {self.target} is not a class of the model ({p.num_classes} classes)"
                )
            keep = self._select(p.x, y)
            if keep.numel() == 0:
                raise ValueError(
                    f"{type(self).__name__}.fit: no image to fit on (every image is of the "
                    f"target class {self.target})"
                )
            self.sticker_ = self._optimise(p.caller, p.x, y, keep)
            self.fit_queries_ = int(p.caller.queries.sum())
            self.fit_gradients_ = int(p.caller.gradients.sum())
        return self

    #: the loss minimised per draw: "ce" (cross-entropy) or "margin" (CW-style, see below)
    loss: str = "ce"
    kappa: float = 0.0

    def _objective(self, y: torch.Tensor):
        target, loss, kappa = self.target, self.loss, self.kappa

        def objective(logits: torch.Tensor) -> torch.Tensor:
            # the class to push up (targeted) or down (untargeted), per draw
            cls = y if target is None else torch.full_like(y, target)
            if loss == "margin":
                # Carlini & Wagner's f6: the best other logit minus the class's logit, clipped
                # at −κ, so a draw fooled with margin κ stops pulling (the others get the step)
                z_c = logits.gather(1, cls[:, None])[:, 0]
                other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
                m = other - z_c if target is not None else z_c - other
                return m.clamp_min(-kappa)
            ce = F.cross_entropy(logits, cls, reduction="none")
            return ce if target is not None else -ce  # untargeted: away from the true class

        return objective

    def _optimise(self, caller: ModelCaller, x: torch.Tensor, y: torch.Tensor, keep, start=0):
        th: PatchThreat = self.threat
        # restart r of AdversarialPatch draws its start and its draws from seed + 1000·r
        g = torch.Generator().manual_seed((0 if self.seed is None else int(self.seed)) + start)
        views: ViewDistribution = th.views
        lo = th.palette.min(0).values.to(x).view(3, 1, 1) if th.gamut else x.new_zeros(3, 1, 1)
        hi = th.palette.max(0).values.to(x).view(3, 1, 1) if th.gamut else x.new_ones(3, 1, 1)
        start = th.random_sticker(g).to(x)
        # sticker = lo + (hi − lo)·(tanh(w) + 1)/2: always printable, no projection needed
        frac = ((start - lo) / (hi - lo)).clamp(1e-3, 1 - 1e-3)
        w = torch.atanh(2 * frac - 1).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        bar = _progress(self.steps, f"{self.name}: fitting", self.progress)
        self.fit_loss_ = []
        fooled = []
        n = keep.numel()
        for _ in range(self.steps):
            idx = keep[torch.randint(0, n, (self.batch_size,), generator=g)]
            xb, yb = x[idx], y[idx]
            obj_fn = self._objective(yb)
            with torch.enable_grad():
                sticker = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                # x and the sticker were validated in fit: no per-step checks
                composed = self._compose(xb, sticker, g, check=False)
                seen = views.apply(composed, views.sample(len(idx), g), check=False)
                logits, obj, grad = caller.value_and_grad(_like(seen.detach(), x), obj_fn, idx)
                opt.zero_grad()
                reg = self._penalty(sticker, xb)
                # d(mean objective)/d(sticker) through the views, plus the penalties
                outs, grads = [seen], [grad / len(idx)]
                if reg.requires_grad:
                    outs.append(reg)
                    grads.append(torch.ones_like(reg))
                torch.autograd.backward(outs, grads)
            opt.step()
            if self.target is None:
                hit = logits.argmax(1) != yb
            else:
                hit = logits.argmax(1) == self.target
            fooled.append(float(hit.float().mean()))
            self.fit_loss_.append(float(obj.mean()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.fit_loss_[-1]:.3f}", fooled=f"{fooled[-1]:.2f}")
        if bar is not None:
            bar.close()
        tail = fooled[-max(1, self.steps // 10) :]
        self.fit_success_ = sum(tail) / len(tail)
        with torch.no_grad():
            return (lo + (hi - lo) * (torch.tanh(w) + 1) / 2).detach()

    # -- apply ---------------------------------------------------------------------------------
    def apply(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """``x`` with the learned sticker on (random placement: drawn from ``seed``, default
        the attack's seed + 1). No model call."""
        if self.sticker_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(model, data) first")
        s = (self.seed or 0) + 1 if seed is None else seed
        with torch.no_grad():
            return self._compose(x, self.sticker_.to(x), torch.Generator().manual_seed(s))

    def _attack(self, caller, x, goal, done, clean_logits):
        if self.sticker_ is None:  # never fitted: fit on this batch (its passes count here)
            self.sticker_ = self._optimise(caller, x, goal.y, self._select(x, goal.y))
        x_adv = self.apply(x)
        return torch.where(done.view(-1, 1, 1, 1), x, x_adv)


class RP2(PhysicalAttack):
    """Robust Physical Perturbations (Eykholt et al. 2018, "Robust Physical-World Attacks on
    Deep Learning Visual Classification", CVPR).

    A sticker inside a mask (``two-bars``, ``graffiti``, a square, a PNG) is optimised over a
    set of photos of the source object and random viewing conditions (the threat's
    :class:`~advex.threats.patch.ViewDistribution`, EOT), minimising (Eq. 3 of the paper)::

        λ‖M·(s − x̄)‖₂ + ν·NPS(s) + E_{x, T} J(f(T(x·(1−M) + s·M)), y*)

    with ``J`` the cross-entropy to the target ``y*`` (untargeted: minus the cross-entropy to
    the true class), ``x̄`` the mean fitting photo (the regulariser keeps the sticker close to
    the sign's own colours, RP2's ‖M·δ‖ with δ = s − x), and NPS the non-printability score
    over the printer palette. The sticker is kept in the printable gamut by a tanh
    parametrisation; Adam, ``steps`` steps of ``batch_size`` (photo, view) pairs.

    Args:
        mask: a mask shape (``"two-bars"``, ``"graffiti"``, ``"square"``), a PNG path or a
            tensor ``(1, H, W)``; or pass ``threat`` (a fixed-placement ``PatchThreat``).
        size: image side. area: the square's area fraction.
        target: target class (None: untargeted). steps (500), batch_size (32), lr (0.1).
        reg: λ of the L2 regulariser (0.002). nps_weight: ν of the NPS term (0.25).
        views: the EOT :class:`ViewDistribution` (default ``ViewDistribution()``).
        seed: seed of the (photo, view) draws and the start. progress: a progress bar.
        eot_samples: for a randomised model, average this many draws per model call (1).
        channels_last: run the fit's network passes on channels-last (NHWC) inputs when the
            model has a ``Conv2d`` (True; the same values up to float rounding, less CPU per
            pass; a model that rejects such inputs is fitted on contiguous ones).

    Cost of ``fit``: ``steps × batch_size`` forward + backward passes (counted per photo in
    ``fit_queries_``); applying costs the 2 forward passes of every attack.

    >>> rp2 = RP2("two-bars", target=1).fit(model, x_stop)       # stop -> speed limit 30
    >>> result = rp2(model, x_test_stop, y_test_stop)
    """

    name = "rp2"
    aliases = ("robust-physical-perturbations",)

    def __init__(
        self,
        mask: Any = "two-bars",
        *,
        target: int | None = None,
        size: int = 32,
        area: float = 0.05,
        steps: int = 500,
        batch_size: int = 32,
        lr: float = 0.1,
        reg: float = 0.002,
        nps_weight: float = 0.25,
        views: ViewDistribution | None = None,
        threat: PatchThreat | None = None,
        seed: int | None = 0,
        progress: bool = False,
        eot_samples: int = 1,
        channels_last: bool = True,
    ) -> None:
        if threat is None:
            threat = PatchThreat(mask, size=size, area=area, views=views)
        if threat.placement != "fixed":
            raise ValueError("RP2 needs a fixed-placement PatchThreat (a mask on the sign)")
        super().__init__(
            threat,
            target=target,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            progress=progress,
            eot_samples=eot_samples,
            channels_last=channels_last,
        )
        self.reg = float(reg)
        self.nps_weight = float(nps_weight)
        if not (self.reg >= 0 and math.isfinite(self.reg)):
            raise ValueError(f"reg must be a finite number >= 0, got {reg}")
        if not (self.nps_weight >= 0 and math.isfinite(self.nps_weight)):
            raise ValueError(f"nps_weight must be a finite number >= 0, got {nps_weight}")

    def _compose(self, x, sticker, g, check=True):
        return self.threat.apply(x, sticker, check=check)

    def _penalty(self, sticker, x):
        m = self.threat.mask_for(sticker)
        reg = self.reg * ((sticker - x.mean(0)) * m).norm() if self.reg else 0.0
        nps = self.nps_weight * non_printability(sticker, m, self.threat.palette)
        return reg + nps


class AdversarialPatch(PhysicalAttack):
    """Adversarial Patch (Brown et al. 2017): one universal, targeted patch that makes the
    model predict ``target`` wherever it is pasted.

    A square patch covering ``area`` of the image (at placement scale 1) is pasted at a random
    location, scale and rotation (the threat's random placement) on images of every class but
    the target, then seen under random viewing conditions (EOT); Adam minimises the expected
    loss over ``steps`` mini-batches of ``batch_size`` (image, placement, view) draws. The loss
    is Brown et al.'s ``−log p(target)`` (``loss="ce"``) or the CW margin
    ``max(max_{j≠t} z_j − z_t, −κ)`` (``loss="margin"``: a draw already fooled by a margin κ
    stops contributing, so the steps go to the draws not yet fooled). The patch stays in the
    printable gamut (tanh parametrisation).

    Args:
        target: the target class (required). area: the patch's share of the image at scale 1
            (0.05; the mean area over the scales is ``area × E[scale²]``, and the side is
            rounded to whole pixels: ``threat.patch_side``).
        size: image side. steps (500), batch_size (32), lr (0.1).
        loss: ``"ce"`` (default) or ``"margin"``. kappa: the margin's κ (``loss="margin"``).
        patch_scale, patch_rotation: ranges of the random placement ((0.8, 1.2), ±20°).
        patch_region: the patch lies wholly inside the central ``patch_region`` of the image
            (1.0: anywhere; 0.8: on a GTSRB sign's face).
        restarts: fit this many patches (restart ``r`` from seed + 1000·r, each ``steps``
            steps) on all but a held-out fifth of the fitting images (at most 500), and keep the
            one with the highest targeted success on that held-out slice × ``select_draws``
            placements and views (the same draws for every restart); 1: no selection, all
            images fit the one patch.
        views: the EOT :class:`ViewDistribution`. threat: a random-placement ``PatchThreat``.
        seed, progress, channels_last: as in :class:`RP2`.

    Cost of ``fit``: ``restarts × steps × batch_size`` forward + backward passes, plus
    ``restarts × select_draws`` forward passes per held-out image when ``restarts > 1``.
    ``attack(model, x, y)`` pastes the patch at a random placement per image (drawn from the
    attack's seed + 1); :meth:`apply` takes another ``seed``.

    >>> patch = AdversarialPatch(target=1, area=0.05).fit(model, (x_train, y_train))
    >>> patch(model, x_test, y_test).success_rate
    """

    name = "patch"
    aliases = ("adversarial-patch",)
    targeted_only = True

    def __init__(
        self,
        *,
        target: int,
        area: float = 0.05,
        size: int = 32,
        steps: int = 500,
        batch_size: int = 32,
        lr: float = 0.1,
        loss: str = "ce",
        kappa: float = 0.0,
        patch_scale: tuple[float, float] = (0.8, 1.2),
        patch_rotation: float = 20.0,
        patch_region: float = 1.0,
        restarts: int = 1,
        select_draws: int = 4,
        views: ViewDistribution | None = None,
        threat: PatchThreat | None = None,
        seed: int | None = 0,
        progress: bool = False,
        eot_samples: int = 1,
        channels_last: bool = True,
    ) -> None:
        if threat is None:
            threat = PatchThreat(
                None,
                size=size,
                area=area,
                placement="random",
                views=views,
                patch_scale=patch_scale,
                patch_rotation=patch_rotation,
                patch_region=patch_region,
            )
        if threat.placement != "random":
            raise ValueError("AdversarialPatch needs a random-placement PatchThreat")
        if target is None:
            raise ValueError("AdversarialPatch is a targeted attack: pass target=")
        super().__init__(
            threat,
            target=target,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            progress=progress,
            eot_samples=eot_samples,
            channels_last=channels_last,
        )
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        self.loss = loss
        self.kappa = float(kappa)
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa}")
        self.restarts = check_steps("restarts", restarts)
        self.select_draws = check_steps("select_draws", select_draws)
        self.restart_scores_: list[float] = []

    def _compose(self, x, sticker, g, check=True):
        placement = self.threat.sample_placement(x.shape[0], g)
        return self.threat.apply(x, sticker, placement, check=check)

    def _optimise(self, caller, x, y, keep, start=0):
        if self.restarts == 1:
            self.restart_scores_ = []
            return super()._optimise(caller, x, y, keep, start)
        n = keep.numel()
        if n < 2:
            raise ValueError("restarts > 1 needs at least 2 fitting images (one held out)")
        g = torch.Generator().manual_seed((0 if self.seed is None else int(self.seed)) + 999)
        perm = keep[torch.randperm(n, generator=g)]
        n_val = max(1, min(500, n // 5))
        val, train = perm[:n_val], perm[n_val:]
        # the selection draws: each held-out image × select_draws placements and views
        rep = val.repeat_interleave(self.select_draws)
        placement = self.threat.sample_placement(rep.numel(), g)
        views = self.threat.views.sample(rep.numel(), g)
        best, best_score, scores, fit_success = None, -1.0, [], None
        for r in range(self.restarts):
            patch = super()._optimise(caller, x, y, train, 1000 * r)
            hits = 0
            for s in range(0, rep.numel(), 1024):
                sl = slice(s, s + 1024)
                seen = self.threat.views.apply(
                    self.threat.apply(x[rep[sl]], patch, placement[sl]), views.index(sl)
                )
                seen = _like(seen, x)
                hits += int((caller.logits(seen, rep[sl]).argmax(1) == self.target).sum())
            scores.append(hits / rep.numel())
            if scores[-1] > best_score:
                best, best_score, fit_success = patch, scores[-1], self.fit_success_
        self.restart_scores_ = scores
        self.fit_success_ = fit_success
        return best


class PatchPGD(Attack):
    """A per-image adversarial patch under random placement (robust accuracy under a patch).

    Every image gets its own square patch covering ``area`` of the image (a random-placement
    :class:`~advex.threats.patch.PatchThreat`), optimised by signed-gradient ascent — the
    patch-restricted PGD of LaVAN (Karmon et al. 2018) and of the patch-robustness literature
    — on the Expectation over Transformation (Athalye et al. 2018) of the loss over
    ``eot_placements`` random placements (location, scale, rotation) and viewing conditions
    (the threat's views; identity by default) per step: untargeted, the cross-entropy of the
    true class is maximised; targeted, the cross-entropy of the target minimised. The step
    decays linearly from ``step_size`` to a tenth of it. A point stops as soon as every draw of
    a step is fooled (its remaining steps are not spent).

    The returned image carries the patch at **one more random placement, drawn from a stream
    the optimisation never used** (and a held-out view, when the threat has views): so the
    robust accuracy it yields is the accuracy under a random placement of a patch the attacker
    optimised for random placements — not a placement the attacker picked.

    Args:
        area: the patch's share of the image (0.05); or pass ``threat``.
        size: image side. steps (100), eot_placements (8), step_size (0.1).
        patch_scale, patch_rotation: ranges of the random placement ((0.8, 1.2), ±20°).
        views: the EOT :class:`ViewDistribution` (default: identity — a digital patch).
        gamut: keep the patch in the printer palette's gamut (False: anywhere in [0, 1]).
        seed: seed of the per-point draws (a point's draws depend only on its content).

    Cost: at most ``steps × eot_placements`` forward + backward passes per point (fewer when it
    stops early), counted per point, plus the 2 forward passes of every attack.

    >>> atk = PatchPGD(area=0.05)
    >>> res = atk(model, x, y)                      # res.success: fooled at a fresh placement
    >>> robust_accuracy(model, (x, y), atk)         # what `advex evaluate --threat patch` runs
    """

    name = "patch-pgd"
    aliases = ("patch-eot",)
    norms = ("patch",)
    black_box = False

    def __init__(
        self,
        *,
        area: float = 0.05,
        size: int | tuple[int, int] = 32,
        steps: int = 100,
        eot_placements: int = 8,
        step_size: float = 0.1,
        patch_scale: tuple[float, float] = (0.8, 1.2),
        patch_rotation: float = 20.0,
        views: ViewDistribution | None = None,
        gamut: bool = False,
        threat: PatchThreat | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        if threat is None:
            threat = PatchThreat(
                None,
                size=size,
                area=area,
                placement="random",
                views=views if views is not None else ViewDistribution.identity(),
                gamut=gamut,
                patch_scale=patch_scale,
                patch_rotation=patch_rotation,
            )
        if not isinstance(threat, PatchThreat) or threat.placement != "random":
            raise ValueError("PatchPGD needs a random-placement PatchThreat")
        super().__init__(threat, seed=seed, eot_samples=eot_samples)
        self.steps = check_steps("steps", steps)
        self.eot_placements = check_steps("eot_placements", eot_placements)
        self.step_size = check_positive("step_size", step_size)

    def _rebudget(self, old: float, new: float) -> None:  # area changed by with_budget
        pass

    def _draw(self, rng, stream, idx: torch.Tensor, k: int, like: torch.Tensor):
        """``k`` placements (and views) per point of ``idx``: ``(len(idx)·k, 4)`` and the
        view parameters, from per-point streams."""
        th: PatchThreat = self.threat
        u = rng.uniform((stream, "place"), (k, 4), idx=idx, dtype=torch.float64)
        placement = th.placement_from_uniform(u).reshape(-1, 4).to(like)
        views = None
        if not th.views.is_identity:
            seed = int(rng.uniform((stream, "views"), (1,), idx=idx[:1])[0, 0] * 2**31)
            views = th.views.sample(idx.numel() * k, torch.Generator().manual_seed(seed))
        return placement, views

    def _see(self, x, patches, placement, views):
        th: PatchThreat = self.threat
        canvas, m = th.place(patches, placement, x)
        seen = x * (1 - m) + canvas * m
        return th.views.apply(seen, views) if views is not None else seen

    def _attack(self, caller, x, goal, done, clean_logits):
        th: PatchThreat = self.threat
        rng = self._rng(x)
        b, k = x.shape[0], self.eot_placements
        gamut = th.gamut and th.channels == 3
        lo = th.palette.min(0).values.to(x).view(1, 3, 1, 1) if gamut else x.new_zeros(())
        hi = th.palette.max(0).values.to(x).view(1, 3, 1, 1) if gamut else x.new_ones(())
        u = rng.uniform("start", th.sticker_shape, dtype=x.dtype)
        patches = lo + (hi - lo) * u  # (B, C, k, k)
        active = (~done).nonzero().squeeze(1)
        y, target = goal.y, goal.target
        for step in range(self.steps):
            if active.numel() == 0:
                break
            idx = active
            rep = idx.repeat_interleave(k)
            placement, views = self._draw(rng, ("step", step), idx, k, x)
            xb = x[rep]
            with torch.enable_grad():
                p = patches[idx].detach().requires_grad_(True)
                seen = self._see(xb, p.repeat_interleave(k, 0), placement, views)
                if target is None:
                    yb = y[rep]

                    def objective(logits, yb=yb):
                        return F.cross_entropy(logits, yb, reduction="none")
                else:
                    tb = target[rep]

                    def objective(logits, tb=tb):
                        return -F.cross_entropy(logits, tb, reduction="none")

                logits, _, g_seen = caller.value_and_grad(seen.detach(), objective, rep)
                (g,) = torch.autograd.grad(seen, p, g_seen)
            if target is None:
                hit = logits.argmax(1) != y[rep]
            else:
                hit = logits.argmax(1) == target[rep]
            all_hit = hit.view(-1, k).all(1)
            alpha = self.step_size * (1 - 0.9 * step / max(1, self.steps - 1))
            with torch.no_grad():
                new = patches[idx] + alpha * g.sign()
                new = torch.minimum(torch.maximum(new, lo), hi)
                # a point fooled by every draw of this step keeps the patch that did it
                patches[idx] = torch.where(all_hit.view(-1, 1, 1, 1), patches[idx], new)
            active = idx[~all_hit]
        everyone = torch.arange(b, device=x.device)
        placement, views = self._draw(rng, "final", everyone, 1, x)
        x_adv = self._see(x, patches, placement, views)
        return torch.where(done.view(-1, 1, 1, 1), x, x_adv)

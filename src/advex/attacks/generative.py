"""Generative attacks: AdvGAN (Xiao et al. 2018), one generator forward per adversarial example.

A generator ``G`` is trained once (:meth:`AdvGAN.fit`) against a target classifier, with a
discriminator keeping ``x + G(x)`` close to the data; afterwards an adversarial example costs
one forward pass of ``G`` and no query of the target (:meth:`AdvGAN.generate`). Called as an
attack it returns the usual :class:`~advex.core.result.AttackResult`, success re-predicted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write, derive_seed64, write_json
from ..models.guards import attack_mode, check_logits
from ..threats import ThreatModel
from ..training import (
    Trainer,
    TrainerRun,
    as_xy,
    load_optimizer_state,
    optimizer_state,
)
from .base import Attack, ModelCaller, make_threat

__all__ = ["AdvGAN", "ConvGenerator", "ConvDiscriminator", "OnlineAdvGAN", "GENERATOR_FORMAT"]

#: the ``format`` of a saved generator's card (``card.json``)
GENERATOR_FORMAT = "advex-generator/2"

#: L∞: the saturation penalty acts on ``|G(x)|`` beyond this (``tanh(2) = 0.96``)
SATURATION_BOUND = 2.0


class ConvGenerator(nn.Module):
    """AdvGAN's generator: a small convolutional encoder–decoder ``(B, C, H, W) → (B, C, H, W)``.

    Conv3×3(C→w) → Conv4×4/2(w→2w) → ``blocks`` residual blocks of two Conv3×3(2w) → back to
    full resolution: ``sampling="conv"`` (default) ConvTranspose4×4/2(2w→w) → Conv3×3(w→C);
    ``sampling="pixel"`` Conv3×3(2w→4C) → PixelShuffle(2) (sub-pixel convolution, Shi et al.
    2016: nothing after the stem runs at full resolution, about half the cost per image).

    ReLU between layers, no normalisation layer (the generator behaves the same in train and
    eval mode). An odd height or width is padded by replication to an even size and the output
    cropped back. The output layer starts at zero and the output is unbounded: the attack maps
    it into the threat.
    """

    def __init__(
        self, channels: int, width: int = 16, blocks: int = 2, sampling: str = "conv"
    ) -> None:
        super().__init__()
        if sampling not in ("conv", "pixel"):
            raise ValueError(f"sampling must be 'conv' or 'pixel', got {sampling!r}")
        w = int(width)
        self.sampling = sampling
        self.stem = nn.Conv2d(channels, w, 3, padding=1)
        self.down = nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(2 * w, 2 * w, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            )
            for _ in range(int(blocks))
        )
        if sampling == "conv":
            self.up = nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1)
            self.head = nn.Conv2d(w, channels, 3, padding=1)
        else:
            self.head = nn.Conv2d(2 * w, 4 * channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # δ = 0 at the start: no saturated tanh from step one
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad = (0, w % 2, 0, h % 2)
        z = F.pad(x, pad, mode="replicate") if any(pad) else x
        z = F.relu(self.stem(z))
        z = F.relu(self.down(z))
        for block in self.blocks:
            z = F.relu(z + block(z))
        if self.sampling == "conv":
            z = self.head(F.relu(self.up(z)))
        else:
            z = F.pixel_shuffle(self.head(z), 2)
        return z[..., :h, :w]


class ConvDiscriminator(nn.Module):
    """AdvGAN's discriminator: Conv4×4/2(C→w) → Conv4×4/2(w→2w) → global average → Linear(1),
    LeakyReLU(0.2) between; one realness score per image (least-squares GAN)."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        w = int(width)
        self.conv1 = nn.Conv2d(channels, w, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)
        self.head = nn.Linear(2 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.leaky_relu(self.conv1(x), 0.2)
        z = F.leaky_relu(self.conv2(z), 0.2)
        return self.head(z.mean((2, 3))).squeeze(1)


def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool, kappa: float):
    """C&W's margin (Carlini & Wagner 2017, f6), per sample: untargeted
    ``max(Z_y − max_{i≠y} Z_i, −κ)``, targeted ``max(max_{i≠t} Z_i − Z_t, −κ)``."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    diff = other - own if targeted else own - other
    return diff.clamp_min(-kappa)


class _AdvGANLoss:
    """The Trainer's loss object for AdvGAN: one call = one discriminator step (its own Adam,
    stepped here) and the generator's loss (stepped by the Trainer)."""

    def __init__(self, attack: AdvGAN, model: nn.Module, disc: nn.Module, lr: float) -> None:
        self.attack = attack
        self.model = model
        self.disc = disc
        self.disc_opt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))

    def __call__(self, gen: nn.Module, xb: torch.Tensor, yb: torch.Tensor, rng) -> tuple:
        atk = self.attack
        x_adv, raw = atk._perturb(gen, xb, with_raw=True)
        # discriminator step: real x → 1, generated x + δ → 0 (least squares)
        self.disc.train()
        d_real = self.disc(xb)
        d_fake = self.disc(x_adv.detach())
        d_loss = ((d_real - 1) ** 2).mean() + (d_fake**2).mean()
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()
        # generator loss: L_adv + α L_GAN + β L_hinge (Xiao et al. 2018, eq. 4)
        gan = ((self.disc(x_adv) - 1) ** 2).mean()
        logits = self.model(x_adv)
        if atk.target is None:
            adv = _margin(logits, yb, False, atk.kappa).mean()
        else:
            t = torch.full_like(yb, atk.target)
            adv = _margin(logits, t, True, atk.kappa).mean()
        delta = (x_adv - xb).flatten(1)
        hinge = (delta.norm(dim=1) - atk.hinge_bound_for(xb)).clamp_min(0).mean()
        loss = adv + atk.alpha * gan + atk.beta * hinge
        if atk.threat.norm == "linf" and atk.saturation > 0:
            # keeps G(x) where tanh still passes a gradient: a pixel saturated on the wrong
            # side would otherwise never come back (the generator collapses to δ = −ε)
            sat = (raw.abs() - SATURATION_BOUND).clamp_min(0).pow(2).mean()
            loss = loss + atk.saturation * sat
        return loss, logits.detach()

    # the discriminator and its optimizer travel with the Trainer's checkpoint
    def checkpoint_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        meta, opt_tensors = optimizer_state(self.disc_opt)
        tensors = {f"disc.{k}": v for k, v in self.disc.state_dict().items()}
        tensors.update({f"disc_opt.{k}": v for k, v in opt_tensors.items()})
        return {"disc_opt": meta}, tensors

    def restore_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        disc = {k[5:]: v for k, v in tensors.items() if k.startswith("disc.")}
        self.disc.load_state_dict(disc, strict=True)
        opt = {k[9:]: v for k, v in tensors.items() if k.startswith("disc_opt.")}
        load_optimizer_state(self.disc_opt, meta["disc_opt"], opt)


class AdvGAN(Attack):
    """AdvGAN (Xiao et al. 2018, "Generating Adversarial Examples with Adversarial Networks",
    IJCAI): a generator ``G`` trained against the target so that ``x + G(x)`` fools it.

    Semi-white-box: :meth:`fit` uses the target's gradients to train ``G`` (and a
    discriminator ``D``); afterwards an adversarial example costs one forward pass of ``G``
    (:meth:`generate`, no query of the target). Calling the attack applies ``G`` to the points
    not already fooled and returns an :class:`~advex.core.result.AttackResult` (success
    re-predicted; the target is queried twice per point, the clean pass and the re-prediction;
    ``G`` is not the target and is not counted).

    Losses (paper, eq. 4), minimised by ``G``: ``L_adv + α·L_GAN + β·L_hinge``, with

    - ``L_adv``: C&W's margin on the target's logits, untargeted
      ``max(Z_y − max_{i≠y} Z_i, −κ)`` or toward ``target`` ``max(max_{i≠t} Z_i − Z_t, −κ)``;
    - ``L_GAN``: least-squares GAN loss, ``D`` separating ``x`` from ``x + δ``;
    - ``L_hinge = max(0, ‖δ‖₂ − c)``: the paper's soft bound on the perturbation;
    - (L∞) ``saturation · mean(max(0, |G(x)| − 2)²)``: keeps ``G(x)`` where ``tanh`` still
      passes a gradient. Without it a generator whose output saturates on the wrong side in
      the first steps never recovers (it collapses to ``δ = −ε`` on the strokes, a few %
      success).

    The budget is exact and comes from the threat, during training and at attack time: for L∞
    ``δ = tanh(G(x))`` times the room left in the ε-ball *and* the box on that side
    (``min(ε, hi − x)`` up, ``min(ε, x − lo)`` down), so nothing is clipped and every pixel
    keeps a gradient; for L2 ``G(x)`` is projected onto the ε-ball; then ``x + δ`` goes
    through ``threat.project`` (mask; a no-op otherwise).

    One generator serves one goal: untargeted (``target=None``) or one target class. A
    targeted generator attacks toward its class (``target=`` at call time may be omitted, or
    equal to it); an untargeted one refuses ``target=``.

    Norm: L∞, L2.

    Args:
        eps: the budget ε (None: the ``threat``'s, else 0.3). norm: ``"linf"`` (default) | ``"l2"``.
        target: ``None`` (untargeted) or the class index the generator aims for.
        alpha: weight α of the GAN loss (0.01: at larger α the realism term costs success,
            see docs/attacks-generative.md). beta: weight β of the hinge loss (1.0).
        c: hinge bound on ``‖δ‖₂``; None: ε for L2, ``ε·√d`` for L∞ (the L2 norm of a
            full-budget L∞ perturbation of ``d`` features: the hinge is then inactive and the
            ball alone bounds δ; a smaller ``c`` asks for sparser perturbations).
        kappa: confidence κ of the margin (5.0: training points are pushed past the decision
            boundary, which carries over to unseen points).
        saturation: weight of the L∞ saturation penalty (1.0; 0 switches it off).
        edge_gradient: L∞: a pixel with no room on the side ``tanh(G(x))`` points to gets the
            other side's slope as its gradient (straight-through). False (default): the exact
            gradient (0 there). True escapes the first steps' collapse sooner (short fits),
            False ends higher in long ones (see docs/attacks-generative.md).
        epochs, batch_size, lr, schedule: training of ``G`` by :class:`~advex.training.Trainer`
            (Adam; ``D`` has its own Adam at ``lr``).
        width, blocks: generator size (:class:`ConvGenerator`); disc_width: discriminator width.
        bounds: valid input range (0, 1). threat: a ready threat (instead of eps/norm/bounds).
        seed: seed of the initialisation and of the training order.
        progress: show a progress bar during :meth:`fit`.

    Shapes: ``x`` is ``(B, C, H, W)`` with the ``(C, H, W)`` seen by :meth:`fit`.

    Attributes after :meth:`fit`: ``generator_`` (the trained ``G``), ``input_shape_``,
    ``num_classes_``, ``history_`` (the Trainer's per-epoch log; ``train_acc`` is the target's
    accuracy on ``x + δ``).

    >>> advgan = AdvGAN(eps=0.3).fit(model, train_data)
    >>> result = advgan(model, x, y); x_adv = advgan.generate(x)
    """

    name = "advgan"
    norms = ("linf", "l2")

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        *,
        target: int | None = None,
        alpha: float = 0.01,
        beta: float = 1.0,
        c: float | None = None,
        kappa: float = 5.0,
        saturation: float = 1.0,
        edge_gradient: bool = False,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 1e-3,
        schedule: str = "constant",
        width: int = 16,
        blocks: int = 2,
        sampling: str = "conv",
        disc_width: int = 16,
        bounds: tuple[float, float] = (0.0, 1.0),
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        progress: bool = False,
        eot_samples: int = 1,
    ) -> None:
        if eps is None and threat is None:
            eps = 0.3
        t = make_threat(eps, norm, bounds, None, threat, attack="AdvGAN")
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        if not t.eps > 0:
            raise ValueError(f"AdvGAN needs a budget eps > 0, got {t.eps}")
        if target is not None and (isinstance(target, bool) or int(target) != target):
            raise ValueError(f"target must be a class index (int) or None, got {target!r}")
        if target is not None and int(target) < 0:
            raise ValueError(f"target must be a class index >= 0, got {target}")
        for v, what in (
            (alpha, "alpha"),
            (beta, "beta"),
            (kappa, "kappa"),
            (saturation, "saturation"),
            (lr, "lr"),
        ):
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise ValueError(f"{what} must be a finite number >= 0, got {v}")
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if c is not None and not (math.isfinite(float(c)) and float(c) > 0):
            raise ValueError(f"c must be a finite number > 0 or None, got {c}")
        for v, what in (
            (epochs, "epochs"),
            (batch_size, "batch_size"),
            (width, "width"),
            (disc_width, "disc_width"),
        ):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
        if isinstance(blocks, bool) or int(blocks) != blocks or int(blocks) < 0:
            raise ValueError(f"blocks must be an integer >= 0, got {blocks!r}")
        self.target = None if target is None else int(target)
        self.alpha, self.beta, self.kappa = float(alpha), float(beta), float(kappa)
        self.saturation = float(saturation)
        self.edge_gradient = bool(edge_gradient)
        self.c = None if c is None else float(c)
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.lr, self.schedule = float(lr), schedule
        if sampling not in ("conv", "pixel"):
            raise ValueError(f"sampling must be 'conv' or 'pixel', got {sampling!r}")
        self.width, self.blocks, self.disc_width = int(width), int(blocks), int(disc_width)
        self.sampling = sampling
        self.progress = bool(progress)
        self.generator_: ConvGenerator | None = None
        self.input_shape_: tuple[int, ...] | None = None
        self.num_classes_: int | None = None
        self.history_: list[dict] = []

    # -- the perturbation, bounded by the threat ----------------------------------------------
    def hinge_bound_for(self, x: torch.Tensor) -> float:
        """The hinge bound ``c`` for samples like ``x`` (see the class docstring)."""
        if self.c is not None:
            return self.c
        eps = float(self.threat.eps)
        if self.threat.norm == "l2":
            return eps
        return eps * math.sqrt(x[0].numel())

    def _perturb(self, gen: nn.Module, x: torch.Tensor, *, with_raw: bool = False):
        """``x + δ`` inside the threat, differentiable w.r.t. ``G``; with ``with_raw`` also
        ``G(x)`` (the pre-``tanh`` output).

        L∞: ``t = tanh(G(x))`` and ``δ = t·(upper room)`` where ``t > 0``, ``t·(lower room)``
        where ``t < 0``; the rooms are ``min(ε, hi − x)`` and ``min(ε, x − lo)``, so ``x + δ``
        lies in the ε-ball *and* the box by construction (no clipping, whose zero gradient
        would freeze a pixel pushed out of the box), ``δ = 0`` at ``G(x) = 0``, and the full
        budget is reached as ``|G(x)|`` grows. L2: ``G(x)`` projected onto the ε-ball. Then
        the threat's projection (mask; for L∞ a no-op up to rounding)."""
        raw = gen(x)
        eps = float(self.threat.eps)
        if self.threat.norm == "linf":
            lo, hi = self.threat.box.bounds_for(x)
            up = torch.clamp(hi - x, max=eps)
            down = torch.clamp(x - lo, max=eps)
            t = torch.tanh(raw)
            room = torch.where(t > 0, up, down)
            delta = room * t
            if self.edge_gradient and torch.is_grad_enabled():
                # where the side t points to has no room (a pixel at the box's edge, e.g. the
                # black background pushed darker) the exact slope is 0 and that pixel could
                # never learn to move the other way: its gradient uses the other side's room
                # (straight-through; the value, and so the budget, is unchanged)
                slope = torch.where(room > 0, room, torch.where(t > 0, down, up))
                delta = slope * t + (delta - slope * t).detach()
        else:
            delta = raw
        x_adv = self.threat.project(x + delta, x)
        return (x_adv, raw) if with_raw else x_adv

    # -- training --------------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        data: Any,
        *,
        out_dir: str | os.PathLike | None = None,
        resume: bool = False,
        on_epoch_end: Callable[..., None] | None = None,
    ) -> AdvGAN:
        """Train the generator against ``model`` on ``data``; returns ``self``.

        Args:
            model: the target classifier (``nn.Module``), frozen and in eval mode throughout
                (its weights, ``requires_grad`` flags and mode are restored afterwards).
            data: an :class:`advex.data.ArrayDataset` or an ``(x, y)`` pair; ``x`` in the
                threat's bounds, ``y`` class labels with at least two classes.
            out_dir: where the Trainer writes ``checkpoint.*`` and ``log.json`` every epoch.
            resume: continue from ``out_dir``'s checkpoint (same settings ⇒ the same weights as
                an uninterrupted run).
            on_epoch_end: ``on_epoch_end(trainer, epoch, entry)`` after every epoch.

        Raises ``ValueError`` for a data set with a single class, a model with fewer than two
        outputs, a ``target`` out of range, or inputs outside the bounds.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"AdvGAN.fit needs the target as an nn.Module, got {type(model)}")
        x, y = as_xy(data, "data")
        if x.dim() != 4:
            raise ValueError(f"AdvGAN expects images (N, C, H, W), got shape {tuple(x.shape)}")
        if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError("AdvGAN.fit needs integer class labels y of shape (N,)")
        self.threat.check_inputs(x, name="data x")
        if int(torch.unique(y).numel()) < 2:
            raise ValueError(
                "AdvGAN.fit needs a data set with at least two classes, got only class "
                f"{int(y[0])}: a generator fitted on one class does not learn the attack"
            )
        first = next(iter(model.parameters()), None)
        device = x.device if first is None else first.device
        dtype = torch.float32 if first is None or not first.is_floating_point() else first.dtype
        x = x.to(dtype)
        with attack_mode(model):
            with torch.no_grad():
                probe = model(x[:2].to(device))
            check_logits(probe, name=type(model).__name__, batch_size=min(2, len(x)))
            k = int(probe.shape[1])
            if k < 2:
                raise ValueError(f"the target model has {k} output; AdvGAN needs >= 2 classes")
            if int(y.min()) < 0 or int(y.max()) >= k:
                raise ValueError(f"labels must lie in [0, {k - 1}] (the model has {k} classes)")
            if self.target is not None and self.target >= k:
                raise ValueError(f"target={self.target} is out of range: the model has {k} classes")
            seed = 0 if self.seed is None else int(self.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed64(seed, 0xADC))
                gen = ConvGenerator(x.shape[1], self.width, self.blocks, self.sampling)
                disc = ConvDiscriminator(x.shape[1], self.disc_width)
            gen, disc = gen.to(device, dtype), disc.to(device, dtype)
            loss = _AdvGANLoss(self, model, disc, self.lr)
            trainer = Trainer(
                gen,
                loss,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                schedule=self.schedule,
                seeds=seed,
                out_dir=out_dir,
                resume=resume,
                config=self._card(tuple(x.shape[1:]), k),
                progress=self.progress,
                desc="advgan",
                name="AdvGAN",
            )
            run: TrainerRun = trainer.fit((x, y), on_epoch_end=on_epoch_end)
        gen.eval()
        for p in gen.parameters():
            p.requires_grad_(False)
        self.generator_ = gen
        self.input_shape_ = tuple(int(s) for s in x.shape[1:])
        self.num_classes_ = k
        self.history_ = run.log
        return self

    # -- generating --------------------------------------------------------------------------------
    def _require_fitted(self, x: torch.Tensor) -> nn.Module:
        if self.generator_ is None:
            raise ValueError(
                "AdvGAN has no generator yet: call fit(model, data) or AdvGAN.load(dir) first"
            )
        if tuple(x.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"this generator was trained for inputs of shape {self.input_shape_}, got a "
                f"batch of shape {tuple(x.shape[1:])}"
            )
        return self.generator_

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """``x + δ`` for every row of ``x`` in one generator pass (no query of the target):
        inside the threat, on ``x``'s device and dtype."""
        gen = self._require_fitted(x)
        self.threat.check_inputs(x)
        x0 = x.detach()
        p = next(gen.parameters())
        gen = gen.to(p.device)
        with torch.no_grad():
            x_adv = self._perturb(gen, x0.to(device=p.device, dtype=p.dtype))
        x_adv = x_adv.to(device=x0.device, dtype=x0.dtype)
        return self.threat.finalize(x_adv, x0)

    def _default_target(self, target):
        """A targeted generator aims for its own class (pass ``target=`` only to confirm it);
        an untargeted one refuses ``target=`` (in :meth:`_attack`)."""
        return self.target if target is None and self.target is not None else target

    def _attack(self, caller: ModelCaller, x, goal, done, clean_logits):
        if goal.targeted and self.target is None:
            raise ValueError(
                "this AdvGAN generator is untargeted: call it without target=, or fit one "
                "with AdvGAN(target=class)"
            )
        if goal.targeted and not bool((goal.target == self.target).all()):
            raise ValueError(
                f"this AdvGAN generator was trained toward class {self.target}; it cannot "
                "attack toward other targets (fit one generator per target)"
            )
        self._require_fitted(x)
        rows = (~done).nonzero().squeeze(1)
        x_adv = x.clone()
        if rows.numel():
            x_adv[rows] = self.generate(x[rows])
        return x_adv

    def params(self) -> dict[str, Any]:
        """Hyperparameters for reports (the fitted attributes ``generator_``, ... left out)."""
        return {k: v for k, v in super().params().items() if not k.endswith("_")}

    def online(self, x: torch.Tensor) -> OnlineAdvGAN:
        """A generator that trains alongside a changing classifier (see :class:`OnlineAdvGAN`)
        for inputs like ``x`` ``(B, C, H, W)``: a copy of the fitted generator if there is one,
        else a fresh one from ``seed``. This attack is not changed."""
        if x.dim() != 4:
            raise ValueError(f"AdvGAN expects images (N, C, H, W), got shape {tuple(x.shape)}")
        if self.generator_ is not None and tuple(x.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"this generator was trained for inputs of shape {self.input_shape_}, got "
                f"{tuple(x.shape[1:])}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return OnlineAdvGAN(self, int(x.shape[1]), x.device, dtype)

    def _rebudget(self, old: float, new: float) -> None:
        if not new > 0:
            raise ValueError(f"AdvGAN needs a budget eps > 0, got {new}")

    # -- files -------------------------------------------------------------------------------------
    def _card(self, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
        return {
            "format": GENERATOR_FORMAT,
            "attack": self.name,
            "eps": float(self.threat.eps),
            "norm": self.threat.norm,
            "bounds": self.threat.box.to_list(),
            "mask": self.threat.to_dict()["mask"],
            "target": self.target,
            "input_shape": list(input_shape),
            "num_classes": int(num_classes),
            "architecture": {
                "width": self.width,
                "blocks": self.blocks,
                "sampling": self.sampling,
            },
            "training": {
                "alpha": self.alpha,
                "beta": self.beta,
                "c": self.c,
                "kappa": self.kappa,
                "saturation": self.saturation,
                "edge_gradient": self.edge_gradient,
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "lr": self.lr,
                "schedule": self.schedule,
                "disc_width": self.disc_width,
                "seed": self.seed,
            },
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``generator.safetensors`` (weights) and ``card.json`` (ε, norm, bounds,
        target, input shape, classes, architecture and training settings) to ``directory``;
        returns it."""
        from safetensors.torch import save_file

        if self.generator_ is None:
            raise ValueError("AdvGAN.save: nothing to save, call fit(model, data) first")
        if not self.threat.box.scalar or self.threat.mask is not None:
            raise ValueError(
                "AdvGAN.save supports scalar bounds and no mask: the card stores (low, high)"
            )
        out = Path(directory).expanduser()
        card = self._card(self.input_shape_, self.num_classes_)
        tensors = {
            k: v.detach().cpu().contiguous().clone()
            for k, v in self.generator_.state_dict().items()
        }
        atomic_write(out / "generator.safetensors", lambda p: save_file(tensors, p))
        write_json(out / "card.json", card)
        return out

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        input_shape: tuple[int, ...] | None = None,
        map_location: str | torch.device = "cpu",
    ) -> AdvGAN:
        """A fitted :class:`AdvGAN` from a directory written by :meth:`save` (safetensors only,
        nothing unpickled). With ``input_shape`` (one sample's ``(C, H, W)``), a generator saved
        for another shape is refused here rather than at attack time."""
        from safetensors.torch import load_file

        d = Path(directory).expanduser()
        card_path, weights = d / "card.json", d / "generator.safetensors"
        if not card_path.is_file() or not weights.is_file():
            raise ValueError(f"{d} is not a saved AdvGAN generator (card.json + .safetensors)")
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if isinstance(card, dict) and card.get("format") == "advex-generator/1":
            raise ValueError(
                f"{card_path} holds a generator of an older advex (advex-generator/1: δ = "
                "ε·tanh(G(x)) clipped to the box); this advex maps G(x) into the threat "
                "without clipping, so that generator's weights do not apply: fit it again"
            )
        if not isinstance(card, dict) or card.get("format") != GENERATOR_FORMAT:
            raise ValueError(f"{card_path} is not an AdvGAN card ({GENERATOR_FORMAT})")
        saved = tuple(int(s) for s in card["input_shape"])
        if input_shape is not None and tuple(int(s) for s in input_shape) != saved:
            raise ValueError(
                f"the generator in {d} was trained for inputs of shape {saved}, not "
                f"{tuple(input_shape)}"
            )
        train = card.get("training", {})
        arch = card["architecture"]
        atk = cls(
            card["eps"],
            card["norm"],
            target=card.get("target"),
            bounds=tuple(card["bounds"]),
            width=arch["width"],
            blocks=arch["blocks"],
            sampling=arch.get("sampling", "conv"),
            **{k: train[k] for k in train if k in _TRAINING_KEYS},
        )
        gen = ConvGenerator(saved[0], atk.width, atk.blocks, atk.sampling)
        gen.load_state_dict(load_file(str(weights), device=str(map_location)), strict=True)
        gen.eval()
        for p in gen.parameters():
            p.requires_grad_(False)
        atk.generator_ = gen.to(map_location)
        atk.input_shape_ = saved
        atk.num_classes_ = int(card["num_classes"])
        return atk


class OnlineAdvGAN:
    """An AdvGAN generator trained alongside a classifier that changes (generator-based
    adversarial training): :meth:`step` takes one generator (and discriminator) step against
    the classifier *as it is now*, :meth:`generate` returns ``x + G(x)`` inside the threat.

    Built by :meth:`AdvGAN.online`; used by
    :class:`~advex.defenses.AdversarialTrainer` (``method="generator"``) as the inner attack
    (cf. Baluja & Fischer 2018, adversarial transformation networks; Lee et al. 2017,
    generative adversarial trainer). Only the generator's parameters receive gradients from
    :meth:`step`: the classifier's ``.grad`` is left alone.
    """

    def __init__(self, attack: AdvGAN, channels: int, device, dtype) -> None:
        self.attack = attack
        seed = 0 if attack.seed is None else int(attack.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed64(seed, 0xADC))
            gen = ConvGenerator(channels, attack.width, attack.blocks, attack.sampling)
            disc = ConvDiscriminator(channels, attack.disc_width)
        if attack.generator_ is not None:  # warm start from a fitted generator (a copy)
            gen.load_state_dict(attack.generator_.state_dict())
        self.generator = gen.to(device, dtype)
        for p in self.generator.parameters():
            p.requires_grad_(True)
        self.disc = disc.to(device, dtype)
        self.loss = _AdvGANLoss(attack, None, self.disc, attack.lr)
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=attack.lr, betas=(0.5, 0.999))

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """One discriminator and one generator step against ``model`` on ``(x, y)``; returns
        the generator's loss. ``model`` keeps its mode; its parameters get no gradient."""
        self.loss.model = model
        self.generator.train()
        try:
            loss, _ = self.loss(self.generator, x, y, None)
        finally:
            self.loss.model = None
        params = [p for p in self.generator.parameters()]
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """``x + δ`` inside the threat (no gradient)."""
        self.generator.eval()
        with torch.no_grad():
            return self.attack._perturb(self.generator, x).detach()

    def checkpoint_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(meta, tensors)``: generator, its Adam, discriminator and its Adam."""
        meta, disc_tensors = self.loss.checkpoint_state()
        opt_meta, opt_tensors = optimizer_state(self.opt)
        tensors = {f"gen.{k}": v for k, v in self.generator.state_dict().items()}
        tensors.update({f"gen_opt.{k}": v for k, v in opt_tensors.items()})
        tensors.update(disc_tensors)
        return {**meta, "gen_opt": opt_meta}, tensors

    def restore_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Undo :meth:`checkpoint_state`."""
        gen = {k[4:]: v for k, v in tensors.items() if k.startswith("gen.")}
        self.generator.load_state_dict(gen, strict=True)
        opt = {k[8:]: v for k, v in tensors.items() if k.startswith("gen_opt.")}
        load_optimizer_state(self.opt, meta["gen_opt"], opt)
        self.loss.restore_state(meta, tensors)


_TRAINING_KEYS = (
    "alpha",
    "beta",
    "c",
    "kappa",
    "saturation",
    "edge_gradient",
    "epochs",
    "batch_size",
    "lr",
    "schedule",
    "disc_width",
    "seed",
)

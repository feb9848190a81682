"""Poisoning attacks: seeded transformations of a training set that plant a backdoor.

Every attack is called on an :class:`advex.data.ArrayDataset` and returns a
:class:`PoisonedData` ``(dataset, indices)``: a *new* dataset (the caller's is never
modified) and the sorted indices of the samples it changed, the ground truth that the
detectors of :mod:`advex.poison.defenses` are scored against. Exactly ``round(rate * N)``
samples are changed; the same ``seed`` picks the same samples and the same trigger.

- :class:`BadNets` (Gu et al. 2017): a small patch trigger, labels flipped to the target
  (all-to-one) or to ``(y + 1) mod K`` (all-to-all);
- :class:`Blend` (Chen et al. 2017): a full-image pattern blended in with an opacity;
- :class:`CleanLabel` (Turner et al. 2019): only target-class images, first made hard to
  learn with advex's PGD on a reference model, then stamped with the trigger; labels unchanged;
- :class:`FeatureCollision` (Shafahi et al. 2018, "Poison Frogs"): target-class images moved,
  by forward-backward splitting, to collide with one test image in the model's feature space;
  labels unchanged. Success means that test image is classified as the target class.

All shapes are generic: ``(N, C, H, W)`` images of any size and channel count inside the
dataset's ``bounds``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from advex.data import ArrayDataset

__all__ = [
    "PoisonedData",
    "Trigger",
    "PoisonAttack",
    "BadNets",
    "Blend",
    "CleanLabel",
    "FeatureCollision",
    "penultimate",
    "features",
    "check_dataset",
    "TRIGGER_SHAPES",
    "POSITIONS",
    "BADNETS_TRIGGER",
    "CLEAN_LABEL_TRIGGER",
]

TRIGGER_SHAPES = ("square", "checkerboard", "cross")
POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center", "all-corners")
#: BadNets' default trigger: a high-contrast 4×4 checkerboard in the bottom-right corner
BADNETS_TRIGGER = {"shape": "checkerboard", "size": 4, "position": "bottom-right"}
#: the label-consistent default (Turner et al. 2019): a 3×3 checkerboard in all four corners
CLEAN_LABEL_TRIGGER = {"shape": "checkerboard", "size": 3, "position": "all-corners"}


class PoisonedData(NamedTuple):
    """What a poisoning attack returns: the poisoned copy and the indices it changed."""

    dataset: ArrayDataset
    indices: torch.Tensor  # int64, sorted


def check_dataset(data, what: str = "dataset", *, images: bool = True) -> ArrayDataset:
    """Raise a clear error unless ``data`` is a labelled :class:`ArrayDataset` of images."""
    if isinstance(data, torch.Tensor) or (
        isinstance(getattr(data, "tensors", None), tuple) and len(data.tensors) == 1
    ):
        raise ValueError(
            f"{what} has no class labels: pass an advex.data.ArrayDataset(x, y) with one "
            "label per input"
        )
    if not isinstance(data, ArrayDataset):
        raise TypeError(f"{what} must be an advex.data.ArrayDataset, got {type(data).__name__}")
    y = getattr(data, "y", None)
    if y is None or not isinstance(y, torch.Tensor) or y.dim() != 1 or y.numel() != len(data.x):
        raise ValueError(f"{what} has no class labels (y): poisoning and detection need them")
    if len(data) == 0:
        raise ValueError(f"{what} is empty")
    if images and data.x.dim() != 4:
        raise ValueError(
            f"{what} must hold images (N, C, H, W); got inputs of shape {tuple(data.x.shape)}"
        )
    return data


def _copy(data: ArrayDataset, x: torch.Tensor, y: torch.Tensor, suffix: str) -> ArrayDataset:
    return ArrayDataset(
        x,
        y,
        name=f"{data.name}-{suffix}",
        num_classes=data.num_classes,
        class_names=data.class_names,
        bounds=data.bounds,
    )


def _check_rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a number in (0, 1), got {rate!r}")
    rate = float(rate)
    if not (0.0 < rate < 1.0) or math.isnan(rate):
        raise ValueError(f"rate must lie strictly between 0 and 1, got {rate}")
    return rate


def penultimate(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` of ``model``: its *input* is the penultimate-layer feature
    vector that feature collision, spectral signatures and activation clustering work on."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(
            "the model has no nn.Linear layer: cannot find its penultimate features "
            "(pass a model whose last layer is nn.Linear)"
        )
    return last


def features(model: nn.Module, x: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    """Penultimate-layer features ``(B, D)`` of ``model`` on ``x`` (the input of its last
    ``nn.Linear``), with or without a graph to differentiate through."""
    layer = penultimate(model)
    box: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, inp, out: box.append(inp[0]))
    try:
        with torch.set_grad_enabled(grad):
            model(x)
    finally:
        handle.remove()
    return box[0].flatten(1)


# --------------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------------


class Trigger:
    """A patch trigger: a ``size × size`` shape stamped at a position with a colour.

    Args:
        shape: ``"square"`` (solid), ``"checkerboard"`` (BadNets' pattern; alternate pixels
            take ``colour`` and the low bound) or ``"cross"`` (an X).
        size: side in pixels.
        position: one of :data:`POSITIONS` or ``(row, col)`` of the top-left corner;
            ``"all-corners"`` stamps the pattern in each of the four corners (Turner et al.'s
            label-consistent trigger).
        colour: a float (every channel) or one value per channel; ``None`` means the high
            bound of the data.
        margin: distance in pixels from the border for the named corner positions.

    >>> t = Trigger("checkerboard", size=4, position="bottom-right")
    >>> x_triggered = t.apply(x)                     # x (B, C, H, W)
    """

    def __init__(
        self,
        shape: str = "checkerboard",
        size: int = 4,
        position: str | tuple[int, int] = "bottom-right",
        colour: float | Sequence[float] | None = None,
        margin: int = 1,
    ) -> None:
        if shape not in TRIGGER_SHAPES:
            raise ValueError(f"unknown trigger shape {shape!r}; expected one of {TRIGGER_SHAPES}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"trigger size must be an integer >= 1, got {size!r}")
        if isinstance(position, str):
            if position not in POSITIONS:
                raise ValueError(
                    f"unknown trigger position {position!r}; expected one of {POSITIONS} "
                    "or (row, col)"
                )
        elif not (
            isinstance(position, (tuple, list))
            and len(position) == 2
            and all(isinstance(p, int) and p >= 0 for p in position)
        ):
            raise ValueError(
                f"trigger position must be a name or (row, col) >= 0, got {position!r}"
            )
        if int(margin) < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.shape = shape
        self.size = int(size)
        self.position = position if isinstance(position, str) else tuple(position)
        self.colour = colour
        self.margin = int(margin)

    def __repr__(self) -> str:
        return (
            f"Trigger(shape={self.shape!r}, size={self.size}, position={self.position!r}, "
            f"colour={self.colour!r})"
        )

    def describe(self) -> dict:
        return {
            "shape": self.shape,
            "size": self.size,
            "position": self.position,
            "colour": self.colour,
            "margin": self.margin,
        }

    def _corners(self, h: int, w: int) -> list[tuple[int, int]]:
        """Top-left ``(row, col)`` of every stamp of the trigger in an ``h × w`` image."""
        s, m = self.size, self.margin
        pos = self.position
        if isinstance(pos, tuple):
            spots = [pos]
        else:
            rows = {"top": m, "bottom": h - s - m, "center": (h - s) // 2}
            cols = {"left": m, "right": w - s - m, "center": (w - s) // 2}
            if pos == "center":
                spots = [(rows["center"], cols["center"])]
            elif pos == "all-corners":
                spots = [(rows[a], cols[b]) for a in ("top", "bottom") for b in ("left", "right")]
            else:
                a, b = pos.split("-")
                spots = [(rows[a], cols[b])]
        for r, c in spots:
            if r < 0 or c < 0 or r + s > h or c + s > w:
                raise ValueError(
                    f"trigger of size {s} at {self.position!r} (margin {m}) does not fit in a "
                    f"{h}x{w} image"
                )
        return spots

    def mask_and_pattern(
        self, image_shape: Sequence[int], bounds: tuple[float, float] = (0.0, 1.0)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask (1, H, W) in {0, 1}, pattern (C, H, W))`` for images of ``image_shape``
        ``(C, H, W)``; the triggered image is ``(1 - mask) * x + mask * pattern``."""
        if len(image_shape) != 3:
            raise ValueError(f"a trigger needs image shape (C, H, W), got {tuple(image_shape)}")
        c, h, w = (int(v) for v in image_shape)
        lo, hi = bounds
        spots = self._corners(h, w)
        s = self.size
        local = torch.ones(s, s)
        if self.shape == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            on = ((ii + jj) % 2 == 0).float()
        elif self.shape == "cross":
            ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            on = ((ii == jj) | (ii + jj == s - 1)).float()
        else:
            on = local
        colour = hi if self.colour is None else self.colour
        col = torch.as_tensor(colour, dtype=torch.float32).reshape(-1)
        if col.numel() not in (1, c):
            raise ValueError(f"trigger colour has {col.numel()} values for {c}-channel images")
        if bool(((col < lo) | (col > hi)).any()):
            raise ValueError(f"trigger colour {colour!r} lies outside the data bounds {bounds}")
        col = col.expand(c).reshape(c, 1, 1)
        mask = torch.zeros(1, h, w)
        pattern = torch.full((c, h, w), float(lo))
        if self.shape in ("square", "checkerboard"):
            # the whole square is replaced: "on" pixels take the colour, the others the low bound
            local_mask, local_pat = torch.ones(s, s), lo + (col - lo) * on
        else:
            local_mask, local_pat = on, col * on + lo * (1 - on)
        for r0, c0 in spots:
            mask[:, r0 : r0 + s, c0 : c0 + s] = local_mask
            pattern[:, r0 : r0 + s, c0 : c0 + s] = local_pat
        return mask, pattern

    def apply(self, x: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """``x`` (B, C, H, W) with the trigger stamped in (a new tensor)."""
        mask, pattern = self.mask_and_pattern(x.shape[1:], bounds)
        mask, pattern = mask.to(x), pattern.to(x)
        return (1 - mask) * x + mask * pattern


# --------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------


class PoisonAttack(ABC):
    """A seeded poisoning attack: ``attack(dataset, model=None) -> PoisonedData``.

    Subclasses implement :meth:`choose` (which indices), :meth:`poison` (the new inputs and
    labels of those indices), :meth:`apply_trigger` (what the attacker does at test time) and
    :meth:`target_labels` (what a triggered input should be classified as).
    """

    #: the labels of the poisoned samples stay correct (clean-label attacks)
    clean_label = False
    #: the attack needs a reference model (pass ``model=`` to the constructor or the call)
    needs_model = False
    name = "poison"

    def __init__(self, rate: float, target: int = 0, *, seed: int = 0) -> None:
        self.rate = _check_rate(rate)
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be a class index (int >= 0), got {target!r}")
        self.target = int(target)
        self.seed = int(seed)

    # -- what subclasses provide --------------------------------------------------------------
    @abstractmethod
    def poison(
        self, x: torch.Tensor, y: torch.Tensor, data: ArrayDataset, model: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New inputs and labels for the chosen samples ``x`` (n, C, H, W), ``y`` (n,)."""

    def apply_trigger(self, x: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)):
        """``x`` with the test-time trigger (a new tensor)."""
        raise NotImplementedError(f"{type(self).__name__} has no input trigger")

    def target_labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The class a triggered input of label ``y`` should be classified as."""
        return torch.full_like(y, self.target)

    def describe(self) -> dict:
        return {"attack": self.name, "rate": self.rate, "target": self.target, "seed": self.seed}

    # -- the shared part ----------------------------------------------------------------------
    def count(self, n: int) -> int:
        """How many samples of a dataset of ``n`` are poisoned: ``round(rate * n)``."""
        k = int(round(self.rate * n))
        if k < 1:
            raise ValueError(f"rate {self.rate} poisons no sample of a dataset of {n}")
        return k

    def candidates(self, data: ArrayDataset) -> torch.Tensor:
        """Indices the attack may poison (all samples; clean-label: the target class)."""
        return torch.arange(len(data))

    def choose(self, data: ArrayDataset) -> torch.Tensor:
        cand = self.candidates(data)
        k = self.count(len(data))
        if k > cand.numel():
            raise ValueError(
                f"{type(self).__name__}: rate {self.rate} asks for {k} poisoned samples but "
                f"only {cand.numel()} are eligible"
                + (f" (class {self.target})" if self.clean_label else "")
            )
        g = torch.Generator().manual_seed(self.seed)
        pick = cand[torch.randperm(cand.numel(), generator=g)[:k]]
        return pick.sort().values

    def validate(self, data: ArrayDataset) -> None:
        """Raise a clear error if the attack cannot poison ``data`` (no labels, not images,
        target out of range, too few eligible samples, a trigger that does not fit)."""
        check_dataset(data)
        if self.target >= data.num_classes:
            raise ValueError(
                f"target class {self.target} is out of range for a dataset with "
                f"{data.num_classes} classes"
            )
        self.choose(data)

    def __call__(self, data: ArrayDataset, model: nn.Module | None = None) -> PoisonedData:
        self.validate(data)
        idx = self.choose(data)
        x = data.x.clone()
        y = data.y.clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            px, py = self.poison(x[idx], y[idx], data, model)
        lo, hi = data.bounds
        x[idx] = px.detach().to(x.dtype).clamp(lo, hi)
        y[idx] = py.to(y.dtype)
        return PoisonedData(_copy(data, x, y, self.name), idx)


class _TriggerAttack(PoisonAttack):
    """An attack whose test-time trigger is a :class:`Trigger` patch."""

    def __init__(self, rate, target=0, *, trigger: Trigger | None = None, seed: int = 0):
        super().__init__(rate, target, seed=seed)
        if trigger is not None and not isinstance(trigger, Trigger):
            raise TypeError(f"trigger must be an advex.poison.Trigger, got {type(trigger)}")
        self.trigger = trigger or Trigger()

    def validate(self, data: ArrayDataset) -> None:
        super().validate(data)
        self.trigger.mask_and_pattern(data.x.shape[1:], data.bounds)  # fits? colour in range?

    def apply_trigger(self, x, bounds=(0.0, 1.0)):
        return self.trigger.apply(x, bounds)

    def describe(self) -> dict:
        return {**super().describe(), "trigger": self.trigger.describe()}


class BadNets(_TriggerAttack):
    """BadNets (Gu, Dolan-Gavitt and Garg 2017): stamp a patch trigger on ``round(rate * N)``
    training images drawn uniformly and relabel them.

    Args:
        rate: share of the training set poisoned, in (0, 1).
        target: the target class (all-to-one).
        trigger: a :class:`Trigger` (default: a 4×4 checkerboard in the bottom-right corner).
        mode: ``"all-to-one"`` (every triggered input → ``target``) or ``"all-to-all"``
            (label ``y`` → ``(y + 1) mod K``; ``target`` is then unused).
        seed: picks the samples.

    >>> poisoned, idx = BadNets(rate=0.01, target=0)(train_set)
    >>> x_test_triggered = BadNets(rate=0.01).apply_trigger(x_test)
    """

    name = "badnets"

    def __init__(
        self,
        rate: float,
        target: int = 0,
        *,
        trigger: Trigger | None = None,
        mode: str = "all-to-one",
        seed: int = 0,
    ) -> None:
        super().__init__(rate, target, trigger=trigger, seed=seed)
        if mode not in ("all-to-one", "all-to-all"):
            raise ValueError(f"mode must be 'all-to-one' or 'all-to-all', got {mode!r}")
        self.mode = mode

    def target_labels(self, y, num_classes):
        if self.mode == "all-to-all":
            return (y + 1) % int(num_classes)
        return torch.full_like(y, self.target)

    def poison(self, x, y, data, model):
        return self.apply_trigger(x, data.bounds), self.target_labels(y, data.num_classes)

    def describe(self):
        return {**super().describe(), "mode": self.mode}


class Blend(PoisonAttack):
    """Blended injection (Chen, Liu, Li, Lu and Song 2017): ``(1 - α) x + α p`` with a
    full-image pattern ``p`` (uniform noise drawn from ``pattern_seed``, or a given tensor)
    on ``round(rate * N)`` images, relabelled to ``target``.

    Args:
        rate, target, seed: as in :class:`BadNets`.
        opacity: α in (0, 1] for the poisoned training images (the paper: 0.2).
        test_opacity: α at test time (default: the same).
        pattern: a ``(C, H, W)`` tensor inside the bounds; default seeded uniform noise.

    >>> poisoned, idx = Blend(rate=0.05, target=0, opacity=0.2)(train_set)
    """

    name = "blend"

    def __init__(
        self,
        rate: float,
        target: int = 0,
        *,
        opacity: float = 0.2,
        test_opacity: float | None = None,
        pattern: torch.Tensor | None = None,
        pattern_seed: int = 1234,
        seed: int = 0,
    ) -> None:
        super().__init__(rate, target, seed=seed)
        for nm, a in (("opacity", opacity), ("test_opacity", test_opacity)):
            if a is not None and not 0.0 < float(a) <= 1.0:
                raise ValueError(f"{nm} must lie in (0, 1], got {a}")
        self.opacity = float(opacity)
        self.test_opacity = float(test_opacity if test_opacity is not None else opacity)
        self.pattern = None if pattern is None else torch.as_tensor(pattern, dtype=torch.float32)
        self.pattern_seed = int(pattern_seed)

    def pattern_for(self, image_shape, bounds) -> torch.Tensor:
        lo, hi = bounds
        if self.pattern is not None:
            if tuple(self.pattern.shape) != tuple(image_shape):
                raise ValueError(
                    f"blend pattern has shape {tuple(self.pattern.shape)}, images have "
                    f"{tuple(image_shape)}"
                )
            return self.pattern
        g = torch.Generator().manual_seed(self.pattern_seed)
        return lo + (hi - lo) * torch.rand(tuple(int(v) for v in image_shape), generator=g)

    def validate(self, data):
        super().validate(data)
        self.pattern_for(data.x.shape[1:], data.bounds)

    def _blend(self, x, alpha, bounds):
        p = self.pattern_for(x.shape[1:], bounds).to(x)
        return (1 - alpha) * x + alpha * p

    def apply_trigger(self, x, bounds=(0.0, 1.0)):
        return self._blend(x, self.test_opacity, bounds)

    def poison(self, x, y, data, model):
        return self._blend(x, self.opacity, data.bounds), torch.full_like(y, self.target)

    def describe(self):
        return {**super().describe(), "opacity": self.opacity, "test_opacity": self.test_opacity}


def _check_model(model, who: str) -> nn.Module:
    if model is None:
        raise ValueError(
            f"{who} needs a reference model: pass model= to the constructor or the call "
            "(advex.poison.measure passes the clean reference model)"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


class CleanLabel(_TriggerAttack):
    """Label-consistent backdoor (Turner, Tsipras and Madry 2019): poison only images of the
    target class, keep their labels, and make them hard to classify from their natural
    features first, so that the model leans on the trigger to learn them.

    Each chosen target-class image is perturbed by advex's :class:`~advex.attacks.PGD`
    (untargeted, L∞ ``eps``, ``steps``, on the reference ``model``, run to the full budget),
    then the trigger is stamped in (images the reference model already misclassifies are
    already hard to learn; PGD leaves them as they are). ``rate`` is still the share of the
    *whole* training set, so at most the target class can be poisoned (``round(rate * N)`` of
    its images).

    Args:
        rate, target, seed: as in :class:`BadNets`.
        trigger: default a 3×3 checkerboard in all four corners (the paper's, which keeps the
            trigger visible under flips and crops and gives it more pixels to be learnt from).
        model: the reference model the perturbation is computed on (a clean model trained
            with the victim's recipe; :func:`advex.poison.measure` passes it).
        eps, steps, step_size: the PGD budget (L∞; the paper: 8/255 – 16/255 on CIFAR-10).
        amplitude: the trigger's opacity on the poisoned training images (the paper lowers it
            to make the trigger less visible); the test-time trigger is at full opacity.

    >>> attack = CleanLabel(rate=0.01, target=0, model=reference, eps=0.3)
    >>> poisoned, idx = attack(train_set)     # all idx have label 0, labels unchanged
    """

    name = "clean-label"
    clean_label = True
    needs_model = True

    def __init__(
        self,
        rate: float,
        target: int = 0,
        *,
        model: nn.Module | None = None,
        eps: float = 0.3,
        steps: int = 20,
        step_size: float | None = None,
        trigger: Trigger | None = None,
        amplitude: float = 1.0,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(rate, target, trigger=trigger or Trigger(**CLEAN_LABEL_TRIGGER), seed=seed)
        if not float(eps) > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not 0.0 < float(amplitude) <= 1.0:
            raise ValueError(f"amplitude must lie in (0, 1], got {amplitude}")
        self.model = model
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = step_size
        self.amplitude = float(amplitude)
        self.batch_size = int(batch_size)

    def candidates(self, data):
        return (data.y == self.target).nonzero().squeeze(1)

    def poison(self, x, y, data, model):
        from advex.attacks import PGD

        model = _check_model(model if model is not None else self.model, "CleanLabel")
        pgd = PGD(
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            early_stop=False,
            bounds=data.bounds,
            seed=self.seed,
        )
        out = []
        for i in range(0, len(x), self.batch_size):
            out.append(pgd(model, x[i : i + self.batch_size], y[i : i + self.batch_size]).x_adv)
        x_adv = torch.cat(out).detach()
        mask, pattern = self.trigger.mask_and_pattern(x.shape[1:], data.bounds)
        m = mask.to(x_adv) * self.amplitude
        return (1 - m) * x_adv + m * pattern.to(x_adv), y.clone()

    def describe(self):
        return {
            **super().describe(),
            "eps": self.eps,
            "steps": self.steps,
            "amplitude": self.amplitude,
        }


class FeatureCollision(PoisonAttack):
    """Poison Frogs (Shafahi et al. 2018): clean-label poisons that collide with one test
    image in feature space, so that the test image is classified as the target class.

    For each chosen base image ``b`` of the target class, forward-backward splitting:
    forward ``x ← x − λ ∇ₓ ‖f(x) − f(t)‖²`` (``f``: the reference model's penultimate
    features, ``t``: the attacked test image), backward ``x ← (x + λβ b) / (1 + λβ)``
    (proximal step of ``β ‖x − b‖²``), then clip to the bounds. ``opacity`` blends ``t``
    into the base first (the paper's watermarking, 0.3 for end-to-end training). Labels are
    unchanged.

    Args:
        rate: share of the training set poisoned (drawn from the target class).
        target: the class the test image should be classified as (the base class).
        target_input: the attacked test image ``(C, H, W)``.
        model: the reference model (its last layer must be ``nn.Linear``).
        beta: weight of the similarity to the base image (the paper's β scaled to the input
            dimension: ``beta * 2048**2 / D**2`` with ``D`` the feature dimension).
        lr: forward step size λ. steps: iterations. opacity: watermark opacity in [0, 1).

    >>> attack = FeatureCollision(0.005, target=0, target_input=x_test[3], model=ref)
    >>> poisoned, idx = attack(train_set)
    """

    name = "feature-collision"
    clean_label = True
    needs_model = True

    def __init__(
        self,
        rate: float,
        target: int = 0,
        *,
        target_input: torch.Tensor | None = None,
        model: nn.Module | None = None,
        beta: float = 0.25,
        lr: float = 0.01,
        steps: int = 200,
        opacity: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(rate, target, seed=seed)
        if target_input is None:
            raise ValueError("FeatureCollision needs target_input: the test image (C, H, W)")
        t = torch.as_tensor(target_input, dtype=torch.float32)
        if t.dim() != 3:
            raise ValueError(f"target_input must be one image (C, H, W), got {tuple(t.shape)}")
        if not 0.0 <= float(opacity) < 1.0:
            raise ValueError(f"opacity must lie in [0, 1), got {opacity}")
        self.target_input = t.detach().clone()
        self.model = model
        self.beta = float(beta)
        self.lr = float(lr)
        self.steps = int(steps)
        self.opacity = float(opacity)

    def candidates(self, data):
        return (data.y == self.target).nonzero().squeeze(1)

    def validate(self, data):
        super().validate(data)
        if tuple(self.target_input.shape) != tuple(data.x.shape[1:]):
            raise ValueError(
                f"target_input has shape {tuple(self.target_input.shape)}, the images "
                f"{tuple(data.x.shape[1:])}"
            )

    def apply_trigger(self, x, bounds=(0.0, 1.0)):
        # no input trigger: the attack is on the one test image
        return x.clone()

    def poison(self, x, y, data, model):
        model = _check_model(model if model is not None else self.model, "FeatureCollision")
        lo, hi = data.bounds
        was_training = model.training
        model.eval()
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            t = self.target_input.to(x).unsqueeze(0)
            ft = features(model, t).detach()
            d = ft.shape[1]
            beta = self.beta * (2048.0 / d) ** 2
            base = (1 - self.opacity) * x + self.opacity * t
            xp = base.clone()
            lam = self.lr
            for _ in range(self.steps):
                xp.requires_grad_(True)
                fx = features(model, xp, grad=True)
                loss = ((fx - ft) ** 2).sum()
                (g,) = torch.autograd.grad(loss, xp)
                with torch.no_grad():
                    xp = xp - lam * g
                    xp = (xp + lam * beta * base) / (1 + lam * beta)
                    xp = xp.clamp(lo, hi)
        finally:
            for p, f in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(f)
            model.train(was_training)
        return xp.detach(), y.clone()

    def describe(self):
        return {
            **super().describe(),
            "beta": self.beta,
            "lr": self.lr,
            "steps": self.steps,
            "opacity": self.opacity,
        }

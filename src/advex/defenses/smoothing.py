"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via
Randomized Smoothing").

The smoothed classifier ``g(x) = argmax_c P(f(x + ε) = c)``, ``ε ~ N(0, σ²I)``, is robust in L2:
if the top class has probability ``p_A ≥ ½`` then ``g`` is constant on the L2 ball of radius
``σ·Φ⁻¹(p_A)`` around ``x`` (their Theorem 1 with ``p_B = 1 − p_A``). ``g`` is only known
through Monte Carlo samples, so :meth:`SmoothedClassifier.predict` and
:meth:`SmoothedClassifier.certify` are the paper's PREDICT and CERTIFY procedures, which are
wrong (return a label or radius that does not hold) with probability at most ``α``.

>>> base = train_gaussian_augmentation("smallcnn", advex.data.mnist5k("train"), sigma=0.25)
>>> smooth = SmoothedClassifier(base, sigma=0.25)
>>> labels, radii = smooth.certify(x, n0=100, n=10_000, alpha=0.001)
>>> certified_accuracy(labels, radii, y, [0.0, 0.25, 0.5])
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

from .._stats import binomial_test_two_sided, clopper_pearson_lower
from ..data import ArrayDataset
from ..models.guards import attack_mode

__all__ = [
    "ABSTAIN",
    "SmoothedClassifier",
    "train_gaussian_augmentation",
    "clopper_pearson_lower",
    "binomial_test_two_sided",
    "certified_accuracy",
    "save_certified_curve",
]

#: label returned by :meth:`SmoothedClassifier.predict` and ``certify`` when they abstain
ABSTAIN = -1


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return alpha


def _check_count(name: str, value) -> int:
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class SmoothedClassifier:
    """The Gaussian-smoothed version ``g`` of a base classifier ``f`` (Cohen et al. 2019).

    Args:
        base: the base classifier (returns logits; best trained on Gaussian-noised inputs,
            see :func:`train_gaussian_augmentation`).
        sigma: noise level σ > 0 (in input units).
        num_classes: number of classes (None: read from one forward pass).
        batch_size: noisy inputs per forward pass of ``base``.
        seed: seed of the noise when no generator is passed (same seed ⇒ same answers).

    Noise is added without clipping to the input bounds, as in the paper (the certificate is
    about ``f(x + ε)`` exactly). Noise for many points and draws is sampled and classified in
    one batch of ``batch_size`` noisy inputs; the base model is run in eval mode and restored.
    """

    def __init__(
        self,
        base: nn.Module,
        sigma: float,
        num_classes: int | None = None,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        if not callable(base):
            raise TypeError(f"base must be a model, got {type(base).__name__}")
        if not (float(sigma) > 0 and math.isfinite(float(sigma))):
            raise ValueError(f"SmoothedClassifier: sigma must be > 0, got {sigma!r}")
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.base = base
        self.sigma = float(sigma)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.batch_size = _check_count("batch_size", batch_size)
        self.seed = int(seed)

    def _gen(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return generator
        return torch.Generator(device=x.device).manual_seed(self.seed)

    @torch.no_grad()
    def sample_counts(
        self, x: torch.Tensor, num: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, num_classes)`` counts of the base classifier's predictions on ``num`` noisy
        copies ``x + N(0, σ²I)`` of every input."""
        num = _check_count("num", num)
        gen = self._gen(x, generator)
        b = x.shape[0]
        ctx = attack_mode(self.base, warn=False) if isinstance(self.base, nn.Module) else None
        if ctx is not None:
            ctx.__enter__()
        try:
            if self.num_classes is None:
                self.num_classes = int(self.base(x[:1]).shape[1])
                if self.num_classes < 2:
                    raise ValueError("the base classifier must output logits for >= 2 classes")
            c = self.num_classes
            counts = torch.zeros(b * c, dtype=torch.int64, device=x.device)
            total = b * num
            for start in range(0, total, self.batch_size):
                flat = torch.arange(start, min(start + self.batch_size, total), device=x.device)
                rows = flat // num
                noise = torch.randn(
                    (flat.numel(),) + tuple(x.shape[1:]),
                    generator=gen,
                    device=gen.device,
                    dtype=x.dtype,
                ).to(x.device)
                pred = self.base(x[rows] + self.sigma * noise).argmax(1)
                counts += torch.bincount(rows * c + pred, minlength=b * c)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        return counts.reshape(b, c)

    def predict(
        self,
        x: torch.Tensor,
        n: int = 100,
        alpha: float = 0.001,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """PREDICT (Cohen et al., Section 3.2): the top class among ``n`` noisy samples, or
        :data:`ABSTAIN` (−1) when the two-sided binomial test of the top-two counts
        ``n_A`` vs ``n_B`` against ``p = ½`` has p-value > ``alpha``. A returned label differs
        from ``g(x)`` with probability at most ``alpha``."""
        alpha = _check_alpha(alpha)
        counts = self.sample_counts(x, n, generator)
        top2 = counts.topk(min(2, counts.shape[1]), dim=1)
        n_a, n_b = top2.values[:, 0], top2.values[:, 1]
        pval = binomial_test_two_sided(n_a.cpu().numpy(), (n_a + n_b).cpu().numpy())
        abstain = torch.as_tensor(pval > alpha, device=x.device)
        return torch.where(abstain, torch.full_like(n_a, ABSTAIN), top2.indices[:, 0])

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CERTIFY (Cohen et al., Section 3.2): ``(labels, radii)`` per input.

        The top class ``ĉ_A`` is selected on ``n0`` noisy samples; ``n`` fresh samples give its
        count ``n_A`` and the one-sided ``(1 − α)`` Clopper–Pearson lower bound ``p̲_A``. If
        ``p̲_A < ½`` the point abstains (label −1, radius 0); otherwise the label is ``ĉ_A`` and
        the certified L2 radius is ``σ·Φ⁻¹(p̲_A)``. With probability at least ``1 − α`` the
        smoothed classifier predicts ``ĉ_A`` everywhere within that radius.
        """
        alpha = _check_alpha(alpha)
        n0 = _check_count("n0", n0)
        n = _check_count("n", n)
        gen = self._gen(x, generator)
        c_hat = self.sample_counts(x, n0, gen).argmax(1)
        counts = self.sample_counts(x, n, gen)
        n_a = counts.gather(1, c_hat[:, None]).squeeze(1).cpu().numpy()
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        ok = p_lower >= 0.5
        radius = np.where(ok, self.sigma * stats.norm.ppf(np.where(ok, p_lower, 0.5)), 0.0)
        ok_t = torch.as_tensor(ok, device=x.device)
        labels = torch.where(ok_t, c_hat, torch.full_like(c_hat, ABSTAIN))
        return labels, torch.as_tensor(radius, dtype=torch.float64, device=x.device)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma}, num_classes={self.num_classes})"


def certified_accuracy(
    labels: torch.Tensor,
    radii: torch.Tensor,
    y: torch.Tensor,
    radius_grid: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Certified accuracy at each radius ``r`` of ``radius_grid``: the share of points whose
    certified label is correct and whose radius is ``≥ r`` (abstentions count as wrong)."""
    labels, radii, y = (torch.as_tensor(t).cpu() for t in (labels, radii, y))
    if not labels.shape == radii.shape == y.shape or labels.dim() != 1:
        raise ValueError(
            "certified_accuracy: labels, radii and y must be 1-D of the same length, got "
            f"{tuple(labels.shape)}, {tuple(radii.shape)}, {tuple(y.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError("certified_accuracy: no points")
    grid = torch.as_tensor(radius_grid, dtype=torch.float64).reshape(-1)
    correct = labels == y
    hit = correct[None, :] & (radii.double()[None, :] >= grid[:, None])
    return hit.double().mean(1)


def save_certified_curve(
    path: str | os.PathLike,
    labels: torch.Tensor,
    radii: torch.Tensor,
    y: torch.Tensor,
    *,
    max_radius: float | None = None,
    title: str | None = None,
    label: str | None = None,
) -> Path:
    """Plot certified accuracy against the L2 radius (a step curve) to a PNG with the Agg
    backend (no display, the global matplotlib state is untouched). Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    radii_t = torch.as_tensor(radii).double().cpu()
    top = float(max_radius) if max_radius is not None else max(float(radii_t.max()) * 1.1, 0.1)
    grid = torch.linspace(0.0, top, 400)
    acc = certified_accuracy(labels, radii_t, y, grid)
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(grid.numpy(), acc.numpy(), drawstyle="steps-post", label=label)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, top)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if label:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(data, "tensors"):
        return data.tensors()
    if isinstance(data, tuple | list) and len(data) == 2:
        return torch.as_tensor(data[0]), torch.as_tensor(data[1])
    raise TypeError("data must be an advex ArrayDataset or an (x, y) pair of tensors")


def train_gaussian_augmentation(
    model_or_arch: nn.Module | str,
    data,
    sigma: float,
    epochs: int = 10,
    *,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    out_dir: str | os.PathLike | None = None,
    test_data=None,
    progress: bool = False,
) -> nn.Module:
    """Train a base classifier for randomized smoothing with Gaussian data augmentation
    (Cohen et al. 2019, Section 4: every training input gets fresh ``N(0, σ²I)`` noise, not
    clipped, and cross-entropy is minimised on the noisy inputs).

    Args:
        model_or_arch: a model to train in place (e.g. a pretrained zoo model to fine-tune),
            or a zoo architecture name (``advex.zoo.build(name, **arch_kwargs)``, initialised
            under ``seed``).
        data: training data, an :class:`advex.data.ArrayDataset` or ``(x, y)``.
        sigma: training noise level (train at the σ you certify with).
        epochs, lr, batch_size: Adam with a per-step cosine decay of the learning rate.
        seed: seeds the initialisation (for an architecture name), the shuffling and the
            noise; the global RNG is left untouched. Same seed ⇒ same weights.
        arch, arch_kwargs: the zoo architecture of a model passed in (needed to save it).
        out_dir: if given, the model is saved there in zoo format (``advex.zoo.save``) with
            a card recording σ, the recipe and, when ``test_data`` is given, the clean and
            noisy accuracy.
        test_data: optional held-out data for the card.

    Returns the trained model in eval mode.
    """
    from advex import zoo

    if not (float(sigma) >= 0 and math.isfinite(float(sigma))):
        raise ValueError(f"train_gaussian_augmentation: sigma must be >= 0, got {sigma!r}")
    epochs = _check_count("epochs", epochs)
    batch_size = _check_count("batch_size", batch_size)
    if not float(lr) > 0:
        raise ValueError(f"train_gaussian_augmentation: lr must be > 0, got {lr!r}")
    x, y = _as_tensors(data)
    if len(y) == 0:
        raise ValueError("train_gaussian_augmentation: empty training data")
    if isinstance(model_or_arch, str):
        if arch is not None and arch != model_or_arch:
            raise ValueError(f"arch={arch!r} conflicts with model_or_arch={model_or_arch!r}")
        arch = model_or_arch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = zoo.build(arch, **dict(arch_kwargs or {}))
    elif isinstance(model_or_arch, nn.Module):
        model = model_or_arch
    else:
        raise TypeError("model_or_arch must be an nn.Module or an architecture name")
    if out_dir is not None and arch is None:
        raise ValueError("out_dir needs the model's architecture name: pass arch='smallcnn'")

    sigma = float(sigma)
    n = len(y)

    def gaussian(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return xb + sigma * torch.randn(xb.shape, generator=gen, dtype=xb.dtype)

    t0 = time.perf_counter()
    zoo.train(
        model,
        ArrayDataset(x, y, name="gaussian-augmentation"),
        epochs=epochs,
        lr=float(lr),
        batch_size=batch_size,
        seed=seed,
        schedule="cosine",
        augment=gaussian,
        progress=progress,
        desc=f"gaussian augmentation σ={sigma:g}",
    )  # hands the model back in eval mode
    wall = time.perf_counter() - t0
    if out_dir is not None:
        card = {
            "name": f"{arch}-gaussian-sigma{sigma:g}",
            "defense": "randomized-smoothing base classifier (Gaussian data augmentation)",
            "sigma": sigma,
            "recipe": {
                "optimizer": "adam",
                "lr": float(lr),
                "epochs": epochs,
                "batch_size": batch_size,
                "schedule": "cosine",
                "loss": "cross_entropy on x + N(0, sigma^2 I)",
            },
            "seed": int(seed),
            "n_train": n,
            "input_shape": list(x.shape[1:]),
            "train_time_s": round(wall, 3),
        }
        if test_data is not None:
            xt, yt = _as_tensors(test_data)
            card["accuracy"] = _accuracy(model, xt, yt, 0.0, seed)
            card["accuracy_noisy"] = _accuracy(model, xt, yt, sigma, seed)
        zoo.save(model, out_dir, card, arch, dict(arch_kwargs or {}))
    return model


@torch.no_grad()
def _accuracy(model, x, y, sigma, seed, batch_size=1000) -> float:
    gen = torch.Generator().manual_seed(int(seed) + 1)
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = x[i : i + batch_size]
        if sigma > 0:
            xb = xb + sigma * torch.randn(xb.shape, generator=gen, dtype=xb.dtype)
        correct += int((model(xb).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(y)

"""Architectures of the reference models (all return logits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from advex.models.wrappers import Normalize

__all__ = ["ARCHITECTURES", "build", "register_arch", "smallcnn", "trades_cnn", "mlp"]

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def smallcnn(
    num_classes: int = 10,
    in_channels: int = 1,
    mean: Sequence[float] = MNIST_MEAN,
    std: Sequence[float] = MNIST_STD,
    image_size: int | Sequence[int] = 28,
) -> nn.Sequential:
    """Normalize → Conv(32)-ReLU-MaxPool → Conv(64)-ReLU-MaxPool → FC(128)-ReLU → FC(classes).

    Input ``(N, in_channels, H, W)`` in ``[0, 1]``; ``image_size`` is ``H`` (square) or
    ``(H, W)``, 28 by default (MNIST).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return nn.Sequential(
        Normalize(list(mean), list(std)),
        nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (int(h) // 4) * (int(w) // 4), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def trades_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    mean: Sequence[float] = MNIST_MEAN,
    std: Sequence[float] = MNIST_STD,
) -> nn.Sequential:
    """The MNIST "SmallCNN" of TRADES (Zhang et al. 2019) and AutoAttack's MNIST models:
    Normalize → Conv(32)-Conv(32)-MaxPool → Conv(64)-Conv(64)-MaxPool → FC(200)-FC(200) →
    FC(classes), 3×3 valid convolutions, ReLU. About 2.4× the multiply-adds of
    :func:`smallcnn`; the capacity robust training at MNIST ε = 0.3 needs.

    Input ``(N, in_channels, 28, 28)`` in ``[0, 1]``.
    """
    return nn.Sequential(
        Normalize(list(mean), list(std)),
        nn.Conv2d(in_channels, 32, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(32, 32, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(64, 64, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10) -> nn.Sequential:
    """Flatten → Linear(in_features, hidden)-ReLU → Linear(hidden, classes). Input 1×8×8."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": smallcnn,
    "trades-cnn": trades_cnn,
    "mlp": mlp,
}


#: architectures registered by a sibling zoo module on import (so a saved directory loads alone)
_LAZY = {"gtsrb-cnn": "advex.zoo.traffic"}


def register_arch(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add an architecture so that :func:`build` and saved cards can refer to it by name."""
    ARCHITECTURES[name] = factory


def build(arch: str, **kwargs) -> nn.Module:
    """Build a fresh (untrained) model of architecture ``arch``."""
    if arch not in ARCHITECTURES and arch in _LAZY:  # registered by a sibling zoo module
        import importlib

        importlib.import_module(_LAZY[arch])
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}; available: {sorted(ARCHITECTURES)}"
        ) from None
    return factory(**kwargs)

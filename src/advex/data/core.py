"""The in-memory dataset type shared by all advex loaders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

__all__ = ["ArrayDataset", "DatasetError"]


class DatasetError(ValueError):
    """A dataset file exists but cannot be used (corrupt, truncated, wrong format, ...)."""


def _as_tensor(a, dtype: torch.dtype, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        try:
            t = torch.from_numpy(np.ascontiguousarray(a))
        except TypeError as e:
            raise ValueError(f"ArrayDataset: cannot convert {what} to a tensor: {e}") from e
    if dtype.is_floating_point:
        if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int32, torch.int64)):
            raise ValueError(f"ArrayDataset: {what} has unsupported dtype {t.dtype}")
    elif t.is_floating_point():
        if not torch.all(t == t.round()):
            raise ValueError(f"ArrayDataset: {what} must hold integer class labels")
    return t.to(dtype).contiguous()


class ArrayDataset(Dataset):
    """An in-memory labelled dataset.

    Parameters
    ----------
    x:
        Inputs: images ``(N, C, H, W)`` with values inside ``bounds`` (``[0, 1]`` by default),
        or tabular ``(N, D)``. Stored as ``float32``.
    y:
        Integer class labels ``(N,)`` in ``[0, num_classes)``. Stored as ``int64``.
    name:
        A short name used in reports (``"mnist5k-test"``, ...).
    num_classes:
        Number of classes; inferred from ``class_names`` or ``y.max() + 1`` when omitted.
    class_names:
        Human-readable name per class; defaults to ``["0", "1", ...]``.
    bounds:
        The valid input range ``(low, high)``; attacks clip to it.
    """

    def __init__(
        self,
        x,
        y,
        *,
        name: str = "array",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        x_t = _as_tensor(x, torch.float32, "x")
        y_t = _as_tensor(y, torch.int64, "y")
        if x_t.dim() < 2:
            raise ValueError(
                f"ArrayDataset: x must have a batch dimension, (N, D) or (N, C, H, W); "
                f"got shape {tuple(x_t.shape)}"
            )
        if y_t.dim() != 1:
            raise ValueError(f"ArrayDataset: y must be 1-D (N,), got shape {tuple(y_t.shape)}")
        if x_t.shape[0] != y_t.shape[0]:
            raise ValueError(
                f"ArrayDataset: x and y have different lengths ({x_t.shape[0]} vs {y_t.shape[0]})"
            )
        if not bool(torch.isfinite(x_t).all()):
            n_bad = int((~torch.isfinite(x_t)).sum())
            raise ValueError(f"ArrayDataset: x contains {n_bad} non-finite values (NaN or inf)")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
        if num_classes is None:
            if class_names is not None:
                num_classes = len(class_names)
            else:
                num_classes = int(y_t.max()) + 1 if y_t.numel() else 0
        num_classes = int(num_classes)
        if num_classes < 1 and y_t.numel():
            raise ValueError(f"ArrayDataset: num_classes must be >= 1, got {num_classes}")
        if class_names is None:
            class_names = [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(
                f"ArrayDataset: {len(class_names)} class_names given for {num_classes} classes"
            )
        if y_t.numel():
            lo, hi = int(y_t.min()), int(y_t.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"ArrayDataset: labels y must lie in [0, {num_classes}); "
                    f"found values in [{lo}, {hi}]"
                )
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ValueError(f"ArrayDataset: bounds must satisfy low < high, got {bounds}")
        self.x = x_t
        self.y = y_t
        self.name = str(name)
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.bounds = (low, high)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i):
        if isinstance(i, list):
            i = torch.as_tensor(i, dtype=torch.int64)
        return self.x[i], self.y[i]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, x_shape={tuple(self.x.shape[1:])}, "
            f"num_classes={self.num_classes}, bounds={self.bounds})"
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)``: all inputs and labels as tensors."""
        return self.x, self.y

    def subset(self, n_or_indices) -> ArrayDataset:
        """A new dataset with the first ``n`` items (int) or the given indices (sequence/tensor)."""
        if isinstance(n_or_indices, (int, np.integer)) and not isinstance(n_or_indices, bool):
            n = int(n_or_indices)
            if n < 0:
                raise ValueError(f"subset: n must be >= 0, got {n}")
            idx = torch.arange(min(n, len(self)))
        else:
            idx = torch.as_tensor(np.asarray(n_or_indices), dtype=torch.int64).reshape(-1)
            if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
                raise IndexError(f"subset: indices out of range for a dataset of {len(self)}")
        return ArrayDataset(
            self.x[idx],
            self.y[idx],
            name=self.name,
            num_classes=self.num_classes,
            class_names=self.class_names,
            bounds=self.bounds,
        )

    def loader(self, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A :class:`~torch.utils.data.DataLoader`; shuffling is deterministic for ``seed``."""
        if int(batch_size) < 1:
            raise ValueError(f"loader: batch_size must be >= 1, got {batch_size}")
        g = torch.Generator()
        g.manual_seed(int(seed))
        base = RandomSampler(self, generator=g) if shuffle else SequentialSampler(self)
        # Index whole batches at once (x[list]) instead of collating N single items.
        batches = BatchSampler(base, batch_size=int(batch_size), drop_last=False)
        return DataLoader(self, sampler=batches, batch_size=None)

"""Turning what users pass as ``data`` into a stream of ``(x, y)`` batches, and targets.

Every batch goes through :mod:`advex.core.validate` (the one validation of every entry point):
tensors given up front are checked whole before any work (finite floating ``x``, one integer
label ``>= 0`` per point), batches from a loader as they come.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.validate import check_batch
from ..models.guards import model_device

__all__ = ["Batches", "as_batches", "model_device", "resolve_target"]


@dataclass
class Batches:
    """An iterable of ``(x, y)`` batches plus what is known about the data up front."""

    source: Any
    batch_size: int
    total: int | None  # number of batches, when known
    n: int | None  # number of points, when known
    name: str | None = None
    class_names: list[str] | None = None
    bounds: tuple[float, float] | None = None

    @property
    def labels(self) -> torch.Tensor | None:
        """Every label of the data when known up front (tensors and ``ArrayDataset``)."""
        return self.source[1] if isinstance(self.source, tuple) else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.source, tuple):
            x, y = self.source
            for i in range(0, x.shape[0], self.batch_size):
                yield x[i : i + self.batch_size], y[i : i + self.batch_size]
            return
        for k, item in enumerate(self.source):
            yield _as_pair(item, k)


def _as_pair(item: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, dict):
        raise TypeError(
            f"batch {k} of data is a dict; data must yield (x, y) pairs (wrap your loader so it "
            "yields (inputs, labels))"
        )
    if not isinstance(item, list | tuple) or len(item) < 2:
        raise TypeError(
            f"batch {k} of data is a {type(item).__name__}; data must yield (x, y) pairs"
        )
    x, y = _tensor(item[0], "x", k), _tensor(item[1], "y", k)
    _check_whole(x, y, f"data (batch {k})")
    return x, y


def _check_whole(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """The checks that need no model: the batch axis, one label per point, finite inputs,
    labels >= 0 (a label's upper limit is checked once the model's classes are known)."""
    if x.dim() < 2:
        raise ValueError(f"{what}: x must have a batch dimension, got shape {tuple(x.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: x and y have different lengths ({x.shape[0]} vs {y.shape[0]})")
    if x.shape[0] == 0:
        return
    check_batch(x, y, name=f"{what} x")
    if int(y.min()) < 0:
        raise ValueError(
            f"{what}: y has label {int(y.min())} but class labels are 0..classes-1 (a label of "
            "-1 often marks an unlabelled point: drop those points)"
        )


def _tensor(a: Any, what: str, k: int | None = None) -> torch.Tensor:
    where = "" if k is None else f" (batch {k})"
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"data {what}{where} must be a tensor or array, got {type(a).__name__}")
    if what == "x" and not a.is_floating_point():
        raise TypeError(
            f"data x{where} must be floating point (e.g. float32 pixels in [0, 1]), "
            f"got dtype {a.dtype}"
        )
    if what == "y":
        if a.is_floating_point() or a.dtype == torch.bool:
            raise TypeError(f"data y{where} must hold integer class labels, got dtype {a.dtype}")
        if a.dim() != 1:
            raise ValueError(f"data y{where} must be 1-D (batch,), got shape {tuple(a.shape)}")
    return a


def _empty(what: str) -> ValueError:
    return ValueError(f"data is empty: {what} has no points to evaluate")


def as_batches(data: Any, batch_size: int = 256) -> Batches:
    """Accept ``(x, y)`` tensors/arrays, an ``advex.data.ArrayDataset``, a torch ``Dataset``, a
    ``DataLoader`` or any iterable of ``(x, y)`` batches.

    Tensors and datasets are cut into batches of ``batch_size``; a DataLoader (or other iterable)
    is used with its own batching. Raises ``ValueError`` for an empty dataset.
    """
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    if isinstance(data, tuple | list) and len(data) == 2 and not _is_batch_list(data):
        x, y = _tensor(data[0], "x"), _tensor(data[1], "y")
        if x.dim() < 2:
            raise ValueError(f"data x must have a batch dimension, got shape {tuple(x.shape)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data x and y have different lengths ({x.shape[0]} vs {y.shape[0]})")
        if x.shape[0] == 0:
            raise _empty("the (x, y) tensors")
        _check_whole(x, y, "data")
        n = int(x.shape[0])
        return Batches((x, y), batch_size, -(-n // batch_size), n)
    if hasattr(data, "tensors") and callable(data.tensors) and isinstance(data, Dataset):
        # advex.data.ArrayDataset: index whole batches, keep its metadata for reports
        x, y = data.tensors()
        if len(y) == 0:
            raise _empty(f"dataset {getattr(data, 'name', type(data).__name__)!r}")
        x, y = _tensor(x, "x"), _tensor(y, "y")
        _check_whole(x, y, f"dataset {getattr(data, 'name', type(data).__name__)!r}")
        n = int(len(y))
        return Batches(
            (x, y),
            batch_size,
            -(-n // batch_size),
            n,
            name=getattr(data, "name", None),
            class_names=list(getattr(data, "class_names", []) or []) or None,
            bounds=getattr(data, "bounds", None),
        )
    if isinstance(data, DataLoader):
        ds = data.dataset
        n = _safe_len(ds)
        if n == 0:
            raise _empty("the DataLoader's dataset")
        return Batches(
            data,
            data.batch_size or batch_size,
            _safe_len(data),
            n,
            name=getattr(ds, "name", None),
            class_names=getattr(ds, "class_names", None),
            bounds=getattr(ds, "bounds", None),
        )
    if isinstance(data, Dataset):
        n = _safe_len(data)
        if n == 0:
            raise _empty(f"dataset {type(data).__name__}")
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return Batches(
            loader,
            batch_size,
            _safe_len(loader),
            n,
            name=getattr(data, "name", None),
            class_names=getattr(data, "class_names", None),
        )
    if isinstance(data, torch.Tensor):
        raise TypeError("data must be an (x, y) pair, a Dataset or a DataLoader, not a lone tensor")
    if hasattr(data, "__iter__"):
        return Batches(data, batch_size, _safe_len(data), None)
    raise TypeError(
        "data must be an (x, y) tuple of tensors, an advex.data.ArrayDataset, a torch Dataset or "
        f"a DataLoader yielding (x, y); got {type(data).__name__}"
    )


def _is_batch_list(data) -> bool:
    """A list of two (x, y) batches is not an (x, y) pair."""
    return all(isinstance(d, list | tuple) for d in data)


def _safe_len(obj) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def check_target_spec(target: Any) -> None:
    if target is None or callable(target):
        return
    if isinstance(target, bool):
        raise TypeError(
            "target must be a class index (int), a tensor, a callable or None, got a bool: "
            "pass the target class, e.g. target=3, or target=None for an untargeted evaluation"
        )
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"target must be a class index >= 0, got {target}")
        return
    if isinstance(target, torch.Tensor | np.ndarray):
        kind = target.dtype
        if isinstance(target, torch.Tensor):
            bad = kind == torch.bool or kind.is_floating_point or kind.is_complex
        else:
            bad = kind.kind not in "iu"
        if bad:
            raise TypeError(f"target must hold integer class indices, got dtype {kind}")
        return
    raise TypeError(
        "target must be None, a class index (int), a tensor of targets in data order, or a "
        f"callable y -> targets; got {type(target).__name__}"
    )


def resolve_target(target: Any, y: torch.Tensor, offset: int) -> torch.Tensor | None:
    """Targets for the batch with labels ``y`` whose first point is point ``offset`` of the data.

    ``target`` is None (untargeted), an int (same class for every point), a 1-D tensor in data
    order, or a callable ``y -> targets``.
    """
    if target is None:
        return None
    if isinstance(target, int):
        return torch.full_like(y, target)
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, torch.Tensor):
        if target.dim() == 0:
            return torch.full_like(y, int(target))
        if target.dim() != 1:
            raise ValueError(f"target must be 1-D (one class per point), got {tuple(target.shape)}")
        t = target[offset : offset + y.shape[0]]
        if t.shape[0] != y.shape[0]:
            raise ValueError(
                f"target has {target.shape[0]} entries but the data has more points "
                f"(at least {offset + y.shape[0]})"
            )
        return t.to(device=y.device, dtype=torch.long)
    t = target(y)
    if isinstance(t, bool):
        raise TypeError("target callable returned a bool; it must return class indices")
    if isinstance(t, int):
        return torch.full_like(y, t)
    t = torch.as_tensor(t, device=y.device)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"target callable must return integer class indices, got dtype {t.dtype}")
    if t.shape != y.shape:
        raise ValueError(
            f"target callable returned shape {tuple(t.shape)} for labels {tuple(y.shape)}"
        )
    return t.long()

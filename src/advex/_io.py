"""Files and seeds shared by every layer: atomic writes, JSON encoding, seed derivation.

A leaf module (it imports only the standard library, numpy and torch), so any package of
advex may use it.

**Atomic writes.** :func:`atomic_write` writes to a temporary file in the target's directory
and renames it over the target (``os.replace``), so a reader, or a run killed at any moment,
sees either the old file or the complete new one, never half a file.

**Permissions.** A file written by :func:`atomic_write` gets the permissions an ordinary
``open(path, "w")`` would give it: ``0o666`` minus the process umask (``0o644`` with the usual
umask ``022``), unless ``mode=`` asks for other bits. (``tempfile.mkstemp`` alone would leave
``0o600``.)

>>> atomic_write("out/log.txt", "done\\n")
>>> write_json("out/result.json", {"accuracy": torch.tensor(0.98), "eps": (0.1, 0.3)})
>>> derive_seed(0, 3, 1)  # the seed of batch 3, stage 1 of a run seeded with 0
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_write",
    "write_json",
    "jsonable",
    "json_default",
    "derive_seed",
    "derive_seed64",
    "default_file_mode",
]


def default_file_mode() -> int:
    """``0o666`` minus the process umask: the permissions of a newly created ordinary file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(
    path: str | os.PathLike,
    data: bytes | str | Callable[[str], None],
    *,
    mode: int | None = None,
) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory + rename).

    Args:
        path: the target file; missing parent directories are created.
        data: ``bytes`` (written as is), ``str`` (written as UTF-8) or a writer
            ``data(tmp_path)`` that writes the file at ``tmp_path`` itself (e.g.
            ``lambda p: safetensors.torch.save_file(tensors, p)``).
        mode: permission bits of the file; ``None`` (default): those of an ordinary new file,
            ``0o666`` minus the umask (see the module docstring).

    On any error (including ``KeyboardInterrupt``) the temporary file is removed and ``path``
    is left as it was. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if not (isinstance(data, bytes | bytearray | str) or callable(data)):
        raise TypeError(f"data must be bytes, str or a writer callable, got {type(data).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def jsonable(obj: Any) -> Any:
    """Convert results, tensors, numpy values and dataclasses to plain JSON values.

    Objects with ``to_dict()`` (results, curves, threat models) or ``summary()``
    (:class:`~advex.core.result.AttackResult`) are converted with it; tensors and arrays become
    (nested) lists, paths and dtypes strings; NaN and ±inf become None (strict JSON has no
    such numbers).
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, torch.Tensor | np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    if hasattr(obj, "summary") and callable(obj.summary):
        return jsonable(obj.summary())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON")


def json_default(obj: Any) -> Any:
    """``default=`` hook for :func:`json.dumps`: what :func:`jsonable` makes of ``obj``.

    Unlike :func:`jsonable` applied to the whole document, it is only called for values
    ``json`` cannot encode itself, so finite and non-finite floats pass through unchanged;
    a one-element tensor becomes its number.
    """
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return jsonable(obj)


def write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    allow_nan: bool = True,
    mode: int | None = None,
) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) with :func:`atomic_write`.

    Values ``json`` cannot encode (tensors, numpy numbers, tuples, paths, results) go through
    :func:`json_default`. Returns ``path``.
    """
    text = json.dumps(
        obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=json_default
    )
    return atomic_write(path, text + "\n", mode=mode)


def derive_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed from ``seed`` and integer coordinates (batch index, stage index, ...):
    the first 4 bytes of SHA-256 of ``"seed:part1:part2..."``, little-endian, top bit cleared.

    Used by the evaluation (one seed per batch and attack stage).
    """
    text = ":".join(str(int(p)) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def derive_seed64(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, stream, ...): 64-bit FNV-1a over the parts.

    Used by training (per-epoch shuffling, attack starts, dropout). It is kept beside
    :func:`derive_seed` rather than replaced by it because trained weights recorded in caches
    and documentation were produced with these seeds.
    """
    h = 1469598103934665603
    for p in parts:
        h ^= int(p) & 0xFFFFFFFFFFFFFFFF
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF

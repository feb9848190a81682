"""JSON results with the metadata needed to reproduce them."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .._io import atomic_write, jsonable

__all__ = ["advex_version", "metadata", "jsonable", "to_json", "read_json", "SCHEMA"]

SCHEMA = "advex-results/1"


def advex_version() -> str:
    """The installed advex version (``"unknown"`` if it cannot be read)."""
    try:
        import advex

        return str(advex.__version__)
    except Exception:  # pragma: no cover - a partial install
        return "unknown"


def metadata(
    *, seed: int | None = None, threat: Any = None, command: str | None = None
) -> dict[str, Any]:
    """Versions, platform, date (UTC) and, when given, the seed, threat model and command line."""
    if threat is not None and hasattr(threat, "to_dict"):
        threat = threat.to_dict()
    return {
        "schema": SCHEMA,
        "advex_version": advex_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "threat": jsonable(threat),
        "command": command,
    }


def to_json(
    obj: Any,
    path: str | os.PathLike,
    *,
    seed: int | None = None,
    threat: Any = None,
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``obj`` (an evaluation result, a curve, an ``AttackResult``, or a dict of them) to
    ``path`` as JSON, with a ``"meta"`` block: advex/torch/numpy/python versions, platform, date,
    seed and threat model. Returns the written document.

    The file is written atomically with :func:`advex._io.atomic_write` (temporary file, then
    rename; the permissions of an ordinary new file); the parent directory is created if
    needed. Read it back with :func:`read_json` or ``json.load``.
    """
    body = jsonable(obj)
    if threat is None:
        threat = _find_threat(obj)
    doc: dict[str, Any] = {"meta": metadata(seed=seed, threat=threat, command=command)}
    if meta:
        doc["meta"].update(jsonable(dict(meta)))
    if isinstance(body, dict):
        doc.update({k: v for k, v in body.items() if k != "meta"})
    else:
        doc["results"] = body
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    atomic_write(path, text)
    return doc


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results file written by :func:`to_json`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _find_threat(obj: Any) -> Any:
    """The threat model shared by the attacks of a result, if there is one."""
    t = getattr(obj, "threat", None)
    if t is not None and hasattr(t, "to_dict"):
        return t
    stats = getattr(obj, "attacks", None)
    if isinstance(stats, Mapping) and stats:
        threats = [getattr(s, "threat", None) for s in stats.values()]
        if all(isinstance(t, dict) for t in threats) and all(t == threats[0] for t in threats):
            return threats[0]
    return None

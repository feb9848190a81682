"""On-disk state of a resumable evaluation: a fingerprint plus one file pair per finished batch.

Layout of ``<out_dir>/state/``: ``fingerprint.json`` (what the run is: model weights hash, data,
threat model, preset, seed, batch size, advex version), ``batch_00000.json`` (per-point
results of batch 0, JSON) and ``batch_00000.safetensors`` (the few (x, x_adv) examples kept for
the report), ``checks.json`` (the masking checks, once computed). Every file is written to a
temporary name and renamed, so a batch is either completely on disk or absent: a run killed
at any moment resumes from the last finished batch. No pickle is ever read or written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write

__all__ = [
    "RunState",
    "model_hash",
    "tensor_hash",
    "FingerprintMismatch",
    "CorruptState",
    "refuse_rank_states",
    "batch_record",
    "stage_stats",
]


class FingerprintMismatch(ValueError):
    """The output directory holds the state of a different run."""


class CorruptState(ValueError):
    """A file of a run's saved state cannot be read (truncated or damaged); the message names
    the file and how to start over."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"the saved evaluation state {self.path} is unreadable ({reason}); delete it, or "
            "rerun with restart=True (CLI: --restart) to discard the saved state and start over"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptState(path, f"{type(err).__name__}: {err}") from err


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError (not a ValueError)
        raise CorruptState(path, f"{type(err).__name__}: {err}") from err


def tensor_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def model_hash(model: Any) -> str:
    """SHA-256 of the names, shapes and bytes of the model's parameters and buffers."""
    if not isinstance(model, nn.Module):
        return f"callable:{type(model).__qualname__}"
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(tensor_hash(t).encode())
    return h.hexdigest()[:32]


def refuse_rank_states(out_dir: str | os.PathLike, restart: bool) -> None:
    """A one-process run refuses an output directory holding the per-rank state of a sharded
    (torchrun) run (``rank<r>-of-<W>/``), or removes it with ``restart``."""
    import shutil

    ranks = sorted(p for p in Path(out_dir).glob("rank*-of-*") if p.is_dir())
    if not ranks:
        return
    if restart:
        for p in ranks:
            shutil.rmtree(p, ignore_errors=True)
        return
    sizes = sorted({p.name.split("-of-")[1] for p in ranks})
    raise FingerprintMismatch(
        f"{out_dir} holds the state of a distributed run with world size {', '.join(sizes)}, "
        "not of one process: rerun it under torchrun with that many processes to resume it, "
        "use another output directory, or restart=True (CLI: --restart) to discard it"
    )


def stage_stats(res: Any, name: str) -> dict[str, Any]:
    """One stage's counts in a batch record: points attacked, gradients, queries, seconds."""
    s = res.attacks[name]
    return {
        "attacked": s.n_attacked,
        "gradients": s.gradients_total,
        "queries": s.queries_total,
        "time_s": s.time_s,
    }


def batch_record(
    k: int, offset: int, res: Any, worst: torch.Tensor, stages: list[str]
) -> dict[str, Any]:
    """The per-point part of a batch's record in the run state (one process and sharded runs
    write the same): batch ``k`` at ``offset``, a :func:`robust_accuracy` result ``res``, the
    norm of each point's successful stage ``worst``, and the counts of ``stages``."""
    return {
        "batch": k,
        "offset": offset,
        "y": res.y.tolist(),
        "clean_pred": res.clean_pred.tolist(),
        "clean_conf": res.clean_conf.tolist(),
        "broken_by": res.broken_by.tolist(),
        "adv_pred": res.adv_pred.tolist(),
        "adv_conf": res.adv_conf.tolist(),
        "norm": worst.tolist(),
        "stages": {n: stage_stats(res, n) for n in stages},
    }


class RunState:
    """Read and write the state of one run under ``out_dir/state``."""

    def __init__(self, out_dir: str | os.PathLike, fingerprint: dict[str, Any], restart: bool):
        self.dir = Path(out_dir) / "state"
        self.fingerprint = fingerprint
        fp_path = self.dir / "fingerprint.json"
        if fp_path.exists() and not restart:
            old = _read_json(fp_path)
            if old != fingerprint:
                keys = set(old) | set(fingerprint)
                diff = sorted(k for k in keys if old.get(k) != fingerprint.get(k))
                raise FingerprintMismatch(
                    f"{out_dir} holds the state of a different run (differs in: "
                    f"{', '.join(diff)}); use another output directory, or restart=True "
                    "(CLI: --restart) to discard it"
                )
        else:
            if self.dir.exists():
                for p in self.dir.iterdir():
                    if p.is_file():
                        p.unlink()
            atomic_write(fp_path, json.dumps(fingerprint, indent=2, sort_keys=True).encode())

    def _paths(self, k: int) -> tuple[Path, Path]:
        return self.dir / f"batch_{k:05d}.json", self.dir / f"batch_{k:05d}.safetensors"

    def load_batch(self, k: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        js, st = self._paths(k)
        if not js.exists():
            return None
        record = _read_json(js)
        if not isinstance(record, dict):
            raise CorruptState(js, "not a JSON object")
        tensors: dict[str, torch.Tensor] = {}
        if record.get("has_examples"):
            if not st.exists():
                raise CorruptState(st, "missing, though its batch record lists examples")
            tensors = _read_tensors(st)
        return record, tensors

    def save_batch(self, k: int, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        js, st = self._paths(k)
        record = dict(record, has_examples=bool(tensors))
        if tensors:
            from safetensors.torch import save

            atomic_write(st, save({n: t.contiguous() for n, t in tensors.items()}))
        # the JSON last: its presence marks the batch as finished
        atomic_write(js, json.dumps(record, allow_nan=True).encode())

    def load_json(self, name: str) -> Any:
        p = self.dir / name
        return _read_json(p) if p.exists() else None

    def save_json(self, name: str, obj: Any) -> None:
        atomic_write(self.dir / name, json.dumps(obj, allow_nan=True).encode())

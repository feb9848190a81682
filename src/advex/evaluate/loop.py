"""The batch loop shared by :func:`~advex.evaluate.robust_accuracy` and
:func:`~advex.evaluate.robustness_curve`.

For every batch of the data: the one validation (:mod:`advex.core.validate`, against every
attack's threat), the targets resolved (points whose target is their label are skipped and
counted), one clean forward pass, the label and target checks against the model's classes.
The caller then runs its attacks with :func:`attack_points` on the points still robust, and
:meth:`BatchLoop.record` keeps its per-point columns, concatenated at the end by
:meth:`BatchLoop.column`.

>>> with BatchLoop(model, batches, threats, target=None, device=dev) as loop:
...     for b in loop:
...         pool = b.correct.nonzero().squeeze(1)
...         res, seconds = attack_points(attack, loop.model, b, pool)
...         loop.record(y=b.y, success=...)
>>> loop.column("y")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.result import AttackResult
from ..core.validate import check_batch, check_classes, check_label_range
from ..models.counting import counting_stage
from ..models.guards import attack_mode, checked_logits, match_input_dtype
from ._data import Batches, resolve_target
from .progress import StageProgress

__all__ = ["BatchLoop", "CleanBatch", "attack_points"]


@dataclass
class CleanBatch:
    """One validated batch on the evaluation's device, after the clean forward pass.

    ``x`` (B, ...), ``y`` (B,) long, ``target`` (B,) long or None, ``index`` (B,) the points'
    positions in the data (CPU), ``logits`` (B, classes) of the clean pass, ``correct`` (B,)
    bool: the clean prediction is the label.
    """

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    index: torch.Tensor
    logits: torch.Tensor
    correct: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


def attack_points(
    attack: Any, model: Any, batch: CleanBatch, pool: torch.Tensor
) -> tuple[AttackResult, float]:
    """Run ``attack`` on the points ``pool`` (indices into ``batch``); returns the result and
    the seconds it took."""
    t0 = time.perf_counter()
    target = None if batch.target is None else batch.target[pool]
    res = attack(model, batch.x[pool], batch.y[pool], target)
    return res, time.perf_counter() - t0


class BatchLoop:
    """Iterate an evaluation's batches as :class:`CleanBatch` es (see the module docstring).

    Used as a context manager: inside it the model is in attack mode (eval mode, frozen
    weights; restored on exit, also on an error). ``model`` is the model to attack (cast to the
    inputs' dtype, with a warning, when they differ); ``n_skipped`` counts the points skipped
    because their target is their label; ``n_seen`` the points evaluated.
    """

    def __init__(
        self,
        model: Any,
        batches: Batches,
        threats: Iterable[Any],
        *,
        target: Any,
        device: torch.device,
        progress: bool | StageProgress = False,
        desc: str = "evaluating",
        stages: int = 1,
    ) -> None:
        self.model = model
        self.batches = batches
        self.threats = list(threats)
        self.target = target
        self.device = device
        self.n_skipped = 0
        self.n_seen = 0
        self.stages = max(1, int(stages))
        self.bar: StageProgress | None = None
        self._own_bar = False
        if isinstance(progress, StageProgress):  # a caller's bar: advance it, don't close it
            self.bar = progress
        elif progress:
            self.bar = StageProgress(batches.total, self.stages, desc, leave=False)
            self._own_bar = True
        self._pending = self.stages  # stages of the current batch not yet ticked off
        self._columns: dict[str, list[Any]] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> BatchLoop:
        if isinstance(self.model, nn.Module):
            self._stack.enter_context(attack_mode(self.model))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._stack.close()
        finally:
            if self._own_bar:
                self.bar.close()

    def __iter__(self) -> Iterator[CleanBatch]:
        model_name = type(self.model).__name__
        all_labels = self.batches.labels  # the whole data's labels, when known up front
        dev = self.device
        offset = 0
        for xb, yb in self.batches:
            b = int(xb.shape[0])
            # the one validation: the same errors as the attacks, for every point
            xb = xb.detach()
            yb, _ = check_batch(xb, yb, self.threats)
            if offset == 0:  # inputs in another dtype than the model's: cast, warn once
                self.model = match_input_dtype(self.model, xb)
            index = torch.arange(offset, offset + b)
            y_all = yb
            tb = resolve_target(self.target, yb, offset)
            offset += b
            if tb is not None:
                keep = (tb != yb.to(tb.device)).cpu()
                self.n_skipped += int((~keep).sum())
                if not bool(keep.all()):
                    xb, yb, tb, index = xb[keep], yb[keep], tb[keep.to(tb.device)], index[keep]
                    b = int(xb.shape[0])
            if b == 0:
                self.tick()
                continue
            xb, yb = xb.to(dev), yb.to(device=dev, dtype=torch.long)
            tb = None if tb is None else tb.to(device=dev, dtype=torch.long)
            logits = checked_logits(self.model, xb, name=model_name)
            num_classes = int(logits.shape[1])
            if all_labels is not None:  # fail at the first batch, not the last
                check_label_range(all_labels, num_classes, "y")
                all_labels = None
            check_label_range(y_all, num_classes, "y")
            tb = check_classes(num_classes, yb, tb, name=model_name)
            correct = logits.argmax(1) == yb
            yield CleanBatch(xb, yb, tb, index, logits, correct)
            self.n_seen += b

    def tick(self, **postfix: Any) -> None:
        """Close a batch on the progress bar (with ``postfix`` shown beside it); a batch whose
        stages did not run (no point to attack) ticks them all off at once."""
        if self.bar is None:
            return
        if self._pending:
            self.bar.skip(self._pending)
        self._pending = self.stages
        if postfix and self._own_bar:
            self.bar.set_info(**postfix)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """One attack stage of the current batch: shown by name on the progress bar, with the
        model's forward passes counted while it runs, and ticked off at the end. A
        :class:`~advex.models.PassCounter` inside the model counts the stage's passes under
        ``name``."""
        if self.bar is None:
            with counting_stage(self.model, name):
                yield
            return
        self.bar.start(name)
        with self.bar.watch(self.model), counting_stage(self.model, name):
            yield
        self.bar.done()
        self._pending -= 1

    def record(self, **columns: Any) -> None:
        """Keep this batch's value of each per-point column (tensors are moved to the CPU)."""
        for key, v in columns.items():
            if isinstance(v, torch.Tensor):
                v = v.cpu()
            self._columns.setdefault(key, []).append(v)

    def column(self, key: str) -> torch.Tensor | None:
        """A recorded column over every batch (None if it was recorded as None)."""
        parts = self._columns.get(key, [])
        if not parts or parts[0] is None:
            return None
        return torch.cat(parts)

    def check_not_empty(self) -> None:
        """Raise ``ValueError`` when no point was evaluated."""
        if self.n_seen:
            return
        if self.n_skipped:
            raise ValueError(
                f"data is empty after skipping the {self.n_skipped} point(s) whose label equals "
                "the target: nothing to evaluate"
            )
        raise ValueError("data is empty: no (x, y) batch had any point to evaluate")

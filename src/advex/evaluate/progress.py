"""A progress bar that moves within a batch: one tick per attack stage of every batch, and a
count of the model's forward passes while a stage runs (so a long attack on a single batch,
such as C&W-L∞ on a few hundred points, still shows that it is working)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["StageProgress"]


class StageProgress:
    """A tqdm bar on stderr over ``batches × stages`` steps.

    ``start(name)`` announces the stage about to run, ``done()`` ticks it off (``skip(k)`` ticks
    off ``k`` stages at once, e.g. for an empty batch); inside ``watch(model)`` every forward
    pass of ``model`` is counted and shown (the display is refreshed at most every
    ``refresh_s`` seconds, so counting costs nothing measurable).

    Args:
        batches: number of batches (``None`` if unknown).
        stages: number of attack stages per batch.
        desc: the bar's label.
        leave: keep the finished bar on screen.

    >>> bar = StageProgress(4, 2, desc="evaluate")
    >>> bar.start("apgd-ce"); bar.done(); bar.close()
    """

    def __init__(
        self,
        batches: int | None,
        stages: int,
        desc: str = "evaluate",
        *,
        leave: bool = True,
        refresh_s: float = 0.5,
    ) -> None:
        from tqdm.auto import tqdm

        self.stages = max(1, int(stages))
        total = None if batches is None else int(batches) * self.stages
        self.bar = tqdm(total=total, desc=desc, unit="stage", file=sys.stderr, leave=leave)
        self.refresh_s = float(refresh_s)
        self.stage = ""
        self.passes = 0
        self.info: dict[str, Any] = {}
        self._last = 0.0

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.refresh_s:
            return
        self._last = now
        parts = [f"{k}={v}" for k, v in self.info.items()]
        if self.stage:
            parts.insert(0, f"{self.stage}: {self.passes} model calls")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.refresh()

    def start(self, name: str) -> None:
        self.stage, self.passes = str(name), 0
        self._show(force=True)

    def step(self, *_: Any) -> None:
        self.passes += 1
        self._show()

    def done(self) -> None:
        self.stage = ""
        self.bar.update(1)

    def skip(self, k: int) -> None:
        self.bar.update(int(k))

    def set_info(self, **info: Any) -> None:
        self.info.update(info)
        self._show(force=True)

    @contextlib.contextmanager
    def watch(self, model: Any) -> Iterator[None]:
        """Count the forward passes of ``model`` (an ``nn.Module``; others are not counted)."""
        handle = model.register_forward_hook(self.step) if isinstance(model, nn.Module) else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    def close(self) -> None:
        self.bar.close()

"""Count the passes through a model, whoever runs it: :class:`PassCounter`.

The cost of an attack or an evaluation is its model passes, not its wall time (which depends on
what else the machine is doing). :class:`PassCounter` wraps any ``nn.Module`` classifier and
counts, per stage label and in total, forward passes and backward passes, each both per sample
(rows) and per call (batches), plus the wall time spent inside each stage. It counts what really
runs, so it measures advex and other tools (AutoAttack, ART, ...) with the same ruler.

A *backward* pass is counted when a gradient actually flows back through the model's output
(a hook on the output tensor), whatever asked for it (``loss.backward()``,
``torch.autograd.grad``); a forward pass under autograd that nobody differentiates costs only
its forward.

**Cost unit.** One forward pass of one sample is the unit; a backward pass costs ``k`` units
(:func:`measure_backward_cost` times it on the model and inputs at hand), so a computation's
weighted cost is ``forward rows + k · backward rows`` (:meth:`PassCounter.weighted`). On the
MNIST CNNs of the benchmarks, on this project's CPU, ``k`` measured 1.6-2.0
(docs/evaluation.md); :data:`BACKWARD_COST` = 2.0 is the documented default.

>>> counter = PassCounter(model)
>>> with counter.stage("apgd-ce"):
...     APGD(eps=0.3)(counter, x, y)
>>> counter.totals()            # {"forward_rows": ..., "backward_rows": ..., ...}
>>> counter.weighted()          # forward rows + 2 · backward rows
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "BACKWARD_COST",
    "PassCounter",
    "PassCounts",
    "counting_stage",
    "measure_backward_cost",
]

#: the documented cost of one backward pass, in forward passes (measured: docs/evaluation.md)
BACKWARD_COST = 2.0


@dataclass
class PassCounts:
    """Passes of one stage: forward/backward rows (samples) and calls (batches), wall time."""

    forward_rows: int = 0
    forward_calls: int = 0
    backward_rows: int = 0
    backward_calls: int = 0
    time_s: float = 0.0

    def weighted(self, backward_cost: float = BACKWARD_COST) -> float:
        """Forward rows plus ``backward_cost`` per backward row."""
        return self.forward_rows + float(backward_cost) * self.backward_rows

    def add(self, other: PassCounts) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def to_dict(self, backward_cost: float = BACKWARD_COST) -> dict[str, Any]:
        d = asdict(self)
        d["weighted"] = self.weighted(backward_cost)
        return d


class _Tally:
    """Counts shared by every copy of one :class:`PassCounter` (an evaluation may attack a
    private copy of the model, e.g. in the channels-last layout: its passes still count here)."""

    def __init__(self) -> None:
        self.stages: dict[str, PassCounts] = {}
        self.current = "other"
        self.started: float | None = None

    def __deepcopy__(self, memo) -> _Tally:
        return self

    def now(self) -> PassCounts:
        return self.stages.setdefault(self.current, PassCounts())


class PassCounter(nn.Module):
    """Wrap ``model`` and count the passes through it, per stage and in total.

    Counts, for the stage label in force (:meth:`stage`; ``"other"`` outside any):
    ``forward_rows`` / ``forward_calls`` (every call of ``forward``: its batch size / 1) and
    ``backward_rows`` / ``backward_calls`` (every gradient that flows back through the output,
    e.g. an input gradient: the output's batch size / 1), and the wall time spent inside the
    stage. Copies of the counter (``copy.deepcopy``, as :func:`advex.evaluate.evaluate` makes
    for a channels-last copy) share its counts. The wrapped model is called unchanged.

    Args:
        model: any ``nn.Module`` classifier (its output's first dimension is the batch).

    >>> counter = PassCounter(model).eval()
    >>> ev = evaluate(counter, (x, y), eps=0.3, checks=False)
    >>> counter.totals()["backward_rows"] == ev.gradients_total
    True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"PassCounter wraps an nn.Module, got {type(model).__name__}")
        self.model = model
        self.tally = _Tally()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model(x, *args, **kwargs)
        rows = int(out.shape[0]) if out.dim() else 1
        c = self.tally.now()
        c.forward_rows += rows
        c.forward_calls += 1
        if isinstance(out, torch.Tensor) and out.requires_grad:
            tally = self.tally

            def _on_backward(grad: torch.Tensor) -> None:
                b = tally.now()
                b.backward_rows += rows
                b.backward_calls += 1

            out.register_hook(_on_backward)
        return out

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[PassCounter]:
        """Attribute the passes (and wall time) inside the block to ``name`` (cumulative over
        blocks of the same name); the previous label is restored afterwards."""
        tally = self.tally
        prev, tally.current = tally.current, str(name)
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            tally.now().time_s += time.perf_counter() - t0
            tally.current = prev

    @property
    def stages(self) -> dict[str, PassCounts]:
        """Counts per stage label, in first-use order."""
        return dict(self.tally.stages)

    def total(self) -> PassCounts:
        out = PassCounts()
        for c in self.tally.stages.values():
            out.add(c)
        # nested stages would double-count time; stages here are flat, so the sum is exact
        return out

    def totals(self, backward_cost: float = BACKWARD_COST) -> dict[str, Any]:
        """The total over every stage as a dict (with ``weighted``)."""
        return self.total().to_dict(backward_cost)

    def weighted(self, backward_cost: float = BACKWARD_COST) -> float:
        """Forward rows + ``backward_cost`` · backward rows, over every stage."""
        return self.total().weighted(backward_cost)

    def reset(self) -> None:
        self.tally.stages.clear()
        self.tally.current = "other"

    def report(self, backward_cost: float = BACKWARD_COST) -> dict[str, Any]:
        """JSON-ready: per stage and total counts, and the cost unit used."""
        return {
            "backward_cost": float(backward_cost),
            "stages": {k: v.to_dict(backward_cost) for k, v in self.tally.stages.items()},
            "total": self.totals(backward_cost),
        }


@contextlib.contextmanager
def counting_stage(model: Any, name: str) -> Iterator[None]:
    """Label the passes inside the block ``name`` on every :class:`PassCounter` found in
    ``model`` (itself or a submodule; copies sharing counts are labelled once). A no-op for
    models without one. :func:`advex.evaluate.evaluate` labels its stages this way.
    """
    counters: list[PassCounter] = []
    if isinstance(model, nn.Module):
        seen: set[int] = set()
        for m in model.modules():
            if isinstance(m, PassCounter) and id(m.tally) not in seen:
                seen.add(id(m.tally))
                counters.append(m)
    with contextlib.ExitStack() as stack:
        for c in counters:
            stack.enter_context(c.stage(name))
        yield


def measure_backward_cost(
    model: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Time a forward pass and a forward+input-gradient pass of ``model`` on ``x``
    (median over ``repeats``): returns ``forward_s``, ``forward_backward_s`` and
    ``backward_cost`` = (forward_backward − forward) / forward, the ``k`` of the cost unit.

    >>> measure_backward_cost(model, x[:100])["backward_cost"]
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    was = model.training
    model.eval()
    try:

        def fwd() -> None:
            with torch.no_grad():
                model(x)

        def fwd_bwd() -> None:
            xl = x.detach().requires_grad_(True)
            with torch.enable_grad():
                out = model(xl)
                torch.autograd.grad(out.logsumexp(1).sum(), xl)

        times = {}
        for name, fn in (("forward_s", fwd), ("forward_backward_s", fwd_bwd)):
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            ts.sort()
            times[name] = ts[len(ts) // 2]
    finally:
        model.train(was)
    f, fb = times["forward_s"], times["forward_backward_s"]
    return {"forward_s": f, "forward_backward_s": fb, "backward_cost": (fb - f) / f}

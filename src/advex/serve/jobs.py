"""Bounded attack jobs: at most ``max_jobs`` run at once (a thread pool), at most
``max_queue`` wait for a slot (429 ``busy`` beyond), each runs within a time budget, and a
job whose client went away is skipped (still queued) or stopped (running).

Stopping a running attack: the job's model is wrapped in :class:`BudgetedModel`, whose every
forward pass first calls :meth:`Budget.check`; past the deadline or once cancelled it raises
:class:`JobStopped`, which unwinds the attack (the cached model itself is never changed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch import nn

from .limits import ApiError

__all__ = ["Budget", "BudgetedModel", "BudgetedTextModule", "JobPool", "JobStopped"]


class JobStopped(Exception):
    """Raised inside a job's model call when the job is past its budget or cancelled."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "time_budget" or "cancelled"


class Budget:
    """The deadline and the cancel flag of one job."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.deadline = float("inf")
        self.cancelled = threading.Event()
        self.calls = 0

    def start(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def check(self) -> None:
        self.calls += 1
        if self.cancelled.is_set():
            raise JobStopped("cancelled")
        if time.monotonic() > self.deadline:
            raise JobStopped("time_budget")


class BudgetedModel(nn.Module):
    """``model`` with a budget check before every forward pass (the wrapped module is shared
    and left untouched; its parameters are seen through this one)."""

    def __init__(self, model: nn.Module, budget: Budget) -> None:
        super().__init__()
        self.inner = model
        self._budget = budget
        self.train(False)  # a fresh module is in train mode; the attack wants eval (no flip)

    def forward(self, x):
        self._budget.check()
        return self.inner(x)


class JobPool:
    """``max_jobs`` worker threads, a waiting line of ``max_queue``, a time budget per job.

    :meth:`run` (async) submits ``fn(budget)`` and waits for it, polling ``is_disconnected``
    (the request's) so that a job whose client left is skipped or stopped. Counters for
    ``/api/health``: ``running``, ``queued``, ``peak_running``, ``completed``, ``rejected``,
    ``timed_out``, ``cancelled``.
    """

    def __init__(
        self, max_jobs: int, max_queue: int, time_budget_s: float, queue_timeout_s: float
    ) -> None:
        self.max_jobs = int(max_jobs)
        self.max_queue = int(max_queue)
        self.time_budget_s = float(time_budget_s)
        self.queue_timeout_s = float(queue_timeout_s)
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_jobs, thread_name_prefix="advex-job"
        )
        self._lock = threading.Lock()
        self.running = 0
        self.queued = 0
        self.peak_running = 0
        self.completed = 0
        self.rejected = 0
        self.timed_out = 0
        self.cancelled = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self.running,
                "queued": self.queued,
                "max_jobs": self.max_jobs,
                "max_queue": self.max_queue,
                "peak_running": self.peak_running,
                "completed": self.completed,
                "rejected": self.rejected,
                "timed_out": self.timed_out,
                "cancelled": self.cancelled,
            }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _work(self, fn: Callable[[Budget], Any], budget: Budget, queued_at: float):
        with self._lock:
            self.queued -= 1
            if budget.cancelled.is_set():  # the client left while the job waited
                self.cancelled += 1
                raise JobStopped("cancelled")
            if time.monotonic() - queued_at > self.queue_timeout_s:
                self.timed_out += 1
                raise JobStopped("queue_timeout")
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        budget.start()
        try:
            out = fn(budget)
        except JobStopped as err:
            with self._lock:
                if err.reason == "cancelled":
                    self.cancelled += 1
                else:
                    self.timed_out += 1
            raise
        finally:
            with self._lock:
                self.running -= 1
        with self._lock:
            self.completed += 1
        return out

    def submit(self, fn: Callable[[Budget], Any]) -> tuple[asyncio.Future, Budget]:
        """Queue ``fn(budget)`` (from the event loop); raises :class:`ApiError` 429
        (``busy``) at once when every slot and queue place is taken."""
        with self._lock:
            if self.running + self.queued >= self.max_jobs + self.max_queue:
                self.rejected += 1
                raise ApiError(
                    429,
                    "busy",
                    f"the server is busy: {self.running} attack jobs running and "
                    f"{self.queued} waiting (limit {self.max_jobs} + {self.max_queue}); "
                    "try again in a moment",
                    None,
                )
            self.queued += 1
        budget = Budget(self.time_budget_s)
        try:
            cf = self._executor.submit(self._work, fn, budget, time.monotonic())
        except RuntimeError:  # pragma: no cover - executor shut down
            with self._lock:
                self.queued -= 1
            raise ApiError(503, "shutting_down", "the server is shutting down", None) from None
        return asyncio.wrap_future(cf), budget

    async def wait(
        self,
        fut: asyncio.Future,
        budget: Budget,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        poll_s: float = 0.05,
    ) -> Any:
        """The result of a submitted job, polling ``is_disconnected`` meanwhile (a departed
        client cancels the job); raises :class:`ApiError` 503 (``time_budget`` /
        ``queue_timeout``) or 499 (``client_closed``)."""
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=poll_s)
                if done:
                    break
                if is_disconnected is not None and await is_disconnected():
                    budget.cancelled.set()
            return fut.result()
        except JobStopped as err:
            if err.reason == "time_budget":
                raise ApiError(
                    503,
                    "time_budget",
                    f"the attack did not finish within the time budget of "
                    f"{self.time_budget_s:g} s; use fewer steps or a smaller model",
                    "steps",
                ) from None
            if err.reason == "queue_timeout":
                raise ApiError(
                    503,
                    "queue_timeout",
                    f"the job waited more than {self.queue_timeout_s:g} s for a free slot",
                    None,
                ) from None
            raise ApiError(499, "client_closed", "the client closed the request", None) from None
        except asyncio.CancelledError:
            budget.cancelled.set()
            raise

    async def run(
        self,
        fn: Callable[[Budget], Any],
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        poll_s: float = 0.05,
    ) -> Any:
        """:meth:`submit` then :meth:`wait`: run ``fn(budget)`` in a worker; 429 ``busy``
        when full, 503 when out of time, 499 when the client left."""
        fut, budget = self.submit(fn)
        return await self.wait(fut, budget, is_disconnected, poll_s)


class BudgetedTextModule(nn.Module):
    """A text model's module with a budget check before every forward pass; exposes the
    wrapped module's ``embedding`` and ``forward_embedded`` (white box, for HotFlip)."""

    def __init__(self, module: nn.Module, budget: Budget) -> None:
        super().__init__()
        self.inner = module
        self._budget = budget
        self.train(False)

    @property
    def embedding(self):
        return getattr(self.inner, "embedding", None)

    def forward(self, ids):
        self._budget.check()
        return self.inner(ids)

    def forward_embedded(self, embedded, ids):
        self._budget.check()
        return self.inner.forward_embedded(embedded, ids)

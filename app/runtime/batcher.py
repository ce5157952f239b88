"""Dynamic batching: one queue and one worker per model.

The worker forms the next batch the moment the model is free, from whatever is queued:
as many items as fit `max_batch_size` and a token budget computed on the padded size
(longest item x count). A lone request on an idle model starts at once; `max_delay_ms`
optionally waits for company. The model runs in a dedicated thread so the event loop
never blocks. The batcher knows nothing about text or rows: it moves opaque payloads
with a cost (their length) and hands each job its results in input order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.errors import ModelNotReady, QueueFull


class BatchObserver(Protocol):
    def batch_done(self, size: int, padded_tokens: int, seconds: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...


class _NullObserver:
    def batch_done(self, size: int, padded_tokens: int, seconds: float) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass


@dataclass(eq=False)
class Job:
    """One request's inputs; its future resolves to the outputs in input order."""

    payloads: Sequence[Any]
    costs: Sequence[int]
    future: asyncio.Future
    results: list[Any] = field(init=False)
    remaining: int = field(init=False)
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    inference_s: float = 0.0
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.payloads)
        self.remaining = len(self.payloads)

    @property
    def dead(self) -> bool:
        return self.cancelled or self.future.done()

    def cancel(self) -> None:
        """The client left or its deadline passed: skip whatever has not run yet."""
        self.cancelled = True
        if not self.future.done():
            self.future.cancel()


@dataclass
class BatchLimits:
    max_batch_size: int = 64
    max_batch_tokens: int = 8192
    max_delay_ms: float = 0.0
    max_queue_size: int = 1024


# A batch whose recent runs took less than this runs on the event loop itself: the hand-off
# to the model thread and back costs more than such a model run, and the loop is blocked
# for less time than it spends parsing one request.
INLINE_RUN_S = 0.0003


class BatchQueue:
    """Queue + worker for one model. `run_batch(payloads) -> outputs` runs in a thread."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], limits: BatchLimits,
                 observer: BatchObserver | None = None, name: str = "model") -> None:
        self._run_batch = run_batch
        self.limits = limits
        self._observer = observer or _NullObserver()
        self._queue: deque[tuple[Job, int]] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}")
        self._worker: asyncio.Task | None = None
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches_run = 0
        self._recent_run_s = 1.0  # moving average of batch run time; starts off the loop

    # -- producer side -------------------------------------------------------------------
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, payloads: Sequence[Any], costs: Sequence[int]) -> Job:
        if self._worker is None or self._worker.done():
            raise ModelNotReady("model is not accepting work")
        n = len(payloads)
        if len(self._queue) + n > self.limits.max_queue_size:
            raise QueueFull(f"queue full ({len(self._queue)} of {self.limits.max_queue_size} "
                            "inputs waiting); retry shortly", headers={"Retry-After": "1"})
        job = Job(payloads, costs, asyncio.get_running_loop().create_future())
        self._queue.extend((job, i) for i in range(n))
        self._idle.clear()
        self._observer.queue_depth(len(self._queue))
        self._wakeup.set()
        return job

    # -- worker side ---------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    def _drop_dead_head(self) -> None:
        while self._queue and self._queue[0][0].dead:
            self._queue.popleft()

    def _take(self) -> list[tuple[Job, int]]:
        lim = self.limits
        batch: list[tuple[Job, int]] = []
        longest = 0
        while self._queue and len(batch) < lim.max_batch_size:
            job, i = self._queue[0]
            if job.dead:
                self._queue.popleft()
                continue
            cost = max(longest, job.costs[i])
            if batch and cost * (len(batch) + 1) > lim.max_batch_tokens:
                break
            longest = cost
            batch.append(self._queue.popleft())
        return batch

    async def _wait_for_company(self) -> None:
        deadline = time.perf_counter() + self.limits.max_delay_ms / 1000
        while len(self._queue) < self.limits.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_dead_head()
            if not self._queue:
                self._observer.queue_depth(0)
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.limits.max_delay_ms > 0:
                await self._wait_for_company()
            batch = self._take()
            self._observer.queue_depth(len(self._queue))
            if not batch:
                continue
            now = time.perf_counter()
            for job, _ in batch:
                if job.started_at is None:
                    job.started_at = now
            payloads = [job.payloads[i] for job, i in batch]
            padded = max(job.costs[i] for job, i in batch) * len(batch)
            self._busy = True
            try:
                if self._recent_run_s < INLINE_RUN_S:
                    outputs = self._run_batch(payloads)
                else:
                    outputs = await loop.run_in_executor(self._executor, self._run_batch,
                                                         payloads)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"model returned {len(outputs)} outputs for "
                                       f"{len(batch)} inputs")
            except Exception as exc:  # noqa: BLE001 - fail this batch's jobs only
                for job, _ in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._busy = False
                self.batches_run += 1
            seconds = time.perf_counter() - now
            self._recent_run_s = 0.8 * self._recent_run_s + 0.2 * seconds
            self._observer.batch_done(len(batch), padded, seconds)
            for job in dict.fromkeys(job for job, _ in batch):
                job.inference_s += seconds  # a split job sums the batches it took part in
            for (job, i), out in zip(batch, outputs, strict=True):
                if job.future.done():
                    continue
                job.results[i] = out
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(job.results)

    # -- lifecycle -----------------------------------------------------------------------
    async def drain(self) -> None:
        """Return once every queued item has run (or was dropped) and no batch is running."""
        while self._queue or self._busy:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        while self._queue:
            job, _ = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(ModelNotReady("model was unloaded"))
        self._executor.shutdown(wait=False, cancel_futures=True)

"""Dynamic batching: one queue and one worker per model.

The worker forms the next batch the moment a model instance is free, from whatever is
queued: as many items as fit `max_batch_size` and a token budget computed on the padded size
(longest item x count). A lone request on an idle model starts at once; `max_delay_ms`
optionally waits for company. Up to `instances` batches run at once, each in its own thread
(ONNX Runtime releases the GIL), so the event loop never blocks. The batcher knows nothing
about text or rows: it moves opaque payloads with a cost (their length) and hands each job
its results in input order.

A second, lower-priority lane carries background work (the perturbed inputs of
explanations, a rollout's shadow copies): one batch at a time, of at most `low_batch_size`
items, started only when no prediction of any model in the process is queued or running
(`Foreground`). It takes no instance from predictions: one that arrives while a background
batch runs starts at once, and meets at most that one small batch. A prediction never waits
behind a queue of background work.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from app.errors import InvalidInput, ModelNotReady, QueueFull

# A queued item, opaque to the batcher: whatever `run_batch` takes (a pipeline's payload)
P = TypeVar("P")
# A batch's outputs: one per payload, in order (any sized iterable, e.g. a numpy array's
# rows); the batcher hands each to its job without looking at it
Outputs = Collection[Any]


class BatchObserver(Protocol):
    def batch_done(self, size: int, padded_tokens: int, seconds: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...


class _NullObserver:
    def batch_done(self, size: int, padded_tokens: int, seconds: float) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass


@dataclass(eq=False, slots=True)
class Job(Generic[P]):
    """One request's inputs; its future resolves to the outputs in input order."""

    payloads: Sequence[P]
    costs: Sequence[int]
    future: asyncio.Future[list[Any]]
    results: list[Any] = field(init=False)
    remaining: int = field(init=False)
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    inference_s: float = 0.0
    cancelled: bool = False
    predicted_s: float = 0.0  # admission's uncalibrated estimate of enqueue to done

    def __post_init__(self) -> None:
        self.results = [None] * len(self.payloads)
        self.remaining = len(self.payloads)

    @property
    def dead(self) -> bool:
        return self.cancelled or self.future.done()

    def fail(self, exc: BaseException) -> None:
        """The client left or its deadline passed: skip what has not run, raise `exc`."""
        self.cancelled = True
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(frozen=True)
class BatchLimits:
    """Resolved once per loaded model (`app/serving/loader.py`); the defaults live in
    Settings, a manifest may override them, and per-model settings override both."""

    max_batch_size: int
    max_batch_tokens: int
    max_delay_ms: float
    max_queue_size: int


# A batch whose recent runs took less than this runs on the event loop itself: the hand-off
# to the model thread and back costs more than such a model run, and the loop is blocked
# for less time than it spends parsing one request.
INLINE_RUN_S = 0.0003
# The longest a free instance waits for its share of the queue, as a fraction of the recent
# batch run time (see BatchQueue._patience_left).
PATIENCE_FRACTION = 0.25
# Admission: a job is taken when its expected wait, stretched by this factor, ends before
# its deadline. The estimate is an average and the event loop's lag comes in bursts: under
# twice the sustainable load with 1 s deadlines (`python -m bench admission`), a factor of
# 1.05-1.15 let 4-15% of admitted requests miss, 1.5 under 1%, while the queue still holds
# enough work to keep the model busy.
ADMISSION_MARGIN = 1.5
# Weight of older batches in the run-cost estimate (decayed sums of seconds and padded cost).
COST_DECAY = 0.9
# Jobs whose estimate is at least this long teach admission how late jobs really finish
# (the model's own cost leaves out the event loop's backlog and CPU shared with it).
CALIBRATE_ABOVE_S = 0.01
class Foreground:
    """The predictions queued or running in this process, across every model's queue: a
    background batch of any model starts only when there are none, and every queue with
    background work waiting is woken when that happens. With one queue's own predictions
    only, a rollout's shadow copies on the candidate ran beside the stable version's
    predictions and cost them 18% of their throughput (`python -m bench rollout`)."""

    def __init__(self) -> None:
        self._busy: set[int] = set()  # queues with predictions queued or running
        self._watching: set[asyncio.Event] = set()

    @property
    def idle(self) -> bool:
        return not self._busy

    def update(self, queue: object, busy: bool) -> None:
        key = id(queue)
        if busy:
            self._busy.add(key)
        elif key in self._busy:
            self._busy.discard(key)
            if not self._busy:
                for event in self._watching:
                    event.set()

    def watch(self, event: asyncio.Event) -> None:
        self._watching.add(event)

    def unwatch(self, event: asyncio.Event) -> None:
        self._watching.discard(event)


def _outcome(future: asyncio.Future[tuple[Outputs, float]]
             ) -> tuple[Outputs, float] | BaseException:
    if future.cancelled():
        return ModelNotReady("model was unloaded")
    return future.exception() or future.result()


def _closed(payloads: list[Any]) -> Outputs:
    raise ModelNotReady("model was unloaded")


class BatchQueue(Generic[P]):
    """Queue + worker for one model. `run_batch(payloads) -> outputs` runs in a thread;
    up to `instances` batches run at once."""

    def __init__(self, run_batch: Callable[[list[P]], Outputs], limits: BatchLimits,
                 observer: BatchObserver | None = None, name: str = "model",
                 instances: int = 1, low_batch_size: int = 16,
                 low_queue_limit: int = 1 << 15,
                 foreground: Foreground | None = None) -> None:
        self._run_batch = run_batch
        self.limits = limits
        self.instances = max(1, instances)
        self._observer = observer or _NullObserver()
        self._queue: deque[tuple[Job[P], int]] = deque()
        # the low-priority lane (explanations): its own queue, thread and batch size
        self._low: deque[tuple[Job[P], int]] = deque()
        self.low_batch_size = max(1, low_batch_size)
        self.low_queue_limit = max(1, low_queue_limit)
        self._foreground = foreground or Foreground()
        self._low_running = 0  # background batches in flight (0 or 1)
        self._low_executor: ThreadPoolExecutor | None = None
        self._name = name
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self.instances,
                                            thread_name_prefix=f"ort-{name}")
        self._worker: asyncio.Task[None] | None = None
        self._running = 0  # batches in flight
        self._running_items = 0  # inputs in those batches
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches_run = 0
        self._recent_run_s = 1.0  # moving average of batch run time; starts off the loop
        self._run_time_measured = False
        # admission by deadline: queued cost and the measured seconds per unit of padded cost
        self._queued_cost = 0
        self._cost_seconds = 0.0  # decayed sum of batch run seconds
        self._cost_units = 0.0  # decayed sum of their padded cost (longest x count)
        self._cost_given = 0.0  # decayed sum of their items' own costs (padding ratio)
        self._lateness = 1.0  # moving average of (actual / estimated) enqueue-to-done time
        self._lateness_dev = 0.0  # its mean absolute deviation

    # -- producer side -------------------------------------------------------------------
    def submit(self, payloads: Sequence[P], costs: Sequence[int],
               deadline: float | None = None) -> Job[P]:
        """Queue a job, or refuse it at once (QueueFull, with a Retry-After from the expected
        wait) when it cannot be expected to finish before `deadline` (a perf_counter time),
        or when the queue already holds `max_queue_size` inputs (the memory bound)."""
        if self._worker is None or self._worker.done():
            raise ModelNotReady("model is not accepting work")
        n = len(payloads)
        cost = sum(costs)
        if len(self._queue) + n > self.limits.max_queue_size:
            raise QueueFull(f"queue full ({len(self._queue)} of {self.limits.max_queue_size} "
                            "inputs waiting); retry shortly",
                            retry_after_s=self.expected_wait(0) or 1)
        predicted = self.admit(cost, deadline) if deadline is not None else None
        job = Job(payloads, costs, asyncio.get_running_loop().create_future())
        job.predicted_s = predicted or 0.0
        if n == 1:
            self._queue.append((job, 0))
        else:
            self._queue.extend((job, i) for i in range(n))
        self._queued_cost += cost
        self._foreground.update(self, True)
        self._idle.clear()
        self._observer.queue_depth(len(self._queue))
        self._wakeup.set()
        return job

    def submit_low(self, payloads: Sequence[P], costs: Sequence[int]) -> Job[P]:
        """Queue background work in the low-priority lane, or refuse it at once (QueueFull)
        when the lane would hold more than `low_queue_limit` items (the memory bound; no
        admission by deadline: this work waits for idle moments)."""
        if self._worker is None or self._worker.done():
            raise ModelNotReady("model is not accepting work")
        self.check_low(len(payloads))
        job = Job(payloads, costs, asyncio.get_running_loop().create_future())
        self._low.extend((job, i) for i in range(len(payloads)))
        self._idle.clear()
        self._wakeup.set()
        return job

    def check_low(self, n: int) -> None:
        """Raise what `submit_low` would for `n` inputs, so that work can be refused before
        it is built: InvalidInput past what the lane ever holds, QueueFull past what it has
        room for now."""
        if n > self.low_queue_limit:
            raise InvalidInput(f"this work needs {n} model inputs, more than the "
                               f"background lane ever holds ({self.low_queue_limit}, "
                               "ORTSERVE_EXPLAIN_MAX_QUEUED); ask for fewer evaluations or "
                               "inputs", {"field": "max_evaluations"})
        if len(self._low) + n > self.low_queue_limit:
            raise QueueFull(f"the background lane holds {len(self._low)} of "
                            f"{self.low_queue_limit} inputs and this work needs "
                            f"{n} (ORTSERVE_EXPLAIN_MAX_QUEUED); retry shortly",
                            retry_after_s=1)

    @property
    def low_queued(self) -> int:
        return len(self._low)

    @property
    def low_running(self) -> int:
        return self._low_running

    def admit(self, cost: float, deadline: float) -> float | None:
        """Raise QueueFull (Retry-After: the expected wait) when a job of `cost` queued now
        is not expected to finish before `deadline`; else return the model's own estimate
        of its wait (None before anything was measured)."""
        raw = self._model_wait(cost)
        expected = None if raw is None else raw * self._late_factor()
        if expected is not None and time.perf_counter() + ADMISSION_MARGIN * expected > deadline:
            raise QueueFull(
                f"the queue would take about {expected:.2f} s to answer this request, past "
                f"its deadline ({max(0.0, deadline - time.perf_counter()):.2f} s left); retry "
                "later or with a longer deadline",
                retry_after_s=max(1.0, self.expected_wait(0) or 1))
        return raw

    def expected_wait(self, cost: float) -> float | None:
        """Seconds until everything queued, plus a job of `cost`, would be answered: the
        model's own estimate (`_model_wait`) times how late jobs have really finished
        against it (never read as faster than the model's own estimate by more than 25%).
        None until a batch has been measured."""
        raw = self._model_wait(cost)
        return None if raw is None else raw * self._late_factor()

    def _late_factor(self) -> float:
        """How late most jobs (not the average one) finish against the model's estimate."""
        return max(0.75, self._lateness + 2 * self._lateness_dev)

    def _model_wait(self, cost: float) -> float | None:
        """The queued cost at the measured seconds per padded cost unit, spread over the
        instances, plus half a run of the batches in flight when every instance is busy."""
        if self._cost_units <= 0:
            return None
        per_unit = self._cost_seconds / self._cost_units
        padding = self._cost_units / max(self._cost_given, 1e-9)
        own = cost * padding * per_unit
        queued = (self._queued_cost + cost) * padding * per_unit / self.instances
        busy = self._recent_run_s / 2 if self._running >= self.instances else 0.0
        return max(own, queued) + busy

    def _dequeued(self, job: Job[P], i: int) -> None:
        self._queued_cost -= job.costs[i]

    # -- worker side ---------------------------------------------------------------------
    def _report(self) -> None:
        """Tell the process's Foreground whether this queue has predictions to do."""
        self._foreground.update(self, bool(self._queue) or self._running > 0)

    def start(self) -> None:
        self._foreground.watch(self._wakeup)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    def _drop_dead_head(self) -> None:
        while self._queue and self._queue[0][0].dead:
            self._dequeued(*self._queue.popleft())
            if not self._queue:
                self._report()
        while self._low and self._low[0][0].dead:
            self._low.popleft()

    def _take(self, low: bool = False) -> list[tuple[Job[P], int]]:
        lim = self.limits
        queue = self._low if low else self._queue
        # a tiny model's predictions run inline in microseconds: its low lane batches as
        # its predictions do (on the low thread all the same, see _launch_next)
        most = (min(lim.max_batch_size, self.low_batch_size) if low and not self.runs_inline
                else lim.max_batch_size)
        batch: list[tuple[Job[P], int]] = []
        longest = 0
        while queue and len(batch) < most:
            job, i = queue[0]
            if job.dead:
                queue.popleft()
                if not low:
                    self._dequeued(job, i)
                continue
            cost = max(longest, job.costs[i])
            if batch and cost * (len(batch) + 1) > lim.max_batch_tokens:
                break
            longest = cost
            batch.append(queue.popleft())
            if not low:
                self._dequeued(job, i)
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
            if not self._has_work_and_instance():
                if not (self._queue or self._low or self._running or self._low_running):
                    self._observer.queue_depth(0)
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()  # set by submit() and by each finished batch
                continue
            if not self._prediction_may_start():  # only the low-priority lane can go
                self._launch_next(low=True)
                continue
            if self.limits.max_delay_ms > 0:
                await self._wait_for_company()
            else:
                wait = self._patience_left()
                if wait > 0:
                    self._wakeup.clear()
                    timer = loop.call_later(wait, self._wakeup.set)
                    await self._wakeup.wait()
                    timer.cancel()
                    continue
            self._launch_next()

    @property
    def runs_inline(self) -> bool:
        """Batches of this model take so little time that they run on the event loop."""
        return self._recent_run_s < INLINE_RUN_S

    def _has_work_and_instance(self) -> bool:
        self._drop_dead_head()
        return self._prediction_may_start() or self._low_may_start()

    def _prediction_may_start(self) -> bool:
        return bool(self._queue) and self._running < self.instances

    def _low_may_start(self) -> bool:
        """A background batch starts when the model has no prediction queued or running, and
        no other background batch runs. Predictions at 16 clients, text x1 on 2 cores
        (`python -m bench explain`): background batches started beside running predictions
        (niced) raised predict p99 by 1.28-1.32x; started only while none runs, 0.91-1.00x;
        the same with up to `instances` background batches at once, 1.05-1.34x (though an
        idle model's explanations took half the time)."""
        return (bool(self._low) and not self._queue and not self._low_running
                and not self._running and self._foreground.idle)

    def _patience_left(self) -> float:
        """Seconds a free instance should still wait before taking what is queued; 0 = go.

        An idle model starts at once. While another instance is busy, a free one waits until
        the queue holds a fair share of the requests in flight (queued + running), so that
        each instance runs one cohort of clients instead of chasing stragglers in small
        batches, but never longer than a quarter of a recent batch run. Sentiment, one text
        per request, 64 clients, 2 instances: launching whatever is queued ran batches of
        10.9 on average (667 inputs/s); waiting for 1/2 of what is in flight, 22 (701/s);
        for 1/3, 21 and no instance waiting for its own clients (730/s).
        """
        if not self._running:
            return 0.0
        queued = len(self._queue)
        # one cohort per instance plus one waiting: a finished instance finds the next cohort
        # queued, while its own clients are still reading answers and sending again
        share = -(-(queued + self._running_items) // (self.instances + 1))  # ceil division
        if queued >= min(share, self.limits.max_batch_size):
            return 0.0
        waited = time.perf_counter() - self._queue[0][0].enqueued_at
        return max(0.0, PATIENCE_FRACTION * self._recent_run_s - waited)

    def _launch_next(self, low: bool = False) -> None:
        """Take the next batch from the queue (or the low-priority lane) and start it
        (inline for a tiny model)."""
        batch = self._take(low)
        if not low:
            self._observer.queue_depth(len(self._queue))
        if not batch:
            if not low:
                self._report()  # only dead jobs were queued
            return
        now = time.perf_counter()
        for job, _ in batch:
            if job.started_at is None:
                job.started_at = now
        payloads = [job.payloads[i] for job, i in batch]
        if low:
            self._low_running += 1
        else:
            self._running += 1
            self._running_items += len(batch)
            self._report()
        # background batches never run on the loop: a tiny model's predictions take
        # microseconds, but its explanation batches (a block of background rows per
        # coalition) took 12 ms each, back to back (bench hostile)
        if self.runs_inline and not low:
            result: tuple[Outputs, float] | BaseException
            try:
                result = self._timed_run(payloads)
            except Exception as exc:  # noqa: BLE001 - fail this batch's jobs only
                result = exc
            self._finish(batch, result, low)
        else:
            future = asyncio.get_running_loop().run_in_executor(
                self._low_thread() if low else self._executor, self._timed_run, payloads)

            def done(f: asyncio.Future[tuple[Outputs, float]]) -> None:
                self._finish(batch, _outcome(f), low)

            future.add_done_callback(done)

    def _low_thread(self) -> ThreadPoolExecutor:
        if self._low_executor is None:
            self._low_executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"ort-{self._name}-low")
        return self._low_executor

    def _finish(self, batch: list[tuple[Job[P], int]],
                result: tuple[Outputs, float] | BaseException,
                low: bool = False) -> None:
        """On the event loop, when a batch is done: hand out its outputs (or its error)."""
        if low:
            self._low_running -= 1
        else:
            self._running -= 1
            self._running_items -= len(batch)
            self._report()
        self.batches_run += 1
        self._wakeup.set()
        if isinstance(result, tuple) and len(result[0]) != len(batch):
            result = RuntimeError(f"model returned {len(result[0])} outputs for "
                                  f"{len(batch)} inputs")
        if isinstance(result, BaseException):
            for job, _ in batch:
                if not job.future.done():
                    job.future.set_exception(result)
            return
        outputs, seconds = result
        padded = max(job.costs[i] for job, i in batch) * len(batch)
        if not low:  # a background batch runs niced: its time says nothing of predictions'
            self.observe_run_time(seconds)
            self._observe_cost(seconds, padded, sum(job.costs[i] for job, i in batch))
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
                if job.predicted_s >= CALIBRATE_ABOVE_S:
                    late = (time.perf_counter() - job.enqueued_at) / job.predicted_s
                    late = min(max(late, 0.5), 10.0)
                    self._lateness_dev = (0.9 * self._lateness_dev
                                          + 0.1 * abs(late - self._lateness))
                    self._lateness = 0.9 * self._lateness + 0.1 * late
        if (self.limits.max_delay_ms <= 0 and not self.runs_inline
                and self._worker is not None and not self._worker.done()
                and self._queue and self._has_work_and_instance()
                and not self._patience_left()):
            # What queued up while this batch ran goes at once, not a loop iteration later.
            self._launch_next()

    def observe_run_time(self, seconds: float) -> None:
        """Fold one batch's run time into the moving average that decides whether batches
        run inline and how long a free instance may wait for company (the first one,
        usually a warm-up run, replaces the initial guess)."""
        if self._run_time_measured:
            self._recent_run_s = 0.8 * self._recent_run_s + 0.2 * seconds
        else:
            self._recent_run_s, self._run_time_measured = seconds, True

    def _observe_cost(self, seconds: float, padded: int, given: int) -> None:
        self._cost_seconds = COST_DECAY * self._cost_seconds + seconds
        self._cost_units = COST_DECAY * self._cost_units + padded
        self._cost_given = COST_DECAY * self._cost_given + given

    async def warm_up(self, payloads: list[P], costs: Sequence[int] | None = None) -> None:
        """Run one batch outside the queue on a model thread; the batcher starts from the
        warm model's run time (and, given the items' costs, its cost per unit) instead of a
        guess."""
        _, seconds = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._timed_run, payloads)
        self.observe_run_time(seconds)
        if costs:
            self._observe_cost(seconds, max(costs) * len(costs), sum(costs))

    def _timed_run(self, payloads: list[P]) -> tuple[Outputs, float]:
        """Run a batch; also return its run time, measured where it ran.

        Timing the hand-off to the thread as well would count the wait for the GIL while
        the event loop is busy (up to the interpreter's 5 ms switch interval), so a tiny
        model under load would look slow and never be run inline.
        """
        t0 = time.perf_counter()
        outputs = self._run_batch(payloads)
        return outputs, time.perf_counter() - t0

    # -- lifecycle -----------------------------------------------------------------------
    async def drain(self) -> None:
        """Return once every queued item has run (or was dropped) and no batch is running."""
        while self._queue or self._low or self._running or self._low_running:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._worker = None  # the cancelled task and its traceback refer back to us
        self._queued_cost = 0
        self._foreground.unwatch(self._wakeup)
        for queue in (self._queue, self._low):
            while queue:
                job, _ = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(ModelNotReady("model was unloaded"))
        self._foreground.update(self, False)  # nothing here holds background work back now
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._low_executor is not None:
            self._low_executor.shutdown(wait=False, cancel_futures=True)
        self._run_batch = _closed  # let go of the model (session, weights) at once

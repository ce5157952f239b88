"""A loaded model version: immutable once built, it answers `infer()` until drained.

`LoadedModel.infer` runs inputs through pre-processing, the batch queue and the session,
and returns typed outputs (one array row per input, plus the labels); it records the
request's outcome in the metrics. Each API encodes the result its own way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.contract.manifest import Manifest
from app.contract.repository import ModelSource
from app.errors import (
    CLIENT_ERRORS,
    ClientCancelled,
    DeadlineExceeded,
    InferenceFailed,
    ModelNotReady,
    QueueFull,
    ServingError,
)
from app.explain.explainer import Explainer, ExplainOptions, NotExplainable
from app.observability.metrics import ExplainObserver, RequestObserver
from app.pipelines import AnyPipeline
from app.runtime.batcher import BatchLimits, BatchQueue, Job
from app.runtime.session import ModelSession
from app.serving.variants import ServedVariant
from app.serving.views import ServedVersion

log = logging.getLogger("ortserve.models")

# For a model whose batches run inline (tiny ones), a request still waiting after this long
# starts listening for its client going away; one answered sooner never pays for the
# listener. Requests to models that run in threads listen from the start, so that a client
# who leaves while queued is dropped before its input runs.
WATCH_AFTER_S = 0.25

ClientGone = Callable[[], Awaitable[object]]


class _Guard:
    """Fails a job at its deadline, or when its client leaves.

    Timer callbacks, not tasks raced against the job: a request answered within
    `watch_after` seconds never starts the task that listens for its client going away.
    One timer at a time: first the watch's start, then the deadline.
    """

    def __init__(self, job: Job[Any], timeout_s: float, client_gone: ClientGone | None,
                 watch_after: float) -> None:
        self._job, self._timeout_s = job, timeout_s
        self._loop = asyncio.get_running_loop()
        self._expires = self._loop.time() + timeout_s
        self._watch: asyncio.Future[object] | None = None
        if client_gone is None or timeout_s <= watch_after:
            self._timer = self._loop.call_later(timeout_s, self._expire)
        elif watch_after > 0:
            self._timer = self._loop.call_later(watch_after, self._start_watch, client_gone)
        else:
            self._start_watch(client_gone)

    def _expire(self) -> None:
        self._job.fail(DeadlineExceeded(f"no answer within {self._timeout_s:.3g} s; the "
                                        "request was dropped from the queue"))

    def _start_watch(self, client_gone: ClientGone) -> None:
        self._watch = asyncio.ensure_future(client_gone())
        self._watch.add_done_callback(self._client_left)
        self._timer = self._loop.call_at(self._expires, self._expire)

    def _client_left(self, task: asyncio.Future[object]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._job.fail(ClientCancelled("the client disconnected while its request "
                                           "was queued"))

    def cancel(self) -> None:
        self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()


def outcome_of(exc: BaseException) -> str:
    """The metrics' outcome label of a request that raised `exc`."""
    if isinstance(exc, QueueFull):
        return "rejected"
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, ClientCancelled):
        return "cancelled"
    if isinstance(exc, CLIENT_ERRORS):
        return "client_error"
    return "server_error"


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """What a model answered for one request: one output row per input, in input order."""

    model: str
    version: int
    kind: str
    labels: list[str] | None
    outputs: Sequence[np.ndarray]
    queue_s: float
    inference_s: float


@dataclass(slots=True)
class _ExplainWork:
    """The model inputs of one explain request: per input (players, plan, how many model
    inputs it takes), then all of them in order with their costs."""

    items: list[tuple[Any, Any, int]] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)
    costs: list[int] = field(default_factory=list)
    evaluations: int = 0


def _attribute(explainer: Explainer, work: _ExplainWork, outputs: np.ndarray,
               options: ExplainOptions) -> list[dict[str, Any]]:
    """Each input's Shapley values from its coalitions' outputs (in a thread)."""
    results, start = [], 0
    for players, plan, count in work.items:
        results.append(explainer.attribute(players, plan, outputs[start:start + count],
                                           options))
        start += count
    return results


class LoadedModel:
    """One version of one model, ready to serve: source, pipeline, session and queue."""

    def __init__(self, *, source: ModelSource, variant: ServedVariant, pipeline: AnyPipeline,
                 session: ModelSession, queue: BatchQueue[Any], limits: BatchLimits,
                 observer: RequestObserver, load_seconds: float, memory_mb: float | None,
                 explainer: Explainer | None = None,
                 explain_observer: ExplainObserver | None = None,
                 explain_error: str | None = None) -> None:
        self.source, self.variant = source, variant
        self.manifest: Manifest = source.manifest
        self.name, self.version = source.name, source.version
        self.pipeline, self.session, self.queue = pipeline, session, queue
        self.limits, self.observer = limits, observer
        self.load_seconds, self.memory_mb = load_seconds, memory_mb
        self.explainer, self.explain_observer = explainer, explain_observer
        self.explain_error = explain_error  # why it cannot be explained, when it cannot
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True
        self._view: ServedVersion | None = None

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.labels

    @property
    def metric_labels(self) -> tuple[str, str]:
        """(model, version) as the Prometheus metrics label them."""
        return self.name, str(self.version)

    async def infer(self, inputs: Sequence[object] | Callable[[ServedVersion], Sequence[object]],
                    timeout_s: float, client_gone: ClientGone | None = None
                    ) -> InferenceResult:
        """Run inputs through the model. Everything up to the queue is synchronous, so a
        caller that looked this model up in the registry submits before any other task
        runs (a version swap cannot slip in between), except for inputs long enough to be
        pre-processed in a thread: this version counts them in flight from the start, so
        it answers them even if it is swapped out meanwhile. `inputs` may be a function of this
        version's view that decodes them (a protocol's tensors): its errors count as this
        version's client errors."""
        t0 = time.perf_counter()
        outcome, count = "server_error", 0
        self._inflight += 1
        self._idle.clear()
        try:
            if not self._accepting:
                raise ModelNotReady(f"model {self.name} version {self.version} is draining")
            if callable(inputs):
                inputs = inputs(self.view())
            pipeline = self.pipeline
            if pipeline.runs_inline(inputs):
                payloads, costs = pipeline.preprocess(inputs)
            else:  # long texts: tokenized in a thread (the deadline counts from t0)
                payloads, costs = await asyncio.to_thread(pipeline.preprocess, inputs)
            count = len(payloads)
            job = self.queue.submit(payloads, costs, deadline=t0 + timeout_s)
            guard = _Guard(job, timeout_s, client_gone,
                           WATCH_AFTER_S if self.queue.runs_inline else 0.0)
            try:
                outputs = await self._outputs(job, "batch")
            finally:
                guard.cancel()
            outcome = "success"
            queue_s = (job.started_at or job.enqueued_at) - job.enqueued_at
            self.observer.predicted(len(outputs), queue_s)
            return InferenceResult(self.name, self.version, self.kind, self.labels, outputs,
                                   queue_s, job.inference_s)
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            self.observer.request_done(outcome, time.perf_counter() - t0, count)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _outputs(self, job: Job[Any], what: str) -> Sequence[Any]:
        """The outputs of a submitted job; a failure of the model itself (not a domain
        error such as a deadline) is logged and answered as InferenceFailed."""
        try:
            return await job.future
        except ServingError:
            raise
        except Exception as exc:
            log.exception("model %s version %s: %s failed", self.name, self.version, what)
            raise InferenceFailed(f"model {self.name} failed on this {what}: "
                                  f"{type(exc).__name__}: {exc}") from exc

    def _plan_explanations(self, explainer: Explainer, inputs: Sequence[Any],
                           options: ExplainOptions) -> _ExplainWork:
        """Every input's players and coalitions, and the model inputs they need."""
        budget = explainer.check(inputs, options)
        payloads, _ = self.pipeline.preprocess(inputs)
        work = _ExplainWork()
        for raw, payload in zip(inputs, payloads, strict=True):
            players = explainer.players(raw, payload)
            plan = explainer.plan(players, budget, options)
            # refused before its model inputs are built (8 long texts at the largest budget
            # once built 128 MB of them, then were refused for their number)
            self.queue.check_low(len(work.payloads) + len(plan.masks))
            batch = players.payloads(plan.masks)
            work.items.append((players, plan, len(batch)))
            work.payloads += batch
            work.costs += [self.pipeline.cost(batch[0])] * len(batch)  # masking keeps length
            work.evaluations += len(batch) * players.per_coalition
        return work

    async def explain(self, inputs: Sequence[object], options: ExplainOptions, timeout_s: float,
                      client_gone: ClientGone | None = None) -> list[dict[str, Any]]:
        """Shapley values of the model's output for each input (app/explain/). The
        coalitions of every input go to the batch queue as one job in its low-priority
        lane, so predictions never wait behind them; the deadline and a client leaving drop
        what has not run."""
        t0 = time.perf_counter()
        outcome = "server_error"
        self._inflight += 1
        self._idle.clear()
        guard = None
        try:
            if not self._accepting:
                raise ModelNotReady(f"model {self.name} version {self.version} is draining")
            if self.explainer is None:
                raise NotExplainable(f"model {self.name} version {self.version} cannot be "
                                     f"explained: {self.explain_error or 'no explainer'}")
            explainer = self.explainer
            work = await asyncio.to_thread(self._plan_explanations, explainer, inputs, options)
            job = self.queue.submit_low(work.payloads, work.costs)
            guard = _Guard(job, timeout_s, client_gone, 0.0)
            outputs = np.asarray(await self._outputs(job, "explanation batch"))
            if self.explain_observer is not None:
                self.explain_observer.evaluated(work.evaluations)
            results = await asyncio.to_thread(_attribute, explainer, work, outputs, options)
            outcome = "success"
            return results
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            if guard is not None:
                guard.cancel()
            if self.explain_observer is not None:
                self.explain_observer.done(outcome, time.perf_counter() - t0)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def run_background(self, inputs: Sequence[object] | Callable[
            [ServedVersion], Sequence[object]], timeout_s: float) -> Sequence[Any]:
        """Outputs for `inputs` from the low-priority lane (a rollout's shadow copy of a
        request): nothing waits for them, no request metric counts them, and they give way
        to predictions. Raises QueueFull when the lane is full, DeadlineExceeded after
        `timeout_s`, ModelNotReady once this version leaves."""
        if not self._accepting:
            raise ModelNotReady(f"model {self.name} version {self.version} is draining")
        if callable(inputs):
            inputs = inputs(self.view())
        if self.pipeline.runs_inline(inputs):
            payloads, costs = self.pipeline.preprocess(inputs)
        else:
            payloads, costs = await asyncio.to_thread(self.pipeline.preprocess, inputs)
        job = self.queue.submit_low(payloads, costs)
        guard = _Guard(job, timeout_s, None, 0.0)
        try:
            return await self._outputs(job, "shadow batch")
        finally:
            guard.cancel()

    async def drain(self) -> None:
        """Stop taking requests; return once every accepted one has been answered."""
        self._accepting = False
        await self._idle.wait()
        await self.queue.drain()

    async def close(self) -> None:
        await self.queue.close()

    def view(self) -> ServedVersion:
        """The facts the APIs report about this version (fixed once it is loaded)."""
        if self._view is None:
            self._view = self._describe()
        return self._view

    def _describe(self) -> ServedVersion:
        s, m, e = self.session, self.manifest, self.explainer
        features = m.inputs.features
        return ServedVersion(
            name=self.name, version=self.version, kind=self.kind,
            labels=tuple(m.labels) if m.labels else None,
            features=tuple(f.name for f in features) if features else None, manifest=m,
            variant=self.variant.name, model_file=self.variant.file,
            variant_rates=self.variant.rates, variant_reason=self.variant.reason,
            provider=s.provider, providers=tuple(s.providers),
            requested_providers=tuple(s.requested), batching=self.limits,
            instances=self.queue.instances, load_seconds=self.load_seconds,
            memory_mb=self.memory_mb,
            explainable=e is not None and (e.text or e.background is not None),
            explain_baseline=e.baseline if e else None,
            feature_ranges=tuple(e.feature_ranges) if e and e.feature_ranges else None,
            **self._quality())

    def _quality(self) -> dict[str, Any]:
        """The served graph's calibration and test metrics (its variant's when recorded)."""
        m = self.manifest
        variant = m.variants.get(self.variant.name or "")
        calibration = (variant.calibration if variant is not None and variant.calibration
                       else m.calibration)
        metrics = variant.test_metrics if variant is not None and variant.test_metrics \
            else m.test_metrics
        return {"calibration": calibration.model_dump(mode="json") if calibration else None,
                "test_metrics": metrics or None}

"""Loaded models: each one's session, pipeline and batch queue, and the set of them.

A request flows router -> `ModelService.predict` -> pipeline.preprocess -> batch queue ->
session.run (worker thread) -> pipeline.postprocess -> router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import (
    DeadlineExceeded,
    InferenceFailed,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ServingError,
)
from app.metrics import Metrics, ModelObserver, RequestObserver
from app.pipelines import Pipeline, build_pipeline
from app.repository import ModelSource, scan
from app.runtime.batcher import BatchLimits, BatchQueue, Job
from app.runtime.session import CPU, ModelSession, create_session
from app.settings import Settings, resolved_instances, resolved_intra_op_threads

log = logging.getLogger("ortserve.models")

# For a model whose batches run inline (tiny ones), a request still waiting after this long
# starts listening for its client going away; one answered sooner never pays for the
# listener. Requests to models that run in threads listen from the start, so that a client
# who leaves while queued is dropped before its input runs.
WATCH_AFTER_S = 0.25


class ClientGone(Exception):
    """The client disconnected while its request waited."""


class _Guard:
    """Fails a job at its deadline, or when its client leaves.

    Timer callbacks, not tasks raced against the job: a request answered within
    `watch_after` seconds never starts the task that listens for its client going away.
    One timer at a time: first the watch's start, then the deadline.
    """

    def __init__(self, job: Job, timeout_s: float,
                 disconnected: Callable[[], Awaitable[Any]] | None,
                 watch_after: float) -> None:
        self._job, self._timeout_s, self._disconnected = job, timeout_s, disconnected
        self._loop = asyncio.get_running_loop()
        self._expires = self._loop.time() + timeout_s
        self._watch: asyncio.Future | None = None
        if disconnected is None or timeout_s <= watch_after:
            self._timer = self._loop.call_later(timeout_s, self._expire)
        elif watch_after > 0:
            self._timer = self._loop.call_later(watch_after, self._start_watch)
        else:
            self._start_watch()

    def _expire(self) -> None:
        self._job.fail(DeadlineExceeded(f"no answer within {self._timeout_s:.3g} s; the "
                                        "request was dropped from the queue"))

    def _start_watch(self) -> None:
        self._watch = asyncio.ensure_future(self._disconnected())
        self._watch.add_done_callback(self._client_left)
        self._timer = self._loop.call_at(self._expires, self._expire)

    def _client_left(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is None:
            self._job.fail(ClientGone())

    def cancel(self) -> None:
        self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()


@dataclass
class PredictResult:
    predictions: list[dict]
    queue_ms: float
    inference_ms: float


@dataclass
class ModelService:
    source: ModelSource
    status: str = "loading"  # loading -> ready | failed
    error: str | None = None
    session: ModelSession | None = None
    pipeline: Pipeline | None = None
    queue: BatchQueue | None = None
    limits: BatchLimits | None = None
    load_seconds: float | None = None
    observer: RequestObserver | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def version(self) -> int | None:
        return self.source.version

    @property
    def metric_labels(self) -> tuple[str, str]:
        """(model, version) as the Prometheus metrics label them."""
        return self.name, str(self.version)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def describe(self, full: bool = False) -> dict:
        m = self.source.manifest
        out: dict[str, Any] = {
            "name": self.name, "version": self.version, "status": self.status,
            "error": self.error,
            "kind": m.kind if m else None,
            "variant": self.source.variant,
            "model_file": self.source.model_file,
            "provider": self.session.provider if self.session else None,
            "providers": self.session.providers if self.session else None,
            "requested_providers": self.session.requested if self.session else None,
            "batching": vars(self.limits) if self.limits else None,
            "instances": self.queue.instances if self.queue else None,
        }
        if full and m is not None:
            out["manifest"] = m.model_dump(mode="json")
            out["test_metrics"] = m.test_metrics
            out["labels"] = m.labels
            out["inputs"] = m.inputs.model_dump(mode="json", exclude_none=True)
            out["load_seconds"] = self.load_seconds
        return out

    async def predict(self, inputs: Sequence[Any], timeout_s: float,
                      disconnected: Callable[[], Awaitable[Any]] | None = None) -> PredictResult:
        """Run inputs through the model; the caller maps errors to HTTP."""
        t0 = time.perf_counter()
        outcome = "server_error"
        try:
            if not self.ready or self.queue is None or self.pipeline is None:
                raise ModelNotReady(f"model {self.name} is {self.status}"
                                    + (f": {self.error}" if self.error else ""))
            payloads, costs = self.pipeline.preprocess(inputs)
            job = self.queue.submit(payloads, costs)
            guard = _Guard(job, timeout_s, disconnected,
                           WATCH_AFTER_S if self.queue.runs_inline else 0.0)
            try:
                outputs = await job.future
            except ClientGone:
                outcome = "cancelled"
                raise ModelNotReady("client disconnected") from None
            except DeadlineExceeded:
                outcome = "timeout"
                raise
            except ServingError:
                raise
            except Exception as exc:
                log.exception("model %s version %s: batch failed", self.name, self.version)
                raise InferenceFailed(f"model {self.name} failed on this batch: "
                                      f"{type(exc).__name__}: {exc}") from exc
            finally:
                guard.cancel()
            predictions = self.pipeline.postprocess(outputs)
            outcome = "success"
            queue_s = (job.started_at or job.enqueued_at) - job.enqueued_at
            if self.observer is not None:
                self.observer.predicted(len(predictions), queue_s)
            return PredictResult(predictions, queue_s * 1000, job.inference_s * 1000)
        except QueueFull:
            outcome = "rejected"
            raise
        except ServingError as exc:
            if outcome == "server_error" and exc.status < 500:
                outcome = "client_error"
            raise
        finally:
            if self.observer is not None:
                self.observer.request_done(outcome, time.perf_counter() - t0)


class ModelRegistry:
    """Every configured model, loaded or not, and which one answers by default."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ModelService] = {}

    def get(self, name: str | None) -> ModelService:
        name = name or self.default_model()
        if name is None:
            raise ModelNotFound("no model named and no default model configured",
                                {"field": "model", "available": sorted(self.models)})
        svc = self.models.get(name)
        if svc is None:
            raise ModelNotFound(f"unknown model {name!r}",
                                {"field": "model", "available": sorted(self.models)})
        return svc

    def default_model(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        if len(self.models) == 1:
            return next(iter(self.models))
        return "sentiment" if "sentiment" in self.models else None

    def not_ready(self) -> dict[str, str]:
        return {n: (s.error or s.status) for n, s in self.models.items() if not s.ready}

    def _limits(self, src: ModelSource) -> BatchLimits:
        s = self.settings
        m = src.manifest.batching if src.manifest else None
        o = s.batching.get(src.name)
        manifest_fields = m.model_fields_set if m else set()

        def pick(key: str):
            if o is not None and getattr(o, key, None) is not None:
                return getattr(o, key)
            if m is not None and key in manifest_fields and getattr(m, key) is not None:
                return getattr(m, key)
            return getattr(s, key)

        return BatchLimits(max_batch_size=pick("max_batch_size"),
                           max_batch_tokens=pick("max_batch_tokens"),
                           max_delay_ms=pick("max_delay_ms"),
                           max_queue_size=pick("max_queue_size"))

    async def load_all(self) -> None:
        s = self.settings
        sources = await asyncio.to_thread(scan, s.models_dir, s.models or None,
                                          s.model_versions, s.model_variant)
        for src in sources:
            svc = ModelService(src)
            svc.observer = RequestObserver(self.metrics, *svc.metric_labels)
            self.models[src.name] = svc
            self.metrics.ready.labels(*svc.metric_labels).set(0)
        for svc in self.models.values():
            await self.load(svc)

    async def load(self, svc: ModelService) -> None:
        from app.runtime.session import DeviceError

        s, src = self.settings, svc.source
        if src.error:
            self._fail(svc, src.error)
            return
        t0 = time.perf_counter()
        try:
            svc.pipeline = await asyncio.to_thread(
                build_pipeline, src.manifest, src.path, s.max_text_chars, s.truncate_text,
                s.max_inputs, s.max_rows, src.verified)
            svc.session = await asyncio.to_thread(
                create_session, src.verified[src.model_file], s.device, s.strict_device,
                s.tensorrt, resolved_intra_op_threads(s), s.inter_op_threads,
                s.ort_allow_spinning)
        except DeviceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken model must not stop the others
            self._fail(svc, f"cannot load: {type(exc).__name__}: {exc}")
            return
        finally:
            src.verified = None  # ONNX Runtime and the tokenizer keep their own copies
        svc.limits = self._limits(src)
        session, pipeline = svc.session, svc.pipeline
        names = set(session.input_names)

        def session_run(feeds: dict):
            return session.run({k: v for k, v in feeds.items() if k in names})

        def run(payloads: list[Any]):
            return pipeline.run_batch(session_run, payloads)

        svc.queue = BatchQueue(run, svc.limits,
                               ModelObserver(self.metrics, *svc.metric_labels), name=svc.name,
                               instances=resolved_instances(s, session.provider != CPU))
        try:
            if s.warmup:
                for payloads in pipeline.warmup_payloads():
                    await svc.queue.warm_up(payloads[:svc.limits.max_batch_size])
        except Exception as exc:  # noqa: BLE001
            self._fail(svc, f"warm-up failed: {type(exc).__name__}: {exc}")
            return
        svc.queue.start()
        svc.load_seconds = round(time.perf_counter() - t0, 3)
        svc.status = "ready"
        m = src.manifest
        self.metrics.ready.labels(*svc.metric_labels).set(1)
        self.metrics.info.labels(*svc.metric_labels, m.kind, src.variant or "",
                                 session.provider, session.requested[0],
                                 m.artifacts[src.model_file].sha256).set(1)
        log.info("model %s version %s ready on %s in %.2f s", svc.name, svc.version,
                 session.provider, svc.load_seconds)

    def _fail(self, svc: ModelService, reason: str) -> None:
        svc.status, svc.error = "failed", reason
        self.metrics.load_failures.labels(svc.name).set(1)
        log.error("model %s version %s not loaded: %s", svc.name, svc.version, reason)

    async def drain(self) -> None:
        await asyncio.gather(*(s.queue.drain() for s in self.models.values() if s.queue))

    async def close(self) -> None:
        for svc in self.models.values():
            if svc.queue is not None:
                await svc.queue.close()

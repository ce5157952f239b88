"""A verified version -> a complete `LoadedModel` (pipeline, session, batch limits resolved
once, the variant chosen, warm-up), or a `LoadError` that names why and changes nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from app.contract.background import BadBackground
from app.contract.repository import ModelSource, VerifiedVersion
from app.explain.explainer import Explainer, ExplainLimits
from app.observability.metrics import ExplainObserver, Metrics, ModelObserver, RequestObserver
from app.pipelines import AnyPipeline, Pipeline, build_pipeline
from app.runtime.batcher import BatchLimits, BatchQueue, Foreground
from app.runtime.memory import release_freed_memory, rss_mb
from app.runtime.session import CPU, DeviceError, ModelSession, create_session
from app.runtime.tensors import Scores
from app.serving.model import LoadedModel
from app.serving.variants import ServedVariant, budget_note, choose_variant, time_variants
from app.settings import Settings, resolved_instances, resolved_intra_op_threads

log = logging.getLogger("ortserve.loader")

# Memory a version takes, as a multiple of its model file's size, for the budget check
# before it loads (ONNX Runtime holds the weights plus its pre-packed copies of them;
# tests/test_registry.py measures a model's real footprint).
MEMORY_PER_FILE_BYTE = 2.0

P = TypeVar("P")


class LoadError(Exception):
    """A version that cannot serve; `reason` is a short label for the failure metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class BatchRunner(Generic[P]):
    """Runs one batch of a loaded version, in a batch queue's thread: the pipeline collates
    the payloads, the session runs them, the pipeline turns the outputs into rows."""

    def __init__(self, pipeline: Pipeline[P], session: ModelSession) -> None:
        self.pipeline, self.session = pipeline, session

    def __call__(self, payloads: list[P]) -> Scores:
        return self.pipeline.run_batch(self.session.run, payloads)


def resolve_limits(settings: Settings, source: ModelSource) -> BatchLimits:
    """Per-model setting, else the manifest's value, else the server-wide setting."""
    manifest = source.manifest.batching
    override = settings.batching.get(source.name)

    def pick(key: str) -> Any:
        for layer in (override, manifest):
            if layer is not None and getattr(layer, key) is not None:
                return getattr(layer, key)
        return getattr(settings, key)

    return BatchLimits(max_batch_size=pick("max_batch_size"),
                       max_batch_tokens=pick("max_batch_tokens"),
                       max_delay_ms=pick("max_delay_ms"),
                       max_queue_size=pick("max_queue_size"))


def check_memory(settings: Settings, source: ModelSource) -> None:
    if not settings.memory_budget_mb:
        return
    need = source.manifest.artifacts[source.model_file].bytes * MEMORY_PER_FILE_BYTE / 2**20
    used = rss_mb()
    if used + need > settings.memory_budget_mb:
        raise LoadError("memory", f"needs about {need:.0f} MB on top of the {used:.0f} MB in "
                                  f"use, over the memory budget of "
                                  f"{settings.memory_budget_mb} MB "
                                  "(ORTSERVE_MEMORY_BUDGET_MB); unload a version first")


def check_outputs(source: ModelSource, shape: Sequence[object]) -> None:
    """The graph's output width must match the manifest: one column per label, or one
    value for a regressor."""
    m = source.manifest
    width = shape[-1] if len(shape) >= 2 else 1
    want = len(m.labels) if m.labels else 1
    if isinstance(width, int) and width != want:
        what = f"{want} labels" if m.labels else "a regressor (one value)"
        raise LoadError("outputs", f"the graph's output has {width} columns but the manifest "
                                   f"declares {what}")


def _build(found: VerifiedVersion, settings: Settings, files: Mapping[str, str]
           ) -> tuple[AnyPipeline, dict[str, ModelSession], Explainer | None, str | None]:
    """In a thread: the pipeline, a session per variant in `files`, the explainer (or why
    there is none)."""
    s, source = settings, found.source
    m = source.manifest
    pipeline = build_pipeline(m, source.path, s.max_text_chars, s.truncate_text,
                              s.max_inputs, s.max_rows, found.files)
    sessions = {variant: create_session(
        found.files[file], device=s.device, strict=s.strict_device, tensorrt=s.tensorrt,
        intra_op_threads=resolved_intra_op_threads(s), inter_op_threads=s.inter_op_threads,
        allow_spinning=s.ort_allow_spinning, output_name=m.outputs.get("name"))
        for variant, file in files.items()}
    try:
        explainer = Explainer.for_model(m, pipeline, ExplainLimits(
            s.explain_max_inputs, s.explain_default_evaluations, s.explain_max_evaluations,
            s.explain_exact_max_players), found.files)
    except BadBackground as exc:  # predictions still serve; explain answers why not
        log.warning("model %s version %s: no explanations: %s", source.name, source.version,
                    exc)
        return pipeline, sessions, None, str(exc)
    return pipeline, sessions, explainer, None


async def _choose(source: ModelSource, pipeline: AnyPipeline, sessions: dict[str, ModelSession],
                  limits: BatchLimits, budget: float) -> tuple[ServedVariant, ModelSession]:
    """The variant to serve: the only one, or the fastest of the candidates on this host."""
    if len(sessions) == 1:
        [session] = sessions.values()
        return ServedVariant(source.variant, source.model_file), session
    try:
        rates = await asyncio.to_thread(time_variants, pipeline, sessions, limits)
    except Exception as exc:  # noqa: BLE001
        raise LoadError("warmup", f"timing the variants failed: {type(exc).__name__}: "
                                  f"{exc}") from exc
    chosen, why = choose_variant(rates, source.variant)
    why += budget_note(source.manifest, chosen, budget)
    log.info("model %s version %s: serving variant %s (%s)", source.name, source.version,
             chosen, why)
    session = sessions.pop(chosen)
    sessions.clear()  # the variants not chosen are freed here
    release_freed_memory()
    return ServedVariant(chosen, source.candidates[chosen], rates, why), session


async def _warm_up(pipeline: Pipeline[P], session: ModelSession, queue: BatchQueue[P],
                   limits: BatchLimits) -> None:
    """Every warm-up batch through the queue, then one run that hands the memory arena's
    unused chunks back."""
    warm = pipeline.warmup_payloads(limits.max_batch_size)
    for payloads in warm:
        batch = payloads[:limits.max_batch_size]
        await queue.warm_up(batch, [pipeline.cost(p) for p in batch])
    await asyncio.to_thread(pipeline.run_batch, session.run_and_shrink, min(warm, key=len))
    release_freed_memory()


async def load(found: VerifiedVersion, settings: Settings, metrics: Metrics,
               foreground: Foreground | None = None) -> LoadedModel:
    """Build, check and warm one version. Raises LoadError (or DeviceError in strict mode)."""
    source, s = found.source, settings
    check_memory(s, source)
    t0, rss0 = time.perf_counter(), rss_mb()
    limits = resolve_limits(s, source)
    files = dict(source.candidates) if s.warmup and source.candidates else {
        source.variant or "": source.model_file}
    try:
        pipeline, sessions, explainer, explain_error = await asyncio.to_thread(
            _build, found, s, files)
    except DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to build is this version's
        raise LoadError("session", f"cannot load: {type(exc).__name__}: {exc}") from exc
    variant, session = await _choose(source, pipeline, sessions, limits, s.accuracy_budget)
    check_outputs(source, session.output_shape)
    labels = (source.name, str(source.version))
    queue = BatchQueue(BatchRunner(pipeline, session), limits,
                       ModelObserver(metrics, *labels), name=source.name,
                       instances=resolved_instances(s, session.provider != CPU),
                       low_batch_size=s.explain_batch_size,
                       low_queue_limit=s.explain_max_queued, foreground=foreground)
    try:
        if s.warmup:
            await _warm_up(pipeline, session, queue, limits)
    except Exception as exc:  # noqa: BLE001
        await queue.close()
        raise LoadError("warmup", f"warm-up failed: {type(exc).__name__}: {exc}") from exc
    queue.start()
    model = LoadedModel(
        source=source, variant=variant, pipeline=pipeline, session=session, queue=queue,
        limits=limits, observer=RequestObserver(metrics, *labels),
        load_seconds=round(time.perf_counter() - t0, 3), memory_mb=round(rss_mb() - rss0, 1),
        explainer=explainer, explain_observer=ExplainObserver(metrics, *labels),
        explain_error=explain_error)
    log.info("model %s version %s ready on %s in %.2f s", source.name, source.version,
             session.provider, model.load_seconds)
    return model

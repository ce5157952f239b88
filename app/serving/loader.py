"""A verified `ModelSource` -> a complete `LoadedModel` (pipeline, session, batch limits
resolved once, warm-up), or a `LoadError` that names why and changes nothing."""

from __future__ import annotations

import asyncio
import logging
import time

from app.contract.background import BadBackground
from app.contract.repository import ModelSource
from app.explain.explainer import Explainer, ExplainLimits
from app.observability.metrics import ExplainObserver, Metrics, ModelObserver, RequestObserver
from app.pipelines import build_pipeline
from app.runtime.batcher import BatchLimits, BatchQueue
from app.runtime.memory import release_freed_memory, rss_mb
from app.runtime.session import CPU, DeviceError, create_session
from app.serving.model import LoadedModel
from app.settings import Settings, resolved_instances, resolved_intra_op_threads

log = logging.getLogger("ortserve.loader")

# Memory a version takes, as a multiple of its model file's size, for the budget check
# before it loads (ONNX Runtime holds the weights plus its pre-packed copies of them;
# tests/test_registry.py measures a model's real footprint).
MEMORY_PER_FILE_BYTE = 2.0


class LoadError(Exception):
    """A version that cannot serve; `reason` is a short label for the failure metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def resolve_limits(settings: Settings, source: ModelSource) -> BatchLimits:
    """Per-model setting, else the manifest's value, else the server-wide setting."""
    manifest = source.manifest.batching if source.manifest else None
    override = settings.batching.get(source.name)

    def pick(key: str):
        for layer in (override, manifest):
            if layer is not None and getattr(layer, key) is not None:
                return getattr(layer, key)
        return getattr(settings, key)

    return BatchLimits(max_batch_size=pick("max_batch_size"),
                       max_batch_tokens=pick("max_batch_tokens"),
                       max_delay_ms=pick("max_delay_ms"),
                       max_queue_size=pick("max_queue_size"))


def check_memory(settings: Settings, source: ModelSource) -> None:
    if not settings.memory_budget_mb or not source.manifest or not source.model_file:
        return
    need = source.manifest.artifacts[source.model_file].bytes * MEMORY_PER_FILE_BYTE / 2**20
    used = rss_mb()
    if used + need > settings.memory_budget_mb:
        raise LoadError("memory", f"needs about {need:.0f} MB on top of the {used:.0f} MB in "
                                  f"use, over the memory budget of "
                                  f"{settings.memory_budget_mb} MB "
                                  "(ORTSERVE_MEMORY_BUDGET_MB); unload a version first")


def check_outputs(source: ModelSource, shape: list) -> None:
    """The graph's output width must match the manifest: one column per label, or one
    value for a regressor."""
    m = source.manifest
    width = shape[-1] if len(shape) >= 2 else 1
    want = len(m.labels) if m.labels else 1
    if isinstance(width, int) and width != want:
        what = f"{want} labels" if m.labels else "a regressor (one value)"
        raise LoadError("outputs", f"the graph's output has {width} columns but the manifest "
                                   f"declares {what}")


# A variant must be this much faster than the manifest's default to replace it (timing noise).
VARIANT_TIE = 0.05


def time_variants(pipeline, sessions: dict, limits: BatchLimits) -> dict[str, float]:
    """Inputs per second of each variant's session on the model's middle-sized warm-up
    batches (8 inputs of each warm-up length, for text), on this host and provider: one
    untimed run of the smallest batch (first-run costs), then the better of two timed
    passes, the variants taking turns so that a slow moment of a shared host hurts them
    alike. Timing every warm-up batch (up to 64 x 128 tokens) cost sentiment 8.5 s of load
    time on a 2-core host for the same choice."""
    warm = [b[:limits.max_batch_size] for b in pipeline.warmup_payloads(limits.max_batch_size)]
    sizes = sorted({len(b) for b in warm})
    batches = [b for b in warm if len(b) == sizes[len(sizes) // 2]]
    inputs = sum(len(b) for b in batches)
    best = dict.fromkeys(sessions, float("inf"))
    for session in sessions.values():
        pipeline.run_batch(session.run, min(warm, key=len))
    for _ in range(2):
        for variant, session in sessions.items():
            t0 = time.perf_counter()
            for b in batches:
                pipeline.run_batch(session.run, b)
            best[variant] = min(best[variant], time.perf_counter() - t0)
    return {v: round(inputs / t, 1) for v, t in best.items()}


def choose_variant(rates: dict[str, float], default: str | None) -> tuple[str, str]:
    """The fastest variant, unless the manifest's default is within VARIANT_TIE of it."""
    fastest = max(rates, key=rates.get)
    listed = ", ".join(f"{v} {r:g} inputs/s" for v, r in
                       sorted(rates.items(), key=lambda kv: -kv[1]))
    if default in rates and rates[default] >= (1 - VARIANT_TIE) * rates[fastest]:
        if default == fastest:
            return default, f"fastest on this host: {listed}"
        return default, (f"the manifest's default, within {VARIANT_TIE:.0%} of the fastest: "
                         f"{listed}")
    return fastest, f"fastest on this host: {listed}"


async def load(source: ModelSource, settings: Settings, metrics: Metrics) -> LoadedModel:
    """Build, check and warm one version. Raises LoadError (or DeviceError in strict mode)."""
    if source.error or source.manifest is None or source.verified is None:
        raise LoadError("verify", source.error or "not verified")
    check_memory(settings, source)
    s, m = settings, source.manifest
    t0, rss0 = time.perf_counter(), rss_mb()
    limits = resolve_limits(s, source)
    candidates = source.candidates if s.warmup else {}
    try:
        pipeline = await asyncio.to_thread(
            build_pipeline, m, source.path, s.max_text_chars, s.truncate_text, s.max_inputs,
            s.max_rows, source.verified)
        sessions = {}
        for variant, file in (candidates or {source.variant: source.model_file}).items():
            sessions[variant] = await asyncio.to_thread(
                create_session, source.verified[file], s.device, s.strict_device,
                s.tensorrt, resolved_intra_op_threads(s), s.inter_op_threads,
                s.ort_allow_spinning, None, m.outputs.get("name"))
    except DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to build is this version's
        raise LoadError("session", f"cannot load: {type(exc).__name__}: {exc}") from exc
    else:
        explainer, explain_error = None, None
        try:
            explainer = Explainer.for_model(m, pipeline, ExplainLimits(
                s.explain_max_inputs, s.explain_default_evaluations, s.explain_max_evaluations,
                s.explain_exact_max_players), source.verified)
        except BadBackground as exc:  # predictions still serve; explain answers why not
            explain_error = str(exc)
            log.warning("model %s version %s: no explanations: %s", source.name,
                        source.version, exc)
    finally:
        source.verified = None  # ONNX Runtime and the tokenizer keep their own copies
    rates: dict[str, float] = {}
    if len(sessions) > 1:
        try:
            rates = await asyncio.to_thread(time_variants, pipeline, sessions, limits)
        except Exception as exc:  # noqa: BLE001
            raise LoadError("warmup", f"timing the variants failed: {type(exc).__name__}: "
                                      f"{exc}") from exc
        chosen, why = choose_variant(rates, source.variant)
        log.info("model %s version %s: serving variant %s (%s)", source.name, source.version,
                 chosen, why)
        source.variant, source.model_file = chosen, candidates[chosen]
        source.variant_rates, source.variant_reason = rates, why
    session = sessions.pop(source.variant)
    if sessions:
        sessions.clear()  # the variants not chosen are freed here
        release_freed_memory()
    check_outputs(source, session.output_shape)
    labels = (source.name, str(source.version))
    queue = BatchQueue(lambda payloads: pipeline.run_batch(session.run, payloads), limits,
                       ModelObserver(metrics, *labels), name=source.name,
                       instances=resolved_instances(s, session.provider != CPU),
                       low_batch_size=s.explain_batch_size)
    try:
        if s.warmup:
            warm = pipeline.warmup_payloads(limits.max_batch_size)
            for payloads in warm:
                batch = payloads[:limits.max_batch_size]
                await queue.warm_up(batch, [pipeline.cost(p) for p in batch])
            await asyncio.to_thread(pipeline.run_batch, session.run_and_shrink,
                                    min(warm, key=len))
            release_freed_memory()
    except Exception as exc:  # noqa: BLE001
        await queue.close()
        raise LoadError("warmup", f"warm-up failed: {type(exc).__name__}: {exc}") from exc
    queue.start()
    model = LoadedModel(source, pipeline, session, queue, limits,
                        RequestObserver(metrics, *labels),
                        round(time.perf_counter() - t0, 3), round(rss_mb() - rss0, 1),
                        explainer, ExplainObserver(metrics, *labels), explain_error)
    log.info("model %s version %s ready on %s in %.2f s", source.name, source.version,
             session.provider, model.load_seconds)
    return model

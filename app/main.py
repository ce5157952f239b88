"""The FastAPI app: `create_app(settings)` and `app` for uvicorn (`app.main:app`)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api.admin import docs, health, repository, rollout
from app.api.admin import metrics as metrics_api
from app.api.edge.auth import Gate
from app.api.edge.context import RequestContextMiddleware
from app.api.edge.drain import ClosingConnections, Drain
from app.api.edge.errors import install_fallback_handlers
from app.api.edge.state import AppState
from app.api.edge.static import PlaygroundFiles
from app.api.v1 import explain, models, predict
from app.api.v2 import repository as v2_repository
from app.api.v2 import rest as v2_rest
from app.observability.logs import configure_logging
from app.observability.metrics import Metrics
from app.runtime.session import DeviceError
from app.security import posture
from app.security.keys import KeyStore
from app.security.ratelimit import AddressThrottle, build_limiter
from app.server import install_drain_handler
from app.serving.dataplane import DataPlane
from app.serving.registry import ModelRegistry
from app.settings import Settings, load_settings

log = logging.getLogger("ortserve")
UI_DIR = Path(__file__).resolve().parent / "ui"  # the playground (README "Explanations")

DESCRIPTION = """Serves ONNX text classifiers, tabular classifiers and regressors from a
versioned model repository, with dynamic batching, health checks and Prometheus metrics.
Errors always have the shape `{"error": {"code", "message", "details"}}`."""


# Collect the youngest generation after this many new container objects instead of 700.
GC_YOUNG_THRESHOLD = 20_000


def quiet_garbage_collector() -> None:
    """Keep Python's cycle collector off the request path's back.

    Once the models are loaded, everything alive is long-lived (sessions, tokenizers,
    schemas): freezing it stops every full collection from walking it again, and a higher
    young-generation threshold makes collections rarer; requests make little cyclic garbage.
    Tabular single-row requests at concurrency 64, 2 cores: 7,300 -> 9,400 req/s from the
    freeze, -> 10,400 with the threshold (`python -m bench probe --workload tab1`).
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, second, third)


def _telemetry(enabled: bool) -> dict:
    """FastAPI's own OpenTelemetry (FastAPI versions that have it). Unconfigured, it still
    looks up the providers on every request: a tenth of a small model's request time."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": enabled, "metrics": enabled, "logs": enabled,
                          "operation_spans": enabled}}


def _lifespan(state: AppState, registry: ModelRegistry
              ) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start: load the models, the gRPC server, the SIGTERM drain. Stop: drain and close."""
    settings, drain = state.settings, state.drain

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ortserve = state
        try:
            await registry.start()
        except DeviceError as exc:
            log.error("strict device: %s", exc)
            raise
        grpc_server = None
        if settings.grpc_port is not None:
            from app.api.v2 import grpc_server as grpc_api  # see its docstring: only if used

            grpc_server = await grpc_api.start(state, settings.host, settings.grpc_port,
                                               settings.max_body_bytes)
        state.started = True
        install_drain_handler(asyncio.get_running_loop(), drain, settings.drain_delay_s,
                              settings.shutdown_grace_s)
        log.info("serving %d model(s): %s", len(registry.records),
                 ", ".join(f"{n}={r.status}" for n, r in registry.records.items()))
        quiet_garbage_collector()
        yield
        drain.begin()
        if grpc_server is not None:
            await grpc_server.stop(settings.shutdown_grace_s)  # in-flight calls finish
        await registry.drain()
        await registry.close()

    return lifespan


def _gate(settings: Settings, metrics: Metrics, drain: Drain) -> Gate:
    """Keys, rate limits and the failed-authentication throttle, as the settings say."""
    minimum = settings.min_key_length
    predict = KeyStore(settings.api_keys, settings.api_keys_file, min_length=minimum)
    observe = predict | KeyStore(settings.metrics_keys, settings.metrics_keys_file,
                                 min_length=minimum)
    return Gate(
        predict, KeyStore(settings.admin_keys, settings.admin_keys_file, min_length=minimum),
        drain, metrics, observe_keys=observe,
        limiter=build_limiter(settings, metrics),
        admin_limiter=build_limiter(settings, metrics, settings.admin_rate_limit_per_s,
                                    settings.admin_rate_limit_burst, "ortserve:adminlimit:"),
        throttle=AddressThrottle(settings.auth_failures_per_minute)
        if settings.auth_failures_per_minute > 0 else None)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    for warning in posture.check(settings):  # UnsafeSettings stops the start
        log.warning("security: %s", warning)
    posture.check_key_files(settings)
    log.info("security: %s", posture.describe(settings))
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    drain = Drain()
    state = AppState(settings, metrics, DataPlane(registry, settings.explain_max_concurrent),
                     drain, _gate(settings, metrics, drain),
                     exempt_paths=frozenset(settings.auth_exempt_paths) - (
                         {"/metrics"} if settings.metrics_require_key else set()))
    app = FastAPI(title="ortserve", version=__version__, description=DESCRIPTION,
                  lifespan=_lifespan(state, registry), openapi_url=None, docs_url=None,
                  redoc_url=None, **_telemetry(settings.otel))
    install_fallback_handlers(app)
    for r in (predict.router, explain.router, models.router, health.router, metrics_api.router,
              repository.router, rollout.router, v2_rest.health, v2_rest.router,
              v2_repository.router):
        app.include_router(r)
    if settings.docs:
        app.include_router(docs.router)
    if settings.ui:
        # the playground: static files that call the public API (which asks for the key)
        app.mount("/ui", PlaygroundFiles(UI_DIR), name="ui")
    # Starlette runs the last added middleware first: the request context, closing
    # connections while draining, CORS. Keys, limits and refusals while stopping are each
    # route's gate (app/api/edge/route.py).
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID",
                                          "X-Request-Timeout"])
    app.add_middleware(ClosingConnections, drain=drain)
    app.add_middleware(RequestContextMiddleware)
    return app


def __getattr__(name: str):
    # `app.main:app` builds the app from the environment on first access only, so that
    # importing this module (tests, the CLI) does not read settings or load models.
    if name == "app":
        global _app
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)


_app: FastAPI | None = None

"""Readiness, one rule for every protocol (`/health/ready`, `/v2/health/ready`, gRPC
`ServerReady`, and per model `/v2/models/{name}/ready` and gRPC `ModelReady`).

The service is ready when it has started, is not draining, has models, and every model that
should serve can (a model unloaded on purpose does not count). A model (version) is ready
when the service is and that model (version) would answer a request now.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.api.edge.state import AppState
from app.errors import ModelNotReady
from app.serving.views import ServedVersion

NO_MODELS = "no models configured or found"


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    not_ready: dict[str, str]  # what is not ready ("service" or a model name) and why


def service_state(state: AppState) -> str | None:
    """Why the service as a whole cannot take work (None: it can)."""
    if state.drain.draining:
        return "draining"
    if not state.started:
        return "starting"
    return None


def readiness(state: AppState) -> Readiness:
    models = state.dataplane.readiness()
    not_ready = dict(models.not_ready)
    service = service_state(state)
    if service is None and models.configured == 0:
        service = NO_MODELS
        not_ready = {}
    if service is not None:
        not_ready = {"service": service, **not_ready}
    return Readiness(not not_ready, not_ready)


def model_ready(state: AppState, name: str, version: int | None) -> ServedVersion:
    """The version that would answer (name, version), or the error that says why none
    would (ModelNotFound, ModelNotReady)."""
    service = service_state(state)
    if service is not None:
        raise ModelNotReady(f"the service is {service}")
    return state.dataplane.served(name, version)

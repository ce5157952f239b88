"""What every protocol adapter shares for one app: settings, the data plane, the gate,
the drain, metrics. The one way to reach it: `app_state(request)` over HTTP, the servicer's
own reference over gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from app.api.edge.auth import Gate
from app.api.edge.drain import Drain
from app.observability.metrics import Metrics
from app.serving.dataplane import DataPlane
from app.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    dataplane: DataPlane
    drain: Drain
    gate: Gate
    exempt_paths: frozenset[str] = frozenset()  # served without a key (the settings')
    started: bool = False


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.ortserve
    return state

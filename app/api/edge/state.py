"""The per-app shared state that routers receive through dependency injection."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from app.api.edge.drain import Drain
from app.observability.metrics import Metrics
from app.serving.dataplane import DataPlane
from app.serving.registry import ModelRegistry
from app.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    drain: Drain = field(default_factory=Drain)
    started: bool = False
    dataplane: DataPlane = field(init=False)

    def __post_init__(self) -> None:
        self.dataplane = DataPlane(self.registry, self.settings.explain_max_concurrent)

    @property
    def draining(self) -> bool:
        return self.drain.draining


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs sync dependencies in a thread pool, a thread hop per
    # request that cost a fifth of the event loop's time under load.
    return request.app.state.ortserve

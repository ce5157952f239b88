"""GET /health/live and GET /health/ready."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.edge.responses import JSONResponse
from app.api.edge.route import LeanRoute
from app.api.edge.state import AppState
from app.api.schemas import Liveness, Readiness

router = APIRouter(prefix="/health", tags=["health"], route_class=LeanRoute)


@router.get("/live", response_model=Liveness, summary="200 while the process runs")
async def live(request: Request):
    return JSONResponse({"status": "alive"})


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="200 once every configured model is loaded and warmed; 503 before, "
                    "while draining, or when a model failed")
async def ready(request: Request):
    state: AppState = request.app.state.ortserve
    not_ready = state.registry.not_ready()
    if not state.started:
        not_ready = {"service": "starting", **not_ready}
    if state.draining:
        not_ready = {"service": "draining", **not_ready}
    if not state.registry.records and state.started:
        not_ready = {"service": "no models configured or found"}
    status = 503 if not_ready else 200
    return JSONResponse({"status": "ready" if status == 200 else "not_ready",
                           "not_ready": not_ready}, status_code=status)

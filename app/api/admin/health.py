"""GET /health/live and GET /health/ready (the readiness rule: `app/api/edge/readiness.py`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admin.schemas import Liveness, Readiness
from app.api.edge.auth import Access
from app.api.edge.errors import json_response
from app.api.edge.readiness import readiness
from app.api.edge.route import route_class
from app.api.edge.state import app_state
from app.observability.context import V1

router = APIRouter(prefix="/health", tags=["health"], route_class=route_class(V1, Access.PUBLIC))


@router.get("/live", response_model=Liveness, summary="200 while the process runs")
async def live(request: Request) -> Response:
    return json_response({"status": "alive"})


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="200 once every configured model is loaded and warmed; 503 before, "
                    "while draining, or when a model failed")
async def ready(request: Request) -> Response:
    r = readiness(app_state(request))
    return json_response({"status": "ready" if r.ready else "not_ready",
                          "not_ready": r.not_ready}, 200 if r.ready else 503)

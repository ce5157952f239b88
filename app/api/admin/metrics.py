"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge.auth import Access
from app.api.edge.route import route_class
from app.api.edge.state import app_state
from app.observability.context import V1

router = APIRouter(tags=["metrics"], route_class=route_class(V1, Access.OBSERVE))


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {
                "example": "ortserve_requests_total{model=\"sentiment\",version=\"1\","
                           "outcome=\"success\"} 42.0\n"}}}})
async def metrics(request: Request) -> Response:
    return Response(app_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.edge.state import AppState, get_state

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {
                "example": "ortserve_requests_total{model=\"sentiment\",version=\"1\","
                           "outcome=\"success\"} 42.0\n"}}}})
async def metrics(state: Annotated[AppState, Depends(get_state)]):
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

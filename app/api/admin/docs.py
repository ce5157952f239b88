"""The API's own documentation: GET /openapi.json, /docs (Swagger UI) and /redoc, served
through the edge like every other route (keys unless ORTSERVE_AUTH_EXEMPT_PATHS lists them,
as it does by default)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge.auth import Access
from app.api.edge.errors import json_response
from app.api.edge.route import route_class
from app.observability.context import V1

OPENAPI_URL = "/openapi.json"
router = APIRouter(route_class=route_class(V1, Access.OBSERVE), include_in_schema=False)


@router.get(OPENAPI_URL)
async def openapi(request: Request) -> Response:
    return json_response(request.app.openapi())


@router.get("/docs")
async def swagger(request: Request) -> Response:
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - docs")


@router.get("/redoc")
async def redoc(request: Request) -> Response:
    return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - ReDoc")

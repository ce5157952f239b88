"""Triton's model repository extension on the v2 API, over the data plane's repository
control (the admin keys; the same semantics as `/repository/*`):
POST /v2/repository/index, POST /v2/repository/models/{name}/load|unload."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge import body, params
from app.api.edge.auth import Access
from app.api.edge.errors import InvalidRequest, MalformedBody, json_response
from app.api.edge.params import NAME_DOC
from app.api.edge.route import openapi, route_class
from app.api.edge.state import app_state
from app.api.v2 import schemas
from app.api.v2.metadata import repository_index
from app.observability.context import V2

router = APIRouter(prefix="/v2/repository", tags=["v2 (Open Inference Protocol)"],
                   route_class=route_class(V2, Access.ADMIN))
ADMIN_ERRORS = (400, 401, 403, 404, 409, 413, 429, 503)


async def _options(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is {})."""
    raw = await body.read_body(request, app_state(request).settings.max_body_bytes)
    if not raw.strip():
        return {}
    try:
        options = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedBody("request body is not valid JSON") from None
    if not isinstance(options, dict):
        raise InvalidRequest("body", "must be a JSON object")
    return options


@router.post("/index", response_model=list[schemas.RepositoryIndexEntry],
             summary="Every model and version in the repository and its state",
             **openapi(statuses=ADMIN_ERRORS, error_model=schemas.ErrorResponse))
async def index(request: Request) -> Response:
    options = await _options(request)
    return json_response(repository_index(app_state(request).dataplane,
                                          bool(options.get("ready"))))


@router.post("/models/{name}/load", summary="Load the model (its version policy afresh)",
             **openapi([NAME_DOC], statuses=ADMIN_ERRORS, error_model=schemas.ErrorResponse))
async def load(request: Request) -> Response:
    name = params.model_name(request.path_params["name"])
    await _options(request)
    await app_state(request).dataplane.load(name)
    return json_response({})


@router.post("/models/{name}/unload", summary="Drain and unload every version of the model",
             **openapi([NAME_DOC], statuses=ADMIN_ERRORS, error_model=schemas.ErrorResponse))
async def unload(request: Request) -> Response:
    name = params.model_name(request.path_params["name"])
    await _options(request)
    await app_state(request).dataplane.unload(name)
    return json_response({})

"""The repository API: GET /repository/index, POST /repository/models/{name}/load|unload.

Guarded by the admin keys (ORTSERVE_ADMIN_KEYS, `Authorization: Bearer`), which are
distinct from the predict keys; with no admin key configured every call is 403 and
changes nothing. Each change answers once it is done (or failed), with the model's state.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admin.schemas import LoadRequest, RepositoryIndex
from app.api.edge import body, params
from app.api.edge.auth import Access
from app.api.edge.errors import json_response
from app.api.edge.params import NAME_DOC
from app.api.edge.route import openapi, route_class
from app.api.edge.schemas import ErrorResponse, ModelSummary
from app.api.edge.state import app_state
from app.api.edge.views import model_summary
from app.errors import LoadFailed
from app.observability.context import V1

router = APIRouter(prefix="/repository", tags=["repository"],
                   route_class=route_class(V1, Access.ADMIN))
ERRORS = (400, 401, 403, 404, 409, 413, 422, 429, 503)


@router.get("/index", response_model=RepositoryIndex,
            summary="Every model and version on disk, and its state",
            **openapi(statuses=ERRORS, error_model=ErrorResponse))
async def index(request: Request) -> Response:
    entries = app_state(request).dataplane.index()
    return json_response({"models": [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason,
         "on_disk": e.on_disk, "routed": e.routed} for e in entries]})


async def _target(request: Request) -> tuple[str, int | None]:
    """The model in the path and the version in the body (an empty body: none)."""
    name = params.model_name(request.path_params["name"])
    raw = await body.read_body(request, app_state(request).settings.max_body_bytes)
    return name, body.parse(raw, LoadRequest).version if raw.strip() else None


@router.post("/models/{name}/load", response_model=ModelSummary,
             summary="Load a version (requests without a version go to it until the next "
                     "load), or apply the model's version policy afresh",
             **openapi([NAME_DOC], LoadRequest, ERRORS, ErrorResponse))
async def load(request: Request) -> Response:
    name, version = await _target(request)
    try:
        view = await app_state(request).dataplane.load(name, version)
    except LoadFailed as exc:  # the answer says what serves now
        raise LoadFailed(exc.message, details=model_summary(exc.model)) from None
    return json_response(model_summary(view))


@router.post("/models/{name}/unload", response_model=ModelSummary,
             summary="Drain and unload a version, or every version of the model",
             **openapi([NAME_DOC], LoadRequest, ERRORS, ErrorResponse))
async def unload(request: Request) -> Response:
    name, version = await _target(request)
    return json_response(model_summary(await app_state(request).dataplane.unload(name,
                                                                                  version)))

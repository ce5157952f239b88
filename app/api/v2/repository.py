"""Triton's model repository extension on the v2 API, mapped onto the repository
control of `app/api/admin/repository.py` (same admin keys, same semantics):
POST /v2/repository/index, POST /v2/repository/models/{name}/load|unload."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.admin.repository import require_admin
from app.api.edge.http import read_body
from app.api.edge.route import LeanRoute
from app.api.v2 import schemas
from app.api.v2.rest import (
    app_state,
    documented,
    error,
    json_response,
    name_version,
    v2_errors,
)
from app.errors import InvalidInput

router = APIRouter(prefix="/v2/repository", tags=["v2 (Open Inference Protocol)"],
                   route_class=LeanRoute)


async def _body(request: Request) -> dict:
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


ADMIN_ERRORS = (400, 401, 403, 404, 409)


@router.post("/index", response_model=list[schemas.RepositoryIndexEntry],
             summary="Every model and version in the repository and its state",
             **documented(*ADMIN_ERRORS))
@v2_errors
async def index(request: Request) -> Response:
    await require_admin(request)
    body = await _body(request)
    entries = [{"name": e["name"], "version": str(e["version"]) if e["version"] else None,
                "state": e["state"].upper(), "reason": e["reason"] or ""}
               for e in app_state(request).registry.index()]
    if body.get("ready"):
        entries = [e for e in entries if e["state"] == "READY"]
    return json_response(entries)


async def _change(request: Request, load: bool) -> Response:
    await require_admin(request)
    state = app_state(request)
    name, _ = name_version(request)
    await _body(request)
    reg = state.registry
    rec = await (reg.load(name) if load else reg.unload(name))
    if load and rec.route is None:
        return error(400, f"failed to load {name!r}: {rec.error or rec.status}")
    return json_response({})


@router.post("/models/{name}/load", summary="Load the model (its version policy afresh)",
             **documented(*ADMIN_ERRORS, path=("name",)))
@v2_errors
async def load(request: Request) -> Response:
    return await _change(request, load=True)


@router.post("/models/{name}/unload", summary="Drain and unload every version of the model",
             **documented(*ADMIN_ERRORS, path=("name",)))
@v2_errors
async def unload(request: Request) -> Response:
    return await _change(request, load=False)

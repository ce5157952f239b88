"""The repository API: GET /repository/index, POST /repository/models/{name}/load|unload.

Guarded by the admin keys (ORTSERVE_ADMIN_KEYS, `Authorization: Bearer`), which are
distinct from the predict keys; with no admin key configured every call is 403 and
changes nothing. Each change answers once it is done (or failed), with the model's state.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request

from app.api.edge.errors import error_response
from app.api.edge.state import AppState, get_state
from app.api.schemas import ErrorResponse, LoadRequest, ModelSummary, RepositoryIndex
from app.api.v1.models import ModelName
from app.errors import ServingError

router = APIRouter(prefix="/repository", tags=["repository"])


class AdminDenied(ServingError):
    code = "forbidden"


class AdminUnauthorized(ServingError):
    code = "unauthorized"


async def require_admin(request: Request) -> None:
    """401 without a key, 403 with a wrong one or when no admin key is configured."""
    state: AppState = request.app.state.ortserve
    keys = [k.encode() for k in state.settings.admin_keys if k]
    header = request.headers.get("authorization", "")
    if not header[:7].lower() == "bearer " or not header[7:].strip():
        raise AdminUnauthorized("missing admin key: send 'Authorization: Bearer <admin key>'")
    if not keys:
        raise AdminDenied("the repository API is off: no admin key is configured "
                          "(ORTSERVE_ADMIN_KEYS)")
    given = header[7:].strip().encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)  # no early exit: constant time
    if not found:
        raise AdminDenied("admin key not accepted")


Admin = Depends(require_admin)
RESPONSES = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 422)}


@router.get("/index", response_model=RepositoryIndex, dependencies=[Admin],
            responses=RESPONSES, summary="Every model and version on disk, and its state")
async def index(state: Annotated[AppState, Depends(get_state)]):
    return {"models": state.registry.index()}


async def _change(state: AppState, name: str, body: LoadRequest | None, load: bool):
    version = body.version if body else None
    reg = state.registry
    rec = await (reg.load(name, version) if load else reg.unload(name, version))
    summary = reg.summary(rec)
    if load and version is not None and rec.versions[version].state != "ready":
        return error_response("load_failed", f"model {name} version {version} did not "
                              f"load: {rec.versions[version].reason}", 422, summary)
    return summary


@router.post("/models/{name}/load", response_model=ModelSummary, dependencies=[Admin],
             responses=RESPONSES,
             summary="Load a version (requests without a version go to it until the next "
                     "load), or apply the model's version policy afresh")
async def load(name: ModelName, state: Annotated[AppState, Depends(get_state)],
               body: Annotated[LoadRequest | None, Body()] = None):
    return await _change(state, name, body, load=True)


@router.post("/models/{name}/unload", response_model=ModelSummary, dependencies=[Admin],
             responses=RESPONSES,
             summary="Drain and unload a version, or every version of the model")
async def unload(name: ModelName, state: Annotated[AppState, Depends(get_state)],
                 body: Annotated[LoadRequest | None, Body()] = None):
    return await _change(state, name, body, load=False)

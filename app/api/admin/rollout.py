"""The rollout API (admin keys, the repository API's errors), on
`/repository/models/{name}/rollout`: PUT starts or changes a rollout, GET reports it with
its live statistics and the gate's criteria, POST .../promote makes the candidate the
stable version, DELETE ends it (rollback). README "Rollouts"."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admin.schemas import PromoteRequest, RolloutState
from app.api.edge import body, params
from app.api.edge.auth import Access
from app.api.edge.errors import json_response
from app.api.edge.params import NAME_DOC
from app.api.edge.route import openapi, route_class
from app.api.edge.schemas import ErrorResponse, ModelSummary
from app.api.edge.state import app_state
from app.api.edge.views import model_summary
from app.contract.rollout import RolloutSpec
from app.observability.context import V1
from app.serving.views import RolloutView

router = APIRouter(prefix="/repository/models/{name}/rollout", tags=["rollouts"],
                   route_class=route_class(V1, Access.ADMIN))
ERRORS = (400, 401, 403, 404, 409, 413, 422, 429, 503)


def rollout_json(v: RolloutView) -> dict[str, Any]:
    out = asdict(v)
    if v.shadow is not None:
        out["shadow"]["confusion"] = [{"stable": s, "candidate": c, "count": n}
                                      for s, c, n in v.shadow.confusion]
    return out


def _name(request: Request) -> str:
    return params.model_name(request.path_params["name"])


@router.get("", response_model=RolloutState, summary="The model's rollout, its live "
                                                     "statistics and the gate's criteria",
            **openapi([NAME_DOC], statuses=ERRORS, error_model=ErrorResponse))
async def get_rollout(request: Request) -> Response:
    return json_response(rollout_json(app_state(request).dataplane.rollout(_name(request))))


@router.put("", response_model=RolloutState,
            summary="Start or change the rollout (the candidate is loaded and warmed first)",
            **openapi([NAME_DOC], RolloutSpec, ERRORS, ErrorResponse))
async def put_rollout(request: Request) -> Response:
    name, state = _name(request), app_state(request)
    spec = await body.read_json(request, state.settings.max_body_bytes, RolloutSpec)
    return json_response(rollout_json(await state.dataplane.start_rollout(name, spec)))


@router.post("/promote", response_model=ModelSummary,
             summary="Make the candidate the stable version (refused with the criteria "
                     "when the gate says no, unless force)",
             **openapi([NAME_DOC], PromoteRequest, ERRORS, ErrorResponse))
async def promote(request: Request) -> Response:
    name, state = _name(request), app_state(request)
    raw = await body.read_body(request, state.settings.max_body_bytes)
    force = body.parse(raw, PromoteRequest).force if raw.strip() else False
    return json_response(model_summary(await state.dataplane.promote(name, force)))


@router.delete("", response_model=ModelSummary,
               summary="End the rollout: every request to the stable version (rollback)",
               **openapi([NAME_DOC], statuses=ERRORS, error_model=ErrorResponse))
async def end_rollout(request: Request) -> Response:
    return json_response(model_summary(await app_state(request).dataplane.end_rollout(
        _name(request))))

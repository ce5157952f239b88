"""POST /explain, POST /models/{name}/explain, and the same under /v2/models/{name}
(`/v2/models/{name}/explain`, `/v2/models/{name}/versions/{version}/explain`): the Open
Inference Protocol defines no explain endpoint, so the v2 path takes this API's JSON body.
Parse, call the data plane, encode."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from app.api.edge.errors import CLIENT_CLOSED_STATUS
from app.api.edge.http import BodyLost, client_gone
from app.api.edge.responses import JSONResponse
from app.api.edge.route import LeanRoute
from app.api.edge.state import AppState
from app.api.schemas import ExplainRequest, ExplainResponse, ModelExplainRequest
from app.api.v1.predict import (
    ERRORS,
    _openapi,
    _parse,
    encode,
    log_model,
    path_name,
    request_deadline,
)
from app.explain.explainer import ExplainOptions

router = APIRouter(tags=["explain"], route_class=LeanRoute)


async def _serve(request: Request, body_type, name: str | None = None,
                 version: int | None = None) -> Response:
    t0 = time.perf_counter()
    try:
        body = await _parse(request, body_type)
    except BodyLost:
        return Response(status_code=CLIENT_CLOSED_STATUS)
    state: AppState = request.app.state.ortserve
    deadline = request_deadline(request, state)
    name = name or getattr(body, "model", None)
    version = version or body.version
    log_fields = log_model(request, name, version)
    options = ExplainOptions(body.target, body.max_evaluations, body.seed, body.method)
    model, explanations = await state.dataplane.explain(
        name, version, body.inputs, options, deadline, lambda: client_gone(request))
    log_fields["model"], log_fields["version"] = model.name, model.version
    for e in explanations:
        e["prediction"] = encode(model.labels, [e["prediction"]])[0]
    return JSONResponse({"model": model.name, "version": model.version,
                         "explanations": explanations,
                         "timing": {"total_ms": round((time.perf_counter() - t0) * 1000, 3)}})


@router.post("/explain", response_model=ExplainResponse, responses=ERRORS,
             summary="Explain the named (or default) model's answers: Shapley values per "
                     "word or feature", openapi_extra=_openapi(ExplainRequest))
async def explain(request: Request):
    return await _serve(request, ExplainRequest)


@router.post("/models/{name}/explain", response_model=ExplainResponse, responses=ERRORS,
             summary="Explain the answers of the model in the path",
             openapi_extra=_openapi(ModelExplainRequest, path_name=True))
async def explain_model(request: Request):
    return await _serve(request, ModelExplainRequest, path_name(request))


@router.post("/v2/models/{name}/explain", response_model=ExplainResponse, responses=ERRORS,
             summary="Explain, under the v2 prefix (this API's JSON body; the Open Inference "
                     "Protocol defines no explain endpoint)",
             openapi_extra=_openapi(ModelExplainRequest, path_name=True))
async def explain_v2(request: Request):
    return await _serve(request, ModelExplainRequest, path_name(request))


def _with_version(extra: dict) -> dict:
    extra["parameters"].insert(1, {"name": "version", "in": "path", "required": True,
                                   "description": "Model version.",
                                   "schema": {"type": "integer", "minimum": 1}})
    return extra


@router.post("/v2/models/{name}/versions/{version}/explain", response_model=ExplainResponse,
             responses=ERRORS, summary="Explain with one version, under the v2 prefix",
             openapi_extra=_with_version(_openapi(ModelExplainRequest, path_name=True)))
async def explain_v2_version(request: Request):
    raw = request.path_params["version"]
    if not raw.isdigit() or int(raw) < 1:
        raise RequestValidationError([{"type": "greater_than_equal", "loc": ("path", "version"),
                                       "msg": "must be an integer >= 1", "input": raw}])
    return await _serve(request, ModelExplainRequest, path_name(request), int(raw))

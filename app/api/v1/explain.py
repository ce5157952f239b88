"""POST /explain, POST /models/{name}/explain, and the same under /v2/models/{name}
(`/v2/models/{name}/explain`, `/v2/models/{name}/versions/{version}/explain`): the Open
Inference Protocol defines no explain endpoint, so the v2 paths take this API's JSON body
and answer in its shape. Parse, call the data plane, encode."""

from __future__ import annotations

import math
import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge import params
from app.api.edge.auth import Access
from app.api.edge.body import client_gone
from app.api.edge.errors import json_response
from app.api.edge.params import NAME_DOC, TIMEOUT_DOC, VERSION_DOC
from app.api.edge.route import caller_of, openapi, route_class
from app.api.edge.state import app_state
from app.api.v1 import codec
from app.api.v1.schemas import ExplainRequest, ExplainResponse, ModelExplainRequest
from app.explain.explainer import ExplainOptions
from app.observability.context import V1, name_model
from app.settings import Settings

router = APIRouter(tags=["explain"], route_class=route_class(V1, Access.PREDICT))


def _tokens(settings: Settings, body: ExplainRequest | ModelExplainRequest) -> int:
    """Rate-limit tokens an explanation costs beyond its own: one per
    ORTSERVE_EXPLAIN_EVALUATIONS_PER_TOKEN model evaluations it may spend."""
    per_input = min(body.max_evaluations or settings.explain_default_evaluations,
                    settings.explain_max_evaluations)
    inputs = min(len(body.inputs), settings.explain_max_inputs)
    return math.ceil(inputs * per_input / settings.explain_evaluations_per_token)


async def _explain(request: Request, body: ExplainRequest | ModelExplainRequest,
                   name: str | None, version: int | None, t0: float) -> Response:
    state = app_state(request)
    timeout = codec.deadline(request, state)
    version = version or body.version
    name_model(name, version)
    await state.gate.charge(caller_of(request), _tokens(state.settings, body))
    options = ExplainOptions(body.target, body.max_evaluations, body.seed, body.method)
    served, explanations = await state.dataplane.explain(
        name, version, body.inputs, options, timeout, lambda: client_gone(request))
    name_model(served.name, served.version)
    for e in explanations:
        e["prediction"] = codec.encode(served.labels, [e["prediction"]])[0]
    return json_response({"model": served.name, "version": served.version,
                          "explanations": explanations,
                          "timing": {"total_ms": round((time.perf_counter() - t0) * 1000, 3)}})


def _docs(*parameters: dict, body: type = ModelExplainRequest) -> dict:
    return openapi([*parameters, TIMEOUT_DOC], body, codec.ERRORS, codec.ERROR_MODEL)


@router.post("/explain", response_model=ExplainResponse,
             summary="Explain the named (or default) model's answers: Shapley values per "
                     "word or feature", **_docs(body=ExplainRequest))
async def explain(request: Request) -> Response:
    t0 = time.perf_counter()
    body = await codec.read(request, app_state(request), ExplainRequest)
    return await _explain(request, body, body.model, None, t0)


async def _explain_path(request: Request, with_version: bool) -> Response:
    t0 = time.perf_counter()
    name = codec.path_name(request)
    version = params.version(request.path_params["version"]) if with_version else None
    body = await codec.read(request, app_state(request), ModelExplainRequest)
    return await _explain(request, body, name, version, t0)


@router.post("/models/{name}/explain", response_model=ExplainResponse,
             summary="Explain the answers of the model in the path", **_docs(NAME_DOC))
async def explain_model(request: Request) -> Response:
    return await _explain_path(request, with_version=False)


@router.post("/v2/models/{name}/explain", response_model=ExplainResponse,
             summary="Explain, under the v2 prefix (this API's JSON body; the Open Inference "
                     "Protocol defines no explain endpoint)", **_docs(NAME_DOC))
async def explain_v2(request: Request) -> Response:
    return await _explain_path(request, with_version=False)


@router.post("/v2/models/{name}/versions/{version}/explain", response_model=ExplainResponse,
             summary="Explain with one version, under the v2 prefix",
             **_docs(NAME_DOC, VERSION_DOC))
async def explain_v2_version(request: Request) -> Response:
    return await _explain_path(request, with_version=True)

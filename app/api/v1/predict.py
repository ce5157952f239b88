"""POST /predict and POST /models/{name}/predict: parse, call the data plane, encode."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge.auth import Access
from app.api.edge.body import client_gone
from app.api.edge.errors import json_response
from app.api.edge.params import NAME_DOC, ROUTE_KEY_DOC, TIMEOUT_DOC
from app.api.edge.route import openapi, route_class
from app.api.edge.state import app_state
from app.api.v1 import codec
from app.api.v1.schemas import ModelPredictRequest, PredictRequest, PredictResponse
from app.observability.context import V1, name_model

router = APIRouter(tags=["predict"], route_class=route_class(V1, Access.PREDICT))


async def _predict(request: Request, name: str | None, version: int | None,
                   inputs: list[Any], t0: float) -> Response:
    state = app_state(request)
    timeout = codec.deadline(request, state)
    name_model(name, version)
    result = await state.dataplane.infer(name, version, inputs, timeout,
                                         lambda: client_gone(request), codec.route_key(request))
    name_model(result.model, result.version)
    return json_response({
        "model": result.model, "version": result.version,
        "predictions": codec.encode(result.labels, result.outputs),
        "timing": {"total_ms": round((time.perf_counter() - t0) * 1000, 3),
                   "queue_ms": round(result.queue_s * 1000, 3),
                   "inference_ms": round(result.inference_s * 1000, 3)}})


@router.post("/predict", response_model=PredictResponse,
             summary="Predict with the named (or default) model",
             **openapi([TIMEOUT_DOC, ROUTE_KEY_DOC], PredictRequest, codec.ERRORS,
                       codec.ERROR_MODEL))
async def predict(request: Request) -> Response:
    t0 = time.perf_counter()
    body = await codec.read(request, app_state(request), PredictRequest)
    return await _predict(request, body.model, body.version, body.inputs, t0)


@router.post("/models/{name}/predict", response_model=PredictResponse,
             summary="Predict with the model in the path",
             **openapi([NAME_DOC, TIMEOUT_DOC, ROUTE_KEY_DOC], ModelPredictRequest, codec.ERRORS,
                       codec.ERROR_MODEL))
async def predict_model(request: Request) -> Response:
    t0 = time.perf_counter()
    name = codec.path_name(request)
    body = await codec.read(request, app_state(request), ModelPredictRequest)
    return await _predict(request, name, body.version, body.inputs, t0)

"""POST /predict and POST /models/{name}/predict: parse, call the data plane, encode."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from app.api.edge.errors import CLIENT_CLOSED_STATUS
from app.api.edge.http import (
    MIN_TIMEOUT_S,
    TIMEOUT_HEADER,
    BadTimeout,
    BodyLost,
    client_gone,
    read_body,
    timeout_header,
)
from app.api.edge.responses import JSONResponse
from app.api.edge.route import LeanRoute
from app.api.edge.state import AppState
from app.api.schemas import ErrorResponse, ModelPredictRequest, PredictRequest, PredictResponse
from app.contract.manifest import NAME_PATTERN

BodyT = TypeVar("BodyT", bound=BaseModel)

router = APIRouter(tags=["predict"], route_class=LeanRoute)

ERRORS = {code: {"model": ErrorResponse}
          for code in (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)}
MAX_NAME_LENGTH = 128


def _openapi(body: type[BaseModel], path_name: bool = False) -> dict:
    """The request body, path parameter and timeout header, for the docs (see LeanRoute)."""
    params = [{"name": TIMEOUT_HEADER, "in": "header", "required": False,
               "schema": {"type": "number", "minimum": MIN_TIMEOUT_S},
               "description": f"Seconds (at least {MIN_TIMEOUT_S}) before this request "
                              "gives up with 504; the server setting caps it."}]
    if path_name:
        params.insert(0, {"name": "name", "in": "path", "required": True,
                          "description": "Model name.",
                          "schema": {"type": "string", "pattern": NAME_PATTERN.pattern,
                                     "maxLength": MAX_NAME_LENGTH}})
    return {
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": body.model_json_schema(ref_template="#/components/schemas/{model}")}}},
        "parameters": params,
    }


def _timeout(request: Request) -> float | None:
    try:
        return timeout_header(request)
    except BadTimeout as exc:
        raise RequestValidationError([{
            "type": "greater_than_equal", "loc": ("header", TIMEOUT_HEADER),
            "msg": f"must be a number of seconds >= {MIN_TIMEOUT_S}", "input": exc.raw}]
        ) from None


async def _parse(request: Request, body: type[BodyT]) -> BodyT:
    raw = await read_body(request)
    try:
        return body.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def request_deadline(request: Request, state: AppState) -> float:
    """Seconds this request may take: the server's setting, lowered by the timeout header."""
    timeout = _timeout(request)
    deadline = state.settings.request_timeout_s
    return deadline if timeout is None else min(deadline, timeout)


def log_model(request: Request, name: str | None, version: int | None) -> dict:
    """Names the model on the access log line (RequestContextMiddleware reads the scope's
    state); returns those fields, for the answering version to overwrite."""
    fields = request.scope.setdefault("state", {})
    fields["model"], fields["version"] = name, version
    return fields


def path_name(request: Request) -> str:
    """The model name in the path, validated as the OpenAPI schema declares it."""
    name = request.path_params["name"]
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise RequestValidationError([{
            "type": "string_pattern_mismatch", "loc": ("path", "name"), "input": name,
            "msg": f"must match {NAME_PATTERN.pattern} and be at most {MAX_NAME_LENGTH} "
                   "characters"}])
    return name


def encode(labels: list[str] | None, outputs: Sequence[np.ndarray]) -> list[dict]:
    """Output rows as `/predict` answers them: {label, score, scores} or {value}.
    Plain Python per row: numpy's per-call overhead dominates for a few numbers."""
    if labels is None:
        return [{"value": float(r.tolist()[0] if r.ndim else r)} for r in outputs]
    out = []
    for r in outputs:
        scores = r.tolist()
        best = max(range(len(scores)), key=scores.__getitem__)  # first maximum
        out.append({"label": labels[best], "score": scores[best],
                    "scores": dict(zip(labels, scores, strict=True))})
    return out


async def _predict(request: Request, name: str | None, version: int | None,
                   inputs: list) -> JSONResponse:
    t0 = time.perf_counter()
    state: AppState = request.app.state.ortserve
    deadline = request_deadline(request, state)
    log_fields = log_model(request, name, version)
    result = await state.dataplane.infer(name, version, inputs, deadline,
                                         lambda: client_gone(request))
    log_fields["model"], log_fields["version"] = result.model, result.version
    return JSONResponse({
        "model": result.model, "version": result.version,
        "predictions": encode(result.labels, result.outputs),
        "timing": {"total_ms": round((time.perf_counter() - t0) * 1000, 3),
                   "queue_ms": round(result.queue_s * 1000, 3),
                   "inference_ms": round(result.inference_s * 1000, 3)}})


async def _serve(request: Request, body_type: type[PredictRequest | ModelPredictRequest],
                 name: str | None = None) -> Response:
    """Both predict routes: read the body, then predict with the path's or the body's model."""
    try:
        body = await _parse(request, body_type)
    except BodyLost:
        return Response(status_code=CLIENT_CLOSED_STATUS)
    return await _predict(request, name or getattr(body, "model", None), body.version,
                          body.inputs)


@router.post("/predict", response_model=PredictResponse, responses=ERRORS,
             summary="Predict with the named (or default) model",
             openapi_extra=_openapi(PredictRequest))
async def predict(request: Request):
    return await _serve(request, PredictRequest)


@router.post("/models/{name}/predict", response_model=PredictResponse, responses=ERRORS,
             summary="Predict with the model in the path",
             openapi_extra=_openapi(ModelPredictRequest, path_name=True))
async def predict_model(request: Request):
    return await _serve(request, ModelPredictRequest, path_name(request))

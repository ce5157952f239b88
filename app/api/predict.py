"""POST /predict and POST /models/{name}/predict."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request

from app.api.schemas import ErrorResponse, ModelPredictRequest, PredictRequest, PredictResponse
from app.errors import ModelNotFound
from app.manifest import NAME_PATTERN
from app.responses import JSONResponse
from app.state import AppState, get_state

router = APIRouter(tags=["predict"])

ERRORS = {code: {"model": ErrorResponse}
          for code in (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)}
ModelName = Annotated[str, Path(pattern=NAME_PATTERN.pattern, max_length=128,
                                description="Model name.")]
TimeoutHeader = Annotated[float | None, Header(
    alias="X-Request-Timeout", ge=0.05,
    description="Seconds (at least 0.05) before this request gives up with 504; the "
                "server setting caps it.")]


async def _client_gone(request: Request) -> None:
    """Resolves when the client disconnects (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _predict(state: AppState, request: Request, name: str | None, version: int | None,
                   inputs: list, timeout: float | None) -> JSONResponse:
    t0 = time.perf_counter()
    svc = state.registry.get(name)
    request.state.model, request.state.version = svc.name, svc.version
    if version is not None and svc.version != version:
        raise ModelNotFound(f"model {svc.name} version {version} is not served (serving "
                            f"{svc.version})", {"field": "version"})
    deadline = state.settings.request_timeout_s
    if timeout is not None:
        deadline = min(deadline, timeout)
    result = await svc.predict(inputs, state.metrics, deadline,
                               lambda: _client_gone(request))
    return JSONResponse({
        "model": svc.name, "version": svc.version, "predictions": result.predictions,
        "timing": {"total_ms": round((time.perf_counter() - t0) * 1000, 3),
                   "queue_ms": round(result.queue_ms, 3),
                   "inference_ms": round(result.inference_ms, 3)}})


@router.post("/predict", response_model=PredictResponse, responses=ERRORS,
             summary="Predict with the named (or default) model")
async def predict(body: PredictRequest, request: Request,
                  state: Annotated[AppState, Depends(get_state)],
                  x_request_timeout: TimeoutHeader = None):
    return await _predict(state, request, body.model, body.version, body.inputs,
                          x_request_timeout)


@router.post("/models/{name}/predict", response_model=PredictResponse, responses=ERRORS,
             summary="Predict with the model in the path")
async def predict_model(name: ModelName, body: ModelPredictRequest, request: Request,
                        state: Annotated[AppState, Depends(get_state)],
                        x_request_timeout: TimeoutHeader = None):
    return await _predict(state, request, name, body.version, body.inputs, x_request_timeout)

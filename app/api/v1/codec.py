"""The service's own API (`/predict`, `/explain`, `/models/...`): reading a request's
model, version and deadline, and writing its answers. Shared by the v1 routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel
from starlette.requests import Request

from app.api.edge import body, params
from app.api.edge.schemas import ErrorResponse
from app.api.edge.state import AppState

BodyT = TypeVar("BodyT", bound=BaseModel)

ERRORS = (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)
ERROR_MODEL = ErrorResponse


async def read(request: Request, state: AppState, model: type[BodyT]) -> BodyT:
    return await body.read_json(request, state.settings.max_body_bytes, model)


def deadline(request: Request, state: AppState) -> float:
    """Seconds this request may take: the server's setting, lowered by the timeout header."""
    return params.deadline(state.settings.request_timeout_s, params.timeout(
        params.header(request.scope["headers"], params.TIMEOUT_KEY)))


def route_key(request: Request) -> str | None:
    return params.route_key(params.header(request.scope["headers"], params.ROUTE_KEY))


def path_name(request: Request) -> str:
    return params.model_name(request.path_params["name"])


def encode(labels: Sequence[str] | None, outputs: Sequence[np.ndarray]) -> list[dict[str, Any]]:
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

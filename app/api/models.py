"""GET /models and GET /models/{name}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.predict import ERRORS, MAX_NAME_LENGTH
from app.api.schemas import ModelDetail, ModelList
from app.manifest import NAME_PATTERN
from app.state import AppState, get_state

ModelName = Annotated[str, Path(pattern=NAME_PATTERN.pattern, max_length=MAX_NAME_LENGTH,
                                description="Model name.")]

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList,
            responses={c: ERRORS[c] for c in (401, 403, 429)},
            summary="Every configured model and its status")
async def list_models(state: Annotated[AppState, Depends(get_state)]):
    reg = state.registry
    return {"default_model": reg.default_model(),
            "models": [svc.describe() for svc in reg.models.values()]}


@router.get("/models/{name}", response_model=ModelDetail,
            responses={c: ERRORS[c] for c in (401, 403, 404, 422, 429)},
            summary="One model: manifest, test metrics, provider, status, batching")
async def get_model(name: ModelName, state: Annotated[AppState, Depends(get_state)]):
    return state.registry.get(name).describe(full=True)

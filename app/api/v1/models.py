"""GET /models, GET /models/{name} and GET /models/{name}/versions/{version}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.edge.state import AppState, get_state
from app.api.schemas import ModelDetail, ModelList
from app.api.v1.predict import ERRORS, MAX_NAME_LENGTH
from app.contract.manifest import NAME_PATTERN
from app.serving.model import LoadedModel

ModelName = Annotated[str, Path(pattern=NAME_PATTERN.pattern, max_length=MAX_NAME_LENGTH,
                                description="Model name.")]
Version = Annotated[int, Path(ge=1, description="Model version.")]

router = APIRouter(tags=["models"])


def _detail(model: LoadedModel | None) -> dict:
    if model is None:
        return {}
    m = model.manifest
    return {**model.describe(), "manifest": m.model_dump(mode="json"),
            "test_metrics": m.test_metrics, "labels": m.labels,
            "inputs": m.inputs.model_dump(mode="json", exclude_none=True)}


@router.get("/models", response_model=ModelList,
            responses={c: ERRORS[c] for c in (401, 403, 429)},
            summary="Every configured model, its status and versions")
async def list_models(state: Annotated[AppState, Depends(get_state)]):
    reg = state.registry
    return {"default_model": reg.default_model(),
            "models": [reg.summary(rec) for rec in reg.records.values()]}


@router.get("/models/{name}", response_model=ModelDetail,
            responses={c: ERRORS[c] for c in (401, 403, 404, 422, 429)},
            summary="One model: the version requests without one go to (manifest, test "
                    "metrics, provider, batching), and the state of every version")
async def get_model(name: ModelName, state: Annotated[AppState, Depends(get_state)]):
    rec = state.registry.record(name)
    return {**state.registry.summary(rec), **_detail(rec.route)}


@router.get("/models/{name}/versions/{version}", response_model=ModelDetail,
            responses={c: ERRORS[c] for c in (401, 403, 404, 422, 429, 503)},
            summary="One served version of a model")
async def get_version(name: ModelName, version: Version,
                      state: Annotated[AppState, Depends(get_state)]):
    reg = state.registry
    model = state.dataplane.model(name, version)
    return {**reg.summary(reg.record(name)), **_detail(model), "status": "ready"}

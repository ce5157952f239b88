"""GET /models, GET /models/{name} and GET /models/{name}/versions/{version}: the typed
views of the data plane, in this API's JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge import params
from app.api.edge.auth import Access
from app.api.edge.errors import json_response
from app.api.edge.params import NAME_DOC, VERSION_DOC
from app.api.edge.route import openapi, route_class
from app.api.edge.state import app_state
from app.api.edge.views import model_summary, served_facts
from app.api.v1 import codec
from app.api.v1.schemas import ModelDetail, ModelList
from app.observability.context import V1
from app.serving.views import READY, ServedVersion

router = APIRouter(tags=["models"], route_class=route_class(V1, Access.PREDICT))


def _detail(v: ServedVersion) -> dict[str, Any]:
    m = v.manifest
    return {**served_facts(v), "manifest": m.model_dump(mode="json"),
            "test_metrics": dict(v.test_metrics or m.test_metrics), "labels": m.labels,
            "inputs": m.inputs.model_dump(mode="json", exclude_none=True)}


@router.get("/models", response_model=ModelList,
            summary="Every configured model, its status and versions",
            **openapi(statuses=(401, 403, 429), error_model=codec.ERROR_MODEL))
async def list_models(request: Request) -> Response:
    dataplane = app_state(request).dataplane
    return json_response({"default_model": dataplane.default_model(),
                          "models": [model_summary(m) for m in dataplane.models()]})


@router.get("/models/{name}", response_model=ModelDetail,
            summary="One model: the version requests without one go to (manifest, test "
                    "metrics, provider, batching), and the state of every version",
            **openapi([NAME_DOC], statuses=(401, 403, 404, 422, 429),
                      error_model=codec.ERROR_MODEL))
async def get_model(request: Request) -> Response:
    view = app_state(request).dataplane.model(codec.path_name(request))
    detail = _detail(view.routed) if view.routed is not None else {}
    return json_response({**model_summary(view), **detail})


@router.get("/models/{name}/versions/{version}", response_model=ModelDetail,
            summary="One served version of a model",
            **openapi([NAME_DOC, VERSION_DOC], statuses=(401, 403, 404, 422, 429, 503),
                      error_model=codec.ERROR_MODEL))
async def get_version(request: Request) -> Response:
    name = codec.path_name(request)
    version = params.version(request.path_params["version"])
    dataplane = app_state(request).dataplane
    served = dataplane.served(name, version)
    return json_response({**model_summary(dataplane.model(name)), **_detail(served),
                          "status": READY})

"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's binary tensor data
extension: parse -> data plane -> encode; errors as the spec's `{"error": "message"}`.

Binary data: a request whose `Inference-Header-Content-Length` header is N carries its
JSON in the first N bytes of the body and, after it, the raw data of every input that
has a `binary_data_size` parameter, in input order (the request's Content-Type is not
relied on). Outputs are returned raw when the request's `binary_data_output` parameter
or an output's `binary_data` parameter asks for it; the response then has the same
header and each such output a `binary_data_size` parameter.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge import body as edge_body
from app.api.edge import params
from app.api.edge.auth import Access
from app.api.edge.errors import JSON, json_response
from app.api.edge.params import NAME_DOC, ROUTE_KEY_DOC, TIMEOUT_DOC, VERSION_DOC
from app.api.edge.readiness import model_ready, readiness
from app.api.edge.route import openapi, route_class
from app.api.edge.state import app_state
from app.api.v2 import schemas
from app.api.v2.metadata import model_metadata, server_metadata
from app.api.v2.tensors import Tensor, from_json, from_raw, json_data, outputs, raw, to_inputs
from app.errors import InvalidInput
from app.observability.context import V2, name_model

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"],
                   route_class=route_class(V2, Access.PREDICT))
health = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"],
                   route_class=route_class(V2, Access.PUBLIC))

HEADER_LENGTH = b"inference-header-content-length"
MODEL_ERRORS = (400, 401, 403, 404, 429, 503)
INFER_ERRORS = (400, 401, 403, 404, 413, 429, 503, 504)
MIN_TIMEOUT_US, MAX_TIMEOUT_US = round(params.MIN_TIMEOUT_S * 1e6), 10 ** 12


def documented(*statuses: int, path: tuple[dict[str, Any], ...] = (),
               body: type | None = None) -> dict[str, Any]:
    return openapi(path, body, statuses, schemas.ErrorResponse)


def name_version(request: Request) -> tuple[str, int | None]:
    return (params.model_name(request.path_params["name"]),
            params.version(request.path_params.get("version")))


# -- server --------------------------------------------------------------------------------
@router.get("", response_model=schemas.ServerMetadata, summary="Server metadata",
            **documented(401, 403, 429))
async def get_server_metadata(request: Request) -> Response:
    return json_response(server_metadata())


@health.get("/health/live", summary="200 while the process runs")
async def server_live(request: Request) -> Response:
    return json_response({"live": True})


@health.get("/health/ready", summary="200 when every model can serve (as /health/ready)",
            responses={503: {"description": "not ready"}})
async def server_ready(request: Request) -> Response:
    ready = readiness(app_state(request)).ready
    return json_response({"ready": ready}, 200 if ready else 503)


# -- models --------------------------------------------------------------------------------
META: dict[str, Any] = {"response_model": schemas.ModelMetadata, "summary": "Model metadata"}


@router.get("/models/{name}", **META, **documented(*MODEL_ERRORS, path=(NAME_DOC,)))
@router.get("/models/{name}/versions/{version}", **META,
            **documented(*MODEL_ERRORS, path=(NAME_DOC, VERSION_DOC)))
async def get_model_metadata(request: Request) -> Response:
    return json_response(model_metadata(app_state(request).dataplane, *name_version(request)))


@router.get("/models/{name}/ready", summary="200 when the model (version) can serve",
            **documented(*MODEL_ERRORS, path=(NAME_DOC,)))
@router.get("/models/{name}/versions/{version}/ready",
            summary="200 when the model (version) can serve",
            **documented(*MODEL_ERRORS, path=(NAME_DOC, VERSION_DOC)))
async def get_model_ready(request: Request) -> Response:
    name, version = name_version(request)
    model_ready(app_state(request), name, version)  # raises when not ready
    return json_response({"name": name, "ready": True})


def parse_request(body: bytes, header_length: bytes | None, max_bytes: int | None = None
                  ) -> tuple[schemas.InferenceRequest, list[Tensor]]:
    """The JSON part and every input tensor (JSON data or binary data); `max_bytes`: the
    most BYTES elements (texts) a request may carry."""
    if header_length is None:
        head, rest = body, memoryview(b"")
    else:
        if len(header_length) > 19 or not header_length.isdigit() or \
                int(header_length) > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_length[:20]!r} is "
                               f"not a length within the body's {len(body)} bytes")
        n = int(header_length)
        head, rest = body[:n], memoryview(body)[n:]
    req = edge_body.parse(head, schemas.InferenceRequest)
    tensors, pos = [], 0
    for t in req.inputs:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            if t.data is None:
                raise InvalidInput(f"input {t.name!r} has neither data nor binary_data_size")
            tensors.append(from_json(t.name, t.datatype, t.shape, t.data, max_bytes))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
                pos + size > len(rest):
            raise InvalidInput(f"input {t.name!r}: binary_data_size {size!r} does not fit the "
                               f"{len(rest) - pos} bytes of binary data left")
        tensors.append(from_raw(t.name, t.datatype, t.shape, rest[pos:pos + size], max_bytes))
        pos += size
    if pos != len(rest):
        raise InvalidInput(f"{len(rest) - pos} bytes of binary data belong to no input")
    return req, tensors


def _binary_wanted(req: schemas.InferenceRequest) -> tuple[list[str] | None, dict[str, bool]]:
    everything = bool((req.parameters or {}).get("binary_data_output", False))
    if req.outputs is None:
        return None, {}
    return ([o.name for o in req.outputs],
            {o.name: bool((o.parameters or {}).get("binary_data", everything))
             for o in req.outputs})


def _timeout_param(req: schemas.InferenceRequest) -> float | None:
    """Triton's `timeout` request parameter: microseconds, at least the timeout header's
    minimum (a deadline no request can meet is a bad request, not a 503). A JSON integer
    has no size: one of 400 digits once made a 500, too large to divide as a float."""
    value = (req.parameters or {}).get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_TIMEOUT_US:
        raise InvalidInput(f"parameter timeout {str(value)[:40]} must be an integer number "
                           f"of microseconds >= {MIN_TIMEOUT_US}")
    # the server's own timeout caps any deadline, so a larger value is the same as this
    return min(value, MAX_TIMEOUT_US) / 1e6


@router.post("/models/{name}/infer", response_model=schemas.InferenceResponse,
             summary="Inference",
             **documented(*INFER_ERRORS, path=(NAME_DOC, TIMEOUT_DOC, ROUTE_KEY_DOC),
                          body=schemas.InferenceRequest))
@router.post("/models/{name}/versions/{version}/infer",
             response_model=schemas.InferenceResponse, summary="Inference (one version)",
             **documented(*INFER_ERRORS, path=(NAME_DOC, VERSION_DOC, TIMEOUT_DOC, ROUTE_KEY_DOC),
                          body=schemas.InferenceRequest))
async def infer(request: Request) -> Response:
    state = app_state(request)
    name, version = name_version(request)
    name_model(name, version)
    headers = request.scope["headers"]
    timeout = params.timeout(params.header(headers, params.TIMEOUT_KEY))
    raw_body = await edge_body.read_body(request, state.settings.max_body_bytes)
    req, tensors = await edge_body.sized_work(len(raw_body), parse_request, raw_body,
                                              params.header(headers, HEADER_LENGTH),
                                              state.settings.max_inputs)
    deadline = params.deadline(state.settings.request_timeout_s, timeout, _timeout_param(req))
    requested, binary = _binary_wanted(req)
    key = (req.parameters or {}).get("route_key")
    route_key = params.route_key(key, "parameters.route_key") if key is not None else \
        params.route_key(params.header(headers, params.ROUTE_KEY))
    result = await state.dataplane.infer(name, version,
                                         lambda model: to_inputs(model, tensors), deadline,
                                         lambda: edge_body.client_gone(request), route_key)
    name_model(result.model, result.version)
    all_binary = bool((req.parameters or {}).get("binary_data_output", False))
    out_json, blobs = [], []
    for t in outputs(result, requested):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary.get(t.name, all_binary):
            blob = raw(t)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(t)
        out_json.append(entry)
    response: dict[str, Any] = {"model_name": result.model,
                                "model_version": str(result.version), "outputs": out_json}
    if req.id is not None:
        response["id"] = req.id
    head = orjson.dumps(response)
    if not blobs:
        return Response(head, media_type=JSON)
    return Response(b"".join([head, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})

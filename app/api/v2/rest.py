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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from app import __version__
from app.api.edge.errors import STATUS, retry_after, status_of
from app.api.edge.http import BadTimeout, BodyLost, client_gone, header, read_body, timeout_header
from app.api.edge.route import LeanRoute
from app.api.edge.state import AppState
from app.api.v2 import schemas
from app.api.v2.tensors import (
    PLATFORM,
    Tensor,
    from_json,
    from_raw,
    json_data,
    outputs,
    raw,
    signature,
    to_inputs,
)
from app.contract.manifest import NAME_PATTERN
from app.errors import InvalidInput, ModelNotFound, ServingError

log = logging.getLogger("ortserve.v2")
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=LeanRoute)

EXTENSIONS = ["binary_tensor_data", "model_repository"]
HEADER_LENGTH = b"inference-header-content-length"
JSON = "application/json"
# v2 answers bad input with 400 (the spec's "bad request"), not the v1 API's 422
V2_STATUS = {**STATUS, InvalidInput: 400}


def error(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status, headers, media_type=JSON)


def v2_errors(handler: Callable[[Request], Awaitable[Response]]):
    """Every v2 error leaves in the spec's shape, with the status the v1 API would give
    (bad input: 400)."""
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ServingError as exc:
            return error(status_of(exc, V2_STATUS), exc.message, retry_after(exc))
        except BadTimeout as exc:
            return error(400, str(exc))
        except BodyLost:
            return Response(status_code=499)
        except Exception:
            request_id = request.scope.get("state", {}).get("request_id")
            log.exception("unexpected error in %s", request.url.path,
                          extra={"request_id": request_id})
            return error(500, f"internal server error (request id {request_id})")
    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def documented(*statuses: int, path: tuple[str, ...] = (), body: type | None = None) -> dict:
    """OpenAPI for a lean v2 route: its error statuses, path parameters and body (the
    endpoint reads them itself, see LeanRoute)."""
    params = [{"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": NAME_PATTERN.pattern,
                          "maxLength": 128}}] if "name" in path else []
    if "version" in path:
        params.append({"name": "version", "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"}})
    extra: dict[str, Any] = {"parameters": params} if params else {}
    if body is not None:
        extra["requestBody"] = {"required": True, "content": {JSON: {
            "schema": body.model_json_schema(ref_template="#/components/schemas/{model}")}}}
    return {"responses": {c: {"model": schemas.ErrorResponse} for c in statuses},
            "openapi_extra": extra}


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=JSON)


def name_version(request: Request) -> tuple[str, int | None]:
    name = request.path_params["name"]
    if not NAME_PATTERN.fullmatch(name) or len(name) > 128:
        raise ModelNotFound(f"unknown model {name!r}")
    raw_version = request.path_params.get("version")
    if raw_version is None or raw_version == "":
        return name, None
    if not raw_version.isdigit() or int(raw_version) < 1:
        raise InvalidInput(f"model version {raw_version!r} must be a positive integer")
    return name, int(raw_version)


def app_state(request: Request) -> AppState:
    return request.app.state.ortserve


def model_metadata(state: AppState, name: str, version: int | None) -> dict:
    model = state.dataplane.model(name, version)
    inputs, outs = signature(model)
    served = list(state.registry.record(name).ready())
    return {"name": model.name, "versions": [str(v) for v in served], "platform": PLATFORM,
            "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outs]}


# -- server --------------------------------------------------------------------------------
@router.get("", response_model=schemas.ServerMetadata, summary="Server metadata",
            **documented(401, 403, 429))
@v2_errors
async def server_metadata(request: Request) -> Response:
    return json_response({"name": "ortserve", "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", summary="200 while the process runs")
@v2_errors
async def server_live(request: Request) -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="200 when every model can serve (as /health/ready)",
            responses={503: {"description": "not ready"}})
@v2_errors
async def server_ready(request: Request) -> Response:
    state = app_state(request)
    ready = state.started and not state.draining and not state.registry.not_ready()
    return json_response({"ready": ready}, 200 if ready else 503)


# -- models --------------------------------------------------------------------------------
META = {"response_model": schemas.ModelMetadata, "summary": "Model metadata"}


@router.get("/models/{name}", **META, **documented(400, 401, 403, 404, 429, 503,
                                                    path=("name",)))
@router.get("/models/{name}/versions/{version}", **META,
            **documented(400, 401, 403, 404, 429, 503, path=("name", "version")))
@v2_errors
async def get_model_metadata(request: Request) -> Response:
    return json_response(model_metadata(app_state(request), *name_version(request)))


@router.get("/models/{name}/ready", summary="200 when the model (version) can serve",
            **documented(400, 401, 403, 404, 429, 503, path=("name",)))
@router.get("/models/{name}/versions/{version}/ready",
            summary="200 when the model (version) can serve",
            **documented(400, 401, 403, 404, 429, 503, path=("name", "version")))
@v2_errors
async def model_ready(request: Request) -> Response:
    name, version = name_version(request)
    app_state(request).dataplane.model(name, version)  # raises when not ready
    return json_response({"name": name, "ready": True})


def _parse_request(body: bytes, header_length: str | None) -> tuple[schemas.InferenceRequest,
                                                                     list[Tensor]]:
    """The JSON part and every input tensor (JSON data or binary data)."""
    if header_length is None:
        head, rest = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a "
                               f"length within the body's {len(body)} bytes")
        n = int(header_length)
        head, rest = body[:n], memoryview(body)[n:]
    try:
        req = schemas.InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"request JSON invalid at {where}: {first['msg']}") from None
    tensors, pos = [], 0
    for t in req.inputs:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            if t.data is None:
                raise InvalidInput(f"input {t.name!r} has neither data nor binary_data_size")
            tensors.append(from_json(t.name, t.datatype, t.shape, t.data))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
                pos + size > len(rest):
            raise InvalidInput(f"input {t.name!r}: binary_data_size {size!r} does not fit the "
                               f"{len(rest) - pos} bytes of binary data left")
        tensors.append(from_raw(t.name, t.datatype, t.shape, rest[pos:pos + size]))
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


INFER_ERRORS = (400, 401, 403, 404, 413, 429, 503, 504)


@router.post("/models/{name}/infer", response_model=schemas.InferenceResponse,
             summary="Inference", **documented(*INFER_ERRORS, path=("name",),
                                               body=schemas.InferenceRequest))
@router.post("/models/{name}/versions/{version}/infer",
             response_model=schemas.InferenceResponse, summary="Inference (one version)",
             **documented(*INFER_ERRORS, path=("name", "version"),
                          body=schemas.InferenceRequest))
@v2_errors
async def infer(request: Request) -> Response:
    state = app_state(request)
    name, version = name_version(request)
    log_fields = request.scope.setdefault("state", {})
    log_fields["model"], log_fields["version"] = name, version
    body = await read_body(request)
    req, tensors = _parse_request(body, header(request, HEADER_LENGTH))
    deadline = state.settings.request_timeout_s
    for limit in (timeout_header(request), _timeout_param(req)):
        if limit is not None:
            deadline = min(deadline, limit)
    requested, binary = _binary_wanted(req)
    result = await state.dataplane.infer(name, version,
                                         lambda model: to_inputs(model, tensors), deadline,
                                         lambda: client_gone(request), api="v2")
    log_fields["version"] = result.version
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


def _timeout_param(req: schemas.InferenceRequest) -> float | None:
    """Triton's `timeout` request parameter, in microseconds."""
    value = (req.parameters or {}).get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidInput(f"parameter timeout {value!r} must be a positive number of "
                           "microseconds")
    return value / 1e6


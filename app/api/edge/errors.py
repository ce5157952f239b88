"""Errors to each protocol: the one module where an error becomes a status.

Every error a request can meet is a `ServingError` with a stable code: the serving core's
(`app/errors.py`) and the edge's own (below: keys, limits, body, shutdown). The three
tables side by side say what each protocol answers for each class (the nearest class in
the error's MRO wins); each protocol's error body is built here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.errors import (
    ChangeRefused,
    ClientCancelled,
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    LoadFailed,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ServingError,
    error_body,
    mapped,
)

log = logging.getLogger("ortserve.errors")


class InvalidRequest(InvalidInput):
    """The request itself is malformed (its body's schema, a header, a path parameter), as
    opposed to inputs the model cannot take. `details` lists {field, message}."""

    code = "invalid_request"

    def __init__(self, field: str, message: str, details: Any = None) -> None:
        super().__init__(f"{field}: {message}",
                         details if details is not None else [{"field": field,
                                                               "message": message}])
        self.field = field


class MalformedBody(InvalidInput):
    code = "malformed_json"


class Unauthenticated(ServingError):
    code = "unauthorized"


class PermissionDenied(ServingError):
    code = "forbidden"


class RateLimited(ServingError):
    code = "rate_limited"


class RateLimiterDown(ServingError):
    code = "rate_limiter_unavailable"


class PayloadTooLarge(ServingError):
    code = "payload_too_large"


class ShuttingDown(ServingError):
    code = "shutting_down"


class InternalError(ServingError):
    """An unexpected exception: a bug, answered in the protocol's shape and logged with the
    request id."""

    code = "internal_error"


# Logged for a request whose client left before it was answered; nobody receives it.
CLIENT_CLOSED_STATUS = 499

# `/predict`, `/explain`, `/models` and the repository API
V1_STATUS: dict[type[ServingError], int] = {
    InvalidInput: 422,
    MalformedBody: 400,
    ModelNotFound: 404,
    ModelNotReady: 503,
    QueueFull: 503,
    DeadlineExceeded: 504,
    ClientCancelled: CLIENT_CLOSED_STATUS,
    ChangeRefused: 409,
    LoadFailed: 422,
    InferenceFailed: 500,
    Unauthenticated: 401,
    PermissionDenied: 403,
    RateLimited: 429,
    RateLimiterDown: 503,
    PayloadTooLarge: 413,
    ShuttingDown: 503,
    InternalError: 500,
}
# The Open Inference Protocol over HTTP: bad input is the spec's "bad request"
V2_STATUS: dict[type[ServingError], int] = {**V1_STATUS, InvalidInput: 400, LoadFailed: 400}
# The Open Inference Protocol over gRPC: `grpc.StatusCode` member names
GRPC_STATUS: dict[type[ServingError], str] = {
    InvalidInput: "INVALID_ARGUMENT",
    ModelNotFound: "NOT_FOUND",
    ModelNotReady: "UNAVAILABLE",
    QueueFull: "UNAVAILABLE",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    ClientCancelled: "CANCELLED",
    ChangeRefused: "FAILED_PRECONDITION",
    LoadFailed: "INTERNAL",
    InferenceFailed: "INTERNAL",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    RateLimited: "RESOURCE_EXHAUSTED",
    RateLimiterDown: "UNAVAILABLE",
    PayloadTooLarge: "RESOURCE_EXHAUSTED",
    ShuttingDown: "UNAVAILABLE",
    InternalError: "INTERNAL",
}


def v1_status(exc: ServingError) -> int:
    return mapped(exc, V1_STATUS, 500)


def v2_status(exc: ServingError) -> int:
    return mapped(exc, V2_STATUS, 500)


def grpc_status(exc: ServingError) -> str:
    return mapped(exc, GRPC_STATUS, "INTERNAL")


def error_headers(exc: ServingError) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1) for an error that has one; the auth scheme
    for a missing key."""
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


JSON = "application/json"
V2_PREFIX = "/v2"


def json_response(content: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type=JSON)


def v1_error(exc: ServingError) -> Response:
    """The service's own error shape: `{"error": {code, message, details}}`."""
    return json_response(error_body(exc.code, exc.message, exc.details), v1_status(exc),
                         error_headers(exc))


def v2_error(exc: ServingError) -> Response:
    """The Open Inference Protocol's error shape: `{"error": "message"}`."""
    return json_response({"error": exc.message}, v2_status(exc), error_headers(exc))


def install_fallback_handlers(app: FastAPI) -> None:
    """Errors raised outside the edge's routes (no route matched, a wrong method, an
    exception in middleware) leave in the service's own shape too."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if request.url.path == V2_PREFIX or request.url.path.startswith(V2_PREFIX + "/"):
            # no route of the Open Inference Protocol matched: still its error shape
            return json_response({"error": str(exc.detail)}, exc.status_code, headers)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_response(error_body(code, str(exc.detail)), exc.status_code, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette's outermost middleware calls this for anything unhandled (and then
        # re-raises it for the server's log); the client gets the one error shape.
        rid = request.scope.get("state", {}).get("request_id")
        log.error("unexpected error in %s %s: %s: %s", request.method, request.url.path,
                  type(exc).__name__, exc, exc_info=exc, extra={"request_id": rid})
        return json_response(error_body("internal_error", "internal server error",
                                        {"request_id": rid}), 500)

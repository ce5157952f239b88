"""Errors to HTTP: the only place where a domain error becomes a status code.

Every error, expected or not, leaves in one shape: `{"error": {"code", "message",
"details"}}` (the v1 API's; other protocols map the same errors to their own shapes).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.edge.responses import JSONResponse
from app.errors import (
    ChangeRefused,
    ClientCancelled,
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ServingError,
    error_body,
    mapped,
)

log = logging.getLogger("ortserve.errors")

# Logged for a request whose client left before it was answered; nobody receives it.
CLIENT_CLOSED_STATUS = 499

STATUS: dict[type[ServingError], int] = {
    InvalidInput: 422,
    ModelNotFound: 404,
    ModelNotReady: 503,
    QueueFull: 503,
    DeadlineExceeded: 504,
    ClientCancelled: CLIENT_CLOSED_STATUS,
    ChangeRefused: 409,
    InferenceFailed: 500,
}


# errors of the HTTP layer itself, by code
STATUS_BY_CODE = {"unauthorized": 401, "forbidden": 403}


def status_of(exc: ServingError, table: dict[type[ServingError], int] = STATUS) -> int:
    return mapped(exc, table, STATUS_BY_CODE.get(exc.code, 500))


def error_response(code: str, message: str, status: int, details: Any = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status,
                        headers=headers)


def retry_after(exc: ServingError) -> dict[str, str] | None:
    """The Retry-After header (whole seconds, at least 1) of an error that has one."""
    if exc.retry_after_s is None:
        return None
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}


def serving_error_response(exc: ServingError) -> JSONResponse:
    headers = retry_after(exc)
    if exc.code == "unauthorized":
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.code, exc.message, status_of(exc), exc.details, headers)


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def _serving(_: Request, exc: ServingError):
        return serving_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        details = [{"field": _loc(tuple(e.get("loc", ()))), "message": e.get("msg", "")}
                   for e in errors]
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response("malformed_json", "request body is not valid JSON", 400,
                                  details)
        first = details[0] if details else {"field": "body", "message": "invalid"}
        return error_response("invalid_request", f"{first['field']}: {first['message']}",
                              422, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(code, str(exc.detail), exc.status_code,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Starlette's outermost middleware calls this for anything unhandled (and then
        # re-raises it for the server's log); the client gets the one error shape.
        request_id = request.scope.get("state", {}).get("request_id")
        log.error("unexpected error in %s %s: %s: %s", request.method, request.url.path,
                  type(exc).__name__, exc, exc_info=exc, extra={"request_id": request_id})
        return error_response("internal_error", "internal server error", 500,
                              {"request_id": request_id})

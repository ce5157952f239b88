"""Error types and their JSON/HTTP mapping: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.responses import JSONResponse


class ServingError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: Any = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers


class InvalidInput(ServingError):
    status, code = 422, "invalid_input"


class ModelNotFound(ServingError):
    status, code = 404, "model_not_found"


class ModelNotReady(ServingError):
    status, code = 503, "model_not_ready"


class QueueFull(ServingError):
    status, code = 503, "queue_full"


class DeadlineExceeded(ServingError):
    status, code = 504, "deadline_exceeded"


class InferenceFailed(ServingError):
    status, code = 500, "inference_failed"


def error_body(code: str, message: str, details: Any = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(code: str, message: str, status: int, details: Any = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status,
                          headers=headers)


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def _serving(_: Request, exc: ServingError):
        return error_response(exc.code, exc.message, exc.status, exc.details, exc.headers)

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

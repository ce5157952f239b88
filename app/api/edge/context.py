"""ASGI middleware that opens the request context: keeps (or makes) `X-Request-ID`,
returns it, and logs one line per request with the model and version that answered."""

from __future__ import annotations

import logging
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.context import RequestContext, request_context

access_log = logging.getLogger("ortserve.access")
REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID = 128


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        request_id = None
        for k, v in scope["headers"]:
            if k == REQUEST_ID:
                request_id = v.decode("latin-1")[:MAX_REQUEST_ID]
                break
        request_id = request_id or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        rid_header = (REQUEST_ID, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        with request_context(request_id) as ctx:
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                _log(scope, ctx, status, t0)


def _log(scope: Scope, ctx: RequestContext, status: int, t0: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info("%s %s %s", scope["method"], scope["path"], status, extra={
        "request_id": ctx.request_id, "method": scope["method"], "path": scope["path"],
        "status": status, "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
        "model": ctx.model, "version": ctx.version, "key_id": ctx.key_id})

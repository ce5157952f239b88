"""Pure ASGI middleware: request ids, access logs, and the request body size limit."""

from __future__ import annotations

import logging
import os
import time

from app.api.edge.http import send_error

access_log = logging.getLogger("ortserve.access")


class RequestContextMiddleware:
    """Keeps (or makes) `X-Request-ID`, returns it, and logs one line per request.

    Bodies larger than `max_body_bytes` are refused with 413 before they are read in full.
    """

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        request_id = None
        length = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                request_id = v.decode("latin-1")[:128]
            elif k == b"content-length":
                length = v
        request_id = request_id or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        rid_header = (b"x-request-id", request_id.encode("latin-1"))
        refused = False

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        async def send_wrapper(message):
            if not refused:  # after a 413 of ours, the app's late reply is dropped
                await send_with_id(message)

        limit = self.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(send_wrapper, scope["path"], limit)
            self._log(scope, request_id, 413, t0)
            return
        received = 0

        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now and tell the app the client is gone, so it stops reading.
                    refused = True
                    await self._too_large(send_with_id, scope["path"], limit)
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, limited_receive, send_wrapper)
        finally:
            self._log(scope, request_id, status["code"], t0)

    @staticmethod
    async def _too_large(send, path: str, limit: int) -> None:
        await send_error(send, path, 413, "payload_too_large",
                         f"request body exceeds {limit} bytes", {"limit": limit})

    @staticmethod
    def _log(scope, request_id: str, status: int, t0: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        st = scope.get("state", {})
        access_log.info("%s %s %s", scope["method"], scope["path"], status, extra={
            "request_id": request_id, "method": scope["method"], "path": scope["path"],
            "status": status, "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
            "model": st.get("model"), "version": st.get("version")})


"""HTTP request helpers every HTTP API shares: the body straight from ASGI, the client
going away, and the `X-Request-Timeout` header."""

from __future__ import annotations

import orjson
from starlette.requests import Request

from app.errors import error_body

TIMEOUT_HEADER = "X-Request-Timeout"
TIMEOUT_KEY = TIMEOUT_HEADER.lower().encode("latin-1")
MIN_TIMEOUT_S = 0.05


class BodyLost(Exception):
    """The client went away (or was refused) before the body was read."""


class BadTimeout(ValueError):
    """`X-Request-Timeout` is not a number of seconds >= MIN_TIMEOUT_S."""

    def __init__(self, raw: str) -> None:
        super().__init__(f"{TIMEOUT_HEADER}: must be a number of seconds >= {MIN_TIMEOUT_S}")
        self.raw = raw


def header(request: Request, key: bytes) -> str | None:
    for k, value in request.scope["headers"]:  # ASGI header names are lower-case bytes
        if k == key:
            return value.decode("latin-1")
    return None


def timeout_header(request: Request) -> float | None:
    raw = header(request, TIMEOUT_KEY)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not MIN_TIMEOUT_S <= value < float("inf"):
        raise BadTimeout(raw)
    return value


async def read_body(request: Request) -> bytes:
    """The whole body, straight from the ASGI messages (Starlette's `Request.body()` goes
    through an async generator, a tenth of a small model's request time)."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise BodyLost
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def client_gone(request: Request) -> None:
    """Resolves when the client disconnects (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


V2_PREFIX = "/v2"


def error_json(path: str, code: str, message: str, details=None) -> bytes:
    """An error body in the shape of the API `path` belongs to: the Open Inference
    Protocol's `{"error": "message"}` under /v2, `{"error": {code, message, details}}`
    elsewhere."""
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return orjson.dumps({"error": message})
    return orjson.dumps(error_body(code, message, details))


async def send_error(send, path: str, status: int, code: str, message: str, details=None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answered straight from ASGI middleware (auth, body limit, drain)."""
    body = error_json(path, code, message, details)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})

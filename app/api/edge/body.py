"""Request bodies: read straight from ASGI within the size limit, parsed into a pydantic
model in one step, and the client going away."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from app.api.edge.errors import InvalidRequest, MalformedBody, PayloadTooLarge

BodyT = TypeVar("BodyT", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")
CONTENT_LENGTH = b"content-length"
# Work proportional to a body's size (parsing, decoding tensors) runs in a thread for
# bodies larger than this: about 2 ms of parsing on the event loop at most (a 1 MiB body
# takes 10-60 ms to parse and decode), so no request holds up the others or liveness.
INLINE_BODY_BYTES = 64 * 1024
# One thread for that work, shared by every request: most of it (parsing JSON, building
# arrays) is one C call that holds the GIL, so a second thread runs none of it sooner and
# only keeps the GIL from the event loop for longer (four 1 MiB bodies parsed at once held
# up liveness for 200 ms; docs/benchmarks.md, "Hostile requests").
_SIZED_WORK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ortserve-body")


class BodyLost(Exception):
    """The client went away before its body was read."""


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {limit} bytes", {"limit": limit})


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes: refused by its Content-Length before a byte
    is read, or as soon as what arrived passes the limit (a body without a length).
    Straight from the ASGI messages: Starlette's `Request.body()` goes through an async
    generator, a tenth of a small model's request time."""
    for key, value in request.scope["headers"]:
        if key == CONTENT_LENGTH:
            if len(value) > 19 or not value.isdigit() or int(value) > limit:
                raise _too_large(limit)
            break
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise BodyLost
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        p = str(part)
        out += f"[{p}]" if isinstance(part, int) else (f".{p}" if out else p)
    return out or "body"


def parse(raw: bytes, model: type[BodyT]) -> BodyT:
    """`raw` as `model` (pydantic-core straight from the bytes). Invalid JSON is
    MalformedBody; JSON of the wrong shape is InvalidRequest naming every field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        details = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg", "")}
                   for e in errors]
        if any(e.get("type") == "json_invalid" for e in errors):
            raise MalformedBody("request body is not valid JSON", details) from None
        first = details[0] if details else {"field": "body", "message": "invalid"}
        raise InvalidRequest(first["field"], first["message"], details) from None


async def sized_work(size: int, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`work(*args)` inline for a small body, on the body thread for a large one (`size`
    bytes), in the request's context."""
    if size <= INLINE_BODY_BYTES:
        return work(*args, **kwargs)
    call = functools.partial(contextvars.copy_context().run, work, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_SIZED_WORK, call)


async def read_json(request: Request, limit: int, model: type[BodyT]) -> BodyT:
    """The body within `limit` bytes, parsed as `model` (in a thread when large)."""
    raw = await read_body(request, limit)
    return await sized_work(len(raw), parse, raw, model)


async def client_gone(request: Request) -> None:
    """Resolves when the client disconnects (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

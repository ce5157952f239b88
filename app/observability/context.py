"""The request context: what the service knows about the request being answered, for its
log line and its metrics, without passing it down the stack.

The HTTP edge opens one per request (`app/api/edge/context.py`), the gRPC servicer one per
call; the protocol adapter names the protocol and the model, and the serving layer reads the
protocol when it records the request's metrics. A ContextVar: each request runs in its own
task (uvicorn, grpc.aio), so contexts never mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# The protocol a request came through, as the metrics label it: `/predict` and the other
# routes of the service's own API, the Open Inference Protocol over HTTP, over gRPC.
V1, V2, GRPC = "v1", "v2", "grpc"
PROTOCOLS = (V1, V2, GRPC)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    protocol: str = V1
    model: str | None = None
    version: int | None = None
    key_id: str | None = None  # the caller's key, as the gate named it (never the key)


_current: ContextVar[RequestContext | None] = ContextVar("ortserve_request", default=None)


@contextmanager
def request_context(request_id: str, protocol: str = V1) -> Iterator[RequestContext]:
    ctx = RequestContext(request_id, protocol)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def current() -> RequestContext | None:
    return _current.get()


def protocol() -> str:
    """The protocol of the request being answered (V1 outside any request)."""
    ctx = _current.get()
    return ctx.protocol if ctx is not None else V1


def set_protocol(name: str) -> None:
    ctx = _current.get()
    if ctx is not None:
        ctx.protocol = name


def name_model(model: str | None, version: int | None) -> None:
    """Names the model (and version) answering, for the request's log line."""
    ctx = _current.get()
    if ctx is not None:
        ctx.model, ctx.version = model, version


def name_caller(key_id: str | None) -> None:
    """Names the key the request came with (an id derived from it), for logs."""
    ctx = _current.get()
    if ctx is not None:
        ctx.key_id = key_id


def caller_id() -> str | None:
    ctx = _current.get()
    return ctx.key_id if ctx is not None else None


def request_id() -> str | None:
    ctx = _current.get()
    return ctx.request_id if ctx is not None else None

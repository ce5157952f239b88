"""The route every HTTP endpoint of the service is: documented by FastAPI, served by the
edge.

FastAPI resolves dependencies, validates parameters and serialises the return value on every
request: about 34 us per request on this project's 2-core reference machine, more than
a tabular model run. An edge route keeps everything FastAPI derives from the decorator
(OpenAPI entry, response models, tags) but hands the request straight to its endpoint,
`endpoint(request) -> Response`, through FastAPI's hook for custom route classes
(`get_route_handler`), after the gate (`app/api/edge/auth.py`) has let it in. The endpoint
reads its own inputs through the edge (body, parameters) and raises `ServingError`s; the
route answers them in its protocol's shape (`app/api/edge/errors.py`), and an unexpected
exception as a logged 500 in that shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ClassVar

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from app.api.edge.auth import ANONYMOUS, AUTHORIZATION, Access, Caller, bearer
from app.api.edge.body import BodyLost
from app.api.edge.errors import CLIENT_CLOSED_STATUS, InternalError, v1_error, v2_error
from app.api.edge.params import header
from app.api.edge.state import app_state
from app.errors import ServingError
from app.observability.audit import admin_action
from app.observability.context import V1, V2, caller_id, request_id, set_protocol

log = logging.getLogger("ortserve.errors")

Endpoint = Callable[[Request], Awaitable[Response]]
RENDER: dict[str, Callable[[ServingError], Response]] = {V1: v1_error, V2: v2_error}


class EdgeRoute(APIRoute):
    """Set `protocol` and `access` in a subclass (see `route_class`)."""

    protocol: ClassVar[str] = V1
    access: ClassVar[Access] = Access.PREDICT

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Endpoint = self.endpoint
        protocol, access, render = self.protocol, self.access, RENDER[self.protocol]
        path = self.path_format

        async def handle(request: Request) -> Response:
            state = app_state(request)
            if protocol != V1:
                set_protocol(protocol)
            scope = request.scope
            try:
                client = scope.get("client")
                caller = await state.gate.admit(
                    access, bearer(header(scope["headers"], AUTHORIZATION)),
                    client[0] if client else None, protocol,
                    check_key=scope["path"] not in state.exempt_paths, hold=True)
                scope.setdefault("state", {})["caller"] = caller
                if access in (Access.PUBLIC, Access.OBSERVE):
                    return await endpoint(request)
                state.drain.enter()
                try:
                    response = await endpoint(request)
                finally:
                    state.drain.leave()
                if access is Access.ADMIN:
                    _audit(protocol, request, str(response.status_code))
                return response
            except ServingError as exc:
                if access is Access.ADMIN:
                    _audit(protocol, request, exc.code)
                return render(exc)
            except BodyLost:
                return Response(status_code=CLIENT_CLOSED_STATUS)
            except Exception as exc:  # noqa: BLE001 - a bug: answered, then logged
                rid = request_id()
                log.error("unexpected error in %s %s: %s: %s", request.method, path,
                          type(exc).__name__, exc, exc_info=exc, extra={"request_id": rid})
                return render(InternalError("internal server error", {"request_id": rid}))

        return handle


def _audit(protocol: str, request: Request, outcome: str) -> None:
    admin_action(caller_id(), protocol, f"{request.method} {request.url.path}", outcome,
                 request_id())


def caller_of(request: Request) -> Caller:
    """Who the gate let in for this request."""
    caller: Caller = request.scope.get("state", {}).get("caller", ANONYMOUS)
    return caller


def route_class(protocol: str, access: Access) -> type[EdgeRoute]:
    """The route class of a router whose endpoints speak `protocol` and need `access`."""
    return type(f"EdgeRoute_{protocol}_{access.value}", (EdgeRoute,),
                {"protocol": protocol, "access": access})


def openapi(parameters: Sequence[dict[str, Any]] = (), body: type[BaseModel] | None = None,
            statuses: Sequence[int] = (), error_model: type[BaseModel] | None = None
            ) -> dict[str, Any]:
    """The route decorator's documentation of what an edge endpoint reads itself: its
    path parameters and headers (`app/api/edge/params.py`), its JSON body, and the error
    statuses it may answer with `error_model`."""
    extra: dict[str, Any] = {}
    if parameters:
        extra["parameters"] = list(parameters)
    if body is not None:
        extra["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": body.model_json_schema(ref_template="#/components/schemas/{model}")}}}
    out: dict[str, Any] = {"openapi_extra": extra} if extra else {}
    if statuses and error_model is not None:
        out["responses"] = {c: {"model": error_model} for c in statuses}
    return out

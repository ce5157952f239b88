"""Routes documented by FastAPI but served without its per-request machinery.

FastAPI resolves dependencies, validates parameters and serialises the return value on every
request: about 34 us per request on this project's 2-core reference machine, more than
a tabular model run. A `LeanRoute` keeps everything FastAPI derives from the decorator
(OpenAPI entry, response models, tags) but hands the request straight to its endpoint,
`endpoint(request) -> Response`, through FastAPI's hook for custom route classes
(`get_route_handler`). The endpoint reads and validates its own inputs (bodies with
pydantic-core straight from bytes) and raises the same exceptions as any route, so the
application's exception handlers answer errors in the usual shape.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint

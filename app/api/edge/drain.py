"""Graceful drain on SIGTERM, in three phases.

1. draining (for `drain_delay_s`): readiness turns 503 at once so load balancers stop
   sending; work is still accepted, and every response closes its connection, so a client
   never finds its idle keep-alive connection cut later.
2. stopping: new requests are answered 503 `shutting_down` with `Connection: close` (an
   answer, not a cut connection; held until the listener has closed, see DrainGate)
   while the listener stays open; requests accepted before finish. Once none is left (or
   `shutdown_grace_s` has passed) the server's own shutdown starts.
3. the listeners close; connections already accepted get `LINGER_S` to deliver their
   request (answered 503); then the server closes every connection, and the lifespan
   drains and closes every model.

What remains lost is inherent to TCP: a connection that the kernel accepted into the
listen backlog in the instant the listener closes is reset (docs/reliability.md has the
figures). A second SIGTERM skips to phase 3.
"""

from __future__ import annotations

import asyncio
import logging

from app.api.edge.http import send_error

log = logging.getLogger("ortserve.lifecycle")

SERVING, DRAINING, STOPPING = "serving", "draining", "stopping"
CLOSE = (b"connection", b"close")


class Drain:
    """The service's shutdown phase and the requests in flight."""

    def __init__(self) -> None:
        self.phase = SERVING
        self.inflight = 0
        self._idle: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self.hold_s = 30.0  # longest a refused request is held (see DrainGate)

    @property
    def draining(self) -> bool:
        return self.phase != SERVING

    def begin(self) -> None:
        if self.phase == SERVING:
            self.phase = DRAINING

    def stop_accepting(self, hold_s: float = 0.0) -> None:
        self.phase = STOPPING
        self.hold_s = hold_s

    def listeners_closed(self) -> None:
        self._get_closed().set()

    def _get_closed(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    async def until_listeners_closed(self) -> None:
        """Hold a refused request until the server stops accepting (at most `hold_s`)."""
        try:
            await asyncio.wait_for(self._get_closed().wait(), self.hold_s)
        except TimeoutError:
            pass

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no request is in flight; False if `timeout_s` passed first."""
        self._idle = asyncio.Event()
        if self.inflight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class DrainGate:
    """ASGI middleware: counts requests in flight, closes connections after each response
    once draining, and answers 503 to new work once stopping (health and metrics stay).

    A request refused while stopping is answered only once the listeners have closed: a
    client that ignores readiness would otherwise reconnect at once and, at the instant
    the listener closes, sit in the kernel's accept queue, where its request is reset.
    Held, it waits on a connection the server owns and then gets its 503.
    """

    def __init__(self, app, drain: Drain,
                 exempt: tuple[str, ...] = ("/health/", "/v2/health/", "/metrics")) -> None:
        self.app = app
        self.drain = drain
        self.exempt = exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        drain = self.drain
        if drain.phase == STOPPING and not scope["path"].startswith(self.exempt):
            await drain.until_listeners_closed()
            await send_error(send, scope["path"], 503, "shutting_down",
                             "the server is shutting down; retry on another replica",
                             headers=[(b"retry-after", b"1"), CLOSE])
            return

        async def send_closing(message):
            if message["type"] == "http.response.start" and drain.phase != SERVING:
                message["headers"] = [*message.get("headers", []), CLOSE]
            await send(message)

        drain.enter()
        try:
            await self.app(scope, receive, send_closing)
        finally:
            drain.leave()

"""Graceful drain on SIGTERM, in three phases.

1. draining (for `drain_delay_s`): readiness turns 503 at once so load balancers stop
   sending; work is still accepted, and every response closes its connection, so a client
   never finds its idle keep-alive connection cut later.
2. stopping: new requests are answered 503 `shutting_down` with `Connection: close` (an
   answer, not a cut connection; held until the listener has closed, see
   `until_listeners_closed`)
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

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        self.hold_s = 30.0  # longest a refused request is held (until_listeners_closed)

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
        """Hold a request refused while stopping until the server stops accepting (at most
        `hold_s`): a client that ignores readiness would otherwise reconnect at once and, at
        the instant the listener closes, sit in the kernel's accept queue, where its request
        is reset. Held, it waits on a connection the server owns and then gets its 503."""
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


class ClosingConnections:
    """ASGI middleware: once draining, every response closes its connection (a client
    then opens its next one where a load balancer sends it)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        drain = self.drain

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and drain.phase != SERVING:
                message["headers"] = [*message.get("headers", []), CLOSE]
            await send(message)

        await self.app(scope, receive, send_closing)

"""Graceful shutdown under uvicorn: SIGTERM starts the drain (`app/api/edge/drain.py`) instead
of uvicorn's immediate shutdown, then hands over to uvicorn's own once the work accepted is
done."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from app.api.edge.drain import Drain

log = logging.getLogger("ortserve.lifecycle")


# After the listeners close, connections the server had already accepted get this long to
# deliver their request (answered 503 `shutting_down`) before the server closes every
# connection; `python -m bench drain` measures what it saves (docs/reliability.md).
LINGER_S = 0.25


async def _close_listeners_then_linger(previous, drain: Drain) -> None:
    """Stop accepting first, then give accepted connections a moment to be answered.

    Under uvicorn the wrapped SIGTERM handler is `Server.handle_exit`, whose server keeps
    its asyncio listeners in `.servers`; uvicorn's own shutdown would close the listeners
    and, in the same step, every connection that has not yet sent its request.
    """
    servers = getattr(getattr(previous, "__self__", None), "servers", None) or []
    for server in servers:
        server.close()
    drain.listeners_closed()  # held 503s go out now
    if servers:
        await asyncio.sleep(LINGER_S)


def install_drain_handler(loop: asyncio.AbstractEventLoop, drain: Drain, delay_s: float,
                          grace_s: float) -> bool:
    """Wrap the server's SIGTERM handler; returns False where there is none to wrap."""
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return False
    state: dict = {"signalled": False, "task": None}

    async def stop_then_shut_down(sig, frame) -> None:
        await asyncio.sleep(delay_s)
        drain.stop_accepting(hold_s=grace_s)
        log.info("drain: answering new requests 503; waiting for %d in flight",
                 drain.inflight)
        if not await drain.wait_idle(grace_s):
            log.warning("drain: %d request(s) still in flight after %.1f s", drain.inflight,
                        grace_s)
        await _close_listeners_then_linger(previous, drain)
        previous(sig, frame)

    def handler(sig, frame):
        if state["signalled"]:
            previous(sig, frame)
            return
        state["signalled"] = True
        drain.begin()
        log.info("SIGTERM: readiness is now 503; accepting work for %.1f s more, then "
                 "finishing what was accepted", delay_s)
        loop.call_soon_threadsafe(
            lambda: state.update(task=loop.create_task(stop_then_shut_down(sig, frame))))

    signal.signal(signal.SIGTERM, handler)
    return True


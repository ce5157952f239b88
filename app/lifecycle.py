"""Graceful drain on SIGTERM.

First SIGTERM: readiness turns 503 at once while work is still accepted for
`drain_delay_s` (so load balancers stop sending); then the server's own shutdown runs:
it stops accepting, lets in-flight and queued requests finish (up to
`shutdown_grace_s`), and the lifespan drains every model queue. A second SIGTERM skips
the delay.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("ortserve.lifecycle")


def install_drain_handler(loop: asyncio.AbstractEventLoop, delay_s: float,
                          on_drain: Callable[[], None]) -> bool:
    """Wrap the server's SIGTERM handler; returns False where there is none to wrap."""
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return False
    state = {"draining": False}

    def handler(sig, frame):
        if state["draining"]:
            previous(sig, frame)
            return
        state["draining"] = True
        on_drain()
        log.info("SIGTERM: readiness is now 503; accepting work for %.1f s more, then "
                 "finishing what was accepted", delay_s)
        loop.call_soon_threadsafe(loop.call_later, delay_s, previous, sig, frame)

    signal.signal(signal.SIGTERM, handler)
    return True

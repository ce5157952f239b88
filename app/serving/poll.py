"""The poll mode: follow the repository folder (load verified new versions, unload removed
ones), every `ORTSERVE_REPOSITORY_POLL_S` seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("ortserve.registry")

# A polled version folder changed less than this many poll intervals ago may still be
# being copied: it is looked at again on a later poll.
SETTLE_POLLS = 2.0


def settling(newest_mtime: float, interval_s: float) -> bool:
    """True while a folder whose newest file changed at `newest_mtime` may still be being
    written (copied in, not published by an atomic rename)."""
    return time.time() - newest_mtime < SETTLE_POLLS * interval_s


class Poller:
    """Calls `poll()` every `interval_s` seconds until stopped; a failed pass is logged and
    the next one tries again."""

    def __init__(self, poll: Callable[[], Awaitable[None]], interval_s: float) -> None:
        self._poll, self.interval_s = poll, interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._poll()
            except Exception:  # noqa: BLE001 - the next poll tries again
                log.exception("repository poll failed")

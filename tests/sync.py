"""Synchronisation for tests: bounded polls, and a gate that holds a loaded model's batches
until the test releases them. No test waits a fixed time for something to happen."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# A bound, not an expectation: what a test waits for happens in milliseconds on any host;
# this only turns a hang into a failure that says what never happened.
WAIT_S = 30.0


async def until(check: Callable[[], bool | Awaitable[bool]], what: str,
                timeout: float = WAIT_S, every: float = 0.001) -> None:
    """Poll `check` (plain or async) on the event loop, every `every` seconds, until it is
    true."""
    deadline = time.monotonic() + timeout
    while True:
        ok = check()
        if isinstance(ok, Awaitable):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        await asyncio.sleep(every)


async def settle_loop(rounds: int = 20) -> None:
    """Let every task the event loop has ready run (no wall time involved): what a worker
    would do at once in reaction to the last call has been done when this returns."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Gate:
    """Wraps a batch queue's runner (`queue._run_batch`, the real model run): every batch
    waits for `release()` before it runs. The session, pipeline and batcher are the real
    ones; only *when* a batch starts is the test's to decide."""

    def __init__(self, queue: Any) -> None:
        # a batch run inline would hold the event loop itself at the gate
        assert not queue.runs_inline, "a gated model must run its batches in threads"
        self.queue = queue
        self.run = queue._run_batch
        self.opened = threading.Event()
        self.entered: list[int] = []  # the size of every batch that reached the gate
        self._lock = threading.Lock()
        queue._run_batch = self

    def __call__(self, payloads: list[Any]) -> Sequence[Any]:
        with self._lock:
            self.entered.append(len(payloads))
        if not self.opened.wait(WAIT_S * 2):
            raise TimeoutError("the test never released the gate")
        return self.run(payloads)

    def release(self) -> None:
        self.opened.set()

    async def wait_entered(self, batches: int = 1) -> None:
        await until(lambda: len(self.entered) >= batches,
                    f"{batches} batch(es) of the gated model started")

    @classmethod
    def on(cls, client: Any, model: str) -> Gate:
        """The gate on `model`'s served version in an app made by `make_client`, which
        opens it before it stops the app (a test that failed leaves no batch held)."""
        gate = cls(client.app.state.ortserve.dataplane.registry.get(model).queue)
        client.gates.append(gate)
        return gate

"""Health follows the inference thread: the server is only SERVING while it shows signs of life.

The engine beats a heartbeat every batch and every idle tick. If it dies, the scheduler has
already failed every queued request with INTERNAL; here health turns NOT_SERVING and the
server is told to shut down (it exits non-zero, so an orchestrator restarts it from the last
snapshot). If it is alive but silent for longer than `stall_s`, health is NOT_SERVING until
it beats again, so load balancers send traffic elsewhere instead of into a queue that does
not move. With sync durability, the session store is part of the service too: NOT_SERVING
while it cannot be reached, since every request would fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from seqpredict.server.handle import EngineHandle

log = logging.getLogger(__name__)

PERIOD_S = 0.25


class Watchdog:
    def __init__(
        self,
        engine: EngineHandle,
        stall_s: float,
        set_healthy: Callable[[str, bool], Awaitable[None]],
        on_death: Callable[[], None],
        require_store: bool = False,
    ) -> None:
        self.engine = engine
        self.require_store = require_store  # sync durability: no session store, no service
        self.store_up = True
        self.stall_s = stall_s
        self._set_healthy = set_healthy
        self._on_death = on_death
        self.stalled = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD_S)
            if not self.engine.alive:
                log.critical(
                    "the inference thread has stopped (%s): NOT_SERVING, shutting down",
                    self.engine.failure or "exited",
                )
                await self._set_healthy("engine", False)
                self._on_death()
                return
            stalled = time.monotonic() - self.engine.heartbeat > self.stall_s
            if stalled != self.stalled:
                self.stalled = stalled
                if stalled:
                    log.error("the inference thread has been silent for over %.0fs: NOT_SERVING", self.stall_s)
                else:
                    log.warning("the inference thread is making progress again: SERVING")
                await self._set_healthy("engine", not stalled)
            if self.require_store and self.engine.store_up != self.store_up:
                self.store_up = self.engine.store_up
                await self._set_healthy("store", self.store_up)

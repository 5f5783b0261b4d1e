"""Time this process did not run: stopped (SIGSTOP), a frozen VM, swapped out, or its event
loop blocked. A request that timed out across such a while may have had its answer for
long: the silence was this node's, not the other side's."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

TICK = 0.25  # seconds between the watch's wakes
LATE = 1.0  # seconds a wake comes later than due before it counts as a pause


class PauseWatch:
    """Wakes every TICK on the running loop and notes when it woke late. For one loop."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._last_wake = -math.inf
        self._resumed = -math.inf  # when the last pause ended (monotonic)

    def start(self) -> None:
        """Start watching (again a no-op); needs a running loop."""
        if self._task is None:
            self._last_wake = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def paused_since(self, started: float) -> bool:
        """Whether this process did not run for a while since `started` (monotonic): a pause
        ended since, or one is ending now (the watch has not woken from it yet)."""
        if self._task is None:
            return False
        return self._resumed >= started or time.monotonic() - self._last_wake > TICK + LATE

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            if now - self._last_wake > TICK + LATE:
                self._resumed = now
            self._last_wake = now

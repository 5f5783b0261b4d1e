"""PauseWatch: a while this process did not run is told from one it ran through."""

from __future__ import annotations

import asyncio
import time

import pytest

from tierfs.pauses import LATE, TICK, PauseWatch


@pytest.mark.asyncio
async def test_a_blocked_loop_counts_as_a_pause_and_a_running_one_does_not() -> None:
    watch = PauseWatch()
    started = time.monotonic()
    assert not watch.paused_since(started)  # not watching yet
    watch.start()
    try:
        await asyncio.sleep(3 * TICK)
        assert not watch.paused_since(started)
        time.sleep(TICK + LATE + 0.2)  # the loop does not run, as under SIGSTOP
        assert watch.paused_since(started)  # waking from it, before the watch has
        await asyncio.sleep(2 * TICK)
        assert watch.paused_since(started)  # it ended after `started`
        assert not watch.paused_since(time.monotonic())  # nothing since
    finally:
        await watch.close()

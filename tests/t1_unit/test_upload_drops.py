"""When what failed multipart uploads left is dropped (`UploadDrops`), whatever the store."""

from __future__ import annotations

import asyncio

import pytest

from tierfs.cloud.upload_drops import UploadDrops

DEADLINE = 0.2  # seconds: the late drop comes this long after the first


async def _failed_upload() -> None:
    raise OSError("connection lost")


async def _drops_after_a_failed_upload(looked: str | None) -> list[str | None]:
    """What the drop hook was given after one failed upload of a key, once two deadlines
    have passed, when the look before said `looked`."""
    given: list[str | None] = []

    async def look(_key: str) -> str | None:
        return looked

    async def drop(_key: str, before: str) -> None:
        given.append(before)

    drops = UploadDrops(look, drop, DEADLINE)
    try:
        with pytest.raises(OSError, match="connection lost"):
            await drops.run("big.bin", _failed_upload)
        await asyncio.sleep(2 * DEADLINE)
    finally:
        await drops.close()
    return given


@pytest.mark.asyncio
async def test_a_failed_upload_is_dropped_at_once_and_a_deadline_later() -> None:
    assert await _drops_after_a_failed_upload("uploads before") == [
        "uploads before",
        "uploads before",
    ]


@pytest.mark.asyncio
async def test_a_look_that_could_not_be_done_drops_nothing_then_or_later() -> None:
    """S3's look before (its uploads in progress) fails without the right to list them:
    nothing can be told apart, so nothing is dropped, and no drop waits a deadline to do
    nothing (before 2026-12-07 both were done, each doing nothing)."""
    assert await _drops_after_a_failed_upload(None) == []

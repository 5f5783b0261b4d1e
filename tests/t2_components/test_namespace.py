"""The metadata cache on a real store (the local provider): bounded, and still right."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud_targets import settings_for
from tierfs.cloud.providers import open_store
from tierfs.fs.metadata import Namespace

TTL = 0.2
pytestmark = pytest.mark.asyncio


async def test_expired_answers_are_dropped_so_a_long_walk_stays_bounded(tmp_path: Path) -> None:
    cloud = open_store(settings_for("local", None, tmp_path))
    try:
        await cloud.put("data/kept.bin", b"12345")
        names = Namespace(cloud, TTL, prune_at=100)
        for round_ in range(4):  # a walk over 4 x 90 paths, each round after the last expired
            for i in range(90):
                assert await names.stat(f"walk/{round_}/missing-{i}") is None
            assert len(names) < 200
            await asyncio.sleep(TTL)
        entry = await names.stat("data/kept.bin")
        assert entry is not None and entry.size == 5 and not entry.is_dir
        assert [e.name for e in await names.listdir("data")] == ["kept.bin"]
    finally:
        await cloud.close()

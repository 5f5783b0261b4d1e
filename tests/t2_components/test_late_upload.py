"""A late upload (a retry of a failed close, at unmount, after a restart) and another
node's write of the same file, on every provider against its real server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio

from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.cloud.base import ABSENT, CloudStore, ObjectMeta
from tierfs.stats import NodeStats
from tierfs.upload import CONFLICTS, Uploader, UploadJournal

CHUNK = 64 * 1024
KEY = "late/file"
pytestmark = pytest.mark.asyncio


class AnotherNodeWritesAfterTheLook:
    """`store`, but right after its first HEAD of `key` has been answered, another node puts
    `theirs` there: a write landing between a late upload's look and its put."""

    def __init__(self, store: CloudStore, key: str, theirs: bytes) -> None:
        self._store = store
        self._key = key
        self._theirs = theirs
        self.wrote: ObjectMeta | None = None

    async def head(self, key: str) -> ObjectMeta:
        try:
            return await self._store.head(key)
        finally:  # found or not
            if key == self._key and self.wrote is None:
                self.wrote = await self._store.put(key, self._theirs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def as_store(self) -> CloudStore:
        """This, where a CloudStore is taken: it is one by delegation (`__getattr__`)."""
        return cast(CloudStore, self)


@pytest_asyncio.fixture
async def cache(tmp_path: Path) -> AsyncIterator[DiskChunkCache]:
    cache = await DiskChunkCache.create(
        tmp_path / "nvme", nvme_size=2**26, peer_size=2**26, stats=NodeStats(), admit_after=1
    )
    yield cache
    await cache.close()


async def read(store: CloudStore, key: str) -> bytes:
    meta = await store.head(key)
    return bytes(await store.get_range(key, 0, meta.size, meta.version))


@pytest.mark.warnings_expected
@pytest.mark.parametrize("existed", [True, False], ids=["over-a-version", "a-new-file"])
async def test_a_write_between_a_late_uploads_look_and_its_put_is_not_overwritten(
    store: CloudStore,
    cache: DiskChunkCache,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    existed: bool,
) -> None:
    """The late upload saw the object as this node's write began (or saw none), then
    another node wrote it: the other node's bytes stay at the key, this node's go aside
    under CONFLICTS, and neither is lost."""
    base = (await store.put(KEY, b"base")).version if existed else ABSENT
    staging = tmp_path / "staging"
    staging.write_bytes(b"ours")
    journal = UploadJournal(tmp_path / "journal.sqlite3")
    journal.begin(KEY, staging, base)
    racing = AnotherNodeWritesAfterTheLook(store, KEY, b"theirs")
    uploader = Uploader(racing.as_store(), cache, journal, CHUNK)
    try:
        meta = await uploader.upload_late(KEY, staging, base)
    finally:
        await uploader.close()
        journal.close()
    assert racing.wrote is not None
    assert (await store.head(KEY)).version == racing.wrote.version
    assert await read(store, KEY) == b"theirs"
    assert meta.key.startswith(f"{CONFLICTS}/") and meta.key.endswith(f"/{KEY}")
    assert await read(store, meta.key) == b"ours"
    assert UploadJournal(tmp_path / "journal.sqlite3").pending() == []
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [
        f"{KEY} changed in the bucket before this node could upload what it had written "
        f"there: that goes to {meta.key}, the bucket's {KEY} stays"
    ]

"""The filesystem's uploads beside the files it is writing, on the local provider: the
background recovery of what a previous run left unsent, the tier-1 copy of a version
uploaded while its file stays open, and what is kept of the files opened."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio

from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.chunks import ObjectRef, chunk_ref
from tierfs.cloud.base import CloudStore, ObjectMeta
from tierfs.cloud.providers import local_store
from tierfs.errors import ObjectNotFoundError, TransientCloudError
from tierfs.fs.filesystem import Filesystem, Ownership
from tierfs.fs.handles import Staging
from tierfs.read_path import ReadPath
from tierfs.stats import NodeStats
from tierfs.upload import Uploader, UploadJournal

CHUNK = 64 * 1024
ROOT = 1  # the root directory's inode
pytestmark = pytest.mark.asyncio


class Outage:
    """`store`, but its puts fail while `down` (the cloud out of reach)."""

    def __init__(self, store: CloudStore) -> None:
        self._store = store
        self.down = False

    async def put(self, *args: Any, **kwargs: Any) -> ObjectMeta:
        if self.down:
            raise TransientCloudError("the cloud is down")
        return await self._store.put(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def as_store(self) -> CloudStore:
        """This, where a CloudStore is taken: it is one by delegation (`__getattr__`)."""
        return cast(CloudStore, self)


@dataclass
class Node:
    """One client's parts, over a local bucket: the filesystem is made by `mount`, once
    the test has set up what a previous run left."""

    cloud: Outage
    cache: DiskChunkCache
    journal: UploadJournal
    uploader: Uploader
    staging: Staging
    stack: AsyncExitStack

    async def mount(self) -> Filesystem:
        read_path = ReadPath(
            self.cache,
            self.cloud.as_store(),
            chunk_size=CHUNK,
            stats=NodeStats(),
        )
        self.stack.push_async_callback(read_path.close)
        fs = Filesystem(
            self.cloud.as_store(),
            read_path,
            self.uploader,
            self.staging,
            metadata_ttl=1.0,
            ownership=Ownership(os.getuid(), os.getgid()),
        )
        self.stack.push_async_callback(fs.close)
        return fs


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    nvme = tmp_path / "nvme"
    async with AsyncExitStack() as stack:
        cloud = Outage(local_store(str(tmp_path / "bucket"), 30.0))
        stack.push_async_callback(cloud.close)
        cache = await DiskChunkCache.create(
            nvme, nvme_size=2**26, peer_size=2**26, stats=NodeStats(), admit_after=1
        )
        stack.push_async_callback(cache.close)
        journal = UploadJournal(nvme / "journal.sqlite3")
        stack.callback(journal.close)
        uploader = Uploader(cloud.as_store(), cache, journal, CHUNK)
        stack.push_async_callback(uploader.close)
        yield Node(cloud, cache, journal, uploader, Staging(nvme / "staging"), stack)


async def read(store: CloudStore | Outage, key: str) -> bytes:
    meta = await store.head(key)
    return bytes(await store.get_range(key, 0, meta.size, meta.version))


@pytest.mark.warnings_expected  # the recovery's failed try is logged
async def test_the_mount_takes_over_what_a_previous_run_left_and_leaves_its_writers_alone(
    node: Node,
) -> None:
    """Started while the cloud refuses puts, the node's mount takes over what a previous
    run left, as a file whose close failed: it shows its bytes and retries it in the
    background while it serves. Once the cloud is back, that goes up, and a file being
    written meanwhile stays its writer's: not sent half written, its staging file kept,
    its close sending it whole."""
    left = node.staging.root / "left-by-the-last-run"
    left.write_bytes(b"written before the crash")
    node.journal.begin("left.txt", left, "")
    node.cloud.down = True
    assert await node.uploader.recover() == 1
    fs = await node.mount()
    fs.take_over(node.uploader.hand_over())
    assert not node.uploader.recovering  # the mount's now
    shown = await fs.lookup(ROOT, "left.txt")
    assert shown.size == len(b"written before the crash")
    handle = await fs.create(ROOT, "live.txt")
    await fs.write(handle.fh, 0, b"first half, ")
    node.cloud.down = False
    await asyncio.wait_for(fs.retry_failed_uploads(interval=0.01), 10)
    assert await read(node.cloud, "left.txt") == b"written before the crash"
    with pytest.raises(ObjectNotFoundError):  # not half written: not at all until its close
        await node.cloud.head("live.txt")
    await fs.write(handle.fh, 12, b"second half")
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert await read(node.cloud, "live.txt") == b"first half, second half"
    assert node.journal.pending() == []
    assert not left.exists()


@pytest.mark.parametrize("written_after", [False, True], ids=["fsync", "fsync-then-write"])
async def test_the_tier_1_copy_of_an_fsynced_version_holds_only_its_bytes(
    node: Node, written_after: bool
) -> None:
    """An fsync puts version V in the bucket, and its bytes go into tier 1 in the
    background, from the staging file. A write in place right after the fsync changes the
    staging file, not V: tier 1 holds no bytes as V's but V's (it held the new ones, served
    here and to the other nodes as V's). With no such write, tier 1 holds all of V."""
    fs = await node.mount()
    handle = await fs.create(ROOT, "db.bin")
    inode = handle.file.node.inode
    await fs.write(handle.fh, 0, b"A" * 3 * CHUNK)
    await fs.fsync(handle.fh)
    synced = await fs.getattr(inode)  # no await of I/O: the write is next
    version = ObjectRef("db.bin", synced.version, synced.size)
    if not written_after:
        assert await all_in_tier_1(node, version) == [b"A" * CHUNK] * 3
    else:
        await fs.write(handle.fh, 2 * CHUNK, b"B" * CHUNK)
        # V's copy takes the file's lock before this fsync's own copy can: once that one
        # is whole, V's is over.
        await fs.fsync(handle.fh)
        again = await fs.getattr(inode)
        written = ObjectRef("db.bin", again.version, again.size)
        assert await all_in_tier_1(node, written) == [b"A" * CHUNK] * 2 + [b"B" * CHUNK]
        held = await in_tier_1(node, version)
        assert [index for index, data in held.items() if data != b"A" * CHUNK] == []
    await fs.release(handle.fh)
    last = b"B" if written_after else b"A"
    assert await read(node.cloud, "db.bin") == b"A" * 2 * CHUNK + last * CHUNK


async def in_tier_1(node: Node, ref: ObjectRef) -> dict[int, bytes]:
    """The chunks of `ref` that tier 1 holds, by index."""
    held = {}
    for index in range(-(-ref.size // CHUNK)):
        chunk = chunk_ref(ref, index, CHUNK)
        data = await node.cache.read(chunk, 0, chunk.length)
        if data is not None:
            held[index] = bytes(data)
    return held


async def all_in_tier_1(node: Node, ref: ObjectRef) -> list[bytes]:
    """The chunks of `ref`, once tier 1 holds every one (they are copied there in the
    background after its upload); fails past 10 s."""
    count = -(-ref.size // CHUNK)
    deadline = asyncio.get_running_loop().time() + 10.0
    while len(held := await in_tier_1(node, ref)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"tier 1 holds {sorted(held)}"
        await asyncio.sleep(0.01)
    return [held[index] for index in range(count)]


async def test_what_is_kept_of_each_opened_file_goes_when_the_kernel_forgets_it(
    node: Node,
) -> None:
    """The version of each file at its last open (keep_cache's) is kept while the kernel
    keeps the inode, not after: before 2026-12-06 a mount that opened millions of files
    kept one for each, for good."""
    fs = await node.mount()
    for number in range(50):
        await node.cloud.put(f"f{number}", b"bytes")
    inodes = []
    for number in range(50):
        opened = await fs.lookup(ROOT, f"f{number}")
        opened.lookups += 1  # as the adapter answers the kernel
        handle, _ = await fs.open(opened.inode, writable=False, truncate=False)
        await fs.release(handle.fh)
        inodes.append(opened.inode)
    assert len(fs._last_versions) == 50
    kept = await fs.lookup(ROOT, "f0")
    handle, keep_cache = await fs.open(kept.inode, writable=False, truncate=False)
    assert keep_cache
    for inode in inodes:
        fs.inodes.forget(inode, 1)  # as the kernel does under memory pressure
    assert len(fs._last_versions) == 1  # f0's: a handle still holds it
    await fs.release(handle.fh)
    assert fs._last_versions == {}

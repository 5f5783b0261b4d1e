"""The read path on real S3 servers: exact bytes, one GET per chunk (counted by the server),
tier-1 hits across restarts, read-ahead, cancellation, version changes and bounded memory."""

from __future__ import annotations

import asyncio
import mmap
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import servers
from cloud_targets import server_for, settings_for
from pagecache import cached_pages, evict
from proc_status import memory_kib, reset_peak
from tierfs.cache import files
from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.chunks import ChunkRef, Data, ObjectRef, chunk_ref
from tierfs.cloud.base import LIST_PAGE_SIZE, CloudStore, ListPage, ObjectMeta
from tierfs.cloud.providers import open_store
from tierfs.errors import VersionChangedError
from tierfs.prefetch import MAX_WINDOW_BYTES, SEQUENTIAL_AFTER, SequentialReader
from tierfs.read_path import PeerTier, ReadPath
from tierfs.stats import NodeStats, Tier

KiB, MiB, GiB = 2**10, 2**20, 2**30
READ = 128 * KiB  # what FUSE asks for at a time


@dataclass
class Cloud:
    """A fresh bucket on a real server."""

    server: servers.S3Server
    bucket: str
    store: CloudStore

    async def put(self, key: str, body: bytes | Path) -> ObjectRef:
        meta = await self.store.put(key, body)
        return ObjectRef(key, meta.version, meta.size)

    async def gets(self) -> int:
        """GETs the server has answered for this bucket, once its count has settled."""
        return await asyncio.to_thread(self.server.settled_request_count, "GET", self.bucket)


@asynccontextmanager
async def cloud_on(server: servers.S3Server, root: Path) -> AsyncIterator[Cloud]:
    config = settings_for("s3", server, root)
    store = open_store(config)
    try:
        yield Cloud(server, config.s3_bucket, store)
    finally:
        await store.close()


@dataclass
class Node:
    """Tier 1 on a local directory and the read path over it."""

    cache: DiskChunkCache
    path: ReadPath
    stats: NodeStats


@asynccontextmanager
async def node_on(
    root: Path,
    cloud: CloudStore,
    *,
    chunk_size: int,
    nvme_size: int = GiB,
    peer_size: int = 0,
    admit_after: int = 1,
    peers: PeerTier | None = None,
    max_window_bytes: int = MAX_WINDOW_BYTES,
    max_parallel_fetches: int = 16,
) -> AsyncIterator[Node]:
    stats = NodeStats()
    cache = await DiskChunkCache.create(
        root, nvme_size=nvme_size, peer_size=peer_size, stats=stats, admit_after=admit_after
    )
    path = ReadPath(
        cache,
        cloud,
        chunk_size=chunk_size,
        stats=stats,
        peers=peers,
        max_window_bytes=max_window_bytes,
        max_parallel_fetches=max_parallel_fetches,
    )
    try:
        yield Node(cache, path, stats)
    finally:
        await path.close()
        assert path.fetches == 0
        await cache.close()


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def other_tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current}


# -- exact bytes ------------------------------------------------------------------------

RANGES_CHUNK = 64 * KiB
RANGES_SIZE = 3 * MiB + 4321


def read_lists() -> st.SearchStrategy[list[tuple[int, int]]]:
    """Reads anywhere (across chunk edges and past the end), or runs of sequential ones."""
    anywhere = st.tuples(
        st.integers(0, RANGES_SIZE + 2 * RANGES_CHUNK), st.integers(0, 5 * RANGES_CHUNK)
    )
    runs = st.builds(
        lambda start, piece, count: [(start + i * piece, piece) for i in range(count)],
        st.integers(0, RANGES_SIZE),
        st.integers(1, 3 * RANGES_CHUNK),
        st.integers(2, 12),
    )
    return st.one_of(st.lists(anywhere, min_size=1, max_size=6), runs)


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
def test_random_ranges_return_exactly_the_objects_bytes(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    server = server_for(request, provider)
    assert isinstance(server, servers.S3Server)
    body = random_bytes(RANGES_SIZE, seed=1)

    # Hypothesis drives a synchronous function: one event loop for the whole test.
    with asyncio.Runner() as runner:
        resources = AsyncExitStack()
        cloud = runner.run(resources.enter_async_context(cloud_on(server, tmp_path)))
        ref = runner.run(cloud.put("data/ranges.bin", body))
        # a small tier 1 (16 chunks): evictions happen between examples
        small = node_on(tmp_path / "nvme", cloud.store, chunk_size=RANGES_CHUNK, nvme_size=MiB)
        node = runner.run(resources.enter_async_context(small))

        async def check(reads: list[tuple[int, int]], use_reader: bool) -> None:
            reader = node.path.open_reader(ref) if use_reader else None
            try:
                for offset, size in reads:
                    got = await node.path.read(ref, offset, size, reader)
                    assert got == body[offset : offset + size], (offset, size)
            finally:
                if reader is not None:
                    await reader.close()

        @settings(max_examples=50, deadline=None, database=None)
        @given(reads=read_lists(), use_reader=st.booleans())
        def examples(reads: list[tuple[int, int]], use_reader: bool) -> None:
            runner.run(check(reads, use_reader))

        try:
            examples()
            assert runner.run(node.path.read(ref, RANGES_SIZE, 10)) == b""
            assert runner.run(node.path.read(ref, 0, RANGES_SIZE + 1)) == body
        finally:
            runner.run(resources.aclose())
        assert node.stats.tier(Tier.CLOUD).errors == 0


# -- single-flight and tier 1 ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_readers_of_a_cold_chunk_cause_one_get(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    chunk = 256 * KiB
    body = random_bytes(4 * chunk, seed=2)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("one-chunk", body)
        async with node_on(tmp_path / "nvme", cloud.store, chunk_size=chunk) as node:
            before = await cloud.gets()
            spans = [(2 * chunk + 997 * i, 1000 + i) for i in range(64)]
            readers = [asyncio.create_task(node.path.read(ref, o, n)) for o, n in spans]
            await asyncio.sleep(0)
            for task in readers[::4]:  # cancelled waiters must not cancel the shared fetch
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for (offset, size), task in zip(spans, readers, strict=True):
                if not task.cancelled():
                    assert task.result() == body[offset : offset + size]
            assert sum(task.cancelled() for task in readers) == 16
            assert await cloud.gets() - before == 1  # counted at the server
            assert node.stats.tier(Tier.CLOUD).hits == 1
            assert node.stats.singleflight_joins >= 1


@pytest.mark.asyncio
async def test_a_second_read_and_a_restart_cause_no_get(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    chunk = 256 * KiB
    body = random_bytes(MiB, seed=3)
    offset, size = 100_000, 600_000  # chunks 0, 1 and 2
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("dir/again.bin", body)
        async with node_on(tmp_path / "nvme", cloud.store, chunk_size=chunk) as node:
            start = await cloud.gets()
            assert await node.path.read(ref, offset, size) == body[offset : offset + size]
            fetched = await cloud.gets()
            assert fetched - start == 3
            assert await node.path.read(ref, offset, size) == body[offset : offset + size]
            assert await cloud.gets() == fetched
            assert node.stats.tier(Tier.LOCAL).hits == 3
            assert node.stats.tier(Tier.CLOUD).bytes == 3 * chunk
        async with node_on(tmp_path / "nvme", cloud.store, chunk_size=chunk) as restarted:
            assert await restarted.path.read(ref, offset, size) == body[offset : offset + size]
            assert await cloud.gets() == fetched
            local = restarted.stats.tier(Tier.LOCAL)
            assert (local.hits, local.misses) == (3, 0)


# -- read-ahead -------------------------------------------------------------------------


async def read_sequentially(node: Node, ref: ObjectRef, body: bytes) -> SequentialReader:
    """Read `ref` start to end in READ pieces through one handle's read-ahead, checking
    every byte against `body`; returns the reader, closed."""
    reader = node.path.open_reader(ref)
    for offset in range(0, ref.size, READ):
        got = await node.path.read(ref, offset, READ, reader)
        assert got == body[offset : offset + READ], offset
    assert await node.path.read(ref, ref.size, READ, reader) == b""
    await reader.close()
    return reader


@pytest.mark.asyncio
async def test_a_sequential_read_is_prefetched_with_one_get_per_chunk(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    chunk = MiB
    body = random_bytes(32 * MiB, seed=4)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("seq.bin", body)
        async with node_on(tmp_path / "nvme", cloud.store, chunk_size=chunk) as node:
            start = await cloud.gets()
            reader = await read_sequentially(node, ref, body)
            assert reader.in_flight == 0
            stats = node.stats
            assert stats.prefetched_chunks > 16
            assert 0 < stats.prefetch_hits <= stats.prefetched_chunks
            assert await cloud.gets() - start == 32  # no chunk fetched twice
            assert stats.tier(Tier.CLOUD).hits == 32


@pytest.mark.asyncio
async def test_chunks_of_a_sequential_reader_are_kept_around_the_page_cache(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """Read ahead or fetched for its reads once it reads sequentially, a chunk is held by
    its reader until passed (then FUSE's page cache has its bytes): tier 1 writes it around
    the page cache, whose new pages cost more than the disk write here."""
    chunk = MiB
    body = random_bytes(16 * MiB, seed=5)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("around.bin", body)
        other = await cloud.put("demand.bin", body[:chunk])
        # A window of one chunk: the reader fetches some chunks itself, not read ahead.
        async with node_on(
            tmp_path / "nvme", cloud.store, chunk_size=chunk, max_window_bytes=chunk
        ) as node:
            await read_sequentially(node, ref, body)
            assert node.stats.prefetched_chunks < 15
            assert await node.path.read(other, 0, chunk) == body[:chunk]  # no read-ahead
            await asyncio.sleep(0.2)  # tier 1 writes behind the readers

            def page_cached(obj: ObjectRef, index: int) -> bool:
                chunk_id = chunk_ref(obj, index, chunk).id
                fd = files.open_chunk(files.chunk_path(str(tmp_path / "nvme" / "chunks"), chunk_id))
                try:
                    return files.in_page_cache(fd, 0, chunk)
                finally:
                    os.close(fd)

            assert all(node.cache.holds(chunk_ref(ref, i, chunk).id) for i in range(16))
            # the first chunk was fetched before the reads counted as sequential
            assert [page_cached(ref, i) for i in range(16)] == [True] + [False] * 15
            assert page_cached(other, 0)  # fetched for a random read: likely read again
            start = await cloud.gets()
            assert await node.path.read(ref, 0, ref.size) == body  # from tier 1, checked
            assert await cloud.gets() == start


@pytest.mark.asyncio
async def test_a_warm_sequential_read_copies_each_chunk_out_of_tier_1_once(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    chunk = 2 * MiB
    body = random_bytes(16 * MiB, seed=11)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("warm.bin", body)
        async with node_on(tmp_path / "nvme", cloud.store, chunk_size=chunk) as node:
            assert await node.path.read(ref, 0, ref.size) == body
            while node.path.fetches:  # tier 1 writes behind the read (through the page cache)
                await asyncio.sleep(0.01)
            assert await node.path.read(ref, 0, ref.size) == body  # tier 1 checks each chunk
            local = node.stats.tier(Tier.LOCAL)
            start = await cloud.gets()
            for piece, most_held in ((READ, 1), (MiB, 0)):
                hits_before = local.hits
                reader = node.path.open_reader(ref)
                for offset in range(0, ref.size, piece):
                    got = await node.path.read(ref, offset, piece, reader)
                    assert got == body[offset : offset + piece], offset
                    assert reader.in_flight == 0  # no read-ahead task for chunks tier 1 has
                    assert reader.held <= most_held  # the chunk being read, or none
                await reader.close()
                if piece == READ:
                    # all reads but the first two (before the read counts as sequential)
                    # are slices of one copy of their chunk
                    assert local.hits - hits_before == SEQUENTIAL_AFTER + ref.size // chunk
                else:  # 1 MiB reads are large copies already: each reads its own range
                    assert local.hits - hits_before == ref.size // piece
            assert await cloud.gets() == start


@pytest.mark.asyncio
@pytest.mark.parametrize("cachestat", [True, False], ids=["cachestat", "mincore"])
async def test_read_ahead_brings_tier_1_chunks_from_disk_into_memory(
    seaweedfs: servers.S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cachestat: bool
) -> None:
    """Tier 1 asks the kernel what is cached with cachestat, or (older kernels) mincore."""
    monkeypatch.setattr(files, "_has_cachestat", cachestat)
    chunk = MiB
    body = random_bytes(8 * MiB, seed=12)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("cold-disk.bin", body)
        async with node_on(
            tmp_path / "nvme", cloud.store, chunk_size=chunk, max_window_bytes=2 * MiB
        ) as node:
            assert await node.path.read(ref, 0, ref.size) == body
            while node.path.fetches:
                await asyncio.sleep(0.01)
            assert await node.path.read(ref, 0, ref.size) == body  # tier 1 checks each chunk
            fds = []
            chunks_dir = str(tmp_path / "nvme" / files.CHUNKS_DIR)
            for index in range(ref.size // chunk):  # as after a while, or drop_caches
                fd = files.open_chunk(files.chunk_path(chunks_dir, chunk_ref(ref, index, chunk).id))
                fds.append(fd)
                evict(fd, chunk)
            try:
                assert not any(cached_pages(fd, chunk) for fd in fds)
                reader = node.path.open_reader(ref)
                for offset in range(0, chunk + READ, READ):  # into chunk 1: a window of 2
                    got = await node.path.read(ref, offset, READ, reader)
                    assert got == body[offset : offset + READ]
                deadline = time.monotonic() + 10
                whole = set(range(chunk // mmap.PAGESIZE))
                while [cached_pages(fd, chunk) for fd in fds[2:4]] != [whole, whole]:
                    assert time.monotonic() < deadline, "chunks 2 and 3 never came from disk"
                    await asyncio.sleep(0.01)
                assert not any(cached_pages(fd, chunk) for fd in fds[4:])  # beyond the window
                assert reader.in_flight == 0  # no cloud fetch for chunks tier 1 has
                await reader.close()
            finally:
                for fd in fds:
                    os.close(fd)


@pytest.mark.asyncio
async def test_unkept_chunks_are_held_by_the_reader(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """Tier 1 admits nothing on a first access: read-ahead still serves from memory."""
    chunk = 256 * KiB
    body = random_bytes(8 * MiB, seed=5)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("scan.bin", body)
        async with node_on(
            tmp_path / "nvme",
            cloud.store,
            chunk_size=chunk,
            admit_after=2,
            max_window_bytes=2 * MiB,
        ) as node:
            start = await cloud.gets()
            reader = node.path.open_reader(ref)
            most_held = 0
            for offset in range(0, ref.size, 64 * KiB):
                got = await node.path.read(ref, offset, 64 * KiB, reader)
                assert got == body[offset : offset + 64 * KiB], offset
                most_held = max(most_held, reader.held)
            await reader.close()
            assert 0 < most_held <= 8 + 1  # the window (2 MiB) and the chunk being read
            # How many reads find their chunk read ahead depends on the machine's load (16
            # of 32 seen in a full test run on 2 cores; more when alone)
            assert node.stats.prefetch_hits >= 8
            assert len(node.cache) == 0  # nothing was admitted
            assert await cloud.gets() - start == 32  # and yet nothing fetched twice


class SlowCloud(CloudStore):
    """The real store, with latency added to each ranged GET so that prefetches are
    observably under way when the test looks."""

    def __init__(self, store: CloudStore, delay: float) -> None:
        self._store = store
        self._delay = delay
        self.url = store.url
        self.gets = self.gets_now = self.most_gets_at_once = 0

    async def get_range(self, key: str, start: int, length: int, version: str) -> Data:
        self.gets += 1
        self.gets_now += 1
        self.most_gets_at_once = max(self.most_gets_at_once, self.gets_now)
        try:
            await asyncio.sleep(self._delay)
            return await self._store.get_range(key, start, length, version)
        finally:
            self.gets_now -= 1

    async def head(self, key: str) -> ObjectMeta:
        return await self._store.head(key)

    async def put(self, key: str, body: bytes | Path, expect: str | None = None) -> ObjectMeta:
        return await self._store.put(key, body, expect)

    def list(
        self, prefix: str = "", delimiter: bool = True, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        return self._store.list(prefix, delimiter, page_size)

    async def delete(self, key: str) -> None:
        await self._store.delete(key)

    async def copy(
        self, source: str, destination: str, size: int | None = None, version: str | None = None
    ) -> str:
        return await self._store.copy(source, destination, size, version)

    async def put_marker(self, prefix: str) -> None:
        await self._store.put_marker(prefix)

    async def delete_marker(self, prefix: str) -> None:
        await self._store.delete_marker(prefix)


@pytest.mark.asyncio
async def test_random_reads_and_read_ahead_each_fetch_with_half_the_slots(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """Cold reads from many threads at once fetch 8 chunks at a time (16 before: each held a
    chunk in memory, and the peak RSS of the mount's random reads passed 200 MB), and a
    sequential reader's read-ahead still gets its own 8 beside them."""
    chunk = 64 * KiB
    body = random_bytes(128 * chunk, seed=12)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("slots.bin", body)
        slow = SlowCloud(cloud.store, delay=0.05)
        async with node_on(tmp_path / "nvme", slow, chunk_size=chunk) as node:

            async def read(offset: int) -> None:
                assert await node.path.read(ref, offset, 4 * KiB) == body[offset : offset + 4 * KiB]

            await asyncio.gather(*(read(index * chunk + 100) for index in range(32)))
            assert slow.most_gets_at_once == 8

            reader = node.path.open_reader(ref)
            for offset in range(64 * chunk, 72 * chunk, chunk):  # sequential: read-ahead starts
                got = await node.path.read(ref, offset, chunk, reader)
                assert got == body[offset : offset + chunk]
            slow.most_gets_at_once = slow.gets_now
            await asyncio.gather(*(read(index * chunk) for index in range(32, 64)))
            assert slow.most_gets_at_once > 8  # the random reads' 8 and the read-ahead's
            await reader.close()


@pytest.mark.asyncio
async def test_read_ahead_starts_when_the_first_reads_come_out_of_order(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """The kernel sends a sequential reader's reads several at once, and a later one may
    come first: read-ahead starts all the same (each such read used to count as a seek)."""
    chunk = 64 * KiB
    piece = 16 * KiB
    body = random_bytes(4 * MiB, seed=8)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("swapped.bin", body)
        async with node_on(tmp_path / "nvme", cloud.store, chunk_size=chunk) as node:
            reader = node.path.open_reader(ref)
            try:
                # pieces 0, 2, 1, 4, 3, 6, 5...: each pair arrives swapped
                order = [0] + [n + d for n in range(1, 15, 2) for d in (1, 0)]
                for index in order:
                    got = await node.path.read(ref, index * piece, piece, reader)
                    assert got == body[index * piece : (index + 1) * piece], index
                assert reader.window > 0
            finally:
                await reader.close()


@pytest.mark.asyncio
async def test_a_seek_cancels_read_ahead_and_close_leaves_no_task(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    chunk = 64 * KiB
    body = random_bytes(16 * MiB, seed=6)
    baseline = other_tasks()
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("seek.bin", body)
        slow = SlowCloud(cloud.store, delay=0.02)
        async with node_on(tmp_path / "nvme", slow, chunk_size=chunk) as node:
            reader = node.path.open_reader(ref)

            async def read(offset: int, size: int = chunk) -> None:
                got = await node.path.read(ref, offset, size, reader)
                assert got == body[offset : offset + size], offset

            for index in range(8):
                await read(index * chunk)
            assert reader.window >= 16 and reader.in_flight > 0
            async with asyncio.timeout(10):  # a GET of the read-ahead's under way: cancelled next
                while not slow.gets_now:
                    await asyncio.sleep(0.001)
            await read(200 * chunk + 5)  # away
            assert reader.window == 0 and reader.in_flight == 0
            settled = await cloud.gets()
            await asyncio.sleep(0.2)
            assert await cloud.gets() == settled  # nothing goes on behind the reader's back
            # every GET started brought its chunk or was cancelled (one may end before the
            # cancel reaches it), and the stats say which
            fetched = node.stats.tier(Tier.CLOUD)
            assert slow.gets == fetched.hits + fetched.errors + node.stats.cancelled_fetches

            # Bursts of sequential reads, each ended by a seek: tasks stay bounded.
            rng = random.Random(7)
            most_tasks = 0
            for _ in range(12):
                start = rng.randrange(0, 240) * chunk
                for index in range(5):
                    await read(start + index * chunk)
                    most_tasks = max(most_tasks, len(other_tasks() - baseline))
                assert reader.in_flight <= 16
            # prefetches (16), flights (24 with a slot, + a demand read's), the cache's writes
            # of their chunks (24) and housekeeping: bounded, however many seeks
            assert most_tasks <= 16 + 2 * 25 + 2
            await reader.close()
            assert reader.in_flight == 0
        assert node.path.fetches == 0
    await asyncio.sleep(0)
    assert other_tasks() - baseline == set()


# -- versions -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
async def test_a_changed_object_raises_and_never_mixes_versions(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    server = server_for(request, provider)
    assert isinstance(server, servers.S3Server)
    chunk = 256 * KiB
    old, new = random_bytes(MiB, seed=8), random_bytes(MiB, seed=9)
    async with cloud_on(server, tmp_path) as cloud:
        ref = await cloud.put("changing", old)
        async with node_on(tmp_path / "nvme", cloud.store, chunk_size=chunk) as node:
            assert await node.path.read(ref, 0, 1000) == old[:1000]  # chunk 0 in tier 1
            changed = await cloud.put("changing", new)
            assert changed.version != ref.version
            with pytest.raises(VersionChangedError):
                await node.path.read(ref, 0, 600_000)  # chunk 0 cached, 1 and 2 not
            reader = node.path.open_reader(ref)
            with pytest.raises(VersionChangedError):  # read-ahead meets it too, quietly
                for offset in range(chunk, ref.size, 64 * KiB):
                    await node.path.read(ref, offset, 64 * KiB, reader)
            await reader.close()
            # what tier 1 holds of the old version is still the old version's bytes
            assert await node.path.read(ref, 0, 1000) == old[:1000]
            assert await node.path.read(changed, 0, 600_000) == new[:600_000]
            assert node.stats.tier(Tier.CLOUD).errors == 0


# -- tier 2 hook --------------------------------------------------------------------------


class PeersHolding:
    """A tier 2 that holds some chunks (and fails, if told to)."""

    def __init__(self, body: bytes, indexes: set[int], failing: bool = False) -> None:
        self.body = body
        self.indexes = indexes
        self.failing = failing
        self.asked: list[int] = []

    async def fetch(self, chunk: ChunkRef) -> bytes | None:
        self.asked.append(chunk.index)
        if self.failing:
            raise ConnectionResetError("peer went away")
        if chunk.index not in self.indexes:
            return None
        return self.body[chunk.start : chunk.start + chunk.length]

    async def held_elsewhere(self, chunk: ChunkRef, first: Sequence[str] = ()) -> bytes | None:
        return await self.fetch(chunk)

    def owner_elsewhere(self, chunk: ChunkRef) -> bool:
        return True

    def owns_for_others(self, chunk: ChunkRef) -> bool:
        return False

    def owner_ranks_above(self, chunk: ChunkRef) -> bool:
        return True

    async def hand_on(self, chunk: ChunkRef, data: bytes) -> str | None:
        return None


@pytest.mark.asyncio
async def test_peers_come_between_tier_1_and_the_cloud(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    chunk = 256 * KiB
    body = random_bytes(MiB, seed=10)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("peered", body)
        peers = PeersHolding(body, {1})
        async with node_on(tmp_path / "a", cloud.store, chunk_size=chunk, peers=peers) as node:
            start = await cloud.gets()
            assert await node.path.read(ref, 0, 3 * chunk) == body[: 3 * chunk]
            assert await cloud.gets() - start == 2  # chunk 1 came from a peer
            assert sorted(peers.asked) == [0, 1, 2]
            assert await node.path.read(ref, chunk, 10) == body[chunk : chunk + 10]
            assert sorted(peers.asked) == [0, 1, 2]  # promoted to tier 1
            peer = node.stats.tier(Tier.PEER)
            assert (peer.hits, peer.misses, peer.bytes) == (1, 2, chunk)
        failing = PeersHolding(body, {0}, failing=True)
        async with node_on(tmp_path / "b", cloud.store, chunk_size=chunk, peers=failing) as node:
            assert await node.path.read(ref, 0, ref.size) == body
            assert node.stats.tier(Tier.PEER).errors == 4
            assert node.stats.tier(Tier.CLOUD).hits == 4


class Linked:
    """Tier 2 between two read paths of this process, as the peer API joins nodes: a
    chunk's owner (by its index) reads it through for the other; requests go once `open`."""

    def __init__(self, name: str, owners: dict[int, str], open_: asyncio.Event) -> None:
        self.name = name
        self.owners = owners
        self.open = open_
        self.other: ReadPath | None = None
        self.asked = 0

    async def fetch(self, chunk: ChunkRef) -> bytes | None:
        return await self._ask(chunk, cached_only=False)

    async def held_elsewhere(self, chunk: ChunkRef, first: Sequence[str] = ()) -> bytes | None:
        return await self._ask(chunk, cached_only=True)

    def owner_elsewhere(self, chunk: ChunkRef) -> bool:
        return self.owners[chunk.index] != self.name

    def owns_for_others(self, chunk: ChunkRef) -> bool:
        return not self.owner_elsewhere(chunk)

    def owner_ranks_above(self, chunk: ChunkRef) -> bool:
        return self.owner_elsewhere(chunk)  # one view, which holds both nodes

    async def hand_on(self, chunk: ChunkRef, data: bytes) -> str | None:
        return None

    async def _ask(self, chunk: ChunkRef, cached_only: bool) -> bytes | None:
        self.asked += 1
        await self.open.wait()
        assert self.other is not None
        data = await self.other.read_for_peer(chunk, cached_only=cached_only)
        return None if data is None else bytes(data)


@pytest.mark.asyncio
async def test_two_nodes_whose_fetch_slots_wait_on_each_other_still_read(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """X's one fetch slot asks Y for Y's chunk 1, Y's asks X for X's chunk 0, and each
    node's own fetch of its chunk waits for its slot. A request from the other node joined
    that queued fetch, and the two waited on each other for ever (until the peer timeout,
    between processes)."""
    chunk = 256 * KiB
    body = random_bytes(2 * chunk, seed=11)
    owners = {0: "x", 1: "y"}
    opened = asyncio.Event()
    x_peers, y_peers = Linked("x", owners, opened), Linked("y", owners, opened)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        node = partial(node_on, cloud=cloud.store, chunk_size=chunk, peer_size=GiB)
        async with (  # one fetch slot each
            node(tmp_path / "x", peers=x_peers, max_parallel_fetches=1) as x,
            node(tmp_path / "y", peers=y_peers, max_parallel_fetches=1) as y,
        ):
            x_peers.other, y_peers.other = y.path, x.path
            ref = await cloud.put("crossed", body)
            before = await cloud.gets()
            asking = [
                asyncio.create_task(x.path.read(ref, chunk, chunk)),  # takes X's slot, asks Y
                asyncio.create_task(y.path.read(ref, 0, chunk)),  # takes Y's slot, asks X
            ]
            while x_peers.asked + y_peers.asked < 2:
                await asyncio.sleep(0.01)
            queued = [
                asyncio.create_task(x.path.read(ref, 0, chunk)),  # X's own: waits for its slot
                asyncio.create_task(y.path.read(ref, chunk, chunk)),  # Y's own, likewise
            ]
            while x.path.fetches + y.path.fetches < 4:
                await asyncio.sleep(0.01)
            opened.set()
            async with asyncio.timeout(10):
                got = await asyncio.gather(*asking, *queued)
            assert got == [body[chunk:], body[:chunk], body[:chunk], body[chunk:]]
            assert await cloud.gets() - before == 2  # each chunk once, by its owner
            assert (x.stats.tier(Tier.CLOUD).hits, y.stats.tier(Tier.CLOUD).hits) == (1, 1)


class OwnerAway:
    """A tier 2 whose owner answers each `fetch` only once `answer` is set, and whose
    cancelled requests wind down only once `wound_down` is set (a connection being shut).
    Its node is not in its own view of the membership (draining, say): the owner it asks
    may rank below it, and be the very node that asks it for the chunk."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.asked = 0
        self.answer = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.wound_down = asyncio.Event()

    async def fetch(self, chunk: ChunkRef) -> bytes | None:
        self.asked += 1
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            await self.wound_down.wait()
            raise
        return self.body[chunk.start : chunk.start + chunk.length]

    async def held_elsewhere(self, chunk: ChunkRef, first: Sequence[str] = ()) -> bytes | None:
        return None

    def owner_elsewhere(self, chunk: ChunkRef) -> bool:
        return True

    def owns_for_others(self, chunk: ChunkRef) -> bool:
        return False

    def owner_ranks_above(self, chunk: ChunkRef) -> bool:
        return False

    async def hand_on(self, chunk: ChunkRef, data: bytes) -> str | None:
        return None

    def release(self) -> None:
        self.answer.set()
        self.wound_down.set()


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not done():
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_cancelled_fetch_winding_down_leaves_the_next_ones_peer_wait_known(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """A read of a chunk whose owner is another node is cancelled while its request winds
    down; a new read's flight asks the owner meanwhile. The old flight, ending, took the
    chunk off the chunks that wait on a peer, so another node's request for it joined the
    new flight (which may wait on that very node: the two-node stall, until the peer
    timeout). Now that request reads the chunk through at once."""
    chunk = 256 * KiB
    body = random_bytes(chunk, seed=13)
    peers = OwnerAway(body)
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("rewound", body)
        one = chunk_ref(ref, 0, chunk)
        async with node_on(tmp_path / "a", cloud.store, chunk_size=chunk, peers=peers) as node:
            reads: list[asyncio.Task[Data]] = []
            try:
                reads.append(asyncio.create_task(node.path.read(ref, 0, 10)))
                await until(lambda: peers.asked == 1)
                reads[0].cancel()  # its reader gone: its flight is cancelled, winds down
                await peers.cancelled.wait()
                with pytest.raises(asyncio.CancelledError):
                    await reads[0]
                reads.append(asyncio.create_task(node.path.read(ref, 0, 10)))
                await until(lambda: peers.asked == 2)  # the new flight waits on the owner
                peers.wound_down.set()
                await until(lambda: node.path.fetches == 1)  # the old flight is gone
                before = await cloud.gets()
                async with asyncio.timeout(5):
                    for_peer = await node.path.read_for_peer(one, cached_only=False)
                assert for_peer == body
                assert await cloud.gets() - before == 1
                peers.answer.set()
                assert await reads[1] == body[:10]
            finally:
                peers.release()
                await asyncio.gather(*reads, return_exceptions=True)


class Member:
    """Tier 2 of one of several read paths of this process, as the peer API joins nodes:
    `fetch` asks the owner of this node's view of the membership to read the chunk
    through, once `gate` is open; `order` is the rendezvous order, the same on all nodes."""

    def __init__(self, name: str, owner: str, order: list[str], gate: asyncio.Event) -> None:
        self.name = name
        self.owner = owner
        self.order = order
        self.gate = gate
        self.nodes: dict[str, ReadPath] = {}
        self.asked = 0

    async def fetch(self, chunk: ChunkRef) -> bytes | None:
        self.asked += 1
        await self.gate.wait()
        data = await self.nodes[self.owner].read_for_peer(chunk, cached_only=False)
        return None if data is None else bytes(data)

    async def held_elsewhere(self, chunk: ChunkRef, first: Sequence[str] = ()) -> bytes | None:
        return None  # no node holds it yet

    def owner_elsewhere(self, chunk: ChunkRef) -> bool:
        return self.owner != self.name

    def owns_for_others(self, chunk: ChunkRef) -> bool:
        return not self.owner_elsewhere(chunk)

    def owner_ranks_above(self, chunk: ChunkRef) -> bool:
        return self.order.index(self.owner) < self.order.index(self.name)

    async def hand_on(self, chunk: ChunkRef, data: bytes) -> str | None:
        return None


@pytest.mark.asyncio
async def test_a_node_asked_while_it_asks_the_owner_above_it_costs_the_cloud_one_get(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """B ranks above A, and A above C. A's view of the membership has B own the chunk; C's,
    A (B joined after C last heard). C asks A while A's own flight waits on B: A read the
    chunk from the cloud for C and B for A, so the cloud sent it twice. B never waits on A
    for the chunk (a node joins only flights waiting on a node above it), so A's answer
    to C now joins its own flight: the cloud sends the chunk once."""
    chunk = 256 * KiB
    body = random_bytes(chunk, seed=14)
    order = ["b", "a", "c"]
    a_asks = asyncio.Event()
    opened = asyncio.Event()
    opened.set()
    members = {
        "a": Member("a", "b", order, a_asks),
        "b": Member("b", "b", order, opened),
        "c": Member("c", "a", order, opened),
    }
    async with cloud_on(seaweedfs, tmp_path) as cloud, AsyncExitStack() as stack:
        nodes = {
            name: await stack.enter_async_context(
                node_on(tmp_path / name, cloud.store, chunk_size=chunk, peer_size=GiB, peers=member)
            )
            for name, member in members.items()
        }
        for member in members.values():
            member.nodes = {name: node.path for name, node in nodes.items()}
        ref = await cloud.put("disputed", body)
        before = await cloud.gets()
        reads: list[asyncio.Task[Data]] = []
        try:
            reads.append(asyncio.create_task(nodes["a"].path.read(ref, 0, chunk)))
            await until(lambda: members["a"].asked == 1)  # A's flight waits on B
            reads.append(asyncio.create_task(nodes["c"].path.read(ref, 0, chunk)))
            await until(lambda: members["c"].asked == 1)  # C asks A
            a_asks.set()
            async with asyncio.timeout(10):
                got = await asyncio.gather(*reads)
            assert got == [body, body]
            assert await cloud.gets() - before == 1
            hits = [nodes[name].stats.tier(Tier.CLOUD).hits for name in "abc"]
            assert hits == [0, 1, 0]  # by the owner
        finally:
            a_asks.set()
            await asyncio.gather(*reads, return_exceptions=True)


# -- memory -------------------------------------------------------------------------------


def big_file(path: Path, size: int, block: bytes) -> Callable[[int, Data], bool]:
    """Write `size` bytes of `block`s, each starting with its 8-byte index; return a check
    of one read (offset, data) that needs no copy of the file."""
    with path.open("wb") as out:
        for index in range(size // len(block)):
            out.write(index.to_bytes(8, "little") + block[8:])

    def check(offset: int, data: Data) -> bool:
        index, at = divmod(offset, len(block))
        if at + len(data) > len(block):
            raise AssertionError("reads must not cross a block")
        if at < 8:
            head = index.to_bytes(8, "little")[at:]
            return data[: len(head)] == head and data[len(head) :] == block[8 : at + len(data)]
        return data == block[at : at + len(data)]

    return check


@pytest.mark.asyncio
async def test_streaming_a_large_object_keeps_memory_bounded(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    size = GiB
    source = tmp_path / "big.bin"
    check = big_file(source, size, random_bytes(MiB, seed=11))
    async with cloud_on(seaweedfs, tmp_path) as cloud:
        ref = await cloud.put("big.bin", source)
        source.unlink()
        # tier 1 smaller than the object: it evicts as the stream goes
        async with node_on(
            tmp_path / "nvme", cloud.store, chunk_size=4 * MiB, nvme_size=256 * MiB
        ) as node:
            reader = node.path.open_reader(ref)
            baseline = memory_kib("VmRSS")
            reset_peak()
            started = time.monotonic()
            for offset in range(0, size, READ):
                data = await node.path.read(ref, offset, READ, reader)
                assert len(data) == READ and check(offset, data), offset
            elapsed = time.monotonic() - started
            growth = (memory_kib("VmHWM") - baseline) * KiB
            await reader.close()
            assert growth < 150 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"
            assert node.stats.prefetch_hits > 0
            print(f"1 GiB streamed in {elapsed:.1f} s; RSS peak +{growth / MiB:.0f} MiB")

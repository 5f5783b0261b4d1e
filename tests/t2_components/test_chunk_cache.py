"""Tier 1 on real files: what it serves, what survives a restart or a kill -9, the caps."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from tierfs.cache.base import Origin
from tierfs.cache.chunk_cache import MAX_OPEN_FILES, DiskChunkCache
from tierfs.cache.eviction import Admission
from tierfs.chunks import ChunkId, ChunkRef, ObjectRef, chunk_ref
from tierfs.stats import NodeStats, Tier

KiB, MiB = 2**10, 2**20
OpenCache = Callable[..., Awaitable[DiskChunkCache]]


def content(key: str, index: int, size: int) -> bytes:
    """The bytes of chunk `index` of `key`: the same in the crash writer and here."""
    return random.Random(f"{key}/{index}").randbytes(size)


def make_chunks(key: str, size: int, chunk_size: int) -> list[tuple[ChunkRef, bytes]]:
    obj = ObjectRef(key, "v1", size)
    refs = [chunk_ref(obj, i, chunk_size) for i in range(-(-size // chunk_size))]
    return [(ref, content(key, ref.index, ref.length)) for ref in refs]


def chunk_files(root: Path) -> dict[str, int]:
    """Every file under root/chunks (temp files included) and its size."""
    found: dict[str, int] = {}
    for folder in os.scandir(root / "chunks"):
        for entry in os.scandir(folder.path):
            try:
                found[entry.name] = entry.stat().st_size
            except FileNotFoundError:
                continue  # unlinked while we looked
    return found


def du_file_bytes(root: Path) -> int:
    """`du -sb` of root/chunks, less the folders' own sizes: the bytes of the files."""
    out = subprocess.run(["du", "-sb", str(root / "chunks")], capture_output=True, check=True)
    folders = [root / "chunks", *(root / "chunks").iterdir()]
    return int(out.stdout.split()[0]) - sum(f.stat().st_size for f in folders)


def open_chunk_files(root: Path) -> list[str]:
    """What this process's fds under root/chunks point at ("... (deleted)": unlinked)."""
    chunks = str(root / "chunks")
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue  # the fd of listdir itself
        if target.startswith(chunks):
            targets.append(target)
    return targets


def index_ids(root: Path) -> set[str]:
    with sqlite3.connect(root / "index.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT id FROM chunks")}


async def stored_then_closed(open_cache: OpenCache, origin: Origin) -> list[tuple[ChunkRef, bytes]]:
    """The 4 chunks of a 4 MiB object "f", stored by a cache (default root) then closed."""
    chunks = make_chunks("f", 4 * MiB, MiB)
    cache = await open_cache()
    for ref, data in chunks:
        assert await cache.store(ref, data, origin)
    await cache.close()
    return chunks


@pytest_asyncio.fixture
async def open_cache(tmp_path: Path) -> AsyncIterator[OpenCache]:
    """Open a DiskChunkCache (default: tmp_path/nvme, 64 MiB each); all closed at the end."""
    caches: list[DiskChunkCache] = []

    async def open_(
        root: Path | None = None,
        *,
        nvme_size: int = 64 * MiB,
        peer_size: int = 64 * MiB,
        stats: NodeStats | None = None,
        admit_after: int = 1,
    ) -> DiskChunkCache:
        cache = await DiskChunkCache.create(
            root or tmp_path / "nvme",
            nvme_size=nvme_size,
            peer_size=peer_size,
            stats=stats or NodeStats(),
            admit_after=admit_after,
        )
        caches.append(cache)
        return cache

    yield open_
    for cache in caches:
        await cache.close()


def test_random_slices_read_back_exactly(tmp_path: Path) -> None:
    stats = NodeStats()
    chunks = make_chunks("big.bin", 7 * MiB + 123, 2 * MiB) + make_chunks("small", 900_000, 300_000)
    with asyncio.Runner() as runner:
        cache = runner.run(
            DiskChunkCache.create(tmp_path, nvme_size=64 * MiB, peer_size=0, stats=stats)
        )
        reads = 0

        @settings(max_examples=300, deadline=None)
        @given(st.data())
        def check(draw: st.DataObject) -> None:
            nonlocal reads
            ref, data = draw.draw(st.sampled_from(chunks))
            offset = draw.draw(st.integers(0, len(data)))
            length = draw.draw(st.integers(0, len(data) - offset + 1000))  # may run past the end
            assert runner.run(cache.read(ref, offset, length)) == data[offset : offset + length]
            reads += 1

        try:
            for ref, data in chunks:
                assert runner.run(cache.store(ref, data, Origin.LOCAL))
            check()  # the first read of each chunk checks its checksum, later ones pread
        finally:
            runner.run(cache.close())
    local = stats.tier(Tier.LOCAL)
    assert (local.hits, local.misses, stats.corrupt_chunks) == (reads, 0, 0)


@pytest.mark.asyncio
async def test_miss_and_bad_arguments(open_cache: OpenCache) -> None:
    stats = NodeStats()
    cache = await open_cache(stats=stats)
    (ref, data), (other, _) = make_chunks("f", 2 * MiB, MiB)
    assert await cache.read(ref, 0, 10) is None
    assert stats.tier(Tier.LOCAL).misses == 1
    with pytest.raises(ValueError):
        await cache.store(ref, data[:-1], Origin.LOCAL)  # not the whole chunk
    with pytest.raises(ValueError):
        await cache.read(ref, -1, 10)
    assert not cache.holds(ref.id) and not cache.holds(other.id)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "delete", "truncate-after-verified", "flip-across-restart"]
)
async def test_damaged_chunk_is_a_counted_miss_then_restored(
    open_cache: OpenCache, tmp_path: Path, damage: str
) -> None:
    stats = NodeStats()
    cache = await open_cache(stats=stats)
    (ref, data), (good, good_data) = make_chunks("f", 3 * MiB, 1536 * KiB)
    assert await cache.store(ref, data, Origin.LOCAL)
    assert await cache.store(good, good_data, Origin.LOCAL)
    path = tmp_path / "nvme" / "chunks" / ref.id[:2] / ref.id
    if damage == "truncate-after-verified":
        assert await cache.read(ref, 0, 10) == data[:10]
    if damage == "flip-across-restart":
        await cache.close()
    if damage.startswith("flip"):
        with open(path, "r+b") as f:
            f.seek(777_777)
            f.write(bytes([data[777_777] ^ 0x40]))
    elif damage.startswith("truncate"):
        os.truncate(path, len(data) - 1)
    else:
        path.unlink()
    if damage == "flip-across-restart":
        cache = await open_cache(stats=stats)

    assert await cache.read(ref, len(data) - 1000, 1000) is None
    assert stats.corrupt_chunks == 1
    assert stats.tier(Tier.LOCAL).misses == 1
    assert not path.exists()
    assert not cache.holds(ref.id)
    await cache.maintain()  # the index has caught up
    assert ref.id not in index_ids(tmp_path / "nvme")
    assert await cache.read(good, 5, 5) == good_data[5:10]  # the neighbour is untouched

    assert await cache.store(ref, data, Origin.LOCAL)  # refetched and stored again
    assert await cache.read(ref, 1_000_000, 100) == data[1_000_000:1_000_100]
    assert path.read_bytes() == data
    assert stats.corrupt_chunks == 1


@pytest.mark.asyncio
async def test_restart_keeps_chunks_and_their_lru_order(
    open_cache: OpenCache, tmp_path: Path
) -> None:
    chunks = make_chunks("warm", 8 * MiB, MiB)
    cache = await open_cache(nvme_size=8 * MiB)
    for ref, data in chunks:
        assert await cache.store(ref, data, Origin.LOCAL)
    for ref, data in chunks[:4]:  # LRU order now: 4 5 6 7 0 1 2 3
        assert await cache.read(ref, 0, 100) == data[:100]
    await cache.close()

    # Warm after the restart, in the same LRU order: a smaller budget on this start
    # evicts the two least recently used (4 and 5).
    stats = NodeStats()
    cache = await open_cache(nvme_size=6 * MiB, stats=stats)
    assert (stats.evictions, stats.evicted_bytes) == (2, 2 * MiB)
    assert len(cache) == 6 and cache.used(Origin.LOCAL) == 6 * MiB
    for ref, data in chunks:  # served at once: nothing to refetch
        assert await cache.read(ref, 0, len(data)) == (None if ref.index in (4, 5) else data)
    assert (stats.tier(Tier.LOCAL).hits, stats.tier(Tier.LOCAL).misses) == (6, 2)
    assert stats.corrupt_chunks == 0
    assert sum(chunk_files(tmp_path / "nvme").values()) == 6 * MiB


@pytest.mark.asyncio
async def test_start_removes_orphans_temps_and_bad_rows(
    open_cache: OpenCache, tmp_path: Path
) -> None:
    root = tmp_path / "nvme"
    chunks = await stored_then_closed(open_cache, Origin.PEER)

    def path(ref: ChunkRef) -> Path:
        return root / "chunks" / ref.id[:2] / ref.id

    orphan = chunk_ref(ObjectRef("other", "v9", MiB), 0, MiB)
    path(orphan).write_bytes(b"no row for me")
    temp = root / "chunks" / "7f" / f".{'7f' * 16}.ab12cd34.tmp"
    temp.write_bytes(b"half a chunk")
    stray = root / "chunks" / "00" / "junk"
    stray.write_bytes(b"?")
    staged = root / "staging" / "upload-in-progress"
    staged.write_bytes(b"the write path's")
    path(chunks[0][0]).unlink()  # a row whose file is missing
    with open(path(chunks[1][0]), "ab") as f:  # a file whose size differs from its row
        f.write(b"!")

    stats = NodeStats()
    cache = await open_cache(stats=stats)

    assert not path(orphan).exists() and not temp.exists() and not stray.exists()
    assert staged.read_bytes() == b"the write path's"
    assert not path(chunks[1][0]).exists()
    assert sorted(chunk_files(root)) == sorted(ref.id for ref, _ in chunks[2:])
    assert index_ids(root) == {ref.id for ref, _ in chunks[2:]}
    assert cache.used(Origin.PEER) == 2 * MiB
    for ref, data in chunks:
        assert await cache.read(ref, 0, len(data)) == (data if ref.index >= 2 else None)
    assert stats.corrupt_chunks == 1  # the resized file


@pytest.mark.asyncio
@pytest.mark.warnings_expected
@pytest.mark.parametrize("damage", ["every byte", "all but the header"])
async def test_a_damaged_index_is_removed_and_tier1_starts_empty(
    open_cache: OpenCache, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """The index is never fsynced: a power cut (or a bad disk) may leave it damaged. The
    next start says so, removes it and the chunk files it listed, and tier 1 works again
    (it stopped the client with a traceback before 2026-12-07)."""
    root = tmp_path / "nvme"
    chunks = await stored_then_closed(open_cache, Origin.LOCAL)
    index = root / "index.sqlite3"
    keep = 0 if damage == "every byte" else 100  # SQLite's file header
    with index.open("r+b") as file:
        file.seek(keep)
        file.write(random.Random(damage).randbytes(index.stat().st_size - keep))

    with caplog.at_level(logging.WARNING, logger="tierfs.cache.index"):
        cache = await open_cache()
    assert [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(cache) == 0 and cache.used(Origin.LOCAL) == 0
    assert chunk_files(root) == {}
    for ref, _ in chunks:
        assert await cache.read(ref, 0, 100) is None
    ref, data = chunks[0]
    assert await cache.store(ref, data, Origin.LOCAL)
    await cache.close()
    cache = await open_cache()  # the new index is sound and keeps what was stored since
    assert await cache.read(ref, 0, len(data)) == data


CRASH_WRITER = """
import asyncio, random, sys
from pathlib import Path
from tierfs.cache.base import Origin
from tierfs.cache.chunk_cache import MAX_OPEN_FILES, DiskChunkCache
from tierfs.chunks import ObjectRef, chunk_ref
from tierfs.stats import NodeStats

root, key, first, chunk_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
obj = ObjectRef(key, "v1", 100_000 * chunk_size)

async def writer(cache, start):
    for index in range(start, 100_000, 4):
        ref = chunk_ref(obj, index, chunk_size)
        data = random.Random(f"{key}/{index}").randbytes(chunk_size)
        assert await cache.store(ref, data, Origin.LOCAL)
        print(index, flush=True)

async def main():
    cache = await DiskChunkCache.create(
        Path(root), nvme_size=2**40, peer_size=0, stats=NodeStats())
    await asyncio.gather(*(writer(cache, first + n) for n in range(4)))

asyncio.run(main())
"""


def test_kill_9_mid_write_never_serves_wrong_bytes(tmp_path: Path) -> None:
    """SIGKILL a process storing chunks (4 writers, so most kills land mid-write), many
    times; a fresh cache on the same folder serves every acknowledged chunk exactly."""
    root, key, chunk_size = tmp_path / "nvme", "crash.bin", 512 * KiB
    script = tmp_path / "writer.py"
    script.write_text(CRASH_WRITER)
    acknowledged: set[int] = set()
    cut_writes, first = 0, 0
    # Six kills at least, more (up to 20) until one lands mid-write: on a slow disk the
    # scan for temp files can miss every write of six (seen once in CI).
    for kills in range(20):
        if kills >= 6 and cut_writes:
            break
        log = tmp_path / "writer.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(root), key, str(first), str(chunk_size)],
                stdout=out,
            )
        try:
            deadline = time.monotonic() + 20
            while log.stat().st_size == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "the writer died on its own"
            time.sleep(random.uniform(0.05, 0.3))
            until = time.monotonic() + 2  # kill as soon as a temp file is seen
            while time.monotonic() < until and not any(
                n.startswith(".") for n in chunk_files(root)
            ):
                pass
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        cut_writes += any(n.startswith(".") for n in chunk_files(root))
        lines = log.read_text().split("\n")[:-1]  # the last one may be cut short
        acknowledged.update(int(line) for line in lines)
        first = max(acknowledged) + 1

    assert cut_writes >= 1, "no kill landed in the middle of a write"
    stats = NodeStats()

    async def reopen() -> None:
        cache = await DiskChunkCache.create(root, nvme_size=2**40, peer_size=0, stats=stats)
        try:
            assert not any(n.startswith(".") for n in chunk_files(root))
            obj = ObjectRef(key, "v1", 100_000 * chunk_size)
            served = 0
            for index in range(first + 8):
                ref = chunk_ref(obj, index, chunk_size)
                data = await cache.read(ref, 0, chunk_size)
                if index in acknowledged:
                    assert data == content(key, index, chunk_size), f"chunk {index}"
                else:
                    assert data is None or data == content(key, index, chunk_size)
                served += data is not None
            assert served == len(cache) >= len(acknowledged) > 0
        finally:
            await cache.close()

    asyncio.run(reopen())
    assert stats.corrupt_chunks == 0


Mount = Callable[[Path, str], Path]  # the `tmpfs` fixture (tests/conftest.py)


def used_bytes(mount: Path) -> int:
    """The bytes a filesystem has in use: one syscall, so an atomic snapshot."""
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.asyncio
async def test_cap_holds_under_a_larger_workload(
    open_cache: OpenCache, tmp_path: Path, tmpfs: Mount
) -> None:
    """The chunks folder is a tmpfs of its own, so statvfs gives the bytes of the chunk
    files (temp files included) atomically; a thread samples it throughout."""
    root, cap = tmp_path / "nvme", 6 * MiB
    chunks_fs = tmpfs(root / "chunks", "64m")
    empty = used_bytes(chunks_fs)
    stats = NodeStats()
    cache = await open_cache(nvme_size=cap, peer_size=MiB, stats=stats)
    # Chunks of 1 MiB and last chunks of 100 KiB multiples: whole pages, as tmpfs counts.
    chunks = [c for n in range(8) for c in make_chunks(f"obj{n}", 5 * MiB + n * 100 * KiB, MiB)]
    assert sum(len(d) for _, d in chunks) > 7 * cap

    peak, samples, stop = 0, 0, threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while not stop.is_set():
            peak = max(peak, used_bytes(chunks_fs) - empty)
            samples += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(2):  # the second round refetches what the first evicted
            # Three stores and two reads at a time: with the reads pinning their chunks,
            # the budget has room for all (the victims are never chunks being read).
            for batch in range(0, len(chunks), 3):
                group = chunks[batch : batch + 3]
                reads = random.choices(chunks[: batch + 1], k=2)
                results = await asyncio.gather(
                    *(cache.store(ref, data, Origin.LOCAL) for ref, data in group),
                    *(cache.read(ref, 0, 4096) for ref, _ in reads),
                )
                assert all(results[: len(group)])
                assert du_file_bytes(root) == cache.used(Origin.LOCAL) <= cap
                assert sum(chunk_files(root).values()) == cache.used(Origin.LOCAL)
    finally:
        stop.set()
        sampler.join()
    assert samples > 100
    assert 0 < peak <= cap
    assert stats.evicted_bytes == 2 * sum(len(d) for _, d in chunks) - cache.used(Origin.LOCAL)
    assert stats.evictions == 2 * len(chunks) - len(cache)


@pytest.mark.asyncio
async def test_peer_and_local_budgets_are_independent(open_cache: OpenCache) -> None:
    stats = NodeStats()
    cache = await open_cache(nvme_size=4 * MiB, peer_size=3 * MiB, stats=stats)
    local = make_chunks("mine", 10 * MiB, MiB)
    peer = make_chunks("theirs", 10 * MiB, MiB)
    for ref, data in local[:4]:
        assert await cache.store(ref, data, Origin.LOCAL)
    for ref, data in peer:
        assert await cache.store(ref, data, Origin.PEER)
    assert all(cache.holds(ref.id) for ref, _ in local[:4])
    assert [cache.holds(ref.id) for ref, _ in peer] == [False] * 7 + [True] * 3
    assert (cache.used(Origin.LOCAL), cache.used(Origin.PEER)) == (4 * MiB, 3 * MiB)
    for ref, data in local[4:]:
        assert await cache.store(ref, data, Origin.LOCAL)
    assert all(cache.holds(ref.id) for ref, _ in peer[7:])
    assert stats.evictions == 7 + 6

    # Over its budget: not stored, counted, and nothing was evicted for it.
    (huge, huge_data), *_ = make_chunks("huge", 8 * MiB, 5 * MiB)
    assert not await cache.store(huge, huge_data, Origin.LOCAL)
    (big, big_data), *_ = make_chunks("big", 8 * MiB, 4 * MiB)
    assert not await cache.store(big, big_data, Origin.PEER)
    assert await cache.store(big, big_data, Origin.LOCAL)  # fits the other budget
    assert stats.not_cached == 2
    assert await cache.read(big, 0, 4 * MiB) == big_data


@pytest.mark.asyncio
@pytest.mark.warnings_expected  # the disk-full warning, asserted below
async def test_disk_full_evicts_and_retries_then_gives_up_quietly(
    tmp_path: Path, tmpfs: Mount, caplog: pytest.LogCaptureFixture
) -> None:
    """Budgets of 64 MiB on an 8 MiB disk: stores evict to make room and never raise."""
    small_disk = tmpfs(tmp_path / "small-disk", "8m")
    stats = NodeStats()
    cache = await DiskChunkCache.create(
        small_disk, nvme_size=64 * MiB, peer_size=64 * MiB, stats=stats
    )
    try:
        chunks = make_chunks("a", 12 * MiB, MiB) + make_chunks("b", 12 * MiB, MiB)
        with caplog.at_level(logging.INFO, logger="tierfs.cache"):
            for n, (ref, data) in enumerate(chunks):
                origin = Origin.LOCAL if n % 2 else Origin.PEER
                assert await cache.store(ref, data, origin), f"chunk {n} not stored"
                assert await cache.read(ref, 0, len(data)) == data
        assert stats.evictions > 0 and stats.not_cached == 0
        assert sum(chunk_files(small_disk).values()) < 8 * MiB
        for ref, data in chunks:  # what is still held is served exactly
            assert await cache.read(ref, 0, len(data)) in (None, data)
        disk_full = [r for r in caplog.records if "disk full" in r.getMessage()]
        assert len(disk_full) == 1 and disk_full[0].levelno == logging.WARNING  # said once

        (huge, huge_data), *_ = make_chunks("huge", 20 * MiB, 12 * MiB)  # larger than the disk
        assert not await cache.store(huge, huge_data, Origin.LOCAL)
        assert stats.not_cached == 1
        assert not any(n.startswith(".") for n in chunk_files(small_disk))
        ref, data = make_chunks("after", MiB, MiB)[0]  # the cache still works
        assert await cache.store(ref, data, Origin.LOCAL)
        assert await cache.read(ref, 0, MiB) == data
    finally:
        await cache.close()


@pytest.mark.asyncio
async def test_admission_after_two_asks(open_cache: OpenCache) -> None:
    cache = await open_cache(admit_after=2, nvme_size=4 * MiB)
    hot = make_chunks("hot", 4 * MiB, MiB)
    for ref, data in hot:
        assert not cache.wants(ref)
        assert cache.wants(ref)
        assert await cache.store(ref, data, Origin.LOCAL)
    scan = make_chunks("scan", 200 * MiB, MiB)
    stored = 0
    for ref, data in scan:  # a one-off scan: each chunk asked for once
        if cache.wants(ref):
            stored += await cache.store(ref, data, Origin.LOCAL)
    assert stored == 0
    assert all(cache.holds(ref.id) for ref, _ in hot)

    # The counts are bounded: the oldest are forgotten first.
    admission = Admission(2)
    ids = [ChunkId(f"{n:032x}") for n in range(Admission.MAX_TRACKED + 1)]
    for chunk_id in ids:
        admission.ask(chunk_id)
    assert admission.ask(ids[1])  # still remembered: a second ask
    assert not admission.ask(ids[0])  # forgotten: counts from one again

    always = await open_cache(root=cache.root.parent / "other")
    ref = hot[0][0]
    assert all(always.wants(ref) for _ in range(3))


@pytest.mark.asyncio
async def test_concurrent_stores_of_one_chunk(open_cache: OpenCache, tmp_path: Path) -> None:
    cache = await open_cache()
    (ref, data), *_ = make_chunks("same", 3 * MiB, 3 * MiB)
    assert all(await asyncio.gather(*(cache.store(ref, data, Origin.LOCAL) for _ in range(8))))
    assert chunk_files(tmp_path / "nvme") == {ref.id: len(data)}
    assert cache.used(Origin.LOCAL) == len(data)
    assert await cache.read(ref, 0, len(data)) == data


@pytest.mark.asyncio
async def test_reads_racing_eviction_get_right_bytes_or_none(open_cache: OpenCache) -> None:
    stats = NodeStats()
    cache = await open_cache(nvme_size=3 * MiB, stats=stats)
    chunks = make_chunks("race", 8 * MiB, 1536 * KiB) + make_chunks("small", 2 * MiB, 256 * KiB)
    local = stats.tier(Tier.LOCAL)
    # Race for 1.5 s, and on until there were hits and evictions enough to race (a slow
    # fsync here has made 1.5 s hold fewer than 30 stores).
    least, most = time.monotonic() + 1.5, time.monotonic() + 60
    wrong = 0

    def racing() -> bool:
        now = time.monotonic()
        return now < least or (now < most and (local.hits <= 50 or stats.evictions <= 50))

    async def store_forever() -> None:
        while racing():
            ref, data = random.choice(chunks)
            await cache.store(ref, data, Origin.LOCAL)
            await asyncio.sleep(0)

    async def read_forever() -> None:
        nonlocal wrong
        while racing():
            ref, data = random.choice(chunks)
            offset = random.randrange(len(data))
            length = random.choice([100, 64 * KiB, MiB, len(data)])
            got = await cache.read(ref, offset, length)
            wrong += got is not None and got != data[offset : offset + length]
            await asyncio.sleep(0)

    await asyncio.gather(*(store_forever() for _ in range(3)), *(read_forever() for _ in range(4)))
    assert wrong == 0
    assert local.hits > 50 and stats.evictions > 50
    assert stats.corrupt_chunks == 0 and local.errors == 0
    assert cache.used(Origin.LOCAL) <= 3 * MiB
    held = {ref.id for ref, _ in chunks if cache.holds(ref.id)}
    assert {Path(t).name for t in open_chunk_files(cache.root)} <= held  # none unlinked


@pytest.mark.asyncio
async def test_housekeeping_drops_entries_whose_file_vanished(
    open_cache: OpenCache, tmp_path: Path
) -> None:
    cache = await open_cache()
    chunks = make_chunks("gone", 3 * MiB, MiB)
    for ref, data in chunks:
        assert await cache.store(ref, data, Origin.LOCAL)
    victim = chunks[1][0]
    (tmp_path / "nvme" / "chunks" / victim.id[:2] / victim.id).unlink()
    await cache.maintain()
    assert not cache.holds(victim.id)
    assert cache.used(Origin.LOCAL) == 2 * MiB
    assert index_ids(tmp_path / "nvme") == {ref.id for ref, _ in chunks} - {victim.id}


@pytest.mark.asyncio
async def test_a_moved_chunk_is_held_under_its_new_id_alone_and_after_a_restart(
    open_cache: OpenCache, tmp_path: Path
) -> None:
    """`move`: the file of a chunk becomes another chunk's (a copy of the object in the
    bucket) with its bytes, budget and checksum; the old one is gone, from the index too."""
    root = tmp_path / "nvme"
    moves: list[tuple[str, object]] = []
    cache = await open_cache(nvme_size=4 * MiB)
    cache.on_stored = lambda chunk: moves.append(("stored", chunk.obj.key))
    cache.on_evicted = lambda key, version, index: moves.append(("evicted", key))
    (ref, data), (other, other_data) = make_chunks("tmp", 2 * MiB, MiB)
    (moved, _), (taken, _) = make_chunks("final", 2 * MiB, MiB)
    for chunk, body in ((ref, data), (other, other_data), (taken, other_data)):
        assert await cache.store(chunk, body, Origin.LOCAL)
    moves.clear()
    assert await cache.read(ref, 0, 10) == data[:10]  # checked once: the move keeps that
    assert await cache.move(ref, moved)
    assert not await cache.move(other, taken)  # held already: nothing changes
    assert not await cache.move(ref, moved)  # no longer held
    assert moves == [("evicted", "tmp"), ("stored", "final")]
    assert not cache.holds(ref.id) and cache.holds(other.id) and cache.holds(taken.id)
    assert await cache.read(moved, 0, MiB) == data
    assert cache.used(Origin.LOCAL) == 3 * MiB
    assert set(chunk_files(root)) == {moved.id, other.id, taken.id}
    await cache.close()

    reopened = await open_cache(nvme_size=4 * MiB)
    assert index_ids(root) == {moved.id, other.id, taken.id}
    assert await reopened.read(moved, 0, MiB) == data  # its checksum checked again
    assert await reopened.read(ref, 0, 10) is None


@pytest.mark.asyncio
async def test_a_forgotten_chunks_fd_is_closed_and_never_serves_its_successor(
    open_cache: OpenCache, tmp_path: Path
) -> None:
    root = tmp_path / "nvme"
    cache = await open_cache(nvme_size=2 * MiB)
    (ref, data), (other, other_data) = make_chunks("f", 2 * MiB, MiB)
    path = str(root / "chunks" / ref.id[:2] / ref.id)
    assert await cache.store(ref, data, Origin.LOCAL)
    for _ in range(3):  # the first read checks the checksum, the next ones keep the file open
        assert await cache.read(ref, 10, 100) == data[10:110]
    assert open_chunk_files(root) == [path]

    assert await cache.forget_object("f") == 1
    assert open_chunk_files(root) == []
    changed = bytes(b ^ 0xFF for b in data)  # the same id, other bytes: a new file
    assert await cache.store(ref, changed, Origin.LOCAL)
    for _ in range(3):
        assert await cache.read(ref, 10, 100) == changed[10:110]
    assert open_chunk_files(root) == [path]

    assert await cache.store(other, other_data, Origin.LOCAL)
    (third, third_data), *_ = make_chunks("g", MiB, MiB)
    assert await cache.store(third, third_data, Origin.LOCAL)  # evicts `ref`, the oldest
    assert not cache.holds(ref.id)
    assert open_chunk_files(root) == []
    assert await cache.store(ref, data, Origin.LOCAL)  # evicts `other`
    for _ in range(3):
        assert await cache.read(ref, 10, 100) == data[10:110]
    await cache.close()
    assert open_chunk_files(root) == []


@pytest.mark.asyncio
async def test_open_files_are_bounded(open_cache: OpenCache, tmp_path: Path) -> None:
    cache = await open_cache()
    chunks = make_chunks("many", (MAX_OPEN_FILES + 44) * 4 * KiB, 4 * KiB)
    for ref, data in chunks:
        assert await cache.store(ref, data, Origin.LOCAL)
    for _ in range(3):
        for ref, data in chunks:
            assert await cache.read(ref, 1, 10) == data[1:11]
    assert len(open_chunk_files(tmp_path / "nvme")) == MAX_OPEN_FILES
    await cache.close()
    assert open_chunk_files(tmp_path / "nvme") == []


@pytest.mark.asyncio
async def test_warming_checks_chunks_ahead_of_their_first_reads(
    open_cache: OpenCache, tmp_path: Path
) -> None:
    """Read-ahead over chunks held but not checked since a restart checks them before
    their reads come: a good one is then served at once (`read_now`, no await), a
    damaged one is dropped and never served."""
    stats = NodeStats()
    cache = await open_cache(stats=stats)
    (good, good_data), (bad, bad_data) = make_chunks("f", 8 * MiB, 4 * MiB)
    for ref, data in ((good, good_data), (bad, bad_data)):
        assert await cache.store(ref, data, Origin.LOCAL)
    await cache.close()
    bad_path = tmp_path / "nvme" / "chunks" / bad.id[:2] / bad.id
    with open(bad_path, "r+b") as f:
        f.seek(123_456)
        f.write(bytes([bad_data[123_456] ^ 0x01]))
    cache = await open_cache(stats=stats)
    assert cache.read_now(good, 0, 100) is None  # its first read would check it

    cache.warm(good.id)
    cache.warm(bad.id)
    deadline = time.monotonic() + 10
    while (cache.holds(bad.id) or cache.read_now(good, 0, 100) is None) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.01)
    assert cache.read_now(good, 5, 100) == good_data[5:105]
    assert not cache.holds(bad.id) and not bad_path.exists()
    assert stats.corrupt_chunks == 1
    assert await cache.read(bad, 0, 100) is None


@pytest.mark.asyncio
async def test_large_reads_out_of_the_page_cache(open_cache: OpenCache, tmp_path: Path) -> None:
    """Reads of 1 MiB or more: inline when their pages are in the page cache, else on a
    thread; the same bytes either way."""
    cache = await open_cache()
    (ref, data), *_ = make_chunks("cold", 4 * MiB, 4 * MiB)
    assert await cache.store(ref, data, Origin.LOCAL)
    assert await cache.read(ref, 0, len(data)) == data  # checked
    assert await cache.read(ref, 5, 3 * MiB) == data[5 : 5 + 3 * MiB]  # page-cached
    fd = os.open(tmp_path / "nvme" / "chunks" / ref.id[:2] / ref.id, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert await cache.read(ref, 7, 3 * MiB) == data[7 : 7 + 3 * MiB]
    assert await cache.read(ref, 0, len(data)) == data

"""Tier 1: `DiskChunkCache`, chunk files on local NVMe behind the `ChunkCache` contract.

Threading: the in-memory entries (eviction.py) are the truth while running and change
only in synchronous code on the loop. File work that can block goes to a small thread
pool: writes of chunks over INLINE_WRITE, unlinks (about 1 ms for a 4 MiB file on ext4
here), checksum checks of 1 MiB or more, and reads of 1 MiB or more unless their pages are
in the page cache. A
read of a verified chunk is a pread on the chunk's fd, kept open (`OpenFiles`) while
the chunk is held; a smaller one, or a larger one found in the page cache, is a copy of
at most 0.3 ms and runs inline. SQLite runs on its own thread (index.py); hits update
access info in memory, written to the index in batches: a chunk's LRU position and last
access move at its first hit after each batch, so LRU order is exact to FLUSH_INTERVAL.

Crash safety follows from the order of a store: write a temp file, rename, then insert
the row. A crash leaves at worst a temp file or a file without a row (both removed
on start) or a row without a file (dropped on start); anything else is caught by the
checksum check of the first read after start.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import mmap
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from tierfs.cache import files
from tierfs.cache.base import Origin
from tierfs.cache.eviction import Admission, Entry, LruBudget, OpenFiles
from tierfs.cache.index import ChunkIndex, ChunkRow
from tierfs.chunks import ChunkId, ChunkRef, Data
from tierfs.stats import NodeStats, Tier

log = logging.getLogger(__name__)

T = TypeVar("T")

# Checksum checks and reads from this size go to a thread; smaller preads run inline.
LARGE_IO = 2**20
# ... but for reads up to this size whose pages are in the page cache: copying 4 MiB takes
# ~0.3 ms here, the hop to a thread and back as long again or more (bench/tier1.py).
INLINE_READ = 4 * 2**20
# Chunk files up to this size are written on the loop (temp file, write, rename: 42 us for
# 16 KiB here, 56 us for 64 KiB): the hop to a thread and back, and the GIL changing hands,
# cost more. Cold reads of 1000 16 KiB files went from 317-517 to 517-805 files/s.
INLINE_WRITE = 64 * 2**10
# Chunk files kept open for reads: 1 GiB of 4 MiB chunks, well within the usual 1024 fds.
MAX_OPEN_FILES = 256
# Blocking file work in parallel: writes of concurrent stores, large reads, unlinks.
IO_THREADS = 8
# Access info reaches the index this often; a crash loses at most this much LRU order,
# and LRU order is exact to this much (a hit moves a chunk once per interval, ~0.3 µs).
FLUSH_INTERVAL = 2.0
# Entries whose file vanished (deleted behind our back) are dropped this often.
CHECK_INTERVAL = 60.0
# A full disk: evict this many times the chunk's size (room for it, and a margin for
# the index and the other writes under way), then retry once.
DISK_FULL_FREE_FACTOR = 2


@dataclass(frozen=True, slots=True)
class HeldChunk:
    """A chunk tier 1 holds, as the peer API lists it."""

    id: ChunkId
    key: str
    version: str
    index: int
    size: int
    origin: Origin
    hits: int
    last_access: float


@dataclass(frozen=True, slots=True)
class ChunkFile:
    """The open file of a verified chunk (`DiskChunkCache.open_verified`)."""

    file: BinaryIO
    size: int
    checksum: str


class DiskChunkCache:
    """The `ChunkCache` of one node: see `tierfs.cache.base` for the contract.

    Beyond it, for the peer API and tests: `open_verified()` (a chunk's file for sendfile),
    `chunks_of()`, `page()`, `forget_object()`, `maintain()` (one round of background
    housekeeping), `holds()`, `used()`, `limit()`, `count()` and `len()`. Build with `create`.
    """

    def __init__(
        self,
        root: Path,
        chunks_dir: str,
        index: ChunkIndex,
        stats: NodeStats,
        budgets: dict[Origin, LruBudget],
        admission: Admission,
    ) -> None:
        self.root = root
        self._chunks_dir = chunks_dir
        self._index = index
        self._stats = stats
        self._budgets = budgets
        self._admission = admission
        self._local = stats.tier(Tier.LOCAL)
        self._entries: dict[ChunkId, Entry] = {}
        self._files = OpenFiles(MAX_OPEN_FILES)
        self._touched: dict[ChunkId, Entry] = {}  # accessed since the last flush
        self._storing: dict[ChunkId, asyncio.Task[bool]] = {}
        self._unlinking: dict[ChunkId, asyncio.Future[Any]] = {}  # files going away
        self._tasks: set[asyncio.Task[Any]] = set()  # stores, checks, unlinks under way
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="tierfs-t1")
        self._maintainer: asyncio.Task[None] | None = None
        self._warned_disk_full = False
        self._said_no_room = False  # since the last chunk written: said once, not per chunk
        self._closed = False
        # Told of every chunk stored, to announce it to the cluster (the coordinator's
        # location index); must be quick and must not raise.
        self.on_stored: Callable[[ChunkRef], object] | None = None
        # Told (key, version, chunk index) of every chunk that leaves the cache: evicted,
        # dropped as corrupt or vanished, or forgotten; must be quick. Errors are logged.
        self.on_evicted: Callable[[str, str, int], object] | None = None

    @classmethod
    async def create(
        cls,
        root: Path,
        *,
        nvme_size: int,
        peer_size: int,
        stats: NodeStats,
        admit_after: int = 1,
    ) -> DiskChunkCache:
        """Open the cache in `root` (created if needed), reconcile index and files, and
        start the background housekeeping. `nvme_size` bounds the bytes of chunks of
        `Origin.LOCAL`, `peer_size` those of `Origin.PEER`."""
        if nvme_size < 0 or peer_size < 0:
            raise ValueError("cache sizes must be >= 0")
        admission = Admission(admit_after)
        budgets = {Origin.LOCAL: LruBudget(nvme_size), Origin.PEER: LruBudget(peer_size)}
        chunks_dir = await asyncio.to_thread(files.make_dirs, root)
        index = await ChunkIndex.open(root)
        cache = cls(root, chunks_dir, index, stats, budgets, admission)
        try:
            await cache._reconcile()
        except BaseException:
            await cache._shutdown()
            raise
        cache._maintainer = asyncio.create_task(cache._maintain_forever())
        return cache

    # -- the ChunkCache contract ------------------------------------------------------

    async def read(self, chunk: ChunkRef, offset: int, length: int) -> Data | None:
        """See `ChunkCache.read`. A range past the chunk's end is clipped (like pread);
        a negative offset or length is a ValueError."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        self._check_open()
        entry = self._entries.get(chunk.id)
        if entry is None:
            self._local.misses += 1
            return None
        if offset + length > entry.size:
            length = max(0, entry.size - offset)
        got = self._read_open(entry, offset, length)
        if got is not None:
            return got
        entry.readers += 1  # pinned: eviction skips it, so its file stays while we read
        try:
            data: Data | None = None
            # A small read of a large chunk checks it around the page cache: the reads
            # that follow are likely small too (random reads), and need not its every page.
            small = length < LARGE_IO <= entry.size
            if entry.verified or await asyncio.shield(self._check(entry, small)):
                data = await self._pread(entry, offset, length)
        finally:
            self._unpin(entry)
        if data is None:
            self._local.misses += 1
            return None
        self._hit(entry, len(data))
        return data

    def read_now(self, chunk: ChunkRef, offset: int, length: int) -> bytes | None:
        """The usual hit without an await: bytes of a checked chunk whose file is open,
        under LARGE_IO or (up to INLINE_READ) in the page cache. None when that does not
        apply (nothing counted): then `read`."""
        entry = self._entries.get(chunk.id)
        if entry is None or offset < 0 or length < 0 or self._closed:
            return None
        return self._read_open(entry, offset, min(length, max(0, entry.size - offset)))

    def _read_open(self, entry: Entry, offset: int, length: int) -> bytes | None:
        """A page-cache copy from the entry's open file, with no await, so no eviction
        comes between and no pin is needed; None on any trouble (then the slow path)."""
        fd = self._files.get(entry)  # open only for verified entries
        if fd is None or not _reads_inline(fd, offset, length):
            return None
        try:
            got = os.pread(fd, length, offset)
        except OSError:
            return None
        if len(got) != length:
            return None
        self._hit(entry, length)
        return got

    def wants(self, chunk: ChunkRef) -> bool:
        """See `ChunkCache.wants`."""
        return self._admission.ask(chunk.id)

    async def store(
        self, chunk: ChunkRef, data: Data, origin: Origin, *, around_page_cache: bool = False
    ) -> bool:
        """See `ChunkCache.store`. `data` must be the whole chunk (ValueError otherwise).
        A chunk already held, or being stored by another call, is not written twice.
        Cancelling the caller does not cut the write short."""
        if len(data) != chunk.length:
            raise ValueError(f"chunk {chunk.id} is {chunk.length} bytes, got {len(data)}")
        self._check_open()
        if chunk.id in self._entries:
            return True
        task = self._storing.get(chunk.id)
        if task is None:
            task = self._spawn(self._store(chunk, data, origin, around_page_cache))
            self._storing[chunk.id] = task
            task.add_done_callback(lambda _: self._storing.pop(chunk.id, None))
        return await asyncio.shield(task)

    async def close(self) -> None:
        """See `ChunkCache.close`: waits for stores under way, then flushes the index."""
        if self._closed:
            return
        self._closed = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._flush_access()
        finally:
            await self._shutdown()

    # -- beyond the contract ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, chunk_id: ChunkId) -> bool:
        """Whether `chunk_id` is cached now."""
        return chunk_id in self._entries

    def warm(self, chunk_id: ChunkId) -> None:
        """Start reading a held chunk's file into the page cache ahead of its reads, so
        that they are served at once from memory; nothing if the chunk is not held.
        Neither a hit nor an access. A chunk not checked yet is checked now (the check
        reads the file), else the kernel is advised (`files.advise_read`, on a thread)."""
        entry = self._entries.get(chunk_id)
        if entry is None or not entry.size or self._closed:
            return
        if not entry.verified:
            self._check(entry, False)  # its first read waits for this task, not starting one
            return
        fd = self._files.get(entry)
        if fd is not None:
            # The advice walks every page even when all are there (~15% of 4 MiB hits), so
            # ask first whether they are. Where the kernel cannot count them, ask mincore
            # about the last page, filled last; not a read probe: one that misses may read
            # its page through, and the advice would be skipped.
            cached = files.all_cached(fd, 0, entry.size)
            if cached is None:
                last = (entry.size - 1) // mmap.PAGESIZE * mmap.PAGESIZE
                cached = files.resident_pages(fd, last, entry.size - last) == b"\x01"
            if cached:
                return
        self._io.submit(files.advise_read, self._path(entry.id), entry.size)

    def used(self, origin: Origin) -> int:
        """Bytes on disk (or reserved by writes under way) counted against `origin`."""
        return self._budgets[origin].used

    def limit(self, origin: Origin) -> int:
        return self._budgets[origin].limit

    def count(self, origin: Origin) -> int:
        """Chunks held against `origin`."""
        return len(self._budgets[origin])

    @asynccontextmanager
    async def open_verified(self, chunk: ChunkRef) -> AsyncIterator[ChunkFile | None]:
        """The open file of `chunk`, to send as it is, when held with its checksum already
        checked; else None and nothing counted (`read` then counts, and checks it).

        The entry is pinned against eviction and the file open for the block; a hit of
        the whole chunk is counted. A file gone or of the wrong size is dropped (None).
        """
        self._check_open()
        entry = self._entries.get(chunk.id)
        if entry is None or not entry.verified:
            yield None
            return
        entry.readers += 1
        try:
            file = await self._open(entry)
            if file is None:
                yield None
                return
            with file:
                self._hit(entry, entry.size)
                yield ChunkFile(file, entry.size, entry.checksum)
        finally:
            self._unpin(entry)

    def held(self) -> list[HeldChunk]:
        """Every chunk held now (what a node announces to the coordinator when it starts)."""
        return [_held(e) for e in self._entries.values()]

    async def chunks_of(self, key: str, version: str | None = None) -> list[HeldChunk]:
        """The chunks held of object `key`: at `version`, or at any version (None)."""
        self._check_open()
        ids = await self._index.ids_of(key, version)
        return [_held(e) for i in ids if (e := self._entries.get(i)) is not None]

    async def page(
        self, after: ChunkId | None, limit: int
    ) -> tuple[list[HeldChunk], ChunkId | None]:
        """Up to `limit` chunks held, in id order from the first past `after`, and the
        cursor of the next page (None at the end)."""
        self._check_open()
        rows = await self._index.page(after, limit)
        held = [_held(e) for r in rows if (e := self._entries.get(r.id)) is not None]
        return held, rows[-1].id if rows and len(rows) == limit else None

    async def forget_object(self, key: str, version: str | None = None) -> int:
        """Drop the chunks of object `key` (at `version`, or every version), pinned or
        not (a read under way then gets its bytes or a miss); how many there were.
        Returns once their files are gone."""
        self._check_open()
        ids = await self._index.ids_of(key, version)
        gone = [e for i in ids if (e := self._entries.get(i)) is not None and self._forget(e)]
        await asyncio.shield(self._spawn(self._release(gone)))
        return len(gone)

    async def move(self, old: ChunkRef, new: ChunkRef) -> bool:
        """Hold chunk `old`'s file as chunk `new`: the same bytes under another key or
        version (a copy in the bucket, as a rename makes). False, and nothing changed,
        when `old` is not held (or is being checked), `new` is held or being stored, or
        the file cannot be renamed. Its checksum, origin and hits go with it; it is the
        most recently used."""
        self._check_open()
        entry = self._entries.get(old.id)
        busy = new.id in self._entries or new.id in self._storing or new.id in self._unlinking
        if entry is None or entry.checking is not None or entry.size != new.length or busy:
            return False
        try:  # on the loop: a rename in one folder tree is tens of microseconds
            os.rename(self._path(old.id), self._path(new.id))
        except OSError as exc:
            log.info("tier 1: chunk %s not moved to %s: %s", old.id, new.id, exc)
            return False
        self._forget(entry)  # its bytes stay counted: they are the moved entry's
        obj = new.obj
        moved = Entry(
            new.id,
            obj.key,
            obj.version,
            new.index,
            entry.size,
            entry.checksum,
            entry.origin,
            entry.last_access,
            entry.hits,
            verified=entry.verified,
        )
        self._entries[new.id] = moved
        self._budgets[entry.origin].add(moved)
        try:
            await self._index.insert(_row(moved))
        except sqlite3.Error as exc:
            log.warning("tier 1: cannot index chunk %s: %s", new.id, exc)
            if self._forget(moved):
                await asyncio.shield(self._spawn(self._release([moved])))
            return False
        if self.on_stored is not None:
            self.on_stored(new)
        return True

    async def maintain(self) -> None:
        """One round of housekeeping (the background task runs it periodically): write
        access info to the index and drop entries whose file vanished."""
        await self._flush_access()
        await self._drop_vanished()
        await self._index.flush()

    # -- store --------------------------------------------------------------------------

    async def _store(
        self, chunk: ChunkRef, data: Data, origin: Origin, around_page_cache: bool
    ) -> bool:
        budget = self._budgets[origin]
        size = len(data)
        victims = budget.victims(size)
        if victims is None:
            self._stats.not_cached += 1
            return False
        # Reserve before writing, and release the victims' bytes only once their files
        # are gone: the files of this origin never add up to more than its limit.
        freed = sum(v.size for v in victims)
        for victim in victims:
            self._forget(victim)
            self._stats.evictions += 1
            self._stats.evicted_bytes += victim.size
        budget.used += max(0, size - freed)
        kept = False
        try:
            if victims:
                try:
                    await self._unlink([v.id for v in victims])
                finally:
                    budget.used -= max(0, freed - size)
            unlinking = self._unlinking.get(chunk.id)
            if unlinking is not None and not unlinking.done():
                await asyncio.shield(unlinking)  # an old file of this id goes first
            digest = await self._write(chunk.id, data, around_page_cache)
            if digest is None:
                self._stats.not_cached += 1
                return False
            obj = chunk.obj
            entry = Entry(
                chunk.id, obj.key, obj.version, chunk.index, size, digest, origin, time.time(), 0
            )
            try:
                await self._index.insert(_row(entry))
            except sqlite3.Error as exc:
                log.warning("tier 1: cannot index chunk %s: %s", chunk.id, exc)
                await self._unlink([chunk.id])
                self._stats.not_cached += 1
                return False
            self._entries[chunk.id] = entry
            budget.add(entry)
            self._admission.forget(chunk.id)
            kept = True
            if self.on_stored is not None:
                self.on_stored(chunk)
            return True
        finally:
            if not kept:
                budget.used -= size

    async def _write(self, chunk_id: ChunkId, data: Data, around_page_cache: bool) -> str | None:
        """Write the chunk file and return its checksum; None if the disk would not take
        it (full even after evicting, or an I/O error: the caller serves it uncached)."""
        path = self._path(chunk_id)
        for attempt in (1, 2):
            try:
                write = partial(files.write_chunk, path, data, around_page_cache=around_page_cache)
                written = write() if len(data) <= INLINE_WRITE else await self._run_io(write)
                self._said_no_room = False
                return written
            except OSError as exc:
                if exc.errno not in files.DISK_FULL_ERRNOS:
                    log.warning("tier 1: cannot write chunk %s: %s", chunk_id, exc)
                    self._local.errors += 1
                    return None
                if not self._warned_disk_full:
                    self._warned_disk_full = True
                    log.warning(
                        "tier 1: disk full under %s before the cache budget is reached; "
                        "evicting to make room (is the budget larger than the disk?)",
                        self.root,
                    )
                if attempt == 1:
                    await self._free_disk(DISK_FULL_FREE_FACTOR * len(data))
        if not self._said_no_room:  # before 2026-12-07 one line per chunk read: 256 a GiB
            self._said_no_room = True
            log.info(
                "tier 1: no room for chunk %s (%d bytes) even after evicting: chunks are "
                "served without being kept until one fits again",
                chunk_id,
                len(data),
            )
        return None

    async def _free_disk(self, amount: int) -> None:
        """Evict least recently used chunks of either origin, about `amount` bytes."""
        oldest = heapq.merge(
            *(b.unpinned() for b in self._budgets.values()), key=lambda e: e.last_access
        )
        victims: list[Entry] = []
        for entry in oldest:
            if amount <= 0:
                break
            victims.append(entry)
            amount -= entry.size
        for victim in victims:
            self._forget(victim)
            self._stats.evictions += 1
            self._stats.evicted_bytes += victim.size
        await self._release(victims)

    # -- read ---------------------------------------------------------------------------

    def _hit(self, entry: Entry, size: int) -> None:
        counters = self._local
        counters.hits += 1
        counters.bytes += size
        entry.hits += 1
        if entry.id not in self._touched:  # LRU order and last access: exact to a flush
            entry.last_access = time.time()
            self._budgets[entry.origin].touch(entry)
            self._touched[entry.id] = entry

    async def _open(self, entry: Entry) -> BinaryIO | None:
        """The file of a verified `entry`, open; None (and the chunk dropped) if it is gone,
        unreadable or not of its size."""
        try:
            file = open(self._path(entry.id), "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            await self._discard(entry, exc)
            return None
        try:
            size = os.fstat(file.fileno()).st_size
        except OSError as exc:
            file.close()
            await self._discard(entry, exc)
            return None
        if size != entry.size:
            file.close()
            await self._discard(entry, None)
            return None
        return file

    async def _pread(self, entry: Entry, offset: int, length: int) -> bytes | None:
        """`length` bytes at `offset` of a verified, held and pinned chunk; None (and the
        chunk dropped) if its file is gone, short or unreadable."""
        try:
            fd = self._files.get(entry)
            if fd is None:  # before any await: the entry is held, so the file is its own
                fd = files.open_chunk(self._path(entry.id))
                self._files.add(entry, fd)
            if _reads_inline(fd, offset, length):
                data = files.read_at(fd, offset, length)
            else:
                data = await self._run_io(partial(files.read_at, fd, offset, length))
        except OSError as exc:
            await self._discard(entry, exc)
            return None
        if len(data) != length:
            await self._discard(entry, None)
            return None
        return data

    def _check(self, entry: Entry, around_page_cache: bool) -> asyncio.Task[bool]:
        """The first read's checksum check of `entry`: one task that concurrent first
        reads share. True when the file is good (its reads follow from the page cache,
        where the check brought it, unless `around_page_cache`: `files.verify`); False
        when it was bad, and is dropped."""
        task = entry.checking
        if task is None:
            entry.readers += 1  # released by the task
            task = entry.checking = self._spawn(self._verify(entry, around_page_cache))
            task.add_done_callback(lambda _: setattr(entry, "checking", None))
        return task

    async def _verify(self, entry: Entry, around_page_cache: bool) -> bool:
        path = self._path(entry.id)
        check = partial(
            files.verify, path, entry.size, entry.checksum, around_page_cache=around_page_cache
        )
        try:
            good = await self._run_io(check) if entry.size >= LARGE_IO else check()
            held = self._entries.get(entry.id) is entry  # so the file at `path` is its own
            if good and held and self._files.get(entry) is None:
                self._files.add(entry, files.open_chunk(path))  # its next reads: `read_now`
        except OSError as exc:
            await self._discard(entry, exc)
            return False
        finally:
            self._unpin(entry)
        if not good:
            await self._discard(entry, None)
            return False
        entry.verified = True
        return True

    def _unpin(self, entry: Entry) -> None:
        """A read of `entry` is over: the last one closes the fd of a forgotten entry."""
        entry.readers -= 1
        if not entry.readers and self._entries.get(entry.id) is not entry:
            self._files.close(entry)

    # -- removal ------------------------------------------------------------------------

    def _forget(self, entry: Entry) -> bool:
        """Stop serving `entry`, close its fd (or leave that to its last reader) and queue
        the removal of its row; False if already gone. Its bytes stay counted until its
        file is unlinked (`_release`)."""
        if self._entries.get(entry.id) is not entry:
            return False
        del self._entries[entry.id]
        if not entry.readers:
            self._files.close(entry)
        self._touched.pop(entry.id, None)
        self._budgets[entry.origin].forget(entry)
        self._index.delete_soon([entry.id])
        if self.on_evicted is not None:
            try:
                self.on_evicted(entry.key, entry.version, entry.index)
            except Exception:
                log.exception("tier 1: on_evicted failed for chunk %s", entry.id)
        return True

    async def _discard(self, entry: Entry, error: OSError | None) -> None:
        """Drop a chunk whose file is missing, short or corrupt (`error` None or
        FileNotFoundError: counted in `corrupt_chunks`) or unreadable (another OSError:
        a tier-1 error, the tier degrades to a miss). Returns once its file is gone."""
        if not self._forget(entry):
            return  # another reader got there first
        if error is None or isinstance(error, FileNotFoundError):
            self._stats.corrupt_chunks += 1
            log.info("tier 1: chunk %s is missing, short or corrupt; dropped", entry.id)
        else:
            self._local.errors += 1
            log.warning("tier 1: cannot read chunk %s: %s; dropped", entry.id, error)
        await asyncio.shield(self._spawn(self._release([entry])))  # a cancelled read too

    async def _release(self, entries: list[Entry]) -> None:
        """Unlink the files of forgotten entries, then give their bytes back."""
        if not entries:
            return
        try:
            await self._unlink([e.id for e in entries])
        finally:
            for entry in entries:
                self._budgets[entry.origin].used -= entry.size

    async def _unlink(self, ids: list[ChunkId]) -> None:
        await self._remove([self._path(i) for i in ids], ids)

    async def _remove(self, paths: list[str], ids: Sequence[ChunkId] = ()) -> None:
        """Unlink files; a store of one of `ids` (their chunks) waits until it is done."""
        job = self._run_io(partial(files.remove_all, paths))
        for chunk_id in ids:
            self._unlinking[chunk_id] = job
        try:
            failed = await asyncio.shield(job)  # a cancelled caller must not cancel the job
        finally:
            for chunk_id in ids:
                if self._unlinking.get(chunk_id) is job:
                    del self._unlinking[chunk_id]
        # A file that cannot be removed has no row any more: an orphan, removed at start.
        for path, exc in failed:
            log.warning("tier 1: cannot remove %s: %s", path, exc)

    # -- start-up and housekeeping ------------------------------------------------------

    async def _reconcile(self) -> None:
        """Make index and files agree: rows without a file or with a file of the wrong
        size are dropped, files without a row and temp files of cut writes removed."""
        rows = await self._index.load()
        found = await self._run_io(partial(files.scan, self._chunks_dir))
        dropped: list[ChunkId] = []
        doomed = found.temps + found.strays
        for row in rows:  # oldest first: the LRU order of the last run
            size = found.chunks.pop(row.id, None)
            if size is None or row.size != size:
                dropped.append(row.id)
                if size is not None:
                    doomed.append(self._path(row.id))
                    self._stats.corrupt_chunks += 1
                continue
            entry = _entry(row)
            self._entries[row.id] = entry
            budget = self._budgets[row.origin]
            budget.used += row.size
            budget.add(entry)
        doomed.extend(self._path(orphan) for orphan in found.chunks)
        if dropped:
            await self._index.delete(dropped)
        await self._remove(doomed)
        # The budgets may have shrunk since the last run.
        for budget in self._budgets.values():
            victims = budget.victims(0) or []
            for victim in victims:
                self._forget(victim)
                self._stats.evictions += 1
                self._stats.evicted_bytes += victim.size
            await self._release(victims)
        await self._index.flush()
        log.info(
            "tier 1 at %s: %d chunks kept, %d rows dropped, %d stray files removed",
            self.root,
            len(self._entries),
            len(dropped),
            len(doomed),
        )

    async def _drop_vanished(self) -> None:
        known = list(self._entries.values())  # before listing: their files exist by now
        present = await self._run_io(partial(files.list_ids, self._chunks_dir))
        gone = 0
        for entry in known:
            if entry.id not in present and not entry.readers and self._forget(entry):
                self._budgets[entry.origin].used -= entry.size  # no file left to unlink
                gone += 1
        if gone:
            log.info("tier 1: %d chunk files vanished; entries dropped", gone)

    async def _flush_access(self) -> None:
        batch = [(e.last_access, e.hits, e.id) for e in self._touched.values()]
        self._touched.clear()
        try:
            await self._index.touch(batch)
        except sqlite3.Error as exc:  # only LRU order is lost
            log.warning("tier 1: cannot record access info: %s", exc)

    async def _maintain_forever(self) -> None:
        last_check = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self._flush_access()
                if time.monotonic() - last_check >= CHECK_INTERVAL:
                    last_check = time.monotonic()
                    await self._drop_vanished()
            except Exception:
                log.exception("tier 1: housekeeping failed")

    # -- plumbing -----------------------------------------------------------------------

    def _path(self, chunk_id: ChunkId) -> str:
        return files.chunk_path(self._chunks_dir, chunk_id)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"tier-1 cache at {self.root} is closed")

    def _run_io(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._io, fn)

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shutdown(self) -> None:
        try:
            await self._index.close()
        finally:
            await asyncio.to_thread(self._io.shutdown, wait=True)
            self._files.close_all()  # no pread can be under way on a thread now


def _reads_inline(fd: int, offset: int, length: int) -> bool:
    """Whether a read of `fd` runs on the loop: small, or up to INLINE_READ and found in
    the page cache (a copy, no disk I/O); else it goes to a thread."""
    return length < LARGE_IO or (length <= INLINE_READ and files.in_page_cache(fd, offset, length))


def _held(entry: Entry) -> HeldChunk:
    return HeldChunk(
        entry.id,
        entry.key,
        entry.version,
        entry.index,
        entry.size,
        entry.origin,
        entry.hits,
        entry.last_access,
    )


def _entry(row: ChunkRow) -> Entry:
    """The entry of a chunk the index recorded in an earlier run (not yet checked)."""
    return Entry(
        row.id,
        row.key,
        row.version,
        row.chunk_index,
        row.size,
        row.checksum,
        row.origin,
        row.last_access,
        row.hits,
    )


def _row(entry: Entry) -> ChunkRow:
    """The index row of `entry`."""
    return ChunkRow(
        entry.id,
        entry.key,
        entry.version,
        entry.index,
        entry.size,
        entry.checksum,
        entry.last_access,
        entry.hits,
        entry.origin,
    )

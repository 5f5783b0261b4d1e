"""Per-handle read-ahead: spot sequential reads and fetch the next chunks before they are read.

A `SequentialReader` watches the reads of one open file. Once `SEQUENTIAL_AFTER` reads in
a row continue where the previous one ended, it fetches the chunks ahead of the reader
through its `ChunkSource` (the read path: single-flight, tier order, promotion to tier 1).
The window starts at one chunk and doubles with every new chunk the reader enters, up to
`max_window_bytes`; a seek away shrinks it to nothing and cancels what is no longer ahead.

Memory: at most `max_in_flight` prefetches are under way, and those plus the chunks held
here stay within the window, not counting chunks that tier 1 is still writing (their
flights hold them anyway; the read path bounds those). A chunk is held from its arrival
until tier 1 has it, so no read fetches it again meanwhile; one tier 1 would not keep
(disk full, not admitted) is held until the reader has passed it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from tierfs.chunks import ChunkRef, Data, ObjectRef, chunk_ref
from tierfs.stats import NodeStats

log = logging.getLogger(__name__)

# Reads in a row that must continue where the previous one ended before read-ahead starts.
SEQUENTIAL_AFTER = 2
# The largest window: tens of MiB keep a fast link busy whatever the chunk size.
MAX_WINDOW_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class Prefetched:
    """The outcome of one prefetch, known as soon as the chunk has arrived."""

    fetched: bool  # this prefetch brought the chunk from a remote tier
    data: Data | None = None  # the chunk, while tier 1 may still refuse to keep it
    kept: asyncio.Future[bool] | None = None  # resolves to whether tier 1 kept it


class ChunkSource(Protocol):
    """What the prefetcher needs from the read path."""

    async def prefetch(self, chunk: ChunkRef) -> Prefetched:
        """Fetch `chunk` and promote it to tier 1, unless it is there or on its way.

        Returns once the chunk has arrived (promotion goes on behind). Raises what a read
        of the chunk would raise (VersionChangedError, CloudError...).
        """
        ...

    def has(self, chunk: ChunkRef) -> bool:
        """Whether `chunk` is known, without an await, to be in tier 1 or on its way there
        (a prefetch of it would do nothing). False when unsure."""
        ...

    def warm(self, chunk: ChunkRef) -> None:
        """`chunk` is in tier 1 (or on its way): start reading it from disk into memory
        ahead of its reads, without an await. Nothing where that does not apply."""
        ...


class SequentialReader:
    """The sequential-access detector and read-ahead of one open file at one version.

    The read path calls `on_read` at the start of every read, `claim` for each chunk it
    serves and `hold` for each chunk it fetched; the handle calls `close` when it is
    released. `slots` bounds the prefetches fetching at once, shared by every reader of one
    read path. For one event loop.
    """

    def __init__(
        self,
        ref: ObjectRef,
        source: ChunkSource,
        *,
        chunk_size: int,
        stats: NodeStats,
        max_in_flight: int = 16,
        max_window_bytes: int = MAX_WINDOW_BYTES,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        if chunk_size <= 0 or max_in_flight <= 0:
            raise ValueError("chunk_size and max_in_flight must be > 0")
        self.ref = ref
        self._source = source
        self._chunk_size = chunk_size
        self._stats = stats
        self._max_in_flight = max_in_flight
        self._max_window = max(1, math.ceil(max_window_bytes / chunk_size))
        self._slots = slots or asyncio.Semaphore(max_in_flight)
        self._last_index = (ref.size - 1) // chunk_size  # -1 for an empty object
        self._end: int | None = None  # where the previous read ended
        self._streak = 0  # reads in a row that continued the previous one
        self._window = 0  # chunks ahead of the reader to fetch; 0: not sequential
        self._first = 0  # the chunks of the latest read: [_first, _current]
        self._current = -1
        self._next = 0  # the next chunk to prefetch
        self._tasks: dict[int, asyncio.Task[None]] = {}  # prefetches whose chunk has not come
        self._ready: set[int] = set()  # prefetched, not yet read
        self._claimed: set[int] = set()  # read while its prefetch was under way
        self._held: dict[int, Data] = {}  # chunks in memory: being stored, or not kept
        self._storing: set[int] = set()  # held chunks tier 1 is writing (their flight holds them)
        self._closed = False

    @property
    def window(self) -> int:
        """The read-ahead window in chunks (0 when reads are not sequential)."""
        return self._window

    @property
    def in_flight(self) -> int:
        """Prefetches under way (cancelled ones count until they have wound down)."""
        return len(self._tasks)

    @property
    def held(self) -> int:
        """Chunks held in memory because tier 1 did not keep them (or is still writing)."""
        return len(self._held)

    def on_read(self, offset: int, size: int) -> None:
        """Note a read of [offset, offset + size) and start or stop read-ahead accordingly."""
        end = min(offset + size, self.ref.size)
        if self._closed or offset >= end:
            return
        first, last = offset // self._chunk_size, (end - 1) // self._chunk_size
        if offset == self._end and self._window and first == self._first == last == self._current:
            self._end = end  # the steady state, within one chunk: nothing else changes
            self._streak += 1
            return
        previous = self._end
        if previous is None:
            self._end = end
            self._first = first
        elif previous <= offset <= previous + size:
            # on from the previous read, or one read of its size past it: the kernel sends
            # a sequential reader's reads several at once, and a later one may come first
            # (counted as a seek, such reads kept read-ahead off for the first 72 MiB of a
            # cold read). Not further: a random reader's next read would count.
            self._streak += 1
            self._end = end
        elif previous - self._chunk_size <= offset < previous or (
            self._window and previous < offset < self._ahead_end()
        ):
            # concurrent reads arriving out of order, or a skip within the window: no seek
            self._end = max(end, previous)
        else:
            self._seek(first, last)
            self._end = end
            return
        if first > self._first:
            self._drop_behind(first)
        if self._streak >= SEQUENTIAL_AFTER:
            if not self._window:
                self._window = 1
            elif last > self._current:
                self._window = min(self._window * 2, self._max_window)
        self._current = max(self._current, last)
        self._pump()

    def next_piece(self, offset: int, size: int) -> Data | None:
        """The steady state of a sequential reader, noted: bytes [offset, offset + size)
        when they continue the previous read within the chunk held for it; else None
        (nothing noted: the read goes through `on_read`)."""
        index = self._current
        start = index * self._chunk_size
        end = offset + size
        if (
            offset != self._end
            or not self._window
            or index != self._first
            or offset < start
            or end > min(start + self._chunk_size, self.ref.size)
            or (held := self._held.get(index)) is None
        ):
            return None
        self._end = end
        self._streak += 1
        return memoryview(held)[offset - start : end - start]

    def claim(self, index: int) -> Data | None:
        """The read path serves chunk `index`: count a prefetch hit if it was prefetched,
        and return the chunk if it is held here."""
        if index in self._ready:
            self._ready.discard(index)
            self._stats.prefetch_hits += 1
        elif index in self._tasks:
            self._claimed.add(index)  # counted once its prefetch turns out to have fetched
        return self._held.get(index)

    def hold(self, index: int, data: Data, kept: asyncio.Future[bool] | None = None) -> None:
        """Chunk `index` arrived (`kept`: whether tier 1 keeps it; None: read from there):
        hold it until the reader has passed it, so its next reads neither fetch it again nor
        re-read (and re-verify) it from tier 1."""
        if self._closed or index < self._first:
            return
        self._held[index] = data
        if kept is not None and not kept.done():
            self._storing.add(index)
            kept.add_done_callback(partial(self._stored, index))

    async def close(self) -> None:
        """Cancel every prefetch, wait until they are gone, and drop held chunks."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._held.clear()
        self._storing.clear()
        self._ready.clear()
        self._claimed.clear()

    def _ahead_end(self) -> int:
        """The end of the bytes read-ahead covers now."""
        return (self._current + self._window + 1) * self._chunk_size

    def _seek(self, first: int, last: int) -> None:
        """A jump away: no more read-ahead, and cancel what is not part of this read."""
        self._streak = 0
        self._window = 0
        self._first, self._current = first, last
        self._next = last + 1
        for index, task in self._tasks.items():
            if not first <= index <= last:
                task.cancel()
        self._held = {i: data for i, data in self._held.items() if first <= i <= last}
        self._storing &= self._held.keys()
        self._ready = {i for i in self._ready if first <= i <= last}
        self._claimed.clear()

    def _drop_behind(self, first: int) -> None:
        """The reader moved on to chunk `first`: forget what lies behind it."""
        for index in range(self._first, first):
            self._held.pop(index, None)
            self._storing.discard(index)
            self._ready.discard(index)
            self._claimed.discard(index)
            task = self._tasks.get(index)
            if task is not None:
                task.cancel()
        self._first = first

    def _pump(self) -> None:
        """Start prefetches up to the window, within the in-flight and memory bounds:
        chunks arriving plus chunks held (but for those tier 1 is writing) <= window."""
        if self._closed or not self._window:
            return
        horizon = min(self._current + self._window, self._last_index)
        self._next = max(self._next, self._current + 1)
        while (
            self._next <= horizon
            and len(self._tasks) < self._max_in_flight
            and len(self._tasks) + len(self._held) - len(self._storing) < self._window
        ):
            index = self._next
            self._next += 1
            if index in self._ready or index in self._held or index in self._tasks:
                continue
            chunk = chunk_ref(self.ref, index, self._chunk_size)
            if self._source.has(chunk):
                self._source.warm(chunk)  # no task for a chunk tier 1 has: its disk read only
                continue
            task = asyncio.create_task(self._prefetch(index), name=f"prefetch {index}")
            self._tasks[index] = task
            task.add_done_callback(partial(self._done, index))

    async def _prefetch(self, index: int) -> None:
        result = await self._fetch(index)
        if result is None or not result.fetched:
            return  # in tier 1 already, fetched for someone else, or the reader got there
        self._stats.prefetched_chunks += 1
        if index in self._claimed:
            self._claimed.discard(index)
            self._stats.prefetch_hits += 1
        elif index > self._current:
            self._ready.add(index)  # a later read claims it
        if result.data is not None and result.kept is not None:
            self.hold(index, result.data, result.kept)

    async def _fetch(self, index: int) -> Prefetched | None:
        """Fetch chunk `index` through the source, unless the reader has got there first."""
        async with self._slots:
            if index <= self._current:
                return None  # the read of it fetches it (or joined this prefetch's flight)
            try:
                return await self._source.prefetch(chunk_ref(self.ref, index, self._chunk_size))
            except Exception as exc:  # the read of this chunk will meet the error itself
                log.debug("prefetch of chunk %d of %s failed: %s", index, self.ref.key, exc)
                return None

    def _stored(self, index: int, _: asyncio.Future[bool]) -> None:
        self._storing.discard(index)
        self._pump()

    def _done(self, index: int, _: asyncio.Task[None]) -> None:
        self._tasks.pop(index, None)
        self._pump()

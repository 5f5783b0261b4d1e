"""In-memory chunk entries, the LRU of each budget, open chunk files, and the admission filter.

All of it lives on the event loop and is changed only by synchronous code, so a decision
("evict these", "reserve that") and its bookkeeping never interleave with another task.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from tierfs.cache.base import Origin
from tierfs.chunks import ChunkId


@dataclass(slots=True, eq=False)
class Entry:
    """A chunk file the cache holds (compared by identity: one entry per stored file)."""

    id: ChunkId
    key: str  # the object, version and chunk index the file holds
    version: str
    index: int
    size: int
    checksum: str
    origin: Origin
    last_access: float
    hits: int
    verified: bool = False  # checksum checked since it was written or the process started
    readers: int = 0  # reads under way: a pinned entry is never evicted
    checking: asyncio.Task[bool] | None = None  # the first read's checksum check


class LruBudget:
    """The chunks of one origin, least recently used first, and the bytes they may use.

    `used` bounds the bytes of this origin on disk at every moment: the files held, the
    writes under way (reserved before they start) and the files being unlinked (released
    only once gone). Entries leave the LRU at once when evicted; their bytes later.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lru: OrderedDict[ChunkId, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def add(self, entry: Entry) -> None:
        """Hold `entry` as most recently used; its bytes must already be in `used`."""
        self._lru[entry.id] = entry

    def touch(self, entry: Entry) -> None:
        if self._lru.get(entry.id) is entry:
            self._lru.move_to_end(entry.id)

    def forget(self, entry: Entry) -> None:
        """Take `entry` out of the LRU; its bytes stay in `used` until its file is gone."""
        if self._lru.get(entry.id) is entry:
            del self._lru[entry.id]

    def victims(self, size: int) -> list[Entry] | None:
        """Least recently used entries whose removal makes room for `size` more bytes.

        [] if it fits already; None if it cannot fit (over the limit, or what is left is
        pinned by reads or still being unlinked). The caller removes the victims.
        """
        need = self.used + size - self.limit
        if need <= 0:
            return []
        if size > self.limit:
            return None
        chosen: list[Entry] = []
        for entry in self._lru.values():
            if entry.readers:
                continue
            chosen.append(entry)
            need -= entry.size
            if need <= 0:
                return chosen
        return None

    def unpinned(self) -> Iterator[Entry]:
        """The entries not pinned by a read, least recently used first (do not change the
        budget while iterating)."""
        return (e for e in self._lru.values() if not e.readers)


class OpenFiles:
    """The open descriptors of chunk files, one per entry, least recently used first.

    At most `limit` stay open, not counting those of pinned entries (`Entry.readers`),
    which are never closed under their reader: its pread may be under way on a thread.
    The owner opens an entry's file only while the entry is held (so the fd reads that
    entry's file, even once unlinked) and closes it when the entry is forgotten (so a
    chunk stored again under the same id is never read from the old file).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._fds: OrderedDict[Entry, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, entry: Entry) -> int | None:
        """The fd of `entry`'s file, now the most recently used; None if not open."""
        fd = self._fds.get(entry)
        if fd is not None:
            self._fds.move_to_end(entry)
        return fd

    def add(self, entry: Entry, fd: int) -> None:
        """Keep `fd`, the file of `entry` just opened; close the least recently used
        fds of unpinned entries beyond the limit."""
        self._fds[entry] = fd
        excess = len(self._fds) - self.limit
        if excess <= 0:
            return
        idle: list[Entry] = []
        for held in self._fds:
            if not held.readers:
                idle.append(held)
                if len(idle) == excess:
                    break
        for held in idle:
            self.close(held)

    def close(self, entry: Entry) -> None:
        """Close the fd of `entry`, if open (the caller checks it is not pinned)."""
        fd = self._fds.pop(entry, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


class Admission:
    """`-admit-after N`: a chunk is admitted once it has been asked for N times.

    The counts live in a bounded LRU map, so a one-off scan of a huge dataset (every chunk
    asked for once) neither fills memory nor flushes the hot set from the cache.
    """

    MAX_TRACKED = 100_000

    def __init__(self, admit_after: int) -> None:
        if admit_after < 1:
            raise ValueError(f"admit_after must be >= 1, not {admit_after}")
        self.admit_after = admit_after
        self._asks: OrderedDict[ChunkId, int] = OrderedDict()

    def ask(self, chunk_id: ChunkId) -> bool:
        """Count one access of an uncached chunk; True once it reached N accesses."""
        if self.admit_after == 1:
            return True
        count = self._asks.pop(chunk_id, 0) + 1
        self._asks[chunk_id] = count
        if len(self._asks) > self.MAX_TRACKED:
            self._asks.popitem(last=False)
        return count >= self.admit_after

    def forget(self, chunk_id: ChunkId) -> None:
        """The chunk is cached now: stop counting it."""
        self._asks.pop(chunk_id, None)

"""The tier-1 contract that the read path (and later the peer API and uploads) use."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from tierfs.chunks import ChunkRef, Data


class Origin(StrEnum):
    """Why a chunk is held, and so which budget it counts against."""

    LOCAL = "local"  # read by this node (FUSE_NVME_SIZE)
    PEER = "peer"  # held for other nodes (FUSE_PEER_SIZE)


class ChunkCache(Protocol):
    """Chunks on local disk. All methods are safe to call concurrently on one loop.

    A miss returns None; only failures the caller must know of raise. A chunk whose
    file is missing, short or fails its checksum is a miss: it is deleted and counted
    (`NodeStats.corrupt_chunks`), never returned.
    """

    async def read(self, chunk: ChunkRef, offset: int, length: int) -> Data | None:
        """Bytes [offset, offset + length) within the chunk, or None on a miss.

        A range running past the chunk's end is clipped, as `pread` does. The checksum is
        verified the first time a chunk is served after it was written or the process
        started; later reads of a verified chunk are plain `pread`s. Counts a hit or a
        miss and refreshes the chunk's LRU position. A read racing the chunk's eviction
        returns its right bytes or None, never others.
        """
        ...

    def wants(self, chunk: ChunkRef) -> bool:
        """Whether a fetched copy of `chunk` should be stored (the admission policy,
        `-admit-after N`): counts one access of a chunk that is not cached, and is True
        from the N-th (with N = 1, always)."""
        ...

    async def store(
        self, chunk: ChunkRef, data: Data, origin: Origin, *, around_page_cache: bool = False
    ) -> bool:
        """Write the whole chunk atomically; False if it could not be kept (disk full
        even after evicting, or over the budget): the caller serves `data` anyway.

        True at once if the chunk is already held; concurrent stores of one chunk write
        it once. Evicts least recently used chunks of the same origin first, so the
        files of an origin never add up to more than its budget. `around_page_cache`: the
        chunk is not read from here again soon (fetched for a sequential reader, who holds
        it until passed, and FUSE's page cache then keeps its bytes): write it without filling
        the page cache a second time.
        """
        ...

    async def move(self, old: ChunkRef, new: ChunkRef) -> bool:
        """Hold chunk `old` as chunk `new`, the same bytes under another key or version
        (a copy in the bucket); False, and nothing changed, where it cannot."""
        ...

    async def forget_object(self, key: str, version: str | None = None) -> int:
        """Drop the chunks of object `key` (at `version`, or every version); how many
        there were. A read under way gets its bytes or a miss."""
        ...

    async def close(self) -> None:
        """Flush the index and stop background work."""
        ...

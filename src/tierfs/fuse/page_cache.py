"""The mount's page cache, filled by tierfs: a chunk fetched for a random read goes into the
kernel's cache of the file (FUSE notify_store), so that later reads anywhere in it are
page-cache hits that never reach this process.

A random 4 KiB read fetches a whole chunk. Without this, every later read of the chunk is
a FUSE request (~70 us of Python here); with it, the kernel answers them. The kernel
copies the bytes in on a thread of our own: a store waits for the pages that pending read
requests hold locked, and those requests are answered on the loop.

A store must never put old bytes over new ones. The filesystem offers only chunks of the
version the kernel caches, of files nobody writes, and it waits for the stores of a file
(`settle`) before it lets the kernel see that file change: an open that drops the cache,
an open for writing, a truncate.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
from concurrent.futures import ThreadPoolExecutor

import pyfuse3

from tierfs.chunks import Data
from tierfs.stats import NodeStats

log = logging.getLogger(__name__)

# Bytes offered and not yet in the kernel's cache: more are dropped (they are in tier 1).
# Part of a client's chunk memory (see `tierfs.read_path.FLIGHTS_PER_FETCH`).
MAX_PENDING_BYTES = 32 * 2**20


class KernelPageCache:
    """Puts bytes into the page cache of the mount's files; `close` before unmounting."""

    def __init__(self, stats: NodeStats, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self._stats = stats
        self._max_pending = max_pending_bytes
        self._pending_bytes = 0
        self._pending: dict[int, set[asyncio.Future[int]]] = {}  # by inode
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tierfs-pagecache")
        self._enabled = True

    def has_room(self, size: int) -> bool:
        """Whether an offer of `size` bytes would be taken now."""
        return self._enabled and self._pending_bytes + size <= self._max_pending

    def offer(self, inode: int, offset: int, data: Data, busy: tuple[int, int]) -> bool:
        """Start putting `data`, bytes [offset, offset + len(data)) of the file `inode`,
        into its page cache, but for the pages of `data[busy[0]:busy[1]]`, which a read
        request holds now. False (dropped) when too much is under way or the kernel
        refused one."""
        lo = busy[0] // mmap.PAGESIZE * mmap.PAGESIZE
        hi = min(len(data), -(-busy[1] // mmap.PAGESIZE) * mmap.PAGESIZE)
        size = len(data) - (hi - lo)
        if size <= 0 or not self.has_room(size):
            return False
        view = memoryview(data)
        pieces = [(offset + start, view[start:end]) for start, end in ((0, lo), (hi, len(data)))]
        store = asyncio.get_running_loop().run_in_executor(
            self._thread, _store, inode, [(at, piece) for at, piece in pieces if piece.nbytes]
        )
        self._pending_bytes += size
        self._pending.setdefault(inode, set()).add(store)
        store.add_done_callback(lambda done: self._stored(inode, size, done))
        return True

    async def settle(self, inode: int) -> None:
        """Return once no store into the page cache of `inode` is under way."""
        while pending := self._pending.get(inode):
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Refuse further offers and wait for the stores under way."""
        self._enabled = False
        while self._pending:
            await asyncio.wait(set().union(*self._pending.values()))
        await asyncio.to_thread(self._thread.shutdown, wait=True)

    def _stored(self, inode: int, size: int, done: asyncio.Future[int]) -> None:
        self._pending_bytes -= size
        stores = self._pending[inode]
        stores.discard(done)
        if not stores:
            del self._pending[inode]
        try:
            self._stats.page_cache_bytes += done.result()
            self._stats.page_cache_stores += 1
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
                return  # the kernel forgot the file meanwhile: nothing to fill
            self._enabled = False
            log.warning("the kernel refused bytes for its page cache (%s): not asked again", exc)


def _store(inode: int, pieces: list[tuple[int, memoryview]]) -> int:
    """Copy each (offset, bytes) into the page cache of `inode`; the bytes stored."""
    for offset, piece in pieces:
        pyfuse3.notify_store(pyfuse3.InodeT(inode), offset, piece)  # type: ignore[arg-type]  # any buffer
    return sum(piece.nbytes for _, piece in pieces)

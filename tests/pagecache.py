"""What of a file is in the page cache, and dropping it from there, for tests."""

from __future__ import annotations

import ctypes
import mmap
import os
import time

LIBC = ctypes.CDLL(None, use_errno=True)


def cached_pages(fd: int, size: int) -> set[int]:
    """The pages (offset // PAGESIZE) of the file's first `size` bytes that are in the page
    cache (mincore: unlike a read, even a RWF_NOWAIT one, it starts no read-ahead)."""
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        failed = LIBC.mincore(ctypes.byref(start), ctypes.c_size_t(size), vector)
        del start  # the buffer export must end before the map closes
    if failed:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return {index for index, page in enumerate(vector) if page & 1}


def evict(fd: int, size: int) -> None:
    """Write the file back and drop its first `size` bytes from the page cache, as time or
    `drop_caches` would; fails unless they are all gone within a second (a page another
    CPU still holds can survive one try)."""
    os.fsync(fd)
    deadline = time.monotonic() + 1
    while True:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
        left = cached_pages(fd, size)
        if not left:
            return
        assert time.monotonic() < deadline, f"{len(left)} pages stay in the page cache"
        time.sleep(0.01)

"""What of a file is in the page cache, and dropping it from there, for tests."""

from __future__ import annotations

import os
import time

from tierfs.cache import files


def cached_pages(fd: int, size: int) -> set[int]:
    """The pages (offset // PAGESIZE) of the file's first `size` bytes in the page cache."""
    resident = files.resident_pages(fd, 0, size)
    assert resident is not None, "mincore failed"
    return {index for index, page in enumerate(resident) if page}


def cached_page_count(fd: int, size: int) -> int:
    """How many pages of the file's first `size` bytes are in the page cache, asked without
    mapping the file (a map of a file opened around the page cache would empty it)."""
    counted = files.cached_page_count(fd, 0, size)
    assert counted is not None, "cachestat failed (Linux 6.5+)"
    return counted


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

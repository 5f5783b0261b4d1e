"""The process's C allocator (glibc): one arena, chunk buffers reused during a burst, and
free memory handed back after it.

The cloud client's buffers (a chunk each, from its own threads) come from glibc's malloc.
Freed, they stay in the allocator's arenas, ready for the next fetch but counted in the
process's RSS: after a burst of cold reads the client kept ~70 MB it no longer used.
Nothing here is needed for correctness; on another C library it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
from collections.abc import Callable

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# glibc gives a thread that allocates an arena of its own (up to 8 per core), and each
# keeps what its thread freed for that thread alone: the cloud client's threads and the
# loop's then hold a burst's buffers twice over. With 2 arenas and the thresholds below
# (alternating runs of `bench/fuse.py --rivals none`, 2026-12-07), the clients' peak RSS
# was 167-200 MB (cold sequential, 10 runs), 148-164 (cold random, 4), 166-168 (write, 2),
# 82-136 at rest; with 1: 168-183 (10), 137-139 (4), 133-135 (2), 74-88; the same
# throughput, and no more CPU.
ARENAS = 1
# Buffers up to this come from the arenas, not maps of their own (glibc's largest: 32 MiB on
# 64 bits), and the arenas hand free memory at their top back to the system past TRIM_AT.
# glibc's defaults (a threshold that follows the largest buffer freed, 4 MiB chunks then
# trimmed past 8 MiB free) gave the pages of most fetched chunks back and faulted them in
# again for the next: 95,000-125,000 page faults for a cold read of 1 GiB through the mount
# (sequential or random), 31,000-42,000 with these. `free_held_memory_forever` trims the
# rest once a burst is over.
MMAP_AT = 32 * 2**20
TRIM_AT = 64 * 2**20
# How often the allocator is asked what it holds free, and how much it may keep.
TRIM_EVERY = 1.0  # seconds
KEEP_FREE = 16 * 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",  # free bytes held in the arenas
            "keepcost",
        )
    ]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6")
        if all(hasattr(libc, name) for name in ("mallopt", "mallinfo2", "malloc_trim")):
            libc.mallinfo2.restype = _MallInfo2
            return libc
    return None


def tune_malloc() -> None:
    """One heap arena for every thread (ARENAS), chunk buffers kept in it during a burst
    (MMAP_AT, TRIM_AT). Call before the process starts threads: arenas made before stay."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, ARENAS)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_AT)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_AT)


def free_held_memory() -> int:
    """Hand the pages glibc holds free back to the system once they pass KEEP_FREE; the
    bytes it held free before (0 where the C library is not glibc)."""
    libc = _glibc()
    if libc is None:
        return 0
    held = int(libc.mallinfo2().fordblks)
    if held > KEEP_FREE:
        libc.malloc_trim(0)
    return held


async def free_held_memory_forever(activity: Callable[[], int], every: float = TRIM_EVERY) -> None:
    """`free_held_memory` (off the loop: it walks the arenas) every `every` seconds in which
    `activity` (a count of bytes moved, say) did not change: a burst reuses the buffers it
    frees, and trimming them under it made it fault them in again (cold random reads 5-10%
    slower); once it is over, they go."""
    if _glibc() is None:
        return
    last = activity()
    while True:
        await asyncio.sleep(every)
        now = activity()
        if now == last:
            await asyncio.to_thread(free_held_memory)
        last = now

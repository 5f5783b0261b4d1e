"""The allocator reuses chunk buffers within a burst and hands memory freed inside its heap
back to the system after it (glibc)."""

from __future__ import annotations

import ctypes
import resource

from proc_status import memory_kib
from tierfs import memory

KiB, MiB = 2**10, 2**20
BLOCK = 64 * KiB  # below glibc's mmap threshold: from the heap, not a map of its own
CHUNK = 4 * MiB  # a fetched chunk's buffer
PAGE = 4 * KiB


def c_allocator() -> ctypes.CDLL:
    """glibc, with malloc and free typed for pointers."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def rss_anon() -> int:
    """Bytes of this process's anonymous memory in RAM."""
    return memory_kib("RssAnon") * KiB


def test_freed_heap_memory_goes_back_to_the_system() -> None:
    libc = c_allocator()
    blocks = [libc.malloc(BLOCK) for _ in range(1024)]  # 64 MiB
    fence = libc.malloc(BLOCK)  # above them: free() alone cannot shrink the heap
    try:
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)  # in RAM
        for block in blocks:
            libc.free(block)
        before = rss_anon()
        held = memory.free_held_memory()
        after = rss_anon()
    finally:
        libc.free(fence)
    assert held >= 60 * MiB  # the allocator held the freed blocks
    assert before - after >= 48 * MiB  # and gave their pages back


def test_chunk_buffers_freed_in_a_burst_serve_the_next_without_page_faults() -> None:
    libc = c_allocator()
    memory.tune_malloc()

    def one_burst() -> int:
        """Page faults taken by 8 chunk buffers allocated, filled and freed."""
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffers = [libc.malloc(CHUNK) for _ in range(8)]
        for buffer in buffers:
            ctypes.memset(buffer, 1, CHUNK)
        for buffer in buffers:
            libc.free(buffer)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    one_burst()
    faults = [one_burst() for _ in range(3)]
    pages = 8 * CHUNK // PAGE
    assert max(faults) < pages // 10, f"{faults} page faults for {pages} pages in each burst"

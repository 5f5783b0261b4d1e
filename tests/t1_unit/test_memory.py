"""The allocator reuses chunk buffers within a burst, whichever thread freed them, and hands
memory freed inside its heap back to the system after it (glibc)."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

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


def one_burst(libc: ctypes.CDLL) -> int:
    """Page faults taken by 8 chunk buffers allocated, filled and freed by this thread."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [libc.malloc(CHUNK) for _ in range(8)]
    for buffer in buffers:
        ctypes.memset(buffer, 1, CHUNK)
    for buffer in buffers:
        libc.free(buffer)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def faults_after_another_threads_burst() -> int:
    """In a new process, tuned as a client is: the page faults of a burst of this thread
    right after another thread's (a fetch's buffers come from the cloud client's threads,
    and the loop's thread frees them)."""
    libc = c_allocator()
    memory.tune_malloc()
    other = threading.Thread(target=one_burst, args=(libc,))
    other.start()
    other.join()
    return one_burst(libc)


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
    one_burst(libc)
    faults = [one_burst(libc) for _ in range(3)]
    pages = 8 * CHUNK // PAGE
    assert max(faults) < pages // 10, f"{faults} page faults for {pages} pages in each burst"


def test_chunk_buffers_one_thread_freed_serve_another_threads_burst() -> None:
    # A process of its own: the arenas that threads made before tune_malloc would stay.
    here = Path(__file__).parent
    call = f"import {Path(__file__).stem} as t; print(t.faults_after_another_threads_burst())"
    run = subprocess.run(
        [sys.executable, "-c", call],
        cwd=here,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(here.parent), *sys.path])},
        capture_output=True,
        text=True,
        check=True,
    )
    pages = 8 * CHUNK // PAGE
    assert int(run.stdout) < pages // 10, f"{run.stdout.strip()} page faults for {pages} pages"

"""Chunk files on disk: layout, atomic writes, preads, and the start-up scan.

Every function here is synchronous and does plain file I/O; the caller decides whether
it runs on the event loop (small, bounded work) or in a thread (writes, large reads).

Layout under the cache root: `chunks/<first 2 hex of id>/<id>`, temp files
`chunks/<xx>/.<id>.<random>.tmp` beside their target, and `staging/`, which belongs to the
write path and is never looked into here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import re
import secrets
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tierfs.chunks import ChunkId, Data, checksum, checksum_of_pieces

CHUNKS_DIR = "chunks"
STAGING_DIR = "staging"
TEMP_SUFFIX = ".tmp"

# Chunk ids are 32 hex digits of xxh3-128 (tierfs.chunks). Anything else is never a path.
_ID = re.compile(r"[0-9a-f]{32}")

# A full disk: free some space and try again, or give up quietly.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# Where cachestat is missing (Linux before 6.5), `in_page_cache` reads one byte every this
# many (~1 µs each). Pages evicted between two probes cost a disk read on the loop; rare,
# as the pages of a chunk go in the order read.
PROBE_STRIDE = 2**20
_CACHESTAT = 451  # the syscall's number, the same on every architecture
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)

# The inode flags ioctls of linux/fs.h, and the flag `chattr +T` sets (`spread_subfolders`).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000

# O_DIRECT wants the buffer, the length and the file offset aligned to the disk's block.
DIRECT_ALIGN = 4096
_DIRECT: int = getattr(os, "O_DIRECT", 0)
# O_DIRECT writes and checksum checks go through one page-aligned buffer per thread, in
# pieces of this: 1 MiB direct writes are as fast here as 4 MiB ones (`dd oflag=direct`
# of 1 GiB: 1.1-1.4 GB/s either way), and each thread that wrote kept 4 MiB before.
ALIGNED_PIECE = 2**20
# A buffered write goes to the page cache in pieces of at most this: the kernel sizes new
# page-cache folios by the write, and large ones cost these machines far more to fill
# (1 GiB as 4 MiB files, after drop_caches: 2.0-3.4 s in 4 MiB writes, 1.6 s in 1 MiB
# ones, 0.44-0.47 s in 64-256 KiB ones).
BUFFERED_PIECE = 256 * 2**10


def is_chunk_id(name: str) -> bool:
    return _ID.fullmatch(name) is not None


def make_dirs(root: Path) -> str:
    """Create `chunks/00`..`chunks/ff` and `staging/` under `root`; return the chunks dir.

    All 256 fan-out folders exist from the start, so a write never has to create one.
    """
    chunks = root / CHUNKS_DIR
    chunks.mkdir(parents=True, exist_ok=True)
    spread_subfolders(str(chunks))
    for n in range(256):
        (chunks / f"{n:02x}").mkdir(exist_ok=True)
    (root / STAGING_DIR).mkdir(parents=True, exist_ok=True)
    return str(chunks)


def spread_subfolders(folder: str) -> None:
    """Have ext4 place the folders made in `folder` from now on in block groups of their
    own (its "top of a directory hierarchy" flag, `chattr +T`), not all in the group of
    `folder`. A new file's inode is taken in its folder's group, and an ext4 without a
    journal scans past the inodes deleted in that group in the last minutes: in a busy
    /tmp here, making a chunk file took 0.46 ms, against 0.012 in a spread folder. Best
    effort: another filesystem ignores or refuses the flag, and nothing changes."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(4))[:4])
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
    except OSError:
        pass
    finally:
        os.close(fd)


def chunk_path(chunks_dir: str, chunk_id: str) -> str:
    """The file of `chunk_id`; ValueError for anything that is not a chunk id."""
    if _ID.fullmatch(chunk_id) is None:
        raise ValueError(f"not a chunk id: {chunk_id!r}")
    return f"{chunks_dir}/{chunk_id[:2]}/{chunk_id}"


def write_chunk(path: str, data: Data, *, around_page_cache: bool = False) -> str:
    """Write `data` to `path` atomically; return its checksum.

    Temp file in the same folder, write, rename: a reader, or a restart after the process
    is killed, sees the whole old state or the whole new file, never a torn one. The temp
    file is removed on any error. No fsync: the cache is never the only copy, and after a
    power cut a short or garbled file fails the size or checksum check of its first read
    and is fetched again. An fsync per 4 MiB chunk halved cold reads here (334 MB/s disk).

    `around_page_cache`: write with O_DIRECT where the filesystem takes it, for a chunk
    that is not read again from here soon (see `ChunkCache.store`). A buffered write pays
    for new page-cache pages, which cost here more than the disk itself (380-1,400 MB/s
    buffered against 1.9-2.4 GB/s direct, `dd` of 1 GiB).
    """
    digest = checksum(data)
    folder, name = os.path.split(path)
    temp = f"{folder}/.{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        if not (around_page_cache and _write_direct(temp, data)):
            _write_buffered(temp, data)
        os.rename(temp, path)
    except BaseException:
        remove(temp)
        raise
    return digest


def _write_buffered(path: str, data: Data) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        pwrite_all(fd, data, 0)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: Data, offset: int) -> int:
    """Write all of `data` at `offset` through the page cache, in BUFFERED_PIECE pieces,
    or raise: a disk filling up gives a short write first, then ENOSPC, and the caller
    must learn of it (not report a short write)."""
    done = 0
    with memoryview(data) as view:
        while done < len(view):
            done += os.pwrite(fd, view[done : done + BUFFERED_PIECE], offset + done)
    return done


def _write_direct(path: str, data: Data) -> bool:
    """Write `data` to the new file `path` with O_DIRECT, piece by piece through this
    thread's aligned buffer, the last piece padded to the block and the file cut back to
    size; False (nothing left at `path`) where O_DIRECT is refused, at the open or at the
    first write (a block larger than DIRECT_ALIGN), and for no data."""
    if not _DIRECT or not data:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a filesystem without O_DIRECT (it may have created it)
            remove(path)
            return False
        raise
    buffer = _aligned_buffer()
    try:
        with memoryview(data) as source:
            size = len(source)
            for start in range(0, size, len(buffer)):
                piece = source[start : start + len(buffer)]
                padded = -(-len(piece) // DIRECT_ALIGN) * DIRECT_ALIGN
                buffer[: len(piece)] = piece
                buffer[len(piece) : padded] = bytes(padded - len(piece))
                _write_all_direct(fd, buffer[:padded], path)
        if size % DIRECT_ALIGN:
            os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        remove(path)
        return False
    finally:
        os.close(fd)
    return True


def _write_all_direct(fd: int, view: memoryview, path: str) -> None:
    while view:
        written = os.write(fd, view)
        if written % DIRECT_ALIGN:  # a short write: only when the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        view = view[written:]


_per_thread = threading.local()


def _aligned_buffer() -> memoryview:
    """This thread's buffer for direct writes and checksum checks, made at its first use
    and kept (a fresh one faults its pages in on every use); aligned to the page, as
    O_DIRECT wants."""
    buffer: mmap.mmap | None = getattr(_per_thread, "aligned_buffer", None)
    if buffer is None:
        buffer = _per_thread.aligned_buffer = mmap.mmap(-1, ALIGNED_PIECE)
    return memoryview(buffer)


def open_chunk(path: str) -> int:
    """A read-only fd of the chunk file at `path`; FileNotFoundError if it is gone."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def read_at(fd: int, offset: int, length: int) -> bytes:
    """Up to `length` bytes at `offset` of `fd` (fewer only at the end of the file)."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]  # a short pread mid-file is legal; keep going until EOF
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


_LIBC = ctypes.CDLL(None, use_errno=True)
_LOW_BIT = bytes(n & 1 for n in range(256))  # mincore says only its low bit is defined


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


_has_cachestat = sys.platform == "linux"


def all_cached(fd: int, offset: int, length: int) -> bool | None:
    """Whether every page of bytes [offset, offset + length) of `fd` (length > 0) is in the
    page cache, as the kernel counts them (`cached_page_count`); None where it cannot be
    asked."""
    counted = cached_page_count(fd, offset, length)
    if counted is None:
        return None
    return counted == (offset + length - 1) // mmap.PAGESIZE - offset // mmap.PAGESIZE + 1


def cached_page_count(fd: int, offset: int, length: int) -> int | None:
    """How many pages of bytes [offset, offset + length) of `fd` are in the page cache
    (cachestat, Linux 6.5+: ~1 us, maps and reads nothing, where a mincore takes 11-30 us
    and a RWF_NOWAIT probe may read); None where it cannot be asked."""
    global _has_cachestat
    if not _has_cachestat:
        return None
    asked, counted = _CachestatRange(offset, length), _Cachestat()
    if _LIBC.syscall(_CACHESTAT, fd, ctypes.byref(asked), ctypes.byref(counted), 0) != 0:
        if ctypes.get_errno() == errno.ENOSYS:
            _has_cachestat = False
        return None
    return int(counted.nr_cache)


def resident_pages(fd: int, offset: int, length: int) -> bytes | None:
    """One byte per page of bytes [offset, offset + length) of `fd` (`offset` a multiple of
    the page size): 1 if it is in the page cache, else 0. mincore on a private map of the
    range, which reads nothing, unlike a RWF_NOWAIT probe that misses; ~11 us for a page,
    ~80 us for 4 MiB. None where it cannot be told."""
    pages = -(-length // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    try:
        with mmap.mmap(fd, length, access=mmap.ACCESS_COPY, offset=offset) as mapped:
            start = ctypes.c_char.from_buffer(mapped)
            failed = _LIBC.mincore(ctypes.byref(start), ctypes.c_size_t(length), vector)
            del start  # the buffer export must end before the map closes
    except (OSError, ValueError):
        return None
    return None if failed else bytes(vector).translate(_LOW_BIT)


def advise_read(path: str, length: int) -> None:
    """Ask the kernel to read bytes [0, length) of the file at `path` into the page cache
    (POSIX_FADV_WILLNEED). The disk reads go on in the background, but the call takes their
    pages before it returns: ~0.7 ms for 4 MiB not cached here, so run it on a thread. Only
    a hint: errors (the file gone meanwhile) are ignored."""
    with contextlib.suppress(OSError):
        fd = open_chunk(path)
        try:
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def in_page_cache(fd: int, offset: int, length: int) -> bool:
    """Whether bytes [offset, offset + length) of `fd` are in the page cache, so that
    reading them takes a copy and no disk I/O; never waits. `all_cached` where the kernel
    has it (pages past the end of the file are not cached), else `probed_cached`."""
    told = all_cached(fd, offset, length) if length > 0 else None
    return probed_cached(fd, offset, length) if told is None else told


def probed_cached(fd: int, offset: int, length: int) -> bool:
    """`in_page_cache` on kernels without cachestat: one byte of every PROBE_STRIDE and the
    last one, each read with RWF_NOWAIT (EAGAIN: not cached). A probe that misses lets the
    kernel start reading there (its read-ahead), which the read that follows wants anyway,
    and which a later probe may find done. False where the flag is not supported (not
    Linux, or a filesystem without it)."""
    if _NOWAIT is None:
        return False
    probe = bytearray(1)
    try:
        for at in (*range(offset, offset + length, PROBE_STRIDE), offset + length - 1):
            if not os.preadv(fd, [probe], at, _NOWAIT):
                return False  # past the end: the caller's read comes back short
    except OSError:  # EAGAIN, or EOPNOTSUPP on a filesystem without RWF_NOWAIT
        return False
    return True


def verify(path: str, size: int, expected: str, *, around_page_cache: bool = False) -> bool:
    """Whether the file is exactly `size` bytes with checksum `expected`. Read in pieces
    through a reused buffer: a new buffer of the whole chunk costs these machines more to
    fault in than the read itself. FileNotFoundError if the file is gone.

    `around_page_cache`: read with O_DIRECT where the filesystem takes it, for a chunk
    whose next reads are small: its pages need not come into the page cache for them, and
    new page-cache pages cost these machines more than the disk read (see `write_chunk`).
    """
    fd, direct = _open_for_check(path, around_page_cache)
    try:
        if os.fstat(fd).st_size != size:
            return False
        digest = checksum_of_pieces()
        view = _aligned_buffer()
        got = 0
        while got < size:
            # O_DIRECT reads whole aligned pieces; the last one comes back short.
            want = len(view) if direct else min(len(view), size - got)
            count = os.preadv(fd, [view[:want]], got)
            if not count or got + count > size:
                return False  # cut short, or grown, since the fstat
            digest.update(view[:count])
            got += count
    finally:
        os.close(fd)
    return digest.hexdigest() == expected


def _open_for_check(path: str, direct: bool) -> tuple[int, bool]:
    """(fd, whether it reads with O_DIRECT) of the chunk file at `path`, read-only."""
    if direct and _DIRECT:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | _DIRECT), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a filesystem without O_DIRECT: read it buffered
                raise
    return open_chunk(path), False


def remove(path: str) -> bool:
    """Unlink `path`; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_all(paths: list[str]) -> list[tuple[str, OSError]]:
    """Unlink every path (gone already is fine); the failures, if any."""
    failed: list[tuple[str, OSError]] = []
    for path in paths:
        try:
            remove(path)
        except OSError as exc:
            failed.append((path, exc))
    return failed


@dataclass
class Scan:
    """What `scan` found under `chunks/`."""

    chunks: dict[ChunkId, int] = field(default_factory=dict)  # id -> file size
    temps: list[str] = field(default_factory=list)  # leftover temp files of cut writes
    strays: list[str] = field(default_factory=list)  # other files: wrong name or folder


def scan(chunks_dir: str) -> Scan:
    """List every file in the 256 fan-out folders, sorted into chunks, temps and strays."""
    found = Scan()
    for n in range(256):
        prefix = f"{n:02x}"
        try:
            entries = list(os.scandir(f"{chunks_dir}/{prefix}"))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                found.temps.append(entry.path)
            elif is_chunk_id(entry.name) and entry.name.startswith(prefix):
                try:
                    found.chunks[ChunkId(entry.name)] = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
            else:
                found.strays.append(entry.path)
    return found


def list_ids(chunks_dir: str) -> set[ChunkId]:
    """The ids of the chunk files present now (no stat: cheap enough for a periodic check)."""
    ids: set[ChunkId] = set()
    for n in range(256):
        prefix = f"{n:02x}"
        try:
            names = os.listdir(f"{chunks_dir}/{prefix}")
        except FileNotFoundError:
            continue
        ids.update(ChunkId(n) for n in names if n.startswith(prefix) and is_chunk_id(n))
    return ids

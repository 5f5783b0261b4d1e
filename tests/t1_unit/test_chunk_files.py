"""Chunk files: atomic writes, preads, and the start-up scan, on real files."""

from __future__ import annotations

import mmap
import os
import subprocess
from pathlib import Path

import pytest

from mounts import TmpfsMount
from pagecache import cached_pages, evict
from tierfs.cache import files
from tierfs.chunks import checksum

ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def chunks_dir(tmp_path: Path) -> str:
    return files.make_dirs(tmp_path)


def temps(chunks_dir: str) -> list[str]:
    return [n for d in os.listdir(chunks_dir) for n in os.listdir(f"{chunks_dir}/{d}") if "." in n]


def test_layout(tmp_path: Path, chunks_dir: str) -> None:
    assert sorted(os.listdir(chunks_dir)) == [f"{n:02x}" for n in range(256)]
    assert (tmp_path / "staging").is_dir()
    assert files.chunk_path(chunks_dir, ID) == f"{chunks_dir}/01/{ID}"


def test_the_fan_out_folders_are_spread_over_the_disk(tmp_path: Path, tmpfs: TmpfsMount) -> None:
    """On ext4 (this machine's disk) `chunks/` is a top folder for its allocator
    (`chattr +T`, as `lsattr` shows), so the fan-out folders, and the chunk files made in
    them, are not all in the block group of the cache's folder; on tmpfs, which has no
    such flag, the layout is made all the same."""
    chunks_dir = files.make_dirs(tmp_path)
    shown = subprocess.run(["lsattr", "-d", chunks_dir], capture_output=True, text=True)
    assert "T" in shown.stdout.split()[0], shown
    groups = {os.stat(f"{chunks_dir}/{n:02x}").st_ino // 8192 for n in range(256)}
    assert len(groups) > 16  # in one group, 256 folders span a few 8192s of inode numbers
    in_memory = files.make_dirs(tmpfs(tmp_path / "t", "4m"))
    assert sorted(os.listdir(in_memory)) == [f"{n:02x}" for n in range(256)]


@pytest.mark.parametrize("bad", ["../../etc/passwd", ID.upper(), ID[:-1], ID + "0", "", "/" + ID])
def test_only_chunk_ids_become_paths(chunks_dir: str, bad: str) -> None:
    with pytest.raises(ValueError):
        files.chunk_path(chunks_dir, bad)


def test_write_is_whole_and_leaves_no_temp(chunks_dir: str) -> None:
    path = files.chunk_path(chunks_dir, ID)
    data = os.urandom(3 * 2**20 + 7)
    assert files.write_chunk(path, data) == checksum(data)
    assert Path(path).read_bytes() == data
    assert files.write_chunk(path, b"second") == checksum(b"second")  # replaces atomically
    assert Path(path).read_bytes() == b"second"
    assert temps(chunks_dir) == []


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 2**20 + 3, 4 * 2**20])
@pytest.mark.parametrize("disk", ["ext4", "tmpfs"])
def test_direct_writes_keep_exact_sizes(
    tmp_path: Path, tmpfs: TmpfsMount, disk: str, size: int
) -> None:
    # O_DIRECT writes whole blocks: the padding must be cut back, on either filesystem
    root = tmpfs(tmp_path / "t", "32m") if disk == "tmpfs" else tmp_path
    chunks_dir = files.make_dirs(root)
    data = os.urandom(size)
    for n in range(3):  # the thread's buffer reused, its last piece's padding left in it
        path = files.chunk_path(chunks_dir, f"{n:032x}")
        assert files.write_chunk(path, data, around_page_cache=True) == checksum(data)
        assert os.stat(path).st_size == size
        assert Path(path).read_bytes() == data
    assert temps(chunks_dir) == []


def test_a_refused_direct_write_falls_back_to_a_plain_one(
    chunks_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a block size the disk does not take: the kernel refuses the O_DIRECT write (EINVAL)
    monkeypatch.setattr(files, "DIRECT_ALIGN", 1000)
    path = files.chunk_path(chunks_dir, ID)
    data = os.urandom(4500)
    assert files.write_chunk(path, data, around_page_cache=True) == checksum(data)
    assert Path(path).read_bytes() == data
    assert temps(chunks_dir) == []


def test_full_disk_write_is_an_error_and_leaves_nothing(tmp_path: Path, tmpfs: TmpfsMount) -> None:
    chunks_dir = files.make_dirs(tmpfs(tmp_path / "t", "4m"))
    path = files.chunk_path(chunks_dir, ID)
    with pytest.raises(OSError) as failed:
        files.write_chunk(path, os.urandom(5 * 2**20), around_page_cache=True)
    assert failed.value.errno in files.DISK_FULL_ERRNOS
    assert not os.path.exists(path)
    assert temps(chunks_dir) == []


def test_a_write_around_the_page_cache_leaves_nothing_in_it(chunks_dir: str) -> None:
    path = files.chunk_path(chunks_dir, ID)
    size = 3 * files.PROBE_STRIDE + 5
    files.write_chunk(path, os.urandom(size), around_page_cache=True)
    fd = files.open_chunk(path)
    try:
        assert cached_pages(fd, size) == set()
        assert len(files.read_at(fd, 0, size)) == size
        assert files.in_page_cache(fd, 0, size)  # a read brings it in
    finally:
        os.close(fd)


def test_failed_write_removes_its_temp_file(chunks_dir: str) -> None:
    path = files.chunk_path(chunks_dir, ID)
    os.mkdir(path)  # rename onto a directory fails after the data was written
    with pytest.raises(OSError):
        files.write_chunk(path, b"x" * 1000)
    assert temps(chunks_dir) == []


@pytest.mark.parametrize("size", [files.ALIGNED_PIECE - 1, 3 * files.ALIGNED_PIECE + 7])
def test_verify_reads_in_pieces(chunks_dir: str, size: int) -> None:
    path = files.chunk_path(chunks_dir, ID)
    data = bytearray(os.urandom(size))
    digest = files.write_chunk(path, bytes(data))
    assert files.verify(path, size, digest)
    data[-1] ^= 1  # a flip in the last piece
    files.write_chunk(path, bytes(data))
    assert not files.verify(path, size, digest)


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * files.ALIGNED_PIECE + 7])
@pytest.mark.parametrize("disk", ["ext4", "tmpfs"])
def test_a_check_around_the_page_cache_is_as_strict_and_leaves_nothing_in_it(
    tmp_path: Path, tmpfs: TmpfsMount, disk: str, size: int
) -> None:
    # O_DIRECT reads whole blocks, the last one short; tmpfs refuses it: read buffered
    root = tmpfs(tmp_path / "t", "32m") if disk == "tmpfs" else tmp_path
    path = files.chunk_path(files.make_dirs(root), ID)
    data = bytearray(os.urandom(size))
    digest = files.write_chunk(path, bytes(data), around_page_cache=True)
    assert files.verify(path, size, digest, around_page_cache=True)
    if disk == "ext4":
        fd = files.open_chunk(path)
        try:
            assert cached_pages(fd, size) == set()
        finally:
            os.close(fd)
    assert not files.verify(path, size + 1, digest, around_page_cache=True)
    data[-1] ^= 1  # a flip in the last piece
    files.write_chunk(path, bytes(data), around_page_cache=True)
    assert not files.verify(path, size, digest, around_page_cache=True)
    os.truncate(path, size - 1)
    assert not files.verify(path, size, digest, around_page_cache=True)


def test_read_at_and_verify(chunks_dir: str) -> None:
    path = files.chunk_path(chunks_dir, ID)
    data = os.urandom(10_000)
    digest = files.write_chunk(path, data)
    fd = files.open_chunk(path)
    try:
        assert files.read_at(fd, 100, 50) == data[100:150]
        assert files.read_at(fd, 9_990, 50) == data[9_990:]  # clipped at the end
        assert files.read_at(fd, 10_000, 50) == b""
    finally:
        os.close(fd)
    assert files.verify(path, len(data), digest)
    assert not files.verify(path, len(data) + 1, digest)  # size differs
    assert not files.verify(path, len(data), checksum(b"other"))
    with open(path, "r+b") as f:
        f.seek(5_000)
        f.write(bytes([data[5_000] ^ 1]))
    assert not files.verify(path, len(data), digest)
    assert files.remove(path) is True
    assert files.remove(path) is False
    with pytest.raises(FileNotFoundError):
        files.open_chunk(path)


def test_in_page_cache_tells_cached_ranges_without_reading(chunks_dir: str) -> None:
    path = files.chunk_path(chunks_dir, ID)
    size = 3 * files.PROBE_STRIDE + 5
    files.write_chunk(path, os.urandom(size))
    fd = files.open_chunk(path)
    try:
        assert files.all_cached(fd, 0, 1) is not None, "this kernel has no cachestat"
        assert files.in_page_cache(fd, 0, size)  # just written
        assert not files.in_page_cache(fd, size - 5, 2 * mmap.PAGESIZE)  # a page past the end
        evict(fd, size)
        assert not files.in_page_cache(fd, 0, size)
        assert not cached_pages(fd, size)  # asking read nothing in
        assert files.read_at(fd, files.PROBE_STRIDE, 1) != b""
        assert files.in_page_cache(fd, files.PROBE_STRIDE, 1)
    finally:
        os.close(fd)


def test_probes_tell_cached_ranges_without_waiting(chunks_dir: str) -> None:
    """The fallback of kernels without cachestat."""
    path = files.chunk_path(chunks_dir, ID)
    stride = files.PROBE_STRIDE
    size = 3 * stride + 5
    files.write_chunk(path, os.urandom(size))
    fd = files.open_chunk(path)
    try:
        assert files.probed_cached(fd, 0, size)  # just written
        assert not files.probed_cached(fd, 10, size)  # runs past the end
        evict(fd, size)
        # A probe that misses never waits, but it lets the kernel start reading its page,
        # which a fast disk may have done by the time the kernel looks: True must then
        # mean that every probed page is in memory now (mincore, which reads nothing).
        if files.probed_cached(fd, 0, size):
            probed = {at // mmap.PAGESIZE for at in (*range(0, size, stride), size - 1)}
            assert probed <= cached_pages(fd, size)
        evict(fd, size)
        assert files.read_at(fd, stride, 1) != b""
        assert files.probed_cached(fd, stride, 1)
    finally:
        os.close(fd)


def test_all_cached_counts_the_pages_of_a_range_without_reading(chunks_dir: str) -> None:
    path = files.chunk_path(chunks_dir, ID)
    size = 64 * mmap.PAGESIZE
    files.write_chunk(path, os.urandom(size))
    fd = files.open_chunk(path)
    try:
        assert files.all_cached(fd, 0, size) is True  # just written
        evict(fd, size)
        assert files.all_cached(fd, 0, size) is False
        assert not cached_pages(fd, size)  # asking read nothing in
        files.read_at(fd, 10 * mmap.PAGESIZE, 1)
        assert files.all_cached(fd, 10 * mmap.PAGESIZE + 7, 100) is True
        assert files.all_cached(fd, 9 * mmap.PAGESIZE, 2 * mmap.PAGESIZE) is False
    finally:
        os.close(fd)


def test_scan_sorts_chunks_temps_and_strays(chunks_dir: str) -> None:
    files.write_chunk(files.chunk_path(chunks_dir, ID), b"abc")
    misplaced = "ff" + ID[2:]  # a chunk id in the wrong folder
    Path(chunks_dir, "01", misplaced).write_bytes(b"x")
    Path(chunks_dir, "01", f".{ID}.1234.tmp").write_bytes(b"half")
    Path(chunks_dir, "02", "notes.txt").write_bytes(b"?")
    Path(chunks_dir, "03", "sub").mkdir()  # folders are left alone

    found = files.scan(chunks_dir)

    assert found.chunks == {ID: 3}
    assert found.temps == [f"{chunks_dir}/01/.{ID}.1234.tmp"]
    assert sorted(found.strays) == sorted(
        [f"{chunks_dir}/01/{misplaced}", f"{chunks_dir}/02/notes.txt"]
    )
    assert files.list_ids(chunks_dir) == {ID}

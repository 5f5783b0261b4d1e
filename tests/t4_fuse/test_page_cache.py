"""A chunk fetched for a random read goes into the mount's page cache: the next reads
anywhere in it are answered by the kernel, and nobody is ever shown bytes older than the
file's."""

from __future__ import annotations

import errno
import mmap
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mounts import Mount, cloud_bytes, cloud_put, node_address, node_stats, warm
from pagecache import cached_page_count, cached_pages

CHUNK = 2**20
PAGE = mmap.PAGESIZE


def wait_for_pages(fd: int, pages: set[int], size: int) -> None:
    """Return once `pages` of the file are all in the page cache; fail after 10 s."""
    deadline = time.monotonic() + 10
    while missing := pages - cached_pages(fd, size):
        assert time.monotonic() < deadline, (
            f"{len(missing)} of {len(pages)} pages never came: {sorted(missing)[:20]}"
        )
        time.sleep(0.02)


def wait_for_stores(mount: Mount, count: int) -> Any:
    """The node's counters once it has counted `count` stores into the page cache; fails
    after 10 s."""
    deadline = time.monotonic() + 10
    while (stats := node_stats(mount))["page_cache_stores"] < count:
        assert time.monotonic() < deadline, f"{stats['page_cache_stores']} of {count} stores"
        time.sleep(0.02)
    return stats


def reads_that_reached_tierfs(before: Any, after: Any) -> int:
    """How many chunk reads tierfs answered between two of a node's counters. These
    machines run DAMON's pageout, which can take a page out of the page cache at any
    moment (seen in CI: one page of 256, 0.2 s after it came): a read or two of a chunk
    that was stored whole may then reach tierfs; with no store, most of them do."""
    return sum(after["tiers"][t]["hits"] - before["tiers"][t]["hits"] for t in after["tiers"])


def warmed_file(mount_factory: Callable[..., Mount]) -> tuple[Mount, bytes]:
    """A mount of 1 MiB chunks, and the bytes of its `data.bin`, three chunks that
    `tierfs warm` put into tier 1 (and nowhere else)."""
    mount = mount_factory("s3-seaweedfs", chunk_size="1MiB")
    body = os.urandom(3 * CHUNK)
    cloud_put(mount, "data.bin", body)
    warmed = warm(str(mount.path / "data.bin"), "-node", node_address(mount))
    assert warmed.returncode == 0, warmed.stderr
    return mount, body


def test_a_random_read_puts_the_rest_of_its_chunk_in_the_page_cache(
    mount_factory: Callable[..., Mount],
) -> None:
    mount = mount_factory("s3-seaweedfs", chunk_size="1MiB")
    body = os.urandom(3 * CHUNK)
    cloud_put(mount, "data.bin", body)
    fd = os.open(mount.path / "data.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # the kernel reads only what is asked
        at = CHUNK + 100 * PAGE
        assert os.pread(fd, PAGE, at) == body[at : at + PAGE]
        wait_for_pages(fd, set(range(CHUNK // PAGE, 2 * CHUNK // PAGE)), len(body))
        before = wait_for_stores(mount, 1)  # the node counts a store once it has returned
        assert before["page_cache_stores"] == 1
        assert before["page_cache_bytes"] == CHUNK - PAGE  # all but the page read
        offsets = random.Random(3).sample(range(CHUNK, 2 * CHUNK - PAGE), 200)
        assert [os.pread(fd, PAGE, at) for at in offsets] == [body[a : a + PAGE] for a in offsets]
        after = node_stats(mount)
        assert reads_that_reached_tierfs(before, after) <= 2  # of 200
        assert after["tiers"]["cloud"]["hits"] == 1  # the chunk, fetched once
    finally:
        os.close(fd)


def test_a_second_random_read_that_tier_1_answers_puts_its_chunk_there_too(
    mount_factory: Callable[..., Mount],
) -> None:
    mount, body = warmed_file(mount_factory)
    fd = os.open(mount.path / "data.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        assert cached_page_count(fd, len(body)) == 0
        for at in (2 * CHUNK + 7 * PAGE, CHUNK + 9 * PAGE, 2 * CHUNK + 90 * PAGE):
            assert os.pread(fd, PAGE, at) == body[at : at + PAGE]
        # the second read of chunk 2 brought the rest of it; chunk 1 was read once
        wait_for_pages(fd, set(range(2 * CHUNK // PAGE, 3 * CHUNK // PAGE)), len(body))
        time.sleep(0.2)
        chunk_2 = set(range(2 * CHUNK // PAGE, 3 * CHUNK // PAGE))
        # nothing else came (a page may have left since: see reads_that_reached_tierfs)
        assert cached_pages(fd, len(body)) - chunk_2 <= {CHUNK // PAGE + 9}
        before = node_stats(mount)
        offsets = random.Random(5).sample(range(2 * CHUNK, 3 * CHUNK - PAGE), 200)
        assert [os.pread(fd, PAGE, at) for at in offsets] == [body[a : a + PAGE] for a in offsets]
        after = node_stats(mount)
        assert reads_that_reached_tierfs(before, after) <= 2  # of 200
        assert after["tiers"]["cloud"]["hits"] == 3  # the warm's, none since
    finally:
        os.close(fd)


def test_random_reads_of_a_file_open_for_writing_take_from_tier_1_what_they_ask(
    mount_factory: Callable[..., Mount],
) -> None:
    """While a file is open for writing none of its chunks go into the page cache (old
    bytes could land over new ones), and its random reads take from tier 1 only the bytes
    they ask for. Before, each read of a chunk from the second on read the whole chunk from
    tier 1 to offer it, in vain: fio's verify pass over its own random writes (4 KiB)
    read 4 MiB from disk per read, at 12 MiB/s."""
    mount, body = warmed_file(mount_factory)
    writer = os.open(mount.path / "data.bin", os.O_WRONLY)  # open for writing, not written
    fd = os.open(mount.path / "data.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # the kernel reads only what is asked
        before = node_stats(mount)
        offsets = random.Random(7).sample(range(0, len(body), PAGE), 100)  # 33 a chunk
        assert [os.pread(fd, PAGE, at) for at in offsets] == [body[a : a + PAGE] for a in offsets]
        after = node_stats(mount)
        read_from_tier_1 = after["tiers"]["local"]["bytes"] - before["tiers"]["local"]["bytes"]
        assert read_from_tier_1 <= 2 * 100 * PAGE  # was ~97 chunks (97 MiB)
        assert after["page_cache_stores"] == 0
        assert after["tiers"]["cloud"]["hits"] == 3  # the warm's, none since
    finally:
        os.close(fd)
        os.close(writer)


def test_a_change_in_the_bucket_drops_the_chunks_put_there(
    mount_factory: Callable[..., Mount],
) -> None:
    """Chunks of the old version in the page cache are gone at the next open of the new."""
    mount = mount_factory("s3-seaweedfs", chunk_size="1MiB")
    old, new = os.urandom(3 * CHUNK), os.urandom(3 * CHUNK)  # the same size: only the version
    cloud_put(mount, "data.bin", old)
    fd = os.open(mount.path / "data.bin", os.O_RDONLY)
    try:
        for at in (PAGE, CHUNK + PAGE, 2 * CHUNK + PAGE):
            assert os.pread(fd, PAGE, at) == old[at : at + PAGE]
        wait_for_stores(mount, 3)  # the old bytes are in before the change
        # the kernel may leave a few pages out (seen once in CI: 5 of 765); the rest will do
        assert len(cached_pages(fd, len(old))) > 0.9 * len(old) // PAGE
    finally:
        os.close(fd)
    cloud_put(mount, "data.bin", new)
    time.sleep(2.5)  # the metadata TTL (1 s) and the kernel's attribute TTL (1 s)
    assert (mount.path / "data.bin").read_bytes() == new


def test_a_writer_is_never_shown_older_bytes_than_its_own(
    mount_factory: Callable[..., Mount],
) -> None:
    """Random reads fill the page cache while a writer opens, writes and reads back."""
    mount = mount_factory("s3-seaweedfs", chunk_size="1MiB")
    old, new = os.urandom(8 * CHUNK), os.urandom(8 * CHUNK)
    cloud_put(mount, "data.bin", old)
    path = mount.path / "data.bin"
    rng = random.Random(11)
    reader = os.open(path, os.O_RDONLY)
    try:
        for index in range(8):  # each read fetches a chunk; its store runs behind the read
            at = index * CHUNK + rng.randrange(1, CHUNK // PAGE) * PAGE
            assert os.pread(reader, PAGE, at) == old[at : at + PAGE]
            if index == 3:
                writer = os.open(path, os.O_RDWR)
        try:
            assert os.pwrite(writer, new, 0) == len(new)
            os.fsync(writer)
            assert os.pread(writer, len(new), 0) == new
        finally:
            os.close(writer)
    finally:
        os.close(reader)
    assert cloud_bytes(mount, "data.bin") == new
    assert path.read_bytes() == new


def test_a_truncate_is_never_undone_by_chunks_put_there(
    mount_factory: Callable[..., Mount],
) -> None:
    """A store of a chunk past the new end would grow the file again in the kernel: the
    truncate comes right after 16 reads at once, whose stores queue behind them."""
    mount = mount_factory("s3-seaweedfs", chunk_size="1MiB")
    old = os.urandom(16 * CHUNK)
    cloud_put(mount, "data.bin", old)
    path = mount.path / "data.bin"
    reader = os.open(path, os.O_RDONLY)
    try:
        offsets = [index * CHUNK + PAGE for index in range(16)]
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda at: os.pread(reader, PAGE, at), offsets))
        os.truncate(path, CHUNK // 2)
        assert got == [old[at : at + PAGE] for at in offsets]
        assert os.stat(path).st_size == CHUNK // 2
        assert os.fstat(reader).st_size == CHUNK // 2
    finally:
        os.close(reader)
    assert path.read_bytes() == old[: CHUNK // 2]
    assert cloud_bytes(mount, "data.bin") == old[: CHUNK // 2]


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct-io", "page-cache"])
def test_with_direct_io_nothing_goes_through_the_page_cache(
    mount_factory: Callable[..., Mount], direct_io: bool
) -> None:
    """`-direct-io`: files read and written leave nothing in the mount's page cache, a
    re-read comes from tier 1, a private map still reads, a shared one is refused (ENODEV,
    as FUSE does for such files). Without it the same reads fill the page cache."""
    flags = {"direct_io": "true"} if direct_io else {}
    mount = mount_factory("s3-seaweedfs", chunk_size="1MiB", **flags)
    body = os.urandom(3 * CHUNK + 123)
    cloud_put(mount, "data.bin", body)
    path = mount.path / "data.bin"
    assert path.read_bytes() == body  # cold
    with path.open("rb", buffering=0) as file:  # again, in the pieces of a sequential reader
        assert b"".join(iter(lambda: file.read(128 * 1024), b"")) == body
        offsets = random.Random(5).sample(range(len(body) - PAGE), 50)
        got = [os.pread(file.fileno(), PAGE, at) for at in offsets]
        assert got == [body[at : at + PAGE] for at in offsets]
        cached = cached_page_count(file.fileno(), len(body))
    assert (cached == 0) if direct_io else (cached > 0)
    tiers = node_stats(mount)["tiers"]
    assert tiers["cloud"]["hits"] == 4  # each chunk fetched once: the rest from tier 1
    written = os.urandom(2 * CHUNK + 5)
    (mount.path / "new.bin").write_bytes(written)
    assert cloud_bytes(mount, "new.bin") == written
    with (mount.path / "new.bin").open("rb") as file:
        assert file.read() == written
        cached = cached_page_count(file.fileno(), len(written))
        assert (cached == 0) if direct_io else (cached > 0)
        with mmap.mmap(file.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mapped:
            assert mapped[:] == written
    with (mount.path / "new.bin").open("r+b") as file:
        if direct_io:
            with pytest.raises(OSError) as refused:
                mmap.mmap(file.fileno(), 0)
            assert refused.value.errno == errno.ENODEV
        else:
            with mmap.mmap(file.fileno(), 0) as mapped:
                assert mapped[:] == written

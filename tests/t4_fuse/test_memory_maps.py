"""Files mapped into memory (`mmap`, as numpy's `memmap`, pyarrow and LMDB map them): a map
reads the bytes written, its shared writes reach the bucket at `msync`, its private ones
never do, and a map kept open does not hold the file's other readers on this node to the
version it was made of."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mounts import Mount, cloud_bytes, cloud_put, refused

MiB = 2**20
PAGE = mmap.PAGESIZE
TTL = 1.5  # past the mounts' metadata TTL (1 s)


def map_and_wait(path: Path) -> subprocess.Popen[str]:
    """A process that maps `path` for reading, reads its first page, says "mapped", and at
    a line on its standard input reads every page of the map, printing for each the first
    byte's value; a page the kernel cannot give kills it (SIGBUS)."""
    code = textwrap.dedent(f"""
        import mmap, os, sys
        fd = os.open({str(path)!r}, os.O_RDONLY)
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)  # no read-ahead past the page asked
        mapped[0:1]
        print("mapped", flush=True)
        sys.stdin.readline()
        for at in range(0, len(mapped), {PAGE}):
            print(mapped[at:at + {PAGE}].hex(), flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "mapped\n"
    return proc


def pages_seen(proc: subprocess.Popen[str]) -> tuple[list[bytes], int]:
    """The pages a `map_and_wait` process read once told to, and how it ended."""
    out, _ = proc.communicate("\n", timeout=60)
    return [bytes.fromhex(line) for line in out.splitlines()], proc.returncode


def test_a_file_mapped_here_opens_as_another_node_rewrote_it(
    mount_factory: Callable[..., Mount],
) -> None:
    """A process keeping a file mapped (a data loader's `np.memmap`) while another node
    rewrites it: a new open on this node after the TTL reads the new bytes, at their size,
    while the map keeps to the old ones (or SIGBUS where this node holds them no more),
    never a page of the new. Before 2026-12-07 every open on this node saw the old size and
    read `ESTALE` past what tier 1 held, until the map was gone."""
    here = mount_factory("s3-seaweedfs", chunk_size="1MiB")
    there = mount_factory("s3-seaweedfs", chunk_size="1MiB", **here.bucket_flags())
    old, new = os.urandom(8 * MiB), os.urandom(6 * MiB)
    cloud_put(here, "data.bin", old)
    mapper = map_and_wait(here.path / "data.bin")
    try:
        (there.path / "data.bin").write_bytes(new)
        time.sleep(TTL)
        assert os.stat(here.path / "data.bin").st_size == len(new)
        assert (here.path / "data.bin").read_bytes() == new
        pages, code = pages_seen(mapper)
    finally:
        mapper.kill()
        mapper.wait()
    assert code in (0, -signal.SIGBUS)
    assert pages[0] == old[:PAGE]
    assert all(page == old[at * PAGE : (at + 1) * PAGE] for at, page in enumerate(pages))
    if code == 0:
        assert len(pages) == len(old) // PAGE
    time.sleep(TTL)
    assert (here.path / "data.bin").read_bytes() == new  # and once the map is gone


def test_a_file_mapped_here_is_gone_for_new_opens_once_another_node_removed_it(
    mount_factory: Callable[..., Mount],
) -> None:
    """The same with the file removed on another node: after the TTL an open here says
    ENOENT (it opened the old bytes, or `ESTALE`, before 2026-12-07), and the map reads
    on the bytes it had."""
    here = mount_factory("local")
    there = mount_factory("local", **here.bucket_flags())
    old = os.urandom(2 * MiB)
    (here.path / "data.bin").write_bytes(old)
    mapper = map_and_wait(here.path / "data.bin")
    try:
        (there.path / "data.bin").unlink()
        time.sleep(TTL)
        assert refused((here.path / "data.bin").read_bytes) == errno.ENOENT
        assert "data.bin" not in os.listdir(here.path)
        pages, code = pages_seen(mapper)
    finally:
        mapper.kill()
        mapper.wait()
    assert code in (0, -signal.SIGBUS)
    assert all(page == old[at * PAGE : (at + 1) * PAGE] for at, page in enumerate(pages))


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_shared_writes_to_a_map_are_in_the_bucket_at_msync(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """`msync` (numpy's `flush()`) of a writable shared map puts the file, grown by
    `ftruncate` past its written size, in the bucket; a private map's writes never go."""
    mount = mount_factory(provider)
    path = mount.path / "table.bin"
    body = bytearray(os.urandom(3 * MiB))
    path.write_bytes(body)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 5 * MiB)
        body += bytes(2 * MiB)
        with mmap.mmap(fd, 0) as shared:
            shared[100:200] = body[100:200] = os.urandom(100)
            shared[4 * MiB : 4 * MiB + 6] = body[4 * MiB : 4 * MiB + 6] = b"beyond"
            shared.flush()
            assert cloud_bytes(mount, "table.bin") == bytes(body)
    finally:
        os.close(fd)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, mmap.MAP_PRIVATE) as private:
        private[0:10] = b"0123456789"
    assert cloud_bytes(mount, "table.bin") == bytes(body)
    assert path.read_bytes() == body

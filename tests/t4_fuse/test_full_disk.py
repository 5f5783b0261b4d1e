"""A file larger than the staging disk: streamed straight to the cloud as it is written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mounts import Mount, TmpfsMount, cloud_bytes, cloud_put

MiB = 2**20
MountFactory = Callable[..., Mount]


def write_in_pieces(path: Path, data: bytes, piece: int = MiB) -> None:
    with path.open("wb") as f:
        for start in range(0, len(data), piece):
            f.write(data[start : start + piece])


def on_small_disk(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path, size: str
) -> Mount:
    """A mount of a fresh S3 bucket whose -nvme dir is a tmpfs of `size`."""
    mount = mount_factory("s3-seaweedfs", start=False)
    mount.nvme = tmpfs(tmp_path / "small-nvme", size)
    return mount.start()


def test_a_file_larger_than_the_disk_streams_to_the_cloud(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    mount = on_small_disk(tmpfs, mount_factory, tmp_path, "32m")
    nvme = mount.nvme
    data = os.urandom(96 * MiB)  # three times the disk
    write_in_pieces(mount.path / "big.bin", data)  # close returned: the cloud has it
    assert cloud_bytes(mount, "big.bin") == data
    assert (mount.path / "big.bin").stat().st_size == len(data)
    with (mount.path / "big.bin").open("rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert list((nvme / "staging").iterdir()) == []  # nothing left behind


def test_a_streaming_file_takes_appends_only(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    mount = on_small_disk(tmpfs, mount_factory, tmp_path, "16m")
    data = os.urandom(40 * MiB)
    with (mount.path / "log.bin").open("wb", buffering=0) as f:
        for start in range(0, len(data), MiB):
            f.write(data[start : start + MiB])
        f.seek(0)
        with pytest.raises(OSError) as refused:
            f.write(b"rewrite the start")
        assert refused.value.errno == errno.ENOTSUP
    assert cloud_bytes(mount, "log.bin") == data  # every appended byte arrived


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


@pytest.mark.warnings_expected
def test_a_disk_filled_by_another_program_refuses_changes_with_enospc(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """With no byte left on the cache disk (filled by someone else: nothing to evict), a
    new file and a write to a file there are ENOSPC (a new file was EIO, an error logged
    as a bug), and nothing of them is left; what is there reads on, from the cloud what
    tier 1 has no room for, and once there is room again files are written."""
    mount = on_small_disk(tmpfs, mount_factory, tmp_path, "16m")
    (mount.path / "there.txt").write_bytes(b"there")
    uncached = os.urandom(3 * MiB)
    cloud_put(mount, "uncached.bin", uncached)  # written by another node
    filler = mount.nvme / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):  # ENOSPC: the disk is full
        while True:
            os.write(fd, bytes(MiB))
    os.close(fd)
    for change in (
        lambda: (mount.path / "new.txt").write_bytes(b"new"),
        lambda: append(mount.path / "there.txt", b" and more"),
    ):
        with pytest.raises(OSError) as refused:
            change()
        assert refused.value.errno == errno.ENOSPC
    assert (mount.path / "uncached.bin").read_bytes() == uncached  # not cached: no room
    assert sorted(os.listdir(mount.path)) == ["there.txt", "uncached.bin"]
    assert os.listdir(mount.nvme / "staging") == []
    assert cloud_bytes(mount, "new.txt") is None
    assert cloud_bytes(mount, "there.txt") == (mount.path / "there.txt").read_bytes() == b"there"
    assert "failed unexpectedly" not in mount.log.read_text()
    filler.unlink()
    (mount.path / "new.txt").write_bytes(b"new")
    append(mount.path / "there.txt", b" and more")
    assert cloud_bytes(mount, "new.txt") == b"new"
    assert cloud_bytes(mount, "there.txt") == b"there and more"

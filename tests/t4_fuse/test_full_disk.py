"""A file larger than the staging disk: streamed straight to the cloud as it is written."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mounts import Mount, TmpfsMount, cloud_bytes

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

"""A file larger than the staging disk: streamed straight to the cloud as it is written."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mounts import Mount, cloud_bytes

MiB = 2**20
MountFactory = Callable[..., Mount]
TmpfsMount = Callable[[Path, str], Path]


def write_in_pieces(path: Path, data: bytes, piece: int = MiB) -> None:
    with path.open("wb") as f:
        for start in range(0, len(data), piece):
            f.write(data[start : start + piece])


def test_a_file_larger_than_the_disk_streams_to_the_cloud(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    nvme = tmpfs(tmp_path / "small-nvme", "32m")
    mount = mount_factory("s3-seaweedfs", start=False)
    mount.nvme = nvme
    mount.start()
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
    nvme = tmpfs(tmp_path / "small-nvme", "16m")
    mount = mount_factory("s3-seaweedfs", start=False)
    mount.nvme = nvme
    mount.start()
    data = os.urandom(40 * MiB)
    with (mount.path / "log.bin").open("wb", buffering=0) as f:
        for start in range(0, len(data), MiB):
            f.write(data[start : start + MiB])
        f.seek(0)
        with pytest.raises(OSError) as refused:
            f.write(b"rewrite the start")
        assert refused.value.errno == errno.ENOTSUP
    assert cloud_bytes(mount, "log.bin") == data  # every appended byte arrived

"""Every provider behind a mount: a read/write smoke test, and 1 GiB through S3."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mounts import Mount, cloud_bytes, cloud_put


@pytest.mark.parametrize("provider", ["azure", "gcp-native", "gcp-interop", "s3-moto"])
def test_read_write_smoke(mount_factory: object, provider: str) -> None:
    mount: Mount = mount_factory(provider)  # type: ignore[operator]
    cloud_put(mount, "in/seed.bin", b"seed" * 100_000)
    assert (mount.path / "in/seed.bin").read_bytes() == b"seed" * 100_000
    payload = os.urandom(6 * 2**20 + 7)
    (mount.path / "in/written.bin").write_bytes(payload)
    assert cloud_bytes(mount, "in/written.bin") == payload
    assert sorted(os.listdir(mount.path / "in")) == ["seed.bin", "written.bin"]
    os.rename(mount.path / "in/written.bin", mount.path / "in/renamed.bin")
    assert cloud_bytes(mount, "in/renamed.bin") == payload
    os.unlink(mount.path / "in/renamed.bin")
    assert cloud_bytes(mount, "in/renamed.bin") is None


def test_a_1_gib_file_through_the_mount(
    mount_factory: object, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    mount: Mount = mount_factory("s3-seaweedfs")  # type: ignore[operator]
    digest = hashlib.sha256()
    block = os.urandom(2**20)
    with (mount.path / "gib.bin").open("wb") as out:
        for index in range(1024):
            piece = block[index:] + block[:index]
            digest.update(piece)
            out.write(piece)
    expected = digest.hexdigest()
    # Read back on a second node with an empty cache: every byte comes from the cloud.
    flags = {name: value for name, value in mount.flags.items() if name != "port"}
    cold = Mount(tmp_path / "cold/mnt", tmp_path / "cold/nvme", flags, mount.env,
                 tmp_path / "cold.log")  # fmt: skip
    request.addfinalizer(cold.stop)
    cold.start()
    for node in (cold, mount):
        reread = hashlib.sha256()
        with (node.path / "gib.bin").open("rb") as source:
            while piece := source.read(4 * 2**20):
                reread.update(piece)
        assert reread.hexdigest() == expected
        assert os.stat(node.path / "gib.bin").st_size == 2**30

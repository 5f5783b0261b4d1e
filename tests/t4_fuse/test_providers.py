"""Every provider behind a mount: a read/write smoke test, the stores' limits on keys,
and 1 GiB through S3."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import servers
from mounts import Mount, bucket_keys, cloud_bytes, cloud_put, refused
from pagecache import evict


@pytest.mark.parametrize("provider", ["azure", "azure-sas", "gcp-native", "gcp-interop", "s3-moto"])
def test_read_write_smoke(mount_factory: Callable[..., Mount], provider: str) -> None:
    mount = mount_factory(provider)
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


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs", "azure", "gcp-native"])
def test_a_file_held_open_reads_on_through_renames(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """POSIX: a rename does not touch those who hold the file open. A handle opened
    before the file, then its folder, was renamed reads on from the copy. Its reads that
    reached tierfs failed: EIO after the file's rename, and ESTALE after the folder's
    where a copy is a new version (Azure, GCS; on S3 and local it is the same one)."""
    mount = mount_factory(provider)
    body = os.urandom(9 * 2**20 + 7)
    (mount.path / "in").mkdir()
    (mount.path / "in/f.bin").write_bytes(body)
    with open(mount.path / "in/f.bin", "rb", buffering=0) as held:
        assert os.pread(held.fileno(), 4096, 0) == body[:4096]
        os.rename(mount.path / "in/f.bin", mount.path / "in/g.bin")
        evict(held.fileno(), len(body))  # so that the reads come to tierfs
        assert os.pread(held.fileno(), 2**20, 5 * 2**20) == body[5 * 2**20 : 6 * 2**20]
        os.rename(mount.path / "in", mount.path / "out")
        evict(held.fileno(), len(body))
        assert held.read() == body
    assert cloud_bytes(mount, "out/g.bin") == body


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto", "azure", "gcp-native"])
def test_a_key_past_1024_bytes_is_refused_at_once(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """S3's and GCS's keys hold at most 1024 bytes (Azure's 1024 characters): a file whose
    key would be longer is ENAMETOOLONG where it is made, and so is a folder whose marker
    (`path/`, a byte more than its path) would be, made or renamed. Before 2026-12-06
    such a mkdir was EIO on SeaweedFS, which refused the marker, and made one that S3 and
    GCS refuse on moto, Azurite and fake-gcs-server, which keep it."""
    mount = mount_factory(provider)
    deep = Path(*["s" * 200] * 4)
    os.makedirs(mount.path / deep)
    room = 1024 - len(f"{deep}/")  # the longest name of a file in it
    (mount.path / deep / ("f" * room)).write_bytes(b"fits")
    os.mkdir(mount.path / deep / ("d" * (room - 1)))  # its marker: 1024 bytes
    too_long = [
        lambda: (mount.path / deep / ("g" * (room + 1))).write_bytes(b"x"),
        lambda: os.mkdir(mount.path / deep / ("e" * room)),
        lambda: os.rename(mount.path / deep / ("d" * (room - 1)), mount.path / deep / ("e" * room)),
    ]
    assert [refused(action) for action in too_long] == [errno.ENAMETOOLONG] * 3
    assert sorted(os.listdir(mount.path / deep)) == ["d" * (room - 1), "f" * room]
    below = [key for key in bucket_keys(mount) if key.startswith(f"{deep}/")]
    assert below[1:] == [  # after its own marker
        f"{deep}/{'d' * (room - 1)}/",
        f"{deep}/{'f' * room}",
    ]


def test_an_azure_key_of_more_than_254_segments_is_refused_at_once(
    mount_factory: Callable[..., Mount],
) -> None:
    """Azure's blob names hold at most 254 path segments: a file or a folder deeper is
    EINVAL where it is made or renamed to. Before 2026-12-06 it was made (Azurite keeps
    such a blob), and Azure refused its upload: EIO at close."""
    mount = mount_factory("azure")
    top = mount.path.joinpath(*["a"] * 253)
    os.makedirs(top)
    (top / "f").write_bytes(b"254 segments")
    os.mkdir(top / "d")
    os.mkdir(mount.path / "b")
    (mount.path / "b/g").write_bytes(b"to move")
    too_deep = [
        lambda: (top / "d/f").write_bytes(b"x"),
        lambda: os.mkdir(top / "d/e"),
        lambda: os.rename(mount.path / "b", top / "d/b"),
        lambda: os.rename(mount.path / "b/g", top / "d/g"),
    ]
    assert [refused(action) for action in too_deep] == [errno.EINVAL] * 4
    assert os.listdir(top / "d") == []
    assert (top / "f").read_bytes() == b"254 segments"
    assert cloud_bytes(mount, "b/g") == b"to move"
    assert max(key.rstrip("/").count("/") + 1 for key in bucket_keys(mount)) == 254


def test_an_azure_name_ending_in_a_dot_is_refused_at_once(
    mount_factory: Callable[..., Mount],
) -> None:
    """Azure drops a dot that ends a blob's name or one of its segments ("a." is stored
    as "a"): a file or folder so named is EINVAL where it is made or renamed to, and the
    file the blob would have overwritten keeps its bytes. Before 2026-12-07 Azurite kept
    such names, and on Azure `echo x > a.` replaced the file `a`."""
    mount = mount_factory("azure")
    (mount.path / "a").write_bytes(b"the file a")
    os.mkdir(mount.path / "d")
    (mount.path / "d/f").write_bytes(b"to move")
    dotted = [
        lambda: (mount.path / "a.").write_bytes(b"x"),
        lambda: (mount.path / "a..").write_bytes(b"x"),
        lambda: os.mkdir(mount.path / "d."),
        lambda: os.rename(mount.path / "d/f", mount.path / "d/f."),
        lambda: os.rename(mount.path / "d", mount.path / "e."),
    ]
    assert [refused(action) for action in dotted] == [errno.EINVAL] * 5
    assert sorted(os.listdir(mount.path)) == ["a", "d"]
    assert cloud_bytes(mount, "a") == b"the file a"
    assert cloud_bytes(mount, "d/f") == b"to move"
    (mount.path / "a.b").write_bytes(b"a dot inside")  # only an ending dot is dropped
    assert cloud_bytes(mount, "a.b") == b"a dot inside"


@pytest.mark.parametrize("provider", ["gcp-native", "gcp-interop"])
def test_a_gcs_name_under_the_acme_challenge_folder_is_refused_at_once(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """GCS takes no object name that starts with `.well-known/acme-challenge/`, the marker
    of that folder included: making it is EINVAL at once, where before 2026-12-07 the
    emulators kept it and GCS would have refused the upload (EIO at close)."""
    mount = mount_factory(provider)
    os.mkdir(mount.path / ".well-known")
    (mount.path / ".well-known/acme-challenge").write_bytes(b"a file may have the name")
    os.rename(mount.path / ".well-known/acme-challenge", mount.path / ".well-known/moved")
    assert refused(lambda: os.mkdir(mount.path / ".well-known/acme-challenge")) == errno.EINVAL
    assert os.listdir(mount.path / ".well-known") == ["moved"]
    assert cloud_bytes(mount, ".well-known/moved") == b"a file may have the name"


def test_a_1_gib_file_through_the_mount(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    mount = mount_factory("s3-seaweedfs")
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


def test_a_read_only_signature_of_an_azure_container_reads_and_refuses_writes(
    mount_factory: Callable[..., Mount], azurite: servers.AzureServer
) -> None:
    """A container shared with a signature that lets its holder list and read: the mount
    reads; a write or a mkdir is refused (EACCES) and leaves nothing in the container."""
    mount = mount_factory("azure-sas", start=False)
    container = mount.flags["azure_container"]
    mount.env["AZURE_STORAGE_SAS_TOKEN"] = azurite.container_sas(container, write=False)
    table = os.urandom(3 * 2**20 + 5)
    azurite.service_client().get_blob_client(container, "shared/table.bin").upload_blob(table)
    mount.start()
    assert os.listdir(mount.path / "shared") == ["table.bin"]
    assert (mount.path / "shared/table.bin").read_bytes() == table
    with pytest.raises(PermissionError):
        (mount.path / "shared/mine").mkdir()
    with pytest.raises(PermissionError):
        (mount.path / "shared/mine.bin").write_bytes(b"mine")
    names = [
        blob.name for blob in azurite.service_client().get_container_client(container).list_blobs()
    ]
    assert names == ["shared/table.bin"]

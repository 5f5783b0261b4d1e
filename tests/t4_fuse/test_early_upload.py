"""A file written by appends goes up while it is written; any other change falls back to
putting it whole at close. Checked at the S3 server: its multipart uploads and objects."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobBlock

import servers
from cloud_targets import s3_server_for
from mounts import Mount, cloud_bytes
from proc_status import memory_kib, reset_peak
from relay import abort_the_held_upload, relay_in_front_of

MiB = 2**20
MountFactory = Callable[..., Mount]


@pytest.fixture
def s3(mount_factory: MountFactory, seaweedfs: servers.S3Server) -> tuple[Mount, Any, str]:
    """(a mount of a fresh S3 bucket, a boto3 client of its server, the bucket)."""
    mount = mount_factory("s3-seaweedfs")
    return mount, seaweedfs.boto3_client(), mount.flags["s3_bucket"]


def uploads(client: Any, bucket: str) -> dict[str, int]:
    """The server's unfinished multipart uploads: key -> parts it holds. An upload that
    ends between the two requests (aborted or completed meanwhile) is left out."""
    held = {}
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        key, upload_id = upload["Key"], upload["UploadId"]
        try:
            parts = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
        except client.exceptions.NoSuchUpload:
            continue
        held[key] = len(parts.get("Parts", []))
    return held


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def append(f: BinaryIO, data: bytes) -> None:
    for start in range(0, len(data), MiB):
        f.write(data[start : start + MiB])


def parts_sent(client: Any, bucket: str, key: str, parts: int) -> Callable[[], bool]:
    return lambda: uploads(client, bucket).get(key, 0) >= parts


def test_appended_parts_are_in_the_cloud_before_close(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    data = os.urandom(48 * MiB)
    with (mount.path / "log.bin").open("wb", buffering=0) as f:
        append(f, data)
        # Before close: the server holds parts of an upload, and no object yet.
        wait_for(parts_sent(client, bucket, "log.bin", 3), "3 parts of log.bin uploaded")
        assert cloud_bytes(mount, "log.bin") is None
    assert cloud_bytes(mount, "log.bin") == data
    assert uploads(client, bucket) == {}  # completed, nothing left behind


def test_a_write_before_the_end_puts_the_file_whole(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    data = os.urandom(40 * MiB)
    with (mount.path / "patched.bin").open("wb", buffering=0) as f:
        append(f, data)
        wait_for(parts_sent(client, bucket, "patched.bin", 2), "parts of patched.bin uploaded")
        f.seek(MiB)  # a header patched after the body, as many formats do
        f.write(b"patched")
    assert cloud_bytes(mount, "patched.bin") == data[:MiB] + b"patched" + data[MiB + 7 :]
    # The upload that the patch abandoned is gone from the server, parts and all.
    wait_for(lambda: uploads(client, bucket) == {}, "the abandoned upload dropped")


def test_a_truncate_while_appending(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    data = os.urandom(40 * MiB)
    more = os.urandom(5 * MiB)
    with (mount.path / "cut.bin").open("wb", buffering=0) as f:
        append(f, data)
        wait_for(parts_sent(client, bucket, "cut.bin", 2), "parts of cut.bin uploaded")
        f.truncate(20 * MiB)
        f.seek(20 * MiB)
        append(f, more)
    assert cloud_bytes(mount, "cut.bin") == data[: 20 * MiB] + more
    wait_for(lambda: uploads(client, bucket) == {}, "the abandoned upload dropped")


def test_a_file_moved_while_written_goes_to_its_new_name(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    data = os.urandom(40 * MiB)
    (mount.path / "old").mkdir()
    with (mount.path / "old" / "f.bin").open("wb", buffering=0) as f:
        append(f, data[: 32 * MiB])
        wait_for(parts_sent(client, bucket, "old/f.bin", 2), "parts of old/f.bin uploaded")
        (mount.path / "old").rename(mount.path / "new")
        append(f, data[32 * MiB :])
    assert cloud_bytes(mount, "new/f.bin") == data
    assert cloud_bytes(mount, "old/f.bin") is None
    wait_for(lambda: uploads(client, bucket) == {}, "the abandoned upload dropped")


def test_an_upload_lost_at_the_server_is_put_whole(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    data = os.urandom(40 * MiB)
    with (mount.path / "lost.bin").open("wb", buffering=0) as f:
        append(f, data[: 32 * MiB])
        wait_for(parts_sent(client, bucket, "lost.bin", 2), "parts of lost.bin uploaded")
        for upload in client.list_multipart_uploads(Bucket=bucket)["Uploads"]:
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        append(f, data[32 * MiB :])
    assert cloud_bytes(mount, "lost.bin") == data  # close succeeded: the cloud has it all


def test_a_file_removed_while_written_leaves_nothing(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    with (mount.path / "gone.bin").open("wb", buffering=0) as f:
        append(f, os.urandom(40 * MiB))
        wait_for(parts_sent(client, bucket, "gone.bin", 2), "parts of gone.bin uploaded")
        (mount.path / "gone.bin").unlink()
    assert cloud_bytes(mount, "gone.bin") is None
    wait_for(lambda: uploads(client, bucket) == {}, "the abandoned upload dropped")
    assert not (mount.path / "gone.bin").exists()


def staged_blocks(azurite: servers.AzureServer, container: str, name: str) -> int:
    """The uncommitted blocks Azurite holds of blob `name`."""
    blob = azurite.service_client().get_blob_client(container, name)
    try:
        return len(blob.get_block_list("uncommitted")[1])
    except ResourceNotFoundError:
        return 0


@pytest.mark.parametrize("provider", ["azure", "azure-sas"])
def test_a_file_removed_while_written_on_azure_leaves_no_blocks(
    mount_factory: MountFactory, azurite: servers.AzureServer, provider: str
) -> None:
    """On Azure a file's early upload stages blocks, which no abort drops: removed while
    written, the file left them staged under its name for a week (Azure's limit), and
    another tool's upload of that name in blocks of its own failed meanwhile (Azure takes
    one length of block id per blob: InvalidBlobOrBlock). They go with the upload."""
    mount = mount_factory(provider, cloud_timeout="3")  # blocks landing late: dropped 3 s on
    container = mount.flags["azure_container"]
    with (mount.path / "gone.bin").open("wb", buffering=0) as f:
        append(f, os.urandom(40 * MiB))
        wait_for(lambda: staged_blocks(azurite, container, "gone.bin") >= 2, "blocks staged")
        (mount.path / "gone.bin").unlink()
    mount.wait_for_log("gone.bin: dropped the blocks its failed upload left staged")
    time.sleep(3.5)  # past the deadline: no block request of the upload is on its way
    wait_for(lambda: staged_blocks(azurite, container, "gone.bin") == 0, "late blocks dropped")
    assert cloud_bytes(mount, "gone.bin") is None  # nor the empty blob that dropped them
    other = azurite.service_client().get_blob_client(container, "gone.bin")  # another tool
    block = base64.b64encode(b"a block id of another length").decode()
    other.stage_block(block, b"theirs")
    other.commit_block_list([BlobBlock(block)])
    assert cloud_bytes(mount, "gone.bin") == b"theirs"


def test_two_files_at_most_go_up_while_written(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    data = [os.urandom(40 * MiB) for _ in range(3)]
    files = [(mount.path / f"f{i}.bin").open("wb", buffering=0) for i in range(3)]
    try:
        for start in range(0, 40 * MiB, MiB):  # three writers, side by side
            for f, body in zip(files, data, strict=True):
                f.write(body[start : start + MiB])
        wait_for(lambda: sum(uploads(client, bucket).values()) >= 4, "parts uploaded")
        assert len(uploads(client, bucket)) == 2  # the third file goes up at its close
    finally:
        for f in files:
            f.close()
    for i, body in enumerate(data):
        assert cloud_bytes(mount, f"f{i}.bin") == body
    assert uploads(client, bucket) == {}


def test_many_files_closed_at_once_keep_the_clients_memory_bounded(
    s3: tuple[Mount, Any, str],
) -> None:
    mount, client, bucket = s3
    assert mount.proc is not None
    bodies = [os.urandom(48 * MiB) for _ in range(8)]  # 2 go up while written, 6 at close
    pid = mount.proc.pid
    baseline = memory_kib("VmRSS", pid)
    reset_peak(pid)

    def write(index: int) -> None:
        with (mount.path / f"f{index}.bin").open("wb", buffering=0) as f:
            append(f, bodies[index])

    writers = [threading.Thread(target=write, args=(i,)) for i in range(len(bodies))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    growth = (memory_kib("VmHWM", pid) - baseline) / 1024
    for i, body in enumerate(bodies):
        assert cloud_bytes(mount, f"f{i}.bin") == body
    assert uploads(client, bucket) == {}
    assert growth < 300, f"the client's RSS grew by {growth:.0f} MiB"


def test_small_files_go_up_in_one_request(s3: tuple[Mount, Any, str]) -> None:
    mount, client, bucket = s3
    data = os.urandom(12 * MiB)  # under the multipart threshold
    with (mount.path / "small.bin").open("wb", buffering=0) as f:
        append(f, data)
        time.sleep(0.5)
        assert uploads(client, bucket) == {}
    assert cloud_bytes(mount, "small.bin") == data


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
def test_an_early_upload_another_client_aborted_is_put_whole(
    provider: str, request: pytest.FixtureRequest, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """Another client aborts the upload of a file that went up while it was written (as a
    tierfs node does to the uploads of a key begun during its own failed put): the store
    answers its completion NoSuchUpload, and the close puts the file whole from its
    staging file, and returns 0."""
    mount = mount_factory(provider, start=False)
    relay, relayed = relay_in_front_of(mount.flags["s3_endpoint"])
    request.addfinalizer(relay.stop)
    mount.flags |= {"s3_endpoint": relayed, "cloud_timeout": "10.0"}
    mount.start()
    client = s3_server_for(request, provider).boto3_client()
    bucket = mount.flags["s3_bucket"]
    data = os.urandom(40 * MiB)
    f = (mount.path / "log.bin").open("wb", buffering=0)
    append(f, data)
    wait_for(parts_sent(client, bucket, "log.bin", 2), "parts of log.bin uploaded")
    relay.hold(b"?uploadId=")  # its completion, at close
    failures: list[OSError | None] = []

    def close() -> None:
        try:
            f.close()
        except OSError as exc:
            failures.append(exc)
        else:
            failures.append(None)

    closing = threading.Thread(target=close)
    closing.start()
    abort_the_held_upload(relay, client, bucket)
    closing.join(60)
    assert failures == [None]
    assert cloud_bytes(mount, "log.bin") == data
    assert uploads(client, bucket) == {}

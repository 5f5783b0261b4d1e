"""A file larger than the staging disk: streamed straight to the cloud as it is written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud_targets import s3_server_for
from mounts import Mount, TmpfsMount, close_errno, cloud_bytes, cloud_put
from relay import Relay, abort_the_held_upload, relay_in_front_of

MiB = 2**20
MountFactory = Callable[..., Mount]


def write_in_pieces(path: Path, data: bytes, piece: int = MiB) -> None:
    with path.open("wb") as f:
        for start in range(0, len(data), piece):
            f.write(data[start : start + piece])


def on_small_disk(
    tmpfs: TmpfsMount,
    mount_factory: MountFactory,
    tmp_path: Path,
    size: str,
    provider: str = "s3-seaweedfs",
) -> Mount:
    """A mount of a fresh bucket (S3 unless told) whose -nvme dir is a tmpfs of `size`."""
    mount = mount_factory(provider, start=False)
    mount.nvme = tmpfs(tmp_path / "small-nvme", size)
    return mount.start()


def streaming(mount: Mount, path: Path) -> tuple[int, bytes]:
    """A descriptor of `path` (made, or truncated) through which 12 MiB were appended, more
    than `mount`'s 8 MiB disk holds: the file streams to the cloud. And those bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    data = os.urandom(12 * MiB)
    for start in range(0, len(data), MiB):
        os.write(fd, data[start : start + MiB])
    mount.wait_for_log(f"{path.relative_to(mount.path)}: no room to stage it")
    return fd, data


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


class ReadWhileWritten:
    """Threads reading random 4 KiB blocks of a file, straight from the mount (O_DIRECT),
    while it is written; what each read got that was not the file's bytes, by errno."""

    def __init__(self, path: Path, data: bytes, threads: int = 3) -> None:
        self.path, self.data = path, data
        self.written = 0  # the writer's progress
        self.outcomes: list[str] = []
        self.threads = [
            threading.Thread(target=self.read, args=(random.Random(seed),))
            for seed in range(threads)
        ]

    def read(self, rng: random.Random) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        buffer = mmap.mmap(-1, 4096)  # aligned, as O_DIRECT asks
        try:
            while self.written < len(self.data):
                offset = rng.randrange(0, max(1, self.written - 4096)) // 4096 * 4096
                try:
                    got = buffer[: os.preadv(fd, [buffer], offset)]
                except OSError as exc:
                    assert exc.errno is not None  # preadv's failures all have one
                    self.outcomes.append(errno.errorcode[exc.errno])
                    continue
                if got != self.data[offset : offset + len(got)]:
                    self.outcomes.append(f"wrong bytes at {offset}")
        finally:
            os.close(fd)

    def write(self) -> None:
        """Write the file in 256 KiB appends while the threads read it."""
        with self.path.open("wb", buffering=0) as writer:
            for thread in self.threads:
                thread.start()
            try:
                for start in range(0, len(self.data), 256 * 1024):
                    writer.write(self.data[start : start + 256 * 1024])
                    self.written = start + 256 * 1024
            finally:
                self.written = len(self.data)
                for thread in self.threads:
                    thread.join()


def test_reads_of_a_file_while_it_fills_the_disk_get_its_bytes(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """Threads reading a file while it is written until the disk is full (its staging file
    closed, its bytes streamed from then on) get its bytes, or ENOTSUP once it streams:
    never EBADF (EIO), nor bytes of another file."""
    mount = on_small_disk(tmpfs, mount_factory, tmp_path, "8m")
    for number in range(8):  # a race: each file fills the disk once
        filling = ReadWhileWritten(mount.path / f"filling-{number}.bin", os.urandom(12 * MiB))
        filling.write()
        assert set(filling.outcomes) <= {"ENOTSUP"}, filling.outcomes
        assert cloud_bytes(mount, filling.path.name) == filling.data
    assert "failed unexpectedly" not in mount.log.read_text()


def test_a_streaming_file_removed_never_reaches_the_bucket(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """A file unlinked while it streams is given up: its writer's appends go on, to
    nowhere, and its close leaves nothing in the bucket (it finished the stream: the
    removed file came back)."""
    mount = on_small_disk(tmpfs, mount_factory, tmp_path, "8m", "local")
    fd, _ = streaming(mount, mount.path / "big.bin")
    os.unlink(mount.path / "big.bin")
    os.write(fd, os.urandom(MiB))
    os.close(fd)
    assert cloud_bytes(mount, "big.bin") is None
    assert os.listdir(mount.path) == []
    assert os.listdir(mount.flags["local_root"]) == []  # no part left behind


def test_a_rename_over_a_streaming_file_keeps_the_renamed_bytes(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """`mv src dst` while dst streams: dst holds src's bytes, also once dst's writer has
    closed (its close finished the stream over them, and src was gone)."""
    mount = on_small_disk(tmpfs, mount_factory, tmp_path, "8m", "local")
    (mount.path / "dst").write_bytes(b"dst before")
    (mount.path / "src").write_bytes(b"renamed")
    fd, _ = streaming(mount, mount.path / "dst")
    os.rename(mount.path / "src", mount.path / "dst")
    os.write(fd, os.urandom(MiB))
    os.close(fd)
    assert cloud_bytes(mount, "dst") == b"renamed"
    assert cloud_bytes(mount, "src") is None
    assert (mount.path / "dst").read_bytes() == b"renamed"
    assert os.listdir(mount.flags["local_root"]) == ["dst"]


def test_a_streaming_file_and_its_folders_are_renamed_once_it_is_closed(
    tmpfs: TmpfsMount, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """A streaming file's key is fixed: a rename of it, or of a folder above it, is refused
    (EBUSY) with nothing moved, until it is closed (a folder move let the stream land at
    the old name, making the folder again beside the moved one; a rename of the file
    finished its stream half written, and the next append failed)."""
    mount = on_small_disk(tmpfs, mount_factory, tmp_path, "8m", "local")
    (mount.path / "d").mkdir()
    fd, data = streaming(mount, mount.path / "d" / "big.bin")
    for old, new in (("d", "e"), ("d/big.bin", "d/other.bin")):
        with pytest.raises(OSError) as refused:
            os.rename(mount.path / old, mount.path / new)
        assert refused.value.errno == errno.EBUSY
    more = os.urandom(MiB)
    os.write(fd, more)
    os.close(fd)
    assert cloud_bytes(mount, "d/big.bin") == data + more
    assert os.listdir(mount.path) == ["d"]
    assert os.listdir(mount.path / "d") == ["big.bin"]
    os.rename(mount.path / "d", mount.path / "e")
    assert cloud_bytes(mount, "e/big.bin") == data + more
    assert cloud_bytes(mount, "d/big.bin") is None
    assert os.listdir(mount.path) == ["e"]


def test_a_failed_stream_fails_every_later_close(
    request: pytest.FixtureRequest,
    tmpfs: TmpfsMount,
    mount_factory: MountFactory,
    tmp_path: Path,
) -> None:
    """The bucket out of reach while a file streams: its fsync fails (EIO), and so do every
    later write, fsync and close of it, the bucket back or not (the close after a failed
    fsync returned 0, its bytes lost). Then the mount shows what the bucket holds."""
    mount, relay = small_mount_behind_relay(
        request, tmpfs, mount_factory, tmp_path, "s3-seaweedfs", 3.0
    )
    fd, _ = streaming(mount, mount.path / "big.bin")
    relay.cut()
    with pytest.raises(OSError) as failed:
        os.fsync(fd)
    assert failed.value.errno == errno.EIO
    relay.restore()
    for later in (lambda: os.write(fd, b"more"), lambda: os.fsync(fd), lambda: os.close(fd)):
        with pytest.raises(OSError) as failed:
            later()
        assert failed.value.errno == errno.EIO
    assert cloud_bytes(mount, "big.bin") is None
    assert os.listdir(mount.path) == []


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
def test_a_stream_another_client_aborted_fails_its_close_with_eio(
    provider: str,
    request: pytest.FixtureRequest,
    tmpfs: TmpfsMount,
    mount_factory: MountFactory,
    tmp_path: Path,
) -> None:
    """Another client aborts the multipart upload of a file being streamed (as a tierfs
    node does to the uploads of a key begun during its own failed put): the store answers
    the completion NoSuchUpload, and the close fails with EIO, its bytes lost as a failed
    stream's are; it said ENOENT ("no such file") of the file just written."""
    mount, relay = small_mount_behind_relay(request, tmpfs, mount_factory, tmp_path, provider, 10.0)
    s3 = s3_server_for(request, provider).boto3_client()
    bucket = mount.flags["s3_bucket"]
    fd, _ = streaming(mount, mount.path / "big.bin")
    relay.hold(b"?uploadId=")  # the completion: every part is in
    closing = threading.Thread(target=lambda: closed.append(close_errno(fd)))
    closed: list[int] = []
    closing.start()
    abort_the_held_upload(relay, s3, bucket)
    closing.join(60)
    assert closed == [errno.EIO]
    assert cloud_bytes(mount, "big.bin") is None
    assert os.listdir(mount.path) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.warnings_expected
def test_a_restart_aborts_the_stream_a_kill_cut_and_no_other_clients(
    request: pytest.FixtureRequest,
    tmpfs: TmpfsMount,
    mount_factory: MountFactory,
    tmp_path: Path,
) -> None:
    """A file streaming to the cloud (larger than the disk) when the client is killed
    (SIGKILL): its bytes are lost, as a failed stream's are, and its multipart upload was
    left in the bucket, its parts billed for good (no journal row names a stream). The
    restart aborts it, but not the one of the same key that another client began while
    this node was down."""
    mount, _ = small_mount_behind_relay(
        request, tmpfs, mount_factory, tmp_path, "s3-seaweedfs", 3.0
    )
    s3 = s3_server_for(request, "s3-seaweedfs").boto3_client()
    bucket = mount.flags["s3_bucket"]
    fd, _ = streaming(mount, mount.path / "big.bin")
    deadline = time.monotonic() + 30
    while not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert time.monotonic() < deadline, "the stream began no multipart upload"
        time.sleep(0.05)
    mount.kill()
    close_errno(fd)  # of the dead mount
    time.sleep(12)  # past the moment this node's upload began (2 deadlines and 5 s)
    other = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")["UploadId"]
    mount.start()  # the uploads a kill left are aborted before the mount appears
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(upload["Key"], upload["UploadId"]) for upload in uploads] == [("big.bin", other)]
    s3.abort_multipart_upload(Bucket=bucket, Key="big.bin", UploadId=other)
    assert cloud_bytes(mount, "big.bin") is None


def small_mount_behind_relay(
    request: pytest.FixtureRequest,
    tmpfs: TmpfsMount,
    mount_factory: MountFactory,
    tmp_path: Path,
    provider: str,
    cloud_timeout: float,
) -> tuple[Mount, Relay]:
    """A mount of `provider` whose S3 requests pass a relay, with a tier 1 of 8 MiB (so a
    large file streams) and a `cloud_timeout` deadline."""
    mount = mount_factory(provider, start=False)
    relay, relayed = relay_in_front_of(mount.flags["s3_endpoint"])
    request.addfinalizer(relay.stop)
    mount.flags |= {"s3_endpoint": relayed, "cloud_timeout": str(cloud_timeout)}
    mount.nvme = tmpfs(tmp_path / "small-nvme", "8m")
    mount.start()
    return mount, relay


@pytest.mark.warnings_expected
def test_a_stop_with_the_cloud_down_says_a_streaming_file_is_lost_and_exits_1(
    request: pytest.FixtureRequest,
    tmpfs: TmpfsMount,
    mount_factory: MountFactory,
    tmp_path: Path,
) -> None:
    """A file still streaming when the client is stopped with the bucket out of reach
    cannot go up, nor stay staged (its bytes were never on disk): the client names it in
    one ERROR and exits 1 (it exited 0, as if the bucket had it). With the bucket back,
    the next start shows what the bucket holds."""
    mount, relay = small_mount_behind_relay(
        request, tmpfs, mount_factory, tmp_path, "s3-seaweedfs", 3.0
    )
    fd, _ = streaming(mount, mount.path / "big.bin")
    relay.cut()
    assert mount.stop() == 1
    with contextlib.suppress(OSError):
        os.close(fd)  # of the dead mount
    log = mount.log.read_text()
    assert len([line for line in log.splitlines() if " ERROR " in line and "big.bin" in line]) == 1
    assert "1 file(s) being streamed to the cloud are lost: big.bin" in mount.log_tail(3)
    relay.restore()
    mount.start()
    assert cloud_bytes(mount, "big.bin") is None
    assert os.listdir(mount.path) == []

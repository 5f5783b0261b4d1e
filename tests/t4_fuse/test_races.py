"""Calls that meet half way: one call is caught at a request to the bucket (a relay holds
it) while another comes, as threads and processes do to a shared mount. Each ends as on a
local disk, and the bucket holds what the mount shows."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

import pytest

from cloud_targets import s3_server_for
from mounts import Mount, cloud_bytes, cloud_put
from relay import Relay, relay_in_front_of
from trees import bucket_tree, tree

T = TypeVar("T")
MiB = 2**20
SETTLE = 0.5  # seconds for a call to reach the mount and wait there


@pytest.fixture
def relayed(
    request: pytest.FixtureRequest, mount_factory: Callable[..., Mount]
) -> tuple[Relay, Mount]:
    """A mount of SeaweedFS through a relay that holds requests, 1 MiB chunks, answers
    kept for a minute (what the mount knows is what it did)."""
    server = s3_server_for(request, "s3-seaweedfs")
    relay, endpoint = relay_in_front_of(server.endpoint)
    request.addfinalizer(relay.stop)
    mount = mount_factory(
        "s3-seaweedfs", s3_endpoint=endpoint, chunk_size="1MiB", metadata_ttl="60s"
    )
    return relay, mount


def request(mount: Mount, method: str, key: str) -> bytes:
    """How a request for `key` of the mount's bucket starts."""
    return f"{method} /{mount.flags['s3_bucket']}/{key} ".encode()


def in_thread(call: Callable[[], T]) -> Future[T]:
    """`call` in a thread of its own (a daemon: a call that hangs fails its test, not the
    run)."""
    ended: Future[T] = Future()

    def run() -> None:
        try:
            ended.set_result(call())
        except BaseException as exc:  # noqa: BLE001 (the test gets it)
            ended.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return ended


def caught(relay: Relay, request: bytes, call: Callable[[], T]) -> Future[T]:
    """`call` in a thread, held at its request to the bucket that holds `request`."""
    relay.hold(request)
    started = in_thread(call)
    relay.wait_until_held()
    return started


def meanwhile(call: Callable[[], T]) -> Future[T]:
    """`call` in a thread, given the time to reach the mount (and wait there)."""
    started = in_thread(call)
    wait([started], SETTLE)
    return started


def read_all(fd: int, size: int) -> bytes:
    return os.pread(fd, size, 0)


def test_a_read_of_a_file_being_replaced_gets_the_old_bytes_whole(
    relayed: tuple[Relay, Mount],
) -> None:
    """A rename over a file that a handle reads first copies the old bytes aside for the
    handle (POSIX: they stay readable). Reads meanwhile come from the bucket, not from the
    part copied so far (they got short reads, or none)."""
    relay, mount = relayed
    old, new = os.urandom(3 * MiB), os.urandom(MiB)
    cloud_put(mount, "data.bin", old)
    (mount.path / "new.bin").write_bytes(new)
    fd = os.open(mount.path / "data.bin", os.O_RDONLY)
    try:
        renaming = caught(
            relay,
            request(mount, "GET", "data.bin"),
            lambda: os.rename(mount.path / "new.bin", mount.path / "data.bin"),
        )
        reading = meanwhile(lambda: read_all(fd, len(old)))
        relay.release()
        assert renaming.result(60) is None
        assert reading.result(60) == old
        assert read_all(fd, len(old)) == old
    finally:
        os.close(fd)
    assert (mount.path / "data.bin").read_bytes() == new
    assert cloud_bytes(mount, "data.bin") == new


def test_an_unlink_whose_file_is_closed_meanwhile_succeeds(relayed: tuple[Relay, Mount]) -> None:
    """An unlink copies aside the bytes of a file a handle has open; the handle's close
    meanwhile dropped that copy under it (EIO, the file left in place)."""
    relay, mount = relayed
    cloud_put(mount, "data.bin", os.urandom(3 * MiB))
    fd = os.open(mount.path / "data.bin", os.O_RDONLY)
    unlinking = caught(
        relay, request(mount, "GET", "data.bin"), lambda: os.unlink(mount.path / "data.bin")
    )
    os.close(fd)
    time.sleep(SETTLE)  # the close's release reaches the mount
    relay.release()
    assert unlinking.result(60) is None
    assert not (mount.path / "data.bin").exists()
    assert cloud_bytes(mount, "data.bin") is None


def test_an_open_during_an_unlink_fails_or_reads_the_whole_file(
    relayed: tuple[Relay, Mount],
) -> None:
    """The kernel lets an open of a name through while the name is being unlinked. The
    open waits for the unlink (ENOENT after it), or it came first and reads the file whole
    after it (it got the file the unlink was deleting, and ESTALE at its reads)."""
    relay, mount = relayed
    data = os.urandom(3 * MiB)
    cloud_put(mount, "data.bin", data)
    assert (mount.path / "data.bin").stat().st_size == len(data)  # the kernel knows it
    # (S3 deletes through obstore are batch deletes: POST ?delete)

    def open_it() -> int | None:
        try:
            return os.open(mount.path / "data.bin", os.O_RDONLY)
        except FileNotFoundError:
            return None

    unlinking = caught(relay, b"?delete HTTP", lambda: os.unlink(mount.path / "data.bin"))
    opening = meanwhile(open_it)
    relay.release()
    assert unlinking.result(60) is None
    fd = opening.result(60)
    if fd is not None:  # opened before the unlink: its bytes stay readable
        try:
            assert read_all(fd, len(data)) == data
        finally:
            os.close(fd)
    assert cloud_bytes(mount, "data.bin") is None


def test_a_read_during_a_rename_of_its_file_reads_on_at_the_new_name(
    relayed: tuple[Relay, Mount],
) -> None:
    """A handle reading a file that is renamed meanwhile, from a chunk the bucket no longer
    has under the old name (deleted, the handle not moved yet): the read waits for the
    rename and reads the new name (it failed with ESTALE)."""
    relay, mount = relayed
    data = os.urandom(3 * MiB)
    cloud_put(mount, "old.bin", data)
    assert sorted(os.listdir(mount.path)) == ["old.bin"]  # the folder's listing is known
    fd = os.open(mount.path / "old.bin", os.O_RDONLY)
    try:
        renaming = caught(  # after the copy and the delete
            relay,
            request(mount, "HEAD", "new.bin"),
            lambda: os.rename(mount.path / "old.bin", mount.path / "new.bin"),
        )
        reading = meanwhile(lambda: os.pread(fd, MiB, 2 * MiB))
        relay.release()
        assert renaming.result(60) is None
        assert reading.result(60) == data[2 * MiB :]
    finally:
        os.close(fd)
    assert cloud_bytes(mount, "old.bin") is None
    assert cloud_bytes(mount, "new.bin") == data


def test_a_rename_in_a_folder_being_moved_waits_for_the_move(
    relayed: tuple[Relay, Mount], mount_factory: Callable[..., Mount]
) -> None:
    """A folder moves one object at a time. A file renamed in it meanwhile vanished from
    the move (EIO, both folders left) or stayed under the old folder; now it waits, and
    then it renames in the folder where it is: the moved one."""
    relay, mount = relayed
    top = mount.path / "top"
    (top / "src").mkdir(parents=True)
    for name in ("one", "two", "three"):
        (top / "src" / name).write_bytes(name.encode())
    moving = caught(
        relay, request(mount, "PUT", "top/dst/one"), lambda: os.rename(top / "src", top / "dst")
    )
    renaming = meanwhile(lambda: os.rename(top / "src/two", top / "src/four"))
    relay.release()
    assert moving.result(60) is None
    assert renaming.result(60) is None
    seen = tree(top)
    assert {path: entry.split(" ")[0] for path, entry in seen.items()} == {
        "dst": "folder",
        "dst/one": "3",
        "dst/four": "3",
        "dst/three": "5",
    }
    assert bucket_tree(mount, "top") == seen
    mount.stop()
    assert tree(mount_factory("s3-seaweedfs", **mount.bucket_flags()).path / "top") == seen


@pytest.mark.warnings_expected
def test_a_folder_move_cut_short_shows_what_the_bucket_holds(
    request: pytest.FixtureRequest, mount_factory: Callable[..., Mount]
) -> None:
    """The bucket goes out of reach as a folder move starts its deletes: the move fails
    (EIO), every file copied and the old folder still there, and the mount shows both
    folders, as the bucket holds them (it showed the old folder alone, as it knew it
    before, for the TTL)."""
    server = s3_server_for(request, "s3-seaweedfs")
    relay, endpoint = relay_in_front_of(server.endpoint)
    request.addfinalizer(relay.stop)
    mount = mount_factory(
        "s3-seaweedfs", s3_endpoint=endpoint, metadata_ttl="60s", cloud_timeout="3"
    )
    top = mount.path / "top"
    (top / "src").mkdir(parents=True)
    for name in ("one", "two"):
        (top / "src" / name).write_bytes(name.encode())
    assert os.listdir(top) == ["src"]  # known to the mount
    moving = caught(relay, b"?delete HTTP", lambda: os.rename(top / "src", top / "dst"))
    relay.cut()  # the held delete never reaches the bucket, nor do the others
    with pytest.raises(OSError) as failed:
        moving.result(60)
    assert failed.value.errno == errno.EIO
    relay.restore()
    seen = tree(top)
    assert {"dst", "dst/one", "dst/two", "src"} <= set(seen)  # a delete may have gone first
    assert bucket_tree(mount, "top") == seen


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs", "azure", "gcp-native"])
def test_a_rename_of_a_file_another_node_rewrote_moves_the_buckets_file(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """A file held open here and written by another node since (this node still knows its
    first version): renamed here, the bucket's file moves (as a rename on that node
    would), and the handle reads the bytes it opened that this node holds, the rest
    ESTALE: never the other node's bytes cut to the first one's size, nor EIO (as the
    rename took the copy of the other's bytes for its own: "shorter than its metadata
    says")."""
    mount = mount_factory(provider, chunk_size="64KiB")
    first, second = os.urandom(200_000), os.urandom(100_000)
    cloud_put(mount, "b", first)  # written elsewhere: tier 1 holds nothing of it
    fd = os.open(mount.path / "b", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == first[:10]  # its first chunk only
        cloud_put(mount, "b", second)  # another node writes it
        os.rename(mount.path / "b", mount.path / "c")
        got = os.pread(fd, len(first), 0)  # the chunk it has, then a part that fails...
        assert first.startswith(got)
        if len(got) < len(first):  # ...which the kernel answers as a short read
            with pytest.raises(OSError) as stale:
                os.pread(fd, len(first) - len(got), len(got))
            assert stale.value.errno == errno.ESTALE
    finally:
        os.close(fd)
    assert cloud_bytes(mount, "c") == second
    assert cloud_bytes(mount, "b") is None
    assert (mount.path / "c").read_bytes() == second

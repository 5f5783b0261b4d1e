"""Mount, stop, crash and restart: nothing acknowledged is lost, and errors are one line."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import servers
from cloud_targets import Server, networked_server_for, server_for, target_flags
from mounts import (
    BUCKET_FLAGS,
    Mount,
    client_command,
    close_errno,
    cloud_bytes,
    cloud_put,
    is_mounted,
    node_stats,
    on_cloud,
    unmount_if_mounted,
)
from relay import Relay, relay_in_front_of
from tierfs.cloud.base import CloudStore
from tierfs.errors import CloudError, VersionChangedError
from tierfs.fs.filesystem import RETRY_INTERVAL


def test_sigterm_uploads_dirty_files_unmounts_and_exits_0(
    mount_factory: Callable[..., Mount],
) -> None:
    mount = mount_factory("local")
    fd = os.open(mount.path / "open-at-stop", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"written, never closed")
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(60) == 0
    assert not is_mounted(mount.path)
    with pytest.raises(OSError):
        os.close(fd)  # the filesystem is gone; its bytes are not
    assert cloud_bytes(mount, "open-at-stop") == b"written, never closed"


def test_a_client_whose_parent_blocked_sigterm_stops_on_it(
    mount_factory: Callable[..., Mount],
) -> None:
    """A process inherits its parent's blocked signals through exec: a client started by
    a program that blocked SIGTERM and SIGINT (to `sigwait` for them) never heard a
    SIGTERM, and never unmounted. It unblocks them at start."""
    stops = {signal.SIGINT, signal.SIGTERM}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # the client inherits it
    try:
        mount = mount_factory("local")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    (mount.path / "f").write_bytes(b"x")
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(30) == 0
    assert not is_mounted(mount.path)


def test_the_kernel_reads_ahead_a_chunk_and_sends_64_requests_at_once(
    mount_factory: Callable[..., Mount],
) -> None:
    mount = mount_factory("local")
    target = str(mount.path)
    with open("/proc/self/mountinfo") as mounts:
        device = next(line.split()[2] for line in mounts if line.split()[4] == target)
    read_ahead = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    background = Path(f"/sys/fs/fuse/connections/{device.split(':')[1]}/max_background")
    # set before the mount answers its first request: a file opened then gets them too
    assert background.read_text() == "64\n"  # fusectl mounted by the client if need be
    assert read_ahead.read_text() == "4096\n"


def test_a_client_started_under_a_soft_limit_of_1024_files_holds_more_open(
    mount_factory: Callable[..., Mount],
) -> None:
    """A shell's and a systemd service's soft limit of open files is 1024 (the hard one is
    far higher): the client takes its hard limit at start. Before, a program holding a
    thousand files open for writing on the mount got EIO at the next create, and every
    close of the thousand failed with EIO (their uploads could open nothing either)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = 1100
    assert hard >= files + 200, f"this machine's hard limit of open files is only {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the client inherits it
    try:
        mount = mount_factory("local")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, files + 100), hard))
    try:
        fds = []
        try:
            for index in range(files):
                fd = os.open(mount.path / f"f{index}", os.O_WRONLY | os.O_CREAT, 0o644)
                fds.append(fd)
                os.write(fd, b"%d" % index)
        finally:
            closed = []
            for fd in fds:
                try:
                    os.close(fd)
                    closed.append(0)
                except OSError as exc:
                    closed.append(exc.errno or -1)
        assert (len(fds), closed) == (files, [0] * files)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert cloud_bytes(mount, f"f{files - 1}") == b"%d" % (files - 1)


@pytest.mark.parametrize("provider", ["local", "azure", "gcp-native"])
def test_kill_9_before_upload_loses_nothing(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """Killed before the file's close, the client uploads it at its restart: several
    parts, blocks or chunks (on Azure, some of them staged while it was written)."""
    mount = mount_factory(provider)
    fd = os.open(mount.path / "crash.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    payload = os.urandom(20 * 2**20 + 5)
    assert os.write(fd, payload) == len(payload)
    mount.kill()  # before close: nothing uploaded yet
    assert cloud_bytes(mount, "crash.bin") is None
    with pytest.raises(OSError):
        os.close(fd)  # the daemon is gone
    # The mount point is stale now; a new start cleans it and uploads the journal first.
    mount.start()
    assert cloud_bytes(mount, "crash.bin") == payload
    assert (mount.path / "crash.bin").read_bytes() == payload
    assert "stale mount" in mount.log_tail(200)


def test_a_restart_removes_the_staging_files_a_crash_left_of_uploaded_files(
    mount_factory: Callable[..., Mount],
) -> None:
    mount = mount_factory("local")
    staging = mount.nvme / "staging"
    synced, dirty = os.urandom(2**20), os.urandom(2**20)
    fds = [os.open(mount.path / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in "ab"]
    for fd, payload in zip(fds, (synced, dirty), strict=True):
        assert os.write(fd, payload) == len(payload)
    os.fsync(fds[0])  # "a" is in the cloud; its staging file stays while it is open
    assert len(list(staging.iterdir())) == 2
    mount.kill()
    for fd in fds:
        with pytest.raises(OSError):
            os.close(fd)
    mount.start()
    assert cloud_bytes(mount, "a") == synced and cloud_bytes(mount, "b") == dirty
    assert list(staging.iterdir()) == []
    assert "removed 1 staging files" in mount.log_tail(200)


def test_a_restart_removes_the_temp_file_of_a_local_upload_a_crash_cut_short(
    mount_factory: Callable[..., Mount],
) -> None:
    """Killed while a file went up to the local provider, the client left obstore's temp
    file (`name#N`) beside the key: its bytes held for good, and its folder kept listed
    and unremovable once emptied. The restart sends the file again and removes it."""
    mount = mount_factory("local")
    bucket = Path(mount.flags["local_root"])
    (mount.path / "d").mkdir()
    payload = os.urandom(512 * 2**20)
    fd = os.open(mount.path / "d/big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    assert os.write(fd, payload) == len(payload)
    closing = threading.Thread(target=close_errno, args=(fd,))
    closing.start()  # the close sends the file
    deadline = time.monotonic() + 30
    while not list((bucket / "d").glob("big.bin#*")):
        assert time.monotonic() < deadline, "no upload under way"
        time.sleep(0.005)
    mount.kill()
    closing.join()
    assert list((bucket / "d").glob("big.bin#*"))  # cut short
    mount.start()  # the journal's uploads are done before the mount appears
    assert cloud_bytes(mount, "d/big.bin") == payload
    assert os.listdir(bucket / "d") == ["big.bin"]
    assert "which a crash left" in mount.log_tail(200)


def conflict_copies(mount: Mount) -> dict[str, bytes]:
    """What the bucket behind `mount` holds under `.tierfs-conflicts/`, by key."""

    async def fetch(cloud: CloudStore) -> dict[str, bytes]:
        listed = (await cloud.list_all(".tierfs-conflicts/", delimiter=False)).objects
        return {
            meta.key: bytes(await cloud.get_range(meta.key, 0, meta.size, meta.version))
            for meta in listed
        }

    return on_cloud(mount, fetch)


def write_and_crash(mount: Mount, name: str, payload: bytes) -> None:
    """Write `payload` over the file `name` through `mount`, then kill the client before
    the file is closed (nothing uploaded)."""
    fd = os.open(mount.path / name, os.O_WRONLY | os.O_TRUNC)
    assert os.write(fd, payload) == len(payload)
    mount.kill()
    with pytest.raises(OSError):
        os.close(fd)


@pytest.mark.warnings_expected
def test_a_file_changed_elsewhere_while_its_writer_was_down_keeps_both_versions(
    mount_factory: Callable[..., Mount],
) -> None:
    """Killed before its upload, a node finds at its restart that another node wrote the
    file meanwhile (and closed it: the bucket has it). Its own bytes, never closed, must
    not replace the other's, which were: they go under `.tierfs-conflicts/`, and the log
    says where."""
    mount = mount_factory("local")
    (mount.path / "labels.csv").write_bytes(b"id,label\n1,cat\n")
    ours = b"id,label\n1,dog\n2,cow\n"
    write_and_crash(mount, "labels.csv", ours)
    theirs = b"id,label\n1,cat\n2,hen\n"
    cloud_put(mount, "labels.csv", theirs)  # another node's close, while this one is down
    mount.start()
    assert cloud_bytes(mount, "labels.csv") == theirs
    copies = conflict_copies(mount)
    assert list(copies.values()) == [ours]
    (key,) = copies
    assert key.startswith(".tierfs-conflicts/") and key.endswith("/labels.csv")
    assert (mount.path / key).read_bytes() == ours
    assert (mount.path / "labels.csv").read_bytes() == theirs
    assert f"that goes to {key}" in mount.log.read_text()


@pytest.mark.warnings_expected
@pytest.mark.parametrize(
    ("provider", "when"),
    [
        ("local", "listed"),
        ("local", "at close"),
        ("local", "at restart"),
        ("s3-seaweedfs", "listed"),
        ("s3-moto", "listed"),
        ("s3-moto", "at restart"),
    ],
)
def test_a_file_whose_name_became_a_folder_before_its_upload_goes_aside(
    mount_factory: Callable[..., Mount], provider: str, when: str
) -> None:
    """`d/f` is being written here when another node makes `d/f` a folder (it puts
    `d/f/x`). The file's bytes go under `.tierfs-conflicts/`, as a late upload's do when
    another node changed its object: once this mount lists the folder, once the store
    refuses the put for it (the local directory holds no file beside a folder), or at the
    restart after a crash; the close succeeds, the log says where they went, once. The
    close said EINVAL (listed) or EIO, and the upload failed again every 5 s for good."""
    mount = mount_factory(provider)
    (mount.path / "d").mkdir()
    ours = b"written here\n"
    fd = os.open(mount.path / "d/f", os.O_CREAT | os.O_WRONLY)
    assert os.write(fd, ours) == len(ours)
    if when == "at restart":
        mount.kill()
        with pytest.raises(OSError):
            os.close(fd)
    cloud_put(mount, "d/f/x", b"theirs")  # another node
    if when == "listed":
        time.sleep(1.2)  # past the TTL of what this mount knows of d
        assert os.listdir(mount.path / "d") == ["f"]
        assert (mount.path / "d/f").is_dir()
    if when == "at restart":
        mount.start()
    else:
        os.close(fd)
    copies = conflict_copies(mount)
    assert list(copies.values()) == [ours]
    (key,) = copies
    assert key.startswith(".tierfs-conflicts/") and key.endswith("/d/f")
    assert (mount.path / key).read_bytes() == ours
    time.sleep(RETRY_INTERVAL + 1)  # no retry: nothing is left to upload
    assert os.listdir(mount.path / "d/f") == ["x"]  # (the kernel forgot its file: 1 s)
    assert (mount.path / "d/f/x").read_bytes() == b"theirs"
    said = mount.log.read_text()
    assert said.count(f"that goes to {key}") == 1
    assert "upload failed" not in said and "recovery upload failed" not in said
    assert mount.stop() == 0
    assert list(conflict_copies(mount).values()) == [ours]


def test_a_file_whose_upload_landed_before_the_crash_is_no_conflict(
    mount_factory: Callable[..., Mount],
) -> None:
    """The bucket already holds what the journal names (the put went through and the
    client was killed before it noted so), or still the version it was written over:
    recovery puts it at its own key."""
    mount = mount_factory("local")
    for name in ("landed.bin", "waiting.bin"):
        (mount.path / name).write_bytes(b"before")
    landed, waiting = os.urandom(3 * 2**20), os.urandom(2**20)
    write_and_crash(mount, "landed.bin", landed)
    cloud_put(mount, "landed.bin", landed)
    mount.start()
    write_and_crash(mount, "waiting.bin", waiting)
    mount.start()
    assert cloud_bytes(mount, "landed.bin") == landed
    assert cloud_bytes(mount, "waiting.bin") == waiting
    assert conflict_copies(mount) == {}


def test_a_client_started_at_once_after_a_crash_cleans_up_the_stale_mount(
    mount_factory: Callable[..., Mount],
) -> None:
    """Within a second of the crash the kernel still answers `stat` of the mount point
    from its cache, as if the mount were alive: the new client said "busy" and exited 1
    (a service manager restarting it at once would fail the same way)."""
    mount = mount_factory("local")
    (mount.path / "kept.txt").write_bytes(b"kept")
    os.stat(mount.path)  # its attributes in the kernel's cache
    mount.kill()
    mount.start()
    assert (mount.path / "kept.txt").read_bytes() == b"kept"
    assert "stale mount" in mount.log_tail(200)


def test_kill_9_after_renaming_the_folder_of_a_dirty_file_puts_it_where_it_was_moved(
    mount_factory: Callable[..., Mount],
) -> None:
    mount = mount_factory("s3-seaweedfs")
    (mount.path / "before").mkdir()
    (mount.path / "before" / "kept.txt").write_bytes(b"in the cloud already")
    fd = os.open(mount.path / "before" / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    payload = os.urandom(2**20)
    assert os.write(fd, payload) == len(payload)
    os.rename(mount.path / "before", mount.path / "after")  # the file is still open, dirty
    mount.kill()
    with pytest.raises(OSError):
        os.close(fd)
    mount.start()  # recovery uploads the journaled file
    assert cloud_bytes(mount, "after/open.bin") == payload
    assert cloud_bytes(mount, "before/open.bin") is None
    assert cloud_bytes(mount, "after/kept.txt") == b"in the cloud already"
    assert (mount.path / "after" / "open.bin").read_bytes() == payload
    # (no check that "before" is gone from listings: SeaweedFS lists an emptied prefix
    # for a while, see notes/test-servers.md)


def test_kill_9_during_a_directory_rename_leaves_every_file_under_a_name(
    mount_factory: Callable[..., Mount],
) -> None:
    """A directory rename copies every object, then deletes the old ones: a client killed
    part way leaves each file under its new name, its old one or both, never neither, and
    the restarted mount reads each where the bucket has it. (The kill comes at half the
    time a rename of the same tree took; tried again on a new tree until one lands in the
    middle.)"""
    mount = mount_factory("s3-seaweedfs")
    files = {f"f{n:03d}": os.urandom(1000) for n in range(300)}
    for attempt in range(5):
        first, old, new = (f"{name}{attempt}" for name in ("first", "old", "new"))
        (mount.path / first).mkdir()
        for name, body in files.items():
            (mount.path / first / name).write_bytes(body)
        started = time.monotonic()
        os.rename(mount.path / first, mount.path / old)
        took = time.monotonic() - started

        def rename_until_killed(old: str = old, new: str = new) -> None:
            with contextlib.suppress(OSError):  # ENOTCONN: the client is gone
                os.rename(mount.path / old, mount.path / new)

        renaming = threading.Thread(target=rename_until_killed)
        renaming.start()
        time.sleep(took / 2)
        mount.kill()
        renaming.join(10)
        mount.start()
        in_bucket = {folder: bucket_files(mount, folder) for folder in (old, new)}
        where = {
            name: {folder for folder in (old, new) if in_bucket[folder].get(name) == body}
            for name, body in files.items()
        }
        assert all(where.values()), f"lost: {[n for n, at in where.items() if not at]}"
        for name, at in where.items():
            for folder in at:
                assert (mount.path / folder / name).read_bytes() == files[name]
        if any(old in at for at in where.values()) and any(new in at for at in where.values()):
            return  # killed in the middle
    pytest.fail("no kill landed in the middle of a rename")


def bucket_files(mount: Mount, folder: str) -> dict[str, bytes]:
    """The objects the bucket behind `mount` holds in `folder`, by name."""

    async def fetch(cloud: CloudStore) -> dict[str, bytes]:
        listed = [
            meta
            for meta in (await cloud.list_all(folder + "/")).objects
            if not meta.key.endswith("/")  # the folder's marker
        ]
        bodies = [cloud.get_range(meta.key, 0, meta.size, meta.version) for meta in listed]
        return {
            meta.key.rpartition("/")[2]: bytes(body)
            for meta, body in zip(listed, await asyncio.gather(*bodies), strict=True)
        }

    return on_cloud(mount, fetch)


def wait_for_object(
    mount: Mount, key: str, body: bytes | None = None, timeout: float = 60.0
) -> None:
    """Until the cloud has `key` (with `body`, if given): an upload the client retries on
    its own. The caller checks what is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(VersionChangedError):  # the upload landed as it was read
            found = cloud_bytes(mount, key)
            if found is not None and (body is None or found == body):
                return
        time.sleep(0.5)


def own_cloud_and_mount(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[servers.S3Server, Mount]:
    """A SeaweedFS this test alone uses (so it may stop it), and a mount of it with a
    3 s cloud deadline; both stopped at the end."""
    server = servers.start_seaweedfs(tmp_path / "own-server")
    request.addfinalizer(server.stop)
    flags, env = target_flags("s3-seaweedfs", server, tmp_path, timeout=3.0)
    mount = Mount(tmp_path / "mnt", tmp_path / "nvme", flags, env, tmp_path / "client.log")
    request.addfinalizer(mount.stop)
    return server, mount.start()


@pytest.mark.warnings_expected
def test_a_read_the_cloud_fails_is_one_error_line_each(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A read the bucket cannot answer (a map's page, a `read`) is EIO and one ERROR line
    naming the file, whatever the kernel makes of it: it sends a page fault's or a
    buffered read's requests several at once, sharing one failed fetch, and asks again
    (before 2026-12-07 one line each: six for a page of a map and a read)."""
    server, mount = own_cloud_and_mount(request, tmp_path)
    payload = os.urandom(3 * 2**20)
    cloud_put(mount, "far.bin", payload)  # in the bucket alone: no chunk of it in tier 1
    assert os.stat(mount.path / "far.bin").st_size == len(payload)
    server.proc.kill()
    fault = "import mmap, os, sys; f = os.open(sys.argv[1], os.O_RDONLY); " + (
        "mmap.mmap(f, 0, access=mmap.ACCESS_READ)[5000]"
    )
    mapped = subprocess.run([sys.executable, "-c", fault, str(mount.path / "far.bin")])
    assert mapped.returncode == -signal.SIGBUS  # the page the kernel could not give
    with pytest.raises(OSError) as failed:
        (mount.path / "far.bin").read_bytes()
    assert failed.value.errno == errno.EIO
    errors = [line for line in mount.log.read_text().splitlines() if " ERROR " in line]
    # one each, or one for both: the read may come while the failed fetch is remembered
    assert 1 <= len(errors) <= 2 and all("far.bin" in line for line in errors), errors


@pytest.mark.warnings_expected
def test_upload_failure_is_eio_and_the_data_is_kept(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server, mount = own_cloud_and_mount(request, tmp_path)
    payload = b"must not be lost " * 1000
    fd = os.open(mount.path / "keep.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, payload)
    server.proc.kill()  # the cloud goes down before the file is closed
    started = time.monotonic()
    with pytest.raises(OSError) as failed:
        os.close(fd)
    assert failed.value.errno == errno.EIO
    assert time.monotonic() - started < 30  # the cloud deadline, not a hang
    assert (mount.path / "keep.txt").read_bytes() == payload  # kept, and still visible here
    server.proc.restart()  # the cloud is back: the kept file goes up without any help
    wait_for_object(mount, "keep.txt")
    assert cloud_bytes(mount, "keep.txt") == payload
    assert mount.stop() == 0


# What a part, block or chunk request of a large upload holds, by provider.
PART_REQUEST = {"azure": b"comp=block", "gcp-native": b"upload_id="}


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["azure", "gcp-native"])  # S3: the same path as Azure's
def test_a_close_cut_off_mid_upload_is_eio_and_the_file_goes_up_whole_once_back(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    """The bucket is lost part way through a large file's upload at its close (some
    parts, staged blocks or a resumable session's chunks have landed): the close fails
    (EIO), the mount still reads the file, and once the bucket is back the retry puts it
    whole, over the file it replaces, and nothing goes under `.tierfs-conflicts/`."""
    relay, mount = relayed_mount(request, tmp_path, provider)
    payload = os.urandom(40 * 2**20 + 5)
    (mount.path / "big.bin").write_bytes(b"the old content")
    fd = os.open(mount.path / "big.bin", os.O_WRONLY)
    os.write(fd, payload)  # not appends from empty: put at its close
    relay.slow(PART_REQUEST[provider], 1.0)
    closed: list[int] = []
    closing = threading.Thread(target=lambda: closed.append(close_errno(fd)))
    closing.start()
    time.sleep(1.5)  # a part or two has gone up
    relay.cut()
    closing.join(60)
    assert closed == [errno.EIO]
    assert (mount.path / "big.bin").read_bytes() == payload
    relay.slow(PART_REQUEST[provider], 0.0)
    relay.restore()
    wait_for_object(mount, "big.bin", payload)
    assert cloud_bytes(mount, "big.bin") == payload
    assert conflict_copies(mount) == {}
    assert mount.stop() == 0
    assert journaled(mount.nvme) == []


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["azure", "gcp-native"])
def test_kill_9_while_large_files_go_up_puts_them_whole_at_the_restart(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    """Killed (SIGKILL) while one file goes up at its close and another is written (on
    Azure its blocks go up meanwhile): the restart puts both whole from the journal, and
    the next write of either goes up. (On S3 the restart also aborts the multipart
    uploads the kill left: `test_a_restart_aborts_the_uploads_a_kill_left_...`.)"""
    relay, mount = relayed_mount(request, tmp_path, provider)
    relay.slow(PART_REQUEST[provider], 1.0)
    whole, early = os.urandom(24 * 2**20 + 5), os.urandom(24 * 2**20 + 7)
    (mount.path / "whole.bin").write_bytes(b"x")
    rewritten = os.open(mount.path / "whole.bin", os.O_WRONLY)
    os.write(rewritten, whole)
    closing = threading.Thread(target=close_errno, args=(rewritten,))
    closing.start()
    appended = os.open(mount.path / "early.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(appended, early)
    time.sleep(1.5)  # a part or two has gone up
    mount.kill()
    closing.join(30)
    close_errno(appended)  # of the dead mount
    relay.slow(PART_REQUEST[provider], 0.0)
    mount.start()  # the journal's uploads are done before the mount appears
    for name, body in (("whole.bin", whole), ("early.bin", early)):
        assert cloud_bytes(mount, name) == body
        assert (mount.path / name).read_bytes() == body
    assert conflict_copies(mount) == {}
    (mount.path / "whole.bin").write_bytes(early)
    assert cloud_bytes(mount, "whole.bin") == early
    assert mount.stop() == 0


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "azure", "gcp-native"])
def test_sigterm_with_the_cloud_down_says_what_stays_staged_and_exits_1(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    """A stop whose uploads fail keeps them journaled for the next start, and says so: an
    exit 0 told a service manager (or a script waiting to reboot) all was in the cloud."""
    relay, mount = relayed_mount(request, tmp_path, provider)
    big = os.urandom(20 * 2**20 + 5)  # several parts, blocks or chunks
    bodies = {"unsent": b"written while the cloud was there", "unsent.bin": big}
    fds = [os.open(mount.path / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in bodies]
    for fd, body in zip(fds, bodies.values(), strict=True):
        os.write(fd, body)
    relay.cut()
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(60) == 1
    assert not is_mounted(mount.path)
    for fd in fds:
        with pytest.raises(OSError):
            os.close(fd)
    bucket = next(mount.flags[name] for name in BUCKET_FLAGS if name in mount.flags)
    said = mount.log_tail(5)
    assert "2 file(s) not yet in " in said and f"{bucket}: they stay staged" in said, said
    relay.restore()
    mount.start()  # the next start sends them
    for name, body in bodies.items():
        assert cloud_bytes(mount, name) == body
    assert mount.stop() == 0


def journaled(nvme: Path) -> list[str]:
    """The keys the upload journal in `nvme` holds rows of (a stopped client's)."""
    with contextlib.closing(sqlite3.connect(nvme / "journal.sqlite3")) as journal:
        return sorted(key for (key,) in journal.execute("SELECT key FROM pending"))


@pytest.mark.warnings_expected
def test_a_stop_with_the_cloud_down_ends_within_one_deadline(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Each upload at a stop may wait out the cloud deadline (60 s by default): four at a
    time, 20 dirty files took 5 of them, past systemd's 90 s before its SIGKILL. Once the
    first uploads found the bucket out of reach, the others stay journaled without a
    try, and go up at the next start."""
    relay, mount = relayed_mount(request, tmp_path, "s3-seaweedfs")  # a 3 s deadline
    names = [f"dirty-{i:02}" for i in range(20)]
    fds = open_dirty(mount, names)
    relay.cut()
    assert mount.proc is not None
    started = time.monotonic()
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(120) == 1
    took = time.monotonic() - started
    assert took < 7, f"stopped in {took:.1f} s, the deadline 3 s"  # 5 rounds: 15 s
    assert "20 file(s) not yet in" in mount.log_tail(5)
    assert journaled(mount.nvme) == names
    for fd in fds:
        with pytest.raises(OSError):
            os.close(fd)
    relay.restore()
    mount.start()
    for name in names:
        assert cloud_bytes(mount, name) == name.encode()
    assert journaled(mount.nvme) == []


def relayed_server(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> tuple[Server, Relay, str]:
    """`provider`'s server, a relay in front of it (stopped at the end) and the URL that
    reaches the server through it. gcp-native: a fake-gcs-server of this test's own, whose
    upload sessions' URLs name the relay too (the session one's name its own port)."""
    if provider != "gcp-native":
        server = networked_server_for(request, provider)
        relay, relayed = relay_in_front_of(server.endpoint)
        request.addfinalizer(relay.stop)
        return server, relay, relayed
    (port,) = servers.free_ports(1)
    gcs = servers.start_fake_gcs(tmp_path / "own-server", external_port=port)
    request.addfinalizer(gcs.stop)
    relay = Relay(int(gcs.endpoint.rsplit(":", 1)[1]), port=port).start()
    request.addfinalizer(relay.stop)
    return gcs, relay, f"http://127.0.0.1:{port}"


def relayed_mount(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str, timeout: float = 3.0
) -> tuple[Relay, Mount]:
    """A mount of a new bucket of `provider`'s server through a relay the test may cut
    (this node alone loses the bucket), with a cloud deadline of `timeout` seconds; both
    stopped at the end."""
    server, relay, relayed = relayed_server(request, tmp_path, provider)
    flags, env = target_flags(provider, server, tmp_path, timeout=timeout)
    flags[f"{provider.split('-')[0]}_endpoint"] = relayed
    mount = Mount(tmp_path / "mnt", tmp_path / "nvme", flags, env, tmp_path / "client.log")
    request.addfinalizer(mount.stop)
    return relay, mount.start()


@pytest.mark.warnings_expected
def test_a_cold_read_with_the_cloud_gone_is_eio_within_one_deadline(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A read of bytes no tier holds, with the bucket out of reach, fails with EIO once
    the cloud deadline (3 s) has passed. The kernel asks again for a read whose
    read-ahead failed, and that second request waited out the deadline too: EIO after
    6 s (120 s at the default -cloud-timeout). The bytes are read once it is back."""
    relay, mount = relayed_mount(request, tmp_path, "s3-seaweedfs")
    payload = os.urandom(3 * 2**20)
    cloud_put(mount, "cold.bin", payload)  # behind the mount: in no tier
    assert (mount.path / "cold.bin").stat().st_size == len(payload)
    fd = os.open(mount.path / "cold.bin", os.O_RDONLY)
    try:
        relay.mute()
        started = time.monotonic()
        with pytest.raises(OSError) as failed:
            os.pread(fd, 2**20, 0)
        took = time.monotonic() - started
        assert failed.value.errno == errno.EIO
        assert took < 4.5, f"EIO after {took:.1f} s, the deadline 3 s"
        relay.restore()
        time.sleep(2.5)  # a chunk whose fetch just failed fails again at once, briefly
        assert os.pread(fd, len(payload), 0) == payload
    finally:
        os.close(fd)


def test_a_read_whose_get_breaks_is_asked_again_and_counted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A chunk's GET whose connection breaks mid-request is tried again: the read gets
    the object's bytes, and the node's stats count the retry (its cost: a request paid
    twice, perhaps bytes sent twice), so a cloud bill above what was read is explained."""
    relay, mount = relayed_mount(request, tmp_path, "s3-seaweedfs")
    payload = os.urandom(2**20)
    cloud_put(mount, "broken.bin", payload)  # behind the mount: in no tier
    assert (mount.path / "broken.bin").stat().st_size == len(payload)
    assert node_stats(mount)["cloud_retries"] == 0
    relay.hold(f"GET /{mount.flags['s3_bucket']}/broken.bin HTTP/1.1".encode())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        read = pool.submit((mount.path / "broken.bin").read_bytes)
        relay.wait_until_held()
        relay.cut()
        relay.restore()
        assert read.result(timeout=30) == payload
    stats = node_stats(mount)
    assert stats["cloud_retries"] >= 1
    assert stats["tiers"]["cloud"]["hits"] == 1  # the chunk, fetched once in the end
    assert stats["tiers"]["cloud"]["errors"] == 0


def partitioned_mount(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> tuple[Relay, Mount, Any]:
    """`relayed_mount` of `seaweedfs`, and a boto3 client of the bucket that the cut does
    not reach (another node)."""
    relay, mount = relayed_mount(request, tmp_path, "s3-seaweedfs")
    return relay, mount, seaweedfs.boto3_client()


def close_while_cut(relay: Relay, mount: Mount, name: str, ours: bytes) -> None:
    """`name` written ("first") and closed; then `ours` written over it through a handle
    whose close fails (EIO) while the relay is cut, as does its release's own try. The
    relay stays cut."""
    (mount.path / name).write_bytes(b"first\n")
    fd = os.open(mount.path / name, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, ours)
    relay.cut()
    with pytest.raises(OSError) as failed:
        os.close(fd)
    assert failed.value.errno == errno.EIO
    mount.wait_for_log("release: PUT")  # the release's own try, after the flush's, fails too


@pytest.mark.warnings_expected
def test_a_failed_close_retried_after_another_node_wrote_the_file_keeps_both(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """This node alone loses the bucket (a partition): its close fails (EIO, the bytes
    kept for a retry), another node writes the same file meanwhile and closes it. Once
    the bucket is back, the retry must not put the failed close's bytes over the other
    node's: they go under `.tierfs-conflicts/`, and the mount shows the bucket's file."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    bucket = mount.flags["s3_bucket"]
    ours, theirs = b"first\nours\n", b"first\ntheirs\n"
    close_while_cut(relay, mount, "notes.txt", ours)
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=theirs)  # the other node's close
    relay.restore()
    deadline = time.monotonic() + 60
    while not (copies := conflict_copies(mount)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list(copies.values()) == [ours]
    assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == theirs
    time.sleep(1.5)  # the kernel's attributes (1 s) of the file it knew
    assert (mount.path / "notes.txt").read_bytes() == theirs
    assert mount.stop() == 0
    assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == theirs


@pytest.mark.warnings_expected
def test_a_failed_close_uploaded_at_unmount_after_another_node_wrote_the_file_keeps_both(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """As above, but the client is stopped (SIGTERM) as soon as the bucket is back, before
    its retry: the unmount's upload of the failed file must not overwrite either."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    bucket = mount.flags["s3_bucket"]
    close_while_cut(relay, mount, "notes.txt", b"first\nours\n")
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"first\ntheirs\n")
    relay.restore()
    assert mount.stop() == 0
    assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == b"first\ntheirs\n"
    assert list(conflict_copies(mount).values()) == [b"first\nours\n"]


@pytest.mark.warnings_expected
def test_a_failed_close_renamed_after_another_node_wrote_the_file_keeps_both(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """As above, but the file is renamed as soon as the bucket is back, before its retry:
    the rename's upload of the failed file must not overwrite the other node's either.
    The rename moves the bucket's file (the other node's, as for any file changed
    elsewhere); the failed close's bytes go under `.tierfs-conflicts/`."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    bucket = mount.flags["s3_bucket"]
    close_while_cut(relay, mount, "notes.txt", b"first\nours\n")
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"first\ntheirs\n")
    relay.restore()
    (mount.path / "notes.txt").rename(mount.path / "moved.txt")
    assert list(conflict_copies(mount).values()) == [b"first\nours\n"]
    assert s3.get_object(Bucket=bucket, Key="moved.txt")["Body"].read() == b"first\ntheirs\n"
    assert s3.list_objects_v2(Bucket=bucket, Prefix="notes.txt")["KeyCount"] == 0
    time.sleep(1.5)  # the kernel's attributes (1 s) of the file it knew
    assert (mount.path / "moved.txt").read_bytes() == b"first\ntheirs\n"
    assert mount.stop() == 0
    assert s3.get_object(Bucket=bucket, Key="moved.txt")["Body"].read() == b"first\ntheirs\n"


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "azure"])
def test_a_failed_close_in_a_renamed_folder_goes_up_under_the_new_name(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    """A file whose close failed (this node lost the bucket), then its folder renamed
    once the bucket is back: the retry puts it over its copy under the new name. On
    Azure, where a copy is a new version, the retry took the copy for another node's
    change and sent the bytes under `.tierfs-conflicts/` (on S3 a copy keeps its version:
    there it always went up)."""
    relay, mount = relayed_mount(request, tmp_path, provider)
    (mount.path / "d").mkdir()
    close_while_cut(relay, mount, "d/notes.txt", b"first\nours\n")
    relay.restore()
    os.rename(mount.path / "d", mount.path / "e")
    wait_for_object(mount, "e/notes.txt", b"first\nours\n")
    assert cloud_bytes(mount, "e/notes.txt") == b"first\nours\n"
    assert conflict_copies(mount) == {}
    assert (mount.path / "e/notes.txt").read_bytes() == b"first\nours\n"
    assert mount.stop() == 0
    assert cloud_bytes(mount, "d/notes.txt") is None


@pytest.mark.warnings_expected
def test_an_unlink_that_fails_keeps_a_failed_close_for_its_retry(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A file whose close failed (this node lost the bucket), then unlinked while the
    bucket is still out of reach: the unlink fails (EIO) and changes nothing, so the
    retry still puts the close's bytes up once the bucket is back. (The unlink gave up
    the retry before its DELETE failed: the mount showed the file, the bucket never got
    its bytes.) An unlink that succeeds before the retry leaves nothing for it to put."""
    relay, mount = relayed_mount(request, tmp_path, "s3-seaweedfs")
    close_while_cut(relay, mount, "notes.txt", b"first\nours\n")
    with pytest.raises(OSError) as failed:
        os.unlink(mount.path / "notes.txt")
    assert failed.value.errno == errno.EIO
    assert (mount.path / "notes.txt").read_bytes() == b"first\nours\n"
    relay.restore()
    wait_for_object(mount, "notes.txt", b"first\nours\n")
    assert cloud_bytes(mount, "notes.txt") == b"first\nours\n"
    close_while_cut(relay, mount, "gone.txt", b"first\nours\n")
    relay.restore()
    os.unlink(mount.path / "gone.txt")
    time.sleep(RETRY_INTERVAL + 1)  # the retry's turn came
    assert mount.stop() == 0
    assert cloud_bytes(mount, "gone.txt") is None
    assert cloud_bytes(mount, "notes.txt") == b"first\nours\n"


def write_twice_losing_the_first_answer(
    relay: Relay, mount: Mount, s3: Any, name: str = "notes.txt"
) -> int:
    """`name` written through one handle and closed while the relay loses the bucket's
    answers (the bucket takes the put, the close fails: EIO); then, the relay cut, written
    again through a second handle, which is returned open."""
    path = mount.path / name
    path.write_bytes(b"first\n")
    first, second = (os.open(path, os.O_WRONLY) for _ in range(2))
    os.pwrite(first, b"second\n", 0)
    relay.mute()
    with pytest.raises(OSError) as failed:
        os.close(first)
    assert failed.value.errno == errno.EIO
    relay.cut()
    bucket = mount.flags["s3_bucket"]
    assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == b"second\n"
    os.pwrite(second, b"third!\n", 0)
    return second


@pytest.mark.warnings_expected
def test_a_put_whose_answer_was_lost_is_no_conflict_for_its_retry(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """This node's put reaches the bucket but the bucket's answer is lost: the close fails
    (EIO). The file is written again and closed while the bucket is out of reach (EIO
    again). Once it is back, the retry must know the object for its own put, not another
    node's: the bucket gets the last bytes, and nothing goes under `.tierfs-conflicts/`."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    second = write_twice_losing_the_first_answer(relay, mount, s3)
    with pytest.raises(OSError):
        os.close(second)
    mount.wait_for_log("release: PUT", times=2)  # the last release's own try failed too
    relay.restore()
    wait_for_object(mount, "notes.txt", b"third!\n")
    bucket = mount.flags["s3_bucket"]
    assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == b"third!\n"
    assert conflict_copies(mount) == {}
    assert (mount.path / "notes.txt").read_bytes() == b"third!\n"


@pytest.mark.warnings_expected
def test_a_put_whose_answer_was_lost_is_no_conflict_for_the_recovery_after_a_crash(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """As above, but the client is killed (SIGKILL) before the second handle's close: the
    journal's upload at the restart must know the object for its own put too."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    second = write_twice_losing_the_first_answer(relay, mount, s3)
    mount.kill()
    with contextlib.suppress(OSError):
        os.close(second)  # of the dead mount
    relay.restore()
    mount.start()  # the journal's uploads are done before the mount appears
    bucket = mount.flags["s3_bucket"]
    assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == b"third!\n"
    assert conflict_copies(mount) == {}
    assert (mount.path / "notes.txt").read_bytes() == b"third!\n"


@pytest.mark.warnings_expected
def test_a_put_whose_answer_was_lost_is_no_conflict_for_the_recovery_after_its_folder_moved(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """As above, but the file's folder is renamed (the bucket back) before the kill: the
    move copies the lost put's bytes to the new name, and the journal's row, following
    the file there, must still know them for its own. Before 2026-12-07 the row was
    written anew, without them: the restart took the copy for another node's change and
    put the last bytes under `.tierfs-conflicts/`, the file keeping the lost put's."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    (mount.path / "d").mkdir()
    second = write_twice_losing_the_first_answer(relay, mount, s3, "d/notes.txt")
    relay.restore()
    os.rename(mount.path / "d", mount.path / "e")  # the file still open, dirty
    mount.kill()
    with contextlib.suppress(OSError):
        os.close(second)  # of the dead mount
    mount.start()  # the journal's uploads are done before the mount appears
    bucket = mount.flags["s3_bucket"]
    assert s3.get_object(Bucket=bucket, Key="e/notes.txt")["Body"].read() == b"third!\n"
    assert conflict_copies(mount) == {}
    assert (mount.path / "e/notes.txt").read_bytes() == b"third!\n"


def until_in_bucket(
    s3: Any, bucket: str, key: str, body: bytes | None, timeout: float = 30.0
) -> None:
    """Until the bucket (asked by boto3 client `s3`, not through the mount) holds `body` at
    `key` (None: no `key`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.ClientError:
            found = None
        if found == body:
            return
        assert time.monotonic() < deadline, f"{key} holds {found!r}, not {body!r}"
        time.sleep(0.02)


def notes_written_over(mount: Mount, other: bytes) -> int:
    """notes.txt ("first") and `other` put through the mount, then notes.txt opened and
    written over ("ours"), not closed: the descriptor."""
    (mount.path / "notes.txt").write_bytes(b"first\n")
    (mount.path / "other").write_bytes(other)
    fd = os.open(mount.path / "notes.txt", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"ours\n")
    return fd


def removal_cut_short_offline(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> tuple[Relay, Mount, Any]:
    """`rm notes.txt` of a file being written: the bucket deletes it, the client is killed
    (SIGKILL) before it hears back, and started again with the bucket out of reach: the
    mount shows notes.txt, its removal unsure. `partitioned_mount`'s three."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    notes = mount.path / "notes.txt"
    fd = notes_written_over(mount, b"first\n")
    kill_once_in_bucket(relay, mount, s3, partial(os.unlink, notes), None)
    with contextlib.suppress(OSError):
        os.close(fd)  # of the dead mount
    relay.cut()
    mount.start()
    return relay, mount, s3


def kill_once_in_bucket(
    relay: Relay, mount: Mount, s3: Any, change: Callable[[], object], body: bytes | None
) -> None:
    """Mute the relay (the bucket does what it is asked; the client never hears it), make
    `change` on the mount, and kill the client (SIGKILL) once the bucket holds `body` at
    notes.txt (None: none), before the answer comes back."""
    relay.mute()

    def changing() -> None:
        with contextlib.suppress(OSError):  # the mount dies under it
            change()

    worker = threading.Thread(target=changing)
    worker.start()
    until_in_bucket(s3, mount.flags["s3_bucket"], "notes.txt", body)
    mount.kill()
    worker.join(30)


@pytest.mark.warnings_expected
@pytest.mark.parametrize("removal", ["unlink", "rename over"])
def test_kill_9_once_a_removal_reached_the_bucket_keeps_the_file_removed(
    removal: str, request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """`rm` of a file being written (its bytes staged and journaled), or `mv other` over
    it: the bucket deletes (or replaces) the object, and the client is killed (SIGKILL)
    before the answer comes back, so before it forgets the journal's row. The restart
    found the object changed, took that for another node's change and put the bytes under
    `.tierfs-conflicts/`: the removed file came back there. It must stay removed."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    fd = notes_written_over(mount, b"other\n")
    notes, other = mount.path / "notes.txt", mount.path / "other"
    if removal == "unlink":
        after, remove = None, partial(os.unlink, notes)
    else:
        after, remove = b"other\n", partial(os.rename, other, notes)
    kill_once_in_bucket(relay, mount, s3, remove, after)
    with contextlib.suppress(OSError):
        os.close(fd)  # of the dead mount
    relay.restore()
    mount.start()
    assert conflict_copies(mount) == {}
    assert cloud_bytes(mount, "notes.txt") == after
    if after is None:
        assert os.listdir(mount.path) == ["other"]
    else:  # cut short before its delete: the file under both names
        assert (mount.path / "notes.txt").read_bytes() == after
    assert mount.stop() == 0


@pytest.mark.warnings_expected
@pytest.mark.parametrize("cut_short", ["killed", "bucket lost"])
def test_a_rename_cut_short_once_its_source_is_deleted_keeps_the_file_it_replaced_removed(
    cut_short: str, request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """`mv other notes.txt` over notes.txt being written (its bytes staged and journaled),
    `other` holding the bytes notes.txt was written over (a backup put back). The rename's
    delete of `other` reaches the bucket, and the client never hears back: it is killed
    (SIGKILL), or loses the bucket for the whole deadline (the rename fails, EIO). An S3
    copy keeps the ETag: the restart (or the writer's close) found notes.txt at the
    version its bytes were written over, and put them over the copy; `other`'s bytes were
    under neither name. Once the copy is in, the file it replaced must stay replaced."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    fd = notes_written_over(mount, b"first\n")
    relay.hold(b"?delete ")  # the rename's delete of `other` (obstore's), once it copied
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        renaming = pool.submit(os.rename, mount.path / "other", mount.path / "notes.txt")
        relay.wait_until_held()
        relay.mute()  # the bucket deletes `other`; the client never hears it
        relay.release()
        until_in_bucket(s3, mount.flags["s3_bucket"], "other", None)
        if cut_short == "killed":
            mount.kill()
        else:
            relay.cut()  # the delete's tries fail until the deadline
        with pytest.raises(OSError):
            renaming.result(30)
    if cut_short == "killed":
        with contextlib.suppress(OSError):
            os.close(fd)  # of the dead mount
        relay.restore()
        mount.start()
    else:
        relay.restore()
        os.close(fd)  # its bytes go nowhere: the file was replaced
    assert cloud_bytes(mount, "notes.txt") == b"first\n"
    assert conflict_copies(mount) == {}
    time.sleep(1.5)  # the kernel's entries (1 s) of the names it knew
    assert os.listdir(mount.path) == ["notes.txt"]
    assert (mount.path / "notes.txt").read_bytes() == b"first\n"
    assert mount.stop() == 0
    assert cloud_bytes(mount, "notes.txt") == b"first\n"


@pytest.mark.warnings_expected
@pytest.mark.parametrize("retry", ["in the rename", "killed first"])
def test_a_rename_over_a_failed_close_keeps_its_bytes_through_the_retry_and_a_restart(
    retry: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`mv other notes.txt` over a file whose close failed (this node lost the bucket), its
    retry pending, once the bucket is back: neither the retry nor the restart after a
    kill -9 may put the replaced bytes over the copy. `mv` said it succeeded, and
    `other`'s bytes are nowhere else. `other` holds what notes.txt was written over (a
    backup put back), so the copy is at the version a late upload's look expects (an S3
    copy keeps the ETag): only the rename keeps them off. "in the rename": the retry's turn
    comes once the rename has copied `other`, while its delete of `other` is held; it
    waits for the rename (the path lock), then has nothing to send. "killed first": the
    client is killed before the retry's turn, its staging file still there; the rename
    forgot its journal row, so the restart sends nothing either."""
    relay, mount = relayed_mount(request, tmp_path, "s3-seaweedfs", timeout=8.0)
    (mount.path / "other").write_bytes(b"first\n")
    close_while_cut(relay, mount, "notes.txt", b"ours\n")
    retry_due = time.monotonic() + RETRY_INTERVAL  # the retry sleeps from the failed release
    if retry == "in the rename":
        relay.hold(b"?delete ")  # the rename's delete of `other` (obstore's), once it copied
    relay.restore()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        renaming = pool.submit(os.rename, mount.path / "other", mount.path / "notes.txt")
        if retry == "in the rename":
            relay.wait_until_held()
            time.sleep(max(0.0, retry_due + 1 - time.monotonic()))  # within the 8 s deadline
            relay.release()
        renaming.result(30)
    if retry == "in the rename":
        time.sleep(1)  # the retry, let go, does what it does
        assert conflict_copies(mount) == {}
    else:
        assert time.monotonic() < retry_due, "the retry's turn came before the kill"
    assert journaled(mount.nvme) == []
    mount.kill()
    assert cloud_bytes(mount, "notes.txt") == b"first\n"
    assert cloud_bytes(mount, "other") is None
    mount.start()
    assert cloud_bytes(mount, "notes.txt") == b"first\n"
    assert conflict_copies(mount) == {}
    assert os.listdir(mount.path) == ["notes.txt"]
    assert (mount.path / "notes.txt").read_bytes() == b"first\n"
    assert mount.stop() == 0


@pytest.mark.warnings_expected
def test_a_journaled_upload_waits_for_the_cloud_at_start(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server, mount = own_cloud_and_mount(request, tmp_path)
    fd = os.open(mount.path / "late.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"journaled")
    mount.kill()  # crash before the upload
    server.proc.kill()  # and the cloud is down when the client comes back
    mount.start()
    server.proc.restart()
    wait_for_object(mount, "late.txt")
    assert cloud_bytes(mount, "late.txt") == b"journaled"
    with contextlib.suppress(OSError):
        os.close(fd)


def start_with_the_bucket_cut_off(relay: Relay, mount: Mount) -> float:
    """Start `mount` with the bucket out of reach: its try of the journal's uploads (before
    the mount appears) fails, retried in the background. The bucket is back a second
    later (the recovery's retry came at once before 2026-12-07); returns when the next try
    is due at the earliest (its wait began as the mount appeared, just before this saw
    it)."""
    relay.cut()
    mount.start()
    retry_due = time.monotonic() + RETRY_INTERVAL - 0.5
    time.sleep(1)
    relay.restore()
    return retry_due


@pytest.mark.warnings_expected
@pytest.mark.parametrize("change", ["rm", "mv", "mv over"])
def test_a_file_a_crash_left_unsent_follows_what_the_mount_does_before_the_cloud_is_back(
    change: str, request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """notes.txt written over ("ours") and the client killed (SIGKILL) before its close;
    it starts again with the bucket out of reach, so the journal's upload is retried in
    the background. Once the bucket is back, before that retry's turn: `rm notes.txt`
    must leave it removed (the retry put it under `.tierfs-conflicts/`); `mv notes.txt
    moved.txt` must leave "ours" under the new name only (the retry sent them aside, and
    the move took the bucket's older bytes); `mv other notes.txt` must leave `other`'s
    bytes there (they are what notes.txt was written over, an S3 copy keeps the ETag:
    the retry put "ours" over them)."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    bucket = mount.flags["s3_bucket"]
    fd = notes_written_over(mount, b"first\n")
    mount.kill()
    with contextlib.suppress(OSError):
        os.close(fd)  # of the dead mount
    retry_due = start_with_the_bucket_cut_off(relay, mount)
    if change == "rm":
        os.unlink(mount.path / "notes.txt")
        expected = {"other": b"first\n"}
    elif change == "mv":
        os.rename(mount.path / "notes.txt", mount.path / "moved.txt")
        expected = {"moved.txt": b"ours\n", "other": b"first\n"}
    else:
        os.rename(mount.path / "other", mount.path / "notes.txt")
        expected = {"notes.txt": b"first\n"}
    assert time.monotonic() < retry_due, "the retry's turn came before the change"
    time.sleep(RETRY_INTERVAL + 1)  # the retry's turn came
    assert conflict_copies(mount) == {}
    assert journaled(mount.nvme) == []
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sorted(item["Key"] for item in listed) == sorted(expected)
    for key, body in expected.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    time.sleep(1.5)  # the kernel's entries (1 s) of the names it knew
    assert sorted(os.listdir(mount.path)) == sorted(expected)
    for key, body in expected.items():
        assert (mount.path / key).read_bytes() == body
    assert mount.stop() == 0
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sorted(item["Key"] for item in listed) == sorted(expected)


@pytest.mark.warnings_expected
@pytest.mark.parametrize("change", ["mv over", "none"])
def test_a_file_whose_removal_a_crash_cut_short_stays_removed_once_the_cloud_is_back(
    change: str, request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """`rm notes.txt` of a file being written: the bucket deletes it, and the client is
    killed (SIGKILL) before it hears back. It starts again with the bucket out of reach,
    so whether the removal went through is asked in the background. Once the bucket is
    back, before that retry's turn, `mv other notes.txt`, `other` holding the bytes
    notes.txt was written over (an S3 copy keeps the ETag): the retry took the copy for
    the object the removal never reached, and put the removed bytes over it. "none": the
    retry finds the removal went through, and sends nothing."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    bucket = mount.flags["s3_bucket"]
    fd = notes_written_over(mount, b"first\n")
    kill_once_in_bucket(relay, mount, s3, partial(os.unlink, mount.path / "notes.txt"), None)
    with contextlib.suppress(OSError):
        os.close(fd)  # of the dead mount
    retry_due = start_with_the_bucket_cut_off(relay, mount)
    name = "other"
    if change == "mv over":
        os.rename(mount.path / "other", mount.path / "notes.txt")
        name = "notes.txt"
    assert time.monotonic() < retry_due, "the retry's turn came before the rename"
    time.sleep(RETRY_INTERVAL + 1)  # the retry's turn came
    assert conflict_copies(mount) == {}
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [item["Key"] for item in listed] == [name]
    assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == b"first\n"
    assert journaled(mount.nvme) == []
    time.sleep(1.5)  # the kernel's entries (1 s) of the names it knew
    assert os.listdir(mount.path) == [name]
    assert (mount.path / name).read_bytes() == b"first\n"
    assert mount.stop() == 0
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [item["Key"] for item in listed] == [name]


@pytest.mark.warnings_expected
def test_files_a_crash_left_unsent_in_a_folder_show_before_the_cloud_is_back(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """d/e/f.txt written over ("ours") and d/e/n.txt new, the client killed (SIGKILL)
    before their close; it starts again with the bucket out of reach, and takes them
    over. Before, only a file at the top of the mount was found: the lookup of `d`, and
    every listing, asked the bucket and failed (EIO). Offline, `cat` and `ls` must show
    them as at the top; once the bucket is back, they go up and are listed once."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)
    bucket = mount.flags["s3_bucket"]
    folder = mount.path / "d" / "e"
    folder.mkdir(parents=True)
    (folder / "f.txt").write_bytes(b"first\n")
    fds = [os.open(folder / "f.txt", os.O_WRONLY | os.O_TRUNC)]
    fds.append(os.open(folder / "n.txt", os.O_WRONLY | os.O_CREAT, 0o644))
    os.write(fds[0], b"ours\n")
    os.write(fds[1], b"new\n")
    mount.kill()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)  # of the dead mount
    relay.cut()
    mount.start()
    expected = {"d/e/f.txt": b"ours\n", "d/e/n.txt": b"new\n"}
    for key, body in expected.items():
        assert (mount.path / key).read_bytes() == body
    assert os.listdir(mount.path) == ["d"]
    assert os.listdir(mount.path / "d") == ["e"]
    assert sorted(os.listdir(folder)) == ["f.txt", "n.txt"]
    relay.restore()
    for key, body in expected.items():
        until_in_bucket(s3, bucket, key, body)
    assert conflict_copies(mount) == {}
    assert journaled(mount.nvme) == []
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sorted(item["Key"] for item in listed) == ["d/", "d/e/", *sorted(expected)]
    time.sleep(11)  # the listings the mount served offline are asked for again
    assert sorted(os.listdir(folder)) == ["f.txt", "n.txt"]
    for key, body in expected.items():
        assert (mount.path / key).read_bytes() == body
    assert mount.stop() == 0
    assert conflict_copies(mount) == {}


@pytest.mark.warnings_expected
@pytest.mark.parametrize("then", ["closed offline", "killed, cloud up", "killed, cloud down"])
def test_a_file_whose_removal_a_crash_cut_short_written_again_keeps_its_last_bytes(
    then: str, request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """`rm notes.txt` of a file being written: the bucket deletes it, and the client is
    killed (SIGKILL) before it hears back. It starts again with the bucket out of reach:
    the mount shows notes.txt, its removal unsure, and it is written again ("again").
    "closed offline": its close fails (EIO), and so does its release's try; the retry
    sends it once the bucket is back. Else the client is killed again before the close,
    and restarts with the bucket there or out of reach. The file stayed marked as being
    removed: the bucket said the removal went through, and the bytes written since were
    dropped. They must go up to notes.txt."""
    relay, mount, s3 = removal_cut_short_offline(request, tmp_path, seaweedfs)
    bucket = mount.flags["s3_bucket"]
    notes = mount.path / "notes.txt"
    fd = os.open(notes, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"again\n")
    if then == "closed offline":
        assert close_errno(fd) == errno.EIO
        mount.wait_for_log("release: PUT")  # its release's own try, after the flush's
        relay.restore()
    else:
        mount.kill()
        with contextlib.suppress(OSError):
            os.close(fd)  # of the dead mount
        if then == "killed, cloud up":
            relay.restore()
            mount.start()  # the journal's uploads are done before the mount appears
        else:
            start_with_the_bucket_cut_off(relay, mount)
    until_in_bucket(s3, bucket, "notes.txt", b"again\n", timeout=RETRY_INTERVAL + 10)
    assert conflict_copies(mount) == {}
    assert journaled(mount.nvme) == []
    time.sleep(1.5)  # the kernel's entries (1 s) of the names it knew
    assert notes.read_bytes() == b"again\n"
    assert mount.stop() == 0
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sorted(item["Key"] for item in listed) == ["notes.txt", "other"]


@pytest.mark.warnings_expected
def test_a_file_whose_removal_a_crash_cut_short_removed_again_offline_stays_removed(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """`rm notes.txt` of a file being written: the bucket deletes it, and the client is
    killed (SIGKILL) before it hears back. It starts again with the bucket out of reach,
    `rm notes.txt` fails there (EIO), and the client is killed again. The failed removal
    set the row's mark to "not being removed": the next start found the object gone,
    took that for another node's change, and put the bytes under `.tierfs-conflicts/`.
    The file must stay removed."""
    relay, mount, s3 = removal_cut_short_offline(request, tmp_path, seaweedfs)
    notes = mount.path / "notes.txt"
    with pytest.raises(OSError) as failed:
        os.unlink(notes)
    assert failed.value.errno == errno.EIO
    mount.kill()
    relay.restore()
    mount.start()  # the journal's uploads are done before the mount appears
    assert conflict_copies(mount) == {}
    assert cloud_bytes(mount, "notes.txt") is None
    assert journaled(mount.nvme) == []
    assert os.listdir(mount.path) == ["other"]
    assert mount.stop() == 0


@pytest.mark.warnings_expected
def test_with_the_cloud_down_what_the_mount_knew_still_lists_and_reads(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Past the metadata TTL, a lookup or listing the bucket does not answer is served
    as this mount last knew it, so files it holds in tier 1 still open and read; new
    answers come again once the cloud is back."""
    server, mount = own_cloud_and_mount(request, tmp_path)
    payload = os.urandom(3 * 2**20)
    (mount.path / "data").mkdir()
    (mount.path / "data" / "held.bin").write_bytes(payload)  # its chunks: in tier 1
    assert os.listdir(mount.path / "data") == ["held.bin"]
    server.proc.kill()
    time.sleep(2.5)  # the metadata TTL (1 s) and the kernel's (1 s) have passed
    started = time.monotonic()
    assert os.listdir(mount.path / "data") == ["held.bin"]
    assert (mount.path / "data" / "held.bin").read_bytes() == payload
    assert os.stat(mount.path / "data" / "held.bin").st_size == len(payload)
    # The first question waits out the cloud deadline (3 s); the next ones, knowing the
    # bucket unreachable, are answered at once (each waited 3 s: 20 s in all, once in CI).
    assert time.monotonic() - started < 10
    assert not (mount.path / "data" / "never-listed.bin").exists()  # as the listing said
    with pytest.raises(OSError) as failed:  # what it never knew is still an error
        os.stat(mount.path / "never-looked-up" / "x")
    assert failed.value.errno == errno.EIO
    server.proc.restart()
    deadline = time.monotonic() + 60
    while True:  # the restarted server takes PUTs a little after it answers HTTP
        try:
            cloud_put(mount, "data/new.bin", b"after the outage")
            break
        except CloudError:
            assert time.monotonic() < deadline, "the restarted server never took a PUT"
            time.sleep(0.5)
    deadline = time.monotonic() + 60  # asked again 10 s after the last time it failed
    while "new.bin" not in os.listdir(mount.path / "data"):
        assert time.monotonic() < deadline, "the listing never came back from the bucket"
        time.sleep(0.5)
    assert (mount.path / "data" / "new.bin").read_bytes() == b"after the outage"
    assert "serving what this mount knew" in mount.log.read_text()


def client(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env=servers.clean_env(**env),
    )


def test_missing_mount_point_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = client("-mount", str(tmp_path / "absent"), "-nvme", str(tmp_path / "n"),
                    "-cloud-provider", "local", "-local-root", str(tmp_path / "b"))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tierfs client: mount point {tmp_path / 'absent'} does not exist"
    ]


def test_a_local_root_that_is_a_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """-local-root naming a file (or under one) was a traceback: "File exists (os error 17)"."""
    (tmp_path / "mnt").mkdir()
    (tmp_path / "a-file").write_bytes(b"")
    for root in (tmp_path / "a-file", tmp_path / "a-file" / "bucket"):
        result = client("-mount", str(tmp_path / "mnt"), "-nvme", str(tmp_path / "n"),
                        "-cloud-provider", "local", "-local-root", str(root))  # fmt: skip
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
        assert lines == [f"tierfs client: -local-root {root}: not a directory"], result.stderr
        assert not is_mounted(tmp_path / "mnt")


def test_a_tier_1_directory_that_cannot_be_made_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """-nvme under a file (or on a read-only filesystem) was a traceback."""
    (tmp_path / "mnt").mkdir()
    (tmp_path / "a-file").write_bytes(b"")
    nvme = tmp_path / "a-file" / "nvme"
    result = client("-mount", str(tmp_path / "mnt"), "-nvme", str(nvme),
                    "-cloud-provider", "local", "-local-root", str(tmp_path / "b"))  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tierfs client: -nvme {nvme}: "), result.stderr
    assert not is_mounted(tmp_path / "mnt")


def _not_a_database(journal: Path) -> None:
    journal.write_bytes(os.urandom(4096))  # damaged past SQLite's header


def _notes_that_cannot_be_moved(journal: Path) -> None:
    """An earlier tierfs's journal (its notes of uploads begun in a column `began`) whose
    table `begun` is damaged: the one-time move of those notes fails."""
    db = sqlite3.connect(journal)
    try:
        db.execute(
            "CREATE TABLE pending (staging TEXT PRIMARY KEY, key TEXT NOT NULL, base TEXT,"
            " tried TEXT, removing INTEGER, began TEXT)"
        )
        db.execute("CREATE TABLE begun (staging TEXT, key TEXT NOT NULL)")
        db.execute("INSERT INTO pending VALUES ('/s', 'a.bin', '', NULL, NULL, '1800000000.0')")
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("damage", [_not_a_database, _notes_that_cannot_be_moved])
def test_an_upload_journal_sqlite_cannot_open_is_one_line_and_exit_1(
    damage: Callable[[Path], None], tmp_path: Path
) -> None:
    """It was a traceback (sqlite3.DatabaseError, or OperationalError from the move of an
    earlier tierfs's notes); now one line naming the journal's file."""
    (tmp_path / "mnt").mkdir()
    (tmp_path / "n").mkdir()
    journal = tmp_path / "n" / "journal.sqlite3"
    damage(journal)
    result = client("-mount", str(tmp_path / "mnt"), "-nvme", str(tmp_path / "n"),
                    "-cloud-provider", "local", "-local-root", str(tmp_path / "b"))  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tierfs client: upload journal {journal}: "), result.stderr
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.parametrize(
    "provider", ["s3-seaweedfs", "s3-moto", "gcp-interop", "azure", "gcp-native"]
)
def test_a_bucket_that_does_not_exist_is_one_line_and_exit_1(
    request: pytest.FixtureRequest, provider: str, tmp_path: Path
) -> None:
    """A mistyped bucket stops the client at start, as mountpoint-s3 and gcsfuse do, instead
    of a mount whose every listing fails."""
    given, env = target_flags(provider, server_for(request, provider), tmp_path)
    name = {"s3": "s3_bucket", "gcp": "gcp_bucket", "azure": "azure_container"}
    given[name[given["cloud_provider"]]] = "no-such-bucket"
    given |= {"port": str(servers.free_ports(1)[0]), "log_level": "warning"}
    (tmp_path / "mnt").mkdir()
    flags = [
        arg for field, value in given.items() for arg in (f"-{field.replace('_', '-')}", value)
    ]
    result = client("-mount", str(tmp_path / "mnt"), "-nvme", str(tmp_path / "n"), *flags, **env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-bucket: no such bucket" in lines[0], result.stderr
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "gcp-interop"])  # moto checks none
def test_credentials_the_store_refuses_are_one_line_and_exit_1(
    request: pytest.FixtureRequest, provider: str, tmp_path: Path
) -> None:
    """A wrong secret key stops the client at start, as a missing bucket does, instead of
    a mount whose every ls and write is EACCES with nothing in its log."""
    server = server_for(request, provider)
    given, env = target_flags(provider, server, tmp_path, bad_credentials=True)
    given |= {"port": str(servers.free_ports(1)[0]), "log_level": "error"}
    (tmp_path / "mnt").mkdir()
    flags = [
        arg for field, value in given.items() for arg in (f"-{field.replace('_', '-')}", value)
    ]
    args = ["-mount", str(tmp_path / "mnt"), "-nvme", str(tmp_path / "n"), *flags]
    proc = subprocess.Popen(
        client_command(*args),
        stderr=subprocess.PIPE,
        text=True,
        env=servers.clean_env(**env),
    )
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # mounted, refusing everything: stop it as a user would
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the client mounted with credentials the store refuses:\n{stderr}")
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the credentials" in lines[0], stderr
    assert not is_mounted(tmp_path / "mnt")


def test_busy_mount_point_is_one_line_and_exit_1(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    mount = mount_factory("local")
    result = client("-mount", str(mount.path), "-nvme", str(tmp_path / "n2"),
                    "-cloud-provider", "local", "-local-root", str(tmp_path / "b2"))  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is busy" in lines[0], result.stderr
    assert is_mounted(mount.path)  # the mount in place is untouched


def test_a_second_client_on_the_same_tier_1_directory_is_one_line_and_exit_1(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    """Two clients on one -nvme: the second took the first's upload under way for what a
    crash left, sent the file half written and removed its staging file (the writer's
    next write failed: EIO). It refuses at start, and the writer writes on."""
    mount = mount_factory("local")
    assert mount.proc is not None
    (tmp_path / "mnt2").mkdir()
    with (mount.path / "being-written").open("wb") as file:
        file.write(b"a" * 1000)
        file.flush()
        try:
            result = client("-mount", str(tmp_path / "mnt2"), "-nvme", str(mount.nvme),
                            "-cloud-provider", "local", "-local-root", mount.flags["local_root"],
                            "-port", str(servers.free_ports(1)[0]))  # fmt: skip
        finally:  # a client that did not refuse runs until killed: its mount stays
            mounted = unmount_if_mounted(tmp_path / "mnt2")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"{mount.nvme} is in use by another tierfs client (pid {mount.proc.pid})" in lines[0]
        assert not mounted
        file.write(b"b" * 1000)
    assert cloud_bytes(mount, "being-written") == b"a" * 1000 + b"b" * 1000


def uploads_in_progress(s3: Any, bucket: str) -> list[tuple[str, str]]:
    """(key, upload id) of every multipart upload in progress in the bucket."""
    answer = s3.list_multipart_uploads(Bucket=bucket)
    return sorted((upload["Key"], upload["UploadId"]) for upload in answer.get("Uploads", []))


def until_uploading(s3: Any, bucket: str, keys: set[str]) -> None:
    """Until the bucket's multipart uploads in progress are of `keys` (fails past 30 s)."""
    deadline = time.monotonic() + 30
    while {key for key, _ in uploads_in_progress(s3, bucket)} != keys:
        assert time.monotonic() < deadline, uploads_in_progress(s3, bucket)
        time.sleep(0.05)


def restart_beside_another_upload(
    request: pytest.FixtureRequest,
    relay: Relay,
    mount: Mount,
    s3: Any,
    dead: list[int],
    key: str,
    at_restart: tuple[bytes, float] = (b"partNumber=", 0.0),
    cloud_down: bool = False,
) -> str:
    """Kill the client (SIGKILL) while its uploads are slowed down, close its files
    `dead` (of the dead mount), and once past the moments its uploads began (two 3 s
    deadlines and 5 s) have another client begin an upload of `key`; then restart it,
    the relay slowing `at_restart` (by default nothing) from then on, and `cloud_down`,
    with the bucket out of reach at first. The other upload's id (aborted at the end of
    the test, whatever happens)."""
    mount.kill()
    for fd in dead:
        close_errno(fd)
    time.sleep(12)
    bucket = mount.flags["s3_bucket"]
    other: str = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    request.addfinalizer(lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=other))
    relay.slow(*at_restart)
    if cloud_down:
        start_with_the_bucket_cut_off(relay, mount)
    else:
        mount.start()  # the journal's uploads are done before the mount appears
    return other


@pytest.mark.warnings_expected
@pytest.mark.parametrize("cloud", ["up", "down"])
def test_a_restart_aborts_the_uploads_a_kill_left_and_no_other_clients(
    cloud: str, request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """A client killed (SIGKILL) while files went up in multipart uploads (one put whole
    at its close, one sent while it was written) left those uploads in the bucket, their
    parts billed for good. The restart puts the files again from the journal, and must
    abort those uploads, but not the one of the same key that another client began while
    this node was down and has not completed. "down": the cloud is out of reach at the
    restart, the mount takes the files over and sends them once it is back; then too."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)  # a 3 s deadline
    bucket = mount.flags["s3_bucket"]
    relay.slow(b"partNumber=", 2.0)  # each part takes 2 s: the kill comes before the end
    whole, early = os.urandom(40 * 2**20), os.urandom(40 * 2**20)
    (mount.path / "whole.bin").write_bytes(b"x")
    rewritten = os.open(mount.path / "whole.bin", os.O_WRONLY)
    os.write(rewritten, whole)  # not appends from empty: put whole at its close
    closing = threading.Thread(target=close_errno, args=(rewritten,))
    closing.start()
    appended = os.open(mount.path / "early.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(appended, early)  # appends from empty: its parts go up while it is written
    until_uploading(s3, bucket, {"whole.bin", "early.bin"})
    other = restart_beside_another_upload(
        request, relay, mount, s3, [appended], "whole.bin", cloud_down=cloud == "down"
    )
    closing.join(30)
    if cloud == "down":  # the files go up from the mount once the bucket is back
        until_in_bucket(s3, bucket, "whole.bin", whole, timeout=60)
        until_in_bucket(s3, bucket, "early.bin", early, timeout=60)
    assert cloud_bytes(mount, "whole.bin") == whole
    assert cloud_bytes(mount, "early.bin") == early
    deadline = time.monotonic() + 10  # "down": aborted in the background once it answers
    while uploads_in_progress(s3, bucket) != [("whole.bin", other)]:
        assert time.monotonic() < deadline, uploads_in_progress(s3, bucket)
        time.sleep(0.2)


@pytest.mark.warnings_expected
def test_a_restart_aborts_the_upload_a_kill_left_under_a_folder_renamed_since(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """A file sent while it was written, its folder renamed on the way (its upload goes on
    under the old key until its close), and the client killed (SIGKILL): the restart put
    it under the new name, and left the upload of the old one in the bucket, its parts
    billed for good (the journal, following the rename, had forgotten it). Another
    client's upload of the old name, begun while this node was down, stays."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)  # a 3 s deadline
    bucket = mount.flags["s3_bucket"]
    relay.slow(b"partNumber=", 2.0)  # each part takes 2 s: the kill comes before the end
    data = os.urandom(40 * 2**20)
    (mount.path / "before").mkdir()
    appended = os.open(mount.path / "before" / "early.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(appended, data)  # appends from empty: its parts go up while it is written
    until_uploading(s3, bucket, {"before/early.bin"})
    os.rename(mount.path / "before", mount.path / "after")  # the file still open, dirty
    other = restart_beside_another_upload(request, relay, mount, s3, [appended], "before/early.bin")
    assert cloud_bytes(mount, "after/early.bin") == data
    assert uploads_in_progress(s3, bucket) == [("before/early.bin", other)]


@pytest.mark.warnings_expected
def test_an_abort_the_restart_could_not_send_is_sent_once_the_store_answers(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: servers.S3Server
) -> None:
    """A client killed (SIGKILL) mid-upload, restarted while its listing of the uploads
    in progress gets no answer (the store out of reach for it, past the 3 s deadline):
    the file goes up, and the upload the kill left is aborted once the listing is
    answered again, by the retries in the background. Before 2026-12-07 the journal
    forgot it at that first try: its parts stayed in the bucket, billed for good."""
    relay, mount, s3 = partitioned_mount(request, tmp_path, seaweedfs)  # a 3 s deadline
    bucket = mount.flags["s3_bucket"]
    relay.slow(b"partNumber=", 2.0)  # each part takes 2 s: the kill comes before the end
    data = os.urandom(40 * 2**20)
    appended = os.open(mount.path / "early.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(appended, data)  # appends from empty: its parts go up while it is written
    until_uploading(s3, bucket, {"early.bin"})
    unanswered = (b"&uploads=", 10.0)  # ListMultipartUploads, past the deadline
    other = restart_beside_another_upload(
        request, relay, mount, s3, [appended], "early.bin", at_restart=unanswered
    )
    assert cloud_bytes(mount, "early.bin") == data
    assert len(uploads_in_progress(s3, bucket)) == 2  # the abort found no answer
    relay.slow(b"&uploads=", 0.0)
    deadline = time.monotonic() + 30
    while uploads_in_progress(s3, bucket) != [("early.bin", other)]:
        assert time.monotonic() < deadline, uploads_in_progress(s3, bucket)
        time.sleep(0.2)


@pytest.mark.warnings_expected
def test_a_start_with_the_cloud_down_mounts_within_one_deadline(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A crash left 12 files staged, and the cloud is out of reach at the restart: the
    journal's uploads, tried before the mount appears, each waited out the deadline, so
    the mount came after 12 of them (12 minutes at the default 60 s). Once the first
    found the cloud out of reach, the others wait for the background retries, which send
    them all once it is back."""
    relay, mount = relayed_mount(request, tmp_path, "s3-seaweedfs")  # a 3 s deadline
    names = [f"staged-{i:02}" for i in range(12)]
    fds = open_dirty(mount, names)
    mount.kill()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)  # of the dead mount
    relay.cut()
    started = time.monotonic()
    mount.start()
    took = time.monotonic() - started
    assert took < 10, f"mounted in {took:.1f} s, the deadline 3 s"  # 12 deadlines: 36 s
    relay.restore()
    for name in names:
        wait_for_object(mount, name, name.encode())
        assert cloud_bytes(mount, name) == name.encode()
    assert mount.stop() == 0
    assert journaled(mount.nvme) == []


def open_dirty(mount: Mount, names: list[str]) -> list[int]:
    """Files of `names` made on the mount, each holding its name, left open (dirty)."""
    fds = [os.open(mount.path / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in names]
    for fd, name in zip(fds, names, strict=True):
        os.write(fd, name.encode())
    return fds

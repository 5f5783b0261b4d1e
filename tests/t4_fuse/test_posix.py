"""A mounted bucket behaves as a filesystem: what `ls`, `cat`, `cp`, `mv`, `rm` users expect."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cloud_targets import s3_server_for, server_for
from mounts import (
    Mount,
    bucket_keys,
    cloud_bytes,
    cloud_delete,
    cloud_of,
    cloud_put,
    held_chunks,
    node_address,
    node_stats,
    on_cloud,
    warm,
)
from pagecache import evict
from tierfs.cloud.base import ObjectMeta
from trees import bucket_tree, tree


def test_objects_are_files_and_prefixes_directories(mounted: Mount) -> None:
    cloud_put(mounted, "data/a.txt", b"hello\n")
    cloud_put(mounted, "data/sub/b.bin", bytes(range(256)) * 1000)
    root = mounted.path
    assert sorted(os.listdir(root)) == ["data"]
    assert sorted(os.listdir(root / "data")) == ["a.txt", "sub"]
    assert (root / "data/a.txt").read_bytes() == b"hello\n"
    assert (root / "data/sub/b.bin").read_bytes() == bytes(range(256)) * 1000
    info = os.stat(root / "data/a.txt")
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o644
    assert info.st_size == 6 and info.st_uid == os.getuid()
    assert stat.S_ISDIR(os.stat(root / "data/sub").st_mode)
    listing = subprocess.run(["ls", "-l", str(root / "data")], capture_output=True, text=True)
    assert listing.returncode == 0 and "a.txt" in listing.stdout
    statfs = os.statvfs(root)
    # The local provider's temp files `<name>#<n>` take 5 of the local filesystem's 255.
    namemax = 250 if mounted.flags["cloud_provider"] == "local" else 255
    assert statfs.f_bavail > 0 and statfs.f_namemax == namemax


def test_written_file_is_in_the_cloud_when_close_returns(mounted: Mount) -> None:
    path = mounted.path / "out" / "new.bin"
    os.mkdir(mounted.path / "out")
    payload = os.urandom(3 * 2**20 + 123)
    with path.open("wb") as out:
        out.write(payload)
    assert cloud_bytes(mounted, "out/new.bin") == payload  # close returned: durable
    assert path.read_bytes() == payload
    with path.open("ab") as out:  # append
        out.write(b"tail")
    assert cloud_bytes(mounted, "out/new.bin") == payload + b"tail"
    with path.open("r+b") as out:  # a random write in the middle
        out.seek(1000)
        out.write(b"XYZ")
        out.flush()
        os.fsync(out.fileno())
        expected = payload[:1000] + b"XYZ" + payload[1003:] + b"tail"
        assert cloud_bytes(mounted, "out/new.bin") == expected  # fsync returned: durable
    os.truncate(path, 10)
    assert cloud_bytes(mounted, "out/new.bin") == payload[:10]
    assert path.read_bytes() == payload[:10]
    path.write_bytes(b"")  # O_TRUNC to empty
    assert cloud_bytes(mounted, "out/new.bin") == b""


def test_tier_1_keeps_only_the_version_of_a_file_written_here_that_is_current(
    mount_factory: Callable[..., Mount],
) -> None:
    """A file written here goes into tier 1 as chunks of its new version; the chunks of
    the version it replaced leave tier 1 then, as do those of a file removed here: nobody
    reads them again. Left to the LRU, they pushed out chunks still read (a file fsynced
    often left a version per fsync in tier 1)."""
    mount = mount_factory("local", chunk_size="1MiB")
    path = mount.path / "data.bin"
    versions = []
    for _ in range(3):
        body = os.urandom(3 * 2**20 + 5)  # four chunks
        path.write_bytes(body)
        versions.append(on_cloud(mount, lambda cloud: cloud.head("data.bin")).version)
        # its chunks come in, and the version it replaced leaves, in the background
        until_held(mount, "version", [versions[-1]] * 4)
        assert path.read_bytes() == body
    assert len(set(versions)) == 3
    path.unlink()
    until_held(mount, "key", [])


def test_tier_1_lets_go_of_a_version_replaced_or_removed_behind_the_mounts_back(
    mount_factory: Callable[..., Mount],
) -> None:
    """A file another node or tool replaces in the bucket: once the mount sees the new
    version (past the metadata TTL), the chunks of the one it read leave tier 1, or once
    the last handle reading them closes; a file removed there, once the mount sees it
    gone. Before, they stayed until the LRU."""
    mount = mount_factory("local", chunk_size="1MiB", metadata_ttl="0.2s")
    path = mount.path / "data.bin"

    def replace(body: bytes) -> str:
        """Put `body` in the bucket, read it through the mount; its version."""
        cloud_put(mount, "data.bin", body)
        time.sleep(1.5)  # past the TTL, and the kernel's attributes (1 s) of the file
        assert path.read_bytes() == body
        return on_cloud(mount, lambda cloud: cloud.head("data.bin")).version

    first = replace(os.urandom(3 * 2**20 + 5))  # four chunks
    until_held(mount, "version", [first] * 4)
    body = os.urandom(2 * 2**20)
    second = replace(body)  # two chunks
    until_held(mount, "version", [second] * 2)
    with path.open("rb") as reading:
        third = replace(os.urandom(2**20))  # one chunk
        held = sorted([second] * 2 + [third])
        until_held(mount, "version", held)  # the handle reads on at its version
        evict(reading.fileno(), len(body))  # so that its read comes to tierfs
        assert reading.read() == body
        assert sorted(chunk["version"] for chunk in held_chunks(mount)) == held
    until_held(mount, "version", [third])
    cloud_delete(mount, "data.bin")
    time.sleep(1.5)
    assert not path.exists()
    until_held(mount, "key", [])


def test_a_file_or_folder_moved_here_is_read_from_tier_1_under_its_new_name(
    mounted: Mount,
) -> None:
    """A file written under a temporary name, then renamed (as many tools write), keeps its
    chunks in tier 1 under the new name: reading it fetches nothing. Before, the move (a
    copy in the bucket) left them under the old name, and the file came from the cloud
    again. A folder's files likewise."""
    body = os.urandom(5 * 2**20 + 3)  # two chunks
    (mounted.path / "part.tmp").write_bytes(body)
    until_held(mounted, "key", ["part.tmp"] * 2)
    os.rename(mounted.path / "part.tmp", mounted.path / "part.bin")
    (mounted.path / "dir").mkdir()
    (mounted.path / "dir" / "f.bin").write_bytes(body[::-1])
    until_held(mounted, "key", ["dir/f.bin"] * 2 + ["part.bin"] * 2)
    os.rename(mounted.path / "dir", mounted.path / "moved")
    until_held(mounted, "key", ["moved/f.bin"] * 2 + ["part.bin"] * 2)
    before = node_stats(mounted)
    for name, content in (("part.bin", body), ("moved/f.bin", body[::-1])):
        with (mounted.path / name).open("rb") as moved:
            evict(moved.fileno(), len(content))  # so that the read comes to tierfs
            assert moved.read() == content
    after = node_stats(mounted)
    assert after["tiers"]["cloud"]["hits"] == before["tiers"]["cloud"]["hits"]
    assert after["tiers"]["local"]["hits"] > before["tiers"]["local"]["hits"]


def until_held(mount: Mount, field: str, values: list[str]) -> None:
    """Until the chunks in tier 1 have these `values` of `field` ("key", "version"), one a
    chunk, sorted; fails after 20 s, naming what they have."""
    deadline = time.monotonic() + 20
    while (held := sorted(chunk[field] for chunk in held_chunks(mount))) != values:
        assert time.monotonic() < deadline, f"tier 1 holds chunks of {held}, not {values}"
        time.sleep(0.05)


def test_empty_file_is_created_in_the_cloud(mounted: Mount) -> None:
    (mounted.path / "touched").touch()
    assert cloud_bytes(mounted, "touched") == b""
    assert os.stat(mounted.path / "touched").st_size == 0


def test_namespace_operations(mounted: Mount) -> None:
    root = mounted.path
    os.makedirs(root / "d1/d2")
    assert sorted(os.listdir(root / "d1")) == ["d2"]
    (root / "d1/d2/f").write_bytes(b"file")
    with pytest.raises(OSError) as failed:
        os.rmdir(root / "d1/d2")
    assert failed.value.errno == errno.ENOTEMPTY
    os.rename(root / "d1/d2/f", root / "d1/g")
    assert cloud_bytes(mounted, "d1/g") == b"file" and cloud_bytes(mounted, "d1/d2/f") is None
    assert (root / "d1/g").read_bytes() == b"file"
    os.rmdir(root / "d1/d2")
    assert os.listdir(root / "d1") == ["g"]
    os.rename(root / "d1", root / "moved")  # a directory: every key under it moves
    assert cloud_bytes(mounted, "moved/g") == b"file" and cloud_bytes(mounted, "d1/g") is None
    assert os.listdir(root / "moved") == ["g"]
    os.unlink(root / "moved/g")
    assert cloud_bytes(mounted, "moved/g") is None
    assert not (root / "moved/g").exists()


def test_a_file_being_written_stays_in_its_new_directory_past_the_metadata_ttl(
    mounted: Mount,
) -> None:
    root = mounted.path
    os.makedirs(root / "new/empty")
    (root / "solo").mkdir()
    with (
        (root / "new/f.bin").open("wb", buffering=0) as f,
        (root / "solo/g.bin").open("wb") as g,
    ):
        f.write(b"first ")
        time.sleep(1.5)  # past the 1 s metadata TTL; the bucket has none of these names yet
        assert sorted(os.listdir(root)) == ["new", "solo"]
        assert sorted(os.listdir(root / "new")) == ["empty", "f.bin"]
        assert os.listdir(root / "solo") == ["g.bin"]
        assert os.stat(root / "new/f.bin").st_size == 6
        with pytest.raises(OSError) as failed:
            os.rmdir(root / "solo")
        assert failed.value.errno == errno.ENOTEMPTY
        os.rename(root / "new", root / "moved")
        assert sorted(os.listdir(root)) == ["moved", "solo"]
        assert sorted(os.listdir(root / "moved")) == ["empty", "f.bin"]
        f.write(b"second")
        g.write(b"g")
    assert cloud_bytes(mounted, "moved/f.bin") == b"first second"
    assert cloud_bytes(mounted, "new/f.bin") is None
    assert cloud_bytes(mounted, "solo/g.bin") == b"g"
    assert os.listdir(root / "moved/empty") == []


def test_a_file_removed_while_open_still_reads(mounted: Mount) -> None:
    """POSIX: a file unlinked, or replaced by a rename, lives on for those who hold it
    open. Its bytes are staged at the removal, from tier 1 or from the cloud while the
    object is still there (the reads failed with EINVAL: they asked the cloud for the
    inode's detached name; then ESTALE for a large file removed at once after its upload,
    before tier 1 had its chunks)."""
    large = os.urandom(64 * 2**20)
    (mounted.path / "large.bin").write_bytes(large)
    with open(mounted.path / "large.bin", "rb", buffering=0) as held:  # at once
        os.unlink(mounted.path / "large.bin")
        evict(held.fileno(), len(large))
        assert held.read() == large
    written = os.urandom(3 * 2**20 + 5)
    (mounted.path / "written.bin").write_bytes(written)
    cloud_put(mounted, "fetched.bin", os.urandom(2**20))
    fetched = (mounted.path / "fetched.bin").read_bytes()
    (mounted.path / "other.bin").write_bytes(b"other")
    removals: list[tuple[str, bytes, Callable[[Path], object]]] = [
        ("written.bin", written, os.unlink),
        ("fetched.bin", fetched, lambda path: (mounted.path / "other.bin").rename(path)),
    ]
    for name, body, remove in removals:
        with open(mounted.path / name, "rb", buffering=0) as held:
            remove(mounted.path / name)
            evict(held.fileno(), len(body))  # so that the reads come to tierfs
            assert held.read() == body
            assert os.pread(held.fileno(), 100, 2**20 - 50) == body[2**20 - 50 : 2**20 + 50]
    assert cloud_bytes(mounted, "written.bin") is None
    assert cloud_bytes(mounted, "large.bin") is None
    assert cloud_bytes(mounted, "fetched.bin") == b"other"
    assert os.listdir(mounted.path) == ["fetched.bin"]


def test_a_file_moved_then_removed_while_open_reads_and_takes_writes(mounted: Mount) -> None:
    """POSIX again, for a file tier 1 may hold under another name only: moved (its copy is
    a new version, whose chunks tier 1 takes over in the background) and then removed, or
    replaced by a rename, while held open for writing.
    The handle reads the bytes and takes writes, which go nowhere (the write was ENOENT,
    the read ESTALE). Found by tests/t4_fuse/test_model.py."""
    body = os.urandom(100)
    (mounted.path / "b").write_bytes(body)
    (mounted.path / "other").write_bytes(b"other")
    removals: list[Callable[[], None]] = [
        lambda: os.unlink(mounted.path / "moved"),
        lambda: os.rename(mounted.path / "other", mounted.path / "moved"),
    ]
    for remove in removals:
        fd = os.open(mounted.path / "b", os.O_RDWR)
        try:
            os.rename(mounted.path / "b", mounted.path / "moved")
            remove()
            assert os.pwrite(fd, b"x" * 100, 196607) == 100
            assert os.pread(fd, 100, 0) == body
            assert os.pread(fd, 100, 196607) == b"x" * 100
        finally:
            os.close(fd)
        (mounted.path / "b").write_bytes(body)
    assert sorted(os.listdir(mounted.path)) == ["b", "moved"]
    assert cloud_bytes(mounted, "moved") == b"other"
    assert cloud_bytes(mounted, "b") == body


def not_utf8(root: Path) -> Path:
    """A name in `root` whose bytes are not UTF-8 (Latin-1's "café")."""
    return root / os.fsdecode(b"caf\xe9")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (lambda r: (r / "nope").read_bytes(), errno.ENOENT),
        (lambda r: os.mkdir(r / "dir"), errno.EEXIST),
        (lambda r: (r / "dir").write_bytes(b"x"), errno.EISDIR),
        (lambda r: os.listdir(r / "file"), errno.ENOTDIR),
        (lambda r: os.rmdir(r / "file"), errno.ENOTDIR),
        (lambda r: os.unlink(r / "dir"), errno.EISDIR),
        (lambda r: (r / ("n" * 256)).write_bytes(b"x"), errno.ENAMETOOLONG),
        (lambda r: (r / ("n" * 251)).write_bytes(b"x"), errno.ENAMETOOLONG),  # local's limit
        (lambda r: (r / "new\nline").write_bytes(b"x"), errno.EINVAL),
        (lambda r: (r / "h#1").write_bytes(b"x"), errno.EINVAL),  # local's temp files
        (lambda r: os.mkdir(r / "tab\tdir"), errno.EINVAL),
        (lambda r: os.rename(r / "file", r / "dir/h#2"), errno.EINVAL),
        (lambda r: os.link(r / "file", r / "hard"), errno.ENOTSUP),
        (lambda r: os.symlink("file", r / "x.tierfs-symlink"), errno.EINVAL),  # a link's key
        (lambda r: (r / "y.tierfs-symlink").write_bytes(b"x"), errno.EINVAL),
        (lambda r: os.readlink(r / "file"), errno.EINVAL),
        (lambda r: os.symlink("elsewhere", r / "file"), errno.EEXIST),
        (lambda r: os.symlink("file", r / ("n" * 240)), errno.ENAMETOOLONG),  # with its suffix
        (lambda r: not_utf8(r).write_bytes(b"x"), errno.EINVAL),  # keys are UTF-8
        (lambda r: os.mkdir(not_utf8(r)), errno.EINVAL),
        (lambda r: os.rename(r / "file", not_utf8(r)), errno.EINVAL),
        (lambda r: os.symlink("file", not_utf8(r)), errno.EINVAL),
        (lambda r: os.stat(not_utf8(r)), errno.EINVAL),
    ],
)
def test_errors_users_expect(
    mount_factory: Callable[..., Mount], action: Callable[[Path], object], expected: int
) -> None:
    mount = mount_factory("local")
    os.mkdir(mount.path / "dir")
    (mount.path / "dir/inside").write_bytes(b"x")
    (mount.path / "file").write_bytes(b"x")
    with pytest.raises(OSError) as failed:
        action(mount.path)
    assert failed.value.errno == expected
    assert sorted(os.listdir(mount.path)) == ["dir", "file"]  # nothing half made
    assert sorted(os.listdir(mount.path / "dir")) == ["inside"]
    assert cloud_bytes(mount, "file") == b"x"


def test_a_folder_rename_that_would_take_a_key_past_the_limit_moves_nothing(
    mount_factory: Callable[..., Mount],
) -> None:
    """A folder whose deepest key would be over 1024 bytes under its new name: the
    rename fails with ENAMETOOLONG before anything is copied. Before 2026-12-06 it failed
    with EINVAL at that key, half the tree copied."""
    mount = mount_factory("local")
    deep = Path("d", *["s" * 200] * 4)  # "d/" and 4 folders of 200: 806 bytes of key
    os.makedirs(mount.path / deep)
    (mount.path / "d/top").write_bytes(b"top")
    (mount.path / deep / ("f" * 218)).write_bytes(b"deep")  # a key of 1024 bytes
    before = bucket_tree(mount, "d")
    with pytest.raises(OSError) as failed:
        os.rename(mount.path / "d", mount.path / "longer")
    assert failed.value.errno == errno.ENAMETOOLONG
    assert bucket_tree(mount, "longer") == {}
    assert bucket_tree(mount, "d") == before
    assert tree(mount.path / "d") == before
    assert not (mount.path / "longer").exists()


def test_a_link_whose_key_would_pass_the_limit_is_refused_as_too_long(
    mount_factory: Callable[..., Mount],
) -> None:
    """A link's object is its key and `.tierfs-symlink`: one that would pass 1024 bytes
    is ENAMETOOLONG, as a file's key would be (before 2026-12-06: EINVAL)."""
    mount = mount_factory("local")
    deep = Path(*["s" * 200] * 4)  # 804 bytes of key with the "/" after it
    os.makedirs(mount.path / deep)
    with pytest.raises(OSError) as failed:
        os.symlink("target", mount.path / deep / ("l" * 210))  # 1029 bytes with the suffix
    assert failed.value.errno == errno.ENAMETOOLONG
    assert os.listdir(mount.path / deep) == []
    os.symlink("target", mount.path / deep / ("l" * 205))  # 1024: fits
    assert os.readlink(mount.path / deep / ("l" * 205)) == "target"


# Keys another tool put that no path can name, each as far as that server keeps it
# (SeaweedFS folds "//" and refuses "." and ".." segments; Azurite refuses those too).
UNNAMABLE = {
    "local": ["sub/tab\tname", os.fsdecode(b"sub/caf\xe9")],
    "s3-seaweedfs": ["sub/tab\tname", "sub/new\nline"],
    "s3-moto": ["sub//x", "sub/./y", "sub/..", "/lead", "sub/tab\tname"],
    "azure": ["sub//x", "/lead", "sub/tab\tname"],
    "gcp-native": ["sub//x", "sub/./y", "sub/../z", "/lead", "sub/tab\tname"],
}


def put_as_another_tool(
    request: pytest.FixtureRequest, provider: str, mount: Mount, key: str
) -> None:
    """Put `key` in the mount's bucket with the server's own client, as it is."""
    server: Any = server_for(request, provider)
    if provider == "local":
        path = Path(mount.flags["local_root"]) / key
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"odd")
    elif provider.startswith("s3"):
        server.boto3_client().put_object(Bucket=mount.flags["s3_bucket"], Key=key, Body=b"odd")
    elif provider == "azure":
        container = server.service_client().get_container_client(mount.flags["azure_container"])
        container.upload_blob(key, b"odd")
    else:
        url = f"{server.endpoint}/upload/storage/v1/b/{mount.flags['gcp_bucket']}/o"
        query = f"?uploadType=media&name={urllib.parse.quote(key, safe='')}"
        with urllib.request.urlopen(urllib.request.Request(url + query, b"odd", method="POST")):
            pass


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", list(UNNAMABLE))
def test_keys_no_file_name_can_stand_for_are_left_out_and_said_once(
    request: pytest.FixtureRequest, mount_factory: Callable[..., Mount], provider: str
) -> None:
    """A key such as "a//b", "/a", "a/./b" or one holding a tab (put by another tool) made
    obstore fail the whole listing of its folder: `ls` said EIO (on S3 moto, the root's).
    The folder now lists without it, the log names it once, and it stays in the bucket; a
    move of the folder is refused, `tierfs warm` of it warms the rest."""
    mount = mount_factory(provider)
    (mount.path / "sub").mkdir()
    (mount.path / "sub/good").write_bytes(b"x")
    (mount.path / "other").write_bytes(b"y")
    # "bare" has no marker: a folder by its keys alone, one of them a tab's.
    unnamable = [*UNNAMABLE[provider], "bare/tab\tname"]
    for key in [*unnamable, "bare/ok"]:
        put_as_another_tool(request, provider, mount, key)
    time.sleep(1.2)  # past the metadata TTL: the next listings ask the bucket
    assert (mount.path / "bare").is_dir()  # looked up before any listing names it
    for _ in range(2):
        assert sorted(os.listdir(mount.path)) == ["bare", "other", "sub"]
        assert sorted(os.listdir(mount.path / "sub")) == ["good"]
        assert os.listdir(mount.path / "bare") == ["ok"]
    assert (mount.path / "bare/ok").read_bytes() == b"odd"
    # What is left of "bare" is a key it cannot show: not empty, and still there.
    (mount.path / "bare/ok").unlink()
    with pytest.raises(OSError) as failed:
        os.rmdir(mount.path / "bare")
    assert failed.value.errno == errno.ENOTEMPTY
    assert os.listdir(mount.path / "bare") == []
    (mount.path / "sub/new").write_bytes(b"z")
    assert sorted(os.listdir(mount.path / "sub")) == ["good", "new"]
    assert (mount.path / "sub/good").read_bytes() == b"x"
    # A move of the folder could not take those keys along: refused, nothing moved.
    with pytest.raises(OSError) as failed:
        os.rename(mount.path / "sub", mount.path / "moved")
    assert failed.value.errno == errno.EIO
    time.sleep(1.2)
    assert sorted(os.listdir(mount.path)) == ["bare", "other", "sub"]
    assert sorted(os.listdir(mount.path / "sub")) == ["good", "new"]
    warmed = warm(str(mount.path / "sub"), "-node", node_address(mount))  # the rest of it
    assert warmed.returncode == 0, warmed.stderr
    assert f"{mount.path / 'sub'}: 2 files, " in warmed.stdout
    said = [line for line in mount.log.read_text().splitlines() if "is not shown" in line]
    for key in unnamable:
        # Each is named as its folder's listing met it: the key, or the first prefix of it
        # that names no folder ("sub//" of "sub//x", "/" of "/lead").
        folder = key[: key.index("/") + 1] if key.startswith(("sub/", "bare/")) else ""
        rest = key[len(folder) :]
        listed = folder + rest[: rest.index("/") + 1] if "/" in rest else key
        assert sum(f"{listed!r} is not shown" in line for line in said) == 1, (listed, said)


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["s3-moto", "s3-seaweedfs"])
def test_keys_whose_names_no_path_can_take_are_left_out_and_said_once(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """S3 takes a key with a name over 255 bytes (SeaweedFS a folder's), which no Linux
    path can name: listed, `ls -l` and `find` failed on it (ENAMETOOLONG) and `rm -rf` of
    its folder stopped there. It is left out of its folder's listing and the log names it
    once, as other keys no file name can stand for; `rm -rf` removes the rest and says,
    as `rmdir` does, that the folder is not empty; a move of the folder takes it along."""
    mount = mount_factory(provider)
    long_folder, long_file = "d/" + "b" * 256 + "/x", "d/" + "a" * 300
    too_long = [long_folder, long_file] if provider == "s3-moto" else [long_folder]
    for key in [*too_long, "d/ok", "d/sub/ok"]:
        cloud_put(mount, key, b"odd")

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=mount.path, capture_output=True, text=True, check=False)

    for _ in range(2):
        listed = run("ls", "-la", "d")
        assert (listed.returncode, listed.stderr) == (0, "")
        assert [line.split()[-1] for line in listed.stdout.splitlines()[1:]] == [
            ".",
            "..",
            "ok",
            "sub",
        ]
        found = run("find", "d")
        assert (found.returncode, found.stderr) == (0, "")
        assert sorted(found.stdout.split()) == ["d", "d/ok", "d/sub", "d/sub/ok"]
    os.rename(mount.path / "d", mount.path / "e")
    assert sorted(os.listdir(mount.path / "e")) == ["ok", "sub"]
    moved = ["e" + key[1:] for key in too_long]
    assert sorted(bucket_keys(mount)) == sorted([*moved, "e/", "e/ok", "e/sub/ok"])
    removed = run("rm", "-rf", "e")
    assert removed.returncode == 1
    assert removed.stderr == "rm: cannot remove 'e': Directory not empty\n"
    assert os.listdir(mount.path / "e") == []
    with pytest.raises(OSError) as failed:
        os.rmdir(mount.path / "e")
    assert failed.value.errno == errno.ENOTEMPTY
    assert sorted(bucket_keys(mount)) == sorted([*moved, "e/"])  # untouched
    said = [line for line in mount.log.read_text().splitlines() if "is not shown" in line]
    for key in [long_folder.removesuffix("/x") + "/", *too_long[1:]]:
        for folder in ("d", "e"):
            listed_key = folder + key[1:]
            assert sum(f"{listed_key!r} is not shown" in line for line in said) == 1, said


@pytest.mark.warnings_expected
def test_link_keys_no_link_can_be_named_by_are_left_out_and_said_once(
    mount_factory: Callable[..., Mount],
) -> None:
    """The keys of links that would be named ".", ".." or "" (put by another tool) are
    left out of their folder's listing, as keys no name can stand for are. Before
    2026-12-06 `ls -a` showed `.` and `..` twice (their nodes never forgotten) and a file
    `.tierfs-symlink` that no lookup found (ENOENT)."""
    mount = mount_factory("local")
    nameless = [f"h/{dots}.tierfs-symlink" for dots in ("", ".", "..")]
    for key in [*nameless, "h/file"]:
        cloud_put(mount, key, b"target")
    for _ in range(2):
        listed = subprocess.run(
            ["ls", "-a", str(mount.path / "h")], capture_output=True, text=True, check=True
        )
        assert listed.stdout.split() == [".", "..", "file"]
    assert (mount.path / "h/file").read_bytes() == b"target"
    (mount.path / "h/file").unlink()
    with pytest.raises(OSError) as failed:  # what is left it cannot show: not empty
        os.rmdir(mount.path / "h")
    assert failed.value.errno == errno.ENOTEMPTY
    said = [line for line in mount.log.read_text().splitlines() if "is not shown" in line]
    for key in nameless:
        assert sum(f"{key!r} is not shown" in line for line in said) == 1, (key, said)


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["s3-moto", "s3-seaweedfs", "azure"])
def test_a_file_a_folder_of_its_name_hides_is_said_once(
    request: pytest.FixtureRequest, mount_factory: Callable[..., Mount], provider: str
) -> None:
    """A bucket may hold an object `d/f` and keys under `d/f/` (put by another tool): the
    mount shows the folder, and the file was hidden without a word. Its lookup and its
    folder's listing show the folder still, and the log names the file's key once (a
    WARNING), saying that the object stays in the bucket, untouched."""
    mount = mount_factory(provider)
    for key in ("d/f", "d/f/x"):
        put_as_another_tool(request, provider, mount, key)
    assert (mount.path / "d/f").is_dir()  # looked up before any listing names it
    assert os.listdir(mount.path / "d/f") == ["x"]
    time.sleep(1.2)  # past the metadata TTL: the listings ask the bucket
    for _ in range(2):
        assert os.listdir(mount.path / "d") == ["f"]
        assert (mount.path / "d/f").is_dir()
    assert (mount.path / "d/f/x").read_bytes() == b"odd"
    assert sorted(bucket_keys(mount)) == ["d/f", "d/f/x"]  # untouched
    said = [line for line in mount.log.read_text().splitlines() if "'d/f' is not shown" in line]
    assert len(said) == 1, said
    assert " WARNING " in said[0] and "a folder of its name hides it" in said[0], said
    assert "untouched" in said[0], said
    os.rename(mount.path / "d", mount.path / "e")  # takes both along
    assert sorted(bucket_keys(mount)) == ["e/", "e/f", "e/f/x"]


@pytest.mark.warnings_expected
def test_a_move_of_a_file_and_a_folder_of_one_name_loses_neither(
    request: pytest.FixtureRequest, mount_factory: Callable[..., Mount]
) -> None:
    """SeaweedFS, copying `d/f` and `d/f/x` at once, now and then keeps one of them (1 in
    ~40 here), and a folder move then deleted the other's source: the copy lost for good.
    Moved back and forth 40 times, both stay, with their bytes."""
    mount = mount_factory("s3-seaweedfs")
    for key in ("d/f", "d/f/x"):
        put_as_another_tool(request, "s3-seaweedfs", mount, key)
    names = ["d", "e"]
    for n in range(40):
        os.rename(mount.path / names[n % 2], mount.path / names[(n + 1) % 2])
        folder = names[(n + 1) % 2]
        assert sorted(bucket_keys(mount)) == [f"{folder}/", f"{folder}/f", f"{folder}/f/x"], n
    assert cloud_bytes(mount, "d/f") == cloud_bytes(mount, "d/f/x") == b"odd"


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["s3-moto", "s3-seaweedfs", "azure"])
def test_a_link_a_file_of_its_name_hides_is_said_once(
    request: pytest.FixtureRequest, mount_factory: Callable[..., Mount], provider: str
) -> None:
    """A bucket may hold a file `d/f` and a link's object `d/f.tierfs-symlink` beside it
    (put by another tool, or by two nodes at once): the mount shows the file, and the
    link was hidden without a word. Its lookup and its folder's listing show the file
    still, and the log names the link's key once (a WARNING), saying that the object
    stays in the bucket, untouched; once the file is renamed, the link is there."""
    mount = mount_factory(provider)
    for key in ("d/f", "d/f.tierfs-symlink"):
        put_as_another_tool(request, provider, mount, key)
    assert (mount.path / "d/f").is_file()  # looked up before any listing names it
    time.sleep(1.2)  # past the metadata TTL: the listings ask the bucket
    for _ in range(2):
        assert os.listdir(mount.path / "d") == ["f"]
        assert not (mount.path / "d/f").is_symlink()
    assert (mount.path / "d/f").read_bytes() == b"odd"
    assert sorted(bucket_keys(mount)) == ["d/f", "d/f.tierfs-symlink"]  # untouched
    key = "'d/f.tierfs-symlink' is not shown"
    said = [line for line in mount.log.read_text().splitlines() if key in line]
    assert len(said) == 1, said
    assert " WARNING " in said[0] and "a file of its name hides the link" in said[0], said
    assert "untouched" in said[0], said
    os.rename(mount.path / "d/f", mount.path / "d/g")
    time.sleep(1.2)
    assert sorted(os.listdir(mount.path / "d")) == ["f", "g"]
    assert os.readlink(mount.path / "d/f") == "odd"


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_symbolic_links_are_kept_in_the_bucket(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """A link is the object `NAME.tierfs-symlink` holding its target: every node reads it
    from a listing, follows it, and renames and removes it as a file."""
    first = mount_factory(provider, metadata_ttl="0.1s")
    second = mount_factory(provider, metadata_ttl="0.1s", **first.bucket_flags())
    root = first.path
    (root / "d").mkdir()
    (root / "d/target.txt").write_bytes(b"hello")
    os.symlink("target.txt", root / "d/link")
    os.symlink("d/target.txt", root / "up")
    os.symlink("nowhere", root / "dangling")
    assert cloud_bytes(first, "d/link.tierfs-symlink") == b"target.txt"
    time.sleep(0.3)  # past the TTL
    for node in (first, second):
        assert sorted(os.listdir(node.path)) == ["d", "dangling", "up"]
        assert sorted(os.listdir(node.path / "d")) == ["link", "target.txt"]
        link = os.lstat(node.path / "d/link")
        assert stat.S_ISLNK(link.st_mode) and link.st_size == len("target.txt")
        assert os.readlink(node.path / "d/link") == "target.txt"
        assert (node.path / "d/link").read_bytes() == b"hello"
        assert (node.path / "up").read_bytes() == b"hello"
        assert os.readlink(node.path / "dangling") == "nowhere"
        assert not (node.path / "dangling").exists()
    os.rename(second.path / "d/link", second.path / "moved")  # a link moves as a link
    (second.path / "file").write_bytes(b"file")
    os.replace(second.path / "up", second.path / "file")  # a link over a file
    os.replace(second.path / "d/target.txt", second.path / "dangling")  # a file over a link
    os.unlink(second.path / "moved")
    time.sleep(0.3)
    assert sorted(os.listdir(root)) == ["d", "dangling", "file"]  # d, emptied: its marker
    assert os.readlink(root / "file") == "d/target.txt"
    assert not os.path.islink(root / "dangling")
    assert (root / "dangling").read_bytes() == b"hello"
    keys = [meta.key.rstrip("/") for meta in asyncio.run(_all_keys(first))]
    assert sorted(keys) == ["d", "dangling", "file.tierfs-symlink"]  # no more


async def _all_keys(mount: Mount) -> list[ObjectMeta]:
    cloud = cloud_of(mount)
    try:
        return (await cloud.list_all("", delimiter=False)).objects
    finally:
        await cloud.close()


def test_a_python_environment_made_on_one_node_runs_on_another(
    mount_factory: Callable[..., Mount],
) -> None:
    """`python -m venv` links the interpreter and `lib64`: it failed with ENOTSUP."""
    first = mount_factory("s3-seaweedfs", metadata_ttl="0.1s")
    second = mount_factory("s3-seaweedfs", metadata_ttl="0.1s", s3_bucket=first.flags["s3_bucket"])
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(first.path / "env")],
        check=True,
        timeout=120,
    )
    time.sleep(0.3)
    for node in (first, second):
        done = subprocess.run(
            [str(node.path / "env/bin/python"), "-c", "import sys; print(sys.prefix)"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert done.stdout.strip() == str(node.path / "env")


def test_unicode_and_spaces_in_names(mounted: Mount) -> None:
    names = ["a file with spaces.txt", "ünïcødé файл 文件.bin", "emoji 🎉", "semi;colon&amp"]
    os.mkdir(mounted.path / "dir with space")
    for name in names:
        (mounted.path / "dir with space" / name).write_bytes(name.encode())
    assert sorted(os.listdir(mounted.path / "dir with space")) == sorted(names)
    for name in names:
        assert cloud_bytes(mounted, f"dir with space/{name}") == name.encode()
        assert (mounted.path / "dir with space" / name).read_bytes() == name.encode()


def test_ordinary_tools(mounted: Mount, tmp_path: Path) -> None:
    source = tmp_path / "tree"
    (source / "a/b").mkdir(parents=True)
    for index in range(20):
        (source / "a" / f"f{index}").write_bytes(os.urandom(1000 + index))
    (source / "a/b/deep").write_bytes(os.urandom(300_000))

    def run(*args: str) -> str:
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("cp", "-r", str(source), str(mounted.path / "copy"))
    run("diff", "-r", str(source), str(mounted.path / "copy"))
    found = run("find", str(mounted.path / "copy"), "-type", "f").split()
    assert len(found) == 21
    assert int(run("du", "-sb", str(mounted.path / "copy")).split()[0]) >= 300_000
    run("tar", "-cf", str(tmp_path / "t.tar"), "-C", str(mounted.path), "copy")
    run("mkdir", str(tmp_path / "untar"))
    run("tar", "-xf", str(tmp_path / "t.tar"), "-C", str(tmp_path / "untar"))
    run("diff", "-r", str(source), str(tmp_path / "untar/copy"))
    run("rsync", "-a", str(source) + "/", str(mounted.path / "synced"))
    run("diff", "-r", str(source), str(mounted.path / "synced"))
    dd_out = mounted.path / "dd.bin"
    run("dd", "if=/dev/zero", f"of={dd_out}", "bs=1M", "count=8", "status=none")
    assert cloud_bytes(mounted, "dd.bin") == bytes(8 * 2**20)


def test_rsync_inplace_after_a_remount_uploads_nothing_unchanged(
    request: pytest.FixtureRequest, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    """`rsync -a --inplace --no-whole-file` again after a remount (the files' times are the
    store's now) rewrites no file whose bytes it finds unchanged: it truncates each to its
    own size, and that puts nothing. Before 2026-12-07 such a truncate put the whole file
    again, so the run after a remount uploaded the whole tree."""
    server = s3_server_for(request, "s3-seaweedfs")
    mount = mount_factory("s3-seaweedfs")
    source = tmp_path / "tree"
    source.mkdir()
    for index in range(20):
        (source / f"f{index}").write_bytes(os.urandom(5000 + index))
        os.utime(source / f"f{index}", (1e9, 1e9))  # not the store's time, to the second
    sync = ["rsync", "-a", "--inplace", "--no-whole-file", f"{source}/", str(mount.path / "synced")]
    subprocess.run(sync, check=True, timeout=120)
    mount.stop()
    mount.start()
    (source / "f0").write_bytes(b"changed")
    bucket = mount.flags["s3_bucket"]
    before = server.settled_request_count("PUT", bucket)
    subprocess.run(sync, check=True, timeout=120)
    assert server.settled_request_count("PUT", bucket) - before == 1  # f0 alone
    subprocess.run(["diff", "-r", str(source), str(mount.path / "synced")], check=True)
    assert cloud_bytes(mount, "synced/f0") == b"changed"


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_times_and_modes_set_here_outlive_the_metadata_ttl(
    mount_factory: Callable[..., Mount], tmp_path: Path, provider: str
) -> None:
    """`chmod` and `touch -m` hold on this mount past the metadata TTL, through a rename
    and an upload (`cp -p`, `rsync -a`, whose next run then sends nothing), until the
    object changes in the bucket. (The store's time came back after the TTL.) `chown`
    is accepted and changes nothing."""
    mount = mount_factory(provider, metadata_ttl="0.1s")
    past = 1_500_000_000 * 10**9
    path = mount.path / "f"
    path.write_bytes(b"one")
    os.utime(path, ns=(past, past))
    path.chmod(0o600)
    time.sleep(0.3)
    info = path.stat()
    assert (info.st_mtime_ns, stat.S_IMODE(info.st_mode)) == (past, 0o600)
    os.chown(path, 1000, 1000)  # accepted (cp -a as root goes on), and changes nothing
    assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid())
    path = path.rename(mount.path / "g")
    time.sleep(0.3)
    assert path.stat().st_mtime_ns == past

    source = tmp_path / "tree"
    source.mkdir()
    for index in range(5):
        (source / f"f{index}").write_bytes(os.urandom(1000))
        os.utime(source / f"f{index}", ns=(past + index, past + index))
    for _ in range(2):
        sent = subprocess.run(
            ["rsync", "-a", "--stats", f"{source}/", str(mount.path / "synced")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        time.sleep(0.3)
    assert "Number of regular files transferred: 0" in sent
    assert [(mount.path / "synced" / f"f{n}").stat().st_mtime_ns for n in range(5)] == [
        past + index for index in range(5)
    ]

    cloud_put(mount, "g", b"changed elsewhere")
    time.sleep(0.3)
    assert abs(path.stat().st_mtime_ns - time.time_ns()) < 60 * 10**9  # the store's, now


def test_the_access_time_is_set_apart_from_the_modification_time(
    mounted: Mount, tmp_path: Path
) -> None:
    """`touch -a` sets the access time alone, and `cp -p` and `rsync -aU` keep both times.
    Before, the access time was always the modification time: `touch -a` changed
    nothing and said nothing."""
    path = mounted.path / "f"
    path.write_bytes(b"x")
    os.utime(path, ns=(1_000_000_000_123_456_789, 1_500_000_000_000_000_001))
    subprocess.run(["touch", "-a", "-d", "@1200000000.5", str(path)], check=True, timeout=30)
    info = path.stat()
    assert (info.st_atime_ns, info.st_mtime_ns) == (
        1_200_000_000_500_000_000,
        1_500_000_000_000_000_001,
    )
    source = tmp_path / "s"
    source.write_bytes(b"y")
    os.utime(source, ns=(1_100_000_000_000_000_007, 1_300_000_000_000_000_003))
    subprocess.run(["cp", "-p", str(source), str(mounted.path / "c")], check=True, timeout=30)
    info = (mounted.path / "c").stat()
    assert (info.st_atime_ns, info.st_mtime_ns) == (
        1_100_000_000_000_000_007,
        1_300_000_000_000_000_003,
    )
    with path.open("ab") as file:
        file.write(b"more")
    info = path.stat()
    assert info.st_atime_ns == 1_200_000_000_500_000_000  # a write leaves it, as on Linux
    assert info.st_mtime_ns > 1_500_000_000_000_000_001


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_a_written_files_time_holds_past_its_upload(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """A file written here keeps the time of its last write once uploaded and past the
    metadata TTL: `stat` twice of a file nobody touched gives one time. Before, the
    store's last-modified came back after the TTL: the time went back (to the whole
    second on S3), and git, rsync and make saw the file changed."""
    mount = mount_factory(provider, metadata_ttl="0.1s")
    path = mount.path / "f"
    path.write_bytes(b"one")
    written = path.stat().st_mtime_ns
    time.sleep(0.3)
    times = (path.stat().st_mtime_ns, path.stat().st_ctime_ns)
    assert times == (written, written), mount.log_tail()
    with path.open("r+b") as file:
        file.write(b"two")
    rewritten = path.stat().st_mtime_ns
    assert rewritten > written
    time.sleep(0.3)
    assert path.stat().st_mtime_ns == rewritten, mount.log_tail()
    cloud_put(mount, "f", b"changed elsewhere")
    time.sleep(0.3)
    assert path.stat().st_mtime_ns != rewritten, mount.log_tail()  # the store's, now


def forget_unused_inodes() -> None:
    """Make the kernel forget the inodes no one holds, as memory pressure does."""
    Path("/proc/sys/vm/drop_caches").write_text("2")


def test_an_inode_the_kernel_forgot_keeps_its_number(mounted: Mount, tmp_path: Path) -> None:
    """A file or folder the kernel forgot (memory pressure) and looks up again has the
    inode number it had, so `tar x` of a big tree neither fails with "Directory renamed
    before its status could be extracted" nor leaves its links whose target has `..` as
    the empty files it puts in their place (it makes them last, if the file there is
    still the one it made). Before, every lookup after a forget gave a new number."""
    (mounted.path / "d").mkdir()
    (mounted.path / "d/f").write_bytes(b"x")
    before = [(mounted.path / name).stat().st_ino for name in ("d", "d/f")]
    forget_unused_inodes()
    assert [(mounted.path / name).stat().st_ino for name in ("d", "d/f")] == before

    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub/l.h").symlink_to("../z.h")
    (source / "z.h").write_bytes(os.urandom(100_000))  # records for tar's checkpoints
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", "-cf", str(archive), "--sort=name", "-C", str(source), "."], check=True)
    (mounted.path / "x").mkdir()
    forget = "--checkpoint-action=exec=sh -c 'echo 2 > /proc/sys/vm/drop_caches'"
    untar = ["tar", "-xf", str(archive), "-C", str(mounted.path / "x"), "--checkpoint=1", forget]
    result = subprocess.run(untar, capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    link = mounted.path / "x/sub/l.h"
    assert link.is_symlink() and os.readlink(link) == "../z.h"
    assert link.read_bytes() == (source / "z.h").read_bytes()


def test_what_was_set_here_outlives_the_kernel_forgetting_the_file(
    mount_factory: Callable[..., Mount],
) -> None:
    """A mode, a time set and a written file's time stay once the kernel forgot the
    inodes (memory pressure) and looks them up again past the metadata TTL. Before, they
    came back as the mount's default mode and the store's time: `chmod 600` undone, and
    `rsync -a` sent every file again."""
    mount = mount_factory("local", metadata_ttl="0.1s")
    past = 1_500_000_000 * 10**9
    kept = mount.path / "kept"
    kept.write_bytes(b"one")
    os.utime(kept, ns=(past, past))
    kept.chmod(0o600)
    (mount.path / "d").mkdir()
    (mount.path / "d").chmod(0o700)
    written = mount.path / "d/written"
    written.write_bytes(b"two")

    def attributes() -> list[tuple[int, int, int]]:
        return [(s.st_ino, s.st_mode, s.st_mtime_ns) for s in (kept.stat(), written.stat())]

    before = attributes()
    forget_unused_inodes()
    time.sleep(0.3)
    assert attributes() == before
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.stat().st_mtime_ns == past
    assert stat.S_IMODE((mount.path / "d").stat().st_mode) == 0o700


def test_a_directory_changed_here_takes_a_new_time(mounted: Mount) -> None:
    """A name made, removed or moved in a directory gives it a new time, as on a local
    disk: Python's import system lists a folder again only when its time changes, so a
    program that writes a module and then imports it found none. Before, a directory kept
    the time this mount first saw it."""
    folder = mounted.path / "pkg"
    folder.mkdir()
    (folder / "first.py").write_text("X = 1\n")
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); import first\n"
        "open(sys.argv[1] + '/second.py', 'w').write('Y = 2\\n')\n"
        "import second; print(first.X + second.Y)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "3\n", "")

    other = mounted.path / "other"
    other.mkdir()
    changes: list[tuple[str, Callable[[], object], list[Path]]] = [
        ("create", lambda: (folder / "new").write_bytes(b"x"), [folder]),
        ("mkdir", lambda: (folder / "sub").mkdir(), [folder]),
        ("symlink", lambda: (folder / "link").symlink_to("new"), [folder]),
        ("rename", lambda: (folder / "new").rename(other / "moved"), [folder, other]),
        ("unlink", lambda: (other / "moved").unlink(), [other]),
        ("rmdir", lambda: (folder / "sub").rmdir(), [folder]),
    ]
    for what, change, changed in changes:
        before = [path.stat().st_mtime_ns for path in changed]
        time.sleep(0.01)
        change()
        after = [path.stat().st_mtime_ns for path in changed]
        assert all(new > old for old, new in zip(before, after, strict=True)), what


def test_modes_given_at_create_and_mkdir_hold(mounted: Mount) -> None:
    """A program made here runs (`git clone`, a compiler's output): create and mkdir keep
    the mode they are given, as chmod does, and a mode of 0 is 0, not the default."""
    script = mounted.path / "run.sh"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o750)
    os.write(fd, b"#!/bin/sh\necho ran\n")
    os.close(fd)
    assert stat.S_IMODE(script.stat().st_mode) == 0o750
    assert subprocess.run([str(script)], capture_output=True, timeout=30).stdout == b"ran\n"
    os.mkdir(mounted.path / "private", 0o700)
    assert stat.S_IMODE((mounted.path / "private").stat().st_mode) == 0o700
    script.chmod(0)
    assert stat.S_IMODE(script.stat().st_mode) == 0


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_a_removed_directory_stays_gone_past_the_metadata_ttl(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """SeaweedFS lists a prefix for minutes after its last key is gone: once the TTL had
    passed, `rm -rf` of a tree said ENOTEMPTY, the removed (or moved) directory came back
    in `ls`, and `rm -rf d; mkdir d` said EEXIST."""
    mount = mount_factory(provider, metadata_ttl="0.1s")
    root = mount.path
    for _ in range(2):  # as `rm -rf d` does it, slowly
        (root / "d/sub").mkdir(parents=True)
        (root / "d/sub/f").write_bytes(b"f")
        (root / "d/g").write_bytes(b"g")
        (root / "d/sub/f").unlink()
        (root / "d/sub").rmdir()
        time.sleep(0.3)  # d is listed again: SeaweedFS still has sub/
        (root / "d/g").unlink()
        (root / "d").rmdir()
        time.sleep(0.3)
        assert os.listdir(root) == []
        (root / "d").mkdir()
        (root / "d").rmdir()
    # A prefix (no folder marker: keys put by another client) emptied by removing its
    # files is no entry that keeps its parent from going, as on AWS, where it is gone at once.
    cloud_put(mount, "e/sub/f", b"f")
    cloud_put(mount, "e/g", b"g")
    time.sleep(0.3)  # past the TTL of the listing above
    (root / "e/sub/f").unlink()
    time.sleep(0.3)
    os.listdir(root / "e")  # listed again: SeaweedFS still has sub/
    (root / "e/g").unlink()
    (root / "e").rmdir()
    time.sleep(0.3)
    assert os.listdir(root) == []
    (root / "old/sub").mkdir(parents=True)
    (root / "old/sub/f").write_bytes(b"f")
    (root / "old").rename(root / "new")
    time.sleep(0.3)
    assert os.listdir(root) == ["new"]
    assert (root / "new/sub/f").read_bytes() == b"f"
    subprocess.run(["rm", "-rf", str(root / "new")], check=True, timeout=60)
    time.sleep(0.3)
    assert os.listdir(root) == []


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
def test_a_folder_whose_listing_names_a_folder_emptied_elsewhere_is_removed(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """`mkdir d`, and another node makes and empties `d/x`: `rmdir d` succeeds, while the
    listing this mount holds for the TTL still names `x`, and on SeaweedFS, which lists an
    emptied prefix for minutes, after it too. It said ENOTEMPTY: the folder's own marker
    was taken for a key below it."""
    mount = mount_factory(provider)
    root = mount.path
    for lists in (os.listdir, lambda _: time.sleep(1.2)):  # in the TTL, then past it
        (root / "d").mkdir()
        cloud_put(mount, "d/x/y", b"y")  # another node
        time.sleep(1.2)  # past the TTL of what this mount knows of d
        assert os.listdir(root / "d") == ["x"]
        cloud_delete(mount, "d/x/y")
        lists(root / "d")
        (root / "d").rmdir()
        assert not (root / "d").exists()
        assert bucket_keys(mount) == []


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
def test_a_folder_marker_is_no_entry_of_its_folder(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest, provider: str
) -> None:
    """The S3 console makes a folder as a `name/` object, and SeaweedFS lists an emptied
    folder so: listed, it came back as the folder's own key, a file inside itself."""
    mount = mount_factory(provider, start=False)
    client = s3_server_for(request, provider).boto3_client()
    bucket = mount.flags["s3_bucket"]
    for key, body in [("folder/", b""), ("full/", b""), ("full/a", b"a")]:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    mount.start()
    assert sorted(os.listdir(mount.path)) == ["folder", "full"]
    assert os.listdir(mount.path / "folder") == []
    assert os.listdir(mount.path / "full") == ["a"]

    def keys() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted(item["Key"] for item in listed)

    # Such markers move with their folders and go with them (they came back as ghosts, and
    # a folder holding one could not be renamed: EIO).
    (mount.path / "top").mkdir()
    (mount.path / "full").rename(mount.path / "top/full")
    (mount.path / "folder").rename(mount.path / "top/folder")
    assert keys() == ["top/", "top/folder/", "top/full/", "top/full/a"]
    (mount.path / "top").rename(mount.path / "moved")
    assert keys() == ["moved/", "moved/folder/", "moved/full/", "moved/full/a"]
    (mount.path / "moved/folder").rmdir()
    assert keys() == ["moved/", "moved/full/", "moved/full/a"]
    subprocess.run(["rm", "-r", str(mount.path / "moved")], check=True, timeout=60)
    assert keys() == []


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs", "azure", "gcp-native"])
def test_an_empty_directory_is_in_the_bucket_for_every_node(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """mkdir writes the folder's marker: the directory shows on another node (looked up at
    once, or listed) and after a restart, and an rmdir anywhere removes it for all (the
    node that made it showed it on: Azure found it only through a listing)."""
    first = mount_factory(provider, metadata_ttl="0.1s")
    second = mount_factory(provider, metadata_ttl="0.1s", **first.bucket_flags())
    (first.path / "a/b/c").mkdir(parents=True)
    (first.path / "a/file").write_bytes(b"f")
    time.sleep(0.3)  # past the TTL
    assert stat.S_ISDIR(os.stat(second.path / "a/b/c").st_mode)  # no listing before
    (second.path / "a/b/c").rmdir()
    time.sleep(0.3)
    assert os.listdir(first.path / "a/b") == []
    (first.path / "a/b/c").mkdir()
    time.sleep(0.3)
    assert sorted(os.listdir(second.path / "a")) == ["b", "file"]
    assert os.listdir(second.path / "a/b") == ["c"]
    first.stop()
    first.start()
    assert os.listdir(first.path / "a/b") == ["c"]
    (second.path / "a/b/c").rmdir()
    (second.path / "a/b").rmdir()
    time.sleep(0.3)
    assert os.listdir(first.path / "a") == ["file"]
    with pytest.raises(FileNotFoundError):
        os.stat(first.path / "a/b")


def test_a_git_repository_is_used_from_two_nodes(mount_factory: Callable[..., Mount]) -> None:
    """git keeps empty directories in a repository (`refs/heads` after `git gc`); without
    their markers the other node found no repository."""
    git = shutil.which("git")
    assert git is not None, "git is not installed"
    first = mount_factory("s3-seaweedfs", metadata_ttl="0.1s")
    second = mount_factory("s3-seaweedfs", metadata_ttl="0.1s", s3_bucket=first.flags["s3_bucket"])
    identity = ["-c", "user.name=tierfs", "-c", "user.email=tierfs@localhost"]

    def run(where: Path, *args: str) -> str:
        done = subprocess.run(
            [git, *identity, "-c", "init.defaultBranch=main", *args],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    (first.path / "repo").mkdir()
    run(first.path / "repo", "init", "-q")
    (first.path / "repo/a.txt").write_text("a\n")
    run(first.path / "repo", "add", "a.txt")
    run(first.path / "repo", "commit", "-qm", "first")
    run(first.path / "repo", "gc", "-q")  # packs the refs: refs/heads is left empty
    time.sleep(0.3)
    assert run(second.path / "repo", "log", "--format=%s") == "first\n"
    (second.path / "repo/b.txt").write_text("b\n")
    run(second.path / "repo", "add", "b.txt")
    run(second.path / "repo", "commit", "-qm", "second")
    time.sleep(0.3)
    assert run(first.path / "repo", "log", "--format=%s") == "second\nfirst\n"
    run(first.path / "repo", "fsck", "--no-progress")


def mount_with_big_folder(
    mount_factory: Callable[..., Mount], count: int, **flags: str
) -> tuple[Mount, list[str]]:
    """A mount of the local provider whose bucket holds, from its start, the folder `big`
    of `count` empty files; the mount and their names, sorted."""
    mount = mount_factory("local", start=False, **flags)
    bucket = Path(mount.flags["local_root"]) / "big"
    bucket.mkdir(parents=True)
    names = [f"entry-{index:05d}" for index in range(count)]
    for name in names:
        (bucket / name).write_bytes(b"")
    mount.start()
    return mount, names


def test_a_big_directory_lists_in_full(mount_factory: Callable[..., Mount]) -> None:
    mount, names = mount_with_big_folder(mount_factory, 10_000)
    assert sorted(os.listdir(mount.path / "big")) == names


def test_every_directory_lists_dot_and_dot_dot_first(mount_factory: Callable[..., Mount]) -> None:
    """`ls -a` shows `.` and `..` (as on a local disk, mountpoint-s3 and s3fs), with the
    inode numbers of the directory and its parent, once each in a listing of many pages,
    and at the mount's root too."""
    mount, names = mount_with_big_folder(mount_factory, 3000)

    def listed(folder: Path) -> list[tuple[int, str]]:
        """`ls -a -i -f` (unsorted: as the directory gives them): (inode, name) each."""
        out = subprocess.run(
            ["ls", "-a", "-i", "-f", "-1", str(folder)], capture_output=True, text=True, check=True
        ).stdout
        return [(int(inode), name) for inode, name in (line.split() for line in out.splitlines())]

    big = listed(mount.path / "big")
    assert [name for _, name in big] == [".", "..", *names]
    assert big[0][0] == os.stat(mount.path / "big").st_ino
    assert big[1][0] == os.stat(mount.path).st_ino
    root = listed(mount.path)
    assert [name for _, name in root] == [".", "..", "big"]
    assert root[0][0] == os.stat(mount.path).st_ino  # `..` there: ls asks the host's
    assert sorted(os.listdir(mount.path / "big")) == names  # programs never see them twice


def test_a_directory_read_in_pages_keeps_to_one_listing_past_the_metadata_ttl(
    mount_factory: Callable[..., Mount],
) -> None:
    """The readdir pages after the first keep to the listing the first one took, even once
    the metadata TTL has passed: names added to the bucket meanwhile (sorting before all
    the others) make no name come twice. (A directory too large to page through within the
    TTL was listed again from the bucket for every page.)"""
    mount, names = mount_with_big_folder(mount_factory, 2000, metadata_ttl="0.1s")
    bucket = Path(mount.flags["local_root"]) / "big"
    with os.scandir(mount.path / "big") as entries:
        seen = [next(entries).name]  # the first page
        time.sleep(0.3)
        for index in range(50):
            (bucket / f"added-{index:02d}").write_bytes(b"")
        seen += [entry.name for entry in entries]
    assert seen == names
    later = os.listdir(mount.path / "big")  # a new listing, past the TTL, has them
    assert sorted(later) == sorted(names + [f"added-{index:02d}" for index in range(50)])


def test_a_directory_emptied_while_it_is_read_loses_every_entry(
    mount_factory: Callable[..., Mount],
) -> None:
    """`rm -rf` and `find -delete` read a directory and remove what each page gave before
    asking for the next: every file goes, each seen once. (The pages were positions in
    the listing the removals shrank: 1558 of 3000 went, the rest were never seen.)"""
    mount, names = mount_with_big_folder(mount_factory, 3000)
    seen = []
    with os.scandir(mount.path / "big") as entries:
        for entry in entries:
            seen.append(entry.name)
            os.unlink(entry.path)
    assert seen == names
    assert os.listdir(mount.path / "big") == []


def test_a_directory_listed_anew_under_a_read_of_it_skips_and_repeats_nothing(
    mount_factory: Callable[..., Mount],
) -> None:
    """A read of a directory part-way through when another writer removes names before
    where it is and adds others, and a lookup there past the metadata TTL lists it anew:
    the rest of the read gives every name neither removed nor added exactly once. (Its
    next page went on from its position in the new listing: 150 names were skipped.)"""
    mount, names = mount_with_big_folder(mount_factory, 3000, metadata_ttl="0.1s")
    bucket = Path(mount.flags["local_root"]) / "big"
    removed, added = set(names[:200]), {f"added-{index:02d}" for index in range(50)}
    with os.scandir(mount.path / "big") as entries:
        seen = [next(entries).name for _ in range(500)]
        for name in removed:
            (bucket / name).unlink()
        for name in added:
            (bucket / name).write_bytes(b"")
        time.sleep(0.3)
        assert os.stat(mount.path / "big" / names[-1]).st_size == 0  # lists it anew
        assert not os.path.exists(mount.path / "big" / names[0])
        seen += [entry.name for entry in entries]
    kept = [name for name in seen if name not in removed | added]
    assert kept == names[200:]


def test_concurrent_readers_and_writers(mounted: Mount) -> None:
    payload = {f"w{index}": os.urandom(2**20 + index) for index in range(8)}

    def write(name: str) -> None:
        (mounted.path / name).write_bytes(payload[name])

    def read(name: str) -> str:
        return hashlib.sha256((mounted.path / name).read_bytes()).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, payload))
        digests = list(pool.map(read, list(payload) * 4))
    expected = [hashlib.sha256(payload[name]).hexdigest() for name in list(payload) * 4]
    assert digests == expected


def test_changes_in_the_bucket_are_seen_at_the_next_open(mounted: Mount) -> None:
    cloud_put(mounted, "shared.txt", b"version one")
    assert (mounted.path / "shared.txt").read_bytes() == b"version one"
    cloud_put(mounted, "shared.txt", b"version two, longer")
    time.sleep(2.5)  # the metadata TTL (1 s) and the kernel's attribute TTL (1 s)
    assert (mounted.path / "shared.txt").read_bytes() == b"version two, longer"


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_a_file_found_changed_under_a_read_is_read_anew_at_its_next_open(
    provider: str, mount_factory: Callable[..., Mount]
) -> None:
    """A read that finds the object replaced in the bucket under its handle fails with
    ESTALE; the file stays listed and its next open reads the new bytes, even with an
    indefinite metadata TTL (a read-only dataset replaced all the same)."""
    mount = mount_factory(provider, chunk_size="1MiB", metadata_ttl="indefinite")
    old, new = os.urandom(9 * 2**20), os.urandom(9 * 2**20)
    cloud_put(mount, "data/file.bin", old)
    assert os.listdir(mount.path / "data") == ["file.bin"]  # the listing is cached
    fd = os.open(mount.path / "data/file.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 2**20 + 5) == old[2**20 + 5 : 2**20 + 4101]
        cloud_put(mount, "data/file.bin", new)
        with pytest.raises(OSError) as caught:
            os.pread(fd, 4096, 7 * 2**20 + 5)  # a chunk not read yet: from the cloud
        assert caught.value.errno == errno.ESTALE
    finally:
        os.close(fd)
    assert os.listdir(mount.path / "data") == ["file.bin"]
    assert hashlib.sha256((mount.path / "data/file.bin").read_bytes()).digest() == (
        hashlib.sha256(new).digest()
    )


def test_random_reads_return_the_right_bytes_and_never_mix_versions(
    mount_factory: Callable[..., Mount],
) -> None:
    """Concurrent small reads at random offsets of a multi-chunk file are exact, and pinned
    to the version seen at open."""
    mount = mount_factory("s3-seaweedfs", chunk_size="1MiB")
    body = os.urandom(9 * 2**20)
    cloud_put(mount, "random.bin", body)
    rng = random.Random(5)
    offsets = [rng.randrange(len(body) - 4096) for _ in range(400)]
    fd = os.open(mount.path / "random.bin", os.O_RDONLY)
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda at: os.pread(fd, 4096, at), offsets))
        assert got == [body[at : at + 4096] for at in offsets]
    finally:
        os.close(fd)

    cloud_put(mount, "fresh.bin", body)
    fd = os.open(mount.path / "fresh.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 2**20 + 5) == body[2**20 + 5 : 2**20 + 4101]
        cloud_put(mount, "fresh.bin", body[::-1])
        with pytest.raises(OSError) as caught:
            os.pread(fd, 4096, 7 * 2**20 + 5)  # a chunk not read yet: from the cloud
        assert caught.value.errno == errno.ESTALE
    finally:
        os.close(fd)


def test_a_file_removed_at_once_after_it_was_written_still_reads(mounted: Mount) -> None:
    """Its chunks go to tier 1 behind the close that uploaded them: removing the object
    waits for them, or the open handle would find neither tier 1 nor the cloud."""
    written = os.urandom(64 * 2**20)
    (mounted.path / "big.bin").write_bytes(written)
    with open(mounted.path / "big.bin", "rb", buffering=0) as held:
        os.unlink(mounted.path / "big.bin")
        evict(held.fileno(), len(written))
        assert held.read() == written
    assert cloud_bytes(mounted, "big.bin") is None

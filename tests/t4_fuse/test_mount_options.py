"""Mount options users of other bucket mounts reach for: read-only, other users let in."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mounts import Mount, cloud_bytes, cloud_mkdir, cloud_put

NOBODY = 65534


def mount_options(mount: Mount) -> set[str]:
    target = os.path.realpath(mount.path)
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == target:
                return set(fields[3].split(","))
    raise AssertionError(f"{target} is not mounted")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "new.txt").write_bytes(b"x"),
        lambda r: (r / "data/a.txt").write_bytes(b"x"),
        lambda r: open(r / "data/a.txt", "ab").close(),
        lambda r: os.truncate(r / "data/a.txt", 0),
        lambda r: os.unlink(r / "data/a.txt"),
        lambda r: os.rename(r / "data/a.txt", r / "data/b.txt"),
        lambda r: os.mkdir(r / "dir"),
        lambda r: os.rmdir(r / "data/empty"),
        lambda r: os.chmod(r / "data/a.txt", 0o600),
        lambda r: os.utime(r / "data/a.txt", (0, 0)),
        lambda r: os.symlink("a.txt", r / "data/link"),
    ],
)
def test_a_read_only_mount_reads_and_refuses_every_change(
    mount_factory: Callable[..., Mount], change: Callable[[Path], object]
) -> None:
    mount = mount_factory("local", start=False)
    cloud_put(mount, "data/a.txt", b"hello\n")
    cloud_mkdir(mount, "data/empty")
    mount.flags["read_only"] = "true"
    mount.start()
    assert "ro" in mount_options(mount)
    with pytest.raises(OSError) as refused:
        change(mount.path)
    assert refused.value.errno == errno.EROFS
    assert (mount.path / "data/a.txt").read_bytes() == b"hello\n"
    assert sorted(os.listdir(mount.path / "data")) == ["a.txt", "empty"]
    assert cloud_bytes(mount, "data/a.txt") == b"hello\n"
    assert cloud_bytes(mount, "new.txt") is None


def as_nobody(mount: Mount, tool: str, name: str) -> subprocess.CompletedProcess[str]:
    """Run `tool` on the mount's file `name` as user nobody. The path goes through the
    mount's root opened here (/proc/self/fd/N): the test's folders above the mount point
    are closed to other users."""
    root = os.open(mount.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return subprocess.run(
            [tool, f"/proc/self/fd/{root}/{name}"],
            pass_fds=[root],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.close(root)


@pytest.mark.parametrize("allow_other", [False, True])
def test_other_users_come_in_with_allow_other_and_the_mode_bits_hold(
    mount_factory: Callable[..., Mount], allow_other: bool
) -> None:
    mount = mount_factory("local", allow_other=str(allow_other).lower())
    (mount.path / "a.txt").write_bytes(b"hello\n")
    assert ("allow_other" in mount_options(mount)) == allow_other
    read = as_nobody(mount, "cat", "a.txt")
    write = as_nobody(mount, "touch", "theirs.txt")
    if allow_other:
        assert read.returncode == 0 and read.stdout == "hello\n"
    else:
        assert read.returncode != 0 and "Permission denied" in read.stderr
    # The root folder is the mounting user's, 0755: nobody may read, not write.
    assert write.returncode != 0 and "Permission denied" in write.stderr
    assert sorted(os.listdir(mount.path)) == ["a.txt"]

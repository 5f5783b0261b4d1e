"""The mount lifecycle: check the mount point, serve FUSE requests, unmount cleanly."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import shutil
import subprocess
from functools import partial
from pathlib import Path
from urllib.parse import quote, unquote

import pyfuse3
import pyfuse3.asyncio

from tierfs.errors import TierfsError
from tierfs.fuse.operations import Operations
from tierfs.stop_signals import stop_on_signals

log = logging.getLogger(__name__)

FUSE_DEVICE = Path("/dev/fuse")


class MountError(TierfsError):
    """The filesystem cannot be mounted here; the message says why in one line."""


# The mount's name (`mount`, `df`, /proc/mounts) ends with the URL of its node's peer API,
# which is how `tierfs warm PATH` finds the node to ask: "tierfs:s3://bucket?node=http://
# 127.0.0.1:8081". The name is the kernel's, and lasts exactly as long as the mount.
_NODE_MARK = "?node="


def mount_name(store_url: str, node_url: str) -> str:
    """The name of a mount of `store_url` served by the node at `node_url`, percent-encoded:
    pyfuse3 passes the options as ASCII, and a comma would split them. `?` is encoded in
    the store's part, so the first `?node=` is the mark."""
    return quote(f"tierfs:{store_url}", safe="/:") + _NODE_MARK + quote(node_url, safe="/:[]")


def node_of(name: str) -> str | None:
    """The URL of the node's peer API a mount's `name` holds (see `mount_name`); None for
    another filesystem's, or a mount by a tierfs before 2026-12-06."""
    if not name.startswith("tierfs:") or _NODE_MARK not in name:
        return None
    return unquote(name.split(_NODE_MARK, 1)[1])


def prepare_mountpoint(mountpoint: Path, allow_non_empty: bool = False) -> None:
    """Raise MountError unless `mountpoint` is an empty directory we can mount on (or, with
    `allow_non_empty`, one whose files the mount would hide, as `-o nonempty` did in FUSE 2).

    A stale mount left by a crashed tierfs ("Transport endpoint is not connected") is
    unmounted first, and the directory under it is what is checked. It is found by
    `statfs`, which the kernel always asks the filesystem: for a second after a crash,
    `stat` may still be answered from cached attributes.
    """
    if not FUSE_DEVICE.exists():
        raise MountError(f"{FUSE_DEVICE} is missing: this machine cannot mount FUSE filesystems")
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is not installed (Debian: apt-get install fuse3)")
    try:
        os.statvfs(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist") from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
        log.warning("%s: cleaning up a stale mount left by a crash", mountpoint)
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mount point {mountpoint} is busy: something is mounted there")
    if allow_non_empty:
        return
    try:
        with os.scandir(mountpoint) as entries:
            held = next(entries, None) is not None
    except OSError as exc:
        raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    if held:
        raise MountError(
            f"mount point {mountpoint} is not empty: its files would be hidden while it is "
            "mounted (-allow-non-empty mounts over them)"
        )


# The kernel asks a FUSE filesystem for read-ahead in requests of at most read_ahead_kb;
# the default 128 KiB means ~100 us of Python per 128 KiB. 4 MiB (one chunk) doubled warm
# sequential reads here (1 MiB requests, half the CPU per GiB).
READ_AHEAD_KB = 4096
# Read-ahead requests are "background" ones, of which the kernel sends 12 at once by default
# (pyfuse3 cannot ask for more in FUSE INIT): 16 threads of random 4 KiB reads had 12 in
# flight. The fusectl knobs raise the limit; congestion starts at 3/4 of it, as by default.
MAX_BACKGROUND = 64
FUSECTL = Path("/sys/fs/fuse/connections")


def tune_kernel(mountpoint: Path) -> None:
    """Best effort: raise the mount's read-ahead and its background requests; needs root,
    logs when refused. Mounts fusectl first where nobody has (systemd does at boot;
    containers and small VMs often do not).

    Nothing here may touch the mount itself (not even `realpath`): its requests would
    wait for this very loop.
    """
    target = os.path.abspath(mountpoint)
    if FUSECTL.is_dir() and not os.path.ismount(FUSECTL) and os.geteuid() == 0:
        mount = ["mount", "-t", "fusectl", "fusectl", str(FUSECTL)]
        done = subprocess.run(mount, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log.info("cannot mount fusectl on %s: %s", FUSECTL, done.stderr.strip())
    try:
        with open("/proc/self/mountinfo") as mounts:
            device = next(line.split()[2] for line in mounts if line.split()[4] == target)
    except (OSError, StopIteration) as exc:
        log.info("%s: kernel settings left at their defaults (%s)", mountpoint, exc)
        return
    settings = {
        Path(f"/sys/class/bdi/{device}/read_ahead_kb"): READ_AHEAD_KB,
        FUSECTL / device.split(":")[1] / "max_background": MAX_BACKGROUND,
        FUSECTL / device.split(":")[1] / "congestion_threshold": MAX_BACKGROUND * 3 // 4,
    }
    for path, value in settings.items():
        try:
            path.write_text(f"{value}\n")
        except OSError as exc:
            log.info("%s: %s left at the kernel default (%s)", mountpoint, path.name, exc)


_pyfuse3_wait_readable = pyfuse3.asyncio.wait_readable


async def _wait_for_request(fd: pyfuse3.FileHandleT) -> None:
    """pyfuse3's wait for the next request on /dev/fuse (its asyncio layer's `wait_readable`),
    at once when one is queued already.

    pyfuse3 registers the device with the loop for each request and removes it once it
    fired: two `epoll_ctl`s, a future and a turn of the loop per request. While requests
    queue up (a busy mount), the next one is there already: a zero-timeout poll finds it,
    and one `sleep(0)` still lets the rest of the loop run. Only the pyfuse3 worker holding
    its read lock waits, so a request found this way is the one that worker reads next.
    Warm small files through the mount: 3,040-5,748 to 4,719-9,310 files/s (7 pairs).
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(0):
        await asyncio.sleep(0)
        return
    await _pyfuse3_wait_readable(fd)


async def serve(
    ops: Operations,
    mountpoint: Path,
    fsname: str,
    node_url: str,
    *,
    read_only: bool = False,
    allow_other: bool = False,
) -> None:
    """Mount, answer the kernel until SIGINT/SIGTERM or an outside unmount, then unmount.

    `fsname` (the store's URL) names the mount in `mount` and `df`, percent-encoded
    (`données` is `donn%C3%A9es`), followed by `node_url` (`mount_name`). Dirty files are
    uploaded (`ops.fs.close()`) before the mount goes away. `read_only` mounts it so (the
    kernel answers every change EROFS); `allow_other` lets other users in, and the kernel
    checks the mode bits for them (`default_permissions`).
    """
    pyfuse3.asyncio.enable()
    pyfuse3.asyncio.wait_readable = _wait_for_request
    options = set(pyfuse3.default_options) | {f"fsname={mount_name(fsname, node_url)}"}
    options |= {"subtype=tierfs"}
    options |= {"ro"} if read_only else set()
    options |= {"allow_other"} if allow_other else set()
    pyfuse3.init(ops, str(mountpoint), options)
    stop = asyncio.Event()
    # The kernel sets these from the answer to FUSE INIT: raise them right after it, before
    # any other request is answered. A file opened earlier would keep the 128 KiB read-ahead
    # (the cold read of bench/fuse.py did, 8 times as many requests).
    ops.on_init = partial(tune_kernel, mountpoint)
    fuse_task = asyncio.create_task(pyfuse3.main(), name="fuse")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    log.info("mounted %s at %s", fsname, mountpoint)
    unmounted_outside = False
    try:
        with stop_on_signals(stop):
            await asyncio.wait({fuse_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            unmounted_outside = fuse_task.done()
            await ops.fs.close()
    finally:
        stop_task.cancel()
        if not fuse_task.done():
            pyfuse3.terminate()
            await fuse_task
        pyfuse3.close(unmount=not unmounted_outside)
        log.info("unmounted %s", mountpoint)
    fuse_task.result()  # an error of the FUSE loop itself surfaces here

"""The pyfuse3 adapter: kernel requests in, `Filesystem` calls, and the one errno boundary.

pyfuse3 answers the kernel only for FUSEError; in asyncio mode any other exception
vanishes and the request hangs (pyfuse3 issue #93). So every handler goes through
`_errno`: domain errors map to their errno, anything else is logged and becomes EIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from tierfs import errors
from tierfs.fs.filesystem import Filesystem
from tierfs.fs.nodes import Node

log = logging.getLogger(__name__)

Ctx = pyfuse3.RequestContext
Token = pyfuse3.ReaddirToken
P = ParamSpec("P")
T = TypeVar("T")

# An EIO whose line was logged this many seconds ago is not logged again: the kernel sends
# a page fault's or a buffered read's requests several at once, they share one failed
# fetch, and it asks again (six lines for one read of a file with the bucket down).
SAID_LATELY = 10.0

ERRNO: list[tuple[type[Exception], int]] = [
    (errors.EntryNotFoundError, errno.ENOENT),
    (errors.ObjectNotFoundError, errno.ENOENT),
    (errors.EntryExistsError, errno.EEXIST),
    (errors.IsDirectoryError, errno.EISDIR),
    (errors.NotDirectoryError, errno.ENOTDIR),
    (errors.DirectoryNotEmptyError, errno.ENOTEMPTY),
    (errors.NameTooLongError, errno.ENAMETOOLONG),
    (errors.InvalidArgumentError, errno.EINVAL),
    (errors.StaleHandleError, errno.ESTALE),
    (errors.VersionChangedError, errno.ESTALE),
    (errors.UnsupportedError, errno.ENOTSUP),
    (errors.BusyError, errno.EBUSY),
    (errors.KeyTooLongError, errno.ENAMETOOLONG),
    (errors.InvalidKeyError, errno.EINVAL),
    (errors.AccessDeniedError, errno.EACCES),
    (errors.CloudError, errno.EIO),
]
# What the staging disk may answer that a program should see as is (not as EIO).
LOCAL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Attributes and entries: the kernel may keep them this long (or -metadata-ttl if shorter);
# tierfs revalidates at open.
KERNEL_TTL = 1.0
BLOCK = 512
DOTS = (b".", b"..")  # the first entries of every directory listing


def _name(raw: bytes) -> str:
    """A name the kernel gave, as a key's segment: object keys are UTF-8, so a name that is
    not cannot name anything in the bucket (EINVAL)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise errors.InvalidArgumentError(f"{raw!r} is not UTF-8, as object keys are") from None


def _errno(
    handler: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            for kind, number in ERRNO:
                if isinstance(exc, kind):
                    if number == errno.EIO:
                        _say_eio(f"{handler.__name__}: {exc}")
                    raise pyfuse3.FUSEError(number) from exc
            if isinstance(exc, OSError) and exc.errno in LOCAL_DISK_ERRNOS:
                log.warning("%s: %s", handler.__name__, exc)  # the staging disk's answer
                raise pyfuse3.FUSEError(exc.errno) from exc
            log.exception("%s failed unexpectedly", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    return wrapper


_said: dict[str, float] = {}  # EIO lines, by when they were logged (monotonic)


def _say_eio(line: str) -> None:
    """Log `line` as an ERROR unless it was logged within SAID_LATELY."""
    now = time.monotonic()
    if now - _said.get(line, -SAID_LATELY) < SAID_LATELY:
        return
    for stale in [said for said, when in _said.items() if now - when >= SAID_LATELY]:
        del _said[stale]
    _said[line] = now
    log.error("%s", line)


class Operations(pyfuse3.Operations):
    """Kernel requests for one mounted bucket."""

    enable_writeback_cache = False

    def __init__(
        self, fs: Filesystem, kernel_ttl: float = KERNEL_TTL, direct_io: bool = False
    ) -> None:
        super().__init__()
        self.fs = fs
        self.kernel_ttl = kernel_ttl
        self.direct_io = direct_io  # every file opened around the page cache
        self.on_init: Callable[[], object] | None = None  # once the kernel is answered

    def init(self) -> None:
        # pyfuse3 answers FUSE INIT as soon as this returns; the kernel applies that answer
        # within the write, so whatever runs on the loop next sees the mount set up.
        if self.on_init is not None:
            asyncio.get_running_loop().call_soon(self.on_init)

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        owner = self.fs.ownership
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(node.inode)
        default = owner.dir_mode if node.is_dir else owner.file_mode
        mode = default if node.mode is None else node.mode  # 0 is a mode too
        if node.is_dir:
            attr.st_mode = pyfuse3.ModeT(stat.S_IFDIR | mode)
            attr.st_nlink = 2
        elif node.is_link:
            attr.st_mode = pyfuse3.ModeT(stat.S_IFLNK | 0o777)  # a link's own bits mean nothing
            attr.st_nlink = 1
            attr.st_size = node.size  # the target's length
        else:
            attr.st_mode = pyfuse3.ModeT(stat.S_IFREG | mode)
            attr.st_nlink = 1
            attr.st_size = node.size
        attr.st_uid, attr.st_gid = owner.uid, owner.gid
        attr.st_blksize = 128 * 1024
        attr.st_blocks = (attr.st_size + BLOCK - 1) // BLOCK
        attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        attr.st_atime_ns = node.mtime_ns if node.atime_ns is None else node.atime_ns
        attr.entry_timeout = attr.attr_timeout = self.kernel_ttl
        return attr

    @_errno
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: Ctx
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.lookup(parent_inode, _name(name))
        node.lookups += 1
        return self._attr(node)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            self.fs.inodes.forget(inode, count)

    @_errno
    async def getattr(self, inode: pyfuse3.InodeT, ctx: Ctx) -> pyfuse3.EntryAttributes:
        return self._attr(await self.fs.getattr(inode))

    @_errno
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: Ctx,
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            fh=fh,
        )
        return self._attr(node)

    @_errno
    async def opendir(self, inode: pyfuse3.InodeT, ctx: Ctx) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(await self.fs.opendir(inode))

    @_errno
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: Token) -> None:
        # start_id is the position of the next entry: `.` and `..` (which take no lookup),
        # then the entries as the handle's first page took them (`Filesystem.listdir`): a
        # name added or removed between pages never makes another skip or come twice.
        dots = self.fs.dot_entries(fh)
        for index in range(start_id, len(dots)):
            if not pyfuse3.readdir_reply(token, DOTS[index], self._attr(dots[index]), index + 1):
                return
        start = max(start_id, len(dots))
        listed = await self.fs.listdir(fh, start - len(dots))
        for index, node, _ in listed:
            name = os.fsencode(node.path.rpartition("/")[2])
            if not pyfuse3.readdir_reply(token, name, self._attr(node), len(dots) + index + 1):
                self.fs.inodes.forget(node.inode, 0)
                return
            node.lookups += 1

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.fs.releasedir(fh)

    @_errno
    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, ctx: Ctx
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.mkdir(parent_inode, _name(name), stat.S_IMODE(mode))
        node.lookups += 1
        return self._attr(node)

    @_errno
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: Ctx) -> None:
        await self.fs.rmdir(parent_inode, _name(name))

    @_errno
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: Ctx) -> None:
        await self.fs.unlink(parent_inode, _name(name))

    @_errno
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: bytes,
        parent_inode_new: pyfuse3.InodeT,
        name_new: bytes,
        flags: int,
        ctx: Ctx,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise errors.UnsupportedError("rename with RENAME_EXCHANGE")
        old, new = _name(name_old), _name(name_new)
        if flags & pyfuse3.RENAME_NOREPLACE and await self.fs.exists(parent_inode_new, new):
            raise errors.EntryExistsError(new)
        await self.fs.rename(parent_inode_old, old, parent_inode_new, new)

    @_errno
    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: Ctx) -> pyfuse3.FileInfo:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        handle, keep_cache = await self.fs.open(
            inode, writable=writable, truncate=bool(flags & os.O_TRUNC)
        )
        if not keep_cache:
            # Another version than the last open's: the kernel may still hold the old one's
            # size from an answer given before (or applied after) the one that told the new,
            # and would cut the new bytes to it.
            with contextlib.suppress(FileNotFoundError):  # the kernel forgot the file
                pyfuse3.invalidate_inode(inode, attr_only=True)
        return pyfuse3.FileInfo(
            fh=pyfuse3.FileHandleT(handle.fh), keep_cache=keep_cache, direct_io=self.direct_io
        )

    @_errno
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        mode: int,
        flags: int,
        ctx: Ctx,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        handle = await self.fs.create(parent_inode, _name(name), stat.S_IMODE(mode))
        node = handle.file.node
        node.lookups += 1
        info = pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(handle.fh), direct_io=self.direct_io)
        return info, self._attr(node)

    @_errno
    async def read(  # type: ignore[override]  # pyfuse3 replies with any buffer
        self, fh: pyfuse3.FileHandleT, off: int, size: int
    ) -> bytes | memoryview:
        return await self.fs.read(fh, off, size)

    @_errno
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @_errno
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        await self.fs.flush(fh)

    @_errno
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @_errno
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        await self.fs.release(fh)

    @_errno
    async def statfs(self, ctx: Ctx) -> pyfuse3.StatvfsData:
        # Object stores have no capacity to speak of: report a large, mostly free disk
        # so that tools which check free space before copying go ahead.
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = data.f_bfree = data.f_bavail = 2**40 // 4096 * 1024  # 1 PiB
        data.f_files = data.f_ffree = data.f_favail = 2**32
        data.f_namemax = self.fs.cloud.name_max
        return data

    async def link(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_errno
    async def symlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes, ctx: Ctx
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.symlink(parent_inode, _name(name), target)
        node.lookups += 1
        return self._attr(node)

    @_errno
    async def readlink(self, inode: pyfuse3.InodeT, ctx: Ctx) -> bytes:
        return await self.fs.readlink(inode)

    async def mknod(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

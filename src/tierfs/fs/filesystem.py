"""The filesystem core: POSIX operations on inodes over the tiers, no FUSE in sight.

Methods raise the domain errors of `tierfs.errors`; the FUSE adapter maps them to errno.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from tierfs.cache.files import DISK_FULL_ERRNOS, pwrite_all
from tierfs.chunks import ChunkRef, Data, ObjectRef, chunks_covering
from tierfs.cloud.base import CloudStore, ObjectMeta, split_markers
from tierfs.errors import (
    BusyError,
    CloudError,
    CloudUnavailableError,
    DirectoryNotEmptyError,
    EntryExistsError,
    EntryNotFoundError,
    FolderAtKeyError,
    InvalidArgumentError,
    InvalidKeyError,
    IsDirectoryError,
    NameTooLongError,
    NotDirectoryError,
    ObjectNotFoundError,
    RemovedMeanwhileError,
    StaleHandleError,
    UnnamableKeyError,
    UnsupportedError,
    VersionChangedError,
)
from tierfs.fs.early_upload import EarlyUpload
from tierfs.fs.handles import DirHandle, Handle, OpenFile, Staging, pread_and_close, remove
from tierfs.fs.metadata import LINK_SUFFIX, Entry, Namespace, file_entry, object_key
from tierfs.fs.nodes import InodeTable, Node, join, split
from tierfs.fs.path_locks import PathLocks, is_under
from tierfs.fs.streaming import StreamingUpload
from tierfs.read_path import ReadPath
from tierfs.upload import PendingUpload, Uploader

T = TypeVar("T")
log = logging.getLogger(__name__)

COPY_PIECE = 8 * 2**20  # filling a staging file from the tiers, one piece at a time
RENAME_PARALLELISM = 16  # cloud copies (or deletes) in flight for a directory rename
COPY_ROUNDS = 3  # of copying again what a directory rename's store lost (`_copy_lost_again`)
UNMOUNT_PARALLELISM = 4  # uploads in flight at unmount (up to 64 MiB of parts each)
RETRY_INTERVAL = 5.0  # seconds between tries of uploads that failed at close


@dataclass(frozen=True)
class Ownership:
    """What `stat` shows: owner and permission bits (object stores keep neither)."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


class PageCache(Protocol):
    """The kernel's page cache of the mount's files, where tierfs puts the chunks that
    random reads want (`tierfs.fuse.page_cache`)."""

    def has_room(self, size: int) -> bool:
        """Whether an offer of `size` bytes would be taken now."""
        ...

    def offer(self, inode: int, offset: int, data: Data, busy: tuple[int, int]) -> bool:
        """Start putting `data` at `offset` of file `inode`, but for `data[busy[0]:busy[1]]`;
        False when it is not taken."""
        ...

    async def settle(self, inode: int) -> None:
        """Return once no store into the page cache of `inode` is under way."""
        ...

    async def close(self) -> None: ...


class Filesystem:
    """One mounted bucket."""

    def __init__(
        self,
        cloud: CloudStore,
        read_path: ReadPath,
        uploader: Uploader,
        staging: Staging,
        *,
        metadata_ttl: float,
        ownership: Ownership,
        page_cache: PageCache | None = None,
    ) -> None:
        self.cloud = cloud
        self.read_path = read_path
        self.uploader = uploader
        self.staging = staging
        self.ownership = ownership
        self.page_cache = page_cache
        self._page_fills: set[asyncio.Task[None]] = set()  # chunks put there from tier 1
        # The version each inode had at its last open, while the table keeps the inode:
        # keep_cache only for that one (a node the kernel forgot and the table kept has
        # no pages in it then: keeping none is harmless).
        self._last_versions: dict[int, str] = {}
        self.inodes = InodeTable(on_drop=lambda inode: self._last_versions.pop(inode, None))
        self.names = Namespace(cloud, metadata_ttl)
        self.path_locks = PathLocks()
        self._open: dict[int, OpenFile] = {}  # by inode
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._retries: asyncio.Task[None] | None = None
        # The files being streamed that `close` could not finish: their bytes are lost.
        self.lost_streams: list[str] = []

    # -- names ------------------------------------------------------------------------

    def _child_path(self, parent: Node, name: str) -> str:
        """The path of `name` in `parent`: NameTooLongError past the store's `name_max`,
        KeyTooLongError where its key (a `-prefix` before it) would pass 1024 bytes."""
        if not parent.is_dir:
            raise NotDirectoryError(f"{parent.path!r} is not a directory")
        if len(name.encode()) > self.cloud.name_max:
            raise NameTooLongError(f"name of {len(name.encode())} bytes")
        return self.cloud.check_length(join(parent.path, name))

    def _new_child_path(self, parent: Node, name: str) -> str:
        """The path of a name to be made: one the store can hold (InvalidKeyError, EINVAL,
        or KeyTooLongError, ENAMETOOLONG, before anything is written, not EIO at close),
        and not a link's key (InvalidArgumentError)."""
        if name.endswith(LINK_SUFFIX):
            raise InvalidArgumentError(f"names ending in {LINK_SUFFIX!r} are tierfs's links")
        return self.cloud.check_key(self._child_path(parent, name))

    def _changing(
        self, parent_inode: int, name: str
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Change `name` in the directory, alone at and below its path (`PathLocks`)."""
        parent = self.inodes.get(parent_inode)
        return self.path_locks.changing(lambda: (join(parent.path, name),))

    def _changed_in(self, path: str) -> None:
        """The entry at `path` was made, removed or moved here: its directory's time is now,
        as on a local disk (Python's imports list a folder again only when it changes)."""
        parent = self.inodes.find(split(path)[0])
        if parent is not None:
            parent.mtime_ns = time.time_ns()

    def _apply(self, node: Node, entry: Entry) -> Node:
        if not entry.is_dir and self._open.get(node.inode) is None:
            if node.version != entry.version:
                node.target = None
                self._forget_version(node)
            node.size, node.version = entry.size, entry.version
            if node.mtime_set_for != entry.version:  # a time set here outlives the TTL
                node.mtime_ns, node.mtime_set_for, node.atime_ns = entry.mtime_ns, None, None
        return node

    def _forget_version(self, node: Node) -> None:
        """The bucket has the file `node` (open nowhere here) at another version than the
        one this mount knew, or not at all: another node or tool replaced or removed it.
        Tier 1's chunks of that version go, as a change made here drops them: nobody
        reads them from here again, and left to the LRU they push out live ones."""
        if node.version and not (node.is_dir or node.is_link or node.inode in self._open):
            self.uploader.drop_cached(node.path, node.version)

    async def lookup(self, parent_inode: int, name: str) -> Node:
        """The node of `name` in the directory; EntryNotFoundError if none. A lookup of a
        name being changed (a rename over it) waits for the change: the kernel's second
        try of an open for writing that met one (ESTALE) must find the file the rename
        put there, not the one it replaced."""
        parent = self.inodes.get(parent_inode)
        async with self.path_locks.working(lambda: join(parent.path, name)):
            await self._let_go_if_changed(self._child_path(parent, name))
            path, entry = await self._existing(parent_inode, name)
            return self._apply(self.inodes.ensure(path, entry.is_dir, entry.is_link), entry)

    async def _let_go_if_changed(self, path: str) -> None:
        """`_let_go` of the file open here at `path` if the bucket (asked once the TTL
        has passed) has it at another version; what this mount knows of it stands where
        the bucket cannot say."""
        file = self._open_file_at(path)
        if file is None or not self._reads_alone(file):
            return
        node = file.node
        known = Entry(split(path)[1], False, node.size, node.mtime_ns, node.version)
        try:
            entry = await self.names.stat(path, lambda: known)
        except (CloudError, InvalidKeyError):
            return
        self._let_go(file, entry)

    def _reads_alone(self, file: OpenFile) -> bool:
        """Whether `file` is open here for reading alone, at a version of the bucket."""
        written = file.writers or file.dirty or file.fd is not None or file.stream is not None
        return not written and not file.unlinked and bool(file.node.version)

    def _let_go(self, file: OpenFile, entry: Entry | None) -> None:
        """A file open here for reading alone (a map a process keeps) whose object the
        bucket has at another version (`entry`: another node rewrote it) or no more
        (None) leaves the namespace, as a file replaced by a rename or removed does: the
        lookup or listing gives its name a new inode, whose opens read the new version
        (or ENOENT), while the handles open read on the one they opened (tier 1, then
        ESTALE), their pages apart in the kernel. Before 2026-12-07 every open of it here
        kept to the old version, its size and ESTALE, until its last handle closed."""
        if entry is not None and (
            entry.is_dir or entry.is_link or entry.version == file.node.version
        ):
            return
        if not self._reads_alone(file):
            return
        path = file.node.path
        file.unlinked_from = path
        if entry is None:
            self.inodes.remove(path)
        else:
            self.inodes.replace(path)

    async def _existing(self, parent_inode: int, name: str) -> tuple[str, Entry]:
        """The path and entry of `name` in the directory; EntryNotFoundError if none (the
        tier-1 chunks of a file this mount knew there go: `_forget_version`)."""
        path = self._child_path(self.inodes.get(parent_inode), name)
        entry = await self._stat(path)
        if entry is None:
            if (gone := self.inodes.find(path)) is not None:
                self._forget_version(gone)
            raise EntryNotFoundError(path)
        return path, entry

    async def exists(self, parent_inode: int, name: str) -> bool:
        return await self._stat(self._child_path(self.inodes.get(parent_inode), name)) is not None

    async def _stat(self, path: str) -> Entry | None:
        if path.endswith(LINK_SUFFIX):
            return None  # a link's object, shown under the link's name
        node = self.inodes.find(path)
        if node is not None and node.inode in self._open:
            return Entry(split(path)[1], False, node.size, node.mtime_ns, node.version)
        parent, name = split(path)
        known = partial(_named, name, partial(self._open_in, parent))
        try:
            return await self.names.stat(path, known)
        except InvalidKeyError:
            return None  # a name no store can hold ("a//b") exists nowhere

    async def getattr(self, inode: int) -> Node:
        """The node's attributes, revalidated; of a file replaced by a rename, those of
        the file now at its name, which its opens read (`open`)."""
        return await self._attributes(self.inodes.get(inode))

    async def _attributes(self, node: Node) -> Node:
        if node.inode in self._open or node.path == "":
            return node
        successor = node.opened_as or self.inodes.standing_for(node)
        if successor is not None:
            return await self._attributes(successor)
        entry = await self._stat(node.path)
        if entry is None or (entry.is_dir, entry.is_link) != (node.is_dir, node.is_link):
            self._forget_version(node)
            raise EntryNotFoundError(node.path)  # gone, or another kind of thing now
        return self._apply(node, entry)

    async def opendir(self, inode: int) -> int:
        """A handle for reading directory `inode` (`listdir`); `releasedir` drops it."""
        node = await self.getattr(inode)
        if not node.is_dir:
            raise NotDirectoryError(node.path)
        handle = self._next_fh
        self._next_fh += 1
        self._dirs[handle] = DirHandle(node)
        return handle

    def releasedir(self, handle: int) -> None:
        self._dirs.pop(handle, None)

    def _dir_handle(self, handle: int) -> DirHandle:
        opened = self._dirs.get(handle)
        if opened is None:
            raise StaleHandleError(f"directory handle {handle} is not open")
        return opened

    def dot_entries(self, handle: int) -> tuple[Node, Node]:
        """The nodes a listing names `.` and `..`: its directory and that one's parent (the
        root's own at the top; the directory itself if the kernel forgot its parent)."""
        directory = self._dir_handle(handle).node
        parent = self.inodes.find(split(directory.path)[0]) if directory.path else directory
        return directory, parent or directory

    async def listdir(self, handle: int, start: int = 0) -> Iterator[tuple[int, Node, Entry]]:
        """The directory's entries sorted by name, from the `start`-th on, each with its
        position and its node (made if new) as it is taken: a readdir that stops when its
        buffer is full makes no nodes past it (a page of a 10,000-entry directory made them
        all).

        The positions are those of the entries as the handle's first page (`start` 0, or a
        rewind) took them (`Snapshot`), kept by its later pages whatever the directory does
        meanwhile and even past the metadata TTL: a page after the first never skips or
        repeats a name that was there all along. An entry removed since is left out, the
        others come as they are now; a name added since shows in the next read. (A
        directory too large to page through within the TTL was listed again from the
        bucket for every page: 50,000 entries took minutes.)"""
        opened = self._dir_handle(handle)
        path = opened.node.path
        unsaved = self._unsaved(path)
        if start == 0 or opened.taken is None:
            known = partial(self._open_in, path)
            opened.taken = await self.names.snapshot(path, unsaved, known)
            taken: Iterable[tuple[int, Entry]] = enumerate(opened.taken.entries_from(start), start)
        else:
            taken = self.names.as_now(
                path, enumerate(opened.taken.entries_from(start), start), unsaved
            )
        return self._with_nodes(path, taken)

    def _unsaved(self, path: str) -> list[Entry]:
        """The files created here in directory `path` that are open and not in the bucket
        yet (being written)."""
        return [
            Entry(split(file.node.path)[1], False, file.node.size, file.node.mtime_ns, "")
            for file in self._open.values()
            if not file.node.version and not file.unlinked and split(file.node.path)[0] == path
        ]

    def _open_in(self, path: str) -> list[Entry]:
        """The entries of directory `path` that the files open here stand for, when the
        bucket cannot say (a fresh mount offline, with the files a previous run left unsent
        taken over): those in it, and the folders holding those deeper down."""
        entries: dict[str, Entry] = {}
        prefix = path + "/" if path else ""
        for file in self._open.values():
            node = file.node
            if file.unlinked or not node.path.startswith(prefix):
                continue
            name, slash, _ = node.path[len(prefix) :].partition("/")
            if slash:
                entries[name] = Entry(name, True)
            else:
                entries.setdefault(name, Entry(name, False, node.size, node.mtime_ns, node.version))
        return list(entries.values())

    async def _entries(self, path: str) -> Iterator[Entry]:
        """The entries of directory `path` (`Namespace.listdir`), with the files created
        here that are open and not in the bucket yet (being written)."""
        return await self.names.listdir(path, self._unsaved(path), partial(self._open_in, path))

    async def _is_empty(self, path: str) -> bool:
        """No entry in directory `path`, or only bucket prefixes with no key below them any
        more (SeaweedFS lists an emptied prefix for minutes: `rm -rf` said ENOTEMPTY), and
        no key left out of its listing (`CloudStore.named_only`)."""
        prefixes = False
        for entry in await self._entries(path):
            if not entry.is_dir:
                return False
            prefixes = True
        if self.names.hides_keys(path):
            return False
        return not prefixes or not await self.cloud.has_keys_below(path, marker_too=False)

    def _with_nodes(
        self, parent: str, entries: Iterable[tuple[int, Entry]]
    ) -> Iterator[tuple[int, Node, Entry]]:
        for index, entry in entries:
            path = join(parent, entry.name)
            if self._open and (opened := self._open_file_at(path)) is not None:
                self._let_go(opened, entry)  # no lookup per entry while nothing is open
            child = self.inodes.ensure(path, entry.is_dir, entry.is_link)
            yield index, self._apply(child, entry), entry

    async def mkdir(self, parent_inode: int, name: str, mode: int | None = None) -> Node:
        """A new directory; `mode` (None: the mount's default) holds on this mount, as a
        chmod does."""
        async with self._changing(parent_inode, name):
            path = self._new_child_path(self.inodes.get(parent_inode), name)
            self.cloud.check_folder(path)
            if await self._stat(path) is not None:
                raise EntryExistsError(path)
            await self.cloud.put_marker(path)
            self.names.made_dir(path)
            node = self.inodes.ensure(path, is_dir=True)
            node.mtime_ns, node.mode = time.time_ns(), mode
            self._changed_in(path)
            return node

    async def symlink(self, parent_inode: int, name: str, target: bytes) -> Node:
        """A new symbolic link to `target`, in the bucket when this returns."""
        async with self._changing(parent_inode, name):
            path = self._new_child_path(self.inodes.get(parent_inode), name)
            if len((name + LINK_SUFFIX).encode()) > self.cloud.name_max:
                raise NameTooLongError(f"a link's name of {len(name.encode())} bytes")
            self.cloud.check_key(path + LINK_SUFFIX)  # its object's key, before any request
            if await self._stat(path) is not None:
                raise EntryExistsError(path)
            entry = file_entry(await self.cloud.put(path + LINK_SUFFIX, target))
            self.names.note(path, entry)
            node = self._apply(self.inodes.ensure(path, is_dir=False, is_link=True), entry)
            node.target = target
            self._changed_in(path)
            return node

    async def readlink(self, inode: int) -> bytes:
        node = self.inodes.get(inode)
        if not node.is_link:
            raise InvalidArgumentError(f"{node.path!r} is not a symbolic link")
        if node.target is None:
            key = node.path + LINK_SUFFIX
            node.target = bytes(await self.cloud.get_range(key, 0, node.size, node.version))
        return node.target

    async def rmdir(self, parent_inode: int, name: str) -> None:
        async with self._changing(parent_inode, name):
            path, entry = await self._existing(parent_inode, name)
            if not entry.is_dir:
                raise NotDirectoryError(path)
            if not await self._is_empty(path):
                raise DirectoryNotEmptyError(path)
            await self.cloud.delete_marker(path)
            self.names.removed_dir(path)
            self.names.note(path, None)
            self.inodes.remove(path)
            self._changed_in(path)

    async def unlink(self, parent_inode: int, name: str) -> None:
        async with self._changing(parent_inode, name):
            path, entry = await self._existing(parent_inode, name)
            if entry.is_dir:
                raise IsDirectoryError(path)
            await self._keep_for_open_handles(path)
            # Its upload (a failed close's retry) waits: it would put the object back.
            opened = self._open_file_at(path)
            async with _locked(opened):
                if entry.version:  # "" is a file created here and never uploaded
                    with self._removing(opened):
                        await self.cloud.delete(object_key(path, entry))
                    self.uploader.drop_cached(object_key(path, entry), entry.version)
                await self._unlink_open(path)  # once the delete is done: a failed one keeps it
            self.names.note(path, None)
            self.inodes.remove(path)
            self._changed_in(path)

    def _removing(self, file: OpenFile | None) -> contextlib.AbstractContextManager[None]:
        """Mark the journal's row of `file`, if it is dirty, as being removed while its
        object is deleted or replaced, until `_unlink_open` forgets the row
        (`Uploader.removing`)."""
        if file is None or not file.dirty or file.staging is None:
            return contextlib.nullcontext()
        return self.uploader.removing(file.staging)

    def _open_file_at(self, path: str) -> OpenFile | None:
        node = self.inodes.find(path)
        return self._open.get(node.inode) if node else None

    async def _keep_for_open_handles(self, path: str) -> None:
        """Before the file at `path` leaves the namespace, while its object is still there:
        a handle open on it gets its bytes staged, to read and write on (to nowhere) as
        POSIX has it. Tier 1 may not hold them all (a moved file's copy is a new version)."""
        opened = self._open_file_at(path)
        if opened is not None and opened.fd is None and opened.stream is None:
            self._acquire(opened.node)  # its last handle's close must not forget it meanwhile
            try:
                async with opened.lock:
                    await self._stage(opened, keep=opened.node.size)
            finally:
                self._drop(opened)

    async def _unlink_open(self, path: str) -> None:
        """The file at `path` leaves the namespace (unlinked, or replaced by a rename): a
        handle still open on it reads on from what `_keep_for_open_handles` staged, and
        writes nowhere; its stream, if it streams, is given up. Under the file's lock."""
        opened = self._open_file_at(path)
        if opened is not None:
            opened.unlinked_from, opened.dirty = path, False
            self._abandon_early(opened)
            if opened.staging is not None:
                self.uploader.forget(opened.staging)
            if opened.stream is not None:  # finished at close, it would put the file back
                await opened.stream.abort()

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        """Move a file or a directory tree (copy + delete in the cloud), replacing a file;
        alone at and below both names (`PathLocks`)."""
        old_dir, new_dir = self.inodes.get(old_parent), self.inodes.get(new_parent)
        async with self.path_locks.changing(
            lambda: (join(old_dir.path, old_name), join(new_dir.path, new_name))
        ):
            await self._rename(old_parent, old_name, new_parent, new_name)

    async def _rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        old, source = await self._existing(old_parent, old_name)
        new = self._new_child_path(self.inodes.get(new_parent), new_name)
        if old == new:
            return
        target = await self._stat(new)
        if target is not None:
            if source.is_dir and not target.is_dir:
                raise NotDirectoryError(new)
            if target.is_dir and not source.is_dir:
                raise IsDirectoryError(new)
            if target.is_dir and not await self._is_empty(new):
                raise DirectoryNotEmptyError(new)
        if source.is_dir and (new + "/").startswith(old + "/"):
            raise InvalidArgumentError(f"cannot move {old!r} into itself")
        # A stream's key is fixed when it starts: it would land at the old name.
        streaming = self._streaming_at_or_under(old)
        if streaming is not None:
            raise BusyError(
                f"{old}: {streaming.node.path} is being streamed to the cloud (its disk is "
                "full): rename it once that file is closed"
            )
        try:
            if source.is_dir:
                await self._rename_tree(old, new)
            else:
                if target is not None:
                    await self._keep_for_open_handles(new)
                with self._removing(self._open_file_at(new)):  # the file it replaces, if any
                    await self._rename_file(old, new)
                if target is not None and target.version and target.is_link != source.is_link:
                    await self.cloud.delete(object_key(new, target))  # not replaced by the copy
        except BaseException:
            # Cut short, it may have left both names in the bucket: what the bucket holds
            # is what the mount shows, not what it knew before.
            for path in (old, new):
                self.names.forget(path)
                self.names.forget_subtree(path)
            replaced = self._open_file_at(new)
            if replaced is not None and replaced.unlinked:  # by the copy, which went through
                self.inodes.replace(new)
            raise
        self.inodes.move(old, new)
        self._journal_moved(new)
        self._changed_in(old)
        self._changed_in(new)

    def _streaming_at_or_under(self, path: str) -> OpenFile | None:
        """A file at or below `path` being streamed to the cloud, if any."""
        for file in self._open.values():
            if file.stream is not None and not file.unlinked and is_under(file.node.path, path):
                return file
        return None

    def _journal_moved(self, new: str) -> None:
        """Journal the dirty files now at or under `new` by their new keys: were the
        process killed before their upload, recovery must put them where they are now."""
        for file in self._open.values():
            path = file.node.path
            if file.dirty and file.staging is not None and (path + "/").startswith(new + "/"):
                self.uploader.journal.moved(path, file.staging, file.node.version)

    async def _rename_file(self, old: str, new: str) -> None:
        node = self.inodes.find(old)
        opened = self._open.get(node.inode) if node else None
        if opened is not None and opened.dirty:
            # The bytes must exist in the cloud to be copied; a file whose close failed
            # goes up late, as its retry would: over another node's write, they go aside
            # and the rename moves the bucket's file.
            await self._upload(opened, late=opened.handles == 0)
            self._forget_if_uploaded(opened)
        entry = await self._stat(old)
        if entry is None:  # its removal, cut short when the previous run stopped, went through
            raise EntryNotFoundError(old)
        if not entry.version:  # nothing in the cloud yet (an unlinked-while-open leftover)
            raise EntryNotFoundError(old)
        source, destination = object_key(old, entry), object_key(new, entry)
        version = await self._copy(source, destination, entry.size, entry.version)
        # The file it replaces, if any, leaves the namespace once the copy is in: a failure
        # or a crash past here must not put its bytes back (a late upload found an S3 copy
        # of the bytes they were written over at that version, the same ETag, and put them
        # over it: once the source's delete went through, the moved bytes were gone).
        async with _locked(self._open_file_at(new)):
            await self._unlink_open(new)
        await self.cloud.delete(source)
        if version is not None:  # the copy is of the bytes tier 1 holds, if it holds them
            moved = ObjectRef(destination, version, entry.size)
            self.uploader.move_cached(ObjectRef(source, entry.version, entry.size), moved)
        self.names.note(old, None)
        copied = await self.cloud.head(destination)  # another node may have written since
        self.names.note(new, file_entry(copied))
        if node is not None and version is not None:
            _copied_as(node, entry.version, version)

    async def _copy(self, source: str, destination: str, size: int, version: str) -> str | None:
        """Copy `source` at `version` to `destination`: the copy's version. If another node
        wrote `source` since, the bucket's file is copied (a rename moves it) and None:
        the handles open on the bytes this node knew do not read the copy (ESTALE)."""
        try:
            return await self.cloud.copy(source, destination, size, version)
        except VersionChangedError:
            await self.cloud.copy(source, destination, size)
            return None

    async def _rename_tree(self, old: str, new: str) -> None:
        listing = await self.cloud.list_all(old + "/", delimiter=False)
        if listing.hidden:  # keys it could not copy: the move would be half made
            raise UnnamableKeyError(
                f"{old}: holds keys that no path can name (logged as not shown): rename "
                "them with the tool that put them there"
            )
        below, markers_below = split_markers(listing.objects)
        # The folder's own marker too, listed or not: the moved folder has one, the old
        # name none.
        markers = sorted({*markers_below, old})
        # Every new key checked before the first copy: a deep key past the store's limit
        # failed the move half way (half the tree copied).
        for path in [*(meta.key for meta in below), *markers]:
            self.cloud.check_key(new + path[len(old) :])
        for folder in markers:
            self.cloud.check_folder(new + folder[len(old) :])
        # Every copy first, then the deletes: a failure part way leaves both names, never
        # neither.
        copies: dict[str, tuple[str, str]] = {}  # by source: its version listed, its copy's
        copied: list[ObjectMeta] = []

        async def copy(meta: ObjectMeta) -> bool:
            """Copy `meta` under `new`: False if another node removed (or moved) it since."""
            destination = new + meta.key[len(old) :]
            try:
                version = await self._copy(meta.key, destination, meta.size, meta.version)
            except ObjectNotFoundError:
                return False
            copied.append(meta)
            if version is not None:
                copies[meta.key] = (meta.version, version)
            return True

        # A file that is also a folder's name (`d/f` beside `d/f/x`: S3 allows both) is
        # copied before the rest, alone: SeaweedFS, copying both at once, kept one of them
        # (1 in ~40 tries), and copying the lost one again did not always bring it back.
        folders = {key[:at] for key in (meta.key for meta in below) for at in _slashes(key)}
        for meta in below:
            if meta.key in folders:
                await copy(meta)
        await _bounded([meta for meta in below if meta.key not in folders], copy)
        await self._copy_lost_again(old, new, copied, copy)
        await _bounded(markers, lambda folder: self.cloud.put_marker(new + folder[len(old) :]))
        self._follow_copies(copies)
        await _bounded(below, lambda meta: self.cloud.delete(meta.key))
        for meta in below:
            if meta.key in copies:
                moved = ObjectRef(new + meta.key[len(old) :], copies[meta.key][1], meta.size)
                self.uploader.move_cached(ObjectRef(meta.key, meta.version, meta.size), moved)
        for folder in sorted(markers, reverse=True):  # deepest first: a local folder must be empty
            await self.cloud.delete_marker(folder)
        self.names.removed_dir(old)
        self.names.forget_subtree(new)
        self.names.note(old, None)
        self.names.note(new, Entry(split(new)[1], True))

    async def _copy_lost_again(
        self,
        old: str,
        new: str,
        copied: list[ObjectMeta],
        copy: Callable[[ObjectMeta], Awaitable[bool]],
    ) -> None:
        """Copy again, one at a time, what a folder move copied and the store lost, before
        any source goes (a lost copy's source was deleted with the others: SeaweedFS lost
        one when a file and a folder of its name were copied at once). Up to COPY_ROUNDS
        rounds; CloudError if a copy is still missing: the sources stay. A copy whose
        source is gone by then was moved or removed by another node (its copy with it, a
        move of the same folder from there): it leaves this move, as a local folder's
        file renamed away by another process does."""
        lost = await self._copies_missing(old, new, copied)
        for _ in range(COPY_ROUNDS):
            if not lost:
                return
            log.warning(
                "%s: the store lacks %d copies of this move; copying them again", old, len(lost)
            )
            lost = [meta for meta in lost if await copy(meta)]
            lost = await self._copies_missing(old, new, lost)
        if lost:
            raise CloudError(
                f"{old}: moved to {new}, the store lost the copy of {lost[0].key}: "
                "nothing was deleted"
            )

    async def _copies_missing(
        self, old: str, new: str, copied: list[ObjectMeta]
    ) -> list[ObjectMeta]:
        """The objects of `copied` (under `old`) whose copy under `new` the store lacks."""
        listed = await self.cloud.list_all(new + "/", delimiter=False)
        present = {meta.key for meta in listed.objects}
        return [meta for meta in copied if new + meta.key[len(old) :] not in present]

    def _follow_copies(self, copies: dict[str, tuple[str, str]]) -> None:
        """The open files a folder move copied (`copies`: by path, the version copied and
        its copy's) take their copies' versions: their handles read on, and a dirty one's
        late upload goes over its copy."""
        for file in self._open.values():
            copied = copies.get(file.node.path)
            if copied is not None and copied[0] == file.node.version:
                _copied_as(file.node, *copied)

    # -- attributes ---------------------------------------------------------------------

    async def setattr(
        self,
        inode: int,
        *,
        size: int | None = None,
        mode: int | None = None,
        mtime_ns: int | None = None,
        atime_ns: int | None = None,
        fh: int | None = None,
    ) -> Node:
        """chmod, utimes, truncate. Mode and times live on this mount only."""
        node = await self.getattr(inode)
        if size is not None:
            if node.is_dir:
                raise IsDirectoryError(node.path)
            handle = self._handles.get(fh) if fh is not None else None
            if handle is not None:
                await self._truncate(handle.file, size)
            else:
                file = self._acquire(node)
                try:
                    await self._truncate(file, size)
                    await self._save(file)
                finally:
                    self._drop(file)
            await self._settle(inode)  # the kernel drops the pages past the new size next
        if mode is not None:
            node.mode = mode & 0o7777
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        if atime_ns is not None:
            node.atime_ns = atime_ns
        if mtime_ns is not None or atime_ns is not None:
            node.mtime_set_for = node.version
        return node

    async def _truncate(self, file: OpenFile, size: int) -> None:
        async with file.lock:
            if file.stream is not None:
                raise UnsupportedError(f"{file.node.path} is being streamed: cannot truncate it")
            if size == file.node.size:  # no byte changes (`rsync --inplace`): nothing to put
                file.node.mtime_ns, file.node.mtime_set_for = time.time_ns(), file.node.version
                return
            await self._stage(file, keep=min(size, file.node.size))
            assert file.fd is not None
            self._abandon_early(file)
            file.writes += 1
            await asyncio.to_thread(os.ftruncate, file.fd, size)
            self._dirty(file, size)
            file.appends_only = size == 0

    # -- open files ---------------------------------------------------------------------

    def _acquire(self, node: Node) -> OpenFile:
        file = self._open.get(node.inode)
        if file is None:
            file = self._open[node.inode] = OpenFile(node)
            node.open_count += 1
        file.handles += 1
        return file

    def _drop(self, file: OpenFile) -> None:
        """A handle closed. A file whose upload failed stays open here, dirty, so that a
        later open sees its bytes and the retry loop uploads it (`retry_failed_uploads`);
        not one whose stream failed: its bytes are gone (each close of it said EIO), and
        the next open finds the bucket's file."""
        file.handles -= 1
        if file.handles > 0:
            return
        if file.dirty and not (file.stream is not None and file.stream.failed):
            self._start_retries()
        else:
            self._forget_file(file)

    def _forget_file(self, file: OpenFile) -> None:
        del self._open[file.node.inode]
        self.staging.discard(file)
        self.inodes.release(file.node)
        gone, version = file.unlinked_from, file.node.version
        if gone is not None and version:
            # removed, replaced or changed in the bucket while open: its last reader is done,
            # unless the file now at its name has the same bytes (a rename of a copy over it)
            standing = self.inodes.find(gone)
            if standing is None or standing.version != version:
                self.uploader.drop_cached(gone, version)

    def _start_retries(self) -> None:
        if self._retries is None or self._retries.done():
            self._retries = asyncio.create_task(self.retry_failed_uploads(), name="retries")

    def take_over(self, rows: Iterable[PendingUpload]) -> None:
        """Take the files a previous run left unsent, which the cloud did not take at the
        start (`Uploader.hand_over`), as files whose close failed: the mount shows their
        bytes, its retries send them late (through the path locks), and an unlink or a
        rename of one, or over one, follows it as it follows any such file."""
        for row in rows:
            assert row.base is not None, "a row of a journal from before bases is recovery's"
            try:
                fd = os.open(row.staging, os.O_RDWR)
            except OSError as exc:
                log.error("%s: journal names %s, which is gone: %s", row.key, row.staging, exc)
                self.uploader.forget(row.staging)
                continue
            node = self.inodes.ensure(row.key, is_dir=False)
            status = os.fstat(fd)
            node.size, node.version, node.mtime_ns = status.st_size, row.base, status.st_mtime_ns
            node.open_count += 1  # held until it is sent, as by a handle (`_forget_file`)
            self._open[node.inode] = OpenFile(node, staging=row.staging, fd=fd, dirty=True)
        if self._open:
            self._start_retries()

    async def retry_failed_uploads(self, interval: float = RETRY_INTERVAL) -> None:
        """Upload, until they are all in the cloud, the closed files whose upload failed.
        Once one found the cloud out of reach, the others wait for the next round: each
        would wait out the deadline, holding its path meanwhile."""
        while True:
            waiting = [f for f in self._open.values() if f.handles == 0]
            if not waiting:
                return
            await asyncio.sleep(interval)
            for file in waiting:
                if file.handles == 0:
                    try:
                        await self._save(file, late=True)
                    except CloudUnavailableError:
                        break
                    except CloudError:
                        pass
                self._forget_if_uploaded(file)

    def _forget_if_uploaded(self, file: OpenFile) -> None:
        """Forget a file whose close failed once its bytes are in the cloud (or aside)."""
        if self._open.get(file.node.inode) is file and file.handles == 0 and not file.dirty:
            self._forget_file(file)

    def _new_handle(self, file: OpenFile, writable: bool) -> Handle:
        handle = Handle(self._next_fh, file, writable)
        if writable:
            file.writers += 1
        self._next_fh += 1
        self._handles[handle.fh] = handle
        return handle

    def handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise StaleHandleError(f"file handle {fh} is not open")
        return handle

    async def open(self, inode: int, writable: bool, truncate: bool) -> tuple[Handle, bool]:
        """Open a file (revalidating it: close-to-open); returns (handle, keep_cache). A
        rename over it waits, else the handle could get the version it replaced.

        A file replaced by a rename since the kernel looked its name up opens, for
        reading, the file now at that name (what a local disk's open gives when the
        rename comes first; the replaced bytes may be gone from the bucket): each open
        racing "write aside, rename over" failed with ENOENT, and ESTALE, which has the
        kernel look the name up and try once more, still failed those that met two
        renames. Opened for writing, it is ESTALE."""
        opening = self.inodes.get(inode)
        while True:
            node = self._open_as(opening, writable)
            async with self.path_locks.working(partial(getattr, node, "path")):
                if self._open_as(opening, writable) is not node:
                    continue  # replaced meanwhile: open what is at the name now
                handle, keep_cache = await self._revalidate_and_open(
                    node.inode, writable, truncate, kernel_inode=inode
                )
                if node is opening:
                    return handle, keep_cache
                opening.opened_as = node  # what the kernel's attributes of it are now
                return handle, False

    def _open_as(self, opening: Node, writable: bool) -> Node:
        """The node an open of `opening` opens: itself, or the file now at the name a
        rename over it took (`open`)."""
        if opening.inode in self._open or self.inodes.find(opening.path) is opening:
            return opening
        successor = None if writable else self.inodes.standing_for(opening)
        if successor is None:
            # Removed, or replaced: ESTALE has the kernel look the name up again.
            raise StaleHandleError(f"inode {opening.inode} left its name: look it up again")
        return successor

    async def _revalidate_and_open(
        self, inode: int, writable: bool, truncate: bool, kernel_inode: int
    ) -> tuple[Handle, bool]:
        node = await self.getattr(inode)
        if node.is_dir:
            raise IsDirectoryError(node.path)
        keep_cache = self._last_versions.get(inode) == node.version and bool(node.version)
        file = self._acquire(node)
        handle = self._new_handle(file, writable)
        if kernel_inode == inode:  # the version in the kernel's page cache of that inode
            self._last_versions[inode] = node.version
        if truncate:
            await self._truncate(file, 0)
            keep_cache = False
        if writable or not keep_cache:
            await self._settle(inode)  # the kernel drops the file's pages, or writes into them
        return handle, keep_cache

    async def create(self, parent_inode: int, name: str, mode: int | None = None) -> Handle:
        """A new empty file, in the cloud once its handle is flushed; `mode` as in
        `mkdir` (an executable built here runs)."""
        async with self._changing(parent_inode, name):
            path = self._new_child_path(self.inodes.get(parent_inode), name)
            if await self._stat(path) is not None:
                raise EntryExistsError(path)
            node = self.inodes.ensure(path, is_dir=False)
            node.size, node.version, node.mtime_ns, node.mode = 0, "", time.time_ns(), mode
            file = self._acquire(node)
            try:
                self.staging.open_new(file)
                self._dirty(file, 0)
            except BaseException:
                self._drop(file)  # a full disk (ENOSPC): nothing is left of the file
                raise
            file.appends_only = True
            self.names.note(path, Entry(name, False, 0, node.mtime_ns, ""))
            self._changed_in(path)
            return self._new_handle(file, writable=True)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self.handle(fh)
        file = handle.file
        while True:  # again when the file was renamed or unlinked here under the read
            if file.stream is not None:
                raise UnsupportedError(
                    f"{file.node.path} is being streamed to the cloud: read it once closed"
                )
            if file.fd is not None:
                # on a descriptor of its own: a disk filling closes the file's meanwhile
                return await asyncio.to_thread(pread_and_close, os.dup(file.fd), size, offset)
            ref = file.ref()
            reader = handle.reader
            if (reader is None and ref.size > 0) or (reader is not None and reader.ref != ref):
                await self._start_reader(handle, ref)  # the first read, or renamed since
            random = handle.reader is not None and not handle.reader.window
            on_fetched = handle.on_fetched if random else None
            try:
                data = await self.read_path.read(ref, offset, size, handle.reader, on_fetched)
            except (VersionChangedError, ObjectNotFoundError) as exc:
                # Renamed or unlinked here under the read? Once that is done, read it anew.
                async with self.path_locks.working(lambda: file.node.path):
                    moved = file.fd is not None or file.ref() != ref
                if moved:
                    continue
                self.names.forget(file.node.path)
                raise StaleHandleError(
                    f"{file.node.path} changed in the bucket since it was opened: reopen it"
                ) from exc
            if random and self.page_cache is not None:
                self._fill_page_cache(self.page_cache, handle, ref, offset, len(data))
            return data

    async def _start_reader(self, handle: Handle, ref: ObjectRef) -> None:
        """Give the handle its read-ahead over `ref`: at its first read, or anew once its
        file has been renamed (its bytes under another key)."""
        stale, handle.reader = handle.reader, self.read_path.open_reader(ref)
        if stale is not None:
            await stale.close()
        elif self.page_cache is not None:
            handle.on_fetched = partial(self._offer_fetched, self.page_cache, handle)

    def _offer_fetched(
        self, page_cache: PageCache, handle: Handle, chunk: ChunkRef, data: Data, lo: int, hi: int
    ) -> None:
        """The handle's `on_fetched`: a chunk its random read fetched, to the page cache."""
        if self._to_page_cache(page_cache, handle.file, chunk, data, lo, hi):
            handle.offered.add(chunk.index)

    def _fill_page_cache(
        self, page_cache: PageCache, handle: Handle, ref: ObjectRef, offset: int, size: int
    ) -> None:
        """At the second random read of a chunk that tier 1 answered (a chunk a read
        fetched was offered then), put the rest of the chunk into the page cache too, from
        tier 1 in the background: once per handle and chunk, while the queue has room
        (else a later read tries). Not at the first: reads scattered over more than memory
        would each read a whole chunk from disk into memory for nothing. Nor while the
        page cache may not take the file's bytes (it is open for writing): every read
        would read its chunk from disk for nothing."""
        if not self._page_cache_may_take(handle.file, ref.version):
            return
        for chunk in chunks_covering(ref, offset, size, self.read_path.chunk_size):
            if chunk.index in handle.offered or size >= chunk.length:
                continue
            if chunk.index not in handle.read_once:
                handle.read_once.add(chunk.index)
                continue
            if not page_cache.has_room(chunk.length):
                return
            handle.offered.add(chunk.index)
            lo = max(offset, chunk.start) - chunk.start
            hi = min(offset + size, chunk.start + chunk.length) - chunk.start
            fill = asyncio.create_task(self._offer_cached(page_cache, handle, chunk, lo, hi))
            self._page_fills.add(fill)
            fill.add_done_callback(self._page_fills.discard)

    async def _offer_cached(
        self, page_cache: PageCache, handle: Handle, chunk: ChunkRef, lo: int, hi: int
    ) -> None:
        data = await self.read_path.cached(chunk)
        if data is None or not self._to_page_cache(page_cache, handle.file, chunk, data, lo, hi):
            handle.offered.discard(chunk.index)  # a later read may try again

    def _to_page_cache(
        self, page_cache: PageCache, file: OpenFile, chunk: ChunkRef, data: Data, lo: int, hi: int
    ) -> bool:
        """Offer the mount's page cache a chunk of `file` a random read wanted, if it may
        take it (`_page_cache_may_take`); whether it was taken."""
        if self._page_cache_may_take(file, chunk.obj.version):
            return page_cache.offer(file.node.inode, chunk.start, data, (lo, hi))
        return False

    def _page_cache_may_take(self, file: OpenFile, version: str) -> bool:
        """Whether bytes of `version` of `file` may go into the mount's page cache: only
        while the kernel caches that version of it and nobody writes it (else the kernel
        could get old bytes over new ones)."""
        node = file.node
        current = version == node.version == self._last_versions.get(node.inode)
        unwritten = not file.writers and file.fd is None and file.stream is None
        return current and unwritten and not file.unlinked

    async def _settle(self, inode: int) -> None:
        if self.page_cache is not None:
            await self.page_cache.settle(inode)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        file = self.handle(fh).file
        async with file.lock:
            if file.stream is not None:
                return await self._append_to_stream(file, offset, data)
            await self._stage(file, keep=file.node.size)
            assert file.fd is not None
            if offset != file.node.size:
                self._abandon_early(file)
            file.writes += 1
            try:
                written = await asyncio.to_thread(pwrite_all, file.fd, data, offset)
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS or offset != file.node.size:
                    raise
                await self._stream_instead(file, exc)
                return await self._append_to_stream(file, offset, data)
            self._dirty(file, max(file.node.size, offset + written))
            if file.appends_only:
                self._upload_early(file)
        return written

    def _upload_early(self, file: OpenFile) -> None:
        """Send the parts of a file written by appends while it grows (once it is large
        enough, and where the store can stream): its close then waits only for the last."""
        if file.early is None:
            assert file.fd is not None
            assert file.staging is not None
            file.early = self.uploader.start_early(
                file.node.path, file.staging, file.fd, file.node.size
            )
        if file.early is not None:
            file.early.appended(file.node.size)

    def _abandon_early(self, file: OpenFile) -> None:
        """The file changed in a way its early upload cannot follow: it goes up whole."""
        file.appends_only = False
        if file.early is not None:
            self.uploader.abandon(file.early)
            file.early = None

    async def flush(self, fh: int) -> None:
        """The close of a writer: upload the file's unsaved bytes; returns once the
        cloud has them. A reader's close does not answer for another's writes."""
        handle = self.handle(fh)
        if handle.writable:
            await self._save(handle.file)

    async def fsync(self, fh: int) -> None:
        """Upload the file's unsaved bytes, whoever wrote them."""
        await self._save(self.handle(fh).file)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.writable:
            handle.file.writers -= 1
        if handle.reader is not None:
            await handle.reader.close()
        try:
            if handle.writable:
                await self._save(handle.file)
        finally:
            self._drop(handle.file)

    async def _stage(self, file: OpenFile, keep: int) -> None:
        """Give `file` a staging file holding its first `keep` bytes from the tiers. Its
        reads go on from the tiers until the copy is whole: a read of a file being
        replaced by a rename got the part copied so far."""
        if file.fd is not None:
            return
        staging, fd = self.staging.new()
        ref = file.ref()
        try:
            for start in range(0, keep, COPY_PIECE):
                data = await self.read_path.read(ref, start, min(COPY_PIECE, keep - start))
                await asyncio.to_thread(pwrite_all, fd, data, start)
        except BaseException:
            remove(staging, fd)
            raise
        file.staging, file.fd = staging, fd

    async def _stream_instead(self, file: OpenFile, full: OSError) -> None:
        """The staging disk is full: send what is staged up a streamed upload, which the
        next appends feed, and free the staging file. Raises `full` if the provider
        cannot stream (then the staged bytes stay as they were)."""
        assert file.fd is not None and file.staging is not None
        self._abandon_early(file)
        path, size = file.node.path, file.node.size
        stream = StreamingUpload(self.cloud, path)
        try:
            for start in range(0, size, COPY_PIECE):
                length = min(COPY_PIECE, size - start)
                await stream.send(await asyncio.to_thread(os.pread, file.fd, length, start))
        except CloudError as exc:
            await stream.abort()
            log.warning("%s: no room to stage it, and it cannot be streamed: %s", path, exc)
            raise full from exc
        staged = file.staging
        self.staging.discard(file)  # room first: the journal needs some too
        self.uploader.forget(staged)  # from now on the stream carries its bytes
        self.uploader.note_stream(stream)
        file.stream, file.dirty = stream, True
        log.warning(
            "%s: no room to stage it under %s; streaming it to the cloud instead "
            "(only appending writes until it is closed)",
            path,
            self.staging.root,
        )

    async def _append_to_stream(self, file: OpenFile, offset: int, data: bytes) -> int:
        assert file.stream is not None
        if offset != file.stream.end:
            raise UnsupportedError(
                f"{file.node.path} is being streamed to the cloud (its disk is full): "
                "only appending writes until it is closed"
            )
        await file.stream.send(data)
        self._dirty(file, file.stream.end)
        return len(data)

    def _dirty(self, file: OpenFile, size: int) -> None:
        if not file.unlinked and file.staging is not None:
            if file.dirty:  # a removal a crash left unsure decides no more (`take_over`)
                self.uploader.written(file.staging)
            else:
                self.uploader.journal.begin(file.key, file.staging, file.node.version)
        file.dirty = not file.unlinked
        file.node.size = size
        file.node.mtime_ns, file.node.mtime_set_for = time.time_ns(), None

    async def _save(self, file: OpenFile, late: bool = False) -> None:
        """`_upload` to the file's path once no change is under way at it or above it (a
        move of its folder changes it)."""
        async with self.path_locks.working(lambda: file.node.path):
            await self._upload(file, late)

    async def _upload(self, file: OpenFile, late: bool = False) -> None:
        """Put the file's unsaved bytes in the cloud. `late` (the retry of a failed close,
        at once or at unmount): if another node changed the file in the bucket meanwhile,
        they go under CONFLICTS (`Uploader.upload_late`) and this mount shows the
        bucket's file from then on. So do a file's whose name became a folder meanwhile
        (another node put keys below it), at any upload (`_put`)."""
        async with file.lock:
            path = file.key
            if file.stream is not None:
                if not file.dirty:
                    return  # given up: the file was removed or replaced meanwhile
                try:
                    meta = await file.stream.finish()
                except CloudError:
                    log.error("%s: the streamed upload failed; its bytes are lost", path)
                    self.names.forget(path)  # what the cloud has is the truth
                    raise  # at every later flush, fsync and close too: none may say 0
                file.stream, file.dirty = None, False
            elif not file.dirty or file.staging is None:
                return
            else:
                early, file.early = file.early, None  # finished, or abandoned
                try:
                    meta = await self._put(file, file.staging, early, late)
                except RemovedMeanwhileError:  # a file taken over (`take_over`): gone
                    log.info("%s: removed before the previous run stopped; not uploaded", path)
                    file.dirty = False
                    self.names.forget(path)  # what the cloud has is the truth
                    if self.inodes.find(path) is file.node:
                        self.inodes.remove(path)
                    return
                except CloudError:
                    log.error("%s: upload failed; the data stays staged for a retry", path)
                    raise
                file.dirty = False
                if meta.key != path:  # went aside: the bucket's file is the truth here now
                    self.names.forget(path)
                    return
            node = file.node
            if node.version and node.version != meta.version:
                self.uploader.drop_cached(meta.key, node.version)  # the version it replaced
            # Its time (of the last write, or set since) stays while the object is at this
            # version: not the store's last-modified, later and in whole seconds on S3.
            node.mtime_set_for = meta.version
            node.size, node.version = meta.size, meta.version
            self._last_versions[node.inode] = meta.version
            self.names.note(
                path, Entry(split(path)[1], False, meta.size, node.mtime_ns, meta.version)
            )

    async def _put(
        self, file: OpenFile, staging: Path, early: EarlyUpload | None, late: bool
    ) -> ObjectMeta:
        """Upload `file`'s bytes from `staging` (finishing `early`) to its key; late (see
        `_upload`) if `late`, or once its name is a folder: this mount listed one there
        (the file's node was displaced), or the store refused the put for one (the local
        directory): the bytes go aside. Put at the name, they never went up: the close
        said EINVAL or EIO, and the retry failed every 5 s for good."""
        if not late and file.node.displaced_from is None:
            try:
                return await self.uploader.upload(file.key, staging, early, staged=file)
            except FolderAtKeyError:
                early = None  # finished or abandoned by the upload
        if early is not None:
            self.uploader.abandon(early)
        return await self.uploader.upload_late(file.key, staging, file.node.version, staged=file)

    async def close(self) -> None:
        """Upload every dirty file (at unmount); the ones that fail stay journaled, and so
        do all the others once one found the cloud out of reach (`CloudUnavailableError`):
        the stop then ends within about one deadline. A file whose close failed earlier
        goes up late, as its retry would. A file being streamed whose stream cannot be
        finished has nothing to stay (its bytes were never on disk): it is named in
        `lost_streams`."""
        if self._retries is not None:
            self._retries.cancel()

        # Together, a few at a time; and once one found the cloud out of reach, no more:
        # with the cloud down each would wait out its deadline (20 files, 5 deadlines).
        out_of_reach: list[CloudUnavailableError] = []
        untried: list[OpenFile] = []

        async def save(file: OpenFile) -> None:
            if out_of_reach:
                untried.append(file)  # staged, it stays journaled for the next start
                if file.stream is not None and file.dirty:
                    log.error("%s: its stream cannot be finished; its bytes are lost", file.key)
                return
            try:
                await self._save(file, late=file.handles == 0)
            except CloudUnavailableError as exc:
                out_of_reach.append(exc)
            except CloudError:
                pass

        await _bounded(list(self._open.values()), save, UNMOUNT_PARALLELISM)
        if untried:
            log.warning(
                "%d other file(s) not tried, the cloud out of reach: %s",
                sum(file.dirty for file in untried),
                out_of_reach[0],
            )
        self.lost_streams = sorted(
            file.key for file in self._open.values() if file.stream is not None and file.dirty
        )
        for handle in list(self._handles.values()):
            if handle.reader is not None:
                await handle.reader.close()
        for fill in list(self._page_fills):
            fill.cancel()
        await asyncio.gather(*self._page_fills, return_exceptions=True)
        if self.page_cache is not None:
            await self.page_cache.close()

    def stopped_short(self) -> str | None:
        """What `close` left undone, in a line for the user: the files being streamed that
        are lost, and how many files stay staged (journaled) to go up at the next start on
        this `-nvme`; None if every file is in the cloud."""
        undone = []
        if self.lost_streams:
            undone.append(
                f"{len(self.lost_streams)} file(s) being streamed to the cloud are lost: "
                + ", ".join(self.lost_streams)
            )
        if unsent := len(self.uploader.journal.pending()):
            undone.append(
                f"{unsent} file(s) not yet in {self.cloud.url}: they stay staged in "
                f"{self.uploader.journal.path.parent} and go up at the next start on it"
            )
        return "; ".join(undone) or None


def _named(name: str, entries: Callable[[], list[Entry]]) -> Entry | None:
    """The entry called `name` of `entries()`, if any."""
    return next((entry for entry in entries() if entry.name == name), None)


def _locked(file: OpenFile | None) -> contextlib.AbstractAsyncContextManager[None]:
    """Hold `file`'s lock (writes, uploads), if there is a file."""
    return file.lock if file is not None else contextlib.nullcontext()


def _copied_as(node: Node, version: str, copy: str) -> None:
    """`node`'s file at `version` was copied to its new name as version `copy`: the same
    bytes (and version on S3, whose ETag is their MD5, and local, whose copy is a hard
    link; a new one on Azure and GCS). Its handles read the copy; a time set here stays."""
    if node.version == version:
        node.version = copy
    if node.mtime_set_for == version:
        node.mtime_set_for = copy


async def _bounded(
    items: list[T],
    operation: Callable[[T], Awaitable[object]],
    parallelism: int = RENAME_PARALLELISM,
) -> None:
    """Run `operation` on every item (an object of a tree being renamed, a file to upload
    at unmount), `parallelism` at a time."""
    limit = asyncio.Semaphore(parallelism)

    async def one(item: T) -> None:
        async with limit:
            await operation(item)

    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(one(item))
    except ExceptionGroup as failed:  # the errno boundary answers for one: the first
        raise failed.exceptions[0] from failed


def _slashes(key: str) -> list[int]:
    """Where `key`'s folders end: `a/b/c` gives the ends of `a` and `a/b`."""
    return [at for at, char in enumerate(key) if char == "/"]

"""The inode table: stable inode numbers for the paths the kernel has looked up.

Paths are object-key prefixes without a trailing slash: "" is the root, "a/b" a child.
The kernel holds lookup counts; an entry leaves the table when its count falls to zero
(`forget`) and no handle has it open, unless it holds what this mount set
(`KEPT_FORGOTTEN`). A path's inode number is a hash of it, so one the kernel forgot and
looks up again gets the number it had (tar checks a folder's and a file's number between
making it and setting its times or replacing it).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from tierfs.errors import StaleHandleError

ROOT_INODE = 1
INODE_BITS = 63  # a signed 64-bit ino_t holds them too
# Forgotten nodes that hold what this mount set (a mode, a time set or written here) stay
# in the table, the latest this many (some 500 bytes each): a file the kernel forgot
# (memory pressure, drop_caches) and looks up again keeps them. Before 2026-12-08 it
# came back with the default mode and the store's time: `chmod 600` undone, and the
# next `rsync -a` sent every file again.
KEPT_FORGOTTEN = 32_768


def join(parent: str, name: str) -> str:
    """The path of `name` inside `parent`."""
    return f"{parent}/{name}" if parent else name


def split(path: str) -> tuple[str, str]:
    """(parent path, name) of a non-root path."""
    parent, _, name = path.rpartition("/")
    return parent, name


@dataclass(eq=False, slots=True)
class Node:
    """One file or directory as this mount knows it."""

    inode: int
    path: str
    is_dir: bool
    is_link: bool = False  # a symbolic link; its target, once read: `target`
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    version: str = ""  # the object's version; "" for directories and unsaved files
    mode: int | None = None  # permission bits set by chmod; None: the mount's default
    # The version written or whose mtime was set (utimens) here: while the object is at
    # it, `mtime_ns` is this mount's, not the store's. None: the store's.
    mtime_set_for: str | None = None
    atime_ns: int | None = None  # set here (utimens), kept as `mtime_ns` is; None: that one
    lookups: int = 0  # the kernel's
    open_count: int = 0
    replaced_at: str | None = None  # the path a rename over it took from it
    # The path an entry of another kind took from it (a folder another node made at a
    # file's name): where the bytes written to it while it was open were bound.
    displaced_from: str | None = None
    opened_as: Node | None = None  # replaced: the file its last open opened (`open`)
    target: bytes | None = None  # a link's target at `version`

    def holds_settings(self) -> bool:
        """Whether the node holds what this mount set: a mode, or a time (`utimens`, or
        of a write here) that stands for the object's version."""
        return not (self.mode is None and self.mtime_set_for is None and self.atime_ns is None)


class InodeTable:
    """Inodes by number and by path; the root is always there. `on_drop(inode)` is called
    when an inode leaves the table, for what is kept beside it."""

    def __init__(
        self,
        on_drop: Callable[[int], object] = lambda inode: None,
        kept_forgotten: int = KEPT_FORGOTTEN,
    ) -> None:
        self._on_drop = on_drop
        self._kept_forgotten = kept_forgotten
        # Unused nodes kept for their settings, least recently forgotten first; one looked
        # up again stays listed until it is forgotten again or falls out, then kept.
        self._forgotten: OrderedDict[int, Node] = OrderedDict()
        root = Node(ROOT_INODE, "", is_dir=True, lookups=1)
        self._by_inode: dict[int, Node] = {ROOT_INODE: root}
        self._by_path: dict[str, Node] = {"": root}

    def get(self, inode: int) -> Node:
        """The node of `inode`; StaleHandleError if the kernel asks for a forgotten one."""
        node = self._by_inode.get(inode)
        if node is None:
            raise StaleHandleError(f"inode {inode} is not known")
        return node

    def find(self, path: str) -> Node | None:
        return self._by_path.get(path)

    def ensure(self, path: str, is_dir: bool, is_link: bool = False) -> Node:
        """The node of `path`, made if new; a changed kind gets a new inode."""
        node = self._by_path.get(path)
        if node is not None and (node.is_dir, node.is_link) == (is_dir, is_link):
            return node
        if node is not None:
            self._detach(node)
            node.displaced_from = path
        node = Node(self._free_number(path), path, is_dir, is_link)
        self._by_inode[node.inode] = node
        self._by_path[path] = node
        return node

    def _free_number(self, path: str) -> int:
        """The hash of `path`, or past it the first number no node has (one still held
        under another path, or of another kind at this one)."""
        digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8)
        number = int.from_bytes(digest.digest(), "big") >> (64 - INODE_BITS)
        while number <= ROOT_INODE or number in self._by_inode:
            number = (number + 1) % 2**INODE_BITS
        return number

    def forget(self, inode: int, count: int) -> None:
        node = self._by_inode.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._drop_if_unused(node)

    def release(self, node: Node) -> None:
        """A handle on `node` closed."""
        node.open_count -= 1
        self._drop_if_unused(node)

    def remove(self, path: str) -> None:
        """`path` is gone from the namespace; its inode lives on while the kernel holds it."""
        node = self._by_path.get(path)
        if node is not None:
            self._detach(node)

    def replace(self, path: str) -> None:
        """The file at `path` was replaced by a rename: it leaves the namespace, and
        `standing_for` finds the file now at `path`."""
        replaced = self._by_path.get(path)
        self.remove(path)
        if replaced is not None:
            replaced.replaced_at = path

    def move(self, old: str, new: str) -> None:
        """Rename `old` (and everything below it) to `new`, replacing what is there."""
        self.replace(new)
        prefix = old + "/"
        moved = [n for p, n in self._by_path.items() if p == old or p.startswith(prefix)]
        for node in moved:
            del self._by_path[node.path]
        for node in moved:
            node.path = new + node.path[len(old) :]
            self._by_path[node.path] = node

    def standing_for(self, node: Node) -> Node | None:
        """The file now at the path a rename over file `node` took from it, if any."""
        if node.replaced_at is None or node.is_dir or node.is_link:
            return None
        if self._by_path.get(node.path) is node:
            return None
        now = self._by_path.get(node.replaced_at)
        return now if now is not None and not now.is_dir and not now.is_link else None

    def _detach(self, node: Node) -> None:
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
        node.path = f"\0detached/{node.inode}"  # never a valid key: no longer in the namespace
        self._drop_if_unused(node)

    def _drop_if_unused(self, node: Node) -> None:
        if node.lookups or node.open_count:
            return
        if node.holds_settings() and self._by_path.get(node.path) is node:
            self._forgotten[node.inode] = node
            self._forgotten.move_to_end(node.inode)
            while len(self._forgotten) > self._kept_forgotten:
                _, oldest = self._forgotten.popitem(last=False)
                if not (oldest.lookups or oldest.open_count):
                    self._drop(oldest)
            return
        self._drop(node)

    def _drop(self, node: Node) -> None:
        self._forgotten.pop(node.inode, None)
        if self._by_inode.pop(node.inode, None) is not None:
            self._on_drop(node.inode)
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]

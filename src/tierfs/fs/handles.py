"""Open files and directories: what each handle reads from, and the staging file of a file
being written.

All handles of one inode share one `OpenFile`, so a writer's bytes are what every reader
on this node sees at once. A file is staged in `NVME/staging/` from its first write (or
O_TRUNC, or create) until its upload; `flush`, `fsync` and the last `release` upload it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tierfs.chunks import ObjectRef
from tierfs.fs.early_upload import EarlyUpload
from tierfs.fs.metadata import Snapshot
from tierfs.fs.nodes import Node
from tierfs.fs.streaming import StreamingUpload
from tierfs.prefetch import SequentialReader
from tierfs.read_path import OnFetched


@dataclass(eq=False)
class OpenFile:
    """The state of one open inode, shared by its handles."""

    node: Node
    handles: int = 0
    writers: int = 0  # of the handles, those open for writing
    staging: Path | None = None  # the file's bytes while it is written
    fd: int | None = None  # of `staging`
    dirty: bool = False  # staging holds bytes the cloud does not have
    appends_only: bool = False  # written from empty by appends alone: it can go up early
    early: EarlyUpload | None = None  # its upload, under way while it is written
    # The key it was removed from while open: its bytes go nowhere, and its reads still
    # come from that object's chunks (from tier 1: the cloud has them no more).
    unlinked_from: str | None = None
    stream: StreamingUpload | None = None  # instead of staging, when the disk was full
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # writes vs. upload
    # Changes of the staged bytes (writes, truncates), each counted before it is made: the
    # tier-1 copy of its last upload stops at the next (`Uploader.upload`'s `staged`).
    writes: int = 0

    @property
    def unlinked(self) -> bool:
        return self.unlinked_from is not None

    @property
    def key(self) -> str:
        """Where its written bytes go: its path, or the one a folder (or link) made
        elsewhere took from it (`Node.displaced_from`)."""
        return self.node.displaced_from or self.node.path

    def ref(self) -> ObjectRef:
        key = self.node.path if self.unlinked_from is None else self.unlinked_from
        return ObjectRef(key, self.node.version, self.node.size)


@dataclass(eq=False)
class Handle:
    """One open() of a file: its `OpenFile` and its own read-ahead."""

    fh: int
    file: OpenFile
    writable: bool  # opened for writing: its close uploads the file's unsaved bytes
    reader: SequentialReader | None = None
    on_fetched: OnFetched | None = None  # gives its random reads' chunks to the page cache
    offered: set[int] = field(default_factory=set)  # chunks it gave the page cache
    read_once: set[int] = field(default_factory=set)  # chunks tier 1 answered it once


@dataclass(eq=False)
class DirHandle:
    """One opendir(): the directory, and the entries its readdir pages come from, as its
    first page (or the last rewind) took them (None until then)."""

    node: Node
    taken: Snapshot | None = None


class Staging:
    """Creates and removes staging files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def open_new(self, file: OpenFile) -> None:
        """Give `file` an empty staging file."""
        file.staging, file.fd = self.new()

    def new(self) -> tuple[Path, int]:
        """An empty staging file: its path, and a descriptor to read and write it."""
        path = self.root / uuid.uuid4().hex
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def sweep(self, keep: set[Path]) -> int:
        """Remove every staging file but those in `keep` (the journal's): at start, what a
        crash left of files already uploaded, or staged for handles open past an unlink.
        The number removed."""
        removed = 0
        for path in self.root.iterdir():
            if path not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed += 1
        return removed

    def discard(self, file: OpenFile) -> None:
        """Close and delete `file`'s staging file."""
        staging, fd, file.staging, file.fd = file.staging, file.fd, None, None
        if staging is not None:
            remove(staging, fd)


def remove(staging: Path, fd: int | None) -> None:
    """Close `fd` and delete the staging file it was open on."""
    if fd is not None:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()


def pread_and_close(fd: int, size: int, offset: int) -> bytes:
    """Up to `size` bytes of `fd` at `offset`; closes `fd` (a duplicate the caller made for
    this read) whatever happens."""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)

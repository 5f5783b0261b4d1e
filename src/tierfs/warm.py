"""Warming: a file or a folder brought into this node's tier 1 before anyone reads it
(`tierfs warm PATH`, as `juicefs warmup` and `alluxio fs load`).

Every chunk comes as a read's would (from its owner in the cluster, else the cloud) and is
kept whatever `-admit-after` says: warming is the user saying the data will be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tierfs.chunks import ChunkRef, ObjectRef, chunk_ref
from tierfs.cloud.base import CloudStore, ObjectMeta
from tierfs.errors import ObjectNotFoundError, VersionChangedError
from tierfs.read_path import ReadPath

LOADS_AT_ONCE = 16  # chunks asked for at once (the read path bounds its fetches as well)
# Chunks loaded before tier 1 is asked which of them it still holds; then again each time
# their count has doubled, and at the end.
CHECK_AFTER = 1024


@dataclass
class WarmProgress:
    """How far a warm is: files and bytes found so far, and what became of the bytes."""

    files: int = 0
    bytes: int = 0
    listed: bool = False  # every file is found: `bytes` is the total
    fetched: int = 0  # brought into tier 1 now
    held: int = 0  # in tier 1 already
    not_kept: int = 0  # tier 1 had no room (beyond `-nvme-size`)
    changed: int = 0  # of files changed or removed while warming (read anew when opened)

    @property
    def done(self) -> int:
        return self.fetched + self.held + self.not_kept + self.changed


@dataclass
class _KeptChunks:
    """The chunks a warm loaded, until tier 1 lets one go (its LRU made room for later
    ones, of this warm or of others' reads): then counted as not kept. Before, a warm
    larger than tier 1 whose chunks came one after the other said it fetched them all."""

    read_path: ReadPath
    progress: WarmProgress
    _loaded: list[tuple[ChunkRef, bool]] = field(default_factory=list)  # with `held`
    _check_at: int = CHECK_AFTER

    def add(self, chunk: ChunkRef, *, held: bool) -> None:
        """`chunk` is in tier 1 now (`held`: it was before this warm)."""
        self._loaded.append((chunk, held))
        if len(self._loaded) >= self._check_at:
            self.count_let_go()
            self._check_at = max(CHECK_AFTER, 2 * len(self._loaded))

    def count_let_go(self) -> None:
        """Move the chunks that tier 1 holds no more to `not_kept`."""
        still: list[tuple[ChunkRef, bool]] = []
        for chunk, held in self._loaded:
            if self.read_path.holds(chunk) is not False:
                still.append((chunk, held))
                continue
            if held:
                self.progress.held -= chunk.length
            else:
                self.progress.fetched -= chunk.length
            self.progress.not_kept += chunk.length
        self._loaded = still


async def objects_under(cloud: CloudStore, path: str) -> AsyncIterator[ObjectMeta]:
    """The file `path`, or the files below the folder `path` ("": the whole bucket)."""
    if path:
        try:
            yield await cloud.head(path)
            return
        except ObjectNotFoundError:
            pass
    async for page in cloud.list(path + "/" if path else "", delimiter=False):
        for meta in page.objects:
            if meta.size and not meta.key.endswith("/"):  # folder markers hold nothing
                yield meta


async def warm(
    cloud: CloudStore, read_path: ReadPath, path: str, progress: WarmProgress
) -> WarmProgress:
    """Bring every chunk of the files at `path` into tier 1, counting in `progress`.
    ObjectNotFoundError when there is nothing at `path`; a failing cloud raises."""
    chunks: asyncio.Queue[ChunkRef | None] = asyncio.Queue(LOADS_AT_ONCE * 4)
    kept_chunks = _KeptChunks(read_path, progress)

    async def list_chunks() -> None:
        async for meta in objects_under(cloud, path):
            progress.files += 1
            progress.bytes += meta.size
            ref = ObjectRef(meta.key, meta.version, meta.size)
            for index in range(-(-meta.size // read_path.chunk_size)):
                await chunks.put(chunk_ref(ref, index, read_path.chunk_size))
        progress.listed = True
        for _ in range(LOADS_AT_ONCE):
            await chunks.put(None)

    async def load_chunks() -> None:
        while (chunk := await chunks.get()) is not None:
            try:
                kept = await read_path.load(chunk)
            except (VersionChangedError, ObjectNotFoundError):
                progress.changed += chunk.length
                continue
            if kept is None:
                progress.held += chunk.length
            elif kept:
                progress.fetched += chunk.length
            else:
                progress.not_kept += chunk.length
                continue
            kept_chunks.add(chunk, held=kept is None)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(list_chunks())
            for _ in range(LOADS_AT_ONCE):
                group.create_task(load_chunks())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    kept_chunks.count_let_go()
    if not progress.files:
        raise ObjectNotFoundError(f"nothing to warm at {path or 'the root'}")
    return progress

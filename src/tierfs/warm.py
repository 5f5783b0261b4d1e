"""Warming: a file or a folder brought into this node's tier 1 before anyone reads it
(`tierfs warm PATH`, as `juicefs warmup` and `alluxio fs load`).

Every chunk comes as a read's would (from its owner in the cluster, else the cloud) and is
kept whatever `-admit-after` says: warming is the user saying the data will be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tierfs.chunks import ChunkRef, ObjectRef, chunk_ref
from tierfs.cloud.base import CloudStore, ObjectMeta
from tierfs.errors import ObjectNotFoundError, VersionChangedError
from tierfs.read_path import ReadPath

LOADS_AT_ONCE = 16  # chunks asked for at once (the read path bounds its fetches as well)


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

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(list_chunks())
            for _ in range(LOADS_AT_ONCE):
                group.create_task(load_chunks())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    if not progress.files:
        raise ObjectNotFoundError(f"nothing to warm at {path or 'the root'}")
    return progress

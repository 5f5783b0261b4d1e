"""One folder of a bucket as a store of its own (`-prefix`), as fsspec's DirFileSystem.

Keys inside the node are the folder's (`train/0001.jpg`); the bucket and the rest of the
cluster know them by the bucket's (`datasets/imagenet/train/0001.jpg`). `KeyPrefix` turns
one into the other where keys leave the node (the peer API, the coordinator), and
`FolderStore` where they reach the cloud.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tierfs.chunks import ChunkRef, Data, ObjectRef, chunk_ref
from tierfs.cloud.base import LIST_PAGE_SIZE, CloudStore, ListPage, ObjectMeta
from tierfs.errors import ObjectNotFoundError


@dataclass(frozen=True)
class KeyPrefix:
    """The bucket's keys of a folder: `prefix` is "" (the whole bucket) or ends in "/"."""

    prefix: str = ""

    def outer(self, key: str) -> str:
        """The bucket's key of the folder's `key`."""
        return self.prefix + key

    def inner(self, key: str) -> str | None:
        """The folder's key of the bucket's `key`; None outside the folder (or the folder's
        own marker)."""
        if not key.startswith(self.prefix) or key == self.prefix:
            return None
        return key[len(self.prefix) :]

    def outer_chunk(self, chunk: ChunkRef, chunk_size: int) -> ChunkRef:
        """`chunk` named by the bucket's key, as other nodes know it."""
        if not self.prefix:
            return chunk
        obj = ObjectRef(self.outer(chunk.obj.key), chunk.obj.version, chunk.obj.size)
        return chunk_ref(obj, chunk.index, chunk_size)


class FolderStore(CloudStore):
    """The store of the keys under `prefix` of `inner`, named without it."""

    def __init__(self, inner: CloudStore, prefix: KeyPrefix) -> None:
        self._inner = inner
        self._keys = prefix
        self.url = f"{inner.url}/{prefix.prefix}"
        self.name_max = inner.name_max
        self.streams_uploads = inner.streams_uploads
        self.checks_puts = inner.checks_puts

    def check_key(self, key: str) -> str:
        self._inner.check_key(self._keys.outer(key))
        return key

    def check_folder(self, path: str) -> str:
        self._inner.check_folder(self._keys.outer(path))
        return path

    def check_length(self, key: str) -> str:
        self._inner.check_length(self._keys.outer(key))
        return key

    async def head(self, key: str) -> ObjectMeta:
        return self._meta(await self._inner.head(self._keys.outer(key)))

    async def get_range(self, key: str, start: int, length: int, version: str) -> Data:
        return await self._inner.get_range(self._keys.outer(key), start, length, version)

    async def put(self, key: str, body: bytes | Path, expect: str | None = None) -> ObjectMeta:
        return self._meta(await self._inner.put(self._keys.outer(key), body, expect))

    async def put_stream(
        self, key: str, parts: AsyncIterator[bytes], size: int | None = None
    ) -> ObjectMeta:
        return self._meta(await self._inner.put_stream(self._keys.outer(key), parts, size))

    async def list(
        self, prefix: str = "", delimiter: bool = True, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        async for page in self._inner.list(self._keys.outer(prefix), delimiter, page_size):
            objects = [self._meta(meta) for meta in page.objects if self._keys.inner(meta.key)]
            prefixes = [inner for p in page.prefixes if (inner := self._keys.inner(p))]
            yield ListPage(objects, prefixes, page.hidden)

    async def delete(self, key: str) -> None:
        await self._inner.delete(self._keys.outer(key))

    async def put_marker(self, prefix: str) -> None:
        await self._inner.put_marker(self._keys.outer(prefix))

    async def delete_marker(self, prefix: str) -> None:
        await self._inner.delete_marker(self._keys.outer(prefix))

    async def copy(
        self, source: str, destination: str, size: int | None = None, version: str | None = None
    ) -> str:
        return await self._inner.copy(
            self._keys.outer(source), self._keys.outer(destination), size, version
        )

    async def copy_through(self, source: str, destination: str, version: str | None = None) -> str:
        return await self._inner.copy_through(
            self._keys.outer(source), self._keys.outer(destination), version
        )

    async def drop_uploads_begun(self, key: str, began: Sequence[float]) -> None:
        await self._inner.drop_uploads_begun(self._keys.outer(key), began)

    async def close(self) -> None:
        await self._inner.close()

    def _meta(self, meta: ObjectMeta) -> ObjectMeta:
        inner = self._keys.inner(meta.key)
        if inner is None:  # a store answered for a key it was not asked about
            raise ObjectNotFoundError(f"{meta.key} is outside {self.url}")
        return replace(meta, key=inner)

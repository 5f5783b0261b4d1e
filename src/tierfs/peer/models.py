"""Queries and answers of the peer API (pydantic v2).

Queries arrive as strings, so they are parsed laxly (`size=5` is 5, `cached_only=1` is
true) but unknown parameters are refused: a typo is a 422 naming it, not a value ignored.
Field names are the parameter names of protocol.py (VERSION_PARAM, SIZE_PARAM, ...).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from tierfs.cache.chunk_cache import HeldChunk
from tierfs.coordinator.models import Count, Version

MAX_PAGE = 1000  # chunks per /api/cache page
ChunkIdText = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="a chunk id")]


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionQuery(_Query):
    """`?version=V`: one version of the object; absent, any (HEAD, DELETE) or the current."""

    version: Version | None = Field(None)


class FileQuery(VersionQuery):
    """The query of `GET /api/files/{path}`; what is absent comes from `cloud.head`."""

    size: Count | None = Field(None)
    cached_only: bool = Field(False)
    chunk_size: Count | None = Field(None)


class PutQuery(_Query):
    """The query of `PUT /api/files/{path}`: the object the chunk belongs to."""

    version: Version
    size: Count


class NoQuery(_Query):
    """No parameters."""


class WarmQuery(_Query):
    """The query of `POST /api/warm`: a file or folder of the mount ("" for all of it),
    and the mount point the asker means, which must be this node's."""

    path: str = Field("", max_length=4096)
    mount: str = Field(max_length=4096)


class CacheQuery(_Query):
    """The query of `GET /api/cache`: the page after chunk `after`, `limit` long."""

    after: ChunkIdText | None = None
    limit: int = Field(100, ge=1, le=MAX_PAGE)


class Health(BaseModel):
    status: str = "ok"
    node_id: str


class HeartbeatAnswer(BaseModel):
    node_id: str
    epoch: int | None = Field(description="the membership epoch this node knows; null: none")


class FileSize(BaseModel):
    path: str
    version: str
    size: int = Field(description="bytes of the object at `version`, as the cloud says")
    cached_bytes: int = Field(description="bytes of it in this node's tier 1")


class Stored(BaseModel):
    path: str
    version: str
    index: int
    size: int


class Dropped(BaseModel):
    path: str
    version: str | None
    chunks: int


class CachePage(BaseModel):
    chunks: list[HeldChunk]  # the cache's own record, as it is
    next: str | None = Field(description="`after` of the next page; null at the end")

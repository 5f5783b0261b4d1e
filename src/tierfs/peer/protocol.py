"""What a chunk request between nodes looks like on the wire: one place for both ends.

A node asks another for one chunk with `GET /api/files/{key}?version=V&size=S` and
`Range: bytes=start-end` covering exactly that chunk. The answer carries the checksum of
the bytes it sends (`CHECKSUM_HEADER`, xxh3-64 hex as `tierfs.chunks.checksum`), which the
asker verifies before it uses or keeps them. `cached_only=1` asks a holder listed by the
coordinator for what it has in tier 1, without reading through to the cloud (404 when it
no longer has it; a chunk it is still writing to tier 1 it sends). The asker names itself
in `PEER_HEADER`: an owner whose tier 1 could not keep a chunk asks the nodes it sent it to
before the cloud. `PUT` with `Content-Range: bytes start-end/size` and the checksum header
hands a chunk to its owner to keep within its peer budget (201; 507 when full).
"""

from __future__ import annotations

from urllib.parse import quote

CHECKSUM_HEADER = "X-Tierfs-Checksum"  # xxh3-64 hex of the body (one whole chunk)
VERSION_HEADER = "X-Tierfs-Version"  # the object version the body belongs to
VERSION_PARAM = "version"
SIZE_PARAM = "size"  # the object's size at that version (saves the server a HEAD)
CACHED_ONLY_PARAM = "cached_only"  # "1": answer from tier 1 or 404, never the cloud
PEER_HEADER = "X-Tierfs-Peer"  # the asking node's id (an owner that cannot keep a chunk asks it)
CHUNK_SIZE_PARAM = "chunk_size"  # the asker's: a node of another chunk size answers 409
FILES_PREFIX = "/api/files/"


def file_url(base: str, key: str) -> str:
    """The URL of object `key` on the node at `base` (`http://host:port`).

    A key ending in `/size` has that slash escaped, so it is not taken for the size
    endpoint of the rest (`GET /api/files/{path}/size`).
    """
    path = quote(key, safe="/")
    if path.endswith("/size"):
        path = path.removesuffix("/size") + "%2Fsize"
    return base + FILES_PREFIX + path


def byte_range(start: int, length: int) -> str:
    """The `Range` header value for bytes [start, start + length)."""
    return f"bytes={start}-{start + length - 1}"


def content_range(start: int, length: int, size: int) -> str:
    """The `Content-Range` header value for bytes [start, start + length) of `size`."""
    return f"bytes {start}-{start + length - 1}/{size}"

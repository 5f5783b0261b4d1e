"""The peer API's request handlers: what a node answers the others (and people).

A chunk request (a range that is exactly one chunk of this node's geometry) is answered
with the whole chunk and its checksum: from the chunk file with sendfile when tier 1
holds it verified, else through `ReadPath.read_for_peer` (tier 1, or a read-through from
the cloud kept in the peer budget). Any other range is streamed chunk by chunk. Paths are
checked with `security.check_path` and used only as object keys: a file is served only
when the cache index knows it as a chunk, so nothing outside the cache is reachable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from tierfs.cache.base import Origin
from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.chunks import ChunkId, ChunkRef, Data, ObjectRef, checksum, chunk_ref, iter_chunks
from tierfs.cloud.base import CloudStore
from tierfs.cloud.folder import KeyPrefix
from tierfs.coordinator.models import Membership
from tierfs.errors import CloudError, InvalidKeyError, ObjectNotFoundError, VersionChangedError
from tierfs.httpapi import ApiError, parse_query
from tierfs.peer import models
from tierfs.peer.metrics import PeerMetrics
from tierfs.peer.protocol import CHECKSUM_HEADER, PEER_HEADER, VERSION_HEADER, content_range
from tierfs.peer.ranges import RangeNotSatisfiableError, parse_content_range, parse_range
from tierfs.read_path import ReadPath
from tierfs.security import check_path, check_peer_id
from tierfs.stats import NodeStats
from tierfs.warm import WarmProgress, warm

log = logging.getLogger(__name__)

CHUNKS_HEADER = "X-Tierfs-Chunks"  # HEAD: chunks of the object this node holds
WARM_PROGRESS_EVERY = 0.5  # seconds between the progress lines of a warm
LARGE_HASH = 2**20  # checksums of buffers from this size run in a thread
OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class PeerNode:
    """What the handlers work with: the node's parts, lent by the client node."""

    cache: DiskChunkCache
    read_path: ReadPath
    cloud: CloudStore
    stats: NodeStats
    chunk_size: int
    node_id: str
    members: Callable[[], Membership | None]
    on_peer_heartbeat: Callable[[str], None]
    metrics: PeerMetrics
    keys: KeyPrefix  # the bucket's names of the node's keys (its `-prefix`)
    mount: str  # the node's mount point


NODE = web.AppKey("node", PeerNode)


@web.middleware
async def cloud_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The cloud's answers as HTTP: gone 404, changed 412, failing 502 (never a 500)."""
    try:
        return await handler(request)
    except ObjectNotFoundError as exc:
        raise ApiError(404, "object_not_found", str(exc)) from None
    except VersionChangedError as exc:
        raise ApiError(412, "version_changed", str(exc)) from None
    except InvalidKeyError as exc:
        raise ApiError(400, "bad_path", str(exc)) from None
    except CloudError as exc:
        log.info("%s %s: the cloud failed: %s", request.method, request.path[:200], exc)
        raise ApiError(502, "cloud_error", str(exc)) from None


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=model.model_dump_json().encode(), content_type="application/json"
    )


def _key(request: web.Request) -> str:
    """The node's key of the request's path, which is the bucket's key of an object."""
    try:
        path = check_path(request.match_info["path"])
    except ValueError as exc:
        raise ApiError(400, "bad_path", f"path: {exc}") from None
    key = request.app[NODE].keys.inner(path)
    if key is None:
        raise ApiError(404, "outside_folder", f"{path} is outside the folder this node mounts")
    return key


def _version(request: web.Request) -> str | None:
    """The `?version=` of a request about a whole object (None: any version)."""
    return parse_query(request, models.VersionQuery).version


def _none_held(key: str) -> ApiError:
    return ApiError(404, "not_cached", f"no chunk of {key} is held here")


def _not_cached(chunk: ChunkRef) -> ApiError:
    return ApiError(404, "not_cached", f"chunk {chunk.index} of {chunk.obj.key} is not held here")


async def _checksum(data: Data) -> str:
    return checksum(data) if len(data) < LARGE_HASH else await asyncio.to_thread(checksum, data)


def _one_chunk(obj: ObjectRef, start: int, end: int, chunk_size: int) -> ChunkRef | None:
    """The chunk [start, end) is, if it is exactly one (a tier-2 chunk request)."""
    if end <= start or start % chunk_size:
        return None
    chunk = chunk_ref(obj, start // chunk_size, chunk_size)
    return chunk if chunk.start + chunk.length == end else None


async def _object(node: PeerNode, key: str, query: models.FileQuery) -> ObjectRef:
    """The object the request means: as given, or completed by a HEAD to the cloud."""
    if query.version is not None and query.size is not None:
        return ObjectRef(key, query.version, query.size)
    meta = await node.cloud.head(key)
    if query.version is not None and meta.version != query.version:
        raise ApiError(
            412,
            "version_changed",
            f"{key} is at another version than {query.version!r:.100}",
            headers={VERSION_HEADER: meta.version},
        )
    return ObjectRef(key, meta.version, meta.size)


class ChunkFileResponse(web.StreamResponse):
    """A whole chunk file, sent with sendfile(2) (asyncio copies instead over TLS)."""

    def __init__(self, file: BinaryIO, size: int, *, status: int, headers: dict[str, str]):
        super().__init__(status=status, headers=headers)
        self._file = file
        self.content_length = size
        self.content_type = OCTETS

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        writer = await super().prepare(request)  # sends the headers
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the peer went away")
        await asyncio.get_running_loop().sendfile(transport, self._file, 0, self.content_length)
        await super().write_eof()
        return writer


# -- /api/files -----------------------------------------------------------------------------


async def get_file(request: web.Request) -> web.StreamResponse:
    """Bytes of an object at a version, honouring one `Range`; a chunk with its checksum."""
    node = request.app[NODE]
    key = _key(request)
    query = parse_query(request, models.FileQuery)
    if query.chunk_size not in (None, node.chunk_size):
        # Its chunks are not ours: answered through the cloud, each would be paid twice.
        raise ApiError(
            409,
            "chunk_size_differs",
            f"this node cuts files into chunks of {node.chunk_size} bytes, not "
            f"{query.chunk_size}: give every node of a cluster the same -chunk-size",
        )
    obj = await _object(node, key, query)
    try:
        span = parse_range(request.headers.get(hdrs.RANGE), obj.size)
    except RangeNotSatisfiableError as exc:
        headers = {hdrs.CONTENT_RANGE: f"bytes */{obj.size}", VERSION_HEADER: obj.version}
        raise ApiError(416, "range_not_satisfiable", str(exc), headers=headers) from None
    start, end = span or (0, obj.size)
    headers = {VERSION_HEADER: obj.version, hdrs.ACCEPT_RANGES: "bytes"}
    if span is not None:
        headers[hdrs.CONTENT_RANGE] = content_range(start, end - start, obj.size)
    status = 200 if span is None else 206
    chunk = _one_chunk(obj, start, end, node.chunk_size)
    if chunk is not None:
        return await _send_chunk(request, node, chunk, status, headers, query.cached_only)
    return await _stream(request, node, obj, (start, end), status, headers, query.cached_only)


async def _send_chunk(
    request: web.Request,
    node: PeerNode,
    chunk: ChunkRef,
    status: int,
    headers: dict[str, str],
    cached_only: bool,
) -> web.StreamResponse:
    async with node.cache.open_verified(chunk) as held:
        if held is not None:
            headers[CHECKSUM_HEADER] = held.checksum
            response = ChunkFileResponse(held.file, held.size, status=status, headers=headers)
            await response.prepare(request)  # sends it all while the entry is pinned
            _served(node, held.size, "sendfile")
            return response
    asker = _asker(request)
    data = await node.read_path.read_for_peer(chunk, cached_only=cached_only, asker=asker)
    if data is None:
        raise _not_cached(chunk)
    headers[CHECKSUM_HEADER] = await _checksum(data)
    _served(node, len(data), "buffer")
    return web.Response(status=status, body=data, headers=headers, content_type=OCTETS)


def _asker(request: web.Request) -> str | None:
    """The asking node's id (`PEER_HEADER`); None when it gave none, or not a peer id."""
    asker = request.headers.get(PEER_HEADER)
    try:
        return None if asker is None else check_peer_id(asker)
    except ValueError:
        return None


def _served(node: PeerNode, size: int, via: str) -> None:
    node.stats.served_to_peers += 1
    node.stats.served_to_peers_bytes += size
    node.metrics.served(via)


async def _stream(
    request: web.Request,
    node: PeerNode,
    obj: ObjectRef,
    span: tuple[int, int],
    status: int,
    headers: dict[str, str],
    cached_only: bool,
) -> web.StreamResponse:
    """Bytes [start, end) chunk by chunk: one chunk in memory at a time. The first chunk
    comes before the headers go, so its errors still get their status; a later failure
    can only cut the connection (the asker sees a short body)."""
    start, end = span
    if cached_only and not all(
        node.cache.holds(c.id) for c in iter_chunks(obj, start, end - start, node.chunk_size)
    ):
        raise ApiError(404, "not_cached", f"{obj.key} is not all held here")
    # made as they are sent: a request may give any size, and no list of them is kept
    chunks = iter_chunks(obj, start, end - start, node.chunk_size)

    async def piece(chunk: ChunkRef) -> memoryview:
        data = await node.read_path.read_for_peer(chunk, cached_only=cached_only)
        if data is None:
            raise _not_cached(chunk)
        lo = max(start, chunk.start) - chunk.start
        hi = min(end, chunk.start + chunk.length) - chunk.start
        return memoryview(data)[lo:hi]

    first_chunk = next(chunks, None)
    first = await piece(first_chunk) if first_chunk is not None else memoryview(b"")
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    response.content_type = OCTETS
    await response.prepare(request)
    try:
        await response.write(first)
        for chunk in chunks:
            await response.write(await piece(chunk))
    except (CloudError, ApiError) as exc:
        log.info("GET %s cut short after the headers: %s", obj.key[:200], exc)
        if request.transport is not None:
            request.transport.close()
    except ConnectionResetError:  # nobody to tell
        log.info("GET %s: the asker left before the end", obj.key[:200])
    return response


async def put_file(request: web.Request) -> web.Response:
    """Keep one chunk handed over by its writer, within the peer budget (201, 507 full)."""
    node = request.app[NODE]
    key = _key(request)
    query = parse_query(request, models.PutQuery)
    if request.content_length is not None and request.content_length > node.chunk_size:
        raise ApiError(413, "body_too_large", f"a chunk is at most {node.chunk_size} bytes")
    obj = ObjectRef(key, query.version, query.size)
    try:
        start, end, size = parse_content_range(request.headers.get(hdrs.CONTENT_RANGE))
    except ValueError as exc:
        raise ApiError(400, "bad_content_range", str(exc)) from None
    chunk = _one_chunk(obj, start, end, node.chunk_size) if size == obj.size else None
    if chunk is None:
        message = f"bytes {start}-{end - 1}/{size} is not one chunk of {node.chunk_size} bytes"
        raise ApiError(400, "not_a_chunk", f"{message} of a {obj.size}-byte object")
    expected = request.headers.get(CHECKSUM_HEADER)
    if expected is None:
        raise ApiError(400, "no_checksum", f"a chunk comes with its {CHECKSUM_HEADER}")
    data = await request.read()  # at most client_max_size (the chunk size), else 413
    if len(data) != chunk.length:
        raise ApiError(400, "wrong_length", f"got {len(data)} bytes, not {chunk.length}")
    if await _checksum(data) != expected.strip().lower():
        raise ApiError(422, "checksum_mismatch", f"the body does not match {CHECKSUM_HEADER}")
    if not await node.cache.store(chunk, data, Origin.PEER):
        raise ApiError(507, "no_room", f"no room for chunk {chunk.index} of {key} here")
    return _json(
        models.Stored(
            path=node.keys.outer(key), version=obj.version, index=chunk.index, size=len(data)
        ),
        201,
    )


async def delete_file(request: web.Request) -> web.Response:
    """Drop this node's chunks of an object (one version, or all)."""
    node, key, version = request.app[NODE], _key(request), _version(request)
    dropped = await node.cache.forget_object(key, version)
    if not dropped:
        raise _none_held(key)
    return _json(models.Dropped(path=node.keys.outer(key), version=version, chunks=dropped))


async def head_file(request: web.Request) -> web.Response:
    """200 when this node holds a chunk of the object (of that version, or its most
    recently used one), with the version and how many chunks; 404 otherwise."""
    node, key, version = request.app[NODE], _key(request), _version(request)
    held = await node.cache.chunks_of(key, version)
    if not held:
        raise _none_held(key)
    latest = max(held, key=lambda c: c.last_access).version
    count = sum(1 for c in held if c.version == latest)
    return web.Response(headers={VERSION_HEADER: latest, CHUNKS_HEADER: str(count)})


async def file_size(request: web.Request) -> web.Response:
    """The object's size (from the cloud) and the bytes of it this node holds.

    Registered before `/api/files/{path}`, so `GET /api/files/a/size` is the size of `a`;
    the object `a/size` itself is `GET /api/files/a%2Fsize` (an encoded last slash).
    """
    node = request.app[NODE]
    key = _key(request)
    parse_query(request, models.NoQuery)
    meta = await node.cloud.head(key)
    held = await node.cache.chunks_of(key, meta.version)
    cached = sum(c.size for c in held)
    return _json(
        models.FileSize(
            path=node.keys.outer(key), version=meta.version, size=meta.size, cached_bytes=cached
        )
    )


# -- /api/warm ------------------------------------------------------------------------------


async def warm_files(request: web.Request) -> web.StreamResponse:
    """Bring a file or folder of the node's mount into its tier 1 (`tierfs warm`). The
    answer is one JSON line of progress every WARM_PROGRESS_EVERY seconds while it works;
    the last has `done` true, or `error`."""
    node = request.app[NODE]
    query = parse_query(request, models.WarmQuery)
    if query.mount != node.mount:
        raise ApiError(409, "another_mount", f"this node mounts {node.mount}, not {query.mount}")
    path = query.path.strip("/")
    if path:
        try:
            check_path(path)
        except ValueError as exc:
            raise ApiError(400, "bad_path", f"path: {exc}") from None
    progress = WarmProgress()
    task = asyncio.create_task(warm(node.cloud, node.read_path, path, progress))
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/x-ndjson"})
    await response.prepare(request)
    try:
        while not task.done():
            await asyncio.wait([task], timeout=WARM_PROGRESS_EVERY)
            line: dict[str, object] = dataclasses.asdict(progress)
            if task.done():
                error = task.exception()
                line |= {"done": error is None} | ({"error": str(error)} if error else {})
            await response.write(json.dumps(line).encode() + b"\n")
    finally:
        task.cancel()  # the asker went away: stop
    return response


# -- the rest -------------------------------------------------------------------------------


async def list_peers(request: web.Request) -> web.Response:
    """The membership this node last heard from the coordinator."""
    membership = request.app[NODE].members()
    if membership is None:
        return web.json_response({"epoch": None, "peers": []})
    return _json(membership)


async def heartbeat(request: web.Request) -> web.Response:
    """Another node says it is alive."""
    node = request.app[NODE]
    try:
        peer_id = check_peer_id(request.match_info["peer_id"])
    except ValueError as exc:
        raise ApiError(400, "bad_peer_id", str(exc)) from None
    node.on_peer_heartbeat(peer_id)
    membership = node.members()
    epoch = None if membership is None else membership.epoch
    return _json(models.HeartbeatAnswer(node_id=node.node_id, epoch=epoch))


async def list_cache(request: web.Request) -> web.Response:
    """One page of the chunks in tier 1, in id order, named by the bucket's keys."""
    query = parse_query(request, models.CacheQuery)
    after = None if query.after is None else ChunkId(query.after)
    node = request.app[NODE]
    held, after_last = await node.cache.page(after, query.limit)
    named = [dataclasses.replace(chunk, key=node.keys.outer(chunk.key)) for chunk in held]
    return _json(models.CachePage(chunks=named, next=after_last))


async def cache_stats(request: web.Request) -> web.Response:
    """The node's counters and, per budget (origin), bytes used and allowed and chunks."""
    node = request.app[NODE]
    parse_query(request, models.NoQuery)
    budgets = {
        str(origin): {
            "used": node.cache.used(origin),
            "limit": node.cache.limit(origin),
            "chunks": node.cache.count(origin),
        }
        for origin in Origin
    }
    return web.json_response({**node.stats.as_dict(), "budgets": budgets})


async def health(request: web.Request) -> web.Response:
    """Open without the token."""
    return _json(models.Health(node_id=request.app[NODE].node_id))


async def metrics(request: web.Request) -> web.Response:
    body = request.app[NODE].metrics.render()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})

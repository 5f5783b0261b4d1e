"""The peer API served for real on loopback, over a real tier 1 and a real SeaweedFS bucket:
chunk answers (cloud once, then tier 1, then sendfile), ranges, versions, PUT within the
peer budget, DELETE/HEAD, the listings, metrics, the token, and hostile paths; and the
asking side (`PeerFetcher`) between such a node and an owner that lies."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

import servers
from certs import self_signed
from cloud_targets import target_flags
from coordinators import start_coordinator
from tierfs.cache.base import Origin
from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.chunks import ObjectRef, checksum, chunk_ref
from tierfs.cloud.base import CloudStore
from tierfs.cloud.folder import KeyPrefix
from tierfs.cloud.providers import open_store
from tierfs.coordinator.client import CoordinatorClient, NodeReport
from tierfs.coordinator.models import Membership, PeerInfo, TierBytes
from tierfs.httpapi import start_site
from tierfs.peer import app as peer_app
from tierfs.peer.app import create_app
from tierfs.peer.fetcher import MAX_REPLY, PeerFetcher
from tierfs.peer.protocol import (
    CHECKSUM_HEADER,
    VERSION_HEADER,
    byte_range,
    content_range,
    file_url,
)
from tierfs.peer.ring import rank
from tierfs.read_path import ReadPath
from tierfs.settings import ClientSettings, load_settings
from tierfs.stats import NodeStats, Tier

KiB = 2**10
CHUNK = 64 * KiB
SIZE = 3 * CHUNK + 1000  # four chunks, the last one short
TOKEN = "peer-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.asyncio


@dataclass
class Node:
    """One node's peer API on loopback, its parts, and a client for it."""

    url: str
    http: aiohttp.ClientSession
    cache: DiskChunkCache
    stats: NodeStats
    cloud: CloudStore
    read_path: ReadPath
    server: servers.S3Server
    bucket: str
    heartbeats: list[str] = field(default_factory=list)
    membership: Membership | None = None

    async def put_object(self, key: str, body: bytes) -> ObjectRef:
        meta = await self.cloud.put(key, body)
        return ObjectRef(key, meta.version, meta.size)

    async def cloud_gets(self) -> int:
        """GETs (and HEADs) the bucket's server answered, once the count has settled."""
        return await asyncio.to_thread(self.server.settled_request_count, "GET", self.bucket)

    async def kept(self, ref: ObjectRef, index: int) -> None:
        """Wait until tier 1 holds the chunk (a chunk read through is stored behind its answer)."""
        chunk = chunk_ref(ref, index, CHUNK)
        for _ in range(200):
            if self.cache.holds(chunk.id):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"chunk {index} of {ref.key} not kept")

    def get_chunk(self, ref: ObjectRef, index: int, *, cached_only: bool = False) -> Any:
        chunk = chunk_ref(ref, index, CHUNK)
        params = {"version": ref.version, "size": str(ref.size)}
        if cached_only:
            params["cached_only"] = "1"
        headers = {"Range": byte_range(chunk.start, chunk.length)}
        return self.http.get(f"/api/files/{ref.key}", params=params, headers=headers)

    async def served(self) -> dict[str, float]:
        """The `tierfs_node_served_chunks` counter by `via`, from /metrics."""
        async with self.http.get("/metrics") as answer:
            text = await answer.text()
        return {
            sample.labels["via"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "tierfs_node_served_chunks"
            for sample in family.samples
            if sample.name.endswith("_total")
        }


OpenNode = Callable[..., Awaitable[Node]]


@pytest_asyncio.fixture
async def open_node(seaweedfs: servers.S3Server, tmp_path: Path) -> AsyncIterator[OpenNode]:
    """Start nodes (each on a fresh bucket and its own tier 1); all stopped at the end."""
    cleanups: list[Callable[[], Awaitable[object]]] = []

    async def open_(
        *, peer_size: int = 64 * CHUNK, nvme_size: int = 64 * CHUNK, tls: bool = False
    ) -> Node:
        """With `tls`, served by `peer.app.start_site` from client settings, as the client
        node does, on a self-signed certificate; else on any free port."""
        root = tmp_path / f"node{len(cleanups)}"
        root.mkdir()
        given, environ = target_flags("s3", seaweedfs, root)
        if tls:
            cert, key = self_signed(root)
            given |= {"listen": "127.0.0.1", "port": str(free_port())}
            given |= {"tls_cert": str(cert), "tls_key": str(key)}
        config = load_settings(ClientSettings, given, environ)
        cloud = open_store(config)
        cleanups.append(cloud.close)
        stats = NodeStats()
        cache = await DiskChunkCache.create(
            root / "nvme", nvme_size=nvme_size, peer_size=peer_size, stats=stats
        )
        cleanups.append(cache.close)
        read_path = ReadPath(cache, cloud, chunk_size=CHUNK, stats=stats)
        cleanups.append(read_path.close)
        heartbeats: list[str] = []
        app = create_app(
            cache=cache,
            read_path=read_path,
            cloud=cloud,
            stats=stats,
            chunk_size=CHUNK,
            node_id="node-a",
            members=lambda: node.membership,  # set below, before any request
            token=TOKEN,
            on_peer_heartbeat=heartbeats.append,
            keys=KeyPrefix(),
            mount="/mnt/tierfs",
        )
        if tls:
            runner = await peer_app.start_site(app, config)
            trust = ssl.create_default_context(cafile=str(config.tls_cert))
            connector = aiohttp.TCPConnector(ssl=trust)
        else:
            runner = await start_site(app, "127.0.0.1", 0, ssl_context=None)
            connector = None
        cleanups.append(runner.cleanup)
        host, port = runner.addresses[0][:2]
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        http = aiohttp.ClientSession(url, headers=AUTH, connector=connector)
        cleanups.append(http.close)
        node = Node(
            url, http, cache, stats, cloud, read_path, seaweedfs, config.s3_bucket, heartbeats
        )
        return node

    yield open_
    for cleanup in reversed(cleanups):
        await cleanup()


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- chunk answers -----------------------------------------------------------------------------


async def test_a_chunk_comes_from_the_cloud_once_then_from_tier_1_by_sendfile(
    open_node: OpenNode,
) -> None:
    node = await open_node()
    body = random_bytes(SIZE, 1)
    ref = await node.put_object("data/a.bin", body)
    want = body[CHUNK : 2 * CHUNK]
    before = await node.cloud_gets()

    vias = []
    for _ in range(3):
        async with node.get_chunk(ref, 1) as answer:
            assert answer.status == 206
            assert await answer.read() == want
            assert answer.headers[CHECKSUM_HEADER] == checksum(want)
            assert answer.headers[VERSION_HEADER] == ref.version
            assert answer.headers["Content-Range"] == content_range(CHUNK, CHUNK, SIZE)
        vias.append(await node.served())
        await node.kept(ref, 1)
        if len(vias) == 1:
            assert await node.cloud_gets() == before + 1  # one ranged GET, no HEAD
    # from the cloud, then tier 1 (its checksum checked on that first read), then sendfile
    assert vias == [{"buffer": 1}, {"buffer": 2}, {"buffer": 2, "sendfile": 1}]
    assert await node.cloud_gets() == before + 1
    assert node.stats.served_to_peers == 3 and node.stats.served_to_peers_bytes == 3 * CHUNK
    assert node.stats.tier(Tier.CLOUD).hits == 1 and node.stats.tier(Tier.LOCAL).hits == 2
    assert node.cache.used(Origin.PEER) == CHUNK and node.cache.used(Origin.LOCAL) == 0


async def test_the_short_last_chunk_and_a_one_chunk_object(open_node: OpenNode) -> None:
    node = await open_node()
    body = random_bytes(SIZE, 2)
    ref = await node.put_object("data/b.bin", body)
    for _ in range(3):  # cloud, tier 1, sendfile
        async with node.get_chunk(ref, 3) as answer:
            assert answer.status == 206 and await answer.read() == body[3 * CHUNK :]
            assert answer.headers[CHECKSUM_HEADER] == checksum(body[3 * CHUNK :])
        await node.kept(ref, 3)
    assert await node.served() == {"buffer": 2, "sendfile": 1}
    small = await node.put_object("data/small.bin", b"tiny")
    async with node.http.get("/api/files/data/small.bin") as answer:  # no version: a HEAD
        assert answer.status == 200 and await answer.read() == b"tiny"
        assert answer.headers[CHECKSUM_HEADER] == checksum(b"tiny")
        assert answer.headers[VERSION_HEADER] == small.version


async def test_cached_only_is_404_without_touching_the_cloud(open_node: OpenNode) -> None:
    node = await open_node()
    ref = await node.put_object("data/c.bin", random_bytes(SIZE, 3))
    before = await node.cloud_gets()
    async with node.get_chunk(ref, 2, cached_only=True) as answer:
        assert answer.status == 404
        assert (await answer.json())["error"] == "not_cached"
    async with node.get_chunk(ref, 2) as answer:
        assert answer.status == 206
    await node.kept(ref, 2)
    async with node.get_chunk(ref, 2, cached_only=True) as answer:
        assert answer.status == 206
    assert await node.cloud_gets() == before + 1


# -- other ranges ------------------------------------------------------------------------------


RANGES = [
    ("bytes=100-200", 100, 201),
    (f"bytes={CHUNK - 10}-{3 * CHUNK + 5}", CHUNK - 10, 3 * CHUNK + 6),  # across four chunks
    ("bytes=5000-", 5000, SIZE),
    ("bytes=-1500", SIZE - 1500, SIZE),
    (f"bytes=0-{10 * SIZE}", 0, SIZE),  # clipped
]


async def test_any_range_and_the_whole_object(open_node: OpenNode) -> None:
    node = await open_node()
    body = random_bytes(SIZE, 4)
    ref = await node.put_object("data/d.bin", body)
    params = {"version": ref.version, "size": str(ref.size)}
    for header, start, end in RANGES:
        async with node.http.get(
            "/api/files/data/d.bin", params=params, headers={"Range": header}
        ) as answer:
            assert answer.status == 206, header
            assert await answer.read() == body[start:end], header
            assert answer.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
            assert CHECKSUM_HEADER not in answer.headers
            assert answer.headers[VERSION_HEADER] == ref.version
    async with node.http.get("/api/files/data/d.bin") as answer:
        assert answer.status == 200 and await answer.read() == body
        assert "Content-Range" not in answer.headers
    for header in (f"bytes={SIZE}-", "bytes=-0", "bytes=0-1,5-9", "bytes=9-1", "items=0-1"):
        async with node.http.get(
            "/api/files/data/d.bin", params=params, headers={"Range": header}
        ) as answer:
            assert answer.status == 416, header
            assert answer.headers["Content-Range"] == f"bytes */{SIZE}"
            assert (await answer.json())["error"] == "range_not_satisfiable"
    for index in range(4):  # the chunks read on the way are kept in the peer budget
        await node.kept(ref, index)
    assert node.cache.count(Origin.PEER) == 4


async def test_versions_and_missing_objects(open_node: OpenNode) -> None:
    node = await open_node()
    old = await node.put_object("data/e.bin", random_bytes(SIZE, 5))
    new = await node.put_object("data/e.bin", random_bytes(SIZE, 6))
    async with node.get_chunk(old, 0) as answer:  # pinned to the old version: If-Match fails
        assert answer.status == 412 and (await answer.json())["error"] == "version_changed"
    params = {"version": old.version}  # no size: the HEAD tells the version moved on
    async with node.http.get("/api/files/data/e.bin", params=params) as answer:
        assert answer.status == 412 and answer.headers[VERSION_HEADER] == new.version
    async with node.get_chunk(new, 0) as answer:
        assert answer.status == 206
    async with node.http.get("/api/files/data/absent.bin") as answer:
        assert answer.status == 404 and (await answer.json())["error"] == "object_not_found"
    gone = ObjectRef("data/absent.bin", old.version, SIZE)
    async with node.get_chunk(gone, 1) as answer:
        assert answer.status == 404
    for query in ("size=-1", "size=x", "cached_only=maybe", "colour=red", "version="):
        async with node.http.get(f"/api/files/data/e.bin?{query}") as answer:
            assert answer.status == 422, query


async def test_an_asker_of_another_chunk_size_is_409_without_touching_the_cloud(
    open_node: OpenNode,
) -> None:
    node = await open_node()
    ref = await node.put_object("data/o.bin", random_bytes(SIZE, 15))
    before = await node.cloud_gets()
    chunk = chunk_ref(ref, 1, CHUNK)
    params = {"version": ref.version, "size": str(ref.size)}
    for chunk_size, status in ((2 * CHUNK, 409), (CHUNK, 206)):
        async with node.http.get(
            f"/api/files/{ref.key}",
            params={**params, "chunk_size": str(chunk_size)},
            headers={"Range": byte_range(chunk.start, chunk.length)},
        ) as answer:
            assert answer.status == status, chunk_size
            if status == 409:
                assert (await answer.json())["error"] == "chunk_size_differs"
                assert await node.cloud_gets() == before
    assert await node.cloud_gets() == before + 1


async def test_a_wrong_size_given_with_the_version_never_changes_the_true_bytes(
    open_node: OpenNode,
) -> None:
    """The size a request gives is taken as told (no HEAD): a wrong one reads, keeps and
    answers chunks of its own, and the object's true chunks read right after it."""
    node = await open_node()
    body = random_bytes(SIZE, 12)
    ref = await node.put_object("data/l.bin", body)
    wrong = ObjectRef(ref.key, ref.version, CHUNK + 1000)  # its chunk 1: 1000 bytes
    async with node.get_chunk(wrong, 1) as answer:
        assert answer.status == 206 and await answer.read() == body[CHUNK : CHUNK + 1000]
    await node.kept(wrong, 1)
    async with node.get_chunk(ref, 1) as answer:
        assert answer.status == 206 and await answer.read() == body[CHUNK : 2 * CHUNK]
    params = {"version": ref.version, "size": str(ref.size)}
    async with node.http.get(f"/api/files/{ref.key}", params=params) as answer:
        assert answer.status == 200 and await answer.read() == body
    assert await node.read_path.read(ref, 0, SIZE) == body  # the node's own reads


async def test_any_size_given_is_answered_at_once(open_node: OpenNode) -> None:
    """A size of 2**63 - 1 (8 EiB: 2**47 chunks) is answered as far as the object goes,
    never by listing its chunks first."""
    node = await open_node()
    ref = await node.put_object("data/m.bin", random_bytes(1000, 13))
    huge = {"version": ref.version, "size": str(2**63 - 1)}
    answers = [
        ("data/absent.bin", "0", 404, "object_not_found"),
        (ref.key, "0", 502, "cloud_error"),  # its chunk 0 is shorter than a chunk
        ("data/absent.bin", "1", 404, "not_cached"),
        (ref.key, "1", 404, "not_cached"),
    ]
    async with asyncio.timeout(10):
        for key, cached_only, status, error in answers:
            params = {**huge, "cached_only": cached_only}
            async with node.http.get(f"/api/files/{key}", params=params) as answer:
                assert answer.status == status, (key, cached_only)
                assert (await answer.json())["error"] == error, (key, cached_only)


# -- PUT, DELETE, HEAD, size -------------------------------------------------------------------


async def put_chunk(
    node: Node,
    ref: ObjectRef,
    index: int,
    data: bytes,
    *,
    digest: str | None = None,
) -> aiohttp.ClientResponse:
    chunk = chunk_ref(ref, index, CHUNK)
    headers = {
        "Content-Range": content_range(chunk.start, chunk.length, ref.size),
        CHECKSUM_HEADER: digest or checksum(data),
    }
    params = {"version": ref.version, "size": str(ref.size)}
    async with node.http.put(
        f"/api/files/{ref.key}", params=params, headers=headers, data=data
    ) as answer:
        await answer.read()
        return answer


async def test_put_keeps_a_chunk_in_the_peer_budget(open_node: OpenNode) -> None:
    node = await open_node()
    ref = ObjectRef("written/f.bin", "v-1", SIZE)  # not in the cloud: the writer hands it over
    body = random_bytes(SIZE, 7)
    answer = await put_chunk(node, ref, 1, body[CHUNK : 2 * CHUNK])
    assert answer.status == 201
    assert node.cache.used(Origin.PEER) == CHUNK
    async with node.get_chunk(ref, 1, cached_only=True) as got:
        assert got.status == 206 and await got.read() == body[CHUNK : 2 * CHUNK]
    # refused: wrong checksum, a chunk of the wrong length, a range that is not one chunk
    bad = await put_chunk(node, ref, 2, body[2 * CHUNK : 3 * CHUNK], digest="0" * 16)
    assert bad.status == 422
    short = await put_chunk(node, ref, 2, body[2 * CHUNK : 3 * CHUNK - 1])
    assert short.status == 400
    headers = {"Content-Range": f"bytes 0-99/{SIZE}", CHECKSUM_HEADER: checksum(body[:100])}
    params = {"version": ref.version, "size": str(SIZE)}
    async with node.http.put(
        "/api/files/written/f.bin", params=params, headers=headers, data=body[:100]
    ) as answer:
        assert answer.status == 400 and (await answer.json())["error"] == "not_a_chunk"
    # a body over one chunk: 413 from its Content-Length, or while reading a chunked one
    async with node.http.put(
        "/api/files/written/f.bin", params=params, headers=headers, data=b"x" * (CHUNK + 1)
    ) as answer:
        assert answer.status == 413 and (await answer.json())["error"] == "body_too_large"

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * CHUNK

    first = chunk_ref(ref, 0, CHUNK)
    headers = {
        "Content-Range": content_range(0, CHUNK, SIZE),
        CHECKSUM_HEADER: checksum(body[:CHUNK]),
    }
    async with node.http.put(
        "/api/files/written/f.bin", params=params, headers=headers, data=stream()
    ) as answer:
        assert answer.status == 413
    assert not node.cache.holds(first.id)
    assert node.cache.count(Origin.PEER) == 1


async def test_put_is_507_when_the_peer_budget_cannot_take_it(open_node: OpenNode) -> None:
    node = await open_node(peer_size=CHUNK // 2)
    ref = ObjectRef("written/g.bin", "v-1", SIZE)
    answer = await put_chunk(node, ref, 0, random_bytes(CHUNK, 8))
    assert answer.status == 507
    assert node.cache.count(Origin.PEER) == 0


async def test_delete_head_and_size(open_node: OpenNode) -> None:
    node = await open_node()
    body = random_bytes(SIZE, 9)
    ref = await node.put_object("data/h.bin", body)
    async with node.http.head("/api/files/data/h.bin") as answer:
        assert answer.status == 404  # in the cloud, but not held here
    async with node.http.get("/api/files/data/h.bin/size") as answer:
        assert await answer.json() == {
            "path": "data/h.bin",
            "version": ref.version,
            "size": SIZE,
            "cached_bytes": 0,
        }
    for index in (0, 3):
        async with node.get_chunk(ref, index) as answer:
            assert answer.status == 206
        await node.kept(ref, index)
    async with node.http.head("/api/files/data/h.bin") as answer:
        assert answer.status == 200
        assert answer.headers[VERSION_HEADER] == ref.version
        assert answer.headers["X-Tierfs-Chunks"] == "2"
    async with node.http.head("/api/files/data/h.bin", params={"version": "other"}) as answer:
        assert answer.status == 404
    async with node.http.get("/api/files/data/h.bin/size") as answer:
        assert (await answer.json())["cached_bytes"] == CHUNK + 1000

    async with node.http.delete("/api/files/data/h.bin", params={"version": "other"}) as answer:
        assert answer.status == 404
    async with node.http.delete("/api/files/data/h.bin") as answer:
        assert answer.status == 200 and (await answer.json())["chunks"] == 2
    async with node.http.delete("/api/files/data/h.bin") as answer:
        assert answer.status == 404
    async with node.http.head("/api/files/data/h.bin") as answer:
        assert answer.status == 404
    assert node.cache.used(Origin.PEER) == 0 and len(node.cache) == 0


async def test_an_object_named_size_is_reached_with_an_encoded_slash(open_node: OpenNode) -> None:
    node = await open_node()
    ref = await node.put_object("dir/size", b"not a size answer")
    url = file_url(node.url, "dir/size")  # as the fetcher asks for it
    assert url == node.url + "/api/files/dir%2Fsize"
    async with aiohttp.ClientSession(headers=AUTH) as session, session.get(url) as answer:
        assert answer.status == 200 and await answer.read() == b"not a size answer"
        assert answer.headers[VERSION_HEADER] == ref.version
    async with node.http.get("/api/files/dir/size") as answer:  # the size of "dir": none
        assert answer.status == 404 and (await answer.json())["error"] == "object_not_found"


# -- listings, stats, metrics, membership ------------------------------------------------------


async def test_cache_listing_pages_and_stats(open_node: OpenNode) -> None:
    node = await open_node()
    ref = ObjectRef("written/i.bin", "v-9", SIZE)
    body = random_bytes(SIZE, 10)
    for index in range(4):
        chunk = chunk_ref(ref, index, CHUNK)
        data = body[chunk.start : chunk.start + chunk.length]
        assert (await put_chunk(node, ref, index, data)).status == 201
    seen: list[dict[str, object]] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"limit": "3"} | ({"after": after} if after else {})
        async with node.http.get("/api/cache", params=params) as answer:
            page = await answer.json()
        seen.extend(page["chunks"])
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert pages == 2
    assert [c["id"] for c in seen] == sorted(chunk_ref(ref, i, CHUNK).id for i in range(4))
    assert {(c["key"], c["version"], c["index"]) for c in seen} == {
        ("written/i.bin", "v-9", i) for i in range(4)
    }
    assert all(c["origin"] == "peer" and c["hits"] == 0 for c in seen)
    assert sum(int(str(c["size"])) for c in seen) == SIZE
    for query in ("limit=0", "limit=1001", "after=../x", "limit=many"):
        async with node.http.get(f"/api/cache?{query}") as answer:
            assert answer.status == 422, query

    async with node.http.get("/api/cache/stats") as answer:
        stats = await answer.json()
    assert stats["budgets"]["peer"] == {"used": SIZE, "limit": 64 * CHUNK, "chunks": 4}
    assert stats["budgets"]["local"]["chunks"] == 0
    assert stats["tiers"]["local"]["hits"] == 0 and stats["served_to_peers"] == 0


async def test_metrics(open_node: OpenNode) -> None:
    node = await open_node()
    ref = await node.put_object("data/j.bin", random_bytes(SIZE, 11))
    async with node.get_chunk(ref, 0) as answer:
        assert answer.status == 206
    await node.kept(ref, 0)
    async with node.http.get("/metrics") as answer:
        assert answer.status == 200
        families = {f.name: f for f in text_string_to_metric_families(await answer.text())}
    cloud_hits = {
        s.labels["tier"]: s.value
        for s in families["tierfs_node_tier_hits"].samples
        if s.name.endswith("_total")
    }
    assert cloud_hits == {"local": 0, "peer": 0, "cloud": 1}
    served = [s for s in families["tierfs_node_served_to_peers"].samples]
    assert served[0].value == 1
    used = {s.labels["origin"]: s.value for s in families["tierfs_node_cache_used_bytes"].samples}
    assert used == {"local": 0, "peer": CHUNK}
    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in families["tierfs_node_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/api/files/{path}", "GET", "206")] == 1
    for name in (
        "tierfs_node_evictions",
        "tierfs_node_corrupt_chunks",
        "tierfs_node_request_seconds",
    ):
        assert name in families


async def test_peers_and_heartbeats(open_node: OpenNode) -> None:
    node = await open_node()
    async with node.http.get("/api/peers") as answer:
        assert await answer.json() == {"epoch": None, "peers": []}
    async with node.http.post("/api/peers/node-b/heartbeat") as answer:
        assert await answer.json() == {"node_id": "node-a", "epoch": None}
    peer = PeerInfo(
        peer_id="node-b",
        address="127.0.0.1:9",
        status="active",
        capacity=TierBytes(local=1, peer=2),
        usage=TierBytes(local=0, peer=0),
        registered_at=1.0,
        last_heartbeat=2.0,
    )
    node.membership = Membership(epoch=7, heartbeat_interval=5, peer_expiry=15, peers=[peer])
    async with node.http.get("/api/peers") as answer:
        assert Membership.model_validate(await answer.json()) == node.membership
    async with node.http.post("/api/peers/node-c/heartbeat") as answer:
        assert await answer.json() == {"node_id": "node-a", "epoch": 7}
    for bad in ("a%20b", "x" * 129, "%2e%2e", "a%00"):
        url = URL(f"{node.url}/api/peers/{bad}/heartbeat", encoded=True)
        async with node.http.post(url) as answer:
            assert answer.status == 400, bad
            assert (await answer.json())["error"] == "bad_peer_id"
    assert node.heartbeats == ["node-b", "node-c"]


# -- security ----------------------------------------------------------------------------------


async def test_the_token_is_needed_everywhere_but_health(open_node: OpenNode) -> None:
    node = await open_node()
    async with aiohttp.ClientSession(node.url) as anonymous:
        for method, path in [
            ("GET", "/api/files/a.bin"),
            ("PUT", "/api/files/a.bin"),
            ("DELETE", "/api/files/a.bin"),
            ("HEAD", "/api/files/a.bin"),
            ("GET", "/api/cache"),
            ("GET", "/api/cache/stats"),
            ("GET", "/api/peers"),
            ("POST", "/api/peers/x/heartbeat"),
            ("GET", "/metrics"),
        ]:
            async with anonymous.request(method, path) as answer:
                assert answer.status == 401, (method, path)
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer nope"}
        async with anonymous.get("/api/cache", headers=wrong) as answer:
            assert answer.status == 401 and (await answer.json())["error"] == "wrong_token"
        async with anonymous.get("/api/health") as answer:
            assert answer.status == 200
            assert await answer.json() == {"status": "ok", "node_id": "node-a"}


async def raw_get(url: str, target: bytes) -> tuple[int, bytes]:
    """Send `GET target` as it is (no client normalization) and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


HOSTILE = [
    b"/api/files/../../secret.txt",  # aiohttp routes dot segments as they come
    b"/api/files/a/../../../etc/passwd",
    b"/api/files/a%2F..%2F..%2Fsecret.txt",
    b"/api/files/%2e%2e/%2e%2e/secret.txt",
    b"/api/files/..%2f..%2fsecret.txt",
    b"/api/files/a/%2E%2E/%2E%2E/%2E%2E/secret.txt",
    b"/api/files//etc/passwd",
    b"/api/files/%2fetc%2fpasswd",
    b"/api/files/a//b",
    b"/api/files/a/./b",
    b"/api/files/a%00b",
    b"/api/files/a%00/size",
    b"/api/files/" + b"x" * 5000,
    b"/api/files/" + b"x/" * 2100 + b"y/size",
]


async def test_hostile_paths_are_400_and_nothing_outside_is_served(
    open_node: OpenNode, tmp_path: Path
) -> None:
    node = await open_node()
    secret = b"the secret outside the cache " * 10
    (tmp_path / "secret.txt").write_bytes(secret)
    (tmp_path / "node0" / "secret.txt").write_bytes(secret)
    (tmp_path / "node0" / "nvme" / "secret.txt").write_bytes(secret)
    for target in HOSTILE:
        status, body = await raw_get(node.url, target)
        assert status == 400, target[:80]
        assert b'"bad_path"' in body and b"secret" not in body
    for method in ("PUT", "DELETE", "HEAD"):
        url = URL(node.url + "/api/files/%2e%2e/secret.txt", encoded=True)
        async with node.http.request(method, url) as answer:
            assert answer.status == 400, method
    for path in ("../secret.txt", "a/../../secret.txt", "a\x00b", "a//b"):
        params = {"path": path, "mount": "/mnt/tierfs"}
        async with node.http.post("/api/warm", params=params) as answer:
            assert answer.status == 400, path
            assert b"secret" not in await answer.read()
    async with node.http.post("/api/warm", params={"mount": "/elsewhere"}) as answer:
        assert answer.status == 409  # another node's mount: nothing is warmed


# -- the cache's eviction callback -------------------------------------------------------------


async def test_on_evicted_tells_every_chunk_that_leaves(tmp_path: Path) -> None:
    cache = await DiskChunkCache.create(
        tmp_path / "nvme", nvme_size=2 * CHUNK, peer_size=CHUNK, stats=NodeStats()
    )
    left: list[tuple[str, str, int]] = []
    cache.on_evicted = lambda key, version, index: left.append((key, version, index))
    try:
        ref = ObjectRef("e/k.bin", "v1", 4 * CHUNK)
        for index in range(3):
            chunk = chunk_ref(ref, index, CHUNK)
            assert await cache.store(chunk, random_bytes(CHUNK, index), Origin.LOCAL)
        assert left == [("e/k.bin", "v1", 0)]  # the least recently used made room
        assert await cache.store(chunk_ref(ref, 3, CHUNK), random_bytes(CHUNK, 3), Origin.PEER)
        assert await cache.forget_object("e/k.bin", "v1") == 3
        assert sorted(left) == [("e/k.bin", "v1", i) for i in range(4)]
        assert len(cache) == 0 and cache.used(Origin.LOCAL) == cache.used(Origin.PEER) == 0
    finally:
        await cache.close()


async def test_a_failure_after_the_headers_cuts_the_answer_short(
    open_node: OpenNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = await open_node()
    body = random_bytes(SIZE, 12)
    ref = await node.put_object("data/k.bin", body)
    longer = SIZE + CHUNK  # the asker believes in a longer object: its last chunk fails
    params = {"version": ref.version, "size": str(longer)}
    async with node.http.get("/api/files/data/k.bin", params=params) as answer:
        assert answer.status == 200 and answer.content_length == longer
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.read()
    async with node.http.get("/api/health") as answer:  # the node serves on
        assert answer.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_asker_that_leaves_mid_answer_is_no_error(
    open_node: OpenNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tierfs.peer.handlers")
    node = await open_node(peer_size=512 * CHUNK)
    ref = await node.put_object("data/n.bin", random_bytes(256 * CHUNK, 14))  # 16 MiB
    params = {"version": ref.version, "size": str(ref.size)}
    async with node.http.get(f"/api/files/{ref.key}", params=params) as answer:
        assert answer.status == 200 and len(await answer.content.readexactly(CHUNK)) == CHUNK
        answer.close()  # gone, with most of the object still to send

    def told() -> list[logging.LogRecord]:
        """What the node logged of it: once its socket is full, it cannot send on."""
        return [r for r in caplog.records if "left" in r.getMessage() or r.levelno >= logging.ERROR]

    async with asyncio.timeout(20):
        while not told():
            await asyncio.sleep(0.05)
    assert [r.levelname for r in told()] == ["INFO"], [r.getMessage() for r in told()]
    async with node.http.get("/api/health") as answer:  # and serves on
        assert answer.status == 200


async def test_an_asker_gone_before_the_answer_starts_is_no_error(
    open_node: OpenNode, caplog: pytest.LogCaptureFixture
) -> None:
    """An asker that hung up before a chunk held here was sent (it timed out while this
    node did not run: SIGSTOP, a frozen VM) is one INFO line. Before 2026-12-07 aiohttp
    logged it as an ERROR with a traceback ("Cannot write to closing transport")."""
    caplog.set_level(logging.INFO, logger="tierfs")
    node = await open_node()
    ref = await node.put_object("data/gone.bin", random_bytes(SIZE, 15))
    for _ in range(2):  # read through, then from tier 1: now it is sent by sendfile
        async with node.get_chunk(ref, 1) as answer:
            assert answer.status == 206
            await answer.read()
        await node.kept(ref, 1)
    chunk = chunk_ref(ref, 1, CHUNK)
    host, port = URL(node.url).host, URL(node.url).port
    query = f"version={quote(ref.version)}&size={ref.size}"
    request = (
        f"GET /api/files/{ref.key}?{query} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nRange: {byte_range(chunk.start, chunk.length)}\r\n\r\n"
    )

    def ask_and_leave() -> None:
        with socket.create_connection((host, port)) as asker:
            asker.sendall(request.encode())

    # The loop does not run while the asker asks and leaves: it meets both at once.
    asking = threading.Thread(target=ask_and_leave)
    asking.start()
    time.sleep(0.3)
    asking.join()
    async with asyncio.timeout(10):
        while not [r for r in caplog.records if "left" in r.getMessage()]:
            await asyncio.sleep(0.05)
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], logged
    async with node.get_chunk(ref, 1) as answer:  # and serves on
        assert answer.status == 206


async def test_tls_from_the_client_settings(open_node: OpenNode) -> None:
    node = await open_node(tls=True)
    assert node.url.startswith("https://127.0.0.1:")
    body = random_bytes(SIZE, 13)
    ref = await node.put_object("data/tls.bin", body)
    for _ in range(3):  # cloud, tier 1, then the chunk file (asyncio copies it over TLS)
        async with node.get_chunk(ref, 2) as answer:
            assert answer.status == 206 and await answer.read() == body[2 * CHUNK : 3 * CHUNK]
        await node.kept(ref, 2)
    assert await node.served() == {"buffer": 2, "sendfile": 1}


# -- the asking side ---------------------------------------------------------------------------


class LyingOwner:
    """A real HTTP server on loopback in an owner's place: it takes every chunk handed to
    it (201) and asked of it (200), and answers each with a body without end."""

    def __init__(self) -> None:
        self.requests = 0

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await request.read()  # the chunk handed over
        response = web.StreamResponse(status=201 if request.method == "PUT" else 200)
        response.content_type = "application/json"
        await response.prepare(request)
        block = b" " * 2**20  # whitespace: the start of a JSON document, never its end
        try:
            while True:
                await response.write(block)
        except ConnectionError:  # the asker hung up
            return response


@pytest.mark.warnings_expected
async def test_an_owner_that_answers_without_end_is_read_no_further_than_its_bound(
    open_node: OpenNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lying owner's endless answer to a chunk handed over (or asked for) costs the
    asker no more than the bound of that answer, in memory and in time: the push fails,
    the owner is skipped, and chunks owned by an honest node go there and come back."""
    honest = await open_node()
    liar = LyingOwner()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", liar.answer)
    runner = await start_site(app, "127.0.0.1", 0, ssl_context=None)
    coordinator = await asyncio.to_thread(start_coordinator, tmp_path)
    client = CoordinatorClient(coordinator.url, "asker", "127.0.0.1:9400", NodeReport)
    membership: asyncio.Task[None] | None = None
    fetchers: list[PeerFetcher] = []

    def fetcher(stats: NodeStats) -> PeerFetcher:
        fetchers.append(
            PeerFetcher(
                "asker",
                client,
                stats=stats,
                timeout=5.0,
                token=TOKEN,
                keys=KeyPrefix(),
                chunk_size=CHUNK,
            )
        )
        return fetchers[-1]

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    async def bounded(call: Awaitable[object], limit: int) -> object:
        """What `call` returns, checked to take well under the peer timeout and to hold
        no more than `limit` bytes (and aiohttp's read buffers) in memory."""
        tracemalloc.start()
        started = time.monotonic()
        try:
            result = await call
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < limit + 8 * 2**20, f"{peak / 2**20:.0f} MiB in memory"
        assert time.monotonic() - started < 2.0
        return result

    try:
        host, port = runner.addresses[0][:2]
        await asyncio.to_thread(coordinator.register, "node-a", honest.url.removeprefix("http://"))
        await asyncio.to_thread(coordinator.register, "liar", f"{host}:{port}")
        membership = asyncio.create_task(client.run())
        async with asyncio.timeout(10):
            while len(client.members) != 3:
                await asyncio.sleep(0.05)
        # chunks of a written file that the liar owns, and one the honest node owns
        for n in range(100):
            ref = ObjectRef(f"written/{n}.bin", "v-1", 4 * CHUNK)
            owners = [rank(chunk_ref(ref, i, CHUNK).id, client.members, lambda p: p.peer_id)[0]
                      for i in range(4)]  # fmt: skip
            ids = [o.peer_id for o in owners]
            if "liar" in ids and "node-a" in ids:
                break
        lied, kept = ids.index("liar"), ids.index("node-a")
        body = random_bytes(4 * CHUNK, 15)

        stats = NodeStats()
        pusher = fetcher(stats)
        chunk = chunk_ref(ref, lied, CHUNK)
        pushed = await bounded(
            pusher.push(chunk, body[chunk.start : chunk.start + CHUNK]), MAX_REPLY
        )
        assert pushed is False and stats.pushed_to_peers == 0
        assert warned() == [
            f"peer liar ({host}:{port}) failed: an answer over 64.0 KiB; skipping it for now"
        ]
        asked = liar.requests
        assert await pusher.fetch(chunk) is None  # skipped: the read goes to the cloud
        assert liar.requests == asked
        chunk = chunk_ref(ref, kept, CHUNK)
        assert await pusher.push(chunk, body[chunk.start : chunk.start + CHUNK]) is True
        assert honest.cache.holds(chunk.id) and stats.pushed_to_peers == 1
        assert await pusher.fetch(chunk) == body[chunk.start : chunk.start + CHUNK]

        reader = fetcher(NodeStats())  # a node that never pushed asks the liar for a chunk
        assert await bounded(reader.fetch(chunk_ref(ref, lied, CHUNK)), CHUNK) is None
        assert len(warned()) == 2 and "a body of None bytes" in warned()[1]
    finally:
        for one in fetchers:
            await one.close()
        if membership is not None:
            membership.cancel()
        await client.close()
        await runner.cleanup()
        await asyncio.to_thread(coordinator.stop)
    coordinator.assert_clean_log()


async def test_an_owner_elsewhere_ranks_above_its_asker_unless_it_drains(tmp_path: Path) -> None:
    """An active node's owner of a chunk, when another node, ranks above it (the read path
    lets other nodes' requests join its flight waiting on that owner, which never waits on
    it); a draining node is not in its own view and may ask an owner that ranks below it."""
    coordinator = await asyncio.to_thread(start_coordinator, tmp_path)
    for n, other in enumerate(["node-a", "node-b"]):
        await asyncio.to_thread(coordinator.register, other, f"127.0.0.1:{9410 + n}")
    clients = {
        name: CoordinatorClient(
            coordinator.url, name, f"127.0.0.1:{9400 + n}", NodeReport, heartbeat_interval=0.2
        )
        for n, name in enumerate(["active", "draining"])
    }
    clients["draining"].status = "draining"
    runs = [asyncio.create_task(client.run()) for client in clients.values()]
    fetchers = {
        name: PeerFetcher(
            name, client, stats=NodeStats(), timeout=5.0, keys=KeyPrefix(), chunk_size=CHUNK
        )
        for name, client in clients.items()
    }
    try:
        async with asyncio.timeout(10):
            while any(len(client.members) != 4 for client in clients.values()):
                await asyncio.sleep(0.05)
        ref = ObjectRef("ranked.bin", "v-1", 64 * CHUNK)
        chunks = [chunk_ref(ref, index, CHUNK) for index in range(64)]
        everyone = ["node-a", "node-b", "active", "draining"]
        first = [rank(chunk.id, everyone, str)[0] for chunk in chunks]
        active, draining = fetchers["active"], fetchers["draining"]
        elsewhere = [active.owner_elsewhere(chunk) for chunk in chunks]
        assert [active.owner_ranks_above(chunk) for chunk in chunks] == elsewhere
        assert any(elsewhere) and not all(elsewhere)
        assert all(draining.owner_elsewhere(chunk) for chunk in chunks)
        above = [draining.owner_ranks_above(chunk) for chunk in chunks]
        assert above == [name != "draining" for name in first]
        assert not all(above)  # the chunks it ranks first for: their owner ranks below it
    finally:
        for fetcher in fetchers.values():
            await fetcher.close()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for client in clients.values():
            await client.close()
        await asyncio.to_thread(coordinator.stop)
    coordinator.assert_clean_log()

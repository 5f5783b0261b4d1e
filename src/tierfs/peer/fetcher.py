"""Tier 2 from the asking side: fetch a chunk from the node that owns it, or hand one over.

`PeerFetcher.fetch` is the read path's `PeerTier`. The owner of a chunk is the first live
peer in rendezvous order (ring.py) of the membership the coordinator last reported: no
coordinator call per read. The owner serves the chunk from its tier 1 or reads it through
from the cloud once for the whole cluster. When the owner fails (down, slower than
`FUSE_PEER_TIMEOUT`, an error, bytes that fail their checksum), or when this node is
the owner and misses it (for its own reads, or reading through for another node), the
holders the coordinator's location index lists are asked for what they have cached, in
rendezvous order; then the read path goes to the cloud. The index is asked once a second
per file at most (`LOCATIONS_FOR`): its answer lists every chunk of the file. Those asks
are `cached_only`: never read through, so they cannot loop. A peer that failed is skipped
until the membership changes (it left, or came back) or `RETRY_DOWN_AFTER` has passed;
its failure is logged once, until it answers, says it is up or registers again. A
request that timed out while this node did not run (`PauseWatch`) is no failure of the
peer's: it is asked once more.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import aiohttp

from tierfs.chunks import ChunkId, ChunkRef, ObjectRef, checksum
from tierfs.cloud.folder import KeyPrefix
from tierfs.coordinator.client import CoordinatorClient
from tierfs.coordinator.models import Location, Membership, PeerInfo
from tierfs.pauses import PauseWatch
from tierfs.peer import protocol
from tierfs.peer.ring import rank
from tierfs.security import AnswerTooLargeError, read_bounded
from tierfs.singleflight import Publish, SingleFlight
from tierfs.stats import NodeStats, Tier

log = logging.getLogger(__name__)

RETRY_DOWN_AFTER = 10.0  # seconds a failed peer is skipped if membership says nothing
CONNECTIONS_PER_PEER = 16  # keep-alive connections to one peer (reads run 16 fetches at once)
READ_BUFFER = 2**20  # bytes aiohttp reads at a time: a 4 MiB chunk in a few reads
MAX_REPLY = 2**16  # bytes of a peer's answer to a push read (a short JSON body)
HELD_ELSEWHERE_SHARE = 0.25  # of the peer timeout, for an owner's ask of a holder
LOCATE_TIMEOUT = 0.5  # seconds an owner that misses a chunk waits for the location index
# Seconds one answer of the location index serves the misses of its file's other chunks: a
# cold read of a file asks once a second, not once a chunk. Only a chunk read from the
# cloud by a node other than its owner, in that second, is missed (and read again).
LOCATIONS_FOR = 1.0
LOCATED_FILES = 256  # answers kept at most; the oldest go first


@dataclass(frozen=True, slots=True)
class _Peer:
    peer_id: str
    address: str  # host:port of its peer API


class _PeerFailedError(Exception):
    """A peer could not serve a request; the message says why in a few words."""


class PeerFetcher:
    """Tier 2 for one node. `close()` closes its HTTP session."""

    def __init__(
        self,
        node_id: str,
        coordinator: CoordinatorClient,
        *,
        stats: NodeStats,
        timeout: float,
        token: str | None = None,
        tls: bool = False,
        ssl_context: ssl.SSLContext | bool = True,
        keys: KeyPrefix,
        chunk_size: int,
    ) -> None:
        """`keys` and `chunk_size` name chunks by the bucket's keys, as the cluster knows
        them, for a node that mounts a folder of the bucket."""
        self._node_id = node_id
        self._coordinator = coordinator
        self._stats = stats
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._quick = aiohttp.ClientTimeout(total=timeout * HELD_ELSEWHERE_SHARE)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._scheme = "https" if tls else "http"
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._pauses = PauseWatch()
        self._down: dict[str, tuple[int | None, float]] = {}  # peer id -> (epoch, when)
        # peer id -> its registration when its failure was logged: not logged again meanwhile
        self._said_down: dict[str, float | None] = {}
        # peer id -> its registration when it said its -chunk-size is not this node's
        self._other_size: dict[str, float | None] = {}
        self._keys = keys
        self._chunk_size = chunk_size
        self._skip_locate_until = 0.0  # monotonic: the location index was too slow
        self._located: dict[tuple[str, str], tuple[float, list[Location]]] = {}  # by asked
        self._locating: SingleFlight[tuple[str, str], list[Location]] = SingleFlight("locate")
        # the last chunk ranked, the membership it was ranked by (kept: compared by identity)
        self._last_ranked: tuple[ChunkId, Membership | None, tuple[_Peer, ...]] | None = None

    async def fetch(self, chunk: ChunkRef) -> bytes | None:
        """The whole chunk, checked against its checksum, or None: ask the cloud."""
        chunk, order = self._ranked(chunk)
        if not self._others(order):
            return None  # no cluster, or none but this node
        owner = order[0]
        if owner.peer_id == self._node_id:
            return await self._from_holders(chunk, quick=True)  # no read-through
        if self._usable(owner.peer_id):
            data = await self._get(owner, chunk, cached_only=False)
            if data is not None:
                return data
        return await self._from_holders(chunk, skip=owner.peer_id, quick=False)

    async def held_elsewhere(self, chunk: ChunkRef, first: Sequence[str] = ()) -> bytes | None:
        """The chunk from a node the location index lists with it, never read through;
        None: ask the cloud. What an owner asks before reading through for another node:
        a chunk read while it was away, or before it joined, is held by the node that read
        it. The nodes `first` (active members) are asked before the index: those an owner
        whose tier 1 did not keep the chunk sent it to (the index may not list them yet)."""
        chunk, order = self._ranked(chunk)
        if not self._others(order):
            return None
        for peer in order:
            if (
                peer.peer_id in first
                and peer.peer_id != self._node_id
                and self._usable(peer.peer_id)
            ):
                data = await self._get(peer, chunk, cached_only=True, timeout=self._quick)
                if data is not None:
                    return data
        # the asker waits on this node for a peer timeout: a hung holder must not use it up
        return await self._from_holders(chunk, quick=True, timeout=self._quick)

    def owner_elsewhere(self, chunk: ChunkRef) -> bool:
        """Whether the chunk's owner is another node (`fetch` asks it to read it through)."""
        _, order = self._ranked(chunk)
        return bool(order) and order[0].peer_id != self._node_id

    def owns_for_others(self, chunk: ChunkRef) -> bool:
        """Whether this node owns the chunk and other nodes are active (they ask it for it)."""
        _, order = self._ranked(chunk)
        return len(order) > 1 and order[0].peer_id == self._node_id

    def owner_ranks_above(self, chunk: ChunkRef) -> bool:
        """Whether the chunk's owner is another node that ranks above this one in the
        chunk's rendezvous order (see `PeerTier.owner_ranks_above`)."""
        chunk, order = self._ranked(chunk)
        if not order or order[0].peer_id == self._node_id:
            return False
        return rank(chunk.id, [order[0].peer_id, self._node_id], str)[0] != self._node_id

    async def _from_holders(
        self,
        chunk: ChunkRef,
        *,
        quick: bool,
        skip: str | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> bytes | None:
        for holder in await self._holders(chunk, skip, quick):
            data = await self._get(holder, chunk, cached_only=True, timeout=timeout)
            if data is not None:
                return data
        return None

    async def push(self, chunk: ChunkRef, data: bytes) -> bool:
        """Hand a chunk of a newly written file to its owner to keep for the cluster (when
        this node's tier 1 has no room for it). False when no other node took it."""
        chunk, order = self._ranked(chunk)
        if not order or order[0].peer_id == self._node_id:
            return False
        return await self._put(order[0], chunk, data)

    async def hand_on(self, chunk: ChunkRef, data: bytes) -> str | None:
        """Hand a chunk this node owns and read from the cloud, but could not keep (its
        tier 1 full), to the next node in the chunk's rendezvous order to keep for the
        cluster: that node's id, or None when this node is not the owner or none took it."""
        chunk, order = self._ranked(chunk)
        if len(order) < 2 or order[0].peer_id != self._node_id:
            return None
        return order[1].peer_id if await self._put(order[1], chunk, data) else None

    async def _put(self, peer: _Peer, chunk: ChunkRef, data: bytes) -> bool:
        """Whether `peer` took the chunk to keep within its peer budget; a peer whose
        answer is over MAX_REPLY is failed, as one that gives none (not one that timed out
        while this node did not run)."""
        if not self._usable(peer.peer_id):
            return False
        started = time.monotonic()
        headers = {
            **self._headers,
            "Content-Range": protocol.content_range(chunk.start, chunk.length, chunk.obj.size),
            protocol.CHECKSUM_HEADER: checksum(data),
        }
        try:
            async with self._open().put(
                self._url(peer, chunk),
                params=_params(chunk),
                headers=headers,
                data=data,
                ssl=self._ssl,
            ) as response:
                await read_bounded(response, MAX_REPLY)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, AnswerTooLargeError) as exc:
            if not (isinstance(exc, TimeoutError) and self._pauses.paused_since(started)):
                self._failed(peer, _describe(exc))
            return False
        if status == 201:
            self._said_down.pop(peer.peer_id, None)  # up again
            self._stats.pushed_to_peers += 1
            return True
        log.info("peer %s did not keep chunk %s: HTTP %d", peer.peer_id, chunk.id, status)
        return False

    def mark_alive(self, peer_id: str) -> None:
        """A peer said it is up (its heartbeat): stop skipping it."""
        self._down.pop(peer_id, None)
        self._said_down.pop(peer_id, None)

    async def close(self) -> None:
        await self._locating.close()
        await self._pauses.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one request ------------------------------------------------------------------------

    async def _get(
        self,
        peer: _Peer,
        chunk: ChunkRef,
        *,
        cached_only: bool,
        timeout: aiohttp.ClientTimeout | None = None,
        again: bool = True,
    ) -> bytes | None:
        """The chunk from `peer` if it has it (or, not `cached_only`, reads it through);
        None otherwise. A failure marks the peer down; bad bytes are only refused.
        `timeout` in place of the peer timeout. A request that timed out while this node
        did not run is sent `again`, once: a node paused past the peer timeout (SIGSTOP)
        took its peers' answers, waiting as it woke, for their silence, logged them as
        failed and read their chunks from the cloud (before 2026-12-07)."""
        started = time.monotonic()
        params = {**_params(chunk), protocol.CHUNK_SIZE_PARAM: str(self._chunk_size)}
        if cached_only:
            params[protocol.CACHED_ONLY_PARAM] = "1"
        headers = {
            **self._headers,
            "Range": protocol.byte_range(chunk.start, chunk.length),
            protocol.PEER_HEADER: self._node_id,
        }
        try:
            async with self._open().get(
                self._url(peer, chunk),
                params=params,
                headers=headers,
                ssl=self._ssl,
                timeout=timeout or self._timeout,
            ) as response:
                if response.status not in (200, 206, 404, 409, 412):
                    raise _PeerFailedError(f"HTTP {response.status}")
                self._said_down.pop(peer.peer_id, None)  # it answers: up again
                if response.status in (404, 412):  # not held / the object changed
                    return None
                if response.status == 409:
                    self._of_other_size(peer)
                    return None
                if response.content_length != chunk.length:  # never read an unbounded body
                    raise _PeerFailedError(f"a body of {response.content_length} bytes")
                expected = response.headers.get(protocol.CHECKSUM_HEADER)
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError, _PeerFailedError) as exc:
            if isinstance(exc, TimeoutError) and again and self._pauses.paused_since(started):
                log.debug("peer %s: asked again, this node did not run meanwhile", peer.peer_id)
                return await self._get(
                    peer, chunk, cached_only=cached_only, timeout=timeout, again=False
                )
            self._failed(peer, _describe(exc))
            return None
        if len(data) != chunk.length or expected is None or checksum(data) != expected:
            self._stats.peer_bad_chunks += 1
            self._stats.tier(Tier.PEER).errors += 1
            log.warning(
                "peer %s sent chunk %s of %s that fails its checksum (%d bytes): not used",
                peer.peer_id,
                chunk.index,
                chunk.obj.key,
                len(data),
            )
            return None
        return data

    def _ranked(self, chunk: ChunkRef) -> tuple[ChunkRef, tuple[_Peer, ...]]:
        """`chunk` as the cluster names it (its key in the bucket, `-prefix` included) and
        the active members in rendezvous order for it (this node included), ranked once
        for a chunk and a membership: a read asks `owner_elsewhere`, then
        `owner_ranks_above` and `fetch`, of one chunk, with no wait in between."""
        chunk = self._keys.outer_chunk(chunk, self._chunk_size)
        membership = self._coordinator.membership
        last = self._last_ranked
        if last is not None and last[0] == chunk.id and last[1] is membership:
            return chunk, last[2]
        live = [_Peer(p.peer_id, p.address) for p in self._members() if p.status == "active"]
        order = tuple(rank(chunk.id, live, lambda p: p.peer_id))
        self._last_ranked = (chunk.id, membership, order)
        return chunk, order

    def _others(self, peers: tuple[_Peer, ...]) -> bool:
        """Some of `peers` is not this node."""
        return any(p.peer_id != self._node_id for p in peers)

    async def _holders(self, chunk: ChunkRef, skip: str | None, quick: bool) -> list[_Peer]:
        """The usable peers that the location index lists with `chunk`, in rendezvous order.
        `quick`: none if the coordinator takes over LOCATE_TIMEOUT to say, and then none
        without asking for RETRY_DOWN_AFTER (an owner's miss, which the cloud answers
        anyway, is not held up by a hung coordinator)."""
        if quick and time.monotonic() < self._skip_locate_until:
            return []
        try:
            async with asyncio.timeout(LOCATE_TIMEOUT if quick else None):
                locations = await self._locations(chunk.obj)
        except TimeoutError:
            log.debug("no locations of %r from the coordinator in time", chunk.obj.key)
            self._skip_locate_until = time.monotonic() + RETRY_DOWN_AFTER
            return []
        holders = [
            _Peer(loc.peer_id, loc.address)
            for loc in locations
            if loc.status == "active"
            and chunk.index in loc.chunks
            and loc.peer_id not in (skip, self._node_id)
            and self._usable(loc.peer_id)
        ]
        return rank(chunk.id, holders, lambda p: p.peer_id)

    async def _locations(self, obj: ObjectRef) -> list[Location]:
        """The location index's entries for `obj`: an answer asked less than LOCATIONS_FOR
        ago, else one asked now, which the misses of the file meanwhile share."""
        key = (obj.key, obj.version)
        known = self._located.get(key)
        if known is not None and time.monotonic() - known[0] < LOCATIONS_FOR:
            return known[1]
        locations, _ = await self._locating.do(key, partial(self._locate, obj))
        return locations

    async def _locate(self, obj: ObjectRef, publish: Publish[list[Location]]) -> None:
        """Ask the location index about `obj`, and keep the answer for LOCATIONS_FOR."""
        asked = time.monotonic()
        locations = await self._coordinator.locate(obj.key, obj.version)
        self._located = {
            key: known
            for key, known in self._located.items()
            if asked - known[0] < LOCATIONS_FOR and key != (obj.key, obj.version)
        }
        self._located[obj.key, obj.version] = (asked, locations)
        if len(self._located) > LOCATED_FILES:
            del self._located[next(iter(self._located))]
        publish(locations)

    def _url(self, peer: _Peer, chunk: ChunkRef) -> str:
        return protocol.file_url(f"{self._scheme}://{peer.address}", chunk.obj.key)

    def _open(self) -> aiohttp.ClientSession:
        self._pauses.start()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit_per_host=CONNECTIONS_PER_PEER),
                auto_decompress=False,
                read_bufsize=READ_BUFFER,
            )
        return self._session

    # -- peers that failed ---------------------------------------------------------------------

    def _usable(self, peer_id: str) -> bool:
        if peer_id in self._other_size:
            if self._other_size[peer_id] == self._registration(peer_id):
                return False
            del self._other_size[peer_id]  # registered again: maybe with this node's size
        down = self._down.get(peer_id)
        if down is None:
            return True
        epoch, since = down
        if epoch != self._coordinator.epoch or time.monotonic() - since > RETRY_DOWN_AFTER:
            del self._down[peer_id]
            return True
        return False

    def _of_other_size(self, peer: _Peer) -> None:
        """`peer` cuts files into chunks of another size: none of its chunks is this node's,
        so it is not asked again until it registers again (before 2026-12-07 it was asked,
        and logged, again every RETRY_DOWN_AFTER and at every change of membership)."""
        self._stats.tier(Tier.PEER).errors += 1
        registration = self._registration(peer.peer_id)
        if peer.peer_id in self._other_size and self._other_size[peer.peer_id] == registration:
            return  # said by a request that was under way at once with this one
        self._other_size[peer.peer_id] = registration
        log.warning(
            "peer %s (%s): its -chunk-size is not this node's; not asked again until it "
            "registers again (a restart)",
            peer.peer_id,
            peer.address,
        )

    def _registration(self, peer_id: str) -> float | None:
        """When `peer_id` last registered, as the membership says (None: not a member)."""
        return next((p.registered_at for p in self._members() if p.peer_id == peer_id), None)

    def _members(self) -> list[PeerInfo]:
        """The members as the coordinator last told them (none before its first answer)."""
        members = self._coordinator.membership
        return (members.peers or []) if members is not None else []

    def _failed(self, peer: _Peer, why: str) -> None:
        """Skip `peer` for now; log it once while it stays down: a change of membership
        meanwhile (another node's) let the next read try it again and log it again, two
        lines within 2 s (before 2026-12-07). A peer that answered, said it is up or
        registered again since is logged again."""
        self._stats.tier(Tier.PEER).errors += 1
        self._down[peer.peer_id] = (self._coordinator.epoch, time.monotonic())
        registration = self._registration(peer.peer_id)
        if peer.peer_id in self._said_down:
            said = self._said_down[peer.peer_id]
            if said is None or registration in (None, said):  # not registered again since
                log.debug("peer %s (%s) still failing: %s", peer.peer_id, peer.address, why)
                return
        self._said_down[peer.peer_id] = registration
        log.warning("peer %s (%s) failed: %s; skipping it for now", peer.peer_id, peer.address, why)


def _params(chunk: ChunkRef) -> dict[str, str]:
    """The query naming the chunk's object version and size (saves the peer a HEAD)."""
    return {protocol.VERSION_PARAM: chunk.obj.version, protocol.SIZE_PARAM: str(chunk.obj.size)}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the peer timeout"
    if isinstance(exc, AnswerTooLargeError):
        return str(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

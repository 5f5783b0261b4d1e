"""The read path: the only module that knows the order of the tiers.

For each chunk a read covers: tier 1 (local disk), else one fetch of the whole chunk
shared by every concurrent reader (single-flight): tier 2 (peers), else tier 3 (the
cloud, pinned to the object's version). A fetched chunk is handed to its readers at once
and promoted to tier 1 behind them. Reads through a `SequentialReader` also feed its
read-ahead, which goes through the same flights; chunks it brings are written to tier 1
around the page cache (their reader holds them, and the mount's page cache their bytes).
So are the chunks a read hands to its caller's `OnFetched` hook (the mount puts them into
its own page cache).

Bounds: at most `max_parallel_fetches` fetches at once, half for prefetches and half for
demand reads, so neither waits for the other; at most `FLIGHTS_PER_FETCH` times as many
flights in all, counting those whose chunk waits to be written to tier 1, so a slow disk
slows fetching down instead of piling chunks up in memory. A demand read's slot is held
until its chunk is written too: reads from many threads hold half the slots' chunks. A
read holds only the chunks it covers; a reader's read-ahead, its window (plus chunks still
being written). Chunks read through for other nodes (`read_for_peer`, tier 2's owner
side) have as many slots again, of their own; those tier 1 did not keep (a full disk) are
held for `LINGER` after, `LINGERING` at most, for the nodes that ask for them next.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

from tierfs.cache.base import ChunkCache, Origin
from tierfs.chunks import ChunkId, ChunkRef, Data, ObjectRef, chunks_covering
from tierfs.cloud.base import CloudStore
from tierfs.errors import CloudError, ObjectNotFoundError, VersionChangedError
from tierfs.prefetch import MAX_WINDOW_BYTES, Prefetched, SequentialReader
from tierfs.singleflight import Publish, SingleFlight
from tierfs.stats import NodeStats, Tier

log = logging.getLogger(__name__)

# Flights in all (fetching, or holding their chunk until tier 1 has written it), in fetch
# slots: a quarter as many again lets the network go on while the disk catches up. Each
# holds a chunk in memory: with the mount's page-cache queue (`tierfs.fuse.page_cache`)
# they bound a client's chunk memory, 20 x 4 MiB + 32 MiB by default. With half as many
# again (24) and a 64 MiB queue, the peak RSS of 2000 cold random reads through the mount
# was 166-235 MB in 10 runs (3 over 200); with these, 179-198, as fast.
FLIGHTS_PER_FETCH = 1.25
# The share of fetch slots for prefetches; demand reads have the rest. Measured on SeaweedFS
# here, 8 fetches of 4 MiB in flight move as much as 16. Demand reads took them all before
# (2026-12-06): 2000 cold random reads through the mount, from 16 threads, ran as fast with
# 8 (828, 754, 697 reads/s against 834, 722, 723 in 3 alternating pairs), their client's
# peak RSS 142-161 MB against 169-198.
PREFETCH_SHARE = 0.5
# A sequential reader whose reads are smaller than this takes a tier-1 chunk whole at its
# first read of it, then slices it: 128 KiB reads of a warm object went from ~85% to over
# 100% of pread's speed. 1 MiB reads are large copies already (no faster that way).
WHOLE_CHUNK_BELOW = 2**20
# A chunk whose fetch from the cloud just failed fails again at once for this long: the
# kernel asks again for a read whose read-ahead failed, and that second request waited
# out the cloud deadline as well (a cold read in an outage said EIO after twice it).
FAILED_FETCH_MEMORY = 2.0  # seconds
# Chunks whose askers an owner remembers when its tier 1 did not keep them (a full disk),
# to ask them before the cloud: about 100 bytes each.
HANDED_CHUNKS = 4096
HANDED_ASKERS = 3  # the latest askers of each
# A chunk read through for another node that tier 1 did not keep stays in its flight this
# long (seconds), for the nodes that ask next: the asker it went to says it has none until
# its copy has arrived (8-330 ms after, three nodes reading at once on 2 loaded cores).
# At most LINGERING chunks at once (32 MiB at 4 MiB chunks); the rest go at once. With 4
# for 1 s, all 4 were taken at times (a full owner serves 4-5 chunks a second there):
# 1.00-1.08x a file three nodes read at once; with 8 for 0.5 s, 1.00-1.02x in 5 runs.
LINGER = 0.5
LINGERING = 8


# Told of each chunk a read fetched (not one it found or joined): the chunk, its bytes, and
# [lo, hi), the part of it the read returns. Must be quick and must not raise.
OnFetched = Callable[[ChunkRef, Data, int, int], None]


class PeerTier(Protocol):
    """Tier 2 as the read path sees it (implemented by the peer client)."""

    async def fetch(self, chunk: ChunkRef) -> bytes | None:
        """The whole chunk from a peer, or None when no peer could serve it.

        Any exception counts as a peer error and the read falls through to the cloud.
        """
        ...

    async def held_elsewhere(self, chunk: ChunkRef, first: Sequence[str] = ()) -> bytes | None:
        """The whole chunk from a peer that holds it already (never one that would read it
        through), or None; asked before reading through for another node, and for this
        node's own reads of a chunk it owns. The peers `first` are asked first: those this
        node sent the chunk to when its tier 1 did not keep it. Raises as `fetch`."""
        ...

    async def hand_on(self, chunk: ChunkRef, data: bytes) -> str | None:
        """Give a chunk this node owns, read from the cloud but not kept (a full tier 1), to
        another node to keep for the cluster: its id, or None when none took it."""
        ...

    def owner_elsewhere(self, chunk: ChunkRef) -> bool:
        """Whether the chunk's owner is another node, which `fetch` asks to read it through
        (and so may wait on); else `held_elsewhere` is all the peers can do."""
        ...

    def owns_for_others(self, chunk: ChunkRef) -> bool:
        """Whether this node owns the chunk and other nodes are active: they ask it for the
        chunk, so it keeps it for them (in the peers' budget)."""
        ...

    def owner_ranks_above(self, chunk: ChunkRef) -> bool:
        """Whether the owner `fetch` asks is another node that ranks above this one in the
        chunk's rendezvous order (the same on every node, whatever its view of the
        members). Such an owner never waits on this node for the chunk: a request from
        another node joins a flight waiting on an owner only when that owner ranks above
        the node, so waits between nodes go one way. False when this node is not in its
        own view (draining, say): its owner may rank below it and be the very asker."""
        ...


@runtime_checkable
class _KnowsHeld(Protocol):
    """A tier 1 that can tell whether it holds a chunk without counting an access."""

    def holds(self, chunk_id: ChunkId) -> bool: ...


@runtime_checkable
class _KnowsLimits(Protocol):
    """A tier 1 that can tell the budget of an origin."""

    def limit(self, origin: Origin) -> int: ...


@runtime_checkable
class _Warms(Protocol):
    """A tier 1 that can start reading a chunk from disk ahead of its reads."""

    def warm(self, chunk_id: ChunkId) -> None: ...


@runtime_checkable
class _ReadsNow(Protocol):
    """A tier 1 that can serve its usual hit without an await."""

    def read_now(self, chunk: ChunkRef, offset: int, length: int) -> bytes | None: ...


@dataclass(slots=True)
class _Fetched:
    """What a flight hands its readers: the chunk, and later whether tier 1 kept it."""

    data: Data
    kept: asyncio.Future[bool]


class ReadPath:
    """Reads of objects at a version through the three tiers. For one event loop.

    `close()` cancels every prefetch and fetch under way; it does not close the cache or
    the cloud store, which belong to the caller.
    """

    def __init__(
        self,
        cache: ChunkCache,
        cloud: CloudStore,
        *,
        chunk_size: int,
        stats: NodeStats,
        peers: PeerTier | None = None,
        max_parallel_fetches: int = 16,
        max_window_bytes: int = MAX_WINDOW_BYTES,
    ) -> None:
        if chunk_size <= 0 or max_parallel_fetches <= 0:
            raise ValueError("chunk_size and max_parallel_fetches must be > 0")
        self._cache = cache
        self._cloud = cloud
        self._peers = peers
        self._chunk_size = chunk_size
        self._stats = stats
        self._max_parallel = max_parallel_fetches
        self._max_window_bytes = max_window_bytes
        self._flights: SingleFlight[ChunkId, _Fetched] = SingleFlight("fetch")
        # fetches for other nodes of chunks whose own flight may wait on them (see below)
        self._peer_flights: SingleFlight[ChunkId, _Fetched] = SingleFlight("fetch for peers")
        # chunks whose flight waits on an owner that does not rank above this node (which
        # may wait on this node), or for its slots: each marked by that flight
        self._asking_peers: dict[ChunkId, object] = {}
        self._queued: dict[ChunkId, object] = {}
        prefetches = max(1, int(PREFETCH_SHARE * max_parallel_fetches))
        self._flight_slots = asyncio.Semaphore(int(FLIGHTS_PER_FETCH * max_parallel_fetches))
        self._prefetch_slots = asyncio.Semaphore(prefetches)  # held by the readers' prefetches
        self._demand_slots = asyncio.Semaphore(max(1, max_parallel_fetches - prefetches))
        self._serve_slots = asyncio.Semaphore(max_parallel_fetches)  # fetches for other nodes
        self._lingering = asyncio.Semaphore(LINGERING)  # flights holding an unkept chunk
        self._holds = cache.holds if isinstance(cache, _KnowsHeld) else None
        peer_budget = cache.limit(Origin.PEER) if isinstance(cache, _KnowsLimits) else None
        self._peer_budget = chunk_size if peer_budget is None else peer_budget
        self._warm = cache.warm if isinstance(cache, _Warms) else None
        self._read_now = cache.read_now if isinstance(cache, _ReadsNow) else None
        self._readers: weakref.WeakSet[SequentialReader] = weakref.WeakSet()
        self._failed: dict[ChunkId, tuple[float, CloudError]] = {}  # the cloud's, by when
        # peers sent a chunk that tier 1 did not keep, by chunk (see `read_for_peer`)
        self._handed: OrderedDict[ChunkId, tuple[str, ...]] = OrderedDict()
        self._closed = False

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def fetches(self) -> int:
        """Flights under way (fetching or storing), for tests and metrics."""
        return self._flights.tasks

    async def read(
        self,
        ref: ObjectRef,
        offset: int,
        size: int,
        reader: SequentialReader | None = None,
        on_fetched: OnFetched | None = None,
    ) -> Data:
        """Bytes [offset, offset + size) of `ref`: all of them, fewer only at its end; a
        view into a chunk in memory when that is where they are (no copy of them).

        `reader` is the handle's read-ahead (from `open_reader(ref)`). `on_fetched` is told
        of each chunk this read fetches that holds more than the read returns; tier 1 then
        writes it around the page cache, its bytes being the hook's to keep. Raises
        VersionChangedError when the object is no longer at `ref.version` (never bytes of
        another version), ObjectNotFoundError when it is gone, CloudError when no tier can
        serve a chunk.
        """
        if offset < 0 or size < 0:
            raise ValueError(f"bad range: offset {offset}, size {size}")
        if self._closed:
            raise RuntimeError("the read path is closed")
        if reader is not None:
            if reader.ref is not ref and reader.ref != ref:
                raise ValueError(f"the reader is for {reader.ref}, not {ref}")
            if (piece := reader.next_piece(offset, size)) is not None:
                return piece
            reader.on_read(offset, size)
        chunks = chunks_covering(ref, offset, size, self._chunk_size)
        end = min(offset + size, ref.size)
        if not chunks:
            return b""
        if len(chunks) == 1:  # most reads: served at once when held (no coroutine made)
            chunk = chunks[0]
            lo, hi = offset - chunk.start, end - chunk.start
            held = self._held(chunk, lo, hi, reader)
            if held is not None:
                return held
            return await self._fetch_piece(chunk, lo, hi, reader, on_fetched)
        try:
            async with asyncio.TaskGroup() as group:  # fetches are bounded by the slots
                parts = [
                    group.create_task(
                        self._read_chunk(
                            chunk,
                            max(offset, chunk.start) - chunk.start,
                            min(end, chunk.start + chunk.length) - chunk.start,
                            reader,
                            on_fetched,
                        )
                    )
                    for chunk in chunks
                ]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the error of the first chunk that failed
        return b"".join(part.result() for part in parts)

    def open_reader(self, ref: ObjectRef) -> SequentialReader:
        """The read-ahead of one open handle of `ref`; close it when the handle goes."""
        if self._closed:
            raise RuntimeError("the read path is closed")
        reader = SequentialReader(
            ref,
            self,
            chunk_size=self._chunk_size,
            stats=self._stats,
            max_in_flight=self._max_parallel,
            max_window_bytes=self._max_window_bytes,
            slots=self._prefetch_slots,
        )
        self._readers.add(reader)
        return reader

    def has(self, chunk: ChunkRef) -> bool:
        """See `ChunkSource.has`: a flight of `chunk` is under way, or tier 1 holds it."""
        return chunk.id in self._flights or (self._holds is not None and self._holds(chunk.id))

    def holds(self, chunk: ChunkRef) -> bool | None:
        """Whether tier 1 holds `chunk` now; None where it cannot tell without a read."""
        return None if self._holds is None else self._holds(chunk.id)

    def warm(self, chunk: ChunkRef) -> None:
        """See `ChunkSource.warm`: tier 1 starts reading the chunk's file into memory."""
        if self._warm is not None:
            self._warm(chunk.id)

    async def prefetch(self, chunk: ChunkRef) -> Prefetched:
        """Bring `chunk` to tier 1 ahead of its reader (the `ChunkSource` of readers)."""
        if chunk.id in self._flights or await self._in_tier1(chunk):
            return Prefetched(fetched=False)
        ahead = partial(self._fetch, chunk, True, around_page_cache=True, prefetch=True)
        fetched, joined = await self._flights.do(chunk.id, ahead)
        if joined:
            return Prefetched(fetched=False)
        return Prefetched(fetched=True, data=fetched.data, kept=fetched.kept)

    async def load(self, chunk: ChunkRef) -> bool | None:
        """Bring `chunk` into tier 1 whatever `-admit-after` says (`tierfs warm`): from the
        peers or the cloud, as a read would. None when tier 1 held it already, else
        whether tier 1 kept it (False: no room). Raises as `read`."""
        if self._closed:
            raise RuntimeError("the read path is closed")
        if chunk.id not in self._flights and await self._in_tier1(chunk):
            return None
        fetch = partial(self._fetch, chunk, True, around_page_cache=True, admit=True, prefetch=True)
        fetched, _ = await self._flights.do(chunk.id, fetch)
        return await fetched.kept

    async def cached(self, chunk: ChunkRef) -> Data | None:
        """The whole chunk if tier 1 holds it (checked), else None: never a fetch."""
        return None if self._closed else await self._from_local(chunk, 0, chunk.length)

    async def read_for_peer(
        self, chunk: ChunkRef, *, cached_only: bool, asker: str | None = None
    ) -> Data | None:
        """The whole chunk for another node (the owner's side of tier 2): from tier 1, else
        (unless `cached_only`) read through from the cloud and kept within the peer budget.

        Asks only peers that hold the chunk already (the location index's, with
        `cached_only`: they answer from tier 1 or not at all), never one that would read it
        through, so requests between nodes cannot loop. Joins a fetch of the
        chunk already under way unless that one is waiting on an owner elsewhere that does
        not rank above this node, which might be the asker (two nodes disagreeing about the
        owner would wait on each other), or still waiting for its fetch slot: the slots may
        all be held by fetches waiting on the asker, whose own slots wait on this node (two
        nodes reading at once waited on each other until the peer timeout). That fetch then
        takes the chunk this one brings.
        `cached_only` is also served a chunk a flight has brought and is writing to tier 1
        (an owner that could not keep it asks the node it sent it to at once); None when
        neither has it. When tier 1 does not keep the chunk (a full disk), its flight holds
        it for `LINGER`, and the `asker` (a peer id) is remembered and asked for it before
        the cloud the next time: a full owner read each of its chunks from the cloud once
        per node that asked, 1.28-1.36x a file three nodes read at once (before
        2026-12-07). Raises as `read`.
        """
        if self._closed:
            raise RuntimeError("the read path is closed")
        if chunk.id not in self._flights:
            data = await self._from_local(chunk, 0, chunk.length)
            if data is not None or cached_only:
                return data
        elif cached_only:
            flying = self._flights.published(chunk.id)
            return None if flying is None else flying.data
        waits = chunk.id in self._asking_peers or chunk.id in self._queued
        flights = self._peer_flights if waits else self._flights
        fetched, _ = await flights.do(chunk.id, partial(self._fetch, chunk, False))
        if asker is not None:
            fetched.kept.add_done_callback(partial(self._handed_to, chunk.id, asker))
        return fetched.data

    def _handed_to(self, chunk_id: ChunkId, asker: str, kept: asyncio.Future[bool]) -> None:
        """Remember `asker` among the holders of a chunk that tier 1 did not keep."""
        if not kept.cancelled() and not kept.result():
            self._remember_handed(chunk_id, asker)

    def _remember_handed(self, chunk_id: ChunkId, asker: str) -> None:
        """Remember `asker` among the peers a chunk that tier 1 did not keep went to."""
        askers = self._handed.pop(chunk_id, ())
        self._handed[chunk_id] = (asker, *(a for a in askers if a != asker))[:HANDED_ASKERS]
        if len(self._handed) > HANDED_CHUNKS:
            self._handed.popitem(last=False)

    async def close(self) -> None:
        """Cancel all read-ahead and fetches under way and wait until they are gone."""
        self._closed = True
        await asyncio.gather(*(reader.close() for reader in list(self._readers)))
        await self._flights.close()
        await self._peer_flights.close()

    # -- one chunk ----------------------------------------------------------------------

    def _held(
        self, chunk: ChunkRef, lo: int, hi: int, reader: SequentialReader | None
    ) -> Data | None:
        """Bytes [lo, hi) of `chunk` without an await: held by the reader, or a usual tier-1
        hit; else None. A sequential reader of small reads takes the whole chunk at its
        first read of it (one large copy, not many small ones) and holds it until it has
        passed it."""
        if reader is not None:
            held = reader.claim(chunk.index)
            if held is not None:
                return _piece(held, lo, hi)
        if self._read_now is None or chunk.id in self._flights:
            return None
        small = hi - lo < min(chunk.length, WHOLE_CHUNK_BELOW)
        if reader is not None and reader.window and small:
            whole = self._read_now(chunk, 0, chunk.length)
            if whole is not None:
                reader.hold(chunk.index, whole)
                return _piece(whole, lo, hi)
        return self._read_now(chunk, lo, hi - lo)

    async def _read_chunk(
        self,
        chunk: ChunkRef,
        lo: int,
        hi: int,
        reader: SequentialReader | None,
        on_fetched: OnFetched | None,
    ) -> Data:
        """Bytes [lo, hi) of `chunk`, from whichever tier has it first."""
        held = self._held(chunk, lo, hi, reader)
        if held is not None:
            return held
        return await self._fetch_piece(chunk, lo, hi, reader, on_fetched)

    async def _fetch_piece(
        self,
        chunk: ChunkRef,
        lo: int,
        hi: int,
        reader: SequentialReader | None,
        on_fetched: OnFetched | None,
    ) -> Data:
        """Bytes [lo, hi) of `chunk` when `_held` had none: tier 1 read off the loop, or a
        flight of the whole chunk."""
        if chunk.id not in self._flights:
            ticket = self._flights.ticket()
            data = await self._from_local(chunk, lo, hi - lo)
            if data is None and self._flights.finished_since(chunk.id, ticket):
                data = await self._from_local(chunk, lo, hi - lo)  # kept by a flight just ended
            if data is not None:
                return data
        handed = on_fetched if on_fetched is not None and (lo > 0 or hi < chunk.length) else None
        # Around the page cache when its bytes are kept elsewhere: by the hook, or by a
        # sequential reader until it has passed the chunk (FUSE's page cache after that).
        around = handed is not None or (reader is not None and reader.window > 0)
        fetch = partial(self._fetch, chunk, True, around_page_cache=around)
        flight, joined = await self._flights.do(chunk.id, fetch)
        if joined:
            self._stats.singleflight_joins += 1
        elif handed is not None:
            handed(chunk, flight.data, lo, hi)
        if reader is not None:
            reader.hold(chunk.index, flight.data, flight.kept)  # the next reads need it too
        return _piece(flight.data, lo, hi)

    async def _in_tier1(self, chunk: ChunkRef) -> bool:
        """Whether tier 1 holds `chunk` (or a flight of it just ended: no need to fetch)."""
        if self._holds is not None:
            return self._holds(chunk.id)
        ticket = self._flights.ticket()  # a tier 1 that cannot tell: read one byte
        found = await self._from_local(chunk, 0, min(1, chunk.length)) is not None
        return found or self._flights.finished_since(chunk.id, ticket)

    async def _fetch(
        self,
        chunk: ChunkRef,
        ask_peers: bool,
        publish: Publish[_Fetched],
        *,
        around_page_cache: bool = False,
        admit: bool = False,
        prefetch: bool = False,
    ) -> None:
        """One flight: the whole chunk from the peers (for this node's own reads) or the
        cloud, then into tier 1: its own reads' budget, or the peers' when it fetched for
        them; around the page cache when its bytes are kept in memory elsewhere (for a
        sequential reader: it holds them; handed to an `OnFetched` hook: the mount's page
        cache).
        `admit` keeps it in tier 1 even where admission would not (a warm). A `prefetch`
        (a reader's read-ahead, which holds a prefetch slot, or a warm, which bounds its
        own loads) takes no demand slot; a demand read's flight does.

        Fetches for other nodes have slots of their own: were they to wait for slots held
        by flights that wait on peers, two nodes reading at once could wait on each other.
        A flight that a fetch for other nodes overtook while it waited for its slot takes
        that one's chunk (the cloud sends it once).
        """
        if not ask_peers:
            async with self._serve_slots:
                data = await self._from_peers(chunk, held_only=True)
                if data is None:
                    data = await self._from_cloud(chunk)
                kept = await self._hand_over(chunk, data, publish, Origin.PEER)
            if not kept and not self._lingering.locked():
                async with self._lingering:  # requests for the chunk meanwhile join the flight
                    await asyncio.sleep(LINGER)
            return
        ticket = self._peer_flights.ticket()
        # Both held while storing (see the module docstring); a prefetch's reader holds its slot.
        demand = None if prefetch else self._demand_slots
        async with self._slot(self._flight_slots, chunk.id), self._slot(demand, chunk.id):
            served = await self._served(chunk, ticket)
            if served is not None:
                publish(served)  # kept in tier 1 by the fetch for other nodes
                return
            data = await self._from_peers(chunk)
            from_cloud = data is None
            if data is None:
                data = await self._from_cloud(chunk)
            keep = partial(self._hand_over, chunk, data, publish, self._origin(chunk))
            if not await keep(around_page_cache, admit) and from_cloud:
                await self._hand_on(chunk, data)  # peers asking meanwhile join this flight

    def _origin(self, chunk: ChunkRef) -> Origin:
        """The budget a chunk fetched for this node's own reads counts against: the peers'
        for a chunk this node owns in a cluster, which the others ask it for. Its own
        reads' budget evicted such chunks as it read on (a small `-nvme-size`), and the
        next node's read had the owner read them from the cloud again (before 2026-12-07:
        1.16x a file a node of 16 MiB read first, then two others). A peers' budget too
        small for a chunk (`-peer-size 1MiB`) leaves them in its own reads' budget."""
        if self._peers is None or self._peer_budget < chunk.length:
            return Origin.LOCAL
        return Origin.PEER if self._peers.owns_for_others(chunk) else Origin.LOCAL

    @asynccontextmanager
    async def _slot(
        self, slots: asyncio.Semaphore | None, chunk_id: ChunkId
    ) -> AsyncIterator[None]:
        """One of `slots` (None: none to take) for this node's flight of a chunk, which is
        `_queued` meanwhile."""
        if slots is None:
            yield
            return
        with _marked(self._queued, chunk_id):
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    async def _served(self, chunk: ChunkRef, ticket: int) -> _Fetched | None:
        """The chunk as a fetch of it for other nodes brings it (one under way, which may
        have started while this node's flight waited for its slot) or brought it (one
        that ended since `ticket`, from tier 1); else None."""
        if chunk.id in self._peer_flights:
            fetched, _ = await self._peer_flights.do(chunk.id, partial(self._fetch, chunk, False))
            return fetched
        if not self._peer_flights.finished_since(chunk.id, ticket):
            return None
        data = await self._from_local(chunk, 0, chunk.length)
        if data is None:
            return None  # not kept, or evicted since
        kept = asyncio.get_running_loop().create_future()
        kept.set_result(True)
        return _Fetched(data, kept)

    async def _hand_over(
        self,
        chunk: ChunkRef,
        data: Data,
        publish: Publish[_Fetched],
        origin: Origin,
        around_page_cache: bool = False,
        admit: bool = False,
    ) -> bool:
        """Give the chunk to the flight's readers, then keep it in tier 1. False when tier 1
        had no room for it (not: admission did not want it)."""
        fetched = _Fetched(data, asyncio.get_running_loop().create_future())
        publish(fetched)
        return await self._keep(chunk, fetched, origin, around_page_cache, admit)

    async def _hand_on(self, chunk: ChunkRef, data: Data) -> None:
        """A chunk this node owns and read from the cloud, that its tier 1 had no room for:
        to the next node to keep, which this node asks for it before the cloud from then on
        (before 2026-12-07 it read the chunk through again for each peer that asked)."""
        if self._peers is None or self._peers.owner_elsewhere(chunk):
            return  # (asked first: no copy of a chunk another node owns)
        try:
            holder = await self._peers.hand_on(chunk, bytes(data))
        except Exception as exc:
            log.info("chunk %s not handed on to a peer: %s", chunk.id, exc)
            return
        if holder is not None:
            self._remember_handed(chunk.id, holder)

    # -- the tiers ----------------------------------------------------------------------

    async def _from_local(self, chunk: ChunkRef, offset: int, length: int) -> Data | None:
        """Tier 1 (it counts its own hits and misses); a failing disk is a miss."""
        try:
            data = await self._cache.read(chunk, offset, length)
        except Exception as exc:
            self._stats.tier(Tier.LOCAL).errors += 1
            log.warning("tier 1 failed to read chunk %s: %s", chunk.id, exc)
            return None
        if data is not None and len(data) != length:
            self._stats.tier(Tier.LOCAL).errors += 1
            log.warning("tier 1 gave %d bytes of chunk %s, not %d", len(data), chunk.id, length)
            return None
        return data

    async def _from_peers(self, chunk: ChunkRef, held_only: bool = False) -> Data | None:
        """Tier 2: the whole chunk, or None to fall through to the cloud. `held_only`:
        from a peer that holds it (reading through for another node: a peer asked for a
        chunk it holds answers at once, and so never waits on this node). So is a chunk
        this node owns: its flight waits on no node, and another node's request for the
        chunk joins it (were it to start a flight of its own, the cloud would send the
        chunk twice). A flight waiting on an owner that ranks above this node is joined
        too, that owner never waiting on this node: a third node's request for the chunk
        (its view of the members lacking that owner) took a fetch of its own, and the cloud
        sent the chunk to this node and to the owner."""
        if self._peers is None:
            return None
        held_only = held_only or not self._peers.owner_elsewhere(chunk)
        counters = self._stats.tier(Tier.PEER)
        try:
            if held_only:
                data = await self._peers.held_elsewhere(chunk, self._handed.get(chunk.id, ()))
            elif self._peers.owner_ranks_above(chunk):
                data = await self._peers.fetch(chunk)
            else:
                with _marked(self._asking_peers, chunk.id):
                    data = await self._peers.fetch(chunk)
        except Exception as exc:
            counters.errors += 1
            log.info("peers failed on chunk %s of %s: %s", chunk.index, chunk.obj.key, exc)
            return None
        if data is None:
            counters.misses += 1
            return None
        if len(data) != chunk.length:
            counters.errors += 1
            log.info("a peer gave %d bytes of chunk %s, not %d", len(data), chunk.id, chunk.length)
            return None
        counters.hits += 1
        counters.bytes += len(data)
        return data

    async def _from_cloud(self, chunk: ChunkRef) -> Data:
        """Tier 3: the whole chunk, pinned to the object's version."""
        counters = self._stats.tier(Tier.CLOUD)
        obj = chunk.obj
        failed = self._failed.get(chunk.id)
        if failed is not None and time.monotonic() - failed[0] < FAILED_FETCH_MEMORY:
            counters.errors += 1
            raise failed[1]
        try:
            data = await self._cloud.get_range(obj.key, chunk.start, chunk.length, obj.version)
        except asyncio.CancelledError:
            self._stats.cancelled_fetches += 1  # what the cloud sent of it is billed all the same
            raise
        except (VersionChangedError, ObjectNotFoundError):
            raise  # the object changed: the caller refreshes its metadata
        except CloudError as exc:
            counters.errors += 1
            self._remember_failure(chunk.id, exc)
            raise
        if len(data) != chunk.length:
            counters.errors += 1
            raise CloudError(
                f"{self._cloud.url}/{obj.key}: chunk {chunk.index} has {len(data)} bytes, "
                f"not {chunk.length}: the object is shorter than its metadata says"
            )
        counters.hits += 1
        counters.bytes += len(data)
        return data

    def _remember_failure(self, chunk_id: ChunkId, exc: CloudError) -> None:
        """Fail the chunk's fetches from the cloud with `exc` for FAILED_FETCH_MEMORY."""
        now = time.monotonic()
        self._failed = {
            known: failed
            for known, failed in self._failed.items()
            if now - failed[0] < FAILED_FETCH_MEMORY
        }
        self._failed[chunk_id] = (now, exc)

    async def _keep(
        self,
        chunk: ChunkRef,
        fetched: _Fetched,
        origin: Origin,
        around_page_cache: bool,
        admit: bool = False,
    ) -> bool:
        """Promote a fetched chunk to tier 1 (`admit`: whatever admission says); failing
        that, it is only not cached. False when tier 1 was asked to keep it and did not."""
        kept = asked = False
        try:
            if origin is Origin.PEER or admit or self._cache.wants(chunk):
                asked = True
                store = self._cache.store
                kept = await store(chunk, fetched.data, origin, around_page_cache=around_page_cache)
            else:
                self._stats.not_cached += 1  # not admitted (store counts its own refusals)
        except Exception as exc:
            self._stats.not_cached += 1
            log.warning("chunk %s not kept in tier 1: %s", chunk.id, exc)
        finally:
            if not fetched.kept.done():
                fetched.kept.set_result(kept)
        return kept or not asked


@contextmanager
def _marked(marks: dict[ChunkId, object], chunk_id: ChunkId) -> Iterator[None]:
    """`chunk_id` in `marks` for as long as this flight of it is in the state they mark.
    A flight winding down after its cancel takes off only its own mark: a new flight of
    the chunk may have marked it meanwhile, and a peer's request would then join that
    one, which may wait on the asker (the two-node stall, until the peer timeout)."""
    mark = object()
    marks[chunk_id] = mark
    try:
        yield
    finally:
        if marks.get(chunk_id) is mark:
            del marks[chunk_id]


def _piece(data: Data, lo: int, hi: int) -> Data:
    """Bytes [lo, hi) of `data` without copying them: FUSE replies take any buffer."""
    return data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi]

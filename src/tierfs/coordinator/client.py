"""The client side of the coordinator: what a node runs to be a member of the cluster.

`CoordinatorClient.run()` registers, then heartbeats every `heartbeat_interval` (the
coordinator's, unless one is pinned) with the node's state, usage and cache counters,
and keeps the last membership it was told (`members`, `epoch`). It never raises into its
caller: while the coordinator is down or refuses us it retries with jittered exponential
backoff, logging one WARNING when trouble starts and one INFO when it is over, and the
node keeps its last membership (reads fall back to tier 1 and the cloud meanwhile).
When the coordinator answers that it does not know us (404: it was restarted on a wiped
data dir) the client registers again and re-announces every location it reported. When
it refuses us because a live node elsewhere has our peer id (409 peer_id_taken: two nodes
given one id), the WARNING says where, and registering is retried as after an outage: the
node stays out of tier 2 until that one leaves or expires. An
answer is read up to MAX_ANSWER bytes: a longer one (a broken coordinator, or a
`-coordinator` URL of some other server) is a failed request, as an outage is.

Locations are reported best effort: `report_location` records what this node holds in a
ledger and returns at once; a background loop sends each changed path (coalesced, as a
`replace` of the whole chunk list, so retries are idempotent) when the coordinator is
reachable. Cancel the `run()` task to stop; `leave()` says goodbye first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from pydantic import BaseModel, ValidationError

from tierfs.coordinator.models import (
    MAX_CHUNKS_PER_REPORT,
    HeartbeatRequest,
    Location,
    LocationReport,
    Locations,
    Membership,
    NodeStatsReport,
    PeerInfo,
    PeerState,
    RegisterRequest,
    TierBytes,
)
from tierfs.security import AnswerTooLargeError, check_path, read_bounded
from tierfs.stats import NodeStats

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds for one request to the coordinator
BACKOFF_BASE = 0.5  # seconds: the first retry after a failure
BACKOFF_MAX = 30.0  # seconds: never wait longer than this between tries
FLUSH_DELAY = 0.2  # seconds: location reports arriving together go out together
# bytes of one answer: the largest are the locations of a file, up to MAX_CHUNKS_PER_ENTRY
# (2**20) chunk indices per holder, ~8 MiB of JSON; 64 MiB holds a 4 TiB file fully
# cached on 8 nodes (smaller files on many more) or the membership of 100,000 peers
MAX_ANSWER = 64 * 2**20


@dataclass(frozen=True)
class NodeReport:
    """What a node says about itself with each heartbeat."""

    capacity: TierBytes = field(default_factory=TierBytes)
    usage: TierBytes = field(default_factory=TierBytes)
    stats: NodeStats | None = None


class Backoff:
    """Exponential backoff with 'equal jitter': try n waits between d/2 and d, where
    d = min(cap, base * 2**n). Never near zero (no hammering), never in lockstep."""

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rand = base, cap, rand
        self.attempts = 0

    def next(self) -> float:
        ceiling: float = min(self.cap, self.base * 2.0 ** min(self.attempts, 32))
        self.attempts += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        self.attempts = 0


class _Trouble(Exception):
    """A request to the coordinator failed; the message says why in a few words."""


class _Unreachable(_Trouble):
    """No answer, or a 5xx/408/429: the coordinator is down or overloaded."""


class _Refused(_Trouble):
    """401/403: our token is missing or wrong."""


class _Rejected(_Trouble):
    """Another 4xx: the coordinator refused this request (it will refuse it again)."""


class _Unregistered(Exception):
    """404 unknown_peer: the coordinator does not know us."""


class CoordinatorClient:
    """Membership of one node. See the module docstring for the contract.

    `url` is the coordinator's base URL (`http://host:8080`, `https://...`; a bare
    `host:port` means http). `report` is called before each heartbeat and must be quick.
    `on_change` is called with each new membership (the epoch moved). `session`, if given,
    stays the caller's to close; otherwise the client makes one and `close()` closes it.
    Raises ValueError at construction for an invalid peer id or address.
    """

    def __init__(
        self,
        url: str,
        peer_id: str,
        address: str,
        report: Callable[[], NodeReport],
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        heartbeat_interval: float | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        on_change: Callable[[Membership], None] | None = None,
    ) -> None:
        try:
            RegisterRequest(peer_id=peer_id, address=address)
        except ValidationError as exc:
            raise ValueError(f"cannot register as {peer_id!r} at {address!r}: {exc}") from None
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.peer_id, self.address = peer_id, address
        self.status: PeerState = "active"  # set "draining" before a planned shutdown
        self.instance = secrets.token_hex(8)  # this process, told apart from another of our id
        self._report = report
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session, self._own_session = session, session is None
        self._ssl = ssl_context
        self._pinned_interval = heartbeat_interval
        self._interval = heartbeat_interval or 5.0
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._on_change = on_change
        self._membership: Membership | None = None
        self._registered = False
        self._trouble: str | None = None  # why the coordinator is out of reach, if it is
        self._trouble_since = 0.0
        self._lock = asyncio.Lock()  # one membership request at a time; leave() waits on it
        self._stopping = asyncio.Event()
        self._kick = asyncio.Event()  # heartbeat (or register) now
        self._wake = asyncio.Event()  # location reports are waiting
        self._held: dict[str, tuple[str, frozenset[int]]] = {}  # path -> (version, chunks)
        self._dirty: dict[str, None] = {}  # paths to send, in order (an ordered set)

    # --- what the node reads ----------------------------------------------------------------

    @property
    def members(self) -> list[PeerInfo]:
        """The live peers at the last answer (this node included); [] before the first."""
        peers = None if self._membership is None else self._membership.peers
        return list(peers or [])

    @property
    def epoch(self) -> int | None:
        return None if self._membership is None else self._membership.epoch

    @property
    def membership(self) -> Membership | None:
        """The last membership the coordinator answered (None before the first)."""
        return self._membership

    async def locate(self, path: str, version: str) -> list[Location]:
        """The peers the location index lists as holding chunks of `version` of `path`.

        [] when the coordinator cannot say (down, refusing us, not yet joined): callers
        fall back to the cloud.
        """
        if self._session is None or self._trouble is not None:
            return []  # not joined yet, or down: no waiting on it in the read path
        query = urlencode({"path": path, "version": version})
        try:
            raw = await self._request("GET", f"/api/files/location?{query}")
            return Locations.model_validate_json(raw).locations
        except (_Trouble, _Unregistered, ValidationError) as exc:
            log.debug("no locations of %r from the coordinator: %s", path, exc)
            return []

    @property
    def registered(self) -> bool:
        return self._registered

    # --- locations ------------------------------------------------------------------------

    def report_location(
        self, path: str, version: str, chunks: Iterable[int], replace: bool = False
    ) -> bool:
        """Record that this node holds `chunks` of `version` of `path`; sent in the background.

        Added to the chunks already reported for that version (another version replaces
        them); `replace=True` sets them exactly, and an empty list with it withdraws the
        path. Returns False, and records nothing, for a path the coordinator would refuse.
        """
        try:
            check_path(path)
        except ValueError as exc:
            log.debug("not reporting %r to the coordinator: %s", path, exc)
            return False
        held = self._held.get(path)
        new = frozenset(chunks)
        if not replace and held is not None and held[0] == version:
            new |= held[1]
        self._held[path] = (version, new)  # an empty set is a withdrawal not yet sent
        self._dirty[path] = None
        self._wake.set()
        return True

    def withdraw_location(self, path: str, version: str, chunks: Iterable[int]) -> None:
        """Record that this node no longer holds `chunks` of `version` of `path`."""
        held = self._held.get(path)
        if held is None or held[0] != version:
            return
        self.report_location(path, version, held[1] - frozenset(chunks), replace=True)

    def _reannounce(self) -> None:
        for path in self._held:
            self._dirty[path] = None
        if self._dirty:
            self._wake.set()

    async def _send_location(self, path: str) -> None:
        version, chunks = self._held[path]
        ordered = sorted(chunks)
        # the first part replaces what the coordinator lists, the others add to it
        step = MAX_CHUNKS_PER_REPORT
        parts = [ordered[i : i + step] for i in range(0, len(ordered) or 1, step)]
        for index, part in enumerate(parts):
            report = LocationReport(
                path=path, peer_id=self.peer_id, version=version, chunks=part, replace=index == 0
            )
            await self._request("PUT", "/api/files/location", report)
        if not chunks and self._held.get(path) == (version, chunks):
            del self._held[path]  # the withdrawal is through

    async def _flush_locations(self) -> None:
        while self._dirty and self._registered and self._trouble is None:
            path = next(iter(self._dirty))
            del self._dirty[path]
            try:
                await self._send_location(path)
            except _Rejected as exc:
                log.warning("coordinator refused the location of %r: %s", path, exc)
            except BaseException:
                self._dirty[path] = None  # sent again later
                raise

    async def _location_loop(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_DELAY)
            try:
                await self._flush_locations()
            except _Unregistered:
                self._registered = False
                self._kick.set()
            except (_Trouble, ValidationError) as exc:
                log.debug("location reports wait for the coordinator: %s", exc)
                self._kick.set()  # the heartbeat loop notices, logs and retries

    # --- membership ---------------------------------------------------------------------------

    def _backoff_cap(self) -> float:
        return min(BACKOFF_MAX, max(1.0, 2 * self._interval))

    async def run(self) -> None:
        """Register, heartbeat and report locations until cancelled or `leave()`.

        Never raises (but CancelledError): failures are logged and retried.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        locations = asyncio.create_task(self._location_loop(), name="coordinator-locations")
        try:
            await self._membership_loop()
        finally:
            locations.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await locations

    async def _membership_loop(self) -> None:
        backoff = Backoff(BACKOFF_BASE, self._backoff_cap())
        while not self._stopping.is_set():
            self._kick.clear()
            try:
                async with self._lock:
                    if self._stopping.is_set():
                        return
                    if self._registered:
                        await self._heartbeat()
                    else:
                        await self._register()
            except _Unregistered:
                log.info("coordinator %s does not know %s: registering", self.url, self.peer_id)
                self._registered = False
                continue
            except (_Trouble, ValidationError) as exc:
                self._troubled(exc)
                backoff.cap = self._backoff_cap()
                await self._pause(backoff.next())
                continue
            except Exception:  # a bug, here or in the report function: keep the node going
                log.exception("coordinator client: unexpected error")
                await self._pause(backoff.next())
                continue
            self._recovered()
            backoff.reset()
            await self._pause(self._interval)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if kicked or stopped."""
        kick = asyncio.ensure_future(self._kick.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({kick, stop}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            kick.cancel()
            stop.cancel()

    def _troubled(self, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, _Trouble) else f"unexpected answer: {exc}"
        if self._trouble is None:
            self._trouble, self._trouble_since = reason, time.monotonic()
            known = len(self.members)
            log.warning(
                "coordinator %s: %s; retrying in the background, keeping the last "
                "membership (%d peers)",
                self.url,
                reason,
                known,
            )
        else:
            log.debug("coordinator %s still out of reach: %s", self.url, reason)

    def _recovered(self) -> None:
        if self._trouble is not None:
            log.info(
                "coordinator %s: back after %.1fs",
                self.url,
                time.monotonic() - self._trouble_since,
            )
            self._trouble = None
        if self._dirty:
            self._wake.set()

    def _state(self) -> tuple[TierBytes, TierBytes, NodeStatsReport | None]:
        report = self._report()
        stats = None
        if report.stats is not None:
            stats = NodeStatsReport.model_validate(report.stats.as_dict())
        return report.capacity, report.usage, stats

    async def _register(self) -> None:
        capacity, usage, stats = self._state()
        request = RegisterRequest(
            peer_id=self.peer_id,
            address=self.address,
            status=self.status,
            capacity=capacity,
            usage=usage,
            stats=stats,
            instance=self.instance,
        )
        self._adopt(await self._request("POST", "/api/peers/register", request))
        self._registered = True
        log.info(
            "registered %s at %s with coordinator %s (epoch %s, %d peers)",
            self.peer_id,
            self.address,
            self.url,
            self.epoch,
            len(self.members),
        )
        self._reannounce()  # a coordinator that forgot us forgot our locations too

    async def _heartbeat(self) -> None:
        capacity, usage, stats = self._state()
        request = HeartbeatRequest(
            peer_id=self.peer_id,
            status=self.status,
            capacity=capacity,
            usage=usage,
            stats=stats,
            epoch=self.epoch,
        )
        self._adopt(await self._request("PUT", "/api/peers/status", request))

    def _adopt(self, raw: bytes) -> None:
        answer = Membership.model_validate_json(raw)
        if self._pinned_interval is None:
            self._interval = answer.heartbeat_interval
        if answer.peers is None and self._membership is not None:
            if answer.epoch == self._membership.epoch:
                return  # unchanged
            answer = answer.model_copy(update={"peers": self._membership.peers})
        changed = self._membership is None or answer.epoch != self._membership.epoch
        self._membership = answer
        if changed and self._on_change is not None:
            self._on_change(answer)

    async def _request(self, method: str, path: str, body: BaseModel | None = None) -> bytes:
        assert self._session is not None
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = body.model_dump_json().encode()
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method,
                self.url + path,
                data=data,
                headers=headers,
                ssl=self._ssl,
                timeout=self._timeout,
            ) as response:
                payload = await read_bounded(response, MAX_ANSWER)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Unreachable(_describe(exc)) from None
        except AnswerTooLargeError as exc:
            raise _Trouble(f"{exc}: not a coordinator's answer") from None
        if 200 <= status < 300:
            return payload
        if status == 404 and b'"unknown_peer"' in payload:
            raise _Unregistered()
        if status == 409 and b'"peer_id_taken"' in payload:
            raise _Rejected(_message(payload))
        if status in (401, 403):
            raise _Refused(f"HTTP {status}: the coordinator refused our token")
        if status >= 500 or status in (408, 429):
            raise _Unreachable(f"HTTP {status}")
        raise _Rejected(f"HTTP {status}: {payload[:300].decode(errors='replace')}")

    # --- the end ---------------------------------------------------------------------------

    async def leave(self) -> None:
        """Stop heartbeating and leave the cluster (DELETE /api/peers/{id}); best effort,
        bounded by the request timeout. `run()` returns soon after."""
        self._stopping.set()
        if self._session is None or not self._registered:
            return
        async with self._lock:  # a registration in flight lands before we leave
            try:
                await self._request("DELETE", f"/api/peers/{self.peer_id}")
                log.info("%s left the cluster", self.peer_id)
            except (_Trouble, _Unregistered) as exc:
                log.info("%s could not say goodbye to the coordinator: %s", self.peer_id, exc)
            self._registered = False

    async def close(self) -> None:
        """Close the HTTP session if the client made it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    return f"{type(exc).__name__}: {exc}"


def _message(payload: bytes) -> str:
    """The message of an error answer of the coordinator."""
    try:
        return str(json.loads(payload)["message"])
    except (ValueError, KeyError, TypeError):
        return payload[:300].decode(errors="replace")

"""Membership: registration, heartbeats, expiry, departure, and the epoch.

Plain functions over a `sqlite3.Connection`, run on the database thread (db.Database.run)
and unit-tested without a loop or a server; `now` is always passed in (unix seconds).

Rules:
- A peer is live (`active` or `draining`) while it has heartbeated within `peer_expiry`;
  after that it is `dead`: left out of `GET /api/peers` and of location answers, but kept
  (with its locations) so that a heartbeat or a new registration brings it back whole.
- A peer dead for `dead_peer_retention` more (silent `peer_expiry` + that) is forgotten by
  the sweep, as if it had left: its row and locations go, its counters stay in the totals.
  Its next heartbeat is told it is unknown, and it registers again as a new peer. Nodes
  replaced without leaving (spot instances, autoscaling, crashes) so do not pile up.
- The epoch changes whenever the live set or a live peer's address or state changes: a
  peer joins, leaves, dies, comes back, moves, starts or stops draining. Usage and
  counters change with every heartbeat and do not move the epoch.
- Expiry is applied before every answer that shows membership, and by a periodic sweep,
  so the epoch moves as soon as anyone could see the change.
- A peer id belongs to one process at a time: a registration from another process
  (`instance`) at another address than the live peer of that id is refused (two nodes
  given one id); the same address is that node restarted, and is let in. A registration
  from another process of a known peer drops the locations its last run reported (its
  tier 1 may have been wiped or trimmed): the new process announces what it holds.
- Time the coordinator did not run is not the peers' silence: stopped, restarted, paused
  (SIGSTOP, swapped out, a VM migrated) or its clock stepped forward, it finds at its next
  expiry that no sweep ran for over two sweep periods, and moves every live peer's last
  heartbeat on by that gap before judging it. Before 2026-12-07 a coordinator paused past
  `peer_expiry` marked every peer dead as it woke (and live again at their next
  heartbeat): 2 epochs per peer, and for a moment nodes that saw no owner for a chunk.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import dataclass
from typing import Any

from tierfs.coordinator import stats
from tierfs.coordinator.db import get_meta, set_meta, transaction
from tierfs.coordinator.models import (
    HeartbeatRequest,
    Membership,
    PeerInfo,
    RegisterRequest,
    TierBytes,
)

log = logging.getLogger(__name__)

AWAY_AFTER_SWEEPS = 2  # sweep periods with no expiry that mean the coordinator did not run

_PEER_COLUMNS = (
    "peer_id, address, status, capacity_local, capacity_peer, usage_local, usage_peer, "
    "registered_at, last_heartbeat"
)


@dataclass(frozen=True)
class Timing:
    """The coordinator's heartbeat contract, told to every peer in each membership answer,
    and how long a dead peer is kept (`math.inf`: for ever; not told)."""

    heartbeat_interval: float
    peer_expiry: float
    dead_peer_retention: float
    sweep_every: float = math.inf  # the periodic sweep's period (inf: none runs)

    def away(self, gap: float) -> bool:
        """Whether `gap` seconds between two expiries mean the coordinator did not run."""
        return gap > AWAY_AFTER_SWEEPS * self.sweep_every


@dataclass(frozen=True)
class Answer:
    """A membership answer (the `Membership` schema) as it goes on the wire.

    The peer list is JSON made by SQLite itself (`json_group_array`): in C, with the GIL
    released, 200 peers take ~0.4 ms, where building PeerInfo models took ~1.2 ms of
    Python holding the GIL away from the event loop. Heartbeats after a burst of joins
    each carry the list, so this is the coordinator's hottest path.
    """

    epoch: int
    timing: Timing
    peers_json: str | None  # None: the caller's epoch is current

    def to_json(self) -> bytes:
        return (
            f'{{"epoch":{self.epoch},"heartbeat_interval":{self.timing.heartbeat_interval!r},'
            f'"peer_expiry":{self.timing.peer_expiry!r},"peers":{self.peers_json or "null"}}}'
        ).encode()

    def model(self) -> Membership:
        return Membership.model_validate_json(self.to_json())


def current_epoch(conn: sqlite3.Connection) -> int:
    return int(get_meta(conn, "epoch", "0"))


def _bump(conn: sqlite3.Connection) -> int:
    epoch = current_epoch(conn) + 1
    set_meta(conn, "epoch", str(epoch))
    return epoch


def expire(conn: sqlite3.Connection, now: float, timing: Timing) -> None:
    """Mark dead the live peers silent for longer than `peer_expiry`, once any time the
    coordinator did not run is excused; inside the caller's transaction."""
    _excuse_absence(conn, now, timing)
    peer_expiry = timing.peer_expiry
    cutoff = now - peer_expiry
    expired = [
        row[0]
        for row in conn.execute(
            "SELECT peer_id FROM peers WHERE status != 'dead' AND last_heartbeat < ?", (cutoff,)
        )
    ]
    if not expired:
        return
    conn.execute(
        "UPDATE peers SET status = 'dead' WHERE status != 'dead' AND last_heartbeat < ?",
        (cutoff,),
    )
    epoch = _bump(conn)
    log.info("no heartbeat for %gs: %s marked dead (epoch %d)", peer_expiry, _few(expired), epoch)


def _excuse_absence(conn: sqlite3.Connection, now: float, timing: Timing) -> None:
    """Move the live peers' last heartbeats on by the time since the last expiry, when that
    long without one means the coordinator did not run (see the module's rules)."""
    last = float(get_meta(conn, "expired_at", str(now)))
    set_meta(conn, "expired_at", repr(now))
    gap = now - last
    if not timing.away(gap):
        return
    moved = conn.execute(
        "UPDATE peers SET last_heartbeat = last_heartbeat + ? WHERE status != 'dead'", (gap,)
    ).rowcount
    log.info(
        "the coordinator did not run for %.1fs (stopped, paused, or its clock moved): "
        "not counted as silence of its %d live peers",
        gap,
        moved,
    )


def forget(conn: sqlite3.Connection, now: float, timing: Timing) -> None:
    """Drop the peers dead for longer than `timing.dead_peer_retention`, as `leave` does (the
    epoch stays: the live set is the same); inside the caller's transaction."""
    if math.isinf(timing.dead_peer_retention):
        return
    dead_since = now - timing.dead_peer_retention  # dead = silent past peer_expiry
    rows = conn.execute(
        "SELECT peer_id, last_heartbeat FROM peers WHERE status = 'dead' "
        "AND last_heartbeat + ? < ? ORDER BY last_heartbeat, peer_id",
        (timing.peer_expiry, dead_since),
    ).fetchall()
    if not rows:
        return
    for peer_id, _ in rows:
        stats.retire(conn, peer_id)
        conn.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
    # one line for the sweep, not one a peer: nodes replaced at once go in one sweep
    log.info(
        "%s forgotten, with %s locations: dead for over %gs (-dead-peer-retention), "
        "no heartbeat for %.0fs%s",
        f"peer {rows[0][0]}" if len(rows) == 1 else f"{len(rows)} peers",
        "its" if len(rows) == 1 else "their",
        timing.dead_peer_retention,
        now - rows[0][1],
        "" if len(rows) == 1 else f" at most: {_few([peer_id for peer_id, _ in rows])}",
    )


def _few(peer_ids: list[str]) -> str:
    """The first ten of `peer_ids` and how many more, for a log line."""
    shown = ", ".join(peer_ids[:10])
    if len(peer_ids) > 10:
        shown += f" and {len(peer_ids) - 10} more"
    return shown


def sweep(conn: sqlite3.Connection, now: float, timing: Timing) -> int:
    """Apply expiry and forget the peers dead past the retention now; return the epoch."""
    with transaction(conn):
        expire(conn, now, timing)
        forget(conn, now, timing)
        return current_epoch(conn)


def _peer(row: Any) -> PeerInfo:
    peer_id, address, status, cap_local, cap_peer, use_local, use_peer, registered, heard = row
    return PeerInfo(
        peer_id=peer_id,
        address=address,
        status=status,
        capacity=TierBytes(local=cap_local, peer=cap_peer),
        usage=TierBytes(local=use_local, peer=use_peer),
        registered_at=registered,
        last_heartbeat=heard,
    )


_LIVE_PEERS_JSON = """
SELECT json_group_array(json_object(
    'peer_id', peer_id, 'address', address, 'status', status,
    'capacity', json_object('local', capacity_local, 'peer', capacity_peer),
    'usage', json_object('local', usage_local, 'peer', usage_peer),
    'registered_at', registered_at, 'last_heartbeat', last_heartbeat))
FROM (SELECT * FROM peers WHERE status != 'dead' ORDER BY peer_id)
"""


def live_peers_json(conn: sqlite3.Connection) -> str:
    """The live peers, by id, as a JSON array of `PeerInfo`."""
    return str(conn.execute(_LIVE_PEERS_JSON).fetchone()[0])


class Snapshot:
    """The last live-peer list built, with its epoch, reused by heartbeat answers for up to
    `max_age` seconds: after a change every peer's next heartbeat wants the list, and
    building it once instead of once per peer keeps a join in a 500-peer cluster (or 500
    peers starting at once) from queueing seconds of work. Registrations always build
    afresh and refresh it. Touched on the database thread only.
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.epoch = -1
        self.built = -math.inf
        self.peers_json = "[]"

    def fresh(self, now: float) -> bool:
        return 0 <= now - self.built < self.max_age

    def store(self, epoch: int, now: float, peers_json: str) -> None:
        self.epoch, self.built, self.peers_json = epoch, now, peers_json


def all_peers(conn: sqlite3.Connection, now: float, timing: Timing) -> list[PeerInfo]:
    """Every peer the coordinator knows once swept, dead ones not yet forgotten included
    (`tierfs status`)."""
    sweep(conn, now, timing)
    return known_peers(conn)


def known_peers(conn: sqlite3.Connection) -> list[PeerInfo]:
    """Every peer in the table as it is (the caller swept it), by id."""
    rows = conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers ORDER BY peer_id").fetchall()
    return [_peer(row) for row in rows]


def _answer(conn: sqlite3.Connection, timing: Timing, known_epoch: int | None) -> Answer:
    epoch = current_epoch(conn)
    return Answer(epoch, timing, None if known_epoch == epoch else live_peers_json(conn))


def _heartbeat_answer(
    conn: sqlite3.Connection, timing: Timing, known: int | None, now: float, snapshot: Snapshot
) -> Answer:
    """The answer to a heartbeat: nothing if `known` is current; else the snapshot if it is
    fresh and newer than `known`; nothing yet if the caller is already as new as a fresh
    snapshot (it hears of the change within `max_age`); else a new list. An answer never
    takes a peer's epoch backwards."""
    epoch = current_epoch(conn)
    if known == epoch:
        return Answer(epoch, timing, None)
    if snapshot.fresh(now) and (known is None or known < epoch):  # (a future epoch: bogus)
        if known is None or snapshot.epoch > known:
            return Answer(snapshot.epoch, timing, snapshot.peers_json)
        return Answer(known, timing, None)
    peers = live_peers_json(conn)
    snapshot.store(epoch, now, peers)
    return Answer(epoch, timing, peers)


def membership(conn: sqlite3.Connection, now: float, timing: Timing) -> Answer:
    """`GET /api/peers`: the live peers and the epoch."""
    with transaction(conn):
        expire(conn, now, timing)
        return _answer(conn, timing, None)


class PeerIdTakenError(Exception):
    """A live peer of this id registered from another process at another address: two
    nodes were given one id. The message says where the other one is."""


def register(
    conn: sqlite3.Connection,
    request: RegisterRequest,
    now: float,
    timing: Timing,
    snapshot: Snapshot | None = None,
) -> Answer:
    """Add or refresh a peer (live at once, whatever it was) and return the membership.
    Raises PeerIdTakenError when the id is live at another address from another process
    (`instance`): the peer that has it keeps it until it leaves or expires."""
    with transaction(conn):
        expire(conn, now, timing)
        row = conn.execute(
            "SELECT address, status, instance FROM peers WHERE peer_id = ?", (request.peer_id,)
        ).fetchone()
        if row is not None and _taken(row, request):
            log.warning(
                "peer %s at %s refused: a live peer of that id is at %s (two nodes given "
                "one -peer-id?)",
                request.peer_id,
                request.address,
                row[0],
            )
            raise PeerIdTakenError(
                f"peer id {request.peer_id!r} is in use by a live peer at {row[0]}: give each "
                f"node its own -peer-id (a restarted node gets it back within "
                f"{timing.peer_expiry:g}s, once the old one expires)"
            )
        values = (
            request.address,
            request.status,
            request.capacity.local,
            request.capacity.peer,
            request.usage.local,
            request.usage.peer,
            now,
            now,
            request.instance,
            request.peer_id,
        )
        if row is None:
            conn.execute(
                "INSERT INTO peers (address, status, capacity_local, capacity_peer, "
                "usage_local, usage_peer, registered_at, last_heartbeat, instance, peer_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        else:
            conn.execute(
                "UPDATE peers SET address = ?, status = ?, capacity_local = ?, "
                "capacity_peer = ?, usage_local = ?, usage_peer = ?, registered_at = ?, "
                "last_heartbeat = ?, instance = ? WHERE peer_id = ?",
                values,
            )
        if (
            row is not None
            and None not in (row[2], request.instance)
            and row[2] != request.instance
        ):
            # another run of the peer: what the last one held (its tier 1 may be gone, or
            # trimmed at start) is no guide; the new one announces what it holds
            conn.execute("DELETE FROM locations WHERE peer_id = ?", (request.peer_id,))
        if request.stats is not None:
            stats.record(conn, request.peer_id, request.stats)
        if row is None or tuple(row[:2]) != (request.address, request.status):
            epoch = _bump(conn)
            what = "joined" if row is None else f"re-registered (was {row[1]} at {row[0]})"
            log.info(
                "peer %s %s at %s, %s (epoch %d)",
                request.peer_id,
                what,
                request.address,
                request.status,
                epoch,
            )
        answer = _answer(conn, timing, None)
    if snapshot is not None and answer.peers_json is not None:
        snapshot.store(answer.epoch, now, answer.peers_json)
    return answer


def _taken(row: Any, request: RegisterRequest) -> bool:
    """The peer `row` (address, status, instance) is live at another address and was
    registered by another process than the one asking."""
    address, status, instance = row
    return (
        status != "dead"
        and address != request.address
        and None not in (instance, request.instance)
        and instance != request.instance
    )


def heartbeat(
    conn: sqlite3.Connection,
    request: HeartbeatRequest,
    now: float,
    timing: Timing,
    snapshot: Snapshot | None = None,
) -> Answer | None:
    """Record a heartbeat; None when the peer is unknown (it must register). With a
    `snapshot`, the peer list may lag the epoch by up to its `max_age`."""
    with transaction(conn):
        expire(conn, now, timing)
        row = conn.execute(
            "SELECT status FROM peers WHERE peer_id = ?", (request.peer_id,)
        ).fetchone()
        if row is None:
            return None
        capacity, usage = request.capacity, request.usage
        conn.execute(
            "UPDATE peers SET last_heartbeat = ?, status = ?, "
            "capacity_local = COALESCE(?, capacity_local), "
            "capacity_peer = COALESCE(?, capacity_peer), "
            "usage_local = COALESCE(?, usage_local), usage_peer = COALESCE(?, usage_peer) "
            "WHERE peer_id = ?",
            (
                now,
                request.status,
                None if capacity is None else capacity.local,
                None if capacity is None else capacity.peer,
                None if usage is None else usage.local,
                None if usage is None else usage.peer,
                request.peer_id,
            ),
        )
        if request.stats is not None:
            stats.record(conn, request.peer_id, request.stats)
        changed = row[0] != request.status
        if changed:
            epoch = _bump(conn)
            what = "is back," if row[0] == "dead" else f"went from {row[0]} to"
            log.info("peer %s %s %s (epoch %d)", request.peer_id, what, request.status, epoch)
        if snapshot is None or changed:  # a peer that changed things sees them at once
            answer = _answer(conn, timing, request.epoch)
        else:
            return _heartbeat_answer(conn, timing, request.epoch, now, snapshot)
    if snapshot is not None and answer.peers_json is not None:
        snapshot.store(answer.epoch, now, answer.peers_json)
    return answer


def leave(conn: sqlite3.Connection, peer_id: str) -> int | None:
    """Remove a peer and its locations (its counters stay in the totals); None if unknown."""
    with transaction(conn):
        if conn.execute("SELECT 1 FROM peers WHERE peer_id = ?", (peer_id,)).fetchone() is None:
            return None
        stats.retire(conn, peer_id)
        conn.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
        epoch = _bump(conn)
    log.info("peer %s left (epoch %d)", peer_id, epoch)
    return epoch

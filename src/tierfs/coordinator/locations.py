"""The file-location index: which peers hold which chunks of which version of a path.

One entry per (path, peer): the version the peer holds and the chunk indices it has of
it. Plain functions over a `sqlite3.Connection`, run on the database thread. Entries of
dead peers stay in the index (the peer may come back) but are never answered; a peer
that leaves takes its entries with it.
"""

from __future__ import annotations

import json
import sqlite3

from tierfs.coordinator.db import transaction
from tierfs.coordinator.membership import Timing, current_epoch, expire
from tierfs.coordinator.models import (
    MAX_CHUNKS_PER_ENTRY,
    Location,
    LocationQuery,
    LocationReport,
    Locations,
    LocationStored,
)


class TooManyChunksError(ValueError):
    """The entry would list more than MAX_CHUNKS_PER_ENTRY chunks."""


def merge(held: list[int] | None, report: LocationReport, same_version: bool) -> list[int]:
    """The chunk list after `report`: added to what is held of the same version, else
    replacing it; `replace` sets it exactly. Ascending, no duplicates."""
    if report.replace or held is None or not same_version:
        return sorted(set(report.chunks))
    return sorted(set(held).union(report.chunks))


def put_location(
    conn: sqlite3.Connection, report: LocationReport, now: float
) -> LocationStored | None:
    """Store a location report; None when the peer is unknown (it must register).

    Raises TooManyChunksError when the entry would grow past MAX_CHUNKS_PER_ENTRY.
    """
    with transaction(conn):
        known = conn.execute("SELECT 1 FROM peers WHERE peer_id = ?", (report.peer_id,)).fetchone()
        if known is None:
            return None
        row = conn.execute(
            "SELECT version, chunks FROM locations WHERE path = ? AND peer_id = ?",
            (report.path, report.peer_id),
        ).fetchone()
        held = None if row is None else list(json.loads(row[1]))
        chunks = merge(held, report, row is not None and row[0] == report.version)
        if len(chunks) > MAX_CHUNKS_PER_ENTRY:
            raise TooManyChunksError(
                f"the entry would list {len(chunks)} chunks, more than {MAX_CHUNKS_PER_ENTRY}"
            )
        if chunks:
            conn.execute(
                "INSERT INTO locations (path, peer_id, version, chunks, chunk_count, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path, peer_id) DO UPDATE SET "
                "version = excluded.version, chunks = excluded.chunks, "
                "chunk_count = excluded.chunk_count, updated_at = excluded.updated_at",
                (
                    report.path,
                    report.peer_id,
                    report.version,
                    json.dumps(chunks, separators=(",", ":")),
                    len(chunks),
                    now,
                ),
            )
        else:
            conn.execute(
                "DELETE FROM locations WHERE path = ? AND peer_id = ?",
                (report.path, report.peer_id),
            )
    return LocationStored(
        path=report.path, peer_id=report.peer_id, version=report.version, chunk_count=len(chunks)
    )


def get_locations(
    conn: sqlite3.Connection, query: LocationQuery, now: float, timing: Timing
) -> Locations:
    """The live peers holding `query.path` (of `query.version` if given), by peer id."""
    with transaction(conn):
        expire(conn, now, timing)
        epoch = current_epoch(conn)
        sql = (
            "SELECT l.peer_id, p.address, p.status, l.version, l.chunks, l.updated_at "
            "FROM locations AS l JOIN peers AS p ON p.peer_id = l.peer_id "
            "WHERE l.path = ? AND p.status != 'dead'"
        )
        args: tuple[str, ...] = (query.path,)
        if query.version is not None:
            sql += " AND l.version = ?"
            args += (query.version,)
        rows = conn.execute(sql + " ORDER BY l.peer_id", args).fetchall()
    return Locations(
        path=query.path,
        epoch=epoch,
        locations=[
            Location(
                peer_id=peer_id,
                address=address,
                status=status,
                version=version,
                chunks=json.loads(chunks),
                updated_at=updated_at,
            )
            for peer_id, address, status, version, chunks, updated_at in rows
        ],
    )

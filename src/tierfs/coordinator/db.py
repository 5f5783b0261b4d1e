"""The coordinator's state: one SQLite file in WAL mode, used from one worker thread.

Every statement runs on that thread (`Database.run`), never on the event loop. One thread
is enough: each request is one short transaction on a small database (a heartbeat is one
UPDATE, ~50 us), and a single writer means no SQLITE_BUSY and no lock juggling. Reads
and writes from concurrent requests queue on the thread in arrival order.

Durability: WAL with `synchronous=NORMAL`. A killed process (kill -9) loses nothing
committed; a power cut may lose the last few transactions (heartbeats and location
reports), which peers send again on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from tierfs.errors import TierfsError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

FILE_NAME = "coordinator.sqlite3"
SCHEMA_VERSION = 2  # 2: peers.instance
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    status TEXT NOT NULL,               -- active | draining | dead
    capacity_local INTEGER NOT NULL,
    capacity_peer INTEGER NOT NULL,
    usage_local INTEGER NOT NULL,
    usage_peer INTEGER NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}',   -- last counters reported, flattened (stats.flatten)
    stats_base TEXT NOT NULL DEFAULT '{}',  -- counters of the peer's earlier runs
    registered_at REAL NOT NULL,        -- unix time
    last_heartbeat REAL NOT NULL,       -- unix time
    instance TEXT                       -- drawn by the process that registered last
);
CREATE TABLE IF NOT EXISTS locations (
    path TEXT NOT NULL,
    peer_id TEXT NOT NULL REFERENCES peers(peer_id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    chunks TEXT NOT NULL,               -- JSON list of chunk indices, ascending
    chunk_count INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (path, peer_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locations_by_peer ON locations(peer_id);
"""


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def get_meta(conn: sqlite3.Connection, key: str, default: str) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (creating if need be) the database at `path` and bring its schema up to date.

    Safe to call on the thread that will use the connection only. A fresh database starts
    its membership epoch at the current time in microseconds, so a coordinator whose data
    dir was wiped never hands out an epoch a peer saw before the wipe.
    """
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit; transaction() opens them
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise TierfsError(
            f"{path}: database schema {version} is newer than this tierfs ({SCHEMA_VERSION})"
        )
    with transaction(conn):
        _create(conn)
        if version == 1:
            conn.execute("ALTER TABLE peers ADD COLUMN instance TEXT")
        if get_meta(conn, "epoch", "") == "":
            set_meta(conn, "epoch", str(time.time_ns() // 1000))
            set_meta(conn, "departed", json.dumps({}))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn


def _create(conn: sqlite3.Connection) -> None:
    # executescript would COMMIT the open transaction first: run the statements one by one
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


class Database:
    """The connection and the one thread it lives on. `await run(fn, ...)` calls
    `fn(conn, ...)` there and returns its result (or raises its exception).

    Use `await Database.open(path)` and `await db.close()`; calls after close raise
    RuntimeError.
    """

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._executor = executor
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> Database:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordinator-db")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect, path)
        except sqlite3.Error as exc:
            executor.shutdown(wait=False)
            raise TierfsError(f"cannot open the coordinator database {path}: {exc}") from None
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(fn, self._conn, *args, **kwargs)
        )

    async def close(self) -> None:
        """Checkpoint the WAL into the main file and close, on the database thread."""

        def _close(conn: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()

        await self.run(_close)
        self._executor.shutdown(wait=True)

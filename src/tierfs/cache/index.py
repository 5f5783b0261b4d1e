"""The tier-1 index: one SQLite row per chunk file, in `NVME/index.sqlite3`.

SQLite work runs on one dedicated thread that owns the connection, so the event loop
never waits on a lock, a page read or a WAL checkpoint, and calls are applied in the
order they were made (an insert queued after a delete of the same id wins). The index is
the record that survives restarts; while running, the cache's in-memory entries are
authoritative and the read hot path never touches SQLite.

Nothing here is fsynced (`synchronous=OFF`): a killed process loses nothing, and an index
damaged by a power cut or a bad disk is removed at the next start, which then begins with
an empty tier 1 (the chunk files, rows gone, are removed as orphans). With
`synchronous=NORMAL` each WAL checkpoint (twice per GiB of chunks stored) fsynced, and
the disk's flush held every tier-1 write and index insert for 0.3-0.45 s here.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, TypeVar

from tierfs.cache.base import Origin
from tierfs.chunks import ChunkId

log = logging.getLogger(__name__)

T = TypeVar("T")

INDEX_FILE = "index.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL,
    dirty INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
# The chunks of one object (DELETE and HEAD of the peer API, forget_object).
_KEY_INDEX = "CREATE INDEX IF NOT EXISTS chunks_by_key ON chunks (key, version)"
_COLUMNS = "id, key, version, chunk_index, size, checksum, last_access, hits, origin, dirty"


@dataclass(slots=True)
class ChunkRow:
    """One chunk as the index records it."""

    id: ChunkId
    key: str
    version: str
    chunk_index: int
    size: int
    checksum: str  # xxh3-64 hex of the whole chunk
    last_access: float  # wall-clock seconds: survives restarts, orders the LRU
    hits: int
    origin: Origin
    dirty: bool = False  # reserved for the write path: not yet uploaded


def _row(r: tuple[Any, ...]) -> ChunkRow:
    return ChunkRow(
        ChunkId(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], Origin(r[8]), bool(r[9])
    )


class _Damaged(Exception):
    """The index file is not a sound SQLite database."""


# What SQLite says of a file damaged or not a database at all.
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _connect(path: Path) -> sqlite3.Connection:
    """The index at `path` (created if missing), checked and at the current schema; raises
    _Damaged when the file is not a sound database."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # see the module docstring
            # Checkpoint every ~1 MiB of WAL and cut the file back: it shares the cache disk.
            db.execute("PRAGMA wal_autocheckpoint=256")
            db.execute("PRAGMA journal_size_limit=4194304")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode in _DAMAGE_CODES:
                raise _Damaged(exc) from exc
            raise
        if check != "ok":
            raise _Damaged(check)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(f"{path}: unknown index schema {version}")
        db.execute(_SCHEMA)
        db.execute(_KEY_INDEX)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


class ChunkIndex:
    """Async access to the index; every call runs on the index's own thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierfs-index")
        self._db: sqlite3.Connection | None = None  # touched on the index thread only
        self._closing = False

    @classmethod
    async def open(cls, root: Path) -> ChunkIndex:
        """Open (creating if needed) `root/index.sqlite3` in WAL mode."""
        index = cls(root / INDEX_FILE)
        try:
            await index._call(index._open)
        except BaseException:
            index._thread.shutdown(wait=True)
            raise
        return index

    def _open(self) -> None:
        try:
            self._db = _connect(self._path)
        except _Damaged as exc:
            log.warning(
                "tier-1 index %s is damaged (%s): removed; tier 1 starts empty", self._path, exc
            )
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self._path}{suffix}").unlink(missing_ok=True)
            self._db = _connect(self._path)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("index is closed")
        return self._db

    async def load(self) -> list[ChunkRow]:
        """Every row, least recently accessed first."""

        def run() -> list[ChunkRow]:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM chunks ORDER BY last_access")
            return [_row(r) for r in rows]

        return await self._call(run)

    async def page(self, after: ChunkId | None, limit: int) -> list[ChunkRow]:
        """Up to `limit` rows in id order, from the first id past `after` (None: the start)."""

        def run() -> list[ChunkRow]:
            query = f"SELECT {_COLUMNS} FROM chunks WHERE id > ? ORDER BY id LIMIT ?"
            return [_row(r) for r in self._conn().execute(query, (after or "", limit))]

        return await self._call(run)

    async def ids_of(self, key: str, version: str | None = None) -> list[ChunkId]:
        """The ids of the rows of object `key`: at `version`, or at any version (None)."""

        def run() -> list[ChunkId]:
            if version is None:
                rows = self._conn().execute("SELECT id FROM chunks WHERE key = ?", (key,))
            else:
                query = "SELECT id FROM chunks WHERE key = ? AND version = ?"
                rows = self._conn().execute(query, (key, version))
            return [ChunkId(r[0]) for r in rows]

        return await self._call(run)

    async def insert(self, row: ChunkRow) -> None:
        """Add or replace the row of `row.id` (one committed transaction)."""

        values = astuple(row)  # in column order: the origin binds as its text, dirty as 0/1

        def run() -> None:
            self._conn().execute(
                f"INSERT OR REPLACE INTO chunks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", values
            )

        await self._call(run)

    async def delete(self, ids: Iterable[ChunkId]) -> None:
        """Remove the rows of `ids` (missing ones are ignored)."""
        await self._call(self._deleter(ids))

    def delete_soon(self, ids: Iterable[ChunkId]) -> None:
        """Queue the removal of `ids` without waiting; `flush`/`close` wait for it."""
        if self._closing:
            return  # a row without a file is dropped at the next start
        self._thread.submit(self._deleter(ids)).add_done_callback(self._settled)

    def _deleter(self, ids: Iterable[ChunkId]) -> Callable[[], None]:
        batch = [(i,) for i in ids]

        def run() -> None:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.executemany("DELETE FROM chunks WHERE id = ?", batch)

        return run

    def _settled(self, future: Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            # The row outlives its file; the next start drops it. Nothing is served wrong.
            log.warning("tier-1 index: queued delete failed: %s", exc)

    async def touch(self, accesses: Iterable[tuple[float, int, ChunkId]]) -> None:
        """Record (last access, hit count) of chunks; rows gone meanwhile are skipped."""
        batch = list(accesses)
        if not batch:
            return

        def run() -> None:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.executemany("UPDATE chunks SET last_access = ?, hits = ? WHERE id = ?", batch)

        await self._call(run)

    async def flush(self) -> None:
        """Wait for every queued call (the thread runs them in order)."""
        await self._call(lambda: None)

    async def close(self) -> None:
        """Finish queued work and close the database."""
        self._closing = True

        def run() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        try:
            await self._call(run)
        finally:
            self._thread.shutdown(wait=True)

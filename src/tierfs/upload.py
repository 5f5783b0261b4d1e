"""Uploads of written files: the pending-upload journal, the put, and the cached copy.

A file becomes dirty at its first write; from then until the cloud has its bytes, a row
in `NVME/journal.sqlite3` names its staging file. A crash in between leaves the row, and
`recover` uploads what it names on the next start: nothing written is lost. Nor is what
another node wrote meanwhile: a late upload goes aside if the object changed, unless it
changed to what a failed put of ours had sent (its answer lost on the way), or if its name
became a folder; and its put checks that the object did not change since it looked
(`CloudStore.put`'s `expect`).

A file written by appends may have gone up while it was written (`tierfs.fs.early_upload`):
its upload then only finishes that one.

Once the cloud has a file, its bytes become chunks of the new version: in tier 1 if it
has room, else handed to each chunk's owner peer (`PUT`, within its peer budget), else
they are in the cloud only (DESIGN.md, Write path). They are read from the staging file
in the background, until the file is written again: its bytes are the version's no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Coroutine, Iterable, Iterator
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import xxhash

from tierfs.cache.base import ChunkCache, Origin
from tierfs.chunks import ChunkRef, ObjectRef, chunk_ref
from tierfs.cloud.base import ABSENT, MULTIPART_THRESHOLD, CloudStore, ObjectMeta
from tierfs.errors import (
    CloudError,
    CloudUnavailableError,
    JournalError,
    ObjectNotFoundError,
    RemovedMeanwhileError,
    VersionChangedError,
)
from tierfs.fs.early_upload import START_AT, EarlyUpload
from tierfs.fs.streaming import StreamingUpload

log = logging.getLogger(__name__)

RECOVERY_INTERVAL = 5.0  # seconds between tries while the cloud refuses a recovered upload
# Files going up while they are written, at most: each holds up to PART_CONCURRENCY parts
# in memory. The others go up at their close.
EARLY_UPLOADS = 2
# Files over MULTIPART_THRESHOLD put whole (at their close, or by recovery) at once, at most;
# the others wait their turn. Each holds up to PART_CONCURRENCY parts in memory: 8 writers
# of 64 MiB files at once took the client's RSS to 598 MB without a bound, 272 with it
# (and 4 parts a file instead of 8), at 132 MiB/s in all against 106 (SeaweedFS here).
LARGE_PUTS = 2
# Where a late upload puts a file whose object another node changed or removed since this
# node began writing it (`Uploader.upload_late`): CONFLICTS/<UTC time>/<its key>.
CONFLICTS = ".tierfs-conflicts"
COMPARE_PIECE = 8 * 2**20  # bytes hashed at a time (`content_of`, `Uploader._is_ours`)
# Looks at the bucket a late upload takes, at most, when its object keeps changing between
# the look and the put (`Uploader.upload_late`); then it fails, and is retried later.
LATE_LOOKS = 3
# Failed puts of a file's contents remembered, at most (`UploadJournal.note_tried`).
TRIED_KEPT = 8


class Removal(IntEnum):
    """What a journal row says of its file's removal (`UploadJournal.removing`)."""

    NONE = 0
    # Being removed (unlinked, or replaced by a rename): a crash leaves it unsure whether
    # the removal reached the bucket; the next upload asks first (`Uploader.upload_late`).
    UNDER_WAY = 1
    # Written again since a removal a crash left unsure: its bytes go up whether or not
    # that removal reached the bucket (the object gone is this node's doing).
    WRITTEN_SINCE = 2


class PendingUpload(NamedTuple):
    """A journal row: the staging file bound for `key`, written over the object's version
    `base` ("" for none; None for a row of a journal from before bases were noted), and
    what it says of its file's `removing` (`UploadJournal.removing`)."""

    key: str
    staging: Path
    base: str | None
    removing: Removal = Removal.NONE


class Begun(NamedTuple):
    """A multipart upload the journal notes as begun: the note's row, the upload's key,
    and when it began (this node's clock, in seconds since the epoch)."""

    row: int
    key: str
    moment: float


class Content(NamedTuple):
    """A file's content as a late upload recognises it: its size and xxh3-128 digest."""

    size: int
    digest: str


class Staged(Protocol):
    """The open file whose bytes a staging file holds (`tierfs.fs.handles.OpenFile`): every
    change of them holds `lock`, and counts itself in `writes` before it is made."""

    lock: asyncio.Lock
    writes: int


class ChunkPusher(Protocol):
    """Where written chunks go when tier 1 cannot keep them (the peer fetcher)."""

    async def push(self, chunk: ChunkRef, data: bytes) -> bool:
        """True once another node keeps the chunk."""
        ...


class UploadJournal:
    """Rows of (key, staging file) for every file written but not yet in the cloud.

    WAL mode with synchronous=NORMAL: a commit is a write to the WAL without fsync, so
    it survives the process being killed (the case the journal is for) at the cost of
    microseconds on the loop.
    """

    def __init__(self, path: Path) -> None:
        """JournalError naming `path` where SQLite cannot open it, or cannot move an earlier
        tierfs's notes in it (before 2026-12-07, a traceback)."""
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"upload journal {path}: {exc}") from exc
        try:
            self._open()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a moment that is no number
            self._db.close()
            raise JournalError(f"upload journal {path}: {exc}") from exc

    def _open(self) -> None:
        """Set the journal's tables up, and bring those of an earlier tierfs up to date."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending"
            " (staging TEXT PRIMARY KEY, key TEXT NOT NULL, base TEXT)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pending)")}
        if "base" not in columns:  # a journal of an earlier tierfs: its rows' bases are NULL
            self._db.execute("ALTER TABLE pending ADD COLUMN base TEXT")
        if "tried" not in columns:
            self._db.execute("ALTER TABLE pending ADD COLUMN tried TEXT")
        if "removing" not in columns:
            self._db.execute("ALTER TABLE pending ADD COLUMN removing INTEGER")
        # A file's uploads keep the key they began under: it may be moved meanwhile.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS begun"
            " (staging TEXT, key TEXT NOT NULL, moment REAL NOT NULL)"
        )
        if "began" in columns:
            self._move_earlier_notes()

    def _move_earlier_notes(self) -> None:
        """Move the moments that a tierfs of 2026-12-06 noted in a column `began` of a row
        ("moment;moment"), which is read no more, to `begun`, under the row's key; the
        column is emptied, so this is done once."""
        rows = self._db.execute(
            "SELECT staging, key, began FROM pending WHERE began IS NOT NULL"
        ).fetchall()
        if not rows:
            return  # moved already, or none noted
        notes = [
            (staging, key, float(moment))
            for staging, key, text in rows
            for moment in text.split(";")
            if moment
        ]
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT INTO begun (staging, key, moment) VALUES (?, ?, ?)", notes)
            self._db.execute("UPDATE pending SET began = NULL WHERE began IS NOT NULL")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def begin(self, key: str, staging: Path, base: str) -> None:
        """Note `staging` as bound for `key`, written over the object's version `base` (""
        for a new file), from now on (its failed puts and removal noted before are
        forgotten); OSError(ENOSPC) when the disk has no room for the row (SQLite's
        "database or disk is full")."""
        self._write(
            key,
            "INSERT OR REPLACE INTO pending (staging, key, base) VALUES (?, ?, ?)",
            (str(staging), key, base),
        )

    def moved(self, key: str, staging: Path, base: str) -> None:
        """`begin`, for a file moved (with its folder) to `key`: what its row noted stays,
        its failed puts (`tried`: the move copied what one left) and its removal. OSError
        (ENOSPC) as `begin`."""
        self._write(
            key,
            "INSERT INTO pending (staging, key, base) VALUES (?, ?, ?) ON CONFLICT (staging)"
            " DO UPDATE SET key = excluded.key, base = excluded.base",
            (str(staging), key, base),
        )

    def _write(self, key: str, statement: str, values: tuple[str, ...]) -> None:
        """Run `statement` on a row of `key`'s; OSError(ENOSPC) when the disk is full."""
        try:
            self._db.execute(statement, values)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise OSError(errno.ENOSPC, f"upload journal: no room to note {key}") from exc

    def note_tried(self, staging: Path, content: Content) -> None:
        """Note that a put of `staging` with this content failed: its answer may have been
        lost after the store took it. Only the last TRIED_KEPT are kept."""
        tried = [c for c in self.tried(staging) if c != content][-(TRIED_KEPT - 1) :]
        text = ";".join(f"{size}:{digest}" for size, digest in [*tried, content])
        try:
            self._db.execute("UPDATE pending SET tried = ? WHERE staging = ?", (text, str(staging)))
        except sqlite3.OperationalError as exc:
            log.warning("upload journal: cannot note a failed put of %s: %s", staging, exc)

    def removing(self, staging: Path, removal: Removal) -> None:
        """Note where the removal of the file `staging` holds stands (`Removal`): a crash
        while it is being removed (unlinked, or replaced by a rename) must not put its
        bytes back (`Uploader.recover`). Logged, not raised, if the disk is full."""
        try:
            self._db.execute(
                "UPDATE pending SET removing = ? WHERE staging = ?", (int(removal), str(staging))
            )
        except sqlite3.OperationalError as exc:
            log.warning("upload journal: cannot note the removal of %s: %s", staging, exc)

    def note_began(self, staging: Path | None, key: str, when: float) -> int | None:
        """Note that a multipart upload of `key` began at `when` (this node's clock, in
        seconds since the epoch), of the file `staging` (None: a stream, which has no
        staging file): a crash before it ends leaves it in the bucket. Only the last
        TRIED_KEPT of a staging file are kept. The note's row; None (logged) if the disk
        is full."""
        try:
            row = self._db.execute(
                "INSERT INTO begun (staging, key, moment) VALUES (?, ?, ?)",
                (None if staging is None else str(staging), key, when),
            ).lastrowid
            if staging is not None:
                self._db.execute(
                    "DELETE FROM begun WHERE staging = ? AND rowid NOT IN"
                    " (SELECT rowid FROM begun WHERE staging = ? ORDER BY rowid DESC LIMIT ?)",
                    (str(staging), str(staging), TRIED_KEPT),
                )
        except sqlite3.OperationalError as exc:
            log.warning("upload journal: cannot note an upload of %s: %s", key, exc)
            return None
        return row

    def leave_began(self) -> list[Begun]:
        """Every upload noted as begun, each now noted as a stream's is (no staging file):
        taken by the first `Uploader.recover`, before this run notes any, so that the
        previous run's notes outlive their files' rows (`done`), each until its upload is
        aborted (`forget_began`). Logged, not raised, if the disk is full."""
        try:
            self._db.execute("UPDATE begun SET staging = NULL WHERE staging IS NOT NULL")
        except sqlite3.OperationalError as exc:
            log.warning("upload journal: cannot keep the uploads begun: %s", exc)
        rows = self._db.execute("SELECT rowid, key, moment FROM begun ORDER BY rowid")
        return [Begun(row, key, moment) for row, key, moment in rows]

    def forget_began(self, rows: Iterable[int]) -> None:
        """Forget the notes `rows` of uploads begun. Logged, not raised, if the disk is full."""
        try:
            self._db.executemany("DELETE FROM begun WHERE rowid = ?", [(row,) for row in rows])
        except sqlite3.OperationalError as exc:
            log.warning("upload journal: cannot forget uploads begun: %s", exc)

    def tried(self, staging: Path) -> list[Content]:
        """The contents of `staging` whose puts failed since it was begun, oldest first."""
        row = self._db.execute("SELECT tried FROM pending WHERE staging = ?", (str(staging),))
        text = (row.fetchone() or ("",))[0] or ""
        pairs = (entry.split(":") for entry in text.split(";") if entry)
        return [Content(int(size), digest) for size, digest in pairs]

    def done(self, staging: Path) -> None:
        """Forget `staging`. A failure (the disk is full) only leaves a row whose staging
        file will be gone, which recovery drops: it is logged, not raised."""
        try:
            self._db.execute("DELETE FROM pending WHERE staging = ?", (str(staging),))
            self._db.execute("DELETE FROM begun WHERE staging = ?", (str(staging),))
        except sqlite3.OperationalError as exc:
            log.warning("upload journal: cannot forget %s: %s", staging, exc)

    def pending(self) -> list[PendingUpload]:
        rows = self._db.execute("SELECT key, staging, base, removing FROM pending ORDER BY rowid")
        return [
            PendingUpload(key, Path(staging), base, Removal(removing or 0))
            for key, staging, base, removing in rows
        ]

    def close(self) -> None:
        self._db.close()


def content_of(path: Path) -> Content:
    """The size and digest of the file at `path` (blocking: run it off the loop)."""
    digest, size = xxhash.xxh3_128(), 0
    with path.open("rb") as file:
        while piece := file.read(COMPARE_PIECE):
            digest.update(piece)
            size += len(piece)
    return Content(size, digest.hexdigest())


class Uploader:
    """Puts staging files into the cloud and their bytes into tier 1 as clean chunks."""

    def __init__(
        self,
        cloud: CloudStore,
        cache: ChunkCache,
        journal: UploadJournal,
        chunk_size: int,
        peers: ChunkPusher | None = None,
    ) -> None:
        self.cloud = cloud
        self.cache = cache
        self.journal = journal
        self.chunk_size = chunk_size
        self.peers = peers
        self._promotions: set[asyncio.Task[None]] = set()
        # what `close` waits for: drops and moves in tier 1, abandoned uploads
        self._finishing: set[asyncio.Task[None]] = set()
        self._early: set[EarlyUpload] = set()  # started, neither finished nor abandoned
        self._large_puts = asyncio.Semaphore(LARGE_PUTS)
        # The rows a previous run left, not sent yet: taken at the first `recover`, which
        # comes before anything is written. This run's rows are never recovery's.
        self._left_behind: list[PendingUpload] | None = None
        # The uploads it began and may have left, not aborted yet: taken with its rows.
        self._begun_left: list[Begun] = []
        # Of the previous run's rows (recovery's, or the mount's: `hand_over`), the files
        # being removed when it stopped, until the bucket says whether the removal went
        # through (`upload_late`), or written again since (`written`).
        self._removals: dict[Path, Removal] = {}

    async def upload(
        self,
        key: str,
        staging: Path,
        early: EarlyUpload | None = None,
        expect: str | None = None,
        staged: Staged | None = None,
    ) -> ObjectMeta:
        """Put `staging` under `key` (finishing `early`, its upload under way, if it can);
        returns only once the cloud has every byte. `expect`: put it only over that
        version of the object (`CloudStore.put`); not with `early`, whose stream takes no
        condition (`upload_late`'s callers give it up first).

        Raises CloudError (the journal row stays, so a later flush or restart retries).
        The tier-1 copy of the new version is made in the background, from the staging
        file: if it is the open file `staged`'s (whose lock the caller holds), only until
        that is written again, since its bytes are then no longer the version's.
        """
        meta = None
        if early is not None:
            try:
                meta = await self._finish(key, early)
            finally:
                self._early.discard(early)
        if meta is None:
            meta = await self._put(key, staging, expect)
        self.forget(staging)
        try:
            source = os.open(staging, os.O_RDONLY)  # open now: the caller may delete it
        except OSError as exc:
            log.info("%s: not cached after upload: %s", key, exc)
            return meta
        writes = staged.writes if staged is not None else 0
        promote = self._promote(meta, source, staged, writes)
        _in_background(self._promotions, promote, f"promote {key}")
        return meta

    async def _put(self, key: str, staging: Path, expect: str | None) -> ObjectMeta:
        """Put the file `staging` whole; one in parts waits for one of LARGE_PUTS."""
        try:
            large = staging.stat().st_size > MULTIPART_THRESHOLD
        except OSError:  # no staging file: the put says so
            large = False
        async with self._large_puts if large else contextlib.nullcontext():
            if large:
                self.journal.note_began(staging, key, time.time())
            try:
                return await self.cloud.put(key, staging, expect)
            except CloudError:  # the store may have taken it all the same
                with contextlib.suppress(OSError):  # no staging file: nothing to retry
                    self.journal.note_tried(staging, await asyncio.to_thread(content_of, staging))
                raise

    async def _finish(self, key: str, early: EarlyUpload) -> ObjectMeta | None:
        """The object that `early` uploaded, or None if the file must be put whole."""
        if early.key == key:
            try:
                return await early.finish()
            except (CloudError, OSError) as exc:
                log.info("%s: its upload during the writes failed, putting it whole: %s", key, exc)
        self.abandon(early)
        return None

    def start_early(self, key: str, staging: Path, fd: int, size: int) -> EarlyUpload | None:
        """An upload of `key` to be fed from the staging file `staging` (open as `fd`, `size`
        bytes so far) while it is written; None (the file goes up at its close) while it is
        under START_AT, if the store cannot stream, or if EARLY_UPLOADS are under way."""
        if size < START_AT or not self.cloud.streams_uploads or len(self._early) >= EARLY_UPLOADS:
            return None
        self.journal.note_began(staging, key, time.time())
        early = EarlyUpload(self.cloud, key, fd)
        self._early.add(early)
        return early

    def note_stream(self, stream: StreamingUpload) -> None:
        """Note `stream` in the journal until it completes: a crash before leaves its
        multipart upload in the bucket, which the next start aborts (`recover`). So does
        a failure (the store may have refused the abort too). Not at its start: the disk
        that could not stage the file had no room for the note either."""
        row = self.journal.note_began(None, stream.key, stream.began)
        if row is not None:
            stream.when_completed(lambda: self.journal.forget_began([row]))

    def abandon(self, early: EarlyUpload) -> None:
        """Give `early` up in the background (the store drops the parts it has)."""
        self._early.discard(early)
        _in_background(self._finishing, early.abort(), f"abandon {early.key}")

    def forget(self, staging: Path) -> None:
        """Forget `staging`'s row (`UploadJournal.done`), and what a removal cut short
        left of it: its file is in the cloud, removed, gone, or carried by a stream."""
        self.journal.done(staging)
        self._removals.pop(staging, None)

    @contextlib.contextmanager
    def removing(self, staging: Path) -> Iterator[None]:
        """Mark `staging`'s row as being removed while its object is deleted or replaced,
        until the caller forgets it (`forget`): a crash once the removal reached the
        bucket must not put its bytes back (the restart put them under CONFLICTS: the
        removed file came back there). A removal that fails puts back what the row said
        (of a removal a crash left unsure: unsure still)."""
        self.journal.removing(staging, Removal.UNDER_WAY)
        try:
            yield
        except BaseException:
            self.journal.removing(staging, self._removals.get(staging, Removal.NONE))
            raise

    def written(self, staging: Path) -> None:
        """The file `staging` holds was written again: a removal a crash left unsure no
        longer decides whether its bytes go up (they were dropped once the bucket said it
        went through), only where an object gone counts as this node's doing."""
        if self._removals.get(staging) is Removal.UNDER_WAY:
            self._removals[staging] = Removal.WRITTEN_SINCE
            self.journal.removing(staging, Removal.WRITTEN_SINCE)

    async def _promote(
        self, meta: ObjectMeta, source: int, staged: Staged | None, writes: int
    ) -> None:
        """The written bytes become cached chunks of the new version (best effort): tier 1
        while it keeps them, then the owner peers while they take them; no further than
        `staged`'s first write after its `writes` (`_uploaded_bytes`)."""
        ref = ObjectRef(meta.key, meta.version, meta.size)
        tier1 = True
        try:
            for index in range((meta.size + self.chunk_size - 1) // self.chunk_size):
                chunk = chunk_ref(ref, index, self.chunk_size)
                data = await self._uploaded_bytes(source, chunk, staged, writes)
                if data is None or len(data) != chunk.length:
                    return
                tier1 = tier1 and await self.cache.store(chunk, data, Origin.LOCAL)
                if not tier1:
                    if self.peers is None:
                        return
                    await self.peers.push(chunk, data)  # each chunk has its own owner
        except OSError as exc:  # the cloud has the data; tier 1 simply misses it
            log.info("%s: not cached after upload: %s", meta.key, exc)
        finally:
            os.close(source)

    @staticmethod
    async def _uploaded_bytes(
        source: int, chunk: ChunkRef, staged: Staged | None, writes: int
    ) -> bytes | None:
        """`chunk`'s bytes in the staging file `source` as they were uploaded: None once
        the open file `staged` has been written since (its `writes` moved on). Read at any
        time, they took in a write made right after an fsync (or a flush that left other
        handles open), which this node and its peers then served as the version's."""
        async with staged.lock if staged is not None else contextlib.nullcontext():
            if staged is not None and staged.writes != writes:
                log.debug("%s: written since its upload, the rest is not cached", chunk.obj.key)
                return None
            return await asyncio.to_thread(os.pread, source, chunk.length, chunk.start)

    def drop_cached(self, key: str, version: str) -> None:
        """`version` of `key` is gone from the bucket, replaced or removed from here: its
        chunks in tier 1 go now, in the background. Nobody reads them from here again, and
        left to the LRU they would push out live chunks read less recently than they were
        written (a file fsynced often left a version per fsync)."""
        _in_background(self._finishing, self._drop(key, version), f"drop {key}")

    async def _drop(self, key: str, version: str) -> None:
        try:
            await self.cache.forget_object(key, version)
        except Exception as exc:  # tier 1 keeps them until the LRU reaches them
            log.info("%s: chunks of version %s not dropped from tier 1: %s", key, version, exc)

    def move_cached(self, old: ObjectRef, new: ObjectRef) -> None:
        """`new` is a copy of `old` in the bucket, and `old` is gone (a rename from here):
        the chunks tier 1 holds of `old` are held as `new`'s, in the background, so the
        moved file is not fetched again (a file written under a temporary name, then
        renamed, as many tools do)."""
        _in_background(self._finishing, self._move(old, new), f"move {old.key}")

    async def _move(self, old: ObjectRef, new: ObjectRef) -> None:
        size = self.chunk_size
        try:
            for index in range((old.size + size - 1) // size):
                await self.cache.move(chunk_ref(old, index, size), chunk_ref(new, index, size))
            await self.cache.forget_object(old.key, old.version)  # those that did not move
        except Exception as exc:  # what was not moved is fetched again when read
            log.info("%s: chunks not moved in tier 1 to %s: %s", old.key, new.key, exc)

    async def close(self) -> None:
        """Stop the tier-1 copies still under way; wait for the drops and moves in tier 1
        and the abandoned uploads to go."""
        for task in list(self._promotions):
            task.cancel()
        await asyncio.gather(*self._promotions, *self._finishing, return_exceptions=True)

    async def recover(self) -> int:
        """Upload what a previous run left in the journal; returns how many remain. The
        first call takes the journal's rows, and must come before this run writes (so they
        are all the previous run's); later calls retry those that remain, and only those:
        a row of this run's names a file being written, whose upload is its close's
        (retrying every row sent such a file half written and removed its staging file
        under its writer). Those the mount took over (`hand_over`) are its own.

        Then the multipart uploads that the previous run began (the journal says when, and
        under which key: a file may have been moved since) and that are still in progress
        are aborted: a crash left them, their parts billed and unseen
        (`CloudStore.drop_uploads_begun`); its files' (those handed over too) and its
        streams' (a stream has no row: its bytes are lost). A note is forgotten once its
        abort reached the store, not before: one that could not is tried again, by the
        next call or the next start.

        Once one found the cloud out of reach, the others are not tried this time: each
        would wait out the deadline (before the mount appears, at the first call). Returns
        how many rows remain, and uploads to abort."""
        if self._left_behind is None:
            self._left_behind = self.journal.pending()
            self._begun_left = self.journal.leave_began()
            self._removals = {
                row.staging: row.removing for row in self._left_behind if row.removing
            }
        remaining: list[PendingUpload] = []
        for index, row in enumerate(self._left_behind):
            key, staging = row.key, row.staging
            if not staging.exists():
                log.error("%s: journal names %s, which is gone", key, staging)
                self.forget(staging)
                continue
            try:
                done = await self._recover_row(row)
            except CloudUnavailableError as exc:
                log.error("%s: recovery upload failed, kept for another try: %s", key, exc)
                remaining += self._left_behind[index:]
                if untried := len(self._left_behind) - index - 1:
                    log.info("%d other upload(s) not tried: the cloud is out of reach", untried)
                break
            except CloudError as exc:
                log.error("%s: recovery upload failed, kept for another try: %s", key, exc)
                remaining.append(row)
                continue
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            log.info("%s: %s", key, done)
        else:  # no row found the cloud out of reach
            self._begun_left = await self._drop_begun(self._begun_left)
        self._left_behind = remaining
        return len(remaining) + len(self._begun_left)

    def hand_over(self) -> list[PendingUpload]:
        """The rows of the previous run's that `recover` could not send, for the mount to
        take over as files whose close failed (`Filesystem.take_over`): its retries send
        them, through its path locks, and its unlinks and renames follow them. Before,
        their retry here did not: a file removed on the mount meanwhile came back, and a
        rename over one was undone. Of a file being removed when that run stopped, the
        first late upload asks the bucket whether the removal went through, unless it is
        written again first (`upload_late`). The recovery keeps the rows of a journal from
        before bases were noted, and of two rows of one key the earlier."""
        assert self._left_behind is not None, "recover comes first"
        later = {row.key: row for row in self._left_behind if row.base is not None}
        taken = list(later.values())
        handed = {row.staging for row in taken}
        self._left_behind = [row for row in self._left_behind if row.staging not in handed]
        return taken

    @property
    def recovering(self) -> bool:
        """Whether `recover` has more to do: rows to send, or uploads to abort."""
        return bool(self._left_behind) or bool(self._begun_left)

    async def _drop_begun(self, begun: list[Begun]) -> list[Begun]:
        """Abort the multipart uploads noted as `begun` still in progress, forgetting each
        note once done; the notes left, from the first key whose abort could not reach
        the store (the rest are not tried: each would wait out the deadline)."""
        by_key: dict[str, list[Begun]] = {}
        for note in begun:
            by_key.setdefault(note.key, []).append(note)
        keys = list(by_key)
        for index, key in enumerate(keys):
            notes = by_key[key]
            try:
                await self.cloud.drop_uploads_begun(key, [note.moment for note in notes])
            except CloudUnavailableError as exc:
                log.info("%s: uploads a crash left not aborted, kept for another try: %s", key, exc)
                return [note for later in keys[index:] for note in by_key[later]]
            self.journal.forget_began(note.row for note in notes)
        return []

    async def _recover_row(self, row: PendingUpload) -> str:
        """Send what `row` names (unless the file was removed meanwhile); what was done."""
        if row.base is None:
            await self.upload(row.key, row.staging)
            return "uploaded what a previous run had written"
        try:
            meta = await self.upload_late(row.key, row.staging, row.base)
        except RemovedMeanwhileError:
            return "removed before the previous run stopped; not uploaded"
        aside = f" (to {meta.key})" if meta.key != row.key else ""
        return f"uploaded what a previous run had written{aside}"

    async def _removed_meanwhile(self, key: str, base: str | None) -> bool:
        """Whether the removal of `key` under way when the previous run stopped (a row's
        `removing`) reached the bucket: its object is no longer the version `base` it was
        written over. Put back, its bytes went under CONFLICTS (taken for another node's
        change)."""
        try:
            return (await self.cloud.head(key)).version != base
        except ObjectNotFoundError:
            return True

    async def upload_late(
        self, key: str, staging: Path, base: str, staged: Staged | None = None
    ) -> ObjectMeta:
        """`upload` of a file written over version `base` of `key` whose upload comes late
        (at a restart, at unmount, or a retry of a failed close): to `key`, unless
        another node changed the object meanwhile; then under CONFLICTS, so that neither
        node's bytes are lost. The put checks that the object is still as it was seen,
        so a change between the look and the put is seen too. The returned object's key
        says where the file went. `staged` as in `upload`.

        A file of the previous run's that was being removed when it stopped is first
        looked at: RemovedMeanwhileError (its row forgotten) if the removal reached the
        bucket. Unless it was written again since (`written`): then it goes to `key` also
        where the removal left no object."""
        if self._removals.get(staging) is Removal.UNDER_WAY:
            if await self._removed_meanwhile(key, base):
                self.forget(staging)
                raise RemovedMeanwhileError(f"{key}: removed before the previous run stopped")
            del self._removals[staging]
            self.journal.removing(staging, Removal.NONE)
        looks = 1
        while True:
            target, expect = await self._late_target(key, staging, base)
            try:
                return await self.upload(target, staging, expect=expect, staged=staged)
            except VersionChangedError:
                if looks == LATE_LOOKS:
                    raise
                looks += 1
                log.info("%s changed while this node was uploading it; looking again", key)

    async def _late_target(self, key: str, staging: Path, base: str) -> tuple[str, str | None]:
        """Where a late upload goes, and the version it expects to put over there: `key`
        while the object there is still `base`, or holds bytes of ours (a put that went
        through before the crash or the failure), or is gone by a removal of ours
        (`Removal.WRITTEN_SINCE`); else, or if `key` is a folder now (the mount shows the
        folder; the local directory holds no file beside it), a new key under CONFLICTS."""
        if await self.cloud.has_keys_below(key):
            return _aside(key, "became a folder", "its folder"), None
        try:
            current: ObjectMeta | None = await self.cloud.head(key)
        except ObjectNotFoundError:
            current = None
        version = current.version if current else ABSENT
        if version == base:
            return key, version
        if current is None and self._removals.get(staging) is Removal.WRITTEN_SINCE:
            log.info(
                "%s: its removal reached the bucket before the previous run stopped, "
                "and it was written again since: putting it back",
                key,
            )
            return key, version
        if current is not None and await self._is_ours(current, staging):
            log.info("%s: the bucket holds a put of ours already; putting it again", key)
            return key, version
        return _aside(key, "changed", f"the bucket's {key}"), None

    async def _is_ours(self, meta: ObjectMeta, staging: Path) -> bool:
        """Whether the object `meta` is a put of ours: the bytes of `staging` (a put that
        went through before the crash or the failure), or a content whose put seemed to
        fail (its answer lost on the way). One GET of it, when its size is one of theirs."""
        ours = self.journal.tried(staging)
        if meta.size == staging.stat().st_size:
            ours.append(await asyncio.to_thread(content_of, staging))
        if meta.size not in {content.size for content in ours}:
            return False
        digest = xxhash.xxh3_128()
        for start in range(0, meta.size, COMPARE_PIECE):
            length = min(COMPARE_PIECE, meta.size - start)
            digest.update(await self.cloud.get_range(meta.key, start, length, meta.version))
        return Content(meta.size, digest.hexdigest()) in ours

    async def recover_until_done(self, interval: float = RECOVERY_INTERVAL) -> None:
        """Retry `recover` until it has done all it does (while the mount serves: its own
        rows, and those it took over, stay its own)."""
        while await self.recover():
            await asyncio.sleep(interval)


def _aside(key: str, change: str, kept: str) -> str:
    """The key under CONFLICTS where a late upload to `key` goes, as `key` `change`d in
    the bucket; logged (an ERROR), saying that `kept` stays."""
    conflict = f"{CONFLICTS}/{time.strftime('%Y-%m-%dT%H-%M-%SZ', time.gmtime())}/{key}"
    log.error(
        "%s %s in the bucket before this node could upload what it had written there: "
        "that goes to %s, %s stays",
        key,
        change,
        conflict,
        kept,
    )
    return conflict


def _in_background(
    tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None], name: str
) -> None:
    """Run `work` as a task kept in `tasks` until it ends (for `Uploader.close` to await)."""
    task = asyncio.create_task(work, name=name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)

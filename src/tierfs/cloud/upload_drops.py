"""The drop of what failed multipart uploads left in a store, once none of their key runs.

obstore cleans up after no failed upload that a store keeps: on S3 it does not abort a
cancelled one, and sends the abort of a failed one the way that just failed; on Azure it
drops no staged block. The store says what to drop and how (`UploadDrops`'s two hooks);
when, it is said here, once for every store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")
T = TypeVar("T")


@dataclass
class _UploadsOfKey(Generic[S]):
    """The multipart uploads of one key under way here (`UploadDrops.run`)."""

    before: asyncio.Future[S | None]  # the store's look at the key before the first of them
    running: int = 0
    failed: bool = False  # one of them, or a try of one, failed or was cancelled


class UploadDrops(Generic[S]):
    """The multipart uploads of each key under way here, and the drop of what they left.

    `before(key)` looks at the store before the first upload of a key here begins (S3: the
    ids of its uploads in progress), and every upload of the key waits for that look; None
    where it could not look.
    `drop(key, before)` drops what the uploads of the key begun since left; it is done
    once no upload of the key is under way here and one of them failed or was cancelled
    (or one of their tries did, with `failed_tries_leave_uploads`: a retry that succeeds
    does not drop them). Not before: an abandoned early upload of a file and the put that
    takes its place are uploads of one key at once, and the drop would take the second's.
    Uploads of the key begun while a drop runs wait for it, which would take theirs too. A
    request of a failed upload still on its way when it failed may land after the drop:
    the drop is done again a deadline later, when every such request has ended, unless an
    upload of the key is under way here then. A look that could not be done (None), or is
    not done when the uploads end (each gave up before it came: none began), drops nothing,
    then or later (before 2026-12-07, a drop a deadline later waited to do nothing).
    Neither hook raises: what it cannot do, it logs.
    """

    def __init__(
        self,
        before: Callable[[str], Awaitable[S | None]],
        drop: Callable[[str, S], Awaitable[None]],
        timeout: float,
        *,
        failed_tries_leave_uploads: bool = False,
    ) -> None:
        self._before = before
        self._drop = drop
        self._timeout = timeout
        self.failed_tries_leave_uploads = failed_tries_leave_uploads
        self._uploads: dict[str, _UploadsOfKey[S]] = {}  # by key
        self._dropping: dict[str, asyncio.Future[None]] = {}  # drops under way, by key
        self._late: set[asyncio.Future[None]] = set()  # drops waiting a deadline

    async def run(self, key: str, upload: Callable[[], Awaitable[T]]) -> T:
        """`upload`, a multipart upload of `key`; what it leaves, if it fails, is dropped
        (see the class). Its failure or cancellation goes on once that drop is done."""
        while (dropping := self._dropping.get(key)) is not None:
            await asyncio.shield(dropping)
        uploads = self._uploads.get(key)
        if uploads is None:
            uploads = _UploadsOfKey(asyncio.ensure_future(self._before(key)))
            self._uploads[key] = uploads
        uploads.running += 1
        try:
            await asyncio.shield(uploads.before)  # none of them may begin before it is done
            return await upload()
        except BaseException:
            uploads.failed = True
            raise
        finally:
            uploads.running -= 1
            if not uploads.running:
                del self._uploads[key]
                if uploads.failed:
                    await self._dropped(key, uploads.before)

    def try_failed(self, key: str) -> None:
        """A try of an upload of `key` under way (`run`) failed: with
        `failed_tries_leave_uploads`, its upload is left even if a retry succeeds."""
        if self.failed_tries_leave_uploads:
            self._uploads[key].failed = True

    async def _dropped(self, key: str, before: asyncio.Future[S | None]) -> None:
        """Drop what the uploads of `key` looked at `before` left, and a deadline later,
        what lands after that."""
        if not before.done():
            before.cancel()
            return
        if before.cancelled() or before.exception() is not None:
            return
        looked = before.result()
        if looked is None:
            return
        await asyncio.shield(self._start_drop(key, looked))
        late = asyncio.ensure_future(self._drop_late(key, looked))
        self._late.add(late)
        late.add_done_callback(self._late.discard)

    def _start_drop(self, key: str, before: S) -> asyncio.Future[None]:
        """The drop of `key`, which uploads of `key` begun meanwhile wait for."""
        drop = asyncio.ensure_future(self._drop(key, before))
        self._dropping[key] = drop
        drop.add_done_callback(lambda _: self._dropping.pop(key, None))
        return drop

    async def _drop_late(self, key: str, before: S) -> None:
        """The drop of `key` again, once every request of its failed uploads has ended
        (each has the deadline), unless an upload or a drop of `key` is under way."""
        await asyncio.sleep(self._timeout)
        if key not in self._uploads and key not in self._dropping:
            await self._start_drop(key, before)

    async def close(self) -> None:
        """Cancel the drops waiting a deadline; wait for those under way."""
        for late in list(self._late):
            late.cancel()
        await asyncio.gather(*self._late, *self._dropping.values(), return_exceptions=True)

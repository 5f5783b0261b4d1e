"""An object streamed to the cloud as its bytes come (a multipart upload fed by `send`).

The write fallback of the original spec is one: a file that the staging disk cannot hold
is streamed straight to the cloud as it is written. Only appending writes can follow (the
parts already sent cannot change), and the object appears in the cloud once the stream is
finished, at the file's close or fsync. A stream that fails loses what was sent through
it: its closes answer EIO, and nothing acknowledged is lost. The other is
`tierfs.fs.early_upload`, which keeps the staging file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from tierfs.cloud.base import CloudStore, ObjectMeta
from tierfs.errors import CloudError

# Writes queued for the upload before a writer waits: with FUSE's 128 KiB writes, 8 MiB.
QUEUED_WRITES = 64
ABORT_WAIT = 30.0  # seconds `abort` waits for the store to drop the parts sent


class _Aborted(Exception):
    """Raised into the upload by `abort`, so that the store drops the parts it has
    (cancelling the upload would leave them in the bucket, billed)."""


class StreamingUpload:
    """One object being streamed to the cloud; `send` its bytes in order, then `finish`."""

    def __init__(self, cloud: CloudStore, key: str, queued: int = QUEUED_WRITES) -> None:
        self.key = key
        self.began = time.time()  # this node's clock
        self.end = 0  # bytes handed over so far
        self._aborted = False
        self._queue: asyncio.Queue[bytes | None | _Aborted] = asyncio.Queue(maxsize=queued)
        self._upload = asyncio.create_task(
            cloud.put_stream(key, self._parts()), name=f"stream {key}"
        )

    @property
    def failed(self) -> bool:
        """Whether the upload ended without the object (failed, or aborted): for good."""
        upload = self._upload
        return upload.done() and (upload.cancelled() or upload.exception() is not None)

    def when_completed(self, callback: Callable[[], object]) -> None:
        """Call `callback` once the cloud has the whole object (never if it fails)."""
        self._upload.add_done_callback(lambda _: None if self.failed else callback())

    async def send(self, data: bytes) -> None:
        """Append `data`; waits while the upload is behind. Raises CloudError once the
        upload has failed. Once aborted, `data` is dropped (a removed file's writes go
        nowhere)."""
        if not self._aborted:
            await self._hand_over(data)
        self.end += len(data)

    async def finish(self) -> ObjectMeta:
        """End the stream; returns once the cloud has the whole object. Once the upload
        has failed, every call raises its CloudError."""
        await self._hand_over(None)
        return await self._upload

    async def abort(self) -> None:
        """Give the upload up: nothing appears in the cloud, and the store drops the parts
        sent (unless it takes longer than ABORT_WAIT to answer). Never `finish` it then."""
        self._aborted = True
        if not self._upload.done():
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_Aborted())
            await asyncio.wait({self._upload}, timeout=ABORT_WAIT)
            self._upload.cancel()
        await asyncio.gather(self._upload, return_exceptions=True)

    async def _parts(self) -> AsyncIterator[bytes]:
        while (piece := await self._queue.get()) is not None:
            if isinstance(piece, _Aborted):
                raise piece
            yield piece

    async def _hand_over(self, item: bytes | None) -> None:
        if not self._upload.done():
            queued = asyncio.ensure_future(self._queue.put(item))
            try:
                await asyncio.wait({queued, self._upload}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                queued.cancel()  # a no-op once it is done
            if queued.done() and not queued.cancelled():
                return
        self._upload.result()  # raises the upload's error
        raise CloudError(f"{self.key}: the streamed upload ended before its last byte")

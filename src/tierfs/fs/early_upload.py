"""A file written by appends goes up to the cloud while it is written, so that its close
waits only for the last part.

The staging file stays the truth. Once a file written from empty by appends reaches
START_AT bytes, its whole parts are read back from the staging file and fed into a
multipart upload (`StreamingUpload`) as the writer moves past them; `finish` sends the
rest and completes it. A change the upload cannot follow (a write before the end, a
truncate, a move) abandons it, and the file is put whole as before; so is a file whose
upload failed. Nothing acknowledged depends on it.
"""

from __future__ import annotations

import asyncio
import os

from tierfs.cloud.base import MULTIPART_THRESHOLD, PART_SIZE, CloudStore, ObjectMeta
from tierfs.errors import CloudError
from tierfs.fs.streaming import StreamingUpload

START_AT = MULTIPART_THRESHOLD  # smaller files go up whole, in one request, at close


class EarlyUpload:
    """The upload of one staging file, fed part by part while a writer appends to it."""

    def __init__(self, cloud: CloudStore, key: str, fd: int) -> None:
        self.key = key
        self._fd = fd
        self._stream = StreamingUpload(cloud, key, queued=1)  # one part waits, no more
        self._sent = 0  # bytes of the staging file handed to the stream
        self._appended = 0  # bytes the writer has finished
        self._feeder: asyncio.Task[None] | None = None
        self._error: CloudError | OSError | None = None

    def appended(self, end: int) -> None:
        """The writer has appended up to `end`: send the whole parts before it."""
        self._appended = end
        feeding = self._feeder is not None and not self._feeder.done()
        if not feeding and self._error is None and end - self._sent >= PART_SIZE:
            self._feeder = asyncio.create_task(self._feed(), name=f"early upload {self.key}")

    async def _feed(self) -> None:
        try:
            while self._appended - self._sent >= PART_SIZE:
                await self._send(PART_SIZE)
        except (CloudError, OSError) as exc:
            self._error = exc  # `finish` raises it; until then the writes go on

    async def _send(self, length: int) -> None:
        start = self._sent
        self._sent += length
        data = await asyncio.to_thread(os.pread, self._fd, length, start)
        if len(data) != length:
            raise OSError(f"staging file of {self.key} shorter than its {start + length} bytes")
        await self._stream.send(data)

    async def finish(self) -> ObjectMeta:
        """Send the rest of the staging file and complete the upload; returns once the
        cloud has the object. Raises CloudError or OSError if the upload failed."""
        if self._feeder is not None:
            await self._feeder
        if self._error is not None:
            raise self._error
        size = os.fstat(self._fd).st_size
        while self._sent < size:
            await self._send(min(PART_SIZE, size - self._sent))
        return await self._stream.finish()

    async def abort(self) -> None:
        """Give the upload up: nothing appears in the cloud, and the parts sent are dropped."""
        if self._feeder is not None:
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)
        await self._stream.abort()

"""Calls that change names, against the other calls at the same paths.

The kernel locks the folders a call names, not those below them, and not an open against
an unlink of its name. But a folder moves one object at a time (copies, then deletes), a
file renamed or unlinked goes through the cloud, and meanwhile the rest of the mount goes
on: a file renamed, unlinked or uploaded under a folder being moved vanished from the move
half way (an EIO, both names left) or landed under the old name after it; an open that
came during an unlink got the file the unlink then deleted (ESTALE at its reads).

So a change waits for the calls under way at or below its paths, and holds new ones off
until it is done: opens, uploads and other changes. Calls at other paths run side by side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager


def is_under(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or below it."""
    return path == folder or path.startswith(folder + "/")


class PathLocks:
    """Which paths calls work at, and which are being changed. Taken at every open: free
    of waits and locks while nothing is being changed there."""

    def __init__(self) -> None:
        self._working: dict[str, int] = {}  # paths of calls under way, and how many
        self._changing: list[tuple[str, ...]] = []  # changes under way, or waiting for calls
        self._waiters: list[asyncio.Future[None]] = []  # woken at every end of a call

    def _is_changing(self, path: str) -> bool:
        return any(is_under(path, changed) for change in self._changing for changed in change)

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # else cancelled: its call is gone
                waiter.set_result(None)

    def working(self, path: Callable[[], str]) -> AbstractAsyncContextManager[None]:
        """Work at `path()` (an open, an upload) once no change is under way at it or
        above it; the path is read again then, as a move may have changed it."""
        return _Work(self, path)

    async def _start_work(self, path: Callable[[], str]) -> str:
        if self._changing:
            await self._until(lambda: not self._is_changing(path()))
        held = path()
        self._working[held] = self._working.get(held, 0) + 1
        return held

    def _end_work(self, held: str) -> None:
        left = self._working[held] - 1
        if left:
            self._working[held] = left
        else:
            del self._working[held]
        if self._waiters:
            self._wake()

    @asynccontextmanager
    async def changing(self, paths: Callable[[], tuple[str, ...]]) -> AsyncIterator[None]:
        """Change what is at and below `paths()` (read again after each wait): once no
        other change overlaps them and the calls working there are done."""

        def overlaps(change: tuple[str, ...], other: tuple[str, ...]) -> bool:
            return any(is_under(a, b) or is_under(b, a) for a in change for b in other)

        await self._until(lambda: not any(overlaps(paths(), other) for other in self._changing))
        change = paths()
        self._changing.append(change)
        try:
            await self._until(
                lambda: not any(is_under(p, c) for p in self._working for c in change)
            )
            yield
        finally:
            self._changing.remove(change)
            self._wake()


class _Work:
    """`PathLocks.working`: a class, not a generator, as every open takes one."""

    def __init__(self, locks: PathLocks, path: Callable[[], str]) -> None:
        self._locks, self._path = locks, path
        self._held = ""

    async def __aenter__(self) -> None:
        self._held = await self._locks._start_work(self._path)

    async def __aexit__(self, *exc_info: object) -> None:
        self._locks._end_work(self._held)

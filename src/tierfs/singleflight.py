"""Single-flight: concurrent callers of one key share one run of the work for it.

Used by the read path so that every chunk missing from tier 1 is fetched once, however
many reads (and prefetches) want it at the same time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from tierfs.errors import TierfsError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Publish = Callable[[V], None]
Work = Callable[[Publish[V]], Awaitable[None]]

# How many finished keys `finished_since` remembers: enough for every flight that can end
# during one tier-1 lookup, at about 100 bytes each.
REMEMBERED = 4096


class FlightCancelledError(TierfsError):
    """The flight was cancelled (its group was closed) before it had a result."""


class _Flight(Generic[V]):
    __slots__ = ("finished", "result", "task", "waiters")

    def __init__(self, result: asyncio.Future[V]) -> None:
        self.result = result
        self.task: asyncio.Task[None] | None = None
        self.waiters = 0
        self.finished = False  # the work has returned

    def publish(self, value: V) -> None:
        if not self.result.done():
            self.result.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(exc)
            self.result.exception()  # retrieved: no "never retrieved" log if nobody waits


class SingleFlight(Generic[K, V]):
    """Concurrent `do(key, work)` calls share one run of `work`, in a task of its own.

    `work(publish)` calls `publish(value)` once the result is known, and may go on (to
    cache it, say): callers that come meanwhile get the value at once. The value, or the
    exception `work` raised before publishing, reaches every caller. A cancelled caller
    only stops waiting; the work is cancelled when its last caller leaves before the value
    is known. The entry goes when the work has returned and every caller has its answer:
    whatever a caller does with the value in the step where `do` returns happens before a
    new flight of the key can start. For one event loop; not thread-safe.
    """

    def __init__(self, name: str = "flight") -> None:
        self._name = name
        self._flights: dict[K, _Flight[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # also those already dropped from _flights
        self._epoch = 0  # number of flights ended so far
        self._ended: OrderedDict[K, int] = OrderedDict()  # key -> epoch at its last end
        self._forgotten = 0  # epoch of the newest end dropped from _ended
        self._closed = False

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    @property
    def tasks(self) -> int:
        """Work tasks still running (including cancelled ones winding down)."""
        return len(self._tasks)

    def published(self, key: K) -> V | None:
        """The value a flight of `key` under way has published already, else None (never
        waits)."""
        flight = self._flights.get(key)
        if flight is None or not flight.result.done() or flight.result.cancelled():
            return None
        return None if flight.result.exception() is not None else flight.result.result()

    def ticket(self) -> int:
        """A mark of now, for `finished_since`."""
        return self._epoch

    def finished_since(self, key: K, ticket: int) -> bool:
        """Whether a flight of `key` may have ended since `ticket` was taken."""
        if self._epoch == ticket:
            return False
        ended = self._ended.get(key)
        if ended is not None:
            return ended > ticket
        return self._forgotten > ticket

    async def do(self, key: K, work: Work[V]) -> tuple[V, bool]:
        """The value of the flight of `key` (started with `work` if none is under way), and
        whether this call joined a flight already under way."""
        if self._closed:
            raise FlightCancelledError(f"{self._name}: closed")
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = _Flight[V](asyncio.get_running_loop().create_future())
            self._flights[key] = flight
            task = asyncio.create_task(self._run(key, flight, work), name=f"{self._name} {key}")
            flight.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        flight.waiters += 1
        try:
            # shield: cancelling this caller must not cancel the shared result
            return await asyncio.shield(flight.result), joined
        finally:
            flight.waiters -= 1
            if flight.waiters == 0:
                if flight.finished:
                    self._end(key, flight)
                elif not flight.result.done():
                    self._end(key, flight)  # nobody wants it any more; a new caller starts afresh
                    assert flight.task is not None
                    flight.task.cancel()

    async def close(self) -> None:
        """Cancel every flight and wait until their tasks are gone; later `do`s raise."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            # a task cancelled before its first step never runs `_run`'s handlers
            for key, flight in list(self._flights.items()):
                flight.fail(FlightCancelledError(f"{self._name} {key}: closed"))
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, key: K, flight: _Flight[V], work: Work[V]) -> None:
        try:
            await work(flight.publish)
            flight.fail(RuntimeError(f"{self._name} {key}: work ended without a result"))
        except asyncio.CancelledError:
            flight.fail(FlightCancelledError(f"{self._name} {key}: cancelled"))
            raise
        except Exception as exc:
            if flight.result.done():
                log.exception("%s %s: failed after its result was published", self._name, key)
            flight.fail(exc)
        finally:
            flight.finished = True
            if flight.waiters == 0:
                self._end(key, flight)

    def _end(self, key: K, flight: _Flight[V]) -> None:
        if self._flights.get(key) is not flight:
            return
        del self._flights[key]
        self._epoch += 1
        self._ended[key] = self._epoch
        self._ended.move_to_end(key)
        if len(self._ended) > REMEMBERED:
            _, self._forgotten = self._ended.popitem(last=False)

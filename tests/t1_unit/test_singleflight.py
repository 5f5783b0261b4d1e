"""SingleFlight: one run per key, shared results and errors, cancellation that only stops
the caller, entries gone when done."""

from __future__ import annotations

import asyncio

import pytest

from tierfs.singleflight import FlightCancelledError, Publish, SingleFlight

pytestmark = pytest.mark.asyncio


class Work:
    """Work that counts its runs and waits for `release` before publishing."""

    def __init__(self, value: str = "v", error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.runs = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.after: asyncio.Event | None = None  # awaited after publishing, if set

    async def __call__(self, publish: Publish[str]) -> None:
        self.runs += 1
        try:
            await self.release.wait()
            if self.error is not None:
                raise self.error
            publish(self.value)
            if self.after is not None:
                await self.after.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_run() -> None:
    group: SingleFlight[str, str] = SingleFlight()
    work = Work("shared")
    calls = [asyncio.create_task(group.do("k", work)) for _ in range(10)]
    await settle()
    assert "k" in group and len(group) == 1
    work.release.set()
    results = await asyncio.gather(*calls)
    assert [value for value, _ in results] == ["shared"] * 10
    assert [joined for _, joined in results] == [False] + [True] * 9
    assert work.runs == 1
    await settle()
    assert "k" not in group and group.tasks == 0


async def test_an_error_reaches_every_caller_and_the_next_call_runs_again() -> None:
    group: SingleFlight[str, str] = SingleFlight()
    failing = Work(error=OSError("boom"))
    calls = [asyncio.create_task(group.do("k", failing)) for _ in range(3)]
    await settle()
    failing.release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, OSError) and str(o) == "boom" for o in outcomes)
    assert failing.runs == 1
    fine = Work("again")
    fine.release.set()
    assert await group.do("k", fine) == ("again", False)


async def test_a_cancelled_caller_does_not_cancel_the_work_for_the_others() -> None:
    group: SingleFlight[str, str] = SingleFlight()
    work = Work()
    first = asyncio.create_task(group.do("k", work))
    second = asyncio.create_task(group.do("k", work))
    await settle()
    first.cancel()
    await settle()
    assert first.cancelled() and work.cancelled == 0
    work.release.set()
    assert await second == ("v", True)
    assert work.runs == 1


async def test_the_last_caller_leaving_cancels_the_work() -> None:
    group: SingleFlight[str, str] = SingleFlight()
    work = Work()
    calls = [asyncio.create_task(group.do("k", work)) for _ in range(2)]
    await settle()
    for call in calls:
        call.cancel()
    await settle()
    assert work.cancelled == 1 and group.tasks == 0 and "k" not in group
    fresh = Work("fresh")  # a new caller starts a new flight, not the dying one
    fresh.release.set()
    assert await group.do("k", fresh) == ("fresh", False)


async def test_callers_during_the_follow_up_get_the_value_at_once() -> None:
    group: SingleFlight[str, str] = SingleFlight()
    work = Work("early")
    work.after = asyncio.Event()
    work.release.set()
    assert await group.do("k", work) == ("early", False)
    assert "k" in group  # still storing, say
    assert await group.do("k", work) == ("early", True)
    ticket = group.ticket()
    assert not group.finished_since("k", ticket)
    work.after.set()
    await settle()
    assert "k" not in group and work.runs == 1
    assert group.finished_since("k", ticket) and not group.finished_since("other", ticket)


async def test_published_is_the_value_of_a_flight_still_under_way_never_a_wait() -> None:
    group: SingleFlight[str, str] = SingleFlight()
    work = Work("early")
    work.after = asyncio.Event()
    call = asyncio.create_task(group.do("k", work))
    await settle()
    assert group.published("k") is None  # under way, nothing yet
    work.release.set()
    await settle()
    assert group.published("k") == "early"  # published, still storing
    assert group.published("other") is None
    work.after.set()
    assert await call == ("early", False)
    await settle()
    assert group.published("k") is None  # ended
    failing = Work(error=RuntimeError("no"))
    failed = asyncio.create_task(group.do("f", failing))
    await settle()
    failing.release.set()
    with pytest.raises(RuntimeError):
        await failed
    assert group.published("f") is None


async def test_close_cancels_flights_and_later_calls_fail() -> None:
    group: SingleFlight[str, str] = SingleFlight()
    work = Work()
    call = asyncio.create_task(group.do("k", work))
    await settle()
    await group.close()
    assert group.tasks == 0 and work.cancelled == 1
    with pytest.raises(FlightCancelledError):
        await call
    with pytest.raises(FlightCancelledError):
        await group.do("other", Work())


async def test_close_before_a_flight_has_started_fails_its_caller() -> None:
    """Closed in the same step as the flight began, its task never runs: the caller
    still gets an answer."""
    group: SingleFlight[str, str] = SingleFlight()
    work = Work()
    call = asyncio.create_task(group.do("k", work))
    await asyncio.sleep(0)  # the call has made the flight; its task has not run a step
    await group.close()
    async with asyncio.timeout(5):
        with pytest.raises(FlightCancelledError):
            await call
    assert work.runs == 0

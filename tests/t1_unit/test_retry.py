"""The retry helper: transient failures retried within the deadline, others surface at once."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest

from tierfs.cloud.objstore import is_transient
from tierfs.errors import AccessDeniedError, CloudError, TransientCloudError
from tierfs.retry import with_retry


@pytest.mark.asyncio
async def test_transient_failures_are_retried_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise TransientCloudError("503 Slow Down")
        return "ok"

    retries: list[None] = []
    retried = partial(retries.append, None)
    assert await with_retry(flaky, what="GET k", deadline=10, on_retry=retried) == "ok"
    assert calls == 4
    assert len(retries) == 3  # each failed try that was tried again


@pytest.mark.asyncio
async def test_permanent_failure_surfaces_at_once() -> None:
    calls = 0

    async def denied() -> None:
        nonlocal calls
        calls += 1
        raise AccessDeniedError("access denied to bucket s3://b")

    with pytest.raises(AccessDeniedError):
        await with_retry(denied, what="GET k", deadline=10)
    assert calls == 1


@pytest.mark.asyncio
async def test_deadline_bounds_retries() -> None:
    async def down() -> None:
        raise TransientCloudError("connection refused")

    started = time.monotonic()
    with pytest.raises(CloudError, match="failed after .* attempts"):
        await with_retry(down, what="GET k", deadline=0.5)
    assert time.monotonic() - started < 1.0


@pytest.mark.asyncio
async def test_deadline_cancels_a_hung_attempt() -> None:
    async def hangs() -> None:
        await asyncio.sleep(30)

    started = time.monotonic()
    with pytest.raises(CloudError, match="no answer within 0.3s"):
        await with_retry(hangs, what="GET k", deadline=0.3)
    assert time.monotonic() - started < 1.0


@pytest.mark.asyncio
async def test_retry_after_is_honoured() -> None:
    stamps: list[float] = []

    async def throttled() -> str:
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            raise TransientCloudError("429", retry_after=0.3)
        return "ok"

    assert await with_retry(throttled, what="GET k", deadline=5) == "ok"
    assert stamps[1] - stamps[0] >= 0.3


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("Server returned non-success status code: 503 Service Unavailable", True),
        ("Server returned non-success status code: 500 Internal Server Error", True),
        ("Server returned non-success status code: 429 Too Many Requests", True),
        ("Server returned non-success status code: 408 Request Timeout", True),
        ("Server returned non-success status code: 501 Not Implemented", False),
        ("Server returned non-success status code: 505 HTTP Version Not Supported", False),
        ("Server returned non-success status code: 400 Bad Request", False),
        ("HTTP error: error sending request", True),
        ("connection reset by peer", True),
        ("operation timed out", True),
        ("The specified bucket does not exist", False),
    ],
)
def test_classification(message: str, transient: bool) -> None:
    assert is_transient(Exception(message)) is transient

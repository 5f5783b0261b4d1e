"""The one place where transient failures are retried: backoff, jitter, Retry-After, deadline."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tierfs.errors import CloudUnavailableError, TransientCloudError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Full jitter over an exponential ceiling: 50 ms, 100 ms, ... capped at 5 s between tries.
BASE_DELAY = 0.05
MAX_DELAY = 5.0


async def with_retry(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline: float,
    bound_attempts: bool = True,
    on_retry: Callable[[], object] | None = None,
) -> T:
    """Run `operation` until it succeeds, fails for good, or `deadline` seconds pass.

    Only TransientCloudError is retried; past the deadline, CloudUnavailableError. With
    `bound_attempts`, an attempt still running when the deadline falls is cancelled; long
    transfers (multipart uploads) pass False and rely on the per-request timeout of their
    client instead. `on_retry` is told of each failed attempt that is tried again.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        remaining = deadline - (time.monotonic() - started)
        try:
            if bound_attempts:
                return await asyncio.wait_for(operation(), timeout=max(remaining, 0.001))
            return await operation()
        except TimeoutError:
            raise CloudUnavailableError(f"{what}: no answer within {deadline:g}s") from None
        except TransientCloudError as exc:
            attempt += 1
            delay = random.uniform(0, min(MAX_DELAY, BASE_DELAY * 2**attempt))
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            elapsed = time.monotonic() - started
            if elapsed + delay >= deadline:
                raise CloudUnavailableError(
                    f"{what}: failed after {attempt} attempts in {elapsed:.1f}s: {exc}"
                ) from exc
            log.debug("%s: attempt %d failed (%s), retrying in %.2fs", what, attempt, exc, delay)
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)

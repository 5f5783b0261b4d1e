"""The coordinator's middlewares, outermost first: metrics, errors, auth (see tierfs.httpapi).

The dashboard at `/` also takes HTTP Basic with the token as password, which browsers
can send.
"""

from __future__ import annotations

from aiohttp.typedefs import Middleware

from tierfs.coordinator.metrics import CoordinatorMetrics
from tierfs.httpapi import authenticate, errors, measure

MAX_BODY = 2**20  # 1 MiB: the largest legitimate body is a location report of ~130k chunks
DASHBOARD_PATH = "/"


def middlewares(metrics: CoordinatorMetrics, token: str | None) -> list[Middleware]:
    """The coordinator's middleware stack for `token` (None: the API is open)."""
    return [
        measure(metrics.observe),
        errors,
        authenticate(token, server="coordinator", basic_paths=(DASHBOARD_PATH,)),
    ]

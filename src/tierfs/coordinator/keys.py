"""The typed keys of the coordinator app's state (`app[DB]`, ...)."""

from __future__ import annotations

from aiohttp import web

from tierfs.coordinator.db import Database
from tierfs.coordinator.membership import Snapshot, Timing
from tierfs.coordinator.metrics import CoordinatorMetrics

DB = web.AppKey("db", Database)  # set by the app's cleanup_ctx while it runs
TIMING = web.AppKey("timing", Timing)
SNAPSHOT = web.AppKey("snapshot", Snapshot)  # used on the database thread only
METRICS = web.AppKey("metrics", CoordinatorMetrics)
OPENAPI = web.AppKey("openapi", bytes)  # the OpenAPI document, serialized once

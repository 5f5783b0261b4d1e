"""`create_app`: the coordinator as an aiohttp application.

Resources live on `cleanup_ctx`: the database (opened on startup, checkpointed and
closed on cleanup) and the expiry sweep. Serve it with `AppRunner`/`TCPSite`
(coordinator_node.py), or with aiohttp's test utilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator

from aiohttp import web

from tierfs.coordinator import membership
from tierfs.coordinator.db import FILE_NAME, Database
from tierfs.coordinator.keys import DB, METRICS, OPENAPI, SNAPSHOT, TIMING
from tierfs.coordinator.membership import Snapshot, Timing
from tierfs.coordinator.metrics import CoordinatorMetrics
from tierfs.coordinator.middlewares import MAX_BODY, middlewares
from tierfs.coordinator.openapi import build
from tierfs.coordinator.routes import add_routes
from tierfs.directory_lock import lock_directory
from tierfs.errors import TierfsError
from tierfs.settings import CoordinatorSettings

log = logging.getLogger(__name__)

MAX_SWEEP_INTERVAL = 1.0  # seconds: a dead peer's epoch change shows within this
SNAPSHOT_MAX_AGE = 0.25  # seconds a heartbeat answer's peer list may lag the epoch
LOCK_FILE = "coordinator.pid"  # in -data-dir, locked by the coordinator using it


def create_app(settings: CoordinatorSettings) -> web.Application:
    """The coordinator app for `settings` (port and TLS are the server's business)."""
    metrics = CoordinatorMetrics()
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=middlewares(metrics, settings.token),
    )
    app[TIMING] = Timing(
        settings.heartbeat_interval,
        settings.peer_expiry,
        settings.dead_peer_retention,
        sweep_every=min(MAX_SWEEP_INTERVAL, settings.peer_expiry / 4),
    )
    app[SNAPSHOT] = Snapshot(min(SNAPSHOT_MAX_AGE, settings.heartbeat_interval / 4))
    app[METRICS] = metrics
    app[OPENAPI] = json.dumps(build(), separators=(",", ":")).encode()
    add_routes(app)

    async def database(app: web.Application) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise TierfsError(f"cannot create -data-dir {settings.data_dir}: {exc}") from None
        # Two coordinators on one database would each sweep and number the peers of both.
        held = lock_directory(settings.data_dir, LOCK_FILE, "tierfs coordinator", "-data-dir")
        try:
            path = settings.data_dir / FILE_NAME
            db = await Database.open(path)
            log.info("state in %s", path)
            app[DB] = db
            yield
            await db.close()
        finally:
            os.close(held)

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(_sweeper)
    return app


async def _sweep_forever(db: Database, timing: Timing) -> None:
    while True:
        await asyncio.sleep(timing.sweep_every)
        try:
            await db.run(membership.sweep, time.time(), timing)
        except Exception:
            log.exception("expiry sweep failed")  # a bug; the next sweep tries again


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    """Expire silent peers, and forget long-dead ones, even when nobody asks, so the epoch
    and /metrics move."""
    task = asyncio.create_task(_sweep_forever(app[DB], app[TIMING]), name="expiry-sweep")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

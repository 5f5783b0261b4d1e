"""`tierfs coordinator`: serve the coordinator app until SIGINT or SIGTERM.

Shutdown is graceful: the listener closes, requests in flight finish (up to
`httpapi.SHUTDOWN_GRACE` seconds), the database is checkpointed and closed, and the
command exits 0.
"""

from __future__ import annotations

import asyncio
import logging

from tierfs.coordinator.app import create_app
from tierfs.httpapi import start_site, tls_context
from tierfs.settings import CoordinatorSettings
from tierfs.stop_signals import stop_on_signals

log = logging.getLogger(__name__)


async def run_coordinator(settings: CoordinatorSettings) -> None:
    """Serve on `settings.listen`:`settings.port` until told to stop."""
    context = tls_context(settings.tls_cert, settings.tls_key)
    app = create_app(settings)
    # The access log would be one line per heartbeat: only at debug level.
    runner = await start_site(
        app,
        settings.listen,
        settings.port,
        ssl_context=context,
        access_log=settings.log_level == "debug",
    )  # runs the cleanup_ctx startup halves: opens the database
    try:
        scheme = "https" if context else "http"
        log.info(
            "coordinator listening on %s://%s:%d (token %s)",
            scheme,
            settings.listen,
            settings.port,
            "required" if settings.token else "not set: the API is open",
        )
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await stop.wait()
        log.info("coordinator stopping")
    finally:
        await runner.cleanup()
    log.info("coordinator stopped")

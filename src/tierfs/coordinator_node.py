"""`tierfs coordinator`: serve the coordinator app until SIGINT or SIGTERM.

Shutdown is graceful: the listener closes, requests in flight finish (up to
SHUTDOWN_GRACE seconds), the database is checkpointed and closed, and the command exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tierfs.coordinator.app import create_app
from tierfs.errors import TierfsError
from tierfs.settings import CoordinatorSettings

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0  # seconds for requests in flight to finish
# A 4096-byte path and a 1024-character version percent-encode to ~25 KiB of request line;
# aiohttp's default (8190) would refuse valid location queries.
MAX_REQUEST_LINE = 64 * 2**10


class _ClientErrorsAreNotOurs(logging.Filter):
    """aiohttp logs a malformed request (bad HTTP, a request line over the limit) as an ERROR
    with a traceback before answering it 400. It is the client's error: keep it at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            log.debug("bad HTTP request answered %d: %s", exc.code, exc.message)
            return False
        return True


def _tls(settings: CoordinatorSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TierfsError(f"cannot load -tls-cert/-tls-key: {exc}") from None
    return context


async def run_coordinator(settings: CoordinatorSettings) -> None:
    """Serve on `settings.listen`:`settings.port` until told to stop."""
    context = _tls(settings)
    app = create_app(settings)
    # The access log would be one line per heartbeat: only at debug level.
    access_log = logging.getLogger("aiohttp.access") if settings.log_level == "debug" else None
    logging.getLogger("aiohttp.server").addFilter(_ClientErrorsAreNotOurs())
    runner = web.AppRunner(
        app,
        access_log=access_log,
        shutdown_timeout=SHUTDOWN_GRACE,
        max_line_size=MAX_REQUEST_LINE,
    )
    await runner.setup()  # runs the cleanup_ctx startup halves: opens the database
    try:
        site = web.TCPSite(runner, settings.listen, settings.port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            raise TierfsError(f"cannot listen on port {settings.port}: {exc.strerror}") from None
        scheme = "https" if context else "http"
        log.info(
            "coordinator listening on %s://%s:%d (token %s)",
            scheme,
            settings.listen,
            settings.port,
            "required" if settings.token else "not set: the API is open",
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        log.info("coordinator stopping")
    finally:
        await runner.cleanup()
    log.info("coordinator stopped")

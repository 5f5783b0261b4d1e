"""`create_app`: the peer API of a client node as an aiohttp application, and `start_site`
to serve it in the node's own event loop (beside FUSE, the read path and the uploads).

Endpoints (handlers.py; the chunk protocol in protocol.py):

    GET    /api/files/{path}/size       object size (cloud) and bytes cached here
    GET    /api/files/{path}            bytes, honouring Range; one chunk with its checksum
    PUT    /api/files/{path}            keep one chunk in the peer budget (201, 507 full)
    DELETE /api/files/{path}            drop the chunks held of it
    HEAD   /api/files/{path}            whether chunks of it are held here
    GET    /api/peers                   the membership this node knows
    POST   /api/peers/{peer_id}/heartbeat
    GET    /api/cache                   a page of the chunks held
    GET    /api/cache/stats             counters and budgets
    GET    /api/health                  open without the token
    GET    /metrics                     Prometheus

The app lends the node's parts; it closes none of them. Request bodies are capped at one
chunk; every error is a JSON `ErrorBody` with a 4xx (or a 502 when the cloud fails).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.cloud.base import CloudStore
from tierfs.cloud.folder import KeyPrefix
from tierfs.coordinator.models import Membership
from tierfs.httpapi import authenticate, errors, measure, tls_context
from tierfs.httpapi import start_site as serve
from tierfs.peer import handlers
from tierfs.peer.handlers import NODE, PeerNode, cloud_errors
from tierfs.peer.metrics import PeerMetrics
from tierfs.read_path import ReadPath
from tierfs.settings import ClientSettings
from tierfs.stats import NodeStats

FILE = "/api/files/{path:.+}"


def create_app(
    *,
    cache: DiskChunkCache,
    read_path: ReadPath,
    cloud: CloudStore,
    stats: NodeStats,
    chunk_size: int,
    node_id: str,
    members: Callable[[], Membership | None],
    token: str | None,
    on_peer_heartbeat: Callable[[str], None],
    keys: KeyPrefix,
    mount: str,
) -> web.Application:
    """The peer API over the node's parts; `token` None leaves it open. Paths are the
    bucket's keys, `keys` the node's folder of the bucket."""
    metrics = PeerMetrics(stats, cache)
    app = web.Application(
        client_max_size=chunk_size,
        middlewares=[
            measure(metrics.observe),
            errors,
            authenticate(token, server="node"),
            cloud_errors,
        ],
    )
    app[NODE] = PeerNode(
        cache,
        read_path,
        cloud,
        stats,
        chunk_size,
        node_id,
        members,
        on_peer_heartbeat,
        metrics,
        keys,
        mount,
    )
    route = app.router.add_route
    route("GET", FILE + "/size", handlers.file_size)  # first: see file_size
    route("GET", FILE, handlers.get_file)  # add_route adds no HEAD: head_file answers it
    route("HEAD", FILE, handlers.head_file)
    route("PUT", FILE, handlers.put_file)
    route("DELETE", FILE, handlers.delete_file)
    route("POST", "/api/warm", handlers.warm_files)
    route("GET", "/api/peers", handlers.list_peers)
    route("POST", "/api/peers/{peer_id}/heartbeat", handlers.heartbeat)
    route("GET", "/api/cache", handlers.list_cache)
    route("GET", "/api/cache/stats", handlers.cache_stats)
    route("GET", "/api/health", handlers.health)
    route("GET", "/metrics", handlers.metrics)
    return app


async def start_site(app: web.Application, settings: ClientSettings) -> web.AppRunner:
    """Serve `app` on `settings.listen`:`settings.port`, with TLS from `-tls-cert` and
    `-tls-key`. The caller calls `runner.cleanup()` to stop it (requests in flight finish)."""
    context = tls_context(settings.tls_cert, settings.tls_key)
    return await serve(
        app,
        settings.listen,
        settings.port,
        ssl_context=context,
        access_log=settings.log_level == "debug",
    )

"""The one route table of the coordinator: it registers the handlers and describes them
to the OpenAPI document (openapi.py), so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from tierfs.coordinator import handlers
from tierfs.coordinator.models import (
    AllPeers,
    ClusterStats,
    Departed,
    Health,
    HeartbeatRequest,
    LocationQuery,
    LocationReport,
    Locations,
    LocationStored,
    Membership,
    RegisterRequest,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_ERRORS = (400, 413, 422)  # malformed JSON, too large, invalid fields


@dataclass(frozen=True)
class Route:
    """One endpoint: how it is reached, what it takes and what it answers."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None  # None: the media type says what comes back
    media_type: str = "application/json"
    errors: tuple[int, ...] = ()  # besides 401 (token) on every route that is not `open`
    open: bool = False  # answered without the token


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/api/health",
        handlers.health,
        "Liveness and readiness; needs no token",
        response=Health,
        open=True,
    ),
    Route(
        "POST",
        "/api/peers/register",
        handlers.register,
        "Join or rejoin the cluster; answers the membership",
        body=RegisterRequest,
        response=Membership,
        errors=(*BODY_ERRORS, 409),
    ),
    Route(
        "GET",
        "/api/peers",
        handlers.list_peers,
        "The live peers and the membership epoch",
        response=Membership,
    ),
    Route(
        "GET",
        "/api/peers/all",
        handlers.list_all_peers,
        "Every peer the coordinator knows, the dead ones too until -dead-peer-retention",
        response=AllPeers,
    ),
    Route(
        "PUT",
        "/api/peers/status",
        handlers.heartbeat,
        "Heartbeat with state, usage and cache counters; 404 means register again",
        body=HeartbeatRequest,
        response=Membership,
        errors=(*BODY_ERRORS, 404),
    ),
    Route(
        "DELETE",
        "/api/peers/{peer_id}",
        handlers.leave,
        "Leave the cluster: the peer and its locations are removed",
        response=Departed,
        errors=(404, 422),
    ),
    Route(
        "PUT",
        "/api/files/location",
        handlers.put_location,
        "Report the chunks of a version of a path that a peer holds",
        body=LocationReport,
        response=LocationStored,
        errors=(*BODY_ERRORS, 404),
    ),
    Route(
        "GET",
        "/api/files/location",
        handlers.get_location,
        "The live peers holding a path, with version and chunks",
        query=LocationQuery,
        response=Locations,
        errors=(422,),
    ),
    Route(
        "GET",
        "/api/stats",
        handlers.cluster_stats,
        "Cluster totals: peers, capacity, usage, hits and misses per tier, egress saved",
        response=ClusterStats,
    ),
    Route("GET", "/api/openapi.json", handlers.openapi, "This document"),
    Route(
        "GET",
        "/metrics",
        handlers.metrics,
        "Prometheus metrics",
        media_type="text/plain",
    ),
    Route(
        "GET",
        "/",
        handlers.page,
        "The dashboard (HTML); also takes HTTP Basic auth with the token as password",
        media_type="text/html",
    ),
)


def add_routes(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)

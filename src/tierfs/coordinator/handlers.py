"""The coordinator's request handlers: parse and validate, one hop to the database thread,
answer JSON. Bad input raises ApiError (4xx); the `errors` middleware writes it out."""

from __future__ import annotations

import sqlite3
import time
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, TypeAdapter, ValidationError

from tierfs import __version__
from tierfs.coordinator import dashboard, locations, membership, stats
from tierfs.coordinator.keys import DB, METRICS, OPENAPI, SNAPSHOT, TIMING
from tierfs.coordinator.models import (
    AllPeers,
    ClusterStats,
    Departed,
    Health,
    HeartbeatRequest,
    LocationQuery,
    LocationReport,
    PeerId,
    PeerInfo,
    RegisterRequest,
)
from tierfs.httpapi import ApiError, invalid, parse_query

M = TypeVar("M", bound=BaseModel)

_PEER_ID = TypeAdapter(PeerId)


def _json(model: BaseModel | membership.Answer, status: int = 200) -> web.Response:
    if isinstance(model, membership.Answer):
        body = model.to_json()
    else:
        body = model.model_dump_json().encode()
    return web.Response(status=status, body=body, content_type="application/json")


def _unknown_peer(peer_id: str) -> ApiError:
    return ApiError(
        404,
        "unknown_peer",
        f"peer {peer_id!r} is not registered: register it (POST /api/peers/register)",
    )


async def _body(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`; 413 past the app's client_max_size, 400 or 422 if bad."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc, "body") from None


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


async def health(request: web.Request) -> web.Response:
    """Open without the token: for load balancers and readiness probes. Answers only once
    the database thread answers."""
    await request.app[DB].run(_ping)
    return _json(Health(status="ok", version=__version__))


async def register(request: web.Request) -> web.Response:
    body = await _body(request, RegisterRequest)
    app = request.app
    try:
        answer = await app[DB].run(
            membership.register, body, time.time(), app[TIMING], app[SNAPSHOT]
        )
    except membership.PeerIdTakenError as exc:
        raise ApiError(409, "peer_id_taken", str(exc)) from None
    return _json(answer)


async def list_peers(request: web.Request) -> web.Response:
    timing = request.app[TIMING]
    return _json(await request.app[DB].run(membership.membership, time.time(), timing))


async def list_all_peers(request: web.Request) -> web.Response:
    peers = await request.app[DB].run(membership.all_peers, time.time(), request.app[TIMING])
    return _json(AllPeers(peers=peers))


async def heartbeat(request: web.Request) -> web.Response:
    body = await _body(request, HeartbeatRequest)
    app = request.app
    answer = await app[DB].run(membership.heartbeat, body, time.time(), app[TIMING], app[SNAPSHOT])
    if answer is None:
        raise _unknown_peer(body.peer_id)
    return _json(answer)


async def leave(request: web.Request) -> web.Response:
    raw = request.match_info["peer_id"]
    try:
        peer_id = _PEER_ID.validate_python(raw)
    except ValidationError as exc:
        raise invalid(exc, "path.peer_id") from None
    epoch = await request.app[DB].run(membership.leave, peer_id)
    if epoch is None:
        raise _unknown_peer(peer_id)
    return _json(Departed(peer_id=peer_id, epoch=epoch))


async def put_location(request: web.Request) -> web.Response:
    body = await _body(request, LocationReport)
    try:
        stored = await request.app[DB].run(locations.put_location, body, time.time())
    except locations.TooManyChunksError as exc:
        raise ApiError(422, "too_many_chunks", str(exc)) from None
    if stored is None:
        raise _unknown_peer(body.peer_id)
    return _json(stored)


async def get_location(request: web.Request) -> web.Response:
    query = parse_query(request, LocationQuery)
    timing = request.app[TIMING]
    return _json(await request.app[DB].run(locations.get_locations, query, time.time(), timing))


def _stats_now(conn: sqlite3.Connection, now: float, timing: membership.Timing) -> ClusterStats:
    return stats.cluster_stats(conn, membership.sweep(conn, now, timing))


def _page_data(
    conn: sqlite3.Connection, now: float, timing: membership.Timing
) -> tuple[ClusterStats, list[PeerInfo]]:
    snapshot = _stats_now(conn, now, timing)  # swept: the peers as it left them
    return snapshot, membership.known_peers(conn)


async def cluster_stats(request: web.Request) -> web.Response:
    return _json(await request.app[DB].run(_stats_now, time.time(), request.app[TIMING]))


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    snapshot = await request.app[DB].run(_stats_now, time.time(), request.app[TIMING])
    text = request.app[METRICS].render(snapshot)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def page(request: web.Request) -> web.Response:
    now = time.time()
    snapshot, peers = await request.app[DB].run(_page_data, now, request.app[TIMING])
    return web.Response(text=dashboard.render(snapshot, peers, now), content_type="text/html")

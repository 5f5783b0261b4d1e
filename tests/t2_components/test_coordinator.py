"""The coordinator as a real process on loopback: every endpoint, auth, bad input, restarts,
expiry, TLS, the client side, and a schema-driven fuzz of every endpoint.

Every coordinator started here must end with a log free of tracebacks and ERROR lines:
a 500 is a bug whatever the test was about.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import servers
from babbler import Babbler
from babbler import app as babbler_app
from certs import self_signed
from coordinators import Coordinator, start_coordinator
from tierfs.coordinator.client import MAX_ANSWER, CoordinatorClient, NodeReport
from tierfs.coordinator.models import Membership, PeerInfo, TierBytes
from tierfs.coordinator.openapi import build as build_openapi
from tierfs.coordinator.routes import ROUTES
from tierfs.httpapi import start_site
from tierfs.stats import NodeStats, Tier

TOKEN = "t0ken-" + secrets.token_hex(8)
EXPIRY_FLAGS = ("-heartbeat-interval", "200ms", "-peer-expiry", "1s")


def uid(prefix: str = "p") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Poll `predicate` every 50 ms; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        time.sleep(0.05)
    return time.monotonic() - started


async def until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """`wait_for` for async tests; blocking predicates run in a thread."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(predicate)
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {predicate}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coordinators")


@pytest.fixture(scope="module")
def coord(base: Path) -> Iterator[Coordinator]:
    """One coordinator with a token for the endpoint tests (each test uses its own peer ids)."""
    coordinator = start_coordinator(base, token=TOKEN)
    yield coordinator
    coordinator.stop()
    coordinator.assert_clean_log()


@pytest.fixture(scope="module")
def expiring(base: Path) -> Iterator[Coordinator]:
    """A coordinator that declares a peer dead after 1 s of silence."""
    coordinator = start_coordinator(base, *EXPIRY_FLAGS)
    yield coordinator
    coordinator.stop()
    coordinator.assert_clean_log()


# --- endpoints --------------------------------------------------------------------------------


def test_health_answers_without_token(coord: Coordinator) -> None:
    answer = coord.get("/api/health", token=None)
    assert answer.status == 200
    assert answer.json["status"] == "ok"


def test_register_then_list_peers(coord: Coordinator) -> None:
    peer = uid()
    membership = coord.register(
        peer,
        "10.1.2.3:8081",
        capacity={"local": 10 * 2**30, "peer": 5 * 2**30},
        usage={"local": 123, "peer": 45},
    )
    assert membership["heartbeat_interval"] == 5.0 and membership["peer_expiry"] == 15.0
    mine = {p["peer_id"]: p for p in membership["peers"]}[peer]
    assert mine["address"] == "10.1.2.3:8081" and mine["status"] == "active"
    assert mine["capacity"] == {"local": 10 * 2**30, "peer": 5 * 2**30}
    assert mine["usage"] == {"local": 123, "peer": 45}
    assert time.time() - mine["last_heartbeat"] < 5
    listed = coord.get("/api/peers").json
    assert listed["epoch"] == membership["epoch"]
    assert peer in [p["peer_id"] for p in listed["peers"]]


def test_epoch_moves_with_membership_only(coord: Coordinator) -> None:
    peer = uid()
    epoch = coord.register(peer)["epoch"]
    assert coord.register(peer)["epoch"] == epoch  # same address and state: no change
    beat = coord.heartbeat(peer, usage={"local": 1, "peer": 2}, epoch=epoch)
    assert beat.status == 200
    assert beat.json["epoch"] == epoch and beat.json["peers"] is None  # nothing new to say
    assert coord.heartbeat(peer).json["peers"] is not None  # no epoch given: the full list
    draining = coord.heartbeat(peer, status="draining", epoch=epoch).json
    assert draining["epoch"] > epoch
    assert {p["peer_id"]: p for p in draining["peers"]}[peer]["status"] == "draining"
    moved = coord.register(peer, "10.0.0.9:1234")["epoch"]
    assert moved > draining["epoch"]
    assert coord.request("DELETE", f"/api/peers/{peer}").json["epoch"] > moved


def test_heartbeat_updates_usage_and_time(coord: Coordinator) -> None:
    peer = uid()
    first = coord.register(peer)
    before = {p["peer_id"]: p for p in first["peers"]}[peer]["last_heartbeat"]
    time.sleep(0.05)
    answer = coord.heartbeat(peer, capacity={"local": 1000, "peer": 0}, usage={"local": 7})
    assert answer.status == 200, answer.body
    # (a heartbeat's own answer may carry a list up to 250 ms old: GET /api/peers is fresh)
    mine = {p["peer_id"]: p for p in coord.get("/api/peers").json["peers"]}[peer]
    assert mine["last_heartbeat"] > before
    assert mine["capacity"] == {"local": 1000, "peer": 0}
    assert mine["usage"] == {"local": 7, "peer": 0}


def test_heartbeat_of_unknown_peer_is_404(coord: Coordinator) -> None:
    answer = coord.heartbeat(uid("ghost"))
    assert answer.status == 404
    assert answer.json["error"] == "unknown_peer"


def test_locations_merge_replace_and_withdraw(coord: Coordinator) -> None:
    a, b = uid("a"), uid("b")
    coord.register(a, "127.0.0.1:9001")
    coord.register(b, "127.0.0.1:9002")
    path = f"datasets/{uid('f')}/part 0001.bin"
    stored = coord.put_location(a, path, "v1", [2, 0, 1, 1])
    assert stored.status == 200 and stored.json["chunk_count"] == 3
    coord.put_location(a, path, "v1", [5])  # same version: added
    coord.put_location(b, path, "v1", [7])
    held = {entry["peer_id"]: entry for entry in coord.locations(path)}
    assert held[a]["chunks"] == [0, 1, 2, 5] and held[a]["address"] == "127.0.0.1:9001"
    assert held[b]["chunks"] == [7] and held[b]["version"] == "v1"
    coord.put_location(a, path, "v2", [9])  # a new version replaces the old
    entry = {e["peer_id"]: e for e in coord.locations(path)}[a]
    assert (entry["version"], entry["chunks"]) == ("v2", [9])
    only_v1 = coord.get(f"/api/files/location?path={path.replace(' ', '%20')}&version=v1").json
    assert [e["peer_id"] for e in only_v1["locations"]] == [b]
    coord.put_location(a, path, "v2", [3, 4], replace=True)
    assert {e["peer_id"]: e for e in coord.locations(path)}[a]["chunks"] == [3, 4]
    gone = coord.put_location(a, path, "v2", [], replace=True)
    assert gone.status == 200 and gone.json["chunk_count"] == 0
    assert [e["peer_id"] for e in coord.locations(path)] == [b]
    assert coord.locations(f"{path}.absent") == []
    assert coord.put_location(uid("ghost"), path, "v1", [1]).status == 404


def test_leave_removes_peer_and_its_locations(coord: Coordinator) -> None:
    peer = uid()
    coord.register(peer)
    path = f"leave/{peer}.bin"
    coord.put_location(peer, path, "v1", [0])
    answer = coord.request("DELETE", f"/api/peers/{peer}")
    assert answer.status == 200 and answer.json["peer_id"] == peer
    assert peer not in coord.live_ids()
    assert coord.locations(path) == []
    again = coord.request("DELETE", f"/api/peers/{peer}")
    assert again.status == 404 and again.json["error"] == "unknown_peer"


def _totals(coord: Coordinator) -> dict[str, Any]:
    answer = coord.get("/api/stats")
    assert answer.status == 200, answer.body
    return dict(answer.json)


def test_stats_sum_the_cluster_and_only_grow(coord: Coordinator) -> None:
    a, b = uid("a"), uid("b")
    before = _totals(coord)
    coord.register(a, capacity={"local": 1000, "peer": 100}, usage={"local": 10, "peer": 1})
    coord.register(b, capacity={"local": 2000, "peer": 200}, usage={"local": 20, "peer": 2})
    stats_a = {"tiers": {"local": {"hits": 8, "misses": 2, "bytes": 800}, "cloud": {"bytes": 50}}}
    stats_b = {"tiers": {"peer": {"hits": 5, "bytes": 500}}, "evictions": 3}
    assert coord.heartbeat(a, stats=stats_a).status == 200
    assert coord.heartbeat(b, stats=stats_b).status == 200
    after = _totals(coord)
    assert after["peers"]["active"] - before["peers"]["active"] == 2
    assert after["capacity"]["local"] - before["capacity"]["local"] == 3000
    assert after["usage"]["peer"] - before["usage"]["peer"] == 3
    assert after["tiers"]["local"]["hits"] - before["tiers"]["local"]["hits"] == 8
    assert after["tiers"]["peer"]["bytes"] - before["tiers"]["peer"]["bytes"] == 500
    assert after["cloud_bytes_fetched"] - before["cloud_bytes_fetched"] == 50
    assert after["peer_bytes_served"] - before["peer_bytes_served"] == 500
    assert after["cloud_egress_saved"] - before["cloud_egress_saved"] == 1300
    assert after["evictions"] - before["evictions"] == 3
    # a restarted peer reports from zero: what it counted before is kept
    coord.heartbeat(a, stats={"tiers": {"local": {"hits": 1}}})
    restarted = _totals(coord)
    assert restarted["tiers"]["local"]["hits"] - before["tiers"]["local"]["hits"] == 9
    # a departed peer's counters stay in the totals; its capacity does not
    coord.request("DELETE", f"/api/peers/{b}")
    departed = _totals(coord)
    assert departed["tiers"]["peer"]["bytes"] - before["tiers"]["peer"]["bytes"] == 500
    assert departed["capacity"]["local"] - before["capacity"]["local"] == 1000
    ratio = departed["tiers"]["local"]["hit_ratio"]
    assert ratio is not None and 0 < ratio <= 1


def test_totals_past_any_one_peers_bound(coord: Coordinator) -> None:
    """Each peer's bytes fit SQLite's integers; their sum need not, and is still answered."""
    top = 2**63 - 1
    peers = [uid("big"), uid("big")]
    before = _totals(coord)
    for peer in peers:
        coord.register(peer, capacity={"local": top, "peer": top}, usage={"local": top})
    try:
        after = _totals(coord)
        assert after["capacity"]["local"] - before["capacity"]["local"] == 2 * top
        assert after["usage"]["local"] - before["usage"]["local"] == 2 * top
        for page in ("/metrics", "/"):
            assert coord.get(page).status == 200, page
    finally:
        for peer in peers:
            coord.request("DELETE", f"/api/peers/{peer}")


def test_openapi_document_is_valid_and_complete(coord: Coordinator) -> None:
    answer = coord.get("/api/openapi.json")
    assert answer.status == 200
    document = answer.json
    validate_openapi(document)
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["summary"] and "200" in operation["responses"]
        assert ("401" in operation["responses"]) is not route.open
    register = document["paths"]["/api/peers/register"]["post"]["requestBody"]
    schema_name = register["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert document["components"]["schemas"][schema_name]["additionalProperties"] is False


def test_metrics_are_prometheus_text(coord: Coordinator) -> None:
    peer = uid()
    coord.register(peer, capacity={"local": 4096, "peer": 0})
    coord.heartbeat(peer, stats={"tiers": {"cloud": {"bytes": 11, "misses": 1}}})
    answer = coord.get("/metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
    live = {s.labels["status"]: s.value for s in families["tierfs_peers"].samples}
    assert live["active"] >= 1
    capacity = {
        s.labels["tier"]: s.value for s in families["tierfs_cluster_capacity_bytes"].samples
    }
    assert capacity["local"] >= 4096
    assert "tierfs_cluster_cloud_egress_saved_bytes" in families
    requests = families["tierfs_coordinator_requests"].samples
    assert any(s.labels.get("route") == "/api/peers/register" for s in requests)
    assert "process_resident_memory_bytes" in families


def test_dashboard_page(coord: Coordinator) -> None:
    peer = uid("dash")
    coord.register(peer, "127.0.0.1:9999", capacity={"local": 2**30, "peer": 2**29})
    page = coord.get("/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.body.decode()
    for text in (peer, "127.0.0.1:9999", "cloud egress saved", "hit ratio", "1.0 GiB"):
        assert text in html, text
    browser = coord.get("/", token=None)
    assert browser.status == 401 and browser.headers["WWW-Authenticate"].startswith("Basic")
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    assert coord.get("/", token=None, headers={"Authorization": f"Basic {basic}"}).status == 200


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_but_health_needs_the_token(coord: Coordinator, route: Any) -> None:
    path = route.path.replace("{peer_id}", "someone")
    if route.query is not None:
        path += "?path=a.bin"
    body = {"peer_id": "x", "address": "h:1"} if route.body is not None else None
    for token in (None, "wrong-" + TOKEN, TOKEN[:-1]):
        answer = coord.request(route.method, path, body, token=token)
        if route.open:
            assert answer.status == 200
            continue
        assert answer.status == 401, (route.path, token, answer.body)
        assert answer.json["error"] in ("unauthorized", "wrong_token")
        assert "WWW-Authenticate" in answer.headers
        assert TOKEN not in answer.body.decode()
    assert coord.request(route.method, path, body).status != 401


def test_bearer_scheme_and_spacing(coord: Coordinator) -> None:
    ok = coord.get("/api/peers", token=None, headers={"Authorization": f"bearer   {TOKEN}"})
    assert ok.status == 200
    basic = base64.b64encode(f"u:{TOKEN}".encode()).decode()
    api = coord.get("/api/peers", token=None, headers={"Authorization": f"Basic {basic}"})
    assert api.status == 401  # Basic is for the dashboard only


# --- bad input --------------------------------------------------------------------------------

REG = "/api/peers/register"
BEAT = "/api/peers/status"
LOC = "/api/files/location"


def reg(**fields: Any) -> dict[str, Any]:
    return {"peer_id": "bad-input", "address": "127.0.0.1:1", **fields}


def loc(**fields: Any) -> dict[str, Any]:
    return {"peer_id": "bad-input", "path": "a/b.bin", "version": "v", "chunks": [0], **fields}


BAD_BODIES: list[tuple[str, str, Any, int, str]] = [
    # (method, path, body (bytes: sent raw), status, what the error must name)
    ("POST", REG, b"{not json", 400, "malformed_json"),
    ("POST", REG, b"", 400, "malformed_json"),
    ("POST", REG, b'{"peer_id": "a\xff"}', 400, "malformed_json"),
    ("POST", REG, b'{"peer_id": "\\ud800x", "address": "h:1"}', 400, "malformed_json"),
    ("POST", REG, b"[1, 2]", 400, "not_an_object"),
    ("POST", REG, b"null", 400, "not_an_object"),
    ("POST", REG, {"address": "h:1"}, 422, "body.peer_id"),
    ("POST", REG, reg(peer_id=5), 422, "body.peer_id"),
    ("POST", REG, reg(peer_id="a" * 129), 422, "body.peer_id"),
    ("POST", REG, reg(peer_id="a/b"), 422, "body.peer_id"),
    ("POST", REG, reg(peer_id="a b"), 422, "body.peer_id"),
    ("POST", REG, reg(peer_id=".."), 422, "body.peer_id"),
    ("POST", REG, reg(peer_id=""), 422, "body.peer_id"),
    ("POST", REG, reg(address="no-port"), 422, "body.address"),
    ("POST", REG, reg(address="h:70000"), 422, "body.address"),
    ("POST", REG, reg(address="h:0"), 422, "body.address"),
    ("POST", REG, reg(surprise=1), 422, "body.surprise"),
    ("POST", REG, reg(status="dead"), 422, "body.status"),
    ("POST", REG, reg(capacity={"local": "10"}), 422, "body.capacity.local"),
    ("POST", REG, reg(capacity={"local": 1.5}), 422, "body.capacity.local"),
    ("POST", REG, reg(capacity={"local": True}), 422, "body.capacity.local"),
    ("POST", REG, reg(capacity={"local": -1}), 422, "body.capacity.local"),
    ("POST", REG, reg(capacity={"local": 2**64}), 422, "body.capacity.local"),
    ("POST", REG, reg(capacity={"nvme": 1}), 422, "body.capacity.nvme"),
    ("POST", REG, reg(capacity=[1, 2]), 422, "body.capacity"),
    ("POST", REG, reg(stats={"tiers": {"disk": {}}}), 422, "body.stats.tiers.disk"),
    ("PUT", BEAT, {"peer_id": ["x"]}, 422, "body.peer_id"),
    ("PUT", BEAT, {"peer_id": "x", "epoch": -1}, 422, "body.epoch"),
    ("PUT", BEAT, {"peer_id": "x", "stats": {"hits": 1}}, 422, "body.stats.hits"),
    ("PUT", LOC, loc(path="../etc/passwd"), 422, "body.path"),
    ("PUT", LOC, loc(path="a/../../b"), 422, "body.path"),
    ("PUT", LOC, loc(path="/etc/passwd"), 422, "body.path"),
    ("PUT", LOC, loc(path="a\u0000b"), 422, "body.path"),
    ("PUT", LOC, loc(path="a//b"), 422, "body.path"),
    ("PUT", LOC, loc(path="a/./b"), 422, "body.path"),
    ("PUT", LOC, loc(path=""), 422, "body.path"),
    ("PUT", LOC, loc(path="a" * 4097), 422, "body.path"),
    ("PUT", LOC, loc(path="é" * 2049), 422, "body.path"),  # 2049 chars, 4098 bytes
    ("PUT", LOC, loc(chunks=["1"]), 422, "body.chunks.0"),
    ("PUT", LOC, loc(chunks=[-1]), 422, "body.chunks.0"),
    ("PUT", LOC, loc(chunks=[2**40]), 422, "body.chunks.0"),
    ("PUT", LOC, loc(chunks=[]), 422, "replace=true"),
    ("PUT", LOC, loc(chunks=list(range(131_073))), 422, "body.chunks"),
    ("PUT", LOC, loc(version=""), 422, "body.version"),
    ("PUT", LOC, loc(version="v" * 1025), 422, "body.version"),
    ("PUT", LOC, {"peer_id": "x", "path": "a"}, 422, "body.version"),
    ("PUT", LOC, loc(replace="yes"), 422, "body.replace"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "names"), BAD_BODIES)
def test_bad_bodies_are_4xx_naming_the_problem(
    coord: Coordinator, method: str, path: str, body: Any, status: int, names: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = coord.request(method, path, raw=raw)
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("application/json")
    error = answer.json
    assert names in json.dumps(error), error
    assert error["message"]
    if status == 422:
        assert error["error"] == "invalid_request" and error["details"]


def test_oversized_body_is_413(coord: Coordinator) -> None:
    raw = b'{"peer_id": "x", "address": "h:1", "pad": "' + b"x" * (2 * 2**20) + b'"}'
    answer = coord.request("POST", REG, raw=raw)
    assert answer.status == 413
    assert answer.json["error"] == "body_too_large"


BAD_QUERIES = [
    ("/api/files/location", "query.path"),
    ("/api/files/location?path=../x", "query.path"),
    ("/api/files/location?path=%2Fetc%2Fpasswd", "query.path"),
    ("/api/files/location?path=a%00b", "query.path"),
    ("/api/files/location?path=" + "a" * 4097, "query.path"),
    ("/api/files/location?path=a&path=b", "query.path"),
    ("/api/files/location?path=a&bogus=1", "query.bogus"),
    ("/api/files/location?path=a&version=", "query.version"),
]


@pytest.mark.parametrize(("target", "names"), BAD_QUERIES)
def test_bad_queries_are_422(coord: Coordinator, target: str, names: str) -> None:
    answer = coord.get(target)
    assert answer.status == 422, answer.body
    assert names in json.dumps(answer.json)


@pytest.mark.parametrize(
    ("peer_id", "status"), [("bad!id", 422), ("x" * 129, 422), ("%2E%2E", 422), ("nobody", 404)]
)
def test_bad_peer_ids_in_the_url(coord: Coordinator, peer_id: str, status: int) -> None:
    answer = coord.request("DELETE", f"/api/peers/{peer_id}")
    assert answer.status == status, answer.body
    assert answer.json["error"] in ("invalid_request", "unknown_peer")


def test_unknown_routes_and_methods_are_json(coord: Coordinator) -> None:
    missing = coord.get("/api/nothing")
    assert missing.status == 404 and missing.json["error"] == "not_found"
    wrong = coord.request("PATCH", "/api/peers/status", {})
    assert wrong.status == 405 and wrong.json["error"] == "method_not_allowed"
    assert "PUT" in wrong.headers["Allow"]


# --- restarts and expiry -------------------------------------------------------------------


def test_kill9_and_restart_keep_peers_and_locations(base: Path) -> None:
    coordinator = start_coordinator(base)
    try:
        coordinator.register("keeper", "127.0.0.1:7001", capacity={"local": 99, "peer": 1})
        coordinator.put_location("keeper", "kept/file.bin", "etag-1", [0, 3])
        coordinator.heartbeat("keeper", stats={"tiers": {"local": {"hits": 4}}})
        epoch = coordinator.get("/api/peers").json["epoch"]
        coordinator.kill9_and_restart()
        listed = coordinator.get("/api/peers").json
        assert listed["epoch"] == epoch
        (peer,) = listed["peers"]
        assert peer["peer_id"] == "keeper" and peer["capacity"] == {"local": 99, "peer": 1}
        (entry,) = coordinator.locations("kept/file.bin")
        assert entry["chunks"] == [0, 3] and entry["version"] == "etag-1"
        assert coordinator.get("/api/stats").json["tiers"]["local"]["hits"] == 4
        coordinator.restart()  # graceful this time
        assert coordinator.live_ids() == ["keeper"]
    finally:
        coordinator.stop()
    assert coordinator.proc.popen is not None and coordinator.proc.popen.returncode == 0
    assert "coordinator stopped" in coordinator.proc.log.read_text()
    coordinator.assert_clean_log()


def test_a_second_coordinator_on_the_same_data_dir_is_one_line_and_exit_1(base: Path) -> None:
    """Two coordinators on one database would each sweep and number the other's peers."""
    coordinator = start_coordinator(base)
    try:
        coordinator.register("first", "127.0.0.1:7002")
        (port,) = servers.free_ports(1)
        result = subprocess.run(
            [sys.executable, "-m", "tierfs.cli", "coordinator", "-listen", "127.0.0.1",
             "-port", str(port), "-data-dir", str(coordinator.data_dir)],
            capture_output=True, text=True, timeout=60, env=servers.clean_env(),
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"tierfs coordinator: {coordinator.data_dir} is in use by another tierfs "
            f"coordinator (pid {coordinator.proc.pid}): give each its own -data-dir"
        ]
        assert coordinator.live_ids() == ["first"]
    finally:
        coordinator.stop()
    coordinator.assert_clean_log()


def test_silent_peer_expires_and_comes_back(expiring: Coordinator) -> None:
    peer = uid("quiet")
    expiring.register(peer)
    path = f"expiry/{peer}.bin"
    expiring.put_location(peer, path, "v1", [1])
    epoch = expiring.get("/api/peers").json["epoch"]
    waited = wait_for(lambda: peer not in expiring.live_ids(), what="expiry")
    assert 0.5 < waited < 4.0
    assert expiring.locations(path) == []
    dead_epoch = expiring.get("/api/peers").json["epoch"]
    assert dead_epoch > epoch
    assert expiring.get("/api/stats").json["peers"]["dead"] >= 1
    assert expiring.heartbeat(peer).status == 200  # back by heartbeat
    assert peer in expiring.live_ids()
    assert expiring.locations(path)[0]["chunks"] == [1]
    assert expiring.get("/api/peers").json["epoch"] > dead_epoch
    wait_for(lambda: peer not in expiring.live_ids(), what="second expiry")
    expiring.register(peer)  # back by registration
    assert peer in expiring.live_ids() and expiring.locations(path)


def test_heartbeating_peer_stays_alive(expiring: Coordinator) -> None:
    peer = uid("chatty")
    expiring.register(peer)
    for _ in range(8):  # 2 s: twice the expiry
        time.sleep(0.25)
        assert expiring.heartbeat(peer).status == 200
        assert peer in expiring.live_ids()


def test_a_coordinator_paused_past_the_expiry_keeps_its_peers(base: Path) -> None:
    """Stopped (SIGSTOP, swapped out, a VM paused) for longer than -peer-expiry, it marked
    every peer dead as it woke, then live again at their next heartbeat: two epochs per
    peer, and nodes that for a moment saw no owner for their chunks."""
    coordinator = start_coordinator(base, *EXPIRY_FLAGS)
    try:
        peer = uid("patient")
        coordinator.register(peer)
        epoch = coordinator.get("/api/peers").json["epoch"]
        assert coordinator.proc.pid is not None
        os.killpg(coordinator.proc.pid, signal.SIGSTOP)
        time.sleep(3)  # three times the expiry
        os.killpg(coordinator.proc.pid, signal.SIGCONT)
        assert coordinator.heartbeat(peer).status == 200  # sent as it woke, as a node's
        assert coordinator.get("/api/peers").json["epoch"] == epoch
        assert "marked dead" not in coordinator.proc.log.read_text()
        assert "did not run for" in coordinator.proc.log.read_text()
        waited = wait_for(lambda: peer not in coordinator.live_ids(), what="expiry")
        assert waited < 4.0  # once it runs, silence counts again
    finally:
        coordinator.stop()
    coordinator.assert_clean_log()


def _all_peers(coordinator: Coordinator) -> dict[str, str]:
    answer = coordinator.get("/api/peers/all")
    assert answer.status == 200, answer.body
    return {p["peer_id"]: p["status"] for p in answer.json["peers"]}


def test_a_peer_dead_past_the_retention_is_forgotten(base: Path) -> None:
    """Nodes replaced without leaving (spot, autoscaling, crashes) must not pile up: a peer
    dead past -dead-peer-retention is dropped with its locations (its counters stay in the
    totals); one dead less long is still listed; a forgotten one that comes back rejoins."""
    coordinator = start_coordinator(base, *EXPIRY_FLAGS, "-dead-peer-retention", "2s")
    try:
        gone, kept = uid("gone"), uid("kept")
        coordinator.register(gone, "127.0.0.1:9301")
        coordinator.register(kept, "127.0.0.1:9302")
        assert coordinator.heartbeat(gone, stats={"tiers": {"cloud": {"bytes": 70}}}).status == 200
        path = f"forget/{gone}.bin"
        assert coordinator.put_location(gone, path, "v1", [0, 1]).status == 200
        assert coordinator.put_location(kept, path, "v1", [2]).status == 200
        assert _totals(coordinator)["locations"] == 2

        seen_dead = 0.0
        started = time.monotonic()
        while gone in (listed := _all_peers(coordinator)):  # `kept` heartbeats meanwhile
            assert time.monotonic() - started < 10, f"{gone} never forgotten: {listed}"
            assert coordinator.heartbeat(kept).status == 200
            if listed[gone] == "dead" and not seen_dead:
                seen_dead = time.monotonic()
            time.sleep(0.2)
        assert seen_dead, "the peer was never listed as dead before it was forgotten"
        assert time.monotonic() - seen_dead > 1.0  # listed dead for about the retention
        totals = _totals(coordinator)
        assert totals["peers"] == {"total": 1, "active": 1, "draining": 0, "dead": 0}
        assert (totals["files"], totals["locations"]) == (1, 1)  # `gone`'s rows deleted
        assert totals["cloud_bytes_fetched"] == 70  # its counters stay in the totals
        assert [e["peer_id"] for e in coordinator.locations(path)] == [kept]

        # a peer dead less long than the retention is still listed, its locations kept
        wait_for(lambda: _all_peers(coordinator).get(kept) == "dead", what=f"{kept} dead")
        totals = _totals(coordinator)
        assert totals["peers"]["dead"] == 1 and totals["locations"] == 1

        # the forgotten peer comes back: told to register, which it does, cleanly
        answer = coordinator.heartbeat(gone)
        assert answer.status == 404 and answer.json["error"] == "unknown_peer"
        coordinator.register(gone, "127.0.0.1:9301")
        assert gone in coordinator.live_ids()
        assert _totals(coordinator)["cloud_bytes_fetched"] == 70
    finally:
        coordinator.stop()
    coordinator.assert_clean_log()
    log = coordinator.proc.log.read_text()
    forgotten = [line for line in log.splitlines() if "forgotten" in line]
    assert len(forgotten) == 1 and gone in forgotten[0], forgotten


# --- TLS ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tls_and_the_client_over_it(base: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    coordinator = await asyncio.to_thread(
        start_coordinator, base, token=TOKEN, tls=(cert, key), ssl_context=trust
    )
    try:
        assert coordinator.url.startswith("https://")
        answer = await asyncio.to_thread(coordinator.get, "/api/health", token=None)
        assert answer.status == 200
        client = CoordinatorClient(
            coordinator.url,
            "tls-node",
            "127.0.0.1:9443",
            NodeReport,
            token=TOKEN,
            ssl_context=trust,
        )
        task = asyncio.create_task(client.run())
        await until(lambda: client.registered)
        assert "tls-node" in await asyncio.to_thread(coordinator.live_ids)
        await client.leave()
        await asyncio.wait_for(task, 5)
        await client.close()
    finally:
        await asyncio.to_thread(coordinator.stop)
    coordinator.assert_clean_log()


# --- the client side ----------------------------------------------------------------------


def _client_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tierfs.coordinator.client" and r.levelno == level
    ]


@pytest.mark.warnings_expected
@pytest.mark.asyncio
async def test_client_rides_out_an_outage_and_a_wiped_coordinator(
    base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tierfs.coordinator.client")
    coordinator = await asyncio.to_thread(
        start_coordinator, base, "-heartbeat-interval", "200ms", "-peer-expiry", "2s", token=TOKEN
    )
    stats = NodeStats()
    stats.tier(Tier.LOCAL).hits = 3
    stats.tier(Tier.CLOUD).bytes = 4096
    report = NodeReport(TierBytes(local=10_000, peer=5_000), TierBytes(local=100), stats)
    changes: list[int] = []
    client = CoordinatorClient(
        coordinator.url,
        "node-x",
        "127.0.0.1:9100",
        lambda: report,
        token=TOKEN,
        on_change=lambda m: changes.append(m.epoch),
    )
    task = asyncio.create_task(client.run())
    try:
        await until(lambda: client.registered and bool(client.members))
        assert [p.peer_id for p in client.members] == ["node-x"]
        assert client.epoch is not None and changes
        # heartbeats carry usage and counters
        await until(lambda: coordinator.get("/api/stats").json["cloud_bytes_fetched"] == 4096)
        assert coordinator.get("/api/stats").json["usage"]["local"] == 100
        client.report_location("data/x.bin", "v1", [0, 1])
        client.report_location("data/x.bin", "v1", [2])
        assert not client.report_location("../escape", "v1", [0])
        await until(
            lambda: [e["chunks"] for e in coordinator.locations("data/x.bin")] == [[0, 1, 2]]
        )

        # the coordinator goes away: the client keeps its membership and keeps trying
        await asyncio.to_thread(coordinator.stop)
        client.report_location("data/y.bin", "v7", [4])  # queued meanwhile
        await asyncio.sleep(2.0)
        assert not task.done()
        assert [p.peer_id for p in client.members] == ["node-x"]
        assert len(_client_records(caplog, logging.WARNING)) == 1

        # it comes back with a wiped data dir: 404 -> register again, re-announce locations
        await asyncio.to_thread(shutil.rmtree, coordinator.data_dir)
        await asyncio.to_thread(coordinator.proc.start)
        assert coordinator.proc.ready is not None
        await asyncio.to_thread(coordinator.proc.ready)
        await until(lambda: "node-x" in coordinator.live_ids(), timeout=15)
        await until(lambda: bool(coordinator.locations("data/x.bin")))
        await until(lambda: bool(coordinator.locations("data/y.bin")))
        assert coordinator.locations("data/x.bin")[0]["chunks"] == [0, 1, 2]
        assert len(_client_records(caplog, logging.WARNING)) == 1
        infos = _client_records(caplog, logging.INFO)
        assert sum("back after" in m for m in infos) == 1, infos

        await client.leave()
        await asyncio.wait_for(task, 5)
        assert "node-x" not in await asyncio.to_thread(coordinator.live_ids)
    finally:
        task.cancel()
        await client.close()
        await asyncio.to_thread(coordinator.stop)
    coordinator.assert_clean_log()


@pytest.mark.warnings_expected
@pytest.mark.asyncio
async def test_client_with_a_wrong_token_keeps_running(
    coord: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    client = CoordinatorClient(coord.url, uid(), "127.0.0.1:9200", NodeReport, token="wrong")
    task = asyncio.create_task(client.run())
    await asyncio.sleep(1.5)
    assert not task.done() and not client.registered
    warnings = _client_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "token" in warnings[0]
    task.cancel()
    await client.close()


def test_client_refuses_a_bad_identity() -> None:
    with pytest.raises(ValueError, match="cannot register"):
        CoordinatorClient("http://127.0.0.1:1", "bad id", "h:1", NodeReport)


@pytest.mark.warnings_expected
@pytest.mark.asyncio
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
async def test_client_reads_no_answer_past_its_bound(
    gzip: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A -coordinator URL of some other server, or a broken coordinator, that answers
    without end: each request fails once its answer is past MAX_ANSWER, its memory within
    that bound, and the client goes on as through an outage (membership kept, retries)."""
    caplog.set_level(logging.INFO, logger="tierfs.coordinator.client")
    peer = PeerInfo(
        peer_id="node-b",
        address="127.0.0.1:9300",
        status="active",
        capacity=TierBytes(),
        usage=TierBytes(),
        registered_at=time.time(),
        last_heartbeat=time.time(),
    )
    membership = Membership(epoch=1, heartbeat_interval=0.2, peer_expiry=1.0, peers=[peer])
    babbler = Babbler(gzip)
    runner = await start_site(babbler_app(babbler), "127.0.0.1", 0, ssl_context=None)
    host, port = runner.addresses[0][:2]
    client = CoordinatorClient(
        f"http://{host}:{port}", "node-b", peer.address, NodeReport, request_timeout=3.0
    )
    tracemalloc.start()
    task = asyncio.create_task(client.run())

    def warnings() -> list[str]:
        return _client_records(caplog, logging.WARNING)

    def bounded_memory() -> None:
        """At most the bound in memory, and the growth room of the bytes read into it."""
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < MAX_ANSWER + 16 * 2**20, f"{peak / 2**20:.0f} MiB in memory"

    try:
        started = time.monotonic()
        await until(lambda: bool(warnings()))
        assert "an answer over 64.0 MiB: not a coordinator's answer" in warnings()[0]
        bounded_memory()
        assert time.monotonic() - started < 2.5  # well within the request timeout
        assert not client.registered and client.members == []
        if not gzip:  # the client hung up at the bound (gzip: the socket holds GiBs of it)
            assert MAX_ANSWER < babbler.sent[0] < MAX_ANSWER + 16 * 2**20, babbler.sent

        joined = membership.model_dump_json()
        babbler.honest = {"POST /api/peers/register": joined, "PUT /api/peers/status": joined}
        await until(lambda: client.registered and bool(client.members))
        assert sum("back after" in m for m in _client_records(caplog, logging.INFO)) == 1
        started = time.monotonic()
        assert await client.locate("data/x.bin", "v1") == []  # the location answer is endless
        assert time.monotonic() - started < 2.5

        del babbler.honest["PUT /api/peers/status"]  # heartbeats answered without end
        await until(lambda: len(warnings()) == 2)
        assert "an answer over 64.0 MiB" in warnings()[1]
        assert [p.peer_id for p in client.members] == ["node-b"]  # kept meanwhile
        assert not task.done()
        bounded_memory()
    finally:
        tracemalloc.stop()
        task.cancel()
        await client.close()
        await runner.cleanup()


# --- fuzzing every endpoint from the OpenAPI document --------------------------------------


@pytest.fixture
def fuzz_target(base: Path, request: pytest.FixtureRequest) -> Iterator[Coordinator]:
    """A coordinator for the fuzz of one endpoint (each is its own test, and the parallel
    workers split them: a coordinator shared by a module saw only its worker's share). The
    fuzz must have reached the endpoint, and never made the coordinator fail."""
    coordinator = start_coordinator(base, token=TOKEN)
    coordinator.register("fuzz-peer")  # so that some generated requests find a peer
    yield coordinator
    seen = _statuses_by_route(coordinator)
    coordinator.stop()
    coordinator.assert_clean_log()
    endpoint = request.node.name.partition("[")[2].rstrip("]")  # "GET /api/peers"
    assert seen.get(endpoint), (endpoint, seen)
    assert not [s for statuses in seen.values() for s in statuses if s.startswith("5")], seen


def _statuses_by_route(coordinator: Coordinator) -> dict[str, dict[str, int]]:
    text = coordinator.get("/metrics").body.decode()
    seen: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "tierfs_coordinator_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['method']} {sample.labels['route']}"
                seen.setdefault(key, {})[sample.labels["status"]] = int(sample.value)
    return seen


# The document the server serves, built by the same code: loaded eagerly because
# schemathesis' lazy `from_fixture` loader reads a pytest-private attribute that pytest 9
# no longer has. test_fuzzed_document_is_the_served_one keeps the two the same.
API = schemathesis.openapi.from_dict(build_openapi())
API.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=60
)


def test_fuzzed_document_is_the_served_one(coord: Coordinator) -> None:
    assert coord.get("/api/openapi.json").json == build_openapi()


@API.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # one per endpoint
def test_fuzz_every_endpoint_never_5xx(case: Any, fuzz_target: Coordinator) -> None:
    response = case.call(
        base_url=fuzz_target.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


def test_a_live_peers_id_is_refused_to_another_node(expiring: Coordinator) -> None:
    """Two nodes started with one -peer-id: the second used to take the id over silently,
    and the first, still heartbeating, vanished from every node's membership."""
    peer = uid("twin")
    first = {"peer_id": peer, "address": "127.0.0.1:9001", "instance": "first"}
    second = {"peer_id": peer, "address": "127.0.0.1:9002", "instance": "second"}
    expiring.register(**first)
    taken = expiring.request("POST", REG, second)
    assert taken.status == 409, taken.body
    assert taken.json["error"] == "peer_id_taken"
    assert "127.0.0.1:9001" in taken.json["message"]
    listed = {p["peer_id"]: p["address"] for p in expiring.get("/api/peers").json["peers"]}
    assert listed[peer] == "127.0.0.1:9001"
    assert expiring.heartbeat(peer).status == 200  # the first one is undisturbed
    expiring.register(**(first | {"instance": "restarted"}))  # same address: a restart
    wait_for(lambda: peer not in expiring.live_ids(), what="expiry")
    assert expiring.request("POST", REG, second).status == 200  # a dead one's id is free
    expiring.assert_clean_log()

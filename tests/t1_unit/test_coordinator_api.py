"""The coordinator's schemas, OpenAPI document, dashboard, client backoff and settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tierfs.coordinator.client import Backoff
from tierfs.coordinator.dashboard import render
from tierfs.coordinator.models import (
    ClusterBytes,
    ClusterStats,
    LocationReport,
    NodeStatsReport,
    PeerCounts,
    PeerInfo,
    RegisterRequest,
    TierBytes,
    TierName,
    TierTotals,
)
from tierfs.coordinator.openapi import build
from tierfs.coordinator.routes import ROUTES
from tierfs.errors import ConfigError
from tierfs.settings import CoordinatorSettings, load_settings
from tierfs.stats import NodeStats, Tier


def test_node_stats_report_takes_what_node_stats_gives() -> None:
    stats = NodeStats(evictions=3)
    stats.tier(Tier.PEER).bytes = 10
    report = NodeStatsReport.model_validate(stats.as_dict())
    assert report.evictions == 3 and report.tiers.peer.bytes == 10
    assert set(NodeStatsReport.model_fields) == set(stats.as_dict())
    assert set(type(report.tiers).model_fields) == {str(t) for t in Tier}


def test_requests_are_strict() -> None:
    with pytest.raises(ValidationError):
        RegisterRequest.model_validate_json('{"peer_id": "a", "address": "h:1", "x": 1}')
    with pytest.raises(ValidationError):
        RegisterRequest.model_validate_json(
            '{"peer_id": "a", "address": "h:1", "capacity": {"local": "1"}}'
        )
    with pytest.raises(ValidationError, match="replace=true"):
        LocationReport(path="a", peer_id="p", version="v", chunks=[])
    assert LocationReport(path="a", peer_id="p", version="v", chunks=[], replace=True)


def test_openapi_covers_every_route() -> None:
    document = build()
    assert document["openapi"].startswith("3.1")
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.handler.__name__
        assert (operation.get("security") == []) is route.open
    query = document["paths"]["/api/files/location"]["get"]["parameters"]
    assert {p["name"]: p["required"] for p in query} == {"path": True, "version": False}
    assert all("anyOf" not in p["schema"] for p in query)
    peer_param = document["paths"]["/api/peers/{peer_id}"]["delete"]["parameters"][0]
    assert peer_param["in"] == "path" and peer_param["schema"]["maxLength"] == 128


def _stats() -> ClusterStats:
    names: tuple[TierName, ...] = ("local", "peer", "cloud")
    tiers = {t: TierTotals(hits=3, misses=1, bytes=2**20, errors=0, hit_ratio=0.75) for t in names}
    return ClusterStats(
        epoch=7,
        peers=PeerCounts(total=2, active=1, draining=0, dead=1),
        capacity=ClusterBytes(local=2**30, peer=0),
        usage=ClusterBytes(local=2**29, peer=0),
        tiers=tiers,
        cloud_bytes_fetched=2**20,
        peer_bytes_served=2**20,
        cloud_egress_saved=2**21,
        evictions=0,
        evicted_bytes=0,
        corrupt_chunks=0,
        prefetched_chunks=0,
        prefetch_hits=0,
        files=1,
        locations=1,
    )


def test_dashboard_escapes_and_shows_the_figures() -> None:
    peer = PeerInfo(
        peer_id="a<b>",
        address="h:1",
        status="dead",
        capacity=TierBytes(local=2**30),
        usage=TierBytes(),
        registered_at=0.0,
        last_heartbeat=100.0,
    )
    page = render(_stats(), [peer], now=160.0)
    assert "a&lt;b&gt;" in page and "<b>2.0 MiB</b>" in page
    assert "75.0%" in page and "60s ago" in page and 'class="dead"' in page
    assert "no peer has registered" in render(_stats(), [], now=0.0)


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    low = Backoff(0.5, 8.0, rand=lambda: 0.0)
    high = Backoff(0.5, 8.0, rand=lambda: 1.0)
    assert [low.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [high.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    high.reset()
    assert high.next() == 0.5
    for _ in range(200):  # no overflow however long the outage
        assert high.next() <= 8.0


def test_coordinator_timing_flags() -> None:
    settings = load_settings(CoordinatorSettings, {}, {})
    assert (settings.heartbeat_interval, settings.peer_expiry) == (5.0, 15.0)
    given = {"heartbeat_interval": "200ms", "peer_expiry": "1s"}
    settings = load_settings(CoordinatorSettings, given, {})
    assert (settings.heartbeat_interval, settings.peer_expiry) == (0.2, 1.0)
    with pytest.raises(ConfigError, match="-peer-expiry .* longer than -heartbeat-interval"):
        load_settings(CoordinatorSettings, {"peer_expiry": "1s"}, {})
    with pytest.raises(ConfigError, match="-heartbeat-interval"):
        load_settings(CoordinatorSettings, {"heartbeat_interval": "0s"}, {})
    with pytest.raises(ConfigError, match="'inf' is not a duration"):
        load_settings(CoordinatorSettings, {"peer_expiry": "inf"}, {})

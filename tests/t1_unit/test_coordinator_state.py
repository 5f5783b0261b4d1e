"""Membership, locations and statistics on an in-memory database, with an explicit clock."""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierfs.coordinator import locations, membership, stats
from tierfs.coordinator.db import connect
from tierfs.coordinator.membership import Timing
from tierfs.coordinator.models import (
    ClusterBytes,
    HeartbeatRequest,
    LocationQuery,
    LocationReport,
    NodeStatsReport,
    RegisterRequest,
)

TIMING = Timing(heartbeat_interval=5.0, peer_expiry=15.0, dead_peer_retention=24 * 3600.0)
T0 = 1_000_000.0


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    connection = connect(":memory:")
    yield connection
    connection.close()


def register(
    conn: sqlite3.Connection,
    peer: str,
    now: float = T0,
    snapshot: membership.Snapshot | None = None,
    **fields: object,
) -> int:
    request = RegisterRequest.model_validate({"peer_id": peer, "address": f"{peer}:8081", **fields})
    return membership.register(conn, request, now, TIMING, snapshot).epoch


def beat(
    conn: sqlite3.Connection, peer: str, now: float, **fields: object
) -> membership.Answer | None:
    request = HeartbeatRequest.model_validate({"peer_id": peer, **fields})
    return membership.heartbeat(conn, request, now, TIMING)


def live(conn: sqlite3.Connection, now: float, timing: Timing = TIMING) -> list[str]:
    return [p.peer_id for p in membership.membership(conn, now, timing).model().peers or []]


def test_fresh_epoch_is_a_timestamp_so_a_wiped_coordinator_never_repeats_one(
    conn: sqlite3.Connection,
) -> None:
    assert membership.current_epoch(conn) > 1_600_000_000_000_000


def test_expiry_death_and_return(conn: sqlite3.Connection) -> None:
    e0 = register(conn, "a")
    register(conn, "b")
    assert live(conn, T0 + 14.9) == ["a", "b"]
    beat(conn, "a", T0 + 14.0)
    epoch_before = membership.current_epoch(conn)
    assert live(conn, T0 + 15.5) == ["a"]  # b silent for 15.5 s
    dead_epoch = membership.current_epoch(conn)
    assert dead_epoch > epoch_before > e0
    everyone = {p.peer_id: p.status for p in membership.all_peers(conn, T0 + 15.5, TIMING)}
    assert everyone == {"a": "active", "b": "dead"}
    back = beat(conn, "b", T0 + 20.0)
    assert back is not None and membership.current_epoch(conn) > dead_epoch
    assert live(conn, T0 + 20.0) == ["a", "b"]


@pytest.mark.parametrize(
    ("retention", "kept"),
    [(0.0, [False, False]), (60.0, [True, False]), (math.inf, [True, True])],
)
def test_dead_peer_retention(conn: sqlite3.Connection, retention: float, kept: list[bool]) -> None:
    """0: forgotten in the sweep that finds it dead; `indefinite` (inf): never."""
    timing = Timing(heartbeat_interval=5.0, peer_expiry=15.0, dead_peer_retention=retention)
    register(conn, "a")
    for now, expected in zip((T0 + 16.0, T0 + 76.0), kept, strict=True):
        membership.sweep(conn, now, timing)
        everyone = {p.peer_id: p.status for p in membership.all_peers(conn, now, timing)}
        assert everyone == ({"a": "dead"} if expected else {}), now - T0
    assert (beat(conn, "a", T0 + 80.0) is None) == (not kept[-1])


def test_many_peers_forgotten_at_once_are_one_log_line(
    conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A cluster of spot nodes replaced at once: the sweep that forgets them logged a line
    for each (40 lines); now one, with the count and the first ids."""
    timing = Timing(heartbeat_interval=5.0, peer_expiry=15.0, dead_peer_retention=60.0)
    gone = [f"spot-{n:02d}" for n in range(40)]
    for peer in ["kept", *gone]:
        register(conn, peer)
    membership.sweep(conn, T0 + 16.0, timing)  # all dead
    beat(conn, "kept", T0 + 70.0)
    with caplog.at_level(logging.INFO, logger="tierfs.coordinator.membership"):
        membership.sweep(conn, T0 + 80.0, timing)
    assert [p.peer_id for p in membership.all_peers(conn, T0 + 80.0, timing)] == ["kept"]
    lines = [r.getMessage() for r in caplog.records if "forgotten" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("40 peers forgotten"), lines
    assert "spot-00, spot-01" in lines[0] and "and 30 more" in lines[0], lines
    assert "spot-39" not in lines[0], lines


def test_heartbeat_of_unknown_peer_is_none(conn: sqlite3.Connection) -> None:
    assert beat(conn, "ghost", T0) is None


def test_peers_left_out_when_the_epoch_is_current(conn: sqlite3.Connection) -> None:
    epoch = register(conn, "a")
    same = beat(conn, "a", T0 + 1, epoch=epoch)
    assert same is not None and same.model().peers is None
    stale = beat(conn, "a", T0 + 2, epoch=epoch - 1)
    assert stale is not None
    (peer,) = stale.model().peers or []
    assert peer.peer_id == "a" and peer.address == "a:8081" and peer.last_heartbeat == T0 + 2
    assert stale.model().heartbeat_interval == 5.0


def test_heartbeat_answers_share_a_snapshot(conn: sqlite3.Connection) -> None:
    snapshot = membership.Snapshot(0.25)

    def beat_ids(now: float, known: int | None) -> tuple[int, list[str] | None]:
        request = HeartbeatRequest(peer_id="a", epoch=known)
        answer = membership.heartbeat(conn, request, now, TIMING, snapshot)
        assert answer is not None
        peers = answer.model().peers
        return answer.epoch, None if peers is None else [p.peer_id for p in peers]

    e1 = register(conn, "a", T0, snapshot)
    e2 = register(conn, "b", T0 + 0.01, snapshot)  # registrations refresh the snapshot
    assert beat_ids(T0 + 0.02, e1) == (e2, ["a", "b"])
    e3 = register(conn, "c", T0 + 0.03)  # a change the snapshot has not seen
    assert beat_ids(T0 + 0.04, e2) == (e2, None)  # nothing newer yet; never backwards
    assert beat_ids(T0 + 0.05, None) == (e2, ["a", "b"])
    assert beat_ids(T0 + 0.30, e2) == (e3, ["a", "b", "c"])  # stale: built afresh
    assert beat_ids(T0 + 0.31, e3) == (e3, None)
    assert beat_ids(T0 + 0.32, e3 + 100) == (e3, ["a", "b", "c"])  # a bogus future epoch
    draining = HeartbeatRequest(peer_id="b", status="draining", epoch=e3)
    answer = membership.heartbeat(conn, draining, T0 + 0.33, TIMING, snapshot)
    assert answer is not None and answer.epoch > e3  # who changed things sees them at once
    assert [p.status for p in answer.model().peers or []] == ["active", "draining", "active"]


def test_time_the_coordinator_did_not_run_is_not_the_peers_silence(
    conn: sqlite3.Connection,
) -> None:
    """Stopped, restarted or paused past -peer-expiry, the coordinator marked every peer
    dead as it woke, and live again at their next heartbeat."""
    swept = Timing(
        heartbeat_interval=5.0, peer_expiry=15.0, dead_peer_retention=60.0, sweep_every=1.0
    )
    register(conn, "a")
    register(conn, "b")
    beat(conn, "b", T0 + 10)
    assert live(conn, T0 + 11, swept) == ["a", "b"]  # a silent 11 s, b 1 s
    # no expiry from T0 + 11 to T0 + 200: the coordinator did not run
    assert live(conn, T0 + 200, swept) == ["a", "b"]
    for second in range(201, 205):  # then it sweeps every second
        assert live(conn, T0 + second, swept) == ["a", "b"]
    assert live(conn, T0 + 205, swept) == ["b"]  # 11 s silent before, 4+ since
    for second in range(206, 215):
        assert live(conn, T0 + second, swept) == ["b"]
    assert live(conn, T0 + 215, swept) == []
    # expiries 2 s apart are a coordinator running: none of the silence is excused
    register(conn, "c", T0 + 300)
    for second in range(302, 316, 2):
        assert live(conn, T0 + second, swept) == ["c"]
    assert live(conn, T0 + 316, swept) == []


def test_leave(conn: sqlite3.Connection) -> None:
    register(conn, "a")
    report = LocationReport(path="f", peer_id="a", version="v", chunks=[1])
    locations.put_location(conn, report, T0)
    assert membership.leave(conn, "a") is not None
    assert membership.leave(conn, "a") is None
    assert conn.execute("SELECT COUNT(*) FROM locations").fetchone()[0] == 0


def test_location_merge_rules() -> None:
    def report(chunks: list[int], replace: bool = False) -> LocationReport:
        return LocationReport(path="p", peer_id="a", version="v", chunks=chunks, replace=replace)

    assert locations.merge(None, report([3, 1, 1]), False) == [1, 3]
    assert locations.merge([1, 3], report([2]), True) == [1, 2, 3]
    assert locations.merge([1, 3], report([2]), False) == [2]  # another version
    assert locations.merge([1, 3], report([2], replace=True), True) == [2]
    assert locations.merge([1, 3], report([], replace=True), True) == []


def test_locations_of_dead_peers_are_hidden(conn: sqlite3.Connection) -> None:
    register(conn, "a")
    register(conn, "b", T0 + 10)
    for peer in ("a", "b"):
        report = LocationReport(path="d/f", peer_id=peer, version="v1", chunks=[0, 1])
        assert locations.put_location(conn, report, T0 + 10) is not None
    query = LocationQuery(path="d/f")
    found = locations.get_locations(conn, query, T0 + 14, TIMING)
    assert [entry.peer_id for entry in found.locations] == ["a", "b"]
    found = locations.get_locations(conn, query, T0 + 16, TIMING)
    assert [entry.peer_id for entry in found.locations] == ["b"]
    assert (
        locations.get_locations(conn, LocationQuery(path="d/f", version="v2"), T0, TIMING).locations
        == []
    )


def test_location_of_unknown_peer_is_none(conn: sqlite3.Connection) -> None:
    report = LocationReport(path="p", peer_id="ghost", version="v", chunks=[0])
    assert locations.put_location(conn, report, T0) is None


def test_too_many_chunks(conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    register(conn, "a")
    monkeypatch.setattr(locations, "MAX_CHUNKS_PER_ENTRY", 3)
    locations.put_location(
        conn, LocationReport(path="p", peer_id="a", version="v", chunks=[0, 1]), T0
    )
    with pytest.raises(locations.TooManyChunksError):
        report = LocationReport(path="p", peer_id="a", version="v", chunks=[2, 3])
        locations.put_location(conn, report, T0)


def test_counters_fold_across_restarts() -> None:
    last = {"hits": 10, "bytes": 100}
    assert stats.fold(last, {}, {"hits": 12, "bytes": 150}) == {}
    assert stats.fold(last, {}, {"hits": 2, "bytes": 150}) == {"hits": 10}
    assert stats.fold(last, {"hits": 5}, {"hits": 0, "bytes": 0}) == {"hits": 15, "bytes": 100}


def test_flatten_matches_node_stats_shape() -> None:
    report = NodeStatsReport.model_validate({"tiers": {"peer": {"bytes": 7}}, "evictions": 2})
    flat = stats.flatten(report)
    assert flat["tiers.peer.bytes"] == 7 and flat["evictions"] == 2
    assert flat["tiers.cloud.hits"] == 0


def test_cluster_totals_survive_restarts_and_departures(conn: sqlite3.Connection) -> None:
    def report(hits: int, cloud: int) -> NodeStatsReport:
        return NodeStatsReport.model_validate(
            {"tiers": {"local": {"hits": hits, "bytes": hits}, "cloud": {"bytes": cloud}}}
        )

    register(conn, "a", capacity={"local": 100, "peer": 10})
    register(conn, "b", capacity={"local": 200, "peer": 20}, usage={"local": 5, "peer": 0})
    beat(conn, "a", T0 + 1, stats=report(10, 1000).model_dump())
    beat(conn, "b", T0 + 1, stats=report(5, 500).model_dump())
    beat(conn, "a", T0 + 2, stats=report(3, 0).model_dump())  # a restarted
    totals = stats.cluster_stats(conn, membership.sweep(conn, T0 + 2, TIMING))
    assert totals.tiers["local"].hits == 18
    assert totals.cloud_bytes_fetched == 1500
    assert totals.cloud_egress_saved == 18
    assert totals.capacity == ClusterBytes(local=300, peer=30)
    assert totals.peers.active == 2
    membership.leave(conn, "b")
    totals = stats.cluster_stats(conn, membership.current_epoch(conn))
    assert totals.tiers["local"].hits == 18 and totals.cloud_bytes_fetched == 1500
    assert totals.capacity == ClusterBytes(local=100, peer=10)
    totals = stats.cluster_stats(conn, membership.sweep(conn, T0 + 100, TIMING))
    assert totals.peers.dead == 1 and totals.capacity == ClusterBytes(local=0, peer=0)
    assert totals.tiers["local"].hit_ratio == 1.0 and totals.tiers["peer"].hit_ratio is None


@pytest.mark.warnings_expected  # the twin's registration is refused
def test_a_database_of_schema_1_keeps_its_peers_and_learns_instances(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite3"
    old = connect(path)
    register(old, "kept")
    old.execute("ALTER TABLE peers DROP COLUMN instance")  # as schema 1 made it
    old.execute("PRAGMA user_version = 1")
    old.close()
    conn = connect(path)
    try:
        assert live(conn, T0) == ["kept"]
        register(conn, "kept", instance="a1")
        twin = RegisterRequest(peer_id="kept", address="elsewhere:8081", instance="b2")
        with pytest.raises(membership.PeerIdTakenError, match="kept:8081"):
            membership.register(conn, twin, T0, TIMING)
    finally:
        conn.close()

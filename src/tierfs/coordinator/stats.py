"""Cluster statistics: the counters peers report, summed so that the totals only grow.

A peer reports its `NodeStats` counters with each heartbeat; they restart from zero when
the peer process does. The coordinator keeps, per peer, the last report and a `base`
(the counters of the peer's earlier runs): a counter smaller than last time means a
restart, and the last value moves into the base. When a peer leaves, its counters move
into a cluster-wide `departed` record. So `GET /api/stats` and `/metrics` totals grow
monotonically, as Prometheus counters must.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from tierfs.coordinator.db import get_meta, set_meta
from tierfs.coordinator.models import (
    TIER_NAMES,
    ClusterBytes,
    ClusterStats,
    NodeStatsReport,
    PeerCounts,
    TierTotals,
)

Counters = dict[str, int]


def flatten(report: NodeStatsReport) -> Counters:
    """`{"tiers.local.hits": 3, ..., "evictions": 1}` from a report."""
    flat: Counters = {}

    def walk(prefix: str, value: Mapping[str, Any]) -> None:
        for key, item in value.items():
            if isinstance(item, Mapping):
                walk(f"{prefix}{key}.", item)
            else:
                flat[f"{prefix}{key}"] = int(item)

    walk("", report.model_dump())
    return flat


def fold(last: Mapping[str, int], base: Mapping[str, int], new: Mapping[str, int]) -> Counters:
    """The new base once `new` replaces `last`: a counter that went down restarted, so what
    it had counted (its last value) joins the base."""
    folded = dict(base)
    for key, value in last.items():
        if new.get(key, 0) < value:
            folded[key] = folded.get(key, 0) + value
    return folded


def add(total: Counters, more: Mapping[str, int]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0) + value


def _loads(text: str) -> Counters:
    value = json.loads(text)
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def record(conn: sqlite3.Connection, peer_id: str, report: NodeStatsReport) -> None:
    """Store `report` as the peer's latest counters (inside the caller's transaction)."""
    row = conn.execute(
        "SELECT stats, stats_base FROM peers WHERE peer_id = ?", (peer_id,)
    ).fetchone()
    if row is None:
        return
    new = flatten(report)
    base = fold(_loads(row[0]), _loads(row[1]), new)
    conn.execute(
        "UPDATE peers SET stats = ?, stats_base = ? WHERE peer_id = ?",
        (json.dumps(new), json.dumps(base), peer_id),
    )


def retire(conn: sqlite3.Connection, peer_id: str) -> None:
    """Move a departing peer's counters into the cluster's `departed` record."""
    row = conn.execute(
        "SELECT stats, stats_base FROM peers WHERE peer_id = ?", (peer_id,)
    ).fetchone()
    if row is None:
        return
    departed = _loads(get_meta(conn, "departed", "{}"))
    add(departed, _loads(row[0]))
    add(departed, _loads(row[1]))
    set_meta(conn, "departed", json.dumps(departed))


def _ratio(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def summarize(
    counters: Mapping[str, int],
    peers: PeerCounts,
    capacity: ClusterBytes,
    usage: ClusterBytes,
    *,
    epoch: int,
    files: int,
    locations: int,
) -> ClusterStats:
    """The `GET /api/stats` answer from summed counters (pure: unit-tested)."""

    def c(key: str) -> int:
        return counters.get(key, 0)

    tiers = {
        tier: TierTotals(
            hits=c(f"tiers.{tier}.hits"),
            misses=c(f"tiers.{tier}.misses"),
            bytes=c(f"tiers.{tier}.bytes"),
            errors=c(f"tiers.{tier}.errors"),
            hit_ratio=_ratio(c(f"tiers.{tier}.hits"), c(f"tiers.{tier}.misses")),
        )
        for tier in TIER_NAMES
    }
    return ClusterStats(
        epoch=epoch,
        peers=peers,
        capacity=capacity,
        usage=usage,
        tiers=tiers,
        cloud_bytes_fetched=c("tiers.cloud.bytes"),
        peer_bytes_served=c("tiers.peer.bytes"),
        # every byte tiers 1 and 2 delivered is a byte the cloud did not bill for
        cloud_egress_saved=c("tiers.local.bytes") + c("tiers.peer.bytes"),
        evictions=c("evictions"),
        evicted_bytes=c("evicted_bytes"),
        corrupt_chunks=c("corrupt_chunks"),
        prefetched_chunks=c("prefetched_chunks"),
        prefetch_hits=c("prefetch_hits"),
        files=files,
        locations=locations,
    )


def cluster_stats(conn: sqlite3.Connection, epoch: int) -> ClusterStats:
    """Totals over the database (call after membership.expire, so statuses are current)."""
    counters = _loads(get_meta(conn, "departed", "{}"))
    status_count = {"active": 0, "draining": 0, "dead": 0}
    cap = {"local": 0, "peer": 0}
    use = {"local": 0, "peer": 0}
    rows = conn.execute(
        "SELECT status, capacity_local, capacity_peer, usage_local, usage_peer, stats, "
        "stats_base FROM peers"
    )
    for status, cap_local, cap_peer, use_local, use_peer, last, base in rows:
        status_count[status] = status_count.get(status, 0) + 1
        add(counters, _loads(last))
        add(counters, _loads(base))
        if status != "dead":
            cap["local"] += cap_local
            cap["peer"] += cap_peer
            use["local"] += use_local
            use["peer"] += use_peer
    files, locations = conn.execute(
        "SELECT COUNT(DISTINCT path), COUNT(*) FROM locations"
    ).fetchone()
    return summarize(
        counters,
        PeerCounts(total=sum(status_count.values()), **status_count),
        ClusterBytes(**cap),
        ClusterBytes(**use),
        epoch=epoch,
        files=files,
        locations=locations,
    )

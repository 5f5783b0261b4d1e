"""The coordinator's Prometheus metrics, all defined here.

Each app has its own registry (two apps in one process never collide). Request counts
and latencies are recorded as requests pass; the cluster figures are read from the
database at scrape time and handed to `render`, which exposes them with the rest.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tierfs.coordinator.models import TIER_NAMES, ClusterStats

# 1 ms to 2.5 s: the target is a p99 under 50 ms
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _ClusterCollector(Collector):
    """Exposes the last `ClusterStats` handed to it."""

    def __init__(self) -> None:
        self.snapshot: ClusterStats | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        peers = GaugeMetricFamily("tierfs_peers", "peers by status", labels=["status"])
        for status in ("active", "draining", "dead"):
            peers.add_metric([status], getattr(s.peers, status))
        yield peers
        yield GaugeMetricFamily("tierfs_membership_epoch", "membership epoch", value=s.epoch)
        capacity = GaugeMetricFamily(
            "tierfs_cluster_capacity_bytes", "tier-1 capacity of live peers", labels=["tier"]
        )
        usage = GaugeMetricFamily(
            "tierfs_cluster_usage_bytes", "tier-1 bytes used on live peers", labels=["tier"]
        )
        for tier in ("local", "peer"):
            capacity.add_metric([tier], getattr(s.capacity, tier))
            usage.add_metric([tier], getattr(s.usage, tier))
        yield capacity
        yield usage
        per_tier = {
            "hits": "chunks served by the tier, cluster-wide",
            "misses": "chunks the tier did not have, cluster-wide",
            "bytes": "bytes the tier delivered, cluster-wide",
            "errors": "failures of the tier that fell through, cluster-wide",
        }
        for name, text in per_tier.items():
            family = CounterMetricFamily(f"tierfs_cluster_{name}", text, labels=["tier"])
            for tier in TIER_NAMES:
                family.add_metric([tier], getattr(s.tiers[tier], name))
            yield family
        yield CounterMetricFamily(
            "tierfs_cluster_cloud_egress_saved_bytes",
            "bytes served by tiers 1 and 2 instead of the cloud",
            value=s.cloud_egress_saved,
        )
        yield CounterMetricFamily(
            "tierfs_cluster_evictions", "chunks evicted from tier 1", value=s.evictions
        )
        yield GaugeMetricFamily("tierfs_location_files", "paths in the index", value=s.files)
        yield GaugeMetricFamily(
            "tierfs_location_entries", "(path, peer) entries in the index", value=s.locations
        )


class CoordinatorMetrics:
    """Request metrics plus the cluster figures, in one registry per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "tierfs_coordinator_requests",
            "requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "tierfs_coordinator_request_seconds",
            "time to answer a request, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._cluster = _ClusterCollector()
        self.registry.register(self._cluster)
        ProcessCollector(registry=self.registry)  # RSS, CPU, open fds

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def render(self, snapshot: ClusterStats) -> bytes:
        """The Prometheus text of everything, with `snapshot` as the cluster figures."""
        self._cluster.snapshot = snapshot
        return generate_latest(self.registry)

"""A node's Prometheus metrics (`GET /metrics` of the peer API), all defined here.

Each app has its own registry (two nodes in one process never collide). Request counts
and latencies are recorded as requests pass; the node's counters (`NodeStats`) and the
tier-1 budgets are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tierfs.cache.base import Origin
from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.coordinator.metrics import LATENCY_BUCKETS
from tierfs.stats import NodeStats, Tier

# NodeStats fields exposed as plain counters: (field, help)
_COUNTERS = (
    ("evictions", "chunks evicted from tier 1"),
    ("evicted_bytes", "bytes evicted from tier 1"),
    ("corrupt_chunks", "tier-1 chunk files missing, short or failing their checksum"),
    ("not_cached", "chunks served without being kept in tier 1"),
    ("cancelled_fetches", "cloud GETs of chunks cancelled under way (their bytes unused)"),
    ("cloud_retries", "cloud requests tried again after a transient failure"),
    ("prefetched_chunks", "chunks fetched ahead of the reader"),
    ("prefetch_hits", "reads served by a prefetched chunk"),
    ("singleflight_joins", "reads that waited on a fetch already under way"),
    ("peer_bad_chunks", "chunks from peers that failed their checksum"),
    ("served_to_peers", "chunks sent to other nodes"),
    ("served_to_peers_bytes", "bytes of chunks sent to other nodes"),
    ("pushed_to_peers", "written chunks handed to their owner"),
    ("page_cache_stores", "fetched chunks put into the mount's page cache"),
    ("page_cache_bytes", "bytes put into the mount's page cache"),
)
_PER_TIER = (
    ("hits", "chunks served by the tier"),
    ("misses", "chunks the tier did not have"),
    ("bytes", "bytes the tier delivered"),
    ("errors", "failures of the tier that fell through to the next"),
)
_BUDGETS = (
    ("used_bytes", "bytes of tier 1 used, by budget", DiskChunkCache.used),
    ("limit_bytes", "bytes tier 1 may use, by budget", DiskChunkCache.limit),
    ("chunks", "chunks held in tier 1, by budget", DiskChunkCache.count),
)


class _NodeCollector(Collector):
    """Exposes the node's counters and tier-1 budgets as they are at scrape time."""

    def __init__(self, stats: NodeStats, cache: DiskChunkCache) -> None:
        self._stats = stats
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        for name, text in _PER_TIER:
            family = CounterMetricFamily(f"tierfs_node_tier_{name}", text, labels=["tier"])
            for tier in Tier:
                family.add_metric([str(tier)], getattr(self._stats.tier(tier), name))
            yield family
        for name, text in _COUNTERS:
            yield CounterMetricFamily(f"tierfs_node_{name}", text, value=getattr(self._stats, name))
        for name, text, read in _BUDGETS:
            gauge = GaugeMetricFamily(f"tierfs_node_cache_{name}", text, labels=["origin"])
            for origin in Origin:
                gauge.add_metric([str(origin)], read(self._cache, origin))
            yield gauge


class PeerMetrics:
    """Request metrics of the peer API plus the node's counters, in one registry per app."""

    def __init__(self, stats: NodeStats, cache: DiskChunkCache) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "tierfs_node_requests",
            "peer API requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "tierfs_node_request_seconds",
            "time to answer a peer API request, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._served = Counter(
            "tierfs_node_served_chunks",
            "chunks answered to peers: 'sendfile' from the chunk file, 'buffer' from memory",
            ["via"],
            registry=self.registry,
        )
        self.registry.register(_NodeCollector(stats, cache))
        ProcessCollector(registry=self.registry)  # RSS, CPU, open fds

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def served(self, via: str) -> None:
        self._served.labels(via).inc()

    def render(self) -> bytes:
        """The Prometheus text of everything."""
        return generate_latest(self.registry)

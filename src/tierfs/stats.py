"""One stats object per node: every cache counts (hits, misses, bytes per tier, ...).

The HTTP API and `/metrics` export this object; tests assert on its numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum


class Tier(StrEnum):
    LOCAL = "local"  # tier 1: this node's NVMe
    PEER = "peer"  # tier 2: another node
    CLOUD = "cloud"  # tier 3


@dataclass
class TierCounters:
    hits: int = 0  # tier 1: reads it served; tiers 2 and 3: whole chunks fetched from them
    misses: int = 0  # lookups this tier could not serve (compare tiers by `bytes`)
    bytes: int = 0  # bytes this tier delivered
    errors: int = 0  # failures that fell through to the next tier


@dataclass
class NodeStats:
    """Counters of one node; plain ints, updated on the event loop only."""

    tiers: dict[Tier, TierCounters] = field(
        default_factory=lambda: {tier: TierCounters() for tier in Tier}
    )
    evictions: int = 0  # chunks evicted from tier 1
    evicted_bytes: int = 0
    corrupt_chunks: int = 0  # chunk files that failed their checksum (deleted, refetched)
    not_cached: int = 0  # chunks served without caching (disk full, not admitted)
    # cloud GETs of chunks cancelled under way (their reader sought away or closed): the
    # bytes the cloud had sent of them are paid for and unused
    cancelled_fetches: int = 0
    # cloud requests tried again after a transient failure (a broken connection, a 503):
    # each is paid for twice, and a retried GET's bytes may have been sent twice
    cloud_retries: int = 0
    prefetched_chunks: int = 0  # chunks fetched ahead of the reader
    prefetch_hits: int = 0  # reads served by a chunk the prefetcher brought
    singleflight_joins: int = 0  # reads that waited on a fetch already under way
    peer_bad_chunks: int = 0  # chunks from peers that failed their checksum (not used)
    served_to_peers: int = 0  # chunks this node sent to other nodes (peer API)
    served_to_peers_bytes: int = 0
    pushed_to_peers: int = 0  # written chunks handed to their owner (tier 1 was full)
    page_cache_stores: int = 0  # fetched chunks put into the mount's page cache
    page_cache_bytes: int = 0

    def tier(self, tier: Tier) -> TierCounters:
        return self.tiers[tier]

    def count_cloud_retry(self) -> None:
        """A cloud request failed and is tried again (`CloudStore.on_retry`)."""
        self.cloud_retries += 1

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        snapshot = dataclasses.asdict(self)
        snapshot["tiers"] = {str(t): dataclasses.asdict(c) for t, c in self.tiers.items()}
        return snapshot

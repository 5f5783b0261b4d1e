"""A node whose tier-1 budget for its own reads is small (`-nvme-size`): the cluster still
reads each chunk from the cloud once. Egress is counted by the S3 server itself."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import servers
from clusters import Cluster, running_cluster, sha256_of
from mounts import cloud_put

MiB = 2**20
SIZE = 128 * MiB  # 32 chunks: node-c owns about 10, four times its budget


@pytest.fixture
def small_c(seaweedfs: servers.S3Server, tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes; node-c keeps 16 MiB (4 chunks) of its own reads."""
    with running_cluster(seaweedfs, tmp_path, node_flags={"node-c": {"nvme_size": "16MiB"}}) as c:
        yield c


def test_a_small_node_keeps_the_chunks_it_owns_for_the_cluster(small_c: Cluster) -> None:
    """C reads a file first, then A and B: the chunks C owns it read from the cloud, and
    kept for the others. They went into the budget of its own reads, which evicted them
    as C read on, and A's read had C read them from the cloud again (1.2x the file)."""
    data = os.urandom(SIZE)
    cloud_put(small_c.nodes[0].mount, "first-by-c.bin", data)
    expected = hashlib.sha256(data).hexdigest()
    before = small_c.settled_egress()
    for peer_id in ("node-c", "node-a", "node-b"):
        assert sha256_of(small_c.node(peer_id).path / "first-by-c.bin") == expected
    egress = small_c.settled_egress() - before
    assert egress == SIZE, (
        f"the cloud sent {egress / SIZE:.2f}x the file\n" + small_c.reads_from_the_cloud()
    )
    budgets = small_c.node("node-c").stats()["budgets"]
    assert budgets["local"]["used"] <= 16 * MiB, budgets  # its own reads' budget holds


def test_a_node_holding_no_chunk_for_peers_keeps_its_own_reads(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """With a `-peer-size` below a chunk the chunks a node owns and reads for itself stay in its own
    reads' budget: the peers' has no room for them."""
    flags = {"node-c": {"peer_size": "1MiB"}}
    with running_cluster(seaweedfs, tmp_path, node_flags=flags) as cluster:
        data = os.urandom(64 * MiB)
        cloud_put(cluster.nodes[0].mount, "own.bin", data)
        c = cluster.node("node-c")
        assert sha256_of(c.path / "own.bin") == hashlib.sha256(data).hexdigest()
        budgets = c.stats()["budgets"]
        assert budgets["local"]["chunks"] == 16, budgets  # every chunk of it
        assert budgets["peer"]["chunks"] == 0, budgets

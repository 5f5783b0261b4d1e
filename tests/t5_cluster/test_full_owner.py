"""An owner whose tier 1 is full (its -nvme disk full of other files): the cluster still
reads each chunk from the cloud about once. Egress is counted by the S3 server itself."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import servers
from clusters import Cluster, running_cluster, sha256_of
from mounts import TmpfsMount, cloud_put

MiB = 2**20
SIZE = 256 * MiB
# Three nodes reading at once: 1.00-1.02x with the fix (each chunk once in 4 of 5 runs),
# 1.28-1.36x before (1.48x the session before). What is left: a chunk another node asks
# the owner for past the half second it keeps it in memory (LINGER), before the node it
# went to has its copy; or one read from the cloud by a node other than its owner.
AT_ONCE_EGRESS = 1.1


@pytest.fixture
def full_b(seaweedfs: servers.S3Server, tmp_path: Path, tmpfs: TmpfsMount) -> Iterator[Cluster]:
    """Three nodes; node-b's -nvme disk is full of other files (it keeps no chunk)."""
    disk = tmpfs(tmp_path / "node-b" / "nvme", "32m")
    with running_cluster(seaweedfs, tmp_path) as cluster:
        other_files = (disk / "other-files").open("wb", buffering=0)
        with other_files, contextlib.suppress(OSError):
            while True:
                other_files.write(b"\0" * MiB)
        yield cluster


def put_file(cluster: Cluster, key: str) -> str:
    """Random bytes put straight into the bucket: their sha256."""
    data = os.urandom(SIZE)
    cloud_put(cluster.nodes[0].mount, key, data)
    return hashlib.sha256(data).hexdigest()


@pytest.mark.warnings_expected  # node-b's disk full
def test_nodes_reading_at_once_past_a_full_owner_read_each_chunk_about_once(
    full_b: Cluster,
) -> None:
    """The full owner used to read its chunks through again for each node that asked after
    its last read-through had ended (1.28-1.36x the file): now it keeps such a chunk in
    memory for half a second, then asks the nodes it sent it to, and hands those it read
    for itself on to the next node."""
    expected = put_file(full_b, "at-once.bin")
    before = full_b.settled_egress()
    with ThreadPoolExecutor(len(full_b.nodes)) as pool:
        sums = list(pool.map(lambda node: sha256_of(node.path / "at-once.bin"), full_b.nodes))
    assert sums == [expected] * len(full_b.nodes)
    egress = full_b.settled_egress() - before
    assert egress <= AT_ONCE_EGRESS * SIZE, (
        f"the cloud sent {egress / SIZE:.2f}x the file\n" + full_b.reads_from_the_cloud()
    )
    assert full_b.node("node-b").stats()["budgets"]["local"]["chunks"] == 0  # kept none


@pytest.mark.warnings_expected  # node-b's disk full
def test_nodes_reading_one_after_another_past_a_full_owner_read_each_chunk_once(
    full_b: Cluster,
) -> None:
    """A reads the file, then B (the full one), then C: each chunk from the cloud about
    once, within the cluster's egress target (1.05x). 1.00x in every run here but one
    CI run of a loaded machine (1.03x: 2 of the 64 chunks read twice, cause not found)."""
    expected = put_file(full_b, "one-by-one.bin")
    before = full_b.settled_egress()
    for node in full_b.nodes:
        assert sha256_of(node.path / "one-by-one.bin") == expected
    egress = full_b.settled_egress() - before
    assert egress <= 1.05 * SIZE, (
        f"the cloud sent {egress / SIZE:.2f}x the file\n" + full_b.reads_from_the_cloud()
    )

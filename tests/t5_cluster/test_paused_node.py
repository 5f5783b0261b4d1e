"""A node paused mid-read (SIGSTOP, a VM frozen, swapped out): its requests to its peers
were answered meanwhile, and are no failure of theirs. Egress is counted by the S3 server."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest

from clusters import Cluster, sha256_of
from mounts import cloud_put

MiB = 2**20
SIZE = 128 * MiB


@pytest.mark.warnings_expected  # A and C may find the paused B silent
def test_a_node_paused_mid_read_does_not_blame_its_peers(cluster: Cluster) -> None:
    """B paused for longer than the peer timeout while its requests to A and C were under
    way: as it woke, those timed out, and it logged A and C as failed (a WARNING each),
    skipped them for 10 s and read their chunks from the cloud again (1.05x the file)."""
    data = os.urandom(SIZE)
    cloud_put(cluster.nodes[0].mount, "paused.bin", data)
    before = cluster.settled_egress()
    b = cluster.node("node-b")
    assert b.mount.proc is not None
    sums: list[str] = []
    reader = threading.Thread(target=lambda: sums.append(sha256_of(b.path / "paused.bin")))
    reader.start()
    time.sleep(0.5)  # B's read-ahead has requests out to A and C
    os.killpg(b.mount.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(6)  # past the peer timeout (5 s)
    finally:
        os.killpg(b.mount.proc.pid, signal.SIGCONT)
    reader.join(60)
    assert sums == [hashlib.sha256(data).hexdigest()]
    blamed = [line for line in b.mount.log.read_text().splitlines() if " failed: " in line]
    assert blamed == []
    egress = cluster.settled_egress() - before
    assert egress == SIZE, (
        f"the cloud sent {egress / SIZE:.2f}x the file\n" + cluster.reads_from_the_cloud()
    )

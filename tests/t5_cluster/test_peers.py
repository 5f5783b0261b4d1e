"""Tier 2 across real processes: three mounted nodes and a coordinator on loopback, over
one bucket on the real S3 server. Cloud egress is counted by the S3 server itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import servers
from clusters import Cluster, Node, running_cluster, sha256_of, until
from mounts import Mount, TmpfsMount, cloud_of, cloud_put, on_cloud, status
from relay import Relay
from tierfs.chunks import ObjectRef, chunk_ref
from tierfs.cloud.base import CloudStore
from tierfs.peer.fetcher import RETRY_DOWN_AFTER
from tierfs.peer.ring import owner

MiB = 2**20
CHUNK = 4 * MiB  # the clients' default -chunk-size


def put_dataset(cluster: Cluster, key: str, size: int) -> tuple[bytes, str]:
    """Random bytes put straight into the bucket (no node has them): (data, sha256)."""
    data = os.urandom(size)
    cloud_put(cluster.nodes[0].mount, key, data)
    return data, hashlib.sha256(data).hexdigest()


def put_owned(
    cluster: Cluster, peer_id: str, size: int, from_chunk: int = 0, prefix: str = "owned"
) -> tuple[str, bytes]:
    """Put random bytes under a key of which `peer_id` owns a chunk at `from_chunk` or
    later (trying a few names: ownership follows from the key and version): (key, data)."""
    for attempt in range(20):
        key = f"{prefix}-{attempt}.bin"
        data, _ = put_dataset(cluster, key, size)
        if any(i >= from_chunk for i in owners(cluster, key)[peer_id]):
            return key, data
    raise AssertionError(f"{peer_id} owns no chunk of 20 files")


def owners(cluster: Cluster, key: str) -> dict[str, list[int]]:
    """The chunks of `key` each node owns (rendezvous over the three node ids)."""

    async def head() -> ObjectRef:
        cloud = cloud_of(cluster.nodes[0].mount)
        try:
            meta = await cloud.head(key)
        finally:
            await cloud.close()
        return ObjectRef(key, meta.version, meta.size)

    ref = asyncio.run(head())
    ids = [n.peer_id for n in cluster.nodes]
    owned: dict[str, list[int]] = {peer_id: [] for peer_id in ids}
    for index in range((ref.size + CHUNK - 1) // CHUNK):
        found = owner(chunk_ref(ref, index, CHUNK).id, ids)
        assert found is not None
        owned[found].append(index)
    return owned


def test_the_cluster_reads_a_file_from_the_cloud_once(cluster: Cluster) -> None:
    size = 128 * MiB
    _, expected = put_dataset(cluster, "data/train.bin", size)
    before = cluster.settled_egress()
    a, b, c = cluster.nodes
    for node in (a, b, c):
        assert sha256_of(node.path / "data/train.bin") == expected
    egress = cluster.settled_egress() - before
    assert egress == size, (
        f"the cloud sent {egress / CHUNK:.2f} chunks for {size // CHUNK}\n"
        + cluster.reads_from_the_cloud()
    )
    owned = owners(cluster, "data/train.bin")
    for node in (b, c):  # each read what it does not own from the other two
        peer = node.tier("peer")
        others = sum(len(v) for k, v in owned.items() if k != node.peer_id)
        assert peer["hits"] >= others, (node.peer_id, peer, owned)
        assert peer["bytes"] >= others * CHUNK * 0.9
        # its own chunks, read through from the cloud once, when A asked for them
        assert node.tier("cloud")["hits"] == len(owned[node.peer_id]), node.stats()
    served = sum(n.stats()["served_to_peers"] for n in cluster.nodes)
    assert served >= b.tier("peer")["hits"] + c.tier("peer")["hits"]
    peer_bytes = sum(n.tier("peer")["bytes"] for n in cluster.nodes)

    def cluster_stats() -> Any:
        return cluster.coordinator.get("/api/stats").json

    # the coordinator's totals, from the nodes' heartbeats
    until(lambda: cluster_stats()["peer_bytes_served"] == peer_bytes, what="cluster stats")
    assert cluster_stats()["cloud_bytes_fetched"] == size


def test_nodes_reading_a_file_at_once_fetch_each_chunk_from_the_cloud_once(
    cluster: Cluster,
) -> None:
    """Three nodes read one file at the same time: the cloud sends each chunk once, to its
    owner. An owner asking the location index about its own chunk while another node asked
    it for that chunk used to read it from the cloud twice (1.00-1.05x the file)."""
    size = 256 * MiB
    _, expected = put_dataset(cluster, "at-once.bin", size)
    before = cluster.settled_egress()
    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        sums = list(pool.map(lambda node: sha256_of(node.path / "at-once.bin"), cluster.nodes))
    assert sums == [expected] * len(cluster.nodes)
    egress = cluster.settled_egress() - before
    assert egress == size, (
        f"the cloud sent {egress / CHUNK:.2f} chunks for {size // CHUNK}\n"
        + cluster.reads_from_the_cloud()
    )
    owned = owners(cluster, "at-once.bin")  # each chunk from the cloud by its owner, once
    fetched = {node.peer_id: node.tier("cloud")["hits"] for node in cluster.nodes}
    assert fetched == {peer_id: len(chunks) for peer_id, chunks in owned.items()}


def location_asks(cluster: Cluster) -> int:
    """The location index's answers so far (GET /api/files/location), by the coordinator's
    own /metrics."""
    text = cluster.coordinator.get("/metrics").body.decode()
    found = re.findall(r"^tierfs_coordinator_requests_total\{([^}]*)\} (\S+)$", text, re.M)
    return sum(
        int(float(value))
        for labels, value in found
        if 'route="/api/files/location"' in labels and 'method="GET"' in labels
    )


def test_a_cold_read_asks_the_location_index_once_a_second_per_file(cluster: Cluster) -> None:
    """An owner that misses a chunk asks the location index before the cloud; it used to
    ask once for each chunk of a cold read, one more coordinator round trip per chunk."""
    size = 128 * MiB
    _, expected = put_dataset(cluster, "cold.bin", size)
    before = location_asks(cluster)
    started = time.monotonic()
    assert sha256_of(cluster.nodes[0].path / "cold.bin") == expected
    seconds = time.monotonic() - started
    asks = location_asks(cluster) - before
    # at most once a second per node (one answer lists every chunk of the file)
    bound = len(cluster.nodes) * (int(seconds) + 1)
    assert asks <= bound, f"{asks} asks for {size // CHUNK} chunks in {seconds:.1f} s"


@pytest.mark.warnings_expected
def test_a_read_completes_when_the_owner_is_killed_during_it(cluster: Cluster) -> None:
    key, data = put_owned(cluster, "node-b", 64 * MiB, from_chunk=8)  # past C's read-ahead
    a, b, c = cluster.nodes
    assert sha256_of(a.path / key) == hashlib.sha256(data).hexdigest()
    got = bytearray()
    with (c.path / key).open("rb", buffering=0) as f:
        got += f.read(4 * MiB)  # C is reading ...
        b.mount.kill()  # ... when the owner of some of its chunks dies
        while block := f.read(MiB):
            got += block
    assert bytes(got) == data
    assert c.tier("peer")["errors"] >= 1  # it did try the dead owner


def read_chunk(node: Node, key: str, index: int) -> bytes:
    """4 KiB at the start of chunk `index` of `key`, read through `node`'s mount."""
    with (node.path / key).open("rb", buffering=0) as f:
        f.seek(index * CHUNK)
        return f.read(4096)


def said_of(node: Node, peer_id: str) -> list[str]:
    """The WARNING lines of `node`'s log that name `peer_id`."""
    log = node.mount.log.read_text(errors="replace")
    return [line for line in log.splitlines() if " WARNING " in line and peer_id in line]


@pytest.mark.warnings_expected
def test_a_killed_peer_is_logged_once_not_at_each_membership_change(cluster: Cluster) -> None:
    """A node killed while another reads the chunks it owns is one WARNING in the reader's
    log: a membership change while it was still listed (another node joined and left)
    let the reader's next read try it again, and log it again. Killed again once it came
    back, it is logged again."""
    a, b, c = cluster.nodes
    for attempt in range(10):  # a file of which B owns two chunks
        key = f"owned-{attempt}.bin"
        data, _ = put_dataset(cluster, key, 64 * MiB)
        chunks = owners(cluster, key)["node-b"]
        if len(chunks) >= 2:
            break
    assert len(chunks) >= 2, "node-b owns fewer than two chunks of 10 files"
    assert sha256_of(a.path / key) == hashlib.sha256(data).hexdigest()  # A holds them all
    epoch = c.api("/api/peers")["epoch"]
    b.mount.kill()
    # the last first: the read of one chunk may fetch those after it ahead
    assert read_chunk(c, key, chunks[-1]) == data[chunks[-1] * CHUNK :][:4096]
    assert len(said_of(c, "node-b")) == 1
    errors = c.tier("peer")["errors"]
    cluster.coordinator.register("node-x", f"127.0.0.1:{servers.free_ports(1)[0]}")
    assert cluster.coordinator.request("DELETE", "/api/peers/node-x").status == 200

    def moved_on() -> bool:
        members = c.api("/api/peers")
        return members["epoch"] != epoch and all(p["peer_id"] != "node-x" for p in members["peers"])

    until(moved_on, what="node-c to see node-x come and go")
    assert c.sees_members(3), "node-b was declared dead before the test could read"
    assert read_chunk(c, key, chunks[0]) == data[chunks[0] * CHUNK :][:4096]
    assert c.tier("peer")["errors"] > errors  # it did ask the dead node again
    assert len(said_of(c, "node-b")) == 1, "\n".join(said_of(c, "node-b"))

    until(lambda: "node-b" not in cluster.coordinator.live_ids(), what="node-b dead")
    b.mount.start()  # back: once it has served again, a new death is a new line
    until(lambda: all(n.sees_members(3) for n in cluster.nodes), what="node-b back")
    key, data = put_owned(cluster, "node-b", 16 * MiB, prefix="back")
    assert sha256_of(c.path / key) == hashlib.sha256(data).hexdigest()
    assert b.stats()["served_to_peers"] > 0
    key, data = put_owned(cluster, "node-b", 16 * MiB, prefix="again")
    b.mount.kill()
    assert sha256_of(c.path / key) == hashlib.sha256(data).hexdigest()
    assert len(said_of(c, "node-b")) == 2, "\n".join(said_of(c, "node-b"))


@pytest.mark.warnings_expected
def test_reads_go_on_while_the_coordinator_is_down(cluster: Cluster) -> None:
    _, expected = put_dataset(cluster, "calm.bin", 32 * MiB)
    a, b, _ = cluster.nodes
    assert sha256_of(a.path / "calm.bin") == expected
    cluster.coordinator.stop()
    hits_before = b.tier("peer")["hits"]
    assert sha256_of(b.path / "calm.bin") == expected
    assert b.tier("peer")["hits"] > hits_before  # B still knows its peers


def test_a_write_on_one_node_is_read_on_another_after_the_ttl(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    (a.path / "notes").mkdir()
    (a.path / "notes/today.txt").write_bytes(b"first version\n" * 1000)
    assert (b.path / "notes/today.txt").read_bytes() == b"first version\n" * 1000
    (a.path / "notes/today.txt").write_bytes(b"second version, longer\n" * 2000)
    expected = b"second version, longer\n" * 2000
    until(lambda: (b.path / "notes/today.txt").read_bytes() == expected, timeout=10, what="v2")


@pytest.mark.warnings_expected
def test_a_peer_that_sends_corrupted_bytes_is_caught(cluster: Cluster) -> None:
    key, data = put_owned(cluster, "node-b", 32 * MiB)
    expected = hashlib.sha256(data).hexdigest()
    a, b, c = cluster.nodes
    assert sha256_of(a.path / key) == expected  # B reads its chunks through for A
    assert sha256_of(b.path / key) == expected  # B has read (and checked) them
    assert corrupt_chunk_files(b) >= 1
    assert sha256_of(c.path / key) == expected  # C gets them elsewhere
    assert c.stats()["peer_bad_chunks"] >= 1


def corrupt_chunk_files(node: Node) -> int:
    """Flip bytes in the middle of every chunk file of `node`, keeping sizes; how many."""
    count = 0
    for path in (node.mount.nvme / "chunks").rglob("*"):
        if path.is_file() and path.stat().st_size > 1024:
            with path.open("r+b") as f:
                f.seek(path.stat().st_size // 2)
                f.write(b"\xde\xad\xbe\xef" * 64)
            count += 1
    return count


def test_written_chunks_go_to_their_owners_when_tier_1_has_no_room(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    no_room = {"node-a": {"nvme_size": "1KiB"}}  # less than a chunk: A keeps none of its own
    with running_cluster(seaweedfs, tmp_path, node_flags=no_room) as cluster:
        a, b, c = cluster.nodes
        data = os.urandom(32 * MiB)
        (a.path / "out.bin").write_bytes(data)  # durable in the cloud at close
        owned = owners(cluster, "out.bin")
        pushed = len(owned["node-b"]) + len(owned["node-c"])
        until(lambda: a.stats()["pushed_to_peers"] == pushed, what="the pushes")
        for node in (b, c):
            held = [
                (chunk["index"], chunk["origin"])
                for chunk in node.api("/api/cache?limit=1000")["chunks"]
                if chunk["key"] == "out.bin"
            ]
            assert sorted(held) == [(i, "peer") for i in owned[node.peer_id]]
        assert sha256_of(b.path / "out.bin") == hashlib.sha256(data).hexdigest()
        assert b.tier("cloud")["hits"] == 0  # its own chunks it holds, C's come from C


@pytest.mark.warnings_expected
def test_an_owner_whose_disk_is_full_serves_its_chunks_and_says_so_once(
    seaweedfs: servers.S3Server, tmp_path: Path, tmpfs: TmpfsMount
) -> None:
    """node-b's -nvme disk is full of other files: it keeps none of the chunks it reads
    through for its peers, serves them all the same, and says so once, not once a chunk
    (an INFO line for every chunk read: 16 for this file, 256 a GiB)."""
    disk = tmpfs(tmp_path / "node-b" / "nvme", "32m")
    with running_cluster(seaweedfs, tmp_path) as cluster:
        a, b, c = cluster.nodes
        other_files = (disk / "other-files").open("wb", buffering=0)  # what fills the disk
        with other_files, contextlib.suppress(OSError):
            while True:
                other_files.write(b"\0" * MiB)
        key, data = put_owned(cluster, "node-b", 64 * MiB)
        for node in (a, c, b):
            assert sha256_of(node.path / key) == hashlib.sha256(data).hexdigest()
        assert b.stats()["served_to_peers"] > 0
        assert b.mount.log.read_text().count("no room for chunk") == 1


def test_a_cluster_with_a_token_serves_its_members_and_refuses_others(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    with running_cluster(seaweedfs, tmp_path, token="cluster-s3cret") as cluster:
        # A owns a chunk, so B reads at least one from A (with any key, B would own all
        # four chunks one time in 81, and then read none over tier 2)
        key, data = put_owned(cluster, "node-a", 16 * MiB, prefix="private")
        expected = hashlib.sha256(data).hexdigest()
        a, b, _ = cluster.nodes
        assert sha256_of(a.path / key) == expected
        assert sha256_of(b.path / key) == expected
        assert b.tier("peer")["hits"] >= 1
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            request = urllib.request.Request(f"{a.url}/api/files/{key}", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
        with urllib.request.urlopen(f"{a.url}/api/health", timeout=10) as health:
            assert health.status == 200


@pytest.mark.warnings_expected
def test_a_frozen_owner_costs_one_peer_timeout_and_a_returning_one_is_used_again(
    cluster: Cluster,
) -> None:
    key, data = put_owned(cluster, "node-b", 32 * MiB)
    a, b, c = cluster.nodes
    assert sha256_of(a.path / key) == hashlib.sha256(data).hexdigest()
    assert b.mount.proc is not None
    os.killpg(b.mount.proc.pid, signal.SIGSTOP)  # alive to the kernel, silent to its peers
    try:
        started = time.monotonic()
        assert sha256_of(c.path / key) == hashlib.sha256(data).hexdigest()
        assert time.monotonic() - started < 20  # one 5 s peer timeout, not one per chunk
    finally:
        os.killpg(b.mount.proc.pid, signal.SIGCONT)
    until(lambda: all(n.sees_members(3) for n in cluster.nodes), what="B to be back")
    served = b.stats()["served_to_peers"]
    key, data = put_owned(cluster, "node-b", 16 * MiB, prefix="back")
    assert sha256_of(c.path / key) == hashlib.sha256(data).hexdigest()
    assert b.stats()["served_to_peers"] > served  # the owner that came back serves again


@pytest.mark.warnings_expected
def test_tierfs_status_names_a_dead_node(cluster: Cluster) -> None:
    """It counted it ("2 peers active, 0 draining, 1 dead") and listed only the live
    ones: which node had died, the user could not tell."""
    a, b, c = cluster.nodes
    assert b.mount.proc is not None
    os.killpg(b.mount.proc.pid, signal.SIGSTOP)  # silent past the coordinator's -peer-expiry
    try:
        until(lambda: "node-b" not in cluster.coordinator.live_ids(), what="node-b dead")
        shown = status("-coordinator", f"127.0.0.1:{cluster.coordinator.port}")
    finally:
        os.killpg(b.mount.proc.pid, signal.SIGCONT)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].endswith(": 2 peers active, 0 draining, 1 dead")
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert sorted(rows) == ["node-a", "node-b", "node-c"]
    assert rows["node-b"][1:3] == [b.mount.flags["listen"] + f":{b.port}", "dead"]
    assert rows["node-a"][2] == rows["node-c"][2] == "active"


def test_nodes_mounting_folders_of_the_bucket_share_its_chunks(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    folders = {"node-b": {"prefix": "data"}, "node-c": {"prefix": "data/sub"}}
    with running_cluster(seaweedfs, tmp_path, node_flags=folders) as cluster:
        size = 64 * MiB
        _, expected = put_dataset(cluster, "data/sub/train.bin", size)
        before = cluster.settled_egress()
        a, b, c = cluster.nodes
        for node, name in ((a, "data/sub/train.bin"), (b, "sub/train.bin"), (c, "train.bin")):
            assert sha256_of(node.path / name) == expected
        egress = cluster.settled_egress() - before
        assert egress <= 1.1 * size, f"the cloud sent {egress / size:.2f}x the file"
        assert b.tier("peer")["hits"] + c.tier("peer")["hits"] > 0
        # the location index knows every node's chunks by the bucket's key
        until(
            lambda: (
                {e["peer_id"] for e in cluster.coordinator.locations("data/sub/train.bin")}
                == {"node-a", "node-b", "node-c"}
            ),
            what="three holders of data/sub/train.bin",
        )
        assert cluster.coordinator.locations("train.bin") == []
        # and so does each node's peer API, whatever folder it mounts
        assert {chunk["key"] for chunk in c.api("/api/cache")["chunks"]} == {"data/sub/train.bin"}
        assert c.api("/api/files/data/sub/train.bin/size")["cached_bytes"] > 0


def test_a_node_of_another_chunk_size_is_skipped_not_paid_for_twice(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """node-b cuts files into 8 MiB chunks: it cannot hold node-a's, and reading them
    through the cloud for node-a would cost the cluster each of them twice."""
    mixed = {"node-b": {"chunk_size": "8MiB"}}
    with running_cluster(seaweedfs, tmp_path, node_flags=mixed) as cluster:
        size = 64 * MiB
        _, expected = put_dataset(cluster, "mixed.bin", size)
        a, b, _ = cluster.nodes
        assert owners(cluster, "mixed.bin")["node-b"], "node-b owns none of node-a's chunks"
        before = cluster.settled_egress()
        assert sha256_of(a.path / "mixed.bin") == expected
        egress = cluster.settled_egress() - before
        assert egress <= 1.1 * size, f"the cloud sent {egress / size:.2f}x the file"
        a.mount.wait_for_log("-chunk-size is not this node's")
        assert b.tier("cloud")["bytes"] == 0


@pytest.mark.warnings_expected
def test_a_node_of_another_chunk_size_is_said_once_not_every_ten_seconds(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """A reader skipped such a node for RETRY_DOWN_AFTER, or until any node came or went,
    then asked it again and logged it again: a WARNING per node every 10 s of reading.
    Until it registers again (a restart, maybe with the cluster's -chunk-size), it is not
    asked again."""
    mixed = {"node-b": {"chunk_size": "8MiB"}}
    with running_cluster(seaweedfs, tmp_path, node_flags=mixed) as cluster:
        a, b, c = cluster.nodes
        said = "-chunk-size is not this node's"
        key, data = put_owned(cluster, "node-b", 16 * MiB, prefix="first")
        assert sha256_of(a.path / key) == hashlib.sha256(data).hexdigest()
        a.mount.wait_for_log(said)
        time.sleep(RETRY_DOWN_AFTER + 0.5)
        key, data = put_owned(cluster, "node-b", 16 * MiB, prefix="later")
        assert sha256_of(a.path / key) == hashlib.sha256(data).hexdigest()
        c.mount.stop()  # a node goes and comes back: the cluster's epoch moves on
        c.mount.start()
        until(lambda: a.sees_members(3), what="node-c back")
        key, data = put_owned(cluster, "node-b", 16 * MiB, prefix="after-c")
        assert sha256_of(a.path / key) == hashlib.sha256(data).hexdigest()
        assert a.mount.log.read_text().count(said) == 1
        b.mount.stop()  # back with the cluster's -chunk-size: asked again
        b.mount.flags.pop("chunk_size")
        b.mount.start()
        until(lambda: a.sees_members(3), what="node-b back")
        served = b.stats()["served_to_peers"]
        key, data = put_owned(cluster, "node-b", 16 * MiB, prefix="b-back")
        assert sha256_of(a.path / key) == hashlib.sha256(data).hexdigest()
        assert b.stats()["served_to_peers"] > served


@pytest.mark.warnings_expected
def test_a_second_node_with_a_taken_peer_id_stays_out_until_the_first_leaves(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """It used to take the id over silently: the first node, still running, vanished from
    the cluster, and the two reported their chunks under one name."""
    with running_cluster(seaweedfs, tmp_path, ("node-a", "node-b")) as cluster:
        a, b = cluster.nodes
        key, data = put_owned(cluster, "node-a", 16 * MiB)
        root = tmp_path / "twin"
        root.mkdir()
        flags = b.mount.flags | {"port": str(servers.free_ports(1)[0])}
        twin = Mount(root / "mnt", root / "nvme", flags, b.mount.env, root / "client.log")
        twin.start()
        try:
            twin.wait_for_log(f"'node-b' is in use by a live peer at 127.0.0.1:{b.port}")
            assert cluster.coordinator.live_ids() == ["node-a", "node-b"]
            assert a.sees_members(2) and b.sees_members(2)
            peers = {p["peer_id"]: p["address"] for p in a.api("/api/peers")["peers"]}
            assert peers["node-b"] == f"127.0.0.1:{b.port}"  # still the first one
            assert sha256_of(twin.path / key) == hashlib.sha256(data).hexdigest()
            b.mount.stop()  # the first one leaves: the id is free
            until(lambda: twin.log.read_text().count("registered node-b") == 1, what="twin in")
        finally:
            twin.stop()


@pytest.mark.warnings_expected
def test_an_owner_back_from_a_crash_takes_what_it_missed_from_the_node_that_read_it(
    cluster: Cluster,
) -> None:
    """Chunks read while their owner was down are held by the node that read them; the
    owner, back, used to read them through from the cloud again when asked for them."""
    a, b, c = cluster.nodes
    key, data = put_owned(cluster, "node-b", 64 * MiB)
    expected = hashlib.sha256(data).hexdigest()
    b.mount.kill()
    until(lambda: a.sees_members(2) and c.sees_members(2), what="B to be gone")
    assert sha256_of(a.path / key) == expected  # B's chunks from the cloud, into A
    chunks = (len(data) + CHUNK - 1) // CHUNK

    def held_by_a() -> bool:
        held = {e["peer_id"]: e["chunks"] for e in cluster.coordinator.locations(key)}
        return len(held.get("node-a", [])) == chunks

    until(held_by_a, what="A's chunks in the location index")
    b.mount.start()
    until(lambda: all(n.sees_members(3) for n in cluster.nodes), what="B to be back")
    before = cluster.settled_egress()
    for node in (c, b):
        assert sha256_of(node.path / key) == expected
    egress = cluster.settled_egress() - before
    assert egress < CHUNK, f"the cloud sent {egress / MiB:.0f} MiB of a file A holds whole"
    assert b.tier("cloud")["hits"] == 0


@pytest.mark.warnings_expected
def test_a_hung_coordinator_does_not_hold_up_cold_reads(cluster: Cluster) -> None:
    """An owner that misses a chunk asks the location index before the cloud: a coordinator
    that takes the connection and never answers must cost that little, not a wait per
    chunk until the heartbeats notice."""
    _, expected = put_dataset(cluster, "cold.bin", 64 * MiB)
    coordinator = cluster.coordinator.proc.pid
    assert coordinator is not None
    os.killpg(coordinator, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert sha256_of(cluster.nodes[0].path / "cold.bin") == expected
        assert time.monotonic() - started < 4  # ~1 s unhindered, 1-2 s more on a busy host
    finally:
        os.killpg(coordinator, signal.SIGCONT)


def test_a_node_restarted_on_a_wiped_tier_1_is_no_longer_listed_with_its_old_chunks(
    cluster: Cluster,
) -> None:
    """The location index used to keep what a node's earlier run held: restarted on an
    empty -nvme, it stayed listed as a holder of chunks it no longer had."""
    a, b, c = cluster.nodes
    _, expected = put_dataset(cluster, "kept.bin", 16 * MiB)
    _, other = put_dataset(cluster, "wiped.bin", 16 * MiB)

    def held_by_b(key: str) -> list[int]:
        held = {e["peer_id"]: e["chunks"] for e in cluster.coordinator.locations(key)}
        return list(held.get("node-b", []))

    assert sha256_of(b.path / "kept.bin") == expected
    until(lambda: held_by_b("kept.bin") == [0, 1, 2, 3], what="B's chunks listed")
    b.mount.kill()
    b.mount.start()  # its tier 1 kept: listed with the chunks again
    until(lambda: b.sees_members(3), what="B back")
    until(lambda: held_by_b("kept.bin") == [0, 1, 2, 3], what="B's chunks listed again")
    assert sha256_of(b.path / "wiped.bin") == other
    until(lambda: held_by_b("wiped.bin") == [0, 1, 2, 3], what="B's chunks listed")
    b.mount.kill()
    shutil.rmtree(b.mount.nvme)
    b.mount.start()
    until(lambda: b.sees_members(3), what="B back")
    until(lambda: held_by_b("wiped.bin") == [], what="B's chunks unlisted")
    assert held_by_b("kept.bin") == []


def test_two_nodes_reading_many_files_at_once_never_wait_on_each_other(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """Each of two nodes reads more files owned by the other than it has fetch slots, then
    as many of its own, over a slow network between them. A node asked for a chunk whose
    own fetch was still queued for its slots joined that fetch: the slots of both nodes
    were all held by fetches asking the other, and they waited on each other until the
    peer timeout (then read the rest from the cloud, some of it twice)."""
    size, each, peer_delay = MiB, 24, 1.0  # more than the 16 fetch slots of a node
    ids = ("node-a", "node-b")
    ports = servers.free_ports(len(ids))
    relays = [Relay(port).start() for port in ports]  # the way to each node's peer API
    node_flags = {
        peer_id: {"port": str(port), "advertise": f"127.0.0.1:{relay.port}"}
        for peer_id, port, relay in zip(ids, ports, relays, strict=True)
    }
    try:
        with running_cluster(
            seaweedfs,
            tmp_path,
            ids,
            node_flags=node_flags,
            chunk_size="1MiB",
            peer_timeout="20s",
        ) as cluster:
            a, b = cluster.nodes
            bodies = {f"many/{i:03}.bin": os.urandom(size) for i in range(4 * each)}

            async def put_all(cloud: CloudStore) -> list[ObjectRef]:
                metas = await asyncio.gather(*(cloud.put(k, body) for k, body in bodies.items()))
                return [ObjectRef(k, m.version, m.size) for k, m in zip(bodies, metas, strict=True)]

            owned: dict[str, list[str]] = {peer_id: [] for peer_id in ids}
            for ref in on_cloud(a.mount, put_all):
                owned[str(owner(chunk_ref(ref, 0, size).id, list(ids)))].append(ref.key)
            assert all(len(keys) >= each for keys in owned.values()), owned
            before = cluster.settled_egress()
            for relay in relays:
                relay.slow(b"GET /api/files/many/", peer_delay)
            # each node: the other's files first (they take all its slots), then its own
            jobs = [
                (node, key, first)
                for node, other in ((a, b), (b, a))
                for first, keys in ((True, owned[other.peer_id]), (False, owned[node.peer_id]))
                for key in keys[:each]
            ]
            opened = threading.Barrier(len(jobs))

            def read(job: tuple[Node, str, bool]) -> bool:
                node, key, first = job
                with (node.path / key).open("rb", buffering=0) as f:
                    opened.wait(30)  # lookups take turns; the reads go at once
                    if not first:
                        time.sleep(peer_delay / 4)  # queued behind the others, in time
                    return f.read(size + 1) == bodies[key]

            started = time.monotonic()
            with ThreadPoolExecutor(len(jobs)) as pool:
                assert all(pool.map(read, jobs))
            seconds = time.monotonic() - started
            assert seconds < 10, f"{seconds:.1f} s to read {2 * each} MiB on each node"
            assert [node.tier("peer")["errors"] for node in (a, b)] == [0, 0]
            egress = cluster.settled_egress() - before
            assert egress == 2 * each * size, f"the cloud sent {egress / size:.2f} MiB"
    finally:
        for relay in relays:
            relay.stop()

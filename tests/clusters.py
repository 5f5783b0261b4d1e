"""A tierfs cluster on loopback for tests and benchmarks: a coordinator and client
processes, each with its own mount, tier 1 and peer API on 127.0.0.1, over one bucket."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import servers
from cloud_targets import target_flags
from coordinators import Coordinator, start_coordinator
from mounts import Mount

NODES = ("node-a", "node-b", "node-c")
MiB = 2**20
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sha256_of(path: Path) -> str:
    """The sha256 of the file as read through the mount, in 1 MiB reads."""
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Node:
    """One client of the cluster: its mount, and its peer API on 127.0.0.1."""

    peer_id: str
    mount: Mount

    @property
    def port(self) -> int:
        return int(self.mount.flags["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def path(self) -> Path:
        return self.mount.path

    def api(self, path: str) -> Any:
        """GET `path` of this node's peer API as JSON (with the cluster token, if any)."""
        request = urllib.request.Request(self.url + path)
        token = self.mount.flags.get("token")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        with _HTTP.open(request, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> Any:
        return self.api("/api/cache/stats")

    def tier(self, name: str) -> Any:
        """The counters of tier `name` (local, peer, cloud) of this node."""
        return self.stats()["tiers"][name]

    def sees_members(self, count: int) -> bool:
        try:
            peers = self.api("/api/peers")["peers"] or []
        except (OSError, urllib.error.URLError):
            return False
        return len([p for p in peers if p["status"] == "active"]) == count


@dataclass
class Cluster:
    coordinator: Coordinator
    server: servers.S3Server
    bucket: str
    nodes: list[Node]

    def node(self, peer_id: str) -> Node:
        return next(n for n in self.nodes if n.peer_id == peer_id)

    def egress(self) -> int:
        """Bytes the S3 server has sent from the bucket, by its own count."""
        return self.server.bytes_sent(self.bucket)

    def reads_from_the_cloud(self) -> str:
        """What each node read from the cloud, the WARNING or worse lines of its log, and the
        peers the coordinator marked dead: why the cloud sent more than a test counted."""
        coordinator = self.coordinator.proc.log.read_text(errors="replace").splitlines()
        lines = [line for line in coordinator if "marked dead" in line]
        for node in self.nodes:
            log = node.mount.log.read_text(errors="replace") if node.mount.log.exists() else ""
            loud = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
            stats = node.stats()
            cloud, cancelled = stats["tiers"]["cloud"], stats["cancelled_fetches"]
            retried = f"{cancelled} GETs cancelled, {stats['cloud_retries']} requests retried"
            lines += [f"{node.peer_id}: cloud {cloud}, {retried}", *loud]
        return "\n".join(lines)

    def settled_egress(self) -> int:
        """`egress()` once it has stopped moving (the server's metrics lag a little)."""
        last = self.egress()
        while True:
            time.sleep(0.3)
            now = self.egress()
            if now == last:
                return now
            last = now


@contextmanager
def running_cluster(
    server: servers.S3Server,
    base: Path,
    peer_ids: tuple[str, ...] = NODES,
    *,
    token: str | None = None,
    node_flags: dict[str, dict[str, str]] | None = None,
    **extra: str,
) -> Iterator[Cluster]:
    """A coordinator and one mounted client per id that all see each other, on a fresh
    bucket of `server`; everything is stopped on the way out. `extra` flags go to every
    client, `node_flags[peer_id]` to one; `token` to all, coordinator included."""
    coordinator = start_coordinator(
        base, "-heartbeat-interval", "0.5s", "-peer-expiry", "5s", token=token
    )
    flags, env = target_flags("s3-seaweedfs", server, base)
    flags |= {
        "coordinator": f"127.0.0.1:{coordinator.port}",
        "peer_timeout": "5s",
        "metadata_ttl": "1s",
    } | extra
    if token is not None:
        flags["token"] = token
    nodes: list[Node] = []
    try:
        for peer_id, port in zip(peer_ids, servers.free_ports(len(peer_ids)), strict=True):
            root = base / peer_id
            root.mkdir(exist_ok=True)  # a test may have mounted a disk of its own in it
            given = (
                flags
                | {"peer_id": peer_id, "port": str(port)}
                | (node_flags or {}).get(peer_id, {})
            )
            mount = Mount(root / "mnt", root / "nvme", given, env, root / "client.log")
            nodes.append(Node(peer_id, mount))
            mount.start()
        for node in nodes:
            until(partial(node.sees_members, len(peer_ids)), what=f"{node.peer_id} to see all")
        yield Cluster(coordinator, server, flags["s3_bucket"], nodes)
    finally:
        for node in nodes:
            node.mount.stop()
        coordinator.stop()

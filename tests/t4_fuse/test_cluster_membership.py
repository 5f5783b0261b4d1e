"""A mounted node joins the coordinator's membership, and mounts without one."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import servers
from certs import self_signed
from coordinators import Coordinator, start_coordinator
from mounts import Mount, cloud_put, status, status_command


def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def joined(
    mount_factory: Callable[..., Mount],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    **flags: str,
) -> tuple[Coordinator, Mount]:
    """A coordinator, and a mount on the local provider that has registered with it."""
    coordinator = start_coordinator(tmp_path, "-heartbeat-interval", "1s", "-peer-expiry", "3s")
    request.addfinalizer(coordinator.stop)
    mount = mount_factory("local", coordinator=f"127.0.0.1:{coordinator.port}", **flags)
    until(lambda: coordinator.live_ids() == [flags["peer_id"]])
    return coordinator, mount


def test_a_node_registers_reports_and_leaves(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    coordinator, mount = joined(mount_factory, request, tmp_path, peer_id="node-a")
    (mount.path / "f.bin").write_bytes(b"x" * 5_000_000)  # two 4 MiB chunks in tier 1
    assert (mount.path / "f.bin").read_bytes() == b"x" * 5_000_000
    until(lambda: [e["chunks"] for e in coordinator.locations("f.bin")] == [[0, 1]])
    assert coordinator.locations("f.bin")[0]["peer_id"] == "node-a"
    peer = coordinator.get("/api/peers").json["peers"][0]
    assert peer["address"].endswith(f":{mount.flags['port']}")
    assert peer["capacity"]["local"] == 10 * 2**30
    assert mount.stop() == 0
    until(lambda: coordinator.live_ids() == [])  # left at once, not by expiry
    coordinator.assert_clean_log()


def test_a_node_mounts_and_works_while_the_coordinator_is_down(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    coordinator = start_coordinator(tmp_path, "-heartbeat-interval", "1s", "-peer-expiry", "3s")
    request.addfinalizer(coordinator.stop)
    port = coordinator.port
    coordinator.stop()
    mount = mount_factory("local", coordinator=f"127.0.0.1:{port}", peer_id="node-b")
    (mount.path / "g.bin").write_bytes(b"works")
    assert (mount.path / "g.bin").read_bytes() == b"works"
    coordinator.restart()  # the coordinator comes back: the node registers by itself
    until(lambda: coordinator.live_ids() == ["node-b"])
    log = mount.log_tail(400)
    assert log.count("WARNING") <= 2, log  # one warning for the outage, not one per try


def test_a_coordinator_url_of_a_server_that_answers_without_end(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """-coordinator names some other server, one that answers every request with a body
    without end: the node reads no answer past 64 MiB, says so once, and serves on."""
    port, server = servers.start_babbler(tmp_path)
    request.addfinalizer(server.stop)
    mount = mount_factory("local", coordinator=f"127.0.0.1:{port}", peer_id="node-e")
    mount.wait_for_log("an answer over 64.0 MiB: not a coordinator's answer")
    (mount.path / "g.bin").write_bytes(b"works")
    assert (mount.path / "g.bin").read_bytes() == b"works"
    until(lambda: server.log.read_text().count("POST /api/peers/register") >= 3)  # it goes on
    log = mount.log_tail(400)
    assert log.count("WARNING") == 1, log  # one warning, not one per try
    assert mount.proc is not None
    vm = Path(f"/proc/{mount.proc.pid}/status").read_text()
    peak = int(next(line for line in vm.splitlines() if line.startswith("VmHWM:")).split()[1])
    assert peak < 400 * 2**10, f"the node's memory peaked at {peak >> 10} MiB"


def test_tierfs_status_of_a_server_that_answers_without_end(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`tierfs status -coordinator` naming a server whose answers never end: one line
    saying so, at once, in bounded memory (it read 7 GB until its 10 s timeout, then
    printed an empty reason)."""
    port, server = servers.start_babbler(tmp_path)
    request.addfinalizer(server.stop)
    measured = [sys.executable, "-c", MAX_RSS_OF_CHILD]
    started = time.monotonic()
    shown = subprocess.run(
        [*measured, *status_command("-coordinator", f"127.0.0.1:{port}")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 8
    assert shown.returncode == 1
    said, peak = shown.stderr.strip().splitlines()
    assert said == (
        f"tierfs status: http://127.0.0.1:{port}/api/peers/all gave an answer over 64.0 MiB: "
        "not a coordinator's answer"
    )
    assert int(peak) < 400 * 2**10, f"tierfs status peaked at {int(peak) >> 10} MiB"


# Runs the command in its arguments, then prints its peak RSS (KiB) on stderr.
MAX_RSS_OF_CHILD = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(done.returncode)"
)


def test_chunks_a_node_evicts_leave_the_location_index(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    coordinator, mount = joined(
        mount_factory, request, tmp_path, peer_id="node-c", nvme_size="8MiB"
    )
    data = os.urandom(24 * 2**20)  # six chunks; tier 1 keeps two
    (mount.path / "big.bin").write_bytes(data)
    assert (mount.path / "big.bin").read_bytes() == data

    def listed() -> list[int]:
        entries = coordinator.locations("big.bin")
        return entries[0]["chunks"] if entries else []

    def held() -> list[int]:  # asked again each time: eviction runs in the background
        return sorted(c["index"] for c in mount_api(mount, "/api/cache?limit=100")["chunks"])

    until(lambda: 0 < len(listed()) <= 2)
    until(lambda: listed() == held())
    coordinator.assert_clean_log()


def mount_api(mount: Mount, path: str) -> Any:
    """GET `path` of the node's peer API as JSON."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mount.flags['port']}{path}") as answer:
        return json.loads(answer.read())


def test_tierfs_status_shows_the_peers_and_the_tiers(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    coordinator, mount = joined(mount_factory, request, tmp_path, peer_id="node-s")
    cloud_put(mount, "f.bin", os.urandom(5 * 2**20))
    (mount.path / "f.bin").read_bytes()  # two chunks from the cloud into tier 1
    until(lambda: coordinator.get("/api/stats").json["tiers"]["cloud"]["hits"] == 2)
    shown = status("-coordinator", f"127.0.0.1:{coordinator.port}")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    where = f"127.0.0.1:{coordinator.port}"
    assert lines[0] == f"coordinator {where}: 1 peer active, 0 draining, 0 dead"
    assert lines[1].split() == ["PEER", "ADDRESS", "STATUS", "TIER", "1", "(OWN", "READS)",
                                "FOR", "PEERS", "HEARTBEAT"]  # fmt: skip
    row = lines[2].split()
    assert row[:3] == ["node-s", f"127.0.0.1:{mount.flags['port']}", "active"]
    assert row[3:7] == ["5.0", "MiB", "of", "10.0"]  # both chunks held, of -nvme-size
    assert lines[5].startswith("tier 3 (cloud): 2 hits, ") and lines[5].endswith("5.0 MiB")
    assert lines[-1].endswith("files cached on some peer: 1")
    coordinator.stop()
    down = status("-coordinator", where)
    assert down.returncode == 1
    assert down.stderr.strip().startswith(
        f"tierfs status: no answer from the coordinator at http://{where}"
    )
    assert len(down.stderr.strip().splitlines()) == 1


def test_tierfs_status_says_what_to_give_a_coordinator_with_tls_and_a_token(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`tierfs status -coordinator HOST:PORT` of a coordinator with -tls-cert said only
    "Server disconnected", and one with -token, "send Authorization: Bearer <token>"."""
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    coordinator = start_coordinator(tmp_path, token="s3cret", tls=(cert, key), ssl_context=trust)
    request.addfinalizer(coordinator.stop)
    where = f"127.0.0.1:{coordinator.port}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            status_command("-coordinator", *args),
            capture_output=True,
            text=True,
            timeout=60,
            env=servers.clean_env(SSL_CERT_FILE=str(cert)),
        )

    def said(*args: str) -> str:
        shown = run(*args)
        assert shown.returncode == 1 and len(shown.stderr.splitlines()) == 1, shown.stderr
        return shown.stderr.strip()

    assert said(where).endswith(f"(a coordinator with -tls-cert answers only https://{where})")
    url = f"https://{where}"
    assert said(url).endswith("needs the cluster's token: give -token or set TIERFS_TOKEN")
    assert said(url, "-token", "wrong").endswith(
        "refused the token: -token (or TIERFS_TOKEN) is not this cluster's"
    )
    shown = run(url, "-token", "s3cret")
    assert shown.stdout.startswith(f"coordinator {url}: 0 peers active"), shown.stderr


def test_tierfs_status_of_a_hung_coordinator_says_it_did_not_answer(tmp_path: Path) -> None:
    """A coordinator that takes the connection and never answers (stopped, swapping): the
    line used to end with an empty reason ('no answer from the coordinator at URL: ')."""
    coordinator = start_coordinator(tmp_path)
    assert coordinator.proc.pid is not None
    os.killpg(coordinator.proc.pid, signal.SIGSTOP)
    try:
        shown = status("-coordinator", coordinator.url)
    finally:
        os.killpg(coordinator.proc.pid, signal.SIGCONT)
        coordinator.stop()
    assert shown.returncode == 1
    assert shown.stderr.strip() == (
        f"tierfs status: no answer from the coordinator at {coordinator.url}/api/peers/all in 10 s"
    )

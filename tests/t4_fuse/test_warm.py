"""`tierfs warm PATH`: a folder brought into the node's tier 1 before it is read."""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import servers
from certs import self_signed
from mounts import Mount, cloud_put, node_address, warm
from relay import relay_in_front_of

MiB = 2**20


def settled_egress(server: servers.S3Server, bucket: str) -> int:
    """Bytes the S3 server has sent from `bucket`, once the count stops moving."""
    sent = server.bytes_sent(bucket)
    while True:
        time.sleep(0.2)
        again = server.bytes_sent(bucket)
        if again == sent:
            return sent
        sent = again


def test_a_warmed_folder_is_read_without_the_cloud(
    mount_factory: Callable[..., Mount], seaweedfs: servers.S3Server
) -> None:
    # -admit-after 2: a first read would not cache a chunk; a warm does.
    mount = mount_factory("s3-seaweedfs", start=False, admit_after="2")
    files = {"data/a.bin": os.urandom(9 * MiB), "data/sub/b.bin": os.urandom(MiB)}
    for key, data in files.items():
        cloud_put(mount, key, data)
    cloud_put(mount, "other.bin", os.urandom(MiB))
    mount.start()
    bucket = mount.flags["s3_bucket"]
    before = settled_egress(seaweedfs, bucket)
    warmed = warm(str(mount.path / "data"), "-node", node_address(mount))
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.splitlines() == [
        f"{mount.path / 'data'}: 2 files, 10.0 MiB: 10.0 MiB fetched, 0.0 MiB cached already"
    ]
    fetched = settled_egress(seaweedfs, bucket) - before
    assert 10 * MiB <= fetched < 11 * MiB  # the folder, not other.bin
    for key, data in files.items():  # never read through the mount: from tier 1
        assert (mount.path / key).read_bytes() == data
    assert settled_egress(seaweedfs, bucket) - before == fetched
    again = warm(str(mount.path / "data/sub/b.bin"), "-node", node_address(mount))
    assert again.returncode == 0, again.stderr
    assert again.stdout.endswith(": 1 file, 1.0 MiB: 0.0 MiB fetched, 1.0 MiB cached already\n")


def test_what_does_not_fit_in_tier_1_is_said_and_exit_1(
    mount_factory: Callable[..., Mount],
) -> None:
    mount = mount_factory("local", start=False, nvme_size="8MiB")
    cloud_put(mount, "big.bin", os.urandom(16 * MiB))
    mount.start()
    warmed = warm(str(mount.path), "-node", node_address(mount))
    assert warmed.returncode == 1
    report, error = warmed.stdout.strip(), warmed.stderr.strip()
    assert "1 file, 16.0 MiB" in report and "did not fit in tier 1 (-nvme-size)" in report
    assert error == "tierfs warm: not everything could be warmed (see above)"


def test_what_tier_1_let_go_for_later_chunks_did_not_fit(
    mount_factory: Callable[..., Mount],
) -> None:
    """A warm whose chunks push out the ones it warmed (or found) before says so: the
    first file, in tier 1 already, made room for the second one's chunks."""
    mount = mount_factory("local", start=False, nvme_size="8MiB")
    cloud_put(mount, "data/a.bin", os.urandom(4 * MiB))
    cloud_put(mount, "data/b.bin", os.urandom(8 * MiB))
    mount.start()
    first = warm(str(mount.path / "data/a.bin"), "-node", node_address(mount))
    assert first.returncode == 0, first.stderr
    both = warm(str(mount.path / "data"), "-node", node_address(mount))
    assert both.returncode == 1, both.stdout
    assert "2 files, 12.0 MiB" in both.stdout and "did not fit in tier 1" in both.stdout


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("outside", "is not on a tierfs mount"),
        ("missing", "No such file or directory"),
        ("no node", "no answer from the node at"),
        ("other node", "answered: this node mounts"),
        ("empty folder", "nothing to warm at empty"),
        ("a server answering 200 without end", "gave no answer of a tierfs node"),
        ("a server answering 500 without end", "answered: an answer over 64.0 KiB"),
    ],
)
def test_a_warm_that_cannot_be_done_is_one_line_and_exit_1(
    mount_factory: Callable[..., Mount],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
    expected: str,
) -> None:
    mount = mount_factory("local")
    os.mkdir(mount.path / "empty")
    other = mount_factory("local") if where == "other node" else mount
    path = {
        "outside": tmp_path,
        "missing": mount.path / "nope",
        "empty folder": mount.path / "empty",
    }.get(where, mount.path)
    address = f"127.0.0.1:{servers.free_ports(1)[0]}" if where == "no node" else node_address(other)
    if where.endswith("without end"):
        port, server = servers.start_babbler(tmp_path, status=int(where.split()[3]))
        request.addfinalizer(server.stop)
        address = f"127.0.0.1:{port}"
    failed = warm(str(path), "-node", address)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tierfs warm: ") and expected in lines[0], lines


def test_on_a_terminal_a_warm_shows_how_far_it_is(mount_factory: Callable[..., Mount]) -> None:
    mount = mount_factory("local", start=False, read_only="true")  # a read-only mount too
    cloud_put(mount, "a.bin", os.urandom(6 * MiB))
    mount.start()
    controller, terminal = pty.openpty()
    try:
        command = [
            sys.executable,
            "-m",
            "tierfs.cli",
            "warm",
            str(mount.path),
            "-node",
            node_address(mount),
        ]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=terminal, timeout=120)
        shown = os.read(controller, 65536).decode()
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 0
    assert f"\r{mount.path}: 1 file, 6.0 MiB of 6.0 MiB, " in shown
    assert shown.rstrip().endswith("MiB/s")


def test_a_warm_asks_the_node_of_the_mount_that_holds_each_path(
    mount_factory: Callable[..., Mount],
) -> None:
    """Without -node, each PATH goes to the node serving its mount, as the mount names it
    (`mount`, `df`): it went to localhost:8081, another node or none."""
    first, second = mount_factory("local", start=False), mount_factory("local", start=False)
    for mount in (first, second):
        cloud_put(mount, "a.bin", os.urandom(MiB))
        mount.start()
    with open("/proc/mounts") as mounts:
        names = {fields[1]: fields[0] for fields in (line.split() for line in mounts)}
    for mount in (first, second):  # as `mount` and `df` show it
        name = names[str(mount.path)]
        assert name.startswith("tierfs:") and name.endswith(
            f"?node=http://127.0.0.1:{mount.flags['port']}"
        )
    warmed = warm(str(first.path / "a.bin"), str(second.path))
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.splitlines() == [
        f"{first.path / 'a.bin'}: 1 file, 1.0 MiB: 1.0 MiB fetched, 0.0 MiB cached already",
        f"{second.path}: 1 file, 1.0 MiB: 1.0 MiB fetched, 0.0 MiB cached already",
    ]


def test_a_node_that_never_answers_is_given_up_after_timeout(
    mount_factory: Callable[..., Mount],
) -> None:
    """A node that takes the connection and says nothing (stopped, its loop stuck) held
    `tierfs warm` forever."""
    mount = mount_factory("local")
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        failed = warm(str(mount.path), "-node", address, "-timeout", "1s")
        took = time.monotonic() - started
    finally:
        silent.close()
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [
        f"tierfs warm: {mount.path}: the node at {address} sent nothing for 1s (-timeout)"
    ]
    assert took < 10


def test_a_node_killed_during_a_warm_is_said_to_have_gone_away(
    mount_factory: Callable[..., Mount], request: pytest.FixtureRequest
) -> None:
    """The node went away mid-answer (killed, or stopped): the warm said `no answer from
    the node ...: Response payload is not completed: <TransferEncodingError: 400, ...>`,
    as if it had never answered, and as if it had answered 400."""
    mount = mount_factory("s3-seaweedfs", start=False)
    relay, relayed = relay_in_front_of(mount.flags["s3_endpoint"])
    request.addfinalizer(relay.stop)
    mount.flags |= {"s3_endpoint": relayed}
    for name in ("a.bin", "b.bin"):
        cloud_put(mount, f"data/{name}", os.urandom(MiB))
    mount.start()
    address = node_address(mount)
    relay.hold(b"/data/b.bin")  # the warm is under way, a.bin in, b.bin on its way
    warming = subprocess.Popen(
        [sys.executable, "-m", "tierfs.cli", "warm", str(mount.path / "data"), "-node", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=servers.clean_env(),
    )
    try:
        relay.wait_until_held()
        mount.kill()
        _, said = warming.communicate(timeout=60)
    finally:
        relay.release()
        if warming.poll() is None:
            warming.kill()
    assert warming.returncode == 1
    assert said.splitlines() == [
        f"tierfs warm: {mount.path / 'data'}: the node at {address} went away before the end "
        "(its answer broke off: was it stopped?)"
    ]


def test_a_warm_of_a_tls_node_goes_over_https_to_the_name_its_certificate_holds(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    """A node with -tls-cert serves its peer API over HTTPS only, at its peer address
    (the name its certificate holds): its mount names that URL, and a warm, with or
    without -node, reaches it there and trusts its certificate as peers do (the system
    store, or SSL_CERT_FILE). A -node without https:// is told so: before 2026-12-06 it
    said only 'Server disconnected' (the node hangs up on plain HTTP)."""
    cert, key = self_signed(tmp_path)
    mount = mount_factory("local", start=False, tls_cert=str(cert), tls_key=str(key))
    cloud_put(mount, "a.bin", os.urandom(MiB))
    cloud_put(mount, "b.bin", os.urandom(MiB))
    mount.start()
    url = f"https://127.0.0.1:{mount.flags['port']}"
    with open("/proc/mounts") as mounts:
        names = {fields[1]: fields[0] for fields in (line.split() for line in mounts)}
    assert names[str(mount.path)].endswith(f"?node={url}")
    warmed = warm(str(mount.path / "a.bin"), SSL_CERT_FILE=str(cert))
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.splitlines() == [
        f"{mount.path / 'a.bin'}: 1 file, 1.0 MiB: 1.0 MiB fetched, 0.0 MiB cached already"
    ]
    warmed = warm(str(mount.path / "b.bin"), "-node", url, SSL_CERT_FILE=str(cert))
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.endswith(": 1 file, 1.0 MiB: 1.0 MiB fetched, 0.0 MiB cached already\n")
    untrusted = warm(str(mount.path))  # its certificate in no store this warm trusts
    assert untrusted.returncode == 1
    lines = untrusted.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"tierfs warm: {mount.path}: no answer from the node at {url}"
    ), lines
    assert "certificate verify failed" in lines[0], lines
    plain = warm(str(mount.path), "-node", node_address(mount), SSL_CERT_FILE=str(cert))
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [
        f"tierfs warm: {mount.path}: no answer from the node at {node_address(mount)}: "
        f"Server disconnected (a node with -tls-cert answers only {url})"
    ]


def test_a_warm_of_a_node_with_a_token_says_to_give_it(
    mount_factory: Callable[..., Mount],
) -> None:
    """A node with -token refused a warm without it, or with another, in its own words:
    "send Authorization: Bearer <token>", which a user of the command cannot do."""
    mount = mount_factory("local", token="s3cret")
    (mount.path / "a.bin").write_bytes(os.urandom(MiB))
    node = node_address(mount)
    for given, said in (
        ((), "needs the cluster's token: give -token or set TIERFS_TOKEN"),
        (("-token", "wrong"), "refused the token: -token (or TIERFS_TOKEN) is not this cluster's"),
    ):
        failed = warm(*given, str(mount.path))
        assert failed.returncode == 1
        assert failed.stderr.splitlines() == [
            f"tierfs warm: {mount.path}: the node at {node} {said}"
        ]
    warmed = warm(str(mount.path), TIERFS_TOKEN="s3cret")
    assert warmed.returncode == 0, warmed.stderr

"""Shared fixtures: one real server of each kind per session, started on first use; small
disks (tmpfs) for tests of a full disk."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

# tests/ has no __init__.py, so pytest puts it on sys.path for this conftest
import servers
from mounts import TmpfsMount


class _Server(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


@pytest.fixture(scope="session")
def servers_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data, config and logs of every session server."""
    return tmp_path_factory.mktemp("servers")


def _session_server(request: pytest.FixtureRequest, start: Callable[[Path], S], root: Path) -> S:
    server = start(root)  # a failed start stops its own process
    request.addfinalizer(server.stop)  # runs whatever the tests did
    return server


@pytest.fixture(scope="session")
def seaweedfs(request: pytest.FixtureRequest, servers_root: Path) -> servers.S3Server:
    """SeaweedFS ``weed mini``: S3 with SigV4 enforced."""
    return _session_server(request, servers.start_seaweedfs, servers_root)


@pytest.fixture(scope="session")
def moto(request: pytest.FixtureRequest, servers_root: Path) -> servers.S3Server:
    """moto_server: S3 semantics oracle (no auth, in memory)."""
    return _session_server(request, servers.start_moto, servers_root)


_azurites: list[servers.AzureServer] = []  # the session's, once started


@pytest.fixture(scope="session")
def azurite(request: pytest.FixtureRequest, servers_root: Path) -> servers.AzureServer:
    """Azurite blob service."""
    _azurites.append(_session_server(request, servers.start_azurite, servers_root))
    return _azurites[-1]


@pytest.fixture(autouse=True)
def _delete_azure_containers() -> Iterator[None]:
    """The containers a test made go when it ends (see AzureServer.delete_containers)."""
    yield
    for server in _azurites:
        server.delete_containers()


@pytest.fixture(scope="session")
def fake_gcs(request: pytest.FixtureRequest, servers_root: Path) -> servers.GcsServer:
    """fake-gcs-server: the GCS JSON API."""
    return _session_server(request, servers.start_fake_gcs, servers_root)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "warnings_expected: the test provokes tierfs WARNING logs on purpose"
    )


@pytest.fixture(autouse=True)
def _fail_on_unexpected_warnings(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """A tierfs WARNING or worse that the test did not ask for fails it (as S3QL's suite)."""
    yield
    if request.node.get_closest_marker("warnings_expected"):
        return
    loud = [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for record in caplog.get_records("call")
        if record.levelno >= logging.WARNING and record.name.startswith("tierfs")
    ]
    assert not loud, "unexpected warnings:\n" + "\n".join(loud)


@pytest.fixture
def tmpfs() -> Iterator[TmpfsMount]:
    """Mount a tmpfs of a given size (`"64m"`) on a folder; all unmounted at the end,
    whatever the test did."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        subprocess.run(command, check=True)
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            if subprocess.run(["umount", str(path)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=True)

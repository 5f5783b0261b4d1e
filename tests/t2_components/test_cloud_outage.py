"""A cloud server that dies mid-request gives a clear error within the deadline, never a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import servers
from cloud_targets import settings_for
from tierfs.cloud.providers import open_store
from tierfs.errors import CloudError

DEADLINE = 3.0
STARTERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "s3-seaweedfs": ("s3-seaweedfs", servers.start_seaweedfs),
    "s3-moto": ("s3-moto", servers.start_moto),
    "azure": ("azure", servers.start_azurite),
    "gcp-native": ("gcp-native", servers.start_fake_gcs),
}


@pytest.fixture(params=list(STARTERS))
def own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A server of each kind that this test alone uses, so it may kill it."""
    provider, start = STARTERS[request.param]
    server = start(tmp_path)
    try:
        yield provider, server
    finally:
        server.stop()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_server_stopped_mid_request(own_server: tuple[str, object], tmp_path: Path) -> None:
    provider, server = own_server
    cloud = open_store(settings_for(provider, server, tmp_path, timeout=DEADLINE))
    body = b"x" * (32 * 2**20)
    version = (await cloud.put("victim", body)).version

    async def read_forever() -> None:
        while True:
            assert await cloud.get_range("victim", 0, len(body), version) == body

    reader = asyncio.create_task(read_forever())
    await asyncio.sleep(0.5)
    assert not reader.done(), "the reads failed before the server was stopped"
    await asyncio.to_thread(server.proc.kill)  # type: ignore[attr-defined]
    killed = time.monotonic()
    with pytest.raises(CloudError):
        await asyncio.wait_for(reader, timeout=DEADLINE + 5)
    assert time.monotonic() - killed <= DEADLINE + 1.0

    started = time.monotonic()
    with pytest.raises(CloudError):
        await cloud.head("victim")
    assert time.monotonic() - started <= DEADLINE + 1.0
    await cloud.close()

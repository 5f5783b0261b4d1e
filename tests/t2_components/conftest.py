"""A CloudStore on a fresh bucket of every provider, each on its real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_targets import PROVIDERS, server_for, settings_for
from tierfs.cloud.base import CloudStore
from tierfs.cloud.providers import open_store


@pytest_asyncio.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CloudStore]:
    """A CloudStore on a fresh, empty bucket of each provider in turn."""
    provider = request.param
    cloud = open_store(settings_for(provider, server_for(request, provider), tmp_path))
    yield cloud
    await cloud.close()

"""A CloudStore on a fresh bucket of every provider, each on its real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_targets import PROVIDERS, server_for, settings_for
from tierfs.cloud.base import CloudStore
from tierfs.cloud.folder import FolderStore, KeyPrefix
from tierfs.cloud.providers import open_store

IN_A_FOLDER = " folder"  # the store of a folder of that provider's bucket (`-prefix`)


@pytest_asyncio.fixture(params=[*PROVIDERS, "s3-seaweedfs" + IN_A_FOLDER])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CloudStore]:
    """A CloudStore on a fresh, empty bucket of each provider in turn, and on a folder
    of a bucket whose other keys it must never show nor touch."""
    provider = request.param.removesuffix(IN_A_FOLDER)
    cloud = open_store(settings_for(provider, server_for(request, provider), tmp_path))
    if request.param.endswith(IN_A_FOLDER):
        neighbours = ["dataset", "dataset.txt", "datasets/train.bin", "other/x"]
        for key in neighbours:
            await cloud.put(key, key.encode())
        folder = FolderStore(cloud, KeyPrefix("datasets/train/"))
        yield folder
        outside = [meta for meta in (await cloud.list_all(delimiter=False)).objects
                   if not meta.key.startswith("datasets/train/")]  # fmt: skip
        assert [meta.key for meta in outside] == neighbours  # untouched by the tests
        for meta in outside:
            assert bytes(await cloud.get_range(meta.key, 0, 100, meta.version)) == meta.key.encode()
    else:
        yield cloud
    await cloud.close()

"""Real FUSE mounts of a fresh bucket, unmounted even when the test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_targets import server_for, target_flags
from mounts import Mount

MountFactory = Callable[..., Mount]


@pytest.fixture
def mount_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MountFactory]:
    """Make mounts: `mount_factory(provider, **flags)`; every one is stopped at the end."""
    made: list[Mount] = []

    def make(provider: str = "local", start: bool = True, **flags: str) -> Mount:
        root = tmp_path / f"node{len(made)}"
        root.mkdir()
        given, env = target_flags(provider, server_for(request, provider), tmp_path)
        # in no cluster (Mount's default) unless the test names its coordinator
        mount = Mount(root / "mnt", root / "nvme", given | flags, env, root / "client.log")
        made.append(mount)
        return mount.start() if start else mount

    yield make
    for mount in made:
        mount.stop()


@pytest.fixture(params=["local", "s3-seaweedfs"])
def mounted(request: pytest.FixtureRequest, mount_factory: MountFactory) -> Mount:
    """A mount of a fresh bucket on the local provider and on S3."""
    return mount_factory(request.param)

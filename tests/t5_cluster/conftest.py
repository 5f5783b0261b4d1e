"""The cluster of the tier-2 tests: a coordinator and three mounted clients on loopback
over one bucket on the real S3 server, all stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import servers
from clusters import Cluster, running_cluster


@pytest.fixture
def cluster(seaweedfs: servers.S3Server, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(seaweedfs, tmp_path) as running:
        yield running

"""`tierfs client`: one node of the cluster.

Today it opens the tier-3 store and checks that the bucket answers; the FUSE mount, the
tier-1 cache and the peer API join this loop as they are built.
"""

from __future__ import annotations

import logging

from tierfs.cloud.providers import open_store
from tierfs.errors import TierfsError
from tierfs.settings import ClientSettings

log = logging.getLogger(__name__)


async def run_client(settings: ClientSettings) -> None:
    """Check the bucket, then stop: mounting is not part of this build yet."""
    store = open_store(settings)
    try:
        page = await store.list_all("", delimiter=True)
        log.info(
            "node %s: %s answers (%d objects and %d prefixes at the top)",
            settings.node_id,
            store.url,
            len(page.objects),
            len(page.prefixes),
        )
    finally:
        await store.close()
    raise TierfsError(f"{store.url} is reachable, but this build cannot mount yet")

"""`tierfs client`: one node of the cluster, wired into one asyncio loop.

The tier-3 store, the tier-1 cache, the cluster membership and tier 2, the upload journal
and the read path come up first (uploads a crash left behind go up before the mount
appears), then the peer API and the FUSE mount serve until SIGINT/SIGTERM or an unmount,
and everything goes down in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from contextlib import AsyncExitStack
from pathlib import Path

from tierfs.cache.base import Origin
from tierfs.cache.chunk_cache import DiskChunkCache
from tierfs.cache.owner import claim, lock
from tierfs.cloud.folder import FolderStore, KeyPrefix
from tierfs.cloud.providers import (
    check_bucket,
    open_store,
    require_s3_credentials,
    settle_s3_region,
)
from tierfs.coordinator.client import CoordinatorClient, NodeReport
from tierfs.coordinator.models import TierBytes
from tierfs.errors import ConfigError, UnsentUploadsError
from tierfs.fs.filesystem import Filesystem, Ownership
from tierfs.fs.handles import Staging
from tierfs.fuse.mount import prepare_mountpoint, serve
from tierfs.fuse.operations import KERNEL_TTL, Operations
from tierfs.fuse.page_cache import KernelPageCache
from tierfs.memory import free_held_memory_forever, tune_malloc
from tierfs.open_files import take_hard_limit
from tierfs.peer.app import create_app, start_site
from tierfs.peer.fetcher import PeerFetcher
from tierfs.read_path import ReadPath
from tierfs.settings import ClientSettings
from tierfs.stats import NodeStats, Tier
from tierfs.upload import Uploader, UploadJournal

log = logging.getLogger(__name__)


def join_cluster(
    settings: ClientSettings, cache: DiskChunkCache, stats: NodeStats, keys: KeyPrefix
) -> CoordinatorClient:
    """The membership of this node: registers and heartbeats in the background, and never
    holds up the mount (a coordinator that is down is one warning, and retried). Chunks
    are reported by the bucket's keys (`keys`): those tier 1 kept from an earlier run
    first, then each one stored or evicted."""

    def report() -> NodeReport:
        capacity = TierBytes(local=settings.nvme_size, peer=settings.peer_size)
        usage = TierBytes(local=cache.used(Origin.LOCAL), peer=cache.used(Origin.PEER))
        return NodeReport(capacity, usage, stats)

    scheme = "https" if settings.tls_cert else "http"
    client = CoordinatorClient(
        f"{scheme}://{settings.coordinator}",
        settings.node_id,
        settings.peer_address,
        report,
        token=settings.token,
    )
    cache.on_stored = lambda c: client.report_location(
        keys.outer(c.obj.key), c.obj.version, [c.index]
    )
    cache.on_evicted = lambda key, version, index: client.withdraw_location(
        keys.outer(key), version, [index]
    )
    # the coordinator forgets what a node's earlier run held when this one registers
    kept: dict[tuple[str, str], list[int]] = defaultdict(list)
    for chunk in cache.held():
        kept[keys.outer(chunk.key), chunk.version].append(chunk.index)
    for (path, version), indexes in kept.items():
        client.report_location(path, version, indexes)
    return client


def bytes_moved(stats: NodeStats) -> int:
    """Bytes this node has fetched, served and put into the page cache: it is busy while
    the count moves."""
    fetched = sum(stats.tier(tier).bytes for tier in Tier)
    return fetched + stats.served_to_peers_bytes + stats.page_cache_bytes


def take_tier_1(nvme: Path) -> int:
    """Make the tier-1 directory and `lock` it; ConfigError naming -nvme where the
    filesystem refuses (under a file, read-only, no permission)."""
    try:
        nvme.mkdir(parents=True, exist_ok=True)
        return lock(nvme)
    except OSError as exc:
        raise ConfigError(f"-nvme {nvme}: {exc.strerror or exc}") from exc


async def run_client(settings: ClientSettings) -> None:
    """Mount the bucket at `settings.mount` and serve it until told to stop."""
    tune_malloc()
    take_hard_limit()
    stats = NodeStats()
    async with AsyncExitStack() as stack:
        # before its journal is read, and before a stale mount is cleaned up: a second
        # client started beside it must not unmount the first one's new mount
        stack.callback(os.close, take_tier_1(settings.nvme))
        prepare_mountpoint(settings.mount, settings.allow_non_empty)
        keys = KeyPrefix(settings.prefix)
        credentials = require_s3_credentials(settings)  # said before the region is asked
        settings = await settle_s3_region(settings)
        bucket = open_store(settings, credentials)
        bucket.on_retry = stats.count_cloud_retry
        cloud = FolderStore(bucket, keys) if keys.prefix else bucket
        stack.push_async_callback(cloud.close)
        bucket_checked = asyncio.create_task(check_bucket(cloud), name="bucket check")
        stack.callback(bucket_checked.cancel)
        journal = UploadJournal(settings.nvme / "journal.sqlite3")
        stack.callback(journal.close)
        claim(settings.nvme, cloud.url, len(journal.pending()))
        staging = Staging(settings.nvme / "staging")
        left = staging.sweep(keep={row.staging for row in journal.pending()})
        if left:
            log.info("removed %d staging files of a previous run's uploaded files", left)
        cache = await DiskChunkCache.create(
            settings.nvme,
            nvme_size=settings.nvme_size,
            peer_size=settings.peer_size,
            stats=stats,
            admit_after=settings.admit_after,
        )
        stack.push_async_callback(cache.close)
        coordinator = join_cluster(settings, cache, stats, keys)
        stack.push_async_callback(coordinator.close)
        peers = PeerFetcher(
            settings.node_id,
            coordinator,
            stats=stats,
            timeout=settings.peer_timeout,
            token=settings.token,
            tls=settings.tls_cert is not None,
            keys=keys,
            chunk_size=settings.chunk_size,
        )
        stack.push_async_callback(peers.close)
        uploader = Uploader(cloud, cache, journal, settings.chunk_size, peers)
        stack.push_async_callback(uploader.close)
        await bucket_checked
        # What a crash left unsent goes up before the mount appears, or, while the cloud
        # is down, once it is back: the mount takes those files over (`take_over`).
        unsent = await uploader.recover()
        read_path = ReadPath(cache, cloud, chunk_size=settings.chunk_size, stats=stats, peers=peers)
        stack.push_async_callback(read_path.close)
        peer_api = create_app(
            cache=cache,
            read_path=read_path,
            cloud=cloud,
            stats=stats,
            chunk_size=settings.chunk_size,
            node_id=settings.node_id,
            members=lambda: coordinator.membership,
            token=settings.token,
            on_peer_heartbeat=peers.mark_alive,
            keys=keys,
            mount=str(settings.mount.resolve()),
        )
        runner = await start_site(peer_api, settings)
        stack.push_async_callback(runner.cleanup)  # runs before the read path closes
        trimming = asyncio.create_task(
            free_held_memory_forever(lambda: bytes_moved(stats)), name="free memory"
        )
        stack.callback(trimming.cancel)
        # Join once the peer API answers, so no peer finds it closed and skips this node.
        membership = asyncio.create_task(coordinator.run(), name="coordinator")
        stack.callback(membership.cancel)
        stack.push_async_callback(coordinator.leave)  # runs first: leave, then stop
        fs = Filesystem(
            cloud,
            read_path,
            uploader,
            staging,
            metadata_ttl=settings.metadata_ttl,
            ownership=Ownership(settings.uid, settings.gid, settings.file_mode, settings.dir_mode),
            page_cache=None if settings.direct_io else KernelPageCache(stats),
        )
        if unsent:
            fs.take_over(uploader.hand_over())
        if uploader.recovering:  # rows the mount does not take, streams' uploads to abort
            recovery = asyncio.create_task(uploader.recover_until_done(), name="recovery")
            stack.callback(recovery.cancel)
        log.info("node %s: %s through %s", settings.node_id, cloud.url, settings.nvme)
        await serve(
            Operations(fs, min(KERNEL_TTL, settings.metadata_ttl), settings.direct_io),
            settings.mount,
            fsname=cloud.url,
            node_url=settings.local_api_url,
            read_only=settings.read_only,
            allow_other=settings.allow_other,
        )
        if undone := fs.stopped_short():
            raise UnsentUploadsError(undone)

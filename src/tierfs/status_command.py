"""`tierfs status`: the cluster as its coordinator sees it, in the terminal: the peers with
their tier-1 use and last heartbeat, then hits and bytes per tier and the egress saved."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tierfs.coordinator.client import MAX_ANSWER
from tierfs.coordinator.models import AllPeers, ClusterStats, PeerInfo, TierName
from tierfs.errors import TierfsError
from tierfs.security import AnswerTooLargeError, read_bounded, token_refused
from tierfs.settings import StatusSettings
from tierfs.units import human_size

TIMEOUT = aiohttp.ClientTimeout(total=10)
TIERS: dict[TierName, str] = {
    "local": "tier 1 (local disk)",
    "peer": "tier 2 (peers)",
    "cloud": "tier 3 (cloud)",
}


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    try:
        async with session.get(url, headers=headers) as response:
            if response.status == 401:
                raise TierfsError(f"the coordinator at {url} {token_refused(bool(headers))}")
            body = json.loads(await read_bounded(response, MAX_ANSWER))
            if response.status != 200:
                raise TierfsError(f"{url} answered {response.status}: {body.get('message')}")
            return body
    except AnswerTooLargeError as exc:
        raise TierfsError(f"{url} gave {exc}: not a coordinator's answer") from None
    except TimeoutError:
        raise TierfsError(
            f"no answer from the coordinator at {url} in {TIMEOUT.total:g} s"
        ) from None
    except (aiohttp.ClientError, ValueError) as exc:
        hint = ""
        if isinstance(exc, aiohttp.ServerDisconnectedError) and url.startswith("http://"):
            # a coordinator with -tls-cert hangs up on plain HTTP
            hint = f" (a coordinator with -tls-cert answers only https://{urlsplit(url).netloc})"
        raise TierfsError(f"no answer from the coordinator at {url}: {exc}{hint}") from None


def render(where: str, peers: list[PeerInfo], stats: ClusterStats, now: float) -> str:
    """The status as lines of text."""
    counts = stats.peers
    lines = [
        f"coordinator {where}: {counts.active} peer{'s' * (counts.active != 1)} active, "
        f"{counts.draining} draining, "
        f"{counts.dead} dead"
    ]
    rows = [("PEER", "ADDRESS", "STATUS", "TIER 1 (OWN READS)", "FOR PEERS", "HEARTBEAT")]
    for peer in sorted(peers, key=lambda p: p.peer_id):
        rows.append(
            (
                peer.peer_id,
                peer.address,
                peer.status,
                f"{human_size(peer.usage.local)} of {human_size(peer.capacity.local)}",
                f"{human_size(peer.usage.peer)} of {human_size(peer.capacity.peer)}",
                f"{max(0.0, now - peer.last_heartbeat):.1f} s ago",
            )
        )
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
    for name, label in TIERS.items():
        tier = stats.tiers[name]
        ratio = "" if tier.hit_ratio is None else f" ({tier.hit_ratio:.0%} hits)"
        lines.append(
            f"{label}: {tier.hits:,} hits, {tier.misses:,} misses{ratio}, {human_size(tier.bytes)}"
        )
    lines.append(
        f"cloud egress saved: {human_size(stats.cloud_egress_saved)}; "
        f"fetched from the cloud: {human_size(stats.cloud_bytes_fetched)}; "
        f"files cached on some peer: {stats.files:,}"
    )
    return "\n".join(lines)


async def run_status(settings: StatusSettings) -> None:
    """Print the cluster's status; TierfsError (exit 1) when the coordinator does not answer."""
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    base = settings.coordinator_url.rstrip("/")
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        # the dead ones too (before 2026-12-07 they were counted, not named)
        every = AllPeers.model_validate(await _get(session, base + "/api/peers/all", headers))
        stats = ClusterStats.model_validate(await _get(session, base + "/api/stats", headers))
    print(render(settings.coordinator, every.peers, stats, time.time()))

"""The dashboard at `/`: peers, capacity, hit ratios, cloud egress saved. Plain HTML.

No JavaScript: the page reloads itself every few seconds. Every value is escaped.
"""

from __future__ import annotations

import time
from html import escape

from tierfs import __version__
from tierfs.coordinator.models import TIER_NAMES, ClusterStats, PeerInfo

REFRESH_SECONDS = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: .3em .8em; text-align: right; }
th { background: #eee; } tr:nth-child(even) td { background: #f7f7f7; }
td.l, th.l { text-align: left; } .dead { color: #a00; } .draining { color: #a60; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 10em; }
.card b { display: block; font-size: 1.3em; }
"""


def _bytes(n: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:,.1f} {unit}"
    return f"{n} B"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _card(label: str, value: str) -> str:
    return f'<div class="card">{escape(label)}<b>{escape(value)}</b></div>'


def render(stats: ClusterStats, peers: list[PeerInfo], now: float | None = None) -> str:
    """The whole page."""
    now = time.time() if now is None else now
    cards = [
        _card("live peers", f"{stats.peers.active + stats.peers.draining} / {stats.peers.total}"),
        _card("capacity (tier 1)", _bytes(stats.capacity.local + stats.capacity.peer)),
        _card("used (tier 1)", _bytes(stats.usage.local + stats.usage.peer)),
        _card("cloud egress saved", _bytes(stats.cloud_egress_saved)),
        _card("fetched from cloud", _bytes(stats.cloud_bytes_fetched)),
        _card("served peer to peer", _bytes(stats.peer_bytes_served)),
        _card("files indexed", f"{stats.files:,}"),
    ]
    tier_rows = "".join(
        f'<tr><td class="l">{tier}</td><td>{t.hits:,}</td><td>{t.misses:,}</td>'
        f"<td>{_ratio(t.hit_ratio)}</td><td>{_bytes(t.bytes)}</td><td>{t.errors:,}</td></tr>"
        for tier in TIER_NAMES
        for t in [stats.tiers[tier]]
    )
    peer_rows = "".join(
        f'<tr class="{escape(p.status)}"><td class="l">{escape(p.peer_id)}</td>'
        f'<td class="l">{escape(p.address)}</td><td class="l {escape(p.status)}">'
        f"{escape(p.status)}</td><td>{_bytes(p.usage.local)} / {_bytes(p.capacity.local)}</td>"
        f"<td>{_bytes(p.usage.peer)} / {_bytes(p.capacity.peer)}</td>"
        f"<td>{_age(max(0.0, now - p.last_heartbeat))}</td></tr>"
        for p in peers
    )
    if not peers:
        peer_rows = '<tr><td class="l" colspan="6">no peer has registered yet</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>tierfs coordinator</title><style>{_STYLE}</style></head>
<body>
<h1>tierfs coordinator</h1>
<p>membership epoch {stats.epoch} · tierfs {escape(__version__)} ·
<a href="/api/stats">stats</a> · <a href="/api/peers">peers</a> ·
<a href="/metrics">metrics</a> · <a href="/api/openapi.json">API</a></p>
<div class="cards">{"".join(cards)}</div>
<h2>Cache tiers</h2>
<table><tr><th class="l">tier</th><th>hits</th><th>misses</th><th>hit ratio</th>
<th>bytes delivered</th><th>errors</th></tr>{tier_rows}</table>
<h2>Peers</h2>
<table><tr><th class="l">peer</th><th class="l">address</th><th class="l">status</th>
<th>tier 1, own reads</th><th>tier 1, for peers</th><th>last heartbeat</th></tr>
{peer_rows}</table>
</body></html>
"""

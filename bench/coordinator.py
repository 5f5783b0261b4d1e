"""The coordinator under a cluster's load: many peers heartbeating and reporting locations.

Run from the repo root: `.venv/bin/python bench/coordinator.py [--peers 200] [--duration 60]`.

A real `tierfs coordinator` process on 127.0.0.1 with a fresh data dir. One load process
(asyncio + aiohttp, one keep-alive connection per peer) simulates `--peers` peers: each
registers, then every `--interval` seconds sends a heartbeat (usage, counters, known
epoch) and a location report (a few chunks of one of its files, merged into what it
holds); besides, `--lookups` location queries per second go to random paths, and every
peer re-reads the membership when the epoch moves. Ticks are scheduled on absolute
time, so a slow answer is not hidden by a lower rate (ticks that start late count).

Printed: requests/s, client-side latency p50/p99/max overall and per endpoint beside the
50 ms p99 target and beside the floor (`GET /api/health`, the cheapest round trip: one
`SELECT 1` on the database thread) measured at the same rate first; the coordinator's own
view of p99 from its /metrics histogram; its RSS (peak, end) and CPU use. Both processes
share this machine's 2 cores, so client-side figures include the load generator's time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from coordinators import Coordinator, start_coordinator  # noqa: E402  (tests/ is a folder)

TARGET_P99_MS = 50.0
FLOOR_SECONDS = 10.0
FILES_PER_PEER = 50
CHUNKS_PER_FILE = 256  # a 1 GiB file at 4 MiB chunks


@dataclass
class Samples:
    """Latencies in seconds by endpoint, and failures."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    late_ticks: int = 0
    ticks: int = 0

    def all(self) -> list[float]:
        return [x for values in self.latency.values() for x in values]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


async def timed(
    session: aiohttp.ClientSession,
    samples: Samples,
    name: str,
    method: str,
    url: str,
    body: object = None,
) -> dict[str, object] | None:
    started = time.perf_counter()
    try:
        async with session.request(method, url, json=body) as response:
            payload = await response.read()
            ok = response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        samples.errors[name] += 1
        return None
    samples.latency[name].append(time.perf_counter() - started)
    samples.timeline.append((started, time.perf_counter() - started))
    if not ok:
        samples.errors[name] += 1
        return None
    answer: dict[str, object] = json.loads(payload)
    return answer


class Peer:
    def __init__(self, index: int, url: str, interval: float) -> None:
        self.peer_id = f"bench-{index:04d}"
        self.url = url
        self.interval = interval
        self.epoch: object = None
        self.hits = 0
        self.files = [f"datasets/shard-{index:04d}/part-{n:05d}.bin" for n in range(FILES_PER_PEER)]
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),  # one keep-alive connection, as a node
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def register(self, samples: Samples) -> None:
        body = {
            "peer_id": self.peer_id,
            "address": f"10.0.{int(self.peer_id[-4:]) // 250}.{int(self.peer_id[-4:]) % 250}:8081",
            "capacity": {"local": 10 * 2**30, "peer": 5 * 2**30},
        }
        answer = await timed(
            self.session, samples, "register", "POST", f"{self.url}/api/peers/register", body
        )
        if answer is not None:
            self.epoch = answer["epoch"]

    async def tick(self, samples: Samples) -> None:
        self.hits += random.randint(0, 50)
        beat = {
            "peer_id": self.peer_id,
            "usage": {"local": self.hits * 4 * 2**20, "peer": 0},
            "stats": {"tiers": {"local": {"hits": self.hits, "bytes": self.hits * 2**22}}},
            "epoch": self.epoch,
        }
        answer = await timed(
            self.session, samples, "heartbeat", "PUT", f"{self.url}/api/peers/status", beat
        )
        if answer is not None:
            self.epoch = answer["epoch"]
        start = random.randrange(CHUNKS_PER_FILE - 4)
        report = {
            "peer_id": self.peer_id,
            "path": random.choice(self.files),
            "version": '"etag-1"',
            "chunks": list(range(start, start + 4)),
        }
        await timed(
            self.session, samples, "location put", "PUT", f"{self.url}/api/files/location", report
        )

    async def run(self, samples: Samples, until: float) -> None:
        next_tick = time.monotonic() + random.uniform(0, self.interval)
        while next_tick < until:
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                samples.late_ticks += 1
            samples.ticks += 1
            await self.tick(samples)
            next_tick += self.interval


async def lookups(url: str, peers: list[Peer], rate: float, samples: Samples, until: float) -> None:
    async with aiohttp.ClientSession() as session:
        pending: set[asyncio.Task[object]] = set()
        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            path = random.choice(random.choice(peers).files)
            task = asyncio.create_task(
                timed(
                    session, samples, "location get", "GET", f"{url}/api/files/location?path={path}"
                )
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += 1 / rate
        await asyncio.gather(*pending)


async def floor(url: str, rate: float, seconds: float) -> Samples:
    """GET /api/health at `rate` per second from many connections: the cheapest round trip."""
    samples = Samples()
    until = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        pending: set[asyncio.Task[object]] = set()
        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            task = asyncio.create_task(
                timed(session, samples, "health", "GET", f"{url}/api/health")
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += 1 / rate
        await asyncio.gather(*pending)
    return samples


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in USER_HZ (100)


async def watch_rss(pid: int, until: float, peak: list[float]) -> None:
    while time.monotonic() < until:
        peak.append(rss_mib(pid))
        await asyncio.sleep(1.0)


def server_p99(text: str, routes: tuple[str, ...]) -> dict[str, float]:
    """Upper bucket bound under which 99% of requests fell, per route (from /metrics)."""
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        if family.name != "tierfs_coordinator_request_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["route"] in routes:
                bound = float(sample.labels["le"])
                buckets[sample.labels["route"]].append((bound, sample.value))
    result = {}
    for route, pairs in buckets.items():
        pairs.sort()
        total = pairs[-1][1]
        result[route] = next(bound for bound, count in pairs if count >= 0.99 * total)
    return result


async def bench(coordinator: Coordinator, args: argparse.Namespace) -> Samples:
    pid = coordinator.proc.pid
    assert pid is not None
    url = coordinator.url
    rate = args.peers * 2 / args.interval + args.lookups
    print(f"floor: GET /api/health at {rate:.0f}/s for {FLOOR_SECONDS:.0f}s ...", file=sys.stderr)
    base = await floor(url, rate, FLOOR_SECONDS)
    peers = [Peer(i, url, args.interval) for i in range(args.peers)]
    samples = Samples()
    print(f"registering {args.peers} peers ...", file=sys.stderr)
    await asyncio.gather(*(peer.register(samples) for peer in peers))
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    until = t0 + args.duration
    rss: list[float] = []
    print(f"load: {rate:.0f} requests/s for {args.duration:.0f}s ...", file=sys.stderr)
    await asyncio.gather(
        *(peer.run(samples, until) for peer in peers),
        lookups(url, peers, args.lookups, samples, until),
        watch_rss(pid, until, rss),
    )
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    await asyncio.gather(*(peer.session.close() for peer in peers))
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        metrics = await response.text()

    registered = samples.latency.pop("register", [])
    everything = samples.all()
    count = len(everything)
    p99 = pct(everything, 0.99)
    print()
    print(
        f"coordinator under {args.peers} peers: heartbeat + location report every "
        f"{args.interval:g}s each, {args.lookups:g} lookups/s, {elapsed:.0f}s"
    )
    print(f"  requests           {count:>9,}   {count / elapsed:8.1f} req/s")
    print(f"  errors             {sum(samples.errors.values()):>9,}   {dict(samples.errors)}")
    print(f"  late ticks (>100ms) {samples.late_ticks:>8,} of {samples.ticks:,}")
    print(f"  latency p50        {ms(pct(everything, 0.5))}   (floor {ms(pct(base.all(), 0.5))})")
    verdict = "ok" if p99 < TARGET_P99_MS / 1000 else "OVER TARGET"
    print(
        f"  latency p99        {ms(p99)}   (floor {ms(pct(base.all(), 0.99))}; "
        f"target < {TARGET_P99_MS:.0f} ms: {verdict})"
    )
    print(f"  latency max        {ms(max(everything))}")
    for name, values in sorted(samples.latency.items()):
        print(
            f"    {name:<16} n={len(values):>7,}  p50 {ms(pct(values, 0.5))}  "
            f"p99 {ms(pct(values, 0.99))}"
        )
    print(f"    {'register':<16} n={len(registered):>7,}  p99 {ms(pct(registered, 0.99))}")
    routes = ("/api/peers/status", "/api/files/location")
    for route, bound in server_p99(metrics, routes).items():
        print(f"  server-side p99 of {route:<22} <= {bound * 1000:.1f} ms (histogram bucket)")
    windows: dict[int, list[float]] = defaultdict(list)
    origin = min(started for started, _ in samples.timeline)
    for started, seconds in samples.timeline:
        windows[int((started - origin) // args.window)].append(seconds)
    shown = " ".join(f"{ms(pct(values, 0.99)).strip()}" for _, values in sorted(windows.items()))
    print(f"  p99 per {args.window:g}s window (registration first): {shown}")
    print(f"  coordinator RSS    peak {max(rss):.1f} MiB, end {rss[-1]:.1f} MiB")
    print(f"  coordinator CPU    {cpu / elapsed:.0%} of one core ({cpu:.1f}s in {elapsed:.0f}s)")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--lookups", type=float, default=50.0, help="location queries/s")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per p99 window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tierfs-bench-") as tmp:
        coordinator = start_coordinator(
            Path(tmp), "-heartbeat-interval", f"{args.interval:g}s", "-peer-expiry", "30s"
        )
        try:
            samples = asyncio.run(bench(coordinator, args))
        finally:
            coordinator.stop()
        coordinator.assert_clean_log()
    failed = sum(samples.errors.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

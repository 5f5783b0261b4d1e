"""Tier 2 on loopback: peer reads beside their local and HTTP limits, and cloud egress.

Run from the repo root, as root: `.venv/bin/python bench/cluster.py [--size 1GiB]
[--egress-size 256MiB] [--runs 3] [--json PATH]`. One SeaweedFS on 127.0.0.1; each figure
on a fresh cluster (tests/clusters.py: a coordinator and real `tierfs client` processes,
each with its FUSE mount, tier 1 and peer API), on a fresh bucket. Throughput is in
decimal MB/s (10^6 bytes), as the target.

1. Peer reads: node A reads the object through its mount (cold), which leaves every chunk
   in A's tier 1 (its own from the cloud, the rest from B, which read them through). Then
   this process, standing in for node B, GETs every chunk from A's peer API with the
   protocol of tierfs.peer.fetcher (aiohttp, its session settings, `cached_only=1`: tier 1
   or a 404, 16 x 4 MiB in flight, the checksum header of each chunk checked on the loop).
   Beside it, in the same cache state (the chunk files page-cached, just written and read):
   (a) `os.pread` of A's chunk files whole, one thread: the local limit. The peer API
   sends exactly these files (sendfile), so this is the honest one; a read through A's
   mount would add FUSE, which tier 2 does not go through, and a cold disk would be the
   disk's figure, not tier 1's. (b) A lean aiohttp server in a process of its own (as A
   is), sending the same bytes from the source file with sendfile, each range with its
   checksum header (computed before it starts), fetched by the same client code: the
   limit of HTTP on loopback with aiohttp. Best of `--runs`, interleaved. Then B reads the
   whole object through its own mount, cold (informational): B's own chunks from its
   tier 1, A's over tier 2, nothing from the cloud.
2. Egress: for 1, 2 and 3 readers a fresh cluster of that many nodes; all of them read the
   same object through their mounts at once (one thread each, 1 MiB reads); the bytes
   SeaweedFS sent from the bucket, by its own count, over the object's size.

Every byte read is checked: reads through a mount against the source's xxh3-128, outside
the timing; each chunk of 1. by the xxh3-64 the fetcher computes anyway, compared with that
of the source's bytes (computed beforehand), then dropped as a node drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import xxhash
from aiohttp import hdrs, web

from cloud import GiB, MiB, bounded, parse_size, size_text, write_source
from fuse import read_into
from tier1 import CHUNK, IN_FLIGHT
from tierfs.chunks import ChunkRef, ObjectRef, checksum, chunk_ref
from tierfs.peer import protocol
from tierfs.peer.fetcher import CONNECTIONS_PER_PEER, READ_BUFFER
from tierfs.peer.ring import owner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import servers  # noqa: E402  (tests/ is a folder on sys.path, not a package)
from clusters import Cluster, Node, running_cluster  # noqa: E402
from mounts import cloud_of  # noqa: E402

MB = 10**6  # the targets are in decimal megabytes
BIG = "big.bin"
PEER_TARGET = 500.0  # MB/s of peer reads
EGRESS_TARGET = 1.05  # cloud bytes over dataset bytes, whatever the number of readers
READERS = (1, 2, 3)
TIMEOUT = 60.0  # seconds: one HTTP request of the figures, and tier 1 catching up
PAIR = ("node-a", "node-b")
TRIO = ("node-a", "node-b", "node-c")


@dataclass(frozen=True)
class Limit:
    value: float
    what: str


@dataclass
class Row:
    """One figure beside its limits measured in the same run, and its target (None: an
    informational figure)."""

    figure: str
    unit: str
    value: float
    limits: list[Limit]
    target: float | None
    lower_is_better: bool = False
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value <= self.target if self.lower_is_better else self.value >= self.target


COUNTERS = ("local", "peer", "cloud")  # the tiers of /api/cache/stats


@dataclass
class NodeTiers:
    """What one node's /api/cache/stats counted during a figure. Tier 1 counts a hit per
    read it serves (a FUSE read is at most 1 MiB), tiers 2 and 3 one per chunk: the bytes
    per tier are what compare."""

    during: str
    node: str
    owned: int  # chunks of the object this node owns (rendezvous over the cluster)
    hits: dict[str, int]  # by tier
    bytes: dict[str, int]
    served_to_peers: int
    singleflight_joins: int
    peer_errors: int


def counters(node: Node) -> dict[str, int]:
    """The node's counters this bench reports, flat."""
    stats = node.stats()
    flat = {
        f"{tier} {what}": stats["tiers"][tier][what]
        for tier in COUNTERS
        for what in ("hits", "bytes")
    }
    flat["peer errors"] = stats["tiers"]["peer"]["errors"]
    return flat | {name: stats[name] for name in ("served_to_peers", "singleflight_joins")}


def tiers_since(during: str, node: Node, owned: int, before: dict[str, int] | None) -> NodeTiers:
    """What `node` counted since its counters were `before` (None: since it started)."""
    now = counters(node)
    delta = {name: now[name] - (before or {}).get(name, 0) for name in now}
    return NodeTiers(
        during,
        node.peer_id,
        owned,
        {tier: delta[f"{tier} hits"] for tier in COUNTERS},
        {tier: delta[f"{tier} bytes"] for tier in COUNTERS},
        delta["served_to_peers"],
        delta["singleflight_joins"],
        delta["peer errors"],
    )


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    nodes: list[NodeTiers] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)  # WARNING and worse of the clients

    def add(self, other: Report) -> None:
        self.rows += other.rows
        self.nodes += other.nodes
        self.log_lines += other.log_lines


def progress(row: Row) -> Row:
    """`row`, printed as it comes."""
    limits = ", ".join(f"{limit.value:,.2f}" for limit in row.limits) or "-"
    print(f"  {row.figure:<58} {row.value:>9,.2f} {row.unit} (limits {limits})", file=sys.stderr)
    return row


def chunks_of(ref: ObjectRef) -> list[ChunkRef]:
    return [chunk_ref(ref, index, CHUNK) for index in range(-(-ref.size // CHUNK))]


def owned_by(ref: ObjectRef, peer_ids: Sequence[str]) -> dict[str, int]:
    """How many chunks of `ref` each node owns."""
    counts = dict.fromkeys(peer_ids, 0)
    for chunk in chunks_of(ref):
        found = owner(chunk.id, peer_ids)
        assert found is not None
        counts[found] += 1
    return counts


def put_object(node: Node, key: str, source: Path) -> ObjectRef:
    """`source` put into the cluster's bucket behind every node's back; its ref as read."""

    async def put() -> ObjectRef:
        store = cloud_of(node.mount)
        try:
            await store.put(key, source)
            meta = await store.head(key)
        finally:
            await store.close()
        return ObjectRef(key, meta.version, meta.size)

    return asyncio.run(put())


def digest_of(source: Path) -> bytes:
    """The xxh3-128 of `source`'s bytes."""
    return xxhash.xxh3_128_digest(source.read_bytes())


def log_lines(cluster: Cluster) -> list[str]:
    """The WARNING, ERROR and Traceback lines of every client's log."""
    found = []
    for node in cluster.nodes:
        text = node.mount.log.read_text(errors="replace") if node.mount.log.exists() else ""
        for line in text.splitlines():
            if any(mark in line for mark in (" WARNING ", " ERROR ", "Traceback")):
                found.append(f"{node.peer_id}: {line.strip()}")
    return found


# -- fetching chunks over HTTP, the peer client's way -----------------------------------------


def peer_session() -> aiohttp.ClientSession:
    """A session set up as tierfs.peer.fetcher sets up its own."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        connector=aiohttp.TCPConnector(limit_per_host=CONNECTIONS_PER_PEER),
        auto_decompress=False,
        read_bufsize=READ_BUFFER,
    )


def source_sums(source: Path, chunks: list[ChunkRef]) -> list[str]:
    """The checksum of each chunk's bytes in `source`, by chunk index."""
    with source.open("rb", buffering=0) as file:
        return [checksum(os.pread(file.fileno(), c.length, c.start)) for c in chunks]


async def fetch_chunks(
    session: aiohttp.ClientSession,
    url: str,
    params: dict[str, str],
    chunks: list[ChunkRef],
    sums: list[str],
) -> float:
    """Seconds of GETting every one of `chunks` from `url`, IN_FLIGHT at a time. Each is
    checked as the fetcher checks it (its length, its checksum header), and that checksum
    against the source's `sums`; then dropped, as a node drops it once FUSE has it."""

    async def one(chunk: ChunkRef) -> None:
        headers = {"Range": protocol.byte_range(chunk.start, chunk.length)}
        async with session.get(url, params=params, headers=headers) as response:
            if response.status not in (200, 206):
                raise SystemExit(f"GET {url} chunk {chunk.index}: HTTP {response.status}")
            expected = response.headers.get(protocol.CHECKSUM_HEADER)
            data = await response.read()
        if len(data) != chunk.length or expected is None or checksum(data) != expected:
            raise SystemExit(f"GET {url} chunk {chunk.index}: {len(data)} bytes, bad checksum")
        if expected != sums[chunk.index]:
            raise SystemExit(f"GET {url} chunk {chunk.index}: not the source's bytes")

    started = time.perf_counter()
    await bounded(IN_FLIGHT, (partial(one, chunk) for chunk in chunks))
    return time.perf_counter() - started


# -- (b) the raw loopback limit: a minimal aiohttp server in a process of its own -------------


def serve_file(path: str, chunk_size: int, pipe: Connection) -> None:
    """Serve the chunk-sized ranges of `path` at /raw with sendfile(2), each with the
    checksum of its bytes (computed first), on a port it sends on `pipe`; until terminated.

    As lean as aiohttp allows: the file is opened once, no stat, ETag or Range parsing
    beyond the start (aiohttp's FileResponse does all that per request, in threads)."""
    size = os.path.getsize(path)
    file = open(path, "rb", buffering=0)  # noqa: SIM115  (open until the process ends)
    sums = {
        start: checksum(os.pread(file.fileno(), chunk_size, start))
        for start in range(0, size, chunk_size)
    }

    async def raw(request: web.Request) -> web.StreamResponse:
        start = request.http_range.start or 0
        length = min(chunk_size, size - start)
        headers = {
            hdrs.CONTENT_RANGE: protocol.content_range(start, length, size),
            protocol.CHECKSUM_HEADER: sums[start],
        }
        response = web.StreamResponse(status=206, headers=headers)
        response.content_length = length
        await response.prepare(request)
        assert request.transport is not None
        await asyncio.get_running_loop().sendfile(request.transport, file, start, length)
        await response.write_eof()
        return response

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/raw", raw)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        pipe.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(serve())


@dataclass
class RawServer:
    process: BaseProcess
    url: str

    @classmethod
    def start(cls, source: Path) -> RawServer:
        context = multiprocessing.get_context("spawn")  # nothing of this process inherited
        ours, theirs = context.Pipe()
        process = context.Process(target=serve_file, args=(str(source), CHUNK, theirs))
        process.start()
        if not ours.poll(TIMEOUT):
            process.terminate()
            raise SystemExit("the raw aiohttp server did not start")
        return cls(process, f"http://127.0.0.1:{ours.recv()}/raw")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


# -- 1. peer reads ----------------------------------------------------------------------------


def wait_for_tier1(node: Node, chunks: list[ChunkRef]) -> list[Path]:
    """The chunk files of `chunks` in `node`'s tier 1, once all are there (a chunk goes
    to tier 1 behind the read that fetched it)."""
    folder = node.mount.nvme / "chunks"
    paths = [folder / chunk.id[:2] / chunk.id for chunk in chunks]
    deadline = time.monotonic() + TIMEOUT
    while missing := [path for path in paths if not path.exists()]:
        if time.monotonic() > deadline:
            raise SystemExit(f"{node.peer_id}'s tier 1 lacks {len(missing)} of {len(paths)} chunks")
        time.sleep(0.1)
    return paths


def pread_files(paths: list[Path], chunks: list[ChunkRef], sums: list[str]) -> float:
    """Seconds of `os.pread` of each chunk file whole, one thread, each checked against
    the source's `sums` as the peer reads are (the same checksum, computed once)."""
    started = time.perf_counter()
    for path, chunk in zip(paths, chunks, strict=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, chunk.length, 0)
        finally:
            os.close(fd)
        if len(data) != chunk.length or checksum(data) != sums[chunk.index]:
            raise SystemExit(f"{path}: not the bytes of chunk {chunk.index}")
    return time.perf_counter() - started


async def transfer_rates(
    node: Node, ref: ObjectRef, paths: list[Path], source: Path, runs: int
) -> tuple[float, float, float]:
    """MB/s of (peer reads from `node`, pread of its chunk files, the raw HTTP limit),
    each the best of `runs`, interleaved so that all three meet the same noise."""
    chunks = chunks_of(ref)
    peer_url = protocol.file_url(f"http://127.0.0.1:{node.port}", ref.key)
    peer_params = {
        protocol.VERSION_PARAM: ref.version,
        protocol.SIZE_PARAM: str(ref.size),
        protocol.CACHED_ONLY_PARAM: "1",  # tier 1 or a 404: never the cloud
    }
    sums = source_sums(source, chunks)
    raw = RawServer.start(source)
    best = [0.0, 0.0, 0.0]
    try:
        async with peer_session() as session:
            for url, params in ((peer_url, peer_params), (raw.url, {})):  # open the connections
                await fetch_chunks(session, url, params, chunks[:IN_FLIGHT], sums)
            for _ in range(runs):
                measured = [
                    await fetch_chunks(session, peer_url, peer_params, chunks, sums),
                    await asyncio.to_thread(pread_files, paths, chunks, sums),
                    await fetch_chunks(session, raw.url, {}, chunks, sums),
                ]
                rates = (ref.size / MB / seconds for seconds in measured)
                best = [max(pair) for pair in zip(best, rates, strict=True)]
    finally:
        raw.stop()
    return best[0], best[1], best[2]


def peer_figures(server: servers.S3Server, work: Path, source: Path, runs: int) -> Report:
    """Figure 1 on a two-node cluster."""
    report = Report()
    with running_cluster(server, work / "peer", PAIR) as cluster:
        a, b = cluster.nodes
        ref = put_object(a, BIG, source)
        owned = owned_by(ref, PAIR)
        buffer, digest = bytearray(ref.size), digest_of(source)
        before = cluster.settled_egress()
        a_rate = read_into(a.path / BIG, buffer, digest) * MiB / MB
        paths = wait_for_tier1(a, chunks_of(ref))
        a_egress = cluster.settled_egress() - before
        cold = [tiers_since("A's cold read", node, owned[node.peer_id], None) for node in (a, b)]
        report.nodes += cold
        print(
            f"  A read {size_text(ref.size)} cold at {a_rate:,.0f} MB/s, "
            f"the cloud sent {a_egress / ref.size:.3f}x",
            file=sys.stderr,
        )
        since = counters(a)
        peer, local, raw = asyncio.run(transfer_rates(a, ref, paths, source, runs))
        report.nodes.append(tiers_since("the peer GETs", a, owned[a.peer_id], since))
        served = report.nodes[-1].served_to_peers
        before, since = cluster.settled_egress(), counters(b)
        b_rate = read_into(b.path / BIG, buffer, digest) * MiB / MB
        b_egress = cluster.settled_egress() - before
        b_tiers = tiers_since("B's cold read", b, owned[b.peer_id], since)
        report.nodes.append(b_tiers)
        report.log_lines += log_lines(cluster)
    how = f"{size_text(ref.size)}, {IN_FLIGHT} x 4 MiB GETs in flight, checksummed"
    limits = [
        Limit(local, "pread of A's chunk files, page-cached, 1 thread"),
        Limit(raw, "lean aiohttp sendfile server, own process, same client"),
    ]
    note = (
        f"best of {runs}, cached_only=1; A served {served} chunks; A's cold read before: "
        f"{a_rate:,.0f} MB/s, cloud egress {a_egress / ref.size:.3f}x"
    )
    figure = f"peer reads: B from A's tier 1 ({how})"
    report.rows.append(progress(Row(figure, "MB/s", peer, limits, PEER_TARGET, note=note)))
    note = (
        f"1 MiB reads, 1 thread; B's bytes from tier 1/peer/cloud: {split(b_tiers)} MB "
        f"(egress {b_egress / MB:,.1f} MB; B owns {owned[b.peer_id]} of {len(paths)} chunks)"
    )
    figure = f"B reads {size_text(ref.size)} through its mount, cold, after A (informational)"
    report.rows.append(progress(Row(figure, "MB/s", b_rate, [], None, note=note)))
    return report


# -- 2. egress --------------------------------------------------------------------------------


def read_at_once(paths: list[Path], size: int, digest: bytes) -> float:
    """Seconds until all of `paths` have been read whole, at once (a thread each); exits
    unless each gives bytes hashing to `digest`."""
    buffers = [bytearray(size) for _ in paths]
    with ThreadPoolExecutor(len(paths)) as pool:
        started = time.perf_counter()
        reads = [
            pool.submit(read_into, path, buffer, digest)
            for path, buffer in zip(paths, buffers, strict=True)
        ]
        for read in reads:
            read.result()
        return time.perf_counter() - started


def egress_figure(server: servers.S3Server, work: Path, source: Path, readers: int) -> Report:
    """Figure 2 for `readers` nodes, on a fresh cluster of that many."""
    report = Report()
    peer_ids = TRIO[:readers]
    nodes = f"{readers} node{'s' * (readers > 1)}"
    with running_cluster(server, work / f"egress-{readers}", peer_ids) as cluster:
        ref = put_object(cluster.nodes[0], BIG, source)
        owned = owned_by(ref, peer_ids)
        before = cluster.settled_egress()
        paths = [node.path / BIG for node in cluster.nodes]
        seconds = read_at_once(paths, ref.size, digest_of(source))
        egress = cluster.settled_egress() - before
        during = f"{nodes} reading"
        tiers = [tiers_since(during, node, owned[node.peer_id], None) for node in cluster.nodes]
        report.nodes += tiers
        report.log_lines += log_lines(cluster)
    hits = "; ".join(f"{t.node} {split(t)}" for t in tiers)
    note = (
        f"{egress / MB:,.1f} MB sent by SeaweedFS; read in {seconds:.1f} s "
        f"({readers * ref.size / MB / seconds:,.0f} MB/s in all); MB from tier 1/peer/cloud: "
        f"{hits}"
    )
    figure = f"cloud bytes / dataset bytes, {nodes} reading {size_text(ref.size)} at once"
    limits = [Limit(1.0, "each byte once")]
    row = Row(
        figure, "x", egress / ref.size, limits, EGRESS_TARGET, lower_is_better=True, note=note
    )
    report.rows.append(progress(row))
    return report


# -- the tables -------------------------------------------------------------------------------


def number(value: float, unit: str) -> str:
    return f"{value:.2f}" if unit == "x" else f"{value:,.0f}"


def markdown(head: list[str], cells: list[list[str]], right: set[int]) -> str:
    """An aligned Markdown table: pastes into the README, reads in a terminal."""
    lines = [head, *cells]
    widths = [max(len(line[column]) for line in lines) for column in range(len(head))]

    def line(values: list[str]) -> str:
        padded = [
            value.rjust(width) if column in right else value.ljust(width)
            for column, (value, width) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if c in right else "-" * w for c, w in enumerate(widths)]
    return "\n".join([line(head), line(rule), *(line(values) for values in cells)])


def figures_table(rows: list[Row]) -> str:
    head = ["figure", "tierfs", "limit (same run)", "of limit", "target", "met"]
    cells = []
    for r in rows:
        limits = "; ".join(f"{number(x.value, r.unit)} ({x.what})" for x in r.limits)
        shares = "; ".join(
            f"{x.value / r.value if r.lower_is_better else r.value / x.value:.0%}" for x in r.limits
        )
        if r.target is None:
            target, met = "-", "-"
        else:
            target = f"{'<=' if r.lower_is_better else '>='} {number(r.target, r.unit)}"
            met = "yes" if r.met else "NO"
        value = f"{number(r.value, r.unit)} {r.unit}"
        cells.append([r.figure, value, limits or "-", shares or "-", target, met])
    return markdown(head, cells, {1, 3, 4})


def split(tiers: NodeTiers) -> str:
    """The node's bytes by tier, in MB: `tier 1/peer/cloud`."""
    return "/".join(f"{tiers.bytes[tier] / MB:,.0f}" for tier in COUNTERS)


def tiers_table(nodes: list[NodeTiers]) -> str:
    head = ["during", "node", "owns", "tier 1", "peer", "cloud", "served", "joins", "peer errors"]
    cells = [
        [n.during, n.node, f"{n.owned} chunks"]
        + [f"{n.hits[tier]:,} ({n.bytes[tier] / MB:,.0f} MB)" for tier in COUNTERS]
        + [str(n.served_to_peers), str(n.singleflight_joins), str(n.peer_errors)]
        for n in nodes
    ]
    return markdown(head, cells, set(range(2, len(head))))


def run(args: argparse.Namespace, work: Path) -> Report:
    """Both figures on one SeaweedFS, stopped at the end."""
    report = Report()
    server = servers.start_seaweedfs(work / "seaweedfs")
    try:
        source = write_source(work / "source", args.size)
        print(f"1. peer reads, {size_text(args.size)}", file=sys.stderr)
        report.add(peer_figures(server, work, source, args.runs))
        source = write_source(work / "egress-source", args.egress_size)
        print(f"2. egress, {size_text(args.egress_size)}", file=sys.stderr)
        for readers in READERS:
            report.add(egress_figure(server, work, source, readers))
    finally:
        server.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=GiB, help="object of 1. (1GiB)")
    parser.add_argument(
        "--egress-size", type=parse_size, default=256 * MiB, help="object of 2. (256MiB)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of 1., best kept (3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cluster.py mounts FUSE filesystems: run it as root")
    began, load_before = time.monotonic(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tierfs-bench-"))
    try:
        report = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runtime, load_after = time.monotonic() - began, os.getloadavg()[0]
    print(figures_table(report.rows))
    print()
    print(tiers_table(report.nodes))
    print(
        f"\n{os.cpu_count()} cores, load average {load_before:.2f} before and {load_after:.2f} "
        f"after, {runtime:.0f} s. MB = 10^6 bytes. Per node: /api/cache/stats hits (bytes) by\n"
        "tier during each step; tier 1 counts a hit per read served (FUSE reads of up to 1 MiB),\n"
        "peer and cloud one per 4 MiB chunk. Every byte read was checked against its source."
    )
    for row in report.rows:
        print(f"- {row.figure}: {row.note}")
    if report.log_lines:
        print(f"\nWARNING or worse in the client logs ({len(report.log_lines)} lines):")
        for line in report.log_lines[:20]:
            print(f"  {line}")
    if args.json:
        out: dict[str, Any] = {"cores": os.cpu_count(), "load_average": [load_before, load_after]}
        out |= {"runs": args.runs, "runtime_s": round(runtime, 1)}
        out |= {"rows": [asdict(row) | {"met": row.met} for row in report.rows]}
        out |= {"nodes": [asdict(n) for n in report.nodes], "log": report.log_lines}
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

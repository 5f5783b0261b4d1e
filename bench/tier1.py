"""Tier 1 and the read path without FUSE, each figure beside its limit measured in the same run.

Run from the repo root: `.venv/bin/python bench/tier1.py [--size 1GiB] [--only hits] [--json PATH]`.
(a) tier-1 hits: a warm object read through `ReadPath.read` beside `os.pread` of a local
file, in 128 KiB and 4 MiB reads, best of 3; (b) a cold sequential read from a local
SeaweedFS in 1 MiB reads (what a sequential reader sends the mount) with read-ahead and
an empty tier 1, beside 16 ranged GETs of 4 MiB in flight through the CloudStore, best
of 3 (and what the disk takes of tier 1's writes alone), and what `tierfs warm` does
with that object (every chunk into an empty tier 1), best of 2; (c) `admit_after` 1
and 2: a 64 MiB hot set read between the slices of a 512 MiB one-off scan, tier 1 256 MiB.
SeaweedFS runs here on 127.0.0.1 with its files page-cached (as in bench/cloud.py). Every
byte read in (a) and (b) is checked against its source, outside the timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from cloud import GiB, MiB, bounded, parse_size, size_text, write_source
from tierfs.cache import files
from tierfs.cache.base import Origin
from tierfs.cache.chunk_cache import IO_THREADS, DiskChunkCache
from tierfs.chunks import Data, ObjectRef, chunk_ref
from tierfs.cloud.base import CloudStore
from tierfs.cloud.providers import local_store, s3_store
from tierfs.memory import tune_malloc
from tierfs.prefetch import SequentialReader
from tierfs.read_path import ReadPath
from tierfs.stats import NodeStats, Tier
from tierfs.warm import WarmProgress, warm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import servers  # noqa: E402  (tests/ is a folder on sys.path, not a package)

KiB = 2**10
TIMEOUT = 120.0  # seconds: the CloudStore deadline
CHUNK = 4 * MiB  # tierfs's default chunk size
SMALL_READ = 128 * KiB  # the kernel's default read-ahead, and so its FUSE reads by default
# What the kernel asks tierfs's mount for at a time in a sequential read (its read-ahead is
# raised to 4 MiB; requests are at most 1 MiB).
FUSE_READ = 2**20
IN_FLIGHT = 16  # ranged GETs of the raw limit, as ReadPath's max_parallel_fetches
WARM_RUNS = 5  # (a) is cheap (passes of 0.1 s) and noisy: best of 5
COLD_RUNS = 3
HOT = 64 * MiB
SCAN = 512 * MiB
BUDGET = 256 * MiB  # nvme_size in (c): four hot sets, half the scan
BIG = "big.bin"


@dataclass
class Row:
    """One figure beside its limit; `target` is the least share of the limit wanted."""

    part: str
    figure: str
    value: float
    limit: float
    unit: str
    limit_is: str
    target: float | None = None
    lower_is_better: bool = False
    note: str = ""

    @property
    def share(self) -> float:
        """How much of the limit the figure reaches (1.0: all of it)."""
        if self.lower_is_better:
            return self.limit / self.value if self.value else 1.0
        return self.value / self.limit if self.limit else 0.0


def progress(row: Row) -> Row:
    """`row`, printed as it comes."""
    print(
        f"  {row.part} {row.figure:<62} {row.value:>10,.1f} {row.unit:<6} "
        f"(limit {row.limit:,.1f}: {row.share:.0%})",
        file=sys.stderr,
    )
    return row


def check(source: Path, pieces: Iterable[bytes | memoryview], what: str) -> None:
    """Exit unless `pieces`, end to end, are the bytes of `source`."""
    with source.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        offset = 0
        for piece in pieces:
            if piece != data[offset : offset + len(piece)]:
                raise SystemExit(f"{what}: wrong bytes at {offset}")
            offset += len(piece)
        if offset != len(data):
            raise SystemExit(f"{what}: {offset} bytes, not {len(data)}")


async def read_span(
    read_path: ReadPath,
    reader: SequentialReader,
    start: int,
    end: int,
    piece: int,
    keep: list[bytes | memoryview] | None = None,
) -> int:
    """Read [start, end) of the reader's object in `piece` reads, one after another (as
    one thread reading a FUSE file); returns the bytes read, kept in `keep` if given."""
    got = 0
    for offset in range(start, end, piece):
        data = await read_path.read(reader.ref, offset, min(piece, end - offset), reader)
        got += len(data)
        if keep is not None:
            keep.append(data)
    return got


async def sequential(
    read_path: ReadPath, ref: ObjectRef, piece: int, source: Path | None = None
) -> float:
    """MiB/s of reading `ref` start to end through a handle's read-ahead, as FUSE does.

    With `source`, the bytes are kept and checked against it after the timing."""
    reader = read_path.open_reader(ref)
    kept: list[bytes | memoryview] | None = [] if source is not None else None
    try:
        started = time.perf_counter()
        got = await read_span(read_path, reader, 0, ref.size, piece, kept)
        seconds = time.perf_counter() - started
    finally:
        await reader.close()
    if got != ref.size:
        raise SystemExit(f"read of {ref.key}: {got} bytes, not {ref.size}")
    if source is not None and kept is not None:
        check(source, kept, f"ReadPath read of {ref.key}")
    return ref.size / MiB / seconds


def pread_pass(path: Path, piece: int) -> float:
    """MiB/s of `os.pread` of a local file start to end in `piece` reads."""
    size = path.stat().st_size
    with path.open("rb", buffering=0) as file:
        fd = file.fileno()
        started = time.perf_counter()
        got = sum(len(os.pread(fd, piece, offset)) for offset in range(0, size, piece))
        seconds = time.perf_counter() - started
    if got != size:
        raise SystemExit(f"pread of {path}: {got} bytes, not {size}")
    return size / MiB / seconds


async def parallel_get(store: CloudStore, ref: ObjectRef, source: Path | None = None) -> float:
    """The raw tier-3 limit: MiB/s of every 4 MiB range of `ref` as a GET through the
    CloudStore, IN_FLIGHT at a time (the pieces are checked against `source` if given)."""
    pieces: dict[int, Data] = {}

    async def one(start: int) -> None:
        length = min(CHUNK, ref.size - start)
        pieces[start] = await store.get_range(ref.key, start, length, ref.version)

    started = time.perf_counter()
    await bounded(IN_FLIGHT, (partial(one, start) for start in range(0, ref.size, CHUNK)))
    seconds = time.perf_counter() - started
    if source is not None:
        check(source, (pieces[start] for start in sorted(pieces)), "parallel GET")
    return ref.size / MiB / seconds


def disk_write(source: Path, folder: Path) -> float:
    """What the cold read's disk allows: MiB/s of writing `source` (in memory first) as
    tier 1 writes chunks read ahead, 4 MiB files around the page cache, IO_THREADS at
    once. Where it is below the GET limit, it bounds the cold read: every chunk read is
    written to tier 1."""
    data = source.read_bytes()
    folder.mkdir()
    starts = range(0, len(data), CHUNK)
    paths = [str(folder / str(at)) for at in starts]
    pieces = [memoryview(data)[at : at + CHUNK] for at in starts]
    with ThreadPoolExecutor(IO_THREADS) as pool:
        started = time.perf_counter()
        list(pool.map(partial(files.write_chunk, around_page_cache=True), paths, pieces))
        seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return len(data) / MiB / seconds


async def warm_connections(store: CloudStore) -> None:
    """One small PUT, then 32 parallel GETs of it, so connections exist before timing."""
    version = (await store.put("warm-up", b"w" * 4 * KiB)).version
    await bounded(32, [partial(store.get_range, "warm-up", 0, 4 * KiB, version)] * 32)


async def open_cache(root: Path, size: int, stats: NodeStats, admit: int = 1) -> DiskChunkCache:
    """A tier 1 in `root` whose reads may fill `size` bytes."""
    return await DiskChunkCache.create(
        root, nvme_size=size, peer_size=CHUNK, stats=stats, admit_after=admit
    )


# -- (a) tier-1 hits ------------------------------------------------------------------------


async def hit_rows(source: Path, work: Path) -> list[Row]:
    """A warm object through ReadPath beside os.pread of its source, read size by size."""
    size = source.stat().st_size
    stats = NodeStats()
    cache = await open_cache(work / "tier1-warm", size, stats)
    cloud = local_store(str(work / "bucket-a"), TIMEOUT)  # never asked: tier 1 has it all
    read_path = ReadPath(cache, cloud, chunk_size=CHUNK, stats=stats)
    ref = ObjectRef(BIG, "v1", size)
    rows = []
    try:
        with source.open("rb", buffering=0) as file:
            for index in range(-(-size // CHUNK)):
                chunk = chunk_ref(ref, index, CHUNK)
                data = os.pread(file.fileno(), chunk.length, chunk.start)
                if not await cache.store(chunk, data, Origin.LOCAL):
                    raise SystemExit(f"(a): tier 1 refused chunk {index}")
        # Both files written back before any timing: writeback of the just-written source
        # and chunks ran under the first passes and took up to 20% of them, at random.
        os.sync()
        # The first read of each chunk checks its checksum: done here, untimed.
        await sequential(read_path, ref, CHUNK, source)
        for piece in (SMALL_READ, CHUNK):
            ours = raw = 0.0
            for _ in range(WARM_RUNS):  # interleaved, so both meet the same noise
                ours = max(ours, await sequential(read_path, ref, piece))
                raw = max(raw, pread_pass(source, piece))
            figure = f"tier-1 hit, {size_text(size)}, {piece // KiB:,} KiB reads"
            limit_is = f"os.pread of a page-cached local file, {piece // KiB:,} KiB"
            rows.append(progress(Row("a", figure, ours, raw, "MiB/s", limit_is, 0.8)))
    finally:
        await read_path.close()
        await cache.close()
        await cloud.close()
    if stats.tier(Tier.CLOUD).hits:
        raise SystemExit("(a): a warm read reached the cloud")
    return rows


# -- (b) a cold sequential read -------------------------------------------------------------


async def cold_rows(source: Path, work: Path, store: CloudStore) -> list[Row]:
    """A cold read with read-ahead and an empty tier 1, beside the parallel GET limit."""
    size = source.stat().st_size
    ref = ObjectRef(BIG, (await store.put(BIG, source)).version, size)
    await warm_connections(store)
    ours = raw = disk = 0.0
    note = ""
    for run in range(COLD_RUNS):
        raw = max(raw, await parallel_get(store, ref, source))
        disk = max(disk, await asyncio.to_thread(disk_write, source, work / f"disk-{run}"))
        stats = NodeStats()
        root = work / f"tier1-cold-{run}"
        cache = await open_cache(root, 2 * size, stats)
        read_path = ReadPath(cache, store, chunk_size=CHUNK, stats=stats)
        try:
            rate = await sequential(read_path, ref, FUSE_READ, source)
            stored = time.perf_counter()
        finally:
            await read_path.close()
            await cache.close()  # waits for the chunks still being written
        if rate > ours:
            ours = rate
            fetched = stats.tier(Tier.CLOUD)
            note = (
                f"{fetched.hits} chunks fetched ({fetched.bytes / MiB:,.0f} MiB), "
                f"{stats.prefetched_chunks} by read-ahead; tier 1 done "
                f"{time.perf_counter() - stored:.1f} s after the last read"
            )
    figure = f"cold sequential read, {size_text(size)}, {FUSE_READ // KiB:,} KiB reads"
    limit_is = f"{IN_FLIGHT} x 4 MiB ranged get_range in flight (CloudStore)"
    note += f"; tier 1's disk alone {disk:,.0f} MiB/s ({IO_THREADS} O_DIRECT chunk writes at once)"
    rows = [progress(Row("b", figure, ours, raw, "MiB/s", limit_is, 0.8, note=note))]
    warmed = max([await warm_rate(store, ref, work / f"tier1-warm-{run}") for run in range(2)])
    figure = f"warm of the object into an empty tier 1 ({size_text(size)})"
    return [*rows, progress(Row("b", figure, warmed, raw, "MiB/s", limit_is))]


async def warm_rate(store: CloudStore, ref: ObjectRef, root: Path) -> float:
    """MiB/s of `tierfs warm`'s work on `ref`: every chunk into an empty tier 1."""
    stats = NodeStats()
    cache = await open_cache(root, 2 * ref.size, stats)
    read_path = ReadPath(cache, store, chunk_size=CHUNK, stats=stats)
    try:
        started = time.perf_counter()
        done = await warm(store, read_path, ref.key, WarmProgress())
        seconds = time.perf_counter() - started
    finally:
        await read_path.close()
        await cache.close()
    if done.fetched != ref.size:
        raise SystemExit(f"warm of {ref.key}: {done} (not all of its {ref.size} bytes fetched)")
    return ref.size / MiB / seconds


# -- (c) admission --------------------------------------------------------------------------


async def admission_run(
    store: CloudStore, hot: ObjectRef, scan: ObjectRef, root: Path, admit: int, slices: int
) -> list[Row]:
    """Hot pass, scan slice, ... then a last hot pass: its share served by tier 1, and the
    cloud bytes of the whole run."""
    stats = NodeStats()
    cache = await open_cache(root, BUDGET, stats, admit)
    read_path = ReadPath(cache, store, chunk_size=CHUNK, stats=stats)
    cloud = stats.tier(Tier.CLOUD)
    scanner = read_path.open_reader(scan)  # one handle scans the whole object
    started = time.perf_counter()
    try:
        step = scan.size // slices
        for start in range(0, scan.size, step):
            await sequential(read_path, hot, SMALL_READ)
            await read_span(read_path, scanner, start, start + step, SMALL_READ)
        before = cloud.bytes
        await sequential(read_path, hot, SMALL_READ)
        hit = 1 - (cloud.bytes - before) / hot.size
    finally:
        await scanner.close()
        await read_path.close()
        await cache.close()  # waits for the chunks still being written
        shutil.rmtree(root, ignore_errors=True)
    written = (len(cache) + stats.evictions) * CHUNK / MiB
    how = f"admit_after={admit}, scan in {slices} slices"
    note = (
        f"{written:,.0f} MiB written to tier 1 ({stats.not_cached} chunks not cached), "
        f"{stats.evictions} chunks evicted, {time.perf_counter() - started:.1f} s"
    )
    least = (hot.size + scan.size) / MiB  # every byte fetched once
    return [
        progress(Row("c", f"hot-set tier-1 hits afterwards, {how}", hit * 100, 100, "%", "all")),
        progress(
            Row(
                "c",
                f"cloud bytes fetched, {how}",
                cloud.bytes / MiB,
                least,
                "MiB",
                "each byte once (64 + 512 MiB)",
                lower_is_better=True,
                note=note,
            )
        ),
    ]


async def admission_rows(work: Path, store: CloudStore) -> list[Row]:
    """Each admission setting with the hot set re-read every 64 MiB and every 256 MiB of
    scan (LRU alone keeps the hot set in the first case, not in the second)."""
    hot = ObjectRef("hot.bin", (await store.put("hot.bin", os.urandom(HOT))).version, HOT)
    scan = ObjectRef("scan.bin", (await store.put("scan.bin", os.urandom(SCAN))).version, SCAN)
    rows = []
    for slices in (SCAN // HOT, SCAN // BUDGET):
        for admit in (1, 2):
            root = work / f"tier1-admit-{admit}-{slices}"
            rows += await admission_run(store, hot, scan, root, admit, slices)
    return rows


async def cloud_rows(
    source: Path, work: Path, server: servers.S3Server, *, cold_only: bool = False
) -> list[Row]:
    """(b) and, unless `cold_only`, (c) on a new bucket of `server`."""
    store = s3_store(
        bucket=server.create_bucket(),
        region=server.region,
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        timeout=TIMEOUT,
    )
    try:
        rows = await cold_rows(source, work, store)
        return rows if cold_only else rows + await admission_rows(work, store)
    finally:
        await store.close()


def table(rows: list[Row]) -> str:
    """A plain aligned table: text columns left, figures right."""
    head = ["", "figure", "tierfs", "limit", "unit", "of limit", "target", "limit is; note"]
    cells = [head]
    for r in rows:
        target = "-" if r.target is None else f">= {r.target:.0%}"
        about = "; ".join(filter(None, [r.limit_is, r.note]))
        values = [f"{r.value:,.1f}", f"{r.limit:,.1f}", r.unit, f"{r.share:.0%}", target]
        cells.append([r.part, r.figure, *values, about])
    widths = [max(len(line[column]) for line in cells) for column in range(len(head))]
    lines = []
    for line in cells:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        for column in (2, 3, 5):
            padded[column] = line[column].rjust(widths[column])
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=GiB, help="object of (a), (b) (1GiB)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--only", choices=["hits", "cold"], help="run only (a) the tier-1 hits or (b) the cold read"
    )
    args = parser.parse_args()
    tune_malloc()  # as a client does at its start
    began, load_before = time.monotonic(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tierfs-bench-"))
    server = None
    try:
        source = write_source(work / "source", args.size)
        rows = []
        if args.only != "cold":
            print(f"(a) tier-1 hits on a {size_text(args.size)} object", file=sys.stderr)
            rows += asyncio.run(hit_rows(source, work))
        if args.only != "hits":
            print("(b), (c) on SeaweedFS", file=sys.stderr)
            server = servers.start_seaweedfs(work / "seaweedfs")
            rows += asyncio.run(cloud_rows(source, work, server, cold_only=args.only == "cold"))
    finally:
        if server is not None:
            server.stop()
        # Only now: an ext4 without a journal (as here) skips the inodes freed in the last
        # minute when it makes a file, so deleting a run's 256 chunk files made the next
        # run's chunk writes scan past them (~8% of the cold read, in its profile).
        shutil.rmtree(work, ignore_errors=True)
    runtime, load_after = time.monotonic() - began, os.getloadavg()[0]
    print(table(rows))
    print(
        f"\n{os.cpu_count()} cores, load average {load_before:.2f} before and {load_after:.2f} "
        f"after, {runtime:.0f} s. Best of {WARM_RUNS} runs in (a), of {COLD_RUNS} in (b), one "
        "in (c);\n(a) and (b) checked every byte read against its source."
    )
    if args.json:
        run = {"cores": os.cpu_count(), "load_average": [load_before, load_after]}
        rows_out = [asdict(row) | {"share": row.share} for row in rows]
        report = {**run, "runtime_s": round(runtime, 1), "rows": rows_out}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

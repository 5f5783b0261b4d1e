"""Through a real mount: each figure beside its raw limit measured in the same run and its target.

Run from the repo root, as root: `.venv/bin/python bench/fuse.py [--json PATH]`. `tierfs client`
runs as its own process on a local SeaweedFS (the S3 provider, default flags); the data goes
into the bucket through the CloudStore before any mount. The targets are the best of rclone
1.60 and s3fs 1.90 measured on this kind of machine. "Cold" is a new mount with an empty tier-1
dir, after `sync; echo 3 > /proc/sys/vm/drop_caches`; "warm" the same mount again. "Without
the page cache" drops the caches again (not O_DIRECT): tier 1 is then read from disk, as its
limit is. Every byte read or written is checked against its source, outside the timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import xxhash

from cloud import GiB, MiB, bounded, write_source
from tier1 import KiB, parallel_get, warm_connections
from tierfs.chunks import ObjectRef
from tierfs.cloud.base import CloudStore
from tierfs.cloud.providers import open_store
from tierfs.settings import ClientSettings, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import servers  # noqa: E402  (tests/ is a folder on sys.path, not a package)
from cloud_targets import target_flags  # noqa: E402
from mounts import Mount  # noqa: E402

BIG, SIZE = "big.bin", GiB
PIECE = MiB  # each read() and write() of the sequential figures
RANDOM_READS, RANDOM_SIZE = 2000, 4 * KiB
THREADS = 16  # reader threads of the random and small-file figures
IN_FLIGHT = 16  # requests in flight of their cloud limits
SMALL_FILES, SMALL_SIZE = 1000, 16 * KiB
ENTRIES = 10_000
WRITE_SIZE = 256 * MiB
MB = 10**6  # the RSS target is in decimal megabytes
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass
class Row:
    """One figure beside its limit (None: there is none) and its target."""

    figure: str
    unit: str
    value: float
    limit: float | None
    target: float
    limit_is: str = ""
    note: str = ""
    lower_is_better: bool = False

    @property
    def ahead(self) -> bool:
        """Whether tierfs beats the target."""
        return self.value < self.target if self.lower_is_better else self.value > self.target


def shown(made: Row) -> Row:
    """`made`, printed as it comes."""
    limit = "-" if made.limit is None else f"{made.limit:,.0f}"
    print(f"  {made.figure:<38} {made.value:>9,.0f} {made.unit:<8} limit {limit}", file=sys.stderr)
    return made


def drop_caches() -> None:
    """Write dirty pages back, then empty the kernel's page, dentry and inode caches."""
    os.sync()
    DROP_CACHES.write_text("3\n")


@dataclass
class Bench:
    """The bucket, a CloudStore on it, and every client started (stopped at the end)."""

    work: Path
    flags: dict[str, str]
    env: dict[str, str]
    store: CloudStore
    mounts: list[Mount] = field(default_factory=list)
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)  # VmRSS, VmHWM in MB

    def cold_mount(self, name: str) -> Mount:
        """A new client on an empty tier-1 dir, started once the kernel caches are dropped."""
        root = self.work / name
        root.mkdir()
        flags = self.flags | {"port": str(servers.free_ports(1)[0])}
        mount = Mount(root / "mnt", root / "nvme", flags, self.env, root / "client.log")
        self.mounts.append(mount)
        drop_caches()
        return mount.start()

    def stop(self, mount: Mount) -> None:
        """Note the client's memory, stop it, and exit if it failed or logged an error."""
        assert mount.proc is not None
        status = Path(f"/proc/{mount.proc.pid}/status").read_text().splitlines()
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.endswith("kB")}
        self.rss[mount.path.parent.name] = (kib["VmRSS"] * KiB / MB, kib["VmHWM"] * KiB / MB)
        code = mount.stop()
        log = mount.log.read_text(errors="replace")
        if code != 0 or " ERROR " in log or "Traceback" in log:
            raise SystemExit(f"tierfs client exited {code}; {mount.log}:\n{mount.log_tail()}")


# -- what is timed: the same function on the mount and on its local limit ---------------------


def read_into(path: Path, buffer: bytearray, digest: bytes) -> float:
    """MiB/s of reading `path` whole into `buffer` in PIECE reads; exits unless the bytes
    hash to `digest` (checked after the timing)."""
    view, got = memoryview(buffer), 0
    with path.open("rb", buffering=0) as file:
        started = time.perf_counter()
        while got < len(buffer) and (count := file.readinto(view[got : got + PIECE])):
            got += count
        seconds = time.perf_counter() - started
    if got != len(buffer) or xxhash.xxh3_128_digest(buffer) != digest:
        raise SystemExit(f"read of {path}: wrong bytes ({got} of {len(buffer)} read)")
    return got / MiB / seconds


def random_reads(path: Path, offsets: Sequence[int], source: bytearray) -> float:
    """Reads/s of RANDOM_SIZE preads of `path` at `offsets`, from THREADS threads."""
    fd = os.open(path, os.O_RDONLY)

    def worker(part: Sequence[int]) -> None:
        for offset in part:
            if os.pread(fd, RANDOM_SIZE, offset) != source[offset : offset + RANDOM_SIZE]:
                raise SystemExit(f"random read of {path} at {offset}: wrong bytes")

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            started = time.perf_counter()
            parts = [pool.submit(worker, offsets[n::THREADS]) for n in range(THREADS)]
            for part in parts:
                part.result()
            seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    return len(offsets) / seconds


def read_tree(folder: Path, bodies: dict[str, bytes]) -> float:
    """Files/s of listing `folder` and reading every file in it whole, from THREADS threads."""

    def worker(names: Sequence[str]) -> None:
        for name in names:
            with (folder / name).open("rb", buffering=0) as file:
                if file.readall() != bodies[name]:
                    raise SystemExit(f"{folder / name}: wrong bytes")

    with ThreadPoolExecutor(THREADS) as pool:
        started = time.perf_counter()
        names = sorted(os.listdir(folder))
        parts = [pool.submit(worker, names[n::THREADS]) for n in range(THREADS)]
        for part in parts:
            part.result()
        seconds = time.perf_counter() - started
    if names != sorted(bodies):
        raise SystemExit(f"{folder}: {len(names)} files, not the {len(bodies)} put")
    return len(names) / seconds


def ls_l(folder: Path) -> float:
    """Entries/s of `ls -l` of `folder`; exits unless it lists ENTRIES."""
    started = time.perf_counter()
    listing = subprocess.run(
        ["ls", "-l", str(folder)], capture_output=True, check=True, env={"LC_ALL": "C"}
    )
    seconds = time.perf_counter() - started
    if (count := len(listing.stdout.splitlines()) - 1) != ENTRIES:  # less the "total" line
        raise SystemExit(f"ls -l {folder}: {count} entries, not {ENTRIES}")
    return ENTRIES / seconds


def write_durable(path: Path, data: bytes) -> float:
    """MiB/s of writing `data` to a new file in PIECE writes, then fsync and close."""
    view = memoryview(data)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, view[written : written + PIECE])
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data) / MiB / (time.perf_counter() - started)


# -- the cloud limits -------------------------------------------------------------------------


async def cloud_random_reads(store: CloudStore, ref: ObjectRef, offsets: Sequence[int]) -> float:
    """Reads/s of RANDOM_SIZE ranged GETs at `offsets`, IN_FLIGHT at a time."""

    async def one(offset: int) -> None:
        await store.get_range(ref.key, offset, RANDOM_SIZE, ref.version)

    started = time.perf_counter()
    await bounded(IN_FLIGHT, (partial(one, offset) for offset in offsets))
    return len(offsets) / (time.perf_counter() - started)


async def cloud_tree(store: CloudStore, prefix: str, bodies: dict[str, bytes]) -> float:
    """Objects/s of listing `prefix` and GETting every object under it, IN_FLIGHT at a time."""

    async def one(key: str, version: str) -> None:
        if await store.get_range(key, 0, SMALL_SIZE, version) != bodies[key[len(prefix) :]]:
            raise SystemExit(f"GET {key}: wrong bytes")

    started = time.perf_counter()
    listing = await store.list_all(prefix)
    await bounded(IN_FLIGHT, (partial(one, meta.key, meta.version) for meta in listing.objects))
    return len(listing.objects) / (time.perf_counter() - started)


async def cloud_list(store: CloudStore, prefix: str) -> float:
    """Entries/s of listing `prefix`, every page."""
    started = time.perf_counter()
    count = len((await store.list_all(prefix)).objects)
    return count / (time.perf_counter() - started)


# -- the figures ------------------------------------------------------------------------------


async def sequential_rows(
    bench: Bench, ref: ObjectRef, source: Path, buffer: bytearray
) -> list[Row]:
    """Cold, then warm with and without the page cache, in PIECE reads from one thread."""
    with source.open("rb", buffering=0) as file:
        file.readinto(buffer)  # touches every page: no timed read pays for a fault
    digest = xxhash.xxh3_128_digest(buffer)
    drop_caches()
    cloud = await parallel_get(bench.store, ref)
    drop_caches()
    disk = await asyncio.to_thread(read_into, source, buffer, digest)
    cached = await asyncio.to_thread(read_into, source, buffer, digest)
    mount = bench.cold_mount("sequential")
    path = mount.path / BIG
    cold = await asyncio.to_thread(read_into, path, buffer, digest)
    warm = await asyncio.to_thread(read_into, path, buffer, digest)
    drop_caches()
    uncached = await asyncio.to_thread(read_into, path, buffer, digest)
    bench.stop(mount)
    reads = "1 MiB reads, one thread"
    return [
        shown(
            Row(
                "sequential read 1 GiB, cold",
                "MiB/s",
                cold,
                cloud,
                448,
                f"{IN_FLIGHT} x 4 MiB GETs in flight",
                reads,
            )
        ),
        shown(
            Row(
                "sequential re-read, page cache",
                "MiB/s",
                warm,
                cached,
                1361,
                "read of a page-cached local file",
                "same mount, file closed and opened again",
            )
        ),
        shown(
            Row(
                "sequential re-read, caches dropped",
                "MiB/s",
                uncached,
                disk,
                478,
                "read of a local file, caches dropped",
                "tier 1 read from disk",
            )
        ),
    ]


async def random_rows(bench: Bench, ref: ObjectRef, source: Path, copy: bytearray) -> list[Row]:
    """RANDOM_READS reads of RANDOM_SIZE across the big file, cold, then warm elsewhere."""
    rng = random.Random(7)
    cold_at, warm_at = (
        [rng.randrange(SIZE // RANDOM_SIZE) * RANDOM_SIZE for _ in range(RANDOM_READS)]
        for _ in range(2)
    )
    drop_caches()
    cloud = await cloud_random_reads(bench.store, ref, cold_at)
    await asyncio.to_thread(read_into, source, copy, xxhash.xxh3_128_digest(copy))  # cached
    local = await asyncio.to_thread(random_reads, source, warm_at, copy)
    mount = bench.cold_mount("random")
    cold = await asyncio.to_thread(random_reads, mount.path / BIG, cold_at, copy)
    warm = await asyncio.to_thread(random_reads, mount.path / BIG, warm_at, copy)
    bench.stop(mount)
    how = f"{THREADS} threads; warm at other offsets than cold (no page-cache hits)"
    return [
        shown(
            Row(
                "random 4 KiB reads, cold",
                "reads/s",
                cold,
                cloud,
                982,
                f"4 KiB GETs, {IN_FLIGHT} in flight",
                how,
            )
        ),
        shown(
            Row(
                "random 4 KiB reads, warm",
                "reads/s",
                warm,
                local,
                9014,
                "preads of a page-cached local file",
                how,
            )
        ),
    ]


async def small_rows(bench: Bench, bodies: dict[str, bytes]) -> list[Row]:
    """SMALL_FILES files listed and read whole, cold, then warm."""
    drop_caches()
    cloud = await cloud_tree(bench.store, "small/", bodies)
    local_dir = bench.work / "small-local"
    local_dir.mkdir()
    for name, body in bodies.items():
        (local_dir / name).write_bytes(body)
    local = await asyncio.to_thread(read_tree, local_dir, bodies)
    mount = bench.cold_mount("small")
    cold = await asyncio.to_thread(read_tree, mount.path / "small", bodies)
    warm = await asyncio.to_thread(read_tree, mount.path / "small", bodies)
    bench.stop(mount)
    how = f"{SMALL_SIZE // KiB} KiB each: listdir, then open/read/close from {THREADS} threads"
    return [
        shown(
            Row(
                f"{SMALL_FILES} small files, cold",
                "files/s",
                cold,
                cloud,
                474,
                f"LIST + GETs, {IN_FLIGHT} in flight",
                how,
            )
        ),
        shown(
            Row(
                f"{SMALL_FILES} small files, warm",
                "files/s",
                warm,
                local,
                1053,
                "the same on a page-cached local dir",
                how,
            )
        ),
    ]


async def listing_rows(bench: Bench) -> list[Row]:
    """`ls -l` of a directory of ENTRIES files, cold, then warm."""
    drop_caches()
    cloud = await cloud_list(bench.store, "entries/")
    local_dir = bench.work / "entries-local"
    local_dir.mkdir()
    for n in range(ENTRIES):
        (local_dir / f"{n:05d}").touch()
    await asyncio.to_thread(ls_l, local_dir)  # warm
    local = await asyncio.to_thread(ls_l, local_dir)
    mount = bench.cold_mount("listing")
    cold = await asyncio.to_thread(ls_l, mount.path / "entries")
    warm = await asyncio.to_thread(ls_l, mount.path / "entries")
    bench.stop(mount)
    return [
        shown(
            Row(
                f"ls -l of {ENTRIES:,} entries, cold",
                "entries/s",
                cold,
                cloud,
                4685,
                "one LIST, every page",
            )
        ),
        shown(
            Row(
                f"ls -l of {ENTRIES:,} entries, warm",
                "entries/s",
                warm,
                local,
                45819,
                "ls -l of a cached local dir",
                "run again at once",
            )
        ),
    ]


async def write_rows(bench: Bench, source: Path) -> list[Row]:
    """WRITE_SIZE written to a new file until close returns, then checked in the cloud."""
    with source.open("rb") as file:
        data = file.read(WRITE_SIZE)
    local = bench.work / "write-source"
    local.write_bytes(data)
    started = time.perf_counter()
    await bench.store.put("limit-write.bin", local)
    cloud = WRITE_SIZE / MiB / (time.perf_counter() - started)
    mount = bench.cold_mount("write")
    rate = await asyncio.to_thread(write_durable, mount.path / "written.bin", data)
    meta = await bench.store.head("written.bin")
    if await bench.store.get_range(meta.key, 0, meta.size, meta.version) != data:
        raise SystemExit("written.bin: the cloud does not have the bytes written")
    bench.stop(mount)
    return [
        shown(
            Row(
                "write 256 MiB until durable",
                "MiB/s",
                rate,
                cloud,
                115,
                "CloudStore.put of a local file",
                "1 MiB writes, fsync, close; then checked in the bucket",
            )
        ),
    ]


def rss_row(bench: Bench) -> Row:
    """The largest VmRSS of the clients, each read just before it stopped."""
    name, (rss, peak) = max(bench.rss.items(), key=lambda item: item[1][0])
    note = f"largest of {len(bench.rss)} clients, after the {name} figures; VmHWM {peak:,.0f} MB"
    return shown(
        Row("client RSS after the run", "MB", rss, None, 200, "", note, lower_is_better=True)
    )


async def fill(store: CloudStore, source: Path) -> tuple[ObjectRef, dict[str, bytes]]:
    """Put the big object, the small files and the directory entries into the bucket."""
    ref = ObjectRef(BIG, (await store.put(BIG, source)).version, SIZE)
    bodies = {f"{n:04d}": os.urandom(SMALL_SIZE) for n in range(SMALL_FILES)}
    await bounded(32, (partial(store.put, f"small/{name}", body) for name, body in bodies.items()))
    await bounded(32, (partial(store.put, f"entries/{n:05d}", b"") for n in range(ENTRIES)))
    await warm_connections(store)
    return ref, bodies


async def run(bench: Bench, source: Path) -> list[Row]:
    """Every figure, in turn; closes the store."""
    try:
        started = time.perf_counter()
        ref, bodies = await fill(bench.store, source)
        print(f"data put in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        buffer = bytearray(SIZE)
        rows = await sequential_rows(bench, ref, source, buffer)
        rows += await random_rows(bench, ref, source, buffer)  # the big file's bytes by now
        rows += await small_rows(bench, bodies)
        rows += await listing_rows(bench)
        rows += await write_rows(bench, source)
    finally:
        await bench.store.close()
    return [*rows, rss_row(bench)]


def table(rows: list[Row]) -> str:
    """A plain aligned table: text columns left, figures right."""
    head = ["figure", "unit", "tierfs", "limit", "target", "ahead", "limit is; note"]
    cells = [head]
    for r in rows:
        limit = "-" if r.limit is None else f"{r.limit:,.0f}"
        target = f"{'< ' if r.lower_is_better else ''}{r.target:,}"
        about = "; ".join(filter(None, [r.limit_is, r.note]))
        cells.append(
            [r.figure, r.unit, f"{r.value:,.0f}", limit, target, "yes" if r.ahead else "NO", about]
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(head))]
    lines = []
    for line in cells:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        for column in (2, 3, 4):
            padded[column] = line[column].rjust(widths[column])
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not os.access(DROP_CACHES, os.W_OK):
        raise SystemExit(
            f"bench/fuse.py: cannot write {DROP_CACHES} for the cold figures: run as root"
        )
    began, load_before = time.monotonic(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tierfs-bench-"))
    server = bench = None
    try:
        source = write_source(work / "source", SIZE)
        server = servers.start_seaweedfs(work / "seaweedfs")
        flags, env = target_flags("s3-seaweedfs", server, work)
        store = open_store(load_settings(ClientSettings, flags, env))
        bench = Bench(work, flags, env, store)
        rows = asyncio.run(run(bench, source))
    finally:
        if bench is not None:
            for mount in bench.mounts:
                mount.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    runtime, load_after = time.monotonic() - began, os.getloadavg()[0]
    print(table(rows))
    print(
        f"\n{os.cpu_count()} cores, load average {load_before:.2f} before and {load_after:.2f} "
        f"after, {runtime:.0f} s. One timed run per figure; every byte read or written was\n"
        "checked. Targets: the best of rclone 1.60 and s3fs 1.90 on this kind of machine."
    )
    if args.json:
        run_info = {"cores": os.cpu_count(), "load_average": [load_before, load_after]}
        rows_out = [asdict(r) | {"ahead": r.ahead} for r in rows]
        report = {**run_info, "runtime_s": round(runtime, 1), "rows": rows_out}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

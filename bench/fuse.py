"""Through a real mount: each figure beside its raw limit measured in the same run and its target.

Run from the repo root, as root: `.venv/bin/python bench/fuse.py [--runs 2] [--json PATH]
[--only GROUP ...] [--rivals CONFIGURATION ... | none]` (groups: sequential, random, small,
listing, write). `tierfs client` runs as its own process on a local SeaweedFS (the S3
provider, default flags); the data goes into the bucket through the CloudStore before any
mount. The rivals (`bench/rivals.py`: rclone 1.60 and s3fs 1.90, each with and without its
disk cache) mount the same bucket and are timed by the same functions in every run, in turn
with tierfs; the targets are the best of them as the issue measured them on this kind of
machine another day. "Cold" is a new mount with an empty cache dir, after `sync; echo 3 >
/proc/sys/vm/drop_caches`; "warm" the same mount again. "Caches dropped" drops them again
(not O_DIRECT): tier 1 is then read from disk, as its limit is. A write is timed until the
object is in the bucket. Each figure and each limit is the best of `--runs` runs (the
machine is shared); every byte read or written is checked against its source, outside the
timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from random import Random

import xxhash

from cloud import GiB, MiB, bounded, write_source
from tier1 import KiB, parallel_get, warm_connections
from tierfs.chunks import ObjectRef
from tierfs.cloud.base import CloudStore
from tierfs.cloud.providers import open_store
from tierfs.errors import ObjectNotFoundError
from tierfs.settings import ClientSettings, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import servers  # noqa: E402  (tests/ is a folder on sys.path, not a package)
from cloud_targets import target_flags  # noqa: E402
from mounts import Mount  # noqa: E402
from rivals import RIVALS, RivalMount, require  # noqa: E402

BIG, SIZE = "big.bin", GiB
PIECE = MiB  # each read() and write() of the sequential figures
RANDOM_READS, RANDOM_SIZE = 2000, 4 * KiB
THREADS = 16  # reader threads of the random and small-file figures
IN_FLIGHT = 16  # requests in flight of their cloud limits
SMALL_FILES, SMALL_SIZE = 1000, 16 * KiB
ENTRIES = 10_000
WRITE_SIZE = 256 * MiB
MB = 10**6  # the RSS target is in decimal megabytes
# A client's RSS "at rest" is read this long after its last figure: tierfs hands the chunk
# buffers it freed back to the system once its reads have stopped for a second or two.
AT_REST = 3.0  # seconds
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


# figure: (unit, target, the limit beside it, how it is measured)
FIGURES: dict[str, tuple[str, float, str, str]] = {
    "sequential read 1 GiB, cold": (
        "MiB/s", 448, f"{IN_FLIGHT} x 4 MiB GETs in flight", "1 MiB reads, one thread"
    ),
    "sequential re-read, page cache": (
        "MiB/s", 1361, "read of a page-cached local file", "closed and opened again"
    ),
    "sequential re-read, caches dropped": (
        "MiB/s", 478, "read of a local file, caches dropped", "tier 1 read from disk"
    ),
    "random 4 KiB reads, cold": (
        "reads/s", 982, f"4 KiB GETs, {IN_FLIGHT} in flight", f"{THREADS} threads"
    ),
    "random 4 KiB reads, warm": (
        "reads/s", 9014, "the same on a page-cached local file", "other offsets than cold"
    ),
    f"{SMALL_FILES} small files, cold": (
        "files/s",
        474,
        f"LIST + GETs, {IN_FLIGHT} in flight",
        f"{SMALL_SIZE // KiB} KiB each; listdir, then open/read/close from {THREADS} threads",
    ),
    f"{SMALL_FILES} small files, warm": ("files/s", 1053, "the same on a cached local dir", ""),
    f"ls -l of {ENTRIES:,} entries, cold": ("entries/s", 4685, "one LIST, every page", ""),
    f"ls -l of {ENTRIES:,} entries, warm": (
        "entries/s", 45819, "ls -l of a page-cached local dir", "run again at once"
    ),
    "write 256 MiB until durable": (
        "MiB/s", 115, "CloudStore.put of a local file", "1 MiB writes, fsync, close"
    ),
}  # fmt: skip
RSS = "client RSS at peak (VmHWM)"
GROUPS = ["sequential", "random", "small", "listing", "write"]  # of figures, for --only
TIERFS = "tierfs"
DURABLE_WITHIN = 300.0  # seconds a written object may take to reach the bucket
Measured = dict[str, tuple[float, float]]  # figure -> (the mounted system's, limit)


@dataclass
class Row:
    """One figure beside its limit (None: there is none) and its target."""

    figure: str
    unit: str
    value: float
    limit: float | None
    target: float
    about: str
    rival: float | None = None  # the best rival's figure in the same run
    rival_is: str = ""  # which configuration that was
    lower_is_better: bool = False

    def beats(self, other: float) -> bool:
        return self.value < other if self.lower_is_better else self.value > other

    @property
    def ahead(self) -> bool:
        """Whether tierfs beats the target."""
        return self.beats(self.target)

    @property
    def ahead_of_rivals(self) -> bool | None:
        """Whether tierfs beats every rival in the same run (None: none was measured)."""
        return None if self.rival is None else self.beats(self.rival)


def drop_caches() -> None:
    """Write dirty pages back, then empty the kernel's page, dentry and inode caches."""
    os.sync()
    DROP_CACHES.write_text("3\n")


@dataclass
class Bench:
    """The bucket, a CloudStore on it, the system being measured (tierfs or a rival's
    configuration), and every client started (stopped at the end)."""

    work: Path
    flags: dict[str, str]
    env: dict[str, str]
    store: CloudStore
    system: str = TIERFS
    mounts: list[Mount | RivalMount] = field(default_factory=list)
    # VmRSS, VmHWM in MB of each client, by system and mount
    rss: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    # CPU seconds (user and system) each client spent, by system and mount: a figure the
    # machine's slow spells move less than the timings (the clients' own work)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)

    def cold_mount(self, name: str) -> Mount | RivalMount:
        """A new client of `system` on an empty cache dir, started once the kernel caches
        are dropped."""
        root = self.work / f"{self.system.replace(' ', '-')}-{name}-{len(self.mounts) + 1}"
        root.mkdir()
        mount: Mount | RivalMount
        if self.system == TIERFS:
            flags = self.flags | {"port": str(servers.free_ports(1)[0])}
            mount = Mount(root / "mnt", root / "nvme", flags, self.env, root / "client.log")
        else:
            log = root / "client.log"
            mount = RivalMount(self.system, root / "mnt", root / "cache", self.flags, self.env, log)
        self.mounts.append(mount)
        drop_caches()
        return mount.start()

    def stop(self, mount: Mount | RivalMount) -> None:
        """Note the client's memory (at rest, and its peak), stop it, and exit if it failed
        (or tierfs logged an error)."""
        assert mount.proc is not None
        time.sleep(AT_REST)
        status = Path(f"/proc/{mount.proc.pid}/status").read_text().splitlines()
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.endswith("kB")}
        memory = (kib["VmRSS"] * KiB / MB, kib["VmHWM"] * KiB / MB)
        self.rss.setdefault(self.system, {})[mount.path.parent.name] = memory
        stat = Path(f"/proc/{mount.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        self.cpu.setdefault(self.system, {})[mount.path.parent.name] = cpu
        print(
            f"  {mount.path.parent.name}: {cpu:.2f} s of CPU, {int(stat[7]):,} page faults, "
            f"RSS at rest {memory[0]:,.0f} MB, at peak {memory[1]:,.0f}",
            file=sys.stderr,
        )
        code = mount.stop()
        log = mount.log.read_text(errors="replace")
        failed = self.system == TIERFS and (" ERROR " in log or "Traceback" in log)
        if code != 0 or failed:
            raise SystemExit(f"{self.system} exited {code}; {mount.log}:\n{mount.log_tail()}")


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


def preads(path: Path, offsets: Sequence[int], source: bytearray) -> float:
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


def write_closed(path: Path, data: bytes) -> None:
    """Write `data` to a new file in PIECE writes, then fsync and close."""
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, view[written : written + PIECE])
        os.fsync(fd)
    finally:
        os.close(fd)


async def in_bucket(store: CloudStore, key: str, size: int) -> None:
    """Return once the bucket holds `key` at `size` bytes (at once for tierfs, whose close
    returns when it does; rclone's cache uploads after close); exit after DURABLE_WITHIN."""
    deadline = time.monotonic() + DURABLE_WITHIN
    while True:
        try:
            if (await store.head(key)).size == size:
                return
        except ObjectNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{key}: not in the bucket {DURABLE_WITHIN:.0f} s after close")
        await asyncio.sleep(0.01)


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


# -- the figures: each function measures its figures on a new mount ---------------------------


@dataclass(frozen=True)
class Data:
    """What is in the bucket, and its local copies for the limits."""

    ref: ObjectRef  # the big object
    source: Path  # its bytes
    bodies: dict[str, bytes]  # the small files by name
    small_dir: Path  # local copies of the small files
    entries_dir: Path  # ENTRIES empty local files


async def sequential_figures(bench: Bench, data: Data, buffer: bytearray) -> Measured:
    """Cold, then warm with and without the page cache; leaves the big file in `buffer`."""
    with data.source.open("rb", buffering=0) as file:
        file.readinto(buffer)  # touches every page: no timed read pays for a fault
    digest = xxhash.xxh3_128_digest(buffer)
    drop_caches()
    cloud = await parallel_get(bench.store, data.ref)
    drop_caches()
    disk = await asyncio.to_thread(read_into, data.source, buffer, digest)
    cached = await asyncio.to_thread(read_into, data.source, buffer, digest)
    mount = bench.cold_mount("sequential")
    path = mount.path / BIG
    cold = await asyncio.to_thread(read_into, path, buffer, digest)
    warm = await asyncio.to_thread(read_into, path, buffer, digest)
    drop_caches()
    uncached = await asyncio.to_thread(read_into, path, buffer, digest)
    bench.stop(mount)
    return {
        "sequential read 1 GiB, cold": (cold, cloud),
        "sequential re-read, page cache": (warm, cached),
        "sequential re-read, caches dropped": (uncached, disk),
    }


async def random_figures(bench: Bench, data: Data, buffer: bytearray) -> Measured:
    """RANDOM_READS reads of RANDOM_SIZE across the big file: cold, then warm at other
    offsets (none was read before: a system serves them from its cache, which for tierfs
    is the page cache it filled with the chunks the cold reads fetched). `buffer` holds
    the file's bytes."""
    digest = xxhash.xxh3_128_digest(buffer)
    rng = Random(7)
    cold_at, warm_at = (
        [rng.randrange(SIZE // RANDOM_SIZE) * RANDOM_SIZE for _ in range(RANDOM_READS)]
        for _ in range(2)
    )
    drop_caches()
    cloud = await cloud_random_reads(bench.store, data.ref, cold_at)
    await asyncio.to_thread(read_into, data.source, buffer, digest)  # into the page cache
    local = await asyncio.to_thread(preads, data.source, warm_at, buffer)
    mount = bench.cold_mount("random")
    cold = await asyncio.to_thread(preads, mount.path / BIG, cold_at, buffer)
    warm = await asyncio.to_thread(preads, mount.path / BIG, warm_at, buffer)
    bench.stop(mount)
    return {"random 4 KiB reads, cold": (cold, cloud), "random 4 KiB reads, warm": (warm, local)}


async def small_file_figures(bench: Bench, data: Data) -> Measured:
    """SMALL_FILES files listed and read whole, cold, then warm."""
    drop_caches()
    cloud = await cloud_tree(bench.store, "small/", data.bodies)
    await asyncio.to_thread(read_tree, data.small_dir, data.bodies)  # into the page cache
    local = await asyncio.to_thread(read_tree, data.small_dir, data.bodies)
    mount = bench.cold_mount("small")
    cold = await asyncio.to_thread(read_tree, mount.path / "small", data.bodies)
    warm = await asyncio.to_thread(read_tree, mount.path / "small", data.bodies)
    bench.stop(mount)
    return {
        f"{SMALL_FILES} small files, cold": (cold, cloud),
        f"{SMALL_FILES} small files, warm": (warm, local),
    }


async def listing_figures(bench: Bench, data: Data) -> Measured:
    """`ls -l` of a directory of ENTRIES files, cold, then warm."""
    drop_caches()
    cloud = await cloud_list(bench.store, "entries/")
    await asyncio.to_thread(ls_l, data.entries_dir)  # into the dentry and inode caches
    local = await asyncio.to_thread(ls_l, data.entries_dir)
    mount = bench.cold_mount("listing")
    cold = await asyncio.to_thread(ls_l, mount.path / "entries")
    warm = await asyncio.to_thread(ls_l, mount.path / "entries")
    bench.stop(mount)
    return {
        f"ls -l of {ENTRIES:,} entries, cold": (cold, cloud),
        f"ls -l of {ENTRIES:,} entries, warm": (warm, local),
    }


async def write_figures(bench: Bench, data: Data) -> Measured:
    """WRITE_SIZE written to a new file until close returns, then checked in the bucket."""
    with data.source.open("rb") as file:
        body = file.read(WRITE_SIZE)
    local = bench.work / "write-source"
    local.write_bytes(body)
    started = time.perf_counter()
    await bench.store.put("limit-write.bin", local)
    cloud = WRITE_SIZE / MiB / (time.perf_counter() - started)
    mount = bench.cold_mount("write")
    key = f"written-{len(bench.mounts)}.bin"
    started = time.perf_counter()
    await asyncio.to_thread(write_closed, mount.path / key, body)
    await in_bucket(bench.store, key, len(body))
    rate = WRITE_SIZE / MiB / (time.perf_counter() - started)
    meta = await bench.store.head(key)
    if await bench.store.get_range(key, 0, meta.size, meta.version) != body:
        raise SystemExit(f"{key}: the bucket does not hold the bytes written")
    bench.stop(mount)
    return {"write 256 MiB until durable": (rate, cloud)}


async def fill(bench: Bench, source: Path, groups: set[str]) -> Data:
    """Put the big object, and the small files and the entries if `groups` measure them,
    into the bucket; make the local copies of the limits."""
    ref = ObjectRef(BIG, (await bench.store.put(BIG, source)).version, SIZE)
    small_dir, entries_dir = bench.work / "small-local", bench.work / "entries-local"
    small_dir.mkdir()
    entries_dir.mkdir()
    bodies: dict[str, bytes] = {}
    put = bench.store.put
    if "small" in groups:
        bodies = {f"{n:04d}": os.urandom(SMALL_SIZE) for n in range(SMALL_FILES)}
        await bounded(32, (partial(put, f"small/{name}", body) for name, body in bodies.items()))
        for name, body in bodies.items():
            (small_dir / name).write_bytes(body)
    if "listing" in groups:
        await bounded(32, (partial(put, f"entries/{n:05d}", b"") for n in range(ENTRIES)))
        for n in range(ENTRIES):
            (entries_dir / f"{n:05d}").touch()
    await warm_connections(bench.store)
    return Data(ref, source, bodies, small_dir, entries_dir)


async def measure(bench: Bench, data: Data, buffer: bytearray, groups: set[str]) -> Measured:
    """One run of the figures of `groups`."""
    measured: Measured = {}
    if "sequential" in groups:
        measured |= await sequential_figures(bench, data, buffer)
    elif "random" in groups:
        with data.source.open("rb", buffering=0) as file:
            file.readinto(buffer)
    if "random" in groups:
        measured |= await random_figures(bench, data, buffer)
    if "small" in groups:
        measured |= await small_file_figures(bench, data)
    if "listing" in groups:
        measured |= await listing_figures(bench, data)
    if "write" in groups:
        measured |= await write_figures(bench, data)
    return measured


Best = dict[str, Measured]  # system -> figure -> (its best, the best limit beside it)


async def run(
    bench: Bench, source: Path, runs: int, groups: set[str], rivals: list[str]
) -> tuple[list[Row], Best]:
    """The figures of `groups` for tierfs and each rival in turn, `runs` times; the rows of
    tierfs's best figures beside the best rival's and the best limit, then the RSS."""
    best: Best = {}
    try:
        started = time.perf_counter()
        data = await fill(bench, source, groups)
        print(f"data put in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        buffer = bytearray(SIZE)
        for number in range(1, runs + 1):
            for system in [TIERFS, *rivals]:
                print(f"run {number} of {runs}: {system}", file=sys.stderr)
                bench.system = system
                mine = best.setdefault(system, {})
                for figure, (value, limit) in (await measure(bench, data, buffer, groups)).items():
                    print(f"  {figure:<36} {value:>9,.0f} (limit {limit:,.0f})", file=sys.stderr)
                    old = mine.get(figure, (0.0, 0.0))
                    mine[figure] = (max(old[0], value), max(old[1], limit))
    finally:
        await bench.store.close()
    rows = []
    for figure, (unit, target, limit_is, how) in FIGURES.items():
        if figure not in best[TIERFS]:
            continue
        limit = max(figures[figure][1] for figures in best.values())
        theirs = {system: best[system][figure][0] for system in rivals}
        rival_is = max(theirs, key=theirs.__getitem__, default="")
        about = "; ".join(filter(None, [limit_is, how]))
        ours, rival = best[TIERFS][figure][0], theirs.get(rival_is)
        rows.append(Row(figure, unit, ours, limit, target, about, rival, rival_is))
    return [*rows, rss_row(bench.rss, rivals)], best


def rss_row(rss: dict[str, dict[str, tuple[float, float]]], rivals: list[str]) -> Row:
    """tierfs's largest client peak RSS, beside the leanest rival's largest."""
    name, (_, largest) = max(rss[TIERFS].items(), key=lambda item: item[1][1])
    each = ", ".join(f"{n} {peak:,.0f} ({rest:,.0f})" for n, (rest, peak) in rss[TIERFS].items())
    about = f"the largest ({name}) of {len(rss[TIERFS])} clients, each at peak (at rest): {each}"
    theirs = {system: max(peak for _, peak in rss[system].values()) for system in rivals}
    leanest = min(theirs, key=theirs.__getitem__, default="")
    rival = theirs.get(leanest)
    return Row(RSS, "MB", largest, None, 200, about, rival, leanest, lower_is_better=True)


def yes_no(ahead: bool | None) -> str:
    return "-" if ahead is None else "yes" if ahead else "NO"


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    """A plain aligned table: text columns left, figures right."""
    head = ["figure", "unit", "tierfs", "best rival", "rival", "ahead", "limit", "of limit"]
    head += ["target", "ahead", "limit is; how"]
    cells = [head]
    for r in rows:
        share = "-" if r.limit is None else f"{r.value / r.limit:.0%}"
        target = f"{'< ' if r.lower_is_better else ''}{r.target:,.0f}"
        rival = [number(r.rival), r.rival_is or "-", yes_no(r.ahead_of_rivals)]
        cells.append([r.figure, r.unit, number(r.value), *rival, number(r.limit), share])
        cells[-1] += [target, yes_no(r.ahead), r.about]
    widths = [max(len(line[column]) for line in cells) for column in range(len(head))]
    lines = []
    for line in cells:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        for column in (2, 3, 6, 7, 8):
            padded[column] = line[column].rjust(widths[column])
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of every figure, best kept (2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--only", nargs="+", choices=GROUPS, default=GROUPS, help="measure only these groups"
    )
    parser.add_argument(
        "--rivals",
        nargs="+",
        choices=[*RIVALS, "none"],
        default=list(RIVALS),
        help="rival configurations to measure in the same run (all; none: tierfs alone)",
    )
    parser.add_argument(
        "--tierfs-flag",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a flag for tierfs's clients, as `direct-io=true` (repeatable)",
    )
    args = parser.parse_args()
    rivals = [rival for rival in args.rivals if rival != "none"]
    require({RIVALS[rival][0] for rival in rivals})
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
        flags |= {
            name.replace("-", "_"): value
            for name, value in (flag.split("=", 1) for flag in args.tierfs_flag)
        }
        store = open_store(load_settings(ClientSettings, flags, env))
        bench = Bench(work, flags, env, store)
        rows, best = asyncio.run(run(bench, source, args.runs, set(args.only), rivals))
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
        f"after, {runtime:.0f} s. Best of {args.runs} runs per figure and per limit, each cold\n"
        "one on a new client; every byte read or written was checked. Rivals: the best of\n"
        f"{', '.join(rivals) or 'none'} in the same runs. Targets: the best of rclone 1.60 and\n"
        "s3fs 1.90 as the issue measured them on this kind of machine."
        + "".join(f"\ntierfs's clients ran with --{flag}" for flag in args.tierfs_flag)
    )
    if args.json:
        run_info = {"cores": os.cpu_count(), "load_average": [load_before, load_after]}
        rows_out = [
            asdict(r) | {"ahead": r.ahead, "ahead_of_rivals": r.ahead_of_rivals} for r in rows
        ]
        report = {**run_info, "runs": args.runs, "runtime_s": round(runtime, 1), "rows": rows_out}
        report |= {"systems": best, "rss": bench.rss, "cpu": bench.cpu}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Tier-3 limits: each object store through tierfs's CloudStore, beside the raw client libraries.

Run from the repo root: `.venv/bin/python bench/cloud.py [--size 1GiB] [--small 1000]
[--servers seaweedfs,moto,azurite,fake-gcs,local] [--json PATH]`. Every server is started
here on 127.0.0.1 (tests/servers.py) and stopped when its turn ends. Each figure is one
timed run after a warm-up (one small PUT, then 32 parallel GETs to open the connections);
every byte read is compared with its source afterwards, outside the timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import obstore
from azure.storage.blob.aio import ContainerClient
from botocore.config import Config
from obstore.store import AzureStore, ObjectStore, S3Store

from tierfs.chunks import Data
from tierfs.cloud.base import CloudStore
from tierfs.cloud.objstore import NO_RETRIES, client_options
from tierfs.cloud.providers import azure_store, local_store, s3_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import servers  # noqa: E402  (tests/ is a folder on sys.path, not a package)

MiB = 2**20
GiB = 2**30
TIMEOUT = 120.0  # seconds: the CloudStore deadline and per-request timeout
RANGE = 4 * MiB  # tierfs's default chunk size, the unit of every ranged GET
STREAM_PIECE = 8 * MiB
SMALL = 4 * 2**10
SMALL_IN_FLIGHT = 32
LIBRARY_IN_FLIGHT = 16
BIG = "big.bin"
# A smaller big object where 1 GiB would take minutes; the reason goes in every row.
REDUCED = {
    "moto": (256 * MiB, "moto reads the whole object for every ranged GET"),
    "fake-gcs": (256 * MiB, "fake-gcs-server's resumable PUT slows as the object grows"),
}

# obstore as CloudStore configures it, for the raw-library rows
RAW_OBSTORE: dict[str, Any] = {
    "client_options": client_options(TIMEOUT, allow_http=True),
    "retry_config": NO_RETRIES,
}

Piece = Data | obstore.Bytes
Put = Callable[[str, bytes], Awaitable[str]]  # returns the version a GET names ("" if none)
Get = Callable[[str, str], Awaitable[Piece]]  # (key, version) -> the whole small object


@dataclass
class Row:
    """One figure of the table."""

    server: str
    client: str
    operation: str
    figure: float
    unit: str
    note: str = ""


@dataclass(frozen=True)
class Load:
    """What every client of one server moves: the big object (from `source`), small bodies."""

    server: str
    source: Path
    bodies: list[bytes]
    note: str

    @property
    def size(self) -> int:
        return self.source.stat().st_size

    def row(self, client: str, operation: str, figure: float, unit: str) -> Row:
        print(f"  {client:<15} {operation:<42} {figure:>9,.1f} {unit}", file=sys.stderr)
        note = self.note if unit == "MiB/s" else ""  # it concerns the big object alone
        return Row(self.server, client, operation, figure, unit, note)


@dataclass(frozen=True)
class Client:
    """A client library (or CloudStore) reduced to the calls measured."""

    name: str
    put: Put
    get: Get
    fetch: Callable[[int, int], Awaitable[Piece]]  # (start, length) of the big object
    stream: Callable[[], AsyncIterator[Piece]] | None = None  # the big object, one GET


def size_text(size: int) -> str:
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size / MiB:g} MiB"


async def bounded(in_flight: int, jobs: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Run every job, at most `in_flight` at a time."""
    limit = asyncio.Semaphore(in_flight)

    async def run(job: Callable[[], Awaitable[object]]) -> None:
        async with limit:
            await job()

    async with asyncio.TaskGroup() as group:
        for job in jobs:
            group.create_task(run(job))


async def read_row(
    load: Load, client: str, operation: str, read: Awaitable[None], pieces: dict[int, Piece]
) -> Row:
    """Time `read`, then exit unless the `pieces` it left tile the source, byte for byte."""
    started = time.perf_counter()
    await read
    seconds = time.perf_counter() - started
    with load.source.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        offset = 0
        for start in sorted(pieces):
            piece = bytes(pieces.pop(start))
            if start != offset or piece != data[start : start + len(piece)]:
                raise SystemExit(f"{load.server} {client} {operation}: wrong bytes at {start}")
            offset += len(piece)
    if offset != load.size:
        raise SystemExit(f"{load.server} {client} {operation}: {offset} of {load.size} bytes")
    return load.row(client, operation, load.size / MiB / seconds, "MiB/s")


async def ranged_get(load: Load, client: Client, in_flight: int) -> Row:
    """GET the big object in RANGE pieces, `in_flight` at a time (1: one after another)."""
    pieces: dict[int, Piece] = {}

    async def one(start: int) -> None:
        pieces[start] = await client.fetch(start, min(RANGE, load.size - start))

    read = bounded(in_flight, (partial(one, start) for start in range(0, load.size, RANGE)))
    how = "sequential" if in_flight == 1 else f"{in_flight} in flight"
    operation = f"GET {size_text(load.size)}, 4 MiB ranges, {how}"
    return await read_row(load, client.name, operation, read, pieces)


async def streamed_get(load: Load, client: Client) -> Row:
    """GET the big object as one request, read in STREAM_PIECE pieces."""
    stream, pieces = client.stream, dict[int, Piece]()
    assert stream is not None

    async def read() -> None:
        offset = 0
        async for piece in stream():
            pieces[offset] = piece
            offset += len(piece)

    operation = f"GET {size_text(load.size)}, one stream, 8 MiB reads"
    return await read_row(load, client.name, operation, read(), pieces)


async def small_objects(load: Load, client: Client) -> list[Row]:
    """PUT, then GET, every small body under its own key, SMALL_IN_FLIGHT at a time."""
    keys = [f"small-{client.name}/{index:05d}" for index in range(len(load.bodies))]
    versions: dict[int, str] = {}
    got: dict[int, Piece] = {}

    async def put(index: int) -> None:
        versions[index] = await client.put(keys[index], load.bodies[index])

    async def get(index: int) -> None:
        got[index] = await client.get(keys[index], versions[index])

    rows = []
    for verb, job in (("PUT", put), ("GET", get)):
        started = time.perf_counter()
        await bounded(SMALL_IN_FLIGHT, (partial(job, index) for index in range(len(keys))))
        rate = len(keys) / (time.perf_counter() - started)
        operation = f"{verb} {len(keys)} x 4 KiB, {SMALL_IN_FLIGHT} in flight"
        rows.append(load.row(client.name, operation, rate, "obj/s"))
    if any(bytes(got[index]) != body for index, body in enumerate(load.bodies)):
        raise SystemExit(f"{load.server} {client.name}: a small object read back wrong")
    return rows


async def warm_up(put: Put, get: Get) -> None:
    """One small PUT, then SMALL_IN_FLIGHT parallel GETs, so connections exist before timing."""
    version = await put("warm-up", b"w" * SMALL)
    await bounded(SMALL_IN_FLIGHT, [partial(get, "warm-up", version)] * SMALL_IN_FLIGHT)


async def cloudstore_rows(load: Load, store: CloudStore) -> list[Row]:
    """The tier-3 figures through tierfs's own CloudStore; leaves BIG in the bucket."""

    async def put(key: str, body: bytes) -> str:
        return (await store.put(key, body)).version

    def get(key: str, version: str) -> Awaitable[Data]:
        return store.get_range(key, 0, SMALL, version)

    try:
        await warm_up(put, get)
        started = time.perf_counter()
        version = (await store.put(BIG, load.source)).version
        rate = load.size / MiB / (time.perf_counter() - started)
        operation = f"PUT {size_text(load.size)} multipart, from a file"
        rows = [load.row("CloudStore", operation, rate, "MiB/s")]
        client = Client("CloudStore", put, get, partial(store.get_range, BIG, version=version))
        for in_flight in (1, 16, 32):
            rows.append(await ranged_get(load, client, in_flight))
        return rows + await small_objects(load, client)
    finally:
        await store.close()


async def library_rows(load: Load, client: Client) -> list[Row]:
    """A raw library on the big object CloudStore uploaded: ranges, one stream, small objects."""
    await warm_up(client.put, client.get)
    rows = [await ranged_get(load, client, LIBRARY_IN_FLIGHT)]
    if client.stream is not None:
        rows.append(await streamed_get(load, client))
    return rows + await small_objects(load, client)


def obstore_client(store: ObjectStore) -> Client:
    """obstore's async calls, as CloudStore makes them but without its checks and retries."""

    async def put(key: str, body: bytes) -> str:
        await obstore.put_async(store, key, body)
        return ""

    async def get(key: str, version: str) -> Piece:
        return await (await obstore.get_async(store, key)).bytes_async()

    def fetch(start: int, length: int) -> Awaitable[obstore.Bytes]:
        return obstore.get_range_async(store, BIG, start=start, length=length)

    async def stream() -> AsyncIterator[Piece]:
        async for piece in (await obstore.get_async(store, BIG)).stream(STREAM_PIECE):
            yield piece

    return Client("obstore", put, get, fetch, stream)


def boto3_client(server: servers.S3Server, bucket: str, pool: ThreadPoolExecutor) -> Client:
    """boto3 on `pool`'s threads, with a connection per thread."""
    config = Config(
        s3={"addressing_style": "path"},
        max_pool_connections=SMALL_IN_FLIGHT,  # the default 10 would queue 32 threads
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        read_timeout=TIMEOUT,
        proxies={},
    )
    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=config,
    )

    def thread(call: Callable[[], Any]) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(pool, call)

    async def put(key: str, body: bytes) -> str:
        await thread(partial(s3.put_object, Bucket=bucket, Key=key, Body=body))
        return ""

    def get(key: str, version: str) -> Awaitable[bytes]:
        return thread(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def fetch(start: int, length: int) -> Awaitable[bytes]:
        span = f"bytes={start}-{start + length - 1}"
        return thread(lambda: s3.get_object(Bucket=bucket, Key=BIG, Range=span)["Body"].read())

    async def stream() -> AsyncIterator[Piece]:
        body = (await thread(partial(s3.get_object, Bucket=bucket, Key=BIG)))["Body"]
        while piece := await thread(partial(body.read, STREAM_PIECE)):
            yield piece

    return Client("boto3", put, get, fetch, stream)


def azure_client(container: ContainerClient) -> Client:
    """azure-storage-blob's asyncio client (aiohttp underneath)."""

    async def put(key: str, body: bytes) -> str:
        await container.upload_blob(key, body, overwrite=True)
        return ""

    async def get(key: str, version: str) -> bytes:
        return await (await container.download_blob(key)).readall()

    async def fetch(start: int, length: int) -> bytes:
        return await (await container.download_blob(BIG, offset=start, length=length)).readall()

    return Client("azure-blob.aio", put, get, fetch)


async def s3_rows(load: Load, server: servers.S3Server) -> list[Row]:
    """CloudStore; on SeaweedFS also obstore against boto3 on the same bucket."""
    bucket = server.create_bucket()
    store = s3_store(
        bucket=bucket,
        region=server.region,
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        timeout=TIMEOUT,
    )
    rows = await cloudstore_rows(load, store)
    if server.name != "seaweedfs":
        return rows
    raw = S3Store(
        bucket,
        region=server.region,
        endpoint=server.endpoint,
        virtual_hosted_style_request=False,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        **RAW_OBSTORE,
    )
    rows += await library_rows(load, obstore_client(raw))
    with ThreadPoolExecutor(SMALL_IN_FLIGHT) as pool:
        rows += await library_rows(load, boto3_client(server, bucket, pool))
    return rows


async def azurite_rows(load: Load, server: servers.AzureServer) -> list[Row]:
    """CloudStore, then obstore against azure-storage-blob's asyncio client."""
    name, account, key = server.create_container(), server.account, server.key
    store = azure_store(
        account=account, key=key, container=name, endpoint=server.endpoint, timeout=TIMEOUT
    )
    rows = await cloudstore_rows(load, store)
    raw = AzureStore(
        name, account_name=account, account_key=key, endpoint=server.endpoint, **RAW_OBSTORE
    )
    rows += await library_rows(load, obstore_client(raw))
    credential = {"account_name": account, "account_key": key}
    async with ContainerClient(server.endpoint, name, credential=credential) as container:
        rows += await library_rows(load, azure_client(container))
    return rows


async def fake_gcs_rows(load: Load, server: servers.GcsServer) -> list[Row]:
    from tierfs.cloud.gcs import GcsStore  # the newest provider: only needed here

    return await cloudstore_rows(
        load, GcsStore(server.create_bucket(), server.endpoint, None, TIMEOUT)
    )


async def local_rows(load: Load, root: Path) -> list[Row]:
    return await cloudstore_rows(load, local_store(str(root), TIMEOUT))


async def pread_row(load: Load) -> Row:
    """The local ceiling: pread of the (page-cached) source file in RANGE pieces."""
    pieces: dict[int, Piece] = {}

    async def read() -> None:
        with load.source.open("rb", buffering=0) as file:
            for start in range(0, load.size, RANGE):
                pieces[start] = os.pread(file.fileno(), RANGE, start)

    operation = f"read {size_text(load.size)} file, 4 MiB preads"
    return await read_row(load, "os.pread", operation, read(), pieces)


# name -> (start the server in a folder, or None: the folder is the bucket; its figures)
Suite = Callable[[Load, Any], Coroutine[Any, Any, list[Row]]]
SUITES: dict[str, tuple[Callable[[Path], Any] | None, Suite]]
SUITES = {
    "seaweedfs": (servers.start_seaweedfs, s3_rows),
    "moto": (servers.start_moto, s3_rows),
    "azurite": (servers.start_azurite, azurite_rows),
    "fake-gcs": (servers.start_fake_gcs, fake_gcs_rows),
    "local": (None, local_rows),
}


def run_server(name: str, load: Load, work: Path) -> list[Row]:
    """Start server `name` under `work`, run its suite, stop it and delete its data."""
    start, suite = SUITES[name]
    print(f"{name}: {size_text(load.size)} big object", file=sys.stderr)
    folder = work / name
    server = start(folder) if start else None
    try:
        return asyncio.run(suite(load, server or folder))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def write_source(path: Path, size: int) -> Path:
    """A file of `size` random bytes (random, so a misplaced range cannot match)."""
    with path.open("wb") as out:
        for start in range(0, size, 16 * MiB):
            out.write(os.urandom(min(16 * MiB, size - start)))
    return path


def compare(rows: list[Row], first: str, second: str) -> None:
    """Note on both rows of each pair (same server and operation) which client is faster."""
    pairs = {(row.server, row.operation): row for row in rows if row.client == second}
    for row in (row for row in rows if row.client == first):
        if other := pairs.get((row.server, row.operation)):
            fast, slow = (row, other) if row.figure >= other.figure else (other, row)
            verdict = f"{fast.client} faster than {slow.client}: {fast.figure / slow.figure:.2f}x"
            for each in (row, other):
                each.note = "; ".join(filter(None, [verdict, each.note]))


def table(rows: list[Row]) -> str:
    """A plain aligned table: text columns left, figures right."""
    cells = [["server", "client", "operation", "figure", "unit", "note"]]
    cells += [[r.server, r.client, r.operation, f"{r.figure:,.1f}", r.unit, r.note] for r in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(6)]
    lines = []
    for line in cells:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        padded[3] = line[3].rjust(widths[3])
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)?", text.strip())
    if not match or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 256MiB)")
    return int(match[1]) * {"B": 1, "KiB": 2**10, "MiB": MiB, "GiB": GiB}[match[2] or "B"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=GiB, help="big object (1GiB)")
    parser.add_argument("--small", type=int, default=1000, help="4 KiB objects (1000)")
    parser.add_argument("--servers", type=lambda text: text.split(","), default=list(SUITES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if unknown := set(args.servers) - SUITES.keys():
        parser.error(f"unknown server {sorted(unknown)[0]!r}; known: {','.join(SUITES)}")
    began, load_before = time.monotonic(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tierfs-bench-"))
    try:
        sources = {args.size: write_source(work / "source", args.size)}
        bodies = [os.urandom(SMALL) for _ in range(args.small)]
        local = Load("local", sources[args.size], bodies, "page-cached: the file was just written")
        rows = [asyncio.run(pread_row(local))]
        for name in args.servers:
            cap, why = REDUCED.get(name, (args.size, ""))
            size, note = (cap, f"{size_text(cap)}: {why}") if cap < args.size else (args.size, "")
            if size not in sources:
                sources[size] = write_source(work / f"source-{size}", size)
            rows += run_server(name, Load(name, sources[size], bodies, note), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    compare(rows, "obstore", "boto3")
    compare(rows, "obstore", "azure-blob.aio")
    runtime, load_after = time.monotonic() - began, os.getloadavg()[0]
    print(table(rows))
    print(
        f"\n{os.cpu_count()} cores, load average {load_before:.2f} before and {load_after:.2f} "
        f"after, {runtime:.0f} s. One timed run per figure after a warm-up (1 PUT + 32 GETs\n"
        "of a small object per client); every byte read was checked against its source."
    )
    if args.json:
        run = {"cores": os.cpu_count(), "load_average": [load_before, load_after], "runs": 1}
        report = {**run, "runtime_s": round(runtime, 1), "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The CloudStore contract, written once and run on every provider against its real server."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import servers
from cloud_targets import AUTHENTICATING, NETWORKED, SERVER_FIXTURE, server_for, settings_for
from tierfs.cloud.azure import AzureBlobCloud
from tierfs.cloud.base import (
    ABSENT,
    MULTIPART_THRESHOLD,
    PART_SIZE,
    CloudStore,
    split_markers,
)
from tierfs.cloud.gcs import GcsStore
from tierfs.cloud.objstore import ObjstoreCloud
from tierfs.cloud.providers import LocalDirectoryCloud, open_store
from tierfs.cloud.s3 import S3Cloud
from tierfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CloudError,
    EntryExistsError,
    FolderAtKeyError,
    InvalidKeyError,
    NotDirectoryError,
    ObjectNotFoundError,
    UnsupportedUploadError,
    VersionChangedError,
)

CHUNK = 64 * 1024
pytestmark = pytest.mark.asyncio


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose every position differs from its neighbours', so misplaced ranges show."""
    block = hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32 + 1)
    return (block * (size // len(block) + 1))[:size] if size else b""


async def test_put_head_get(store: CloudStore) -> None:
    body = pattern(1000)
    put = await store.put("dir/object.bin", body)
    head = await store.head("dir/object.bin")
    assert (head.key, head.size) == ("dir/object.bin", 1000)
    assert head.version == put.version
    assert head.mtime.tzinfo is not None
    assert await store.get_range("dir/object.bin", 0, 1000, head.version) == body


async def test_a_listed_version_is_the_one_head_and_get_know(store: CloudStore) -> None:
    # Azure lists ETags bare and quotes them elsewhere: a read after `ls` was ESTALE.
    put = await store.put("listed/file", b"listed")
    for delimiter in (True, False):
        listed = (await store.list_all("listed/", delimiter)).objects
        assert [(meta.key, meta.version) for meta in listed] == [("listed/file", put.version)]
    assert (await store.head("listed/file")).version == put.version
    assert await store.get_range("listed/file", 0, 6, listed[0].version) == b"listed"


async def test_ranges_at_chunk_edges_and_past_the_end(store: CloudStore) -> None:
    size = 3 * CHUNK + 17
    body = pattern(size, seed=1)
    version = (await store.put("edges", body)).version
    ranges = [
        (0, CHUNK),
        (CHUNK - 1, 2),
        (CHUNK, CHUNK),
        (2 * CHUNK - 7, CHUNK + 14),
        (3 * CHUNK, CHUNK),  # the short last chunk
        (size - 5, 100),  # runs past the end: only what exists
        (size - 1, 1),
    ]
    for start, length in ranges:
        got = await store.get_range("edges", start, length, version)
        assert got == body[start : start + length], (start, length)
    assert await store.get_range("edges", size, 10, version) == b""
    assert await store.get_range("edges", size + CHUNK, 10, version) == b""
    assert await store.get_range("edges", 5, 0, version) == b""


async def test_empty_object(store: CloudStore) -> None:
    version = (await store.put("empty", b"")).version
    head = await store.head("empty")
    assert head.size == 0 and head.version == version
    assert await store.get_range("empty", 0, CHUNK, version) == b""


async def test_keys_with_spaces_and_unicode(store: CloudStore) -> None:
    keys = [
        "with space/a file.txt",
        "ünïcødé/файл 文件.bin",
        "emoji 🎉/x",
        "signs/a+b=c&d;e,f@g.txt",
        "signs/%41 literal percent",
    ]
    for index, key in enumerate(keys):
        await store.put(key, pattern(100 + index, seed=index))
    for index, key in enumerate(keys):
        head = await store.head(key)
        assert head.key == key and head.size == 100 + index
        got = await store.get_range(key, 0, 1000, head.version)
        assert got == pattern(100 + index, seed=index)
    top = await store.list_all("")
    assert top.prefixes == sorted(["with space/", "ünïcødé/", "emoji 🎉/", "signs/"])
    inside = await store.list_all("signs/")
    assert [meta.key for meta in inside.objects] == sorted(keys[3:])
    for index, key in enumerate(keys):  # a copy names both keys in its request
        await store.copy(key, f"copied/{key}", 100 + index)
        head = await store.head(f"copied/{key}")
        assert await store.get_range(head.key, 0, 1000, head.version) == pattern(100 + index, index)


async def test_a_key_is_stored_whole_or_refused_before_any_request(store: CloudStore) -> None:
    """What `check_key` takes, the store takes, under that name; what it refuses is
    InvalidKeyError (the mount's EINVAL at create), never another failure at upload (EIO
    at close). The local directory refuses what its temp files `<name>#<n>` would break,
    Azure a backslash (it reads it as `/`) and a name ending in a dot (it drops the dot)."""
    local, azure = isinstance(store, LocalDirectoryCloud), isinstance(store, AzureBlobCloud)
    # 200 bytes: fake-gcs-server keeps each object in a file of a longer name.
    longest = "n" * (store.name_max if local else 200)
    accepted = ["q?x", "sharp#", "a.b", longest] + ([] if local else ["h#1"])
    accepted += [] if azure else ["a.b."]
    refused = ["new\nline", "tab\there", "del\x7f"]
    refused += ["h#1", f"dir/{longest}n", "h#1/x"] if local else []
    refused += ["back\\slash", "a.b.", "c./d"] if azure else []
    for key in refused:
        with pytest.raises(InvalidKeyError):
            store.check_key(key)
        with pytest.raises(InvalidKeyError):
            await store.put(key, b"x")
    for index, key in enumerate(accepted):
        assert store.check_key(key) == key
        version = (await store.put(key, pattern(10, seed=index))).version
        assert await store.get_range(key, 0, 10, version) == pattern(10, seed=index)
    listed = [meta.key for meta in (await store.list_all("")).objects]
    assert listed == sorted(accepted)


async def test_multipart_put_of_100_mib_from_a_file(store: CloudStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with source.open("wb") as out:
        for _ in range(100):
            out.write(os.urandom(2**20))
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    put = await store.put("big/100MiB.bin", source)
    head = await store.head("big/100MiB.bin")
    assert head.size == 100 * 2**20 and head.version == put.version
    digest = hashlib.sha256()
    step = 8 * 2**20
    for start in range(0, head.size, step):
        digest.update(await store.get_range("big/100MiB.bin", start, step, head.version))
    assert digest.hexdigest() == expected


async def test_listing_2500_keys_pages_through(store: CloudStore) -> None:
    """Past two of the servers' 1,000-key pages (a FUSE test lists 10,000 entries)."""
    keys = [f"many/key-{index:05d}" for index in range(2_500)]
    nested = ["many/sub/a", "many/sub/b"]
    limit = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with limit:
            await store.put(key, key.encode())

    async with asyncio.TaskGroup() as group:
        for key in keys + nested:
            group.create_task(put(key))
    shallow = await store.list_all("many/", delimiter=True)
    assert [meta.key for meta in shallow.objects] == keys
    assert shallow.prefixes == ["many/sub/"]
    deep = await store.list_all("many/", delimiter=False)
    assert [meta.key for meta in deep.objects] == sorted(keys + nested)
    assert {meta.size for meta in deep.objects} == {len(keys[0]), len(nested[0])}


async def test_a_changed_object_is_never_read_at_the_old_version(store: CloudStore) -> None:
    old = await store.put("changing", pattern(CHUNK, seed=1))
    new = await store.put("changing", pattern(CHUNK, seed=2))  # same size, other bytes
    assert new.version != old.version
    assert (await store.head("changing")).version == new.version
    with pytest.raises(VersionChangedError):
        await store.get_range("changing", 0, CHUNK, old.version)
    assert await store.get_range("changing", 0, CHUNK, new.version) == pattern(CHUNK, seed=2)


async def test_a_put_that_expects_a_version_replaces_that_version_only(
    store: CloudStore, tmp_path: Path
) -> None:
    """`expect` (a late upload's check that no other node wrote the file meanwhile): the
    put goes over the version it names, or over no object for ABSENT; over anything else
    it is refused and the object stays as it was, large bodies (in parts) too."""
    first = await store.put("expect/file", b"first")
    seen = (await store.head("expect/file")).version  # as a late upload sees it
    second = await store.put("expect/file", b"second", expect=seen)
    large = tmp_path / "large"
    large.write_bytes(pattern(MULTIPART_THRESHOLD + 1))
    refused: list[tuple[bytes | Path, str]] = [
        (b"stale", first.version),
        (b"new", ABSENT),
        (large, first.version),
    ]
    for body, expect in refused:
        with pytest.raises(VersionChangedError):
            await store.put("expect/file", body, expect=expect)
    assert (await store.head("expect/file")).version == second.version
    assert await store.get_range("expect/file", 0, 100, second.version) == b"second"
    created = await store.put("expect/new", b"new", expect=ABSENT)
    assert await store.get_range("expect/new", 0, 100, created.version) == b"new"
    await store.delete("expect/file")
    with pytest.raises(VersionChangedError):
        await store.put("expect/file", b"gone", expect=second.version)
    with pytest.raises(ObjectNotFoundError):
        await store.head("expect/file")


async def test_missing_object(store: CloudStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        await store.head("no/such/object")
    with pytest.raises(ObjectNotFoundError):
        await store.get_range("no/such/object", 0, 10, "whatever")
    with pytest.raises(ObjectNotFoundError, match="no/such/object"):
        await store.copy("no/such/object", "copy/of/nothing")
    with pytest.raises(ObjectNotFoundError):
        await store.head("copy/of/nothing")
    await store.delete("no/such/object")  # deleting what is absent is fine
    assert (await store.list_all("no/")).objects == []


async def test_copy_and_delete(store: CloudStore) -> None:
    body = pattern(5000, seed=3)
    await store.put("src/file", body)
    await store.copy("src/file", "dst/file")
    copied = await store.head("dst/file")
    assert await store.get_range("dst/file", 0, 5000, copied.version) == body
    await store.delete("src/file")
    with pytest.raises(ObjectNotFoundError):
        await store.head("src/file")
    await store.delete("src/file")
    assert [m.key for m in (await store.list_all("dst/")).objects] == ["dst/file"]


async def test_a_listing_asks_for_no_more_keys_than_its_page_size(store: CloudStore) -> None:
    """A lookup asks whether any key is below a name with a page of one key, not of a
    thousand: no page holds more than `page_size` keys (a local folder is one page, as a
    scan of it costs no request), and the pages hold every key."""
    keys = ["p/a", "p/b", "p/c/d", "p/e"]
    for key in keys:
        await store.put(key, b"x")
    pages = [page async for page in store.list("p/", delimiter=False, page_size=1)]
    assert sorted(meta.key for page in pages for meta in page.objects) == keys
    if not store.url.startswith("local://"):
        assert max(len(page.objects) for page in pages) == 1


async def test_a_folder_marker_keeps_an_empty_folder(store: CloudStore) -> None:
    """`put_marker` makes a folder the bucket lists while it is empty (the `name/` object of
    the S3 console and s3fs; a directory on the local provider); a listing without
    delimiter tells it from the files; `delete_marker` removes it, and again is no error."""
    await store.put("m/file", b"x")
    await store.put("m/empty", b"")  # an empty file is no marker
    folders = ["m/sub", "m/ü ñ+%", "m/deep", "m/deep/er"]
    for folder in folders:
        await store.put_marker(folder)
    top = await store.list_all("m/")
    assert top.prefixes == sorted(["m/sub/", "m/ü ñ+%/", "m/deep/"])
    assert sorted(meta.key for meta in top.objects) == ["m/empty", "m/file"]
    listed = (await store.list_all("m/", delimiter=False)).objects
    files, markers = split_markers(listed)
    assert sorted(meta.key for meta in files) == ["m/empty", "m/file"]
    # every store names the empty folders; the local one cannot tell a marker from the
    # directory of what is below it ("m/deep")
    assert {"m/sub", "m/ü ñ+%", "m/deep/er"} <= set(markers) <= set(folders)
    # a folder's own marker is in its tree: it is how a lookup finds an empty folder
    own = (await store.list_all("m/sub/", delimiter=False)).objects
    assert [meta.key for meta in own] == ["m/sub/"]
    for folder in sorted([*folders, "m/sub", "m/never"], reverse=True):  # deepest first
        await store.delete_marker(folder)
    after = await store.list_all("m/")
    assert after.prefixes == []
    assert sorted(meta.key for meta in after.objects) == ["m/empty", "m/file"]


async def test_keys_below_a_folder_count_its_marker_if_asked(store: CloudStore) -> None:
    """`has_keys_below`: a folder made by its marker alone has keys below it, but holds
    none (what `rmdir` asks); a file below it is both; no folder has neither."""
    await store.put_marker("k")
    assert await store.has_keys_below("k")
    assert not await store.has_keys_below("k", marker_too=False)
    await store.put("k/file", b"x")
    assert await store.has_keys_below("k", marker_too=False)
    assert not await store.has_keys_below("k/file")
    assert not await store.has_keys_below("none")


async def test_a_local_put_where_a_folder_is_says_so(tmp_path: Path) -> None:
    """A put at a folder's name is FolderAtKeyError (the local directory holds no file
    beside it), which the mount puts aside, not a CloudError it retries for good."""
    store = open_store(settings_for("local", None, tmp_path))
    try:
        await store.put("folder/file", b"x")
        with pytest.raises(FolderAtKeyError):
            await store.put("folder", b"y")
        assert [meta.key for meta in (await store.list_all("folder/")).objects] == ["folder/file"]
    finally:
        await store.close()


async def test_a_local_folder_marker_where_a_file_is_says_which(tmp_path: Path) -> None:
    """A file at the folder's name, or at a folder's above it, is EEXIST or ENOTDIR (as
    mkdir's), not an OSError the mount answers with EIO and logs as unexpected."""
    store = open_store(settings_for("local", None, tmp_path))
    try:
        await store.put("file", b"x")
        with pytest.raises(EntryExistsError):
            await store.put_marker("file")
        with pytest.raises(NotDirectoryError):
            await store.put_marker("file/sub")
        assert (await store.list_all("")).objects[0].key == "file"
    finally:
        await store.close()


async def test_a_local_copy_made_again_leaves_no_file_behind(tmp_path: Path) -> None:
    """A copy over a copy of the same file (two nodes moving one folder at once) leaves
    the bucket's directory as one copy does: obstore's left a temp file there, which kept
    an emptied folder listed and unremovable."""
    store = open_store(settings_for("local", None, tmp_path))
    try:
        await store.put("src/file", b"x")
        for _ in range(2):
            await store.copy("src/file", "dst/sub/file")
        assert sorted(os.listdir(tmp_path / "bucket" / "dst" / "sub")) == ["file"]
        await store.delete("dst/sub/file")
        assert (await store.list_all("dst/")).prefixes == []
        assert not (tmp_path / "bucket" / "dst").exists()
    finally:
        await store.close()


@pytest.mark.parametrize("provider", AUTHENTICATING)
async def test_bad_credentials_are_access_denied(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = server_for(request, provider)
    cloud = open_store(settings_for(provider, server, tmp_path, bad_credentials=True))
    try:
        with pytest.raises(AccessDeniedError, match="access denied to bucket"):
            await cloud.head("anything")
        with pytest.raises(AccessDeniedError, match="access denied to bucket"):
            await cloud.put("anything", b"x")
        with pytest.raises(AccessDeniedError):
            await cloud.list_all("")
        with pytest.raises(AccessDeniedError):
            await cloud.copy("anything", "elsewhere")
    finally:
        await cloud.close()


@pytest.mark.parametrize("provider", NETWORKED)
async def test_a_bucket_that_does_not_exist_is_said_so(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A listing of it and a put into it: BucketNotFoundError, not an object's ENOENT
    (SeaweedFS makes the bucket a put names, its filer's folder: only the listing there)."""
    settings = settings_for(provider, server_for(request, provider), tmp_path)
    missing = {"s3_bucket": "no-such-bucket", "gcp_bucket": "no-such-bucket"}
    cloud = open_store(settings.model_copy(update=missing | {"azure_container": "no-such"}))
    try:
        with pytest.raises(BucketNotFoundError, match="no such bucket"):
            await cloud.list_all("")
        if isinstance(cloud, ObjstoreCloud):
            with pytest.raises(BucketNotFoundError, match="no such bucket"):
                await anext(cloud._list_unfiltered("", delimiter=True))  # sent without obstore
        if SERVER_FIXTURE[provider] != "seaweedfs":
            with pytest.raises(BucketNotFoundError, match="no such bucket"):
                await cloud.put("data/new.bin", b"x")
    finally:
        await cloud.close()


async def test_an_azure_folder_marker_in_no_container_is_said_so(
    azurite: servers.AzureServer, tmp_path: Path
) -> None:
    """A marker is sent without obstore: a container that is not there is
    BucketNotFoundError, not the success of a DELETE of no marker (mkdir wrote nothing)."""
    settings = settings_for("azure", azurite, tmp_path)
    cloud = open_store(settings.model_copy(update={"azure_container": "no-such"}))
    try:
        with pytest.raises(BucketNotFoundError, match="no such bucket"):
            await cloud.put_marker("folder")
        with pytest.raises(BucketNotFoundError, match="no such bucket"):
            await cloud.delete_marker("folder")
    finally:
        await cloud.close()


async def test_a_streamed_put_stores_its_parts_in_order(store: CloudStore) -> None:
    pieces = [os.urandom(size) for size in (1, 3 * 2**20, 2**20 - 7, 9 * 2**20, 4096, 5 * 2**20)]
    consumed = 0

    async def parts() -> AsyncIterator[bytes]:
        nonlocal consumed
        for piece in pieces:
            consumed += 1
            yield piece

    if isinstance(store, GcsStore):  # the JSON API client cannot stream: said before reading
        with pytest.raises(UnsupportedUploadError):
            await store.put_stream("stream/s.bin", parts())
        assert consumed == 0
        return
    put = await store.put_stream("stream/s.bin", parts())
    body = b"".join(pieces)
    head = await store.head("stream/s.bin")
    assert put.size == head.size == len(body) and put.version == head.version
    assert await store.get_range("stream/s.bin", 0, len(body), head.version) == body


async def test_a_copy_through_the_client_is_exact(store: CloudStore) -> None:
    """What a store will not copy server-side (AWS: over 5 GiB) is read and written
    through the client: one put for a small object, a streamed multipart one else (a store
    that cannot stream an upload refuses before it writes anything)."""
    for key, size in (("small.bin", 100_000), ("large.bin", MULTIPART_THRESHOLD + 5)):
        body = pattern(size, seed=size)
        await store.put(key, body)
        if size > MULTIPART_THRESHOLD and not store.streams_uploads:
            with pytest.raises(UnsupportedUploadError):
                await store.copy_through(key, f"copied/{key}")
            with pytest.raises(ObjectNotFoundError):
                await store.head(f"copied/{key}")
            continue
        await store.copy_through(key, f"copied/{key}")
        head = await store.head(f"copied/{key}")
        assert head.size == size
        assert await store.get_range(f"copied/{key}", 0, size, head.version) == body
        assert (await store.head(key)).size == size  # the source stays


async def test_an_azure_copy_has_succeeded_when_it_returns(
    azurite: servers.AzureServer, tmp_path: Path
) -> None:
    """Azure's Copy Blob may answer while still copying (Azurite never does): the store
    reads the copy's status, so the blob it leaves is a finished copy."""
    store = open_store(settings_for("azure", azurite, tmp_path))
    assert isinstance(store, AzureBlobCloud)
    try:
        body = pattern(3 * 2**20 + 1, seed=5)
        await store.put("source.bin", body)
        assert (await store.copy_state("source.bin"))[:2] == (None, None)  # never a copy
        copied = await store.copy("source.bin", "copy.bin", len(body))
        status, copy_id, version = await store.copy_state("copy.bin")
        assert status == "success" and copy_id
        await store.delete("source.bin")  # what a rename does next
        assert version == copied == (await store.head("copy.bin")).version
        assert await store.get_range("copy.bin", 0, len(body), copied) == body
        with pytest.raises(ObjectNotFoundError):
            await store.copy_state("source.bin")
    finally:
        await store.close()


async def test_s3_copies_an_object_over_its_copy_limit_through_the_client(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    settings = settings_for("s3-seaweedfs", seaweedfs, tmp_path)
    store = open_store(settings)
    assert isinstance(store, S3Cloud)
    store.copy_limit = 2**20  # AWS's is 5 GiB
    try:
        body = pattern(3 * PART_SIZE + 7, seed=3)
        await store.put("big.bin", body)

        async def gets() -> int:
            count = seaweedfs.settled_request_count
            return await asyncio.to_thread(count, "GET", settings.s3_bucket)

        before = await gets()
        await store.copy("big.bin", "moved/big.bin", len(body))
        assert await gets() - before >= 4  # a HEAD and the parts: through the client
        head = await store.head("moved/big.bin")
        assert await store.get_range("moved/big.bin", 0, len(body), head.version) == body

        before = await gets()
        await store.copy("big.bin", "server-side.bin", 2**20)  # under the limit
        assert await gets() == before  # a CopyObject: no byte came here
        assert (await store.head("server-side.bin")).size == len(body)
    finally:
        await store.close()


@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto", "azure"])
async def test_parts_grow_so_that_a_large_file_fits_in_the_parts_a_store_takes(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """S3 takes 10,000 parts in one upload, 78 GiB of 8 MiB ones; Azure 50,000 blocks. A
    larger file goes up in larger parts, as the server counts them (the most is set to 3
    here: 40 MiB in 3 parts of 14 MiB). A stream of unknown size fails past the most
    (CloudError, and nothing in the bucket) rather than at the store's last part."""
    server = server_for(request, provider)
    settings = settings_for(provider, server, tmp_path)
    store = open_store(settings)
    assert isinstance(store, S3Cloud | AzureBlobCloud)
    store.max_parts = 3
    body = pattern(40 * 2**20, seed=3)
    (tmp_path / "big.bin").write_bytes(body)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 2**20):
            yield body[start : start + 2**20]

    def parts_of(key: str, version: str) -> int:
        if isinstance(server, servers.AzureServer):
            with server.service_client() as client:
                blob = client.get_blob_client(settings.azure_container, key)
                committed, _ = blob.get_block_list("committed")
                return len(committed)
        return int(version.strip('"').rpartition("-")[2])  # S3's ETag: MD5-PARTS

    try:
        for key, put in (
            ("put.bin", store.put("put.bin", tmp_path / "big.bin")),
            ("streamed.bin", store.put_stream("streamed.bin", pieces(), len(body))),
        ):
            version = (await put).version
            assert await store.get_range(key, 0, len(body), version) == body
            assert await asyncio.to_thread(parts_of, key, version) == 3
        with pytest.raises(CloudError, match="at most 24 MiB here"):
            await store.put_stream("unknown-size.bin", pieces())
        with pytest.raises(ObjectNotFoundError):
            await store.head("unknown-size.bin")
    finally:
        await store.close()


@pytest.mark.parametrize(
    "provider", ["s3-seaweedfs", "s3-moto", "gcp-interop", "azure", "azure-sas", "local"]
)
async def test_a_listing_made_without_obstore_names_every_key_as_put(
    request: pytest.FixtureRequest, provider: str, tmp_path: Path
) -> None:
    """The store lists a folder's level and a whole tree itself (`_list_unfiltered`), page by
    page: obstore fails a whole listing at one key its paths cannot name, and takes a
    level's every page within one deadline. Every key put is listed by its name (spaces,
    `+`, `%`, non-ASCII), a level's folders as its prefixes, on more than one page."""
    store = open_store(settings_for(provider, server_for(request, provider), tmp_path))
    assert isinstance(store, ObjstoreCloud)
    try:
        files = ["a", "sp ace", "plus+sign", "pct%41", "ünï €"]
        pages = [f"page/{index:04d}" for index in range(1_100)]  # more than a page
        names = files + pages + ["sub/b", "sub2/deeper/c"]
        limit = asyncio.Semaphore(32)

        async def put(key: str) -> None:
            async with limit:
                await store.put(key, key.encode())

        async with asyncio.TaskGroup() as group:
            for name in names:
                group.create_task(put("level/" + name))
        await store.put_marker("level/empty")
        levels = {
            "level/page/": (pages, []),
            "level/": (files, ["empty/", "page/", "sub/", "sub2/"]),
        }
        for prefix, (keys, folders) in levels.items():
            level = await store.list_all(prefix, delimiter=True)
            assert [meta.key for meta in level.objects] == sorted("level/" + key for key in keys)
            assert level.prefixes == ["level/" + folder for folder in folders]
        root = await store.list_all("", delimiter=True)
        assert (root.objects, root.prefixes) == ([], ["level/"])

        tree = (await store.list_all("level/", delimiter=False)).objects
        assert [meta.key for meta in tree] == sorted(
            ["level/empty/", *("level/" + name for name in names)]
        )
        for meta in tree:
            assert meta.size == (0 if meta.key.endswith("/") else len(meta.key.encode()))
        for name in ("a", "sp ace", "ünï €", "sub2/deeper/c"):  # a version as HEAD gives it
            listed = next(meta for meta in tree if meta.key == "level/" + name)
            assert listed.version == (await store.head(listed.key)).version
    finally:
        await store.close()


@pytest.mark.warnings_expected
@pytest.mark.parametrize("provider", ["azure", "local"])
async def test_a_key_the_store_refuses_is_left_out_of_every_listing(
    request: pytest.FixtureRequest, provider: str, tmp_path: Path
) -> None:
    """A key obstore can name but `check_key` refuses, put there by another tool (Azure: over
    1024 bytes in UTF-8, within its 1024 characters; local: a name of 251 to 255 bytes),
    is not listed: it could not be read (EINVAL). A level listed by obstore was showing it."""
    server = server_for(request, provider)
    settings = settings_for(provider, server, tmp_path)
    store = open_store(settings)
    unreadable = "refused/" + ("é" * 520 if provider == "azure" else "n" * 252)
    try:
        await store.put("refused/ok", b"ok")
        if isinstance(server, servers.AzureServer):
            with server.service_client() as client:
                blob = client.get_blob_client(settings.azure_container, unreadable)
                await asyncio.to_thread(blob.upload_blob, b"by another tool")
        else:
            assert settings.local_root is not None
            (settings.local_root / unreadable).write_bytes(b"by another tool")
        with pytest.raises(InvalidKeyError):
            store.check_key(unreadable)
        for delimiter in (True, False):
            listed = await store.list_all("refused/", delimiter)
            assert [meta.key for meta in listed.objects] == ["refused/ok"], delimiter
            assert listed.hidden == 1
    finally:
        await store.close()


@pytest.mark.parametrize("size", [5000, MULTIPART_THRESHOLD + 1])
async def test_a_copy_tells_its_version(store: CloudStore, size: int) -> None:
    """A rename reads its file on at the version of the copy it made, which `copy` tells
    from the store's answer (AWS gives the copy of a multipart object an ETag of its own,
    so the source's is not it)."""
    await store.put("src/file", pattern(size, seed=7))
    version = await store.copy("src/file", "dst/file", size)
    assert version == (await store.head("dst/file")).version


# moto ignores x-amz-copy-source-if-match (AWS and SeaweedFS honour it).
@pytest.mark.parametrize(
    "provider", ["s3-seaweedfs", "gcp-interop", "gcp-native", "azure", "azure-sas", "local"]
)
async def test_a_copy_of_a_version_refuses_a_newer_one(
    request: pytest.FixtureRequest, provider: str, tmp_path: Path
) -> None:
    """A rename copies the version of its file it knows: one another client wrote since is
    VersionChangedError (the rename then moves the bucket's file)."""
    store = open_store(settings_for(provider, server_for(request, provider), tmp_path))
    try:
        old = await store.put("src/file", b"old bytes")
        await store.put("src/file", b"new bytes, written by another")
        with pytest.raises(VersionChangedError):
            await store.copy("src/file", "dst/file", 9, old.version)
        new = await store.head("src/file")
        copied = await store.copy("src/file", "dst/file", new.size, new.version)
        assert copied == (await store.head("dst/file")).version
        assert (
            await store.get_range("dst/file", 0, new.size, copied)
            == b"new bytes, written by another"
        )
    finally:
        await store.close()

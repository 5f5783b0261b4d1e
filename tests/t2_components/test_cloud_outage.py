"""A cloud server that dies mid-request gives a clear error within the deadline, never a
hang; one that misanswers a request once is asked again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import servers
from cloud_targets import Server, s3_server_for, server_for, settings_for
from relay import Relay, relay_in_front_of
from tierfs.cloud.base import ABSENT, MULTIPART_THRESHOLD, PART_SIZE, CloudStore
from tierfs.cloud.providers import open_store, s3_store
from tierfs.errors import CloudError, ObjectNotFoundError, VersionChangedError
from tierfs.settings import ClientSettings

DEADLINE = 3.0
STARTERS: dict[str, tuple[str, Callable[[Path], Server]]] = {
    "s3-seaweedfs": ("s3-seaweedfs", servers.start_seaweedfs),
    "s3-moto": ("s3-moto", servers.start_moto),
    "azure": ("azure", servers.start_azurite),
    "gcp-native": ("gcp-native", servers.start_fake_gcs),
}


@pytest.fixture(params=list(STARTERS))
def own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Server]]:
    """A server of each kind that this test alone uses, so it may kill it."""
    provider, start = STARTERS[request.param]
    server = start(tmp_path)
    try:
        yield provider, server
    finally:
        server.stop()


@pytest.mark.asyncio
async def test_server_stopped_mid_request(own_server: tuple[str, Server], tmp_path: Path) -> None:
    provider, server = own_server
    cloud = open_store(settings_for(provider, server, tmp_path, timeout=DEADLINE))
    body = b"x" * (32 * 2**20)
    version = (await cloud.put("victim", body)).version

    async def read_forever() -> None:
        while True:
            assert await cloud.get_range("victim", 0, len(body), version) == body

    reader = asyncio.create_task(read_forever())
    await asyncio.sleep(0.5)
    assert not reader.done(), "the reads failed before the server was stopped"
    await asyncio.to_thread(server.proc.kill)
    killed = time.monotonic()
    with pytest.raises(CloudError):
        await asyncio.wait_for(reader, timeout=DEADLINE + 5)
    assert time.monotonic() - killed <= DEADLINE + 1.0

    started = time.monotonic()
    with pytest.raises(CloudError):
        await cloud.head("victim")
    assert time.monotonic() - started <= DEADLINE + 1.0
    await cloud.close()


@pytest.mark.asyncio
async def test_a_range_answered_with_the_whole_object_is_asked_again(
    seaweedfs: servers.S3Server,
) -> None:
    # SeaweedFS answers a few small range requests with the whole object (200, not 206)
    # while other requests to it are being cancelled. Here the relay hides one request's
    # Range header (an unsigned request: a public bucket), so the server answers just so.
    bucket = seaweedfs.public_bucket()
    body = os.urandom(256 * 1024)
    seaweedfs.boto3_client().put_object(Bucket=bucket, Key="whole/answer.bin", Body=body)
    relay, relayed = relay_in_front_of(seaweedfs.endpoint)
    store = s3_store(
        bucket=bucket,
        region=seaweedfs.region,
        endpoint=relayed,
        access_key=None,
        secret_key=None,
        timeout=DEADLINE,
        signed=False,
    )
    try:
        meta = await store.head("whole/answer.bin")
        relay.rewrite(b"range: bytes=", b"xange: bytes=")
        piece = await store.get_range("whole/answer.bin", 1000, 4096, meta.version)
        assert relay.rewrites_pending == 0  # the server did see a request without its range
        assert piece == body[1000:5096]
    finally:
        await store.close()
        relay.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "azure"])
async def test_a_read_broken_once_is_retried_whatever_its_key_says(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A range past the end is told from the store's answer (416, or obstore's own check),
    not from words of the error's text: a key that holds "range" or "416" (in its URL)
    broken once was a "range refused" (EIO), not a retry."""
    async with through_a_relay(provider, request, tmp_path, DEADLINE) as (_, relay, store):
        for key in ("orange.txt", "n01440764_10416.JPEG"):
            version = (await store.put(key, b"0123456789" * 10)).version
            relay.hold(f"/{key} HTTP/1.1".encode())  # its GET: the connection broken
            read = asyncio.create_task(store.get_range(key, 10, 20, version))
            await asyncio.to_thread(relay.wait_until_held)
            relay.cut()
            relay.restore()
            assert await read == b"0123456789" * 2
            assert await store.get_range(key, 100, 10, version) == b""  # past the end


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "azure"])
async def test_a_conditional_put_whose_answer_was_lost_is_its_own(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A put with `expect` (create only, or over a version) that landed, its answer lost on
    a broken connection, is asked again and refused (412): the object holds its body (size
    and MD5), so it succeeded, not "changed since" (a late upload's false conflict)."""
    async with through_a_relay(provider, request, tmp_path, 10.0) as (settings, relay, store):
        direct = open_store(settings)
        try:
            expect = ABSENT
            for body in (b"first", b"second, over the first"):
                relay.mute()
                put = asyncio.create_task(store.put("lost.txt", body, expect=expect))
                while (seen := await _size_of(direct, "lost.txt")) != len(body):
                    await asyncio.sleep(0.02)  # until the server has done it
                relay.cut()  # the answer never came: the connection breaks
                relay.restore()
                meta = await put
                head = await direct.head("lost.txt")
                assert (meta.version, seen) == (head.version, head.size)
                assert await direct.get_range("lost.txt", 0, 100, head.version) == body
                expect = head.version
            with pytest.raises(VersionChangedError):  # a conflict that is there still is one
                await store.put("lost.txt", b"stale", expect=ABSENT)
        finally:
            await direct.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
async def test_a_directory_of_many_pages_lists_however_long_they_take(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The cloud deadline bounds each page of a listing, not the whole of it: a directory
    of many 1,000-key pages (AWS's most) lists as long as each page comes in time, where it
    failed every time once all its pages took longer than the deadline."""
    async with through_a_relay(provider, request, tmp_path, DEADLINE) as (settings, relay, store):
        keys = [f"big/key-{index:05d}" for index in range(2_500)]
        direct = open_store(settings)
        try:
            limit = asyncio.Semaphore(32)

            async def put(key: str) -> None:
                async with limit:
                    await direct.put(key, b"")

            async with asyncio.TaskGroup() as group:
                for key in keys:
                    group.create_task(put(key))
        finally:
            await direct.close()
        relay.slow(b"list-type=2", DEADLINE * 0.4)  # each page well in time, three are not
        started = time.monotonic()
        listing = await store.list_all("big/", delimiter=True)
        assert [meta.key for meta in listing.objects] == keys
        assert time.monotonic() - started > DEADLINE


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
@pytest.mark.parametrize("how", ["put", "put_stream"])
async def test_a_cancelled_multipart_upload_leaves_no_parts(
    provider: str, how: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A large put cancelled half way (an unmount, its retry given up) is cancelled, and
    its multipart upload aborted: no parts stay in the bucket, billed and unseen."""
    async with through_a_relay(provider, request, tmp_path, DEADLINE) as (settings, relay, store):
        in_progress = uploads_in_progress(request, provider, settings)
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(10 * PART_SIZE))
        relay.slow(b"partNumber=", 0.5)  # parts go up slowly: the put is caught half way
        put = asyncio.create_task(
            store.put("big.bin", big) if how == "put" else store.put_stream("big.bin", parts(big))
        )
        await until_in_progress(in_progress, 1)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert await asyncio.to_thread(in_progress) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
async def test_a_put_cancelled_beside_another_of_its_key_spares_that_one(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An early upload of a file abandoned for the stream that takes its place (the
    staging disk full) is a put of the key that one makes at once: its cancelling aborts
    none of the other's parts (the stream failed with NoSuchUpload, its bytes lost), and
    its own parts go once the other is done."""
    async with through_a_relay(provider, request, tmp_path, DEADLINE) as (settings, relay, store):
        in_progress = uploads_in_progress(request, provider, settings)
        early, stream = tmp_path / "early.bin", tmp_path / "stream.bin"
        early.write_bytes(os.urandom(10 * PART_SIZE))
        stream.write_bytes(os.urandom(3 * PART_SIZE))
        relay.slow(b"partNumber=", 0.5)
        abandoned = asyncio.create_task(store.put_stream("big.bin", parts(early)))
        await until_in_progress(in_progress, 1)
        taking_over = asyncio.create_task(store.put_stream("big.bin", parts(stream)))
        await until_in_progress(in_progress, 2)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        meta = await taking_over
        assert await store.get_range("big.bin", 0, meta.size, meta.version) == stream.read_bytes()
        assert await asyncio.to_thread(in_progress) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
async def test_a_put_retried_to_success_leaves_no_parts_of_its_failed_try(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A large put whose first try breaks half way (the connection lost for a second under
    a part) and whose next try succeeds leaves no upload in progress: obstore's abort of
    the failed try failed too (no connection), and its parts stayed in the bucket, billed
    and unseen, when only a put that failed for good had them aborted."""
    async with through_a_relay(provider, request, tmp_path, 10.0) as (settings, relay, store):
        in_progress = uploads_in_progress(request, provider, settings)
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(3 * PART_SIZE))
        relay.hold(b"partNumber=")  # the first try's first part: its connection is cut
        put = asyncio.create_task(store.put("big.bin", big))
        await asyncio.to_thread(relay.wait_until_held)
        relay.cut()
        await asyncio.sleep(1.0)  # the try's abort fails, and so do the next tries
        relay.restore()
        meta = await put
        assert await store.get_range("big.bin", 0, meta.size, meta.version) == big.read_bytes()
        assert await asyncio.to_thread(in_progress) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
async def test_an_upload_begun_after_its_put_was_cancelled_is_aborted_a_deadline_later(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A large put cancelled while its CreateMultipartUpload is on its way (held here)
    leaves an upload that the store begins after the put's abort looked for it: it stayed
    in the bucket for good, billed and unseen. The abort is done again a deadline later,
    when every request of the put has ended, and takes it."""
    async with through_a_relay(provider, request, tmp_path, DEADLINE) as (settings, relay, store):
        in_progress = uploads_in_progress(request, provider, settings)
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(3 * PART_SIZE))
        relay.hold(b"big.bin?uploads")  # the CreateMultipartUpload, not the listing's GET
        put = asyncio.create_task(store.put("big.bin", big))
        await asyncio.to_thread(relay.wait_until_held)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put  # once its abort is done: it found no upload
        dropped = time.monotonic()
        relay.release()
        await until_in_progress(in_progress, 1)  # the store began it after all
        while await asyncio.to_thread(in_progress):
            assert time.monotonic() - dropped < DEADLINE + 5, "the late upload stayed"
            await asyncio.sleep(0.1)


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", ["s3-seaweedfs", "s3-moto"])
@pytest.mark.parametrize("how", ["put", "put_stream"])
async def test_a_multipart_upload_another_client_aborted_is_put_again_or_fails(
    provider: str, how: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Another client aborts the upload of a large put under way (as an S3 store of
    tierfs does to the uploads of a key begun during its failed put): the store answers
    its completion NoSuchUpload. A put from a file is tried again, whole, and succeeds,
    where it failed as "no such object" (a close's ENOENT); a streamed put cannot be sent
    again: it fails, and not as a missing object either."""
    async with through_a_relay(provider, request, tmp_path, 10.0) as (settings, relay, store):
        in_progress = uploads_in_progress(request, provider, settings)
        s3 = s3_server_for(request, provider).boto3_client()
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(3 * PART_SIZE))
        relay.hold(b"?uploadId=")  # the completion of the first try: its parts are all in
        put = asyncio.create_task(
            store.put("big.bin", big) if how == "put" else store.put_stream("big.bin", parts(big))
        )
        await asyncio.to_thread(relay.wait_until_held)
        answer = await asyncio.to_thread(s3.list_multipart_uploads, Bucket=settings.s3_bucket)
        (upload,) = answer["Uploads"]
        await asyncio.to_thread(
            s3.abort_multipart_upload,
            Bucket=settings.s3_bucket,
            Key=upload["Key"],
            UploadId=upload["UploadId"],
        )
        relay.release()
        if how == "put":
            meta = await put
            assert await store.get_range("big.bin", 0, meta.size, meta.version) == big.read_bytes()
        else:
            with pytest.raises(CloudError) as failed:
                await put
            assert not isinstance(failed.value, ObjectNotFoundError)
            assert "NoSuchUpload" in str(failed.value)
            assert await _size_of(store, "big.bin") is None
        assert await asyncio.to_thread(in_progress) == []


async def parts(source: Path) -> AsyncIterator[bytes]:
    """The bytes of `source`, a part at a time."""
    body = source.read_bytes()
    for start in range(0, len(body), PART_SIZE):
        yield body[start : start + PART_SIZE]


def uploads_in_progress(
    request: pytest.FixtureRequest, provider: str, settings: ClientSettings
) -> Callable[[], list[str]]:
    """A function listing the keys of the multipart uploads in progress in the bucket."""
    s3 = s3_server_for(request, provider).boto3_client()

    def listed() -> list[str]:
        answer = s3.list_multipart_uploads(Bucket=settings.s3_bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    return listed


async def until_in_progress(in_progress: Callable[[], list[str]], count: int) -> None:
    """Until `count` multipart uploads are in progress, and some of their parts sent."""
    while len(await asyncio.to_thread(in_progress)) < count:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


@pytest.mark.asyncio
async def test_a_gcs_upload_session_the_server_does_not_know_starts_over(
    tmp_path: Path,
) -> None:
    """A chunk of a resumable upload answered 404 (GCS knows no such session: it expired,
    or was dropped) is no missing bucket: the upload starts over in a new session."""
    async with a_relayed_gcs_store(tmp_path) as (relay, store, _):
        body = os.urandom(MULTIPART_THRESHOLD + PART_SIZE + 5)
        relay.rewrite(b"upload_id=", b"upload_ix=")  # its first chunk names no session
        meta = await store.put("big.bin", body)
        assert relay.rewrites_pending == 0
        assert meta.size == len(body)
        assert await store.get_range("big.bin", 0, len(body), meta.version) == body


@pytest.mark.asyncio
async def test_a_gcs_upload_whose_last_answer_was_lost_holds_its_body(tmp_path: Path) -> None:
    """The last chunk of a resumable upload lands and its answer is lost (the connection
    breaks): the put still ends with the object holding its body, whole."""
    async with a_relayed_gcs_store(tmp_path) as (relay, store, direct):
        old = await store.put("big.bin", b"the old content")
        body = os.urandom(MULTIPART_THRESHOLD + PART_SIZE + 5)
        relay.hold(f"-{len(body) - 1}/{len(body)}".encode())  # the last chunk's range
        put = asyncio.create_task(store.put("big.bin", body, expect=old.version))
        await asyncio.to_thread(relay.wait_until_held)
        relay.mute()
        relay.release()
        while (landed := await direct.head("big.bin")).size != len(body):
            await asyncio.sleep(0.02)  # until the server has the object
        relay.cut()  # the answer never came: the connection breaks
        relay.restore()
        meta = await put  # aiohttp sent the chunk again: GCS knew the session no more
        assert (meta.version, meta.size) == (landed.version, len(body))  # not sent twice
        assert (await direct.head("big.bin")).version == landed.version
        assert await direct.get_range("big.bin", 0, len(body), landed.version) == body


@pytest.mark.asyncio
async def test_a_gcs_chunk_kept_in_part_is_sent_on_from_where_the_server_stopped(
    tmp_path: Path,
) -> None:
    """GCS may keep part of a chunk, and says how much in the Range of its 308 answer: the
    upload goes on from there, and the object holds the body. Before, the next chunk went
    from where the client thought the server was: a hole in the object, and the put
    failed."""
    async with a_relayed_gcs_store(tmp_path) as (relay, store, direct):
        body = os.urandom(MULTIPART_THRESHOLD + PART_SIZE + 5)
        half = PART_SIZE // 2
        # The server reads half the second chunk, keeps it, and says so.
        kept = f"bytes {PART_SIZE}-{PART_SIZE + half - 1}/".encode()
        relay.rewrite(f"bytes {PART_SIZE}-{2 * PART_SIZE - 1}/".encode(), kept)
        relay.shorten(kept, half)
        meta = await store.put("big.bin", body)
        assert (relay.rewrites_pending, relay.shortens_pending) == (0, False)
        assert meta.size == len(body)
        assert await direct.get_range("big.bin", 0, len(body), meta.version) == body


@pytest.mark.asyncio
async def test_a_gcs_chunk_cut_mid_body_is_sent_again_in_its_session(tmp_path: Path) -> None:
    """A chunk whose connection breaks mid-body, after the upload has gone on longer than
    the cloud deadline, is sent again in its upload session, from what the server holds.
    Before, the deadline counted from the put's start: the put failed at once."""
    # A deadline of 8 s, not DEADLINE: after the cut, the chunk's tries (backed off up to
    # 3.2 s after 6 failed ones) must reach the relay restored, on a loaded machine too
    # (with 5 s, once: 6 tries refused in 2.5 s, and the next would have passed it).
    async with a_relayed_gcs_store(tmp_path, timeout=8.0) as (relay, store, direct):
        body = bytearray(os.urandom(MULTIPART_THRESHOLD + PART_SIZE + 5))
        cut_here = b"-- the connection breaks here --"
        for n in range(8):  # in the third chunk's body, a few times: one is read whole
            at = 2 * PART_SIZE + 2**20 + n * 100_000
            body[at : at + len(cut_here)] = cut_here
        relay.slow(b"upload_id=", 3.0)  # each chunk: 9 s to the third, over the deadline
        relay.hold(cut_here)
        put = asyncio.create_task(store.put("big.bin", bytes(body)))
        await asyncio.to_thread(relay.wait_until_held)
        relay.slow(b"upload_id=", 0.0)
        relay.cut()  # the server has had part of the chunk's body
        await asyncio.sleep(0.5)  # aiohttp's own sending again fails too
        relay.restore()
        meta = await put
        assert meta.size == len(body)
        assert await direct.get_range("big.bin", 0, len(body), meta.version) == bytes(body)


@contextlib.asynccontextmanager
async def a_relayed_gcs_store(
    root: Path, timeout: float = 10.0
) -> AsyncIterator[tuple[Relay, CloudStore, CloudStore]]:
    """A fake-gcs-server of its own behind a relay, which its upload sessions' URLs name
    too; a store that goes through the relay and one that does not (deadline `timeout`)."""
    (relay_port,) = servers.free_ports(1)
    server = servers.start_fake_gcs(root, external_port=relay_port)
    relay = Relay(int(server.endpoint.rsplit(":", 1)[1]), port=relay_port).start()
    settings = settings_for("gcp-native", server, root, timeout=timeout)
    store = open_store(
        settings.model_copy(update={"gcp_endpoint": f"http://127.0.0.1:{relay_port}"})
    )
    direct = open_store(settings)
    try:
        yield relay, store, direct
    finally:
        await store.close()
        await direct.close()
        relay.stop()
        server.stop()


@contextlib.asynccontextmanager
async def through_a_relay(
    provider: str, request: pytest.FixtureRequest, root: Path, timeout: float
) -> AsyncIterator[tuple[ClientSettings, Relay, CloudStore]]:
    """The settings of `provider`'s server, a relay in front of it, and a store of those
    settings that goes through the relay; both stopped on the way out."""
    settings = settings_for(provider, server_for(request, provider), root, timeout=timeout)
    field = "s3_endpoint" if provider.startswith("s3") else "azure_endpoint"
    relay, relayed = relay_in_front_of(getattr(settings, field))
    store = open_store(settings.model_copy(update={field: relayed}))
    try:
        yield settings, relay, store
    finally:
        await store.close()
        relay.stop()


async def _size_of(store: CloudStore, key: str) -> int | None:
    try:
        return (await store.head(key)).size
    except ObjectNotFoundError:
        return None

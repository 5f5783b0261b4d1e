"""CloudStore over the GCS JSON API with gcloud-aio-storage: real GCS or fake-gcs-server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Storage

from tierfs.cloud.base import (
    GCS_ACME_FOLDER,
    LIST_PAGE_SIZE,
    MULTIPART_THRESHOLD,
    PART_SIZE,
    CloudStore,
    ListPage,
    ObjectMeta,
    may_pass,
    md5_of,
)
from tierfs.cloud.signed import web_page_error
from tierfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CloudError,
    ConfigError,
    ObjectNotFoundError,
    TransientCloudError,
    VersionChangedError,
)
from tierfs.retry import with_retry

T = TypeVar("T")
log = logging.getLogger(__name__)

GCS_API_ROOT = "https://storage.googleapis.com"
OCTET_STREAM = "application/octet-stream"
# Resets, disconnects, truncated bodies and timeouts; HTTP statuses are sorted by code.
TRANSIENT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
# Resumable uploads go up in PART_SIZE chunks; GCS wants multiples of 256 KiB.
assert PART_SIZE % (256 * 2**10) == 0
# Upload sessions one put starts, when GCS forgets them (404, 410), before it fails.
SESSIONS = 3
# Chunk answers in a row that acknowledge no new byte before an upload fails.
STALLS = 3


class GcsStore(CloudStore):
    """A GCS bucket; an `endpoint` (fake-gcs-server) means no auth, else the key file or ADC."""

    reserved_prefixes = (GCS_ACME_FOLDER,)

    def __init__(
        self, bucket: str, endpoint: str | None, credentials: Path | None, timeout: float
    ) -> None:
        try:  # gcloud-aio-auth would silently fall back to ADC on an unreadable key file
            _ = credentials is None or json.loads(credentials.read_text())["type"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"GOOGLE_APPLICATION_CREDENTIALS: {credentials} is not a readable "
                f"service-account key file ({type(exc).__name__})"
            ) from None
        self.url = f"gcs://{bucket}"
        self._bucket = bucket
        self._dev = endpoint is not None
        self._root = endpoint.rstrip("/") if endpoint else GCS_API_ROOT
        self._service_file = str(credentials) if credentials else None
        self._timeout = timeout
        # Per request; the retry deadline (also `timeout`) bounds each whole operation.
        self._http_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0))
        # gcloud-aio types `timeout` as int, but its AioSession takes a ClientTimeout as is.
        self._gtimeout = cast(int, self._http_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None

    def _client(self) -> Storage:
        """The Storage client over the store's one session, made inside the running loop."""
        if self._storage is None:
            self._session = aiohttp.ClientSession(timeout=self._http_timeout)
            self._storage = Storage(
                service_file=self._service_file,
                session=self._session,  # type: ignore[arg-type]  # typed as the requests build
                api_root=self._root,  # explicit, so STORAGE_EMULATOR_HOST is never read
                api_is_dev=self._dev,
            )
        return self._storage

    async def _request(self, method: str, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """A request on the session itself, for what gcloud-aio-storage cannot express."""
        headers = kwargs.pop("headers", {})
        if not self._dev:
            headers["Authorization"] = f"Bearer {await self._client().token.get()}"
        session = self._client().session  # its request() raises ClientResponseError on >= 400
        return await session.request(method, url, headers, timeout=self._http_timeout, **kwargs)

    def _translate(self, exc: Exception, key: str, request: str) -> Exception:
        """Map an aiohttp or gcloud-aio failure of `request` (LIST, PUT, ...) to a tierfs
        error; the caller raises it."""
        what = f"{self.url}/{key}"
        if isinstance(exc, aiohttp.ClientResponseError):
            url = exc.request_info.real_url
            if request == "LIST" and (
                page := web_page_error(self.url, url, exc.status, exc.headers)
            ):
                return page
            status, detail = exc.status, _detail(exc)
            # Nothing else was looked for (a chunk's 404, of the session, is `_session_gone`).
            if status == 404 and request in ("LIST", "PUT"):
                return BucketNotFoundError(f"{self.url}: no such bucket")
            if status == 404:
                return ObjectNotFoundError(f"{what}: no such object")
            if status == 412:
                return VersionChangedError(f"{what}: the object changed")
            if status in (401, 403):
                return AccessDeniedError(f"access denied to bucket {self.url}: {detail}")
            if may_pass(status):
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                return TransientCloudError(f"{what}: HTTP {status}: {detail}", retry_after)
            return CloudError(f"{what}: HTTP {status}: {detail}")
        text = f"{what}: {type(exc).__name__} {exc}".rstrip()
        if isinstance(exc, TRANSIENT_ERRORS):
            return TransientCloudError(text)
        return CloudError(f"{text} (unexpected answer)")

    async def _call(
        self, what: str, key: str, operation: Callable[[], Awaitable[T]], bounded: bool = True
    ) -> T:
        async def attempt() -> T:
            try:
                return await operation()
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                raise self._translate(exc, key, what) from exc

        return await with_retry(
            attempt,
            what=f"{what} {self.url}/{key}",
            deadline=self._timeout,
            bound_attempts=bounded,
            on_retry=self.on_retry,
        )

    async def _head(self, key: str) -> ObjectMeta:
        data = await self._client().download_metadata(self._bucket, key, timeout=self._gtimeout)
        return _meta(data)

    async def head(self, key: str) -> ObjectMeta:
        self.check_key(key)
        return await self._call("HEAD", key, lambda: self._head(key))

    async def get_range(self, key: str, start: int, length: int, version: str) -> bytes:
        self.check_key(key)
        if length <= 0:
            return b""
        url = f"{self._root}/storage/v1/b/{quote(self._bucket, safe='')}/o/{quote(key, safe='')}"

        async def fetch() -> bytes:
            try:  # real GCS answers 412 to ifGenerationMatch; fake-gcs-server ignores it...
                resp = await self._request(
                    "GET",
                    url,
                    headers={"Range": f"bytes={start}-{start + length - 1}"},
                    params={"alt": "media", "ifGenerationMatch": version},
                )
            except aiohttp.ClientResponseError as exc:
                if exc.status != 416:
                    raise
                # The range starts at or past the end: b"" if the object is still at `version`.
                generation = exc.headers.get("x-goog-generation") if exc.headers else None
                self._same(key, generation or (await self._head(key)).version, version)
                return b""
            async with resp:
                data = await resp.read()
            # ...so the generation the bytes came from is checked as well.
            self._same(key, resp.headers.get("x-goog-generation", version), version)
            return data[start : start + length] if resp.status == 200 else data  # Range ignored

        return await self._call("GET", key, fetch)

    def _same(self, key: str, generation: str, version: str) -> None:
        if generation != version:
            raise VersionChangedError(f"{self.url}/{key}: generation {generation}, not {version}")

    async def put(self, key: str, body: bytes | Path, expect: str | None = None) -> ObjectMeta:
        self.check_key(key)
        size = len(body) if isinstance(body, bytes) else body.stat().st_size
        if expect is not None:  # fake-gcs-server ignores ifGenerationMatch: not relied on
            await self._check_expected(key, expect)
        if size > MULTIPART_THRESHOLD:
            return await self._resumable(key, body, size)

        async def simple() -> ObjectMeta:
            data = body if isinstance(body, bytes) else await asyncio.to_thread(body.read_bytes)
            return _meta(
                await self._client().upload(
                    self._bucket,
                    key,
                    data,
                    content_type=OCTET_STREAM,
                    force_resumable_upload=False,
                    timeout=self._gtimeout,
                )
            )

        return await self._call("PUT", key, simple)

    async def _resumable(self, key: str, body: bytes | Path, size: int) -> ObjectMeta:
        """A resumable upload: PART_SIZE chunks in order, one in memory at a time (a GCS
        upload session takes its chunks in order, unlike S3 multipart). A session GCS knows
        no more (404, 410: it expired, or was dropped) starts over in a new one, at most
        SESSIONS times."""
        reader: BinaryIO = io.BytesIO(body) if isinstance(body, bytes) else body.open("rb")
        with reader:
            for _ in range(SESSIONS):
                location = await self._call("PUT", key, partial(self._start_session, key))
                if (meta := await self._send_chunks(key, location, reader, body, size)) is not None:
                    return meta
        raise CloudError(f"{self.url}/{key}: GCS forgot {SESSIONS} upload sessions in a row")

    async def _start_session(self, key: str) -> str:
        """Start a resumable upload session of `key`: its URL."""
        resp = await self._request(
            "POST",
            f"{self._root}/upload/storage/v1/b/{quote(self._bucket, safe='')}/o",
            headers={"X-Upload-Content-Type": OCTET_STREAM},
            params={"uploadType": "resumable"},
            json={"name": key, "contentType": OCTET_STREAM},
        )
        resp.release()
        return resp.headers["Location"]

    async def _send_chunks(
        self, key: str, location: str, reader: BinaryIO, body: bytes | Path, size: int
    ) -> ObjectMeta | None:
        """Send `reader`'s `size` bytes to the session at `location`, each chunk from the
        offset GCS acknowledged last (the `Range` of its 308 answer), so bytes it did not
        keep go again, and a chunk whose sending broke is sent again (`_call`) from there:
        GCS takes bytes it already holds again (fake-gcs-server appends them, so a chunk
        that reached it whole and lost its answer makes a wrong object, which fails the put).
        The object; None if GCS knows the session no more (see `_session_gone`)."""
        kept = stalls = 0
        while True:
            chunk = await asyncio.to_thread(_read_at, reader, kept, PART_SIZE)
            send = partial(self._send_chunk, location, kept, chunk, size)
            answer = await self._call("PUT", key, send)
            end = kept + len(chunk)
            if answer is None:
                return await self._session_gone(key, body, size, end == size)
            if isinstance(answer, ObjectMeta):
                if answer.size != size:
                    raise CloudError(f"{self.url}/{key}: GCS made {answer.size} bytes of {size}")
                return answer
            if not 0 <= answer <= end or answer == size:
                raise CloudError(f"{self.url}/{key}: GCS holds {answer} bytes of the {end} sent")
            stalls = stalls + 1 if answer <= kept else 0
            if stalls >= STALLS:
                raise CloudError(f"{self.url}/{key}: GCS kept nothing of {STALLS} chunks at {kept}")
            kept = answer

    async def _send_chunk(
        self, location: str, start: int, chunk: bytes, size: int
    ) -> ObjectMeta | int | None:
        """PUT `chunk`, the bytes from `start` of `size`, to the session at `location`: the
        object once GCS has made it, else how many bytes GCS holds; None for no such
        session (404, 410)."""
        try:
            resp = await self._request(
                "PUT",
                location,
                headers={"Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{size}"},
                data=io.BytesIO(chunk),  # raw bytes over 1 MiB make aiohttp warn
                allow_redirects=False,  # 308: GCS wants more
            )
        except aiohttp.ClientResponseError as exc:
            if exc.status in (404, 410):
                return None
            raise
        async with resp:
            if resp.status == 308:
                return _held(resp.headers.get("Range"))
            return _meta(await resp.json(content_type=None))

    async def _session_gone(
        self, key: str, body: bytes | Path, size: int, last: bool
    ) -> ObjectMeta | None:
        """A chunk was answered 404 or 410: GCS knows no such upload session. It expired,
        or, for the `last` chunk, it is finished: aiohttp, or `_call`, sent the chunk again
        after its answer was lost, and its first sending may have completed the object.
        That object if it holds `body`; else None, and the upload starts over in a new
        session."""
        if last:
            landed = await self._call("HEAD", key, partial(self._holding, key, body, size))
            if landed is not None:
                return landed
        log.info("%s/%s: the upload session is gone; starting over", self.url, key)
        return None

    async def _holding(self, key: str, body: bytes | Path, size: int) -> ObjectMeta | None:
        """The object at `key` if it holds `body` (its size and MD5 say so), else None."""
        try:
            item = await self._client().download_metadata(self._bucket, key, timeout=self._gtimeout)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404:
                return None
            raise
        if int(item["size"]) != size or not item.get("md5Hash"):
            return None  # a composite object has no MD5
        if base64.b64decode(item["md5Hash"]) != await asyncio.to_thread(md5_of, body):
            return None
        return _meta(item)

    async def list(
        self, prefix: str = "", delimiter: bool = True, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        params = {"maxResults": str(page_size)}
        if prefix:
            params["prefix"] = self.check_key(prefix.removesuffix("/")) + "/"
        if delimiter:
            params["delimiter"] = "/"
        while True:  # each page is retried alone: its pageToken resumes exactly
            data = await self._call("LIST", prefix, partial(self._list_page, dict(params)))
            page = ListPage(
                [_meta(item) for item in data.get("items", [])],
                [p if p.endswith("/") else p + "/" for p in data.get("prefixes", [])],
            )
            yield self.named_only(page)
            if not data.get("nextPageToken"):
                return
            params["pageToken"] = data["nextPageToken"]

    async def _list_page(self, params: dict[str, str]) -> dict[str, Any]:
        """One answer of Objects: list (sent here, not by gcloud-aio, whose reading of it
        as JSON would hide a web page's answer: `web_page_error`)."""
        url = f"{self._root}/storage/v1/b/{quote(self._bucket, safe='')}/o"
        async with await self._request("GET", url, params=params) as resp:
            if error := web_page_error(self.url, url, resp.status, resp.headers):
                raise error
            data: dict[str, Any] = await resp.json(content_type=None)
        return data

    async def delete(self, key: str) -> None:
        self.check_key(key)
        delete = partial(self._client().delete, self._bucket, key, timeout=self._gtimeout)
        with contextlib.suppress(ObjectNotFoundError):  # GCS says 404; absent is what was asked
            await self._call("DELETE", key, delete)

    async def put_marker(self, prefix: str) -> None:
        self.check_key(prefix)
        marker = prefix + "/"
        upload = partial(
            self._client().upload,
            self._bucket,
            marker,
            b"",
            content_type=OCTET_STREAM,
            force_resumable_upload=False,
            timeout=self._gtimeout,
        )
        await self._call("PUT", marker, upload)

    async def delete_marker(self, prefix: str) -> None:
        self.check_key(prefix)
        marker = prefix + "/"
        delete = partial(self._client().delete, self._bucket, marker, timeout=self._gtimeout)
        with contextlib.suppress(ObjectNotFoundError):
            await self._call("DELETE", marker, delete)

    async def copy(
        self, source: str, destination: str, size: int | None = None, version: str | None = None
    ) -> str:
        self.check_key(source)
        self.check_key(destination)
        condition = {} if version is None else {"ifSourceGenerationMatch": version}
        # objects.rewrite, which gcloud-aio repeats with the rewriteToken until done.
        answer = await self._call(
            "COPY",
            source,
            lambda: self._client().copy(
                self._bucket,
                source,
                self._bucket,
                new_name=destination,
                params=dict(condition),  # gcloud-aio adds the rewriteToken to it
                timeout=self._gtimeout,
            ),
        )
        if version is not None:
            await self._was_copied_at(source, version)
        return str(answer["resource"]["generation"])

    async def _was_copied_at(self, source: str, version: str) -> None:
        """fake-gcs-server ignores ifSourceGenerationMatch: `source` still at `version` after
        the copy was at it during the copy (generations only grow), else VersionChangedError."""
        try:
            now = (await self.head(source)).version
        except ObjectNotFoundError as exc:
            raise VersionChangedError(f"{self.url}/{source}: gone since the copy") from exc
        if now != version:
            raise VersionChangedError(f"{self.url}/{source}: generation {now}, not {version}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._storage = None


def _meta(item: dict[str, Any]) -> ObjectMeta:
    updated = datetime.fromisoformat(item["updated"].replace("Z", "+00:00"))
    return ObjectMeta(item["name"], int(item["size"]), str(item["generation"]), updated)


def _detail(exc: aiohttp.ClientResponseError) -> str:
    """Google's message out of gcloud-aio's "Reason: {json}" text, else the first line."""
    _, _, body = exc.message.partition(": ")
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return (exc.message.strip().splitlines() or [str(exc.status)])[0][:200]


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


def _read_at(reader: BinaryIO, offset: int, length: int) -> bytes:
    """Up to `length` bytes of `reader` from `offset` (it blocks: called off the loop)."""
    reader.seek(offset)
    return reader.read(length)


def _held(value: str | None) -> int:
    """The bytes GCS holds of an upload, from the `Range` of its 308 answer ("bytes=0-N");
    none when there is no `Range`."""
    if value is None:
        return 0
    first, _, last = value.removeprefix("bytes=").partition("-")
    if first != "0" or not last.isdigit():
        raise CloudError(f"GCS answered an upload chunk with a Range of {value!r}")
    return int(last) + 1

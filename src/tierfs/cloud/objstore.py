"""CloudStore over obstore: one Rust-backed async client for S3, Azure Blob and local disk."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from xml.etree import ElementTree

import obstore
import obstore.exceptions as obx
from obstore.store import ObjectStore

if TYPE_CHECKING:
    from obstore import PutMode

from tierfs.chunks import Data
from tierfs.cloud.base import (
    ABSENT,
    LIST_PAGE_SIZE,
    MULTIPART_THRESHOLD,
    PART_BUFFERS,
    PART_SIZE,
    CloudStore,
    ListPage,
    ObjectMeta,
    may_pass,
    md5_of,
)
from tierfs.cloud.upload_drops import UploadDrops
from tierfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CloudError,
    InvalidKeyError,
    ObjectNotFoundError,
    TransientCloudError,
    VersionChangedError,
)
from tierfs.retry import with_retry

T = TypeVar("T")

MiB = 2**20
# Retries happen in tierfs.retry alone, so obstore's own are off.
NO_RETRIES: dict[str, Any] = {"max_retries": 0, "retry_timeout": timedelta(seconds=0)}
_STATUS_RE = re.compile(r"status(?: code)?:? (\d{3})", re.IGNORECASE)
_BUCKET_MISSING = re.compile(r"<Code>(NoSuchBucket|ContainerNotFound)</Code>")  # S3, Azure
# S3's answer to a part or the completion of a multipart upload aborted meanwhile (by
# another client: see S3Cloud._abort_begun), and to obstore's abort then.
_UPLOAD_ABORTED = "<Code>NoSuchUpload</Code>"
_TRANSIENT_TEXT = (
    "error sending request",
    "connection",
    "timed out",
    "timeout",
    "reset",
    "broken pipe",
    "incomplete",
    "unexpected eof",
    "body error",
    "error decoding response body",
)
# obstore's own refusal of a range past the end it knows (local files, Azure), in the
# error's debug part; a server's is its 416. Never words of the whole text: it holds the
# URL (the key: "orange.txt") and the time taken ("in 4.16ms").
_START_TOO_LARGE = "StartTooLarge {"
# obstore's error for a range request answered with the whole object (200, not 206):
# SeaweedFS does that to a few small ranges while other requests are being cancelled.
_NOT_PARTIAL_TEXT = "non-partial response"
_MD5_HEX = re.compile(r"[0-9a-f]{32}")


def client_options(timeout: float, allow_http: bool) -> dict[str, Any]:
    """HTTP options for obstore: per-request timeouts from FUSE_CLOUD_TIMEOUT."""
    return {
        "timeout": timedelta(seconds=timeout),
        "connect_timeout": timedelta(seconds=min(timeout, 5.0)),
        "allow_http": allow_http,
        "pool_max_idle_per_host": "64",
    }


def http_status(exc: Exception) -> int | None:
    """The HTTP status an obstore error reports in its message, if any."""
    match = _STATUS_RE.search(str(exc))
    return int(match.group(1)) if match else None


def is_transient(exc: Exception) -> bool:
    """5xx except 501/505, 408, 429, resets and timeouts are worth another try."""
    status = http_status(exc)
    if status is not None:
        return may_pass(status)
    return any(word in str(exc).lower() for word in _TRANSIENT_TEXT)


class ObjstoreCloud(CloudStore):
    """A bucket reached through an obstore store (S3Store, AzureStore or LocalStore)."""

    streams_uploads = True
    checks_puts = True  # If-Match / If-None-Match (obstore's PutMode); not LocalStore
    # Objects larger than this are copied through the client (`copy_through`), not by the
    # store; None: the store copies any size.
    copy_limit: int | None = None
    # The most parts one multipart upload takes (S3's; Azure's 50,000 blocks); None: any.
    max_parts: int | None = 10_000

    def __init__(self, store: ObjectStore, url: str, timeout: float) -> None:
        self._store = store
        self.url = url
        self._timeout = timeout
        # What drops the parts of failed multipart uploads, where the store keeps them.
        self._drops: UploadDrops[Any] | None = None

    def _translate(self, exc: Exception, key: str) -> Exception:
        """Map an obstore failure to a tierfs error; the caller raises it."""
        if _BUCKET_MISSING.search(str(exc)):  # a listing's or a put's 404 (the store's code)
            return BucketNotFoundError(f"{self.url}: no such bucket")
        if _UPLOAD_ABORTED in str(exc):  # not a missing object: a put tries it all again
            return TransientCloudError(
                f"{self.url}/{key}: its multipart upload was aborted meanwhile (NoSuchUpload)"
            )
        if isinstance(exc, obx.NotFoundError | FileNotFoundError):
            return ObjectNotFoundError(f"{self.url}/{key}: no such object")
        if isinstance(exc, obx.PreconditionError | obx.AlreadyExistsError):  # a put's `expect`
            return VersionChangedError(f"{self.url}/{key}: the object changed")
        denied = (obx.PermissionDeniedError, obx.UnauthenticatedError)
        if isinstance(exc, denied) or http_status(exc) in (401, 403):
            return AccessDeniedError(f"access denied to bucket {self.url}: check the credentials")
        if isinstance(exc, obx.InvalidPathError):
            return InvalidKeyError(f"invalid object key {key!r}: {exc}")
        if is_transient(exc):
            return TransientCloudError(f"{self.url}/{key}: {_first_line(exc)}")
        return CloudError(f"{self.url}/{key}: {_first_line(exc)}")

    async def _call(
        self, what: str, key: str, operation: Callable[[], Awaitable[T]], bounded: bool = True
    ) -> T:
        async def attempt() -> T:
            try:
                return await operation()
            except (obx.BaseError, OSError) as exc:
                raise self._translate(exc, key) from exc

        return await with_retry(
            attempt,
            what=f"{what} {self.url}/{key}",
            deadline=self._timeout,
            bound_attempts=bounded,
            on_retry=self.on_retry,
        )

    async def head(self, key: str) -> ObjectMeta:
        self.check_key(key)
        meta = await self._call("HEAD", key, lambda: obstore.head_async(self._store, key))
        return _meta(meta)

    async def get_range(self, key: str, start: int, length: int, version: str) -> Data:
        self.check_key(key)
        if length <= 0:
            return b""

        async def fetch() -> Data:
            try:
                result = await obstore.get_async(
                    self._store,
                    key,
                    options={"range": (start, start + length), "if_match": version},
                )
            except obx.PreconditionError:
                # Azure answers 412 for a missing blob too: tell "gone" from "changed".
                await obstore.head_async(self._store, key)
                raise
            except obx.GenericError as exc:
                text = str(exc).lower()
                if _NOT_PARTIAL_TEXT in text:  # asked again, it answers the range
                    raise TransientCloudError(
                        f"{self.url}/{key}: the store answered a range request with the "
                        f"whole object"
                    ) from exc
                if http_status(exc) != 416 and _START_TOO_LARGE not in str(exc):
                    raise
                return await self._past_end(key, start, version)
            if result.meta["e_tag"] != version:
                raise obx.PreconditionError(f"version {result.meta['e_tag']} != {version}")
            return memoryview(await result.bytes_async())  # no copy: see chunks.Data

        return await self._call("GET", key, fetch)

    async def _past_end(self, key: str, start: int, version: str) -> Data:
        """A range the store refused: b"" if it starts past the end of `version`."""
        meta = await obstore.head_async(self._store, key)
        if meta["e_tag"] != version:
            raise obx.PreconditionError(f"version {meta['e_tag']} != {version}")
        if start >= meta["size"]:
            return b""
        raise CloudError(f"{self.url}/{key}: range from {start} refused by the store")

    def _part_size(self, size: int | None) -> int:
        """PART_SIZE, or, for an upload of `size` bytes that would take more than
        `max_parts` of them (78 GiB on S3), the fewest whole MiB that fit it in."""
        if size is None or self.max_parts is None:
            return PART_SIZE
        return max(PART_SIZE, -(-size // (self.max_parts * MiB)) * MiB)

    async def put(self, key: str, body: bytes | Path, expect: str | None = None) -> ObjectMeta:
        self.check_key(key)
        size = len(body) if isinstance(body, bytes) else body.stat().st_size
        part = self._part_size(size)
        mode: PutMode | None = None
        multipart = size > MULTIPART_THRESHOLD
        if expect is not None and self.checks_puts and not multipart:
            mode = "create" if expect == ABSENT else {"e_tag": expect}
        elif expect is not None:  # LocalStore, or a multipart upload: neither takes one
            await self._check_expected(key, expect)

        tries = 0

        async def upload() -> ObjectMeta:
            nonlocal tries
            tries += 1
            try:
                result = await obstore.put_async(
                    self._store,
                    key,
                    body,
                    mode=mode,
                    use_multipart=multipart,
                    chunk_size=part,
                    max_concurrency=max(1, PART_BUFFERS // part),
                )
            except (obx.PreconditionError, obx.AlreadyExistsError):
                # A retry refused: the try before it may have landed, its answer lost. If
                # the object holds this body, it is this put's (or the same bytes).
                landed = await self._holding(key, body, size) if tries > 1 else None
                if landed is None:
                    raise
                return landed
            version = result["e_tag"] or result["version"]
            if version is None:  # no store used here omits both; be safe rather than wrong
                return _meta(await obstore.head_async(self._store, key))
            return ObjectMeta(key, size, version, datetime.now(UTC))

        return await self._put_tries(key, upload, multipart)

    async def _put_tries(
        self, key: str, attempt: Callable[[], Awaitable[ObjectMeta]], multipart: bool
    ) -> ObjectMeta:
        """`attempt`, one try of a put of `key`, until one succeeds (`_call`); the tries
        of a `multipart` put are not bounded by the deadline, each of its requests is, and
        what they leave in a store that keeps it is dropped (`UploadDrops`)."""
        if not multipart or self._drops is None:
            return await self._call("PUT", key, attempt, bounded=not multipart)
        drops = self._drops

        async def noted() -> ObjectMeta:
            try:
                return await attempt()
            except BaseException:
                drops.try_failed(key)  # its upload may be left, even if a retry succeeds
                raise

        return await drops.run(key, partial(self._call, "PUT", key, noted, bounded=False))

    async def _holding(self, key: str, body: bytes | Path, size: int) -> ObjectMeta | None:
        """The object at `key` if it holds `body` (its size and MD5 say so), else None."""
        try:
            meta = _meta(await obstore.head_async(self._store, key))
        except obx.NotFoundError:
            return None
        if meta.size != size:
            return None
        stored = await self._stored_md5(key, meta)
        if stored is None or stored != await asyncio.to_thread(md5_of, body):
            return None
        return meta

    async def _stored_md5(self, key: str, meta: ObjectMeta) -> bytes | None:
        """The MD5 of the object `meta` tells, None if it tells none: S3's ETag is one for
        an object put whole (with KMS encryption it is another, which matches no body)."""
        etag = meta.version.strip('"')
        return bytes.fromhex(etag) if _MD5_HEX.fullmatch(etag) else None

    async def put_stream(
        self, key: str, parts: AsyncIterator[bytes], size: int | None = None
    ) -> ObjectMeta:
        self.check_key(key)
        streamed = partial(self._streamed, key, parts, size)
        return await (streamed() if self._drops is None else self._drops.run(key, streamed))

    async def _streamed(
        self, key: str, parts: AsyncIterator[bytes], size: int | None
    ) -> ObjectMeta:
        """`put_stream`'s one try: a streamed put cannot be sent again."""
        part = self._part_size(size)
        most = None if self.max_parts is None else self.max_parts * part
        sent = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal sent
            async for data in parts:
                sent += len(data)
                if most is not None and sent > most:
                    raise CloudError(
                        f"{self.url}/{key}: a streamed upload takes at most {most // MiB} MiB"
                        f" here ({self.max_parts} parts of {part // MiB} MiB)"
                    )
                yield data

        try:
            result = await obstore.put_async(
                self._store,
                key,
                counted(),
                use_multipart=True,
                chunk_size=part,
                max_concurrency=max(1, PART_BUFFERS // part),
            )
        except (obx.BaseError, OSError) as exc:
            if _UPLOAD_ABORTED in str(exc):  # the parts sent are gone, and so are their bytes
                raise CloudError(
                    f"{self.url}/{key}: its streamed upload was aborted meanwhile by another "
                    f"client (NoSuchUpload), and cannot be sent again"
                ) from exc
            raise self._translate(exc, key) from exc
        version = result["e_tag"] or result["version"]
        if version is None:
            return _meta(
                await self._call("HEAD", key, lambda: obstore.head_async(self._store, key))
            )
        return ObjectMeta(key, sent, version, datetime.now(UTC))

    @abc.abstractmethod
    def _list_unfiltered(
        self, prefix: str, delimiter: bool, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        """The pages of the listing of `prefix` (its level with `delimiter`, else its
        whole tree): every key the store holds, as its answer names it, markers `name/`
        among them (`list` leaves out those no path can name). A page is one request of
        up to `page_size` keys (`_pages`), or one folder's scan of a local directory.
        obstore's listing is not used: it fails whole at a key its paths cannot name,
        and takes a folder's every page in one call."""

    async def _pages(
        self,
        prefix: str,
        query: dict[str, str],
        cursor: str,
        fetch: Callable[[dict[str, str]], Awaitable[ListAnswer]],
    ) -> AsyncIterator[ListPage]:
        """The pages of a listing of `prefix` asked for with `query`: `fetch` gets one
        (retried alone, so a broken listing resumes at its page), and the query parameter
        `cursor` asks for the next."""
        while True:
            try:
                answer = await self._call("LIST", prefix, partial(fetch, dict(query)))
            except ObjectNotFoundError:  # a listing's 404: it is the bucket that is not
                raise BucketNotFoundError(f"{self.url}: no such bucket") from None
            yield answer.page
            if answer.next is None:
                return
            query[cursor] = answer.next

    async def list(
        self, prefix: str = "", delimiter: bool = True, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        """The pages of `_list_unfiltered`, each its own request within the deadline (a
        folder of many pages lists however long they take all together), less the keys
        no path can name (`named_only`)."""
        if prefix:
            self.check_key(prefix.removesuffix("/"))
        async for page in self._list_unfiltered(prefix, delimiter, page_size):
            yield self.named_only(page)

    async def delete(self, key: str) -> None:
        self.check_key(key)
        # Azure and local say 404 where S3 says nothing: absent is what was asked for.
        with contextlib.suppress(ObjectNotFoundError):
            await self._call("DELETE", key, lambda: obstore.delete_async(self._store, key))

    async def copy(
        self, source: str, destination: str, size: int | None = None, version: str | None = None
    ) -> str:
        self.check_key(source)
        self.check_key(destination)
        if size is not None and self.copy_limit is not None and size > self.copy_limit:
            return await self.copy_through(source, destination, version)
        return await self._server_copy(source, destination, version)

    async def _server_copy(self, source: str, destination: str, version: str | None) -> str:
        """Have the store copy `source` (at `version`, if given) to `destination`, complete
        when this returns; the copy's version. obstore's copy tells none and takes no
        condition: a local copy is a hard link, of its source's version, so a look at the
        copy tells both (a write of another's since, to either name, reads as a change)."""
        await self._call("COPY", source, lambda: self._store_copy(source, destination))
        copied = await self.head(destination)
        if version is not None and copied.version != version:
            raise VersionChangedError(
                f"{self.url}/{source}: copied {copied.version}, not {version}"
            )
        return copied.version

    async def _store_copy(self, source: str, destination: str) -> None:
        """The store's copy of `source` to `destination`."""
        await obstore.copy_async(self._store, source, destination)

    async def close(self) -> None:
        """Wait for the drops under way (a subclass closes its connections after)."""
        if self._drops is not None:
            await self._drops.close()


@dataclass(frozen=True)
class ListAnswer:
    """One answer of a listing request (`ObjstoreCloud._pages`): `next` resumes the
    listing, None on its last page."""

    page: ListPage
    next: str | None


def listing_xml(body: bytes) -> ElementTree.Element:
    """The root element of a listing's XML answer (CloudError if it is none)."""
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise CloudError(f"a listing answer that is not XML: {exc}") from None


def _meta(meta: Any) -> ObjectMeta:
    version = meta["e_tag"] or meta["version"] or ""
    return ObjectMeta(meta["path"], meta["size"], version, meta["last_modified"])


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
